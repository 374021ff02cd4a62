//! Deployments: the rollout of one job version to the groups that have an update strategy (`update:`). See
//! ARCHITECTURE.md, "Deployments".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::objects::{Allocation, ClientStatus, Index, UnixMillis};

/// The rollout of one job version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    /// The job's id (namespace-qualified name).
    pub job_name: String,
    pub job_version: u64,
    pub status: DeploymentStatus,
    /// "Deployment is running", "Failed due to progress deadline - rolling back to job version 3".
    pub status_description: String,
    /// Per group with an update strategy.
    pub groups: BTreeMap<String, DeploymentGroup>,
    pub create_time: UnixMillis,
    pub modify_time: UnixMillis,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

impl Deployment {
    /// Still rolling (running or paused).
    pub fn is_active(&self) -> bool {
        matches!(self.status, DeploymentStatus::Running | DeploymentStatus::Paused)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Running,
    /// `davit deployment pause`: no more allocations are replaced until it resumes.
    Paused,
    Failed,
    Successful,
    /// A newer job version (or a stop of the job) superseded it.
    Cancelled,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Running => "running",
            DeploymentStatus::Paused => "paused",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Successful => "successful",
            DeploymentStatus::Cancelled => "cancelled",
        }
    }
}

/// One group's progress in a deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentGroup {
    /// The group's count.
    pub desired_total: u32,
    /// Canaries the group places before the rest rolls (0: none, the group rolls at once).
    #[serde(default)]
    pub desired_canaries: u32,
    /// Canaries placed and running.
    #[serde(default)]
    pub canaries: u32,
    /// The canaries were promoted (by `davit deployment promote` or `auto_promote`): the rest rolls.
    #[serde(default)]
    pub promoted: bool,
    #[serde(default)]
    pub auto_promote: bool,
    /// Canary analysis so far (`update.analysis`), while the canaries wait for promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
    /// Allocations of the deployment's version placed so far.
    pub placed: u32,
    pub healthy: u32,
    pub unhealthy: u32,
    pub auto_revert: bool,
    /// Milliseconds; 0: the first unhealthy allocation fails the deployment.
    pub progress_deadline_ms: u64,
    /// When the deployment fails unless an allocation becomes healthy before (0: no deadline yet).
    pub require_progress_by: UnixMillis,
}

/// Where a group's canary analysis stands: intervals passed and failed, and the last one's numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryAnalysis {
    pub passed: u32,
    pub failed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<AnalysisSample>,
}

/// One interval of canary analysis: requests through every proxy in that interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSample {
    pub time: UnixMillis,
    pub canary_requests: u64,
    pub canary_error_rate: f64,
    pub stable_requests: u64,
    pub stable_error_rate: f64,
    /// Upper bound of the latency bucket holding the 99th percentile (0: no requests).
    pub canary_p99_ms: f64,
    pub stable_p99_ms: f64,
    /// `pass`, `fail: <why>`, or `too few requests (n < min_requests)` (not counted).
    pub verdict: String,
}

impl DeploymentGroup {
    /// Canaries are (to be) placed and the rest of the group waits for their promotion.
    pub fn awaits_promotion(&self) -> bool {
        self.desired_canaries > 0 && !self.promoted
    }
}

/// A new allocation placed beside the running one of its index, which keeps its index (and runs) until this
/// one is *released*: a canary when its deployment's group is promoted, a surge allocation when it is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shadow {
    Canary,
    Surge,
}

/// What the agent found of a new allocation of a deployment: healthy (its health check held for
/// `min_healthy_time`) or unhealthy (a task failed, or `healthy_deadline` passed), and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentHealth {
    pub healthy: bool,
    pub timestamp: UnixMillis,
}

/// Where an allocation a deployment placed stands for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentVerdict {
    /// The agent found it healthy, at this time.
    Healthy(UnixMillis),
    /// The agent found it unhealthy, or it failed before the agent said.
    Unhealthy,
    /// Still running, not decided yet.
    Undecided,
    /// Ended (lost, completed) without a verdict: it does not count.
    Gone,
}

impl Allocation {
    /// See [`DeploymentVerdict`].
    pub fn deployment_verdict(&self) -> DeploymentVerdict {
        match self.deployment_health {
            Some(health) if health.healthy => DeploymentVerdict::Healthy(health.timestamp),
            Some(_) => DeploymentVerdict::Unhealthy,
            None if self.client_status == ClientStatus::Failed => DeploymentVerdict::Unhealthy,
            None if !self.client_status.is_terminal() => DeploymentVerdict::Undecided,
            None => DeploymentVerdict::Gone,
        }
    }
}
