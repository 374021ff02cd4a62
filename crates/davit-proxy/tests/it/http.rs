//! L7 request handling: headers, error statuses, retries and service updates.

use davit_proxy::{Algorithm, Backend, Mode, Proxy, ProxyConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::support::{TestBackend, client, exclusive, get, get_full, service, start_proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_added() {
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let (_proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![backend.backend()]).await;
    let response = get_full(
        &client(),
        addr,
        "/headers",
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = response.body();
    for removed in ["x-private", "keep-alive", "proxy-connection", "te:", "trailer", "upgrade", "transfer-encoding"] {
        assert!(!seen.lines().any(|line| line.starts_with(removed)), "{removed} was forwarded:\n{seen}");
    }
    assert!(!seen.lines().any(|line| line.starts_with("connection: x-private")), "{seen}");
    assert!(seen.contains("x-kept: yes"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    assert!(seen.contains(&format!("x-forwarded-host: {addr}")), "{seen}");
    // The backend's own hop-by-hop header (named in its Connection header) does not reach the client.
    assert!(response.headers().get("x-backend-hop").is_none(), "{:?}", response.headers());
    assert_eq!(response.headers()["x-backend-id"], "b0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backends_is_503_and_dead_backends_are_502() {
    let _exclusive = exclusive().await;
    let proxy = Proxy::start(ProxyConfig::default());
    let addr = proxy.set_service(service("empty", Mode::Http, Algorithm::RoundRobin)).await.unwrap();
    let client = client();
    let (status, body) = get(&client, addr, "/", &[]).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Ports that were just free: connecting is refused.
    let dead_a = TestBackend::spawn("dead-a").await.kill().await;
    let dead_b = TestBackend::spawn("dead-b").await.kill().await;
    proxy.set_backends("empty", vec![Backend::new("dead-a", dead_a), Backend::new("dead-b", dead_b)]).unwrap();
    let (status, body) = get(&client, addr, "/", &[]).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("no backend"), "{body}");

    assert!(matches!(proxy.set_backends("missing", vec![]), Err(davit_proxy::Error::UnknownService(_))));
    assert!(proxy.remove_service("empty").await);
    assert!(!proxy.remove_service("empty").await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener still open after remove_service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_update_in_place_keeps_the_listener_and_counters() {
    let _exclusive = exclusive().await;
    let a = TestBackend::spawn("a").await;
    let b = TestBackend::spawn("b").await;
    let config = service("web", Mode::Http, Algorithm::RoundRobin);
    let (proxy, addr) = start_proxy(config.clone(), vec![a.backend(), b.backend()]).await;
    let client = client();
    for _ in 0..10 {
        get(&client, addr, "/", &[]).await.unwrap();
    }
    let same = proxy.set_service(davit_proxy::ServiceConfig { listen: addr, balance: Algorithm::Random, ..config }).await.unwrap();
    assert_eq!(same, addr);
    proxy.set_backends("web", vec![a.backend(), b.backend()]).unwrap();
    let snapshot = proxy.snapshot();
    assert_eq!(snapshot[0].algorithm, Algorithm::Random);
    assert_eq!(snapshot[0].backends.iter().map(|backend| backend.requests).sum::<u64>(), 10);
    assert_eq!(get(&client, addr, "/", &[]).await.unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_are_streamed_through() {
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let (_proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![backend.backend()]).await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let payload = "x".repeat(1 << 20);
    let request = Request::post(format!("http://{addr}/echo")).body(Full::new(Bytes::from(payload.clone()))).unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), payload.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_is_refused() {
    let _exclusive = exclusive().await;
    let (proxy, addr) = start_proxy(service("first", Mode::Http, Algorithm::RoundRobin), vec![]).await;
    // Another service of the same proxy: its listeners use SO_REUSEPORT, which alone would let the two share it.
    let second =
        proxy.set_service(davit_proxy::ServiceConfig { listen: addr, ..service("second", Mode::Tcp, Algorithm::RoundRobin) }).await;
    assert!(matches!(second, Err(davit_proxy::Error::Bind { .. })), "{second:?}");
    // Someone else's socket.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let third = proxy.set_service(davit_proxy::ServiceConfig { listen, ..service("third", Mode::Tcp, Algorithm::RoundRobin) }).await;
    assert!(matches!(third, Err(davit_proxy::Error::Bind { .. })), "{third:?}");
    assert_eq!(proxy.local_addr("first"), Some(addr));
    assert_eq!(proxy.local_addr("second"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_no_complete_header_in_time_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let config =
        ProxyConfig { seed: Some(7), threads: 1, client_header_timeout: std::time::Duration::from_millis(300), ..ProxyConfig::default() };
    let proxy = Proxy::start(config);
    let addr = proxy.set_service(service("web", Mode::Http, Algorithm::RoundRobin)).await.unwrap();
    proxy.set_backends("web", vec![backend.backend()]).unwrap();
    let closed_within = |mut stream: tokio::net::TcpStream| async move {
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the proxy kept a silent client connected for 10 s");
        started.elapsed()
    };
    // A slowloris: half a header, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n").await.unwrap();
    closed_within(slow).await;
    // An idle keep-alive connection after one answered request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /id HTTP/1.1\r\nHost: web\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    closed_within(idle).await;
}
