//! Node eligibility and drains through the HTTP API, in-process (no agent): the test registers fake
//! nodes and plays the agents' part by reporting allocations `running` and, once stopped, `complete`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestServer, start, wait_until};
use serde_json::{Value, json};

impl TestServer {
    async fn ok(&self, method: &str, path: &str, body: &str) -> Value {
        let (status, answer) = self.request(method, path, body).await;
        assert_eq!(status, 200, "{method} {path} {body}: {answer:#}");
        answer
    }

    async fn register_node(&self, id: &str) {
        self.ok("POST", "/v1/nodes/register", &serde_json::to_string(&node(id)).unwrap()).await;
    }

    async fn node(&self, id: &str) -> Value {
        self.ok("GET", &format!("/v1/node/{id}"), "").await
    }

    /// Every allocation of the job (full objects, from the nodes' lists).
    async fn allocs(&self, nodes: &[&str]) -> Vec<Value> {
        let mut allocs = Vec::new();
        for node in nodes {
            let list = self.ok("GET", &format!("/v1/node/{node}/allocations"), "").await;
            allocs.extend(list.as_array().unwrap().iter().cloned());
        }
        allocs
    }

    /// Plays the agent of `node`: reports `status` for allocation `id`.
    async fn report(&self, node: &str, id: &str, status: &str) {
        let body = json!([{"id": id, "client_status": status, "task_states": {}}]).to_string();
        self.ok("POST", &format!("/v1/node/{node}/allocations/status"), &body).await;
    }

    /// Plays every agent once: stopped allocations are reported complete, pending ones running.
    async fn agents(&self, nodes: &[&str]) {
        for alloc in self.allocs(nodes).await {
            let node = alloc["node_id"].as_str().unwrap();
            let id = alloc["id"].as_str().unwrap();
            match (alloc["desired_status"].as_str().unwrap(), alloc["client_status"].as_str().unwrap()) {
                ("stop", "pending" | "running") => self.report(node, id, "complete").await,
                ("run", "pending") => self.report(node, id, "running").await,
                _ => {}
            }
        }
    }
}

/// Group `web` (count 3) and group `db` (count 1).
const JOB: &str = "name: shop\ngroups:\n  - name: web\n    count: 3\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 100, memory: 64}\n  - name: db\n    count: 1\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/true}\n        resources: {cpu: 100, memory: 64}\n";
const COUNTS: [(&str, usize); 2] = [("web", 3), ("db", 1)];

fn node(id: &str) -> davit_api::objects::Node {
    common::node(id, 4096)
}

/// Returns once the node drainer has looked at the cluster twice since the call: whatever it would do with
/// the state seen at the call, it has done.
async fn drainer_caught_up(server: &TestServer) {
    let passes = server.metric("davit_drainer_passes_total").await;
    wait_until("the drainer looked at the cluster twice", || async { server.metric("davit_drainer_passes_total").await >= passes + 2.0 })
        .await;
}

fn live(alloc: &Value) -> bool {
    alloc["desired_status"] == "run" && matches!(alloc["client_status"].as_str(), Some("pending" | "running"))
}

fn running(alloc: &Value) -> bool {
    alloc["desired_status"] == "run" && alloc["client_status"] == "running"
}

/// Job `shop` with all four allocations running on node `a`; nodes `b` and `c` registered after.
async fn shop_on_a(server: &TestServer) {
    server.register_node("a").await;
    server.ok("POST", "/v1/jobs?filename=shop.yaml", JOB).await;
    wait_until("4 allocations run on a", || async {
        server.agents(&["a"]).await;
        server.allocs(&["a"]).await.iter().filter(|alloc| running(alloc)).count() == 4
    })
    .await;
    server.register_node("b").await;
    server.register_node("c").await;
}

#[tokio::test]
async fn drain_migrates_one_allocation_per_group_at_a_time() {
    let server = start().await;
    shop_on_a(&server).await;
    let nodes = ["a", "b", "c"];

    // By name, like the CLI allows.
    server.ok("POST", "/v1/node/node-a/drain", r#"{"deadline_ms": null, "ignore_system": false, "enable": true}"#).await;
    let a = server.node("a").await;
    assert_eq!((a["eligibility"].as_str(), a["drain"]["deadline_ms"].is_null()), (Some("ineligible"), true), "{a:#}");
    let list = server.ok("GET", "/v1/nodes", "").await;
    let entry = list.as_array().unwrap().iter().find(|node| node["id"] == "a").unwrap().clone();
    assert_eq!((entry["eligibility"].as_str(), entry["draining"].as_bool()), (Some("ineligible"), Some(true)));

    // The agents start replacements slowly (a pending allocation runs on the second look), so that
    // the drainer would have every chance to migrate more than one allocation of a group at once.
    let mut seen_pending: BTreeMap<String, u32> = BTreeMap::new();
    let mut states = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the drain did not complete");
        let allocs = server.allocs(&nodes).await;
        states += 1;
        for (group, count) in COUNTS {
            let of_group: Vec<&Value> = allocs.iter().filter(|alloc| alloc["group"] == group).collect();
            let running_count = of_group.iter().filter(|alloc| running(alloc)).count();
            assert!(running_count + 1 >= count, "group {group}: {running_count} of {count} running: {of_group:#?}");
            for alloc in &of_group {
                assert!(!(alloc["node_id"] == "a" && alloc["client_status"] == "pending"), "placed on the draining node: {alloc:#}");
            }
        }
        let a = server.node("a").await;
        if a["drain"].is_null() {
            break;
        }
        for alloc in &allocs {
            let (node, id) = (alloc["node_id"].as_str().unwrap(), alloc["id"].as_str().unwrap());
            match (alloc["desired_status"].as_str().unwrap(), alloc["client_status"].as_str().unwrap()) {
                ("stop", "pending" | "running") => server.report(node, id, "complete").await,
                ("run", "pending") => {
                    let looks = seen_pending.entry(id.to_string()).or_default();
                    *looks += 1;
                    if *looks >= 2 {
                        server.report(node, id, "running").await;
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(states > 4, "observed only {states} states");

    // Drained: ineligible, nothing left on it; every group runs its count elsewhere.
    let a = server.node("a").await;
    assert_eq!(a["eligibility"], "ineligible");
    let on_a = server.allocs(&["a"]).await;
    assert_eq!(on_a.len(), 4);
    assert!(on_a.iter().all(|alloc| alloc["desired_status"] == "stop" && alloc["desired_description"] == "node drain"), "{on_a:#?}");
    wait_until("every group runs its count on b and c", || async {
        server.agents(&nodes).await;
        let allocs = server.allocs(&["b", "c"]).await;
        COUNTS.iter().all(|(group, count)| allocs.iter().filter(|alloc| alloc["group"] == *group && running(alloc)).count() == *count)
    })
    .await;
    let evals = server.ok("GET", "/v1/job/shop/evaluations", "").await;
    assert!(evals.as_array().unwrap().iter().any(|eval| eval["triggered_by"] == "node_drain"), "{evals:#}");

    // An agent restart (re-registration) keeps the operator's decision.
    server.register_node("a").await;
    let a = server.node("a").await;
    assert_eq!((a["eligibility"].as_str(), a["drain"].is_null()), (Some("ineligible"), true));
    server.shutdown().await;
}

#[tokio::test]
async fn drain_deadline_stops_the_rest_at_once() {
    let server = start().await;
    shop_on_a(&server).await;
    server.ok("POST", "/v1/node/a/drain", r#"{"deadline_ms": 4000, "ignore_system": false, "enable": true}"#).await;
    // Agents that never start replacements: after the first migration per group nothing moves...
    wait_until("one allocation per group is migrating", || async {
        server.allocs(&["a"]).await.iter().filter(|alloc| live(alloc)).count() == 2
    })
    .await;
    drainer_caught_up(&server).await;
    let allocs = server.allocs(&["a"]).await;
    assert_eq!(allocs.iter().filter(|alloc| live(alloc)).count(), 2, "{allocs:#?}");
    assert!(!server.node("a").await["drain"].is_null());
    // ...until the deadline: then everything left is stopped and the drain completes.
    wait_until("the drain completes", || async { server.node("a").await["drain"].is_null() }).await;
    let allocs = server.allocs(&["a"]).await;
    let reasons: Vec<&str> = allocs.iter().map(|alloc| alloc["desired_description"].as_str().unwrap()).collect();
    assert_eq!(reasons.iter().filter(|reason| **reason == "node drain: deadline reached").count(), 2, "{reasons:?}");
    assert!(allocs.iter().all(|alloc| !live(alloc)), "{allocs:#?}");
    assert_eq!(server.node("a").await["eligibility"], "ineligible");
    server.shutdown().await;
}

#[tokio::test]
async fn a_running_drain_can_be_given_a_deadline_of_now() {
    let server = start().await;
    shop_on_a(&server).await;
    server.ok("POST", "/v1/node/a/drain", r#"{"deadline_ms": 600000, "enable": true}"#).await;
    let started_at = server.node("a").await["drain"]["started_at"].as_u64().unwrap();
    server.ok("POST", "/v1/node/a/drain", r#"{"deadline_ms": 0, "enable": true}"#).await;
    // The running drain keeps its start; its deadline is now.
    let drain = server.node("a").await["drain"].clone();
    if !drain.is_null() {
        assert_eq!(drain["started_at"].as_u64(), Some(started_at), "{drain:#}");
        assert!(drain["deadline_ms"].as_u64().unwrap() < 600_000, "{drain:#}");
    }
    wait_until("the drain completes", || async { server.node("a").await["drain"].is_null() }).await;
    assert!(server.allocs(&["a"]).await.iter().all(|alloc| !live(alloc)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_canceled_drain_leaves_the_node_ineligible() {
    let server = start().await;
    shop_on_a(&server).await;
    server.ok("POST", "/v1/node/a/drain", r#"{"enable": true}"#).await;
    server.ok("POST", "/v1/node/a/drain", r#"{"enable": false}"#).await;
    let a = server.node("a").await;
    assert_eq!((a["eligibility"].as_str(), a["drain"].is_null()), (Some("ineligible"), true));
    // Nothing else migrates: at most the first allocation of each group went before the cancel.
    drainer_caught_up(&server).await;
    let left = server.allocs(&["a"]).await.iter().filter(|alloc| live(alloc)).count();
    assert!(left >= 2, "{left} allocations left on a");
    server.ok("POST", "/v1/node/a/eligibility", r#"{"eligible": true}"#).await;
    assert_eq!(server.node("a").await["eligibility"], "eligible");
    server.shutdown().await;
}

#[tokio::test]
async fn ineligible_nodes_keep_their_allocations_and_get_no_new_ones() {
    let server = start().await;
    shop_on_a(&server).await;
    for id in ["b", "c"] {
        server.ok("POST", &format!("/v1/node/{id}/eligibility"), r#"{"eligible": false}"#).await;
    }
    server.ok("POST", "/v1/node/a/eligibility", r#"{"eligible": false}"#).await;
    // Scale up: no eligible node, the new allocation waits; the running ones stay.
    server.ok("POST", "/v1/job/shop/scale", r#"{"group": "web", "count": 4}"#).await;
    wait_until("the new allocation is blocked", || async {
        let status = server.ok("GET", "/v1/job/shop/status", "").await;
        status["blocked_evaluation"].is_object()
    })
    .await;
    let allocs = server.allocs(&["a", "b", "c"]).await;
    assert_eq!(allocs.iter().filter(|alloc| running(alloc)).count(), 4, "{allocs:#?}");
    assert_eq!(allocs.len(), 4);

    // Eligible again (by id prefix is fine too, `c` is unique): the blocked allocation is placed there.
    server.ok("POST", "/v1/node/c/eligibility", r#"{"eligible": true}"#).await;
    wait_until("the fifth allocation is placed on c", || async { server.allocs(&["c"]).await.iter().any(live) }).await;
    assert!(server.allocs(&["b"]).await.is_empty());

    // A draining node cannot be made eligible before the drain is canceled.
    server.ok("POST", "/v1/node/b/drain", r#"{"enable": true}"#).await;
    let (status, answer) = server.request("POST", "/v1/node/b/eligibility", r#"{"eligible": true}"#).await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("conflict")), "{answer:#}");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_drain_and_eligibility_requests_change_nothing() {
    let server = start().await;
    server.register_node("a").await;
    let cases = [
        ("/v1/node/nope/drain", r#"{"enable": true}"#, 404),
        ("/v1/node/nope/eligibility", r#"{"eligible": false}"#, 404),
        ("/v1/node/a/drain", "not json", 400),
        ("/v1/node/a/drain", r#"{"deadline_ms": -1, "enable": true}"#, 400),
        ("/v1/node/a/drain", r#"{"deadline_ms": 1000}"#, 400),
        ("/v1/node/a/eligibility", r#"{"eligible": "yes"}"#, 400),
        ("/v1/node/a/eligibility", "", 400),
    ];
    for (path, body, expected) in cases {
        let before = server.index().await;
        let (status, answer) = server.request("POST", path, body).await;
        assert_eq!(status, expected, "{path} {body}: {answer:#}");
        assert!(answer["message"].as_str().is_some_and(|message| !message.is_empty()), "{answer:#}");
        assert_eq!(server.index().await, before, "{path} {body} changed the store");
    }
    let a = server.node("a").await;
    assert_eq!((a["eligibility"].as_str(), a["drain"].is_null()), (Some("eligible"), true));
    // Asking for what already is writes nothing.
    let before = server.index().await;
    server.ok("POST", "/v1/node/a/eligibility", r#"{"eligible": true}"#).await;
    server.ok("POST", "/v1/node/a/drain", r#"{"enable": false}"#).await;
    assert_eq!(server.index().await, before);
    server.shutdown().await;
}
