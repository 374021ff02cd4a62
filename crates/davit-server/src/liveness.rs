//! Node liveness: agents heartbeat; a node whose heartbeats stop for longer than its TTL is marked
//! `down`, and every job with allocations on it is evaluated again.
//!
//! Heartbeats are kept in memory only (never written to the store); only status changes are.
//! After a server start every known node gets a full TTL of grace before it can be marked down.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use davit_api::objects::{EvalStatus, EvalTrigger, Evaluation, NodeStatus};
use davit_store::{Store, StoreError, Txn};
use tokio::time::Instant;

use crate::keys;
use crate::view::{Snapshot, View};
use crate::{new_id, now_millis};

#[derive(Clone, Copy, Debug)]
pub struct LivenessConfig {
    /// How often agents are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// A node is down after this long without a heartbeat.
    pub ttl: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig { heartbeat_interval: Duration::from_secs(1), ttl: Duration::from_secs(10) }
    }
}

pub struct Liveness {
    pub config: LivenessConfig,
    last_seen: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    pub fn new(config: LivenessConfig, snapshot: &Snapshot) -> Arc<Liveness> {
        let now = Instant::now();
        let last_seen = snapshot.cluster.nodes().map(|node| (node.id.clone(), now)).collect();
        Arc::new(Liveness { config, last_seen: Mutex::new(last_seen) })
    }

    pub fn heartbeat(&self, node_id: &str) {
        self.last_seen.lock().expect("liveness lock").insert(node_id.to_string(), Instant::now());
    }

    /// Marks nodes whose heartbeats stopped as down, in a loop.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, view: Arc<View>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(250).min(self.config.ttl / 4));
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
            let last_seen = self.last_seen.lock().expect("liveness lock");
            snapshot
                .cluster
                .nodes()
                .filter(|node| node.status == NodeStatus::Ready)
                .filter(|node| last_seen.get(&node.id).is_none_or(|seen| now.duration_since(*seen) > self.config.ttl))
                .cloned()
                .collect()
        };
        for node in expired {
            let mut down = (*node).clone();
            down.status = NodeStatus::Down;
            down.status_description = format!("no heartbeat for {:?}", self.config.ttl);
            let mut txn = Txn::default();
            txn.compares.push(davit_store::Compare::ModRevision(keys::node(&node.id), node.modify_index));
            txn.success.push(keys::put(keys::node(&node.id), &down));
            for eval in evals_for_node(&snapshot, &node.id, EvalTrigger::NodeUpdate) {
                txn.success.push(keys::put(keys::eval(&eval.id), &eval));
            }
            tracing::warn!(node = %node.name, id = %node.id, "node missed its heartbeats: marked down");
            let response = store.txn(txn).await?;
            view.wait_for(response.revision).await;
        }
        Ok(())
    }
}

/// One pending evaluation for every job with a non-terminal allocation on the node.
pub fn evals_for_node(snapshot: &Snapshot, node_id: &str, trigger: EvalTrigger) -> Vec<Evaluation> {
    let jobs: BTreeSet<String> =
        snapshot.cluster.allocs_for_node(node_id).filter(|alloc| !alloc.is_terminal()).map(|alloc| alloc.job_name.clone()).collect();
    jobs.into_iter()
        .filter_map(|name| snapshot.cluster.job(&name).cloned())
        .map(|job| new_eval(&job.spec.name, job.spec.job_type, job.spec.priority, trigger, Some(node_id.to_string())))
        .collect()
}

pub fn new_eval(
    job_name: &str,
    job_type: davit_api::spec::JobType,
    priority: u8,
    trigger: EvalTrigger,
    node_id: Option<String>,
) -> Evaluation {
    let now = now_millis();
    Evaluation {
        id: new_id(),
        job_name: job_name.to_string(),
        job_type,
        priority,
        triggered_by: trigger,
        status: EvalStatus::Pending,
        status_description: String::new(),
        node_id,
        failed_groups: Default::default(),
        blocked_eval: None,
        previous_eval: None,
        create_time: now,
        modify_time: now,
        create_index: 0,
        modify_index: 0,
    }
}
