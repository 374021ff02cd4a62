//! A group's `scaling:` block: the bounds of its count (`min`, `max`) and, with `metrics:`, the autoscaler's
//! settings, named and defaulted as in Kubernetes' HorizontalPodAutoscaler (see ARCHITECTURE.md, "Autoscaler").

use serde::{Deserialize, Serialize};

use crate::Duration;

/// `scaling:`. `min` and `max` bound the count that `davit job scale` and the autoscaler may set; the count a
/// group with this block runs is kept when a new job version is registered (`count` in the file applies to a
/// new job only), so that a redeploy never undoes scaling. With `metrics:` the autoscaler sets the count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSpec {
    /// The autoscaler acts on the group (default true when `metrics:` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Default: 1 (as Kubernetes' `minReplicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    pub max: u32,
    /// What the autoscaler scales on; with several, the largest proposal wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    /// How far from the target a metric must be before the count changes (default 0.1 both ways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<ToleranceSpec>,
    /// Kubernetes' `--horizontal-pod-autoscaler-cpu-initialization-period` (default 5m): an instance started
    /// this recently counts for CPU only once ready with a sample taken after it became so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_initialization_period: Option<Duration>,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay` (default 30s): an unready instance that turned so
    /// within this delay after its start counts as never ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_readiness_delay: Option<Duration>,
    /// Rate limits and stabilisation per direction; without it, Kubernetes' older rules apply (5-minute
    /// downscale stabilisation, at most `max(2 × current, 4)` at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<BehaviorSpec>,
    /// Predictive scaling: a Holt-Winters forecast of each metric's demand, `lead_time` ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictive: Option<PredictiveSpec>,
    /// Scale to zero: with `min: 0`, the group goes to zero instances after this long without a request through
    /// davit's proxies; the first request then starts one (see `activation_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_after: Option<Duration>,
    /// How long a proxy holds a request for a group at zero while an instance starts (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_timeout: Option<Duration>,
}

impl ScalingSpec {
    /// `min`, or Kubernetes' default: 1 (0 for a group written with count 0).
    pub fn min_count(&self, written: u32) -> u32 {
        self.min.unwrap_or(1.min(written))
    }

    /// Whether the autoscaler acts on the group (on metrics, or to scale it to zero).
    pub fn autoscaled(&self) -> bool {
        (!self.metrics.is_empty() || self.scale_to_zero_after.is_some()) && self.enabled != Some(false)
    }

    /// How long the group may be idle before the autoscaler scales it to zero, when it does.
    pub fn scales_to_zero(&self) -> Option<std::time::Duration> {
        self.scale_to_zero_after.filter(|_| self.autoscaled()).map(Duration::as_std)
    }

    /// `activation_timeout`, or its default of 30s.
    pub fn activation_timeout(&self) -> std::time::Duration {
        self.activation_timeout.map_or(std::time::Duration::from_secs(30), Duration::as_std)
    }
}

/// `scaling.predictive`: the autoscaler fits additive Holt-Winters (level, trend, season) to each metric's
/// demand over the last seasons and forecasts it `lead_time` ahead; in `scale` mode a metric asks for at least
/// the instances the forecast needs, so capacity is up before a recurring peak.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictiveSpec {
    /// The length of the recurring pattern (e.g. 24h); forecasts start after two seasons of history.
    pub season: Duration,
    #[serde(default = "PredictiveSpec::default_lead_time")]
    pub lead_time: Duration,
    #[serde(default)]
    pub mode: PredictiveMode,
}

impl PredictiveSpec {
    fn default_lead_time() -> Duration {
        Duration::from_secs(120)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictiveMode {
    /// Forecast and show it (`davit scaling status`), but scale on the measurements only (default).
    #[default]
    ForecastOnly,
    /// Ask for `max(measured, forecast)` instances per metric.
    Scale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// CPU usage as a percent of the CPU the group's tasks ask for (`target_utilization`).
    Cpu,
    /// Memory usage as a percent of the memory the group's tasks ask for (`target_utilization`).
    Memory,
    /// Requests per second per instance through davit's proxies (`target`).
    RequestsPerSecond,
    /// The p99 latency of each instance's requests through davit's proxies (`target`, a duration).
    LatencyP99,
    /// A PromQL query against a Prometheus (`address`, `query`): its value is the group's total, against
    /// `target` per instance.
    Prometheus,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Cpu => "cpu",
            MetricType::Memory => "memory",
            MetricType::RequestsPerSecond => "requests_per_second",
            MetricType::LatencyP99 => "latency_p99",
            MetricType::Prometheus => "prometheus",
        }
    }

    /// A percent of what the tasks ask for (CPU, memory), rather than a value per instance.
    pub fn is_resource(self) -> bool {
        matches!(self, MetricType::Cpu | MetricType::Memory)
    }
}

/// One entry of `metrics:`; which fields apply depends on `type` (checked by `validate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    #[serde(rename = "type")]
    pub kind: MetricType,
    /// `cpu`, `memory`: percent of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_utilization: Option<u32>,
    /// `requests_per_second`, `prometheus`: a number; `latency_p99`: a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<MetricTarget>,
    /// `prometheus`: its base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `prometheus`: the PromQL query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl MetricSpec {
    /// The target in the calculator's milli-units (per instance): requests/s × 1000, latency in µs; the
    /// percent for resource metrics. `None` when the field the type needs is missing.
    pub fn target_milli(&self) -> Option<i64> {
        match self.kind {
            MetricType::Cpu | MetricType::Memory => self.target_utilization.map(i64::from),
            MetricType::RequestsPerSecond | MetricType::Prometheus => match self.target? {
                MetricTarget::Number(n) => Some((n * 1000.0).round() as i64),
                MetricTarget::Duration(_) => None,
            },
            MetricType::LatencyP99 => match self.target? {
                MetricTarget::Duration(d) => Some(d.as_std().as_micros().min(i64::MAX as u128) as i64),
                MetricTarget::Number(_) => None,
            },
        }
    }

    /// "cpu 60%", "requests_per_second 100", "latency_p99 250ms".
    pub fn describe_target(&self) -> String {
        match (self.kind, self.target_utilization, self.target) {
            (kind, Some(percent), _) if kind.is_resource() => format!("{} {percent}%", kind.as_str()),
            (kind, _, Some(target)) => format!("{} {target}", kind.as_str()),
            (kind, _, None) => kind.as_str().to_string(),
        }
    }
}

/// A metric's target: a number (`100`) or a duration (`250ms`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricTarget {
    Number(f64),
    Duration(Duration),
}

impl std::fmt::Display for MetricTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricTarget::Number(n) => write!(f, "{n}"),
            MetricTarget::Duration(d) => write!(f, "{d}"),
        }
    }
}

impl Serialize for MetricTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MetricTarget::Number(n) => serializer.serialize_f64(*n),
            MetricTarget::Duration(d) => d.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for MetricTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<MetricTarget, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MetricTarget;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number (e.g. 100) or a duration (e.g. \"250ms\")")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<MetricTarget, E> {
                Ok(MetricTarget::Number(n as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<MetricTarget, E> {
                Ok(MetricTarget::Number(n as f64))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<MetricTarget, E> {
                Ok(MetricTarget::Number(n))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<MetricTarget, E> {
                if let Ok(n) = text.trim().parse::<f64>() {
                    return Ok(MetricTarget::Number(n));
                }
                Duration::parse(text).map(MetricTarget::Duration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `tolerance: 0.1` (both ways) or `{scale_up: 0.1, scale_down: 0.05}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ToleranceSpec {
    pub scale_up: f64,
    pub scale_down: f64,
}

impl Default for ToleranceSpec {
    fn default() -> Self {
        ToleranceSpec { scale_up: DEFAULT_TOLERANCE, scale_down: DEFAULT_TOLERANCE }
    }
}

/// Kubernetes' `--horizontal-pod-autoscaler-tolerance`.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

impl Serialize for ToleranceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        if self.scale_up == self.scale_down {
            return serializer.serialize_f64(self.scale_up);
        }
        let mut map = serializer.serialize_struct("ToleranceSpec", 2)?;
        map.serialize_field("scale_up", &self.scale_up)?;
        map.serialize_field("scale_down", &self.scale_down)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for ToleranceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ToleranceSpec, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ToleranceSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a fraction (e.g. 0.1) or {scale_up: 0.1, scale_down: 0.05}")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ToleranceSpec, E> {
                self.visit_f64(n as f64)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ToleranceSpec, E> {
                self.visit_f64(n as f64)
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<ToleranceSpec, E> {
                Ok(ToleranceSpec { scale_up: n, scale_down: n })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ToleranceSpec, A::Error> {
                let mut tolerance = ToleranceSpec::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "scale_up" => tolerance.scale_up = map.next_value()?,
                        "scale_down" => tolerance.scale_down = map.next_value()?,
                        other => return Err(serde::de::Error::unknown_field(other, &["scale_up", "scale_down"])),
                    }
                }
                Ok(tolerance)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `behavior:` — Kubernetes' `HorizontalPodAutoscalerBehavior`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRulesSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRulesSpec>,
}

/// `behavior.scale_up` / `behavior.scale_down` — `HPAScalingRules`; an absent field takes Kubernetes' default
/// for its direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingRulesSpec {
    /// Recommendations of this long ago still count: up, the lowest of them; down, the highest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<ScalingPolicySpec>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectPolicy {
    /// The policy that allows the largest change (default).
    Max,
    /// The policy that allows the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// At most `value` instances (`pods`) or percent of the count at the period's start (`percent`) per `period`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingPolicySpec {
    #[serde(rename = "type")]
    pub kind: ScalingPolicyType,
    pub value: u32,
    pub period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalingPolicyType {
    Pods,
    Percent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_defaults_to_one_as_in_kubernetes_whatever_the_count() {
        let scaling = ScalingSpec { max: 10, ..ScalingSpec::default() };
        // A group the autoscaler grew to 6 may come back to 1: the bound does not follow the count.
        assert_eq!((scaling.min_count(2), scaling.min_count(6), scaling.min_count(0)), (1, 1, 0));
        assert_eq!(ScalingSpec { min: Some(3), ..scaling }.min_count(6), 3);
    }
}
