//! `update:` (job and group level; a group's values win field by field): how a new job version replaces a
//! group's running allocations (Nomad's `update` block). See ARCHITECTURE.md, "Deployments".

use serde::{Deserialize, Serialize};

use crate::Duration;

/// The `update:` block as written; every field optional so that a group's block can override the job's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// How many allocations are replaced at once (default 1); 0: no deployment, every allocation is replaced at
    /// once as without `update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// What makes a new allocation healthy (default `checks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckMode>,
    /// How long it must stay so (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy_time: Option<Duration>,
    /// A new allocation not healthy this long after it was placed is unhealthy (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_deadline: Option<Duration>,
    /// The deployment fails when no allocation became healthy for this long (default 10m); 0: it fails at the
    /// first unhealthy allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
    /// A failed deployment rolls back to the newest stable version (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert: Option<bool>,
}

/// What makes a new allocation of a deployment healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckMode {
    /// Every task runs and every health check passes.
    #[default]
    Checks,
    /// Every task runs (checks are not waited for).
    TaskStates,
}

impl HealthCheckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckMode::Checks => "checks",
            HealthCheckMode::TaskStates => "task_states",
        }
    }
}

/// The update strategy of one group: the job's and the group's `update:` merged, defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStrategy {
    pub max_parallel: u32,
    pub health_check: HealthCheckMode,
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
    /// Zero: the first unhealthy allocation fails the deployment.
    pub progress_deadline: Duration,
    pub auto_revert: bool,
}

impl Default for UpdateStrategy {
    fn default() -> UpdateStrategy {
        UpdateStrategy {
            max_parallel: 1,
            health_check: HealthCheckMode::Checks,
            min_healthy_time: Duration::from_secs(10),
            healthy_deadline: Duration::from_secs(300),
            progress_deadline: Duration::from_secs(600),
            auto_revert: false,
        }
    }
}

impl UpdateStrategy {
    /// The strategy of a group from the job's `update:` and the group's; `None` when neither has one or
    /// `max_parallel` is 0 (no deployment).
    pub fn resolve(job: Option<&UpdateSpec>, group: Option<&UpdateSpec>) -> Option<UpdateStrategy> {
        if job.is_none() && group.is_none() {
            return None;
        }
        let pick = |field: fn(&UpdateSpec) -> Option<Duration>| group.and_then(field).or_else(|| job.and_then(field));
        let defaults = UpdateStrategy::default();
        let strategy = UpdateStrategy {
            max_parallel: group.and_then(|u| u.max_parallel).or_else(|| job.and_then(|u| u.max_parallel)).unwrap_or(defaults.max_parallel),
            health_check: group.and_then(|u| u.health_check).or_else(|| job.and_then(|u| u.health_check)).unwrap_or_default(),
            min_healthy_time: pick(|u| u.min_healthy_time).unwrap_or(defaults.min_healthy_time),
            healthy_deadline: pick(|u| u.healthy_deadline).unwrap_or(defaults.healthy_deadline),
            progress_deadline: pick(|u| u.progress_deadline).unwrap_or(defaults.progress_deadline),
            auto_revert: group.and_then(|u| u.auto_revert).or_else(|| job.and_then(|u| u.auto_revert)).unwrap_or(false),
        };
        (strategy.max_parallel > 0).then_some(strategy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_values_win_field_by_field_and_defaults_fill_the_rest() {
        let job = UpdateSpec { max_parallel: Some(2), auto_revert: Some(true), ..Default::default() };
        let group = UpdateSpec { min_healthy_time: Some(Duration::from_secs(1)), auto_revert: Some(false), ..Default::default() };
        let strategy = UpdateStrategy::resolve(Some(&job), Some(&group)).unwrap();
        assert_eq!(strategy.max_parallel, 2);
        assert_eq!(strategy.min_healthy_time, Duration::from_secs(1));
        assert!(!strategy.auto_revert);
        assert_eq!(strategy.healthy_deadline, Duration::from_secs(300));
        assert_eq!(UpdateStrategy::resolve(None, None), None);
        let off = UpdateSpec { max_parallel: Some(0), ..Default::default() };
        assert_eq!(UpdateStrategy::resolve(Some(&off), None), None, "max_parallel 0: no deployment");
    }
}
