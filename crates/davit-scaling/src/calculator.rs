//! Kubernetes' replica calculator, for one metric of one group: the instances are grouped into ready,
//! unready, missing (no sample) and ignored (failed or stopping); the usage ratio is computed over the ready
//! ones; missing samples are filled in against the direction of the change (as the target on a scale-down,
//! as 0 on a scale-up), unready instances count as 0 on a scale-up, and a fill-in that would flip the
//! direction or land within the tolerance keeps the count.
//!
//! Values are integers as in Kubernetes: resource usage and requests in millicores or bytes, other metrics in
//! milli-units (requests/s × 1000, latency in µs); a utilization is truncated to a whole percent before the
//! ratio is taken.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How far the usage ratio may stray from 1 before the count changes: `1 - scale_down ≤ ratio ≤ 1 + scale_up`
/// keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    pub scale_up: f64,
    pub scale_down: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances { scale_up: davit_api::spec::DEFAULT_TOLERANCE, scale_down: davit_api::spec::DEFAULT_TOLERANCE }
    }
}

impl Tolerances {
    pub fn within(self, ratio: f64) -> bool {
        (1.0 - self.scale_down) <= ratio && ratio <= (1.0 + self.scale_up)
    }
}

impl From<davit_api::spec::ToleranceSpec> for Tolerances {
    fn from(spec: davit_api::spec::ToleranceSpec) -> Self {
        Tolerances { scale_up: spec.scale_up, scale_down: spec.scale_down }
    }
}

/// An instance's phase, as Kubernetes' pod phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Running,
    Pending,
    Failed,
}

/// One instance (allocation) of the group, as the calculator sees it. Ages are in seconds before now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    pub name: String,
    pub phase: Phase,
    /// Being stopped (Kubernetes: a deletion timestamp).
    pub stopping: bool,
    /// Ready: running with its checks passing.
    pub ready: bool,
    /// Since its start; `None`: long ago.
    pub started_ago: Option<f64>,
    /// Since its readiness last changed; `None`: never became ready (not ready), ready since long ago (ready).
    pub ready_changed_ago: Option<f64>,
    /// What its tasks ask for (resource metrics).
    pub request: i64,
    /// Its sample; `None`: no metric for it.
    pub usage: Option<i64>,
    /// When the sample was taken (its end); `None`: before the instance became ready.
    pub sample_ago: Option<f64>,
}

/// The CPU-only timing rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// `cpu_initialization_period` (s).
    pub cpu_initialization_period: f64,
    /// `initial_readiness_delay` (s).
    pub initial_readiness_delay: f64,
    /// The span one CPU sample covers (s): a sample counts once it covers only time after readiness.
    pub metric_window: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { cpu_initialization_period: 300.0, initial_readiness_delay: 30.0, metric_window: 5.0 }
    }
}

/// Which instances counted how (by name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grouping {
    pub ready: Vec<String>,
    pub unready: Vec<String>,
    pub missing: Vec<String>,
    pub ignored: Vec<String>,
}

/// A metric's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The count this metric asks for.
    pub replicas: u32,
    /// The measured value before any fill-in: a percent of the request (resource metrics) or the average
    /// per ready instance in milli-units.
    pub usage: i64,
    /// The measured usage ÷ target.
    pub ratio: f64,
    pub grouping: Grouping,
    /// The arithmetic, one step per line.
    pub steps: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    #[error("the group has no instances to measure")]
    NoInstances,
    #[error("no metrics for any ready instance (instances might be unready)")]
    NoMetrics,
    #[error("the measured instances ask for no {0} (a utilization needs a request)")]
    NoRequests(&'static str),
}

/// `groupPods`: failed and stopping instances are ignored, pending ones unready, those without a sample
/// missing; for CPU, an instance inside its initialization period counts only when ready with a sample taken
/// a full window after it became so, and one past it is unready only if it never became ready.
pub fn group(instances: &[Instance], cpu: bool, timing: Timing) -> (Grouping, Vec<Class>) {
    let mut grouping = Grouping::default();
    let mut classes = Vec::with_capacity(instances.len());
    for instance in instances {
        let class = classify(instance, cpu, timing);
        let list = match class {
            Class::Ready => &mut grouping.ready,
            Class::Unready => &mut grouping.unready,
            Class::Missing => &mut grouping.missing,
            Class::Ignored => &mut grouping.ignored,
        };
        list.push(instance.name.clone());
        classes.push(class);
    }
    (grouping, classes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Ready,
    Unready,
    Missing,
    Ignored,
}

fn classify(instance: &Instance, cpu: bool, timing: Timing) -> Class {
    if instance.stopping || instance.phase == Phase::Failed {
        return Class::Ignored;
    }
    if instance.phase == Phase::Pending {
        return Class::Unready;
    }
    if instance.usage.is_none() {
        return Class::Missing;
    }
    if cpu {
        let started_ago = instance.started_ago.unwrap_or(f64::INFINITY);
        let unready = if started_ago < timing.cpu_initialization_period {
            // Still initializing: the sample must cover only time after the instance became ready.
            !instance.ready
                || match (instance.sample_ago, instance.ready_changed_ago) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(sample_ago), Some(changed_ago)) => changed_ago - sample_ago < timing.metric_window,
                }
        } else {
            // Unready and never became ready (it turned unready within the delay after its start).
            !instance.ready
                && match instance.ready_changed_ago {
                    None => true,
                    Some(changed_ago) => started_ago - changed_ago < timing.initial_readiness_delay,
                }
        };
        if unready {
            return Class::Unready;
        }
    }
    Class::Ready
}

/// How a metric's values are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A percent of the request (`GetResourceUtilizationRatio`); `cpu` adds the CPU timing rules.
    Utilization { cpu: bool },
    /// An average value per instance (`GetMetricUsageRatio`).
    Average,
}

impl Kind {
    /// How a metric of this type is averaged (a Prometheus total is not: see [`external_per_instance`]).
    pub fn of(metric: davit_api::spec::MetricType) -> Kind {
        use davit_api::spec::MetricType;
        match metric {
            MetricType::Cpu => Kind::Utilization { cpu: true },
            MetricType::Memory => Kind::Utilization { cpu: false },
            MetricType::RequestsPerSecond | MetricType::LatencyP99 | MetricType::Prometheus => Kind::Average,
        }
    }
}

/// `GetResourceReplicas` (for [`Kind::Utilization`], `target` in percent) and `calcPlainMetricReplicas`
/// (for [`Kind::Average`], `target` in milli-units).
pub fn replicas(
    current: u32,
    kind: Kind,
    target: i64,
    tolerances: Tolerances,
    timing: Timing,
    instances: &[Instance],
) -> Result<Proposal, CalcError> {
    if instances.is_empty() {
        return Err(CalcError::NoInstances);
    }
    let cpu = matches!(kind, Kind::Utilization { cpu: true });
    let (grouping, classes) = group(instances, cpu, timing);
    let mut steps = vec![format!(
        "instances: {} ready, {} unready, {} missing a sample, {} ignored",
        grouping.ready.len(),
        grouping.unready.len(),
        grouping.missing.len(),
        grouping.ignored.len()
    )];
    // The samples that count: the ready instances'.
    let mut metrics: BTreeMap<usize, i64> = BTreeMap::new();
    for (index, (instance, class)) in instances.iter().zip(&classes).enumerate() {
        if *class == Class::Ready {
            metrics.insert(index, instance.usage.unwrap_or(0));
        }
    }
    if metrics.is_empty() {
        return Err(CalcError::NoMetrics);
    }
    let what = if cpu { "cpu" } else { "memory" };
    let ratio_of = |metrics: &BTreeMap<usize, i64>| -> Result<(f64, i64), CalcError> {
        match kind {
            Kind::Utilization { .. } => {
                let used: i64 = metrics.values().sum();
                let requested: i64 = metrics.keys().map(|index| instances[*index].request).sum();
                if requested == 0 {
                    return Err(CalcError::NoRequests(what));
                }
                let utilization = used.saturating_mul(100) / requested;
                Ok((utilization as f64 / target as f64, utilization))
            }
            Kind::Average => {
                let total: i64 = metrics.values().sum();
                let average = total / metrics.len() as i64;
                Ok((average as f64 / target as f64, average))
            }
        }
    };
    let (ratio, usage) = ratio_of(&metrics)?;
    steps.push(describe_ratio(kind, &metrics, instances, usage, target, ratio));
    let unready: Vec<usize> = classes.iter().enumerate().filter(|(_, c)| **c == Class::Unready).map(|(i, _)| i).collect();
    let missing: Vec<usize> = classes.iter().enumerate().filter(|(_, c)| **c == Class::Missing).map(|(i, _)| i).collect();
    let proposal = |replicas: u32, steps: Vec<String>| Proposal { replicas, usage, ratio, grouping: grouping.clone(), steps };

    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if tolerances.within(ratio) {
            steps.push(format!("{} is within the tolerance {}: keep {current}", round3(ratio), describe_tolerance(tolerances)));
            return Ok(proposal(current, steps));
        }
        let replicas = ceil_count(ratio * metrics.len() as f64);
        steps.push(format!("ceil({} × {} ready) = {replicas}", round3(ratio), metrics.len()));
        return Ok(proposal(replicas, steps));
    }
    if !missing.is_empty() {
        if ratio < 1.0 {
            // On a scale-down, a missing sample counts as the whole request (or the target when above 100 %).
            for index in &missing {
                let fill = match kind {
                    Kind::Utilization { .. } => instances[*index].request.saturating_mul(target.max(100)) / 100,
                    Kind::Average => target,
                };
                metrics.insert(*index, fill);
            }
            steps.push(format!("scale-down: {} instance(s) without a sample count as using {}", missing.len(), fill_name(kind, target)));
        } else if ratio > 1.0 {
            for index in &missing {
                metrics.insert(*index, 0);
            }
            steps.push(format!("scale-up: {} instance(s) without a sample count as using 0", missing.len()));
        }
    }
    if scale_up_with_unready {
        for index in &unready {
            metrics.insert(*index, 0);
        }
        steps.push(format!("scale-up: {} unready instance(s) count as using 0", unready.len()));
    }
    let (new_ratio, new_usage) = ratio_of(&metrics)?;
    steps.push(format!("with them: {} → ratio {}", describe_usage(kind, new_usage), round3(new_ratio)));
    if tolerances.within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        let why = if tolerances.within(new_ratio) { "is within the tolerance" } else { "would turn the direction" };
        steps.push(format!("{} {why}: keep {current}", round3(new_ratio)));
        return Ok(proposal(current, steps));
    }
    let replicas = ceil_count(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        steps.push(format!("ceil({} × {}) = {replicas} would turn the direction: keep {current}", round3(new_ratio), metrics.len()));
        return Ok(proposal(current, steps));
    }
    steps.push(format!("ceil({} × {}) = {replicas}", round3(new_ratio), metrics.len()));
    Ok(proposal(replicas, steps))
}

/// `GetExternalPerPodMetricReplicas`: a value for the whole group (`total`, milli-units) against a target per
/// instance; `current` is the count the group runs.
pub fn external_per_instance(current: u32, target: i64, total: i64, tolerances: Tolerances) -> Proposal {
    let ratio = total as f64 / (target as f64 * f64::from(current));
    let mut steps = vec![format!("{} ÷ ({} × {current}) = ratio {}", milli(total), milli(target), round3(ratio))];
    let replicas = if tolerances.within(ratio) {
        steps.push(format!("within the tolerance {}: keep {current}", describe_tolerance(tolerances)));
        current
    } else {
        let replicas = ceil_count(total as f64 / target as f64);
        steps.push(format!("ceil({} ÷ {}) = {replicas}", milli(total), milli(target)));
        replicas
    };
    let usage = if current == 0 { total } else { (total as f64 / f64::from(current)).ceil() as i64 };
    Proposal { replicas, usage, ratio, grouping: Grouping::default(), steps }
}

/// `int32(math.Ceil(x))`, kept within u32.
fn ceil_count(x: f64) -> u32 {
    let ceiled = x.ceil();
    if ceiled.is_nan() || ceiled <= 0.0 {
        0
    } else if ceiled >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        ceiled as u32
    }
}

fn round3(x: f64) -> String {
    decimals(x, 3)
}

/// `x` with at most `places` decimals and no trailing zeros: `1.5`, `2`, `0.667`.
pub fn decimals(x: f64, places: usize) -> String {
    let text = format!("{x:.places$}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn milli(value: i64) -> String {
    round3(value as f64 / 1000.0)
}

fn describe_tolerance(tolerances: Tolerances) -> String {
    format!("[{}, {}]", round3(1.0 - tolerances.scale_down), round3(1.0 + tolerances.scale_up))
}

fn describe_usage(kind: Kind, usage: i64) -> String {
    match kind {
        Kind::Utilization { .. } => format!("{usage}%"),
        Kind::Average => format!("average {}", milli(usage)),
    }
}

fn fill_name(kind: Kind, target: i64) -> String {
    match kind {
        Kind::Utilization { .. } => format!("{}% of their request", target.max(100)),
        Kind::Average => format!("the target {}", milli(target)),
    }
}

fn describe_ratio(kind: Kind, metrics: &BTreeMap<usize, i64>, instances: &[Instance], usage: i64, target: i64, ratio: f64) -> String {
    match kind {
        Kind::Utilization { .. } => {
            let used: i64 = metrics.values().sum();
            let requested: i64 = metrics.keys().map(|index| instances[*index].request).sum();
            format!("utilization {used} × 100 ÷ {requested} = {usage}% (truncated); ratio {usage} ÷ {target} = {}", round3(ratio))
        }
        Kind::Average => {
            let total: i64 = metrics.values().sum();
            format!(
                "average {} ÷ {} = {}; ratio {} ÷ {} = {}",
                milli(total),
                metrics.len(),
                milli(usage),
                milli(usage),
                milli(target),
                round3(ratio)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Kind = Kind::Utilization { cpu: true };
    const MEMORY: Kind = Kind::Utilization { cpu: false };

    /// A ready instance running since long ago.
    fn running(request: i64, usage: Option<i64>) -> Instance {
        Instance { name: format!("i{request}-{usage:?}"), ready: true, request, usage, ..Instance::default() }
    }

    fn pending(request: i64) -> Instance {
        Instance { phase: Phase::Pending, ready: false, ..running(request, None) }
    }

    fn count(current: u32, kind: Kind, target: i64, instances: &[Instance]) -> u32 {
        replicas(current, kind, target, Tolerances::default(), Timing::default(), instances).unwrap().replicas
    }

    #[test]
    fn the_ratio_of_utilization_to_target_times_the_ready_count_rounded_up() {
        // 2700m of 3000m = 90 % against 60 %: 1.5 × 3 = 4.5 → 5.
        let instances = vec![running(1000, Some(900)); 3];
        let proposal = replicas(3, CPU, 60, Tolerances::default(), Timing::default(), &instances).unwrap();
        assert_eq!((proposal.replicas, proposal.usage, proposal.ratio), (5, 90, 1.5));
        // Down: 20 % against 60 % → ceil(1/3 × 3) = 1.
        assert_eq!(count(3, CPU, 60, &vec![running(1000, Some(200)); 3]), 1);
    }

    #[test]
    fn utilization_is_truncated_to_a_whole_percent_before_the_ratio() {
        // 1010m of 2000m is 50.5 %, truncated to 50: 50/10 × 2 = 10 (not ceil(5.05 × 2) = 11).
        assert_eq!(count(2, CPU, 10, &[running(1000, Some(505)), running(1000, Some(505))]), 10);
    }

    #[test]
    fn a_ratio_within_the_tolerance_keeps_the_count_at_both_edges() {
        // 66 % of 60 % is exactly 1.1: kept; 67 % is not: ceil(1.1167 × 2) = 3.
        assert_eq!(count(2, CPU, 60, &vec![running(1000, Some(660)); 2]), 2);
        assert_eq!(count(2, CPU, 60, &vec![running(1000, Some(670)); 2]), 3);
        // 54 % of 60 % is 0.9: within 0.1, but not within a scale-down tolerance of 0.05.
        let instances = vec![running(1000, Some(540)); 10];
        assert_eq!(count(10, CPU, 60, &instances), 10);
        let narrow = Tolerances { scale_up: 0.1, scale_down: 0.05 };
        assert_eq!(replicas(10, CPU, 60, narrow, Timing::default(), &instances).unwrap().replicas, 9);
    }

    #[test]
    fn missing_samples_count_as_the_request_on_a_scale_down_and_as_zero_on_a_scale_up() {
        // Scale-down: two ready at 60m of 200m (30 % against 150 %), two without a sample. They count as
        // 200m × max(100, 150) % = 300m each: 720m of 800m = 90 % → 0.6 × 4 = 2.4 → 3 (not 2 as 100 % would
        // give, and not ceil(0.2 × 2) = 1 without them).
        let instances = [running(200, Some(60)), running(200, Some(60)), running(200, None), running(200, None)];
        let proposal = replicas(4, CPU, 150, Tolerances::default(), Timing::default(), &instances).unwrap();
        assert_eq!((proposal.replicas, proposal.grouping.missing.len()), (3, 2));
        // Scale-up: two ready at 90 % against 60 % (1.5), two without a sample count as 0: 45 % → 0.75 would
        // turn the direction, so the count stays.
        let instances = [running(100, Some(90)), running(100, Some(90)), running(100, None), running(100, None)];
        assert_eq!(count(4, CPU, 60, &instances), 4);
        // A fill-in that lands within the tolerance keeps the count too: 3 ready at 40m of 100m against 50 %
        // (0.8), one missing → 220 % ÷ 4 = 55 % → 1.1.
        let instances = [running(100, Some(40)), running(100, Some(40)), running(100, Some(40)), running(100, None)];
        assert_eq!(count(4, CPU, 50, &instances), 4);
    }

    #[test]
    fn unready_instances_count_as_zero_on_a_scale_up_and_are_left_out_of_a_scale_down() {
        // One ready at 120 % against 100 % would ask for 2; with a pending one counted as 0 the ratio is 0.6,
        // the other direction: the count stays 2.
        assert_eq!(count(1, CPU, 100, &[running(100, Some(120))]), 2);
        assert_eq!(count(2, CPU, 100, &[running(100, Some(120)), pending(100)]), 2);
        // Scale-down: the pending instance is not counted at all: ceil(0.4 × 2) = 1.
        assert_eq!(count(3, CPU, 50, &[running(100, Some(20)), running(100, Some(20)), pending(100)]), 1);
        // Mixed requests: 100m of 100m (200 % of 50 %) beside a pending instance asking 300m: 100m of 400m =
        // 25 % → 0.5 turns the direction.
        assert_eq!(count(2, CPU, 50, &[running(100, Some(100)), pending(300)]), 2);
    }

    #[test]
    fn failed_and_stopping_instances_are_ignored() {
        let failed = Instance { phase: Phase::Failed, ..running(1000, Some(1000)) };
        let stopping = Instance { stopping: true, ..running(1000, Some(1000)) };
        let instances = [running(1000, Some(300)), running(1000, Some(300)), failed, stopping];
        let proposal = replicas(4, CPU, 60, Tolerances::default(), Timing::default(), &instances).unwrap();
        // 30 % of 60 % over the two that count: 0.5 × 2 = 1.
        assert_eq!((proposal.replicas, proposal.usage, proposal.grouping.ignored.len()), (1, 30, 2));
    }

    #[test]
    fn cpu_samples_of_initializing_instances_count_only_a_window_after_readiness() {
        let timing = Timing { cpu_initialization_period: 120.0, initial_readiness_delay: 10.0, metric_window: 5.0 };
        let young = |ready: bool, ready_ago: Option<f64>, sample_ago: Option<f64>| Instance {
            name: "young".to_string(),
            ready,
            started_ago: Some(30.0),
            ready_changed_ago: ready_ago,
            sample_ago,
            ..running(100, Some(100))
        };
        let class = |instance: &Instance, cpu: bool| classify(instance, cpu, timing);
        // Ready 20 s ago, sampled 10 s ago: the sample covers only ready time.
        assert_eq!(class(&young(true, Some(20.0), Some(10.0)), true), Class::Ready);
        // Sampled 2 s after it became ready: part of the window was before.
        assert_eq!(class(&young(true, Some(20.0), Some(18.0)), true), Class::Unready);
        // The sample predates readiness; not ready at all.
        assert_eq!(class(&young(true, Some(20.0), None), true), Class::Unready);
        assert_eq!(class(&young(false, Some(20.0), Some(1.0)), true), Class::Unready);
        // Memory knows none of this.
        assert_eq!(class(&young(false, Some(20.0), Some(1.0)), false), Class::Ready);
        // Past the period: unready only if it never became ready (turned unready within the delay of its start).
        let old = |ready_ago: Option<f64>| Instance {
            ready: false,
            started_ago: Some(400.0),
            ready_changed_ago: ready_ago,
            ..running(100, Some(1))
        };
        assert_eq!(class(&old(Some(100.0)), true), Class::Ready);
        assert_eq!(class(&old(Some(395.0)), true), Class::Unready);
        assert_eq!(class(&old(None), true), Class::Unready);
        // Started long ago and ready: counts.
        assert_eq!(class(&running(100, Some(1)), true), Class::Ready);
    }

    #[test]
    fn memory_is_a_utilization_without_the_cpu_timing() {
        let mib = 1_048_576;
        let young_unready = Instance { ready: false, started_ago: Some(1.0), ..running(256 * mib, Some(240 * mib)) };
        // 480 of 512 MiB = 93 % against 80 %: 1.1625 × 2 = 2.3 → 3.
        assert_eq!(count(2, MEMORY, 80, &[running(256 * mib, Some(240 * mib)), young_unready]), 3);
    }

    #[test]
    fn without_any_ready_sample_the_metric_fails() {
        let error = replicas(2, CPU, 60, Tolerances::default(), Timing::default(), &[running(100, None), pending(100)]).unwrap_err();
        assert_eq!(error, CalcError::NoMetrics);
        assert_eq!(replicas(2, CPU, 60, Tolerances::default(), Timing::default(), &[]).unwrap_err(), CalcError::NoInstances);
        assert_eq!(
            replicas(1, CPU, 60, Tolerances::default(), Timing::default(), &[running(0, Some(5))]).unwrap_err(),
            CalcError::NoRequests("cpu")
        );
    }

    #[test]
    fn an_average_per_instance_scales_like_a_pods_metric() {
        let rps = |value: i64| running(0, Some(value * 1000));
        // 150 requests/s each against 100: 1.5 × 3 = 4.5 → 5.
        assert_eq!(count(3, Kind::Average, 100_000, &[rps(150), rps(150), rps(150)]), 5);
        // Scale-down with a missing sample: it counts as the target: (50 + 50 + 100) ÷ 3 = 66.666 → 0.667 × 3 → 2.
        let instances = [rps(50), rps(50), running(0, None)];
        let proposal = replicas(3, Kind::Average, 100_000, Tolerances::default(), Timing::default(), &instances).unwrap();
        assert_eq!((proposal.replicas, proposal.usage), (2, 50_000));
    }

    #[test]
    fn a_group_total_against_a_target_per_instance() {
        // 45 against 10 per instance at 3: ratio 1.5 → ceil(4.5) = 5; 31 is within the tolerance.
        let proposal = external_per_instance(3, 10_000, 45_000, Tolerances::default());
        assert_eq!((proposal.replicas, proposal.usage), (5, 15_000));
        assert_eq!(external_per_instance(3, 10_000, 31_000, Tolerances::default()).replicas, 3);
        // Down to what the total needs: 4 against 10 → 1.
        assert_eq!(external_per_instance(3, 10_000, 4_000, Tolerances::default()).replicas, 1);
    }
}
