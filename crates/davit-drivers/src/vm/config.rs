//! The `config:` block of a `vm` task, and the pure parts of turning it into a QEMU command line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{DriverError, TaskConfig};

use super::DRIVER_NAME;

/// The `config:` block of a vm task (mirrors the job spec; unknown fields are rejected).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmTaskConfig {
    #[serde(default)]
    pub accel: AccelChoice,
    #[serde(default)]
    pub machine: MachineChoice,
    /// Direct kernel boot: an absolute node path.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub disk: Option<DiskConfig>,
    #[serde(default)]
    pub extra_disks: Vec<DiskConfig>,
    pub cloud_init: Option<CloudInitConfig>,
    /// Port label → guest port. Absent: every `DAVIT_HOST_PORT_<label>` is forwarded to `DAVIT_PORT_<label>`.
    pub ports: Option<BTreeMap<String, u16>>,
    /// Overrides the timeout the agent passes to `stop` (`"30s"`, `"500ms"`, `"2m"` or seconds as a number).
    pub graceful_shutdown_timeout: Option<DurationSetting>,
    #[serde(default)]
    pub console: ConsoleChoice,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MachineChoice {
    #[default]
    Auto,
    Microvm,
    Q35,
    Pc,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConsoleChoice {
    /// The first serial port goes to QEMU's stdout, i.e. the task's stdout log.
    #[default]
    Serial,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiskConfig {
    /// An absolute node path or an `http(s)://` URL (then `checksum` is required).
    pub image: String,
    #[serde(default = "default_disk_format")]
    pub format: String,
    /// `sha256:<hex>`.
    pub checksum: Option<String>,
    /// `true` (default): writes go to a per-allocation qcow2 overlay. `false`: the image is attached read-only.
    #[serde(default = "default_true")]
    pub overlay: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloudInitConfig {
    pub user_data: Option<String>,
    /// User data read at start from this file of the task directory (a template's output).
    pub user_data_file: Option<String>,
    /// Text, or a map rendered as `key: value` lines; `instance-id` and `local-hostname` are added when missing.
    pub meta_data: Option<serde_json::Value>,
    pub network_config: Option<String>,
    /// The guest's hostname (default: the task name).
    pub hostname: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub(crate) struct DurationSetting(pub Duration);

impl TryFrom<serde_json::Value> for DurationSetting {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, Self::Error> {
        match &value {
            serde_json::Value::Number(number) => {
                number.as_f64().filter(|seconds| *seconds >= 0.0).map(|seconds| DurationSetting(Duration::from_secs_f64(seconds)))
            }
            serde_json::Value::String(text) => parse_duration(text).map(DurationSetting),
            _ => None,
        }
        .ok_or_else(|| format!("invalid duration {value} (expected e.g. \"30s\", \"500ms\", \"2m\" or seconds)"))
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

fn default_disk_format() -> String {
    "qcow2".to_owned()
}

fn default_true() -> bool {
    true
}

pub(crate) fn invalid(message: impl Into<String>) -> DriverError {
    DriverError::InvalidConfig { driver: DRIVER_NAME, message: message.into() }
}

impl VmTaskConfig {
    /// Parses and checks the task's `config:` block.
    pub fn parse(value: &serde_json::Value) -> Result<VmTaskConfig, DriverError> {
        let config: VmTaskConfig = serde_json::from_value(value.clone()).map_err(|error| invalid(error.to_string()))?;
        if config.kernel.is_none() && config.disk.is_none() {
            return Err(invalid("one of `kernel` (direct kernel boot) or `disk` is required"));
        }
        if config.kernel.is_none() && (config.initrd.is_some() || config.cmdline.is_some()) {
            return Err(invalid("`initrd` and `cmdline` need `kernel`"));
        }
        for path in [&config.kernel, &config.initrd].into_iter().flatten() {
            if !path.is_absolute() {
                return Err(invalid(format!("{} must be an absolute path", path.display())));
            }
        }
        if config.machine == MachineChoice::Microvm && config.kernel.is_none() {
            return Err(invalid("machine microvm needs direct kernel boot (`kernel`)"));
        }
        for disk in config.disk.iter().chain(&config.extra_disks) {
            let remote = disk.image.starts_with("http://") || disk.image.starts_with("https://");
            if remote && disk.checksum.is_none() {
                return Err(invalid(format!("disk image {} is a URL and needs `checksum: sha256:<hex>`", disk.image)));
            }
            if !remote && !disk.image.starts_with('/') {
                return Err(invalid(format!("disk image {} must be an absolute path or an http(s) URL", disk.image)));
            }
            if let Some(checksum) = &disk.checksum {
                parse_checksum(checksum)?;
            }
            if !matches!(disk.format.as_str(), "qcow2" | "raw" | "vmdk" | "vdi" | "vhdx" | "qed") {
                return Err(invalid(format!("unsupported disk format {:?}", disk.format)));
            }
        }
        Ok(config)
    }

    /// The machine type to use: `auto` is microvm for a direct kernel boot, q35 otherwise.
    pub fn machine(&self) -> MachineChoice {
        match self.machine {
            MachineChoice::Auto if self.kernel.is_some() => MachineChoice::Microvm,
            MachineChoice::Auto => MachineChoice::Q35,
            machine => machine,
        }
    }
}

/// The lowercase hex digest of a `sha256:<hex>` checksum.
pub(crate) fn parse_checksum(checksum: &str) -> Result<String, DriverError> {
    let hex = checksum.strip_prefix("sha256:").ok_or_else(|| invalid(format!("checksum {checksum:?} must be sha256:<hex>")))?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!("checksum {checksum:?}: expected 64 hex digits")));
    }
    Ok(hex.to_ascii_lowercase())
}

/// A forwarded TCP port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PortForward {
    pub label: String,
    pub host_port: u16,
    pub guest_port: u16,
}

/// The forwarded ports: host ports come from the task env (`DAVIT_HOST_PORT_<label>`, else `DAVIT_PORT_<label>`).
pub(crate) fn port_forwards(config: &VmTaskConfig, task: &TaskConfig) -> Result<Vec<PortForward>, DriverError> {
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
            log_dir: "/a/alloc/logs".into(),
            resources: crate::TaskResources { cpu_millicores: 1000, memory_mib: 256 },
            logs: crate::LogRotation::default(),
            events: crate::EventSink::discard(),
        }
    }

    #[test]
    fn rejects_unknown_fields_and_missing_boot_source() {
        let error = VmTaskConfig::parse(&serde_json::json!({"kernel": "/k", "kernal": "/x"})).unwrap_err();
        assert!(error.to_string().contains("unknown field `kernal`"), "{error}");
        let error = VmTaskConfig::parse(&serde_json::json!({"accel": "hvf", "kernel": "/k"})).unwrap_err();
        assert!(error.to_string().contains("unknown variant `hvf`"), "{error}");
        let error = VmTaskConfig::parse(&serde_json::json!({})).unwrap_err();
        assert!(error.to_string().contains("one of `kernel`"), "{error}");
        let error = VmTaskConfig::parse(&serde_json::json!({"disk": {"image": "https://x/y.qcow2"}})).unwrap_err();
        assert!(error.to_string().contains("needs `checksum"), "{error}");
        let error = VmTaskConfig::parse(&serde_json::json!({"disk": {"image": "/d", "size": 3}})).unwrap_err();
        assert!(error.to_string().contains("unknown field `size`"), "{error}");
    }

    #[test]
    fn parses_a_full_config() {
        let config = VmTaskConfig::parse(&serde_json::json!({
            "accel": "tcg", "kernel": "/k", "initrd": "/i", "cmdline": "quiet",
            "disk": {"image": "/d.qcow2"}, "ports": {"http": 8080}, "graceful_shutdown_timeout": "1.5s",
            "cloud_init": {"user_data": "#cloud-config\n", "meta_data": {"local-hostname": "x"}}, "console": "serial"
        }))
        .unwrap();
        assert_eq!(config.machine(), MachineChoice::Microvm);
        assert_eq!(config.graceful_shutdown_timeout, Some(DurationSetting(Duration::from_millis(1500))));
        assert!(config.disk.as_ref().unwrap().overlay);
        assert_eq!(config.disk.as_ref().unwrap().format, "qcow2");
    }

    #[test]
    fn ports_come_from_the_task_env() {
        let config = VmTaskConfig { ports: Some(BTreeMap::from([("http".to_owned(), 8080)])), ..VmTaskConfig::default() };
        let task = task_with_env(&[("DAVIT_PORT_http", "23456")]);
        assert_eq!(port_forwards(&config, &task).unwrap(), [PortForward { label: "http".to_owned(), host_port: 23456, guest_port: 8080 }]);
        let derived = task_with_env(&[("DAVIT_HOST_PORT_http", "23456"), ("DAVIT_PORT_http", "80"), ("DAVIT_PORT_other", "1")]);
        assert_eq!(
            port_forwards(&VmTaskConfig::default(), &derived).unwrap(),
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
