//! The evaluation broker: a priority queue of pending evaluations with at most one evaluation per job
//! in flight, plus the set of blocked evaluations waiting for capacity, plus a delay queue: an
//! evaluation whose `wait_until` is in the future (a delayed reschedule) is held until then, and only
//! then queued like any other (still one per job in flight). `dequeue` is the timer: it sleeps until
//! the earliest delayed evaluation is due or something is queued.
//!
//! Delivery is at-least-once: evaluations live in the store as `pending` until a worker writes their
//! outcome, and the view re-announces every pending evaluation when the server starts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use davit_api::objects::Evaluation;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::now_millis;

#[derive(Default)]
struct Inner {
    /// Ready to run, keyed by (priority descending, arrival) so higher priority goes first, FIFO within one.
    ready: BTreeMap<(std::cmp::Reverse<u8>, u64), Arc<Evaluation>>,
    /// Evaluations waiting because their job already has one in flight.
    waiting: HashMap<String, VecDeque<Arc<Evaluation>>>,
    in_flight_jobs: HashSet<String>,
    /// Every evaluation id queued, waiting or in flight (to ignore duplicates announced twice).
    known: HashSet<String>,
    /// Evaluations held until their `wait_until`, keyed by (due, arrival).
    delayed: BTreeMap<(Instant, u64), Arc<Evaluation>>,
    /// The newest blocked evaluation per job.
    blocked: HashMap<String, Arc<Evaluation>>,
    /// Failed attempts per evaluation id (see [`Broker::nack`]).
    failures: HashMap<String, u32>,
    arrivals: u64,
}

/// Failed attempts after which an evaluation is given up on.
pub const MAX_NACKS: u32 = 10;

/// The longest a failed evaluation waits before it runs again.
const NACK_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
pub struct Broker {
    inner: Mutex<Inner>,
    ready: Notify,
}

impl Broker {
    pub fn enqueue(&self, eval: Arc<Evaluation>) {
        let mut inner = self.inner.lock().expect("broker lock");
        if !inner.known.insert(eval.id.clone()) {
            return;
        }
        if inner.blocked.get(&eval.job_name).is_some_and(|blocked| blocked.id == eval.id) {
            inner.blocked.remove(&eval.job_name);
        }
        let wait_ms = eval.wait_until.map_or(0, |wait_until| wait_until.saturating_sub(now_millis()));
        if wait_ms > 0 {
            inner.arrivals += 1;
            let key = (Instant::now() + std::time::Duration::from_millis(wait_ms), inner.arrivals);
            inner.delayed.insert(key, eval);
            drop(inner);
            // A dequeuer may sleep until a later deadline: wake one to recompute it.
            self.ready.notify_one();
            return;
        }
        if inner.in_flight_jobs.contains(&eval.job_name) {
            inner.waiting.entry(eval.job_name.clone()).or_default().push_back(eval);
        } else {
            push_ready(&mut inner, eval);
            drop(inner);
            self.ready.notify_one();
        }
    }

    /// The next evaluation to schedule; its job counts as in flight until [`Broker::ack`].
    pub async fn dequeue(&self) -> Arc<Evaluation> {
        loop {
            let notified = self.ready.notified();
            let next_due;
            {
                let mut inner = self.inner.lock().expect("broker lock");
                promote_due(&mut inner, Instant::now());
                while let Some((_, eval)) = inner.ready.pop_first() {
                    if inner.in_flight_jobs.contains(&eval.job_name) {
                        // Queued before its job's other evaluation started: wait for that one's ack.
                        inner.waiting.entry(eval.job_name.clone()).or_default().push_back(eval);
                        continue;
                    }
                    inner.in_flight_jobs.insert(eval.job_name.clone());
                    if !inner.ready.is_empty() {
                        self.ready.notify_one();
                    }
                    return eval;
                }
                next_due = inner.delayed.keys().next().map(|(due, _)| *due);
            }
            match next_due {
                Some(due) => drop(tokio::time::timeout_at(due, notified).await),
                None => notified.await,
            }
        }
    }

    /// Processing `eval` failed for a reason worth retrying: it is queued again after a backoff that doubles
    /// with each failure of it (100 ms up to 10 s), which this returns; `None` after [`MAX_NACKS`] failures
    /// (the evaluation is released: the caller fails it for good).
    pub fn nack(&self, eval: &Arc<Evaluation>) -> Option<std::time::Duration> {
        let failures = {
            let mut inner = self.inner.lock().expect("broker lock");
            let failures = inner.failures.entry(eval.id.clone()).or_default();
            *failures = failures.saturating_add(1);
            *failures
        };
        if failures >= MAX_NACKS {
            self.ack(eval);
            return None;
        }
        let delay = std::time::Duration::from_millis(100u64.saturating_mul(1 << failures.min(7).saturating_sub(1))).min(NACK_MAX_DELAY);
        self.release(eval);
        let mut retry = (**eval).clone();
        retry.wait_until = Some(now_millis() + delay.as_millis() as u64);
        self.enqueue(Arc::new(retry));
        Some(delay)
    }

    /// The evaluation is done (its outcome is stored): release its job.
    pub fn ack(&self, eval: &Evaluation) {
        self.inner.lock().expect("broker lock").failures.remove(&eval.id);
        self.release(eval);
    }

    fn release(&self, eval: &Evaluation) {
        let mut inner = self.inner.lock().expect("broker lock");
        inner.known.remove(&eval.id);
        inner.in_flight_jobs.remove(&eval.job_name);
        let next = inner.waiting.get_mut(&eval.job_name).and_then(VecDeque::pop_front);
        if inner.waiting.get(&eval.job_name).is_some_and(VecDeque::is_empty) {
            inner.waiting.remove(&eval.job_name);
        }
        if let Some(next) = next {
            push_ready(&mut inner, next);
            drop(inner);
            self.ready.notify_one();
        }
    }

    /// Remembers a blocked evaluation; returns the job's previous blocked evaluation, now superseded.
    pub fn block(&self, eval: Arc<Evaluation>) -> Option<Arc<Evaluation>> {
        let mut inner = self.inner.lock().expect("broker lock");
        match inner.blocked.get(&eval.job_name) {
            Some(existing) if existing.create_index > eval.create_index => Some(eval),
            Some(existing) if existing.id == eval.id => None,
            _ => inner.blocked.insert(eval.job_name.clone(), eval),
        }
    }

    /// The job's current blocked evaluation, if any.
    pub fn blocked_for(&self, job: &str) -> Option<Arc<Evaluation>> {
        self.inner.lock().expect("broker lock").blocked.get(job).cloned()
    }

    /// Forgets the job's blocked evaluation `eval_id` (a later evaluation placed everything).
    pub fn unblock(&self, job: &str, eval_id: &str) {
        let mut inner = self.inner.lock().expect("broker lock");
        if inner.blocked.get(job).is_some_and(|blocked| blocked.id == eval_id) {
            inner.blocked.remove(job);
        }
    }

    /// Takes every blocked evaluation (capacity changed: they should run again).
    pub fn take_blocked(&self) -> Vec<Arc<Evaluation>> {
        let mut inner = self.inner.lock().expect("broker lock");
        inner.blocked.drain().map(|(_, eval)| eval).collect()
    }
}

/// Moves delayed evaluations that are due to the ready queue (or behind their job's in-flight one).
fn promote_due(inner: &mut Inner, now: Instant) {
    while let Some(entry) = inner.delayed.first_entry() {
        if entry.key().0 > now {
            break;
        }
        let eval = entry.remove();
        if inner.in_flight_jobs.contains(&eval.job_name) {
            inner.waiting.entry(eval.job_name.clone()).or_default().push_back(eval);
        } else {
            push_ready(inner, eval);
        }
    }
}

fn push_ready(inner: &mut Inner, eval: Arc<Evaluation>) {
    inner.arrivals += 1;
    let key = (std::cmp::Reverse(eval.priority), inner.arrivals);
    inner.ready.insert(key, eval);
}

#[cfg(test)]
mod tests {
    use super::*;
    use davit_api::objects::EvalTrigger;
    use davit_api::spec::JobType;

    fn eval(id: &str, job: &str, priority: u8) -> Arc<Evaluation> {
        Arc::new(Evaluation::pending(id.into(), job, JobType::Service, priority, EvalTrigger::JobRegister, 0))
    }

    #[tokio::test]
    async fn one_eval_per_job_in_flight_and_priority_order() {
        let broker = Broker::default();
        broker.enqueue(eval("a1", "a", 50));
        broker.enqueue(eval("a2", "a", 50));
        broker.enqueue(eval("b1", "b", 90));
        broker.enqueue(eval("b1", "b", 90)); // duplicate announcement is ignored
        let first = broker.dequeue().await;
        assert_eq!(first.id, "b1");
        let second = broker.dequeue().await;
        assert_eq!(second.id, "a1");
        // a2 waits for a1 to be acked.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), broker.dequeue()).await.is_err());
        broker.ack(&second);
        assert_eq!(broker.dequeue().await.id, "a2");
        broker.ack(&first);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_evals_wait_until_due_and_keep_one_per_job() {
        let broker = Broker::default();
        let wait_until = now_millis() + 10_000;
        let mut delayed = (*eval("a-later", "a", 50)).clone();
        delayed.wait_until = Some(wait_until);
        broker.enqueue(Arc::new(delayed.clone()));
        broker.enqueue(Arc::new(delayed)); // duplicate announcement is ignored
        let mut past = (*eval("b-past", "b", 50)).clone();
        past.wait_until = Some(1);
        broker.enqueue(Arc::new(past));
        let start = Instant::now();
        // Not yet due: only the past-due evaluation comes out.
        assert_eq!(broker.dequeue().await.id, "b-past");
        assert!(tokio::time::timeout(std::time::Duration::from_secs(9), broker.dequeue()).await.is_err());
        // Job `a` gets another evaluation in flight meanwhile: the delayed one waits for its ack.
        broker.enqueue(eval("a-now", "a", 50));
        let now = broker.dequeue().await;
        assert_eq!(now.id, "a-now");
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), broker.dequeue()).await.is_err());
        assert!(start.elapsed() >= std::time::Duration::from_secs(10), "due by now");
        broker.ack(&now);
        let due = broker.dequeue().await;
        assert_eq!(due.id, "a-later");
        assert!(start.elapsed() >= std::time::Duration::from_secs(10));
        assert!(start.elapsed() < std::time::Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_nacked_eval_comes_back_after_a_backoff_that_doubles() {
        let broker = Broker::default();
        broker.enqueue(eval("a1", "a", 50));
        let first = broker.dequeue().await;
        let start = Instant::now();
        assert_eq!(broker.nack(&first), Some(std::time::Duration::from_millis(100)));
        let again = broker.dequeue().await;
        assert_eq!(again.id, "a1");
        assert!(start.elapsed() >= std::time::Duration::from_millis(90), "{:?}", start.elapsed());
        assert_eq!(broker.nack(&again), Some(std::time::Duration::from_millis(200)));
        let third = broker.dequeue().await;
        broker.ack(&third);
        broker.enqueue(eval("a1", "a", 50));
        assert_eq!(broker.nack(&broker.dequeue().await), Some(std::time::Duration::from_millis(100)), "an ack forgets the failures");
        let mut last = broker.dequeue().await;
        for _ in 2..MAX_NACKS {
            assert!(broker.nack(&last).is_some());
            last = broker.dequeue().await;
        }
        assert_eq!(broker.nack(&last), None, "given up after {MAX_NACKS} failures");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleeping_dequeue_wakes_for_a_delayed_eval() {
        let broker = Arc::new(Broker::default());
        let waiter = tokio::spawn({
            let broker = Arc::clone(&broker);
            async move { broker.dequeue().await }
        });
        tokio::task::yield_now().await;
        let start = Instant::now();
        let mut delayed = (*eval("a-later", "a", 50)).clone();
        delayed.wait_until = Some(now_millis() + 3_000);
        broker.enqueue(Arc::new(delayed));
        let got = waiter.await.expect("dequeue task");
        assert_eq!(got.id, "a-later");
        let waited = start.elapsed();
        assert!(waited >= std::time::Duration::from_millis(2_900) && waited < std::time::Duration::from_secs(4), "{waited:?}");
    }

    #[test]
    fn newer_blocked_eval_supersedes_older() {
        let broker = Broker::default();
        let mut old = (*eval("old", "a", 50)).clone();
        old.create_index = 1;
        let mut new = (*eval("new", "a", 50)).clone();
        new.create_index = 2;
        assert!(broker.block(Arc::new(old)).is_none());
        assert_eq!(broker.block(Arc::new(new)).map(|e| e.id.clone()), Some("old".into()));
        assert_eq!(broker.take_blocked().len(), 1);
    }
}
