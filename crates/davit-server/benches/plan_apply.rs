//! Criterion benchmark of the plan applier's check: `davit_server::applier::check_plan` of a 1,000-allocation
//! plan (fit of every touched node, JSON encoding of the transaction) against 1,000 and 10,000 nodes that
//! already hold 20 allocations each.
//!
//! `cargo bench -p davit-server --bench plan_apply`

use std::num::NonZeroUsize;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use davit_scheduler::{ClusterState, Plan, schedule};

#[path = "../../davit-scheduler/benches/support/mod.rs"]
mod support;
use support::{eval, job, node, scheduler_config};

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
            bencher.iter_batched(|| plan.clone(), |plan| davit_server::applier::check_plan(state, plan, 0), BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group!(benches, plan_apply);
criterion_main!(benches);
