//! New allocations: their ids, and the allocation objects the scheduler's pieces (generic and system
//! placement, rebalancing, live migration) create.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use davit_api::objects::{AllocatedResources, Allocation, ClientStatus, DesiredStatus, Job, Node, RescheduleEvent, UnixMillis};
use rand::Rng;
use rand::rngs::SmallRng;

use crate::fxhash::FxHasher;
use crate::state::ClusterState;

/// The ids one scheduler run hands out: `rrrrrrrr-tttt-7ttt-vttt-ttrrrrrrrrrr`, UUID-shaped (version 7, variant
/// `v` of 8, 9, a, b) with the run's time in milliseconds (`t`, 48 bits) after 32 random bits, and 74 more
/// random bits. The leading random part keeps short ids (the first 8 characters) distinct; the store keys an
/// allocation by the time part first (`davit-server`'s `keys::alloc`), so allocations created together sit
/// together in its B-tree.
pub(crate) struct AllocIds {
    now: UnixMillis,
    /// The bits of each issued id (the id is their text form). Only looked up, never iterated.
    issued: HashSet<[u8; 16], BuildHasherDefault<FxHasher>>,
}

impl AllocIds {
    pub(crate) fn new(now: UnixMillis) -> AllocIds {
        AllocIds { now, issued: HashSet::default() }
    }

    /// A fresh id: random, but never one the state or this run already uses (a caller that reuses a seed for
    /// a retried evaluation would otherwise get the ids of the allocations it committed).
    pub(crate) fn next(&mut self, state: &ClusterState, rng: &mut SmallRng) -> String {
        loop {
            let bytes = uuid_v7_bytes(self.now, rng);
            let id = format_uuid(&bytes);
            if state.alloc(&id).is_none() && self.issued.insert(bytes) {
                return id;
            }
        }
    }
}

/// The 12 hex digits of creation time in an id the scheduler made (`rrrrrrrr-tttt-7ttt-vttt-ttrrrrrrrrrr`, see
/// `AllocIds`); `None` for ids of any other shape. Stores and indexes order allocations by it.
pub fn alloc_id_created(id: &str) -> Option<[u8; 12]> {
    let bytes = id.as_bytes();
    let shaped = bytes.len() == 36
        && [8, 13, 18, 23].iter().all(|&dash| bytes[dash] == b'-')
        && bytes[14] == b'7'
        && matches!(bytes[19], b'8' | b'9' | b'a' | b'b');
    if !shaped {
        return None;
    }
    let mut created = [0u8; 12];
    for (to, from) in created.iter_mut().zip(bytes[9..13].iter().chain(&bytes[15..18]).chain(&bytes[20..23]).chain(&bytes[24..26])) {
        *to = *from;
    }
    created.iter().all(u8::is_ascii_hexdigit).then_some(created)
}

/// A new allocation of a job's group on a node, not yet started.
pub(crate) struct NewAllocation<'a> {
    pub(crate) job: &'a Job,
    pub(crate) group: &'a str,
    pub(crate) index: u32,
    pub(crate) node: &'a Node,
    pub(crate) eval_id: &'a str,
    pub(crate) resources: AllocatedResources,
    /// The allocation it replaces, if any.
    pub(crate) previous: Option<&'a Allocation>,
    /// Set when `previous` failed and this allocation reschedules it after this delay (ms): the previous
    /// allocation's reschedule tracker, plus this event, carries over.
    pub(crate) reschedule_delay_ms: Option<u64>,
    /// The deployment placing it, if any.
    pub(crate) deployment_id: Option<&'a str>,
    /// Placed beside `previous`, which keeps running (a canary or a surge).
    pub(crate) shadow: Option<davit_api::deployment::Shadow>,
    pub(crate) now: UnixMillis,
}

impl NewAllocation<'_> {
    pub(crate) fn build(self, id: String) -> Allocation {
        let reschedule_tracker = match self.previous.zip(self.reschedule_delay_ms) {
            Some((previous, delay_ms)) => {
                let mut tracker = previous.reschedule_tracker.clone();
                tracker.push(RescheduleEvent {
                    time: self.now,
                    prev_alloc_id: previous.id.clone(),
                    prev_node_id: previous.node_id.clone(),
                    delay_ms,
                });
                tracker
            }
            None => Vec::new(),
        };
        Allocation {
            id,
            name: format!("{}.{}[{}]", self.job.spec.name, self.group, self.index),
            job_name: self.job.spec.id(),
            job_version: self.job.version,
            group: self.group.to_string(),
            index: self.index,
            node_id: self.node.id.clone(),
            node_name: self.node.name.clone(),
            eval_id: self.eval_id.to_string(),
            desired_status: DesiredStatus::Run,
            desired_description: String::new(),
            client_status: ClientStatus::Pending,
            client_description: String::new(),
            task_states: Default::default(),
            healthy: None,
            health_description: String::new(),
            resources: self.resources,
            previous_allocation: self.previous.map(|previous| previous.id.clone()),
            reschedule_tracker,
            migration: None,
            deployment_id: self.deployment_id.map(str::to_string),
            deployment_health: None,
            shadow: self.shadow,
            restart_generation: 0,
            create_time: self.now,
            modify_time: self.now,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// A copy of `source` for another node, not yet started: a new id, the node, the resources assigned there,
/// `previous_allocation` naming the source, and fresh status, health and times. Keeps name, index, job
/// version, eval id and reschedule tracker.
pub(crate) fn moved_copy(source: &Allocation, id: String, node: &Node, resources: AllocatedResources, now: UnixMillis) -> Allocation {
    Allocation {
        id,
        node_id: node.id.clone(),
        node_name: node.name.clone(),
        desired_status: DesiredStatus::Run,
        desired_description: String::new(),
        client_status: ClientStatus::Pending,
        client_description: String::new(),
        task_states: Default::default(),
        healthy: None,
        health_description: String::new(),
        resources,
        previous_allocation: Some(source.id.clone()),
        migration: None,
        create_time: now,
        modify_time: now,
        create_index: 0,
        modify_index: 0,
        ..source.clone()
    }
}

/// The bits of an id (see [`AllocIds`]): random bits from the seeded generator, so that runs are
/// reproducible, with `now` (48 bits of milliseconds) in bytes 4 to 10 around the version and variant.
fn uuid_v7_bytes(now: UnixMillis, rng: &mut SmallRng) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    let t = now & 0xffff_ffff_ffff;
    bytes[4] = (t >> 40) as u8;
    bytes[5] = (t >> 32) as u8;
    bytes[6] = 0x70 | ((t >> 28) & 0x0f) as u8;
    bytes[7] = (t >> 20) as u8;
    bytes[8] = 0x80 | (bytes[8] & 0x30) | ((t >> 16) & 0x0f) as u8;
    bytes[9] = (t >> 8) as u8;
    bytes[10] = t as u8;
    bytes
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower-case hex.
fn format_uuid(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    for (position, byte) in bytes.iter().enumerate() {
        if matches!(position, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn uuid_format() {
        let mut rng = SmallRng::seed_from_u64(7);
        let now = 0x019a_e2bc_4d5e;
        let id = format_uuid(&uuid_v7_bytes(now, &mut rng));
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!([&id[9..13], &id[15..18], &id[20..23], &id[24..26]].concat(), "019ae2bc4d5e", "{id}");
        assert_eq!(id.as_bytes()[14], b'7', "{id}");
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{id}");
        let next = format_uuid(&uuid_v7_bytes(now, &mut rng));
        assert_ne!(id[..8], next[..8], "ids of the same millisecond differ in their first characters");
        assert_eq!(alloc_id_created(&id), Some(*b"019ae2bc4d5e"));
        assert_eq!(alloc_id_created("5f3c9a21-019a-4e2b-8c4d-5e6f70819203"), None);
        assert_eq!(alloc_id_created("a1"), None);
        assert_eq!(alloc_id_created("5f3c9a21-0é9-7e2b-8c4d-5e6f70819203"), None, "time digits are hex");
    }
}
