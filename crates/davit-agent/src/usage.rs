//! Usage reports (see ARCHITECTURE.md, "Autoscaler"): every interval, each allocation's tasks' CPU and memory
//! from their cgroups (the drivers' `stats`; a VM's is its QEMU's cgroup), its readiness and when that last
//! changed, and the proxy's cumulative counters per backend, sent to the servers in batches of at most
//! [`MAX_USAGE_ENTRIES`]. A report that fails is dropped: the next one carries fresh numbers.
//!
//! CPU is the difference of the cgroup's cumulative CPU time between two samples over the wall time between
//! them; the first sample of a task (and one after its counter went back, a restarted task) only sets the
//! baseline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use davit_api::http::{AllocUsage, BackendCounters, MAX_USAGE_ENTRIES, TaskUsage, UsageReport};
use davit_api::objects::{TaskStatus, UnixMillis};
use tokio::sync::watch;

use crate::AgentContext;

/// Each task's last cumulative CPU time, and when it was read.
type CpuBaselines = HashMap<(String, String), (u64, Instant)>;

pub(crate) async fn run(context: Arc<AgentContext>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut baselines: CpuBaselines = HashMap::new();
    let mut readiness: HashMap<String, (bool, Option<UnixMillis>)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let allocs = sample(&context, &mut baselines, &mut readiness, interval).await;
        let proxy = proxy_counters(&context);
        if allocs.is_empty() && proxy.is_empty() {
            continue;
        }
        let batches = allocs.len().div_ceil(MAX_USAGE_ENTRIES).max(proxy.len().div_ceil(MAX_USAGE_ENTRIES));
        let mut allocs = allocs.into_iter();
        let mut proxy = proxy.into_iter();
        for _ in 0..batches {
            let report = UsageReport {
                allocs: allocs.by_ref().take(MAX_USAGE_ENTRIES).collect(),
                proxy: proxy.by_ref().take(MAX_USAGE_ENTRIES).collect(),
            };
            let node_id = context.node.id.clone();
            let sent = context.servers.call(|client| {
                let (node_id, report) = (node_id.clone(), report.clone());
                async move { client.report_usage(&node_id, &report).await }
            });
            if let Err(error) = sent.await {
                tracing::debug!(%error, "sending a usage report failed; the next one carries fresh numbers");
                break;
            }
        }
    }
}

/// One sample of every allocation that runs.
async fn sample(
    context: &AgentContext,
    baselines: &mut CpuBaselines,
    readiness: &mut HashMap<String, (bool, Option<UnixMillis>)>,
    interval: Duration,
) -> Vec<AllocUsage> {
    let runners: Vec<_> = context.runners.lock().expect("runners lock").values().cloned().collect();
    let mut samples = Vec::with_capacity(runners.len());
    let mut seen = HashSet::with_capacity(runners.len());
    for runner in runners {
        let alloc_id = runner.id();
        let status = runner.status_update();
        if status.client_status.is_terminal() {
            continue;
        }
        let started_at =
            status.task_states.values().filter(|task| task.state == TaskStatus::Running).filter_map(|task| task.started_at).min();
        let ready = status.healthy == Some(true);
        let now_ms = crate::now_ms();
        // When readiness last changed: seen by this loop, or (first sight of a ready allocation) its start.
        let changed = match readiness.get(&alloc_id) {
            Some((was, at)) if *was == ready => *at,
            Some(_) => Some(now_ms),
            None if ready => started_at,
            None => None,
        };
        readiness.insert(alloc_id.clone(), (ready, changed));
        let mut tasks = BTreeMap::new();
        // A sample covers every task that runs (a usage of some tasks against the request of all would be too
        // low): an allocation with a task not measured this time sends none.
        let (mut measured, mut complete, mut window) = (0, true, Duration::ZERO);
        for task in runner.task_names() {
            let running = status.task_states.get(&task).is_some_and(|state| state.state == TaskStatus::Running);
            let Some(handle) = runner.task_handle(&task).filter(|_| running) else { continue };
            measured += 1;
            let stats = match context.drivers.get(&handle.driver) {
                Some(driver) => driver.stats(&handle).await.ok(),
                None => None,
            };
            let Some(stats) = stats else {
                complete = false;
                continue;
            };
            let now = Instant::now();
            let key = (alloc_id.clone(), task.clone());
            match baselines.insert(key, (stats.cpu_usage_ns, now)) {
                Some((before, at)) if stats.cpu_usage_ns >= before && now > at => {
                    let elapsed = now.duration_since(at);
                    window = window.max(elapsed);
                    let cpu_millicores = ((stats.cpu_usage_ns - before) as f64 / elapsed.as_nanos().max(1) as f64 * 1000.0).round() as u64;
                    tasks.insert(task, TaskUsage { cpu_millicores, memory_bytes: stats.memory_bytes });
                }
                // The first reading of a task (or one after its counter went back: it restarted) is a baseline.
                _ => complete = false,
            }
        }
        seen.insert(alloc_id.clone());
        if tasks.is_empty() || !complete || tasks.len() != measured {
            continue;
        }
        samples.push(AllocUsage {
            alloc_id,
            tasks,
            ready,
            ready_changed_at: changed,
            started_at,
            time: now_ms,
            // The span the CPU figures cover (the interval, or longer after a slow round).
            window_ms: u64::try_from(window.max(interval).as_millis()).unwrap_or(u64::MAX),
        });
    }
    baselines.retain(|(alloc_id, _), _| seen.contains(alloc_id));
    readiness.retain(|alloc_id, _| seen.contains(alloc_id));
    samples
}

/// The proxy's counters per backend, summed over its listeners.
fn proxy_counters(context: &AgentContext) -> Vec<BackendCounters> {
    let Some(service_proxy) = &context.service_proxy else { return Vec::new() };
    let mut by_backend: BTreeMap<String, BackendCounters> = BTreeMap::new();
    for backend in service_proxy.stats().iter().flat_map(|listener| &listener.backends) {
        let entry = by_backend
            .entry(backend.id.clone())
            .or_insert_with(|| BackendCounters { alloc_id: backend.id.clone(), ..BackendCounters::default() });
        entry.requests += backend.requests;
        entry.errors += backend.errors;
        entry.active += backend.active;
        davit_api::http::add_latency_buckets(&mut entry.latency_buckets, &backend.latency_buckets);
    }
    by_backend.into_values().collect()
}
