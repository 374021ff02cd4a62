//! `container`: an OCI image run by crun or runc.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigProblem, DriverConfig};

/// `container` driver settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// `registry/repository[:tag][@sha256:digest]`.
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd (followed by `args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments: after `command`, or replacing the image's cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `uid[:gid]` or a user name of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ContainerMount>,
    #[serde(default)]
    pub readonly_rootfs: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Needs an agent started with `--allow-privileged`.
    #[serde(default)]
    pub privileged: bool,
}

/// A bind mount into a container: `source` relative to the allocation directory, or a host path the agent
/// allows (`--allow-host-path`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerMount {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
}

/// The Linux capabilities a container may add or drop, as the runtime names them (without `CAP_`), in the
/// kernel's bit order (`linux/capability.h`): `CAPABILITIES[n]` is capability number `n`.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

impl DriverConfig for ContainerConfig {
    const DRIVER: &'static str = "container";
    const REQUIRED: &'static str = "image";
    const EXAMPLE: &'static str = "config: {image: \"127.0.0.1:5000/web:1.0\"}";

    fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let example = format!("e.g. {}", Self::EXAMPLE);
        if self.image.trim().is_empty() {
            problems.push(ConfigProblem::new("image", "config.image must not be empty").hint(example));
        } else if let Some(problem) = image_reference_problem(&self.image) {
            problems.push(ConfigProblem::new("image", format!("image `{}` is not a valid reference: {problem}", self.image)).hint(example));
        }
        for (field, names) in [("cap_add", &self.cap_add), ("cap_drop", &self.cap_drop)] {
            for (index, name) in names.iter().enumerate() {
                if !name.eq_ignore_ascii_case("ALL") && !CAPABILITIES.contains(&name.as_str()) {
                    problems.push(
                        ConfigProblem::new(format!("{field}[{index}]"), format!("unknown capability `{name}`"))
                            .hint("capabilities are named in upper case without CAP_, e.g. NET_ADMIN or SYS_TIME; or ALL"),
                    );
                }
            }
        }
        for (index, mount) in self.mounts.iter().enumerate() {
            if !mount.target.starts_with('/') {
                problems.push(ConfigProblem::new(
                    format!("mounts[{index}].target"),
                    format!("mount target `{}` must be an absolute path", mount.target),
                ));
            }
            if mount.source.split('/').any(|part| part == "..") {
                problems.push(ConfigProblem::new(
                    format!("mounts[{index}].source"),
                    format!("mount source `{}` must not contain `..`", mount.source),
                ));
            }
        }
        problems
    }
}

/// What is wrong with an image reference (`[host[:port]/]path[:tag][@digest]`), in the distribution
/// grammar's terms: no spaces, a lower-case repository path, a tag of letters, digits, `_`, `.` and `-`.
fn image_reference_problem(image: &str) -> Option<&'static str> {
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains white space");
    }
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let (host, rest) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, name),
    };
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (rest, None),
    };
    if host.is_some_and(str::is_empty) || path.is_empty() || path.split('/').any(str::is_empty) {
        return Some("a part of it is empty");
    }
    if !path.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')) {
        return Some("the repository path may hold only lower-case letters, digits, '.', '_', '-' and '/'");
    }
    if tag.is_some_and(|tag| {
        tag.is_empty() || tag.len() > 128 || !tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }) {
        return Some("the tag may hold only letters, digits, '.', '_' and '-' (at most 128)");
    }
    None
}
