//! [`ClusterState`]: the immutable, cheaply clonable picture of the cluster the scheduler reads.

use std::collections::BTreeSet;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, OnceLock};

use davit_api::deployment::{Deployment, DeploymentVerdict, Shadow};
use davit_api::namespace::{Namespace, NamespaceUsage, namespace_of};
use davit_api::objects::{AllocatedResources, Allocation, Job, Node};
use imbl::{OrdMap, OrdSet};

use crate::fxhash::FxHasher;
use crate::rank::Capacity;

/// Nodes, allocations, jobs and job versions, indexed for the scheduler.
///
/// Built on persistent maps: `clone` is O(1) and shares structure, so the server keeps one, updates it
/// from the store's change feed and hands clones (snapshots) to scheduler workers. Updates take `&mut self`
/// but never affect earlier clones.
///
/// Invariant: `allocs` holds each allocation under its `OrderKey`; `allocs_by_node` and `allocs_by_job` hold
/// exactly the keys of `allocs` (the same shared strings), keyed by each allocation's current `node_id` and
/// `job_name`; empty index sets are removed. `anti_affinity_jobs` holds
/// exactly the names of the jobs whose latest version has a group with a required anti-affinity.
/// `node_meta` holds the computed class and usage slot of every node. `usage_slots` gives a slot to exactly
/// the ids of the stored nodes and the node ids of the stored allocations (`allocs_by_node`'s keys), no two
/// the same; `live_usage[slot]` is the sum of the resources of the non-terminal allocations of that node id
/// (zero for slots in `free_usage_slots`).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    nodes: OrdMap<String, Arc<Node>>,
    /// Keyed by the allocation's `OrderKey`, shared (one heap copy) with the index sets.
    allocs: OrdMap<Arc<str>, Arc<Allocation>>,
    allocs_by_node: OrdMap<String, OrdSet<Arc<str>>>,
    allocs_by_job: OrdMap<String, OrdSet<Arc<str>>>,
    jobs: OrdMap<String, Arc<Job>>,
    anti_affinity_jobs: OrdSet<String>,
    job_versions: OrdMap<String, OrdMap<u64, Arc<Job>>>,
    /// Per node id: its computed class (see `feasible`, computed once when the node is stored) and usage slot.
    node_meta: OrdMap<String, NodeMeta>,
    /// Per node id (of a node, or named by an allocation): its slot in `live_usage`. A dense slot lets the
    /// node walk of a placement reach a node's usage without a lookup by id.
    usage_slots: imbl::GenericHashMap<String, u32, BuildHasherDefault<FxHasher>, imbl::shared_ptr::DefaultSharedPtr>,
    /// Per usage slot: what the node's live allocations reserve, kept current as allocations change.
    live_usage: imbl::Vector<LiveUsage>,
    /// Usage slots no node id holds, reused first.
    free_usage_slots: imbl::Vector<u32>,
    /// The schedulable nodes with their classes, in id order: derived from `nodes`, computed on first use
    /// and shared by clones; replaced by an empty cell whenever a node changes.
    placement_nodes: Arc<OnceLock<Arc<[PlacementNode]>>>,
    /// Namespaces other than `default` that exist, and `default` when it carries a quota.
    namespaces: OrdMap<String, Arc<Namespace>>,
    /// Per namespace (of any allocation's job): what its live allocations reserve.
    namespace_usage: imbl::HashMap<String, NamespaceUsage>,
    /// Deployments per job id, by job version (one deployment per version).
    deployments: OrdMap<String, OrdMap<u64, Arc<Deployment>>>,
    /// Deployment id → (job id, version).
    deployment_ids: OrdMap<String, (String, u64)>,
}

/// A schedulable node, its computed class and usage slot, as the node walk of a placement reads them.
#[derive(Clone, Debug)]
pub(crate) struct PlacementNode {
    pub(crate) node: Arc<Node>,
    pub(crate) class: u64,
    /// See [`ClusterState::usage_slot`].
    pub(crate) usage_slot: u32,
    /// The node's resources, next to the slot so the walk's fit check reads no node.
    pub(crate) capacity: Capacity,
}

#[derive(Clone, Copy, Debug)]
struct NodeMeta {
    class: u64,
    usage_slot: u32,
}

/// What the live (non-terminal) allocations on one node reserve. Cheap to clone (the port map is persistent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LiveUsage {
    pub(crate) cpu: u64,
    pub(crate) memory: u64,
    /// Host port → number of allocations holding it (more than one only if the state is already wrong).
    pub(crate) ports: OrdMap<u16, u32>,
}

impl LiveUsage {
    pub(crate) fn add(&mut self, resources: &AllocatedResources) {
        self.cpu += resources.cpu;
        self.memory += resources.memory;
        for port in &resources.ports {
            *self.ports.entry(port.value).or_default() += 1;
        }
    }

    pub(crate) fn remove(&mut self, resources: &AllocatedResources) {
        self.cpu = self.cpu.saturating_sub(resources.cpu);
        self.memory = self.memory.saturating_sub(resources.memory);
        for port in &resources.ports {
            if let Some(count) = self.ports.get_mut(&port.value) {
                *count -= 1;
                if *count == 0 {
                    self.ports.remove(&port.value);
                }
            }
        }
    }
}

/// See [`ClusterState::shadow_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowState {
    /// Promoted (canary) or healthy (surge): it holds its index like any allocation.
    Released,
    /// Its deployment still runs: it runs beside the allocation of its index, which keeps the index.
    Waiting,
    /// Its deployment failed, was cancelled or is gone before it was released: it is stopped.
    Abandoned,
}

/// What the non-terminal allocations on one node reserve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// Millicores.
    pub cpu: u64,
    /// MiB.
    pub memory: u64,
    /// Host ports assigned to allocations.
    pub ports: BTreeSet<u16>,
}

impl ClusterState {
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    pub fn upsert_deployment(&mut self, deployment: Arc<Deployment>) {
        self.deployment_ids.insert(deployment.id.clone(), (deployment.job_name.clone(), deployment.job_version));
        self.deployments.entry(deployment.job_name.clone()).or_default().insert(deployment.job_version, deployment);
    }

    pub fn remove_deployment(&mut self, id: &str) -> Option<Arc<Deployment>> {
        let (job, version) = self.deployment_ids.remove(id)?;
        let versions = self.deployments.get_mut(&job)?;
        let removed = versions.remove(&version);
        if versions.is_empty() {
            self.deployments.remove(&job);
        }
        removed
    }

    pub fn deployment(&self, id: &str) -> Option<&Arc<Deployment>> {
        let (job, version) = self.deployment_ids.get(id)?;
        self.deployments.get(job)?.get(version)
    }

    /// The job's deployments, oldest version first.
    pub fn job_deployments(&self, job: &str) -> impl DoubleEndedIterator<Item = &Arc<Deployment>> + '_ {
        self.deployments.get(job).into_iter().flat_map(|versions| versions.values())
    }

    /// The deployment of the job's newest version that has one.
    pub fn latest_deployment(&self, job: &str) -> Option<&Arc<Deployment>> {
        self.job_deployments(job).next_back()
    }

    /// Where a shadow allocation (a canary or a surge, see [`Shadow`]) stands: `None` for any other allocation.
    pub fn shadow_state(&self, alloc: &Allocation) -> Option<ShadowState> {
        let shadow = alloc.shadow?;
        let deployment = alloc.deployment_id.as_deref().and_then(|id| self.deployment(id));
        let released = match shadow {
            Shadow::Canary => deployment.and_then(|deployment| deployment.groups.get(&alloc.group)).is_some_and(|group| group.promoted),
            Shadow::Surge => matches!(alloc.deployment_verdict(), DeploymentVerdict::Healthy(_)),
        };
        Some(if released {
            ShadowState::Released
        } else if deployment.is_some_and(|deployment| deployment.is_active()) {
            ShadowState::Waiting
        } else {
            ShadowState::Abandoned
        })
    }

    /// Every deployment, by job and version.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> + '_ {
        self.deployments.values().flat_map(|versions| versions.values())
    }

    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let usage_slot = self.hold_usage_slot(&node.id);
        self.node_meta.insert(node.id.clone(), NodeMeta { class: crate::feasible::computed_class(&node), usage_slot });
        self.nodes.insert(node.id.clone(), node);
        self.placement_nodes = Arc::default();
    }

    /// Removes the node. Its allocations stay: the scheduler sees them as lost.
    pub fn remove_node(&mut self, id: &str) -> Option<Arc<Node>> {
        self.node_meta.remove(id);
        self.placement_nodes = Arc::default();
        let removed = self.nodes.remove(id);
        self.release_usage_slot_if_unused(id);
        removed
    }

    /// Stores the allocation (replacing the one with its id); returns the key the state holds it under
    /// (its `OrderKey`), shared; [`ClusterState::alloc`] takes it as well as the id.
    pub fn upsert_alloc(&mut self, alloc: Arc<Allocation>) -> Arc<str> {
        let usage_slot = self.hold_usage_slot(&alloc.node_id);
        if !alloc.is_terminal() {
            self.live_usage[usage_slot as usize].add(&alloc.resources);
            self.count_namespace_usage(&alloc, true);
        }
        let order = OrderKey::of(&alloc.id);
        let Some((key, slot)) = self.allocs.get_key_value_mut(order.as_str()) else {
            let key: Arc<str> = Arc::from(order.as_str());
            add_to_index(&mut self.allocs_by_node, &alloc.node_id, &key);
            add_to_index(&mut self.allocs_by_job, &alloc.job_name, &key);
            self.allocs.insert(Arc::clone(&key), alloc);
            return key;
        };
        let key = Arc::clone(key);
        let old = std::mem::replace(slot, Arc::clone(&alloc));
        if !old.is_terminal() {
            self.remove_live_usage(&old);
        }
        // A status update keeps node and job: the index sets stay as they are.
        if old.node_id != alloc.node_id {
            add_to_index(&mut self.allocs_by_node, &alloc.node_id, &key);
            remove_from_index(&mut self.allocs_by_node, &old.node_id, &key);
            self.release_usage_slot_if_unused(&old.node_id);
        }
        if old.job_name != alloc.job_name {
            add_to_index(&mut self.allocs_by_job, &alloc.job_name, &key);
            remove_from_index(&mut self.allocs_by_job, &old.job_name, &key);
        }
        key
    }

    /// Sets the store indexes of an allocation already in the state (nothing else about it changes, so no
    /// index or usage needs updating); returns its key (as [`ClusterState::upsert_alloc`]) and the allocation.
    /// `None` when the state has no such allocation.
    pub fn set_alloc_indexes(&mut self, id: &str, create_index: u64, modify_index: u64) -> Option<(Arc<str>, &Arc<Allocation>)> {
        let (key, slot) = self.allocs.get_key_value_mut(OrderKey::of(id).as_str())?;
        let alloc = Arc::make_mut(slot);
        (alloc.create_index, alloc.modify_index) = (create_index, modify_index);
        Some((Arc::clone(key), slot))
    }

    pub fn remove_alloc(&mut self, id: &str) -> Option<Arc<Allocation>> {
        let order = OrderKey::of(id);
        let alloc = self.allocs.remove(order.as_str())?;
        if !alloc.is_terminal() {
            self.remove_live_usage(&alloc);
        }
        remove_from_index(&mut self.allocs_by_node, &alloc.node_id, order.as_str());
        remove_from_index(&mut self.allocs_by_job, &alloc.job_name, order.as_str());
        self.release_usage_slot_if_unused(&alloc.node_id);
        Some(alloc)
    }

    /// Sets the latest version of a job (the job itself). Its versions are kept separately, see
    /// [`ClusterState::upsert_job_version`].
    pub fn upsert_job(&mut self, job: Arc<Job>) {
        let required_anti_affinity =
            job.spec.groups.iter().any(|group| group.anti_affinities.iter().any(|anti_affinity| anti_affinity.required));
        if required_anti_affinity {
            self.anti_affinity_jobs.insert(job.spec.id());
        } else {
            self.anti_affinity_jobs.remove(&job.spec.id());
        }
        self.jobs.insert(job.spec.id(), job);
    }

    /// Removes the job; its stored versions and allocations stay until removed themselves.
    pub fn remove_job(&mut self, name: &str) -> Option<Arc<Job>> {
        self.anti_affinity_jobs.remove(name);
        self.jobs.remove(name)
    }

    /// Jobs (latest versions) with a group that has a required anti-affinity, in name order: the ones
    /// whose existing allocations may forbid a placement of another job (see `check_required_placement`).
    pub fn jobs_with_required_anti_affinity(&self) -> impl Iterator<Item = &Arc<Job>> + '_ {
        self.anti_affinity_jobs.iter().filter_map(|name| self.jobs.get(name))
    }

    pub fn upsert_job_version(&mut self, job: Arc<Job>) {
        self.job_versions.entry(job.spec.id()).or_default().insert(job.version, job);
    }

    pub fn remove_job_version(&mut self, name: &str, version: u64) -> Option<Arc<Job>> {
        let versions = self.job_versions.get_mut(name)?;
        let removed = versions.remove(&version);
        if versions.is_empty() {
            self.job_versions.remove(name);
        }
        removed
    }

    /// Removes every stored version of the job.
    pub fn remove_job_versions(&mut self, name: &str) {
        self.job_versions.remove(name);
    }

    pub fn node(&self, id: &str) -> Option<&Arc<Node>> {
        self.nodes.get(id)
    }

    /// The allocation by id (or by the key [`ClusterState::upsert_alloc`] returned).
    pub fn alloc(&self, id: &str) -> Option<&Arc<Allocation>> {
        self.allocs.get(OrderKey::of(id).as_str())
    }

    /// The latest version of the job.
    pub fn job(&self, name: &str) -> Option<&Arc<Job>> {
        self.jobs.get(name)
    }

    pub fn job_version(&self, name: &str, version: u64) -> Option<&Arc<Job>> {
        self.job_versions.get(name)?.get(&version)
    }

    /// Nodes in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> + '_ {
        self.nodes.values()
    }

    /// The schedulable (ready, eligible) nodes in id order with their computed classes (see `feasible`).
    /// Computed once per set of nodes: evaluations between node changes share it.
    pub(crate) fn placement_nodes(&self) -> &[PlacementNode] {
        self.placement_nodes.get_or_init(|| {
            // `nodes` and `node_meta` have exactly the node ids as keys (the type's invariant): they walk in step.
            self.nodes
                .values()
                .zip(self.node_meta.values())
                .filter(|(node, _)| node.is_schedulable())
                .map(|(node, meta)| PlacementNode {
                    node: Arc::clone(node),
                    class: meta.class,
                    usage_slot: meta.usage_slot,
                    capacity: Capacity::of(node),
                })
                .collect()
        })
    }

    /// Allocations in `OrderKey` order: the ones the scheduler made by creation time, then id.
    pub fn allocs(&self) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.allocs.values()
    }

    /// Jobs (latest versions) in name order.
    pub fn jobs(&self) -> impl Iterator<Item = &Arc<Job>> + '_ {
        self.jobs.values()
    }

    /// Stored versions of a job, oldest first.
    pub fn job_versions(&self, name: &str) -> impl Iterator<Item = &Arc<Job>> + '_ {
        self.job_versions.get(name).into_iter().flat_map(|versions| versions.values())
    }

    /// Every allocation of the job, terminal ones included, in `OrderKey` order.
    pub fn allocs_for_job(&self, name: &str) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.indexed_allocs(self.allocs_by_job.get(name))
    }

    /// Every allocation placed on the node, terminal ones included, in `OrderKey` order.
    pub fn allocs_for_node(&self, id: &str) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.indexed_allocs(self.allocs_by_node.get(id))
    }

    /// CPU, memory and ports reserved on the node by its non-terminal allocations.
    pub fn node_usage(&self, id: &str) -> NodeUsage {
        let live = self.live_usage(id);
        NodeUsage { cpu: live.cpu, memory: live.memory, ports: live.ports.keys().copied().collect() }
    }

    /// Whether the node can hold its live allocations minus `leaving` plus the non-terminal ones of
    /// `arriving`: CPU and memory within its resources, and no port of an arriving allocation reserved or
    /// held twice. `leaving` must be live allocations of the node, each once.
    pub fn fits_after<'a>(&self, node: &Node, leaving: impl IntoIterator<Item = &'a Allocation>, arriving: &[Allocation]) -> bool {
        let mut usage = self.live_usage(&node.id);
        for alloc in leaving {
            usage.remove(&alloc.resources);
        }
        let arriving = arriving.iter().filter(|alloc| !alloc.is_terminal());
        for alloc in arriving.clone() {
            usage.add(&alloc.resources);
        }
        usage.cpu <= node.resources.cpu
            && usage.memory <= node.resources.memory
            && arriving
                .flat_map(|alloc| &alloc.resources.ports)
                .all(|port| usage.ports.get(&port.value) == Some(&1) && !node.resources.reserved_ports.contains(&port.value))
    }

    /// The node's computed class (see `feasible`); `None` for an unknown node.
    pub(crate) fn node_class(&self, id: &str) -> Option<u64> {
        self.node_meta.get(id).map(|meta| meta.class)
    }

    /// What the node's live allocations reserve (a cheap clone).
    pub(crate) fn live_usage(&self, id: &str) -> LiveUsage {
        self.usage_slot(id).map(|slot| self.live_usage_in(slot)).unwrap_or_default()
    }

    /// The usage slot of a node id: held while the node is stored or allocations name it. `None`: neither.
    pub(crate) fn usage_slot(&self, id: &str) -> Option<u32> {
        self.usage_slots.get(id).copied()
    }

    /// The stored node and its usage slot.
    pub(crate) fn node_with_usage_slot(&self, id: &str) -> Option<(&Arc<Node>, u32)> {
        self.node(id).zip(self.usage_slot(id))
    }

    /// What the live allocations of the node holding the usage slot reserve (a cheap clone).
    pub(crate) fn live_usage_in(&self, usage_slot: u32) -> LiveUsage {
        self.live_usage.get(usage_slot as usize).cloned().unwrap_or_default()
    }

    /// One more than the highest usage slot (every slot is below it).
    pub(crate) fn usage_slot_count(&self) -> usize {
        self.live_usage.len()
    }

    fn remove_live_usage(&mut self, alloc: &Allocation) {
        if let Some(slot) = self.usage_slot(&alloc.node_id) {
            self.live_usage[slot as usize].remove(&alloc.resources);
        }
        self.count_namespace_usage(alloc, false);
    }

    /// Adds (or takes away) a live allocation's resources to (from) its namespace's usage.
    fn count_namespace_usage(&mut self, alloc: &Allocation, add: bool) {
        let namespace = namespace_of(&alloc.job_name);
        let usage = match self.namespace_usage.get_mut(namespace) {
            Some(usage) => usage,
            None => self.namespace_usage.entry(namespace.to_string()).or_default(),
        };
        if add {
            usage.add(alloc.resources.cpu, alloc.resources.memory);
        } else {
            usage.remove(alloc.resources.cpu, alloc.resources.memory);
        }
    }

    /// What the live allocations of a namespace's jobs reserve.
    pub fn namespace_usage(&self, namespace: &str) -> NamespaceUsage {
        self.namespace_usage.get(namespace).copied().unwrap_or_default()
    }

    pub fn upsert_namespace(&mut self, namespace: Arc<Namespace>) {
        self.namespaces.insert(namespace.name.clone(), namespace);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// A stored namespace (`default` only once an operator applied it, e.g. to give it a quota).
    pub fn namespace(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<Namespace>> + '_ {
        self.namespaces.values()
    }

    /// The node id's usage slot, given to it (a free one, else a new one) if it has none.
    fn hold_usage_slot(&mut self, id: &str) -> u32 {
        if let Some(slot) = self.usage_slot(id) {
            return slot;
        }
        let slot = match self.free_usage_slots.pop_back() {
            Some(slot) => slot,
            None => {
                self.live_usage.push_back(LiveUsage::default());
                u32::try_from(self.live_usage.len() - 1).expect("fewer than 2^32 node ids")
            }
        };
        self.usage_slots.insert(id.to_string(), slot);
        slot
    }

    /// Frees the node id's usage slot once neither a node nor an allocation names the id.
    fn release_usage_slot_if_unused(&mut self, id: &str) {
        if self.nodes.contains_key(id) || self.allocs_by_node.contains_key(id) {
            return;
        }
        if let Some(slot) = self.usage_slots.remove(id) {
            self.live_usage[slot as usize] = LiveUsage::default();
            self.free_usage_slots.push_back(slot);
        }
    }

    fn indexed_allocs<'a>(&'a self, ids: Option<&'a OrdSet<Arc<str>>>) -> impl Iterator<Item = &'a Arc<Allocation>> + 'a {
        ids.into_iter().flat_map(|ids| ids.iter()).filter_map(|id| self.allocs.get(&**id))
    }
}

/// Adds `order_key` to the set of `key` (looked up first: copying the key for an entry is the slower path).
fn add_to_index(index: &mut OrdMap<String, OrdSet<Arc<str>>>, key: &str, order_key: &Arc<str>) {
    match index.get_mut(key) {
        Some(ids) => {
            ids.insert(Arc::clone(order_key));
        }
        None => {
            index.insert(key.to_string(), OrdSet::unit(Arc::clone(order_key)));
        }
    }
}

/// Removes the allocation held under `order_key` from the index set under `key`.
fn remove_from_index(index: &mut OrdMap<String, OrdSet<Arc<str>>>, key: &str, order_key: &str) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(order_key);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// The key allocations are kept under: for ids the scheduler made ([`crate::alloc_id_created`]) the creation
/// time, then the id, so allocations created together sit together in the maps (a plan's writes and the status
/// updates that follow copy few map nodes); any other id as it is. A key is its own key (48 characters never
/// have an id's shape), so lookups take either.
enum OrderKey<'a> {
    Created([u8; 48]),
    Plain(&'a str),
}

impl OrderKey<'_> {
    fn of(id: &str) -> OrderKey<'_> {
        match crate::alloc_id_created(id) {
            Some(created) => {
                let mut key = [0u8; 48];
                key[..12].copy_from_slice(&created);
                key[12..].copy_from_slice(id.as_bytes());
                OrderKey::Created(key)
            }
            None => OrderKey::Plain(id),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            OrderKey::Created(key) => std::str::from_utf8(key).expect("hex digits and an id of ASCII"),
            OrderKey::Plain(id) => id,
        }
    }
}
