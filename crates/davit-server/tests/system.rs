//! System jobs and preemption through the HTTP API, in-process (no agent): fake nodes registered over the
//! API; the test follows job status with blocking queries.

mod common;

use std::collections::BTreeSet;

use common::{TestServer, node, start, wait_status};
use serde_json::Value;

const SYSTEM_JOB: &str = "name: agentd\ntype: system\npriority: 70\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 100, memory: 64}\n";

async fn ok(server: &TestServer, method: &str, path: &str, body: &str) -> Value {
    let (status, answer) = server.request(method, path, body).await;
    assert_eq!(status, 200, "{method} {path} {body}: {answer:#}");
    answer
}

async fn register(server: &TestServer, node: &davit_api::objects::Node) {
    ok(server, "POST", "/v1/nodes/register", &serde_json::to_string(node).unwrap()).await;
}

fn live_nodes(status: &Value) -> BTreeSet<String> {
    status["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|alloc| alloc["desired_status"] == "run")
        .map(|alloc| alloc["node_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_system_job_runs_on_every_node_including_nodes_that_join_later() {
    let server = start().await;
    register(&server, &node("a", 4096)).await;
    register(&server, &node("b", 4096)).await;
    let registered = ok(&server, "POST", "/v1/jobs?filename=agentd.yaml", SYSTEM_JOB).await;
    assert!(registered["warnings"].as_array().is_none_or(Vec::is_empty), "system jobs are scheduled: {registered:#}");

    let status = wait_status(&server, "agentd", |s| s["summary"]["g"]["placed"] == 2).await;
    assert_eq!(live_nodes(&status), BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert!(status["allocations"].as_array().unwrap().iter().all(|alloc| alloc["name"] == "agentd.g[0]"), "{status:#}");
    assert_eq!(status["summary"]["g"]["desired"], 2, "a system job wants what it placed, not `count`");

    // A node of another datacenter gets nothing; a node that joins the job's datacenter gets one.
    let mut elsewhere = node("x", 4096);
    elsewhere.datacenter = "dc2".to_string();
    register(&server, &elsewhere).await;
    register(&server, &node("c", 4096)).await;
    let status = wait_status(&server, "agentd", |s| s["summary"]["g"]["placed"] == 3).await;
    assert_eq!(live_nodes(&status), BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()]));
    assert_eq!(status["summary"]["g"]["desired"], 3);
    assert_eq!(status["status"], "pending", "placed, not running yet: {status:#}");

    // One node_update evaluation for the node that joined, none for the other datacenter's.
    let evals = ok(&server, "GET", "/v1/job/agentd/evaluations", "").await;
    let node_updates: Vec<&str> = evals
        .as_array()
        .unwrap()
        .iter()
        .filter(|eval| eval["triggered_by"] == "node_update")
        .map(|eval| eval["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(node_updates, ["c"], "{evals:#}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_higher_priority_job_preempts_and_the_victim_waits_for_capacity() {
    let server = start().await;
    register(&server, &node("a", 4096)).await;
    let low = "name: low\npriority: 20\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 1500, memory: 64}\n";
    ok(&server, "POST", "/v1/jobs?filename=low.yaml", low).await;
    wait_status(&server, "low", |s| s["summary"]["g"]["placed"] == 1).await;

    // 1500 + 1000 millicores do not fit in 2000: the priority-80 job evicts the priority-20 one.
    let high = low.replace("name: low\npriority: 20", "name: high\npriority: 80").replace("cpu: 1500", "cpu: 1000");
    ok(&server, "POST", "/v1/jobs?filename=high.yaml", &high).await;
    let high_status =
        wait_status(&server, "high", |s| s["summary"]["g"]["placed"] == 1 && s["latest_evaluation"]["status"] == "complete").await;
    let high_alloc = high_status["allocations"][0]["id"].as_str().unwrap().to_string();
    let description = high_status["latest_evaluation"]["status_description"].as_str().unwrap();
    assert_eq!(description, "placed 1, preempted 1", "{high_status:#}");

    let low_status = wait_status(&server, "low", |s| s["blocked_evaluation"].is_object()).await;
    let allocs = low_status["allocations"].as_array().unwrap();
    assert_eq!(allocs.len(), 1, "no room for a replacement: {low_status:#}");
    let victim = ok(&server, "GET", &format!("/v1/allocation/{}", allocs[0]["id"].as_str().unwrap()), "").await;
    assert_eq!(victim["desired_status"], "stop");
    assert_eq!(victim["desired_description"].as_str().unwrap(), format!("preempted by allocation {high_alloc} of job high (priority 80)"));
    let blocked = &low_status["blocked_evaluation"];
    assert_eq!(blocked["failed_groups"]["g"]["exhausted"]["cpu"], 1, "{blocked:#}");
    let evals = ok(&server, "GET", "/v1/job/low/evaluations", "").await;
    assert!(evals.as_array().unwrap().iter().any(|eval| eval["triggered_by"] == "preemption"), "a preemption evaluation: {evals:#}");
    server.shutdown().await;
}
