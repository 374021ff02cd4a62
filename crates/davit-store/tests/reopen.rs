//! Reopening a [`RedbStore`] keeps keys, revisions and leases; the watch history starts afresh.

use std::time::Duration;

use davit_store::{EventKind, Op, RedbStore, Store, StoreError, Txn};

fn put(key: &str, value: &str, lease: Option<u64>) -> Txn {
    Txn { compares: Vec::new(), success: vec![Op::Put { key: key.into(), value: value.into(), lease }], failure: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_revisions_and_leases_and_starts_the_history_afresh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");

    let (lease, before_range) = {
        let store = RedbStore::open(&path).expect("open");
        for index in 0..10 {
            store.txn(put(&format!("k/{index}"), &index.to_string(), None)).await.expect("txn");
        }
        store.txn(Txn { success: vec![Op::Delete { key: "k/3".into() }], ..Txn::default() }).await.expect("txn");
        let lease = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
        store.txn(put("leased", "x", Some(lease))).await.expect("txn");
        let range = store.range("").await.expect("range");
        assert_eq!(range.revision, 12);
        (lease, range)
    };

    let store = RedbStore::open(&path).expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), 12);
    assert_eq!(store.range("").await.expect("range"), before_range);
    let leased = store.get("leased").await.expect("get").expect("leased key kept");
    assert_eq!(leased.lease, Some(lease));

    // The history is kept in memory: revisions from before the reopen cannot be replayed, and say so.
    match store.watch("k/", 1).await {
        Err(StoreError::Compacted { requested: 1, oldest: 13 }) => {}
        Err(error) => panic!("expected Compacted, got {error}"),
        Ok(_) => panic!("a watch from before the reopen must fail with Compacted"),
    }
    let mut watch = store.watch("k/", 13).await.expect("a watch from the next revision works");

    // The revision counter continues, and the watch sees the new revision.
    assert_eq!(store.txn(put("k/new", "n", None)).await.expect("txn").revision, 13);
    let batch = watch.next().await.expect("open").expect("batch");
    assert_eq!((batch.revision, batch.events[0].kind, batch.events[0].kv.key.as_str()), (13, EventKind::Put, "k/new"));

    // The lease survived with a fresh TTL, and new leases get new ids.
    store.keep_alive(lease).await.expect("lease kept");
    let newer = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
    assert!(newer > lease);
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(store.get("leased").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_after_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    let lease = {
        let store = RedbStore::open(&path).expect("open");
        let lease = store.grant_lease(Duration::from_millis(300)).await.expect("grant");
        store.txn(put("ephemeral", "x", Some(lease))).await.expect("txn");
        lease
    };
    let store = RedbStore::open(&path).expect("reopen");
    let mut watch = store.watch("ephemeral", 2).await.expect("watch");
    let batch = tokio::time::timeout(Duration::from_secs(20), watch.next()).await.expect("expires").expect("open").expect("batch");
    assert_eq!(batch.events[0].kind, EventKind::Delete);
    assert!(matches!(store.keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_ends_watches_and_releases_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path).expect("open");
    let mut watch = store.watch("", 1).await.expect("watch");
    store.txn(put("a", "1", None)).await.expect("txn");
    assert_eq!(watch.next().await.expect("open").expect("batch").revision, 1);
    drop(store);
    assert!(watch.next().await.is_none(), "the watch ends when the store is dropped");
    let reopened = RedbStore::open(&path).expect("the file is free again");
    assert_eq!(reopened.current_revision().await.expect("revision"), 1);
}

#[test]
fn opening_a_file_that_is_not_a_store_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("garbage");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write");
    assert!(matches!(RedbStore::open(&path), Err(StoreError::Open { .. })));
    let missing_dir = dir.path().join("no/such/dir/store.redb");
    assert!(matches!(RedbStore::open(&missing_dir), Err(StoreError::Open { .. })));
}

/// A file from before the history moved to memory has a `log` table and a `compacted` counter: opening it
/// drops both and keeps every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_file_with_an_on_disk_change_log_drops_it_and_keeps_the_keys() {
    use redb::{ReadableDatabase, TableDefinition};
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    let before = {
        let store = RedbStore::open(&path).expect("open");
        store.txn(put("k/1", "one", None)).await.expect("txn");
        store.range("").await.expect("range")
    };
    {
        let db = redb::Database::open(&path).expect("open with redb");
        let txn = db.begin_write().expect("write");
        txn.open_table(LOG).expect("log").insert(1, &b"old events"[..]).expect("insert");
        txn.open_table(META).expect("meta").insert("compacted", 0).expect("insert");
        txn.commit().expect("commit");
    }
    {
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(store.range("").await.expect("range"), before);
        assert_eq!(store.txn(put("k/2", "two", None)).await.expect("txn").revision, 2);
    }
    let db = redb::Database::open(&path).expect("open with redb");
    let txn = db.begin_read().expect("read");
    assert!(txn.open_table(LOG).is_err(), "the old change log is gone");
    assert_eq!(txn.open_table(META).expect("meta").get("compacted").expect("get").map(|value| value.value()), None);
}
