//! The shared harness of the end-to-end tests (after ripgrep's `tests/util.rs`): each test gets a
//! fresh temp dir and real `davit` processes on loopback; a failure prints the command, its output
//! and the process logs.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use davit_api::http::JobStatusResponse;
use davit_client::Client;

pub const DAVIT: &str = env!("CARGO_BIN_EXE_davit");

/// Tests that need root and cgroups: under CI they must run; elsewhere they may skip with a reason.
pub fn require_root() -> bool {
    let root = unsafe_free_is_root();
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("this test needs root (cgroups); CI must run it as root");
        }
        eprintln!("skipping: this test needs root for cgroups");
    }
    root
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

pub use davit_oci::testing::free_port;

/// Tests that run containers: root, the image tools, a runtime, and a registry on loopback with the busybox
/// test image pushed (`None`: skipped outside CI, with the reason printed).
pub fn container_registry() -> Option<davit_oci::testing::TestRegistry> {
    use davit_oci::testing::{TestRegistry, require_tool, test_images_dir};
    if !require_root() || !["docker-registry", "skopeo", "umoci", "busybox"].iter().all(|tool| require_tool(tool)) {
        return None;
    }
    if !require_tool("crun") && !require_tool("runc") {
        return None;
    }
    let registry = TestRegistry::start();
    registry.push_test_image("busybox:1", &test_images_dir().join("busybox"));
    Some(registry)
}

const PORT_BLOCK_FIRST: u16 = 21_000;
const PORT_BLOCK_SIZE: u16 = 500;
const PORT_BLOCKS: u16 = 22;

/// This test process's own block of 500 host ports, below the kernel's ephemeral range (32768 and up), so
/// neither a parallel test nor a socket bound to port 0 (`free_port`, any client connection) can hold a port
/// an agent hands out. The block is claimed with a file lock that the process holds until it exits.
fn port_block() -> u16 {
    static BLOCK: std::sync::OnceLock<(std::fs::File, u16)> = std::sync::OnceLock::new();
    BLOCK
        .get_or_init(|| {
            let dir = std::env::temp_dir().join("davit-test-port-blocks");
            std::fs::create_dir_all(&dir).unwrap();
            let start = (std::process::id() % u32::from(PORT_BLOCKS)) as u16;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                for block in (start..PORT_BLOCKS).chain(0..start) {
                    let file = std::fs::File::create(dir.join(block.to_string())).unwrap();
                    if file.try_lock().is_ok() {
                        return (file, PORT_BLOCK_FIRST + block * PORT_BLOCK_SIZE);
                    }
                }
                assert!(Instant::now() < deadline, "no free test port block in {} after 10 minutes", dir.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .1
}

/// A loopback IP for one agent's service proxy (`--proxy-bind-ip`), unique on the host: an agent claims its
/// proxy IP, and a second agent on the same one is refused. `127.<100 + port block>.<n / 250>.<1 + n % 250>`
/// for the process's n-th agent.
pub fn proxy_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let block = (port_block() - PORT_BLOCK_FIRST) / PORT_BLOCK_SIZE;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.{}.{}.{}", 100 + block, n / 250, 1 + n % 250)
}

/// The host port range for the agent in `slot` (0–4) of this test process; no two parallel tests share one.
pub fn slot_port_range(slot: u16) -> String {
    assert!(slot < 5, "a test process has port ranges for five agents");
    let base = port_block() + slot * 100;
    format!("{base}-{}", base + 99)
}

/// The host port range for a test's single `davit dev` agent.
pub fn port_range() -> String {
    slot_port_range(0)
}

/// A running `davit` process whose output goes to a log file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Process {
        Process::spawn_with_env(name, dir, args, &[])
    }

    /// [`Process::spawn`] with more environment variables (`DAVIT_TOKEN`: secrets stay off the command line).
    pub fn spawn_with_env(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
        Process::spawn_program(DAVIT, name, dir, args, env)
    }

    /// Another program than davit (Prometheus, …), logging the same way.
    pub fn spawn_program(program: &str, name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("DAVIT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program} {args:?}: {e}"));
        Process { child, log, name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `limit`) until the process exits; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {limit:?}:\n{}", self.name, self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGINT (Ctrl-C) and wait up to 30 s for a clean exit.
    pub fn interrupt(&mut self) {
        signal(self.child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A test that failed while the process was paused (SIGSTOP) must not leave it stopped.
            signal(self.pid(), "CONT");
            self.interrupt();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log ({}) -----\n{}", self.name, self.log.display(), self.logs());
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is as good as gone.
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// One `davit dev` with its own data dir and ports.
pub struct Dev {
    /// First, so that it stops (and a failing test prints its log) before its directory is removed.
    pub process: Option<Process>,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub addr: String,
    pub bind: String,
    /// The agent's service DNS server (udp+tcp), on a free port per test.
    pub dns: String,
    /// The IP the agent's service proxy listens on (`local_port`s, upstreams).
    pub proxy_ip: String,
    /// More flags for `davit dev`.
    pub extra: Vec<String>,
}

impl Dev {
    pub fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// [`Dev::start`] with more flags.
    pub fn start_with(extra: &[&str]) -> Dev {
        let dev = Dev::spawn_with(extra);
        wait_ready_nodes(&dev.addr, 1);
        dev
    }

    /// A `davit dev` just started: its API may not answer yet, its node may not be ready.
    pub fn spawn() -> Dev {
        Dev::spawn_with(&[])
    }

    fn spawn_with(extra: &[&str]) -> Dev {
        let dir = tempdir();
        let data_dir = dir.path().join("data");
        let bind = format!("127.0.0.1:{}", free_port());
        let dns = format!("127.0.0.1:{}", free_port());
        let extra = extra.iter().map(|flag| flag.to_string()).collect();
        let mut dev = Dev { addr: format!("http://{bind}"), bind, dns, proxy_ip: proxy_ip(), data_dir, dir, process: None, extra };
        dev.spawn_process();
        dev
    }

    /// (Re)starts the process on the same data dir and address and waits for a ready node.
    pub fn launch(&mut self) {
        self.spawn_process();
        wait_ready_nodes(&self.addr, 1);
    }

    fn spawn_process(&mut self) {
        let data_dir = self.data_dir.display().to_string();
        let range = port_range();
        let [image_flag, image_dir] = vm_image_dir_args();
        let mut args = vec![
            "dev",
            &image_flag,
            &image_dir,
            "--bind",
            &self.bind,
            "--data-dir",
            &data_dir,
            "--port-range",
            &range,
            "--node-name",
            "dev-node",
            "--dns-bind",
            &self.dns,
            "--proxy-bind-ip",
            &self.proxy_ip,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let process = Process::spawn("davit-dev", self.dir.path(), &args);
        self.process = Some(process);
    }

    pub fn client(&self) -> Client {
        Client::new(&self.addr)
    }

    pub fn davit(&self, args: &[&str]) -> Output {
        davit(&self.addr, self.dir.path(), args)
    }

    /// Runs `davit` and asserts it succeeded.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(&self.addr, self.dir.path(), args)
    }

    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }
}

pub fn davit(addr: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new(DAVIT).args(args).env("DAVIT_ADDR", addr).current_dir(cwd).stdin(Stdio::null()).output().unwrap()
}

/// `davit` with `DAVIT_TOKEN` set to `token`.
pub fn davit_as(addr: &str, token: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new(DAVIT).args(args).env("DAVIT_ADDR", addr).env("DAVIT_TOKEN", token).current_dir(cwd).stdin(Stdio::null()).output().unwrap()
}

pub fn ok(addr: &str, cwd: &Path, args: &[&str]) -> String {
    let output = davit(addr, cwd, args);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "`davit {}` failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits (bounded) until the server answers and `count` nodes are ready.
pub fn wait_ready_nodes(addr: &str, count: usize) {
    wait_ready_nodes_as(addr, None, count)
}

/// [`wait_ready_nodes`] with an ACL token.
pub fn wait_ready_nodes_as(addr: &str, token: Option<&str>, count: usize) {
    let runtime = runtime();
    let client = Client::with_token(addr, token);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut index = 0;
    loop {
        match runtime.block_on(client.nodes_blocking(index, Duration::from_secs(5))) {
            Ok(nodes) => {
                if nodes.value.iter().filter(|n| n.status == davit_api::objects::NodeStatus::Ready).count() >= count {
                    return;
                }
                index = nodes.index;
            }
            // The server is still starting: the only wait here without an event to block on.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
        assert!(Instant::now() < deadline, "no {count} ready nodes at {addr} after 30 s");
    }
}

/// Follows one allocation with blocking queries until `done(alloc)` holds; panics after `limit`.
pub fn wait_alloc(
    addr: &str,
    id: &str,
    limit: Duration,
    done: impl Fn(&davit_api::objects::Allocation) -> bool,
) -> davit_api::objects::Allocation {
    wait_alloc_as(addr, None, id, limit, done)
}

/// [`wait_alloc`] with an ACL token.
pub fn wait_alloc_as(
    addr: &str,
    token: Option<&str>,
    id: &str,
    limit: Duration,
    done: impl Fn(&davit_api::objects::Allocation) -> bool,
) -> davit_api::objects::Allocation {
    let runtime = runtime();
    let client = Client::with_token(addr, token);
    let deadline = Instant::now() + limit;
    let mut index = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let alloc = runtime.block_on(client.allocation_blocking(id, index, remaining.min(Duration::from_secs(5)))).unwrap();
        if done(&alloc.value) {
            return alloc.value;
        }
        assert!(Instant::now() < deadline, "allocation {id} did not reach the expected state in {limit:?}: {:#?}", alloc.value);
        index = alloc.index;
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Follows the job with blocking queries until `done(status)` holds; panics after `limit`.
pub fn wait_job(addr: &str, name: &str, limit: Duration, done: impl Fn(&JobStatusResponse) -> bool) -> JobStatusResponse {
    wait_job_as(addr, None, name, limit, done)
}

/// [`wait_job`] with an ACL token.
pub fn wait_job_as(
    addr: &str,
    token: Option<&str>,
    name: &str,
    limit: Duration,
    done: impl Fn(&JobStatusResponse) -> bool,
) -> JobStatusResponse {
    let runtime = runtime();
    let client = Client::with_token(addr, token);
    let deadline = Instant::now() + limit;
    let mut index = 0;
    let mut last = None;
    while Instant::now() < deadline {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match runtime.block_on(client.job_status_blocking(name, index, remaining.min(Duration::from_secs(5)))) {
            Ok(status) => {
                index = status.index;
                if done(&status.value) {
                    return status.value;
                }
                last = Some(status.value);
            }
            Err(error) => panic!("job status {name}: {error}"),
        }
    }
    panic!("job {name} did not reach the expected state in {limit:?}; last status: {last:#?}");
}

/// `GET /` over HTTP/1.0 on a loopback port: the whole response, headers included.
pub fn http_get(port: u16) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `GET path` over HTTP/1.0 on a loopback port: the body of a 200 answer, trimmed; `None` on any failure
/// (not listening yet, another status).
pub fn http_body(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = match response.find("\r\n\r\n") {
        Some(end) => &response[end + 4..],
        None => response.find("\n\n").map_or("", |end| &response[end + 2..]),
    };
    (response.starts_with("HTTP/1.") && response.contains(" 200 ")).then(|| body.trim().to_string())
}

/// Calls `probe` until `condition` holds for what it returns (every 50 ms); panics naming `what` after `limit`.
pub fn eventually<T: std::fmt::Debug>(what: &str, limit: Duration, mut probe: impl FnMut() -> T, condition: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let value = probe();
        if condition(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `done` holds (every 50 ms); panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    eventually(what, limit, &mut done, |done| *done);
}

/// A temporary directory exec tasks (which run as nobody) can pass through to their own directories.
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    dir
}

/// Where the test guest is (built or not): `DAVIT_GUEST_DIR` or `<workspace>/target/guest`.
fn guest_path() -> PathBuf {
    std::env::var_os("DAVIT_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/guest"))
}

/// `--vm-image-dir <the test guest's directory>`: agents may boot it.
pub fn vm_image_dir_args() -> [String; 2] {
    let dir = guest_path();
    ["--vm-image-dir".to_owned(), std::fs::canonicalize(&dir).unwrap_or(dir).display().to_string()]
}

/// The test guest (`scripts/build-guest.sh`), from `DAVIT_GUEST_DIR` or `<workspace>/target/guest`; `None`
/// (skipped, with the reason) outside CI when it was not built.
pub fn guest_dir() -> Option<PathBuf> {
    let dir = guest_path();
    if dir.join("vmlinux").is_file() && dir.join("initramfs.cpio.gz").is_file() {
        return Some(std::fs::canonicalize(&dir).unwrap());
    }
    let reason = format!("no test guest in {} (run scripts/build-guest.sh)", dir.display());
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    eprintln!("skipping: {reason}");
    None
}

/// Reads a file or returns "".
pub fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Waits (at most `limit`) until the file at `path` (a process's log) contains `needle`.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !read(path).contains(needle) {
        assert!(Instant::now() < deadline, "{} never said {needle:?}:\n{}", path.display(), read(path));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server and agents sharing one temp dir.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub addr: String,
    server: Option<Process>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// A cluster whose server gets `extra` flags (e.g. `--acl`).
    pub fn start_with(extra: &[&str]) -> Cluster {
        Cluster::start_scheme("http", extra)
    }

    /// A cluster whose server serves HTTPS with mutual TLS (`--tls`, its CA at [`Cluster::ca_cert`]).
    pub fn start_tls(extra: &[&str]) -> Cluster {
        Cluster::start_scheme("https", &[&["--tls"], extra].concat())
    }

    /// The CA a `--tls` server made on its first start.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("server").join("tls").join("ca.pem")
    }

    fn start_scheme(scheme: &str, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster { dir: tempdir(), addr: format!("{scheme}://127.0.0.1:{}", free_port()), server: None };
        cluster.start_server(extra);
        cluster
    }

    /// A cluster whose server is not started yet: its address is known ([`Cluster::start_server`] starts it).
    pub fn unstarted() -> Cluster {
        Cluster { dir: tempdir(), addr: format!("http://127.0.0.1:{}", free_port()), server: None }
    }

    /// Starts the server at the cluster's address, with `extra` flags.
    pub fn start_server(&mut self, extra: &[&str]) {
        let bind = self.addr.split_once("://").expect("a URL").1.to_string();
        let data = self.dir.path().join("server").display().to_string();
        let mut args = vec!["server", "--bind", &bind, "--data-dir", &data];
        args.extend_from_slice(extra);
        self.server = Some(Process::spawn("server", self.dir.path(), &args));
    }

    /// The server's process id (to pause it with SIGSTOP).
    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().expect("a started server").pid()
    }

    /// The arguments of agent `name`; `slot` picks its host-port range (distinct per agent and test).
    pub fn agent_args(&self, name: &str, slot: u16) -> Vec<String> {
        let data = self.dir.path().join(name).display().to_string();
        let bind = format!("127.0.0.1:{}", free_port());
        let dns = format!("127.0.0.1:{}", free_port());
        let range = slot_port_range(slot);
        let proxy_ip = proxy_ip();
        [
            "agent",
            "--servers",
            &self.addr,
            "--data-dir",
            &data,
            "--node-name",
            name,
            "--bind",
            &bind,
            "--port-range",
            &range,
            "--dns-bind",
            &dns,
            "--proxy-bind-ip",
            &proxy_ip,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(vm_image_dir_args())
        .collect()
    }

    pub fn spawn_agent(&self, log_name: &str, args: &[String]) -> Process {
        self.spawn_agent_with_env(log_name, args, &[])
    }

    pub fn spawn_agent_with_env(&self, log_name: &str, args: &[String], env: &[(&str, &str)]) -> Process {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::spawn_with_env(log_name, self.dir.path(), &args, env)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    /// A stopped agent leaves its tasks running (by design): whatever still runs from this cluster's directory
    /// (executors and QEMU by their command line, tasks by their working directory) is killed, so no test
    /// leaves work behind for the next one.
    fn drop(&mut self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let in_dir = std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(self.dir.path()));
            if pid != std::process::id() && (in_dir || String::from_utf8_lossy(&cmdline).contains(&dir)) {
                signal(pid, "KILL");
            }
        }
    }
}

/// Debian's Prometheus on loopback, scraping `targets` (`host:port`, path `/metrics`) every second.
pub struct Prometheus {
    pub process: Process,
    pub addr: String,
}

impl Prometheus {
    /// `None` (with the reason printed) when the `prometheus` binary is missing outside CI; under CI a missing
    /// binary is a failure (scripts/deps.sh installs it).
    pub fn start(dir: &Path, targets: &[&str]) -> Option<Prometheus> {
        const BINARY: &str = "/usr/bin/prometheus";
        if !Path::new(BINARY).exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{BINARY} is missing: scripts/deps.sh installs Debian's prometheus package");
            }
            eprintln!("skipping: {BINARY} is missing (apt-get install prometheus)");
            return None;
        }
        let targets: Vec<String> = targets.iter().map(|target| format!("\"{target}\"")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - {{job_name: davit, static_configs: [{{targets: [{}]}}]}}\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = Process::spawn_program(BINARY, "prometheus", dir, &args, &[]);
        let prometheus = Prometheus { process, addr };
        wait_until("prometheus is ready", Duration::from_secs(30), || http_status(&prometheus.addr, "/-/ready") == Some(200));
        Some(prometheus)
    }
}

/// The status code of `GET path` on `addr`, if it answered.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
