//! `davit scaling plan FILE`: the autoscaler's decision for numbers written by hand, with its arithmetic.
//!
//! The input names a group's count, bounds and one metric with its instances (or a `proposal` to normalise
//! directly), the tolerance, timing and `behavior` as in a job's `scaling:` block, and the history the
//! normalisation looks at (`seconds_ago` for every past recommendation and scale event).

use davit_api::Duration;
use davit_api::spec::{BehaviorSpec, MetricSpec, MetricType, ToleranceSpec};
use serde::{Deserialize, Serialize};

use crate::calculator::{self, Instance, Kind, Phase, Proposal, Timing, Tolerances};
use crate::normalize::{self, Behavior, Decision, History, Limit};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    pub current: u32,
    #[serde(default = "one")]
    pub min: u32,
    pub max: u32,
    #[serde(default)]
    pub metric: Option<MetricSpec>,
    #[serde(default)]
    pub tolerance: Option<ToleranceSpec>,
    #[serde(default)]
    pub cpu_initialization_period: Option<Duration>,
    #[serde(default)]
    pub initial_readiness_delay: Option<Duration>,
    /// The group's instances and their samples.
    #[serde(default)]
    pub instances: Option<Vec<InstanceInput>>,
    /// A `prometheus` metric: the query's value for the whole group (the target is per instance).
    #[serde(default)]
    pub total: Option<f64>,
    /// Instead of a metric and its instances: the proposal to normalise.
    #[serde(default)]
    pub proposal: Option<u32>,
    /// Present (even `{}`): the behavior path; absent: the legacy path.
    #[serde(default)]
    pub behavior: Option<BehaviorSpec>,
    #[serde(default)]
    pub history: History,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInput {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub request_millicores: Option<f64>,
    #[serde(default)]
    pub usage_millicores: Option<f64>,
    #[serde(default)]
    pub request_mib: Option<f64>,
    #[serde(default)]
    pub usage_mib: Option<f64>,
    /// A per-instance metric's sample: requests/s (`requests_per_second`), ms (`latency_p99`).
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default)]
    pub status: Phase,
    #[serde(default)]
    pub started_seconds_ago: Option<f64>,
    #[serde(default)]
    pub ready_seconds_ago: Option<f64>,
    #[serde(default)]
    pub sample_seconds_ago: Option<f64>,
    #[serde(default)]
    pub stopping: bool,
}

/// The decision and how it came about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanOutput {
    /// The calculator's answer, before min/max, stabilisation and rate limits (`null`: the metric failed).
    pub proposal: Option<u32>,
    /// The count the autoscaler would set.
    pub desired: u32,
    /// Resource metrics: the measured utilization (percent of the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<i64>,
    /// Other metrics: the measured average per instance (requests/s, ms, the query's unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average: Option<f64>,
    pub limited_by: Limit,
    pub message: String,
    pub stabilized: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouping: Option<calculator::Grouping>,
    /// Why the metric failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct DryRunError(pub String);

/// Runs the calculator (unless a `proposal` is given) and the normalisation.
pub fn plan(input: &PlanInput) -> Result<PlanOutput, DryRunError> {
    let fail = |message: String| Err(DryRunError(message));
    if input.max == 0 {
        return fail("max must be at least 1".to_string());
    }
    if input.min > input.max {
        return fail(format!("min {} is above max {}", input.min, input.max));
    }
    let tolerances = input.tolerance.map(Tolerances::from).unwrap_or_default();
    for value in [tolerances.scale_up, tolerances.scale_down] {
        if !(0.0..1.0).contains(&value) {
            return fail(format!("a tolerance is a fraction from 0 to below 1, not {value}"));
        }
    }
    let timing = Timing {
        cpu_initialization_period: input.cpu_initialization_period.map_or(300.0, |d| d.as_std().as_secs_f64()),
        initial_readiness_delay: input.initial_readiness_delay.map_or(30.0, |d| d.as_std().as_secs_f64()),
        ..Timing::default()
    };
    let mut steps = Vec::new();
    let mut output_usage = (None, None);
    let mut grouping = None;
    let mut error = None;
    let proposal = match (&input.metric, input.proposal) {
        (Some(_), Some(_)) => return fail("give either a metric (with instances) or a proposal, not both".to_string()),
        (None, None) => return fail("give a metric with its instances, or a proposal to normalise".to_string()),
        (None, Some(proposal)) => {
            steps.push(format!("proposal {proposal} (given)"));
            Some(proposal)
        }
        (Some(metric), None) => match measure(input, metric, tolerances, timing)? {
            Ok(proposal) => {
                steps.extend(proposal.steps.iter().cloned());
                output_usage = describe(metric, &proposal);
                if metric.kind != MetricType::Prometheus {
                    grouping = Some(proposal.grouping.clone());
                }
                Some(proposal.replicas)
            }
            Err(calc_error) => {
                steps.push(format!("the metric failed: {calc_error}"));
                error = Some(calc_error.to_string());
                None
            }
        },
    };
    let behavior = input.behavior.as_ref().map(Behavior::resolve);
    let decision: Decision = normalize::decide(input.current, input.min, input.max, proposal, behavior.as_ref(), &input.history);
    if let Some(stabilization) = &decision.stabilization {
        steps.push(format!("{stabilization}: the recommendation becomes {}", decision.stabilized));
    }
    steps.push(format!("{} → {} ({})", input.current, decision.desired, decision.limited_by.message()));
    Ok(PlanOutput {
        proposal,
        desired: decision.desired,
        utilization_percent: output_usage.0,
        average: output_usage.1,
        message: decision.limited_by.message().to_string(),
        limited_by: decision.limited_by,
        stabilized: decision.stabilized,
        stabilization: decision.stabilization,
        grouping,
        error,
        steps,
    })
}

/// The metric's proposal from the instances (or the group's total), or why the input does not fit the metric.
fn measure(
    input: &PlanInput,
    metric: &MetricSpec,
    tolerances: Tolerances,
    timing: Timing,
) -> Result<Result<Proposal, calculator::CalcError>, DryRunError> {
    let Some(target) = metric.target_milli().filter(|target| *target > 0) else {
        return Err(DryRunError(format!(
            "the {} metric needs a target above 0 (target_utilization for cpu and memory, target otherwise)",
            metric.kind.as_str()
        )));
    };
    if metric.kind == MetricType::Prometheus {
        let Some(total) = input.total else {
            return Err(DryRunError("a prometheus metric takes the query's value for the group as `total`".to_string()));
        };
        return Ok(Ok(calculator::external_per_instance(input.current, target, (total * 1000.0).round() as i64, tolerances)));
    }
    let Some(written) = &input.instances else {
        return Err(DryRunError(format!("the {} metric needs `instances`", metric.kind.as_str())));
    };
    let mut instances = Vec::with_capacity(written.len());
    for (index, instance) in written.iter().enumerate() {
        let name = instance.name.clone().unwrap_or_else(|| format!("instance[{index}]"));
        let (request, usage) = match metric.kind {
            MetricType::Cpu => {
                let Some(request) = instance.request_millicores else {
                    return Err(DryRunError(format!("{name}: a cpu metric needs request_millicores")));
                };
                (request.round() as i64, instance.usage_millicores.map(|usage| usage.round() as i64))
            }
            MetricType::Memory => {
                let bytes = |mib: f64| (mib * 1_048_576.0).round() as i64;
                let Some(request) = instance.request_mib else {
                    return Err(DryRunError(format!("{name}: a memory metric needs request_mib")));
                };
                (bytes(request), instance.usage_mib.map(bytes))
            }
            _ => (0, instance.value.map(|value| (value * 1000.0).round() as i64)),
        };
        instances.push(Instance {
            name,
            phase: instance.status,
            stopping: instance.stopping,
            ready: instance.ready,
            started_ago: instance.started_seconds_ago,
            ready_changed_ago: instance.ready_seconds_ago,
            request,
            usage,
            sample_ago: instance.sample_seconds_ago,
        });
    }
    Ok(calculator::replicas(input.current, Kind::of(metric.kind), target, tolerances, timing, &instances))
}

fn describe(metric: &MetricSpec, proposal: &Proposal) -> (Option<i64>, Option<f64>) {
    if metric.kind.is_resource() { (Some(proposal.usage), None) } else { (None, Some(proposal.usage as f64 / 1000.0)) }
}

/// The text `davit scaling plan` prints.
pub fn render(output: &PlanOutput) -> String {
    let mut text = String::new();
    let proposal = output.proposal.map_or_else(|| "none".to_string(), |p| p.to_string());
    text.push_str(&format!("desired {} (proposal {proposal}; {})\n", output.desired, output.message));
    if let Some(utilization) = output.utilization_percent {
        text.push_str(&format!("utilization {utilization}%\n"));
    }
    if let Some(average) = output.average {
        text.push_str(&format!("average {average}\n"));
    }
    if let Some(error) = &output.error {
        text.push_str(&format!("metric error: {error}\n"));
    }
    for step in &output.steps {
        text.push_str(&format!("  {step}\n"));
    }
    text
}
