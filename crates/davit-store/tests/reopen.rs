//! Reopening a [`RedbStore`] keeps keys, revisions, change log and leases.

use std::time::Duration;

use davit_store::{EventKind, Op, RedbStore, Store, StoreError, Txn};

fn put(key: &str, value: &str, lease: Option<u64>) -> Txn {
    Txn { compares: Vec::new(), success: vec![Op::Put { key: key.into(), value: value.into(), lease }], failure: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_revisions_history_and_leases() {
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

    // The revision counter continues.
    assert_eq!(store.txn(put("k/new", "n", None)).await.expect("txn").revision, 13);

    // The change log survived: a watch from 1 replays everything.
    let mut watch = store.watch("k/", 1).await.expect("watch");
    let mut revisions = Vec::new();
    for _ in 0..12 {
        let batch = watch.next().await.expect("open").expect("batch");
        revisions.push((batch.revision, batch.events[0].kind));
    }
    assert_eq!(revisions[..10].iter().map(|(revision, _)| *revision).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    assert_eq!(revisions[10], (11, EventKind::Delete));
    assert_eq!(revisions[11], (13, EventKind::Put));

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
