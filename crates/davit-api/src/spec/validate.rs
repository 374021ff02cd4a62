//! Semantic checks on a typed spec: names, ranges, references between fields, driver configs, and
//! fields this davit version parses but does not act on yet (rejected, so nothing is silently ignored).
//!
//! Every rule reports through a [`Ctx`], which knows where each path was written when the spec came
//! from text, and stays quiet below a path whose value already had an error.

use std::collections::HashMap;

use serde_json::Value;

use super::drivers::{ContainerConfig, DriverConfig, ExecConfig, VmConfig, inside_task_dir};
use super::parse::{Ctx, Node, deserialize_node, suggest};
use super::{
    BalanceAlgorithm, CheckType, Constraint, ConstraintOperator, DriverName, GroupSpec, HashKey, JobSpec, JobType, MigrateMode,
    ReschedulePolicy, ServiceMode, SpecErrors, TaskSpec,
};

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

const NOT_SUPPORTED_HINT: &str = "remove it; it would be ignored";

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
    if spec.update.is_some() {
        not_supported(ctx, "update");
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
    if group.scaling.is_some() {
        not_supported(ctx, &format!("{path}.scaling"));
    }

    if let Some(reschedule) = &group.reschedule {
        check_reschedule(ctx, &format!("{path}.reschedule"), reschedule, job_type);
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

/// Services and upstreams, across the whole job: service names (DNS labels, unique), port labels,
/// weights, the algorithm's `hash_on`, and the proxy's local ports (one service per port).
fn check_services(ctx: &Ctx, spec: &JobSpec) {
    let mut names: HashMap<&str, String> = HashMap::new();
    // Local port → (where it was first used, the service it serves).
    let mut local_ports: HashMap<u16, (String, &str)> = HashMap::new();
    for (group_index, group) in spec.groups.iter().enumerate() {
        let group_path = format!("groups[{group_index}]");
        let group_label = if group.name.is_empty() { group_path.clone() } else { group.name.clone() };
        let declared: Vec<&str> = group.network.ports.iter().map(|port| port.name.as_str()).filter(|name| !name.is_empty()).collect();
        for (index, service) in group.services.iter().enumerate() {
            let path = format!("{group_path}.services[{index}]");
            let name_path = format!("{path}.name");
            match dns_label_problem(&service.name) {
                Some(Problem::Missing) => {
                    ctx.report(&name_path, "the service needs a name", Some("e.g. name: web (found as web.service.davit)".to_string()))
                }
                Some(Problem::Invalid(reason)) => {
                    ctx.report(&name_path, format!("service name `{}` is not valid: {reason}", service.name), dns_label_hint(&service.name))
                }
                None => match names.get(service.name.as_str()) {
                    Some(first) => ctx.report(
                        &name_path,
                        format!("duplicate service name `{}`; {first} already uses it", service.name),
                        Some(format!("a service name is one DNS name ({}.service.davit): use it once", service.name)),
                    ),
                    None => drop(names.insert(&service.name, path.clone())),
                },
            }
            let service_label = if service.name.is_empty() { path.clone() } else { format!("service `{}`", service.name) };
            let declared_list = port_list(&declared);
            let port_path = format!("{path}.port");
            if service.port.is_empty() {
                ctx.report(
                    &port_path,
                    format!("{service_label} needs a `port`: a port label of group `{group_label}`"),
                    Some(format!("declared ports: {declared_list}")),
                );
            } else if !declared.contains(&service.port.as_str()) {
                let hint = match suggest(&service.port, declared.iter().copied()) {
                    Some(port) => format!("did you mean `{port}`?"),
                    None => format!("declare it in the group: network: {{ports: [{{name: {}}}]}}", service.port),
                };
                ctx.report(
                    &port_path,
                    format!("port `{}` is not declared in group `{group_label}`; declared: {declared_list}", service.port),
                    Some(hint),
                );
            }
            if !(1..=100).contains(&service.weight) {
                ctx.report(&format!("{path}.weight"), format!("weight must be from 1 to 100, found `{}`", service.weight), None);
            }
            for (tag_index, tag) in service.tags.iter().enumerate() {
                if tag.trim().is_empty() {
                    ctx.report(&format!("{path}.tags[{tag_index}]"), "a tag must not be empty", None);
                }
            }
            check_hash_on(ctx, &path, service);
            if let Some(port) = service.local_port {
                let port_path = format!("{path}.local_port");
                if port == 0 {
                    ctx.report(&port_path, "local_port must be a port number from 1 to 65535, found `0`", None);
                } else if !service.name.is_empty() {
                    claim_local_port(ctx, &mut local_ports, port, port_path, &service.name);
                }
            }
        }
        for (task_index, task) in group.tasks.iter().enumerate() {
            let mut upstreams: HashMap<&str, usize> = HashMap::new();
            for (index, upstream) in task.upstreams.iter().enumerate() {
                let path = format!("{group_path}.tasks[{task_index}].upstreams[{index}]");
                let service_path = format!("{path}.service");
                match dns_label_problem(&upstream.service) {
                    Some(Problem::Missing) => ctx.report(
                        &service_path,
                        "the upstream needs a `service`: the name of the service to reach",
                        Some("e.g. upstreams: [{service: api, local_port: 9000}]".to_string()),
                    ),
                    Some(Problem::Invalid(reason)) => ctx.report(
                        &service_path,
                        format!("service name `{}` is not valid: {reason}", upstream.service),
                        dns_label_hint(&upstream.service),
                    ),
                    None => match upstreams.get(upstream.service.as_str()) {
                        Some(first) => ctx.report(
                            &service_path,
                            format!("duplicate upstream `{}`; upstreams[{first}] already uses it", upstream.service),
                            Some("one local port per service is enough".to_string()),
                        ),
                        None => drop(upstreams.insert(&upstream.service, index)),
                    },
                }
                let port_path = format!("{path}.local_port");
                if upstream.local_port == 0 {
                    let what =
                        if upstream.service.is_empty() { "the upstream".to_string() } else { format!("upstream `{}`", upstream.service) };
                    ctx.report(
                        &port_path,
                        format!("{what} needs a `local_port` from 1 to 65535: where the task reaches it"),
                        Some("e.g. upstreams: [{service: api, local_port: 9000}]".to_string()),
                    );
                } else if !upstream.service.is_empty() {
                    claim_local_port(ctx, &mut local_ports, upstream.local_port, port_path, &upstream.service);
                }
            }
        }
    }
}

/// One local port of the agent's proxy serves one service; a second service on it is an error.
fn claim_local_port<'s>(ctx: &Ctx, ports: &mut HashMap<u16, (String, &'s str)>, port: u16, path: String, service: &'s str) {
    match ports.get(&port) {
        Some((first, owner)) if *owner != service => ctx.report(
            &path,
            format!("local_port {port} is already used by {first} for service `{owner}`"),
            Some("each local port of the agent's proxy serves one service; pick another port".to_string()),
        ),
        Some(_) => {}
        None => drop(ports.insert(port, (path, service))),
    }
}

/// `consistent_hash` needs `hash_on` (and a tcp service can only hash on the source IP); the other
/// algorithms take none.
fn check_hash_on(ctx: &Ctx, path: &str, service: &super::ServiceSpec) {
    let algorithm_path = format!("{path}.algorithm");
    if ctx.is_reported(&algorithm_path) || ctx.is_reported(&format!("{path}.mode")) {
        return;
    }
    let hash_path = format!("{path}.hash_on");
    let example = "e.g. hash_on: header:X-User, cookie:session or source_ip";
    match (&service.hash_on, service.algorithm) {
        (None, BalanceAlgorithm::ConsistentHash) => {
            ctx.report(&algorithm_path, "consistent_hash needs `hash_on`: what to route by".to_string(), Some(example.to_string()))
        }
        (None, _) => {}
        (Some(_), algorithm) if algorithm != BalanceAlgorithm::ConsistentHash => ctx.report(
            &hash_path,
            format!("hash_on only applies to algorithm consistent_hash; this service uses {}", algorithm.as_str()),
            Some("remove it, or set algorithm: consistent_hash".to_string()),
        ),
        (Some(text), _) => match HashKey::parse(text) {
            Err(reason) => ctx.report(&hash_path, format!("hash_on `{text}` is not valid: {reason}"), Some(example.to_string())),
            Ok(HashKey::Header(_) | HashKey::Cookie(_)) if service.mode == ServiceMode::Tcp => ctx.report(
                &hash_path,
                format!("a tcp service cannot hash on `{text}`: it sees no headers or cookies"),
                Some("use hash_on: source_ip, or mode: http".to_string()),
            ),
            Ok(_) => {}
        },
    }
}

/// Reschedule: `delay` ≤ `max_delay`; bounded attempts need an interval; `unlimited` excludes bounds.
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

fn check_constraints(ctx: &Ctx, path: &str, constraints: &[Constraint]) {
    for (index, constraint) in constraints.iter().enumerate() {
        let path = format!("{path}[{index}]");
        match constraint.operator {
            ConstraintOperator::DistinctHosts => check_distinct_hosts(ctx, &path, constraint),
            ConstraintOperator::DistinctProperty => {
                if constraint.attribute.trim().is_empty() {
                    ctx.report(
                        &format!("{path}.attribute"),
                        "distinct_property needs the attribute whose values it counts allocations per",
                        Some("e.g. {operator: distinct_property, attribute: \"${attr.rack}\", value: \"2\"}".to_string()),
                    );
                }
                check_attribute(ctx, &format!("{path}.attribute"), &constraint.attribute, "constraint");
                check_distinct_property_value(ctx, &format!("{path}.value"), &constraint.value);
            }
            _ => check_constraint(ctx, &path, constraint, "constraint"),
        }
    }
}

/// `distinct_hosts` takes neither attribute nor value (Nomad's `value: "true"` is accepted).
fn check_distinct_hosts(ctx: &Ctx, path: &str, constraint: &Constraint) {
    if !constraint.attribute.trim().is_empty() {
        ctx.report(
            &format!("{path}.attribute"),
            "distinct_hosts takes no attribute: it allows one allocation per node",
            Some("remove `attribute`, or use operator distinct_property to limit allocations per attribute value".to_string()),
        );
    }
    if !matches!(constraint.value.trim(), "" | "true") {
        ctx.report(
            &format!("{path}.value"),
            format!("distinct_hosts takes no value, found `{}`", constraint.value),
            Some("remove `value`; to allow several allocations per node, remove the constraint".to_string()),
        );
    }
}

/// The `value` of `distinct_property`: empty (1) or how many allocations one attribute value may hold.
fn check_distinct_property_value(ctx: &Ctx, path: &str, value: &str) {
    let value = value.trim();
    if !value.is_empty() && !value.parse::<u32>().is_ok_and(|limit| limit >= 1) {
        ctx.report(
            path,
            format!("distinct_property value must be a whole number of at least 1 (allocations per attribute value), found `{value}`"),
            Some("e.g. value: \"2\" allows two allocations per value; leave it out for one".to_string()),
        );
    }
}

/// An attribute expression such as `${attr.zone}`; `what` names the field's owner in messages.
fn check_attribute(ctx: &Ctx, path: &str, attribute: &str, what: &str) {
    let trimmed = attribute.trim();
    if trimmed.is_empty() {
        ctx.report(path, format!("the {what} needs an attribute"), Some("e.g. attribute: \"${node.arch}\"".to_string()));
    } else if !(trimmed.starts_with("${") && trimmed.ends_with('}') && trimmed.len() > 3) {
        let inner = trimmed.trim_start_matches("${").trim_start_matches('$').trim_end_matches('}');
        ctx.report(
            path,
            format!("{what} attribute must look like `${{node.arch}}`, found `{attribute}`"),
            Some(format!("write \"${{{}}}\"", with_namespace(inner))),
        );
    } else {
        // Only `node.*` (node fields, then attributes) and `attr.*`/`meta.*` are looked up: anything else never matches.
        let inner = &trimmed[2..trimmed.len() - 1];
        if !has_namespace(inner) {
            ctx.report(
                path,
                format!("{what} attribute `{attribute}` names neither a node field (node.name, node.class, …) nor a node attribute (attr.NAME or meta.NAME)"),
                Some(format!("write \"${{{}}}\"", with_namespace(inner))),
            );
        }
    }
}

fn has_namespace(inner: &str) -> bool {
    ["node.", "attr.", "meta."].iter().any(|namespace| inner.starts_with(namespace))
}

/// `zone` → `attr.zone`; a name with a namespace stays.
fn with_namespace(inner: &str) -> String {
    if has_namespace(inner) { inner.to_string() } else { format!("attr.{inner}") }
}

/// One node test (a constraint, or the match of a node affinity): attribute, value, regexp, version.
fn check_constraint(ctx: &Ctx, path: &str, constraint: &Constraint, what: &str) {
    {
        check_attribute(ctx, &format!("{path}.attribute"), &constraint.attribute, what);
        let operator = operator_name(constraint.operator);
        let value_path = format!("{path}.value");
        match constraint.operator {
            ConstraintOperator::IsSet | ConstraintOperator::IsNotSet => {}
            ConstraintOperator::DistinctHosts | ConstraintOperator::DistinctProperty => {}
            _ if constraint.value.is_empty() => {
                ctx.report(&value_path, format!("the {what} needs a value for operator `{operator}`"), None);
            }
            ConstraintOperator::Regexp => {
                if let Err(error) = regex::Regex::new(&constraint.value) {
                    ctx.report(
                        &value_path,
                        format!("invalid regular expression `{}`: {}", constraint.value, regex_reason(&error)),
                        Some("the value of a `regexp` constraint is a Rust regex, e.g. \"^x86_64|aarch64$\"".to_string()),
                    );
                }
            }
            ConstraintOperator::Version => {
                if let Err(reason) = check_version_constraint(&constraint.value) {
                    ctx.report(
                        &value_path,
                        format!("invalid version constraint `{}`: {reason}", constraint.value),
                        Some("write comma-separated comparisons, e.g. \">= 1.2, < 2.0\"".to_string()),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Group placement rules: labels, node affinities, spreads, and alloc (anti-)affinities.
fn check_placement(ctx: &Ctx, path: &str, group: &GroupSpec, spec: &JobSpec) {
    for key in group.labels.keys() {
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '=' || c == ',') {
            ctx.report_key(
                &format!("{path}.labels.{key}"),
                format!("label name `{key}` is not valid: use a non-empty name without spaces, '=' or ','"),
                Some("e.g. labels: {tier: web}".to_string()),
            );
        }
    }
    for (index, affinity) in group.affinities.iter().enumerate() {
        let item = format!("{path}.affinities[{index}]");
        if affinity.operator.is_distinct() {
            ctx.report(
                &format!("{item}.operator"),
                format!("operator `{}` is not a node test and cannot be an affinity", operator_name(affinity.operator)),
                Some("put distinct_hosts and distinct_property under `constraints:`".to_string()),
            );
        } else {
            check_constraint(ctx, &item, &affinity.as_constraint(), "affinity");
        }
        if affinity.weight == 0 || !(-100..=100).contains(&affinity.weight) {
            ctx.report(
                &format!("{item}.weight"),
                format!("affinity weight must be from -100 to 100 and not 0, found `{}`", affinity.weight),
                Some("positive weights attract, negative weights repel; e.g. weight: 50".to_string()),
            );
        }
    }
    let mut spread_attributes: HashMap<&str, usize> = HashMap::new();
    for (index, spread) in group.spread.iter().enumerate() {
        let item = format!("{path}.spread[{index}]");
        let attribute_path = format!("{item}.attribute");
        check_attribute(ctx, &attribute_path, &spread.attribute, "spread");
        if !ctx.is_reported(&attribute_path) {
            match spread_attributes.get(spread.attribute.trim()) {
                Some(first) => ctx.report(
                    &attribute_path,
                    format!("spread[{first}] already spreads over `{}`", spread.attribute),
                    Some("one spread per attribute: merge their targets".to_string()),
                ),
                None => drop(spread_attributes.insert(spread.attribute.trim(), index)),
            }
        }
        if !(1..=100).contains(&spread.weight) {
            ctx.report(&format!("{item}.weight"), format!("spread weight must be from 1 to 100, found `{}`", spread.weight), None);
        }
        let mut sum: u64 = 0;
        for (value, percent) in &spread.targets {
            if value.trim().is_empty() {
                ctx.report_key(&format!("{item}.targets.{value}"), "a spread target needs an attribute value", None);
            }
            if *percent > 100 {
                ctx.report(
                    &format!("{item}.targets.{value}"),
                    format!("spread target `{value}` must be a percentage from 0 to 100, found `{percent}`"),
                    None,
                );
            }
            sum += u64::from(*percent);
        }
        if sum > 100 && spread.targets.values().all(|percent| *percent <= 100) {
            let listed: Vec<String> = spread.targets.iter().map(|(value, percent)| format!("{value}: {percent}")).collect();
            ctx.report(
                &format!("{item}.targets"),
                format!("spread targets add up to {sum}%, more than 100% ({})", listed.join(", ")),
                Some("lower the percentages; values not listed share what is left of 100%".to_string()),
            );
        }
    }
    for (field, terms) in [("alloc_affinities", &group.alloc_affinities), ("anti_affinities", &group.anti_affinities)] {
        for (index, term) in terms.iter().enumerate() {
            check_alloc_affinity(ctx, &format!("{path}.{field}[{index}]"), term, spec);
        }
    }
}

/// One alloc affinity or anti-affinity: a non-empty selector naming existing groups, a topology
/// attribute, and either `required` or a weight.
fn check_alloc_affinity(ctx: &Ctx, path: &str, term: &super::AllocAffinity, spec: &JobSpec) {
    let example = "e.g. {group: db}, {job: cache}, or {labels: {tier: web}}";
    if term.job.is_none() && term.group.is_none() && term.labels.is_empty() {
        ctx.report(
            path,
            "the selector is empty: name the allocations with `job`, `group` or `labels`",
            Some(format!("{example}; `group` alone means a group of this job")),
        );
    }
    for (field, name) in [("job", &term.job), ("group", &term.group)] {
        let Some(name) = name else { continue };
        let field_path = format!("{path}.{field}");
        match dns_label_problem(name) {
            Some(Problem::Missing) => ctx.report(&field_path, format!("`{field}` must not be empty"), Some(example.to_string())),
            Some(Problem::Invalid(reason)) => {
                ctx.report(&field_path, format!("{field} name `{name}` is not valid: {reason}"), dns_label_hint(name))
            }
            None => {}
        }
    }
    let same_job = term.job.as_ref().is_none_or(|job| *job == spec.name);
    if let Some(group) = term.group.as_ref().filter(|group| same_job && dns_label_problem(group).is_none())
        && spec.group(group).is_none()
    {
        let names: Vec<&str> = spec.groups.iter().map(|group| group.name.as_str()).filter(|name| !name.is_empty()).collect();
        let hint = match suggest(group, names.iter().copied()) {
            Some(name) => format!("did you mean `{name}`? (add `job:` to select a group of another job)"),
            None => format!("this job's groups: {}; add `job:` to select a group of another job", names.join(", ")),
        };
        ctx.report(&format!("{path}.group"), format!("job `{}` has no group `{group}`", spec.name), Some(hint));
    }
    for key in term.labels.keys() {
        if key.is_empty() {
            ctx.report_key(&format!("{path}.labels.{key}"), "a label name must not be empty", None);
        }
    }
    if let Some(topology) = &term.topology {
        check_attribute(ctx, &format!("{path}.topology"), topology, "topology");
    }
    match term.weight {
        Some(weight) if term.required => ctx.report(
            &format!("{path}.weight"),
            format!("weight {weight} has no effect with `required: true`"),
            Some("remove `weight` (a required rule filters nodes), or remove `required` for a preference".to_string()),
        ),
        Some(weight) if !(1..=100).contains(&weight) => {
            ctx.report(&format!("{path}.weight"), format!("weight must be from 1 to 100, found `{weight}`"), None)
        }
        _ => {}
    }
}

fn operator_name(operator: ConstraintOperator) -> String {
    match serde_json::to_value(operator) {
        Ok(Value::String(name)) => name,
        _ => format!("{operator:?}"),
    }
}

/// The one-line reason of a regex error (its `Display` draws a multi-line caret diagram).
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().last().unwrap_or_default().trim().to_string())
}

/// Checks `>= 1.2, < 2.0`-style constraints: comma-separated clauses of an optional operator
/// (`=`, `!=`, `>`, `>=`, `<`, `<=`, `~>`) and a version of one to three numbers with an optional
/// `-prerelease` and `+build` suffix.
pub(crate) fn check_version_constraint(text: &str) -> Result<(), String> {
    for (index, clause) in text.split(',').enumerate() {
        let clause = clause.trim();
        let number = index + 1;
        if clause.is_empty() {
            return Err(format!("clause {number} is empty"));
        }
        let operator_len = ["~>", ">=", "<=", "!=", "=", ">", "<"].iter().find(|op| clause.starts_with(**op)).map_or(0, |op| op.len());
        let version = clause[operator_len..].trim();
        if version.is_empty() {
            return Err(format!("`{clause}` has no version"));
        }
        let core = version.split(['-', '+']).next().unwrap_or_default();
        let suffix_ok = version[core.len()..].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
        let parts: Vec<&str> = core.split('.').collect();
        let core_ok = parts.len() <= 3 && parts.iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        if !core_ok || !suffix_ok {
            let reason = if version.contains(' ') { " (separate comparisons with commas)" } else { "" };
            return Err(format!("`{version}` is not a version like 1.2.3{reason}"));
        }
    }
    Ok(())
}

fn not_supported(ctx: &Ctx, path: &str) {
    let field = path.rsplit('.').next().unwrap_or(path);
    ctx.report_key(path, format!("`{field}` is not supported by this davit version yet"), Some(NOT_SUPPORTED_HINT.to_string()));
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
