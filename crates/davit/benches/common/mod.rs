//! What the benches share: a `davit dev` to measure against, the CLI, and milliseconds.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DAVIT: &str = env!("CARGO_BIN_EXE_davit");

/// A `davit dev` on a free loopback port with its data in `data_dir`, once its node is ready: (process, address).
pub fn start_dev(data_dir: &Path, port_range: &str) -> (Child, String) {
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let dns = format!("127.0.0.1:{}", free_port());
    let dev = Command::new(DAVIT)
        .args(["dev", "--bind", &format!("127.0.0.1:{port}"), "--data-dir", &data_dir.display().to_string(), "--port-range", port_range])
        .args(["--dns-bind", &dns])
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
