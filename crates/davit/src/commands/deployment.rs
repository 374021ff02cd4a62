//! `davit deployment ls|status|fail|pause|resume|promote|health`, and following a job's rollout after `job run`.

use std::time::{Duration, Instant};

use davit_api::deployment::{Deployment, DeploymentStatus};
use davit_api::http::DeploymentHealthRequest;
use davit_client::Client;

use crate::Failure;
use crate::cli::{DeploymentCommand, OutputFormat};
use crate::output::{json, short, table};

pub async fn deployment(client: &Client, command: DeploymentCommand) -> Result<(), Failure> {
    match command {
        DeploymentCommand::Ls { output } => {
            let deployments = client.deployments().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&deployments));
                return Ok(());
            }
            let mut rows = vec![["ID", "Job", "Version", "Status", "Description"].map(String::from).to_vec()];
            rows.extend(deployments.iter().map(|d| {
                vec![
                    short(&d.id),
                    d.job_name.clone(),
                    d.job_version.to_string(),
                    d.status.as_str().to_string(),
                    d.status_description.clone(),
                ]
            }));
            print!("{}", table(&rows));
            Ok(())
        }
        DeploymentCommand::Status { id, watch, output } => {
            let mut answer = client.deployment(&id, 0, Duration::ZERO).await?;
            loop {
                if output.format == OutputFormat::Json {
                    println!("{}", json(&answer.value));
                } else {
                    print!("{}", describe(&answer.value));
                }
                if !watch || !answer.value.is_active() {
                    return Ok(());
                }
                let index = answer.index;
                answer = client.deployment(&id, index, Duration::from_secs(30)).await?;
                if answer.index != index {
                    println!();
                }
            }
        }
        DeploymentCommand::Fail { id } => act(client, &id, "fail").await,
        DeploymentCommand::Pause { id } => act(client, &id, "pause").await,
        DeploymentCommand::Resume { id } => act(client, &id, "resume").await,
        DeploymentCommand::Promote { id, groups } => {
            print_action(&client.promote_deployment(&id, groups).await?);
            Ok(())
        }
        DeploymentCommand::Health { id, healthy, unhealthy } => {
            print_action(&client.set_deployment_health(&id, &DeploymentHealthRequest { healthy, unhealthy }).await?);
            Ok(())
        }
    }
}

async fn act(client: &Client, id: &str, action: &str) -> Result<(), Failure> {
    print_action(&client.deployment_action(id, action).await?);
    Ok(())
}

fn print_action(deployment: &Deployment) {
    println!(
        "deployment {} of job {} version {}: {} ({})",
        short(&deployment.id),
        deployment.job_name,
        deployment.job_version,
        deployment.status.as_str(),
        deployment.status_description
    );
}

/// The deployment and its groups' progress, as `deployment status` prints it.
pub fn describe(deployment: &Deployment) -> String {
    let mut out = format!(
        "ID          = {}\nJob         = {} (version {})\nStatus      = {}\nDescription = {}\n\n",
        deployment.id,
        deployment.job_name,
        deployment.job_version,
        deployment.status.as_str(),
        deployment.status_description
    );
    let mut rows = vec![
        ["Group", "Promoted", "Desired", "Canaries", "Placed", "Healthy", "Unhealthy", "Progress Deadline"].map(String::from).to_vec(),
    ];
    for (name, group) in &deployment.groups {
        let deadline = if group.require_progress_by == 0 { "-".to_string() } else { crate::output::time(group.require_progress_by) };
        let (promoted, canaries) = match group.desired_canaries {
            0 => ("-".to_string(), "-".to_string()),
            desired => (if group.promoted { "yes" } else { "no" }.to_string(), format!("{}/{desired}", group.canaries)),
        };
        rows.push(vec![
            name.clone(),
            promoted,
            group.desired_total.to_string(),
            canaries,
            group.placed.to_string(),
            group.healthy.to_string(),
            group.unhealthy.to_string(),
            deadline,
        ]);
    }
    out.push_str(&table(&rows));
    for (name, group) in &deployment.groups {
        let Some(analysis) = &group.analysis else { continue };
        out.push_str(&format!("\nCanary analysis of {name}: {} intervals passed, {} failed\n", analysis.passed, analysis.failed));
        if let Some(last) = &analysis.last {
            out.push_str(&format!(
                "  last interval: canaries {} requests, {:.2}% errors, p99 ≤ {} ms; stable {} requests, {:.2}% errors, p99 ≤ {} ms: {}\n",
                last.canary_requests,
                last.canary_error_rate * 100.0,
                last.canary_p99_ms,
                last.stable_requests,
                last.stable_error_rate * 100.0,
                last.stable_p99_ms,
                last.verdict
            ));
        }
    }
    out
}

/// Follows the rollout of `version` until it ends: `Ok(None)` when the version has no deployment (the
/// evaluation `eval_id` finished without starting one), else the deployment as it ended (a failed one even when
/// the revert it started is already rolling out). A line per change.
pub async fn follow(
    client: &Client,
    job: &str,
    version: u64,
    eval_id: Option<&str>,
    timeout: Duration,
) -> Result<Option<Deployment>, Failure> {
    let deadline = Instant::now() + timeout;
    let (mut index, mut last_line) = (0, String::new());
    loop {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(2));
        if wait.is_zero() {
            return Err(Failure::user(format!(
                "timed out after {timeout:?} following the rollout of job {job}: {last_line}\n  hint: `davit deployment status` shows it"
            )));
        }
        // The evaluation is looked at first: once it ran, its deployment (if it started one) is there to see.
        let evaluated = eval_done(client, eval_id).await?;
        // This version's own deployment: a newer one (a revert after it failed, say) is not its outcome.
        let answer = match client.job_version_deployment(job, version, index, wait).await {
            Ok(answer) => answer,
            Err(error) if error.is_not_found() && evaluated => return Ok(None),
            Err(error) if error.is_not_found() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        index = answer.index;
        let deployment = answer.value;
        let line = progress_line(&deployment);
        if line != last_line {
            println!("    {line}");
            last_line = line;
        }
        if !deployment.is_active() || waits_for_person(&deployment) {
            return Ok(Some(deployment));
        }
    }
}

/// Every canary is healthy and a group without `auto_promote` waits for `davit deployment promote`.
fn waits_for_person(deployment: &Deployment) -> bool {
    deployment.status == DeploymentStatus::Running
        && deployment.groups.values().any(|group| group.awaits_promotion() && !group.auto_promote)
        && deployment.groups.values().filter(|group| group.awaits_promotion()).all(|group| group.healthy >= group.desired_canaries)
}

/// Whether the evaluation is no longer pending (it ran, so a deployment it would start exists by now).
async fn eval_done(client: &Client, eval_id: Option<&str>) -> Result<bool, Failure> {
    let Some(id) = eval_id else { return Ok(true) };
    Ok(client.evaluation(id).await?.status != davit_api::objects::EvalStatus::Pending)
}

fn progress_line(deployment: &Deployment) -> String {
    let groups: Vec<String> = deployment
        .groups
        .iter()
        .map(|(name, group)| {
            let canaries = match (group.desired_canaries, group.promoted) {
                (0, _) => String::new(),
                (desired, true) => format!(", {desired} canaries promoted"),
                (desired, false) => format!(", canaries {}/{desired} placed", group.canaries),
            };
            format!(
                "{name}: {}/{} healthy{}{canaries}",
                group.healthy,
                group.desired_total,
                if group.unhealthy > 0 { format!(", {} unhealthy", group.unhealthy) } else { String::new() }
            )
        })
        .collect();
    format!(
        "deployment {} (version {}) {}: {}",
        short(&deployment.id),
        deployment.job_version,
        deployment.status.as_str(),
        groups.join("; ")
    )
}

/// Exit status of `job run` for a rollout that ended.
pub fn outcome(deployment: &Deployment) -> Result<(), Failure> {
    match deployment.status {
        DeploymentStatus::Successful => {
            println!("==> deployment {} successful: {}", short(&deployment.id), deployment.status_description);
            Ok(())
        }
        DeploymentStatus::Running | DeploymentStatus::Paused => {
            println!(
                "==> deployment {id}: the canaries are healthy and wait for promotion\n  hint: davit deployment promote {id} (or fail {id} to roll back)",
                id = short(&deployment.id)
            );
            Ok(())
        }
        status => Err(Failure::user(format!(
            "deployment {} of job {} version {} {}: {}",
            short(&deployment.id),
            deployment.job_name,
            deployment.job_version,
            status.as_str(),
            deployment.status_description
        ))),
    }
}
