//! Keep-alive connections to backends: reused across requests and clients, replaced when the backend
//! closed them, closed after the idle timeout.

use std::time::Duration;

use davit_proxy::{Algorithm, Mode, Proxy, ProxyConfig};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};

use crate::support::{TestBackend, client, exclusive, get, load, service, start_proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused_across_requests_and_clients() {
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let (_proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![backend.backend()]).await;
    for _ in 0..3 {
        // A new client (and client connection) each time, one request after the other.
        for _ in 0..20 {
            assert_eq!(get(&client(), addr, "/", &[]).await.unwrap().0, StatusCode::OK);
        }
    }
    assert_eq!(backend.connections_accepted(), 1, "sequential requests need one backend connection");

    // Concurrent requests need at most one connection each.
    let load = load(&client(), addr, 400, 8).await;
    assert_eq!(load.failures, 0);
    assert!(backend.connections_accepted() <= 1 + 8, "{} connections", backend.connections_accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_keep_the_connection() {
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let (_proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![backend.backend()]).await;
    let client = client();
    for _ in 0..5 {
        let head = Request::builder().method(Method::HEAD).uri(format!("http://{addr}/")).body(Empty::<Bytes>::new()).unwrap();
        let response = client.request(head).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(get(&client, addr, "/", &[]).await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(backend.connections_accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_replaced_without_errors() {
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let (proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![backend.backend()]).await;
    let client = client();
    assert_eq!(get(&client, addr, "/", &[]).await.unwrap().0, StatusCode::OK);

    // The backend restarts on the same address: the proxy's idle connection to it is closed.
    let backend_addr = backend.kill().await;
    let restarted = TestBackend::spawn_at("b0", backend_addr, Duration::ZERO).await;
    for _ in 0..5 {
        assert_eq!(get(&client, addr, "/", &[]).await.unwrap(), (StatusCode::OK, "b0".to_string()));
    }
    assert_eq!(restarted.connections_accepted(), 1);
    assert_eq!(proxy.snapshot()[0].backends[0].errors, 0, "a closed idle connection is not a backend failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backend_connections_are_closed_after_the_timeout() {
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let proxy = Proxy::start(ProxyConfig { pool_idle_timeout: Duration::from_millis(200), seed: Some(7), ..ProxyConfig::default() });
    let addr = proxy.set_service(service("web", Mode::Http, Algorithm::RoundRobin)).await.unwrap();
    proxy.set_backends("web", vec![backend.backend()]).unwrap();
    assert_eq!(get(&client(), addr, "/", &[]).await.unwrap().0, StatusCode::OK);
    assert_eq!(backend.connections_open(), 1);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backend.connections_open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.connections_open(), 0, "the idle connection should be closed after 200 ms (checked every 100 ms)");
    assert_eq!(get(&client(), addr, "/", &[]).await.unwrap().0, StatusCode::OK);
    assert_eq!(backend.connections_accepted(), 2);
}
