//! The executor: the small supervisor process of one exec task (like Nomad's executor).
//!
//! The exec driver runs `<executor_command…> <state_dir>/spec.json`. The executor then:
//!
//! ```text
//!   setsid ──▶ read spec ──▶ open logs + cgroup.procs ──▶ spawn task ──▶ write `pid` ──▶ report on stdout
//!                                                          (pre_exec: join cgroups,       │
//!                                                           drop privileges)              ▼
//!                         exit ◀── write `exit.json` ◀── read OOM count ◀── wait for task, copy logs
//! ```
//!
//! It is a new session leader, so it survives the agent and terminal signals, and it stays outside the task's
//! cgroups (killing the cgroup never kills the supervisor that records the exit status). Files in the state
//! directory, all written atomically (temporary file + rename):
//!
//! - `spec.json`: the [`ExecutorSpec`], written by the driver;
//! - `pid`: `{"pid": …, "start_time": …}` of the task, right after spawn;
//! - `exit.json`: the task's [`ExitResult`];
//! - `executor.log`: the executor's own stderr (written by the driver's redirection).
//!
//! On stdout the executor prints exactly one line, a [`StartReport`], and nothing else afterwards.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupVersion, TaskCgroup};
use crate::logs::RotatingWriter;
use crate::sys::{self, UserIds};
use crate::{ExitResult, LogRotation};

/// File names inside the executor's state directory.
pub const SPEC_FILE: &str = "spec.json";
pub const PID_FILE: &str = "pid";
pub const EXIT_FILE: &str = "exit.json";
pub const LOG_FILE: &str = "executor.log";

/// How long the executor keeps copying output after the task exited, for data still in the pipes. Background
/// processes of the task that keep the pipes open would otherwise hold the exit report back forever.
const LOG_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the executor runs. Driver-private: written by the exec driver, read by the executor of the same build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorSpec {
    pub task_name: String,
    pub command: String,
    pub args: Vec<String>,
    /// The task's complete environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// The task's working directory.
    pub cwd: PathBuf,
    pub user: Option<String>,
    pub log_dir: PathBuf,
    pub logs: LogRotation,
    /// Where `pid` and `exit.json` go.
    pub state_dir: PathBuf,
    /// `v1` or `v2`.
    pub cgroup_version: String,
    /// [`TaskCgroup::dirs`] of the task's cgroup.
    pub cgroup_dirs: BTreeMap<String, PathBuf>,
    /// When not empty, the task gets a private mount namespace in which these mounts are detached (crun on a
    /// hybrid cgroup host needs `/sys/fs/cgroup/unified` gone to see a plain v1 layout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_unmounts: Vec<PathBuf>,
    /// v1 controllers of the task cgroup the process does not join. An OCI runtime stays out of `cpu` and
    /// `cpuacct`, so the task's CPU limit does not slow the runtime down; it puts the container there itself
    /// (runc through `cgroupsPath`, crun through the [`JOIN_CGROUP_HOOK`] hook).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_controllers: Vec<String>,
    /// The task's own view of the file system (see [`sys::isolate_filesystem`]); `None`: the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<FilesystemIsolation>,
}

/// A task's file system: the host read-only except `writable`, and a private `/tmp` of `tmp_mib` MiB (none
/// for 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemIsolation {
    pub writable: Vec<PathBuf>,
    pub tmp_mib: u32,
}

/// What the forked child needs for [`sys::isolate_filesystem`], prepared before fork.
struct IsolationArgs {
    writable: Vec<std::ffi::CString>,
    cwd: std::ffi::CString,
    tmp_options: Option<std::ffi::CString>,
}

impl IsolationArgs {
    fn new(isolation: &FilesystemIsolation, cwd: &Path) -> io::Result<IsolationArgs> {
        let cwd = sys::c_paths(&[cwd.to_path_buf()])?.remove(0);
        let tmp_options = (isolation.tmp_mib > 0)
            .then(|| std::ffi::CString::new(format!("mode=1777,size={}m", isolation.tmp_mib)).map_err(io::Error::other))
            .transpose()?;
        Ok(IsolationArgs { writable: sys::c_paths(&isolation.writable)?, cwd, tmp_options })
    }
}

/// The argument that makes the executor an OCI `createRuntime` hook: `davit executor join-cgroup <cgroup.procs>…`
/// reads the container's state from stdin and writes its init pid into each file.
pub const JOIN_CGROUP_HOOK: &str = "join-cgroup";

/// The argument that makes the executor an OCI hook (`poststart`, or `createRuntime` after [`JOIN_CGROUP_HOOK`]):
/// `davit executor mark-started <file>` creates the file when the container's program starts.
pub const MARK_STARTED_HOOK: &str = "mark-started";

impl ExecutorSpec {
    pub fn cgroup(&self) -> Result<TaskCgroup, ExecutorError> {
        let version = CgroupVersion::parse(&self.cgroup_version)
            .ok_or_else(|| ExecutorError::Spec(format!("unknown cgroup version {:?}", self.cgroup_version)))?;
        Ok(TaskCgroup::from_dirs(version, self.cgroup_dirs.clone()))
    }
}

/// The task's main process, as written to the `pid` file and reported on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProcess {
    pub pid: u32,
    /// Start time from `/proc/<pid>/stat`, to tell the process from a later one with the same pid.
    pub start_time: u64,
}

/// The single line the executor prints on stdout once the task runs (or could not be started).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReport {
    Started(TaskProcess),
    Failed { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("usage: davit executor <spec.json>")]
    Usage,
    #[error("invalid executor spec: {0}")]
    Spec(String),
    #[error("{operation} {path}")]
    File {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("looking up user {user:?}")]
    User {
        user: String,
        #[source]
        source: io::Error,
    },
    #[error("starting {command:?}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("waiting for the task")]
    Wait(#[source] io::Error),
}

/// Entry point of the `davit-executor` binary (and of `davit executor`): the spec path is the last argument.
/// Exits 0 once `exit.json` is written, 1 when the task could not be started or supervised.
pub fn main() -> ! {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(hook) = args.iter().position(|arg| arg == JOIN_CGROUP_HOOK || arg == MARK_STARTED_HOOK) {
        let result = if args[hook] == JOIN_CGROUP_HOOK {
            join_cgroup_hook(&args[hook + 1..])
        } else {
            args[hook + 1..].iter().try_for_each(|file| {
                let path = PathBuf::from(file);
                std::fs::write(&path, b"").map_err(|source| ExecutorError::File { operation: "writing", path, source })
            })
        };
        match result {
            Ok(()) => std::process::exit(0),
            Err(error) => {
                eprintln!("davit executor {}: {}", args[hook].to_string_lossy(), error_chain(&error));
                std::process::exit(1);
            }
        }
    }
    let spec_path = match args.last() {
        Some(path) => PathBuf::from(path),
        None => {
            eprintln!("davit executor: {}", ExecutorError::Usage);
            std::process::exit(2);
        }
    };
    let mut reported = false;
    match run(&spec_path, &mut reported) {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            let message = error_chain(&error);
            eprintln!("davit executor: {message}");
            if !reported {
                report(&StartReport::Failed { message });
            }
            std::process::exit(1);
        }
    }
}

/// The `createRuntime` hook: moves the container's init process (its pid from the OCI state on stdin) into the
/// cgroups whose `cgroup.procs` files are given, before the container's own program starts.
fn join_cgroup_hook(procs_files: &[OsString]) -> Result<(), ExecutorError> {
    // The first JSON value only: the runtime need not close stdin for the hook to go on.
    let state: serde_json::Value = serde_json::Deserializer::from_reader(io::stdin().lock())
        .into_iter()
        .next()
        .ok_or_else(|| ExecutorError::Spec("no container state on stdin".to_owned()))?
        .map_err(|e| ExecutorError::Spec(format!("container state: {e}")))?;
    let pid = state["pid"].as_u64().ok_or_else(|| ExecutorError::Spec(format!("container state without a pid: {state}")))?;
    for file in procs_files {
        let path = PathBuf::from(file);
        std::fs::write(&path, pid.to_string()).map_err(|source| ExecutorError::File { operation: "writing", path, source })?;
    }
    Ok(())
}

/// Supervises the task described by the spec at `spec_path` until it exits and `exit.json` is written.
/// Sets `reported` once the start report went to stdout.
pub fn run(spec_path: &Path, reported: &mut bool) -> Result<(), ExecutorError> {
    // A new session: no controlling terminal, not in the agent's process group. EPERM means we already lead a
    // process group (the caller detached us); that is fine.
    if let Err(error) = sys::setsid()
        && error.raw_os_error() != Some(libc::EPERM)
    {
        eprintln!("davit executor: setsid: {error}");
    }
    let spec_text = std::fs::read_to_string(spec_path).map_err(|source| ExecutorError::File {
        operation: "reading",
        path: spec_path.to_path_buf(),
        source,
    })?;
    let spec: ExecutorSpec = serde_json::from_str(&spec_text).map_err(|e| ExecutorError::Spec(e.to_string()))?;
    let cgroup = spec.cgroup()?;

    let stdout_log = open_log(&spec, "stdout")?;
    let stderr_log = open_log(&spec, "stderr")?;
    let cgroup_files = open_cgroup_procs(&cgroup.without(&spec.skip_controllers))?;
    let user = match &spec.user {
        Some(name) => Some(sys::lookup_user(name).map_err(|source| ExecutorError::User { user: name.clone(), source })?),
        None => None,
    };

    let (stdout_reader, stdout_writer) = io::pipe().map_err(|source| ExecutorError::Spawn { command: spec.command.clone(), source })?;
    let (stderr_reader, stderr_writer) = io::pipe().map_err(|source| ExecutorError::Spawn { command: spec.command.clone(), source })?;
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout_writer))
        .stderr(Stdio::from(stderr_writer));
    let cgroup_fds: Vec<RawFd> = cgroup_files.iter().map(AsRawFd::as_raw_fd).collect();
    let spawn_error = |source| ExecutorError::Spawn { command: spec.command.clone(), source };
    let unmounts = sys::c_paths(&spec.private_unmounts).map_err(spawn_error)?;
    let isolation = spec.isolation.as_ref().map(|isolation| IsolationArgs::new(isolation, &spec.cwd)).transpose().map_err(spawn_error)?;
    // SAFETY: the hook only makes async-signal-safe system calls (write, setgroups, setgid, setuid, unshare,
    // mount, mount_setattr, umount2, chdir) on values prepared before fork; it allocates nothing and takes no
    // locks. The fds stay open until after spawn. The file system is set up while still root.
    unsafe {
        command.pre_exec(move || {
            if let Some(isolation) = &isolation {
                sys::isolate_filesystem(&isolation.writable, &isolation.cwd, isolation.tmp_options.as_deref())?;
            }
            sys::enter_private_mount_namespace(&unmounts)?;
            enter_task_context(&cgroup_fds, user.as_ref())
        });
    }
    let spawned = command.spawn();
    // Our copies of the pipes' write ends must go, or the log copiers never see end-of-file.
    drop(command);
    drop(cgroup_files);
    let mut child = spawned.map_err(|source| ExecutorError::Spawn { command: spec.command.clone(), source })?;

    // The child is not reaped before `wait`, so its /proc entry is there even if it already exited.
    let start_time = sys::proc_stat(child.id()).ok().flatten().map_or(0, |stat| stat.start_time);
    let task = TaskProcess { pid: child.id(), start_time };
    let pid_json = serde_json::to_vec(&task).expect("TaskProcess serializes");
    write_atomically(&spec.state_dir.join(PID_FILE), &pid_json)?;
    report(&StartReport::Started(task));
    *reported = true;

    let (done_sender, done_receiver) = mpsc::channel();
    spawn_copier(stdout_reader, stdout_log, done_sender.clone());
    spawn_copier(stderr_reader, stderr_log, done_sender);

    let status = child.wait().map_err(ExecutorError::Wait)?;
    let deadline = Instant::now() + LOG_DRAIN_GRACE;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_receiver.recv_timeout(left).is_err() {
            eprintln!("davit executor: output pipes still open {LOG_DRAIN_GRACE:?} after the task exited");
            break;
        }
    }
    let oom_killed = match cgroup.oom_kill_count() {
        Ok(count) => count > 0,
        Err(error) => {
            eprintln!("davit executor: reading OOM count: {}", error_chain(&error));
            false
        }
    };
    let result = ExitResult { exit_code: status.code(), signal: status.signal(), oom_killed };
    let exit_json = serde_json::to_vec(&result).expect("ExitResult serializes");
    write_atomically(&spec.state_dir.join(EXIT_FILE), &exit_json)
}

/// Runs in the forked child before exec: joins the task's cgroups, then drops privileges (after joining, so
/// the write into a root-owned `cgroup.procs` happens as root). Async-signal-safe: only system calls.
pub(crate) fn enter_task_context(cgroup_procs_fds: &[RawFd], user: Option<&UserIds>) -> io::Result<()> {
    for &fd in cgroup_procs_fds {
        // SAFETY: `fd` is an open, writable fd owned by the parent's `File` (inherited over fork); the buffer
        // is a static one-byte string.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(user) = user {
        // SAFETY: plain system calls without memory arguments (setgroups gets a null list of length 0).
        unsafe {
            // No set-uid file can give an unprivileged task its privileges back.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(user.gid) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setuid(user.uid) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Opens the `cgroup.procs` files the task writes itself into (before fork, so the child only writes).
pub(crate) fn open_cgroup_procs(cgroup: &TaskCgroup) -> Result<Vec<File>, ExecutorError> {
    cgroup
        .procs_files()
        .into_iter()
        .map(|path| File::options().write(true).open(&path).map_err(|source| ExecutorError::File { operation: "opening", path, source }))
        .collect()
}

/// Makes `process` join the task's cgroups, its mount namespace (`mount_namespace`: the task's
/// `/proc/<pid>/ns/mnt`, opened, and the working directory to take there) and become `user` in the child before
/// exec. The files stay open as long as `process`.
pub(crate) fn join_task_context(
    process: &mut tokio::process::Command,
    cgroup: &TaskCgroup,
    user: Option<UserIds>,
    mount_namespace: Option<(File, std::ffi::CString)>,
) -> Result<(), ExecutorError> {
    let files = open_cgroup_procs(cgroup)?;
    let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the hook only makes async-signal-safe system calls (`enter_task_context`, setns, chdir) on values
    // prepared before fork; `files` and `mount_namespace` keep the fds open until the command is dropped, after
    // spawn.
    unsafe {
        process.pre_exec(move || {
            let _open = &files;
            if let Some((namespace, cwd)) = &mount_namespace {
                sys::enter_mount_namespace(namespace.as_raw_fd(), cwd)?;
            }
            enter_task_context(&fds, user.as_ref())
        });
    }
    Ok(())
}

/// Reads the spec the driver left in a state directory.
pub fn read_spec(state_dir: &Path) -> Result<ExecutorSpec, ExecutorError> {
    let path = state_dir.join(SPEC_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ExecutorError::File { operation: "reading", path, source })?;
    serde_json::from_str(&text).map_err(|e| ExecutorError::Spec(e.to_string()))
}

/// Reads `exit.json` from a state directory; `Ok(None)` while the task runs (or if the executor died).
pub fn read_exit(state_dir: &Path) -> io::Result<Option<ExitResult>> {
    let path = state_dir.join(EXIT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Parses the executor's stdout line.
pub fn parse_report(line: &str) -> Option<StartReport> {
    serde_json::from_str(line.trim()).ok()
}

/// Reads the start report from the executor's stdout (blocking).
pub fn read_report(stdout: impl Read) -> io::Result<Option<StartReport>> {
    let mut line = String::new();
    io::BufReader::new(stdout).read_line(&mut line)?;
    Ok(parse_report(&line))
}

/// Writes `bytes` to `<path>.tmp`, syncs it and renames it over `path`, so readers see all or nothing.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExecutorError> {
    let mut temporary = OsString::from(path.as_os_str());
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let write = || -> io::Result<()> {
        // Owner-only: the spec holds the task's environment (secret_env and templates' values included).
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|source| ExecutorError::File { operation: "writing", path: path.to_path_buf(), source })
}

fn open_log(spec: &ExecutorSpec, stream: &str) -> Result<RotatingWriter, ExecutorError> {
    RotatingWriter::open(&spec.log_dir, &format!("{}.{stream}", spec.task_name), spec.logs).map_err(|source| ExecutorError::File {
        operation: "opening log in",
        path: spec.log_dir.clone(),
        source,
    })
}

fn spawn_copier(mut reader: io::PipeReader, mut log: RotatingWriter, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(error) = log.write_all(&buffer[..n]) {
                        // Keep draining the pipe so the task never blocks on a full pipe.
                        eprintln!("davit executor: writing {}: {error}", log.current_path().display());
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    eprintln!("davit executor: reading task output: {error}");
                    break;
                }
            }
        }
        let _ = log.flush();
        let _ = done.send(());
    });
}

fn report(report: &StartReport) {
    let mut line = serde_json::to_string(report).expect("StartReport serializes");
    line.push('\n');
    let mut stdout = io::stdout().lock();
    // The driver may be gone already (agent restart); the files in the state dir are what counts.
    let _ = stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush());
}

use davit_api::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trip() {
        let started = StartReport::Started(TaskProcess { pid: 42, start_time: 7 });
        let line = serde_json::to_string(&started).unwrap();
        assert_eq!(line, r#"{"started":{"pid":42,"start_time":7}}"#);
        assert_eq!(parse_report(&format!("{line}\n")), Some(started));
        assert_eq!(parse_report(""), None);
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EXIT_FILE);
        write_atomically(&path, b"{\"exit_code\":1,\"signal\":null,\"oom_killed\":false}").unwrap();
        write_atomically(&path, b"{\"exit_code\":0,\"signal\":null,\"oom_killed\":true}").unwrap();
        let result = read_exit(dir.path()).unwrap().unwrap();
        assert_eq!(result, ExitResult { exit_code: Some(0), signal: None, oom_killed: true });
        assert!(!dir.path().join("exit.json.tmp").exists());
        assert_eq!(read_exit(&dir.path().join("nothing")).unwrap(), None);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "owner-only");
    }
}
