//! Live migration requests: whether an allocation can be live-migrated, and its destination.
//!
//! `POST /v1/allocation/{id}/migrate`, the drainer and rebalancing (groups with `migrate: live`) come here: the
//! pure [`destination`] checks the source (running, every task a `vm`, not already migrating), places the
//! destination with [`davit_scheduler::place_migration`], and the plan applier commits it
//! ([`Applier::start_migration`](crate::applier::Applier::start_migration)) after checking the newest
//! state again. The rest of the protocol runs through the agents' status updates (see
//! [`advance_migration`](crate::applier::advance_migration) and ARCHITECTURE.md, "Live migration").

use davit_api::objects::{Allocation, ClientStatus, Index, Node, UnixMillis};
use davit_api::spec::DriverName;
use davit_scheduler::{ClusterState, MigrationPlacementError, place_migration};
use davit_store::StoreError;

use crate::applier::Applier;

/// A live migration the applier committed: its destination allocation, the node it is on, and the index.
pub struct Started {
    pub alloc_id: String,
    pub node_name: String,
    pub index: Index,
}

/// Places the destination of `source` (on `target`, or the best other node) and has the applier commit
/// it; `Ok(Err(reason))` when the allocation cannot move or the newest state refuses it.
pub async fn start(
    applier: &Applier,
    cluster: &ClusterState,
    source: &Allocation,
    target: Option<&Node>,
    seed: u64,
    now: UnixMillis,
) -> Result<Result<Started, String>, StoreError> {
    let destination = match destination(cluster, source, target, seed, now) {
        Ok(destination) => destination,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let (alloc_id, node_name) = (destination.id.clone(), destination.node_name.clone());
    Ok(applier.start_migration(destination, now).await?.map(|index| Started { alloc_id, node_name, index }))
}

/// Why an allocation cannot be live-migrated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// The allocation itself cannot move (not running, not a VM, already moving): a bad request.
    #[error("{0}")]
    NotMigratable(String),
    /// No destination: the same node, or no node with room (a conflict with the cluster's state).
    #[error(transparent)]
    Placement(#[from] MigrationPlacementError),
}

/// The destination allocation for live-migrating `source` (to `target`, or the best other node).
pub fn destination(
    cluster: &ClusterState,
    source: &Allocation,
    target: Option<&Node>,
    seed: u64,
    now: UnixMillis,
) -> Result<Allocation, MigrateError> {
    check_migratable(cluster, source).map_err(MigrateError::NotMigratable)?;
    Ok(place_migration(cluster, source, target, seed, now)?)
}

/// Whether `source` can be live-migrated at all, and if not, why (with what to do instead).
pub fn check_migratable(cluster: &ClusterState, source: &Allocation) -> Result<(), String> {
    if source.is_terminal() || source.client_status != ClientStatus::Running {
        let status = if source.is_terminal() && !source.client_status.is_terminal() {
            "stopping".to_string()
        } else {
            format!("{:?}", source.client_status).to_lowercase()
        };
        return Err(format!("allocation {} is {status}, not running; only a running VM can be live-migrated", source.id));
    }
    if source.is_migrating_out() {
        return Err(format!("allocation {} is already being migrated", source.id));
    }
    if source.is_incoming_migration() {
        return Err(format!("allocation {} is the destination of a migration that has not completed", source.id));
    }
    let job = cluster.job_version(&source.job_name, source.job_version);
    let Some(group) = job.as_ref().and_then(|job| job.spec.group(&source.group)) else {
        return Err(format!("job {} version {} of allocation {} is gone", source.job_name, source.job_version, source.id));
    };
    if let Some(task) = group.tasks.iter().find(|task| task.driver != DriverName::Vm) {
        return Err(format!(
            "task {} of allocation {} uses the {} driver; only vm tasks can be live-migrated (use `davit node drain` or `job` commands to move it)",
            task.name,
            source.id,
            task.driver.as_str()
        ));
    }
    Ok(())
}
