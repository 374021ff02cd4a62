//! `davit sim`: thousands of simulated agents in one process, to measure a server (not product logic: a
//! tool, like `bench`; it holds no cluster logic and talks to the server only through the public API).
//!
//! Each simulated node registers like a real agent (`POST /v1/nodes/register`). What a real agent does
//! per node, the simulation does for many nodes per request, through the batched routes:
//!
//! ```text
//!  heartbeat loop ── PUT /v1/nodes/heartbeat (every node, at the interval the server asks for) ──▶ server
//!  poll loop × ⌈nodes / poll_batch⌉ ── POST /v1/nodes/allocations?index=N (long-poll, a delta) ◀── server
//!      │ new allocation (desired run, pending)  → `running`, healthy, each task running with a `Started` event
//!      │ stopped allocation still not terminal → `complete`, each task dead
//!      ▼
//!  reporter ── POST /v1/nodes/allocations/status (what is queued, grouped by node, ≤ 2,000 per request) ──▶ server
//! ```
//!
//! Tasks "run" instantly: nothing is started. Counters (`SimStats`) count what the server confirms: an
//! allocation counts as running once the long-poll shows it `running`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use davit_api::http::{AllocStatusUpdate, NodeAllocStatusUpdates};
use davit_api::objects::{
    ClientStatus, DesiredStatus, DriverInfo, Node, NodeEligibility, NodeResources, NodeStatus, TaskEvent, TaskState, TaskStates, TaskStatus,
};
use davit_client::Client;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::Failure;
use crate::cli::{SimArgs, SimNodeArgs};

/// How the simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub server: String,
    pub nodes: usize,
    pub shape: SimNodeArgs,
    pub name_prefix: String,
    /// `None`: the interval the server asks for.
    pub heartbeat: Option<Duration>,
    pub poll_batch: usize,
    /// ACL token of the simulated agents (it needs `node: write`).
    pub token: Option<String>,
    /// TLS with an `https://` server.
    pub tls: Option<davit_client::ClientTls>,
}

/// What the simulated agents saw and did; read while the simulation runs.
#[derive(Default, Debug)]
pub struct SimStats {
    pub registered: AtomicU64,
    /// Allocations the server shows `running` (counted once each, minus those that ended since).
    pub running: AtomicU64,
    /// Allocations the server shows `complete`.
    pub complete: AtomicU64,
    /// Status updates sent, and the requests that carried them.
    pub reports: AtomicU64,
    pub report_requests: AtomicU64,
    pub heartbeat_rounds: AtomicU64,
    pub poll_answers: AtomicU64,
    pub errors: AtomicU64,
}

impl SimStats {
    /// One machine-readable line: `sim: t=1.2s registered=… running=…`.
    pub fn line(&self, started: Instant) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "sim: t={:.1}s registered={} running={} complete={} reports={} report_requests={} heartbeat_rounds={} poll_answers={} errors={}",
            started.elapsed().as_secs_f64(),
            get(&self.registered),
            get(&self.running),
            get(&self.complete),
            get(&self.reports),
            get(&self.report_requests),
            get(&self.heartbeat_rounds),
            get(&self.poll_answers),
            get(&self.errors),
        )
    }
}

/// `davit sim`.
pub async fn command(
    args: SimArgs,
    default_server: &str,
    token: Option<String>,
    tls: Option<davit_client::ClientTls>,
) -> Result<(), Failure> {
    crate::run::init_logging("warn");
    let parse = crate::flag_duration;
    let heartbeat = args.heartbeat.as_deref().map(|text| parse("--heartbeat", text)).transpose()?;
    let progress = parse("--progress", &args.progress)?;
    let duration = args.duration.as_deref().map(|text| parse("--duration", text)).transpose()?;
    if args.nodes == 0 || args.poll_batch == 0 {
        return Err(Failure::user("--nodes and --poll-batch must be at least 1"));
    }
    let config = SimConfig {
        token,
        tls,
        server: args.server.unwrap_or_else(|| default_server.to_string()),
        nodes: args.nodes,
        shape: args.shape,
        name_prefix: args.name_prefix,
        heartbeat,
        poll_batch: args.poll_batch,
    };
    let stats = Arc::new(SimStats::default());
    let started = Instant::now();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let sim = tokio::spawn(run(config, Arc::clone(&stats), shutdown));
    let stop = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    let mut ticker = tokio::time::interval(if progress.is_zero() { Duration::from_secs(3600) } else { progress });
    ticker.tick().await;
    tokio::pin!(stop);
    let mut sim = sim;
    let outcome = loop {
        tokio::select! {
            _ = ticker.tick(), if !progress.is_zero() => println!("{}", stats.line(started)),
            _ = &mut stop => break None,
            _ = tokio::signal::ctrl_c() => break None,
            result = &mut sim => break Some(result),
        }
    };
    let _ = shutdown_tx.send(true);
    let result = match outcome {
        Some(result) => result,
        None => sim.await,
    };
    println!("{}", stats.line(started));
    println!("sim: peak_rss_mib={:.1}", crate::bench::peak_rss_mib("self").unwrap_or(0.0));
    match result {
        Ok(result) => result.map_err(Failure::internal),
        Err(error) => Err(Failure::internal(format!("the simulation failed: {error}"))),
    }
}

/// A simulated node: `zone` and class round-robin, an `exec` driver, no agent API behind `http_addr`.
pub fn sim_node(shape: &SimNodeArgs, id: String, name: String, position: usize) -> Node {
    let mut attributes = BTreeMap::from([
        ("arch".to_string(), "x86_64".to_string()),
        ("cpu.arch".to_string(), "x86_64".to_string()),
        ("os.name".to_string(), "linux".to_string()),
        ("unique.hostname".to_string(), name.clone()),
    ]);
    if !shape.zones.is_empty() {
        attributes.insert("zone".to_string(), shape.zones[position % shape.zones.len()].clone());
    }
    let class = if shape.classes.is_empty() { String::new() } else { shape.classes[position % shape.classes.len()].clone() };
    let exec = DriverInfo { detected: true, healthy: true, description: "simulated".to_string(), attributes: BTreeMap::new() };
    Node {
        id,
        name,
        datacenter: shape.datacenter.clone(),
        class,
        attributes,
        resources: NodeResources { cpu: shape.cpu, memory: shape.memory, port_range: (20000, 32000), reserved_ports: Vec::new() },
        drivers: BTreeMap::from([("exec".to_string(), exec)]),
        status: NodeStatus::Ready,
        eligibility: NodeEligibility::Eligible,
        drain: None,
        http_addr: "http://127.0.0.1:9".to_string(),
        status_description: String::new(),
        last_heartbeat: 0,
        create_index: 0,
        modify_index: 0,
    }
}

/// Concurrent registrations in flight.
const REGISTER_CONCURRENCY: usize = 64;
/// Node ids per heartbeat request.
const HEARTBEAT_CHUNK: usize = 5000;
/// How long one long-poll waits on the server.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// Status updates per request at most: about 400 bytes each in JSON, so a request stays well under the
/// server's 2 MiB body limit.
const REPORT_BATCH: usize = 2_000;
/// Status requests in flight at once.
const REPORT_CONCURRENCY: usize = 4;

/// Registers the nodes, then heartbeats, watches and reports until `shutdown` changes.
pub async fn run(config: SimConfig, stats: Arc<SimStats>, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let client = Client::connect(&config.server, config.token.as_deref(), config.tls.as_ref());
    let run = u64::from_str_radix(&uuid_tag()[..16], 16).unwrap_or(0);
    let nodes: Vec<Node> = (0..config.nodes)
        .map(|position| {
            let name = format!("{}-{:05}", config.name_prefix, position + 1);
            // The id's first 8 characters (the short id) differ between nodes, as real agents' uuids do.
            let tag = splitmix64(run ^ position as u64) >> 32;
            let mut node = sim_node(&config.shape, format!("{tag:08x}-{name}"), name, position);
            if config.tls.is_some() {
                // A server doing TLS takes only agents whose API is HTTPS (nothing answers there anyway).
                node.http_addr = node.http_addr.replacen("http://", "https://", 1);
            }
            node
        })
        .collect();
    let nodes = Arc::new(nodes);
    let interval = register(&client, &nodes, &stats).await?;
    let interval = config.heartbeat.unwrap_or(interval);

    let (reports, report_queue) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(heartbeats(client.clone(), Arc::clone(&nodes), interval, Arc::clone(&stats), shutdown.clone()));
    tasks.spawn(reporter(client.clone(), report_queue, Arc::clone(&stats), shutdown.clone()));
    let tasks_of_jobs = Arc::new(Mutex::new(HashMap::new()));
    for chunk in nodes.chunks(config.poll_batch) {
        let ids: Vec<String> = chunk.iter().map(|node| node.id.clone()).collect();
        let watcher = Watcher {
            client: client.clone(),
            node_ids: ids,
            reports: reports.clone(),
            stats: Arc::clone(&stats),
            seen: HashMap::new(),
            tasks_of_jobs: Arc::clone(&tasks_of_jobs),
        };
        tasks.spawn(watcher.run(shutdown.clone()));
    }
    drop(reports);
    let _ = shutdown.wait_for(|stop| *stop).await;
    tasks.shutdown().await;
    Ok(())
}

/// Registers every node (a few dozen requests in flight); returns the heartbeat interval the server asks for.
async fn register(client: &Client, nodes: &[Node], stats: &SimStats) -> Result<Duration, String> {
    let requests = nodes.iter().cloned().map(|node| {
        let client = client.clone();
        async move { client.register_node(&node).await }
    });
    let mut answers = futures_util::stream::iter(requests).buffer_unordered(REGISTER_CONCURRENCY);
    let mut interval = Duration::from_millis(500);
    while let Some(answer) = answers.next().await {
        let answer = answer.map_err(|error| format!("registering a node: {error}"))?;
        interval = Duration::from_millis(answer.heartbeat_interval_ms.max(50));
        stats.registered.fetch_add(1, Ordering::Relaxed);
    }
    Ok(interval)
}

/// A heartbeat for every node each `interval`; nodes the server forgot register again.
async fn heartbeats(client: Client, nodes: Arc<Vec<Node>>, interval: Duration, stats: Arc<SimStats>, mut shutdown: watch::Receiver<bool>) {
    let by_id: HashMap<&str, &Node> = nodes.iter().map(|node| (node.id.as_str(), node)).collect();
    let ids: Vec<String> = nodes.iter().map(|node| node.id.clone()).collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let rounds = ids.chunks(HEARTBEAT_CHUNK).map(|chunk| {
            let (client, chunk) = (client.clone(), chunk.to_vec());
            async move { client.heartbeat_many(&chunk).await }
        });
        let answers = futures_util::future::join_all(rounds).await;
        stats.heartbeat_rounds.fetch_add(1, Ordering::Relaxed);
        for answer in answers {
            match answer {
                Ok(answer) => {
                    for id in answer.unknown {
                        if let Some(node) = by_id.get(id.as_str())
                            && client.register_node(node).await.is_err()
                        {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(error) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "heartbeat failed");
                }
            }
        }
    }
}

/// The part of an allocation the sim reads (decoding whole allocations was most of its work).
#[derive(Deserialize)]
struct SimAlloc {
    id: String,
    node_id: String,
    job_name: String,
    job_version: u64,
    group: String,
    desired_status: DesiredStatus,
    client_status: ClientStatus,
    #[serde(default)]
    task_states: TaskStates,
}

/// What a watcher knows of one allocation (a few bits, keyed by the id's 128 bits).
#[derive(Clone, Copy, Default)]
struct Seen {
    counted_running: bool,
    counted_complete: bool,
    reported_running: bool,
    reported_complete: bool,
}

/// Task names per (job, version), shared by the watchers.
type TaskNames = Arc<Mutex<HashMap<(String, u64), Arc<Vec<String>>>>>;

/// Long-polls the allocations of a batch of nodes and decides what to report.
struct Watcher {
    client: Client,
    node_ids: Vec<String>,
    reports: mpsc::UnboundedSender<(String, AllocStatusUpdate)>,
    stats: Arc<SimStats>,
    seen: HashMap<u128, Seen>,
    /// Task names per (job, version), fetched once.
    tasks_of_jobs: TaskNames,
}

impl Watcher {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut index = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            let answer = tokio::select! {
                answer = self.client.nodes_allocations::<SimAlloc>(&self.node_ids, index, POLL_WAIT) => answer,
                _ = shutdown.changed() => return,
            };
            match answer {
                Ok(answer) => {
                    backoff = Duration::from_millis(100);
                    index = if answer.index < index { 0 } else { answer.index };
                    self.stats.poll_answers.fetch_add(1, Ordering::Relaxed);
                    for alloc in &answer.value {
                        self.observe(alloc).await;
                    }
                }
                Err(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "watching allocations failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn observe(&mut self, alloc: &SimAlloc) {
        let key = id_key(&alloc.id);
        let mut seen = self.seen.get(&key).copied().unwrap_or_default();
        match alloc.client_status {
            ClientStatus::Running if !seen.counted_running => {
                seen.counted_running = true;
                self.stats.running.fetch_add(1, Ordering::Relaxed);
            }
            status if status.is_terminal() => {
                if seen.counted_running {
                    seen.counted_running = false;
                    self.stats.running.fetch_sub(1, Ordering::Relaxed);
                }
                if status == ClientStatus::Complete && !seen.counted_complete {
                    seen.counted_complete = true;
                    self.stats.complete.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        let now = crate::now_millis();
        if alloc.desired_status == DesiredStatus::Run && alloc.client_status == ClientStatus::Pending && !seen.reported_running {
            seen.reported_running = true;
            let tasks = self.task_names(alloc).await;
            let started = TaskEvent {
                time: now,
                kind: "Started".to_string(),
                message: "simulated".to_string(),
                exit_code: None,
                signal: None,
                progress: None,
            };
            let state = TaskState {
                state: TaskStatus::Running,
                failed: false,
                restarts: 0,
                pid: None,
                started_at: Some(now),
                finished_at: None,
                events: vec![started],
                checks: BTreeMap::new(),
            };
            let task_states = tasks.iter().map(|task| (task.clone(), state.clone())).collect();
            self.report(alloc, ClientStatus::Running, "tasks are running", task_states);
        } else if alloc.desired_status != DesiredStatus::Run && !alloc.client_status.is_terminal() && !seen.reported_complete {
            seen.reported_complete = true;
            let mut task_states = alloc.task_states.clone();
            for state in task_states.values_mut() {
                state.state = TaskStatus::Dead;
                state.finished_at = Some(now);
            }
            self.report(alloc, ClientStatus::Complete, "all tasks have completed", task_states);
        }
        self.seen.insert(key, seen);
    }

    fn report(&self, alloc: &SimAlloc, status: ClientStatus, description: &str, task_states: TaskStates) {
        let update = AllocStatusUpdate {
            id: alloc.id.clone(),
            client_status: status,
            client_description: description.to_string(),
            task_states,
            healthy: Some(status == ClientStatus::Running),
            health_description: String::new(),
            migration: None,
            deployment_health: None,
        };
        let _ = self.reports.send((alloc.node_id.clone(), update));
    }

    /// The task names of the allocation's job version (one request per job version, then cached).
    async fn task_names(&self, alloc: &SimAlloc) -> Arc<Vec<String>> {
        let key = (alloc.job_name.clone(), alloc.job_version);
        if let Some(names) = self.tasks_of_jobs.lock().expect("task names lock").get(&key) {
            return Arc::clone(names);
        }
        let names = match self.client.job_version(&alloc.job_name, alloc.job_version).await {
            Ok(job) => job
                .spec
                .groups
                .iter()
                .find(|group| group.name == alloc.group)
                .map(|group| group.tasks.iter().map(|task| task.name.clone()).collect())
                .unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, job = %alloc.job_name, "cannot read the job version; reporting no task states");
                Vec::new()
            }
        };
        let names = Arc::new(names);
        self.tasks_of_jobs.lock().expect("task names lock").insert(key, Arc::clone(&names));
        names
    }
}

/// Sends queued status updates: what is queued goes out in requests of at most [`REPORT_BATCH`] updates
/// (grouped by node), up to [`REPORT_CONCURRENCY`] at once; the next round starts when they are answered,
/// so rounds grow with the load. A request that fails is sent again in the next round.
async fn reporter(
    client: Client,
    mut queue: mpsc::UnboundedReceiver<(String, AllocStatusUpdate)>,
    stats: Arc<SimStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: Vec<(String, AllocStatusUpdate)> = Vec::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                next = queue.recv() => match next {
                    Some(update) => pending.push(update),
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
        while pending.len() < REPORT_BATCH * REPORT_CONCURRENCY {
            match queue.try_recv() {
                Ok(update) => pending.push(update),
                Err(_) => break,
            }
        }
        let chunks: Vec<Vec<(String, AllocStatusUpdate)>> = {
            let mut rest = std::mem::take(&mut pending);
            let mut chunks = Vec::new();
            while rest.len() > REPORT_BATCH {
                let tail = rest.split_off(REPORT_BATCH);
                chunks.push(std::mem::replace(&mut rest, tail));
            }
            chunks.push(rest);
            chunks
        };
        let requests = chunks.into_iter().map(|chunk| {
            let client = client.clone();
            async move {
                let mut by_node: BTreeMap<&str, Vec<AllocStatusUpdate>> = BTreeMap::new();
                for (node_id, update) in &chunk {
                    by_node.entry(node_id).or_default().push(update.clone());
                }
                let body: Vec<NodeAllocStatusUpdates> = by_node
                    .into_iter()
                    .map(|(node_id, updates)| NodeAllocStatusUpdates { node_id: node_id.to_string(), updates })
                    .collect();
                let answer = client.update_alloc_status_many(&body).await;
                (chunk, answer)
            }
        });
        let mut failed = false;
        for (chunk, answer) in futures_util::future::join_all(requests).await {
            match answer {
                Ok(_) => {
                    stats.reports.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    stats.report_requests.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    failed = true;
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, updates = chunk.len(), "sending allocation status failed; retrying");
                    pending.extend(chunk);
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The 128 bits of a UUID-formatted id; other ids hash into the same space.
fn id_key(id: &str) -> u128 {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    match (hex.len() == 32).then(|| u128::from_str_radix(&hex, 16).ok()).flatten() {
        Some(key) => key,
        None => {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut hasher);
            u128::from(hasher.finish()) | (1 << 127)
        }
    }
}

/// A short random tag for node ids (from the kernel's UUID source; no RNG dependency needed).
/// A well-mixed 64-bit hash of `x` (SplitMix64's finalizer).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn uuid_tag() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").map(|text| text.trim().replace('-', "")).unwrap_or_else(|_| {
        format!("{:016x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0))
    })
}
