//! The davit node agent: it fingerprints the machine, registers it with the servers and heartbeats,
//! long-polls the allocations the servers assigned to it, runs their tasks through drivers (restarting
//! them by the group's restart policy), reports task and allocation status back, keeps local state so
//! that an agent restart re-attaches to running tasks, serves task logs over HTTP, and runs the node's
//! service proxy and DNS server from the server's service catalog.
//!
//! Used by the `davit` binary (`davit agent`, `davit dev`) through [`start`] and [`AgentHandle`].
//!
//! Invariants:
//! - The agent never decides placement: it runs what the server assigns, and nothing else.
//! - An agent restart never restarts a workload that was running: tasks are re-attached from
//!   `<data_dir>/allocs/<id>/state.json` before the agent talks to the server.
//! - An allocation is started at most once by one agent process, and never started again once its
//!   runner was created (also not after it finished).
//! - A long-running loop survives one bad allocation: it is marked failed and the loop goes on.
//!
//! Module map: [`fingerprint`] (node facts) → `heartbeat` (register + heartbeat) → `watcher` (allocation
//! long-poll, reconcile) → [`alloc_runner`] / `task_runner` (the lifecycle, with [`restart`] decisions and
//! [`taskenv`] interpolation) → [`status`] (client status, batched updates) and [`state`] (local state);
//! `api` serves [`logs`] and the proxy's counters; `services` keeps the proxy and DNS in line with the catalog;
//! `usage` reports the allocations' CPU and memory and the proxy's counters to the servers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use davit_api::spec::JobSpec;
use davit_client::ClientError;
use davit_drivers::Driver;
pub use davit_drivers::LogRotation;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod acl;
mod alloc_dir;
pub mod alloc_runner;
mod alloc_shared;
mod api;
pub mod check;
mod cluster;
mod deployment_health;
mod exec;
mod fence;
pub mod fingerprint;
pub mod grpc_health;
mod heartbeat;
#[cfg(test)]
mod lifecycle_tests;
pub mod logs;
pub mod restart;
mod servers;
mod services;
pub mod state;
pub mod status;
mod supervised;
mod task_runner;
pub mod taskenv;
mod template;
mod tls;
mod usage;
mod watcher;

use alloc_runner::AllocRunner;
pub use api::routes;
use fingerprint::NodeIdentity;
use servers::ServerPool;
use services::ServiceProxy;
pub use services::ServiceProxyConfig;
use status::Updater;
pub use tls::AgentTlsConfig;

/// How to run the agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// Holds `node-id` and `allocs/<id>/` (task dirs, logs, local state).
    pub data_dir: PathBuf,
    /// Empty: the host name.
    pub node_name: String,
    pub datacenter: String,
    pub class: String,
    /// Server base URLs, e.g. `http://127.0.0.1:7646`; tried in order when one fails. Must not be empty.
    pub servers: Vec<String>,
    /// Address of the agent's own HTTP API; port 0 picks any free port.
    pub http_bind: SocketAddr,
    /// Host part of `Node.http_addr`, as the servers reach this agent.
    pub advertise_host: String,
    /// Inclusive range of host ports the scheduler may assign on this node.
    pub port_range: (u16, u16),
    /// User attributes; they override fingerprinted ones with the same key.
    pub attributes: BTreeMap<String, String>,
    pub drivers: Vec<Arc<dyn Driver>>,
    /// `davit dev`: stop every task when the agent shuts down. `davit agent`: leave them running and re-attach
    /// on the next start.
    pub stop_tasks_on_shutdown: bool,
    pub log_rotation: LogRotation,
    /// The node's service proxy and DNS server; `None`: neither runs (`--no-service-proxy`).
    pub service_proxy: Option<ServiceProxyConfig>,
    /// The ACL token the agent sends to the servers (it needs `node: write`); `None` for servers without ACLs.
    pub token: Option<String>,
    /// A join token (`davit acl join-token create`): the agent registers with it once, gets its node identity
    /// (a node token, kept in `<data_dir>/node-token`) and acts with that from then on.
    pub join_token: Option<String>,
    /// Mutual TLS with `https://` servers; the agent's API is then served over HTTPS too.
    pub tls: Option<AgentTlsConfig>,
    /// How often allocations' CPU and memory usage and the proxy's counters are sampled and reported.
    pub usage_interval: Duration,
}

impl AgentConfig {
    /// Defaults: node name from the host name, datacenter `dc1`, HTTP on `127.0.0.1:0`, advertised as
    /// `127.0.0.1`, ports 20000–32000, no drivers, tasks left running at shutdown, no service proxy, usage sampled
    /// every 5 s.
    pub fn new(data_dir: PathBuf, servers: Vec<String>) -> AgentConfig {
        AgentConfig {
            data_dir,
            node_name: String::new(),
            datacenter: "dc1".to_string(),
            class: String::new(),
            servers,
            http_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            advertise_host: "127.0.0.1".to_string(),
            port_range: (20000, 32000),
            attributes: BTreeMap::new(),
            drivers: Vec::new(),
            stop_tasks_on_shutdown: false,
            log_rotation: LogRotation::default(),
            service_proxy: None,
            token: None,
            join_token: None,
            tls: None,
            usage_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent configuration: {0}")]
    Config(String),
    #[error("{operation}")]
    Io {
        operation: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    ServiceProxy {
        what: String,
        #[source]
        source: davit_proxy::Error,
    },
    #[error("binding the agent HTTP API to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running agent. Dropping it without [`AgentHandle::shutdown`] leaves its background tasks running
/// until the runtime ends.
pub struct AgentHandle {
    context: Arc<AgentContext>,
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
    updater: JoinHandle<()>,
    stop_tasks_on_shutdown: bool,
}

impl AgentHandle {
    pub fn node_id(&self) -> &str {
        &self.context.node.id
    }

    /// Where the agent's HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the service DNS server listens, unless the service proxy is off.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.context.service_proxy.as_ref().map(|service_proxy| service_proxy.dns.local_addr())
    }

    /// Appends the agent's metrics (Prometheus text format) to a buffer: for `davit dev`'s `/metrics`.
    pub fn metrics_source(&self) -> Arc<dyn Fn(&mut String) + Send + Sync> {
        let context = Arc::clone(&self.context);
        Arc::new(move |out: &mut String| context.render_metrics(out))
    }

    /// Stops watching the server. With `stop_tasks_on_shutdown` every task is stopped (kill signal, kill
    /// timeout) and the final status is sent; otherwise tasks keep running and the local state stays on
    /// disk for the next start to re-attach.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.loops {
            let _ = task.await;
        }
        let runners: Vec<Arc<AllocRunner>> = self.context.runners.lock().expect("runners lock").values().cloned().collect();
        if self.stop_tasks_on_shutdown {
            for runner in &runners {
                runner.stop();
            }
        } else {
            for runner in &runners {
                runner.detach();
            }
        }
        futures_util::future::join_all(runners.iter().map(|runner| runner.wait_finished())).await;
        let _ = self.updater.await;
        if self.stop_tasks_on_shutdown {
            self.context.updater.flush(Duration::from_secs(5)).await;
        }
        // Followed log streams may hold the server open: give it a moment, then cut them.
        let mut http = self.http;
        if tokio::time::timeout(Duration::from_secs(1), &mut http).await.is_err() {
            http.abort();
        }
        tracing::info!(node_id = %self.context.node.id, "agent stopped");
    }
}

/// Starts the agent: fingerprint, HTTP API, re-attach to the tasks in the local state, then register,
/// heartbeat and watch allocations in the background.
pub async fn start(config: AgentConfig) -> Result<AgentHandle, AgentError> {
    if config.servers.is_empty() {
        return Err(AgentError::Config("no servers given".to_string()));
    }
    if config.port_range.0 > config.port_range.1 {
        return Err(AgentError::Config(format!("port range {}-{} is empty", config.port_range.0, config.port_range.1)));
    }
    let allocs_dir = state::allocs_dir(&config.data_dir);
    std::fs::create_dir_all(&allocs_dir)
        .map_err(|source| AgentError::Io { operation: format!("creating {}", allocs_dir.display()), source })?;
    let node_id = fingerprint::load_or_create_node_id(&config.data_dir)?;
    if config.tls.is_none() && config.servers.iter().any(|server| server.starts_with("https://")) {
        return Err(AgentError::Config(
            "the servers use https://: give the cluster's CA certificate with --ca-cert or DAVIT_CACERT".to_string(),
        ));
    }
    if let Some(plain) = config.servers.iter().find(|server| config.tls.is_some() && !server.starts_with("https://")) {
        return Err(AgentError::Config(format!(
            "--ca-cert is given but server {plain} is not an https:// address: the node's tokens must not travel in clear"
        )));
    }
    let mut cert_files_watch = None;
    let (node_cert, client_tls, api_tls) = match &config.tls {
        Some(tls) => {
            let (cert, watch) = tls::NodeCert::load(tls, &config.data_dir, &node_id)?;
            cert_files_watch = watch;
            let tls_error = |error: davit_tls::TlsError| AgentError::Config(format!("TLS: {error}"));
            let client = davit_client::ClientTls::load(&tls.ca_cert, Some(Arc::clone(&cert.slot))).map_err(tls_error)?;
            let api = davit_tls::server_config(client.roots(), Arc::clone(&cert.slot)).map_err(tls_error)?;
            (Some(Arc::new(cert)), Some(client), Some(api))
        }
        None => (None, None, None),
    };

    let listener =
        tokio::net::TcpListener::bind(config.http_bind).await.map_err(|source| AgentError::Bind { addr: config.http_bind, source })?;
    let http_addr = listener.local_addr().map_err(|source| AgentError::Bind { addr: config.http_bind, source })?;

    let mut attributes = fingerprint::host_attributes();
    attributes.extend(config.attributes.clone());
    let node_name =
        if config.node_name.is_empty() { fingerprint::hostname().unwrap_or_else(|| node_id.clone()) } else { config.node_name.clone() };
    let identity = NodeIdentity {
        id: node_id.clone(),
        name: node_name,
        datacenter: config.datacenter.clone(),
        class: config.class.clone(),
        attributes,
    };
    let driver_infos = fingerprint::fingerprint_drivers(&config.drivers).await;
    let node = fingerprint::build_node(
        &identity,
        format!("{}://{}:{}", if api_tls.is_some() { "https" } else { "http" }, config.advertise_host, http_addr.port()),
        http_addr.port(),
        config.port_range,
        driver_infos,
    );

    let service_proxy = match &config.service_proxy {
        Some(service_proxy) => Some(Arc::new(ServiceProxy::start(service_proxy).await?)),
        None => None,
    };

    // A node identity from an earlier join wins over the tokens given; a join token is used until it yields one.
    let node_token = heartbeat::load_node_token(&config.data_dir)?;
    let token = node_token.or(config.token.clone()).or(config.join_token.clone());
    let servers = ServerPool::new(&config.servers, token.as_deref(), client_tls, Some(config.data_dir.join("last-contact")));
    let updater = Updater::new(node_id.clone(), servers.clone());
    let context = Arc::new(AgentContext {
        node: identity,
        data_dir: config.data_dir.clone(),
        drivers: config.drivers.iter().map(|driver| (driver.name().to_string(), driver.clone())).collect(),
        servers,
        updater: updater.clone(),
        log_rotation: config.log_rotation,
        advertise_host: config.advertise_host.clone(),
        port_range: config.port_range,
        specs: Mutex::new(HashMap::new()),
        runners: Mutex::new(BTreeMap::new()),
        destroyed: Mutex::new(HashSet::new()),
        service_proxy: service_proxy.clone(),
        local_services: watch::channel(0).0,
        acl: acl::AgentAcl::new(token.is_some()),
        tls: node_cert.clone(),
        cluster: cluster::ClusterId::load(&config.data_dir)
            .map_err(|source| AgentError::Io { operation: format!("reading {}", config.data_dir.join("cluster-id").display()), source })?,
        loop_restarts: Arc::default(),
    });

    // Re-attach before talking to the server, so nothing that runs is started again.
    watcher::restore(&context);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (registered_tx, registered_rx) = watch::channel(false);
    let restarts = &context.loop_restarts;
    let updater_task = supervised::spawn(restarts, "status", {
        let (updater, shutdown) = (updater.clone(), shutdown_rx.clone());
        move || updater.clone().run(shutdown.clone())
    });
    let heartbeat_task = supervised::spawn(restarts, "heartbeat", {
        let (context, shutdown) = (context.clone(), shutdown_rx.clone());
        move || heartbeat::run(context.clone(), node.clone(), registered_tx.clone(), shutdown.clone())
    });
    let watcher_task = supervised::spawn(restarts, "watcher", {
        let (context, shutdown) = (context.clone(), shutdown_rx.clone());
        move || watcher::run(context.clone(), registered_rx.clone(), shutdown.clone())
    });
    let fence_task = supervised::spawn(restarts, "fence", {
        let (context, shutdown) = (context.clone(), shutdown_rx.clone());
        move || fence::run(context.clone(), shutdown.clone())
    });
    let usage_task = supervised::spawn(restarts, "usage", {
        let (context, shutdown, interval) = (context.clone(), shutdown_rx.clone(), config.usage_interval);
        move || usage::run(context.clone(), interval, shutdown.clone())
    });
    let mut loops = vec![heartbeat_task, watcher_task, fence_task, usage_task];
    if let Some(watch) = cert_files_watch {
        let mut stop = shutdown_rx.clone();
        loops.push(tokio::spawn(async move {
            let _ = stop.wait_for(|stop| *stop).await;
            watch.abort();
        }));
    }
    if let Some(cert) = node_cert.filter(|cert| cert.issued) {
        let (context, shutdown) = (context.clone(), shutdown_rx.clone());
        loops.push(supervised::spawn(restarts, "certificate", move || tls::keep_fresh(context.clone(), cert.clone(), shutdown.clone())));
    }
    if let Some(service_proxy) = &service_proxy {
        let (context, proxy, shutdown) = (context.clone(), service_proxy.clone(), shutdown_rx.clone());
        loops.push(supervised::spawn(restarts, "services", move || services::run(context.clone(), proxy.clone(), shutdown.clone())));
        tracing::info!(dns = %service_proxy.dns.local_addr(), proxy_ip = %service_proxy.bind_ip, "service proxy and DNS started");
    }
    let http_task = tokio::spawn(api::serve(context.clone(), listener, api_tls, shutdown_rx));
    tracing::info!(node_id = %node_id, http = %http_addr, "agent started");

    Ok(AgentHandle {
        context,
        http_addr,
        shutdown: shutdown_tx,
        loops,
        http: http_task,
        updater: updater_task,
        stop_tasks_on_shutdown: config.stop_tasks_on_shutdown,
    })
}

/// What every part of a running agent shares.
pub(crate) struct AgentContext {
    pub node: NodeIdentity,
    pub data_dir: PathBuf,
    pub drivers: BTreeMap<String, Arc<dyn Driver>>,
    pub servers: ServerPool,
    pub updater: Updater,
    pub log_rotation: LogRotation,
    /// How other agents reach this node (`AgentConfig::advertise_host`): live migrations connect there.
    pub advertise_host: String,
    /// The node's scheduler port range: ports picked for incoming migrations stay out of it.
    pub port_range: (u16, u16),
    /// Job specs by (job, version); versions never change once stored.
    specs: Mutex<HashMap<(String, u64), Arc<JobSpec>>>,
    /// One runner per allocation this agent has started (or re-attached to) and not yet destroyed.
    pub runners: Mutex<BTreeMap<String, Arc<AllocRunner>>>,
    /// Allocations whose runner was destroyed: never started again by this process.
    pub destroyed: Mutex<HashSet<String>>,
    /// The node's proxy and DNS server, unless turned off.
    pub service_proxy: Option<Arc<ServiceProxy>>,
    /// Bumped when this node's allocations (and so their tasks' upstreams) change; the service loop
    /// watches it.
    pub local_services: watch::Sender<u64>,
    /// Access control of the agent's own API.
    pub acl: acl::AgentAcl,
    /// The node's certificate, with TLS.
    pub tls: Option<Arc<tls::NodeCert>>,
    /// The cluster this node belongs to: servers of another are refused.
    pub cluster: cluster::ClusterId,
    /// Restarts of the agent's loops after a panic.
    pub loop_restarts: Arc<supervised::LoopRestarts>,
}

impl AgentContext {
    /// The agent's `/metrics`: its loops' restarts and the proxy's per-service and per-backend counters.
    pub fn render_metrics(&self, out: &mut String) {
        self.loop_restarts.render(out);
        if let Some(service_proxy) = &self.service_proxy {
            service_proxy.proxy.render_prometheus(out);
        }
    }

    /// `answer`, if its server belongs to this node's cluster (see `cluster.rs`): what a server of another
    /// cluster says about this node's work (allocations, catalog, template data) is never followed.
    pub fn same_cluster<T>(&self, answer: davit_client::Indexed<T>) -> Result<davit_client::Indexed<T>, ClientError> {
        match self.cluster.check(answer.cluster.as_deref()) {
            Ok(()) => Ok(answer),
            Err(message) => Err(ClientError::WrongCluster { message }),
        }
    }

    /// The spec of one job version, from the cache or the server.
    pub async fn job_spec(&self, job: &str, version: u64) -> Result<Arc<JobSpec>, ClientError> {
        let key = (job.to_string(), version);
        if let Some(spec) = self.specs.lock().expect("spec cache lock").get(&key) {
            return Ok(spec.clone());
        }
        let fetched = self.servers.call(|client| async move { client.job_version(job, version).await }).await?;
        let spec = Arc::new(fetched.spec);
        self.specs.lock().expect("spec cache lock").insert(key, spec.clone());
        Ok(spec)
    }

    /// Tells the service loop that the node's allocations changed (their upstreams may need listeners).
    pub fn local_services_changed(&self) {
        self.local_services.send_modify(|generation| *generation += 1);
    }

    /// The IP tasks reach their upstreams at, when the service proxy runs.
    pub fn upstream_ip(&self) -> Option<std::net::IpAddr> {
        self.service_proxy.as_ref().map(|service_proxy| service_proxy.bind_ip)
    }

    pub fn alloc_dir(&self, alloc_id: &str) -> PathBuf {
        state::allocs_dir(&self.data_dir).join(alloc_id)
    }
}

/// Wall-clock time in Unix milliseconds (for events and restart windows; durations use tokio time).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}
