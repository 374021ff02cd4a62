//! The generic scheduler for service and batch jobs: reconcile, then place each missing allocation.
//!
//! Placement is a chain: schedulable nodes in a seeded random order → feasibility (datacenter, drivers,
//! constraints; see `feasible`) → required placement rules (distinct_hosts, distinct_property, required
//! alloc (anti-)affinities; see `rules`) → fit (cpu, memory, ports; see `rank`) → scores (the algorithm's
//! fit score, node affinity, spread, alloc affinity, job anti-affinity; combined as `rank` describes) →
//! a candidate limit (see `SchedulerConfig`) → best node.
//! Every node turned down adds its reason to the group's [`PlacementFailure`].
//! When no node fits, the placement may preempt lower-priority allocations on one node (see `preempt`).
//! System jobs are handed to `system` at the entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use davit_api::deployment::Shadow;
use davit_api::namespace::NamespaceUsage;
use davit_api::objects::{
    AllocatedResources, Allocation, ClientStatus, EvalStatus, Evaluation, Job, Node, NodeScore, PlacementFailure, PlacementScores,
    UnixMillis,
};
use davit_api::spec::{JobType, SchedulerAlgorithm};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::alloc::{AllocIds, NewAllocation};
use crate::deployment::{self, Go, WorkItem};
use crate::feasible::FeasibilityChecker;
use crate::plan::{AllocStop, Plan, ScheduleResult, SchedulerConfig};
use crate::preempt::Preemptor;
use crate::rank::{self, Ask, UsageTracker};
use crate::reconcile::{self, Reconciliation};
use crate::rules::{PlacementRules, ScoreParts};
use crate::state::{ClusterState, PlacementNode};
use crate::system;

/// Computes the plan for one evaluation. See the crate documentation for the contract.
pub fn schedule(state: &ClusterState, eval: &Evaluation, config: &SchedulerConfig, seed: u64, now: UnixMillis) -> ScheduleResult {
    let job = state.job(&eval.job_name).map(|job| &**job);
    let mut plan =
        Plan::new(&eval.id, &eval.job_name, job.map_or(0, |job| job.version), job.map_or(eval.priority, |job| job.spec.priority));
    if job.map_or(eval.job_type, |job| job.spec.job_type) == JobType::System {
        return system::schedule_system(state, eval, config, plan, seed ^ fnv1a(eval.id.as_bytes()), now);
    }
    let running_job = job.filter(|job| !job.stopped);
    if let Some(stopped) = job.filter(|job| job.stopped) {
        deployment::cancel_others(state, &stopped.spec.id(), None, &mut plan);
    }
    let mut reconciliation = reconcile::reconcile(state, running_job, &eval.job_name, config.algorithm, now);
    let follow_ups = std::mem::take(&mut reconciliation.follow_ups);
    let mut run = Run {
        state,
        eval,
        config,
        now,
        rng: SmallRng::seed_from_u64(seed ^ fnv1a(eval.id.as_bytes())),
        usage: UsageTracker::new(state),
        counts: Counts::default(),
        ids: AllocIds::new(now),
        plan: &mut plan,
    };
    run.apply(running_job, reconciliation);
    let counts = run.counts;
    let mut status_description = describe(running_job.is_none(), &counts, &plan.failed_groups);
    for (group, at) in &follow_ups {
        write!(status_description, "; group {group}: reschedule of a failed allocation due at {at}")
            .expect("writing to a String cannot fail");
    }
    ScheduleResult { plan, status: EvalStatus::Complete, status_description, follow_ups }
}

/// What one run did, for the status description.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) placed: u32,
    pub(crate) updated_in_place: u32,
    pub(crate) replaced: u32,
    pub(crate) rescheduled: u32,
    pub(crate) stopped: u32,
    pub(crate) lost: u32,
    pub(crate) preempted: u32,
}

/// One piece of work for the node chain.
struct Work {
    group_position: usize,
    index: u32,
    previous: Option<Arc<Allocation>>,
    /// The previous allocation still runs and is stopped only if its replacement finds a node.
    destructive: bool,
    /// The previous allocation failed and is rescheduled after this delay (ms): it is stopped
    /// ("rescheduled") when its replacement finds a node, which avoids its node if it can.
    reschedule_delay_ms: Option<u64>,
    /// A deployment's canary or surge, placed beside the previous allocation.
    shadow: Option<Shadow>,
}

struct Run<'a> {
    state: &'a ClusterState,
    eval: &'a Evaluation,
    config: &'a SchedulerConfig,
    now: UnixMillis,
    rng: SmallRng,
    usage: UsageTracker<'a>,
    counts: Counts,
    ids: AllocIds,
    plan: &'a mut Plan,
}

impl<'a> Run<'a> {
    fn apply(&mut self, job: Option<&'a Job>, reconciliation: Reconciliation) {
        for stop in &reconciliation.stops {
            self.usage.remove(&stop.alloc.node_id, &stop.alloc.resources);
            if stop.client_status == Some(ClientStatus::Lost) {
                self.counts.lost += 1;
            } else {
                self.counts.stopped += 1;
            }
            self.plan.push_stop(
                &stop.alloc.node_id,
                AllocStop { alloc_id: stop.alloc.id.clone(), description: stop.description.clone(), client_status: stop.client_status },
            );
        }
        let Some(job) = job else { return };
        // The namespace's quota, checked against what its live allocations reserve, less what this plan stops.
        let job_id = job.spec.id();
        let namespace = davit_api::namespace::namespace_of(&job_id);
        let quota = self.state.namespace(namespace).and_then(|namespace| namespace.quota);
        let mut namespace_usage = self.state.namespace_usage(namespace);
        for stop in reconciliation.stops.iter().filter(|stop| !stop.alloc.is_terminal()) {
            namespace_usage.remove(stop.alloc.resources.cpu, stop.alloc.resources.memory);
        }

        let stopped: BTreeSet<&str> = reconciliation.stops.iter().map(|stop| stop.alloc.id.as_str()).collect();
        let mut rules = PlacementRules::new(self.state, &job.spec, &stopped);
        drop(stopped);
        let mut feasibility = FeasibilityChecker::new(self.state, &job.spec);
        let mut preemptor = self.config.preemption.enabled_for(job.spec.job_type).then(|| Preemptor::new(self.state, job));
        let mut work: Vec<Work> = reconciliation
            .placements
            .into_iter()
            .map(|placement| Work {
                group_position: placement.group_position,
                index: placement.index,
                previous: placement.previous,
                destructive: false,
                reschedule_delay_ms: placement.reschedule_delay_ms,
                shadow: None,
            })
            .collect();
        for update in reconciliation.updates {
            let node = self.state.node(&update.alloc.node_id);
            let in_place = update.spec_unchanged && node.is_some_and(|node| feasibility.check(node, update.group_position).is_ok());
            if in_place {
                let mut alloc = (*update.alloc).clone();
                alloc.job_version = job.version;
                alloc.eval_id = self.eval.id.clone();
                alloc.modify_time = self.now;
                self.plan.push_allocation(alloc);
                self.counts.updated_in_place += 1;
            } else {
                work.push(Work {
                    group_position: update.group_position,
                    index: update.alloc.index,
                    previous: Some(update.alloc),
                    destructive: true,
                    reschedule_delay_ms: None,
                    shadow: None,
                });
            }
        }
        work.sort_by_key(|work| (work.group_position, work.index));
        let items: Vec<WorkItem> = work
            .iter()
            .map(|work| WorkItem { group_position: work.group_position, index: work.index, destructive: work.destructive })
            .collect();
        let rollout = deployment::plan_rollout(self.state, job, self.plan, &mut self.ids, &mut self.rng, self.now, &items);
        let mut go = rollout.go.into_iter();
        work.retain_mut(|work| match go.next().unwrap_or(Go::Ahead) {
            Go::Ahead => true,
            Go::Wait => false,
            Go::Beside(shadow) => {
                // Placed beside the running allocation, which keeps running.
                (work.destructive, work.shadow) = (false, Some(shadow));
                true
            }
        });

        let order = NodeOrder::new(self.state.placement_nodes(), &mut self.rng);
        let asks: Vec<Ask> = job.spec.groups.iter().map(Ask::new).collect();
        let algorithm = job.spec.algorithm.unwrap_or(self.config.algorithm);
        let mut groups_with_work: Vec<usize> = work.iter().map(|work| work.group_position).collect();
        groups_with_work.dedup();
        for &group_position in &groups_with_work {
            if rules.needs_spread_domains(group_position) {
                let feasible: Vec<&Node> =
                    order.iter().filter(|slot| feasibility.check(&slot.node, group_position).is_ok()).map(|slot| &*slot.node).collect();
                rules.prepare_spread_domains(group_position, feasible.into_iter());
            }
        }
        let mut cursor = 0;
        for work in work {
            let group = &job.spec.groups[work.group_position];
            if let Some(failure) = self.plan.failed_groups.get_mut(&group.name) {
                // Later placements of a failed group would fail the same way: count them only.
                failure.missing += 1;
                continue;
            }
            let previous_running = work.previous.as_ref().filter(|_| work.destructive);
            let previous_node = previous_running.and_then(|previous| self.state.node_with_usage_slot(&previous.node_id));
            if let Some(previous) = previous_running {
                self.usage.remove(&previous.node_id, &previous.resources);
            }
            if let Some((node, usage_slot)) = previous_node {
                rules.removed(work.group_position, node, usage_slot);
            }
            let ask = &asks[work.group_position];
            let rescheduled = work.previous.as_ref().zip(work.reschedule_delay_ms);
            let avoid = rescheduled.map(|(previous, _)| previous.node_id.as_str());
            let limit = self.config.limit_for(job.spec.job_type, rules.is_wide(work.group_position), order.len());
            let chooser = Chooser { algorithm, limit, avoid };
            let mut scores = self.config.explain.then(PlacementScores::default);
            if let Some(previous) = previous_running {
                namespace_usage.remove(previous.resources.cpu, previous.resources.memory);
            }
            let over_quota = quota.and_then(|quota| {
                let asked = NamespaceUsage { cpu: ask.cpu, memory: ask.memory, allocations: 1 };
                quota.exceeded_by(namespace, &namespace_usage, &asked)
            });
            let selected = match over_quota {
                Some(reason) => Err(PlacementFailure { quota: Some(reason), ..PlacementFailure::default() }),
                None => match self.select(
                    &order,
                    &mut cursor,
                    &mut feasibility,
                    &mut rules,
                    work.group_position,
                    ask,
                    &chooser,
                    scores.as_mut(),
                ) {
                    Ok(slot) => Ok((&slot.node, slot.usage_slot, Vec::new())),
                    // Nothing fits: evict lower-priority work from the node where that is cheapest (among the
                    // nodes the required placement rules allow).
                    Err(failure) => match preemptor.as_ref().and_then(|preemptor| {
                        let allowed: Vec<&'a Arc<Node>> = order
                            .iter()
                            .filter(|slot| rules.check_required(&slot.node, slot.usage_slot, work.group_position).is_ok())
                            .map(|slot| &slot.node)
                            .collect();
                        preemptor.find(&allowed, &mut feasibility, work.group_position, group, ask, &mut self.usage)
                    }) {
                        Some(eviction) => {
                            scores = None;
                            let (node, usage_slot) =
                                self.state.node_with_usage_slot(&eviction.node.id).expect("preemption picks a stored node");
                            Ok((node, usage_slot, eviction.victims))
                        }
                        None => Err(failure),
                    },
                },
            };
            match selected {
                Ok((node, usage_slot, victims)) => {
                    namespace_usage.add(ask.cpu, ask.memory);
                    if let Some(preemptor) = preemptor.as_mut() {
                        preemptor.evict(&mut self.usage, &victims);
                    }
                    rules.placed(work.group_position, node, usage_slot);
                    let usage = self.usage.usage_in(usage_slot);
                    let ports = rank::assign_ports(node, usage, ask, &mut self.rng);
                    let resources = AllocatedResources { cpu: ask.cpu, memory: ask.memory, ports };
                    self.usage.add_in(usage_slot, &resources);
                    let alloc = NewAllocation {
                        job,
                        group: &group.name,
                        index: work.index,
                        node,
                        eval_id: &self.eval.id,
                        resources,
                        previous: work.previous.as_deref(),
                        reschedule_delay_ms: work.reschedule_delay_ms,
                        deployment_id: rollout.deployment_ids[work.group_position].as_deref(),
                        shadow: work.shadow,
                        now: self.now,
                    }
                    .build(self.ids.next(self.state, &mut self.rng));
                    if let Some(preemptor) = &preemptor {
                        for victim in &victims {
                            self.plan.push_preemption(&victim.node_id, preemptor.stop(victim, &alloc.id));
                            self.counts.preempted += 1;
                        }
                    }
                    if let Some(scores) = scores {
                        self.plan.scores.insert(alloc.id.clone(), scores);
                    }
                    self.plan.push_allocation(alloc);
                    if let Some(previous) = previous_running {
                        self.plan.push_stop(
                            &previous.node_id,
                            AllocStop {
                                alloc_id: previous.id.clone(),
                                description: format!("replaced by version {}", job.version),
                                client_status: None,
                            },
                        );
                        self.counts.replaced += 1;
                    } else if let Some((previous, _)) = rescheduled {
                        self.plan.push_stop(
                            &previous.node_id,
                            AllocStop { alloc_id: previous.id.clone(), description: "rescheduled".to_string(), client_status: None },
                        );
                        self.counts.rescheduled += 1;
                    } else {
                        self.counts.placed += 1;
                    }
                }
                Err(mut failure) => {
                    if let Some(previous) = previous_running {
                        // Keep the old allocation running: there is no room for its replacement.
                        self.usage.add(&previous.node_id, &previous.resources);
                        namespace_usage.add(previous.resources.cpu, previous.resources.memory);
                    }
                    if let Some((node, usage_slot)) = previous_node {
                        rules.placed(work.group_position, node, usage_slot);
                    }
                    failure.missing = 1;
                    self.plan.failed_groups.insert(group.name.clone(), failure);
                }
            }
        }
    }

    /// Walks the nodes from `cursor` and returns the best-scoring one that is feasible, keeps the required
    /// placement rules and fits, or why none did. The cursor moves past the nodes looked at, so with a
    /// candidate limit successive placements start where the last one stopped (as Nomad's node iterator
    /// does). With `scores`, records the best-ranked candidates there, the chosen one first.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &mut self,
        order: &NodeOrder<'a>,
        cursor: &mut usize,
        feasibility: &mut FeasibilityChecker<'_>,
        rules: &mut PlacementRules,
        group_position: usize,
        ask: &Ask,
        chooser: &Chooser<'_>,
        scores: Option<&mut PlacementScores>,
    ) -> Result<&'a PlacementNode, PlacementFailure> {
        /// Nodes with a negative final score that may be passed over before they count toward the limit.
        const MAX_SKIPPED: usize = 3;
        let mut failure = PlacementFailure::default();
        // Ranked by (not the avoided node, score): the avoided node wins only when it is the only fit.
        let mut best: Option<((bool, f64), &'a PlacementNode)> = None;
        let mut candidates = scores.is_some().then(Candidates::default);
        let mut fitting = 0;
        let mut skipped = 0;
        let mut visited = 0;
        while visited < order.len() {
            let position = (*cursor + visited) % order.len();
            let slot = order.get(position);
            let PlacementNode { node, class, usage_slot, capacity } = slot;
            let class = *class;
            visited += 1;
            failure.nodes_evaluated += 1;
            if let Err(reason) = feasibility.check_in_class(node, class, group_position) {
                *failure.filtered.entry(reason).or_default() += 1;
                continue;
            }
            if let Err(reason) = rules.check_required(node, *usage_slot, group_position) {
                *failure.filtered.entry(reason).or_default() += 1;
                continue;
            }
            let usage = self.usage.usage_in(*usage_slot);
            if let Err(dimension) = rank::fits(*capacity, node, usage, ask) {
                *failure.exhausted.entry(dimension.to_string()).or_default() += 1;
                continue;
            }
            let fit = rank::fit_score(chooser.algorithm, *capacity, usage, ask);
            let parts = rules.score(node, *usage_slot, group_position, class, fit);
            let score = parts.final_score();
            let rank = (chooser.avoid.is_none_or(|avoid| avoid != node.id), score);
            if let Some(candidates) = candidates.as_mut() {
                candidates.record(rank, node, &parts);
            }
            if best.is_none_or(|(best_rank, _)| rank > best_rank) {
                best = Some((rank, slot));
            }
            if score < 0.0 && skipped < MAX_SKIPPED {
                skipped += 1;
            } else {
                fitting += 1;
            }
            if chooser.limit.is_some_and(|limit| fitting >= limit) {
                break;
            }
        }
        if order.len() > 0 {
            *cursor = (*cursor + visited) % order.len();
        }
        if let Some((scores, candidates)) = scores.zip(candidates) {
            *scores = candidates.into_scores();
        }
        best.map(|(_, node)| node).ok_or(failure)
    }
}

/// The best-ranked candidates of one placement so far, best first, with `select`'s rank (so the first
/// is the chosen node; on equal ranks the node scored first stays ahead, as in `select`).
#[derive(Default)]
struct Candidates {
    scored: u32,
    kept: Vec<((bool, f64), NodeScore)>,
}

impl Candidates {
    fn record(&mut self, rank: (bool, f64), node: &Node, parts: &ScoreParts) {
        self.scored += 1;
        let position = self.kept.iter().position(|(kept, _)| rank > *kept).unwrap_or(self.kept.len());
        if position >= PlacementScores::KEPT {
            return;
        }
        let score = NodeScore {
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            fit: parts.fit,
            node_affinity: parts.node_affinity,
            spread: parts.spread,
            alloc_affinity: parts.alloc_affinity,
            job_anti_affinity: parts.job_anti_affinity,
            score: rank.1,
        };
        self.kept.insert(position, (rank, score));
        self.kept.truncate(PlacementScores::KEPT);
    }

    fn into_scores(self) -> PlacementScores {
        PlacementScores { nodes_scored: self.scored, candidates: self.kept.into_iter().map(|(_, score)| score).collect() }
    }
}

/// The order a run walks the schedulable nodes in: from a random start, with a random stride coprime
/// with their number, so every node comes exactly once — a randomly rotated permutation, chosen in O(1)
/// per evaluation (the node list itself is shared by evaluations, see `ClusterState::placement_nodes`).
struct NodeOrder<'a> {
    nodes: &'a [PlacementNode],
    start: usize,
    stride: usize,
}

impl<'a> NodeOrder<'a> {
    fn new(nodes: &'a [PlacementNode], rng: &mut SmallRng) -> NodeOrder<'a> {
        let count = nodes.len();
        if count < 2 {
            return NodeOrder { nodes, start: 0, stride: 1 };
        }
        let start = rng.random_range(0..count);
        let stride = loop {
            let stride = rng.random_range(1..count);
            if gcd(stride, count) == 1 {
                break stride;
            }
        };
        NodeOrder { nodes, start, stride }
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn get(&self, position: usize) -> &'a PlacementNode {
        let nodes: &'a [PlacementNode] = self.nodes;
        &nodes[(self.start + position * self.stride) % nodes.len()]
    }

    fn iter(&self) -> impl Iterator<Item = &'a PlacementNode> + '_ {
        (0..self.len()).map(|position| self.get(position))
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// How [`Run::select`] picks among the nodes that fit.
struct Chooser<'n> {
    algorithm: SchedulerAlgorithm,
    /// Fitting nodes to score before choosing; `None`: all.
    limit: Option<usize>,
    /// A node to use only if no other fits (where a rescheduled allocation failed).
    avoid: Option<&'n str>,
}

/// FNV-1a: a small hash that is the same on every platform and Rust version, to mix the evaluation id
/// into the seed (two evaluations given the same seed still get different ids and node orders).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

pub(crate) fn describe(job_gone: bool, counts: &Counts, failed_groups: &BTreeMap<String, PlacementFailure>) -> String {
    let mut parts = Vec::new();
    for (count, what) in [
        (counts.placed, "placed"),
        (counts.updated_in_place, "updated in place"),
        (counts.replaced, "replaced"),
        (counts.rescheduled, "rescheduled"),
        (counts.stopped, "stopped"),
        (counts.lost, "lost"),
        (counts.preempted, "preempted"),
    ] {
        if count > 0 {
            parts.push(format!("{what} {count}"));
        }
    }
    let mut text = if parts.is_empty() { "no changes".to_string() } else { parts.join(", ") };
    if job_gone {
        text = format!("job stopped: {text}");
    }
    for (group, failure) in failed_groups {
        write!(text, "; group {group}: {} not placed ({})", failure.missing, failure.summary()).expect("writing to a String cannot fail");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_order_visits_every_node_once_from_a_random_start() {
        let mut rng = SmallRng::seed_from_u64(3);
        for count in 0..60 {
            let nodes: Vec<PlacementNode> = (0..count)
                .map(|number| PlacementNode {
                    node: Arc::new(crate::tests::node(&format!("n{number}"))),
                    class: number as u64,
                    usage_slot: number,
                    capacity: rank::Capacity { cpu: 1, memory: 1 },
                })
                .collect();
            for _ in 0..5 {
                let order = NodeOrder::new(&nodes, &mut rng);
                let mut seen: Vec<u64> = order.iter().map(|slot| slot.class).collect();
                seen.sort();
                assert_eq!(seen, (0..count as u64).collect::<Vec<_>>(), "{count} nodes");
            }
        }
    }
}
