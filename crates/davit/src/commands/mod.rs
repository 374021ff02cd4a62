//! `davit job|alloc|node|eval …`: thin commands over the HTTP API (through `davit-client` only).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use davit_api::http::{ExecQuery, JobStatusKind, JobStatusResponse, LogsQuery, NodeDrainRequest};
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, DrainStrategy, TaskEvent};
use davit_client::Client;
use futures_util::StreamExt;

mod acl;
mod namespace;
mod tls;
mod var;

pub use acl::acl;
pub use namespace::namespace;
pub use tls::tls;
pub use var::{operator, var};

use crate::Failure;
use crate::cli::{AllocCommand, EvalCommand, EventCommand, JobCommand, NodeCommand, OutputFormat, RebalanceArgs, ServiceCommand};
use crate::output::{json, label, short, table, time};

pub async fn job(client: &Client, command: JobCommand) -> Result<(), Failure> {
    match command {
        JobCommand::Run { file, detach, timeout, output } => {
            let source = read_spec(&file)?;
            let filename = file.display().to_string();
            let spec = parse_spec(&source, &filename)?;
            let client = &in_spec_namespace(client, &spec);
            let response = client.register_job(&source, &filename).await?;
            if output.format == OutputFormat::Json && detach {
                println!("{}", json(&response));
                return Ok(());
            }
            for warning in &response.warnings {
                eprintln!("warning: {warning}");
            }
            let what = if response.changed { "registered" } else { "unchanged at" };
            println!(
                "==> job {} {what} version {} (evaluation {})",
                spec.name,
                response.version,
                response.eval_id.as_deref().map(short).unwrap_or_default()
            );
            if detach {
                return Ok(());
            }
            let timeout = parse_duration(&timeout, "--timeout")?;
            let status = monitor(client, &spec.name, response.version, timeout).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&status));
            } else {
                print_allocations(&status, Some(response.version));
            }
            Ok(())
        }
        JobCommand::Validate { file } => {
            let source = read_spec(&file)?;
            let spec = parse_spec(&source, &file.display().to_string())?;
            println!("job {} is valid ({} groups)", spec.name, spec.groups.len());
            Ok(())
        }
        JobCommand::Plan { file, verbose, output } => {
            let source = read_spec(&file)?;
            let filename = file.display().to_string();
            let spec = parse_spec(&source, &filename)?;
            let plan = in_spec_namespace(client, &spec).plan_job(&source, &filename).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&plan));
            } else {
                print_plan(&plan, verbose);
            }
            let missing: u32 = plan.groups.values().filter_map(|group| group.failure.as_ref()).map(|failure| failure.missing).sum();
            match missing {
                0 => Ok(()),
                _ => Err(Failure::user(format!("{missing} allocation(s) of job {} could not be placed", plan.job_name))),
            }
        }
        JobCommand::Status { name: None, output } => {
            let jobs = client.jobs().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&jobs));
                return Ok(());
            }
            if jobs.is_empty() {
                println!("No jobs. Run one with `davit job run examples/hello.yaml`.");
                return Ok(());
            }
            let mut rows = vec![header(&["NAME", "TYPE", "PRIORITY", "VERSION", "STATUS", "RUNNING/DESIRED", "SUBMITTED"])];
            for job in &jobs {
                let running: u32 = job.summary.values().map(|g| g.running).sum();
                let desired: u32 = job.summary.values().map(|g| g.desired).sum();
                rows.push(vec![
                    job.name.clone(),
                    label(&job.job_type),
                    job.priority.to_string(),
                    job.version.to_string(),
                    label(&job.status),
                    format!("{running}/{desired}"),
                    time(job.submit_time),
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        JobCommand::Status { name: Some(name), output } => {
            let status = client.job_status(&name).await?.value;
            if output.format == OutputFormat::Json {
                println!("{}", json(&status));
            } else {
                print_job_status(&status);
            }
            Ok(())
        }
        JobCommand::Stop { name, purge, detach } => {
            let response = client.stop_job(&name, purge).await?;
            println!("==> stopping job {name} (evaluation {})", response.eval_id.as_deref().map(short).unwrap_or_default());
            if detach {
                return Ok(());
            }
            wait_stopped(client, &name).await?;
            println!("==> job {name} stopped{}", if purge { " and purged" } else { "" });
            Ok(())
        }
        JobCommand::History { name, output } => {
            let versions = client.job_versions(&name).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&versions));
                return Ok(());
            }
            let mut rows = vec![header(&["VERSION", "SUBMITTED", "CHANGES FROM PREVIOUS"])];
            for (i, version) in versions.iter().enumerate() {
                let changes = match versions.get(i + 1) {
                    Some(previous) => {
                        let diff = davit_api::spec::diff_specs(&previous.spec, &version.spec);
                        let mut text: Vec<String> = diff.iter().take(3).map(describe_change).collect();
                        if diff.len() > 3 {
                            text.push(format!("… {} more", diff.len() - 3));
                        }
                        if text.is_empty() { "(none)".to_string() } else { text.join("; ") }
                    }
                    None => "(first version)".to_string(),
                };
                rows.push(vec![version.version.to_string(), time(version.submit_time), changes]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        JobCommand::Diff { name, from, to, output } => {
            let (from, to) = match (from, to) {
                (Some(from), Some(to)) => (from, to),
                (Some(from), None) => (from, client.job(&name).await?.version),
                _ => {
                    let latest = client.job(&name).await?.version;
                    if latest == 0 {
                        return Err(Failure::user(format!("job {name} has only version 0; nothing to compare")));
                    }
                    (latest - 1, latest)
                }
            };
            let diff = client.job_diff(&name, from, to).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&diff));
                return Ok(());
            }
            println!("job {name}: version {} → {}", diff.from, diff.to);
            if diff.changes.is_empty() {
                println!("  (no changes)");
            }
            for change in &diff.changes {
                println!("  {}", describe_change(change));
            }
            Ok(())
        }
        JobCommand::Revert { name, version, detach } => {
            let response = client.revert_job(&name, version).await?;
            println!("==> job {name} reverted to the spec of version {version}, now version {}", response.version);
            if !detach {
                let status = monitor(client, &name, response.version, Duration::from_secs(300)).await?;
                print_allocations(&status, Some(response.version));
            }
            Ok(())
        }
        JobCommand::Scale { name, group, count, detach } => {
            let response = client.scale_job(&name, &group, count).await?;
            println!("==> job {name} group {group} scaled to {count} (version {})", response.version);
            if !detach {
                let status = monitor(client, &name, response.version, Duration::from_secs(300)).await?;
                print_allocations(&status, Some(response.version));
            }
            Ok(())
        }
    }
}

/// Checks a spec locally, with the parser the server runs: mistakes never need a server (or a round trip).
/// The client in the spec's namespace when the spec names one and the command line (`-n`) does not.
fn in_spec_namespace(client: &Client, spec: &davit_api::spec::JobSpec) -> Client {
    match client.namespace() {
        None if spec.namespace != davit_api::acl::DEFAULT_NAMESPACE => client.in_namespace(Some(&spec.namespace)),
        _ => client.clone(),
    }
}

fn parse_spec(source: &str, filename: &str) -> Result<davit_api::spec::JobSpec, Failure> {
    davit_api::spec::parse_job_spec(source, filename).map_err(|errors| Failure::user(errors.to_string()))
}

fn read_spec(file: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|e| Failure::user(format!("cannot read job file {}: {e}", file.display())))
}

fn parse_duration(text: &str, flag: &str) -> Result<Duration, Failure> {
    davit_api::Duration::parse(text).map(|d| d.as_std()).map_err(|e| Failure::user(format!("{flag}: {e}")))
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn describe_change(change: &davit_api::http::DiffEntry) -> String {
    match (&change.old, &change.new) {
        (Some(old), Some(new)) => format!("~ {}: {old} => {new}", change.path),
        (None, Some(new)) => format!("+ {}: {new}", change.path),
        (Some(old), None) => format!("- {}: {old}", change.path),
        (None, None) => format!("  {}", change.path),
    }
}

fn print_plan(plan: &davit_api::http::JobPlanResponse, verbose: bool) {
    match plan.current_version {
        None => println!("job {}: new, would be version {}", plan.job_name, plan.next_version),
        Some(current) if plan.changed => println!("job {}: version {current} → {}", plan.job_name, plan.next_version),
        Some(current) => println!("job {}: unchanged (version {current})", plan.job_name),
    }
    for change in &plan.diff {
        println!("  {}", describe_change(change));
    }
    for (name, group) in &plan.groups {
        println!(
            "group {name}: {} to place, {} in place, {} to replace, {} to stop, {} unchanged",
            group.place, group.in_place, group.replace, group.stop, group.unchanged
        );
        for placement in &group.placements {
            let replaces = placement.replaces.as_deref().map(|id| format!(" (replaces {})", short(id))).unwrap_or_default();
            let Some(scores) = placement.scores.as_ref().filter(|scores| !scores.candidates.is_empty()) else {
                println!("  + {} on {}{replaces}", placement.name, placement.node_name);
                continue;
            };
            println!(
                "  + {} on {}{replaces}: score {}, best of {} scored",
                placement.name,
                placement.node_name,
                scores.candidates[0].summary(),
                scores.nodes_scored
            );
            if verbose {
                for runner_up in &scores.candidates[1..] {
                    println!("      then {}: {}", runner_up.node_name, runner_up.summary());
                }
            }
        }
        for stop in &group.stops {
            println!("  - {} {} on {}: {}", short(&stop.alloc_id), stop.name, stop.node_name, stop.description);
        }
        if let Some(failure) = &group.failure {
            println!("  ! {} not placed: {}", failure.missing, failure.summary());
        }
    }
    for stop in &plan.preemptions {
        println!("preempt {} {} on {}: {}", short(&stop.alloc_id), stop.name, stop.node_name, stop.description);
    }
    for warning in &plan.warnings {
        println!("warning: {warning}");
    }
    println!("scheduler: {}", plan.status_description);
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

/// `[#####·····] 50% <message>` when one of the tasks' newest events says it is downloading its image.
fn pull_progress<'a>(newest_events: impl IntoIterator<Item = &'a TaskEvent>) -> Option<String> {
    const WIDTH: u64 = 20;
    newest_events.into_iter().find_map(|event| {
        let event = Some(event).filter(|event| event.kind == "Downloading Image")?;
        let progress = event.progress.filter(|progress| progress.total > 0)?;
        let filled = (progress.done.min(progress.total) * WIDTH / progress.total) as usize;
        let percent = progress.done.min(progress.total) * 100 / progress.total;
        Some(format!("[{}{}] {percent:>3}% {}", "#".repeat(filled), "·".repeat(WIDTH as usize - filled), event.message))
    })
}

/// Follows a job until every group of `version` runs its count (batch: has run), an allocation of it
/// fails, placement is blocked, or the timeout passes. Prints a progress line whenever it changes.
async fn monitor(client: &Client, name: &str, version: u64, timeout: Duration) -> Result<JobStatusResponse, Failure> {
    let mut progress = Progress::new();
    let deadline = Instant::now() + timeout;
    let mut index = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            progress.finish();
            return Err(Failure::user(format!(
                "timed out after {timeout:?} waiting for job {name} to run: {}\n  hint: `davit job status {name}` shows what is going on",
                progress.last
            )));
        }
        let status = client.job_status_blocking(name, index, remaining.min(Duration::from_secs(10))).await?;
        index = status.index;
        let status = status.value;
        let current = status.job.version.max(version);
        let batch = status.job.spec.job_type == davit_api::spec::JobType::Batch;
        let mut done = true;
        let mut parts = Vec::new();
        let mut first_pending = None;
        for group in &status.job.spec.groups {
            let of_group = status
                .allocations
                .iter()
                .filter(|a| a.group == group.name && a.job_version == current && a.desired_status == DesiredStatus::Run);
            let (mut running, mut pending, mut complete) = (0, 0, 0);
            for alloc in of_group {
                match alloc.client_status {
                    ClientStatus::Running => running += 1,
                    ClientStatus::Pending => {
                        pending += 1;
                        first_pending.get_or_insert_with(|| alloc.id.clone());
                    }
                    ClientStatus::Complete => complete += 1,
                    _ => {}
                }
            }
            let ready = if batch { running + complete } else { running };
            if ready < group.count {
                done = false;
            }
            parts.push(format!(
                "{}: {ready}/{} {}{}",
                group.name,
                group.count,
                if batch { "started" } else { "running" },
                if pending > 0 { format!(" ({pending} pending)") } else { String::new() }
            ));
        }
        // An image download in progress shows as a bar (the same image is pulled once per node, so one
        // pending allocation tells).
        if let Some(id) = first_pending
            && let Ok(alloc) = client.allocation(&id).await
            && let Some(bar) = pull_progress(alloc.task_states.values().filter_map(|state| state.events.last()))
        {
            parts.push(bar);
        }
        progress.show(parts.join("  "));
        if let Some(failed) = status
            .allocations
            .iter()
            .find(|a| a.job_version == current && a.client_status == ClientStatus::Failed && a.desired_status == DesiredStatus::Run)
        {
            progress.finish();
            let detail = match client.allocation(&failed.id).await {
                Ok(alloc) => failure_detail(&alloc),
                Err(_) => String::new(),
            };
            return Err(Failure::user(format!(
                "allocation {} ({}) failed{detail}\n  hint: `davit alloc status {}` shows its events, `davit alloc logs {}` its output",
                short(&failed.id),
                failed.name,
                short(&failed.id),
                short(&failed.id)
            )));
        }
        if let Some(blocked) = &status.blocked_evaluation {
            progress.finish();
            let reasons: Vec<String> = blocked
                .failed_groups
                .iter()
                .map(|(group, f)| format!("  group {group}: {} not placed: {}", f.missing, f.summary()))
                .collect();
            return Err(Failure::user(format!(
                "job {name} cannot be placed yet; it will be placed when capacity frees up\n{}",
                reasons.join("\n")
            )));
        }
        if done && (status.status != JobStatusKind::Pending || batch || status.job.spec.groups.iter().all(|g| g.count == 0)) {
            progress.finish();
            println!("==> job {name} version {current}: all allocations {}", if batch { "started" } else { "running" });
            return Ok(status);
        }
    }
}

/// ": task app: exited with code 3; restarts exhausted" from the newest task events.
fn failure_detail(alloc: &Allocation) -> String {
    let mut details = Vec::new();
    for (task, state) in &alloc.task_states {
        if state.failed {
            let events: Vec<String> = state.events.iter().rev().take(2).rev().map(|e| format!("{}: {}", e.kind, e.message)).collect();
            details.push(format!("task {task}: {}", events.join("; ")));
        }
    }
    if details.is_empty() && !alloc.client_description.is_empty() {
        details.push(alloc.client_description.clone());
    }
    if details.is_empty() { String::new() } else { format!(": {}", details.join(" | ")) }
}

async fn wait_stopped(client: &Client, name: &str) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let allocs = client.allocations(None).await?;
        let live = allocs
            .iter()
            .filter(|a| a.job_name == name && matches!(a.client_status, ClientStatus::Running | ClientStatus::Pending))
            .count();
        if live == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::user(format!("{live} allocations of job {name} are still running after 2 minutes")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_job_status(status: &JobStatusResponse) {
    let job = &status.job;
    let rows = vec![
        vec!["Name".to_string(), job.spec.name.clone()],
        vec!["Type".to_string(), label(&job.spec.job_type)],
        vec!["Priority".to_string(), job.spec.priority.to_string()],
        vec!["Datacenters".to_string(), job.spec.datacenters.join(",")],
        vec!["Version".to_string(), job.version.to_string()],
        vec!["Status".to_string(), format!("{}{}", label(&status.status), if job.stopped { " (stopped)" } else { "" })],
        vec!["Submitted".to_string(), time(job.submit_time)],
    ];
    print!("{}", table(&rows).lines().map(|l| l.replacen("  ", " = ", 1) + "\n").collect::<String>());
    println!("\nGroups");
    let mut rows = vec![header(&["GROUP", "DESIRED", "PLACED", "PENDING", "RUNNING", "COMPLETE", "FAILED", "LOST"])];
    for (group, s) in &status.summary {
        rows.push(vec![
            group.clone(),
            s.desired.to_string(),
            s.placed.to_string(),
            s.pending.to_string(),
            s.running.to_string(),
            s.complete.to_string(),
            s.failed.to_string(),
            s.lost.to_string(),
        ]);
    }
    print!("{}", table(&rows));
    if let Some(blocked) = &status.blocked_evaluation {
        println!("\nPlacement blocked (evaluation {}): waiting for capacity", short(&blocked.id));
        for (group, failure) in &blocked.failed_groups {
            println!("  group {group}: {} not placed: {}", failure.missing, failure.summary());
        }
    }
    println!();
    print_allocations(status, None);
}

fn print_allocations(status: &JobStatusResponse, version: Option<u64>) {
    let allocs: Vec<_> = status.allocations.iter().filter(|a| version.is_none_or(|v| a.job_version == v)).collect();
    if allocs.is_empty() {
        println!("No allocations.");
        return;
    }
    println!("Allocations");
    let mut rows = vec![header(&["ID", "NAME", "NODE", "VERSION", "DESIRED", "STATUS", "MODIFIED"])];
    for alloc in allocs {
        rows.push(vec![
            short(&alloc.id),
            alloc.name.clone(),
            alloc.node_name.clone(),
            alloc.job_version.to_string(),
            label(&alloc.desired_status),
            label(&alloc.client_status),
            time(alloc.modify_time),
        ]);
    }
    print!("{}", table(&rows));
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

pub async fn alloc(client: &Client, command: AllocCommand) -> Result<(), Failure> {
    match command {
        AllocCommand::Status { id, output } => {
            let alloc = client.allocation(&id).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&alloc));
                return Ok(());
            }
            // `to` equal to the host port says nothing (host networking, or a vm's own `config.ports`).
            let ports: Vec<String> = alloc
                .resources
                .ports
                .iter()
                .map(|p| if p.to == p.value { format!("{}={}", p.label, p.value) } else { format!("{}={}->{}", p.label, p.value, p.to) })
                .collect();
            let rows = vec![
                vec!["ID".to_string(), alloc.id.clone()],
                vec!["Name".to_string(), alloc.name.clone()],
                vec!["Node".to_string(), format!("{} ({})", alloc.node_name, short(&alloc.node_id))],
                vec!["Job".to_string(), format!("{} version {}", alloc.job_name, alloc.job_version)],
                vec!["Desired".to_string(), format!("{} {}", label(&alloc.desired_status), alloc.desired_description).trim().to_string()],
                vec!["Status".to_string(), format!("{} {}", label(&alloc.client_status), alloc.client_description).trim().to_string()],
                vec!["Health".to_string(), health_line(alloc.healthy, &alloc.health_description)],
                vec!["Resources".to_string(), format!("cpu {} millicores, memory {} MiB", alloc.resources.cpu, alloc.resources.memory)],
                vec!["Ports".to_string(), if ports.is_empty() { "-".to_string() } else { ports.join(", ") }],
                vec!["Created".to_string(), time(alloc.create_time)],
                vec!["Modified".to_string(), time(alloc.modify_time)],
            ];
            print!("{}", table(&rows).lines().map(|l| l.replacen("  ", " = ", 1) + "\n").collect::<String>());
            for (task, state) in &alloc.task_states {
                println!(
                    "\nTask {task}: {}{}, restarts {}{}",
                    label(&state.state),
                    if state.failed { " (failed)" } else { "" },
                    state.restarts,
                    state.pid.map(|pid| format!(", pid {pid}")).unwrap_or_default()
                );
                if !state.checks.is_empty() {
                    let mut rows = vec![header(&["NAME", "STATUS", "OUTPUT", "LAST CHECK"])];
                    for (name, check) in &state.checks {
                        let last = if check.last_checked == 0 { "-".to_string() } else { time_millis(check.last_checked) };
                        let output = if check.output.is_empty() { "-".to_string() } else { check.output.clone() };
                        rows.push(vec![name.clone(), label(&check.status), output, last]);
                    }
                    println!("Checks");
                    print!("{}", table(&rows));
                    println!();
                }
                let mut rows = vec![header(&["TIME", "EVENT", "DETAILS"])];
                for event in &state.events {
                    rows.push(vec![time_millis(event.time), event.kind.clone(), event.message.clone()]);
                }
                print!("{}", table(&rows));
            }
            Ok(())
        }
        AllocCommand::Logs { id, task, follow, stderr, tail } => {
            let alloc = client.allocation(&id).await?;
            let query =
                LogsQuery { task, stream: Some(if stderr { "stderr" } else { "stdout" }.to_string()), follow, offset: None, lines: tail };
            let mut stream = Box::pin(client.alloc_logs(&alloc.id, &query).await?);
            let mut stdout = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if stdout.write_all(&chunk).and_then(|_| stdout.flush()).is_err() {
                    break; // the reader went away (e.g. `| head`)
                }
            }
            Ok(())
        }
        AllocCommand::Migrate { id, node, detach, timeout } => {
            let timeout = parse_duration(&timeout, "--timeout")?;
            let started = client.migrate_allocation(&id, &davit_api::http::MigrateAllocRequest { node }).await?;
            println!(
                "Migrating allocation {} to node {}: destination allocation {}",
                short(&started.source_alloc_id),
                started.node_name,
                short(&started.alloc_id)
            );
            if detach {
                return Ok(());
            }
            wait_migration(client, &started.alloc_id, timeout).await
        }
        AllocCommand::Exec { id, task, tty, no_tty, command } => {
            let alloc = client.allocation(&id).await?;
            let stdin_is_terminal = std::io::stdin().is_terminal();
            let terminal = tty || (!no_tty && stdin_is_terminal && std::io::stdout().is_terminal());
            let size = if terminal { crate::terminal::size(libc::STDIN_FILENO) } else { None };
            let query = ExecQuery {
                task,
                command: serde_json::to_string(&command).expect("strings serialize"),
                tty: terminal,
                term: terminal.then(|| std::env::var("TERM").ok()).flatten(),
                cols: size.map(|(cols, _)| cols),
                rows: size.map(|(_, rows)| rows),
            };
            let stream = client.alloc_exec(&alloc.id, &query).await?;
            // Raw mode only while the session runs: keys go to the remote command, not to the local line editor.
            let raw = match terminal && stdin_is_terminal {
                true => {
                    Some(crate::terminal::RawMode::enable(libc::STDIN_FILENO).map_err(|e| Failure::internal(format!("terminal: {e}")))?)
                }
                false => None,
            };
            let result = exec_session(stream, terminal && stdin_is_terminal).await;
            drop(raw);
            match result? {
                0 => Ok(()),
                code => Err(Failure::silent(u8::try_from(code).unwrap_or(1))),
            }
        }
    }
}

/// Moves stdin to the remote command and its output to stdout/stderr until it exits; its exit code.
async fn exec_session(stream: davit_client::exec::ExecStream, track_size: bool) -> Result<i32, Failure> {
    use davit_api::exec::ExecFrame;
    let (reader, mut writer) = tokio::io::split(stream);
    let (frames, mut outgoing) = tokio::sync::mpsc::channel::<ExecFrame>(16);
    // A plain thread reads stdin: a read blocked forever must not keep the process from exiting.
    let stdin_frames = frames.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin_frames.blocking_send(ExecFrame::StdinClose);
                    return;
                }
                Ok(read) => {
                    if stdin_frames.blocking_send(ExecFrame::Stdin(buf[..read].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    if track_size {
        let resize_frames = frames.clone();
        tokio::spawn(async move {
            let Ok(mut changes) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else { return };
            while changes.recv().await.is_some() {
                if let Some((cols, rows)) = crate::terminal::size(libc::STDIN_FILENO)
                    && resize_frames.send(ExecFrame::Resize { cols, rows }).await.is_err()
                {
                    return;
                }
            }
        });
    }
    drop(frames);
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if davit_client::exec::write_frame(&mut writer, &frame).await.is_err() {
                return;
            }
        }
    });
    let mut incoming = davit_client::exec::FrameReader::new(reader);
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        match incoming.next().await {
            Ok(Some(ExecFrame::Stdout(data))) => {
                let _ = stdout.write_all(&data).and_then(|_| stdout.flush());
            }
            Ok(Some(ExecFrame::Stderr(data))) => {
                let _ = stderr.write_all(&data).and_then(|_| stderr.flush());
            }
            Ok(Some(ExecFrame::Exit(code))) => return Ok(code),
            Ok(Some(ExecFrame::Error(message))) => return Err(Failure::user(message)),
            Ok(Some(_)) => {}
            Ok(None) => return Err(Failure::internal("the exec session ended before the command did")),
            Err(error) => return Err(Failure::internal(format!("exec session: {error}"))),
        }
    }
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
                Some(text) => Some(parse_duration(text, "--deadline")?.as_millis() as u64),
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

pub async fn rebalance(client: &Client, args: RebalanceArgs) -> Result<(), Failure> {
    let timeout = parse_duration(&args.timeout, "--timeout")?;
    let mut moved = 0;
    for wave in 1..=args.max_waves {
        let request = davit_api::http::RebalanceRequest { max_moves: args.max_disruption, dry_run: args.dry_run };
        let answer = client.rebalance(&request).await?;
        if answer.moves.is_empty() && answer.refused == 0 {
            match moved {
                0 => println!("The cluster is balanced: no move narrows the load gap between two nodes."),
                _ => println!("Balanced after {moved} move(s)."),
            }
            return Ok(());
        }
        for change in &answer.moves {
            let verb = match (args.dry_run, change.live_migration) {
                (true, true) => "would live-migrate",
                (true, false) => "would move",
                (false, true) => "live-migrating",
                (false, false) => "moving",
            };
            println!(
                "wave {wave}: {verb} {} ({}) from {} (load {:.2} → {:.2}) to {} ({:.2} → {:.2})",
                change.name,
                short(&change.alloc_id),
                change.from_node,
                change.from_load.0,
                change.from_load.1,
                change.to_node,
                change.to_load.0,
                change.to_load.1
            );
        }
        if answer.moves.is_empty() {
            // Nothing moved, so the next wave would ask for the same moves at once.
            return Err(Failure::user(format!(
                "{} move(s) could not be made (the cluster changed meanwhile, or a live migration could not start: see the server's log); run it again later",
                answer.refused
            )));
        }
        if answer.refused > 0 {
            println!("wave {wave}: {} move(s) refused (the cluster changed meanwhile); the next wave tries again", answer.refused);
        }
        if args.dry_run || args.detach {
            return Ok(());
        }
        for change in &answer.moves {
            match change.live_migration {
                true => wait_migration(client, &change.replacement_id, timeout).await?,
                false => wait_running(client, &change.replacement_id, timeout).await?,
            }
        }
        moved += answer.moves.len();
    }
    println!("Stopped after {} waves ({moved} move(s)); run it again to go on.", args.max_waves);
    Ok(())
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

pub async fn eval(client: &Client, command: EvalCommand) -> Result<(), Failure> {
    match command {
        EvalCommand::Status { id, output } => {
            let eval = client.evaluation(&id).await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&eval));
                return Ok(());
            }
            println!("ID          = {}", eval.id);
            println!("Job         = {}", eval.job_name);
            println!("Triggered   = {}", label(&eval.triggered_by));
            println!("Status      = {} {}", label(&eval.status), eval.status_description);
            for (group, failure) in &eval.failed_groups {
                println!("Group {group}: {} not placed: {}", failure.missing, failure.summary());
            }
            Ok(())
        }
    }
}

pub async fn event(client: &Client, command: EventCommand) -> Result<(), Failure> {
    match command {
        EventCommand::Stream { topics, index, format } => {
            let mut stream = Box::pin(client.event_stream(index, &topics).await?);
            let mut stdout = std::io::stdout();
            while let Some(event) = stream.next().await {
                let event = event?;
                let line = match format {
                    OutputFormat::Json => serde_json::to_string(&event).expect("events serialize"),
                    OutputFormat::Text => {
                        let now =
                            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                        format!("{} {} {} {}", time_millis(now), event.topic, event.kind, event.key)
                    }
                };
                if writeln!(stdout, "{line}").and_then(|_| stdout.flush()).is_err() {
                    break; // the reader went away (e.g. `| head`)
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use davit_api::objects::ByteProgress;

    use super::*;

    fn event(kind: &str, progress: Option<(u64, u64)>) -> TaskEvent {
        TaskEvent {
            time: 0,
            kind: kind.to_owned(),
            message: "r/big:1: layer 3f2a1c 25.0 MiB of 50.0 MiB".to_owned(),
            exit_code: None,
            signal: None,
            progress: progress.map(|(done, total)| ByteProgress { done, total }),
        }
    }

    #[test]
    fn a_download_in_progress_shows_as_a_bar() {
        let bar = pull_progress(&[event("Started", None), event("Downloading Image", Some((25, 50)))]);
        assert_eq!(bar.as_deref(), Some("[##########··········]  50% r/big:1: layer 3f2a1c 25.0 MiB of 50.0 MiB"));
        // Only downloads with a known total.
        assert_eq!(pull_progress(&[event("Image Ready", None), event("Downloading Image", Some((5, 0)))]), None);
    }
}
