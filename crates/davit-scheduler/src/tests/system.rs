//! System jobs: one allocation per feasible node, reconciled per node.

use davit_api::objects::{ClientStatus, DesiredStatus, EvalStatus, NodeEligibility, NodeStatus};
use davit_api::spec::{ConstraintOperator as Op, JobSpec, JobType};

use super::{Harness, alloc, constraint, job, node};

/// A system job `agentd` with one group `web` (500 millicores, 256 MiB).
fn system_job() -> JobSpec {
    let mut spec = job("agentd", 1);
    spec.job_type = JobType::System;
    spec
}

/// Live allocations of `agentd` as `name@node`.
fn placed(harness: &Harness) -> Vec<String> {
    let mut placed: Vec<String> = harness.live_allocs("agentd").iter().map(|alloc| format!("{}@{}", alloc.name, alloc.node_id)).collect();
    placed.sort();
    placed
}

#[test]
fn one_allocation_per_feasible_schedulable_node() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 6);
    harness.update_node("n-3", |node| node.datacenter = "dc2".into());
    harness.update_node("n-4", |node| {
        node.attributes.insert("os.name".into(), "windows".into());
    });
    harness.update_node("n-5", |node| node.eligibility = NodeEligibility::Ineligible);
    harness.update_node("n-6", |node| node.status = NodeStatus::Initializing);
    let mut spec = system_job();
    spec.constraints.push(constraint("${attr.os.name}", Op::Equal, "linux"));
    harness.register(spec);

    let result = harness.process("agentd");
    assert_eq!(result.status, EvalStatus::Complete);
    assert_eq!(harness.render(&result.plan), "place agentd.web[0] v0 on n-1\nplace agentd.web[0] v0 on n-2");
    assert_eq!(result.status_description, "placed 2");
    assert!(result.plan.failed_groups.is_empty(), "infeasible nodes are no failure");
    harness.apply(&result.plan);

    let again = harness.process("agentd");
    assert!(again.plan.is_empty(), "{}", harness.render(&again.plan));
    assert_eq!(again.status_description, "no changes");
}

#[test]
fn count_is_not_a_multiplier_and_zero_places_nothing() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(system_job());
    harness.run("agentd");
    assert_eq!(placed(&harness), ["agentd.web[0]@n-1", "agentd.web[0]@n-2"]);

    let mut spec = system_job();
    spec.groups[0].count = 0;
    harness.register(spec);
    let result = harness.run("agentd");
    assert_eq!(result.status_description, "stopped 2");
    assert!(placed(&harness).is_empty());
}

#[test]
fn a_new_node_gets_one_and_a_lost_node_loses_its_own() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(system_job());
    harness.run("agentd");

    harness.add_node(node("n-3"));
    let result = harness.process("agentd");
    assert_eq!(harness.render(&result.plan), "place agentd.web[0] v0 on n-3");
    harness.apply(&result.plan);

    harness.update_node("n-1", |node| node.status = NodeStatus::Down);
    harness.state.remove_node("n-2");
    let result = harness.process("agentd");
    assert_eq!(harness.render(&result.plan), "stop agentd.web[0] on n-1: node down (Lost)\nstop agentd.web[0] on n-2: node down (Lost)");
    assert_eq!(result.status_description, "lost 2");
    harness.apply(&result.plan);
    assert_eq!(placed(&harness), ["agentd.web[0]@n-3"]);

    // Back up: a fresh allocation (the lost one was stopped, so it is no predecessor).
    harness.update_node("n-1", |node| node.status = NodeStatus::Ready);
    let result = harness.process("agentd");
    assert_eq!(harness.render(&result.plan), "place agentd.web[0] v0 on n-1");
}

#[test]
fn ineligible_nodes_keep_their_allocations_but_get_no_new_ones() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(system_job());
    harness.run("agentd");
    harness.update_node("n-1", |node| node.eligibility = NodeEligibility::Ineligible);
    let result = harness.process("agentd");
    assert!(result.plan.is_empty(), "{}", harness.render(&result.plan));

    // Stopped there (by the drainer): not placed again while the node is ineligible.
    let on_n1 = harness.live_allocs("agentd").into_iter().find(|alloc| alloc.node_id == "n-1").unwrap();
    harness.update_alloc(&on_n1.id, |alloc| alloc.desired_status = DesiredStatus::Stop);
    assert!(harness.process("agentd").plan.is_empty());
}

#[test]
fn spec_changes_update_in_place_or_replace_on_the_same_node() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(system_job());
    harness.run("agentd");

    // Only the job's metadata changed: in place.
    let mut spec = system_job();
    spec.meta.insert("owner".into(), "ops".into());
    harness.register(spec.clone());
    let result = harness.process("agentd");
    assert_eq!(harness.render(&result.plan), "update agentd.web[0] on n-1 in place v0->v1\nupdate agentd.web[0] on n-2 in place v0->v1");
    harness.apply(&result.plan);

    // The task's resources changed: a new allocation on each node, replacing the old one there.
    spec.groups[0].tasks[0].resources.memory = 512;
    harness.register(spec);
    let result = harness.process("agentd");
    assert_eq!(
        harness.render(&result.plan),
        "place agentd.web[0] v2 on n-1 replacing agentd.web[0]\nplace agentd.web[0] v2 on n-2 replacing agentd.web[0]\n\
         stop agentd.web[0] on n-1: replaced by version 2\nstop agentd.web[0] on n-2: replaced by version 2"
    );
    assert_eq!(result.status_description, "replaced 2");
    for placed in result.plan.allocations() {
        let previous = harness.state.alloc(placed.previous_allocation.as_deref().unwrap()).unwrap();
        assert_eq!(previous.node_id, placed.node_id, "replaced on its own node");
    }
}

#[test]
fn a_constraint_change_stops_allocations_on_nodes_no_longer_feasible() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(system_job());
    harness.run("agentd");
    let mut spec = system_job();
    spec.constraints.push(constraint("${node.name}", Op::Equal, "n-2"));
    harness.register(spec);
    let result = harness.process("agentd");
    assert_eq!(
        harness.render(&result.plan),
        "update agentd.web[0] on n-2 in place v0->v1\nstop agentd.web[0] on n-1: node no longer feasible: constraint ${node.name} = n-2"
    );
}

#[test]
fn an_exhausted_node_is_reported_and_others_still_get_theirs() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    // n-2 is full with a job of the same priority (nothing to preempt).
    let mut other = job("other", 0);
    other.priority = 50;
    harness.register(other);
    let mut big = alloc("big", "other", "web", 0, 0, "n-2");
    big.resources.memory = 8192;
    harness.add_alloc(big);
    harness.register(system_job());

    let result = harness.process("agentd");
    assert_eq!(
        harness.render(&result.plan),
        "place agentd.web[0] v0 on n-1\nplace agentd.web[0] v0 on n-3\nfailed web: 1 missing, 3 evaluated: memory exhausted on 1 node"
    );
    assert_eq!(result.status_description, "placed 2; group web: 1 not placed (memory exhausted on 1 node)");
}

#[test]
fn a_system_job_preempts_lower_priority_work_on_its_node() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let mut low = job("low", 0);
    low.priority = 20;
    harness.register(low);
    let mut big = alloc("big", "low", "web", 0, 0, "n-2");
    big.resources.cpu = 4000;
    harness.add_alloc(big);
    let mut spec = system_job();
    spec.priority = 70;
    harness.register(spec);

    let result = harness.process("agentd");
    assert_eq!(
        harness.render(&result.plan),
        "place agentd.web[0] v0 on n-1\nplace agentd.web[0] v0 on n-2\n\
         preempt low.web[0] (big) on n-2: preempted by allocation agentd.web[0] of job agentd (priority 70)"
    );
    assert_eq!(result.status_description, "placed 2, preempted 1");
}

#[test]
fn failed_allocations_follow_the_reschedule_policy_on_the_same_node() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let mut spec = system_job();
    spec.groups[0].reschedule = Some(davit_api::spec::ReschedulePolicy {
        attempts: Some(1),
        interval: Some(davit_api::Duration::from_secs(3600)),
        delay: Some(davit_api::Duration::from_millis(5000)),
        delay_function: Some(davit_api::spec::DelayFunction::Constant),
        max_delay: None,
        unlimited: Some(false),
    });
    harness.register(spec);
    harness.run("agentd");
    let failed = harness.live_allocs("agentd").into_iter().find(|alloc| alloc.node_id == "n-1").unwrap();
    let failed_at = harness.now;
    harness.update_alloc(&failed.id, |alloc| {
        alloc.client_status = ClientStatus::Failed;
        alloc.modify_time = failed_at;
    });

    let early = harness.process("agentd");
    assert!(early.plan.is_empty(), "{}", harness.render(&early.plan));
    assert_eq!(early.wait_until(), Some(failed_at + 5000));

    harness.now = failed_at + 5000;
    let result = harness.process("agentd");
    assert_eq!(
        harness.render(&result.plan),
        "place agentd.web[0] v0 on n-1 replacing agentd.web[0]\nstop agentd.web[0] on n-1: rescheduled"
    );
    assert_eq!(result.status_description, "rescheduled 1");
    let replacement = result.plan.allocations().next().unwrap();
    assert_eq!(replacement.reschedule_tracker.len(), 1);
    harness.apply(&result.plan);

    // The one attempt is used up: a second failure stays.
    let replacement_id = replacement.id.clone();
    harness.update_alloc(&replacement_id, |alloc| alloc.client_status = ClientStatus::Failed);
    harness.now += 10_000;
    let result = harness.process("agentd");
    assert!(result.plan.is_empty(), "{}", harness.render(&result.plan));
}

#[test]
fn stopping_the_job_stops_everything() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    harness.register(system_job());
    harness.run("agentd");
    harness.stop_job("agentd");
    let result = harness.run("agentd");
    assert_eq!(result.status_description, "job stopped: stopped 3");
    assert!(placed(&harness).is_empty());
}
