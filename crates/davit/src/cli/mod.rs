//! The command-line grammar (clap): the global flags and the client commands here, the long-running
//! processes' flags in `process.rs`, the measuring tools' in `tools.rs`.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

mod process;
mod tools;

pub use process::{AgentArgs, DevArgs, EtcdArgs, NodeArgs, ServerArgs, StoreKind};
pub use tools::{Algorithm, BenchCommand, SimArgs, SimNodeArgs, WorkloadArgs};

#[derive(Debug, Parser)]
#[command(name = "davit", version, about = "Schedule and run processes, containers and VMs on a cluster", propagate_version = true)]
pub struct Cli {
    /// Address of the davit server that client commands talk to; several, comma-separated, for servers on etcd
    /// (the first that accepts connections: the leader) (`davit agent` names its servers with --servers; `davit
    /// dev` and `davit server` listen on --bind).
    #[arg(long, global = true, env = "DAVIT_ADDR", default_value = davit_api::http::DEFAULT_SERVER_ADDR)]
    pub address: String,
    /// ACL token secret sent with every request (an agent's token needs `node: write`).
    #[arg(long, global = true, env = "DAVIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Namespace of the jobs, allocations, evaluations and services a command works on (default: `default`,
    /// or the one a job file names).
    #[arg(short = 'n', long, global = true, env = "DAVIT_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How clients (the CLI, agents) talk to `https://` servers.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// The cluster's CA certificate: servers must present a certificate it signed (`<server data dir>/tls/ca.pem`
    /// for a server started with --tls).
    #[arg(long, global = true, env = "DAVIT_CACERT")]
    pub ca_cert: Option<PathBuf>,
    /// A certificate to present to the server (`davit tls cert create --cli`; for an agent, its node
    /// certificate from `davit tls cert create --agent` instead of the one it gets when it joins).
    #[arg(long, global = true, env = "DAVIT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The key of --client-cert.
    #[arg(long, global = true, env = "DAVIT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Server and agent in one process with an embedded store: try davit on one machine.
    Dev(DevArgs),
    /// Run a server: API, store, scheduler.
    Server(ServerArgs),
    /// Run an agent: runs the allocations the servers place on this node.
    Agent(AgentArgs),
    /// Manage jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Inspect allocations and their logs.
    #[command(subcommand)]
    Alloc(AllocCommand),
    /// Inspect nodes, drain them, change their eligibility.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Inspect the service catalog: instances, health, proxy statistics.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Inspect evaluations.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Follow, fail, pause and resume the rollouts of new job versions.
    #[command(subcommand)]
    Deployment(DeploymentCommand),
    /// The autoscaler: a group's metrics against their targets and its decisions (`status`), and the decision
    /// for numbers written by hand, with its arithmetic (`plan`).
    #[command(subcommand)]
    Scaling(ScalingCommand),
    /// Even out node load: move running service allocations from the fullest nodes to the emptiest (new ones),
    /// a few at a time, each wave waiting until its replacements run.
    Rebalance(RebalanceArgs),
    /// Follow the cluster's changes.
    #[command(subcommand)]
    Event(EventCommand),
    /// Access control: bootstrap, policies, tokens.
    #[command(subcommand)]
    Acl(AclCommand),
    /// Namespaces and their quotas.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Variables: key/value items at a path, encrypted at rest.
    #[command(subcommand)]
    Var(VarCommand),
    /// Cluster operations: the keyring that encrypts variables.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Certificates for mutual TLS: a CA, and certificates for servers, agents and CLI users (offline).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Simulate many agents in one process (no workloads): real registration, heartbeats and allocation
    /// status over the HTTP API; every allocation runs at once. A tool for measuring the server.
    Sim(SimArgs),
    /// Measure the scheduler alone, or the whole server with simulated agents. Prints figures and the machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `source <(davit completion bash)`; zsh: `davit completion zsh > "${fpath[1]}/_davit"`; fish:
    /// `davit completion fish > ~/.config/fish/completions/davit.fish`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: supervises one task process (started by the exec driver).
    #[command(hide = true)]
    Executor {
        /// The task spec file written by the exec driver.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The commands that listen rather than talk to a server, and the flag that says where: `--address` means
/// nothing to them, so it is hidden from their help and refused.
const OWN_ADDRESS_FLAG: [(&str, &str); 3] =
    [("agent", "--servers ADDR[,ADDR…] (the servers it joins)"), ("dev", "--bind ADDR:PORT"), ("server", "--bind ADDR:PORT")];

/// The grammar as clap builds it (for parsing and for completion scripts). The commands that listen get a
/// hidden `--address` of their own in place of the global one, so that their help does not offer it.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    for (name, _) in OWN_ADDRESS_FLAG {
        command = command.mut_subcommand(name, |subcommand| subcommand.arg(clap::Arg::new("address").long("address").hide(true)));
    }
    command
}

/// Parses the command line; `davit agent --address …` is an error that names --servers.
pub fn parse() -> Result<Cli, clap::Error> {
    let mut command = command();
    let matches = command.try_get_matches_from_mut(std::env::args_os())?;
    if let Some((name, subcommand)) = matches.subcommand()
        && let Some((_, flag)) = OWN_ADDRESS_FLAG.iter().find(|(own, _)| *own == name)
        && subcommand.value_source("address") == Some(ValueSource::CommandLine)
    {
        let message = format!("`davit {name}` takes no --address (the server of client commands): pass {flag}");
        let subcommand = command.find_subcommand_mut(name).expect("the subcommand just parsed");
        return Err(subcommand.error(clap::error::ErrorKind::ArgumentConflict, message));
    }
    Cli::from_arg_matches(&matches).map_err(|error| error.format(&mut command))
}

impl Command {
    /// Commands that talk to a server and print what they get (not a server, agent, sim or bench).
    pub fn is_client(&self) -> bool {
        matches!(
            self,
            Command::Job(_)
                | Command::Alloc(_)
                | Command::Node(_)
                | Command::Service(_)
                | Command::Eval(_)
                | Command::Deployment(_)
                | Command::Scaling(_)
                | Command::Rebalance(_)
                | Command::Event(_)
                | Command::Acl(_)
                | Command::Namespace(_)
                | Command::Var(_)
                | Command::Tls(_)
                | Command::Operator(_)
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct Output {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// The certificate authority.
    #[command(subcommand)]
    Ca(TlsCaCommand),
    /// Certificates signed by the CA.
    #[command(subcommand)]
    Cert(TlsCertCommand),
}

#[derive(Debug, Subcommand)]
pub enum TlsCaCommand {
    /// Make a CA: `ca.pem` and `ca-key.pem` (mode 0600) in --dir; never replaces an existing one.
    Create {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value = "3650d")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCertCommand {
    /// Make a certificate and its key, signed by the CA: `server.pem`, `agent.pem` or `cli.pem` with
    /// `…-key.pem` (0600) in --dir.
    #[command(group = clap::ArgGroup::new("role").required(true).args(["server", "agent", "cli"]))]
    Create {
        /// For a server: valid for `server.davit`, localhost and the --name values.
        #[arg(long)]
        server: bool,
        /// For an agent: valid for `<node id>.node.davit` (give --node-id) and the --name values.
        #[arg(long, requires = "node_id")]
        agent: bool,
        /// For a person or tool using the API.
        #[arg(long)]
        cli: bool,
        /// The agent's node id (its `<data dir>/node-id`).
        #[arg(long)]
        node_id: Option<String>,
        /// Another host name or IP address the certificate is valid for (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Where the CA is (`ca.pem`, `ca-key.pem`).
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Where to write the certificate and key.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value = "365d")]
        ttl: String,
    },
}

#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// Allocations moved at once (at most one per job group); the next wave starts when they run.
    #[arg(long, default_value_t = 1)]
    pub max_disruption: u32,
    /// Stop after this many waves.
    #[arg(long, default_value_t = 100)]
    pub max_waves: u32,
    /// Show the first wave's moves without making them.
    #[arg(long)]
    pub dry_run: bool,
    /// Make one wave and return without waiting for the replacements.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Give up waiting for a wave's replacements after this long.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Register a job from a YAML or JSON file and wait until its allocations run.
    Run {
        file: PathBuf,
        /// Return once the job is registered.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m")]
        timeout: String,
        #[command(flatten)]
        output: Output,
    },
    /// Check a job file without registering it.
    Validate { file: PathBuf },
    /// Show what registering a job file would do (placements, stops, preemptions, failures, diff), without
    /// registering it. Exits 1 when some allocations could not be placed.
    Plan {
        file: PathBuf,
        /// Also list the runner-up nodes of each placement with their scores.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Show one job, or list all jobs.
    Status {
        name: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Stop a job's allocations (and forget the job with --purge).
    Stop {
        name: String,
        /// Also forget the job and its versions (its allocations are stopped either way).
        #[arg(long)]
        purge: bool,
        /// Return at once instead of waiting until every allocation stopped.
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// List the stored versions of a job.
    History {
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// Show what changed between two versions (default: the last two).
    Diff {
        name: String,
        from: Option<u64>,
        to: Option<u64>,
        #[command(flatten)]
        output: Output,
    },
    /// Register an earlier version's spec as the newest version.
    Revert {
        name: String,
        // Its id is not `version`: that is the `--version` flag's.
        #[arg(id = "revert_to", value_name = "VERSION")]
        version: u64,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Change the count of one group.
    Scale {
        name: String,
        group: String,
        count: u32,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Restart the job's running allocations in place, a batch at a time (a rolling restart): each batch must be
    /// healthy again before the next one restarts.
    Restart {
        name: String,
        /// Only this group's allocations (repeatable); default: every group.
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
        /// Allocations restarted at once; default: the group's update.max_parallel, else 1.
        #[arg(long)]
        batch_size: Option<u32>,
        /// Give up (exit 1) when a restarted allocation is not healthy again after this long; default: the
        /// group's update.healthy_deadline, else 5m.
        #[arg(long)]
        healthy_deadline: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AllocCommand {
    /// Show an allocation: tasks, events, resources.
    Status {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Print a task's log.
    Logs {
        id: String,
        task: Option<String>,
        /// Keep following new output.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Show stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Start with the last N lines (as `tail -n N`).
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
    },
    /// Restart every task of a running allocation in place (same allocation, same node).
    Restart { id: String },
    /// Live-migrate a running VM allocation to another node; waits until the guest runs there and prints the
    /// downtime.
    Migrate {
        id: String,
        /// Target node (id, id prefix or name); default: the best other ready node with room.
        #[arg(long)]
        node: Option<String>,
        /// Return once the destination allocation is placed.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
    /// Run a command inside a running task: `davit alloc exec <alloc> [task] -- <command> [args…]`.
    /// Exits with the command's exit code.
    Exec {
        id: String,
        task: Option<String>,
        /// Run the command on a terminal (default: when stdin and stdout are terminals).
        #[arg(long, short = 't', conflicts_with = "no_tty")]
        tty: bool,
        /// Never use a terminal, even when stdin is one.
        #[arg(long, short = 'T')]
        no_tty: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show one node.
    Status {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Move every allocation off a node (one per group at a time) and keep it from getting new ones.
    Drain {
        /// Node id, id prefix or name.
        node: String,
        /// Stop whatever is left after this long (e.g. 1m); default: no deadline.
        #[arg(long)]
        deadline: Option<String>,
        /// Leave system-job allocations on the node.
        #[arg(long)]
        ignore_system: bool,
        /// Cancel a drain (the node stays ineligible; see `davit node eligibility --enable`).
        #[arg(long)]
        disable: bool,
        /// Return once the drain is recorded instead of following it.
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Allow or forbid new allocations on a node; running ones are not touched.
    Eligibility {
        /// Node id, id prefix or name.
        node: String,
        #[arg(long, conflicts_with = "disable", required_unless_present = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services with their healthy and total instances.
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show one service: settings, instances with health and weight, and per-instance proxy statistics.
    Info {
        name: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Show an evaluation.
    Status {
        id: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// List deployments, newest first.
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show a deployment (id or id prefix) and its groups' progress; `-w` follows it until it ends.
    Status {
        id: String,
        #[arg(short, long)]
        watch: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Fail a running deployment now (a group with `auto_revert` rolls back to the newest stable version).
    Fail { id: String },
    /// Stop replacing allocations until `resume` (idempotent).
    Pause { id: String },
    /// Go on replacing allocations (idempotent).
    Resume { id: String },
    /// Promote the canaries (every group's, or those of `--group`, repeatable): the rest of the group rolls; with
    /// as many canaries as the count (blue/green), every old allocation stops at once.
    Promote {
        id: String,
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
    },
    /// Say which allocations of the deployment are healthy or not (groups with `update.health_check: manual`).
    Health {
        id: String,
        /// Allocation ids (or prefixes) found healthy (repeatable).
        #[arg(long)]
        healthy: Vec<String>,
        /// Allocation ids (or prefixes) found unhealthy (repeatable).
        #[arg(long)]
        unhealthy: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScalingCommand {
    /// The autoscaler's decision for the numbers in FILE, with its arithmetic (offline; Kubernetes' HPA rules).
    ///
    /// FILE is JSON: `current`, `min`, `max`, one `metric` (as in a job's `scaling.metrics`) with its
    /// `instances` (`request_millicores`/`usage_millicores`, `request_mib`/`usage_mib`, or `value`; `ready`,
    /// `status`, `started_seconds_ago`, `ready_seconds_ago`, `sample_seconds_ago`, `stopping`) or a `proposal`
    /// to normalise; `tolerance`, `cpu_initialization_period`, `initial_readiness_delay`, `behavior` as in a
    /// job; `history` with `recommendations`, `scale_up_events`, `scale_down_events` (`seconds_ago` each).
    Plan {
        file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// How well the predictive autoscaler's Holt-Winters model forecasts a series (offline): fitted on all but
    /// the last season, it forecasts that season; its mean absolute percentage error is printed next to the
    /// naive seasonal forecast's (the season before, repeated).
    Backtest {
        /// A CSV file: one value per line, or `time,value` lines (the last column counts; lines that are not
        /// numbers, such as a header, are skipped).
        #[arg(long)]
        series: PathBuf,
        /// Points per season.
        #[arg(long)]
        season: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Each group with `scaling:` of JOB: its metrics against their targets, the proposal, what limits the
    /// decision, and the latest scaling events; `-w` refreshes until interrupted.
    Status {
        job: String,
        /// Only this group.
        group: Option<String>,
        #[arg(short, long)]
        watch: bool,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Print changes as they happen, one line each, until interrupted.
    Stream {
        /// Only these topics (repeatable): Job, JobVersion, Node, Allocation, Evaluation, AllocationHealth.
        #[arg(long = "topic", short = 't')]
        topics: Vec<String>,
        /// Start after this store index (0: replay every change the server still keeps first).
        #[arg(long, default_value_t = 0)]
        index: u64,
        /// Output format: one JSON object per line, or `<time> <topic> <type> <key>`.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Json)]
        format: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum VarCommand {
    /// Write a variable: `davit var put shop/db url=postgres://… user=shop`, or `@FILE` for a JSON object of
    /// items. Replaces all its items.
    Put {
        path: String,
        /// KEY=VALUE items, or @FILE.
        #[arg(required = true)]
        items: Vec<String>,
        /// Only if the variable's index is still N (0: only if it does not exist yet).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Print a variable's items (KEY=VALUE lines; `-o json` for the whole variable).
    Get {
        path: String,
        #[command(flatten)]
        output: Output,
    },
    /// List variables (no values) under a prefix.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        output: Output,
    },
    /// Delete a variable.
    Rm {
        path: String,
        #[arg(long)]
        cas: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// The keyring that encrypts variables.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// Collect ended evaluations, allocations and stopped jobs, and old job versions, now.
    Gc {
        /// Whatever their age (the server's thresholds otherwise: 1h, 1h, 4h).
        #[arg(long)]
        force: bool,
    },
    /// The servers of the cluster, which one leads and since when.
    Servers {
        #[command(flatten)]
        output: Output,
    },
    /// Back the cluster's state up, and restore it into a store (also of the other kind).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save every key of the store, read at one revision, to FILE (owner-only; needs a management token).
    Save { file: PathBuf },
    /// Write FILE's keys into a store while no server uses it (stop the servers first), replacing what is
    /// there; then start the servers on it. Moves a cluster from redb to etcd, too.
    Restore {
        file: PathBuf,
        /// The store to restore into: redb (the file in --data-dir) or etcd.
        #[arg(long, value_enum, default_value = "redb")]
        store: StoreKind,
        /// The server's data directory (with --store redb).
        #[arg(long, default_value = "/var/lib/davit/server")]
        data_dir: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Replace a store that already holds a cluster's state (jobs, nodes); without it, only an empty store
        /// (or one that only a server's first start wrote to) is restored into.
        #[arg(long)]
        force: bool,
    },
    /// What FILE holds: its revision, age, source backend and keys per kind; checks it is whole.
    Inspect {
        file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// List the keys and how many variables each still encrypts.
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Add a key and make it the active one; variables are re-encrypted with it in the background.
    Rotate,
    /// Remove a key that is not active and encrypts no variable.
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create or update a namespace and its quota (a flag left out means no limit).
    Apply {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Total CPU of the namespace's live allocations, in millicores.
        #[arg(long)]
        cpu: Option<u64>,
        /// Total memory of the namespace's live allocations, in MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Live allocations at most.
        #[arg(long)]
        allocs: Option<u64>,
        /// The largest `count` a group may ask for.
        #[arg(long)]
        max_count: Option<u32>,
    },
    /// List namespaces with their usage.
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show a namespace: quota against usage, jobs.
    Status {
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// Delete an empty namespace.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Create the first management token and print its secret (works once per cluster).
    Bootstrap {
        #[command(flatten)]
        output: Output,
    },
    /// Manage policies: what tokens may do, per namespace.
    #[command(subcommand)]
    Policy(AclPolicyCommand),
    /// Manage tokens.
    #[command(subcommand)]
    Token(AclTokenCommand),
    /// Tokens agents join with (`davit agent --join-token`).
    #[command(subcommand)]
    JoinToken(AclJoinTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum AclJoinTokenCommand {
    /// Create a join token and print its secret: each agent that registers with it gets an identity of its own,
    /// with which it may act for its node alone.
    Create {
        #[arg(long, default_value = "join")]
        name: String,
        /// How many nodes may join with it (default: any number until it expires).
        #[arg(long)]
        uses: Option<u32>,
        /// The token expires after this long (e.g. 1h); default: never.
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum AclPolicyCommand {
    /// Create or replace a policy from a YAML or JSON file, e.g.
    /// `namespaces: {default: {policy: read, capabilities: [read-logs]}}` plus optional `node: read|write`
    /// and `operator: read|write`. Capabilities: read-job, submit-job, scale-job, deployment-write,
    /// read-logs, alloc-exec, alloc-lifecycle; shorthands: deny, read, scale, write.
    Apply {
        name: String,
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List policies (a client token sees its own).
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show a policy and its rules.
    Info {
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// Delete a policy; tokens that held it lose what it granted.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenTypeArg {
    Client,
    Management,
}

#[derive(Debug, Subcommand)]
pub enum AclTokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long = "type", value_enum, default_value_t = TokenTypeArg::Client)]
        token_type: TokenTypeArg,
        /// Policy the token holds (repeatable; client tokens need at least one).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// The token expires after this long (e.g. 8h); default: never.
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// List tokens (never their secrets).
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show a token by accessor id or prefix.
    Info {
        accessor_id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a token by accessor id or prefix: it stops working at once.
    Revoke { accessor_id: String },
    /// Show the token this command sends (DAVIT_TOKEN) and its policies.
    #[command(name = "self")]
    Whoami {
        #[command(flatten)]
        output: Output,
    },
}
