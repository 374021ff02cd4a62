//! The agent's long-running loops run under `davit_supervise`: a loop that panics starts again after a backoff,
//! counted in the agent's `/metrics` as `davit_agent_loop_restarts_total{loop}`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::JoinHandle;

/// The supervised loops, as `/metrics` names them.
pub(crate) const LOOPS: [&str; 6] = ["heartbeat", "watcher", "fence", "services", "certificate", "status"];

/// Restarts per loop, in the order of [`LOOPS`].
#[derive(Default)]
pub(crate) struct LoopRestarts([AtomicU64; LOOPS.len()]);

impl LoopRestarts {
    fn restarted(&self, name: &str) {
        if let Some(index) = LOOPS.iter().position(|known| *known == name) {
            self.0[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP davit_agent_loop_restarts_total Restarts of an agent loop after it panicked.\n");
        out.push_str("# TYPE davit_agent_loop_restarts_total counter\n");
        for (name, count) in LOOPS.iter().zip(&self.0) {
            let _ = writeln!(out, "davit_agent_loop_restarts_total{{loop=\"{name}\"}} {}", count.load(Ordering::Relaxed));
        }
    }
}

/// Spawns `make()`'s future as loop `name` (one of [`LOOPS`]), started again after each panic.
pub(crate) fn spawn<F, Fut>(restarts: &Arc<LoopRestarts>, name: &'static str, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let restarts = Arc::clone(restarts);
    tokio::spawn(davit_supervise::supervise(name, move || restarts.restarted(name), make))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_loop_is_counted_under_its_name() {
        let restarts = Arc::new(LoopRestarts::default());
        let runs = Arc::new(AtomicU64::new(0));
        let make = {
            let runs = Arc::clone(&runs);
            move || {
                let runs = Arc::clone(&runs);
                async move {
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("boom");
                    }
                }
            }
        };
        spawn(&restarts, "fence", make).await.unwrap();
        let mut text = String::new();
        restarts.render(&mut text);
        assert!(text.contains("davit_agent_loop_restarts_total{loop=\"fence\"} 1\n"), "{text}");
        assert!(text.contains("davit_agent_loop_restarts_total{loop=\"heartbeat\"} 0\n"), "{text}");
    }
}
