//! Node liveness: agents heartbeat; a node whose heartbeats stop is marked `down`, and every job
//! with allocations on it is evaluated again.
//!
//! A node is down when, after at least [`LivenessConfig::min_down_after`] of silence (no flapping on
//! one late heartbeat), either its phi-accrual suspicion (see [`crate::phi`]) exceeds
//! [`LivenessConfig::phi_threshold`] or the silence exceeds [`LivenessConfig::max_ttl`], a hard bound
//! whatever phi says.
//!
//! Heartbeats are kept in memory only (never written to the store); only status changes are.
//! After a server start every known node starts with a fresh history and gets the full `max_ttl` of
//! grace: until its first heartbeat only the hard bound applies. A registration starts a fresh history
//! (an agent restart is not a sample of its heartbeat rhythm).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use davit_api::objects::{EvalTrigger, Evaluation, Node, NodeStatus};
use davit_api::spec::JobType;
use davit_store::{Store, StoreError, Txn};

use crate::keys;
use crate::phi::{HeartbeatHistory, PhiConfig};
use crate::view::{Snapshot, View};
use crate::{new_id, now_millis};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LivenessConfig {
    /// How often agents are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// A node is down when its phi exceeds this (8: one chance in 10⁸ that a heartbeat still comes).
    pub phi_threshold: f64,
    /// A node is down after this long without a heartbeat, whatever phi says.
    pub max_ttl: Duration,
    /// A node is never down after less silence than this.
    pub min_down_after: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_millis(500);
        LivenessConfig { heartbeat_interval, phi_threshold: 8.0, max_ttl: Duration::from_secs(10), min_down_after: 2 * heartbeat_interval }
    }
}

impl LivenessConfig {
    /// The detector's parameters: gaps longer than `max_ttl` are not samples.
    pub fn phi(&self) -> PhiConfig {
        PhiConfig { max_sample: self.max_ttl, ..PhiConfig::for_interval(self.heartbeat_interval) }
    }
}

/// What the server knows about one node's heartbeats.
#[derive(Clone, Debug)]
struct NodeLiveness {
    history: HeartbeatHistory,
    /// Known at server start and not heard from since: only `max_ttl` applies.
    restored: bool,
}

pub struct Liveness {
    pub config: LivenessConfig,
    phi: PhiConfig,
    nodes: Mutex<HashMap<String, NodeLiveness>>,
}

/// How often nodes are checked.
const CHECK_TICK: Duration = Duration::from_millis(100);

impl Liveness {
    pub fn new(config: LivenessConfig, snapshot: &Snapshot) -> Arc<Liveness> {
        let now = Instant::now();
        let nodes = snapshot
            .cluster
            .nodes()
            .map(|node| (node.id.clone(), NodeLiveness { history: HeartbeatHistory::new(now), restored: true }))
            .collect();
        Arc::new(Liveness { config, phi: config.phi(), nodes: Mutex::new(nodes) })
    }

    /// A heartbeat from the node arrived now.
    pub fn heartbeat(&self, node_id: &str) {
        let now = Instant::now();
        let mut nodes = self.nodes.lock().expect("liveness lock");
        match nodes.get_mut(node_id) {
            Some(state) if !state.restored => state.history.heartbeat(now, &self.phi),
            // The time since the server started is no inter-arrival time.
            _ => {
                nodes.insert(node_id.to_string(), NodeLiveness { history: HeartbeatHistory::new(now), restored: false });
            }
        }
    }

    /// Heartbeats from many nodes arrived now (one lock for all of them).
    pub fn heartbeat_many<'a>(&self, node_ids: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut nodes = self.nodes.lock().expect("liveness lock");
        for node_id in node_ids {
            match nodes.get_mut(node_id) {
                Some(state) if !state.restored => state.history.heartbeat(now, &self.phi),
                _ => {
                    nodes.insert(node_id.to_string(), NodeLiveness { history: HeartbeatHistory::new(now), restored: false });
                }
            }
        }
    }

    /// The node (re-)registered now: a fresh history.
    pub fn registered(&self, node_id: &str) {
        let fresh = NodeLiveness { history: HeartbeatHistory::new(Instant::now()), restored: false };
        self.nodes.lock().expect("liveness lock").insert(node_id.to_string(), fresh);
    }

    /// Marks nodes whose heartbeats stopped as down, in a loop.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, view: Arc<View>) {
        let tick = CHECK_TICK.min(self.config.heartbeat_interval / 4).max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.check(&store, &view).await {
                tracing::error!(%error, "node liveness check failed");
            }
        }
    }

    async fn check(&self, store: &Arc<dyn Store>, view: &View) -> Result<(), StoreError> {
        let snapshot = view.snapshot();
        let now = Instant::now();
        let expired: Vec<_> = {
            let mut nodes = self.nodes.lock().expect("liveness lock");
            snapshot
                .cluster
                .nodes()
                .filter(|node| node.status == NodeStatus::Ready)
                .filter_map(|node| {
                    // A node we never heard of (cannot normally happen) gets the grace of a restored one. (Looked
                    // up before it is entered: this runs for every node on every tick, and an entry costs a copy
                    // of the id.)
                    if !nodes.contains_key(&node.id) {
                        nodes.insert(node.id.clone(), NodeLiveness { history: HeartbeatHistory::new(now), restored: true });
                    }
                    let state = &nodes[&node.id];
                    verdict(state, now, &self.config, &self.phi).map(|reason| (node.clone(), reason))
                })
                .collect()
        };
        for (node, reason) in expired {
            let mut down = (*node).clone();
            down.status = NodeStatus::Down;
            down.status_description = reason;
            let mut txn = Txn::default();
            txn.compares.push(davit_store::Compare::ModRevision(keys::node(&node.id), node.modify_index));
            txn.success.push(keys::put(keys::node(&node.id), &down));
            for eval in evals_for_node(&snapshot, &node.id, EvalTrigger::NodeUpdate) {
                txn.success.push(keys::put(keys::eval(&eval.id), &eval));
            }
            tracing::warn!(node = %node.name, id = %node.id, reason = %down.status_description, "node missed its heartbeats: marked down");
            let response = store.txn(txn).await?;
            view.wait_for(response.revision).await;
        }
        Ok(())
    }
}

/// Why the node is down at `now`, or `None` while it counts as alive (see the module docs).
fn verdict(state: &NodeLiveness, now: Instant, config: &LivenessConfig, phi_config: &PhiConfig) -> Option<String> {
    let silence = state.history.silence(now);
    if silence > config.max_ttl {
        return Some(format!("no heartbeat for {:.1} s (max TTL {:?})", silence.as_secs_f64(), config.max_ttl));
    }
    if state.restored || silence < config.min_down_after {
        return None;
    }
    let phi = state.history.phi(now, phi_config);
    (phi > config.phi_threshold)
        .then(|| format!("phi {phi:.1} > {} after {:.1} s without a heartbeat", config.phi_threshold, silence.as_secs_f64()))
}

/// One pending evaluation for every job with a non-terminal allocation on the node.
pub fn evals_for_node(snapshot: &Snapshot, node_id: &str, trigger: EvalTrigger) -> Vec<Evaluation> {
    let jobs: BTreeSet<String> =
        snapshot.cluster.allocs_for_node(node_id).filter(|alloc| !alloc.is_terminal()).map(|alloc| alloc.job_name.clone()).collect();
    jobs.into_iter()
        .filter_map(|name| snapshot.cluster.job(&name).cloned())
        .map(|job| new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, trigger, Some(node_id.to_string())))
        .collect()
}

/// One pending evaluation for every system job that is not stopped and whose datacenters include the
/// node's, except the jobs in `skip` (they have one already): a node that joins, comes back or becomes
/// eligible gets the system jobs' allocations. Nothing when there are no system jobs.
pub fn system_job_evals(snapshot: &Snapshot, node: &Node, trigger: EvalTrigger, skip: &[Evaluation]) -> Vec<Evaluation> {
    snapshot
        .cluster
        .jobs()
        .filter(|job| job.spec.job_type == JobType::System && !job.stopped && job.spec.datacenters.contains(&node.datacenter))
        .filter(|job| !skip.iter().any(|eval| eval.job_name == job.spec.id()))
        .map(|job| new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, trigger, Some(node.id.clone())))
        .collect()
}

/// The evaluations for a node that became schedulable (registered, back from down, eligible again):
/// with `had_allocs`, one per job with allocations on it; plus one per system job that may run there.
pub fn evals_for_schedulable_node(snapshot: &Snapshot, node: &Node, had_allocs: bool) -> Vec<Evaluation> {
    let mut evals = if had_allocs { evals_for_node(snapshot, &node.id, EvalTrigger::NodeUpdate) } else { Vec::new() };
    if node.is_schedulable() {
        let system = system_job_evals(snapshot, node, EvalTrigger::NodeUpdate, &evals);
        evals.extend(system);
    }
    evals
}

pub fn new_eval(
    job_name: &str,
    job_type: davit_api::spec::JobType,
    priority: u8,
    trigger: EvalTrigger,
    node_id: Option<String>,
) -> Evaluation {
    let mut eval = Evaluation::pending(new_id(), job_name, job_type, priority, trigger, now_millis());
    eval.node_id = node_id;
    eval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(start: Instant, beats: u64, interval: Duration, config: &LivenessConfig) -> NodeLiveness {
        let mut history = HeartbeatHistory::new(start);
        for beat in 1..=beats {
            history.heartbeat(start + interval * beat as u32, &config.phi());
        }
        NodeLiveness { history, restored: false }
    }

    /// The first silence (10 ms steps) after which the node is down, with the reason.
    fn down_after(state: &NodeLiveness, last: Instant, config: &LivenessConfig) -> (Duration, String) {
        (0..5_000u32)
            .map(|step| Duration::from_millis(10) * step)
            .find_map(|silence| verdict(state, last + silence, config, &config.phi()).map(|reason| (silence, reason)))
            .expect("down within 50 s")
    }

    #[test]
    fn steady_node_is_down_by_phi_well_before_the_max_ttl() {
        let config = LivenessConfig::default();
        let start = Instant::now();
        let node = steady(start, 50, config.heartbeat_interval, &config);
        let last = start + config.heartbeat_interval * 50;
        let (after, reason) = down_after(&node, last, &config);
        assert!(after >= config.min_down_after && after <= Duration::from_millis(1800), "{after:?}: {reason}");
        assert!(reason.starts_with("phi ") && reason.contains(" > 8 after 1."), "{reason}");
    }

    #[test]
    fn never_down_before_min_down_after() {
        // A node so jumpy that phi would already be high: still not down before the floor.
        let config = LivenessConfig { phi_threshold: 0.1, ..LivenessConfig::default() };
        let start = Instant::now();
        let node = steady(start, 20, config.heartbeat_interval, &config);
        let last = start + config.heartbeat_interval * 20;
        let (after, _) = down_after(&node, last, &config);
        assert_eq!(after, config.min_down_after);
    }

    #[test]
    fn the_max_ttl_bounds_even_a_very_tolerant_detector() {
        let config = LivenessConfig { phi_threshold: f64::INFINITY, max_ttl: Duration::from_secs(3), ..LivenessConfig::default() };
        let start = Instant::now();
        let node = steady(start, 20, config.heartbeat_interval, &config);
        let last = start + config.heartbeat_interval * 20;
        let (after, reason) = down_after(&node, last, &config);
        assert_eq!(after, Duration::from_millis(3010));
        assert!(reason.starts_with("no heartbeat for 3.0 s"), "{reason}");
    }

    #[test]
    fn nodes_known_at_start_get_the_full_max_ttl_of_grace() {
        let config = LivenessConfig::default();
        let start = Instant::now();
        let restored = NodeLiveness { history: HeartbeatHistory::new(start), restored: true };
        let (after, _) = down_after(&restored, start, &config);
        assert_eq!(after, config.max_ttl + Duration::from_millis(10));
    }
}
