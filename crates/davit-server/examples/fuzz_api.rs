//! Fuzzes the API in-process: `cargo run --release -p davit-server --example fuzz_api -- --cases 1000000
//! [--seed N]`. Prints the answers by status, and every case that broke a rule (a panic, a 500, an error
//! that is not a JSON `ApiError`, a refused request that changed the store); exits 1 if there was one.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut cases, mut seed) = (10_000u64, 1u64);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|value| value.parse().ok());
        match (flag.as_str(), value) {
            ("--cases", Some(value)) => cases = value,
            ("--seed", Some(value)) => seed = value,
            _ => {
                eprintln!("usage: fuzz_api [--cases N] [--seed N]");
                return std::process::ExitCode::from(1);
            }
        }
    }
    // Panics are what the fuzzer looks for: it reports them itself.
    std::panic::set_hook(Box::new(|_| {}));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(davit_store::RedbStore::open(&dir.path().join("state.redb")).expect("a store"));
    let config = davit_server::ServerConfig {
        bind: "127.0.0.1:0".parse().expect("an address"),
        store,
        workers: 2,
        // The fuzzed node never heartbeats: it is never marked down (that would write to the store).
        liveness: davit_server::LivenessConfig {
            phi_threshold: f64::INFINITY,
            max_ttl: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
        scheduler: Default::default(),
        acl_enabled: false,
        audit_log: None,
        audit_reads: false,
        keyring: None,
        tls: None,
        spec_limits: Default::default(),
        gc: davit_server::GcConfig { interval: Duration::from_secs(24 * 3600), ..Default::default() },
        admission: Default::default(),
        autoscaler: Default::default(),
        role: Default::default(),
    };
    let server = davit_server::start(config).await.expect("a server");
    let started = Instant::now();
    let report = davit_server::fuzz::run(&server, cases, seed).await;
    println!("fuzz_api: {} cases in {:.1} s (seed {seed}), {} slow", report.cases, started.elapsed().as_secs_f64(), report.slow);
    println!("  answers by status: {:?}", report.statuses);
    println!("  failures: {}", report.failures.len());
    for failure in report.failures.iter().take(20) {
        println!("  - {failure}");
    }
    server.shutdown().await;
    if report.failures.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) }
}
