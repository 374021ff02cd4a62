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

    /// A model of the broker's queues (ready by priority then arrival, waiting per job, delayed after a nack)
    /// driven with the real one through random enqueues, duplicate announcements, dequeues, acks and nacks:
    /// at most one evaluation per job in flight, the highest priority first, nothing lost or delivered twice.
    #[tokio::test(start_paused = true)]
    async fn matches_a_model_under_random_operations() {
        use futures_util::FutureExt;
        use rand::{Rng, SeedableRng};

        #[derive(Default)]
        struct Model {
            /// (eval, arrival) ready to run.
            ready: Vec<(Arc<Evaluation>, u64)>,
            waiting: BTreeMap<String, VecDeque<Arc<Evaluation>>>,
            delayed: Vec<Arc<Evaluation>>,
            in_flight: BTreeMap<String, Arc<Evaluation>>,
            arrivals: u64,
        }
        impl Model {
            fn known(&self, id: &str) -> bool {
                self.ready.iter().any(|(eval, _)| eval.id == id)
                    || self.waiting.values().flatten().any(|eval| eval.id == id)
                    || self.delayed.iter().any(|eval| eval.id == id)
                    || self.in_flight.values().any(|eval| eval.id == id)
            }
            fn push_ready(&mut self, eval: Arc<Evaluation>) {
                self.arrivals += 1;
                self.ready.push((eval, self.arrivals));
            }
            fn enqueue(&mut self, eval: Arc<Evaluation>) {
                if self.known(&eval.id) {
                    return;
                }
                if self.in_flight.contains_key(&eval.job_name) {
                    self.waiting.entry(eval.job_name.clone()).or_default().push_back(eval);
                } else {
                    self.push_ready(eval);
                }
            }
            fn release(&mut self, job: &str) {
                self.in_flight.remove(job);
                if let Some(next) = self.waiting.get_mut(job).and_then(VecDeque::pop_front) {
                    self.push_ready(next);
                }
            }
        }

        for seed in 0..20u64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let broker = Broker::default();
            let mut model = Model::default();
            let mut delivered = 0usize;
            let mut created = 0usize;
            for step in 0..400 {
                let context = format!("seed {seed} step {step}");
                match rng.random_range(0..10) {
                    0..=3 => {
                        created += 1;
                        let job = ["a", "b", "c", "d"][rng.random_range(0..4)];
                        let new = eval(&format!("e{created}"), job, [10, 50, 90][rng.random_range(0..3)]);
                        broker.enqueue(Arc::clone(&new));
                        model.enqueue(new);
                    }
                    4 if created > 0 => {
                        // An evaluation announced again (the view re-announces pending ones).
                        let again = format!("e{}", rng.random_range(1..=created));
                        let known = model
                            .ready
                            .iter()
                            .map(|(eval, _)| eval)
                            .chain(model.waiting.values().flatten())
                            .chain(model.in_flight.values())
                            .find(|eval| eval.id == again)
                            .cloned();
                        if let Some(eval) = known {
                            broker.enqueue(Arc::clone(&eval));
                            model.enqueue(eval);
                        }
                    }
                    5..=7 => {
                        let got = broker.dequeue().now_or_never();
                        let Some(got) = got else {
                            let runnable = model.ready.iter().any(|(eval, _)| !model.in_flight.contains_key(&eval.job_name));
                            assert!(!runnable, "{context}: nothing dequeued though {:?} is ready", model.ready);
                            // The broker looked at every ready evaluation and moved each behind its job's in-flight one.
                            model.ready.sort_by_key(|(eval, arrival)| (std::cmp::Reverse(eval.priority), *arrival));
                            for (eval, _) in std::mem::take(&mut model.ready) {
                                model.waiting.entry(eval.job_name.clone()).or_default().push_back(eval);
                            }
                            continue;
                        };
                        delivered += 1;
                        assert!(
                            !model.in_flight.contains_key(&got.job_name),
                            "{context}: two evaluations of job {} in flight",
                            got.job_name
                        );
                        // Time stands still here, so nothing delayed is due: the broker takes the ready evaluations
                        // by priority, then arrival, moving those of a job in flight behind that job's waiting ones.
                        model.ready.sort_by_key(|(eval, arrival)| (std::cmp::Reverse(eval.priority), *arrival));
                        loop {
                            assert!(!model.ready.is_empty(), "{context}: {} was not ready", got.id);
                            let (next, _) = model.ready.remove(0);
                            if model.in_flight.contains_key(&next.job_name) {
                                model.waiting.entry(next.job_name.clone()).or_default().push_back(next);
                                continue;
                            }
                            assert_eq!(next.id, got.id, "{context}: the first of the highest priority comes out");
                            break;
                        }
                        model.in_flight.insert(got.job_name.clone(), got);
                    }
                    8 if !model.in_flight.is_empty() => {
                        let job = model.in_flight.keys().next().cloned().unwrap();
                        let eval = Arc::clone(&model.in_flight[&job]);
                        broker.ack(&eval);
                        model.release(&job);
                    }
                    9 if !model.in_flight.is_empty() => {
                        let job = model.in_flight.keys().next().cloned().unwrap();
                        let eval = Arc::clone(&model.in_flight[&job]);
                        if broker.nack(&eval).is_some() {
                            model.release(&job);
                            model.delayed.push(eval);
                        } else {
                            model.release(&job);
                        }
                    }
                    _ => {}
                }
            }
            // Drain: ack everything; every evaluation still known comes out exactly once, delayed ones when due.
            loop {
                for (job, eval) in std::mem::take(&mut model.in_flight) {
                    broker.ack(&eval);
                    model.release(&job);
                }
                let left = model.ready.len() + model.waiting.values().map(VecDeque::len).sum::<usize>() + model.delayed.len();
                if left == 0 {
                    break;
                }
                let got = tokio::time::timeout(std::time::Duration::from_secs(60), broker.dequeue())
                    .await
                    .unwrap_or_else(|_| panic!("seed {seed}: {left} evaluations never came out"));
                let was_ready = model.ready.iter().position(|(eval, _)| eval.id == got.id);
                let was_delayed = model.delayed.iter().position(|eval| eval.id == got.id);
                match (was_ready, was_delayed) {
                    (Some(position), _) => drop(model.ready.remove(position)),
                    (None, Some(position)) => drop(model.delayed.remove(position)),
                    (None, None) => panic!("seed {seed}: {} delivered twice or never queued", got.id),
                }
                model.in_flight.insert(got.job_name.clone(), got);
            }
            assert!(
                tokio::time::timeout(std::time::Duration::from_secs(60), broker.dequeue()).await.is_err(),
                "seed {seed}: an extra delivery"
            );
            assert!(delivered > 50, "seed {seed}: only {delivered} deliveries exercised");
        }
    }
}
