//! The backend-independent test suite: every [`Store`] backend must pass every case.
//!
//! Each case is a `pub async fn` taking a fresh, empty store (and, where the case depends on a
//! backend limit, the [`BackendLimits`] it was configured with). Cases panic on failure, like
//! test assertions. A backend's `tests/conformance.rs` runs each case as its own `#[tokio::test]`
//! (multi-threaded runtime recommended); [`run_all`] runs them in sequence.
//!
//! Cases await watch events with a generous timeout rather than sleeping, so they stay fast on a
//! busy machine; lease cases use TTLs of a few hundred milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::{Compare, EventKind, KeyValue, Op, Revision, Store, StoreError, Txn, Watch, WatchBatch};

/// Limits the backend under test was configured with; cases that exercise them write just past them.
#[derive(Clone, Copy, Debug)]
pub struct BackendLimits {
    /// How many revisions of change log the backend keeps; keep it small (≤ 1000) for the suite.
    pub history_revisions: u64,
    /// How many unread batches a watcher may have before it is dropped; keep it small (≤ 200).
    pub watch_buffer: usize,
    /// How long a watcher with a full buffer may go without reading before it is dropped (redb: at once; etcd
    /// sends bursts larger than the buffer, which a watcher that reads gets time to take).
    pub lag_patience: Duration,
}

/// How long a case waits for an event that must come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs every case, each against a fresh store from `make`.
pub async fn run_all(make: impl Fn() -> Arc<dyn Store>, limits: BackendLimits) {
    revisions_increase_by_one_per_writing_txn(make()).await;
    key_revision_and_version_bookkeeping(make()).await;
    compare_exists_and_missing(make()).await;
    compare_mod_revision(make()).await;
    multi_key_atomicity(make()).await;
    concurrent_compare_and_set_counter(make()).await;
    range_by_prefix_is_sorted_and_consistent(make()).await;
    delete_prefix(make()).await;
    watch_replays_then_follows_live_without_gaps(make()).await;
    watches_opened_during_writes_see_every_revision_once(make()).await;
    watches_match_a_model_of_the_log(make()).await;
    watch_filters_by_prefix(make()).await;
    watch_from_future_revision_waits(make()).await;
    watch_from_compacted_revision_fails(make(), limits).await;
    lagged_watcher_is_dropped_others_continue(make(), limits).await;
    lease_expiry_deletes_keys(make()).await;
    keep_alive_prevents_expiry(make()).await;
    revoke_lease_deletes_keys(make()).await;
    put_with_unknown_lease_fails(make()).await;
    rewriting_a_key_without_lease_detaches_it(make()).await;
    one_key_twice_in_a_txn_ends_as_the_last_op_left_it(make()).await;
}

/// One `#[tokio::test]` per case, for a backend's `tests/` file: `$fresh` is a call returning a future of
/// `Option<(Arc<dyn Store>, guard)>` — a fresh store and what must live as long as the test (`None`: skipped) —
/// and `$limits` the [`BackendLimits`] it was made with.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr, $limits:expr) => {
        $crate::conformance_tests!(@cases $fresh;
            revisions_increase_by_one_per_writing_txn, key_revision_and_version_bookkeeping, compare_exists_and_missing,
            compare_mod_revision, multi_key_atomicity, concurrent_compare_and_set_counter,
            range_by_prefix_is_sorted_and_consistent, delete_prefix, watch_replays_then_follows_live_without_gaps,
            watches_opened_during_writes_see_every_revision_once, watches_match_a_model_of_the_log, watch_filters_by_prefix,
            watch_from_future_revision_waits, lease_expiry_deletes_keys, keep_alive_prevents_expiry, revoke_lease_deletes_keys,
            put_with_unknown_lease_fails, rewriting_a_key_without_lease_detaches_it, one_key_twice_in_a_txn_ends_as_the_last_op_left_it);
        $crate::conformance_tests!(@limited $fresh, $limits;
            watch_from_compacted_revision_fails, lagged_watcher_is_dropped_others_continue);
    };
    (@cases $fresh:expr; $($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((store, _guard)) = $fresh.await else { return };
            $crate::conformance::$name(store).await;
        }
    )*};
    (@limited $fresh:expr, $limits:expr; $($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((store, _guard)) = $fresh.await else { return };
            $crate::conformance::$name(store, $limits).await;
        }
    )*};
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.to_owned(), value: value.as_bytes().to_vec(), lease: None }
}

fn put_leased(key: &str, value: &str, lease: u64) -> Op {
    Op::Put { key: key.to_owned(), value: value.as_bytes().to_vec(), lease: Some(lease) }
}

fn delete(key: &str) -> Op {
    Op::Delete { key: key.to_owned() }
}

fn ops(success: Vec<Op>) -> Txn {
    Txn { compares: Vec::new(), success, failure: Vec::new() }
}

async fn write(store: &dyn Store, success: Vec<Op>) -> Revision {
    let response = store.txn(ops(success)).await.expect("txn");
    assert!(response.succeeded);
    response.revision
}

async fn get(store: &dyn Store, key: &str) -> Option<KeyValue> {
    store.get(key).await.expect("get")
}

async fn next_batch(watch: &mut Watch) -> WatchBatch {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Ok(batch))) => batch,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// Asserts that nothing arrives on the watch for a short while.
async fn assert_quiet(watch: &mut Watch) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), watch.next()).await {
        panic!("expected no watch event, got {item:?}");
    }
}

fn summary(batch: &WatchBatch) -> Vec<(EventKind, String, Vec<u8>)> {
    batch.events.iter().map(|event| (event.kind, event.kv.key.clone(), event.kv.value.clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// Revisions and bookkeeping.

/// Each transaction that writes gets exactly the next revision; one that writes nothing (a failed
/// compare with an empty failure branch, a delete of a missing key) leaves the revision alone.
pub async fn revisions_increase_by_one_per_writing_txn(store: Arc<dyn Store>) {
    let start = store.current_revision().await.expect("revision");
    assert_eq!(start, 0, "a fresh store starts at revision 0");
    for step in 1..=5 {
        let revision = write(&*store, vec![put(&format!("k{step}"), "v")]).await;
        assert_eq!(revision, step);
        assert_eq!(store.current_revision().await.expect("revision"), step);
    }
    let noop = store.txn(ops(vec![delete("missing")])).await.expect("txn");
    assert_eq!(noop.revision, 5, "deleting a missing key writes nothing");
    let failed = store
        .txn(Txn { compares: vec![Compare::Exists("missing".into())], success: vec![put("x", "1")], failure: Vec::new() })
        .await
        .expect("txn");
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, 5);
    assert_eq!(write(&*store, vec![put("k1", "again")]).await, 6);
    assert_eq!(store.current_revision().await.expect("revision"), 6);
}

/// `create_revision`, `mod_revision` and `version` follow etcd's rules, including re-creation.
pub async fn key_revision_and_version_bookkeeping(store: Arc<dyn Store>) {
    let created = write(&*store, vec![put("key", "one")]).await;
    let kv = get(&*store, "key").await.expect("key exists");
    assert_eq!(
        kv,
        KeyValue { key: "key".into(), value: b"one".to_vec(), create_revision: created, mod_revision: created, version: 1, lease: None }
    );
    write(&*store, vec![put("other", "x")]).await;
    let modified = write(&*store, vec![put("key", "two")]).await;
    let kv = get(&*store, "key").await.expect("key exists");
    assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version), (&b"two"[..], created, modified, 2));
    write(&*store, vec![delete("key")]).await;
    assert_eq!(get(&*store, "key").await, None);
    let recreated = write(&*store, vec![put("key", "three")]).await;
    let kv = get(&*store, "key").await.expect("key exists");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (recreated, recreated, 1));
    assert_eq!(get(&*store, "never").await, None);
}

// ---------------------------------------------------------------------------------------------
// Transactions.

/// Operations apply in order: a key written twice keeps the second value, a put then a delete leaves it gone,
/// a delete then a put leaves it written, in one revision.
pub async fn one_key_twice_in_a_txn_ends_as_the_last_op_left_it(store: Arc<dyn Store>) {
    write(&*store, vec![put("gone", "0"), put("back", "0")]).await;
    let revision =
        write(&*store, vec![put("twice", "1"), put("twice", "2"), put("gone", "1"), delete("gone"), delete("back"), put("back", "1")])
            .await;
    let twice = get(&*store, "twice").await.expect("twice");
    assert_eq!((twice.value.as_slice(), twice.mod_revision), (&b"2"[..], revision));
    assert_eq!(get(&*store, "gone").await, None);
    assert_eq!(get(&*store, "back").await.expect("back").value, b"1");
    assert_eq!(store.current_revision().await.expect("revision"), revision);
}

/// `Exists` and `Missing` choose the branch, and the failure branch is applied when they fail.
pub async fn compare_exists_and_missing(store: Arc<dyn Store>) {
    let create_if_missing = |value: &str| Txn {
        compares: vec![Compare::Missing("lock".into())],
        success: vec![put("lock", value)],
        failure: vec![put("lost", value)],
    };
    let first = store.txn(create_if_missing("a")).await.expect("txn");
    assert!(first.succeeded);
    let second = store.txn(create_if_missing("b")).await.expect("txn");
    assert!(!second.succeeded, "the key exists now");
    assert_eq!(second.revision, first.revision + 1, "the failure branch wrote");
    assert_eq!(get(&*store, "lock").await.expect("lock").value, b"a");
    assert_eq!(get(&*store, "lost").await.expect("lost").value, b"b");

    let exists = store
        .txn(Txn { compares: vec![Compare::Exists("lock".into())], success: vec![delete("lock")], failure: vec![put("f", "1")] })
        .await
        .expect("txn");
    assert!(exists.succeeded);
    assert_eq!(get(&*store, "lock").await, None);
    let exists_again = store
        .txn(Txn { compares: vec![Compare::Exists("lock".into())], success: vec![put("s", "1")], failure: vec![put("f", "1")] })
        .await
        .expect("txn");
    assert!(!exists_again.succeeded);
    assert!(get(&*store, "f").await.is_some());
    assert!(get(&*store, "s").await.is_none());

    // Several compares: all must hold.
    let mixed = store
        .txn(Txn {
            compares: vec![Compare::Exists("lost".into()), Compare::Missing("lock".into()), Compare::Exists("lock".into())],
            success: vec![put("s", "1")],
            failure: Vec::new(),
        })
        .await
        .expect("txn");
    assert!(!mixed.succeeded);
    assert!(get(&*store, "s").await.is_none());
}

/// `ModRevision` is compare-and-set: it holds only for the current `mod_revision` (0 = missing).
pub async fn compare_mod_revision(store: Arc<dyn Store>) {
    let cas = |revision: Revision, value: &str| Txn {
        compares: vec![Compare::ModRevision("cas".into(), revision)],
        success: vec![put("cas", value)],
        failure: vec![put("cas-failures", value)],
    };
    let created = store.txn(cas(0, "v1")).await.expect("txn");
    assert!(created.succeeded, "mod revision 0 matches a missing key");
    let stale = store.txn(cas(0, "v2")).await.expect("txn");
    assert!(!stale.succeeded);
    assert_eq!(get(&*store, "cas-failures").await.expect("failure branch").value, b"v2");
    let current = get(&*store, "cas").await.expect("cas").mod_revision;
    assert_eq!(current, created.revision);
    let updated = store.txn(cas(current, "v3")).await.expect("txn");
    assert!(updated.succeeded);
    let outdated = store.txn(cas(current, "v4")).await.expect("txn");
    assert!(!outdated.succeeded);
    assert_eq!(get(&*store, "cas").await.expect("cas").value, b"v3");
}

/// All writes of a transaction share one revision and happen together or not at all.
pub async fn multi_key_atomicity(store: Arc<dyn Store>) {
    write(&*store, vec![put("gone", "x")]).await;
    let revision = write(&*store, vec![put("m/a", "1"), put("m/b", "2"), delete("gone"), put("m/c", "3")]).await;
    for key in ["m/a", "m/b", "m/c"] {
        assert_eq!(get(&*store, key).await.expect("written").mod_revision, revision);
    }
    assert_eq!(get(&*store, "gone").await, None);
    let range = store.range("m/").await.expect("range");
    assert_eq!(range.kvs.len(), 3);

    let failed = store
        .txn(Txn { compares: vec![Compare::Missing("m/a".into())], success: vec![put("n/a", "1"), put("n/b", "2")], failure: Vec::new() })
        .await
        .expect("txn");
    assert!(!failed.succeeded);
    assert!(store.range("n/").await.expect("range").kvs.is_empty());

    let mut watch = store.watch("", revision).await.expect("watch");
    let batch = next_batch(&mut watch).await;
    assert_eq!(batch.revision, revision);
    assert_eq!(
        summary(&batch),
        vec![
            (EventKind::Put, "m/a".into(), b"1".to_vec()),
            (EventKind::Put, "m/b".into(), b"2".to_vec()),
            (EventKind::Delete, "gone".into(), Vec::new()),
            (EventKind::Put, "m/c".into(), b"3".to_vec()),
        ],
        "one batch holds the revision's events in write order"
    );
}

/// Many tasks increment one counter with compare-and-set retries: no update is lost, which needs
/// every compare to see all transactions committed (or batched) before it.
pub async fn concurrent_compare_and_set_counter(store: Arc<dyn Store>) {
    const TASKS: u64 = 16;
    const INCREMENTS: u64 = 10;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get("counter").await.expect("get");
                    let (value, revision) = current
                        .map_or((0, 0), |kv| (String::from_utf8(kv.value).expect("utf8").parse::<u64>().expect("number"), kv.mod_revision));
                    let response = store
                        .txn(Txn {
                            compares: vec![Compare::ModRevision("counter".into(), revision)],
                            success: vec![put("counter", &(value + 1).to_string())],
                            failure: Vec::new(),
                        })
                        .await
                        .expect("txn");
                    if response.succeeded {
                        break;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let counter = get(&*store, "counter").await.expect("counter");
    assert_eq!(counter.value, (TASKS * INCREMENTS).to_string().into_bytes());
    assert_eq!(counter.version, TASKS * INCREMENTS);
    assert_eq!(store.current_revision().await.expect("revision"), TASKS * INCREMENTS);
}

// ---------------------------------------------------------------------------------------------
// Reads.

/// `range` returns exactly the keys under the prefix, sorted, with the revision it read at.
pub async fn range_by_prefix_is_sorted_and_consistent(store: Arc<dyn Store>) {
    let empty = store.range("").await.expect("range");
    assert_eq!((empty.kvs.len(), empty.revision), (0, 0));
    for key in ["r/c", "r/a", "q", "rx", "r/b/deep", "r/b", "r"] {
        write(&*store, vec![put(key, key)]).await;
    }
    let range = store.range("r/").await.expect("range");
    let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["r/a", "r/b", "r/b/deep", "r/c"]);
    assert_eq!(range.revision, 7);
    for kv in &range.kvs {
        assert_eq!(kv.value, kv.key.as_bytes());
    }
    let all = store.range("").await.expect("range");
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["q", "r", "r/a", "r/b", "r/b/deep", "r/c", "rx"]);
    assert!(store.range("zzz").await.expect("range").kvs.is_empty());

    // A range taken while writers run is a snapshot: every key it sees is at or before its revision.
    let writer_store = Arc::clone(&store);
    let writer = tokio::spawn(async move {
        for index in 0..50 {
            write(&*writer_store, vec![put(&format!("w/{index:03}"), "x"), put("w/last", &index.to_string())]).await;
        }
    });
    for _ in 0..10 {
        let range = store.range("w/").await.expect("range");
        for kv in &range.kvs {
            assert!(kv.mod_revision <= range.revision);
        }
        if let Some(last) = range.kvs.iter().find(|kv| kv.key == "w/last") {
            let written = range.kvs.len() - 1;
            assert_eq!(String::from_utf8(last.value.clone()).expect("utf8"), (written - 1).to_string());
        }
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer");
}

/// `DeletePrefix` deletes every key under the prefix, in one revision, one delete event each.
pub async fn delete_prefix(store: Arc<dyn Store>) {
    write(&*store, vec![put("p/2", "b"), put("p/1", "a"), put("p/3/x", "c"), put("p", "parent"), put("q/1", "other")]).await;
    let before = store.current_revision().await.expect("revision");
    let mut watch = store.watch("", before + 1).await.expect("watch");
    let revision = write(&*store, vec![Op::DeletePrefix { prefix: "p/".into() }]).await;
    assert_eq!(revision, before + 1);
    let batch = next_batch(&mut watch).await;
    assert_eq!(batch.revision, revision);
    assert_eq!(
        summary(&batch),
        vec![
            (EventKind::Delete, "p/1".into(), Vec::new()),
            (EventKind::Delete, "p/2".into(), Vec::new()),
            (EventKind::Delete, "p/3/x".into(), Vec::new()),
        ]
    );
    for event in &batch.events {
        assert_eq!(event.kv.mod_revision, revision, "a delete event carries the delete's revision");
    }
    assert!(store.range("p/").await.expect("range").kvs.is_empty());
    assert!(get(&*store, "p").await.is_some());
    assert!(get(&*store, "q/1").await.is_some());
    let nothing = store.txn(ops(vec![Op::DeletePrefix { prefix: "p/".into() }])).await.expect("txn");
    assert_eq!(nothing.revision, revision, "deleting nothing writes nothing");
    write(&*store, vec![Op::DeletePrefix { prefix: String::new() }]).await;
    assert!(store.range("").await.expect("range").kvs.is_empty(), "the empty prefix deletes everything");
}

// ---------------------------------------------------------------------------------------------
// Watches.

/// A watch from an old revision replays history and then follows live writes from many
/// concurrent writers: it sees every revision exactly once, in order, with the right event.
pub async fn watch_replays_then_follows_live_without_gaps(store: Arc<dyn Store>) {
    const WRITERS: usize = 8;
    const WRITES_PER_WRITER: usize = 40;
    for index in 0..20 {
        write(&*store, vec![put(&format!("pre/{index}"), "x")]).await;
    }
    let from = 5;
    let mut expected: BTreeMap<Revision, String> = BTreeMap::new();
    for revision in from..=20 {
        expected.insert(revision, format!("pre/{}", revision - 1));
    }
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for index in 0..WRITES_PER_WRITER {
                let key = format!("live/{writer}/{index}");
                let revision = write(&*store, vec![put(&key, "y")]).await;
                written.push((revision, key));
            }
            written
        }));
    }
    // Open the watch while the writers run, so the replay-to-live hand-over is exercised, and
    // read it concurrently with them, as a real watcher would.
    tokio::task::yield_now().await;
    let last = 20 + (WRITERS * WRITES_PER_WRITER) as Revision;
    let mut watch = store.watch("", from).await.expect("watch");
    let reader = tokio::spawn(async move {
        let mut seen = BTreeMap::new();
        let mut previous = from - 1;
        while previous < last {
            let batch = next_batch(&mut watch).await;
            assert_eq!(batch.revision, previous + 1, "no gap and no duplicate");
            assert_eq!(batch.events.len(), 1);
            assert_eq!(batch.events[0].kind, EventKind::Put);
            assert_eq!(batch.events[0].kv.mod_revision, batch.revision);
            seen.insert(batch.revision, batch.events[0].kv.key.clone());
            previous = batch.revision;
        }
        (seen, watch)
    });
    for writer in writers {
        expected.extend(writer.await.expect("writer"));
    }
    assert_eq!(expected.len() as u64, last - from + 1, "writers got distinct revisions");
    let (seen, mut watch) = reader.await.expect("reader");
    assert_eq!(seen, expected);
    assert_quiet(&mut watch).await;
    let after = write(&*store, vec![put("after", "z")]).await;
    assert_eq!(next_batch(&mut watch).await.revision, after);
}

/// Watches opened at many moments while writers run, each from a different past revision, all
/// see a gap-free, duplicate-free sequence up to the last write (stresses the replay-to-live hand-over).
pub async fn watches_opened_during_writes_see_every_revision_once(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const WRITES_PER_WRITER: u64 = 60;
    const WATCHES: u64 = 24;
    let last = WRITERS as u64 * WRITES_PER_WRITER;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for index in 0..WRITES_PER_WRITER {
                write(&*store, vec![put(&format!("h/{writer}/{index}"), "x")]).await;
            }
        }));
    }
    let mut readers = Vec::new();
    for watch_index in 0..WATCHES {
        let current = store.current_revision().await.expect("revision");
        let from = current.saturating_sub(watch_index % 7) + watch_index % 2;
        let mut watch = store.watch("h/", from).await.expect("watch");
        readers.push(tokio::spawn(async move {
            let mut previous = from.max(1) - 1;
            while previous < last {
                let batch = next_batch(&mut watch).await;
                assert_eq!(batch.revision, previous + 1, "watch from {from}: no gap and no duplicate");
                previous = batch.revision;
            }
        }));
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    for reader in readers {
        reader.await.expect("reader");
    }
}

/// One committed revision of the model log: (is put, key, value) per change, in written order.
type ModelBatch = (Revision, Vec<(bool, String, String)>);

/// Random transactions against a model of the change log, with watches opened at random points (from past,
/// current and future revisions, on nested prefixes) while the writes go on: each watch sees exactly the
/// model's batches for its prefix from its revision, each revision once, events in written order.
pub async fn watches_match_a_model_of_the_log(store: Arc<dyn Store>) {
    const WRITES: u64 = 120;
    const PREFIXES: [&str; 3] = ["m/", "m/a/", "m/b/"];
    // A deterministic xorshift, so a failure repeats.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let base = store.current_revision().await.expect("revision");
    // The model: every committed revision with its (is put, key, value) changes, and the current keys.
    let mut log: Vec<ModelBatch> = Vec::new();
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut readers = Vec::new();
    for write_index in 0..WRITES {
        if random(4) == 0 {
            let prefix = PREFIXES[random(3) as usize];
            let current = base + write_index;
            let from = (current + 2).saturating_sub(random(12));
            let mut watch = store.watch(prefix, from).await.expect("watch");
            readers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let batch = next_batch(&mut watch).await;
                    let end = batch.events.iter().any(|event| event.kv.key.ends_with("/end"));
                    seen.push(batch);
                    if end {
                        return (prefix.to_owned(), from, seen);
                    }
                }
            }));
        }
        let mut changes = Vec::new();
        let mut ops = Vec::new();
        let mut touched = BTreeSet::new();
        for _ in 0..=random(3) {
            let key = format!("{}{}", ["m/a/", "m/b/", "m/", "n/"][random(4) as usize], random(6));
            if !touched.insert(key.clone()) {
                continue;
            }
            if live.contains(&key) && random(3) == 0 {
                live.remove(&key);
                ops.push(delete(&key));
                changes.push((false, key, String::new()));
            } else {
                let value = format!("v{write_index}");
                live.insert(key.clone());
                ops.push(put(&key, &value));
                changes.push((true, key, value));
            }
        }
        let revision = write(&*store, ops).await;
        log.push((revision, changes));
    }
    let end = write(&*store, vec![put("m/a/end", "end"), put("m/b/end", "end")]).await;
    log.push((end, vec![(true, "m/a/end".to_owned(), "end".to_owned()), (true, "m/b/end".to_owned(), "end".to_owned())]));
    assert!(!readers.is_empty(), "the case opened no watch");
    for reader in readers {
        let (prefix, from, seen) = reader.await.expect("reader");
        let expected: Vec<ModelBatch> = log
            .iter()
            .filter(|(revision, _)| *revision >= from.max(1))
            .map(|(revision, changes)| {
                (*revision, changes.iter().filter(|(_, key, _)| key.starts_with(&prefix)).cloned().collect::<Vec<_>>())
            })
            .filter(|(_, changes)| !changes.is_empty())
            .collect();
        let got: Vec<ModelBatch> = seen
            .iter()
            .map(|batch| {
                let changes = batch
                    .events
                    .iter()
                    .map(|event| {
                        (matches!(event.kind, EventKind::Put), event.kv.key.clone(), String::from_utf8_lossy(&event.kv.value).into_owned())
                    })
                    .collect();
                (batch.revision, changes)
            })
            .collect();
        assert_eq!(got, expected, "watch of {prefix:?} from revision {from}");
    }
}

/// A watch sees only keys under its prefix, and only revisions that touched them.
pub async fn watch_filters_by_prefix(store: Arc<dyn Store>) {
    let mut watch = store.watch("a/", 0).await.expect("watch");
    let first = write(&*store, vec![put("a/1", "1")]).await;
    write(&*store, vec![put("b/1", "1")]).await;
    write(&*store, vec![put("a", "not under a/")]).await;
    let mixed = write(&*store, vec![put("b/2", "2"), put("a/2", "2"), delete("b/1")]).await;
    let deleted = write(&*store, vec![delete("a/1")]).await;

    let batch = next_batch(&mut watch).await;
    assert_eq!((batch.revision, summary(&batch)), (first, vec![(EventKind::Put, "a/1".into(), b"1".to_vec())]));
    let batch = next_batch(&mut watch).await;
    assert_eq!((batch.revision, summary(&batch)), (mixed, vec![(EventKind::Put, "a/2".into(), b"2".to_vec())]));
    let batch = next_batch(&mut watch).await;
    assert_eq!((batch.revision, summary(&batch)), (deleted, vec![(EventKind::Delete, "a/1".into(), Vec::new())]));
    assert_quiet(&mut watch).await;

    // The same filtering applies to replayed history.
    let mut replay = store.watch("b/", 1).await.expect("watch");
    let batch = next_batch(&mut replay).await;
    assert_eq!(summary(&batch), vec![(EventKind::Put, "b/1".into(), b"1".to_vec())]);
    let batch = next_batch(&mut replay).await;
    assert_eq!(batch.revision, mixed);
    assert_eq!(summary(&batch), vec![(EventKind::Put, "b/2".into(), b"2".to_vec()), (EventKind::Delete, "b/1".into(), Vec::new())]);
}

/// A watch from a revision not reached yet waits for it and skips everything before.
pub async fn watch_from_future_revision_waits(store: Arc<dyn Store>) {
    write(&*store, vec![put("k", "0")]).await;
    let mut watch = store.watch("", 4).await.expect("watch");
    assert_quiet(&mut watch).await;
    write(&*store, vec![put("k", "2")]).await;
    write(&*store, vec![put("k", "3")]).await;
    write(&*store, vec![put("k", "4")]).await;
    let batch = next_batch(&mut watch).await;
    assert_eq!((batch.revision, batch.events[0].kv.value.as_slice()), (4, &b"4"[..]));
}

/// Watching from a revision the backend no longer keeps fails with `Compacted`; recent ones work.
pub async fn watch_from_compacted_revision_fails(store: Arc<dyn Store>, limits: BackendLimits) {
    let total = limits.history_revisions + 20;
    write_many(&store, total as usize, "c/").await;
    assert_eq!(store.current_revision().await.expect("revision"), total);
    for from in [0, 1, 10] {
        match store.watch("", from).await {
            Err(StoreError::Compacted { oldest, .. }) => assert!(oldest > 10 && oldest <= total - limits.history_revisions + 1),
            Err(error) => panic!("expected Compacted, got {error}"),
            Ok(_) => panic!("expected Compacted for a watch from revision {from}"),
        }
    }
    let from = total - 2;
    let mut watch = store.watch("", from).await.expect("recent revisions are kept");
    for revision in from..=total {
        assert_eq!(next_batch(&mut watch).await.revision, revision);
    }
}

async fn write_many(store: &Arc<dyn Store>, count: usize, prefix: &str) -> BTreeSet<Revision> {
    const WRITERS: usize = 16;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(store);
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for index in (writer..count).step_by(WRITERS) {
                revisions.push(write(&*store, vec![put(&format!("{prefix}{index}"), "x")]).await);
            }
            revisions
        }));
    }
    let mut revisions = BTreeSet::new();
    for task in tasks {
        revisions.extend(task.await.expect("writer"));
    }
    revisions
}

/// A watcher that stops reading is dropped with `WatchLagged` after a gap-free prefix of the
/// changes, while a watcher that keeps up sees every change and the writers never stall.
pub async fn lagged_watcher_is_dropped_others_continue(store: Arc<dyn Store>, limits: BackendLimits) {
    let total = (limits.watch_buffer * 3 + 50) as u64;
    let mut slow = store.watch("lag/", 1).await.expect("watch");
    let mut fast = store.watch("lag/", 1).await.expect("watch");
    let reader = tokio::spawn(async move {
        let mut revisions = Vec::new();
        while (revisions.len() as u64) < total {
            revisions.push(next_batch(&mut fast).await.revision);
        }
        revisions
    });
    let written = write_many(&store, total as usize, "lag/").await;
    let seen = reader.await.expect("fast reader");
    assert_eq!(seen, written.into_iter().collect::<Vec<_>>(), "the fast watcher saw everything in order");
    // The slow watcher has not read anything yet; it goes on not reading past the backend's patience (a
    // behaviour in time: waiting is the point here).
    tokio::time::sleep(limits.lag_patience * 2).await;

    let mut received = 0;
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, slow.next()).await.expect("the slow watch must end") {
            Some(Ok(batch)) => {
                received += 1;
                assert_eq!(batch.revision, received, "a lagged watcher still gets a gap-free prefix");
            }
            Some(Err(StoreError::WatchLagged)) => break,
            Some(Err(error)) => panic!("expected WatchLagged, got {error}"),
            None => panic!("the slow watch ended without WatchLagged"),
        }
    }
    assert!(received < total, "the slow watcher was dropped before the end");
    assert!(tokio::time::timeout(EVENT_TIMEOUT, slow.next()).await.expect("ends").is_none(), "nothing after WatchLagged");
}

// ---------------------------------------------------------------------------------------------
// Leases.

/// When a lease expires its keys are deleted in a normal revision that watchers see.
pub async fn lease_expiry_deletes_keys(store: Arc<dyn Store>) {
    let lease = store.grant_lease(Duration::from_millis(300)).await.expect("grant");
    let mut watch = store.watch("l/", 0).await.expect("watch");
    write(&*store, vec![put_leased("l/a", "1", lease), put_leased("l/b", "2", lease), put("l/keep", "3")]).await;
    assert_eq!(get(&*store, "l/a").await.expect("l/a").lease, Some(lease));
    let batch = next_batch(&mut watch).await;
    assert_eq!(batch.events.len(), 3);
    let expiry = next_batch(&mut watch).await;
    let mut deleted: Vec<_> = expiry.events.iter().map(|event| (event.kind, event.kv.key.as_str())).collect();
    deleted.sort_by_key(|(_, key)| *key);
    assert_eq!(deleted, [(EventKind::Delete, "l/a"), (EventKind::Delete, "l/b")]);
    assert_eq!(get(&*store, "l/a").await, None);
    assert_eq!(get(&*store, "l/b").await, None);
    assert!(get(&*store, "l/keep").await.is_some());
    assert!(matches!(store.keep_alive(lease).await, Err(StoreError::LeaseNotFound(id)) if id == lease));
    assert!(matches!(
        store.txn(ops(vec![put_leased("l/c", "x", lease)])).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
}

/// Keep-alives hold a lease past its TTL; once they stop, it expires.
pub async fn keep_alive_prevents_expiry(store: Arc<dyn Store>) {
    let ttl = Duration::from_millis(400);
    let lease = store.grant_lease(ttl).await.expect("grant");
    let written = write(&*store, vec![put_leased("ka", "1", lease)]).await;
    let mut watch = store.watch("ka", written + 1).await.expect("watch");
    let started = tokio::time::Instant::now();
    while started.elapsed() < ttl * 3 {
        store.keep_alive(lease).await.expect("keep alive");
        tokio::time::sleep(ttl / 5).await;
    }
    assert!(get(&*store, "ka").await.is_some(), "kept alive for three TTLs");
    let batch = next_batch(&mut watch).await;
    assert_eq!(summary(&batch), vec![(EventKind::Delete, "ka".into(), Vec::new())]);
    assert!(started.elapsed() >= ttl * 3);
}

/// Revoking deletes the lease's keys before it returns; the lease is gone afterwards.
pub async fn revoke_lease_deletes_keys(store: Arc<dyn Store>) {
    let lease = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
    let other = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
    assert_ne!(lease, other);
    let written = write(&*store, vec![put_leased("rv/a", "1", lease), put_leased("rv/b", "1", other)]).await;
    let mut watch = store.watch("rv/", written + 1).await.expect("watch");
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(get(&*store, "rv/a").await, None);
    assert!(get(&*store, "rv/b").await.is_some());
    let batch = next_batch(&mut watch).await;
    assert_eq!(summary(&batch), vec![(EventKind::Delete, "rv/a".into(), Vec::new())]);
    assert!(matches!(store.revoke_lease(lease).await, Err(StoreError::LeaseNotFound(_))));
    assert!(matches!(store.keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
    store.keep_alive(other).await.expect("the other lease lives");
    // Revoking a lease with no keys writes nothing.
    let empty = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
    let before = store.current_revision().await.expect("revision");
    store.revoke_lease(empty).await.expect("revoke");
    assert_eq!(store.current_revision().await.expect("revision"), before);
}

/// A put with a lease that does not exist fails, and the whole transaction writes nothing.
pub async fn put_with_unknown_lease_fails(store: Arc<dyn Store>) {
    write(&*store, vec![put("base", "0")]).await;
    let result = store.txn(ops(vec![put("ok", "1"), put_leased("bad", "2", 987_654_321)])).await;
    assert!(matches!(result, Err(StoreError::LeaseNotFound(987_654_321))), "got {result:?}");
    assert_eq!(get(&*store, "ok").await, None);
    assert_eq!(get(&*store, "bad").await, None);
    assert_eq!(store.current_revision().await.expect("revision"), 1);
    assert!(matches!(store.keep_alive(987_654_321).await, Err(StoreError::LeaseNotFound(_))));
    assert!(matches!(store.revoke_lease(987_654_321).await, Err(StoreError::LeaseNotFound(_))));
}

/// Re-putting a key without its lease detaches it: revoking the lease then leaves it alone.
pub async fn rewriting_a_key_without_lease_detaches_it(store: Arc<dyn Store>) {
    let lease = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
    write(&*store, vec![put_leased("d/a", "1", lease), put_leased("d/b", "1", lease)]).await;
    write(&*store, vec![put("d/a", "2")]).await;
    assert_eq!(get(&*store, "d/a").await.expect("d/a").lease, None);
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(get(&*store, "d/a").await.expect("d/a kept").value, b"2");
    assert_eq!(get(&*store, "d/b").await, None);
}
