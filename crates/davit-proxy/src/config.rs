//! Configuration types: what a service is and where its backends are.

use std::net::SocketAddr;
use std::time::Duration;

/// One proxied service: a local listener and how to spread its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Service name, unique per proxy; used in metrics labels.
    pub name: String,
    pub mode: Mode,
    /// Where the proxy listens for this service (port 0 picks a free port, see [`crate::Proxy::local_addr`]).
    pub listen: SocketAddr,
    pub balance: Algorithm,
    /// Key for [`Algorithm::ConsistentHash`]; ignored by the other algorithms.
    pub hash_on: HashOn,
    /// How many times an idempotent HTTP request without a body is retried on another backend after a
    /// connection failure or a 5xx. Ignored in [`Mode::Tcp`].
    pub retries: u32,
    pub outlier: OutlierConfig,
    /// Send a fixed share of the requests to some backends (a deployment's canaries), whatever their number.
    pub canary: Option<CanaryRoute>,
    /// Hold requests (and TCP connections) while the service has no backends, and ask for it to be started
    /// ([`crate::Proxy::activation_requests`]); without it they are refused at once.
    pub activation: Option<Activation>,
}

/// How a service scaled to zero is woken: a request that finds no backend waits up to `timeout` for one and
/// is then forwarded; at most `max_waiting` wait at once (more are refused with 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation {
    pub timeout: Duration,
    pub max_waiting: usize,
}

impl Activation {
    /// Waits up to `timeout`, at most 1,024 requests at once.
    pub fn new(timeout: Duration) -> Activation {
        Activation { timeout, max_waiting: 1024 }
    }
}

/// `weight` percent of the requests go to the backends in `backends` (by id), the rest to the others; within
/// each set the service's algorithm picks. Without a backend on either side, every request goes to the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryRoute {
    pub weight: u32,
    pub backends: std::collections::BTreeSet<String>,
}

impl ServiceConfig {
    /// A service with round robin, source-IP hashing, one retry and default outlier detection.
    pub fn new(name: impl Into<String>, mode: Mode, listen: SocketAddr) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            mode,
            listen,
            balance: Algorithm::RoundRobin,
            hash_on: HashOn::SourceIp,
            retries: 1,
            outlier: OutlierConfig::default(),
            canary: None,
            activation: None,
        }
    }
}

/// Layer the proxy works at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// L4: one backend connection per client connection, bytes copied both ways.
    Tcp,
    /// L7: HTTP/1.1, each request balanced on its own, keep-alive on both sides.
    Http,
}

/// Load-balancing algorithm. Ejected backends are skipped; when every backend is ejected all are used
/// (panic mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Uniformly random.
    Random,
    /// Strict rotation over the eligible backends.
    RoundRobin,
    /// Smooth weighted round robin (as in nginx).
    Weighted,
    /// Fewest active connections (L4) or in-flight requests (L7); ties broken randomly.
    LeastConnections,
    /// Power of two random choices over a time-decayed EWMA of latency × (outstanding + 1).
    LeastResponseTime,
    /// Ketama ring over [`ServiceConfig::hash_on`], 160 points per backend per weight unit.
    ConsistentHash,
}

/// What [`Algorithm::ConsistentHash`] hashes. Requests without the key are balanced randomly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    SourceIp,
    /// Value of this request header (L7 only).
    Header(String),
    /// Value of this cookie (L7 only).
    Cookie(String),
}

/// Passive health checking: eject a backend after `consecutive_failures` failures in a row for
/// `base_ejection × number of ejections so far`, capped at `max_ejection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> OutlierConfig {
        OutlierConfig { consecutive_failures: 5, base_ejection: Duration::from_secs(30), max_ejection: Duration::from_secs(300) }
    }
}

/// One instance of a service, as pushed in by the caller (only healthy ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Allocation id; stable identity of the backend across updates.
    pub id: String,
    pub addr: SocketAddr,
    /// Relative weight for [`Algorithm::Weighted`] and [`Algorithm::ConsistentHash`]; 0 counts as 1.
    pub weight: u32,
}

impl Backend {
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Backend {
        Backend { id: id.into(), addr, weight: 1 }
    }
}

/// Settings shared by all services of one proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Bound on every connection attempt to a backend.
    pub connect_timeout: Duration,
    /// L4: how many backends one client connection may try before it is closed.
    pub max_connect_attempts: u32,
    /// Time constant of the EWMA latency used by [`Algorithm::LeastResponseTime`]: an observation's
    /// weight falls to 1/e after this long, so a backend that was slow gets traffic back.
    pub latency_decay: Duration,
    /// Idle keep-alive connections to backends are closed after this long.
    pub pool_idle_timeout: Duration,
    /// HTTP services: a client connection must send a request's whole header within this long of the
    /// connection opening or of the previous response (so it also bounds idle keep-alive); otherwise it
    /// is closed (slow or idle clients cannot hold connections open).
    pub client_header_timeout: Duration,
    /// Seed of the balancers' random choices; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Serving threads (`davit-proxy-0` …; at least one): each runs its own event loop with its own
    /// listener of every service, and a connection stays on the thread that accepted it. Defaults to the
    /// number of CPUs the process may use.
    pub threads: usize,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            max_connect_attempts: 3,
            latency_decay: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(30),
            seed: None,
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        }
    }
}
