//! A follower's side of the API: reads are answered from its own view; writes, and the reads that need the
//! leader's memory (usage samples, the autoscaler's state), are forwarded to the leader as they came (method,
//! path, query, token and body) and its answer passed back. The leader checks the token itself. Before a
//! forwarded write's answer goes back, the follower's view catches up with the store, so a client that reads
//! from the same follower next sees its write.
//!
//! With mutual TLS on, a forwarded request would reach the leader with the follower's certificate instead of
//! the caller's (an agent's node identity), so a follower answers 503 `not_leader` instead and names the
//! leader: agents move on to their next server, the CLI says where to go.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Failure;
use crate::Shared;

/// Marks a request a follower forwarded: a server that gets one and does not lead (leadership moved while it
/// was under way) refuses it instead of forwarding it again.
const FORWARDED_HEADER: &str = "x-davit-forwarded";
/// Request bodies a follower forwards: the API's own limit is 2 MiB.
const MAX_BODY: usize = 4 << 20;
/// Long enough for a blocking query sent as a POST (`/v1/nodes/allocations`, up to 300 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(330);
/// How long a forwarded write's answer waits for the follower's view to show it.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 8] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"];

/// Whether a request must be answered by the leader: every write, and the reads of its in-memory state (the
/// agents' usage samples, the autoscaler's history). Variables are read anywhere: the servers on one store share
/// one keyring (a server whose keyring lacks a key in use does not start).
fn needs_leader(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return true;
    }
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["", "v1", "allocation", _, "usage"] | ["", "v1", "job", _, "scaling"])
}

/// The middleware: passes a request on to the routes, or forwards it to the leader.
pub(crate) async fn forward(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(leader) = &shared.leader else { return next.run(request).await };
    if !needs_leader(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let unavailable = |message: String| Failure::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message).into_response();
    let Some(to) = leader.borrow().clone() else {
        return unavailable("no server leads right now (an election is under way); try again in a few seconds".to_string());
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        return unavailable(format!("this server no longer leads ({} does); try again", to.name));
    }
    if shared.tls.is_some() {
        return unavailable(format!("this request needs the leader, {} at https://{}: send it there", to.name, to.addr));
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(error) => {
            return Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("request body: {error}")).into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut forwarded = shared.http.request(parts.method.clone(), format!("http://{}{path}", to.addr)).timeout(FORWARD_TIMEOUT);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = match forwarded.header(FORWARDED_HEADER, "1").body(body).send().await {
        Ok(answer) => answer,
        Err(error) if error.is_connect() => {
            return unavailable(format!(
                "the leader {} at {} does not answer ({error}); if it stopped, another server leads within the lease TTL: try again",
                to.name, to.addr
            ));
        }
        Err(error) => {
            return unavailable(format!(
                "the leader {} at {} did not answer in full ({error}): the request may or may not have been applied; look before \
                 trying again",
                to.name, to.addr
            ));
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => return unavailable(format!("reading the leader's answer failed: {error}")),
    };
    if status.is_success() && parts.method != Method::GET && parts.method != Method::HEAD {
        let index = headers.get(davit_api::http::INDEX_HEADER).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        catch_up(&shared, index).await;
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != header::CONTENT_LENGTH {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// Waits (a little) until this server's view shows the leader's answer: the index it named, or everything the
/// store has now when it named none.
async fn catch_up(shared: &Shared, index: Option<u64>) {
    let revision = match index {
        Some(index) if index > 0 => index,
        _ => match shared.store.current_revision().await {
            Ok(revision) => revision,
            Err(_) => return,
        },
    };
    if tokio::time::timeout(CATCH_UP, shared.view.wait_for(revision)).await.is_err() {
        tracing::warn!(revision, "the view did not catch up with a forwarded write within {CATCH_UP:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_the_leaders_memory_go_to_the_leader() {
        assert!(needs_leader(&Method::POST, "/v1/jobs"));
        assert!(needs_leader(&Method::DELETE, "/v1/job/web"));
        assert!(needs_leader(&Method::PUT, "/v1/node/n1/heartbeat"));
        assert!(needs_leader(&Method::GET, "/v1/allocation/abc/usage"));
        assert!(needs_leader(&Method::GET, "/v1/job/web/scaling"));
        assert!(!needs_leader(&Method::GET, "/v1/var/app/db"));
        assert!(!needs_leader(&Method::GET, "/v1/node/n1/allocation/a1/template-data"));
        assert!(!needs_leader(&Method::GET, "/v1/job/web/status"));
        assert!(!needs_leader(&Method::GET, "/v1/allocation/abc/logs"));
        assert!(!needs_leader(&Method::GET, "/v1/event/stream"));
        assert!(!needs_leader(&Method::GET, "/v1/node/n1/allocations"));
    }
}
