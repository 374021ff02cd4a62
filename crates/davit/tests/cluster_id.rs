//! An agent remembers its cluster: a wiped server at the same address (a new store, so a new cluster id)
//! is refused and nothing is stopped; once its own server is back, the agent goes on with its work.

mod util;

use std::time::Duration;

use davit_api::objects::ClientStatus;
use util::{Process, free_port, pid_alive, require_root, runtime, slot_port_range, wait_for_text, wait_job, wait_ready_nodes};

const JOB: &str = r#"
name: steady
groups:
  - name: g
    tasks:
      - name: main
        driver: exec
        config: {command: /bin/sleep, args: ["600"]}
        resources: {cpu: 20, memory: 32}
"#;

#[test]
fn an_agent_refuses_a_wiped_server_and_keeps_its_tasks() {
    if !require_root() {
        return;
    }
    let dir = util::tempdir();
    let bind = format!("127.0.0.1:{}", free_port());
    let addr = format!("http://{bind}");
    let data = |name: &str| dir.path().join(name).display().to_string();
    let server = |log: &str, data_dir: &str| {
        let process = Process::spawn(log, dir.path(), &["server", "--bind", &bind, "--data-dir", data_dir]);
        wait_for_text(&process.log, "davit server listening", Duration::from_secs(30));
        process
    };
    let mut first = server("server", &data("server"));
    let agent_bind = format!("127.0.0.1:{}", free_port());
    let dns = format!("127.0.0.1:{}", free_port());
    let range = slot_port_range(0);
    let agent_data = data("agent");
    let proxy_ip = util::proxy_ip();
    let agent_args = [
        "agent",
        "--servers",
        &addr,
        "--data-dir",
        &agent_data,
        "--bind",
        &agent_bind,
        "--port-range",
        &range,
        "--dns-bind",
        &dns,
        "--proxy-bind-ip",
        &proxy_ip,
    ];
    let agent = Process::spawn("agent", dir.path(), &agent_args);
    wait_ready_nodes(&addr, 1);
    wait_for_text(&agent.log, "this node belongs to cluster", Duration::from_secs(30));
    let cluster_id = std::fs::read_to_string(dir.path().join("agent/cluster-id")).unwrap().trim().to_string();
    assert!(!cluster_id.is_empty());

    std::fs::write(dir.path().join("steady.yaml"), JOB).unwrap();
    util::ok(&addr, dir.path(), &["job", "run", "--detach", "steady.yaml"]);
    let status =
        wait_job(&addr, "steady", Duration::from_secs(30), |s| s.allocations.iter().any(|a| a.client_status == ClientStatus::Running));
    let alloc = runtime().block_on(davit_client::Client::new(&addr).allocation(&status.allocations[0].id)).unwrap();
    let pid = alloc.task_states["main"].pid.expect("a running task has a pid");

    // The server is replaced by one on an empty store: another cluster. The agent refuses it.
    first.kill9();
    let mut wiped = server("wiped-server", &data("wiped"));
    // The server refuses the registration (nothing of this node is stored there)…
    wait_for_text(&agent.log, &format!("belongs to cluster {cluster_id}; this server is cluster"), Duration::from_secs(30));
    // …and the agent does not follow its (empty) list of this node's allocations once its long poll (30 s)
    // returns.
    wait_for_text(&agent.log, "refusing a server of another cluster", Duration::from_secs(60));
    assert!(util::read(&agent.log).contains(&format!("this node to cluster {cluster_id}")));
    assert!(pid_alive(pid), "the task was stopped for a server of another cluster");
    let nodes = runtime().block_on(davit_client::Client::new(&addr).nodes()).unwrap();
    assert!(nodes.is_empty(), "the agent registered with the wiped server: {nodes:?}");

    // Its own server comes back: the agent registers again and its task still runs, the same process.
    wiped.kill9();
    let _again = server("server-again", &data("server"));
    wait_job(&addr, "steady", Duration::from_secs(30), |s| s.allocations.iter().any(|a| a.client_status == ClientStatus::Running));
    wait_ready_nodes(&addr, 1);
    assert!(pid_alive(pid), "the task did not survive");
    let alloc = runtime().block_on(davit_client::Client::new(&addr).allocation(&alloc.id)).unwrap();
    assert_eq!(alloc.task_states["main"].pid, Some(pid), "the same process, not a restart");
}
