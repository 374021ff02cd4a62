//! Services scaled to zero: requests wait for a backend and ask for one; without activation they are refused.

use std::time::Duration;

use davit_proxy::{Activation, Algorithm, Mode};
use hyper::StatusCode;

use crate::support::{EchoBackend, TestBackend, client, exclusive, get, service, start_proxy, tcp_roundtrip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_the_first_backend_and_is_forwarded_to_it() {
    let _exclusive = exclusive().await;
    let mut config = service("lazy", Mode::Http, Algorithm::RoundRobin);
    config.activation = Some(Activation::new(Duration::from_secs(20)));
    let (proxy, addr) = start_proxy(config, Vec::new()).await;
    let mut asked = proxy.activation_requests();

    let client = client();
    let request = tokio::spawn(async move { get(&client, addr, "/", &[]).await });
    // The waiting request asks for the service to be started; the caller starts a backend and pushes it.
    tokio::time::timeout(Duration::from_secs(10), asked.changed()).await.expect("an activation request").unwrap();
    assert_eq!(proxy.take_activation_requests(), vec!["lazy".to_string()]);
    assert_eq!(proxy.snapshot()[0].waiting, 1);
    let backend = TestBackend::spawn("b0").await;
    proxy.set_backends("lazy", vec![backend.backend()]).unwrap();

    let (status, body) = request.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b0"));
    assert_eq!(proxy.snapshot()[0].waiting, 0);
    let mut metrics = String::new();
    proxy.render_prometheus(&mut metrics);
    assert!(metrics.contains("davit_proxy_waiting{service=\"lazy\"} 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_waits_for_the_first_backend() {
    let _exclusive = exclusive().await;
    let mut config = service("lazy-tcp", Mode::Tcp, Algorithm::RoundRobin);
    config.activation = Some(Activation::new(Duration::from_secs(20)));
    let (proxy, addr) = start_proxy(config, Vec::new()).await;
    let mut asked = proxy.activation_requests();
    let connection = tokio::spawn(tcp_roundtrip(addr));
    tokio::time::timeout(Duration::from_secs(10), asked.changed()).await.expect("an activation request").unwrap();
    let echo = EchoBackend::spawn("e0").await;
    proxy.set_backends("lazy-tcp", vec![echo.backend()]).unwrap();
    assert_eq!(connection.await.unwrap(), "e0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_in_number() {
    let _exclusive = exclusive().await;
    let mut config = service("busy", Mode::Http, Algorithm::RoundRobin);
    config.activation = Some(Activation { timeout: Duration::from_secs(60), max_waiting: 1 });
    let (proxy, addr) = start_proxy(config, Vec::new()).await;
    let mut asked = proxy.activation_requests();
    let client = client();
    let first = tokio::spawn({
        let client = client.clone();
        async move { get(&client, addr, "/", &[]).await }
    });
    tokio::time::timeout(Duration::from_secs(10), asked.changed()).await.expect("an activation request").unwrap();
    // One request already waits: the next one is refused at once.
    let (status, body) = get(&client, addr, "/", &[]).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("1 requests already wait"), "{body}");
    let backend = TestBackend::spawn("b0").await;
    proxy.set_backends("busy", vec![backend.backend()]).unwrap();
    assert_eq!(first.await.unwrap().unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_in_time() {
    let _exclusive = exclusive().await;
    let mut config = service("never", Mode::Http, Algorithm::RoundRobin);
    config.activation = Some(Activation::new(Duration::from_millis(300)));
    let (proxy, addr) = start_proxy(config, Vec::new()).await;
    // Nobody starts a backend: the request gives up after the timeout.
    let (status, body) = get(&client(), addr, "/", &[]).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("none started within 0.3s"), "{body}");
    assert_eq!(proxy.snapshot()[0].waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_service_releases_its_waiting_requests_and_a_closed_client_leaves() {
    let _exclusive = exclusive().await;
    let mut config = service("gone", Mode::Http, Algorithm::RoundRobin);
    config.activation = Some(Activation::new(Duration::from_secs(60)));
    let (proxy, addr) = start_proxy(config, Vec::new()).await;
    let mut asked = proxy.activation_requests();
    let client = client();
    let waiting = tokio::spawn(async move { get(&client, addr, "/", &[]).await });
    tokio::time::timeout(Duration::from_secs(10), asked.changed()).await.expect("an activation request").unwrap();
    assert!(proxy.remove_service("gone").await);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("released").unwrap().unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // TCP: a client that closes while it waits frees its place at once.
    let mut config = service("tcp-gone", Mode::Tcp, Algorithm::RoundRobin);
    config.activation = Some(Activation { timeout: Duration::from_secs(60), max_waiting: 1 });
    let addr = proxy.set_service(config).await.unwrap();
    let connection = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), asked.changed()).await.expect("an activation request").unwrap();
    assert_eq!(proxy.snapshot()[0].waiting, 1);
    drop(connection);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut waiting_now = proxy.snapshot()[0].waiting;
    while waiting_now > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::timeout(Duration::from_millis(50), asked.changed()).await.ok();
        waiting_now = proxy.snapshot()[0].waiting;
    }
    assert_eq!(waiting_now, 0, "the closed connection still waits");
}
