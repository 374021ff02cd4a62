//! `disconnect.stop_after`: an agent cut off from every server stops the group's tasks (fencing) instead of
//! running them beside the replacements the servers would place; once the servers answer again, exactly the
//! group's count runs. `disconnect.lost_after` + `reconcile`: an agent that comes back in time finds its
//! allocation beside a replacement, and the group's strategy picks the one that stays.

mod util;

use std::time::Duration;

use davit_api::objects::{ClientStatus, DesiredStatus};
use util::{Cluster, pid_alive, require_root, runtime, signal, wait_job, wait_ready_nodes, wait_until};

/// A job of one long-running exec task whose group has the `disconnect` block given.
fn job(name: &str, disconnect: &str) -> String {
    format!(
        "name: {name}\ngroups:\n  - name: g\n    disconnect: {disconnect}\n    tasks:\n      - name: main\n        driver: exec\n        \
         config: {{command: /bin/sleep, args: [\"600\"]}}\n        resources: {{cpu: 20, memory: 32}}\n"
    )
}

#[test]
fn a_cut_off_agent_stops_the_group_and_exactly_count_runs_after_the_heal() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start();
    let _agent = cluster.spawn_agent("agent", &cluster.agent_args("one", 0));
    wait_ready_nodes(&cluster.addr, 1);
    std::fs::write(cluster.path().join("fenced.yaml"), job("fenced", "{stop_after: 2s}")).unwrap();
    util::ok(&cluster.addr, cluster.path(), &["job", "run", "--detach", "fenced.yaml"]);
    let running = |status: &davit_api::http::JobStatusResponse| {
        status.allocations.iter().filter(|alloc| alloc.client_status == ClientStatus::Running).count()
    };
    let status = wait_job(&cluster.addr, "fenced", Duration::from_secs(60), |status| running(status) == 1);
    let client = davit_client::Client::new(&cluster.addr);
    let first = runtime().block_on(client.allocation(&status.allocations[0].id)).unwrap();
    let pid = first.task_states["main"].pid.expect("a running task has a pid");

    // The server stops answering: after stop_after the agent stops the task on its own.
    signal(cluster.server_pid(), "STOP");
    wait_until("the cut-off agent stopped its task", Duration::from_secs(30), || !pid_alive(pid));
    signal(cluster.server_pid(), "CONT");

    // Healed: exactly one allocation runs, a new one; the fenced one ended and says why.
    let status = wait_job(&cluster.addr, "fenced", Duration::from_secs(60), |status| {
        running(status) == 1 && status.allocations.iter().all(|alloc| alloc.id != first.id || alloc.client_status.is_terminal())
    });
    assert_eq!(running(&status), 1, "{status:#?}");
    let fenced = runtime().block_on(client.allocation(&first.id)).unwrap();
    let events: Vec<&str> = fenced.task_states["main"].events.iter().map(|event| event.kind.as_str()).collect();
    assert!(events.contains(&"Disconnected"), "{events:?}");
}

#[test]
fn a_reconnected_allocation_and_its_replacement_are_reconciled_to_one() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start();
    let agents = [
        ("one", cluster.spawn_agent("one", &cluster.agent_args("one", 0))),
        ("two", cluster.spawn_agent("two", &cluster.agent_args("two", 1))),
    ];
    wait_ready_nodes(&cluster.addr, 2);
    std::fs::write(cluster.path().join("reconciled.yaml"), job("reconciled", "{lost_after: 10m, reconcile: keep_original}")).unwrap();
    util::ok(&cluster.addr, cluster.path(), &["job", "run", "--detach", "reconciled.yaml"]);
    let running = |status: &davit_api::http::JobStatusResponse| {
        status
            .allocations
            .iter()
            .filter(|alloc| alloc.client_status == ClientStatus::Running && alloc.desired_status == DesiredStatus::Run)
            .count()
    };
    let status = wait_job(&cluster.addr, "reconciled", Duration::from_secs(60), |status| running(status) == 1);
    let client = davit_client::Client::new(&cluster.addr);
    let original = runtime().block_on(client.allocation(&status.allocations[0].id)).unwrap();
    let pid = original.task_states["main"].pid.expect("a running task has a pid");
    let (_, agent) = agents.iter().find(|(name, _)| *name == original.node_name).expect("the allocation's agent");

    // Its agent stops answering: the node goes down, the allocation is disconnected (not stopped) and a
    // replacement runs on the other node.
    signal(agent.pid(), "STOP");
    let status = wait_job(&cluster.addr, "reconciled", Duration::from_secs(60), |status| {
        status.allocations.iter().any(|alloc| alloc.id != original.id && alloc.client_status == ClientStatus::Running)
    });
    let replacement = status.allocations.iter().find(|alloc| alloc.id != original.id).unwrap().id.clone();
    let disconnected = runtime().block_on(client.allocation(&original.id)).unwrap();
    assert!(disconnected.desired_status == DesiredStatus::Run, "a disconnected allocation is not stopped: {disconnected:#?}");
    assert!(pid_alive(pid), "its task still runs");

    // It comes back: keep_original keeps it and stops the replacement.
    signal(agent.pid(), "CONT");
    let status = wait_job(&cluster.addr, "reconciled", Duration::from_secs(60), |status| {
        status.allocations.iter().any(|alloc| alloc.id == replacement && alloc.client_status.is_terminal())
    });
    assert_eq!(running(&status), 1, "{status:#?}");
    let kept = runtime().block_on(client.allocation(&original.id)).unwrap();
    assert_eq!(kept.client_status, ClientStatus::Running, "{kept:#?}");
    assert!(pid_alive(pid), "the original's task was never restarted");
    let stopped = runtime().block_on(client.allocation(&replacement)).unwrap();
    assert!(stopped.desired_description.contains("disconnect.reconcile: keep_original"), "{stopped:#?}");
}
