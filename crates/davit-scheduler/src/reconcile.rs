//! Reconciliation: compare a job's spec with its allocations and decide what to stop, what to update
//! and which indexes to place. No node is chosen here; see `generic`.
//!
//! Per allocation, first rule that applies wins:
//!
//! 1. job missing or stopped → stop every non-terminal allocation ("job stopped");
//! 2. its group is no longer in the spec → stop ("group removed from job");
//! 3. its node is down or gone → stop as `Lost` ("node down") and place a replacement at its index, unless the
//!    group's `disconnect:` holds it: until its node's last heartbeat + `lost_after` it is disconnected, not lost
//!    (with `replace: true` a replacement takes its index meanwhile; with `replace: false` it keeps the index for
//!    good);
//! 4. index ≥ count → stop ("not needed: count is N"), highest index first;
//! 5. another kept allocation already holds its index → stop ("duplicate of index N"); the oldest is kept, but
//!    when a disconnected allocation comes back beside its replacement, `disconnect.reconcile` picks the one
//!    that stays;
//! 6. older (or other) job version → an update: in place when the group spec is unchanged except for
//!    `count` and `services`, else destructive (decided by the caller, which also checks the node still fits the job).
//!
//! Shadows (a deployment's canaries and surges, see `Allocation::shadow`) come first: one still waiting for
//! promotion (or health) runs beside the allocation of its index and holds nothing, unless that index is free;
//! one released is an ordinary allocation that takes its index from an older version's ("replaced by version
//! N"); one whose deployment ended before releasing it is stopped.
//!
//! The destination of a live migration that has not completed is left out: the source holds its index (a
//! completed migration stops the source, a failed one stops the destination).
//!
//! Allocations already terminal on the client, but desired `run`, hold their index or free it:
//! `Failed` of the current version holds it unless the group's `reschedule` policy replaces it (see
//! below), `Complete`
//! of a batch job holds it (the work is done), everything else (`Complete` of a service job, `Failed` of
//! an older version, `Lost`) frees it and the replacement names it as `previous_allocation`.
//! Free indexes are then filled lowest first.
//!
//! Rescheduling: a `Failed` allocation of the current version, in a group with a `reschedule` policy
//! that still allows an attempt (unlimited, or fewer reschedules in its tracker within `interval` than
//! `attempts`), is replaced once its delay (from the tracker: constant, exponential, fibonacci, capped at
//! `max_delay`) has passed since it failed; until then it holds its index and the group gets a
//! follow-up time at which the job should be evaluated again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use davit_api::deployment::Shadow;
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, Job, Node, NodeStatus, UnixMillis};
use davit_api::spec::{JobType, ReconcileStrategy, SchedulerAlgorithm};

use crate::rank::{self, UsageTracker};
use crate::state::{ClusterState, ShadowState};

/// What reconciliation decided for one job.
#[derive(Default)]
pub(crate) struct Reconciliation {
    /// Unconditional stops, in order.
    pub(crate) stops: Vec<Stop>,
    /// Allocations of another job version: update in place or destructively.
    pub(crate) updates: Vec<Update>,
    /// Indexes to place, per group in spec order, lowest index first.
    pub(crate) placements: Vec<Placement>,
    /// Per group: the earliest time a failed allocation may be rescheduled, when that is in the future.
    pub(crate) follow_ups: BTreeMap<String, UnixMillis>,
}

pub(crate) struct Stop {
    pub(crate) alloc: Arc<Allocation>,
    pub(crate) description: String,
    pub(crate) client_status: Option<ClientStatus>,
}

pub(crate) struct Update {
    pub(crate) alloc: Arc<Allocation>,
    pub(crate) group_position: usize,
    /// True when the group spec equals the allocation's version's, `count` aside.
    pub(crate) spec_unchanged: bool,
}

pub(crate) struct Placement {
    pub(crate) group_position: usize,
    pub(crate) index: u32,
    /// The allocation this one replaces (lost, completed, failed in an older version).
    pub(crate) previous: Option<Arc<Allocation>>,
    /// Set when `previous` failed and is rescheduled: the delay waited, in milliseconds.
    pub(crate) reschedule_delay_ms: Option<u64>,
}

/// `job` is the latest version, or `None` when the job is gone or stopped.
/// `algorithm`: the scheduler's, for groups whose job names none (it ranks reconnected allocations).
pub(crate) fn reconcile(
    state: &ClusterState,
    job: Option<&Job>,
    job_name: &str,
    algorithm: SchedulerAlgorithm,
    now: UnixMillis,
) -> Reconciliation {
    let mut allocs: Vec<Arc<Allocation>> = state.allocs_for_job(job_name).cloned().collect();
    // Oldest first, so that the first allocation of an index wins it and the last one of a history of
    // replacements is the one a new replacement points at.
    allocs.sort_by(|a, b| (a.index, a.create_time, &a.id).cmp(&(b.index, b.create_time, &b.id)));
    let mut result = Reconciliation::default();

    let Some(job) = job else {
        for alloc in allocs.into_iter().filter(|alloc| !alloc.is_terminal()) {
            result.stops.push(Stop { alloc, description: "job stopped".to_string(), client_status: None });
        }
        return result;
    };

    let mut by_group: BTreeMap<&str, Vec<Arc<Allocation>>> = BTreeMap::new();
    for alloc in &allocs {
        // The destination of a live migration under way holds nothing yet: its source holds the index.
        if alloc.desired_status == DesiredStatus::Stop || alloc.is_incoming_migration() {
            continue;
        }
        match job.spec.group(&alloc.group) {
            Some(_) => by_group.entry(alloc.group.as_str()).or_default().push(Arc::clone(alloc)),
            None if !alloc.is_terminal() => {
                result.stops.push(Stop { alloc: Arc::clone(alloc), description: "group removed from job".to_string(), client_status: None })
            }
            None => {}
        }
    }

    for (group_position, group) in job.spec.groups.iter().enumerate() {
        let allocs = by_group.remove(group.name.as_str()).unwrap_or_default();
        reconcile_group(state, job, group_position, &allocs, algorithm, now, &mut result);
    }
    result
}

fn reconcile_group(
    state: &ClusterState,
    job: &Job,
    group_position: usize,
    allocs: &[Arc<Allocation>],
    algorithm: SchedulerAlgorithm,
    now: UnixMillis,
    result: &mut Reconciliation,
) {
    let group = &job.spec.groups[group_position];
    let count = group.count;
    let mut held: BTreeSet<u32> = BTreeSet::new();
    let mut lost: Vec<&Arc<Allocation>> = Vec::new();
    let mut disconnected: Vec<&Arc<Allocation>> = Vec::new();
    let mut scaled_down: Vec<&Arc<Allocation>> = Vec::new();
    let replace = group.disconnect.as_ref().is_none_or(|disconnect| disconnect.replace);

    // Shadows (canaries and surges of a deployment): one still waiting runs beside the allocation of its index
    // and holds nothing (unless that index is free); one released takes its index from an older version's.
    let mut released_at: BTreeSet<u32> = BTreeSet::new();
    let mut waiting: Vec<u32> = Vec::new();
    let mut regular: Vec<Arc<Allocation>> = Vec::with_capacity(allocs.len());
    for alloc in allocs {
        let live = !alloc.client_status.is_terminal();
        match state.shadow_state(alloc) {
            None => regular.push(Arc::clone(alloc)),
            Some(ShadowState::Released) => {
                if live && alloc.job_version == job.version {
                    released_at.insert(alloc.index);
                }
                regular.push(Arc::clone(alloc));
            }
            Some(_) if !live => {}
            // On a down node: lost like any allocation (the main loop below decides).
            Some(ShadowState::Waiting) if state.node(&alloc.node_id).is_none_or(|node| node.status == NodeStatus::Down) => {
                regular.push(Arc::clone(alloc))
            }
            Some(ShadowState::Waiting) if alloc.index < count && alloc.job_version == job.version => waiting.push(alloc.index),
            Some(ShadowState::Waiting) if alloc.job_version == job.version => scaled_down.push(alloc),
            // Of an older version (its deployment is being cancelled), or of a deployment that ended first.
            Some(_) => result.stops.push(Stop {
                alloc: Arc::clone(alloc),
                description: match alloc.shadow {
                    Some(Shadow::Canary) => "canary of a deployment that ended without promoting it".to_string(),
                    _ => "surge of a deployment that ended before it was healthy".to_string(),
                },
                client_status: None,
            }),
        }
    }
    let allocs = &regular[..];

    // Live allocations: desired run, not terminal on the client. Those on reachable nodes first, so that one
    // held on a down node (`disconnect:`) never takes an index from one that runs where it can be reached.
    // One node lookup per allocation (this runs for every allocation of every evaluated group).
    let (mut reachable, down): (Vec<_>, Vec<_>) = allocs
        .iter()
        .filter(|alloc| !alloc.client_status.is_terminal())
        .map(|alloc| (alloc, state.node(&alloc.node_id)))
        .partition(|(_, node)| node.is_some_and(|node| node.status != NodeStatus::Down));
    if let Some(disconnect) = &group.disconnect
        && disconnect.lost_after.is_some()
    {
        let algorithm = job.spec.algorithm.unwrap_or(algorithm);
        reconnect_order(state, algorithm, disconnect.reconcile.unwrap_or_default(), &mut reachable);
    }
    for (alloc, node) in reachable.into_iter().chain(down) {
        let node_down = node.is_none_or(|node| node.status == NodeStatus::Down);
        let hold_until = node
            .filter(|_| node_down)
            .and_then(|node| disconnected_hold(group, node.last_heartbeat))
            .filter(|hold_until| *hold_until > now);
        if let Some(hold_until) = hold_until
            && alloc.index < count
            && (replace || held.insert(alloc.index))
        {
            // Disconnected, not lost (yet): decided again once `lost_after` has passed. With `replace`, a
            // replacement takes its index meanwhile; otherwise it keeps it.
            if replace {
                disconnected.push(alloc);
            }
            if hold_until != UnixMillis::MAX {
                let earliest = result.follow_ups.entry(group.name.clone()).or_insert(hold_until);
                *earliest = (*earliest).min(hold_until);
            }
        } else if node_down && (hold_until.is_none() || alloc.index < count) {
            result.stops.push(Stop {
                alloc: Arc::clone(alloc),
                description: "node down".to_string(),
                client_status: Some(ClientStatus::Lost),
            });
            lost.push(alloc);
        } else if alloc.job_version != job.version && released_at.contains(&alloc.index) {
            result.stops.push(Stop {
                alloc: Arc::clone(alloc),
                description: format!("replaced by version {}", job.version),
                client_status: None,
            });
        } else if alloc.index >= count {
            scaled_down.push(alloc);
        } else if !held.insert(alloc.index) {
            let reconciled = group.disconnect.as_ref().filter(|disconnect| disconnect.lost_after.is_some());
            result.stops.push(Stop {
                alloc: Arc::clone(alloc),
                description: match reconciled {
                    Some(disconnect) => {
                        format!(
                            "duplicate of index {} (disconnect.reconcile: {})",
                            alloc.index,
                            disconnect.reconcile.unwrap_or_default().as_str()
                        )
                    }
                    None => format!("duplicate of index {}", alloc.index),
                },
                client_status: None,
            });
        } else if alloc.job_version != job.version {
            let spec_unchanged = state
                .job_version(&job.spec.id(), alloc.job_version)
                .and_then(|old| old.spec.group(&group.name))
                .is_some_and(|old_group| equal_except_count(old_group, group));
            result.updates.push(Update { alloc: Arc::clone(alloc), group_position, spec_unchanged });
        }
    }
    // A waiting shadow whose index nobody else holds (its old allocation ended) holds it.
    held.extend(waiting);
    scaled_down.sort_by_key(|alloc| std::cmp::Reverse(alloc.index));
    for alloc in scaled_down {
        result.stops.push(Stop { alloc: Arc::clone(alloc), description: format!("not needed: count is {count}"), client_status: None });
    }

    // Replacements, keyed by index: the allocation that ended last at that index (a lost one ends now).
    let mut replacements: BTreeMap<u32, Arc<Allocation>> = BTreeMap::new();
    let mut done: BTreeSet<u32> = BTreeSet::new();
    let mut rescheduled: BTreeMap<u32, u64> = BTreeMap::new();
    for alloc in allocs.iter().filter(|alloc| alloc.client_status.is_terminal() && alloc.index < count) {
        let holds_index = match alloc.client_status {
            ClientStatus::Failed if alloc.job_version == job.version => match reschedule_decision(job, group, alloc, now) {
                Reschedule::Now { delay_ms } if !held.contains(&alloc.index) => {
                    rescheduled.insert(alloc.index, delay_ms);
                    replacements.insert(alloc.index, Arc::clone(alloc));
                    continue;
                }
                Reschedule::Later { at } if !held.contains(&alloc.index) => {
                    let earliest = result.follow_ups.entry(group.name.clone()).or_insert(at);
                    *earliest = (*earliest).min(at);
                    true
                }
                _ => true,
            },
            ClientStatus::Complete => job.spec.job_type == JobType::Batch,
            _ => false,
        };
        if holds_index {
            done.insert(alloc.index);
        } else if !held.contains(&alloc.index) {
            replacements.insert(alloc.index, Arc::clone(alloc));
        }
    }
    for alloc in lost.into_iter().chain(disconnected) {
        if alloc.index < count && !held.contains(&alloc.index) {
            replacements.insert(alloc.index, Arc::clone(alloc));
        }
    }
    held.extend(&done);
    replacements.retain(|index, _| !done.contains(index));

    for index in 0..count {
        if !held.contains(&index) {
            let previous = replacements.remove(&index);
            let reschedule_delay_ms = rescheduled.get(&index).copied().filter(|_| previous.is_some());
            result.placements.push(Placement { group_position, index, previous, reschedule_delay_ms });
        }
    }
}

/// Puts first, among reachable allocations of one index (a node came back with an allocation that a replacement
/// took the place of while it was away), the one `strategy` keeps: the others are then stopped as duplicates.
/// `reachable` is ordered by index, oldest first.
fn reconnect_order(
    state: &ClusterState,
    algorithm: SchedulerAlgorithm,
    strategy: ReconcileStrategy,
    reachable: &mut [(&Arc<Allocation>, Option<&Arc<Node>>)],
) {
    let mut usage = UsageTracker::new(state);
    let mut start = 0;
    while start < reachable.len() {
        let index = reachable[start].0.index;
        let end = start + reachable[start..].iter().take_while(|(alloc, _)| alloc.index == index).count();
        if end - start > 1 {
            let run = &mut reachable[start..end];
            // The first of the best: ties keep the oldest.
            let mut best = 0;
            for position in 1..run.len() {
                let better = match strategy {
                    ReconcileStrategy::KeepOriginal => false,
                    ReconcileStrategy::KeepReplacement => true,
                    ReconcileStrategy::LongestRunning => running_since(run[position].0) < running_since(run[best].0),
                    ReconcileStrategy::BestScore => {
                        node_score(&mut usage, algorithm, run[position]) > node_score(&mut usage, algorithm, run[best])
                    }
                };
                if better {
                    best = position;
                }
            }
            run[..=best].rotate_right(1);
        }
        start = end;
    }
}

/// When the allocation's tasks last (re)started: the latest start of any of them (never started: last).
fn running_since(alloc: &Allocation) -> UnixMillis {
    alloc.task_states.values().map(|task| task.started_at.unwrap_or(UnixMillis::MAX)).max().unwrap_or(UnixMillis::MAX)
}

/// The fit score of the allocation's node as it is now (the allocation included), by the group's algorithm.
fn node_score(usage: &mut UsageTracker<'_>, algorithm: SchedulerAlgorithm, (alloc, node): (&Arc<Allocation>, Option<&Arc<Node>>)) -> f64 {
    let Some(node) = node else { return f64::MIN };
    let used = usage.usage(&alloc.node_id);
    rank::fit_score(algorithm, rank::Capacity::of(node), used, &rank::Ask::default())
}

/// Until when a down node's allocation of `group` keeps its index instead of being lost (`disconnect:`): its
/// node's last heartbeat + `lost_after`, forever with `replace: false`, `None` without a disconnect block.
fn disconnected_hold(group: &davit_api::spec::GroupSpec, last_heartbeat: UnixMillis) -> Option<UnixMillis> {
    let disconnect = group.disconnect.as_ref()?;
    if !disconnect.replace {
        return Some(UnixMillis::MAX);
    }
    let lost_after = u64::try_from(disconnect.lost_after?.as_std().as_millis()).unwrap_or(u64::MAX);
    Some(last_heartbeat.saturating_add(lost_after))
}

pub(crate) enum Reschedule {
    /// No policy, or its attempts are used up: the failed allocation stays.
    Never,
    /// Its delay has passed: replace it now.
    Now { delay_ms: u64 },
    /// Replace it at this time.
    Later { at: UnixMillis },
}

/// Whether (and when) a failed allocation of the current version is rescheduled.
pub(crate) fn reschedule_decision(job: &Job, group: &davit_api::spec::GroupSpec, alloc: &Allocation, now: UnixMillis) -> Reschedule {
    let Some(policy) = &group.reschedule else { return Reschedule::Never };
    let policy = policy.resolve(job.spec.job_type);
    if !policy.unlimited {
        let interval_ms = u64::try_from(policy.interval.as_millis()).unwrap_or(u64::MAX);
        let window_start = now.saturating_sub(interval_ms);
        let recent = alloc.reschedule_tracker.iter().filter(|event| event.time > window_start).count();
        if recent >= policy.attempts as usize {
            return Reschedule::Never;
        }
    }
    let delay_ms = u64::try_from(policy.delay_for(alloc.reschedule_tracker.len()).as_millis()).unwrap_or(u64::MAX);
    let at = failed_at(alloc).saturating_add(delay_ms);
    if at <= now { Reschedule::Now { delay_ms } } else { Reschedule::Later { at } }
}

/// When the allocation failed: its last task's finish time, else when its status was last written.
fn failed_at(alloc: &Allocation) -> UnixMillis {
    alloc.task_states.values().filter_map(|task| task.finished_at).max().unwrap_or(alloc.modify_time)
}

/// True when the two group specs differ at most in `count` and `services` (the catalog and the agents'
/// proxies follow a service change without touching the tasks).
pub(crate) fn equal_except_count(old: &davit_api::spec::GroupSpec, new: &davit_api::spec::GroupSpec) -> bool {
    let mut old = old.clone();
    old.count = new.count;
    old.services.clone_from(&new.services);
    old == *new
}
