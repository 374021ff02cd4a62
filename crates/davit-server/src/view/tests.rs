use davit_store::Txn;

use super::*;

fn alloc(client_description: &str) -> Allocation {
    serde_json::from_value(serde_json::json!({
        "id": "a1", "name": "web.g[0]", "job_name": "web", "job_version": 0, "group": "g", "index": 0,
        "node_id": "n1", "node_name": "n1", "eval_id": "e1", "desired_status": "run", "client_status": "pending",
        "client_description": client_description, "resources": {"cpu": 100, "memory": 64, "ports": []},
        "create_time": 1, "modify_time": 1
    }))
    .unwrap()
}

async fn put(store: &Arc<dyn Store>, view: &View, value: &[u8]) -> Revision {
    let mut txn = Txn::default();
    txn.success.push(davit_store::Op::Put { key: keys::alloc("a1"), value: value.to_vec(), lease: None });
    let revision = store.txn(txn).await.unwrap().revision;
    view.wait_for(revision).await;
    revision
}

/// A handed-off allocation is taken (not decoded) when the store returns exactly its bytes; other bytes
/// under its key are decoded.
#[tokio::test]
async fn takes_a_handed_off_allocation_only_for_its_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(davit_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let (events, _events) = mpsc::unbounded_channel();
    let view = View::start(Arc::clone(&store), events).await.unwrap();

    // The handed-off object carries a mark its bytes do not: seeing the mark proves it was taken.
    let bytes = keys::encode(&alloc("stored"));
    let mut marked = alloc("stored");
    marked.health_description = "handed off".to_string();
    view.hand_off(vec![DecodedAlloc { key: keys::alloc("a1"), value: bytes.clone(), alloc: Arc::new(marked) }], None);
    let revision = put(&store, &view, &bytes).await;
    let seen = Arc::clone(view.snapshot().cluster.alloc("a1").unwrap());
    assert_eq!((seen.health_description.as_str(), seen.modify_index, seen.create_index), ("handed off", revision, revision));

    let mut other = alloc("handed");
    other.health_description = "handed off".to_string();
    view.hand_off(vec![DecodedAlloc { key: keys::alloc("a1"), value: keys::encode(&alloc("handed")), alloc: Arc::new(other) }], None);
    let second = put(&store, &view, &keys::encode(&alloc("written"))).await;
    let seen = Arc::clone(view.snapshot().cluster.alloc("a1").unwrap());
    assert_eq!((seen.client_description.as_str(), seen.health_description.as_str()), ("written", ""));
    assert_eq!((seen.modify_index, seen.create_index), (second, revision));
}

fn eval(id: &str) -> Evaluation {
    serde_json::from_value(serde_json::json!({
        "id": id, "job_name": "web", "job_type": "service", "priority": 50,
        "triggered_by": "job_register", "status": "pending", "create_time": 1, "modify_time": 1
    }))
    .unwrap()
}

/// What the view holds, as a fresh load of the store would hold it.
fn assert_same_as_loaded(held: &Snapshot, loaded: &Snapshot) {
    let allocs = |snapshot: &Snapshot| snapshot.cluster.allocs().map(|alloc| (**alloc).clone()).collect::<Vec<_>>();
    assert_eq!(allocs(held), allocs(loaded));
    assert_eq!(held.evals.keys().collect::<Vec<_>>(), loaded.evals.keys().collect::<Vec<_>>());
    assert_eq!((held.job_index("web"), held.node_alloc_index("n1")), (loaded.job_index("web"), loaded.node_alloc_index("n1")));
    for table in ["allocs", "evals"] {
        assert_eq!(held.table_index(table), loaded.table_index(table), "{table}");
    }
    assert_eq!(held.cluster.node_usage("n1"), loaded.cluster.node_usage("n1"));
}

/// The view takes the applier's working state for its transaction, replays onto it what another writer
/// committed meanwhile, and ends up exactly where applying the writes would have: same objects, store
/// indexes, job/node/table indexes and node usage, and every event sent once.
#[tokio::test]
async fn adopting_the_applier_working_state_is_the_same_as_applying_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(davit_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let (events, mut received) = mpsc::unbounded_channel();
    let view = View::start(Arc::clone(&store), events).await.unwrap();

    let placed = alloc("placed");
    let mut stopped = alloc("stopped");
    stopped.desired_status = davit_api::objects::DesiredStatus::Stop;
    stopped.client_status = davit_api::objects::ClientStatus::Complete;
    let mut created = 0;
    for (round, written) in [&placed, &stopped].into_iter().enumerate() {
        let mut working = view.snapshot();
        // Another writer commits between the applier's snapshot and its transaction.
        let mut other = Txn::default();
        other.success.push(keys::put(keys::eval(&format!("other{round}")), &eval(&format!("other{round}"))));
        let other_revision = store.txn(other).await.unwrap().revision;
        view.wait_for(other_revision).await;

        // The working state's copy carries a mark its bytes do not: seeing the mark proves it was adopted.
        let mut marked = written.clone();
        marked.health_description = "working state".to_string();
        working.cluster.upsert_alloc(Arc::new(marked));
        let bytes = keys::encode(written);
        let handed = DecodedAlloc { key: keys::alloc("a1"), value: bytes.clone(), alloc: Arc::new(written.clone()) };
        view.hand_off(vec![handed], Some(working));
        let mut txn = Txn::default();
        txn.success.push(davit_store::Op::Put { key: keys::alloc("a1"), value: bytes, lease: None });
        txn.success.push(keys::put(keys::eval(&format!("own{round}")), &eval(&format!("own{round}"))));
        let revision = store.txn(txn).await.unwrap().revision;
        view.wait_for(revision).await;

        let held = Arc::clone(view.snapshot().cluster.alloc("a1").unwrap());
        assert_eq!(held.health_description, "working state", "round {round}: the working state was not adopted");
        if round == 0 {
            created = revision;
        }
        assert_eq!((held.create_index, held.modify_index), (created, revision));
        // Unmarked, it is what the store holds.
        let mut unmarked = view.snapshot();
        let mut plain = (*held).clone();
        plain.health_description.clear();
        unmarked.cluster.upsert_alloc(Arc::new(plain));
        assert_same_as_loaded(&unmarked, &load(store.as_ref(), &mpsc::unbounded_channel().0).await.unwrap());
    }
    let mut pending = Vec::new();
    let mut capacity_changes = 0;
    while let Ok(event) = received.try_recv() {
        match event {
            ViewEvent::EvalPending(eval) => pending.push(eval.id.clone()),
            ViewEvent::CapacityChanged(_) => capacity_changes += 1,
            ViewEvent::EvalBlocked(_) => {}
        }
    }
    assert_eq!(pending, ["other0", "own0", "other1", "own1"]);
    assert_eq!(capacity_changes, 1, "the stopped allocation frees its node once");
}

/// A transaction that writes one allocation twice cannot take the working state (its first write is not
/// the handed-off one): the view applies the writes instead, and still holds what the store holds.
#[tokio::test]
async fn a_transaction_the_working_state_does_not_match_is_applied_write_by_write() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(davit_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let view = View::start(Arc::clone(&store), mpsc::unbounded_channel().0).await.unwrap();
    let mut working = view.snapshot();
    let (first, last) = (alloc("first"), alloc("last"));
    let mut marked = last.clone();
    marked.health_description = "working state".to_string();
    working.cluster.upsert_alloc(Arc::new(marked));
    let handed = [&first, &last].map(|written| DecodedAlloc {
        key: keys::alloc("a1"),
        value: keys::encode(written),
        alloc: Arc::new((*written).clone()),
    });
    view.hand_off(handed.into(), Some(working));
    let mut txn = Txn::default();
    for written in [&first, &last] {
        txn.success.push(davit_store::Op::Put { key: keys::alloc("a1"), value: keys::encode(written), lease: None });
    }
    let revision = store.txn(txn).await.unwrap().revision;
    view.wait_for(revision).await;
    assert_eq!(view.snapshot().cluster.alloc("a1").unwrap().health_description, "");
    assert_same_as_loaded(&view.snapshot(), &load(store.as_ref(), &mpsc::unbounded_channel().0).await.unwrap());
}

/// A pending evaluation reaches the broker only once the view's snapshot holds its revision: a worker
/// that planned on an older snapshot found no job and closed the evaluation as "job stopped".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_revision_follow_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(davit_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let (events, mut received) = mpsc::unbounded_channel();
    let view = View::start(Arc::clone(&store), events).await.unwrap();
    for index in 0..200 {
        let eval = eval(&format!("e{index}"));
        let mut txn = Txn::default();
        txn.success.push(keys::put(keys::eval(&eval.id), &eval));
        store.txn(txn).await.unwrap();
        let Some(ViewEvent::EvalPending(pending)) = received.recv().await else { panic!("expected a pending evaluation") };
        assert!(view.snapshot().revision >= pending.modify_index, "the event came before its snapshot");
    }
}
