//! `vm`: a QEMU virtual machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigProblem, DriverConfig, inside_task_dir};
use crate::Duration;

/// `vm` driver settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub accel: Accel,
    #[serde(default)]
    pub machine: Machine,
    /// Direct kernel boot: an absolute node path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<VmDisk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_disks: Vec<VmDisk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<VmCloudInit>,
    /// Port label → guest port. Absent: every port of the group is forwarded to its `to` port in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<BTreeMap<String, u16>>,
    /// Overrides the task's kill timeout for the ACPI power-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown_timeout: Option<Duration>,
    #[serde(default)]
    pub console: Console,
}

/// The accelerator: `auto` is KVM when a probe guest really runs, else TCG.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The machine type: `auto` is microvm for a direct kernel boot, q35 otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    #[default]
    Auto,
    Microvm,
    Q35,
    Pc,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Console {
    /// The first serial port goes to QEMU's stdout, i.e. the task's stdout log.
    #[default]
    Serial,
}

/// The disk image formats QEMU reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
    Vmdk,
    Vdi,
    Vhdx,
    Qed,
}

impl DiskFormat {
    /// The name QEMU knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vdi => "vdi",
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Qed => "qed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    /// An absolute node path or an `http(s)://` URL (then `checksum` is required).
    pub image: String,
    #[serde(default)]
    pub format: DiskFormat,
    /// `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// `true` (default): writes go to a per-allocation qcow2 overlay. `false`: the image is attached read-only.
    #[serde(default = "default_true")]
    pub overlay: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCloudInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// User data read from this file of the task directory when the guest starts (what a template rendered,
    /// e.g. `secrets/user-data`); instead of `user_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_file: Option<String>,
    /// `key: value` lines of the seed's meta-data; `instance-id` and `local-hostname` are added when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// The guest's hostname (default: the task name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

fn default_true() -> bool {
    true
}

impl VmConfig {
    /// The machine type to use: `auto` is microvm for a direct kernel boot, q35 otherwise.
    pub fn machine(&self) -> Machine {
        match self.machine {
            Machine::Auto if self.kernel.is_some() => Machine::Microvm,
            Machine::Auto => Machine::Q35,
            machine => machine,
        }
    }

    /// The disks in order (`disk` first) with their place in the config.
    pub fn disks(&self) -> impl Iterator<Item = (String, &VmDisk)> {
        let first = self.disk.iter().map(|disk| ("disk".to_string(), disk));
        first.chain(self.extra_disks.iter().enumerate().map(|(index, disk)| (format!("extra_disks[{index}]"), disk)))
    }
}

impl VmDisk {
    /// Whether the image is downloaded (an `http(s)://` URL).
    pub fn is_remote(&self) -> bool {
        self.image.starts_with("http://") || self.image.starts_with("https://")
    }
}

/// The lowercase hex digest of a `sha256:<hex>` checksum, or why it is not one.
pub fn parse_checksum(checksum: &str) -> Result<String, String> {
    let hex = checksum.strip_prefix("sha256:").ok_or_else(|| format!("checksum {checksum:?} must be sha256:<hex>"))?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("checksum {checksum:?}: expected 64 hex digits"));
    }
    Ok(hex.to_ascii_lowercase())
}

impl DriverConfig for VmConfig {
    const DRIVER: &'static str = "vm";
    const REQUIRED: &'static str = "kernel";
    const EXAMPLE: &'static str = "config: {kernel: /var/lib/davit/guest/vmlinux, initrd: /var/lib/davit/guest/initramfs.cpio.gz}";

    fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.kernel.is_none() && self.disk.is_none() {
            problems.push(
                ConfigProblem::new("", "the vm driver needs `kernel` (direct kernel boot) or `disk`")
                    .hint(format!("e.g. {}", Self::EXAMPLE)),
            );
        }
        if self.kernel.is_none() {
            for (field, value) in [("initrd", self.initrd.is_some()), ("cmdline", self.cmdline.is_some())] {
                if value {
                    problems.push(ConfigProblem::new(field, format!("`{field}` needs `kernel` (direct kernel boot)")));
                }
            }
            if self.machine == Machine::Microvm {
                problems
                    .push(ConfigProblem::new("machine", "machine microvm needs direct kernel boot (`kernel`)").hint("or use machine: q35"));
            }
        }
        for (field, path) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if let Some(path) = path
                && !path.starts_with('/')
            {
                problems.push(ConfigProblem::new(field, format!("{field} `{path}` must be an absolute path on the node")));
            }
        }
        for (at, disk) in self.disks() {
            if disk.is_remote() && disk.checksum.is_none() {
                problems.push(ConfigProblem::new(
                    format!("{at}.checksum"),
                    "a disk image downloaded from a URL needs `checksum: sha256:<hex>`",
                ));
            } else if !disk.is_remote() && !disk.image.starts_with('/') {
                problems.push(ConfigProblem::new(
                    format!("{at}.image"),
                    format!("disk image `{}` must be an absolute path on the node or an http(s) URL", disk.image),
                ));
            }
            if let Some(Err(message)) = disk.checksum.as_deref().map(parse_checksum) {
                problems.push(ConfigProblem::new(format!("{at}.checksum"), message));
            }
        }
        if let Some(cloud_init) = &self.cloud_init
            && let Some(file) = &cloud_init.user_data_file
        {
            if cloud_init.user_data.is_some() {
                problems.push(ConfigProblem::new("cloud_init.user_data_file", "give `user_data` or `user_data_file`, not both"));
            } else if !inside_task_dir(file) {
                problems.push(
                    ConfigProblem::new("cloud_init.user_data_file", format!("`{file}` must be a path inside the task directory"))
                        .hint("e.g. `secrets/user-data`, written by a template"),
                );
            }
        }
        problems
    }
}
