//! [`check_required_placement`]: the plan applier's re-check of the required placement rules against the
//! newest state.
//!
//! Workers compute plans on snapshots; two plans of different jobs computed on the same snapshot can
//! each keep a required anti-affinity, `distinct_hosts` or `distinct_property` and still break it
//! together. The applier is the only writer, so it re-checks every new allocation here (next to its fit
//! check) before committing, and sends what fails back for re-evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use davit_api::objects::{Allocation, Job, Node};
use davit_api::spec::ConstraintOperator;

use crate::rules::{NodeValue, Selector, Topology, for_each_selected, labels_of};
use crate::state::ClusterState;

/// A new allocation that would break a required placement rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{alloc_name} on node {node_id}: {reason}")]
pub struct PlacementViolation {
    pub alloc_id: String,
    /// `shop.web[2]`.
    pub alloc_name: String,
    pub node_id: String,
    /// Worded like a scheduler filter reason: "anti-affinity: allocation of web.g on the same ${attr.zone} (a)".
    pub reason: String,
}

/// False when no new allocation of the job can break a required placement rule, so that
/// [`check_required_placement`] can be skipped: the job's latest version has no `distinct_hosts` or
/// `distinct_property` constraint and no required alloc affinity or anti-affinity, and no job has a
/// required anti-affinity (which could match this job's allocations).
pub fn may_break_required_rules(state: &ClusterState, job_name: &str) -> bool {
    if state.jobs_with_required_anti_affinity().next().is_some() {
        return true;
    }
    let Some(job) = state.job(job_name) else { return false };
    let distinct = |constraints: &[davit_api::spec::Constraint]| constraints.iter().any(|constraint| constraint.operator.is_distinct());
    distinct(&job.spec.constraints)
        || job.spec.groups.iter().any(|group| {
            distinct(&group.constraints) || group.alloc_affinities.iter().chain(&group.anti_affinities).any(|term| term.required)
        })
}

/// Checks that committing `placed` (new allocations and in-place updates of one plan, or of one node of
/// it) to `state`, with the allocations whose ids are in `stopped` stopped, keeps every required
/// placement rule: `distinct_hosts`, `distinct_property`, required `anti_affinities` and
/// `alloc_affinities` of the new allocations' groups, and required anti-affinities of existing groups
/// that match a new allocation (the symmetric direction). Each new allocation is checked against the
/// state's live allocations (not terminal, not in `placed` — their new versions count instead — and not
/// in `stopped`) plus the other allocations of `placed`.
///
/// Allocations already live on the same node in the state (in-place updates) are not checked again;
/// allocations whose node, job or group is missing are left to the fit check.
///
/// Cost: for each new allocation, the allocations on its node (host topology) or of the selected jobs
/// (other topologies), times its rules; nothing at all for groups without required rules when no job
/// has a required anti-affinity. Returns the first violation in `placed` order: the applier rejects
/// that allocation's node (as for a failed fit) and may check the rest again.
pub fn check_required_placement(state: &ClusterState, placed: &[Allocation], stopped: &[&str]) -> Result<(), PlacementViolation> {
    let anti_affinity_jobs: Vec<&Arc<Job>> = state.jobs_with_required_anti_affinity().collect();
    let mut excluded: BTreeSet<&str> = stopped.iter().copied().collect();
    excluded.extend(placed.iter().map(|alloc| alloc.id.as_str()));
    for (index, alloc) in placed.iter().enumerate() {
        if alloc.is_terminal() || state.alloc(&alloc.id).is_some_and(|old| !old.is_terminal() && old.node_id == alloc.node_id) {
            continue;
        }
        let Some(node) = state.node(&alloc.node_id) else { continue };
        let Some(job) = state.job(&alloc.job_name) else { continue };
        let Some(group) = job.spec.group(&alloc.group) else { continue };
        let view = View { state, placed, index, excluded: &excluded };
        let violation = |reason: String| PlacementViolation {
            alloc_id: alloc.id.clone(),
            alloc_name: alloc.name.clone(),
            node_id: alloc.node_id.clone(),
            reason,
        };

        let distinct = job
            .spec
            .constraints
            .iter()
            .map(|constraint| (constraint, Selector::job(&job.spec.id())))
            .chain(group.constraints.iter().map(|constraint| (constraint, Selector::group(&job.spec.id(), &group.name))));
        for (constraint, selector) in distinct {
            match constraint.operator {
                ConstraintOperator::DistinctHosts
                    if matches!(constraint.value.trim(), "" | "true") && view.count(&selector, &Topology::node(), node) > 0 =>
                {
                    return Err(violation(format!("distinct_hosts: allocation of {} on the node", selector.describe())));
                }
                ConstraintOperator::DistinctProperty => {
                    let limit = constraint.value.trim().parse::<u32>().unwrap_or(1).max(1);
                    let topology = Topology::parse(Some(&constraint.attribute));
                    let Some(domain) = topology.value.of(node) else {
                        return Err(violation(format!("distinct_property {}: attribute missing", topology.text)));
                    };
                    let count = view.count(&selector, &topology, node);
                    if count >= limit {
                        return Err(violation(format!(
                            "distinct_property {}: {domain} already has {count} of {} (limit {limit})",
                            topology.text,
                            selector.describe()
                        )));
                    }
                }
                _ => {}
            }
        }

        for term in group.anti_affinities.iter().filter(|term| term.required) {
            let selector = Selector::of_term(term, &job.spec.id());
            let topology = Topology::parse(term.topology.as_deref());
            if let Some(domain) = topology.value.of(node)
                && view.count(&selector, &topology, node) > 0
            {
                let reason = format!("anti-affinity: allocation of {} on {}", selector.describe(), topology.describe(domain));
                return Err(violation(reason));
            }
        }
        for term in group.alloc_affinities.iter().filter(|term| term.required) {
            let selector = Selector::of_term(term, &job.spec.id());
            let topology = Topology::parse(term.topology.as_deref());
            let bootstrap = selector.matches(&job.spec.id(), &group.name, &group.labels);
            if bootstrap && view.total(&selector) == 0 {
                continue;
            }
            let Some(domain) = topology.value.of(node) else {
                return Err(violation(format!("alloc affinity: {} missing", topology.text)));
            };
            if view.count(&selector, &topology, node) == 0 {
                let reason = format!("alloc affinity: no allocation of {} on {}", selector.describe(), topology.describe(domain));
                return Err(violation(reason));
            }
        }

        for other in &anti_affinity_jobs {
            for other_group in &other.spec.groups {
                if other.spec.id() == job.spec.id() && other_group.name == group.name {
                    continue;
                }
                for term in other_group.anti_affinities.iter().filter(|term| term.required) {
                    if !Selector::of_term(term, &other.spec.id()).matches(&job.spec.id(), &group.name, &group.labels) {
                        continue;
                    }
                    let owner = Selector::group(&other.spec.id(), &other_group.name);
                    let topology = Topology::parse(term.topology.as_deref());
                    if let Some(domain) = topology.value.of(node)
                        && view.count(&owner, &topology, node) > 0
                    {
                        let reason = format!("anti-affinity of {}: it runs on {}", owner.describe(), topology.describe(domain));
                        return Err(violation(reason));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The live allocations as they would be after the commit, seen from `placed[index]`.
struct View<'a> {
    state: &'a ClusterState,
    placed: &'a [Allocation],
    index: usize,
    excluded: &'a BTreeSet<&'a str>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl View<'_> {
    fn selects(&self, selector: &Selector, alloc: &Allocation) -> bool {
        let labels = labels_of(self.state, &alloc.job_name, &alloc.group).unwrap_or(&NO_LABELS);
        selector.matches(&alloc.job_name, &alloc.group, labels)
    }

    fn domain_of<'n>(&'n self, topology: &Topology, alloc: &Allocation) -> Option<&'n str> {
        let node: &'n Node = self.state.node(&alloc.node_id)?;
        topology.value.of(node)
    }

    fn other_placed(&self) -> impl Iterator<Item = &Allocation> + '_ {
        self.placed.iter().enumerate().filter(|(position, alloc)| *position != self.index && !alloc.is_terminal()).map(|(_, alloc)| alloc)
    }

    /// Live allocations the selector matches in the node's domain.
    fn count(&self, selector: &Selector, topology: &Topology, node: &Node) -> u32 {
        let Some(domain) = topology.value.of(node) else { return 0 };
        let mut count = 0;
        if topology.value == NodeValue::Id {
            for alloc in self.state.allocs_for_node(&node.id) {
                if !alloc.is_terminal() && !self.excluded.contains(alloc.id.as_str()) && self.selects(selector, alloc) {
                    count += 1;
                }
            }
        } else {
            let skip = |alloc: &Allocation| self.excluded.contains(alloc.id.as_str());
            for_each_selected(self.state, selector, &skip, &mut |alloc| {
                if self.domain_of(topology, alloc) == Some(domain) {
                    count += 1;
                }
            });
        }
        for alloc in self.other_placed() {
            if self.domain_of(topology, alloc) == Some(domain) && self.selects(selector, alloc) {
                count += 1;
            }
        }
        count
    }

    /// Live allocations the selector matches anywhere.
    fn total(&self, selector: &Selector) -> u32 {
        let mut count = 0;
        let skip = |alloc: &Allocation| self.excluded.contains(alloc.id.as_str());
        for_each_selected(self.state, selector, &skip, &mut |_| count += 1);
        count + self.other_placed().filter(|alloc| self.selects(selector, alloc)).count() as u32
    }
}
