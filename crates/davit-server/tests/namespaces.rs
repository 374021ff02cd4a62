//! Namespaces through the HTTP API, in-process with fake nodes: jobs of the same name in two namespaces,
//! objects invisible from other namespaces, and a quota that blocks a placement with its reason and lets it
//! through once usage drops.

mod common;

use common::{TestServer, node, start, wait_status_in as wait_status};
use serde_json::{Value, json};

async fn ok(server: &TestServer, method: &str, path: &str, body: &str) -> Value {
    let (status, answer) = server.request(method, path, body).await;
    assert_eq!(status, 200, "{method} {path} {body}: {answer:#}");
    answer
}

fn job(name: &str, memory: u64, count: u32) -> String {
    format!(
        "name: {name}\ngroups:\n  - name: g\n    count: {count}\n    tasks:\n      - name: t\n        driver: exec\n        config: {{command: /bin/sleep, args: ['600']}}\n        resources: {{cpu: 100, memory: {memory}}}\n"
    )
}

fn running(status: &Value) -> usize {
    status["allocations"].as_array().map_or(0, |allocs| allocs.iter().filter(|alloc| alloc["desired_status"] == "run").count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_blocks_placements_with_its_reason_and_lets_them_through_when_usage_drops() {
    let server = start().await;
    ok(&server, "POST", "/v1/nodes/register", &serde_json::to_string(&node("a", 8192)).unwrap()).await;
    let quota = json!({"description": "team a", "quota": {"memory": 256, "max_count": 3}}).to_string();
    ok(&server, "PUT", "/v1/namespace/team-a", &quota).await;

    // The same job name in two namespaces: two jobs.
    ok(&server, "POST", "/v1/jobs?namespace=team-a", &job("web", 200, 1)).await;
    ok(&server, "POST", "/v1/jobs", &job("web", 1000, 2)).await;
    let team = wait_status(&server, "team-a", "web", |s| running(s) == 1).await;
    wait_status(&server, "default", "web", |s| running(s) == 2).await;
    assert_eq!(team["job"]["spec"]["namespace"], "team-a");
    let jobs = ok(&server, "GET", "/v1/jobs?namespace=team-a", "").await;
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs:#}");

    // Objects of team-a are not there for requests in default.
    let team_alloc = team["allocations"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(server.request("GET", &format!("/v1/allocation/{team_alloc}"), "").await.0, 404);
    assert_eq!(ok(&server, "GET", &format!("/v1/allocation/{team_alloc}?namespace=team-a"), "").await["id"], team_alloc.as_str());
    let default_allocs = ok(&server, "GET", "/v1/allocations", "").await;
    assert_eq!(default_allocs.as_array().unwrap().len(), 2, "only default's allocations: {default_allocs:#}");
    assert_eq!(server.request("GET", "/v1/job/team-a%2Fweb", "").await.0, 400, "a job name never carries a namespace");

    // Over the quota: blocked with the reason, nothing placed.
    ok(&server, "POST", "/v1/jobs?namespace=team-a", &job("api", 100, 1)).await;
    let blocked = wait_status(&server, "team-a", "api", |s| s["blocked_evaluation"].is_object()).await;
    let reason = blocked["blocked_evaluation"]["failed_groups"]["g"]["quota"].as_str().unwrap_or_default().to_string();
    assert_eq!(reason, "quota of namespace team-a: memory 200/256 MiB", "{blocked:#}");
    assert!(blocked["blocked_evaluation"]["status_description"].as_str().unwrap().contains("quota of namespace team-a"), "{blocked:#}");
    assert_eq!(running(&blocked), 0);
    let status = ok(&server, "GET", "/v1/namespace/team-a", "").await;
    assert_eq!((status["usage"]["memory"].as_u64(), status["jobs"].as_u64()), (Some(200), Some(2)), "{status:#}");

    // A group asking for more than max_count is refused when registered; nothing is stored.
    let (code, body) = server.request("POST", "/v1/jobs?namespace=team-a", &job("big", 10, 4)).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("allows at most 3 per group"), "{body}");
    assert_eq!(server.request("GET", "/v1/job/big?namespace=team-a", "").await.0, 404);

    // Stopping `web` frees its memory: `api` runs.
    ok(&server, "DELETE", "/v1/job/web?namespace=team-a", "").await;
    wait_status(&server, "team-a", "api", |s| running(s) == 1).await;
    let status = ok(&server, "GET", "/v1/namespace/team-a", "").await;
    assert_eq!(status["usage"]["memory"].as_u64(), Some(100), "{status:#}");

    // Raising the quota lets a blocked job through without anything else changing.
    ok(&server, "POST", "/v1/jobs?namespace=team-a", &job("db", 200, 1)).await;
    wait_status(&server, "team-a", "db", |s| s["blocked_evaluation"].is_object()).await;
    ok(&server, "PUT", "/v1/namespace/team-a", &json!({"quota": {"memory": 1024}}).to_string()).await;
    wait_status(&server, "team-a", "db", |s| running(s) == 1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_must_exist_agree_with_the_spec_and_be_empty_to_go() {
    let server = start().await;
    let (code, body) = server.request("POST", "/v1/jobs?namespace=nope", &job("web", 10, 1)).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("namespace `nope` does not exist"), "{body}");
    ok(&server, "PUT", "/v1/namespace/team-b", "{}").await;
    let spec = format!("namespace: team-b\n{}", job("web", 10, 1));
    let (code, body) = server.request("POST", "/v1/jobs?namespace=team-c", &spec).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("run it with `-n team-b`"), "{body}");
    ok(&server, "POST", "/v1/jobs?namespace=team-b", &spec).await;
    let (code, body) = server.request("POST", "/v1/jobs?namespace=team-b", "name: x\nnamespace: Bad_NS\ngroups: []\n").await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("namespace `Bad_NS` is not valid"), "{body}");

    let (code, body) = server.request("DELETE", "/v1/namespace/team-b", "").await;
    assert_eq!(code, 409);
    assert!(body["message"].as_str().unwrap().contains("still holds jobs: web"), "{body}");
    assert_eq!(server.request("DELETE", "/v1/namespace/default", "").await.0, 400);
    assert_eq!(server.request("PUT", "/v1/namespace/Not_A_Label", "{}").await.0, 400);
    ok(&server, "DELETE", "/v1/job/web?namespace=team-b&purge=true", "").await;
    ok(&server, "DELETE", "/v1/namespace/team-b", "").await;
    let listed = ok(&server, "GET", "/v1/namespaces", "").await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|ns| ns["namespace"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default"]);
    server.shutdown().await;
}

fn service_job(name: &str) -> String {
    format!(
        "name: {name}\ngroups:\n  - name: g\n    network: {{ports: [{{name: http}}]}}\n    services: [{{name: web, port: http}}]\n    tasks:\n      - name: t\n        driver: exec\n        config: {{command: /bin/sleep, args: ['600']}}\n        resources: {{cpu: 10, memory: 10}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_never_meet_in_the_catalog_in_store_keys_or_in_names() {
    let server = start().await;
    ok(&server, "PUT", "/v1/namespace/team-b", "{}").await;
    // Services of the same name in two namespaces are two services.
    ok(&server, "POST", "/v1/jobs", &service_job("shop")).await;
    ok(&server, "POST", "/v1/jobs?namespace=team-b", &service_job("store")).await;
    let catalog = ok(&server, "GET", "/v1/catalog", "").await;
    let owners: Vec<&str> = catalog["services"].as_array().unwrap().iter().map(|service| service["job_name"].as_str().unwrap()).collect();
    assert_eq!(owners.len(), 2, "{catalog:#}");
    assert!(owners.contains(&"shop") && owners.contains(&"team-b/store"), "{owners:?}");
    assert_eq!(ok(&server, "GET", "/v1/services?namespace=team-b", "").await.as_array().unwrap().len(), 1);

    // Purging a default job named like a namespace leaves that namespace's jobs alone.
    ok(&server, "POST", "/v1/jobs", &job("team-b", 10, 1)).await;
    ok(&server, "DELETE", "/v1/job/team-b?purge=true", "").await;
    let versions = ok(&server, "GET", "/v1/job/store/versions?namespace=team-b", "").await;
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions:#}");

    // Names that would reach into another namespace are refused.
    assert_eq!(server.request("GET", "/v1/evaluations?job=team-b/store", "").await.0, 400);
    let (code, body) = server.request("GET", "/v1/jobs?namespace=team-b/x", "").await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("is not a namespace name"), "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_jobs_keep_to_the_quota_too() {
    let server = start().await;
    for id in ["a", "b"] {
        ok(&server, "POST", "/v1/nodes/register", &serde_json::to_string(&node(id, 4096)).unwrap()).await;
    }
    ok(&server, "PUT", "/v1/namespace/team-s", &json!({"quota": {"allocations": 1}}).to_string()).await;
    let spec = "name: agentd\ntype: system\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 10, memory: 10}\n";
    ok(&server, "POST", "/v1/jobs?namespace=team-s", spec).await;
    let status =
        wait_status(&server, "team-s", "agentd", |s| s["latest_evaluation"]["failed_groups"]["g"]["quota"].is_string() && running(s) == 1)
            .await;
    assert_eq!(status["latest_evaluation"]["failed_groups"]["g"]["quota"], "quota of namespace team-s: allocations 1/1");
    server.shutdown().await;
}
