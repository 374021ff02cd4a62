//! Builders of cluster objects for tests (feature `testing`): one place that spells out every field, so
//! a test writes only what it is about (`Allocation { client_status: Failed, ..testing::alloc(…) }`).

use std::collections::BTreeMap;

use crate::objects::{
    AllocatedResources, Allocation, ClientStatus, DesiredStatus, DriverInfo, Node, NodeEligibility, NodeResources, NodeStatus,
};

/// A ready, eligible node in dc1 with healthy `exec` and `container` drivers, 4 cores, 8 GiB, ports
/// 20000–20999 and the attributes `cpu.arch` (x86_64), `os.name` (linux) and `unique.hostname` (`<id>.local`).
pub fn node(id: &str) -> Node {
    let healthy = DriverInfo { detected: true, healthy: true, description: String::new(), attributes: BTreeMap::new() };
    Node {
        id: id.to_string(),
        name: id.to_string(),
        datacenter: "dc1".to_string(),
        class: String::new(),
        attributes: BTreeMap::from([
            ("cpu.arch".to_string(), "x86_64".to_string()),
            ("os.name".to_string(), "linux".to_string()),
            ("unique.hostname".to_string(), format!("{id}.local")),
        ]),
        resources: NodeResources { cpu: 4000, memory: 8192, port_range: (20000, 20999), reserved_ports: Vec::new() },
        drivers: BTreeMap::from([("exec".to_string(), healthy.clone()), ("container".to_string(), healthy)]),
        status: NodeStatus::Ready,
        eligibility: NodeEligibility::Eligible,
        drain: None,
        http_addr: format!("http://{id}:7647"),
        status_description: String::new(),
        last_heartbeat: 0,
        create_index: 0,
        modify_index: 0,
    }
}

/// A running allocation `<job>.<group>[<index>]` of job version 0 on `node_id`, 500 millicores and 256 MiB,
/// no ports.
pub fn alloc(id: &str, job: &str, group: &str, index: u32, node_id: &str) -> Allocation {
    Allocation {
        id: id.to_string(),
        name: format!("{job}.{group}[{index}]"),
        job_name: job.to_string(),
        job_version: 0,
        group: group.to_string(),
        index,
        node_id: node_id.to_string(),
        node_name: node_id.to_string(),
        eval_id: "eval".to_string(),
        desired_status: DesiredStatus::Run,
        desired_description: String::new(),
        client_status: ClientStatus::Running,
        client_description: String::new(),
        task_states: Default::default(),
        healthy: None,
        health_description: String::new(),
        resources: AllocatedResources { cpu: 500, memory: 256, ports: Vec::new() },
        previous_allocation: None,
        reschedule_tracker: Vec::new(),
        migration: None,
        deployment_id: None,
        deployment_health: None,
        shadow: None,
        restart_generation: 0,
        create_time: 0,
        modify_time: 0,
        create_index: 0,
        modify_index: 0,
    }
}
