//! The server's in-memory, indexed view of the cluster, fed by the store's change feed.
//!
//! Hot reads (API, scheduler workers) never touch the store: they read this view. A snapshot is an
//! O(1) clone of persistent maps, so a worker schedules against a consistent state without locks.
//!
//! Invariant: the view reflects exactly the store at [`View::revision`]; writers that need to read
//! their own writes call [`View::wait_for`] with the revision their transaction returned.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use davit_api::objects::{Allocation, EvalStatus, Evaluation, Index};
use davit_scheduler::ClusterState;
use davit_store::{EventKind, KeyValue, Revision, Store, StoreError, WatchBatch, WatchEvent};
use imbl::OrdMap;
use tokio::sync::{mpsc, watch};

use crate::keys::{self, Object, ObjectKey};

/// A consistent, immutable picture of the cluster at one revision.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub cluster: ClusterState,
    pub evals: OrdMap<String, Arc<Evaluation>>,
    /// ACL policies and tokens (see `crate::acl`).
    pub acl: crate::acl::AclTable,
    /// Variables, sealed, by their store key (`keys::variable`).
    pub variables: OrdMap<String, Arc<keys::StoredVariable>>,
    pub revision: Revision,
    /// Last revision that changed anything about a job (the job, its versions, allocs or evals).
    job_index: imbl::HashMap<String, Index>,
    /// Last revision that changed an allocation placed on a node.
    node_alloc_index: imbl::HashMap<String, Index>,
    /// Last revision per object kind: `jobs`, `nodes`, `allocs`, `evals`.
    table_index: imbl::HashMap<&'static str, Index>,
    /// Recent allocation writes: revision → ids of the allocations put at it, for the many-nodes long-poll
    /// ([`Snapshot::allocs_changed`]). Bounded by [`ALLOC_CHANGES_KEPT`] ids; `alloc_changes_from` is the
    /// first revision it still covers completely.
    alloc_changes: OrdMap<Revision, Arc<[AllocChange]>>,
    alloc_changes_len: usize,
    alloc_changes_from: Revision,
}

/// How many allocation writes the change window keeps (~50 bytes each).
const ALLOC_CHANGES_KEPT: usize = 300_000;

/// One allocation write of the change window: the allocation's id and the hash of its node's id, so a
/// long-poll skips the writes on other nodes without looking the allocation up.
#[derive(Clone, Debug)]
struct AllocChange {
    /// Shared with the state's copy of the id.
    id: Arc<str>,
    node: u64,
}

/// The nodes of a many-nodes long-poll: their ids and the hashes of their ids (see [`AllocChange`]).
pub struct NodeSet<'a> {
    ids: HashSet<&'a str>,
    hashes: HashSet<u64>,
}

impl<'a> NodeSet<'a> {
    pub fn new(ids: impl IntoIterator<Item = &'a str>) -> NodeSet<'a> {
        let ids: HashSet<&str> = ids.into_iter().collect();
        let hashes = ids.iter().map(|id| node_hash(id)).collect();
        NodeSet { ids, hashes }
    }

    /// The change's allocation in `snapshot` (as of its newest write) when it is on one of the nodes.
    fn holds<'s>(&self, snapshot: &'s Snapshot, change: &AllocChange) -> Option<&'s Arc<Allocation>> {
        if !self.hashes.contains(&change.node) {
            return None;
        }
        snapshot.cluster.alloc(&change.id).filter(|alloc| self.ids.contains(alloc.node_id.as_str()))
    }
}

/// A hash of a node id, the same for every snapshot of this process (`DefaultHasher::new` has fixed keys).
fn node_hash(node_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    node_id.hash(&mut hasher);
    hasher.finish()
}

impl Snapshot {
    pub fn job_index(&self, name: &str) -> Index {
        self.job_index.get(name).copied().unwrap_or(0)
    }
    pub fn node_alloc_index(&self, node_id: &str) -> Index {
        self.node_alloc_index.get(node_id).copied().unwrap_or(0)
    }
    #[cfg(test)]
    pub fn set_node_alloc_index(&mut self, node_id: &str, index: Index) {
        self.node_alloc_index.insert(node_id.to_string(), index);
    }
    pub fn table_index(&self, table: &str) -> Index {
        self.table_index.get(table).copied().unwrap_or(0)
    }
    /// The newest revision after `index` that wrote an allocation on one of `nodes`, or `index` when there is
    /// none (the blocking condition of the many-nodes long-poll).
    pub fn nodes_alloc_index(&self, nodes: &NodeSet<'_>, index: Index) -> Index {
        if self.table_index("allocs") <= index {
            return index;
        }
        if index + 1 < self.alloc_changes_from {
            // Older than the window: ask the per-node indexes.
            return nodes.ids.iter().map(|node| self.node_alloc_index(node)).max().unwrap_or(0).max(index);
        }
        let changes = self.alloc_changes.range(index + 1..).rev();
        for (revision, changes) in changes {
            if changes.iter().any(|change| nodes.holds(self, change).is_some()) {
                return *revision;
            }
        }
        index
    }

    /// The allocations on `nodes` whose `modify_index` is above `index` (all of them for 0), in no
    /// particular order.
    pub fn allocs_changed(&self, nodes: &NodeSet<'_>, index: Index) -> Vec<Arc<Allocation>> {
        if index == 0 || index + 1 < self.alloc_changes_from {
            return nodes
                .ids
                .iter()
                .filter(|node| self.node_alloc_index(node) > index)
                .flat_map(|node| self.cluster.allocs_for_node(node))
                .filter(|alloc| alloc.modify_index > index)
                .cloned()
                .collect();
        }
        let mut allocs = Vec::new();
        for (revision, changes) in self.alloc_changes.range(index + 1..) {
            for change in changes.iter() {
                // Only the allocation's newest write counts (a later revision lists it again).
                if let Some(alloc) = nodes.holds(self, change).filter(|alloc| alloc.modify_index == *revision) {
                    allocs.push(Arc::clone(alloc));
                }
            }
        }
        allocs
    }

    /// Remembers the allocations written at `revision` and forgets the oldest beyond the bound.
    fn record_alloc_changes(&mut self, revision: Revision, changes: Vec<AllocChange>) {
        if !changes.is_empty() {
            self.alloc_changes_len += changes.len();
            self.alloc_changes.insert(revision, changes.into());
        }
        while self.alloc_changes_len > ALLOC_CHANGES_KEPT {
            let Some(oldest) = self.alloc_changes.get_min().map(|(revision, _)| *revision) else { break };
            let Some(ids) = self.alloc_changes.remove(&oldest) else { break };
            self.alloc_changes_len -= ids.len();
            self.alloc_changes_from = oldest + 1;
        }
    }

    pub fn evals_for_job(&self, job: &str) -> Vec<Arc<Evaluation>> {
        let mut evals: Vec<_> = self.evals.values().filter(|eval| eval.job_name == job).cloned().collect();
        evals.sort_by_key(|eval| std::cmp::Reverse(eval.create_index));
        evals
    }
}

/// What the view tells the rest of the server about changes it applied.
#[derive(Debug)]
pub enum ViewEvent {
    /// An evaluation is pending: the broker should queue it.
    EvalPending(Arc<Evaluation>),
    /// An evaluation is blocked, waiting for capacity.
    EvalBlocked(Arc<Evaluation>),
    /// Capacity may have grown (a node became ready, an allocation ended) at this revision: retry blocked
    /// evaluations.
    CapacityChanged(Revision),
}

pub struct View {
    current: RwLock<Snapshot>,
    revision: watch::Sender<Revision>,
    /// What the applier handed over for the transaction it is committing (see [`View::hand_off`]).
    handed_off: Mutex<HandOff>,
    /// The task following the store's change feed ([`View::stop`] ends it).
    follower: Mutex<Option<tokio::task::AbortHandle>>,
    /// Set at shutdown: blocking queries answer at once (see [`View::release_waiters`]).
    released: std::sync::atomic::AtomicBool,
}

/// What the applier handed over for its transactions.
#[derive(Default)]
struct HandOff {
    allocs: HandedOff,
    /// The applier's working state for the transaction in flight: the snapshot it checked the transaction
    /// against with the transaction's allocation writes applied, and how many writes that is.
    working: Option<(Snapshot, usize)>,
}

/// An allocation the applier writes, with the exact bytes it writes under `key`.
pub struct DecodedAlloc {
    pub key: String,
    pub value: Vec<u8>,
    pub alloc: Arc<Allocation>,
}

/// Handed-off allocations by key: the bytes written and the object they encode.
type HandedOff = HashMap<String, (Vec<u8>, Arc<Allocation>)>;

/// More handed-off allocations than this (writes the view never read back, as after a reload) are dropped.
const HANDED_OFF_MAX: usize = 200_000;

impl View {
    /// Loads everything from the store, then follows its change feed in a background task.
    /// `events` receives pending evaluations (also those found at start-up) and capacity changes.
    pub async fn start(store: Arc<dyn Store>, events: mpsc::UnboundedSender<ViewEvent>) -> Result<Arc<View>, StoreError> {
        let (snapshot, watch) = load_and_watch(store.as_ref(), &events).await?;
        let (revision, _) = watch::channel(snapshot.revision);
        let view = Arc::new(View {
            current: RwLock::new(snapshot),
            revision,
            handed_off: Mutex::default(),
            follower: Mutex::default(),
            released: Default::default(),
        });
        let follower = tokio::spawn(Arc::clone(&view).follow(store, watch, events));
        *view.follower.lock().expect("view follower lock") = Some(follower.abort_handle());
        Ok(view)
    }

    /// From now on blocking queries answer at once with what the view has, also those waiting now: a server
    /// that shuts down does not wait for them to time out.
    pub fn release_waiters(&self) {
        self.released.store(true, std::sync::atomic::Ordering::SeqCst);
        self.revision.send_modify(|_| {});
    }

    /// Stops following the store (at shutdown): the view keeps its last state, and lets go of the store.
    pub fn stop(&self) {
        if let Some(follower) = self.follower.lock().expect("view follower lock").take() {
            follower.abort();
        }
    }

    /// Applies the change feed in revision order. A watch that fell behind (or broke) is replaced by a
    /// fresh load of the whole store, so the view never stays stale.
    async fn follow(self: Arc<Self>, store: Arc<dyn Store>, mut watch: davit_store::Watch, events: mpsc::UnboundedSender<ViewEvent>) {
        let mut recent = Recent::after(*self.revision.borrow());
        loop {
            let batch = match watch.next().await {
                None => return, // the store shut down
                // The watch started before the load: skip what the load already had.
                Some(Ok(batch)) if batch.revision <= *self.revision.borrow() => continue,
                Some(Ok(batch)) => batch,
                Some(Err(error)) => {
                    tracing::warn!(%error, "store watch ended; reloading the view from the store");
                    watch = self.reload(&store, &events).await;
                    recent = Recent::after(*self.revision.borrow());
                    continue;
                }
            };
            let current = self.snapshot();
            // The batch's events wait until its snapshot is published: whoever acts on one (a worker on a
            // pending evaluation) must find the objects of the same revision in the view.
            let (batch_events, mut held) = mpsc::unbounded_channel();
            let mut handed_off = self.handed_off.lock().expect("hand-off lock");
            let adopted = adopt(&mut handed_off, &batch, &recent, &current, &batch_events);
            let (mut next, alloc_puts) = match adopted {
                Some(adopted) => adopted,
                None => {
                    let mut next = current;
                    let alloc_puts = apply_batch(&mut next, &mut handed_off.allocs, &batch, &batch_events);
                    (next, alloc_puts)
                }
            };
            drop(handed_off);
            next.record_alloc_changes(batch.revision, alloc_puts);
            next.revision = batch.revision;
            self.publish(next);
            forward(&mut held, &events);
            recent.record(batch);
        }
    }

    async fn reload(&self, store: &Arc<dyn Store>, events: &mpsc::UnboundedSender<ViewEvent>) -> davit_store::Watch {
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let (load_events, mut held) = mpsc::unbounded_channel();
            match load_and_watch(store.as_ref(), &load_events).await {
                Ok((fresh, watch)) => {
                    let revision = fresh.revision;
                    // Handed off for a state the fresh one replaces.
                    self.withdraw_handed_off();
                    self.publish(fresh);
                    forward(&mut held, events);
                    let _ = events.send(ViewEvent::CapacityChanged(revision));
                    return watch;
                }
                Err(error) => {
                    tracing::error!(%error, "reloading the view failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        let revision = snapshot.revision;
        *self.current.write().expect("view lock") = snapshot;
        self.revision.send_replace(revision);
    }

    /// The applier hands over the allocations of a transaction before committing it: when the view reads a
    /// write of one back from the store with exactly the handed-off bytes, it takes the object instead of
    /// decoding the bytes again.
    ///
    /// With them comes the applier's `working` state: the snapshot it checked the transaction against, with
    /// exactly these allocation writes applied. When the transaction comes back, the view takes that state
    /// (replaying onto it the batches it applied since its snapshot, and setting the allocations' store
    /// indexes) instead of applying every write to its own snapshot a second time.
    pub fn hand_off(&self, allocs: Vec<DecodedAlloc>, working: Option<Snapshot>) {
        let mut handed_off = self.handed_off.lock().expect("hand-off lock");
        if handed_off.allocs.len() + allocs.len() > HANDED_OFF_MAX {
            handed_off.allocs.clear();
        }
        handed_off.working = working.map(|working| (working, allocs.len()));
        for DecodedAlloc { key, value, alloc } in allocs {
            handed_off.allocs.insert(key, (value, alloc));
        }
    }

    /// Drops everything handed off (the transaction failed: the store will not return its writes).
    pub fn withdraw_handed_off(&self) {
        *self.handed_off.lock().expect("hand-off lock") = HandOff::default();
    }

    pub fn snapshot(&self) -> Snapshot {
        self.current.read().expect("view lock").clone()
    }

    /// Waits until the view has applied `revision` (read-your-writes after a store transaction).
    pub async fn wait_for(&self, revision: Revision) {
        let mut receiver = self.revision.subscribe();
        let _ = receiver.wait_for(|applied| *applied >= revision).await;
    }

    /// A blocking query: waits until `index_of(snapshot) > index` or `wait` passes (or the server shuts down,
    /// see [`View::release_waiters`]); returns the snapshot then.
    pub async fn block_until(&self, index: Index, wait: Duration, index_of: impl Fn(&Snapshot) -> Index) -> Snapshot {
        self.wait_change(index, wait, index_of, true).await
    }

    /// [`View::block_until`] for the server's own loops, which shutdown ends otherwise (they must not spin).
    pub async fn idle_until(&self, index: Index, wait: Duration, index_of: impl Fn(&Snapshot) -> Index) -> Snapshot {
        self.wait_change(index, wait, index_of, false).await
    }

    async fn wait_change(&self, index: Index, wait: Duration, index_of: impl Fn(&Snapshot) -> Index, releasable: bool) -> Snapshot {
        let mut receiver = self.revision.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let snapshot = self.snapshot();
            if index == 0 || index_of(&snapshot) > index || (releasable && self.released.load(std::sync::atomic::Ordering::SeqCst)) {
                return snapshot;
            }
            // Not held while waiting: an old snapshot keeps every version the view has replaced since alive.
            drop(snapshot);
            match tokio::time::timeout_at(deadline, receiver.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.snapshot(),
            }
        }
    }
}

/// Follows the store from its current revision on, then reads every object into a fresh snapshot (at that
/// revision or a newer one). Watching first means the watch never needs history older than the load,
/// however long the load takes; the caller skips the revisions the snapshot already holds.
async fn load_and_watch(
    store: &dyn Store,
    events: &mpsc::UnboundedSender<ViewEvent>,
) -> Result<(Snapshot, davit_store::Watch), StoreError> {
    let watch = store.watch("", store.current_revision().await? + 1).await?;
    let snapshot = load(store, events).await?;
    Ok((snapshot, watch))
}

/// Sends on the events held back until a snapshot was published.
fn forward(held: &mut mpsc::UnboundedReceiver<ViewEvent>, events: &mpsc::UnboundedSender<ViewEvent>) {
    while let Ok(event) = held.try_recv() {
        let _ = events.send(event);
    }
}

/// Reads every object from the store into a fresh snapshot.
async fn load(store: &dyn Store, events: &mpsc::UnboundedSender<ViewEvent>) -> Result<Snapshot, StoreError> {
    let range = store.range("").await?;
    let mut snapshot = Snapshot::default();
    for kv in &range.kvs {
        let _ = apply_put(&mut snapshot, &kv.key, &kv.value, kv.create_revision, kv.mod_revision, events);
    }
    snapshot.revision = range.revision;
    snapshot.alloc_changes_from = range.revision + 1;
    Ok(snapshot)
}

fn apply_put(
    snapshot: &mut Snapshot,
    key: &str,
    value: &[u8],
    create_revision: Revision,
    mod_revision: Revision,
    events: &mpsc::UnboundedSender<ViewEvent>,
) -> Option<AllocChange> {
    let object = match keys::decode(key, value, create_revision, mod_revision) {
        Ok(object) => object,
        Err(error) => {
            tracing::error!(key, %error, "skipping undecodable object in the store");
            return None;
        }
    };
    match object {
        Object::Job(job) => {
            snapshot.job_index.insert(job.spec.id(), mod_revision);
            snapshot.table_index.insert("jobs", mod_revision);
            snapshot.cluster.upsert_job(Arc::new(job));
        }
        Object::Version(job) => {
            snapshot.job_index.insert(job.spec.id(), mod_revision);
            snapshot.cluster.upsert_job_version(Arc::new(job));
        }
        Object::Node(node) => {
            let was_schedulable = snapshot.cluster.node(&node.id).is_some_and(|old| old.is_schedulable());
            if node.is_schedulable() && !was_schedulable {
                let _ = events.send(ViewEvent::CapacityChanged(mod_revision));
            }
            snapshot.table_index.insert("nodes", mod_revision);
            snapshot.cluster.upsert_node(Arc::new(node));
        }
        Object::Alloc(alloc) => return Some(apply_alloc(snapshot, Arc::new(*alloc), create_revision, mod_revision, events)),
        Object::Deployment(deployment) => {
            snapshot.job_index.insert(deployment.job_name.clone(), mod_revision);
            snapshot.table_index.insert("deployments", mod_revision);
            snapshot.cluster.upsert_deployment(Arc::new(*deployment));
        }
        Object::Namespace(namespace) => {
            snapshot.table_index.insert("namespaces", mod_revision);
            snapshot.cluster.upsert_namespace(Arc::new(namespace));
            // A new or raised quota may let blocked placements through.
            let _ = events.send(ViewEvent::CapacityChanged(mod_revision));
        }
        Object::Variable(variable) => {
            snapshot.table_index.insert("vars", mod_revision);
            snapshot.variables.insert(key.to_string(), Arc::new(*variable));
        }
        Object::AclPolicy(policy) => {
            snapshot.table_index.insert("acl", mod_revision);
            snapshot.acl.upsert_policy(policy);
        }
        Object::AclToken(stored) => {
            snapshot.table_index.insert("acl", mod_revision);
            snapshot.acl.upsert_token(*stored);
        }
        Object::AclBootstrap => snapshot.acl.bootstrapped = true,
        // Read once at start (`Shared::cluster_id`); never changes.
        Object::Meta => {}
        Object::Eval(eval) => {
            snapshot.job_index.insert(eval.job_name.clone(), mod_revision);
            snapshot.table_index.insert("evals", mod_revision);
            let eval = Arc::new(eval);
            match eval.status {
                EvalStatus::Pending => drop(events.send(ViewEvent::EvalPending(Arc::clone(&eval)))),
                EvalStatus::Blocked => drop(events.send(ViewEvent::EvalBlocked(Arc::clone(&eval)))),
                _ => {}
            }
            snapshot.evals.insert(eval.id.clone(), eval);
        }
    }
    None
}

/// The handed-off allocation written under `key`, if the write carries exactly the handed-off bytes.
fn take_handed_off(handed_off: &mut HandedOff, key: &str, value: &[u8]) -> Option<Arc<Allocation>> {
    let (bytes, _) = handed_off.get(key)?;
    if bytes.as_slice() != value {
        return None;
    }
    handed_off.remove(key).map(|(_, alloc)| alloc)
}

fn apply_alloc(
    snapshot: &mut Snapshot,
    mut alloc: Arc<Allocation>,
    create_revision: Revision,
    mod_revision: Revision,
    events: &mpsc::UnboundedSender<ViewEvent>,
) -> AllocChange {
    let stored = Arc::make_mut(&mut alloc);
    (stored.create_index, stored.modify_index) = (create_revision, mod_revision);
    let was_terminal = snapshot.cluster.alloc(&alloc.id).is_none_or(|old| old.is_terminal());
    record_alloc_write(snapshot, &alloc, was_terminal, mod_revision, events);
    let node = node_hash(&alloc.node_id);
    let id = snapshot.cluster.upsert_alloc(alloc);
    AllocChange { id, node }
}

/// What an allocation write changes besides the allocation itself: the indexes of its job, node and table,
/// and a capacity change when it ended.
fn record_alloc_write(
    snapshot: &mut Snapshot,
    alloc: &Allocation,
    was_terminal: bool,
    mod_revision: Revision,
    events: &mpsc::UnboundedSender<ViewEvent>,
) {
    if alloc.is_terminal() && !was_terminal {
        let _ = events.send(ViewEvent::CapacityChanged(mod_revision));
    }
    snapshot.job_index.insert(alloc.job_name.clone(), mod_revision);
    snapshot.node_alloc_index.insert(alloc.node_id.clone(), mod_revision);
    snapshot.table_index.insert("allocs", mod_revision);
}

/// Applies `batch` to `next` write by write, taking handed-off allocations; returns its allocation writes.
fn apply_batch(
    next: &mut Snapshot,
    handed_off: &mut HandedOff,
    batch: &WatchBatch,
    events: &mpsc::UnboundedSender<ViewEvent>,
) -> Vec<AllocChange> {
    let mut alloc_puts = Vec::new();
    for event in &batch.events {
        let kv = &event.kv;
        let put = match event.kind {
            EventKind::Put => match take_handed_off(handed_off, &kv.key, &kv.value) {
                Some(alloc) => Some(apply_alloc(next, alloc, kv.create_revision, kv.mod_revision, events)),
                None => apply_put(next, &kv.key, &kv.value, kv.create_revision, kv.mod_revision, events),
            },
            EventKind::Delete => apply_event(next, event, batch.revision, events),
        };
        alloc_puts.extend(put);
    }
    alloc_puts
}

/// Applies one write of the batch at `revision`; returns it when it wrote an allocation.
fn apply_event(
    snapshot: &mut Snapshot,
    event: &WatchEvent,
    revision: Revision,
    events: &mpsc::UnboundedSender<ViewEvent>,
) -> Option<AllocChange> {
    let kv = &event.kv;
    match event.kind {
        EventKind::Put => apply_put(snapshot, &kv.key, &kv.value, kv.create_revision, kv.mod_revision, events),
        EventKind::Delete => {
            apply_delete(snapshot, &kv.key, revision, events);
            None
        }
    }
}

fn is_alloc_write(event: &WatchEvent) -> bool {
    event.kv.key.starts_with(keys::ALLOCS)
}

/// Applies the applier's transaction `batch` by taking the applier's working state (see [`View::hand_off`]):
/// the batches applied since that state's snapshot are replayed onto it, and the transaction's allocations,
/// already in it, only get their store indexes. `None` when `batch` is not the handed-off transaction or
/// a batch since the working state's snapshot cannot be replayed: the caller applies `batch` to `current`.
fn adopt(
    handed_off: &mut HandOff,
    batch: &WatchBatch,
    recent: &Recent,
    current: &Snapshot,
    events: &mpsc::UnboundedSender<ViewEvent>,
) -> Option<(Snapshot, Vec<AllocChange>)> {
    let writes = batch.events.iter().filter(|event| is_alloc_write(event)).count();
    if writes == 0 {
        return None;
    }
    // Only the applier writes allocations: this is its transaction, so its working state is used now or never.
    let (working, working_writes) = handed_off.working.take()?;
    let exactly_handed_off = batch.events.iter().filter(|event| is_alloc_write(event)).all(|event| {
        event.kind == EventKind::Put
            && handed_off.allocs.get(&event.kv.key).is_some_and(|(bytes, _)| bytes.as_slice() == event.kv.value.as_slice())
    });
    if !exactly_handed_off || writes != working_writes || working.revision > current.revision {
        return None;
    }
    let replay = recent.since(working.revision)?;
    let mut next = working;
    // Their events went out when the view applied them to its own snapshot.
    let (replayed_events, _) = mpsc::unbounded_channel();
    for (revision, event) in replay {
        apply_event(&mut next, event, revision, &replayed_events);
    }
    let mut alloc_puts = Vec::with_capacity(writes);
    for event in &batch.events {
        if !is_alloc_write(event) {
            alloc_puts.extend(apply_event(&mut next, event, batch.revision, events));
            continue;
        }
        // Dropped first: the working state then holds the only reference, and the indexes are set in place.
        drop(handed_off.allocs.remove(&event.kv.key));
        let kv = &event.kv;
        let indexed = index_alloc(&mut next, current, kv, events);
        alloc_puts.extend(indexed.or_else(|| apply_put(&mut next, &kv.key, &kv.value, kv.create_revision, kv.mod_revision, events)));
    }
    Some((next, alloc_puts))
}

/// Sets the store indexes of an allocation the adopted working state already holds and records its write
/// (`current` holds the allocation as it was before). `None` when the state does not hold it.
fn index_alloc(next: &mut Snapshot, current: &Snapshot, kv: &KeyValue, events: &mpsc::UnboundedSender<ViewEvent>) -> Option<AllocChange> {
    let Some(ObjectKey::Alloc(id)) = keys::parse_key(&kv.key) else { return None };
    let was_terminal = current.cluster.alloc(id).is_none_or(|old| old.is_terminal());
    let (id, alloc) = next.cluster.set_alloc_indexes(id, kv.create_revision, kv.mod_revision)?;
    let alloc = Arc::clone(alloc);
    record_alloc_write(next, &alloc, was_terminal, kv.mod_revision, events);
    Some(AllocChange { id, node: node_hash(&alloc.node_id) })
}

/// The batches the view applied lately, kept to replay onto the applier's working state.
struct Recent {
    /// Each batch applied, oldest first: its revision, and its writes unless it cannot be replayed (it wrote
    /// allocations, which only the applier's own transactions do, or more keys than are worth keeping).
    batches: VecDeque<(Revision, Option<Vec<WatchEvent>>)>,
    /// Every batch applied after this revision is in `batches`.
    complete_after: Revision,
}

/// How many applied batches [`Recent`] keeps, and the most writes of one it keeps for replaying.
const RECENT_BATCHES: usize = 64;
const RECENT_BATCH_WRITES: usize = 256;

impl Recent {
    fn after(revision: Revision) -> Recent {
        Recent { batches: VecDeque::new(), complete_after: revision }
    }

    fn record(&mut self, batch: WatchBatch) {
        let replayable = batch.events.len() <= RECENT_BATCH_WRITES && !batch.events.iter().any(is_alloc_write);
        self.batches.push_back((batch.revision, replayable.then_some(batch.events)));
        if self.batches.len() > RECENT_BATCHES
            && let Some((revision, _)) = self.batches.pop_front()
        {
            self.complete_after = revision;
        }
    }

    /// The writes of the batches applied after `revision`, each with its batch's revision, in order; `None`
    /// when one of them is not kept or cannot be replayed.
    fn since(&self, revision: Revision) -> Option<Vec<(Revision, &WatchEvent)>> {
        if revision < self.complete_after {
            return None;
        }
        let mut writes = Vec::new();
        for (applied, events) in self.batches.iter().filter(|(applied, _)| *applied > revision) {
            writes.extend(events.as_ref()?.iter().map(|event| (*applied, event)));
        }
        Some(writes)
    }
}

fn apply_delete(snapshot: &mut Snapshot, key: &str, revision: Revision, events: &mpsc::UnboundedSender<ViewEvent>) {
    match keys::parse_key(key) {
        Some(ObjectKey::Job(name)) => {
            snapshot.job_index.insert(name.to_string(), revision);
            snapshot.table_index.insert("jobs", revision);
            snapshot.cluster.remove_job(name);
        }
        Some(ObjectKey::Version(name, version)) => {
            snapshot.job_index.insert(name.to_string(), revision);
            snapshot.cluster.remove_job_version(name, version);
        }
        Some(ObjectKey::Node(id)) => {
            snapshot.table_index.insert("nodes", revision);
            snapshot.cluster.remove_node(id);
        }
        Some(ObjectKey::Deployment(id)) => {
            if let Some(deployment) = snapshot.cluster.remove_deployment(id) {
                snapshot.job_index.insert(deployment.job_name.clone(), revision);
            }
            snapshot.table_index.insert("deployments", revision);
        }
        Some(ObjectKey::Alloc(id)) => {
            if let Some(alloc) = snapshot.cluster.alloc(id).cloned() {
                if !alloc.is_terminal() {
                    let _ = events.send(ViewEvent::CapacityChanged(revision));
                }
                snapshot.job_index.insert(alloc.job_name.clone(), revision);
                snapshot.node_alloc_index.insert(alloc.node_id.clone(), revision);
            }
            snapshot.table_index.insert("allocs", revision);
            snapshot.cluster.remove_alloc(id);
        }
        Some(ObjectKey::Eval(id)) => {
            if let Some(eval) = snapshot.evals.remove(id) {
                snapshot.job_index.insert(eval.job_name.clone(), revision);
            }
            snapshot.table_index.insert("evals", revision);
        }
        Some(ObjectKey::Namespace(name)) => {
            snapshot.table_index.insert("namespaces", revision);
            snapshot.cluster.remove_namespace(name);
            let _ = events.send(ViewEvent::CapacityChanged(revision));
        }
        Some(ObjectKey::Variable(..)) => {
            snapshot.table_index.insert("vars", revision);
            snapshot.variables.remove(key);
        }
        Some(ObjectKey::AclPolicy(name)) => {
            snapshot.table_index.insert("acl", revision);
            snapshot.acl.policies.remove(name);
        }
        Some(ObjectKey::AclToken(accessor_id)) => {
            snapshot.table_index.insert("acl", revision);
            snapshot.acl.remove_token(accessor_id);
        }
        Some(ObjectKey::AclBootstrap) => snapshot.acl.bootstrapped = false,
        Some(ObjectKey::Meta) => {}
        None => {}
    }
}

/// Counts used by `/v1/status`.
pub fn counts(snapshot: &Snapshot) -> HashMap<&'static str, usize> {
    HashMap::from([("nodes", snapshot.cluster.nodes().count()), ("jobs", snapshot.cluster.jobs().count())])
}

#[cfg(test)]
mod tests;
