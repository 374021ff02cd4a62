//! The `config:` block of a `vm` task (its type is `davit_api::spec::drivers::VmConfig`), and the pure parts
//! of turning it into a QEMU command line.

use davit_api::spec::drivers::{DriverConfig, VmConfig};

use crate::{DriverError, TaskConfig};

use super::DRIVER_NAME;

pub(crate) fn invalid(message: impl Into<String>) -> DriverError {
    DriverError::InvalidConfig { driver: DRIVER_NAME, message: message.into() }
}

/// Parses and checks the task's `config:` block.
pub(crate) fn parse(value: &serde_json::Value) -> Result<VmConfig, DriverError> {
    VmConfig::parse(value).map_err(invalid)
}

/// A forwarded TCP port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PortForward {
    pub label: String,
    pub host_port: u16,
    pub guest_port: u16,
}

/// The forwarded ports: host ports come from the task env (`DAVIT_HOST_PORT_<label>`, else `DAVIT_PORT_<label>`).
pub(crate) fn port_forwards(config: &VmConfig, task: &TaskConfig) -> Result<Vec<PortForward>, DriverError> {
    let env_label = |label: &str| label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect::<String>();
    let port_from_env = |key: &str| -> Result<Option<u16>, DriverError> {
        match task.env.get(key) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|_| invalid(format!("{key}={value:?} is not a port"))),
        }
    };
    let mut forwards = Vec::new();
    match &config.ports {
        Some(ports) => {
            for (label, guest_port) in ports {
                let label_part = env_label(label);
                let host_port = match port_from_env(&format!("DAVIT_HOST_PORT_{label_part}"))? {
                    Some(port) => port,
                    None => port_from_env(&format!("DAVIT_PORT_{label_part}"))?.ok_or_else(|| {
                        invalid(format!("port {label:?}: no DAVIT_HOST_PORT_{label_part} or DAVIT_PORT_{label_part} in the task env"))
                    })?,
                };
                forwards.push(PortForward { label: label.clone(), host_port, guest_port: *guest_port });
            }
        }
        None => {
            for (key, _) in task.env.range("DAVIT_HOST_PORT_".to_owned()..) {
                let Some(label) = key.strip_prefix("DAVIT_HOST_PORT_") else { break };
                let host_port = port_from_env(key)?.expect("key exists");
                let guest_port = port_from_env(&format!("DAVIT_PORT_{label}"))?.unwrap_or(host_port);
                forwards.push(PortForward { label: label.to_owned(), host_port, guest_port });
            }
        }
    }
    Ok(forwards)
}

/// vCPUs from the CPU reservation: whole cores, rounded up, at least one.
pub(crate) fn vcpus(cpu_millicores: u32) -> u32 {
    cpu_millicores.div_ceil(1000).max(1)
}

/// Guest memory when the task reserves none.
pub(crate) const DEFAULT_GUEST_MEMORY_MIB: u32 = 256;

/// The cgroup memory limit for a guest of `guest_mib`: QEMU itself (device emulation, TCG translation cache,
/// page tables, I/O buffers) needs memory beyond the guest's RAM, so the limit is guest + 128 MiB + 10 %.
pub(crate) fn cgroup_memory_mib(guest_mib: u32) -> u32 {
    guest_mib.saturating_add(128).saturating_add(guest_mib / 10)
}

/// The cgroup CPU limit for a guest given `requested` millicores: QEMU's own threads (main loop, device
/// emulation, I/O, TCG code translation) run beside the vCPU threads, so the limit is the request + 25 %.
pub(crate) fn cgroup_cpu_millicores(requested: u32) -> u32 {
    requested.saturating_add(requested / 4)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use davit_api::spec::drivers::{DiskFormat, Machine};

    use super::*;

    fn task_with_env(env: &[(&str, &str)]) -> TaskConfig {
        TaskConfig {
            alloc_id: "a1".to_owned(),
            task_name: "web".to_owned(),
            driver_config: serde_json::Value::Null,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            user: None,
            alloc_dir: "/a".into(),
            task_dir: "/a/web".into(),
            log_dir: "/a/.logs".into(),
            resources: crate::TaskResources { cpu_millicores: 1000, memory_mib: 256 },
            logs: crate::LogRotation::default(),
            events: crate::EventSink::discard(),
        }
    }

    #[test]
    fn rejects_unknown_fields_and_missing_boot_source() {
        let error = parse(&serde_json::json!({"kernel": "/k", "kernal": "/x"})).unwrap_err();
        assert!(error.to_string().contains("unknown field `kernal`"), "{error}");
        let error = parse(&serde_json::json!({"accel": "hvf", "kernel": "/k"})).unwrap_err();
        assert!(error.to_string().contains("unknown variant `hvf`"), "{error}");
        let error = parse(&serde_json::json!({})).unwrap_err();
        assert!(error.to_string().contains("needs `kernel` (direct kernel boot) or `disk`"), "{error}");
        let error = parse(&serde_json::json!({"disk": {"image": "https://x/y.qcow2"}})).unwrap_err();
        assert!(error.to_string().contains("needs `checksum"), "{error}");
        let error = parse(&serde_json::json!({"kernel": "vmlinux"})).unwrap_err();
        assert!(error.to_string().contains("must be an absolute path"), "{error}");
        let error = parse(&serde_json::json!({"disk": {"image": "/d", "size": 3}})).unwrap_err();
        assert!(error.to_string().contains("unknown field `size`"), "{error}");
    }

    #[test]
    fn parses_a_full_config() {
        let config = parse(&serde_json::json!({
            "accel": "tcg", "kernel": "/k", "initrd": "/i", "cmdline": "quiet",
            "disk": {"image": "/d.qcow2"}, "ports": {"http": 8080}, "graceful_shutdown_timeout": "1.5s",
            "cloud_init": {"user_data": "#cloud-config\n", "meta_data": {"local-hostname": "x"}}, "console": "serial"
        }))
        .unwrap();
        assert_eq!(config.machine(), Machine::Microvm);
        assert_eq!(config.graceful_shutdown_timeout, Some(davit_api::Duration::from_millis(1500)));
        assert!(config.disk.as_ref().unwrap().overlay);
        assert_eq!(config.disk.as_ref().unwrap().format, DiskFormat::Qcow2);
    }

    #[test]
    fn ports_come_from_the_task_env() {
        let config = VmConfig { ports: Some(BTreeMap::from([("http".to_owned(), 8080)])), ..VmConfig::default() };
        let task = task_with_env(&[("DAVIT_PORT_http", "23456")]);
        assert_eq!(port_forwards(&config, &task).unwrap(), [PortForward { label: "http".to_owned(), host_port: 23456, guest_port: 8080 }]);
        let derived = task_with_env(&[("DAVIT_HOST_PORT_http", "23456"), ("DAVIT_PORT_http", "80"), ("DAVIT_PORT_other", "1")]);
        assert_eq!(
            port_forwards(&VmConfig::default(), &derived).unwrap(),
            [PortForward { label: "http".to_owned(), host_port: 23456, guest_port: 80 }]
        );
        let error = port_forwards(&config, &task_with_env(&[])).unwrap_err();
        assert!(error.to_string().contains("DAVIT_PORT_http"), "{error}");
    }

    #[test]
    fn resources() {
        assert_eq!((vcpus(0), vcpus(1000), vcpus(1001), vcpus(2500)), (1, 1, 2, 3));
        assert_eq!(cgroup_memory_mib(256), 256 + 128 + 25);
    }
}
