//! Fit and ranking: does the group fit in what is left of a node, and how good a home is it?
//!
//! A node that passed feasibility, the required placement rules (`rules`) and fit gets several scores,
//! each normalised; its **final score is the mean of the applicable ones** (as Nomad's
//! `ScoreNormalizationIterator`), and the highest final score wins (ties: the first node of the seeded
//! order).
//!
//! | score | range | applicable |
//! |---|---|---|
//! | fit (the algorithm's) | 0..1 | always |
//! | node affinity | −1..1 | the group has `affinities` |
//! | spread | −1..1 | the group has `spread` |
//! | alloc affinity | −1..1 | the group has preferred (not `required`) `alloc_affinities` / `anti_affinities` |
//! | job anti-affinity | −1..0 | the node already runs allocations of the same job and group |
//!
//! Unlike Nomad, which adds an affinity or spread score only where it is non-zero, a score that
//! applies to the group counts (possibly as 0) on every node, so all nodes of a group are compared over
//! the same number of scores; only the job anti-affinity penalty is per node (as Nomad's).
//!
//! # Fit scores (the job's `algorithm`, else `SchedulerConfig::algorithm`)
//!
//! With `free_cpu` and `free_memory` the fractions of the node left free *after* placing the
//! allocation (0 = full, 1 = empty), and `used_cpu = 1 − free_cpu`, `used_memory = 1 − free_memory`:
//!
//! ```text
//! binpack  = (20 − (10^free_cpu + 10^free_memory)) / 18        Nomad's ScoreFitBinPack
//! spread   = (10^free_cpu + 10^free_memory − 2) / 18           Nomad's ScoreFitSpread (least allocated)
//! balanced = 1 − |used_cpu − used_memory|                      kube-scheduler's BalancedResourceAllocation
//! ```
//!
//! Each power lies in 1..10. `binpack` is 1 for a node the allocation fills exactly and 0 for an empty
//! node: fuller nodes score higher, which packs work tightly and leaves whole nodes free for big
//! allocations; the exponent makes the last free fraction of a dimension count most. `spread` is its
//! mirror image (emptiest first). `balanced` is 1 when the node's CPU and memory are used in the same
//! proportion, so a memory-heavy allocation goes where CPU is the busier dimension and vice versa.
//!
//! # Node affinity
//!
//! `Σ weight of the matching affinities / Σ |weight|` over the group's affinities (Nomad's
//! `NodeAffinityIterator`). Cached per computed node class unless an affinity reads a node-unique value.
//!
//! # Spread
//!
//! Per spread attribute, a domain (attribute value) has a desired count `d`: `percent / 100 × count` for
//! a listed target, for values not listed what is left of 100% shared evenly by those among the group's
//! feasible nodes (none left: `d = 0`), or, without targets, `count / (number of values among the group's
//! feasible nodes)`. With `u` the live allocations
//! of the group in the node's domain (this plan's placements included):
//!
//! ```text
//! u + 1 ≤ d:  boost = 0.5 + 0.5 · (d − u) / d        in (0.5, 1]: the domain is below its target
//! u < d < u+1: boost = 0.5 · (d − u)                  in (0, 0.5): a fraction of an allocation is missing
//! u ≥ d:      boost = −0.5 − 0.5 · min(1, (u + 1 − d) / max(d, 1))   in [−1, −0.5): at or over target
//! no value / no desired count: boost = −1
//! spread = Σ (weight / Σ weights) · boost
//! ```
//!
//! Unlike Nomad's `(d − u − 1) / d`, a domain below its target always beats one at or over it by more
//! than any difference of fit scores (the gap is above 1 and fit scores differ by less than 1), so
//! `targets` are met exactly whenever capacity allows, whatever the count; among domains below target the
//! emptiest (relative to its target) is preferred.
//!
//! # Alloc affinity (preferred)
//!
//! With `m` the live allocations the term selects in the node's topology domain, each term adds
//! `± weight · m / (m + 1)` (+ for `alloc_affinities`, − for `anti_affinities`; 0 when the node lacks the
//! topology attribute), and the score is that sum over `Σ weight`. `m / (m + 1)` grows with every
//! neighbour (0, ½, ⅔, …), so a preferred anti-affinity spreads first and then stacks evenly.
//!
//! # Job anti-affinity
//!
//! Nomad's `JobAntiAffinityIterator`: with `c > 0` allocations of the same job and group already on the
//! node, `−min(1, (c + 1) / count)`. It spreads a group's replicas over nodes even under `binpack`.

use std::collections::BTreeSet;

use davit_api::objects::{AllocatedResources, AssignedPort, Node};
use davit_api::spec::{GroupSpec, SchedulerAlgorithm};
use rand::Rng;
use rand::rngs::SmallRng;

use crate::fxhash::FxHashMap;
use crate::state::{ClusterState, LiveUsage};

/// Node usage as this plan changes it: the snapshot's non-terminal allocations, minus those the plan
/// stops, plus those it places. Copied lazily per node from the state's live usage (a cheap clone).
///
/// Nodes are reached by their usage slot in the state (see `ClusterState::usage_slot`): the node walk of a
/// placement has it at hand ([`PlacementNode::usage_slot`](crate::state::PlacementNode)), so the hot path
/// never looks a node up by id.
pub(crate) struct UsageTracker<'state> {
    state: &'state ClusterState,
    slots: Vec<TrackedUsage>,
    /// Per usage slot of the state: index in `slots` + 1 (0: not loaded yet). Grown on first use.
    loaded: Vec<u32>,
    /// Nodes the state has no usage slot for (neither stored nor named by an allocation), by id. Only
    /// looked up, never iterated, so its order cannot leak into a plan.
    unknown: FxHashMap<String, usize>,
}

pub(crate) type TrackedUsage = LiveUsage;

impl<'state> UsageTracker<'state> {
    pub(crate) fn new(state: &'state ClusterState) -> UsageTracker<'state> {
        UsageTracker { state, slots: Vec::new(), loaded: Vec::new(), unknown: FxHashMap::default() }
    }

    pub(crate) fn usage(&mut self, node_id: &str) -> &TrackedUsage {
        let slot = self.slot(node_id);
        &self.slots[slot]
    }

    /// The usage of the node holding the state's usage slot `usage_slot`.
    pub(crate) fn usage_in(&mut self, usage_slot: u32) -> &TrackedUsage {
        let slot = self.loaded_slot(usage_slot);
        &self.slots[slot]
    }

    pub(crate) fn add(&mut self, node_id: &str, resources: &AllocatedResources) {
        let slot = self.slot(node_id);
        self.slots[slot].add(resources);
    }

    pub(crate) fn add_in(&mut self, usage_slot: u32, resources: &AllocatedResources) {
        let slot = self.loaded_slot(usage_slot);
        self.slots[slot].add(resources);
    }

    pub(crate) fn remove(&mut self, node_id: &str, resources: &AllocatedResources) {
        let slot = self.slot(node_id);
        self.slots[slot].remove(resources);
    }

    /// The node's index in `slots`, loaded from the state on first use.
    fn slot(&mut self, node_id: &str) -> usize {
        if let Some(usage_slot) = self.state.usage_slot(node_id) {
            return self.loaded_slot(usage_slot);
        }
        if let Some(slot) = self.unknown.get(node_id) {
            return *slot;
        }
        self.slots.push(TrackedUsage::default());
        self.unknown.insert(node_id.to_string(), self.slots.len() - 1);
        self.slots.len() - 1
    }

    fn loaded_slot(&mut self, usage_slot: u32) -> usize {
        let position = usage_slot as usize;
        if position >= self.loaded.len() {
            self.loaded.resize(self.state.usage_slot_count().max(position + 1), 0);
        }
        match self.loaded[position] {
            0 => {
                self.slots.push(self.state.live_usage_in(usage_slot));
                self.loaded[position] = u32::try_from(self.slots.len()).expect("fewer than 2^32 nodes");
                self.slots.len() - 1
            }
            loaded => loaded as usize - 1,
        }
    }
}

/// What one allocation of a group asks of a node.
#[derive(Default)]
pub(crate) struct Ask {
    pub(crate) cpu: u64,
    pub(crate) memory: u64,
    /// (label, static host port, `to`) for ports with `static:`.
    static_ports: Vec<(String, u16, Option<u16>)>,
    /// (label, `to`) for ports the scheduler picks.
    dynamic_ports: Vec<(String, Option<u16>)>,
}

impl Ask {
    pub(crate) fn new(group: &GroupSpec) -> Ask {
        let resources = group.total_resources();
        let mut static_ports = Vec::new();
        let mut dynamic_ports = Vec::new();
        for port in &group.network.ports {
            match port.static_port {
                Some(host_port) => static_ports.push((port.name.clone(), host_port, port.to)),
                None => dynamic_ports.push((port.name.clone(), port.to)),
            }
        }
        Ask { cpu: resources.cpu.into(), memory: resources.memory.into(), static_ports, dynamic_ports }
    }
}

/// The dimension that did not fit: a key of `PlacementFailure::exhausted`.
pub(crate) type Exhausted = &'static str;

/// A node's CPU (millicores) and memory (MiB): what fit and the fit scores read of it. The node walk
/// keeps a copy next to each node (`PlacementNode`), so checking a candidate does not read the node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capacity {
    pub(crate) cpu: u64,
    pub(crate) memory: u64,
}

impl Capacity {
    pub(crate) fn of(node: &Node) -> Capacity {
        Capacity { cpu: node.resources.cpu, memory: node.resources.memory }
    }
}

/// Checks the ask against what is left of the node and returns its bin-packing score.
/// Port *numbers* are not picked here (see [`assign_ports`]), so rejected nodes consume no randomness.
pub(crate) fn fit(node: &Node, usage: &TrackedUsage, ask: &Ask) -> Result<f64, Exhausted> {
    let capacity = Capacity::of(node);
    fits(capacity, node, usage, ask)?;
    Ok(bin_pack_score(capacity, usage.cpu + ask.cpu, usage.memory + ask.memory))
}

/// [`fit`] without the score, given the node's capacity (the node itself is read only for asked ports).
pub(crate) fn fits(capacity: Capacity, node: &Node, usage: &TrackedUsage, ask: &Ask) -> Result<(), Exhausted> {
    if usage.cpu + ask.cpu > capacity.cpu {
        return Err("cpu");
    }
    if usage.memory + ask.memory > capacity.memory {
        return Err("memory");
    }
    if !ask.static_ports.is_empty() || !ask.dynamic_ports.is_empty() {
        // No set is built here (this runs for every candidate): used ports are looked up in the usage's
        // map, reserved ports (a short list) are scanned.
        let reserved = &node.resources.reserved_ports;
        let is_blocked = |port: u16| usage.ports.contains_key(&port) || reserved.contains(&port);
        for (position, (_, host_port, _)) in ask.static_ports.iter().enumerate() {
            let asked_twice = ask.static_ports[..position].iter().any(|(_, earlier, _)| earlier == host_port);
            if asked_twice || is_blocked(*host_port) {
                return Err("ports");
            }
        }
        if !ask.dynamic_ports.is_empty() {
            let (low, high) = node.resources.port_range;
            let range_size = if low <= high { usize::from(high - low) + 1 } else { 0 };
            let in_range = |port: &u16| (low..=high).contains(port);
            let used_in_range = usage.ports.range(low..=high).count();
            let reserved_in_range = reserved
                .iter()
                .enumerate()
                .filter(|(position, port)| in_range(port) && !usage.ports.contains_key(*port) && !reserved[..*position].contains(port))
                .count();
            let static_in_range = ask.static_ports.iter().filter(|(_, port, _)| in_range(port)).count();
            if range_size < used_in_range + reserved_in_range + static_in_range + ask.dynamic_ports.len() {
                return Err("ports");
            }
        }
    }
    Ok(())
}

/// The fit score of the algorithm for an ask that fits (see the module documentation).
pub(crate) fn fit_score(algorithm: SchedulerAlgorithm, capacity: Capacity, usage: &TrackedUsage, ask: &Ask) -> f64 {
    let cpu_after = usage.cpu + ask.cpu;
    let memory_after = usage.memory + ask.memory;
    match algorithm {
        SchedulerAlgorithm::Binpack => bin_pack_score(capacity, cpu_after, memory_after),
        SchedulerAlgorithm::Spread => spread_fit_score(capacity, cpu_after, memory_after),
        SchedulerAlgorithm::Balanced => balanced_score(capacity, cpu_after, memory_after),
    }
}

fn free_fraction(used: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { (1.0 - used as f64 / total as f64).clamp(0.0, 1.0) }
}

/// Least allocated first. See the module documentation for the formula.
pub(crate) fn spread_fit_score(capacity: Capacity, cpu_after: u64, memory_after: u64) -> f64 {
    let free_cpu = free_fraction(cpu_after, capacity.cpu);
    let free_memory = free_fraction(memory_after, capacity.memory);
    ((10f64.powf(free_cpu) + 10f64.powf(free_memory) - 2.0) / 18.0).clamp(0.0, 1.0)
}

/// CPU and memory used in equal proportion. See the module documentation for the formula.
pub(crate) fn balanced_score(capacity: Capacity, cpu_after: u64, memory_after: u64) -> f64 {
    let used_cpu = 1.0 - free_fraction(cpu_after, capacity.cpu);
    let used_memory = 1.0 - free_fraction(memory_after, capacity.memory);
    1.0 - (used_cpu - used_memory).abs()
}

/// See the module documentation for the formula.
pub(crate) fn bin_pack_score(capacity: Capacity, cpu_after: u64, memory_after: u64) -> f64 {
    let free_cpu = free_fraction(cpu_after, capacity.cpu);
    let free_memory = free_fraction(memory_after, capacity.memory);
    let raw = 20.0 - (10f64.powf(free_cpu) + 10f64.powf(free_memory));
    (raw / 18.0).clamp(0.0, 1.0)
}

/// Picks host ports for an ask that [`fit`] the node: static ones as written, dynamic ones at random from
/// the node's range, avoiding reserved, used and already picked ports.
pub(crate) fn assign_ports(node: &Node, usage: &TrackedUsage, ask: &Ask, rng: &mut SmallRng) -> Vec<AssignedPort> {
    let mut blocked = blocked_ports(node, usage);
    let mut assigned = Vec::new();
    for (label, host_port, to) in &ask.static_ports {
        blocked.insert(*host_port);
        assigned.push(AssignedPort { label: label.clone(), value: *host_port, to: to.unwrap_or(*host_port) });
    }
    let (low, high) = node.resources.port_range;
    for (label, to) in &ask.dynamic_ports {
        // A few random tries find a free port quickly on a lightly used node; a scan from a random
        // starting point is the fallback that always finds one when `fit` said there is one.
        let random_pick = (0..32).map(|_| rng.random_range(low..=high)).find(|port| !blocked.contains(port));
        let host_port = random_pick.unwrap_or_else(|| {
            let start = rng.random_range(low..=high);
            (start..=high).chain(low..start).find(|port| !blocked.contains(port)).expect("fit checked that a dynamic port is free")
        });
        blocked.insert(host_port);
        assigned.push(AssignedPort { label: label.clone(), value: host_port, to: to.unwrap_or(host_port) });
    }
    assigned
}

fn blocked_ports(node: &Node, usage: &TrackedUsage) -> BTreeSet<u16> {
    node.resources.reserved_ports.iter().copied().chain(usage.ports.keys().copied()).collect()
}
