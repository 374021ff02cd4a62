//! Reconciliation scenarios: scaling, stopping, updates, lost nodes, terminal allocations.

use std::sync::Arc;

use davit_api::objects::{ClientStatus, DesiredStatus, NodeStatus};
use davit_api::spec::{ConstraintOperator as Op, JobType};

use super::{Harness, alloc, constraint, group, job, node};

/// A harness with one node, `n-1`, so that plans render in a fixed order.
fn one_node() -> Harness {
    let mut harness = Harness::new();
    harness.add_node(node("n-1"));
    harness
}

#[test]
fn placing_then_nothing_to_do() {
    let mut harness = one_node();
    harness.register(job("shop", 3));
    let result = harness.process("shop");
    assert_eq!(harness.render(&result.plan), "place shop.web[0] v0 on n-1\nplace shop.web[1] v0 on n-1\nplace shop.web[2] v0 on n-1");
    harness.apply(&result.plan);
    assert_eq!(result.status_description, "placed 3");
    let again = harness.process("shop");
    assert!(again.plan.is_empty(), "{}", harness.render(&again.plan));
    assert_eq!(again.status_description, "no changes");
}

#[test]
fn scale_up_then_down_stops_highest_indexes_first() {
    let mut harness = one_node();
    harness.register(job("shop", 3));
    harness.run("shop");

    harness.register(job("shop", 5));
    let result = harness.process("shop");
    assert_eq!(
        harness.render(&result.plan),
        "update shop.web[0] on n-1 in place v0->v1\nupdate shop.web[1] on n-1 in place v0->v1\nupdate shop.web[2] on n-1 in place v0->v1\n\
         place shop.web[3] v1 on n-1\nplace shop.web[4] v1 on n-1"
    );
    harness.apply(&result.plan);

    harness.register(job("shop", 2));
    let result = harness.process("shop");
    assert_eq!(
        harness.render(&result.plan),
        "update shop.web[0] on n-1 in place v1->v2\nupdate shop.web[1] on n-1 in place v1->v2\n\
         stop shop.web[4] on n-1: not needed: count is 2\nstop shop.web[3] on n-1: not needed: count is 2\nstop shop.web[2] on n-1: not needed: count is 2"
    );
    assert_eq!(result.status_description, "updated in place 2, stopped 3");
}

#[test]
fn missing_indexes_are_filled_lowest_first() {
    let mut harness = one_node();
    harness.register(job("shop", 3));
    for index in [0, 2, 5] {
        harness.add_alloc(alloc(&format!("a{index}"), "shop", "web", index, 0, "n-1"));
    }
    let plan = harness.process("shop").plan;
    assert_eq!(harness.render(&plan), "place shop.web[1] v0 on n-1\nstop shop.web[5] on n-1: not needed: count is 3");
}

#[test]
fn stopped_or_missing_job_stops_every_live_allocation() {
    for purge in [false, true] {
        let mut harness = one_node();
        harness.register(job("shop", 2));
        harness.run("shop");
        let mut failed = alloc("old-failed", "shop", "web", 7, 0, "n-1");
        failed.client_status = ClientStatus::Failed;
        harness.add_alloc(failed);
        if purge {
            harness.state.remove_job("shop");
        } else {
            harness.stop_job("shop");
        }
        let result = harness.process("shop");
        assert_eq!(
            harness.render(&result.plan),
            "stop shop.web[0] on n-1: job stopped\nstop shop.web[1] on n-1: job stopped",
            "purge {purge}"
        );
        assert_eq!(result.status_description, "job stopped: stopped 2");
    }
}

#[test]
fn removed_group_is_stopped() {
    let mut harness = one_node();
    let mut spec = job("shop", 1);
    spec.groups.push(group("db", 1));
    harness.register(spec);
    harness.run("shop");
    harness.register(job("shop", 1));
    let plan = harness.process("shop").plan;
    assert_eq!(harness.render(&plan), "update shop.web[0] on n-1 in place v0->v1\nstop shop.db[0] on n-1: group removed from job");
}

/// Which changes keep allocations (in place) and which replace them.
#[test]
fn in_place_versus_destructive_updates() {
    type Change = fn(&mut davit_api::spec::JobSpec);
    let cases: &[(&str, Change, bool)] = &[
        ("count", |spec| spec.groups[0].count = 2, true),
        (
            "job meta",
            |spec| {
                spec.meta.insert("owner".into(), "team-a".into());
            },
            true,
        ),
        (
            "group services",
            |spec| {
                spec.groups[0].services.push(davit_api::spec::ServiceSpec {
                    name: "web".into(),
                    port: "http".into(),
                    tags: vec!["v2".into()],
                    weight: 1,
                    algorithm: davit_api::spec::BalanceAlgorithm::LeastConnections,
                    hash_on: None,
                    mode: davit_api::spec::ServiceMode::Http,
                    local_port: Some(9000),
                });
            },
            true,
        ),
        ("job constraint the node still meets", |spec| spec.constraints.push(constraint("${attr.os.name}", Op::Equal, "linux")), true),
        (
            "task env",
            |spec| {
                spec.groups[0].tasks[0].env.insert("MODE".into(), "prod".into());
            },
            false,
        ),
        ("task resources", |spec| spec.groups[0].tasks[0].resources.memory = 512, false),
        ("group constraint", |spec| spec.groups[0].constraints.push(constraint("${attr.os.name}", Op::Equal, "linux")), false),
        // `NODE` stands for the name of the node the allocation runs on.
        ("job constraint the node no longer meets", |spec| spec.constraints.push(constraint("${node.name}", Op::NotEqual, "NODE")), false),
    ];
    for (name, change, in_place) in cases {
        let mut harness = Harness::new();
        harness.add_nodes("n", 2);
        harness.register(job("shop", 1));
        harness.run("shop");
        let old = Arc::clone(&harness.live_allocs("shop")[0]);
        let mut spec = job("shop", 1);
        change(&mut spec);
        for constraint in &mut spec.constraints {
            constraint.value = constraint.value.replace("NODE", &old.node_name);
        }
        harness.register(spec);
        harness.now = 99_000;
        let plan = harness.process("shop").plan;
        let updated: Vec<_> = plan.allocations().filter(|alloc| alloc.index == 0).collect();
        assert_eq!(updated.len(), 1, "{name}: {}", harness.render(&plan));
        let new = updated[0];
        assert_eq!(new.job_version, 1, "{name}");
        assert_eq!(new.eval_id, "eval-2", "{name}");
        assert_eq!(new.modify_time, 99_000, "{name}");
        if *in_place {
            assert_eq!(new.id, old.id, "{name}: same allocation");
            assert_eq!((&new.node_id, &new.resources, new.create_time), (&old.node_id, &old.resources, old.create_time), "{name}");
            assert_eq!(plan.stops().count(), 0, "{name}");
        } else {
            assert_ne!(new.id, old.id, "{name}: a new allocation");
            assert_eq!(new.previous_allocation.as_deref(), Some(old.id.as_str()), "{name}");
            let stops: Vec<_> = plan.stops().map(|stop| (stop.alloc_id.as_str(), stop.description.as_str(), stop.client_status)).collect();
            assert_eq!(stops, [(old.id.as_str(), "replaced by version 1", None)], "{name}");
        }
    }
}

#[test]
fn destructive_update_without_room_keeps_the_old_allocation() {
    let mut harness = one_node();
    harness.register(job("shop", 1));
    harness.run("shop");
    let mut spec = job("shop", 1);
    spec.groups[0].tasks[0].resources.memory = 9000;
    harness.register(spec);
    let result = harness.process("shop");
    assert_eq!(harness.render(&result.plan), "failed web: 1 missing, 1 evaluated: memory exhausted on 1 node");
    assert_eq!(result.status_description, "no changes; group web: 1 not placed (memory exhausted on 1 node)");
}

#[test]
fn allocations_on_down_or_gone_nodes_are_lost_and_replaced() {
    for gone in [false, true] {
        let mut harness = Harness::new();
        harness.add_nodes("n", 2);
        harness.register(job("shop", 3));
        harness.add_alloc(alloc("a0", "shop", "web", 0, 0, "n-1"));
        harness.add_alloc(alloc("a1", "shop", "web", 1, 0, "n-2"));
        harness.add_alloc(alloc("a2", "shop", "web", 2, 0, "n-2"));
        if gone {
            harness.state.remove_node("n-2");
        } else {
            harness.update_node("n-2", |node| node.status = NodeStatus::Down);
        }
        let result = harness.process("shop");
        assert_eq!(
            harness.render(&result.plan),
            "place shop.web[1] v0 on n-1 replacing shop.web[1]\nplace shop.web[2] v0 on n-1 replacing shop.web[2]\n\
             stop shop.web[1] on n-2: node down (Lost)\nstop shop.web[2] on n-2: node down (Lost)",
            "gone {gone}"
        );
        assert_eq!(result.status_description, "placed 2, lost 2");
        let previous: Vec<_> = result.plan.allocations().map(|alloc| alloc.previous_allocation.clone().unwrap()).collect();
        assert_eq!(previous, ["a1", "a2"]);
    }
}

#[test]
fn lost_allocations_beyond_count_are_not_replaced() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(job("shop", 1));
    harness.add_alloc(alloc("a0", "shop", "web", 0, 0, "n-1"));
    harness.add_alloc(alloc("a1", "shop", "web", 1, 0, "n-2"));
    harness.update_node("n-2", |node| node.status = NodeStatus::Down);
    let plan = harness.process("shop").plan;
    assert_eq!(harness.render(&plan), "stop shop.web[1] on n-2: node down (Lost)");
}

/// Allocations that ended on the client (desired still `run`): which are replaced.
#[test]
fn terminal_allocations() {
    // (job type, client status, allocation's version, replaced)
    let cases = [
        (JobType::Batch, ClientStatus::Complete, 1, false),
        (JobType::Batch, ClientStatus::Complete, 0, false),
        (JobType::Service, ClientStatus::Complete, 1, true),
        (JobType::Service, ClientStatus::Failed, 1, false),
        (JobType::Batch, ClientStatus::Failed, 1, false),
        (JobType::Service, ClientStatus::Failed, 0, true),
        (JobType::Batch, ClientStatus::Lost, 1, true),
    ];
    for (job_type, client_status, version, replaced) in cases {
        let mut harness = one_node();
        let mut spec = job("shop", 1);
        spec.job_type = job_type;
        harness.register(spec.clone());
        spec.groups[0].tasks[0].env.insert("V".into(), "1".into());
        harness.register(spec);
        let mut ended = alloc("ended", "shop", "web", 0, version, "n-1");
        ended.client_status = client_status;
        harness.add_alloc(ended);
        let plan = harness.process("shop").plan;
        let expected = if replaced { "place shop.web[0] v1 on n-1 replacing shop.web[0]" } else { "" };
        assert_eq!(harness.render(&plan), expected, "{job_type:?} {client_status:?} v{version}");
    }
}

#[test]
fn a_completed_service_allocation_is_replaced_after_each_completion() {
    let mut harness = one_node();
    harness.register(job("shop", 1));
    for round in 0..3 {
        let result = harness.run("shop");
        assert_eq!(result.status_description, "placed 1", "round {round}");
        let live = harness.live_allocs("shop");
        assert_eq!(live.len(), 1);
        harness.update_alloc(&live[0].id.clone(), |alloc| alloc.client_status = ClientStatus::Complete);
    }
    let completed = harness.state.allocs_for_job("shop").filter(|alloc| alloc.client_status == ClientStatus::Complete).count();
    assert_eq!(completed, 3);
}

#[test]
fn duplicate_indexes_keep_the_oldest() {
    let mut harness = one_node();
    harness.register(job("shop", 1));
    let mut older = alloc("older", "shop", "web", 0, 0, "n-1");
    older.create_time = 5;
    let mut newer = alloc("newer", "shop", "web", 0, 0, "n-1");
    newer.create_time = 9;
    harness.add_alloc(newer);
    harness.add_alloc(older);
    let plan = harness.process("shop").plan;
    let stops: Vec<_> = plan.stops().map(|stop| (stop.alloc_id.as_str(), stop.description.as_str())).collect();
    assert_eq!(stops, [("newer", "duplicate of index 0")]);
    assert_eq!(plan.allocations().count(), 0);
}

#[test]
fn stopped_allocations_are_ignored() {
    let mut harness = one_node();
    harness.register(job("shop", 1));
    let mut stopping = alloc("stopping", "shop", "web", 0, 0, "n-1");
    stopping.desired_status = DesiredStatus::Stop;
    harness.add_alloc(stopping);
    let plan = harness.process("shop").plan;
    assert_eq!(harness.render(&plan), "place shop.web[0] v0 on n-1");
    assert_eq!(plan.allocations().next().unwrap().previous_allocation, None);
}

/// A node drain: the server stops an allocation on an ineligible node while its process still runs.
/// The replacement is placed at the same index right away, on another node (never the ineligible one),
/// and the stopping allocation's resources are already free.
#[test]
fn an_allocation_stopped_for_a_drain_is_replaced_elsewhere_while_it_still_runs() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(job("shop", 2));
    harness.add_alloc(alloc("a0", "shop", "web", 0, 0, "n-1"));
    harness.add_alloc(alloc("a1", "shop", "web", 1, 0, "n-1"));
    harness.update_node("n-1", |node| node.eligibility = davit_api::objects::NodeEligibility::Ineligible);

    // Ineligible only: nothing moves.
    let plan = harness.process("shop").plan;
    assert!(plan.is_empty(), "{}", harness.render(&plan));

    harness.update_alloc("a0", |alloc| {
        alloc.desired_status = DesiredStatus::Stop;
        alloc.desired_description = "node drain".to_string();
        alloc.client_status = ClientStatus::Running;
    });
    let result = harness.run("shop");
    assert_eq!(result.status_description, "placed 1");
    let placed: Vec<_> = harness.live_allocs("shop").iter().map(|alloc| (alloc.index, alloc.node_id.clone())).collect();
    assert_eq!(placed, [(0, "n-2".to_string()), (1, "n-1".to_string())]);

    // The old allocation finishing stopping changes nothing.
    harness.update_alloc("a0", |alloc| alloc.client_status = ClientStatus::Complete);
    let plan = harness.process("shop").plan;
    assert!(plan.is_empty(), "{}", harness.render(&plan));
}

/// With no other node to go to, the replacement of a drained allocation waits (blocked), and the
/// ineligible node is not used even though it has room.
#[test]
fn a_drained_allocation_is_never_replaced_on_the_ineligible_node() {
    let mut harness = one_node();
    harness.register(job("shop", 1));
    harness.add_alloc(alloc("a0", "shop", "web", 0, 0, "n-1"));
    harness.update_node("n-1", |node| node.eligibility = davit_api::objects::NodeEligibility::Ineligible);
    harness.update_alloc("a0", |alloc| {
        alloc.desired_status = DesiredStatus::Stop;
        alloc.desired_description = "node drain".to_string();
    });
    let plan = harness.process("shop").plan;
    assert_eq!(harness.render(&plan), "failed web: 1 missing, 0 evaluated: no ready nodes in the job's datacenters");
}

/// `disconnect.lost_after`: a down node's allocation keeps its index (no stop, no replacement) until its
/// node's last heartbeat + lost_after, with a follow-up then; after that it is lost and replaced.
/// `replace: false`: it waits for its node however long.
#[test]
fn disconnected_allocations_are_held_for_lost_after_or_for_good() {
    // (lost_after, replace, down for, plan, follow-up after the last heartbeat)
    let replaced = "place shop.web[0] v0 on n-1 replacing shop.web[0]";
    let lost = "place shop.web[0] v0 on n-1 replacing shop.web[0]\nstop shop.web[0] on n-2: node down (Lost)";
    for (lost_after_s, replace, down_for_s, plan, follow_up) in
        [(60, true, 10, replaced, Some(60)), (60, true, 61, lost, None), (0, false, 3600, "", None)]
    {
        let mut harness = Harness::new();
        harness.now = 10_000_000;
        harness.add_nodes("n", 2);
        let mut spec = job("shop", 1);
        spec.groups[0].disconnect = Some(davit_api::spec::DisconnectSpec {
            lost_after: (lost_after_s > 0).then(|| davit_api::Duration::from_secs(lost_after_s)),
            replace,
            ..Default::default()
        });
        harness.register(spec);
        harness.add_alloc(alloc("a0", "shop", "web", 0, 0, "n-2"));
        let last_heartbeat = harness.now - down_for_s * 1000;
        harness.update_node("n-2", |node| {
            node.status = NodeStatus::Down;
            node.last_heartbeat = last_heartbeat;
        });
        let result = harness.process("shop");
        let case = format!("lost_after {lost_after_s}s replace {replace}, down {down_for_s}s");
        assert_eq!(harness.render(&result.plan), plan, "{case}");
        let expected = follow_up.map(|after_s: u64| last_heartbeat + after_s * 1000);
        assert_eq!(result.follow_ups.get("web").copied(), expected, "{case}");
        if plan == replaced {
            // The next evaluation during the partition leaves both alone: the replacement holds the index, the
            // disconnected one waits for its node.
            harness.apply(&result.plan);
            let again = harness.process("shop");
            assert_eq!(harness.render(&again.plan), "", "{case}");
        }
    }
}

/// A disconnected allocation whose node comes back within `lost_after` runs beside its replacement:
/// `disconnect.reconcile` picks the one that stays.
#[test]
fn a_reconnected_allocation_and_its_replacement_are_reconciled_by_the_group_strategy() {
    use davit_api::spec::ReconcileStrategy::*;
    // The original runs on n-2 since t=1000; the replacement on n-1 since t=5000, and n-1 is fuller (binpack
    // ranks it higher).
    for (strategy, stopped) in [
        (Some(KeepOriginal), "replacement on n-1"),
        (Some(KeepReplacement), "original on n-2"),
        (Some(LongestRunning), "replacement on n-1"),
        (Some(BestScore), "original on n-2"),
        (None, "original on n-2"),
    ] {
        let mut harness = Harness::new();
        harness.now = 10_000_000;
        harness.add_nodes("n", 2);
        let mut spec = job("shop", 1);
        spec.groups[0].disconnect = Some(davit_api::spec::DisconnectSpec {
            lost_after: Some(davit_api::Duration::from_secs(600)),
            reconcile: strategy,
            ..Default::default()
        });
        harness.register(spec);
        let started = |alloc: &mut davit_api::objects::Allocation, at: u64| {
            let state = davit_api::objects::TaskState { started_at: Some(at), ..Default::default() };
            alloc.task_states.insert("main".to_string(), state);
        };
        let mut original = alloc("original", "shop", "web", 0, 0, "n-2");
        (original.create_time, original.create_index) = (1000, 10);
        started(&mut original, 1000);
        let mut replacement = alloc("replacement", "shop", "web", 0, 0, "n-1");
        (replacement.create_time, replacement.create_index) = (5000, 20);
        replacement.previous_allocation = Some("original".to_string());
        started(&mut replacement, 5000);
        harness.add_alloc(original);
        harness.add_alloc(replacement);
        harness.add_alloc(alloc("other", "db", "g", 0, 0, "n-1"));
        let result = harness.process("shop");
        let strategy_name = strategy.unwrap_or_default().as_str();
        let node = stopped.rsplit(' ').next().unwrap();
        assert_eq!(
            harness.render(&result.plan),
            format!("stop shop.web[0] on {node}: duplicate of index 0 (disconnect.reconcile: {strategy_name})"),
            "{strategy_name} stops the {stopped}"
        );
    }
}

/// An allocation held on a down node (`disconnect:`) does not take its index from a live duplicate on a
/// reachable node: the live one stays, the held one is the duplicate.
#[test]
fn a_held_allocation_does_not_push_out_a_live_duplicate() {
    let mut harness = Harness::new();
    harness.now = 10_000_000;
    harness.add_nodes("n", 2);
    let mut spec = job("shop", 1);
    spec.groups[0].disconnect = Some(davit_api::spec::DisconnectSpec { replace: false, ..Default::default() });
    harness.register(spec);
    harness.add_alloc(alloc("held", "shop", "web", 0, 0, "n-2"));
    harness.add_alloc(alloc("live", "shop", "web", 0, 0, "n-1"));
    harness.update_node("n-2", |node| node.status = NodeStatus::Down);
    let result = harness.process("shop");
    assert_eq!(harness.render(&result.plan), "stop shop.web[0] on n-2: node down (Lost)");
}
