//! An allocation's directory on the node: `<data-dir>/allocs/<id>` with `alloc/data` shared by its tasks,
//! `<task>/local` for each task, and the tasks' logs in `.logs`, out of every task's reach (isolated exec
//! tasks write only their task directory and `alloc/data`, containers see `alloc/` as `/alloc`), so a task
//! cannot plant a link there that the executor would write through or the agent read through. Both steps
//! are idempotent; `remove` is safe without `create`.

use std::io;
use std::path::{Path, PathBuf};

/// Where the allocation's task logs go (`<task>.stdout.N`, `<task>.stderr.N`).
pub(crate) fn logs(alloc_dir: &Path) -> PathBuf {
    alloc_dir.join(".logs")
}

/// Creates the allocation's directories (again, after an agent restart).
pub(crate) fn create(alloc_dir: &Path, tasks: &[String]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(logs(alloc_dir))?;
    // Tasks see the host read-only, not other allocations' logs: only the agent reads them.
    std::fs::set_permissions(logs(alloc_dir), std::fs::Permissions::from_mode(0o700))?;
    std::fs::create_dir_all(alloc_dir.join("alloc").join("data"))?;
    for task in tasks {
        std::fs::create_dir_all(alloc_dir.join(task).join("local"))?;
    }
    Ok(())
}

/// Removes the allocation's directory and everything in it.
pub(crate) fn remove(alloc_dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(alloc_dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_remove_are_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let alloc_dir = root.path().join("allocs").join("a1");
        remove(&alloc_dir).unwrap();
        let tasks = vec!["web".to_string(), "sidecar".to_string()];
        create(&alloc_dir, &tasks).unwrap();
        create(&alloc_dir, &tasks).unwrap();
        for dir in [".logs", "alloc/data", "web/local", "sidecar/local"] {
            assert!(alloc_dir.join(dir).is_dir(), "{dir}");
        }
        remove(&alloc_dir).unwrap();
        assert!(!alloc_dir.exists());
    }
}
