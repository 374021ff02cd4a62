//! `davit namespace apply|ls|status|delete`.

use davit_api::namespace::{ApplyNamespaceRequest, NamespaceStatus, Quota};
use davit_client::Client;

use super::header;
use crate::Failure;
use crate::cli::{NamespaceCommand, OutputFormat};
use crate::output::{json, table};

pub async fn namespace(client: &Client, command: NamespaceCommand) -> Result<(), Failure> {
    match command {
        NamespaceCommand::Apply { name, description, cpu, memory, allocs, max_count } => {
            let quota = Quota { cpu, memory, allocations: allocs, max_count };
            let quota = (quota != Quota::default()).then_some(quota);
            let status = client.apply_namespace(&name, &ApplyNamespaceRequest { description, quota }).await?;
            println!("==> namespace {} applied (index {})", status.namespace.name, status.namespace.modify_index);
            Ok(())
        }
        NamespaceCommand::Ls { output } => {
            let namespaces = client.namespaces().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&namespaces));
                return Ok(());
            }
            let mut rows = vec![header(&["NAME", "JOBS", "CPU (mc)", "MEMORY (MiB)", "ALLOCS", "DESCRIPTION"])];
            for status in &namespaces {
                let quota = status.namespace.quota.unwrap_or_default();
                rows.push(vec![
                    status.namespace.name.clone(),
                    status.jobs.to_string(),
                    used_of(status.usage.cpu, quota.cpu),
                    used_of(status.usage.memory, quota.memory),
                    used_of(status.usage.allocations, quota.allocations),
                    status.namespace.description.clone(),
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        NamespaceCommand::Status { name, output } => {
            let status = client.namespace_status(&name).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&status));
                return Ok(());
            }
            print_status(&status);
            Ok(())
        }
        NamespaceCommand::Delete { name } => {
            client.delete_namespace(&name).await?;
            println!("==> namespace {name} deleted");
            Ok(())
        }
    }
}

/// `used/limit`, or `used` without a limit.
fn used_of(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => format!("{used}/{limit}"),
        None => used.to_string(),
    }
}

fn print_status(status: &NamespaceStatus) {
    let quota = status.namespace.quota.unwrap_or_default();
    println!("Name        = {}", status.namespace.name);
    println!("Description = {}", status.namespace.description);
    println!("Jobs        = {}", status.jobs);
    println!("Quota (used/limit; no limit where only usage shows):");
    println!("  cpu         {} millicores", used_of(status.usage.cpu, quota.cpu));
    println!("  memory      {} MiB", used_of(status.usage.memory, quota.memory));
    println!("  allocations {}", used_of(status.usage.allocations, quota.allocations));
    if let Some(max_count) = quota.max_count {
        println!("  max count   {max_count} per group");
    }
}
