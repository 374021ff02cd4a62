//! The exec driver against real processes and real cgroups.
//!
//! These tests need root and usable cgroups (v1/hybrid or v2). Without them they print why and return, except
//! under `CI=true`, where they fail. Every test uses its own allocation id and temp dir, and removes the cgroups
//! it created even when it fails (see `Fixture`'s `Drop`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use davit_drivers::cgroups::{CgroupLayout, CgroupVersion};
use davit_drivers::{
    Driver, DriverError, ExecDriver, ExecDriverConfig, ExitResult, LogRotation, TaskConfig, TaskHandle, TaskResources, TaskRunState,
};

/// Upper bound for anything a test awaits, so a bug fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

fn executor_command() -> Vec<String> {
    vec![env!("CARGO_BIN_EXE_davit-executor").to_owned()]
}

fn new_driver() -> ExecDriver {
    ExecDriver::new(ExecDriverConfig::new(executor_command()))
}

struct Fixture {
    dir: tempfile::TempDir,
    alloc_id: String,
    driver: ExecDriver,
    layout: CgroupLayout,
    task_names: Mutex<Vec<String>>,
}

/// The driver with a fresh allocation, or `None` (after printing why) when this machine cannot run the tests.
async fn fixture(test: &str) -> Option<Fixture> {
    let driver = new_driver();
    let fingerprint = driver.fingerprint().await;
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let problem = if !is_root {
        Some("not running as root".to_owned())
    } else if !fingerprint.healthy {
        Some(fingerprint.description.clone())
    } else {
        None
    };
    if let Some(problem) = problem {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("exec driver tests need root and cgroups (CI=true): {problem}");
        }
        eprintln!("skipping {test}: {problem}");
        return None;
    }
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let alloc_id = format!("test-{}-{}-{test}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let layout = driver.cgroup_layout().expect("healthy driver has cgroups").clone();
    // Tasks run as nobody: they must be able to pass through the test's directory to their own; and it is not
    // in /tmp, which an isolated task gets a private one of.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    Some(Fixture { dir, alloc_id, driver, layout, task_names: Mutex::new(Vec::new()) })
}

impl Fixture {
    fn alloc_dir(&self) -> PathBuf {
        self.dir.path().join("alloc")
    }

    fn log_dir(&self) -> PathBuf {
        self.alloc_dir().join("alloc").join("logs")
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.alloc_dir().join(task)
    }

    fn config(&self, task: &str, command: &str, args: &[&str]) -> TaskConfig {
        self.task_names.lock().unwrap().push(task.to_owned());
        TaskConfig {
            alloc_id: self.alloc_id.clone(),
            task_name: task.to_owned(),
            driver_config: serde_json::json!({"command": command, "args": args}),
            env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
            user: None,
            alloc_dir: self.alloc_dir(),
            task_dir: self.task_dir(task),
            log_dir: self.log_dir(),
            resources: TaskResources { cpu_millicores: 500, memory_mib: 64 },
            events: davit_drivers::EventSink::discard(),
            logs: LogRotation::default(),
        }
    }

    /// A task running `/bin/sh -c script`.
    fn shell(&self, task: &str, script: &str) -> TaskConfig {
        self.config(task, "/bin/sh", &["-c", script])
    }

    fn log(&self, task: &str, stream: &str, index: u32) -> String {
        let path = self.log_dir().join(format!("{task}.{stream}.{index}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn cgroup_name(&self, task: &str) -> String {
        CgroupLayout::task_cgroup_name(&self.alloc_id, task)
    }

    /// The cgroup directory of `task` for one v1 controller (or the v2 directory).
    fn cgroup_dir(&self, task: &str, controller: &str) -> PathBuf {
        let root = self.layout.root().to_path_buf();
        match self.layout.version() {
            CgroupVersion::V1 => root.join(controller).join("davit").join(self.cgroup_name(task)),
            CgroupVersion::V2 => root.join("davit").join(self.cgroup_name(task)),
        }
    }

    async fn wait(&self, handle: &TaskHandle) -> ExitResult {
        wait_with(&self.driver, handle).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for task in self.task_names.lock().unwrap().iter() {
            let cgroup = self.layout.task_cgroup(&self.cgroup_name(task));
            if let Err(error) = cgroup.remove(Duration::from_secs(10)) {
                eprintln!("cleaning up cgroup of {task}: {error}");
            }
        }
    }
}

async fn wait_with(driver: &ExecDriver, handle: &TaskHandle) -> ExitResult {
    tokio::time::timeout(PATIENCE, driver.wait(handle)).await.expect("task did not exit in time").expect("wait failed")
}

/// Polls for a file the task writes (the task's readiness has no event the test could await).
async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {PATIENCE:?}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start_time(pid: u32) -> Option<u64> {
    davit_drivers::sys::proc_stat(pid).unwrap().map(|stat| stat.start_time)
}

/// A task that says it is ready, then runs until a `go` file appears in its directory and exits with `code`.
fn waiting_script(code: i32) -> String {
    format!("echo ready > ready; while [ ! -e go ]; do sleep 0.02; done; exit {code}")
}

#[tokio::test]
async fn task_sees_args_env_and_cwd_and_logs_go_to_files() {
    let Some(fx) = fixture("args_env").await else { return };
    let mut config = fx.config(
        "app",
        "/bin/sh",
        &[
            "-c",
            r#"echo "first=$1 second=$2 greeting=$GREETING home=${HOME-unset} cwd=$(pwd)"; echo oops >&2; exit 0"#,
            "sh",
            "one",
            "two words",
        ],
    );
    config.env.insert("GREETING".to_owned(), "hello there".to_owned());
    let handle = fx.driver.start(&config).await.unwrap();
    assert_eq!(handle.driver, "exec");
    let state_dir = ExecDriver::state_dir(&config);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state_dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the state dir holds the task's env");
    assert!(handle.pid > 0);
    let result = fx.wait(&handle).await;
    assert_eq!(result, ExitResult { exit_code: Some(0), signal: None, oom_killed: false });
    assert!(result.successful());
    let expected_cwd = fx.task_dir("app");
    assert_eq!(
        fx.log("app", "stdout", 0),
        format!("first=one second=two words greeting=hello there home=unset cwd={}\n", expected_cwd.display())
    );
    assert_eq!(fx.log("app", "stderr", 0), "oops\n");
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn exit_code_and_signal_are_reported() {
    let Some(fx) = fixture("exit_codes").await else { return };
    let handle = fx.driver.start(&fx.shell("three", "exit 3")).await.unwrap();
    let result = fx.wait(&handle).await;
    assert_eq!(result, ExitResult { exit_code: Some(3), signal: None, oom_killed: false });
    assert!(!result.successful());
    assert_eq!(fx.driver.inspect(&handle).await.unwrap(), TaskRunState::Exited(result));
    fx.driver.destroy(&handle).await.unwrap();

    let handle = fx.driver.start(&fx.shell("killed", "kill -USR1 $$")).await.unwrap();
    let result = fx.wait(&handle).await;
    assert_eq!(result, ExitResult { exit_code: None, signal: Some(libc::SIGUSR1), oom_killed: false });
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn run_as_user() {
    let Some(fx) = fixture("user").await else { return };
    let mut config = fx.shell("who", "id -u; id -g; id -G");
    config.user = Some("nobody".to_owned());
    let handle = fx.driver.start(&config).await.unwrap();
    assert_eq!(fx.wait(&handle).await.exit_code, Some(0));
    assert_eq!(fx.log("who", "stdout", 0), "65534\n65534\n65534\n");
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn start_failure_is_reported_and_cleaned_up() {
    let Some(fx) = fixture("start_failure").await else { return };
    let error = fx.driver.start(&fx.config("missing", "/nonexistent/program", &[])).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, DriverError::Start { .. }), "{error:?}");
    assert!(message.contains("/nonexistent/program"), "{message}");
    assert!(!fx.cgroup_dir("missing", "memory").exists(), "cgroup left behind");

    let mut config = fx.shell("stranger", "exit 0");
    config.user = Some("no-such-user-davit".to_owned());
    let error = fx.driver.start(&config).await.unwrap_err();
    assert!(error.to_string().contains("no-such-user-davit"), "{error}");
    assert!(!fx.cgroup_dir("stranger", "memory").exists(), "cgroup left behind");

    let error = fx.driver.start(&fx.config("bad", "", &[])).await.unwrap_err();
    assert!(matches!(error, DriverError::InvalidConfig { .. }), "{error:?}");
    let mut config = fx.config("typo", "/bin/true", &[]);
    config.driver_config = serde_json::json!({"command": "/bin/true", "argz": []});
    let error = fx.driver.start(&config).await.unwrap_err();
    assert!(error.to_string().contains("argz"), "{error}");
}

#[tokio::test]
async fn logs_rotate_by_size() {
    let Some(fx) = fixture("rotation").await else { return };
    let mut config = fx.shell(
        "chatty",
        // 2000 lines of 19 bytes: 38 000 bytes, far more than 3 files of 1000 bytes.
        "i=0; while [ $i -lt 2000 ]; do printf 'line %05d padding\\n' $i; i=$((i+1)); done",
    );
    config.logs = LogRotation { max_files: 3, max_file_bytes: 1000 };
    let handle = fx.driver.start(&config).await.unwrap();
    assert_eq!(fx.wait(&handle).await.exit_code, Some(0));

    let mut indexes: Vec<u32> = std::fs::read_dir(fx.log_dir())
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("chatty.stdout.").map(|index| index.parse().unwrap())
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes.len(), 3, "kept files: {indexes:?}");
    let newest = *indexes.last().unwrap();
    assert_eq!(indexes, vec![newest - 2, newest - 1, newest], "the newest files are kept");
    assert_eq!(newest, 37, "38 000 bytes fill files 0 to 37 of 1000 bytes");
    for index in &indexes {
        let size = std::fs::metadata(fx.log_dir().join(format!("chatty.stdout.{index}"))).unwrap().len();
        assert!(size <= 1000, "chatty.stdout.{index} has {size} bytes");
    }
    let kept: String = indexes.iter().map(|index| fx.log("chatty", "stdout", *index)).collect();
    assert!(kept.ends_with("line 01999 padding\n"), "newest content missing: {kept:?}");
    assert!(!kept.contains("line 00000 "), "oldest content should be gone");
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn memory_limit_is_enforced_with_oom_kill() {
    let Some(fx) = fixture("oom").await else { return };
    let mut config = fx.shell("hog", r#"x=$(head -c 100000000 /dev/zero | tr "\0" a); echo survived"#);
    config.resources = TaskResources { cpu_millicores: 1000, memory_mib: 32 };
    let handle = fx.driver.start(&config).await.unwrap();
    let result = fx.wait(&handle).await;
    assert!(result.oom_killed, "{result:?}");
    assert_eq!(result.signal, Some(libc::SIGKILL), "{result:?}");
    assert!(!result.successful());
    assert_eq!(fx.log("hog", "stdout", 0), "");
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn limits_are_written_and_task_is_in_its_cgroups() {
    let Some(fx) = fixture("limits").await else { return };
    let mut config = fx.shell("limited", &waiting_script(0));
    config.resources = TaskResources { cpu_millicores: 250, memory_mib: 48 };
    let handle = fx.driver.start(&config).await.unwrap();
    let read = |task: &str, controller: &str, file: &str| {
        let path = fx.cgroup_dir(task, controller).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())).trim().to_owned()
    };
    let memory = (48u64 << 20).to_string();
    match fx.layout.version() {
        CgroupVersion::V1 => {
            assert_eq!(read("limited", "cpu", "cpu.cfs_period_us"), "100000");
            assert_eq!(read("limited", "cpu", "cpu.cfs_quota_us"), "25000");
            assert_eq!(read("limited", "cpu", "cpu.shares"), "256");
            assert_eq!(read("limited", "memory", "memory.limit_in_bytes"), memory);
            if fx.cgroup_dir("limited", "memory").join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(read("limited", "memory", "memory.memsw.limit_in_bytes"), memory);
            }
        }
        CgroupVersion::V2 => {
            assert_eq!(read("limited", "", "cpu.max"), "25000 100000");
            assert_eq!(read("limited", "", "memory.max"), memory);
        }
    }
    // The task was placed in its cgroups before exec; the executor stays outside them.
    let procs = read("limited", "memory", "cgroup.procs");
    assert!(procs.lines().any(|line| line == handle.pid.to_string()), "task {} not in {procs:?}", handle.pid);
    let task_cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", handle.pid)).unwrap();
    assert!(task_cgroups.contains(&format!("/davit/{}", fx.cgroup_name("limited"))), "{task_cgroups}");
    let executor_pid = handle.driver_state["executor_pid"].as_u64().unwrap();
    assert!(!procs.lines().any(|line| line == executor_pid.to_string()), "executor is inside the task cgroup");

    fx.driver.destroy(&handle).await.unwrap();
    for controller in ["memory", "cpu", "cpuacct", "pids"] {
        assert!(!fx.cgroup_dir("limited", controller).exists(), "{controller} cgroup not removed");
    }
    // Idempotent.
    fx.driver.destroy(&handle).await.unwrap();
    fx.driver.stop(&handle, "SIGTERM", Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn stop_with_sigterm_lets_the_task_exit_cleanly() {
    let Some(fx) = fixture("stop_term").await else { return };
    let script = "trap 'echo bye; exit 0' TERM; echo ready > ready; while :; do sleep 0.02; done";
    let handle = fx.driver.start(&fx.shell("polite", script)).await.unwrap();
    wait_for_file(&fx.task_dir("polite").join("ready")).await;
    let started = Instant::now();
    fx.driver.stop(&handle, "SIGTERM", Duration::from_secs(20)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "stop took {:?}", started.elapsed());
    let result = fx.wait(&handle).await;
    assert_eq!(result, ExitResult { exit_code: Some(0), signal: None, oom_killed: false });
    assert_eq!(fx.log("polite", "stdout", 0), "bye\n");
    // Nothing of the task is left (the `sleep` children are killed with the cgroup).
    let procs = std::fs::read_to_string(fx.cgroup_dir("polite", "pids").join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), "");
    fx.driver.stop(&handle, "SIGTERM", Duration::from_secs(1)).await.unwrap();
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn stop_kills_a_task_that_ignores_sigterm_after_the_timeout() {
    let Some(fx) = fixture("stop_kill").await else { return };
    let script = "trap '' TERM; echo ready > ready; while :; do sleep 0.02; done";
    let handle = fx.driver.start(&fx.shell("stubborn", script)).await.unwrap();
    wait_for_file(&fx.task_dir("stubborn").join("ready")).await;
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    fx.driver.stop(&handle, "SIGTERM", timeout).await.unwrap();
    let took = started.elapsed();
    assert!(took >= timeout, "killed after {took:?}, before the timeout");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let result = fx.wait(&handle).await;
    assert_eq!(result, ExitResult { exit_code: None, signal: Some(libc::SIGKILL), oom_killed: false });
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn unknown_signal_is_an_error() {
    let Some(fx) = fixture("bad_signal").await else { return };
    let handle = fx.driver.start(&fx.shell("quick", "exit 0")).await.unwrap();
    let error = fx.driver.stop(&handle, "SIGBOGUS", Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(error, DriverError::UnknownSignal(_)), "{error:?}");
    fx.wait(&handle).await;
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn a_new_driver_recovers_a_running_task_and_gets_its_exit_code() {
    let Some(fx) = fixture("recover").await else { return };
    let driver_a = new_driver();
    let handle = driver_a.start(&fx.shell("survivor", &waiting_script(7))).await.unwrap();
    let task_start = start_time(handle.pid).expect("task runs");
    wait_for_file(&fx.task_dir("survivor").join("ready")).await;
    // The executor leads its own session, so the agent's terminal and process group signals miss it.
    let executor_pid = handle.driver_state["executor_pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{executor_pid}/stat")).unwrap();
    let session: u64 = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(session, executor_pid, "executor is not a session leader: {stat}");
    drop(driver_a);

    // The agent restarted: it only has the persisted handle.
    let persisted = serde_json::to_string(&handle).unwrap();
    let handle: TaskHandle = serde_json::from_str(&persisted).unwrap();
    let driver_b = new_driver();
    driver_b.recover(&handle).await.unwrap();
    assert_eq!(driver_b.inspect(&handle).await.unwrap(), TaskRunState::Running);
    assert_eq!(start_time(handle.pid), Some(task_start), "the task is the same process");

    std::fs::write(fx.task_dir("survivor").join("go"), "").unwrap();
    let result = wait_with(&driver_b, &handle).await;
    assert_eq!(result, ExitResult { exit_code: Some(7), signal: None, oom_killed: false });
    // After it exited, recovering again says so, and `wait` still knows how it ended.
    let error = driver_b.recover(&handle).await.unwrap_err();
    assert!(matches!(error, DriverError::TaskGone { pid } if pid == handle.pid), "{error:?}");
    assert_eq!(wait_with(&driver_b, &handle).await, result);
    driver_b.destroy(&handle).await.unwrap();
}

/// An agent killed after the executor started a task but before it saved the handle starts the task again
/// after its restart: the unrecorded executor and task are ended first, so the task never runs twice.
#[tokio::test]
async fn a_start_the_agent_never_recorded_is_ended_when_the_task_starts_again() {
    let Some(fx) = fixture("unrecorded").await else { return };
    let config = fx.shell("twice", &waiting_script(0));
    let lost = new_driver().start(&config).await.unwrap();
    wait_for_file(&fx.task_dir("twice").join("ready")).await;
    let lost_task = davit_drivers::sys::ProcessIdentity { pid: lost.pid, start_time: start_time(lost.pid).unwrap() };
    let lost_executor = davit_drivers::sys::ProcessIdentity {
        pid: u32::try_from(lost.driver_state["executor_pid"].as_u64().unwrap()).unwrap(),
        start_time: lost.driver_state["executor_start_time"].as_u64().unwrap(),
    };

    // The restarted agent has no handle and starts the task again.
    let driver = new_driver();
    let handle = driver.start(&config).await.unwrap();
    assert!(!davit_drivers::sys::is_alive(lost_task), "the unrecorded task still runs beside the new one");
    assert!(!davit_drivers::sys::is_alive(lost_executor), "the unrecorded executor still runs");
    assert_eq!(driver.inspect(&handle).await.unwrap(), TaskRunState::Running);
    let cgroup = fx.layout.task_cgroup(&fx.cgroup_name("twice"));
    let pids = cgroup.pids().unwrap();
    assert!(pids.contains(&handle.pid) && !pids.contains(&lost.pid), "{pids:?}");
    driver.stop(&handle, "SIGKILL", Duration::ZERO).await.unwrap();
    driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn recover_of_a_task_killed_with_its_executor_is_task_gone() {
    let Some(fx) = fixture("recover_dead").await else { return };
    let handle = fx.driver.start(&fx.shell("victim", &waiting_script(0))).await.unwrap();
    wait_for_file(&fx.task_dir("victim").join("ready")).await;
    // Whatever killed the executor (OOM killer, admin, reboot) also killed the task.
    let executor_pid = u32::try_from(handle.driver_state["executor_pid"].as_u64().unwrap()).unwrap();
    assert!(davit_drivers::sys::kill(executor_pid, libc::SIGKILL).unwrap());
    let cgroup = fx.layout.task_cgroup(&fx.cgroup_name("victim"));
    cgroup.kill_all(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while davit_drivers::sys::is_alive(davit_drivers::sys::ProcessIdentity {
        pid: executor_pid,
        start_time: handle.driver_state["executor_start_time"].as_u64().unwrap(),
    }) {
        assert!(Instant::now() < deadline, "executor survived SIGKILL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let driver_b = new_driver();
    let error = driver_b.recover(&handle).await.unwrap_err();
    assert!(matches!(error, DriverError::TaskGone { pid } if pid == handle.pid), "{error:?}");
    let error = tokio::time::timeout(PATIENCE, driver_b.wait(&handle)).await.unwrap().unwrap_err();
    assert!(matches!(error, DriverError::ExecutorLost { .. }), "{error:?}");
    assert!(error.to_string().contains("died without recording"), "{error}");
    driver_b.destroy(&handle).await.unwrap();
    assert!(!fx.cgroup_dir("victim", "memory").exists());
}

#[tokio::test]
async fn recover_rejects_a_reused_pid() {
    let Some(fx) = fixture("recover_reuse").await else { return };
    let handle = fx.driver.start(&fx.shell("short", &waiting_script(0))).await.unwrap();
    wait_for_file(&fx.task_dir("short").join("ready")).await;
    // Same pid, different start time: some other process that got the pid after the task died.
    let mut forged = handle.clone();
    forged.driver_state["task_start_time"] = serde_json::json!(handle.driver_state["task_start_time"].as_u64().unwrap() + 1);
    let error = fx.driver.recover(&forged).await.unwrap_err();
    assert!(matches!(error, DriverError::TaskGone { .. }), "{error:?}");
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn exec_runs_in_the_task_cgroup_env_and_cwd() {
    let Some(fx) = fixture("exec").await else { return };
    let mut config = fx.shell("host", &waiting_script(0));
    config.env.insert("SECRET_WORD".to_owned(), "swordfish".to_owned());
    let handle = fx.driver.start(&config).await.unwrap();
    wait_for_file(&fx.task_dir("host").join("ready")).await;

    let command: Vec<String> =
        ["/bin/sh", "-c", "cat /proc/self/cgroup; echo word=$SECRET_WORD; pwd; echo err >&2; exit 4"].map(str::to_owned).to_vec();
    let output = fx.driver.exec(&handle, &command, Duration::from_secs(20)).await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.exit_code, 4);
    assert_eq!(output.stderr, b"err\n");
    let own_cgroup = format!("/davit/{}", fx.cgroup_name("host"));
    let memory_line = stdout
        .lines()
        .find(|line| line.contains(":memory:") || line.starts_with("0::"))
        .unwrap_or_else(|| panic!("no memory cgroup line in {stdout:?}"));
    assert!(memory_line.ends_with(&own_cgroup), "exec ran in {memory_line:?}, not {own_cgroup}");
    assert!(stdout.contains("word=swordfish\n"), "{stdout}");
    assert!(stdout.contains(&format!("{}\n", fx.task_dir("host").display())), "{stdout}");

    let started = Instant::now();
    let sleeper = ["/bin/sleep", "30"].map(str::to_owned).to_vec();
    let error = fx.driver.exec(&handle, &sleeper, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(error, DriverError::Timeout { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let procs = std::fs::read_to_string(fx.cgroup_dir("host", "pids").join("cgroup.procs")).unwrap();
    let survivors: Vec<&str> = procs
        .lines()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline == b"/bin/sleep\x0030\x00"))
        .collect();
    assert!(survivors.is_empty(), "the timed-out exec must be killed: {survivors:?}");

    fx.driver.destroy(&handle).await.unwrap();
    let error = fx.driver.exec(&handle, &command, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, DriverError::TaskGone { .. }), "{error:?}");
}

/// By default a task runs as nobody in its own mount namespace: the host is read-only, its task directory,
/// the allocation's `alloc/data` and a private `/tmp` are writable; `davit alloc exec` sees the same.
#[tokio::test]
async fn tasks_run_as_nobody_on_a_read_only_host() {
    let Some(fx) = fixture("unprivileged").await else { return };
    let script = "id -u; touch /etc/davit-exec-test 2>/dev/null && echo wrote-etc; touch ok && echo wrote-task-dir; \
                  touch ../alloc/data/shared && echo wrote-shared; touch /tmp/own && echo wrote-tmp; ls /tmp; : > ready; exec sleep 30";
    let handle = fx.driver.start(&fx.shell("web", script)).await.unwrap();
    wait_for_file(&fx.task_dir("web").join("ready")).await;
    let stdout = fx.log("web", "stdout", 0);
    assert_eq!(stdout, "65534\nwrote-task-dir\nwrote-shared\nwrote-tmp\nown\n", "{stdout}");
    assert!(!Path::new("/etc/davit-exec-test").exists());
    assert!(!Path::new("/tmp/own").exists(), "the task's /tmp is its own");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(fx.task_dir("web").join("ok")).unwrap());
    assert_eq!(owner, 65534);
    // Commands run in the task's context see its /tmp and its user.
    let command: Vec<String> = ["/bin/sh", "-c", "id -u; ls /tmp; touch /etc/x 2>/dev/null || echo read-only"].map(str::to_owned).to_vec();
    let output = fx.driver.exec(&handle, &command, Duration::from_secs(20)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "65534\nown\nread-only\n");
    fx.driver.destroy(&handle).await.unwrap();
}

/// Root and the host's file system need an agent that allows them.
#[tokio::test]
async fn root_and_no_isolation_need_the_agent_flag() {
    let Some(fx) = fixture("root").await else { return };
    let mut as_root = fx.shell("root", "id -u");
    as_root.user = Some("root".to_owned());
    let error = fx.driver.start(&as_root).await.unwrap_err();
    assert!(error.to_string().contains("--allow-root-exec"), "{error}");
    let mut shared_host = fx.shell("host", "true");
    shared_host.driver_config["isolation"] = serde_json::json!("none");
    let error = fx.driver.start(&shared_host).await.unwrap_err();
    assert!(error.to_string().contains("`isolation: none` is not allowed"), "{error}");

    let allowed = ExecDriver::new(ExecDriverConfig { allow_root_exec: true, ..ExecDriverConfig::new(executor_command()) });
    let handle = allowed.start(&as_root).await.unwrap();
    assert_eq!(wait_with(&allowed, &handle).await.exit_code, Some(0));
    assert_eq!(fx.log("root", "stdout", 0), "0\n");
    allowed.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn stats_come_from_the_cgroup() {
    let Some(fx) = fixture("stats").await else { return };
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ready > ready; while [ ! -e go ]; do sleep 0.02; done";
    let handle = fx.driver.start(&fx.shell("busy", script)).await.unwrap();
    wait_for_file(&fx.task_dir("busy").join("ready")).await;
    let stats = fx.driver.stats(&handle).await.unwrap();
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    assert!(stats.memory_bytes > 0, "{stats:?}");
    fx.driver.destroy(&handle).await.unwrap();
}

#[tokio::test]
async fn fingerprint_reports_the_cgroup_version() {
    let Some(fx) = fixture("fingerprint").await else { return };
    let fingerprint = fx.driver.fingerprint().await;
    assert!(fingerprint.detected && fingerprint.healthy, "{fingerprint:?}");
    let version = fingerprint.attributes.get("driver.exec.cgroups").map(String::as_str);
    assert_eq!(version, Some(fx.layout.version().as_str()));
    assert!(matches!(version, Some("v1" | "v2")));
}

/// Runs anywhere: the v2 code path of the driver against a fake cgroup2 tree.
#[tokio::test]
async fn fingerprint_on_a_fake_v2_tree_and_without_cgroups() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    std::fs::write(root.path().join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
    let driver = ExecDriver::new(ExecDriverConfig {
        executor_command: executor_command(),
        cgroup_root: root.path().to_owned(),
        allow_root_exec: false,
    });
    let fingerprint = driver.fingerprint().await;
    assert!(fingerprint.healthy, "{fingerprint:?}");
    assert_eq!(fingerprint.attributes.get("driver.exec.cgroups").map(String::as_str), Some("v2"));
    assert_eq!(std::fs::read_to_string(root.path().join("davit/cgroup.subtree_control")).unwrap(), "+cpu +memory +pids");
    assert_eq!(
        std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
        "cpu memory pids\n",
        "controllers already delegated by the root are left alone"
    );

    let empty = tempfile::tempdir().unwrap();
    let driver = ExecDriver::new(ExecDriverConfig {
        executor_command: executor_command(),
        cgroup_root: empty.path().to_owned(),
        allow_root_exec: false,
    });
    let fingerprint = driver.fingerprint().await;
    assert!(fingerprint.detected && !fingerprint.healthy, "{fingerprint:?}");
    assert!(fingerprint.description.contains("cgroup"), "{fingerprint:?}");
}
