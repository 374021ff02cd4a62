//! Servers on etcd: two `davit server --store etcd` processes on a 3-member etcd cluster and an agent that
//! knows both. One leads and serves; the other stands by. When the leader is killed with `kill -9`, the other
//! takes over within a few seconds (its lease TTL is 2 s here), the running allocations are neither stopped nor
//! duplicated, and a new job is scheduled (the CLI, given both addresses, follows); a leader paused past its lease stops once it runs again and has
//! changed nothing (that its writes would fail is `davit-store`'s fencing test).

mod util;

use std::time::{Duration, Instant};

use davit_api::objects::{ClientStatus, DesiredStatus};
use davit_store::etcd_testing::{EtcdCluster, etcd_available};
use util::{Cluster, Process, free_port, require_root, wait_job, wait_ready_nodes};

const JOB: &str = "name: NAME\ngroups:\n  - name: g\n    count: 2\n    tasks:\n      - {name: t, driver: exec, config: {command: /bin/sleep, args: [\"600\"]}, resources: {cpu: 50, memory: 16}}\n";

fn server(cluster: &Cluster, etcd: &EtcdCluster, name: &str, bind: &str) -> Process {
    let data = cluster.path().join(name).display().to_string();
    let endpoints = etcd.endpoints().join(",");
    let args = [
        "server",
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--bind",
        bind,
        "--data-dir",
        &data,
        "--name",
        name,
        "--leader-ttl",
        "2s",
    ];
    Process::spawn(name, cluster.path(), &args)
}

fn answers(addr: &str) -> bool {
    util::http_status(addr, "/v1/status").is_some()
}

fn running_allocs(addr: &str, job: &str) -> Vec<String> {
    let status = wait_job(&format!("http://{addr}"), job, Duration::from_secs(30), |_| true);
    let mut ids: Vec<String> = status
        .allocations
        .iter()
        .filter(|alloc| alloc.desired_status == DesiredStatus::Run && alloc.client_status == ClientStatus::Running)
        .map(|alloc| alloc.id.clone())
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_standby_takes_over_from_a_killed_leader_and_a_paused_leader_is_fenced() {
    if !require_root() || !etcd_available() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let cluster = Cluster::unstarted();
    let (a_addr, b_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut a = server(&cluster, &etcd, "a", &a_addr);
    util::wait_until("server a leads and serves", Duration::from_secs(30), || answers(&a_addr));
    let mut b = server(&cluster, &etcd, "b", &b_addr);
    util::wait_until("server b stands by", Duration::from_secs(30), || b.logs().contains("standing by: a leads"));
    assert!(!answers(&b_addr), "a standby does not serve");

    let mut agent_args = cluster.agent_args("node-1", 0);
    let servers = agent_args.iter().position(|arg| arg == "--servers").unwrap() + 1;
    agent_args[servers] = format!("http://{a_addr},http://{b_addr}");
    let _agent = cluster.spawn_agent("agent", &agent_args);
    wait_ready_nodes(&format!("http://{a_addr}"), 1);
    let spec = cluster.path().join("before.yaml");
    std::fs::write(&spec, JOB.replace("NAME", "before")).unwrap();
    util::ok(&format!("http://{a_addr}"), cluster.path(), &["job", "run", &spec.display().to_string()]);
    let before = running_allocs(&a_addr, "before");
    assert_eq!(before.len(), 2);
    // The CLI with every server's address uses the one that serves (the standby does not listen).
    let both = format!("http://{b_addr},http://{a_addr}");
    assert!(util::ok(&both, cluster.path(), &["job", "status", "before"]).contains("before"));

    // kill -9 the leader: b leads and serves within a few seconds, with the same two allocations running.
    a.kill9();
    let killed = Instant::now();
    util::wait_until("server b takes over", Duration::from_secs(30), || answers(&b_addr));
    let took_over = killed.elapsed();
    wait_ready_nodes(&format!("http://{b_addr}"), 1);
    assert_eq!(running_allocs(&b_addr, "before"), before, "no allocation stopped or duplicated by the failover");
    let spec = cluster.path().join("after.yaml");
    std::fs::write(&spec, JOB.replace("NAME", "after")).unwrap();
    util::ok(&format!("http://{b_addr}"), cluster.path(), &["job", "run", &spec.display().to_string()]);
    assert_eq!(running_allocs(&b_addr, "after").len(), 2, "the new leader schedules");
    assert!(util::ok(&both, cluster.path(), &["job", "status", "after"]).contains("after"), "the CLI finds the new leader");
    eprintln!("failover: server b served {took_over:?} after server a was killed (lease TTL 2 s)");

    // Fencing: pause the leader past its lease; a leads again meanwhile; b, resumed, may not write and stops.
    a = server(&cluster, &etcd, "a", &a_addr);
    util::wait_until("server a stands by", Duration::from_secs(30), || a.logs().contains("standing by: b leads"));
    util::signal(b.pid(), "STOP");
    util::wait_until("server a leads again", Duration::from_secs(30), || answers(&a_addr));
    let versions_before = running_allocs(&a_addr, "after");
    util::signal(b.pid(), "CONT");
    let status = b.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the deposed leader stops with an error");
    assert!(b.logs().contains("lost its leadership"), "{}", b.logs());
    assert_eq!(running_allocs(&a_addr, "after"), versions_before, "the deposed leader changed nothing");
    assert_eq!(running_allocs(&a_addr, "before"), before);
}
