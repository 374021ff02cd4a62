//! Deployments (see ARCHITECTURE.md, "Deployments"): a new version of a service job whose groups have an update
//! strategy (`update:`) rolls out under a deployment. Per evaluation the scheduler
//!
//! - cancels the running deployment of an older version (a newer version supersedes it);
//! - lets at most `max_parallel` allocations of a group be replaced (destructive updates: stop the old one, place
//!   the new one) and at most `max_surge` be placed beside the old ones (which stop once the new one is healthy)
//!   while earlier ones have not become healthy yet; none while one is unhealthy or the deployment is paused or
//!   over;
//! - with `canary: N`, places N new allocations beside old ones first (canaries); the rest waits until the
//!   deployment's group is promoted — except for a revert (`Job::revert_of`), which rolls without canaries;
//! - starts the version's deployment when a group with a strategy gets new allocations of the version, which
//!   then name it (`deployment_id`); placements (a new job, a scale-up, a lost allocation) are never held back.
//!
//! What makes an allocation healthy is the agent's call (`Allocation::deployment_health`); progress, success,
//! failure and revert are the server's deployment watcher's.

use std::collections::{BTreeMap, BTreeSet};

use davit_api::deployment::{Deployment, DeploymentGroup, DeploymentStatus, DeploymentVerdict, Shadow};
use davit_api::objects::{DesiredStatus, Job, UnixMillis};
use rand::rngs::SmallRng;

use crate::alloc::AllocIds;
use crate::plan::Plan;
use crate::state::ClusterState;

/// One piece of work as the rollout sees it: the group's position in the spec, the index, and whether it
/// replaces a running allocation (a destructive update).
pub(crate) struct WorkItem {
    pub(crate) group_position: usize,
    pub(crate) index: u32,
    pub(crate) destructive: bool,
}

/// What becomes of one work item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Go {
    Ahead,
    /// Held back: the rollout waits (for health, a promotion, a resume).
    Wait,
    /// Placed beside the running allocation, which stays until this one is released.
    Beside(Shadow),
}

/// What the rollout decided: what becomes of each work item (in order) and, per group position, the
/// deployment its new allocations join.
pub(crate) struct Rollout {
    pub(crate) go: Vec<Go>,
    pub(crate) deployment_ids: Vec<Option<String>>,
}

/// Where one group's rollout stands in the deployment of the job's version.
#[derive(Default)]
struct GroupFlight {
    /// Replacements (stop-and-place) not decided yet.
    replacing: u32,
    /// Surges not healthy yet, and their indexes.
    surging: u32,
    /// Canaries running, and their indexes (with the surges'): an index with a shadow waits for it.
    canaries: u32,
    shadowed: BTreeSet<u32>,
    unhealthy: bool,
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
    let mut rollout = Rollout { go: vec![Go::Ahead; work.len()], deployment_ids: vec![None; strategies.len()] };
    if strategies.iter().all(Option::is_none) {
        return rollout;
    }
    let current = state.job_deployments(&job_id).rev().find(|deployment| deployment.job_version == job.version);

    // Canaries a new deployment places per group: up to `canary`, as many as there are destructive updates.
    let destructive_in = |position: usize| work.iter().filter(|item| item.destructive && item.group_position == position).count();
    let desired_canaries: Vec<u32> = match current {
        Some(deployment) => job
            .spec
            .groups
            .iter()
            .map(|group| deployment.groups.get(&group.name).filter(|g| g.awaits_promotion()).map_or(0, |g| g.desired_canaries))
            .collect(),
        // A revert goes back to a version known to work: no canary phase.
        None if job.revert_of.is_some() => vec![0; strategies.len()],
        None => strategies
            .iter()
            .enumerate()
            .map(|(position, strategy)| {
                strategy.as_ref().map_or(0, |strategy| strategy.canary.min(u32::try_from(destructive_in(position)).unwrap_or(u32::MAX)))
            })
            .collect(),
    };

    for (position, strategy) in strategies.iter().enumerate() {
        let Some(strategy) = strategy else { continue };
        let flight = match current {
            None => GroupFlight::default(),
            Some(deployment) if deployment.status == DeploymentStatus::Running => {
                in_flight(state, &job_id, &job.spec.groups[position].name, &deployment.id)
            }
            // Paused or over: nothing more rolls.
            Some(_) => GroupFlight { unhealthy: true, ..GroupFlight::default() },
        };
        let mut canaries_left = desired_canaries[position].saturating_sub(flight.canaries);
        let mut surge_left = strategy.max_surge.saturating_sub(flight.surging);
        let mut replace_left = strategy.max_parallel.saturating_sub(flight.replacing);
        for (item, go) in work.iter().zip(rollout.go.iter_mut()).filter(|(item, _)| item.destructive && item.group_position == position) {
            *go = if flight.unhealthy || flight.shadowed.contains(&item.index) {
                Go::Wait
            } else if desired_canaries[position] > 0 {
                // Canaries first; the rest waits for their promotion.
                take(&mut canaries_left).map_or(Go::Wait, |()| Go::Beside(Shadow::Canary))
            } else if take(&mut surge_left).is_some() {
                Go::Beside(Shadow::Surge)
            } else if take(&mut replace_left).is_some() {
                Go::Ahead
            } else {
                Go::Wait
            };
        }
    }

    let rolls = work.iter().zip(&rollout.go).any(|(item, go)| *go != Go::Wait && strategies[item.group_position].is_some());
    let id = match current {
        Some(deployment) => deployment.is_active().then(|| deployment.id.clone()),
        None if rolls => {
            let groups: BTreeMap<String, DeploymentGroup> = job
                .spec
                .groups
                .iter()
                .zip(&strategies)
                .zip(&desired_canaries)
                .filter_map(|((group, strategy), desired_canaries)| {
                    let strategy = strategy.as_ref()?;
                    let progress_deadline_ms = u64::try_from(strategy.progress_deadline.as_std().as_millis()).unwrap_or(u64::MAX);
                    Some((
                        group.name.clone(),
                        DeploymentGroup {
                            desired_total: group.count,
                            desired_canaries: *desired_canaries,
                            auto_promote: strategy.auto_promote,
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

/// Takes one from `left` when there is one.
fn take(left: &mut u32) -> Option<()> {
    (*left > 0).then(|| *left -= 1)
}

/// The group's allocations in the deployment that the rollout waits for; any found unhealthy stops it.
fn in_flight(state: &ClusterState, job_id: &str, group: &str, deployment_id: &str) -> GroupFlight {
    let mut flight = GroupFlight::default();
    for alloc in state.allocs_for_job(job_id).filter(|alloc| {
        alloc.group == group && alloc.deployment_id.as_deref() == Some(deployment_id) && alloc.desired_status == DesiredStatus::Run
    }) {
        let verdict = alloc.deployment_verdict();
        let live = !alloc.client_status.is_terminal();
        match alloc.shadow {
            Some(Shadow::Canary) if live => {
                flight.canaries += 1;
                flight.shadowed.insert(alloc.index);
            }
            Some(Shadow::Surge) if verdict == DeploymentVerdict::Undecided => {
                flight.surging += 1;
                flight.shadowed.insert(alloc.index);
            }
            None if verdict == DeploymentVerdict::Undecided => flight.replacing += 1,
            _ => {}
        }
        flight.unhealthy |= verdict == DeploymentVerdict::Unhealthy;
    }
    flight
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
