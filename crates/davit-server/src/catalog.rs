//! The service catalog: which allocations serve which service, where, and whether they are served.
//!
//! The catalog is not stored: [`derive`] computes it from a view snapshot (a pure function of the
//! cluster state), and [`CatalogCache`] keeps the newest one with its own index, which moves only when
//! the catalog's content changes. Blocking queries on `/v1/services`, `/v1/service/{name}` and
//! `/v1/catalog` wait on that index, so agents watching the catalog wake up only for changes that
//! matter to them (not for every evaluation or heartbeat-driven write).
//!
//! An instance is *healthy* (served by proxies and DNS) when its allocation should run and runs, the
//! agent reported it healthy (every task running, every check passing; an allocation without checks
//! once its tasks run) and its node is ready. A deployment's canary not promoted yet is marked `canary` and
//! carries its update strategy's `canary_tags` instead of the service's tags.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use davit_api::deployment::Shadow;
use davit_api::http::{Catalog, ServiceInfo, ServiceInstance};
use davit_api::namespace::{namespace_of, service_key};
use davit_api::objects::{ClientStatus, DesiredStatus, Index, NodeStatus};
use davit_scheduler::{ClusterState, ShadowState};
use davit_store::Revision;

/// Every service of the jobs that are not stopped, with the instances of their running allocations,
/// sorted by service key (`service_key`: services of different namespaces never meet; instances by
/// allocation name).
///
/// Settings (mode, algorithm, local port) come from the job's newest version; each instance's port,
/// tags and weight from the version its allocation runs. If two jobs declare the same service name
/// in one namespace (registration refuses that, but older state may hold it), the job whose name sorts first owns it.
pub fn derive(cluster: &ClusterState) -> Catalog {
    let mut services: BTreeMap<String, ServiceInfo> = BTreeMap::new();
    for job in cluster.jobs().filter(|job| !job.stopped) {
        for group in &job.spec.groups {
            for service in &group.services {
                let key = service_key(&job.spec.namespace, &service.name);
                if services.contains_key(&key) {
                    continue;
                }
                services.insert(
                    key,
                    ServiceInfo {
                        name: service.name.clone(),
                        job_name: job.spec.id(),
                        group: group.name.clone(),
                        port_label: service.port.clone(),
                        mode: service.mode,
                        algorithm: service.algorithm,
                        hash_on: service.hash_on.clone(),
                        local_port: service.local_port,
                        tags: service.tags.clone(),
                        canary_weight: job
                            .spec
                            .update_strategy(&group.name)
                            .map(|strategy| strategy.canary_weight)
                            .filter(|weight| *weight > 0),
                        activation_timeout_ms: group
                            .scaling
                            .as_ref()
                            .filter(|scaling| scaling.scales_to_zero().is_some())
                            .map(|scaling| u64::try_from(scaling.activation_timeout().as_millis()).unwrap_or(u64::MAX)),
                        instances: Vec::new(),
                        stats_errors: Vec::new(),
                    },
                );
            }
        }
    }
    for alloc in cluster.allocs() {
        if alloc.desired_status != DesiredStatus::Run || alloc.client_status != ClientStatus::Running {
            continue;
        }
        let Some(spec) = cluster.job_version(&alloc.job_name, alloc.job_version).or_else(|| cluster.job(&alloc.job_name)) else {
            continue;
        };
        let Some(group) = spec.spec.group(&alloc.group) else { continue };
        let Some(node) = cluster.node(&alloc.node_id) else { continue };
        // A canary not promoted yet carries the update strategy's canary_tags (when it has some).
        let canary = cluster.shadow_state(alloc) == Some(ShadowState::Waiting) && alloc.shadow == Some(Shadow::Canary);
        let canary_tags = canary
            .then(|| spec.spec.update_strategy(&group.name))
            .flatten()
            .map(|strategy| strategy.canary_tags)
            .filter(|tags| !tags.is_empty());
        for service in &group.services {
            let key = service_key(namespace_of(&alloc.job_name), &service.name);
            let Some(info) = services.get_mut(&key).filter(|info| info.job_name == alloc.job_name) else { continue };
            let Some(port) = alloc.resources.ports.iter().find(|port| port.label == service.port) else { continue };
            let node_ready = node.status == NodeStatus::Ready;
            let healthy = alloc.healthy == Some(true) && node_ready;
            let health_description = if node_ready || alloc.healthy != Some(true) {
                alloc.health_description.clone()
            } else {
                format!("node {} is {}", node.name, node_status_word(node.status))
            };
            info.instances.push(ServiceInstance {
                alloc_id: alloc.id.clone(),
                alloc_name: alloc.name.clone(),
                node_id: node.id.clone(),
                node_name: node.name.clone(),
                address: node_address(&node.http_addr),
                port: port.value,
                tags: canary_tags.clone().unwrap_or_else(|| service.tags.clone()),
                weight: service.weight,
                canary,
                healthy,
                health_description,
                stats: None,
            });
        }
    }
    let mut services: Vec<ServiceInfo> = services.into_values().collect();
    for service in &mut services {
        service.instances.sort_by(|a, b| a.alloc_name.cmp(&b.alloc_name).then_with(|| a.alloc_id.cmp(&b.alloc_id)));
    }
    Catalog { services }
}

fn node_status_word(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Initializing => "initializing",
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
    }
}

/// The host of a node's advertised agent address: `http://10.0.0.5:7647` → `10.0.0.5`.
pub fn node_address(http_addr: &str) -> String {
    let without_scheme = http_addr.split_once("://").map_or(http_addr, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host).to_string()
}

/// The newest catalog and its index: the store revision at which its content last changed.
#[derive(Default)]
pub struct CatalogCache {
    current: Mutex<Option<Cached>>,
}

struct Cached {
    /// The snapshot revision it was derived from.
    revision: Revision,
    index: Index,
    catalog: Arc<Catalog>,
}

impl CatalogCache {
    /// The catalog of a view snapshot and its index (never 0, so a blocking query can always wait on it).
    pub fn get(&self, snapshot: &crate::view::Snapshot) -> (Index, Arc<Catalog>) {
        self.get_at(snapshot.revision, &snapshot.cluster)
    }

    /// The catalog of `cluster`, the state at store revision `revision`, and its index.
    fn get_at(&self, revision: Revision, cluster: &ClusterState) -> (Index, Arc<Catalog>) {
        let mut current = self.current.lock().expect("catalog lock");
        if let Some(cached) = current.as_ref().filter(|cached| cached.revision == revision) {
            return (cached.index, Arc::clone(&cached.catalog));
        }
        let catalog = derive(cluster);
        match current.as_mut() {
            // An older snapshot than the cached one (a slow reader): answer without touching the cache.
            Some(cached) if revision < cached.revision => {
                let index = if *cached.catalog == catalog { cached.index } else { revision.max(1) };
                (index, Arc::new(catalog))
            }
            Some(cached) if *cached.catalog == catalog => {
                cached.revision = revision;
                (cached.index, Arc::clone(&cached.catalog))
            }
            _ => {
                let catalog = Arc::new(catalog);
                let index = revision.max(1);
                *current = Some(Cached { revision, index, catalog: Arc::clone(&catalog) });
                (index, catalog)
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use std::sync::Arc;

    use davit_api::objects::{AllocatedResources, Allocation, AssignedPort, ClientStatus, DesiredStatus, Job, Node, NodeStatus};
    use davit_api::spec::parse_job_spec;

    use super::*;

    const SPEC: &str = r#"
name: shop
groups:
  - name: web
    count: 4
    network: {ports: [{name: http}]}
    services:
      - {name: web, port: http, tags: [v1], weight: 2, algorithm: weighted, local_port: 9000}
    tasks:
      - name: server
        config: {command: /bin/httpd}
        checks: [{name: alive, type: http, port: http}]
"#;

    fn job(spec: &str, version: u64, stopped: bool) -> Arc<Job> {
        let spec = parse_job_spec(spec, "shop.yaml").unwrap();
        Arc::new(Job { stopped, create_index: 1, modify_index: 1, ..Job::new(spec, version, 0) })
    }

    fn node(id: &str, status: NodeStatus) -> Arc<Node> {
        Arc::new(Node {
            name: format!("node-{id}"),
            status,
            http_addr: format!("http://10.0.0.{}:7647", id.len()),
            create_index: 1,
            modify_index: 1,
            ..davit_api::testing::node(id)
        })
    }

    fn alloc(id: &str, index: u32, node: &str, client_status: ClientStatus, healthy: Option<bool>) -> Arc<Allocation> {
        Arc::new(Allocation {
            node_name: format!("node-{node}"),
            client_status,
            healthy,
            health_description: match healthy {
                Some(true) => "all tasks running, all checks passing".to_string(),
                Some(false) => "check alive of task server failing: HTTP 500".to_string(),
                None => "check alive of task server pending".to_string(),
            },
            resources: AllocatedResources {
                cpu: 100,
                memory: 64,
                ports: vec![AssignedPort { label: "http".to_string(), value: 20000 + index as u16, to: 20000 + index as u16 }],
            },
            create_index: 1,
            modify_index: 1,
            ..davit_api::testing::alloc(id, "shop", "web", index, node)
        })
    }

    fn cluster() -> ClusterState {
        let mut cluster = ClusterState::new();
        let shop = job(SPEC, 0, false);
        cluster.upsert_job(Arc::clone(&shop));
        cluster.upsert_job_version(shop);
        cluster.upsert_node(node("a", NodeStatus::Ready));
        cluster.upsert_node(node("bb", NodeStatus::Down));
        cluster.upsert_alloc(alloc("a0", 0, "a", ClientStatus::Running, Some(true)));
        cluster.upsert_alloc(alloc("a1", 1, "a", ClientStatus::Running, Some(false)));
        cluster.upsert_alloc(alloc("a2", 2, "a", ClientStatus::Running, None));
        cluster.upsert_alloc(alloc("a3", 3, "bb", ClientStatus::Running, Some(true)));
        cluster.upsert_alloc(alloc("a4", 4, "a", ClientStatus::Pending, None));
        cluster
    }

    #[test]
    fn only_healthy_allocations_on_ready_nodes_are_served() {
        let catalog = derive(&cluster());
        assert_eq!(catalog.services.len(), 1);
        let web = &catalog.services[0];
        assert_eq!((web.name.as_str(), web.job_name.as_str(), web.local_port), ("web", "shop", Some(9000)));
        // The pending allocation is no instance; the others are, served or not.
        let instances: Vec<(&str, bool, &str)> =
            web.instances.iter().map(|i| (i.alloc_id.as_str(), i.healthy, i.health_description.as_str())).collect();
        assert_eq!(
            instances,
            vec![
                ("a0", true, "all tasks running, all checks passing"),
                ("a1", false, "check alive of task server failing: HTTP 500"),
                ("a2", false, "check alive of task server pending"),
                ("a3", false, "node node-bb is down"),
            ]
        );
        let served = &web.instances[0];
        assert_eq!(
            (served.address.as_str(), served.port, served.weight, served.tags.clone()),
            ("10.0.0.1", 20000, 2, vec!["v1".to_string()])
        );
    }

    #[test]
    fn stopped_allocations_and_jobs_leave_the_catalog() {
        let mut cluster = cluster();
        let mut stopping = (*alloc("a0", 0, "a", ClientStatus::Running, Some(true))).clone();
        stopping.desired_status = DesiredStatus::Stop;
        cluster.upsert_alloc(Arc::new(stopping));
        assert!(derive(&cluster).services[0].instances.iter().all(|instance| instance.alloc_id != "a0"));

        cluster.upsert_job(job(SPEC, 0, true));
        assert_eq!(derive(&cluster).services, Vec::new());
    }

    #[test]
    fn the_index_moves_only_when_the_content_changes() {
        let cache = CatalogCache::default();
        let mut cluster = cluster();
        let (first, _) = cache.get_at(10, &cluster);
        assert_eq!(first, 10);
        // A change that does not touch the catalog (a new revision, same services): same index.
        assert_eq!(cache.get_at(11, &cluster).0, 10);
        // An instance turns healthy: the index moves.
        cluster.upsert_alloc(alloc("a1", 1, "a", ClientStatus::Running, Some(true)));
        let (index, catalog) = cache.get_at(12, &cluster);
        assert_eq!(index, 12);
        assert_eq!(catalog.services[0].instances.iter().filter(|instance| instance.healthy).count(), 2);
    }

    #[test]
    fn node_addresses() {
        assert_eq!(node_address("http://10.0.0.5:7647"), "10.0.0.5");
        assert_eq!(node_address("http://[::1]:7647/"), "::1");
        assert_eq!(node_address("http://host.example"), "host.example");
    }
}
