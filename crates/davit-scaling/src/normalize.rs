//! From the metrics' proposal to the count to set (`reconcileAutoscaler` and its normalisation in
//! Kubernetes' `horizontal.go`):
//!
//! - a count outside `min..=max` is brought back first; a group at 0 with `min` above 0 is left alone;
//! - without `behavior` (the legacy path): the highest recommendation of the last 5 minutes (downscale
//!   stabilisation), then `min`, `max` and at most `max(2 × current, 4)`;
//! - with `behavior`: the recommendation is kept between the lowest of the scale-up window and the highest of
//!   the scale-down window, then limited by the policies (the instances added or removed within each policy's
//!   period, from the scale events) chosen by `select_policy`, then by `min`/`max`.
//!
//! The caller records the returned recommendation (and, with `behavior`, the scale event) in its [`History`].

use davit_api::spec::{BehaviorSpec, ScalingPolicyType, ScalingRulesSpec, SelectPolicy};
use serde::{Deserialize, Serialize};

/// Kubernetes' `--horizontal-pod-autoscaler-downscale-stabilization` (s).
pub const DEFAULT_DOWNSCALE_WINDOW: f64 = 300.0;

/// One direction's rules, with Kubernetes' defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Seconds.
    pub stabilization_window: f64,
    pub select: SelectPolicy,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub kind: ScalingPolicyType,
    pub value: u32,
    /// Seconds.
    pub period: f64,
}

/// `behavior:` with defaults: up — no window, the larger of 4 instances or 100 % per 15 s; down — a 5-minute
/// window, 100 % per 15 s.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    pub scale_up: Rules,
    pub scale_down: Rules,
}

impl Behavior {
    pub fn resolve(spec: &BehaviorSpec) -> Behavior {
        let up_default = vec![
            Policy { kind: ScalingPolicyType::Pods, value: 4, period: 15.0 },
            Policy { kind: ScalingPolicyType::Percent, value: 100, period: 15.0 },
        ];
        let down_default = vec![Policy { kind: ScalingPolicyType::Percent, value: 100, period: 15.0 }];
        Behavior {
            scale_up: resolve_rules(spec.scale_up.as_ref(), 0.0, up_default),
            scale_down: resolve_rules(spec.scale_down.as_ref(), DEFAULT_DOWNSCALE_WINDOW, down_default),
        }
    }

    /// The longest time a recommendation or a scale event matters (for pruning a history).
    pub fn memory(&self) -> f64 {
        let periods = self.scale_up.policies.iter().chain(&self.scale_down.policies).map(|policy| policy.period);
        periods.chain([self.scale_up.stabilization_window, self.scale_down.stabilization_window]).fold(0.0, f64::max)
    }
}

fn resolve_rules(spec: Option<&ScalingRulesSpec>, window: f64, policies: Vec<Policy>) -> Rules {
    let spec = spec.cloned().unwrap_or_default();
    Rules {
        stabilization_window: spec.stabilization_window.map_or(window, |window| window.as_std().as_secs_f64()),
        select: spec.select_policy.unwrap_or(SelectPolicy::Max),
        policies: match spec.policies {
            Some(written) if !written.is_empty() => written
                .iter()
                .map(|policy| Policy { kind: policy.kind, value: policy.value, period: policy.period.as_std().as_secs_f64() })
                .collect(),
            _ => policies,
        },
    }
}

/// A past recommendation (the proposal before normalisation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub replicas: u32,
    pub seconds_ago: f64,
}

/// A past change of the count by the autoscaler.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub change: u32,
    pub seconds_ago: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    #[serde(default)]
    pub recommendations: Vec<Recommendation>,
    #[serde(default)]
    pub scale_up_events: Vec<ScaleEvent>,
    #[serde(default)]
    pub scale_down_events: Vec<ScaleEvent>,
}

/// What set the final count (Kubernetes' condition reasons).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The proposal, within every limit.
    DesiredWithinRange,
    /// Capped by `max`.
    TooManyReplicas,
    /// Raised to `min`.
    TooFewReplicas,
    /// Capped by the scale-up rate (`max(2 × current, 4)` or the scale-up policies).
    ScaleUpLimit,
    /// Held by the scale-down policies.
    ScaleDownLimit,
    /// The count was above `max`: brought down to it.
    AboveMax,
    /// The count was below `min`: brought up to it.
    BelowMin,
    /// The group runs 0 instances and `min` is above 0: the autoscaler leaves it alone.
    ScalingDisabled,
    /// No metric could be read, or some could not and the rest would scale down: nothing changes.
    InvalidMetrics,
}

impl Limit {
    pub fn message(&self) -> &'static str {
        match self {
            Limit::DesiredWithinRange => "the desired count is within the acceptable range",
            Limit::TooManyReplicas => "the desired count is more than the maximum count",
            Limit::TooFewReplicas => "the desired count is less than the minimum count",
            Limit::ScaleUpLimit => "the desired count is increasing faster than the maximum scale rate",
            Limit::ScaleDownLimit => "the desired count is decreasing faster than the maximum scale rate",
            Limit::AboveMax => "the current count is above max",
            Limit::BelowMin => "the current count is below min",
            Limit::ScalingDisabled => "scaling is disabled since the group's count is zero",
            Limit::InvalidMetrics => "invalid metrics: the count is kept",
        }
    }
}

/// The normalisation's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The count to set.
    pub desired: u32,
    /// The recommendation after stabilisation, before rate limits and min/max.
    pub stabilized: u32,
    pub limited_by: Limit,
    /// `scale_up_stabilized` / `scale_down_stabilized` when the window changed the recommendation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization: Option<String>,
    /// The recommendation to record in the history (the proposal, before stabilisation), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<u32>,
}

impl Decision {
    fn fixed(desired: u32, limited_by: Limit) -> Decision {
        Decision { desired, stabilized: desired, limited_by, stabilization: None, record: None }
    }
}

/// The count to set, from the group's `current` count, its bounds, the metrics' `proposal` (`None` when the
/// metrics are invalid), `behavior` (`None`: the legacy path) and the history.
pub fn decide(current: u32, min: u32, max: u32, proposal: Option<u32>, behavior: Option<&Behavior>, history: &History) -> Decision {
    if current == 0 && min != 0 {
        return Decision::fixed(0, Limit::ScalingDisabled);
    }
    if current > max {
        return Decision::fixed(max, Limit::AboveMax);
    }
    if current < min {
        return Decision::fixed(min, Limit::BelowMin);
    }
    let Some(proposal) = proposal else {
        return Decision::fixed(current, Limit::InvalidMetrics);
    };
    match behavior {
        None => legacy(current, min, max, proposal, history),
        Some(behavior) => with_behavior(current, min, max, proposal, behavior, history),
    }
}

/// `normalizeDesiredReplicas`: downscale stabilisation, then `convertDesiredReplicasWithRules`.
fn legacy(current: u32, min: u32, max: u32, proposal: u32, history: &History) -> Decision {
    let stabilized = history
        .recommendations
        .iter()
        .filter(|recommendation| recommendation.seconds_ago <= DEFAULT_DOWNSCALE_WINDOW)
        .map(|recommendation| recommendation.replicas)
        .fold(proposal, u32::max);
    let stabilization = (stabilized != proposal).then(|| "scale_down_stabilized".to_string());
    let scale_up_limit = (2.0 * f64::from(current)).max(4.0) as u32;
    let (maximum, above) = if max > scale_up_limit { (scale_up_limit, Limit::ScaleUpLimit) } else { (max, Limit::TooManyReplicas) };
    let (desired, limited_by) = if stabilized < min {
        (min, Limit::TooFewReplicas)
    } else if stabilized > maximum {
        (maximum, above)
    } else {
        (stabilized, Limit::DesiredWithinRange)
    };
    Decision { desired, stabilized, limited_by, stabilization, record: Some(proposal) }
}

/// `normalizeDesiredReplicasWithBehaviors`: `stabilizeRecommendationWithBehaviors`, then
/// `convertDesiredReplicasWithBehaviorRate`.
fn with_behavior(current: u32, min: u32, max: u32, proposal: u32, behavior: &Behavior, history: &History) -> Decision {
    let (mut up, mut down) = (proposal, proposal);
    for recommendation in &history.recommendations {
        if recommendation.seconds_ago < behavior.scale_up.stabilization_window {
            up = up.min(recommendation.replicas);
        }
        if recommendation.seconds_ago < behavior.scale_down.stabilization_window {
            down = down.max(recommendation.replicas);
        }
    }
    let stabilized = current.max(up).min(down);
    let stabilization =
        (stabilized != proposal).then(|| if proposal >= current { "scale_up_stabilized" } else { "scale_down_stabilized" }.to_string());
    let (desired, limited_by) = if stabilized > current {
        let limit =
            scale_up_limit(current, &history.scale_up_events, &history.scale_down_events, &behavior.scale_up).max(i64::from(current));
        let (maximum, reason) =
            if i64::from(max) > limit { (limit, Limit::ScaleUpLimit) } else { (i64::from(max), Limit::TooManyReplicas) };
        if i64::from(stabilized) > maximum { (maximum as u32, reason) } else { (stabilized, Limit::DesiredWithinRange) }
    } else if stabilized < current {
        let limit =
            scale_down_limit(current, &history.scale_up_events, &history.scale_down_events, &behavior.scale_down).min(i64::from(current));
        let (minimum, reason) =
            if i64::from(min) < limit { (limit, Limit::ScaleDownLimit) } else { (i64::from(min), Limit::TooFewReplicas) };
        if i64::from(stabilized) < minimum { (minimum as u32, reason) } else { (stabilized, Limit::DesiredWithinRange) }
    } else {
        (stabilized, Limit::DesiredWithinRange)
    };
    Decision { desired, stabilized, limited_by, stabilization, record: Some(proposal) }
}

/// The instances added (or removed) within the last `period` seconds.
fn change_within(period: f64, events: &[ScaleEvent]) -> i64 {
    events.iter().filter(|event| event.seconds_ago < period).map(|event| i64::from(event.change)).sum()
}

/// `calculateScaleUpLimitWithScalingRules`: the most instances the policies allow now.
fn scale_up_limit(current: u32, up_events: &[ScaleEvent], down_events: &[ScaleEvent], rules: &Rules) -> i64 {
    let pick: fn(i64, i64) -> i64 = match rules.select {
        SelectPolicy::Disabled => return i64::from(current),
        SelectPolicy::Min => i64::min,
        SelectPolicy::Max => i64::max,
    };
    let mut result = if rules.select == SelectPolicy::Min { i64::from(i32::MAX) } else { i64::from(i32::MIN) };
    for policy in &rules.policies {
        let start = i64::from(current) - change_within(policy.period, up_events) + change_within(policy.period, down_events);
        let proposed = match policy.kind {
            ScalingPolicyType::Pods => start + i64::from(policy.value),
            ScalingPolicyType::Percent => (start as f64 * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i64,
        };
        result = pick(result, proposed);
    }
    result
}

/// `calculateScaleDownLimitWithBehaviors`: the fewest instances the policies allow now.
fn scale_down_limit(current: u32, up_events: &[ScaleEvent], down_events: &[ScaleEvent], rules: &Rules) -> i64 {
    let pick: fn(i64, i64) -> i64 = match rules.select {
        SelectPolicy::Disabled => return i64::from(current),
        SelectPolicy::Min => i64::max,
        SelectPolicy::Max => i64::min,
    };
    let mut result = if rules.select == SelectPolicy::Min { i64::from(i32::MIN) } else { i64::from(i32::MAX) };
    for policy in &rules.policies {
        let start = i64::from(current) - change_within(policy.period, up_events) + change_within(policy.period, down_events);
        let proposed = match policy.kind {
            ScalingPolicyType::Pods => start - i64::from(policy.value),
            // Go's int32(float64) truncates toward zero.
            ScalingPolicyType::Percent => (start as f64 * (1.0 - f64::from(policy.value) / 100.0)).trunc() as i64,
        };
        result = pick(result, proposed);
    }
    result
}

/// The largest proposal of several metrics (`computeReplicasForMetrics`): `None` (keep the count) when every
/// metric failed, or when some failed and the others would scale down.
pub fn combine(current: u32, proposals: &[Option<u32>]) -> Option<u32> {
    let valid: Vec<u32> = proposals.iter().flatten().copied().collect();
    let invalid = proposals.len() - valid.len();
    let replicas = valid.iter().copied().max().unwrap_or(0);
    if invalid >= proposals.len() || (invalid > 0 && replicas < current) { None } else { Some(replicas) }
}

#[cfg(test)]
mod tests {
    use davit_api::spec::ScalingPolicySpec;

    use super::*;

    fn recommendations(list: &[(u32, f64)]) -> History {
        History {
            recommendations: list.iter().map(|&(replicas, seconds_ago)| Recommendation { replicas, seconds_ago }).collect(),
            ..History::default()
        }
    }

    fn events(list: &[(u32, f64)]) -> Vec<ScaleEvent> {
        list.iter().map(|&(change, seconds_ago)| ScaleEvent { change, seconds_ago }).collect()
    }

    fn behavior(up: Option<ScalingRulesSpec>, down: Option<ScalingRulesSpec>) -> Behavior {
        Behavior::resolve(&BehaviorSpec { scale_up: up, scale_down: down })
    }

    fn rules(window: Option<u64>, select: Option<SelectPolicy>, policies: &[(ScalingPolicyType, u32, u64)]) -> ScalingRulesSpec {
        ScalingRulesSpec {
            stabilization_window: window.map(davit_api::Duration::from_secs),
            select_policy: select,
            policies: (!policies.is_empty()).then(|| {
                policies
                    .iter()
                    .map(|&(kind, value, period)| ScalingPolicySpec { kind, value, period: davit_api::Duration::from_secs(period) })
                    .collect()
            }),
        }
    }

    fn desired(decision: &Decision) -> (u32, Limit) {
        (decision.desired, decision.limited_by.clone())
    }

    #[test]
    fn the_count_is_brought_into_its_bounds_before_any_metric_counts() {
        let none = History::default();
        assert_eq!(desired(&decide(0, 1, 10, Some(5), None, &none)), (0, Limit::ScalingDisabled));
        assert_eq!(desired(&decide(12, 1, 10, Some(12), None, &none)), (10, Limit::AboveMax));
        assert_eq!(desired(&decide(1, 2, 10, Some(1), None, &none)), (2, Limit::BelowMin));
        assert_eq!(desired(&decide(4, 1, 10, None, None, &none)), (4, Limit::InvalidMetrics));
        assert_eq!(decide(4, 1, 10, None, None, &none).record, None);
    }

    #[test]
    fn without_behavior_the_highest_recommendation_of_five_minutes_wins_and_growth_is_capped() {
        // Scale-down held by a recommendation 60 s old; one exactly 300 s old still counts; 301 s does not.
        let decision = decide(5, 1, 10, Some(2), None, &recommendations(&[(5, 60.0)]));
        assert_eq!((decision.desired, decision.stabilization.as_deref(), decision.record), (5, Some("scale_down_stabilized"), Some(2)));
        assert_eq!(decide(5, 1, 10, Some(2), None, &recommendations(&[(4, 300.0)])).desired, 4);
        assert_eq!(decide(5, 1, 10, Some(2), None, &recommendations(&[(4, 301.0)])).desired, 2);
        // Up at most max(2 × current, 4): 2 → 4, 3 → 6; under a lower max, the max.
        let none = History::default();
        assert_eq!(desired(&decide(2, 1, 20, Some(10), None, &none)), (4, Limit::ScaleUpLimit));
        assert_eq!(desired(&decide(3, 1, 20, Some(10), None, &none)), (6, Limit::ScaleUpLimit));
        assert_eq!(desired(&decide(3, 1, 5, Some(10), None, &none)), (5, Limit::TooManyReplicas));
        assert_eq!(desired(&decide(3, 2, 5, Some(0), None, &none)), (2, Limit::TooFewReplicas));
        assert_eq!(desired(&decide(3, 1, 5, Some(4), None, &none)), (4, Limit::DesiredWithinRange));
    }

    #[test]
    fn default_behavior_adds_the_larger_of_four_instances_and_doubling_per_fifteen_seconds() {
        let defaults = behavior(None, None);
        let none = History::default();
        // From 2: 2 + 4 = 6 beats 2 × 2 = 4.
        assert_eq!(desired(&decide(2, 1, 20, Some(10), Some(&defaults), &none)), (6, Limit::ScaleUpLimit));
        // From 10: doubling (20) beats + 4; the max of 15 is lower.
        assert_eq!(desired(&decide(10, 1, 15, Some(40), Some(&defaults), &none)), (15, Limit::TooManyReplicas));
        // `min` picks the smaller change: 4.
        let min = behavior(Some(rules(None, Some(SelectPolicy::Min), &[])), None);
        assert_eq!(decide(2, 1, 20, Some(10), Some(&min), &none).desired, 4);
        // Instances added within the period count against it: 2 added 10 s ago → the period began at 2 → 6;
        // 20 s ago, outside the 15 s period, they do not.
        let added = |seconds_ago| History { scale_up_events: events(&[(2, seconds_ago)]), ..History::default() };
        assert_eq!(decide(4, 1, 20, Some(20), Some(&defaults), &added(10.0)).desired, 6);
        assert_eq!(decide(4, 1, 20, Some(20), Some(&defaults), &added(20.0)).desired, 8);
        // Disabled: no growth at all.
        let disabled = behavior(Some(rules(None, Some(SelectPolicy::Disabled), &[])), None);
        assert_eq!(desired(&decide(2, 1, 20, Some(10), Some(&disabled), &none)), (2, Limit::ScaleUpLimit));
    }

    #[test]
    fn scale_down_waits_out_its_window_and_then_follows_its_policies() {
        let defaults = behavior(None, None);
        // The default 5-minute window holds the recommendation of 100 s ago.
        let decision = decide(6, 1, 10, Some(2), Some(&defaults), &recommendations(&[(6, 100.0)]));
        assert_eq!((decision.desired, decision.stabilization.as_deref()), (6, Some("scale_down_stabilized")));
        // With no window and the default 100 % per 15 s, straight to the proposal.
        let no_window = behavior(None, Some(rules(Some(0), None, &[])));
        assert_eq!(desired(&decide(6, 1, 10, Some(2), Some(&no_window), &recommendations(&[(6, 100.0)]))), (2, Limit::DesiredWithinRange));
        // One instance per minute: 6 → 5; one removed 30 s ago already → 6 stays.
        let one_a_minute = behavior(None, Some(rules(Some(0), None, &[(ScalingPolicyType::Pods, 1, 60)])));
        assert_eq!(desired(&decide(6, 1, 10, Some(2), Some(&one_a_minute), &History::default())), (5, Limit::ScaleDownLimit));
        let removed = History { scale_down_events: events(&[(1, 30.0)]), ..History::default() };
        assert_eq!(desired(&decide(6, 1, 10, Some(2), Some(&one_a_minute), &removed)), (6, Limit::ScaleDownLimit));
        // 50 % of 5 is 2.5, truncated: down to 2. With `min` between 1 instance and 50 %: the smaller change, 4.
        let half = behavior(None, Some(rules(Some(0), None, &[(ScalingPolicyType::Percent, 50, 60)])));
        assert_eq!(decide(5, 1, 10, Some(1), Some(&half), &History::default()).desired, 2);
        let both = [(ScalingPolicyType::Pods, 1, 60), (ScalingPolicyType::Percent, 50, 60)];
        let smaller = behavior(None, Some(rules(Some(0), Some(SelectPolicy::Min), &both)));
        assert_eq!(decide(5, 1, 10, Some(1), Some(&smaller), &History::default()).desired, 4);
        // The scale-down limit never goes below min.
        assert_eq!(desired(&decide(5, 3, 10, Some(1), Some(&half), &History::default())), (3, Limit::TooFewReplicas));
    }

    #[test]
    fn a_scale_up_window_takes_the_lowest_recent_recommendation() {
        let slow_up = behavior(Some(rules(Some(60), None, &[])), None);
        let decision = decide(2, 1, 10, Some(6), Some(&slow_up), &recommendations(&[(3, 30.0), (8, 90.0)]));
        assert_eq!((decision.desired, decision.stabilized, decision.stabilization.as_deref()), (3, 3, Some("scale_up_stabilized")));
    }

    #[test]
    fn several_metrics_take_the_largest_proposal_and_a_failed_one_never_lets_the_count_fall() {
        assert_eq!(combine(3, &[Some(5), Some(2)]), Some(5));
        assert_eq!(combine(3, &[Some(5), None]), Some(5));
        assert_eq!(combine(4, &[Some(3), None]), None);
        assert_eq!(combine(4, &[None, None]), None);
    }
}
