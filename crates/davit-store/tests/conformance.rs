//! Runs the backend-independent conformance suite against a fresh [`RedbStore`] per case.

use std::sync::Arc;

use davit_store::conformance::{self, BackendLimits};
use davit_store::{RedbOptions, RedbStore, Store};

const LIMITS: BackendLimits = BackendLimits { history_revisions: 200, watch_buffer: 64, lag_patience: std::time::Duration::ZERO };

/// A fresh store in its own temporary directory, which lives as long as the test.
fn fresh_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = RedbOptions { history_revisions: LIMITS.history_revisions, watch_buffer: LIMITS.watch_buffer, ..RedbOptions::default() };
    let store = RedbStore::open_with(&dir.path().join("store.redb"), options).expect("open store");
    (Arc::new(store), dir)
}

/// A fresh store for one case.
async fn fresh() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    Some(fresh_store())
}

davit_store::conformance_tests!(fresh(), LIMITS);

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
