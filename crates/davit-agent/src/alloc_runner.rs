//! The allocation lifecycle: one [`AllocRunner`] per allocation, one task runner per task.
//!
//! ```text
//!  new ──fetch job version──▶ alloc dir ──▶ tasks run ──all tasks dead──▶ finished
//!   │        │ (gone: failed)   (create)     │    │                        │
//!   │        ▼                               │    └─ a task fails for good: │
//!   │     failed ◀───────────────────────────┘       kill its siblings     │
//!   │                                                                       │
//!  restored (state.json) ──alloc dir──▶ tasks re-attached (recover) ─┘      │
//!                                                                           ▼
//!  stop (server: desired stop, or shutdown of `davit dev`) → kill every task   destroy (server forgot
//!  detach (agent shutdown) → leave tasks running, state stays on disk          the alloc): remove the
//!                                                                              alloc dir
//! ```
//!
//! Each task runs its own loop (see `task_runner`):
//!
//! ```text
//!  pending ──prestart hooks, driver.start──▶ running ──exit──▶ restart policy ──restart──▶ pending (delay)
//!     │              │ (error)                 │                    │
//!     │              └──────▶ restart policy   │ kill               └──no restart──▶ dead (failed or not)
//!     └──kill──▶ dead                          └──driver.stop──▶ dead (not failed)
//! ```
//!
//! Every change of a task's state is written to `state.json` and handed to the status [`Updater`](crate::status::Updater).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use davit_api::namespace::{namespace_of, service_key};
use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, TaskStatus};
use davit_api::spec::{GroupSpec, JobType};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::AgentContext;
use crate::alloc_dir;
use crate::alloc_shared::{AllocShared, event};
use crate::state::PersistedAlloc;
use crate::status::derive_client_status;
use crate::task_runner::{KillReason, TaskControl, TaskOutcome, TaskRunner};

/// What the agent wants from an allocation runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocControl {
    Run,
    /// Kill every task (the task's kill signal and timeout) and finish.
    Stop,
    /// Finish without touching the tasks (agent shutdown; they are re-attached on the next start).
    Detach,
}

/// Runs one allocation. Cheap to share; the lifecycle runs in a background task.
pub struct AllocRunner {
    shared: Arc<AllocShared>,
    control: watch::Sender<AllocControl>,
    /// True once the lifecycle task returned.
    finished: watch::Receiver<bool>,
}

impl AllocRunner {
    /// Starts a runner for an allocation this agent has not run before.
    pub(crate) fn start_new(context: Arc<AgentContext>, mut alloc: Allocation) -> Arc<AllocRunner> {
        alloc.task_states.clear();
        let state = PersistedAlloc {
            alloc,
            job_type: None,
            group: None,
            task_states: Default::default(),
            handles: BTreeMap::new(),
            restart_trackers: BTreeMap::new(),
            stop_requested: false,
            failure: None,
            migration_listen: BTreeMap::new(),
            migration_progress: None,
            deployment_health: None,
        };
        Self::spawn(context, state)
    }

    /// Starts a runner from local state written by an earlier agent process: re-attaches to its tasks.
    pub(crate) fn restore(context: Arc<AgentContext>, state: PersistedAlloc) -> Arc<AllocRunner> {
        Self::spawn(context, state)
    }

    fn spawn(context: Arc<AgentContext>, state: PersistedAlloc) -> Arc<AllocRunner> {
        let alloc_dir = context.alloc_dir(&state.alloc.id);
        let initial = if state.stop_requested { AllocControl::Stop } else { AllocControl::Run };
        let (control, control_rx) = watch::channel(initial);
        let (finished_tx, finished) = watch::channel(false);
        let migration = watch::Sender::new(state.alloc.migration.clone());
        let restart_applied = state.alloc.restart_generation;
        let restart = watch::Sender::new(restart_applied);
        let shared = Arc::new(AllocShared {
            context,
            alloc_dir,
            state: Mutex::new(state),
            migration,
            restart,
            restart_applied,
            stop_now: std::sync::atomic::AtomicBool::new(false),
            persist: tokio::sync::Mutex::new(()),
        });
        let lifecycle_shared = shared.clone();
        tokio::spawn(async move {
            lifecycle_shared.clone().run(control_rx).await;
            let _ = finished_tx.send(true);
        });
        Arc::new(AllocRunner { shared, control, finished })
    }

    /// The id of the allocation's job (its namespace in front unless that is `default`).
    pub fn job_id(&self) -> String {
        self.shared.with_state(|state| state.alloc.job_name.clone())
    }

    pub fn id(&self) -> String {
        self.shared.with_state(|state| state.alloc.id.clone())
    }

    /// Applies what the server now says about the allocation: a new job version is recorded in place
    /// (tasks keep running); desired stop stops the tasks.
    pub(crate) fn update(&self, alloc: &Allocation) {
        let changed = self.shared.with_state(|state| {
            let changed = state.alloc.job_version != alloc.job_version
                || state.alloc.desired_status != alloc.desired_status
                || state.alloc.migration != alloc.migration
                || state.alloc.restart_generation != alloc.restart_generation;
            if changed {
                let mut alloc = alloc.clone();
                alloc.task_states.clear();
                state.alloc = alloc;
            }
            changed
        });
        self.shared.migration.send_if_modified(|migration| {
            let modified = *migration != alloc.migration;
            migration.clone_from(&alloc.migration);
            modified
        });
        self.shared.restart.send_if_modified(|generation| {
            let newer = alloc.restart_generation > *generation;
            *generation = (*generation).max(alloc.restart_generation);
            newer
        });
        if alloc.desired_status == DesiredStatus::Stop {
            self.stop();
        }
        if changed {
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.commit().await });
        }
    }

    /// The group's `disconnect.stop_after`, once the group is known.
    pub(crate) fn stop_after(&self) -> Option<Duration> {
        self.shared.with_state(|state| state.group.as_ref()?.disconnect.as_ref()?.stop_after.map(|after| after.as_std()))
    }

    /// Fencing: no server answered for `silent`, longer than the group allows; stops every task (once) with a
    /// `Disconnected` event saying why. Returns whether it did now.
    pub(crate) fn fence(&self, silent: Duration, stop_after: Duration) -> bool {
        if *self.control.borrow() != AllocControl::Run || *self.finished.borrow() {
            return false;
        }
        let message =
            format!("no server answered for {} s (disconnect.stop_after {}): stopping", silent.as_secs(), davit_api::Duration(stop_after));
        let tasks: Vec<String> = self.shared.with_state(|state| state.task_states.keys().cloned().collect());
        for task in &tasks {
            self.shared.update_task(task, Some(event("Disconnected", &message)), |_| {});
        }
        self.shared.stop_now.store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop();
        true
    }

    /// Kills every task and finishes. Idempotent.
    pub fn stop(&self) {
        self.control.send_if_modified(|control| {
            if *control == AllocControl::Stop {
                return false;
            }
            *control = AllocControl::Stop;
            true
        });
    }

    /// Finishes without stopping the tasks (unless a stop is already under way: that one ends now, without the
    /// rest of its shutdown delay).
    pub fn detach(&self) {
        self.control.send_if_modified(|control| {
            if *control == AllocControl::Stop {
                self.shared.stop_now.store(true, std::sync::atomic::Ordering::Relaxed);
                return true; // wakes the runner waiting out the delay
            }
            if *control != AllocControl::Run {
                return false;
            }
            *control = AllocControl::Detach;
            true
        });
    }

    /// Resolves once the lifecycle finished (all tasks dead, or detached).
    pub async fn wait_finished(&self) {
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|finished| *finished).await;
    }

    /// Stops the tasks, releases what drivers hold and removes the allocation directory.
    pub(crate) async fn destroy(&self) {
        self.stop();
        self.wait_finished().await;
        let handles = self.shared.with_state(|state| std::mem::take(&mut state.handles));
        for (task, handle) in handles {
            if let Some(driver) = self.shared.context.drivers.get(&handle.driver)
                && let Err(error) = driver.destroy(&handle).await
            {
                tracing::warn!(alloc_id = %handle.alloc_id, %task, %error, "destroying task failed");
            }
        }
        let _guard = self.shared.persist.lock().await;
        if let Err(error) = alloc_dir::remove(&self.shared.alloc_dir) {
            tracing::warn!(alloc_dir = %self.shared.alloc_dir.display(), %error, "removing the allocation directory failed");
        }
    }

    /// Names of the allocation's tasks (empty until the job version was fetched).
    pub fn task_names(&self) -> Vec<String> {
        self.shared.with_state(|state| match &state.group {
            Some(group) => group.tasks.iter().map(|task| task.name.clone()).collect(),
            None => state.task_states.keys().cloned().collect(),
        })
    }

    /// The upstreams of the allocation's tasks while it is not finished (empty until the job version
    /// was fetched).
    pub(crate) fn upstreams(&self) -> Vec<crate::services::LocalUpstream> {
        self.shared.with_state(|state| match &state.group {
            Some(group)
                if state.failure.is_none() && !state.stop_requested && !derive_client_status(&state.task_states).0.is_terminal() =>
            {
                group
                    .tasks
                    .iter()
                    .flat_map(|task| &task.upstreams)
                    .map(|upstream| crate::services::LocalUpstream {
                        // Upstreams name services of the allocation's own namespace.
                        service: service_key(namespace_of(&state.alloc.job_name), &upstream.service),
                        local_port: upstream.local_port,
                    })
                    .collect()
            }
            _ => Vec::new(),
        })
    }

    /// Where the allocation's task logs are (`<alloc_dir>/.logs`).
    pub fn log_dir(&self) -> PathBuf {
        alloc_dir::logs(&self.shared.alloc_dir)
    }

    /// The driver handle of a task that was started (and not yet destroyed).
    pub fn task_handle(&self, task: &str) -> Option<davit_drivers::TaskHandle> {
        self.shared.with_state(|state| state.handles.get(task).cloned())
    }

    #[cfg(test)]
    pub(crate) fn shared_state<R>(&self, f: impl FnOnce(&mut PersistedAlloc) -> R) -> R {
        self.shared.with_state(f)
    }

    /// Everything reported to the server about the allocation (its client status, task states, health).
    pub(crate) fn status_update(&self) -> davit_api::http::AllocStatusUpdate {
        self.shared.status_update()
    }

    /// The status reported to the server.
    pub fn client_status(&self) -> ClientStatus {
        self.shared.status_update().client_status
    }
}

impl AllocShared {
    /// The lifecycle (see the module diagram).
    async fn run(self: Arc<Self>, mut control: watch::Receiver<AllocControl>) {
        let (alloc_id, failed_before) = self.with_state(|state| (state.alloc.id.clone(), state.failure.is_some()));
        if failed_before {
            // Restored after failing before its tasks ran: it stays failed.
            self.commit().await;
            return;
        }
        // 1. The group spec of the allocation's job version.
        let group = match self.with_state(|state| state.group.clone().zip(state.job_type)) {
            Some(known) => known,
            None => match self.fetch_group(&mut control).await {
                FetchOutcome::Found(job_type, group) => {
                    self.with_state(|state| {
                        state.job_type = Some(job_type);
                        state.group = Some((*group).clone());
                    });
                    self.context.local_services_changed();
                    for task in &group.tasks {
                        self.update_task(&task.name, Some(event("Received", "task received by the agent")), |_| {});
                    }
                    self.commit().await;
                    (*group, job_type)
                }
                FetchOutcome::Failed(message) => {
                    tracing::warn!(%alloc_id, %message, "allocation cannot run");
                    self.with_state(|state| state.failure = Some(message));
                    self.commit().await;
                    return;
                }
                FetchOutcome::Stopped => {
                    self.with_state(|state| state.stop_requested = true);
                    self.commit().await;
                    return;
                }
                FetchOutcome::Detached => return,
            },
        };
        let (group, job_type) = group;

        // 2. The allocation directory.
        let task_names: Vec<String> = group.tasks.iter().map(|task| task.name.clone()).collect();
        if let Err(error) = alloc_dir::create(&self.alloc_dir, &task_names) {
            let message = format!("creating the allocation directory {}: {error}", self.alloc_dir.display());
            tracing::warn!(%alloc_id, %message, "allocation setup failed");
            for task in &task_names {
                self.update_task(task, Some(event("Setup Failure", &message)), |state| {
                    state.state = TaskStatus::Dead;
                    state.failed = true;
                    state.finished_at = Some(crate::now_ms());
                });
            }
            self.with_state(|state| state.failure = Some(message));
            self.commit().await;
            return;
        }

        // 3. One runner per task that is not dead yet.
        let mut task_controls: BTreeMap<String, watch::Sender<TaskControl>> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        for task in &group.tasks {
            let dead =
                self.with_state(|state| state.task_states.get(&task.name).is_some_and(|task_state| task_state.state == TaskStatus::Dead));
            if dead {
                continue;
            }
            let (control_tx, control_rx) = watch::channel(TaskControl::Run);
            task_controls.insert(task.name.clone(), control_tx);
            let runner = TaskRunner {
                shared: self.clone(),
                task: task.clone(),
                restart: group.restart.clone(),
                job_type,
                rendered: std::sync::Mutex::new(None),
            };
            tasks.spawn(runner.run(control_rx));
        }
        // A restored state may say the tasks already ran; report it once in any case.
        self.commit().await;
        // A deployment's new allocation: decide its health for the deployment.
        let (job, version, deployment, decided) = self.with_state(|state| {
            (state.alloc.job_name.clone(), state.alloc.job_version, state.alloc.deployment_id.is_some(), state.deployment_health.is_some())
        });
        if deployment && !decided {
            match self.context.job_spec(&job, version).await.map(|spec| spec.update_strategy(&group.name)) {
                Ok(Some(strategy)) => drop(tokio::spawn(crate::deployment_health::track(self.clone(), strategy))),
                Ok(None) => {}
                Err(error) => tracing::warn!(%alloc_id, %error, "no deployment health: the job version is not available"),
            }
        }

        // 4. Watch the tasks and the control until every task runner returned. A stop waits the group's
        // `shutdown_delay` first: the allocation has left the catalog, so proxies stop sending it requests.
        let shutdown_delay = group.shutdown_delay.map_or(Duration::ZERO, |delay| delay.as_std());
        let mut alloc_control = *control.borrow_and_update();
        let mut kill_at = self.follow_control(alloc_control, shutdown_delay, &task_controls).await;
        while !tasks.is_empty() {
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { break };
                    match joined {
                        Ok(TaskOutcome::Dead { task, failed: true }) => {
                            for (name, sender) in &task_controls {
                                if *name != task {
                                    sender.send_if_modified(|control| {
                                        if *control != TaskControl::Run {
                                            return false;
                                        }
                                        *control = TaskControl::Kill(KillReason::SiblingFailed(task.clone()));
                                        true
                                    });
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%alloc_id, %error, "task runner panicked"),
                    }
                }
                changed = control.changed(), if alloc_control == AllocControl::Run || kill_at.is_some() => {
                    alloc_control = if changed.is_ok() { *control.borrow_and_update() } else { AllocControl::Detach };
                    kill_at = self.follow_control(alloc_control, shutdown_delay, &task_controls).await;
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() => {
                    kill_at = None;
                    forward_control(AllocControl::Stop, &task_controls);
                }
            }
        }
        self.commit().await;
        tracing::debug!(%alloc_id, "allocation runner finished");
    }

    /// Acts on a control change: a stop is recorded, and forwarded to the tasks at once or, with a shutdown
    /// delay, at the instant returned.
    async fn follow_control(
        self: &Arc<Self>,
        control: AllocControl,
        shutdown_delay: Duration,
        task_controls: &BTreeMap<String, watch::Sender<TaskControl>>,
    ) -> Option<tokio::time::Instant> {
        if control == AllocControl::Stop {
            self.mark_stop_requested().await;
            if !shutdown_delay.is_zero() && !self.stop_now.load(std::sync::atomic::Ordering::Relaxed) {
                let message = format!("left the service catalog; killing in {}", davit_api::Duration(shutdown_delay));
                for task in task_controls.keys() {
                    self.update_task(task, Some(event("Shutdown Delay", &message)), |_| {});
                }
                self.commit().await;
                return Some(tokio::time::Instant::now() + shutdown_delay);
            }
        }
        forward_control(control, task_controls);
        None
    }

    async fn mark_stop_requested(self: &Arc<Self>) {
        let changed = self.with_state(|state| !std::mem::replace(&mut state.stop_requested, true));
        if changed {
            self.commit().await;
        }
    }

    /// Fetches the job version and picks the allocation's group, retrying while the server is unreachable.
    async fn fetch_group(&self, control: &mut watch::Receiver<AllocControl>) -> FetchOutcome {
        let (job, version, group_name) =
            self.with_state(|state| (state.alloc.job_name.clone(), state.alloc.job_version, state.alloc.group.clone()));
        let mut backoff = Duration::from_millis(500);
        loop {
            match *control.borrow_and_update() {
                AllocControl::Run => {}
                AllocControl::Stop => return FetchOutcome::Stopped,
                AllocControl::Detach => return FetchOutcome::Detached,
            }
            match self.context.job_spec(&job, version).await {
                Ok(spec) => {
                    return match spec.group(&group_name) {
                        Some(group) => FetchOutcome::Found(spec.job_type, Box::new(group.clone())),
                        None => FetchOutcome::Failed(format!("job {job} version {version} has no group {group_name}")),
                    };
                }
                Err(error @ davit_client::ClientError::Api { status: 400..=499, .. }) => {
                    return FetchOutcome::Failed(format!("fetching job {job} version {version}: {error}"));
                }
                Err(error) => {
                    tracing::warn!(%job, version, %error, "fetching the job version failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = control.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

enum FetchOutcome {
    Found(JobType, Box<GroupSpec>),
    Failed(String),
    Stopped,
    Detached,
}

fn forward_control(control: AllocControl, task_controls: &BTreeMap<String, watch::Sender<TaskControl>>) {
    let task_control = match control {
        AllocControl::Run => return,
        AllocControl::Stop => TaskControl::Kill(KillReason::Stop),
        AllocControl::Detach => TaskControl::Detach,
    };
    for sender in task_controls.values() {
        sender.send_if_modified(|current| {
            // A kill already under way is not turned into a detach.
            if *current != TaskControl::Run {
                return false;
            }
            *current = task_control.clone();
            true
        });
    }
}
