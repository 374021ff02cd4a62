//! Chaos (issue 20): one `davit server` and three `davit agent` processes, a bounded loop of faults, and a
//! workload that keeps submitting, scaling and stopping jobs meanwhile.
//!
//! The harness, as root:
//! - a bridge on the host (`10.213.S.1`, the server binds there) and, per agent, a network namespace joined to
//!   it by a veth pair (`10.213.S.(10 + i)`); the agents run in them through `nsenter --net` (which, unlike
//!   `ip netns exec`, keeps the host's `/sys/fs/cgroup` in view). Interface and namespace names carry the test's
//!   pid; everything is deleted on drop, also after a panic;
//! - the server's data dir is a small tmpfs, so that the disk can be filled;
//! - a workload thread writes through the API (new jobs of 1–5 exec tasks, half of them with
//!   `disconnect.stop_after`, scales, stops) and records every write the server acknowledged;
//! - the faults, in a seeded random order (each kind once per round of five): `kill -9` of the server and of an
//!   agent (both started again on the same data dir and address), a partition of an agent (its host-side veth
//!   down for longer than the heartbeat TTL), a full disk under the server (a file fills the tmpfs while the
//!   workload writes), SIGSTOP/SIGCONT of an agent.
//!
//! After each fault heals, with the workload paused, one more write must be acknowledged (a cluster that takes
//! no writes has not recovered, however it looks); then the test waits (bounded) for convergence — every node
//! ready, and every job running exactly its count (0 once stopped; one allocation per index), both in the
//! server's view and as real task processes on the host (found in `/proc` by their `DAVIT_JOB_NAME`) — then
//! checks that every acknowledged write is still there. A violation is recorded and the run goes on (a cluster
//! that did not converge gets its server restarted first). At the end every job is stopped and checked once
//! more; the test prints the faults by kind, lost writes, duplicates and convergence times, and fails on any
//! violation.
//!
//! `DAVIT_CHAOS_DURATION` (default 90s; the long run uses 10m) bounds the loop, `DAVIT_CHAOS_SEED` repeats the
//! choices (order, targets and lengths of the faults, the writes), `DAVIT_CHAOS_FAULTS` (e.g.
//! `kill_server,partition`) injects only some kinds.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use davit_api::http::AllocListEntry;
use davit_api::objects::{ClientStatus, DesiredStatus, NodeStatus};
use davit_client::{Client, ClientError};
use util::{DAVIT, Process, pid_alive, require_root, runtime, signal, slot_port_range};

const AGENTS: usize = 3;
/// The server's hard bound on a silent node (`--max-heartbeat-ttl`); a partition lasts longer.
const MAX_HEARTBEAT_TTL: Duration = Duration::from_secs(5);
/// How long the cluster may take to converge after a fault heals.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(60);
/// The size of the server's data dir.
const SERVER_DISK_MIB: u32 = 64;
/// The workload keeps at most this many jobs running.
const LIVE_JOBS: usize = 5;
/// A job runs 1 to this many tasks.
const MAX_COUNT: u64 = 5;
/// A bound on the number of faults, whatever the duration.
const MAX_FAULTS: usize = 1000;

#[test]
fn faults_heal_without_lost_writes_or_duplicates() {
    if !require_root() {
        return;
    }
    let duration = std::env::var("DAVIT_CHAOS_DURATION").unwrap_or_else(|_| "90s".to_string());
    let duration = davit_api::Duration::parse(&duration).expect("DAVIT_CHAOS_DURATION").as_std();
    let seed = std::env::var("DAVIT_CHAOS_SEED").map_or_else(
        |_| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
        |seed| seed.parse().expect("DAVIT_CHAOS_SEED is a number"),
    );
    let kinds =
        std::env::var("DAVIT_CHAOS_FAULTS").map_or_else(|_| Fault::ALL.to_vec(), |names| names.split(',').map(Fault::parse).collect());
    println!("chaos: seed {seed} (DAVIT_CHAOS_SEED), duration {duration:?}, faults {kinds:?}");
    let mut rng = Rng(seed);

    let mut chaos = Chaos::start();
    let shared = Arc::new(Mutex::new(Workload::new(&chaos.addr, Rng(seed ^ 0x5eed), format!("chaos-{}-", std::process::id()))));
    let done = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (shared, done) = (Arc::clone(&shared), Arc::clone(&done));
        move || run_workload(&shared, &done)
    });

    let mut report = Report::default();
    let started = Instant::now();
    let mut order = Vec::new();
    while started.elapsed() < duration && report.faults() < MAX_FAULTS {
        if order.is_empty() {
            order = kinds.clone();
            rng.shuffle(&mut order);
        }
        let fault = order.pop().expect("a fault");
        lock(&shared).paused = false;
        // Writes are acknowledged before the fault too, and some race its start.
        std::thread::sleep(rng.between(Duration::from_millis(500), Duration::from_secs(2)));
        let (target, healed) = chaos.inject(fault, &mut rng, &shared);
        let mut workload = lock(&shared);
        workload.paused = true;
        // The healed cluster takes writes again (also when nothing else had to change), and carries them out.
        let writes = workload.write_acknowledged_by(healed + CONVERGENCE_BOUND);
        let check = chaos.check(&workload, healed, &format!("{fault:?} of {target}"), writes);
        report.record(&format!("{fault:?} of {target}"), Some(fault), check);
    }

    // The end: every job stopped, and no task left running.
    let mut workload = lock(&shared);
    let stopped = workload.stop_all();
    let check = chaos.check(&workload, Instant::now(), "the final stop of every job", stopped);
    report.record("the final stop of every job", None, check);
    done.store(true, Ordering::Relaxed);
    drop(workload);
    writer.join().expect("the workload thread");

    report.print(started.elapsed(), &lock(&shared));
    assert!(
        report.violations.is_empty(),
        "chaos found {} violation(s) (seed {seed}):\n{}",
        report.violations.len(),
        report.violations.join("\n\n")
    );
}

// ---- faults ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillServer,
    KillAgent,
    Partition,
    DiskFull,
    PauseAgent,
}

impl Fault {
    const ALL: [Fault; 5] = [Fault::KillServer, Fault::KillAgent, Fault::Partition, Fault::DiskFull, Fault::PauseAgent];

    /// `kill_server`, `kill_agent`, `partition`, `disk_full`, `pause_agent`.
    fn parse(name: &str) -> Fault {
        let found = Fault::ALL.into_iter().find(|fault| format!("{fault:?}").to_lowercase() == name.trim().replace('_', ""));
        found.unwrap_or_else(|| panic!("DAVIT_CHAOS_FAULTS: unknown fault {name:?}"))
    }
}

/// A server, three agents in their namespaces, and what they stand on. Dropped in field order: the processes
/// (after `drop` killed them and their tasks) print their logs if the test failed, then the network, the disk
/// and the directory go.
struct Chaos {
    server: Process,
    agents: Vec<Agent>,
    network: Network,
    disk: Tmpfs,
    dir: tempfile::TempDir,
    addr: String,
    server_args: Vec<String>,
    client: Client,
    runtime: tokio::runtime::Runtime,
}

/// An agent process and how to start it again.
struct Agent {
    process: Process,
    name: String,
    args: Vec<String>,
}

impl Chaos {
    fn start() -> Chaos {
        let dir = util::tempdir();
        let network = Network::create(AGENTS);
        let disk = Tmpfs::mount(&dir.path().join("server"), SERVER_DISK_MIB);
        // A port of this test's block: no other test, and no client socket, takes it while the server is down.
        let port: u16 = slot_port_range(4).split('-').next().and_then(|port| port.parse().ok()).expect("a port range");
        let bind = format!("{}:{port}", network.host_ip());
        let addr = format!("http://{bind}");
        let server_args = args(&[
            "server",
            "--bind",
            &bind,
            "--insecure-open-api",
            "--data-dir",
            &disk.path.display().to_string(),
            "--max-heartbeat-ttl",
            &format!("{}s", MAX_HEARTBEAT_TTL.as_secs()),
            // The test checks every acknowledged version: none may be collected.
            "--job-max-versions",
            "100000",
        ]);
        let server = spawn(&dir, "server", None, &server_args);
        let agents = (0..AGENTS)
            .map(|i| {
                let name = format!("node-{i}");
                let ip = network.agent_ip(i);
                let args = args(&[
                    "agent",
                    "--servers",
                    &addr,
                    "--data-dir",
                    &dir.path().join(&name).display().to_string(),
                    "--node-name",
                    &name,
                    "--bind",
                    &format!("{ip}:7647"),
                    "--advertise",
                    &ip,
                    "--port-range",
                    &slot_port_range(i as u16),
                    // The namespace's own loopback.
                    "--dns-bind",
                    "127.0.0.1:8600",
                    "--proxy-bind-ip",
                    "127.0.0.1",
                ]);
                Agent { process: spawn(&dir, &name, Some(&network.namespaces[i]), &args), name, args }
            })
            .collect();
        let client = Client::connect_with_timeout(&addr, None, None, Duration::from_secs(10));
        let chaos = Chaos { server, agents, network, disk, dir, addr, server_args, client, runtime: runtime() };
        util::wait_ready_nodes(&chaos.addr, AGENTS);
        chaos
    }

    /// Injects `fault`, holds it (the workload keeps writing), heals it; the faulty target and when it healed.
    fn inject(&mut self, fault: Fault, rng: &mut Rng, workload: &Mutex<Workload>) -> (String, Instant) {
        let agent = rng.below(AGENTS as u64) as usize;
        let target = match fault {
            Fault::KillServer | Fault::DiskFull => "the server".to_string(),
            _ => self.agents[agent].name.clone(),
        };
        match fault {
            Fault::KillServer => {
                self.server.kill9();
                std::thread::sleep(rng.between(Duration::from_millis(200), Duration::from_secs(4)));
                self.restart_server();
            }
            Fault::KillAgent => {
                self.agents[agent].process.kill9();
                std::thread::sleep(rng.between(Duration::from_millis(200), Duration::from_secs(6)));
                self.respawn_agent(agent);
            }
            Fault::Partition => {
                self.network.set_link(agent, false);
                std::thread::sleep(MAX_HEARTBEAT_TTL + rng.between(Duration::from_secs(1), Duration::from_secs(4)));
                self.network.set_link(agent, true);
            }
            Fault::DiskFull => {
                let filler = self.disk.fill();
                // Writes on a full disk: refused or kept, never acknowledged and lost.
                for _ in 0..3 {
                    lock(workload).step();
                }
                std::thread::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(3)));
                std::fs::remove_file(&filler).expect("remove the filler");
            }
            Fault::PauseAgent => {
                signal(self.agents[agent].process.pid(), "STOP");
                std::thread::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(8)));
                signal(self.agents[agent].process.pid(), "CONT");
            }
        }
        (target, Instant::now())
    }

    fn respawn_agent(&mut self, i: usize) {
        let agent = &self.agents[i];
        self.agents[i].process = spawn(&self.dir, &agent.name, Some(&self.network.namespaces[i]), &agent.args);
    }

    /// Waits for convergence (from `healed`), then checks the acknowledged writes. `writes` says whether the
    /// writes made after the heal were acknowledged (a cluster that takes none has not converged, however it
    /// looks). A process that died on its own is a violation, and it is started again so that the run goes on;
    /// so is a cluster that did not converge: its server is then restarted (what an operator would try first;
    /// the violation says whether it helped).
    fn check(&mut self, workload: &Workload, healed: Instant, after: &str, writes: Result<(), String>) -> Check {
        let mut violations = Vec::new();
        if let Ok(Some(status)) = self.server.child.try_wait() {
            violations.push(format!("after {after}: the server exited ({status}):\n{}", tail(&self.server.logs(), 40)));
            self.restart_server();
        }
        for i in 0..AGENTS {
            if let Ok(Some(status)) = self.agents[i].process.child.try_wait() {
                let agent = &self.agents[i];
                violations.push(format!("after {after}: {} exited ({status}):\n{}", agent.name, tail(&agent.process.logs(), 40)));
                self.respawn_agent(i);
            }
        }
        let converged = match writes {
            Ok(()) => self.converge(&workload.prefix, healed).map_err(|divergence| {
                (format!("no convergence within {CONVERGENCE_BOUND:?}:\n{}", divergence.describe()), divergence.duplicates())
            }),
            Err(problem) => Err((problem, 0)),
        };
        let (converged_in, duplicates) = match converged {
            Ok(elapsed) => (Some(elapsed), 0),
            Err((problem, duplicates)) => {
                self.restart_server();
                let repaired = match self.converge(&workload.prefix, Instant::now()) {
                    Ok(elapsed) => format!("a restart of the server repaired it in {} ms", elapsed.as_millis()),
                    Err(divergence) => format!("a restart of the server did not repair it:\n{}", divergence.describe()),
                };
                violations.push(format!("after {after}: {problem}\n  {repaired}"));
                (None, duplicates)
            }
        };
        let lost = self.lost_writes(&workload.acknowledged, after, &mut violations);
        Check { converged_in, duplicates, lost, violations }
    }

    fn restart_server(&mut self) {
        self.server.kill9();
        self.server = spawn(&self.dir, "server", None, &self.server_args);
    }

    /// Polls the API and `/proc` until every node is ready and every job runs its count; the time since
    /// `healed`, or what still differed at the bound.
    fn converge(&self, prefix: &str, healed: Instant) -> Result<Duration, Divergence> {
        let deadline = healed + CONVERGENCE_BOUND;
        let mut stopped = BTreeSet::new();
        loop {
            let divergence = self.divergence(prefix, &mut stopped);
            if divergence.is_converged() {
                return Ok(healed.elapsed());
            }
            if Instant::now() > deadline {
                return Err(divergence);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What differs now between the desired state (the server's jobs) and the running one (server and host).
    /// `stopped` caches the jobs seen stopped (the workload never runs a stopped job again).
    fn divergence(&self, prefix: &str, stopped: &mut BTreeSet<String>) -> Divergence {
        let mut divergence = Divergence::default();
        let (nodes, jobs, allocations) =
            match self.runtime.block_on(async { tokio::try_join!(self.client.nodes(), self.client.jobs(), self.client.allocations(None)) })
            {
                Ok(answers) => answers,
                Err(error) => {
                    divergence.unreachable = Some(error.to_string());
                    return divergence;
                }
            };
        let ready: BTreeSet<&str> = nodes.iter().filter(|node| node.status == NodeStatus::Ready).map(|node| node.id.as_str()).collect();
        divergence.not_ready = nodes.iter().filter(|node| node.status != NodeStatus::Ready).map(|node| node.name.clone()).collect();
        if nodes.len() < AGENTS {
            divergence.not_ready.push(format!("{} node(s) missing", AGENTS - nodes.len()));
        }
        let mut processes = task_processes(prefix);
        for entry in &jobs {
            let desired = if stopped.contains(&entry.name) {
                0
            } else {
                match self.runtime.block_on(self.client.job(&entry.name)) {
                    Ok(job) if job.stopped => {
                        stopped.insert(entry.name.clone());
                        0
                    }
                    Ok(job) => job.spec.groups.iter().map(|group| group.count).sum(),
                    Err(error) => {
                        divergence.unreachable = Some(error.to_string());
                        return divergence;
                    }
                }
            };
            let running: Vec<&AllocListEntry> = allocations
                .iter()
                .filter(|alloc| alloc.job_name == entry.name)
                .filter(|alloc| alloc.desired_status == DesiredStatus::Run && alloc.client_status == ClientStatus::Running)
                .collect();
            let indexes: BTreeSet<&str> = running.iter().map(|alloc| alloc.name.as_str()).collect();
            let running: Vec<String> = running
                .iter()
                .map(|alloc| {
                    let down = if ready.contains(alloc.node_id.as_str()) { "" } else { " (node down)" };
                    format!("{} {} on {}{down}", alloc.name, alloc.id, alloc.node_name)
                })
                .collect();
            let on_host = processes.remove(&entry.name).unwrap_or_default();
            if running.len() != desired as usize || indexes.len() != running.len() || on_host.len() != desired as usize {
                divergence.jobs.push(JobDivergence { job: entry.name.clone(), desired, running, on_host });
            }
        }
        // Tasks of jobs the server does not know (a write it refused must not run anything either).
        for (job, on_host) in processes {
            divergence.jobs.push(JobDivergence { job, desired: 0, running: Vec::new(), on_host });
        }
        divergence
    }

    /// Adds a violation for every acknowledged write the server no longer has; how many.
    fn lost_writes(&self, acknowledged: &[AckedWrite], after: &str, violations: &mut Vec<String>) -> usize {
        let jobs: BTreeSet<&str> = acknowledged.iter().map(|write| write.job.as_str()).collect();
        let mut lost = 0;
        for job in jobs {
            let (current, versions) =
                match self.runtime.block_on(async { tokio::try_join!(self.client.job(job), self.client.job_versions(job)) }) {
                    Ok(answers) => answers,
                    Err(error) => {
                        violations.push(format!("after {after}: cannot read job {job} to check its writes: {error}"));
                        continue;
                    }
                };
            for write in acknowledged.iter().filter(|write| write.job == job) {
                let kept = match write.kind {
                    WriteKind::Stop => current.stopped,
                    WriteKind::Run { version, count } | WriteKind::Scale { version, count } => {
                        current.version >= version && versions.iter().any(|job| job.version == version && job.spec.groups[0].count == count)
                    }
                };
                if !kept {
                    lost += 1;
                    let history: Vec<(u64, u32)> = versions.iter().map(|job| (job.version, job.spec.groups[0].count)).collect();
                    let now = format!("version {}, stopped {}, (version, count) {history:?}", current.version, current.stopped);
                    violations.push(format!("after {after}: an acknowledged write was lost: {write:?}; the job now: {now}"));
                }
            }
        }
        lost
    }
}

impl Drop for Chaos {
    /// Stops everything this test started: a paused agent is resumed (so that it can exit), the processes are
    /// killed, and so are the executors and tasks they leave behind (an agent leaves its tasks running by
    /// design).
    fn drop(&mut self) {
        for agent in &mut self.agents {
            signal(agent.process.pid(), "CONT");
            agent.process.kill9();
        }
        self.server.kill9();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let prefix = format!("chaos-{}-", std::process::id());
        for _ in 0..50 {
            let leftovers: Vec<u32> = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&pid| pid != std::process::id() && pid_alive(pid))
                .filter(|&pid| {
                    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).contains(&dir)
                        || env_var(pid, "DAVIT_JOB_NAME").is_some_and(|job| job.starts_with(&prefix))
                })
                .collect();
            if leftovers.is_empty() {
                break;
            }
            for pid in leftovers {
                signal(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Spawns `davit ARGS`, in the network namespace `namespace` if given, with its output in `<dir>/<name>.log`.
fn spawn(dir: &tempfile::TempDir, name: &str, namespace: Option<&str>, args: &[String]) -> Process {
    let log = dir.path().join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let mut command = match namespace {
        Some(namespace) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net=/run/netns/{namespace}")).arg("--").arg(DAVIT);
            command
        }
        None => Command::new(DAVIT),
    };
    let child = command
        .args(args)
        .env("DAVIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|error| panic!("spawning davit {args:?}: {error}"));
    Process { child, log, name: name.to_string() }
}

fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The task processes of the jobs named `<prefix>…` on the host, by job: `sleep` processes whose environment
/// names the job (tasks run as nobody in their own mount namespace, but root reads their `/proc`).
fn task_processes(prefix: &str) -> BTreeMap<String, Vec<TaskProcess>> {
    let mut tasks: BTreeMap<String, Vec<TaskProcess>> = BTreeMap::new();
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|entry| entry.file_name().to_str()?.parse().ok());
    for pid in pids {
        let is_sleep = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sleep");
        if let Some(job) = env_var(pid, "DAVIT_JOB_NAME").filter(|job| is_sleep && job.starts_with(prefix) && pid_alive(pid)) {
            let alloc = env_var(pid, "DAVIT_ALLOC_ID").unwrap_or_default();
            tasks.entry(job).or_default().push(TaskProcess { pid, alloc });
        }
    }
    tasks
}

/// A task process on the host and the allocation it belongs to.
struct TaskProcess {
    pid: u32,
    alloc: String,
}

impl std::fmt::Debug for TaskProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}", self.pid, self.alloc)
    }
}

/// The variable `name` in the environment of process `pid`.
fn env_var(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    environ
        .split(|&byte| byte == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

// ---- convergence ----

/// What kept the cluster from its desired state at one look.
#[derive(Debug, Default)]
struct Divergence {
    unreachable: Option<String>,
    not_ready: Vec<String>,
    jobs: Vec<JobDivergence>,
}

#[derive(Debug)]
struct JobDivergence {
    job: String,
    desired: u32,
    /// Running allocations, server view (`name id on node`; one per index when converged).
    running: Vec<String>,
    /// Task processes on the host.
    on_host: Vec<TaskProcess>,
}

impl Divergence {
    fn is_converged(&self) -> bool {
        self.unreachable.is_none() && self.not_ready.is_empty() && self.jobs.is_empty()
    }

    /// Allocations (server view) and task processes (host) beyond the jobs' counts.
    fn duplicates(&self) -> usize {
        self.jobs
            .iter()
            .map(|job| job.running.len().saturating_sub(job.desired as usize) + job.on_host.len().saturating_sub(job.desired as usize))
            .sum()
    }

    fn describe(&self) -> String {
        let mut text = String::new();
        if let Some(error) = &self.unreachable {
            text += &format!("  the server did not answer: {error}\n");
        }
        if !self.not_ready.is_empty() {
            text += &format!("  nodes not ready: {:?}\n", self.not_ready);
        }
        for job in &self.jobs {
            text += &format!(
                "  job {}: count {}, {} running allocation(s) {:?}, {} task process(es) {:?}\n",
                job.job,
                job.desired,
                job.running.len(),
                job.running,
                job.on_host.len(),
                job.on_host
            );
        }
        text
    }
}

// ---- the network and the disk ----

/// A bridge on the host and per agent a network namespace joined to it by a veth pair. Deleted on drop.
struct Network {
    /// `dvc<pid>`: names stay within the 15 bytes of an interface name (`dvc<pid>-h<i>`).
    prefix: String,
    subnet: u32,
    namespaces: Vec<String>,
}

impl Network {
    fn create(agents: usize) -> Network {
        let pid = std::process::id();
        let mut network = Network { prefix: format!("dvc{pid}"), subnet: 20 + pid % 200, namespaces: Vec::new() };
        let bridge = network.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", network.host_ip()), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..agents {
            let namespace = format!("{}-n{i}", network.prefix);
            ip(&["netns", "add", &namespace]);
            network.namespaces.push(namespace.clone());
            let inside = format!("{}-a{i}", network.prefix);
            ip(&["link", "add", &network.host_veth(i), "type", "veth", "peer", "name", &inside, "netns", &namespace]);
            ip(&["link", "set", &network.host_veth(i), "master", &bridge, "up"]);
            ip(&["-n", &namespace, "addr", "add", &format!("{}/24", network.agent_ip(i)), "dev", &inside]);
            ip(&["-n", &namespace, "link", "set", &inside, "up"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        }
        network
    }

    fn bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn host_veth(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn host_ip(&self) -> String {
        format!("10.213.{}.1", self.subnet)
    }

    fn agent_ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, 10 + i)
    }

    /// Cuts agent `i` off (its host-side veth down) or lets it back.
    fn set_link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.host_veth(i), if up { "up" } else { "down" }]);
    }
}

impl Drop for Network {
    /// Deleting a namespace deletes its veth and with it the host side.
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", namespace]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).status();
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// A tmpfs of a few MiB, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"]).arg(path).status().unwrap();
        assert!(status.success(), "mount a tmpfs at {}", path.display());
        Tmpfs { path: path.to_path_buf() }
    }

    /// Writes a file until the disk is full; its path.
    fn fill(&self) -> PathBuf {
        let path = self.path.join("chaos-filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling {}: {error}", path.display()),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

// ---- the workload ----

/// Jobs submitted, scaled and stopped through the API, and the writes the server acknowledged.
struct Workload {
    client: Client,
    runtime: tokio::runtime::Runtime,
    rng: Rng,
    /// Every job of this test is named `<prefix><n>`.
    prefix: String,
    next_job: u32,
    /// Jobs the workload may still scale or stop. A job whose run or stop was not acknowledged leaves it (the
    /// server may or may not have it): names are never reused, and a stopped job is never run again.
    live: Vec<String>,
    acknowledged: Vec<AckedWrite>,
    /// Writes that failed (refused, or no answer), by reason.
    failed: BTreeMap<String, usize>,
    /// While paused, the thread writes nothing (the convergence checks take the lock).
    paused: bool,
}

#[derive(Debug)]
struct AckedWrite {
    job: String,
    kind: WriteKind,
}

#[derive(Clone, Copy, Debug)]
enum WriteKind {
    Run { version: u64, count: u32 },
    Scale { version: u64, count: u32 },
    Stop,
}

fn run_workload(workload: &Mutex<Workload>, done: &AtomicBool) {
    while !done.load(Ordering::Relaxed) {
        let pace = {
            let mut workload = lock(workload);
            if workload.paused {
                Duration::from_millis(50)
            } else {
                workload.step();
                workload.rng.between(Duration::from_millis(200), Duration::from_millis(800))
            }
        };
        // The pace of the writes, not a synchronisation.
        std::thread::sleep(pace);
    }
}

fn lock(workload: &Mutex<Workload>) -> MutexGuard<'_, Workload> {
    workload.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Workload {
    fn new(addr: &str, rng: Rng, prefix: String) -> Workload {
        let client = Client::connect_with_timeout(addr, None, None, Duration::from_secs(10));
        Workload {
            client,
            runtime: runtime(),
            rng,
            prefix,
            next_job: 0,
            live: Vec::new(),
            acknowledged: Vec::new(),
            failed: BTreeMap::new(),
            paused: true,
        }
    }

    /// One write: a new job (while fewer than [`LIVE_JOBS`] run), a scale, or a stop; whether the server
    /// acknowledged it.
    fn step(&mut self) -> bool {
        let choice = self.rng.below(6);
        if self.live.len() < 2 || (self.live.len() < LIVE_JOBS && choice == 0) {
            return self.run_new();
        }
        let job = self.live[self.rng.below(self.live.len() as u64) as usize].clone();
        if choice == 1 {
            return self.stop(&job);
        }
        let count = 1 + self.rng.below(MAX_COUNT) as u32;
        match self.runtime.block_on(self.client.scale_job(&job, "g", count)) {
            Ok(answer) => self.acknowledge(job, WriteKind::Scale { version: answer.version, count }),
            Err(error) => self.refused(error),
        }
    }

    /// Writes until the server acknowledges one write, or `deadline` passes.
    fn write_acknowledged_by(&mut self, deadline: Instant) -> Result<(), String> {
        while !self.step() {
            if Instant::now() > deadline {
                return Err(format!("no write was acknowledged within {CONVERGENCE_BOUND:?}"));
            }
            // The pace of the retries, not a synchronisation.
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn run_new(&mut self) -> bool {
        let job = format!("{}{}", self.prefix, self.next_job);
        self.next_job += 1;
        let count = 1 + self.rng.below(MAX_COUNT) as u32;
        let fenced = self.rng.below(2) == 0;
        match self.runtime.block_on(self.client.register_job(&job_spec(&job, count, fenced), "chaos.yaml")) {
            Ok(answer) => {
                self.live.push(job.clone());
                self.acknowledge(job, WriteKind::Run { version: answer.version, count })
            }
            Err(error) => self.refused(error),
        }
    }

    /// Stops `job`; whether the server acknowledged it.
    fn stop(&mut self, job: &str) -> bool {
        self.live.retain(|live| live != job);
        match self.runtime.block_on(self.client.stop_job(job, false)) {
            Ok(_) => self.acknowledge(job.to_string(), WriteKind::Stop),
            Err(error) => self.refused(error),
        }
    }

    /// Records an acknowledged write; true.
    fn acknowledge(&mut self, job: String, kind: WriteKind) -> bool {
        self.acknowledged.push(AckedWrite { job, kind });
        true
    }

    /// Counts a failed write by its reason; false.
    fn refused(&mut self, error: ClientError) -> bool {
        let reason = match error {
            ClientError::Api { status, .. } => format!("HTTP {status}"),
            ClientError::Unreachable { .. } => "no answer".to_string(),
            other => other.to_string(),
        };
        *self.failed.entry(reason).or_default() += 1;
        false
    }

    /// Stops every job of the test the server has (also those whose run was not acknowledged), retrying each
    /// for a while (the server may have just been restarted).
    fn stop_all(&mut self) -> Result<(), String> {
        self.live.clear();
        let deadline = Instant::now() + CONVERGENCE_BOUND;
        let jobs = loop {
            match self.runtime.block_on(self.client.jobs()) {
                Ok(jobs) => break jobs,
                Err(error) if Instant::now() > deadline => return Err(format!("the job list: {error}")),
                // The pace of the retries, not a synchronisation.
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let ours: Vec<String> = jobs.into_iter().map(|job| job.name).filter(|job| job.starts_with(&self.prefix)).collect();
        for job in ours {
            while !self.stop(&job) {
                if Instant::now() > deadline {
                    return Err(format!("the stop of {job} was not acknowledged within {CONVERGENCE_BOUND:?}"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }
}

/// An exec group of `count` `sleep`s; `fenced`: with `disconnect.stop_after`.
fn job_spec(name: &str, count: u32, fenced: bool) -> String {
    let disconnect = if fenced { "\n    disconnect: {stop_after: 4s}" } else { "" };
    format!(
        r#"name: {name}
groups:
  - name: g
    count: {count}{disconnect}
    reschedule: {{delay: 1s, delay_function: constant, unlimited: true}}
    tasks:
      - name: main
        driver: exec
        config: {{command: /bin/sleep, args: ["3600"]}}
        resources: {{cpu: 20, memory: 16}}
"#
    )
}

// ---- the report ----

/// What one check after a fault found.
struct Check {
    /// The time from the heal to convergence; `None`: not within the bound.
    converged_in: Option<Duration>,
    /// Allocations (server view) and task processes (host) beyond their job's count when the bound passed.
    duplicates: usize,
    lost: usize,
    violations: Vec<String>,
}

#[derive(Default)]
struct Report {
    injected: BTreeMap<Fault, usize>,
    convergence: BTreeMap<Fault, Vec<Duration>>,
    duplicates: usize,
    lost: usize,
    violations: Vec<String>,
}

impl Report {
    fn faults(&self) -> usize {
        self.injected.values().sum()
    }

    /// Records and prints the check `after` a fault (`None`: the final check).
    fn record(&mut self, after: &str, fault: Option<Fault>, check: Check) {
        match check.converged_in {
            Some(elapsed) => println!("chaos: {after}: converged in {} ms", elapsed.as_millis()),
            None => println!("chaos: {after}: did not converge"),
        }
        for violation in &check.violations {
            println!("chaos: VIOLATION {violation}");
        }
        if let Some(fault) = fault {
            *self.injected.entry(fault).or_default() += 1;
            self.convergence.entry(fault).or_default().extend(check.converged_in);
        }
        self.duplicates += check.duplicates;
        self.lost += check.lost;
        self.violations.extend(check.violations);
    }

    fn print(&self, elapsed: Duration, workload: &Workload) {
        println!("chaos summary: {} fault(s) in {} s", self.faults(), elapsed.as_secs());
        for fault in Fault::ALL {
            let mut times = self.convergence.get(&fault).cloned().unwrap_or_default();
            times.sort();
            let median = (!times.is_empty()).then(|| (times[(times.len() - 1) / 2] + times[times.len() / 2]) / 2);
            let millis = |time: Option<Duration>| time.map_or("-".to_string(), |time| format!("{} ms", time.as_millis()));
            println!(
                "  {:<11} injected {:>3}, converged {:>3} time(s) after: median {}, max {}",
                format!("{fault:?}"),
                self.injected.get(&fault).copied().unwrap_or(0),
                times.len(),
                millis(median),
                millis(times.last().copied())
            );
        }
        println!(
            "  writes: {} acknowledged, failed {:?}; acknowledged writes lost: {}; duplicates after convergence: {}; violations: {}",
            workload.acknowledged.len(),
            workload.failed,
            self.lost,
            self.duplicates,
            self.violations.len()
        );
    }
}

// ---- randomness ----

/// SplitMix64: a seeded, repeatable order of faults and writes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + Duration::from_millis(self.below((high - low).as_millis() as u64 + 1))
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}
