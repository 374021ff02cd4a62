//! Runtime state of one backend: load, latency estimate, outlier state and counters.
//!
//! The counters live in [`EndpointStats`], shared (by `Arc`) between the backend sets before and after an
//! update when the backend's id and address did not change, so an update keeps history and in-flight
//! requests keep counting on the stats they started on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;

use crate::config::{Backend, OutlierConfig};
use crate::metrics::Histogram;
use crate::pool::ConnectionPool;

/// A backend as the balancer sees it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub backend: Backend,
    /// `backend.addr` as a `Host` header value, for requests that come without one; built once.
    pub host: HeaderValue,
    pub stats: Arc<EndpointStats>,
    /// Idle keep-alive HTTP connections to the backend (L7 only).
    pub pool: Arc<ConnectionPool>,
}

impl Endpoint {
    /// A backend new to the proxy, with a connection pool for `threads` serving threads.
    pub fn new(backend: Backend, latency_decay: Duration, threads: usize) -> Endpoint {
        Endpoint::build(backend, Arc::new(EndpointStats::new(latency_decay)), Arc::new(ConnectionPool::new(threads)))
    }

    /// The same backend in a new backend set: shares the counters, outlier state and idle connections of
    /// `previous`.
    pub fn carried_over(backend: Backend, previous: &Endpoint) -> Endpoint {
        Endpoint::build(backend, Arc::clone(&previous.stats), Arc::clone(&previous.pool))
    }

    fn build(backend: Backend, stats: Arc<EndpointStats>, pool: Arc<ConnectionPool>) -> Endpoint {
        let host = HeaderValue::from_str(&backend.addr.to_string()).expect("a socket address is a valid header value");
        Endpoint { backend, host, stats, pool }
    }

    /// Weight with 0 counted as 1.
    pub fn weight(&self) -> u32 {
        self.backend.weight.max(1)
    }
}

#[derive(Debug)]
pub(crate) struct EndpointStats {
    /// Open connections (L4) or in-flight requests whose response body is not finished (L7).
    pub active: AtomicU64,
    pub requests: AtomicU64,
    /// Connect failures, connection errors and 5xx responses.
    pub errors: AtomicU64,
    pub latency: Histogram,
    ewma: Mutex<DecayingEwma>,
    outlier: Mutex<OutlierState>,
    /// False only while `outlier` has no failures counted and no ejection pending, so that the common
    /// case (a healthy backend) reads one shared flag instead of taking the lock on every request.
    outlier_active: AtomicBool,
}

impl EndpointStats {
    pub fn new(latency_decay: Duration) -> EndpointStats {
        EndpointStats {
            active: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::default(),
            ewma: Mutex::new(DecayingEwma::new(latency_decay)),
            outlier: Mutex::new(OutlierState::default()),
            outlier_active: AtomicBool::new(false),
        }
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier_active.load(Ordering::Acquire) && lock(&self.outlier).is_ejected(now)
    }

    pub fn ejections(&self) -> u32 {
        lock(&self.outlier).ejections
    }

    /// Load score for least-response-time: lower is better.
    pub fn latency_score(&self, now: Instant) -> f64 {
        let cost = lock(&self.ewma).cost_at(now);
        let outstanding = self.active() as f64;
        if cost == 0.0 {
            // Not measured yet (or fully decayed): prefer it unless it already has work queued.
            outstanding * UNMEASURED_PENALTY_NANOS
        } else {
            cost * (outstanding + 1.0)
        }
    }

    pub fn ewma_latency(&self, now: Instant) -> Duration {
        Duration::from_nanos(lock(&self.ewma).cost_at(now) as u64)
    }

    /// Records a successful exchange that took `latency` (to response headers, or to connect in L4).
    pub fn record_success(&self, latency: Duration, now: Instant) {
        self.latency.observe(latency);
        lock(&self.ewma).observe(latency, now);
        if self.outlier_active.load(Ordering::Acquire) {
            let mut outlier = lock(&self.outlier);
            outlier.record_success();
            self.outlier_active.store(outlier.is_active(now), Ordering::Release);
        }
    }

    /// Records a failure; returns true when this failure ejected the backend.
    pub fn record_failure(&self, latency: Option<Duration>, config: &OutlierConfig, now: Instant) -> bool {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = latency {
            self.latency.observe(latency);
            lock(&self.ewma).observe(latency, now);
        }
        let mut outlier = lock(&self.outlier);
        let ejected = outlier.record_failure(config, now);
        self.outlier_active.store(outlier.is_active(now), Ordering::Release);
        ejected
    }

    /// Counts one request or connection as started; it stays active until the guard drops.
    pub fn start(self: &Arc<Self>) -> ActiveGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { stats: Arc::clone(self) }
    }
}

/// Score of a backend with outstanding work and no latency estimate: one second per outstanding request.
const UNMEASURED_PENALTY_NANOS: f64 = 1e9;

/// Keeps a request or connection counted in [`EndpointStats::active`] while alive.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    stats: Arc<EndpointStats>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// EWMA of latency with time-based decay, as in Finagle's `DecayingEwma` but without its peak rule: a sample
/// gets weight `1 - exp(-elapsed since the previous sample / decay)`, so the estimate averages over the last
/// `decay` of time rather than the last N samples, and when a backend gets no samples its estimate decays
/// towards zero, so a backend that was slow is tried again and re-measured.
///
/// Peaks are deliberately not adopted at once: on a busy host a fast backend's occasional scheduling
/// hiccup (10–30 ms) then outweighed a steadily slow backend and sent traffic to it. A backend that turns
/// slow is still avoided quickly because its outstanding requests multiply its score.
#[derive(Debug)]
pub(crate) struct DecayingEwma {
    cost_nanos: f64,
    stamp: Option<Instant>,
    decay_nanos: f64,
}

impl DecayingEwma {
    pub fn new(decay: Duration) -> DecayingEwma {
        DecayingEwma { cost_nanos: 0.0, stamp: None, decay_nanos: decay.as_nanos().max(1) as f64 }
    }

    fn weight(&self, now: Instant) -> f64 {
        match self.stamp {
            Some(stamp) => (-(now.saturating_duration_since(stamp).as_nanos() as f64) / self.decay_nanos).exp(),
            None => 0.0,
        }
    }

    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_nanos() as f64;
        let weight = self.weight(now);
        self.cost_nanos = self.cost_nanos * weight + sample * (1.0 - weight);
        self.stamp = Some(now);
    }

    pub fn cost_at(&self, now: Instant) -> f64 {
        self.cost_nanos * self.weight(now)
    }
}

/// Consecutive-failure outlier detection for one backend.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    consecutive_failures: u32,
    /// How many times the backend was ejected; scales the next ejection.
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl OutlierState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// Whether anything is counted or pending: failures towards an ejection, or an ejection.
    pub fn is_active(&self, now: Instant) -> bool {
        self.consecutive_failures > 0 || self.is_ejected(now)
    }

    pub fn record_failure(&mut self, config: &OutlierConfig, now: Instant) -> bool {
        if config.consecutive_failures == 0 || self.is_ejected(now) {
            return false;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures < config.consecutive_failures {
            return false;
        }
        self.consecutive_failures = 0;
        self.ejections = self.ejections.saturating_add(1);
        let duration = config.base_ejection.saturating_mul(self.ejections).min(config.max_ejection);
        self.ejected_until = Some(now + duration);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_ejects_after_consecutive_failures_and_backs_off() {
        let config =
            OutlierConfig { consecutive_failures: 3, base_ejection: Duration::from_secs(10), max_ejection: Duration::from_secs(25) };
        let start = Instant::now();
        let mut state = OutlierState::default();
        assert!(!state.record_failure(&config, start));
        assert!(!state.record_failure(&config, start));
        state.record_success();
        assert!(!state.record_failure(&config, start));
        assert!(!state.record_failure(&config, start));
        assert!(state.record_failure(&config, start));
        assert!(state.is_ejected(start + Duration::from_secs(9)));
        assert!(!state.is_ejected(start + Duration::from_secs(10)));

        let later = start + Duration::from_secs(10);
        for _ in 0..2 {
            assert!(!state.record_failure(&config, later));
        }
        assert!(state.record_failure(&config, later));
        assert!(state.is_ejected(later + Duration::from_secs(19)));
        assert!(!state.is_ejected(later + Duration::from_secs(20)));

        let third = later + Duration::from_secs(20);
        for _ in 0..3 {
            state.record_failure(&config, third);
        }
        // 3 × 10 s is capped at 25 s.
        assert!(state.is_ejected(third + Duration::from_secs(24)));
        assert!(!state.is_ejected(third + Duration::from_secs(25)));
    }

    #[test]
    fn ewma_follows_time_and_decays() {
        let start = Instant::now();
        let mut ewma = DecayingEwma::new(Duration::from_secs(1));
        ewma.observe(Duration::from_millis(50), start);
        assert_eq!(ewma.cost_at(start), 50e6);
        let after_one_decay = ewma.cost_at(start + Duration::from_secs(1));
        assert!((after_one_decay - 50e6 / std::f64::consts::E).abs() < 1e3, "{after_one_decay}");
        assert!(ewma.cost_at(start + Duration::from_secs(20)) < 1.0);
        ewma.observe(Duration::from_millis(1), start + Duration::from_secs(20));
        assert!(ewma.cost_at(start + Duration::from_secs(20)) < 2e6);
        // One spike among frequent samples barely moves the estimate.
        ewma.observe(Duration::from_millis(30), start + Duration::from_millis(20_001));
        assert!(ewma.cost_at(start + Duration::from_millis(20_001)) < 2e6);
    }
}
