//! Feasibility: can this node run this group at all, whatever its load? Checks run cheapest first:
//! datacenter, drivers, then job and group constraints. Readiness and eligibility are the node source's
//! business (see `generic`): nodes that are not schedulable are never evaluated.
//!
//! Drivers and constraints depend only on a node's *computed class* (datacenter, class, attributes other
//! than `unique.*`, drivers), so their answer is cached per (class, group) for one scheduler run.
//! Constraints reading node-unique values escape the cache and are checked per node, after the cached ones.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use davit_api::objects::Node;
use davit_api::spec::{DriverName, JobSpec};

use crate::constraint::CheckedConstraint;
use crate::state::ClusterState;

/// Feasibility checks of one job's groups, with the per-class cache.
pub(crate) struct FeasibilityChecker<'job> {
    /// Where the nodes' computed classes come from.
    state: &'job ClusterState,
    job: &'job JobSpec,
    job_constraints: Vec<CheckedConstraint>,
    groups: Vec<GroupChecks>,
    /// (computed class, group position) → `Err(reason)` when the class-wide checks fail.
    class_cache: BTreeMap<(u64, usize), Result<(), String>>,
}

struct GroupChecks {
    drivers: Vec<DriverName>,
    constraints: Vec<CheckedConstraint>,
}

impl<'job> FeasibilityChecker<'job> {
    pub(crate) fn new(state: &'job ClusterState, job: &'job JobSpec) -> FeasibilityChecker<'job> {
        let groups = job
            .groups
            .iter()
            .map(|group| {
                let mut drivers: Vec<DriverName> = group.tasks.iter().map(|task| task.driver).collect();
                drivers.sort();
                drivers.dedup();
                GroupChecks { drivers, constraints: group.constraints.iter().map(CheckedConstraint::new).collect() }
            })
            .collect();
        FeasibilityChecker {
            state,
            job,
            job_constraints: job.constraints.iter().map(CheckedConstraint::new).collect(),
            groups,
            class_cache: BTreeMap::new(),
        }
    }

    /// `Ok` when the group at `group_position` (in `job.groups`) may run on the node; otherwise the
    /// reason, worded for `PlacementFailure::filtered`.
    pub(crate) fn check(&mut self, node: &Node, group_position: usize) -> Result<(), String> {
        self.check_with_class(node, group_position).map(|_| ())
    }

    /// [`check`](Self::check), returning the node's computed class when it passes (so that callers can
    /// cache their own class-wide answers without hashing the node again).
    pub(crate) fn check_with_class(&mut self, node: &Node, group_position: usize) -> Result<u64, String> {
        let class = self.state.node_class(&node.id).unwrap_or_else(|| computed_class(node));
        self.check_in_class(node, class, group_position).map(|()| class)
    }

    /// [`check`](Self::check) of a node whose computed class the caller already knows (the hot path:
    /// see `ClusterState::nodes_for_placement`).
    pub(crate) fn check_in_class(&mut self, node: &Node, class: u64, group_position: usize) -> Result<(), String> {
        let key = (class, group_position);
        let class_result = match self.class_cache.get(&key) {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(reason.clone()),
            None => {
                let result = self.check_class(node, group_position);
                self.class_cache.insert(key, result.clone());
                result
            }
        };
        class_result?;
        let group = &self.groups[group_position];
        match self.job_constraints.iter().chain(&group.constraints).find(|c| c.is_node_specific && !c.is_met_by(node)) {
            Some(failed) => Err(failed.reason.clone()),
            None => Ok(()),
        }
    }

    /// The checks whose answer is the same for every node of a computed class (the datacenter is part of it).
    fn check_class(&self, node: &Node, group_position: usize) -> Result<(), String> {
        if !self.job.datacenters.contains(&node.datacenter) {
            return Err(format!("datacenter {} not in job", node.datacenter));
        }
        let group = &self.groups[group_position];
        for driver in &group.drivers {
            match node.drivers.get(driver.as_str()) {
                Some(info) if info.detected && info.healthy => {}
                Some(info) if info.detected => return Err(format!("unhealthy driver {}", driver.as_str())),
                _ => return Err(format!("missing driver {}", driver.as_str())),
            }
        }
        match self.job_constraints.iter().chain(&group.constraints).find(|c| !c.is_node_specific && !c.is_met_by(node)) {
            Some(failed) => Err(failed.reason.clone()),
            None => Ok(()),
        }
    }
}

/// A hash of everything class-wide feasibility depends on. `DefaultHasher::new()` has fixed keys, so the
/// value is the same in every run (not that it matters: it is only a cache key within one run).
pub(crate) fn computed_class(node: &Node) -> u64 {
    let mut hasher = DefaultHasher::new();
    node.datacenter.hash(&mut hasher);
    node.class.hash(&mut hasher);
    for (key, value) in node.attributes.iter().filter(|(key, _)| !key.starts_with("unique.")) {
        key.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    0xff_u8.hash(&mut hasher);
    for (name, info) in &node.drivers {
        name.hash(&mut hasher);
        info.detected.hash(&mut hasher);
        info.healthy.hash(&mut hasher);
        info.attributes.hash(&mut hasher);
    }
    hasher.finish()
}
