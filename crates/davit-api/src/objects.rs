//! Objects the cluster stores: job versions, nodes, evaluations, allocations.
//!
//! Times are Unix milliseconds (`u64`), set by the server or agent: this crate reads no clock.
//! `create_index`/`modify_index` are store revisions, set when the object is written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::deployment::{DeploymentHealth, Shadow};
use crate::spec::{JobSpec, JobType, Resources};

/// Unix time in milliseconds.
pub type UnixMillis = u64;
/// A store revision: every committed change has a higher one than the change before.
pub type Index = u64;

/// One stored version of a job. The latest version is the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    /// Starts at 0, +1 for every registration that changes the spec (also revert and scale).
    pub version: u64,
    /// True once `job stop` was called; a new `job run` clears it.
    pub stopped: bool,
    /// The version's deployment succeeded (or it needed none and its allocations run): a version a failed
    /// deployment may revert to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stable: bool,
    /// This version registers version N's spec again (`davit job revert`, an automatic revert): it rolls out
    /// with its update strategy but without canaries — it is known to work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_of: Option<u64>,
    /// This version changed one group's count (`davit job scale`, the autoscaler), and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingEvent>,
    pub submit_time: UnixMillis,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

impl Job {
    /// Version `version` of a job with `spec`, as registered at `submit_time`: running, not stable (yet), not a
    /// revert; the store sets its indexes.
    pub fn new(spec: JobSpec, version: u64, submit_time: UnixMillis) -> Job {
        Job { spec, version, stopped: false, stable: false, revert_of: None, scaling: None, submit_time, create_index: 0, modify_index: 0 }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The job as the API shows it (see [`JobSpec::redacted`]).
    pub fn redacted(&self) -> Job {
        Job { spec: self.spec.redacted(), ..self.clone() }
    }
}

/// A change of one group's count, kept on the job version it made: "web 3 → 5: cpu 85% of 60%".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingEvent {
    pub group: String,
    pub from: u32,
    pub to: u32,
    /// `autoscaler` or `operator` (`davit job scale`).
    pub by: String,
    /// The autoscaler's metric against its target (empty for an operator's scale).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub time: UnixMillis,
}

impl std::fmt::Display for ScalingEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} → {}", self.group, self.from, self.to)?;
        if self.reason.is_empty() { write!(f, " ({})", self.by) } else { write!(f, ": {} ({})", self.reason, self.by) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Initializing,
    Ready,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeEligibility {
    Eligible,
    Ineligible,
}

/// What a driver reported at fingerprint time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverInfo {
    pub detected: bool,
    pub healthy: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Schedulable capacity of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// Total CPU in millicores (cores × 1000).
    pub cpu: u64,
    /// Total memory in MiB.
    pub memory: u64,
    /// Inclusive range of host ports the scheduler may assign.
    pub port_range: (u16, u16),
    /// Ports already in use on the host, never assigned.
    #[serde(default)]
    pub reserved_ports: Vec<u16>,
}

/// A machine running a davit agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable across agent restarts (kept in the agent's data dir).
    pub id: String,
    pub name: String,
    pub datacenter: String,
    #[serde(default)]
    pub class: String,
    /// Fingerprinted and user attributes: `cpu.arch`, `os.name`, `kernel.version`, `unique.hostname`, …
    /// Constraints refer to them as `${node.<key>}` or `${attr.<key>}`.
    pub attributes: BTreeMap<String, String>,
    pub resources: NodeResources,
    pub drivers: BTreeMap<String, DriverInfo>,
    pub status: NodeStatus,
    pub eligibility: NodeEligibility,
    /// Set while the node is being drained (its allocations migrated elsewhere); cleared when the drain
    /// completes or is canceled. A draining node is always ineligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStrategy>,
    /// Base URL of the agent's own HTTP API (logs, exec), e.g. `http://127.0.0.1:7647`.
    pub http_addr: String,
    #[serde(default)]
    pub status_description: String,
    #[serde(default)]
    pub last_heartbeat: UnixMillis,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

impl Node {
    pub fn is_schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && self.eligibility == NodeEligibility::Eligible
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }
}

/// How a node is drained: its allocations are migrated a few at a time (per group, at most the group's
/// `update.max_parallel`, 1 for now) until none is left or the deadline passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStrategy {
    /// After this long (from `started_at`), every allocation still on the node is stopped at once.
    /// `None`: no deadline; `Some(0)`: stop everything now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    pub started_at: UnixMillis,
    /// Leave system-job allocations running on the node.
    #[serde(default)]
    pub ignore_system: bool,
}

impl DrainStrategy {
    /// When the deadline passes, if there is one.
    pub fn deadline_at(&self) -> Option<UnixMillis> {
        self.deadline_ms.map(|deadline| self.started_at.saturating_add(deadline))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredStatus {
    Run,
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    Pending,
    Running,
    Complete,
    Failed,
    Lost,
}

impl ClientStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, ClientStatus::Complete | ClientStatus::Failed | ClientStatus::Lost)
    }
}

/// A host port given to an allocation: `DAVIT_PORT_<label>=<value>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AssignedPort {
    pub label: String,
    /// Host port.
    pub value: u16,
    /// Port inside the task's network; equals `value` for host networking.
    pub to: u16,
}

/// What an allocation reserves on its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatedResources {
    /// Millicores.
    pub cpu: u64,
    /// MiB.
    pub memory: u64,
    pub ports: Vec<AssignedPort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Dead,
}

/// One line of a task's history, shown by `alloc status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub time: UnixMillis,
    /// Short kind: `Received`, `Task Setup`, `Started`, `Terminated`, `Restarting`, `Not Restarting`,
    /// `Shutdown Delay`, `Killing`, `Killed`, `OOM Killed`, `Driver Failure`, `Sibling Task Failed`.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How far a long step (an image download) got when the event was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ByteProgress>,
}

/// Bytes done out of a total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteProgress {
    pub done: u64,
    pub total: u64,
}

/// Task states by task name (a small sorted map: one or two tasks per allocation is the rule).
pub type TaskStates = crate::small_map::SmallMap<String, TaskState>;

/// A list deserialized with no spare capacity: formats without a length (JSON) grow a one-element `Vec`
/// to four, and a server keeps a million of these.
fn exact_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    let mut list = Vec::<T>::deserialize(deserializer)?;
    list.shrink_to_fit();
    Ok(list)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub state: TaskStatus,
    /// True when the task ended in failure (and will not be restarted).
    pub failed: bool,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMillis>,
    #[serde(deserialize_with = "exact_vec")]
    pub events: Vec<TaskEvent>,
    /// Health checks of the task by name (see `checks` in the task spec), while it runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, CheckState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Not checked yet, or not enough successes yet.
    Pending,
    Passing,
    /// `failures_before_unhealthy` failures in a row.
    Failing,
}

/// The latest result of one health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    pub status: CheckStatus,
    /// Short output of the last probe (`HTTP 200`, `connection refused`, the first line of an exec check).
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub last_checked: UnixMillis,
    #[serde(default)]
    pub consecutive_failures: u32,
}

impl Default for TaskState {
    fn default() -> Self {
        TaskState {
            state: TaskStatus::Pending,
            failed: false,
            restarts: 0,
            pid: None,
            started_at: None,
            finished_at: None,
            events: Vec::new(),
            checks: BTreeMap::new(),
        }
    }
}

/// One placement of one task group of one job version on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: String,
    /// `<job>.<group>[<index>]`.
    pub name: String,
    pub job_name: String,
    pub job_version: u64,
    pub group: String,
    /// Position within the group, 0..count.
    pub index: u32,
    pub node_id: String,
    pub node_name: String,
    pub eval_id: String,
    pub desired_status: DesiredStatus,
    #[serde(default)]
    pub desired_description: String,
    pub client_status: ClientStatus,
    #[serde(default)]
    pub client_description: String,
    #[serde(default)]
    pub task_states: TaskStates,
    /// Set by the agent: true when every task runs and every health check passes, false when a task is
    /// not running or a check is failing; `None` until known.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// Why the allocation is (un)healthy, e.g. "check web-http of task server failing: HTTP 500".
    #[serde(default)]
    pub health_description: String,
    pub resources: AllocatedResources,
    /// The allocation this one replaces, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_allocation: Option<String>,
    /// Reschedules that led to this allocation, oldest first (carried over from the one it replaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reschedule_tracker: Vec<RescheduleEvent>,
    /// The live migration this allocation takes part in (as its source or its destination), if any.
    /// Boxed: only allocations in a live migration have one, and the allocation stays small without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Box<Migration>>,
    /// The deployment that placed it (a new version of a group with an update strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// Set by the agent, once, for an allocation of a deployment: see [`DeploymentHealth`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_health: Option<DeploymentHealth>,
    /// Moves on with each restart an operator asks for (`davit alloc restart`, `davit job restart`): its agent
    /// restarts the tasks in place.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_generation: u64,
    /// Placed by a deployment beside the allocation of its index as a canary or a surge (see [`Shadow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    pub create_time: UnixMillis,
    pub modify_time: UnixMillis,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

/// A live migration of a VM allocation to another node (`davit alloc migrate`, or a drain of a group with
/// `migrate: live`). Both allocations carry one, each naming the other as its peer; only the server's plan
/// applier writes it, from what the two agents report (see ARCHITECTURE.md, "Live migration").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub role: MigrationRole,
    /// The other allocation: the destination (on the source) or the source (on the destination).
    pub peer_alloc_id: String,
    pub peer_node_id: String,
    pub status: MigrationStatus,
    /// Per vm task: where the destination's QEMU waits for the guest's state (`tcp:<ip>:<port>`), as the
    /// destination agent reported it; the server copies it to the source, whose agent then migrates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listen_addrs: BTreeMap<String, String>,
    /// Why it failed, or the summary of a completed migration.
    #[serde(default)]
    pub description: String,
    /// QEMU's figures once completed (the slowest task's, when there are several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<MigrationReport>,
    pub started_at: UnixMillis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationRole {
    Source,
    Destination,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStatus {
    /// The destination allocation is placed; its agent is starting the incoming QEMU.
    Starting,
    /// The destination listens (`listen_addrs`); the source agent migrates.
    Listening,
    /// The guest runs on the destination; the source allocation is complete.
    Complete,
    /// The source keeps running; the destination allocation is stopped (`description` says why).
    Failed,
}

impl MigrationStatus {
    pub fn is_done(self) -> bool {
        matches!(self, MigrationStatus::Complete | MigrationStatus::Failed)
    }
}

/// How a live migration went, from QEMU's `query-migrate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// How long the guest was paused at the switch-over.
    pub downtime_ms: u64,
    pub total_ms: u64,
    pub transferred_bytes: u64,
}

impl MigrationReport {
    /// "downtime 12 ms, 40 MiB in 850 ms": the message of the source task's `Migrated` event.
    pub fn summary(&self) -> String {
        format!("downtime {} ms, {} MiB in {} ms", self.downtime_ms, self.transferred_bytes / (1024 * 1024), self.total_ms)
    }
}

/// What an agent reports about a migration its allocation takes part in (see [`Migration`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum MigrationProgress {
    /// Destination: every vm task's QEMU waits for the state at these addresses (by task).
    Listening { listen_addrs: BTreeMap<String, String> },
    /// Source: the guest moved; the source QEMU has quit.
    Completed { report: MigrationReport },
    /// Either side: it did not work (the source keeps running).
    Failed { reason: String },
}

impl Allocation {
    /// True while this allocation is the destination of a migration that has not completed: it does not
    /// hold its index for the scheduler yet (the source does).
    pub fn is_incoming_migration(&self) -> bool {
        self.migration
            .as_ref()
            .is_some_and(|migration| migration.role == MigrationRole::Destination && migration.status != MigrationStatus::Complete)
    }

    /// True while a migration of this allocation (as its source) is under way.
    pub fn is_migrating_out(&self) -> bool {
        self.migration.as_ref().is_some_and(|migration| migration.role == MigrationRole::Source && !migration.status.is_done())
    }
}

/// One reschedule of a failed allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescheduleEvent {
    pub time: UnixMillis,
    pub prev_alloc_id: String,
    pub prev_node_id: String,
    /// The delay waited after the failure before the replacement was placed.
    pub delay_ms: u64,
}

impl Allocation {
    /// Asked to stop, or finished on the client. Terminal allocations hold no node resources
    /// (as in Nomad: a stop frees its resources for the same plan).
    pub fn is_terminal(&self) -> bool {
        self.desired_status == DesiredStatus::Stop || self.client_status.is_terminal()
    }
}

/// Why an evaluation was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalTrigger {
    JobRegister,
    JobDeregister,
    JobScale,
    JobRevert,
    NodeUpdate,
    /// An allocation was stopped to migrate it off a draining node.
    NodeDrain,
    AllocFailure,
    /// An allocation of a service or system job finished on its node while it should run (its tasks
    /// completed, or its agent stopped it: `disconnect.stop_after`): place it again.
    AllocComplete,
    /// A blocked evaluation retried because capacity changed.
    QueuedAllocs,
    /// `davit rebalance` moved allocations of the job (recorded complete, for the history).
    Rebalance,
    /// Allocations of the job were preempted by a higher-priority job: place them again when there is room.
    Preemption,
    /// A deployment made progress (an allocation became healthy) or was resumed: roll on.
    Deployment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalStatus {
    Pending,
    Complete,
    Failed,
    /// Waiting for capacity; retried when nodes or allocations change.
    Blocked,
    Canceled,
}

/// Why some allocations of a group could not be placed: counts per reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementFailure {
    /// How many allocations are still missing.
    pub missing: u32,
    pub nodes_evaluated: u32,
    /// Nodes ruled out by datacenter, driver or constraint, by reason (e.g. `constraint ${node.arch} = arm64`).
    pub filtered: BTreeMap<String, u32>,
    /// Nodes that matched but were full, by dimension (`memory`, `cpu`, `ports`).
    pub exhausted: BTreeMap<String, u32>,
    /// The namespace's quota does not allow more, e.g. `quota of namespace team-a: memory 4096/4096 MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
}

/// Why a placement went where it did (dry runs only): the best-ranked candidates the scheduler scored,
/// the chosen node first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementScores {
    /// Fitting nodes the scheduler scored for this placement: its candidate limit or fewer, plus up to 3
    /// nodes with a negative score that do not count toward the limit.
    pub nodes_scored: u32,
    /// At most [`PlacementScores::KEPT`], best first; the first is the chosen node. A rescheduled
    /// allocation avoids its failed node: that node ranks after every other, whatever its score.
    pub candidates: Vec<NodeScore>,
}

impl PlacementScores {
    /// How many candidates a placement keeps.
    pub const KEPT: usize = 3;
}

/// One node's scores for a placement, each in [-1, 1] (see the scheduler's `rank` module). A part is
/// `None` when the group has no such rule; the final score is the mean of the fit and the present parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeScore {
    pub node_id: String,
    pub node_name: String,
    /// The placement algorithm's score (binpack, spread or balanced).
    pub fit: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<f64>,
    /// Preferred alloc affinities and anti-affinities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_affinity: Option<f64>,
    /// The penalty for placing next to allocations of the same group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_anti_affinity: Option<f64>,
    pub score: f64,
}

impl NodeScore {
    /// "0.812 (fit 0.710, spread 1.000)".
    pub fn summary(&self) -> String {
        // `+ 0.0` turns -0.0 (a weight times an empty match) into 0.0, which prints without a sign.
        let mut text = format!("{:.3} (fit {:.3}", self.score + 0.0, self.fit + 0.0);
        for (name, part) in [
            ("node affinity", self.node_affinity),
            ("spread", self.spread),
            ("alloc affinity", self.alloc_affinity),
            ("job anti-affinity", self.job_anti_affinity),
        ] {
            if let Some(part) = part {
                text.push_str(&format!(", {name} {:.3}", part + 0.0));
            }
        }
        text.push(')');
        text
    }
}

impl Evaluation {
    /// A new pending evaluation of a job, created at `now` (the store indexes are set when it is stored).
    pub fn pending(id: String, job_name: &str, job_type: JobType, priority: u8, trigger: EvalTrigger, now: UnixMillis) -> Evaluation {
        Evaluation {
            id,
            job_name: job_name.to_string(),
            job_type,
            priority,
            triggered_by: trigger,
            status: EvalStatus::Pending,
            status_description: String::new(),
            node_id: None,
            failed_groups: BTreeMap::new(),
            blocked_eval: None,
            previous_eval: None,
            wait_until: None,
            snapshot_index: 0,
            create_time: now,
            modify_time: now,
            create_index: 0,
            modify_index: 0,
        }
    }
}

impl PlacementFailure {
    /// One line: "memory exhausted on 3 nodes, constraint ${node.arch} = arm64 filtered 1 node".
    pub fn summary(&self) -> String {
        if let Some(quota) = &self.quota {
            return quota.clone();
        }
        let plural = |count: u32| if count == 1 { "node" } else { "nodes" };
        let mut parts: Vec<String> = Vec::new();
        for (dimension, count) in &self.exhausted {
            parts.push(format!("{dimension} exhausted on {count} {}", plural(*count)));
        }
        for (reason, count) in &self.filtered {
            parts.push(format!("{reason} filtered {count} {}", plural(*count)));
        }
        if self.nodes_evaluated == 0 {
            parts.push("no ready nodes in the job's datacenters".to_string());
        }
        parts.join(", ")
    }
}

/// A unit of scheduling work: "look at job X again because Y".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub id: String,
    pub job_name: String,
    pub job_type: JobType,
    pub priority: u8,
    pub triggered_by: EvalTrigger,
    pub status: EvalStatus,
    #[serde(default)]
    pub status_description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Per group: why placements failed (set on blocked and on completed-with-failures evals).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_groups: BTreeMap<String, PlacementFailure>,
    /// The blocked evaluation this one created for what it could not place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_eval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_eval: Option<String>,
    /// Not to be scheduled before this time (a delayed reschedule); the broker holds it until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<UnixMillis>,
    /// On a blocked evaluation: the store revision of the cluster picture it failed to place against. Capacity
    /// that appeared after it (while the evaluation was being written) unblocks it at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_index: Index,
    pub create_time: UnixMillis,
    pub modify_time: UnixMillis,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

/// Per-group counts shown by `job status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub desired: u32,
    pub placed: u32,
    pub pending: u32,
    pub running: u32,
    pub complete: u32,
    pub failed: u32,
    pub lost: u32,
}

/// Resources the group reserves, for quick display.
pub fn group_resources(resources: Resources) -> AllocatedResources {
    AllocatedResources { cpu: resources.cpu.into(), memory: resources.memory.into(), ports: Vec::new() }
}

fn is_zero(value: &Index) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::NodeScore;

    #[test]
    fn a_node_score_summary_names_the_present_parts_without_negative_zeros() {
        let score = NodeScore {
            node_id: "n".to_string(),
            node_name: "n".to_string(),
            fit: 0.5,
            node_affinity: Some(-0.0),
            spread: None,
            alloc_affinity: Some(-0.25),
            job_anti_affinity: None,
            score: 0.083_333,
        };
        assert_eq!(score.summary(), "0.083 (fit 0.500, node affinity 0.000, alloc affinity -0.250)");
    }
}
