//! Keeping the node's allocations in line with the server: re-attach from local state at start, then
//! long-poll the node's allocations and reconcile (start new ones, stop, update in place, destroy the
//! ones the server forgot).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use davit_api::objects::{Allocation, DesiredStatus};
use tokio::sync::watch;

use crate::AgentContext;
use crate::alloc_runner::AllocRunner;
use crate::heartbeat::sleep_or_shutdown;
use davit_api::error_chain;

/// How long one long-poll waits on the server.
const POLL_WAIT: Duration = Duration::from_secs(30);

/// Starts a runner for every allocation in the local state (re-attaching to its tasks).
pub fn restore(context: &Arc<AgentContext>) {
    for (dir, loaded) in crate::state::load_all(&context.data_dir) {
        match loaded {
            Ok(state) => {
                let id = state.alloc.id.clone();
                if context.alloc_dir(&id) != dir {
                    tracing::warn!(dir = %dir.display(), alloc_id = %id, "state file is in the wrong directory; ignoring it");
                    continue;
                }
                tracing::info!(alloc_id = %id, "restoring allocation from local state");
                let runner = AllocRunner::restore(context.clone(), state);
                context.runners.lock().expect("runners lock").insert(id, runner);
            }
            Err(error) => tracing::error!(error = %error_chain(&error), "cannot restore an allocation; leaving its directory alone"),
        }
    }
}

/// Long-polls the node's allocations until shutdown. Waits for the first registration.
pub async fn run(context: Arc<AgentContext>, mut registered: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
    tokio::select! {
        _ = registered.wait_for(|registered| *registered) => {}
        _ = shutdown.changed() => return,
    }
    let node_id = context.node.id.clone();
    let mut index = 0;
    let mut backoff = Duration::from_millis(250);
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            result = context.servers.call(|client| { let node_id = node_id.clone(); async move { client.node_allocations(&node_id, index, POLL_WAIT).await } }) => result,
            _ = shutdown.changed() => return,
        };
        // A server of another cluster does not know this node's work: its list is not followed.
        let result = result.and_then(|answer| context.same_cluster(answer));
        match result {
            Ok(answer) => {
                if failures > 0 {
                    tracing::info!("allocation watch reaches the server again");
                }
                failures = 0;
                backoff = Duration::from_millis(250);
                let unchanged = answer.index == index;
                // A lower index means a different store (server reset): start over.
                index = if answer.index < index { 0 } else { answer.index };
                reconcile(&context, &answer.value);
                if unchanged && started.elapsed() < Duration::from_secs(1) && sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await
                {
                    // The server answered at once without progress (no blocking support?): do not spin.
                    return;
                }
            }
            Err(error) => {
                if failures.is_multiple_of(20) {
                    tracing::warn!(%error, "watching allocations failed; retrying");
                }
                failures += 1;
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Brings the runners in line with the server's list of this node's allocations.
pub fn reconcile(context: &Arc<AgentContext>, allocs: &[Allocation]) {
    let mut runners = context.runners.lock().expect("runners lock");
    let listed: HashSet<&str> = allocs.iter().map(|alloc| alloc.id.as_str()).collect();
    for alloc in allocs {
        if alloc.node_id != context.node.id {
            tracing::warn!(alloc_id = %alloc.id, node_id = %alloc.node_id, "the server listed an allocation of another node; ignoring it");
            continue;
        }
        match runners.get(&alloc.id) {
            Some(runner) => runner.update(alloc),
            None => {
                let startable = alloc.desired_status == DesiredStatus::Run && !alloc.client_status.is_terminal();
                if !startable || context.destroyed.lock().expect("destroyed lock").contains(&alloc.id) {
                    continue;
                }
                tracing::info!(alloc_id = %alloc.id, name = %alloc.name, "starting allocation");
                runners.insert(alloc.id.clone(), AllocRunner::start_new(context.clone(), alloc.clone()));
            }
        }
    }
    let forgotten: Vec<String> = runners.keys().filter(|id| !listed.contains(id.as_str())).cloned().collect();
    for id in forgotten {
        let Some(runner) = runners.remove(&id) else { continue };
        context.destroyed.lock().expect("destroyed lock").insert(id.clone());
        tracing::info!(alloc_id = %id, "the server no longer lists the allocation; destroying it");
        let context = context.clone();
        tokio::spawn(async move {
            runner.destroy().await;
            context.updater.forget(&id);
        });
    }
    drop(runners);
    context.local_services_changed();
}
