//! The agent-local service proxy of davit.
//!
//! Each agent runs one [`Proxy`]. For every service it is told about it listens on a local address and
//! forwards connections (L4, [`Mode::Tcp`]) or HTTP/1.1 requests (L7, [`Mode::Http`]) to the service's
//! backends, chosen by a load-balancing [`Algorithm`]. Around that it keeps:
//!
//! - passive health: backends that fail `consecutive_failures` times in a row (connect failures, connection
//!   errors, 5xx) are ejected for a growing, capped duration ([`OutlierConfig`]);
//! - per-backend metrics ([`Proxy::render_prometheus`], [`Proxy::snapshot`]);
//! - a small authoritative DNS server for `*.service.davit` and `*.alloc.davit` ([`dns::DnsServer`]).
//!
//! Backend sets are pushed in with [`Proxy::set_backends`] and swapped atomically: requests already in flight
//! keep the backend they were sent to and finish (draining), new requests only see the new set. A service with
//! [`ServiceConfig::activation`] (scaled to zero) holds requests that find no backend until one is pushed, and
//! tells the caller through [`Proxy::activation_requests`].
//!
//! The proxy serves on threads of its own ([`ProxyConfig::threads`], one per CPU by default), each with a
//! single-threaded tokio runtime and its own `SO_REUSEPORT` listener of every service, as haproxy does with
//! `nbthread`: the kernel spreads connections over the threads, and a connection and its requests stay on
//! one thread. Backend counters and connection pools are shared (an idle backend connection moves to a
//! thread that has none of its own).
//!
//! **Invariant:** the proxy knows nothing about jobs, drivers, allocations' lifecycles or the davit server.
//! It never calls out to anything but the backends it was given; it never blocks on the caller that feeds
//! it (nor runs on the caller's runtime), and one failing connection or request never stops a listener.
//!
//! **API boundary:** [`Proxy`] (services and backends in, metrics out) and [`dns::DnsServer`] (records in).
//! The caller decides which instances are healthy; the proxy only ejects on what it observes itself.

mod backend;
mod balance;
mod codec;
mod config;
pub mod dns;
mod l4;
mod l7;
mod metrics;
mod pool;
mod proxy;

pub use config::{Activation, Algorithm, Backend, CanaryRoute, HashOn, Mode, OutlierConfig, ProxyConfig, ServiceConfig};
pub use metrics::{BackendSnapshot, LATENCY_BUCKETS, ServiceSnapshot};
pub use proxy::{ACTIVATION_REPEAT, Proxy};

/// Errors of the proxy's public operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listener of a service could not be bound.
    #[error("cannot listen on {addr} for service {service}")]
    Bind {
        service: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Backends were pushed for a service that was never configured (or was removed).
    #[error("unknown service {0}")]
    UnknownService(String),
    /// The DNS server could not bind its sockets.
    #[error("cannot listen for DNS on {addr}")]
    DnsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
