//! Prometheus metrics (`GET /metrics`, text format 0.0.4, written by hand).
//!
//! Counters live in [`Metrics`], a small struct of atomics shared by the workers, the applier and the
//! store wrapper ([`CountingStore`]). Gauges are computed from a view snapshot at scrape time, so they
//! never drift from the state.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use davit_api::objects::{CheckStatus, EvalStatus};
use davit_store::{BoxFuture, KeyValue, LeaseId, RangeResponse, Revision, Store, StoreError, Txn, TxnResponse, Watch};

use crate::view::Snapshot;

/// Outcomes of processed evaluations: every [`EvalStatus`] a worker can leave, plus `error` (the
/// store failed while processing).
const EVAL_OUTCOMES: [&str; 6] = ["pending", "complete", "failed", "blocked", "canceled", "error"];

/// Upper bounds (seconds) of the plan-apply histogram buckets.
const PLAN_APPLY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Counters, updated where things happen.
#[derive(Default)]
pub struct Metrics {
    evals: [AtomicU64; EVAL_OUTCOMES.len()],
    plan_apply_buckets: [AtomicU64; PLAN_APPLY_BUCKETS.len()],
    plan_apply_count: AtomicU64,
    plan_apply_micros: AtomicU64,
    placements: AtomicU64,
    store_txns: AtomicU64,
    drainer_passes: AtomicU64,
    /// Restarts of each supervised loop, in the order of [`crate::supervise::LOOPS`].
    loop_restarts: [AtomicU64; crate::supervise::LOOPS.len()],
}

impl Metrics {
    /// A worker finished an evaluation: `Ok(status)` it stored, or `Err` when processing failed.
    pub fn eval_processed(&self, outcome: Result<EvalStatus, ()>) {
        let index = match outcome {
            Ok(EvalStatus::Pending) => 0,
            Ok(EvalStatus::Complete) => 1,
            Ok(EvalStatus::Failed) => 2,
            Ok(EvalStatus::Blocked) => 3,
            Ok(EvalStatus::Canceled) => 4,
            Err(()) => 5,
        };
        self.evals[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A supervised loop panicked and is started again.
    pub fn loop_restarted(&self, name: &str) {
        if let Some(index) = crate::supervise::LOOPS.iter().position(|known| *known == name) {
            self.loop_restarts[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The node drainer is about to look at the cluster.
    pub fn drainer_pass(&self) {
        self.drainer_passes.fetch_add(1, Ordering::Relaxed);
    }

    /// The applier checked and committed a plan in `elapsed`, placing `placed` new allocations.
    pub fn plan_applied(&self, elapsed: Duration, placed: usize) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in PLAN_APPLY_BUCKETS.iter().zip(&self.plan_apply_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.plan_apply_count.fetch_add(1, Ordering::Relaxed);
        self.plan_apply_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.placements.fetch_add(placed as u64, Ordering::Relaxed);
    }

    /// Renders every metric: the counters, then gauges from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        header(&mut out, "davit_evals_total", "counter", "Evaluations processed by scheduler workers, by outcome.");
        for (status, count) in EVAL_OUTCOMES.iter().zip(&self.evals) {
            sample(&mut out, "davit_evals_total", &[("status", status)], count.load(Ordering::Relaxed) as f64);
        }
        header(&mut out, "davit_loop_restarts_total", "counter", "Restarts of a server loop after it panicked.");
        for (name, count) in crate::supervise::LOOPS.iter().zip(&self.loop_restarts) {
            sample(&mut out, "davit_loop_restarts_total", &[("loop", name)], count.load(Ordering::Relaxed) as f64);
        }

        header(&mut out, "davit_plan_apply_seconds", "histogram", "Time the plan applier took to check and commit a plan.");
        for (bound, bucket) in PLAN_APPLY_BUCKETS.iter().zip(&self.plan_apply_buckets) {
            sample(&mut out, "davit_plan_apply_seconds_bucket", &[("le", &bound.to_string())], bucket.load(Ordering::Relaxed) as f64);
        }
        let count = self.plan_apply_count.load(Ordering::Relaxed) as f64;
        sample(&mut out, "davit_plan_apply_seconds_bucket", &[("le", "+Inf")], count);
        sample(&mut out, "davit_plan_apply_seconds_sum", &[], self.plan_apply_micros.load(Ordering::Relaxed) as f64 / 1e6);
        sample(&mut out, "davit_plan_apply_seconds_count", &[], count);

        header(&mut out, "davit_placements_total", "counter", "New allocations committed by the plan applier.");
        sample(&mut out, "davit_placements_total", &[], self.placements.load(Ordering::Relaxed) as f64);

        header(&mut out, "davit_store_txn_total", "counter", "Transactions the server sent to the store.");
        sample(&mut out, "davit_store_txn_total", &[], self.store_txns.load(Ordering::Relaxed) as f64);

        header(
            &mut out,
            "davit_drainer_passes_total",
            "counter",
            "Times the node drainer looked at the cluster (on every change, at least every 500 ms).",
        );
        sample(&mut out, "davit_drainer_passes_total", &[], self.drainer_passes.load(Ordering::Relaxed) as f64);

        render_gauges(&mut out, snapshot);
        out
    }
}

fn render_gauges(out: &mut String, snapshot: &Snapshot) {
    let mut nodes = std::collections::BTreeMap::<String, u64>::new();
    for node in snapshot.cluster.nodes() {
        *nodes.entry(label(&node.status)).or_default() += 1;
    }
    header(out, "davit_nodes", "gauge", "Nodes by status.");
    for (status, count) in &nodes {
        sample(out, "davit_nodes", &[("status", status)], *count as f64);
    }

    let mut allocs = std::collections::BTreeMap::<String, u64>::new();
    for alloc in snapshot.cluster.allocs() {
        *allocs.entry(label(&alloc.client_status)).or_default() += 1;
    }
    header(out, "davit_allocations", "gauge", "Allocations by client status.");
    for (status, count) in &allocs {
        sample(out, "davit_allocations", &[("client_status", status)], *count as f64);
    }

    header(out, "davit_jobs", "gauge", "Registered jobs.");
    sample(out, "davit_jobs", &[], snapshot.cluster.jobs().count() as f64);

    header(out, "davit_blocked_evals", "gauge", "Evaluations blocked waiting for capacity.");
    sample(out, "davit_blocked_evals", &[], snapshot.evals.values().filter(|eval| eval.status == EvalStatus::Blocked).count() as f64);

    // Health of live allocations only: checks of terminal ones are stale.
    let mut live: Vec<_> = snapshot.cluster.allocs().filter(|alloc| !alloc.is_terminal()).collect();
    live.sort_by(|a, b| a.id.cmp(&b.id));
    header(out, "davit_check_status", "gauge", "Health checks of live allocations: 1 passing, 0 failing (pending checks are left out).");
    for alloc in &live {
        for (task, state) in &alloc.task_states {
            for (check, check_state) in &state.checks {
                let value = match check_state.status {
                    CheckStatus::Passing => 1.0,
                    CheckStatus::Failing => 0.0,
                    CheckStatus::Pending => continue,
                };
                let labels =
                    [("job", alloc.job_name.as_str()), ("group", &alloc.group), ("alloc", &alloc.id), ("task", task), ("check", check)];
                sample(out, "davit_check_status", &labels, value);
            }
        }
    }
    header(out, "davit_alloc_healthy", "gauge", "Live allocations whose health is known: 1 healthy, 0 unhealthy.");
    for alloc in &live {
        if let Some(healthy) = alloc.healthy {
            sample(out, "davit_alloc_healthy", &[("job", &alloc.job_name), ("alloc", &alloc.id)], if healthy { 1.0 } else { 0.0 });
        }
    }
}

/// Per-allocation, per-task CPU and memory usage from the agents' latest samples (see `usage`).
pub(crate) fn render_usage(out: &mut String, samples: &[davit_api::http::AllocUsage], cluster: &davit_scheduler::ClusterState) {
    let rows: Vec<_> = samples
        .iter()
        .filter_map(|usage| cluster.alloc(&usage.alloc_id).map(|alloc| (alloc, usage)))
        .flat_map(|(alloc, usage)| usage.tasks.iter().map(move |(task, used)| (alloc, task, used)))
        .collect();
    header(out, "davit_alloc_cpu_millicores", "gauge", "CPU an allocation's task used over the agent's last sampling window (millicores).");
    for (alloc, task, used) in &rows {
        let labels =
            [("job", alloc.job_name.as_str()), ("group", alloc.group.as_str()), ("alloc", alloc.id.as_str()), ("task", task.as_str())];
        sample(out, "davit_alloc_cpu_millicores", &labels, used.cpu_millicores as f64);
    }
    header(out, "davit_alloc_memory_bytes", "gauge", "Memory an allocation's task used at the agent's last sample (bytes).");
    for (alloc, task, used) in &rows {
        let labels =
            [("job", alloc.job_name.as_str()), ("group", alloc.group.as_str()), ("alloc", alloc.id.as_str()), ("task", task.as_str())];
        sample(out, "davit_alloc_memory_bytes", &labels, used.memory_bytes as f64);
    }
}

/// The serde name of a unit enum variant, e.g. `ready`.
fn label<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => "unknown".to_string(),
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value: backslash, double quote and line feed (text format 0.0.4).
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The server's store, counting transactions.
pub struct CountingStore {
    pub inner: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

impl Store for CountingStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        self.inner.get(key)
    }
    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        self.inner.range(prefix)
    }
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        self.metrics.store_txns.fetch_add(1, Ordering::Relaxed);
        self.inner.txn(txn)
    }
    fn watch(&self, prefix: &str, from_revision: Revision) -> BoxFuture<'_, Result<Watch, StoreError>> {
        self.inner.watch(prefix, from_revision)
    }
    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.inner.current_revision()
    }
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        self.inner.grant_lease(ttl)
    }
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.keep_alive(lease)
    }
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.revoke_lease(lease)
    }
    fn max_txn_size(&self) -> Option<davit_store::TxnLimits> {
        self.inner.max_txn_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        sample(&mut out, "m", &[("k", "x\"y")], 1.5);
        assert_eq!(out, "m{k=\"x\\\"y\"} 1.5\n");
    }
}
