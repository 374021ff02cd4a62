//! L7 (HTTP/1.1) forwarding with hyper: keep-alive on both sides, streamed bodies, hop-by-hop header
//! removal, `X-Forwarded-*` headers and retries of idempotent bodiless requests on another backend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::ActiveGuard;
use crate::balance::hash_bytes;
use crate::config::{Algorithm, HashOn, ProxyConfig, ServiceConfig};
use crate::proxy::ServiceShared;

pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Pooled HTTP/1.1 client shared by all services: one keep-alive pool per backend address.
pub(crate) type HttpClient = Client<HttpConnector, ProxyBody>;

pub(crate) fn client(config: &ProxyConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_idle_timeout(config.pool_idle_timeout).pool_max_idle_per_host(256).build(connector)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are never forwarded, besides those named in `Connection`.
const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "http2-settings"];

/// Accept loop of one HTTP service; runs until aborted. When `shutdown` fires, open connections finish
/// their current request and close.
pub(crate) async fn serve(shared: Arc<ServiceShared>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "proxy accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(shared, client, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
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
async fn handle(shared: Arc<ServiceShared>, client: SocketAddr, request: Request<Incoming>) -> Response<ProxyBody> {
    let snapshot = shared.snapshot();
    let config = &snapshot.config;
    if snapshot.endpoints.is_empty() {
        return text_response(StatusCode::SERVICE_UNAVAILABLE, format!("davit proxy: service {} has no backends\n", config.name));
    }

    let (mut parts, body) = request.into_parts();
    prepare_request_headers(&mut parts.headers, client);
    let hash_key = hash_key(config, &parts.headers, client);
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let max_attempts = if retryable { config.retries.saturating_add(1) } else { 1 };
    let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut body = Some(body);
    let mut tried = Vec::new();
    let mut last_failure: Option<Response<ProxyBody>> = None;

    for attempt in 0..max_attempts {
        let Some(index) = shared.pick(&snapshot, hash_key, &tried) else { break };
        tried.push(index);
        let endpoint = &snapshot.endpoints[index];
        let guard = endpoint.stats.start();
        let uri = Uri::builder().scheme(Scheme::HTTP).authority(endpoint.authority.clone()).path_and_query(path_and_query.clone()).build();
        let Ok(uri) = uri else {
            return text_response(StatusCode::BAD_REQUEST, "davit proxy: invalid request target\n".to_string());
        };
        let mut outgoing = Request::new(match body.take() {
            Some(body) => body.boxed_unsync(),
            None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
        });
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.version_mut() = hyper::Version::HTTP_11;
        // The last attempt takes the headers; earlier ones copy them.
        *outgoing.headers_mut() = if attempt + 1 < max_attempts { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };

        let started = Instant::now();
        let result = shared.client.request(outgoing).await;
        let latency = started.elapsed();
        let has_attempts_left = attempt + 1 < max_attempts;
        match result {
            Ok(response) if response.status().is_server_error() => {
                if endpoint.stats.record_failure(Some(latency), &config.outlier, Instant::now()) {
                    tracing::info!(service = %config.name, backend = %endpoint.backend.id, "backend ejected after 5xx");
                }
                let response = finish_response(response, guard);
                if !has_attempts_left {
                    return response;
                }
                last_failure = Some(response);
            }
            Ok(response) => {
                endpoint.stats.record_success(latency, Instant::now());
                return finish_response(response, guard);
            }
            Err(error) => {
                tracing::debug!(service = %config.name, backend = %endpoint.backend.id, %error, "backend request failed");
                if endpoint.stats.record_failure(None, &config.outlier, Instant::now()) {
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

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// Removes hop-by-hop headers, and those named in `Connection`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn prepare_request_headers(headers: &mut HeaderMap, client: SocketAddr) {
    remove_hop_by_hop(headers);
    let client_ip = client.ip().to_string();
    let forwarded_for = match headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok()).collect::<Vec<_>>() {
        previous if previous.is_empty() => client_ip,
        previous => format!("{}, {client_ip}", previous.join(", ")),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
}

fn hash_key(config: &ServiceConfig, headers: &HeaderMap, client: SocketAddr) -> Option<u64> {
    if config.balance != Algorithm::ConsistentHash {
        return None;
    }
    match &config.hash_on {
        HashOn::SourceIp => Some(hash_bytes(client.ip().to_string().as_bytes())),
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

fn finish_response(response: Response<Incoming>, guard: ActiveGuard) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, GuardedBody { inner: body, guard: Some(guard) }.boxed_unsync())
}

fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A backend's response body that keeps the request counted as active until it is fully streamed or
/// dropped.
struct GuardedBody {
    inner: Incoming,
    guard: Option<ActiveGuard>,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        prepare_request_headers(&mut headers, "192.0.2.7:5000".parse().unwrap());
        let mut names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["x-forwarded-for", "x-forwarded-proto", "x-kept"]);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn hash_key_reads_header_cookie_or_source_ip() {
        let client: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut config = ServiceConfig::new("web", crate::Mode::Http, "127.0.0.1:0".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; session=abc123"));
        headers.insert("x-user", HeaderValue::from_static("alice"));
        assert_eq!(hash_key(&config, &headers, client), None, "only consistent_hash hashes");

        config.balance = Algorithm::ConsistentHash;
        config.hash_on = HashOn::Cookie("session".to_string());
        assert_eq!(hash_key(&config, &headers, client), Some(hash_bytes(b"abc123")));
        config.hash_on = HashOn::Cookie("missing".to_string());
        assert_eq!(hash_key(&config, &headers, client), None);
        config.hash_on = HashOn::Header("x-user".to_string());
        assert_eq!(hash_key(&config, &headers, client), Some(hash_bytes(b"alice")));
        config.hash_on = HashOn::SourceIp;
        assert_eq!(hash_key(&config, &headers, client), Some(hash_bytes(b"192.0.2.7")));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        headers.insert(header::HOST, HeaderValue::from_static("web.example"));
        prepare_request_headers(&mut headers, "192.0.2.7:5000".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "203.0.113.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-host"], "web.example");
    }
}
