//! `POST /v1/rebalance` (`davit rebalance`): the scheduler's [`davit_scheduler::rebalance`] picks a few moves
//! on a snapshot; each job's moves go to the plan applier as one plan (re-checked against the newest state,
//! as every plan is), and a completed evaluation per job records them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use davit_api::http::{RebalanceMoveEntry, RebalanceRequest, RebalanceResponse};
use davit_api::objects::{EvalStatus, EvalTrigger};
use davit_scheduler::{Plan, RebalanceConfig, RebalanceMove, rebalance};
use davit_store::Txn;

use super::{Failure, indexed, json_body};
use crate::liveness::new_eval;
use crate::{Shared, keys, now_millis};

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
    let entries: Vec<RebalanceMoveEntry> = moves.iter().map(entry).collect();
    if request.dry_run || moves.is_empty() {
        return Ok(indexed(snapshot.revision, &RebalanceResponse { moves: entries, refused: 0, index: snapshot.revision }));
    }

    // One plan (and one evaluation for the record) per job.
    let mut by_job: BTreeMap<&str, Vec<&RebalanceMove>> = BTreeMap::new();
    for change in &moves {
        by_job.entry(change.replacement.job_name.as_str()).or_default().push(change);
    }
    let mut made = Vec::new();
    let mut refused = 0;
    let mut index = snapshot.revision;
    let mut evals = Txn::default();
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
    }
}
