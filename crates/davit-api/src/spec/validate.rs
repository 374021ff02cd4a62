//! Semantic checks on a typed spec: names, ranges, references between fields, driver configs, and
//! fields this davit version parses but does not act on yet (rejected, so nothing is silently ignored).
//!
//! Every rule reports through a [`Ctx`], which knows where each path was written when the spec came
//! from text, and stays quiet below a path whose value already had an error.

use std::collections::HashMap;

use serde_json::Value;

mod placement;
mod services;

use super::drivers::{ContainerConfig, DriverConfig, ExecConfig, VmConfig, inside_task_dir};
use super::parse::{Ctx, Node, deserialize_node, suggest};
use super::{CheckType, DriverName, GroupSpec, JobSpec, JobType, MigrateMode, ReschedulePolicy, SpecErrors, TaskSpec};
use placement::{check_constraints, check_placement};
use services::check_services;

/// Checks a spec that did not come from text (scale, revert): the same rules as parsing, positions 0:0;
/// with `limits` too, when given.
pub fn validate(spec: &JobSpec, limits: Option<&super::SpecLimits>) -> Result<(), SpecErrors> {
    let ctx = Ctx::new("<spec>");
    check(spec, &ctx);
    if let Some(limits) = limits {
        super::limits::check(spec, &ctx, limits);
    }
    let errors = ctx.into_errors();
    if errors.is_empty() { Ok(()) } else { Err(SpecErrors(errors)) }
}

/// Signals a task may be stopped with.
pub const KNOWN_SIGNALS: &[&str] = &["SIGTERM", "SIGINT", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

/// How an integer field is described when its value is out of range (used by the deserializer, so
/// `priority: 300` reads "priority must be an integer from 1 to 100" rather than "… at most 255").
pub(crate) fn integer_expectation(label: &str) -> Option<&'static str> {
    match label {
        "priority" => Some("an integer from 1 to 100"),
        "to" | "static" | "local_port" => Some("a port number from 1 to 65535"),
        _ => None,
    }
}

pub(crate) fn check(spec: &JobSpec, ctx: &Ctx) {
    match dns_label_problem(&spec.name) {
        Some(Problem::Missing) => ctx.report("name", "the job needs a name", Some("add `name: my-job` at the top".to_string())),
        Some(Problem::Invalid(reason)) => {
            ctx.report("name", format!("job name `{}` is not valid: {reason}", spec.name), dns_label_hint(&spec.name))
        }
        None => {}
    }
    if let Some(problem) = dns_label_problem(&spec.namespace) {
        let reason = match problem {
            Problem::Missing => "it is empty",
            Problem::Invalid(reason) => reason,
        };
        ctx.report("namespace", format!("namespace `{}` is not valid: {reason}", spec.namespace), dns_label_hint(&spec.namespace));
    }
    if !(1..=100).contains(&spec.priority) {
        ctx.report("priority", format!("priority must be an integer from 1 to 100, found `{}`", spec.priority), None);
    }
    if spec.datacenters.is_empty() {
        ctx.report("datacenters", "datacenters must list at least one datacenter", Some("e.g. datacenters: [dc1]".to_string()));
    }
    for (index, datacenter) in spec.datacenters.iter().enumerate() {
        if datacenter.trim().is_empty() {
            ctx.report(&format!("datacenters[{index}]"), format!("datacenters[{index}] must not be empty"), None);
        }
    }
    check_constraints(ctx, "constraints", &spec.constraints);
    if spec.update.is_some() && spec.job_type != JobType::Service {
        ctx.report_key(
            "update",
            format!("`update` applies to service jobs only; this is a {} job", spec.job_type.as_str()),
            Some("remove `update`".to_string()),
        );
    } else if let Some(update) = &spec.update {
        check_update_block(ctx, "update", update);
    }
    if spec.groups.is_empty() {
        ctx.report(
            "groups",
            "the job needs at least one group",
            Some("add `groups:` with a group that has `name:` and `tasks:`".to_string()),
        );
    }
    let mut group_names: HashMap<&str, usize> = HashMap::new();
    for (index, group) in spec.groups.iter().enumerate() {
        let path = format!("groups[{index}]");
        if !group.name.is_empty() {
            if let Some(first) = group_names.get(group.name.as_str()) {
                ctx.report(
                    &format!("{path}.name"),
                    format!("duplicate group name `{}`; groups[{first}] already uses it", group.name),
                    Some("group names must be unique within a job".to_string()),
                );
            } else {
                group_names.insert(&group.name, index);
            }
        }
        check_group(ctx, &path, group, spec);
    }
    check_services(ctx, spec);
}

fn check_group(ctx: &Ctx, path: &str, group: &GroupSpec, spec: &JobSpec) {
    let job_type = spec.job_type;
    let name_path = format!("{path}.name");
    match dns_label_problem(&group.name) {
        Some(Problem::Missing) => ctx.report(&name_path, format!("{path} needs a name"), Some("add `name: web` to the group".to_string())),
        Some(Problem::Invalid(reason)) => {
            ctx.report(&name_path, format!("group name `{}` is not valid: {reason}", group.name), dns_label_hint(&group.name))
        }
        None => {}
    }
    let group_label = if group.name.is_empty() { path.to_string() } else { group.name.clone() };
    if job_type == JobType::System && group.count > 1 {
        // As in Nomad: a system job runs one allocation of each group on every feasible node.
        ctx.report(
            &format!("{path}.count"),
            format!("count {} is not allowed in a system job: it runs one allocation of the group on every feasible node", group.count),
            Some("remove `count` (or set it to 1; 0 runs the group nowhere)".to_string()),
        );
    }
    check_constraints(ctx, &format!("{path}.constraints"), &group.constraints);
    check_placement(ctx, path, group, spec);
    if let Some(scaling) = &group.scaling {
        check_scaling(ctx, &format!("{path}.scaling"), group, scaling);
        if !scaling.metrics.is_empty() && job_type != JobType::Service {
            ctx.report_key(
                &format!("{path}.scaling.metrics"),
                format!("the autoscaler scales groups of service jobs; this is a {} job", job_type.as_str()),
                Some("remove metrics, or make the job type: service".to_string()),
            );
        }
        if scaling.scale_to_zero_after.is_some() && job_type != JobType::Service {
            ctx.report_key(
                &format!("{path}.scaling.scale_to_zero_after"),
                format!("only groups of service jobs scale to zero; this is a {} job", job_type.as_str()),
                Some("remove scale_to_zero_after, or make the job type: service".to_string()),
            );
        }
    }

    if let Some(reschedule) = &group.reschedule {
        check_reschedule(ctx, &format!("{path}.reschedule"), reschedule, job_type);
    }
    if let Some(disconnect) = &group.disconnect {
        check_disconnect(ctx, &format!("{path}.disconnect"), disconnect);
    }
    if let Some(delay) = group.shutdown_delay
        && delay.as_std() > MAX_SHUTDOWN_DELAY
    {
        ctx.report(
            &format!("{path}.shutdown_delay"),
            format!("shutdown_delay {delay} is longer than the most allowed, {}", crate::Duration(MAX_SHUTDOWN_DELAY)),
            Some("a few seconds is enough for every proxy to stop sending new requests".to_string()),
        );
    }
    if group.update.is_some() && job_type != JobType::Service {
        ctx.report_key(
            &format!("{path}.update"),
            format!("`update` applies to service jobs only; this is a {} job", job_type.as_str()),
            Some("remove `update`".to_string()),
        );
    } else if spec.job_type == JobType::Service && (spec.update.is_some() || group.update.is_some()) {
        if let Some(update) = &group.update {
            check_update_block(ctx, &format!("{path}.update"), update);
        }
        check_update(ctx, path, spec, group);
    }
    if group.migrate == MigrateMode::Live
        && let Some(task) = group.tasks.iter().find(|task| task.driver != DriverName::Vm)
    {
        ctx.report(
            &format!("{path}.migrate"),
            format!("migrate: live needs every task to use the vm driver, but task `{}` uses {}", task.name, task.driver.as_str()),
            Some("remove `migrate: live` (drains then stop and replace), or move the task to another group".to_string()),
        );
    }

    let restart = &group.restart;
    if let Some(max_delay) = restart.max_delay.filter(|max_delay| restart.delay > *max_delay) {
        ctx.report(
            &format!("{path}.restart.max_delay"),
            format!("restart max_delay {max_delay} is shorter than delay {}", restart.delay),
            Some(format!("make max_delay at least {}, or lower delay", restart.delay)),
        );
    }
    if restart.attempts > 0 {
        if restart.interval.as_std().is_zero() {
            ctx.report(
                &format!("{path}.restart.interval"),
                format!("restart interval must be longer than 0s when attempts is {}", restart.attempts),
                Some("e.g. interval: 30m, or set attempts: 0 to never restart".to_string()),
            );
        } else if restart.delay.as_std().saturating_mul(restart.attempts) > restart.interval.as_std() {
            let needed = crate::Duration(restart.delay.as_std().saturating_mul(restart.attempts));
            ctx.report(
                &format!("{path}.restart.interval"),
                format!(
                    "restart interval {} is too short for {} attempts with a delay of {}",
                    restart.interval, restart.attempts, restart.delay
                ),
                Some(format!("make interval at least {needed}, or lower attempts or delay")),
            );
        }
    }

    let mut port_names: HashMap<&str, usize> = HashMap::new();
    let mut static_ports: HashMap<u16, usize> = HashMap::new();
    for (index, port) in group.network.ports.iter().enumerate() {
        let port_path = format!("{path}.network.ports[{index}]");
        if port.name.is_empty() {
            ctx.report(&format!("{port_path}.name"), "the port needs a name", Some("e.g. {name: http, to: 8080}".to_string()));
        } else if !port.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            let cleaned: String = port.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
            ctx.report(
                &format!("{port_path}.name"),
                format!("port name `{}` is not valid: use only letters, digits and '_'", port.name),
                Some(format!("try `{cleaned}`; the task sees it as ${{port.{cleaned}}} and DAVIT_PORT_{cleaned}")),
            );
        } else if let Some(first) = port_names.get(port.name.as_str()) {
            ctx.report(
                &format!("{port_path}.name"),
                format!("duplicate port name `{}`; network.ports[{first}] already uses it", port.name),
                Some("port names must be unique within a group".to_string()),
            );
        } else {
            port_names.insert(&port.name, index);
        }
        for (field, value) in [("to", port.to), ("static", port.static_port)] {
            if value == Some(0) {
                ctx.report(&format!("{port_path}.{field}"), format!("{field} must be a port number from 1 to 65535, found `0`"), None);
            }
        }
        if let Some(static_port) = port.static_port.filter(|p| *p != 0) {
            if let Some(first) = static_ports.get(&static_port) {
                ctx.report(
                    &format!("{port_path}.static"),
                    format!("static port {static_port} is already used by network.ports[{first}]"),
                    Some("one host port can serve only one port of the group".to_string()),
                );
            } else {
                static_ports.insert(static_port, index);
            }
        }
    }
    let declared: Vec<&str> = group.network.ports.iter().map(|port| port.name.as_str()).filter(|name| !name.is_empty()).collect();

    if group.tasks.is_empty() {
        ctx.report(
            &format!("{path}.tasks"),
            format!("group `{group_label}` has no tasks"),
            Some("add at least one task under `tasks:` with `name:`, `driver:` and `config:`".to_string()),
        );
    }
    let mut task_names: HashMap<&str, usize> = HashMap::new();
    for (index, task) in group.tasks.iter().enumerate() {
        let task_path = format!("{path}.tasks[{index}]");
        if !task.name.is_empty() {
            if let Some(first) = task_names.get(task.name.as_str()) {
                ctx.report(
                    &format!("{task_path}.name"),
                    format!("duplicate task name `{}` in group `{group_label}`; tasks[{first}] already uses it", task.name),
                    Some("task names must be unique within a group".to_string()),
                );
            } else {
                task_names.insert(&task.name, index);
            }
        }
        check_task(ctx, &task_path, task, &group_label, &declared);
    }
}

/// Reschedule: `delay` ≤ `max_delay`; bounded attempts need an interval; `unlimited` excludes bounds.
/// `stop_after` within 2 s..24 h (shorter fences a node over one slow heartbeat), `lost_after` within
/// 1 s..7 d, longer than `stop_after` (else the servers count as lost an allocation its agent still runs), and
/// only with `replace: true` (without a replacement there is nothing to wait for); `reconcile` only with
/// `lost_after` (without it nothing comes back to be reconciled).
fn check_disconnect(ctx: &Ctx, path: &str, disconnect: &super::DisconnectSpec) {
    let bounds = [
        ("stop_after", disconnect.stop_after, std::time::Duration::from_secs(2), std::time::Duration::from_secs(24 * 3600)),
        ("lost_after", disconnect.lost_after, std::time::Duration::from_secs(1), std::time::Duration::from_secs(7 * 24 * 3600)),
    ];
    for (field, value, min, max) in bounds {
        if let Some(value) = value
            && !(min..=max).contains(&value.as_std())
        {
            ctx.report(
                &format!("{path}.{field}"),
                format!("{field} {value} is out of range: from {} to {}", crate::Duration(min), crate::Duration(max)),
                Some("e.g. 30s, or leave it out".to_string()),
            );
        }
    }
    if let Some(lost_after) = disconnect.lost_after {
        if !disconnect.replace {
            ctx.report(
                &format!("{path}.lost_after"),
                "lost_after has no effect with `replace: false` (the allocation waits for its node however long)",
                Some("remove one of them".to_string()),
            );
        } else if let Some(stop_after) = disconnect.stop_after
            && lost_after <= stop_after
        {
            ctx.report(
                &format!("{path}.lost_after"),
                format!("lost_after {lost_after} must be longer than stop_after {stop_after}, or the servers count the allocation as lost while its agent still runs it"),
                Some(format!("e.g. lost_after: {}", crate::Duration(stop_after.as_std() * 2))),
            );
        }
    } else if disconnect.reconcile.is_some() {
        ctx.report(
            &format!("{path}.reconcile"),
            "reconcile has no effect without lost_after: a down node's allocations are lost at once, so none comes back beside its replacement",
            Some("add e.g. lost_after: 10m, or remove reconcile".to_string()),
        );
    }
}

/// Longest `shutdown_delay`: a stop must not be held off for long.
const MAX_SHUTDOWN_DELAY: std::time::Duration = std::time::Duration::from_secs(600);

/// One `update:` block as written: `max_parallel` or Kubernetes' `max_surge`/`max_unavailable`, not both.
fn check_update_block(ctx: &Ctx, at: &str, update: &super::UpdateSpec) {
    if update.max_parallel.is_some() && (update.max_surge.is_some() || update.max_unavailable.is_some()) {
        ctx.report(
            &format!("{at}.max_parallel"),
            "max_parallel and max_surge/max_unavailable both say how many allocations roll at once: write one or the other",
            Some("keep max_parallel (Nomad's terms) or max_surge and max_unavailable (Kubernetes' terms)".to_string()),
        );
    }
}

/// The merged update strategy of a group: `min_healthy_time` < `healthy_deadline` < `progress_deadline` (unless
/// that is 0), surge and unavailable not both 0, canaries that fit the count, reported where the value is
/// written (the group's block, else the job's).
fn check_update(ctx: &Ctx, path: &str, spec: &JobSpec, group: &GroupSpec) {
    let written = |field: &str, is_set: fn(&super::UpdateSpec) -> bool| {
        if group.update.as_ref().is_some_and(is_set) { format!("{path}.update.{field}") } else { format!("update.{field}") }
    };
    // Both written as 0 (not a percent that rounds to 0 for a small count: that rolls one at a time).
    let zero = |value: Option<super::CountOrPercent>| value.is_some_and(|value| value.of(100, true) == 0);
    if let Some(block) = group.update.as_ref().or(spec.update.as_ref())
        && zero(block.max_surge)
        && zero(block.max_unavailable)
    {
        ctx.report(
            &written("max_unavailable", |u| u.max_unavailable.is_some()),
            "max_surge and max_unavailable are both 0: no allocation could be replaced",
            Some("e.g. max_surge: 1 (a new allocation starts before an old one stops)".to_string()),
        );
    }
    let Some(strategy) = spec.update_strategy(&group.name) else { return };
    if strategy.min_healthy_time >= strategy.healthy_deadline {
        ctx.report(
            &written("min_healthy_time", |u| u.min_healthy_time.is_some()),
            format!(
                "min_healthy_time {} must be shorter than healthy_deadline {}: no allocation could become healthy in time",
                strategy.min_healthy_time, strategy.healthy_deadline
            ),
            Some(format!("e.g. healthy_deadline: {}", crate::Duration(strategy.min_healthy_time.as_std() * 3))),
        );
    }
    if strategy.progress_deadline.as_std() > std::time::Duration::ZERO && strategy.healthy_deadline >= strategy.progress_deadline {
        ctx.report(
            &written("progress_deadline", |u| u.progress_deadline.is_some()),
            format!(
                "progress_deadline {} must be longer than healthy_deadline {} (or 0: fail at the first unhealthy allocation)",
                strategy.progress_deadline, strategy.healthy_deadline
            ),
            Some(format!("e.g. progress_deadline: {}", crate::Duration(strategy.healthy_deadline.as_std() * 2))),
        );
    }
    if strategy.canary > group.count {
        ctx.report(
            &written("canary", |u| u.canary.is_some()),
            format!("canary {} is more than the group's count {}", strategy.canary, group.count),
            Some(format!("canary: {} replaces the whole group at once after promotion (blue/green)", group.count)),
        );
    }
    if strategy.canary == 0 && strategy.auto_promote {
        ctx.report(
            &written("auto_promote", |u| u.auto_promote.is_some()),
            "auto_promote needs canaries: without canary there is nothing to promote",
            Some("add e.g. canary: 1, or remove auto_promote".to_string()),
        );
    }
    if strategy.canary == 0 && !strategy.canary_tags.is_empty() {
        ctx.report(
            &written("canary_tags", |u| u.canary_tags.is_some()),
            "canary_tags needs canaries: without canary no allocation ever carries them",
            Some("add e.g. canary: 1, or remove canary_tags".to_string()),
        );
    }
    let needs_canaries = [
        ("analysis", strategy.analysis.is_some(), "analysis judges canaries"),
        ("canary_weight", strategy.canary_weight > 0, "canary_weight sends requests to canaries"),
    ];
    for (field, _, what) in needs_canaries.into_iter().filter(|(_, set, _)| *set) {
        let at = if field == "analysis" { written(field, |u| u.analysis.is_some()) } else { written(field, |u| u.canary_weight.is_some()) };
        if strategy.canary == 0 {
            ctx.report(&at, format!("{what}: without canary there are none"), Some("add e.g. canary: 1".to_string()));
        } else if group.services.is_empty() {
            ctx.report(
                &at,
                format!("{what} through the service proxies, but group {} has no service", group.name),
                Some("add a service to the group (services: [{name: …, port: …}])".to_string()),
            );
        }
    }
    if strategy.canary_weight > 99 {
        ctx.report(
            &written("canary_weight", |u| u.canary_weight.is_some()),
            format!("canary_weight {} must be a percentage from 1 to 99", strategy.canary_weight),
            Some("e.g. canary_weight: 10 (a tenth of the requests go to the canaries)".to_string()),
        );
    }
    if let Some(analysis) = &strategy.analysis {
        let at = |field: &str| format!("{}.{field}", written("analysis", |u| u.analysis.is_some()));
        if analysis.samples == 0 {
            ctx.report(&at("samples"), "samples must be at least 1", Some("e.g. samples: 3".to_string()));
        }
        let interval = analysis.interval.as_std();
        if interval < std::time::Duration::from_secs(1) || interval > std::time::Duration::from_secs(600) {
            ctx.report(
                &at("interval"),
                format!("interval {} must be from 1s to 10m", analysis.interval),
                Some("e.g. interval: 10s".to_string()),
            );
        }
        if analysis.max_latency_p99_ratio.is_some_and(|ratio| !(1.0..=1000.0).contains(&ratio)) {
            ctx.report(
                &at("max_latency_p99_ratio"),
                "max_latency_p99_ratio must be at least 1.0 (the canaries may be as slow as the stable instances)",
                Some("e.g. max_latency_p99_ratio: 1.5".to_string()),
            );
        }
    }
    for (index, tag) in strategy.canary_tags.iter().enumerate() {
        if tag.trim().is_empty() {
            ctx.report(&format!("{}[{index}]", written("canary_tags", |u| u.canary_tags.is_some())), "a tag must not be empty", None);
        }
    }
}

/// `min` ≤ `count` ≤ `max`; each metric has the target its type needs; tolerances, periods and policies within
/// Kubernetes' bounds.
fn check_scaling(ctx: &Ctx, path: &str, group: &GroupSpec, scaling: &super::ScalingSpec) {
    let min = scaling.min_count(group.count);
    if scaling.max == 0 {
        ctx.report(&format!("{path}.max"), "scaling.max must be at least 1", Some("e.g. max: 10".to_string()));
    } else if scaling.min.is_some() && min > scaling.max {
        ctx.report(
            &format!("{path}.min"),
            format!("scaling.min {min} is above scaling.max {}", scaling.max),
            Some(format!("e.g. max: {}", min.max(1) * 2)),
        );
    } else if group.count > scaling.max {
        ctx.report(
            &format!("{path}.max"),
            format!("count {} is above scaling.max {}", group.count, scaling.max),
            Some(format!("make max at least {}", group.count)),
        );
    } else if group.count < min {
        ctx.report(
            &format!("{path}.min"),
            format!("count {} is below scaling.min {min}", group.count),
            Some(format!("make min at most {}", group.count)),
        );
    }
    check_scale_to_zero(ctx, path, group, scaling);
    if let Some(predictive) = &scaling.predictive {
        let season = predictive.season.as_std();
        if !(std::time::Duration::from_secs(30)..=std::time::Duration::from_secs(7 * 86_400)).contains(&season) {
            ctx.report(
                &format!("{path}.predictive.season"),
                format!("a season is from 30s to 7d, not {}", predictive.season),
                Some("e.g. season: 24h".to_string()),
            );
        } else if predictive.lead_time.as_std().is_zero() || predictive.lead_time.as_std() >= season {
            ctx.report(
                &format!("{path}.predictive.lead_time"),
                format!("lead_time must be above 0 and shorter than the season ({})", predictive.season),
                Some("e.g. lead_time: 2m".to_string()),
            );
        }
        if !scaling.metrics.is_empty() && scaling.metrics.iter().all(|metric| metric.kind == super::MetricType::LatencyP99) {
            ctx.report_key(
                &format!("{path}.predictive"),
                "predictive scaling forecasts demand (cpu, memory, requests_per_second, prometheus), not latency",
                Some("add a metric of demand, or remove predictive".to_string()),
            );
        }
    }
    if scaling.metrics.is_empty() {
        let autoscaler_only = [
            ("tolerance", scaling.tolerance.is_some()),
            ("behavior", scaling.behavior.is_some()),
            ("cpu_initialization_period", scaling.cpu_initialization_period.is_some()),
            ("initial_readiness_delay", scaling.initial_readiness_delay.is_some()),
            ("enabled", scaling.enabled.is_some() && scaling.scale_to_zero_after.is_none()),
            ("predictive", scaling.predictive.is_some()),
        ];
        for (field, _) in autoscaler_only.iter().filter(|(_, set)| *set) {
            ctx.report_key(
                &format!("{path}.{field}"),
                format!("`{field}` is a setting of the autoscaler, which acts only on a group with `metrics:`"),
                Some("add e.g. metrics: [{type: cpu, target_utilization: 60}]".to_string()),
            );
        }
    }
    if scaling.metrics.len() > MAX_SCALING_METRICS {
        ctx.report(&format!("{path}.metrics"), format!("at most {MAX_SCALING_METRICS} metrics"), None);
    }
    for (index, metric) in scaling.metrics.iter().enumerate() {
        check_scaling_metric(ctx, &format!("{path}.metrics[{index}]"), metric);
    }
    if let Some(tolerance) = scaling.tolerance {
        for (side, value) in [("scale_up", tolerance.scale_up), ("scale_down", tolerance.scale_down)] {
            if !(0.0..1.0).contains(&value) {
                let at = if tolerance.scale_up == tolerance.scale_down {
                    format!("{path}.tolerance")
                } else {
                    format!("{path}.tolerance.{side}")
                };
                ctx.report(
                    &at,
                    format!("a tolerance is a fraction from 0 to below 1, not {value}"),
                    Some("e.g. tolerance: 0.1".to_string()),
                );
                break;
            }
        }
    }
    for (field, period) in
        [("cpu_initialization_period", scaling.cpu_initialization_period), ("initial_readiness_delay", scaling.initial_readiness_delay)]
    {
        if period.is_some_and(|period| period.as_std() > std::time::Duration::from_secs(3600)) {
            ctx.report(&format!("{path}.{field}"), format!("{field} must be at most 1h"), None);
        }
    }
    if let Some(behavior) = &scaling.behavior {
        for (side, rules) in [("scale_up", &behavior.scale_up), ("scale_down", &behavior.scale_down)] {
            let Some(rules) = rules else { continue };
            let at = format!("{path}.behavior.{side}");
            if rules.stabilization_window.is_some_and(|window| window.as_std() > std::time::Duration::from_secs(3600)) {
                ctx.report(
                    &format!("{at}.stabilization_window"),
                    "stabilization_window must be at most 1h (as in Kubernetes)",
                    Some("e.g. stabilization_window: 5m".to_string()),
                );
            }
            let Some(policies) = &rules.policies else { continue };
            if policies.is_empty() {
                ctx.report(
                    &format!("{at}.policies"),
                    "policies must name at least one policy (leave it out for the default)",
                    Some("e.g. policies: [{type: percent, value: 100, period: 15s}]".to_string()),
                );
            }
            if policies.len() > MAX_SCALING_METRICS {
                ctx.report(&format!("{at}.policies"), format!("at most {MAX_SCALING_METRICS} policies"), None);
            }
            for (index, policy) in policies.iter().enumerate() {
                if policy.value == 0 {
                    ctx.report(
                        &format!("{at}.policies[{index}].value"),
                        "a policy's value must be above 0",
                        Some("to stop scaling in this direction, write select_policy: disabled".to_string()),
                    );
                }
                let period = policy.period.as_std();
                if period.is_zero() || period > std::time::Duration::from_secs(1800) {
                    ctx.report(
                        &format!("{at}.policies[{index}].period"),
                        format!("a policy's period must be above 0 and at most 30m (as in Kubernetes), not {}", policy.period),
                        Some("e.g. period: 15s".to_string()),
                    );
                }
            }
        }
    }
}

/// Most `metrics:` entries (and policies per direction) in a `scaling:` block.
const MAX_SCALING_METRICS: usize = 10;

/// Scale to zero: `min: 0` and `scale_to_zero_after` go together, on a group with a service (its proxies
/// hold the first request and wake the group), within bounds.
fn check_scale_to_zero(ctx: &Ctx, path: &str, group: &GroupSpec, scaling: &super::ScalingSpec) {
    use std::time::Duration as StdDuration;
    let min = scaling.min_count(group.count);
    match &scaling.scale_to_zero_after {
        None => {
            if min == 0 && !scaling.metrics.is_empty() {
                ctx.report(
                    &format!("{path}.min"),
                    "the autoscaler takes a group to 0 only when it is idle: min 0 needs scale_to_zero_after",
                    Some("add e.g. scale_to_zero_after: 5m, or make min at least 1".to_string()),
                );
            }
            if scaling.activation_timeout.is_some() {
                ctx.report_key(
                    &format!("{path}.activation_timeout"),
                    "activation_timeout is how long proxies hold a request for a group scaled to zero: it needs scale_to_zero_after",
                    Some("add e.g. scale_to_zero_after: 5m".to_string()),
                );
            }
        }
        Some(after) => {
            if scaling.min != Some(0) {
                ctx.report_key(
                    &format!("{path}.scale_to_zero_after"),
                    "a group scales to zero only with min: 0",
                    Some("add min: 0".to_string()),
                );
            }
            if !(StdDuration::from_secs(10)..=StdDuration::from_secs(86_400)).contains(&after.as_std()) {
                ctx.report(
                    &format!("{path}.scale_to_zero_after"),
                    format!("scale_to_zero_after is from 10s to 24h, not {after}"),
                    Some("e.g. scale_to_zero_after: 5m".to_string()),
                );
            }
            if group.services.is_empty() {
                ctx.report_key(
                    &format!("{path}.scale_to_zero_after"),
                    format!(
                        "group {} has no service: a group at zero is started by the first request through davit's proxy to one of its services",
                        group.name
                    ),
                    Some("add e.g. services: [{name: web, port: http, local_port: 8080}]".to_string()),
                );
            }
            if scaling.predictive.is_some() {
                ctx.report_key(
                    &format!("{path}.predictive"),
                    "predictive scaling does not wake a group scaled to zero (only a request does): they do not go together",
                    Some("remove predictive, or scale_to_zero_after and min: 0".to_string()),
                );
            }
            if let Some(timeout) = &scaling.activation_timeout
                && !(StdDuration::from_secs(1)..=StdDuration::from_secs(600)).contains(&timeout.as_std())
            {
                ctx.report(
                    &format!("{path}.activation_timeout"),
                    format!("activation_timeout is from 1s to 10m, not {timeout}"),
                    Some("e.g. activation_timeout: 30s".to_string()),
                );
            }
        }
    }
}

fn check_scaling_metric(ctx: &Ctx, at: &str, metric: &super::MetricSpec) {
    use super::{MetricTarget, MetricType};
    let kind = metric.kind.as_str();
    let refuse = |field: &str, instead: &str| {
        ctx.report_key(&format!("{at}.{field}"), format!("a {kind} metric has no `{field}`"), Some(instead.to_string()));
    };
    match metric.kind {
        MetricType::Cpu | MetricType::Memory => {
            match metric.target_utilization {
                None => ctx.report_key(
                    &format!("{at}.type"),
                    format!("a {kind} metric needs target_utilization (a percent of what the tasks ask for)"),
                    Some(format!("e.g. {{type: {kind}, target_utilization: 60}}")),
                ),
                Some(0) => {
                    ctx.report(&format!("{at}.target_utilization"), "target_utilization must be above 0", Some("e.g. 60".to_string()))
                }
                Some(percent) if percent > 1000 => {
                    ctx.report(&format!("{at}.target_utilization"), format!("target_utilization {percent} is above 1000 percent"), None)
                }
                Some(_) => {}
            }
            if metric.target.is_some() {
                refuse("target", "write target_utilization: a percent of the request");
            }
        }
        MetricType::RequestsPerSecond | MetricType::LatencyP99 | MetricType::Prometheus => {
            let example = match metric.kind {
                MetricType::LatencyP99 => "target: 250ms",
                _ => "target: 100",
            };
            match (metric.kind, metric.target) {
                (_, None) => ctx.report_key(
                    &format!("{at}.type"),
                    format!("a {kind} metric needs a target (per instance)"),
                    Some(format!("e.g. {example}")),
                ),
                (MetricType::LatencyP99, Some(MetricTarget::Number(_))) => {
                    ctx.report(&format!("{at}.target"), "the target of latency_p99 is a duration", Some(format!("e.g. {example}")))
                }
                (MetricType::LatencyP99, Some(MetricTarget::Duration(d)))
                    if d.as_std().is_zero() || d.as_std() > std::time::Duration::from_secs(600) =>
                {
                    ctx.report(
                        &format!("{at}.target"),
                        format!("the target must be above 0 and at most 10m, not {d}"),
                        Some(format!("e.g. {example}")),
                    )
                }
                (MetricType::LatencyP99, Some(MetricTarget::Duration(_))) => {}
                (_, Some(MetricTarget::Duration(d))) => ctx.report(
                    &format!("{at}.target"),
                    format!("the target of {kind} is a number, not the duration {d}"),
                    Some(format!("e.g. {example}")),
                ),
                (_, Some(MetricTarget::Number(n))) if !(n > 0.0 && n <= 1e9) => ctx.report(
                    &format!("{at}.target"),
                    format!("the target must be above 0 (and at most 1e9), not {n}"),
                    Some(format!("e.g. {example}")),
                ),
                (_, Some(MetricTarget::Number(_))) => {}
            }
            if metric.target_utilization.is_some() {
                refuse("target_utilization", "write target: a value per instance");
            }
        }
    }
    if metric.kind == MetricType::Prometheus {
        match metric.address.as_deref() {
            None => ctx.report_key(
                &format!("{at}.type"),
                "a prometheus metric needs the address of the Prometheus to query",
                Some("e.g. address: http://127.0.0.1:9090".to_string()),
            ),
            Some(address)
                if !(address.starts_with("http://") || address.starts_with("https://"))
                    || address.len() > 256
                    || address.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                ctx.report(
                    &format!("{at}.address"),
                    format!("{address:?} is not an http:// or https:// address (at most 256 characters)"),
                    Some("e.g. address: http://127.0.0.1:9090".to_string()),
                )
            }
            Some(_) => {}
        }
        match metric.query.as_deref() {
            None => ctx.report_key(
                &format!("{at}.type"),
                "a prometheus metric needs a query (PromQL; its value for the whole group)",
                Some("e.g. query: sum(rate(http_requests_total{job=\"web\"}[1m]))".to_string()),
            ),
            Some(query) => {
                if let Err(error) = super::promql::check(query) {
                    ctx.report(&format!("{at}.query"), format!("the query does not parse: {error}"), None);
                }
            }
        }
    } else {
        for (field, set) in [("address", metric.address.is_some()), ("query", metric.query.is_some())] {
            if set {
                refuse(field, "address and query belong to a prometheus metric");
            }
        }
    }
}

fn check_reschedule(ctx: &Ctx, path: &str, policy: &ReschedulePolicy, job_type: JobType) {
    let resolved = policy.resolve(job_type);
    if resolved.delay > resolved.max_delay {
        let (field, what) = if policy.max_delay.is_some() { ("max_delay", "") } else { ("delay", " (the default max_delay)") };
        ctx.report(
            &format!("{path}.{field}"),
            format!(
                "reschedule delay {} is longer than max_delay {}{what}",
                crate::Duration(resolved.delay),
                crate::Duration(resolved.max_delay)
            ),
            Some(format!("make max_delay at least {}, or lower delay", crate::Duration(resolved.delay))),
        );
    }
    if resolved.unlimited {
        if policy.unlimited == Some(true) && (policy.attempts.is_some_and(|attempts| attempts > 0) || policy.interval.is_some()) {
            let field = if policy.attempts.is_some() { "attempts" } else { "interval" };
            ctx.report(
                &format!("{path}.{field}"),
                format!("reschedule `{field}` has no effect when `unlimited` is true"),
                Some("remove it, or set unlimited: false to bound the reschedules".to_string()),
            );
        }
    } else if resolved.attempts > 0 && resolved.interval.is_zero() {
        ctx.report(
            &format!("{path}.{}", if policy.interval.is_some() { "interval" } else { "attempts" }),
            format!("reschedule attempts {} need an interval longer than 0s to count them in", resolved.attempts),
            Some("e.g. interval: 1h, or set unlimited: true".to_string()),
        );
    }
}

fn check_task(ctx: &Ctx, path: &str, task: &TaskSpec, group_label: &str, declared_ports: &[&str]) {
    let name_path = format!("{path}.name");
    if task.name.is_empty() {
        ctx.report(&name_path, format!("{path} needs a name"), Some("add `name: app` to the task".to_string()));
    } else if !task.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || task.name.len() > 63 {
        ctx.report(&name_path, format!("task name `{}` is not valid: use at most 63 letters, digits, '-' and '_'", task.name), None);
    }

    let config_path = format!("{path}.config");
    // With an unknown driver, the config cannot be judged (the driver fell back to `exec`).
    let driver_known = !ctx.is_reported(&format!("{path}.driver"));
    match task.driver {
        _ if !driver_known => {}
        DriverName::Exec => _ = check_config::<ExecConfig>(ctx, &config_path, &task.config),
        DriverName::Container => _ = check_config::<ContainerConfig>(ctx, &config_path, &task.config),
        DriverName::Vm => {
            if let Some(vm) = check_config::<VmConfig>(ctx, &config_path, &task.config) {
                check_vm_ports(ctx, &config_path, &vm, group_label, declared_ports);
            }
        }
    }
    check_port_references_in(ctx, &config_path, &task.config, group_label, declared_ports);

    for (field, key, value) in task.env.iter().map(|(k, v)| ("env", k, v)).chain(task.secret_env.iter().map(|(k, v)| ("secret_env", k, v)))
    {
        let env_path = format!("{path}.{field}.{key}");
        if field == "secret_env" && task.env.contains_key(key) {
            ctx.report_key(&env_path, format!("`{key}` is in both `env` and `secret_env`"), Some("keep it in one of them".to_string()));
        }
        let valid_name = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            ctx.report_key(
                &env_path,
                format!("`{key}` is not a valid environment variable name"),
                Some("use letters, digits and '_', not starting with a digit".to_string()),
            );
        }
        check_port_references(ctx, &env_path, value, group_label, declared_ports);
    }

    if task.resources.cpu < 1 {
        ctx.report(
            &format!("{path}.resources.cpu"),
            format!("cpu must be at least 1 millicore, found `{}`", task.resources.cpu),
            Some("1000 is one core".to_string()),
        );
    }
    if task.resources.memory < 4 {
        ctx.report(&format!("{path}.resources.memory"), format!("memory must be at least 4 MiB, found `{}`", task.resources.memory), None);
    }
    if !KNOWN_SIGNALS.contains(&task.kill_signal.as_str()) {
        let upper = task.kill_signal.to_ascii_uppercase();
        let prefixed = format!("SIG{upper}");
        let hint = if KNOWN_SIGNALS.contains(&upper.as_str()) {
            format!("did you mean `{upper}`?")
        } else if KNOWN_SIGNALS.contains(&prefixed.as_str()) {
            format!("did you mean `{prefixed}`?")
        } else if let Some(signal) = suggest(&task.kill_signal, KNOWN_SIGNALS.iter().copied()) {
            format!("did you mean `{signal}`?")
        } else {
            format!("known signals: {}", KNOWN_SIGNALS.join(", "))
        };
        ctx.report(&format!("{path}.kill_signal"), format!("unknown kill_signal `{}`", task.kill_signal), Some(hint));
    }
    check_templates(ctx, path, task);
    check_checks(ctx, path, task, group_label, declared_ports);
}

/// Templates: at most 16, each parsing, with a destination inside the task directory, unique.
fn check_templates(ctx: &Ctx, path: &str, task: &TaskSpec) {
    if task.templates.len() > 16 {
        ctx.report(&format!("{path}.templates"), format!("a task has at most 16 templates, not {}", task.templates.len()), None);
    }
    let mut destinations: HashMap<&str, usize> = HashMap::new();
    for (index, template) in task.templates.iter().enumerate() {
        let at = format!("{path}.templates[{index}]");
        if template.data.len() > 64 * 1024 {
            ctx.report(&format!("{at}.data"), "a template has at most 64 KiB", None);
        } else if let Err(error) = crate::template::Template::parse(&template.data) {
            let near: String = template.data[error.offset..].chars().take(30).collect();
            ctx.report(&format!("{at}.data"), format!("template: {} (at `{near}`)", error.message), None);
        }
        let destination = template.destination.as_str();
        if !inside_task_dir(destination) {
            ctx.report(
                &format!("{at}.destination"),
                format!("destination `{destination}` must be a path inside the task directory"),
                Some("e.g. `secrets/db.env` (a container sees it at /local/secrets/db.env)".to_string()),
            );
        } else if let Some(first) = destinations.insert(destination, index) {
            ctx.report(&format!("{at}.destination"), format!("templates[{first}] writes `{destination}` already"), None);
        }
        use crate::template::ChangeMode;
        match (template.change_mode, &template.change_signal) {
            (ChangeMode::Signal, None) => {
                ctx.report(&format!("{at}.change_mode"), "`change_mode: signal` needs `change_signal`, e.g. SIGHUP", None);
            }
            (ChangeMode::Signal, Some(signal)) if !KNOWN_SIGNALS.contains(&signal.as_str()) => {
                let known = KNOWN_SIGNALS.join(", ");
                ctx.report(&format!("{at}.change_signal"), format!("unknown signal `{signal}`; known signals: {known}"), None);
            }
            (ChangeMode::Signal, Some(_)) if task.driver == DriverName::Vm => {
                ctx.report(&format!("{at}.change_mode"), "a VM cannot be sent a signal; use `change_mode: restart`", None);
            }
            (ChangeMode::Restart | ChangeMode::Noop, Some(_)) => {
                ctx.report(&format!("{at}.change_signal"), "`change_signal` needs `change_mode: signal`", None);
            }
            _ => {}
        }
    }
}

/// Health checks: unique names, a declared port for `http`/`tcp`/`grpc`, a command for `exec`, timeout < interval.
fn check_checks(ctx: &Ctx, path: &str, task: &TaskSpec, group_label: &str, declared_ports: &[&str]) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, check) in task.checks.iter().enumerate() {
        let check_path = format!("{path}.checks[{index}]");
        if check.name.is_empty() {
            ctx.report(&format!("{check_path}.name"), "the check needs a name", Some("e.g. name: web-http".to_string()));
        } else if !check.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || check.name.len() > 63 {
            ctx.report(
                &format!("{check_path}.name"),
                format!("check name `{}` is not valid: use at most 63 letters, digits, '-' and '_'", check.name),
                None,
            );
        } else if let Some(first) = names.get(check.name.as_str()) {
            ctx.report(
                &format!("{check_path}.name"),
                format!("duplicate check name `{}`; checks[{first}] already uses it", check.name),
                Some("check names must be unique within a task".to_string()),
            );
        } else {
            names.insert(&check.name, index);
        }
        let type_path = format!("{check_path}.type");
        if ctx.is_reported(&type_path) {
            continue;
        }
        match check.check_type {
            CheckType::Http | CheckType::Tcp | CheckType::Grpc => {
                let port_path = format!("{check_path}.port");
                let declared_list = if declared_ports.is_empty() { "none".to_string() } else { declared_ports.join(", ") };
                if check.port.is_empty() {
                    ctx.report(
                        &port_path,
                        format!(
                            "{} check `{}` needs a `port`: a port label of group `{group_label}`",
                            check.check_type.as_str(),
                            check.name
                        ),
                        Some(format!("declared ports: {declared_list}")),
                    );
                } else if !declared_ports.contains(&check.port.as_str()) {
                    let hint = match suggest(&check.port, declared_ports.iter().copied()) {
                        Some(port) => format!("did you mean `{port}`?"),
                        None => format!("declare it in the group: network: {{ports: [{{name: {}}}]}}", check.port),
                    };
                    ctx.report(
                        &port_path,
                        format!("port `{}` is not declared in group `{group_label}`; declared: {declared_list}", check.port),
                        Some(hint),
                    );
                }
                if check.check_type == CheckType::Http && !check.path.starts_with('/') {
                    ctx.report(&format!("{check_path}.path"), format!("http check path must start with '/', found `{}`", check.path), None);
                }
            }
            CheckType::Exec => {
                if check.command.trim().is_empty() {
                    ctx.report(
                        &format!("{check_path}.command"),
                        format!("exec check `{}` needs a `command`", check.name),
                        Some("e.g. command: /bin/sh, args: [-c, \"test -f /tmp/ready\"]".to_string()),
                    );
                }
            }
        }
        if check.interval.as_std().is_zero() {
            ctx.report(&format!("{check_path}.interval"), "check interval must be longer than 0s", Some("e.g. interval: 10s".to_string()));
        } else if check.timeout.as_std().is_zero() {
            ctx.report(&format!("{check_path}.timeout"), "check timeout must be longer than 0s", Some("e.g. timeout: 2s".to_string()));
        } else if check.timeout >= check.interval {
            ctx.report(
                &format!("{check_path}.timeout"),
                format!("check timeout {} must be shorter than its interval {}", check.timeout, check.interval),
                Some("lower timeout or raise interval".to_string()),
            );
        }
        for (field, value) in
            [("failures_before_unhealthy", check.failures_before_unhealthy), ("successes_before_healthy", check.successes_before_healthy)]
        {
            if value == 0 {
                ctx.report(&format!("{check_path}.{field}"), format!("{field} must be at least 1"), None);
            }
        }
    }
}

/// Driver configs are deserialized with the spec deserializer (strictly: drivers get JSON), so they get
/// the same precise errors as the rest of the spec. `required` is the field a config cannot do without.
fn check_driver_config<T: DriverConfig>(ctx: &Ctx, path: &str, config: &Value) -> Option<T> {
    let (driver, required) = (T::DRIVER, T::REQUIRED);
    let example = Some(format!("e.g. {}", T::EXAMPLE));
    if config.is_null() {
        ctx.report(path, format!("the {driver} driver needs `config` with `{required}`"), example);
        return None;
    }
    if !config.is_object() {
        ctx.report(path, format!("config must be a mapping for the {driver} driver, found {}", describe_json(config)), example);
        return None;
    }
    let node = Node::from_json(config, path, ctx);
    match deserialize_node::<T>(&node, path, "config", ctx, true) {
        Ok(parsed) => Some(parsed),
        // Serde stops at the first bad field: the others are checked too, without the ones reported, so that
        // every mistake is listed at once.
        Err(error) if error.reported => check_config_without_reported::<T>(ctx, path, config),
        Err(error) if error.missing_field.is_some() => {
            // `comand: …` already has an "unknown field, did you mean `command`?" error.
            let misspelled = config.as_object().is_some_and(|map| map.keys().any(|key| suggest(key, [required]).is_some()));
            if !misspelled {
                ctx.report(path, format!("the {driver} driver needs `{required}` in config"), example);
            }
            None
        }
        Err(error) if !error.reported => {
            ctx.report(path, format!("config: {}", error.message), None);
            None
        }
        Err(_) => None,
    }
}

/// Deserializes `config` again and again without its top-level fields that have errors, reporting what
/// else is wrong, until it parses (then its values can be checked too) or nothing is left to drop.
fn check_config_without_reported<T: serde::de::DeserializeOwned>(ctx: &Ctx, path: &str, config: &Value) -> Option<T> {
    let mut rest = config.as_object()?.clone();
    loop {
        let before = rest.len();
        rest.retain(|key, _| !ctx.is_reported_within(&format!("{path}.{key}")));
        if rest.len() == before {
            return None;
        }
        let node = Node::from_json(&Value::Object(rest.clone()), path, ctx);
        match deserialize_node::<T>(&node, path, "config", ctx, true) {
            Ok(parsed) => return Some(parsed),
            Err(error) if error.reported => continue,
            // A required field that had an error of its own is missing now: nothing more to learn.
            Err(_) => return None,
        }
    }
}

/// Checks a driver's config: its type, then its own rules ([`DriverConfig::problems`]), each at its field.
fn check_config<T: DriverConfig>(ctx: &Ctx, path: &str, config: &Value) -> Option<T> {
    let parsed = check_driver_config::<T>(ctx, path, config)?;
    for problem in parsed.problems() {
        let at = if problem.field.is_empty() { path.to_string() } else { format!("{path}.{}", problem.field) };
        ctx.report(&at, problem.message, problem.hint);
    }
    Some(parsed)
}

/// The group's port labels for a message: "http, admin", or "none".
fn port_list(declared: &[&str]) -> String {
    if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
}

/// The vm config's port map names ports of the group.
fn check_vm_ports(ctx: &Ctx, path: &str, vm: &VmConfig, group_label: &str, declared_ports: &[&str]) {
    for label in vm.ports.iter().flat_map(|ports| ports.keys()) {
        if !declared_ports.contains(&label.as_str()) {
            ctx.report(
                &format!("{path}.ports.{label}"),
                format!("`{label}` is not a port of group `{group_label}`; its ports: {}", port_list(declared_ports)),
                Some("config.ports maps a port label of the group's `network.ports` to the guest's port".to_string()),
            );
        }
    }
}

fn check_port_references_in(ctx: &Ctx, path: &str, value: &Value, group_label: &str, declared: &[&str]) {
    match value {
        Value::String(text) => check_port_references(ctx, path, text, group_label, declared),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_port_references_in(ctx, &format!("{path}[{index}]"), item, group_label, declared);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                check_port_references_in(ctx, &format!("{path}.{key}"), item, group_label, declared);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Every `${port.NAME}` in `text` must name a port declared in the group.
fn check_port_references(ctx: &Ctx, path: &str, text: &str, group_label: &str, declared: &[&str]) {
    for name in port_references(text) {
        if declared.contains(&name) {
            continue;
        }
        let declared_list = port_list(declared);
        let hint = match suggest(name, declared.iter().copied()) {
            Some(port) => format!("did you mean `{port}`?"),
            None => format!("declare it in the group: network: {{ports: [{{name: {name}}}]}}"),
        };
        ctx.report(path, format!("port `{name}` is not declared in group `{group_label}`; declared: {declared_list}"), Some(hint));
    }
}

fn port_references(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${port.") {
        rest = &rest[start + "${port.".len()..];
        match rest.find('}') {
            Some(end) => {
                names.push(&rest[..end]);
                rest = &rest[end + 1..];
            }
            None => break,
        }
    }
    names
}

fn describe_json(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

enum Problem {
    Missing,
    Invalid(&'static str),
}

/// Whether `name` may name a namespace (or a job): a DNS label. `Err` says why not.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    match dns_label_problem(name) {
        None => Ok(()),
        Some(Problem::Missing) => Err("it is empty".to_string()),
        Some(Problem::Invalid(reason)) => Err(reason.to_string()),
    }
}

/// DNS label rules: lowercase a-z, 0-9 and '-', at most 63 characters, starting with a letter and not
/// ending with '-'.
fn dns_label_problem(name: &str) -> Option<Problem> {
    if name.is_empty() {
        Some(Problem::Missing)
    } else if name.len() > 63 {
        Some(Problem::Invalid("use at most 63 characters"))
    } else if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        Some(Problem::Invalid("use only lowercase letters, digits and '-'"))
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some(Problem::Invalid("it must start with a letter"))
    } else if name.ends_with('-') {
        Some(Problem::Invalid("it must not end with '-'"))
    } else {
        None
    }
}

/// A valid name close to `name`, offered as a hint.
fn dns_label_hint(name: &str) -> Option<String> {
    let mut cleaned = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            cleaned.push(c);
        } else if !cleaned.is_empty() && !cleaned.ends_with('-') {
            cleaned.push('-');
        }
    }
    let cleaned = cleaned.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-');
    let cleaned: String = cleaned.chars().take(63).collect();
    let cleaned = cleaned.trim_end_matches('-');
    (!cleaned.is_empty() && cleaned != name).then(|| format!("try `{cleaned}`"))
}

#[cfg(test)]
mod tests {
    use super::placement::check_version_constraint;
    use super::*;

    #[test]
    fn version_constraints() {
        for good in [">= 1.2, < 2.0", "1.2.3", "= 1.0.0-beta.1", "~> 1.4", "!=2", ">=1.2.3+build.5"] {
            assert_eq!(check_version_constraint(good), Ok(()), "{good}");
        }
        for bad in ["", ">= 1.2 < 2.0", ">=", "1.2.3.4", "1.x", ">= 1.2,", "latest"] {
            assert!(check_version_constraint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_labels() {
        assert!(dns_label_problem("web-1").is_none());
        assert!(dns_label_problem("Web").is_some());
        assert!(dns_label_problem("1web").is_some());
        assert!(dns_label_problem("web-").is_some());
        assert!(dns_label_problem(&"a".repeat(64)).is_some());
        assert_eq!(dns_label_hint("My_Web App").as_deref(), Some("try `my-web-app`"));
    }

    #[test]
    fn port_reference_scanning() {
        assert_eq!(port_references("--port=${port.http} ${port.admin}"), vec!["http", "admin"]);
        assert_eq!(port_references("${port.http"), Vec::<&str>::new());
        assert_eq!(port_references("no ports"), Vec::<&str>::new());
    }
}
