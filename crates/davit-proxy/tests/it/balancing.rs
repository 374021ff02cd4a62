//! Distribution of real requests through the proxy for each algorithm.

use std::collections::HashMap;
use std::time::Duration;

use davit_proxy::{Algorithm, Backend, HashOn, Mode};
use hyper::StatusCode;

use crate::support::{TestBackend, client, exclusive, get, load, service, start_proxy};

async fn backends(count: usize) -> Vec<TestBackend> {
    let mut backends = Vec::new();
    for index in 0..count {
        backends.push(TestBackend::spawn(&format!("b{index}")).await);
    }
    backends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exact_over_300_requests() {
    let _exclusive = exclusive().await;
    let backends = backends(3).await;
    let (proxy, addr) =
        start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), backends.iter().map(TestBackend::backend).collect()).await;
    let load = load(&client(), addr, 300, 6).await;
    assert_eq!(load.failures, 0);
    for backend in &backends {
        assert_eq!(load.count(&backend.id), 100, "{:?}", load.by_backend);
    }

    let snapshot = proxy.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert!(snapshot[0].backends.iter().all(|backend| backend.requests == 100 && backend.errors == 0 && !backend.ejected));
    let mut metrics = String::new();
    proxy.render_prometheus(&mut metrics);
    let line = format!("davit_proxy_requests_total{{service=\"web\",backend=\"b0\",addr=\"{}\"}} 100", backends[0].addr);
    assert!(metrics.contains(&line), "{metrics}");
    assert!(metrics.contains("davit_proxy_request_duration_seconds_bucket{service=\"web\",backend=\"b1\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_one_to_three_gives_a_quarter() {
    let _exclusive = exclusive().await;
    let light = TestBackend::spawn("light").await;
    let heavy = TestBackend::spawn("heavy").await;
    let backends = vec![Backend { weight: 1, ..light.backend() }, Backend { weight: 3, ..heavy.backend() }];
    let (_proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::Weighted), backends).await;
    let load = load(&client(), addr, 4000, 8).await;
    assert_eq!(load.failures, 0);
    let share = load.count("light") as f64 / 4000.0;
    assert!((share - 0.25).abs() <= 0.03, "light share {share}, {:?}", load.by_backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_is_roughly_uniform() {
    let _exclusive = exclusive().await;
    let backends = backends(3).await;
    let (_proxy, addr) =
        start_proxy(service("web", Mode::Http, Algorithm::Random), backends.iter().map(TestBackend::backend).collect()).await;
    let total = 3000;
    let load = load(&client(), addr, total, 8).await;
    assert_eq!(load.failures, 0);
    let expected = total as f64 / 3.0;
    let chi_square: f64 = backends.iter().map(|backend| (load.count(&backend.id) as f64 - expected).powi(2) / expected).sum();
    // 2 degrees of freedom: P(χ² > 13.8) = 0.001.
    assert!(chi_square < 13.8, "χ² = {chi_square}, {:?}", load.by_backend);
    for backend in &backends {
        let share = load.count(&backend.id) as f64 / total as f64;
        assert!((share - 1.0 / 3.0).abs() <= 0.05, "{:?}", load.by_backend);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_favours_the_backend_holding_fewer_requests() {
    let _exclusive = exclusive().await;
    // "slow" holds every request 100 ms, so it always has more in flight than "fast".
    let slow = TestBackend::spawn_delayed("slow", Duration::from_millis(100)).await;
    let fast = TestBackend::spawn("fast").await;
    let (_proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::LeastConnections), vec![slow.backend(), fast.backend()]).await;
    let load = load(&client(), addr, 400, 8).await;
    assert_eq!(load.failures, 0);
    let slow_share = load.count("slow") as f64 / 400.0;
    println!("least_connections: {:?}", load.by_backend);
    assert!(slow_share < 0.15, "slow share {slow_share}, {:?}", load.by_backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_when_a_backend_leaves() {
    let _exclusive = exclusive().await;
    let backends = backends(4).await;
    let mut config = service("web", Mode::Http, Algorithm::ConsistentHash);
    config.hash_on = HashOn::Header("x-user".to_string());
    let (proxy, addr) = start_proxy(config, backends.iter().map(TestBackend::backend).collect()).await;
    let client = client();
    let mut before = HashMap::new();
    for key in 0..1000 {
        let user = format!("user-{key}");
        let (status, backend) = get(&client, addr, "/", &[("x-user", &user)]).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        before.insert(user, backend);
    }
    for key in (0..1000).step_by(10) {
        let user = format!("user-{key}");
        let (_, backend) = get(&client, addr, "/", &[("x-user", &user)]).await.unwrap();
        assert_eq!(backend, before[&user], "{user} moved without a change");
    }
    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for backend in before.values() {
        *per_backend.entry(backend).or_default() += 1;
    }
    assert!(per_backend.values().all(|&count| count > 100), "{per_backend:?}");

    proxy.set_backends("web", backends.iter().take(3).map(TestBackend::backend).collect()).unwrap();
    let mut stayed = 0;
    for (user, previous) in &before {
        let (_, backend) = get(&client, addr, "/", &[("x-user", user)]).await.unwrap();
        assert_ne!(backend, "b3");
        if &backend == previous {
            stayed += 1;
        }
    }
    println!("consistent_hash: {per_backend:?}, {stayed}/1000 keys stayed after removing b3");
    // Exactly the removed backend's keys move. It owns 1/4 of the ring in expectation; with 160 points per
    // backend its share varies by about ±2 %, so the bound leaves room for that.
    assert_eq!(stayed, 1000 - per_backend["b3"], "a key of a remaining backend moved");
    assert!(stayed >= 700, "{stayed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_response_time_avoids_a_slow_backend_and_cuts_p99() {
    let _exclusive = exclusive().await;
    let slow = TestBackend::spawn_delayed("slow", Duration::from_millis(50)).await;
    let fast_a = TestBackend::spawn("fast-a").await;
    let fast_b = TestBackend::spawn("fast-b").await;
    let backends = vec![slow.backend(), fast_a.backend(), fast_b.backend()];
    let config = service("web", Mode::Http, Algorithm::LeastResponseTime);
    let (proxy, addr) = start_proxy(config.clone(), backends).await;
    let client = client();

    let least_response_time = load(&client, addr, 2000, 4).await;
    assert_eq!(least_response_time.failures, 0);
    proxy.set_service(davit_proxy::ServiceConfig { balance: Algorithm::RoundRobin, listen: addr, ..config }).await.unwrap();
    let round_robin = load(&client, addr, 2000, 4).await;
    assert_eq!(round_robin.failures, 0);

    let (lrt_p99, rr_p99) = (least_response_time.percentile(0.99), round_robin.percentile(0.99));
    println!(
        "least_response_time: slow got {}/2000, p50 {:?}, p99 {:?}; round_robin: slow got {}/2000, p50 {:?}, p99 {:?}",
        least_response_time.count("slow"),
        least_response_time.percentile(0.5),
        lrt_p99,
        round_robin.count("slow"),
        round_robin.percentile(0.5),
        rr_p99
    );
    assert!(least_response_time.count("slow") < 200, "{:?}", least_response_time.by_backend);
    assert!(rr_p99 >= lrt_p99 * 3, "p99 least_response_time {lrt_p99:?} vs round_robin {rr_p99:?}");
}
