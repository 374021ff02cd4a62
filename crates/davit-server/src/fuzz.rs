//! An API fuzzer, run in-process against the server's router (`examples/fuzz_api.rs` for long runs,
//! `tests/fuzz.rs` for a short one in CI). Cases are structured mutations of real requests — job specs, node
//! registrations, policies, variables, scale and drain requests, list queries — in their bodies, paths, query
//! parameters and methods. Every answer must come within 5 s and be a 2xx, or an error whose body is a JSON
//! `ApiError`, never a 5xx (but 502, an agent that is not there) nor a panic; a refused request must change
//! nothing in the store.
//!
//! Not part of the product's API (public for the example and the test only).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;

use crate::ServerHandle;

/// What a run found.
#[derive(Debug, Default)]
pub struct FuzzReport {
    pub cases: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Cases that broke a rule: what was sent, and what went wrong.
    pub failures: Vec<String>,
    /// Cases that got no answer within the per-case bound (each also a failure).
    pub slow: u64,
}

struct Seed {
    method: Method,
    path: &'static str,
    query: &'static str,
    body: &'static str,
}

const SPEC: &str = "name: fuzzed\ngroups:\n  - name: g\n    count: 2\n    network: {ports: [{name: http}]}\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sh, args: [-c, 'echo ${port.http}']}\n        env: {A: b}\n        resources: {cpu: 100, memory: 64}\n        templates: [{data: '{{ var \"app/db\" \"password\" }}', destination: local/db.env}]\n";

fn seeds() -> Vec<Seed> {
    let seed = |method: Method, path: &'static str, query: &'static str, body: &'static str| Seed { method, path, query, body };
    vec![
        seed(Method::POST, "/v1/jobs", "filename=job.yaml", SPEC),
        seed(Method::POST, "/v1/jobs/validate", "", SPEC),
        seed(Method::POST, "/v1/jobs/plan", "", SPEC),
        seed(Method::GET, "/v1/jobs", "per_page=2", ""),
        seed(Method::GET, "/v1/job/fuzzed/status", "", ""),
        seed(Method::GET, "/v1/job/fuzzed/versions", "", ""),
        seed(Method::GET, "/v1/job/fuzzed/diff", "from=0&to=1", ""),
        seed(Method::POST, "/v1/job/fuzzed/scale", "", r#"{"group": "g", "count": 3}"#),
        seed(Method::POST, "/v1/job/fuzzed/revert", "", r#"{"version": 0}"#),
        seed(Method::DELETE, "/v1/job/fuzzed", "purge=false", ""),
        seed(
            Method::POST,
            "/v1/nodes/register",
            "",
            r#"{"id":"n1","name":"n1","datacenter":"dc1","class":"","attributes":{},"resources":{"cpu":2000,"memory":2048,"port_range":[20000,20100],"reserved_ports":[]},"drivers":{"exec":{"detected":true,"healthy":true}},"status":"ready","eligibility":"eligible","http_addr":"http://127.0.0.1:1","status_description":"","last_heartbeat":0}"#,
        ),
        seed(Method::PUT, "/v1/node/n1/heartbeat", "", ""),
        seed(Method::POST, "/v1/node/n1/eligibility", "", r#"{"eligible": false}"#),
        seed(Method::POST, "/v1/node/n1/drain", "", r#"{"enable": true, "deadline": "100h"}"#),
        seed(Method::POST, "/v1/node/n1/allocations/status", "", r#"[{"id": "x", "client_status": "running", "task_states": {}}]"#),
        seed(Method::GET, "/v1/nodes", "", ""),
        seed(Method::GET, "/v1/allocations", "prefix=a", ""),
        seed(Method::GET, "/v1/evaluations", "job=fuzzed", ""),
        seed(Method::GET, "/v1/services", "", ""),
        seed(Method::PUT, "/v1/namespace/team-a", "", r#"{"description": "a", "quota": {"memory": 4096}}"#),
        seed(Method::PUT, "/v1/var/app/db", "", r#"{"items": {"password": "s3cret"}}"#),
        seed(Method::GET, "/v1/vars", "prefix=app", ""),
        seed(Method::PUT, "/v1/acl/policy/readers", "", r#"{"rules": "namespaces:\n  default: {policy: read}\n"}"#),
        seed(Method::POST, "/v1/rebalance", "", r#"{"max_disruption": 1, "dry_run": true}"#),
        seed(Method::POST, "/v1/operator/gc", "", ""),
        seed(Method::GET, "/v1/status", "", ""),
    ]
}

/// Values that break parsers: bounds, types, encodings, sizes.
const INTERESTING: &[&str] = &[
    "4294967295",
    "18446744073709551616",
    "-1",
    "0",
    "1e309",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[",
    "{{{{{{{{",
    "\u{0}",
    "%00",
    "%ff%fe",
    "../../etc/passwd",
    "*",
    "a/b/c",
    "Ü",
    "\u{202e}",
    "\\",
    "'",
    "${port.http}",
    "{{ var \"x\" }}",
    "&",
    "#",
    ":",
    "- - -",
    "!!binary",
    "*alias",
    "&anchor",
];

const QUERY_NAMES: &[&str] =
    &["index", "per_page", "next_token", "namespace", "prefix", "force", "filename", "public_key", "cluster_id", "from", "to", "job"];

impl Seed {
    fn mutated(&self, rng: &mut SmallRng) -> (Method, String, Vec<u8>) {
        let mut method = self.method.clone();
        let mut path = self.path.to_string();
        let mut query = self.query.to_string();
        let mut body = self.body.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..=3) {
            match rng.random_range(0..9) {
                // A byte of the body changed, dropped or repeated.
                0 if !body.is_empty() => {
                    let at = rng.random_range(0..body.len());
                    body[at] = rng.random();
                }
                1 if !body.is_empty() => body.truncate(rng.random_range(0..body.len())),
                2 => {
                    let at = rng.random_range(0..=body.len());
                    let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                    body.splice(at..at, value.bytes());
                }
                // A number of the body replaced by a boundary value.
                3 => {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    if let Some(start) = text.find(|c: char| c.is_ascii_digit()) {
                        let end = text[start..].find(|c: char| !c.is_ascii_digit()).map_or(text.len(), |n| start + n);
                        let value = INTERESTING[rng.random_range(0..6)];
                        body = format!("{}{value}{}", &text[..start], &text[end..]).into_bytes();
                    }
                }
                // A path segment replaced.
                4 => {
                    let mut segments: Vec<String> = path.split('/').map(str::to_string).collect();
                    let at = rng.random_range(1..segments.len());
                    segments[at] = percent(INTERESTING[rng.random_range(0..INTERESTING.len())]);
                    path = segments.join("/");
                }
                // A query parameter added.
                5 | 6 => {
                    let name = QUERY_NAMES[rng.random_range(0..QUERY_NAMES.len())];
                    let value = percent(INTERESTING[rng.random_range(0..INTERESTING.len())]);
                    query = if query.is_empty() { format!("{name}={value}") } else { format!("{query}&{name}={value}") };
                }
                // Another method.
                7 => method = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH][rng.random_range(0..5)].clone(),
                // A large body.
                _ => body.extend(std::iter::repeat_n(b'a', rng.random_range(0..200_000))),
            }
        }
        // Blocking queries wait at most a moment: the fuzzer is about answers, not waits.
        let query = if query.is_empty() { "wait=5ms".to_string() } else { format!("{query}&wait=5ms") };
        (method, format!("{path}?{query}"), body)
    }
}

fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|byte| if byte.is_ascii_alphanumeric() || byte == b'-' { (byte as char).to_string() } else { format!("%{byte:02X}") })
        .collect()
}

/// How long one case may take before it counts as slow.
const CASE_BOUND: Duration = Duration::from_secs(5);

/// Runs `cases` cases (reproducible from `seed`) against `server`, which should be one made for it.
pub async fn run(server: &ServerHandle, cases: u64, seed: u64) -> FuzzReport {
    let router = server.router();
    let seeds = seeds();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut report = FuzzReport::default();
    // The seeds as they are first: state for the mutations to hit.
    for seed in &seeds {
        let request = Request::builder().method(seed.method.clone()).uri(format!("{}?{}", seed.path, seed.query));
        let _ = router.clone().oneshot(request.body(Body::from(seed.body)).expect("a valid seed request")).await;
    }
    quiesce(server).await;
    for case in 0..cases {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let (method, uri, body) = seed.mutated(&mut rng);
        let described =
            format!("case {case}: {method} {uri} ({} bytes: {:?})", body.len(), String::from_utf8_lossy(&body[..body.len().min(160)]));
        let build = || Request::builder().method(method.clone()).uri(&uri).body(Body::from(body.clone()));
        let Ok(request) = build() else { continue };
        let before = server.revision();
        let call = tokio::spawn(router.clone().oneshot(request));
        let abort = call.abort_handle();
        let response = match tokio::time::timeout(CASE_BOUND, call).await {
            Err(_) => {
                // Every blocking query here waits 5 ms at most: a case this slow is a hang.
                abort.abort();
                report.slow += 1;
                report.failures.push(format!("{described}: no answer within {} s", CASE_BOUND.as_secs()));
                continue;
            }
            Ok(Err(error)) if error.is_panic() => {
                report.failures.push(format!("{described}: panicked: {}", crate::supervise::panic_message(error.into_panic())));
                continue;
            }
            Ok(Err(error)) => {
                report.failures.push(format!("{described}: {error}"));
                continue;
            }
            Ok(Ok(response)) => response.expect("the router's error type is Infallible"),
        };
        report.cases += 1;
        let status = response.status();
        *report.statuses.entry(status.as_u16()).or_default() += 1;
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await.unwrap_or_default();
        // 502: a relay to an agent that is not there (the fuzzed node has none) — an answer, not a fault.
        if status.is_server_error() && status.as_u16() != 502 {
            report.failures.push(format!("{described}: {status} {}", String::from_utf8_lossy(&body)));
        }
        if status.is_client_error() || status.is_server_error() {
            if serde_json::from_slice::<davit_api::http::ApiError>(&body).is_err() {
                report.failures.push(format!("{described}: {status} without a JSON error: {:?}", String::from_utf8_lossy(&body)));
            }
            if status.is_client_error() && server.revision() != before && changes_store(server, &router, build).await {
                report.failures.push(format!("{described}: refused ({status}) but the store changed"));
            }
        } else if method != Method::GET {
            // An accepted write may set off work (evaluations): let it settle before the next case.
            quiesce(server).await;
        }
    }
    report
}

/// Whether a request changes the store when nothing else does: the store moved while a refused request ran,
/// which may have been background work of an earlier case; once that settled, the same request again tells.
async fn changes_store(server: &ServerHandle, router: &axum::Router, build: impl Fn() -> Result<Request<Body>, axum::http::Error>) -> bool {
    quiesce(server).await;
    let before = server.revision();
    let Ok(request) = build() else { return false };
    let refused = router.clone().oneshot(request).await.is_ok_and(|response| response.status().is_client_error());
    quiesce(server).await;
    refused && server.revision() != before
}

/// Waits until the store revision stayed put for a moment (bounded).
async fn quiesce(server: &ServerHandle) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut last = server.revision();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = server.revision();
        if now == last {
            return;
        }
        last = now;
    }
}
