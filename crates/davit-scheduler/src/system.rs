//! The system scheduler (`type: system`): one allocation of every group on every node that may run it,
//! like Nomad's `scheduler/scheduler_system.go`. `count` does not multiply anything: validation allows
//! 0 or 1, and 0 places the group nowhere. Every allocation is named `<job>.<group>[0]` (index 0), as
//! in Nomad; the node tells them apart.
//!
//! Per group and node, first rule that applies wins (allocations desired `stop`, and destinations of
//! live migrations under way, are ignored as in `reconcile`):
//!
//! 1. job missing or stopped → stop every non-terminal allocation ("job stopped"); a group no longer in
//!    the spec → stop ("group removed from job");
//! 2. node down or gone → stop its live allocations as `Lost` ("node down"); nothing is placed there;
//! 3. node no longer feasible (datacenter, drivers, constraints) → stop ("node no longer feasible: …");
//! 4. `count: 0` → stop ("not needed: count is 0");
//! 5. a live allocation → keep the oldest (stop others: "duplicate on node N"); of another version, update
//!    it in place when the group spec changed at most in `count`/`services`, else replace it on the same
//!    node ("replaced by version N") if the new version fits there (or fits by preemption); a node that
//!    is not schedulable (ineligible, draining, initializing) keeps the old version until it is;
//! 6. no live allocation, node not schedulable → nothing (Nomad keeps system allocations on ineligible
//!    nodes; the drainer stops them last, after everything else on a draining node);
//! 7. the latest terminal allocation failed in the current version → rescheduled on the same node per the
//!    group's `reschedule` policy (now: replaced, "rescheduled"; later: a follow-up time; never: it stays);
//! 8. otherwise (none yet, completed, lost, failed in an older version) → place one, naming the
//!    terminal one as `previous_allocation`.
//!
//! A placement that does not fit its node tries preemption on that node (when the configuration allows
//! it for system jobs, the default), else counts the node in the group's [`PlacementFailure`]: `missing`
//! is the number of nodes without the allocation, `exhausted` per dimension; infeasible nodes are listed
//! in `filtered` for context but are no failure. Nodes are visited in id order; randomness is used only
//! for ports and ids.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use davit_api::namespace::NamespaceUsage;
use davit_api::objects::{
    AllocatedResources, Allocation, ClientStatus, DesiredStatus, EvalStatus, Evaluation, Job, Node, NodeStatus, PlacementFailure,
    UnixMillis,
};
use davit_api::spec::GroupSpec;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::alloc::{AllocIds, NewAllocation};
use crate::feasible::FeasibilityChecker;
use crate::generic::{Counts, describe};
use crate::plan::{AllocStop, Plan, ScheduleResult, SchedulerConfig};
use crate::preempt::Preemptor;
use crate::rank::{self, Ask, UsageTracker};
use crate::reconcile::{Reschedule, equal_except_count, reschedule_decision};
use crate::state::ClusterState;

/// Schedules a system job; `plan` is empty, `seed` already mixed with the evaluation id.
pub(crate) fn schedule_system(
    state: &ClusterState,
    eval: &Evaluation,
    config: &SchedulerConfig,
    plan: Plan,
    seed: u64,
    now: UnixMillis,
) -> ScheduleResult {
    let job = state.job(&eval.job_name).map(|job| &**job).filter(|job| !job.stopped);
    let mut run = SystemRun {
        state,
        eval,
        now,
        rng: SmallRng::seed_from_u64(seed),
        usage: UsageTracker::new(state),
        counts: Counts::default(),
        ids: AllocIds::new(now),
        follow_ups: BTreeMap::new(),
        plan,
        namespace_usage: state.namespace_usage(davit_api::namespace::namespace_of(&eval.job_name)),
    };
    let mut allocs: Vec<&Arc<Allocation>> = state.allocs_for_job(&eval.job_name).collect();
    allocs.sort_by(|a, b| (a.create_time, &a.id).cmp(&(b.create_time, &b.id)));
    match job {
        None => {
            for alloc in allocs.into_iter().filter(|alloc| !alloc.is_terminal()) {
                run.stop(alloc, "job stopped".to_string(), None);
            }
        }
        Some(job) => run.reconcile(job, config, allocs),
    }
    let SystemRun { counts, plan, follow_ups, .. } = run;
    let mut status_description = describe(job.is_none(), &counts, &plan.failed_groups);
    for (group, at) in &follow_ups {
        write!(status_description, "; group {group}: reschedule of a failed allocation due at {at}")
            .expect("writing to a String cannot fail");
    }
    ScheduleResult { plan, status: EvalStatus::Complete, status_description, follow_ups }
}

struct SystemRun<'a> {
    state: &'a ClusterState,
    eval: &'a Evaluation,
    now: UnixMillis,
    rng: SmallRng,
    usage: UsageTracker<'a>,
    counts: Counts,
    ids: AllocIds,
    follow_ups: BTreeMap<String, UnixMillis>,
    plan: Plan,
    /// What the job's namespace reserves, as this plan leaves it (its quota is checked against it).
    namespace_usage: NamespaceUsage,
}

/// What to place on one node.
struct Placement<'a> {
    previous: Option<&'a Arc<Allocation>>,
    /// The previous allocation still runs (a destructive update): stopped only if the new one fits.
    replaces_running: bool,
    /// The previous allocation failed and is rescheduled after this delay (ms).
    reschedule_delay_ms: Option<u64>,
}

impl<'a> SystemRun<'a> {
    fn reconcile(&mut self, job: &'a Job, config: &SchedulerConfig, allocs: Vec<&'a Arc<Allocation>>) {
        let mut feasibility = FeasibilityChecker::new(self.state, &job.spec);
        let mut preemptor = config.preemption.enabled_for(job.spec.job_type).then(|| Preemptor::new(self.state, job));
        // (group, node id) → allocations, oldest first.
        let mut by_group_node: BTreeMap<(&str, &str), Vec<&'a Arc<Allocation>>> = BTreeMap::new();
        for alloc in allocs {
            if alloc.desired_status == DesiredStatus::Stop || alloc.is_incoming_migration() {
                continue;
            }
            match job.spec.group(&alloc.group) {
                Some(_) => by_group_node.entry((alloc.group.as_str(), alloc.node_id.as_str())).or_default().push(alloc),
                None if !alloc.is_terminal() => self.stop(alloc, "group removed from job".to_string(), None),
                None => {}
            }
        }

        let quota = self.state.namespace(davit_api::namespace::namespace_of(&self.eval.job_name)).and_then(|namespace| namespace.quota);
        for (group_position, group) in job.spec.groups.iter().enumerate() {
            let ask = Ask::new(group);
            let mut failure = PlacementFailure::default();
            // Nodes in the state, and nodes that are gone but still hold allocations of the group.
            let mut node_ids: BTreeSet<&str> = self.state.nodes().map(|node| node.id.as_str()).collect();
            node_ids.extend(by_group_node.keys().filter(|(name, _)| *name == group.name).map(|(_, node_id)| *node_id));
            for node_id in node_ids {
                let allocs = by_group_node.remove(&(group.name.as_str(), node_id)).unwrap_or_default();
                let (live, terminal): (Vec<_>, Vec<_>) = allocs.into_iter().partition(|alloc| !alloc.client_status.is_terminal());
                let Some(node) = self.state.node(node_id).filter(|node| node.status != NodeStatus::Down) else {
                    for alloc in live {
                        self.stop(alloc, "node down".to_string(), Some(ClientStatus::Lost));
                    }
                    continue;
                };
                let schedulable = node.is_schedulable();
                if schedulable {
                    failure.nodes_evaluated += 1;
                }
                if let Err(reason) = feasibility.check(node, group_position) {
                    for alloc in live {
                        self.stop(alloc, format!("node no longer feasible: {reason}"), None);
                    }
                    if schedulable {
                        *failure.filtered.entry(reason).or_default() += 1;
                    }
                    continue;
                }
                if group.count == 0 {
                    for alloc in live {
                        self.stop(alloc, "not needed: count is 0".to_string(), None);
                    }
                    continue;
                }
                let mut live = live.into_iter();
                let placement = if let Some(kept) = live.next() {
                    for duplicate in live {
                        self.stop(duplicate, format!("duplicate on node {}", node.name), None);
                    }
                    if kept.job_version == job.version {
                        continue;
                    }
                    let spec_unchanged = self
                        .state
                        .job_version(&job.spec.id(), kept.job_version)
                        .and_then(|old| old.spec.group(&group.name))
                        .is_some_and(|old_group| equal_except_count(old_group, group));
                    if spec_unchanged {
                        let mut alloc = (**kept).clone();
                        alloc.job_version = job.version;
                        alloc.eval_id = self.eval.id.clone();
                        alloc.modify_time = self.now;
                        self.plan.push_allocation(alloc);
                        self.counts.updated_in_place += 1;
                        continue;
                    }
                    if !schedulable {
                        continue;
                    }
                    Placement { previous: Some(kept), replaces_running: true, reschedule_delay_ms: None }
                } else {
                    if !schedulable {
                        continue;
                    }
                    match terminal.last() {
                        Some(failed) if failed.client_status == ClientStatus::Failed && failed.job_version == job.version => {
                            match reschedule_decision(job, group, failed, self.now) {
                                Reschedule::Now { delay_ms } => {
                                    Placement { previous: Some(*failed), replaces_running: false, reschedule_delay_ms: Some(delay_ms) }
                                }
                                Reschedule::Later { at } => {
                                    let earliest = self.follow_ups.entry(group.name.clone()).or_insert(at);
                                    *earliest = (*earliest).min(at);
                                    continue;
                                }
                                Reschedule::Never => continue,
                            }
                        }
                        previous => Placement { previous: previous.copied(), replaces_running: false, reschedule_delay_ms: None },
                    }
                };
                // The namespace's quota, with the allocation this one replaces already out of it.
                let replaced = placement.previous.filter(|_| placement.replaces_running);
                let mut usage = self.namespace_usage;
                if let Some(previous) = replaced {
                    usage.remove(previous.resources.cpu, previous.resources.memory);
                }
                let namespace = davit_api::namespace::namespace_of(&self.eval.job_name);
                let asked = NamespaceUsage { cpu: ask.cpu, memory: ask.memory, allocations: 1 };
                if let Some(reason) = quota.and_then(|quota| quota.exceeded_by(namespace, &usage, &asked)) {
                    failure.quota = Some(reason);
                    failure.missing += 1;
                    continue;
                }
                match self.place(job, group_position, group, &ask, node, placement, &mut feasibility, &mut preemptor) {
                    Ok(()) => {
                        usage.add(ask.cpu, ask.memory);
                        self.namespace_usage = usage;
                    }
                    Err(dimension) => {
                        *failure.exhausted.entry(dimension.to_string()).or_default() += 1;
                        failure.missing += 1;
                    }
                }
            }
            if failure.missing > 0 {
                self.plan.failed_groups.insert(group.name.clone(), failure);
            }
        }
    }

    /// Places the group's allocation on `node` (evicting lower-priority work if it does not fit and the
    /// preemptor finds a set), or says which dimension did not fit.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        job: &'a Job,
        group_position: usize,
        group: &GroupSpec,
        ask: &Ask,
        node: &'a Arc<Node>,
        placement: Placement<'a>,
        feasibility: &mut FeasibilityChecker<'_>,
        preemptor: &mut Option<Preemptor<'a>>,
    ) -> Result<(), rank::Exhausted> {
        let replaced = placement.previous.filter(|_| placement.replaces_running);
        if let Some(previous) = replaced {
            self.usage.remove(&previous.node_id, &previous.resources);
        }
        let mut victims = Vec::new();
        if let Err(dimension) = rank::fit(node, self.usage.usage(&node.id), ask) {
            let eviction = preemptor.as_ref().and_then(|preemptor| {
                preemptor.find(std::slice::from_ref(&node), feasibility, group_position, group, ask, &mut self.usage)
            });
            match (eviction, preemptor.as_mut()) {
                (Some(eviction), Some(preemptor)) => {
                    preemptor.evict(&mut self.usage, &eviction.victims);
                    victims = eviction.victims;
                }
                _ => {
                    if let Some(previous) = replaced {
                        // Keep the old version running: there is no room for its replacement.
                        self.usage.add(&previous.node_id, &previous.resources);
                    }
                    return Err(dimension);
                }
            }
        }
        let ports = rank::assign_ports(node, self.usage.usage(&node.id), ask, &mut self.rng);
        let resources = AllocatedResources { cpu: ask.cpu, memory: ask.memory, ports };
        self.usage.add(&node.id, &resources);
        let alloc = NewAllocation {
            job,
            group: &group.name,
            index: 0,
            node,
            eval_id: &self.eval.id,
            resources,
            previous: placement.previous.map(|previous| &**previous),
            reschedule_delay_ms: placement.reschedule_delay_ms,
            deployment_id: None,
            shadow: None,
            now: self.now,
        }
        .build(self.ids.next(self.state, &mut self.rng));
        if let Some(preemptor) = preemptor.as_ref() {
            for victim in &victims {
                self.plan.push_preemption(&victim.node_id, preemptor.stop(victim, &alloc.id));
                self.counts.preempted += 1;
            }
        }
        self.plan.push_allocation(alloc);
        match (placement.previous, placement.replaces_running, placement.reschedule_delay_ms) {
            (Some(previous), true, _) => {
                self.plan.push_stop(
                    &previous.node_id,
                    AllocStop {
                        alloc_id: previous.id.clone(),
                        description: format!("replaced by version {}", job.version),
                        client_status: None,
                    },
                );
                self.counts.replaced += 1;
            }
            (Some(previous), false, Some(_)) => {
                self.plan.push_stop(
                    &previous.node_id,
                    AllocStop { alloc_id: previous.id.clone(), description: "rescheduled".to_string(), client_status: None },
                );
                self.counts.rescheduled += 1;
            }
            _ => self.counts.placed += 1,
        }
        Ok(())
    }

    fn stop(&mut self, alloc: &Allocation, description: String, client_status: Option<ClientStatus>) {
        self.usage.remove(&alloc.node_id, &alloc.resources);
        if !alloc.is_terminal() {
            self.namespace_usage.remove(alloc.resources.cpu, alloc.resources.memory);
        }
        if client_status == Some(ClientStatus::Lost) {
            self.counts.lost += 1;
        } else {
            self.counts.stopped += 1;
        }
        self.plan.push_stop(&alloc.node_id, AllocStop { alloc_id: alloc.id.clone(), description, client_status });
    }
}
