//! Garbage collection: old job versions beyond the newest ten go; a stopped job whose allocations ended goes
//! whole (versions, evaluations, allocations), but only once old enough unless forced; what the scheduler
//! still needs (a completed batch allocation, the current version) stays.

mod common;

use common::{TestServer, node, start, wait_status};
use serde_json::Value;

fn spec(name: &str, job_type: &str, count: u32, marker: u32) -> String {
    format!(
        "name: {name}\ntype: {job_type}\ngroups:\n  - name: g\n    count: {count}\n    tasks:\n      - {{name: t, driver: exec, config: {{command: /bin/true}}, env: {{MARK: \"{marker}\"}}, resources: {{memory: 64}}}}\n"
    )
}

async fn report(server: &TestServer, alloc: &Value, client_status: &str) {
    let update = serde_json::json!([{"id": alloc["id"], "client_status": client_status, "task_states": {}}]);
    let path = format!("/v1/node/{}/allocations/status", alloc["node_id"].as_str().unwrap());
    assert_eq!(server.request("POST", &path, &update.to_string()).await.0, 200);
}

async fn one_alloc(server: &TestServer, name: &str) -> Value {
    let status = wait_status(server, name, |status| status["allocations"].as_array().is_some_and(|allocs| allocs.len() == 1)).await;
    status["allocations"][0].clone()
}

async fn gc(server: &TestServer, force: bool) -> Value {
    let (status, report) = server.request("POST", if force { "/v1/operator/gc?force=true" } else { "/v1/operator/gc" }, "").await;
    assert_eq!(status, 200, "{report:#}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_work_and_old_versions_are_collected_and_what_the_scheduler_needs_stays() {
    let server = start().await;
    assert_eq!(server.request("POST", "/v1/nodes/register", &serde_json::to_string(&node("a", 4096)).unwrap()).await.0, 200);

    // Thirteen versions of a job: the newest ten stay.
    for marker in 0..13 {
        assert_eq!(server.request("POST", "/v1/jobs", &spec("versioned", "service", 0, marker)).await.0, 200);
    }
    // A batch job whose allocation completed: the scheduler needs it (or it would run it again).
    assert_eq!(server.request("POST", "/v1/jobs", &spec("batch", "batch", 1, 0)).await.0, 200);
    let batch_alloc = one_alloc(&server, "batch").await;
    report(&server, &batch_alloc, "complete").await;
    // A service job, stopped, whose allocation ended.
    assert_eq!(server.request("POST", "/v1/jobs", &spec("gone", "service", 1, 0)).await.0, 200);
    let gone_alloc = one_alloc(&server, "gone").await;
    report(&server, &gone_alloc, "running").await;
    assert_eq!(server.request("DELETE", "/v1/job/gone", "").await.0, 200);
    report(&server, &gone_alloc, "complete").await;
    // The evaluation the completion triggers runs first (a job with one pending is not collected).
    wait_status(&server, "gone", |status| status["latest_evaluation"]["status"] != "pending").await;

    // Not old enough yet: the default thresholds (1h, 4h) keep everything but the extra versions.
    let report = gc(&server, false).await;
    assert_eq!(
        (report["jobs"].as_u64(), report["versions"].as_u64(), report["allocs"].as_u64()),
        (Some(0), Some(3), Some(0)),
        "{report:#}"
    );
    let (_, versions) = server.request("GET", "/v1/job/versioned/versions", "").await;
    let kept: Vec<u64> = versions.as_array().unwrap().iter().map(|job| job["version"].as_u64().unwrap()).collect();
    assert_eq!(kept.len(), 10, "{kept:?}");
    assert!(kept.contains(&12) && !kept.contains(&2), "{kept:?}");
    assert_eq!(server.request("GET", "/v1/job/gone", "").await.0, 200, "stopped, but not long enough ago");

    // Forced: the stopped job goes whole; the completed batch allocation and the live job stay.
    let report = gc(&server, true).await;
    assert_eq!(report["jobs"].as_u64(), Some(1), "{report:#}");
    assert_eq!(server.request("GET", "/v1/job/gone", "").await.0, 404);
    let (_, allocs) = server.request("GET", "/v1/allocations", "").await;
    let jobs: Vec<&str> = allocs.as_array().unwrap().iter().map(|alloc| alloc["job_name"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["batch"], "{allocs:#}");
    let (_, evals) = server.request("GET", "/v1/evaluations", "").await;
    assert!(evals.as_array().unwrap().iter().all(|eval| eval["job_name"] != "gone"), "{evals:#}");
    assert!(evals.as_array().unwrap().iter().any(|eval| eval["job_name"] == "versioned"), "a living job keeps its newest evaluation");
    let status = wait_status(&server, "batch", |_| true).await;
    assert_eq!(status["allocations"][0]["client_status"], "complete", "{status:#}");

    // Nothing is left to collect, and nothing was placed again.
    let again = gc(&server, true).await;
    assert_eq!((again["jobs"].as_u64(), again["allocs"].as_u64(), again["versions"].as_u64()), (Some(0), Some(0), Some(0)), "{again:#}");
    assert_eq!(wait_status(&server, "batch", |_| true).await["allocations"].as_array().unwrap().len(), 1);
}
