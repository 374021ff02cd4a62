//! `POST /v1/jobs/plan`: a dry run of registering a spec. The scheduler runs on a copy of the current
//! state with the spec as the job's next version; nothing is stored (no job version, no evaluation).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Response;
use davit_api::http::{GroupPlan, JobPlanResponse, PlannedPlacement, PlannedStop};
use davit_api::objects::{Allocation, EvalTrigger, Job};
use davit_api::spec::JobSpec;
use davit_scheduler::{ClusterState, ScheduleResult, schedule};

use super::jobs::{SpecQuery, check_service_names, spec_in_namespace};
use super::{Failure, indexed};
use crate::acl::Caller;
use crate::liveness::new_eval;
use crate::{Shared, now_millis};

pub(crate) async fn plan(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<SpecQuery>,
    body: Bytes,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let spec = spec_in_namespace(&shared, &snapshot, &caller, &query, &body)?;
    check_service_names(&snapshot, &spec)?;
    // CPU-bound like every scheduler run: on the blocking pool, within the workers' deadline, so a huge plan
    // neither stalls the runtime (heartbeats) nor holds the request forever.
    let (cluster, config, revision) = (snapshot.cluster.clone(), shared.scheduler.clone(), snapshot.revision);
    let planning = tokio::task::spawn_blocking(move || dry_run(&cluster, spec, &config, revision));
    let response = match tokio::time::timeout(crate::worker::SCHEDULE_DEADLINE, planning).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) if error.is_panic() => {
            let message = crate::supervise::panic_message(error.into_panic());
            return Err(Failure::internal(format!("the scheduler panicked while planning: {message}")));
        }
        Ok(Err(_)) => return Err(Failure::internal("planning was cancelled")),
        Err(_) => return Err(Failure::internal(format!("planning took longer than {}s", crate::worker::SCHEDULE_DEADLINE.as_secs()))),
    };
    Ok(indexed(snapshot.revision, &response))
}

/// Schedules `spec` as the next version of its job on a copy of `state` and describes the plan.
pub(crate) fn dry_run(
    state: &ClusterState,
    spec: JobSpec,
    config: &davit_scheduler::SchedulerConfig,
    index: davit_api::objects::Index,
) -> JobPlanResponse {
    let now = now_millis();
    let current = state.job(&spec.id()).cloned();
    let changed = current.as_ref().is_none_or(|job| job.spec != spec || job.stopped);
    let next_version = match &current {
        Some(job) if changed => job.version + 1,
        Some(job) => job.version,
        None => 0,
    };
    let diff = current.as_ref().map(|job| davit_api::spec::diff_specs(&job.spec, &spec)).unwrap_or_default();
    // Every group of the spec, and of the current version (groups the spec removes are stopped).
    let mut groups: BTreeMap<String, GroupPlan> = BTreeMap::new();
    for group in spec.groups.iter().chain(current.iter().flat_map(|job| &job.spec.groups)) {
        groups.entry(group.name.clone()).or_default();
    }
    let mut planned = state.clone();
    let job = Arc::new(Job::new(spec, next_version, now));
    planned.upsert_job(Arc::clone(&job));
    planned.upsert_job_version(Arc::clone(&job));
    let eval = new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, EvalTrigger::JobRegister, None);
    let config = davit_scheduler::SchedulerConfig { explain: true, ..config.clone() };
    let result = schedule(&planned, &eval, &config, 0, now);

    describe(state, &job.spec.id(), &result, &mut groups);
    let preemptions = result
        .plan
        .preemptions()
        .filter_map(|stop| state.alloc(&stop.alloc_id).map(|alloc| planned_stop(alloc, &stop.description)))
        .collect();
    let mut warnings = Vec::new();
    if !changed {
        warnings.push(format!("the spec equals version {next_version}: registering it would change nothing"));
    }
    JobPlanResponse {
        job_name: job.spec.name.clone(),
        current_version: current.map(|job| job.version),
        next_version,
        changed,
        diff,
        groups,
        preemptions,
        status_description: result.status_description,
        warnings,
        index,
    }
}

/// Sorts the plan's changes into the job's groups.
fn describe(state: &ClusterState, job_name: &str, result: &ScheduleResult, groups: &mut BTreeMap<String, GroupPlan>) {
    let plan = &result.plan;
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    let replaced: BTreeSet<&str> = plan.allocations().filter_map(|alloc| alloc.previous_allocation.as_deref()).collect();
    let stopped: BTreeSet<&str> = plan.stops().map(|stop| stop.alloc_id.as_str()).collect();
    let mut allocations: Vec<&Allocation> = plan.allocations().collect();
    allocations.sort_by_key(|alloc| (&alloc.group, alloc.index));
    for alloc in allocations {
        let group = groups.entry(alloc.group.clone()).or_default();
        if state.alloc(&alloc.id).is_some() {
            group.in_place += 1;
            touched.insert(&alloc.id);
            continue;
        }
        match &alloc.previous_allocation {
            Some(previous) if stopped.contains(previous.as_str()) => group.replace += 1,
            _ => group.place += 1,
        }
        group.placements.push(PlannedPlacement {
            name: alloc.name.clone(),
            node_id: alloc.node_id.clone(),
            node_name: alloc.node_name.clone(),
            replaces: alloc.previous_allocation.clone(),
            scores: plan.scores.get(&alloc.id).cloned(),
        });
    }
    for stop in plan.stops() {
        let Some(alloc) = state.alloc(&stop.alloc_id) else { continue };
        touched.insert(&alloc.id);
        let group = groups.entry(alloc.group.clone()).or_default();
        if !replaced.contains(alloc.id.as_str()) {
            group.stop += 1;
        }
        group.stops.push(planned_stop(alloc, &stop.description));
    }
    for alloc in state.allocs_for_job(job_name).filter(|alloc| !alloc.is_terminal() && !touched.contains(alloc.id.as_str())) {
        groups.entry(alloc.group.clone()).or_default().unchanged += 1;
    }
    for (name, failure) in &plan.failed_groups {
        groups.entry(name.clone()).or_default().failure = Some(failure.clone());
    }
}

fn planned_stop(alloc: &Allocation, description: &str) -> PlannedStop {
    PlannedStop {
        alloc_id: alloc.id.clone(),
        name: alloc.name.clone(),
        job_name: alloc.job_name.clone(),
        node_name: alloc.node_name.clone(),
        description: description.to_string(),
    }
}
