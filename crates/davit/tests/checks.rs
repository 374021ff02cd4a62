//! End to end: task health checks run by the agent (http, tcp; `on_failure: restart` and `ignore`).

mod util;

use std::time::Duration;

use davit_api::http::JobStatusResponse;
use davit_api::objects::{Allocation, CheckStatus, DesiredStatus};
use util::{Dev, require_root, wait_alloc, wait_job};

/// A busybox httpd serving `local/index.html`; `/fail` does not exist (404).
fn httpd_job(name: &str, checks: &str, restart: &str) -> String {
    format!(
        r#"
name: {name}
groups:
  - name: web
    restart: {restart}
    network:
      ports: [{{name: http}}, {{name: unused}}]
    tasks:
      - name: server
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "echo ok > local/index.html; exec /bin/busybox httpd -f -p 127.0.0.1:${{port.http}} -h local"]
        resources: {{cpu: 50, memory: 32}}
        checks:
{checks}
"#
    )
}

/// The one allocation of `job` that should run, once placed.
fn alloc_id(dev: &Dev, job: &str) -> String {
    let placed = |status: &JobStatusResponse| status.allocations.iter().any(|a| a.desired_status == DesiredStatus::Run);
    let status = wait_job(&dev.addr, job, Duration::from_secs(30), placed);
    status.allocations.iter().find(|a| a.desired_status == DesiredStatus::Run).expect("placed allocation").id.clone()
}

fn check_status(alloc: &Allocation, task: &str, check: &str) -> Option<CheckStatus> {
    alloc.task_states.get(task).and_then(|state| state.checks.get(check)).map(|check| check.status)
}

#[test]
fn checks_report_health_and_restart_failing_tasks() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();

    // (a) A passing http check: the allocation becomes healthy.
    let healthy_checks = "          - {name: web-http, type: http, port: http, path: /, body: ok, interval: 200ms, timeout: 100ms}";
    let spec = dev.write("healthy.yaml", &httpd_job("healthy", healthy_checks, "{attempts: 2, delay: 1s}"));
    dev.ok(&["job", "run", "--detach", &spec]);
    let id = alloc_id(&dev, "healthy");
    let alloc = wait_alloc(&dev.addr, &id, Duration::from_secs(30), |a| a.healthy == Some(true));
    assert_eq!(check_status(&alloc, "server", "web-http"), Some(CheckStatus::Passing), "{alloc:#?}");
    assert_eq!(alloc.task_states["server"].checks["web-http"].output, "HTTP 200");
    assert_eq!(alloc.health_description, "all tasks running, all checks passing");
    let events: Vec<&str> = alloc.task_states["server"].events.iter().map(|e| e.kind.as_str()).collect();
    assert!(events.contains(&"Check Passing"), "{events:?}");
    let out = dev.ok(&["alloc", "status", &id[..8]]);
    assert!(out.contains("Health") && out.contains("healthy (all tasks running, all checks passing)"), "{out}");
    assert!(out.contains("Checks") && out.contains("LAST CHECK") && out.contains("web-http") && out.contains("passing"), "{out}");

    // (b) An http check on a missing page with `on_failure: restart`: the task is restarted.
    let failing_checks = "          - {name: web-404, type: http, port: http, path: /fail, interval: 200ms, timeout: 100ms, \
                          failures_before_unhealthy: 2, on_failure: restart}";
    let spec = dev.write("restarting.yaml", &httpd_job("restarting", failing_checks, "{attempts: 5, delay: 100ms}"));
    dev.ok(&["job", "run", "--detach", &spec]);
    let id = alloc_id(&dev, "restarting");
    let alloc = wait_alloc(&dev.addr, &id, Duration::from_secs(30), |a| {
        a.task_states.get("server").is_some_and(|state| {
            state.restarts >= 1 && state.events.iter().any(|e| e.kind == "Restarting" && e.message.contains("check web-404"))
        })
    });
    let server = &alloc.task_states["server"];
    let restarting = server.events.iter().find(|e| e.kind == "Restarting").expect("Restarting event");
    assert!(restarting.message.contains("check web-404 failing: HTTP 404"), "{restarting:?}");
    assert!(server.events.iter().any(|e| e.kind == "Check Failing" && e.message.contains("HTTP 404")), "{:#?}", server.events);

    // (c) A tcp check on a port nobody listens on, `on_failure: ignore`: unhealthy, not restarted.
    let tcp_checks = "          - {name: nobody, type: tcp, port: unused, interval: 200ms, timeout: 100ms, failures_before_unhealthy: 2}";
    let spec = dev.write("ignored.yaml", &httpd_job("ignored", tcp_checks, "{attempts: 2, delay: 1s}"));
    dev.ok(&["job", "run", "--detach", &spec]);
    let id = alloc_id(&dev, "ignored");
    let alloc = wait_alloc(&dev.addr, &id, Duration::from_secs(30), |a| a.healthy == Some(false) && a.health_description.contains("check"));
    assert!(
        alloc.health_description.starts_with("check nobody of task server failing: connecting to 127.0.0.1:"),
        "{}",
        alloc.health_description
    );
    assert_eq!(check_status(&alloc, "server", "nobody"), Some(CheckStatus::Failing));
    assert_eq!(alloc.task_states["server"].restarts, 0);
    let out = dev.ok(&["alloc", "status", &id[..8]]);
    assert!(out.contains("unhealthy (check nobody of task server failing"), "{out}");

    dev.ok(&["job", "stop", "healthy"]);
    dev.ok(&["job", "stop", "restarting"]);
    dev.ok(&["job", "stop", "ignored"]);
}
