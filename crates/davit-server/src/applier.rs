//! The plan applier: the only writer of allocations.
//!
//! It takes plans from scheduler workers and status updates from agents, one at a time, against the
//! newest state: a node's part of a plan is committed only if the node still exists, is schedulable
//! (for new placements) and still fits every allocation's CPU, memory and ports; the rest is refused
//! and the worker schedules it again on a fresh snapshot (optimistic concurrency, as in Nomad).
//! It also commits the drainer's stops (with their evaluations) and agents' status updates.

use std::collections::HashSet;
use std::sync::Arc;

use davit_api::http::{AllocStatusUpdate, NodeAllocStatusUpdates};
use davit_api::objects::{
    Allocation, ClientStatus, DesiredStatus, EvalTrigger, Evaluation, Index, Migration, MigrationProgress, MigrationRole, MigrationStatus,
};
use davit_scheduler::{AllocStop, ClusterState, Plan};
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
    ClientUpdate(Vec<NodeAllocStatusUpdates>, u64, oneshot::Sender<Result<Index, StoreError>>),
    Stop(Vec<AllocStop>, Vec<Evaluation>, u64, oneshot::Sender<Result<Index, StoreError>>),
    Migrate(Box<Allocation>, u64, oneshot::Sender<Result<Result<Index, String>, StoreError>>),
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
        self.client_updates(vec![NodeAllocStatusUpdates { node_id, updates }], now).await
    }

    /// [`Applier::client_update`] for many nodes at once, in one transaction.
    pub async fn client_updates(&self, updates: Vec<NodeAllocStatusUpdates>, now: u64) -> Result<Index, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::ClientUpdate(updates, now, reply)).await.map_err(|_| StoreError::Closed)?;
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
    let mut usage = UsageCache::default();
    // The snapshot the previous request was checked against, the allocations its commit wrote, its revision.
    let mut previous: Option<(Snapshot, Vec<String>, Index)> = None;
    while let Some(request) = receiver.recv().await {
        // Check against a view that includes our own previous commit, or we could over-commit a node.
        view.wait_for(last_commit).await;
        let snapshot = view.snapshot();
        if let Some((before, written, revision)) = previous.take() {
            usage.follow(&before, &snapshot, &written, revision);
        }
        let before_commit = last_commit;
        let mut written: Vec<String> = Vec::new();
        let mut commit = |txn: Txn| {
            written = txn
                .success
                .iter()
                .filter_map(|op| match op {
                    davit_store::Op::Put { key, .. } => key.strip_prefix(keys::ALLOCS).map(str::to_string),
                    _ => None,
                })
                .collect();
            commit(&store, txn)
        };
        match request {
            Request::Plan(plan, reply) => {
                let started = std::time::Instant::now();
                let (txn, mut result) = check_plan_with(&snapshot.cluster, &plan, crate::now_millis(), |node_id, incoming| {
                    usage.fits(&snapshot, &plan, node_id, incoming)
                });
                let outcome = commit(txn).await.map(|index| {
                    result.index = index;
                    result
                });
                if let Ok(result) = &outcome {
                    last_commit = last_commit.max(result.index);
                    metrics.plan_applied(started.elapsed(), result.placed);
                }
                let _ = reply.send(outcome);
            }
            Request::ClientUpdate(updates, now, reply) => {
                let txn = merge_client_updates(&snapshot, updates, now);
                let outcome = commit(txn).await;
                if let Ok(index) = outcome {
                    last_commit = last_commit.max(index);
                }
                let _ = reply.send(outcome);
            }
            Request::Migrate(destination, now, reply) => {
                let outcome = match check_migration(&snapshot, &destination, now) {
                    Ok(txn) => commit(txn).await.map(|index| {
                        last_commit = last_commit.max(index);
                        Ok(index)
                    }),
                    Err(reason) => Ok(Err(reason)),
                };
                let _ = reply.send(outcome);
            }
            Request::Stop(stops, evals, now, reply) => {
                let txn = stop_allocs(&snapshot, &stops, evals, now);
                let outcome = commit(txn).await;
                if let Ok(index) = outcome {
                    last_commit = last_commit.max(index);
                }
                let _ = reply.send(outcome);
            }
        }
        if last_commit > before_commit {
            previous = Some((snapshot, written, last_commit));
        }
    }
}

/// The transaction that starts a live migration to `destination`, or why the newest state refuses it.
pub fn check_migration(snapshot: &Snapshot, destination: &Allocation, now: u64) -> Result<Txn, String> {
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
    let no_changes = Plan {
        eval_id: String::new(),
        job_name: destination.job_name.clone(),
        job_version: destination.job_version,
        priority: 0,
        node_allocations: Default::default(),
        node_updates: Default::default(),
        failed_groups: Default::default(),
    };
    if !node_fits(&snapshot.cluster, &no_changes, &destination.node_id, std::slice::from_ref(destination)) {
        return Err(format!("node {} no longer has room for it", destination.node_name));
    }
    let mut source = (**source).clone();
    source.migration = Some(Migration {
        role: MigrationRole::Source,
        peer_alloc_id: destination.id.clone(),
        peer_node_id: destination.node_id.clone(),
        status: MigrationStatus::Starting,
        listen_addrs: Default::default(),
        description: format!("migrating to node {}", destination.node_name),
        report: None,
        started_at: now,
    });
    source.modify_time = now;
    let mut txn = Txn::default();
    txn.success.push(keys::put(keys::alloc(&destination.id), destination));
    txn.success.push(keys::put(keys::alloc(&source.id), &source));
    Ok(txn)
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

/// Builds the transaction for the part of `plan` that still fits in `cluster` (the newest state).
pub fn check_plan(cluster: &ClusterState, plan: &Plan, now: u64) -> (Txn, PlanResult) {
    check_plan_with(cluster, plan, now, |node_id, incoming| node_fits(cluster, plan, node_id, incoming))
}

/// [`check_plan`] with the fit check of one node's incoming allocations given by the caller.
fn check_plan_with(cluster: &ClusterState, plan: &Plan, now: u64, mut fits: impl FnMut(&str, &[Allocation]) -> bool) -> (Txn, PlanResult) {
    let mut txn = Txn::default();
    let mut result = PlanResult::default();
    for (node_id, stops) in &plan.node_updates {
        for stop in stops {
            let Some(existing) = cluster.alloc(&stop.alloc_id) else { continue };
            let alloc = stopped(existing, stop, now);
            debug_assert_eq!(&alloc.node_id, node_id);
            txn.success.push(keys::put(keys::alloc(&alloc.id), &alloc));
        }
    }
    for (node_id, allocs) in &plan.node_allocations {
        if fits(node_id, allocs) {
            for alloc in allocs {
                if cluster.alloc(&alloc.id).is_none() {
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
fn node_fits(cluster: &ClusterState, plan: &Plan, node_id: &str, incoming: &[Allocation]) -> bool {
    let Some(node) = cluster.node(node_id) else { return false };
    let incoming_ids: HashSet<&str> = incoming.iter().map(|alloc| alloc.id.as_str()).collect();
    let has_new = incoming.iter().any(|alloc| cluster.alloc(&alloc.id).is_none());
    if has_new && !node.is_schedulable() {
        return false;
    }
    let stopped: HashSet<&str> =
        plan.node_updates.get(node_id).map(|stops| stops.iter().map(|stop| stop.alloc_id.as_str()).collect()).unwrap_or_default();
    let remaining = cluster
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

/// What the non-terminal allocations of each node reserve, kept by the applier between requests, so that
/// checking a plan does not walk every allocation of every node it touches (a node of a large cluster holds
/// hundreds).
///
/// Invariant: an entry is exact for every snapshot whose `node_alloc_index` of the node equals the entry's
/// `index`. The applier moves entries along with its own commits ([`UsageCache::follow`]); an entry that does
/// not match the snapshot at hand (some other change touched the node) is recomputed from the allocations.
#[derive(Default)]
struct UsageCache {
    nodes: std::collections::HashMap<String, NodeUsage>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct NodeUsage {
    index: Index,
    cpu: u64,
    memory: u64,
    /// Host port → allocations holding it.
    ports: std::collections::HashMap<u16, u32>,
}

impl NodeUsage {
    fn compute(cluster: &ClusterState, node_id: &str, index: Index) -> NodeUsage {
        let mut usage = NodeUsage { index, ..NodeUsage::default() };
        for alloc in cluster.allocs_for_node(node_id).filter(|alloc| !alloc.is_terminal()) {
            usage.add(alloc, 1);
        }
        usage
    }

    /// Adds (`sign` 1) or removes (-1) what a non-terminal allocation reserves.
    fn add(&mut self, alloc: &Allocation, sign: i8) {
        if sign > 0 {
            self.cpu += alloc.resources.cpu;
            self.memory += alloc.resources.memory;
        } else {
            self.cpu = self.cpu.saturating_sub(alloc.resources.cpu);
            self.memory = self.memory.saturating_sub(alloc.resources.memory);
        }
        for port in &alloc.resources.ports {
            let count = self.ports.entry(port.value).or_default();
            *count = if sign > 0 { *count + 1 } else { count.saturating_sub(1) };
            if *count == 0 {
                self.ports.remove(&port.value);
            }
        }
    }
}

impl UsageCache {
    /// Whether `node_id` fits its `incoming` allocations (with the plan's stops), like [`node_fits`].
    fn fits(&mut self, snapshot: &Snapshot, plan: &Plan, node_id: &str, incoming: &[Allocation]) -> bool {
        let cluster = &snapshot.cluster;
        let Some(node) = cluster.node(node_id) else { return false };
        let index = snapshot.node_alloc_index(node_id);
        if self.nodes.get(node_id).is_none_or(|usage| usage.index != index) {
            self.nodes.insert(node_id.to_string(), NodeUsage::compute(cluster, node_id, index));
        }
        let usage = &self.nodes[node_id];
        if usage.ports.values().any(|count| *count > 1) || node.resources.reserved_ports.iter().any(|port| usage.ports.contains_key(port)) {
            // Already conflicting: let the exact check decide (and explain nothing new).
            return node_fits(cluster, plan, node_id, incoming);
        }
        let has_new = incoming.iter().any(|alloc| cluster.alloc(&alloc.id).is_none());
        if has_new && !node.is_schedulable() {
            return false;
        }
        // Take out what the plan stops or replaces on this node, then add what it places.
        let stops = plan.node_updates.get(node_id).into_iter().flatten().map(|stop| stop.alloc_id.as_str());
        let replaced: HashSet<&str> = stops.chain(incoming.iter().map(|alloc| alloc.id.as_str())).collect();
        let mut after = NodeUsage { cpu: usage.cpu, memory: usage.memory, ..NodeUsage::default() };
        let mut freed_ports: std::collections::HashMap<u16, u32> = std::collections::HashMap::new();
        for id in replaced {
            let Some(existing) = cluster.alloc(id) else { continue };
            if existing.node_id == node_id && !existing.is_terminal() {
                after.add(existing, -1);
                for port in &existing.resources.ports {
                    *freed_ports.entry(port.value).or_default() += 1;
                }
            }
        }
        let mut taken: HashSet<u16> = HashSet::new();
        for alloc in incoming.iter().filter(|alloc| !alloc.is_terminal()) {
            after.cpu += alloc.resources.cpu;
            after.memory += alloc.resources.memory;
            for port in &alloc.resources.ports {
                let held =
                    usage.ports.get(&port.value).copied().unwrap_or(0).saturating_sub(freed_ports.get(&port.value).copied().unwrap_or(0));
                if held > 0 || node.resources.reserved_ports.contains(&port.value) || !taken.insert(port.value) {
                    return false;
                }
            }
        }
        after.cpu <= node.resources.cpu && after.memory <= node.resources.memory
    }

    /// Moves entries along with the applier's own commit at `revision`: `before` is the snapshot the request
    /// was checked against, `after` one that includes the commit, `written` the allocations it wrote.
    fn follow(&mut self, before: &Snapshot, after: &Snapshot, written: &[String], revision: Index) {
        // Per node: (what an allocation reserved before, what it reserves now).
        type Change<'a> = (Option<&'a Allocation>, Option<&'a Allocation>);
        let mut changes: std::collections::HashMap<&str, Vec<Change>> = Default::default();
        for id in written {
            let old = before.cluster.alloc(id).map(|alloc| &**alloc).filter(|alloc| !alloc.is_terminal());
            let new = after.cluster.alloc(id).map(|alloc| &**alloc).filter(|alloc| !alloc.is_terminal());
            if let Some(old) = old {
                changes.entry(old.node_id.as_str()).or_default().push((Some(old), None));
            }
            if let Some(new) = new {
                changes.entry(new.node_id.as_str()).or_default().push((None, Some(new)));
            }
            // Even a write that reserves nothing moves the node's index.
            if let Some(alloc) = after.cluster.alloc(id) {
                changes.entry(alloc.node_id.as_str()).or_default();
            }
        }
        for (node_id, node_changes) in changes {
            let Some(usage) = self.nodes.get_mut(node_id) else { continue };
            let (was, now) = (before.node_alloc_index(node_id), after.node_alloc_index(node_id));
            // Valid before, and nothing but this commit (at `revision`) touched the node since: move it along.
            if usage.index != was || now != revision {
                self.nodes.remove(node_id);
                continue;
            }
            for (old, new) in node_changes {
                if let Some(old) = old {
                    usage.add(old, -1);
                }
                if let Some(new) = new {
                    usage.add(new, 1);
                }
            }
            usage.index = now;
        }
    }
}

fn merge_client_updates(snapshot: &Snapshot, nodes: Vec<NodeAllocStatusUpdates>, now: u64) -> Txn {
    let mut txn = Txn::default();
    let mut failure_evals: HashSet<String> = HashSet::new();
    for NodeAllocStatusUpdates { node_id, updates } in nodes {
        merge_node_updates(snapshot, &node_id, updates, now, &mut failure_evals, &mut txn);
    }
    txn
}

/// One node's part of [`merge_client_updates`]; `failure_evals` holds the jobs that already got an
/// `alloc_failure` evaluation in this transaction.
fn merge_node_updates(
    snapshot: &Snapshot,
    node_id: &str,
    updates: Vec<AllocStatusUpdate>,
    now: u64,
    failure_evals: &mut HashSet<String>,
    txn: &mut Txn,
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
        let peer = advance_migration(snapshot, &mut alloc, update.migration.as_ref(), now);
        if alloc == **existing {
            continue;
        }
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
        if let Some(peer) = peer {
            txn.success.push(keys::put(keys::alloc(&peer.id), &peer));
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
    use std::collections::BTreeMap;

    use davit_api::objects::{AllocatedResources, AssignedPort, NodeEligibility, NodeResources, NodeStatus};

    use super::*;

    fn node(reserved_ports: Vec<u16>) -> Arc<davit_api::objects::Node> {
        Arc::new(davit_api::objects::Node {
            id: "n1".to_string(),
            name: "n1".to_string(),
            datacenter: "dc1".to_string(),
            class: String::new(),
            attributes: BTreeMap::new(),
            resources: NodeResources { cpu: 1000, memory: 1000, port_range: (20000, 20100), reserved_ports },
            drivers: BTreeMap::new(),
            status: NodeStatus::Ready,
            eligibility: NodeEligibility::Eligible,
            drain: None,
            http_addr: String::new(),
            status_description: String::new(),
            last_heartbeat: 0,
            create_index: 1,
            modify_index: 1,
        })
    }

    fn alloc(id: &str, cpu: u64, port: Option<u16>, client_status: ClientStatus) -> Allocation {
        Allocation {
            id: id.to_string(),
            name: format!("job.web[{id}]"),
            job_name: "job".to_string(),
            job_version: 0,
            group: "web".to_string(),
            index: 0,
            node_id: "n1".to_string(),
            node_name: "n1".to_string(),
            eval_id: "eval".to_string(),
            desired_status: DesiredStatus::Run,
            desired_description: String::new(),
            client_status,
            client_description: String::new(),
            task_states: BTreeMap::new(),
            healthy: None,
            health_description: String::new(),
            resources: AllocatedResources {
                cpu,
                memory: cpu,
                ports: port.into_iter().map(|value| AssignedPort { label: "http".to_string(), value, to: value }).collect(),
            },
            previous_allocation: None,
            reschedule_tracker: Vec::new(),
            migration: None,
            create_time: 0,
            modify_time: 0,
            create_index: 0,
            modify_index: 0,
        }
    }

    fn plan(incoming: Vec<Allocation>, stops: &[&str]) -> Plan {
        Plan {
            eval_id: "eval".to_string(),
            job_name: "job".to_string(),
            job_version: 0,
            priority: 50,
            node_allocations: BTreeMap::from([("n1".to_string(), incoming)]),
            node_updates: BTreeMap::from([(
                "n1".to_string(),
                stops
                    .iter()
                    .map(|id| AllocStop { alloc_id: id.to_string(), description: "stop".to_string(), client_status: None })
                    .collect(),
            )]),
            failed_groups: BTreeMap::new(),
        }
    }

    /// The cached fit check answers like the exact one, on a node holding 300 + 200 (+ a finished 400).
    #[test]
    fn cached_fit_matches_the_exact_check() {
        let mut snapshot = Snapshot::default();
        snapshot.cluster.upsert_node(node(vec![20099]));
        for existing in [alloc("a", 300, Some(20001), ClientStatus::Running), alloc("b", 200, None, ClientStatus::Pending)] {
            snapshot.cluster.upsert_alloc(Arc::new(existing));
        }
        snapshot.cluster.upsert_alloc(Arc::new(alloc("done", 400, Some(20002), ClientStatus::Complete)));
        let cases: Vec<(&str, Plan, bool)> = vec![
            ("fits", plan(vec![alloc("new", 500, None, ClientStatus::Pending)], &[]), true),
            ("too big", plan(vec![alloc("new", 501, None, ClientStatus::Pending)], &[]), false),
            ("fits once b stops", plan(vec![alloc("new", 700, None, ClientStatus::Pending)], &["b"]), true),
            ("in-place update of a", plan(vec![alloc("a", 800, Some(20001), ClientStatus::Running)], &[]), true),
            ("port held by a", plan(vec![alloc("new", 10, Some(20001), ClientStatus::Pending)], &[]), false),
            ("port of a finished alloc", plan(vec![alloc("new", 10, Some(20002), ClientStatus::Pending)], &[]), true),
            ("port freed by stopping a", plan(vec![alloc("new", 10, Some(20001), ClientStatus::Pending)], &["a"]), true),
            ("reserved port", plan(vec![alloc("new", 10, Some(20099), ClientStatus::Pending)], &[]), false),
            (
                "two incoming on one port",
                plan(vec![alloc("x", 10, Some(20050), ClientStatus::Pending), alloc("y", 10, Some(20050), ClientStatus::Pending)], &[]),
                false,
            ),
        ];
        let mut cache = UsageCache::default();
        for (name, plan, expected) in cases {
            let incoming = &plan.node_allocations["n1"];
            assert_eq!(node_fits(&snapshot.cluster, &plan, "n1", incoming), expected, "exact: {name}");
            assert_eq!(cache.fits(&snapshot, &plan, "n1", incoming), expected, "cached: {name}");
        }
        assert_eq!(cache.nodes["n1"], NodeUsage::compute(&snapshot.cluster, "n1", 0));
        assert_eq!((cache.nodes["n1"].cpu, cache.nodes["n1"].ports.len()), (500, 1));
    }

    /// The cache follows the applier's own commits exactly, and drops what someone else touched.
    #[test]
    fn the_usage_cache_follows_commits() {
        let mut before = Snapshot::default();
        before.cluster.upsert_node(node(Vec::new()));
        before.cluster.upsert_alloc(Arc::new(alloc("a", 300, Some(20001), ClientStatus::Running)));
        before.cluster.upsert_alloc(Arc::new(alloc("b", 200, None, ClientStatus::Running)));
        before.set_node_alloc_index("n1", 5);
        let mut cache = UsageCache::default();
        let probe = plan(vec![alloc("probe", 1, None, ClientStatus::Pending)], &[]);
        assert!(cache.fits(&before, &probe, "n1", &probe.node_allocations["n1"]));
        // Revision 7 (ours): c placed, a finished.
        let mut after = before.clone();
        after.cluster.upsert_alloc(Arc::new(alloc("c", 100, Some(20003), ClientStatus::Pending)));
        after.cluster.upsert_alloc(Arc::new(alloc("a", 300, Some(20001), ClientStatus::Complete)));
        after.set_node_alloc_index("n1", 7);
        let written = ["c".to_string(), "a".to_string()];
        let mut followed = UsageCache { nodes: cache.nodes.clone() };
        followed.follow(&before, &after, &written, 7);
        assert_eq!(followed.nodes["n1"], NodeUsage::compute(&after.cluster, "n1", 7));
        // Something else also touched the node (its index is not our revision): the entry is dropped.
        cache.follow(&before, &after, &written, 6);
        assert!(!cache.nodes.contains_key("n1"));
    }
}
