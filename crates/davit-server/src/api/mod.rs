//! The HTTP API under `/v1` (routes listed in `davit_api::http`).
//!
//! Invalid input → 400 with an [`ApiError`] (spec problems carry `file:line:col`), unknown objects → 404,
//! conflicting writes → 409. A rejected request changes nothing in the store.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use davit_api::acl::{Access, Capability, RouteRule, Rule, VariableCapability};
use davit_api::http::{ApiError, INDEX_HEADER};
use davit_api::objects::Index;
use serde::Deserialize;

use crate::Shared;
use crate::acl::RouteGuard;

mod acl;
mod allocs;
mod deployments;
mod events;
mod forward;
pub(crate) mod jobs;
mod namespaces;
mod nodes;
mod plan;
mod rebalance;
pub(crate) mod services;
mod variables;

/// One route: its method, pattern and rule, and the handler.
struct Route {
    info: RouteRule,
    handler: MethodRouter<Arc<Shared>>,
}

fn route<H, T>(method: Method, path: &'static str, rule: Rule, handler: H) -> Route
where
    H: Handler<T, Arc<Shared>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("the API uses standard methods");
    Route { info: RouteRule { method: method_name(&method), path, rule }, handler: on(filter, handler) }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Every route of the API with the rule it needs. The router is built from this list, so a route cannot be
/// added without a rule; `tests/acl.rs` walks it.
fn table() -> Vec<Route> {
    use Capability::*;
    use Method as M;
    let ns = Rule::Namespace;
    let node_read = Rule::Node(Access::Read);
    let node_write = Rule::Node(Access::Write);
    vec![
        route(M::POST, "/v1/jobs", ns(SubmitJob), jobs::register),
        route(M::GET, "/v1/jobs", ns(ReadJob), jobs::list),
        route(M::POST, "/v1/jobs/validate", ns(ReadJob), jobs::validate),
        route(M::POST, "/v1/jobs/plan", ns(SubmitJob), plan::plan),
        route(M::GET, "/v1/job/{name}", ns(ReadJob), jobs::get_job),
        route(M::DELETE, "/v1/job/{name}", ns(SubmitJob), jobs::stop),
        route(M::GET, "/v1/job/{name}/status", ns(ReadJob), jobs::status),
        route(M::GET, "/v1/job/{name}/versions", ns(ReadJob), jobs::versions),
        // Agents (node: write, or a node identity for its own allocations) read the versions of the jobs they run.
        route(M::GET, "/v1/job/{name}/version/{version}", Rule::NamespaceOrNode(ReadJob, Access::Write), jobs::version),
        route(M::GET, "/v1/job/{name}/diff", ns(ReadJob), jobs::diff),
        route(M::POST, "/v1/job/{name}/revert", ns(SubmitJob), jobs::revert),
        route(M::POST, "/v1/job/{name}/scale", Rule::NamespaceAny(&[ScaleJob, SubmitJob]), jobs::scale),
        route(M::GET, "/v1/job/{name}/scaling", ns(ReadJob), jobs::scaling),
        route(M::GET, "/v1/job/{name}/allocations", ns(ReadJob), jobs::allocations),
        route(M::GET, "/v1/job/{name}/evaluations", ns(ReadJob), jobs::evaluations),
        route(M::GET, "/v1/job/{name}/deployment", ns(ReadJob), deployments::of_job),
        route(M::GET, "/v1/deployments", ns(ReadJob), deployments::list),
        route(M::GET, "/v1/deployment/{id}", ns(ReadJob), deployments::get),
        route(M::POST, "/v1/deployment/{id}/fail", ns(DeploymentWrite), deployments::fail),
        route(M::POST, "/v1/deployment/{id}/pause", ns(DeploymentWrite), deployments::pause),
        route(M::POST, "/v1/deployment/{id}/resume", ns(DeploymentWrite), deployments::resume),
        route(M::POST, "/v1/deployment/{id}/promote", ns(DeploymentWrite), deployments::promote),
        route(M::POST, "/v1/deployment/{id}/health", ns(DeploymentWrite), deployments::set_health),
        route(M::GET, "/v1/nodes", node_read, nodes::list),
        route(M::POST, "/v1/nodes/register", Rule::Register, nodes::register),
        route(M::PUT, "/v1/nodes/heartbeat", node_write, nodes::heartbeat_many),
        route(M::POST, "/v1/nodes/allocations", node_read, nodes::nodes_allocations),
        route(M::POST, "/v1/nodes/allocations/status", node_write, nodes::update_allocations_many),
        route(M::GET, "/v1/node/{id}", node_read, nodes::get_node),
        route(M::PUT, "/v1/node/{id}/heartbeat", Rule::ThisNode(Access::Write), nodes::heartbeat),
        route(M::POST, "/v1/node/{id}/certificate", Rule::ThisNode(Access::Write), nodes::renew_certificate),
        route(M::POST, "/v1/node/{id}/eligibility", node_write, nodes::eligibility),
        route(M::POST, "/v1/node/{id}/drain", node_write, nodes::drain),
        route(M::GET, "/v1/node/{id}/allocations", Rule::ThisNode(Access::Read), nodes::allocations),
        route(M::POST, "/v1/node/{id}/allocations/status", Rule::ThisNode(Access::Write), nodes::update_allocations),
        route(M::POST, "/v1/node/{id}/usage", Rule::ThisNode(Access::Write), nodes::usage),
        // A node's proxy wakes a group scaled to zero (any node may proxy any service).
        route(M::POST, "/v1/node/{id}/activate", Rule::ThisNode(Access::Write), nodes::activate),
        // Secrets: only the node itself (or an agent token with node: write), not readers of nodes.
        route(M::GET, "/v1/node/{id}/allocation/{alloc_id}/template-data", Rule::ThisNode(Access::Write), variables::template_data),
        route(M::GET, "/v1/allocations", ns(ReadJob), allocs::list),
        route(M::GET, "/v1/allocation/{id}", ns(ReadJob), allocs::get_alloc),
        route(M::GET, "/v1/allocation/{id}/logs", ns(ReadLogs), allocs::logs),
        route(M::GET, "/v1/allocation/{id}/usage", ns(ReadJob), allocs::usage),
        route(M::GET, "/v1/allocation/{id}/exec", ns(AllocExec), allocs::exec),
        route(M::POST, "/v1/allocation/{id}/migrate", ns(AllocLifecycle), allocs::migrate),
        route(M::POST, "/v1/allocation/{id}/restart", ns(AllocLifecycle), allocs::restart),
        route(M::GET, "/v1/evaluations", ns(ReadJob), allocs::list_evals),
        route(M::GET, "/v1/evaluation/{id}", ns(ReadJob), allocs::get_eval),
        route(M::GET, "/v1/services", ns(ReadJob), services::list),
        route(M::GET, "/v1/service/{name}", ns(ReadJob), services::get_service),
        route(M::GET, "/v1/catalog", Rule::AnyNode(Access::Read), services::catalog),
        route(M::POST, "/v1/rebalance", Rule::Operator(Access::Write), rebalance::rebalance_cluster),
        route(M::GET, "/v1/status", Rule::Operator(Access::Read), status),
        route(M::GET, "/v1/event/stream", ns(ReadJob), events::stream),
        route(M::GET, "/metrics", Rule::Operator(Access::Read), events::metrics),
        route(M::GET, "/v1/namespaces", Rule::Authenticated, namespaces::list),
        // Status: any capability in the namespace the path names (checked by the handler).
        route(M::GET, "/v1/namespace/{name}", Rule::Authenticated, namespaces::get),
        route(M::PUT, "/v1/namespace/{name}", Rule::Management, namespaces::apply),
        route(M::DELETE, "/v1/namespace/{name}", Rule::Management, namespaces::delete),
        route(M::GET, "/v1/vars", Rule::VariableList, variables::list),
        route(M::GET, "/v1/var/{*path}", Rule::Variable(VariableCapability::Read), variables::get),
        route(M::PUT, "/v1/var/{*path}", Rule::Variable(VariableCapability::Write), variables::put),
        route(M::DELETE, "/v1/var/{*path}", Rule::Variable(VariableCapability::Write), variables::delete),
        route(M::GET, "/v1/operator/keyring", Rule::Operator(Access::Read), variables::keyring),
        route(M::POST, "/v1/operator/keyring/rotate", Rule::Operator(Access::Write), variables::rotate),
        route(M::DELETE, "/v1/operator/keyring/{id}", Rule::Operator(Access::Write), variables::remove_key),
        route(M::POST, "/v1/operator/gc", Rule::Operator(Access::Write), gc),
        route(M::GET, "/v1/operator/servers", Rule::Operator(Access::Read), servers),
        // Every key, secrets included (sealed variables, token hashes): management only.
        route(M::GET, "/v1/operator/snapshot", Rule::Management, snapshot),
        route(M::POST, "/v1/acl/bootstrap", Rule::Bootstrap, acl::bootstrap),
        route(M::GET, "/v1/acl/policies", Rule::Authenticated, acl::list_policies),
        route(M::GET, "/v1/acl/policy/{name}", Rule::Authenticated, acl::get_policy),
        route(M::PUT, "/v1/acl/policy/{name}", Rule::Management, acl::apply_policy),
        route(M::DELETE, "/v1/acl/policy/{name}", Rule::Management, acl::delete_policy),
        route(M::GET, "/v1/acl/tokens", Rule::Management, acl::list_tokens),
        route(M::POST, "/v1/acl/tokens", Rule::Management, acl::create_token),
        route(M::GET, "/v1/acl/token/self", Rule::Authenticated, acl::token_self),
        route(M::GET, "/v1/acl/token/{accessor_id}", Rule::Management, acl::get_token),
        route(M::DELETE, "/v1/acl/token/{accessor_id}", Rule::Management, acl::revoke_token),
    ]
}

/// The API's routes with their rules.
pub fn routes() -> Vec<RouteRule> {
    table().into_iter().map(|route| route.info).collect()
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    for Route { info, handler } in table() {
        let guard = RouteGuard { shared: Arc::clone(&shared), rule: info.rule, route: info.path };
        router = router.route(info.path, handler.route_layer(from_fn_with_state(guard, crate::acl::authorize)));
    }
    router
        .fallback(|| async { Failure::not_found("no such API route; see the route list in the davit_api::http docs".to_string()) })
        .layer(from_fn_with_state(Arc::clone(&shared), forward::forward))
        .layer(axum::middleware::map_response(json_errors))
        .layer(from_fn_with_state(Arc::clone(&shared.admission), crate::admission::admit))
        .layer(axum::middleware::map_response_with_state(Arc::clone(&shared), with_cluster_id))
        .with_state(shared)
}

/// Every error answer is an [`ApiError`] in JSON, also those axum makes itself (a query string, path or body
/// its extractors refuse, a method a route does not have, a body too large); their text becomes the message
/// and headers such as `Allow` stay.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text =
        axum::body::to_bytes(body, 64 * 1024).await.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string()).unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let mut answer = Failure::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// Names the cluster on every answer.
async fn with_cluster_id(axum::extract::State(shared): axum::extract::State<Arc<Shared>>, mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::from_str(&shared.cluster_id) {
        response.headers_mut().insert(davit_api::http::CLUSTER_HEADER, value);
    }
    response
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
    /// What the failure says (for logs of internal callers).
    pub fn message(&self) -> &str {
        &self.body.message
    }
    pub fn status(&self) -> StatusCode {
        self.status
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
    pub fn forbidden(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn invalid_spec(errors: &davit_api::spec::SpecErrors) -> Failure {
        Failure::invalid_document("job spec", errors)
    }
    /// A document (job spec, ACL policy) with problems at `file:line:col`.
    pub fn invalid_document(what: &str, errors: &davit_api::spec::SpecErrors) -> Failure {
        let count = errors.0.len();
        let mut failure = Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_spec",
            format!("the {what} has {count} problem{}:\n{errors}", if count == 1 { "" } else { "s" }),
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
        if error.is_disk_full() {
            return Failure::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the server's data disk is full, so nothing was written: free space under its --data-dir and try again",
            );
        }
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the store failed: {error}"))
    }
}

/// A JSON answer with the index header.
pub(crate) fn indexed<T: serde::Serialize>(index: Index, value: &T) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(INDEX_HEADER, HeaderValue::from(index));
    (headers, axum::Json(value)).into_response()
}

/// `?per_page=N&next_token=T` of list routes: at most `per_page` items (default [`DEFAULT_PAGE`], at most
/// [`MAX_PAGE`]) from the one `next_token` names; the answer's [`NEXT_TOKEN_HEADER`] names the next page's
/// first item, when there is one. Tokens are keys, not offsets: a page starts where the last one ended even
/// if items came or went in between.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Page {
    #[serde(default)]
    pub per_page: Option<usize>,
    #[serde(default)]
    pub next_token: Option<String>,
}

pub(crate) const DEFAULT_PAGE: usize = 1000;
pub(crate) const MAX_PAGE: usize = davit_api::http::MAX_PAGE;

/// One page of `items` (any order), ordered by `key` (unique per item), as an indexed answer.
pub(crate) fn paged<T: serde::Serialize>(
    index: Index,
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    page: &Page,
) -> Result<Response, Failure> {
    let per_page = page.per_page.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&per_page) {
        return Err(Failure::bad_request(format!("per_page must be from 1 to {MAX_PAGE}, found {per_page}")));
    }
    let mut keyed: Vec<(String, T)> = items.into_iter().map(|item| (key(&item), item)).collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let start = match &page.next_token {
        Some(token) => {
            let from =
                decode_token(token).ok_or_else(|| Failure::bad_request(format!("`{token}` is not a next_token this server gave")))?;
            keyed.partition_point(|(key, _)| key.as_str() < from.as_str())
        }
        None => 0,
    };
    let mut rest = keyed.split_off(start);
    let next = rest.get(per_page).map(|(key, _)| encode_token(key));
    rest.truncate(per_page);
    let items: Vec<T> = rest.into_iter().map(|(_, item)| item).collect();
    let mut response = indexed(index, &items);
    if let Some(next) = next {
        response
            .headers_mut()
            .insert(davit_api::http::NEXT_TOKEN_HEADER, HeaderValue::from_str(&next).expect("hex is a valid header value"));
    }
    Ok(response)
}

fn encode_token(key: &str) -> String {
    crate::keyring::hex(key.as_bytes())
}

fn decode_token(token: &str) -> Option<String> {
    String::from_utf8(crate::keyring::unhex(token)?).ok()
}

/// An order-preserving key part for a number that sorts newest (largest) first.
pub(crate) fn descending(number: u64) -> String {
    format!("{:020}", u64::MAX - number)
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

/// The id of the job a route's `{name}` names, in the request's namespace (`?namespace=`, default `default`):
/// see `davit_api::namespace::job_id`.
pub(crate) struct JobId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for JobId {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<JobId, Failure> {
        let axum::extract::Path(params) =
            axum::extract::Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| Failure::bad_request(e.to_string()))?;
        let name = params.get("name").ok_or_else(|| Failure::bad_request("the route has no job name"))?;
        if name.contains('/') {
            return Err(Failure::bad_request(format!("`{name}` is not a job name; name the namespace with ?namespace= (-n)")));
        }
        let namespace = davit_api::acl::request_namespace(parts.uri.query());
        Ok(JobId(davit_api::namespace::job_id(&namespace, name)))
    }
}

/// Turns an axum JSON extraction failure into our 400 shape.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::bad_request(format!("invalid {what} JSON: {e}")))
}

#[derive(Debug, Default, Deserialize)]
struct GcQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /v1/operator/gc`: one garbage collection pass now.
async fn gc(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<GcQuery>,
) -> Result<Response, Failure> {
    let report = crate::gc::collect(&shared.store, &shared.view, &shared.applier, &shared.gc, query.force).await?;
    Ok(indexed(report.index, &report))
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

/// The servers of the cluster and which one leads; a server alone on its store is the only one.
async fn servers(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Result<Response, Failure> {
    let mut members = crate::leader::members(shared.store.as_ref()).await?;
    if members.is_empty() {
        let addr = shared.addr.to_string();
        members.push(davit_api::http::ServerMember {
            name: addr.clone(),
            addr,
            leader: shared.leader.is_none(),
            leader_since: shared.leader.is_none().then_some(shared.started),
            started: shared.started,
        });
    }
    Ok(indexed(shared.view.snapshot().revision, &members))
}

/// Every key of the store at one revision but the servers' own (`davit operator snapshot save`).
async fn snapshot(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Result<Response, Failure> {
    let snapshot = davit_store::snapshot::take(shared.store.as_ref(), &[crate::keys::SERVERS], crate::now_millis()).await?;
    let data = davit_store::snapshot::encode(&snapshot.header, &snapshot.items);
    let mut headers = HeaderMap::new();
    headers.insert(INDEX_HEADER, HeaderValue::from(snapshot.header.revision));
    headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok((headers, data).into_response())
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
