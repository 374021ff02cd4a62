//! Criterion benchmark of the plan applier's check: `davit_server::applier::check_plan` of a 1,000-allocation
//! plan (fit of every touched node, JSON encoding of the transaction) against 1,000 and 10,000 nodes that
//! already hold 20 allocations each.
//!
//! `cargo bench -p davit-server --bench plan_apply`

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use davit_api::objects::{DriverInfo, EvalStatus, EvalTrigger, Evaluation, Job, Node, NodeEligibility, NodeResources, NodeStatus};
use davit_scheduler::{ClusterState, Plan, SchedulerConfig, schedule};

fn node(position: usize) -> Node {
    let name = format!("node-{position:05}");
    Node {
        id: format!("{name}-id"),
        name: name.clone(),
        datacenter: "dc1".to_string(),
        class: String::new(),
        attributes: BTreeMap::from([("cpu.arch".to_string(), "x86_64".to_string()), ("unique.hostname".to_string(), name)]),
        resources: NodeResources { cpu: 4000, memory: 8192, port_range: (20000, 32000), reserved_ports: Vec::new() },
        drivers: BTreeMap::from([(
            "exec".to_string(),
            DriverInfo { detected: true, healthy: true, description: String::new(), attributes: BTreeMap::new() },
        )]),
        status: NodeStatus::Ready,
        eligibility: NodeEligibility::Eligible,
        drain: None,
        http_addr: String::new(),
        status_description: String::new(),
        last_heartbeat: 0,
        create_index: 1,
        modify_index: 1,
    }
}

fn job(name: &str, count: usize) -> Arc<Job> {
    let text = format!(
        "name: {name}\ngroups:\n  - name: work\n    count: {count}\n    tasks:\n      - name: main\n        driver: exec\n        config: {{command: /bin/true}}\n        resources: {{cpu: 20, memory: 32}}\n"
    );
    let spec = davit_api::spec::parse_job_spec(&text, "bench.yaml").expect("valid bench job");
    Arc::new(Job { spec, version: 0, stopped: false, submit_time: 0, create_index: 2, modify_index: 2 })
}

/// The default configuration with this candidate limit (written so that fields added later keep their defaults).
#[allow(clippy::field_reassign_with_default)]
fn scheduler_config(candidate_limit: Option<NonZeroUsize>) -> SchedulerConfig {
    let mut config = SchedulerConfig::default();
    config.candidate_limit = candidate_limit;
    config
}

fn eval(job: &str) -> Evaluation {
    Evaluation {
        id: format!("eval-{job}"),
        job_name: job.to_string(),
        job_type: davit_api::spec::JobType::Service,
        priority: 50,
        triggered_by: EvalTrigger::JobRegister,
        status: EvalStatus::Pending,
        status_description: String::new(),
        node_id: None,
        failed_groups: BTreeMap::new(),
        blocked_eval: None,
        previous_eval: None,
        wait_until: None,
        snapshot_index: 0,
        create_time: 0,
        modify_time: 0,
        create_index: 2,
        modify_index: 2,
    }
}

/// The cluster (nodes with 20 allocations each) and the plan of one more 1,000-allocation job.
fn setup(nodes: usize) -> (ClusterState, Plan) {
    let mut state = ClusterState::new();
    for position in 0..nodes {
        state.upsert_node(Arc::new(node(position)));
    }
    let config = scheduler_config(NonZeroUsize::new(4));
    let place = |state: &mut ClusterState, name: &str| {
        let job = job(name, 1000);
        state.upsert_job(Arc::clone(&job));
        state.upsert_job_version(job);
        schedule(state, &eval(name), &config, name.len() as u64, 0).plan
    };
    for number in 0..nodes * 20 / 1000 {
        let plan = place(&mut state, &format!("fill-{number}"));
        for alloc in plan.allocations() {
            state.upsert_alloc(Arc::new(alloc.clone()));
        }
    }
    let plan = place(&mut state, "measured");
    (state, plan)
}

fn plan_apply(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("check_plan_1000_allocs");
    group.sample_size(20);
    for nodes in [1_000, 10_000] {
        let (state, plan) = setup(nodes);
        group.bench_with_input(BenchmarkId::from_parameter(nodes), &(state, plan), |bencher, (state, plan)| {
            bencher.iter(|| davit_server::applier::check_plan(state, plan, 0))
        });
    }
    group.finish();
}

criterion_group!(benches, plan_apply);
criterion_main!(benches);
