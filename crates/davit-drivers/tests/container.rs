//! The container driver against real OCI runtimes (crun and runc), real cgroups and a throw-away registry.
//!
//! These tests need root, usable cgroups, the runtime under test and the registry tools (`docker-registry`,
//! `skopeo`, `umoci`, `busybox`). Without them they print why and return, except under `CI=true`, where they
//! fail. Every scenario runs once per runtime (`<scenario>::crun`, `<scenario>::runc`). The test process shares
//! one registry (started on first use, stopped at exit); everything else is per test: its own data dir, image
//! cache, runtime state root and allocation ids, and `Fixture`'s `Drop` destroys every task it started.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use davit_drivers::cgroups::{CgroupLayout, CgroupVersion};
use davit_drivers::{
    ContainerDriver, ContainerDriverConfig, Driver, EventSink, ExitResult, LogRotation, RuntimeChoice, TaskConfig, TaskHandle,
    TaskResources, TaskRunState,
};
use davit_oci::testing::{TestRegistry, free_port, require_tool, test_images_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for anything a test awaits, so a bug fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs each scenario once with crun and once with runc: `<scenario>::crun` and `<scenario>::runc`.
macro_rules! for_both_runtimes {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test]
                async fn crun() {
                    super::$scenario(davit_drivers::RuntimeChoice::Crun).await;
                }

                #[tokio::test]
                async fn runc() {
                    super::$scenario(davit_drivers::RuntimeChoice::Runc).await;
                }
            }
        )*
    };
}

for_both_runtimes!(
    httpd_serves_on_its_port_with_env_and_limits,
    pull_by_digest_and_errors,
    whiteouts_are_applied_inside_the_container,
    memory_limit_oom_kills_and_is_reported,
    exec_runs_inside_the_container,
    stop_sends_the_signal_then_kills,
    recover_from_a_new_driver_instance,
    fingerprint_reports_the_runtime,
);

fn runtime_binary(runtime: RuntimeChoice) -> &'static str {
    match runtime {
        RuntimeChoice::Crun => "crun",
        RuntimeChoice::Runc => "runc",
        RuntimeChoice::Auto => unreachable!("the tests name their runtime"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The shared registry

static REGISTRY_HOST: OnceLock<String> = OnceLock::new();
/// The registry process, dropped (killed, its storage removed) when the test process exits.
static REGISTRY: Mutex<Option<TestRegistry>> = Mutex::new(None);

extern "C" fn stop_registry() {
    if let Ok(mut registry) = REGISTRY.lock() {
        drop(registry.take());
    }
}

/// `127.0.0.1:<port>` of the process's registry holding `busybox:1` and `whiteout:1` (started on first use).
fn registry_host() -> &'static str {
    REGISTRY_HOST.get_or_init(|| {
        let registry = TestRegistry::start();
        let images = test_images_dir();
        for name in ["busybox", "whiteout"] {
            registry.push_test_image(&format!("{name}:1"), &images.join(name));
        }
        let host = registry.host();
        *REGISTRY.lock().unwrap() = Some(registry);
        // SAFETY: registering a plain `extern "C" fn` without arguments has no preconditions.
        let registered = unsafe { libc::atexit(stop_registry) };
        assert_eq!(registered, 0, "atexit failed");
        host
    })
}

/// The digest the registry serves for `name:tag` (its `Docker-Content-Digest` header).
fn registry_digest(host: &str, name: &str, tag: &str) -> String {
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "HEAD /v2/{name}/manifests/{tag} HTTP/1.0\r\nHost: {host}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "HEAD manifest: {response}");
    response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim().eq_ignore_ascii_case("Docker-Content-Digest").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Docker-Content-Digest in {response}"))
}

// ---------------------------------------------------------------------------------------------------------------
// The fixture

fn driver_config(runtime: RuntimeChoice, data_dir: &Path) -> ContainerDriverConfig {
    let mut config = ContainerDriverConfig::new(vec![env!("CARGO_BIN_EXE_davit-executor").into()], data_dir);
    config.runtime = runtime;
    config.runtime_state_root = data_dir.join("run");
    config
}

struct Fixture {
    dir: tempfile::TempDir,
    alloc_id: String,
    config: ContainerDriverConfig,
    driver: ContainerDriver,
    layout: CgroupLayout,
    /// Every task started through [`Fixture::start`]: destroyed on drop.
    handles: Mutex<Vec<TaskHandle>>,
    events: Arc<Mutex<Vec<(String, String)>>>,
}

/// Why this machine cannot run the tests, if it cannot; panics instead under `CI=true`.
fn skip_reason(test: &str, problem: Option<String>) -> bool {
    let Some(problem) = problem else { return false };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("container driver tests need root, cgroups and an OCI runtime (CI=true): {problem}");
    }
    eprintln!("skipping {test}: {problem}");
    true
}

/// The driver with a fresh allocation, or `None` (after printing why) when this machine cannot run the test.
async fn fixture(test: &str, runtime: RuntimeChoice, needs_registry: bool) -> Option<Fixture> {
    // SAFETY: geteuid has no preconditions.
    if skip_reason(test, (unsafe { libc::geteuid() } != 0).then(|| "not running as root".to_owned())) {
        return None;
    }
    if !require_tool(runtime_binary(runtime)) {
        return None;
    }
    if needs_registry && !["docker-registry", "skopeo", "umoci", "busybox"].iter().all(|tool| require_tool(tool)) {
        return None;
    }
    let dir = tempfile::Builder::new().prefix("davit-container-test-").tempdir().unwrap();
    let config = driver_config(runtime, dir.path());
    let driver = ContainerDriver::new(config.clone());
    let fingerprint = driver.fingerprint().await;
    if skip_reason(test, (!fingerprint.healthy).then(|| fingerprint.description.clone())) {
        return None;
    }
    let Ok(layout) = CgroupLayout::detect(&config.cgroup_root) else { unreachable!("a healthy driver has cgroups") };
    if needs_registry {
        tokio::task::spawn_blocking(registry_host).await.unwrap();
    }
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let alloc_id = format!("ctest-{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), runtime_binary(runtime));
    Some(Fixture { dir, alloc_id, config, driver, layout, handles: Mutex::new(Vec::new()), events: Arc::new(Mutex::new(Vec::new())) })
}

impl Fixture {
    fn image(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", registry_host())
    }

    fn alloc_dir_of(&self, alloc_id: &str) -> PathBuf {
        self.dir.path().join("allocs").join(alloc_id)
    }

    fn alloc_dir(&self) -> PathBuf {
        self.alloc_dir_of(&self.alloc_id)
    }

    fn log_dir(&self) -> PathBuf {
        self.alloc_dir().join("alloc").join("logs")
    }

    /// A task of allocation `alloc_id` running `command` (through the image's `sh -c` entrypoint).
    fn config_in(&self, alloc_id: &str, task: &str, image: &str, command: Option<&str>) -> TaskConfig {
        let alloc_dir = self.alloc_dir_of(alloc_id);
        let mut driver_config = serde_json::json!({ "image": image });
        if let Some(command) = command {
            driver_config["command"] = command.into();
        }
        let events = Arc::clone(&self.events);
        TaskConfig {
            alloc_id: alloc_id.to_owned(),
            task_name: task.to_owned(),
            driver_config,
            env: BTreeMap::new(),
            user: None,
            task_dir: alloc_dir.join(task),
            log_dir: alloc_dir.join("alloc").join("logs"),
            alloc_dir,
            resources: TaskResources { cpu_millicores: 500, memory_mib: 64 },
            logs: LogRotation::default(),
            events: EventSink::new(move |kind, message, _progress| events.lock().unwrap().push((kind.to_owned(), message.to_owned()))),
        }
    }

    fn config(&self, task: &str, command: &str) -> TaskConfig {
        self.config_in(&self.alloc_id, task, &self.image("busybox:1"), Some(command))
    }

    /// Starts the task and remembers it for cleanup.
    async fn start(&self, config: &TaskConfig) -> TaskHandle {
        let handle = self.driver.start(config).await.unwrap_or_else(|error| panic!("starting {}: {error}", config.task_name));
        assert_eq!(handle.driver, "container");
        self.handles.lock().unwrap().push(handle.clone());
        handle
    }

    async fn wait(&self, handle: &TaskHandle) -> ExitResult {
        tokio::time::timeout(PATIENCE, self.driver.wait(handle)).await.expect("task did not exit in time").expect("wait failed")
    }

    fn log(&self, task: &str, stream: &str) -> String {
        let path = self.log_dir().join(format!("{task}.{stream}.0"));
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
    }

    /// The directory of the task cgroup for one v1 controller (or the v2 directory).
    fn cgroup_dir(&self, alloc_id: &str, task: &str, controller: &str) -> PathBuf {
        let name = CgroupLayout::task_cgroup_name(alloc_id, task);
        match self.layout.version() {
            CgroupVersion::V1 => self.layout.root().join(controller).join("davit").join(name),
            CgroupVersion::V2 => self.layout.root().join("davit").join(name),
        }
    }

    fn event_types(&self) -> Vec<String> {
        self.events.lock().unwrap().iter().map(|(kind, _)| kind.clone()).collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let handles = std::mem::take(&mut *self.handles.lock().unwrap());
        if handles.is_empty() {
            return;
        }
        // Drop runs inside the test's runtime, which cannot be blocked on: destroy from a thread of its own.
        let driver = &self.driver;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    for handle in &handles {
                        match tokio::time::timeout(PATIENCE, driver.destroy(handle)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => eprintln!("destroying {}/{}: {error}", handle.alloc_id, handle.task_name),
                            Err(_) => eprintln!("destroying {}/{} timed out", handle.alloc_id, handle.task_name),
                        }
                    }
                });
            });
        });
    }
}

/// Polls `condition` every 20 ms until it holds; panics after [`PATIENCE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `GET /` on 127.0.0.1:`port`; the body, or `None` when nothing (complete) answers yet.
async fn http_get(port: u16) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        response.starts_with("HTTP/1.").then_some(())?;
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

/// Polls `GET /` until the server answers (the container has no readiness event the test could await).
async fn wait_for_http(port: u16) -> String {
    wait_for_http_of(port, None).await
}

/// [`wait_for_http`] that shows the task's logs in `log_dir` if nothing answers.
async fn wait_for_http_of(port: u16, log_dir: Option<&Path>) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(body) = http_get(port).await {
            return body;
        }
        let logs = || {
            let read = |stream: &str| log_dir.and_then(|dir| std::fs::read_to_string(dir.join(format!("web.{stream}.0"))).ok());
            format!("stdout {:?}, stderr {:?}", read("stdout"), read("stderr"))
        };
        assert!(Instant::now() < deadline, "nothing answered on port {port} within {PATIENCE:?}; the task's {}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|comm| comm.trim().to_owned())
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|line| line.trim().parse().ok()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The scenarios

fn httpd_command(port: u16) -> String {
    format!("mkdir -p /www && echo $GREETING > /www/index.html && exec httpd -f -p {port} -h /www")
}

async fn httpd_serves_on_its_port_with_env_and_limits(runtime: RuntimeChoice) {
    let Some(fx) = fixture("httpd", runtime, true).await else { return };
    let port = free_port();
    let mut config = fx.config("web", &httpd_command(port));
    config.env.insert("GREETING".to_owned(), "hi-from-env".to_owned());
    let handle = fx.start(&config).await;
    assert_eq!(wait_for_http(port).await.trim(), "hi-from-env");
    assert_eq!(fx.driver.inspect(&handle).await.unwrap(), TaskRunState::Running);

    let types = fx.event_types();
    assert!(types.iter().any(|kind| kind == "Downloading Image"), "events: {:?}", fx.events.lock().unwrap());
    assert!(types.iter().any(|kind| kind == "Image Ready"), "events: {:?}", fx.events.lock().unwrap());

    // The limits are on the task cgroup, and the container's process (httpd) runs in it.
    let memory = fx.cgroup_dir(&fx.alloc_id, "web", "memory");
    let name = CgroupLayout::task_cgroup_name(&fx.alloc_id, "web");
    match fx.layout.version() {
        CgroupVersion::V1 => {
            assert_eq!(std::fs::read_to_string(memory.join("memory.limit_in_bytes")).unwrap().trim(), (64u64 << 20).to_string());
            let quota = std::fs::read_to_string(fx.cgroup_dir(&fx.alloc_id, "web", "cpu").join("cpu.cfs_quota_us")).unwrap();
            assert_eq!(quota.trim(), "50000");
        }
        CgroupVersion::V2 => {
            assert_eq!(std::fs::read_to_string(memory.join("memory.max")).unwrap().trim(), (64u64 << 20).to_string());
            assert_eq!(std::fs::read_to_string(memory.join("cpu.max")).unwrap().trim(), "50000 100000");
        }
    }
    let pids = cgroup_pids(&memory);
    let httpd = pids.iter().copied().find(|&pid| proc_comm(pid).as_deref() == Some("httpd"));
    let httpd = httpd.unwrap_or_else(|| panic!("no httpd among {pids:?} of {}", memory.display()));
    let membership = std::fs::read_to_string(format!("/proc/{httpd}/cgroup")).unwrap();
    let expected = match fx.layout.version() {
        CgroupVersion::V1 => format!(":memory:/davit/{name}"),
        CgroupVersion::V2 => format!("0::/davit/{name}"),
    };
    assert!(membership.lines().any(|line| line.ends_with(&expected)), "httpd's cgroups:\n{membership}");
    if fx.layout.version() == CgroupVersion::V1 {
        // The runtime stays out of the CPU cgroup, but puts the container there (runc: cgroupsPath, crun: a hook).
        let in_cpu = membership.lines().any(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next(), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            controllers.split(',').any(|c| c == "cpu") && path == format!("/davit/{name}")
        });
        assert!(in_cpu, "httpd is not in the task's cpu cgroup:\n{membership}");
    }

    // Three at once (count 3): three allocations of the same task, each on its own port.
    let ports = [free_port(), free_port(), free_port()];
    let configs: Vec<TaskConfig> = ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            let mut config = fx.config_in(&format!("{}-{index}", fx.alloc_id), "web", &fx.image("busybox:1"), Some(&httpd_command(*port)));
            config.env.insert("GREETING".to_owned(), format!("hi-from-{index}"));
            config
        })
        .collect();
    let (first, second, third) = tokio::join!(fx.start(&configs[0]), fx.start(&configs[1]), fx.start(&configs[2]));
    assert_ne!(first.pid, second.pid);
    assert_ne!(second.pid, third.pid);
    for (index, port) in ports.iter().enumerate() {
        let log_dir = fx.alloc_dir_of(&format!("{}-{index}", fx.alloc_id)).join("alloc").join("logs");
        assert_eq!(wait_for_http_of(*port, Some(&log_dir)).await.trim(), format!("hi-from-{index}"));
    }
    assert_eq!(wait_for_http(port).await.trim(), "hi-from-env", "the first container still serves");
}

async fn pull_by_digest_and_errors(runtime: RuntimeChoice) {
    let Some(fx) = fixture("pull", runtime, true).await else { return };
    let host = registry_host();
    let digest = registry_digest(host, "busybox", "1");
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");

    let failures = [
        ("unknown-digest", format!("{host}/busybox@sha256:{}", "0".repeat(64)), &["not found", "manifest unknown"][..]),
        ("unknown-name", format!("{host}/no-such-image:1"), &["not found"][..]),
        ("unreachable", format!("127.0.0.1:{}/busybox:1", free_port()), &["unreachable"][..]),
    ];
    for (task, image, expected) in failures {
        let config = fx.config_in(&fx.alloc_id, task, &image, None);
        let started = tokio::time::timeout(PATIENCE, fx.driver.start(&config)).await.expect("start did not give up in time");
        let error = match started {
            Ok(handle) => {
                fx.handles.lock().unwrap().push(handle);
                panic!("{image} started")
            }
            Err(error) => error.to_string(),
        };
        assert!(expected.iter().any(|text| error.to_lowercase().contains(text)), "{image}: {error}");
        let bundle = fx.alloc_dir().join(".container").join(task);
        assert!(!bundle.exists(), "{image}: {} was left behind", bundle.display());
        assert!(!fx.cgroup_dir(&fx.alloc_id, task, "memory").exists(), "{image}: its cgroup was left behind");
    }

    // A failure after the image is pulled and the rootfs mounted (a user the image does not have) cleans up too.
    let mut config = fx.config("no-user", "true");
    config.driver_config["user"] = "nosuchuser".into();
    let error = fx.driver.start(&config).await.expect_err("a user missing from the image").to_string();
    assert!(error.contains("nosuchuser"), "{error}");
    let bundle = fx.alloc_dir().join(".container").join("no-user");
    assert!(!bundle.exists(), "{} was left behind", bundle.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&bundle.display().to_string()), "the rootfs of a failed start is still mounted:\n{mounts}");

    // Capabilities beyond Docker's default set need the agent's consent (`--allow-cap`).
    let mut config = fx.config("caps", "true");
    config.driver_config["cap_add"] = serde_json::json!(["SYS_ADMIN"]);
    let error = fx.driver.start(&config).await.expect_err("SYS_ADMIN without --allow-cap").to_string();
    assert!(error.contains("--allow-cap SYS_ADMIN"), "{error}");

    // By digest, with the image's own cmd (`echo hello from busybox` through the `sh -c` entrypoint).
    let config = fx.config_in(&fx.alloc_id, "by-digest", &format!("{host}/busybox@{digest}"), None);
    let handle = fx.start(&config).await;
    assert_eq!(fx.wait(&handle).await, ExitResult { exit_code: Some(0), signal: None, oom_killed: false });
    assert_eq!(fx.log("by-digest", "stdout"), "hello from busybox\n");
}

async fn whiteouts_are_applied_inside_the_container(runtime: RuntimeChoice) {
    let Some(fx) = fixture("whiteout", runtime, true).await else { return };
    let command = "ls /data; test ! -e /etc/deleted-file && echo gone";
    let config = fx.config_in(&fx.alloc_id, "layers", &fx.image("whiteout:1"), Some(command));
    let handle = fx.start(&config).await;
    let exit = fx.wait(&handle).await;
    let stdout = fx.log("layers", "stdout");
    let stderr = fx.log("layers", "stderr");
    assert_eq!(exit, ExitResult { exit_code: Some(0), signal: None, oom_killed: false }, "stdout {stdout:?}, stderr {stderr:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"new"), "{stdout:?}");
    assert!(!lines.contains(&"old"), "the opaque directory still shows /data/old: {stdout:?}");
    assert!(lines.contains(&"gone"), "/etc/deleted-file is still there: {stdout:?}");
    assert_eq!(stderr, "");
}

async fn memory_limit_oom_kills_and_is_reported(runtime: RuntimeChoice) {
    let Some(fx) = fixture("oom", runtime, true).await else { return };
    let mut config = fx.config("hog", "tail /dev/zero");
    config.resources.memory_mib = 16;
    let handle = fx.start(&config).await;
    let result = fx.wait(&handle).await;
    assert!(result.oom_killed, "{result:?}; stderr: {}", fx.log("hog", "stderr"));
    assert!(!result.successful());
    assert_eq!(fx.driver.inspect(&handle).await.unwrap(), TaskRunState::Exited(result));
}

async fn exec_runs_inside_the_container(runtime: RuntimeChoice) {
    let Some(fx) = fixture("exec", runtime, true).await else { return };
    let handle = fx.start(&fx.config("sleeper", "sleep 300")).await;
    let command = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<String>>();

    let output = fx.driver.exec(&handle, &command(&["cat", "/etc/hostname"]), PATIENCE).await.unwrap();
    assert_eq!(output.exit_code, 0, "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "sleeper");

    let output = fx.driver.exec(&handle, &command(&["sh", "-c", "echo $DAVIT_ALLOC_DIR; exit 3"]), PATIENCE).await.unwrap();
    assert_eq!(output.exit_code, 3, "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "/alloc\n");

    assert_eq!(fx.driver.inspect(&handle).await.unwrap(), TaskRunState::Running, "exec must not end the container");
}

async fn stop_sends_the_signal_then_kills(runtime: RuntimeChoice) {
    let Some(fx) = fixture("stop", runtime, true).await else { return };
    // The trap is set before `ready` appears, so the signal cannot come too early.
    let graceful = "trap 'echo got-term > /alloc/term; exit 0' TERM; touch /alloc/ready-graceful; while true; do sleep 0.1; done";
    let handle = fx.start(&fx.config("graceful", graceful)).await;
    let ready = fx.alloc_dir().join("alloc").join("ready-graceful");
    eventually("the graceful task is ready", || ready.exists()).await;
    tokio::time::timeout(PATIENCE, fx.driver.stop(&handle, "SIGTERM", Duration::from_secs(5))).await.unwrap().unwrap();
    let term = fx.alloc_dir().join("alloc").join("term");
    assert_eq!(std::fs::read_to_string(&term).unwrap_or_else(|error| panic!("{}: {error}", term.display())), "got-term\n");
    let result = fx.wait(&handle).await;
    assert!(matches!(fx.driver.inspect(&handle).await.unwrap(), TaskRunState::Exited(_)));
    assert_eq!(result.exit_code, Some(0), "the trap exits 0: {result:?}");

    let stubborn = "trap '' TERM; touch /alloc/ready-stubborn; while true; do sleep 0.1; done";
    let handle = fx.start(&fx.config("stubborn", stubborn)).await;
    let ready = fx.alloc_dir().join("alloc").join("ready-stubborn");
    eventually("the stubborn task is ready", || ready.exists()).await;
    let started = Instant::now();
    tokio::time::timeout(PATIENCE, fx.driver.stop(&handle, "SIGTERM", Duration::from_secs(1))).await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "stop returned after {took:?}, before its timeout");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let result = fx.wait(&handle).await;
    assert_ne!(result.exit_code, Some(0), "the stubborn task was killed: {result:?}");
    assert!(!result.successful());
    assert!(cgroup_pids(&fx.cgroup_dir(&fx.alloc_id, "stubborn", "memory")).is_empty(), "processes survived the stop");
}

async fn recover_from_a_new_driver_instance(runtime: RuntimeChoice) {
    let Some(fx) = fixture("recover", runtime, true).await else { return };
    let handle = fx.start(&fx.config("sleeper", "sleep 300")).await;
    // The agent persists the handle as JSON.
    let handle: TaskHandle = serde_json::from_str(&serde_json::to_string(&handle).unwrap()).unwrap();

    let second = ContainerDriver::new(fx.config.clone());
    second.recover(&handle).await.unwrap();
    assert_eq!(second.inspect(&handle).await.unwrap(), TaskRunState::Running);
    let output = second.exec(&handle, &["echo".to_owned(), "still-here".to_owned()], PATIENCE).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "still-here\n");

    tokio::time::timeout(PATIENCE, second.stop(&handle, "SIGTERM", Duration::from_secs(1))).await.unwrap().unwrap();
    let result = tokio::time::timeout(PATIENCE, second.wait(&handle)).await.unwrap().unwrap();
    assert!(!result.successful(), "sleep 300 was stopped: {result:?}");
    assert!(matches!(second.inspect(&handle).await.unwrap(), TaskRunState::Exited(_)));

    second.destroy(&handle).await.unwrap();
    let bundle = fx.alloc_dir().join(".container").join("sleeper");
    assert!(!bundle.exists(), "{} is still there", bundle.display());
    let name = CgroupLayout::task_cgroup_name(&fx.alloc_id, "sleeper");
    assert!(!fx.cgroup_dir(&fx.alloc_id, "sleeper", "memory").exists(), "the memory cgroup is still there");
    // No controller keeps a cgroup of the task (the runtime creates some davit does not manage).
    let leftovers: Vec<PathBuf> = std::fs::read_dir(fx.layout.root())
        .unwrap()
        .flatten()
        .map(|entry| entry.path().join("davit").join(&name))
        .filter(|dir| dir.exists())
        .collect();
    assert!(leftovers.is_empty(), "cgroups left behind: {leftovers:?}");
    // The runtime forgot the container.
    let state = fx.config.runtime_state_root.join(runtime_binary(runtime));
    let containers: Vec<String> = std::fs::read_dir(&state)
        .map(|dir| dir.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!containers.iter().any(|id| id.contains(&fx.alloc_id)), "the runtime still knows {containers:?}");
    // Destroy is idempotent (the fixture destroys it again).
    second.destroy(&handle).await.unwrap();
}

async fn fingerprint_reports_the_runtime(runtime: RuntimeChoice) {
    let Some(fx) = fixture("fingerprint", runtime, false).await else { return };
    let fingerprint = fx.driver.fingerprint().await;
    assert!(fingerprint.detected && fingerprint.healthy, "{fingerprint:?}");
    assert_eq!(fingerprint.attributes.get("driver.container.runtime").map(String::as_str), Some(runtime_binary(runtime)));
    let version = fingerprint.attributes.get("driver.container.runtime_version").cloned().unwrap_or_default();
    assert!(version.contains(runtime_binary(runtime)), "{fingerprint:?}");
    assert_eq!(fx.driver.runtime_name(), Some(runtime_binary(runtime)));
}
