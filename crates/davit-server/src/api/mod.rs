//! The HTTP API under `/v1` (routes listed in `davit_api::http`).
//!
//! Invalid input → 400 with an [`ApiError`] (spec problems carry `file:line:col`), unknown objects → 404,
//! conflicting writes → 409. A rejected request changes nothing in the store.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use davit_api::http::{ApiError, INDEX_HEADER};
use davit_api::objects::Index;
use serde::Deserialize;

use crate::Shared;

mod allocs;
mod events;
mod jobs;
mod nodes;
mod plan;
mod rebalance;
mod services;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/jobs", post(jobs::register).get(jobs::list))
        .route("/v1/jobs/validate", post(jobs::validate))
        .route("/v1/jobs/plan", post(plan::plan))
        .route("/v1/job/{name}", get(jobs::get_job).delete(jobs::stop))
        .route("/v1/job/{name}/status", get(jobs::status))
        .route("/v1/job/{name}/versions", get(jobs::versions))
        .route("/v1/job/{name}/version/{version}", get(jobs::version))
        .route("/v1/job/{name}/diff", get(jobs::diff))
        .route("/v1/job/{name}/revert", post(jobs::revert))
        .route("/v1/job/{name}/scale", post(jobs::scale))
        .route("/v1/job/{name}/allocations", get(jobs::allocations))
        .route("/v1/job/{name}/evaluations", get(jobs::evaluations))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/register", post(nodes::register))
        .route("/v1/nodes/heartbeat", put(nodes::heartbeat_many))
        .route("/v1/nodes/allocations", post(nodes::nodes_allocations))
        .route("/v1/nodes/allocations/status", post(nodes::update_allocations_many))
        .route("/v1/node/{id}", get(nodes::get_node))
        .route("/v1/node/{id}/heartbeat", put(nodes::heartbeat))
        .route("/v1/node/{id}/eligibility", post(nodes::eligibility))
        .route("/v1/node/{id}/drain", post(nodes::drain))
        .route("/v1/node/{id}/allocations", get(nodes::allocations))
        .route("/v1/node/{id}/allocations/status", post(nodes::update_allocations))
        .route("/v1/allocations", get(allocs::list))
        .route("/v1/allocation/{id}", get(allocs::get_alloc))
        .route("/v1/allocation/{id}/logs", get(allocs::logs))
        .route("/v1/allocation/{id}/exec", get(allocs::exec))
        .route("/v1/allocation/{id}/migrate", post(allocs::migrate))
        .route("/v1/evaluations", get(allocs::list_evals))
        .route("/v1/evaluation/{id}", get(allocs::get_eval))
        .route("/v1/services", get(services::list))
        .route("/v1/service/{name}", get(services::get_service))
        .route("/v1/catalog", get(services::catalog))
        .route("/v1/rebalance", post(rebalance::rebalance_cluster))
        .route("/v1/status", get(status))
        .route("/v1/event/stream", get(events::stream))
        .route("/metrics", get(events::metrics))
        .fallback(|| async { Failure::not_found("no such API route; see the route list in the davit_api::http docs".to_string()) })
        .with_state(shared)
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    body: ApiError,
}

impl Failure {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure { status, body: ApiError { code: code.to_string(), message: message.into(), spec_errors: Vec::new() } }
    }
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn invalid_spec(errors: &davit_api::spec::SpecErrors) -> Failure {
        let count = errors.0.len();
        let mut failure = Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_spec",
            format!("the job spec has {count} problem{}:\n{errors}", if count == 1 { "" } else { "s" }),
        );
        failure.body.spec_errors = errors.0.iter().map(Into::into).collect();
        failure
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

impl From<davit_store::StoreError> for Failure {
    fn from(error: davit_store::StoreError) -> Self {
        tracing::error!(%error, "store operation failed");
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the store failed: {error}"))
    }
}

/// A JSON answer with the index header.
pub(crate) fn indexed<T: serde::Serialize>(index: Index, value: &T) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(INDEX_HEADER, HeaderValue::from(index));
    (headers, axum::Json(value)).into_response()
}

/// `?index=N&wait=30s` of blocking queries.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Blocking {
    #[serde(default)]
    pub index: Option<Index>,
    #[serde(default)]
    pub wait: Option<String>,
}

const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

impl Blocking {
    pub fn wait(&self) -> Result<Duration, Failure> {
        match &self.wait {
            None => Ok(DEFAULT_WAIT),
            Some(text) => davit_api::Duration::parse(text)
                .map(|d| d.as_std().min(MAX_WAIT))
                .map_err(|e| Failure::bad_request(format!("query parameter `wait`: {e}"))),
        }
    }
}

/// Turns an axum JSON extraction failure into our 400 shape.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::bad_request(format!("invalid {what} JSON: {e}")))
}

async fn status(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    let snapshot = shared.view.snapshot();
    let counts = crate::view::counts(&snapshot);
    indexed(
        snapshot.revision,
        &davit_api::http::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            index: snapshot.revision,
            nodes: counts["nodes"] as u32,
            jobs: counts["jobs"] as u32,
            store: shared.store.backend_name().to_string(),
        },
    )
}

/// Finds the one id in `ids` equal to or starting with `prefix`.
pub(crate) fn resolve_prefix<'a>(what: &str, prefix: &str, ids: impl Iterator<Item = &'a str>) -> Result<String, Failure> {
    if prefix.is_empty() {
        return Err(Failure::bad_request(format!("an {what} id or id prefix is required")));
    }
    let mut matches: Vec<&str> = Vec::new();
    for id in ids {
        if id == prefix {
            return Ok(id.to_string());
        }
        if id.starts_with(prefix) {
            matches.push(id);
        }
    }
    match matches.as_slice() {
        [] => Err(Failure::not_found(format!("no {what} with id or prefix `{prefix}`"))),
        [one] => Ok(one.to_string()),
        many => Err(Failure::bad_request(format!(
            "{what} prefix `{prefix}` is ambiguous; it matches {}: {}; give more characters",
            many.len(),
            many.iter().take(8).copied().collect::<Vec<_>>().join(", ")
        ))),
    }
}
