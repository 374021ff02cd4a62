//! What an allocation runner and its task runners share: the allocation's state (written to `state.json` and
//! reported to the servers on every change) and the task events added to it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use davit_api::http::AllocStatusUpdate;
use davit_api::objects::{ClientStatus, Migration, TaskEvent, TaskState};
use tokio::sync::watch;

use crate::AgentContext;
use crate::state::{self, PersistedAlloc};
use crate::status::derive_client_status;

/// State shared by the allocation runner and its task runners.
pub(crate) struct AllocShared {
    pub(crate) context: Arc<AgentContext>,
    pub(crate) alloc_dir: PathBuf,
    pub(crate) state: Mutex<PersistedAlloc>,
    /// The allocation's live migration as the server last said (task runners watch it).
    pub(crate) migration: watch::Sender<Option<Box<Migration>>>,
    /// The newest restart an operator asked for (`Allocation::restart_generation`; task runners watch it).
    pub(crate) restart: watch::Sender<u64>,
    /// The generation the allocation had when this runner was made: a newer one is a restart to do.
    pub(crate) restart_applied: u64,
    /// Stop without waiting for the group's `shutdown_delay` (fencing, agent shutdown).
    pub(crate) stop_now: std::sync::atomic::AtomicBool,
    /// Serializes state writes so the file always ends with the newest snapshot.
    pub(crate) persist: tokio::sync::Mutex<()>,
}

/// Most events kept per task (the oldest are dropped).
const MAX_EVENTS: usize = 50;

impl AllocShared {
    pub(crate) fn alloc_id(&self) -> String {
        self.with_state(|state| state.alloc.id.clone())
    }

    /// Runs `f` on the state under its lock (never held across an await).
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut PersistedAlloc) -> R) -> R {
        f(&mut self.state.lock().expect("alloc state lock"))
    }

    /// Changes one task's state (adding `event` if given) without writing it yet; call [`commit`](Self::commit).
    pub(crate) fn update_task(&self, task: &str, event: Option<TaskEvent>, f: impl FnOnce(&mut TaskState)) {
        self.with_state(|state| {
            let task_state = state.task_states.entry_or_default(task.to_string());
            if let Some(event) = event {
                task_state.events.push(event);
                if task_state.events.len() > MAX_EVENTS {
                    let excess = task_state.events.len() - MAX_EVENTS;
                    task_state.events.drain(..excess);
                }
            }
            f(task_state);
        });
    }

    /// Writes the state file and queues a status update for the server.
    pub(crate) async fn commit(self: &Arc<Self>) {
        let _guard = self.persist.lock().await;
        let snapshot = self.with_state(|state| state.clone());
        let update = status_update_of(&snapshot);
        let alloc_dir = self.alloc_dir.clone();
        let written = tokio::task::spawn_blocking(move || state::save(&alloc_dir, &snapshot)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(alloc_dir = %self.alloc_dir.display(), %error, "writing allocation state failed"),
            Err(error) => tracing::error!(%error, "writing allocation state panicked"),
        }
        self.context.updater.push(update);
    }

    pub(crate) fn status_update(&self) -> AllocStatusUpdate {
        self.with_state(|state| status_update_of(state))
    }
}

/// The status of an allocation as reported to the server.
pub(crate) fn status_update_of(state: &PersistedAlloc) -> AllocStatusUpdate {
    let (client_status, client_description) = match &state.failure {
        Some(failure) => (ClientStatus::Failed, failure.clone()),
        None if state.group.is_none() && state.stop_requested => (ClientStatus::Complete, "stopped before it started".to_string()),
        None => derive_client_status(&state.task_states),
    };
    let (healthy, health_description) = match &state.failure {
        Some(failure) => (Some(false), failure.clone()),
        None => crate::check::derive_health(&state.task_states),
    };
    AllocStatusUpdate {
        id: state.alloc.id.clone(),
        client_status,
        client_description,
        task_states: state.task_states.clone(),
        healthy,
        health_description,
        migration: state.migration_progress.clone(),
        deployment_health: state.deployment_health,
    }
}

/// A task event stamped with the current wall-clock time.
pub(crate) fn event(kind: &str, message: &str) -> TaskEvent {
    TaskEvent { time: crate::now_ms(), kind: kind.to_string(), message: message.to_string(), exit_code: None, signal: None, progress: None }
}
