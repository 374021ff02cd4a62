//! Servers on etcd: `davit server --store etcd` processes on a 3-member etcd cluster, and agents that know them
//! all. One leads; the others follow: they serve reads from their own view and forward writes to the leader.
//! When the leader is killed with `kill -9`, another takes over within a few seconds (the lease TTL is 2 s
//! here), running allocations are neither stopped nor duplicated, and acknowledged writes are all there; a
//! leader paused past its lease stops once it runs again and has changed nothing (that its writes would fail is
//! `davit-store`'s fencing test). A snapshot of a redb server restores into etcd.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use davit_api::http::ServerMember;
use davit_api::objects::{ClientStatus, DesiredStatus};
use davit_client::Client;
use davit_store::etcd_testing::{EtcdCluster, etcd_available};
use util::{Cluster, Process, free_port, require_root, runtime, wait_job, wait_ready_nodes};

const JOB: &str = "name: NAME\ngroups:\n  - name: g\n    count: COUNT\n    tasks:\n      - {name: t, driver: exec, config: {command: /bin/sleep, args: [\"600\"]}, resources: {cpu: 20, memory: 16}}\n";

fn job(name: &str, count: u32) -> String {
    JOB.replace("NAME", name).replace("COUNT", &count.to_string())
}

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
        "--job-max-versions",
        "1000",
    ];
    Process::spawn(name, cluster.path(), &args)
}

/// The servers as `addr` lists them (`None` while it does not answer).
fn members(addr: &str) -> Option<Vec<ServerMember>> {
    let port = addr.rsplit_once(':')?.1.parse().ok()?;
    serde_json::from_str(&util::http_body(port, "/v1/operator/servers")?).ok()
}

/// Who leads, as the server at `addr` sees it.
fn leader(addr: &str) -> Option<String> {
    members(addr)?.into_iter().find(|member| member.leader).map(|member| member.name)
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

/// Agent `name`'s arguments with every server's address.
fn agent_args(cluster: &Cluster, name: &str, slot: u16, addrs: &[&str]) -> Vec<String> {
    let mut args = cluster.agent_args(name, slot);
    let servers = args.iter().position(|arg| arg == "--servers").unwrap() + 1;
    args[servers] = addrs.iter().map(|addr| format!("http://{addr}")).collect::<Vec<_>>().join(",");
    args
}

#[test]
fn followers_serve_and_forward_and_one_takes_over_from_a_killed_or_paused_leader() {
    if !require_root() || !etcd_available() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let cluster = Cluster::unstarted();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let (a_addr, b_addr, c_addr) = (addrs[0].as_str(), addrs[1].as_str(), addrs[2].as_str());
    let mut a = server(&cluster, &etcd, "a", a_addr);
    util::wait_until("server a leads", Duration::from_secs(30), || leader(a_addr).as_deref() == Some("a"));
    let mut servers = BTreeMap::from([("b", server(&cluster, &etcd, "b", b_addr)), ("c", server(&cluster, &etcd, "c", c_addr))]);
    util::wait_until("b and c follow a", Duration::from_secs(30), || {
        [b_addr, c_addr].iter().all(|addr| members(addr).is_some_and(|members| members.len() == 3))
            && leader(b_addr).as_deref() == Some("a")
    });
    let listed = util::ok(&format!("http://{c_addr}"), cluster.path(), &["operator", "servers"]);
    let row = |name: &str| listed.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("{listed}")).to_string();
    assert!(row("a").contains("yes") && !row("b").contains("yes") && !row("c").contains("yes"), "{listed}");

    let _agent = cluster.spawn_agent("agent", &agent_args(&cluster, "node-1", 0, &[a_addr, b_addr, c_addr]));
    wait_ready_nodes(&format!("http://{b_addr}"), 1);
    // A job run through a follower: it forwards the write and answers reads (the rollout) from its own view.
    let spec = cluster.path().join("before.yaml");
    std::fs::write(&spec, job("before", 2)).unwrap();
    util::ok(&format!("http://{b_addr}"), cluster.path(), &["job", "run", &spec.display().to_string()]);
    let before = running_allocs(c_addr, "before");
    assert_eq!(before.len(), 2);
    assert_eq!(running_allocs(a_addr, "before"), before, "every server's view shows the same allocations");
    let all = format!("http://{b_addr},http://{a_addr},http://{c_addr}");
    assert!(util::ok(&all, cluster.path(), &["job", "status", "before"]).contains("before"));

    // kill -9 the leader: b or c leads and schedules within a few seconds, with the same two allocations.
    a.kill9();
    let killed = Instant::now();
    let next = util::eventually(
        "b or c takes over",
        Duration::from_secs(30),
        || leader(b_addr),
        |leader| leader.as_deref().is_some_and(|leader| leader != "a"),
    );
    let took_over = killed.elapsed();
    let next = next.unwrap();
    let other = if next == "b" { "c" } else { "b" };
    let (next_addr, other_addr) = if next == "b" { (b_addr, c_addr) } else { (c_addr, b_addr) };
    let spec = cluster.path().join("after.yaml");
    std::fs::write(&spec, job("after", 2)).unwrap();
    // The leader key names the winner before its API is up: a write may meet a 503 for a moment.
    util::wait_until("a job runs through the other follower", Duration::from_secs(30), || {
        util::davit(&format!("http://{other_addr}"), cluster.path(), &["job", "run", &spec.display().to_string()]).status.success()
    });
    let scheduled = killed.elapsed();
    assert_eq!(running_allocs(other_addr, "after").len(), 2, "the new leader schedules");
    assert_eq!(running_allocs(next_addr, "before"), before, "no allocation stopped or duplicated by the failover");
    eprintln!("failover: {next} led {took_over:?} and a job through {other} ran {scheduled:?} after a was killed (lease TTL 2 s)");

    // Fencing: pause the leader past its lease; another leads meanwhile; the paused one, resumed, stops.
    a = server(&cluster, &etcd, "a", a_addr);
    util::wait_until("a follows", Duration::from_secs(30), || members(a_addr).is_some_and(|members| members.iter().any(|m| m.name == "a")));
    let paused = servers.get_mut(next.as_str()).unwrap();
    util::signal(paused.pid(), "STOP");
    util::wait_until("another server leads", Duration::from_secs(30), || leader(a_addr).is_some_and(|leader| leader != next));
    let allocs_before = running_allocs(a_addr, "after");
    util::signal(paused.pid(), "CONT");
    let status = paused.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the deposed leader stops with an error");
    assert!(paused.logs().contains("lost its leadership"), "{}", paused.logs());
    assert_eq!(running_allocs(a_addr, "after"), allocs_before, "the deposed leader changed nothing");
    assert_eq!(running_allocs(a_addr, "before"), before);
    drop(a);
}

/// The acceptance loop: 3 etcd members, 3 servers, 2 agents; job registrations and scales go to every server
/// in turn while the leader is killed twice. Every acknowledged version is there at the end, every job runs its
/// count, and no group ever ran two allocations of one name (a duplicate) or more than its largest count.
#[test]
fn acknowledged_writes_survive_two_leader_kills_and_no_group_runs_twice() {
    if !require_root() || !etcd_available() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let cluster = Cluster::unstarted();
    let names = ["a", "b", "c"];
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut servers: BTreeMap<&str, Process> = BTreeMap::new();
    servers.insert("a", server(&cluster, &etcd, "a", &addrs[0]));
    util::wait_until("server a leads", Duration::from_secs(30), || leader(&addrs[0]).is_some());
    for (name, addr) in names.iter().zip(&addrs).skip(1) {
        servers.insert(name, server(&cluster, &etcd, name, addr));
    }
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let _agents: Vec<Process> =
        (0..2).map(|i| cluster.spawn_agent(&format!("agent-{i}"), &agent_args(&cluster, &format!("node-{i}"), i, &addr_refs))).collect();
    wait_ready_nodes(&format!("http://{}", addrs[0]), 2);
    let runtime = runtime();
    let clients: Vec<Client> = addrs.iter().map(|addr| Client::connect(&format!("http://{addr}"), None, None)).collect();
    const JOBS: usize = 4;
    const MAX_COUNT: u32 = 3;
    // Per job: (version, count) of every acknowledged write.
    let mut acknowledged: BTreeMap<String, Vec<(u64, u32)>> = BTreeMap::new();
    let mut last_count: BTreeMap<String, u32> = BTreeMap::new();
    let mut kills = Vec::new();
    let started = Instant::now();
    for step in 0..36u32 {
        assert!(started.elapsed() < Duration::from_secs(240), "the loop is bounded in time too");
        let name = format!("j{}", step as usize % JOBS);
        let count = 1 + (step * 7 + step / 4) % MAX_COUNT;
        // Every write is retried (through the next server) until one acknowledges it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut turn = step as usize;
        let answer = loop {
            assert!(Instant::now() < deadline, "{name}: no server acknowledged the write within 60 s");
            let client = &clients[turn % clients.len()];
            let result = if step < JOBS as u32 || step % 2 == 0 {
                runtime.block_on(client.register_job(&job(&name, count), "loop.yaml"))
            } else {
                runtime.block_on(client.scale_job(&name, "g", count))
            };
            match result {
                Ok(answer) => break answer,
                Err(_) => {
                    turn += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        acknowledged.entry(name.clone()).or_default().push((answer.version, count));
        last_count.insert(name.clone(), count);
        // Kill the leader twice; it comes back as a follower.
        if step == 10 || step == 24 {
            let leading =
                util::eventually("a leader", Duration::from_secs(30), || addrs.iter().find_map(|addr| leader(addr)), Option::is_some)
                    .unwrap();
            let index = names.iter().position(|name| *name == leading).unwrap();
            servers.get_mut(leading.as_str()).unwrap().kill9();
            kills.push(Instant::now());
            servers.insert(names[index], server(&cluster, &etcd, names[index], &addrs[index]));
        }
        // Until the job runs its new count: among running allocations of any job, each name once, none beyond
        // the largest count (checked at every look).
        util::wait_until(&format!("{name} runs {count}"), Duration::from_secs(60), || {
            let mut settled = false;
            for job_index in 0..JOBS {
                let job_name = format!("j{job_index}");
                let Some(status) = clients.iter().find_map(|client| runtime.block_on(client.job_status(&job_name)).ok()) else {
                    continue;
                };
                let running: Vec<&str> = status
                    .value
                    .allocations
                    .iter()
                    .filter(|alloc| alloc.desired_status == DesiredStatus::Run && alloc.client_status == ClientStatus::Running)
                    .map(|alloc| alloc.name.as_str())
                    .collect();
                let distinct: BTreeSet<&str> = running.iter().copied().collect();
                assert_eq!(distinct.len(), running.len(), "{job_name} runs an allocation twice: {running:?}");
                assert!(running.len() <= MAX_COUNT as usize, "{job_name} runs {} allocations", running.len());
                settled |= job_name == name && running.len() == count as usize;
            }
            settled
        });
    }
    // The end: every acknowledged version is stored, and each job runs its last count.
    let leading = util::eventually("a leader", Duration::from_secs(30), || addrs.iter().find_map(|addr| leader(addr)), Option::is_some);
    eprintln!("after {} steps and {} kills in {:?}, {} leads", 36, kills.len(), started.elapsed(), leading.unwrap());
    for (name, versions) in &acknowledged {
        let stored: BTreeMap<u64, u32> =
            runtime.block_on(clients[0].job_versions(name)).unwrap().iter().map(|job| (job.version, job.spec.groups[0].count)).collect();
        for (version, count) in versions {
            assert_eq!(stored.get(version), Some(count), "{name}: acknowledged version {version} with count {count} (stored: {stored:?})");
        }
        let count = last_count[name] as usize;
        let status = wait_job(&format!("http://{}", addrs[0]), name, Duration::from_secs(60), |status| {
            status
                .allocations
                .iter()
                .filter(|alloc| alloc.desired_status == DesiredStatus::Run && alloc.client_status == ClientStatus::Running)
                .count()
                == count
        });
        let running: BTreeSet<&str> = status
            .allocations
            .iter()
            .filter(|alloc| alloc.desired_status == DesiredStatus::Run && alloc.client_status == ClientStatus::Running)
            .map(|alloc| alloc.name.as_str())
            .collect();
        assert_eq!(running.len(), count, "{name}: {running:?}");
    }
}

/// A snapshot of a redb server, restored into etcd: servers on etcd start with its jobs; restoring is refused
/// while a server leads, into a store that holds a cluster unless forced, and from a damaged file.
#[test]
fn a_redb_snapshot_moves_the_cluster_to_etcd() {
    if !require_root() || !etcd_available() {
        return;
    }
    let mut cluster = Cluster::unstarted();
    cluster.start_server(&[]);
    let addr = cluster.addr.clone();
    util::wait_until("the redb server serves", Duration::from_secs(30), || {
        util::http_status(addr.trim_start_matches("http://"), "/v1/status").is_some()
    });
    let spec = cluster.path().join("kept.yaml");
    for count in [1, 2] {
        std::fs::write(&spec, job("kept", count)).unwrap();
        util::ok(&addr, cluster.path(), &["job", "run", "--detach", &spec.display().to_string()]);
    }
    let file = cluster.path().join("backup.snap");
    let file_arg = file.display().to_string();
    let saved = util::ok(&addr, cluster.path(), &["operator", "snapshot", "save", &file_arg]);
    assert!(saved.contains("saved"), "{saved}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "a snapshot holds secrets");
    let inspected = util::ok(&addr, cluster.path(), &["operator", "snapshot", "inspect", &file_arg]);
    assert!(inspected.contains("Backend  = redb") && inspected.contains("jobs"), "{inspected}");

    // A damaged file is refused and changes nothing.
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let damaged_file = cluster.path().join("damaged.snap");
    std::fs::write(&damaged_file, damaged).unwrap();
    let etcd = EtcdCluster::start(1);
    let endpoints = etcd.endpoints().join(",");
    let restore = |file: &str, extra: &[&str]| {
        let mut args = vec!["operator", "snapshot", "restore", file, "--store", "etcd", "--etcd-endpoints", &endpoints];
        args.extend_from_slice(extra);
        util::davit(&addr, cluster.path(), &args)
    };
    let refused = restore(&damaged_file.display().to_string(), &[]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("damaged"), "{refused:?}");

    let restored = restore(&file_arg, &[]);
    assert!(restored.status.success(), "{restored:?}");
    let again = restore(&file_arg, &[]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"), "{again:?}");

    let etcd_addr = format!("127.0.0.1:{}", free_port());
    let etcd_server = server(&cluster, &etcd, "on-etcd", &etcd_addr);
    util::wait_until("the server on etcd leads", Duration::from_secs(30), || leader(&etcd_addr).is_some());
    let client = Client::connect(&format!("http://{etcd_addr}"), None, None);
    let versions: Vec<u64> = runtime().block_on(client.job_versions("kept")).unwrap().iter().map(|job| job.version).collect();
    assert_eq!(versions.len(), 2, "both versions came along: {versions:?}");
    let kept = runtime().block_on(client.job_status("kept")).unwrap().value.job;
    assert_eq!(kept.spec.groups[0].count, 2);
    let forced = restore(&file_arg, &["--force"]);
    assert!(!forced.status.success() && String::from_utf8_lossy(&forced.stderr).contains("stop every server"), "a server runs: {forced:?}");

    // With the server stopped, --force replaces what is there: a job made on etcd since is gone again.
    let spec = cluster.path().join("later.yaml");
    std::fs::write(&spec, job("later", 1)).unwrap();
    util::ok(&format!("http://{etcd_addr}"), cluster.path(), &["job", "run", "--detach", &spec.display().to_string()]);
    drop(etcd_server);
    util::wait_until("a forced restore succeeds once the stopped server's lease ended", Duration::from_secs(30), || {
        restore(&file_arg, &["--force"]).status.success()
    });
    let etcd_server = server(&cluster, &etcd, "on-etcd", &etcd_addr);
    util::wait_until("the server on etcd leads again", Duration::from_secs(30), || leader(&etcd_addr).is_some());
    let jobs = util::ok(&format!("http://{etcd_addr}"), cluster.path(), &["job", "status"]);
    assert!(jobs.contains("kept") && !jobs.contains("later"), "{jobs}");
    drop(etcd_server);
}

/// With two etcd members of three down, a write through any server fails with a clear error within seconds (a
/// 503 from the follower, or the leader's store error; not a hang) while reads from a follower's view go on;
/// once a member returns, a server leads again and writes succeed.
#[test]
fn without_an_etcd_majority_writes_fail_fast_and_work_again_when_a_member_returns() {
    if !require_root() || !etcd_available() {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let cluster = Cluster::unstarted();
    let (a_addr, b_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let _a = server(&cluster, &etcd, "a", &a_addr);
    util::wait_until("server a leads", Duration::from_secs(30), || leader(&a_addr).as_deref() == Some("a"));
    let _b = server(&cluster, &etcd, "b", &b_addr);
    util::wait_until("b follows a", Duration::from_secs(30), || leader(&b_addr).as_deref() == Some("a"));
    let both = format!("http://{b_addr},http://{a_addr}");
    let run = |name: &str| {
        let spec = cluster.path().join(format!("{name}.yaml"));
        std::fs::write(&spec, job(name, 1)).unwrap();
        util::davit(&both, cluster.path(), &["job", "run", "--detach", &spec.display().to_string()])
    };
    assert!(run("first").status.success());

    etcd.members[1].kill();
    etcd.members[2].kill();
    for attempt in 0..2 {
        let started = Instant::now();
        let failed = run("second");
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(!failed.status.success(), "attempt {attempt}: a write without an etcd majority succeeded");
        assert!(started.elapsed() < Duration::from_secs(20), "attempt {attempt}: the write hung for {:?}", started.elapsed());
        assert!(stderr.contains("leader") || stderr.contains("store failed") || stderr.contains("leads"), "attempt {attempt}: {stderr}");
    }
    let status = util::ok(&format!("http://{b_addr}"), cluster.path(), &["job", "status", "first"]);
    assert!(status.contains("first"), "a follower still answers reads from its view: {status}");

    etcd.members[1].restart();
    etcd.wait_healthy(Duration::from_secs(30));
    util::wait_until("writes work again", Duration::from_secs(60), || run("second").status.success());
    let leading = util::eventually("a leader", Duration::from_secs(30), || leader(&b_addr), Option::is_some);
    eprintln!("after the majority came back, {} leads", leading.unwrap());
}

/// Servers on one etcd share one keyring: a server whose keyring lacks the key a stored variable is sealed with
/// does not start (it says to copy keyring.json); with the file copied it follows, reads the variable, and reads
/// it still once it leads; the keyring does not change while other servers run.
#[test]
fn servers_on_etcd_share_one_keyring() {
    if !require_root() || !etcd_available() {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let cluster = Cluster::unstarted();
    let (a_addr, b_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut a = server(&cluster, &etcd, "a", &a_addr);
    util::wait_until("server a leads", Duration::from_secs(30), || leader(&a_addr).as_deref() == Some("a"));
    util::ok(&format!("http://{a_addr}"), cluster.path(), &["var", "put", "shop/db", "password=hunter2"]);

    let mut refused = server(&cluster, &etcd, "b", &b_addr);
    let status = refused.wait_exit(Duration::from_secs(30));
    assert!(!status.success() && refused.logs().contains("copy keyring.json"), "{}", refused.logs());
    std::fs::copy(cluster.path().join("a").join("keyring.json"), cluster.path().join("b").join("keyring.json")).unwrap();
    let _b = server(&cluster, &etcd, "b", &b_addr);
    util::wait_until("b follows a", Duration::from_secs(30), || leader(&b_addr).as_deref() == Some("a"));
    let through_b = format!("http://{b_addr}");
    assert!(util::ok(&through_b, cluster.path(), &["var", "get", "shop/db"]).contains("password=hunter2"));
    let rotate = util::davit(&through_b, cluster.path(), &["operator", "keyring", "rotate"]);
    assert!(!rotate.status.success() && String::from_utf8_lossy(&rotate.stderr).contains("besides"), "{rotate:?}");

    a.kill9();
    util::wait_until("b leads", Duration::from_secs(30), || leader(&b_addr).as_deref() == Some("b"));
    util::wait_until("b serves as the leader", Duration::from_secs(30), || {
        util::davit(&through_b, cluster.path(), &["var", "get", "shop/db"]).status.success()
    });
    assert!(util::ok(&through_b, cluster.path(), &["var", "get", "shop/db"]).contains("password=hunter2"));
}
