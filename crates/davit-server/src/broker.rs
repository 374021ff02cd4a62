//! The evaluation broker: a priority queue of pending evaluations with at most one evaluation per job
//! in flight, plus the set of blocked evaluations waiting for capacity.
//!
//! Delivery is at-least-once: evaluations live in the store as `pending` until a worker writes their
//! outcome, and the view re-announces every pending evaluation when the server starts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use davit_api::objects::Evaluation;
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    /// Ready to run, keyed by (priority descending, arrival) so higher priority goes first, FIFO within one.
    ready: BTreeMap<(std::cmp::Reverse<u8>, u64), Arc<Evaluation>>,
    /// Evaluations waiting because their job already has one in flight.
    waiting: HashMap<String, VecDeque<Arc<Evaluation>>>,
    in_flight_jobs: HashSet<String>,
    /// Every evaluation id queued, waiting or in flight (to ignore duplicates announced twice).
    known: HashSet<String>,
    /// The newest blocked evaluation per job.
    blocked: HashMap<String, Arc<Evaluation>>,
    arrivals: u64,
}

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
            {
                let mut inner = self.inner.lock().expect("broker lock");
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
            }
            notified.await;
        }
    }

    /// The evaluation is done (its outcome is stored): release its job.
    pub fn ack(&self, eval: &Evaluation) {
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

    /// Takes every blocked evaluation (capacity changed: they should run again).
    pub fn take_blocked(&self) -> Vec<Arc<Evaluation>> {
        let mut inner = self.inner.lock().expect("broker lock");
        inner.blocked.drain().map(|(_, eval)| eval).collect()
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
    use davit_api::objects::{EvalStatus, EvalTrigger};
    use davit_api::spec::JobType;

    fn eval(id: &str, job: &str, priority: u8) -> Arc<Evaluation> {
        Arc::new(Evaluation {
            id: id.into(),
            job_name: job.into(),
            job_type: JobType::Service,
            priority,
            triggered_by: EvalTrigger::JobRegister,
            status: EvalStatus::Pending,
            status_description: String::new(),
            node_id: None,
            failed_groups: Default::default(),
            blocked_eval: None,
            previous_eval: None,
            create_time: 0,
            modify_time: 0,
            create_index: 0,
            modify_index: 0,
        })
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
