//! The scale tools never rot: `davit bench scheduler` and `davit bench e2e` (server + `davit sim`) run on a
//! small cluster and must place, and see running, every allocation they were asked for.

mod util;

use std::process::Command;
use std::time::Instant;

use util::DAVIT;

/// Runs `davit bench …`; returns stdout, failing with the whole output otherwise.
fn bench(args: &[&str]) -> String {
    let started = Instant::now();
    let output = Command::new(DAVIT).arg("bench").args(args).env("DAVIT_LOG", "warn").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "davit bench {args:?} failed ({:?}):\n{stdout}\n{stderr}", output.status);
    eprintln!("davit bench {args:?} took {:.1} s:\n{stdout}", started.elapsed().as_secs_f64());
    stdout
}

/// The `key=value` fields of the `RESULT` line.
fn result_field(stdout: &str, key: &str) -> f64 {
    let line = stdout.lines().find(|line| line.starts_with("RESULT ")).unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .find(|(name, _)| *name == key)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {line}"))
}

/// A figure printed as `<label> <number>` somewhere in the output.
fn figure_after(stdout: &str, label: &str) -> f64 {
    let start = stdout.find(label).unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}")) + label.len();
    let number: String = stdout[start..].trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    number.parse().unwrap_or_else(|_| panic!("no number after {label:?} in:\n{stdout}"))
}

#[test]
fn bench_scheduler_places_every_allocation() {
    // Sampled: scoring all 500 nodes for each of 20,000 placements takes minutes in a debug build.
    let stdout = bench(&["scheduler", "--nodes", "500", "--allocs", "20000", "--job-size", "1000"]);
    assert_eq!(result_field(&stdout, "placed"), 20_000.0, "{stdout}");
    assert!(figure_after(&stdout, "placements/s:") > 0.0, "{stdout}");
    assert!(figure_after(&stdout, "peak RSS (VmHWM):") > 1.0, "{stdout}");
    assert!(stdout.contains("latency per evaluation: p50"), "{stdout}");
    assert!(stdout.starts_with("machine: "), "{stdout}");
}

#[test]
fn bench_e2e_runs_every_allocation_on_simulated_nodes() {
    // Jobs of 10,000: one plan puts 10,000 pending allocations in front of the sim at once, whose status
    // reports (about 4 MB of JSON) must go out in requests the server accepts.
    let stdout = bench(&["e2e", "--nodes", "500", "--allocs", "20000", "--job-size", "10000", "--timeout", "80s"]);
    assert_eq!(result_field(&stdout, "running"), 20_000.0, "{stdout}");
    assert!(result_field(&stdout, "wall_s") > 0.0, "{stdout}");
    assert!(stdout.contains("placements/s end to end"), "{stdout}");
    assert!(figure_after(&stdout, "peak RSS (VmHWM): server process") > 1.0, "{stdout}");
    assert!(stdout.contains("API probe"), "{stdout}");
    assert!(stdout.contains(" errors=0"), "the sim's requests failed: {stdout}");
}

#[test]
fn bench_e2e_runs_with_acls_and_tls_on() {
    // Every request of the sim and the benchmark carries a token, which the server checks, over HTTPS.
    let stdout = bench(&["e2e", "--acl", "--tls", "--nodes", "200", "--allocs", "5000", "--job-size", "1000", "--timeout", "80s"]);
    assert!(stdout.contains("ACLs on") && stdout.contains("TLS on"), "{stdout}");
    assert_eq!(result_field(&stdout, "running"), 5_000.0, "{stdout}");
    assert!(stdout.contains(" errors=0"), "the sim's requests failed: {stdout}");
}
