//! The plan applier: the only writer of allocations.
//!
//! It takes plans from scheduler workers and status updates from agents and checks each against the
//! newest state: a node's part of a plan is committed only if the node still exists, is schedulable
//! (for new placements), still fits every allocation's CPU, memory and ports, and the required placement
//! rules still hold (`davit_scheduler::check_required_placement`); the rest is refused
//! and the worker schedules it again on a fresh snapshot (optimistic concurrency, as in Nomad).
//! It also commits the drainer's stops (with their evaluations) and agents' status updates.
//!
//! Requests are taken in batches of what is queued (up to `MAX_BATCH`): each is checked in turn against
//! the newest snapshot plus the allocations the requests before it in the batch write, and the batch is
//! committed as one store transaction (one fsync), so a busy cluster pays for durability once per batch,
//! not once per plan or status report.
//!
//! Preemptions (`Plan::node_preemptions`) count as stops in a node's fit check and are committed only
//! together with that node's placements, in the same transaction, with one `preemption` evaluation per
//! job that lost allocations (it places them again, or blocks until there is room).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use davit_api::http::{AllocStatusUpdate, NodeAllocStatusUpdates};
use davit_api::namespace::{NamespaceUsage, Quota, namespace_of};
use davit_api::objects::{
    Allocation, ClientStatus, DesiredStatus, EvalTrigger, Evaluation, Index, Migration, MigrationProgress, MigrationRole, MigrationStatus,
};
use davit_scheduler::{AllocStop, ClusterState, Plan};
use davit_store::{Store, StoreError, Txn, TxnLimits};
use tokio::sync::{mpsc, oneshot};

use crate::keys;
use crate::metrics::Metrics;
use crate::view::{DecodedAlloc, Snapshot, View};

/// What happened to a submitted plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanResult {
    /// Store revision of the commit (0 when nothing was written).
    pub index: Index,
    /// Nodes whose placements were refused because they no longer fit or are gone.
    pub refused_nodes: Vec<String>,
    pub placed: usize,
    /// Allocations of other jobs stopped to make room.
    pub preempted: usize,
}

enum Request {
    Plan(Plan, oneshot::Sender<Result<PlanResult, StoreError>>),
    ClientUpdate(Vec<NodeAllocStatusUpdates>, u64, oneshot::Sender<Result<Index, StoreError>>),
    Stop(Vec<AllocStop>, Vec<Evaluation>, u64, oneshot::Sender<Result<Index, StoreError>>),
    Migrate(Box<Allocation>, u64, oneshot::Sender<Result<Result<Index, String>, StoreError>>),
    /// Garbage collection: delete these allocations if they still ended.
    Collect(Vec<String>, oneshot::Sender<Result<(usize, Index), StoreError>>),
    Amend(Vec<(String, Amend)>, Vec<Evaluation>, u64, oneshot::Sender<Result<Index, StoreError>>),
}

/// A change an operator asks for on one allocation that still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amend {
    /// Restart its tasks in place (`restart_generation` moves on; its agent restarts them).
    Restart,
    /// Its deployment health, when not decided yet (`health_check: manual`).
    DeploymentHealth(bool),
}

/// A handle to send work to the applier task.
#[derive(Clone)]
pub struct Applier {
    requests: mpsc::Sender<Request>,
}

impl Applier {
    pub fn start(store: Arc<dyn Store>, view: Arc<View>, metrics: Arc<Metrics>) -> Applier {
        let metrics_for_supervisor = Arc::clone(&metrics);
        let (requests, receiver) = mpsc::channel(1024);
        // Supervised: a panic drops the batch in hand (its senders see the applier closed and retry) and
        // the applier goes on with the next one.
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let make = move || run(Arc::clone(&store), Arc::clone(&view), Arc::clone(&metrics), Arc::clone(&receiver));
        tokio::spawn(crate::supervise::supervise("applier", Arc::clone(&metrics_for_supervisor), make));
        Applier { requests }
    }

    pub async fn submit_plan(&self, plan: Plan) -> Result<PlanResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Plan(plan, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Merges client-reported status into allocations of `node_id`. Unknown allocations are skipped.
    pub async fn client_update(&self, node_id: String, updates: Vec<AllocStatusUpdate>, now: u64) -> Result<Index, StoreError> {
        self.client_updates(vec![NodeAllocStatusUpdates { node_id, updates }], now).await
    }

    /// [`client_update`](Self::client_update) for many nodes in one transaction (simulated agents batch them).
    pub async fn client_updates(&self, updates: Vec<NodeAllocStatusUpdates>, now: u64) -> Result<Index, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::ClientUpdate(updates, now, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes the allocations among `ids` that ended (garbage collection); returns how many, and the index.
    pub async fn collect(&self, ids: Vec<String>) -> Result<(usize, Index), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Collect(ids, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Starts a live migration: commits `destination` (from [`davit_scheduler::place_migration`]) and marks
    /// its source as migrating, in one transaction. `Ok(Err(reason))` when the newest state refuses it: the
    /// source is no longer running or already migrating, or the destination no longer fits its node.
    pub async fn start_migration(&self, destination: Allocation, now: u64) -> Result<Result<Index, String>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Migrate(Box::new(destination), now, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Amends allocations (skipping those that ended, or whose deployment health is decided already) and stores
    /// `evals` with them; index 0 when nothing changed.
    pub async fn amend_allocs(&self, amends: Vec<(String, Amend)>, evals: Vec<Evaluation>, now: u64) -> Result<Index, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Amend(amends, evals, now, reply)).await.map_err(|_| StoreError::Closed)?;
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

/// The most requests checked and committed together.
pub const MAX_BATCH: usize = 64;

/// What one request writes: its store operations, and the allocations among them (which the requests
/// after it in the same batch must see).
#[derive(Default)]
pub struct Writes {
    pub txn: Txn,
    allocs: Vec<DecodedAlloc>,
}

impl Writes {
    /// Adds a put of the allocation; returns it as shared, for a working state that must see it too.
    fn alloc(&mut self, alloc: Allocation) -> &Arc<Allocation> {
        let key = keys::alloc(&alloc.id);
        let value = keys::encode(&alloc);
        self.txn.success.push(davit_store::Op::Put { key: key.clone(), value: value.clone(), lease: None });
        self.allocs.push(DecodedAlloc { key, value, alloc: Arc::new(alloc) });
        &self.allocs.last().expect("just pushed").alloc
    }

    fn eval(&mut self, eval: &Evaluation) {
        self.txn.success.push(keys::put(keys::eval(&eval.id), eval));
    }

    /// Adds `evals` when the request writes anything else: an evaluation follows a change, never stands alone.
    fn evals_with_changes(&mut self, evals: &[Evaluation]) {
        if !self.txn.success.is_empty() {
            for eval in evals {
                self.eval(eval);
            }
        }
    }
}

/// Where the outcome of a request of a batch goes once the batch is committed.
enum Reply {
    Plan(PlanResult, oneshot::Sender<Result<PlanResult, StoreError>>),
    Index(oneshot::Sender<Result<Index, StoreError>>),
    Migrate(Result<(), String>, oneshot::Sender<Result<Result<Index, String>, StoreError>>),
    Collected(usize, oneshot::Sender<Result<(usize, Index), StoreError>>),
}

async fn run(store: Arc<dyn Store>, view: Arc<View>, metrics: Arc<Metrics>, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>) {
    let mut receiver = receiver.lock().await;
    let mut last_commit: Index = 0;
    let mut requests = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut requests, MAX_BATCH).await > 0 {
        // Check against a view that includes our own previous commit, or we could over-commit a node.
        view.wait_for(last_commit).await;
        let started = std::time::Instant::now();
        let mut working = view.snapshot();
        let count = requests.len();
        let mut txn = Txn::default();
        let mut replies = Vec::with_capacity(count);
        let mut decoded = Vec::new();
        for request in requests.drain(..) {
            // A panic while checking one request fails that request alone; the batch and the applier go on.
            let (writes, reply) = match request {
                Request::Plan(plan, sender) => match guarded(|| check_plan(&working.cluster, plan, crate::now_millis())) {
                    Ok((writes, result)) => (writes, Reply::Plan(result, sender)),
                    Err(panic) => {
                        let _ = sender.send(Err(panic));
                        continue;
                    }
                },
                Request::ClientUpdate(updates, now, sender) => match guarded(|| merge_client_updates(&working, updates, now)) {
                    Ok(writes) => (writes, Reply::Index(sender)),
                    Err(panic) => {
                        let _ = sender.send(Err(panic));
                        continue;
                    }
                },
                Request::Stop(stops, evals, now, sender) => match guarded(|| stop_allocs(&working, &stops, evals, now)) {
                    Ok(writes) => (writes, Reply::Index(sender)),
                    Err(panic) => {
                        let _ = sender.send(Err(panic));
                        continue;
                    }
                },
                Request::Migrate(destination, now, sender) => match guarded(|| check_migration(&working, &destination, now)) {
                    Ok(Ok(writes)) => (writes, Reply::Migrate(Ok(()), sender)),
                    Ok(Err(reason)) => (Writes::default(), Reply::Migrate(Err(reason), sender)),
                    Err(panic) => {
                        let _ = sender.send(Err(panic));
                        continue;
                    }
                },
                Request::Amend(amends, evals, now, sender) => match guarded(|| amend_allocs(&working, &amends, evals, now)) {
                    Ok(writes) => (writes, Reply::Index(sender)),
                    Err(panic) => {
                        let _ = sender.send(Err(panic));
                        continue;
                    }
                },
                Request::Collect(ids, sender) => {
                    let mut writes = Writes::default();
                    for id in ids {
                        if working.cluster.alloc(&id).is_some_and(|alloc| alloc.client_status.is_terminal()) {
                            writes.txn.success.push(davit_store::Op::Delete { key: keys::alloc(&id) });
                            working.cluster.remove_alloc(&id);
                        }
                    }
                    let deleted = writes.txn.success.len();
                    (writes, Reply::Collected(deleted, sender))
                }
            };
            let wrote = !writes.txn.success.is_empty();
            for written in &writes.allocs {
                working.cluster.upsert_alloc(Arc::clone(&written.alloc));
            }
            decoded.extend(writes.allocs);
            txn.success.extend(writes.txn.success);
            replies.push((reply, wrote));
        }
        // The view takes these objects, and the working state that holds them, instead of decoding what it
        // reads back from the store and applying it again.
        let working = (!decoded.is_empty()).then_some(working);
        let outcome = match store.max_txn_size().filter(|limits| exceeds(&txn, *limits)) {
            // Larger than the store takes in one transaction (etcd): committed in parts, in order; the view
            // reads the parts back from the store rather than taking the batch's state.
            Some(limits) => match commit_in_parts(&store, txn, limits).await {
                Ok(index) => Ok(index),
                Err((committed, error)) => {
                    // The next batch is checked against a view with the parts that did commit.
                    last_commit = last_commit.max(committed);
                    Err(error)
                }
            },
            None => {
                view.hand_off(decoded, working);
                commit(&store, txn).await
            }
        };
        if outcome.is_err() {
            view.withdraw_handed_off();
        }
        if let Ok(index) = &outcome {
            last_commit = last_commit.max(*index);
        }
        // The batch's one outcome, as each request sees it: index 0 for one that wrote nothing.
        let outcome_for = |wrote: bool| match &outcome {
            Ok(index) => Ok(if wrote { *index } else { 0 }),
            Err(error) => Err(error.for_another_caller()),
        };
        for (reply, wrote) in replies {
            match reply {
                Reply::Plan(mut result, sender) => {
                    // A refused plan gets the batch's index too: the worker waits for it before planning again,
                    // so it sees what the requests before it in the batch committed.
                    let outcome = outcome_for(wrote || !result.refused_nodes.is_empty()).map(|index| {
                        result.index = index;
                        metrics.plan_applied(started.elapsed(), result.placed);
                        result
                    });
                    let _ = sender.send(outcome);
                }
                Reply::Index(sender) => drop(sender.send(outcome_for(wrote))),
                Reply::Migrate(Ok(()), sender) => drop(sender.send(outcome_for(wrote).map(Ok))),
                Reply::Migrate(Err(reason), sender) => drop(sender.send(Ok(Err(reason)))),
                Reply::Collected(deleted, sender) => drop(sender.send(outcome_for(wrote).map(|index| (deleted, index)))),
            }
        }
    }
}

/// Runs one request's check, turning a panic into an error for that request.
fn guarded<T>(check: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).map_err(|panic| {
        StoreError::Backend(format!("the plan applier panicked on this request: {}", crate::supervise::panic_message(panic)))
    })
}

/// The transaction that starts a live migration to `destination`, or why the newest state refuses it.
pub fn check_migration(snapshot: &Snapshot, destination: &Allocation, now: u64) -> Result<Writes, String> {
    let migration = destination.migration.as_ref().filter(|migration| migration.role == MigrationRole::Destination);
    let Some(migration) = migration else { return Err("the destination allocation names no migration source".to_string()) };
    let Some(source) = snapshot.cluster.alloc(&migration.peer_alloc_id) else {
        return Err(format!("allocation {} is gone", migration.peer_alloc_id));
    };
    if source.is_terminal() || source.client_status != ClientStatus::Running {
        return Err(format!("allocation {} is no longer running ({:?})", source.id, source.client_status).to_lowercase());
    }
    if source.is_migrating_out() {
        return Err(format!("allocation {} is already being migrated", source.id));
    }
    let no_changes = Plan::new("", &destination.job_name, destination.job_version, 0);
    let existing = [snapshot.cluster.alloc(&destination.id)];
    if !node_fits(&snapshot.cluster, &no_changes, &destination.node_id, std::slice::from_ref(destination), &existing) {
        return Err(format!("node {} no longer has room for it", destination.node_name));
    }
    let mut source = (**source).clone();
    source.migration = Some(Box::new(Migration {
        role: MigrationRole::Source,
        peer_alloc_id: destination.id.clone(),
        peer_node_id: destination.node_id.clone(),
        status: MigrationStatus::Starting,
        listen_addrs: Default::default(),
        description: format!("migrating to node {}", destination.node_name),
        report: None,
        started_at: now,
    }));
    source.modify_time = now;
    let mut writes = Writes::default();
    writes.alloc(destination.clone());
    writes.alloc(source);
    Ok(writes)
}

fn stop_allocs(snapshot: &Snapshot, stops: &[AllocStop], evals: Vec<Evaluation>, now: u64) -> Writes {
    let mut writes = Writes::default();
    for stop in stops {
        let Some(existing) = snapshot.cluster.alloc(&stop.alloc_id) else { continue };
        if existing.is_terminal() {
            continue;
        }
        writes.alloc(stopped(existing, stop, now));
    }
    writes.evals_with_changes(&evals);
    writes
}

fn amend_allocs(snapshot: &Snapshot, amends: &[(String, Amend)], evals: Vec<Evaluation>, now: u64) -> Writes {
    let mut writes = Writes::default();
    for (id, amend) in amends {
        let Some(existing) = snapshot.cluster.alloc(id).filter(|alloc| !alloc.is_terminal()) else { continue };
        let mut alloc = (**existing).clone();
        match amend {
            Amend::Restart => alloc.restart_generation += 1,
            Amend::DeploymentHealth(_) if alloc.deployment_health.is_some() || alloc.deployment_id.is_none() => continue,
            Amend::DeploymentHealth(healthy) => {
                alloc.deployment_health = Some(davit_api::deployment::DeploymentHealth { healthy: *healthy, timestamp: now })
            }
        }
        alloc.modify_time = now;
        writes.alloc(alloc);
    }
    writes.evals_with_changes(&evals);
    writes
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

fn exceeds(txn: &Txn, limits: TxnLimits) -> bool {
    txn.success.len() > limits.ops || txn.success.iter().map(davit_store::Op::size).sum::<usize>() > limits.bytes
}

/// Commits the batch's writes (which have no compares) in transactions within `limits`, in order; the
/// revision of the last. A failure part-way leaves the parts before it committed (their revision comes with the
/// error): each write stands on its own (an allocation, an evaluation's status), and evaluations whose plans
/// were cut short are planned again.
async fn commit_in_parts(store: &Arc<dyn Store>, txn: Txn, limits: TxnLimits) -> Result<Index, (Index, StoreError)> {
    debug_assert!(txn.compares.is_empty() && txn.failure.is_empty());
    let mut index = 0;
    for part in davit_store::split_writes(txn.success, limits) {
        index = commit(store, part).await.map_err(|error| (index, error))?;
    }
    Ok(index)
}

/// Builds the writes for the part of `plan` that still fits (the plan's allocations move into them).
pub fn check_plan(cluster: &ClusterState, mut plan: Plan, now: u64) -> (Writes, PlanResult) {
    let node_allocations = std::mem::take(&mut plan.node_allocations);
    let plan = &plan;
    let mut writes = Writes::default();
    let mut result = PlanResult::default();
    for (node_id, stops) in &plan.node_updates {
        for stop in stops {
            let Some(existing) = cluster.alloc(&stop.alloc_id) else { continue };
            debug_assert_eq!(&existing.node_id, node_id);
            writes.alloc(stopped(existing, stop, now));
        }
    }
    // Stops and preemptions (preemptions only count once their node is accepted, but a preempted
    // allocation is never a reason to refuse another node).
    let stopped_ids: Vec<&str> = plan.stops().chain(plan.preemptions()).map(|stop| stop.alloc_id.as_str()).collect();
    // The newest state plus what this plan commits on the nodes checked so far: required placement rules
    // (anti-affinity, distinct_hosts, distinct_property) span nodes, and another worker's plan committed
    // since this one was computed may have taken the spot.
    // Kept only when a required rule could be broken at all (most jobs have none).
    let mut working = davit_scheduler::may_break_required_rules(cluster, &plan.job_name).then(|| cluster.clone());
    let mut quota = NamespaceQuota::of(cluster, plan);
    let mut preempted_jobs: BTreeSet<&str> = BTreeSet::new();
    for (node_id, allocs) in node_allocations {
        let existing: Vec<Option<&Arc<Allocation>>> = allocs.iter().map(|alloc| cluster.alloc(&alloc.id)).collect();
        if !node_fits(cluster, plan, &node_id, &allocs, &existing) {
            result.refused_nodes.push(node_id);
            continue;
        }
        if let Some(Err(violation)) =
            working.as_ref().map(|working| davit_scheduler::check_required_placement(working, &allocs, &stopped_ids))
        {
            tracing::debug!(eval = %plan.eval_id, %violation, "placement refused: a required rule no longer holds");
            result.refused_nodes.push(node_id);
            continue;
        }
        if let Some(Err(reason)) = quota.as_mut().map(|quota| quota.admit(&allocs, &existing)) {
            tracing::debug!(eval = %plan.eval_id, %reason, "placement refused");
            result.refused_nodes.push(node_id);
            continue;
        }
        for (alloc, existing) in allocs.into_iter().zip(existing) {
            if existing.is_none() {
                result.placed += 1;
            }
            let written = writes.alloc(alloc);
            if let Some(working) = working.as_mut() {
                working.upsert_alloc(Arc::clone(written));
            }
        }
        for stop in plan.node_preemptions.get(&node_id).into_iter().flatten() {
            let Some(existing) = cluster.alloc(&stop.alloc_id) else { continue };
            if existing.is_terminal() {
                continue;
            }
            writes.alloc(stopped(existing, stop, now));
            result.preempted += 1;
            preempted_jobs.insert(&existing.job_name);
        }
    }
    // The deployment the plan starts (unless the version has one already: an evaluation planned twice), and
    // the rollouts it ends (unless they ended meanwhile).
    if let Some(deployment) = &plan.deployment
        && cluster.job_deployments(&deployment.job_name).all(|existing| existing.job_version != deployment.job_version)
    {
        writes.txn.success.push(keys::put(keys::deployment(&deployment.id), &**deployment));
    }
    for (id, status, description) in &plan.deployment_updates {
        if let Some(existing) = cluster.deployment(id).filter(|existing| existing.is_active()) {
            let mut ended = (**existing).clone();
            (ended.status, ended.status_description, ended.modify_time) = (*status, description.clone(), now);
            writes.txn.success.push(keys::put(keys::deployment(id), &ended));
        }
    }
    for job in preempted_jobs.into_iter().filter_map(|name| cluster.job(name)) {
        let mut eval = crate::liveness::new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, EvalTrigger::Preemption, None);
        eval.status_description = format!("allocations preempted by job {} (priority {})", plan.job_name, plan.priority);
        writes.eval(&eval);
    }
    (writes, result)
}

/// The quota of the plan's namespace, with what its live allocations reserve on the newest state less what
/// the plan stops, plus the nodes accepted so far: plans of concurrent workers must not pass it together.
struct NamespaceQuota<'a> {
    namespace: &'a str,
    quota: Quota,
    usage: NamespaceUsage,
}

impl<'a> NamespaceQuota<'a> {
    fn of(cluster: &ClusterState, plan: &'a Plan) -> Option<NamespaceQuota<'a>> {
        let namespace = namespace_of(&plan.job_name);
        let quota = cluster.namespace(namespace)?.quota?;
        let mut usage = cluster.namespace_usage(namespace);
        for stop in plan.stops() {
            if let Some(alloc) = cluster.alloc(&stop.alloc_id).filter(|alloc| !alloc.is_terminal()) {
                usage.remove(alloc.resources.cpu, alloc.resources.memory);
            }
        }
        Some(NamespaceQuota { namespace, quota, usage })
    }

    /// Counts a node's new allocations in, unless they would pass the quota.
    fn admit(&mut self, incoming: &[Allocation], existing: &[Option<&Arc<Allocation>>]) -> Result<(), String> {
        let mut usage = self.usage;
        let mut extra = NamespaceUsage::default();
        for (alloc, _) in incoming.iter().zip(existing).filter(|(alloc, existing)| existing.is_none() && !alloc.is_terminal()) {
            extra.add(alloc.resources.cpu, alloc.resources.memory);
        }
        if let Some(reason) = self.quota.exceeded_by(self.namespace, &usage, &extra) {
            return Err(reason);
        }
        usage.cpu += extra.cpu;
        usage.memory += extra.memory;
        usage.allocations += extra.allocations;
        self.usage = usage;
        Ok(())
    }
}

/// Whether `node_id` can hold its current allocations, minus those the plan stops, with `incoming`
/// (`existing` holds the current version of each incoming allocation, `None` for a new one).
fn node_fits(cluster: &ClusterState, plan: &Plan, node_id: &str, incoming: &[Allocation], existing: &[Option<&Arc<Allocation>>]) -> bool {
    let Some(node) = cluster.node(node_id) else { return false };
    let has_new = existing.iter().any(Option::is_none);
    if has_new && !node.is_schedulable() {
        return false;
    }
    // Leaving: the live allocations of the node the plan stops or preempts (preemptions free their room
    // like stops: they are committed only with the node's placements) or replaces with a new version.
    let mut leaving: Vec<&Allocation> = [&plan.node_updates, &plan.node_preemptions]
        .into_iter()
        .filter_map(|stops| stops.get(node_id))
        .flatten()
        .filter_map(|stop| cluster.alloc(&stop.alloc_id))
        .chain(existing.iter().flatten().copied())
        .map(|alloc| &**alloc)
        .filter(|alloc| !alloc.is_terminal() && alloc.node_id == node_id)
        .collect();
    leaving.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    leaving.dedup_by(|a, b| a.id == b.id);
    cluster.fits_after(node, leaving, incoming)
}

fn merge_client_updates(snapshot: &Snapshot, nodes: Vec<NodeAllocStatusUpdates>, now: u64) -> Writes {
    let mut writes = Writes::default();
    let mut failure_evals: HashSet<String> = HashSet::new();
    for NodeAllocStatusUpdates { node_id, updates } in nodes {
        merge_node_updates(snapshot, &node_id, updates, now, &mut failure_evals, &mut writes);
    }
    writes
}

/// One node's part of [`merge_client_updates`]; `failure_evals` holds the jobs that already got an
/// `alloc_failure` evaluation in this transaction.
fn merge_node_updates(
    snapshot: &Snapshot,
    node_id: &str,
    updates: Vec<AllocStatusUpdate>,
    now: u64,
    failure_evals: &mut HashSet<String>,
    writes: &mut Writes,
) {
    for update in updates {
        let Some(existing) = snapshot.cluster.alloc(&update.id) else { continue };
        if existing.node_id != node_id {
            tracing::warn!(alloc = %update.id, node_id, "ignoring status update for an allocation of another node");
            continue;
        }
        let mut alloc = (**existing).clone();
        alloc.client_status = update.client_status;
        alloc.client_description = update.client_description;
        alloc.task_states = update.task_states;
        alloc.healthy = update.healthy;
        alloc.health_description = update.health_description;
        // Decided once: the agent's verdict on a deployment's new allocation.
        let newly_healthy_in_deployment = alloc.deployment_id.is_some()
            && alloc.deployment_health.is_none()
            && update.deployment_health.is_some_and(|health| health.healthy);
        if alloc.deployment_id.is_some() && alloc.deployment_health.is_none() {
            alloc.deployment_health = update.deployment_health;
        }
        let peer = advance_migration(snapshot, &mut alloc, update.migration.as_ref(), now);
        if alloc == **existing {
            continue;
        }
        alloc.modify_time = now;
        let newly = |status: ClientStatus| existing.client_status != status && alloc.client_status == status;
        // Failed: the scheduler decides whether to reschedule it (the group's `reschedule` policy). Complete while
        // it should run (not a batch job, whose completion is the point): the scheduler places it again.
        // A deployment's allocation became healthy: the scheduler replaces the next ones.
        let trigger = match snapshot.cluster.job(&alloc.job_name) {
            _ if alloc.desired_status != DesiredStatus::Run => None,
            Some(_) if newly_healthy_in_deployment => Some(EvalTrigger::Deployment),
            Some(_) if newly(ClientStatus::Failed) => Some(EvalTrigger::AllocFailure),
            Some(job) if newly(ClientStatus::Complete) && job.spec.job_type != davit_api::spec::JobType::Batch => {
                Some(EvalTrigger::AllocComplete)
            }
            _ => None,
        };
        if let Some(trigger) = trigger
            && failure_evals.insert(alloc.job_name.clone())
            && let Some(job) = snapshot.cluster.job(&alloc.job_name)
        {
            let eval = crate::liveness::new_eval(&alloc.job_name, job.spec.job_type, job.spec.priority, trigger, None);
            writes.eval(&eval);
        }
        writes.alloc(alloc);
        if let Some(peer) = peer {
            writes.alloc(peer);
        }
    }
}

/// Moves the live migration `alloc` takes part in along with what its agent reported (and with its
/// client status: a destination that ended before the migration completed failed it). Returns the peer
/// allocation when it changes too. Pure.
///
/// - destination `Listening` → both sides `Listening` with the addresses (the source agent then migrates);
/// - source `Completed` → both `Complete`, the source desired `stop` ("migrated to node N");
/// - source `Failed`, or a destination that failed or ended → both `Failed`, the destination desired `stop`
///   ("migration failed: …"); the source keeps running.
pub fn advance_migration(
    snapshot: &Snapshot,
    alloc: &mut Allocation,
    progress: Option<&MigrationProgress>,
    now: u64,
) -> Option<Allocation> {
    let migration = alloc.migration.as_mut().filter(|migration| !migration.status.is_done())?;
    let mut peer = snapshot
        .cluster
        .alloc(&migration.peer_alloc_id)
        .map(|peer| (**peer).clone())
        .filter(|peer| peer.migration.as_ref().is_some_and(|theirs| theirs.peer_alloc_id == alloc.id));
    let mut failure: Option<String> = None;
    match (migration.role, progress) {
        (MigrationRole::Destination, Some(MigrationProgress::Listening { listen_addrs }))
            if migration.status == MigrationStatus::Starting =>
        {
            migration.status = MigrationStatus::Listening;
            migration.listen_addrs.clone_from(listen_addrs);
            if let Some(theirs) = peer.as_mut().and_then(|peer| peer.migration.as_mut()).filter(|theirs| !theirs.status.is_done()) {
                theirs.status = MigrationStatus::Listening;
                theirs.listen_addrs.clone_from(listen_addrs);
            }
        }
        (MigrationRole::Destination, Some(MigrationProgress::Failed { reason })) => failure = Some(reason.clone()),
        (MigrationRole::Destination, _) if alloc.client_status.is_terminal() => {
            failure = Some(format!("the destination allocation is {:?}: {}", alloc.client_status, alloc.client_description).to_lowercase());
        }
        (MigrationRole::Source, Some(MigrationProgress::Completed { report })) => {
            let peer_node = peer.as_ref().map_or(migration.peer_node_id.clone(), |peer| peer.node_name.clone());
            migration.status = MigrationStatus::Complete;
            migration.report = Some(*report);
            migration.description = format!("migrated to node {peer_node}: {}", report.summary());
            alloc.desired_status = DesiredStatus::Stop;
            alloc.desired_description = format!("migrated to node {peer_node}");
            if let Some(peer) = peer.as_mut() {
                if let Some(theirs) = peer.migration.as_mut() {
                    theirs.status = MigrationStatus::Complete;
                    theirs.report = Some(*report);
                    theirs.description = format!("migrated in from node {}: {}", alloc.node_name, report.summary());
                }
                peer.modify_time = now;
            }
            return peer;
        }
        (MigrationRole::Source, Some(MigrationProgress::Failed { reason })) => failure = Some(reason.clone()),
        (MigrationRole::Source, _) if alloc.client_status.is_terminal() => {
            failure = Some(format!("the source allocation ended ({:?})", alloc.client_status).to_lowercase());
        }
        _ => return None,
    }
    if let Some(reason) = failure {
        let migration = alloc.migration.as_mut().expect("checked above");
        migration.status = MigrationStatus::Failed;
        migration.description = reason.clone();
        let (destination, source) = match migration.role {
            MigrationRole::Destination => (Some(&mut *alloc), peer.as_mut()),
            MigrationRole::Source => (peer.as_mut(), Some(&mut *alloc)),
        };
        if let Some(destination) = destination {
            if destination.desired_status == DesiredStatus::Run {
                destination.desired_status = DesiredStatus::Stop;
                destination.desired_description = format!("migration failed: {reason}");
            }
            if let Some(theirs) = destination.migration.as_mut() {
                theirs.status = MigrationStatus::Failed;
                theirs.description.clone_from(&reason);
            }
        }
        if let Some(theirs) = source.and_then(|source| source.migration.as_mut()) {
            theirs.status = MigrationStatus::Failed;
            theirs.description = reason;
        }
    }
    if let Some(peer) = peer.as_mut() {
        peer.modify_time = now;
    }
    peer
}

#[cfg(test)]
mod tests {

    use davit_api::objects::{EvalTrigger, Job, Node, NodeResources};
    use davit_scheduler::{ClusterState, schedule};

    use super::*;

    fn node(id: &str) -> Node {
        let resources = NodeResources { cpu: 4000, memory: 4096, port_range: (20000, 20100), reserved_ports: vec![] };
        Node { resources, ..davit_api::testing::node(id) }
    }

    fn add_job(cluster: &mut ClusterState, yaml: &str) -> Evaluation {
        let spec = davit_api::spec::parse_job_spec(yaml, "job.yaml").unwrap();
        let job = Arc::new(Job::new(spec, 0, 0));
        cluster.upsert_job_version(Arc::clone(&job));
        cluster.upsert_job(Arc::clone(&job));
        crate::liveness::new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, EvalTrigger::JobRegister, None)
    }

    const TASKS: &str = "    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 100, memory: 64}\n";

    /// Two plans computed on the same snapshot both fill the one node. Queued together they are checked in one
    /// batch: the second sees the first's allocation and is refused, and its result carries the batch's index
    /// (the worker waits for it before planning again, so it sees why).
    #[tokio::test]
    async fn a_batch_larger_than_the_store_takes_is_committed_in_parts_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(davit_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
        let batch = |count: usize| Txn {
            success: (0..count).map(|i| davit_store::Op::Put { key: format!("k{i:02}"), value: vec![b'x'; 10], lease: None }).collect(),
            ..Txn::default()
        };
        // Three operations a transaction: ten writes take four.
        assert_eq!(commit_in_parts(&store, batch(10), TxnLimits { ops: 3, bytes: 1 << 20 }).await.unwrap(), 4);
        let stored = store.range("k").await.unwrap();
        assert_eq!(stored.kvs.len(), 10);
        assert!(stored.kvs.windows(2).all(|pair| pair[0].mod_revision <= pair[1].mod_revision), "written in order");
        // 13 bytes a write, at most 30 a transaction: two writes each.
        assert_eq!(commit_in_parts(&store, batch(6), TxnLimits { ops: 100, bytes: 30 }).await.unwrap(), 7);
        assert!(exceeds(&batch(4), TxnLimits { ops: 3, bytes: 1 << 20 }) && !exceeds(&batch(3), TxnLimits { ops: 3, bytes: 39 }));
    }

    #[tokio::test]
    async fn plans_of_one_batch_see_each_other_and_a_refused_one_gets_the_batch_index() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(davit_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
        let mut small = node("n1");
        small.resources.memory = 100;
        let mut txn = Txn::default();
        txn.success.push(keys::put(keys::node("n1"), &small));
        store.txn(txn).await.unwrap();
        let (events, _events) = mpsc::unbounded_channel();
        let view = View::start(Arc::clone(&store), events).await.unwrap();
        let applier = Applier::start(Arc::clone(&store), Arc::clone(&view), Arc::new(Metrics::default()));

        let mut cluster = view.snapshot().cluster;
        let first = add_job(&mut cluster, &format!("name: first\ngroups:\n  - name: g\n{TASKS}"));
        let second = add_job(&mut cluster, &format!("name: second\ngroups:\n  - name: g\n{TASKS}"));
        let first_plan = schedule(&cluster, &first, &Default::default(), 1, 0).plan;
        let second_plan = schedule(&cluster, &second, &Default::default(), 2, 0).plan;
        assert_eq!((first_plan.allocations().count(), second_plan.allocations().count()), (1, 1));

        // A current-thread runtime: both requests are queued before the applier task runs.
        let (first_result, second_result) = tokio::join!(applier.submit_plan(first_plan), applier.submit_plan(second_plan));
        let (first_result, second_result) = (first_result.unwrap(), second_result.unwrap());
        assert_eq!((first_result.placed, first_result.refused_nodes.len()), (1, 0));
        assert_eq!((second_result.placed, second_result.refused_nodes), (0, vec!["n1".to_string()]));
        assert!(first_result.index > 0);
        assert_eq!(second_result.index, first_result.index, "the refused plan waits for the batch's commit");
        view.wait_for(second_result.index).await;
        let live: Vec<_> = view.snapshot().cluster.allocs_for_node("n1").map(|alloc| alloc.job_name.clone()).collect();
        assert_eq!(live, ["first"]);
    }

    /// Two plans computed on the same snapshot each keep job `db`'s required anti-affinity to `cache`;
    /// committed one after the other they would break it. The applier refuses the second.
    #[test]
    fn a_plan_breaking_a_required_rule_of_a_concurrent_commit_is_refused() {
        let mut snapshot = Snapshot::default();
        snapshot.cluster.upsert_node(Arc::new(node("n1")));
        let db = add_job(
            &mut snapshot.cluster,
            &format!("name: db\ngroups:\n  - name: g\n    anti_affinities: [{{labels: {{app: cache}}, required: true}}]\n{TASKS}"),
        );
        let cache = add_job(&mut snapshot.cluster, &format!("name: cache\ngroups:\n  - name: g\n    labels: {{app: cache}}\n{TASKS}"));
        let db_plan = schedule(&snapshot.cluster, &db, &Default::default(), 1, 0).plan;
        let cache_plan = schedule(&snapshot.cluster, &cache, &Default::default(), 2, 0).plan;
        assert_eq!((db_plan.allocations().count(), cache_plan.allocations().count()), (1, 1));

        let (_, result) = check_plan(&snapshot.cluster, db_plan.clone(), 0);
        assert_eq!((result.placed, result.refused_nodes.len()), (1, 0));
        let mut after = snapshot.clone();
        for alloc in db_plan.allocations() {
            after.cluster.upsert_alloc(Arc::new(alloc.clone()));
        }
        let (writes, result) = check_plan(&after.cluster, cache_plan.clone(), 0);
        assert_eq!((result.placed, result.refused_nodes), (0, vec!["n1".to_string()]));
        assert!(writes.txn.success.is_empty());
        // On the snapshot it was computed on, the same plan is fine.
        assert_eq!(check_plan(&snapshot.cluster, cache_plan, 0).1.placed, 1);
    }
}
