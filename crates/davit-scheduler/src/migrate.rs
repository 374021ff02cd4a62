//! Placement of a live migration's destination: the same allocation (job version, group, index) on
//! another node, with that node's own host ports. Pure, like the rest of the scheduler.
//!
//! The destination goes through the same feasibility checks (readiness, datacenter, drivers,
//! constraints) and fit (cpu, memory, ports) as any placement; the source's node is never a candidate.
//! With a named target only that node is considered, and the answer says why it cannot take it.

use std::collections::BTreeMap;
use std::sync::Arc;

use davit_api::objects::{
    AllocatedResources, Allocation, Job, Migration, MigrationRole, MigrationStatus, Node, PlacementFailure, UnixMillis,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use crate::alloc::{AllocIds, moved_copy};
use crate::feasible::FeasibilityChecker;
use crate::rank::{self, Ask, UsageTracker};
use crate::state::ClusterState;

/// Why no destination could be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationPlacementError {
    #[error("allocation {alloc} already runs on node {node}; pick another node")]
    SameNode { alloc: String, node: String },
    #[error("node {node} cannot take allocation {alloc}: {reason}")]
    TargetUnfit { alloc: String, node: String, reason: String },
    #[error("no other ready node can take allocation {alloc}: {}", .failure.summary())]
    NoNode { alloc: String, failure: PlacementFailure },
    #[error("job {job} version {version} of allocation {alloc} is gone")]
    JobVersionGone { alloc: String, job: String, version: u64 },
}

/// The destination allocation for migrating `source` to `target` (or, with `None`, to the best other
/// schedulable node), as a new pending allocation whose `migration` names the source. `source` must be
/// a live allocation of a job version in `state`.
pub fn place_migration(
    state: &ClusterState,
    source: &Allocation,
    target: Option<&Node>,
    seed: u64,
    now: UnixMillis,
) -> Result<Allocation, MigrationPlacementError> {
    let job: &Job = state.job_version(&source.job_name, source.job_version).map(|job| &**job).ok_or_else(|| {
        MigrationPlacementError::JobVersionGone { alloc: source.id.clone(), job: source.job_name.clone(), version: source.job_version }
    })?;
    let Some(group_position) = job.spec.groups.iter().position(|group| group.name == source.group) else {
        return Err(MigrationPlacementError::JobVersionGone {
            alloc: source.id.clone(),
            job: source.job_name.clone(),
            version: source.job_version,
        });
    };
    let ask = Ask::new(&job.spec.groups[group_position]);
    let mut feasibility = FeasibilityChecker::new(state, &job.spec);
    let mut usage = UsageTracker::new(state);
    let mut rng = SmallRng::seed_from_u64(seed);

    let node: &Node = match target {
        Some(node) => {
            if node.id == source.node_id {
                return Err(MigrationPlacementError::SameNode { alloc: source.id.clone(), node: node.name.clone() });
            }
            let unfit = |reason: String| MigrationPlacementError::TargetUnfit { alloc: source.id.clone(), node: node.name.clone(), reason };
            if !node.is_schedulable() {
                return Err(unfit(format!("it is {:?} and {:?}", node.status, node.eligibility).to_lowercase()));
            }
            feasibility.check(node, group_position).map_err(unfit)?;
            rank::fit(node, usage.usage(&node.id), &ask).map_err(|dimension| unfit(format!("{dimension} exhausted")))?;
            node
        }
        None => {
            let mut nodes: Vec<&Arc<Node>> = state.nodes().filter(|node| node.is_schedulable() && node.id != source.node_id).collect();
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            nodes.shuffle(&mut rng);
            let mut failure = PlacementFailure::default();
            let mut best: Option<(f64, &Arc<Node>)> = None;
            for node in nodes {
                failure.nodes_evaluated += 1;
                if let Err(reason) = feasibility.check(node, group_position) {
                    *failure.filtered.entry(reason).or_default() += 1;
                    continue;
                }
                match rank::fit(node, usage.usage(&node.id), &ask) {
                    Err(dimension) => *failure.exhausted.entry(dimension.to_string()).or_default() += 1,
                    Ok(score) if best.is_none_or(|(best_score, _)| score > best_score) => best = Some((score, node)),
                    Ok(_) => {}
                }
            }
            match best {
                Some((_, node)) => node,
                None => {
                    failure.missing = 1;
                    return Err(MigrationPlacementError::NoNode { alloc: source.id.clone(), failure });
                }
            }
        }
    };

    let ports = rank::assign_ports(node, usage.usage(&node.id), &ask, &mut rng);
    let id = AllocIds::new(now).next(state, &mut rng);
    let mut destination = moved_copy(source, id, node, AllocatedResources { cpu: ask.cpu, memory: ask.memory, ports }, now);
    destination.migration = Some(Box::new(Migration {
        role: MigrationRole::Destination,
        peer_alloc_id: source.id.clone(),
        peer_node_id: source.node_id.clone(),
        status: MigrationStatus::Starting,
        listen_addrs: BTreeMap::new(),
        description: format!("migrating in from node {}", source.node_name),
        report: None,
        started_at: now,
    }));
    Ok(destination)
}
