//! What this node is: a stable id kept in the data dir, attributes read from the host, capacity, drivers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use davit_api::objects::{DriverInfo, Node, NodeEligibility, NodeResources, NodeStatus};
use davit_drivers::Driver;

use crate::AgentError;

/// The facts about the node that tasks can see through interpolation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub class: String,
    pub attributes: BTreeMap<String, String>,
}

/// Reads `<data_dir>/node-id`, creating it with a random UUID the first time.
pub fn load_or_create_node_id(data_dir: &Path) -> Result<String, AgentError> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(AgentError::Io { operation: format!("reading {}", path.display()), source }),
    }
    let id = uuid::Uuid::new_v4().to_string();
    crate::state::write_atomic(&path, format!("{id}\n").as_bytes())
        .map_err(|source| AgentError::Io { operation: format!("writing {}", path.display()), source })?;
    Ok(id)
}

/// Host attributes: `arch` (also as `cpu.arch`), `os.name`, `os.version`, `kernel.name`, `kernel.version`, `cpu.cores`, `cpu.mhz`,
/// `memory.total_mib`, `unique.hostname`. Those that cannot be read are left out.
pub fn host_attributes() -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    attributes.insert("arch".to_string(), std::env::consts::ARCH.to_string());
    // The spelling used in `Node.attributes`' documentation.
    attributes.insert("cpu.arch".to_string(), std::env::consts::ARCH.to_string());
    attributes.insert("os.name".to_string(), std::env::consts::OS.to_string());
    if let Some(version) = read("/etc/os-release").as_deref().and_then(os_release_version) {
        attributes.insert("os.version".to_string(), version);
    }
    let kernel_name =
        read("/proc/sys/kernel/ostype").map(|name| name.trim().to_lowercase()).unwrap_or_else(|| std::env::consts::OS.to_string());
    attributes.insert("kernel.name".to_string(), kernel_name);
    if let Some(release) = read("/proc/sys/kernel/osrelease") {
        attributes.insert("kernel.version".to_string(), release.trim().to_string());
    }
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    attributes.insert("cpu.cores".to_string(), cpu_cores(&cpuinfo).to_string());
    if let Some(mhz) = cpu_mhz(&cpuinfo).or_else(cpu_mhz_from_sysfs) {
        attributes.insert("cpu.mhz".to_string(), mhz.to_string());
    }
    if let Some(mib) = read("/proc/meminfo").as_deref().and_then(memory_total_mib) {
        attributes.insert("memory.total_mib".to_string(), mib.to_string());
    }
    if let Some(hostname) = hostname() {
        attributes.insert("unique.hostname".to_string(), hostname);
    }
    attributes
}

/// The host name, if it can be read.
pub fn hostname() -> Option<String> {
    read("/proc/sys/kernel/hostname").map(|name| name.trim().to_string()).filter(|name| !name.is_empty())
}

/// Builds the node as registered with the server.
pub fn build_node(
    identity: &NodeIdentity,
    http_addr: String,
    http_port: u16,
    port_range: (u16, u16),
    drivers: BTreeMap<String, DriverInfo>,
) -> Node {
    let cores: u64 = identity.attributes.get("cpu.cores").and_then(|cores| cores.parse().ok()).unwrap_or(1);
    let memory: u64 = identity.attributes.get("memory.total_mib").and_then(|mib| mib.parse().ok()).unwrap_or(0);
    let reserved_ports = if (port_range.0..=port_range.1).contains(&http_port) { vec![http_port] } else { Vec::new() };
    Node {
        id: identity.id.clone(),
        name: identity.name.clone(),
        datacenter: identity.datacenter.clone(),
        class: identity.class.clone(),
        attributes: identity.attributes.clone(),
        resources: NodeResources { cpu: cores * 1000, memory, port_range, reserved_ports },
        drivers,
        status: NodeStatus::Ready,
        eligibility: NodeEligibility::Eligible,
        drain: None,
        http_addr,
        status_description: String::new(),
        last_heartbeat: 0,
        create_index: 0,
        modify_index: 0,
    }
}

/// `Node.drivers` from each driver's fingerprint.
pub async fn fingerprint_drivers(drivers: &[Arc<dyn Driver>]) -> BTreeMap<String, DriverInfo> {
    let mut infos = BTreeMap::new();
    for driver in drivers {
        let fingerprint = driver.fingerprint().await;
        infos.insert(
            driver.name().to_string(),
            DriverInfo {
                detected: fingerprint.detected,
                healthy: fingerprint.healthy,
                description: fingerprint.description,
                attributes: fingerprint.attributes,
            },
        );
    }
    infos
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn os_release_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix("VERSION_ID=")).map(|value| value.trim().trim_matches('"').to_string())
}

fn cpu_cores(cpuinfo: &str) -> usize {
    let processors = cpuinfo.lines().filter(|line| line.split(':').next().is_some_and(|key| key.trim() == "processor")).count();
    if processors > 0 { processors } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
}

fn cpu_mhz(cpuinfo: &str) -> Option<u64> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() != "cpu MHz" {
            return None;
        }
        value.trim().parse::<f64>().ok().map(|mhz| mhz.round() as u64)
    })
}

fn cpu_mhz_from_sysfs() -> Option<u64> {
    let khz: u64 = read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")?.trim().parse().ok()?;
    Some(khz / 1000)
}

fn memory_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.trim_start_matches("MemTotal:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_files() {
        assert_eq!(os_release_version("NAME=\"Debian\"\nVERSION_ID=\"12\"\n").as_deref(), Some("12"));
        assert_eq!(os_release_version("VERSION_ID=22.04\n").as_deref(), Some("22.04"));
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2399.998\n\nprocessor\t: 1\ncpu MHz\t\t: 2400.000\n";
        assert_eq!(cpu_cores(cpuinfo), 2);
        assert_eq!(cpu_mhz(cpuinfo), Some(2400));
        assert_eq!(memory_total_mib("MemTotal:       16318480 kB\nMemFree: 1 kB\n"), Some(15936));
    }

    #[test]
    fn node_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(first.len(), 36);
        assert_eq!(load_or_create_node_id(dir.path()).unwrap(), first);
    }

    #[test]
    fn reserves_the_agent_port_inside_the_range() {
        let identity = NodeIdentity {
            id: "n".to_string(),
            name: "n".to_string(),
            datacenter: "dc1".to_string(),
            class: String::new(),
            attributes: BTreeMap::from([("cpu.cores".to_string(), "4".to_string()), ("memory.total_mib".to_string(), "2048".to_string())]),
        };
        let node = build_node(&identity, "http://127.0.0.1:20001".to_string(), 20001, (20000, 32000), BTreeMap::new());
        assert_eq!(node.resources, NodeResources { cpu: 4000, memory: 2048, port_range: (20000, 32000), reserved_ports: vec![20001] });
        let node = build_node(&identity, "http://127.0.0.1:7647".to_string(), 7647, (20000, 32000), BTreeMap::new());
        assert!(node.resources.reserved_ports.is_empty());
    }
}
