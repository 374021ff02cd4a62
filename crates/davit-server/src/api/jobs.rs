//! Job routes: register (from spec text), status, versions, diff, revert, scale, stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use davit_api::acl::{DEFAULT_NAMESPACE, VariableCapability};
use davit_api::http::{
    AllocListEntry, JobDiffResponse, JobListEntry, JobStatusKind, JobStatusResponse, RegisterJobResponse, RevertJobRequest,
    ScaleJobRequest, ScalingStatus, StopJobResponse, ValidateJobResponse,
};
use davit_api::namespace::Namespace;
use davit_api::objects::{Allocation, ClientStatus, EvalStatus, EvalTrigger, GroupSummary, Index, Job, ScalingEvent};
use davit_api::spec::{JobSpec, JobType};
use davit_store::{Compare, Op, Txn};
use serde::Deserialize;

use super::{Blocking, Failure, JobId, Page, descending, indexed, json_body, paged};
use crate::acl::Caller;
use crate::liveness::new_eval;
use crate::view::Snapshot;
use crate::{Shared, keys, now_millis};
use davit_api::spec::SpecLimits;

#[derive(Debug, Deserialize)]
pub(crate) struct SpecQuery {
    #[serde(default)]
    filename: Option<String>,
}

fn parse_spec(body: &Bytes, query: &SpecQuery, limits: &SpecLimits) -> Result<JobSpec, Failure> {
    let source = std::str::from_utf8(body).map_err(|e| Failure::bad_request(format!("the job spec is not valid UTF-8: {e}")))?;
    let filename = query.filename.as_deref().unwrap_or("<request body>");
    davit_api::spec::parse_job_spec_within(source, filename, limits).map_err(|errors| Failure::invalid_spec(&errors))
}

/// The server's spec limits, with the largest node of `snapshot` as the bound of one allocation's resources.
pub(crate) fn limits_for(shared: &Shared, snapshot: &Snapshot) -> SpecLimits {
    let largest = snapshot.cluster.nodes().fold(None, |largest: Option<(u64, u64)>, node| {
        let (cpu, memory) = largest.unwrap_or_default();
        Some((cpu.max(node.resources.cpu), memory.max(node.resources.memory)))
    });
    SpecLimits { largest_node: largest, ..shared.spec_limits.clone() }
}

pub(crate) async fn validate(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<SpecQuery>,
    body: Bytes,
) -> Result<Response, Failure> {
    let spec = spec_in_namespace(&shared, &shared.view.snapshot(), &caller, &query, &body)?;
    Ok(indexed(0, &ValidateJobResponse { job_name: spec.name, warnings: Vec::new() }))
}

pub(crate) async fn register(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<SpecQuery>,
    body: Bytes,
) -> Result<Response, Failure> {
    let spec = spec_in_namespace(&shared, &shared.view.snapshot(), &caller, &query, &body)?;
    check_template_access(&caller, &spec)?;
    let response = register_spec(&shared, spec, Registration::of(EvalTrigger::JobRegister)).await?;
    Ok(indexed(response.index, &response))
}

/// The request body's spec, parsed and put into the request's namespace (see [`place_in_namespace`]).
pub(crate) fn spec_in_namespace(
    shared: &Shared,
    snapshot: &Snapshot,
    caller: &Caller,
    query: &SpecQuery,
    body: &Bytes,
) -> Result<JobSpec, Failure> {
    let mut spec = parse_spec(body, query, &limits_for(shared, snapshot))?;
    place_in_namespace(snapshot, &mut spec, caller)?;
    Ok(spec)
}

/// A job's templates render variables into its tasks, where whoever runs the job can read them: the token
/// that submits it must be allowed to read every variable its templates name.
fn check_template_access(caller: &Caller, spec: &JobSpec) -> Result<(), Failure> {
    let templates = spec.groups.iter().flat_map(|group| &group.tasks).flat_map(|task| &task.templates);
    for template in templates {
        let Ok(parsed) = davit_api::template::Template::parse(&template.data) else { continue };
        if let Some(path) =
            parsed.variables().into_iter().find(|path| !caller.acl.allows_variable(&spec.namespace, path, VariableCapability::Read))
        {
            return Err(Failure::forbidden(format!(
                "permission denied: a template of the job reads variable {path}, which this token may not read in namespace `{}`",
                spec.namespace
            )));
        }
    }
    Ok(())
}

/// Puts a spec into the request's namespace: a spec that names no namespace (or `default`) goes where the
/// request says; one that names another must agree with the request (whose namespace the token was checked
/// in). The namespace must exist, and no group may ask for more than its quota's `max_count`.
fn place_in_namespace(snapshot: &Snapshot, spec: &mut JobSpec, caller: &Caller) -> Result<(), Failure> {
    if spec.namespace == DEFAULT_NAMESPACE {
        spec.namespace = caller.namespace.clone();
    } else if spec.namespace != caller.namespace {
        return Err(Failure::bad_request(format!(
            "the spec puts job {} in namespace `{}` but the request is for namespace `{}`; run it with `-n {}`",
            spec.name, spec.namespace, caller.namespace, spec.namespace
        )));
    }
    if spec.namespace == DEFAULT_NAMESPACE {
        return Ok(());
    }
    let namespace = snapshot.cluster.namespace(&spec.namespace).ok_or_else(|| {
        Failure::bad_request(format!(
            "namespace `{}` does not exist; create it with `davit namespace apply {}`",
            spec.namespace, spec.namespace
        ))
    })?;
    check_max_count(namespace, spec)
}

fn check_max_count(namespace: &Namespace, spec: &JobSpec) -> Result<(), Failure> {
    let Some(max_count) = namespace.quota.and_then(|quota| quota.max_count) else { return Ok(()) };
    match spec.groups.iter().find(|group| group.count > max_count) {
        Some(group) => Err(Failure::bad_request(format!(
            "group {} asks for count {}; the quota of namespace {} allows at most {max_count} per group",
            group.name, group.count, namespace.name
        ))),
        None => Ok(()),
    }
}

/// Why a spec is registered, beyond the spec itself.
pub(crate) struct Registration {
    pub trigger: EvalTrigger,
    /// It is version N's spec again (`job revert`): it rolls without canaries.
    pub revert_of: Option<u64>,
    /// It changes one group's count (`job scale`, the autoscaler).
    pub scaling: Option<ScalingEvent>,
    /// Only if the job is still at this modify index (what the change was decided on); otherwise 409.
    pub based_on: Option<Index>,
}

impl Registration {
    pub fn of(trigger: EvalTrigger) -> Registration {
        Registration { trigger, revert_of: None, scaling: None, based_on: None }
    }
}

/// Stores `written` as the job's next version (unless it equals the current one) and queues an evaluation.
/// Optimistic: if the job changed meanwhile, the write is retried on the newer state (unless
/// `registration.based_on` pins the state it was decided on).
pub(crate) async fn register_spec(shared: &Shared, written: JobSpec, registration: Registration) -> Result<RegisterJobResponse, Failure> {
    let Registration { trigger, revert_of, scaling, based_on } = registration;
    for _ in 0..5 {
        let snapshot = shared.view.snapshot();
        // A redeploy (or a revert) never undoes scaling: groups with `scaling:` keep the count they run.
        let mut spec = written.clone();
        let mut warnings = Vec::new();
        if let Some(current) = snapshot.cluster.job(&spec.id()).filter(|job| !job.stopped)
            && trigger != EvalTrigger::JobScale
        {
            warnings = spec.keep_scaled_counts(&current.spec);
        }
        check_service_names(&snapshot, &spec)?;
        if let Some(namespace) = snapshot.cluster.namespace(&spec.namespace) {
            check_max_count(namespace, &spec)?;
        }
        let id = spec.id();
        let existing = snapshot.cluster.job(&id).cloned();
        if let Some(based_on) = based_on
            && existing.as_ref().map_or(0, |job| job.modify_index) != based_on
        {
            return Err(Failure::conflict(format!("job {} changed meanwhile; try again", written.name)));
        }
        let now = now_millis();
        let (job, changed) = match &existing {
            Some(current) if current.spec == spec && !current.stopped => ((**current).clone(), false),
            Some(current) => (Job { revert_of, scaling: scaling.clone(), ..Job::new(spec.clone(), current.version + 1, now) }, true),
            None => (Job::new(spec.clone(), 0, now), true),
        };
        let eval = new_eval(&id, spec.job_type, spec.priority, trigger, None);
        let mut txn = Txn::default();
        txn.compares.push(Compare::ModRevision(keys::job(&id), existing.as_ref().map_or(0, |job| job.modify_index)));
        if changed {
            txn.success.push(keys::put(keys::job(&id), &job));
            txn.success.push(keys::put(keys::version(&id, job.version), &job));
        }
        txn.success.push(keys::put(keys::eval(&eval.id), &eval));
        let response = shared.store.txn(txn).await?;
        if response.succeeded {
            shared.view.wait_for(response.revision).await;
            return Ok(RegisterJobResponse {
                job_name: spec.name,
                version: job.version,
                changed,
                eval_id: Some(eval.id),
                index: response.revision,
                warnings,
            });
        }
        shared.view.wait_for(shared.store.current_revision().await?).await;
    }
    Err(Failure::conflict(format!("job {} is being changed concurrently; try again", written.name)))
}

/// Service names are unique per namespace (one DNS name each): a job may not declare a service that another
/// job of its namespace that is not stopped declares.
pub(crate) fn check_service_names(snapshot: &Snapshot, spec: &JobSpec) -> Result<(), Failure> {
    for service in spec.groups.iter().flat_map(|group| &group.services) {
        let owner = snapshot.cluster.jobs().find(|job| {
            job.spec.name != spec.name
                && job.spec.namespace == spec.namespace
                && !job.stopped
                && job.spec.groups.iter().flat_map(|group| &group.services).any(|s| s.name == service.name)
        });
        if let Some(owner) = owner {
            return Err(Failure::conflict(format!(
                "service `{}` is already offered by job `{}`; service names are unique in a namespace ({}.service.davit): rename it, or stop job {} first",
                service.name, owner.spec.name, service.name, owner.spec.name
            )));
        }
    }
    Ok(())
}

fn job_of(snapshot: &Snapshot, name: &str) -> Result<Arc<Job>, Failure> {
    snapshot
        .cluster
        .job(name)
        .cloned()
        .ok_or_else(|| Failure::not_found(format!("job `{name}` not found; `davit job status` lists the jobs")))
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(blocking): Query<Blocking>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared
        .view
        .block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.table_index("jobs").max(s.table_index("allocs")))
        .await;
    let jobs: Vec<JobListEntry> = snapshot
        .cluster
        .jobs()
        .filter(|job| job.spec.namespace == caller.namespace)
        .map(|job| {
            let allocs: Vec<_> = snapshot.cluster.allocs_for_job(&job.spec.id()).cloned().collect();
            JobListEntry {
                name: job.spec.name.clone(),
                job_type: job.spec.job_type,
                priority: job.spec.priority,
                version: job.version,
                status: status_kind(job, &allocs),
                submit_time: job.submit_time,
                summary: summarize(job, &allocs),
            }
        })
        .collect();
    paged(snapshot.table_index("jobs"), jobs, |job| job.name.clone(), &page)
}

pub(crate) async fn get_job(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(blocking): Query<Blocking>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.job_index(&name)).await;
    let job = job_of(&snapshot, &name)?;
    Ok(indexed(snapshot.job_index(&name), &job.redacted()))
}

pub(crate) async fn status(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(blocking): Query<Blocking>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.job_index(&name)).await;
    let job = job_of(&snapshot, &name)?;
    let allocs: Vec<_> = snapshot.cluster.allocs_for_job(&name).cloned().collect();
    let evals = snapshot.evals_for_job(&name);
    let mut entries: Vec<AllocListEntry> = allocs.iter().map(|alloc| AllocListEntry::from(&**alloc)).collect();
    entries.sort_by(|a, b| (a.group.as_str(), a.name.as_str(), b.create_time).cmp(&(b.group.as_str(), b.name.as_str(), a.create_time)));
    let response = JobStatusResponse {
        status: status_kind(&job, &allocs),
        summary: summarize(&job, &allocs),
        job: job.redacted(),
        allocations: entries,
        latest_evaluation: evals.first().map(|eval| (**eval).clone()),
        blocked_evaluation: evals.iter().find(|eval| eval.status == EvalStatus::Blocked).map(|eval| (**eval).clone()),
    };
    Ok(indexed(snapshot.job_index(&name), &response))
}

fn status_kind(job: &Job, allocs: &[Arc<Allocation>]) -> JobStatusKind {
    if allocs.iter().any(|alloc| alloc.client_status == ClientStatus::Running) {
        return JobStatusKind::Running;
    }
    if job.stopped {
        return JobStatusKind::Dead;
    }
    let live = allocs.iter().any(|alloc| !alloc.is_terminal());
    if job.spec.job_type == JobType::Batch && !allocs.is_empty() && !live {
        return JobStatusKind::Dead;
    }
    JobStatusKind::Pending
}

fn summarize(job: &Job, allocs: &[Arc<Allocation>]) -> BTreeMap<String, GroupSummary> {
    let system = job.spec.job_type == JobType::System;
    let mut summary: BTreeMap<String, GroupSummary> = job
        .spec
        .groups
        .iter()
        .map(|group| {
            (group.name.clone(), GroupSummary { desired: if job.stopped || system { 0 } else { group.count }, ..Default::default() })
        })
        .collect();
    for alloc in allocs {
        let Some(entry) = summary.get_mut(&alloc.group) else { continue };
        if !alloc.is_terminal() {
            entry.placed += 1;
        }
        if system && !alloc.is_terminal() && !job.stopped {
            // A system job wants one allocation per feasible node, not `count`: what it placed.
            entry.desired = entry.placed;
        }
        match alloc.client_status {
            ClientStatus::Pending if !alloc.is_terminal() => entry.pending += 1,
            ClientStatus::Pending => {}
            ClientStatus::Running => entry.running += 1,
            ClientStatus::Complete => entry.complete += 1,
            ClientStatus::Failed => entry.failed += 1,
            ClientStatus::Lost => entry.lost += 1,
        }
    }
    summary
}

pub(crate) async fn versions(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(blocking): Query<Blocking>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.job_index(&name)).await;
    job_of(&snapshot, &name)?;
    let versions: Vec<Job> = snapshot.cluster.job_versions(&name).map(|job| job.redacted()).collect();
    paged(snapshot.job_index(&name), versions, |job| descending(job.version), &page)
}

pub(crate) async fn version(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    JobId(name): JobId,
    Path((_, version)): Path<(String, u64)>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    // A node's identity reads only the jobs it runs allocations of.
    if let Some(node) = caller.acl.node_identity()
        && !snapshot.cluster.allocs_for_node(node).any(|alloc| alloc.job_name == name)
    {
        return Err(Failure::forbidden(format!("permission denied: node {node} runs no allocation of job {name}")));
    }
    let job = version_of(&snapshot, &name, version)?;
    // Agents (node identities, `node: write`) get the secret environment they run the task with.
    if caller.acl.node_identity().is_some() || caller.acl.allows_node(davit_api::acl::Access::Write) {
        return Ok(indexed(snapshot.job_index(&name), &*job));
    }
    Ok(indexed(snapshot.job_index(&name), &job.redacted()))
}

fn version_of(snapshot: &Snapshot, name: &str, version: u64) -> Result<Arc<Job>, Failure> {
    snapshot.cluster.job_version(name, version).cloned().ok_or_else(|| {
        let known: Vec<String> = snapshot.cluster.job_versions(name).map(|job| job.version.to_string()).collect();
        if known.is_empty() {
            Failure::not_found(format!("job `{name}` not found"))
        } else {
            Failure::not_found(format!("version {version} of job `{name}` not found; stored versions: {}", known.join(", ")))
        }
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct DiffQuery {
    from: Option<u64>,
    to: Option<u64>,
}

pub(crate) async fn diff(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(query): Query<DiffQuery>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let job = job_of(&snapshot, &name)?;
    let to = query.to.unwrap_or(job.version);
    let from = match query.from {
        Some(from) => from,
        None if to > 0 => to - 1,
        None => return Err(Failure::bad_request(format!("job `{name}` has only version 0; nothing to compare it with"))),
    };
    let old = version_of(&snapshot, &name, from)?;
    let new = version_of(&snapshot, &name, to)?;
    let changes = davit_api::spec::diff_specs(&old.spec, &new.spec);
    Ok(indexed(snapshot.job_index(&name), &JobDiffResponse { from, to, changes }))
}

pub(crate) async fn revert(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    JobId(name): JobId,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: RevertJobRequest = json_body(&body, "revert request")?;
    let snapshot = shared.view.snapshot();
    let job = job_of(&snapshot, &name)?;
    let target = version_of(&snapshot, &name, request.version)?;
    check_template_access(&caller, &target.spec)?;
    // An old version meets today's limits too (they may have been lowered since it was stored).
    let limits = limits_for(&shared, &snapshot);
    davit_api::spec::validate(&target.spec, Some(&limits)).map_err(|errors| Failure::invalid_spec(&errors))?;
    if target.spec == job.spec && !job.stopped {
        return Err(Failure::bad_request(format!(
            "job `{name}` version {} already has the spec of version {}; nothing to revert",
            job.version, request.version
        )));
    }
    let response = register_spec(
        &shared,
        target.spec.clone(),
        Registration { revert_of: Some(target.version), ..Registration::of(EvalTrigger::JobRevert) },
    )
    .await?;
    Ok(indexed(response.index, &response))
}

pub(crate) async fn scale(State(shared): State<Arc<Shared>>, JobId(name): JobId, body: Bytes) -> Result<Response, Failure> {
    let request: ScaleJobRequest = json_body(&body, "scale request")?;
    let snapshot = shared.view.snapshot();
    let job = job_of(&snapshot, &name)?;
    let mut spec = job.spec.clone();
    let Some(group) = spec.groups.iter_mut().find(|group| group.name == request.group) else {
        let names: Vec<&str> = job.spec.groups.iter().map(|group| group.name.as_str()).collect();
        return Err(Failure::bad_request(format!("job `{name}` has no group `{}`; its groups: {}", request.group, names.join(", "))));
    };
    if let Some(bounds) = group.count_bounds()
        && !bounds.contains(&request.count)
    {
        return Err(Failure::bad_request(format!(
            "count {} is outside the bounds of group `{}`'s scaling: {}..={}",
            request.count,
            group.name,
            bounds.start(),
            bounds.end()
        )));
    }
    let from = group.count;
    let autoscaled = group.scaling.as_ref().is_some_and(|scaling| scaling.autoscaled()) && spec.job_type == JobType::Service;
    group.count = request.count;
    let limits = limits_for(&shared, &snapshot);
    davit_api::spec::validate(&spec, Some(&limits)).map_err(|errors| Failure::invalid_spec(&errors))?;
    let event = ScalingEvent {
        group: request.group.clone(),
        from,
        to: request.count,
        by: "operator".to_string(),
        reason: String::new(),
        time: now_millis(),
    };
    let registration = Registration { scaling: Some(event), based_on: Some(job.modify_index), ..Registration::of(EvalTrigger::JobScale) };
    let mut response = register_spec(&shared, spec, registration).await?;
    if autoscaled {
        response.warnings.push(format!(
            "group {} is autoscaled: this count holds until the autoscaler's next decision (every sync interval)",
            request.group
        ));
    }
    Ok(indexed(response.index, &response))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StopQuery {
    #[serde(default)]
    purge: bool,
}

pub(crate) async fn stop(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(query): Query<StopQuery>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let job = job_of(&snapshot, &name)?;
    let eval = new_eval(&name, job.spec.job_type, job.spec.priority, EvalTrigger::JobDeregister, None);
    let mut txn = Txn::default();
    txn.compares.push(Compare::ModRevision(keys::job(&name), job.modify_index));
    if query.purge {
        txn.success.push(Op::Delete { key: keys::job(&name) });
        // One by one: a prefix would also cover the versions of namespace `<name>`'s jobs.
        for version in snapshot.cluster.job_versions(&name) {
            txn.success.push(Op::Delete { key: keys::version(&name, version.version) });
        }
    } else {
        let mut stopped = (*job).clone();
        stopped.stopped = true;
        txn.success.push(keys::put(keys::job(&name), &stopped));
    }
    txn.success.push(keys::put(keys::eval(&eval.id), &eval));
    let response = shared.store.txn(txn).await?;
    if !response.succeeded {
        return Err(Failure::conflict(format!("job `{name}` changed while stopping it; try again")));
    }
    shared.view.wait_for(response.revision).await;
    Ok(indexed(response.revision, &StopJobResponse { eval_id: Some(eval.id), index: response.revision }))
}

pub(crate) async fn allocations(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(blocking): Query<Blocking>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.job_index(&name)).await;
    let allocs: Vec<_> = snapshot.cluster.allocs_for_job(&name).cloned().collect();
    if allocs.is_empty() {
        job_of(&snapshot, &name)?;
    }
    let entries: Vec<AllocListEntry> = allocs.iter().map(|alloc| AllocListEntry::from(&**alloc)).collect();
    paged(snapshot.job_index(&name), entries, |alloc| format!("{}\0{}", alloc.name, alloc.id), &page)
}

/// Newest first, as `job status` shows them.
pub(crate) fn eval_key(eval: &davit_api::objects::Evaluation) -> String {
    format!("{}\0{}", descending(eval.create_index), eval.id)
}

pub(crate) async fn evaluations(
    State(shared): State<Arc<Shared>>,
    JobId(name): JobId,
    Query(blocking): Query<Blocking>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.job_index(&name)).await;
    let evals: Vec<_> = snapshot.evals_for_job(&name).into_iter().map(|eval| (*eval).clone()).collect();
    if evals.is_empty() {
        job_of(&snapshot, &name)?;
    }
    paged(snapshot.job_index(&name), evals, eval_key, &page)
}

/// Most scaling events `GET /v1/job/{name}/scaling` returns.
const SCALING_EVENTS: usize = 20;

pub(crate) async fn scaling(State(shared): State<Arc<Shared>>, JobId(name): JobId) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let job = job_of(&snapshot, &name)?;
    let mut versions: Vec<_> = snapshot.cluster.job_versions(&name).collect();
    versions.sort_by_key(|version| std::cmp::Reverse(version.version));
    let events = versions.iter().filter_map(|version| version.scaling.clone()).take(SCALING_EVENTS).collect();
    let status = ScalingStatus { job_name: job.spec.name.clone(), groups: shared.autoscaler.status(&job), events };
    Ok(indexed(snapshot.job_index(&name), &status))
}
