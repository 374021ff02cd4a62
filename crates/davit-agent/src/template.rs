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

use crate::alloc_runner::AllocShared;

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
        .map_err(|error| format!("fetching what the templates read: {error}"))?;
    let texts = render(task, &data.value)?;
    for (template, text) in task.templates.iter().zip(&texts) {
        write_file(task_dir, &template.destination, text, task.user.as_deref())
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

/// Writes `text` to `destination` inside `task_dir`: directories made owner-only, no symbolic link
/// followed (a task may plant one in its own directory), the file 0400 and given to `user`.
fn write_file(task_dir: &Path, destination: &str, text: &str, user: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = task_dir.join(destination);
    let parent = path.parent().unwrap_or(task_dir).to_path_buf();
    let mut dir = task_dir.to_path_buf();
    for part in parent.strip_prefix(task_dir).map_err(std::io::Error::other)?.components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(std::io::Error::other(format!("{} is a symbolic link", dir.display())));
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new().mode(0o700).create(&dir)?,
            Err(error) => return Err(error),
        }
    }
    let owner = user.map(uid_gid).transpose()?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&parent, Some(uid), Some(gid))?;
    }
    let tmp = parent.join(format!(".{}.davit-tmp", path.file_name().and_then(|name| name.to_str()).unwrap_or("template")));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
    }
    std::fs::rename(&tmp, &path)
}

/// The uid and gid of a user name.
fn uid_gid(user: &str) -> std::io::Result<(u32, u32)> {
    let name = std::ffi::CString::new(user).map_err(std::io::Error::other)?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to static storage or null; the
    // fields are copied out at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(std::io::Error::other(format!("no user {user}")));
    }
    // SAFETY: non-null, as checked above.
    Ok(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
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
                .await;
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
            let mut restart_for = None;
            for ((template, old), new) in task.templates.iter().zip(&rendered.texts).zip(&texts) {
                if old == new {
                    continue;
                }
                if let Err(error) = write_file(&task_dir, &template.destination, new, task.user.as_deref()) {
                    tracing::warn!(template = %template.destination, %error, "cannot rewrite a template");
                    continue;
                }
                tracing::info!(alloc_id = %alloc, task = %task.name, template = %template.destination, "template re-rendered");
                match (template.change_mode, &template.change_signal) {
                    (ChangeMode::Restart, _) if restart_for.is_none() => restart_for = Some(template.destination.clone()),
                    (ChangeMode::Signal, Some(signal)) => {
                        let message = match running.driver.signal(&running.handle, signal).await {
                            Ok(()) => format!("template {} changed: sent {signal}", template.destination),
                            Err(error) => format!("template {} changed: sending {signal} failed: {error}", template.destination),
                        };
                        shared.update_task(&task.name, Some(crate::alloc_runner::event("Signaling", &message)), |_| {});
                        shared.commit().await;
                    }
                    _ => {}
                }
            }
            rendered.texts = texts;
            if let Some(destination) = restart_for {
                let _ = restart.send(format!("template {destination} changed")).await;
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
        assert_eq!(std::fs::metadata(dir.path().join("secrets")).unwrap().permissions().mode() & 0o777, 0o700);
        write_file(dir.path(), "secrets/db.env", "DB=y\n", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "DB=y\n", "rewritten in place of the read-only file");

        // A task plants a link to somewhere else: nothing is written there.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        assert!(write_file(dir.path(), "escape/x.env", "X=1\n", None).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
