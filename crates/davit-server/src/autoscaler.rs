//! The autoscaler (see ARCHITECTURE.md, "Autoscaler"): every sync interval, for each group of a running
//! service job whose `scaling:` names metrics, it builds the group's instances from the view and the usage
//! signals, asks `davit-scaling` for each metric's proposal and the normalised decision, and registers a new job
//! version with the decided count (a [`ScalingEvent`] on it says why) when it differs from the current one.
//!
//! It leaves a group alone while the job's deployment runs (a scale-up that places new instances with an
//! update strategy starts one, so the next decision waits for them). The recommendation log and scale events
//! that stabilisation and rate limits look at are kept in memory, as Kubernetes' controller keeps them: after a
//! server restart the log starts again from the current count. A scale is a compare-and-set on the job: a job
//! changed meanwhile (a new version, an operator's `job scale`) is simply evaluated again at the next sync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use davit_api::http::{ActivateResponse, AllocUsage, GroupScaling, MetricScaling};
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, EvalTrigger, Job, ScalingEvent};
use davit_api::spec::{GroupSpec, JobType, MetricSpec, MetricType, PredictiveMode, ScalingSpec};
use davit_scaling::calculator::{self, Instance, Kind, Phase, Timing, Tolerances};
use davit_scaling::history::SeasonalHistory;
use davit_scaling::normalize::{self, Behavior, History, Recommendation, ScaleEvent};

use crate::api::Failure;
use crate::api::jobs::{Registration, register_spec};
use crate::prometheus::PrometheusAccess;
use crate::usage::Signals;
use crate::{Shared, now_millis};

/// How often groups are evaluated (Kubernetes' `--horizontal-pod-autoscaler-sync-period`), and which Prometheus
/// servers `prometheus` metrics may query.
#[derive(Clone, Debug)]
pub struct AutoscalerConfig {
    pub interval: Duration,
    pub prometheus: PrometheusAccess,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig { interval: Duration::from_secs(15), prometheus: PrometheusAccess::default() }
    }
}

/// The autoscaler's memory per group: the history normalisation needs, and the last evaluation (for
/// `GET /v1/job/{name}/scaling`).
#[derive(Default)]
pub(crate) struct Autoscaler {
    groups: Mutex<HashMap<(String, String), GroupState>>,
}

#[derive(Default)]
struct GroupState {
    recommendations: Vec<(u32, Instant)>,
    scale_up: Vec<(u32, Instant)>,
    scale_down: Vec<(u32, Instant)>,
    last: Option<GroupScaling>,
    /// With `predictive`: each metric's demand over the last seasons (by metric, for the season it was made for).
    histories: HashMap<(usize, MetricType), (Duration, SeasonalHistory)>,
    /// With `scale_to_zero_after`: the last request a proxy reported, or the group's activation (or when the
    /// autoscaler first saw it), whichever came last.
    last_active: Option<Instant>,
}

impl GroupState {
    fn history(&self, now: Instant) -> History {
        let ago = |at: &Instant| now.duration_since(*at).as_secs_f64();
        History {
            recommendations: self
                .recommendations
                .iter()
                .map(|(replicas, at)| Recommendation { replicas: *replicas, seconds_ago: ago(at) })
                .collect(),
            scale_up_events: self.scale_up.iter().map(|(change, at)| ScaleEvent { change: *change, seconds_ago: ago(at) }).collect(),
            scale_down_events: self.scale_down.iter().map(|(change, at)| ScaleEvent { change: *change, seconds_ago: ago(at) }).collect(),
        }
    }

    /// Forgets what no window or period can look at any more.
    fn prune(&mut self, now: Instant, memory: Duration) {
        let keep = |at: &Instant| now.duration_since(*at) <= memory;
        self.recommendations.retain(|(_, at)| keep(at));
        self.scale_up.retain(|(_, at)| keep(at));
        self.scale_down.retain(|(_, at)| keep(at));
    }
}

impl Autoscaler {
    /// The last evaluation of each group of `job` with `scaling:` (a group not evaluated yet shows its bounds).
    pub fn status(&self, job: &Job) -> Vec<GroupScaling> {
        let groups = self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        job.spec
            .groups
            .iter()
            .filter_map(|group| {
                let scaling = group.scaling.as_ref()?;
                let key = (job.spec.id(), group.name.clone());
                let mut status = groups.get(&key).and_then(|state| state.last.clone()).unwrap_or_default();
                status.group = group.name.clone();
                status.autoscaled = scaling.autoscaled() && job.spec.job_type == JobType::Service;
                status.count = group.count;
                status.min = scaling.min_count(group.count);
                status.max = scaling.max;
                if status.metrics.is_empty() {
                    status.metrics = unevaluated(scaling);
                }
                Some(status)
            })
            .collect()
    }
}

/// The group's metrics with their targets, before (or without) an evaluation.
fn unevaluated(scaling: &ScalingSpec) -> Vec<MetricScaling> {
    scaling.metrics.iter().map(|metric| MetricScaling { metric: metric.describe_target(), ..MetricScaling::default() }).collect()
}

pub(crate) async fn run(shared: Arc<Shared>, config: AutoscalerConfig) {
    loop {
        tokio::time::sleep(config.interval).await;
        evaluate_all(&shared, &config).await;
    }
}

/// One sync: every autoscaled group of every running service job.
async fn evaluate_all(shared: &Shared, config: &AutoscalerConfig) {
    let snapshot = shared.view.snapshot();
    let mut live = std::collections::HashSet::new();
    for job in snapshot.cluster.jobs().filter(|job| !job.stopped && job.spec.job_type == JobType::Service) {
        for group in &job.spec.groups {
            let Some(scaling) = group.scaling.as_ref().filter(|scaling| scaling.autoscaled()) else { continue };
            live.insert((job.spec.id(), group.name.clone()));
            // Prometheus metrics are queried first, together (the rest of the evaluation holds the autoscaler's
            // lock); the group's clock starts after them.
            let queries =
                scaling.metrics.iter().enumerate().filter(|(_, metric)| metric.kind == MetricType::Prometheus).map(|(index, metric)| {
                    let (address, query) = (metric.address.as_deref().unwrap_or_default(), metric.query.as_deref().unwrap_or_default());
                    async move { (index, crate::prometheus::query(&shared.http, &config.prometheus, address, query).await) }
                });
            let external: HashMap<usize, Result<f64, String>> = futures_util::future::join_all(queries).await.into_iter().collect();
            let now = Instant::now();
            let decision = evaluate(shared, &snapshot.cluster, job, group, &external, now, config.interval);
            if let Some((to, reason)) = decision {
                scale(shared, job, group, to, reason, now).await;
            }
        }
    }
    shared.autoscaler.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|key, _| live.contains(key));
}

/// Evaluates one group and records the result; the count to set and why, when it changes.
fn evaluate(
    shared: &Shared,
    cluster: &davit_scheduler::ClusterState,
    job: &Job,
    group: &GroupSpec,
    external: &HashMap<usize, Result<f64, String>>,
    now: Instant,
    interval: Duration,
) -> Option<(u32, String)> {
    let scaling = group.scaling.as_ref()?;
    let job_id = job.spec.id();
    let current = group.count;
    let min = scaling.min_count(current);
    let behavior = scaling.behavior.as_ref().map(Behavior::resolve);
    let mut groups = shared.autoscaler.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let state = groups.entry((job_id.clone(), group.name.clone())).or_insert_with(|| GroupState {
        // Kubernetes' `recordInitialRecommendation`: the count found counts as the first recommendation.
        recommendations: vec![(current, now)],
        ..GroupState::default()
    });
    let memory = Duration::from_secs_f64(
        behavior.as_ref().map_or(normalize::DEFAULT_DOWNSCALE_WINDOW, Behavior::memory).max(normalize::DEFAULT_DOWNSCALE_WINDOW),
    );
    state.prune(now, memory + interval);
    let mut status = GroupScaling { evaluated_at: Some(now_millis()), ..GroupScaling::default() };

    let allocs: Vec<&Arc<Allocation>> = cluster
        .allocs_for_job(&job_id)
        .filter(|alloc| alloc.group == group.name && !(alloc.desired_status != DesiredStatus::Run && alloc.client_status.is_terminal()))
        .collect();
    // Each allocation's latest sample, read once for the idle window and every metric.
    let samples: Vec<Option<AllocUsage>> =
        allocs.iter().map(|alloc| shared.signals.usage(&alloc.id, now).map(|(usage, _)| usage)).collect();
    // The span the agents' samples cover (their `--usage-interval`).
    let sample_window = samples.iter().flatten().map(|usage| Duration::from_millis(usage.window_ms)).max();
    let deployment = cluster.job_deployments(&job_id).rev().find(|deployment| deployment.is_active());
    // Scale to zero: a group at zero waits for a request; one idle for long enough goes to zero.
    let mut min = min;
    if let Some(after) = scaling.scales_to_zero() {
        min = min.max(1);
        if current == 0 {
            // The idle clock starts again when the group has instances (woken, or scaled by an operator).
            state.last_active = None;
            status.scale_to_zero = "at zero: the next request through a davit proxy starts an instance".to_string();
            status.metrics = unevaluated(scaling);
            state.last = Some(status);
            return None;
        }
        let last_request = allocs.iter().filter_map(|alloc| shared.signals.last_request(&alloc.id)).max();
        let last_active = state.last_active.max(last_request).unwrap_or(now);
        state.last_active = Some(last_active);
        let idle = now.saturating_duration_since(last_active);
        // Activity is seen once per usage report: never less than three reports' time.
        let after = after.max(sample_window.unwrap_or(Duration::from_secs(5)) * 3);
        if idle >= after && deployment.is_none() {
            status.scale_to_zero = format!("idle for {}s: scaling to zero", idle.as_secs());
            status.metrics = unevaluated(scaling);
            state.last = Some(status);
            let after = davit_api::Duration(after);
            return Some((0, format!("no request through davit's proxies for {after} (scale_to_zero_after)")));
        }
        status.scale_to_zero = format!("idle for {}s of {}", idle.as_secs(), davit_api::Duration(after));
    }

    if let Some(deployment) = deployment {
        status.waiting = format!("deployment {} of version {} runs", crate::deployments::short(&deployment.id), deployment.job_version);
        status.metrics = unevaluated(scaling);
        state.last = Some(status);
        return None;
    }
    if scaling.metrics.is_empty() {
        state.last = Some(status);
        return None;
    }
    let timing = Timing {
        cpu_initialization_period: scaling.cpu_initialization_period.map_or(300.0, |d| d.as_std().as_secs_f64()),
        initial_readiness_delay: scaling.initial_readiness_delay.map_or(30.0, |d| d.as_std().as_secs_f64()),
        metric_window: sample_window.map_or(5.0, |window| window.as_secs_f64()),
    };
    let tolerances = scaling.tolerance.map(Tolerances::from).unwrap_or_default();
    let mut proposals = Vec::new();
    let mut best: Option<(u32, String)> = None;
    let predictive = scaling.predictive.as_ref();
    status.predictive =
        predictive.map(|p| if p.mode == PredictiveMode::Scale { "scale" } else { "forecast_only" }.to_string()).unwrap_or_default();
    if predictive.is_none() {
        state.histories.clear();
    }
    let at = now_millis() as f64 / 1000.0;
    for (index, metric) in scaling.metrics.iter().enumerate() {
        let target = metric.target_milli().unwrap_or(1).max(1);
        let mut entry = MetricScaling { metric: metric.describe_target(), ..MetricScaling::default() };
        // The group's demand in the metric's units, and what one instance serves at the target.
        let mut demand = None;
        let proposal = match external.get(&index) {
            Some(Ok(total)) => {
                let total = (total * 1000.0).round() as i64;
                demand = Some((total as f64, target as f64));
                // Kubernetes divides by the instances that exist (`status.replicas`), not the count asked for.
                let existing =
                    allocs.iter().filter(|alloc| alloc.desired_status == DesiredStatus::Run && !alloc.client_status.is_terminal()).count();
                Ok(calculator::external_per_instance(u32::try_from(existing).unwrap_or(u32::MAX), target, total, tolerances))
            }
            Some(Err(error)) => Err(error.clone()),
            None => {
                let instances = instances(&shared.signals, &allocs, &samples, metric, now);
                demand = group_demand(metric, target, &instances);
                calculator::replicas(current, Kind::of(metric.kind), target, tolerances, timing, &instances)
                    .map_err(|error| error.to_string())
            }
        };
        // Predictive: the demand forecast `lead_time` ahead, in instances.
        let mut forecast = None;
        if let (Some(predictive), Some((total, per_instance))) = (predictive, demand) {
            let season = predictive.season.as_std();
            let key = (index, metric.kind);
            if state.histories.get(&key).is_none_or(|(made_for, _)| *made_for != season) {
                state.histories.insert(key, (season, SeasonalHistory::new(season.as_secs_f64(), interval.as_secs_f64())));
            }
            let history = &mut state.histories.get_mut(&key).expect("made above").1;
            history.push(at, total);
            let lead = predictive.lead_time.as_std().as_secs_f64();
            match history.forecast(at, lead) {
                Some(expected) => {
                    // Within the tolerance of what the current count serves, the forecast asks for no change.
                    let ratio = expected / (per_instance.max(1e-9) * f64::from(current));
                    let replicas = if current > 0 && tolerances.within(ratio) {
                        current
                    } else {
                        (expected.max(0.0) / per_instance.max(1e-9)).ceil().min(f64::from(u32::MAX)) as u32
                    };
                    entry.forecast = format!("{} in {} → {replicas}", describe_total(metric.kind, expected), predictive.lead_time);
                    if predictive.mode == PredictiveMode::Scale {
                        forecast = Some((replicas, expected));
                    }
                }
                None => entry.forecast = format!("learning: {:.1} of 2 seasons of history", history.seasons()),
            }
        }
        match proposal {
            Ok(proposal) => {
                entry.current = describe_value(metric.kind, proposal.usage);
                entry.steps = proposal.steps;
                let (replicas, reason) = match forecast {
                    Some((ahead, expected)) if ahead > proposal.replicas => (
                        ahead,
                        format!(
                            "forecast: {} {} in {} ({} per instance)",
                            metric.kind.as_str(),
                            describe_total(metric.kind, expected),
                            predictive.map(|p| p.lead_time.to_string()).unwrap_or_default(),
                            describe_target(metric)
                        ),
                    ),
                    _ => (proposal.replicas, format!("{} {} of {}", metric.kind.as_str(), entry.current, describe_target(metric))),
                };
                entry.proposal = Some(replicas);
                if best.as_ref().is_none_or(|(most, _)| replicas > *most) {
                    best = Some((replicas, reason));
                }
                proposals.push(Some(replicas));
            }
            Err(error) => {
                entry.error = error;
                proposals.push(None);
            }
        }
        status.metrics.push(entry);
    }
    let proposal = normalize::combine(current, &proposals);
    let decision = normalize::decide(current, min, scaling.max, proposal, behavior.as_ref(), &state.history(now));
    if let Some(record) = decision.record {
        state.recommendations.push((record, now));
    }
    status.proposal = proposal;
    status.desired = Some(decision.desired);
    status.limited_by = serde_json::to_value(&decision.limited_by).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    status.message = decision.limited_by.message().to_string();
    status.stabilization = decision.stabilization.clone();
    let ago = |at: &Instant| now.duration_since(*at).as_secs();
    status.recent_changes = state
        .scale_up
        .iter()
        .map(|(change, at)| format!("+{change} {}s ago", ago(at)))
        .chain(state.scale_down.iter().map(|(change, at)| format!("-{change} {}s ago", ago(at))))
        .collect();
    state.last = Some(status);
    if decision.desired == current {
        return None;
    }
    let reason = match decision.limited_by {
        normalize::Limit::AboveMax => format!("the count is above max {}", scaling.max),
        normalize::Limit::BelowMin => format!("the count is below min {min}"),
        _ if decision.desired > current => best.map(|(_, reason)| reason).unwrap_or_default(),
        _ => "all metrics below target".to_string(),
    };
    Some((decision.desired, reason))
}

/// The group's instances as the calculator sees them for `metric`; `samples[i]` is `allocs[i]`'s latest sample.
fn instances(
    signals: &Signals,
    allocs: &[&Arc<Allocation>],
    samples: &[Option<AllocUsage>],
    metric: &MetricSpec,
    now: Instant,
) -> Vec<Instance> {
    let now_ms = now_millis();
    let ago = |time: u64| now_ms.saturating_sub(time) as f64 / 1000.0;
    allocs
        .iter()
        .zip(samples)
        .map(|(alloc, sample)| {
            let (usage, request) = match metric.kind {
                MetricType::Cpu => (
                    sample.as_ref().map(|usage| usage.tasks.values().map(|task| task.cpu_millicores as i64).sum::<i64>()),
                    alloc.resources.cpu as i64,
                ),
                MetricType::Memory => (
                    sample.as_ref().map(|usage| usage.tasks.values().map(|task| task.memory_bytes as i64).sum::<i64>()),
                    alloc.resources.memory as i64 * 1_048_576,
                ),
                MetricType::RequestsPerSecond => {
                    (signals.traffic(&alloc.id, now).map(|traffic| (traffic.requests_per_second * 1000.0).round() as i64), 0)
                }
                MetricType::LatencyP99 => {
                    (signals.traffic(&alloc.id, now).and_then(|traffic| traffic.p99_ms).map(|ms| (ms * 1000.0).round() as i64), 0)
                }
                MetricType::Prometheus => (None, 0),
            };
            let started_at = sample
                .as_ref()
                .and_then(|usage| usage.started_at)
                .or_else(|| alloc.task_states.values().filter_map(|task| task.started_at).min());
            Instance {
                name: alloc.name.clone(),
                phase: match alloc.client_status {
                    ClientStatus::Pending => Phase::Pending,
                    ClientStatus::Running => Phase::Running,
                    ClientStatus::Complete | ClientStatus::Failed | ClientStatus::Lost => Phase::Failed,
                },
                stopping: alloc.desired_status != DesiredStatus::Run,
                ready: sample.as_ref().map_or(alloc.healthy == Some(true), |usage| usage.ready),
                started_ago: started_at.map(ago),
                ready_changed_ago: sample.as_ref().and_then(|usage| usage.ready_changed_at).map(ago),
                request,
                usage,
                sample_ago: sample.as_ref().map(|usage| ago(usage.time)),
            }
        })
        .collect()
}

/// The group's demand for a metric of demand (the sum of the instances' samples; a utilization as millicores
/// or bytes) and what one instance serves at the target; `None` for latency or without samples.
fn group_demand(metric: &MetricSpec, target: i64, instances: &[Instance]) -> Option<(f64, f64)> {
    let measured: Vec<&Instance> = instances.iter().filter(|instance| instance.usage.is_some() && !instance.stopping).collect();
    if measured.is_empty() {
        return None;
    }
    let total: f64 = measured.iter().map(|instance| instance.usage.unwrap_or(0) as f64).sum();
    match metric.kind {
        MetricType::Cpu | MetricType::Memory => {
            let request = measured.iter().map(|instance| instance.request as f64).sum::<f64>() / measured.len() as f64;
            Some((total, request * target as f64 / 100.0))
        }
        MetricType::RequestsPerSecond | MetricType::Prometheus => Some((total, target as f64)),
        MetricType::LatencyP99 => None,
    }
}

/// A group's demand: "540m" (CPU), "320MiB", "22.5/s", or the query's value.
fn describe_total(kind: MetricType, total: f64) -> String {
    match kind {
        MetricType::Cpu => format!("{}m cpu", total.round()),
        MetricType::Memory => format!("{}MiB", trim(total / 1_048_576.0)),
        MetricType::RequestsPerSecond => format!("{}/s", trim(total / 1000.0)),
        MetricType::LatencyP99 | MetricType::Prometheus => trim(total / 1000.0),
    }
}

/// "85%", "150/s", "230ms" from the calculator's value.
fn describe_value(kind: MetricType, value: i64) -> String {
    match kind {
        MetricType::Cpu | MetricType::Memory => format!("{value}%"),
        MetricType::RequestsPerSecond => format!("{}/s", trim(value as f64 / 1000.0)),
        MetricType::LatencyP99 => format!("{}ms", trim(value as f64 / 1000.0)),
        MetricType::Prometheus => trim(value as f64 / 1000.0),
    }
}

fn describe_target(metric: &MetricSpec) -> String {
    match (metric.kind, metric.target_milli()) {
        (kind, Some(target)) => describe_value(kind, target),
        (_, None) => "?".to_string(),
    }
}

fn trim(x: f64) -> String {
    calculator::decimals(x, 2)
}

/// Registers the job again with the group at `to` (only if the job did not change meanwhile).
async fn scale(shared: &Shared, job: &Job, group: &GroupSpec, to: u32, reason: String, now: Instant) {
    if let Err(failure) = register_count(shared, job, group, to, "autoscaler", reason, now).await {
        tracing::info!(job = %job.spec.id(), group = %group.name, error = %failure.message(), "autoscaling did not apply; evaluating again at the next sync")
    }
}

/// Registers `job` again with `group` at `to`, compare-and-set on the job, and records the scale event.
async fn register_count(
    shared: &Shared,
    job: &Job,
    group: &GroupSpec,
    to: u32,
    by: &str,
    reason: String,
    now: Instant,
) -> Result<(), Failure> {
    let mut spec = job.spec.clone();
    let Some(written) = spec.groups.iter_mut().find(|g| g.name == group.name) else { return Ok(()) };
    written.count = to;
    let event = ScalingEvent { group: group.name.clone(), from: group.count, to, by: by.to_string(), reason, time: now_millis() };
    tracing::info!(job = %job.spec.id(), %event, "scaling");
    let registration =
        Registration { trigger: EvalTrigger::JobScale, revert_of: None, scaling: Some(event), based_on: Some(job.modify_index) };
    register_spec(shared, spec, registration).await?;
    let mut groups = shared.autoscaler.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let state = groups.entry((job.spec.id(), group.name.clone())).or_default();
    if to > group.count {
        state.scale_up.push((to - group.count, now));
    } else {
        state.scale_down.push((group.count - to, now));
    }
    if group.count == 0 {
        // Woken from zero: the recommendations made before it slept no longer say anything.
        state.recommendations = vec![(to, now)];
        state.last_active = Some(now);
    }
    Ok(())
}

/// `POST /v1/node/{id}/activate`: a request reached `node`'s proxy for a group that scales to zero. A group at
/// zero is scaled to one instance (its `min`, if higher); a group with instances counts as active again.
///
/// Concurrent activations of one group settle by the compare-and-set: the loser reads again and finds it awake.
pub(crate) async fn activate(shared: &Shared, node: &str, job_id: &str, group_name: &str) -> Result<ActivateResponse, Failure> {
    for _ in 0..3 {
        let snapshot = shared.view.snapshot();
        let job = snapshot
            .cluster
            .job(job_id)
            .filter(|job| !job.stopped)
            .ok_or_else(|| Failure::not_found(format!("no running job {job_id}")))?;
        let group = job.spec.group(group_name).ok_or_else(|| Failure::not_found(format!("job {job_id} has no group {group_name}")))?;
        if group.scaling.as_ref().and_then(ScalingSpec::scales_to_zero).is_none() {
            return Err(Failure::conflict(format!("group {group_name} of job {job_id} does not scale to zero")));
        }
        let now = Instant::now();
        // Active from now on, also for a sync that sees the new count before `register_count` returns.
        shared
            .autoscaler
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((job_id.to_string(), group_name.to_string()))
            .or_default()
            .last_active = Some(now);
        if group.count > 0 {
            return Ok(ActivateResponse { count: group.count, activated: false });
        }
        let to = group.scaling.as_ref().map_or(1, |scaling| scaling.min_count(0).max(1));
        let reason = format!("a request reached the proxy on node {node}");
        match register_count(shared, job, group, to, "activation", reason, now).await {
            Ok(()) => return Ok(ActivateResponse { count: to, activated: true }),
            // Changed meanwhile (the autoscaler, an operator): look again.
            Err(failure) if failure.status() == axum::http::StatusCode::CONFLICT => {
                shared.view.wait_for(shared.store.current_revision().await?).await;
            }
            Err(failure) => return Err(failure),
        }
    }
    Err(Failure::conflict(format!("job {job_id} is being changed concurrently; try again")))
}
