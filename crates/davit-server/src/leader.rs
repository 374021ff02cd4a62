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

/// The key the leader holds (under the store's prefix; the view ignores `server/` keys).
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

/// Campaigns until this server leads; `waiting` is told who leads meanwhile. Store errors (etcd unreachable, a
/// watch that broke) are logged and the campaign goes on after a pause: a standby waits, it does not exit.
pub async fn acquire(store: Arc<dyn Store>, me: LeaderInfo, ttl: Duration, waiting: impl Fn(&LeaderInfo)) -> Leadership {
    let value = serde_json::to_vec(&me).expect("leader info serializes");
    loop {
        match campaign(&store, &value, ttl, &waiting).await {
            Ok(Some(leadership)) => return leadership,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "campaigning for the leadership failed; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One round: take the key if it is free, else wait until it goes (`None`: campaign again).
async fn campaign(
    store: &Arc<dyn Store>,
    value: &[u8],
    ttl: Duration,
    waiting: &impl Fn(&LeaderInfo),
) -> Result<Option<Leadership>, StoreError> {
    let granted = Instant::now();
    let lease = store.grant_lease(ttl).await?;
    // On an error the outcome is unknown: should the key be ours, it goes when this lease (not kept alive) ends.
    let taken = store
        .txn(Txn {
            compares: vec![Compare::Missing(LEADER_KEY.to_string())],
            success: vec![Op::Put { key: LEADER_KEY.to_string(), value: value.to_vec(), lease: Some(lease) }],
            failure: Vec::new(),
        })
        .await?;
    if taken.succeeded {
        let (sender, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep(Arc::clone(store), lease, ttl, granted, sender));
        return Ok(Some(Leadership { revision: taken.revision, lease, lost, keeper }));
    }
    let _ = store.revoke_lease(lease).await;
    // Someone leads: read the key and the revision of that read, and wait for the key to go after it.
    let read = store.range(LEADER_KEY).await?;
    let Some(current) = read.kvs.into_iter().find(|kv| kv.key == LEADER_KEY) else { return Ok(None) };
    if let Ok(info) = serde_json::from_slice::<LeaderInfo>(&current.value) {
        waiting(&info);
    }
    let mut watch = store.watch(LEADER_KEY, read.revision + 1).await?;
    loop {
        match watch.next().await {
            Some(Ok(batch)) if batch.events.iter().any(|event| event.kind == EventKind::Delete && event.kv.key == LEADER_KEY) => {
                return Ok(None);
            }
            Some(Ok(_)) => {}
            // A broken watch (history compacted meanwhile, etcd gone): look again.
            Some(Err(error)) => return Err(error),
            None => return Ok(None),
        }
    }
}

/// Keeps the lease alive every third of its TTL. The lease holds until a TTL after the last renewal *was sent*
/// (etcd counts from when it got it); once that is less than a tenth of the TTL away without a renewal — or
/// the lease is gone — `lost` is signalled, before a standby can have taken over.
async fn keep(store: Arc<dyn Store>, lease: LeaseId, ttl: Duration, granted: Instant, lost: watch::Sender<bool>) {
    let margin = ttl / 10;
    let mut valid_until = granted + ttl;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = Instant::now();
        let left = valid_until.saturating_duration_since(sent);
        if left <= margin {
            break;
        }
        match tokio::time::timeout(left - margin, store.keep_alive(lease)).await {
            Ok(Ok(())) => valid_until = sent + ttl,
            Ok(Err(StoreError::LeaseNotFound(_))) => break,
            Ok(Err(error)) => tracing::warn!(%error, "renewing the leadership lease failed"),
            Err(_) => tracing::warn!("renewing the leadership lease timed out"),
        }
    }
    let _ = lost.send(true);
}
