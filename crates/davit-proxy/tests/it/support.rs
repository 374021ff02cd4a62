//! Shared harness: test backends, an HTTP client and a bounded load generator.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use davit_proxy::{Algorithm, Backend, Mode, Proxy, ProxyConfig, ServiceConfig};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Upper bound for any load loop in these tests.
pub const LOAD_TIME_LIMIT: Duration = Duration::from_secs(60);

/// Every test holds this while it runs: the ones that measure latency or distribution under load must
/// not share the CPU with the others.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// An HTTP backend answering every request with its id (or, on `/headers`, with the request headers it
/// saw). Delays each answer by `delay` plus the `x-delay-ms` request header. Killing it closes the
/// listener and every open connection at once.
pub struct TestBackend {
    pub id: String,
    pub addr: SocketAddr,
    /// Number of requests received so far.
    pub received: watch::Receiver<u64>,
    /// Connections accepted so far, and how many of them are still open.
    connections: Arc<ConnectionCounts>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct ConnectionCounts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

impl TestBackend {
    pub async fn spawn(id: &str) -> TestBackend {
        TestBackend::spawn_at(id, "127.0.0.1:0".parse().unwrap(), Duration::ZERO).await
    }

    pub async fn spawn_delayed(id: &str, delay: Duration) -> TestBackend {
        TestBackend::spawn_at(id, "127.0.0.1:0".parse().unwrap(), delay).await
    }

    pub async fn spawn_at(id: &str, addr: SocketAddr, delay: Duration) -> TestBackend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (received_sender, received) = watch::channel(0u64);
        let received_sender = Arc::new(received_sender);
        let id_owned = id.to_string();
        let counts = Arc::new(ConnectionCounts::default());
        let task_counts = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let id = id_owned.clone();
                let received_sender = Arc::clone(&received_sender);
                task_counts.accepted.fetch_add(1, Ordering::SeqCst);
                let open = OpenGuard::new(Arc::clone(&task_counts));
                connections.spawn(async move {
                    let _open = open;
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let id = id.clone();
                        received_sender.send_modify(|count| *count += 1);
                        async move { Ok::<_, Infallible>(answer(&id, delay, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        TestBackend { id: id.to_string(), addr, received, connections: counts, task }
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.connections.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed (by either side).
    pub fn connections_open(&self) -> usize {
        self.connections.open.load(Ordering::SeqCst)
    }

    /// Closes the listener and all connections; the port may be bound again with [`TestBackend::spawn_at`].
    pub async fn kill(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }

    pub fn backend(&self) -> Backend {
        Backend::new(self.id.clone(), self.addr)
    }
}

/// Counts one backend connection as open while alive.
struct OpenGuard(Arc<ConnectionCounts>);

impl OpenGuard {
    fn new(counts: Arc<ConnectionCounts>) -> OpenGuard {
        counts.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(counts)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(id: &str, delay: Duration, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let extra = request.headers().get("x-delay-ms").and_then(|value| value.to_str().ok()?.parse().ok()).unwrap_or(0);
    let delay = delay + Duration::from_millis(extra);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if request.uri().path() == "/echo" {
        let body = request.into_body().collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
        return Response::new(Full::new(body));
    }
    let body = if request.uri().path() == "/headers" {
        let mut lines: Vec<String> =
            request.headers().iter().map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?"))).collect();
        lines.sort();
        lines.join("\n")
    } else {
        id.to_string()
    };
    Response::builder()
        .header("x-backend-id", id)
        .header("connection", "x-backend-hop")
        .header("x-backend-hop", "1")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A TCP backend that greets each connection with `<id>\n` and then echoes.
pub struct EchoBackend {
    pub id: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoBackend {
    pub async fn spawn(id: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let greeting = format!("{id}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    stream.write_all(greeting.as_bytes()).await?;
                    let (mut reader, mut writer) = stream.split();
                    tokio::io::copy(&mut reader, &mut writer).await?;
                    writer.shutdown().await
                });
            }
        });
        EchoBackend { id: id.to_string(), addr, task }
    }

    pub fn backend(&self) -> Backend {
        Backend::new(self.id.clone(), self.addr)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(HttpConnector::new())
}

/// One GET through `addr`; transport errors come back as `Err`.
pub async fn get(client: &TestClient, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(StatusCode, String), String> {
    let mut builder = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client.request(builder.body(Empty::new()).unwrap()).await.map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|error| error.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub async fn get_full(client: &TestClient, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response<String> {
    let mut builder = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client.request(builder.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, String::from_utf8_lossy(&body).into_owned())
}

/// Result of a load run: answers per body (= backend id), failures, and each request's latency.
#[derive(Debug, Default)]
pub struct Load {
    pub by_backend: HashMap<String, usize>,
    pub failures: usize,
    pub latencies: Vec<Duration>,
}

impl Load {
    pub fn count(&self, id: &str) -> usize {
        self.by_backend.get(id).copied().unwrap_or(0)
    }

    pub fn percentile(&self, percentile: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * percentile).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }
}

/// Sends `total` GETs to `addr` from `concurrency` workers; bounded by [`LOAD_TIME_LIMIT`].
pub async fn load(client: &TestClient, addr: SocketAddr, total: usize, concurrency: usize) -> Load {
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let share = total / concurrency + usize::from(worker < total % concurrency);
        workers.spawn(async move {
            let mut load = Load::default();
            for _ in 0..share {
                let started = Instant::now();
                match get(&client, addr, "/", &[]).await {
                    Ok((StatusCode::OK, body)) => {
                        load.latencies.push(started.elapsed());
                        *load.by_backend.entry(body).or_default() += 1;
                    }
                    other => {
                        if load.failures < 3 {
                            println!("request failed: {other:?}");
                        }
                        load.failures += 1;
                    }
                }
            }
            load
        });
    }
    let mut load = Load::default();
    let joined = tokio::time::timeout(LOAD_TIME_LIMIT, async {
        while let Some(result) = workers.join_next().await {
            let part = result.unwrap();
            load.failures += part.failures;
            load.latencies.extend(part.latencies);
            for (id, count) in part.by_backend {
                *load.by_backend.entry(id).or_default() += count;
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "load of {total} requests did not finish within {LOAD_TIME_LIMIT:?}");
    load
}

pub fn service(name: &str, mode: Mode, balance: Algorithm) -> ServiceConfig {
    let mut config = ServiceConfig::new(name, mode, "127.0.0.1:0".parse().unwrap());
    config.balance = balance;
    config
}

/// A proxy with one service over `backends`; returns the proxy and the service's address.
pub async fn start_proxy(config: ServiceConfig, backends: Vec<Backend>) -> (Proxy, SocketAddr) {
    // Two serving threads whatever the machine, so that connections spread over threads and backend
    // connections move between them in every test.
    let proxy = Proxy::start(ProxyConfig { seed: Some(7), threads: 2, ..ProxyConfig::default() });
    let name = config.name.clone();
    let addr = proxy.set_service(config).await.unwrap();
    proxy.set_backends(&name, backends).unwrap();
    (proxy, addr)
}

/// Reads the greeting line of an [`EchoBackend`] through `addr`, then checks the echo.
pub async fn tcp_roundtrip(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
        greeting.push(byte[0]);
    }
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    String::from_utf8(greeting).unwrap()
}
