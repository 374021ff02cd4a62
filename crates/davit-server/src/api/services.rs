//! Service catalog routes: `GET /v1/services`, `GET /v1/service/{name}` (with `?stats=true`, proxy
//! counters gathered from the agents of the ready nodes) and `GET /v1/catalog` (the agents' watch).
//! All are blocking queries on the catalog's own index (see [`crate::catalog`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use davit_api::acl::Capability;
use davit_api::http::{InstanceStats, ProxyServiceStats, ServiceInfo, ServiceListEntry};
use davit_api::namespace::{namespace_of, service_key};
use davit_api::objects::NodeStatus;
use serde::Deserialize;

use super::{Blocking, Failure, Page, indexed, paged};
use crate::Shared;
use crate::acl::Caller;
use crate::view::Snapshot;

/// How long the server waits for one agent's proxy counters.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ServiceQuery {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    wait: Option<String>,
    /// Ask every ready node's agent for its proxy counters of the service.
    #[serde(default)]
    stats: bool,
}

async fn block(shared: &Shared, blocking: Blocking) -> Result<Snapshot, Failure> {
    let catalog = &shared.catalog;
    Ok(shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |snapshot| catalog.get(snapshot).0).await)
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(blocking): Query<Blocking>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = block(&shared, blocking).await?;
    let (index, catalog) = shared.catalog.get(&snapshot);
    let entries: Vec<ServiceListEntry> = catalog
        .services
        .iter()
        .filter(|service| namespace_of(&service.job_name) == caller.namespace)
        .map(|service| ServiceListEntry {
            name: service.name.clone(),
            job_name: service.job_name.clone(),
            group: service.group.clone(),
            mode: service.mode,
            algorithm: service.algorithm,
            local_port: service.local_port,
            tags: service.tags.clone(),
            instances: service.instances.len() as u32,
            healthy: service.instances.iter().filter(|instance| instance.healthy).count() as u32,
        })
        .collect();
    paged(index, entries, |service| format!("{}\0{}", service.name, service.job_name), &page)
}

pub(crate) async fn catalog(State(shared): State<Arc<Shared>>, Query(blocking): Query<Blocking>) -> Result<Response, Failure> {
    let snapshot = block(&shared, blocking).await?;
    let (index, catalog) = shared.catalog.get(&snapshot);
    Ok(indexed(index, &*catalog))
}

pub(crate) async fn get_service(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<ServiceQuery>,
) -> Result<Response, Failure> {
    let snapshot = block(&shared, Blocking { index: query.index, wait: query.wait }).await?;
    let (index, catalog) = shared.catalog.get(&snapshot);
    let in_namespace = |service: &&ServiceInfo| namespace_of(&service.job_name) == caller.namespace;
    let mut service = catalog.services.iter().filter(in_namespace).find(|service| service.name == name).cloned().ok_or_else(|| {
        let known: Vec<&str> = catalog.services.iter().filter(in_namespace).map(|service| service.name.as_str()).collect();
        let listed = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        Failure::not_found(format!(
            "no service `{name}` in the catalog (services: {listed}); a service exists while a job that is not stopped declares it"
        ))
    })?;
    if query.stats {
        gather_stats(&shared, &caller, &snapshot, &mut service).await;
    }
    Ok(indexed(index, &service))
}

/// Fills in each instance's counters, summed over the proxies of every ready node; a node whose agent
/// does not answer within [`STATS_TIMEOUT`] is named in `stats_errors`.
async fn gather_stats(shared: &Shared, caller: &Caller, snapshot: &Snapshot, service: &mut ServiceInfo) {
    let (mut sums, errors) = proxy_counters(shared, caller, snapshot, service).await;
    service.stats_errors.extend(errors);
    for instance in &mut service.instances {
        let stats = match sums.remove(&instance.alloc_id) {
            Some(sum) => InstanceStats {
                requests: sum.requests,
                errors: sum.errors,
                active: sum.active,
                ejected: sum.ejected,
                latency_ms: if sum.requests > 0 {
                    sum.weighted_latency / sum.requests as f64
                } else {
                    sum.latency_sum / f64::from(sum.proxies.max(1))
                },
            },
            None => InstanceStats::default(),
        };
        instance.stats = Some(stats);
    }
}

/// One backend's counters summed over the proxies that send it traffic.
#[derive(Clone, Debug, Default)]
pub(crate) struct BackendSums {
    pub requests: u64,
    pub errors: u64,
    pub active: u64,
    pub ejected: bool,
    /// Requests per latency bucket (`PROXY_LATENCY_BUCKETS`, then one for slower).
    pub latency_buckets: Vec<u64>,
    pub latency_sum: f64,
    pub weighted_latency: f64,
    pub proxies: u32,
}

/// The counters of `service`'s backends (by allocation id) summed over the proxies of every ready node, and the
/// nodes whose agent did not answer within [`STATS_TIMEOUT`] (and why).
pub(crate) async fn proxy_counters(
    shared: &Shared,
    caller: &Caller,
    snapshot: &Snapshot,
    service: &ServiceInfo,
) -> (HashMap<String, BackendSums>, Vec<String>) {
    let by_node = proxy_counters_by_node(shared, caller, snapshot, service).await;
    let mut sums: HashMap<String, BackendSums> = HashMap::new();
    for ((_, alloc_id), counters) in &by_node.counters {
        sums.entry(alloc_id.clone()).or_default().add(counters);
    }
    (sums, by_node.errors)
}

/// `service`'s backend counters per proxy.
#[derive(Default)]
pub(crate) struct NodeCounters {
    /// By (node id, allocation id).
    pub counters: HashMap<(String, String), BackendSums>,
    /// The nodes whose agent answered.
    pub answered: std::collections::HashSet<String>,
    /// Why the others did not.
    pub errors: Vec<String>,
}

/// The counters of `service`'s backends in the proxy of every ready node, one entry per node and backend.
pub(crate) async fn proxy_counters_by_node(shared: &Shared, caller: &Caller, snapshot: &Snapshot, service: &ServiceInfo) -> NodeCounters {
    let nodes: Vec<_> = snapshot.cluster.nodes().filter(|node| node.status == NodeStatus::Ready).cloned().collect();
    let requests = nodes.iter().map(|node| {
        // In the caller's namespace: the agent checks the caller's token there.
        let url = format!("{}/v1/agent/proxy?namespace={}", node.http_addr.trim_end_matches('/'), caller.namespace);
        let http = shared.agent_http(&node.id).map_err(|_| format!("node {}: no TLS client for it", node.name));
        async move {
            let request = caller.relay(http?.get(url), Capability::ReadJob).timeout(STATS_TIMEOUT).send();
            let response = request.await.map_err(|error| format!("node {}: {error}", node.name))?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(Vec::new()); // An agent run with --no-service-proxy.
            }
            if !response.status().is_success() {
                return Err(format!("node {}: HTTP {}", node.name, response.status()));
            }
            response.json::<Vec<ProxyServiceStats>>().await.map_err(|error| format!("node {}: {error}", node.name))
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut result = NodeCounters::default();
    let key = service_key(namespace_of(&service.job_name), &service.name);
    for (node, answer) in nodes.iter().zip(answers) {
        let listeners = match answer {
            Ok(listeners) => listeners,
            Err(error) => {
                result.errors.push(error);
                continue;
            }
        };
        result.answered.insert(node.id.clone());
        for backend in listeners.iter().filter(|listener| listener.service == key).flat_map(|listener| &listener.backends) {
            let sums = BackendSums {
                requests: backend.requests,
                errors: backend.errors,
                active: backend.active,
                ejected: backend.ejected,
                latency_buckets: backend.latency_buckets.clone(),
                latency_sum: backend.ewma_latency_ms,
                weighted_latency: backend.ewma_latency_ms * backend.requests as f64,
                proxies: 1,
            };
            result.counters.entry((node.id.clone(), backend.id.clone())).or_default().add(&sums);
        }
    }
    result
}

impl BackendSums {
    /// Adds another proxy's counters of the same backend.
    pub fn add(&mut self, other: &BackendSums) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.active += other.active;
        self.ejected |= other.ejected;
        self.latency_sum += other.latency_sum;
        self.weighted_latency += other.weighted_latency;
        self.proxies += other.proxies;
        davit_api::http::add_latency_buckets(&mut self.latency_buckets, &other.latency_buckets);
    }
}
