//! `/v1/deployments`, `/v1/deployment/{id}` and its actions (`fail`, `pause`, `resume`, `promote`, `health`),
//! `/v1/job/{name}/deployment`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use davit_api::deployment::{Deployment, DeploymentStatus};
use davit_api::http::{DeploymentHealthRequest, PromoteDeploymentRequest};
use davit_api::namespace::namespace_of;
use davit_api::objects::{Allocation, EvalTrigger};
use davit_store::{Compare, Txn};

use super::{Blocking, Failure, JobId, Page, descending, indexed, json_body, paged, resolve_prefix};
use crate::acl::Caller;
use crate::applier::Amend;
use crate::deployments::short;
use crate::liveness::new_eval;
use crate::view::Snapshot;
use crate::{Shared, keys, now_millis};

/// The caller's namespace's deployments, newest first.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(blocking): Query<Blocking>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.table_index("deployments")).await;
    let deployments: Vec<Deployment> = snapshot
        .cluster
        .deployments()
        .filter(|deployment| namespace_of(&deployment.job_name) == caller.namespace)
        .map(|deployment| (**deployment).clone())
        .collect();
    paged(
        snapshot.table_index("deployments"),
        deployments,
        |deployment| format!("{}\0{}", descending(deployment.create_index), deployment.id),
        &page,
    )
}

/// One deployment (by id or unique id prefix in the caller's namespace); a blocking query on its job.
pub(crate) async fn get(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(blocking): Query<Blocking>,
) -> Result<Response, Failure> {
    let (id, job) = {
        let snapshot = shared.view.snapshot();
        let id = resolve(&snapshot, &caller, &id)?;
        let job = snapshot.cluster.deployment(&id).expect("resolved").job_name.clone();
        (id, job)
    };
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.job_index(&job)).await;
    let deployment = snapshot.cluster.deployment(&id).ok_or_else(|| Failure::not_found(format!("deployment {id} not found")))?;
    Ok(indexed(snapshot.job_index(&job), &**deployment))
}

/// `?version=N` of `/v1/job/{name}/deployment`.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct VersionQuery {
    #[serde(default)]
    version: Option<u64>,
}

/// The deployment of the job's newest version that has one, or of `?version=N`; 404 when there is none.
pub(crate) async fn of_job(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(blocking): Query<Blocking>,
    Query(query): Query<VersionQuery>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.job_index(&name)).await;
    if snapshot.cluster.job(&name).is_none() {
        return Err(Failure::not_found(format!("job {name} not found")));
    }
    let deployment = match query.version {
        None => snapshot.cluster.latest_deployment(&name),
        Some(version) => snapshot.cluster.job_deployments(&name).find(|deployment| deployment.job_version == version),
    };
    let deployment = deployment.ok_or_else(|| match query.version {
        None => Failure::not_found(format!("job {name} has no deployment")),
        Some(version) => Failure::not_found(format!("version {version} of job {name} has no deployment")),
    })?;
    Ok(indexed(snapshot.job_index(&name), &**deployment))
}

fn resolve(snapshot: &Snapshot, caller: &Caller, id: &str) -> Result<String, Failure> {
    let in_namespace = |deployment: &&Arc<Deployment>| namespace_of(&deployment.job_name) == caller.namespace;
    if snapshot.cluster.deployment(id).filter(in_namespace).is_some() {
        return Ok(id.to_string());
    }
    resolve_prefix("deployment", id, snapshot.cluster.deployments().filter(in_namespace).map(|deployment| deployment.id.as_str()))
}

/// `POST /v1/deployment/{id}/fail`: a running or paused deployment fails now (and reverts with `auto_revert`).
pub(crate) async fn fail(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let id = resolve(&snapshot, &caller, &id)?;
    let deployment = snapshot.cluster.deployment(&id).expect("resolved");
    if !deployment.is_active() {
        return Err(Failure::bad_request(format!(
            "deployment {} is {}: only a running or paused deployment can fail",
            short(&id),
            deployment.status.as_str()
        )));
    }
    let outcome = crate::deployments::fail(&snapshot.cluster, deployment, "Deployment marked as failed by user", now_millis());
    drop(snapshot);
    write(&shared, &id, outcome).await
}

/// `POST /v1/deployment/{id}/promote`: the canaries of the groups asked for (all groups when none) are
/// promoted and the rest of those groups rolls.
pub(crate) async fn promote(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: PromoteDeploymentRequest = if body.is_empty() { Default::default() } else { json_body(&body, "promote request")? };
    let snapshot = shared.view.snapshot();
    let id = resolve(&snapshot, &caller, &id)?;
    let deployment = snapshot.cluster.deployment(&id).expect("resolved");
    let outcome =
        crate::deployments::promote(&snapshot.cluster, deployment, &request.groups, now_millis()).map_err(Failure::bad_request)?;
    drop(snapshot);
    write(&shared, &id, outcome).await
}

/// `POST /v1/deployment/{id}/health`: an operator's verdict on allocations the deployment placed (the way
/// allocations of a group with `health_check: manual` become healthy); a verdict already given stays.
pub(crate) async fn set_health(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: DeploymentHealthRequest = json_body(&body, "deployment health request")?;
    if request.healthy.is_empty() && request.unhealthy.is_empty() {
        return Err(Failure::bad_request("name at least one allocation in healthy or unhealthy".to_string()));
    }
    if request.healthy.len() + request.unhealthy.len() > MAX_HEALTH_VERDICTS {
        return Err(Failure::bad_request(format!("at most {MAX_HEALTH_VERDICTS} allocations per request")));
    }
    let snapshot = shared.view.snapshot();
    let id = resolve(&snapshot, &caller, &id)?;
    let deployment = snapshot.cluster.deployment(&id).expect("resolved");
    if !deployment.is_active() {
        return Err(Failure::bad_request(format!(
            "deployment {} is {}: allocation health is set only while it runs",
            short(&id),
            deployment.status.as_str()
        )));
    }
    let placed: Vec<&Arc<Allocation>> =
        snapshot.cluster.allocs_for_job(&deployment.job_name).filter(|alloc| alloc.deployment_id.as_deref() == Some(id.as_str())).collect();
    let mut amends = Vec::new();
    let verdicts = request.healthy.iter().map(|alloc| (alloc, true)).chain(request.unhealthy.iter().map(|alloc| (alloc, false)));
    for (wanted, healthy) in verdicts {
        let alloc = resolve_prefix("allocation", wanted, placed.iter().map(|alloc| alloc.id.as_str())).map_err(|_| {
            Failure::bad_request(format!("allocation {wanted} is not one the deployment {} placed (or not unique)", short(&id)))
        })?;
        amends.push((alloc, Amend::DeploymentHealth(healthy)));
    }
    let job = snapshot.cluster.job(&deployment.job_name).map(|job| (job.spec.job_type, job.spec.priority));
    let evals: Vec<_> = job
        .map(|(job_type, priority)| new_eval(&deployment.job_name, job_type, priority, EvalTrigger::Deployment, None))
        .into_iter()
        .collect();
    drop(snapshot);
    let index = shared.applier.amend_allocs(amends, evals, now_millis()).await?;
    shared.view.wait_for(index).await;
    let snapshot = shared.view.snapshot();
    let deployment = snapshot.cluster.deployment(&id).ok_or_else(|| Failure::not_found(format!("deployment {id} not found")))?;
    Ok(indexed(snapshot.revision.max(index), &**deployment))
}

/// Most allocations one `health` request may name.
const MAX_HEALTH_VERDICTS: usize = 1_000;

/// Writes a deployment outcome decided by a request and answers with the deployment.
async fn write(shared: &Shared, id: &str, outcome: crate::deployments::Outcome) -> Result<Response, Failure> {
    let index = crate::deployments::write(&shared.store, &shared.view, outcome)
        .await?
        .ok_or_else(|| Failure::conflict(format!("deployment {} changed meanwhile; try again", short(id))))?;
    let snapshot = shared.view.snapshot();
    Ok(indexed(index, &**snapshot.cluster.deployment(id).expect("written")))
}

/// `POST /v1/deployment/{id}/pause` and `/resume`: idempotent; a resume evaluates the job to roll on.
pub(crate) async fn pause(state: State<Arc<Shared>>, caller: Extension<Caller>, id: Path<String>) -> Result<Response, Failure> {
    set_paused(state, caller, id, true).await
}

pub(crate) async fn resume(state: State<Arc<Shared>>, caller: Extension<Caller>, id: Path<String>) -> Result<Response, Failure> {
    set_paused(state, caller, id, false).await
}

async fn set_paused(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    paused: bool,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let id = resolve(&snapshot, &caller, &id)?;
    let deployment = snapshot.cluster.deployment(&id).expect("resolved");
    let (status, description) =
        if paused { (DeploymentStatus::Paused, "Deployment is paused") } else { (DeploymentStatus::Running, "Deployment is running") };
    if !deployment.is_active() {
        let action = if paused { "paused" } else { "resumed" };
        return Err(Failure::bad_request(format!(
            "deployment {} is {}: only a running or paused deployment can be {action}",
            short(&id),
            deployment.status.as_str()
        )));
    }
    if deployment.status == status {
        return Ok(indexed(deployment.modify_index, &**deployment));
    }
    let mut changed = (**deployment).clone();
    (changed.status, changed.status_description, changed.modify_time) = (status, description.to_string(), now_millis());
    let mut txn = Txn::default();
    txn.compares.push(Compare::ModRevision(keys::deployment(&id), deployment.modify_index));
    txn.success.push(keys::put(keys::deployment(&id), &changed));
    if !paused && let Some(job) = snapshot.cluster.job(&deployment.job_name) {
        let eval = new_eval(&deployment.job_name, job.spec.job_type, job.spec.priority, EvalTrigger::Deployment, None);
        txn.success.push(keys::put(keys::eval(&eval.id), &eval));
    }
    drop(snapshot);
    let response = shared.store.txn(txn).await?;
    if !response.succeeded {
        return Err(Failure::conflict(format!("deployment {} changed meanwhile; try again", short(&id))));
    }
    shared.view.wait_for(response.revision).await;
    let snapshot = shared.view.snapshot();
    Ok(indexed(response.revision, &**snapshot.cluster.deployment(&id).expect("written")))
}
