//! `disconnect.stop_after`: an agent cut off from every server stops the group's tasks (fencing) instead of
//! running them beside the replacements the servers would place; once the servers answer again, exactly the
//! group's count runs.

mod util;

use std::time::Duration;

use davit_api::objects::ClientStatus;
use util::{Cluster, pid_alive, require_root, runtime, signal, wait_job, wait_ready_nodes, wait_until};

const JOB: &str = r#"
name: fenced
groups:
  - name: g
    disconnect: {stop_after: 2s}
    tasks:
      - name: main
        driver: exec
        config: {command: /bin/sleep, args: ["600"]}
        resources: {cpu: 20, memory: 32}
"#;

#[test]
fn a_cut_off_agent_stops_the_group_and_exactly_count_runs_after_the_heal() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start();
    let _agent = cluster.spawn_agent("agent", &cluster.agent_args("one", 0));
    wait_ready_nodes(&cluster.addr, 1);
    std::fs::write(cluster.path().join("fenced.yaml"), JOB).unwrap();
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
