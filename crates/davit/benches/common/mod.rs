//! What the benches share: a `davit dev` to measure against, the CLI, and milliseconds.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DAVIT: &str = env!("CARGO_BIN_EXE_davit");

/// A `davit dev` on a free loopback port with its data in `data_dir`, once its node is ready: (process, address).
/// `port_range` must lie below the kernel's ephemeral range (32768 and up): the benches' own connections would
/// otherwise take ports that tasks then fail to bind.
pub fn start_dev(data_dir: &Path, port_range: &str) -> (Child, String) {
    start_dev_with_proxy(data_dir, port_range, &proxy_ip())
}

/// [`start_dev`] with its service proxy on `proxy_ip`.
pub fn start_dev_with_proxy(data_dir: &Path, port_range: &str, proxy_ip: &str) -> (Child, String) {
    start_dev_with(data_dir, port_range, proxy_ip, &[])
}

/// [`start_dev_with_proxy`] with more flags.
pub fn start_dev_with(data_dir: &Path, port_range: &str, proxy_ip: &str, extra: &[&str]) -> (Child, String) {
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let dns = format!("127.0.0.1:{}", free_port());
    let dev = Command::new(DAVIT)
        .args(["dev", "--bind", &format!("127.0.0.1:{port}"), "--data-dir", &data_dir.display().to_string(), "--port-range", port_range])
        .args(["--dns-bind", &dns, "--proxy-bind-ip", proxy_ip])
        .args(extra)
        .arg("--vm-image-dir")
        .arg(guest_dir())
        .env("DAVIT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !davit(&addr, &["node", "ls"]).1.contains("ready") {
        assert!(Instant::now() < deadline, "davit dev did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (dev, addr)
}

/// The test guest's directory (`scripts/build-guest.sh`): `DAVIT_GUEST_DIR` or `<workspace>/target/guest`.
pub fn guest_dir() -> std::path::PathBuf {
    std::env::var_os("DAVIT_GUEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/guest")))
}

/// A temporary directory exec tasks (which run as nobody) can pass through.
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    dir
}

/// A loopback IP for one agent's service proxy (`--proxy-bind-ip`): an agent claims its proxy IP, so two on
/// one host need two. `127.<200 + pid % 50>.<n / 250>.<1 + n % 250>` for this process's n-th agent.
pub fn proxy_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.{}.{}.{}", 200 + std::process::id() % 50, n / 250 % 256, 1 + n % 250)
}

/// A failed assertion must not leave `davit dev` and its tasks running: a panic interrupts it (and gives it 5 s).
pub fn stop_dev_on_panic(dev: &Child) {
    let (dev_pid, default_hook) = (dev.id(), std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let _ = Command::new("kill").args(["-INT", &dev_pid.to_string()]).status();
        std::thread::sleep(Duration::from_secs(5));
    }));
}

/// Ctrl-C for `davit dev`, and wait for it to end.
pub fn stop_dev(mut dev: Child) {
    let _ = Command::new("kill").args(["-INT", &dev.id().to_string()]).status();
    let _ = dev.wait();
}

/// Runs the CLI against `addr`: (success, stdout + stderr).
pub fn davit(addr: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(DAVIT).args(args).env("DAVIT_ADDR", addr).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr))
}

pub use davit_oci::testing::free_port;

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// An OCI bundle in `bundle` (`crun spec`) over `rootfs` (read-only), running `args` without a terminal; in the
/// host's network namespace with `host_network` (as davit runs containers), else in a new one (`crun spec`'s).
pub fn write_crun_bundle(bundle: &Path, rootfs: &Path, args: &[&str], host_network: bool) {
    assert!(Command::new("crun").args(["spec", "--bundle", &bundle.display().to_string()]).status().unwrap().success());
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(args);
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut().filter(|_| host_network) {
        namespaces.retain(|namespace| namespace["type"] != "network");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// crun as davit runs it on this host: a private mount namespace without the cgroup2 mount on hybrid hosts.
pub fn crun(args: &[&str]) -> bool {
    let hybrid =
        Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let crun = format!("crun --cgroup-manager=disabled {}", args.join(" "));
    let script = if hybrid { format!("umount /sys/fs/cgroup/unified && exec {crun}") } else { format!("exec {crun}") };
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
