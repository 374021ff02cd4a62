//! The plan applier: the only writer of allocations.
//!
//! It takes plans from scheduler workers and status updates from agents, one at a time, against the
//! newest state: a node's part of a plan is committed only if the node still exists, is schedulable
//! (for new placements) and still fits every allocation's CPU, memory and ports; the rest is refused
//! and the worker schedules it again on a fresh snapshot (optimistic concurrency, as in Nomad).
//! It also commits the drainer's stops (with their evaluations) and agents' status updates.

use std::collections::HashSet;
use std::sync::Arc;

use davit_api::http::AllocStatusUpdate;
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, EvalTrigger, Evaluation, Index};
use davit_scheduler::{AllocStop, Plan};
use davit_store::{Store, StoreError, Txn};
use tokio::sync::{mpsc, oneshot};

use crate::keys;
use crate::metrics::Metrics;
use crate::view::{Snapshot, View};

/// What happened to a submitted plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanResult {
    /// Store revision of the commit (0 when nothing was written).
    pub index: Index,
    /// Nodes whose placements were refused because they no longer fit or are gone.
    pub refused_nodes: Vec<String>,
    pub placed: usize,
}

enum Request {
    Plan(Plan, oneshot::Sender<Result<PlanResult, StoreError>>),
    ClientUpdate(String, Vec<AllocStatusUpdate>, u64, oneshot::Sender<Result<Index, StoreError>>),
    Stop(Vec<AllocStop>, Vec<Evaluation>, u64, oneshot::Sender<Result<Index, StoreError>>),
}

/// A handle to send work to the applier task.
#[derive(Clone)]
pub struct Applier {
    requests: mpsc::Sender<Request>,
}

impl Applier {
    pub fn start(store: Arc<dyn Store>, view: Arc<View>, metrics: Arc<Metrics>) -> Applier {
        let (requests, receiver) = mpsc::channel(1024);
        tokio::spawn(run(store, view, metrics, receiver));
        Applier { requests }
    }

    pub async fn submit_plan(&self, plan: Plan) -> Result<PlanResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Plan(plan, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Merges client-reported status into allocations of `node_id`. Unknown allocations are skipped.
    pub async fn client_update(&self, node_id: String, updates: Vec<AllocStatusUpdate>, now: u64) -> Result<Index, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::ClientUpdate(node_id, updates, now, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops allocations (the drainer's migrations) and stores `evals` in the same transaction, so the
    /// scheduler places replacements. Allocations already terminal or gone are skipped; when none is
    /// left nothing is written (index 0).
    pub async fn stop_allocs(&self, stops: Vec<AllocStop>, evals: Vec<Evaluation>, now: u64) -> Result<Index, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Stop(stops, evals, now, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(store: Arc<dyn Store>, view: Arc<View>, metrics: Arc<Metrics>, mut receiver: mpsc::Receiver<Request>) {
    let mut last_commit: Index = 0;
    while let Some(request) = receiver.recv().await {
        // Check against a view that includes our own previous commit, or we could over-commit a node.
        view.wait_for(last_commit).await;
        let snapshot = view.snapshot();
        match request {
            Request::Plan(plan, reply) => {
                let started = std::time::Instant::now();
                let (txn, mut result) = check_plan(&snapshot, &plan, crate::now_millis());
                let outcome = commit(&store, txn).await.map(|index| {
                    result.index = index;
                    result
                });
                if let Ok(result) = &outcome {
                    last_commit = last_commit.max(result.index);
                    metrics.plan_applied(started.elapsed(), result.placed);
                }
                let _ = reply.send(outcome);
            }
            Request::ClientUpdate(node_id, updates, now, reply) => {
                let txn = merge_client_updates(&snapshot, &node_id, updates, now);
                let outcome = commit(&store, txn).await;
                if let Ok(index) = outcome {
                    last_commit = last_commit.max(index);
                }
                let _ = reply.send(outcome);
            }
            Request::Stop(stops, evals, now, reply) => {
                let txn = stop_allocs(&snapshot, &stops, evals, now);
                let outcome = commit(&store, txn).await;
                if let Ok(index) = outcome {
                    last_commit = last_commit.max(index);
                }
                let _ = reply.send(outcome);
            }
        }
    }
}

fn stop_allocs(snapshot: &Snapshot, stops: &[AllocStop], evals: Vec<Evaluation>, now: u64) -> Txn {
    let mut txn = Txn::default();
    for stop in stops {
        let Some(existing) = snapshot.cluster.alloc(&stop.alloc_id) else { continue };
        if existing.is_terminal() {
            continue;
        }
        let alloc = stopped(existing, stop, now);
        txn.success.push(keys::put(keys::alloc(&alloc.id), &alloc));
    }
    if !txn.success.is_empty() {
        for eval in evals {
            txn.success.push(keys::put(keys::eval(&eval.id), &eval));
        }
    }
    txn
}

/// The allocation with the stop applied: desired `stop`, and the client status if the stop sets one.
fn stopped(existing: &Allocation, stop: &AllocStop, now: u64) -> Allocation {
    let mut alloc = existing.clone();
    alloc.desired_status = DesiredStatus::Stop;
    alloc.desired_description = stop.description.clone();
    if let Some(client_status) = stop.client_status {
        alloc.client_status = client_status;
        alloc.client_description = stop.description.clone();
    }
    alloc.modify_time = now;
    alloc
}

async fn commit(store: &Arc<dyn Store>, txn: Txn) -> Result<Index, StoreError> {
    if txn.success.is_empty() {
        return Ok(0);
    }
    Ok(store.txn(txn).await?.revision)
}

/// Builds the transaction for the part of `plan` that still fits.
pub fn check_plan(snapshot: &Snapshot, plan: &Plan, now: u64) -> (Txn, PlanResult) {
    let mut txn = Txn::default();
    let mut result = PlanResult::default();
    for (node_id, stops) in &plan.node_updates {
        for stop in stops {
            let Some(existing) = snapshot.cluster.alloc(&stop.alloc_id) else { continue };
            let alloc = stopped(existing, stop, now);
            debug_assert_eq!(&alloc.node_id, node_id);
            txn.success.push(keys::put(keys::alloc(&alloc.id), &alloc));
        }
    }
    for (node_id, allocs) in &plan.node_allocations {
        if node_fits(snapshot, plan, node_id, allocs) {
            for alloc in allocs {
                if snapshot.cluster.alloc(&alloc.id).is_none() {
                    result.placed += 1;
                }
                txn.success.push(keys::put(keys::alloc(&alloc.id), alloc));
            }
        } else {
            result.refused_nodes.push(node_id.to_string());
        }
    }
    (txn, result)
}

/// Whether `node_id` can hold its current allocations, minus those the plan stops, with `incoming`.
fn node_fits(snapshot: &Snapshot, plan: &Plan, node_id: &str, incoming: &[Allocation]) -> bool {
    let Some(node) = snapshot.cluster.node(node_id) else { return false };
    let incoming_ids: HashSet<&str> = incoming.iter().map(|alloc| alloc.id.as_str()).collect();
    let has_new = incoming.iter().any(|alloc| snapshot.cluster.alloc(&alloc.id).is_none());
    if has_new && !node.is_schedulable() {
        return false;
    }
    let stopped: HashSet<&str> =
        plan.node_updates.get(node_id).map(|stops| stops.iter().map(|stop| stop.alloc_id.as_str()).collect()).unwrap_or_default();
    let remaining = snapshot
        .cluster
        .allocs_for_node(node_id)
        .map(|alloc| &**alloc)
        .filter(|alloc| !alloc.is_terminal() && !stopped.contains(alloc.id.as_str()) && !incoming_ids.contains(alloc.id.as_str()));
    let (mut cpu, mut memory) = (0u64, 0u64);
    let mut ports: HashSet<u16> = node.resources.reserved_ports.iter().copied().collect();
    for alloc in remaining.chain(incoming.iter().filter(|alloc| !alloc.is_terminal())) {
        cpu += alloc.resources.cpu;
        memory += alloc.resources.memory;
        for port in &alloc.resources.ports {
            if !ports.insert(port.value) {
                return false;
            }
        }
    }
    cpu <= node.resources.cpu && memory <= node.resources.memory
}

fn merge_client_updates(snapshot: &Snapshot, node_id: &str, updates: Vec<AllocStatusUpdate>, now: u64) -> Txn {
    let mut txn = Txn::default();
    let mut failure_evals: HashSet<String> = HashSet::new();
    for update in updates {
        let Some(existing) = snapshot.cluster.alloc(&update.id) else { continue };
        if existing.node_id != node_id {
            tracing::warn!(alloc = %update.id, node_id, "ignoring status update for an allocation of another node");
            continue;
        }
        if existing.client_status == update.client_status
            && existing.client_description == update.client_description
            && existing.task_states == update.task_states
            && existing.healthy == update.healthy
            && existing.health_description == update.health_description
        {
            continue;
        }
        let mut alloc = (**existing).clone();
        alloc.client_status = update.client_status;
        alloc.client_description = update.client_description;
        alloc.task_states = update.task_states;
        alloc.healthy = update.healthy;
        alloc.health_description = update.health_description;
        alloc.modify_time = now;
        let newly_failed = existing.client_status != ClientStatus::Failed && alloc.client_status == ClientStatus::Failed;
        if newly_failed && alloc.desired_status == DesiredStatus::Run && failure_evals.insert(alloc.job_name.clone()) {
            // Let the scheduler decide whether to reschedule it (the group's `reschedule` policy).
            if let Some(job) = snapshot.cluster.job(&alloc.job_name) {
                let eval =
                    crate::liveness::new_eval(&alloc.job_name, job.spec.job_type, job.spec.priority, EvalTrigger::AllocFailure, None);
                txn.success.push(keys::put(keys::eval(&eval.id), &eval));
            }
        }
        txn.success.push(keys::put(keys::alloc(&alloc.id), &alloc));
    }
    txn
}
