//! Fencing on both backends: writes through a [`FencedStore`] hold while the leader key is unchanged; once
//! another server took the key, a deposed leader's write fails with `Fenced` and writes nothing.

use std::sync::Arc;
use std::time::Duration;

use davit_store::etcd_testing::{EtcdCluster, etcd_available};
use davit_store::{Compare, EtcdOptions, EtcdStore, FencedStore, Op, RedbStore, Store, StoreError, Txn};

fn put(key: &str, value: &str, lease: Option<u64>) -> Op {
    Op::Put { key: key.to_string(), value: value.as_bytes().to_vec(), lease }
}

async fn a_deposed_leader_cannot_write(store: Arc<dyn Store>) {
    let leader_key = "leader";
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let taken = store
        .txn(Txn { compares: vec![Compare::Missing(leader_key.into())], success: vec![put(leader_key, "a", Some(lease))], failure: vec![] })
        .await
        .unwrap();
    assert!(taken.succeeded);
    let a = FencedStore::new(Arc::clone(&store), leader_key, taken.revision);
    assert!(a.txn(Txn { success: vec![put("job", "1", None)], ..Txn::default() }).await.unwrap().succeeded);
    // The caller's own compare failing is an ordinary failed transaction while the fence holds.
    let refused =
        a.txn(Txn { compares: vec![Compare::Missing("job".into())], success: vec![put("job", "2", None)], failure: vec![] }).await;
    assert!(!refused.unwrap().succeeded);

    // A's lease ends (it was paused past its TTL, say) and B takes the key.
    store.revoke_lease(lease).await.unwrap();
    let b = store
        .txn(Txn { compares: vec![Compare::Missing(leader_key.into())], success: vec![put(leader_key, "b", None)], failure: vec![] })
        .await
        .unwrap();
    assert!(b.succeeded);
    let before = store.current_revision().await.unwrap();
    let late = a.txn(Txn { success: vec![put("job", "from a deposed leader", None)], ..Txn::default() }).await;
    assert!(matches!(late, Err(StoreError::Fenced(ref key)) if key == leader_key), "{late:?}");
    assert_eq!(store.get("job").await.unwrap().unwrap().value, b"1");
    assert_eq!(store.current_revision().await.unwrap(), before, "the deposed leader wrote nothing");
    // A failure branch would be applied when the fence fails: refused outright.
    let branch = a.txn(Txn { compares: vec![], success: vec![], failure: vec![put("x", "y", None)] }).await;
    assert!(matches!(branch, Err(StoreError::Backend(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redb() {
    let dir = tempfile::tempdir().unwrap();
    a_deposed_leader_cannot_write(Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd() {
    if !etcd_available() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await.unwrap();
    let store = EtcdStore::connect(EtcdOptions { endpoints: cluster.endpoints(), ..EtcdOptions::default() }).await.unwrap();
    a_deposed_leader_cannot_write(Arc::new(store)).await;
}
