//! What the scheduler produces: a [`Plan`] for the plan applier, and how the evaluation went.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use davit_api::deployment::{Deployment, DeploymentStatus};
use davit_api::objects::{Allocation, ClientStatus, EvalStatus, PlacementFailure, PlacementScores, UnixMillis};
use davit_api::spec::{JobType, SchedulerAlgorithm};

/// Knobs of one scheduler run.
///
/// # Candidate sampling
///
/// Each placement walks the nodes in a seeded random order (continuing where the previous placement of
/// the run stopped), skips those that are infeasible or do not fit, and scores the fitting ones until it
/// has scored a limit of them; the best scored wins. Nodes whose final score is negative (e.g. a job
/// anti-affinity collision) do not count toward the limit, for the first 3 of them (Nomad's
/// `LimitIterator`). A feasible node that fits is always found if one exists: the walk only stops early
/// after finding one. The limit, first rule that applies:
///
/// 1. `candidate_limit`, when set: that many, for every group;
/// 2. `score_all_nodes`: no limit (the tightest placement, O(nodes) per placement);
/// 3. as Nomad: batch jobs 2, service jobs `max(2, ⌈log2(nodes)⌉)`;
///    groups with `spread`, `affinities` or preferred alloc (anti-)affinities score at least
///    `wide_candidate_limit` (default 256) — Nomad scores every node for them; a bound keeps placements
///    O(1) on large clusters while a random sample of 256 nodes still sees every common domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The cluster's ranking algorithm; a job's `algorithm` overrides it.
    pub algorithm: SchedulerAlgorithm,
    /// Stop looking after this many nodes that fit and take the best of them, for every group.
    pub candidate_limit: Option<NonZeroUsize>,
    /// Score every feasible node (when `candidate_limit` is not set).
    pub score_all_nodes: bool,
    /// The minimum number of candidates scored for groups with spread, node affinities or preferred
    /// alloc (anti-)affinities.
    pub wide_candidate_limit: NonZeroUsize,
    /// Which job types may evict lower-priority allocations when nothing fits (see `preempt`).
    pub preemption: PreemptionConfig,
    /// Record why each ranked placement went where it did ([`Plan::scores`]); for dry runs, it costs a
    /// copy of the best candidates' scores per placement.
    pub explain: bool,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            algorithm: SchedulerAlgorithm::Binpack,
            candidate_limit: None,
            score_all_nodes: false,
            wide_candidate_limit: NonZeroUsize::new(256).expect("256 is not zero"),
            preemption: PreemptionConfig::default(),
            explain: false,
        }
    }
}

impl SchedulerConfig {
    /// How many fitting nodes to score for a placement (`None`: all). See the type's documentation.
    pub fn limit_for(&self, job_type: JobType, wide: bool, nodes: usize) -> Option<usize> {
        if let Some(limit) = self.candidate_limit {
            return Some(limit.get());
        }
        if self.score_all_nodes {
            return None;
        }
        let base = match job_type {
            JobType::Batch => 2,
            JobType::Service | JobType::System => (usize::BITS - nodes.saturating_sub(1).leading_zeros()).max(2) as usize,
        };
        Some(if wide { base.max(self.wide_candidate_limit.get()) } else { base })
    }
}

/// Per job type: may its placements preempt allocations of jobs at least [`PREEMPTION_PRIORITY_DELTA`]
/// priority below? The default is Nomad's open-source one, except that service jobs preempt too:
/// service and system jobs do, batch jobs do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreemptionConfig {
    pub service: bool,
    pub batch: bool,
    pub system: bool,
}

/// A job may preempt allocations of jobs whose priority is at least this much lower (Nomad's delta).
pub const PREEMPTION_PRIORITY_DELTA: u8 = 10;

impl Default for PreemptionConfig {
    fn default() -> Self {
        PreemptionConfig { service: true, batch: false, system: true }
    }
}

impl PreemptionConfig {
    /// No job type preempts.
    pub fn disabled() -> PreemptionConfig {
        PreemptionConfig { service: false, batch: false, system: false }
    }

    pub fn enabled_for(&self, job_type: JobType) -> bool {
        match job_type {
            JobType::Service => self.service,
            JobType::Batch => self.batch,
            JobType::System => self.system,
        }
    }
}

/// The changes one evaluation wants, per node. The plan applier checks them against the latest
/// state and commits what still fits.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub eval_id: String,
    pub job_name: String,
    /// The job version the plan was computed against; 0 when the job no longer exists.
    pub job_version: u64,
    pub priority: u8,
    /// New allocations, and existing ones updated in place (same id, new `job_version`), by node id.
    pub node_allocations: BTreeMap<String, Vec<Allocation>>,
    /// Allocations to stop, by the node id they are placed on.
    pub node_updates: BTreeMap<String, Vec<AllocStop>>,
    /// Allocations of other, lower-priority jobs to stop so that this plan's placements on the same node
    /// fit, by node id. Description: `"preempted by allocation <id> of job <name> (priority P)"`. The plan
    /// applier commits them only together with the node's placements, and evaluates the victims' jobs again.
    pub node_preemptions: BTreeMap<String, Vec<AllocStop>>,
    /// Per group: placements that could not be made, and why.
    pub failed_groups: BTreeMap<String, PlacementFailure>,
    /// Per new allocation id: how its node was ranked. Only with [`SchedulerConfig::explain`].
    pub scores: BTreeMap<String, PlacementScores>,
    /// A deployment this plan starts (its new allocations name it); stored with the plan.
    pub deployment: Option<Box<Deployment>>,
    /// Deployments this plan ends: `(id, status, description)` (a newer version cancels an older rollout).
    pub deployment_updates: Vec<(String, DeploymentStatus, String)>,
}

/// Set an allocation's desired status to `stop`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocStop {
    pub alloc_id: String,
    /// Becomes the allocation's `desired_description`: "job stopped", "node down", "replaced by version 3".
    pub description: String,
    /// Also set the client status, e.g. `Lost` for allocations on a node that is down or gone.
    pub client_status: Option<ClientStatus>,
}

/// The outcome of [`schedule`](crate::schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleResult {
    pub plan: Plan,
    /// `Complete` when the plan says all the scheduler could do (unplaced work is listed in
    /// `plan.failed_groups`; the server turns it into a blocked evaluation), `Failed` when the
    /// evaluation cannot be processed at all (e.g. a job type this version does not support).
    pub status: EvalStatus,
    /// One line for people: "placed 3, stopped 1; group web: 2 not placed (memory exhausted on 3 nodes)".
    pub status_description: String,
    /// Per group: when a failed allocation becomes due for rescheduling (its delay has not passed yet).
    /// The server creates a follow-up evaluation that waits until the earliest of these.
    pub follow_ups: BTreeMap<String, UnixMillis>,
}

impl ScheduleResult {
    /// The earliest follow-up time, if any.
    pub fn wait_until(&self) -> Option<UnixMillis> {
        self.follow_ups.values().min().copied()
    }
}

impl Plan {
    /// A plan that changes nothing yet.
    pub fn new(eval_id: &str, job_name: &str, job_version: u64, priority: u8) -> Plan {
        Plan {
            eval_id: eval_id.to_string(),
            job_name: job_name.to_string(),
            job_version,
            priority,
            node_allocations: BTreeMap::new(),
            node_updates: BTreeMap::new(),
            node_preemptions: BTreeMap::new(),
            failed_groups: BTreeMap::new(),
            scores: BTreeMap::new(),
            deployment: None,
            deployment_updates: Vec::new(),
        }
    }

    /// True when the plan changes nothing and records no failures.
    pub fn is_empty(&self) -> bool {
        self.node_allocations.is_empty()
            && self.node_updates.is_empty()
            && self.node_preemptions.is_empty()
            && self.failed_groups.is_empty()
            && self.deployment.is_none()
            && self.deployment_updates.is_empty()
    }

    /// Allocations placed or updated in place, in node order.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> + '_ {
        self.node_allocations.values().flatten()
    }

    /// Stops, in node order.
    pub fn stops(&self) -> impl Iterator<Item = &AllocStop> + '_ {
        self.node_updates.values().flatten()
    }

    /// Preemptions, in node order.
    pub fn preemptions(&self) -> impl Iterator<Item = &AllocStop> + '_ {
        self.node_preemptions.values().flatten()
    }

    pub(crate) fn push_allocation(&mut self, alloc: Allocation) {
        self.node_allocations.entry(alloc.node_id.clone()).or_default().push(alloc);
    }

    pub(crate) fn push_stop(&mut self, node_id: &str, stop: AllocStop) {
        self.node_updates.entry(node_id.to_string()).or_default().push(stop);
    }

    pub(crate) fn push_preemption(&mut self, node_id: &str, stop: AllocStop) {
        self.node_preemptions.entry(node_id.to_string()).or_default().push(stop);
    }
}
