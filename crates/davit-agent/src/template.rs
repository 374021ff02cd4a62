//! Task templates (`templates:` in the spec, see `davit_api::template`): rendered before the task starts
//! and again whenever what they read changes.
//!
//! The agent asks the servers for exactly what an allocation's templates read
//! (`GET /v1/node/{id}/allocation/{alloc}/template-data`, a blocking query), renders each template, and
//! writes it inside the task directory: owner-only (0400, given to the task's user), through a temporary
//! file and a rename, never through a symbolic link. `env: true` templates also set the task's environment.
//! A change re-renders; a template with `change_mode: restart` whose text changed restarts the task (as a
//! failing check does), `signal` sends the task `change_signal` (event `Signaling`), `noop` only rewrites
//! the file. Rendered text is never logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use davit_api::spec::TaskSpec;
use davit_api::template::{ChangeMode, Template, TemplateData, env_lines};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::alloc_shared::AllocShared;

/// How a restart a template asks for starts its reason (the task runner restarts those at once, without
/// counting them against the restart policy).
pub(crate) const TEMPLATE_RESTART: &str = "template ";

/// What a render produced: each template's text, the environment of `env: true` ones, and the store index
/// the data had.
pub(crate) struct Rendered {
    pub texts: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub index: u64,
}

/// Fetches what the task's templates read, renders them and writes the files. `Err` says why, for the task's
/// events (a missing variable, an unreachable server, a file that could not be written).
pub(crate) async fn prepare(shared: &AllocShared, task: &TaskSpec, task_dir: &Path) -> Result<Rendered, String> {
    let (node, alloc) = (shared.context.node.id.clone(), shared.alloc_id());
    let data = shared
        .context
        .servers
        .call(|client| {
            let (node, alloc) = (node.clone(), alloc.clone());
            async move { client.template_data(&node, &alloc, 0, Duration::ZERO).await }
        })
        .await
        .and_then(|answer| shared.context.same_cluster(answer))
        .map_err(|error| format!("fetching what the templates read: {error}"))?;
    let texts = render(task, &data.value)?;
    let owner = owner_of(task).map_err(|error| format!("the owner of the templates: {error}"))?;
    for (template, text) in task.templates.iter().zip(&texts) {
        write_file(task_dir, &template.destination, text, owner)
            .map_err(|error| format!("writing template {}: {error}", template.destination))?;
    }
    let env = env_of(task, &texts)?;
    Ok(Rendered { texts, env, index: data.index })
}

fn render(task: &TaskSpec, data: &TemplateData) -> Result<Vec<String>, String> {
    task.templates
        .iter()
        .map(|template| {
            let parsed =
                Template::parse(&template.data).map_err(|error| format!("template {}: {}", template.destination, error.message))?;
            parsed.render(data).map_err(|error| format!("template {}: {error}", template.destination))
        })
        .collect()
}

fn env_of(task: &TaskSpec, texts: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (template, text) in task.templates.iter().zip(texts).filter(|(template, _)| template.env) {
        env.extend(env_lines(text).map_err(|error| format!("template {} (env: true): {error}", template.destination))?);
    }
    Ok(env)
}

/// Writes `text` to `destination` inside `task_dir`, against a task that may race it: every directory is
/// opened relative to the one before it without following a symbolic link (`openat` with `O_NOFOLLOW`),
/// missing ones are made root-owned 0711 (the task's user can reach its file, nobody can list them), the file
/// is created fresh (0400), handed to `owner` through its descriptor (`fchown`), and renamed into place
/// within the same directory. Nothing is ever opened, chowned or written through a path a task could swap.
fn write_file(task_dir: &Path, destination: &str, text: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let c = |name: &str| CString::new(name).map_err(std::io::Error::other);
    let open_dir = |at: libc::c_int, name: &CString| -> std::io::Result<OwnedFd> {
        // SAFETY: openat with a valid directory descriptor and a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::openat(at, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor this function owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let root = c(&task_dir.to_string_lossy())?;
    let mut dir = open_dir(libc::AT_FDCWD, &root)?;
    let mut parts: Vec<&str> = destination.split('/').collect();
    let file_name = parts
        .pop()
        .filter(|name| !name.is_empty() && *name != "." && *name != "..")
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    for part in parts {
        if part.is_empty() || part == "." || part == ".." {
            return Err(std::io::Error::other(format!("`{destination}` leaves the task directory")));
        }
        let name = c(part)?;
        // SAFETY: mkdirat relative to an open directory; EEXIST is fine (opened, without following, below).
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o711) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(error);
            }
        }
        dir = open_dir(dir.as_raw_fd(), &name)
            .map_err(|error| std::io::Error::new(error.kind(), format!("{part} in {}: {error} (a symbolic link?)", task_dir.display())))?;
    }
    let tmp = c(&format!(".{file_name}.davit-tmp"))?;
    // SAFETY: unlinkat of a name in an open directory (never follows: it removes the entry itself).
    unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
    // SAFETY: a new file, exclusively, never through a link; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o400,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fresh descriptor from above.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(text.as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    file.sync_all()?;
    let target = c(file_name)?;
    // SAFETY: renameat within one open directory; it replaces the entry (a link there is replaced, not followed).
    if unsafe { libc::renameat(dir.as_raw_fd(), tmp.as_ptr(), dir.as_raw_fd(), target.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Who owns a task's rendered files: a numeric `user:` (`uid` or `uid:gid`) for any driver; a user name is
/// looked up on the host for exec tasks only (a container resolves names inside its image: its files stay
/// root's, give it a numeric `user:` to hand them over). An exec task without `user:` runs as
/// [`davit_drivers::EXEC_DEFAULT_USER`]. `None`: root keeps them.
pub(crate) fn owner_of(task: &TaskSpec) -> std::io::Result<Option<(u32, u32)>> {
    let user = match (task.user.as_deref(), task.driver) {
        (Some(user), _) => user,
        (None, davit_api::spec::DriverName::Exec) => davit_drivers::EXEC_DEFAULT_USER,
        (None, _) => return Ok(None),
    };
    let numeric = |text: &str| text.parse::<u32>().ok();
    if let Some((uid, gid)) = user.split_once(':').and_then(|(u, g)| Some((numeric(u)?, numeric(g)?))) {
        return Ok(Some((uid, gid)));
    }
    if let Some(uid) = numeric(user) {
        return Ok(Some((uid, uid)));
    }
    if task.driver != davit_api::spec::DriverName::Exec {
        return Ok(None);
    }
    let name = std::ffi::CString::new(user).map_err(std::io::Error::other)?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to static storage or null; the
    // fields are copied out at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(std::io::Error::other(format!("no user {user}")));
    }
    // SAFETY: non-null, as checked above.
    Ok(Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) }))
}

/// Follows what the task's templates read while it runs; see the module docs. Ends (and stops following)
/// when dropped.
pub(crate) struct TemplateWatch(Option<JoinHandle<()>>);

impl Drop for TemplateWatch {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The running task, to signal it (`change_mode: signal`).
pub(crate) struct Running {
    pub driver: Arc<dyn davit_drivers::Driver>,
    pub handle: davit_drivers::TaskHandle,
}

pub(crate) fn watch(
    shared: Arc<AllocShared>,
    task: TaskSpec,
    task_dir: PathBuf,
    rendered: Option<Rendered>,
    running: Running,
    restart: mpsc::Sender<String>,
) -> TemplateWatch {
    let Some(mut rendered) = rendered.filter(|_| !task.templates.is_empty()) else { return TemplateWatch(None) };
    TemplateWatch(Some(tokio::spawn(async move {
        let (node, alloc) = (shared.context.node.id.clone(), shared.alloc_id());
        let mut backoff = Duration::from_millis(250);
        loop {
            let index = rendered.index;
            let answer = shared
                .context
                .servers
                .call(|client| {
                    let (node, alloc) = (node.clone(), alloc.clone());
                    async move { client.template_data(&node, &alloc, index, Duration::from_secs(60)).await }
                })
                .await
                .and_then(|answer| shared.context.same_cluster(answer));
            let data = match answer {
                Ok(data) => data,
                Err(error) => {
                    tracing::debug!(%error, "following the templates' data failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            rendered.index = data.index;
            let Ok(texts) = render(&task, &data.value) else { continue }; // A variable went away: keep the files.
            let owner = owner_of(&task).ok().flatten();
            let mut restart_for = None;
            for (position, (template, new)) in task.templates.iter().zip(texts).enumerate() {
                if rendered.texts[position] == new {
                    continue;
                }
                if let Err(error) = write_file(&task_dir, &template.destination, &new, owner) {
                    // Not recorded as rendered: the next change (or the next start) writes it again.
                    tracing::warn!(template = %template.destination, %error, "cannot rewrite a template");
                    continue;
                }
                rendered.texts[position] = new;
                tracing::info!(alloc_id = %alloc, task = %task.name, template = %template.destination, "template re-rendered");
                match (template.change_mode, &template.change_signal) {
                    (ChangeMode::Restart, _) if restart_for.is_none() => restart_for = Some(template.destination.clone()),
                    (ChangeMode::Signal, Some(signal)) => {
                        let message = match running.driver.signal(&running.handle, signal).await {
                            Ok(()) => format!("template {} changed: sent {signal}", template.destination),
                            Err(error) => format!("template {} changed: sending {signal} failed: {error}", template.destination),
                        };
                        shared.update_task(&task.name, Some(crate::alloc_shared::event("Signaling", &message)), |_| {});
                        shared.commit().await;
                    }
                    _ => {}
                }
            }
            if let Some(destination) = restart_for {
                let _ = restart.send(format!("{TEMPLATE_RESTART}{destination} changed")).await;
                return;
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_owner_only_and_never_written_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "secrets/db.env", "DB=x\n", None).unwrap();
        let path = dir.path().join("secrets/db.env");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "DB=x\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::metadata(dir.path().join("secrets")).unwrap().permissions().mode() & 0o777, 0o711);
        write_file(dir.path(), "secrets/db.env", "DB=y\n", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "DB=y\n", "rewritten in place of the read-only file");

        // A task plants a link to somewhere else: nothing is written there.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        assert!(write_file(dir.path(), "escape/x.env", "X=1\n", None).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        // A link planted as the file itself is replaced, not written through.
        let target = outside.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("secrets/link.env")).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let owner = root.then_some((65534, 65534));
        write_file(dir.path(), "secrets/link.env", "L=1\n", owner).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        use std::os::unix::fs::MetadataExt;
        let written = std::fs::symlink_metadata(dir.path().join("secrets/link.env")).unwrap();
        assert!(written.is_file(), "the new file replaced the link");
        if root {
            assert_eq!(written.uid(), 65534, "given to its owner through its descriptor");
            assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0, "the link's target keeps its owner");
        }
    }
}
