//! The agent's local state: one `<data_dir>/allocs/<id>/state.json` per allocation, written atomically
//! (temp file, fsync, rename, fsync of the directory) after every change, read back at start to
//! re-attach to running tasks.
//!
//! The file format is private to the agent (not a wire type); unknown fields are ignored so that an
//! older agent can read a newer file.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use davit_api::objects::{Allocation, MigrationProgress};
use davit_api::spec::{GroupSpec, JobType};
use davit_drivers::TaskHandle;
use serde::{Deserialize, Serialize};

use crate::restart::RestartTracker;

pub const STATE_FILE: &str = "state.json";

/// Everything needed to pick an allocation up again after an agent restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedAlloc {
    /// The allocation as last seen from the server (with the in-place updated `job_version`).
    pub alloc: Allocation,
    /// Type of the job the group belongs to (decides restarts); `None` until the spec was fetched.
    #[serde(default)]
    pub job_type: Option<JobType>,
    /// The group spec the tasks were started from; `None` until the spec was fetched.
    #[serde(default)]
    pub group: Option<GroupSpec>,
    #[serde(default)]
    pub task_states: davit_api::objects::TaskStates,
    /// Handles of tasks that are (or may be) running.
    #[serde(default)]
    pub handles: BTreeMap<String, TaskHandle>,
    #[serde(default)]
    pub restart_trackers: BTreeMap<String, RestartTracker>,
    /// The server asked the allocation to stop (or the agent stopped it at shutdown).
    #[serde(default)]
    pub stop_requested: bool,
    /// Why the allocation failed before its tasks could run (e.g. its job version is gone).
    #[serde(default)]
    pub failure: Option<String>,
    /// Destination of a live migration: where each vm task's incoming QEMU listens, as tasks report it.
    #[serde(default)]
    pub migration_listen: BTreeMap<String, String>,
    /// What the server is told about the allocation's live migration (see `Allocation::migration`).
    #[serde(default)]
    pub migration_progress: Option<MigrationProgress>,
    /// The allocation's deployment health, once decided (see `deployment_health.rs`).
    #[serde(default)]
    pub deployment_health: Option<davit_api::deployment::DeploymentHealth>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// `<data_dir>/allocs`.
pub fn allocs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("allocs")
}

/// Writes the state of one allocation into `<alloc_dir>/state.json`.
pub fn save(alloc_dir: &Path, state: &PersistedAlloc) -> io::Result<()> {
    std::fs::create_dir_all(alloc_dir)?;
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    write_atomic(&alloc_dir.join(STATE_FILE), &bytes)
}

pub fn load(alloc_dir: &Path) -> Result<PersistedAlloc, StateError> {
    let path = alloc_dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| StateError::Read { path: path.clone(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source })
}

/// Every allocation directory under `<data_dir>/allocs` that holds a state file, with its loaded state.
pub fn load_all(data_dir: &Path) -> Vec<(PathBuf, Result<PersistedAlloc, StateError>)> {
    let Ok(entries) = std::fs::read_dir(allocs_dir(data_dir)) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(|entry| entry.ok()).map(|entry| entry.path()).filter(|path| path.join(STATE_FILE).is_file()).collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let state = load(&dir);
            (dir, state)
        })
        .collect()
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|name| name.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{file_name}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Only the agent reads its state (node token, allocations' env): owner-only.
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        // Persists the rename; not every file system supports fsync on directories.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use davit_api::objects::{AllocatedResources, TaskEvent, TaskState, TaskStatus};

    use super::*;

    fn sample() -> PersistedAlloc {
        let alloc = Allocation {
            job_version: 1,
            node_name: "box".to_string(),
            resources: AllocatedResources::default(),
            create_time: 1,
            modify_time: 2,
            create_index: 3,
            modify_index: 4,
            ..davit_api::testing::alloc("alloc-1", "shop", "web", 0, "node")
        };
        let group: GroupSpec = serde_json::from_value(serde_json::json!({
            "name": "web",
            "restart": {"attempts": 1, "interval": "1m", "delay": "1s", "mode": "delay"},
            "tasks": [{"name": "app", "driver": "exec", "config": {"command": "/bin/sleep", "args": ["100"]}}],
        }))
        .unwrap();
        let task_state = TaskState {
            state: TaskStatus::Running,
            failed: false,
            restarts: 1,
            pid: Some(4242),
            started_at: Some(10),
            finished_at: None,
            events: vec![TaskEvent {
                time: 10,
                kind: "Started".to_string(),
                message: "pid 4242".to_string(),
                exit_code: None,
                signal: None,
                progress: None,
            }],
            checks: BTreeMap::new(),
        };
        let handle = TaskHandle {
            driver: "exec".to_string(),
            alloc_id: "alloc-1".to_string(),
            task_name: "app".to_string(),
            pid: 4242,
            started_at_ms: 10,
            driver_state: serde_json::json!({"executor_pid": 4241, "cgroup": "/sys/fs/cgroup/davit/alloc-1.app"}),
        };
        PersistedAlloc {
            alloc,
            job_type: Some(JobType::Service),
            group: Some(group),
            task_states: davit_api::objects::TaskStates::from([("app".to_string(), task_state)]),
            handles: BTreeMap::from([("app".to_string(), handle)]),
            restart_trackers: BTreeMap::from([("app".to_string(), RestartTracker { window_start_ms: 5, count: 1 })]),
            stop_requested: false,
            failure: None,
            migration_listen: BTreeMap::new(),
            migration_progress: None,
            deployment_health: None,
        }
    }

    #[test]
    fn round_trip() {
        let data_dir = tempfile::tempdir().unwrap();
        let alloc_dir = allocs_dir(data_dir.path()).join("alloc-1");
        let state = sample();
        save(&alloc_dir, &state).unwrap();
        assert_eq!(load(&alloc_dir).unwrap(), state);

        let mut changed = state.clone();
        changed.stop_requested = true;
        save(&alloc_dir, &changed).unwrap();
        // A directory without a state file and a corrupt file next to the good one.
        std::fs::create_dir_all(allocs_dir(data_dir.path()).join("empty")).unwrap();
        std::fs::create_dir_all(allocs_dir(data_dir.path()).join("broken")).unwrap();
        std::fs::write(allocs_dir(data_dir.path()).join("broken").join(STATE_FILE), "{not json").unwrap();

        let loaded = load_all(data_dir.path());
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].0, alloc_dir);
        assert_eq!(loaded[0].1.as_ref().unwrap(), &changed);
        assert!(matches!(&loaded[1].1, Err(StateError::Parse { .. })));
        let leftovers: Vec<_> = std::fs::read_dir(&alloc_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(STATE_FILE)]);
    }
}
