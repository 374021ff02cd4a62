//! The deployment watcher (see ARCHITECTURE.md, "Deployments"): on every change of the view, and at least every
//! [`IDLE_WAIT`] (deadlines pass without any change), it assesses each running deployment from a snapshot
//! ([`assess`], pure) and writes what changed:
//!
//! - per group, the allocations the deployment placed, how many are healthy and unhealthy (the agents decide,
//!   see `Allocation::deployment_health`), and the progress deadline, which moves on with each healthy one;
//! - **successful** once every group runs its count at the deployment's version, nothing of an older version, and
//!   every allocation it placed is healthy: the version becomes *stable* (a version a later failure may revert
//!   to);
//! - canaries: a group with canaries waits for their promotion ("requires manual promotion"), or promotes itself
//!   once all of them are healthy with `auto_promote` (every waiting group must be ready and have it); the
//!   progress deadline does not run out on healthy canaries waiting for a person or their analysis, and starts
//!   again at promotion;
//! - canary analysis (`update.analysis`, counted by `analysis.rs`): `samples` failing intervals fail the
//!   deployment; the canaries are ready for promotion only after `samples` passing ones;
//! - **failed** when an allocation is unhealthy and the group's `progress_deadline` is 0, or when the deadline
//!   passes first; with `auto_revert`, the job is registered again with the spec of its newest stable version
//!   (a new version, rolled out with the same strategy) unless that spec is the one that failed.
//!
//! Each write compares the deployment's (and, for a revert, the job's) modify index, so a change made meanwhile
//! (a new version, a pause) wins and is assessed on the next pass.

use std::sync::Arc;
use std::time::Duration;

use davit_api::deployment::{Deployment, DeploymentGroup, DeploymentStatus, DeploymentVerdict, Shadow};
use davit_api::objects::{DesiredStatus, EvalTrigger, Job, UnixMillis};
use davit_scheduler::ClusterState;
use davit_store::{Compare, Store, StoreError, Txn};

use crate::keys;
use crate::liveness::new_eval;
use crate::now_millis;
use crate::view::View;

/// The watcher looks again at least this often.
const IDLE_WAIT: Duration = Duration::from_millis(500);

pub async fn run(store: Arc<dyn Store>, view: Arc<View>) {
    let mut seen = 0;
    loop {
        let snapshot = view.idle_until(seen, IDLE_WAIT, |snapshot| snapshot.revision).await;
        seen = snapshot.revision;
        let now = now_millis();
        let outcomes: Vec<Outcome> = snapshot
            .cluster
            .deployments()
            .filter(|deployment| deployment.is_active())
            .filter_map(|d| assess(&snapshot.cluster, d, now))
            .collect();
        drop(snapshot);
        for outcome in outcomes {
            if let Err(error) = write(&store, &view, outcome).await.map(drop) {
                tracing::error!(%error, "writing a deployment's progress failed");
            }
        }
    }
}

/// What a pass decided for one deployment.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// The deployment as it should be stored.
    pub deployment: Deployment,
    /// Its modify index when assessed.
    pub seen_index: u64,
    /// On success: the version to mark stable (and the job, when it is still that version).
    pub stable: Option<Job>,
    /// On failure with auto_revert: the job to register (a new version with a stable spec), and the modify
    /// index of the job it replaces.
    pub revert: Option<(Job, u64)>,
    /// Evaluate the job (a promotion rolls on, a failure stops its canaries).
    pub evaluate: bool,
}

/// Assesses one running deployment; `None` when nothing changed.
pub fn assess(cluster: &ClusterState, deployment: &Deployment, now: UnixMillis) -> Option<Outcome> {
    if deployment.status == DeploymentStatus::Paused {
        return None;
    }
    let job = cluster.job(&deployment.job_name);
    let version_spec = cluster.job_version(&deployment.job_name, deployment.job_version);
    let mut next = deployment.clone();
    let mut done = true;
    let mut failure = None;
    // Groups waiting for their canaries' promotion: (all canaries healthy, auto_promote).
    let mut awaiting: Vec<(bool, bool)> = Vec::new();
    for (name, group) in &mut next.groups {
        let count = version_spec.and_then(|job| job.spec.group(name)).map_or(group.desired_total, |group| group.count);
        let progress = group_progress(cluster, deployment, name);
        let stats = DeploymentGroup {
            desired_total: count,
            placed: progress.placed,
            healthy: progress.healthy,
            unhealthy: progress.unhealthy,
            canaries: progress.canaries,
            ..group.clone()
        };
        // With canary analysis, the canaries must also pass `samples` intervals; `samples` failing ones fail it.
        let analysis = version_spec.and_then(|job| job.spec.update_strategy(name)).and_then(|strategy| strategy.analysis);
        let (analysis_passed, analysis_failure) = match (&analysis, &stats.analysis) {
            (Some(spec), Some(so_far)) if stats.awaits_promotion() => (
                so_far.passed >= spec.samples,
                (so_far.failed >= spec.samples).then(|| {
                    let last = so_far.last.as_ref().map_or("", |sample| sample.verdict.as_str());
                    format!("Failed due to canary analysis ({} of {} intervals failed, last: {last})", so_far.failed, spec.samples)
                }),
            ),
            (Some(_), _) => (!stats.awaits_promotion(), None),
            (None, _) => (true, None),
        };
        let canaries_healthy = stats.awaits_promotion() && progress.healthy_canaries >= stats.desired_canaries;
        let ready_to_promote = canaries_healthy && analysis_passed;
        if stats.awaits_promotion() {
            awaiting.push((ready_to_promote, stats.auto_promote));
        }
        let group_done =
            !stats.awaits_promotion() && progress.at_version >= count && progress.older == 0 && stats.unhealthy == 0 && !progress.pending;
        done &= group_done;
        let mut stats = stats;
        if stats.progress_deadline_ms > 0 && progress.last_healthy > 0 {
            stats.require_progress_by = stats.require_progress_by.max(progress.last_healthy.saturating_add(stats.progress_deadline_ms));
        }
        if failure.is_none() {
            if let Some(reason) = analysis_failure {
                failure = Some(reason);
            } else if stats.unhealthy > 0 && stats.progress_deadline_ms == 0 {
                failure = Some("Failed due to unhealthy allocations".to_string());
            } else if stats.require_progress_by > 0 && now > stats.require_progress_by && !group_done && !canaries_healthy {
                // Healthy canaries waiting for a person, or for their analysis (traffic), are not late.
                failure = Some("Failed due to progress deadline".to_string());
            }
        }
        *group = stats;
    }
    let mut outcome = Outcome { deployment: next, seen_index: deployment.modify_index, stable: None, revert: None, evaluate: false };
    if job.is_none_or(|job| job.stopped || job.version != deployment.job_version) {
        // The scheduler cancels it with the next evaluation; nothing to decide here.
        return (outcome.deployment.groups != deployment.groups).then_some(outcome);
    }
    let job = job.expect("checked");
    if let Some(reason) = failure {
        failed(cluster, job, &mut outcome, reason, now);
    } else if done {
        outcome.deployment.status = DeploymentStatus::Successful;
        outcome.deployment.status_description = "Deployment completed successfully".to_string();
        let mut stable = version_spec.map_or_else(|| (**job).clone(), |version| (**version).clone());
        stable.stable = true;
        outcome.stable = Some(stable);
    } else if !awaiting.is_empty() && awaiting.iter().all(|&(ready, auto)| ready && auto) {
        promote_groups(&mut outcome.deployment, None, now);
        outcome.evaluate = true;
    } else if outcome.deployment.status == DeploymentStatus::Running {
        outcome.deployment.status_description = running_description(&awaiting).to_string();
    }
    if outcome.deployment == *deployment {
        return None;
    }
    outcome.deployment.modify_time = now;
    Some(outcome)
}

fn running_description(awaiting: &[(bool, bool)]) -> &'static str {
    if awaiting.iter().any(|&(_, auto)| !auto) {
        "Deployment is running but requires manual promotion"
    } else if !awaiting.is_empty() {
        "Deployment is running pending automatic promotion"
    } else {
        "Deployment is running"
    }
}

/// One group's allocations as a deployment sees them.
#[derive(Default)]
struct GroupProgress {
    /// Placed by the deployment, healthy, unhealthy, canaries among them (running), healthy canaries.
    placed: u32,
    healthy: u32,
    unhealthy: u32,
    canaries: u32,
    healthy_canaries: u32,
    /// Some placed allocation still runs undecided.
    pending: bool,
    /// The newest time one became healthy.
    last_healthy: UnixMillis,
    /// Live allocations at the deployment's version (any deployment), and of other versions.
    at_version: u32,
    older: u32,
}

fn group_progress(cluster: &ClusterState, deployment: &Deployment, group: &str) -> GroupProgress {
    let mut progress = GroupProgress::default();
    for alloc in cluster.allocs_for_job(&deployment.job_name).filter(|alloc| alloc.group == group) {
        let live = alloc.desired_status == DesiredStatus::Run && !alloc.client_status.is_terminal();
        if live && alloc.job_version == deployment.job_version {
            progress.at_version += 1;
        } else if live {
            progress.older += 1;
        }
        if alloc.deployment_id.as_deref() != Some(deployment.id.as_str()) {
            continue;
        }
        progress.placed += 1;
        let canary = alloc.shadow == Some(Shadow::Canary) && live;
        progress.canaries += u32::from(canary);
        match alloc.deployment_verdict() {
            DeploymentVerdict::Healthy(at) => {
                progress.healthy += 1;
                progress.healthy_canaries += u32::from(canary);
                progress.last_healthy = progress.last_healthy.max(at);
            }
            DeploymentVerdict::Unhealthy => progress.unhealthy += 1,
            DeploymentVerdict::Undecided if live => progress.pending = true,
            DeploymentVerdict::Undecided | DeploymentVerdict::Gone => {}
        }
    }
    progress
}

/// Promotes the canaries of `groups` (every group waiting for it when `None`): the rest of those groups rolls,
/// and their progress deadline starts again.
fn promote_groups(deployment: &mut Deployment, groups: Option<&[String]>, now: UnixMillis) {
    for (name, group) in &mut deployment.groups {
        if group.awaits_promotion() && groups.is_none_or(|groups| groups.contains(name)) {
            group.promoted = true;
            if group.progress_deadline_ms > 0 {
                group.require_progress_by = now.saturating_add(group.progress_deadline_ms);
            }
        }
    }
    let awaiting: Vec<(bool, bool)> =
        deployment.groups.values().filter(|group| group.awaits_promotion()).map(|group| (false, group.auto_promote)).collect();
    deployment.status_description = running_description(&awaiting).to_string();
}

/// `davit deployment promote [--group G]`: the deployment with the canaries of `groups` (every group with
/// canaries when empty) promoted, or why it cannot be: it is over, has no canaries (there, or left to promote),
/// or some of them are not healthy yet.
pub fn promote(cluster: &ClusterState, deployment: &Deployment, groups: &[String], now: UnixMillis) -> Result<Outcome, String> {
    let id = short(&deployment.id);
    if !deployment.is_active() {
        return Err(format!("deployment {id} is {}: only a running or paused deployment can be promoted", deployment.status.as_str()));
    }
    for group in groups {
        match deployment.groups.get(group) {
            None => return Err(format!("deployment {id} has no group {group}")),
            Some(g) if g.desired_canaries == 0 => return Err(format!("group {group} of deployment {id} has no canaries to promote")),
            Some(_) => {}
        }
    }
    let chosen: Vec<String> = if groups.is_empty() {
        deployment.groups.iter().filter(|(_, g)| g.awaits_promotion()).map(|(name, _)| name.clone()).collect()
    } else {
        groups.iter().filter(|group| deployment.groups[*group].awaits_promotion()).cloned().collect()
    };
    if chosen.is_empty() {
        return Err(if deployment.groups.values().any(|g| g.desired_canaries > 0) {
            format!("the canaries of deployment {id} are promoted already")
        } else {
            format!("deployment {id} has no canaries to promote")
        });
    }
    for name in &chosen {
        let group = &deployment.groups[name];
        let healthy = group_progress(cluster, deployment, name).healthy_canaries;
        if healthy < group.desired_canaries {
            return Err(format!(
                "group {name} has {healthy} of {} canaries healthy: promote once they all are (see davit deployment status -w {id})",
                group.desired_canaries
            ));
        }
    }
    let mut outcome =
        Outcome { deployment: deployment.clone(), seen_index: deployment.modify_index, stable: None, revert: None, evaluate: true };
    promote_groups(&mut outcome.deployment, Some(&chosen), now);
    outcome.deployment.modify_time = now;
    Ok(outcome)
}

/// A deployment that fails now for `reason` (`davit deployment fail`): as [`assess`] fails one.
pub fn fail(cluster: &ClusterState, deployment: &Deployment, reason: &str, now: UnixMillis) -> Outcome {
    let mut outcome =
        Outcome { deployment: deployment.clone(), seen_index: deployment.modify_index, stable: None, revert: None, evaluate: true };
    outcome.deployment.modify_time = now;
    match cluster.job(&deployment.job_name).filter(|job| !job.stopped && job.version == deployment.job_version) {
        Some(job) => failed(cluster, job, &mut outcome, reason.to_string(), now),
        None => {
            outcome.deployment.status = DeploymentStatus::Failed;
            outcome.deployment.status_description = reason.to_string();
        }
    }
    outcome
}

/// Marks the outcome's deployment failed for `reason` and, with `auto_revert` in a group, registers the newest
/// stable version's spec again as a new version.
fn failed(cluster: &ClusterState, job: &Job, outcome: &mut Outcome, reason: String, now: UnixMillis) {
    outcome.evaluate = true;
    outcome.deployment.status = DeploymentStatus::Failed;
    outcome.deployment.status_description = reason;
    if !outcome.deployment.groups.values().any(|group| group.auto_revert) {
        return;
    }
    match revert_target(cluster, job) {
        Some(target) => {
            outcome.deployment.status_description.push_str(&format!(" - rolling back to job version {}", target.version));
            let mut spec = target.spec.clone();
            spec.keep_scaled_counts(&job.spec);
            let reverted = Job { revert_of: Some(target.version), ..Job::new(spec, job.version + 1, now) };
            outcome.revert = Some((reverted, job.modify_index));
        }
        None => outcome.deployment.status_description.push_str(" - no stable version to roll back to"),
    }
}

/// The newest stable version older than the job's, unless its spec is the job's own (a revert would change
/// nothing, and could loop).
fn revert_target<'a>(cluster: &'a ClusterState, job: &Job) -> Option<&'a Arc<Job>> {
    let id = job.spec.id();
    (0..job.version)
        .rev()
        .filter_map(|version| cluster.job_version(&id, version))
        .find(|version| version.stable)
        .filter(|target| target.spec != job.spec)
}

/// The first 8 characters of a deployment id, as messages name it.
pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// Writes an outcome; the revision it was committed at, or `None` when the deployment (or the job) changed
/// since it was assessed.
pub async fn write(store: &Arc<dyn Store>, view: &View, outcome: Outcome) -> Result<Option<u64>, StoreError> {
    let deployment = &outcome.deployment;
    let mut txn = Txn::default();
    txn.compares.push(Compare::ModRevision(keys::deployment(&deployment.id), outcome.seen_index));
    txn.success.push(keys::put(keys::deployment(&deployment.id), deployment));
    if deployment.status != DeploymentStatus::Running {
        tracing::info!(deployment = %deployment.id, job = %deployment.job_name, version = deployment.job_version, status = deployment.status.as_str(), description = %deployment.status_description, "deployment ended");
    }
    if let Some(stable) = &outcome.stable {
        let id = stable.spec.id();
        txn.success.push(keys::put(keys::version(&id, stable.version), stable));
        if let Some(job) = view.snapshot().cluster.job(&id).filter(|job| job.version == stable.version) {
            txn.compares.push(Compare::ModRevision(keys::job(&id), job.modify_index));
            txn.success.push(keys::put(keys::job(&id), &Job { stable: true, ..(**job).clone() }));
        }
    }
    if let Some((reverted, job_index)) = &outcome.revert {
        let id = reverted.spec.id();
        txn.compares.push(Compare::ModRevision(keys::job(&id), *job_index));
        txn.success.push(keys::put(keys::job(&id), reverted));
        txn.success.push(keys::put(keys::version(&id, reverted.version), reverted));
        let eval = new_eval(&id, reverted.spec.job_type, reverted.spec.priority, EvalTrigger::JobRevert, None);
        txn.success.push(keys::put(keys::eval(&eval.id), &eval));
    } else if outcome.evaluate
        && let Some(job) = view.snapshot().cluster.job(&deployment.job_name).filter(|job| !job.stopped)
    {
        let eval = new_eval(&deployment.job_name, job.spec.job_type, job.spec.priority, EvalTrigger::Deployment, None);
        txn.success.push(keys::put(keys::eval(&eval.id), &eval));
    }
    let response = store.txn(txn).await?;
    if !response.succeeded {
        return Ok(None);
    }
    view.wait_for(response.revision).await;
    Ok(Some(response.revision))
}

#[cfg(test)]
mod tests {
    use davit_api::deployment::DeploymentHealth;
    use davit_api::objects::Allocation;
    use davit_api::spec::{UpdateSpec, parse_job_spec};

    use super::*;

    const SPEC: &str =
        "name: web\ngroups:\n  - name: g\n    count: 2\n    tasks:\n      - {name: t, driver: exec, config: {command: /bin/sleep}}\n";

    fn job(version: u64, marker: &str, stable: bool, progress_deadline_s: u64) -> Job {
        let mut spec = parse_job_spec(SPEC, "web.yaml").unwrap();
        spec.update = Some(UpdateSpec {
            auto_revert: Some(true),
            progress_deadline: Some(davit_api::Duration::from_secs(progress_deadline_s)),
            ..Default::default()
        });
        spec.meta.insert("marker".to_string(), marker.to_string());
        Job { stable, create_index: 1, modify_index: 1, ..Job::new(spec, version, 0) }
    }

    /// A cluster at job version `versions.last()`, with a running deployment of it and two allocations of it.
    fn setup(versions: &[Job], health: [Option<bool>; 2]) -> (ClusterState, Deployment) {
        let mut cluster = ClusterState::new();
        for version in versions {
            cluster.upsert_job_version(Arc::new(version.clone()));
        }
        let current = versions.last().unwrap();
        cluster.upsert_job(Arc::new(current.clone()));
        let strategy = current.spec.update_strategy("g").unwrap();
        let progress_deadline_ms = strategy.progress_deadline.as_std().as_millis() as u64;
        let deployment = Deployment {
            id: "d1".to_string(),
            job_name: "web".to_string(),
            job_version: current.version,
            status: DeploymentStatus::Running,
            status_description: "Deployment is running".to_string(),
            groups: [(
                "g".to_string(),
                DeploymentGroup {
                    desired_total: 2,
                    auto_revert: true,
                    progress_deadline_ms,
                    require_progress_by: if progress_deadline_ms > 0 { 1_000 + progress_deadline_ms } else { 0 },
                    ..Default::default()
                },
            )]
            .into(),
            create_time: 1_000,
            modify_time: 1_000,
            create_index: 5,
            modify_index: 5,
        };
        cluster.upsert_deployment(Arc::new(deployment.clone()));
        for (index, healthy) in health.into_iter().enumerate() {
            let alloc = Allocation {
                job_version: current.version,
                deployment_id: Some("d1".to_string()),
                deployment_health: healthy.map(|healthy| DeploymentHealth { healthy, timestamp: 2_000 }),
                ..davit_api::testing::alloc(&format!("a{index}"), "web", "g", index as u32, "n1")
            };
            cluster.upsert_alloc(Arc::new(alloc));
        }
        (cluster, deployment)
    }

    #[test]
    fn every_allocation_healthy_at_the_version_is_a_success_and_makes_the_version_stable() {
        let (cluster, deployment) = setup(&[job(0, "a", true, 600)], [Some(true), Some(true)]);
        let outcome = assess(&cluster, &deployment, 3_000).unwrap();
        assert_eq!(outcome.deployment.status, DeploymentStatus::Successful);
        assert_eq!((outcome.deployment.groups["g"].placed, outcome.deployment.groups["g"].healthy), (2, 2));
        assert!(outcome.stable.unwrap().stable);
        // One still pending: progress recorded, not done.
        let (cluster, deployment) = setup(&[job(0, "a", false, 600)], [Some(true), None]);
        let outcome = assess(&cluster, &deployment, 3_000).unwrap();
        assert_eq!(outcome.deployment.status, DeploymentStatus::Running);
        assert_eq!(outcome.deployment.groups["g"].require_progress_by, 2_000 + 600_000, "the deadline moves on with progress");
    }

    #[test]
    fn an_unhealthy_allocation_fails_the_deployment_and_auto_revert_registers_the_stable_spec() {
        let versions = [job(0, "old", true, 0), job(1, "new", false, 0)];
        let (cluster, deployment) = setup(&versions, [Some(false), None]);
        let outcome = assess(&cluster, &deployment, 3_000).unwrap();
        assert_eq!(outcome.deployment.status, DeploymentStatus::Failed);
        assert_eq!(outcome.deployment.status_description, "Failed due to unhealthy allocations - rolling back to job version 0");
        let (reverted, _) = outcome.revert.unwrap();
        assert_eq!((reverted.version, reverted.spec.meta["marker"].as_str(), reverted.revert_of), (2, "old", Some(0)));
    }

    #[test]
    fn a_passed_progress_deadline_fails_and_a_revert_needs_another_stable_spec() {
        // Nothing stable before: no revert.
        let (cluster, deployment) = setup(&[job(0, "a", false, 60)], [Some(true), None]);
        let outcome = assess(&cluster, &deployment, 1_000 + 3_600_000).unwrap();
        assert_eq!(outcome.deployment.status_description, "Failed due to progress deadline - no stable version to roll back to");
        assert!(outcome.revert.is_none());
        // The stable version has the very spec that failed: no revert either (no loop).
        let (cluster, deployment) = setup(&[job(0, "same", true, 0), job(1, "same", false, 0)], [Some(false), None]);
        let outcome = assess(&cluster, &deployment, 3_000).unwrap();
        assert!(outcome.revert.is_none(), "{outcome:?}");
        // `davit deployment fail` on a running deployment.
        let (cluster, deployment) = setup(&[job(0, "old", true, 600), job(1, "new", false, 600)], [None, None]);
        let outcome = fail(&cluster, &deployment, "Deployment marked as failed by user", 3_000);
        assert_eq!(outcome.deployment.status_description, "Deployment marked as failed by user - rolling back to job version 0");
    }

    /// `setup`, with allocation a0 a canary and the group waiting for one canary's promotion.
    fn with_canary(health: Option<bool>, auto_promote: bool) -> (ClusterState, Deployment) {
        let (mut cluster, mut deployment) = setup(&[job(0, "old", true, 600), job(1, "new", false, 600)], [health, None]);
        let group = deployment.groups.get_mut("g").unwrap();
        (group.desired_canaries, group.auto_promote) = (1, auto_promote);
        cluster.upsert_deployment(Arc::new(deployment.clone()));
        let mut canary = (**cluster.alloc("a0").unwrap()).clone();
        canary.shadow = Some(Shadow::Canary);
        cluster.upsert_alloc(Arc::new(canary));
        cluster.remove_alloc("a1");
        (cluster, deployment)
    }

    #[test]
    fn healthy_canaries_wait_for_a_person_or_promote_themselves_with_auto_promote() {
        // Manual: says so, and the progress deadline does not run out on a person.
        let (cluster, deployment) = with_canary(Some(true), false);
        let outcome = assess(&cluster, &deployment, 3_000).unwrap();
        assert_eq!(outcome.deployment.status_description, "Deployment is running but requires manual promotion");
        assert!(!outcome.deployment.groups["g"].promoted);
        assert_eq!(outcome.deployment.groups["g"].canaries, 1);
        let late = assess(&cluster, &deployment, 10_000_000).unwrap();
        assert_eq!(late.deployment.status, DeploymentStatus::Running, "{late:?}");
        // Promotion by hand: refused for another group, done for the deployment's.
        assert_eq!(promote(&cluster, &deployment, &["x".to_string()], 3_000).unwrap_err(), "deployment d1 has no group x");
        let promoted = promote(&cluster, &deployment, &[], 3_000).unwrap();
        assert!(promoted.deployment.groups["g"].promoted && promoted.evaluate);
        assert_eq!(promoted.deployment.groups["g"].require_progress_by, 3_000 + 600_000, "the deadline starts again");

        // Not healthy yet: promotion refused, and auto_promote waits.
        let (cluster, deployment) = with_canary(None, true);
        assert_eq!(
            promote(&cluster, &deployment, &[], 3_000).unwrap_err(),
            "group g has 0 of 1 canaries healthy: promote once they all are (see davit deployment status -w d1)"
        );
        let outcome = assess(&cluster, &deployment, 3_000).unwrap();
        assert_eq!(outcome.deployment.status_description, "Deployment is running pending automatic promotion");
        assert!(!outcome.evaluate);
        // Healthy with auto_promote: promoted, and the job is evaluated to roll the rest.
        let (cluster, deployment) = with_canary(Some(true), true);
        let outcome = assess(&cluster, &deployment, 3_000).unwrap();
        assert!(outcome.deployment.groups["g"].promoted && outcome.evaluate, "{outcome:?}");
        assert_eq!(outcome.deployment.status_description, "Deployment is running");
        // A deployment without canaries has none to promote.
        let (cluster, deployment) = setup(&[job(0, "a", false, 600)], [None, None]);
        assert_eq!(promote(&cluster, &deployment, &[], 3_000).unwrap_err(), "deployment d1 has no canaries to promote");
    }
}
