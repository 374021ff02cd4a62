//! L7 (HTTP/1.1) forwarding with hyper: keep-alive on both sides, streamed bodies, hop-by-hop header
//! removal, `X-Forwarded-*` headers and retries of idempotent bodiless requests on another backend.
//!
//! Each client connection is one task, and it does all the work of its requests: hyper's server reads
//! the request, [`handle`] takes a keep-alive connection to the chosen backend from that backend's
//! [`ConnectionPool`] (or opens one), writes the request on it with [`crate::codec`] and hands the
//! response back with a [`BackendBody`] that reads the backend connection while hyper streams it to the
//! client and returns the connection to the pool at its end. No request crosses tasks or threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::response::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::{ActiveGuard, Endpoint};
use crate::balance::{Tried, hash_bytes};
use crate::config::{Algorithm, HashOn, ServiceConfig};
use crate::pool::{self, BackendConnection, BodyEvent, ConnectionError, ConnectionPool, OutgoingRequest, ResponseReader};
use crate::proxy::ServiceShared;

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are never forwarded, besides those named in `Connection`.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The peer of one client connection, with what its requests need of it computed once.
#[derive(Debug)]
pub(crate) struct ClientInfo {
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    forwarded_for: HeaderValue,
    /// [`hash_bytes`] of the peer's IP in text, for [`HashOn::SourceIp`].
    ip_hash: u64,
}

impl ClientInfo {
    pub fn new(addr: SocketAddr) -> ClientInfo {
        let ip = addr.ip().to_string();
        let forwarded_for = HeaderValue::from_str(&ip).expect("an IP address is a valid header value");
        ClientInfo { forwarded_for, ip_hash: hash_bytes(ip.as_bytes()) }
    }
}

/// What the requests of one client connection share.
struct ClientConnection {
    shared: Arc<ServiceShared>,
    client: ClientInfo,
    /// Index of the serving thread the connection lives on, which picks the backend pools' stacks.
    worker: usize,
}

/// Accept loop of one HTTP service on serving thread `worker`; runs until aborted. When `shutdown` fires,
/// open connections finish their current request and close. It also closes this thread's backend
/// connections idle for longer than `pool_idle_timeout` (checked every half of it).
pub(crate) async fn serve(shared: Arc<ServiceShared>, listener: TcpListener, shutdown: watch::Receiver<bool>, worker: usize) {
    let idle_timeout = shared.proxy_config.pool_idle_timeout;
    let header_timeout = shared.proxy_config.client_header_timeout;
    let mut close_idle = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(10)));
    close_idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            now = close_idle.tick() => {
                for endpoint in &shared.snapshot().endpoints {
                    endpoint.pool.close_idle(worker, idle_timeout, now.into_std());
                }
                continue;
            }
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "proxy accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let context = Arc::new(ClientConnection { shared: Arc::clone(&shared), client: ClientInfo::new(client), worker });
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let context = Arc::clone(&context);
                async move { Ok::<_, Infallible>(handle(&context, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %client, "client connection ended with error");
                    }
                }
                _ = shutdown.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// Forwards one request; never fails: errors become 502/503 responses.
async fn handle(context: &ClientConnection, request: Request<Incoming>) -> Response<ResponseBody> {
    let ClientConnection { shared, client, worker } = context;
    let snapshot = match shared.with_backends(shared.snapshot()).await {
        Ok(snapshot) => snapshot,
        Err(unavailable) => {
            return text_response(StatusCode::SERVICE_UNAVAILABLE, unavailable.describe(&shared.snapshot().config.name));
        }
    };
    let config = &snapshot.config;

    let (mut parts, body) = request.into_parts();
    prepare_request_headers(&mut parts.headers, client);
    let hash_key = hash_key(config, &parts.headers, client);
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let max_attempts = if retryable { config.retries.saturating_add(1) } else { 1 };
    let path_and_query = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let mut body = if body.is_end_stream() { None } else { Some(body) };
    let mut tried = Tried::default();
    let mut last_failure: Option<Response<ResponseBody>> = None;

    for attempt in 0..max_attempts {
        let started = Instant::now();
        let Some(index) = shared.pick(&snapshot, hash_key, tried.as_slice(), started) else { break };
        tried.push(index);
        let endpoint = &snapshot.endpoints[index];
        let guard = endpoint.stats.start();
        let outgoing = OutgoingRequest { method: &parts.method, path_and_query, headers: &parts.headers, default_host: &endpoint.host };

        let result = exchange(shared, *worker, endpoint, &outgoing, &mut body, retryable, started).await;
        let now = Instant::now();
        let latency = now.saturating_duration_since(started);
        let has_attempts_left = attempt + 1 < max_attempts;
        match result {
            Ok(exchanged) if exchanged.1.status.is_server_error() => {
                if endpoint.stats.record_failure(Some(latency), &config.outlier, now) {
                    tracing::info!(service = %config.name, backend = %endpoint.backend.id, "backend ejected after 5xx");
                }
                let response = finish_response(exchanged, endpoint, *worker, guard);
                if !has_attempts_left {
                    return response;
                }
                last_failure = Some(response);
            }
            Ok(exchanged) => {
                endpoint.stats.record_success(latency, now);
                return finish_response(exchanged, endpoint, *worker, guard);
            }
            Err(error) => {
                tracing::debug!(service = %config.name, backend = %endpoint.backend.id, error = ?error, "backend request failed");
                if endpoint.stats.record_failure(None, &config.outlier, now) {
                    tracing::info!(service = %config.name, backend = %endpoint.backend.id, "backend ejected after connection failure");
                }
            }
        }
    }
    match last_failure {
        Some(response) => response,
        None => text_response(StatusCode::BAD_GATEWAY, format!("davit proxy: no backend of service {} answered\n", config.name)),
    }
}

/// Why a request got no response from a backend.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// Sends the request on a pooled connection to `endpoint` and reads the response head, or on a new
/// connection when none is idle or when the pooled one turns out closed by the backend before it
/// answered anything (for a `retryable` request, or one whose body was not taken yet).
async fn exchange(
    shared: &ServiceShared,
    worker: usize,
    endpoint: &Endpoint,
    request: &OutgoingRequest<'_>,
    body: &mut Option<Incoming>,
    retryable: bool,
    now: Instant,
) -> Result<(ResponseReader, Parts, BackendConnection), ExchangeError> {
    if let Some(mut connection) = endpoint.pool.checkout(worker, shared.proxy_config.pool_idle_timeout, now) {
        let had_body = body.is_some();
        connection.start(request, body.take());
        match connection.read_response_head(request.method).await {
            Ok(head) => return Ok(split_head(head, connection)),
            Err(error) if connection.closed_while_idle() && (retryable || !had_body) => {
                tracing::debug!(backend = %endpoint.backend.id, %error, "pooled connection was closed by the backend; opening a new one");
            }
            Err(error) => return Err(error.into()),
        }
    }
    // Boxed so that the rare connect does not make every request's future larger.
    let mut connection =
        Box::pin(pool::connect(endpoint.backend.addr, shared.proxy_config.connect_timeout)).await.map_err(ExchangeError::Connect)?;
    connection.start(request, body.take());
    let head = connection.read_response_head(request.method).await?;
    Ok(split_head(head, connection))
}

fn split_head(head: crate::codec::ResponseHead, connection: BackendConnection) -> (ResponseReader, Parts, BackendConnection) {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = head.status;
    parts.headers = head.headers;
    (ResponseReader { decoder: head.body, keep_alive: head.keep_alive }, parts, connection)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// Removes hop-by-hop headers, and those named in `Connection`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests have none: one pass over the names is cheaper than a lookup per hop-by-hop name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn prepare_request_headers(headers: &mut HeaderMap, client: &ClientInfo) {
    remove_hop_by_hop(headers);
    let forwarded_for = if headers.contains_key(&X_FORWARDED_FOR) {
        let previous: Vec<&str> = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|value| value.to_str().ok()).collect();
        let client_ip = client.forwarded_for.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {client_ip}", previous.join(", "))).ok()
    } else {
        Some(client.forwarded_for.clone())
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

fn hash_key(config: &ServiceConfig, headers: &HeaderMap, client: &ClientInfo) -> Option<u64> {
    if config.balance != Algorithm::ConsistentHash {
        return None;
    }
    match &config.hash_on {
        HashOn::SourceIp => Some(client.ip_hash),
        HashOn::Header(name) => headers.get(name.as_str()).map(|value| hash_bytes(value.as_bytes())),
        HashOn::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| key == name)
            .map(|(_, value)| hash_bytes(value.as_bytes())),
    }
}

fn finish_response(
    (reader, parts, connection): (ResponseReader, Parts, BackendConnection),
    endpoint: &Arc<Endpoint>,
    worker: usize,
    guard: ActiveGuard,
) -> Response<ResponseBody> {
    let body = BackendBody { reader, connection: Some(connection), pool: Arc::clone(&endpoint.pool), worker, guard: Some(guard) };
    Response::from_parts(parts, ResponseBody::Backend(body))
}

fn text_response(status: StatusCode, text: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Text(Some(Bytes::from(text))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Error of a response body: the backend connection failed mid-body. hyper then aborts the client
/// connection, so that the client does not take a truncated body for a complete one.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy answers a client with: a backend's response body or its own short text.
pub(crate) enum ResponseBody {
    Backend(BackendBody),
    Text(Option<Bytes>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Backend(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Text(text) => Poll::Ready(text.take().map(|text| Ok(Frame::data(text)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Backend(body) => body.is_end_stream(),
            ResponseBody::Text(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Backend(body) => body.size_hint(),
            ResponseBody::Text(text) => SizeHint::with_exact(text.as_ref().map_or(0, |text| text.len() as u64)),
        }
    }
}

/// A backend's response body. While it is streamed it reads the backend connection it comes from (and
/// sends what is left of the request body); it keeps the request counted as active until it is fully
/// streamed or dropped, and at its end it returns the connection to the backend's pool.
pub(crate) struct BackendBody {
    reader: ResponseReader,
    /// `None` once returned to the pool or given up.
    connection: Option<BackendConnection>,
    pool: Arc<ConnectionPool>,
    /// Serving thread the body is streamed on.
    worker: usize,
    guard: Option<ActiveGuard>,
}

impl BackendBody {
    /// The body ended: the connection goes back to the pool if it can take another request.
    fn finish(&mut self) {
        self.guard = None;
        if let Some(connection) = self.connection.take()
            && self.reader.is_reusable(&connection)
        {
            self.pool.check_in(self.worker, connection);
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(connection) = &mut this.connection else { return Poll::Ready(None) };
        match std::task::ready!(this.reader.poll_next(connection, cx)) {
            Ok(BodyEvent::Data(data)) => {
                if this.reader.decoder.is_done() {
                    // hyper may not poll again once `is_end_stream` says so.
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(BodyEvent::Trailers(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(BodyEvent::End) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(error) => {
                this.guard = None;
                this.connection = None;
                Poll::Ready(Some(Err(error.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none() || self.reader.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader.decoder.remaining() {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        // hyper does not poll a body it knows to be empty (HEAD, 204, 304, `Content-Length: 0`): its
        // connection is still good for the next request.
        if self.connection.is_some() && self.reader.decoder.is_done() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "close"),
            ("x-kept", "yes"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        prepare_request_headers(&mut headers, &ClientInfo::new("192.0.2.7:5000".parse().unwrap()));
        let mut names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["x-forwarded-for", "x-forwarded-proto", "x-kept"]);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn hash_key_reads_header_cookie_or_source_ip() {
        let client = ClientInfo::new("192.0.2.7:5000".parse().unwrap());
        let mut config = ServiceConfig::new("web", crate::Mode::Http, "127.0.0.1:0".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; session=abc123"));
        headers.insert("x-user", HeaderValue::from_static("alice"));
        assert_eq!(hash_key(&config, &headers, &client), None, "only consistent_hash hashes");

        config.balance = Algorithm::ConsistentHash;
        config.hash_on = HashOn::Cookie("session".to_string());
        assert_eq!(hash_key(&config, &headers, &client), Some(hash_bytes(b"abc123")));
        config.hash_on = HashOn::Cookie("missing".to_string());
        assert_eq!(hash_key(&config, &headers, &client), None);
        config.hash_on = HashOn::Header("x-user".to_string());
        assert_eq!(hash_key(&config, &headers, &client), Some(hash_bytes(b"alice")));
        config.hash_on = HashOn::SourceIp;
        assert_eq!(hash_key(&config, &headers, &client), Some(hash_bytes(b"192.0.2.7")));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        headers.insert(header::HOST, HeaderValue::from_static("web.example"));
        prepare_request_headers(&mut headers, &ClientInfo::new("192.0.2.7:5000".parse().unwrap()));
        assert_eq!(headers["x-forwarded-for"], "203.0.113.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-host"], "web.example");
    }
}
