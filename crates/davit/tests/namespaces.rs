//! End to end on `davit dev`: a namespace with a quota from the CLI, a job file that names its namespace,
//! a scale-up the quota blocks (with the reason), objects that other namespaces do not see, and the
//! agent's log relay in the namespace.

mod util;

use std::time::{Duration, Instant};

use util::{Dev, require_root};

#[test]
fn a_namespace_quota_blocks_a_scale_up_and_namespaces_keep_apart() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/team-a/counter.yaml");
    let output = dev.davit(&["job", "run", example]);
    assert_eq!(output.status.code(), Some(1), "the namespace does not exist yet");
    assert!(String::from_utf8_lossy(&output.stderr).contains("namespace `team-a` does not exist"), "{output:?}");

    dev.ok(&["namespace", "apply", "team-a", "--memory", "96", "--max-count", "5", "--description", "team a"]);
    dev.ok(&["job", "run", example]);
    let output = dev.davit(&["job", "scale", "-n", "team-a", "counter", "count", "4"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 not placed: quota of namespace team-a: memory 96/96 MiB"), "{stderr}");
    let status = dev.ok(&["namespace", "status", "team-a"]);
    assert!(status.contains("memory      96/96 MiB") && status.contains("Jobs        = 1"), "{status}");
    let output = dev.davit(&["job", "scale", "-n", "team-a", "counter", "count", "6"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("allows at most 5 per group"), "{output:?}");

    // The default namespace does not see team-a's job or allocations.
    assert!(!dev.ok(&["job", "status"]).contains("counter"));
    assert!(dev.ok(&["job", "status", "-n", "team-a"]).contains("counter"));
    let allocs: Vec<serde_json::Value> = serde_json::from_str(&dev.ok(&["job", "status", "-n", "team-a", "counter", "-o", "json"]))
        .map(|s: serde_json::Value| s["allocations"].as_array().unwrap().clone())
        .unwrap();
    let alloc = allocs.iter().find(|a| a["desired_status"] == "run").unwrap()["id"].as_str().unwrap().to_string();
    let output = dev.davit(&["alloc", "status", &alloc]);
    assert_eq!(output.status.code(), Some(1), "an allocation of team-a is not in default");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dev.ok(&["alloc", "logs", "-n", "team-a", &alloc]).contains("team-a tick") {
        assert!(Instant::now() < deadline, "no log from the team-a counter");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A namespace goes only once it is empty.
    dev.ok(&["job", "stop", "-n", "team-a", "counter", "--purge"]);
    dev.ok(&["namespace", "delete", "team-a"]);
    assert!(!dev.ok(&["namespace", "ls"]).contains("team-a"));
}
