//! The OCI runtime (crun or runc): finding it and calling it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{ContainerDriverConfig, RUNTIME_COMMAND_TIMEOUT, RuntimeChoice};
use crate::cgroups::{self, CgroupLayout, CgroupVersion};
use crate::exec::io_error;
use crate::{DriverError, sys};

/// The runtime binary and how to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Runtime {
    pub(super) kind: RuntimeKind,
    pub(super) binary: PathBuf,
    /// `--root` for every call.
    pub(super) state_root: PathBuf,
    /// Mounts to detach in a private mount namespace around every call (crun on hybrid hosts).
    pub(super) private_unmounts: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RuntimeKind {
    Crun,
    Runc,
}

impl RuntimeKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
        }
    }
}

impl Runtime {
    /// Where the runtime keeps its state (`--root`): a directory per container.
    pub(super) fn root(&self) -> PathBuf {
        self.state_root.join(self.kind.as_str())
    }

    pub(super) fn global_args(&self, log: &Path) -> Vec<String> {
        let root = self.root();
        match self.kind {
            RuntimeKind::Runc => vec!["--root".to_owned(), root.display().to_string(), "--log".to_owned(), log.display().to_string()],
            // crun 1.8 kills every process of the container's cgroup when the container exits, itself included
            // (losing the exit status), so it manages no cgroups: it runs in the task cgroup (placed there by
            // the executor) and the container inherits it, limits and OOM counter included.
            RuntimeKind::Crun => {
                vec![format!("--root={}", root.display()), format!("--log=file:{}", log.display()), "--cgroup-manager=disabled".to_owned()]
            }
        }
    }

    /// A command for the runtime, entering a private mount namespace first when needed.
    pub(super) fn command(&self, args: &[String]) -> Result<tokio::process::Command, DriverError> {
        let unmounts = sys::c_paths(&self.private_unmounts).map_err(|source| io_error("preparing runtime mounts".to_owned(), source))?;
        let mut command = tokio::process::Command::new(&self.binary);
        command.args(args);
        // SAFETY: the hook only makes async-signal-safe system calls on values prepared before fork.
        unsafe {
            command.pre_exec(move || sys::enter_private_mount_namespace(&unmounts));
        }
        Ok(command)
    }

    /// Runs a short runtime command (`kill`, `delete`, `state`, `--version`); its stdout on success. With a
    /// `log`, the runtime gets its global arguments (state root, log file) before `args`.
    pub(super) async fn run(&self, args: &[String], log: Option<&Path>) -> Result<Vec<u8>, DriverError> {
        let mut full = log.map(|log| self.global_args(log)).unwrap_or_default();
        full.extend(args.iter().cloned());
        let mut command = self.command(&full)?;
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let child = command.spawn().map_err(|source| io_error(format!("spawning {}", self.binary.display()), source))?;
        let output = tokio::time::timeout(RUNTIME_COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| DriverError::Timeout {
                operation: format!("{} {}", self.kind.as_str(), args.join(" ")),
                after: RUNTIME_COMMAND_TIMEOUT,
            })?
            .map_err(|source| io_error(format!("running {}", self.binary.display()), source))?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(DriverError::Other(format!(
                "{} {} failed ({}): {}",
                self.kind.as_str(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }
}

pub(super) fn detect_runtime(config: &ContainerDriverConfig, layout: Option<&CgroupLayout>) -> Result<Runtime, String> {
    let find = |name: &str| find_in_path(name).ok_or_else(|| format!("{name} not found in PATH"));
    let (kind, binary) = match config.runtime {
        RuntimeChoice::Crun => (RuntimeKind::Crun, find("crun")?),
        RuntimeChoice::Runc => (RuntimeKind::Runc, find("runc")?),
        RuntimeChoice::Auto => match find_in_path("crun") {
            Some(binary) => (RuntimeKind::Crun, binary),
            None => (RuntimeKind::Runc, find("runc").map_err(|_| "neither crun nor runc found in PATH".to_owned())?),
        },
    };
    let unified = config.cgroup_root.join(cgroups::V2_KEY);
    let hybrid = layout.is_some_and(|layout| layout.version() == CgroupVersion::V1) && unified.join("cgroup.controllers").exists();
    let private_unmounts = if kind == RuntimeKind::Crun && hybrid { vec![unified] } else { Vec::new() };
    Ok(Runtime { kind, binary, state_root: config.runtime_state_root.clone(), private_unmounts })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}
