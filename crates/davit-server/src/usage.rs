//! Usage signals (see ARCHITECTURE.md, "Autoscaler"): what agents report every few seconds
//! (`POST /v1/node/{id}/usage`) — each allocation's CPU and memory usage from its cgroups, and their proxies'
//! cumulative counters per backend — kept in memory for the autoscaler, `/metrics` and `davit alloc status`.
//!
//! A node's report counts only for allocations the server placed on that node (and proxy counters only for
//! allocations that exist). Request rates and latency come from the difference between a proxy's successive
//! readings; a proxy whose counters went down (its agent restarted) starts again from that reading. Nothing
//! here is stored: after a server restart the signals come back with the next reports.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use davit_api::http::{AllocUsage, BackendCounters, UsageReport};
use davit_scheduler::ClusterState;

use crate::analysis::Traffic;
use crate::api::services::BackendSums;

/// A sample or a rate older than this (or three of its windows, if longer) is not used (the agent reports every
/// 5 s by default).
pub const FRESH_FOR: Duration = Duration::from_secs(30);
/// The most CPU one task may report (1,000 cores) and the most memory (1 PiB): larger numbers are a node's lie or
/// a bug, and are capped so that sums of them cannot overflow.
const MAX_CPU_MILLICORES: u64 = 1_000_000;
const MAX_MEMORY_BYTES: u64 = 1 << 50;

/// Whether something measured over `window` and received `age` ago is still current.
fn fresh(age: Duration, window: Duration) -> bool {
    age < FRESH_FOR.max(window * 3)
}
/// Entries not refreshed for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(300);

#[derive(Default)]
pub(crate) struct Signals {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    allocs: HashMap<String, (AllocUsage, Instant)>,
    /// The last cumulative reading of each (node, backend).
    readings: HashMap<(String, String), (BackendCounters, Instant)>,
    /// Per backend and node: the traffic between that proxy's last two readings, and when it was computed.
    traffic: HashMap<String, HashMap<String, (Traffic, Duration, Instant)>>,
    /// Per backend: the last report that showed a request to it (new requests, or requests in flight).
    last_request: HashMap<String, Instant>,
    pruned: Option<Instant>,
}

fn sums(counters: &BackendCounters) -> BackendSums {
    BackendSums {
        requests: counters.requests,
        errors: counters.errors,
        latency_buckets: counters.latency_buckets.clone(),
        ..BackendSums::default()
    }
}

/// An allocation's requests through every proxy over their last reporting windows.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AllocTraffic {
    pub requests_per_second: f64,
    /// `None` without requests.
    pub p99_ms: Option<f64>,
}

impl Signals {
    /// Takes a node's report (already checked to be within [`davit_api::http::MAX_USAGE_ENTRIES`]); `served`:
    /// whether an allocation is an instance of a service in the catalog (whose traffic a proxy may report).
    pub fn ingest(&self, node_id: &str, report: UsageReport, cluster: &ClusterState, served: impl Fn(&str) -> bool, now: Instant) {
        let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // (Through a plain reference, so that its fields can be borrowed apart.)
        let inner = &mut *guard;
        for mut usage in report.allocs {
            // A node speaks only for its own allocations.
            if cluster.alloc(&usage.alloc_id).is_some_and(|alloc| alloc.node_id == node_id) {
                for task in usage.tasks.values_mut() {
                    task.cpu_millicores = task.cpu_millicores.min(MAX_CPU_MILLICORES);
                    task.memory_bytes = task.memory_bytes.min(MAX_MEMORY_BYTES);
                }
                usage.window_ms = usage.window_ms.min(3_600_000);
                inner.allocs.insert(usage.alloc_id.clone(), (usage, now));
            }
        }
        for mut counters in report.proxy {
            // Every proxy may send requests to every service instance, and to nothing else.
            if cluster.alloc(&counters.alloc_id).is_none() || !served(&counters.alloc_id) {
                continue;
            }
            counters.latency_buckets.truncate(davit_api::http::PROXY_LATENCY_BUCKETS.len() + 1);
            let key = (node_id.to_string(), counters.alloc_id.clone());
            // Since the previous reading (a proxy that counts from 0 again: all of it). A first reading counts as
            // activity if it shows any request (after a server restart that keeps a group awake one idle period
            // longer; it never puts one to sleep early).
            let before = inner.readings.get(&key);
            let mut traffic = Traffic::default();
            traffic.add(&sums(&counters), before.map(|(before, _)| sums(before)).as_ref());
            if traffic.requests > 0 || counters.active > 0 {
                inner.last_request.insert(counters.alloc_id.clone(), now);
            }
            let elapsed = before.map(|(_, at)| now.duration_since(*at)).filter(|elapsed| !elapsed.is_zero());
            if let Some(elapsed) = elapsed {
                inner.traffic.entry(counters.alloc_id.clone()).or_default().insert(node_id.to_string(), (traffic, elapsed, now));
            }
            inner.readings.insert(key, (counters, now));
        }
        if inner.pruned.is_none_or(|pruned| now.duration_since(pruned) > FRESH_FOR) {
            inner.pruned = Some(now);
            let keep = |at: &Instant| now.duration_since(*at) < FORGET_AFTER;
            inner.allocs.retain(|_, (_, at)| keep(at));
            inner.readings.retain(|_, (_, at)| keep(at));
            inner.last_request.retain(|_, at| keep(at));
            inner.traffic.retain(|_, nodes| {
                nodes.retain(|_, (_, _, at)| keep(at));
                !nodes.is_empty()
            });
        }
    }

    /// The allocation's latest sample if it is fresh, with its age.
    pub fn usage(&self, alloc_id: &str, now: Instant) -> Option<(AllocUsage, Duration)> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (usage, at) = inner.allocs.get(alloc_id)?;
        let age = now.duration_since(*at);
        fresh(age, Duration::from_millis(usage.window_ms)).then(|| (usage.clone(), age))
    }

    /// The allocation's traffic, summed over the proxies that reported it recently (`None`: no proxy did).
    pub fn traffic(&self, alloc_id: &str, now: Instant) -> Option<AllocTraffic> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut total = Traffic::default();
        let mut rate = 0.0;
        let mut any = false;
        for (traffic, window, at) in inner.traffic.get(alloc_id)?.values() {
            if !fresh(now.duration_since(*at), *window) {
                continue;
            }
            any = true;
            rate += traffic.requests as f64 / window.as_secs_f64();
            total.add_all(traffic);
        }
        any.then(|| AllocTraffic { requests_per_second: rate, p99_ms: (total.requests > 0).then(|| total.p99_ms()) })
    }

    /// When a proxy last reported a request to the allocation (within the last five minutes).
    pub fn last_request(&self, alloc_id: &str) -> Option<Instant> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last_request.get(alloc_id).copied()
    }

    /// Every fresh sample (for `/metrics`).
    pub fn all_fresh(&self, now: Instant) -> Vec<AllocUsage> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut samples: Vec<AllocUsage> = inner
            .allocs
            .values()
            .filter(|(usage, at)| fresh(now.duration_since(*at), Duration::from_millis(usage.window_ms)))
            .map(|(usage, _)| usage.clone())
            .collect();
        samples.sort_by(|a, b| a.alloc_id.cmp(&b.alloc_id));
        samples
    }
}

#[cfg(test)]
mod tests {
    use davit_api::http::TaskUsage;

    use super::*;

    fn cluster() -> ClusterState {
        let mut cluster = ClusterState::default();
        for (id, node) in [("a1", "n1"), ("a2", "n2")] {
            cluster.upsert_alloc(std::sync::Arc::new(davit_api::testing::alloc(id, "web", "web", 0, node)));
        }
        cluster
    }

    fn usage(alloc_id: &str, cpu: u64) -> AllocUsage {
        AllocUsage {
            alloc_id: alloc_id.to_string(),
            tasks: [("app".to_string(), TaskUsage { cpu_millicores: cpu, memory_bytes: 1 << 20 })].into(),
            ready: true,
            window_ms: 5_000,
            ..AllocUsage::default()
        }
    }

    fn counters(alloc_id: &str, requests: u64) -> BackendCounters {
        let mut latency_buckets = vec![0; davit_api::http::PROXY_LATENCY_BUCKETS.len() + 1];
        latency_buckets[2] = requests;
        BackendCounters { alloc_id: alloc_id.to_string(), requests, errors: 0, latency_buckets, active: 0 }
    }

    #[test]
    fn a_node_speaks_only_for_its_own_allocations_and_samples_go_stale() {
        let signals = Signals::default();
        let start = Instant::now();
        let report = UsageReport { allocs: vec![usage("a1", 250), usage("a2", 900), usage("gone", 1)], proxy: vec![] };
        signals.ingest("n1", report, &cluster(), |_| true, start);
        assert_eq!(signals.usage("a1", start).unwrap().0.tasks["app"].cpu_millicores, 250);
        assert!(signals.usage("a2", start).is_none(), "n1 may not report n2's allocation");
        assert!(signals.usage("gone", start).is_none());
        assert!(signals.usage("a1", start + FRESH_FOR).is_none());
    }

    #[test]
    fn request_rates_come_from_successive_readings_of_each_proxy() {
        let signals = Signals::default();
        let start = Instant::now();
        let report = |requests_a1, requests_a2| UsageReport {
            allocs: vec![],
            proxy: vec![counters("a1", requests_a1), counters("a2", requests_a2)],
        };
        signals.ingest("n1", report(100, 10), &cluster(), |_| true, start);
        assert_eq!(signals.traffic("a1", start), None, "one reading is no rate yet");
        signals.ingest("n1", report(600, 10), &cluster(), |_| true, start + Duration::from_secs(5));
        signals.ingest("n2", report(0, 0), &cluster(), |_| true, start + Duration::from_secs(5));
        signals.ingest("n2", report(250, 0), &cluster(), |_| true, start + Duration::from_secs(10));
        // a1: 500 requests in 5 s through n1's proxy, 250 in 5 s through n2's.
        let traffic = signals.traffic("a1", start + Duration::from_secs(10)).unwrap();
        assert_eq!(traffic, AllocTraffic { requests_per_second: 150.0, p99_ms: Some(2.5) });
        assert_eq!(signals.traffic("a2", start + Duration::from_secs(10)), Some(AllocTraffic { requests_per_second: 0.0, p99_ms: None }));
        // Counters for an allocation that is no service instance are not taken.
        signals.ingest("n3", report(1_000, 0), &cluster(), |alloc| alloc != "a1", start + Duration::from_secs(11));
        signals.ingest("n3", report(9_000, 0), &cluster(), |alloc| alloc != "a1", start + Duration::from_secs(12));
        assert_eq!(signals.traffic("a1", start + Duration::from_secs(12)).unwrap().requests_per_second, 150.0);
        // A proxy that started again (its counters went down) counts from 0: 50 requests in the 10 s since its
        // last reading, beside n2's 50/s.
        signals.ingest("n1", report(50, 0), &cluster(), |_| true, start + Duration::from_secs(15));
        let traffic = signals.traffic("a1", start + Duration::from_secs(15)).unwrap();
        assert_eq!(traffic.requests_per_second, 5.0 + 50.0);
    }

    #[test]
    fn the_last_request_is_the_last_report_with_new_or_open_requests() {
        let signals = Signals::default();
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let report = |requests, active| UsageReport { allocs: vec![], proxy: vec![BackendCounters { active, ..counters("a1", requests) }] };
        signals.ingest("n1", report(0, 0), &cluster(), |_| true, at(0));
        assert_eq!(signals.last_request("a1"), None);
        signals.ingest("n1", report(3, 0), &cluster(), |_| true, at(5));
        signals.ingest("n1", report(3, 0), &cluster(), |_| true, at(10));
        assert_eq!(signals.last_request("a1"), Some(at(5)), "no new request since");
        // A long request (or TCP connection) in flight keeps it awake.
        signals.ingest("n1", report(3, 1), &cluster(), |_| true, at(15));
        assert_eq!(signals.last_request("a1"), Some(at(15)));
        // Another proxy's first reading with requests counts.
        signals.ingest("n2", report(1, 0), &cluster(), |_| true, at(20));
        assert_eq!(signals.last_request("a1"), Some(at(20)));
        // A proxy that counts from 0 again (its agent restarted) and served requests since.
        signals.ingest("n1", report(2, 0), &cluster(), |_| true, at(25));
        assert_eq!(signals.last_request("a1"), Some(at(25)));
    }
}
