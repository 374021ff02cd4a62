//! Deployments (see ARCHITECTURE.md, "Deployments"): a new version of a service job whose groups have an update
//! strategy (`update:`) rolls out under a deployment. Per evaluation the scheduler
//!
//! - cancels the running deployment of an older version (a newer version supersedes it);
//! - lets at most `max_parallel` allocations of a group be replaced (destructive updates) while earlier
//!   replacements have not become healthy yet, none while one is unhealthy or the deployment is paused or over;
//! - starts the version's deployment when a group with a strategy gets new allocations of the version, which
//!   then name it (`deployment_id`); placements (a new job, a scale-up, a lost allocation) are never held back.
//!
//! What makes an allocation healthy is the agent's call (`Allocation::deployment_health`); progress, success,
//! failure and revert are the server's deployment watcher's.

use std::collections::BTreeMap;

use davit_api::deployment::{Deployment, DeploymentGroup, DeploymentStatus, DeploymentVerdict};
use davit_api::objects::{DesiredStatus, Job, UnixMillis};
use rand::rngs::SmallRng;

use crate::alloc::AllocIds;
use crate::plan::Plan;
use crate::state::ClusterState;

/// One piece of work as the rollout sees it: the group's position in the spec and whether it replaces a
/// running allocation (a destructive update).
pub(crate) struct WorkItem {
    pub(crate) group_position: usize,
    pub(crate) destructive: bool,
}

/// What the rollout decided: which work items go ahead (in order) and, per group position, the deployment its
/// new allocations join.
pub(crate) struct Rollout {
    pub(crate) go_ahead: Vec<bool>,
    pub(crate) deployment_ids: Vec<Option<String>>,
}

pub(crate) fn plan_rollout(
    state: &ClusterState,
    job: &Job,
    plan: &mut Plan,
    ids: &mut AllocIds,
    rng: &mut SmallRng,
    now: UnixMillis,
    work: &[WorkItem],
) -> Rollout {
    let job_id = job.spec.id();
    cancel_others(state, &job_id, Some(job.version), plan);
    let strategies: Vec<_> = job.spec.groups.iter().map(|group| job.spec.update_strategy(&group.name)).collect();
    let mut rollout = Rollout { go_ahead: vec![true; work.len()], deployment_ids: vec![None; strategies.len()] };
    if strategies.iter().all(Option::is_none) {
        return rollout;
    }
    let current = state.job_deployments(&job_id).rev().find(|deployment| deployment.job_version == job.version);

    // Replacements in flight per group: allocations of this version in the deployment, still running, whose
    // health is not known yet; any found unhealthy stops the rollout of the group.
    let mut allowed: Vec<u32> = strategies.iter().map(|strategy| if strategy.is_some() { 0 } else { u32::MAX }).collect();
    for (position, strategy) in strategies.iter().enumerate() {
        let Some(strategy) = strategy else { continue };
        let Some(deployment) = current else {
            allowed[position] = strategy.max_parallel;
            continue;
        };
        if deployment.status != DeploymentStatus::Running {
            continue;
        }
        let group = &job.spec.groups[position].name;
        let (mut pending, mut unhealthy) = (0u32, false);
        for alloc in state.allocs_for_job(&job_id).filter(|alloc| {
            alloc.group == *group
                && alloc.deployment_id.as_deref() == Some(deployment.id.as_str())
                && alloc.desired_status == DesiredStatus::Run
        }) {
            match alloc.deployment_verdict() {
                DeploymentVerdict::Unhealthy => unhealthy = true,
                DeploymentVerdict::Undecided => pending += 1,
                DeploymentVerdict::Healthy(_) | DeploymentVerdict::Gone => {}
            }
        }
        if !unhealthy {
            allowed[position] = strategy.max_parallel.saturating_sub(pending);
        }
    }
    for (item, go) in work.iter().zip(rollout.go_ahead.iter_mut()) {
        if item.destructive {
            let left = &mut allowed[item.group_position];
            *go = *left > 0;
            *left = left.saturating_sub(1);
        }
    }

    let rolls = work.iter().zip(&rollout.go_ahead).any(|(item, go)| *go && strategies[item.group_position].is_some());
    let id = match current {
        Some(deployment) => deployment.is_active().then(|| deployment.id.clone()),
        None if rolls => {
            let groups: BTreeMap<String, DeploymentGroup> = job
                .spec
                .groups
                .iter()
                .zip(&strategies)
                .filter_map(|(group, strategy)| {
                    let strategy = strategy.as_ref()?;
                    let progress_deadline_ms = u64::try_from(strategy.progress_deadline.as_std().as_millis()).unwrap_or(u64::MAX);
                    Some((
                        group.name.clone(),
                        DeploymentGroup {
                            desired_total: group.count,
                            auto_revert: strategy.auto_revert,
                            progress_deadline_ms,
                            require_progress_by: if progress_deadline_ms > 0 { now.saturating_add(progress_deadline_ms) } else { 0 },
                            ..DeploymentGroup::default()
                        },
                    ))
                })
                .collect();
            let deployment = Deployment {
                id: ids.next(state, rng),
                job_name: job_id.clone(),
                job_version: job.version,
                status: DeploymentStatus::Running,
                status_description: "Deployment is running".to_string(),
                groups,
                create_time: now,
                modify_time: now,
                create_index: 0,
                modify_index: 0,
            };
            let id = deployment.id.clone();
            plan.deployment = Some(Box::new(deployment));
            Some(id)
        }
        None => None,
    };
    for (position, strategy) in strategies.iter().enumerate() {
        if strategy.is_some() {
            rollout.deployment_ids[position] = id.clone();
        }
    }
    rollout
}

/// Cancels every running or paused deployment of the job but the one of `version`: a newer version supersedes
/// it; `None`, the job was stopped.
pub(crate) fn cancel_others(state: &ClusterState, job_id: &str, version: Option<u64>, plan: &mut Plan) {
    let description = match version {
        Some(version) => format!("Cancelled because job is updated to version {version}"),
        None => "Cancelled because job is stopped".to_string(),
    };
    for deployment in state.job_deployments(job_id).filter(|deployment| deployment.is_active() && Some(deployment.job_version) != version) {
        plan.deployment_updates.push((deployment.id.clone(), DeploymentStatus::Cancelled, description.clone()));
    }
}
