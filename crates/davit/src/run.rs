//! The long-running processes: `davit dev`, `davit server`, `davit agent`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use davit_drivers::{
    ContainerDriver, ContainerDriverConfig, Driver, ExecDriver, ExecDriverConfig, ImagePolicy, LogRotation, RuntimeChoice, VmDriver,
    VmDriverConfig,
};
use davit_server::{LivenessConfig, ServerConfig};
use davit_store::RedbStore;

use crate::Failure;
use crate::cli::{AgentArgs, DevArgs, NodeArgs, ServerArgs, StoreKind, TlsArgs};
use crate::listen::Addresses;

/// Logs to stderr at `DAVIT_LOG`'s level, or `default` when it is unset.
pub(crate) fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAVIT_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn open_store(dir: &Path) -> Result<Arc<RedbStore>, Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::user(format!("cannot create data directory {}: {e}", dir.display())))?;
    let store =
        RedbStore::open(&dir.join("state.redb")).map_err(|e| Failure::user(format!("cannot open the store in {}: {e}", dir.display())))?;
    Ok(Arc::new(store))
}

fn base_config(store: Arc<dyn davit_store::Store>, bind: std::net::SocketAddr, data_dir: &Path, acl_enabled: bool) -> ServerConfig {
    ServerConfig {
        bind,
        store,
        workers: davit_server::default_workers(),
        liveness: LivenessConfig::default(),
        scheduler: Default::default(),
        acl_enabled,
        audit_log: Some(data_dir.join("audit.log")),
        keyring: Some(data_dir.join("keyring.json")),
        audit_reads: false,
        tls: None,
        spec_limits: Default::default(),
        gc: Default::default(),
        admission: Default::default(),
        autoscaler: Default::default(),
        role: davit_server::Role::Leader,
    }
}

/// The autoscaler's sync interval and the Prometheus servers it may query (`loopback`: any on loopback too).
fn autoscaler_config(interval: &str, allowed: &[String], loopback: bool) -> Result<davit_server::AutoscalerConfig, Failure> {
    let interval = crate::flag_duration("--autoscaler-interval", interval)?;
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(600)).contains(&interval) {
        return Err(Failure::user("--autoscaler-interval: must be from 1s to 10m"));
    }
    for address in allowed {
        let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(Failure::user(format!("--allow-prometheus {address}: expected HOST:PORT, e.g. prometheus.internal:9090")));
        }
    }
    let prometheus = davit_server::PrometheusAccess { allowed: allowed.to_vec(), loopback };
    Ok(davit_server::AutoscalerConfig { interval, prometheus })
}

/// The server's TLS from its flags: the CA in `<data dir>/tls/` (made on the first start) or the one named.
fn server_tls(args: &ServerArgs) -> Result<Option<davit_server::TlsConfig>, Failure> {
    if !args.tls && args.tls_ca_cert.is_none() && args.tls_cert.is_none() {
        return Ok(None);
    }
    // The flag first: a bad one leaves no CA behind.
    let cert_ttl = crate::flag_duration("--tls-cert-ttl", &args.tls_cert_ttl)?;
    if cert_ttl < std::time::Duration::from_secs(3) {
        return Err(Failure::user("--tls-cert-ttl: certificates must live at least 3s"));
    }
    let failure = |error: davit_tls::TlsError| Failure::user(format!("TLS: {error}"));
    let (ca, ca_origin) = match (&args.tls_ca_cert, &args.tls_ca_key) {
        (Some(cert), Some(key)) => (davit_tls::Ca::load(cert, key).map_err(failure)?, cert.clone()),
        _ => {
            let dir = args.data_dir.join("tls");
            (davit_tls::Ca::load_or_create(&dir).map_err(failure)?, dir.join(davit_tls::Ca::CERT_FILE))
        }
    };
    Ok(Some(davit_server::TlsConfig {
        ca,
        ca_origin: ca_origin.display().to_string(),
        cert_files: args.tls_cert.clone().zip(args.tls_key.clone()),
        names: args.tls_names.clone(),
        cert_ttl,
    }))
}

/// Secure default: without ACLs anyone who reaches the API owns the cluster, so it stays on loopback unless
/// the operator says otherwise.
fn check_open_api(bind: std::net::SocketAddr, acl: bool, insecure_open_api: bool) -> Result<(), Failure> {
    if acl || bind.ip().is_loopback() {
        return Ok(());
    }
    if !insecure_open_api {
        return Err(Failure::user(format!(
            "refusing to serve the API on {bind} without ACLs: anyone who reaches it could run anything on every node\n  \
             hint: start with --acl (then `davit acl bootstrap`), bind to 127.0.0.1, or pass --insecure-open-api to accept the risk"
        )));
    }
    tracing::warn!(%bind, "the API is open: no ACLs on a non-loopback address (--insecure-open-api); anyone who reaches it owns the cluster");
    Ok(())
}

fn drivers(node: &NodeArgs, data_dir: &Path) -> Result<Vec<Arc<dyn Driver>>, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::internal(format!("cannot find the davit binary: {e}")))?;
    let executor = vec![exe.display().to_string(), "executor".to_string()];
    let exec = ExecDriver::new(ExecDriverConfig { allow_root_exec: node.allow_root_exec, ..ExecDriverConfig::new(executor.clone()) });

    let mut container = ContainerDriverConfig::new(executor.clone(), data_dir);
    container.runtime = match node.container_runtime.as_str() {
        "crun" => RuntimeChoice::Crun,
        "runc" => RuntimeChoice::Runc,
        _ => RuntimeChoice::Auto,
    };
    for host in &node.insecure_registries {
        container.registries.entry(host.clone()).or_default().insecure = true;
    }
    for entry in &node.registry_auth {
        let error = || Failure::user(format!("--registry-auth {entry:?}: expected HOST=USER:PASSWORD"));
        let (host, credentials) = entry.split_once('=').ok_or_else(error)?;
        let (user, password) = credentials.split_once(':').ok_or_else(error)?;
        let registry = container.registries.entry(host.to_string()).or_default();
        registry.username = Some(user.to_string());
        registry.password = Some(password.to_string());
    }
    container.allowed_host_paths = node.allowed_host_paths.clone();
    container.allow_privileged = node.allow_privileged;
    for name in &node.allowed_caps {
        let name = name.trim_start_matches("CAP_").to_ascii_uppercase();
        if !davit_api::spec::drivers::CAPABILITIES.contains(&name.as_str()) {
            return Err(Failure::user(format!("--allow-cap {name}: not a capability; name one without CAP_, e.g. NET_ADMIN or SYS_TIME")));
        }
        container.allowed_capabilities.push(name);
    }
    container.max_image_cache_bytes = node.image_cache_mib.saturating_mul(1024 * 1024);
    container.runtime_state_root = data_dir.join("runtime");

    let mut vm = VmDriverConfig::new(executor, data_dir.join("vm"));
    vm.images = ImagePolicy::new(node.vm_image_dirs.clone());
    vm.images.http_hosts = node.vm_download_http_hosts.clone();
    let vm = VmDriver::new(vm);
    Ok(vec![Arc::new(exec), Arc::new(ContainerDriver::new(container)), Arc::new(vm)])
}

fn agent_config(
    node: NodeArgs,
    data_dir: PathBuf,
    servers: Vec<String>,
    bind: std::net::SocketAddr,
    stop_tasks_on_shutdown: bool,
    token: Option<String>,
    join_token: Option<String>,
) -> Result<davit_agent::AgentConfig, Failure> {
    let port_range = parse_port_range(&node.port_range)?;
    let usage_interval = crate::flag_duration("--usage-interval", &node.usage_interval)?;
    if !(std::time::Duration::from_millis(500)..=std::time::Duration::from_secs(300)).contains(&usage_interval) {
        return Err(Failure::user(format!("--usage-interval {}: must be from 500ms to 5m", node.usage_interval)));
    }
    if let Some((first, last)) = ephemeral_overlap(port_range) {
        tracing::warn!(
            port_range = %node.port_range,
            "ports {first}-{last} of --port-range are in the kernel's ephemeral range (net.ipv4.ip_local_port_range): an outgoing connection can hold one when a task binds it, and the task fails with \"address in use\"; choose a range below it (the default is 20000-32000)"
        );
    }
    let drivers = drivers(&node, &data_dir)?;
    let mut attributes = BTreeMap::new();
    for pair in &node.meta {
        let (key, value) = pair.split_once('=').ok_or_else(|| Failure::user(format!("--meta {pair}: expected KEY=VALUE")))?;
        attributes.insert(key.trim().to_string(), value.trim().to_string());
    }
    let service_proxy =
        (!node.no_service_proxy).then_some(davit_agent::ServiceProxyConfig { dns_bind: node.dns_bind, bind_ip: node.proxy_bind_ip });
    if !bind.ip().is_loopback() && token.is_none() && join_token.is_none() {
        tracing::warn!(%bind, "the agent API is on a non-loopback address: it checks tokens only when its servers run with --acl");
    }
    let node_name = match node.node_name {
        Some(name) => name,
        None => hostname(),
    };
    Ok(davit_agent::AgentConfig {
        data_dir,
        node_name,
        datacenter: node.datacenter,
        class: node.node_class,
        servers,
        http_bind: bind,
        advertise_host: "127.0.0.1".to_string(),
        port_range,
        attributes,
        drivers,
        stop_tasks_on_shutdown,
        log_rotation: LogRotation::default(),
        service_proxy,
        token,
        join_token,
        tls: None,
        usage_interval,
    })
}

/// The part of `range` inside the kernel's range of ports for outgoing connections, if any.
fn ephemeral_overlap((first, last): (u16, u16)) -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().filter_map(|part| part.parse::<u16>().ok());
    let (low, high) = (bounds.next()?, bounds.next()?);
    let (from, to) = (first.max(low), last.min(high));
    (from <= to).then_some((from, to))
}

fn parse_port_range(text: &str) -> Result<(u16, u16), Failure> {
    let error = || Failure::user(format!("--port-range {text}: expected FIRST-LAST, e.g. 20000-32000"));
    let (first, last) = text.split_once('-').ok_or_else(error)?;
    let (first, last): (u16, u16) = (first.trim().parse().map_err(|_| error())?, last.trim().parse().map_err(|_| error())?);
    if first == 0 || first > last {
        return Err(error());
    }
    Ok((first, last))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".to_string())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

pub async fn dev(args: DevArgs) -> Result<(), Failure> {
    init_logging("info");
    let _proxy_claim = Addresses::default()
        .tcp(args.bind, "another davit dev or server", "--bind")
        .tcp(args.agent_bind, "an agent", "--agent-bind")
        .service_proxy(&args.node)
        .check()?;
    let (data_dir, temporary) = match args.data_dir {
        Some(dir) => (dir, false),
        None => {
            let dir = std::env::temp_dir().join(format!("davit-dev-{}", std::process::id()));
            (dir, true)
        }
    };
    let server_dir = data_dir.join("server");
    let store = open_store(&server_dir)?;
    let mut config = base_config(store, args.bind, &server_dir, args.acl);
    config.autoscaler = autoscaler_config(&args.autoscaler_interval, &args.allow_prometheus, true)?;
    let server =
        davit_server::start(config).await.map_err(|e| Failure::user(format!("cannot start the server: {}", davit_api::error_chain(&e))))?;
    let server_url = format!("http://{}", server.addr());
    let (management_token, join_token) = match args.acl {
        true => dev_bootstrap(&server_url).await?.unzip(),
        false => (None, None),
    };
    let config = agent_config(args.node, data_dir.join("agent"), vec![server_url.clone()], args.agent_bind, true, None, join_token)?;
    let agent =
        davit_agent::start(config).await.map_err(|e| Failure::user(format!("cannot start the agent: {}", davit_api::error_chain(&e))))?;
    server.add_metrics_source(agent.metrics_source());
    // What follows says "try: davit job run": true once the node takes work.
    wait_node_ready(&davit_client::Client::with_token(&server_url, management_token.as_deref()), agent.node_id()).await;
    println!("davit dev is running: server {server_url}, node {} (data in {})", agent.node_id(), data_dir.display());
    if let Some(dns) = agent.dns_addr() {
        println!("  service DNS on {dns} (udp+tcp): dig @{} -p {} <service>.service.davit SRV", dns.ip(), dns.port());
    }
    if !args.acl {
        println!("  ACLs are off: the API is open to anyone on this machine (loopback only); `davit dev --acl` checks tokens");
    }
    println!("  try: davit job run examples/hello.yaml   (Ctrl-C stops davit and its tasks)");
    shutdown_signal().await;
    println!("davit dev: stopping tasks…");
    agent.shutdown().await;
    server.shutdown().await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

/// Waits (at most 30 s) until the node `node_id` is ready; a server that does not tell (no token after an ACL
/// restart) or a node that takes longer only makes it return.
async fn wait_node_ready(client: &davit_client::Client, node_id: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut index = 0;
    while tokio::time::Instant::now() < deadline {
        match client.nodes_blocking(index, std::time::Duration::from_secs(5)).await {
            Ok(nodes) if nodes.value.iter().any(|node| node.id == node_id && node.status == davit_api::objects::NodeStatus::Ready) => {
                return;
            }
            Ok(nodes) => index = nodes.index,
            Err(error) => {
                tracing::debug!(%error, "cannot follow the dev node's status");
                return;
            }
        }
    }
    tracing::warn!(node_id, "the dev node is not ready after 30 s; jobs wait for it");
}

/// `davit dev --acl`: bootstraps, prints the management token, and makes a join token for the dev agent:
/// (management token, join token); `None` after a restart on the same data dir: it was bootstrapped then,
/// and the agent kept its identity.
async fn dev_bootstrap(server_url: &str) -> Result<Option<(String, String)>, Failure> {
    let management = match davit_client::Client::new(server_url).acl_bootstrap().await {
        Ok(management) => management,
        Err(davit_client::ClientError::Api { status: 400, .. }) => {
            println!("ACLs were bootstrapped at an earlier start on this data dir: use the management token printed then");
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    println!("ACL management token (export DAVIT_TOKEN={}): accessor {}", management.secret_id, management.token.accessor_id);
    let client = davit_client::Client::with_token(server_url, Some(&management.secret_id));
    let request = davit_api::acl::CreateTokenRequest {
        name: "dev agent".to_string(),
        token_type: davit_api::acl::TokenType::Join,
        policies: Vec::new(),
        ttl: None,
        uses: Some(1),
    };
    let join_token = client.create_acl_token(&request).await?.secret_id;
    Ok(Some((management.secret_id, join_token)))
}

pub async fn server(args: ServerArgs) -> Result<(), Failure> {
    init_logging("info");
    check_open_api(args.bind, args.acl, args.insecure_open_api)?;
    // Every flag is checked before anything is written (store, CA).
    let duration = crate::flag_duration;
    duration("--max-heartbeat-ttl", &args.max_heartbeat_ttl)?;
    gc_config(&args)?;
    autoscaler_config(&args.autoscaler_interval, &args.allow_prometheus, false)?;
    if args.etcd.etcd_max_txn_ops < 128 {
        return Err(Failure::user("--etcd-max-txn-ops: davit needs at least etcd's default, 128"));
    }
    let leader_ttl = duration("--leader-ttl", &args.leader_ttl)?;
    if !(std::time::Duration::from_secs(2)..=std::time::Duration::from_secs(60)).contains(&leader_ttl) {
        return Err(Failure::user("--leader-ttl: must be from 2s to 60s"));
    }
    let advertise = match (&args.advertise, args.store) {
        (Some(addr), _) => addr.clone(),
        (None, StoreKind::Etcd) if args.bind.ip().is_unspecified() => {
            return Err(Failure::user(format!(
                "--bind {} listens on every address: with --store etcd, say where the other servers reach this one with --advertise HOST:PORT",
                args.bind
            )));
        }
        (None, _) => args.bind.to_string(),
    };
    Addresses::default().tcp(args.bind, "another davit server or dev", "--bind").check()?;
    match args.store {
        StoreKind::Redb => {
            let tls = server_tls(&args)?;
            let server = start_server(&args, open_store(&args.data_dir)?, davit_server::Role::Leader, tls).await?;
            shutdown_signal().await;
            server.shutdown().await;
            Ok(())
        }
        StoreKind::Etcd => serve_on_etcd(&args, advertise, leader_ttl).await,
    }
}

/// A server on etcd: it follows (serving reads, forwarding writes) until it wins the leadership, then leads
/// until it stops or loses the lease (then it exits 1: a supervisor starts it again, as a follower).
async fn serve_on_etcd(args: &ServerArgs, advertise: String, ttl: std::time::Duration) -> Result<(), Failure> {
    // Two: one for the follower, one for the leader it may become (the first call made the CA, if it was new).
    let (tls, leader_tls) = (server_tls(args)?, server_tls(args)?);
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| Failure::user(format!("cannot create data directory {}: {e}", args.data_dir.display())))?;
    let etcd = etcd_store(&args.etcd).await?;
    let shared: Arc<dyn davit_store::Store> = etcd.clone();
    let name = args.name.clone().unwrap_or_else(|| format!("{}:{}", hostname(), args.bind.port()));
    let started = davit_server::now_millis();
    let member = davit_server::leader::Member { name: name.clone(), addr: advertise.clone(), started };
    let announced = davit_server::leader::announce(Arc::clone(&shared), member, ttl);
    let _announced = AbortOnDrop(announced);
    println!("davit server {name}: on etcd {}, campaigning to lead", args.etcd.etcd_endpoints.join(","));
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(None);
    let follower = start_server(args, Arc::clone(&shared), davit_server::Role::Follower(leader_rx), tls).await?;
    let me = davit_server::leader::LeaderInfo { name, addr: advertise, since: 0 };
    let campaign = davit_server::leader::acquire(Arc::clone(&shared), me, ttl, |leader| {
        if let Some(leader) = leader {
            println!("  following {} (leads since {}), at {}", leader.name, leader.since, leader.addr);
        }
        leader_tx.send_replace(leader.cloned());
    });
    // One signal future for the whole life of the server: a signal between two waits is not lost.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let leadership = tokio::select! {
        leadership = campaign => leadership,
        () = &mut stop => {
            follower.shutdown().await;
            return Ok(());
        }
    };
    follower.shutdown().await;
    println!("  this server leads (fenced at revision {})", leadership.revision);
    let fenced = Arc::new(davit_store::FencedStore::new(Arc::clone(&shared), davit_server::leader::LEADER_KEY, leadership.revision));
    let leading = Leading { etcd, fenced: Arc::clone(&fenced), leadership };
    let server = match start_server(args, fenced, davit_server::Role::Leader, leader_tls).await {
        Ok(server) => server,
        Err(error) => {
            leading.step_down().await;
            return Err(error);
        }
    };
    let Leading { etcd, fenced, mut leadership } = leading;
    let mut deposed = fenced.deposed();
    tokio::select! {
        () = &mut stop => {}
        () = leadership.lost() => return Err(lost_leadership("the etcd lease could not be kept alive")),
        _ = deposed.wait_for(|deposed| *deposed) => return Err(lost_leadership("a write found that another server leads")),
    }
    // The lease first (fencing keeps the old leader's late writes out), so a follower takes over at once.
    Leading { etcd, fenced, leadership }.step_down().await;
    server.shutdown().await;
    Ok(())
}

/// Another server may lead already: this one stops at once.
fn lost_leadership(why: &str) -> Failure {
    tracing::error!("this server lost its leadership ({why}); stopping");
    Failure::internal(format!("lost the leadership ({why}); start the server again to follow"))
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the server's API (and, leading, its loops) on `store`, and says where it listens.
async fn start_server(
    args: &ServerArgs,
    store: Arc<dyn davit_store::Store>,
    role: davit_server::Role,
    tls: Option<davit_server::TlsConfig>,
) -> Result<davit_server::ServerHandle, Failure> {
    let following = matches!(role, davit_server::Role::Follower(_));
    let mut config = server_config(args, store, role)?;
    config.tls = tls;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let ca = config.tls.as_ref().map(|tls| tls.ca_origin.clone());
    let server = davit_server::start(config)
        .await
        .map_err(|error| Failure::user(format!("cannot start the server: {}", davit_api::error_chain(&error))))?;
    println!("davit server listening on {scheme}://{}{}", server.addr(), if following { " (following)" } else { "" });
    if let Some(ca) = ca {
        println!("  mutual TLS: clients and agents trust the CA with --ca-cert {ca} (or DAVIT_CACERT)");
    }
    Ok(server)
}

fn gc_config(args: &ServerArgs) -> Result<davit_server::GcConfig, Failure> {
    let duration = crate::flag_duration;
    Ok(davit_server::GcConfig {
        interval: duration("--gc-interval", &args.gc_interval)?.max(std::time::Duration::from_secs(1)),
        eval_threshold: duration("--eval-gc-threshold", &args.eval_gc_threshold)?,
        alloc_threshold: duration("--alloc-gc-threshold", &args.alloc_gc_threshold)?,
        job_threshold: duration("--job-gc-threshold", &args.job_gc_threshold)?,
        max_versions: args.job_max_versions.max(1),
    })
}

/// The server's configuration from its flags.
fn server_config(args: &ServerArgs, store: Arc<dyn davit_store::Store>, role: davit_server::Role) -> Result<ServerConfig, Failure> {
    let mut config = base_config(store, args.bind, &args.data_dir, args.acl);
    config.liveness =
        LivenessConfig { max_ttl: crate::flag_duration("--max-heartbeat-ttl", &args.max_heartbeat_ttl)?, ..Default::default() };
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    config.audit_reads = args.audit_reads;
    config.autoscaler = autoscaler_config(&args.autoscaler_interval, &args.allow_prometheus, false)?;
    config.gc = gc_config(args)?;
    config.admission = davit_server::AdmissionConfig {
        blocking_queries: args.max_blocking_queries,
        blocking_queries_per_client: args.max_blocking_queries_per_client,
        event_streams: args.max_event_streams,
        event_streams_per_client: args.max_event_streams_per_client,
        event_stream_buffer_bytes: args.event_stream_buffer_bytes,
    };
    config.spec_limits = davit_api::spec::SpecLimits {
        max_count: args.max_count,
        max_groups: args.max_groups,
        max_tasks: args.max_tasks,
        max_ports: args.max_ports,
        max_env_bytes: args.max_env_bytes,
        max_string_bytes: args.max_string_bytes,
        largest_node: None,
    };
    config.role = role;
    Ok(config)
}

/// A server that leads the servers on etcd: its lease, and the store that fences its writes on it.
struct Leading {
    etcd: Arc<davit_store::EtcdStore>,
    fenced: Arc<davit_store::FencedStore>,
    leadership: davit_server::leader::Leadership,
}

impl Leading {
    /// Ends the lease now, so that a follower takes over at once rather than after the TTL.
    async fn step_down(&self) {
        if let Err(error) = davit_store::Store::revoke_lease(&*self.etcd, self.leadership.lease).await {
            tracing::warn!(%error, "stepping down: revoking the leadership lease failed (a follower takes over after its TTL)");
        }
    }
}

/// Connects to etcd with these flags.
pub(crate) async fn etcd_store(args: &crate::cli::EtcdArgs) -> Result<Arc<davit_store::EtcdStore>, Failure> {
    let password = std::env::var("DAVIT_ETCD_PASSWORD").ok();
    let user = match (&args.etcd_user, password) {
        (Some(user), Some(password)) => Some((user.clone(), password)),
        (Some(_), None) => return Err(Failure::user("--etcd-user needs the password in DAVIT_ETCD_PASSWORD")),
        (None, _) => None,
    };
    let read =
        |path: &std::path::PathBuf| std::fs::read_to_string(path).map_err(|error| Failure::user(format!("{}: {error}", path.display())));
    let tls = match &args.etcd_ca_cert {
        Some(ca) => {
            let identity = match (&args.etcd_cert, &args.etcd_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            };
            Some(davit_store::EtcdTls { ca_cert: read(ca)?, identity })
        }
        None => None,
    };
    let options = davit_store::EtcdOptions {
        endpoints: args.etcd_endpoints.clone(),
        prefix: args.etcd_prefix.clone(),
        user,
        tls,
        max_txn_ops: args.etcd_max_txn_ops,
        ..davit_store::EtcdOptions::default()
    };
    let store = davit_store::EtcdStore::connect(options)
        .await
        .map_err(|e| Failure::user(format!("cannot reach etcd at {}: {}", args.etcd_endpoints.join(","), davit_api::error_chain(&e))))?;
    Ok(Arc::new(store))
}

pub async fn agent(args: AgentArgs, token: Option<String>, tls: TlsArgs) -> Result<(), Failure> {
    init_logging("info");
    let _proxy_claim = Addresses::default().tcp(args.bind, "another agent", "--bind").service_proxy(&args.node).check()?;
    let mut config = agent_config(args.node, args.data_dir, args.servers, args.bind, false, token, args.join_token)?;
    config.advertise_host = match args.advertise {
        Some(host) if host.trim().is_empty() || host.contains('/') || host.contains(' ') => {
            return Err(Failure::user(format!("--advertise {host:?}: expected a host name or an IP address")));
        }
        Some(host) => host,
        None if args.bind.ip().is_unspecified() => {
            tracing::warn!(bind = %args.bind, "the agent API listens on every address but advertises 127.0.0.1: servers on other machines cannot reach it; set --advertise");
            "127.0.0.1".to_string()
        }
        None => args.bind.ip().to_string(),
    };
    // Addresses are written `host:port` (URLs, QEMU's migration URI): an IPv6 address goes in brackets.
    if config.advertise_host.parse::<std::net::Ipv6Addr>().is_ok() {
        config.advertise_host = format!("[{}]", config.advertise_host);
    }
    config.tls = tls.ca_cert.map(|ca_cert| davit_agent::AgentTlsConfig { ca_cert, cert_files: tls.client_cert.zip(tls.client_key) });
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let agent =
        davit_agent::start(config).await.map_err(|e| Failure::user(format!("cannot start the agent: {}", davit_api::error_chain(&e))))?;
    println!("davit agent running: node {}, API {scheme}://{}", agent.node_id(), agent.http_addr());
    if let Some(dns) = agent.dns_addr() {
        println!("  service DNS on {dns} (udp+tcp)");
    }
    shutdown_signal().await;
    // Tasks keep running: a restarted agent re-attaches to them.
    agent.shutdown().await;
    Ok(())
}
