//! The proxy's backend-side HTTP/1.1 codec against scripted backends: body framings (content-length,
//! chunked, close-delimited), informational and bodiless responses, garbage, and chunked request bodies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use davit_proxy::{Algorithm, Backend, Mode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{TestBackend, client, exclusive, get, service, start_proxy};

/// A backend that answers every request head it reads with the same bytes, and closes the connection
/// after each answer when `close` is set.
struct ScriptedBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ScriptedBackend {
    async fn spawn(response: &'static [u8], close: bool) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            if stream.write_all(response).await.is_err() || close {
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                        }
                    }
                });
            }
        });
        ScriptedBackend { addr, accepted, task }
    }

    fn backend(&self) -> Backend {
        Backend::new("scripted", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_to(backend: &ScriptedBackend) -> (davit_proxy::Proxy, SocketAddr) {
    start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![backend.backend()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_is_forwarded_and_the_connection_reused() {
    let _exclusive = exclusive().await;
    let backend = ScriptedBackend::spawn(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Backend: s\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        false,
    )
    .await;
    let (_proxy, addr) = proxy_to(&backend).await;
    let client = client();
    for _ in 0..5 {
        assert_eq!(get(&client, addr, "/", &[]).await.unwrap(), (StatusCode::OK, "hello world".to_string()));
    }
    assert_eq!(backend.accepted(), 1, "a complete chunked body leaves the connection reusable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_ends_with_the_connection() {
    let _exclusive = exclusive().await;
    let backend = ScriptedBackend::spawn(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it until the end", true).await;
    let (proxy, addr) = proxy_to(&backend).await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, addr, "/", &[]).await.unwrap(), (StatusCode::OK, "all of it until the end".to_string()));
    }
    assert_eq!(backend.accepted(), 3, "a close-delimited response's connection is not reused");
    assert_eq!(proxy.snapshot()[0].backends[0].errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_are_skipped() {
    let _exclusive = exclusive().await;
    let backend = ScriptedBackend::spawn(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
        false,
    )
    .await;
    let (_proxy, addr) = proxy_to(&backend).await;
    let client = client();
    for _ in 0..2 {
        assert_eq!(get(&client, addr, "/", &[]).await.unwrap(), (StatusCode::CREATED, "done".to_string()));
    }
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_no_content_responses_have_no_body() {
    let _exclusive = exclusive().await;
    // The answer to HEAD announces a length but carries no body; the connection stays usable.
    let backend = ScriptedBackend::spawn(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).await;
    let (_proxy, addr) = proxy_to(&backend).await;
    let client = client();
    for _ in 0..3 {
        let head = Request::builder().method(Method::HEAD).uri(format!("http://{addr}/")).body(Empty::<Bytes>::new()).unwrap();
        let response = client.request(head).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-length"], "5");
        assert!(response.into_body().collect().await.unwrap().to_bytes().is_empty());
    }
    assert_eq!(backend.accepted(), 1);

    let no_content = ScriptedBackend::spawn(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false).await;
    let (_proxy, addr) = proxy_to(&no_content).await;
    for _ in 0..3 {
        assert_eq!(get(&client, addr, "/", &[]).await.unwrap(), (StatusCode::NO_CONTENT, String::new()));
    }
    assert_eq!(no_content.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_sending_garbage_is_a_502_and_a_failure() {
    let _exclusive = exclusive().await;
    for garbage in
        [&b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"]
    {
        let backend = ScriptedBackend::spawn(garbage, false).await;
        let (proxy, addr) = proxy_to(&backend).await;
        let (status, body) = get(&client(), addr, "/", &[]).await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("no backend"), "{body}");
        // The only backend was tried, so there is no retry; the failure is counted.
        assert_eq!(proxy.snapshot()[0].backends[0].errors, 1, "{:?}", String::from_utf8_lossy(garbage));
    }

    // A good head and a broken body: the client connection is aborted rather than given a short body.
    let backend = ScriptedBackend::spawn(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXXzz\r\n", false).await;
    let (_proxy, addr) = proxy_to(&backend).await;
    let result = get(&client(), addr, "/", &[]).await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_is_forwarded_chunked() {
    let _exclusive = exclusive().await;
    let backend = TestBackend::spawn("b0").await;
    let (_proxy, addr) = start_proxy(service("web", Mode::Http, Algorithm::RoundRobin), vec![backend.backend()]).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    while !response.ends_with(b"hello world") {
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk)).await.unwrap().unwrap();
        assert_ne!(read, 0, "connection closed: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&chunk[..read]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&response));
}
