//! Runs the backend-independent conformance suite against a fresh [`RedbStore`] per case.

use std::sync::Arc;

use davit_store::conformance::{self, BackendLimits};
use davit_store::{RedbOptions, RedbStore, Store};

const LIMITS: BackendLimits = BackendLimits { history_revisions: 200, watch_buffer: 64 };

/// A fresh store in its own temporary directory, which lives as long as the test.
fn fresh_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = RedbOptions { history_revisions: LIMITS.history_revisions, watch_buffer: LIMITS.watch_buffer, ..RedbOptions::default() };
    let store = RedbStore::open_with(&dir.path().join("store.redb"), options).expect("open store");
    (Arc::new(store), dir)
}

macro_rules! cases {
    ($($name:ident $(($limits:expr))?),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (store, _dir) = fresh_store();
            conformance::$name(store $(, $limits)?).await;
        }
    )*};
}

cases! {
    revisions_increase_by_one_per_writing_txn,
    key_revision_and_version_bookkeeping,
    compare_exists_and_missing,
    compare_mod_revision,
    multi_key_atomicity,
    concurrent_compare_and_set_counter,
    range_by_prefix_is_sorted_and_consistent,
    delete_prefix,
    watch_replays_then_follows_live_without_gaps,
    watches_opened_during_writes_see_every_revision_once,
    watches_match_a_model_of_the_log,
    watch_filters_by_prefix,
    watch_from_future_revision_waits,
    watch_from_compacted_revision_fails(LIMITS),
    lagged_watcher_is_dropped_others_continue(LIMITS),
    lease_expiry_deletes_keys,
    keep_alive_prevents_expiry,
    revoke_lease_deletes_keys,
    put_with_unknown_lease_fails,
    rewriting_a_key_without_lease_detaches_it,
}

/// `run_all` itself stays callable (it is what a future backend's test may use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_compiles_and_starts_with_a_fresh_store_per_case() {
    let dirs = std::sync::Mutex::new(Vec::new());
    let make = || {
        let (store, dir) = fresh_store();
        dirs.lock().expect("dirs").push(dir);
        store
    };
    conformance::run_all(make, LIMITS).await;
}
