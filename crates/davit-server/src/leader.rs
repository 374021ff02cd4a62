//! Leadership on a shared store (etcd): of the servers on one store, one at a time runs the control plane.
//!
//! A server campaigns by creating [`LEADER_KEY`] under a lease of its own (compare-and-set on the key being
//! missing) and keeps the lease alive; the others wait, watching the key, and campaign again when it goes
//! (the leader stopped, or its lease expired because it died or was paused). The revision at which the leader
//! wrote the key fences its writes (`davit_store::FencedStore`): a server that lost its lease without noticing
//! cannot commit anything once another server leads. A leader that cannot keep its lease alive for its TTL
//! says so through [`Leadership::lost`] and must stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use davit_store::{Compare, EventKind, LeaseId, Op, Revision, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The key the leader holds (under the store's prefix).
pub const LEADER_KEY: &str = "server/leader";

/// What the leader key says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The server's name (`--name`, default its host name and bind address).
    pub name: String,
    /// Where it serves the API.
    pub addr: String,
    /// Since when it leads (Unix milliseconds).
    pub since: u64,
}

/// This server leads: the revision that fences its writes, and a signal for when it stops leading.
pub struct Leadership {
    pub revision: Revision,
    pub lease: LeaseId,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Returns once the lease could not be kept alive (the server must stop: another may lead already).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Campaigns until this server leads (or the store fails); `waiting` is told who leads meanwhile.
pub async fn acquire(
    store: Arc<dyn Store>,
    me: LeaderInfo,
    ttl: Duration,
    waiting: impl Fn(&LeaderInfo),
) -> Result<Leadership, StoreError> {
    let value = serde_json::to_vec(&me).expect("leader info serializes");
    loop {
        let lease = store.grant_lease(ttl).await?;
        let taken = store
            .txn(Txn {
                compares: vec![Compare::Missing(LEADER_KEY.to_string())],
                success: vec![Op::Put { key: LEADER_KEY.to_string(), value: value.clone(), lease: Some(lease) }],
                failure: Vec::new(),
            })
            .await?;
        if taken.succeeded {
            let (sender, lost) = watch::channel(false);
            let keeper = tokio::spawn(keep(Arc::clone(&store), lease, ttl, sender));
            return Ok(Leadership { revision: taken.revision, lease, lost, keeper });
        }
        let _ = store.revoke_lease(lease).await;
        // Someone leads: wait for the key to go, then campaign again.
        let Some(current) = store.get(LEADER_KEY).await? else { continue };
        if let Ok(info) = serde_json::from_slice::<LeaderInfo>(&current.value) {
            waiting(&info);
        }
        let mut watch = store.watch(LEADER_KEY, current.mod_revision + 1).await?;
        loop {
            match watch.next().await {
                Some(Ok(batch)) if batch.events.iter().any(|event| event.kind == EventKind::Delete && event.kv.key == LEADER_KEY) => break,
                Some(Ok(_)) => {}
                // A broken watch: look again.
                Some(Err(_)) | None => break,
            }
        }
    }
}

/// Keeps the lease alive every third of its TTL; signals `lost` once it is gone or could not be renewed for a
/// whole TTL.
async fn keep(store: Arc<dyn Store>, lease: LeaseId, ttl: Duration, lost: watch::Sender<bool>) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match store.keep_alive(lease).await {
            Ok(()) => renewed = Instant::now(),
            Err(StoreError::LeaseNotFound(_)) => break,
            Err(error) => {
                tracing::warn!(%error, "renewing the leadership lease failed");
                if renewed.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
    let _ = lost.send(true);
}
