//! Placement: feasibility filters, fit, ports, bin-packing, failure reasons, determinism.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;

use davit_api::objects::{NodeEligibility, NodeStatus, PlacementFailure};
use davit_api::spec::{ConstraintOperator as Op, DriverName};

use super::{Harness, alloc, constraint, job, node, port, task};
use crate::rank::{Capacity, bin_pack_score};

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(key, count)| (key.to_string(), *count)).collect()
}

/// One node, one allocation to place: either it lands, or the group fails with exactly one filter reason.
#[test]
fn feasibility_filters() {
    type Arrange = fn(&mut davit_api::objects::Node, &mut davit_api::spec::JobSpec);
    let cases: &[(&str, Arrange, Option<&str>)] = &[
        ("plain", |_, _| {}, None),
        ("datacenter", |node, _| node.datacenter = "dc2".into(), Some("datacenter dc2 not in job")),
        (
            "second datacenter",
            |node, job| {
                node.datacenter = "dc2".into();
                job.datacenters.push("dc2".into());
            },
            None,
        ),
        ("missing driver", |_, job| job.groups[0].tasks.push(task("guest", DriverName::Vm, 100, 64)), Some("missing driver vm")),
        (
            "undetected driver",
            |node, job| {
                node.drivers.insert("vm".into(), Default::default());
                job.groups[0].tasks[0].driver = DriverName::Vm;
            },
            Some("missing driver vm"),
        ),
        ("unhealthy driver", |node, _| node.drivers.get_mut("exec").unwrap().healthy = false, Some("unhealthy driver exec")),
        (
            "job constraint",
            |_, job| job.constraints.push(constraint("${node.cpu.arch}", Op::Equal, "arm64")),
            Some("constraint ${node.cpu.arch} = arm64"),
        ),
        (
            "group constraint",
            |_, job| job.groups[0].constraints.push(constraint("${attr.os.name}", Op::NotEqual, "linux")),
            Some("constraint ${attr.os.name} != linux"),
        ),
        (
            "job before group constraint",
            |_, job| {
                job.constraints.push(constraint("${attr.os.name}", Op::Equal, "windows"));
                job.groups[0].constraints.push(constraint("${attr.cpu.arch}", Op::Equal, "arm64"));
            },
            Some("constraint ${attr.os.name} = windows"),
        ),
        (
            "missing attribute",
            |_, job| job.constraints.push(constraint("${attr.gpu}", Op::Equal, "true")),
            Some("constraint ${attr.gpu} = true"),
        ),
        ("missing attribute, is_not_set", |_, job| job.constraints.push(constraint("${attr.gpu}", Op::IsNotSet, "")), None),
        ("passing constraint", |_, job| job.constraints.push(constraint("${attr.cpu.arch}", Op::Regexp, "^x86")), None),
        (
            "node-specific constraint",
            |_, job| job.constraints.push(constraint("${node.unique.name}", Op::Equal, "other")),
            Some("constraint ${node.unique.name} = other"),
        ),
    ];
    for (name, arrange, expected_reason) in cases {
        let mut harness = Harness::new();
        let mut node = node("n-1");
        let mut spec = job("shop", 1);
        arrange(&mut node, &mut spec);
        harness.add_node(node);
        harness.register(spec);
        let plan = harness.process("shop").plan;
        match expected_reason {
            None => {
                assert_eq!(plan.allocations().count(), 1, "{name}: expected a placement, got {:?}", plan.failed_groups);
                assert!(plan.failed_groups.is_empty(), "{name}");
            }
            Some(reason) => {
                let failure = &plan.failed_groups["web"];
                let expected = PlacementFailure {
                    missing: 1,
                    nodes_evaluated: 1,
                    filtered: counts(&[(reason, 1)]),
                    exhausted: BTreeMap::new(),
                    quota: None,
                };
                assert_eq!(failure, &expected, "{name}");
                assert_eq!(plan.allocations().count(), 0, "{name}");
            }
        }
    }
}

#[test]
fn unschedulable_nodes_are_not_evaluated() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    harness.update_node("n-1", |node| node.status = NodeStatus::Down);
    harness.update_node("n-2", |node| node.status = NodeStatus::Initializing);
    harness.update_node("n-3", |node| node.eligibility = NodeEligibility::Ineligible);
    harness.register(job("shop", 1));
    let result = harness.process("shop");
    let failure = &result.plan.failed_groups["web"];
    assert_eq!(failure.nodes_evaluated, 0);
    assert_eq!(failure.summary(), "no ready nodes in the job's datacenters");
    assert_eq!(result.status_description, "no changes; group web: 1 not placed (no ready nodes in the job's datacenters)");
}

/// Exhaustion by dimension, with counts, the summary text and the evaluation's description.
#[test]
fn exhaustion_reasons_and_summary() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 4);
    for id in ["n-1", "n-2", "n-3"] {
        harness.update_node(id, |node| node.resources.memory = 1024);
    }
    harness.update_node("n-4", |node| {
        node.attributes.insert("cpu.arch".into(), "arm64".into());
    });
    let mut spec = job("shop", 3);
    spec.constraints.push(constraint("${attr.cpu.arch}", Op::Equal, "x86_64"));
    spec.groups[0].tasks[0].resources.memory = 2048;
    harness.register(spec);

    let result = harness.process("shop");
    let failure = &result.plan.failed_groups["web"];
    assert_eq!(failure.missing, 3, "the later placements are coalesced into the first failure");
    assert_eq!(failure.nodes_evaluated, 4);
    assert_eq!(failure.exhausted, counts(&[("memory", 3)]));
    assert_eq!(failure.summary(), "memory exhausted on 3 nodes, constraint ${attr.cpu.arch} = x86_64 filtered 1 node");
    assert_eq!(
        result.status_description,
        "no changes; group web: 3 not placed (memory exhausted on 3 nodes, constraint ${attr.cpu.arch} = x86_64 filtered 1 node)"
    );
}

#[test]
fn each_dimension_exhausts() {
    // (dimension, cpu, memory, existing allocs' usage fills the node in that dimension)
    for dimension in ["cpu", "memory", "ports"] {
        let mut harness = Harness::new();
        harness.add_nodes("n", 2);
        let mut spec = job("shop", 1);
        match dimension {
            "cpu" => spec.groups[0].tasks[0].resources.cpu = 3800,
            "memory" => spec.groups[0].tasks[0].resources.memory = 8000,
            _ => spec.groups[0].network.ports.push(port("http", Some(20500), None)),
        }
        // Each node already runs something that leaves too little.
        for (number, id) in ["n-1", "n-2"].into_iter().enumerate() {
            let mut existing = alloc(&format!("other-{number}"), "other", "web", number as u32, 0, id);
            existing.resources.ports = vec![davit_api::objects::AssignedPort { label: "x".into(), value: 20500, to: 20500 }];
            harness.add_alloc(existing);
        }
        harness.register(spec);
        let plan = harness.process("shop").plan;
        assert_eq!(plan.failed_groups["web"].exhausted, counts(&[(dimension, 2)]), "{dimension}");
        assert_eq!(plan.failed_groups["web"].summary(), format!("{dimension} exhausted on 2 nodes"));
    }
}

#[test]
fn stops_in_the_same_plan_free_capacity() {
    let mut harness = Harness::new();
    harness.add_node(node("n-1"));
    let mut spec = job("shop", 1);
    spec.groups[0].tasks[0].resources.memory = 6000;
    harness.register(spec.clone());
    harness.run("shop");
    // A new version that needs the whole node: the old allocation's memory is free once it is stopped.
    spec.groups[0].tasks[0].resources.memory = 8192;
    harness.register(spec);
    let plan = harness.process("shop").plan;
    assert!(plan.failed_groups.is_empty(), "{:?}", plan.failed_groups);
    assert_eq!(harness.render(&plan), "place shop.web[0] v1 on n-1 replacing shop.web[0]\nstop shop.web[0] on n-1: replaced by version 1");
}

#[test]
fn static_ports_are_unique_per_node() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.update_node("n-2", |node| node.resources.reserved_ports = vec![8080]);
    let mut spec = job("shop", 3);
    spec.groups[0].network.ports.push(port("http", Some(8080), Some(80)));
    harness.register(spec);
    let plan = harness.process("shop").plan;
    let placed: Vec<_> = plan.allocations().collect();
    assert_eq!(placed.len(), 1, "one node has 8080 reserved, the other can hold one allocation");
    assert_eq!(placed[0].node_id, "n-1");
    assert_eq!(placed[0].resources.ports, vec![davit_api::objects::AssignedPort { label: "http".into(), value: 8080, to: 80 }]);
    let failure = &plan.failed_groups["web"];
    assert_eq!((failure.missing, failure.exhausted.clone()), (2, counts(&[("ports", 2)])));
}

#[test]
fn dynamic_ports_are_unique_per_node_across_plans() {
    let mut harness = Harness::new();
    harness.add_node(node("n-1"));
    harness.update_node("n-1", |node| {
        node.resources.port_range = (20000, 20011);
        node.resources.reserved_ports = vec![20003, 20007];
    });
    // 10 free ports; allocations need two each (one with a fixed `to`), placed in two rounds.
    let mut spec = job("shop", 2);
    spec.groups[0].tasks[0].resources = davit_api::spec::Resources { cpu: 10, memory: 10 };
    spec.groups[0].network.ports = vec![port("http", None, Some(8080)), port("admin", None, None)];
    harness.register(spec.clone());
    harness.run("shop");
    spec.groups[0].count = 5;
    harness.register(spec.clone());
    let result = harness.run("shop");
    assert!(result.plan.failed_groups.is_empty(), "{:?}", result.plan.failed_groups);

    let allocs = harness.live_allocs("shop");
    assert_eq!(allocs.len(), 5);
    let ports: Vec<u16> = allocs.iter().flat_map(|alloc| alloc.resources.ports.iter().map(|port| port.value)).collect();
    let unique: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), 10, "ports {ports:?}");
    assert!(unique.iter().all(|port| (20000..=20011).contains(port) && *port != 20003 && *port != 20007), "{ports:?}");
    for alloc in &allocs {
        let http = alloc.resources.ports.iter().find(|port| port.label == "http").unwrap();
        let admin = alloc.resources.ports.iter().find(|port| port.label == "admin").unwrap();
        assert_eq!((http.to, admin.to), (8080, admin.value), "`to` defaults to the host port");
    }

    // The range is full now: one more allocation does not fit.
    spec.groups[0].count = 6;
    harness.register(spec);
    let failure = &harness.process("shop").plan.failed_groups["web"];
    assert_eq!(failure.exhausted, counts(&[("ports", 1)]));
}

#[test]
fn bin_packing_prefers_the_fuller_node() {
    for seed in 0..8 {
        let mut harness = Harness::new();
        harness.seed = seed;
        harness.add_nodes("n", 3);
        harness.add_alloc(alloc("busy", "other", "web", 0, 0, "n-2"));
        harness.register(job("shop", 1));
        let plan = harness.process("shop").plan;
        assert_eq!(plan.allocations().map(|alloc| alloc.node_id.as_str()).collect::<Vec<_>>(), ["n-2"], "seed {seed}");
    }
}

/// Bin-packing fills one node before the next across jobs; the replicas of one group still spread over
/// nodes (the job anti-affinity penalty, as Nomad's).
#[test]
fn bin_packing_fills_one_node_before_the_next() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    // 4 cores per node, 1 core per allocation: 4 fit on one node.
    for number in 0..6 {
        let mut spec = job(&format!("shop-{number}"), 1);
        spec.groups[0].tasks[0].resources.cpu = 1000;
        harness.register(spec);
        harness.run(&format!("shop-{number}"));
    }
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    for alloc in harness.state.allocs() {
        *per_node.entry(alloc.node_id.clone()).or_default() += 1;
    }
    let mut sizes: Vec<u32> = per_node.values().copied().collect();
    sizes.sort();
    assert_eq!(sizes, [2, 4], "{per_node:?}");

    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    harness.register(job("replicas", 3));
    harness.run("replicas");
    let nodes: BTreeSet<String> = harness.live_allocs("replicas").iter().map(|alloc| alloc.node_id.clone()).collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {nodes:?}");
}

#[test]
fn bin_pack_score_formula() {
    let node = node("n-1"); // 4000 millicores, 8192 MiB
    let close = |actual: f64, expected: f64| (actual - expected).abs() < 1e-9;
    assert!(close(bin_pack_score(Capacity::of(&node), 0, 0), 0.0), "empty node");
    assert!(close(bin_pack_score(Capacity::of(&node), 4000, 8192), 1.0), "full node");
    // Half full in both: 20 − 2·10^0.5 = 13.675…, / 18.
    assert!(close(bin_pack_score(Capacity::of(&node), 2000, 4096), (20.0 - 2.0 * 10f64.sqrt()) / 18.0));
    assert!(bin_pack_score(Capacity::of(&node), 3000, 1000) > bin_pack_score(Capacity::of(&node), 1000, 1000));
}

#[test]
fn candidate_limit_still_places() {
    let mut harness = Harness::new();
    harness.config.candidate_limit = NonZeroUsize::new(1);
    harness.add_nodes("n", 5);
    harness.update_node("n-3", |node| node.datacenter = "dc2".into());
    harness.register(job("shop", 8));
    let result = harness.run("shop");
    assert!(result.plan.failed_groups.is_empty());
    assert_eq!(harness.live_allocs("shop").len(), 8);
    assert!(harness.live_allocs("shop").iter().all(|alloc| alloc.node_id != "n-3"));
}

#[test]
fn feasibility_is_cached_per_class_but_node_specific_constraints_are_not() {
    let mut harness = Harness::new();
    // Identical nodes but for id, name and unique attributes: one computed class.
    harness.add_nodes("n", 4);
    let mut spec = job("shop", 1);
    spec.groups[0].constraints.push(constraint("${attr.unique.hostname}", Op::Equal, "n-3.local"));
    harness.register(spec);
    let plan = harness.process("shop").plan;
    assert_eq!(plan.allocations().map(|alloc| alloc.node_id.as_str()).collect::<Vec<_>>(), ["n-3"]);

    let mut spec = job("blog", 2);
    spec.constraints.push(constraint("${node.name}", Op::Regexp, "^n-[12]$"));
    harness.register(spec);
    let plan = harness.process("blog").plan;
    let nodes: BTreeSet<&str> = plan.allocations().map(|alloc| alloc.node_id.as_str()).collect();
    assert!(nodes.is_subset(&["n-1", "n-2"].into()), "{nodes:?}");
}

#[test]
fn new_allocations_are_complete() {
    let mut harness = Harness::new();
    harness.now = 1234;
    harness.add_node(node("n-1"));
    let mut spec = job("shop", 1);
    spec.groups[0].tasks.push(task("sidecar", DriverName::Container, 250, 128));
    harness.register(spec);
    let result = harness.process("shop");
    assert_eq!(result.status, davit_api::objects::EvalStatus::Complete);
    assert_eq!(result.status_description, "placed 1");
    assert_eq!((result.plan.eval_id.as_str(), result.plan.job_version, result.plan.priority), ("eval-1", 0, 50));
    let alloc = result.plan.allocations().next().unwrap();
    assert_eq!(alloc.name, "shop.web[0]");
    assert_eq!((alloc.job_name.as_str(), alloc.group.as_str(), alloc.index, alloc.job_version), ("shop", "web", 0, 0));
    assert_eq!((alloc.node_id.as_str(), alloc.node_name.as_str(), alloc.eval_id.as_str()), ("n-1", "n-1", "eval-1"));
    assert_eq!(
        (alloc.desired_status, alloc.client_status),
        (davit_api::objects::DesiredStatus::Run, davit_api::objects::ClientStatus::Pending)
    );
    assert_eq!((alloc.resources.cpu, alloc.resources.memory), (750, 384), "summed over the group's tasks");
    assert_eq!((alloc.create_time, alloc.modify_time), (1234, 1234));
    assert_eq!(alloc.previous_allocation, None);
    assert_eq!(alloc.id.len(), 36);
}

#[test]
fn same_seed_same_plan() {
    let run = |seed| {
        let mut harness = Harness::new();
        harness.seed = seed;
        harness.add_nodes("n", 12);
        let mut spec = job("shop", 10);
        spec.groups[0].network.ports.push(port("http", None, None));
        spec.groups[0].tasks[0].resources.cpu = 1500;
        harness.register(spec);
        harness.process("shop")
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn different_seeds_pick_different_nodes() {
    let chosen: BTreeSet<String> = (0..20)
        .map(|seed| {
            let mut harness = Harness::new();
            harness.seed = seed;
            harness.add_nodes("n", 5);
            harness.register(job("shop", 1));
            harness.process("shop").plan.allocations().next().unwrap().node_id.clone()
        })
        .collect();
    assert!(chosen.len() >= 3, "ties between identical nodes are broken by the seeded order: {chosen:?}");
}

/// A retried evaluation with the same seed, after part of its first plan was committed, must not hand
/// out the committed allocations' ids again.
#[test]
fn retried_evaluation_never_reuses_committed_ids() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    harness.register(job("shop", 2));
    let eval = harness.next_eval("shop");
    let first = harness.process_eval(&eval);
    let committed = first.plan.allocations().next().unwrap().clone();
    harness.add_alloc(committed.clone());

    let retry = harness.process_eval(&eval);
    let placed: Vec<_> = retry.plan.allocations().collect();
    assert_eq!(placed.len(), 1);
    assert_ne!(placed[0].index, committed.index);
    assert_ne!(placed[0].id, committed.id);
}
