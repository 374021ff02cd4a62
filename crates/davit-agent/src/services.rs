//! Service discovery on the node: one [`Proxy`] and one [`DnsServer`] per agent, kept in line with the
//! server's service catalog.
//!
//! ```text
//!  server /v1/catalog ──long poll──▶ run() ──▶ sync(): listeners (per service local_port, per task upstream)
//!  local allocations (upstreams) ──notify──┘            backends = healthy instances; DNS records
//! ```
//!
//! The loop watches the catalog with blocking queries (no fixed-interval polling) and also wakes when
//! this node's allocations change (a task's `upstreams` need a listener). Every listener's backends are
//! the service's healthy instances; a backend swap lets requests in flight finish (the proxy drains).
//! DNS answers `<service>.service.davit` (healthy instances, A and SRV) and `<alloc-id>.alloc.davit`.
//!
//! **Invariant:** the proxy and DNS serve from what they were last told and never wait on the server:
//! when the server is unreachable, the last catalog keeps being served.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use davit_api::http::{ActivateRequest, Catalog, ProxyBackendStats, ProxyServiceStats, ServiceInfo};
use davit_api::namespace::{namespace_of, service_key};
use davit_api::spec::{BalanceAlgorithm, HashKey, ServiceMode};
use davit_client::{ClientError, Indexed};
use davit_proxy::dns::{DnsConfig, DnsServer};
use davit_proxy::{Activation, Algorithm, Backend, CanaryRoute, HashOn, Mode, Proxy, ProxyConfig, ServiceConfig};
use tokio::sync::watch;

use crate::{AgentContext, AgentError};

/// How long one catalog long-poll waits on the server.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// When a listener could not be bound, the next try comes after this long.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Where the agent's proxy and DNS server listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceProxyConfig {
    /// UDP and TCP address of the DNS server (`davit agent --dns-bind`, default `127.0.0.1:8600`).
    pub dns_bind: SocketAddr,
    /// IP the proxy's listeners bind (`--proxy-bind-ip`, default `127.0.0.1`); tasks reach their
    /// upstreams at `<bind_ip>:<local_port>`.
    pub bind_ip: IpAddr,
}

impl Default for ServiceProxyConfig {
    fn default() -> Self {
        ServiceProxyConfig { dns_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8600)), bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST) }
    }
}

/// The running proxy and DNS server of one agent.
pub(crate) struct ServiceProxy {
    pub proxy: Proxy,
    pub dns: DnsServer,
    pub bind_ip: IpAddr,
}

impl ServiceProxy {
    pub async fn start(config: &ServiceProxyConfig) -> Result<ServiceProxy, AgentError> {
        let dns = DnsServer::start(DnsConfig::new(config.dns_bind)).await.map_err(|source| AgentError::ServiceProxy {
            what: format!("starting the service DNS server on {} (choose another with --dns-bind, or --no-service-proxy)", config.dns_bind),
            source,
        })?;
        // One serving thread per core, at most 4: each service listens once per thread.
        let threads = ProxyConfig::default().threads.min(4);
        Ok(ServiceProxy { proxy: Proxy::start(ProxyConfig { threads, ..ProxyConfig::default() }), dns, bind_ip: config.bind_ip })
    }

    /// The proxy's counters as the agent's API serves them (`GET /v1/agent/proxy`).
    pub fn stats(&self) -> Vec<ProxyServiceStats> {
        self.proxy
            .snapshot()
            .into_iter()
            .map(|service| ProxyServiceStats {
                // Upstream listeners are named `<service>:<port>`; service names never hold ':'.
                service: service.name.split(':').next().unwrap_or_default().to_string(),
                listen: service.listen.to_string(),
                mode: match service.mode {
                    Mode::Http => ServiceMode::Http,
                    Mode::Tcp => ServiceMode::Tcp,
                },
                algorithm: algorithm_name(service.algorithm),
                backends: service
                    .backends
                    .into_iter()
                    .map(|backend| ProxyBackendStats {
                        id: backend.id,
                        addr: backend.addr.to_string(),
                        weight: backend.weight,
                        requests: backend.requests,
                        errors: backend.errors,
                        active: backend.active,
                        ewma_latency_ms: backend.ewma_latency_ms,
                        ejected: backend.ejected,
                        ejections: backend.ejections,
                        latency_buckets: backend.latency_buckets,
                    })
                    .collect(),
            })
            .collect()
    }
}

/// A task's upstream on this node: `local_port` → `service`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LocalUpstream {
    pub service: String,
    pub local_port: u16,
}

/// One listener of the proxy, as last configured.
struct Listener {
    proxy_name: String,
    config: ServiceConfig,
    /// The backends last pushed: an unchanged set is not pushed again (a push rebuilds the balancer,
    /// which would restart a round robin).
    backends: Option<Vec<Backend>>,
}

/// What [`sync`] last did, so the next one changes only what differs.
#[derive(Default)]
struct Synced {
    /// Local port → listener.
    listeners: BTreeMap<u16, Listener>,
    dns_services: BTreeSet<String>,
    dns_allocs: BTreeSet<String>,
    /// Local ports already warned about (taken by another service), so the log does not repeat.
    conflicts_reported: BTreeSet<(u16, String)>,
    /// Listeners whose bind failure was already logged as a warning (retries log at debug level).
    bind_failures_reported: BTreeSet<u16>,
}

type Poll = Pin<Box<dyn Future<Output = Result<Indexed<Catalog>, ClientError>> + Send>>;

/// Watches the catalog and this node's upstreams until shutdown, keeping proxy and DNS in line.
pub(crate) async fn run(context: Arc<AgentContext>, service_proxy: Arc<ServiceProxy>, mut shutdown: watch::Receiver<bool>) {
    let mut local_changes = context.local_services.subscribe();
    let mut catalog = Catalog::default();
    let mut synced = Synced::default();
    let mut index = 0;
    let mut failures = 0u32;
    let mut started = Instant::now();
    let mut poll = catalog_poll(&context, index, Duration::ZERO);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut activation_requests = service_proxy.proxy.activation_requests();
    let activating: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut poll => {
                let mut delay = Duration::ZERO;
                match result {
                    Ok(answer) => {
                        if failures > 0 {
                            tracing::info!("service catalog watch reaches the server again");
                        }
                        failures = 0;
                        let unchanged = answer.index == index;
                        // A lower index means a different store (server reset): start over.
                        index = if answer.index < index { 0 } else { answer.index };
                        catalog = answer.value;
                        if unchanged && started.elapsed() < Duration::from_secs(1) {
                            delay = Duration::from_secs(1); // no blocking support: do not spin
                        }
                    }
                    Err(error) => {
                        if failures.is_multiple_of(20) {
                            tracing::warn!(%error, "watching the service catalog failed; retrying (the last catalog is still served)");
                        }
                        failures += 1;
                        delay = Duration::from_millis(250).saturating_mul(1 << failures.min(5)).min(Duration::from_secs(10));
                    }
                }
                started = Instant::now() + delay;
                poll = catalog_poll(&context, index, delay);
            }
            _ = local_changes.changed() => {}
            _ = retry => {}
            _ = activation_requests.changed() => {
                for proxy_name in service_proxy.proxy.take_activation_requests() {
                    activate(&context, &catalog, &proxy_name, &activating);
                }
                continue;
            }
            _ = shutdown.changed() => return,
        }
        let upstreams = local_upstreams(&context);
        let all_bound = sync(&service_proxy, &catalog, &upstreams, &mut synced).await;
        retry_at = (!all_bound).then(|| tokio::time::Instant::now() + BIND_RETRY);
    }
}

/// Asks the servers to wake the group behind proxy listener `proxy_name` (a request waits there for a group
/// scaled to zero), unless this node asks for that group already. A failed request is not retried here: the
/// waiting request asks again after [`davit_proxy::ACTIVATION_REPEAT`].
fn activate(context: &Arc<AgentContext>, catalog: &Catalog, proxy_name: &str, activating: &Arc<Mutex<BTreeSet<(String, String)>>>) {
    // Upstream listeners are named `<service key>:<port>`.
    let key = proxy_name.split(':').next().unwrap_or(proxy_name);
    let Some(service) = catalog
        .services
        .iter()
        .find(|service| service.activation_timeout_ms.is_some() && service_key(namespace_of(&service.job_name), &service.name) == key)
    else {
        return;
    };
    let group = (service.job_name.clone(), service.group.clone());
    if !lock(activating).insert(group.clone()) {
        return;
    }
    let context = Arc::clone(context);
    let activating = Arc::clone(activating);
    tokio::spawn(async move {
        let request = ActivateRequest { job: group.0.clone(), group: group.1.clone() };
        let node_id = context.node.id.clone();
        let answer = context
            .servers
            .call(|client| {
                let (node_id, request) = (node_id.clone(), request.clone());
                async move { client.activate(&node_id, &request).await }
            })
            .await;
        match answer {
            Ok(answer) if answer.activated => {
                tracing::info!(job = %group.0, group = %group.1, count = answer.count, "a request woke the group from zero");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(job = %group.0, group = %group.1, %error, "cannot wake the group from zero; the waiting request asks again")
            }
        }
        lock(&activating).remove(&group);
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn catalog_poll(context: &Arc<AgentContext>, index: u64, delay: Duration) -> Poll {
    let context = Arc::clone(context);
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let answer = context.servers.call(|client| async move { client.catalog_blocking(index, POLL_WAIT).await }).await?;
        context.same_cluster(answer)
    })
}

/// The upstreams of this node's allocations that are not finished.
fn local_upstreams(context: &AgentContext) -> BTreeSet<LocalUpstream> {
    let runners: Vec<_> = context.runners.lock().expect("runners lock").values().cloned().collect();
    runners.iter().flat_map(|runner| runner.upstreams()).collect()
}

/// Brings listeners, backends and DNS records in line with `catalog` and the node's `upstreams`.
/// Returns false when some listener could not be bound (the caller retries).
async fn sync(service_proxy: &ServiceProxy, catalog: &Catalog, upstreams: &BTreeSet<LocalUpstream>, synced: &mut Synced) -> bool {
    // Services by their key on the node (`<name>.<namespace>` outside `default`, see `service_key`).
    let services: BTreeMap<String, &ServiceInfo> =
        catalog.services.iter().map(|service| (service_key(namespace_of(&service.job_name), &service.name), service)).collect();

    // Local port → service: the services' own local ports first, then the tasks' upstreams.
    let mut wanted: BTreeMap<u16, &str> = BTreeMap::new();
    for (key, service) in &services {
        if let Some(port) = service.local_port {
            claim(&mut wanted, port, key, &mut synced.conflicts_reported);
        }
    }
    for upstream in upstreams {
        claim(&mut wanted, upstream.local_port, &upstream.service, &mut synced.conflicts_reported);
    }

    let proxy = &service_proxy.proxy;
    let gone: Vec<u16> = synced.listeners.keys().filter(|port| !wanted.contains_key(port)).copied().collect();
    for port in gone {
        if let Some(listener) = synced.listeners.remove(&port) {
            tracing::info!(service = %listener.proxy_name, port, "closing the proxy listener (in-flight requests finish)");
            proxy.remove_service(&listener.proxy_name).await;
        }
    }
    let mut all_bound = true;
    for (&port, &service_name) in &wanted {
        let service = services.get(service_name).copied();
        let proxy_name = if service.is_some_and(|service| service.local_port == Some(port)) {
            service_name.to_string()
        } else {
            format!("{service_name}:{port}")
        };
        let config = service_config(&proxy_name, service, SocketAddr::new(service_proxy.bind_ip, port));
        let current = synced.listeners.get(&port);
        if current.is_none_or(|listener| listener.proxy_name != proxy_name || listener.config != config) {
            if let Some(old) = current.filter(|listener| listener.proxy_name != proxy_name) {
                proxy.remove_service(&old.proxy_name).await;
            }
            synced.listeners.remove(&port);
            match proxy.set_service(config.clone()).await {
                Ok(addr) => {
                    synced.bind_failures_reported.remove(&port);
                    tracing::info!(service = %proxy_name, %addr, "proxy listener ready");
                    synced.listeners.insert(port, Listener { proxy_name: proxy_name.clone(), config, backends: None });
                }
                Err(error) => {
                    let error = davit_api::error_chain(&error);
                    if synced.bind_failures_reported.insert(port) {
                        tracing::warn!(service = %proxy_name, port, %error, "cannot open the proxy listener; retrying every 2 s");
                    } else {
                        tracing::debug!(service = %proxy_name, port, %error, "cannot open the proxy listener yet");
                    }
                    all_bound = false;
                    continue;
                }
            }
        }
        let backends = service.map(backends).unwrap_or_default();
        let Some(listener) = synced.listeners.get_mut(&port) else { continue };
        if listener.backends.as_ref() != Some(&backends) {
            match proxy.set_backends(&proxy_name, backends.clone()) {
                Ok(()) => listener.backends = Some(backends),
                Err(error) => tracing::warn!(service = %proxy_name, %error, "cannot update the proxy's backends"),
            }
        }
    }

    // DNS: healthy instances per service; every instance's allocation by id.
    let dns = &service_proxy.dns;
    let mut allocs = BTreeSet::new();
    for (key, service) in &services {
        let mut records = Vec::new();
        for instance in &service.instances {
            let Ok(ip) = instance.address.parse::<Ipv4Addr>() else { continue };
            dns.set_alloc(&instance.alloc_id, ip);
            allocs.insert(instance.alloc_id.clone());
            if instance.healthy {
                records.push((ip, instance.port, instance.alloc_id.clone()));
            }
        }
        dns.set_service(key, records);
    }
    for stale in synced.dns_services.iter().filter(|name| !services.contains_key(name.as_str())) {
        dns.set_service(stale, Vec::new());
    }
    for stale in synced.dns_allocs.difference(&allocs) {
        dns.remove_alloc(stale);
    }
    synced.dns_services = services.keys().map(|name| name.to_string()).collect();
    synced.dns_allocs = allocs;
    all_bound
}

/// Gives `port` to `service` unless another service has it (then warns, once per port and service).
fn claim<'s>(wanted: &mut BTreeMap<u16, &'s str>, port: u16, service: &'s str, reported: &mut BTreeSet<(u16, String)>) {
    match wanted.get(&port) {
        None => drop(wanted.insert(port, service)),
        Some(owner) if *owner == service => {}
        Some(owner) => {
            if reported.insert((port, service.to_string())) {
                tracing::warn!(port, service, owner, "local port is already the proxy listener of another service; ignoring this one");
            }
        }
    }
}

/// The proxy settings of a listener: the service's settings from the catalog, or (for an upstream of
/// a service the catalog does not know yet) plain TCP with no backends.
fn service_config(proxy_name: &str, service: Option<&ServiceInfo>, listen: SocketAddr) -> ServiceConfig {
    let Some(service) = service else {
        return ServiceConfig::new(proxy_name, Mode::Tcp, listen);
    };
    let mode = match service.mode {
        ServiceMode::Http => Mode::Http,
        ServiceMode::Tcp => Mode::Tcp,
    };
    let mut config = ServiceConfig::new(proxy_name, mode, listen);
    config.balance = match service.algorithm {
        BalanceAlgorithm::Random => Algorithm::Random,
        BalanceAlgorithm::RoundRobin => Algorithm::RoundRobin,
        BalanceAlgorithm::Weighted => Algorithm::Weighted,
        BalanceAlgorithm::LeastConnections => Algorithm::LeastConnections,
        BalanceAlgorithm::LeastResponseTime => Algorithm::LeastResponseTime,
        BalanceAlgorithm::ConsistentHash => Algorithm::ConsistentHash,
    };
    config.hash_on = match service.hash_on.as_deref().map(HashKey::parse) {
        Some(Ok(HashKey::Header(name))) => HashOn::Header(name),
        Some(Ok(HashKey::Cookie(name))) => HashOn::Cookie(name),
        Some(Ok(HashKey::SourceIp) | Err(_)) | None => HashOn::SourceIp,
    };
    // A deployment's unpromoted canaries get `update.canary_weight` percent of the requests.
    // A group scaled to zero: requests wait for its first instance.
    config.activation = service.activation_timeout_ms.map(|ms| Activation::new(Duration::from_millis(ms)));
    config.canary = service.canary_weight.map(|weight| CanaryRoute {
        weight,
        backends: service.instances.iter().filter(|instance| instance.canary).map(|instance| instance.alloc_id.clone()).collect(),
    });
    config
}

fn algorithm_name(algorithm: Algorithm) -> BalanceAlgorithm {
    match algorithm {
        Algorithm::Random => BalanceAlgorithm::Random,
        Algorithm::RoundRobin => BalanceAlgorithm::RoundRobin,
        Algorithm::Weighted => BalanceAlgorithm::Weighted,
        Algorithm::LeastConnections => BalanceAlgorithm::LeastConnections,
        Algorithm::LeastResponseTime => BalanceAlgorithm::LeastResponseTime,
        Algorithm::ConsistentHash => BalanceAlgorithm::ConsistentHash,
    }
}

/// The healthy instances of a service whose address is an IP.
fn backends(service: &ServiceInfo) -> Vec<Backend> {
    service
        .instances
        .iter()
        .filter(|instance| instance.healthy)
        .filter_map(|instance| {
            let ip: IpAddr = instance.address.parse().ok()?;
            Some(Backend { id: instance.alloc_id.clone(), addr: SocketAddr::new(ip, instance.port), weight: instance.weight })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use davit_api::http::ServiceInstance;

    use super::*;

    #[test]
    fn the_proxy_reports_latency_in_the_buckets_the_api_names() {
        assert_eq!(davit_proxy::LATENCY_BUCKETS, davit_api::http::PROXY_LATENCY_BUCKETS);
    }

    fn instance(id: &str, port: u16, healthy: bool) -> ServiceInstance {
        ServiceInstance {
            alloc_id: id.to_string(),
            alloc_name: format!("shop.web[{id}]"),
            node_id: "n".to_string(),
            node_name: "node".to_string(),
            address: "127.0.0.1".to_string(),
            port,
            tags: Vec::new(),
            weight: 2,
            canary: false,
            healthy,
            health_description: String::new(),
            stats: None,
        }
    }

    fn service(name: &str, local_port: Option<u16>, instances: Vec<ServiceInstance>) -> ServiceInfo {
        ServiceInfo {
            name: name.to_string(),
            job_name: "shop".to_string(),
            group: "web".to_string(),
            port_label: "http".to_string(),
            mode: ServiceMode::Http,
            algorithm: BalanceAlgorithm::ConsistentHash,
            hash_on: Some("header:X-User".to_string()),
            local_port,
            tags: Vec::new(),
            canary_weight: None,
            activation_timeout_ms: None,
            instances,
            stats_errors: Vec::new(),
        }
    }

    #[test]
    fn only_healthy_instances_become_backends() {
        let web = service("web", None, vec![instance("a", 20001, true), instance("b", 20002, false)]);
        let backends = backends(&web);
        assert_eq!(backends, vec![Backend { id: "a".to_string(), addr: "127.0.0.1:20001".parse().unwrap(), weight: 2 }]);
    }

    #[test]
    fn listener_settings_follow_the_catalog() {
        let web = service("web", Some(9000), Vec::new());
        let config = service_config("web", Some(&web), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            (config.mode, config.balance, config.hash_on),
            (Mode::Http, Algorithm::ConsistentHash, HashOn::Header("X-User".to_string()))
        );
        // An upstream of a service the catalog does not know yet: a TCP listener without backends.
        let unknown = service_config("db:9100", None, "127.0.0.1:9100".parse().unwrap());
        assert_eq!((unknown.name.as_str(), unknown.mode), ("db:9100", Mode::Tcp));
    }

    #[tokio::test]
    async fn sync_opens_listeners_and_dns_records_and_closes_them_again() {
        let config = ServiceProxyConfig { dns_bind: "127.0.0.1:0".parse().unwrap(), bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST) };
        let service_proxy = ServiceProxy::start(&config).await.unwrap();
        let free = |_: ()| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (web_port, upstream_port) = (free(()), free(()));
        let catalog =
            Catalog { services: vec![service("web", Some(web_port), vec![instance("a", 20001, true), instance("b", 20002, false)])] };
        let upstreams = BTreeSet::from([
            LocalUpstream { service: "web".to_string(), local_port: upstream_port },
            LocalUpstream { service: "web".to_string(), local_port: web_port },
        ]);
        let mut synced = Synced::default();
        assert!(sync(&service_proxy, &catalog, &upstreams, &mut synced).await);
        let stats = service_proxy.stats();
        let listeners: Vec<(&str, &str, usize)> =
            stats.iter().map(|listener| (listener.service.as_str(), listener.listen.as_str(), listener.backends.len())).collect();
        let (web_listen, upstream_listen) = (format!("127.0.0.1:{web_port}"), format!("127.0.0.1:{upstream_port}"));
        let mut expected = vec![("web", web_listen.as_str(), 1), ("web", upstream_listen.as_str(), 1)];
        expected.sort();
        let mut listeners = listeners;
        listeners.sort();
        assert_eq!(listeners, expected);
        assert_eq!(synced.dns_allocs, BTreeSet::from(["a".to_string(), "b".to_string()]));

        // A service of the same name in namespace team-a is another service: its own DNS name and listener.
        let team_port = free(());
        let mut team_web = service("web", Some(team_port), vec![instance("c", 20003, true)]);
        team_web.job_name = "team-a/shop".to_string();
        let both = Catalog { services: vec![catalog.services[0].clone(), team_web] };
        assert!(sync(&service_proxy, &both, &upstreams, &mut synced).await);
        assert_eq!(synced.dns_services, BTreeSet::from(["web".to_string(), "web.team-a".to_string()]));
        let team_listener = service_proxy.stats().into_iter().find(|listener| listener.listen == format!("127.0.0.1:{team_port}")).unwrap();
        assert_eq!((team_listener.service.as_str(), team_listener.backends.len()), ("web.team-a", 1));

        // The service goes away: listeners close, records go.
        assert!(sync(&service_proxy, &Catalog::default(), &BTreeSet::new(), &mut synced).await);
        assert!(service_proxy.stats().is_empty());
        assert!(synced.dns_allocs.is_empty() && synced.dns_services.is_empty());
    }
}
