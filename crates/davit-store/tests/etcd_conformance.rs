//! Runs the backend-independent conformance suite against an [`EtcdStore`] on a fresh 3-member etcd cluster
//! per case (real `etcd` processes on loopback; Debian's etcd-server 3.4).

use std::sync::Arc;

use davit_store::conformance::BackendLimits;
use davit_store::etcd_testing::{EtcdCluster, etcd_available};
use davit_store::{EtcdOptions, EtcdStore, Store};

const LIMITS: BackendLimits = BackendLimits { history_revisions: 200, watch_buffer: 64, lag_patience: davit_store::ETCD_LAG_PATIENCE };

/// A store on a fresh cluster, which lives as long as the test (`None`: no etcd here, outside CI).
async fn fresh_store() -> Option<(Arc<dyn Store>, EtcdCluster)> {
    if !etcd_available() {
        return None;
    }
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await.expect("cluster");
    let options = EtcdOptions {
        endpoints: cluster.endpoints(),
        history_revisions: LIMITS.history_revisions,
        watch_buffer: LIMITS.watch_buffer,
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(options).await.expect("connect");
    Some((Arc::new(store), cluster))
}

davit_store::conformance_tests!(fresh_store(), LIMITS);
