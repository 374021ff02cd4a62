//! The writer thread: group commit of transactions, lease grants, revokes and expiries.
//!
//! Each loop takes every request already queued (up to [`MAX_BATCH`]), applies them in order in
//! ONE redb write transaction — each transaction's compares see the writes of the ones before
//! it, and each one that writes gets its own revision — commits once with
//! `Durability::Immediate`, then publishes the watch batches and only then answers the callers.
//! If the commit fails, nothing of the batch happened and every caller gets the error.
//!
//! After a failed batch (an I/O error such as a full disk, or a panic inside redb) the writer reopens the
//! database before the next one: redb refuses every write after an I/O error until it is reopened, so without
//! this one full disk would stop all writes until the process restarted. What was committed is in the file;
//! the counters are read back from it.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::codec::{StoredValue, decode_header, encode_stored_value};
use std::sync::Arc;

use super::{KV, LEASE_KEYS, LEASES, LiveLease, META, META_NEXT_LEASE, META_REVISION, Shared, backend_error};
use crate::{Compare, EventKind, KeyValue, LeaseId, Op, Revision, StoreError, Txn, TxnResponse, WatchBatch, WatchEvent};

/// The most requests applied in one redb transaction.
const MAX_BATCH: usize = 4096;

/// A write handed to the writer thread.
pub(super) enum Request {
    Txn { txn: Txn, reply: oneshot::Sender<Result<TxnResponse, StoreError>> },
    GrantLease { ttl: Duration, reply: oneshot::Sender<Result<LeaseId, StoreError>> },
    RevokeLease { lease: LeaseId, reply: oneshot::Sender<Result<(), StoreError>> },
}

/// Counters kept in the `meta` table.
#[derive(Clone, Copy, Debug)]
pub(super) struct PersistedState {
    pub(super) revision: Revision,
    pub(super) next_lease: LeaseId,
}

/// Runs until every request sender is gone.
pub(super) fn run(shared: &Shared, requests: &Receiver<Request>, mut state: PersistedState) {
    let mut needs_reopen = false;
    loop {
        let first = match next_deadline(shared) {
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => requests.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        };
        let mut batch = Vec::new();
        match first {
            Ok(request) => batch.push(request),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let expired = take_expired_leases(shared);
        if batch.is_empty() && expired.is_empty() {
            continue;
        }
        if needs_reopen {
            match reopen(shared) {
                Ok(reopened) => {
                    tracing::info!(revision = reopened.revision, "store database reopened after a failed write");
                    (state, needs_reopen) = (reopened, false);
                }
                Err(error) => {
                    tracing::error!(%error, "the store database cannot be reopened yet");
                    shared.leases().extend(expired);
                    fail_all(batch, &error);
                    continue;
                }
            }
        }
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(shared, state, batch, expired)));
        match applied {
            Ok(Ok(next)) => state = next,
            Ok(Err(())) => needs_reopen = true,
            Err(_) => {
                // The callers of that batch see their reply dropped (the store is closed for them); the next
                // batch gets a reopened database.
                tracing::error!("the store writer panicked in a batch; reopening the database");
                needs_reopen = true;
            }
        }
    }
}

/// Closes the database (once every reader let go of it) and opens it again; returns the committed counters.
fn reopen(shared: &Shared) -> Result<PersistedState, StoreError> {
    let mut slot = shared.db.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(mut db) = slot.take() {
        // Readers hold the database only for one read; new ones wait for this lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => break drop(db),
                Err(shared_db) if Instant::now() < deadline => {
                    db = shared_db;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(shared_db) => {
                    *slot = Some(shared_db);
                    return Err(StoreError::Backend("reopening the database: a reader still holds it".to_string()));
                }
            }
        }
    }
    let db = redb::Builder::new()
        .set_cache_size(shared.options.cache_bytes)
        .create(&shared.path)
        .map_err(|e| backend_error(&format!("reopening {}", shared.path.display()), e))?;
    let state = super::persisted_state(&db).map_err(|e| backend_error("reading the counters after reopening", e))?;
    *slot = Some(Arc::new(db));
    Ok(state)
}

/// Answers every request of a batch that was not applied with `error`.
fn fail_all(batch: Vec<Request>, error: &StoreError) {
    let failed = || error.for_another_caller();
    for request in batch {
        match request {
            Request::Txn { reply, .. } => drop(reply.send(Err(failed()))),
            Request::GrantLease { reply, .. } => drop(reply.send(Err(failed()))),
            Request::RevokeLease { reply, .. } => drop(reply.send(Err(failed()))),
        }
    }
}

fn next_deadline(shared: &Shared) -> Option<Instant> {
    shared.leases().values().map(|lease| lease.deadline).min()
}

/// Removes the leases whose deadline passed; the batch being built deletes them.
fn take_expired_leases(shared: &Shared) -> Vec<(LeaseId, LiveLease)> {
    let now = Instant::now();
    let mut leases = shared.leases();
    let expired: Vec<_> = leases.iter().filter(|(_, lease)| lease.deadline <= now).map(|(id, lease)| (*id, *lease)).collect();
    for (id, _) in &expired {
        leases.remove(id);
    }
    expired
}

/// What a request turned into, to be answered after the commit.
enum Outcome {
    Txn(oneshot::Sender<Result<TxnResponse, StoreError>>, Result<TxnResponse, StoreError>),
    Grant(oneshot::Sender<Result<LeaseId, StoreError>>, Result<(LeaseId, Duration), StoreError>),
    Revoke(oneshot::Sender<Result<(), StoreError>>, Result<LeaseId, StoreError>),
}

/// Applies one batch and returns the state after it; `Err` when it failed (nothing of it was applied, every
/// caller got the error).
fn run_batch(
    shared: &Shared,
    state: PersistedState,
    batch: Vec<Request>,
    expired: Vec<(LeaseId, LiveLease)>,
) -> Result<PersistedState, ()> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut watch_batches = Vec::new();
    let result = apply_batch(shared, state, batch, &expired, &mut outcomes, &mut watch_batches);
    match result {
        Ok(new_state) => {
            {
                let mut leases = shared.leases();
                let now = Instant::now();
                for outcome in &outcomes {
                    match outcome {
                        Outcome::Grant(_, Ok((id, ttl))) => {
                            leases.insert(*id, LiveLease { ttl: *ttl, deadline: now + *ttl });
                        }
                        Outcome::Revoke(_, Ok(id)) => {
                            leases.remove(id);
                        }
                        _ => {}
                    }
                }
            }
            shared.hub.publish(new_state.revision, watch_batches);
            for outcome in outcomes {
                match outcome {
                    Outcome::Txn(reply, result) => {
                        let _ = reply.send(result);
                    }
                    Outcome::Grant(reply, result) => {
                        let _ = reply.send(result.map(|(id, _)| id));
                    }
                    Outcome::Revoke(reply, result) => {
                        let _ = reply.send(result.map(|_| ()));
                    }
                }
            }
            Ok(new_state)
        }
        Err(error) => {
            tracing::error!(%error, "store batch failed; nothing of it was applied");
            // The expired leases are still in the file: keep expiring them.
            shared.leases().extend(expired);
            let failed = || error.for_another_caller();
            for outcome in outcomes {
                match outcome {
                    Outcome::Txn(reply, _) => {
                        let _ = reply.send(Err(failed()));
                    }
                    Outcome::Grant(reply, _) => {
                        let _ = reply.send(Err(failed()));
                    }
                    Outcome::Revoke(reply, _) => {
                        let _ = reply.send(Err(failed()));
                    }
                }
            }
            Err(())
        }
    }
}

/// The open tables of one write transaction.
struct Tables<'txn> {
    kv: Table<'txn, &'static str, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    leases: Table<'txn, u64, u64>,
    lease_keys: Table<'txn, (u64, &'static str), ()>,
}

/// An error that fails the whole batch (the redb transaction is abandoned).
type Fatal = StoreError;

fn apply_batch(
    shared: &Shared,
    mut state: PersistedState,
    batch: Vec<Request>,
    expired: &[(LeaseId, LiveLease)],
    outcomes: &mut Vec<Outcome>,
    watch_batches: &mut Vec<WatchBatch>,
) -> Result<PersistedState, Fatal> {
    let context = "writing a batch";
    let mut txn: WriteTransaction = shared.db()?.begin_write().map_err(|e| backend_error(context, e))?;
    txn.set_durability(Durability::Immediate).map_err(|e| backend_error(context, e))?;
    {
        let mut tables = open_tables(&txn)?;
        for request in batch {
            match request {
                Request::Txn { txn, reply } => {
                    let result = apply_txn(&mut tables, &mut state, txn, watch_batches)?;
                    outcomes.push(Outcome::Txn(reply, result));
                }
                Request::GrantLease { ttl, reply } => {
                    let id = state.next_lease;
                    state.next_lease += 1;
                    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    tables.leases.insert(id, ttl_ms).map_err(|e| backend_error(context, e))?;
                    outcomes.push(Outcome::Grant(reply, Ok((id, ttl))));
                }
                Request::RevokeLease { lease, reply } => {
                    let result = revoke(&mut tables, &mut state, lease, watch_batches)?;
                    outcomes.push(Outcome::Revoke(reply, result.map(|()| lease)));
                }
            }
        }
        for (lease, _) in expired {
            // A lease revoked earlier in this batch is already gone; nothing to do then.
            let _ = revoke(&mut tables, &mut state, *lease, watch_batches)?;
        }
        for (name, value) in [(META_REVISION, state.revision), (META_NEXT_LEASE, state.next_lease)] {
            tables.meta.insert(name, value).map_err(|e| backend_error(context, e))?;
        }
    }
    txn.commit().map_err(|e| backend_error("committing a batch", e))?;
    Ok(state)
}

fn open_tables(txn: &WriteTransaction) -> Result<Tables<'_>, Fatal> {
    let context = "opening tables";
    Ok(Tables {
        kv: txn.open_table(KV).map_err(|e| backend_error(context, e))?,
        meta: txn.open_table(META).map_err(|e| backend_error(context, e))?,
        leases: txn.open_table(LEASES).map_err(|e| backend_error(context, e))?,
        lease_keys: txn.open_table(LEASE_KEYS).map_err(|e| backend_error(context, e))?,
    })
}

/// Applies one transaction. The outer error is fatal for the batch; the inner one is this
/// transaction's own answer (then it wrote nothing).
fn apply_txn(
    tables: &mut Tables<'_>,
    state: &mut PersistedState,
    txn: Txn,
    watch_batches: &mut Vec<WatchBatch>,
) -> Result<Result<TxnResponse, StoreError>, Fatal> {
    let mut succeeded = true;
    for compare in &txn.compares {
        if !compare_holds(tables, compare)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    // Validate before writing, so a rejected transaction leaves no trace in the batch.
    for op in &ops {
        if let Op::Put { lease: Some(lease), .. } = op {
            let found = tables.leases.get(*lease).map_err(|e| backend_error("reading a lease", e))?.is_some();
            if !found {
                return Ok(Err(StoreError::LeaseNotFound(*lease)));
            }
        }
    }
    let revision = state.revision + 1;
    let mut events = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value, lease } => events.push(put(tables, revision, key, value, lease)?),
            Op::Delete { key } => events.extend(delete(tables, revision, &key)?),
            Op::DeletePrefix { prefix } => {
                for key in keys_with_prefix(tables, &prefix)? {
                    events.extend(delete(tables, revision, &key)?);
                }
            }
        }
    }
    record_revision(state, events, watch_batches);
    Ok(Ok(TxnResponse { succeeded, revision: state.revision }))
}

/// Gives `events` the next revision (if there are any), for the watchers and the history.
fn record_revision(state: &mut PersistedState, events: Vec<WatchEvent>, watch_batches: &mut Vec<WatchBatch>) {
    if events.is_empty() {
        return;
    }
    state.revision += 1;
    watch_batches.push(WatchBatch { revision: state.revision, events });
}

/// The revisions, version and lease of `key` (its value is not copied).
fn read_key(tables: &Tables<'_>, key: &str) -> Result<Option<StoredValue>, Fatal> {
    let record = tables.kv.get(key).map_err(|e| backend_error("reading a key", e))?;
    record.map(|record| decode_header(record.value())).transpose()
}

fn compare_holds(tables: &Tables<'_>, compare: &Compare) -> Result<bool, Fatal> {
    Ok(match compare {
        Compare::Exists(key) => read_key(tables, key)?.is_some(),
        Compare::Missing(key) => read_key(tables, key)?.is_none(),
        Compare::ModRevision(key, revision) => read_key(tables, key)?.map_or(0, |stored| stored.mod_revision) == *revision,
    })
}

fn put(tables: &mut Tables<'_>, revision: Revision, key: String, value: Vec<u8>, lease: Option<LeaseId>) -> Result<WatchEvent, Fatal> {
    let context = "writing a key";
    let previous = read_key(tables, &key)?;
    let previous_lease = previous.as_ref().and_then(|stored| stored.lease);
    if previous_lease != lease {
        if let Some(old) = previous_lease {
            tables.lease_keys.remove((old, key.as_str())).map_err(|e| backend_error(context, e))?;
        }
        if let Some(new) = lease {
            tables.lease_keys.insert((new, key.as_str()), ()).map_err(|e| backend_error(context, e))?;
        }
    }
    let stored = StoredValue {
        value,
        create_revision: previous.as_ref().map_or(revision, |stored| stored.create_revision),
        mod_revision: revision,
        version: previous.as_ref().map_or(1, |stored| stored.version + 1),
        lease,
    };
    tables.kv.insert(key.as_str(), encode_stored_value(&stored).as_slice()).map_err(|e| backend_error(context, e))?;
    Ok(WatchEvent { kind: EventKind::Put, kv: stored.into_key_value(key) })
}

/// Deletes `key` if it exists, returning its delete event.
fn delete(tables: &mut Tables<'_>, revision: Revision, key: &str) -> Result<Option<WatchEvent>, Fatal> {
    let context = "deleting a key";
    let removed = tables.kv.remove(key).map_err(|e| backend_error(context, e))?.map(|record| decode_header(record.value()));
    let Some(previous) = removed.transpose()? else {
        return Ok(None);
    };
    if let Some(lease) = previous.lease {
        tables.lease_keys.remove((lease, key)).map_err(|e| backend_error(context, e))?;
    }
    Ok(Some(WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.to_owned(), value: Vec::new(), create_revision: 0, mod_revision: revision, version: 0, lease: None },
    }))
}

fn keys_with_prefix(tables: &Tables<'_>, prefix: &str) -> Result<Vec<String>, Fatal> {
    let context = "listing keys";
    let mut keys = Vec::new();
    for entry in tables.kv.range::<&str>(prefix..).map_err(|e| backend_error(context, e))? {
        let (key, _) = entry.map_err(|e| backend_error(context, e))?;
        if !key.value().starts_with(prefix) {
            break;
        }
        keys.push(key.value().to_owned());
    }
    Ok(keys)
}

/// Removes the lease and deletes its keys in one revision. The inner error says the lease was unknown.
fn revoke(
    tables: &mut Tables<'_>,
    state: &mut PersistedState,
    lease: LeaseId,
    watch_batches: &mut Vec<WatchBatch>,
) -> Result<Result<(), StoreError>, Fatal> {
    let context = "revoking a lease";
    if tables.leases.remove(lease).map_err(|e| backend_error(context, e))?.is_none() {
        return Ok(Err(StoreError::LeaseNotFound(lease)));
    }
    let mut keys = Vec::new();
    for entry in tables.lease_keys.range::<(u64, &str)>((lease, "")..(lease + 1, "")).map_err(|e| backend_error(context, e))? {
        let (attached, _) = entry.map_err(|e| backend_error(context, e))?;
        keys.push(attached.value().1.to_owned());
    }
    let revision = state.revision + 1;
    let mut events = Vec::new();
    for key in keys {
        events.extend(delete(tables, revision, &key)?);
    }
    record_revision(state, events, watch_batches);
    Ok(Ok(()))
}
