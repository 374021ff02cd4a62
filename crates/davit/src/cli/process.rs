//! The flags of the long-running processes: `davit dev`, `davit server`, `davit agent`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Keep state here (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7646")]
    pub bind: SocketAddr,
    /// Address of the agent's own API (logs).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub agent_bind: SocketAddr,
    /// Check tokens (as `davit server --acl`): bootstraps, prints the management token, and lets the dev
    /// agent join with a one-time join token.
    #[arg(long)]
    pub acl: bool,
    /// How often the autoscaler evaluates groups with `scaling.metrics` (`davit server`: 15s).
    #[arg(long, default_value = "5s")]
    pub autoscaler_interval: String,
    /// `prometheus` scaling metrics may query the Prometheus at this HOST:PORT (repeatable); any on a loopback
    /// address always.
    #[arg(long = "allow-prometheus", value_name = "HOST:PORT")]
    pub allow_prometheus: Vec<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Where a server keeps the cluster's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Redb,
    Etcd,
}

/// How to reach the etcd store (with --store etcd).
#[derive(Clone, Debug, Args)]
pub struct EtcdArgs {
    /// The etcd members' client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// Every key davit keeps in etcd lives under this prefix.
    #[arg(long, default_value = "/davit/")]
    pub etcd_prefix: String,
    /// etcd user, when etcd has authentication on (the password comes from DAVIT_ETCD_PASSWORD).
    #[arg(long)]
    pub etcd_user: Option<String>,
    /// etcd's --max-txn-ops, at least its default of 128 (davit commits larger batches in several transactions).
    #[arg(long, default_value_t = 128)]
    pub etcd_max_txn_ops: usize,
    /// TLS to etcd (https:// endpoints): the CA that signed etcd's certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca_cert: Option<PathBuf>,
    /// A client certificate for etcd's --client-cert-auth (with --etcd-key).
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca_cert"])]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// How often the autoscaler evaluates groups with `scaling.metrics` (Kubernetes' HPA sync period).
    #[arg(long, default_value = "15s")]
    pub autoscaler_interval: String,
    /// `prometheus` scaling metrics may query the Prometheus at this HOST:PORT (repeatable; none by default: a
    /// job spec must not make the server send requests where its author likes).
    #[arg(long = "allow-prometheus", value_name = "HOST:PORT")]
    pub allow_prometheus: Vec<String>,
    /// Where the store lives (with --store etcd: this server's own files, its audit log and TLS).
    #[arg(long, default_value = "/var/lib/davit/server")]
    pub data_dir: PathBuf,
    /// `redb`: an embedded store in --data-dir, one server; `etcd`: an etcd cluster (--etcd-endpoints) shared by
    /// several servers, of which one leads at a time.
    #[arg(long, value_enum, default_value = "redb")]
    pub store: StoreKind,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The leadership lease's TTL: a server that died or stopped answering is replaced after about this long.
    #[arg(long, default_value = "5s")]
    pub leader_ttl: String,
    /// This server's name among the servers on one etcd (default: host name and --bind).
    #[arg(long)]
    pub name: Option<String>,
    /// HOST:PORT where the other servers reach this one's API (followers forward writes to the leader there);
    /// default: --bind, which then must not be 0.0.0.0 with --store etcd.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    #[arg(long, default_value = "127.0.0.1:7646")]
    pub bind: SocketAddr,
    /// Scheduler workers (default: two per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Hard bound: mark a node down after this long without a heartbeat, whatever its phi-accrual
    /// suspicion says (which usually marks a dead node down within about 2 s).
    #[arg(long = "max-heartbeat-ttl", alias = "heartbeat-ttl", default_value = "10s")]
    pub max_heartbeat_ttl: String,
    /// Check every request's token against ACL policies; bootstrap the first token with `davit acl bootstrap`.
    #[arg(long)]
    pub acl: bool,
    /// Serve the API on a non-loopback address without ACLs (anyone who reaches it owns the cluster).
    #[arg(long)]
    pub insecure_open_api: bool,
    /// Write reads (GET requests) to the audit log too, not only writes.
    #[arg(long)]
    pub audit_reads: bool,
    /// Serve HTTPS with mutual TLS: a CA is made in `<data dir>/tls/` on the first start (unless
    /// --tls-ca-cert/--tls-ca-key name one); joining agents get node certificates signed by it.
    #[arg(long)]
    pub tls: bool,
    /// The CA certificate (from `davit tls ca create`) instead of `<data dir>/tls/ca.pem`; implies --tls.
    #[arg(long, requires = "tls_ca_key")]
    pub tls_ca_cert: Option<PathBuf>,
    /// The CA's key.
    #[arg(long, requires = "tls_ca_cert")]
    pub tls_ca_key: Option<PathBuf>,
    /// This server's certificate (from `davit tls cert create --server`) instead of one the CA issues to it;
    /// read again when the file changes.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Another name (host name or IP address) for the server's own certificate, for tools that check the
    /// address they dial (davit clients check the name `server.davit`). Repeatable.
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,
    /// Lifetime of the certificates the server issues (its own and nodes'); each is renewed after two
    /// thirds of it.
    #[arg(long, default_value = "30d")]
    pub tls_cert_ttl: String,
    /// Most allocations per group (`count`) a job may ask for.
    #[arg(long, default_value_t = davit_api::spec::SpecLimits::default().max_count)]
    pub max_count: u32,
    /// Most groups per job.
    #[arg(long, default_value_t = davit_api::spec::SpecLimits::default().max_groups)]
    pub max_groups: usize,
    /// Most tasks per group.
    #[arg(long, default_value_t = davit_api::spec::SpecLimits::default().max_tasks)]
    pub max_tasks: usize,
    /// Most ports per group.
    #[arg(long, default_value_t = davit_api::spec::SpecLimits::default().max_ports)]
    pub max_ports: usize,
    /// Most bytes of environment (env and secret_env) per task; also bounds long texts (templates, user data).
    #[arg(long, default_value_t = davit_api::spec::SpecLimits::default().max_env_bytes)]
    pub max_env_bytes: usize,
    /// Most bytes of any other string in a spec.
    #[arg(long, default_value_t = davit_api::spec::SpecLimits::default().max_string_bytes)]
    pub max_string_bytes: usize,
    /// How often ended objects are garbage collected.
    #[arg(long, default_value = "5m")]
    pub gc_interval: String,
    /// Collect evaluations that ended this long ago.
    #[arg(long, default_value = "1h")]
    pub eval_gc_threshold: String,
    /// Collect allocations that ended (and were replaced or stopped) this long ago.
    #[arg(long, default_value = "1h")]
    pub alloc_gc_threshold: String,
    /// Collect jobs stopped this long ago, once all their allocations ended.
    #[arg(long, default_value = "4h")]
    pub job_gc_threshold: String,
    /// Versions kept per job (never the current one, nor one a live allocation runs).
    #[arg(long, default_value_t = 10)]
    pub job_max_versions: usize,
    /// Most blocking queries open at once (429 beyond).
    #[arg(long, default_value_t = davit_server::AdmissionConfig::default().blocking_queries)]
    pub max_blocking_queries: usize,
    /// Most blocking queries open at once from one client address.
    #[arg(long, default_value_t = davit_server::AdmissionConfig::default().blocking_queries_per_client)]
    pub max_blocking_queries_per_client: usize,
    /// Most event streams open at once.
    #[arg(long, default_value_t = davit_server::AdmissionConfig::default().event_streams)]
    pub max_event_streams: usize,
    /// Most event streams open at once from one client address.
    #[arg(long, default_value_t = davit_server::AdmissionConfig::default().event_streams_per_client)]
    pub max_event_streams_per_client: usize,
    /// Most bytes of events one event stream may have waiting for a slow client; beyond, its stream ends with a
    /// line that names the index to resume from.
    #[arg(long, default_value_t = davit_server::AdmissionConfig::default().event_stream_buffer_bytes)]
    pub event_stream_buffer_bytes: usize,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server addresses, comma separated.
    #[arg(long, value_delimiter = ',', default_value = davit_api::http::DEFAULT_SERVER_ADDR)]
    pub servers: Vec<String>,
    /// Where allocations, logs and the agent's state live.
    #[arg(long, default_value = "/var/lib/davit/agent")]
    pub data_dir: PathBuf,
    /// Join a cluster that checks tokens: register once with this join token, then act with the node's own
    /// identity (kept in the data dir). See `davit acl join-token create`.
    #[arg(long, env = "DAVIT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Address of the agent's own API (logs).
    #[arg(long, default_value = "127.0.0.1:7647")]
    pub bind: SocketAddr,
    /// The host or IP address servers and other agents reach this node at (its API, live migrations);
    /// default: the --bind address, or 127.0.0.1 when that is 0.0.0.0.
    #[arg(long, value_name = "HOST")]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    #[arg(long, default_value = "")]
    pub node_class: String,
    /// Host ports the scheduler may assign, e.g. 20000-32000.
    #[arg(long, default_value = "20000-32000")]
    pub port_range: String,
    /// Extra node attribute for constraints, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// OCI runtime of the container driver: auto (crun if installed, else runc), crun or runc.
    #[arg(long, default_value = "auto", value_parser = ["auto", "crun", "runc"])]
    pub container_runtime: String,
    /// Registry reached over plain HTTP (HOST or HOST:PORT, repeatable); loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Registry credentials HOST=USER:PASSWORD (repeatable).
    #[arg(long = "registry-auth", value_name = "HOST=USER:PASSWORD", env = "DAVIT_REGISTRY_AUTH", value_delimiter = ',')]
    pub registry_auth: Vec<String>,
    /// Host directory containers may mount (repeatable); paths in the allocation directory always may.
    #[arg(long = "allow-host-path", value_name = "DIR")]
    pub allowed_host_paths: Vec<PathBuf>,
    /// Let tasks run privileged containers (and add any capability).
    #[arg(long)]
    pub allow_privileged: bool,
    /// Let containers add this capability beyond Docker's default set, e.g. NET_ADMIN (repeatable).
    #[arg(long = "allow-cap", value_name = "NAME")]
    pub allowed_caps: Vec<String>,
    /// Let exec tasks run as root (`user: root`) or on the host's file system (`isolation: none`); without it
    /// they run as nobody with the host read-only.
    #[arg(long)]
    pub allow_root_exec: bool,
    /// VM kernels, initrds and disk images on this node must lie in this directory (repeatable; default
    /// /var/lib/davit/guest).
    #[arg(long = "vm-image-dir", value_name = "DIR")]
    pub vm_image_dirs: Vec<PathBuf>,
    /// Allow VM image downloads over plain HTTP from this HOST:PORT (repeatable; HTTPS is always allowed).
    #[arg(long = "vm-download-http-host", value_name = "HOST:PORT")]
    pub vm_download_http_hosts: Vec<String>,
    /// Evict unused images (least recently used first) when the image cache grows past this many MiB.
    #[arg(long, default_value_t = 10240)]
    pub image_cache_mib: u64,
    /// Address (UDP and TCP) of the node's service DNS server: SERVICE.service.davit, ALLOC-ID.alloc.davit.
    #[arg(long, default_value = "127.0.0.1:8600")]
    pub dns_bind: SocketAddr,
    /// IP the service proxy listens on (services' `local_port`, tasks' `upstreams`).
    #[arg(long, default_value = "127.0.0.1")]
    pub proxy_bind_ip: IpAddr,
    /// Run no service proxy and no DNS server on this node.
    #[arg(long)]
    pub no_service_proxy: bool,
    /// How often allocations' CPU and memory usage and the proxy's counters are sampled and reported to the
    /// servers (the autoscaler's signals).
    #[arg(long, default_value = "5s")]
    pub usage_interval: String,
}
