//! Fencing (`disconnect.stop_after` of a group): an agent that cannot reach any server for that long stops the
//! group's allocations, so that a partition does not leave them running beside the replacements the servers
//! place on reachable nodes. Contact is a server acknowledging the node: a registration or a heartbeat
//! (`ServerPool::acknowledged`, `ServerPool::silent_for`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::AgentContext;
use crate::heartbeat::sleep_or_shutdown;

/// How often the agent compares its silence with the groups' `stop_after`.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub(crate) async fn run(context: Arc<AgentContext>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if sleep_or_shutdown(CHECK_EVERY, &mut shutdown).await {
            return;
        }
        let silent = context.servers.silent_for();
        let runners: Vec<_> = context.runners.lock().expect("runners lock").values().cloned().collect();
        for runner in runners {
            if let Some(stop_after) = runner.stop_after()
                && silent >= stop_after
                && runner.fence(silent, stop_after)
            {
                tracing::warn!(alloc_id = %runner.id(), silent_s = silent.as_secs(), "no server reachable: stopping the allocation (disconnect.stop_after)");
            }
        }
    }
}
