//! Alloc affinities and anti-affinities (required and preferred, topology keys, symmetry), and the plan
//! applier's re-check `check_required_placement`.

use std::collections::BTreeMap;

use davit_api::spec::AllocAffinity;

use super::spread::{per_attribute, per_node, placed_node};
use super::{Harness, alloc, job};
use crate::check_required_placement;

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(key, count)| (key.to_string(), *count)).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

fn of_group(group: &str) -> AllocAffinity {
    AllocAffinity { group: Some(group.into()), ..AllocAffinity::default() }
}

fn of_job(job: &str) -> AllocAffinity {
    AllocAffinity { job: Some(job.into()), ..AllocAffinity::default() }
}

fn required(term: AllocAffinity) -> AllocAffinity {
    AllocAffinity { required: true, ..term }
}

fn in_zone(term: AllocAffinity) -> AllocAffinity {
    AllocAffinity { topology: Some("${attr.zone}".into()), ..term }
}

/// n-1, n-2 in zone a; n-3, n-4 in zone b; n-5, n-6 in zone c.
fn three_zones() -> Harness {
    let mut harness = Harness::new();
    for (id, zone) in [("n-1", "a"), ("n-2", "a"), ("n-3", "b"), ("n-4", "b"), ("n-5", "c"), ("n-6", "c")] {
        harness.add_node(placed_node(id, zone, id));
    }
    harness
}

#[test]
fn required_anti_affinity_to_its_own_group_leaves_the_rest_unplaced() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    let mut spec = job("shop", 5);
    spec.groups[0].anti_affinities.push(required(of_group("web")));
    harness.register(spec);
    let result = harness.run("shop");
    assert_eq!(per_node(&harness, "shop").values().copied().collect::<Vec<_>>(), [1, 1, 1]);
    let failure = &result.plan.failed_groups["web"];
    assert_eq!(failure.missing, 2);
    assert_eq!(failure.filtered, counts(&[("anti-affinity: allocation of shop.web on the same node", 3)]));
    assert_eq!(
        result.status_description,
        "placed 3; group web: 2 not placed (anti-affinity: allocation of shop.web on the same node filtered 3 nodes)"
    );
}

#[test]
fn required_anti_affinity_by_zone() {
    let mut harness = three_zones();
    let mut spec = job("shop", 4);
    spec.groups[0].anti_affinities.push(required(in_zone(of_group("web"))));
    harness.register(spec);
    let result = harness.run("shop");
    assert_eq!(per_attribute(&harness, "shop", "zone"), counts(&[("a", 1), ("b", 1), ("c", 1)]));
    let failure = &result.plan.failed_groups["web"];
    assert_eq!(
        failure.filtered,
        counts(&[
            ("anti-affinity: allocation of shop.web on the same ${attr.zone} (a)", 2),
            ("anti-affinity: allocation of shop.web on the same ${attr.zone} (b)", 2),
            ("anti-affinity: allocation of shop.web on the same ${attr.zone} (c)", 2),
        ])
    );
}

#[test]
fn preferred_anti_affinity_spreads_but_still_places() {
    for seed in 0..4 {
        let mut harness = Harness::new();
        harness.seed = seed;
        harness.add_nodes("n", 3);
        // Bin-packing would stack on the busy node.
        harness.add_alloc(alloc("busy", "other", "web", 0, 0, "n-2"));
        let mut spec = job("shop", 5);
        spec.groups[0].anti_affinities.push(AllocAffinity { weight: Some(100), ..of_group("web") });
        harness.register(spec);
        let result = harness.run("shop");
        assert!(result.plan.failed_groups.is_empty());
        let mut sizes: Vec<u32> = per_node(&harness, "shop").values().copied().collect();
        sizes.sort();
        assert_eq!(sizes, [1, 2, 2], "seed {seed}");
    }
}

#[test]
fn preferred_anti_affinity_to_another_job() {
    let mut harness = three_zones();
    harness.add_alloc(alloc("db-0", "db", "main", 0, 0, "n-1"));
    harness.add_alloc(alloc("db-1", "db", "main", 1, 0, "n-3"));
    let mut spec = job("shop", 2);
    spec.groups[0].anti_affinities.push(in_zone(of_job("db")));
    harness.register(spec);
    harness.run("shop");
    assert_eq!(per_attribute(&harness, "shop", "zone"), counts(&[("c", 2)]));
}

#[test]
fn required_alloc_affinity_places_next_to_the_target_or_fails() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 4);
    let mut spec = job("web", 2);
    spec.groups[0].alloc_affinities.push(required(of_job("cache")));
    harness.register(spec);
    let result = harness.process("web");
    let failure = &result.plan.failed_groups["web"];
    assert_eq!(failure.filtered, counts(&[("alloc affinity: no allocation of job cache on the same node", 4)]));

    harness.add_alloc(alloc("cache-0", "cache", "main", 0, 0, "n-3"));
    harness.run("web");
    assert_eq!(per_node(&harness, "web"), counts(&[("n-3", 2)]));
}

#[test]
fn alloc_affinity_by_zone_preferred_and_required() {
    for is_required in [false, true] {
        let mut harness = three_zones();
        harness.add_alloc(alloc("cache-0", "cache", "main", 0, 0, "n-4"));
        // Make zone a the bin-packing favourite.
        harness.add_alloc(alloc("busy", "other", "main", 0, 0, "n-1"));
        // A preference competes with the job anti-affinity penalty once zone b's nodes both hold one.
        let count = if is_required { 3 } else { 2 };
        let mut spec = job("web", count);
        let term = in_zone(of_job("cache"));
        spec.groups[0].alloc_affinities.push(if is_required { required(term) } else { AllocAffinity { weight: Some(100), ..term } });
        harness.register(spec);
        let result = harness.run("web");
        assert!(result.plan.failed_groups.is_empty());
        assert_eq!(per_attribute(&harness, "web", "zone"), counts(&[("b", count)]), "required: {is_required}");
    }
}

/// A required alloc affinity to its own group: the first allocation goes anywhere, the rest follow it.
#[test]
fn required_self_affinity_bootstraps() {
    let mut harness = three_zones();
    let mut spec = job("shop", 4);
    spec.groups[0].alloc_affinities.push(required(in_zone(of_group("web"))));
    harness.register(spec);
    let result = harness.run("shop");
    assert!(result.plan.failed_groups.is_empty());
    assert_eq!(per_attribute(&harness, "shop", "zone").len(), 1);
}

/// An existing allocation whose group has a required anti-affinity that matches the newcomer forbids
/// the placement too (the newcomer has no rule of its own).
#[test]
fn existing_required_anti_affinity_blocks_the_newcomer() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 3);
    let mut db = job("db", 1);
    db.groups[0].anti_affinities.push(required(AllocAffinity { labels: labels(&[("tier", "web")]), ..AllocAffinity::default() }));
    harness.register(db);
    harness.run("db");
    let db_node = harness.live_allocs("db")[0].node_id.clone();

    let mut web = job("web", 4);
    web.groups[0].labels = labels(&[("tier", "web")]);
    harness.register(web);
    let result = harness.run("web");
    assert!(result.plan.failed_groups.is_empty());
    assert!(!per_node(&harness, "web").contains_key(&db_node), "{:?}", per_node(&harness, "web"));

    // Pinned to the db's node: nowhere to go.
    let mut pinned = job("pinned", 1);
    pinned.groups[0].labels = labels(&[("tier", "web")]);
    pinned.groups[0].constraints.push(super::constraint("${node.unique.id}", davit_api::spec::ConstraintOperator::Equal, &db_node));
    harness.register(pinned);
    let failure = &harness.process("pinned").plan.failed_groups["web"];
    assert_eq!(failure.filtered["anti-affinity of db.web: it runs on the same node"], 1);

    // Other labels are not affected.
    let mut api = job("api", 3);
    api.groups[0].labels = labels(&[("tier", "api")]);
    harness.register(api);
    assert!(harness.run("api").plan.failed_groups.is_empty());
}

/// `labels` alone select groups of any job, this one included.
#[test]
fn label_selectors_match_any_job() {
    let mut harness = three_zones();
    let mut kv = job("kv", 1);
    kv.groups[0].labels = labels(&[("app", "kv")]);
    harness.register(kv);
    harness.run("kv");
    let kv_zone = per_attribute(&harness, "kv", "zone").into_keys().next().unwrap();

    let mut more = job("kv-replica", 3);
    more.groups[0].labels = labels(&[("app", "kv")]);
    let term = AllocAffinity { labels: labels(&[("app", "kv")]), ..AllocAffinity::default() };
    more.groups[0].anti_affinities.push(required(in_zone(term)));
    harness.register(more);
    let result = harness.run("kv-replica");
    let zones = per_attribute(&harness, "kv-replica", "zone");
    assert_eq!(zones.values().sum::<u32>(), 2, "{zones:?}");
    assert!(!zones.contains_key(&kv_zone));
    assert_eq!(result.plan.failed_groups["web"].missing, 1);
}

/// A destructive update may put the replacement where the replaced allocation was.
#[test]
fn replaced_allocations_do_not_count() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let mut spec = job("shop", 2);
    spec.groups[0].anti_affinities.push(required(of_group("web")));
    harness.register(spec.clone());
    harness.run("shop");
    spec.groups[0].tasks[0].resources.cpu = 600;
    harness.register(spec);
    let result = harness.run("shop");
    assert!(result.plan.failed_groups.is_empty(), "{:?}", result.plan.failed_groups);
    assert_eq!(per_node(&harness, "shop").values().copied().collect::<Vec<_>>(), [1, 1]);
}

/// Two plans computed on the same snapshot each keep the rules; together they would not. The applier's
/// re-check catches the second.
#[test]
fn check_required_placement_catches_concurrent_plans() {
    let mut harness = Harness::new();
    harness.add_node(placed_node("n-1", "a", "r1"));
    harness.add_node(placed_node("n-2", "b", "r2"));
    for name in ["kv-1", "kv-2"] {
        let mut spec = job(name, 1);
        spec.groups[0].labels = labels(&[("app", "kv")]);
        let term = AllocAffinity { labels: labels(&[("app", "kv")]), ..AllocAffinity::default() };
        spec.groups[0].anti_affinities.push(required(in_zone(term)));
        // Both prefer n-1 (as if by chance).
        spec.groups[0].affinities.push(davit_api::spec::NodeAffinity {
            attribute: "${attr.zone}".into(),
            operator: davit_api::spec::ConstraintOperator::Equal,
            value: "a".into(),
            weight: 100,
        });
        harness.register(spec);
    }
    let first = harness.process("kv-1").plan;
    let second = harness.process("kv-2").plan;
    let placed = |plan: &crate::Plan| plan.allocations().cloned().collect::<Vec<_>>();
    assert_eq!(placed(&first)[0].node_id, "n-1");
    assert_eq!(placed(&second)[0].node_id, "n-1");

    assert_eq!(check_required_placement(&harness.state, &placed(&first), &[]), Ok(()));
    harness.apply(&first);
    let violation = check_required_placement(&harness.state, &placed(&second), &[]).expect_err("conflict");
    assert_eq!(violation.node_id, "n-1");
    assert_eq!(violation.reason, "anti-affinity: allocation of labels app=kv on the same ${attr.zone} (a)");
    assert_eq!(violation.to_string(), "kv-2.web[0] on node n-1: anti-affinity: allocation of labels app=kv on the same ${attr.zone} (a)");

    // Both in one batch: the second is checked against the first.
    let mut harness_batch = Harness::new();
    harness_batch.state = harness.state.clone();
    let first_alloc = harness.live_allocs("kv-1")[0].clone();
    harness_batch.state.remove_alloc(&first_alloc.id);
    let batch = vec![(*first_alloc).clone(), placed(&second)[0].clone()];
    assert!(check_required_placement(&harness_batch.state, &batch, &[]).is_err());
    // Stopping the first in the same batch frees its zone.
    assert_eq!(check_required_placement(&harness.state, &placed(&second), &[first_alloc.id.as_str()]), Ok(()));
}

/// The symmetric direction and the distinct constraints, in the applier's check.
#[test]
fn check_required_placement_covers_every_rule() {
    use davit_api::spec::ConstraintOperator as Op;
    let mut harness = Harness::new();
    harness.add_node(placed_node("n-1", "a", "r1"));
    harness.add_node(placed_node("n-2", "a", "r1"));

    // db forbids tier=web next to it; web has no rule of its own.
    let mut db = job("db", 1);
    db.groups[0].anti_affinities.push(required(AllocAffinity { labels: labels(&[("tier", "web")]), ..AllocAffinity::default() }));
    harness.register(db);
    let mut web = job("web", 2);
    web.groups[0].labels = labels(&[("tier", "web")]);
    harness.register(web);
    harness.add_alloc(alloc("db-0", "db", "web", 0, 0, "n-1"));
    let new = |id: &str, job: &str, index: u32, node: &str| {
        let mut alloc = alloc(id, job, "web", index, 0, node);
        alloc.client_status = davit_api::objects::ClientStatus::Pending;
        alloc
    };
    let violation = check_required_placement(&harness.state, &[new("w-0", "web", 0, "n-1")], &[]).expect_err("symmetric");
    assert_eq!(violation.reason, "anti-affinity of db.web: it runs on the same node");
    assert_eq!(check_required_placement(&harness.state, &[new("w-0", "web", 0, "n-2")], &[]), Ok(()));

    let mut spread_out = job("spread-out", 3);
    spread_out.groups[0].constraints.push(super::constraint("", Op::DistinctHosts, ""));
    harness.register(spread_out);
    let two_on_one = [new("s-0", "spread-out", 0, "n-1"), new("s-1", "spread-out", 1, "n-1")];
    let violation = check_required_placement(&harness.state, &two_on_one, &[]).expect_err("distinct_hosts");
    assert_eq!(violation.reason, "distinct_hosts: allocation of spread-out.web on the node");

    let mut per_rack = job("per-rack", 3);
    per_rack.groups[0].constraints.push(super::constraint("${attr.rack}", Op::DistinctProperty, "1"));
    harness.register(per_rack);
    harness.add_alloc(alloc("p-0", "per-rack", "web", 0, 0, "n-1"));
    let violation = check_required_placement(&harness.state, &[new("p-1", "per-rack", 1, "n-2")], &[]).expect_err("property");
    assert_eq!(violation.reason, "distinct_property ${attr.rack}: r1 already has 1 of per-rack.web (limit 1)");
    // An in-place update of an allocation is not a new placement.
    let existing = (**harness.state.alloc("p-0").unwrap()).clone();
    assert_eq!(check_required_placement(&harness.state, &[existing], &[]), Ok(()));
}
