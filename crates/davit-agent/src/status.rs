//! Allocation client status from task states (pure), and the [`Updater`] that sends changed
//! allocations to the server in batches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use davit_api::http::AllocStatusUpdate;
use davit_api::objects::{ClientStatus, TaskStates, TaskStatus};
use tokio::sync::Notify;

use crate::servers::ServerPool;

/// How long the updater waits after a change for more changes to batch with it. Short: an idle agent reports
/// at once; under load, batches grow by themselves with the changes made while a request is in flight.
const COALESCE: Duration = Duration::from_millis(2);

/// Client status of an allocation from its tasks' states (as in Nomad): any task failed → `failed`;
/// else any task pending (not started yet, or waiting to restart) → `pending`; else any running →
/// `running`; else (all dead, none failed) → `complete`. No tasks yet → `pending`.
pub fn derive_client_status(tasks: &TaskStates) -> (ClientStatus, String) {
    if tasks.is_empty() {
        return (ClientStatus::Pending, "no tasks have started".to_string());
    }
    let failed: Vec<&str> =
        tasks.iter().filter(|(_, state)| state.state == TaskStatus::Dead && state.failed).map(|(name, _)| name.as_str()).collect();
    if !failed.is_empty() {
        return (ClientStatus::Failed, format!("failed tasks: {}", failed.join(", ")));
    }
    if tasks.values().any(|state| state.state == TaskStatus::Pending) {
        return (ClientStatus::Pending, "tasks are pending".to_string());
    }
    if tasks.values().any(|state| state.state == TaskStatus::Running) {
        return (ClientStatus::Running, "tasks are running".to_string());
    }
    (ClientStatus::Complete, "all tasks have completed".to_string())
}

/// Sends the latest status of every changed allocation to the server. Changes within ~50 ms go in one
/// request; on failure the batch is retried, unless a newer status of the same allocation arrived meanwhile.
#[derive(Clone)]
pub struct Updater {
    shared: Arc<UpdaterShared>,
}

struct UpdaterShared {
    node_id: String,
    servers: ServerPool,
    dirty: Mutex<BTreeMap<String, AllocStatusUpdate>>,
    notify: Notify,
}

impl Updater {
    pub fn new(node_id: String, servers: ServerPool) -> Updater {
        Updater { shared: Arc::new(UpdaterShared { node_id, servers, dirty: Mutex::new(BTreeMap::new()), notify: Notify::new() }) }
    }

    /// Marks an allocation dirty with its latest status.
    pub fn push(&self, update: AllocStatusUpdate) {
        self.shared.dirty.lock().expect("updater lock").insert(update.id.clone(), update);
        self.shared.notify.notify_one();
    }

    /// Forgets a pending update (the allocation was destroyed).
    pub fn forget(&self, alloc_id: &str) {
        self.shared.dirty.lock().expect("updater lock").remove(alloc_id);
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            tokio::select! {
                _ = self.shared.notify.notified() => {}
                _ = shutdown.changed() => return,
            }
            tokio::time::sleep(COALESCE).await;
            loop {
                if self.send_once().await {
                    backoff = Duration::from_millis(250);
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// Sends everything pending, retrying until it succeeds or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.dirty.lock().expect("updater lock").is_empty() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("could not send the last allocation updates to the server");
                return;
            }
            if !self.send_once().await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Sends one batch; true when nothing is left to retry.
    async fn send_once(&self) -> bool {
        let batch: Vec<AllocStatusUpdate> = std::mem::take(&mut *self.shared.dirty.lock().expect("updater lock")).into_values().collect();
        if batch.is_empty() {
            return true;
        }
        let node_id = self.shared.node_id.clone();
        let result = self
            .shared
            .servers
            .call(|client| {
                let node_id = node_id.clone();
                let batch = batch.clone();
                async move { client.update_alloc_status(&node_id, &batch).await }
            })
            .await;
        match result {
            Ok(_) => true,
            Err(error @ davit_client::ClientError::Api { status: 400 | 413 | 422, .. }) => {
                // The request itself is refused: retrying would not help. (A 404 means the node is not
                // registered yet, or any more: kept and retried until the heartbeat loop registers it.)
                tracing::warn!(%error, allocs = batch.len(), "the server refused allocation status updates; dropping them");
                true
            }
            Err(error) => {
                tracing::warn!(%error, allocs = batch.len(), "sending allocation status failed; will retry");
                let mut dirty = self.shared.dirty.lock().expect("updater lock");
                for update in batch {
                    // A newer status pushed meanwhile wins.
                    dirty.entry(update.id.clone()).or_insert(update);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use davit_api::objects::TaskState;

    use super::*;

    fn task(state: TaskStatus, failed: bool) -> TaskState {
        TaskState { state, failed, ..TaskState::default() }
    }

    #[test]
    fn client_status_from_task_states() {
        use TaskStatus::*;
        let cases: Vec<(&str, Vec<TaskState>, ClientStatus)> = vec![
            ("no tasks", vec![], ClientStatus::Pending),
            ("one pending", vec![task(Pending, false)], ClientStatus::Pending),
            ("one of two started", vec![task(Running, false), task(Pending, false)], ClientStatus::Pending),
            ("all running", vec![task(Running, false), task(Running, false)], ClientStatus::Running),
            ("one done, one running", vec![task(Dead, false), task(Running, false)], ClientStatus::Running),
            ("all done", vec![task(Dead, false), task(Dead, false)], ClientStatus::Complete),
            ("one failed, one running", vec![task(Dead, true), task(Running, false)], ClientStatus::Failed),
            ("one failed, one killed", vec![task(Dead, true), task(Dead, false)], ClientStatus::Failed),
        ];
        for (name, states, expected) in cases {
            let tasks: TaskStates = states.into_iter().enumerate().map(|(i, s)| (format!("t{i}"), s)).collect();
            assert_eq!(derive_client_status(&tasks).0, expected, "{name}");
        }
        let tasks = TaskStates::from([("web".to_string(), task(Dead, true)), ("db".to_string(), task(Dead, false))]);
        assert_eq!(derive_client_status(&tasks).1, "failed tasks: web");
    }
}
