//! The server's HTTP API in-process (no agent): bad input is rejected precisely and changes nothing;
//! jobs are versioned; work that does not fit waits as a blocked evaluation until capacity appears.

mod common;

use common::{node, start, wait_status};
use davit_api::objects::EvalStatus;

const GOOD_JOB: &str = "name: web\ngroups:\n  - name: g\n    count: 2\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 100, memory: 64}\n";

#[tokio::test]
async fn rejected_requests_change_nothing_and_say_why() {
    let server = start().await;
    let (status, _) = server.request("POST", "/v1/jobs?filename=web.yaml", GOOD_JOB).await;
    assert_eq!(status, 200);
    let node_json = serde_json::to_string(&node("n1", 4096)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &node_json).await.0, 200);
    // Let the scheduler finish, so the store only changes if a request below changes it.
    wait_status(&server, "web", |s| s["summary"]["g"]["placed"].as_u64() == Some(2) && s["latest_evaluation"]["status"] == "complete")
        .await;

    let cases: &[(&str, &str, &str)] = &[
        ("POST", "/v1/jobs?filename=bad.yaml", "name: web\ngroups:\n  - name: g\n    count: -1\n    tasks: []\n"),
        ("POST", "/v1/jobs?filename=bad.yaml", "name: Web_1\ngroups: []\n"),
        ("POST", "/v1/jobs?filename=bad.yaml", "name: web\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        drivr: exec\n"),
        ("POST", "/v1/jobs?filename=bad.yaml", "name: web\n  groups: [\n"),
        (
            "POST",
            "/v1/jobs?filename=bad.json",
            "{\"name\": \"web\", \"groups\": [{\"name\": \"g\", \"tasks\": [{\"name\": \"t\", \"driver\": \"dockr\"}]}]}",
        ),
        ("POST", "/v1/jobs", ""),
        ("POST", "/v1/jobs", "\u{0}\u{1}binary"),
        ("POST", "/v1/job/web/scale", "{\"group\": \"g\", \"count\": -1}"),
        ("POST", "/v1/job/web/scale", "{\"group\": \"nope\", \"count\": 3}"),
        ("POST", "/v1/job/web/scale", "{\"group\": \"g\"}"),
        ("POST", "/v1/job/web/scale", "not json"),
        ("POST", "/v1/job/web/scale", "{\"group\": \"g\", \"count\": 1000000}"),
        ("POST", "/v1/job/missing/scale", "{\"group\": \"g\", \"count\": 3}"),
        ("POST", "/v1/job/web/revert", "{\"version\": 7}"),
        ("POST", "/v1/job/web/revert", "{\"version\": 0}"),
        ("POST", "/v1/job/web/revert", "{}"),
        ("GET", "/v1/job/missing", ""),
        ("GET", "/v1/job/web/version/9", ""),
        ("GET", "/v1/job/web/diff", ""),
        ("DELETE", "/v1/job/missing", ""),
        ("GET", "/v1/job/web/status?index=1&wait=forever", ""),
        ("POST", "/v1/nodes/register", "{\"id\": \"x\"}"),
        (
            "POST",
            "/v1/nodes/register",
            "{\"id\": \"\", \"name\": \"\", \"datacenter\": \"\", \"attributes\": {}, \"resources\": {\"cpu\": 1, \"memory\": 1, \"port_range\": [1, 2]}, \"drivers\": {}, \"status\": \"ready\", \"eligibility\": \"eligible\", \"http_addr\": \"\"}",
        ),
        ("PUT", "/v1/node/unknown/heartbeat", ""),
        ("POST", "/v1/node/unknown/allocations/status", "[]"),
        ("POST", "/v1/node/n1/allocations/status", "[{\"id\": 5}]"),
        ("POST", "/v1/node/unknown/drain", "{\"enable\": true}"),
        ("POST", "/v1/node/n1/drain", "not json"),
        ("POST", "/v1/node/n1/eligibility", "{}"),
        ("GET", "/v1/allocation/zzzz", ""),
        ("GET", "/v1/allocation/", ""),
        ("GET", "/v1/evaluation/zzzz", ""),
        ("GET", "/v1/service/nope", ""),
        ("GET", "/v1/services?index=1&wait=forever", ""),
        ("GET", "/v1/nope", ""),
        ("POST", "/v1/deployment/nope/promote", ""),
        ("POST", "/v1/deployment/nope/health", "{\"healthy\": [\"a\"]}"),
    ];
    let mut transcript = String::new();
    for (method, path, body) in cases {
        let before = server.index().await;
        let (status, answer) = server.request(method, path, body).await;
        let after = server.index().await;
        assert!((400..500).contains(&status), "{method} {path} answered {status}: {answer}");
        assert_eq!(before, after, "{method} {path} changed the store");
        let message = answer.get("message").and_then(|m| m.as_str()).unwrap_or("<no message>");
        transcript.push_str(&format!(
            "{method} {path}\n  {status} {}: {}\n",
            answer["code"].as_str().unwrap_or("?"),
            message.replace('\n', "\n  ")
        ));
    }
    expect_test::expect_file!["api_errors.expected"].assert_eq(&transcript);
    server.shutdown().await;
}

#[tokio::test]
async fn jobs_are_versioned_and_unplaceable_work_waits_for_capacity() {
    let server = start().await;
    let (status, registered) = server.request("POST", "/v1/jobs?filename=web.yaml", GOOD_JOB).await;
    assert_eq!(status, 200, "{registered}");
    assert_eq!(registered["version"], 0);
    // Same spec again: no new version.
    let (_, again) = server.request("POST", "/v1/jobs?filename=web.yaml", GOOD_JOB).await;
    assert_eq!((again["version"].as_u64(), again["changed"].as_bool()), (Some(0), Some(false)));

    // No nodes: the evaluation blocks and says why.
    let blocked = wait_status(&server, "web", |s| s["blocked_evaluation"].is_object()).await;
    let reason = blocked["blocked_evaluation"]["status_description"].as_str().unwrap().to_string();
    assert!(reason.contains("no ready nodes"), "{reason}");

    // A node too small: still blocked, now for memory.
    let small = serde_json::to_string(&node("small", 100)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &small).await.0, 200);
    let blocked = wait_status(&server, "web", |s| {
        s["blocked_evaluation"]["failed_groups"]["g"]["exhausted"]["memory"].as_u64() == Some(1)
            && s["summary"]["g"]["placed"].as_u64() == Some(1)
    })
    .await;
    assert_eq!(blocked["blocked_evaluation"]["failed_groups"]["g"]["missing"], 1, "one of two fits on the small node: {blocked:#}");

    // Capacity arrives: the blocked evaluation runs again and places the rest.
    let big = serde_json::to_string(&node("big", 4096)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &big).await.0, 200);
    let placed =
        wait_status(&server, "web", |s| s["summary"]["g"]["placed"].as_u64() == Some(2) && s["blocked_evaluation"].is_null()).await;
    let evals = server.request("GET", "/v1/job/web/evaluations", "").await.1;
    assert!(evals.as_array().unwrap().iter().all(|e| e["status"] != serde_json::json!(EvalStatus::Blocked)), "{evals:#}");
    assert_eq!(placed["allocations"].as_array().unwrap().len(), 2);

    // Scale, diff, revert.
    let (status, scaled) = server.request("POST", "/v1/job/web/scale", "{\"group\": \"g\", \"count\": 3}").await;
    assert_eq!((status, scaled["version"].as_u64()), (200, Some(1)));
    let diff = server.request("GET", "/v1/job/web/diff", "").await.1;
    assert_eq!(diff["changes"], serde_json::json!([{"path": "groups[g].count", "old": "2", "new": "3"}]));
    let (status, reverted) = server.request("POST", "/v1/job/web/revert", "{\"version\": 0}").await;
    assert_eq!((status, reverted["version"].as_u64()), (200, Some(2)));
    let versions = server.request("GET", "/v1/job/web/versions", "").await.1;
    let counts: Vec<u64> = versions.as_array().unwrap().iter().map(|v| v["spec"]["groups"][0]["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, vec![2, 3, 2]);
    wait_status(&server, "web", |s| s["summary"]["g"]["placed"].as_u64() == Some(2)).await;

    // Stop, then purge.
    assert_eq!(server.request("DELETE", "/v1/job/web", "").await.0, 200);
    let stopped = wait_status(&server, "web", |s| s["summary"]["g"]["placed"].as_u64() == Some(0)).await;
    assert_eq!(stopped["job"]["stopped"], true);
    assert_eq!(server.request("DELETE", "/v1/job/web?purge=true", "").await.0, 200);
    assert_eq!(server.request("GET", "/v1/job/web", "").await.0, 404);
    server.shutdown().await;
}

const SHOP: &str = "name: shop\ngroups:\n  - name: g\n    network: {ports: [{name: http}]}\n    services: [{name: web, port: http, local_port: 9000}]\n    tasks:\n      - name: t\n        config: {command: /bin/true}\n";

#[tokio::test]
async fn the_catalog_serves_healthy_instances_and_service_names_are_cluster_wide() {
    let server = start().await;
    let node_json = serde_json::to_string(&node("n1", 4096)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &node_json).await.0, 200);
    assert_eq!(server.request("POST", "/v1/jobs?filename=shop.yaml", SHOP).await.0, 200);
    let placed = wait_status(&server, "shop", |s| s["summary"]["g"]["placed"].as_u64() == Some(1)).await;
    let alloc_id = placed["allocations"][0]["id"].as_str().unwrap().to_string();

    // Placed but not running: the service is listed, without instances.
    let (status, services) = server.request("GET", "/v1/services", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        services,
        serde_json::json!([{"name": "web", "job_name": "shop", "group": "g", "mode": "http", "algorithm": "round_robin",
        "local_port": 9000, "tags": [], "instances": 0, "healthy": 0}])
    );

    // Another job may not take the name (409, nothing stored).
    // (The store index is no witness here: the placing evaluation may still be completing.)
    let (status, answer) = server.request("POST", "/v1/jobs?filename=other.yaml", &SHOP.replace("name: shop", "name: other")).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("service `web` is already offered by job `shop`"), "{answer}");
    assert_eq!(server.request("GET", "/v1/job/other", "").await.0, 404);
    assert_eq!(server.request("GET", "/v1/services", "").await.1, services);

    // A blocking query wakes when the instance turns healthy, not before.
    let response = server.http.get(format!("{}/v1/catalog", server.base)).send().await.unwrap();
    let index: u64 = response.headers()["x-davit-index"].to_str().unwrap().parse().unwrap();
    let url = format!("{}/v1/catalog?index={index}&wait=10s", server.base);
    let waiting = tokio::spawn({
        let http = server.http.clone();
        async move { http.get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    });
    let running = serde_json::json!([{"id": alloc_id, "client_status": "running", "task_states": {}, "healthy": null,
        "health_description": "check alive of task t pending"}]);
    assert_eq!(server.request("POST", "/v1/node/n1/allocations/status", &running.to_string()).await.0, 200);
    let healthy = serde_json::json!([{"id": alloc_id, "client_status": "running", "task_states": {}, "healthy": true,
        "health_description": "all tasks running"}]);
    assert_eq!(server.request("POST", "/v1/node/n1/allocations/status", &healthy.to_string()).await.0, 200);
    let catalog = waiting.await.unwrap();
    // It saw the instance (unhealthy or healthy: whichever change reached it first).
    assert_eq!(catalog["services"][0]["instances"].as_array().unwrap().len(), 1, "{catalog:#}");
    let (_, web) = server.request("GET", "/v1/service/web", "").await;
    let instance = &web["instances"][0];
    assert_eq!(
        (instance["healthy"].as_bool(), instance["health_description"].as_str()),
        (Some(true), Some("all tasks running")),
        "{web:#}"
    );
    assert_eq!((instance["address"].as_str(), instance["port"].as_u64().is_some()), (Some("127.0.0.1"), true));

    // Stats: the fake node has no agent, which the answer says instead of failing.
    let (status, web) = server.request("GET", "/v1/service/web?stats=true", "").await;
    assert_eq!(status, 200);
    assert!(web["stats_errors"][0].as_str().unwrap().starts_with("node node-n1:"), "{web:#}");
    assert_eq!(web["instances"][0]["stats"]["requests"], 0);

    // A stopped job's service leaves the catalog, and the name is free again.
    assert_eq!(server.request("DELETE", "/v1/job/shop", "").await.0, 200);
    assert_eq!(server.request("GET", "/v1/services", "").await.1, serde_json::json!([]));
    assert_eq!(server.request("POST", "/v1/jobs?filename=other.yaml", &SHOP.replace("name: shop", "name: other")).await.0, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_blocked_evaluation_is_canceled_when_a_later_one_places_everything() {
    let server = start().await;
    let small = serde_json::to_string(&node("small", 100)).unwrap();
    assert_eq!(server.request("POST", "/v1/nodes/register", &small).await.0, 200);
    assert_eq!(server.request("POST", "/v1/jobs?filename=web.yaml", GOOD_JOB).await.0, 200);
    let blocked = wait_status(&server, "web", |s| s["blocked_evaluation"].is_object() && s["summary"]["g"]["placed"] == 1).await;
    let blocked_id = blocked["blocked_evaluation"]["id"].as_str().unwrap().to_string();

    // Scaled down to what fits: the new version places everything, so nothing waits for capacity any more.
    assert_eq!(server.request("POST", "/v1/job/web/scale", "{\"group\": \"g\", \"count\": 1}").await.0, 200);
    wait_status(&server, "web", |s| s["blocked_evaluation"].is_null() && s["job"]["version"] == 1).await;
    let evals = server.request("GET", "/v1/job/web/evaluations", "").await.1;
    let old = evals.as_array().unwrap().iter().find(|e| e["id"] == blocked_id.as_str()).expect("the old blocked evaluation");
    assert_eq!(old["status"], serde_json::json!(EvalStatus::Canceled), "{old:#}");
    assert!(old["status_description"].as_str().unwrap().contains("placed everything"), "{old:#}");
}

#[tokio::test]
async fn groups_with_scaling_keep_their_running_count_across_versions_and_scale_within_bounds() {
    let server = start().await;
    let spec = |marker: &str| {
        format!(
            "name: auto\ngroups:\n  - name: g\n    count: 2\n    scaling: {{min: 1, max: 6}}\n    tasks:\n      - name: t\n        config: {{command: /bin/true}}\n        env: {{MARKER: {marker}}}\n"
        )
    };
    assert_eq!(server.request("POST", "/v1/jobs?filename=auto.yaml", &spec("v0")).await.0, 200);
    let (status, scaled) = server.request("POST", "/v1/job/auto/scale", "{\"group\": \"g\", \"count\": 5}").await;
    assert_eq!((status, scaled["version"].as_u64()), (200, Some(1)), "{scaled}");
    let (status, refused) = server.request("POST", "/v1/job/auto/scale", "{\"group\": \"g\", \"count\": 7}").await;
    assert_eq!(status, 400);
    assert_eq!(refused["message"], "count 7 is outside the bounds of group `g`'s scaling: 1..=6");

    // A new version (count 2 in the file) keeps the 5 it runs, and says so.
    let (status, registered) = server.request("POST", "/v1/jobs?filename=auto.yaml", &spec("v1")).await;
    assert_eq!((status, registered["version"].as_u64()), (200, Some(2)), "{registered}");
    assert_eq!(registered["warnings"], serde_json::json!(["group g keeps its count 5 (it has scaling:; the file says 2)"]));
    let job = server.request("GET", "/v1/job/auto", "").await.1;
    assert_eq!(job["spec"]["groups"][0]["count"], 5);
    // So does a revert to version 0 (written with 2).
    let (_, reverted) = server.request("POST", "/v1/job/auto/revert", "{\"version\": 0}").await;
    let job = server.request("GET", &format!("/v1/job/auto/version/{}", reverted["version"]), "").await.1;
    assert_eq!(
        (job["spec"]["groups"][0]["count"].as_u64(), job["spec"]["groups"][0]["tasks"][0]["env"]["MARKER"].as_str()),
        (Some(5), Some("v0"))
    );
    server.shutdown().await;
}
