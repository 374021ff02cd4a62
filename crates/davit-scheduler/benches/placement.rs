//! Criterion benchmarks of the scheduler's hot path: feasibility and ranking through `schedule`, for one
//! job of 100 allocations on 1,000 and 10,000 nodes (empty, and half full), scoring every feasible node
//! (`binpack`) or the best of 4 fitting ones (`sampled`).
//!
//! `cargo bench -p davit-scheduler --bench placement`

use std::num::NonZeroUsize;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use davit_scheduler::{ClusterState, schedule};

mod support;
use support::{eval, job, node, scheduler_config};

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
