//! `GET /metrics` (Prometheus text format) and the event stream `GET /v1/event/stream`, in-process.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestServer, node, start};
use futures_util::StreamExt;
use serde_json::Value;

const JOB: &str = "name: web\ngroups:\n  - name: g\n    count: 2\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 100, memory: 64}\n";

/// Parses the exposition text: every non-comment line is `name{labels} value` with a numeric value.
/// Returns `name{labels}` → value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "), "bad comment line: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value not numeric: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad metric name: {line}");
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
            let labels = &series[name_end + 1..series.len() - 1];
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (label, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name: {line}");
                assert!(quoted.starts_with('"'), "unquoted label value: {line}");
            }
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let response = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse_metrics(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_parse_and_counters_move() {
    let server = start().await;
    let before = scrape(&server).await;
    assert_eq!(before["davit_jobs"], 0.0);
    assert_eq!(before["davit_placements_total"], 0.0);
    assert_eq!(before["davit_evals_total{status=\"complete\"}"], 0.0);

    let node_json = serde_json::to_string(&node("n1", 4096)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &node_json).await.0, 200);
    assert_eq!(server.request("POST", "/v1/jobs?filename=web.yaml", JOB).await.0, 200);

    // Wait (bounded, via blocking queries) until the evaluation completed and both allocations are placed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut index = 0;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "job was not placed in time");
        let (status, body) = server.request("GET", &format!("/v1/job/web/status?index={index}&wait=2s"), "").await;
        assert_eq!(status, 200);
        if body["summary"]["g"]["placed"].as_u64() == Some(2) && body["latest_evaluation"]["status"] == "complete" {
            break;
        }
        index = server.index().await;
    }

    // The counters move just after the writes they count become visible (the applier and the worker count
    // once their commit returns): scrape until they did, bounded.
    let after = loop {
        let after = scrape(&server).await;
        if after["davit_placements_total"] >= 2.0 && after["davit_evals_total{status=\"complete\"}"] >= 1.0 {
            break after;
        }
        assert!(tokio::time::Instant::now() < deadline, "counters did not move: {after:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after["davit_jobs"], 1.0);
    assert_eq!(after["davit_nodes{status=\"ready\"}"], 1.0);
    assert_eq!(after["davit_placements_total"], 2.0);
    assert!(after["davit_evals_total{status=\"complete\"}"] >= 1.0);
    assert!(after["davit_store_txn_total"] > before["davit_store_txn_total"]);
    assert!(after["davit_plan_apply_seconds_count"] >= 1.0);
    assert_eq!(after["davit_plan_apply_seconds_bucket{le=\"+Inf\"}"], after["davit_plan_apply_seconds_count"]);
    let allocs: f64 = after.iter().filter(|(k, _)| k.starts_with("davit_allocations{")).map(|(_, v)| v).sum();
    assert_eq!(allocs, 2.0);
    assert_eq!(after["davit_blocked_evals"], 0.0);
    server.shutdown().await;
}

/// Reads NDJSON lines of a streaming response.
struct Lines {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buffer: Vec<u8>,
}

impl Lines {
    async fn open(server: &TestServer, query: &str) -> Lines {
        let response = server.http.get(format!("{}/v1/event/stream?{query}", server.base)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        Lines { body: Box::pin(response.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec()))), buffer: Vec::new() }
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = self.body.next().await.expect("stream ended").unwrap();
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

#[tokio::test]
async fn event_stream_reports_changes_and_filters_topics() {
    let server = start().await;
    let mut all = Lines::open(&server, "index=0").await;
    let mut jobs_only = Lines::open(&server, "index=0&topic=Job").await;
    assert_eq!(server.request("POST", "/v1/jobs?filename=web.yaml", JOB).await.0, 200);

    let (mut saw_job, mut saw_eval) = (false, false);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(saw_job && saw_eval) {
            let event = all.next().await;
            if event.as_object().is_some_and(|o| o.is_empty()) {
                continue; // heartbeat
            }
            assert!(event["index"].as_u64().unwrap() > 0);
            match event["topic"].as_str().unwrap() {
                "Job" if event["key"] == "web" && event["type"] == "Upserted" => {
                    assert_eq!(event["payload"]["spec"]["name"], "web");
                    saw_job = true;
                }
                "Evaluation" => {
                    assert_eq!(event["payload"]["job_name"], "web");
                    saw_eval = true;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("Job and Evaluation events within the timeout");

    let event = tokio::time::timeout(Duration::from_secs(20), jobs_only.next()).await.expect("a Job event");
    assert_eq!(event["topic"], "Job");
    assert_eq!(event["key"], "web");

    // Stop and purge: the filtered stream sees the deletion, and only Job events.
    assert_eq!(server.request("DELETE", "/v1/job/web?purge=true", "").await.0, 200);
    let event = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = jobs_only.next().await;
            if event.as_object().is_some_and(|o| o.is_empty()) {
                continue;
            }
            assert_eq!(event["topic"], "Job", "{event}");
            if event["type"] == "Deleted" {
                return event;
            }
        }
    })
    .await
    .expect("a Job Deleted event");
    assert_eq!(event["payload"], Value::Null);
    // Shutdown ends open streams (graceful shutdown would otherwise wait for them).
    tokio::time::timeout(Duration::from_secs(20), server.shutdown()).await.expect("shutdown with open event streams");
    drop((all, jobs_only));
}

#[tokio::test]
async fn event_stream_rejects_unknown_topics() {
    let server = start().await;
    let (status, body) = server.request("GET", "/v1/event/stream?topic=Jobs", "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request");
    let message = body["message"].as_str().unwrap();
    for topic in davit_api::http::EVENT_TOPICS {
        assert!(message.contains(topic), "{message}");
    }
    let (status, _) = server.request("GET", "/v1/event/stream?index=abc", "").await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

/// The event history lives in memory: after a restart `index=0` streams from the oldest change kept
/// (as Nomad's does), and an index from before the restart gets a 400 that says what to ask for.
#[tokio::test]
async fn after_a_restart_index_0_streams_what_is_kept_and_older_indexes_say_what_to_ask_for() {
    let server = start().await;
    assert_eq!(server.request("POST", "/v1/jobs?filename=web.yaml", JOB).await.0, 200);
    let early = serde_json::to_string(&node("early", 1024)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &early).await.0, 200);
    // At least two writes: index `before - 1` is a revision before the restart, and not 0.
    let before = server.index().await;
    assert!(before >= 2, "{before}");
    let server = server.restart().await;

    let mut all = Lines::open(&server, "index=0").await;
    let node = serde_json::to_string(&node("late", 1024)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &node).await.0, 200);
    let event = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = all.next().await;
            if event["topic"] == "Node" {
                return event;
            }
        }
    })
    .await
    .expect("the new node's event");
    assert_eq!(event["key"], "late");

    let stale = format!("/v1/event/stream?index={}", before - 1);
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(20), server.request("GET", &stale, "")).await.expect("a 400, not a stream");
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("index {} is no longer kept", before - 1)) && message.contains("or 0 for everything kept"),
        "{message}"
    );
    drop(all);
    tokio::time::timeout(Duration::from_secs(20), server.shutdown()).await.expect("shutdown with an open event stream");
}
