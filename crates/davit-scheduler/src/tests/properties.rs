//! Property tests: random clusters and jobs with random placement rules, scheduled concurrently (every
//! plan of a round computed on the same snapshot) and committed through a simulated plan applier that
//! re-checks fit and [`check_required_placement`]. Whatever the input, the final state must over-commit
//! no node (cpu, memory, ports) and keep every `distinct_hosts`, `distinct_property` and required
//! anti-affinity.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use davit_api::objects::{Allocation, DesiredStatus};
use davit_api::spec::{AllocAffinity, ConstraintOperator as Op, JobSpec, SpreadSpec};
use proptest::prelude::*;

use super::spread::placed_node;
use super::{Harness, constraint, job, port};
use crate::rules::{Selector, Topology};
use crate::{ClusterState, Plan, check_required_placement};

#[derive(Clone, Debug)]
struct NodeParams {
    cpu: u64,
    memory: u64,
    zone: u8,
    /// 4: no rack attribute.
    rack: u8,
}

#[derive(Clone, Debug)]
struct JobParams {
    count: u32,
    cpu: u32,
    memory: u32,
    dynamic_ports: u8,
    static_port: bool,
    rule: u8,
    limit: u8,
    labelled: bool,
    second_count: u32,
    second_cpu_change: bool,
}

fn node_params() -> impl Strategy<Value = NodeParams> {
    (prop::sample::select(vec![1000u64, 2000, 4000]), prop::sample::select(vec![1024u64, 4096]), 0u8..3, 0u8..5)
        .prop_map(|(cpu, memory, zone, rack)| NodeParams { cpu, memory, zone, rack })
}

fn job_params() -> impl Strategy<Value = JobParams> {
    (1u32..8, 100u32..1500, 64u32..1500, 0u8..3, any::<bool>(), 0u8..9, 1u8..4, any::<bool>(), 0u32..9, any::<bool>()).prop_map(
        |(count, cpu, memory, dynamic_ports, static_port, rule, limit, labelled, second_count, second_cpu_change)| JobParams {
            count,
            cpu,
            memory,
            dynamic_ports,
            static_port,
            rule,
            limit,
            labelled,
            second_count,
            second_cpu_change,
        },
    )
}

fn build_job(name: &str, params: &JobParams, count: u32, cpu: u32) -> JobSpec {
    let mut spec = job(name, count);
    let group = &mut spec.groups[0];
    group.tasks[0].resources = davit_api::spec::Resources { cpu, memory: params.memory };
    for number in 0..params.dynamic_ports {
        group.network.ports.push(port(&format!("p{number}"), None, None));
    }
    if params.static_port {
        group.network.ports.push(port("fixed", Some(20001), None));
    }
    if params.labelled {
        group.labels.insert("tier".into(), "kv".into());
    }
    let zone = Some("${attr.zone}".to_string());
    let kv = || BTreeMap::from([("tier".to_string(), "kv".to_string())]);
    match params.rule {
        1 => group.constraints.push(constraint("", Op::DistinctHosts, "")),
        2 => spec.constraints.push(constraint("", Op::DistinctHosts, "")),
        3 => group.constraints.push(constraint("${attr.rack}", Op::DistinctProperty, &params.limit.to_string())),
        4 => group.anti_affinities.push(AllocAffinity { group: Some("web".into()), required: true, ..Default::default() }),
        5 => group.anti_affinities.push(AllocAffinity { group: Some("web".into()), required: true, topology: zone, ..Default::default() }),
        6 => group.anti_affinities.push(AllocAffinity { labels: kv(), required: true, topology: zone, ..Default::default() }),
        7 => {
            group.spread.push(SpreadSpec { attribute: "${attr.zone}".into(), weight: 50, targets: BTreeMap::new() });
            group.anti_affinities.push(AllocAffinity { labels: kv(), weight: Some(80), ..Default::default() });
        }
        8 => group.anti_affinities.push(AllocAffinity { labels: kv(), required: true, ..Default::default() }),
        _ => {}
    }
    spec
}

/// The plan applier: per node, re-check fit and the required placement rules against the latest state,
/// commit what passes (stops always commit).
fn apply_checked(state: &mut ClusterState, plan: &Plan) -> usize {
    let stopped: Vec<&str> = plan.stops().map(|stop| stop.alloc_id.as_str()).collect();
    for stop in plan.stops() {
        if let Some(alloc) = state.alloc(&stop.alloc_id) {
            let mut alloc = (**alloc).clone();
            alloc.desired_status = DesiredStatus::Stop;
            state.upsert_alloc(Arc::new(alloc));
        }
    }
    let mut rejected = 0;
    for (node_id, placed) in &plan.node_allocations {
        let fits = node_fits(state, node_id, placed);
        if fits && check_required_placement(state, placed, &stopped).is_ok() {
            for alloc in placed {
                state.upsert_alloc(Arc::new(alloc.clone()));
            }
        } else {
            rejected += placed.len();
        }
    }
    rejected
}

fn node_fits(state: &ClusterState, node_id: &str, placed: &[Allocation]) -> bool {
    let Some(node) = state.node(node_id) else { return false };
    let replaced: BTreeSet<&str> = placed.iter().map(|alloc| alloc.id.as_str()).collect();
    let live = state.allocs_for_node(node_id).filter(|alloc| !alloc.is_terminal() && !replaced.contains(alloc.id.as_str())).map(|a| &**a);
    let all: Vec<&Allocation> = live.chain(placed.iter()).collect();
    let cpu: u64 = all.iter().map(|alloc| alloc.resources.cpu).sum();
    let memory: u64 = all.iter().map(|alloc| alloc.resources.memory).sum();
    let mut ports = BTreeSet::new();
    let ports_ok = all.iter().flat_map(|alloc| &alloc.resources.ports).all(|port| ports.insert(port.value));
    cpu <= node.resources.cpu && memory <= node.resources.memory && ports_ok
}

/// Every broken invariant of the state, computed naively from scratch.
fn violations(state: &ClusterState) -> Vec<String> {
    let mut problems = Vec::new();
    let live: Vec<&Arc<Allocation>> = state.allocs().filter(|alloc| !alloc.is_terminal()).collect();
    for node in state.nodes() {
        let on_node: Vec<&&Arc<Allocation>> = live.iter().filter(|alloc| alloc.node_id == node.id).collect();
        let cpu: u64 = on_node.iter().map(|alloc| alloc.resources.cpu).sum();
        let memory: u64 = on_node.iter().map(|alloc| alloc.resources.memory).sum();
        if cpu > node.resources.cpu || memory > node.resources.memory {
            problems.push(format!("{} over-committed: cpu {cpu}, memory {memory}", node.id));
        }
        let mut ports = BTreeSet::new();
        for port in on_node.iter().flat_map(|alloc| &alloc.resources.ports) {
            if !ports.insert(port.value) {
                problems.push(format!("{} port {} used twice", node.id, port.value));
            }
        }
    }
    let labels = |alloc: &Allocation| {
        state.job(&alloc.job_name).and_then(|job| job.spec.group(&alloc.group)).map(|group| group.labels.clone()).unwrap_or_default()
    };
    let domain =
        |topology: &Topology, alloc: &Allocation| state.node(&alloc.node_id).and_then(|node| topology.value.of(node)).map(str::to_string);
    for alloc in &live {
        let Some(job) = state.job(&alloc.job_name) else { continue };
        let Some(group) = job.spec.group(&alloc.group) else { continue };
        let others = live.iter().filter(|other| other.id != alloc.id);
        let rules = job
            .spec
            .constraints
            .iter()
            .map(|constraint| (constraint, Selector::job(&job.spec.name)))
            .chain(group.constraints.iter().map(|constraint| (constraint, Selector::group(&job.spec.name, &group.name))));
        for (constraint, selector) in rules {
            let (topology, limit) = match constraint.operator {
                Op::DistinctHosts => (Topology::node(), 1),
                Op::DistinctProperty => (Topology::parse(Some(&constraint.attribute)), constraint.value.parse().unwrap_or(1)),
                _ => continue,
            };
            let Some(mine) = domain(&topology, alloc) else {
                problems.push(format!("{} on {} lacks {}", alloc.name, alloc.node_id, topology.text));
                continue;
            };
            let same = others.clone().filter(|other| {
                selector.matches(&other.job_name, &other.group, &labels(other)) && domain(&topology, other).as_deref() == Some(&mine)
            });
            if same.count() + 1 > limit {
                problems.push(format!("{} on {}: more than {limit} per {} {mine}", alloc.name, alloc.node_id, topology.text));
            }
        }
        for term in group.anti_affinities.iter().filter(|term| term.required) {
            let selector = Selector::of_term(term, &job.spec.name);
            let topology = Topology::parse(term.topology.as_deref());
            let Some(mine) = domain(&topology, alloc) else { continue };
            for other in others.clone() {
                if selector.matches(&other.job_name, &other.group, &labels(other)) && domain(&topology, other).as_deref() == Some(&mine) {
                    problems.push(format!("{} and {} share {} {mine}", alloc.name, other.name, topology.text));
                }
            }
        }
    }
    problems
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_plans_never_break_fit_or_required_rules(
        nodes in prop::collection::vec(node_params(), 2..10),
        jobs in prop::collection::vec(job_params(), 1..5),
        seed in any::<u64>(),
    ) {
        let mut harness = Harness::new();
        harness.seed = seed;
        for (number, params) in nodes.iter().enumerate() {
            let rack = format!("r{}", params.rack);
            let mut node = placed_node(&format!("n-{number}"), ["a", "b", "c"][usize::from(params.zone)], &rack);
            if params.rack == 4 {
                node.attributes.remove("rack");
            }
            node.resources.cpu = params.cpu;
            node.resources.memory = params.memory;
            node.resources.port_range = (20000, 20005);
            harness.add_node(node);
        }
        let names: Vec<String> = (0..jobs.len()).map(|number| format!("j{number}")).collect();
        for (name, params) in names.iter().zip(&jobs) {
            harness.register(build_job(name, params, params.count, params.cpu));
        }
        // Round 1: every plan on the same snapshot, then committed one after the other.
        let plans: Vec<Plan> = names.iter().map(|name| harness.process(name).plan).collect();
        for plan in &plans {
            apply_checked(&mut harness.state, plan);
        }
        let problems = violations(&harness.state);
        prop_assert!(problems.is_empty(), "after round 1: {problems:?}");

        // Round 2: new counts (and, for some jobs, a destructive update), again concurrently.
        for (name, params) in names.iter().zip(&jobs) {
            let cpu = if params.second_cpu_change { params.cpu + 50 } else { params.cpu };
            harness.register(build_job(name, params, params.second_count, cpu));
        }
        let plans: Vec<Plan> = names.iter().map(|name| harness.process(name).plan).collect();
        for plan in &plans {
            apply_checked(&mut harness.state, plan);
        }
        let problems = violations(&harness.state);
        prop_assert!(problems.is_empty(), "after round 2: {problems:?}");

        // Sequential scheduling (each plan sees the previous one) must not need the applier's rejections.
        for name in &names {
            let plan = harness.process(name).plan;
            prop_assert_eq!(apply_checked(&mut harness.state, &plan), 0, "a plan computed on the latest state was rejected");
        }
        let problems = violations(&harness.state);
        prop_assert!(problems.is_empty(), "after round 3: {problems:?}");
    }
}
