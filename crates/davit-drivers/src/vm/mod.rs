//! The `vm` driver: a QEMU virtual machine per task, supervised like any exec task.
//!
//! ```text
//!   VmDriver::start ──▶ parse config ──▶ probe accel (cached) ──▶ overlays + NoCloud seed in the task dir
//!        └──▶ ExecDriver::start(qemu-system-x86_64 …) ──▶ QMP reachable? ──▶ TaskHandle{driver_state: VmDriverState}
//!   stop: QMP system_powerdown ─(timeout)─▶ QMP quit ─(5 s)─▶ exec stop with SIGKILL (kills the cgroup)
//! ```
//!
//! QEMU runs through [`ExecDriver`]: the executor supervises it, so it survives agent restarts, its console (the
//! first serial port on QEMU's stdout) lands in the task's rotated stdout log, and it lives in the task's cgroups.
//! The cgroup memory limit is the guest memory plus QEMU's own needs: guest + 128 MiB + 10 % (see
//! `config::cgroup_memory_mib`). vCPUs are the CPU reservation rounded up to whole cores.
//!
//! The [`TaskHandle`] of a vm task wraps the exec handle (`driver_state.exec`), so `wait`, `inspect`, `recover`,
//! `stats` and `destroy` delegate; the VM facts next to it (QMP socket, accelerator, machine, ports) let a new
//! driver instance find the VM again. Disks are never written: every allocation gets qcow2 overlays in its task
//! directory. Cloud-init data becomes a vfat `CIDATA` seed image attached read-only.
//!
//! Live migration ([`VmDriver::start_incoming`], [`VmDriver::migrate`]) is not part of the [`Driver`] trait.
//! After a completed migration the source QEMU is told to quit; a marker file (`vm-migrated.json` in the task
//! directory, written before the quit) makes `wait` and `inspect` report that exit as a success. Only guests
//! without writable disks can migrate for now (their state is all in RAM; a read-only seed is rebuilt identically
//! on the destination): disk guests would need QEMU block migration or a copied overlay.
//!
//! Acceleration: see [`accel`]. `accel: auto` uses the probed accelerator, `kvm` fails to start on a TCG-only node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    BoxFuture, Driver, DriverError, ExecDriver, ExecDriverConfig, ExitResult, Fingerprint, MigrationTls, TaskConfig, TaskHandle,
    TaskResources, TaskRunState, TaskStats,
};

pub mod accel;
mod config;
mod image;
pub mod qmp;
mod seed;

use crate::exec::ProcessSpec;
pub use accel::{AccelProbe, AccelProbeConfig};
use config::{PortForward, invalid};
use davit_api::spec::drivers::{Accel, Machine, VmCloudInit, VmConfig};
pub use image::{DEFAULT_IMAGE_DIR, ImagePolicy};
use qmp::{QmpClient, QmpError};

/// The driver's name in job specs (`driver: vm`).
pub const DRIVER_NAME: &str = "vm";

/// The file in the task directory that marks a VM as migrated away (its exit is then a success).
const MIGRATED_MARKER: &str = "vm-migrated.json";
/// How long `start` waits for QEMU's QMP socket.
const QMP_START_PATIENCE: Duration = Duration::from_secs(15);
/// How long `stop` and `migrate` wait to reach a running QEMU's QMP socket.
const QMP_PATIENCE: Duration = Duration::from_secs(3);
/// How long QEMU may take to exit after `quit`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `wait_incoming` asks the destination QEMU whether the guest runs.
const INCOMING_POLL: Duration = Duration::from_millis(20);
/// Upper bound for a live migration.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The KVM probe's result as cached on disk for the current boot.
#[derive(Serialize, Deserialize)]
struct CachedProbe {
    boot_id: String,
    accel: String,
    reason: String,
}

/// TCG's translation cache (`-accel tcg,tb-size=`), part of the 128 MiB QEMU overhead in the cgroup limit.
const TCG_TRANSLATION_CACHE_MIB: u32 = 64;
/// The downtime a migration aims for (QEMU's `downtime-limit`).
const MIGRATION_DOWNTIME_LIMIT_MS: u64 = 300;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDriverConfig {
    /// The executor command (see [`ExecDriverConfig::executor_command`]).
    pub executor_command: Vec<String>,
    /// Where cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    pub qemu_binary: PathBuf,
    pub qemu_img_binary: PathBuf,
    pub accel_probe: AccelProbeConfig,
    /// The driver's data directory: downloaded images go to `<data_dir>/images/sha256/<hex>`.
    pub data_dir: PathBuf,
    /// Firmware for `microvm` guests. QEMU's default microvm SeaBIOS on Debian (bios-microvm.bin) hands the kernel
    /// an ACPI table the 6.1 kernel spends minutes checksumming; qboot does not.
    pub microvm_firmware: Option<PathBuf>,
    /// Where kernels, initrds and disk images may come from (`--vm-image-dir`, downloads).
    pub images: ImagePolicy,
}

impl VmDriverConfig {
    /// Defaults: binaries from `PATH`, the default cgroup root, qboot when installed.
    pub fn new(executor_command: Vec<String>, data_dir: PathBuf) -> VmDriverConfig {
        let exec = ExecDriverConfig::new(executor_command);
        let qboot = PathBuf::from("/usr/share/qemu/qboot.rom");
        VmDriverConfig {
            executor_command: exec.executor_command,
            cgroup_root: exec.cgroup_root,
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            qemu_img_binary: PathBuf::from("qemu-img"),
            accel_probe: AccelProbeConfig::default(),
            data_dir,
            microvm_firmware: qboot.is_file().then_some(qboot),
            images: ImagePolicy::new(Vec::new()),
        }
    }
}

/// The vm driver. See the module docs.
#[derive(Debug)]
pub struct VmDriver {
    config: VmDriverConfig,
    exec: ExecDriver,
    /// The probe result, for the driver's lifetime.
    accel: tokio::sync::OnceCell<AccelProbe>,
}

/// How a live migration went (figures from QEMU's `query-migrate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// How long the guest was paused at the switch-over.
    pub downtime_ms: u64,
    pub total_ms: u64,
    /// RAM bytes sent.
    pub transferred_bytes: u64,
}

/// `TaskHandle::driver_state` of the vm driver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct VmDriverState {
    /// The exec driver's handle of the QEMU process.
    exec: TaskHandle,
    qmp_socket: PathBuf,
    task_dir: PathBuf,
    accel: String,
    machine: String,
    vcpus: u32,
    memory_mib: u32,
    ports: Vec<PortForward>,
    graceful_shutdown_timeout_ms: Option<u64>,
}

impl VmDriverState {
    fn from_handle(handle: &TaskHandle) -> Result<VmDriverState, DriverError> {
        handle.driver_state_of(DRIVER_NAME)
    }

    fn migrated(&self) -> bool {
        self.task_dir.join(MIGRATED_MARKER).exists()
    }
}

impl VmDriver {
    pub fn new(config: VmDriverConfig) -> VmDriver {
        let exec = ExecDriver::new(ExecDriverConfig {
            allow_root_exec: true,
            executor_command: config.executor_command.clone(),
            cgroup_root: config.cgroup_root.clone(),
        });
        VmDriver { config, exec, accel: tokio::sync::OnceCell::new() }
    }

    /// The accelerator guests get on this node (probed once per boot, see [`accel`]). The result is kept in
    /// `<data_dir>/accel-probe.json` with the kernel's boot id, so a restarted agent answers at once.
    pub async fn accel(&self) -> &AccelProbe {
        self.accel
            .get_or_init(|| async {
                let cache = self.config.data_dir.join("accel-probe.json");
                let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_owned();
                let cached = std::fs::read(&cache).ok().and_then(|bytes| serde_json::from_slice::<CachedProbe>(&bytes).ok());
                if let Some(cached) = cached
                    && !boot_id.is_empty()
                    && cached.boot_id == boot_id
                    && !self.config.accel_probe.force_tcg
                {
                    let accel = if cached.accel == "kvm" { "kvm" } else { "tcg" };
                    return AccelProbe { accel, reason: cached.reason };
                }
                let probe = accel::probe(&self.config.qemu_binary, &self.config.accel_probe).await;
                let record = CachedProbe { boot_id, accel: probe.accel.to_owned(), reason: probe.reason.clone() };
                let written = std::fs::create_dir_all(&self.config.data_dir)
                    .and_then(|()| std::fs::write(&cache, serde_json::to_vec(&record).expect("CachedProbe serializes")));
                if let Err(error) = written {
                    tracing::debug!(%error, "cannot cache the KVM probe result");
                }
                probe
            })
            .await
    }

    /// Starts the destination of a live migration: the same VM as `config` would start, waiting for its state
    /// on `tcp:<listen>` (`host:port`, the node's own address: not every interface). The returned handle is a
    /// normal vm task handle once the migration is done.
    /// With `tls`, QEMU waits (`-incoming defer`) until it has the credentials, and accepts only a source
    /// whose certificate the cluster's CA signed.
    pub async fn start_incoming(&self, config: &TaskConfig, listen: &str, tls: Option<&MigrationTls>) -> Result<TaskHandle, DriverError> {
        let Some(tls) = tls else { return self.start_vm(config, Some(Incoming { listen, tls_dir: None })).await };
        let dir = write_tls_dir(&config.task_dir, tls, "server")?;
        let started = self.start_vm(config, Some(Incoming { listen, tls_dir: Some(&dir) })).await;
        let listening = match &started {
            Ok(handle) => listen_with_tls(handle, listen).await,
            Err(_) => Ok(()),
        };
        // QEMU read the credentials when it made the object: no copy of the key stays on disk.
        let _ = std::fs::remove_dir_all(&dir);
        let handle = started?;
        if let Err(error) = listening {
            let state = VmDriverState::from_handle(&handle)?;
            self.exec.stop(&state.exec, "SIGKILL", Duration::ZERO).await?;
            return Err(error);
        }
        Ok(handle)
    }

    /// Migrates the running VM of `handle` to `destination_uri` (`tcp:host:port`, where
    /// [`VmDriver::start_incoming`] listens), waits for completion (bounded) and ends the source QEMU, whose exit
    /// `wait` then reports as a success.
    pub async fn migrate(
        &self,
        handle: &TaskHandle,
        destination_uri: &str,
        tls: Option<&MigrationTls>,
    ) -> Result<MigrationReport, DriverError> {
        let state = VmDriverState::from_handle(handle)?;
        let mut qmp = connect_qmp(&state.qmp_socket, QMP_PATIENCE).await?;
        let mut parameters = json!({"downtime-limit": MIGRATION_DOWNTIME_LIMIT_MS, "tls-creds": ""});
        if let Some(tls) = tls {
            let dir = write_tls_dir(&state.task_dir, tls, "client")?;
            // An earlier attempt may have left its credentials object.
            let _ = qmp.execute("object-del", Some(json!({"id": TLS_CREDS_ID}))).await;
            let added = qmp
                .execute(
                    "object-add",
                    Some(json!({"qom-type": "tls-creds-x509", "id": TLS_CREDS_ID, "dir": dir, "endpoint": "client", "verify-peer": true})),
                )
                .await;
            let _ = std::fs::remove_dir_all(&dir);
            added.map_err(qmp_error)?;
            parameters["tls-creds"] = json!(TLS_CREDS_ID);
            parameters["tls-hostname"] = json!(tls.peer_name);
        }
        qmp.migrate_set_parameters(parameters).await.map_err(qmp_error)?;
        qmp.migrate(destination_uri).await.map_err(qmp_error)?;
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        let status = loop {
            let status = qmp.query_migrate().await.map_err(qmp_error)?;
            match status.status.as_str() {
                "completed" => break status,
                "failed" | "cancelled" => {
                    return Err(DriverError::Other(format!(
                        "migration to {destination_uri} {}: {}",
                        status.status,
                        status.error.unwrap_or_default()
                    )));
                }
                _ if Instant::now() >= deadline => {
                    let _ = qmp.execute("migrate_cancel", None).await;
                    return Err(DriverError::Timeout { operation: format!("migration to {destination_uri}"), after: MIGRATION_TIMEOUT });
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let report = MigrationReport {
            downtime_ms: status.downtime_ms.unwrap_or_default(),
            total_ms: status.total_time_ms.unwrap_or_default(),
            transferred_bytes: status.transferred_bytes.unwrap_or_default(),
        };
        // The marker goes first, so whoever waits for the source sees its exit as the planned one.
        let marker = state.task_dir.join(MIGRATED_MARKER);
        let marker_json = serde_json::to_vec(&json!({"destination": destination_uri, "report": report})).expect("JSON serializes");
        std::fs::write(&marker, marker_json)
            .map_err(|source| DriverError::Io { operation: format!("writing {}", marker.display()), source })?;
        qmp.quit().await.map_err(qmp_error)?;
        if tokio::time::timeout(QUIT_TIMEOUT, self.exec.wait(&state.exec)).await.is_err() {
            self.exec.stop(&state.exec, "SIGKILL", Duration::ZERO).await?;
        }
        Ok(report)
    }

    /// Resolves once the destination QEMU of `handle` runs the guest (the incoming migration completed and QEMU
    /// resumed it). Fails when QEMU exits (an incoming migration that fails ends QEMU) or reports a state
    /// other than waiting or running.
    pub async fn wait_incoming(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        let state = VmDriverState::from_handle(handle)?;
        let mut qmp = connect_qmp(&state.qmp_socket, QMP_PATIENCE).await?;
        loop {
            let status = match qmp.query_status().await {
                Ok(status) => status,
                Err(error) => {
                    let exit = tokio::time::timeout(QUIT_TIMEOUT, self.exec.wait(&state.exec)).await;
                    return Err(DriverError::Other(match exit {
                        Ok(Ok(exit)) => format!("the destination qemu exited ({exit:?}) before the guest resumed"),
                        _ => format!("the destination qemu stopped answering: {error}"),
                    }));
                }
            };
            match status.as_str() {
                "running" => return Ok(()),
                "inmigrate" | "prelaunch" | "paused" | "restore-vm" | "finish-migrate" => {}
                other => return Err(DriverError::Other(format!("the destination guest is {other} instead of running"))),
            }
            tokio::time::sleep(INCOMING_POLL).await;
        }
    }

    /// The guest's run state as QEMU reports it (`running`, `paused`, `inmigrate`, `postmigrate`, …).
    pub async fn guest_status(&self, handle: &TaskHandle) -> Result<String, DriverError> {
        let state = VmDriverState::from_handle(handle)?;
        connect_qmp(&state.qmp_socket, QMP_PATIENCE).await?.query_status().await.map_err(qmp_error)
    }

    async fn start_vm(&self, task: &TaskConfig, incoming: Option<Incoming<'_>>) -> Result<TaskHandle, DriverError> {
        let start_error = |message: String| DriverError::Start { task: task.task_name.clone(), message, source: None };
        let mut config = config::parse(&task.driver_config)?;
        let accel = match config.accel {
            Accel::Tcg => "tcg",
            Accel::Auto => self.accel().await.accel,
            Accel::Kvm => {
                let probe = self.accel().await;
                if probe.accel != "kvm" {
                    return Err(start_error(format!("accel kvm requested, but this node only has TCG: {}", probe.reason)));
                }
                "kvm"
            }
        };
        let machine = config.machine();
        // Said here, QEMU would report it after a QMP connection error.
        // QEMU gets the checked paths, links resolved, so what it opens is what was checked.
        for (what, path) in [("kernel", &mut config.kernel), ("initrd", &mut config.initrd)] {
            if let Some(given) = path.as_mut() {
                if let Err(error) = std::fs::metadata(&*given) {
                    return Err(start_error(format!("{what} {given}: {error}")));
                }
                *given = self.config.images.local_file(what, given, &task.alloc_dir)?.display().to_string();
            }
        }
        let writable_disks = config.disk.iter().chain(&config.extra_disks).any(|disk| disk.overlay);
        if incoming.is_some() && writable_disks {
            return Err(invalid("live migration of guests with writable disks is not supported (use overlay: false or no disk)"));
        }
        std::fs::create_dir_all(&task.task_dir)
            .map_err(|source| DriverError::Io { operation: format!("creating {}", task.task_dir.display()), source })?;
        match std::fs::remove_file(task.task_dir.join(MIGRATED_MARKER)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DriverError::Io { operation: "removing a stale migration marker".to_owned(), source }),
        }

        let mut drives = Vec::new();
        for (index, disk) in config.disk.iter().chain(&config.extra_disks).enumerate() {
            let base =
                image::resolve(&disk.image, disk.checksum.as_deref(), &self.config.data_dir, &self.config.images, &task.alloc_dir).await?;
            image::check_self_contained(&self.config.qemu_img_binary, &base, disk.format.as_str()).await?;
            if disk.overlay {
                let overlay = task.task_dir.join(format!("disk-{index}.qcow2"));
                image::create_overlay(&self.config.qemu_img_binary, &base, disk.format.as_str(), &overlay).await?;
                drives.push(Drive { path: overlay, format: "qcow2".to_owned(), read_only: false });
            } else {
                drives.push(Drive { path: base, format: disk.format.as_str().to_owned(), read_only: true });
            }
        }
        if let Some(cloud_init) = &config.cloud_init {
            let user_data = match &cloud_init.user_data_file {
                Some(file) => read_task_file(&task.task_dir, file)?,
                None => cloud_init.user_data.clone().unwrap_or_else(|| "#cloud-config\n".to_owned()),
            };
            let files =
                seed::SeedFiles { meta_data: meta_data(cloud_init, task), user_data, network_config: cloud_init.network_config.clone() };
            let seed_path = task.task_dir.join("cidata.img");
            let write_path = seed_path.clone();
            tokio::task::spawn_blocking(move || seed::write_seed_image(&write_path, &files))
                .await
                .map_err(|error| DriverError::Other(format!("building the cloud-init seed: {error}")))?
                .map_err(|source| DriverError::Io { operation: format!("writing {}", seed_path.display()), source })?;
            drives.push(Drive { path: seed_path, format: "raw".to_owned(), read_only: true });
        }

        let ports = config::port_forwards(&config, task)?;
        let vcpus = config::vcpus(task.resources.cpu_millicores);
        let memory_mib = if task.resources.memory_mib == 0 { config::DEFAULT_GUEST_MEMORY_MIB } else { task.resources.memory_mib };
        let qmp_socket = qmp_socket_path(task);
        let _ = std::fs::remove_file(&qmp_socket);
        let plan = QemuPlan {
            config: &config,
            name: format!("{}.{}", task.alloc_id, task.task_name),
            accel,
            machine,
            vcpus,
            memory_mib,
            drives: &drives,
            ports: &ports,
            qmp_socket: &qmp_socket,
            microvm_firmware: self.config.microvm_firmware.as_deref(),
            incoming,
        };
        let args = plan.args();
        tracing::debug!(task = %task.task_name, ?args, "starting qemu");

        // QEMU is the driver's own process: it runs as the agent does (the guest is the isolation).
        let mut exec_task = task.clone();
        exec_task.user = None;
        exec_task.resources = TaskResources {
            cpu_millicores: config::cgroup_cpu_millicores(task.resources.cpu_millicores),
            memory_mib: config::cgroup_memory_mib(memory_mib),
        };
        let process = ProcessSpec {
            command: self.config.qemu_binary.display().to_string(),
            args,
            private_unmounts: Vec::new(),
            skip_controllers: Vec::new(),
            isolation: None,
        };
        let exec_handle = self.exec.start_process(&exec_task, process).await?;

        // QEMU creates the QMP socket once its command line checked out: only then does the VM run.
        if let Err(error) = connect_qmp(&qmp_socket, QMP_START_PATIENCE).await {
            let _ = self.exec.destroy(&exec_handle).await;
            let stderr = std::fs::read_to_string(task.log_dir.join(format!("{}.stderr.0", task.task_name))).unwrap_or_default();
            return Err(start_error(format!("qemu did not come up ({error}); its stderr: {}", stderr.trim())));
        }
        let state = VmDriverState {
            qmp_socket,
            task_dir: task.task_dir.clone(),
            accel: accel.to_owned(),
            machine: machine_name(machine).to_owned(),
            vcpus,
            memory_mib,
            ports,
            graceful_shutdown_timeout_ms: config
                .graceful_shutdown_timeout
                .map(|timeout| u64::try_from(timeout.as_std().as_millis()).unwrap_or(u64::MAX)),
            exec: exec_handle.clone(),
        };
        Ok(TaskHandle {
            driver: DRIVER_NAME.to_owned(),
            alloc_id: task.alloc_id.clone(),
            task_name: task.task_name.clone(),
            pid: exec_handle.pid,
            started_at_ms: exec_handle.started_at_ms,
            driver_state: serde_json::to_value(&state).expect("VmDriverState serializes"),
        })
    }
}

impl crate::LiveMigration for VmDriver {
    fn start_incoming<'a>(
        &'a self,
        config: &'a TaskConfig,
        listen: &'a str,
        tls: Option<&'a MigrationTls>,
    ) -> BoxFuture<'a, Result<TaskHandle, DriverError>> {
        Box::pin(VmDriver::start_incoming(self, config, listen, tls))
    }

    fn wait_incoming<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(VmDriver::wait_incoming(self, handle))
    }

    fn migrate<'a>(
        &'a self,
        handle: &'a TaskHandle,
        destination_uri: &'a str,
        tls: Option<&'a MigrationTls>,
    ) -> BoxFuture<'a, Result<MigrationReport, DriverError>> {
        Box::pin(VmDriver::migrate(self, handle, destination_uri, tls))
    }
}

impl Driver for VmDriver {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        Box::pin(async move {
            let version = match accel::qemu_version(&self.config.qemu_binary).await {
                Ok(version) => version,
                Err(reason) => return Fingerprint { detected: false, healthy: false, description: reason, attributes: BTreeMap::new() },
            };
            let probe = self.accel().await;
            let attributes = BTreeMap::from([
                ("driver.vm.accel".to_owned(), probe.accel.to_owned()),
                ("driver.vm.accel_reason".to_owned(), probe.reason.clone()),
                ("driver.vm.qemu_version".to_owned(), version.clone()),
            ]);
            let exec = self.exec.fingerprint().await;
            if !exec.healthy {
                return Fingerprint {
                    detected: true,
                    healthy: false,
                    description: format!("exec supervisor unavailable: {}", exec.description),
                    attributes,
                };
            }
            Fingerprint {
                detected: true,
                healthy: true,
                description: format!("qemu {version}, accel {} ({})", probe.accel, probe.reason),
                attributes,
            }
        })
    }

    fn start<'a>(&'a self, config: &'a TaskConfig) -> BoxFuture<'a, Result<TaskHandle, DriverError>> {
        Box::pin(self.start_vm(config, None))
    }

    fn describe_stop(&self, handle: &TaskHandle, signal: &str, timeout: Duration) -> Option<String> {
        let graceful = VmDriverState::from_handle(handle).ok().and_then(|state| state.graceful_shutdown_timeout_ms);
        Some(match signal {
            "SIGKILL" | "KILL" => "ending qemu".to_owned(),
            _ => format!("ACPI power-off, then ending qemu after {:?}", graceful.map_or(timeout, Duration::from_millis)),
        })
    }

    fn live_migration(&self) -> Option<&dyn crate::LiveMigration> {
        Some(self)
    }

    fn wait<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<ExitResult, DriverError>> {
        Box::pin(async move {
            let state = VmDriverState::from_handle(handle)?;
            let result = self.exec.wait(&state.exec).await;
            if state.migrated() {
                return Ok(ExitResult { exit_code: Some(0), signal: None, oom_killed: false });
            }
            result
        })
    }

    fn stop<'a>(&'a self, handle: &'a TaskHandle, signal: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = VmDriverState::from_handle(handle)?;
            let timeout = state.graceful_shutdown_timeout_ms.map_or(timeout, Duration::from_millis);
            let running = matches!(self.exec.inspect(&state.exec).await, Ok(TaskRunState::Running));
            if running && signal != "SIGKILL" && signal != "KILL" {
                match connect_qmp(&state.qmp_socket, QMP_PATIENCE).await {
                    Ok(mut qmp) => {
                        let exited = match qmp.system_powerdown().await {
                            Ok(()) => tokio::time::timeout(timeout, self.exec.wait(&state.exec)).await.is_ok(),
                            Err(error) => {
                                tracing::warn!(task = %handle.task_name, %error, "system_powerdown failed");
                                false
                            }
                        };
                        if !exited {
                            tracing::info!(task = %handle.task_name, ?timeout, "guest did not power off in time; quitting qemu");
                            if qmp.quit().await.is_ok() {
                                let _ = tokio::time::timeout(QUIT_TIMEOUT, self.exec.wait(&state.exec)).await;
                            }
                        }
                    }
                    Err(error) => tracing::warn!(task = %handle.task_name, %error, "cannot reach QMP; killing qemu"),
                }
            }
            // Whatever is left of QEMU (and anything in its cgroup) goes.
            self.exec.stop(&state.exec, "SIGKILL", Duration::ZERO).await
        })
    }

    fn destroy<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let state = VmDriverState::from_handle(handle)?;
            let destroyed = self.exec.destroy(&state.exec).await;
            if !state.qmp_socket.starts_with(&state.task_dir) {
                let _ = std::fs::remove_file(&state.qmp_socket);
            }
            destroyed
        })
    }

    fn inspect<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskRunState, DriverError>> {
        Box::pin(async move {
            let state = VmDriverState::from_handle(handle)?;
            match self.exec.inspect(&state.exec).await? {
                TaskRunState::Exited(_) if state.migrated() => {
                    Ok(TaskRunState::Exited(ExitResult { exit_code: Some(0), signal: None, oom_killed: false }))
                }
                run_state => Ok(run_state),
            }
        })
    }

    fn recover<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { self.exec.recover(&VmDriverState::from_handle(handle)?.exec).await })
    }

    fn exec_command<'a>(
        &'a self,
        _handle: &'a TaskHandle,
        _command: &'a [String],
        _env: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<tokio::process::Command, DriverError>> {
        Box::pin(async {
            Err(DriverError::Unsupported(
                "the vm driver cannot run commands inside a guest; use the serial console (`davit alloc logs`) or ssh through a forwarded port"
                    .to_owned(),
            ))
        })
    }

    fn stats<'a>(&'a self, handle: &'a TaskHandle) -> BoxFuture<'a, Result<TaskStats, DriverError>> {
        Box::pin(async move { self.exec.stats(&VmDriverState::from_handle(handle)?.exec).await })
    }
}

/// One `-drive`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Drive {
    path: PathBuf,
    format: String,
    read_only: bool,
}

/// Everything the QEMU command line is made of.
struct QemuPlan<'a> {
    config: &'a VmConfig,
    name: String,
    accel: &'static str,
    machine: Machine,
    vcpus: u32,
    memory_mib: u32,
    drives: &'a [Drive],
    ports: &'a [PortForward],
    qmp_socket: &'a Path,
    microvm_firmware: Option<&'a Path>,
    incoming: Option<Incoming<'a>>,
}

/// Where a destination QEMU waits for a migration's state.
#[derive(Clone, Copy)]
struct Incoming<'a> {
    /// `host:port`.
    listen: &'a str,
    /// With TLS: the credentials' directory; QEMU then waits (`-incoming defer`) for `migrate-incoming`.
    tls_dir: Option<&'a Path>,
}

/// The id of the TLS credentials object of a migration in QEMU.
const TLS_CREDS_ID: &str = "davit-migration";

/// Writes the files QEMU's `tls-creds-x509` reads for `endpoint` (`server` or `client`) into a fresh
/// owner-only directory of the task directory: `ca-cert.pem`, `<endpoint>-cert.pem`, `<endpoint>-key.pem`.
fn write_tls_dir(task_dir: &Path, tls: &MigrationTls, endpoint: &str) -> Result<PathBuf, DriverError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = task_dir.join(".migration-tls");
    let io = |operation: String| move |source| DriverError::Io { operation, source };
    match std::fs::remove_dir_all(&dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(format!("removing {}", dir.display()))(error)),
        _ => {}
    }
    std::fs::create_dir_all(task_dir).map_err(io(format!("creating {}", task_dir.display())))?;
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let files = [
        ("ca-cert.pem".to_owned(), pem_blocks(&tls.ca_pem, "CERTIFICATE")),
        (format!("{endpoint}-cert.pem"), pem_blocks(&tls.cert_pem, "CERTIFICATE")),
        (format!("{endpoint}-key.pem"), pem_blocks(&tls.key_pem, "PRIVATE KEY")),
    ];
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut file| file.write_all(contents.as_bytes()))
            .map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(dir)
}

/// The PEM blocks of `pem` whose label ends with `label` (`CERTIFICATE`, `PRIVATE KEY`): a node's file holds its
/// key and its certificate together, QEMU wants them apart.
fn pem_blocks(pem: &str, label: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in pem.lines() {
        let line = line.trim_end();
        if let Some(begin) = line.strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----")) {
            inside = begin.ends_with(label);
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END ") {
            inside = false;
        }
    }
    out
}

/// Tells a destination QEMU started with `-incoming defer` to use the TLS credentials and listen on `listen`.
async fn listen_with_tls(handle: &TaskHandle, listen: &str) -> Result<(), DriverError> {
    let state = VmDriverState::from_handle(handle)?;
    let mut qmp = connect_qmp(&state.qmp_socket, QMP_PATIENCE).await?;
    qmp.migrate_set_parameters(json!({"tls-creds": TLS_CREDS_ID})).await.map_err(qmp_error)?;
    qmp.execute("migrate-incoming", Some(json!({"uri": format!("tcp:{listen}")}))).await.map_err(qmp_error)?;
    Ok(())
}

impl QemuPlan<'_> {
    fn args(&self) -> Vec<String> {
        let microvm = self.machine == Machine::Microvm;
        let mut args: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|item| (*item).to_owned()));
        // TCG's translation cache defaults to 1 GiB, far beyond the cgroup's allowance for QEMU itself.
        let accel = if self.accel == "tcg" { format!("tcg,tb-size={TCG_TRANSLATION_CACHE_MIB}") } else { self.accel.to_owned() };
        push(&["-name", &self.name, "-accel", &accel]);
        match self.machine {
            // pit/pic/rtc: the legacy timers the Debian kernel calibrates against under TCG.
            Machine::Microvm | Machine::Auto => push(&["-M", "microvm,pit=on,pic=on,rtc=on"]),
            Machine::Q35 => push(&["-M", "q35"]),
            Machine::Pc => push(&["-M", "pc"]),
        }
        if microvm && let Some(firmware) = self.microvm_firmware {
            push(&["-bios", &firmware.display().to_string()]);
        }
        // TCG keeps QEMU's default CPU model, which any node can run (and so migrate to).
        if self.accel == "kvm" {
            push(&["-cpu", "host"]);
        }
        push(&["-smp", &self.vcpus.to_string(), "-m", &self.memory_mib.to_string()]);
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        // The console goes to stdout (the task log); signal=off: a SIGINT to the process group does not end QEMU.
        push(&["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]);
        push(&["-qmp", &format!("unix:{},server=on,wait=off", self.qmp_socket.display())]);
        if let Some(kernel) = &self.config.kernel {
            push(&["-kernel", kernel]);
            if let Some(initrd) = &self.config.initrd {
                push(&["-initrd", initrd]);
            }
            let user_cmdline = self.config.cmdline.clone().unwrap_or_default();
            let cmdline = if user_cmdline.contains("console=") { user_cmdline } else { format!("console=ttyS0 {user_cmdline}") };
            push(&["-append", cmdline.trim()]);
        }
        let (net_device, blk_device) =
            if microvm { ("virtio-net-device", "virtio-blk-device") } else { ("virtio-net-pci", "virtio-blk-pci") };
        let mut netdev = "user,id=net0".to_owned();
        for port in self.ports {
            netdev.push_str(&format!(",hostfwd=tcp::{}-:{}", port.host_port, port.guest_port));
        }
        push(&["-netdev", &netdev, "-device", &format!("{net_device},netdev=net0")]);
        for (index, drive) in self.drives.iter().enumerate() {
            let file = drive.path.display().to_string().replace(',', ",,");
            let read_only = if drive.read_only { ",readonly=on" } else { "" };
            push(&["-drive", &format!("file={file},format={},if=none,id=drive{index}{read_only}", drive.format)]);
            let boot = if !microvm && index == 0 && self.config.kernel.is_none() { ",bootindex=0" } else { "" };
            push(&["-device", &format!("{blk_device},drive=drive{index}{boot}")]);
        }
        match self.incoming {
            Some(Incoming { tls_dir: Some(dir), .. }) => {
                let dir = dir.display().to_string().replace(',', ",,");
                push(&["-object", &format!("tls-creds-x509,id={TLS_CREDS_ID},dir={dir},endpoint=server,verify-peer=on")]);
                push(&["-incoming", "defer"]);
            }
            Some(Incoming { listen, tls_dir: None }) => push(&["-incoming", &format!("tcp:{listen}")]),
            None => {}
        }
        args
    }
}

fn machine_name(machine: Machine) -> &'static str {
    match machine {
        Machine::Microvm | Machine::Auto => "microvm",
        Machine::Q35 => "q35",
        Machine::Pc => "pc",
    }
}

/// `meta-data` of the NoCloud seed: the configured text, or `key: value` lines with `instance-id` (the alloc id)
/// and `local-hostname` (the configured hostname, else the task name) filled in.
/// A regular file of the task directory (what a template wrote), at most 1 MiB. Opened without following a
/// link at its end and without blocking (a FIFO is refused), and checked, once open, to lie inside the task
/// directory (a link in the middle of the path cannot lead it out).
fn read_task_file(task_dir: &Path, file: &str) -> Result<String, DriverError> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if !davit_api::spec::drivers::inside_task_dir(file) {
        return Err(invalid(format!("cloud_init.user_data_file `{file}` must be a path inside the task directory")));
    }
    let path = task_dir.join(file);
    let io = |source| DriverError::Io { operation: format!("reading {}", path.display()), source };
    let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path).map_err(io)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())).map_err(io)?;
    let inside = std::fs::canonicalize(task_dir).map_err(io)?;
    let metadata = opened.metadata().map_err(io)?;
    if !real.starts_with(&inside) || !metadata.is_file() {
        return Err(invalid(format!("cloud_init.user_data_file `{file}` is not a regular file inside the task directory")));
    }
    if metadata.len() > 1 << 20 {
        return Err(invalid(format!("cloud_init.user_data_file `{file}` has {} bytes; at most 1 MiB", metadata.len())));
    }
    let mut text = String::new();
    opened.take(1 << 20).read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

fn meta_data(cloud_init: &VmCloudInit, task: &TaskConfig) -> String {
    let hostname = cloud_init.hostname.clone().unwrap_or_else(|| task.task_name.clone());
    let mut fields = BTreeMap::new();
    if let Some(map) = &cloud_init.meta_data {
        fields.extend(map.iter().map(|(key, value)| (key.clone(), value.clone())));
    }
    fields.entry("instance-id".to_owned()).or_insert_with(|| task.alloc_id.clone());
    fields.entry("local-hostname".to_owned()).or_insert(hostname);
    fields.iter().map(|(key, value)| format!("{key}: {value}\n")).collect()
}

/// `<task_dir>/qmp.sock`, or a path under the temp dir when that is too long for a unix socket address.
fn qmp_socket_path(task: &TaskConfig) -> PathBuf {
    let in_task_dir = task.task_dir.join("qmp.sock");
    if in_task_dir.as_os_str().len() < 100 {
        return in_task_dir;
    }
    let short_alloc: String = task.alloc_id.chars().take(12).collect();
    std::env::temp_dir().join(format!("davit-vm-{short_alloc}-{}.qmp", task.task_name))
}

async fn connect_qmp(path: &Path, patience: Duration) -> Result<QmpClient, DriverError> {
    QmpClient::connect(path, patience).await.map_err(qmp_error)
}

fn qmp_error(error: QmpError) -> DriverError {
    DriverError::Other(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microvm_command_line() {
        let config = config::parse(&json!({"kernel": "/g/vmlinux", "initrd": "/g/initrd", "cmdline": "quiet"})).unwrap();
        let drives = [Drive { path: "/t/cidata.img".into(), format: "raw".to_owned(), read_only: true }];
        let ports = [PortForward { label: "http".to_owned(), host_port: 23456, guest_port: 8080 }];
        let plan = QemuPlan {
            config: &config,
            name: "a1.web".to_owned(),
            accel: "tcg",
            machine: config.machine(),
            vcpus: 1,
            memory_mib: 256,
            drives: &drives,
            ports: &ports,
            qmp_socket: Path::new("/t/qmp.sock"),
            microvm_firmware: Some(Path::new("/usr/share/qemu/qboot.rom")),
            incoming: Some(Incoming { listen: "127.0.0.1:4444", tls_dir: None }),
        };
        assert_eq!(
            plan.args().join(" "),
            "-name a1.web -accel tcg,tb-size=64 -M microvm,pit=on,pic=on,rtc=on -bios /usr/share/qemu/qboot.rom -smp 1 -m 256 \
             -nodefaults -no-user-config -display none -no-reboot -chardev stdio,id=console,signal=off -serial chardev:console \
             -qmp unix:/t/qmp.sock,server=on,wait=off -kernel /g/vmlinux -initrd /g/initrd -append console=ttyS0 quiet \
             -netdev user,id=net0,hostfwd=tcp::23456-:8080 -device virtio-net-device,netdev=net0 \
             -drive file=/t/cidata.img,format=raw,if=none,id=drive0,readonly=on -device virtio-blk-device,drive=drive0 \
             -incoming tcp:127.0.0.1:4444"
        );
    }
}
