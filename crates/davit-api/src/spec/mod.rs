//! The job spec: what users write in YAML or JSON (see DESIGN §3).
//!
//! Every field a user may write is declared here, also those this davit version does not act on yet;
//! [`validate`](crate::spec::validate) rejects the latter with a clear error instead of ignoring them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Duration;

mod diff;
mod parse;
mod validate;

pub use diff::diff_specs;
pub use parse::{SpecError, SpecErrors, parse_job_spec};
pub use validate::{KNOWN_SIGNALS, validate};

/// A job: a named, versioned set of task groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub job_type: JobType,
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default = "default_datacenters")]
    pub datacenters: Vec<String>,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
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

/// `attribute operator value`, e.g. `${node.arch} = x86_64`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    #[serde(default)]
    pub attribute: String,
    #[serde(default)]
    pub operator: ConstraintOperator,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConstraintOperator {
    #[default]
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = "<=")]
    LessOrEqual,
    #[serde(rename = ">")]
    Greater,
    #[serde(rename = ">=")]
    GreaterOrEqual,
    #[serde(rename = "regexp")]
    Regexp,
    #[serde(rename = "version")]
    Version,
    #[serde(rename = "set_contains")]
    SetContains,
    #[serde(rename = "is_set")]
    IsSet,
    #[serde(rename = "is_not_set")]
    IsNotSet,
}

/// Rolling/canary update settings. Parsed, but not acted on yet: validation rejects it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    #[serde(default)]
    pub max_parallel: u32,
    #[serde(default)]
    pub canary: u32,
    #[serde(default)]
    pub min_healthy_time: Duration,
    #[serde(default)]
    pub healthy_deadline: Duration,
    #[serde(default)]
    pub auto_revert: bool,
    #[serde(default)]
    pub strategy: String,
}

/// A group of tasks placed together on one node, `count` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_count")]
    pub count: u32,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Not acted on yet: validation rejects a non-empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<serde_json::Value>,
    /// Not acted on yet: validation rejects a non-empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinities: Vec<serde_json::Value>,
    /// Not acted on yet: validation rejects a non-empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinities: Vec<serde_json::Value>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Not acted on yet: validation rejects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule: Option<serde_json::Value>,
    #[serde(default)]
    pub network: NetworkSpec,
    /// Not acted on yet: validation rejects a non-empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<serde_json::Value>,
    /// Not acted on yet: validation rejects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<serde_json::Value>,
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
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            attempts: default_restart_attempts(),
            interval: default_restart_interval(),
            delay: default_restart_delay(),
            mode: RestartMode::default(),
        }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default = "default_kill_timeout")]
    pub kill_timeout: Duration,
    #[serde(default = "default_kill_signal")]
    pub kill_signal: String,
    /// Not acted on yet: validation rejects a non-empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<serde_json::Value>,
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

/// `exec` driver settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
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

impl JobSpec {
    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.groups.iter().find(|group| group.name == name)
    }
}

impl GroupSpec {
    /// Summed resources of all tasks of the group: what one allocation of it needs.
    pub fn total_resources(&self) -> Resources {
        self.tasks.iter().fold(Resources { cpu: 0, memory: 0 }, |sum, task| Resources {
            cpu: sum.cpu + task.resources.cpu,
            memory: sum.memory + task.resources.memory,
        })
    }
}
