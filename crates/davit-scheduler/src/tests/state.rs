//! `ClusterState`: indexes stay right through updates, snapshots are unaffected by later updates.

use std::sync::Arc;

use davit_api::objects::{AssignedPort, ClientStatus, DesiredStatus, Job};

use super::{alloc, job, node};
use crate::{ClusterState, NodeUsage};

fn ids<'a>(allocs: impl Iterator<Item = &'a Arc<davit_api::objects::Allocation>>) -> Vec<String> {
    allocs.map(|alloc| alloc.id.clone()).collect()
}

#[test]
fn secondary_indexes_follow_updates() {
    let mut state = ClusterState::new();
    state.upsert_alloc(Arc::new(alloc("a1", "shop", "web", 0, 0, "n1")));
    state.upsert_alloc(Arc::new(alloc("a2", "shop", "web", 1, 0, "n2")));
    state.upsert_alloc(Arc::new(alloc("a3", "blog", "web", 0, 0, "n1")));
    assert_eq!(ids(state.allocs_for_job("shop")), ["a1", "a2"]);
    assert_eq!(ids(state.allocs_for_node("n1")), ["a1", "a3"]);

    // Moving an allocation (not something davit does, but the index must not lie).
    state.upsert_alloc(Arc::new(alloc("a1", "shop", "web", 0, 0, "n2")));
    assert_eq!(ids(state.allocs_for_node("n1")), ["a3"]);
    assert_eq!(ids(state.allocs_for_node("n2")), ["a1", "a2"]);

    assert!(state.remove_alloc("a3").is_some());
    assert_eq!(ids(state.allocs_for_node("n1")), Vec::<String>::new());
    assert_eq!(ids(state.allocs_for_job("blog")), Vec::<String>::new());
    assert!(state.remove_alloc("a3").is_none());
    assert_eq!(state.allocs().count(), 2);
}

#[test]
fn jobs_and_versions() {
    let mut state = ClusterState::new();
    for version in 0..3 {
        let job = Arc::new(Job::new(job("shop", version as u32 + 1), version, 0));
        state.upsert_job_version(Arc::clone(&job));
        state.upsert_job(job);
    }
    state.upsert_job_version(Arc::new(Job::new(job("blog", 1), 0, 0)));
    assert_eq!(state.job("shop").map(|job| job.version), Some(2));
    assert_eq!(state.job_version("shop", 1).map(|job| job.spec.groups[0].count), Some(2));
    assert_eq!(state.job_versions("shop").map(|job| job.version).collect::<Vec<_>>(), [0, 1, 2]);

    assert!(state.remove_job_version("shop", 1).is_some());
    assert_eq!(state.job_versions("shop").map(|job| job.version).collect::<Vec<_>>(), [0, 2]);
    state.remove_job_versions("shop");
    assert_eq!(state.job_versions("shop").count(), 0);
    assert!(state.job_version("blog", 0).is_some(), "other jobs keep their versions");
    assert!(state.remove_job("shop").is_some());
    assert_eq!(state.jobs().count(), 0);
}

#[test]
fn node_usage_counts_non_terminal_allocs_only() {
    let mut state = ClusterState::new();
    state.upsert_node(Arc::new(node("n1")));
    let mut with_port = alloc("a1", "shop", "web", 0, 0, "n1");
    with_port.resources.ports = vec![AssignedPort { label: "http".into(), value: 20001, to: 8080 }];
    state.upsert_alloc(Arc::new(with_port));
    state.upsert_alloc(Arc::new(alloc("a2", "shop", "web", 1, 0, "n1")));
    let mut stopping = alloc("a3", "shop", "web", 2, 0, "n1");
    stopping.desired_status = DesiredStatus::Stop;
    state.upsert_alloc(Arc::new(stopping));
    let mut failed = alloc("a4", "shop", "web", 3, 0, "n1");
    failed.client_status = ClientStatus::Failed;
    state.upsert_alloc(Arc::new(failed));

    assert_eq!(state.node_usage("n1"), NodeUsage { cpu: 1000, memory: 512, ports: [20001].into() });
    assert_eq!(state.node_usage("elsewhere"), NodeUsage::default());
}

/// A node id holds its usage slot while a node or an allocation names it; a freed slot is reused empty,
/// and a snapshot taken before keeps its own usage.
#[test]
fn usage_slots_are_released_and_reused_without_leaking_usage() {
    let mut state = ClusterState::new();
    state.upsert_node(Arc::new(node("n1")));
    state.upsert_alloc(Arc::new(alloc("a1", "shop", "web", 0, 0, "n1")));
    let slot = state.usage_slot("n1").unwrap();
    state.remove_node("n1");
    assert_eq!(state.usage_slot("n1"), Some(slot), "its allocation still names it");
    let before = state.clone();
    state.remove_alloc("a1");
    assert_eq!(state.usage_slot("n1"), None);

    state.upsert_node(Arc::new(node("n2")));
    assert_eq!(state.usage_slot("n2"), Some(slot), "the freed slot is reused");
    assert_eq!(state.node_usage("n2"), NodeUsage::default());
    assert_eq!(before.node_usage("n1").memory, 256);

    // An allocation moved to another node frees the old node's slot once nothing else names it.
    state.upsert_alloc(Arc::new(alloc("a2", "shop", "web", 1, 0, "gone")));
    let gone = state.usage_slot("gone").unwrap();
    state.upsert_alloc(Arc::new(alloc("a2", "shop", "web", 1, 0, "n2")));
    assert_eq!(state.usage_slot("gone"), None);
    assert_eq!(state.node_usage("n2").memory, 256);
    state.upsert_node(Arc::new(node("n3")));
    assert_eq!(state.usage_slot("n3"), Some(gone));
    assert_eq!(state.node_usage("n3"), NodeUsage::default());
}

#[test]
fn snapshots_are_unaffected_by_later_updates() {
    let mut state = ClusterState::new();
    state.upsert_node(Arc::new(node("n1")));
    state.upsert_alloc(Arc::new(alloc("a1", "shop", "web", 0, 0, "n1")));
    let snapshot = state.clone();

    state.remove_node("n1");
    state.remove_alloc("a1");
    state.upsert_alloc(Arc::new(alloc("a2", "shop", "web", 1, 0, "n2")));

    assert!(snapshot.node("n1").is_some());
    assert_eq!(ids(snapshot.allocs_for_job("shop")), ["a1"]);
    assert_eq!(ids(state.allocs_for_job("shop")), ["a2"]);
}

/// The incrementally kept node usage equals a recomputation from the allocations after any sequence of
/// placements, moves, stops, failures, restarts and removals.
#[test]
fn live_usage_matches_a_recomputation_after_random_updates() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    let mut rng = SmallRng::seed_from_u64(7);
    let mut state = ClusterState::new();
    let nodes = ["n1", "n2", "n3"];
    for step in 0..2000 {
        let id = format!("a{}", rng.random_range(0..40));
        if rng.random_bool(0.1) {
            state.remove_alloc(&id);
            continue;
        }
        let mut next = alloc(&id, "shop", "web", 0, 0, nodes[rng.random_range(0..nodes.len())]);
        next.resources.cpu = rng.random_range(0..500);
        next.resources.memory = rng.random_range(0..300);
        next.resources.ports = (0..rng.random_range(0..3))
            .map(|_| AssignedPort { label: "p".into(), value: rng.random_range(20000..20010), to: 80 })
            .collect();
        match rng.random_range(0..4) {
            0 => next.desired_status = DesiredStatus::Stop,
            1 => next.client_status = ClientStatus::Failed,
            _ => {}
        }
        state.upsert_alloc(Arc::new(next));
        for node in nodes {
            let mut expected = NodeUsage::default();
            for live in state.allocs_for_node(node).filter(|alloc| !alloc.is_terminal()) {
                expected.cpu += live.resources.cpu;
                expected.memory += live.resources.memory;
                expected.ports.extend(live.resources.ports.iter().map(|port| port.value));
            }
            assert_eq!(state.node_usage(node), expected, "node {node} after step {step}");
        }
    }
}

/// The applier's fit check: live usage minus what leaves plus what arrives, and no arriving port taken twice
/// or reserved.
#[test]
fn fits_after_counts_leaving_and_arriving_allocations_and_ports() {
    let mut state = ClusterState::new();
    let mut small = node("n1");
    small.resources.cpu = 1000;
    small.resources.reserved_ports = vec![22];
    state.upsert_node(Arc::new(small.clone()));
    let mut running = alloc("a1", "shop", "web", 0, 0, "n1");
    running.resources.ports = vec![AssignedPort { label: "http".into(), value: 20001, to: 80 }];
    state.upsert_alloc(Arc::new(running.clone()));
    state.upsert_alloc(Arc::new(alloc("a2", "shop", "web", 1, 0, "n1")));

    let newcomer = alloc("a3", "shop", "web", 2, 0, "n1");
    assert!(!state.fits_after(&small, [], std::slice::from_ref(&newcomer)), "1500 of 1000 millicores");
    assert!(state.fits_after(&small, [&running], std::slice::from_ref(&newcomer)));
    // An in-place update of a1 replaces it: its port is its own.
    assert!(state.fits_after(&small, [&running], std::slice::from_ref(&running)));
    // Ports only: an allocation that asks for no CPU or memory.
    let mut same_port = alloc("a3", "shop", "web", 2, 0, "n1");
    (same_port.resources.cpu, same_port.resources.memory) = (0, 0);
    same_port.resources.ports = running.resources.ports.clone();
    assert!(!state.fits_after(&small, [], std::slice::from_ref(&same_port)), "port 20001 is held by a1");
    assert!(state.fits_after(&small, [&running], std::slice::from_ref(&same_port)), "a1 leaves");
    assert!(!state.fits_after(&small, [&running], &[same_port.clone(), running.clone()]), "port 20001 asked twice");
    same_port.resources.ports[0].value = 22;
    assert!(!state.fits_after(&small, [], std::slice::from_ref(&same_port)), "port 22 is reserved");
}
