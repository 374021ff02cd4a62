//! `davit scaling plan FILE` (the autoscaler's arithmetic for numbers written by hand, offline) and `davit
//! scaling status JOB [GROUP]` (what the autoscaler sees and decides for a job's groups).

use std::io::IsTerminal;
use std::time::Duration;

use davit_api::http::{GroupScaling, ScalingStatus};
use davit_client::Client;
use davit_scaling::dry_run::{self, PlanInput};

use crate::Failure;
use crate::cli::{OutputFormat, ScalingCommand};
use crate::output::{json, table, time};

pub async fn scaling(client: &Client, command: ScalingCommand) -> Result<(), Failure> {
    match command {
        ScalingCommand::Plan { file, output } => {
            let display = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|error| Failure::user(format!("cannot read {display}: {error}")))?;
            let input: PlanInput = serde_json::from_str(&text)
                .map_err(|error| Failure::user(format!("{display}:{}:{}: {error}", error.line(), error.column())))?;
            let plan = dry_run::plan(&input).map_err(|error| Failure::user(format!("{display}: {error}")))?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&plan));
            } else {
                print!("{}", dry_run::render(&plan));
            }
            Ok(())
        }
        ScalingCommand::Backtest { series, season, output } => {
            let display = series.display().to_string();
            let text = std::fs::read_to_string(&series).map_err(|error| Failure::user(format!("cannot read {display}: {error}")))?;
            let values: Vec<f64> = text
                .lines()
                .filter_map(|line| line.rsplit(',').next().and_then(|value| value.trim().parse::<f64>().ok()))
                .filter(|value| value.is_finite())
                .collect();
            if season == 0 {
                return Err(Failure::user("--season: at least 1 point per season"));
            }
            let Some(result) = davit_scaling::forecast::backtest(&values, season) else {
                return Err(Failure::user(format!(
                    "{display}: {} values; a backtest needs three seasons ({} values with --season {season})",
                    values.len(),
                    3 * season
                )));
            };
            if output.format == OutputFormat::Json {
                let params = result.params;
                println!(
                    "{}",
                    json(&serde_json::json!({
                        "holt_winters_mape": result.holt_winters_mape,
                        "naive_seasonal_mape": result.naive_mape,
                        "points": result.points,
                        "alpha": params.alpha, "beta": params.beta, "gamma": params.gamma,
                    }))
                );
            } else {
                println!(
                    "Holt-Winters (α {}, β {}, γ {}): MAPE {:.2}% over the last season's {} points\nnaive seasonal (the season before): MAPE {:.2}%",
                    result.params.alpha,
                    result.params.beta,
                    result.params.gamma,
                    result.holt_winters_mape,
                    result.points,
                    result.naive_mape
                );
            }
            Ok(())
        }
        ScalingCommand::Status { job, group, watch, output } => loop {
            let mut status = client.job_scaling(&job).await?;
            if let Some(group) = &group {
                if !status.groups.iter().any(|g| &g.group == group) {
                    let names: Vec<&str> = status.groups.iter().map(|g| g.group.as_str()).collect();
                    let listed = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                    return Err(Failure::user(format!("job {job} has no group {group} with scaling: (groups with scaling: {listed})")));
                }
                status.groups.retain(|g| &g.group == group);
                status.events.retain(|event| &event.group == group);
            }
            if output.format == OutputFormat::Json {
                println!("{}", json(&status));
            } else {
                if watch && std::io::stdout().is_terminal() {
                    print!("\x1b[H\x1b[2J");
                }
                print!("{}", describe(&status));
            }
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !std::io::stdout().is_terminal() && output.format != OutputFormat::Json {
                println!();
            }
        },
    }
}

fn describe(status: &ScalingStatus) -> String {
    let mut text = String::new();
    if status.groups.is_empty() {
        text.push_str(&format!("job {} has no group with scaling:\n", status.job_name));
    }
    for group in &status.groups {
        text.push_str(&describe_group(group));
    }
    text.push_str("\nScaling events\n");
    if status.events.is_empty() {
        text.push_str("  none yet\n");
    }
    for event in &status.events {
        text.push_str(&format!("  {}  {event}\n", time(event.time)));
    }
    text
}

fn describe_group(group: &GroupScaling) -> String {
    let mode = match (group.autoscaled, group.predictive.as_str()) {
        (false, _) => "not autoscaled (no metrics nor scale_to_zero_after, or enabled: false)".to_string(),
        (true, "") => "autoscaled".to_string(),
        (true, predictive) => format!("autoscaled, predictive ({predictive})"),
    };
    let mut text = format!("Group {}: count {} (min {}, max {}), {mode}\n", group.group, group.count, group.min, group.max);
    if !group.metrics.is_empty() {
        let predictive = !group.predictive.is_empty();
        let mut header = vec!["Metric (target)", "Current", "Proposal"];
        if predictive {
            header.push("Forecast");
        }
        header.push("Error");
        let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
        for metric in &group.metrics {
            let mut row = vec![
                metric.metric.clone(),
                if metric.current.is_empty() { "-".to_string() } else { metric.current.clone() },
                metric.proposal.map_or_else(|| "-".to_string(), |p| p.to_string()),
            ];
            if predictive {
                row.push(if metric.forecast.is_empty() { "-".to_string() } else { metric.forecast.clone() });
            }
            row.push(metric.error.clone());
            rows.push(row);
        }
        for line in table(&rows).lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    if !group.scale_to_zero.is_empty() {
        text.push_str(&format!("  scale to zero: {}\n", group.scale_to_zero));
    }
    if !group.waiting.is_empty() {
        text.push_str(&format!("  waiting: {}\n", group.waiting));
    }
    if let Some(desired) = group.desired {
        let proposal = group.proposal.map_or_else(|| "none (metrics invalid)".to_string(), |p| p.to_string());
        text.push_str(&format!("  proposal {proposal} → desired {desired}: {} ({})\n", group.message, group.limited_by));
    }
    if let Some(stabilization) = &group.stabilization {
        text.push_str(&format!("  stabilization: {stabilization}\n"));
    }
    if !group.recent_changes.is_empty() {
        text.push_str(&format!("  recent changes (rate limits): {}\n", group.recent_changes.join(", ")));
    }
    if let Some(at) = group.evaluated_at {
        text.push_str(&format!("  evaluated {}\n", time(at)));
    }
    text
}
