//! The embedded backend: one redb file, one writer thread with group commit.
//!
//! ```text
//!  txn / grant / revoke ──channel──▶ writer thread ──▶ one redb write transaction per batch
//!                                        │               (Durability::Immediate, commit once)
//!                                        ├─▶ Hub::publish (watch batches, never blocks; kept as history)
//!                                        └─▶ answers every caller of the batch
//!  get / range ──spawn_blocking──▶ redb read transaction (MVCC snapshot, never waits for the writer)
//!  watch ──▶ Hub::replay of the in-memory history in steps, then Hub::try_register (race-free hand-over)
//! ```
//!
//! Tables: `kv` (key → encoded value and revisions), `meta` (current revision, next lease id), `leases`
//! (lease id → TTL in milliseconds) and `lease_keys` ((lease id, key) → (), the keys attached to each lease).
//! The history that watches replay is kept in memory only (see [`RedbOptions`]): after a reopen, a watch
//! can start from the current revision on, and one from an older revision fails with
//! [`StoreError::Compacted`]. Only this process's watchers could use that history, and all of them
//! start afresh after a restart. (Files written before the history moved to memory have a `log` table;
//! opening one drops it.)
//!
//! Reads run on tokio's blocking pool (`spawn_blocking`): a redb read is usually served from
//! its page cache, but a large `range` or a cold page would otherwise stall an async worker.
//!
//! Lease deadlines live in memory only; after a reopen every lease gets its full TTL again
//! (as etcd does). The writer thread also expires leases: it waits on its channel no longer
//! than the next deadline.

mod codec;
mod hub;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::{BoxFuture, KeyValue, LeaseId, RangeResponse, Revision, Store, StoreError, Txn, TxnResponse, Watch, WatchBatch};
use codec::decode_stored_value;
use hub::{HistoryLimits, Hub, Registration, WatchSender};
use writer::{PersistedState, Request};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// The change log of older versions of the format; dropped on open.
const OLD_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(u64, &str), ()> = TableDefinition::new("lease_keys");

const META_REVISION: &str = "revision";
/// Where older versions of the format kept the compacted revision; removed on open.
const OLD_META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";

/// Tuning of a [`RedbStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedbOptions {
    /// How many of the newest revisions to keep (in memory) for watches to replay; a watch from an older
    /// revision fails with [`StoreError::Compacted`]. Default 100 000.
    pub history_revisions: u64,
    /// Most bytes of keys and values that history may hold; the oldest revisions go first (the newest is
    /// always kept). Default 64 MiB.
    pub history_bytes: usize,
    /// How many revision batches a watcher may leave unread before it is dropped with
    /// [`StoreError::WatchLagged`]. Default 1024; at least 2 is used.
    pub watch_buffer: usize,
    /// Most bytes of the file redb keeps in memory (read cache and write buffer together). Default
    /// 32 MiB: the server holds its working state in memory anyway, and writes go to the newest pages (ids
    /// sort by time), so a bigger cache (redb's own default is 1 GiB) mostly adds to the server's footprint.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions { history_revisions: 100_000, history_bytes: 64 << 20, watch_buffer: 1024, cache_bytes: 32 << 20 }
    }
}

/// The embedded [`Store`]: a single redb file owned by one process.
///
/// Dropping it stops the writer thread (after the batch in progress), ends every watch and
/// closes the file once in-flight reads finish, so the same path can be reopened.
pub struct RedbStore {
    shared: Arc<Shared>,
    requests: Option<std_mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

/// State shared by the store handle, its writer thread and watch replay tasks.
struct Shared {
    /// The open database; `None` while the writer reopens it (see `writer::reopen`).
    db: RwLock<Option<Arc<Database>>>,
    /// Where the database file is, to reopen it.
    path: PathBuf,
    hub: Hub,
    /// Live leases and their deadlines. Invariant: holds exactly the committed leases, except
    /// for leases the writer has taken out to expire in the batch it is committing.
    leases: Mutex<HashMap<LeaseId, LiveLease>>,
    options: RedbOptions,
}

#[derive(Clone, Copy, Debug)]
struct LiveLease {
    ttl: Duration,
    deadline: Instant,
}

impl Shared {
    /// The open database, for one read or write transaction.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        db.clone().ok_or_else(|| StoreError::Backend("the database is being reopened after a failed write; try again".to_string()))
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<LeaseId, LiveLease>> {
        // Every update of the map is a single insert or remove, so a poisoned map is still consistent.
        self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if needed, with default [`RedbOptions`].
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, RedbOptions::default())
    }

    /// Opens the store at `path`, creating the file if needed. Reopening keeps every key, the revision
    /// counter and the leases (which restart their full TTL); the watch history starts at the current revision.
    pub fn open_with(path: &Path, options: RedbOptions) -> Result<RedbStore, StoreError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open { path: path.display().to_string(), source };
        let db = redb::Builder::new().set_cache_size(options.cache_bytes).create(path).map_err(|error| open_error(error.into()))?;
        let (state, leases) = initialise(&db).map_err(|error| open_error(error.into()))?;
        let now = Instant::now();
        let leases = leases.into_iter().map(|(id, ttl)| (id, LiveLease { ttl, deadline: now + ttl })).collect();
        let limits = HistoryLimits { revisions: options.history_revisions, bytes: options.history_bytes };
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            path: path.to_path_buf(),
            hub: Hub::new(state.revision, limits),
            leases: Mutex::new(leases),
            options,
        });
        let (requests, receiver) = std_mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("davit-store-writer".into())
            .spawn(move || writer::run(&writer_shared, &receiver, state))
            .map_err(|error| open_error(error.into()))?;
        Ok(RedbStore { shared, requests: Some(requests), writer: Some(writer) })
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests.send(make(reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(&self, read: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || read(&shared))
            .await
            .map_err(|error| StoreError::Backend(format!("store read task failed: {error}")))?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.shared.hub.close();
        // Closing the channel makes the writer finish its batch and exit; waiting for it
        // releases the database file before `drop` returns.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

/// Creates missing tables, drops what older formats kept, and loads the persisted counters and leases.
fn initialise(db: &Database) -> Result<(PersistedState, Vec<(LeaseId, Duration)>), redb::Error> {
    let txn = db.begin_write()?;
    let state;
    let mut leases = Vec::new();
    txn.delete_table(OLD_LOG)?;
    {
        txn.open_table(KV)?;
        txn.open_table(LEASE_KEYS)?;
        let mut meta = txn.open_table(META)?;
        meta.remove(OLD_META_COMPACTED)?;
        let read = |name: &str| -> Result<Option<u64>, redb::Error> { Ok(meta.get(name)?.map(|value| value.value())) };
        state = PersistedState { revision: read(META_REVISION)?.unwrap_or(0), next_lease: read(META_NEXT_LEASE)?.unwrap_or(1) };
        let lease_table = txn.open_table(LEASES)?;
        for entry in lease_table.iter()? {
            let (id, ttl_ms) = entry?;
            leases.push((id.value(), Duration::from_millis(ttl_ms.value())));
        }
    }
    txn.commit()?;
    Ok((state, leases))
}

/// The committed counters, read from the file.
fn persisted_state(db: &Database) -> Result<PersistedState, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let read = |name: &str| -> Result<Option<u64>, redb::Error> { Ok(meta.get(name)?.map(|value| value.value())) };
    Ok(PersistedState { revision: read(META_REVISION)?.unwrap_or(0), next_lease: read(META_NEXT_LEASE)?.unwrap_or(1) })
}

fn backend_error(context: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {error}"))
}

impl Store for RedbStore {
    fn backend_name(&self) -> &'static str {
        "redb"
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        let key = key.to_owned();
        Box::pin(self.read(move |shared| {
            let context = "reading a key";
            let txn = shared.db()?.begin_read().map_err(|e| backend_error(context, e))?;
            let table = txn.open_table(KV).map_err(|e| backend_error(context, e))?;
            let Some(record) = table.get(key.as_str()).map_err(|e| backend_error(context, e))? else {
                return Ok(None);
            };
            Ok(Some(decode_stored_value(record.value())?.into_key_value(key)))
        }))
    }

    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        let prefix = prefix.to_owned();
        Box::pin(self.read(move |shared| {
            let context = "reading a range";
            let txn = shared.db()?.begin_read().map_err(|e| backend_error(context, e))?;
            let meta = txn.open_table(META).map_err(|e| backend_error(context, e))?;
            let revision = meta.get(META_REVISION).map_err(|e| backend_error(context, e))?.map_or(0, |value| value.value());
            let table = txn.open_table(KV).map_err(|e| backend_error(context, e))?;
            let mut kvs = Vec::new();
            for entry in table.range::<&str>(prefix.as_str()..).map_err(|e| backend_error(context, e))? {
                let (key, record) = entry.map_err(|e| backend_error(context, e))?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                kvs.push(decode_stored_value(record.value())?.into_key_value(key.value().to_owned()));
            }
            Ok(RangeResponse { kvs, revision })
        }))
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        Box::pin(self.request(|reply| Request::Txn { txn, reply }))
    }

    fn watch(&self, prefix: &str, from_revision: Revision) -> BoxFuture<'_, Result<Watch, StoreError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let next = from_revision.max(1);
            let (mut batches, mut next) = self.shared.hub.replay(&prefix, next)?;
            let buffer = self.shared.options.watch_buffer.max(2);
            let (sender, receiver) = mpsc::channel(buffer);
            // The replay task holds the store only weakly, so a watcher that stops reading
            // cannot keep the database file open after the store is dropped.
            let weak_shared = Arc::downgrade(&self.shared);
            tokio::spawn(async move {
                loop {
                    for batch in batches {
                        if send_keeping_lag_slot(&sender, Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    let Some(shared) = weak_shared.upgrade() else {
                        return;
                    };
                    match shared.hub.try_register(&prefix, next, &sender) {
                        Registration::Registered | Registration::Closed => return,
                        Registration::Behind => {}
                    }
                    match shared.hub.replay(&prefix, next) {
                        Ok((step_batches, step_next)) => (batches, next) = (step_batches, step_next),
                        Err(error) => {
                            let _ = sender.send(Err(error)).await;
                            return;
                        }
                    }
                }
            });
            Ok(Watch::new(receiver))
        })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move { Ok(self.shared.hub.revision()) })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(self.request(move |reply| Request::GrantLease { ttl, reply }))
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut leases = self.shared.leases();
            let live = leases.get_mut(&lease).ok_or(StoreError::LeaseNotFound(lease))?;
            live.deadline = Instant::now() + live.ttl;
            Ok(())
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.request(move |reply| Request::RevokeLease { lease, reply }))
    }
}

/// Sends one item, waiting for room, but never takes the channel's last free slot: that one is
/// reserved for the [`StoreError::WatchLagged`] notice the hub may have to send later.
async fn send_keeping_lag_slot(sender: &WatchSender, item: Result<WatchBatch, StoreError>) -> Result<(), ()> {
    let mut permits = sender.reserve_many(2).await.map_err(|_| ())?;
    if let Some(permit) = permits.next() {
        permit.send(item);
    }
    Ok(())
}
