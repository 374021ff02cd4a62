//! The bundle's `config.json`: the OCI runtime spec of a task, with its mounts, capabilities, seccomp
//! profile, user and hooks.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use davit_api::spec::drivers::{CAPABILITIES, ContainerConfig};
use davit_oci::Image;
use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxNamespace, LinuxNamespaceType, Mount, Spec, User};

use super::invalid;
use crate::cgroups::CgroupVersion;
use crate::exec::io_error;
use crate::{DriverError, TaskConfig};

/// Capabilities a container gets unless it adds or drops some: Docker's default set without NET_RAW.
pub(super) const DEFAULT_CAPABILITIES: [&str; 13] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The container's hooks, all run by the executor binary. With `procs_files` (crun), `createRuntime` joins the
/// init process to those cgroups and then creates `started`: the program runs right after, and a `poststart`
/// hook would race a program that exits at once (crun then reports its hook timed out and loses the exit
/// code). Without (runc), `poststart` creates `started`.
pub(super) fn hooks(executor_command: &[String], procs_files: &[PathBuf], started: &Path) -> Result<oci_spec::runtime::Hooks, DriverError> {
    let Some(program) = executor_command.first() else {
        return Err(DriverError::Other("no executor command configured".to_owned()));
    };
    let hook = |name: &str, paths: &[PathBuf]| {
        let mut args = executor_command.to_vec();
        args.push(name.to_owned());
        args.extend(paths.iter().map(|path| path.display().to_string()));
        let mut hook = oci_spec::runtime::Hook::default();
        hook.set_path(PathBuf::from(program));
        hook.set_args(Some(args));
        hook.set_timeout(Some(10));
        hook
    };
    let mark_started = hook(crate::executor::MARK_STARTED_HOOK, &[started.to_path_buf()]);
    let mut hooks = oci_spec::runtime::Hooks::default();
    if procs_files.is_empty() {
        hooks.set_poststart(Some(vec![mark_started]));
    } else {
        hooks.set_create_runtime(Some(vec![hook(crate::executor::JOIN_CGROUP_HOOK, procs_files), mark_started]));
    }
    Ok(hooks)
}

/// The OCI runtime config of a task: image config + job overrides + davit's defaults.
pub(super) fn build_spec(
    config: &TaskConfig,
    task: &ContainerConfig,
    image: &Image,
    rootfs: &Path,
    cgroup_path: Option<&str>,
    allowed_host_paths: &[PathBuf],
    cgroup_version: CgroupVersion,
) -> Result<Spec, DriverError> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(config.task_name.clone()));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(task.readonly_rootfs));
    spec.set_root(Some(root));

    // argv, like Docker: entrypoint ++ cmd, each replaceable.
    let entrypoint = task.entrypoint.clone().unwrap_or_else(|| image.config.entrypoint.clone());
    let cmd = match (&task.command, &task.args) {
        (Some(command), args) => std::iter::once(command.clone()).chain(args.iter().flatten().cloned()).collect(),
        (None, Some(args)) => args.clone(),
        (None, None) => image.config.cmd.clone(),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(invalid(format!("image {} has no entrypoint or cmd: set `command` in the task config", task.image)));
    }

    // Environment: the image's, then the task's (`env:` of the task and of the config, and DAVIT_*).
    let mut env: BTreeMap<String, String> =
        image.config.env.iter().filter_map(|pair| pair.split_once('=').map(|(key, value)| (key.to_owned(), value.to_owned()))).collect();
    env.extend(config.env.iter().map(|(key, value)| (key.clone(), value.clone())));
    env.extend(task.env.iter().map(|(key, value)| (key.clone(), value.clone())));
    env.insert("DAVIT_ALLOC_DIR".to_owned(), "/alloc".to_owned());
    env.insert("DAVIT_TASK_DIR".to_owned(), "/local".to_owned());
    env.entry("PATH".to_owned()).or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());

    let user_text = task.user.clone().or_else(|| config.user.clone()).unwrap_or_else(|| image.config.user.clone());
    let user = resolve_user(&user_text, rootfs)?;

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(argv));
    process.set_env(Some(env.into_iter().map(|(key, value)| format!("{key}={value}")).collect()));
    let cwd = task.working_dir.clone().filter(|dir| !dir.is_empty()).unwrap_or_else(|| image.config.working_dir.clone());
    process.set_cwd(PathBuf::from(if cwd.is_empty() { "/".to_owned() } else { cwd }));
    process.set_user(user);
    process.set_no_new_privileges(Some(!task.privileged));
    // Without a device cgroup (crun here), the container must not be able to make device nodes.
    process.set_capabilities(Some(capabilities(task, cgroup_path.is_some())?));
    spec.set_process(Some(process));

    // Mounts: the runtime's defaults, then the alloc and task dirs, DNS files and the task's own mounts.
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    // The cgroup mount of the defaults needs a cgroup namespace; containers do not see cgroupfs.
    mounts.retain(|mount| mount.typ().as_deref() != Some("cgroup"));
    mounts.push(bind_mount(&config.alloc_dir.join("alloc"), "/alloc", false));
    mounts.push(bind_mount(&config.task_dir, "/local", false));
    for file in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(file).exists() {
            mounts.push(bind_mount(Path::new(file), file, true));
        }
    }
    // Written next to the rootfs by `start_container`.
    let hostname = rootfs.with_file_name("hostname");
    if hostname.exists() {
        mounts.push(bind_mount(&hostname, "/etc/hostname", true));
    }
    for mount in &task.mounts {
        let source = mount_source(&mount.source, &config.alloc_dir, allowed_host_paths)?;
        if !mount.target.starts_with('/') {
            return Err(invalid(format!("mount target {:?} must be an absolute path inside the container", mount.target)));
        }
        mounts.push(bind_mount(&source, &mount.target, mount.readonly));
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    // Host network (scheduler-assigned ports); own pid, mount, ipc and uts namespaces.
    let namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|namespace| !matches!(namespace.typ(), LinuxNamespaceType::Network | LinuxNamespaceType::Cgroup))
        .collect();
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(cgroup_path.map(PathBuf::from));
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut deny_all = LinuxDeviceCgroup::default();
    deny_all.set_allow(false);
    deny_all.set_access(Some("rwm".to_owned()));
    // v2 has no devices controller to write to; runtimes turn the rules into a BPF program there.
    resources.set_devices(Some(if task.privileged && cgroup_version == CgroupVersion::V1 { Vec::new() } else { vec![deny_all] }));
    linux.set_resources(Some(resources));
    if task.privileged {
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn bind_mount(source: &Path, target: &str, readonly: bool) -> Mount {
    let mut mount = Mount::default();
    mount.set_destination(PathBuf::from(target));
    mount.set_typ(Some("bind".to_owned()));
    mount.set_source(Some(source.to_path_buf()));
    let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
    options.push(if readonly { "ro" } else { "rw" }.to_owned());
    mount.set_options(Some(options));
    mount
}

/// A mount source: relative paths live in the allocation directory; absolute ones must be allowed.
fn mount_source(source: &str, alloc_dir: &Path, allowed: &[PathBuf]) -> Result<PathBuf, DriverError> {
    let path = Path::new(source);
    if path.components().any(|component| matches!(component, std::path::Component::ParentDir)) {
        return Err(invalid(format!("mount source {source:?} must not contain `..`")));
    }
    if path.is_absolute() {
        if allowed.iter().any(|prefix| path.starts_with(prefix)) {
            return Ok(path.to_path_buf());
        }
        return Err(invalid(format!(
            "host path {source:?} is not allowed on this node (start its agent with --allow-host-path DIR); use a path relative to the allocation directory such as `alloc/data`"
        )));
    }
    // The agent's own parts of the allocation (`.logs`, `.executor`, `.container`) are not for tasks.
    if path.components().any(|component| component.as_os_str().to_string_lossy().starts_with('.')) {
        return Err(invalid(format!("mount source {source:?} names a hidden part of the allocation directory")));
    }
    let resolved = alloc_dir.join(path);
    std::fs::create_dir_all(&resolved).map_err(|source| io_error(format!("creating {}", resolved.display()), source))?;
    // A task may have planted a link on the way (`alloc/` is writable in containers): what is mounted must
    // still be inside the allocation directory once links are resolved.
    let real = std::fs::canonicalize(&resolved).map_err(|source| io_error(format!("resolving {}", resolved.display()), source))?;
    let inside = std::fs::canonicalize(alloc_dir).map_err(|source| io_error(format!("resolving {}", alloc_dir.display()), source))?;
    if !real.starts_with(&inside) {
        return Err(invalid(format!("mount source {source:?} leads out of the allocation directory (a link?)")));
    }
    Ok(real)
}

fn capabilities(task: &ContainerConfig, device_cgroup: bool) -> Result<LinuxCapabilities, DriverError> {
    let parse =
        |name: &str| Capability::from_str(name).map_err(|_| invalid(format!("unknown capability {name:?} (e.g. NET_ADMIN, SYS_TIME)")));
    let mut set: HashSet<Capability> = if task.privileged {
        // Every capability the crate knows.
        all_capabilities()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|name| parse(name)).collect::<Result<_, _>>()?
    };
    for name in &task.cap_add {
        if name.eq_ignore_ascii_case("ALL") {
            set = all_capabilities();
        } else {
            set.insert(parse(name)?);
        }
    }
    if !device_cgroup && !task.privileged {
        set.remove(&Capability::Mknod);
    }
    for name in &task.cap_drop {
        if name.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            set.remove(&parse(name)?);
        }
    }
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(set.clone()));
    capabilities.set_effective(Some(set.clone()));
    capabilities.set_permitted(Some(set));
    capabilities.set_inheritable(Some(HashSet::new()));
    capabilities.set_ambient(Some(HashSet::new()));
    Ok(capabilities)
}

fn all_capabilities() -> HashSet<Capability> {
    (0..64).filter_map(|bit: u32| Capability::from_str(cap_name(bit)?).ok()).collect()
}

/// The name of capability number `bit` (as in `linux/capability.h`), for the ones the kernel of today has.
fn cap_name(bit: u32) -> Option<&'static str> {
    CAPABILITIES.get(usize::try_from(bit).ok()?).copied()
}

/// `uid[:gid]` or a user name from the image's `/etc/passwd` (group from `/etc/group` after a colon).
fn resolve_user(text: &str, rootfs: &Path) -> Result<User, DriverError> {
    let mut user = User::default();
    if text.is_empty() {
        return Ok(user);
    }
    let (name, group) = match text.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (text, None),
    };
    let lookup = |file: &str, wanted: &str| -> Option<(u32, u32)> {
        let contents = std::fs::read_to_string(rootfs.join(file)).ok()?;
        contents.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0] != wanted {
                return None;
            }
            Some((fields[2].parse().ok()?, fields[3].parse().unwrap_or(0)))
        })
    };
    let (uid, primary_gid) = match name.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("etc/passwd", name)
            .ok_or_else(|| invalid(format!("user {name:?} is not in the image's /etc/passwd; use a numeric uid")))?,
    };
    let gid = match group {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("etc/group", group)
                .map(|(gid, _)| gid)
                .ok_or_else(|| invalid(format!("group {group:?} is not in the image's /etc/group")))?,
        },
    };
    user.set_uid(uid);
    user.set_gid(gid);
    Ok(user)
}
