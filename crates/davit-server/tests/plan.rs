//! Operator tools over the scheduler. `POST /v1/jobs/plan`: a dry run shows placements with their nodes'
//! scores, in-place and destructive updates, stops, failures with reasons and the diff against the running
//! version, and stores nothing. `POST /v1/rebalance`: moves running allocations to a node that joined
//! late, a wave at a time, live-migrating the VMs of `migrate: live` groups.

mod common;

use common::{TestServer, node, start, wait_status};
use serde_json::Value;

fn web(count: u32, command: &str, memory: u32) -> String {
    format!(
        "name: web\ngroups:\n  - name: g\n    count: {count}\n    tasks:\n      - name: t\n        driver: exec\n        config: {{command: {command}}}\n        resources: {{cpu: 100, memory: {memory}}}\n"
    )
}

async fn plan(server: &TestServer, spec: &str) -> (u16, Value) {
    server.request("POST", "/v1/jobs/plan?filename=web.yaml", spec).await
}

#[tokio::test]
async fn a_dry_run_describes_the_plan_and_stores_nothing() {
    let server = start().await;
    for id in ["a", "b"] {
        assert_eq!(server.request("POST", "/v1/nodes/register", &serde_json::to_string(&node(id, 1024)).unwrap()).await.0, 200);
    }

    // A new job: two placements, nothing stored.
    let before = server.index().await;
    let (status, answer) = plan(&server, &web(2, "/bin/true", 64)).await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!((answer["current_version"].as_u64(), answer["next_version"].as_u64()), (None, Some(0)), "{answer:#}");
    let group = &answer["groups"]["g"];
    assert_eq!((group["place"].as_u64(), group["unchanged"].as_u64()), (Some(2), Some(0)), "{answer:#}");
    let names: Vec<&str> = group["placements"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web.g[0]", "web.g[1]"]);
    assert!(group["placements"].as_array().unwrap().iter().all(|p| p["node_name"].as_str().unwrap().starts_with("node-")));
    // Each placement says how its node was ranked: both nodes scored, the chosen one first.
    for placement in group["placements"].as_array().unwrap() {
        let scores = &placement["scores"];
        assert_eq!(scores["nodes_scored"].as_u64(), Some(2), "{placement:#}");
        let candidates = scores["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 2, "{placement:#}");
        assert_eq!(candidates[0]["node_id"], placement["node_id"], "{placement:#}");
        assert!(candidates[0]["score"].as_f64().unwrap() >= candidates[1]["score"].as_f64().unwrap(), "{placement:#}");
        assert!(candidates[0]["fit"].is_f64(), "{placement:#}");
    }
    assert_eq!(server.index().await, before, "a dry run wrote to the store");
    assert_eq!(server.request("GET", "/v1/job/web", "").await.0, 404);

    // Run it, then plan changes against the running version.
    assert_eq!(server.request("POST", "/v1/jobs?filename=web.yaml", &web(2, "/bin/true", 64)).await.0, 200);
    wait_status(&server, "web", |s| s["summary"]["g"]["placed"].as_u64() == Some(2) && s["latest_evaluation"]["status"] == "complete")
        .await;
    let before = server.index().await;

    let (_, same) = plan(&server, &web(2, "/bin/true", 64)).await;
    assert_eq!((same["changed"].as_bool(), same["groups"]["g"]["unchanged"].as_u64()), (Some(false), Some(2)), "{same:#}");
    assert!(same["warnings"][0].as_str().unwrap().contains("would change nothing"), "{same:#}");

    let (_, scale_up) = plan(&server, &web(3, "/bin/true", 64)).await;
    let group = &scale_up["groups"]["g"];
    // A new version: the running two move to it in place (same id, same node), one more is placed.
    assert_eq!((group["place"].as_u64(), group["in_place"].as_u64()), (Some(1), Some(2)), "{scale_up:#}");
    assert_eq!(scale_up["diff"], serde_json::json!([{"path": "groups[g].count", "old": "2", "new": "3"}]));
    assert_eq!((scale_up["current_version"].as_u64(), scale_up["next_version"].as_u64()), (Some(0), Some(1)));

    let (_, scale_down) = plan(&server, &web(1, "/bin/true", 64)).await;
    let group = &scale_down["groups"]["g"];
    assert_eq!((group["stop"].as_u64(), group["in_place"].as_u64()), (Some(1), Some(1)), "{scale_down:#}");
    assert_eq!(group["stops"][0]["name"], "web.g[1]", "{scale_down:#}");

    // A new command cannot be applied in place: both allocations are replaced.
    let (_, destructive) = plan(&server, &web(2, "/bin/sleep", 64)).await;
    let group = &destructive["groups"]["g"];
    assert_eq!(
        (group["replace"].as_u64(), group["stop"].as_u64(), group["place"].as_u64()),
        (Some(2), Some(0), Some(0)),
        "{destructive:#}"
    );
    assert!(group["placements"].as_array().unwrap().iter().all(|p| p["replaces"].is_string()), "{destructive:#}");

    // More than the nodes hold: the failure says why, per dimension.
    let (status, too_big) = plan(&server, &web(3, "/bin/true", 1000)).await;
    assert_eq!(status, 200);
    let failure = &too_big["groups"]["g"]["failure"];
    assert_eq!(failure["exhausted"]["memory"].as_u64(), Some(2), "{too_big:#}");
    assert!(too_big["status_description"].as_str().unwrap().contains("not placed"), "{too_big:#}");

    // An allocation larger than the largest node is refused, as `job run` would refuse it.
    let (status, oversized) = plan(&server, &web(1, "/bin/true", 2048)).await;
    assert_eq!(status, 400, "{oversized:#}");
    assert!(oversized["message"].as_str().unwrap().contains("needs 2048 MiB of memory; the largest node has 1024 MiB"), "{oversized:#}");

    // Bad specs get the usual positioned errors.
    let (status, bad) = plan(&server, "name: web\ngroups:\n  - name: g\n    count: -1\n").await;
    assert_eq!(status, 400, "{bad:#}");
    assert!(bad["message"].as_str().unwrap().contains("web.yaml:4:"), "{bad:#}");

    assert_eq!(server.index().await, before, "a dry run wrote to the store");
    assert_eq!(server.request("GET", "/v1/job/web", "").await.1["version"], 0);
    server.shutdown().await;
}

/// Reports the allocations running (and healthy), as their agent would.
async fn report_running(server: &TestServer, allocs: &[Value]) {
    for alloc in allocs {
        let update = serde_json::json!([{"id": alloc["id"], "client_status": "running", "task_states": {}, "healthy": true}]);
        let path = format!("/v1/node/{}/allocations/status", alloc["node_id"].as_str().unwrap());
        assert_eq!(server.request("POST", &path, &update.to_string()).await.0, 200);
    }
}

async fn node_allocs(server: &TestServer, node: &str) -> Vec<Value> {
    let (_, list) = server.request("GET", &format!("/v1/node/{node}/allocations"), "").await;
    list.as_array().unwrap().iter().filter(|alloc| alloc["desired_status"] == "run").cloned().collect()
}

#[tokio::test]
async fn rebalance_moves_a_wave_at_a_time_onto_a_new_node() {
    let server = start().await;
    assert_eq!(server.request("POST", "/v1/nodes/register", &serde_json::to_string(&node("a", 4096)).unwrap()).await.0, 200);
    assert_eq!(server.request("POST", "/v1/jobs?filename=web.yaml", &web(4, "/bin/true", 256)).await.0, 200);
    wait_status(&server, "web", |s| s["summary"]["g"]["placed"].as_u64() == Some(4)).await;
    report_running(&server, &node_allocs(&server, "a").await).await;

    // One node: nothing to even out. Bad requests are refused.
    let (status, answer) = server.request("POST", "/v1/rebalance", "{}").await;
    assert_eq!((status, answer["moves"].as_array().map(Vec::len)), (200, Some(0)), "{answer:#}");
    for bad in [r#"{"max_moves": 0}"#, r#"{"max_moves": 5000}"#, r#"{"max_move": 1}"#, "nope"] {
        let (status, answer) = server.request("POST", "/v1/rebalance", bad).await;
        assert_eq!(status, 400, "{bad}: {answer:#}");
        assert!(!answer["message"].as_str().unwrap().is_empty());
    }

    assert_eq!(server.request("POST", "/v1/nodes/register", &serde_json::to_string(&node("b", 4096)).unwrap()).await.0, 200);
    let before = server.index().await;
    let (_, dry) = server.request("POST", "/v1/rebalance", r#"{"max_moves": 5, "dry_run": true}"#).await;
    assert_eq!(dry["moves"].as_array().unwrap().len(), 1, "one move per group per wave: {dry:#}");
    assert_eq!(server.index().await, before, "a dry run wrote to the store");

    let mut waves = 0;
    loop {
        let (status, answer) = server.request("POST", "/v1/rebalance", r#"{"max_moves": 5}"#).await;
        assert_eq!(status, 200, "{answer:#}");
        let moves = answer["moves"].as_array().unwrap().clone();
        if moves.is_empty() {
            break;
        }
        waves += 1;
        assert!(waves <= 2, "more waves than needed: {answer:#}");
        let change = &moves[0];
        assert_eq!((change["from_node"].as_str(), change["to_node"].as_str()), (Some("node-a"), Some("node-b")), "{answer:#}");
        let (_, original) = server.request("GET", &format!("/v1/allocation/{}", change["alloc_id"].as_str().unwrap()), "").await;
        assert_eq!(
            (original["desired_status"].as_str(), original["desired_description"].as_str()),
            (Some("stop"), Some("rebalanced to node node-b"))
        );
        let (_, replacement) = server.request("GET", &format!("/v1/allocation/{}", change["replacement_id"].as_str().unwrap()), "").await;
        assert_eq!(
            (replacement["node_id"].as_str(), replacement["name"].as_str()),
            (Some("b"), original["name"].as_str()),
            "{replacement:#}"
        );
        report_running(&server, &[replacement]).await;
    }
    assert_eq!((node_allocs(&server, "a").await.len(), node_allocs(&server, "b").await.len()), (2, 2));
    let (_, evals) = server.request("GET", "/v1/job/web/evaluations", "").await;
    let rebalances = evals.as_array().unwrap().iter().filter(|eval| eval["triggered_by"] == "rebalance").count();
    assert_eq!(rebalances, 2, "{evals:#}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_shows_what_a_higher_priority_job_would_preempt() {
    let server = start().await;
    assert_eq!(server.request("POST", "/v1/nodes/register", &serde_json::to_string(&node("a", 1024)).unwrap()).await.0, 200);
    let low = web(1, "/bin/true", 900).replace("name: web", "name: low\npriority: 20");
    assert_eq!(server.request("POST", "/v1/jobs?filename=low.yaml", &low).await.0, 200);
    wait_status(&server, "low", |s| s["summary"]["g"]["placed"].as_u64() == Some(1)).await;

    let high = web(1, "/bin/true", 500).replace("name: web", "name: high\npriority: 80");
    let (status, answer) = plan(&server, &high).await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["groups"]["g"]["place"], 1, "{answer:#}");
    let preempted = answer["preemptions"].as_array().unwrap();
    assert_eq!(preempted.len(), 1, "{answer:#}");
    assert_eq!((preempted[0]["job_name"].as_str(), preempted[0]["name"].as_str()), (Some("low"), Some("low.g[0]")));
    assert!(preempted[0]["description"].as_str().unwrap().contains("of job high (priority 80)"), "{answer:#}");

    // Less than 10 apart: no preemption, and the failure says why.
    let (_, answer) = plan(&server, &high.replace("priority: 80", "priority: 25")).await;
    assert!(answer["preemptions"].is_null(), "{answer:#}");
    assert_eq!(answer["groups"]["g"]["failure"]["exhausted"]["memory"], 1, "{answer:#}");
    server.shutdown().await;
}

/// A VM of a `migrate: live` group is live-migrated by a rebalance, not stopped; once its migration
/// failed, the next rebalance stops and replaces it instead (as a drain does).
#[tokio::test]
async fn rebalance_live_migrates_vms_and_replaces_one_whose_migration_failed() {
    let server = start().await;
    let register = |id: &str| {
        let mut node = node(id, 4096);
        node.drivers.insert("vm".to_string(), davit_api::objects::DriverInfo { detected: true, healthy: true, ..Default::default() });
        serde_json::to_string(&node).unwrap()
    };
    assert_eq!(server.request("POST", "/v1/nodes/register", &register("a")).await.0, 200);
    // A batch job (which rebalancing leaves alone) and the VM share node a.
    let filler = web(1, "/bin/true", 1024).replace("name: web", "name: filler\ntype: batch");
    assert_eq!(server.request("POST", "/v1/jobs?filename=filler.yaml", &filler).await.0, 200);
    let guests = "name: guests\ngroups:\n  - name: g\n    migrate: live\n    tasks:\n      - name: vm\n        driver: vm\n        config: {kernel: /guest/vmlinux}\n        resources: {cpu: 500, memory: 512}\n";
    assert_eq!(server.request("POST", "/v1/jobs?filename=guests.yaml", guests).await.0, 200);
    wait_status(&server, "guests", |s| s["summary"]["g"]["placed"].as_u64() == Some(1)).await;
    report_running(&server, &node_allocs(&server, "a").await).await;
    let vm_id = node_allocs(&server, "a").await.into_iter().find(|alloc| alloc["job_name"] == "guests").unwrap()["id"].clone();
    assert_eq!(server.request("POST", "/v1/nodes/register", &register("b")).await.0, 200);

    let (_, dry) = server.request("POST", "/v1/rebalance", r#"{"dry_run": true}"#).await;
    assert_eq!((&dry["moves"][0]["alloc_id"], &dry["moves"][0]["live_migration"]), (&vm_id, &Value::Bool(true)), "{dry:#}");
    let (status, answer) = server.request("POST", "/v1/rebalance", "{}").await;
    assert_eq!((status, &answer["moves"][0]["live_migration"]), (200, &Value::Bool(true)), "{answer:#}");
    let (_, source) = server.request("GET", &format!("/v1/allocation/{}", vm_id.as_str().unwrap()), "").await;
    assert_eq!((&source["desired_status"], &source["migration"]["role"]), (&Value::from("run"), &Value::from("source")), "{source:#}");
    let destination_id = answer["moves"][0]["replacement_id"].as_str().unwrap().to_string();
    let (_, destination) = server.request("GET", &format!("/v1/allocation/{destination_id}"), "").await;
    assert_eq!((&destination["node_id"], &destination["migration"]["role"]), (&Value::from("b"), &Value::from("destination")));
    let (_, evals) = server.request("GET", "/v1/job/guests/evaluations", "").await;
    let recorded = evals.as_array().unwrap().iter().find(|eval| eval["triggered_by"] == "rebalance").expect("a rebalance evaluation");
    assert!(recorded["status_description"].as_str().unwrap().contains("live-migrating guests.g[0]"), "{recorded:#}");

    // The destination agent cannot start the guest: the migration fails, the source keeps running.
    let failed = serde_json::json!([{"id": destination_id, "client_status": "failed", "task_states": {},
        "migration": {"state": "failed", "reason": "no kernel"}}]);
    assert_eq!(server.request("POST", "/v1/node/b/allocations/status", &failed.to_string()).await.0, 200);
    let (_, source) = server.request("GET", &format!("/v1/allocation/{}", vm_id.as_str().unwrap()), "").await;
    assert_eq!((&source["desired_status"], &source["migration"]["status"]), (&Value::from("run"), &Value::from("failed")), "{source:#}");
    let (_, answer) = server.request("POST", "/v1/rebalance", "{}").await;
    assert_eq!((&answer["moves"][0]["alloc_id"], &answer["moves"][0]["live_migration"]), (&vm_id, &Value::Bool(false)), "{answer:#}");
    let (_, source) = server.request("GET", &format!("/v1/allocation/{}", vm_id.as_str().unwrap()), "").await;
    assert_eq!(source["desired_description"], "rebalanced to node node-b", "{source:#}");
    server.shutdown().await;
}
