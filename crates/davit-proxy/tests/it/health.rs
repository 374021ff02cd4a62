//! Passive health (outlier ejection and return) and draining on backend-set updates.

use std::time::{Duration, Instant};

use davit_proxy::{Algorithm, Mode, OutlierConfig};
use hyper::StatusCode;

use crate::support::{TestBackend, client, exclusive, get, service, start_proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_ejected_without_client_errors_and_returns() {
    let _exclusive = exclusive().await;
    let keep_a = TestBackend::spawn("a").await;
    let keep_b = TestBackend::spawn("b").await;
    let victim = TestBackend::spawn("victim").await;
    let mut config = service("web", Mode::Http, Algorithm::RoundRobin);
    config.retries = 2;
    config.outlier =
        OutlierConfig { consecutive_failures: 2, base_ejection: Duration::from_millis(300), max_ejection: Duration::from_secs(1) };
    let (proxy, addr) = start_proxy(config, vec![keep_a.backend(), keep_b.backend(), victim.backend()]).await;
    let client = client();

    let victim_addr = {
        for _ in 0..30 {
            let (status, _) = get(&client, addr, "/", &[]).await.unwrap();
            assert_eq!(status, StatusCode::OK);
        }
        victim.kill().await
    };

    // While it is down: no client-visible failure (each failing attempt is retried on another backend),
    // and it gets ejected.
    let mut failures = 0;
    let mut saw_ejected = false;
    for _ in 0..200 {
        match get(&client, addr, "/", &[]).await {
            Ok((StatusCode::OK, body)) => assert_ne!(body, "victim"),
            _ => failures += 1,
        }
        saw_ejected |= proxy.snapshot()[0].backends.iter().any(|backend| backend.id == "victim" && backend.ejected);
    }
    assert_eq!(failures, 0);
    assert!(saw_ejected, "{:?}", proxy.snapshot());
    let victim_stats = proxy.snapshot()[0].backends.iter().find(|backend| backend.id == "victim").cloned().unwrap();
    assert!(victim_stats.errors >= 2 && victim_stats.ejections >= 1, "{victim_stats:?}");

    // Back on the same address: once the ejection ends it serves again.
    let revived = TestBackend::spawn_at("victim", victim_addr, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served_again = false;
    while Instant::now() < deadline {
        let (status, body) = get(&client, addr, "/", &[]).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        if body == "victim" {
            served_again = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(served_again, "revived backend got no traffic: {:?}", proxy.snapshot());
    assert!(*revived.received.borrow() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_drains_its_in_flight_request() {
    let _exclusive = exclusive().await;
    let old = TestBackend::spawn("old").await;
    let new = TestBackend::spawn("new").await;
    let (proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![old.backend()]).await;
    let client = client();

    let slow_request = tokio::spawn({
        let client = client.clone();
        async move { get(&client, addr, "/", &[("x-delay-ms", "1500")]).await }
    });
    let mut old_received = old.received.clone();
    tokio::time::timeout(Duration::from_secs(10), old_received.wait_for(|&count| count >= 1)).await.unwrap().unwrap();
    assert_eq!(proxy.snapshot()[0].backends[0].active, 1);

    proxy.set_backends("web", vec![new.backend()]).unwrap();
    for _ in 0..20 {
        assert_eq!(get(&client, addr, "/", &[]).await.unwrap(), (StatusCode::OK, "new".to_string()));
    }
    assert!(!slow_request.is_finished(), "the slow request should still be in flight");
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), slow_request).await.unwrap().unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "old"));
    assert_eq!(*old.received.borrow(), 1);
}
