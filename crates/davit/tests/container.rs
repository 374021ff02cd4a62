//! End to end: `examples/container-web.yaml` in `davit dev`, its image pulled from a registry on loopback:
//! three busybox httpd containers answer on their ports and pass their checks, the pull shows as task events
//! with progress, `alloc exec` runs inside a container (its own pid namespace and hostname), and stop ends them.

mod util;

use std::time::Duration;

use davit_api::objects::{Allocation, ClientStatus, DesiredStatus};
use util::{Dev, http_get, wait_alloc, wait_job};

#[test]
fn the_container_example_runs_checks_execs_and_stops() {
    let Some(registry) = util::container_registry() else { return };
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/container-web.yaml")).unwrap();
    assert!(example.contains("127.0.0.1:5000/busybox:1") && example.contains("count: 2"), "the example changed: {example}");
    let spec = example.replace("127.0.0.1:5000", &registry.host()).replace("count: 2", "count: 3");

    let dev = Dev::start();
    let path = dev.write("container-web.yaml", &spec);
    let out = dev.ok(&["job", "run", &path]);
    assert!(out.contains("all allocations running"), "{out}");

    let status = wait_job(&dev.addr, "container-web", Duration::from_secs(60), |s| {
        s.allocations.iter().filter(|a| a.desired_status == DesiredStatus::Run && a.client_status == ClientStatus::Running).count() == 3
    });
    let allocs: Vec<Allocation> = status
        .allocations
        .iter()
        .filter(|a| a.desired_status == DesiredStatus::Run)
        .map(|a| wait_alloc(&dev.addr, &a.id, Duration::from_secs(30), |alloc| alloc.healthy == Some(true)))
        .collect();
    for alloc in &allocs {
        let port = alloc.resources.ports.iter().find(|p| p.label == "http").expect("http port").value;
        let response = http_get(port);
        assert!(response.starts_with("HTTP/1.") && response.contains(&format!("hello from {}", alloc.name)), "{response}");

        let events = &alloc.task_states["server"].events;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let ready = kinds.iter().position(|k| *k == "Image Ready").unwrap_or_else(|| panic!("no Image Ready event: {kinds:?}"));
        let started = kinds.iter().position(|k| *k == "Started").unwrap_or_else(|| panic!("no Started event: {kinds:?}"));
        assert!(ready < started, "{kinds:?}");
    }
    // The first pull downloads (with progress); the image is fetched once per node, not once per task.
    let downloads: Vec<_> = allocs.iter().flat_map(|a| &a.task_states["server"].events).filter(|e| e.kind == "Downloading Image").collect();
    assert!(downloads.iter().any(|e| e.progress.is_some_and(|p| p.total > 0 && p.done <= p.total)), "{downloads:#?}");
    let layer_gets = registry.log().lines().filter(|line| line.contains("GET /v2/busybox/blobs/sha256:")).count();
    assert_eq!(layer_gets, 2, "one GET for the config and one for the layer:\n{}", registry.log());

    // exec runs inside the container: its pid namespace (httpd is pid 1 there) and its hostname.
    let alloc = &allocs[0];
    let short = &alloc.id[..8];
    let out = dev.ok(&["alloc", "exec", short, "--", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("httpd -f -p"), "{out}");
    assert_eq!(lines[1], "server", "the container's hostname is its task's name: {out}");
    let output = dev.davit(&["alloc", "exec", short, "--", "sh", "-c", "exit 42"]);
    assert_eq!(output.status.code(), Some(42));
    // An exec'd command gains no privileges the task does not have.
    let status = dev.ok(&["alloc", "exec", short, "--", "grep", "NoNewPrivs", "/proc/self/status"]);
    assert_eq!(status.split_whitespace().collect::<Vec<_>>(), ["NoNewPrivs:", "1"], "{status}");

    let out = dev.ok(&["job", "stop", "container-web"]);
    assert!(out.contains("stopped"), "{out}");
    for alloc in &allocs {
        wait_alloc(&dev.addr, &alloc.id, Duration::from_secs(30), |a| a.client_status.is_terminal());
    }
}
