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

/// Each server announces itself under this prefix (`<prefix><name>`), under a lease of its own.
pub const MEMBERS: &str = "server/member/";

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

/// Campaigns until this server leads; `waiting` is told who leads meanwhile (`None`: the leader just went). Store errors (etcd unreachable, a
/// watch that broke) are logged and the campaign goes on after a pause: a follower waits, it does not exit.
pub async fn acquire(store: Arc<dyn Store>, me: LeaderInfo, ttl: Duration, waiting: impl Fn(Option<&LeaderInfo>)) -> Leadership {
    loop {
        // `since` is when this round began, so a winner's says when it started to lead.
        let value = serde_json::to_vec(&LeaderInfo { since: crate::now_millis(), ..me.clone() }).expect("leader info serializes");
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
    waiting: &impl Fn(Option<&LeaderInfo>),
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
        waiting(Some(&info));
    }
    let mut watch = store.watch(LEADER_KEY, read.revision + 1).await?;
    loop {
        match watch.next().await {
            Some(Ok(batch)) if batch.events.iter().any(|event| event.kind == EventKind::Delete && event.kv.key == LEADER_KEY) => {
                waiting(None);
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
/// the lease is gone — `lost` is signalled, before a follower can have taken over.
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

/// What a server announces about itself under [`MEMBERS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
    /// Unix milliseconds.
    pub started: u64,
}

/// Keeps `MEMBERS/<name>` in the store while the returned task runs (aborting it leaves the key until its
/// lease ends, a TTL later). Store errors are logged and the announcement is made again.
pub fn announce(store: Arc<dyn Store>, member: Member, ttl: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let key = format!("{MEMBERS}{}", member.name);
        let value = serde_json::to_vec(&member).expect("member serializes");
        loop {
            if let Err(error) = announce_once(&store, &key, &value, ttl).await {
                tracing::warn!(%error, "announcing this server failed; trying again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Puts the key under a new lease and keeps the lease alive until that fails.
async fn announce_once(store: &Arc<dyn Store>, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
    let lease = store.grant_lease(ttl).await?;
    let put = Txn {
        compares: Vec::new(),
        success: vec![Op::Put { key: key.to_string(), value: value.to_vec(), lease: Some(lease) }],
        failure: Vec::new(),
    };
    store.txn(put).await?;
    loop {
        tokio::time::sleep(ttl / 3).await;
        store.keep_alive(lease).await?;
    }
}

/// The servers that announced themselves, and which of them leads (by name), by name.
pub async fn members(store: &dyn Store) -> Result<Vec<davit_api::http::ServerMember>, StoreError> {
    let read = store.range(SERVERS_PREFIX).await?;
    let leader = read.kvs.iter().find(|kv| kv.key == LEADER_KEY).and_then(|kv| serde_json::from_slice::<LeaderInfo>(&kv.value).ok());
    let mut members: Vec<davit_api::http::ServerMember> = read
        .kvs
        .iter()
        .filter(|kv| kv.key.starts_with(MEMBERS))
        .filter_map(|kv| serde_json::from_slice::<Member>(&kv.value).ok())
        .map(|member| {
            let leads = leader.as_ref().filter(|leader| leader.name == member.name);
            davit_api::http::ServerMember {
                leader: leads.is_some(),
                leader_since: leads.map(|leader| leader.since),
                name: member.name,
                addr: member.addr,
                started: member.started,
            }
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

/// Every key of [`LEADER_KEY`] and [`MEMBERS`] starts with this (the store's `server/` keys, which the view ignores).
pub use crate::keys::SERVERS as SERVERS_PREFIX;
