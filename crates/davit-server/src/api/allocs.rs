//! Allocation and evaluation routes, and the log relay to the allocation's agent.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use davit_api::acl::Capability;
use davit_api::exec::EXEC_PROTOCOL;
use davit_api::http::{AllocListEntry, ExecQuery, LogsQuery, MigrateAllocRequest, MigrateAllocResponse};
use davit_api::namespace::{job_id, namespace_of};
use davit_api::objects::{DesiredStatus, Evaluation, Node};
use serde::Deserialize;

use super::{Blocking, Failure, Page, indexed, json_body, paged, resolve_prefix};
use crate::Shared;
use crate::acl::Caller;
use crate::applier::Amend;
use crate::migration::MigrateError;
use crate::view::Snapshot;

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    wait: Option<String>,
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let blocking = Blocking { index: query.index, wait: query.wait };
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.table_index("allocs")).await;
    let prefix = query.prefix.unwrap_or_default();
    let entries: Vec<AllocListEntry> = snapshot
        .cluster
        .allocs()
        .filter(|alloc| alloc.id.starts_with(&prefix) && namespace_of(&alloc.job_name) == caller.namespace)
        .map(|alloc| AllocListEntry::from(&**alloc))
        .collect();
    paged(snapshot.table_index("allocs"), entries, |alloc| format!("{}\0{}\0{}", alloc.job_name, alloc.name, alloc.id), &page)
}

/// The allocation of `namespace` with this id or unique id prefix; allocations of other namespaces are not
/// there for the request.
fn find_alloc(snapshot: &Snapshot, id_or_prefix: &str, namespace: &str) -> Result<Arc<davit_api::objects::Allocation>, Failure> {
    let in_namespace = |alloc: &&Arc<davit_api::objects::Allocation>| namespace_of(&alloc.job_name) == namespace;
    if let Some(alloc) = snapshot.cluster.alloc(id_or_prefix).filter(in_namespace) {
        return Ok(Arc::clone(alloc));
    }
    let ids = snapshot.cluster.allocs().filter(in_namespace).map(|alloc| alloc.id.as_str());
    let id = resolve_prefix("allocation", id_or_prefix, ids)?;
    Ok(Arc::clone(snapshot.cluster.alloc(&id).expect("resolved id exists")))
}

pub(crate) async fn get_alloc(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(blocking): Query<Blocking>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let alloc = find_alloc(&snapshot, &id, &caller.namespace)?;
    let alloc_id = alloc.id.clone();
    let snapshot = shared
        .view
        .block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.cluster.alloc(&alloc_id).map_or(u64::MAX, |a| a.modify_index))
        .await;
    let alloc = find_alloc(&snapshot, &alloc_id, &caller.namespace)?;
    Ok(indexed(alloc.modify_index, &*alloc))
}

/// `POST /v1/allocation/{id}/migrate`: live-migrates a running VM allocation to another node. Answers once
/// the destination allocation is placed; the agents do the rest (follow either allocation to see how it goes).
pub(crate) async fn migrate(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: MigrateAllocRequest =
        if body.iter().all(u8::is_ascii_whitespace) { MigrateAllocRequest::default() } else { json_body(&body, "migrate request")? };
    let snapshot = shared.view.snapshot();
    let source = find_alloc(&snapshot, &id, &caller.namespace)?;
    let target = request.node.as_deref().map(|node| super::nodes::find_node(&snapshot, node)).transpose()?;
    let seed = crate::new_id().bytes().fold(0u64, |hash, byte| hash.rotate_left(5) ^ u64::from(byte));
    let destination = crate::migration::destination(&snapshot.cluster, &source, target.as_deref(), seed, crate::now_millis()).map_err(
        |error| match error {
            MigrateError::NotMigratable(message) => Failure::bad_request(message),
            MigrateError::Placement(placement) => Failure::conflict(placement.to_string()),
        },
    )?;
    let response = MigrateAllocResponse {
        source_alloc_id: source.id.clone(),
        alloc_id: destination.id.clone(),
        node_id: destination.node_id.clone(),
        node_name: destination.node_name.clone(),
        index: 0,
    };
    match shared.applier.start_migration(destination, crate::now_millis()).await? {
        Ok(index) => {
            shared.view.wait_for(index).await;
            tracing::info!(alloc = %source.id, destination = %response.alloc_id, node = %response.node_name, "live migration started");
            Ok(indexed(index, &MigrateAllocResponse { index, ..response }))
        }
        Err(reason) => Err(Failure::conflict(format!("cannot migrate allocation {}: {reason}", source.id))),
    }
}

/// `POST /v1/allocation/{id}/restart`: its agent restarts every task in place (same allocation, same node; the
/// restart policy does not count it). Refused for an allocation that is stopping or ended.
pub(crate) async fn restart(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let alloc = find_alloc(&shared.view.snapshot(), &id, &caller.namespace)?;
    if alloc.desired_status != DesiredStatus::Run || alloc.is_terminal() {
        return Err(Failure::bad_request(
            format!(
                "allocation {} is {:?} (desired {:?}): only a running allocation can be restarted",
                alloc.id, alloc.client_status, alloc.desired_status
            )
            .to_lowercase(),
        ));
    }
    let index = shared.applier.amend_allocs(vec![(alloc.id.clone(), Amend::Restart)], Vec::new(), crate::now_millis()).await?;
    if index == 0 {
        return Err(Failure::conflict(format!("allocation {} ended meanwhile", alloc.id)));
    }
    shared.view.wait_for(index).await;
    let snapshot = shared.view.snapshot();
    let alloc = snapshot.cluster.alloc(&alloc.id).ok_or_else(|| Failure::not_found(format!("allocation {id} not found")))?;
    Ok(indexed(index, &**alloc))
}

/// Relays the log stream from the agent that runs the allocation.
pub(crate) async fn logs(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, Failure> {
    let (url, node) = agent_url(&shared, &id, &caller.namespace, "logs")?;
    let response = caller
        .relay(shared.agent_http(&node.id)?.get(&url), Capability::ReadLogs)
        .query(&query)
        .send()
        .await
        .map_err(|error| agent_unreachable(&node, error))?;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type =
        response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("text/plain").to_string();
    let body = Body::from_stream(response.bytes_stream());
    Ok((status, [(axum::http::header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The URL of an allocation's route on the agent of its node (in the request's namespace, which the agent
/// checks too), and that node.
fn agent_url(shared: &Shared, id: &str, namespace: &str, route: &str) -> Result<(String, Arc<Node>), Failure> {
    let snapshot = shared.view.snapshot();
    let alloc = find_alloc(&snapshot, id, namespace)?;
    let node = snapshot.cluster.node(&alloc.node_id).cloned().ok_or_else(|| {
        Failure::not_found(format!("node {} of allocation {} is gone, and with it the allocation's {route}", alloc.node_id, alloc.id))
    })?;
    let url = format!("{}/v1/agent/allocation/{}/{route}?namespace={namespace}", node.http_addr.trim_end_matches('/'), alloc.id);
    Ok((url, node))
}

fn agent_unreachable(node: &Node, error: impl std::fmt::Display) -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "unavailable",
        format!("cannot reach the agent of node {} at {}: {error}", node.name, node.http_addr),
    )
}

/// Relays an exec session to the allocation's agent. The agent's answer decides; once it switched
/// protocols, so does this response, and the two connections are spliced until either side closes.
pub(crate) async fn exec(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<ExecQuery>,
    mut request: axum::extract::Request,
) -> Result<Response, Failure> {
    let wants_exec = request.headers().get(header::UPGRADE).and_then(|value| value.to_str().ok()) == Some(EXEC_PROTOCOL);
    let upgrade = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>().filter(|_| wants_exec).ok_or_else(|| {
        Failure::bad_request(format!("exec needs an HTTP/1.1 request with `Connection: upgrade` and `Upgrade: {EXEC_PROTOCOL}`"))
    })?;
    let (url, node) = agent_url(&shared, &id, &caller.namespace, "exec")?;
    let mut agent =
        match davit_client::exec::open(&shared.agent_http(&node.id)?, &url, &query, caller.relay_token(Capability::AllocExec).as_deref())
            .await
        {
            Ok(stream) => stream,
            Err(davit_client::ClientError::Api { status, error }) => {
                return Ok((StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), axum::Json(error)).into_response());
            }
            Err(error) => return Err(agent_unreachable(&node, error)),
        };
    tokio::spawn(async move {
        match upgrade.await {
            Ok(client) => {
                let _ = tokio::io::copy_bidirectional(&mut hyper_util::rt::TokioIo::new(client), &mut agent).await;
            }
            Err(error) => tracing::warn!(%error, "exec relay: the client's connection upgrade failed"),
        }
    });
    Ok((StatusCode::SWITCHING_PROTOCOLS, [(header::CONNECTION, "upgrade"), (header::UPGRADE, EXEC_PROTOCOL)]).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct EvalQuery {
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    wait: Option<String>,
}

pub(crate) async fn list_evals(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<EvalQuery>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let blocking = Blocking { index: query.index, wait: query.wait.clone() };
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.table_index("evals")).await;
    if query.job.as_deref().is_some_and(|job| job.contains('/')) {
        return Err(Failure::bad_request("`job` is a job name; name the namespace with ?namespace= (-n)"));
    }
    let evals: Vec<Evaluation> = match &query.job {
        Some(job) => snapshot.evals_for_job(&job_id(&caller.namespace, job)).into_iter().map(|eval| (*eval).clone()).collect(),
        None => {
            snapshot.evals.values().filter(|eval| namespace_of(&eval.job_name) == caller.namespace).map(|eval| (**eval).clone()).collect()
        }
    };
    paged(snapshot.table_index("evals"), evals, super::jobs::eval_key, &page)
}

pub(crate) async fn get_eval(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let in_namespace = |eval: &Arc<Evaluation>| namespace_of(&eval.job_name) == caller.namespace;
    let id = match snapshot.evals.get(&id).filter(|eval| in_namespace(eval)) {
        Some(_) => id,
        None => resolve_prefix("evaluation", &id, snapshot.evals.values().filter(|eval| in_namespace(eval)).map(|eval| eval.id.as_str()))?,
    };
    let eval = snapshot.evals.get(&id).expect("resolved id exists");
    Ok(indexed(eval.modify_index, &**eval))
}

/// `GET /v1/allocation/{id}/usage`: the latest usage sample next to what each task asks for.
pub(crate) async fn usage(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let alloc = find_alloc(&snapshot, &id, &caller.namespace)?;
    let now = std::time::Instant::now();
    let sample = shared.signals.usage(&alloc.id, now).map(|(usage, _)| usage);
    let traffic = shared.signals.traffic(&alloc.id, now);
    let group = snapshot.cluster.job_version(&alloc.job_name, alloc.job_version).and_then(|job| job.spec.group(&alloc.group).cloned());
    let mut info = davit_api::http::AllocUsageInfo {
        alloc_id: alloc.id.clone(),
        time: sample.as_ref().map(|usage| usage.time),
        requests_per_second: traffic.as_ref().map(|traffic| traffic.requests_per_second),
        latency_p99_ms: traffic.and_then(|traffic| traffic.p99_ms),
        ..Default::default()
    };
    for task in group.iter().flat_map(|group| &group.tasks) {
        let used = sample.as_ref().and_then(|usage| usage.tasks.get(&task.name));
        info.tasks.insert(
            task.name.clone(),
            davit_api::http::TaskUsageInfo {
                cpu_millicores: used.map(|used| used.cpu_millicores),
                memory_bytes: used.map(|used| used.memory_bytes),
                cpu_request: u64::from(task.resources.cpu),
                memory_request_mib: u64::from(task.resources.memory),
            },
        );
    }
    Ok(indexed(alloc.modify_index, &info))
}
