//! Spec limits at the API: a count no server could hold is refused at its line with the limit and the flag,
//! and nothing is stored; a group of 10,000 that cannot be placed costs the server what a group of 10 costs.

mod common;

use common::{start, wait_status};

fn spec(name: &str, count: u64) -> String {
    format!(
        "name: {name}\ngroups:\n  - name: g\n    count: {count}\n    tasks:\n      - {{name: t, driver: exec, config: {{command: /bin/true}}, resources: {{memory: 64}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_above_the_limit_is_refused_at_its_line_and_nothing_is_stored() {
    let server = start().await;
    let (status, body) = server.request("POST", "/v1/jobs?filename=big.yaml", &spec("big", 4_294_967_295)).await;
    assert_eq!(status, 400, "{body:#}");
    let error = &body["spec_errors"][0];
    assert_eq!(
        (error["file"].as_str(), error["line"].as_u64(), error["column"].as_u64()),
        (Some("big.yaml"), Some(4), Some(12)),
        "{body:#}"
    );
    assert!(error["message"].as_str().unwrap().contains("above the limit of 10000 allocations per group"), "{body:#}");
    assert!(error["hint"].as_str().unwrap().contains("--max-count"), "{body:#}");
    assert_eq!(server.request("GET", "/v1/job/big", "").await.0, 404, "nothing stored");

    // Scaling past the limit is refused the same way.
    assert_eq!(server.request("POST", "/v1/jobs", &spec("small", 1)).await.0, 200);
    let (status, body) = server.request("POST", "/v1/job/small/scale", r#"{"group": "g", "count": 20000}"#).await;
    assert_eq!(status, 400, "{body:#}");
    assert!(body["message"].as_str().unwrap().contains("above the limit"), "{body:#}");
}

/// The resident set of this process (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_group_of_ten_thousand_costs_about_what_a_group_of_ten_costs() {
    let server = start().await;
    // No node at all: nothing can be placed, and every evaluation blocks.
    let block = |name: &'static str, count: u64| {
        let server = &server;
        async move {
            assert_eq!(server.request("POST", "/v1/jobs", &spec(name, count)).await.0, 200);
            let status = wait_status(server, name, |status| status["blocked_evaluation"].is_object()).await;
            assert_eq!(status["blocked_evaluation"]["failed_groups"]["g"]["missing"].as_u64(), Some(count), "{status:#}");
        }
    };
    block("warm-up", 10).await;
    let before = rss_kib();
    block("ten", 10).await;
    let after_ten = rss_kib();
    block("ten-thousand", 10_000).await;
    let after_big = rss_kib();
    let (ten, big) = (after_ten.saturating_sub(before), after_big.saturating_sub(after_ten));
    eprintln!("RSS growth: {ten} KiB for a blocked group of 10, {big} KiB for one of 10,000");
    assert!(big < 8 * 1024, "a blocked group of 10,000 grew the server by {big} KiB (10: {ten} KiB)");
}
