//! [`ClusterState`]: the immutable, cheaply clonable picture of the cluster the scheduler reads.

use std::collections::BTreeSet;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, OnceLock};

use davit_api::objects::{AllocatedResources, Allocation, Job, Node};
use imbl::{OrdMap, OrdSet};

use crate::rank::FxHasher;

/// Nodes, allocations, jobs and job versions, indexed for the scheduler.
///
/// Built on persistent maps: `clone` is O(1) and shares structure, so the server keeps one, updates it
/// from the store's change feed and hands clones (snapshots) to scheduler workers. Updates take `&mut self`
/// but never affect earlier clones.
///
/// Invariant: `allocs_by_node` and `allocs_by_job` hold exactly the ids of `allocs`, keyed by each
/// allocation's current `node_id` and `job_name`; empty index sets are removed. `anti_affinity_jobs` holds
/// exactly the names of the jobs whose latest version has a group with a required anti-affinity.
/// `node_classes` holds the computed class of every node; `live_usage` the sum of the resources of the
/// non-terminal allocations of each node id (entries of nodes without live allocations may be zero).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    nodes: OrdMap<String, Arc<Node>>,
    allocs: OrdMap<String, Arc<Allocation>>,
    allocs_by_node: OrdMap<String, OrdSet<String>>,
    allocs_by_job: OrdMap<String, OrdSet<String>>,
    jobs: OrdMap<String, Arc<Job>>,
    anti_affinity_jobs: OrdSet<String>,
    job_versions: OrdMap<String, OrdMap<u64, Arc<Job>>>,
    /// Per node id: its computed class (see `feasible`), computed once when the node is stored.
    node_classes: OrdMap<String, u64>,
    /// Per node id: what its live allocations reserve, kept current as allocations change.
    live_usage: imbl::GenericHashMap<String, LiveUsage, BuildHasherDefault<FxHasher>, imbl::shared_ptr::DefaultSharedPtr>,
    /// The schedulable nodes with their classes, in id order: derived from `nodes`, computed on first use
    /// and shared by clones; replaced by an empty cell whenever a node changes.
    placement_nodes: Arc<OnceLock<Arc<[PlacementNode]>>>,
}

/// A schedulable node and its computed class, as the node walk of a placement reads them.
#[derive(Clone, Debug)]
pub(crate) struct PlacementNode {
    pub(crate) node: Arc<Node>,
    pub(crate) class: u64,
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

    pub fn upsert_node(&mut self, node: Arc<Node>) {
        self.node_classes.insert(node.id.clone(), crate::feasible::computed_class(&node));
        self.nodes.insert(node.id.clone(), node);
        self.placement_nodes = Arc::default();
    }

    /// Removes the node. Its allocations stay: the scheduler sees them as lost.
    pub fn remove_node(&mut self, id: &str) -> Option<Arc<Node>> {
        self.node_classes.remove(id);
        self.placement_nodes = Arc::default();
        self.nodes.remove(id)
    }

    pub fn upsert_alloc(&mut self, alloc: Arc<Allocation>) {
        if !alloc.is_terminal() {
            self.live_usage.entry(alloc.node_id.clone()).or_default().add(&alloc.resources);
        }
        if let Some(old) = self.allocs.insert(alloc.id.clone(), Arc::clone(&alloc)) {
            if !old.is_terminal() {
                self.remove_live_usage(&old);
            }
            if old.node_id != alloc.node_id {
                remove_from_index(&mut self.allocs_by_node, &old.node_id, &old.id);
            }
            if old.job_name != alloc.job_name {
                remove_from_index(&mut self.allocs_by_job, &old.job_name, &old.id);
            }
        }
        self.allocs_by_node.entry(alloc.node_id.clone()).or_default().insert(alloc.id.clone());
        self.allocs_by_job.entry(alloc.job_name.clone()).or_default().insert(alloc.id.clone());
    }

    pub fn remove_alloc(&mut self, id: &str) -> Option<Arc<Allocation>> {
        let alloc = self.allocs.remove(id)?;
        if !alloc.is_terminal() {
            self.remove_live_usage(&alloc);
        }
        remove_from_index(&mut self.allocs_by_node, &alloc.node_id, id);
        remove_from_index(&mut self.allocs_by_job, &alloc.job_name, id);
        Some(alloc)
    }

    /// Sets the latest version of a job (the job itself). Its versions are kept separately, see
    /// [`ClusterState::upsert_job_version`].
    pub fn upsert_job(&mut self, job: Arc<Job>) {
        let required_anti_affinity =
            job.spec.groups.iter().any(|group| group.anti_affinities.iter().any(|anti_affinity| anti_affinity.required));
        if required_anti_affinity {
            self.anti_affinity_jobs.insert(job.spec.name.clone());
        } else {
            self.anti_affinity_jobs.remove(&job.spec.name);
        }
        self.jobs.insert(job.spec.name.clone(), job);
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
        self.job_versions.entry(job.spec.name.clone()).or_default().insert(job.version, job);
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

    pub fn alloc(&self, id: &str) -> Option<&Arc<Allocation>> {
        self.allocs.get(id)
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
            // `nodes` and `node_classes` have exactly the node ids as keys (the type's invariant): they walk in step.
            self.nodes
                .values()
                .zip(self.node_classes.values())
                .filter(|(node, _)| node.is_schedulable())
                .map(|(node, class)| PlacementNode { node: Arc::clone(node), class: *class })
                .collect()
        })
    }

    /// Allocations in id order.
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

    /// Every allocation of the job, terminal ones included, in id order.
    pub fn allocs_for_job(&self, name: &str) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.indexed_allocs(self.allocs_by_job.get(name))
    }

    /// Every allocation placed on the node, terminal ones included, in id order.
    pub fn allocs_for_node(&self, id: &str) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.indexed_allocs(self.allocs_by_node.get(id))
    }

    /// CPU, memory and ports reserved on the node by its non-terminal allocations.
    pub fn node_usage(&self, id: &str) -> NodeUsage {
        let live = self.live_usage(id);
        NodeUsage { cpu: live.cpu, memory: live.memory, ports: live.ports.keys().copied().collect() }
    }

    /// The node's computed class (see `feasible`); `None` for an unknown node.
    pub(crate) fn node_class(&self, id: &str) -> Option<u64> {
        self.node_classes.get(id).copied()
    }

    /// What the node's live allocations reserve (a cheap clone).
    pub(crate) fn live_usage(&self, id: &str) -> LiveUsage {
        self.live_usage.get(id).cloned().unwrap_or_default()
    }

    fn remove_live_usage(&mut self, alloc: &Allocation) {
        if let Some(usage) = self.live_usage.get_mut(&alloc.node_id) {
            usage.remove(&alloc.resources);
            if usage.cpu == 0 && usage.memory == 0 && usage.ports.is_empty() {
                self.live_usage.remove(&alloc.node_id);
            }
        }
    }

    fn indexed_allocs<'a>(&'a self, ids: Option<&'a OrdSet<String>>) -> impl Iterator<Item = &'a Arc<Allocation>> + 'a {
        ids.into_iter().flat_map(|ids| ids.iter()).filter_map(|id| self.allocs.get(id))
    }
}

fn remove_from_index(index: &mut OrdMap<String, OrdSet<String>>, key: &str, id: &str) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}
