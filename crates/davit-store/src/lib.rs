//! A revisioned key-value store, the durable source of truth of a davit server.
//!
//! Every committed transaction gets the next revision; each key remembers the revision that created
//! and last modified it; a watch replays every change after a given revision and then follows new
//! ones, so readers can build in-memory views and block on "changes after N".
//! Leases expire keys attached to them unless kept alive.
//!
//! Backends: [`RedbStore`] (embedded, one server; see [`RedbOptions`]) and [`EtcdStore`] (an etcd cluster,
//! for several servers; see [`EtcdOptions`]). Both pass the same conformance suite: the `conformance`
//! module, built with the cargo feature `conformance` (with `etcd_testing`, real etcd clusters on loopback)
//! and run by `tests/conformance.rs` and `tests/etcd_conformance.rs`.
//!
//! A transaction whose applied branch changes nothing (a failed compare with an empty failure
//! branch, a delete of a missing key) does not get a revision, as in etcd.
//!
//! This crate must never know about jobs, nodes or allocations: keys are strings, values are bytes.
//! A write acknowledged to a caller must survive a crash of the process (`kill -9`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

#[cfg(feature = "conformance")]
pub mod conformance;
mod etcd_backend;
#[cfg(feature = "conformance")]
pub mod etcd_testing;
mod fence;
mod redb_backend;
pub mod snapshot;

pub use etcd_backend::{EtcdOptions, EtcdStore, EtcdTls, LAG_PATIENCE as ETCD_LAG_PATIENCE};
pub use fence::FencedStore;
pub use redb_backend::{RedbOptions, RedbStore};
pub use snapshot::split_writes;

/// A store revision. The first committed change has revision 1; 0 means "before anything".
pub type Revision = u64;
/// Identifies a lease.
pub type LeaseId = u64;

/// A boxed future, so `Store` stays object safe (`Arc<dyn Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stored key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value: opaque bytes.
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the transaction that last wrote the key.
    pub mod_revision: Revision,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
    /// The lease the key is attached to: it is deleted when the lease ends.
    pub lease: Option<LeaseId>,
}

/// A condition checked atomically before a transaction's operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists.
    Exists(String),
    /// The key does not exist.
    Missing(String),
    /// The key's `mod_revision` equals the given one (0 = the key does not exist).
    ModRevision(String, Revision),
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creates or replaces the key, attached to `lease` if given (the lease must exist,
    /// else the transaction fails with [`StoreError::LeaseNotFound`] and writes nothing).
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    /// Deletes the key if it exists.
    Delete { key: String },
    /// Deletes every key starting with the prefix.
    DeletePrefix { prefix: String },
}

/// If every compare holds, apply `success`, else apply `failure` (like etcd's Txn).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// The outcome of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` was applied).
    pub succeeded: bool,
    /// The store's revision after the transaction. Unchanged when the applied branch wrote nothing.
    pub revision: Revision,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or replaced; the event carries its new state.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change seen by a watch. For a delete, `kv.value` is empty and `kv.mod_revision` is the delete's revision
/// (the other fields are not meaningful: the redb backend sets them to 0 and `None`, as etcd does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// All changes of one revision that match the watch's prefix, in the order they were written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

/// A stream of changes. Dropping it cancels the watch.
pub struct Watch {
    receiver: tokio::sync::mpsc::Receiver<Result<WatchBatch, StoreError>>,
}

impl Watch {
    /// Wraps the receiving end a backend feeds; the backend ends the stream by dropping its sender.
    pub fn new(receiver: tokio::sync::mpsc::Receiver<Result<WatchBatch, StoreError>>) -> Self {
        Watch { receiver }
    }

    /// The next batch of changes; `None` when the store shut down.
    /// A watch that falls too far behind ends with [`StoreError::WatchLagged`]: re-read and watch again.
    pub async fn next(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        self.receiver.recv().await
    }
}

/// A consistent read of every key under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The store revision the read reflects: watch from `revision + 1` to continue.
    pub revision: Revision,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, connection); the message says what it was doing.
    #[error("store backend failed: {0}")]
    Backend(String),
    /// A watch asked for history the backend no longer keeps: re-read with `range` and watch from its revision.
    #[error("revision {requested} was compacted; the oldest revision still kept is {oldest}")]
    Compacted { requested: Revision, oldest: Revision },
    /// The watcher did not keep up and was dropped; this is the last item of its stream.
    #[error("the watch fell too far behind and was dropped")]
    WatchLagged,
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The store shut down.
    #[error("the store is closed")]
    Closed,
    /// A fenced write (see [`FencedStore`]) found its fence key changed: this server no longer leads.
    #[error("this server no longer leads: {0} changed")]
    Fenced(String),
    /// The store could not be opened.
    #[error("opening store at {path}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// The same error for another caller of a batch that failed as a whole (an `Open` error keeps its text).
    pub fn for_another_caller(&self) -> StoreError {
        match self {
            StoreError::Backend(message) => StoreError::Backend(message.clone()),
            StoreError::Compacted { requested, oldest } => StoreError::Compacted { requested: *requested, oldest: *oldest },
            StoreError::WatchLagged => StoreError::WatchLagged,
            StoreError::LeaseNotFound(lease) => StoreError::LeaseNotFound(*lease),
            StoreError::Closed => StoreError::Closed,
            StoreError::Fenced(key) => StoreError::Fenced(key.clone()),
            StoreError::Open { .. } => StoreError::Backend(self.to_string()),
        }
    }

    /// The backend failed because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Backend(message) if message.contains("No space left on device"))
    }
}

/// The largest transaction a backend takes (etcd's `--max-txn-ops` and `--max-request-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    /// Operations per branch.
    pub ops: usize,
    /// Bytes of keys and values together.
    pub bytes: usize,
}

/// The operations every backend provides. See the crate docs for the guarantees.
pub trait Store: Send + Sync + 'static {
    /// Short backend name for logs and `/v1/status`, e.g. `redb`.
    fn backend_name(&self) -> &'static str;
    /// The key's current state, or `None` if it does not exist.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>>;
    /// Every key starting with `prefix` (all keys for `""`), sorted by key.
    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<RangeResponse, StoreError>>;
    /// Applies the transaction atomically; returns once it is durable.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>>;
    /// Changes to keys under `prefix` with revision ≥ `from_revision`, then live changes, each revision
    /// exactly once and in order. `from_revision` 0 or 1 means from the beginning; a revision not reached
    /// yet waits for it. Fails with [`StoreError::Compacted`] if that history is no longer kept.
    fn watch(&self, prefix: &str, from_revision: Revision) -> BoxFuture<'_, Result<Watch, StoreError>>;
    /// The revision of the last committed change (0 before any).
    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>>;
    /// A lease that expires after `ttl` unless kept alive; keys put with it are deleted on expiry.
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;
    /// Restarts the lease's TTL; [`StoreError::LeaseNotFound`] if it already ended.
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Ends the lease now and deletes its keys.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The largest transaction the backend takes (`None`: no limit); a larger one fails.
    fn max_txn_size(&self) -> Option<TxnLimits> {
        None
    }
}

impl Op {
    /// Bytes of keys and values the operation carries.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::DeletePrefix { prefix } => prefix.len(),
        }
    }
}
