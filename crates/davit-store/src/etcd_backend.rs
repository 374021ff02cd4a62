//! The etcd backend: davit's store on an etcd cluster (3.4 or newer), for several servers.
//!
//! ```text
//!  get / range ──▶ Range (linearizable; paged at one revision)
//!  txn ──▶ Txn (compares and ops map one to one) ──▶ every `history_revisions / 100` revisions: Compact
//!  watch ──▶ a range probe (compacted?) ──▶ Watch from the revision ──▶ task: events grouped per revision
//!            into a bounded channel (no room for 250 ms: WatchLagged); on a broken stream the watch is opened again
//!            after the last revision
//!  leases ──▶ LeaseGrant (whole seconds) / one LeaseKeepAlive round / LeaseRevoke
//! ```
//!
//! Keys live under [`EtcdOptions::prefix`]. Revisions are etcd's own minus one: etcd counts its empty initial
//! state as revision 1, so a fresh etcd cluster is at revision 0 here like a fresh redb store, and its first
//! write is revision 1. A key's `mod_revision` compare of 0 (the key does not exist) stays 0.
//!
//! davit needs an etcd of its own: revisions are the whole cluster's, so another writer's would move the
//! store's revision without a change davit's watchers see (a wait for "my revision" could then wait for the next
//! change of davit's), and the store compacts what is older than its newest `history_revisions` itself
//! (compaction is cluster-wide; 0 leaves it to etcd's `--auto-compaction-*`). A watch from a compacted revision
//! fails with [`StoreError::Compacted`], as on redb.
//!
//! etcd refuses a transaction with more than `--max-txn-ops` operations (128 by default) or a request larger
//! than `--max-request-bytes` (1.5 MiB): such a transaction fails with a [`StoreError::Backend`] that says
//! which limit; callers keep their transactions within [`Store::max_txn_size`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn as EtcdTxn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    BoxFuture, Compare, EventKind, KeyValue, LeaseId, Op, RangeResponse, Revision, Store, StoreError, Txn, TxnResponse, Watch, WatchBatch,
    WatchEvent,
};

/// How to reach the etcd cluster and what the store may do there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// etcd user and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// TLS to etcd (`https://` endpoints), when etcd serves it.
    pub tls: Option<EtcdTls>,
    /// Every key is stored under this prefix (default `/davit/`; the etcd cluster must be davit's own, see the
    /// module docs).
    pub prefix: String,
    /// How many of the newest revisions the store keeps for watches; it compacts etcd past them (0: never).
    /// Default 100 000.
    pub history_revisions: u64,
    /// How many revision batches a watcher may leave unread before it is dropped with
    /// [`StoreError::WatchLagged`]. Default 1024.
    pub watch_buffer: usize,
    /// Bound on one request to etcd. Default 10 s.
    pub request_timeout: Duration,
    /// The most operations one transaction may carry in each branch (etcd's `--max-txn-ops`). Default 128.
    pub max_txn_ops: usize,
    /// The most bytes of keys and values one transaction may carry (below etcd's `--max-request-bytes`, which
    /// also counts the request's framing). Default 1 MiB (etcd's limit: 1.5 MiB).
    pub max_txn_bytes: usize,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            user: None,
            tls: None,
            prefix: "/davit/".to_string(),
            history_revisions: 100_000,
            watch_buffer: 1024,
            request_timeout: Duration::from_secs(10),
            max_txn_ops: 128,
            max_txn_bytes: 1 << 20,
        }
    }
}

/// TLS to etcd: the CA that signed the members' certificates, and a client certificate when etcd asks for one
/// (`--client-cert-auth`). PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_cert: String,
    /// Certificate and key.
    pub identity: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").field("identity", &self.identity.is_some()).finish_non_exhaustive()
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// gRPC keep-alive pings' interval and timeout (while requests are open only: etcd refuses idle pings).
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Keys per page of a `range` (all pages read at the same revision).
const RANGE_PAGE: i64 = 5_000;
/// The largest response the client accepts (a page of large values).
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// How long a watcher whose buffer is full may take to make room before it is dropped as lagging.
pub const LAG_PATIENCE: Duration = Duration::from_millis(250);
/// How many times in a row a watch stream may break without delivering an event before the watch ends.
const MAX_BROKEN_STREAMS: u32 = 20;
/// How long a watch whose stream broke keeps trying to open it again before it ends with an error.
const WATCH_RETRY_FOR: Duration = Duration::from_secs(60);

/// The [`Store`] on etcd. Cheap to share; every call is a request to the cluster.
pub struct EtcdStore {
    client: Client,
    options: EtcdOptions,
    /// The etcd revision the store last compacted to (0: none yet).
    compacted: Arc<AtomicI64>,
}

impl EtcdStore {
    /// Connects to the cluster (with a user, it authenticates at once).
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if !options.prefix.starts_with('/') || options.prefix.len() < 2 {
            return Err(StoreError::Backend(format!(
                "the etcd key prefix {:?} must start with / and name something, e.g. /davit/",
                options.prefix
            )));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(options.request_timeout)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE)
            // etcd closes connections that ping while idle (grpc's too_many_pings).
            .with_keep_alive_while_idle(false)
            // A member cut off from the others answers nothing rather than stale data or a watch that never moves.
            .with_require_leader(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        let open = |error: etcd_client::Error| StoreError::Open { path: options.endpoints.join(","), source: Box::new(error) };
        let client = match &options.tls {
            None => Client::connect(&options.endpoints, Some(connect)).await.map_err(open)?,
            Some(tls) => {
                Client::from_channel(etcd_client::Channel::Tonic(tls_channel(&options, tls)?), Some(connect)).await.map_err(open)?
            }
        };
        Ok(EtcdStore { client, options, compacted: Arc::new(AtomicI64::new(0)) })
    }

    /// Runs `call` until it succeeds, fails in a way `retry` does not cover, or the request timeout passed;
    /// each try may go to another member (the client balances over the endpoints).
    async fn retrying<T, F, Fut>(&self, retry: Retry, mut call: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        let mut delay = Duration::from_millis(20);
        let mut authenticated_again = false;
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            // etcd refused the request (nothing applied): its auth token expired (a JWT, or a simple token unused
            // for --auth-token-ttl). Authenticate again and retry.
            if self.options.user.is_some() && !authenticated_again && message(&error).contains("invalid auth token") {
                authenticated_again = true;
                tracing::info!("the etcd auth token expired; authenticating again");
                if let Err(refresh) = self.client.refresh_token().await {
                    tracing::warn!(error = %message(&refresh), "authenticating to etcd again failed");
                    tokio::time::sleep(delay).await;
                }
                continue;
            }
            let again = match retry {
                Retry::Transient => transient(&error),
                Retry::NeverApplied => never_applied(&error),
            };
            if !again || tokio::time::Instant::now() + delay > deadline {
                return Err(error);
            }
            tracing::debug!(error = %message(&error), "etcd request failed; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.options.prefix).into_bytes()
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    async fn get_key(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = self.key(key);
        let response = self
            .retrying(Retry::Transient, || {
                let (mut kv, key) = (self.kv(), key.clone());
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|error| backend("reading a key", error))?;
        Ok(response.kvs().first().map(|kv| key_value(&self.options.prefix, kv)))
    }

    async fn range_prefix(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let start = self.key(prefix);
        let end = prefix_end(&start);
        let mut kvs = Vec::new();
        let mut from = start;
        let mut at = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(RANGE_PAGE);
            if at != 0 {
                options = options.with_revision(at);
            }
            let response = self
                .retrying(Retry::Transient, || {
                    let (mut kv, from, options) = (self.kv(), from.clone(), options.clone());
                    async move { kv.get(from, Some(options)).await }
                })
                .await
                .map_err(|error| backend("reading a range", error))?;
            if at == 0 {
                at = response.header().map_or(0, |header| header.revision());
            }
            kvs.extend(response.kvs().iter().map(|kv| key_value(&self.options.prefix, kv)));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(RangeResponse { kvs, revision: ours(at) })
    }

    async fn apply(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let operations = txn.success.len().max(txn.failure.len()).max(txn.compares.len());
        if operations > self.options.max_txn_ops {
            return Err(StoreError::Backend(format!(
                "a transaction of {operations} operations is more than etcd takes ({}, its --max-txn-ops)",
                self.options.max_txn_ops
            )));
        }
        let bytes: usize = txn.success.iter().chain(&txn.failure).map(Op::size).sum();
        if bytes > self.options.max_txn_bytes {
            return Err(StoreError::Backend(format!(
                "a transaction of {bytes} bytes is more than etcd takes ({} here, below its --max-request-bytes)",
                self.options.max_txn_bytes
            )));
        }
        let leases: Vec<LeaseId> =
            txn.success.iter().chain(&txn.failure).filter_map(|op| if let Op::Put { lease, .. } = op { *lease } else { None }).collect();
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|compare| match compare {
                Compare::Exists(key) => EtcdCompare::create_revision(self.key(key), CompareOp::Greater, 0),
                Compare::Missing(key) => EtcdCompare::create_revision(self.key(key), CompareOp::Equal, 0),
                Compare::ModRevision(key, revision) => EtcdCompare::mod_revision(self.key(key), CompareOp::Equal, theirs(*revision)),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<TxnOp> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => {
                        TxnOp::put(self.key(key), value.clone(), Some(PutOptions::new().with_lease(lease.map_or(0, |lease| lease as i64))))
                    }
                    Op::Delete { key } => TxnOp::delete(self.key(key), None),
                    Op::DeletePrefix { prefix } => {
                        let start = self.key(prefix);
                        let end = prefix_end(&start);
                        TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
                    }
                })
                .collect()
        };
        let request = EtcdTxn::new().when(compares).and_then(ops(&last_per_key(&txn.success))).or_else(ops(&last_per_key(&txn.failure)));
        let response = match self
            .retrying(Retry::NeverApplied, || {
                let (mut kv, request) = (self.kv(), request.clone());
                async move { kv.txn(request).await }
            })
            .await
        {
            Ok(response) => response,
            Err(error) if message(&error).contains("lease not found") => {
                return Err(StoreError::LeaseNotFound(leases.first().copied().unwrap_or_default()));
            }
            Err(error) => return Err(backend("committing a transaction", error)),
        };
        let revision = response.header().map_or(0, |header| header.revision());
        self.compact_behind(revision).await;
        Ok(TxnResponse { succeeded: response.succeeded(), revision: ours(revision) })
    }

    /// Compacts etcd's history older than the newest `history_revisions`, every hundredth of it.
    async fn compact_behind(&self, revision: i64) {
        let history = i64::try_from(self.options.history_revisions).unwrap_or(i64::MAX);
        if history == 0 {
            return;
        }
        let step = (history / 100).max(1);
        let target = revision - history;
        let last = self.compacted.load(Ordering::Relaxed);
        if target < 2
            || target < last + step
            || self.compacted.compare_exchange(last, target, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        if let Err(error) = self.kv().compact(target, None).await {
            // Another server compacted further already, or etcd is busy: the next step tries again.
            if !message(&error).contains("compacted") {
                tracing::warn!(error = %message(&error), target, "compacting etcd's history failed");
            }
        }
    }

    async fn current(&self) -> Result<Revision, StoreError> {
        let response = self
            .retrying(Retry::Transient, || {
                let (mut kv, key) = (self.kv(), self.key(""));
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await
            .map_err(|error| backend("reading the revision", error))?;
        Ok(ours(response.header().map_or(0, |header| header.revision())))
    }

    async fn open_watch(&self, prefix: &str, from_revision: Revision) -> Result<Watch, StoreError> {
        let start = theirs(from_revision.max(1));
        // A watch from a compacted revision is cancelled some time after it is created; a read at that
        // revision says so at once (and the watch then says from where history is kept).
        let key = self.key(prefix);
        let current = self.current().await?;
        if from_revision.max(1) <= current {
            let probe = || {
                let (mut kv, key) = (self.kv(), key.clone());
                async move { kv.get(key, Some(GetOptions::new().with_revision(start).with_count_only())).await }
            };
            if let Err(error) = self.retrying(Retry::Transient, probe).await {
                if message(&error).contains("compacted") {
                    let oldest = self.compaction_point(&key, start).await.unwrap_or(ours(self.compacted.load(Ordering::Relaxed)));
                    return Err(StoreError::Compacted { requested: from_revision, oldest });
                }
                return Err(backend("opening a watch", error));
            }
        }
        let (sender, receiver) = mpsc::channel(self.options.watch_buffer.max(2));
        let stream = self.watch_stream(&key, start).await?;
        let feeder = Feeder { client: self.client.clone(), prefix: self.options.prefix.clone(), key, sender };
        tokio::spawn(feeder.run(stream, start));
        Ok(Watch::new(receiver))
    }

    async fn watch_stream(&self, key: &[u8], start: i64) -> Result<etcd_client::WatchStream, StoreError> {
        let options = WatchOptions::new().with_range(prefix_end(key)).with_start_revision(start);
        self.retrying(Retry::Transient, || {
            let (mut client, key, options) =
                (self.client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES), key.to_vec(), options.clone());
            async move { client.watch(key, Some(options)).await }
        })
        .await
        .map_err(|error| backend("opening a watch", error))
    }

    /// The oldest revision etcd still keeps, as a watch from `start` learns it.
    async fn compaction_point(&self, key: &[u8], start: i64) -> Option<Revision> {
        let mut stream = self.watch_stream(key, start).await.ok()?;
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(response)) = stream.message().await {
                if response.compact_revision() > 0 {
                    return Some(ours(response.compact_revision()));
                }
            }
            None
        });
        answer.await.ok().flatten()
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // etcd counts TTLs in whole seconds (and raises short ones to its minimum).
        let seconds = (ttl.as_millis().div_ceil(1000)).max(1) as i64;
        let response = self
            .retrying(Retry::NeverApplied, || {
                let mut leases = self.client.lease_client();
                async move { leases.grant(seconds, None).await }
            })
            .await
            .map_err(|error| backend("granting a lease", error))?;
        Ok(response.id() as u64)
    }

    async fn keep(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .retrying(Retry::Transient, || {
                let mut leases = self.client.lease_client();
                async move { leases.keep_alive(lease as i64).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if message(&error).contains("lease not found") => Err(StoreError::LeaseNotFound(lease)),
            Err(error) => Err(backend("keeping a lease alive", error)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .retrying(Retry::Transient, || {
                let mut leases = self.client.lease_client();
                async move { leases.revoke(lease as i64).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            // (A retry after a revoke whose answer was lost also lands here: the lease is gone either way.)
            Err(error) if message(&error).contains("lease not found") => Err(StoreError::LeaseNotFound(lease)),
            Err(error) => Err(backend("revoking a lease", error)),
        }
    }
}

/// Feeds one watch: etcd's responses, grouped per revision, into the watcher's channel.
struct Feeder {
    client: Client,
    prefix: String,
    key: Vec<u8>,
    sender: mpsc::Sender<Result<WatchBatch, StoreError>>,
}

impl Feeder {
    async fn run(self, mut stream: etcd_client::WatchStream, start: i64) {
        // The next etcd revision this watcher has not seen.
        let mut next = start;
        // Streams that broke in a row without delivering an event: one that can never be read (say) ends the
        // watch with an error rather than being opened again forever.
        let mut broken = 0;
        loop {
            // A watcher that went away ends the etcd watch, also while nothing changes.
            let message = tokio::select! {
                message = stream.message() => message,
                () = self.sender.closed() => return,
            };
            let response = match message {
                Ok(Some(response)) => response,
                // The stream broke (a member went away, a timeout): open it again from where it was.
                Ok(None) | Err(_) if broken < MAX_BROKEN_STREAMS => {
                    broken += 1;
                    match self.reopen(next).await {
                        Some(reopened) => {
                            stream = reopened;
                            continue;
                        }
                        None => {
                            let error = StoreError::Backend("the etcd watch broke and could not be opened again".to_string());
                            let _ = self.sender.send(Err(error)).await;
                            return;
                        }
                    }
                }
                Ok(None) => {
                    let _ = self.sender.send(Err(StoreError::Backend("the etcd watch keeps ending".to_string()))).await;
                    return;
                }
                Err(error) => {
                    let _ = self.sender.send(Err(backend("watching", error))).await;
                    return;
                }
            };
            if response.compact_revision() > 0 {
                let _ =
                    self.sender.send(Err(StoreError::Compacted { requested: ours(next), oldest: ours(response.compact_revision()) })).await;
                return;
            }
            if response.canceled() {
                let reason = response.cancel_reason().to_string();
                let _ = self.sender.send(Err(StoreError::Backend(format!("etcd cancelled the watch: {reason}")))).await;
                return;
            }
            if !response.events().is_empty() {
                broken = 0;
            }
            let mut batches: Vec<WatchBatch> = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                if revision < next {
                    continue; // seen before the stream was opened again
                }
                let kind = match event.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                };
                // (A delete's key-value has only the key and the delete's revision, as the trait says.)
                let kv = key_value(&self.prefix, kv);
                match batches.last_mut() {
                    Some(batch) if batch.revision == ours(revision) => batch.events.push(WatchEvent { kind, kv }),
                    _ => batches.push(WatchBatch { revision: ours(revision), events: vec![WatchEvent { kind, kv }] }),
                }
            }
            for batch in batches {
                next = theirs(batch.revision) + 1;
                // etcd sends history (and a watcher catching up) in bursts larger than the buffer: a watcher
                // that reads makes room at once; one that made none for LAG_PATIENCE is dropped.
                match tokio::time::timeout(LAG_PATIENCE, self.sender.reserve()).await {
                    Ok(Ok(permit)) => permit.send(Ok(batch)),
                    Ok(Err(_closed)) => return,
                    Err(_elapsed) => {
                        drop(stream);
                        let _ = self.sender.send(Err(StoreError::WatchLagged)).await;
                        return;
                    }
                }
            }
        }
    }

    /// Opens the watch again from etcd revision `next`, retrying for [`WATCH_RETRY_FOR`].
    async fn reopen(&self, next: i64) -> Option<etcd_client::WatchStream> {
        let deadline = tokio::time::Instant::now() + WATCH_RETRY_FOR;
        let mut delay = Duration::from_millis(100);
        while tokio::time::Instant::now() < deadline && !self.sender.is_closed() {
            let options = WatchOptions::new().with_range(prefix_end(&self.key)).with_start_revision(next);
            // Never reconnect in a tight loop, whatever broke the stream.
            tokio::time::sleep(delay).await;
            let mut client = self.client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            match client.watch(self.key.clone(), Some(options)).await {
                Ok(stream) => return Some(stream),
                Err(error) if message(&error).contains("invalid auth token") => {
                    tracing::info!("the etcd auth token expired; authenticating again before watching");
                    if let Err(error) = self.client.refresh_token().await {
                        tracing::warn!(error = %message(&error), "authenticating to etcd again failed");
                    }
                }
                Err(error) => tracing::debug!(error = %message(&error), "opening the etcd watch again failed; retrying"),
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        None
    }
}

/// The operations with only the last one of each key kept, in order: etcd refuses a transaction that names a key
/// twice, and applying them one after the other (as the trait says) leaves what the last one did.
fn last_per_key(ops: &[Op]) -> Vec<Op> {
    let key = |op: &Op| match op {
        Op::Put { key, .. } | Op::Delete { key } => Some(key.clone()),
        Op::DeletePrefix { .. } => None,
    };
    let mut last = std::collections::HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        if let Some(key) = key(op) {
            last.insert(key, index);
        }
    }
    ops.iter().enumerate().filter(|(index, op)| key(op).is_none_or(|key| last[&key] == *index)).map(|(_, op)| op.clone()).collect()
}

/// Whether a request certainly never reached etcd's state machine (a member that does not accept connections,
/// one without a leader): safe to send again, to another member, whatever it was.
fn never_applied(error: &etcd_client::Error) -> bool {
    let text = message(error).to_ascii_lowercase();
    ["tcp connect error", "error trying to connect", "connection refused", "no leader"].iter().any(|sign| text.contains(sign))
}

/// Whether a request failed in a way a later try may not (a timeout, a broken connection, a new leader).
fn transient(error: &etcd_client::Error) -> bool {
    let text = message(error).to_ascii_lowercase();
    never_applied(error)
        || ["timeout", "timed out", "leader changed", "unavailable", "connection reset", "broken pipe", "transport error", "h2 protocol"]
            .iter()
            .any(|sign| text.contains(sign))
}

/// A gRPC channel over TLS balanced over the endpoints (which must all be `https://`), with the options
/// `Client::connect` would give its own channels.
fn tls_channel(options: &EtcdOptions, tls: &EtcdTls) -> Result<tonic::transport::Channel, StoreError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let bad = |message: String| StoreError::Backend(message);
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_cert));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    let mut endpoints = Vec::new();
    for url in &options.endpoints {
        if !url.starts_with("https://") {
            return Err(bad(format!("etcd endpoint {url}: with TLS to etcd every endpoint is an https:// URL")));
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .and_then(|endpoint| endpoint.tls_config(config.clone()))
            .map_err(|error| bad(format!("etcd endpoint {url}: {error}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(options.request_timeout)
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .keep_alive_while_idle(false);
        endpoints.push(endpoint);
    }
    Ok(tonic::transport::Channel::balance_list(endpoints.into_iter()))
}

/// Which failures of an operation may be retried.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and idempotent calls: any transient failure.
    Transient,
    /// Writes: only a request that never reached etcd (a retried transaction must not apply twice).
    NeverApplied,
}

/// etcd's revision of ours.
fn theirs(revision: Revision) -> i64 {
    if revision == 0 { 0 } else { i64::try_from(revision).unwrap_or(i64::MAX - 1) + 1 }
}

/// Our revision of etcd's.
fn ours(revision: i64) -> Revision {
    u64::try_from(revision - 1).unwrap_or(0)
}

/// The end of the range of every key starting with `start` (`start` with its last byte below 0xff raised).
fn prefix_end(start: &[u8]) -> Vec<u8> {
    let mut end = start.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Ours of etcd's key-value, its key without the store's prefix.
fn key_value(prefix: &str, kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: strip(prefix, kv.key()),
        value: kv.value().to_vec(),
        create_revision: ours(kv.create_revision()),
        mod_revision: ours(kv.mod_revision()),
        version: u64::try_from(kv.version()).unwrap_or(0),
        lease: (kv.lease() != 0).then_some(kv.lease() as u64),
    }
}

fn strip(prefix: &str, key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    key.strip_prefix(prefix).unwrap_or(&key).to_string()
}

fn message(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

fn backend(what: &str, error: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {what}: {}", message(&error)))
}

impl Store for EtcdStore {
    fn backend_name(&self) -> &'static str {
        "etcd"
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        let key = key.to_string();
        Box::pin(async move { self.get_key(&key).await })
    }

    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        let prefix = prefix.to_string();
        Box::pin(async move { self.range_prefix(&prefix).await })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        Box::pin(self.apply(txn))
    }

    fn watch(&self, prefix: &str, from_revision: Revision) -> BoxFuture<'_, Result<Watch, StoreError>> {
        let prefix = prefix.to_string();
        Box::pin(async move { self.open_watch(&prefix, from_revision).await })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(self.current())
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(self.grant(ttl))
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.keep(lease))
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.revoke(lease))
    }

    fn max_txn_size(&self) -> Option<crate::TxnLimits> {
        Some(crate::TxnLimits { ops: self.options.max_txn_ops, bytes: self.options.max_txn_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_etcds_minus_one_and_zero_stays_zero() {
        assert_eq!((theirs(0), theirs(1), theirs(41)), (0, 2, 42));
        assert_eq!((ours(1), ours(2), ours(42), ours(0)), (0, 1, 41, 0));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/davit/"), b"/davit0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
