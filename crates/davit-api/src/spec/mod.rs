//! The job spec: what users write in YAML or JSON (see DESIGN §3).
//!
//! Every field a user may write is declared here, also those this davit version does not act on yet;
//! [`validate`] rejects the latter with a clear error instead of ignoring them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Duration;

mod diff;
pub mod drivers;
mod limits;
pub(crate) mod parse;
mod placement;
pub mod promql;
mod scaling;
mod service;
mod update;
mod validate;

pub use diff::diff_specs;
pub use limits::SpecLimits;
pub use parse::{SpecError, SpecErrors, parse_job_spec, parse_job_spec_within};
pub use placement::{AllocAffinity, Constraint, ConstraintOperator, NodeAffinity, SpreadSpec};
pub use scaling::{
    BehaviorSpec, DEFAULT_TOLERANCE, MetricSpec, MetricTarget, MetricType, PredictiveMode, PredictiveSpec, ScalingPolicySpec,
    ScalingPolicyType, ScalingRulesSpec, ScalingSpec, SelectPolicy, ToleranceSpec,
};
pub use service::{BalanceAlgorithm, CheckOnFailure, CheckSpec, CheckType, HashKey, ServiceMode, ServiceSpec, UpstreamSpec};
pub use update::{AnalysisSpec, CountOrPercent, HealthCheckMode, Percent, UpdateSpec, UpdateStrategy};
pub use validate::{KNOWN_SIGNALS, check_dns_label, validate};

/// A file rendered for a task: `data` with `{{ var "path" "key" }}` and `{{ service "name" }}` (see
/// `crate::template`), written to `destination` in the task directory (`secrets/…` by convention; a container
/// sees the task directory at `/local`), owner-only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub data: String,
    pub destination: String,
    /// Also read the rendered text as `KEY=VALUE` lines into the task's environment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env: bool,
    #[serde(default)]
    pub change_mode: crate::template::ChangeMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_signal: Option<String>,
}

/// A job: a named, versioned set of task groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default)]
    pub name: String,
    /// The namespace the job lives in (`default` when absent); must exist when the job is registered.
    #[serde(default = "default_namespace", skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
    #[serde(default, rename = "type")]
    pub job_type: JobType,
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default = "default_datacenters")]
    pub datacenters: Vec<String>,
    /// Job-level constraints: node constraints, and `distinct_hosts` / `distinct_property` across all the
    /// job's groups.
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// How the scheduler ranks the nodes an allocation fits on; absent: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SchedulerAlgorithm>,
    /// How a new version replaces running allocations (each group may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    #[default]
    Service,
    Batch,
    System,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
            JobType::System => "system",
        }
    }
}

/// How the scheduler ranks the nodes that fit an allocation (the formulas are in `davit-scheduler`'s
/// `rank` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerAlgorithm {
    /// Fill the fullest node that fits: leaves whole nodes free for big allocations.
    #[default]
    Binpack,
    /// Use the emptiest node: least allocated first.
    Spread,
    /// Keep each node's CPU and memory utilisation equal (kube-scheduler's `BalancedResourceAllocation`).
    Balanced,
}

impl SchedulerAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerAlgorithm::Binpack => "binpack",
            SchedulerAlgorithm::Spread => "spread",
            SchedulerAlgorithm::Balanced => "balanced",
        }
    }
}

/// A group of tasks placed together on one node, `count` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_count")]
    pub count: u32,
    /// Matched by other groups' `alloc_affinities` and `anti_affinities` selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<SpreadSpec>,
    /// Node affinities: soft preferences for (or against) nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinities: Vec<NodeAffinity>,
    /// Place next to the selected allocations (same topology domain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alloc_affinities: Vec<AllocAffinity>,
    /// Place away from the selected allocations (another topology domain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinities: Vec<AllocAffinity>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Replace failed allocations (on another node when possible). Absent: failed allocations stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule: Option<ReschedulePolicy>,
    /// What happens to the group's allocations when their node loses its servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectSpec>,
    /// Overrides the job's `update:` for this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateSpec>,
    /// How long a stopping allocation's tasks keep running after it left the service catalog (proxies and DNS
    /// stop sending it new requests, in-flight ones finish) before they are sent their kill signal (default 0s,
    /// at most 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<Duration>,
    /// How `node drain` and `rebalance` move the group's allocations: `stop` (stop, then replace elsewhere;
    /// the default) or `live` (live-migrate the VMs; every task must use the `vm` driver).
    #[serde(default, skip_serializing_if = "MigrateMode::is_stop")]
    pub migrate: MigrateMode,
    #[serde(default)]
    pub network: NetworkSpec,
    /// Services the group's allocations offer: registered in the catalog while healthy, reachable
    /// through every agent's proxy and DNS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// Bounds of the group's count for `job scale` (and the autoscaler); a group with `scaling:` keeps the
    /// count it runs when a new version is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// What the agent does when a task exits: restart it up to `attempts` times within `interval`,
/// waiting `delay` between tries; then `fail` the allocation or `delay` until the interval is over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    #[serde(default = "default_restart_attempts")]
    pub attempts: u32,
    #[serde(default = "default_restart_interval")]
    pub interval: Duration,
    #[serde(default = "default_restart_delay")]
    pub delay: Duration,
    #[serde(default)]
    pub mode: RestartMode,
    /// How the delay grows between restarts: `constant` (default) or `exponential` (doubling, ±25% jitter).
    #[serde(default, skip_serializing_if = "is_default")]
    pub delay_function: RestartDelayFunction,
    /// Cap for an exponential delay; unset: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            attempts: default_restart_attempts(),
            interval: default_restart_interval(),
            delay: default_restart_delay(),
            mode: RestartMode::default(),
            delay_function: RestartDelayFunction::default(),
            max_delay: None,
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartDelayFunction {
    #[default]
    Constant,
    Exponential,
}

/// What happens to a group's allocations when their node and the servers lose each other (Nomad's
/// `disconnect` block). Without it: the agent keeps the tasks running, and the servers replace them as soon as
/// the node is down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectSpec {
    /// Fencing: an agent that could not reach any server for this long stops the group's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after: Option<Duration>,
    /// The servers count a down node's allocations as disconnected, not lost, for this long after its last
    /// heartbeat: they may come back. Then they are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<Duration>,
    /// `true`: a disconnected allocation gets a replacement on a reachable node at once (and `reconcile` picks
    /// one of the two if its node comes back in time); `false`: it is never replaced and waits for its node.
    #[serde(default = "default_replace", skip_serializing_if = "is_true")]
    pub replace: bool,
    /// Which allocation stays when a disconnected one comes back beside its replacement (default
    /// [`ReconcileStrategy::BestScore`], as Nomad's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileStrategy>,
}

impl Default for DisconnectSpec {
    fn default() -> Self {
        DisconnectSpec { stop_after: None, lost_after: None, replace: true, reconcile: None }
    }
}

/// `disconnect.reconcile`: of an allocation that reconnects and its replacement, the one that stays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileStrategy {
    /// The one that was disconnected.
    KeepOriginal,
    /// The one placed while it was away.
    KeepReplacement,
    /// The one on the node the scheduler ranks higher now (its fit score with the group's algorithm).
    #[default]
    BestScore,
    /// The one whose tasks have run the longest without a restart.
    LongestRunning,
}

impl ReconcileStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileStrategy::KeepOriginal => "keep_original",
            ReconcileStrategy::KeepReplacement => "keep_replacement",
            ReconcileStrategy::BestScore => "best_score",
            ReconcileStrategy::LongestRunning => "longest_running",
        }
    }
}

fn default_replace() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// When and how often the scheduler replaces a failed allocation. Unset fields take the defaults of
/// the job type (as in Nomad): service → unlimited, delay 30s, exponential, max_delay 1h;
/// batch → 1 attempt per 24h, delay 5s, constant. See [`ReschedulePolicy::resolve`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReschedulePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_function: Option<DelayFunction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlimited: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayFunction {
    #[default]
    Constant,
    Exponential,
    Fibonacci,
}

/// A [`ReschedulePolicy`] with the job type's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedReschedule {
    pub attempts: u32,
    pub interval: std::time::Duration,
    pub delay: std::time::Duration,
    pub delay_function: DelayFunction,
    pub max_delay: std::time::Duration,
    pub unlimited: bool,
}

impl ReschedulePolicy {
    /// The policy with unset fields taken from the job type's defaults.
    pub fn resolve(&self, job_type: JobType) -> ResolvedReschedule {
        let defaults = match job_type {
            JobType::Batch => ResolvedReschedule {
                attempts: 1,
                interval: std::time::Duration::from_secs(24 * 3600),
                delay: std::time::Duration::from_secs(5),
                delay_function: DelayFunction::Constant,
                max_delay: std::time::Duration::from_secs(3600),
                unlimited: false,
            },
            JobType::Service | JobType::System => ResolvedReschedule {
                attempts: 0,
                interval: std::time::Duration::ZERO,
                delay: std::time::Duration::from_secs(30),
                delay_function: DelayFunction::Exponential,
                max_delay: std::time::Duration::from_secs(3600),
                // Unlimited by default unless the user bounded the attempts.
                unlimited: self.attempts.is_none() && self.interval.is_none(),
            },
        };
        ResolvedReschedule {
            attempts: self.attempts.unwrap_or(defaults.attempts),
            interval: self.interval.map_or(defaults.interval, Duration::as_std),
            delay: self.delay.map_or(defaults.delay, Duration::as_std),
            delay_function: self.delay_function.unwrap_or(defaults.delay_function),
            max_delay: self.max_delay.map_or(defaults.max_delay, Duration::as_std),
            unlimited: self.unlimited.unwrap_or(defaults.unlimited),
        }
    }
}

impl ResolvedReschedule {
    /// The delay before the next replacement, given how many reschedules came before (the tracker's
    /// length): constant, doubling, or Fibonacci-growing from `delay`, capped at `max_delay`.
    pub fn delay_for(&self, previous: usize) -> std::time::Duration {
        let base = self.delay;
        let delay = match self.delay_function {
            DelayFunction::Constant => base,
            DelayFunction::Exponential => base.saturating_mul(1u32.checked_shl(previous.min(31) as u32).unwrap_or(u32::MAX)),
            DelayFunction::Fibonacci => {
                let (mut a, mut b) = (base, base);
                for _ in 1..previous {
                    let next = a.saturating_add(b);
                    a = b;
                    b = next;
                    if b >= self.max_delay {
                        break;
                    }
                }
                b
            }
        };
        delay.min(self.max_delay)
    }
}

/// How a drain or a rebalance moves a group's allocations (`migrate:` of a group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateMode {
    /// Stop the allocation, then the scheduler places a replacement elsewhere.
    #[default]
    Stop,
    /// Live-migrate the running VMs to another node (QEMU migration). A VM whose migration failed (or, for a
    /// drain, cannot start) is stopped and replaced instead.
    Live,
}

impl MigrateMode {
    pub fn is_stop(&self) -> bool {
        *self == MigrateMode::Stop
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartMode {
    #[default]
    Fail,
    Delay,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// A named port. The scheduler picks a host port from the node's range unless `static` is set;
/// `to` is the port the task listens on inside its own network (defaults to the host port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u16>,
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_port: Option<u16>,
}

/// One process, container or VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub driver: DriverName,
    /// Driver-specific settings; validated per driver (see `validate`).
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment the task gets like `env`, but whose values the API never shows: `<redacted>` in job
    /// versions, diffs, plans and the event stream (only the agents that run the job read them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default = "default_kill_timeout")]
    pub kill_timeout: Duration,
    #[serde(default = "default_kill_signal")]
    pub kill_signal: String,
    /// Files the agent renders from variables and services before the task starts, and again when they
    /// change (see `crate::template`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<TemplateSpec>,
    /// Health checks the agent runs while the task runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSpec>,
    /// Services the task reaches through the agent's proxy on a local port
    /// (`DAVIT_UPSTREAM_<SERVICE>_ADDR`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverName {
    #[default]
    Exec,
    Container,
    Vm,
}

impl DriverName {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverName::Exec => "exec",
            DriverName::Container => "container",
            DriverName::Vm => "vm",
        }
    }
}

/// CPU in millicores (1000 = one core) and memory in MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default = "default_cpu")]
    pub cpu: u32,
    #[serde(default = "default_memory")]
    pub memory: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu: default_cpu(), memory: default_memory() }
    }
}

fn default_priority() -> u8 {
    50
}
fn default_datacenters() -> Vec<String> {
    vec!["dc1".to_string()]
}
fn default_count() -> u32 {
    1
}
fn default_restart_attempts() -> u32 {
    2
}
fn default_restart_interval() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_restart_delay() -> Duration {
    Duration::from_secs(15)
}
fn default_kill_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_kill_signal() -> String {
    "SIGTERM".to_string()
}
fn default_cpu() -> u32 {
    100
}
fn default_memory() -> u32 {
    64
}

fn default_namespace() -> String {
    crate::acl::DEFAULT_NAMESPACE.to_string()
}

fn is_default_namespace(namespace: &String) -> bool {
    namespace == crate::acl::DEFAULT_NAMESPACE
}

/// What the API shows instead of a secret value.
pub const REDACTED: &str = "<redacted>";

impl GroupSpec {
    /// The counts `scaling:` allows (`min` defaults to 1), `None` without the block.
    pub fn count_bounds(&self) -> Option<std::ops::RangeInclusive<u32>> {
        let scaling = self.scaling.as_ref()?;
        Some(scaling.min_count(self.count)..=scaling.max)
    }
}

impl JobSpec {
    /// A new version keeps the count each group with `scaling:` runs in `current` (the job's running version),
    /// within the new bounds; what it kept, one line per group whose written count it overrode.
    pub fn keep_scaled_counts(&mut self, current: &JobSpec) -> Vec<String> {
        let mut kept = Vec::new();
        for group in &mut self.groups {
            let Some(bounds) = group.count_bounds() else { continue };
            let Some(running_group) = current.group(&group.name) else { continue };
            let running = running_group.count;
            let scales_to_zero = |group: &GroupSpec| group.scaling.as_ref().and_then(ScalingSpec::scales_to_zero).is_some();
            if running == 0 && scales_to_zero(running_group) && !scales_to_zero(group) {
                // Scaled to zero, and nothing would wake it any more: the file's count applies.
                continue;
            }
            let count = running.clamp(*bounds.start(), *bounds.end());
            if count != group.count {
                kept.push(format!("group {} keeps its count {count} (it has scaling:; the file says {})", group.name, group.count));
                group.count = count;
            }
        }
        kept
    }

    /// The update strategy of group `group` (see [`UpdateStrategy::resolve`]): `None` for batch and system jobs,
    /// an unknown group, or no `update:`.
    pub fn update_strategy(&self, group: &str) -> Option<UpdateStrategy> {
        if self.job_type != JobType::Service {
            return None;
        }
        let group = self.group(group)?;
        UpdateStrategy::resolve(self.update.as_ref(), group.update.as_ref(), group.count)
    }

    /// The spec as the API shows it: every `secret_env` value replaced by [`REDACTED`].
    pub fn redacted(&self) -> JobSpec {
        let mut spec = self.clone();
        for task in spec.groups.iter_mut().flat_map(|group| group.tasks.iter_mut()) {
            for value in task.secret_env.values_mut() {
                *value = REDACTED.to_string();
            }
        }
        spec
    }

    /// The job's id in the cluster: its name, qualified by its namespace unless that is `default`
    /// (see [`crate::namespace::job_id`]).
    pub fn id(&self) -> String {
        crate::namespace::job_id(&self.namespace, &self.name)
    }

    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.groups.iter().find(|group| group.name == name)
    }
}

impl GroupSpec {
    /// Summed resources of all tasks of the group: what one allocation of it needs.
    pub fn total_resources(&self) -> Resources {
        // Saturating: a server refuses groups whose sum does not fit (`SpecLimits`), and nothing may wrap.
        self.tasks.iter().fold(Resources { cpu: 0, memory: 0 }, |sum, task| Resources {
            cpu: sum.cpu.saturating_add(task.resources.cpu),
            memory: sum.memory.saturating_add(task.resources.memory),
        })
    }
}
