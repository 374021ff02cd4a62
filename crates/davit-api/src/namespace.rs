//! Namespaces: every job (and so its allocations, evaluations and services) belongs to one; `default` always
//! exists. A namespace may carry a [`Quota`].
//!
//! A job is known inside the cluster by its *id*: its name in `default`, `<namespace>/<name>` elsewhere
//! ([`job_id`]). Names are DNS labels, so the id never hides a `/` of its own and [`split_job_id`] is its exact
//! inverse; jobs of `default` keep the ids (and store keys) they had before namespaces existed.

use serde::{Deserialize, Serialize};

use crate::acl::DEFAULT_NAMESPACE;
use crate::objects::Index;

/// A namespace as stored and shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

/// Limits on what a namespace's live allocations may reserve in total. `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Live allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u64>,
    /// The largest `count` a group may ask for (checked when a job is registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u32>,
}

/// What a namespace's live (non-terminal) allocations reserve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceUsage {
    pub cpu: u64,
    pub memory: u64,
    pub allocations: u64,
}

impl NamespaceUsage {
    /// One more live allocation reserving `cpu` millicores and `memory` MiB.
    pub fn add(&mut self, cpu: u64, memory: u64) {
        self.cpu = self.cpu.saturating_add(cpu);
        self.memory = self.memory.saturating_add(memory);
        self.allocations = self.allocations.saturating_add(1);
    }

    /// One live allocation fewer.
    pub fn remove(&mut self, cpu: u64, memory: u64) {
        self.cpu = self.cpu.saturating_sub(cpu);
        self.memory = self.memory.saturating_sub(memory);
        self.allocations = self.allocations.saturating_sub(1);
    }
}

impl Quota {
    /// The first limit that `usage` plus `extra` would pass, as a reason for the user, e.g.
    /// `quota of namespace team-a: memory 4096/4096 MiB`.
    pub fn exceeded_by(&self, namespace: &str, usage: &NamespaceUsage, extra: &NamespaceUsage) -> Option<String> {
        let over = |limit: Option<u64>, used: u64, more: u64| limit.filter(|limit| used.saturating_add(more) > *limit);
        if let Some(limit) = over(self.cpu, usage.cpu, extra.cpu) {
            return Some(format!("quota of namespace {namespace}: cpu {}/{limit} millicores", usage.cpu));
        }
        if let Some(limit) = over(self.memory, usage.memory, extra.memory) {
            return Some(format!("quota of namespace {namespace}: memory {}/{limit} MiB", usage.memory));
        }
        if let Some(limit) = over(self.allocations, usage.allocations, extra.allocations) {
            return Some(format!("quota of namespace {namespace}: allocations {}/{limit}", usage.allocations));
        }
        None
    }
}

/// `PUT /v1/namespace/{name}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyNamespaceRequest {
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// `GET /v1/namespace/{name}`: the namespace, what it uses and how many jobs it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    pub namespace: Namespace,
    pub usage: NamespaceUsage,
    pub jobs: u32,
}

/// The id of job `name` in `namespace`.
pub fn job_id(namespace: &str, name: &str) -> String {
    if namespace == DEFAULT_NAMESPACE { name.to_string() } else { format!("{namespace}/{name}") }
}

/// (namespace, name) of a job id.
pub fn split_job_id(id: &str) -> (&str, &str) {
    id.split_once('/').unwrap_or((DEFAULT_NAMESPACE, id))
}

/// The namespace of a job id.
pub fn namespace_of(job_id: &str) -> &str {
    split_job_id(job_id).0
}

/// How a service is known on a node (its DNS name before `.service.davit`, its proxy listener): the name in
/// `default`, `<name>.<namespace>` elsewhere, so services of different namespaces never meet.
pub fn service_key(namespace: &str, service: &str) -> String {
    if namespace == DEFAULT_NAMESPACE { service.to_string() } else { format!("{service}.{namespace}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_round_trip_and_default_keeps_plain_names() {
        assert_eq!(job_id("default", "web"), "web");
        assert_eq!(job_id("team-a", "web"), "team-a/web");
        assert_eq!(split_job_id("team-a/web"), ("team-a", "web"));
        assert_eq!(split_job_id("web"), ("default", "web"));
        assert_eq!(namespace_of("web"), "default");
    }

    #[test]
    fn quota_reasons_name_the_first_limit_passed() {
        let quota = Quota { cpu: Some(1000), memory: Some(4096), allocations: None, max_count: None };
        let usage = NamespaceUsage { cpu: 500, memory: 4096, allocations: 9 };
        let more = NamespaceUsage { cpu: 100, memory: 64, allocations: 1 };
        assert_eq!(quota.exceeded_by("team-a", &usage, &more).as_deref(), Some("quota of namespace team-a: memory 4096/4096 MiB"));
        assert_eq!(quota.exceeded_by("team-a", &usage, &NamespaceUsage { cpu: 100, ..Default::default() }), None);
    }
}
