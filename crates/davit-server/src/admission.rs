//! Caps on the requests that stay open: blocking queries (a GET with `?index=`) and event streams, per client
//! address and in total. A request over a cap gets 429 with `Retry-After`, before any work is done for it;
//! an event stream holds its slot until its body ends (the client went away or the server stops).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::api::Failure;

/// The caps.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    pub blocking_queries: usize,
    pub blocking_queries_per_client: usize,
    pub event_streams: usize,
    pub event_streams_per_client: usize,
    /// Most bytes of events one event stream may have waiting for its client; a subscriber that falls further
    /// behind gets a last line saying so and its stream ends (it resumes from the index it saw last).
    pub event_stream_buffer_bytes: usize,
}

impl Default for AdmissionConfig {
    fn default() -> AdmissionConfig {
        AdmissionConfig {
            blocking_queries: 16_384,
            blocking_queries_per_client: 1_024,
            event_streams: 512,
            event_streams_per_client: 64,
            event_stream_buffer_bytes: 16 << 20,
        }
    }
}

/// One kind of open request and its counts.
struct Class {
    what: &'static str,
    flag: &'static str,
    total: usize,
    per_client: usize,
    /// Open requests in all, and per client address.
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A place taken in a [`Class`]; given back when dropped.
pub(crate) struct Slot {
    class: Arc<Class>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.class.open.lock().expect("admission lock");
        open.0 = open.0.saturating_sub(1);
        if let Some(count) = open.1.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&self.client);
            }
        }
    }
}

impl Class {
    fn admit(self: &Arc<Class>, client: IpAddr) -> Result<Slot, Failure> {
        let mut open = self.open.lock().expect("admission lock");
        let of_client = open.1.get(&client).copied().unwrap_or(0);
        let refuse = |detail: String| {
            Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("{detail}; retry in a moment (an operator raises the limit with `davit server --{}`)", self.flag),
            )
        };
        if of_client >= self.per_client {
            return Err(refuse(format!("{client} has {of_client} {} open, the most one client may", self.what)));
        }
        if open.0 >= self.total {
            return Err(refuse(format!("the server has {} {} open, the most it takes", open.0, self.what)));
        }
        open.0 += 1;
        *open.1.entry(client).or_default() += 1;
        Ok(Slot { class: Arc::clone(self), client })
    }
}

/// The classes of open requests.
pub(crate) struct Admission {
    blocking: Arc<Class>,
    streams: Arc<Class>,
    /// [`AdmissionConfig::event_stream_buffer_bytes`].
    pub stream_buffer_bytes: usize,
}

impl Admission {
    pub fn new(config: &AdmissionConfig) -> Admission {
        let class = |what, flag, total, per_client| Arc::new(Class { what, flag, total, per_client, open: Mutex::default() });
        Admission {
            blocking: class("blocking queries", "max-blocking-queries", config.blocking_queries, config.blocking_queries_per_client),
            streams: class("event streams", "max-event-streams", config.event_streams, config.event_streams_per_client),
            stream_buffer_bytes: config.event_stream_buffer_bytes.max(1),
        }
    }
}

/// The layer: counts open requests of each class and refuses those over a cap.
pub(crate) async fn admit(State(admission): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let is_stream = request.uri().path() == "/v1/event/stream";
    // Decoded as the handlers decode it (`%69ndex` is `index`).
    let is_blocking = (request.method() == Method::GET || request.method() == Method::HEAD)
        && request.uri().query().is_some_and(|query| form_urlencoded::parse(query.as_bytes()).any(|(name, _)| name == "index"));
    let class = match (is_stream, is_blocking) {
        (true, _) => &admission.streams,
        (false, true) => &admission.blocking,
        (false, false) => return next.run(request).await,
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<davit_tls::Peer>>()
        .and_then(|info| info.0.remote)
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |remote| remote.ip());
    let slot = match class.admit(client) {
        Ok(slot) => slot,
        Err(failure) => {
            let mut response = failure.into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let response = next.run(request).await;
    if !is_stream {
        return response;
    }
    // A stream keeps its slot while its body is open.
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_client_and_in_total_and_given_back() {
        let config = AdmissionConfig { blocking_queries: 3, blocking_queries_per_client: 2, ..AdmissionConfig::default() };
        let admission = Admission::new(&config);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = admission.blocking.admit(a).unwrap();
        let _second = admission.blocking.admit(a).unwrap();
        let refused = admission.blocking.admit(a).err().unwrap();
        assert!(format!("{refused:?}").contains("10.0.0.1 has 2 blocking queries open"), "{refused:?}");
        let _third = admission.blocking.admit(b).unwrap();
        let full = admission.blocking.admit(b).err().unwrap();
        assert!(format!("{full:?}").contains("the server has 3 blocking queries open"), "{full:?}");
        drop(first);
        assert!(admission.blocking.admit(b).is_ok(), "a slot given back is free again");
    }
}
