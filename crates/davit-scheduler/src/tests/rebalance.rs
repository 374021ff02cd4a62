//! Rebalancing: moves even out node load, one per group per call, and never onto nodes that cannot take them.

use davit_api::objects::{ClientStatus, Migration, MigrationRole, MigrationStatus};
use davit_api::spec::{ConstraintOperator, DriverName};

use super::*;
use crate::{RebalanceConfig, rebalance};

/// `count` running allocations of job `web` (100 millicores, 256 MiB each) on node `a-1`.
fn crowded(count: u32) -> Harness {
    let mut harness = Harness::new();
    harness.add_nodes("a", 1);
    let mut spec = job("web", count);
    spec.groups[0].tasks = vec![task("t", DriverName::Exec, 100, 256)];
    harness.register(spec);
    harness.run("web");
    for alloc in harness.live_allocs("web") {
        harness.update_alloc(&alloc.id, |alloc| alloc.client_status = ClientStatus::Running);
    }
    harness
}

fn apply_moves(harness: &mut Harness, moves: &[crate::RebalanceMove]) {
    for change in moves {
        harness.update_alloc(&change.stop.alloc_id, |alloc| alloc.desired_status = DesiredStatus::Stop);
        let mut replacement = change.replacement.clone();
        replacement.client_status = ClientStatus::Running;
        harness.add_alloc(replacement);
    }
}

fn per_node(harness: &Harness) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for alloc in harness.live_allocs("web") {
        *counts.entry(alloc.node_id.clone()).or_default() += 1;
    }
    counts
}

#[test]
fn a_new_node_gets_its_share_one_move_per_group_per_call() {
    let mut harness = crowded(4);
    harness.add_nodes("b", 1);
    let config = RebalanceConfig { max_moves: 10, ..Default::default() };
    let mut calls = 0;
    loop {
        let moves = rebalance(&harness.state, &config, "rebalance-1", calls, harness.now);
        if moves.is_empty() {
            break;
        }
        assert_eq!(moves.len(), 1, "one move per group per call: {moves:#?}");
        let change = &moves[0];
        assert_eq!((change.from_node_id.as_str(), change.replacement.node_id.as_str()), ("a-1", "b-1"));
        assert_eq!(change.stop.description, "rebalanced to node b-1");
        assert_eq!(change.replacement.previous_allocation.as_deref(), Some(change.stop.alloc_id.as_str()));
        assert_eq!(change.replacement.client_status, ClientStatus::Pending);
        assert!(change.to_load.1 < change.from_load.0, "{change:#?}");
        apply_moves(&mut harness, &moves);
        calls += 1;
        assert!(calls < 10, "rebalancing does not converge");
    }
    assert_eq!(per_node(&harness), BTreeMap::from([("a-1".to_string(), 2), ("b-1".to_string(), 2)]));
    // Names and indexes are kept.
    let mut names: Vec<String> = harness.live_allocs("web").iter().map(|alloc| alloc.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["web.web[0]", "web.web[1]", "web.web[2]", "web.web[3]"]);
}

#[test]
fn balanced_clusters_and_infeasible_destinations_get_no_moves() {
    // Even: 1 and 1 (a move would only swap the gap).
    let mut harness = crowded(2);
    harness.add_nodes("b", 1);
    let moves = rebalance(&harness.state, &RebalanceConfig { max_moves: 5, ..Default::default() }, "r", 1, harness.now);
    assert_eq!(moves.len(), 1);
    apply_moves(&mut harness, &moves);
    assert!(rebalance(&harness.state, &RebalanceConfig { max_moves: 5, ..Default::default() }, "r", 2, harness.now).is_empty());

    // The empty node lacks the driver, or violates a constraint: nothing moves.
    let mut harness = crowded(4);
    let mut no_driver = node("b-1");
    no_driver.drivers.clear();
    harness.add_node(no_driver);
    assert!(rebalance(&harness.state, &RebalanceConfig::default(), "r", 1, harness.now).is_empty());

    let mut harness = crowded(4);
    let mut spec = harness.state.job("web").unwrap().spec.clone();
    spec.groups[0].constraints.push(constraint("${node.name}", ConstraintOperator::Equal, "node-a-1"));
    let version = harness.state.job("web").unwrap().version;
    let job = Arc::new(Job::new(spec, version, 0));
    harness.state.upsert_job_version(Arc::clone(&job));
    harness.state.upsert_job(job);
    harness.add_nodes("b", 1);
    assert!(rebalance(&harness.state, &RebalanceConfig::default(), "r", 1, harness.now).is_empty());

    // Running, but in a live migration: as its source, or as a destination the guest has not reached yet.
    for (position, alloc) in harness.live_allocs("web").into_iter().enumerate() {
        let role = if position % 2 == 0 { MigrationRole::Source } else { MigrationRole::Destination };
        harness.update_alloc(&alloc.id, |alloc| {
            alloc.client_status = ClientStatus::Running;
            alloc.migration = Some(Box::new(Migration {
                role,
                peer_alloc_id: "peer".to_string(),
                peer_node_id: "b-1".to_string(),
                status: MigrationStatus::Listening,
                listen_addrs: BTreeMap::new(),
                description: String::new(),
                report: None,
                started_at: 0,
            }));
        });
    }
    assert!(rebalance(&harness.state, &RebalanceConfig::default(), "r", 1, harness.now).is_empty());
}

#[test]
fn only_running_service_allocations_move() {
    let mut harness = crowded(4);
    for alloc in harness.live_allocs("web") {
        harness.update_alloc(&alloc.id, |alloc| alloc.client_status = ClientStatus::Pending);
    }
    harness.add_nodes("b", 1);
    assert!(rebalance(&harness.state, &RebalanceConfig::default(), "r", 1, harness.now).is_empty());
}

/// A move must keep the required placement rules, as the plan applier would check them: a destination that
/// runs an allocation the group must stay away from is no destination.
#[test]
fn moves_keep_required_anti_affinities() {
    let arrange = |required_away_from_db: bool| {
        let mut harness = crowded(4);
        harness.add_nodes("b", 1);
        harness.register(job("db", 1));
        harness.add_alloc(alloc("db0", "db", "web", 0, 0, "b-1"));
        if required_away_from_db {
            let mut spec = harness.state.job("web").unwrap().spec.clone();
            spec.groups[0].anti_affinities =
                vec![davit_api::spec::AllocAffinity { job: Some("db".into()), required: true, ..Default::default() }];
            let version = harness.state.job("web").unwrap().version;
            let job = Arc::new(Job::new(spec, version, 0));
            harness.state.upsert_job_version(Arc::clone(&job));
            harness.state.upsert_job(job);
        }
        rebalance(&harness.state, &RebalanceConfig { max_moves: 5, ..Default::default() }, "r", 1, harness.now)
    };
    let free = arrange(false);
    assert!(free.iter().any(|change| change.replacement.job_name == "web" && change.replacement.node_id == "b-1"), "{free:#?}");
    let kept_away = arrange(true);
    assert!(kept_away.iter().all(|change| change.replacement.job_name != "web"), "{kept_away:#?}");
}
