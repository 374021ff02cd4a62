//! Rollouts under a deployment (see `deployment.rs`): replacements limited by `max_parallel` while earlier ones
//! are not healthy yet, none once one is unhealthy or the deployment is paused; a newer version or a stop
//! cancels the running deployment.

use std::sync::Arc;

use davit_api::deployment::{DeploymentHealth, DeploymentStatus, Shadow};
use davit_api::objects::{ClientStatus, DesiredStatus};
use davit_api::spec::{CountOrPercent, UpdateSpec};

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

fn with_update(marker: &str, update: UpdateSpec) -> davit_api::spec::JobSpec {
    let mut spec = rolling(marker, 1);
    spec.update = Some(update);
    spec
}

fn set_deployment(harness: &mut Harness, id: &str, change: impl FnOnce(&mut davit_api::deployment::Deployment)) {
    let mut deployment = (**harness.state.deployment(id).expect("a stored deployment")).clone();
    change(&mut deployment);
    harness.state.upsert_deployment(Arc::new(deployment));
}

fn shadows(plan: &Plan, shadow: Shadow) -> Vec<u32> {
    let mut indexes: Vec<u32> = plan.allocations().filter(|alloc| alloc.shadow == Some(shadow)).map(|alloc| alloc.index).collect();
    indexes.sort_unstable();
    indexes
}

#[test]
fn canaries_run_beside_the_old_allocations_until_promoted_then_the_rest_rolls() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let canary = |marker| with_update(marker, UpdateSpec { canary: Some(1), max_parallel: Some(1), ..Default::default() });
    harness.register(canary("v0"));
    let first = harness.run("shop");
    assert!(shadows(&first.plan, Shadow::Canary).is_empty(), "a first version has nothing to be a canary beside");
    assert_eq!(first.plan.deployment.as_ref().unwrap().groups["web"].desired_canaries, 0);
    report(&mut harness, 0, Some(true), 4);

    harness.register(canary("v1"));
    let result = harness.run("shop");
    let deployment = result.plan.deployment.clone().unwrap();
    assert_eq!(deployment.groups["web"].desired_canaries, 1);
    assert_eq!(shadows(&result.plan, Shadow::Canary), vec![0], "{}", harness.render(&result.plan));
    assert_eq!(replaced(&result.plan), 0, "the old allocations keep running beside the canary");
    assert_eq!(harness.live_allocs("shop").len(), 5);
    // Healthy or not, nothing more happens until the promotion.
    report(&mut harness, 1, Some(true), 1);
    let waiting = harness.run("shop");
    assert!(waiting.plan.allocations().next().is_none() && waiting.plan.stops().next().is_none(), "{}", harness.render(&waiting.plan));

    set_deployment(&mut harness, &deployment.id, |d| d.groups.get_mut("web").unwrap().promoted = true);
    let promoted = harness.run("shop");
    // The canary takes index 0 from the old allocation; max_parallel 1 replaces one more.
    assert_eq!(replaced(&promoted.plan), 2, "{}", harness.render(&promoted.plan));
    assert_eq!(promoted.plan.allocations().count(), 1);
    let live = harness.live_allocs("shop");
    assert_eq!(live.len(), 4);
    assert_eq!(live.iter().filter(|alloc| alloc.job_version == 1).count(), 2);
}

#[test]
fn blue_green_promotion_stops_every_old_allocation_at_once_and_a_failed_deployment_stops_its_canaries() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let blue_green = |marker| with_update(marker, UpdateSpec { canary: Some(4), ..Default::default() });
    harness.register(blue_green("blue"));
    harness.run("shop");
    report(&mut harness, 0, Some(true), 4);
    harness.register(blue_green("green"));
    let result = harness.run("shop");
    let deployment = result.plan.deployment.clone().unwrap();
    assert_eq!(shadows(&result.plan, Shadow::Canary), vec![0, 1, 2, 3]);
    assert_eq!(harness.live_allocs("shop").len(), 8);
    report(&mut harness, 1, Some(true), 4);
    set_deployment(&mut harness, &deployment.id, |d| d.groups.get_mut("web").unwrap().promoted = true);
    let promoted = harness.run("shop");
    assert_eq!(replaced(&promoted.plan), 4, "{}", harness.render(&promoted.plan));
    assert_eq!(promoted.plan.allocations().count(), 0);
    assert!(harness.live_allocs("shop").iter().all(|alloc| alloc.job_version == 1));

    // A third version whose deployment fails before promotion: its canaries stop, the running set stays.
    harness.register(blue_green("red"));
    let red = harness.run("shop").plan.deployment.clone().unwrap();
    assert_eq!(harness.live_allocs("shop").len(), 8);
    set_deployment(&mut harness, &red.id, |d| d.status = DeploymentStatus::Failed);
    let failed = harness.run("shop");
    let stopped: Vec<_> = failed.plan.stops().map(|stop| stop.description.as_str()).collect();
    assert_eq!(stopped, vec!["canary of a deployment that ended without promoting it"; 4]);
    assert_eq!(failed.plan.allocations().count(), 0, "nothing is replaced after a failure");
    assert!(harness.live_allocs("shop").iter().all(|alloc| alloc.job_version == 1));
}

#[test]
fn a_surge_starts_the_new_allocation_before_the_old_one_stops() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let surge = |marker| {
        with_update(
            marker,
            UpdateSpec {
                max_parallel: None,
                max_surge: Some(CountOrPercent::Count(1)),
                max_unavailable: Some(CountOrPercent::Count(0)),
                ..Default::default()
            },
        )
    };
    harness.register(surge("v0"));
    harness.run("shop");
    report(&mut harness, 0, Some(true), 4);
    harness.register(surge("v1"));
    let result = harness.run("shop");
    assert_eq!(shadows(&result.plan, Shadow::Surge), vec![0]);
    assert_eq!(replaced(&result.plan), 0, "nothing stops before the surge is healthy");
    assert_eq!(harness.run("shop").plan.allocations().count(), 0, "one surge at a time");
    report(&mut harness, 1, Some(true), 1);
    let next = harness.run("shop");
    assert_eq!(replaced(&next.plan), 1, "the healthy surge takes its index: {}", harness.render(&next.plan));
    assert_eq!(shadows(&next.plan, Shadow::Surge), vec![1]);
    assert_eq!(harness.live_allocs("shop").len(), 5, "never more than count + max_surge");
}

#[test]
fn a_revert_rolls_with_the_update_strategy_but_without_canaries() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let canary = |marker| with_update(marker, UpdateSpec { canary: Some(1), max_parallel: Some(2), ..Default::default() });
    harness.register(canary("v0"));
    harness.run("shop");
    report(&mut harness, 0, Some(true), 4);
    // Version 1 is a revert to an older spec (here simply another one): it rolls at once, max_parallel at a time.
    let version = harness.register(canary("v1"));
    let mut job = (**harness.state.job("shop").unwrap()).clone();
    job.revert_of = Some(0);
    harness.state.upsert_job_version(Arc::new(job.clone()));
    harness.state.upsert_job(Arc::new(job));
    let result = harness.run("shop");
    assert_eq!(version, 1);
    assert!(shadows(&result.plan, Shadow::Canary).is_empty(), "{}", harness.render(&result.plan));
    assert_eq!(replaced(&result.plan), 2, "max_parallel 2: {}", harness.render(&result.plan));
    assert_eq!(result.plan.deployment.as_ref().unwrap().groups["web"].desired_canaries, 0);
}

#[test]
fn a_newer_version_stops_the_waiting_canaries_of_the_one_it_supersedes() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let canary = |marker| with_update(marker, UpdateSpec { canary: Some(1), ..Default::default() });
    harness.register(canary("v0"));
    harness.run("shop");
    report(&mut harness, 0, Some(true), 4);
    harness.register(canary("v1"));
    assert_eq!(shadows(&harness.run("shop").plan, Shadow::Canary), vec![0]);
    // v2 has v0's spec (a revert): v0's allocations are updated in place, v1's canary stops in the same plan.
    let mut v2 = canary("v0");
    v2.update = with_update("v0", UpdateSpec { canary: Some(1), ..Default::default() }).update;
    harness.register(v2);
    let result = harness.run("shop");
    let stopped: Vec<_> = result.plan.stops().map(|stop| stop.description.as_str()).collect();
    assert_eq!(stopped, vec!["canary of a deployment that ended without promoting it"], "{}", harness.render(&result.plan));
    assert_eq!(harness.live_allocs("shop").len(), 4);
}
