//! Request and response bodies of the HTTP API under `/v1`, shared by server, agent, client and CLI.
//!
//! Routes (all JSON unless noted; list and get routes accept blocking-query parameters
//! `?index=N&wait=30s` and answer with the [`INDEX_HEADER`] header). Every list route (`Vec<…>` answers but
//! a node's own allocations and the keyring) pages: `?per_page=N` (default 1000, at most 10,000) and
//! `?next_token=T` from the previous answer's [`NEXT_TOKEN_HEADER`], present while more items follow:
//!
//! | method | path | body → response |
//! |---|---|---|
//! | POST | `/v1/jobs?filename=F` | spec text (YAML or JSON) → [`RegisterJobResponse`]; 400 [`ApiError`] with spec errors |
//! | POST | `/v1/jobs/validate?filename=F` | spec text → [`ValidateJobResponse`] (nothing stored) |
//! | GET | `/v1/jobs` | → `Vec<`[`JobListEntry`]`>` |
//! | GET | `/v1/job/{name}` | → [`Job`] |
//! | GET | `/v1/job/{name}/status` | → [`JobStatusResponse`] |
//! | GET | `/v1/job/{name}/versions` | → `Vec<`[`Job`]`>`, newest first |
//! | GET | `/v1/job/{name}/version/{version}` | → [`Job`] (that version; what an agent runs for an allocation) |
//! | GET | `/v1/job/{name}/diff?from=A&to=B` | → [`JobDiffResponse`] |
//! | POST | `/v1/job/{name}/revert` | [`RevertJobRequest`] → [`RegisterJobResponse`] |
//! | POST | `/v1/job/{name}/scale` | [`ScaleJobRequest`] → [`RegisterJobResponse`] |
//! | DELETE | `/v1/job/{name}?purge=true` | → [`StopJobResponse`] |
//! | GET | `/v1/job/{name}/allocations` | → `Vec<`[`AllocListEntry`]`>` |
//! | GET | `/v1/job/{name}/evaluations` | → `Vec<`[`Evaluation`]`>` |
//! | GET | `/v1/job/{name}/deployment` | → [`Deployment`](crate::deployment::Deployment) of the job's newest version that has one (blocking query; 404 when none) |
//! | GET | `/v1/deployments` | → `Vec<`[`Deployment`](crate::deployment::Deployment)`>`, newest first |
//! | GET | `/v1/deployment/{id-or-prefix}` | → [`Deployment`](crate::deployment::Deployment) (blocking query on its job) |
//! | POST | `/v1/deployment/{id}/fail`, `/pause`, `/resume` | → [`Deployment`](crate::deployment::Deployment); 400 for a deployment that ended; pause and resume are idempotent |
//! | POST | `/v1/allocation/{id}/restart` | → [`Allocation`] with its `restart_generation` moved on: its agent restarts the tasks in place; 400 for one stopping or ended |
//! | POST | `/v1/deployment/{id}/promote` | [`PromoteDeploymentRequest`] → [`Deployment`](crate::deployment::Deployment); 400 without canaries to promote or with canaries not healthy yet |
//! | POST | `/v1/deployment/{id}/health` | [`DeploymentHealthRequest`] → [`Deployment`](crate::deployment::Deployment): an operator's verdict on allocations of the deployment (`health_check: manual`) |
//! | GET | `/v1/nodes` | → `Vec<`[`NodeListEntry`]`>` |
//! | GET | `/v1/node/{id-prefix-or-name}` | → [`Node`](crate::objects::Node) |
//! | POST | `/v1/node/{id-prefix-or-name}/eligibility` | [`NodeEligibilityRequest`] → [`IndexResponse`]; 409 to make a draining node eligible |
//! | POST | `/v1/node/{id-prefix-or-name}/drain` | [`NodeDrainRequest`] → [`IndexResponse`] |
//! | POST | `/v1/nodes/register` | [`Node`](crate::objects::Node) → [`NodeRegisterResponse`] |
//! | PUT | `/v1/node/{id}/heartbeat` | → [`HeartbeatResponse`]; 404 if the server does not know the node (re-register) |
//! | GET | `/v1/node/{id}/allocations` | → `Vec<`[`Allocation`]`>` (blocking query; the agent's long-poll) |
//! | POST | `/v1/node/{id}/allocations/status` | `Vec<`[`AllocStatusUpdate`]`>` → [`IndexResponse`] |
//! | POST | `/v1/node/{id}/usage` | [`UsageReport`] → [`IndexResponse`]: the node's allocations' CPU and memory usage and its proxy's counters (kept in memory by the server the agent reports to) |
//! | GET | `/v1/allocation/{id-or-prefix}/usage` | → [`AllocUsageInfo`]: the latest usage sample next to the request |
//! | GET | `/v1/job/{name}/scaling` | → [`ScalingStatus`]: the autoscaler's view of each group with `scaling:` |
//! | PUT | `/v1/nodes/heartbeat` | [`NodesHeartbeatRequest`] → [`NodesHeartbeatResponse`] (many nodes at once; `davit sim`) |
//! | POST | `/v1/nodes/allocations` | [`NodesAllocationsRequest`] → `Vec<`[`Allocation`]`>` changed after `?index=` on those nodes (blocking query; many nodes' long-poll in one) |
//! | POST | `/v1/nodes/allocations/status` | `Vec<`[`NodeAllocStatusUpdates`]`>` → [`IndexResponse`] (many nodes at once, one commit) |
//! | GET | `/v1/allocations?prefix=P` | → `Vec<`[`AllocListEntry`]`>` |
//! | GET | `/v1/allocation/{id-or-prefix}` | → [`Allocation`] |
//! | GET | `/v1/allocation/{id}/logs?task=T&stream=stdout&follow=true&offset=N&lines=N` | → bytes (text/plain, streamed); the server relays it from the node's agent |
//! | POST | `/v1/allocation/{id-or-prefix}/migrate` | [`MigrateAllocRequest`] → [`MigrateAllocResponse`]; 400 not a running vm allocation, 409 same node or no room, 404 unknown node |
//! | GET | `/v1/allocation/{id}/exec?command=[…]&task=T&tty=true` | `Upgrade: davit-exec` → 101, then [`crate::exec::ExecFrame`]s both ways; relayed to the node's agent |
//! | GET | `/v1/evaluations?job=J` | → `Vec<`[`Evaluation`]`>` |
//! | GET | `/v1/evaluation/{id-or-prefix}` | → [`Evaluation`] |
//! | GET | `/v1/services` | → `Vec<`[`ServiceListEntry`]`>` (blocking query; the index moves only when the catalog changes) |
//! | GET | `/v1/service/{name}?stats=true` | → [`ServiceInfo`]; with `stats`, per-instance proxy counters gathered from the ready nodes' agents |
//! | GET | `/v1/catalog` | → [`Catalog`]: every service with its instances (blocking query; what agents watch) |
//! | GET | `/v1/status` | → [`StatusResponse`] |
//! | GET | `/v1/event/stream?index=N&topic=T…` | → NDJSON, one [`EventWire`] per line (and `{}` heartbeats every 10 s), until the client disconnects (or falls more than `--event-stream-buffer-bytes` behind: a last [`EventStreamEnd`] line); 400 for an unknown topic (see [`EVENT_TOPICS`]) |
//! | GET | `/metrics` | → Prometheus text format 0.0.4 (not under `/v1`) |
//! | POST | `/v1/operator/gc?force=true` | → [`GcResponse`]: a garbage collection pass now (`force`: whatever the age) |
//! | POST | `/v1/node/{id}/certificate?public_key=HEX` | → [`NodeCertificateResponse`] (mutual TLS: the node renews its certificate, presenting the current one) |
//! | POST | `/v1/acl/bootstrap` | → [`crate::acl::CreatedToken`] (the first management token; once per cluster, no token needed) |
//! | GET | `/v1/acl/policies` | → `Vec<`[`crate::acl::AclPolicy`]`>` (a client token sees its own) |
//! | GET, PUT, DELETE | `/v1/acl/policy/{name}` | [`crate::acl::ApplyPolicyRequest`] → [`crate::acl::AclPolicy`]; 400 with spec errors at `file:line:col` |
//! | GET, POST | `/v1/acl/tokens` | [`crate::acl::CreateTokenRequest`] → [`crate::acl::CreatedToken`] (the only answer with the secret) |
//! | GET | `/v1/acl/token/self` | → [`crate::acl::TokenSelf`] (the caller's token and its policies) |
//! | GET, DELETE | `/v1/acl/token/{accessor-id-or-prefix}` | → [`crate::acl::AclToken`] |
//!
//! With ACLs on, every route needs a token (`X-Davit-Token` or `Authorization: Bearer`) that satisfies the
//! route's [`crate::acl::Rule`] in the request's namespace (`?namespace=`, default `default`): 401
//! `token not found or expired` without a live token, 403 naming the missing capability. The rules are
//! listed with the routes in `davit_server::routes()` and `davit_agent::routes()`.
//!
//! The agent serves `GET /v1/agent/allocation/{id}/logs` and `…/exec` with the same query parameters,
//! `GET /v1/agent/health`, `GET /v1/agent/proxy` (→ `Vec<`[`ProxyServiceStats`]`>`, its proxy's counters) and
//! `GET /metrics` (its proxy's Prometheus metrics).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::objects::{
    Allocation, ClientStatus, Evaluation, GroupSummary, Index, Job, MigrationProgress, NodeEligibility, NodeStatus, PlacementFailure,
    TaskStates, UnixMillis,
};
use crate::spec::{BalanceAlgorithm, JobType, ServiceMode};

/// Response header carrying the store revision the answer reflects; pass it back as `?index=` to block.
pub const INDEX_HEADER: &str = "x-davit-index";
/// On a list answer with more items: the `next_token` of the next page (see the module's paging note).
pub const NEXT_TOKEN_HEADER: &str = "x-davit-next-token";
/// On every server answer: the id of the cluster the server belongs to (its store's).
pub const CLUSTER_HEADER: &str = "x-davit-cluster";
/// The largest `per_page` a list route accepts.
pub const MAX_PAGE: usize = 10_000;
/// Default address of a davit server.
pub const DEFAULT_SERVER_ADDR: &str = "http://127.0.0.1:7646";

/// Every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// `bad_request`, `invalid_spec`, `not_found`, `conflict`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// For `invalid_spec`: every problem, with its position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spec_errors: Vec<SpecErrorWire>,
}

/// One spec problem: `file:line:col: message` and a hint on how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecErrorWire {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Dotted path of the offending field, e.g. `groups[0].tasks[1].driver`.
    pub path: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterJobResponse {
    pub job_name: String,
    pub version: u64,
    /// False when the submitted spec equals the current version (nothing new was stored).
    pub changed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_id: Option<String>,
    pub index: Index,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateJobResponse {
    pub job_name: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `POST /v1/deployment/{id}/promote`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteDeploymentRequest {
    /// The groups whose canaries are promoted; empty: every group that has canaries.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `POST /v1/deployment/{id}/health`: allocations (ids or unique prefixes) of the deployment found healthy or
/// unhealthy by an operator; a verdict already given stays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentHealthRequest {
    #[serde(default)]
    pub healthy: Vec<String>,
    #[serde(default)]
    pub unhealthy: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertJobRequest {
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleJobRequest {
    pub group: String,
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopJobResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_id: Option<String>,
    pub index: Index,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexResponse {
    pub index: Index,
}

/// `pending` (nothing running yet), `running`, or `dead` (stopped, or a batch job that finished).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusKind {
    Pending,
    Running,
    Dead,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobListEntry {
    pub name: String,
    pub job_type: JobType,
    pub priority: u8,
    pub version: u64,
    pub status: JobStatusKind,
    pub submit_time: u64,
    pub summary: BTreeMap<String, GroupSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatusResponse {
    pub job: Job,
    pub status: JobStatusKind,
    pub summary: BTreeMap<String, GroupSummary>,
    pub allocations: Vec<AllocListEntry>,
    /// The newest evaluation of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_evaluation: Option<Evaluation>,
    /// A blocked evaluation waiting for capacity, with the reasons per group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_evaluation: Option<Evaluation>,
}

/// One changed field between two job versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffEntry {
    /// Dotted path, e.g. `groups[web].count`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

/// `POST /v1/rebalance`: move a few running service allocations from the most to the least loaded nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceRequest {
    /// The most allocations moved by this request (at most one per job group).
    #[serde(default = "one")]
    pub max_moves: u32,
    /// Compute the moves without making them.
    #[serde(default)]
    pub dry_run: bool,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalanceResponse {
    /// The moves made (or, on a dry run, that would be made); empty when the cluster is balanced.
    pub moves: Vec<RebalanceMoveEntry>,
    /// Moves not made: the plan applier refused them because the state changed meanwhile, or a live
    /// migration could not start (the server logs why). The next request may pick them again.
    #[serde(default)]
    pub refused: u32,
    pub index: Index,
}

/// One allocation moved by a rebalance. Loads are the mean of a node's CPU and memory fractions in use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalanceMoveEntry {
    pub alloc_id: String,
    pub name: String,
    pub job_name: String,
    /// The new allocation on `to_node`.
    pub replacement_id: String,
    pub from_node: String,
    pub to_node: String,
    /// (before, after) the move.
    pub from_load: (f64, f64),
    pub to_load: (f64, f64),
    /// The allocation is live-migrated (a VM of a `migrate: live` group): `replacement_id` is the
    /// migration's destination, and the original stops once the guest runs there.
    #[serde(default)]
    pub live_migration: bool,
}

/// `POST /v1/jobs/plan`: what registering a spec would do, computed by the scheduler on the current
/// state and stored nowhere (a dry run, like `nomad job plan`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobPlanResponse {
    pub job_name: String,
    /// The job's current version; `None` for a new job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The version registering the spec would store (the current one when `changed` is false).
    pub next_version: u64,
    /// False when the spec equals the current version.
    pub changed: bool,
    /// Field changes against the current version (empty for a new job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<DiffEntry>,
    /// Per group of the spec (and of the current version, for groups the spec removes).
    pub groups: BTreeMap<String, GroupPlan>,
    /// Allocations of other, lower-priority jobs that would be evicted to make room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preemptions: Vec<PlannedStop>,
    /// The scheduler's one-line summary: "placed 3, stopped 1; group web: 2 not placed (…)".
    pub status_description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The state index the plan was computed at.
    pub index: Index,
}

/// What a dry run would do to one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupPlan {
    /// New allocations (not replacing one).
    pub place: u32,
    /// Allocations updated where they run (same id, new job version).
    pub in_place: u32,
    /// Allocations stopped and replaced by a new one (a destructive update or a reschedule).
    pub replace: u32,
    /// Allocations stopped without a replacement.
    pub stop: u32,
    /// Running allocations the plan leaves alone.
    pub unchanged: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<PlannedPlacement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stops: Vec<PlannedStop>,
    /// Why some placements would fail; `None` when all fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<PlacementFailure>,
}

/// A new allocation a dry run would create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedPlacement {
    /// `job.group[index]`.
    pub name: String,
    pub node_id: String,
    pub node_name: String,
    /// The allocation it replaces, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// How the node was chosen; `None` when it was not ranked (a preemption, or a system job's own node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<crate::objects::PlacementScores>,
}

/// An allocation a dry run would stop (or preempt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStop {
    pub alloc_id: String,
    pub name: String,
    pub job_name: String,
    pub node_name: String,
    /// Why: "job stopped", "replaced by version 3", "preempted by allocation … of job … (priority 80)".
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDiffResponse {
    pub from: u64,
    pub to: u64,
    pub changes: Vec<DiffEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocListEntry {
    pub id: String,
    pub name: String,
    pub job_name: String,
    pub job_version: u64,
    pub group: String,
    pub node_id: String,
    pub node_name: String,
    pub desired_status: crate::objects::DesiredStatus,
    pub client_status: ClientStatus,
    pub create_time: u64,
    pub modify_time: u64,
}

impl From<&Allocation> for AllocListEntry {
    fn from(alloc: &Allocation) -> Self {
        AllocListEntry {
            id: alloc.id.clone(),
            name: alloc.name.clone(),
            job_name: alloc.job_name.clone(),
            job_version: alloc.job_version,
            group: alloc.group.clone(),
            node_id: alloc.node_id.clone(),
            node_name: alloc.node_name.clone(),
            desired_status: alloc.desired_status,
            client_status: alloc.client_status,
            create_time: alloc.create_time,
            modify_time: alloc.modify_time,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeListEntry {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub status: NodeStatus,
    pub eligibility: NodeEligibility,
    /// Healthy drivers.
    pub drivers: Vec<String>,
    pub cpu_allocated: u64,
    pub cpu_total: u64,
    pub memory_allocated: u64,
    pub memory_total: u64,
    pub running_allocs: u32,
    /// The node is being drained (see [`Node::drain`](crate::objects::Node)).
    #[serde(default)]
    pub draining: bool,
}

/// Body of `POST /v1/node/{id}/eligibility`. Ineligible nodes get no new allocations; the ones they
/// have keep running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEligibilityRequest {
    pub eligible: bool,
}

/// Body of `POST /v1/node/{id}/drain`. `enable: true` makes the node ineligible and migrates its
/// allocations; `enable: false` cancels a drain (the node stays ineligible until made eligible).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDrainRequest {
    /// Stop whatever is left after this many milliseconds; `None`: no deadline.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub ignore_system: bool,
    pub enable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegisterResponse {
    pub node_id: String,
    pub index: Index,
    /// The agent should heartbeat at least this often.
    pub heartbeat_interval_ms: u64,
    /// The server checks tokens: the agent checks them on its own API too.
    #[serde(default)]
    pub acl_enabled: bool,
    /// The node's identity (a node token's secret), made when it registered with a join token: answered only
    /// then; the agent keeps it and sends it from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_token: Option<String>,
    /// The node's certificate (PEM), signed by the cluster's CA for the public key the agent sent, when the
    /// server does TLS and the node joined (or, without ACLs, registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The cluster the server belongs to: an agent that remembers another one refuses to go on (see the
    /// agent's `cluster-id` file).
    #[serde(default)]
    pub cluster_id: String,
}

/// `POST /v1/nodes/register` and `POST /v1/node/{id}/certificate` take the node's public key as
/// `?public_key=` (hex of the uncompressed P-256 point): its private key never leaves the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyQuery {
    #[serde(default)]
    pub public_key: Option<String>,
    /// Registration: the cluster the node belongs to; a server of another cluster answers 409.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

/// What a garbage collection pass deleted (`POST /v1/operator/gc[?force=true]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcResponse {
    pub jobs: usize,
    pub versions: usize,
    pub evals: usize,
    pub allocs: usize,
    /// Store index of the last delete (0: nothing deleted).
    pub index: Index,
}

/// One server of the cluster (`GET /v1/operator/servers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMember {
    pub name: String,
    /// Where it serves the API.
    pub addr: String,
    /// Whether it leads (runs the scheduler and the other loops).
    pub leader: bool,
    /// Since when it leads (Unix milliseconds), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since: Option<u64>,
    /// When it started (Unix milliseconds).
    pub started: u64,
}

/// A renewed node certificate (PEM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificateResponse {
    pub certificate: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub index: Index,
    pub heartbeat_interval_ms: u64,
}

/// Body of `PUT /v1/nodes/heartbeat`: one heartbeat for each of these nodes (a process that runs many
/// nodes, such as `davit sim`, sends them together).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesHeartbeatRequest {
    pub node_ids: Vec<String>,
}

/// Answer of `PUT /v1/nodes/heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesHeartbeatResponse {
    pub index: Index,
    pub heartbeat_interval_ms: u64,
    /// Nodes the server does not know (they must register again); the others' heartbeats counted.
    #[serde(default)]
    pub unknown: Vec<String>,
}

/// Body of `POST /v1/nodes/allocations?index=N&wait=D`: the long-poll of many nodes at once. The answer holds
/// the allocations of these nodes whose `modify_index` is above `N` (every allocation of the nodes when `N`
/// is 0): a delta, unlike the per-node route, which answers the node's whole list. Allocations deleted meanwhile
/// are not reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesAllocationsRequest {
    pub node_ids: Vec<String>,
}

/// One node's part of `POST /v1/nodes/allocations/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAllocStatusUpdates {
    pub node_id: String,
    pub updates: Vec<AllocStatusUpdate>,
}

/// What an agent reports about one of its allocations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocStatusUpdate {
    pub id: String,
    pub client_status: ClientStatus,
    #[serde(default)]
    pub client_description: String,
    pub task_states: TaskStates,
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub health_description: String,
    /// How the allocation's part in a live migration goes (see [`Allocation::migration`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationProgress>,
    /// The agent's verdict on a deployment's new allocation (see [`Allocation::deployment_health`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_health: Option<crate::deployment::DeploymentHealth>,
}

/// Body of `POST /v1/allocation/{id}/migrate`: live-migrate a running VM allocation to another node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateAllocRequest {
    /// Target node (id, id prefix or name); `None`: the scheduler picks a ready node with room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Answer of `POST /v1/allocation/{id}/migrate`: the destination allocation, placed on `node_name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateAllocResponse {
    pub source_alloc_id: String,
    pub alloc_id: String,
    pub node_id: String,
    pub node_name: String,
    pub index: Index,
}

/// Query parameters of the log routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsQuery {
    /// Task name; may be omitted when the allocation has exactly one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// `stdout` (default) or `stderr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default)]
    pub follow: bool,
    /// Start at this byte offset of the whole log (across rotated files); default 0.
    /// A negative value counts from the end (`-1000`: the last 1000 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Start at the last this many lines (as `tail -n`); takes precedence over `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u64>,
}

/// Query parameters of the exec routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecQuery {
    /// Task name; may be omitted when the allocation has exactly one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The command and its arguments as a JSON array of strings.
    pub command: String,
    /// Run the command on a terminal (stdout and stderr merged, window size from `cols`/`rows`).
    #[serde(default)]
    pub tty: bool,
    /// `TERM` for the command, with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub version: String,
    pub index: Index,
    pub nodes: u32,
    pub jobs: u32,
    pub store: String,
}

/// Topics of the event stream: one per kind of stored object, plus `AllocationHealth` (an
/// allocation's `healthy` changed; the payload has `job_name`, `healthy`, `previous`, `health_description`).
pub const EVENT_TOPICS: [&str; 7] = ["Job", "JobVersion", "Node", "Allocation", "Evaluation", "AllocationHealth", "Deployment"];

/// The last line of an event stream the server ended on its own: `{"error": {...}}` (code `stream_lagged`: the
/// subscriber fell too far behind; the message names the index to resume from).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventStreamEnd {
    pub error: ApiError,
}

/// One line of `GET /v1/event/stream`: a change of one object at store revision `index`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventWire {
    pub index: Index,
    /// One of [`EVENT_TOPICS`].
    pub topic: String,
    /// `Upserted` or `Deleted`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Job name, `job/version` for `JobVersion`, or the object's id.
    pub key: String,
    /// The object after the change (a [`Job`], [`Node`](crate::objects::Node), [`Allocation`] or
    /// [`Evaluation`]); `null` for deletions.
    pub payload: Option<serde_json::Value>,
}

/// One service of the catalog, as `davit service ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceListEntry {
    pub name: String,
    pub job_name: String,
    pub group: String,
    pub mode: ServiceMode,
    pub algorithm: BalanceAlgorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Instances of running allocations.
    pub instances: u32,
    /// Of those, the ones served (healthy allocation on a ready node).
    pub healthy: u32,
}

/// The service catalog: every service of the jobs that are not stopped, with the instances of their
/// running allocations. Only `healthy` instances are served by proxies and DNS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub services: Vec<ServiceInfo>,
}

/// One service: its settings (from the newest job version) and its instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub job_name: String,
    pub group: String,
    /// The port label of the group the instances serve on.
    pub port_label: String,
    pub mode: ServiceMode,
    pub algorithm: BalanceAlgorithm,
    /// `header:NAME`, `cookie:NAME` or `source_ip` (consistent_hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Percent of the requests the proxies send to unpromoted canaries (`update.canary_weight`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<u32>,
    /// The group scales to zero: proxies hold a request that finds no instance up to this long and ask the
    /// servers to start one (`POST /v1/node/{id}/activate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_timeout_ms: Option<u64>,
    /// Sorted by allocation name.
    pub instances: Vec<ServiceInstance>,
    /// With `?stats=true`: nodes whose agent could not be asked for proxy counters, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stats_errors: Vec<String>,
}

/// One allocation serving a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceInstance {
    pub alloc_id: String,
    pub alloc_name: String,
    pub node_id: String,
    pub node_name: String,
    /// The node's address (the host of its agent's advertised address).
    pub address: String,
    /// The host port of the service's port label.
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    pub weight: u32,
    /// A deployment's canary, not promoted yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canary: bool,
    /// Served: the allocation is healthy (every task running, every check passing) on a ready node.
    pub healthy: bool,
    /// Why it is (not) healthy, e.g. "check web-http of task server failing: HTTP 500".
    #[serde(default)]
    pub health_description: String,
    /// With `?stats=true`: this instance's counters summed over every agent's proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<InstanceStats>,
}

/// Proxy counters of one instance, summed over the proxies that send it traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Requests (HTTP) or connections (TCP).
    pub requests: u64,
    /// Connect failures, connection errors and 5xx responses.
    pub errors: u64,
    /// In-flight requests (HTTP) or open connections (TCP).
    pub active: u64,
    /// The decaying latency estimate, averaged over the proxies weighted by their requests.
    pub latency_ms: f64,
    /// Ejected by outlier detection on at least one proxy.
    pub ejected: bool,
}

/// One listener of an agent's proxy (`GET /v1/agent/proxy`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyServiceStats {
    /// The catalog service it balances over.
    pub service: String,
    /// `ip:port` it listens on.
    pub listen: String,
    pub mode: ServiceMode,
    pub algorithm: BalanceAlgorithm,
    pub backends: Vec<ProxyBackendStats>,
}

/// Counters of one backend (a service instance) in one agent's proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyBackendStats {
    /// Allocation id.
    pub id: String,
    pub addr: String,
    pub weight: u32,
    pub requests: u64,
    pub errors: u64,
    pub active: u64,
    pub ewma_latency_ms: f64,
    pub ejected: bool,
    pub ejections: u32,
    /// Requests per latency bucket ([`PROXY_LATENCY_BUCKETS`], then one for slower), since the proxy started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_buckets: Vec<u64>,
}

/// Adds one latency histogram (counts per [`PROXY_LATENCY_BUCKETS`] bucket) to another, bucket by bucket.
pub fn add_latency_buckets(total: &mut Vec<u64>, other: &[u64]) {
    if total.len() < other.len() {
        total.resize(other.len(), 0);
    }
    for (sum, count) in total.iter_mut().zip(other) {
        *sum += count;
    }
}

/// Upper bounds of the proxies' latency histogram buckets, in seconds.
pub const PROXY_LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Most allocations (and most proxy backends) in one [`UsageReport`]; an agent with more sends several.
pub const MAX_USAGE_ENTRIES: usize = 2_000;

/// What an agent measured since its previous report (`POST /v1/node/{id}/usage`, every few seconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    #[serde(default)]
    pub allocs: Vec<AllocUsage>,
    /// Its proxy's counters per backend (allocation), since the proxy started.
    #[serde(default)]
    pub proxy: Vec<BackendCounters>,
}

/// One allocation's usage over the last sampling window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocUsage {
    pub alloc_id: String,
    /// Per task.
    pub tasks: BTreeMap<String, TaskUsage>,
    /// Running with every check passing.
    pub ready: bool,
    /// When its readiness last changed, as far as the agent saw it (`None`: not known, or never ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_changed_at: Option<UnixMillis>,
    /// When its tasks (the first of them) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMillis>,
    /// When the sample was taken, and the span it covers.
    pub time: UnixMillis,
    pub window_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

/// A proxy's counters for one backend (summed over its listeners).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    pub alloc_id: String,
    pub requests: u64,
    pub errors: u64,
    /// Per [`PROXY_LATENCY_BUCKETS`] bucket, then one for slower.
    #[serde(default)]
    pub latency_buckets: Vec<u64>,
    /// Open connections (TCP) or requests in flight (HTTP) now.
    #[serde(default)]
    pub active: u64,
}

/// `POST /v1/node/{id}/activate`: a request reached the node's proxy for a group scaled to zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The job's id (`namespace/name` outside `default`).
    pub job: String,
    pub group: String,
}

/// The answer to an [`ActivateRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    /// The group's count now.
    pub count: u32,
    /// This request scaled it from zero (false: it had instances already, or another request did).
    pub activated: bool,
}

/// `GET /v1/allocation/{id}/usage`: the allocation's latest sample and what it asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocUsageInfo {
    pub alloc_id: String,
    /// When it was measured (`None`: no sample yet, or none for a while).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<UnixMillis>,
    pub tasks: BTreeMap<String, TaskUsageInfo>,
    /// Its requests through the proxies over the last window, when there were any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskUsageInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// What the task asks for (millicores, MiB).
    pub cpu_request: u64,
    pub memory_request_mib: u64,
}

/// `GET /v1/job/{name}/scaling`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingStatus {
    pub job_name: String,
    pub groups: Vec<GroupScaling>,
    /// The newest changes of the groups' counts (from the job's versions), newest first.
    pub events: Vec<crate::objects::ScalingEvent>,
}

/// The autoscaler's view of one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupScaling {
    pub group: String,
    /// The autoscaler acts on it (it has `metrics:` and is not disabled).
    pub autoscaled: bool,
    pub count: u32,
    pub min: u32,
    pub max: u32,
    pub metrics: Vec<MetricScaling>,
    /// The largest proposal of the metrics (`None`: none could be read, or the group was not evaluated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<u32>,
    /// The count the last evaluation decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    /// What set it (`desired_within_range`, `scale_up_limit`, …) and in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub limited_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `scale_down_stabilized` / `scale_up_stabilized` when a stabilisation window held the recommendation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization: Option<String>,
    /// Why the autoscaler leaves the group alone right now (a deployment runs, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting: String,
    /// When the group was last evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_at: Option<UnixMillis>,
    /// `forecast_only` or `scale` with `predictive`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub predictive: String,
    /// Scale-up and scale-down changes within the policies' periods (rate limits), as `+2 12s ago`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_changes: Vec<String>,
    /// With `scale_to_zero_after`: how long the group has been idle, or that the next request starts it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scale_to_zero: String,
}

/// One metric against its target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricScaling {
    /// e.g. `cpu 60%`, `requests_per_second 100`.
    pub metric: String,
    /// The measured value, e.g. `85%`, `150/s`, `230ms` (empty when it could not be read).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<u32>,
    /// Why it could not be read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The calculator's arithmetic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// With `predictive`: the demand forecast `lead_time` ahead and the count it needs ("22.5/s in 12s → 5"),
    /// or how much history it still needs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forecast: String,
}
