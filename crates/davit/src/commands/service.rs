//! `davit service ls|info`.

use davit_client::Client;

use super::{header, health_line};
use crate::Failure;
use crate::cli::{OutputFormat, ServiceCommand};
use crate::output::{json, short, table};

pub async fn service(client: &Client, command: ServiceCommand) -> Result<(), Failure> {
    match command {
        ServiceCommand::Ls { output } => {
            let services = client.services().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&services));
                return Ok(());
            }
            if services.is_empty() {
                println!("No services. Declare one in a group: services: [{{name: web, port: http}}] (see examples/web-service.yaml).");
                return Ok(());
            }
            let mut rows = vec![header(&["NAME", "JOB", "GROUP", "MODE", "ALGORITHM", "LOCAL PORT", "HEALTHY/INSTANCES", "TAGS"])];
            for service in &services {
                rows.push(vec![
                    service.name.clone(),
                    service.job_name.clone(),
                    service.group.clone(),
                    service.mode.as_str().to_string(),
                    service.algorithm.as_str().to_string(),
                    service.local_port.map_or_else(|| "-".to_string(), |port| port.to_string()),
                    format!("{}/{}", service.healthy, service.instances),
                    if service.tags.is_empty() { "-".to_string() } else { service.tags.join(",") },
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        ServiceCommand::Info { name, output } => {
            let service = client.service(&name, true).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&service));
                return Ok(());
            }
            let healthy = service.instances.iter().filter(|instance| instance.healthy).count();
            let algorithm = match &service.hash_on {
                Some(hash_on) => format!("{} on {hash_on}", service.algorithm.as_str()),
                None => service.algorithm.as_str().to_string(),
            };
            let rows = vec![
                vec!["Name".to_string(), service.name.clone()],
                vec!["Job".to_string(), format!("{} (group {}, port {})", service.job_name, service.group, service.port_label)],
                vec!["Mode".to_string(), service.mode.as_str().to_string()],
                vec!["Algorithm".to_string(), algorithm],
                vec![
                    "Local port".to_string(),
                    service
                        .local_port
                        .map_or_else(|| "- (DNS and upstreams only)".to_string(), |port| format!("{port} on every agent's proxy")),
                ],
                vec!["DNS".to_string(), format!("{}.service.davit (A, SRV)", service.name)],
                vec!["Tags".to_string(), if service.tags.is_empty() { "-".to_string() } else { service.tags.join(",") }],
                vec!["Instances".to_string(), format!("{healthy} healthy of {}", service.instances.len())],
            ];
            print!("{}", table(&rows).lines().map(|l| l.replacen("  ", " = ", 1) + "\n").collect::<String>());
            if service.instances.is_empty() {
                println!("\nNo instances: no allocation of job {} runs yet.", service.job_name);
                return Ok(());
            }
            println!("\nInstances");
            let mut rows =
                vec![header(&["ALLOC", "NAME", "NODE", "ADDRESS", "WEIGHT", "HEALTH", "REQUESTS", "ERRORS", "ACTIVE", "LATENCY"])];
            for instance in &service.instances {
                let health = if instance.healthy { "healthy".to_string() } else { health_line(Some(false), &instance.health_description) };
                let stats = instance.stats.clone().unwrap_or_default();
                rows.push(vec![
                    short(&instance.alloc_id),
                    instance.alloc_name.clone(),
                    instance.node_name.clone(),
                    format!("{}:{}", instance.address, instance.port),
                    instance.weight.to_string(),
                    health,
                    stats.requests.to_string(),
                    stats.errors.to_string(),
                    stats.active.to_string(),
                    format!("{:.2}ms{}", stats.latency_ms, if stats.ejected { " (ejected)" } else { "" }),
                ]);
            }
            print!("{}", table(&rows));
            for error in &service.stats_errors {
                println!("note: no proxy counters from {error}");
            }
            Ok(())
        }
    }
}
