//! `davit job run|validate|plan|status|stop|history|diff|revert|scale|restart`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use davit_api::http::{JobStatusKind, JobStatusResponse, RegisterJobResponse};
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, Evaluation, TaskEvent};
use davit_client::{Client, ClientError};

use super::{Progress, header};
use crate::cli::{JobCommand, OutputFormat};
use crate::output::{json, label, short, table, time};
use crate::{Failure, flag_duration};

pub async fn job(client: &Client, command: JobCommand) -> Result<(), Failure> {
    match command {
        JobCommand::Run { file, detach, timeout, output } => {
            let source = read_spec(&file)?;
            let filename = file.display().to_string();
            let spec = parse_spec(&source, &filename)?;
            let client = &in_spec_namespace(client, &spec);
            let response = register_when_up(client, &source, &filename).await?;
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
            let timeout = flag_duration("--timeout", &timeout)?;
            // A job whose groups roll out under a deployment: follow it, and exit 1 when it fails.
            if spec.groups.iter().any(|group| spec.update_strategy(&group.name).is_some())
                && let Some(ended) =
                    super::deployment::follow(client, &spec.name, response.version, response.eval_id.as_deref(), timeout).await?
            {
                if output.format == OutputFormat::Json {
                    println!("{}", json(&ended));
                }
                return super::deployment::outcome(&ended);
            }
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
            // Each version's rollout, when it had one (`update:`).
            let job_id = davit_api::namespace::job_id(client.namespace().unwrap_or(davit_api::acl::DEFAULT_NAMESPACE), &name);
            let deployments: std::collections::BTreeMap<u64, davit_api::deployment::Deployment> = client
                .deployments()
                .await?
                .into_iter()
                .filter(|deployment| deployment.job_name == job_id)
                .map(|deployment| (deployment.job_version, deployment))
                .collect();
            let mut rows = vec![header(&["VERSION", "SUBMITTED", "STABLE", "DEPLOYMENT", "CHANGES FROM PREVIOUS"])];
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
                let changes = match (version.revert_of, &version.scaling) {
                    (Some(target), _) => format!("revert to version {target}: {changes}"),
                    (None, Some(event)) => format!("scaled {event}"),
                    (None, None) => changes,
                };
                let stable = if version.stable { "yes" } else { "-" };
                let deployment = deployments.get(&version.version).map_or("-", |deployment| deployment.status.as_str());
                rows.push(vec![
                    version.version.to_string(),
                    time(version.submit_time),
                    stable.to_string(),
                    deployment.to_string(),
                    changes,
                ]);
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
        JobCommand::Restart { name, groups, batch_size, healthy_deadline } => {
            let deadline = healthy_deadline.as_deref().map(|flag| flag_duration("--healthy-deadline", flag)).transpose()?;
            rolling_restart(client, &name, &groups, batch_size, deadline).await
        }
        JobCommand::Scale { name, group, count, detach } => {
            let response = client.scale_job(&name, &group, count).await?;
            println!("==> job {name} group {group} scaled to {count} (version {})", response.version);
            for warning in &response.warnings {
                println!("    note: {warning}");
            }
            if !detach {
                let status = monitor(client, &name, response.version, Duration::from_secs(300)).await?;
                print_allocations(&status, Some(response.version));
            }
            Ok(())
        }
    }
}

/// The client in the spec's namespace when the spec names one and the command line (`-n`) does not.
fn in_spec_namespace(client: &Client, spec: &davit_api::spec::JobSpec) -> Client {
    match client.namespace() {
        None if spec.namespace != davit_api::acl::DEFAULT_NAMESPACE => client.in_namespace(Some(&spec.namespace)),
        _ => client.clone(),
    }
}

/// How long `job run` gives a server that is starting (`davit dev & davit job run x.yaml`) to answer.
const SERVER_START_WAIT: Duration = Duration::from_secs(10);

/// How long `job run` waits for the cluster's first ready node (an agent fingerprints its drivers before it
/// registers, which takes seconds).
const FIRST_NODE_WAIT: Duration = Duration::from_secs(30);

/// Registers the job; a server that refuses connections may be starting, and is given [`SERVER_START_WAIT`]
/// to listen (said on stderr). A connection that was refused carried no request, so sending it again is safe.
async fn register_when_up(client: &Client, source: &str, filename: &str) -> Result<RegisterJobResponse, Failure> {
    let deadline = Instant::now() + SERVER_START_WAIT;
    let mut said = false;
    loop {
        match client.register_job(source, filename).await {
            Err(ClientError::Unreachable { addr, source: error }) if connection_refused(&error) && Instant::now() < deadline => {
                if !said {
                    eprintln!(
                        "no davit server answers at {addr} yet: waiting up to {}s for it to start (start one with `davit dev`)",
                        SERVER_START_WAIT.as_secs()
                    );
                    said = true;
                }
                // A socket that does not listen yet sends no event to wait on: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => return Ok(answer?),
        }
    }
}

/// Whether the connection was refused (nothing listens at the address), as opposed to any other failure.
fn connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.downcast_ref::<std::io::Error>().is_some_and(|error| error.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Whether a blocked evaluation is blocked only because no node is ready at all (a cluster whose agents
/// are still starting), as opposed to nodes that do not fit or do not match.
fn blocked_for_want_of_nodes(blocked: &Evaluation) -> bool {
    !blocked.failed_groups.is_empty()
        && blocked.failed_groups.values().all(|failure| failure.quota.is_none() && failure.nodes_evaluated == 0)
}

/// Checks a spec locally, with the parser the server runs: mistakes never need a server (or a round trip).
fn parse_spec(source: &str, filename: &str) -> Result<davit_api::spec::JobSpec, Failure> {
    davit_api::spec::parse_job_spec(source, filename).map_err(|errors| Failure::user(errors.to_string()))
}

fn read_spec(file: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|e| Failure::user(format!("cannot read job file {}: {e}", file.display())))
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
/// Placement blocked because no node is ready at all is waited out for [`FIRST_NODE_WAIT`] (said on stderr):
/// the first agent may still be starting, and the server places the job once it is ready.
async fn monitor(client: &Client, name: &str, version: u64, timeout: Duration) -> Result<JobStatusResponse, Failure> {
    let mut progress = Progress::new();
    let deadline = Instant::now() + timeout;
    let first_node_deadline = Instant::now() + FIRST_NODE_WAIT;
    // Whether the last answer was blocked for want of nodes, and whether that was said.
    let (mut waiting_for_first_node, mut said_waiting) = (false, false);
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
        let mut wait = remaining.min(Duration::from_secs(10));
        if waiting_for_first_node {
            wait = wait.min(first_node_deadline.saturating_duration_since(Instant::now()));
        }
        let status = client.job_status_blocking(name, index, wait).await?;
        waiting_for_first_node = false;
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
            if blocked_for_want_of_nodes(blocked) && Instant::now() < first_node_deadline {
                if !said_waiting {
                    progress.finish();
                    eprintln!(
                        "no node is ready yet: waiting up to {}s for the first one (an agent that just started is ready within seconds)",
                        FIRST_NODE_WAIT.as_secs()
                    );
                    said_waiting = true;
                }
                waiting_for_first_node = true;
                continue;
            }
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

/// `davit job restart`: restarts the running allocations of the job (of `groups`, every group when empty) in
/// place, `batch_size` at a time (default: each group's `update.max_parallel`, else 1); each batch must be running
/// and healthy again (`healthy_deadline`, default the group's, else 5m) before the next one restarts, as
/// `kubectl rollout restart` and `nomad job restart` do. Stops at the first allocation that does not recover.
async fn rolling_restart(
    client: &Client,
    name: &str,
    groups: &[String],
    batch_size: Option<u32>,
    healthy_deadline: Option<Duration>,
) -> Result<(), Failure> {
    let status = client.job_status(name).await?.value;
    for group in groups {
        if status.job.spec.group(group).is_none() {
            return Err(Failure::user(format!("job {name} has no group {group}")));
        }
    }
    let mut restarted = 0;
    for group in status.job.spec.groups.iter().filter(|group| groups.is_empty() || groups.contains(&group.name)) {
        let strategy = status.job.spec.update_strategy(&group.name);
        let size = batch_size.or(strategy.as_ref().map(|s| s.max_parallel)).unwrap_or(1).max(1) as usize;
        let deadline = healthy_deadline.or(strategy.as_ref().map(|s| s.healthy_deadline.as_std())).unwrap_or(Duration::from_secs(300));
        let mut allocs: Vec<&str> = status
            .allocations
            .iter()
            .filter(|a| a.group == group.name && a.desired_status == DesiredStatus::Run && a.client_status == ClientStatus::Running)
            .map(|a| a.id.as_str())
            .collect();
        allocs.sort_unstable();
        for batch in allocs.chunks(size) {
            let mut restarting = Vec::with_capacity(batch.len());
            for id in batch {
                let before = started(&client.allocation(id).await?);
                let alloc = client.restart_allocation(id).await?;
                println!("    restarting {} ({})", alloc.name, short(&alloc.id));
                restarting.push((alloc.id, alloc.name, before));
            }
            for (id, alloc_name, before) in restarting {
                wait_restarted(client, &id, before, deadline).await.map_err(|why| {
                    Failure::user(format!(
                        "{alloc_name} did not recover after its restart: {why}; the rolling restart stopped ({restarted} restarted)\n  hint: davit alloc status {}",
                        short(&id)
                    ))
                })?;
                restarted += 1;
                println!("    {alloc_name} is running and healthy again");
            }
        }
    }
    println!("==> job {name}: {restarted} allocations restarted");
    Ok(())
}

/// When each task of the allocation last started (its agent's clock).
fn started(alloc: &Allocation) -> BTreeMap<String, u64> {
    alloc.task_states.iter().map(|(name, task)| (name.clone(), task.started_at.unwrap_or(0))).collect()
}

/// Waits (blocking queries) until every task of the allocation started again since `before` and it is running
/// and healthy again; why not, after `limit`.
async fn wait_restarted(client: &Client, id: &str, before: BTreeMap<String, u64>, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut index = 0;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(format!("not healthy again within {}", davit_api::Duration(limit)));
        }
        let answer = client.allocation_blocking(id, index, wait.min(Duration::from_secs(10))).await.map_err(|error| error.to_string())?;
        let alloc = answer.value;
        if alloc.is_terminal() || alloc.desired_status != DesiredStatus::Run {
            return Err(format!("it is {:?} (desired {:?})", alloc.client_status, alloc.desired_status).to_lowercase());
        }
        let restarted = started(&alloc).iter().all(|(task, at)| before.get(task).is_none_or(|then| at > then));
        if restarted && alloc.client_status == ClientStatus::Running && alloc.healthy == Some(true) {
            return Ok(());
        }
        index = answer.index;
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
