//! Preemption: when a placement of a job with priority P fits no node, evict allocations of jobs with
//! priority ≤ P − [`PREEMPTION_PRIORITY_DELTA`] from one feasible node so that it fits there. Learnt from
//! Nomad's `scheduler/preemption.go`, written afresh and simplified.
//!
//! # Candidates
//!
//! On a node: the allocations that are not terminal (already stopping or finished ones hold nothing), not of
//! the placing job (a job never preempts itself), not already preempted by this plan, not taking part in
//! a live migration under way, whose job (its latest version: raising a job's priority protects its
//! running allocations at once) has a priority at most P − 10. Allocations of jobs that are gone are left
//! alone (the scheduler of that job stops them anyway).
//!
//! # The set on one node
//!
//! 1. Every candidate holding a static host port the group asks for is taken (if a port is held by
//!    anything else, or reserved by the node, the node cannot be freed).
//! 2. Greedy, while the ask does not fit in what is left (usage as this plan changed it, minus the set):
//!    among the candidates that reduce a missing dimension (cpu or memory still short; or, when only
//!    ports are short, candidates holding ports in the node's range), take one of the **lowest priority**;
//!    among those the one whose size is **closest to what is still missing** (Nomad's
//!    `basicResourceDistance`: `sqrt(Σ ((missing − alloc) / missing)²)` over the short dimensions; for
//!    ports, the one holding most ports), then the lowest allocation id. No such candidate: the node
//!    cannot be freed.
//! 3. Pruning: members are tried highest priority first, then largest first, and dropped when the ask
//!    still fits without them (the greedy may take a small low-priority allocation that a larger one
//!    taken later made useless).
//!
//! # The node
//!
//! Among the feasible nodes whose set exists, the cheapest set wins, compared by (its highest priority,
//! its number of allocations, its size as the sum of per-mille shares of the node's cpu and memory);
//! ties go to the node that comes first in the scheduler's seeded node order.
//!
//! Pure, like the rest of the crate: candidates come from the snapshot and the plan's [`UsageTracker`].

use std::collections::BTreeSet;
use std::sync::Arc;

use davit_api::objects::{Allocation, Job, Node};
use davit_api::spec::GroupSpec;

use crate::feasible::FeasibilityChecker;
use crate::plan::{AllocStop, PREEMPTION_PRIORITY_DELTA};
use crate::rank::{self, Ask, TrackedUsage, UsageTracker};
use crate::state::ClusterState;

/// Finds preemptions for one job's placements and remembers what this plan already preempted.
pub(crate) struct Preemptor<'a> {
    state: &'a ClusterState,
    /// The preempting job's id.
    job_name: String,
    priority: u8,
    preempted: BTreeSet<String>,
}

/// The allocations to evict from `node` so that the placement fits there.
pub(crate) struct Eviction<'a> {
    pub(crate) node: &'a Arc<Node>,
    pub(crate) victims: Vec<Arc<Allocation>>,
}

/// How costly an eviction is; lower is cheaper. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    max_priority: u8,
    count: usize,
    size_permille: u64,
}

struct Candidate {
    alloc: Arc<Allocation>,
    priority: u8,
}

impl<'a> Preemptor<'a> {
    pub(crate) fn new(state: &'a ClusterState, job: &'a Job) -> Preemptor<'a> {
        Preemptor { state, job_name: job.spec.id(), priority: job.spec.priority, preempted: BTreeSet::new() }
    }

    /// The cheapest eviction on one of `nodes` (infeasible ones are skipped) that makes `ask` fit.
    pub(crate) fn find(
        &self,
        nodes: &[&'a Arc<Node>],
        feasibility: &mut FeasibilityChecker<'_>,
        group_position: usize,
        group: &GroupSpec,
        ask: &Ask,
        usage: &mut UsageTracker<'_>,
    ) -> Option<Eviction<'a>> {
        let mut best: Option<(Cost, Eviction<'a>)> = None;
        for &node in nodes {
            if feasibility.check(node, group_position).is_err() {
                continue;
            }
            let current = usage.usage(&node.id);
            let Some(victims) = self.on_node(node, current, group, ask) else { continue };
            let cost = cost(node, &victims);
            if best.as_ref().is_none_or(|(best_cost, _)| cost < *best_cost) {
                best = Some((cost, Eviction { node, victims: victims.into_iter().map(|candidate| candidate.alloc).collect() }));
            }
        }
        best.map(|(_, eviction)| eviction)
    }

    /// Takes the eviction into account: its victims free their resources in `usage` and are no
    /// candidates any more.
    pub(crate) fn evict(&mut self, usage: &mut UsageTracker<'_>, victims: &[Arc<Allocation>]) {
        for victim in victims {
            usage.remove(&victim.node_id, &victim.resources);
            self.preempted.insert(victim.id.clone());
        }
    }

    /// The plan's stop of a victim, naming the allocation that preempts it.
    pub(crate) fn stop(&self, victim: &Allocation, by_alloc_id: &str) -> AllocStop {
        AllocStop {
            alloc_id: victim.id.clone(),
            description: format!("preempted by allocation {by_alloc_id} of job {} (priority {})", self.job_name, self.priority),
            client_status: None,
        }
    }

    fn candidates(&self, node: &Node) -> Vec<Candidate> {
        let Some(max_priority) = self.priority.checked_sub(PREEMPTION_PRIORITY_DELTA) else { return Vec::new() };
        self.state
            .allocs_for_node(&node.id)
            .filter(|alloc| !alloc.is_terminal() && alloc.job_name != self.job_name && !self.preempted.contains(&alloc.id))
            .filter(|alloc| alloc.migration.as_ref().is_none_or(|migration| migration.status.is_done()))
            .filter_map(|alloc| {
                let priority = self.state.job(&alloc.job_name)?.spec.priority;
                (priority <= max_priority).then(|| Candidate { alloc: Arc::clone(alloc), priority })
            })
            .collect()
    }

    /// The set of candidates on `node` to evict (see the module documentation), or `None`.
    fn on_node(&self, node: &Node, current: &TrackedUsage, group: &GroupSpec, ask: &Ask) -> Option<Vec<Candidate>> {
        let mut remaining = self.candidates(node);
        if remaining.is_empty() {
            return None;
        }
        remaining.sort_by(|a, b| a.alloc.id.cmp(&b.alloc.id));
        let base = copy(current);
        let mut chosen: Vec<Candidate> = Vec::new();

        // 1. Holders of the static ports asked for.
        for host_port in group.network.ports.iter().filter_map(|port| port.static_port) {
            if node.resources.reserved_ports.contains(&host_port) {
                return None;
            }
            let holders = base.ports.get(&host_port).copied().unwrap_or(0);
            let preemptible: Vec<usize> = remaining
                .iter()
                .enumerate()
                .filter(|(_, candidate)| candidate.alloc.resources.ports.iter().any(|port| port.value == host_port))
                .map(|(position, _)| position)
                .collect();
            if (preemptible.len() as u32) < holders {
                return None;
            }
            for position in preemptible.into_iter().rev() {
                chosen.push(remaining.remove(position));
            }
        }

        // 2. Greedy, lowest priority first, closest in size to what is missing.
        loop {
            let left = without(&base, &chosen);
            if rank::fit(node, &left, ask).is_ok() {
                break;
            }
            let missing_cpu = (left.cpu + ask.cpu).saturating_sub(node.resources.cpu);
            let missing_memory = (left.memory + ask.memory).saturating_sub(node.resources.memory);
            let (low, high) = node.resources.port_range;
            let ports_in_range =
                |alloc: &Allocation| alloc.resources.ports.iter().filter(|port| (low..=high).contains(&port.value)).count();
            let useful = |candidate: &&Candidate| {
                let alloc = &candidate.alloc;
                if missing_cpu == 0 && missing_memory == 0 {
                    ports_in_range(alloc) > 0
                } else {
                    (missing_cpu > 0 && alloc.resources.cpu > 0) || (missing_memory > 0 && alloc.resources.memory > 0)
                }
            };
            let lowest = remaining.iter().filter(useful).map(|candidate| candidate.priority).min()?;
            let distance = |alloc: &Allocation| {
                if missing_cpu == 0 && missing_memory == 0 {
                    return -(ports_in_range(alloc) as f64);
                }
                let coordinate = |missing: u64, freed: u64| {
                    if missing == 0 { 0.0 } else { (missing as f64 - freed as f64) / missing as f64 }
                };
                let cpu = coordinate(missing_cpu, alloc.resources.cpu);
                let memory = coordinate(missing_memory, alloc.resources.memory);
                (cpu * cpu + memory * memory).sqrt()
            };
            let (position, _) = remaining
                .iter()
                .enumerate()
                .filter(|(_, candidate)| candidate.priority == lowest && useful(candidate))
                .min_by(|(_, a), (_, b)| distance(&a.alloc).total_cmp(&distance(&b.alloc)).then_with(|| a.alloc.id.cmp(&b.alloc.id)))?;
            chosen.push(remaining.remove(position));
        }

        // 3. Drop members the ask fits without.
        chosen.sort_by(|a, b| {
            (b.priority, b.alloc.resources.cpu + b.alloc.resources.memory, &a.alloc.id).cmp(&(
                a.priority,
                a.alloc.resources.cpu + a.alloc.resources.memory,
                &b.alloc.id,
            ))
        });
        let mut position = 0;
        while position < chosen.len() {
            let member = chosen.remove(position);
            if rank::fit(node, &without(&base, &chosen), ask).is_err() {
                chosen.insert(position, member);
                position += 1;
            }
        }
        chosen.sort_by(|a, b| a.alloc.id.cmp(&b.alloc.id));
        Some(chosen)
    }
}

fn cost(node: &Node, victims: &[Candidate]) -> Cost {
    let share = |used: u64, total: u64| used.saturating_mul(1000).checked_div(total).unwrap_or(0);
    Cost {
        max_priority: victims.iter().map(|victim| victim.priority).max().unwrap_or(0),
        count: victims.len(),
        size_permille: victims
            .iter()
            .map(|victim| {
                share(victim.alloc.resources.cpu, node.resources.cpu) + share(victim.alloc.resources.memory, node.resources.memory)
            })
            .sum(),
    }
}

fn copy(usage: &TrackedUsage) -> TrackedUsage {
    TrackedUsage { cpu: usage.cpu, memory: usage.memory, ports: usage.ports.clone() }
}

/// `usage` without what `evicted` holds.
fn without(usage: &TrackedUsage, evicted: &[Candidate]) -> TrackedUsage {
    let mut left = copy(usage);
    for candidate in evicted {
        let resources = &candidate.alloc.resources;
        left.cpu = left.cpu.saturating_sub(resources.cpu);
        left.memory = left.memory.saturating_sub(resources.memory);
        for port in &resources.ports {
            if let Some(count) = left.ports.get_mut(&port.value) {
                *count -= 1;
                if *count == 0 {
                    left.ports.remove(&port.value);
                }
            }
        }
    }
    left
}
