//! The proxy handle: services, their listeners and their atomically swapped backend sets, and the serving
//! threads the listeners run on.
//!
//! The proxy serves on threads of its own, like haproxy's `nbthread`: each runs a single-threaded tokio
//! runtime, and every service has one listener per thread, all bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads new connections over the threads and a connection is accepted,
//! served and closed by one thread without ever being woken on, or moved to, another. What the threads
//! share (a service's [`Snapshot`], the backends' counters and pools) is behind `Arc`s and atomics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::backend::Endpoint;
use crate::balance::{Balancer, PickRequest};
use crate::config::{Backend, Mode, ProxyConfig, ServiceConfig};
use crate::metrics::{self, ServiceSnapshot};

/// Handle to a running proxy; cheap to clone. Its async methods may be awaited on any tokio runtime; the
/// proxy serves on threads of its own ([`ProxyConfig::threads`]), started with the first service. Dropping
/// the last handle stops them, closing whatever connections are still open.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    config: ProxyConfig,
    services: Mutex<HashMap<String, ServiceEntry>>,
    /// Signalled when a service with [`ServiceConfig::activation`] wants backends (see [`Proxy::activation_requests`]).
    activation: Arc<watch::Sender<()>>,
    seeds: Mutex<SmallRng>,
    /// Started by the first [`Proxy::set_service`].
    workers: Mutex<Option<Arc<Workers>>>,
}

struct ServiceEntry {
    shared: Arc<ServiceShared>,
    /// One accept loop per serving thread.
    listeners: Vec<JoinHandle<()>>,
    /// Dropping or signalling it closes idle HTTP keep-alive connections of the service.
    shutdown: watch::Sender<bool>,
}

/// The serving threads: one single-threaded runtime each, running until this is dropped.
struct Workers {
    runtimes: Vec<Handle>,
    /// Each thread waits for this to close, then drops its runtime and with it every task left on it.
    _stop: watch::Sender<()>,
}

/// State a service's connection tasks share.
pub(crate) struct ServiceShared {
    snapshot: RwLock<Arc<Snapshot>>,
    rng: Mutex<SmallRng>,
    pub proxy_config: ProxyConfig,
    /// Signalled on every new generation (waiting requests look for backends again).
    changed: watch::Sender<()>,
    /// Set by a request waiting for backends; taken by [`Proxy::take_activation_requests`].
    wants_activation: AtomicBool,
    /// Requests (connections) waiting for backends now.
    waiting: AtomicUsize,
    activation: Arc<watch::Sender<()>>,
    /// The service was removed or replaced by another listener: its waiting requests give up.
    retired: AtomicBool,
}

/// One immutable generation of a service: config, backends and the balancer built for them.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: Arc<ServiceConfig>,
    pub listen: SocketAddr,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    /// With a canary route and endpoints on both sides: its weight, and the endpoints (indexes) of each side.
    canary_split: Option<CanarySplit>,
}

#[derive(Debug)]
struct CanarySplit {
    weight: u32,
    canaries: Vec<usize>,
    others: Vec<usize>,
}

impl Snapshot {
    fn new(config: Arc<ServiceConfig>, listen: SocketAddr, endpoints: Vec<Arc<Endpoint>>) -> Snapshot {
        let balancer = Balancer::new(config.balance, &endpoints);
        let canary_split = config.canary.as_ref().and_then(|route| {
            let (canaries, others): (Vec<usize>, Vec<usize>) =
                (0..endpoints.len()).partition(|&index| route.backends.contains(&endpoints[index].backend.id));
            (!canaries.is_empty() && !others.is_empty()).then_some(CanarySplit { weight: route.weight.min(100), canaries, others })
        });
        Snapshot { config, listen, endpoints, balancer, canary_split }
    }
}

/// Prefix of the serving threads' names (`davit-proxy-0`, `davit-proxy-1` …).
const THREAD_NAME_PREFIX: &str = "davit-proxy-";

/// Backlog of each listener, as tokio's `TcpListener::bind` uses.
const LISTEN_BACKLOG: u32 = 1024;

impl Proxy {
    /// Starts a proxy with no services (and no threads yet).
    pub fn start(mut config: ProxyConfig) -> Proxy {
        config.threads = config.threads.max(1);
        let seeds = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        Proxy {
            inner: Arc::new(ProxyInner {
                config,
                services: Mutex::new(HashMap::new()),
                seeds: Mutex::new(seeds),
                workers: Mutex::new(None),
                activation: Arc::new(watch::channel(()).0),
            }),
        }
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
            previous.shared.retire();
            kept_endpoints = previous.shared.snapshot().endpoints.clone();
            stop_listeners(previous.listeners).await;
        }

        let bind_error = |source| Error::Bind { service: config.name.clone(), addr: config.listen, source };
        if config.listen.port() != 0 && lock(&self.inner.services).values().any(|entry| entry.shared.snapshot().listen == config.listen) {
            // SO_REUSEPORT would let a second listener of this proxy share the address.
            return Err(bind_error(std::io::ErrorKind::AddrInUse.into()));
        }
        let workers = self.workers().map_err(bind_error)?;
        let (listen, listeners) = bind_listeners(&workers, config.listen).map_err(bind_error)?;
        let rng = SmallRng::seed_from_u64(rand::Rng::random(&mut *lock(&self.inner.seeds)));
        let mode = config.mode;
        let name = config.name.clone();
        let config = Arc::new(config);
        let shared = Arc::new(ServiceShared {
            snapshot: RwLock::new(Arc::new(Snapshot::new(config, listen, kept_endpoints))),
            rng: Mutex::new(rng),
            proxy_config: self.inner.config.clone(),
            changed: watch::channel(()).0,
            wants_activation: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            activation: Arc::clone(&self.inner.activation),
            retired: AtomicBool::new(false),
        });
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let listeners = workers
            .runtimes
            .iter()
            .zip(listeners)
            .enumerate()
            .map(|(worker, (runtime, listener))| match mode {
                Mode::Tcp => runtime.spawn(crate::l4::serve(Arc::clone(&shared), listener)),
                Mode::Http => runtime.spawn(crate::l7::serve(Arc::clone(&shared), listener, shutdown_receiver.clone(), worker)),
            })
            .collect();
        let replaced = lock(&self.inner.services).insert(name, ServiceEntry { shared, listeners, shutdown });
        if let Some(replaced) = replaced {
            // A concurrent set_service of the same name won the race to bind; last writer wins.
            for listener in &replaced.listeners {
                listener.abort();
            }
            let _ = replaced.shutdown.send(true);
            replaced.shared.retire();
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
                    None => Arc::new(Endpoint::new(backend, self.inner.config.latency_decay, self.inner.config.threads)),
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
        entry.shared.retire();
        stop_listeners(entry.listeners).await;
        let _ = entry.shutdown.send(true);
        true
    }

    /// Changes whenever a request for a service with [`ServiceConfig::activation`] finds no backend and waits:
    /// the caller then takes the services' names with [`Proxy::take_activation_requests`] and has them started
    /// (the proxy itself never calls out). While requests wait, they ask again every
    /// [`ACTIVATION_REPEAT`].
    pub fn activation_requests(&self) -> watch::Receiver<()> {
        self.inner.activation.subscribe()
    }

    /// The services that asked for backends since the last call, sorted.
    pub fn take_activation_requests(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.inner.services)
            .iter()
            .filter(|(_, entry)| entry.shared.wants_activation.swap(false, Ordering::Relaxed))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Address the service listens on.
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        lock(&self.inner.services).get(service).map(|entry| entry.shared.snapshot().listen)
    }

    /// Counters of every service and backend, sorted by service name.
    pub fn snapshot(&self) -> Vec<ServiceSnapshot> {
        let now = Instant::now();
        self.snapshots().iter().map(|(snapshot, waiting)| metrics::snapshot(snapshot, *waiting, now)).collect()
    }

    /// Appends the proxy's metrics in the Prometheus text format (`davit_proxy_requests_total{service,backend,addr}` …).
    pub fn render_prometheus(&self, out: &mut String) {
        metrics::render_prometheus(&self.snapshots(), Instant::now(), out);
    }

    /// The serving threads, started on first use.
    fn workers(&self) -> std::io::Result<Arc<Workers>> {
        let mut workers = lock(&self.inner.workers);
        if let Some(workers) = &*workers {
            return Ok(Arc::clone(workers));
        }
        let started = Arc::new(Workers::start(self.inner.config.threads)?);
        *workers = Some(Arc::clone(&started));
        Ok(started)
    }

    /// Every service's current generation and its waiting requests, by name.
    fn snapshots(&self) -> Vec<(Arc<Snapshot>, usize)> {
        let mut snapshots: Vec<(Arc<Snapshot>, usize)> =
            lock(&self.inner.services).values().map(|entry| (entry.shared.snapshot(), entry.shared.waiting())).collect();
        snapshots.sort_by(|a, b| a.0.config.name.cmp(&b.0.config.name));
        snapshots
    }
}

impl Drop for ProxyInner {
    fn drop(&mut self) {
        for entry in lock(&self.services).values() {
            for listener in &entry.listeners {
                listener.abort();
            }
            let _ = entry.shutdown.send(true);
            entry.shared.retire();
        }
    }
}

impl Workers {
    fn start(threads: usize) -> std::io::Result<Workers> {
        let (stop, stopped) = watch::channel(());
        let mut runtimes = Vec::with_capacity(threads);
        for index in 0..threads {
            // Each runtime is built and dropped on its own thread: a runtime may not be dropped in the
            // async context `set_service` runs in.
            let (sender, receiver) = std::sync::mpsc::sync_channel(1);
            let mut stopped = stopped.clone();
            std::thread::Builder::new().name(format!("{THREAD_NAME_PREFIX}{index}")).spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => return drop(sender.send(Err(error))),
                };
                let _ = sender.send(Ok(runtime.handle().clone()));
                runtime.block_on(async move {
                    // Returns (with an error) once the sender is dropped.
                    let _ = stopped.changed().await;
                });
            })?;
            let started = receiver.recv().map_err(|_| std::io::Error::other("proxy thread ended while starting"))?;
            runtimes.push(started?);
        }
        Ok(Workers { runtimes, _stop: stop })
    }
}

/// Binds one listener per serving thread on `addr` (the first one picks the port when it is 0), each
/// registered with its thread's runtime; returns the bound address and the listeners.
fn bind_listeners(workers: &Workers, addr: SocketAddr) -> std::io::Result<(SocketAddr, Vec<TcpListener>)> {
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(workers.runtimes.len());
    for runtime in &workers.runtimes {
        let _context = runtime.enter();
        let socket = if bound.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(bound)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok((bound, listeners))
}

/// Stops the accept loops and waits until their listeners are closed.
async fn stop_listeners(listeners: Vec<JoinHandle<()>>) {
    for listener in &listeners {
        listener.abort();
    }
    for listener in listeners {
        let _ = listener.await;
    }
}

impl ServiceShared {
    /// The current generation; callers keep using it for the whole request even if it is replaced.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn swap(&self, config: Arc<ServiceConfig>, listen: SocketAddr, endpoints: Vec<Arc<Endpoint>>) {
        let next = Arc::new(Snapshot::new(config, listen, endpoints));
        *self.snapshot.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        self.changed.send_replace(());
    }

    /// Releases the requests waiting for backends (which answer 503): the service is gone or has another listener.
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.changed.send_replace(());
    }

    /// Requests waiting for backends now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// `snapshot` if it has backends; otherwise, for a service with [`ServiceConfig::activation`], asks for
    /// backends and waits up to its timeout for a generation that has some. `Err` says why there is none.
    pub async fn with_backends(&self, snapshot: Arc<Snapshot>) -> Result<Arc<Snapshot>, Unavailable> {
        if !snapshot.endpoints.is_empty() {
            return Ok(snapshot);
        }
        let Some(activation) = snapshot.config.activation else { return Err(Unavailable::NoBackends) };
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= activation.max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Unavailable::TooManyWaiting(activation.max_waiting));
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _waiting = Waiting(&self.waiting);
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + activation.timeout;
        loop {
            let current = self.snapshot();
            if !current.endpoints.is_empty() {
                return Ok(current);
            }
            // Removed, replaced, or no longer activated (e.g. `enabled: false`): nothing will start a backend.
            if self.retired.load(Ordering::Relaxed) || current.config.activation.is_none() {
                return Err(Unavailable::NoBackends);
            }
            self.wants_activation.store(true, Ordering::Relaxed);
            self.activation.send_replace(());
            let ask_again = (tokio::time::Instant::now() + ACTIVATION_REPEAT).min(deadline);
            match tokio::time::timeout_at(ask_again, changed.changed()).await {
                // (The sender lives as long as `self`: `changed()` never fails here.)
                Ok(_) => {}
                Err(_) if tokio::time::Instant::now() >= deadline => return Err(Unavailable::Timeout(activation.timeout)),
                Err(_) => {}
            }
        }
    }

    /// Picks an endpoint of `snapshot` for one attempt. With a canary split, the canaries' side is drawn with
    /// its weight first and the algorithm picks within that side (the other side when nothing there is left).
    pub fn pick(&self, snapshot: &Snapshot, hash_key: Option<u64>, tried: &[usize], now: Instant) -> Option<usize> {
        if let Some(split) = &snapshot.canary_split {
            let to_canaries = rand::Rng::random_range(&mut SharedRng(&self.rng), 0..100) < split.weight;
            let mut excluded = tried.to_vec();
            excluded.extend(if to_canaries { &split.others } else { &split.canaries });
            let request = PickRequest { now, hash_key, tried: &excluded };
            if let Some(index) = snapshot.balancer.pick(&snapshot.endpoints, &request, &mut SharedRng(&self.rng)) {
                return Some(index);
            }
        }
        let request = PickRequest { now, hash_key, tried };
        snapshot.balancer.pick(&snapshot.endpoints, &request, &mut SharedRng(&self.rng))
    }
}

/// How often a request waiting for backends asks for them again (the caller may have failed to start them).
pub const ACTIVATION_REPEAT: Duration = Duration::from_secs(2);

/// Why a request found no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    NoBackends,
    Timeout(Duration),
    TooManyWaiting(usize),
}

impl Unavailable {
    /// The text of the proxy's 503 answer.
    pub fn describe(self, service: &str) -> String {
        match self {
            Unavailable::NoBackends => format!("davit proxy: service {service} has no backends\n"),
            Unavailable::Timeout(timeout) => {
                format!("davit proxy: service {service} has no backends; none started within {}s\n", timeout.as_secs_f64())
            }
            Unavailable::TooManyWaiting(most) => {
                format!("davit proxy: service {service} has no backends and {most} requests already wait for one\n")
            }
        }
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
