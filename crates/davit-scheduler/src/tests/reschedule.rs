//! Rescheduling failed allocations: delays from the tracker, attempts, follow-ups, node preference.

use std::sync::Arc;

use davit_api::Duration;
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus};
use davit_api::spec::{DelayFunction, JobSpec, JobType, ReschedulePolicy};

use super::{Harness, job};

fn policy(attempts: Option<u32>, delay_ms: u64, function: DelayFunction, max_delay_ms: u64, unlimited: bool) -> ReschedulePolicy {
    ReschedulePolicy {
        attempts,
        interval: attempts.map(|_| Duration::from_secs(3600)),
        delay: Some(Duration::from_millis(delay_ms)),
        delay_function: Some(function),
        max_delay: Some(Duration::from_millis(max_delay_ms)),
        unlimited: Some(unlimited),
    }
}

fn harness_with(policy: Option<ReschedulePolicy>, nodes: usize) -> Harness {
    let mut harness = Harness::new();
    harness.add_nodes("n", nodes);
    let mut spec: JobSpec = job("shop", 1);
    spec.groups[0].reschedule = policy;
    harness.register(spec);
    let placed = harness.run("shop");
    assert_eq!(placed.status_description, "placed 1");
    harness
}

/// Marks the job's live allocation failed now; returns it.
fn fail_live(harness: &mut Harness) -> Arc<Allocation> {
    let live = harness.live_allocs("shop");
    assert_eq!(live.len(), 1, "one live allocation");
    let now = harness.now;
    harness.update_alloc(&live[0].id.clone(), |alloc| {
        alloc.client_status = ClientStatus::Failed;
        alloc.modify_time = now;
    });
    Arc::clone(harness.state.alloc(&live[0].id).expect("alloc"))
}

/// Fails the live allocation, checks nothing happens before `delay_ms` (a follow-up at failure +
/// delay instead), then that it is rescheduled; returns the replacement.
fn fail_and_reschedule(harness: &mut Harness, delay_ms: u64) -> Arc<Allocation> {
    let failed = fail_live(harness);
    let failed_at = harness.now;
    if delay_ms > 0 {
        harness.now = failed_at + delay_ms - 1;
        let early = harness.process("shop");
        assert!(early.plan.is_empty(), "delay {delay_ms}: {}", harness.render(&early.plan));
        assert_eq!(early.wait_until(), Some(failed_at + delay_ms));
        assert_eq!(early.follow_ups.keys().collect::<Vec<_>>(), ["web"]);
    }
    harness.now = failed_at + delay_ms;
    let result = harness.process("shop");
    assert_eq!(result.status_description, "rescheduled 1", "{}", harness.render(&result.plan));
    assert!(result.follow_ups.is_empty());
    let stops: Vec<_> = result.plan.stops().collect();
    assert_eq!(stops.len(), 1);
    assert_eq!((stops[0].alloc_id.as_str(), stops[0].description.as_str()), (failed.id.as_str(), "rescheduled"));
    let placed: Vec<&Allocation> = result.plan.allocations().collect();
    assert_eq!(placed.len(), 1);
    let replacement = placed[0].clone();
    assert_eq!(replacement.previous_allocation.as_deref(), Some(failed.id.as_str()));
    assert_eq!(replacement.index, failed.index);
    assert_eq!(replacement.reschedule_tracker.len(), failed.reschedule_tracker.len() + 1);
    assert_eq!(replacement.reschedule_tracker[..failed.reschedule_tracker.len()], failed.reschedule_tracker[..]);
    let event = replacement.reschedule_tracker.last().expect("event");
    assert_eq!((event.prev_alloc_id.as_str(), event.prev_node_id.as_str()), (failed.id.as_str(), failed.node_id.as_str()));
    assert_eq!(event.delay_ms, delay_ms);
    assert_eq!(event.time, harness.now);
    harness.apply(&result.plan);
    assert_eq!(harness.state.alloc(&failed.id).expect("failed").desired_status, DesiredStatus::Stop);
    Arc::new(replacement)
}

/// Delays per function, tracker length 0, 1, 2, …, with delay 1s and max_delay 6s.
#[test]
fn delay_functions() {
    let cases = [
        (DelayFunction::Constant, [1000, 1000, 1000, 1000, 1000]),
        (DelayFunction::Exponential, [1000, 2000, 4000, 6000, 6000]),
        (DelayFunction::Fibonacci, [1000, 1000, 2000, 3000, 5000]),
    ];
    for (function, delays) in cases {
        let mut harness = harness_with(Some(policy(None, 1000, function, 6000, true)), 2);
        for delay in delays {
            fail_and_reschedule(&mut harness, delay);
        }
    }
}

#[test]
fn attempts_exhausted_within_interval() {
    let mut harness = harness_with(Some(policy(Some(2), 0, DelayFunction::Constant, 1000, false)), 2);
    fail_and_reschedule(&mut harness, 0);
    fail_and_reschedule(&mut harness, 0);
    fail_live(&mut harness);
    let result = harness.process("shop");
    assert!(result.plan.is_empty(), "{}", harness.render(&result.plan));
    assert!(result.follow_ups.is_empty());
    // Once the interval (1h) has passed since the reschedules, a new attempt is allowed.
    harness.now += 3600 * 1000;
    let later = harness.process("shop");
    assert_eq!(later.status_description, "rescheduled 1");
}

#[test]
fn unlimited_keeps_rescheduling() {
    let mut harness = harness_with(Some(policy(None, 0, DelayFunction::Constant, 1000, true)), 2);
    for _ in 0..10 {
        fail_and_reschedule(&mut harness, 0);
    }
}

#[test]
fn no_policy_leaves_failed_allocations() {
    let mut harness = harness_with(None, 2);
    fail_live(&mut harness);
    harness.now += 3600 * 1000;
    let result = harness.process("shop");
    assert!(result.plan.is_empty(), "{}", harness.render(&result.plan));
    assert!(result.follow_ups.is_empty());
}

#[test]
fn batch_defaults_allow_one_attempt_after_5s() {
    let mut harness = Harness::new();
    harness.add_nodes("n", 2);
    let mut spec = job("shop", 1);
    spec.job_type = JobType::Batch;
    spec.groups[0].reschedule = Some(ReschedulePolicy::default());
    harness.register(spec);
    harness.run("shop");
    fail_and_reschedule(&mut harness, 5000);
    fail_live(&mut harness);
    harness.now += 10_000;
    assert!(harness.process("shop").plan.is_empty());
}

#[test]
fn replacement_prefers_another_node_but_may_reuse_the_only_one() {
    for seed in 0..20 {
        let mut harness = harness_with(Some(policy(None, 0, DelayFunction::Constant, 1000, true)), 3);
        harness.seed = seed;
        let failed_node = harness.live_allocs("shop")[0].node_id.clone();
        let replacement = fail_and_reschedule(&mut harness, 0);
        assert_ne!(replacement.node_id, failed_node, "seed {seed}");
    }
    let mut harness = harness_with(Some(policy(None, 0, DelayFunction::Constant, 1000, true)), 1);
    let replacement = fail_and_reschedule(&mut harness, 0);
    assert_eq!(replacement.node_id, "n-1");
}

#[test]
fn failed_allocation_of_an_older_version_is_replaced_without_tracker() {
    let mut harness = harness_with(Some(policy(Some(1), 60_000, DelayFunction::Constant, 60_000, false)), 1);
    fail_live(&mut harness);
    let mut spec = harness.state.job("shop").expect("job").spec.clone();
    spec.groups[0].tasks[0].env.insert("V".into(), "2".into());
    harness.register(spec);
    let result = harness.process("shop");
    let placed: Vec<_> = result.plan.allocations().collect();
    assert_eq!(placed.len(), 1);
    assert!(placed[0].reschedule_tracker.is_empty());
    assert!(result.follow_ups.is_empty());
}
