//! Rollouts under a deployment (see `deployment.rs`): replacements limited by `max_parallel` while earlier ones
//! are not healthy yet, none once one is unhealthy or the deployment is paused; a newer version or a stop
//! cancels the running deployment.

use std::sync::Arc;

use davit_api::deployment::{DeploymentHealth, DeploymentStatus};
use davit_api::objects::{ClientStatus, DesiredStatus};
use davit_api::spec::UpdateSpec;

use super::*;

fn rolling(marker: &str, max_parallel: u32) -> davit_api::spec::JobSpec {
    let mut spec = job("shop", 4);
    spec.update = Some(UpdateSpec { max_parallel: Some(max_parallel), ..Default::default() });
    spec.groups[0].tasks[0].env.insert("MARKER".to_string(), marker.to_string());
    spec
}

/// Marks the live allocations of `version` running, and healthy or not for their deployment.
fn report(harness: &mut Harness, version: u64, healthy: Option<bool>, how_many: usize) {
    let ids: Vec<String> = harness
        .live_allocs("shop")
        .iter()
        .filter(|alloc| alloc.job_version == version && alloc.deployment_health.is_none() && alloc.desired_status == DesiredStatus::Run)
        .take(how_many)
        .map(|alloc| alloc.id.clone())
        .collect();
    let now = harness.now;
    for id in ids {
        harness.update_alloc(&id, |alloc| {
            alloc.client_status = ClientStatus::Running;
            alloc.deployment_health = healthy.map(|healthy| DeploymentHealth { healthy, timestamp: now });
        });
    }
}

fn replaced(plan: &Plan) -> usize {
    plan.stops().filter(|stop| stop.description.starts_with("replaced by version")).count()
}

#[test]
fn a_new_version_replaces_max_parallel_at_a_time_while_the_new_ones_are_not_healthy() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(rolling("v0", 2));
    let placed = harness.run("shop");
    let first = placed.plan.deployment.clone().expect("the first version is placed under a deployment");
    assert_eq!((first.job_version, first.status), (0, DeploymentStatus::Running));
    assert_eq!(placed.plan.allocations().count(), 4, "placements are never held back");
    assert!(placed.plan.allocations().all(|alloc| alloc.deployment_id.as_deref() == Some(first.id.as_str())));
    report(&mut harness, 0, Some(true), 4);

    harness.register(rolling("v1", 2));
    let result = harness.run("shop");
    let deployment = result.plan.deployment.clone().expect("a deployment for version 1");
    assert_eq!(deployment.job_version, 1);
    assert_eq!(replaced(&result.plan), 2, "{}", harness.render(&result.plan));
    assert!(result.plan.allocations().all(|alloc| alloc.deployment_id.as_deref() == Some(deployment.id.as_str())));
    // No watcher marked version 0's deployment successful here: the new version cancels it.
    assert_eq!(result.plan.deployment_updates.len(), 1);
    assert_eq!(result.plan.deployment_updates[0].0, first.id);

    // Two in flight: nothing more until one is healthy; then one more.
    assert_eq!(replaced(&harness.run("shop").plan), 0);
    report(&mut harness, 1, Some(true), 1);
    let next = harness.run("shop");
    assert_eq!(replaced(&next.plan), 1, "{}", harness.render(&next.plan));
    assert!(next.plan.deployment.is_none(), "the running deployment goes on");
    // An unhealthy one stops the rollout.
    report(&mut harness, 1, Some(false), 1);
    report(&mut harness, 1, Some(true), 1);
    assert_eq!(replaced(&harness.run("shop").plan), 0, "no replacement while an allocation is unhealthy");
}

#[test]
fn a_newer_version_or_a_stop_cancels_the_running_deployment_and_a_paused_one_holds() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(rolling("v0", 1));
    harness.run("shop");
    report(&mut harness, 0, Some(true), 4);
    harness.register(rolling("v1", 1));
    let result = harness.run("shop");
    let running = result.plan.deployment.clone().unwrap();
    report(&mut harness, 1, Some(true), 1);

    // Paused: no replacement.
    let mut paused = (*harness.state.deployment(&running.id).unwrap().clone()).clone();
    paused.status = DeploymentStatus::Paused;
    harness.state.upsert_deployment(Arc::new(paused));
    assert_eq!(replaced(&harness.run("shop").plan), 0);

    // Version 2 cancels it and starts its own.
    harness.register(rolling("v2", 1));
    let result = harness.run("shop");
    assert_eq!(
        result.plan.deployment_updates,
        vec![(running.id.clone(), DeploymentStatus::Cancelled, "Cancelled because job is updated to version 2".to_string())]
    );
    let second = result.plan.deployment.clone().expect("version 2's deployment");
    assert_eq!(replaced(&result.plan), 1);

    harness.stop_job("shop");
    let stopped = harness.run("shop");
    assert_eq!(
        stopped.plan.deployment_updates,
        vec![(second.id, DeploymentStatus::Cancelled, "Cancelled because job is stopped".to_string())]
    );
}

#[test]
fn groups_without_an_update_strategy_are_replaced_at_once() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let mut spec = job("shop", 4);
    spec.update = Some(UpdateSpec { max_parallel: Some(0), ..Default::default() });
    harness.register(spec.clone());
    let placed = harness.run("shop");
    assert!(placed.plan.deployment.is_none(), "max_parallel 0: no deployment");
    spec.groups[0].tasks[0].env.insert("MARKER".to_string(), "v1".to_string());
    harness.register(spec);
    let result = harness.run("shop");
    assert_eq!(replaced(&result.plan), 4);
    assert!(result.plan.deployment.is_none());
}
