//! Bounds on a job spec, so one request cannot make a server build state it cannot hold: allocations per
//! group, groups, tasks, ports, environment bytes, string lengths, and resources no node could give. The
//! server checks them when a spec arrives (and on scale); an operator raises them with its flags. Each
//! problem is reported at `file:line:col` with the limit and the flag that raises it.

use serde_json::Value;

use super::JobSpec;
use super::parse::Ctx;

/// The limits a server applies to specs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecLimits {
    /// Allocations per group (`count`). `davit server --max-count`.
    pub max_count: u32,
    /// Groups per job. `--max-groups`.
    pub max_groups: usize,
    /// Tasks per group. `--max-tasks`.
    pub max_tasks: usize,
    /// Ports per group. `--max-ports`.
    pub max_ports: usize,
    /// Bytes of `env` and `secret_env` (keys and values) per task. `--max-env-bytes`.
    pub max_env_bytes: usize,
    /// Bytes of any other string; long texts (template `data`, cloud-init `user_data`) may have up to
    /// `max_env_bytes`. `--max-string-bytes`.
    pub max_string_bytes: usize,
    /// The most CPU (millicores) and memory (MiB) one allocation may ask for: the largest node's, when the server
    /// knows nodes (`None`: no node yet, nothing to compare with).
    pub largest_node: Option<(u64, u64)>,
}

impl Default for SpecLimits {
    fn default() -> SpecLimits {
        SpecLimits {
            max_count: 10_000,
            max_groups: 100,
            max_tasks: 50,
            max_ports: 64,
            max_env_bytes: 64 * 1024,
            max_string_bytes: 4 * 1024,
            largest_node: None,
        }
    }
}

/// Whether the field at `path` holds a text (a template's `data`, cloud-init `user_data`) or a task's
/// environment (counted as a whole per task), bounded by `max_env_bytes` rather than `max_string_bytes`. By
/// place in the schema: a key of the same name inside `meta` or a driver `config` gets no such allowance.
fn is_long_text(path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    let in_task = |at: usize| parts.len() > at + 1 && parts[at].starts_with("groups[") && parts[at + 1].starts_with("tasks[");
    match parts.as_slice() {
        [_, _, "env" | "secret_env"] => in_task(0),
        [_, _, template, "data"] => in_task(0) && template.starts_with("templates["),
        [_, _, "config", "cloud_init", "user_data"] => in_task(0),
        _ => false,
    }
}

pub(crate) fn check(spec: &JobSpec, ctx: &Ctx, limits: &SpecLimits) {
    let raise = |flag: &str| Some(format!("lower it, or raise the limit with `davit server --{flag} N`"));
    if spec.groups.len() > limits.max_groups {
        ctx.report(
            &format!("groups[{}]", limits.max_groups),
            format!("the job has {} groups; the limit is {}", spec.groups.len(), limits.max_groups),
            raise("max-groups"),
        );
    }
    for (index, group) in spec.groups.iter().enumerate() {
        let path = format!("groups[{index}]");
        if group.count > limits.max_count {
            ctx.report(
                &format!("{path}.count"),
                format!("count {} is above the limit of {} allocations per group", group.count, limits.max_count),
                raise("max-count"),
            );
        }
        if group.tasks.len() > limits.max_tasks {
            ctx.report(
                &format!("{path}.tasks[{}]", limits.max_tasks),
                format!("group `{}` has {} tasks; the limit is {}", group.name, group.tasks.len(), limits.max_tasks),
                raise("max-tasks"),
            );
        }
        if group.network.ports.len() > limits.max_ports {
            ctx.report(
                &format!("{path}.network.ports[{}]", limits.max_ports),
                format!("group `{}` has {} ports; the limit is {}", group.name, group.network.ports.len(), limits.max_ports),
                raise("max-ports"),
            );
        }
        for (task_index, task) in group.tasks.iter().enumerate() {
            let bytes: usize = task.env.iter().chain(&task.secret_env).map(|(key, value)| key.len() + value.len()).sum();
            if bytes > limits.max_env_bytes {
                ctx.report(
                    &format!("{path}.tasks[{task_index}].env"),
                    format!("the environment of task `{}` has {bytes} bytes; the limit is {}", task.name, limits.max_env_bytes),
                    raise("max-env-bytes"),
                );
            }
        }
        check_resources(ctx, &path, group, limits.largest_node);
    }
    if let Ok(value) = serde_json::to_value(spec) {
        check_strings(ctx, "", false, &value, limits);
    }
}

/// One allocation's resources are the sum of its tasks': checked, and compared with the largest node.
fn check_resources(ctx: &Ctx, path: &str, group: &super::GroupSpec, largest_node: Option<(u64, u64)>) {
    let cpu: u64 = group.tasks.iter().map(|task| u64::from(task.resources.cpu)).sum();
    let memory: u64 = group.tasks.iter().map(|task| u64::from(task.resources.memory)).sum();
    if cpu > u64::from(u32::MAX) || memory > u64::from(u32::MAX) {
        ctx.report(
            &format!("{path}.tasks"),
            format!("the tasks of group `{}` ask for {cpu} millicores and {memory} MiB together: more than any node can have", group.name),
            Some("lower the tasks' `resources`".to_string()),
        );
        return;
    }
    let Some((node_cpu, node_memory)) = largest_node else { return };
    for (what, asked, most, unit) in [("CPU", cpu, node_cpu, "millicores"), ("memory", memory, node_memory, "MiB")] {
        if asked > most {
            ctx.report(
                &format!("{path}.tasks"),
                format!("one allocation of group `{}` needs {asked} {unit} of {what}; the largest node has {most} {unit}", group.name),
                Some("lower the tasks' `resources`, or add a node that large".to_string()),
            );
        }
    }
}

/// Every string below `value` (at `path`); `long`: inside a long-text field.
fn check_strings(ctx: &Ctx, path: &str, long: bool, value: &Value, limits: &SpecLimits) {
    let (limit, flag) = if long { (limits.max_env_bytes, "max-env-bytes") } else { (limits.max_string_bytes, "max-string-bytes") };
    let too_long = |path: &str, what: &str, bytes: usize| {
        ctx.report(
            path,
            format!("{what} has {bytes} bytes; the limit is {limit}"),
            Some(format!("shorten it, or raise the limit with `davit server --{flag} N`")),
        );
    };
    match value {
        Value::String(text) if text.len() > limit => too_long(path, "this string", text.len()),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_strings(ctx, &format!("{path}[{index}]"), long, item, limits);
            }
        }
        Value::Object(fields) => {
            for (name, item) in fields {
                // Map keys are strings too (`env`, `meta`).
                if name.len() > limit {
                    too_long(path, "a key here", name.len());
                }
                let child = super::parse::join_path(path, name);
                let long = long || is_long_text(&child);
                check_strings(ctx, &child, long, item, limits);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_job_spec, parse_job_spec_within};

    fn errors(source: &str, limits: &SpecLimits) -> Vec<String> {
        match parse_job_spec_within(source, "job.yaml", limits) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .0
                .iter()
                .map(|error| format!("{}:{}: {} ({})", error.line, error.column, error.message, error.hint.clone().unwrap_or_default()))
                .collect(),
        }
    }

    const TASK: &str = "      - {name: t, driver: exec, config: {command: /bin/true}}\n";

    #[test]
    fn a_huge_count_is_refused_at_its_line_with_the_limit_and_the_flag() {
        let source = format!("name: big\ngroups:\n  - name: g\n    count: 4294967295\n    tasks:\n{TASK}");
        let found = errors(&source, &SpecLimits::default());
        assert_eq!(
            found,
            [
                "4:12: count 4294967295 is above the limit of 10000 allocations per group (lower it, or raise the limit with `davit server --max-count N`)"
            ]
        );
        assert!(parse_job_spec(&source, "job.yaml").is_ok(), "without limits (the CLI's own check) it parses");
        let raised = SpecLimits { max_count: u32::MAX, ..SpecLimits::default() };
        assert!(errors(&source, &raised).is_empty());
    }

    #[test]
    fn groups_tasks_ports_env_and_strings_are_bounded() {
        let limits =
            SpecLimits { max_groups: 1, max_tasks: 1, max_ports: 1, max_env_bytes: 40, max_string_bytes: 16, ..SpecLimits::default() };
        let source = format!(
            "name: many\ndatacenters: [this-datacenter-name-is-long]\ngroups:\n  - name: a\n    network: {{ports: [{{name: p1}}, {{name: p2}}]}}\n    tasks:\n{TASK}{TASK2}  - name: b\n    tasks:\n{TASK}",
            TASK2 = "      - {name: u, driver: exec, config: {command: /bin/true}, env: {KEY: a-value-that-is-long-but-env}}\n"
        );
        let found = errors(&source, &limits).join("\n");
        for expected in [
            "the job has 2 groups; the limit is 1",
            "group `a` has 2 tasks; the limit is 1",
            "group `a` has 2 ports; the limit is 1",
            "2:15: this string has 28 bytes; the limit is 16",
        ] {
            assert!(found.contains(expected), "{expected:?} missing in:\n{found}");
        }
        assert!(!found.contains("environment"), "31 bytes of env are within 40: {found}");
        let crowded = SpecLimits { max_env_bytes: 20, max_tasks: 2, ..limits };
        assert!(errors(&source, &crowded).join("\n").contains("the environment of task `u` has 31 bytes; the limit is 20"));
    }

    #[test]
    fn long_texts_are_known_by_their_place_in_the_schema() {
        assert!(is_long_text("groups[0].tasks[1].env"));
        assert!(is_long_text("groups[0].tasks[1].templates[2].data"));
        assert!(is_long_text("groups[0].tasks[0].config.cloud_init.user_data"));
        assert!(!is_long_text("groups[0].tasks[0].meta.data"), "a meta key named data");
        assert!(!is_long_text("groups[0].tasks[0].config.env"), "a config key named env");
        assert!(!is_long_text("groups[0].meta.env"));
    }

    #[test]
    fn resources_are_summed_without_wrapping_and_bounded_by_the_largest_node() {
        let source = "name: heavy\ngroups:\n  - name: g\n    tasks:\n      - {name: a, driver: exec, config: {command: /bin/true}, resources: {cpu: 4294967295, memory: 64}}\n      - {name: b, driver: exec, config: {command: /bin/true}, resources: {cpu: 2, memory: 64}}\n";
        let found = errors(source, &SpecLimits::default()).join("\n");
        assert!(found.contains("ask for 4294967297 millicores and 128 MiB together"), "{found}");
        let spec = parse_job_spec(source, "job.yaml").unwrap();
        assert_eq!(spec.groups[0].total_resources().cpu, u32::MAX, "saturates, never wraps to 1");

        let fits = "name: big\ngroups:\n  - name: g\n    tasks:\n      - {name: a, driver: exec, config: {command: /bin/true}, resources: {cpu: 500, memory: 32768}}\n";
        let small_nodes = SpecLimits { largest_node: Some((4000, 16384)), ..SpecLimits::default() };
        let found = errors(fits, &small_nodes).join("\n");
        assert!(found.contains("one allocation of group `g` needs 32768 MiB of memory; the largest node has 16384 MiB"), "{found}");
        assert!(errors(fits, &SpecLimits { largest_node: Some((4000, 65536)), ..SpecLimits::default() }).is_empty());
    }
}
