//! Rescheduling failed allocations, in-process (no agent): the test plays the agents, reports the
//! allocation `failed`, and watches the server replace it (AllocFailure evaluation, delayed follow-up
//! evaluation held by the broker) until the policy's attempts are used up.

mod common;

use std::time::Duration;

use common::{TestServer, start, wait_until};
use serde_json::{Value, json};

const JOB: &str = "name: shop\ngroups:\n  - name: web\n    restart: {attempts: 0, mode: fail}\n    reschedule: {attempts: 2, interval: 1h, delay: 300ms, delay_function: exponential, max_delay: 1s}\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/false}\n        resources: {cpu: 100, memory: 64}\n";

async fn ok(server: &TestServer, method: &str, path: &str, body: &str) -> Value {
    let (status, answer) = server.request(method, path, body).await;
    assert_eq!(status, 200, "{method} {path} {body}: {answer:#}");
    answer
}

/// The allocations of `nodes`, oldest first, read at one store index (a plan that moves an allocation from
/// one node to another commits both at once; reads of the two nodes around that commit would mix states).
async fn list_allocs(server: &TestServer, nodes: &[&str]) -> Vec<Value> {
    loop {
        let before = server.index().await;
        let mut allocs = Vec::new();
        for node in nodes {
            let list = ok(server, "GET", &format!("/v1/node/{node}/allocations"), "").await;
            allocs.extend(list.as_array().unwrap().iter().cloned());
        }
        if server.index().await == before {
            allocs.sort_by_key(|alloc| alloc["create_time"].as_u64());
            return allocs;
        }
    }
}

/// Waits until there are `count` allocations; returns them, oldest first.
async fn wait_allocs(server: &TestServer, nodes: &[&str], count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let allocs = list_allocs(server, nodes).await;
        if allocs.len() >= count {
            assert_eq!(allocs.len(), count, "{allocs:#?}");
            return allocs;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {count} allocations: {allocs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn failed_allocations_are_rescheduled_with_backoff_until_attempts_run_out() {
    let server = start().await;
    for node in ["a", "b"] {
        ok(&server, "POST", "/v1/nodes/register", &serde_json::to_string(&common::node(node, 4096)).unwrap()).await;
    }
    let nodes = ["a", "b"];
    ok(&server, "POST", "/v1/jobs?filename=shop.yaml", JOB).await;
    let mut previous: Option<Value> = None;
    let mut evals_before = 0;
    for (generation, delay_ms) in [(1usize, None), (2, Some(300u64)), (3, Some(600))] {
        let allocs = wait_allocs(&server, &nodes, generation).await;
        let alloc = allocs.last().unwrap().clone();
        let tracker = alloc["reschedule_tracker"].as_array().cloned().unwrap_or_default();
        assert_eq!(tracker.len(), generation - 1, "{alloc:#}");
        if let (Some(previous), Some(delay_ms)) = (&previous, delay_ms) {
            assert_eq!(alloc["previous_allocation"], previous["id"], "{alloc:#}");
            assert_eq!(tracker.last().unwrap()["delay_ms"], json!(delay_ms));
            assert_ne!(alloc["node_id"], previous["node_id"], "another node is preferred");
            let stopped = allocs.iter().find(|other| other["id"] == previous["id"]).unwrap();
            assert_eq!((stopped["desired_status"].as_str(), stopped["desired_description"].as_str()), (Some("stop"), Some("rescheduled")));
            let failed_at = previous["modify_time"].as_u64().unwrap();
            assert!(alloc["create_time"].as_u64().unwrap() >= failed_at + delay_ms, "waited the delay: {alloc:#}");
        }
        let (node, id) = (alloc["node_id"].as_str().unwrap(), alloc["id"].as_str().unwrap());
        evals_before = ok(&server, "GET", "/v1/job/shop/evaluations", "").await.as_array().unwrap().len();
        let body = json!([{"id": id, "client_status": "failed", "task_states": {}}]).to_string();
        ok(&server, "POST", &format!("/v1/node/{node}/allocations/status"), &body).await;
        previous = Some(list_allocs(&server, &nodes).await.into_iter().find(|other| other["id"] == id).unwrap());
    }
    // Two reschedules used up: the third failure stays. Once the scheduler has settled the evaluation of that
    // failure (and any follow-up), nothing is pending and nothing was placed.
    wait_until("the failure's evaluation settles", || async {
        let evals = ok(&server, "GET", "/v1/job/shop/evaluations", "").await;
        let evals = evals.as_array().unwrap().clone();
        evals.len() > evals_before && evals.iter().all(|eval| matches!(eval["status"].as_str(), Some("complete" | "failed" | "canceled")))
    })
    .await;
    let allocs = list_allocs(&server, &nodes).await;
    assert_eq!(allocs.len(), 3, "{allocs:#?}");
    assert_eq!(allocs.last().unwrap()["client_status"], "failed");
    assert_eq!(allocs.last().unwrap()["desired_status"], "run");
    server.shutdown().await;
}
