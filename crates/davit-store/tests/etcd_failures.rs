//! The etcd store when members fail: with one member of three down, writes, reads and watches go on (a watch
//! whose stream broke opens again without a gap); with two down, a write fails within the request timeout with
//! an error (no hang), and once a member returns the store works again.

use std::time::Duration;

use davit_store::etcd_testing::{EtcdCluster, etcd_available};
use davit_store::{EtcdOptions, EtcdStore, Op, Store, StoreError, Txn};

fn put(key: &str, value: &str) -> Txn {
    Txn { success: vec![Op::Put { key: key.to_string(), value: value.as_bytes().to_vec(), lease: None }], ..Txn::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_down_keeps_working_two_down_fail_fast_and_recover() {
    if !etcd_available() {
        return;
    }
    let mut cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await.unwrap();
    let options = EtcdOptions { endpoints: cluster.endpoints(), request_timeout: Duration::from_secs(3), ..EtcdOptions::default() };
    let store = EtcdStore::connect(options).await.unwrap();
    let first = store.txn(put("k", "0")).await.unwrap().revision;
    let mut watch = store.watch("k", first).await.unwrap();
    let mut seen = Vec::new();
    let next = async |watch: &mut davit_store::Watch| {
        let batch =
            tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("a watch event").expect("open").expect("batch");
        String::from_utf8(batch.events[0].kv.value.clone()).unwrap()
    };
    seen.push(next(&mut watch).await);

    // One member of three down (each in turn): once the others have a leader (a new one if it was the leader),
    // every operation succeeds.
    for (round, member) in [0usize, 1, 2].into_iter().enumerate() {
        cluster.members[member].kill();
        let members = &cluster;
        tokio::task::block_in_place(|| members.wait_healthy(Duration::from_secs(30)));
        for write in 0..5 {
            let value = format!("{round}-{write}");
            store.txn(put("k", &value)).await.unwrap_or_else(|error| panic!("write {value} with m{member} down: {error}"));
        }
        assert_eq!(store.get("k").await.unwrap().unwrap().value, format!("{round}-4").into_bytes());
        for _ in 0..5 {
            seen.push(next(&mut watch).await);
        }
        cluster.members[member].restart();
        let members = &cluster;
        tokio::task::block_in_place(|| members.wait_healthy(Duration::from_secs(30)));
    }
    let expected: Vec<String> =
        std::iter::once("0".to_string()).chain((0..3).flat_map(|round| (0..5).map(move |write| format!("{round}-{write}")))).collect();
    assert_eq!(seen, expected, "the watch saw every change once, in order, across the lost members");

    // Two down: no majority. A write fails within the timeout instead of hanging.
    cluster.members[0].kill();
    cluster.members[1].kill();
    let started = std::time::Instant::now();
    let failed = store.txn(put("k", "lost?")).await;
    assert!(matches!(failed, Err(StoreError::Backend(_))), "{failed:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "the write took {:?}", started.elapsed());

    // A member returns: writes work again and the watch goes on.
    cluster.members[1].restart();
    let members = &cluster;
    tokio::task::block_in_place(|| members.wait_healthy(Duration::from_secs(30)));
    let mut written = None;
    for _ in 0..50 {
        match store.txn(put("k", "back")).await {
            Ok(response) => {
                written = Some(response.revision);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(written.is_some(), "no write succeeded after the majority came back");
    let mut last = next(&mut watch).await;
    while last != "back" {
        // A write that timed out for the client may still have been committed once the majority returned.
        assert_eq!(last, "lost?");
        last = next(&mut watch).await;
    }
}
