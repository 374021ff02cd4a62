//! L4 mode: connections balanced, bytes echoed, dead backends skipped.

use davit_proxy::{Algorithm, Backend, Mode};

use crate::support::{EchoBackend, TestBackend, exclusive, service, start_proxy, tcp_roundtrip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_robin_over_connections() {
    let _exclusive = exclusive().await;
    let backends = [EchoBackend::spawn("e0").await, EchoBackend::spawn("e1").await, EchoBackend::spawn("e2").await];
    let (proxy, addr) =
        start_proxy(service("echo", Mode::Tcp, Algorithm::RoundRobin), backends.iter().map(EchoBackend::backend).collect()).await;
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(tcp_roundtrip(addr).await);
    }
    assert_eq!(order, ["e0", "e1", "e2", "e0", "e1", "e2", "e0", "e1", "e2"]);
    let requests: Vec<u64> = proxy.snapshot()[0].backends.iter().map(|backend| backend.requests).collect();
    assert_eq!(requests, vec![3, 3, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_failure_tries_another_backend() {
    let _exclusive = exclusive().await;
    let alive = EchoBackend::spawn("alive").await;
    let dead = TestBackend::spawn("dead").await.kill().await;
    let (proxy, addr) =
        start_proxy(service("echo", Mode::Tcp, Algorithm::RoundRobin), vec![Backend::new("dead", dead), alive.backend()]).await;
    for _ in 0..6 {
        assert_eq!(tcp_roundtrip(addr).await, "alive");
    }
    let dead_stats = proxy.snapshot()[0].backends.iter().find(|backend| backend.id == "dead").cloned().unwrap();
    assert!(dead_stats.errors >= 1, "{dead_stats:?}");
}
