//! The proxy handle: services, their listeners and their atomically swapped backend sets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::backend::Endpoint;
use crate::balance::{Balancer, PickRequest};
use crate::config::{Backend, Mode, ProxyConfig, ServiceConfig};
use crate::metrics::{self, ServiceSnapshot};

/// Handle to a running proxy; cheap to clone. Must be created and used inside a tokio runtime.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    config: ProxyConfig,
    services: Mutex<HashMap<String, ServiceEntry>>,
    seeds: Mutex<SmallRng>,
}

struct ServiceEntry {
    shared: Arc<ServiceShared>,
    listener: JoinHandle<()>,
    /// Dropping or signalling it closes idle HTTP keep-alive connections of the service.
    shutdown: watch::Sender<bool>,
}

/// State a service's connection tasks share.
pub(crate) struct ServiceShared {
    snapshot: RwLock<Arc<Snapshot>>,
    rng: Mutex<SmallRng>,
    pub proxy_config: ProxyConfig,
}

/// One immutable generation of a service: config, backends and the balancer built for them.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: Arc<ServiceConfig>,
    pub listen: SocketAddr,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
}

impl Proxy {
    /// Starts a proxy with no services.
    pub fn start(config: ProxyConfig) -> Proxy {
        let seeds = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        Proxy { inner: Arc::new(ProxyInner { config, services: Mutex::new(HashMap::new()), seeds: Mutex::new(seeds) }) }
    }

    /// Adds a service or changes one; returns the address it listens on.
    ///
    /// A change that keeps `listen` (as configured, or the address bound for it) and `mode` is applied in
    /// place: the listener and its connections stay open. Otherwise the old listener is closed first. Backends already pushed for the service are kept.
    pub async fn set_service(&self, config: ServiceConfig) -> Result<SocketAddr, Error> {
        let previous = {
            let mut services = lock(&self.inner.services);
            if let Some(entry) = services.get(&config.name) {
                let current = entry.shared.snapshot();
                let same_listener = config.listen == current.config.listen || config.listen == current.listen;
                if same_listener && current.config.mode == config.mode {
                    let backends = current.endpoints.clone();
                    entry.shared.swap(Arc::new(config), current.listen, backends);
                    return Ok(current.listen);
                }
            }
            services.remove(&config.name)
        };
        let mut kept_endpoints = Vec::new();
        if let Some(previous) = previous {
            kept_endpoints = previous.shared.snapshot().endpoints.clone();
            previous.listener.abort();
            let _ = previous.listener.await;
        }

        let listener = TcpListener::bind(config.listen).await.map_err(|source| Error::Bind {
            service: config.name.clone(),
            addr: config.listen,
            source,
        })?;
        let listen = listener.local_addr().map_err(|source| Error::Bind { service: config.name.clone(), addr: config.listen, source })?;
        let rng = SmallRng::seed_from_u64(rand::Rng::random(&mut *lock(&self.inner.seeds)));
        let mode = config.mode;
        let name = config.name.clone();
        let config = Arc::new(config);
        let balancer = Balancer::new(config.balance, &kept_endpoints);
        let shared = Arc::new(ServiceShared {
            snapshot: RwLock::new(Arc::new(Snapshot { config, listen, endpoints: kept_endpoints, balancer })),
            rng: Mutex::new(rng),
            proxy_config: self.inner.config.clone(),
        });
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let listener = match mode {
            Mode::Tcp => tokio::spawn(crate::l4::serve(Arc::clone(&shared), listener)),
            Mode::Http => tokio::spawn(crate::l7::serve(Arc::clone(&shared), listener, shutdown_receiver)),
        };
        let replaced = lock(&self.inner.services).insert(name, ServiceEntry { shared, listener, shutdown });
        if let Some(replaced) = replaced {
            // A concurrent set_service of the same name won the race to bind; last writer wins.
            replaced.listener.abort();
            let _ = replaced.shutdown.send(true);
        }
        Ok(listen)
    }

    /// Replaces the backends of a service. Backends whose id and address did not change keep their
    /// counters, latency estimate and outlier state. Requests in flight to removed backends finish.
    pub fn set_backends(&self, service: &str, backends: Vec<Backend>) -> Result<(), Error> {
        let services = lock(&self.inner.services);
        let entry = services.get(service).ok_or_else(|| Error::UnknownService(service.to_string()))?;
        let current = entry.shared.snapshot();
        let endpoints = backends
            .into_iter()
            .map(|backend| {
                let existing =
                    current.endpoints.iter().find(|endpoint| endpoint.backend.id == backend.id && endpoint.backend.addr == backend.addr);
                match existing {
                    Some(existing) => Arc::new(Endpoint::carried_over(backend, existing)),
                    None => Arc::new(Endpoint::new(backend, self.inner.config.latency_decay)),
                }
            })
            .collect();
        entry.shared.swap(Arc::clone(&current.config), current.listen, endpoints);
        Ok(())
    }

    /// Stops the service's listener and closes its idle keep-alive connections; requests and TCP
    /// connections in progress finish. Returns false when there was no such service.
    pub async fn remove_service(&self, service: &str) -> bool {
        let Some(entry) = lock(&self.inner.services).remove(service) else {
            return false;
        };
        entry.listener.abort();
        let _ = entry.listener.await;
        let _ = entry.shutdown.send(true);
        true
    }

    /// Address the service listens on.
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        lock(&self.inner.services).get(service).map(|entry| entry.shared.snapshot().listen)
    }

    /// Counters of every service and backend, sorted by service name.
    pub fn snapshot(&self) -> Vec<ServiceSnapshot> {
        let now = Instant::now();
        self.snapshots().iter().map(|snapshot| metrics::snapshot(snapshot, now)).collect()
    }

    /// Appends the proxy's metrics in the Prometheus text format (`davit_proxy_requests_total{service,backend,addr}` …).
    pub fn render_prometheus(&self, out: &mut String) {
        metrics::render_prometheus(&self.snapshots(), Instant::now(), out);
    }

    fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        let mut snapshots: Vec<Arc<Snapshot>> = lock(&self.inner.services).values().map(|entry| entry.shared.snapshot()).collect();
        snapshots.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        snapshots
    }
}

impl Drop for ProxyInner {
    fn drop(&mut self) {
        for entry in lock(&self.services).values() {
            entry.listener.abort();
            let _ = entry.shutdown.send(true);
        }
    }
}

impl ServiceShared {
    /// The current generation; callers keep using it for the whole request even if it is replaced.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn swap(&self, config: Arc<ServiceConfig>, listen: SocketAddr, endpoints: Vec<Arc<Endpoint>>) {
        let balancer = Balancer::new(config.balance, &endpoints);
        let next = Arc::new(Snapshot { config, listen, endpoints, balancer });
        *self.snapshot.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
    }

    /// Picks an endpoint of `snapshot` for one attempt.
    pub fn pick(&self, snapshot: &Snapshot, hash_key: Option<u64>, tried: &[usize], now: Instant) -> Option<usize> {
        let request = PickRequest { now, hash_key, tried };
        snapshot.balancer.pick(&snapshot.endpoints, &request, &mut SharedRng(&self.rng))
    }
}

/// The service's RNG, locked per draw: algorithms that draw nothing (round robin, weighted, hashing
/// with a key) never take the lock.
struct SharedRng<'a>(&'a Mutex<SmallRng>);

impl rand::RngCore for SharedRng<'_> {
    fn next_u32(&mut self) -> u32 {
        lock(self.0).next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        lock(self.0).next_u64()
    }

    fn fill_bytes(&mut self, destination: &mut [u8]) {
        lock(self.0).fill_bytes(destination);
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
