//! The phi-accrual failure detector (Hayashibara et al., 2004; as in Akka and Cassandra).
//!
//! Instead of a yes/no timeout, the detector turns the time since a node's last heartbeat into a
//! suspicion level `phi` that grows with the silence and adapts to how regular the node's heartbeats
//! have been. Per node it keeps a bounded window (the newest [`PhiConfig::window`] samples) of heartbeat
//! inter-arrival times, with their mean `μ` and standard deviation `σ`:
//!
//! ```text
//!  σ'        = max(σ, min_stddev)
//!  μ'        = μ + acceptable_pause                       (a pause this long is not suspicious)
//!  t         = now − last heartbeat
//!  P_later(t) = 1 − F(t)  where F is the normal CDF with mean μ' and deviation σ'
//!  phi(t)    = −log10(P_later(t))
//! ```
//!
//! `phi = 1` means a 10 % chance that a heartbeat still comes, `phi = 8` one in 10⁸. Like Akka, the
//! normal CDF uses the logistic approximation `F(t) ≈ 1 / (1 + e^(−y·(1.5976 + 0.070566·y²)))` with
//! `y = (t − μ') / σ'`, which gives `phi = log10(1 + e^z)`, `z = y·(1.5976 + 0.070566·y²)`; it is
//! computed in log space so it stays finite for long silences, and capped at [`MAX_PHI`].
//!
//! Until the window holds [`PhiConfig::min_samples`] samples, the expected heartbeat interval stands in
//! for `μ` (and `σ` is `min_stddev`). Inter-arrival times longer than [`PhiConfig::max_sample`] are not
//! samples of normal operation (the node was down, or the agent restarted) and are left out.
//!
//! The detector is pure: every function takes the current [`Instant`]; nothing here reads a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Parameters of the detector; shared by every node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhiConfig {
    /// Inter-arrival times kept per node (the oldest are dropped).
    pub window: usize,
    /// Below this many samples, `expected_interval` is the mean.
    pub min_samples: usize,
    /// The interval agents are asked to heartbeat at.
    pub expected_interval: Duration,
    /// Lower bound of the standard deviation, so very regular heartbeats do not make a few
    /// milliseconds of delay look fatal.
    pub min_stddev: Duration,
    /// Added to the mean: a pause this long (GC, a busy host) raises no suspicion.
    pub acceptable_pause: Duration,
    /// Longer inter-arrival times are not recorded.
    pub max_sample: Duration,
}

impl PhiConfig {
    /// Defaults for agents heartbeating every `interval`.
    pub fn for_interval(interval: Duration) -> PhiConfig {
        PhiConfig {
            window: 100,
            min_samples: 3,
            expected_interval: interval,
            min_stddev: Duration::from_millis(100),
            acceptable_pause: interval,
            max_sample: Duration::from_secs(10),
        }
    }
}

/// The heartbeat history of one node.
///
/// Invariant: `sum` and `sum_squares` are the sum and the sum of squares (in milliseconds) of `samples`.
#[derive(Clone, Debug)]
pub struct HeartbeatHistory {
    last: Instant,
    samples: VecDeque<f64>,
    sum: f64,
    sum_squares: f64,
}

impl HeartbeatHistory {
    /// A history whose last heartbeat (or, after a server start, the moment watching began) is `at`.
    pub fn new(at: Instant) -> HeartbeatHistory {
        HeartbeatHistory { last: at, samples: VecDeque::new(), sum: 0.0, sum_squares: 0.0 }
    }

    /// Records a heartbeat that arrived at `at`. A heartbeat older than the last one records nothing.
    pub fn heartbeat(&mut self, at: Instant, config: &PhiConfig) {
        let Some(interval) = at.checked_duration_since(self.last) else { return };
        self.last = at;
        if interval > config.max_sample || config.window == 0 {
            return;
        }
        let millis = interval.as_secs_f64() * 1000.0;
        while self.samples.len() >= config.window {
            if let Some(oldest) = self.samples.pop_front() {
                self.sum -= oldest;
                self.sum_squares -= oldest * oldest;
            }
        }
        self.samples.push_back(millis);
        self.sum += millis;
        self.sum_squares += millis * millis;
    }

    /// Time since the last heartbeat.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }

    /// Samples in the window.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// The suspicion level at `now` (see the module docs), between 0 and [`MAX_PHI`].
    pub fn phi(&self, now: Instant, config: &PhiConfig) -> f64 {
        let (mean, stddev) = self.distribution(config);
        let elapsed = self.silence(now).as_secs_f64() * 1000.0;
        phi(elapsed, mean + config.acceptable_pause.as_secs_f64() * 1000.0, stddev)
    }

    /// Mean and standard deviation (milliseconds) used for `phi`.
    fn distribution(&self, config: &PhiConfig) -> (f64, f64) {
        let min_stddev = config.min_stddev.as_secs_f64() * 1000.0;
        let count = self.samples.len();
        if count < config.min_samples.max(1) {
            return (config.expected_interval.as_secs_f64() * 1000.0, min_stddev);
        }
        let mean = self.sum / count as f64;
        // Rounding can make the variance slightly negative for identical samples.
        let variance = (self.sum_squares / count as f64 - mean * mean).max(0.0);
        (mean, variance.sqrt().max(min_stddev))
    }
}

/// Phi is capped here: beyond it the number means nothing more (and it stays printable).
pub const MAX_PHI: f64 = 1000.0;

/// `-log10(P_later(elapsed))` for a normal distribution (logistic approximation), all in milliseconds.
fn phi(elapsed: f64, mean: f64, stddev: f64) -> f64 {
    let stddev = if stddev.is_finite() && stddev > 0.0 { stddev } else { 1.0 };
    let y = (elapsed - mean) / stddev;
    let z = y * (1.5976 + 0.070566 * y * y);
    // log10(1 + e^z), stable for large |z|.
    let ln = if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() };
    let value = ln / std::f64::consts::LN_10;
    if value.is_nan() { 0.0 } else { value.clamp(0.0, MAX_PHI) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config(interval: Duration) -> PhiConfig {
        PhiConfig::for_interval(interval)
    }

    /// A history fed heartbeats at the given offsets (milliseconds after `start`).
    fn history(start: Instant, offsets: impl IntoIterator<Item = u64>, config: &PhiConfig) -> HeartbeatHistory {
        let mut history = HeartbeatHistory::new(start);
        for offset in offsets {
            history.heartbeat(start + Duration::from_millis(offset), config);
        }
        history
    }

    /// The first silence (10 ms steps) after the last heartbeat at which phi exceeds `threshold`.
    fn crossing(history: &HeartbeatHistory, config: &PhiConfig, threshold: f64) -> Duration {
        let last = history.last;
        (0..10_000u64)
            .map(|step| Duration::from_millis(step * 10))
            .find(|silence| history.phi(last + *silence, config) > threshold)
            .expect("phi crosses the threshold within 100 s")
    }

    #[test]
    fn steady_heartbeats_are_suspected_after_about_three_intervals() {
        let config = config(SECOND);
        let start = Instant::now();
        let steady = history(start, (1..=20).map(|i| i * 1000), &config);
        let last = start + Duration::from_secs(20);
        assert!(steady.phi(last + SECOND, &config) < 1.0, "{}", steady.phi(last + SECOND, &config));
        assert!(steady.phi(last + 3 * SECOND, &config) > 8.0, "{}", steady.phi(last + 3 * SECOND, &config));
        let cross = crossing(&steady, &config, 8.0);
        assert!(cross > 2 * SECOND && cross < 3 * SECOND, "phi > 8 after {cross:?}");
    }

    #[test]
    fn phi_grows_with_the_silence() {
        let config = config(SECOND);
        let start = Instant::now();
        let steady = history(start, (1..=10).map(|i| i * 1000), &config);
        let last = start + Duration::from_secs(10);
        let values: Vec<f64> = (0..60).map(|step| steady.phi(last + Duration::from_millis(step * 100), &config)).collect();
        assert!(values.windows(2).all(|pair| pair[0] <= pair[1]), "{values:?}");
        assert!(values.iter().all(|value| value.is_finite() && *value >= 0.0));
        // A silence of hours stays finite.
        assert!(steady.phi(last + Duration::from_secs(7200), &config).is_finite());
    }

    #[test]
    fn jittery_heartbeats_get_more_tolerance() {
        let config = config(SECOND);
        let start = Instant::now();
        let steady = history(start, (1..=40).map(|i| i * 1000), &config);
        // Intervals alternating 600 ms and 1400 ms: the same mean, a deviation of 400 ms.
        let mut at = 0;
        let jittery = history(
            start,
            (0..40).map(|i| {
                at += if i % 2 == 0 { 600 } else { 1400 };
                at
            }),
            &config,
        );
        let steady_cross = crossing(&steady, &config, 8.0);
        let jittery_cross = crossing(&jittery, &config, 8.0);
        assert!(jittery_cross > steady_cross + SECOND, "steady {steady_cross:?}, jittery {jittery_cross:?}");
        // A 2.5 s gap is alarming for the steady node, not for the jittery one.
        assert!(steady.phi(steady.last + Duration::from_millis(2700), &config) > 8.0);
        assert!(jittery.phi(jittery.last + Duration::from_millis(2700), &config) < 8.0);
    }

    #[test]
    fn a_long_pause_after_steady_beats_crosses_the_threshold() {
        let config = config(Duration::from_millis(500));
        let start = Instant::now();
        let steady = history(start, (1..=100).map(|i| i * 500), &config);
        let last = steady.last;
        for silence_ms in [0, 250, 500, 750, 1000] {
            let value = steady.phi(last + Duration::from_millis(silence_ms), &config);
            assert!(value < 8.0, "phi {value} after {silence_ms} ms");
        }
        let value = steady.phi(last + Duration::from_millis(2000), &config);
        assert!(value > 8.0, "phi {value} after 2 s");
        let cross = crossing(&steady, &config, 8.0);
        assert!(cross >= Duration::from_millis(1400) && cross <= Duration::from_millis(1700), "{cross:?}");
    }

    #[test]
    fn before_enough_samples_the_interval_is_the_mean() {
        let config = config(Duration::from_millis(500));
        let start = Instant::now();
        let fresh = HeartbeatHistory::new(start);
        let one = history(start, [500], &config);
        let cross_fresh = crossing(&fresh, &config, 8.0);
        // One sample of 500 ms: still the configured interval.
        assert_eq!(crossing(&one, &config, 8.0), cross_fresh);
        assert!(cross_fresh >= Duration::from_millis(1400) && cross_fresh <= Duration::from_millis(1700), "{cross_fresh:?}");
        // Three slow samples (2 s apart) take over from the configured 500 ms.
        let slow = history(start, [2000, 4000, 6000], &config);
        assert!(crossing(&slow, &config, 8.0) > cross_fresh + SECOND);
    }

    #[test]
    fn the_window_is_bounded_and_long_gaps_are_not_samples() {
        let config = PhiConfig { window: 5, ..config(SECOND) };
        let start = Instant::now();
        // Slow beats first, then five fast ones push them out of the window.
        let mut offsets: Vec<u64> = (1..=5).map(|i| i * 3000).collect();
        offsets.extend((1..=5).map(|i| 15_000 + i * 200));
        let history = history(start, offsets, &config);
        assert_eq!(history.samples(), 5);
        assert_eq!(history.distribution(&config).0, 200.0);

        // A 20 s gap (longer than max_sample) is not recorded, but resets the silence.
        let mut gapped = HeartbeatHistory::new(start);
        gapped.heartbeat(start + Duration::from_secs(20), &config);
        assert_eq!(gapped.samples(), 0);
        assert_eq!(gapped.silence(start + Duration::from_secs(21)), SECOND);
        // A heartbeat from the past changes nothing.
        gapped.heartbeat(start, &config);
        assert_eq!(gapped.silence(start + Duration::from_secs(21)), SECOND);
    }

    #[test]
    fn degenerate_inputs_stay_finite() {
        assert_eq!(phi(0.0, 0.0, 0.0), phi(0.0, 0.0, 1.0));
        assert_eq!(phi(f64::MAX, 0.0, 1.0), MAX_PHI);
        assert_eq!(phi(f64::NAN, 0.0, 1.0), 0.0);
        assert!((phi(1000.0, 1000.0, 100.0) - std::f64::consts::LOG10_2).abs() < 1e-9);
    }
}
