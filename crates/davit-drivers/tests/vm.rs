//! The vm driver against real QEMU guests (TCG is enough).
//!
//! The guest (kernel, busybox initramfs, ext4 disk) comes from `scripts/build-guest.sh`, run once per test
//! process (or taken from `DAVIT_GUEST_DIR` when that holds a built guest). The tests need root, cgroups, QEMU
//! and the guest; without them they print why and return, except under `CI=true`, where they fail. Every test
//! has its own temp dir and allocation id and removes its cgroups even when it fails (`Fixture`'s `Drop`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use davit_drivers::cgroups::{self, CgroupLayout};
use davit_drivers::vm::AccelProbeConfig;
use davit_drivers::{
    Driver, DriverError, ExitResult, ImagePolicy, LogRotation, MigrationTls, TaskConfig, TaskHandle, TaskResources, TaskRunState, VmDriver,
    VmDriverConfig,
};
use davit_oci::testing::free_port;
use serde_json::{Value, json};

/// Upper bound for anything a test awaits (a TCG boot takes a few seconds, more on a busy machine).
const PATIENCE: Duration = Duration::from_secs(120);

/// The guest directory, or why there is none.
fn guest_dir() -> Result<&'static Path, String> {
    static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let guest = GUEST.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-guest.sh");
        let dir = match std::env::var_os("DAVIT_GUEST_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guest"),
        };
        let output = std::process::Command::new("bash")
            .arg(&script)
            .env("DAVIT_GUEST_DIR", &dir)
            .output()
            .map_err(|error| format!("running {}: {error}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}): {}{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        std::fs::canonicalize(&dir).map_err(|error| format!("{}: {error}", dir.display()))
    });
    guest.as_deref().map_err(Clone::clone)
}

fn executor_command() -> Vec<String> {
    vec![env!("CARGO_BIN_EXE_davit-executor").to_owned()]
}

struct Fixture {
    dir: tempfile::TempDir,
    guest: &'static Path,
    alloc_id: String,
    layout: CgroupLayout,
    tasks: Mutex<Vec<(String, String)>>,
}

/// A fresh fixture, or `None` (after printing why) when this machine cannot run the tests.
async fn fixture(test: &str) -> Option<Fixture> {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let problem = if !is_root {
        Some("not running as root".to_owned())
    } else {
        let probe = VmDriver::new(driver_config(Path::new("/nonexistent"), true, Path::new("/nonexistent")));
        let fingerprint = probe.fingerprint().await;
        if !fingerprint.healthy { Some(format!("vm driver unhealthy: {}", fingerprint.description)) } else { guest_dir().err() }
    };
    if let Some(problem) = problem {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("vm driver tests need root, cgroups, qemu and the test guest (CI=true): {problem}");
        }
        eprintln!("skipping {test}: {problem}");
        return None;
    }
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let alloc_id = format!("vmtest-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let layout = CgroupLayout::detect(Path::new(cgroups::DEFAULT_ROOT)).expect("healthy driver has cgroups");
    Some(Fixture { dir: tempfile::tempdir().unwrap(), guest: guest_dir().unwrap(), alloc_id, layout, tasks: Mutex::new(Vec::new()) })
}

/// A driver config whose guest images come from `guest`.
fn driver_config(data_dir: &Path, force_tcg: bool, guest: &Path) -> VmDriverConfig {
    let mut config = VmDriverConfig::new(executor_command(), data_dir.to_path_buf());
    config.accel_probe = AccelProbeConfig { force_tcg, ..AccelProbeConfig::default() };
    config.images = ImagePolicy::new(vec![guest.to_path_buf()]);
    config
}

impl Fixture {
    /// A driver of its own "node" (data dir `<tmp>/<node>`), with TCG (the probe is tested separately).
    fn driver(&self, node: &str) -> VmDriver {
        VmDriver::new(driver_config(&self.dir.path().join(node), true, self.guest))
    }

    fn alloc_dir(&self, alloc_id: &str) -> PathBuf {
        self.dir.path().join("allocs").join(alloc_id)
    }

    fn log_path(&self, alloc_id: &str, task: &str) -> PathBuf {
        self.alloc_dir(alloc_id).join("alloc").join("logs").join(format!("{task}.stdout.0"))
    }

    /// A task of allocation `alloc_id` (a suffix of the fixture's) with `config` and an `http` port.
    fn task(&self, alloc_suffix: &str, task: &str, config: Value, http_port: u16) -> TaskConfig {
        let alloc_id = format!("{}-{alloc_suffix}", self.alloc_id);
        self.tasks.lock().unwrap().push((alloc_id.clone(), task.to_owned()));
        let alloc_dir = self.alloc_dir(&alloc_id);
        TaskConfig {
            alloc_id,
            task_name: task.to_owned(),
            driver_config: config,
            env: BTreeMap::from([("DAVIT_PORT_http".to_owned(), http_port.to_string())]),
            user: None,
            task_dir: alloc_dir.join(task),
            log_dir: alloc_dir.join("alloc").join("logs"),
            alloc_dir,
            resources: TaskResources { cpu_millicores: 1000, memory_mib: 256 },
            logs: LogRotation::default(),
            events: davit_drivers::EventSink::discard(),
        }
    }

    /// A direct-kernel-boot config of the test guest.
    fn kernel_config(&self, extra_cmdline: &str) -> Value {
        json!({
            "accel": "tcg",
            "kernel": self.guest.join("vmlinux"),
            "initrd": self.guest.join("initramfs.cpio.gz"),
            "cmdline": format!("console=ttyS0 tsc_early_khz=2600000 panic=-1 {extra_cmdline}"),
            "ports": {"http": 8080},
        })
    }

    fn console(&self, config: &TaskConfig) -> String {
        std::fs::read_to_string(self.log_path(&config.alloc_id, &config.task_name)).unwrap_or_default()
    }

    async fn wait_for_console(&self, config: &TaskConfig, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.console(config).contains(needle) {
            assert!(Instant::now() < deadline, "console never showed {needle:?}; it has:\n{}", self.console(config));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (alloc_id, task) in self.tasks.lock().unwrap().iter() {
            let cgroup = self.layout.task_cgroup(&CgroupLayout::task_cgroup_name(alloc_id, task));
            if let Err(error) = cgroup.remove(Duration::from_secs(10)) {
                eprintln!("cleaning up cgroup of {task}: {error}");
            }
        }
    }
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let response = client.get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// Polls `path` on the forwarded port until it answers; returns the body and how long that took.
async fn wait_http(port: u16, path: &str) -> (String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(body) = http_get(port, path).await {
            return (body, started.elapsed());
        }
        assert!(started.elapsed() < PATIENCE, "http://127.0.0.1:{port}{path} did not answer within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_exit(driver: &VmDriver, handle: &TaskHandle) -> ExitResult {
    tokio::time::timeout(PATIENCE, driver.wait(handle)).await.expect("vm did not exit in time").expect("wait failed")
}

fn sha256(path: &Path) -> String {
    let output = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vms_boot_concurrently_serve_ports_and_power_off_gracefully() {
    let Some(fx) = fixture("two_vms_boot_concurrently_serve_ports_and_power_off_gracefully").await else { return };
    let driver = fx.driver("node");
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = fx.task("a", "web", fx.kernel_config(""), port_a);
    let config_b = fx.task("b", "web", fx.kernel_config(""), port_b);
    let started = Instant::now();
    let (a, b) = tokio::join!(driver.start(&config_a), driver.start(&config_b));
    let (a, b) = (a.unwrap(), b.unwrap());
    let ((health_a, _), (health_b, _)) = tokio::join!(wait_http(port_a, "/cgi-bin/health"), wait_http(port_b, "/cgi-bin/health"));
    println!("two concurrent TCG boots answered HTTP after {:?}", started.elapsed());
    assert_eq!((health_a.trim(), health_b.trim()), ("ok", "ok"));
    fx.wait_for_console(&config_a, "davit-guest: ready").await;
    assert!(fx.console(&config_a).contains("Linux version"), "the console log shows the boot");

    let stats = driver.stats(&b).await.unwrap();
    assert!(stats.memory_bytes > 0, "{stats:?}");

    let stopping = Instant::now();
    driver.stop(&a, "SIGTERM", Duration::from_secs(30)).await.unwrap();
    let stop_time = stopping.elapsed();
    println!("graceful power-off took {stop_time:?}");
    assert!(stop_time < Duration::from_secs(30), "{stop_time:?}");
    assert_eq!(wait_exit(&driver, &a).await, ExitResult { exit_code: Some(0), signal: None, oom_killed: false });
    assert!(fx.console(&config_a).contains("davit-guest: power-off requested"), "{}", fx.console(&config_a));
    // The other VM is unaffected.
    assert_eq!(http_get(port_b, "/cgi-bin/health").await.as_deref().map(str::trim), Some("ok"));

    driver.stop(&b, "SIGTERM", Duration::from_secs(30)).await.unwrap();
    for handle in [&a, &b] {
        driver.destroy(handle).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_ignoring_power_off_is_ended_after_the_timeout() {
    let Some(fx) = fixture("guest_ignoring_power_off_is_ended_after_the_timeout").await else { return };
    let driver = fx.driver("node");
    let port = free_port();
    let config = fx.task("a", "stubborn", fx.kernel_config("davit.ignore_poweroff=1"), port);
    let handle = driver.start(&config).await.unwrap();
    wait_http(port, "/cgi-bin/health").await;
    let timeout = Duration::from_secs(3);
    let stopping = Instant::now();
    driver.stop(&handle, "SIGTERM", timeout).await.unwrap();
    let stop_time = stopping.elapsed();
    assert!(stop_time >= timeout && stop_time < timeout + Duration::from_secs(15), "{stop_time:?}");
    let result = wait_exit(&driver, &handle).await;
    assert!(result.signal.is_some() || result.exit_code.is_some(), "{result:?}");
    assert!(fx.console(&config).contains("power-off requested, ignored"), "{}", fx.console(&config));
    driver.destroy(&handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_seed_sets_hostname_and_writes_files() {
    let Some(fx) = fixture("cloud_init_seed_sets_hostname_and_writes_files").await else { return };
    let driver = fx.driver("node");
    let port = free_port();
    let mut vm_config = fx.kernel_config("");
    vm_config["cloud_init"] = json!({
        "user_data": "#cloud-config\nhostname: seeded-host\nwrite_files:\n  - path: /srv/hello.txt\n    content: |\n      hello from user-data\n      second line\n  - path: /srv/one-line\n    content: 'just one'\n",
    });
    let config = fx.task("a", "seeded", vm_config, port);
    let handle = driver.start(&config).await.unwrap();
    wait_http(port, "/cgi-bin/health").await;
    assert_eq!(http_get(port, "/cgi-bin/hostname").await.unwrap().trim(), "seeded-host", "{}", fx.console(&config));
    assert_eq!(http_get(port, "/cgi-bin/file?/srv/hello.txt").await.unwrap(), "hello from user-data\nsecond line\n");
    assert_eq!(http_get(port, "/cgi-bin/file?/srv/one-line").await.unwrap(), "just one");
    assert_eq!(http_get(port, "/cgi-bin/file?/run/instance-id").await.unwrap().trim(), config.alloc_id);
    // An agent restart: a new driver instance takes the VM over from the handle alone.
    drop(driver);
    let restarted = fx.driver("node");
    restarted.recover(&handle).await.unwrap();
    assert_eq!(restarted.inspect(&handle).await.unwrap(), TaskRunState::Running);
    restarted.stop(&handle, "SIGTERM", Duration::from_secs(30)).await.unwrap();
    assert!(wait_exit(&restarted, &handle).await.successful());
    assert!(fx.console(&config).contains("davit-guest: power-off requested"));
    restarted.destroy(&handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_overlays_are_private_and_the_base_image_stays_unchanged() {
    let Some(fx) = fixture("disk_overlays_are_private_and_the_base_image_stays_unchanged").await else { return };
    let driver = fx.driver("node");
    let base = fx.guest.join("disk.qcow2");
    let base_sha = sha256(&base);
    let disk_config = |_: ()| {
        let mut config = fx.kernel_config("root=LABEL=davit-root");
        config["disk"] = json!({"image": base, "format": "qcow2"});
        config
    };
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = fx.task("a", "disk", disk_config(()), port_a);
    let config_b = fx.task("b", "disk", disk_config(()), port_b);
    let (a, b) = tokio::join!(driver.start(&config_a), driver.start(&config_b));
    let (a, b) = (a.unwrap(), b.unwrap());
    tokio::join!(wait_http(port_a, "/cgi-bin/health"), wait_http(port_b, "/cgi-bin/health"));
    assert!(fx.console(&config_a).contains("switching to root"), "{}", fx.console(&config_a));
    assert!(http_get(port_a, "/cgi-bin/write?from-a").await.unwrap().contains("wrote"));
    assert!(http_get(port_b, "/cgi-bin/write?from-b").await.unwrap().contains("wrote"));
    assert_eq!(http_get(port_a, "/cgi-bin/file?/srv/from-a").await.unwrap().trim(), "from-a");
    assert_eq!(http_get(port_a, "/cgi-bin/file?/srv/from-b").await.unwrap().trim(), "missing /srv/from-b");
    assert_eq!(http_get(port_b, "/cgi-bin/file?/srv/from-b").await.unwrap().trim(), "from-b");
    assert_eq!(http_get(port_b, "/cgi-bin/file?/srv/from-a").await.unwrap().trim(), "missing /srv/from-a");
    for handle in [&a, &b] {
        driver.stop(handle, "SIGTERM", Duration::from_secs(30)).await.unwrap();
        driver.destroy(handle).await.unwrap();
    }
    assert!(config_a.task_dir.join("disk-0.qcow2").exists());
    assert_eq!(sha256(&base), base_sha, "the base image was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_qemu_is_reported_as_a_failure() {
    let Some(fx) = fixture("killed_qemu_is_reported_as_a_failure").await else { return };
    let driver = fx.driver("node");
    let port = free_port();
    let mut vm_config = fx.kernel_config("");
    vm_config["cloud_init"] = json!({"user_data": "#!/bin/sh\necho \"script ran as $(id -u)\" >/srv/script.txt\n"});
    let config = fx.task("a", "doomed", vm_config, port);
    let handle = driver.start(&config).await.unwrap();
    let (_, boot_time) = wait_http(port, "/cgi-bin/health").await;
    println!("a single TCG guest answered HTTP {boot_time:?} after start returned");
    assert_eq!(driver.guest_status(&handle).await.unwrap(), "running");
    // A `#!` user-data script ran on first boot.
    assert_eq!(http_get(port, "/cgi-bin/file?/srv/script.txt").await.unwrap().trim(), "script ran as 0");
    // SAFETY: kill has no memory-safety preconditions; the pid is our running qemu.
    assert_eq!(unsafe { libc::kill(handle.pid as i32, libc::SIGKILL) }, 0);
    let result = wait_exit(&driver, &handle).await;
    assert_eq!(result, ExitResult { exit_code: None, signal: Some(libc::SIGKILL), oom_killed: false });
    assert!(!result.successful());
    driver.destroy(&handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_keeps_guest_memory() {
    let Some(fx) = fixture("live_migration_keeps_guest_memory").await else { return };
    let (source_driver, destination_driver) = (fx.driver("source"), fx.driver("destination"));
    let (source_port, destination_port, migration_port) = (free_port(), free_port(), free_port());
    let source_config = fx.task("src", "mover", fx.kernel_config(""), source_port);
    let destination_config = fx.task("dst", "mover", fx.kernel_config(""), destination_port);
    let source = source_driver.start(&source_config).await.unwrap();
    wait_http(source_port, "/cgi-bin/health").await;
    for expected in 1..=3 {
        assert_eq!(http_get(source_port, "/cgi-bin/counter").await.unwrap().trim(), expected.to_string());
    }
    let destination = destination_driver.start_incoming(&destination_config, &format!("127.0.0.1:{migration_port}"), None).await.unwrap();
    assert_eq!(destination_driver.guest_status(&destination).await.unwrap(), "inmigrate");
    let report = source_driver.migrate(&source, &format!("tcp:127.0.0.1:{migration_port}"), None).await.unwrap();
    println!("migration: {report:?}");
    assert!(report.transferred_bytes > 0, "{report:?}");
    // The source's exit is the planned one.
    assert_eq!(wait_exit(&source_driver, &source).await, ExitResult { exit_code: Some(0), signal: None, oom_killed: false });
    assert_eq!(destination_driver.guest_status(&destination).await.unwrap(), "running");
    let (count, resumed_after) = wait_http(destination_port, "/cgi-bin/counter").await;
    println!("destination answered {resumed_after:?} after the migration completed");
    assert_eq!(count.trim(), "4", "the counter lives in guest memory and must survive the migration");
    destination_driver.stop(&destination, "SIGTERM", Duration::from_secs(30)).await.unwrap();
    destination_driver.destroy(&destination).await.unwrap();
    source_driver.destroy(&source).await.unwrap();
}

/// Credentials of node `id` signed by `ca`, as the agents hand them to the driver.
fn migration_tls(ca: &davit_tls::Ca, id: &str, peer: &str) -> MigrationTls {
    let role = davit_tls::Role::Node { id: id.to_owned(), extra: Vec::new() };
    let (issued, key_pem) = ca.issue_with_key(&role, Duration::from_secs(3600)).unwrap();
    // A node's file holds its key and its certificate together.
    MigrationTls {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: format!("{key_pem}{}", issued.cert_pem),
        key_pem,
        peer_name: davit_tls::node_name(peer),
    }
}

/// Over TLS, a destination takes the guest only from a source whose certificate the cluster's CA signed, and a
/// source sends it only to the destination node it means; no key is left on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_over_tls_takes_only_the_clusters_nodes() {
    let Some(fx) = fixture("live_migration_over_tls_takes_only_the_clusters_nodes").await else { return };
    let (source_driver, destination_driver) = (fx.driver("source"), fx.driver("destination"));
    let cluster = davit_tls::Ca::generate(Duration::from_secs(3600)).unwrap();
    let other = davit_tls::Ca::generate(Duration::from_secs(3600)).unwrap();
    let source_port = free_port();
    let source_config = fx.task("src", "mover", fx.kernel_config(""), source_port);
    let source = source_driver.start(&source_config).await.unwrap();
    wait_http(source_port, "/cgi-bin/health").await;
    assert_eq!(http_get(source_port, "/cgi-bin/counter").await.unwrap().trim(), "1");
    let destination_tls = migration_tls(&cluster, "dst", "src");

    // A source whose certificate another CA signed (it trusts both CAs, so only the destination can refuse
    // it), and a source that expects another node: both refused, the guest stays.
    let foreign = MigrationTls { ca_pem: format!("{}{}", cluster.cert_pem(), other.cert_pem()), ..migration_tls(&other, "src", "dst") };
    for (case, tls) in [("another cluster's source", foreign), ("a wrong destination name", migration_tls(&cluster, "src", "elsewhere"))] {
        let migration_port = free_port();
        let config = fx.task(&format!("refused-{}", case.len()), "mover", fx.kernel_config(""), free_port());
        let destination =
            destination_driver.start_incoming(&config, &format!("127.0.0.1:{migration_port}"), Some(&destination_tls)).await.unwrap();
        assert!(!config.task_dir.join(".migration-tls").exists(), "{case}: the destination's key was left on disk");
        let error = source_driver.migrate(&source, &format!("tcp:127.0.0.1:{migration_port}"), Some(&tls)).await.unwrap_err();
        println!("{case}: {error}");
        assert!(!source_config.task_dir.join(".migration-tls").exists(), "{case}: the source's key was left on disk");
        assert_eq!(source_driver.guest_status(&source).await.unwrap(), "running", "{case}");
        let _ = destination_driver.stop(&destination, "SIGKILL", Duration::ZERO).await;
        destination_driver.destroy(&destination).await.unwrap();
    }

    let (destination_port, migration_port) = (free_port(), free_port());
    let destination_config = fx.task("dst", "mover", fx.kernel_config(""), destination_port);
    let destination = destination_driver
        .start_incoming(&destination_config, &format!("127.0.0.1:{migration_port}"), Some(&destination_tls))
        .await
        .unwrap();
    let report = source_driver
        .migrate(&source, &format!("tcp:127.0.0.1:{migration_port}"), Some(&migration_tls(&cluster, "src", "dst")))
        .await
        .unwrap();
    println!("migration over TLS: {report:?}");
    destination_driver.wait_incoming(&destination).await.unwrap();
    let (count, _) = wait_http(destination_port, "/cgi-bin/counter").await;
    assert_eq!(count.trim(), "2", "the guest's memory came over TLS");
    destination_driver.stop(&destination, "SIGTERM", Duration::from_secs(30)).await.unwrap();
    destination_driver.destroy(&destination).await.unwrap();
    source_driver.destroy(&source).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprint_reports_the_accelerator_and_bad_configs_are_rejected() {
    let Some(fx) = fixture("fingerprint_reports_the_accelerator_and_bad_configs_are_rejected").await else { return };
    let driver = VmDriver::new(driver_config(&fx.dir.path().join("node"), false, fx.guest));
    let probing = Instant::now();
    let fingerprint = driver.fingerprint().await;
    println!("fingerprint after {:?}: {fingerprint:?}", probing.elapsed());
    assert!(fingerprint.healthy, "{fingerprint:?}");
    let accel = fingerprint.attributes["driver.vm.accel"].clone();
    assert!(accel == "kvm" || accel == "tcg", "{fingerprint:?}");
    assert!(!fingerprint.attributes["driver.vm.accel_reason"].is_empty());
    assert!(fingerprint.attributes["driver.vm.qemu_version"].starts_with(|c: char| c.is_ascii_digit()));
    // The probe ran once: a second fingerprint is quick.
    let again = Instant::now();
    assert_eq!(driver.fingerprint().await, fingerprint);
    assert!(again.elapsed() < Duration::from_secs(2));

    let mut unknown_field = fx.kernel_config("");
    unknown_field["kernal"] = json!("/typo");
    let error = driver.start(&fx.task("bad", "bad", unknown_field, free_port())).await.unwrap_err();
    assert!(matches!(&error, DriverError::InvalidConfig { .. }) && error.to_string().contains("unknown field `kernal`"), "{error}");
    if accel == "tcg" {
        let mut kvm = fx.kernel_config("");
        kvm["accel"] = json!("kvm");
        let error = driver.start(&fx.task("kvm", "kvm", kvm, free_port())).await.unwrap_err();
        assert!(error.to_string().contains("only has TCG"), "{error}");
    }
    let mut missing = fx.kernel_config("");
    missing["kernel"] = json!("/nonexistent/vmlinux");
    let error = driver.start(&fx.task("missing", "missing", missing, free_port())).await.unwrap_err();
    assert!(error.to_string().contains("kernel /nonexistent/vmlinux: No such file or directory"), "{error}");
    // Host files outside the node's VM image directories are not a guest's to read.
    let mut shadow = fx.kernel_config("");
    shadow["disk"] = json!({"image": "/etc/shadow", "format": "raw", "overlay": false});
    let error = driver.start(&fx.task("shadow", "shadow", shadow, free_port())).await.unwrap_err();
    assert!(error.to_string().contains("outside this node's VM image directories"), "{error}");
    // An image in the image directory that names a host file as its backing file is refused too.
    let sneaky = fx.guest.join(format!("backed-by-shadow-{}.qcow2", std::process::id()));
    let created = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow"])
        .arg(&sneaky)
        .status()
        .unwrap();
    assert!(created.success());
    let mut backed = fx.kernel_config("");
    backed["disk"] = json!({"image": sneaky, "format": "qcow2", "overlay": false});
    let error = driver.start(&fx.task("backed", "backed", backed, free_port())).await.unwrap_err();
    std::fs::remove_file(&sneaky).unwrap();
    assert!(error.to_string().contains("refers to another file (/etc/shadow)"), "{error}");
}
