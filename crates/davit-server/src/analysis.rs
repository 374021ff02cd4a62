//! Canary analysis (`update.analysis`, see ARCHITECTURE.md, "Deployments"): while a running deployment's
//! canaries wait for promotion, every `interval` this loop reads the requests every proxy sent to the group's
//! instances (their counters, through the agents), takes what happened since the previous interval, and
//! [`judge`]s the canaries against the stable instances: error rate, its increase over the stable instances',
//! and p99 latency against theirs. Each interval's verdict is counted in the deployment's group
//! (`DeploymentGroup::analysis`); the deployment watcher fails the deployment after `samples` failing intervals
//! and lets the canaries be promoted after `samples` passing ones.
//!
//! Counters are compared per proxy (a proxy that misses a reading does not count until it answers twice in a
//! row) and kept in memory: after a server restart the next interval only sets the baseline. An interval with
//! fewer than `min_requests` canary requests is not judged: it goes on (from the same baseline) until there are
//! enough.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use davit_api::deployment::{AnalysisSample, CanaryAnalysis, Deployment, Shadow};
use davit_api::http::PROXY_LATENCY_BUCKETS;
use davit_api::namespace::namespace_of;
use davit_api::objects::DesiredStatus;
use davit_api::spec::AnalysisSpec;
use davit_store::{Compare, Txn};

use crate::acl::Caller;
use crate::api::services::{BackendSums, NodeCounters, proxy_counters_by_node};
use crate::{Shared, keys, now_millis};

/// How often the loop looks for analyses that are due.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Requests, errors and latency buckets of a set of instances over one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic {
    pub requests: u64,
    pub errors: u64,
    pub latency_buckets: Vec<u64>,
}

impl Traffic {
    pub(crate) fn add(&mut self, sums: &BackendSums, before: Option<&BackendSums>) {
        // Fewer requests than before: a proxy started again from 0 (the agent restarted), so all of it is new.
        let before = before.filter(|before| sums.requests >= before.requests);
        let since = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0));
        self.requests += since(sums.requests, before.map(|b| b.requests));
        self.errors += since(sums.errors, before.map(|b| b.errors));
        if self.latency_buckets.len() < sums.latency_buckets.len() {
            self.latency_buckets.resize(sums.latency_buckets.len(), 0);
        }
        for (index, count) in sums.latency_buckets.iter().enumerate() {
            self.latency_buckets[index] += since(*count, before.and_then(|b| b.latency_buckets.get(index).copied()));
        }
    }

    /// Adds another set of instances' traffic over the same interval.
    pub(crate) fn add_all(&mut self, other: &Traffic) {
        self.requests += other.requests;
        self.errors += other.errors;
        davit_api::http::add_latency_buckets(&mut self.latency_buckets, &other.latency_buckets);
    }

    fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }

    /// The upper bound (ms) of the latency bucket holding the 99th percentile; 0 without requests.
    pub(crate) fn p99_ms(&self) -> f64 {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (total * 99).div_ceil(100);
        let mut seen = 0;
        for (index, count) in self.latency_buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return PROXY_LATENCY_BUCKETS.get(index).map_or(PROXY_LATENCY_BUCKETS[PROXY_LATENCY_BUCKETS.len() - 1] * 2e3, |s| s * 1e3);
            }
        }
        0.0
    }
}

/// One interval's verdict: `Some(true)` pass, `Some(false)` fail, `None` too few canary requests to say.
pub fn judge(spec: &AnalysisSpec, canary: &Traffic, stable: &Traffic, now: u64) -> (AnalysisSample, Option<bool>) {
    let mut sample = AnalysisSample {
        time: now,
        canary_requests: canary.requests,
        canary_error_rate: canary.error_rate(),
        stable_requests: stable.requests,
        stable_error_rate: stable.error_rate(),
        canary_p99_ms: canary.p99_ms(),
        stable_p99_ms: stable.p99_ms(),
        verdict: String::new(),
    };
    if canary.requests < spec.min_requests {
        sample.verdict = format!("too few requests ({} < min_requests {})", canary.requests, spec.min_requests);
        return (sample, None);
    }
    let percent = |rate: f64| format!("{:.2}%", rate * 100.0);
    let mut failures = Vec::new();
    if let Some(max) = spec.max_error_rate
        && sample.canary_error_rate > max.fraction()
    {
        failures.push(format!("error rate {} > max_error_rate {max}", percent(sample.canary_error_rate)));
    }
    if let Some(max) = spec.max_error_rate_increase
        && stable.requests > 0
        && sample.canary_error_rate - sample.stable_error_rate > max.fraction()
    {
        failures.push(format!(
            "error rate {} is {} above the stable instances' {} (max_error_rate_increase {max})",
            percent(sample.canary_error_rate),
            percent(sample.canary_error_rate - sample.stable_error_rate),
            percent(sample.stable_error_rate)
        ));
    }
    if let Some(ratio) = spec.max_latency_p99_ratio
        && sample.stable_p99_ms > 0.0
        && sample.canary_p99_ms > ratio * sample.stable_p99_ms
    {
        failures.push(format!("p99 latency {} ms > {ratio} × the stable instances' {} ms", sample.canary_p99_ms, sample.stable_p99_ms));
    }
    if failures.is_empty() {
        sample.verdict = "pass".to_string();
        (sample, Some(true))
    } else {
        sample.verdict = format!("fail: {}", failures.join("; "));
        (sample, Some(false))
    }
}

/// Counters at the start of the current interval, per deployment and group.
struct Baseline {
    at: Instant,
    readings: NodeCounters,
}

pub async fn run(shared: Arc<Shared>) {
    let mut baselines: HashMap<(String, String), Baseline> = HashMap::new();
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let snapshot = shared.view.snapshot();
        let mut due = Vec::new();
        for deployment in snapshot.cluster.deployments().filter(|d| d.status == davit_api::deployment::DeploymentStatus::Running) {
            let Some(version) = snapshot.cluster.job_version(&deployment.job_name, deployment.job_version) else { continue };
            for (group, progress) in deployment.groups.iter().filter(|(_, g)| g.awaits_promotion() && g.canaries > 0) {
                let Some(spec) = version.spec.update_strategy(group).and_then(|strategy| strategy.analysis) else { continue };
                let key = (deployment.id.clone(), group.clone());
                if baselines.get(&key).is_none_or(|baseline| baseline.at.elapsed() >= spec.interval.as_std())
                    && progress.analysis.as_ref().is_none_or(|a| a.failed < spec.samples && a.passed < spec.samples)
                {
                    due.push((Arc::clone(deployment), group.clone(), spec));
                }
            }
        }
        baselines.retain(|(id, _), _| snapshot.cluster.deployment(id).is_some_and(|d| d.is_active()));
        if due.is_empty() {
            continue;
        }
        let catalog = shared.catalog.get(&snapshot).1;
        for (deployment, group, spec) in due {
            let Some(service) = catalog.services.iter().find(|s| s.job_name == deployment.job_name && s.group == group) else { continue };
            let caller = Caller::internal(&shared, namespace_of(&deployment.job_name));
            let readings = proxy_counters_by_node(&shared, &caller, &snapshot, service).await;
            if !readings.errors.is_empty() {
                let errors = &readings.errors;
                tracing::warn!(deployment = %deployment.id, ?errors, "canary analysis: some proxies did not answer; their traffic counts once they do");
            }
            let key = (deployment.id.clone(), group.clone());
            let Some(previous) = baselines.remove(&key) else {
                baselines.insert(key, Baseline { at: Instant::now(), readings });
                continue;
            };
            let (canary, stable) = traffic_since(&snapshot.cluster, &deployment, &group, &previous.readings, &readings);
            let (sample, verdict) = judge(&spec, &canary, &stable, now_millis());
            tracing::info!(deployment = %deployment.id, %group, verdict = %sample.verdict, canary_requests = canary.requests, "canary analysis interval");
            // The verdict is counted (with too few requests, only the numbers are shown). The next interval
            // starts here once a verdict is counted; otherwise it goes on from the same baseline.
            let decided = verdict.is_some();
            let counted = match record(&shared, &deployment.id, &group, sample, verdict).await {
                Ok(recorded) => recorded && decided,
                Err(error) => {
                    tracing::warn!(deployment = %deployment.id, %error, "recording a canary analysis interval failed");
                    false
                }
            };
            let baseline = if counted { Baseline { at: Instant::now(), readings } } else { Baseline { at: Instant::now(), ..previous } };
            baselines.insert(key, baseline);
        }
    }
}

/// The canaries' and the stable instances' traffic between two readings, per proxy: a proxy missing from either
/// reading does not count (its traffic counts once it answers twice in a row); a backend new at a proxy that
/// answered both times counts from 0.
fn traffic_since(
    cluster: &davit_scheduler::ClusterState,
    deployment: &Deployment,
    group: &str,
    before: &NodeCounters,
    now: &NodeCounters,
) -> (Traffic, Traffic) {
    let (mut canary, mut stable) = (Traffic::default(), Traffic::default());
    let live: HashMap<&str, bool> = cluster
        .allocs_for_job(&deployment.job_name)
        .filter(|alloc| alloc.group == group && alloc.desired_status == DesiredStatus::Run && !alloc.client_status.is_terminal())
        .map(|alloc| (alloc.id.as_str(), is_canary_of(alloc, deployment)))
        .collect();
    for ((node, alloc_id), sums) in &now.counters {
        let Some(&is_canary) = live.get(alloc_id.as_str()) else { continue };
        if !before.answered.contains(node) {
            continue;
        }
        let side = if is_canary { &mut canary } else { &mut stable };
        side.add(sums, before.counters.get(&(node.clone(), alloc_id.clone())));
    }
    (canary, stable)
}

fn is_canary_of(alloc: &davit_api::objects::Allocation, deployment: &Deployment) -> bool {
    alloc.shadow == Some(Shadow::Canary) && alloc.deployment_id.as_deref() == Some(deployment.id.as_str())
}

/// Counts one interval's verdict in the deployment's group, on the deployment as it is now (a few tries when it
/// changes meanwhile, e.g. another group's interval); whether it was counted.
async fn record(shared: &Shared, id: &str, group: &str, sample: AnalysisSample, verdict: Option<bool>) -> Result<bool, String> {
    for _ in 0..3 {
        let Some(seen) = shared.view.snapshot().cluster.deployment(id).cloned() else { return Ok(false) };
        if !seen.is_active() {
            return Ok(false);
        }
        let mut deployment = (*seen).clone();
        let Some(progress) = deployment.groups.get_mut(group) else { return Ok(false) };
        let analysis = progress.analysis.get_or_insert_with(CanaryAnalysis::default);
        match verdict {
            Some(true) => analysis.passed += 1,
            Some(false) => analysis.failed += 1,
            None => {}
        }
        analysis.last = Some(sample.clone());
        deployment.modify_time = now_millis();
        let mut txn = Txn::default();
        txn.compares.push(Compare::ModRevision(keys::deployment(id), seen.modify_index));
        txn.success.push(keys::put(keys::deployment(id), &deployment));
        let response = shared.store.txn(txn).await.map_err(|error| error.to_string())?;
        shared.view.wait_for(response.revision).await;
        if response.succeeded {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use davit_api::spec::Percent;

    use super::*;

    fn traffic(requests: u64, errors: u64, fast: u64, slow: u64) -> Traffic {
        // `fast` requests in the 2.5 ms bucket, `slow` ones in the 100 ms one.
        let mut latency_buckets = vec![0; PROXY_LATENCY_BUCKETS.len() + 1];
        latency_buckets[2] = fast;
        latency_buckets[7] = slow;
        Traffic { requests, errors, latency_buckets }
    }

    fn spec() -> AnalysisSpec {
        AnalysisSpec {
            interval: davit_api::Duration::from_secs(10),
            samples: 3,
            max_error_rate: Some(Percent(1.0)),
            max_error_rate_increase: Some(Percent(0.5)),
            max_latency_p99_ratio: Some(1.5),
            min_requests: 50,
        }
    }

    #[test]
    fn a_canary_is_judged_by_its_error_rate_and_p99_against_the_stable_instances() {
        let stable = traffic(1_000, 2, 1_000, 0);
        let (sample, verdict) = judge(&spec(), &traffic(100, 0, 100, 0), &stable, 5);
        assert_eq!((verdict, sample.verdict.as_str(), sample.canary_p99_ms), (Some(true), "pass", 2.5));
        // 20 % errors: both error limits.
        let (sample, verdict) = judge(&spec(), &traffic(100, 20, 100, 0), &stable, 5);
        assert_eq!(verdict, Some(false));
        assert!(sample.verdict.contains("error rate 20.00% > max_error_rate 1%"), "{}", sample.verdict);
        assert!(sample.verdict.contains("19.80% above the stable instances' 0.20%"), "{}", sample.verdict);
        // Slow: p99 in the 100 ms bucket against 2.5 ms.
        let (sample, verdict) = judge(&spec(), &traffic(100, 0, 90, 10), &stable, 5);
        assert_eq!((verdict, sample.canary_p99_ms), (Some(false), 100.0));
        // Too few requests to say.
        let (sample, verdict) = judge(&spec(), &traffic(10, 10, 10, 0), &stable, 5);
        assert_eq!((verdict, sample.verdict.as_str()), (None, "too few requests (10 < min_requests 50)"));
    }

    #[test]
    fn traffic_counts_what_happened_since_the_previous_interval() {
        let sums = |requests, errors| BackendSums { requests, errors, latency_buckets: vec![requests], ..Default::default() };
        let mut traffic = Traffic::default();
        traffic.add(&sums(150, 5), Some(&sums(100, 1)));
        // A proxy that restarted (its counters went down) counts from 0.
        traffic.add(&sums(7, 1), Some(&sums(100, 1)));
        assert_eq!(traffic, Traffic { requests: 57, errors: 5, latency_buckets: vec![57] });
    }
}
