//! Supervision of long-running loops (the server's coordinator, applier, liveness, drainer, gc and workers; the
//! agent's heartbeat, watcher, fence, services and certificate loops): a loop that panics is logged, counted
//! by the caller's `on_restart` (both export it in `/metrics`) and started again after a backoff (100 ms,
//! doubling up to 10 s; back to 100 ms once a run lasted a minute). A loop that returns has finished its work
//! and is not restarted.
//!
//! This crate must never swallow what is not a panic: a loop that returns or is cancelled (shutdown) ends its
//! supervisor.

use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Aborts the task when dropped: aborting the supervisor aborts what it supervises.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()`'s future as a task, again after each panic (calling `on_restart` each time). `name` names the
/// loop in the log.
pub async fn supervise<F, Fut>(name: &'static str, on_restart: impl Fn(), make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let mut task = AbortOnDrop(tokio::spawn(make()));
        match (&mut task.0).await {
            Ok(()) => return,
            Err(error) if error.is_panic() => {
                let message = panic_message(error.into_panic());
                tracing::error!(r#loop = name, panic = %message, restart_in_ms = backoff.as_millis() as u64, "a loop panicked; restarting it");
            }
            // Cancelled: the process is shutting down.
            Err(_) => return,
        }
        on_restart();
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "a panic without a message".to_string(), |text| text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_panics_is_restarted_and_counted_and_one_that_returns_is_not() {
        let restarts = AtomicU32::new(0);
        let runs = Arc::new(AtomicU32::new(0));
        let make = || {
            let runs = Arc::clone(&runs);
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        };
        supervise("drainer", || _ = restarts.fetch_add(1, Ordering::SeqCst), make).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two panics, then a run that finished");
        assert_eq!(restarts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn panic_messages_of_both_payload_kinds() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(3)), "a panic without a message");
    }
}
