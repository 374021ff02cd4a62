//! The davit server: the HTTP API under `/v1`, the in-memory view of the cluster, the evaluation
//! broker, scheduler workers, the plan applier, the node-liveness watcher and the node drainer.
//!
//! ```text
//!  HTTP API ──txn──▶ store ──change feed──▶ View (snapshots) ──▶ broker ──▶ workers ──plan──▶ applier ──txn──▶ store
//! ```
//!
//! This crate must never run workloads (agents do) and never decide placement itself (the pure
//! `davit-scheduler` does). Every change goes through the store; readers use the view.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use davit_scheduler::SchedulerConfig;
use davit_store::{Store, StoreError, Txn};
use tokio::sync::mpsc;

mod acl;
mod admission;
mod analysis;
mod api;
/// Public for benchmarks (`check_plan`); the server drives it through [`start`].
pub mod applier;
mod autoscaler;
mod broker;
mod catalog;
mod deployments;
mod drainer;
#[doc(hidden)]
pub mod fuzz;
mod gc;
mod keyring;
mod keys;
pub mod leader;
mod liveness;
mod metrics;
mod migration;
pub mod phi;
mod prometheus;
mod supervise;
mod tls;
mod usage;
mod view;
mod worker;

pub use admission::AdmissionConfig;
pub use api::routes;
pub use autoscaler::AutoscalerConfig;
pub use gc::GcConfig;
pub use liveness::LivenessConfig;
pub use prometheus::PrometheusAccess;
pub use tls::TlsConfig;

use crate::applier::Applier;
use crate::broker::Broker;
use crate::liveness::Liveness;
use crate::metrics::{CountingStore, Metrics};
use crate::view::{View, ViewEvent};

/// How to run a server.
pub struct ServerConfig {
    /// Address of the HTTP API. Port 0 picks a free port (see [`ServerHandle::addr`]).
    pub bind: SocketAddr,
    pub store: Arc<dyn Store>,
    /// Scheduler workers; [`default_workers`] unless the operator says otherwise.
    pub workers: usize,
    pub liveness: LivenessConfig,
    pub scheduler: SchedulerConfig,
    /// Check every request's token against the ACL policies (see the `acl` module). Off: every request
    /// may do everything, so the caller must keep the API on loopback.
    pub acl_enabled: bool,
    /// Append every write request to this file (JSON lines, rotated at 64 MiB).
    pub audit_log: Option<std::path::PathBuf>,
    /// Audit reads (GET) too.
    pub audit_reads: bool,
    /// The keyring that seals variables (created there on first start); `None`: a keyring in memory only,
    /// whose variables do not survive a restart (tests).
    pub keyring: Option<std::path::PathBuf>,
    /// Serve HTTPS, issue node certificates at join and check nodes' certificates; `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Bounds on job specs (the largest node's resources are added per request).
    pub spec_limits: davit_api::spec::SpecLimits,
    /// When ended evaluations, allocations, jobs and old job versions are collected.
    pub gc: GcConfig,
    /// Caps on open blocking queries and event streams.
    pub admission: AdmissionConfig,
    /// How often the autoscaler evaluates the groups with `scaling.metrics`.
    pub autoscaler: AutoscalerConfig,
    /// Whether this server runs the control plane or follows the one that does.
    pub role: Role,
}

/// What a server does among the servers on one shared store.
#[derive(Clone, Debug, Default)]
pub enum Role {
    /// Runs every loop (broker, workers, applier, liveness, drainer, deployments, autoscaler, GC) and serves the
    /// whole API: a server alone on its store, or the leader of several.
    #[default]
    Leader,
    /// Keeps its view fed from the store and serves reads from it, and forwards writes (and the reads that
    /// need the leader's memory) to the leader the receiver names; runs no loop.
    Follower(tokio::sync::watch::Receiver<Option<leader::LeaderInfo>>),
}

/// Two scheduler workers per core. A worker spends much of an evaluation waiting for the plan applier's
/// commit and for the view to show it; a second one per core keeps the cores busy meanwhile and gives the
/// applier more plans per batch (1,000,000 allocations on 10,000 simulated nodes on 2 cores: median 60 s with
/// four workers, 63 s with two, 66 s with eight: more plans racing means more of them refused and planned
/// again).
pub fn default_workers() -> usize {
    2 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the HTTP API to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading state from the store")]
    Store(#[from] StoreError),
    #[error("opening the keyring")]
    Keyring(#[from] keyring::KeyringError),
    #[error("setting up TLS")]
    Tls(#[from] davit_tls::TlsError),
    #[error(
        "variables in the store are sealed with key(s) {0} that this server's keyring does not have: servers on one etcd \
         share one keyring, so copy keyring.json from the data directory of a server of this cluster into this one's"
    )]
    KeyringMismatch(String),
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The API's router (what the listener serves), for in-process callers such as the fuzzer.
    router: axum::Router,
    shutdown: tokio::sync::oneshot::Sender<()>,
    http: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's router, to call in-process (requests have no peer address or certificate).
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// The store revision the server's view reflects.
    pub fn revision(&self) -> u64 {
        self.shared.view.snapshot().revision
    }

    /// Adds text to every `GET /metrics` answer: `davit dev` appends its agent's proxy metrics this way.
    /// `render` appends complete metric families in the Prometheus text format.
    pub fn add_metrics_source(&self, render: MetricsSource) {
        self.shared.metrics_sources.write().expect("metrics sources lock").push(render);
    }

    /// Stops serving HTTP and the background loops, and waits until they ended; the plan applier ends once
    /// the last of them let go of it, and then nothing holds the store. The store stays consistent (every
    /// write is a transaction).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        self.shared.view.release_waiters();
        // Streams that follow a log through an agent do not end by themselves: they are cut after a while.
        let mut http = self.http;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut http).await.is_err() {
            tracing::warn!("requests still open {SHUTDOWN_GRACE:?} after the shutdown began; closing them");
            http.abort();
            let _ = http.await;
        }
        for task in &self.background {
            task.abort();
        }
        for task in self.background {
            let _ = task.await;
        }
        self.shared.view.stop();
    }
}

/// How long a shutdown waits for open requests to end.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Appends metric families (Prometheus text format) to a `/metrics` answer.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Shared by every request handler and loop.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub view: Arc<View>,
    pub applier: Applier,
    pub liveness: Arc<Liveness>,
    /// What the workers schedule with (also used by `job plan`'s dry runs).
    pub scheduler: davit_scheduler::SchedulerConfig,
    pub http: reqwest::Client,
    pub metrics: Arc<Metrics>,
    /// More metrics appended to `/metrics` (see [`ServerHandle::add_metrics_source`]).
    pub metrics_sources: std::sync::RwLock<Vec<MetricsSource>>,
    /// The service catalog derived from the view, with its own index.
    pub catalog: catalog::CatalogCache,
    /// Changes (or closes) when the server shuts down: long-lived responses (the event stream) end then.
    pub closing: tokio::sync::watch::Receiver<bool>,
    pub acl_enabled: bool,
    pub audit: Option<acl::AuditLog>,
    pub keyring: keyring::Keyring,
    /// Held for reading while a value is sealed and committed, for writing while keys change: a key is never
    /// removed between sealing a variable with it and storing it.
    pub keyring_lock: tokio::sync::RwLock<()>,
    /// Signs relay tokens (`acl::Caller::relay_token`): derived from the keyring, so the servers that share one
    /// (all servers on one etcd) accept each other's.
    pub relay_key: Arc<[u8; 32]>,
    /// Mutual TLS, when on.
    pub tls: Option<Arc<tls::ServerTls>>,
    pub spec_limits: davit_api::spec::SpecLimits,
    pub gc: GcConfig,
    pub admission: Arc<admission::Admission>,
    /// The cluster's id (`keys::CLUSTER_ID`), on every answer as [`davit_api::http::CLUSTER_HEADER`]: agents
    /// refuse a server of another cluster (wiped, or foreign) instead of stopping their work for it.
    pub cluster_id: String,
    /// The agents' usage samples and proxy counters (in memory).
    pub signals: usage::Signals,
    /// The autoscaler's history and last evaluation per group (in memory).
    pub autoscaler: autoscaler::Autoscaler,
    /// `Some` on a follower: who leads (`None` while nobody does), where writes go.
    pub leader: Option<tokio::sync::watch::Receiver<Option<leader::LeaderInfo>>>,
    /// When this server started (Unix milliseconds).
    pub started: u64,
    /// Where it serves the API.
    pub addr: SocketAddr,
}

impl Shared {
    /// The HTTP client for relaying to the agent of node `node_id` (logs, exec, proxy counters): with TLS it
    /// accepts only that node's certificate. It never follows redirects.
    pub fn agent_http(&self, node_id: &str) -> Result<reqwest::Client, api::Failure> {
        match &self.tls {
            Some(tls) => {
                tls.agent_client(node_id).map_err(|error| api::Failure::internal(format!("TLS client for node {node_id}: {error}")))
            }
            None => Ok(self.http.clone()),
        }
    }
}

/// Starts the server: loads the view, starts the loops, and serves HTTP.
pub async fn start(mut config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let keyring = match &config.keyring {
        Some(path) => keyring::Keyring::open(path, now_millis())?,
        None => keyring::Keyring::in_memory(now_millis()),
    };
    // What can fail comes first: nothing runs yet when it does.
    let cluster_id = cluster_id(config.store.as_ref()).await?;
    let relay_key = keyring.derive(b"davit relay tokens v1");
    let (tls, tls_renewal) = match config.tls.take() {
        Some(tls) => {
            let (tls, renew) = tls::ServerTls::start(tls)?;
            (Some(tls), Some(renew))
        }
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|source| ServerError::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.bind, source })?;
    let metrics = Arc::new(Metrics::default());
    config.store = Arc::new(CountingStore { inner: config.store, metrics: Arc::clone(&metrics) });
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let view = View::start(Arc::clone(&config.store), events_tx).await?;
    if let Err(error) = keyring_covers(&keyring, &view.snapshot(), config.store.backend_name()) {
        view.stop();
        return Err(error);
    }
    let applier = Applier::start(Arc::clone(&config.store), Arc::clone(&view), Arc::clone(&metrics));
    let liveness = Liveness::new(config.liveness, &view.snapshot());
    let mut background: Vec<tokio::task::JoinHandle<()>> = tls_renewal.into_iter().collect();
    let leader = match &config.role {
        Role::Leader => {
            start_loops(&config, &mut background, events_rx, &view, &applier, &liveness, &metrics);
            None
        }
        // A follower's view events go nowhere: it schedules nothing.
        Role::Follower(leader) => Some(leader.clone()),
    };
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        store: Arc::clone(&config.store),
        view,
        applier,
        liveness,
        scheduler: config.scheduler.clone(),
        http: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client"),
        metrics: Arc::clone(&metrics),
        metrics_sources: std::sync::RwLock::new(Vec::new()),
        catalog: catalog::CatalogCache::default(),
        closing,
        acl_enabled: config.acl_enabled,
        audit: config.audit_log.map(|path| acl::AuditLog::new(path, config.audit_reads)),
        keyring,
        keyring_lock: tokio::sync::RwLock::new(()),
        relay_key: Arc::new(relay_key),
        tls: tls.clone(),
        spec_limits: config.spec_limits.clone(),
        gc: config.gc.clone(),
        admission: Arc::new(admission::Admission::new(&config.admission)),
        cluster_id,
        signals: usage::Signals::default(),
        autoscaler: autoscaler::Autoscaler::default(),
        leader,
        started: now_millis(),
        addr,
    });
    if shared.leader.is_none() {
        background.push(tokio::spawn(supervise::supervise("analysis", Arc::clone(&shared.metrics), {
            let shared = Arc::clone(&shared);
            Box::new(move || Box::pin(analysis::run(Arc::clone(&shared))) as Loop)
        })));
        background.push(tokio::spawn(supervise::supervise("autoscaler", Arc::clone(&shared.metrics), {
            let (shared, config) = (Arc::clone(&shared), config.autoscaler.clone());
            Box::new(move || Box::pin(autoscaler::run(Arc::clone(&shared), config.clone())) as Loop)
        })));
    }
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let api_router = api::router(Arc::clone(&shared));
    let router = api_router.clone().into_make_service_with_connect_info::<davit_tls::Peer>();
    let closed = async move {
        let _ = shutdown_rx.await;
        let _ = closing_tx.send(true);
    };
    let http = match &tls {
        Some(tls) => {
            let listener =
                davit_tls::TlsListener::new(listener, tls.server_config()?).map_err(|source| ServerError::Bind { addr, source })?;
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(closed).await {
                    tracing::error!(%error, "HTTPS server failed");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(closed).await {
                tracing::error!(%error, "HTTP server failed");
            }
        }),
    };
    tracing::info!(%addr, tls = tls.is_some(), "davit server listening");
    Ok(ServerHandle { addr, shared, router: api_router, shutdown, http, background })
}

/// Starts the leader's loops (each supervised: a panic restarts it, see `supervise`).
fn start_loops(
    config: &ServerConfig,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
    events_rx: mpsc::UnboundedReceiver<ViewEvent>,
    view: &Arc<View>,
    applier: &Applier,
    liveness: &Arc<Liveness>,
    metrics: &Arc<Metrics>,
) {
    let (view, liveness, metrics) = (Arc::clone(view), Arc::clone(liveness), Arc::clone(metrics));
    let supervised = |name: &'static str, make: LoopFactory| tokio::spawn(supervise::supervise(name, Arc::clone(&metrics), make));
    let broker = Arc::new(Broker::default());
    let events = Arc::new(tokio::sync::Mutex::new(events_rx));
    background.push(supervised("coordinator", {
        let (broker, store, view) = (Arc::clone(&broker), Arc::clone(&config.store), Arc::clone(&view));
        Box::new(move || Box::pin(coordinate(Arc::clone(&events), Arc::clone(&broker), Arc::clone(&store), Arc::clone(&view))) as Loop)
    }));
    background.push(supervised("liveness", {
        let (liveness, store, view) = (Arc::clone(&liveness), Arc::clone(&config.store), Arc::clone(&view));
        Box::new(move || Box::pin(Arc::clone(&liveness).run(Arc::clone(&store), Arc::clone(&view))) as Loop)
    }));
    background.push(supervised("drainer", {
        let (store, view, applier, metrics) = (Arc::clone(&config.store), Arc::clone(&view), applier.clone(), Arc::clone(&metrics));
        Box::new(move || Box::pin(drainer::run(Arc::clone(&store), Arc::clone(&view), applier.clone(), Arc::clone(&metrics))) as Loop)
    }));
    background.push(supervised("deployments", {
        let (store, view) = (Arc::clone(&config.store), Arc::clone(&view));
        Box::new(move || Box::pin(deployments::run(Arc::clone(&store), Arc::clone(&view))) as Loop)
    }));
    background.push(supervised("gc", {
        let (store, view, applier, gc) = (Arc::clone(&config.store), Arc::clone(&view), applier.clone(), config.gc.clone());
        Box::new(move || Box::pin(gc::run(Arc::clone(&store), Arc::clone(&view), applier.clone(), gc.clone())) as Loop)
    }));
    for _ in 0..config.workers.max(1) {
        let worker = Arc::new(worker::Worker {
            store: Arc::clone(&config.store),
            view: Arc::clone(&view),
            broker: Arc::clone(&broker),
            applier: applier.clone(),
            config: config.scheduler.clone(),
            metrics: Arc::clone(&metrics),
            schedule: davit_scheduler::schedule,
        });
        background.push(supervised("worker", Box::new(move || Box::pin(Arc::clone(&worker).run()) as Loop)));
    }
}

/// A supervised loop, as its factory makes it.
type Loop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
/// Makes a supervised loop (again after a panic).
type LoopFactory = Box<dyn Fn() -> Loop + Send + Sync>;

/// Routes view events: pending evaluations to the broker; capacity changes unblock blocked evaluations.
/// An evaluation that blocked against a picture older than the last capacity change (the node became ready
/// while the worker was placing) is retried at once, as Nomad's blocked-evaluation tracker does.
async fn coordinate(
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<ViewEvent>>>,
    broker: Arc<Broker>,
    store: Arc<dyn Store>,
    view: Arc<View>,
) {
    let mut events = events.lock().await;
    // Not known at a (re)start: anything blocked on an older picture may fit now.
    let mut last_capacity_change = view.snapshot().revision;
    while let Some(event) = events.recv().await {
        let mut capacity_changed = false;
        let mut next = Some(event);
        // Drain what is queued so a burst of changes unblocks once.
        while let Some(event) = next.take().or_else(|| events.try_recv().ok()) {
            match event {
                ViewEvent::EvalPending(eval) => broker.enqueue(eval),
                ViewEvent::EvalBlocked(eval) => {
                    capacity_changed |= eval.snapshot_index < last_capacity_change;
                    if let Some(superseded) = broker.block(eval) {
                        tracing::debug!(eval = %superseded.id, "blocked evaluation superseded");
                    }
                }
                ViewEvent::CapacityChanged(revision) => {
                    last_capacity_change = last_capacity_change.max(revision);
                    capacity_changed = true;
                }
            }
        }
        if capacity_changed {
            let blocked = broker.take_blocked();
            if blocked.is_empty() {
                continue;
            }
            let now = now_millis();
            let mut txn = Txn::default();
            for eval in &blocked {
                let mut retry = (**eval).clone();
                retry.status = davit_api::objects::EvalStatus::Pending;
                retry.status_description = "capacity changed: retrying".to_string();
                retry.modify_time = now;
                txn.success.push(keys::put(keys::eval(&retry.id), &retry));
            }
            match store.txn(txn).await {
                Ok(response) => view.wait_for(response.revision).await,
                Err(error) => {
                    tracing::error!(%error, "could not requeue blocked evaluations");
                    for eval in blocked {
                        broker.block(eval);
                    }
                }
            }
        }
    }
}

/// The store's cluster id, made (a new v4 UUID) when the store has none: the first server of a cluster.
async fn cluster_id(store: &dyn Store) -> Result<String, StoreError> {
    loop {
        if let Some(stored) = store.get(keys::CLUSTER_ID).await? {
            return serde_json::from_slice(&stored.value).map_err(|error| StoreError::Backend(format!("{}: {error}", keys::CLUSTER_ID)));
        }
        let id = new_id();
        let mut txn = Txn::default();
        txn.compares.push(davit_store::Compare::Missing(keys::CLUSTER_ID.to_string()));
        txn.success.push(keys::put(keys::CLUSTER_ID.to_string(), &id));
        if store.txn(txn).await?.succeeded {
            tracing::info!(cluster_id = %id, "a new cluster");
            return Ok(id);
        }
    }
}

/// On a shared store (etcd) every server must read what any other sealed: a server whose keyring lacks a key
/// some variable is sealed with does not start (it would fail every read of those variables once it leads).
fn keyring_covers(keyring: &keyring::Keyring, snapshot: &view::Snapshot, backend: &str) -> Result<(), ServerError> {
    let known: std::collections::HashSet<String> = keyring.keys().into_iter().map(|(id, _, _)| id).collect();
    let missing: std::collections::BTreeSet<&str> =
        snapshot.variables.values().map(|stored| stored.sealed.key_id.as_str()).filter(|id| !known.contains(*id)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let missing = missing.into_iter().collect::<Vec<_>>().join(", ");
    if backend == "etcd" {
        return Err(ServerError::KeyringMismatch(missing));
    }
    tracing::error!(keys = %missing, "variables are sealed with keys this server's keyring does not have: they cannot be read");
    Ok(())
}

/// Now, in Unix milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use davit_api::objects::{EvalStatus, EvalTrigger, Evaluation};
    use davit_api::spec::JobType;
    use davit_store::RedbStore;

    use super::*;

    fn blocked(job: &str, snapshot_index: u64) -> Arc<Evaluation> {
        let mut eval = liveness::new_eval(job, JobType::Service, 50, EvalTrigger::QueuedAllocs, None);
        eval.status = EvalStatus::Blocked;
        eval.snapshot_index = snapshot_index;
        Arc::new(eval)
    }

    async fn stored_status(store: &dyn Store, id: &str) -> Option<EvalStatus> {
        let value = store.get(&keys::eval(id)).await.unwrap()?;
        Some(serde_json::from_slice::<Evaluation>(&value.value).unwrap().status)
    }

    #[tokio::test]
    async fn an_evaluation_blocked_on_a_picture_older_than_new_capacity_is_retried_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap());
        let (view_events, _ignored) = mpsc::unbounded_channel();
        let view = View::start(Arc::clone(&store), view_events).await.unwrap();
        let broker = Arc::new(Broker::default());
        let (events, receiver) = mpsc::unbounded_channel();
        tokio::spawn(coordinate(Arc::new(tokio::sync::Mutex::new(receiver)), Arc::clone(&broker), Arc::clone(&store), view));

        let wait_pending = |eval: Arc<Evaluation>| {
            let store = Arc::clone(&store);
            async move {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
                while stored_status(store.as_ref(), &eval.id).await != Some(EvalStatus::Pending) {
                    assert!(tokio::time::Instant::now() < deadline, "blocked evaluation {} of {} was not retried", eval.id, eval.job_name);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        // A node became ready at revision 7: what was blocked runs again.
        let first = blocked("first", 3);
        events.send(ViewEvent::CapacityChanged(7)).unwrap();
        events.send(ViewEvent::EvalBlocked(Arc::clone(&first))).unwrap();
        wait_pending(first).await;
        // Meanwhile a worker placed job `late` against revision 5, where nothing fit. Its blocked evaluation
        // arrives after the capacity change, alone: it must not wait for the next change.
        let late = blocked("late", 5);
        events.send(ViewEvent::EvalBlocked(Arc::clone(&late))).unwrap();
        wait_pending(late).await;
    }
}
