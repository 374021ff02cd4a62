//! Criterion benchmarks of the scheduler's hot path: feasibility and ranking through `schedule`, for one
//! job of 100 allocations on 1,000 and 10,000 nodes (empty, and half full), scoring every feasible node
//! (`binpack`) or the best of 4 fitting ones (`sampled`).
//!
//! `cargo bench -p davit-scheduler --bench placement`

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use davit_api::objects::{DriverInfo, EvalStatus, EvalTrigger, Evaluation, Job, Node, NodeEligibility, NodeResources, NodeStatus};
use davit_scheduler::{ClusterState, SchedulerConfig, schedule};

fn node(position: usize) -> Node {
    let name = format!("node-{position:05}");
    let zone = ["a", "b", "c"][position % 3];
    Node {
        id: format!("{name}-id"),
        name: name.clone(),
        datacenter: "dc1".to_string(),
        class: String::new(),
        attributes: BTreeMap::from([
            ("cpu.arch".to_string(), "x86_64".to_string()),
            ("zone".to_string(), zone.to_string()),
            ("unique.hostname".to_string(), name),
        ]),
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

/// `nodes` nodes; with `fill`, jobs of 1,000 allocations placed until each node holds `fill` on average.
fn cluster(nodes: usize, fill: usize) -> ClusterState {
    let mut state = ClusterState::new();
    for position in 0..nodes {
        state.upsert_node(Arc::new(node(position)));
    }
    let config = scheduler_config(NonZeroUsize::new(4));
    for number in 0..(nodes * fill).div_ceil(1000) {
        let name = format!("fill-{number}");
        let job = job(&name, 1000);
        state.upsert_job(Arc::clone(&job));
        state.upsert_job_version(job);
        let result = schedule(&state, &eval(&name), &config, number as u64, 0);
        for alloc in result.plan.allocations() {
            state.upsert_alloc(Arc::new(alloc.clone()));
        }
    }
    state
}

fn placement(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("schedule_100_allocs");
    group.sample_size(10);
    for nodes in [1_000, 10_000] {
        for (fill_name, fill) in [("empty", 0), ("half_full", 50)] {
            let mut state = cluster(nodes, fill);
            let job = job("measured", 100);
            state.upsert_job(Arc::clone(&job));
            state.upsert_job_version(job);
            let eval = eval("measured");
            for (algorithm, limit) in [("binpack", None), ("sampled", NonZeroUsize::new(4))] {
                let config = scheduler_config(limit);
                let id = BenchmarkId::new(format!("{algorithm}/{fill_name}"), nodes);
                group.bench_with_input(id, &state, |bencher, state| bencher.iter(|| schedule(state, &eval, &config, 7, 0)));
            }
        }
    }
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
