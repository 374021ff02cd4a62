//! Services and upstreams across the whole job: names, port labels, `hash_on`, one service per local port.

use std::collections::HashMap;

use super::{Problem, dns_label_hint, dns_label_problem, port_list};
use crate::spec::parse::{Ctx, suggest};
use crate::spec::{BalanceAlgorithm, HashKey, JobSpec, ServiceMode, ServiceSpec};

/// Services and upstreams, across the whole job: service names (DNS labels, unique), port labels,
/// weights, the algorithm's `hash_on`, and the proxy's local ports (one service per port).
pub(super) fn check_services(ctx: &Ctx, spec: &JobSpec) {
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
fn check_hash_on(ctx: &Ctx, path: &str, service: &ServiceSpec) {
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
