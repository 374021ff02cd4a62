//! `davit job|alloc|node|service|eval|deployment|scaling|event|rebalance|acl|namespace|var|operator …`: thin commands over the
//! HTTP API (through `davit-client` only), one module per noun; `tls` and `completion` work offline.
//! This module holds what several of them share: table headers, the progress line, and following an
//! allocation until it runs or has migrated.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use davit_api::objects::{Allocation, ClientStatus};
use davit_client::Client;

mod acl;
mod alloc;
mod completion;
mod deployment;
mod eval;
mod event;
mod job;
mod namespace;
mod node;
mod operator;
mod rebalance;
mod scaling;
mod service;
mod tls;
mod var;

pub use acl::acl;
pub use alloc::alloc;
pub use completion::completion;
pub use deployment::deployment;
pub use eval::eval;
pub use event::event;
pub use job::job;
pub use namespace::namespace;
pub use node::node;
pub use operator::operator;
pub use rebalance::rebalance;
pub use scaling::scaling;
pub use service::service;
pub use tls::tls;
pub use var::var;

use crate::Failure;
use crate::output::{short, time};

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// A progress line: rewritten in place on a terminal, printed as a new line elsewhere, only when it changes.
struct Progress {
    tty: bool,
    last: String,
}

impl Progress {
    fn new() -> Progress {
        Progress { tty: std::io::stdout().is_terminal(), last: String::new() }
    }

    fn show(&mut self, line: String) {
        if line == self.last {
            return;
        }
        if self.tty {
            print!("\r\x1b[K    {line}");
            let _ = std::io::stdout().flush();
        } else {
            println!("    {line}");
        }
        self.last = line;
    }

    /// Ends the in-place line before other output.
    fn finish(&self) {
        if self.tty {
            println!();
        }
    }
}

/// Follows the destination allocation of a live migration (blocking queries) until the guest runs there
/// or the migration failed.
async fn wait_migration(client: &Client, destination_id: &str, timeout: Duration) -> Result<(), Failure> {
    use davit_api::objects::MigrationStatus;
    let timed_out = format!("the migration did not complete within {timeout:?}; see `davit alloc status {}`", short(destination_id));
    follow_allocation(client, destination_id, timeout, timed_out, |alloc| {
        let Some(migration) = &alloc.migration else {
            return Some(Err(Failure::internal("the destination allocation lost its migration")));
        };
        match migration.status {
            MigrationStatus::Failed => {
                Some(Err(Failure::user(format!("live migration failed: {}; the source allocation keeps running", migration.description))))
            }
            MigrationStatus::Complete if alloc.client_status == ClientStatus::Running => {
                let report = migration.report.unwrap_or_default();
                println!("Allocation {} runs on node {}: {}", short(&alloc.id), alloc.node_name, report.summary());
                Some(Ok(()))
            }
            _ => None,
        }
    })
    .await
}

/// Follows an allocation with blocking queries until `done` returns an outcome, or fails with `timed_out`
/// after `timeout`.
async fn follow_allocation(
    client: &Client,
    id: &str,
    timeout: Duration,
    timed_out: String,
    mut done: impl FnMut(&Allocation) -> Option<Result<(), Failure>>,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let mut index = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Failure::user(timed_out));
        }
        let answer = client.allocation_blocking(id, index, remaining.min(Duration::from_secs(30))).await?;
        index = answer.index;
        if let Some(outcome) = done(&answer.value) {
            return outcome;
        }
    }
}

/// Waits until the allocation runs; fails if it ends or does not start within `timeout`.
async fn wait_running(client: &Client, id: &str, timeout: Duration) -> Result<(), Failure> {
    let timed_out = format!("allocation {} did not start within {timeout:?}; see `davit alloc status {}`", short(id), short(id));
    follow_allocation(client, id, timeout, timed_out, |alloc| match alloc.client_status {
        ClientStatus::Running => Some(Ok(())),
        _ if alloc.is_terminal() => Some(Err(Failure::user(format!(
            "allocation {} ended ({:?}: {}) instead of running; see `davit alloc status {}`",
            short(id),
            alloc.client_status,
            alloc.client_description,
            short(id)
        )))),
        _ => None,
    })
    .await
}

/// `healthy (all tasks running, all checks passing)`, `unhealthy (check … failing: HTTP 500)`, `unknown`.
fn health_line(healthy: Option<bool>, description: &str) -> String {
    let word = match healthy {
        Some(true) => "healthy",
        Some(false) => "unhealthy",
        None => "unknown",
    };
    if description.is_empty() { word.to_string() } else { format!("{word} ({description})") }
}

fn time_millis(unix_millis: u64) -> String {
    let base = time(unix_millis);
    base.strip_suffix('Z').map(|b| format!("{b}.{:03}Z", unix_millis % 1000)).unwrap_or(base)
}
