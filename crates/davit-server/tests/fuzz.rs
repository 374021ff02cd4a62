//! A short run of the API fuzzer (`examples/fuzz_api.rs` runs long ones): mutated real requests never panic a
//! handler, never get a 500, always get a JSON error when refused, and a refused one changes nothing.

mod common;

use std::time::Duration;

use common::start_configured;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_get_json_answers_and_refused_ones_change_nothing() {
    let server = start_configured(tempfile::tempdir().unwrap(), false, |config| {
        config.gc.interval = Duration::from_secs(24 * 3600);
    })
    .await;
    let report = davit_server::fuzz::run(server.handle(), 1500, 11).await;
    assert!(
        report.failures.is_empty(),
        "{} failures, first: {:#?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(report.cases >= 1400, "{report:?}");
    let refused: u64 = report.statuses.iter().filter(|(status, _)| (400..500).contains(*status)).map(|(_, count)| count).sum();
    assert!(refused > 300 && report.statuses.get(&200).copied().unwrap_or(0) > 100, "mutations both accepted and refused: {report:?}");
}
