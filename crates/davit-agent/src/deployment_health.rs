//! Deployment health of a new allocation (Nomad's client-side health watcher): an allocation a deployment
//! placed is *healthy* once its `update.health_check` held for `min_healthy_time` — `checks`: every task runs
//! and every check passes; `task_states`: every task runs — and *unhealthy* when a task fails or restarts, or
//! `healthy_deadline` passes first; `manual`: an operator decides (`davit deployment health`), the agent only
//! reports a failed task. Decided once, kept in the allocation's state and reported to the servers
//! (`Allocation::deployment_health`), whose deployment watcher rolls on or fails the deployment.

use std::sync::Arc;
use std::time::Duration;

use davit_api::deployment::DeploymentHealth;
use davit_api::objects::{TaskStates, TaskStatus};
use davit_api::spec::{HealthCheckMode, UpdateStrategy};
use tokio::time::Instant;

use crate::alloc_shared::AllocShared;

/// How often the tracker looks at the allocation's state.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// What the allocation's tasks say now.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A task failed or restarted: unhealthy at once.
    Failed(String),
    /// The health check holds.
    Holds,
    /// Not (yet).
    Waiting,
}

fn verdict(mode: HealthCheckMode, tasks: &TaskStates) -> Verdict {
    for (name, task) in tasks {
        if task.failed || task.restarts > 0 {
            return Verdict::Failed(format!("task {name} {}", if task.failed { "failed" } else { "restarted" }));
        }
    }
    let running = !tasks.is_empty() && tasks.values().all(|task| task.state == TaskStatus::Running);
    let holds = match mode {
        HealthCheckMode::TaskStates => running,
        HealthCheckMode::Checks => running && crate::check::derive_health(tasks).0 == Some(true),
        // An operator says when it is healthy (`davit deployment health`); a failure is still a failure.
        HealthCheckMode::Manual => false,
    };
    if holds { Verdict::Holds } else { Verdict::Waiting }
}

/// Watches the allocation until its deployment health is decided (or it stops), then records and reports it.
pub(crate) async fn track(shared: Arc<AllocShared>, strategy: UpdateStrategy) {
    let started = Instant::now();
    let mut healthy_since: Option<Instant> = None;
    let (healthy, why) = loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let (stopping, tasks) = shared.with_state(|state| (state.stop_requested, state.task_states.clone()));
        if stopping {
            return;
        }
        match verdict(strategy.health_check, &tasks) {
            Verdict::Failed(why) => break (false, why),
            Verdict::Holds => {
                let since = *healthy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= strategy.min_healthy_time.as_std() {
                    break (true, String::new());
                }
            }
            Verdict::Waiting => healthy_since = None,
        }
        if strategy.health_check != HealthCheckMode::Manual && started.elapsed() >= strategy.healthy_deadline.as_std() {
            break (false, format!("not healthy within healthy_deadline {}", strategy.healthy_deadline));
        }
    };
    let alloc_id = shared.alloc_id();
    if healthy {
        tracing::info!(%alloc_id, "deployment health: healthy");
    } else {
        tracing::warn!(%alloc_id, reason = %why, "deployment health: unhealthy");
    }
    shared.with_state(|state| state.deployment_health = Some(DeploymentHealth { healthy, timestamp: crate::now_ms() }));
    shared.commit().await;
}

#[cfg(test)]
mod tests {
    use davit_api::objects::TaskState;

    use super::*;

    #[test]
    fn failures_and_restarts_are_unhealthy_and_running_tasks_hold() {
        let mut tasks = TaskStates::default();
        tasks.insert("web".to_string(), TaskState { state: TaskStatus::Running, started_at: Some(1), ..Default::default() });
        assert_eq!(verdict(HealthCheckMode::TaskStates, &tasks), Verdict::Holds);
        tasks.insert("side".to_string(), TaskState { state: TaskStatus::Pending, ..Default::default() });
        assert_eq!(verdict(HealthCheckMode::TaskStates, &tasks), Verdict::Waiting);
        tasks.insert("side".to_string(), TaskState { state: TaskStatus::Running, restarts: 1, started_at: Some(2), ..Default::default() });
        assert_eq!(verdict(HealthCheckMode::Checks, &tasks), Verdict::Failed("task side restarted".to_string()));
    }
}
