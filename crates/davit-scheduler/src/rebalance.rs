//! Rebalancing: move running service allocations from the fullest nodes to the emptiest, a few at a time,
//! so that nodes that joined late (or were emptied) take their share.
//!
//! # Load and the moves chosen
//!
//! A node's load is the mean of its CPU and memory fractions in use: `(cpu_used / cpu + memory_used / memory) / 2`.
//! Each move takes the most loaded schedulable node `hot` and looks for one of its allocations and a
//! destination `cold` (feasible for the allocation's group, with room) such that, after the move,
//!
//! ```text
//! |load(hot') − load(cold')| < load(hot) − load(cold) − min_gain    and    load(cold') < load(hot)
//! ```
//!
//! i.e. the gap between the two narrows by more than `min_gain` and the destination does not become the new
//! hot spot. Among the candidates it takes the one leaving the smallest gap. When the hottest node offers
//! no move, the next hottest is tried. Moves are made one at a time against the usage the earlier moves
//! left, at most `max_moves` of them and at most one per job group (the others of the group keep serving
//! while the moved one starts elsewhere; the next call moves the next one).
//!
//! A destination must also keep the required placement rules (distinct_hosts, distinct_property, required
//! alloc affinities and anti-affinities), with the earlier moves of the call counted.
//!
//! Only running, healthy-or-unchecked allocations of service jobs that are not being migrated (in or out) move; batch and
//! system allocations stay. A moved allocation keeps its name, index and job version; the replacement names
//! the original in `previous_allocation`, and the original is stopped with "rebalanced to node N".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use davit_api::objects::{AllocatedResources, Allocation, ClientStatus, DesiredStatus, Node, UnixMillis};
use davit_api::spec::JobType;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::alloc::{AllocIds, moved_copy};
use crate::feasible::FeasibilityChecker;
use crate::plan::AllocStop;
use crate::rank::{self, Ask, TrackedUsage, UsageTracker};
use crate::state::ClusterState;
use crate::verify::{check_required_placement, may_break_required_rules};

/// Knobs of one [`rebalance`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceConfig {
    /// The most allocations moved in this call.
    pub max_moves: usize,
    /// How much a move must narrow the load gap between its two nodes (load fractions, 0..1).
    pub min_gain: f64,
}

impl Default for RebalanceConfig {
    fn default() -> RebalanceConfig {
        RebalanceConfig { max_moves: 1, min_gain: 0.01 }
    }
}

/// One allocation moved: `replacement` is to be placed and `stop` applied to the original.
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceMove {
    pub replacement: Allocation,
    pub stop: AllocStop,
    pub from_node_id: String,
    pub from_node_name: String,
    /// Loads of the source and destination before and after the move.
    pub from_load: (f64, f64),
    pub to_load: (f64, f64),
}

/// Picks up to `config.max_moves` moves that even out node load (see the module documentation). Pure:
/// the same state, config, seed and time give the same moves. `eval_id` is written into the replacements.
pub fn rebalance(state: &ClusterState, config: &RebalanceConfig, eval_id: &str, seed: u64, now: UnixMillis) -> Vec<RebalanceMove> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let nodes: Vec<&Arc<Node>> =
        state.nodes().filter(|node| node.is_schedulable() && node.resources.cpu > 0 && node.resources.memory > 0).collect();
    let mut usage = UsageTracker::new(state);
    let mut checkers: BTreeMap<(String, u64), FeasibilityChecker<'_>> = BTreeMap::new();
    let mut moved_groups: BTreeSet<(String, String)> = BTreeSet::new();
    let mut moves: Vec<RebalanceMove> = Vec::new();
    let mut ids = AllocIds::new(now);
    // Per job: may a move break its (or another job's) required placement rules? Then each candidate
    // destination is checked as the plan applier would, with the moves chosen before it.
    let mut required_rules: BTreeMap<String, bool> = BTreeMap::new();
    while moves.len() < config.max_moves {
        let mut by_load: Vec<(f64, &Arc<Node>)> = nodes.iter().map(|node| (load(node, usage.usage(&node.id)), *node)).collect();
        by_load.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let mut chosen: Option<Candidate<'_>> = None;
        for (position, (hot_load, hot)) in by_load.iter().enumerate() {
            for alloc in state.allocs_for_node(&hot.id).filter(|alloc| movable(state, alloc, &moved_groups)) {
                let Some(job) = state.job_version(&alloc.job_name, alloc.job_version) else { continue };
                let Some(group_position) = job.spec.groups.iter().position(|group| group.name == alloc.group) else { continue };
                let checker = checkers.entry((job.spec.id(), job.version)).or_insert_with(|| FeasibilityChecker::new(state, &job.spec));
                let hot_after = load_with(hot, usage.usage(&hot.id), -(alloc.resources.cpu as f64), -(alloc.resources.memory as f64));
                let ask = Ask::new(&job.spec.groups[group_position]);
                // The least loaded destination that is feasible and has room (a fuller one only leaves a wider gap).
                for (cold_load, cold) in by_load[position + 1..].iter().rev() {
                    if hot_load - cold_load <= config.min_gain {
                        break;
                    }
                    if checker.check(cold, group_position).is_err() || rank::fit(cold, usage.usage(&cold.id), &ask).is_err() {
                        continue;
                    }
                    let may_break =
                        *required_rules.entry(alloc.job_name.clone()).or_insert_with(|| may_break_required_rules(state, &alloc.job_name));
                    if may_break && !keeps_required_rules(state, &moves, alloc, cold, now) {
                        continue;
                    }
                    let cold_after = load_with(cold, usage.usage(&cold.id), ask.cpu as f64, ask.memory as f64);
                    let gap = (hot_after - cold_after).abs();
                    let improves = gap < hot_load - cold_load - config.min_gain && cold_after < *hot_load;
                    if improves && chosen.as_ref().is_none_or(|best| gap < best.0) {
                        chosen = Some((gap, Arc::clone(alloc), *hot, *cold, (*hot_load, hot_after), (*cold_load, cold_after)));
                    }
                    break;
                }
            }
            if chosen.is_some() {
                break;
            }
        }
        let Some((_, alloc, from, to, from_load, to_load)) = chosen else { break };
        let job = state.job_version(&alloc.job_name, alloc.job_version).expect("checked above");
        let group = job.spec.groups.iter().find(|group| group.name == alloc.group).expect("checked above");
        let ask = Ask::new(group);
        let ports = rank::assign_ports(to, usage.usage(&to.id), &ask, &mut rng);
        let resources = AllocatedResources { cpu: ask.cpu, memory: ask.memory, ports };
        usage.remove(&from.id, &alloc.resources);
        usage.add(&to.id, &resources);
        moved_groups.insert((alloc.job_name.clone(), alloc.group.clone()));
        let mut replacement = moved_copy(&alloc, ids.next(state, &mut rng), to, resources, now);
        replacement.eval_id = eval_id.to_string();
        let stop = AllocStop { alloc_id: alloc.id.clone(), description: format!("rebalanced to node {}", to.name), client_status: None };
        moves.push(RebalanceMove {
            replacement,
            stop,
            from_node_id: from.id.clone(),
            from_node_name: from.name.clone(),
            from_load,
            to_load,
        });
    }
    moves
}

/// Whether moving `alloc` to `to`, after `moves`, keeps every required placement rule (distinct_hosts,
/// distinct_property, required alloc affinities and anti-affinities), as the plan applier will check.
fn keeps_required_rules(state: &ClusterState, moves: &[RebalanceMove], alloc: &Allocation, to: &Node, now: UnixMillis) -> bool {
    let mut placed: Vec<Allocation> = moves.iter().map(|change| change.replacement.clone()).collect();
    placed.push(moved_copy(alloc, format!("{}-rebalance-candidate", alloc.id), to, alloc.resources.clone(), now));
    let mut stopped: Vec<&str> = moves.iter().map(|change| change.stop.alloc_id.as_str()).collect();
    stopped.push(&alloc.id);
    check_required_placement(state, &placed, &stopped).is_ok()
}

/// (gap left, allocation, from, to, from load before/after, to load before/after).
type Candidate<'state> = (f64, Arc<Allocation>, &'state Arc<Node>, &'state Arc<Node>, (f64, f64), (f64, f64));

fn movable(state: &ClusterState, alloc: &Allocation, moved_groups: &BTreeSet<(String, String)>) -> bool {
    alloc.desired_status == DesiredStatus::Run
        && alloc.client_status == ClientStatus::Running
        && alloc.healthy != Some(false)
        && !alloc.is_migrating_out()
        && !alloc.is_incoming_migration()
        && !moved_groups.contains(&(alloc.job_name.clone(), alloc.group.clone()))
        && state.job(&alloc.job_name).is_some_and(|job| !job.stopped && job.spec.job_type == JobType::Service)
}

fn load(node: &Node, usage: &TrackedUsage) -> f64 {
    load_with(node, usage, 0.0, 0.0)
}

/// The node's load with `cpu` millicores and `memory` MiB added (negative: removed).
fn load_with(node: &Node, usage: &TrackedUsage, cpu: f64, memory: f64) -> f64 {
    let cpu_fraction = (usage.cpu as f64 + cpu) / node.resources.cpu as f64;
    let memory_fraction = (usage.memory as f64 + memory) / node.resources.memory as f64;
    (cpu_fraction + memory_fraction) / 2.0
}
