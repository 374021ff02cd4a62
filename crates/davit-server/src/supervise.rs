//! The server's supervised loops (see `davit_supervise`): restarts are counted in `/metrics`
//! (`davit_loop_restarts_total{loop}`).

use std::future::Future;
use std::sync::Arc;

pub use davit_supervise::panic_message;

use crate::metrics::Metrics;

/// The supervised loops, as `/metrics` names them.
pub const LOOPS: [&str; 7] = ["coordinator", "applier", "liveness", "drainer", "deployments", "gc", "worker"];

/// Runs `make()`'s future as a task, again after each panic. `name` is one of [`LOOPS`].
pub async fn supervise<F, Fut>(name: &'static str, metrics: Arc<Metrics>, make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    davit_supervise::supervise(name, move || metrics.loop_restarted(name), make).await;
}
