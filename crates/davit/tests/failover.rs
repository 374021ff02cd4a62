//! Failure detection end to end: a `davit server` and several `davit agent` processes; an agent is
//! killed with SIGKILL and its allocations must run elsewhere within a bound; heartbeats under CPU
//! load must not raise false alarms.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use davit_api::http::JobStatusResponse;
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, NodeStatus};
use util::{Cluster, Process, pid_alive, require_root, runtime, wait_job, wait_ready_nodes};

/// The tests of this file measure time and one loads every core: under `cargo test` they take turns
/// (nextest runs them alone, see `.config/nextest.toml`).
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Replacements must run within this long of the victim's last heartbeat.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);

fn running_allocs(status: &JobStatusResponse) -> Vec<&davit_api::http::AllocListEntry> {
    status.allocations.iter().filter(|a| a.desired_status == DesiredStatus::Run && a.client_status == ClientStatus::Running).collect()
}

fn task_pid(alloc: &Allocation, task: &str) -> u32 {
    alloc.task_states[task].pid.unwrap_or_else(|| panic!("task {task} of {} has no pid: {alloc:#?}", alloc.id))
}

#[test]
fn killed_agent_is_replaced_within_the_bound_and_cleans_up_on_return() {
    if !require_root() {
        return;
    }
    let _alone = alone();
    let cluster = Cluster::start();
    let names = ["one", "two", "three"];
    let args: Vec<Vec<String>> = names.iter().enumerate().map(|(slot, name)| cluster.agent_args(name, slot as u16)).collect();
    let mut agents: Vec<Process> =
        names.iter().zip(&args).map(|(name, args)| cluster.spawn_agent(&format!("agent-{name}"), args)).collect();
    wait_ready_nodes(&cluster.addr, 3);

    // 700 MHz each: a 2-core node (2000) takes two, so three allocations always fit on two nodes.
    let spec = cluster.path().join("failover.yaml");
    std::fs::write(
        &spec,
        "name: failover\ngroups:\n  - name: g\n    count: 3\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sleep, args: ['1000']}\n        resources: {cpu: 700, memory: 16}\n",
    )
    .unwrap();
    util::ok(&cluster.addr, cluster.path(), &["job", "run", &spec.display().to_string()]);
    let status = wait_job(&cluster.addr, "failover", Duration::from_secs(30), |s| running_allocs(s).len() == 3);
    let client = davit_client::Client::new(&cluster.addr);
    let rt = runtime();
    let allocs: Vec<Allocation> = running_allocs(&status).iter().map(|a| rt.block_on(client.allocation(&a.id)).unwrap()).collect();
    let victim_node = allocs[0].node_name.clone();
    let victim_allocs: Vec<&Allocation> = allocs.iter().filter(|a| a.node_name == victim_node).collect();
    let victim_pids: Vec<u32> = victim_allocs.iter().map(|a| task_pid(a, "t")).collect();
    let victim_ids: Vec<String> = victim_allocs.iter().map(|a| a.id.clone()).collect();
    let victim_index = names.iter().position(|name| *name == victim_node).expect("a known node");
    eprintln!("failover: killing agent {victim_node} with {} allocation(s)", victim_ids.len());

    // SIGKILL: the last heartbeat was at most one interval before this moment.
    agents[victim_index].kill9();
    let killed_at = Instant::now();
    let replaced = wait_job(&cluster.addr, "failover", Duration::from_secs(15), |s| {
        let running = running_allocs(s);
        running.len() == 3 && running.iter().all(|a| a.node_name != victim_node)
    });
    let failover = killed_at.elapsed();
    println!("failover: replaced in {} ms", failover.as_millis());
    for id in &victim_ids {
        let lost = replaced.allocations.iter().find(|a| &a.id == id).expect("the victim's allocation is still listed");
        assert_eq!((lost.desired_status, lost.client_status), (DesiredStatus::Stop, ClientStatus::Lost), "{lost:#?}");
    }
    let node = rt.block_on(client.node(&victim_node)).unwrap();
    assert_eq!(node.status, NodeStatus::Down);
    assert!(node.status_description.starts_with("phi "), "{}", node.status_description);
    eprintln!("failover: node {victim_node}: {}", node.status_description);
    assert!(failover <= FAILOVER_BOUND, "replacements took {failover:?} (bound {FAILOVER_BOUND:?})");
    for pid in &victim_pids {
        assert!(pid_alive(*pid), "the victim's task outlives its agent until the agent returns");
    }

    // The agent returns on the same data dir: it re-attaches its old tasks, sees they were stopped
    // (desired stop, lost) and stops them; the job keeps exactly three running allocations.
    agents[victim_index] = cluster.spawn_agent(&format!("agent-{victim_node}-again"), &args[victim_index]);
    wait_ready_nodes(&cluster.addr, 3);
    let converged = wait_job(&cluster.addr, "failover", Duration::from_secs(30), |s| {
        s.allocations
            .iter()
            .filter(|a| victim_ids.contains(&a.id))
            .all(|a| matches!(a.client_status, ClientStatus::Complete | ClientStatus::Failed))
    });
    let running = running_allocs(&converged);
    assert_eq!(running.len(), 3, "{converged:#?}");
    assert!(running.iter().all(|a| !victim_ids.contains(&a.id)), "{converged:#?}");
    for pid in victim_pids {
        assert!(!pid_alive(pid), "the old task {pid} was stopped, no duplicate");
    }
    util::ok(&cluster.addr, cluster.path(), &["job", "stop", "failover"]);
}

#[test]
fn no_false_down_under_load() {
    if !require_root() {
        return;
    }
    let _alone = alone();
    let soak = Duration::from_secs(std::env::var("DAVIT_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10));
    let cluster = Cluster::start();
    let _agents: Vec<Process> = ["soak-a", "soak-b"]
        .iter()
        .enumerate()
        .map(|(slot, name)| cluster.spawn_agent(name, &cluster.agent_args(name, 3 + slot as u16)))
        .collect();
    wait_ready_nodes(&cluster.addr, 2);
    let client = davit_client::Client::new(&cluster.addr);
    let rt = runtime();

    // One spinning thread per core for the whole soak.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..cores)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let deadline = Instant::now() + soak;
                let mut x = 0u64;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                x
            })
        })
        .collect();

    // Follow the node list (it changes only when a node's status does) for the whole soak.
    let deadline = Instant::now() + soak;
    let mut index = 0;
    let mut changes = 0;
    let mut down = Vec::new();
    while Instant::now() < deadline {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(5)).max(Duration::from_millis(1));
        let nodes = rt.block_on(client.nodes_blocking(index, wait)).unwrap();
        if nodes.index != index {
            changes += 1;
        }
        index = nodes.index;
        for node in nodes.value.iter().filter(|node| node.status != NodeStatus::Ready) {
            let full = rt.block_on(client.node(&node.id)).unwrap();
            down.push(format!("{} {:?}: {}", full.name, full.status, full.status_description));
        }
        if !down.is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    eprintln!(
        "soak: {} s of CPU load on {cores} core(s), {changes} node-list change(s), no node down: {}",
        soak.as_secs(),
        down.is_empty()
    );
    assert!(down.is_empty(), "false alarm under load: {down:?}");
}
