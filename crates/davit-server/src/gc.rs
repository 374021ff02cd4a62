//! Garbage collection: what ended long enough ago leaves the store, so it does not grow forever.
//!
//! A pass (every [`GcConfig::interval`], or `POST /v1/operator/gc`) collects, with Nomad's defaults:
//! - jobs stopped at least `job_threshold` (4h) ago (measured from the job's last change: its submission,
//!   evaluations or allocations) whose allocations all ended, with their versions,
//!   evaluations and allocations;
//! - evaluations that ended (complete, failed, canceled) at least `eval_threshold` (1h) ago, except the newest
//!   of each job (`job status` shows it);
//! - allocations that ended at least `alloc_threshold` (1h) ago and are no longer their name's current instance
//!   (the scheduler stopped them, or a newer allocation took their name): a failed allocation waiting for its
//!   reschedule and a completed batch allocation stay, as the scheduler needs them;
//! - job versions beyond the newest `max_versions` (10), never the current one nor one a live allocation runs.
//!
//! A forced pass ignores the age thresholds, not the other rules. Allocations are deleted by the plan applier
//! (the only writer of allocations), which checks again that each one ended; a job is deleted only if it did
//! not change since the pass looked at it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use davit_api::http::GcResponse;
use davit_api::objects::EvalStatus;
use davit_store::{Compare, Op, Store, StoreError, Txn};

use crate::applier::Applier;
use crate::keys;
use crate::view::{Snapshot, View};

/// When things are collected.
#[derive(Clone, Debug)]
pub struct GcConfig {
    pub interval: Duration,
    pub eval_threshold: Duration,
    pub alloc_threshold: Duration,
    pub job_threshold: Duration,
    /// Versions kept per job.
    pub max_versions: usize,
}

impl Default for GcConfig {
    fn default() -> GcConfig {
        GcConfig {
            interval: Duration::from_secs(300),
            eval_threshold: Duration::from_secs(3600),
            alloc_threshold: Duration::from_secs(3600),
            job_threshold: Duration::from_secs(4 * 3600),
            max_versions: 10,
        }
    }
}

/// Deletes per store transaction (etcd's default limit is 128 operations; redb has none).
const BATCH: usize = 100;

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Garbage {
    /// Jobs to delete whole, with the revision they must still be at.
    pub jobs: Vec<(String, u64)>,
    pub versions: Vec<(String, u64)>,
    pub evals: Vec<String>,
    pub allocs: Vec<String>,
}

/// What `snapshot` holds that a pass at `now` collects (`force`: whatever the age).
pub(crate) fn find(snapshot: &Snapshot, now: u64, config: &GcConfig, force: bool) -> Garbage {
    let aged = |time: u64, threshold: Duration| force || now.saturating_sub(time) >= threshold.as_millis() as u64;
    let cluster = &snapshot.cluster;
    let mut garbage = Garbage::default();

    // When a job last changed: its submission, or later its evaluations (a stop writes one) and allocations.
    let mut last_change: HashMap<&str, u64> = HashMap::new();
    for eval in snapshot.evals.values() {
        let time = last_change.entry(eval.job_name.as_str()).or_default();
        *time = (*time).max(eval.modify_time);
    }
    // A job with an evaluation still to run is not done with: the worker's result would outlive the job.
    let pending: BTreeSet<&str> =
        snapshot.evals.values().filter(|eval| eval.status == EvalStatus::Pending).map(|eval| eval.job_name.as_str()).collect();
    let mut dead_jobs = BTreeSet::new();
    for job in cluster.jobs() {
        let id = job.spec.id();
        let all_ended = cluster.allocs_for_job(&id).all(|alloc| alloc.client_status.is_terminal()) && !pending.contains(id.as_str());
        let changed = cluster
            .allocs_for_job(&id)
            .map(|alloc| alloc.modify_time)
            .chain([job.submit_time, last_change.get(id.as_str()).copied().unwrap_or(0)])
            .max()
            .unwrap_or(job.submit_time);
        if job.stopped && all_ended && aged(changed, config.job_threshold) {
            garbage.jobs.push((id.clone(), job.modify_index));
            garbage.versions.extend(cluster.job_versions(&id).map(|version| (id.clone(), version.version)));
            dead_jobs.insert(id);
            continue;
        }
        // Versions: the newest `max_versions`, the current one and those live allocations run stay.
        let live: BTreeSet<u64> =
            cluster.allocs_for_job(&id).filter(|alloc| !alloc.client_status.is_terminal()).map(|alloc| alloc.job_version).collect();
        let mut versions: Vec<u64> = cluster.job_versions(&id).map(|version| version.version).collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        for version in versions.into_iter().skip(config.max_versions) {
            if version != job.version && !live.contains(&version) {
                garbage.versions.push((id.clone(), version));
            }
        }
    }

    // Evaluations: the newest of each living job stays.
    let mut newest: HashMap<&str, (u64, &str)> = HashMap::new();
    for eval in snapshot.evals.values() {
        let entry = newest.entry(eval.job_name.as_str()).or_insert((eval.create_index, eval.id.as_str()));
        if eval.create_index > entry.0 {
            *entry = (eval.create_index, eval.id.as_str());
        }
    }
    for eval in snapshot.evals.values() {
        let ended = matches!(eval.status, EvalStatus::Complete | EvalStatus::Failed | EvalStatus::Canceled);
        let dead = dead_jobs.contains(&eval.job_name);
        let newest_of_living_job = !dead && newest.get(eval.job_name.as_str()).is_some_and(|(_, id)| *id == eval.id);
        if ended && (dead || (!newest_of_living_job && aged(eval.modify_time, config.eval_threshold))) {
            garbage.evals.push(eval.id.clone());
        }
    }

    // Allocations: ended, and no longer the current instance of their name (or their job is gone). A system
    // job's allocations share a name on every node: there an instance is a name on a node.
    let instance = |alloc: &davit_api::objects::Allocation| {
        let system = cluster.job(&alloc.job_name).is_some_and(|job| job.spec.job_type == davit_api::spec::JobType::System);
        (alloc.job_name.clone(), alloc.name.clone(), if system { alloc.node_id.clone() } else { String::new() })
    };
    let mut current: HashMap<(String, String, String), u64> = HashMap::new();
    for alloc in cluster.allocs() {
        let created = current.entry(instance(alloc)).or_default();
        *created = (*created).max(alloc.create_time);
    }
    for alloc in cluster.allocs().filter(|alloc| alloc.client_status.is_terminal()) {
        let job = cluster.job(&alloc.job_name);
        let gone = dead_jobs.contains(&alloc.job_name) || job.is_none();
        let replaced = alloc.desired_status != davit_api::objects::DesiredStatus::Run
            || current.get(&instance(alloc)).is_some_and(|newest| *newest > alloc.create_time)
            || job.is_some_and(|job| job.stopped);
        if dead_jobs.contains(&alloc.job_name) || ((gone || replaced) && aged(alloc.modify_time, config.alloc_threshold)) {
            garbage.allocs.push(alloc.id.clone());
        }
    }
    garbage
}

/// Runs one pass: finds what to collect and deletes it. Returns what was deleted.
pub(crate) async fn collect(
    store: &Arc<dyn Store>,
    view: &View,
    applier: &Applier,
    config: &GcConfig,
    force: bool,
) -> Result<GcResponse, StoreError> {
    let snapshot = view.snapshot();
    let garbage = find(&snapshot, crate::now_millis(), config, force);
    let mut report = GcResponse::default();
    // Allocations first (by the applier): a job is never deleted before what it ran.
    for ids in garbage.allocs.chunks(BATCH) {
        let (deleted, index) = applier.collect(ids.to_vec()).await?;
        report.allocs += deleted;
        report.index = report.index.max(index);
    }
    let dead: BTreeSet<&str> = garbage.jobs.iter().map(|(id, _)| id.as_str()).collect();
    let ops: Vec<Op> = garbage
        .evals
        .iter()
        .map(|id| Op::Delete { key: keys::eval(id) })
        .chain(
            garbage
                .versions
                .iter()
                .filter(|(job, _)| !dead.contains(job.as_str()))
                .map(|(job, version)| Op::Delete { key: keys::version(job, *version) }),
        )
        .collect();
    for ops in ops.chunks(BATCH) {
        let response = store.txn(Txn { success: ops.to_vec(), ..Default::default() }).await?;
        report.index = report.index.max(response.revision);
    }
    report.evals = garbage.evals.len();
    report.versions = garbage.versions.iter().filter(|(job, _)| !dead.contains(job.as_str())).count();
    for (job, revision) in &garbage.jobs {
        let versions: Vec<Op> = garbage
            .versions
            .iter()
            .filter(|(of, _)| of == job)
            .map(|(_, version)| Op::Delete { key: keys::version(job, *version) })
            .collect();
        // Whole, if it did not change since the pass looked (re-registered meanwhile: it lives on).
        let mut txn = Txn { compares: vec![Compare::ModRevision(keys::job(job), *revision)], ..Default::default() };
        txn.success.push(Op::Delete { key: keys::job(job) });
        let count = versions.len();
        txn.success.extend(versions);
        let response = store.txn(txn).await?;
        if response.succeeded {
            report.jobs += 1;
            report.versions += count;
            report.index = report.index.max(response.revision);
        }
    }
    view.wait_for(report.index).await;
    Ok(report)
}

/// Collects every `config.interval`.
pub(crate) async fn run(store: Arc<dyn Store>, view: Arc<View>, applier: Applier, config: GcConfig) {
    loop {
        tokio::time::sleep(config.interval).await;
        match collect(&store, &view, &applier, &config, false).await {
            Ok(report) if report.allocs + report.evals + report.jobs + report.versions > 0 => tracing::info!(
                jobs = report.jobs,
                versions = report.versions,
                evals = report.evals,
                allocs = report.allocs,
                "garbage collected"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "garbage collection failed; trying again at the next pass"),
        }
    }
}
