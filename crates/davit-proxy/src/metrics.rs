//! Per-backend counters and their two views: Prometheus text and a plain snapshot struct.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Algorithm, Mode};
use crate::proxy::Snapshot;

/// What `davit service info` shows about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSnapshot {
    pub name: String,
    pub mode: Mode,
    pub listen: SocketAddr,
    pub algorithm: Algorithm,
    pub backends: Vec<BackendSnapshot>,
    /// Requests (connections) waiting for a backend of a service scaled to zero.
    pub waiting: usize,
}

/// Counters of one backend, read at one moment (each counter is read atomically, not all together).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSnapshot {
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Requests (L7) or connections (L4) started, retries included.
    pub requests: u64,
    /// Connect failures, connection errors and 5xx responses.
    pub errors: u64,
    /// Open connections (L4) or in-flight requests (L7).
    pub active: u64,
    pub ewma_latency_ms: f64,
    pub ejected: bool,
    /// How many times outlier detection ejected this backend.
    pub ejections: u32,
    /// Requests per latency bucket ([`LATENCY_BUCKETS`], then one for slower).
    pub latency_buckets: Vec<u64>,
}

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Fixed-bucket latency histogram; bucket counts are not cumulative (Prometheus rendering adds them up,
/// and the total count is their sum).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// The bucket counts now.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).collect()
    }

    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let index = LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

pub(crate) fn snapshot(snapshot: &Snapshot, waiting: usize, now: Instant) -> ServiceSnapshot {
    let config = &snapshot.config;
    ServiceSnapshot {
        waiting,
        name: config.name.clone(),
        mode: config.mode,
        listen: snapshot.listen,
        algorithm: config.balance,
        backends: snapshot
            .endpoints
            .iter()
            .map(|endpoint| {
                let stats = &endpoint.stats;
                BackendSnapshot {
                    id: endpoint.backend.id.clone(),
                    addr: endpoint.backend.addr,
                    weight: endpoint.backend.weight,
                    requests: stats.requests.load(Ordering::Relaxed),
                    errors: stats.errors.load(Ordering::Relaxed),
                    active: stats.active(),
                    ewma_latency_ms: stats.ewma_latency(now).as_secs_f64() * 1e3,
                    ejected: stats.is_ejected(now),
                    ejections: stats.ejections(),
                    latency_buckets: stats.latency.counts(),
                }
            })
            .collect(),
    }
}

/// Appends all metric families for `services` to `out` in the Prometheus text exposition format.
pub(crate) fn render_prometheus(services: &[(std::sync::Arc<Snapshot>, usize)], now: Instant, out: &mut String) {
    let name = "davit_proxy_waiting";
    let _ = writeln!(out, "# HELP {name} Requests (HTTP) or connections (TCP) waiting for a backend of a service scaled to zero.");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (service, waiting) in services.iter().filter(|(service, _)| service.config.activation.is_some()) {
        let _ = writeln!(out, "{name}{{service=\"{}\"}} {waiting}", escape(&service.config.name));
    }
    let services: &[&Snapshot] = &services.iter().map(|(service, _)| service.as_ref()).collect::<Vec<_>>();
    let counter = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(&crate::backend::Endpoint) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for service in services {
            for endpoint in &service.endpoints {
                let labels = labels(&service.config.name, &endpoint.backend.id, &endpoint.backend.addr);
                let _ = writeln!(out, "{name}{{{labels}}} {}", value(endpoint));
            }
        }
    };
    counter(out, "davit_proxy_requests_total", "Requests (HTTP) or connections (TCP) sent to a backend.", "counter", &|e| {
        e.stats.requests.load(Ordering::Relaxed).to_string()
    });
    counter(out, "davit_proxy_errors_total", "Connect failures, connection errors and 5xx responses of a backend.", "counter", &|e| {
        e.stats.errors.load(Ordering::Relaxed).to_string()
    });
    counter(out, "davit_proxy_active", "Open connections (TCP) or in-flight requests (HTTP) of a backend.", "gauge", &|e| {
        e.stats.active().to_string()
    });
    counter(out, "davit_proxy_ejected", "1 while outlier detection has ejected the backend.", "gauge", &|e| {
        u8::from(e.stats.is_ejected(now)).to_string()
    });
    counter(out, "davit_proxy_ewma_latency_seconds", "Time-decayed EWMA latency estimate of a backend.", "gauge", &|e| {
        e.stats.ewma_latency(now).as_secs_f64().to_string()
    });

    let name = "davit_proxy_request_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time to response headers (HTTP) or to connect (TCP).");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for service in services {
        for endpoint in &service.endpoints {
            let labels = labels(&service.config.name, &endpoint.backend.id, &endpoint.backend.addr);
            let histogram = &endpoint.stats.latency;
            let mut cumulative = 0;
            for (index, bucket) in histogram.buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                let bound = LATENCY_BUCKETS.get(index).map_or_else(|| "+Inf".to_string(), |bound| bound.to_string());
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }
}

fn labels(service: &str, backend: &str, addr: &SocketAddr) -> String {
    format!("service=\"{}\",backend=\"{}\",addr=\"{addr}\"", escape(service), escape(backend))
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        assert_eq!(histogram.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(histogram.buckets[3].load(Ordering::Relaxed), 1);
        assert_eq!(histogram.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed), 1);
        assert_eq!(histogram.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).sum::<u64>(), 3);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
