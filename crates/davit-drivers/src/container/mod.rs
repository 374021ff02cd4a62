//! The `container` driver: OCI images run by crun or runc, supervised by the exec driver's executor.
//!
//! ```text
//!  start: pull image (davit-oci) ─▶ overlay rootfs ─▶ config.json (oci-spec) ─▶ executor runs `<runtime> run`
//!                                   (copy if no overlayfs)                       in the task's cgroups, stdio → logs
//!  stop:  `<runtime> kill <id> <signal>` ─▶ wait ─▶ kill the task cgroup
//!  destroy: `<runtime> delete --force` ─▶ unmount rootfs ─▶ remove the bundle
//! ```
//!
//! The runtime runs in the foreground under the executor, so the container's exit status, OOM kills, logs and
//! re-attachment after an agent restart all come from the exec driver. The container joins the task's own
//! cgroup, which already carries the CPU and memory limits (runc through `cgroupsPath`, crun through a
//! `createRuntime` hook that runs `davit executor join-cgroup`). The runtime's process sits in the task's memory
//! and pids cgroups too, so the runtime cannot remove them before the executor has read the OOM counter, but
//! not in its CPU cgroup: a task limited to a few millicores would otherwise take a second to start.
//!
//! crun refuses hybrid cgroup hosts (v1 controllers plus cgroup2 at `/sys/fs/cgroup/unified`); every crun call
//! then runs in a private mount namespace where the cgroup2 mount is detached.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use davit_api::spec::drivers::{ContainerConfig, DriverConfig};
use davit_oci::{Image, ImageStore, ImageStoreConfig, PullPhase, PullProgress, RegistryConfig};
use serde::{Deserialize, Serialize};

use crate::cgroups::{self, CgroupLayout};
use crate::exec::{ProcessSpec, blocking, io_error};
use crate::{
    BoxFuture, Driver, DriverError, ExecDriver, ExecDriverConfig, ExitResult, Fingerprint, TaskConfig, TaskHandle, TaskRunState, TaskStats,
    sys,
};

mod runtime;
mod seccomp;
mod spec;

use runtime::{Runtime, RuntimeKind, detect_runtime};
use spec::{build_spec, hooks};

/// The driver's name in job specs (`driver: container`).
pub const DRIVER_NAME: &str = "container";

/// How long a runtime command (`kill`, `delete`, `--version`) may take.
pub(super) const RUNTIME_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `start` waits for the runtime to report the container running.
const CONTAINER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which OCI runtime runs containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeChoice {
    /// crun if installed, else runc.
    #[default]
    Auto,
    Crun,
    Runc,
}

#[derive(Clone, Debug)]
pub struct ContainerDriverConfig {
    /// The executor command (see [`ExecDriverConfig::executor_command`]).
    pub executor_command: Vec<String>,
    pub cgroup_root: PathBuf,
    pub runtime: RuntimeChoice,
    /// Where image blobs and unpacked rootfs are cached (`<data_dir>/images`).
    pub image_root: PathBuf,
    /// Registry settings by host (`127.0.0.1:5000`): insecure (plain HTTP) and credentials.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// Unused images are evicted (least recently used first) when the cache grows past this.
    pub max_image_cache_bytes: u64,
    /// Host directories tasks may mount (prefixes); relative sources are always allowed (the alloc dir).
    pub allowed_host_paths: Vec<PathBuf>,
    /// Whether `privileged: true` tasks may run (and add any capability).
    pub allow_privileged: bool,
    /// Capabilities beyond Docker's default set that tasks may add (`--allow-cap NAME`, without `CAP_`).
    pub allowed_capabilities: Vec<String>,
    /// Where the runtime keeps its container state (`--root`).
    pub runtime_state_root: PathBuf,
}

impl ContainerDriverConfig {
    /// Defaults for an agent whose data lives in `data_dir`.
    pub fn new(executor_command: Vec<String>, data_dir: &Path) -> ContainerDriverConfig {
        ContainerDriverConfig {
            executor_command,
            cgroup_root: PathBuf::from(cgroups::DEFAULT_ROOT),
            runtime: RuntimeChoice::Auto,
            image_root: data_dir.join("images"),
            registries: BTreeMap::new(),
            max_image_cache_bytes: 10 * 1024 * 1024 * 1024,
            allowed_host_paths: Vec::new(),
            allow_privileged: false,
            allowed_capabilities: Vec::new(),
            runtime_state_root: PathBuf::from("/run/davit"),
        }
    }
}

/// The container driver. See the module docs.
pub struct ContainerDriver {
    config: ContainerDriverConfig,
    exec: ExecDriver,
    images: Result<ImageStore, String>,
    runtime: Result<Runtime, String>,
    /// Images of tasks this driver runs, with a count: never evicted.
    in_use: Mutex<BTreeMap<String, usize>>,
}

/// `TaskHandle::driver_state` of the container driver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ContainerState {
    /// The exec driver's handle of the runtime process.
    inner: TaskHandle,
    container_id: String,
    bundle: PathBuf,
    /// The rootfs is an overlay mount (else a copy).
    overlay: bool,
    image_digest: String,
}

impl ContainerState {
    fn from_handle(handle: &TaskHandle) -> Result<ContainerState, DriverError> {
        handle.driver_state_of(DRIVER_NAME)
    }
}

/// Whether the task's process runs with no_new_privs (`process.noNewPrivileges` of its bundle's config).
async fn no_new_privileges(bundle: &Path) -> Result<bool, DriverError> {
    let config = tokio::fs::read(bundle.join("config.json"))
        .await
        .map_err(|error| DriverError::Other(format!("exec: reading {}: {error}", bundle.join("config.json").display())))?;
    let config: serde_json::Value =
        serde_json::from_slice(&config).map_err(|error| DriverError::Other(format!("exec: the bundle's config.json: {error}")))?;
    Ok(config["process"]["noNewPrivileges"].as_bool().unwrap_or(false))
}

impl ContainerDriver {
    pub fn new(config: ContainerDriverConfig) -> ContainerDriver {
        let exec = ExecDriver::new(ExecDriverConfig {
            allow_root_exec: true,
            executor_command: config.executor_command.clone(),
            cgroup_root: config.cgroup_root.clone(),
        });
        let images = ImageStore::open(ImageStoreConfig {
            root: config.image_root.clone(),
            registries: config.registries.clone(),
            max_cache_bytes: config.max_image_cache_bytes,
        })
        .map_err(|error| error.to_string());
        let runtime = detect_runtime(&config, exec.cgroup_layout().ok());
        ContainerDriver { config, exec, images, runtime, in_use: Mutex::new(BTreeMap::new()) }
    }

    /// The runtime in use (`crun` or `runc`).
    pub fn runtime_name(&self) -> Option<&'static str> {
        self.runtime.as_ref().ok().map(|runtime| runtime.kind.as_str())
    }

    fn runtime(&self) -> Result<&Runtime, DriverError> {
        self.runtime.as_ref().map_err(|reason| DriverError::Other(format!("container driver unavailable: {reason}")))
    }

    fn images(&self) -> Result<&ImageStore, DriverError> {
        self.images.as_ref().map_err(|reason| DriverError::Other(format!("container image cache unavailable: {reason}")))
    }

    /// `<alloc_dir>/.container/<task>`: config.json, rootfs and the overlay's upper and work dirs.
    fn bundle_dir(config: &TaskConfig) -> PathBuf {
        config.alloc_dir.join(".container").join(&config.task_name)
    }

    async fn pull(&self, config: &TaskConfig, reference: &str) -> Result<Image, DriverError> {
        let images = self.images()?;
        config.events.emit("Downloading Image", &format!("pulling {reference}"));
        let events = config.events.clone();
        let reported = Mutex::new((None::<PullPhase>, 0u64));
        let name = reference.to_owned();
        let progress = move |progress: PullProgress| {
            let mut last = reported.lock().expect("progress lock");
            // One event per phase change and per 10 % of a layer, so the task's event list stays readable.
            let step = progress.bytes_total / 10;
            let worth = last.0 != Some(progress.phase) || (step > 0 && progress.bytes_done >= last.1 + step);
            if worth && progress.phase == PullPhase::Downloading {
                events.emit_progress(
                    "Downloading Image",
                    &format!(
                        "{name}: layer {} {} of {}",
                        short_digest(&progress.digest),
                        mib(progress.bytes_done),
                        mib(progress.bytes_total)
                    ),
                    progress.bytes_done,
                    progress.bytes_total,
                );
                *last = (Some(progress.phase), progress.bytes_done);
            } else if last.0 != Some(progress.phase) {
                *last = (Some(progress.phase), progress.bytes_done);
            }
        };
        let image = images.pull(reference, &progress).await.map_err(|error| DriverError::Start {
            task: config.task_name.clone(),
            message: format!("pulling image: {error}"),
            source: None,
        })?;
        config.events.emit("Image Ready", &format!("{reference} is {} ({})", short_digest(&image.manifest_digest), mib(image.size_bytes)));
        Ok(image)
    }

    fn track_image(&self, digest: &str, add: bool) {
        let mut in_use = self.in_use.lock().expect("in_use lock");
        if add {
            *in_use.entry(digest.to_owned()).or_default() += 1;
        } else if let Some(count) = in_use.get_mut(digest) {
            *count -= 1;
            if *count == 0 {
                in_use.remove(digest);
            }
        }
    }

    /// Evicts unused images while the cache is over its size limit.
    fn collect_images(&self) {
        let Ok(images) = self.images() else { return };
        let keep: Vec<String> = self.in_use.lock().expect("in_use lock").keys().cloned().collect();
        match images.gc(&keep) {
            Ok(report) if !report.removed_images.is_empty() => {
                tracing::info!(removed = ?report.removed_images, freed_bytes = report.freed_bytes, "evicted unused container images");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "container image garbage collection failed"),
        }
    }

    async fn start_container(
        &self,
        config: &TaskConfig,
        task: &ContainerConfig,
        image: &Image,
        runtime: Runtime,
    ) -> Result<TaskHandle, DriverError> {
        let bundle = Self::bundle_dir(config);
        let container_id = container_id(&config.alloc_id, &config.task_name);
        // A restarted task starts from a fresh bundle (and a fresh writable layer), like a new container.
        if bundle.exists() {
            self.cleanup_bundle(&runtime, &container_id, &bundle).await;
        }
        for dir in [&config.task_dir, &config.log_dir, &config.alloc_dir.join("alloc")] {
            std::fs::create_dir_all(dir).map_err(|source| io_error(format!("creating {}", dir.display()), source))?;
        }
        let lower = image.rootfs.clone();
        let bundle_for_mount = bundle.clone();
        // A failure after the rootfs is mounted must not leave the mount and the bundle behind.
        let prepared = match blocking(move || prepare_rootfs(&lower, &bundle_for_mount)).await {
            Ok(overlay) => self.write_bundle(config, task, image, &bundle).map(|()| overlay),
            Err(error) => Err(error),
        };
        let overlay = match prepared {
            Ok(overlay) => overlay,
            Err(error) => {
                self.cleanup_bundle(&runtime, &container_id, &bundle).await;
                return Err(error);
            }
        };

        let mut args = runtime.global_args(&bundle.join("runtime.log"));
        args.extend(["run".to_owned(), "--bundle".to_owned(), bundle.display().to_string(), container_id.clone()]);
        let process = ProcessSpec {
            command: runtime.binary.display().to_string(),
            args,
            private_unmounts: runtime.private_unmounts.clone(),
            skip_controllers: RUNTIME_SKIPS_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            isolation: None,
        };
        // The runtime itself runs as root with a plain environment; the task's env and user are in config.json.
        let mut runtime_config = config.clone();
        runtime_config.env =
            BTreeMap::from([("PATH".to_owned(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned())]);
        runtime_config.user = None;
        let inner = match self.exec.start_process(&runtime_config, process).await {
            Ok(inner) => inner,
            Err(error) => {
                self.cleanup_bundle(&runtime, &container_id, &bundle).await;
                return Err(error);
            }
        };
        // The runtime process runs, but the container may not exist yet: `exec`, `kill` and `stop` need it to.
        self.wait_until_running(&container_id, &bundle, &inner).await;
        let state = ContainerState { inner: inner.clone(), container_id, bundle, overlay, image_digest: image.manifest_digest.clone() };
        Ok(TaskHandle {
            driver: DRIVER_NAME.to_owned(),
            alloc_id: config.alloc_id.clone(),
            task_name: config.task_name.clone(),
            pid: inner.pid,
            started_at_ms: inner.started_at_ms,
            driver_state: serde_json::to_value(&state).expect("ContainerState serializes"),
        })
    }

    /// Writes `config.json` and the container's `/etc/hostname` into the bundle.
    fn write_bundle(&self, config: &TaskConfig, task: &ContainerConfig, image: &Image, bundle: &Path) -> Result<(), DriverError> {
        // Like Docker, the container gets an /etc/hostname naming it (the runtime only sets the UTS hostname).
        let hostname = bundle.join("hostname");
        std::fs::write(&hostname, format!("{}\n", config.task_name))
            .map_err(|source| io_error(format!("writing {}", hostname.display()), source))?;
        let layout = self.exec.cgroup_layout()?;
        let cgroup_path = format!("/{}/{}", cgroups::PARENT_DIR, CgroupLayout::task_cgroup_name(&config.alloc_id, &config.task_name));
        let rootfs = bundle.join("rootfs");
        // crun runs with `--cgroup-manager=disabled` (see `Runtime::global_args`): the container stays in the task
        // cgroup crun was started in, and no device cgroup is written.
        let runtime_cgroup = (self.runtime()?.kind == RuntimeKind::Runc).then_some(cgroup_path.as_str());
        let mut spec = build_spec(config, task, image, &rootfs, runtime_cgroup, &self.config.allowed_host_paths, layout.version())?;
        if !task.privileged {
            let process = spec.process().as_ref();
            let bounding = process.and_then(|process| process.capabilities().as_ref()?.bounding().clone()).unwrap_or_default();
            let profile = seccomp::profile(&bounding)?;
            if let Some(linux) = spec.linux_mut() {
                linux.set_seccomp(Some(profile));
            }
        }
        // crun itself stays out of the task's CPU cgroup, so the container's init joins every task cgroup before
        // its program starts; runc does that through `cgroupsPath`.
        let procs = match runtime_cgroup {
            Some(_) => Vec::new(),
            None => layout.task_cgroup(&CgroupLayout::task_cgroup_name(&config.alloc_id, &config.task_name)).procs_files(),
        };
        spec.set_hooks(Some(hooks(self.exec.executor_command(), &procs, &bundle.join(STARTED_MARKER))?));
        let spec_path = bundle.join("config.json");
        spec.save(&spec_path).map_err(|error| io_error(format!("writing {}", spec_path.display()), io::Error::other(error)))?;
        // It holds the task's environment, templates' `env: true` output included: owner-only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&spec_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| io_error(format!("restricting {}", spec_path.display()), source))
    }

    /// Waits until the container's program runs (a hook marked it), or the runtime process exited
    /// (the start failed; `wait` reports it), or [`CONTAINER_START_TIMEOUT`] passed.
    async fn wait_until_running(&self, container_id: &str, bundle: &Path, inner: &TaskHandle) {
        let deadline = tokio::time::Instant::now() + CONTAINER_START_TIMEOUT;
        let started = bundle.join(STARTED_MARKER);
        // crun writes the container's status file after the hook that marks the start: until it is there,
        // `crun exec` and `crun kill` fail, so the container counts as running only then.
        let crun_status = match self.runtime() {
            Ok(runtime) if runtime.kind == RuntimeKind::Crun => Some(runtime.root().join(container_id).join("status")),
            _ => None,
        };
        let mut poll = 0u32;
        loop {
            if started.exists() && crun_status.as_ref().is_none_or(|status| status.exists()) {
                return;
            }
            // Checking the runtime process costs more than a stat: not on every round.
            if poll % 10 == 9 && !matches!(self.exec.inspect(inner).await, Ok(TaskRunState::Running)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(container_id, "the container did not report running within {CONTAINER_START_TIMEOUT:?}");
                return;
            }
            poll += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Deletes the container from the runtime and removes the bundle (unmounting the rootfs). Idempotent.
    async fn cleanup_bundle(&self, runtime: &Runtime, container_id: &str, bundle: &Path) {
        let delete = ["delete".to_owned(), "--force".to_owned(), container_id.to_owned()];
        if let Err(error) = runtime.run(&delete, Some(&bundle.join("runtime.log"))).await {
            tracing::debug!(%error, container_id, "runtime delete");
        }
        let bundle = bundle.to_path_buf();
        blocking(move || {
            let rootfs = bundle.join("rootfs");
            unmount(&rootfs);
            match std::fs::remove_dir_all(&bundle) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => tracing::warn!(%error, bundle = %bundle.display(), "removing container bundle"),
            }
        })
        .await;
    }

    /// Sends `signal` to the container's init through the runtime while it runs; `Ok(false)` when it was not
    /// running.
    async fn signal_task(&self, handle: &TaskHandle, signal: &str) -> Result<bool, DriverError> {
        if sys::signal_number(signal).is_none() {
            return Err(DriverError::UnknownSignal(signal.to_owned()));
        }
        let state = ContainerState::from_handle(handle)?;
        if !matches!(self.exec.inspect(&state.inner).await, Ok(TaskRunState::Running)) {
            return Ok(false);
        }
        let kill = ["kill".to_owned(), state.container_id.clone(), signal.to_owned()];
        self.runtime()?.run(&kill, Some(&state.bundle.join("runtime.log"))).await?;
        Ok(true)
    }
}

/// Whether a container may add capability `name` on a node that allows `allowed` beyond Docker's default set
/// (which has NET_RAW, that davit drops by default).
fn capability_allowed(name: &str, allowed: &[String]) -> bool {
    let name = name.to_ascii_uppercase();
    spec::DEFAULT_CAPABILITIES.contains(&name.as_str())
        || name == "NET_RAW"
        || allowed.iter().any(|allowed| allowed.eq_ignore_ascii_case(&name))
}

/// A runtime container id: `davit-<alloc>-<task>` with characters runc refuses replaced.
fn container_id(alloc_id: &str, task_name: &str) -> String {
    format!("davit-{alloc_id}-{task_name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') { c } else { '_' })
        .collect()
}

/// Mounts an overlay of the image's rootfs at `<bundle>/rootfs` (writes go to `<bundle>/upper`); copies the
/// image's rootfs where overlayfs is unavailable. Returns whether it is an overlay.
fn prepare_rootfs(lower: &Path, bundle: &Path) -> Result<bool, DriverError> {
    let rootfs = bundle.join("rootfs");
    let upper = bundle.join("upper");
    let work = bundle.join("work");
    for dir in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(dir).map_err(|source| io_error(format!("creating {}", dir.display()), source))?;
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    match sys::mount_overlay(&rootfs, &options) {
        Ok(()) => Ok(true),
        Err(error) => {
            tracing::info!(%error, "overlayfs unavailable; copying the image rootfs");
            davit_oci::copy_rootfs(lower, &rootfs)
                .map_err(|source| io_error(format!("copying the image rootfs to {}", rootfs.display()), source))?;
            Ok(false)
        }
    }
}

fn unmount(path: &Path) {
    if let Err(error) = sys::unmount(path)
        && error.raw_os_error() != Some(libc::EINVAL)
        && error.raw_os_error() != Some(libc::ENOENT)
    {
        tracing::warn!(%error, path = %path.display(), "unmounting container rootfs");
    }
}

/// Removes `<root>/<controller>/davit/<name>` of controllers the runtime joined but davit does not manage.
fn remove_foreign_cgroups(root: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let dir = entry.path().join(cgroups::PARENT_DIR).join(name);
        if dir.is_dir()
            && let Err(error) = std::fs::remove_dir(&dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(%error, dir = %dir.display(), "removing a runtime-created cgroup");
        }
    }
}

/// The task cgroup's controllers the runtime process does not join (it puts the container there itself), so
/// that the task's CPU limit does not slow the runtime's own start and stop down.
const RUNTIME_SKIPS_CONTROLLERS: [&str; 2] = ["cpu", "cpuacct"];

/// The bundle file a hook creates when the container's program starts (see [`hooks`]).
const STARTED_MARKER: &str = "started";

fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn invalid(message: String) -> DriverError {
    DriverError::InvalidConfig { driver: DRIVER_NAME, message }
}

impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        Box::pin(async move {
            let mut attributes = BTreeMap::new();
            let runtime = match &self.runtime {
                Ok(runtime) => runtime.clone(),
                Err(reason) => {
                    return Fingerprint { detected: false, healthy: false, description: reason.clone(), attributes };
                }
            };
            attributes.insert("driver.container.runtime".to_owned(), runtime.kind.as_str().to_owned());
            let version = match runtime.run(&["--version".to_owned()], None).await {
                Ok(output) => String::from_utf8_lossy(&output).lines().next().unwrap_or_default().trim().to_owned(),
                Err(error) => {
                    return Fingerprint {
                        detected: true,
                        healthy: false,
                        description: format!("{} does not run: {error}", runtime.kind.as_str()),
                        attributes,
                    };
                }
            };
            attributes.insert("driver.container.runtime_version".to_owned(), version.clone());
            let exec = self.exec.fingerprint().await;
            if !exec.healthy {
                return Fingerprint { detected: true, healthy: false, description: exec.description, attributes };
            }
            if let Err(reason) = &self.images {
                return Fingerprint { detected: true, healthy: false, description: format!("image cache: {reason}"), attributes };
            }
            Fingerprint { detected: true, healthy: true, description: format!("{version} ({})", exec.description), attributes }
        })
    }

    fn start<'a>(&'a self, config: &'a TaskConfig) -> BoxFuture<'a, Result<TaskHandle, DriverError>> {
        Box::pin(async move {
            let task = ContainerConfig::parse(&config.driver_config).map_err(invalid)?;
            if !self.config.allow_privileged
                && let Some(name) = task.cap_add.iter().find(|name| !capability_allowed(name, &self.config.allowed_capabilities))
            {
                let name = name.to_ascii_uppercase();
                return Err(invalid(format!(
                    "capability {name} is not allowed on this node: start its agent with --allow-cap {name} (or --allow-privileged)"
                )));
            }
            if task.privileged && !self.config.allow_privileged {
                return Err(invalid(
                    "privileged containers are not allowed on this node (start its agent with --allow-privileged)".to_owned(),
                ));
            }
            let runtime = self.runtime()?.clone();
            let image = self.pull(config, &task.image).await?;
            self.track_image(&image.manifest_digest, true);
            let result = self.start_container(config, &task, &image, runtime).await;
            if result.is_err() {
                self.track_image(&image.manifest_digest, false);
            }
            result
        })
    }

    fn wait<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<ExitResult, DriverError>> {
        Box::pin(async move { self.exec.wait(&ContainerState::from_handle(handle)?.inner).await })
    }

    fn stop<'a>(&'a self, handle: &'a TaskHandle, signal: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = ContainerState::from_handle(handle)?;
            self.runtime()?;
            match self.signal_task(handle, signal).await {
                Ok(true) => {
                    let _ = tokio::time::timeout(timeout, self.exec.wait(&state.inner)).await;
                }
                Ok(false) => {}
                Err(DriverError::UnknownSignal(signal)) => return Err(DriverError::UnknownSignal(signal)),
                Err(error) => tracing::debug!(%error, "runtime kill (the container may have exited)"),
            }
            // Whatever still runs in the task's cgroup (the container, the runtime) is killed.
            self.exec.stop(&state.inner, "SIGKILL", Duration::ZERO).await
        })
    }

    fn signal<'a>(&'a self, handle: &'a TaskHandle, signal: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match self.signal_task(handle, signal).await? {
                true => Ok(()),
                false => Err(DriverError::TaskGone { pid: handle.pid }),
            }
        })
    }

    fn destroy<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = ContainerState::from_handle(handle)?;
            let destroyed = self.exec.destroy(&state.inner).await;
            if let Ok(runtime) = self.runtime() {
                self.cleanup_bundle(runtime, &state.container_id, &state.bundle).await;
            }
            // The runtime created the task cgroup in controllers davit does not manage (devices, freezer, …).
            let name = CgroupLayout::task_cgroup_name(&handle.alloc_id, &handle.task_name);
            let root = self.config.cgroup_root.clone();
            blocking(move || remove_foreign_cgroups(&root, &name)).await;
            self.track_image(&state.image_digest, false);
            self.collect_images();
            destroyed
        })
    }

    fn inspect<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskRunState, DriverError>> {
        Box::pin(async move { self.exec.inspect(&ContainerState::from_handle(handle)?.inner).await })
    }

    fn recover<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = ContainerState::from_handle(handle)?;
            self.exec.recover(&state.inner).await?;
            self.track_image(&state.image_digest, true);
            Ok(())
        })
    }

    fn exec_command<'a>(
        &'a self,
        handle: &'a TaskHandle,
        command: &'a [String],
        env: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<tokio::process::Command, DriverError>> {
        Box::pin(async move {
            crate::exec::split_command(command)?;
            let state = ContainerState::from_handle(handle)?;
            let runtime = self.runtime()?;
            let mut args = runtime.global_args(&state.bundle.join("runtime.log"));
            args.push("exec".to_owned());
            // runc and crun start an exec'd process without no_new_privs unless asked: it gets the task's.
            if no_new_privileges(&state.bundle).await? {
                args.push("--no-new-privs".to_owned());
            }
            for (key, value) in env {
                args.extend(["--env".to_owned(), format!("{key}={value}")]);
            }
            args.push(state.container_id.clone());
            args.extend(command.iter().cloned());
            let mut process = runtime.command(&args)?;
            // The command runs in the task's cgroups (crun does not move it there itself).
            crate::executor::join_task_context(&mut process, &crate::exec::task_cgroup(&state.inner)?, None, None)
                .map_err(|error| DriverError::Other(format!("exec: {error}")))?;
            Ok(process)
        })
    }

    fn stats<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskStats, DriverError>> {
        Box::pin(async move { self.exec.stats(&ContainerState::from_handle(handle)?.inner).await })
    }
}
