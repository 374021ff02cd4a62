//! `POST /v1/rebalance` (`davit rebalance`): the scheduler's [`davit_scheduler::rebalance`] picks a few moves
//! on a snapshot; each job's moves go to the plan applier as one plan (re-checked against the newest state,
//! as every plan is), and a completed evaluation per job records them. A running VM of a `migrate: live`
//! group is live-migrated to its move's node instead of stopped and replaced (as the drainer does).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use davit_api::http::{RebalanceMoveEntry, RebalanceRequest, RebalanceResponse};
use davit_api::objects::{EvalStatus, EvalTrigger, MigrationStatus};
use davit_api::spec::MigrateMode;
use davit_scheduler::{ClusterState, Plan, RebalanceConfig, RebalanceMove, rebalance};
use davit_store::Txn;

use super::{Failure, indexed, json_body};
use crate::liveness::new_eval;
use crate::{Shared, keys, migration, now_millis};

/// Requests that ask for more moves than this are refused: rebalancing is meant to be gradual.
const MOST_MOVES: u32 = 1000;

pub(crate) async fn rebalance_cluster(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let request: RebalanceRequest =
        if body.is_empty() { json_body(b"{}", "rebalance request")? } else { json_body(&body, "rebalance request")? };
    if request.max_moves == 0 || request.max_moves > MOST_MOVES {
        return Err(Failure::bad_request(format!(
            "max_moves must be between 1 and {MOST_MOVES} (got {}): rebalancing moves a few allocations at a time",
            request.max_moves
        )));
    }
    let snapshot = shared.view.snapshot();
    let config = RebalanceConfig { max_moves: request.max_moves as usize, ..Default::default() };
    let eval_id = crate::new_id();
    let moves = rebalance(&snapshot.cluster, &config, &eval_id, crate::worker::seed_for(&eval_id, 0), now_millis());
    if request.dry_run || moves.is_empty() {
        let entries = moves
            .iter()
            .map(|change| RebalanceMoveEntry { live_migration: migrates_live(&snapshot.cluster, &change.stop.alloc_id), ..entry(change) })
            .collect();
        return Ok(indexed(snapshot.revision, &RebalanceResponse { moves: entries, refused: 0, index: snapshot.revision }));
    }

    let mut made = Vec::new();
    let mut refused = 0;
    let mut index = snapshot.revision;
    let mut evals = Txn::default();
    // Running VMs of `migrate: live` groups move by live migration; the others in one plan (and one
    // evaluation for the record) per job.
    let (live, stopped): (Vec<&RebalanceMove>, Vec<&RebalanceMove>) =
        moves.iter().partition(|change| migrates_live(&snapshot.cluster, &change.stop.alloc_id));
    for change in live {
        match live_migrate(&shared, &snapshot.cluster, change).await? {
            Ok(started) => {
                index = index.max(started.index);
                if let Some(job) = snapshot.cluster.job(&change.replacement.job_name) {
                    let mut eval = new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, EvalTrigger::Rebalance, None);
                    eval.status = EvalStatus::Complete;
                    eval.status_description = format!(
                        "rebalance: live-migrating {} from node {} to node {}",
                        change.replacement.name, change.from_node_name, change.replacement.node_name
                    );
                    evals.success.push(keys::put(keys::eval(&eval.id), &eval));
                }
                made.push(RebalanceMoveEntry { replacement_id: started.alloc_id, live_migration: true, ..entry(change) });
            }
            Err(reason) => {
                tracing::info!(alloc = %change.replacement.name, %reason, "rebalance: cannot live-migrate; trying again next wave");
                refused += 1;
            }
        }
    }
    let mut by_job: BTreeMap<&str, Vec<&RebalanceMove>> = BTreeMap::new();
    for change in stopped {
        by_job.entry(change.replacement.job_name.as_str()).or_default().push(change);
    }
    for (job_name, changes) in by_job {
        let Some(job) = snapshot.cluster.job(job_name) else { continue };
        // Each job's replacements name the job's own `rebalance` evaluation.
        let mut eval = new_eval(job_name, job.spec.job_type, job.spec.priority, EvalTrigger::Rebalance, None);
        let mut plan = Plan::new(&eval.id, job_name, job.version, job.spec.priority);
        for change in &changes {
            let mut replacement = change.replacement.clone();
            replacement.eval_id.clone_from(&eval.id);
            plan.node_allocations.entry(replacement.node_id.clone()).or_default().push(replacement);
            plan.node_updates.entry(change.from_node_id.clone()).or_default().push(change.stop.clone());
        }
        let result = shared.applier.submit_plan(plan).await?;
        index = index.max(result.index);
        let mut descriptions = Vec::new();
        let mut job_refused = 0;
        for change in changes {
            if result.refused_nodes.contains(&change.replacement.node_id) {
                job_refused += 1;
            } else {
                descriptions.push(format!(
                    "moved {} from node {} to node {}",
                    change.replacement.name, change.from_node_name, change.replacement.node_name
                ));
                made.push(entry(change));
            }
        }
        refused += job_refused;
        eval.status_description = format!("rebalance: {}", descriptions.join(", "));
        if job_refused > 0 {
            // The plan's stops were committed, but some destinations no longer had room: a pending evaluation
            // lets the job's scheduler place those allocations again.
            eval.status = EvalStatus::Pending;
            write!(eval.status_description, "; {job_refused} destination(s) no longer had room, scheduling them again")
                .expect("writing to a String cannot fail");
        } else {
            eval.status = EvalStatus::Complete;
        }
        evals.success.push(keys::put(keys::eval(&eval.id), &eval));
    }
    if !evals.success.is_empty() {
        index = index.max(shared.store.txn(evals).await?.revision);
        shared.view.wait_for(index).await;
    }
    Ok(indexed(index, &RebalanceResponse { moves: made, refused, index }))
}

/// Whether the allocation is a running VM of a `migrate: live` group that can be live-migrated now. One
/// whose live migration failed before is stopped and replaced instead (as the drainer does), so that a
/// guest that cannot migrate does not hold rebalancing up.
fn migrates_live(cluster: &ClusterState, alloc_id: &str) -> bool {
    let Some(alloc) = cluster.alloc(alloc_id) else { return false };
    if alloc.migration.as_ref().is_some_and(|migration| migration.status == MigrationStatus::Failed) {
        return false;
    }
    let live = cluster
        .job_version(&alloc.job_name, alloc.job_version)
        .and_then(|job| job.spec.group(&alloc.group).map(|group| group.migrate == MigrateMode::Live))
        .unwrap_or(false);
    live && migration::check_migratable(cluster, alloc).is_ok()
}

/// Starts the live migration of a move's allocation to the move's destination node, or says why it
/// could not start.
async fn live_migrate(
    shared: &Shared,
    cluster: &ClusterState,
    change: &RebalanceMove,
) -> Result<Result<migration::Started, String>, Failure> {
    let (Some(source), Some(target)) = (cluster.alloc(&change.stop.alloc_id), cluster.node(&change.replacement.node_id)) else {
        return Ok(Err("the allocation or its destination node is gone".to_string()));
    };
    let seed = crate::worker::seed_for(&source.id, source.index);
    Ok(migration::start(&shared.applier, cluster, source, Some(target), seed, now_millis()).await?)
}

fn entry(change: &RebalanceMove) -> RebalanceMoveEntry {
    RebalanceMoveEntry {
        alloc_id: change.stop.alloc_id.clone(),
        name: change.replacement.name.clone(),
        job_name: change.replacement.job_name.clone(),
        replacement_id: change.replacement.id.clone(),
        from_node: change.from_node_name.clone(),
        to_node: change.replacement.node_name.clone(),
        from_load: change.from_load,
        to_load: change.to_load,
        live_migration: false,
    }
}
