//! Task drivers: how davit starts, watches, stops and re-attaches to workloads on a node.
//!
//! The [`Driver`] trait is small (after Nomad's `plugins/drivers/driver.go`). Drivers: `exec`
//! ([`ExecDriver`]: a process in its own cgroups, supervised by a small `davit executor` process so that it
//! outlives agent restarts and its exit code is never lost).
//!
//! Modules: [`cgroups`] (per-task cgroups on v1/hybrid and v2 hosts, detected at runtime), [`executor`] (the
//! supervisor process; the `davit-executor` binary and `davit executor` call [`executor::main`]), [`logs`]
//! (size-rotated log files), [`sys`] (pidfds, signals and `/proc`, where the crate's `unsafe` lives besides the
//! `pre_exec` hooks).
//!
//! This crate must never talk to the server or make placement decisions: it gets a [`TaskConfig`]
//! and reports what happened to the task.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod cgroups;
mod container;
mod exec;
pub mod executor;
pub mod logs;
pub mod sys;
pub mod vm;

pub use container::{ContainerDriver, ContainerDriverConfig, DRIVER_NAME as CONTAINER_DRIVER_NAME, RuntimeChoice};
pub use exec::{DEFAULT_USER as EXEC_DEFAULT_USER, DRIVER_NAME as EXEC_DRIVER_NAME, ExecDriver, ExecDriverConfig, exit_code};
pub use vm::{DRIVER_NAME as VM_DRIVER_NAME, ImagePolicy, MigrationReport, VmDriver, VmDriverConfig};

/// A boxed future, so `Driver` stays object safe (`Arc<dyn Driver>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a driver needs to start one task.
#[derive(Clone, Debug)]
pub struct TaskConfig {
    pub alloc_id: String,
    pub task_name: String,
    /// The task's `config:` block from the job spec (for exec: `{command, args}`), already interpolated.
    pub driver_config: serde_json::Value,
    /// Complete environment of the task (the agent adds `DAVIT_*` variables).
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    /// `<data_dir>/allocs/<alloc_id>`: shared by the allocation's tasks.
    pub alloc_dir: PathBuf,
    /// `<alloc_dir>/<task>`: the task's working directory.
    pub task_dir: PathBuf,
    /// Where `<task>.stdout.N` / `<task>.stderr.N` go (the agent uses `<alloc_dir>/.logs`, out of its tasks' reach).
    pub log_dir: PathBuf,
    pub resources: TaskResources,
    pub logs: LogRotation,
    /// Where the driver reports progress worth a task event (image pulls, downloads).
    pub events: EventSink,
}

/// Receives `(event type, message, progress)` a driver reports while it works on a task; the agent turns
/// them into task events.
#[derive(Clone)]
pub struct EventSink(Arc<EventFn>);

/// `(event type, message, (bytes done, bytes total) of a long step)`.
type EventFn = dyn Fn(&str, &str, Option<(u64, u64)>) + Send + Sync;

impl EventSink {
    pub fn new(sink: impl Fn(&str, &str, Option<(u64, u64)>) + Send + Sync + 'static) -> EventSink {
        EventSink(Arc::new(sink))
    }

    /// A sink that drops every event.
    pub fn discard() -> EventSink {
        EventSink::new(|_, _, _| {})
    }

    pub fn emit(&self, event_type: &str, message: &str) {
        (self.0)(event_type, message, None);
    }

    /// An event about a long step, `done` of `total` bytes into it.
    pub fn emit_progress(&self, event_type: &str, message: &str, done: u64, total: u64) {
        (self.0)(event_type, message, Some((done, total)));
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskResources {
    /// Millicores: 1000 = one core (CPU quota).
    pub cpu_millicores: u32,
    /// Hard memory limit in MiB.
    pub memory_mib: u32,
}

/// Size-based log rotation: at most `max_files` files of `max_file_bytes` per stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    pub max_files: u32,
    pub max_file_bytes: u64,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation { max_files: 10, max_file_bytes: 10 * 1024 * 1024 }
    }
}

/// What a driver needs to find a running task again, also after an agent restart.
/// The agent persists it in its local state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskHandle {
    pub driver: String,
    pub alloc_id: String,
    pub task_name: String,
    /// The task's main process.
    pub pid: u32,
    pub started_at_ms: u64,
    /// Driver-private state (executor pid, cgroup paths, …).
    pub driver_state: serde_json::Value,
}

impl TaskHandle {
    /// The driver-private state of a handle that `driver` started; an error for another driver's handle.
    pub(crate) fn driver_state_of<T: serde::de::DeserializeOwned>(&self, driver: &'static str) -> Result<T, DriverError> {
        if self.driver != driver {
            return Err(DriverError::Other(format!("handle of driver {:?} given to the {driver} driver", self.driver)));
        }
        serde_json::from_value(self.driver_state.clone())
            .map_err(|error| DriverError::InvalidConfig { driver, message: format!("unreadable driver_state in task handle: {error}") })
    }
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitResult {
    /// Exit code when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (memory limit reached).
    pub oom_killed: bool,
}

impl ExitResult {
    pub fn successful(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none() && !self.oom_killed
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskRunState {
    Running,
    Exited(ExitResult),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What the node reports about a driver (becomes `Node.drivers[name]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub detected: bool,
    pub healthy: bool,
    pub description: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("invalid {driver} config: {message}")]
    InvalidConfig { driver: &'static str, message: String },
    #[error("starting task {task}: {message}")]
    Start {
        task: String,
        message: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("task process {pid} is gone")]
    TaskGone { pid: u32 },
    #[error("{operation}: {source}")]
    Io {
        operation: String,
        #[source]
        source: std::io::Error,
    },
    /// The executor of a task died without recording how the task ended (it was killed, or the machine
    /// rebooted): the task's fate is unknown and it must be treated as failed.
    #[error("executor {executor_pid} of task {task} died without recording the task's exit status")]
    ExecutorLost { task: String, executor_pid: u32 },
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error("{operation} timed out after {after:?}")]
    Timeout { operation: String, after: Duration },
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    /// The driver cannot do this at all (a request error, not a failure).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// A way of running tasks. Every method but `start` takes the handle `start` returned
/// (or one restored from the agent's state, after `recover`). `stop` and `destroy` are idempotent.
pub trait Driver: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint>;
    /// Starts the task and returns once it runs (or failed to start).
    fn start<'a>(&'a self, config: &'a TaskConfig) -> BoxFuture<'a, Result<TaskHandle, DriverError>>;
    /// Resolves when the task has exited.
    fn wait<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<ExitResult, DriverError>>;
    /// Sends `signal` (e.g. `SIGTERM`), waits up to `timeout`, then kills the task and all its processes.
    fn stop<'a>(&'a self, handle: &'a TaskHandle, signal: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Releases everything the task held (cgroups, executor). Kills it first if still running.
    fn destroy<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>>;
    fn inspect<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskRunState, DriverError>>;
    /// Re-attaches to a task started by an earlier agent process; fails with `TaskGone` if it died meanwhile
    /// (then `wait` still reports how it ended when that is known).
    fn recover<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Prepares `command` to run in the task's context (its namespaces, cgroups, user, env and working dir)
    /// with `env` added. The caller chooses its stdio (pipes or a terminal) and spawns it; `davit alloc exec`
    /// does. Spawn it soon: it holds descriptors of the task's cgroups until dropped.
    fn exec_command<'a>(
        &'a self,
        handle: &'a TaskHandle,
        command: &'a [String],
        env: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<tokio::process::Command, DriverError>>;
    /// Runs a command in the task's context to its end and collects its output (exec health checks); after
    /// `timeout` the command and everything it started is killed.
    fn exec<'a>(
        &'a self,
        handle: &'a TaskHandle,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, DriverError>> {
        Box::pin(async move {
            let process = self.exec_command(handle, command, &BTreeMap::new()).await?;
            exec::run_captured(process, timeout).await
        })
    }
    fn stats<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskStats, DriverError>>;
    /// The driver's live migration, if it can move a running task to another node (the vm driver can).
    fn live_migration(&self) -> Option<&dyn LiveMigration> {
        None
    }
    /// What `stop` with these arguments will do, for the task's `Killing` event, when it is not sending
    /// `signal` and waiting up to `timeout` (the vm driver powers the guest off through ACPI).
    fn describe_stop(&self, _handle: &TaskHandle, _signal: &str, _timeout: Duration) -> Option<String> {
        None
    }
    /// Sends `signal` to the running task and returns (a template changed, `change_mode: signal`). Drivers
    /// that cannot (the vm driver) say so.
    fn signal<'a>(&'a self, _handle: &'a TaskHandle, _signal: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { Err(DriverError::Unsupported(format!("the {} driver cannot send a signal to a running task", self.name()))) })
    }
}

/// An optional ability of a driver: move a running task to another node without stopping it.
///
/// The destination starts first ([`start_incoming`](LiveMigration::start_incoming), listening on a port),
/// the source sends its state there ([`migrate`](LiveMigration::migrate), which ends the source task with a
/// successful exit), and the destination resumes by itself
/// ([`wait_incoming`](LiveMigration::wait_incoming) resolves then). Who tells whom where to connect is the
/// caller's business.
pub trait LiveMigration: Send + Sync {
    /// Starts the task as the destination of a migration, waiting for its state on `listen` (`host:port`), over
    /// TLS with `tls`.
    fn start_incoming<'a>(
        &'a self,
        config: &'a TaskConfig,
        listen: &'a str,
        tls: Option<&'a MigrationTls>,
    ) -> BoxFuture<'a, Result<TaskHandle, DriverError>>;
    /// Resolves once the destination task of `handle` runs (its migration completed); fails if it cannot.
    fn wait_incoming<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Migrates the running task of `handle` to `destination_uri` (`tcp:host:port`), over TLS with `tls`, and
    /// ends it there.
    fn migrate<'a>(
        &'a self,
        handle: &'a TaskHandle,
        destination_uri: &'a str,
        tls: Option<&'a MigrationTls>,
    ) -> BoxFuture<'a, Result<MigrationReport, DriverError>>;
}

/// TLS for the stream of a live migration, when the cluster uses TLS: the cluster's CA, this node's certificate
/// and key (PEM), and the name the destination's certificate must carry (checked by the source). Each end
/// accepts only a peer whose certificate the CA signed.
#[derive(Clone)]
pub struct MigrationTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The destination's name (`<node-id>.node.davit`); unused on the destination.
    pub peer_name: String,
}

impl std::fmt::Debug for MigrationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationTls").field("peer_name", &self.peer_name).finish_non_exhaustive()
    }
}
