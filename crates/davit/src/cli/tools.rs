//! The flags of the measuring tools: `davit sim`, `davit bench`.

use clap::{Args, Subcommand, ValueEnum};

/// The shape of simulated nodes (`davit sim`, `davit bench`).
#[derive(Debug, Clone, Args)]
pub struct SimNodeArgs {
    /// Values of the node attribute `zone`, given to the nodes round-robin.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c")]
    pub zones: Vec<String>,
    /// Node classes, given to the nodes round-robin (default: no class).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// CPU of each node, in millicores.
    #[arg(long, default_value_t = 4000)]
    pub cpu: u64,
    /// Memory of each node, in MiB.
    #[arg(long, default_value_t = 8192)]
    pub memory: u64,
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Server address (default: --address / DAVIT_ADDR).
    #[arg(long)]
    pub server: Option<String>,
    #[command(flatten)]
    pub shape: SimNodeArgs,
    /// Node names are PREFIX-00001…; ids are `<8 hex digits>-<name>`, random per run and node, so two sims
    /// never share a node and short ids (as `node ls` shows them) tell the nodes apart.
    #[arg(long, default_value = "sim")]
    pub name_prefix: String,
    /// Interval between heartbeat rounds (default: the interval the server asks for).
    #[arg(long)]
    pub heartbeat: Option<String>,
    /// Nodes per long-poll request (the allocations of many nodes are watched together).
    #[arg(long, default_value_t = 2500)]
    pub poll_batch: usize,
    /// Print a progress line this often (machine-readable: `sim: key=value …`); 0 never.
    #[arg(long, default_value = "1s")]
    pub progress: String,
    /// Stop after this long (default: run until interrupted).
    #[arg(long)]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    /// Fill the fullest node that fits (the default).
    #[default]
    Binpack,
    /// Use the emptiest node.
    Spread,
    /// Keep a node's CPU and memory use even.
    Balanced,
}

/// What the benchmark jobs look like and how the cluster schedules them (`davit bench scheduler|e2e`).
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Allocations per job (one evaluation each).
    #[arg(long, default_value_t = 1000)]
    pub job_size: usize,
    /// CPU (millicores) and memory (MiB) of each allocation.
    #[arg(long, default_value_t = 20)]
    pub alloc_cpu: u32,
    #[arg(long, default_value_t = 32)]
    pub alloc_memory: u32,
    #[command(flatten)]
    pub shape: SimNodeArgs,
    /// The cluster's placement algorithm (the benchmark jobs do not set their own).
    #[arg(long, value_enum, default_value_t = Algorithm::Binpack)]
    pub algorithm: Algorithm,
    /// Fitting nodes scored per placement. Default: the server's sampling (services log2 of the nodes, at
    /// least 2; batch 2); `all` scores every feasible node (the tightest packing, O(nodes) per placement).
    #[arg(long)]
    pub candidates: Option<String>,
    /// Make the benchmark jobs batch jobs (2 candidates per placement by default) instead of services.
    #[arg(long)]
    pub batch: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The pure scheduler on an in-memory cluster: placements/s, latency per placement and per evaluation,
    /// peak memory.
    Scheduler {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Stop once this many allocations are placed.
        #[arg(long, default_value_t = 100_000)]
        allocs: usize,
        #[command(flatten)]
        workload: WorkloadArgs,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A server in this process (embedded store in a temporary directory) and `davit sim` in a child process:
    /// submit jobs until the allocations run; wall time, placements/s, API latency, peak memory.
    E2e {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Stop once this many allocations run (as the simulated agents see them).
        #[arg(long, default_value_t = 100_000)]
        allocs: usize,
        #[command(flatten)]
        workload: WorkloadArgs,
        /// Scheduler workers (default: two per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Give up after this long.
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// Run the server with ACLs: every request of the sim and the benchmark carries a token.
        #[arg(long)]
        acl: bool,
        /// Serve HTTPS (a CA made for the run): the sim and the benchmark talk TLS to the server.
        #[arg(long)]
        tls: bool,
        /// Where the server keeps its state: redb (a file in a temporary directory) or etcd (an etcd you run,
        /// --etcd-endpoints; the same benchmark on redb runs first, in a process of its own, for comparison).
        #[arg(long, value_enum, default_value = "redb")]
        store: super::StoreKind,
        #[command(flatten)]
        etcd: super::EtcdArgs,
    },
}
