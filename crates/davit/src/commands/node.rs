//! `davit node ls|status|drain|eligibility`.

use std::collections::BTreeMap;
use std::time::Duration;

use davit_api::http::NodeDrainRequest;
use davit_api::objects::{DesiredStatus, DrainStrategy};
use davit_client::Client;

use super::{Progress, header};
use crate::cli::{NodeCommand, OutputFormat};
use crate::output::{json, label, short, table, time};
use crate::{Failure, flag_duration};

pub async fn node(client: &Client, command: NodeCommand) -> Result<(), Failure> {
    match command {
        NodeCommand::Ls { output } => {
            let nodes = client.nodes().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&nodes));
                return Ok(());
            }
            let mut rows = vec![header(&["ID", "NAME", "DC", "STATUS", "ELIGIBILITY", "DRIVERS", "CPU (mc)", "MEMORY (MiB)", "ALLOCS"])];
            for node in &nodes {
                rows.push(vec![
                    short(&node.id),
                    node.name.clone(),
                    node.datacenter.clone(),
                    label(&node.status),
                    if node.draining { format!("{} (draining)", label(&node.eligibility)) } else { label(&node.eligibility) },
                    node.drivers.join(","),
                    format!("{}/{}", node.cpu_allocated, node.cpu_total),
                    format!("{}/{}", node.memory_allocated, node.memory_total),
                    node.running_allocs.to_string(),
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        NodeCommand::Status { id, output } => {
            let node = client.node(&id).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&node));
                return Ok(());
            }
            let mut rows = vec![
                vec!["ID".to_string(), node.id.clone()],
                vec!["Name".to_string(), node.name.clone()],
                vec!["Datacenter".to_string(), node.datacenter.clone()],
                vec!["Status".to_string(), format!("{} {}", label(&node.status), node.status_description).trim().to_string()],
                vec!["Eligibility".to_string(), label(&node.eligibility)],
                vec!["Drain".to_string(), describe_drain(node.drain.as_ref())],
                vec!["Address".to_string(), node.http_addr.clone()],
                vec!["CPU".to_string(), format!("{} millicores", node.resources.cpu)],
                vec!["Memory".to_string(), format!("{} MiB", node.resources.memory)],
                vec!["Ports".to_string(), format!("{}-{}", node.resources.port_range.0, node.resources.port_range.1)],
            ];
            for (name, driver) in &node.drivers {
                let health = if driver.healthy {
                    "healthy"
                } else if driver.detected {
                    "unhealthy"
                } else {
                    "not detected"
                };
                rows.push(vec![format!("Driver {name}"), format!("{health} {}", driver.description).trim().to_string()]);
            }
            print!("{}", table(&rows).lines().map(|l| l.replacen("  ", " = ", 1) + "\n").collect::<String>());
            let attributes: BTreeMap<_, _> = node.attributes.iter().collect();
            println!("\nAttributes");
            let rows: Vec<Vec<String>> = attributes.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]).collect();
            print!("{}", table(&rows));
            Ok(())
        }
        NodeCommand::Drain { node, deadline, ignore_system, disable, detach } => {
            let deadline_ms = match &deadline {
                Some(text) => Some(flag_duration("--deadline", text)?.as_millis() as u64),
                None => None,
            };
            let request = NodeDrainRequest { deadline_ms, ignore_system, enable: !disable };
            client.drain_node(&node, &request).await?;
            let found = client.node(&node).await?;
            if disable {
                println!(
                    "==> drain of node {} canceled; it stays ineligible (`davit node eligibility {} --enable`)",
                    found.name, found.name
                );
                return Ok(());
            }
            println!("==> node {} ({}) is draining{}", found.name, short(&found.id), describe_deadline(deadline_ms));
            if detach {
                return Ok(());
            }
            follow_drain(client, &found.id, ignore_system).await
        }
        NodeCommand::Eligibility { node, enable, disable } => {
            let eligible = enable && !disable;
            client.set_node_eligibility(&node, eligible).await?;
            let found = client.node(&node).await?;
            println!("==> node {} ({}) is {}", found.name, short(&found.id), label(&found.eligibility));
            Ok(())
        }
    }
}

fn describe_deadline(deadline_ms: Option<u64>) -> String {
    match deadline_ms {
        Some(ms) => format!("; whatever is left is stopped after {:?}", Duration::from_millis(ms)),
        None => String::new(),
    }
}

fn describe_drain(drain: Option<&DrainStrategy>) -> String {
    match drain {
        None => "no".to_string(),
        Some(drain) => {
            let mut text = format!("since {}", time(drain.started_at));
            if let Some(deadline) = drain.deadline_at() {
                text.push_str(&format!(", deadline {}", time(deadline)));
            }
            if drain.ignore_system {
                text.push_str(", ignoring system jobs");
            }
            text
        }
    }
}

/// Prints the node's remaining allocations whenever they change, until its drain is over. With
/// `ignore_system`, system jobs' allocations stay and are not counted.
async fn follow_drain(client: &Client, node_id: &str, ignore_system: bool) -> Result<(), Failure> {
    let mut progress = Progress::new();
    let mut index = 0;
    let mut system_jobs: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let allocs = client.node_allocations(node_id, index, Duration::from_secs(2)).await?;
        index = allocs.index;
        let node = client.node(node_id).await?;
        let mut running: Vec<&str> = Vec::new();
        let mut stopping: Vec<&str> = Vec::new();
        for alloc in allocs.value.iter().filter(|alloc| !alloc.client_status.is_terminal()) {
            if ignore_system && alloc.desired_status == DesiredStatus::Run {
                if !system_jobs.contains_key(&alloc.job_name) {
                    let system = match client.job(&alloc.job_name).await {
                        Ok(job) => job.spec.job_type == davit_api::spec::JobType::System,
                        Err(_) => false, // gone: counted as any other allocation
                    };
                    system_jobs.insert(alloc.job_name.clone(), system);
                }
                if system_jobs[&alloc.job_name] {
                    continue;
                }
            }
            match alloc.desired_status {
                DesiredStatus::Run => running.push(&alloc.name),
                DesiredStatus::Stop => stopping.push(&alloc.name),
            }
        }
        let mut line = format!("{} to migrate", running.len());
        if !running.is_empty() {
            line.push_str(&format!(" ({})", running.join(", ")));
        }
        if !stopping.is_empty() {
            line.push_str(&format!(", {} stopping ({})", stopping.len(), stopping.join(", ")));
        }
        progress.show(line);
        if node.drain.is_none() {
            progress.finish();
            if running.is_empty() {
                println!("==> drain of node {} complete; it stays ineligible", node.name);
            } else {
                println!("==> node {} is no longer draining (canceled?); {} allocations remain on it", node.name, running.len());
            }
            return Ok(());
        }
    }
}
