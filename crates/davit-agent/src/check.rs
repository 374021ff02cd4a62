//! Task health checks: one tokio task per task check runner, started when the task runs and cancelled
//! (dropped) when it stops or restarts.
//!
//! ```text
//!  pending ──successes_before_healthy passes in a row──▶ passing
//!     │                                                     │
//!     └──failures_before_unhealthy failures in a row──▶ failing ◀┘
//! ```
//!
//! Each probe updates the task's [`CheckState`]; a change of status adds a `Check Passing` / `Check
//! Failing` event. A check with `on_failure: restart` that turns failing asks the task runner to restart
//! the task (through the restart policy). The transitions are a pure function ([`record`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use davit_api::objects::{CheckState, CheckStatus, TaskStates, TaskStatus};
use davit_api::spec::{CheckOnFailure, CheckSpec, CheckType};
use davit_drivers::{Driver, TaskHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::alloc_shared::{AllocShared, event};
use crate::grpc_health;

/// How much of an HTTP response is read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Longest `output` kept in a check state.
const MAX_OUTPUT: usize = 200;
/// An unchanged check state is still reported this often (for its `last_checked`).
const REFRESH: Duration = Duration::from_secs(30);

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub passed: bool,
    pub output: String,
}

/// Counters of one check between probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckCounters {
    pub status: CheckStatus,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

impl Default for CheckCounters {
    fn default() -> Self {
        CheckCounters { status: CheckStatus::Pending, consecutive_failures: 0, consecutive_successes: 0 }
    }
}

/// Applies one probe result; returns the new status when it changed.
pub fn record(
    counters: &mut CheckCounters,
    passed: bool,
    failures_before_unhealthy: u32,
    successes_before_healthy: u32,
) -> Option<CheckStatus> {
    let next = if passed {
        counters.consecutive_failures = 0;
        counters.consecutive_successes = counters.consecutive_successes.saturating_add(1);
        (counters.consecutive_successes >= successes_before_healthy.max(1)).then_some(CheckStatus::Passing)
    } else {
        counters.consecutive_successes = 0;
        counters.consecutive_failures = counters.consecutive_failures.saturating_add(1);
        (counters.consecutive_failures >= failures_before_unhealthy.max(1)).then_some(CheckStatus::Failing)
    };
    match next {
        Some(status) if status != counters.status => {
            counters.status = status;
            Some(status)
        }
        _ => None,
    }
}

/// Health of an allocation from its task states: `Some(true)` when every task runs and every check
/// passes, `Some(false)` with the reason when a task failed, is not running or a check is failing, `None`
/// while it is not known yet (nothing started, checks pending) or after the allocation completed.
pub fn derive_health(tasks: &TaskStates) -> (Option<bool>, String) {
    if tasks.is_empty() || tasks.values().all(|task| task.started_at.is_none() && task.restarts == 0 && !task.failed) {
        return (None, String::new());
    }
    if tasks.values().all(|task| task.state == TaskStatus::Dead && !task.failed) {
        return (None, "all tasks have completed".to_string());
    }
    for (name, task) in tasks {
        if task.state == TaskStatus::Dead && task.failed {
            return (Some(false), format!("task {name} failed"));
        }
    }
    for (name, task) in tasks {
        for (check, state) in &task.checks {
            if state.status == CheckStatus::Failing {
                return (Some(false), format!("check {check} of task {name} failing: {}", state.output));
            }
        }
    }
    for (name, task) in tasks {
        if task.state == TaskStatus::Pending {
            return (Some(false), format!("task {name} is not running"));
        }
    }
    for (name, task) in tasks {
        for (check, state) in &task.checks {
            if task.state == TaskStatus::Running && state.status == CheckStatus::Pending {
                return (None, format!("check {check} of task {name} pending"));
            }
        }
    }
    let checks: usize = tasks.values().map(|task| task.checks.len()).sum();
    if checks == 0 {
        (Some(true), "all tasks running".to_string())
    } else {
        (Some(true), "all tasks running, all checks passing".to_string())
    }
}

/// Every check of a task as not checked yet: set when the task starts, so the allocation is not reported
/// healthy before its checks ran.
pub fn pending_states(checks: &[CheckSpec]) -> BTreeMap<String, CheckState> {
    checks
        .iter()
        .map(|check| {
            let pending = CheckState { status: CheckStatus::Pending, output: String::new(), last_checked: 0, consecutive_failures: 0 };
            (check.name.clone(), pending)
        })
        .collect()
}

/// The check runners of one running task. Dropping it cancels them.
pub(crate) struct TaskChecks {
    runners: JoinSet<()>,
}

/// Starts the checks of a task that just started (or was re-attached). A check with `on_failure:
/// restart` sends its reason on `restart` when it turns failing.
pub(crate) fn start(
    shared: Arc<AllocShared>,
    task: &str,
    checks: &[CheckSpec],
    driver: Arc<dyn Driver>,
    handle: TaskHandle,
    restart: mpsc::Sender<String>,
) -> TaskChecks {
    let mut runners = JoinSet::new();
    if checks.is_empty() {
        return TaskChecks { runners };
    }
    let ports: BTreeMap<String, u16> =
        shared.with_state(|state| state.alloc.resources.ports.iter().map(|port| (port.label.clone(), port.value)).collect());
    shared.update_task(task, None, |state| state.checks = pending_states(checks));
    for check in checks {
        let runner = CheckRunner {
            shared: shared.clone(),
            task: task.to_string(),
            check: check.clone(),
            port: ports.get(&check.port).copied(),
            driver: driver.clone(),
            handle: handle.clone(),
            restart: restart.clone(),
        };
        runners.spawn(runner.run());
    }
    TaskChecks { runners }
}

impl Drop for TaskChecks {
    fn drop(&mut self) {
        self.runners.abort_all();
    }
}

struct CheckRunner {
    shared: Arc<AllocShared>,
    task: String,
    check: CheckSpec,
    port: Option<u16>,
    driver: Arc<dyn Driver>,
    handle: TaskHandle,
    restart: mpsc::Sender<String>,
}

impl CheckRunner {
    async fn run(self) {
        let check = &self.check;
        tokio::time::sleep(check.initial_delay.as_std()).await;
        let mut counters = CheckCounters::default();
        let mut last_reported: Option<(CheckState, tokio::time::Instant)> = None;
        let mut ticker = tokio::time::interval(check.interval.as_std().max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = match tokio::time::timeout(check.timeout.as_std(), self.probe()).await {
                Ok(result) => result,
                Err(_) => ProbeResult { passed: false, output: format!("timed out after {}", check.timeout) },
            };
            let transition = record(&mut counters, result.passed, check.failures_before_unhealthy, check.successes_before_healthy);
            let state = CheckState {
                status: counters.status,
                output: truncate(&result.output),
                last_checked: crate::now_ms(),
                consecutive_failures: counters.consecutive_failures,
            };
            let event = transition.map(|status| match status {
                CheckStatus::Failing => event("Check Failing", &format!("check {} failing: {}", check.name, state.output)),
                _ => event("Check Passing", &format!("check {} passing: {}", check.name, state.output)),
            });
            let unchanged = last_reported.as_ref().is_some_and(|(reported, at)| {
                reported.status == state.status
                    && reported.output == state.output
                    && reported.consecutive_failures == state.consecutive_failures
                    && at.elapsed() < REFRESH
            });
            self.shared.update_task(&self.task, event, |task| {
                task.checks.insert(check.name.clone(), state.clone());
            });
            if !unchanged {
                self.shared.commit().await;
                last_reported = Some((state.clone(), tokio::time::Instant::now()));
            }
            if transition == Some(CheckStatus::Failing) && check.on_failure == CheckOnFailure::Restart {
                let reason = format!("check {} failing: {}", check.name, state.output);
                // The task runner cancels this runner when it restarts the task.
                let _ = self.restart.send(reason).await;
            }
        }
    }

    async fn probe(&self) -> ProbeResult {
        match self.check.check_type {
            CheckType::Http => match self.port {
                Some(port) => http_probe(port, &self.check.path, self.check.body.as_deref()).await,
                None => ProbeResult { passed: false, output: format!("port {} is not assigned", self.check.port) },
            },
            CheckType::Tcp => match self.port {
                Some(port) => match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(_) => ProbeResult { passed: true, output: format!("connected to 127.0.0.1:{port}") },
                    Err(error) => ProbeResult { passed: false, output: format!("connecting to 127.0.0.1:{port}: {error}") },
                },
                None => ProbeResult { passed: false, output: format!("port {} is not assigned", self.check.port) },
            },
            CheckType::Exec => {
                let command: Vec<String> = std::iter::once(self.check.command.clone()).chain(self.check.args.iter().cloned()).collect();
                match self.driver.exec(&self.handle, &command, self.check.timeout.as_std()).await {
                    Ok(output) => {
                        let text = String::from_utf8_lossy(if output.stdout.is_empty() { &output.stderr } else { &output.stdout });
                        let first_line = text.lines().next().unwrap_or_default().trim().to_string();
                        let output_text = if first_line.is_empty() {
                            format!("exit code {}", output.exit_code)
                        } else {
                            format!("exit code {}: {first_line}", output.exit_code)
                        };
                        ProbeResult { passed: output.exit_code == 0, output: output_text }
                    }
                    Err(error) => ProbeResult { passed: false, output: format!("exec failed: {error}") },
                }
            }
            CheckType::Grpc => match self.port {
                Some(port) => grpc_probe(port, &self.check.grpc_service).await,
                None => ProbeResult { passed: false, output: format!("port {} is not assigned", self.check.port) },
            },
        }
    }
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:port: a 2xx or 3xx status passes (and the body must contain
/// `body`, if given).
async fn http_probe(port: u16, path: &str, body: Option<&str>) -> ProbeResult {
    let fail = |output: String| ProbeResult { passed: false, output };
    let mut stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => stream,
        Err(error) => return fail(format!("connecting to 127.0.0.1:{port}: {error}")),
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: davit-check\r\nAccept: */*\r\n\r\n");
    if let Err(error) = stream.write_all(request.as_bytes()).await {
        return fail(format!("sending the request: {error}"));
    }
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(read) => {
                response.extend_from_slice(&chunk[..read]);
                if response.len() >= MAX_RESPONSE {
                    break;
                }
            }
            Err(error) if response.is_empty() => return fail(format!("reading the response: {error}")),
            Err(_) => break,
        }
    }
    evaluate_http_response(&response, body)
}

/// Judges a raw HTTP response (pure).
pub fn evaluate_http_response(response: &[u8], body: Option<&str>) -> ProbeResult {
    let text = String::from_utf8_lossy(response);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next().and_then(|code| code.parse::<u16>().ok())) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code,
        _ => return ProbeResult { passed: false, output: format!("not an HTTP response: {}", truncate(status_line)) },
    };
    let output = format!("HTTP {status}");
    if !(200..400).contains(&status) {
        return ProbeResult { passed: false, output };
    }
    if let Some(expected) = body {
        let content = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n")).map(|(_, content)| content).unwrap_or_default();
        if !content.contains(expected) {
            return ProbeResult { passed: false, output: format!("{output}, body does not contain {expected:?}") };
        }
    }
    ProbeResult { passed: true, output }
}

/// `grpc.health.v1.Health/Check` on 127.0.0.1:port over HTTP/2 cleartext (prior knowledge): a
/// `SERVING` answer passes.
pub async fn grpc_probe(port: u16, service: &str) -> ProbeResult {
    let fail = |output: String| ProbeResult { passed: false, output };
    let client = match reqwest::Client::builder().http2_prior_knowledge().pool_max_idle_per_host(0).build() {
        Ok(client) => client,
        Err(error) => return fail(format!("creating the grpc client: {}", davit_api::error_chain(&error))),
    };
    let url = format!("http://127.0.0.1:{port}{}", grpc_health::CHECK_PATH);
    let request = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/grpc")
        .header(reqwest::header::TE, "trailers")
        .header(reqwest::header::USER_AGENT, "davit-check")
        .body(grpc_health::frame(&grpc_health::encode_request(service)));
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return fail(format!("calling {} on 127.0.0.1:{port}: {}", grpc_health::CHECK_PATH, davit_api::error_chain(&error)));
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = axum::http::Response::<reqwest::Body>::from(response).into_body();
    let collected = match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_RESPONSE)).await {
        Ok(collected) => collected,
        Err(error) => return fail(format!("HTTP {status}, reading the response: {error}")),
    };
    let trailers = collected.trailers().cloned();
    evaluate_grpc_response(status, &headers, trailers.as_ref(), &collected.to_bytes())
}

/// Judges a `grpc.health.v1.Health/Check` response (pure): HTTP 200, no `grpc-status` other than 0 in
/// the headers or trailers, and one message whose status is `SERVING`.
pub fn evaluate_grpc_response(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    trailers: Option<&reqwest::header::HeaderMap>,
    body: &[u8],
) -> ProbeResult {
    let fail = |output: String| ProbeResult { passed: false, output };
    if status != 200 {
        return fail(format!("HTTP {status}"));
    }
    for map in trailers.into_iter().chain([headers]) {
        let Some(code) = map.get("grpc-status") else { continue };
        let code = code.to_str().unwrap_or_default().trim();
        if code == "0" {
            continue;
        }
        let name = code.parse::<usize>().ok().and_then(|number| grpc_health::CODES.get(number)).copied().unwrap_or("?");
        let message = map.get("grpc-message").and_then(|message| message.to_str().ok()).unwrap_or_default().trim();
        return fail(if message.is_empty() {
            format!("grpc-status {code} ({name})")
        } else {
            format!("grpc-status {code} ({name}): {message}")
        });
    }
    let message = match grpc_health::unframe(body) {
        Ok(message) => message,
        Err(error) => return fail(error),
    };
    match grpc_health::decode_response(message) {
        Ok(serving) => ProbeResult {
            passed: serving == grpc_health::SERVING,
            output: format!("grpc status {}", grpc_health::serving_status_name(serving)),
        },
        Err(error) => fail(format!("bad HealthCheckResponse: {error}")),
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_OUTPUT {
        return text.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use davit_api::objects::TaskState;

    use super::*;

    #[test]
    fn thresholds_and_transitions() {
        use CheckStatus::*;
        // (name, failures_before_unhealthy, successes_before_healthy, probes, expected status after each)
        type Case = (&'static str, u32, u32, Vec<bool>, Vec<CheckStatus>);
        let cases: Vec<Case> = vec![
            ("one success passes", 3, 1, vec![true], vec![Passing]),
            ("two successes needed", 3, 2, vec![true, true], vec![Pending, Passing]),
            ("a failure resets successes", 3, 2, vec![true, false, true, true], vec![Pending, Pending, Pending, Passing]),
            ("failing after three", 3, 1, vec![true, false, false, false], vec![Passing, Passing, Passing, Failing]),
            ("a success resets failures", 2, 1, vec![false, true, false, false], vec![Pending, Passing, Passing, Failing]),
            ("failing from pending", 2, 1, vec![false, false], vec![Pending, Failing]),
            ("recovers", 1, 1, vec![false, true], vec![Failing, Passing]),
            ("zero thresholds act as one", 0, 0, vec![false, true], vec![Failing, Passing]),
        ];
        for (name, failures, successes, probes, expected) in cases {
            let mut counters = CheckCounters::default();
            let mut statuses = Vec::new();
            for passed in probes {
                let before = counters.status;
                let transition = record(&mut counters, passed, failures, successes);
                assert_eq!(transition.is_some(), counters.status != before, "{name}: transition reported iff the status changed");
                statuses.push(counters.status);
            }
            assert_eq!(statuses, expected, "{name}");
        }
    }

    #[test]
    fn transitions_are_reported_once() {
        let mut counters = CheckCounters::default();
        let transitions: Vec<Option<CheckStatus>> =
            [false, false, false, false, true, true].iter().map(|passed| record(&mut counters, *passed, 2, 1)).collect();
        assert_eq!(transitions, vec![None, Some(CheckStatus::Failing), None, None, Some(CheckStatus::Passing), None]);
        assert_eq!(counters.consecutive_successes, 2);
        assert_eq!(counters.consecutive_failures, 0);
    }

    #[test]
    fn http_responses() {
        let ok = evaluate_http_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\nhello world", Some("world"));
        assert_eq!(ok, ProbeResult { passed: true, output: "HTTP 200".to_string() });
        assert!(evaluate_http_response(b"HTTP/1.1 301 Moved\r\n\r\n", None).passed);
        let missing = evaluate_http_response(b"HTTP/1.0 200 OK\r\n\r\nhello", Some("ready"));
        assert_eq!(missing.output, "HTTP 200, body does not contain \"ready\"");
        assert!(!missing.passed);
        let not_found = evaluate_http_response(b"HTTP/1.0 404 Not Found\r\n\r\n", None);
        assert_eq!(not_found, ProbeResult { passed: false, output: "HTTP 404".to_string() });
        assert!(!evaluate_http_response(b"garbage", None).passed);
        assert!(!evaluate_http_response(b"", None).passed);
    }

    #[test]
    fn protobuf_varints_and_fields() {
        use grpc_health::*;
        for (value, bytes) in [(0u64, vec![0u8]), (1, vec![1]), (127, vec![0x7f]), (128, vec![0x80, 0x01]), (300, vec![0xac, 0x02])] {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(decode_varint(&bytes), Some((value, bytes.len())), "decode {value}");
        }
        let mut max = Vec::new();
        encode_varint(u64::MAX, &mut max);
        assert_eq!(max.len(), 10);
        assert_eq!(decode_varint(&max), Some((u64::MAX, 10)));
        assert_eq!(decode_varint(&[0x80]), None);
        assert_eq!(decode_varint(&[0xff; 11]), None);

        // field 1, wire type 2 (0x0a), length 3, "api"
        assert_eq!(encode_request("api"), b"\x0a\x03api".to_vec());
        assert_eq!(encode_request(""), Vec::<u8>::new());
        assert_eq!(decode_request(b"\x0a\x03api").unwrap(), "api");
        let long = "s".repeat(200);
        assert_eq!(decode_request(&encode_request(&long)).unwrap(), long);

        // field 1, wire type 0 (0x08), varint
        assert_eq!(encode_response(SERVING), vec![0x08, 0x01]);
        assert_eq!(decode_response(&[0x08, 0x02]), Ok(2));
        assert_eq!(decode_response(&[]), Ok(0), "absent status is UNKNOWN");
        // unknown fields of every wire type are skipped: 2: varint, 3: bytes, 4: fixed64, 5: fixed32
        let mut message = vec![0x10, 0x96, 0x01, 0x1a, 0x02, b'h', b'i', 0x21];
        message.extend_from_slice(&[0; 8]);
        message.extend_from_slice(&[0x2d, 0, 0, 0, 0, 0x08, 0x01]);
        assert_eq!(decode_response(&message), Ok(1));
        assert!(decode_response(&[0x08]).is_err(), "truncated varint");
        assert!(decode_response(&[0x1a, 0x05, b'h']).is_err(), "truncated bytes");
        assert!(decode_response(&[0x0b]).is_err(), "group wire type");

        assert_eq!(frame(&[0x08, 0x01]), vec![0, 0, 0, 0, 2, 0x08, 0x01]);
        assert_eq!(unframe(&frame(&[0x08, 0x01])), Ok(&[0x08u8, 0x01][..]));
        assert_eq!(unframe(&frame(&[])), Ok(&[][..]));
        assert_eq!(unframe(b""), Err("no response message".to_string()));
        assert!(unframe(&[0, 0, 0]).is_err());
        assert!(unframe(&[0, 0, 0, 0, 3, 0x08]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn grpc_responses() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let ok = HeaderMap::new();
        let body = |status| grpc_health::frame(&grpc_health::encode_response(status));
        assert_eq!(
            evaluate_grpc_response(200, &ok, None, &body(1)),
            ProbeResult { passed: true, output: "grpc status SERVING".to_string() }
        );
        assert_eq!(
            evaluate_grpc_response(200, &ok, None, &body(2)),
            ProbeResult { passed: false, output: "grpc status NOT_SERVING".to_string() }
        );
        assert_eq!(evaluate_grpc_response(200, &ok, None, &body(0)).output, "grpc status UNKNOWN");
        assert_eq!(evaluate_grpc_response(200, &ok, None, &body(3)).output, "grpc status SERVICE_UNKNOWN");
        assert_eq!(evaluate_grpc_response(200, &ok, None, &body(9)).output, "grpc status 9");
        assert_eq!(evaluate_grpc_response(404, &ok, None, &body(1)), ProbeResult { passed: false, output: "HTTP 404".to_string() });
        assert_eq!(evaluate_grpc_response(200, &ok, None, b"").output, "no response message");
        let mut unimplemented = HeaderMap::new();
        unimplemented.insert("grpc-status", HeaderValue::from_static("12"));
        assert_eq!(
            evaluate_grpc_response(200, &unimplemented, None, b""),
            ProbeResult { passed: false, output: "grpc-status 12 (UNIMPLEMENTED)".to_string() }
        );
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        trailers.insert("grpc-message", HeaderValue::from_static("unknown service"));
        let mut zero = HeaderMap::new();
        zero.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(evaluate_grpc_response(200, &zero, Some(&trailers), &body(1)).output, "grpc-status 5 (NOT_FOUND): unknown service");
        assert!(evaluate_grpc_response(200, &zero, Some(&zero), &body(1)).passed);
    }

    /// A `grpc.health.v1` server over h2c whose answer the test sets; it records the requested services.
    async fn grpc_health_server(status: Arc<std::sync::atomic::AtomicU64>, services: Arc<std::sync::Mutex<Vec<String>>>) -> u16 {
        use axum::http::{HeaderMap, StatusCode};
        let handler = move |headers: HeaderMap, body: axum::body::Bytes| {
            let status = status.clone();
            let services = services.clone();
            async move {
                assert_eq!(headers.get("content-type").unwrap(), "application/grpc");
                let service = grpc_health::decode_request(grpc_health::unframe(&body).unwrap()).unwrap();
                services.lock().unwrap().push(service.clone());
                if service == "missing" {
                    return (StatusCode::OK, [("content-type", "application/grpc"), ("grpc-status", "5")], Vec::new());
                }
                let answer = grpc_health::frame(&grpc_health::encode_response(status.load(std::sync::atomic::Ordering::SeqCst)));
                (StatusCode::OK, [("content-type", "application/grpc"), ("grpc-status", "0")], answer)
            }
        };
        let router = axum::Router::new().route(grpc_health::CHECK_PATH, axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        port
    }

    #[tokio::test]
    async fn grpc_probe_against_a_health_server() {
        use std::sync::atomic::Ordering;
        let status = Arc::new(std::sync::atomic::AtomicU64::new(grpc_health::SERVING));
        let services = Arc::new(std::sync::Mutex::new(Vec::new()));
        let port = grpc_health_server(status.clone(), services.clone()).await;

        let serving = grpc_probe(port, "").await;
        assert_eq!(serving, ProbeResult { passed: true, output: "grpc status SERVING".to_string() });
        assert_eq!(grpc_probe(port, "shop.Cart").await.output, "grpc status SERVING");
        status.store(2, Ordering::SeqCst);
        assert_eq!(grpc_probe(port, "shop.Cart").await, ProbeResult { passed: false, output: "grpc status NOT_SERVING".to_string() });
        assert_eq!(grpc_probe(port, "missing").await, ProbeResult { passed: false, output: "grpc-status 5 (NOT_FOUND)".to_string() });
        status.store(grpc_health::SERVING, Ordering::SeqCst);
        assert!(grpc_probe(port, "").await.passed, "recovers");
        assert_eq!(*services.lock().unwrap(), ["", "shop.Cart", "shop.Cart", "missing", ""]);

        // Nothing listening: a clear connection failure.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let refused = grpc_probe(closed_port, "").await;
        assert!(!refused.passed);
        assert!(
            refused.output.starts_with(&format!("calling /grpc.health.v1.Health/Check on 127.0.0.1:{closed_port}")),
            "{}",
            refused.output
        );
    }

    fn task(state: TaskStatus, checks: &[(&str, CheckStatus, &str)]) -> TaskState {
        TaskState {
            state,
            started_at: Some(1),
            checks: checks
                .iter()
                .map(|(name, status, output)| {
                    (name.to_string(), CheckState { status: *status, output: output.to_string(), last_checked: 1, consecutive_failures: 0 })
                })
                .collect(),
            ..TaskState::default()
        }
    }

    #[test]
    fn allocation_health() {
        use CheckStatus::*;
        let tasks = |list: Vec<(&str, TaskState)>| list.into_iter().map(|(name, state)| (name.to_string(), state)).collect::<TaskStates>();
        assert_eq!(derive_health(&TaskStates::new()), (None, String::new()));
        assert_eq!(derive_health(&tasks(vec![("server", TaskState::default())])), (None, String::new()));
        assert_eq!(
            derive_health(&tasks(vec![("server", task(TaskStatus::Running, &[("web-http", Passing, "HTTP 200")]))])),
            (Some(true), "all tasks running, all checks passing".to_string())
        );
        assert_eq!(
            derive_health(&tasks(vec![("server", task(TaskStatus::Running, &[("web-http", Failing, "HTTP 500")]))])),
            (Some(false), "check web-http of task server failing: HTTP 500".to_string())
        );
        assert_eq!(
            derive_health(&tasks(vec![("server", task(TaskStatus::Running, &[("web-http", Pending, "")]))])),
            (None, "check web-http of task server pending".to_string())
        );
        assert_eq!(
            derive_health(&tasks(vec![("a", task(TaskStatus::Running, &[])), ("b", task(TaskStatus::Pending, &[]))])),
            (Some(false), "task b is not running".to_string())
        );
        let mut failed = task(TaskStatus::Dead, &[]);
        failed.failed = true;
        assert_eq!(derive_health(&tasks(vec![("a", failed)])), (Some(false), "task a failed".to_string()));
        assert_eq!(derive_health(&tasks(vec![("a", task(TaskStatus::Running, &[]))])), (Some(true), "all tasks running".to_string()));
    }
}
