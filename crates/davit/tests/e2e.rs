//! End to end: real `davit dev` / `davit server` / `davit agent` processes running real exec tasks.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use davit_api::http::JobStatusResponse;
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus};
use util::{Dev, http_get, pid_alive, require_root, runtime, wait_job, wait_ready_nodes};

const WEB_AND_WORKER: &str = r#"
name: e2e
groups:
  - name: web
    count: 3
    network:
      ports: [{name: http}]
    tasks:
      - name: server
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "echo $DAVIT_ALLOC_NAME > local/index.html; echo listening on ${port.http}; exec /bin/busybox httpd -f -p 127.0.0.1:${port.http} -h local"]
        env: {GREETING: hello}
        resources: {cpu: 50, memory: 32}
  - name: worker
    count: 1
    tasks:
      - name: ticker
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"]
        resources: {cpu: 50, memory: 16}
"#;

fn running(status: &JobStatusResponse, group: &str) -> usize {
    status
        .allocations
        .iter()
        .filter(|a| a.group == group && a.client_status == ClientStatus::Running && a.desired_status == DesiredStatus::Run)
        .count()
}

fn allocations(dev: &Dev, status: &JobStatusResponse, group: &str) -> Vec<Allocation> {
    let runtime = runtime();
    let client = dev.client();
    status
        .allocations
        .iter()
        .filter(|a| a.group == group && a.desired_status == DesiredStatus::Run && a.client_status == ClientStatus::Running)
        .map(|a| runtime.block_on(client.allocation(&a.id)).unwrap())
        .collect()
}

fn task_pid(alloc: &Allocation, task: &str) -> u32 {
    alloc.task_states[task].pid.unwrap_or_else(|| panic!("task {task} of {} has no pid: {alloc:#?}", alloc.id))
}

#[test]
fn dev_runs_scales_logs_and_stops_a_two_group_job() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let spec = dev.write("e2e.yaml", WEB_AND_WORKER);
    let out = dev.ok(&["job", "run", &spec]);
    assert!(out.contains("all allocations running"), "{out}");

    // Four processes with the right env and ports; each web server answers on its port.
    let status = wait_job(&dev.addr, "e2e", Duration::from_secs(30), |s| running(s, "web") == 3 && running(s, "worker") == 1);
    let web = allocations(&dev, &status, "web");
    let worker = allocations(&dev, &status, "worker");
    assert_eq!((web.len(), worker.len()), (3, 1));
    let mut ports = Vec::new();
    for alloc in &web {
        let pid = task_pid(alloc, "server");
        assert!(pid_alive(pid));
        let port = alloc.resources.ports.iter().find(|p| p.label == "http").expect("http port").value;
        ports.push(port);
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        for expected in [format!("DAVIT_PORT_http={port}"), format!("DAVIT_ALLOC_ID={}", alloc.id), "GREETING=hello".to_string()] {
            assert!(environ.split('\0').any(|var| var == expected), "{expected} missing from the env of pid {pid}");
        }
        let response = http_get(port);
        assert!(response.starts_with("HTTP/1.") && response.contains(&alloc.name), "{response}");
        let logs = dev.ok(&["alloc", "logs", &alloc.id[..8]]);
        assert!(logs.contains(&format!("listening on {port}")), "{logs}");
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "every allocation gets its own host port");
    let worker_pid = task_pid(&worker[0], "ticker");

    // `alloc logs -f` keeps following new output.
    let mut follower = Command::new(util::DAVIT)
        .args(["alloc", "logs", "-f", &worker[0].id])
        .env("DAVIT_ADDR", &dev.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first: u64 = lines.recv_timeout(Duration::from_secs(10)).unwrap().trim_start_matches("tick ").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut newest = first;
    while newest < first + 10 {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("followed log lines keep coming");
        newest = line.trim_start_matches("tick ").parse().unwrap();
    }
    let _ = follower.kill();
    let _ = follower.wait();
    // `--tail N` starts N lines before the end: two consecutive ticks, at least as new as the followed one.
    let tail = dev.ok(&["alloc", "logs", "--tail", "2", &worker[0].id]);
    let ticks: Vec<u64> = tail.lines().map(|line| line.trim_start_matches("tick ").parse().unwrap()).collect();
    assert!(ticks.len() == 2 && ticks[1] == ticks[0] + 1 && ticks[1] >= newest, "{tail:?}");

    // A dry run of scaling web to 4: one placement, the rest moves to the new version in place; nothing
    // changes. A worker too big for the node is reported, with exit code 1.
    let bigger = dev.write("e2e-plan.yaml", &WEB_AND_WORKER.replace("count: 3", "count: 4"));
    let plan = dev.ok(&["job", "plan", &bigger]);
    assert!(plan.contains("job e2e: version 0 → 1") && plan.contains("~ groups[web].count: 3 => 4"), "{plan}");
    assert!(plan.contains("group web: 1 to place, 3 in place, 0 to replace, 0 to stop"), "{plan}");
    assert!(plan.contains("+ e2e.web[3] on ") && plan.contains(": score ") && plan.contains("best of 1 scored"), "{plan}");
    assert_eq!(dev.ok(&["job", "plan", "--verbose", &bigger]), plan, "no runner-ups on a one-node cluster");
    // The worker fits the node, but not next to web's three allocations.
    let node_memory = runtime().block_on(dev.client().nodes()).unwrap()[0].memory_total;
    let too_big = dev.write("e2e-too-big.yaml", &WEB_AND_WORKER.replace("memory: 16", &format!("memory: {}", node_memory - 50)));
    let output = dev.davit(&["job", "plan", &too_big]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("! 1 not placed: memory exhausted on 1 node"), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 allocation(s) of job e2e could not be placed"));
    // Larger than the node itself: refused before any planning, at the spec's line.
    let oversized = dev.write("e2e-oversized.yaml", &WEB_AND_WORKER.replace("memory: 16", "memory: 16000000"));
    let output = dev.davit(&["job", "plan", &oversized]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs 16000000 MiB of memory; the largest node has"), "{stderr}");
    assert_eq!(runtime().block_on(dev.client().job("e2e")).unwrap().version, 0, "a dry run registered a version");

    // Scale up to 5, then down to 2: the three stopped processes are gone.
    dev.ok(&["job", "scale", "e2e", "web", "5"]);
    let status = wait_job(&dev.addr, "e2e", Duration::from_secs(30), |s| running(s, "web") == 5);
    let five = allocations(&dev, &status, "web");
    let five_pids: Vec<u32> = five.iter().map(|a| task_pid(a, "server")).collect();
    assert!(five_pids.iter().all(|pid| pid_alive(*pid)));
    dev.ok(&["job", "scale", "e2e", "web", "2"]);
    let status = wait_job(&dev.addr, "e2e", Duration::from_secs(30), |s| {
        running(s, "web") == 2
            && s.allocations
                .iter()
                .filter(|a| a.group == "web" && a.desired_status == DesiredStatus::Stop)
                .all(|a| a.client_status.is_terminal())
    });
    let two: Vec<u32> = allocations(&dev, &status, "web").iter().map(|a| task_pid(a, "server")).collect();
    for pid in &five_pids {
        assert_eq!(pid_alive(*pid), two.contains(pid), "pid {pid}: only the two remaining web tasks may live");
    }

    // History and diff.
    let history = dev.ok(&["job", "history", "e2e"]);
    for version in ["0", "1", "2"] {
        assert!(history.lines().any(|l| l.starts_with(version)), "{history}");
    }
    let diff = dev.ok(&["job", "diff", "e2e", "0", "1"]);
    assert!(diff.contains("groups[web].count: 3 => 5"), "{diff}");

    // Stop: every process is gone.
    dev.ok(&["job", "stop", "e2e"]);
    wait_job(&dev.addr, "e2e", Duration::from_secs(30), |s| s.allocations.iter().all(|a| a.client_status.is_terminal()));
    for pid in two.iter().chain([&worker_pid]) {
        assert!(!pid_alive(*pid), "pid {pid} still runs after job stop");
    }
    let status = dev.ok(&["job", "status", "e2e"]);
    assert!(status.contains("dead"), "{status}");

    // Garbage collection, forced: the stopped job and everything it ran leave the store.
    let collected = dev.ok(&["operator", "gc", "--force"]);
    assert!(collected.contains("collected 1 job(s)"), "{collected}");
    assert_eq!(dev.davit(&["job", "status", "e2e"]).status.code(), Some(1), "the job is gone");
}

#[test]
fn failing_task_is_restarted_per_policy_then_fails_with_events() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let spec = dev.write(
        "fail.yaml",
        r#"
name: flaky
groups:
  - name: g
    restart: {attempts: 2, interval: 1m, delay: 100ms, mode: fail}
    tasks:
      - name: t
        driver: exec
        config: {command: /bin/sh, args: ["-c", "echo about to fail; exit 3"]}
"#,
    );
    dev.ok(&["job", "run", "--detach", &spec]);
    let status =
        wait_job(&dev.addr, "flaky", Duration::from_secs(30), |s| s.allocations.iter().any(|a| a.client_status == ClientStatus::Failed));
    let alloc = runtime().block_on(dev.client().allocation(&status.allocations[0].id)).unwrap();
    let task = &alloc.task_states["t"];
    assert!(task.failed);
    assert_eq!(task.restarts, 2);
    let kinds: Vec<&str> = task.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Started").count(), 3, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "Restarting").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "Terminated").count(), 3, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"Not Restarting"), "{kinds:?}");
    assert!(task.events.iter().filter(|e| e.kind == "Terminated").all(|e| e.exit_code == Some(3)));
    let text = dev.ok(&["alloc", "status", &alloc.id]);
    assert!(text.contains("Not Restarting") && text.contains("Restarting"), "{text}");
}

#[test]
fn memory_limit_is_enforced_with_an_oom_event() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let spec = dev.write(
        "oom.yaml",
        r#"
name: hungry
type: batch
groups:
  - name: g
    restart: {attempts: 0, mode: fail}
    tasks:
      - name: eat
        driver: exec
        config: {command: /bin/sh, args: ["-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived ${#x}"]}
        resources: {memory: 32}
"#,
    );
    dev.ok(&["job", "run", "--detach", &spec]);
    let status =
        wait_job(&dev.addr, "hungry", Duration::from_secs(60), |s| s.allocations.iter().any(|a| a.client_status == ClientStatus::Failed));
    let alloc = runtime().block_on(dev.client().allocation(&status.allocations[0].id)).unwrap();
    let events = &alloc.task_states["eat"].events;
    let oom = events.iter().find(|e| e.kind == "OOM Killed").unwrap_or_else(|| panic!("no OOM event: {events:#?}"));
    assert!(oom.message.contains("32 MiB"), "{}", oom.message);
    let logs = dev.ok(&["alloc", "logs", &alloc.id]);
    assert!(!logs.contains("survived"), "the task must not outlive its limit: {logs}");
}

#[test]
fn kill_9_after_job_run_keeps_the_job_and_its_history() {
    if !require_root() {
        return;
    }
    let mut dev = Dev::start();
    let spec = dev.write(
        "keep.yaml",
        "name: keep\ngroups:\n  - name: g\n    count: 2\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sleep, args: ['1000']}\n        resources: {memory: 16}\n",
    );
    dev.ok(&["job", "run", &spec]);
    dev.ok(&["job", "scale", "keep", "g", "1"]);
    let before = runtime().block_on(dev.client().job_versions("keep")).unwrap();
    assert_eq!(before.len(), 2);
    let pids: Vec<u32> = {
        let status = wait_job(&dev.addr, "keep", Duration::from_secs(10), |s| running(s, "g") == 1);
        allocations(&dev, &status, "g").iter().map(|a| task_pid(a, "t")).collect()
    };

    dev.process.as_mut().unwrap().kill9();
    dev.launch();

    let after = runtime().block_on(dev.client().job_versions("keep")).unwrap();
    assert_eq!(after.iter().map(|j| j.version).collect::<Vec<_>>(), vec![1, 0]);
    assert_eq!(after[0].spec.groups[0].count, 1);
    // The restarted agent found its task again: same pid, still running, not restarted.
    let status = wait_job(&dev.addr, "keep", Duration::from_secs(30), |s| running(s, "g") == 1);
    let again: Vec<u32> = allocations(&dev, &status, "g").iter().map(|a| task_pid(a, "t")).collect();
    assert_eq!(again, pids);
    dev.ok(&["job", "stop", "keep"]);
    for pid in pids {
        assert!(!pid_alive(pid));
    }
}

#[test]
fn separate_server_and_agents_survive_an_agent_restart() {
    if !require_root() {
        return;
    }
    let cluster = util::Cluster::start();
    let (addr, dir) = (cluster.addr.clone(), cluster.path());
    let one_args = cluster.agent_args("one", 0);
    let mut one = cluster.spawn_agent("agent-one", &one_args);
    let _two = cluster.spawn_agent("agent-two", &cluster.agent_args("two", 1));
    wait_ready_nodes(&addr, 2);
    let nodes = util::ok(&addr, dir, &["node", "ls"]);
    assert!(nodes.contains("one") && nodes.contains("two"), "{nodes}");

    let spec = dir.join("spread.yaml");
    std::fs::write(
        &spec,
        "name: spread\ngroups:\n  - name: g\n    count: 4\n    restart: {delay: 100ms}\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sleep, args: ['1000']}\n        resources: {cpu: 800, memory: 16}\n",
    )
    .unwrap();
    util::ok(&addr, dir, &["job", "run", &spec.display().to_string()]);
    let status = wait_job(&addr, "spread", Duration::from_secs(30), |s| running(s, "g") == 4);
    let client = davit_client::Client::new(&addr);
    let rt = runtime();
    let on_one: Vec<Allocation> =
        status.allocations.iter().map(|a| rt.block_on(client.allocation(&a.id)).unwrap()).filter(|a| a.node_name == "one").collect();
    assert!(!on_one.is_empty(), "some allocations land on node one: {status:#?}");

    // Kill the agent hard and start it again: its tasks keep their pids and are tracked again.
    one.kill9();
    for alloc in &on_one {
        assert!(pid_alive(task_pid(alloc, "t")), "tasks outlive their agent");
    }
    let _one_again = cluster.spawn_agent("agent-one-again", &one_args);
    wait_ready_nodes(&addr, 2);
    let victim = &on_one[0];
    let victim_pid = task_pid(victim, "t");
    // The agent is back (node ready again) and reports the same pid: re-attached, not restarted.
    let alloc = rt.block_on(client.allocation(&victim.id)).unwrap();
    assert_eq!(task_pid(&alloc, "t"), victim_pid, "re-attached, not restarted");
    assert_eq!(alloc.task_states["t"].restarts, 0);
    // Tracked again: when the task dies, the new agent process notices and restarts it.
    util::signal(victim_pid, "KILL");
    let restarted = util::wait_alloc(&addr, &victim.id, Duration::from_secs(30), |alloc| {
        let state = &alloc.task_states["t"];
        state.restarts >= 1 && state.pid.is_some_and(|pid| pid != victim_pid && pid_alive(pid))
    });
    assert!(restarted.task_states["t"].events.iter().any(|e| e.kind == "Restarting"));
    util::ok(&addr, dir, &["job", "stop", "spread"]);
}

#[test]
fn node_drain_moves_allocations_to_the_other_node_and_keeps_it_ineligible() {
    if !require_root() {
        return;
    }
    let cluster = util::Cluster::start();
    let (addr, dir) = (cluster.addr.clone(), cluster.path());
    let agent = |name: &str, slot: u16| cluster.spawn_agent(&format!("agent-{name}"), &cluster.agent_args(name, slot));
    let _one = agent("one", 0);
    wait_ready_nodes(&addr, 1);
    let spec = dir.join("sleepy.yaml");
    std::fs::write(
        &spec,
        "name: sleepy\ngroups:\n  - name: g\n    count: 3\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sleep, args: ['1000']}\n        resources: {cpu: 100, memory: 16}\n",
    )
    .unwrap();
    util::ok(&addr, dir, &["job", "run", &spec.display().to_string()]);
    let _two = agent("two", 1);
    wait_ready_nodes(&addr, 2);

    // Not a TTY: one plain progress line per change, then the outcome.
    let output = util::ok(&addr, dir, &["node", "drain", "one", "--deadline", "2m"]);
    assert!(output.contains("==> node one") && output.contains("is draining"), "{output}");
    // (The drainer may stop the first allocation before the command shows its first line.)
    for name in ["sleepy.g[0]", "sleepy.g[1]", "sleepy.g[2]"] {
        assert!(output.contains(&format!("1 stopping ({name})")), "one at a time, each shown: {output}");
    }
    assert!(output.trim_end().ends_with("==> drain of node one complete; it stays ineligible"), "{output}");
    assert!(!output.contains('\r'), "{output:?}");
    let status = wait_job(&addr, "sleepy", Duration::from_secs(30), |s| running(s, "g") == 3);
    let client = davit_client::Client::new(&addr);
    let rt = runtime();
    for alloc in status.allocations.iter().filter(|a| a.desired_status == DesiredStatus::Run) {
        assert_eq!(alloc.node_name, "two", "{status:#?}");
    }
    let one = rt.block_on(client.nodes()).unwrap().into_iter().find(|node| node.name == "one").unwrap();
    assert_eq!((one.eligibility, one.draining, one.running_allocs), (davit_api::objects::NodeEligibility::Ineligible, false, 0));
    let listing = util::ok(&addr, dir, &["node", "ls"]);
    assert!(listing.lines().any(|line| line.contains(" one ") && line.contains("ineligible")), "{listing}");

    // A detached drain shows up in `node ls`; cancel it, then make the node eligible again.
    let output = util::ok(&addr, dir, &["node", "drain", "two", "--detach", "--deadline", "10m"]);
    assert!(output.contains("is draining"), "{output}");
    let listing = util::ok(&addr, dir, &["node", "ls"]);
    assert!(listing.contains("ineligible (draining)"), "{listing}");
    let refused = util::davit(&addr, dir, &["node", "eligibility", "two", "--enable"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    util::ok(&addr, dir, &["node", "drain", "two", "--disable"]);
    util::ok(&addr, dir, &["node", "eligibility", "two", "--enable"]);
    util::ok(&addr, dir, &["node", "eligibility", "one", "--enable"]);
    let nodes = rt.block_on(client.nodes()).unwrap();
    assert!(nodes.iter().all(|node| node.eligibility == davit_api::objects::NodeEligibility::Eligible && !node.draining), "{nodes:#?}");
    let missing = util::davit(&addr, dir, &["node", "drain", "no-such-node"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");

    // `--ignore-system` leaves a system job's allocation running, and the drain is complete without it.
    let system = dir.join("everywhere.yaml");
    std::fs::write(
        &system,
        "name: everywhere\ntype: system\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sleep, args: ['1000']}\n        resources: {cpu: 50, memory: 16}\n",
    )
    .unwrap();
    util::ok(&addr, dir, &["job", "run", &system.display().to_string()]);
    wait_job(&addr, "everywhere", Duration::from_secs(30), |s| running(s, "g") == 2);
    let output = util::ok(&addr, dir, &["node", "drain", "one", "--ignore-system", "--deadline", "1m"]);
    assert!(output.trim_end().ends_with("==> drain of node one complete; it stays ineligible"), "{output}");
    assert!(!output.contains("everywhere.g[0]"), "the system allocation is not to migrate: {output}");
    let status = wait_job(&addr, "everywhere", Duration::from_secs(30), |s| running(s, "g") == 2);
    assert!(status.allocations.iter().any(|a| a.node_name == "one" && a.desired_status == DesiredStatus::Run), "{status:#?}");
    util::ok(&addr, dir, &["job", "stop", "everywhere"]);
    util::ok(&addr, dir, &["job", "stop", "sleepy"]);
}

/// A client command whose reader went away (`davit … | head`) ends by SIGPIPE, as other Unix tools do,
/// not with a panic.
#[test]
fn a_client_command_ends_quietly_when_its_output_is_closed() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello.yaml");
    let output = Command::new(util::DAVIT).args(["job", "validate", example]).stdout(writer).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    const SIGPIPE: i32 = 13;
    assert_eq!(output.status.signal(), Some(SIGPIPE), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Bad flags are a user error (exit 1, as the README's exit codes say); help and version are not errors.
#[test]
fn bad_flags_exit_1_and_help_exits_0() {
    let run = |args: &[&str]| Command::new(util::DAVIT).args(args).env("DAVIT_ADDR", "http://127.0.0.1:9").output().unwrap();
    for args in [&["job", "run", "--bogus", "x"][..], &["job", "status", "hello", "-o", "yaml"], &["node", "eligibility", "one"]] {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
    }
    for args in [&["--help"][..], &["job", "--help"], &["--version"]] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(!output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn an_agent_advertises_the_address_it_is_told_or_the_one_it_binds() {
    if !require_root() {
        return;
    }
    let cluster = util::Cluster::start();
    let mut args = cluster.agent_args("a", 0);
    args.extend(["--advertise".to_string(), "127.0.0.2".to_string()]);
    let _advertised = cluster.spawn_agent("a", &args);
    let _bound = cluster.spawn_agent("b", &cluster.agent_args("b", 1));
    util::wait_ready_nodes(&cluster.addr, 2);
    let client = davit_client::Client::new(&cluster.addr);
    let nodes = runtime().block_on(client.nodes()).unwrap();
    let addr_of = |name: &str| {
        let id = &nodes.iter().find(|node| node.name == name).unwrap().id;
        runtime().block_on(client.node(id)).unwrap().http_addr
    };
    assert!(addr_of("a").starts_with("http://127.0.0.2:"), "{}", addr_of("a"));
    assert!(addr_of("b").starts_with("http://127.0.0.1:"), "{}", addr_of("b"));
}
