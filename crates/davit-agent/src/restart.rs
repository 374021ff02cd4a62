//! The restart policy as a pure function: given how a task ended, the group's [`RestartPolicy`], the job
//! type and the restarts so far, decide whether to restart it and after how long.
//!
//! Reads no clock and no RNG: the caller passes `now_ms` and a jitter factor.

use std::time::Duration;

use davit_api::spec::{JobType, RestartDelayFunction, RestartMode, RestartPolicy};
use davit_drivers::ExitResult;

/// Restarts within the current policy window. Persisted with the task so an agent restart keeps the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartTracker {
    /// Wall-clock start of the current window (Unix ms).
    pub window_start_ms: u64,
    /// Restarts done in the current window.
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RestartDecision {
    /// Start the task again after `delay`. `message` goes into a `Restarting` event.
    Restart { delay: Duration, message: String },
    /// The task is dead for good. `message` goes into a `Not Restarting` event.
    Done { failed: bool, message: String },
}

/// Largest jitter fraction the caller should pass: delays vary by ±25%.
pub const MAX_JITTER: f64 = 0.25;

/// Decides what happens after a task exited.
///
/// - batch job, successful exit: done, not failed, no restart;
/// - otherwise (any service exit, any failed batch exit): restart while fewer than `attempts` restarts
///   happened in the current `interval` window, after `delay × (1 + jitter)`; with `delay_function:
///   exponential` the n-th restart of the window waits `delay × 2^(n-1)`, capped at `max_delay`, then
///   jittered (and capped again);
/// - out of attempts: mode `fail` → done and failed; mode `delay` → restart when the window ends
///   (the restart then opens the next window).
///
/// `jitter` is clamped to ±[`MAX_JITTER`].
pub fn decide_restart(
    policy: &RestartPolicy,
    job_type: JobType,
    exit: &ExitResult,
    tracker: RestartTracker,
    now_ms: u64,
    jitter: f64,
) -> (RestartDecision, RestartTracker) {
    if job_type == JobType::Batch && exit.successful() {
        return (RestartDecision::Done { failed: false, message: "batch task completed successfully".to_string() }, tracker);
    }
    let interval_ms = duration_ms(policy.interval.as_std());
    let mut next = tracker;
    if now_ms >= tracker.window_start_ms.saturating_add(interval_ms) {
        next = RestartTracker { window_start_ms: now_ms, count: 0 };
    }
    next.count += 1;
    if next.count <= policy.attempts {
        let jitter = jitter.clamp(-MAX_JITTER, MAX_JITTER);
        let base = base_delay(policy, next.count);
        let mut delay = base.mul_f64(1.0 + jitter);
        if let Some(max_delay) = policy.max_delay.filter(|_| policy.delay_function == RestartDelayFunction::Exponential) {
            delay = delay.min(max_delay.as_std());
        }
        let message = format!("restart {} of {} in {}, in {}", next.count, policy.attempts, policy.interval, davit_api::Duration(base));
        return (RestartDecision::Restart { delay, message }, next);
    }
    let exceeded = format!("exceeded {} restarts in {}", policy.attempts, policy.interval);
    match policy.mode {
        RestartMode::Fail => (RestartDecision::Done { failed: true, message: exceeded }, next),
        RestartMode::Delay => {
            let window_end_ms = next.window_start_ms.saturating_add(interval_ms);
            let wait = Duration::from_millis(window_end_ms.saturating_sub(now_ms)).max(policy.delay.as_std());
            let message = format!("{exceeded}, restarting in {} when the interval ends", davit_api::Duration(round_to_secs(wait)));
            // The delayed restart is the first of the next window.
            let next = RestartTracker { window_start_ms: now_ms.saturating_add(duration_ms(wait)), count: 1 };
            (RestartDecision::Restart { delay: wait, message }, next)
        }
    }
}

/// The delay before the `restart`-th restart of the window (1-based), before jitter.
fn base_delay(policy: &RestartPolicy, restart: u32) -> Duration {
    let delay = policy.delay.as_std();
    match policy.delay_function {
        RestartDelayFunction::Constant => delay,
        RestartDelayFunction::Exponential => {
            let factor = 1u32.checked_shl(restart.saturating_sub(1)).unwrap_or(u32::MAX);
            let grown = delay.saturating_mul(factor);
            policy.max_delay.map_or(grown, |max_delay| grown.min(max_delay.as_std()))
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn round_to_secs(duration: Duration) -> Duration {
    if duration < Duration::from_secs(1) { duration } else { Duration::from_secs(duration.as_millis().div_ceil(1000) as u64) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, interval_s: u64, delay_s: u64, mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            attempts,
            interval: davit_api::Duration::from_secs(interval_s),
            delay: davit_api::Duration::from_secs(delay_s),
            mode,
            delay_function: RestartDelayFunction::Constant,
            max_delay: None,
        }
    }

    fn exponential(attempts: u32, delay_s: u64, max_delay_s: Option<u64>) -> RestartPolicy {
        RestartPolicy {
            delay_function: RestartDelayFunction::Exponential,
            max_delay: max_delay_s.map(davit_api::Duration::from_secs),
            ..policy(attempts, 3600, delay_s, RestartMode::Fail)
        }
    }

    /// Exponential backoff: (restarts so far, jitter, max_delay) → delay.
    #[test]
    fn exponential_backoff() {
        let now = 10_000_000;
        let cases: [(u32, f64, Option<u64>, u64); 9] = [
            (0, 0.0, None, 1_000),
            (1, 0.0, None, 2_000),
            (2, 0.0, None, 4_000),
            (5, 0.0, None, 32_000),
            (5, 0.0, Some(10), 10_000),
            (2, 0.25, None, 5_000),
            (2, -0.25, None, 3_000),
            // Jitter never takes the delay past max_delay, but may take it below.
            (6, 0.25, Some(10), 10_000),
            (6, -0.25, Some(10), 7_500),
        ];
        for (restarts, jitter, max_delay_s, expected_ms) in cases {
            let policy = exponential(10, 1, max_delay_s);
            let tracker = RestartTracker { window_start_ms: now - 1000, count: restarts };
            let (decision, next) = decide_restart(&policy, JobType::Service, &exited(1), tracker, now, jitter);
            let RestartDecision::Restart { delay, .. } = decision else { panic!("{restarts}: {decision:?}") };
            assert_eq!(delay, Duration::from_millis(expected_ms), "restarts {restarts}, jitter {jitter}, max {max_delay_s:?}");
            assert_eq!(next.count, restarts + 1);
        }
        // Huge counts saturate instead of overflowing.
        let tracker = RestartTracker { window_start_ms: now - 1000, count: 200 };
        let (decision, _) = decide_restart(&exponential(1000, 1, Some(60)), JobType::Service, &exited(1), tracker, now, 0.0);
        assert_eq!(
            decision,
            RestartDecision::Restart { delay: Duration::from_secs(60), message: "restart 201 of 1000 in 1h, in 1m".into() }
        );
    }

    fn exited(code: i32) -> ExitResult {
        ExitResult { exit_code: Some(code), signal: None, oom_killed: false }
    }

    struct Case {
        name: &'static str,
        policy: RestartPolicy,
        job_type: JobType,
        exit: ExitResult,
        tracker: RestartTracker,
        now_ms: u64,
        jitter: f64,
        expected: RestartDecision,
        expected_tracker: RestartTracker,
    }

    #[test]
    fn restart_decisions() {
        let default_policy = policy(2, 1800, 15, RestartMode::Fail);
        let t = |window_start_ms, count| RestartTracker { window_start_ms, count };
        let restart = |delay_ms: u64, message: &str| RestartDecision::Restart {
            delay: Duration::from_millis(delay_ms),
            message: message.to_string(),
        };
        let done = |failed, message: &str| RestartDecision::Done { failed, message: message.to_string() };
        let now = 10_000_000;
        let cases = vec![
            Case {
                name: "batch success is complete",
                policy: default_policy.clone(),
                job_type: JobType::Batch,
                exit: exited(0),
                tracker: t(0, 0),
                now_ms: now,
                jitter: 0.0,
                expected: done(false, "batch task completed successfully"),
                expected_tracker: t(0, 0),
            },
            Case {
                name: "batch failure restarts",
                policy: default_policy.clone(),
                job_type: JobType::Batch,
                exit: exited(1),
                tracker: t(0, 0),
                now_ms: now,
                jitter: 0.0,
                expected: restart(15_000, "restart 1 of 2 in 30m, in 15s"),
                expected_tracker: t(now, 1),
            },
            Case {
                name: "service success still counts",
                policy: default_policy.clone(),
                job_type: JobType::Service,
                exit: exited(0),
                tracker: t(now - 1000, 1),
                now_ms: now,
                jitter: 0.0,
                expected: restart(15_000, "restart 2 of 2 in 30m, in 15s"),
                expected_tracker: t(now - 1000, 2),
            },
            Case {
                name: "jitter scales the delay",
                policy: default_policy.clone(),
                job_type: JobType::Service,
                exit: exited(1),
                tracker: t(0, 0),
                now_ms: now,
                jitter: 0.2,
                expected: restart(18_000, "restart 1 of 2 in 30m, in 15s"),
                expected_tracker: t(now, 1),
            },
            Case {
                name: "jitter is clamped",
                policy: default_policy.clone(),
                job_type: JobType::Service,
                exit: exited(1),
                tracker: t(0, 0),
                now_ms: now,
                jitter: -3.0,
                expected: restart(11_250, "restart 1 of 2 in 30m, in 15s"),
                expected_tracker: t(now, 1),
            },
            Case {
                name: "out of attempts in fail mode fails",
                policy: default_policy.clone(),
                job_type: JobType::Service,
                exit: exited(1),
                tracker: t(now - 60_000, 2),
                now_ms: now,
                jitter: 0.0,
                expected: done(true, "exceeded 2 restarts in 30m"),
                expected_tracker: t(now - 60_000, 3),
            },
            Case {
                name: "oom counts like any failure",
                policy: policy(0, 60, 1, RestartMode::Fail),
                job_type: JobType::Batch,
                exit: ExitResult { exit_code: None, signal: Some(9), oom_killed: true },
                tracker: t(0, 0),
                now_ms: now,
                jitter: 0.0,
                expected: done(true, "exceeded 0 restarts in 1m"),
                expected_tracker: t(now, 1),
            },
            Case {
                name: "a passed window resets the count",
                policy: default_policy.clone(),
                job_type: JobType::Service,
                exit: exited(1),
                tracker: t(now - 1_800_000, 2),
                now_ms: now,
                jitter: 0.0,
                expected: restart(15_000, "restart 1 of 2 in 30m, in 15s"),
                expected_tracker: t(now, 1),
            },
            Case {
                name: "delay mode waits for the window to end",
                policy: policy(2, 600, 5, RestartMode::Delay),
                job_type: JobType::Service,
                exit: exited(1),
                tracker: t(now - 100_000, 2),
                now_ms: now,
                jitter: 0.0,
                expected: restart(500_000, "exceeded 2 restarts in 10m, restarting in 8m20s when the interval ends"),
                expected_tracker: t(now + 500_000, 1),
            },
            Case {
                name: "delay mode waits at least the delay",
                policy: policy(1, 60, 5, RestartMode::Delay),
                job_type: JobType::Service,
                exit: exited(1),
                tracker: t(now - 59_000, 1),
                now_ms: now,
                jitter: 0.0,
                expected: restart(5_000, "exceeded 1 restarts in 1m, restarting in 5s when the interval ends"),
                expected_tracker: t(now + 5_000, 1),
            },
        ];
        for case in cases {
            let (decision, tracker) = decide_restart(&case.policy, case.job_type, &case.exit, case.tracker, case.now_ms, case.jitter);
            assert_eq!(decision, case.expected, "{}", case.name);
            assert_eq!(tracker, case.expected_tracker, "{}", case.name);
        }
    }
}
