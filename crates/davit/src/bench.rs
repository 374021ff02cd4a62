//! `davit bench scheduler` and `davit bench e2e`: measuring tools (not product logic; see ARCHITECTURE.md).
//!
//! - `scheduler`: the pure `davit_scheduler::schedule` against an in-memory `ClusterState`, applying each
//!   plan's allocations to the state as the plan applier would. Nothing else runs: no store, no HTTP.
//! - `e2e`: a server in this process (embedded redb store in a temporary directory, as `davit dev`, or an etcd
//!   the operator runs, with `--store etcd`: then the redb run comes first, in a child process) and
//!   `davit sim` in a child process; jobs are submitted over HTTP until the simulated agents see the
//!   allocations running. A probe measures API latency meanwhile. Peak RSS is read from `/proc/<pid>/status`
//!   (`VmHWM`) of this process (server + this driver) and of the sim's process, separately.
//!
//! Every loop is bounded: by the allocation count and by a deadline.

use std::num::NonZeroUsize;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use davit_api::objects::{EvalTrigger, Evaluation, Job};

use davit_api::spec::{JobSpec, JobType, SchedulerAlgorithm};
use davit_scheduler::{ClusterState, SchedulerConfig, schedule};
use tokio::io::AsyncBufReadExt;

use crate::Failure;
use crate::cli::{Algorithm, BenchCommand, SimNodeArgs, WorkloadArgs};

/// `davit bench …`.
pub async fn command(command: BenchCommand) -> Result<(), Failure> {
    crate::run::init_logging("warn");
    match command {
        BenchCommand::Scheduler { nodes, allocs, workload, seed } => {
            let bench = SchedulerBench { nodes, allocs, workload: Workload::new(workload)?, seed };
            // CPU-bound and synchronous: off the async runtime.
            tokio::task::spawn_blocking(move || bench.run())
                .await
                .map_err(|error| Failure::internal(format!("the benchmark failed: {error}")))?
        }
        BenchCommand::E2e { nodes, allocs, workload, workers, timeout, acl, tls, store, etcd } => {
            let timeout = crate::flag_duration("--timeout", &timeout)?;
            let workload = Workload::new(workload)?;
            let etcd = match store {
                crate::cli::StoreKind::Redb => None,
                crate::cli::StoreKind::Etcd => {
                    redb_baseline()?;
                    Some(etcd)
                }
            };
            let bench = E2eBench { nodes, allocs, workload, workers, timeout, acl, tls, token: None, ca_cert: None, etcd };
            bench.run().await
        }
    }
}

/// The benchmark jobs, the nodes' shape and the scheduler configuration, from the command line.
struct Workload {
    job_size: usize,
    job: BenchJob,
    shape: SimNodeArgs,
    config: SchedulerConfig,
}

impl Workload {
    fn new(args: WorkloadArgs) -> Result<Workload, Failure> {
        if args.job_size == 0 {
            return Err(Failure::user("--job-size must be at least 1"));
        }
        let mut config = SchedulerConfig {
            algorithm: match args.algorithm {
                Algorithm::Binpack => SchedulerAlgorithm::Binpack,
                Algorithm::Spread => SchedulerAlgorithm::Spread,
                Algorithm::Balanced => SchedulerAlgorithm::Balanced,
            },
            ..SchedulerConfig::default()
        };
        match args.candidates.as_deref() {
            None => {}
            Some("all") => config.score_all_nodes = true,
            Some(text) => {
                let limit = text.parse().ok().and_then(NonZeroUsize::new);
                let limit =
                    limit.ok_or_else(|| Failure::user(format!("--candidates {text}: give a number of nodes (at least 1) or `all`")))?;
                config.candidate_limit = Some(limit);
            }
        }
        let job_type = if args.batch { JobType::Batch } else { JobType::Service };
        let job = BenchJob { job_type, cpu: args.alloc_cpu, memory: args.alloc_memory };
        Ok(Workload { job_size: args.job_size, job, shape: args.shape, config })
    }

    /// "binpack, sampled (…)", for the benchmark's header line.
    fn algorithm_name(&self) -> String {
        let algorithm = format!("{:?}", self.config.algorithm).to_lowercase();
        match (self.config.candidate_limit, self.config.score_all_nodes) {
            (Some(limit), _) => format!("{algorithm}, best of {limit} fitting nodes"),
            (None, true) => format!("{algorithm}, every feasible node scored"),
            (None, false) => format!("{algorithm}, sampled (services: log2 of the nodes, batch: 2)"),
        }
    }
}

/// What every benchmark job is: one group of allocations of one exec task with small resources.
#[derive(Clone, Copy)]
struct BenchJob {
    job_type: JobType,
    cpu: u32,
    memory: u32,
}

impl BenchJob {
    /// The job's spec text with `count` allocations.
    fn text(self, name: &str, count: usize) -> String {
        let job_type = match self.job_type {
            JobType::Batch => "batch",
            JobType::Service | JobType::System => "service",
        };
        let (cpu, memory) = (self.cpu, self.memory);
        format!(
            "name: {name}\ntype: {job_type}\ndatacenters: [dc1]\ngroups:\n  - name: work\n    count: {count}\n    tasks:\n      - name: main\n        driver: exec\n        config: {{command: /bin/true}}\n        resources: {{cpu: {cpu}, memory: {memory}}}\n"
        )
    }

    fn spec(self, name: &str, count: usize) -> Result<JobSpec, Failure> {
        davit_api::spec::parse_job_spec(&self.text(name, count), "bench.yaml")
            .map_err(|errors| Failure::internal(format!("the benchmark job is invalid: {errors}")))
    }

    /// The job's `job-register` evaluation, as stored at `revision`.
    fn evaluation(self, name: &str, revision: u64) -> Evaluation {
        let mut eval = Evaluation::pending(format!("eval-{name}"), name, self.job_type, 50, EvalTrigger::JobRegister, crate::now_millis());
        (eval.create_index, eval.modify_index) = (revision, revision);
        eval
    }
}

struct SchedulerBench {
    nodes: usize,
    allocs: usize,
    workload: Workload,
    seed: u64,
}

impl SchedulerBench {
    fn run(self) -> Result<(), Failure> {
        if self.nodes == 0 {
            return Err(Failure::user("--nodes must be at least 1"));
        }
        print_machine();
        println!(
            "bench scheduler: {} nodes, {} allocations in jobs of {}, {}, {} millicores / {} MiB per allocation",
            self.nodes,
            self.allocs,
            self.workload.job_size,
            self.workload.algorithm_name(),
            self.workload.job.cpu,
            self.workload.job.memory
        );
        let mut state = ClusterState::new();
        let build = Instant::now();
        for position in 0..self.nodes {
            let name = format!("node-{:05}", position + 1);
            let mut node = crate::sim::sim_node(&self.workload.shape, format!("{name}-bench"), name, position);
            node.datacenter = "dc1".to_string();
            state.upsert_node(Arc::new(node));
        }
        let build = build.elapsed();
        let mut revision = 1u64;
        let mut placed = 0usize;
        let mut eval_times: Vec<Duration> = Vec::new();
        let mut per_placement: Vec<Duration> = Vec::new();
        let (mut scheduling, mut applying) = (Duration::ZERO, Duration::ZERO);
        let mut unplaced = String::new();
        let started = Instant::now();
        let mut job_number = 0;
        while placed < self.allocs {
            let count = self.workload.job_size.min(self.allocs - placed);
            let name = format!("bench-{job_number:05}");
            job_number += 1;
            let spec = self.workload.job.spec(&name, count)?;
            revision += 1;
            let job = Arc::new(Job { create_index: revision, modify_index: revision, ..Job::new(spec, 0, 0) });
            state.upsert_job(Arc::clone(&job));
            state.upsert_job_version(job);
            let eval = self.workload.job.evaluation(&name, revision);
            let now = crate::now_millis();
            let timer = Instant::now();
            let result = schedule(&state, &eval, &self.workload.config, self.seed.wrapping_add(job_number as u64), now);
            let took = timer.elapsed();
            scheduling += took;
            let timer = Instant::now();
            revision += 1;
            let mut placed_now = 0;
            for alloc in result.plan.allocations() {
                let mut alloc = alloc.clone();
                (alloc.create_index, alloc.modify_index) = (revision, revision);
                state.upsert_alloc(Arc::new(alloc));
                placed_now += 1;
            }
            applying += timer.elapsed();
            eval_times.push(took);
            if placed_now > 0 {
                per_placement.push(took / placed_now as u32);
            }
            placed += placed_now;
            if !result.plan.failed_groups.is_empty() || placed_now == 0 {
                unplaced = result.status_description;
                break;
            }
        }
        let wall = started.elapsed();
        println!("  built the cluster state in {:.1} ms", ms(build));
        println!(
            "  placed {placed} allocations in {} evaluations: {:.1} s scheduling, {:.1} s applying plans, {:.1} s in all",
            eval_times.len(),
            scheduling.as_secs_f64(),
            applying.as_secs_f64(),
            wall.as_secs_f64()
        );
        println!("  placements/s: {:.0} (scheduler time only), {:.0} (with plan apply)", rate(placed, scheduling), rate(placed, wall));
        println!(
            "  latency per placement (evaluation time / its placements): p50 {:.1} µs, p99 {:.1} µs",
            percentile(&mut per_placement, 0.50).as_secs_f64() * 1e6,
            percentile(&mut per_placement, 0.99).as_secs_f64() * 1e6
        );
        println!(
            "  latency per evaluation: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(percentile(&mut eval_times, 0.50)),
            ms(percentile(&mut eval_times, 0.99)),
            ms(percentile(&mut eval_times, 1.0))
        );
        println!("  peak RSS (VmHWM): {:.1} MiB", peak_rss_mib("self").unwrap_or(0.0));
        if !unplaced.is_empty() {
            println!("  stopped early, the cluster is full: {unplaced}");
        }
        println!("RESULT bench=scheduler nodes={} placed={placed} target={}", self.nodes, self.allocs);
        if placed < self.allocs {
            return Err(Failure::user(format!("placed only {placed} of {} allocations", self.allocs)));
        }
        Ok(())
    }
}

struct E2eBench {
    nodes: usize,
    allocs: usize,
    workload: Workload,
    workers: Option<usize>,
    timeout: Duration,
    /// Run the server with ACLs.
    acl: bool,
    /// Serve HTTPS.
    tls: bool,
    /// The management token, once bootstrapped (`acl`).
    token: Option<String>,
    /// The run's CA certificate (`tls`).
    ca_cert: Option<std::path::PathBuf>,
    /// The etcd to keep the state in (under a prefix of the run's own, deleted after it); `None`: redb.
    etcd: Option<crate::cli::EtcdArgs>,
}

/// Runs this benchmark with `--store redb` in a child process (its peak memory apart from this one's), first.
fn redb_baseline() -> Result<(), Failure> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    for index in 0..args.len() {
        if args[index] == "--store=etcd" {
            args[index] = "--store=redb".to_string();
        } else if args[index] == "--store" && args.get(index + 1).is_some_and(|kind| kind == "etcd") {
            args[index + 1] = "redb".to_string();
        }
    }
    println!("==> the same benchmark on redb first: davit {}", args.join(" "));
    let exe = std::env::current_exe().map_err(|e| Failure::internal(format!("cannot find the davit binary: {e}")))?;
    let status = std::process::Command::new(exe)
        .args(&args)
        .status()
        .map_err(|e| Failure::internal(format!("cannot run the redb baseline: {e}")))?;
    if !status.success() {
        return Err(Failure::internal(format!("the redb baseline failed: {status}")));
    }
    println!("==> on etcd");
    Ok(())
}

/// A number from etcd's `/metrics` (`name` at the start of a line, no labels).
async fn etcd_metric(endpoint: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = endpoint.strip_prefix("http://")?.trim_end_matches('/');
    let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(authority)).await.ok()?.ok()?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes()).await.ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text)).await.ok()?.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

impl E2eBench {
    /// A client of the benchmark's server, with its CA when it serves HTTPS.
    fn client(&self, addr: &str, token: Option<&str>) -> Result<davit_client::Client, Failure> {
        let tls = match &self.ca_cert {
            Some(ca_cert) => Some(davit_client::ClientTls::load(ca_cert, None).map_err(|e| Failure::internal(e.to_string()))?),
            None => None,
        };
        Ok(davit_client::Client::connect(addr, token, tls.as_ref()))
    }
}

/// Jobs registered concurrently.
const SUBMIT_CONCURRENCY: usize = 4;
/// Pause between two probe requests.
const PROBE_PAUSE: Duration = Duration::from_millis(50);

impl E2eBench {
    async fn run(mut self) -> Result<(), Failure> {
        if self.nodes == 0 {
            return Err(Failure::user("--nodes must be at least 1"));
        }
        print_machine();
        println!(
            "bench e2e: {} simulated nodes, {} allocations in jobs of {}, {}",
            self.nodes,
            self.allocs,
            self.workload.job_size,
            self.workload.algorithm_name()
        );
        let deadline = Instant::now() + self.timeout;
        let dir = tempfile_dir()?;
        let result = self.measure(&dir, deadline).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn measure(&mut self, dir: &std::path::Path, deadline: Instant) -> Result<(), Failure> {
        let (store, etcd): (Arc<dyn davit_store::Store>, _) = match &self.etcd {
            None => {
                let store = davit_store::RedbStore::open(&dir.join("state.redb"))
                    .map_err(|e| Failure::internal(format!("cannot open the store: {e}")))?;
                (Arc::new(store), None)
            }
            Some(args) => {
                // A prefix of the run's own, and the leadership with fencing, as a server on etcd has.
                let prefix = format!("/davit-bench-{}-{}/", std::process::id(), crate::now_millis());
                let args = crate::cli::EtcdArgs { etcd_prefix: prefix.clone(), ..args.clone() };
                let etcd: Arc<dyn davit_store::Store> = crate::run::etcd_store(&args).await?;
                let me = davit_server::leader::LeaderInfo { name: "bench".to_string(), addr: String::new(), since: 0 };
                let leadership = davit_server::leader::acquire(Arc::clone(&etcd), me, Duration::from_secs(10), |_| {}).await;
                let fenced = davit_store::FencedStore::new(Arc::clone(&etcd), davit_server::leader::LEADER_KEY, leadership.revision);
                println!("  store: etcd at {} under {prefix} (fenced writes)", args.etcd_endpoints.join(","));
                (Arc::new(fenced) as Arc<dyn davit_store::Store>, Some((etcd, leadership, args.etcd_endpoints[0].clone())))
            }
        };
        let mut config = davit_server::ServerConfig {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            store,
            workers: self.workers.unwrap_or_else(davit_server::default_workers),
            liveness: davit_server::LivenessConfig::default(),
            scheduler: self.workload.config.clone(),
            acl_enabled: self.acl,
            audit_log: Some(dir.join("audit.log")),
            keyring: None,
            tls: None,
            spec_limits: Default::default(),
            gc: Default::default(),
            admission: Default::default(),
            autoscaler: Default::default(),
            role: Default::default(),
            audit_reads: false,
        };
        if self.tls {
            let tls_dir = dir.join("tls");
            let ca = davit_tls::Ca::load_or_create(&tls_dir).map_err(|e| Failure::internal(format!("cannot make a CA: {e}")))?;
            let ca_cert = tls_dir.join(davit_tls::Ca::CERT_FILE);
            config.tls = Some(davit_server::TlsConfig {
                ca,
                ca_origin: ca_cert.display().to_string(),
                cert_files: None,
                names: Vec::new(),
                cert_ttl: Duration::from_secs(24 * 3600),
            });
            self.ca_cert = Some(ca_cert);
        }
        let server = davit_server::start(config).await.map_err(|e| Failure::internal(format!("cannot start the server: {e}")))?;
        let addr = format!("{}://{}", if self.tls { "https" } else { "http" }, server.addr());
        if self.acl {
            self.token = Some(self.client(&addr, None)?.acl_bootstrap().await?.secret_id);
            println!("  ACLs on: every request carries a management token");
        }
        if self.tls {
            println!("  TLS on: the sim and the benchmark talk HTTPS to the server");
        }
        println!("  server on {addr} (store in {})", dir.display());
        let outcome = self.drive(&addr, dir, deadline).await;
        server.shutdown().await;
        if let Some((etcd, leadership, endpoint)) = etcd {
            let rss = etcd_metric(&endpoint, "process_resident_memory_bytes").await.unwrap_or(0.0);
            let db = etcd_metric(&endpoint, "etcd_mvcc_db_total_size_in_bytes").await.unwrap_or(0.0);
            println!("  etcd ({endpoint}): resident memory {:.0} MiB, database {:.1} MiB", rss / 1048576.0, db / 1048576.0);
            let wipe = davit_store::Txn { success: vec![davit_store::Op::DeletePrefix { prefix: String::new() }], ..Default::default() };
            if let Err(error) = etcd.txn(wipe).await {
                println!("  could not delete the run's keys: {error}");
            }
            let _ = etcd.revoke_lease(leadership.lease).await;
        }
        outcome
    }

    async fn drive(&self, addr: &str, dir: &std::path::Path, deadline: Instant) -> Result<(), Failure> {
        let exe = std::env::current_exe().map_err(|e| Failure::internal(format!("cannot find the davit binary: {e}")))?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["sim", "--server", addr, "--nodes", &self.nodes.to_string(), "--progress", "100ms"])
            .args([
                "--zones",
                &self.workload.shape.zones.join(","),
                "--cpu",
                &self.workload.shape.cpu.to_string(),
                "--memory",
                &self.workload.shape.memory.to_string(),
            ])
            .args(["--datacenter", &self.workload.shape.datacenter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("DAVIT_LOG", std::env::var("DAVIT_LOG").unwrap_or_else(|_| "warn".to_string()))
            .kill_on_drop(true);
        match &self.token {
            Some(token) => command.env("DAVIT_TOKEN", token),
            None => command.env_remove("DAVIT_TOKEN"),
        };
        match &self.ca_cert {
            Some(ca_cert) => command.env("DAVIT_CACERT", ca_cert),
            None => command.env_remove("DAVIT_CACERT"),
        };
        if !self.workload.shape.classes.is_empty() {
            command.args(["--classes", &self.workload.shape.classes.join(",")]);
        }
        let mut sim = command.spawn().map_err(|e| Failure::internal(format!("cannot start davit sim: {e}")))?;
        let sim_pid = sim.id().unwrap_or(0);
        let stdout = sim.stdout.take().expect("piped");
        let progress = Arc::new(SimProgress::default());
        let reader = tokio::spawn({
            let progress = Arc::clone(&progress);
            async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    progress.update(&line);
                }
            }
        });
        let outcome = self.workload(addr, &progress, sim_pid, deadline).await;
        // SAFETY: kill(2) on the child we started; no memory is involved.
        unsafe { libc::kill(sim_pid as i32, libc::SIGINT) };
        let _ = tokio::time::timeout(Duration::from_secs(10), sim.wait()).await;
        let _ = sim.kill().await;
        reader.abort();
        if self.etcd.is_none() {
            let store_size = std::fs::metadata(dir.join("state.redb")).map(|m| m.len()).unwrap_or(0);
            println!("  store file: {:.1} MiB", store_size as f64 / (1024.0 * 1024.0));
        }
        outcome
    }

    async fn workload(&self, addr: &str, progress: &Arc<SimProgress>, sim_pid: u32, deadline: Instant) -> Result<(), Failure> {
        let client = self.client(addr, self.token.as_deref())?;
        let registering = Instant::now();
        while progress.registered.load(Ordering::Relaxed) < self.nodes as u64 {
            if Instant::now() > deadline {
                return Err(Failure::internal(format!(
                    "only {} nodes registered before the timeout",
                    progress.registered.load(Ordering::Relaxed)
                )));
            }
            progress.changed.notified_or_timeout(Duration::from_millis(500)).await;
        }
        println!("  {} nodes registered in {:.2} s", self.nodes, registering.elapsed().as_secs_f64());

        let jobs = self.allocs.div_ceil(self.workload.job_size);
        let first_job = "bench-00000".to_string();
        let done = Arc::new(AtomicBool::new(false));
        let probe = tokio::spawn(probe(client.clone(), first_job.clone(), Arc::clone(&done)));
        let started = Instant::now();
        let submit = {
            let client = client.clone();
            let (job_size, allocs, job) = (self.workload.job_size, self.allocs, self.workload.job);
            tokio::spawn(async move {
                use futures_util::StreamExt;
                let specs = (0..jobs).map(move |number| {
                    let count = job_size.min(allocs - number * job_size);
                    let name = format!("bench-{number:05}");
                    let client = client.clone();
                    async move {
                        client.register_job(&job.text(&name, count), "bench.yaml").await.map_err(Failure::from)?;
                        Ok::<(), Failure>(())
                    }
                });
                let mut results = futures_util::stream::iter(specs).buffer_unordered(SUBMIT_CONCURRENCY);
                while let Some(result) = results.next().await {
                    result?;
                }
                Ok::<Duration, Failure>(started.elapsed())
            })
        };
        let target = self.allocs as u64;
        let mut halfway = None;
        while progress.running.load(Ordering::Relaxed) < target {
            if Instant::now() > deadline {
                done.store(true, Ordering::Relaxed);
                return Err(Failure::internal(format!(
                    "only {} of {target} allocations running before the timeout (last from the sim: {})",
                    progress.running.load(Ordering::Relaxed),
                    progress.last.lock().expect("progress lock")
                )));
            }
            if halfway.is_none() && progress.running.load(Ordering::Relaxed) >= target / 2 {
                halfway = Some((started.elapsed(), peak_rss_mib("self").unwrap_or(0.0)));
            }
            progress.changed.notified_or_timeout(Duration::from_millis(200)).await;
        }
        let wall = started.elapsed();
        done.store(true, Ordering::Relaxed);
        let submitted = submit.await.map_err(|e| Failure::internal(e.to_string()))??;
        let mut latencies = probe.await.map_err(|e| Failure::internal(e.to_string()))?;
        let server_rss = peak_rss_mib("self").unwrap_or(0.0);
        let sim_rss = peak_rss_mib(&sim_pid.to_string()).unwrap_or(0.0);

        // Cross-check with the server (after the clock stopped): every allocation of every job runs.
        let listed = client.jobs().await.map_err(Failure::from)?;
        let running_per_server: u64 = listed.iter().flat_map(|job| job.summary.values()).map(|group| u64::from(group.running)).sum();

        println!("  jobs submitted in {:.2} s ({jobs} jobs)", submitted.as_secs_f64());
        if let Some((at, rss)) = halfway {
            println!("  half the allocations running after {:.2} s (peak RSS then {rss:.0} MiB)", at.as_secs_f64());
        }
        println!(
            "  {target} allocations running after {:.2} s: {:.0} placements/s end to end",
            wall.as_secs_f64(),
            rate(target as usize, wall)
        );
        println!(
            "  API probe (GET /v1/job/{first_job}/status, {} requests): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            ms(percentile(&mut latencies, 0.50)),
            ms(percentile(&mut latencies, 0.99)),
            ms(percentile(&mut latencies, 1.0))
        );
        println!(
            "  peak RSS (VmHWM): server process {server_rss:.0} MiB (server + this driver; the sim runs in its own process), sim {sim_rss:.0} MiB"
        );
        println!("  the server reports {running_per_server} allocations running");
        println!("  {}", progress.last.lock().expect("progress lock"));
        println!("RESULT bench=e2e nodes={} running={running_per_server} target={target} wall_s={:.2}", self.nodes, wall.as_secs_f64());
        if running_per_server < target {
            return Err(Failure::internal(format!("the server reports only {running_per_server} of {target} allocations running")));
        }
        Ok(())
    }
}

/// What the sim's progress lines say.
#[derive(Default)]
struct SimProgress {
    registered: AtomicU64,
    running: AtomicU64,
    changed: Notifier,
    /// The newest counters line, printed with the results (its `errors=` tells of failed requests).
    last: std::sync::Mutex<String>,
}

impl SimProgress {
    fn update(&self, line: &str) {
        let Some(fields) = line.strip_prefix("sim: ") else { return };
        if fields.starts_with("t=") {
            *self.last.lock().expect("progress lock") = line.to_string();
        }
        for field in fields.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            match key {
                "registered" => self.registered.store(value, Ordering::Relaxed),
                "running" => self.running.store(value, Ordering::Relaxed),
                _ => {}
            }
        }
        self.changed.notify();
    }
}

/// A notification that also gives up after a timeout (so the deadline is checked).
#[derive(Default)]
struct Notifier(tokio::sync::Notify);

impl Notifier {
    fn notify(&self) {
        self.0.notify_waiters();
    }
    async fn notified_or_timeout(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.0.notified()).await;
    }
}

/// Requests the first job's status one after another until `done`; the latencies.
async fn probe(client: davit_client::Client, job: String, done: Arc<AtomicBool>) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while !done.load(Ordering::Relaxed) && latencies.len() < 1_000_000 {
        let started = Instant::now();
        let answer = client.job_status(&job).await;
        // Before the job exists the answer is a fast 404: measured all the same (it is an API round trip).
        let _ = answer;
        latencies.push(started.elapsed());
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    latencies
}

fn tempfile_dir() -> Result<std::path::PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!("davit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Failure::internal(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Peak resident set size (`VmHWM`) of `/proc/<pid>` (`self` for this process), in MiB.
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The machine and build, printed with every figure.
fn print_machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|line| line.starts_with("model name")).and_then(|line| line.split(':').nth(1)).unwrap_or("?").trim();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let build = if cfg!(debug_assertions) { "debug build" } else { "release build" };
    println!(
        "machine: {model}, {cores} cores, {:.1} GiB, load {} ({build})",
        memory_kib / (1024.0 * 1024.0),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}

fn percentile(values: &mut [Duration], quantile: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let position = ((values.len() - 1) as f64 * quantile).round() as usize;
    values[position.min(values.len() - 1)]
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    if elapsed.is_zero() { 0.0 } else { count as f64 / elapsed.as_secs_f64() }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
