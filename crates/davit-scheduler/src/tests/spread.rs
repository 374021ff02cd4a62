//! Ranking: the algorithms (binpack, spread, balanced), node affinities, spread with and without targets,
//! distinct_hosts and distinct_property, and candidate sampling.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;

use davit_api::objects::Node;
use davit_api::spec::{ConstraintOperator as Op, JobType, NodeAffinity, SchedulerAlgorithm, SpreadSpec};

use super::{Harness, alloc, constraint, job, node};
use crate::SchedulerConfig;
use crate::rank::{Capacity, balanced_score, spread_fit_score};
use crate::rules::spread_boost;

/// A node with `zone` and `rack` attributes.
pub(crate) fn placed_node(id: &str, zone: &str, rack: &str) -> Node {
    let mut node = node(id);
    node.attributes.insert("zone".into(), zone.into());
    node.attributes.insert("rack".into(), rack.into());
    node
}

/// Live allocations of the job per value of a node attribute.
pub(crate) fn per_attribute(harness: &Harness, job_name: &str, attribute: &str) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for alloc in harness.live_allocs(job_name) {
        let node = harness.state.node(&alloc.node_id).expect("node exists");
        let value = node.attributes.get(attribute).cloned().unwrap_or_else(|| "-".into());
        *counts.entry(value).or_default() += 1;
    }
    counts
}

pub(crate) fn per_node(harness: &Harness, job_name: &str) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for alloc in harness.live_allocs(job_name) {
        *counts.entry(alloc.node_id.clone()).or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(key, count)| (key.to_string(), *count)).collect()
}

fn spread(attribute: &str, targets: &[(&str, u32)]) -> SpreadSpec {
    SpreadSpec { attribute: attribute.into(), weight: 50, targets: counts(targets) }
}

fn affinity(attribute: &str, value: &str, weight: i32) -> NodeAffinity {
    NodeAffinity { attribute: attribute.into(), operator: Op::Equal, value: value.into(), weight }
}

/// Two zones of two nodes each (a: n-1, n-2; b: n-3, n-4).
fn two_zones() -> Harness {
    let mut harness = Harness::new();
    for (id, zone) in [("n-1", "a"), ("n-2", "a"), ("n-3", "b"), ("n-4", "b")] {
        harness.add_node(placed_node(id, zone, &format!("r-{id}")));
    }
    harness
}

#[test]
fn spread_targets_are_met_exactly() {
    for (targets, expected) in [
        (vec![("a", 50), ("b", 50)], vec![("a", 5), ("b", 5)]),
        (vec![("a", 70), ("b", 30)], vec![("a", 7), ("b", 3)]),
        (vec![("a", 30), ("b", 70)], vec![("a", 3), ("b", 7)]),
        // What is left of 100% goes to the values not listed.
        (vec![("a", 20)], vec![("a", 2), ("b", 8)]),
        // Without targets: even over the zones of the feasible nodes.
        (vec![], vec![("a", 5), ("b", 5)]),
    ] {
        for seed in 0..4 {
            let mut harness = two_zones();
            harness.seed = seed;
            let mut spec = job("shop", 10);
            spec.groups[0].spread.push(spread("${attr.zone}", &targets));
            harness.register(spec);
            let result = harness.run("shop");
            assert!(result.plan.failed_groups.is_empty(), "{:?}", result.plan.failed_groups);
            assert_eq!(per_attribute(&harness, "shop", "zone"), counts(&expected), "targets {targets:?}, seed {seed}");
        }
    }
}

/// Existing allocations count: scaling up from a lopsided start still ends on target.
#[test]
fn spread_counts_existing_allocations() {
    let mut harness = two_zones();
    for index in 0..3 {
        harness.add_alloc(alloc(&format!("old-{index}"), "shop", "web", index, 0, "n-1"));
    }
    let mut spec = job("shop", 10);
    spec.groups[0].spread.push(spread("${attr.zone}", &[("a", 50), ("b", 50)]));
    harness.register(spec);
    harness.run("shop");
    assert_eq!(per_attribute(&harness, "shop", "zone"), counts(&[("a", 5), ("b", 5)]));
}

#[test]
fn spread_with_a_zone_of_less_capacity_places_the_rest_elsewhere() {
    let mut harness = two_zones();
    // Zone b holds 3 allocations of 1 GiB in all.
    for id in ["n-3", "n-4"] {
        harness.update_node(id, |node| node.resources.memory = if id == "n-3" { 2048 } else { 1024 });
    }
    let mut spec = job("shop", 10);
    spec.groups[0].tasks[0].resources.memory = 1024;
    spec.groups[0].spread.push(spread("${attr.zone}", &[("a", 50), ("b", 50)]));
    harness.register(spec);
    let result = harness.run("shop");
    assert!(result.plan.failed_groups.is_empty(), "{:?}", result.plan.failed_groups);
    assert_eq!(per_attribute(&harness, "shop", "zone"), counts(&[("a", 7), ("b", 3)]));
}

#[test]
fn even_spread_over_three_zones_and_a_node_without_the_attribute() {
    let mut harness = Harness::new();
    for (id, zone) in [("n-1", "a"), ("n-2", "b"), ("n-3", "c"), ("n-4", "c")] {
        harness.add_node(placed_node(id, zone, "r"));
    }
    harness.add_node(node("bare")); // No zone: the lowest spread score, used only when nothing else fits.
    let mut spec = job("shop", 9);
    spec.groups[0].spread.push(spread("${attr.zone}", &[]));
    harness.register(spec);
    harness.run("shop");
    assert_eq!(per_attribute(&harness, "shop", "zone"), counts(&[("a", 3), ("b", 3), ("c", 3)]));
}

#[test]
fn spread_boost_formula() {
    let close = |actual: f64, expected: f64| (actual - expected).abs() < 1e-9;
    assert!(close(spread_boost(5.0, 0.0), 1.0), "empty domain");
    assert!(close(spread_boost(5.0, 4.0), 0.6), "one below target");
    assert!(close(spread_boost(3.5, 3.0), 0.25), "half an allocation missing");
    assert!(close(spread_boost(5.0, 5.0), -0.6), "at target");
    assert!(close(spread_boost(0.0, 0.0), -1.0), "a 0% target");
    assert!(close(spread_boost(2.0, 7.0), -1.0), "far over");
    // Below target always beats at target by more than 1 (the largest possible fit score difference).
    for desired in [1.0, 2.0, 7.0, 100.0, 1000.0] {
        assert!(spread_boost(desired, desired - 1.0) - spread_boost(desired, desired) > 1.0, "{desired}");
    }
}

#[test]
fn algorithms_rank_differently() {
    // n-1 runs a small allocation, n-2 a bigger one, n-3 nothing.
    let arrange = |algorithm: Option<SchedulerAlgorithm>, default: SchedulerAlgorithm| {
        let mut harness = Harness::new();
        harness.config.algorithm = default;
        harness.add_nodes("n", 3);
        harness.add_alloc(alloc("small", "other", "web", 0, 0, "n-1"));
        let mut big = alloc("big", "other", "web", 1, 0, "n-2");
        big.resources.cpu = 2000;
        big.resources.memory = 4096;
        harness.add_alloc(big);
        let mut spec = job("shop", 1);
        spec.algorithm = algorithm;
        harness.register(spec);
        let plan = harness.process("shop").plan;
        plan.allocations().next().expect("placed").node_id.clone()
    };
    assert_eq!(arrange(None, SchedulerAlgorithm::Binpack), "n-2", "binpack: the fullest node");
    assert_eq!(arrange(Some(SchedulerAlgorithm::Spread), SchedulerAlgorithm::Binpack), "n-3", "spread: the emptiest node");
    assert_eq!(arrange(None, SchedulerAlgorithm::Spread), "n-3", "the cluster default applies");
    assert_eq!(arrange(Some(SchedulerAlgorithm::Binpack), SchedulerAlgorithm::Spread), "n-2", "the job overrides it");
}

#[test]
fn spread_algorithm_uses_the_emptiest_nodes_first() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    for number in 0..6 {
        let mut spec = job(&format!("shop-{number}"), 1);
        spec.algorithm = Some(SchedulerAlgorithm::Spread);
        harness.register(spec);
        harness.run(&format!("shop-{number}"));
    }
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    for alloc in harness.state.allocs() {
        *per_node.entry(alloc.node_id.clone()).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{per_node:?}");
}

#[test]
fn balanced_evens_cpu_and_memory() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    // n-1 is memory-heavy, n-2 CPU-heavy, n-3 empty.
    let mut memory_heavy = alloc("memory-heavy", "other", "web", 0, 0, "n-1");
    (memory_heavy.resources.cpu, memory_heavy.resources.memory) = (500, 6000);
    harness.add_alloc(memory_heavy);
    let mut cpu_heavy = alloc("cpu-heavy", "other", "web", 1, 0, "n-2");
    (cpu_heavy.resources.cpu, cpu_heavy.resources.memory) = (1000, 200);
    harness.add_alloc(cpu_heavy);
    // A CPU-heavy ask evens out the memory-heavy node.
    let mut spec = job("shop", 1);
    spec.algorithm = Some(SchedulerAlgorithm::Balanced);
    spec.groups[0].tasks[0].resources = davit_api::spec::Resources { cpu: 2000, memory: 256 };
    harness.register(spec);
    let plan = harness.process("shop").plan;
    assert_eq!(plan.allocations().next().unwrap().node_id, "n-1");

    let node = node("n-1"); // 4000 millicores, 8192 MiB
    let close = |actual: f64, expected: f64| (actual - expected).abs() < 1e-9;
    assert!(close(balanced_score(Capacity::of(&node), 2000, 4096), 1.0));
    assert!(close(balanced_score(Capacity::of(&node), 4000, 0), 0.0));
    assert!(close(spread_fit_score(Capacity::of(&node), 0, 0), 1.0));
    assert!(close(spread_fit_score(Capacity::of(&node), 4000, 8192), 0.0));
}

#[test]
fn node_affinities_steer_placement() {
    let arrange = |affinities: Vec<NodeAffinity>| {
        let mut harness = Harness::new();
        harness.add_nodes("n", 4);
        harness.update_node("n-1", |node| node.class = "fast".into());
        harness.update_node("n-2", |node| node.class = "slow".into());
        // Bin-packing alone would pick the busy nodes.
        harness.add_alloc(alloc("busy-2", "other", "web", 0, 0, "n-2"));
        harness.add_alloc(alloc("busy-3", "other", "web", 1, 0, "n-3"));
        harness.register({
            let mut spec = job("shop", 1);
            spec.groups[0].affinities = affinities;
            spec
        });
        (0..6)
            .map(|seed| {
                harness.seed = seed;
                harness.process("shop").plan.allocations().next().unwrap().node_id.clone()
            })
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(arrange(vec![affinity("${node.class}", "fast", 50)]), BTreeSet::from(["n-1".to_string()]));
    let away_from_slow = arrange(vec![affinity("${node.class}", "slow", -50)]);
    assert_eq!(away_from_slow, BTreeSet::from(["n-3".to_string()]), "the other busy node");
    // Weights add up: a weak pull to slow loses to a strong push away from it.
    let mixed = arrange(vec![
        affinity("${node.class}", "slow", 10),
        affinity("${attr.cpu.arch}", "x86_64", 10),
        affinity("${node.class}", "slow", -60),
    ]);
    assert!(!mixed.contains("n-2"), "{mixed:?}");
    // A node-unique affinity (not cached per class).
    assert_eq!(arrange(vec![affinity("${node.unique.name}", "n-4", 100)]), BTreeSet::from(["n-4".to_string()]));
}

#[test]
fn distinct_hosts_allows_one_allocation_per_node() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let mut spec = job("shop", 3);
    spec.groups[0].constraints.push(constraint("", Op::DistinctHosts, ""));
    harness.register(spec);
    let result = harness.run("shop");
    assert_eq!(per_node(&harness, "shop"), counts(&[("n-1", 1), ("n-2", 1)]));
    let failure = &result.plan.failed_groups["web"];
    assert_eq!(failure.missing, 1);
    assert_eq!(failure.filtered, counts(&[("distinct_hosts: allocation of shop.web on the node", 2)]));
}

#[test]
fn job_level_distinct_hosts_covers_every_group() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    let mut spec = job("shop", 2);
    spec.groups.push(super::group("api", 2));
    spec.constraints.push(constraint("", Op::DistinctHosts, "true"));
    harness.register(spec);
    let result = harness.run("shop");
    assert_eq!(per_node(&harness, "shop").values().copied().collect::<Vec<_>>(), [1, 1, 1]);
    let failed: u32 = result.plan.failed_groups.values().map(|failure| failure.missing).sum();
    assert_eq!(failed, 1);
    assert!(
        result.status_description.contains("distinct_hosts: allocation of job shop on the node filtered 3 nodes"),
        "{}",
        result.status_description
    );
}

#[test]
fn distinct_property_limits_allocations_per_value() {
    let mut harness = Harness::new();
    for (id, rack) in [("n-1", "r1"), ("n-2", "r1"), ("n-3", "r2"), ("n-4", "r2"), ("n-5", "r3"), ("n-6", "r3")] {
        harness.add_node(placed_node(id, "a", rack));
    }
    harness.add_node(node("no-rack"));
    let mut spec = job("shop", 8);
    spec.groups[0].constraints.push(constraint("${attr.rack}", Op::DistinctProperty, "2"));
    harness.register(spec);
    let result = harness.run("shop");
    assert_eq!(per_attribute(&harness, "shop", "rack"), counts(&[("r1", 2), ("r2", 2), ("r3", 2)]));
    let failure = &result.plan.failed_groups["web"];
    assert_eq!(failure.missing, 2);
    assert_eq!(failure.filtered["distinct_property ${attr.rack}: attribute missing"], 1);
    assert_eq!(failure.filtered["distinct_property ${attr.rack}: r1 already has 2 of shop.web (limit 2)"], 2);
}

#[test]
fn candidate_limits_follow_nomad() {
    let config = SchedulerConfig::default();
    assert_eq!(config.limit_for(JobType::Service, false, 1), Some(2));
    assert_eq!(config.limit_for(JobType::Service, false, 4), Some(2));
    assert_eq!(config.limit_for(JobType::Service, false, 5), Some(3));
    assert_eq!(config.limit_for(JobType::Service, false, 10_000), Some(14));
    assert_eq!(config.limit_for(JobType::Batch, false, 10_000), Some(2));
    assert_eq!(config.limit_for(JobType::Batch, true, 10_000), Some(256));
    let all = SchedulerConfig { score_all_nodes: true, ..SchedulerConfig::default() };
    assert_eq!(all.limit_for(JobType::Service, true, 10_000), None);
    let fixed = SchedulerConfig { candidate_limit: NonZeroUsize::new(5), score_all_nodes: true, ..SchedulerConfig::default() };
    assert_eq!(fixed.limit_for(JobType::Batch, true, 10_000), Some(5));
}

/// With sampling, the one feasible node among many is still found, for every seed.
#[test]
fn sampling_always_finds_the_only_feasible_node() {
    for (job_type, candidate_limit) in [(JobType::Service, None), (JobType::Batch, None), (JobType::Service, NonZeroUsize::new(1))] {
        for seed in 0..5 {
            let mut harness = Harness::new();
            harness.config = SchedulerConfig { candidate_limit, ..SchedulerConfig::default() };
            harness.seed = seed;
            harness.add_nodes("n", 300);
            harness.update_node("n-137", |node| node.class = "gpu".into());
            let mut spec = job("shop", 2);
            spec.job_type = job_type;
            spec.groups[0].constraints.push(constraint("${node.class}", Op::Equal, "gpu"));
            harness.register(spec);
            let result = harness.run("shop");
            assert_eq!(per_node(&harness, "shop"), counts(&[("n-137", 2)]), "{job_type:?} seed {seed}");
            assert!(result.plan.failed_groups.is_empty());
        }
    }
}

/// The default sampling still spreads a group's replicas (job anti-affinity) and keeps required rules.
#[test]
fn sampling_keeps_required_rules() {
    let mut harness = Harness::new();
    harness.config = SchedulerConfig::default();
    harness.add_nodes("n", 50);
    let mut spec = job("shop", 50);
    spec.groups[0].constraints.push(constraint("", Op::DistinctHosts, ""));
    harness.register(spec);
    let result = harness.run("shop");
    assert!(result.plan.failed_groups.is_empty(), "{:?}", result.plan.failed_groups);
    assert_eq!(per_node(&harness, "shop").len(), 50);
}

/// With `explain`, each ranked placement records the best candidates, the chosen node first, each with
/// the parts its final score is the mean of; without it, nothing is recorded.
#[test]
fn explain_ranks_the_chosen_node_first_with_its_score_parts() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 4);
    harness.update_node("n-1", |node| node.class = "fast".into());
    harness.add_alloc(alloc("busy-2", "other", "web", 0, 0, "n-2"));
    harness.register({
        let mut spec = job("shop", 2);
        spec.groups[0].affinities = vec![affinity("${node.class}", "fast", 50)];
        spec
    });
    assert!(harness.process("shop").plan.scores.is_empty(), "recorded without explain");

    harness.config.explain = true;
    let plan = harness.process("shop").plan;
    let allocs: Vec<_> = plan.allocations().collect();
    assert_eq!(allocs.len(), 2);
    assert_eq!(plan.scores.len(), 2);
    for alloc in allocs {
        let scores = &plan.scores[&alloc.id];
        assert_eq!(scores.nodes_scored, 4, "every node fits and is scored");
        assert_eq!(scores.candidates.len(), 3, "{scores:?}");
        assert_eq!(scores.candidates[0].node_id, alloc.node_id, "{scores:?}");
        assert!(scores.candidates.windows(2).all(|pair| pair[0].score >= pair[1].score), "{scores:?}");
        for candidate in &scores.candidates {
            let parts = [candidate.node_affinity, candidate.spread, candidate.alloc_affinity, candidate.job_anti_affinity];
            let present: Vec<f64> = parts.into_iter().flatten().collect();
            let mean = (candidate.fit + present.iter().sum::<f64>()) / (1 + present.len()) as f64;
            assert!((candidate.score - mean).abs() < 1e-12, "{candidate:?}");
            assert!(candidate.node_affinity.is_some(), "the group has a node affinity: {candidate:?}");
        }
    }
    // The first placement goes to the node the affinity pulls to; the second is kept off it by the job
    // anti-affinity penalty, which shows in n-1's parts.
    let first = &plan.scores[&plan.allocations().find(|alloc| alloc.index == 0).unwrap().id];
    assert_eq!(first.candidates[0].node_id, "n-1");
    let second = &plan.scores[&plan.allocations().find(|alloc| alloc.index == 1).unwrap().id];
    assert_ne!(second.candidates[0].node_id, "n-1");
    let fast = second.candidates.iter().find(|candidate| candidate.node_id == "n-1");
    assert!(fast.is_none_or(|fast| fast.job_anti_affinity.is_some_and(|penalty| penalty < 0.0)), "{second:?}");
}

/// Values a spread's targets do not list share what is left of 100%: with 70% for `a`, `a` gets 7 of 10
/// and `b` and `c` the other 3 between them (each aiming for 1.5), not 3 each.
#[test]
fn unlisted_values_share_what_is_left_of_the_targets() {
    for seed in 0..4 {
        let mut harness = Harness::new();
        harness.seed = seed;
        for (id, zone) in [("n-1", "a"), ("n-2", "a"), ("n-3", "b"), ("n-4", "b"), ("n-5", "c"), ("n-6", "c")] {
            harness.add_node(placed_node(id, zone, &format!("r-{id}")));
        }
        let mut spec = job("shop", 10);
        spec.groups[0].spread.push(spread("${attr.zone}", &[("a", 70)]));
        harness.register(spec);
        let result = harness.run("shop");
        assert!(result.plan.failed_groups.is_empty(), "{:?}", result.plan.failed_groups);
        let zones = per_attribute(&harness, "shop", "zone");
        assert_eq!(zones.get("a"), Some(&7), "seed {seed}: {zones:?}");
        assert!(
            zones.get("b").is_some_and(|b| (1..=2).contains(b)) && zones.get("c").is_some_and(|c| (1..=2).contains(c)),
            "seed {seed}: {zones:?}"
        );
    }
}
