//! `update:` (job and group level; a group's values win field by field): how a new job version replaces a
//! group's running allocations (Nomad's `update` block). See ARCHITECTURE.md, "Deployments".

use serde::{Deserialize, Serialize};

use crate::Duration;

/// The `update:` block as written; every field optional so that a group's block can override the job's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// How many allocations are replaced at once (default 1); 0: no deployment, every allocation is replaced at
    /// once as without `update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// What makes a new allocation healthy (default `checks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckMode>,
    /// How long it must stay so (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy_time: Option<Duration>,
    /// A new allocation not healthy this long after it was placed is unhealthy (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_deadline: Option<Duration>,
    /// The deployment fails when no allocation became healthy for this long (default 10m); 0: it fails at the
    /// first unhealthy allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
    /// A failed deployment rolls back to the newest stable version (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert: Option<bool>,
    /// On a destructive change, this many new allocations are first placed beside the old ones (default 0);
    /// the rest roll once they are promoted. `canary` equal to `count` is a blue/green deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// Promote once every canary is healthy, without `davit deployment promote` (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    /// The services' tags of a canary until it is promoted (default: the services' own tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_tags: Option<Vec<String>>,
    /// Kubernetes' terms, instead of `max_parallel`: how many new allocations may run beside the old ones
    /// (a count or a percent of `count`, rounded up)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<CountOrPercent>,
    /// …and how many allocations may be missing while they are replaced (rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<CountOrPercent>,
    /// Canary analysis: the canaries' error rate and latency through the proxies, compared with the stable
    /// instances' while the canaries wait for promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// The share of the service's requests (percent, 1–99) the proxies send to the canaries until they are
    /// promoted, whatever their number (on top of the service's balancing algorithm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<u32>,
}

/// `update.analysis`: every `interval`, the canaries' requests through every proxy since the last interval are
/// compared with the stable instances'; an interval with fewer than `min_requests` canary requests is not judged
/// but goes on until there are enough. After `samples` failing intervals the deployment fails; after `samples` passing ones the canaries
/// count as healthy for promotion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    #[serde(default = "AnalysisSpec::default_interval")]
    pub interval: Duration,
    #[serde(default = "AnalysisSpec::default_samples")]
    pub samples: u32,
    /// The canaries' error rate (connect failures, broken connections and 5xx) may not pass this (e.g. `1%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Percent>,
    /// …nor the stable instances' by more than this (e.g. `0.5%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<Percent>,
    /// The canaries' p99 latency may not pass the stable instances' times this (e.g. 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_p99_ratio: Option<f64>,
    #[serde(default = "AnalysisSpec::default_min_requests")]
    pub min_requests: u64,
}

impl AnalysisSpec {
    fn default_interval() -> Duration {
        Duration::from_secs(10)
    }
    fn default_samples() -> u32 {
        3
    }
    fn default_min_requests() -> u64 {
        50
    }
}

/// A percentage, written `1%`, `0.5%` or as a number of percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(pub f64);

impl Percent {
    /// As a fraction of 1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Percent, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Percent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a percentage from 0% to 100% (e.g. \"1%\" or \"0.5%\")")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Percent, E> {
                self.visit_f64(n as f64)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Percent, E> {
                self.visit_f64(n as f64)
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Percent, E> {
                if (0.0..=100.0).contains(&n) { Ok(Percent(n)) } else { Err(E::invalid_value(serde::de::Unexpected::Float(n), &self)) }
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Percent, E> {
                let number = text.trim().strip_suffix('%').unwrap_or(text).trim();
                match number.parse::<f64>() {
                    Ok(n) if (0.0..=100.0).contains(&n) => Ok(Percent(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(text), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A number of allocations, or a percent of the group's count (`2`, `"25%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountOrPercent {
    Count(u32),
    Percent(u32),
}

impl CountOrPercent {
    /// The number for a group of `count`: a percent rounds up (`round_up`) or down, as Kubernetes does for
    /// `maxSurge` and `maxUnavailable`.
    pub fn of(self, count: u32, round_up: bool) -> u32 {
        match self {
            CountOrPercent::Count(n) => n,
            CountOrPercent::Percent(percent) => {
                let scaled = u64::from(count) * u64::from(percent);
                let n = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

impl std::fmt::Display for CountOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountOrPercent::Count(n) => write!(f, "{n}"),
            CountOrPercent::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl Serialize for CountOrPercent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CountOrPercent::Count(n) => serializer.serialize_u32(*n),
            CountOrPercent::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for CountOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<CountOrPercent, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = CountOrPercent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a count (e.g. 2) or a percent of count from 0% to 100% (e.g. \"25%\")")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<CountOrPercent, E> {
                u32::try_from(n).map(CountOrPercent::Count).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<CountOrPercent, E> {
                Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<CountOrPercent, E> {
                let invalid = || E::invalid_value(serde::de::Unexpected::Str(text), &self);
                match text.trim().strip_suffix('%') {
                    Some(percent) => match percent.trim().parse::<u32>() {
                        Ok(percent) if percent <= 100 => Ok(CountOrPercent::Percent(percent)),
                        _ => Err(invalid()),
                    },
                    None => text.trim().parse::<u32>().map(CountOrPercent::Count).map_err(|_| invalid()),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What makes a new allocation of a deployment healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckMode {
    /// Every task runs and every health check passes.
    #[default]
    Checks,
    /// Every task runs (checks are not waited for).
    TaskStates,
    /// An operator (or a tool) says so: `davit deployment health`.
    Manual,
}

impl HealthCheckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckMode::Checks => "checks",
            HealthCheckMode::TaskStates => "task_states",
            HealthCheckMode::Manual => "manual",
        }
    }
}

/// The update strategy of one group: the job's and the group's `update:` merged, defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateStrategy {
    /// How many allocations are stopped and replaced at once (with `max_surge`/`max_unavailable`: the
    /// unavailable number).
    pub max_parallel: u32,
    /// How many new allocations are placed beside old ones at once, the old one stopped when the new one is
    /// healthy (`max_surge`; 0 with `max_parallel`).
    pub max_surge: u32,
    pub health_check: HealthCheckMode,
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
    /// Zero: the first unhealthy allocation fails the deployment.
    pub progress_deadline: Duration,
    pub auto_revert: bool,
    pub canary: u32,
    pub auto_promote: bool,
    /// Empty: a canary's services keep their tags.
    pub canary_tags: Vec<String>,
    pub analysis: Option<AnalysisSpec>,
    /// Percent of the service's requests sent to unpromoted canaries (0: as many as their number gets).
    pub canary_weight: u32,
}

impl Default for UpdateStrategy {
    fn default() -> UpdateStrategy {
        UpdateStrategy {
            max_parallel: 1,
            health_check: HealthCheckMode::Checks,
            min_healthy_time: Duration::from_secs(10),
            healthy_deadline: Duration::from_secs(300),
            progress_deadline: Duration::from_secs(600),
            auto_revert: false,
            max_surge: 0,
            canary: 0,
            auto_promote: false,
            canary_tags: Vec::new(),
            analysis: None,
            canary_weight: 0,
        }
    }
}

impl UpdateStrategy {
    /// The strategy of a group of `count` from the job's `update:` and the group's; `None` when neither has
    /// one, or `max_parallel` is 0: no deployment.
    ///
    /// `max_surge` or `max_unavailable` written in either block replaces `max_parallel` (Kubernetes' defaults
    /// for the one not written: 25 %, surge rounded up, unavailable down; when both come to 0, one at a time).
    pub fn resolve(job: Option<&UpdateSpec>, group: Option<&UpdateSpec>, count: u32) -> Option<UpdateStrategy> {
        if job.is_none() && group.is_none() {
            return None;
        }
        fn pick<T>(job: Option<&UpdateSpec>, group: Option<&UpdateSpec>, field: impl Fn(&UpdateSpec) -> Option<T>) -> Option<T> {
            group.and_then(&field).or_else(|| job.and_then(&field))
        }
        let defaults = UpdateStrategy::default();
        let surge = pick(job, group, |u| u.max_surge);
        let unavailable = pick(job, group, |u| u.max_unavailable);
        let (max_parallel, max_surge) = if surge.is_some() || unavailable.is_some() {
            let quarter = CountOrPercent::Percent(25);
            match (unavailable.unwrap_or(quarter).of(count, false), surge.unwrap_or(quarter).of(count, true)) {
                // Both round to 0 (a small count): one at a time, as Kubernetes does.
                (0, 0) => (1, 0),
                both => both,
            }
        } else {
            (pick(job, group, |u| u.max_parallel).unwrap_or(defaults.max_parallel), 0)
        };
        let strategy = UpdateStrategy {
            max_parallel,
            max_surge,
            health_check: pick(job, group, |u| u.health_check).unwrap_or_default(),
            min_healthy_time: pick(job, group, |u| u.min_healthy_time).unwrap_or(defaults.min_healthy_time),
            healthy_deadline: pick(job, group, |u| u.healthy_deadline).unwrap_or(defaults.healthy_deadline),
            progress_deadline: pick(job, group, |u| u.progress_deadline).unwrap_or(defaults.progress_deadline),
            auto_revert: pick(job, group, |u| u.auto_revert).unwrap_or(false),
            canary: pick(job, group, |u| u.canary).unwrap_or(0),
            auto_promote: pick(job, group, |u| u.auto_promote).unwrap_or(false),
            canary_tags: pick(job, group, |u| u.canary_tags.clone()).unwrap_or_default(),
            analysis: pick(job, group, |u| u.analysis.clone()),
            canary_weight: pick(job, group, |u| u.canary_weight).unwrap_or(0),
        };
        (strategy.max_parallel > 0 || strategy.max_surge > 0).then_some(strategy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_values_win_field_by_field_and_defaults_fill_the_rest() {
        let job = UpdateSpec { max_parallel: Some(2), auto_revert: Some(true), ..Default::default() };
        let group = UpdateSpec { min_healthy_time: Some(Duration::from_secs(1)), auto_revert: Some(false), ..Default::default() };
        let strategy = UpdateStrategy::resolve(Some(&job), Some(&group), 4).unwrap();
        assert_eq!(strategy.max_parallel, 2);
        assert_eq!(strategy.min_healthy_time, Duration::from_secs(1));
        assert!(!strategy.auto_revert);
        assert_eq!(strategy.healthy_deadline, Duration::from_secs(300));
        assert_eq!(UpdateStrategy::resolve(None, None, 4), None);
        let off = UpdateSpec { max_parallel: Some(0), ..Default::default() };
        assert_eq!(UpdateStrategy::resolve(Some(&off), None, 4), None, "max_parallel 0: no deployment");
    }

    #[test]
    fn surge_and_unavailable_round_as_kubernetes_does() {
        let surge = UpdateSpec { max_surge: Some(CountOrPercent::Percent(25)), ..Default::default() };
        let strategy = UpdateStrategy::resolve(Some(&surge), None, 10).unwrap();
        // Surge 25 % of 10 rounds up to 3; unavailable defaults to 25 %, rounded down to 2.
        assert_eq!((strategy.max_surge, strategy.max_parallel), (3, 2));
        let exact =
            UpdateSpec { max_surge: Some(CountOrPercent::Count(1)), max_unavailable: Some(CountOrPercent::Count(0)), ..Default::default() };
        let strategy = UpdateStrategy::resolve(None, Some(&exact), 3).unwrap();
        assert_eq!((strategy.max_surge, strategy.max_parallel), (1, 0));
        let small = UpdateSpec {
            max_surge: Some(CountOrPercent::Percent(0)),
            max_unavailable: Some(CountOrPercent::Percent(10)),
            ..Default::default()
        };
        let strategy = UpdateStrategy::resolve(None, Some(&small), 3).unwrap();
        assert_eq!((strategy.max_surge, strategy.max_parallel), (0, 1), "both 0 for 3: one at a time");
    }
}
