//! The node drainer: migrates the allocations of draining nodes elsewhere, a few at a time.
//!
//! A drain (set by `POST /v1/node/{id}/drain`) makes the node ineligible and records a
//! [`DrainStrategy`] on it. On every change of the view (and at least every [`IDLE_WAIT`]) the drainer
//! computes a [`DrainStep`] from a snapshot ([`plan_step`], pure) and carries it out:
//!
//! 1. Migration: an allocation is stopped (`desired_status: stop`, "node drain") together with an
//!    evaluation of its job (`NodeDrain`), in one transaction through the plan applier; the scheduler
//!    places a replacement at the same index on a schedulable node (never the draining node: it is
//!    ineligible). Per task group at most `max_parallel` migrations are in flight at a time, a
//!    migration being in flight until an allocation of the group at the same index runs (or, for a
//!    batch job, has completed) on a node that is not draining; a replacement that fits nowhere holds
//!    its group until capacity appears or the deadline passes. `max_parallel` is 1 for every group:
//!    the job spec's `update` block is not supported yet (the deployments work will read it here).
//!    A group with `migrate: live` (every task a `vm`) is live-migrated instead: the drainer asks the
//!    applier to start a migration to the best other node (`migration::destination`), and the migration
//!    is in flight while the source is migrating out; once it completed, the source is stopped
//!    ("migrated to node N") and the destination already runs. A VM that is not running, whose
//!    migration failed, or for which no node has room is stopped and replaced as above.
//! 2. System-job allocations are stopped only once nothing else is left on the node (and never with
//!    `ignore_system`).
//! 3. Deadline: once it passes, everything left on the node is stopped at once.
//! 4. Completion: when the node has no non-terminal allocations (system ones aside with
//!    `ignore_system`), `drain` is cleared; the node stays ineligible.
//!
//! The drainer keeps no state of its own: everything it needs is in the snapshot, so a server restart
//! resumes drains where they were.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, DrainStrategy, EvalTrigger, MigrationStatus, Node, UnixMillis};
use davit_api::spec::{JobType, MigrateMode};
use davit_scheduler::{AllocStop, ClusterState};
use davit_store::{Compare, Store, StoreError, Txn};

use crate::applier::Applier;
use crate::keys;
use crate::liveness::new_eval;
use crate::metrics::Metrics;
use crate::migration;
use crate::now_millis;
use crate::view::View;

/// `desired_description` of an allocation stopped to migrate it.
pub const DRAIN_DESCRIPTION: &str = "node drain";
/// `desired_description` of an allocation stopped because the drain deadline passed.
pub const DEADLINE_DESCRIPTION: &str = "node drain: deadline reached";
/// Migrations in flight per task group. The spec's `update.max_parallel` will replace it.
pub const MAX_PARALLEL: usize = 1;
/// The drainer looks again at least this often (deadlines pass without any change to the view).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// And at most this often, however busy the view is.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// What to do for every draining node, computed from one snapshot.
#[derive(Debug, Default, PartialEq)]
pub struct DrainStep {
    /// Allocations to stop now, with why.
    pub stops: Vec<AllocStop>,
    /// Running VM allocations of groups with `migrate: live` to live-migrate now (ids).
    pub migrations: Vec<String>,
    /// Jobs of the stopped allocations, to evaluate again.
    pub jobs: BTreeSet<String>,
    /// Draining nodes without any allocation left to migrate: clear their drain.
    pub completed: Vec<Arc<Node>>,
}

/// Runs drains until the server stops.
pub async fn run(store: Arc<dyn Store>, view: Arc<View>, applier: Applier, metrics: Arc<Metrics>) {
    let mut seen = 0;
    loop {
        let snapshot = view.idle_until(seen, IDLE_WAIT, |snapshot| snapshot.revision).await;
        metrics.drainer_pass();
        seen = snapshot.revision;
        let draining = snapshot.cluster.nodes().any(|node| node.is_draining());
        if draining && let Err(error) = step(&store, &view, &applier).await {
            tracing::error!(%error, "node drain step failed");
        }
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}

async fn step(store: &Arc<dyn Store>, view: &View, applier: &Applier) -> Result<(), StoreError> {
    let snapshot = view.snapshot();
    let now = now_millis();
    let step = plan_step(&snapshot.cluster, now);
    if !step.stops.is_empty() {
        let nodes: BTreeMap<&str, &str> =
            snapshot.cluster.nodes().filter(|node| node.is_draining()).map(|node| (node.id.as_str(), node.name.as_str())).collect();
        for stop in &step.stops {
            if let Some(alloc) = snapshot.cluster.alloc(&stop.alloc_id) {
                let node = nodes.get(alloc.node_id.as_str()).copied().unwrap_or("?");
                tracing::info!(alloc = %alloc.name, id = %alloc.id, node, reason = %stop.description, "draining: stopping allocation");
            }
        }
        let evals = step
            .jobs
            .iter()
            .filter_map(|name| snapshot.cluster.job(name))
            .map(|job| new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, EvalTrigger::NodeDrain, None))
            .collect();
        let index = applier.stop_allocs(step.stops, evals, now).await?;
        view.wait_for(index).await;
    }
    for alloc_id in step.migrations {
        let Some(source) = snapshot.cluster.alloc(&alloc_id) else { continue };
        let seed = now ^ u64::from(source.index);
        match migration::start(applier, &snapshot.cluster, source, None, seed, now).await? {
            Ok(started) => {
                tracing::info!(alloc = %source.name, id = %source.id, to = %started.node_name, "draining: live-migrating allocation");
                view.wait_for(started.index).await;
            }
            Err(reason) => {
                tracing::warn!(alloc = %source.name, id = %source.id, %reason, "draining: cannot live-migrate; stopping it instead");
                let stop = AllocStop { alloc_id: source.id.clone(), description: DRAIN_DESCRIPTION.to_string(), client_status: None };
                let evals = snapshot
                    .cluster
                    .job(&source.job_name)
                    .map(|job| new_eval(&job.spec.id(), job.spec.job_type, job.spec.priority, EvalTrigger::NodeDrain, None))
                    .into_iter()
                    .collect();
                let index = applier.stop_allocs(vec![stop], evals, now).await?;
                view.wait_for(index).await;
            }
        }
    }
    for node in step.completed {
        let mut done = (*node).clone();
        done.drain = None;
        let mut txn = Txn::default();
        txn.compares.push(Compare::ModRevision(keys::node(&node.id), node.modify_index));
        txn.success.push(keys::put(keys::node(&node.id), &done));
        let response = store.txn(txn).await?;
        if response.succeeded {
            tracing::info!(node = %node.name, id = %node.id, "node drain complete; the node stays ineligible");
            view.wait_for(response.revision).await;
        }
    }
    Ok(())
}

/// The drainer's decision for one snapshot at time `now`. Pure: no I/O, no clock.
pub fn plan_step(cluster: &ClusterState, now: UnixMillis) -> DrainStep {
    let mut step = DrainStep::default();
    let draining: BTreeMap<&str, (&Arc<Node>, &DrainStrategy)> =
        cluster.nodes().filter_map(|node| node.drain.as_ref().map(|drain| (node.id.as_str(), (node, drain)))).collect();
    // Allocations that may be migrated now, per (job, group), lowest index first.
    let mut candidates: BTreeMap<(&str, &str), Vec<&Arc<Allocation>>> = BTreeMap::new();

    for (node, drain) in draining.values() {
        let is_system = |alloc: &Allocation| cluster.job(&alloc.job_name).is_some_and(|job| job.spec.job_type == JobType::System);
        let live: Vec<&Arc<Allocation>> = cluster
            .allocs_for_node(&node.id)
            .filter(|alloc| !alloc.is_terminal())
            .filter(|alloc| !(drain.ignore_system && is_system(alloc)))
            .collect();
        if live.is_empty() {
            step.completed.push(Arc::clone(node));
            continue;
        }
        if drain.deadline_at().is_some_and(|deadline| now >= deadline) {
            for alloc in live {
                stop(&mut step, alloc, DEADLINE_DESCRIPTION);
            }
            continue;
        }
        let (system, others): (Vec<_>, Vec<_>) = live.into_iter().partition(|alloc| is_system(alloc));
        if others.is_empty() {
            for alloc in system {
                stop(&mut step, alloc, DRAIN_DESCRIPTION);
            }
            continue;
        }
        for alloc in others {
            match cluster.job(&alloc.job_name).filter(|job| !job.stopped).and_then(|job| job.spec.group(&alloc.group)) {
                Some(_) => candidates.entry((alloc.job_name.as_str(), alloc.group.as_str())).or_default().push(alloc),
                // No replacement will come (the scheduler stops it too): nothing to wait for.
                None => stop(&mut step, alloc, DRAIN_DESCRIPTION),
            }
        }
    }

    for ((job_name, group_name), mut allocs) in candidates {
        let in_flight = migrations_in_flight(cluster, &draining, job_name, group_name);
        allocs.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
        let live = cluster.job(job_name).and_then(|job| job.spec.group(group_name)).is_some_and(|group| group.migrate == MigrateMode::Live);
        for alloc in allocs.into_iter().take(MAX_PARALLEL.saturating_sub(in_flight)) {
            // A VM that is not running yet, or whose live migration failed, is stopped and replaced instead.
            let failed_before = alloc.migration.as_ref().is_some_and(|migration| migration.status == MigrationStatus::Failed);
            if live && alloc.client_status == ClientStatus::Running && !failed_before {
                step.migrations.push(alloc.id.clone());
            } else {
                stop(&mut step, alloc, DRAIN_DESCRIPTION);
            }
        }
    }
    step
}

fn stop(step: &mut DrainStep, alloc: &Allocation, description: &str) {
    step.stops.push(AllocStop { alloc_id: alloc.id.clone(), description: description.to_string(), client_status: None });
    step.jobs.insert(alloc.job_name.clone());
}

/// Allocations of the group stopped by the current drain of their node whose index has no replacement
/// yet that runs (or, for batch jobs, has completed) on a node that is not draining.
fn migrations_in_flight(
    cluster: &ClusterState,
    draining: &BTreeMap<&str, (&Arc<Node>, &DrainStrategy)>,
    job_name: &str,
    group_name: &str,
) -> usize {
    let Some(count) = cluster.job(job_name).and_then(|job| job.spec.group(group_name)).map(|group| group.count) else { return 0 };
    let allocs: Vec<&Arc<Allocation>> = cluster.allocs_for_job(job_name).filter(|alloc| alloc.group == group_name).collect();
    let live_migrations = allocs.iter().filter(|alloc| alloc.is_migrating_out() && draining.contains_key(alloc.node_id.as_str())).count();
    let replaced: BTreeSet<u32> = allocs
        .iter()
        .filter(|alloc| alloc.desired_status == DesiredStatus::Run && !draining.contains_key(alloc.node_id.as_str()))
        .filter(|alloc| matches!(alloc.client_status, ClientStatus::Running | ClientStatus::Complete))
        .map(|alloc| alloc.index)
        .collect();
    allocs
        .iter()
        .filter(|alloc| alloc.desired_status == DesiredStatus::Stop && alloc.desired_description == DRAIN_DESCRIPTION)
        .filter(|alloc| draining.get(alloc.node_id.as_str()).is_some_and(|(_, drain)| alloc.modify_time >= drain.started_at))
        .filter(|alloc| alloc.index < count && !replaced.contains(&alloc.index))
        .map(|alloc| alloc.index)
        .collect::<BTreeSet<u32>>()
        .len()
        + live_migrations
}

#[cfg(test)]
mod tests {
    use davit_api::objects::{AllocatedResources, Job, NodeEligibility};
    use davit_api::spec::JobSpec;

    use super::*;

    const STARTED: UnixMillis = 1_000;

    fn node(id: &str, drain: Option<DrainStrategy>) -> Node {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "datacenter": "dc1", "attributes": {}, "drivers": {},
            "resources": {"cpu": 4000, "memory": 4096, "port_range": [20000, 20100]},
            "status": "ready", "eligibility": "eligible", "http_addr": "",
        }))
        .unwrap();
        if drain.is_some() {
            node.eligibility = NodeEligibility::Ineligible;
        }
        node.drain = drain;
        node
    }

    fn drain(deadline_ms: Option<u64>) -> Option<DrainStrategy> {
        Some(DrainStrategy { deadline_ms, started_at: STARTED, ignore_system: false })
    }

    /// A cluster with draining node `d` and node `n`, and job `shop` with groups `web` (count 3) and
    /// `db` (count 1), every allocation running on `d`.
    fn cluster(deadline_ms: Option<u64>) -> ClusterState {
        let mut cluster = ClusterState::new();
        cluster.upsert_node(Arc::new(node("d", drain(deadline_ms))));
        cluster.upsert_node(Arc::new(node("n", None)));
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "shop",
            "groups": [
                {"name": "web", "count": 3, "tasks": [{"name": "t", "driver": "exec", "resources": {"cpu": 100, "memory": 64}}]},
                {"name": "db", "count": 1, "tasks": [{"name": "t", "driver": "exec", "resources": {"cpu": 100, "memory": 64}}]},
            ],
        }))
        .unwrap();
        let job = Arc::new(Job::new(spec, 0, 0));
        cluster.upsert_job_version(Arc::clone(&job));
        cluster.upsert_job(job);
        for (group, index) in [("web", 0), ("web", 1), ("web", 2), ("db", 0)] {
            cluster.upsert_alloc(Arc::new(alloc(&format!("{group}{index}"), group, index, "d")));
        }
        cluster
    }

    fn alloc(id: &str, group: &str, index: u32, node_id: &str) -> Allocation {
        Allocation { resources: AllocatedResources::default(), ..davit_api::testing::alloc(id, "shop", group, index, node_id) }
    }

    /// Applies the step's stops as the applier would.
    fn apply(cluster: &mut ClusterState, step: &DrainStep, now: UnixMillis) {
        for stop in &step.stops {
            let mut alloc = (**cluster.alloc(&stop.alloc_id).unwrap()).clone();
            alloc.desired_status = DesiredStatus::Stop;
            alloc.desired_description = stop.description.clone();
            alloc.modify_time = now;
            cluster.upsert_alloc(Arc::new(alloc));
        }
    }

    fn stopped(step: &DrainStep) -> Vec<(&str, &str)> {
        step.stops.iter().map(|stop| (stop.alloc_id.as_str(), stop.description.as_str())).collect()
    }

    #[test]
    fn one_migration_per_group_at_a_time_until_the_replacement_runs() {
        let mut cluster = cluster(None);
        let step = plan_step(&cluster, 2_000);
        assert_eq!(stopped(&step), [("db0", DRAIN_DESCRIPTION), ("web0", DRAIN_DESCRIPTION)]);
        assert_eq!(step.jobs.iter().collect::<Vec<_>>(), ["shop"]);
        apply(&mut cluster, &step, 2_000);

        // Replacements placed but not running yet, old allocations already complete: wait.
        let mut replacement = alloc("web0-new", "web", 0, "n");
        replacement.client_status = ClientStatus::Pending;
        cluster.upsert_alloc(Arc::new(replacement.clone()));
        let mut old = (**cluster.alloc("web0").unwrap()).clone();
        old.client_status = ClientStatus::Complete;
        cluster.upsert_alloc(Arc::new(old));
        assert_eq!(plan_step(&cluster, 3_000), DrainStep::default());

        // The web replacement runs: the next web allocation goes; db is done (count 1, nothing left).
        replacement.client_status = ClientStatus::Running;
        cluster.upsert_alloc(Arc::new(replacement));
        let step = plan_step(&cluster, 4_000);
        assert_eq!(stopped(&step), [("web1", DRAIN_DESCRIPTION)]);
        apply(&mut cluster, &step, 4_000);
        assert!(plan_step(&cluster, 5_000).stops.is_empty());
        cluster.upsert_alloc(Arc::new(alloc("web1-new", "web", 1, "n")));
        let step = plan_step(&cluster, 6_000);
        assert_eq!(stopped(&step), [("web2", DRAIN_DESCRIPTION)]);
        apply(&mut cluster, &step, 6_000);

        // Nothing non-terminal left on the node: the drain is complete.
        let step = plan_step(&cluster, 7_000);
        assert!(step.stops.is_empty());
        assert_eq!(step.completed.iter().map(|node| node.id.as_str()).collect::<Vec<_>>(), ["d"]);
    }

    #[test]
    fn the_deadline_stops_everything_left_at_once() {
        let mut cluster = cluster(Some(10_000));
        let step = plan_step(&cluster, 2_000);
        assert_eq!(step.stops.len(), 2);
        apply(&mut cluster, &step, 2_000);
        assert!(plan_step(&cluster, STARTED + 9_999).stops.is_empty());
        let step = plan_step(&cluster, STARTED + 10_000);
        assert_eq!(stopped(&step), [("web1", DEADLINE_DESCRIPTION), ("web2", DEADLINE_DESCRIPTION)]);
    }

    #[test]
    fn allocations_of_a_stopped_job_are_stopped_without_waiting() {
        let mut cluster = cluster(None);
        let mut job = (**cluster.job("shop").unwrap()).clone();
        job.stopped = true;
        cluster.upsert_job(Arc::new(job));
        assert_eq!(plan_step(&cluster, 2_000).stops.len(), 4);
    }

    #[test]
    fn live_groups_migrate_running_vms_one_at_a_time_and_fall_back_to_stop() {
        let mut cluster = cluster(None);
        let mut job = (**cluster.job("shop").unwrap()).clone();
        job.spec.groups[0].migrate = davit_api::spec::MigrateMode::Live;
        cluster.upsert_job(Arc::new(job));
        let mut pending = (**cluster.alloc("web2").unwrap()).clone();
        pending.client_status = ClientStatus::Pending;
        cluster.upsert_alloc(Arc::new(pending));
        let step = plan_step(&cluster, 2_000);
        assert_eq!(step.migrations, ["web0"]);
        assert_eq!(stopped(&step), [("db0", DRAIN_DESCRIPTION)]);

        // While web0 migrates out nothing else of the group moves.
        let mut migrating = (**cluster.alloc("web0").unwrap()).clone();
        migrating.migration = Some(Box::new(davit_api::objects::Migration {
            role: davit_api::objects::MigrationRole::Source,
            peer_alloc_id: "web0-new".to_string(),
            peer_node_id: "n".to_string(),
            status: MigrationStatus::Listening,
            listen_addrs: Default::default(),
            description: String::new(),
            report: None,
            started_at: 2_000,
        }));
        cluster.upsert_alloc(Arc::new(migrating.clone()));
        assert!(plan_step(&cluster, 3_000).migrations.is_empty());

        // A failed live migration falls back to stop and replace.
        migrating.migration.as_mut().unwrap().status = MigrationStatus::Failed;
        cluster.upsert_alloc(Arc::new(migrating));
        let step = plan_step(&cluster, 4_000);
        assert!(step.migrations.is_empty());
        assert!(stopped(&step).contains(&("web0", DRAIN_DESCRIPTION)), "{step:?}");
    }

    #[test]
    fn stops_from_an_earlier_drain_are_not_in_flight() {
        let mut cluster = cluster(None);
        let mut old = (**cluster.alloc("web0").unwrap()).clone();
        old.desired_status = DesiredStatus::Stop;
        old.desired_description = DRAIN_DESCRIPTION.to_string();
        old.modify_time = STARTED - 1;
        cluster.upsert_alloc(Arc::new(old));
        assert_eq!(stopped(&plan_step(&cluster, 2_000)), [("db0", DRAIN_DESCRIPTION), ("web1", DRAIN_DESCRIPTION)]);
    }
}
