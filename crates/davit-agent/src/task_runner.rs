//! One task's loop: start (or re-attach), wait, apply the restart policy, until it is dead, killed or the
//! agent detaches. See the diagram in [`crate::alloc_runner`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use davit_api::objects::{ByteProgress, Migration, MigrationProgress, MigrationRole, MigrationStatus, TaskStatus};
use davit_api::spec::{JobType, RestartPolicy, TaskSpec};
use davit_drivers::{Driver, DriverError, EventSink, ExitResult, LiveMigration, TaskConfig, TaskHandle, TaskResources, TaskRunState};
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::alloc_shared::{AllocShared, event};
use crate::check;
use crate::restart::{MAX_JITTER, RestartDecision, decide_restart};
use crate::taskenv::TaskEnvContext;

/// The reason of a restart an operator asked for (`davit alloc restart`): the task restarts at once.
const OPERATOR_RESTART: &str = "restart requested by an operator, generation ";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TaskControl {
    Run,
    Kill(KillReason),
    /// Return without touching the task (agent shutdown).
    Detach,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KillReason {
    /// The allocation is stopping.
    Stop,
    /// Another task of the allocation failed for good (its name).
    SiblingFailed(String),
}

#[derive(Debug)]
pub(crate) enum TaskOutcome {
    Dead { task: String, failed: bool },
    Detached,
}

pub(crate) struct TaskRunner {
    pub shared: Arc<AllocShared>,
    pub task: TaskSpec,
    pub restart: RestartPolicy,
    pub job_type: JobType,
    /// What the templates rendered at the last start (followed for changes while the task runs).
    pub rendered: std::sync::Mutex<Option<crate::template::Rendered>>,
}

/// What happened while waiting on a running task.
enum Waited {
    Exited(ExitResult),
    Control(TaskControl),
    /// A check with `on_failure: restart` turned failing, or a template changed (the reason).
    CheckFailed(String),
    /// The server says the destination of a live migration listens: migrate there.
    Migrate {
        peer_alloc_id: String,
        peer_node_id: String,
        uri: String,
    },
}

impl TaskRunner {
    pub async fn run(self, mut control: watch::Receiver<TaskControl>) -> TaskOutcome {
        let name = self.task.name.clone();
        let Some(driver) = self.shared.context.drivers.get(self.task.driver.as_str()).cloned() else {
            let message = format!("driver {} is not available on this node", self.task.driver.as_str());
            return self.finish(Some(event("Driver Failure", &message)), true).await;
        };
        let mut handle = self.shared.with_state(|state| state.handles.get(&name).cloned());
        let mut pending_exit = None;
        if let Some(restored) = &handle {
            match self.reattach(driver.as_ref(), restored).await {
                Ok(()) => tracing::info!(alloc_id = %restored.alloc_id, task = %name, pid = restored.pid, "re-attached to running task"),
                Err(exit) => {
                    pending_exit = Some(exit);
                    handle = None;
                }
            }
        }
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let mut migration = self.shared.migration.subscribe();
        // Restarts asked for since the allocation's runner was made (one that came before this task runner
        // started is still to do).
        let mut restart_requests = self.shared.restart.subscribe();
        if *restart_requests.borrow_and_update() > self.shared.restart_applied {
            restart_requests.mark_changed();
        }
        // The destination allocation of the live migration last tried (each is tried once).
        let mut migration_tried: Option<String> = None;
        loop {
            // Start the task unless it runs (or an exit is pending: it ended while the agent was away, or did not start).
            if handle.is_none() && pending_exit.is_none() {
                let current = control.borrow_and_update().clone();
                match current {
                    TaskControl::Run => {}
                    TaskControl::Kill(_) => return self.finish(Some(event("Killed", "task killed before it started")), false).await,
                    TaskControl::Detach => return TaskOutcome::Detached,
                }
                match self.start(driver.as_ref(), &mut control).await {
                    Ok(started) => handle = Some(started),
                    Err(StartFailure::Fatal) => return self.finish(None, true).await,
                    Err(StartFailure::Retryable) => {
                        pending_exit = Some(ExitResult { exit_code: None, signal: None, oom_killed: false });
                    }
                }
            }

            // Wait for it to exit (or for a kill / detach, or a failing check that restarts it).
            let mut check_reason = None;
            let exit = match (pending_exit.take(), &handle) {
                (Some(exit), _) => exit,
                (None, Some(running)) => {
                    let (restart_tx, mut restart_rx) = mpsc::channel(1);
                    let rendered = self.rendered.lock().expect("rendered lock").take();
                    let task_dir = self.shared.alloc_dir.join(&name);
                    let templates = crate::template::watch(
                        self.shared.clone(),
                        self.task.clone(),
                        task_dir,
                        rendered,
                        crate::template::Running { driver: driver.clone(), handle: running.clone() },
                        restart_tx.clone(),
                    );
                    let checks = check::start(self.shared.clone(), &name, &self.task.checks, driver.clone(), running.clone(), restart_tx);
                    let waited = loop {
                        let waited = self
                            .wait(
                                driver.as_ref(),
                                running,
                                &mut control,
                                &mut restart_rx,
                                &mut migration,
                                &mut restart_requests,
                                migration_tried.as_deref(),
                            )
                            .await;
                        let Waited::Migrate { peer_alloc_id, peer_node_id, uri } = waited else { break waited };
                        migration_tried = Some(peer_alloc_id);
                        if let Some(report) = self.migrate_out(driver.as_ref(), running, &uri, &peer_node_id).await {
                            drop((checks, templates));
                            let running = running.clone();
                            return self.migrated(driver.as_ref(), &running, report, &peer_node_id).await;
                        }
                    };
                    drop((checks, templates));
                    match waited {
                        Waited::Exited(exit) => {
                            self.record_exit(&exit);
                            exit
                        }
                        Waited::CheckFailed(reason) => {
                            let exit = self.stop_for_check(driver.as_ref(), running, &reason).await;
                            check_reason = Some(reason);
                            exit
                        }
                        Waited::Control(TaskControl::Kill(reason)) => {
                            let running = running.clone();
                            return self.kill(driver.as_ref(), &running, reason).await;
                        }
                        Waited::Control(_) | Waited::Migrate { .. } => return TaskOutcome::Detached,
                    }
                }
                (None, None) => unreachable!("a task without a handle was started above"),
            };
            if let Some(ended) = handle.take() {
                self.release(driver.as_ref(), &ended).await;
            }

            // A changed template, or an operator's restart, restarts the task at once, whatever the restart policy
            // counts. An operator's is not counted in `restarts` (which says the task is unstable: a deployment's
            // health watcher fails an allocation that has any).
            if let Some(reason) = check_reason
                .as_deref()
                .filter(|reason| reason.starts_with(crate::template::TEMPLATE_RESTART) || reason.starts_with(OPERATOR_RESTART))
            {
                let counted = u32::from(!reason.starts_with(OPERATOR_RESTART));
                self.shared.update_task(&name, Some(event("Restarting", reason)), |state| {
                    state.state = TaskStatus::Pending;
                    state.restarts += counted;
                    state.pid = None;
                });
                self.shared.commit().await;
                continue;
            }

            // Restart or not.
            let jitter = rng.random_range(-MAX_JITTER..=MAX_JITTER);
            let tracker = self.shared.with_state(|state| state.restart_trackers.get(&name).copied().unwrap_or_default());
            let (decision, tracker) = decide_restart(&self.restart, self.job_type, &exit, tracker, crate::now_ms(), jitter);
            let decision = with_check_reason(decision, check_reason);
            self.shared.with_state(|state| state.restart_trackers.insert(name.clone(), tracker));
            match decision {
                RestartDecision::Done { failed, message } => return self.finish(Some(event("Not Restarting", &message)), failed).await,
                RestartDecision::Restart { delay, message } => {
                    self.shared.update_task(&name, Some(event("Restarting", &message)), |state| {
                        state.state = TaskStatus::Pending;
                        state.restarts += 1;
                        state.pid = None;
                    });
                    self.shared.commit().await;
                    let deadline = tokio::time::Instant::now() + delay;
                    loop {
                        let current = control.borrow_and_update().clone();
                        match current {
                            TaskControl::Run => {}
                            TaskControl::Kill(_) => {
                                return self.finish(Some(event("Killed", "task killed while waiting to restart")), false).await;
                            }
                            TaskControl::Detach => return TaskOutcome::Detached,
                        }
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            changed = control.changed() => if changed.is_err() { return TaskOutcome::Detached },
                        }
                    }
                }
            }
        }
    }

    /// Re-attaches to a task started by an earlier agent process. `Err`: it ended meanwhile, with how.
    async fn reattach(&self, driver: &dyn Driver, handle: &TaskHandle) -> Result<(), ExitResult> {
        let unknown = ExitResult { exit_code: None, signal: None, oom_killed: false };
        let exit = match driver.recover(handle).await {
            Ok(()) => return Ok(()),
            Err(DriverError::TaskGone { .. }) => driver.wait(handle).await.unwrap_or(unknown),
            Err(error) => {
                // Not necessarily gone: never start a second copy of a task that may still run.
                match driver.inspect(handle).await {
                    Ok(TaskRunState::Running) => {
                        tracing::warn!(task = %self.task.name, %error, "recover failed but the task runs; waiting on it");
                        return Ok(());
                    }
                    Ok(TaskRunState::Exited(exit)) => exit,
                    Err(_) => {
                        tracing::warn!(task = %self.task.name, %error, "cannot re-attach to task; treating it as exited");
                        unknown
                    }
                }
            }
        };
        let mut exit_event = exit_event(&exit, self.task.resources.memory);
        exit_event.message = format!("{} (while the agent was not running)", exit_event.message);
        self.shared.update_task(&self.task.name, Some(exit_event), |state| {
            state.finished_at = Some(crate::now_ms());
            state.pid = None;
        });
        self.shared.commit().await;
        if let Err(error) = driver.destroy(handle).await {
            tracing::debug!(task = %self.task.name, %error, "destroying the ended task failed");
        }
        self.shared.with_state(|state| state.handles.remove(&self.task.name));
        Err(exit)
    }

    /// Prestart hooks, then `driver.start` (or, for the destination of a live migration, the driver's
    /// `start_incoming` and a wait until the guest resumed). Records `Task Setup` and `Started` (or `Driver Failure`).
    async fn start(&self, driver: &dyn Driver, control: &mut watch::Receiver<TaskControl>) -> Result<TaskHandle, StartFailure> {
        let name = &self.task.name;
        let first_start =
            self.shared.with_state(|state| state.task_states.get(name).is_none_or(|task| task.started_at.is_none() && task.restarts == 0));
        let mut config = self.task_config();
        if let Err(error) = task_dir_prestart(&config.task_dir) {
            let message = format!("creating the task directory {}: {error}", config.task_dir.display());
            self.shared.update_task(name, Some(event("Setup Failure", &message)), |_| {});
            return Err(StartFailure::Fatal);
        }
        if !self.task.templates.is_empty() {
            match crate::template::prepare(&self.shared, &self.task, &config.task_dir).await {
                Ok(rendered) => {
                    config.env.extend(rendered.env.clone());
                    *self.rendered.lock().expect("rendered lock") = Some(rendered);
                }
                Err(message) => {
                    self.shared.update_task(name, Some(event("Template Failure", &message)), |_| {});
                    self.shared.commit().await;
                    return Err(StartFailure::Retryable);
                }
            }
        }
        if first_start {
            self.shared.update_task(name, Some(event("Task Setup", "building task directory and environment")), |_| {});
            self.shared.commit().await;
        }
        let incoming = self
            .shared
            .with_state(|state| state.alloc.migration.clone())
            .filter(|migration| migration.role == MigrationRole::Destination && !migration.status.is_done());
        if let (true, Some(migration), Some(live)) = (first_start, incoming, driver.live_migration()) {
            return self.start_incoming(live, &config, &migration, control).await;
        }
        match driver.start(&config).await {
            Ok(handle) => {
                let pid = handle.pid;
                let started_at = if handle.started_at_ms > 0 { handle.started_at_ms } else { crate::now_ms() };
                self.shared.with_state(|state| state.handles.insert(name.clone(), handle.clone()));
                self.shared.update_task(name, Some(event("Started", &format!("task started with pid {pid}"))), |state| {
                    state.state = TaskStatus::Running;
                    state.pid = Some(pid);
                    state.started_at = Some(started_at);
                    state.finished_at = None;
                    state.checks = check::pending_states(&self.task.checks);
                });
                self.shared.commit().await;
                Ok(handle)
            }
            Err(error) => {
                let fatal = matches!(error, DriverError::InvalidConfig { .. });
                tracing::warn!(alloc_id = %config.alloc_id, task = %name, %error, "starting task failed");
                self.shared.update_task(name, Some(event("Driver Failure", &error_chain(&error))), |_| {});
                self.shared.commit().await;
                Err(if fatal { StartFailure::Fatal } else { StartFailure::Retryable })
            }
        }
    }

    /// Starts the destination of a live migration: the driver's incoming task on a free port, reported to the
    /// server once every task of the allocation listens; then waits until the guest resumed (the source
    /// migrated) or the allocation is stopped (the migration failed elsewhere). Fatal on failure: a fresh
    /// start would not be the migrated guest.
    async fn start_incoming(
        &self,
        live: &dyn LiveMigration,
        config: &TaskConfig,
        migration: &Migration,
        control: &mut watch::Receiver<TaskControl>,
    ) -> Result<TaskHandle, StartFailure> {
        let name = &self.task.name;
        let context = &self.shared.context;
        let failed = |message: String| {
            self.shared.update_task(name, Some(event("Migration Failed", &message)), |_| {});
            self.shared.with_state(|state| state.migration_progress = Some(MigrationProgress::Failed { reason: message }));
        };
        let Some(port) = free_port(context.port_range) else {
            failed("no free port to receive the migration on".to_string());
            self.shared.commit().await;
            return Err(StartFailure::Fatal);
        };
        // On the node's own address only: the guest's memory travels over this connection.
        let listen = format!("{}:{port}", context.advertise_host);
        // With TLS in the cluster, the stream is TLS too: the source must present a certificate of the cluster.
        let tls = match context.tls.as_ref().map(|cert| cert.migration_tls(&migration.peer_node_id)).transpose() {
            Ok(tls) => tls,
            Err(reason) => {
                failed(format!("the migration's TLS credentials: {reason}"));
                self.shared.commit().await;
                return Err(StartFailure::Fatal);
            }
        };
        let handle = match live.start_incoming(config, &listen, tls.as_ref()).await {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!(alloc_id = %config.alloc_id, task = %name, %error, "starting the migration destination failed");
                failed(format!("starting the destination: {}", error_chain(&error)));
                self.shared.commit().await;
                return Err(StartFailure::Fatal);
            }
        };
        let uri = format!("tcp:{listen}");
        self.shared.with_state(|state| state.handles.insert(name.clone(), handle.clone()));
        let message = format!("waiting for the guest's state from allocation {} on {uri}", short(&migration.peer_alloc_id));
        self.shared.update_task(name, Some(event("Migrating In", &message)), |state| state.pid = Some(handle.pid));
        self.shared.with_state(|state| {
            state.migration_listen.insert(name.clone(), uri.clone());
            let tasks = state.group.as_ref().map_or(0, |group| group.tasks.len());
            if state.migration_listen.len() >= tasks {
                state.migration_progress = Some(MigrationProgress::Listening { listen_addrs: state.migration_listen.clone() });
            }
        });
        self.shared.commit().await;
        loop {
            if *control.borrow_and_update() != TaskControl::Run {
                // The caller's wait sees the kill (or detach) at once and ends the waiting QEMU.
                return Ok(handle);
            }
            tokio::select! {
                resumed = live.wait_incoming(&handle) => match resumed {
                    Ok(()) => break,
                    Err(error) => {
                        failed(format!("the guest did not resume: {}", error_chain(&error)));
                        self.shared.commit().await;
                        self.release(self.driver_of(&handle), &handle).await;
                        return Err(StartFailure::Fatal);
                    }
                },
                changed = control.changed() => if changed.is_err() { return Ok(handle) },
            }
        }
        let started_at = crate::now_ms();
        let message = format!("guest resumed after a live migration from allocation {}", short(&migration.peer_alloc_id));
        self.shared.update_task(name, Some(event("Started", &message)), |state| {
            state.state = TaskStatus::Running;
            state.pid = Some(handle.pid);
            state.started_at = Some(started_at);
            state.finished_at = None;
            state.checks = check::pending_states(&self.task.checks);
        });
        self.shared.commit().await;
        Ok(handle)
    }

    fn driver_of(&self, handle: &TaskHandle) -> &dyn Driver {
        self.shared.context.drivers.get(&handle.driver).map(|driver| driver.as_ref()).expect("the task's driver exists")
    }

    /// Live-migrates the running task to `uri`. `None` when it failed: the task keeps running, the event
    /// and the reported progress say why.
    async fn migrate_out(
        &self,
        driver: &dyn Driver,
        handle: &TaskHandle,
        uri: &str,
        peer_node_id: &str,
    ) -> Option<davit_api::objects::MigrationReport> {
        let live = driver.live_migration()?;
        let name = &self.task.name;
        self.shared.update_task(name, Some(event("Migrating", &format!("sending the guest to {uri}"))), |_| {});
        self.shared.commit().await;
        // With TLS in the cluster, the stream is TLS too, to the destination node's certificate only.
        let tls = self.shared.context.tls.as_ref().map(|cert| cert.migration_tls(peer_node_id)).transpose();
        let migrated = match &tls {
            Ok(tls) => live.migrate(handle, uri, tls.as_ref()).await,
            Err(reason) => Err(davit_drivers::DriverError::Other(format!("the migration's TLS credentials: {reason}"))),
        };
        match migrated {
            Ok(report) => Some(davit_api::objects::MigrationReport {
                downtime_ms: report.downtime_ms,
                total_ms: report.total_ms,
                transferred_bytes: report.transferred_bytes,
            }),
            Err(error) => {
                let reason = format!("migration to {uri} failed: {}", error_chain(&error));
                tracing::warn!(alloc_id = %handle.alloc_id, task = %name, %reason, "live migration failed; the task keeps running");
                self.shared.update_task(name, Some(event("Migration Failed", &reason)), |_| {});
                self.shared.with_state(|state| state.migration_progress = Some(MigrationProgress::Failed { reason }));
                self.shared.commit().await;
                None
            }
        }
    }

    /// The task moved away: dead, not failed, with a `Migrated` event carrying the downtime. Once every task
    /// of the allocation moved, the server hears that the migration completed.
    async fn migrated(
        &self,
        driver: &dyn Driver,
        handle: &TaskHandle,
        report: davit_api::objects::MigrationReport,
        peer_node_id: &str,
    ) -> TaskOutcome {
        self.release(driver, handle).await;
        let name = &self.task.name;
        self.shared.with_state(|state| {
            let others_moved = state
                .task_states
                .iter()
                .filter(|(task, _)| *task != name)
                .all(|(_, task)| task.events.last().is_some_and(|last| last.kind == "Migrated"));
            if others_moved {
                state.migration_progress = Some(MigrationProgress::Completed { report });
            }
        });
        let message = format!("{}, to node {}", report.summary(), short(peer_node_id));
        self.finish(Some(event("Migrated", &message)), false).await
    }

    /// The driver's view of the task, with `${…}` interpolated and the `DAVIT_*` environment.
    fn task_config(&self) -> TaskConfig {
        let alloc = self.shared.with_state(|state| state.alloc.clone());
        let alloc_dir = self.shared.alloc_dir.clone();
        let task_dir = alloc_dir.join(&self.task.name);
        let context = TaskEnvContext {
            alloc: &alloc,
            task: &self.task,
            node: &self.shared.context.node,
            alloc_dir: &alloc_dir,
            task_dir: &task_dir,
            upstream_ip: self.shared.context.upstream_ip(),
        };
        TaskConfig {
            alloc_id: alloc.id.clone(),
            task_name: self.task.name.clone(),
            driver_config: context.interpolate_json(&self.task.config),
            env: context.build_env(),
            user: self.task.user.clone(),
            log_dir: crate::alloc_dir::logs(&alloc_dir),
            alloc_dir: alloc_dir.clone(),
            task_dir: task_dir.clone(),
            resources: TaskResources { cpu_millicores: self.task.resources.cpu, memory_mib: self.task.resources.memory },
            logs: self.shared.context.log_rotation,
            events: self.event_sink(),
        }
    }

    /// Driver progress (image pulls, downloads) becomes task events, committed as they come.
    fn event_sink(&self) -> EventSink {
        let shared = self.shared.clone();
        let task = self.task.name.clone();
        EventSink::new(move |kind, message, progress| {
            let mut event = event(kind, message);
            event.progress = progress.map(|(done, total)| ByteProgress { done, total });
            shared.update_task(&task, Some(event), |_| {});
            let shared = shared.clone();
            tokio::spawn(async move { shared.commit().await });
        })
    }

    /// Waits for the task to exit, or for the control to change to a kill or detach, a check or template or an
    /// operator to ask for a restart, or a live migration to start.
    #[allow(clippy::too_many_arguments)] // one receiver per thing it waits for
    async fn wait(
        &self,
        driver: &dyn Driver,
        handle: &TaskHandle,
        control: &mut watch::Receiver<TaskControl>,
        check_failed: &mut mpsc::Receiver<String>,
        migration: &mut watch::Receiver<Option<Box<Migration>>>,
        restart_requests: &mut watch::Receiver<u64>,
        migration_tried: Option<&str>,
    ) -> Waited {
        loop {
            let current = control.borrow_and_update().clone();
            if current != TaskControl::Run {
                return Waited::Control(current);
            }
            let outgoing = migration.borrow_and_update().clone().filter(|migration| {
                migration.role == MigrationRole::Source
                    && migration.status == MigrationStatus::Listening
                    && migration_tried != Some(migration.peer_alloc_id.as_str())
            });
            if let Some(outgoing) = outgoing
                && driver.live_migration().is_some()
                && let Some(uri) = outgoing.listen_addrs.get(&self.task.name)
            {
                return Waited::Migrate { peer_alloc_id: outgoing.peer_alloc_id, peer_node_id: outgoing.peer_node_id, uri: uri.clone() };
            }
            tokio::select! {
                changed = migration.changed() => if changed.is_err() { return Waited::Control(TaskControl::Detach) },
                result = driver.wait(handle) => match result {
                    Ok(exit) => return Waited::Exited(exit),
                    Err(error) => {
                        // The wait itself failed: find out whether the task still runs before concluding anything.
                        tracing::warn!(task = %self.task.name, %error, "waiting on task failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match driver.inspect(handle).await {
                            Ok(TaskRunState::Running) => continue,
                            Ok(TaskRunState::Exited(exit)) => return Waited::Exited(exit),
                            Err(_) => return Waited::Exited(ExitResult { exit_code: None, signal: None, oom_killed: false }),
                        }
                    }
                },
                changed = control.changed() => if changed.is_err() { return Waited::Control(TaskControl::Detach) },
                Some(reason) = check_failed.recv() => return Waited::CheckFailed(reason),
                Ok(()) = restart_requests.changed() => return Waited::CheckFailed(format!("{OPERATOR_RESTART}{}", *restart_requests.borrow_and_update())),
            }
        }
    }

    /// Stops the task because a check with `on_failure: restart` is failing; returns how it ended.
    async fn stop_for_check(&self, driver: &dyn Driver, handle: &TaskHandle, reason: &str) -> ExitResult {
        let signal = self.task.kill_signal.clone();
        let timeout = self.task.kill_timeout;
        let message = format!("{reason}; sending {signal}, timeout {timeout}");
        self.shared.update_task(&self.task.name, Some(event("Killing", &message)), |_| {});
        self.shared.commit().await;
        if let Err(error) = driver.stop(handle, &signal, timeout.as_std()).await {
            tracing::warn!(alloc_id = %handle.alloc_id, task = %self.task.name, %error, "stopping task failed");
        }
        let unknown = ExitResult { exit_code: None, signal: None, oom_killed: false };
        let exit = match tokio::time::timeout(Duration::from_secs(5), driver.wait(handle)).await {
            Ok(Ok(exit)) => exit,
            _ => unknown,
        };
        self.record_exit(&exit);
        exit
    }

    /// Records a `Terminated` (or `OOM Killed`) event.
    fn record_exit(&self, exit: &ExitResult) {
        self.shared.update_task(&self.task.name, Some(exit_event(exit, self.task.resources.memory)), |state| {
            state.finished_at = Some(crate::now_ms());
            state.pid = None;
        });
    }

    /// Stops a running task with its kill signal and timeout: dead, not failed.
    async fn kill(&self, driver: &dyn Driver, handle: &TaskHandle, reason: KillReason) -> TaskOutcome {
        let name = &self.task.name;
        if let KillReason::SiblingFailed(sibling) = &reason {
            self.shared.update_task(name, Some(event("Sibling Task Failed", &format!("task {sibling} failed"))), |_| {});
        }
        let signal = self.task.kill_signal.clone();
        let timeout = self.task.kill_timeout;
        let what =
            driver.describe_stop(handle, &signal, timeout.as_std()).unwrap_or_else(|| format!("sending {signal}, timeout {timeout}"));
        self.shared.update_task(name, Some(event("Killing", &what)), |_| {});
        self.shared.commit().await;
        if let Err(error) = driver.stop(handle, &signal, timeout.as_std()).await {
            tracing::warn!(alloc_id = %handle.alloc_id, task = %name, %error, "stopping task failed");
        }
        self.release(driver, handle).await;
        self.finish(Some(event("Killed", "task killed")), false).await
    }

    /// Lets the driver release what the ended task held and forgets its handle.
    async fn release(&self, driver: &dyn Driver, handle: &TaskHandle) {
        if let Err(error) = driver.destroy(handle).await {
            tracing::warn!(alloc_id = %handle.alloc_id, task = %self.task.name, %error, "destroying task failed");
        }
        self.shared.with_state(|state| state.handles.remove(&self.task.name));
    }

    /// The task is dead for good.
    async fn finish(&self, last_event: Option<davit_api::objects::TaskEvent>, failed: bool) -> TaskOutcome {
        self.shared.update_task(&self.task.name, last_event, |state| {
            state.state = TaskStatus::Dead;
            state.failed = failed;
            state.pid = None;
            state.finished_at.get_or_insert_with(crate::now_ms);
        });
        self.shared.commit().await;
        TaskOutcome::Dead { task: self.task.name.clone(), failed }
    }
}

/// A TCP port nothing listens on now, outside the node's scheduler range (the scheduler hands those out).
fn free_port(range: (u16, u16)) -> Option<u16> {
    (0..50).find_map(|_| {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        let port = listener.local_addr().ok()?.port();
        (!(range.0..=range.1).contains(&port)).then_some(port)
    })
}

/// The first 8 characters of an id, as the CLI shows them.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Prefixes the restart decision's message with the failing check that caused it.
fn with_check_reason(decision: RestartDecision, reason: Option<String>) -> RestartDecision {
    let Some(reason) = reason else { return decision };
    match decision {
        RestartDecision::Restart { delay, message } => RestartDecision::Restart { delay, message: format!("{reason}; {message}") },
        RestartDecision::Done { failed, message } => RestartDecision::Done { failed, message: format!("{reason}; {message}") },
    }
}

enum StartFailure {
    /// The task cannot start as configured: do not retry.
    Fatal,
    /// Treat like an exit and apply the restart policy.
    Retryable,
}

/// `Terminated` with the exit code or signal, or `OOM Killed`.
fn exit_event(exit: &ExitResult, memory_mib: u32) -> davit_api::objects::TaskEvent {
    let mut task_event = if exit.oom_killed {
        event("OOM Killed", &format!("memory limit of {memory_mib} MiB reached"))
    } else {
        let message = match (exit.exit_code, exit.signal) {
            (_, Some(signal)) => format!("killed by signal {signal}"),
            (Some(code), None) => format!("exit code {code}"),
            (None, None) => "exited with an unknown status".to_string(),
        };
        event("Terminated", &message)
    };
    task_event.exit_code = exit.exit_code;
    task_event.signal = exit.signal;
    task_event
}

/// Creates `<task_dir>/local` (the alloc dir hook did it too; this covers a removed directory).
fn task_dir_prestart(task_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(task_dir.join("local"))
}

use davit_api::error_chain;
