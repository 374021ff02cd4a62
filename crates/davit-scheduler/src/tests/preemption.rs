//! Preemption: which allocations a placement that fits nowhere evicts, and when it does not.

use davit_api::objects::{AssignedPort, EvalStatus};
use davit_api::spec::JobType;

use super::{Harness, alloc, job, node, port};
use crate::PreemptionConfig;

/// Registers job `name` at `priority` (no allocations of its own to place: count 0) and adds one running
/// allocation per entry of `cpus` on `node_id`, with ids `<name>-<node_id>-<i>` and 256 MiB each.
fn fill(harness: &mut Harness, name: &str, priority: u8, node_id: &str, cpus: &[u64]) {
    if harness.state.job(name).is_none() {
        let mut spec = job(name, 0);
        spec.priority = priority;
        harness.register(spec);
    }
    for (position, cpu) in cpus.iter().enumerate() {
        let mut running = alloc(&format!("{name}-{node_id}-{position}"), name, "web", position as u32, 0, node_id);
        running.resources.cpu = *cpu;
        harness.add_alloc(running);
    }
}

/// Registers job `name` at `priority` with `count` allocations of `cpu` millicores and 256 MiB.
fn register_high(harness: &mut Harness, name: &str, priority: u8, count: u32, cpu: u32) {
    let mut spec = job(name, count);
    spec.priority = priority;
    spec.groups[0].tasks[0].resources.cpu = cpu;
    harness.register(spec);
}

/// Preempted allocation ids, sorted.
fn victims(plan: &crate::Plan) -> Vec<String> {
    let mut ids: Vec<String> = plan.preemptions().map(|stop| stop.alloc_id.clone()).collect();
    ids.sort();
    ids
}

/// Four full nodes (4000 millicores each), each offering a different set to free 2000 millicores: the
/// lowest highest-priority wins, then the fewest allocations, then the smallest share of the node.
#[test]
fn preemption_picks_the_lowest_priority_then_smallest_set() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 5);
    fill(&mut harness, "p30", 30, "n-1", &[4000]); // one allocation, but priority 30
    fill(&mut harness, "p20", 20, "n-2", &[1000, 1000, 1000, 1000]); // needs two
    fill(&mut harness, "p20", 20, "n-3", &[2000, 1000, 1000]); // one of 2000: the cheapest
    fill(&mut harness, "p20", 20, "n-4", &[4000]); // one, but the whole node
    fill(&mut harness, "p75", 75, "n-5", &[4000]); // within 10 of 80: untouchable
    register_high(&mut harness, "high", 80, 1, 2000);

    let result = harness.process("high");
    assert_eq!(
        harness.render(&result.plan),
        "place high.web[0] v0 on n-3\n\
         preempt p20.web[0] (p20-n-3-0) on n-3: preempted by allocation high.web[0] of job high (priority 80)"
    );
    assert_eq!(result.status_description, "placed 1, preempted 1");
    let placed = result.plan.allocations().next().unwrap();
    assert_eq!(
        result.plan.preemptions().next().unwrap().description,
        format!("preempted by allocation {} of job high (priority 80)", placed.id)
    );
    assert!(result.plan.failed_groups.is_empty());
    assert!(result.plan.node_updates.is_empty(), "preemptions are not the job's own stops");
}

/// On one node: the lowest priority goes first, and a small low-priority allocation that a larger one
/// taken afterwards made useless is left running.
#[test]
fn preemption_within_a_node_takes_lowest_priority_first_and_drops_what_is_not_needed() {
    let mut harness = Harness::new();
    harness.add_node(node("n-1"));
    fill(&mut harness, "p10", 10, "n-1", &[1000]);
    fill(&mut harness, "p30", 30, "n-1", &[3000]);

    register_high(&mut harness, "small", 80, 1, 1000);
    let result = harness.process("small");
    assert_eq!(victims(&result.plan), ["p10-n-1-0"]);

    // 2000 millicores: the 1000 of priority 10 is not enough, so the 3000 of priority 30 goes, which is
    // enough alone: the priority-10 allocation is dropped from the set.
    register_high(&mut harness, "large", 80, 1, 2000);
    let result = harness.process("large");
    assert_eq!(victims(&result.plan), ["p30-n-1-0"]);
}

#[test]
fn preemption_needs_a_priority_delta_of_ten() {
    for (victim_priority, preempts) in [(41, false), (40, true)] {
        let mut harness = Harness::new();
        harness.add_node(node("n-1"));
        fill(&mut harness, "low", victim_priority, "n-1", &[4000]);
        register_high(&mut harness, "high", 50, 1, 1000);
        let result = harness.process("high");
        if preempts {
            assert_eq!(victims(&result.plan), ["low-n-1-0"], "priority {victim_priority}");
            assert_eq!(result.status_description, "placed 1, preempted 1");
        } else {
            assert!(result.plan.node_preemptions.is_empty(), "priority {victim_priority}: {}", harness.render(&result.plan));
            assert_eq!(result.plan.allocations().count(), 0);
            assert_eq!(
                result.status_description, "no changes; group web: 1 not placed (cpu exhausted on 1 node)",
                "priority {victim_priority}"
            );
        }
    }
}

#[test]
fn preemption_frees_a_static_port() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let holder = |harness: &mut Harness, job: &str, priority: u8, node_id: &str| {
        fill(harness, job, priority, node_id, &[100]);
        harness.update_alloc(&format!("{job}-{node_id}-0"), |alloc| {
            alloc.resources.ports.push(AssignedPort { label: "http".into(), value: 8080, to: 8080 });
        });
    };
    // Plenty of cpu and memory on both nodes, but port 8080 is taken: by the same priority on n-1, by a
    // lower one on n-2.
    holder(&mut harness, "peer", 80, "n-1");
    holder(&mut harness, "low", 20, "n-2");
    let mut spec = job("high", 1);
    spec.priority = 80;
    spec.groups[0].network.ports.push(port("http", Some(8080), None));
    harness.register(spec);
    let result = harness.process("high");
    assert_eq!(
        harness.render(&result.plan),
        "place high.web[0] v0 on n-2\n\
         preempt low.web[0] (low-n-2-0) on n-2: preempted by allocation high.web[0] of job high (priority 80)"
    );
    let placed = result.plan.allocations().next().unwrap();
    assert_eq!(placed.resources.ports, [AssignedPort { label: "http".into(), value: 8080, to: 8080 }]);

    // Reserved by the node itself: nothing to preempt.
    harness.update_node("n-2", |node| node.resources.reserved_ports.push(8080));
    let result = harness.process("high");
    assert!(result.plan.node_preemptions.is_empty(), "{}", harness.render(&result.plan));
    assert_eq!(result.status_description, "no changes; group web: 1 not placed (ports exhausted on 2 nodes)");
}

#[test]
fn allocations_of_the_same_job_are_never_preempted() {
    let mut harness = Harness::new();
    harness.add_node(node("n-1"));
    // Version 0 at priority 10 fills the node; version 1 raises the priority and the count: the new
    // allocation must not evict the job's own.
    register_high(&mut harness, "shop", 10, 4, 1000);
    let placed = harness.run("shop");
    assert_eq!(placed.status_description, "placed 4");
    register_high(&mut harness, "shop", 90, 5, 1000);
    let result = harness.process("shop");
    assert!(result.plan.node_preemptions.is_empty(), "{}", harness.render(&result.plan));
    assert!(result.status_description.ends_with("group web: 1 not placed (cpu exhausted on 1 node)"), "{}", result.status_description);
}

#[test]
fn preemptions_earlier_in_the_plan_count() {
    let mut harness = Harness::new();
    harness.add_node(node("n-1"));
    fill(&mut harness, "low", 20, "n-1", &[1000, 1000, 1000, 1000]);
    // Two placements of 2000 each: each evicts two different allocations; a third finds nothing left.
    register_high(&mut harness, "high", 80, 3, 2000);
    let result = harness.process("high");
    assert_eq!(victims(&result.plan), ["low-n-1-0", "low-n-1-1", "low-n-1-2", "low-n-1-3"]);
    assert_eq!(result.plan.allocations().count(), 2);
    assert_eq!(result.status_description, "placed 2, preempted 4; group web: 1 not placed (cpu exhausted on 1 node)");

    // The same plan, applied: the victims are stopped and the second evaluation changes nothing more.
    harness.apply(&result.plan);
    let stopped = harness.state.alloc("low-n-1-0").unwrap();
    assert_eq!(stopped.desired_status, davit_api::objects::DesiredStatus::Stop);
    assert!(stopped.desired_description.starts_with("preempted by allocation "), "{}", stopped.desired_description);
    let again = harness.process("high");
    assert!(again.plan.node_preemptions.is_empty());
}

#[test]
fn terminal_and_stopping_allocations_are_not_preempted() {
    let mut harness = Harness::new();
    harness.add_node(node("n-1"));
    fill(&mut harness, "low", 20, "n-1", &[3000, 1000]);
    harness.update_alloc("low-n-1-0", |alloc| alloc.desired_status = davit_api::objects::DesiredStatus::Stop);
    register_high(&mut harness, "high", 80, 1, 3500);
    // The stopping allocation already freed its 3000: 1000 more are needed, so the other one goes.
    let result = harness.process("high");
    assert_eq!(victims(&result.plan), ["low-n-1-1"]);
}

#[test]
fn preemption_per_job_type_is_configurable() {
    let arrange = |job_type: JobType, config: PreemptionConfig| {
        let mut harness = Harness::new();
        harness.config.preemption = config;
        harness.add_node(node("n-1"));
        fill(&mut harness, "low", 20, "n-1", &[4000]);
        let mut spec = job("high", 1);
        spec.priority = 80;
        spec.job_type = job_type;
        harness.register(spec);
        let result = harness.process("high");
        assert_eq!(result.status, EvalStatus::Complete);
        !result.plan.node_preemptions.is_empty()
    };
    let defaults = PreemptionConfig::default();
    assert!(arrange(JobType::Service, defaults));
    assert!(!arrange(JobType::Batch, defaults), "batch jobs do not preempt by default");
    assert!(arrange(JobType::System, defaults));
    assert!(arrange(JobType::Batch, PreemptionConfig { batch: true, ..defaults }));
    assert!(!arrange(JobType::Service, PreemptionConfig::disabled()));
    assert!(!arrange(JobType::System, PreemptionConfig::disabled()));
}
