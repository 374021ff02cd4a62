//! What a group offers and uses over the network: services (balanced by the agents' proxies), upstreams,
//! and the health checks that decide which instances serve.

use serde::{Deserialize, Serialize};

use super::is_default;
use crate::Duration;

/// A service offered by every allocation of a group: one instance per allocation, at the host port of
/// `port`. Instances are served (proxy, DNS) while their allocation is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// A DNS label: `<name>.service.davit`. Unique in the cluster.
    #[serde(default)]
    pub name: String,
    /// A port label of the group's network.
    #[serde(default)]
    pub port: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Relative share of traffic for `weighted` and `consistent_hash` (1 to 100).
    #[serde(default = "default_service_weight")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: BalanceAlgorithm,
    /// What `consistent_hash` hashes: `header:NAME`, `cookie:NAME` or `source_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: ServiceMode,
    /// Where every agent's proxy listens for the service; unset: no listener (DNS and upstreams only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
}

fn default_service_weight() -> u32 {
    1
}

/// How a service's proxy spreads requests over its healthy instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceAlgorithm {
    Random,
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (as nginx), by the instances' `weight`.
    Weighted,
    LeastConnections,
    /// Power of two choices over a decaying latency EWMA and outstanding requests.
    LeastResponseTime,
    /// A ketama ring over `hash_on`: sticky, and only ~1/N of the keys move when an instance leaves.
    ConsistentHash,
}

impl BalanceAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceAlgorithm::Random => "random",
            BalanceAlgorithm::RoundRobin => "round_robin",
            BalanceAlgorithm::Weighted => "weighted",
            BalanceAlgorithm::LeastConnections => "least_connections",
            BalanceAlgorithm::LeastResponseTime => "least_response_time",
            BalanceAlgorithm::ConsistentHash => "consistent_hash",
        }
    }
}

/// The layer a service is proxied at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    /// HTTP/1.1: each request balanced on its own, retries of idempotent requests, `X-Forwarded-For`.
    #[default]
    Http,
    /// Plain TCP: one backend per client connection.
    Tcp,
}

impl ServiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMode::Http => "http",
            ServiceMode::Tcp => "tcp",
        }
    }
}

/// What `consistent_hash` routes by, parsed from `hash_on`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    Header(String),
    Cookie(String),
}

impl HashKey {
    /// `source_ip`, `header:NAME` or `cookie:NAME`; the reason when the text is none of those.
    pub fn parse(text: &str) -> Result<HashKey, &'static str> {
        let text = text.trim();
        if text == "source_ip" {
            return Ok(HashKey::SourceIp);
        }
        let (kind, name) = text.split_once(':').ok_or("write `header:NAME`, `cookie:NAME` or `source_ip`")?;
        let name = name.trim();
        let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
        match kind.trim() {
            "header" | "cookie" if !valid_name => Err("the header or cookie name must be a non-empty token (letters, digits, '-', '_')"),
            "header" => Ok(HashKey::Header(name.to_string())),
            "cookie" => Ok(HashKey::Cookie(name.to_string())),
            _ => Err("the kind must be `header`, `cookie` or `source_ip`"),
        }
    }
}

/// A service a task reaches through the agent's proxy at `127.0.0.1:<local_port>` (the agent's
/// `--proxy-bind-ip`), given to the task as `DAVIT_UPSTREAM_<SERVICE>_ADDR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub local_port: u16,
}

/// A health check of a task, run by the agent every `interval` while the task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub check_type: CheckType,
    /// A port label of the group (`http`, `tcp` and `grpc`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port: String,
    /// The service name sent in the `grpc.health.v1` request (`grpc`); empty asks about the server as a
    /// whole.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grpc_service: String,
    /// Request path (`http`).
    #[serde(default = "default_check_path")]
    pub path: String,
    /// A substring the response body must contain (`http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The command run in the task's context (`exec`); exit code 0 passes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default = "default_check_interval")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub initial_delay: Duration,
    #[serde(default = "default_failures_before_unhealthy")]
    pub failures_before_unhealthy: u32,
    #[serde(default = "default_successes_before_healthy")]
    pub successes_before_healthy: u32,
    #[serde(default)]
    pub on_failure: CheckOnFailure,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    #[default]
    Http,
    Tcp,
    Exec,
    /// `grpc.health.v1.Health/Check` over HTTP/2 cleartext; `SERVING` passes.
    Grpc,
}

impl CheckType {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckType::Http => "http",
            CheckType::Tcp => "tcp",
            CheckType::Exec => "exec",
            CheckType::Grpc => "grpc",
        }
    }
}

/// What the agent does once a check is failing (`failures_before_unhealthy` failures in a row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOnFailure {
    /// Report it (task and allocation health) only.
    #[default]
    Ignore,
    /// Restart the task through the restart policy.
    Restart,
}

fn default_check_path() -> String {
    "/".to_string()
}
fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_failures_before_unhealthy() -> u32 {
    3
}
fn default_successes_before_healthy() -> u32 {
    1
}
