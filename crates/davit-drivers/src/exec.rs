//! The `exec` driver: a process in its own cgroups, supervised by an executor process.
//!
//! The driver keeps no per-task memory: everything it needs is in the [`TaskHandle`] (`driver_state`) and in
//! the executor's state directory `<alloc_dir>/.executor/<task>/`, so a new driver instance (after an agent
//! restart) can `recover` and `wait` exactly like the one that started the task. Processes are identified by
//! pid *and* start time, and signalled through pidfds, so a reused pid is never mistaken for the task.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use davit_api::spec::drivers::{DriverConfig, ExecConfig, Isolation};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, Interest};

use crate::cgroups::{self, CgroupLayout, CgroupLimits, CgroupVersion, TaskCgroup};
use crate::executor::{self, ExecutorSpec, FilesystemIsolation, StartReport};
use crate::sys::{self, ProcessIdentity};
use crate::{BoxFuture, Driver, DriverError, ExecOutput, ExitResult, Fingerprint, TaskConfig, TaskHandle, TaskRunState, TaskStats};

/// The driver's name in job specs (`driver: exec`).
pub const DRIVER_NAME: &str = "exec";

/// How long `start` waits for the executor to report that the task runs.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long killing a cgroup may take before it is reported as an error.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for the executor to record the exit after the cgroup was killed.
const RECORD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecDriverConfig {
    /// The executor command; the driver appends the spec path. Production: `["/path/to/davit", "executor"]`.
    pub executor_command: Vec<String>,
    /// Where cgroup hierarchies are mounted, normally [`cgroups::DEFAULT_ROOT`].
    pub cgroup_root: PathBuf,
    /// Exec tasks may run as root or with `isolation: none` (agent `--allow-root-exec`).
    pub allow_root_exec: bool,
}

impl ExecDriverConfig {
    /// A config with the default cgroup root; tasks run unprivileged.
    pub fn new(executor_command: Vec<String>) -> ExecDriverConfig {
        ExecDriverConfig { executor_command, cgroup_root: PathBuf::from(cgroups::DEFAULT_ROOT), allow_root_exec: false }
    }
}

/// Who an exec task runs as unless its `user:` says otherwise.
pub const DEFAULT_USER: &str = "nobody";

/// The size of an isolated exec task's private `/tmp` (charged to its memory limit as it fills).
const TMP_MIB: u32 = 64;

/// The exec driver. See the module docs.
#[derive(Debug)]
pub struct ExecDriver {
    config: ExecDriverConfig,
    /// The detected cgroup layout, or why there is none (reported by `fingerprint`, returned by `start`).
    layout: Result<CgroupLayout, String>,
    /// The kernel has `mount_setattr(2)`: tasks can be isolated (`isolation: mount`).
    isolation: bool,
}

/// A process for the executor to supervise, for drivers built on the exec driver (container, vm).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcessSpec {
    pub command: String,
    pub args: Vec<String>,
    /// See [`ExecutorSpec::private_unmounts`].
    pub private_unmounts: Vec<PathBuf>,
    /// See [`ExecutorSpec::skip_controllers`].
    pub skip_controllers: Vec<String>,
    /// See [`ExecutorSpec::isolation`].
    pub isolation: Option<FilesystemIsolation>,
}

/// `TaskHandle::driver_state` of the exec driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ExecDriverState {
    executor_pid: u32,
    executor_start_time: u64,
    task_start_time: u64,
    state_dir: PathBuf,
    cgroup_version: String,
    cgroup_dirs: BTreeMap<String, PathBuf>,
}

impl ExecDriverState {
    fn from_handle(handle: &TaskHandle) -> Result<ExecDriverState, DriverError> {
        handle.driver_state_of(DRIVER_NAME)
    }

    fn executor(&self) -> ProcessIdentity {
        ProcessIdentity { pid: self.executor_pid, start_time: self.executor_start_time }
    }

    fn cgroup(&self) -> Result<TaskCgroup, DriverError> {
        let version = CgroupVersion::parse(&self.cgroup_version).ok_or_else(|| DriverError::InvalidConfig {
            driver: DRIVER_NAME,
            message: format!("unknown cgroup version {:?} in task handle", self.cgroup_version),
        })?;
        Ok(TaskCgroup::from_dirs(version, self.cgroup_dirs.clone()))
    }

    fn exit_result(&self) -> Result<Option<ExitResult>, DriverError> {
        executor::read_exit(&self.state_dir).map_err(|source| DriverError::Io {
            operation: format!("reading {}", self.state_dir.join(executor::EXIT_FILE).display()),
            source,
        })
    }
}

/// The cgroup of a task started by the exec driver (or by a driver built on it).
pub(crate) fn task_cgroup(handle: &TaskHandle) -> Result<TaskCgroup, DriverError> {
    ExecDriverState::from_handle(handle)?.cgroup()
}

fn task_identity(handle: &TaskHandle, state: &ExecDriverState) -> ProcessIdentity {
    ProcessIdentity { pid: handle.pid, start_time: state.task_start_time }
}

impl ExecDriver {
    /// Creates the driver and detects the cgroup layout under `config.cgroup_root`.
    pub fn new(config: ExecDriverConfig) -> ExecDriver {
        let layout = CgroupLayout::detect(&config.cgroup_root).map_err(|error| error.to_string());
        ExecDriver { config, layout, isolation: sys::mount_setattr_available() }
    }

    /// The detected cgroup layout.
    /// The executor command (`["/path/to/davit", "executor"]`).
    pub(crate) fn executor_command(&self) -> &[String] {
        &self.config.executor_command
    }

    pub fn cgroup_layout(&self) -> Result<&CgroupLayout, DriverError> {
        self.layout.as_ref().map_err(|reason| DriverError::Other(format!("exec driver unavailable: {reason}")))
    }

    /// The executor's state directory of a task: `<alloc_dir>/.executor/<task>`.
    pub fn state_dir(config: &TaskConfig) -> PathBuf {
        config.alloc_dir.join(".executor").join(&config.task_name)
    }

    /// Starts `process` under an executor, in the task's cgroups, with `config`'s environment, user and logs.
    pub(crate) async fn start_process(&self, config: &TaskConfig, process: ProcessSpec) -> Result<TaskHandle, DriverError> {
        let start_error =
            |message: String, source: Option<io::Error>| DriverError::Start { task: config.task_name.clone(), message, source };
        let Some((program, program_args)) = self.config.executor_command.split_first() else {
            return Err(start_error("no executor command configured".to_owned(), None));
        };
        let layout = self.cgroup_layout()?.clone();

        let state_dir = Self::state_dir(config);
        // The spec holds the task's environment (secrets included): only root may read the state directory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .map_err(|source| io_error(format!("creating {}", state_dir.display()), source))?;
        for dir in [&config.task_dir, &config.log_dir] {
            std::fs::create_dir_all(dir).map_err(|source| io_error(format!("creating {}", dir.display()), source))?;
        }
        // The agent starts a task only when it holds no handle for it: an executor still running for this task is
        // one an earlier agent process started but never recorded (it was killed in between). End it and its
        // task first, so the task never runs twice.
        let spec_path = state_dir.join(executor::SPEC_FILE);
        let leftover = layout.task_cgroup(&CgroupLayout::task_cgroup_name(&config.alloc_id, &config.task_name));
        blocking(move || end_leftover_executor(&spec_path, &leftover)).await;
        // A restarted task reuses the directory: results of the previous run must not be taken for this one.
        for stale in [executor::PID_FILE, executor::EXIT_FILE] {
            match std::fs::remove_file(state_dir.join(stale)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(io_error(format!("removing {}", state_dir.join(stale).display()), source)),
            }
        }

        let name = CgroupLayout::task_cgroup_name(&config.alloc_id, &config.task_name);
        let limits = CgroupLimits::from_resources(config.resources);
        let cgroup = blocking(move || layout.create(&name, limits)).await?;

        let spec = ExecutorSpec {
            task_name: config.task_name.clone(),
            command: process.command,
            args: process.args,
            env: config.env.clone(),
            cwd: config.task_dir.clone(),
            user: config.user.clone(),
            log_dir: config.log_dir.clone(),
            logs: config.logs,
            state_dir: state_dir.clone(),
            cgroup_version: cgroup.version().as_str().to_owned(),
            cgroup_dirs: cgroup.dirs().clone(),
            private_unmounts: process.private_unmounts,
            skip_controllers: process.skip_controllers,
            isolation: process.isolation,
        };
        let spec_path = state_dir.join(executor::SPEC_FILE);
        let spec_json = serde_json::to_vec_pretty(&spec).expect("ExecutorSpec serializes");
        if let Err(error) = executor::write_atomically(&spec_path, &spec_json) {
            let _ = remove_cgroup(cgroup).await;
            return Err(start_error("writing the executor spec".to_owned(), Some(io::Error::other(error))));
        }

        let executor_log_path = state_dir.join(executor::LOG_FILE);
        // One log per run, so a start failure shows this run's messages only.
        let spawned = File::create(&executor_log_path).and_then(|log| {
            std::process::Command::new(program)
                .args(program_args)
                .arg(&spec_path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                let _ = remove_cgroup(cgroup).await;
                return Err(start_error(format!("spawning executor {program:?}"), Some(source)));
            }
        };
        // Read before anyone can reap the executor, so the identity is certain.
        let executor_start_time = sys::proc_stat(child.id()).ok().flatten().map_or(0, |stat| stat.start_time);
        let executor = ProcessIdentity { pid: child.id(), start_time: executor_start_time };
        let stdout = child.stdout.take().expect("stdout is piped");
        // The executor is our child: reap it whenever it exits. `wait` watches it through a pidfd instead, which
        // also works for a driver that did not spawn it.
        let reaper = std::thread::Builder::new().name(format!("reap-executor-{}", child.id())).stack_size(64 * 1024);
        if let Err(error) = reaper.spawn(move || {
            let _ = child.wait();
        }) {
            tracing::warn!(%error, "cannot start executor reaper thread; the executor will linger as a zombie");
        }

        let report = tokio::time::timeout(START_TIMEOUT, blocking(move || executor::read_report(stdout))).await;
        let failure = match report {
            Ok(Ok(Some(StartReport::Started(task)))) => {
                let state = ExecDriverState {
                    executor_pid: executor.pid,
                    executor_start_time,
                    task_start_time: task.start_time,
                    state_dir,
                    cgroup_version: spec.cgroup_version,
                    cgroup_dirs: spec.cgroup_dirs,
                };
                return Ok(TaskHandle {
                    driver: DRIVER_NAME.to_owned(),
                    alloc_id: config.alloc_id.clone(),
                    task_name: config.task_name.clone(),
                    pid: task.pid,
                    started_at_ms: now_ms(),
                    driver_state: serde_json::to_value(&state).expect("ExecDriverState serializes"),
                });
            }
            Ok(Ok(Some(StartReport::Failed { message }))) => message,
            Ok(Ok(None)) => {
                let log = std::fs::read_to_string(&executor_log_path).unwrap_or_default();
                format!("executor exited without reporting; its log: {}", log.trim())
            }
            Ok(Err(error)) => format!("reading the executor's report: {error}"),
            Err(_) => format!("executor did not report within {START_TIMEOUT:?}"),
        };
        if let Ok(Some(pidfd)) = sys::pidfd_open_identity(executor) {
            let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
        }
        let _ = remove_cgroup(cgroup).await;
        Err(start_error(failure, None))
    }

    /// Sends `signal` to the task's main process while it runs; `Ok(false)` when it was gone already.
    fn signal_task(&self, handle: &TaskHandle, signal: &str) -> Result<bool, DriverError> {
        let signal_number = sys::signal_number(signal).ok_or_else(|| DriverError::UnknownSignal(signal.to_owned()))?;
        let state = ExecDriverState::from_handle(handle)?;
        if state.exit_result()?.is_some() {
            return Ok(false);
        }
        let task = sys::pidfd_open_identity(task_identity(handle, &state))
            .map_err(|source| io_error(format!("opening a pidfd for task {}", handle.pid), source))?;
        let Some(task) = task else { return Ok(false) };
        sys::pidfd_send_signal(&task, signal_number)
            .map_err(|source| io_error(format!("sending {signal} to task {}", handle.pid), source))?;
        Ok(true)
    }
}

impl Driver for ExecDriver {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        Box::pin(async move {
            let layout = match &self.layout {
                Ok(layout) => layout.clone(),
                Err(reason) => {
                    return Fingerprint {
                        detected: true,
                        healthy: false,
                        description: format!("cgroups unavailable: {reason}"),
                        attributes: BTreeMap::new(),
                    };
                }
            };
            let attributes = BTreeMap::from([
                ("driver.exec.cgroups".to_owned(), layout.version().as_str().to_owned()),
                ("driver.exec.isolation".to_owned(), self.isolation.to_string()),
            ]);
            let probe_layout = layout.clone();
            match blocking(move || probe_layout.probe()).await {
                Ok(()) => Fingerprint {
                    detected: true,
                    healthy: true,
                    description: format!(
                        "cgroups {} under {}{}",
                        layout.version().as_str(),
                        layout.root().display(),
                        if self.isolation { "" } else { "; no filesystem isolation (mount_setattr needs Linux 5.12 or later)" }
                    ),
                    attributes,
                },
                Err(error) => Fingerprint {
                    detected: true,
                    healthy: false,
                    description: format!("cannot create cgroups: {}", davit_api::error_chain(&error)),
                    attributes,
                },
            }
        })
    }

    fn start<'a>(&'a self, config: &'a TaskConfig) -> BoxFuture<'a, Result<TaskHandle, DriverError>> {
        Box::pin(async move {
            let invalid = |message: String| DriverError::InvalidConfig { driver: DRIVER_NAME, message };
            let task_config = ExecConfig::parse(&config.driver_config).map_err(invalid)?;
            let user = config.user.clone().unwrap_or_else(|| DEFAULT_USER.to_owned());
            let name = user.clone();
            let ids = blocking(move || sys::lookup_user(&name)).await.map_err(|error| invalid(format!("user {user:?}: {error}")))?;
            if !self.config.allow_root_exec {
                if ids.uid == 0 || ids.gid == 0 {
                    return Err(invalid(format!(
                        "exec tasks may not run as root (user {user:?}) on this node: start its agent with --allow-root-exec, or remove `user:` to run as {DEFAULT_USER}"
                    )));
                }
                if task_config.isolation == Isolation::None {
                    return Err(invalid(
                        "`isolation: none` is not allowed on this node: start its agent with --allow-root-exec".to_owned(),
                    ));
                }
            }
            if task_config.isolation == Isolation::Mount && !self.isolation {
                return Err(invalid(
                    "this node's kernel lacks mount_setattr(2) (Linux 5.12 or later), which isolating an exec task needs: \
                     run the job on a newer node (constraint `${attr.driver.exec.isolation}` = true), or set `isolation: none` \
                     (its agent needs --allow-root-exec)"
                        .to_owned(),
                ));
            }
            let shared = config.alloc_dir.join("alloc").join("data");
            let (task_dir, shared_dir) = (config.task_dir.clone(), shared.clone());
            blocking(move || prepare_task_dirs(&task_dir, &shared_dir, ids)).await.map_err(invalid)?;
            // A tmpfs over /tmp would hide a task directory below it (a data dir in /tmp): then /tmp stays read-only.
            let tmp_mib = if config.task_dir.starts_with("/tmp") { 0 } else { TMP_MIB };
            let isolation = (task_config.isolation == Isolation::Mount)
                .then(|| FilesystemIsolation { writable: vec![config.task_dir.clone(), shared], tmp_mib });
            let process = ProcessSpec {
                command: task_config.command,
                args: task_config.args,
                private_unmounts: Vec::new(),
                skip_controllers: Vec::new(),
                isolation,
            };
            let mut task = config.clone();
            task.user = Some(user);
            self.start_process(&task, process).await
        })
    }

    fn wait<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<ExitResult, DriverError>> {
        Box::pin(async move {
            let state = ExecDriverState::from_handle(handle)?;
            if let Some(result) = state.exit_result()? {
                return Ok(result);
            }
            let pidfd = sys::pidfd_open_identity(state.executor())
                .map_err(|source| io_error(format!("opening a pidfd for executor {}", state.executor_pid), source))?;
            if let Some(pidfd) = pidfd {
                // A pidfd becomes readable when the process exits.
                // SAFETY: an `OwnedFd` stays open and returns the same fd until the `AsyncFd` drops it.
                let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
                    .map_err(|error| io_error("registering the executor pidfd".to_owned(), error.into_parts().1))?;
                let _ready = pidfd.readable().await.map_err(|source| io_error("waiting for the executor".to_owned(), source))?;
            }
            // The executor writes exit.json before it exits.
            state
                .exit_result()?
                .ok_or_else(|| DriverError::ExecutorLost { task: handle.task_name.clone(), executor_pid: state.executor_pid })
        })
    }

    fn stop<'a>(&'a self, handle: &'a TaskHandle, signal: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = ExecDriverState::from_handle(handle)?;
            if self.signal_task(handle, signal)? {
                let _ = tokio::time::timeout(timeout, self.wait(handle)).await;
            }
            // The main process is gone or overstayed: nothing of the task may survive it.
            let cgroup = state.cgroup()?;
            blocking(move || cgroup.kill_all(KILL_TIMEOUT)).await?;
            // Killing the cgroup ends the main process; let the executor record how.
            match tokio::time::timeout(RECORD_EXIT_TIMEOUT, self.wait(handle)).await {
                Ok(Ok(_)) | Ok(Err(DriverError::ExecutorLost { .. })) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(DriverError::Timeout {
                    operation: format!("waiting for executor {} to record the exit", state.executor_pid),
                    after: RECORD_EXIT_TIMEOUT,
                }),
            }
        })
    }

    fn signal<'a>(&'a self, handle: &'a TaskHandle, signal: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match self.signal_task(handle, signal)? {
                true => Ok(()),
                false => Err(DriverError::TaskGone { pid: handle.pid }),
            }
        })
    }

    fn destroy<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = ExecDriverState::from_handle(handle)?;
            let stopped = self.stop(handle, "SIGKILL", Duration::ZERO).await;
            // An executor that did not finish by now never will.
            if let Ok(Some(pidfd)) = sys::pidfd_open_identity(state.executor()) {
                let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
            }
            let removed = remove_cgroup(state.cgroup()?).await;
            stopped.and(removed)
        })
    }

    fn inspect<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskRunState, DriverError>> {
        Box::pin(async move {
            let state = ExecDriverState::from_handle(handle)?;
            if let Some(result) = state.exit_result()? {
                return Ok(TaskRunState::Exited(result));
            }
            if sys::is_alive(state.executor()) {
                return Ok(TaskRunState::Running);
            }
            // The executor may have written exit.json just before exiting.
            match state.exit_result()? {
                Some(result) => Ok(TaskRunState::Exited(result)),
                None => Err(DriverError::ExecutorLost { task: handle.task_name.clone(), executor_pid: state.executor_pid }),
            }
        })
    }

    fn recover<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = ExecDriverState::from_handle(handle)?;
            if state.exit_result()?.is_some() || !sys::is_alive(task_identity(handle, &state)) {
                return Err(DriverError::TaskGone { pid: handle.pid });
            }
            if !sys::is_alive(state.executor()) {
                // The task runs, but nobody will record its exit: the caller should destroy and restart it.
                return Err(DriverError::ExecutorLost { task: handle.task_name.clone(), executor_pid: state.executor_pid });
            }
            Ok(())
        })
    }

    fn exec_command<'a>(
        &'a self,
        handle: &'a TaskHandle,
        command: &'a [String],
        env: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<tokio::process::Command, DriverError>> {
        Box::pin(async move {
            let (program, args) = split_command(command)?;
            let state = ExecDriverState::from_handle(handle)?;
            if state.exit_result()?.is_some() || !sys::is_alive(task_identity(handle, &state)) {
                return Err(DriverError::TaskGone { pid: handle.pid });
            }
            let spec = executor::read_spec(&state.state_dir).map_err(|error| DriverError::Other(format!("exec: {error}")))?;
            let user = match &spec.user {
                Some(name) => Some(sys::lookup_user(name).map_err(|source| io_error(format!("looking up user {name:?}"), source))?),
                None => None,
            };
            // An isolated task's commands see what it sees: its mount namespace.
            let mount_namespace = match &spec.isolation {
                Some(_) => {
                    let path = format!("/proc/{}/ns/mnt", handle.pid);
                    let namespace = File::open(&path).map_err(|source| io_error(format!("opening {path}"), source))?;
                    let cwd = sys::c_paths(std::slice::from_ref(&spec.cwd))
                        .map_err(|source| io_error("exec: the working directory".to_owned(), source))?;
                    Some((namespace, cwd.into_iter().next().expect("one path")))
                }
                None => None,
            };
            let mut process = tokio::process::Command::new(program);
            process.args(args).env_clear().envs(&spec.env).envs(env).current_dir(&spec.cwd);
            executor::join_task_context(&mut process, &state.cgroup()?, user, mount_namespace)
                .map_err(|error| DriverError::Other(format!("exec: {error}")))?;
            Ok(process)
        })
    }

    fn stats<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskStats, DriverError>> {
        Box::pin(async move {
            let cgroup = ExecDriverState::from_handle(handle)?.cgroup()?;
            Ok(blocking(move || cgroup.stats()).await?)
        })
    }
}

/// Gives the task's user its task directory (and what is in it, such as rendered templates) and makes the
/// allocation's shared `alloc/data` writable for every task (sticky, like `/tmp`). Refuses when the user could
/// not even reach the task directory (a parent directory closed to others, e.g. a data dir with mode 0700).
fn prepare_task_dirs(task_dir: &Path, shared: &Path, ids: sys::UserIds) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir_all(task_dir).map_err(|error| format!("creating {}: {error}", task_dir.display()))?;
    std::fs::create_dir_all(shared).map_err(|error| format!("creating {}: {error}", shared.display()))?;
    // A container of the allocation sees `alloc/` as `/alloc`: never follow a link it planted.
    for dir in [task_dir, shared] {
        let metadata = std::fs::symlink_metadata(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        if !metadata.is_dir() {
            return Err(format!("{} is not a directory (a link?): refusing to use it", dir.display()));
        }
    }
    std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o1777)).map_err(|error| format!("{}: {error}", shared.display()))?;
    for ancestor in task_dir.ancestors().skip(1) {
        let Ok(metadata) = std::fs::metadata(ancestor) else { continue };
        let mode = metadata.mode();
        let reachable = mode & 0o001 != 0
            || (metadata.uid() == ids.uid && mode & 0o100 != 0)
            || (metadata.gid() == ids.gid && mode & 0o010 != 0)
            || ids.uid == 0;
        if !reachable {
            return Err(format!(
                "the task's user (uid {}) cannot reach its directory: {} has mode {:o}; let others pass (chmod o+x) or set `user:`",
                ids.uid,
                ancestor.display(),
                mode & 0o7777
            ));
        }
    }
    chown_tree(task_dir, ids).map_err(|error| format!("giving {} to uid {}: {error}", task_dir.display(), ids.uid))
}

/// `lchown` of `dir` and everything below it, without following symbolic links.
fn chown_tree(dir: &Path, ids: sys::UserIds) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(ids.uid), Some(ids.gid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                chown_tree(&entry.path(), ids)?;
            } else {
                std::os::unix::fs::lchown(entry.path(), Some(ids.uid), Some(ids.gid))?;
            }
        }
    }
    Ok(())
}

/// Kills every executor started with `spec_path` (found by its command line) and every process left in the
/// task's cgroup. Nothing to do, normally; a task never started before has no spec file, and nothing is looked
/// for in `/proc` then.
fn end_leftover_executor(spec_path: &Path, cgroup: &TaskCgroup) {
    use std::os::unix::ffi::OsStrExt;
    let needle = spec_path.as_os_str().as_bytes();
    let entries = if spec_path.exists() { std::fs::read_dir("/proc").ok() } else { None };
    for entry in entries.into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.split(|byte| *byte == 0).any(|arg| arg == needle) {
            tracing::warn!(pid, spec = %spec_path.display(), "ending an executor an earlier agent started but never recorded");
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }
    if let Err(error) = cgroup.kill_all(KILL_TIMEOUT) {
        tracing::warn!(%error, "ending the processes left in the task's cgroup");
    }
}

async fn remove_cgroup(cgroup: TaskCgroup) -> Result<(), DriverError> {
    Ok(blocking(move || cgroup.remove(KILL_TIMEOUT)).await?)
}

/// Runs blocking file-system work (cgroupfs, pipes) off the async worker threads.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("blocking driver work was cancelled: {error}"),
    }
}

pub(crate) fn io_error(operation: String, source: io::Error) -> DriverError {
    DriverError::Io { operation, source }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The program and its arguments; an empty command is an error.
pub(crate) fn split_command(command: &[String]) -> Result<(&String, &[String]), DriverError> {
    command.split_first().ok_or_else(|| DriverError::Unsupported("exec: the command is empty".to_owned()))
}

/// Runs a command prepared by [`Driver::exec_command`] to its end and collects its output. After `timeout`
/// the command and everything it started (its process group) is killed.
pub(crate) async fn run_captured(mut process: tokio::process::Command, timeout: Duration) -> Result<ExecOutput, DriverError> {
    let program = process.as_std().get_program().to_string_lossy().into_owned();
    process.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = process.spawn().map_err(|source| io_error(format!("exec: spawning {program:?}"), source))?;
    drop(process);
    let pid = child.id().unwrap_or(0);
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let read_stdout = tokio::spawn(async move {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).await.map(|_| bytes)
    });
    let read_stderr = tokio::spawn(async move {
        let mut bytes = Vec::new();
        stderr.read_to_end(&mut bytes).await.map(|_| bytes)
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(|source| io_error("exec: waiting".to_owned(), source))?,
        Err(_) => {
            let _ = sys::kill_process_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
            read_stdout.abort();
            read_stderr.abort();
            return Err(DriverError::Timeout { operation: format!("exec {program:?}"), after: timeout });
        }
    };
    let joined = |result: Result<io::Result<Vec<u8>>, tokio::task::JoinError>| match result {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(source)) => Err(io_error("exec: reading output".to_owned(), source)),
        Err(error) => Err(DriverError::Other(format!("exec: output reader failed: {error}"))),
    };
    // Output pipes inherited by lingering background processes must not hold the result back.
    let (stdout, stderr) = match tokio::time::timeout(timeout, async { (read_stdout.await, read_stderr.await) }).await {
        Ok((stdout, stderr)) => (joined(stdout)?, joined(stderr)?),
        Err(_) => return Err(DriverError::Timeout { operation: format!("exec {program:?}: reading output"), after: timeout }),
    };
    Ok(ExecOutput { exit_code: exit_code(status), stdout, stderr })
}

/// The exit code of a process, 128 + the signal number when a signal ended it (as shells report it).
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
