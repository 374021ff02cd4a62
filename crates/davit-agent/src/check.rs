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

use davit_api::objects::{CheckState, CheckStatus, TaskState, TaskStatus};
use davit_api::spec::{CheckOnFailure, CheckSpec, CheckType};
use davit_drivers::{Driver, TaskHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::alloc_runner::{AllocShared, event};

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
pub fn derive_health(tasks: &BTreeMap<String, TaskState>) -> (Option<bool>, String) {
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
            CheckType::Grpc => ProbeResult { passed: false, output: "grpc checks are not supported".to_string() },
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
        let tasks =
            |list: Vec<(&str, TaskState)>| list.into_iter().map(|(name, state)| (name.to_string(), state)).collect::<BTreeMap<_, _>>();
        assert_eq!(derive_health(&BTreeMap::new()), (None, String::new()));
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
