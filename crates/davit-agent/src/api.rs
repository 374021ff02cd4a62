//! The agent's HTTP API: `GET /v1/agent/health`, `GET /v1/agent/allocation/{id}/logs`, the exec session
//! `GET /v1/agent/allocation/{id}/exec` (an HTTP upgrade, see `davit_api::exec`), and for the service proxy
//! `GET /v1/agent/proxy` (its counters, gathered by the server for `davit service info`) and `GET /metrics`
//! (its Prometheus metrics).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Extension, Json};
use davit_api::acl::{Access, Capability, RouteRule, Rule};
use davit_api::exec::EXEC_PROTOCOL;
use davit_api::http::{ApiError, ExecQuery, LogsQuery};
use davit_drivers::DriverError;
use tokio::sync::watch;

use crate::AgentContext;
use crate::acl::{RequestNamespace, RouteGuard};
use crate::alloc_runner::AllocRunner;
use crate::exec::{ExecError, ExecSession};
use crate::logs::LogReader;

/// Largest chunk sent at once.
const CHUNK: usize = 64 * 1024;
/// How often a followed log is checked for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Empty polls after the allocation became terminal before a followed stream ends.
const POLLS_AFTER_TERMINAL: u32 = 3;

/// Every route of the agent's API with the rule it needs (all GET). The router is built from this list.
fn table() -> Vec<(RouteRule, MethodRouter<Arc<AgentContext>>)> {
    let rule = |path, rule| RouteRule { method: "GET", path, rule };
    vec![
        (rule("/v1/agent/health", Rule::Node(Access::Read)), get(health)),
        (rule("/v1/agent/allocation/{id}/logs", Rule::Namespace(Capability::ReadLogs)), get(logs)),
        (rule("/v1/agent/allocation/{id}/exec", Rule::Namespace(Capability::AllocExec)), get(exec)),
        // The server gathers these for `service info --stats` with its caller's token (`read-job`).
        (rule("/v1/agent/proxy", Rule::Namespace(Capability::ReadJob)), get(proxy_stats)),
        (rule("/metrics", Rule::Operator(Access::Read)), get(metrics)),
    ]
}

/// The agent API's routes with their rules.
pub fn routes() -> Vec<RouteRule> {
    table().into_iter().map(|(info, _)| info).collect()
}

/// Serves the API on `listener`, over TLS with `tls`.
pub async fn serve(
    context: Arc<AgentContext>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<davit_tls::rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut router = Router::new();
    for (info, handler) in table() {
        let guard = RouteGuard { context: Arc::clone(&context), rule: info.rule };
        router = router.route(info.path, handler.route_layer(from_fn_with_state(guard, crate::acl::authorize)));
    }
    let router = router.with_state(context).into_make_service_with_connect_info::<davit_tls::Peer>();
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = match tls {
        Some(tls) => match davit_tls::TlsListener::new(listener, tls) {
            Ok(listener) => axum::serve(listener, router).with_graceful_shutdown(stopped).await,
            Err(error) => Err(error),
        },
        None => axum::serve(listener, router).with_graceful_shutdown(stopped).await,
    };
    if let Err(error) = result {
        tracing::error!(%error, "agent HTTP API failed");
    }
}

async fn health(State(context): State<Arc<AgentContext>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true, "node_id": context.node.id}))
}

/// The proxy's counters per listener and backend; 404 when the agent runs no service proxy.
/// Only the request's namespace's services: listeners are named by `service_key` (`<name>.<namespace>` outside
/// `default`; service names hold no `.`), upstream listeners with `:<port>` after it.
async fn proxy_stats(State(context): State<Arc<AgentContext>>, Extension(namespace): Extension<RequestNamespace>) -> Response {
    let in_namespace = |service: &str| match service.split_once('.') {
        Some((_, owner)) => owner == namespace.0,
        None => namespace.0 == davit_api::acl::DEFAULT_NAMESPACE,
    };
    match &context.service_proxy {
        Some(service_proxy) => {
            let stats: Vec<_> = service_proxy.stats().into_iter().filter(|listener| in_namespace(&listener.service)).collect();
            Json(stats).into_response()
        }
        None => api_error(StatusCode::NOT_FOUND, "not_found", "this agent runs no service proxy (--no-service-proxy)".to_string()),
    }
}

/// Prometheus text format: [`AgentContext::render_metrics`].
async fn metrics(State(context): State<Arc<AgentContext>>) -> Response {
    let mut body = String::new();
    context.render_metrics(&mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

pub(crate) fn api_error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(ApiError { code: code.to_string(), message, spec_errors: Vec::new() })).into_response()
}

async fn logs(
    State(context): State<Arc<AgentContext>>,
    Extension(namespace): Extension<RequestNamespace>,
    Path(alloc_id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let (runner, task) = match find_task(&context, &namespace, &alloc_id, query.task) {
        Ok(found) => found,
        Err(rejection) => return rejection.into_response(),
    };
    let stream = query.stream.unwrap_or_else(|| "stdout".to_string());
    if stream != "stdout" && stream != "stderr" {
        return api_error(StatusCode::BAD_REQUEST, "bad_request", format!("unknown log stream {stream:?}; use stdout or stderr"));
    }
    let log_dir = runner.log_dir();
    let (offset, lines) = (query.offset.unwrap_or(0), query.lines);
    let opened = tokio::task::spawn_blocking(move || match lines {
        Some(lines) => LogReader::open_last_lines(&log_dir, &task, &stream, lines),
        None => LogReader::open(&log_dir, &task, &stream, offset),
    })
    .await;
    let reader = match opened {
        Ok(Ok(reader)) if query.follow => reader,
        Ok(Ok(reader)) => reader.until_opened_end(),
        Ok(Err(error)) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("opening the log: {error}")),
        Err(error) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("opening the log: {error}")),
    };
    let follow = FollowState { reader: Some(reader), runner, follow: query.follow, empty_polls_after_terminal: 0 };
    let body = futures_util::stream::unfold(follow, next_chunk);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(body))
        .unwrap_or_else(|error| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()))
}

/// The allocation's runner and the task a request names (or its only task).
/// Allocations of other namespaces than the request's are not there for it.
fn find_task(
    context: &AgentContext,
    namespace: &RequestNamespace,
    alloc_id: &str,
    task: Option<String>,
) -> Result<(Arc<AllocRunner>, String), Rejection> {
    let runner = context.runners.lock().expect("runners lock").get(alloc_id).cloned();
    let runner = runner.filter(|runner| davit_api::namespace::namespace_of(&runner.job_id()) == namespace.0);
    let Some(runner) = runner else {
        return Err(Rejection(StatusCode::NOT_FOUND, "not_found", format!("allocation {alloc_id} is not on this node")));
    };
    let tasks = runner.task_names();
    let task = match task {
        Some(task) if tasks.contains(&task) => task,
        Some(task) => {
            return Err(Rejection(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("allocation {alloc_id} has no task {task}; its tasks: {}", tasks.join(", ")),
            ));
        }
        None if tasks.len() == 1 => tasks[0].clone(),
        None if tasks.is_empty() => {
            return Err(Rejection(StatusCode::NOT_FOUND, "not_found", format!("allocation {alloc_id} has no tasks yet")));
        }
        None => {
            return Err(Rejection(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("allocation {alloc_id} has several tasks; choose one with task=: {}", tasks.join(", ")),
            ));
        }
    };
    Ok((runner, task))
}

/// A request the agent turns down: status, error code, message.
struct Rejection(StatusCode, &'static str, String);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        api_error(self.0, self.1, self.2)
    }
}

/// Starts a command in a task and hands the connection over to the exec session (`101 Switching Protocols`).
async fn exec(
    State(context): State<Arc<AgentContext>>,
    Extension(namespace): Extension<RequestNamespace>,
    Path(alloc_id): Path<String>,
    Query(query): Query<ExecQuery>,
    mut request: axum::extract::Request,
) -> Response {
    let wants_exec = request.headers().get(header::UPGRADE).and_then(|value| value.to_str().ok()) == Some(EXEC_PROTOCOL);
    let upgrade = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let Some(upgrade) = upgrade.filter(|_| wants_exec) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("exec needs an HTTP/1.1 request with `Connection: upgrade` and `Upgrade: {EXEC_PROTOCOL}`"),
        );
    };
    let command: Vec<String> = match serde_json::from_str(&query.command) {
        Ok(command) => command,
        Err(error) => {
            return api_error(StatusCode::BAD_REQUEST, "bad_request", format!("command= must be a JSON array of strings: {error}"));
        }
    };
    if command.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "bad_request", "the command is empty; name a program to run".to_owned());
    }
    let (runner, task) = match find_task(&context, &namespace, &alloc_id, query.task) {
        Ok(found) => found,
        Err(rejection) => return rejection.into_response(),
    };
    let handle = runner.task_handle(&task);
    let Some(handle) = handle.filter(|_| !runner.client_status().is_terminal()) else {
        return api_error(StatusCode::CONFLICT, "not_running", format!("task {task} of allocation {alloc_id} is not running"));
    };
    let Some(driver) = context.drivers.get(&handle.driver).cloned() else {
        return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("driver {} is not loaded", handle.driver));
    };
    let terminal = query.tty.then(|| (query.cols.unwrap_or(80), query.rows.unwrap_or(24)));
    let session = match ExecSession::start(driver.as_ref(), &handle, &command, terminal, query.term.as_deref()).await {
        Ok(session) => session,
        Err(error) => {
            let status = match &error {
                ExecError::Driver(DriverError::TaskGone { .. }) => StatusCode::CONFLICT,
                ExecError::Driver(DriverError::Unsupported(_)) | ExecError::Spawn { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return api_error(status, "exec_failed", format!("exec in task {task} of allocation {alloc_id}: {error}"));
        }
    };
    tracing::info!(%alloc_id, %task, command = ?command, tty = query.tty, "exec session started");
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => session.run(hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(error) => tracing::warn!(%error, "exec: the connection upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, EXEC_PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|error| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()))
}

struct FollowState {
    /// `None` once the stream failed.
    reader: Option<LogReader>,
    runner: Arc<AllocRunner>,
    follow: bool,
    empty_polls_after_terminal: u32,
}

/// The next chunk of the log; with `follow`, waits for one until the allocation is terminal and quiet.
async fn next_chunk(mut state: FollowState) -> Option<(Result<Bytes, std::io::Error>, FollowState)> {
    loop {
        let mut reader = state.reader.take()?;
        let (reader, read) = tokio::task::spawn_blocking(move || {
            let read = reader.read_available(CHUNK);
            (reader, read)
        })
        .await
        .ok()?;
        match read {
            Err(error) => return Some((Err(error), state)),
            Ok(data) if !data.is_empty() => {
                state.reader = Some(reader);
                state.empty_polls_after_terminal = 0;
                return Some((Ok(Bytes::from(data)), state));
            }
            Ok(_) => {
                if !state.follow {
                    return None;
                }
                if state.runner.client_status().is_terminal() {
                    state.empty_polls_after_terminal += 1;
                    if state.empty_polls_after_terminal > POLLS_AFTER_TERMINAL {
                        return None;
                    }
                }
                state.reader = Some(reader);
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    }
}
