//! Scheduler workers: take an evaluation from the broker, run the pure scheduler on a snapshot,
//! submit the plan to the applier, retry what it refused on a fresh snapshot, and store the outcome
//! (complete, or complete plus a blocked evaluation for what could not be placed, plus a follow-up
//! evaluation with `wait_until` when a failed allocation is due for rescheduling later).

use std::sync::Arc;
use std::time::Duration;

use davit_api::objects::{EvalStatus, EvalTrigger, Evaluation};
use davit_scheduler::{ClusterState, ScheduleResult, SchedulerConfig};
use davit_store::{Store, StoreError, Txn};
use futures_util::FutureExt;

use crate::applier::Applier;
use crate::broker::Broker;
use crate::keys;
use crate::metrics::Metrics;
use crate::view::View;
use crate::{new_id, now_millis};

/// How often a worker re-plans the part of a plan the applier refused before giving up (blocked eval).
const MAX_PLAN_ATTEMPTS: u32 = 5;
/// How long the follow-up of an evaluation whose plan was refused on every attempt waits before it runs.
const FOLLOW_UP_DELAY_MS: u64 = 500;

/// How long the scheduler may take on one evaluation before the worker gives up on it (the evaluation fails;
/// the computation ends on its own on the blocking pool).
pub const SCHEDULE_DEADLINE: Duration = Duration::from_secs(120);

/// The scheduler's entry point ([`davit_scheduler::schedule`]; tests put in one that panics).
pub type ScheduleFn = fn(&ClusterState, &Evaluation, &SchedulerConfig, u64, u64) -> ScheduleResult;

pub struct Worker {
    pub store: Arc<dyn Store>,
    pub view: Arc<View>,
    pub broker: Arc<Broker>,
    pub applier: Applier,
    pub config: SchedulerConfig,
    pub metrics: Arc<Metrics>,
    pub schedule: ScheduleFn,
}

/// Why an evaluation could not be processed.
#[derive(Debug, thiserror::Error)]
enum ProcessError {
    /// Worth retrying: the evaluation goes back to the broker after a backoff.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Never worth retrying (it would fail the same way): the evaluation fails with the reason.
    #[error("{0}")]
    Poison(String),
}

impl Worker {
    pub async fn run(self: Arc<Self>) {
        loop {
            let eval = self.broker.dequeue().await;
            // A panic while processing (outside the scheduler too) fails this evaluation, not the worker.
            let outcome = std::panic::AssertUnwindSafe(self.process(&eval)).catch_unwind().await;
            let outcome = outcome.unwrap_or_else(|panic| {
                Err(ProcessError::Poison(format!("processing panicked: {}", crate::supervise::panic_message(panic))))
            });
            match outcome {
                Ok(status) => {
                    self.metrics.eval_processed(Ok(status));
                    self.broker.ack(&eval);
                }
                Err(ProcessError::Store(error)) => match self.broker.nack(&eval) {
                    // The evaluation stays pending in the store; it runs again after a backoff.
                    Some(delay) => {
                        tracing::warn!(eval = %eval.id, job = %eval.job_name, %error, retry_in_ms = delay.as_millis() as u64, "evaluation failed; retrying");
                        self.metrics.eval_processed(Err(()));
                    }
                    None => {
                        let reason = format!("gave up after {} failed attempts; the last: {error}", crate::broker::MAX_NACKS);
                        tracing::error!(eval = %eval.id, job = %eval.job_name, %reason, "evaluation failed for good");
                        let status = self.fail(&eval, &reason).await;
                        if status.is_err() {
                            // The store still fails: the evaluation is still pending there; keep trying it.
                            self.retry_later(&eval);
                        }
                        self.metrics.eval_processed(status.map_err(|_| ()));
                    }
                },
                Err(ProcessError::Poison(reason)) => {
                    tracing::error!(eval = %eval.id, job = %eval.job_name, %reason, "evaluation failed for good");
                    match self.fail(&eval, &reason).await {
                        Ok(status) => {
                            self.metrics.eval_processed(Ok(status));
                            self.broker.ack(&eval);
                        }
                        // Not recorded: it is still pending in the store; try again later.
                        Err(_) => {
                            self.metrics.eval_processed(Err(()));
                            if self.broker.nack(&eval).is_none() {
                                self.retry_later(&eval);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Queues an evaluation the broker released but the store still has pending again, after the longest backoff:
    /// a store outage (a full disk) must not leave a job unevaluated until the next restart.
    fn retry_later(&self, eval: &Evaluation) {
        tracing::warn!(eval = %eval.id, job = %eval.job_name, "the store still fails; the evaluation is tried again in 10 s");
        let mut retry = eval.clone();
        retry.wait_until = Some(now_millis() + 10_000);
        self.broker.enqueue(Arc::new(retry));
    }

    /// Stores `eval` as failed with `reason` (visible in `job status` and `eval status`).
    async fn fail(&self, eval: &Evaluation, reason: &str) -> Result<EvalStatus, StoreError> {
        let mut failed = eval.clone();
        failed.status = EvalStatus::Failed;
        failed.status_description = reason.to_string();
        failed.modify_time = now_millis();
        let response = self.store.txn(Txn { success: vec![keys::put(keys::eval(&failed.id), &failed)], ..Default::default() }).await?;
        self.view.wait_for(response.revision).await;
        Ok(EvalStatus::Failed)
    }

    async fn process(&self, eval: &Evaluation) -> Result<EvalStatus, ProcessError> {
        let mut failed_groups = Default::default();
        let mut description = String::new();
        let mut status = EvalStatus::Complete;
        let mut wait_until = None;
        let mut snapshot_index = 0;
        // Nodes the applier refused on the last attempt (none once a plan went through whole).
        let mut still_refused = 0;
        for attempt in 1..=MAX_PLAN_ATTEMPTS {
            let snapshot = self.view.snapshot();
            snapshot_index = snapshot.revision;
            let seed = seed_for(&eval.id, attempt);
            // The scheduler is CPU-bound (a large job on a large cluster takes a while): keep it off the
            // runtime's threads so the API and heartbeats stay responsive.
            let (config, scheduled_eval, schedule) = (self.config.clone(), eval.clone(), self.schedule);
            let cluster = snapshot.cluster.clone();
            let scheduling = tokio::task::spawn_blocking(move || schedule(&cluster, &scheduled_eval, &config, seed, now_millis()));
            let result = match tokio::time::timeout(SCHEDULE_DEADLINE, scheduling).await {
                Ok(Ok(result)) => result,
                Ok(Err(error)) if error.is_panic() => {
                    let message = crate::supervise::panic_message(error.into_panic());
                    return Err(ProcessError::Poison(format!("the scheduler panicked: {message}")));
                }
                Ok(Err(_cancelled)) => return Err(ProcessError::Poison("the scheduler was cancelled".to_string())),
                Err(_elapsed) => {
                    return Err(ProcessError::Poison(format!("the scheduler took longer than {}s", SCHEDULE_DEADLINE.as_secs())));
                }
            };
            failed_groups = result.plan.failed_groups.clone();
            description = result.status_description.clone();
            status = result.status;
            wait_until = result.wait_until();
            if result.plan.node_allocations.is_empty() && result.plan.node_updates.is_empty() {
                still_refused = 0;
                break;
            }
            let outcome = self.applier.submit_plan(result.plan).await?;
            self.view.wait_for(outcome.index).await;
            still_refused = outcome.refused_nodes.len();
            if outcome.refused_nodes.is_empty() {
                break;
            }
            tracing::debug!(eval = %eval.id, refused = ?outcome.refused_nodes, attempt, "plan partly refused; re-planning");
        }

        let now = now_millis();
        let mut done = eval.clone();
        done.status = status;
        done.status_description = description;
        done.modify_time = now;
        done.failed_groups = failed_groups;
        let mut txn = Txn::default();
        if still_refused > 0 {
            // Other plans kept taking the nodes this one chose: what was refused is not placed, so a fresh
            // evaluation of the job goes on from the newest state (never report it complete).
            let follow_up = Evaluation {
                id: new_id(),
                status: EvalStatus::Pending,
                status_description: format!("follow-up of evaluation {}, whose plan was refused {MAX_PLAN_ATTEMPTS} times", eval.id),
                previous_eval: Some(eval.id.clone()),
                blocked_eval: None,
                // A short pause, so a node that keeps refusing cannot make evaluations spin.
                wait_until: Some(now + FOLLOW_UP_DELAY_MS),
                failed_groups: Default::default(),
                create_time: now,
                modify_time: now,
                create_index: 0,
                modify_index: 0,
                ..eval.clone()
            };
            done.status = EvalStatus::Failed;
            done.status_description = format!(
                "{}; the applier refused {still_refused} node(s) of the plan on all {MAX_PLAN_ATTEMPTS} attempts: follow-up evaluation {}",
                done.status_description, follow_up.id
            );
            txn.success.push(keys::put(keys::eval(&follow_up.id), &follow_up));
        }
        if !done.failed_groups.is_empty() {
            let blocked = Evaluation {
                id: new_id(),
                status: EvalStatus::Blocked,
                triggered_by: EvalTrigger::QueuedAllocs,
                status_description: format!("waiting for capacity: {}", summarize(&done)),
                previous_eval: Some(eval.id.clone()),
                blocked_eval: None,
                snapshot_index,
                create_time: now,
                modify_time: now,
                create_index: 0,
                modify_index: 0,
                ..done.clone()
            };
            done.blocked_eval = Some(blocked.id.clone());
            if let Some(superseded) = self.broker.blocked_for(&eval.job_name) {
                let mut canceled = (*superseded).clone();
                canceled.status = EvalStatus::Canceled;
                canceled.status_description = format!("superseded by blocked evaluation {}", blocked.id);
                canceled.modify_time = now;
                txn.success.push(keys::put(keys::eval(&canceled.id), &canceled));
            }
            txn.success.push(keys::put(keys::eval(&blocked.id), &blocked));
        }
        // Everything placed: a blocked evaluation of the job from before is stale (`job status` would still
        // report it, and a capacity change would run it for nothing).
        let stale = match done.failed_groups.is_empty() && still_refused == 0 {
            true => self.broker.blocked_for(&eval.job_name).filter(|blocked| blocked.id != eval.id),
            false => None,
        };
        if let Some(stale) = &stale {
            let mut canceled = (**stale).clone();
            canceled.status = EvalStatus::Canceled;
            canceled.status_description = format!("evaluation {} placed everything", eval.id);
            canceled.modify_time = now;
            txn.success.push(keys::put(keys::eval(&canceled.id), &canceled));
        }
        if let Some(wait_until) = wait_until {
            // Skip it when a pending evaluation of the job already waits until then (re-runs of the job
            // while a reschedule is delayed would otherwise each add one).
            let snapshot = self.view.snapshot();
            let already = snapshot.evals_for_job(&eval.job_name).iter().any(|other| {
                other.id != eval.id && other.status == EvalStatus::Pending && other.wait_until.is_some_and(|at| at <= wait_until)
            });
            if !already {
                let follow_up = Evaluation {
                    id: new_id(),
                    status: EvalStatus::Pending,
                    triggered_by: EvalTrigger::AllocFailure,
                    status_description: format!("reschedule of a failed allocation, due at {wait_until}"),
                    previous_eval: Some(eval.id.clone()),
                    blocked_eval: None,
                    wait_until: Some(wait_until),
                    failed_groups: Default::default(),
                    node_id: None,
                    create_time: now,
                    modify_time: now,
                    create_index: 0,
                    modify_index: 0,
                    ..done.clone()
                };
                txn.success.push(keys::put(keys::eval(&follow_up.id), &follow_up));
            }
        }
        txn.success.push(keys::put(keys::eval(&done.id), &done));
        let response = self.store.txn(txn).await?;
        if let Some(stale) = stale {
            self.broker.unblock(&eval.job_name, &stale.id);
        }
        self.view.wait_for(response.revision).await;
        Ok(done.status)
    }
}

fn summarize(eval: &Evaluation) -> String {
    eval.failed_groups
        .iter()
        .map(|(group, failure)| format!("{group}: {} missing ({})", failure.missing, failure.summary()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A seed derived from the evaluation (FNV-1a), so a re-run of the same evaluation plans the same way.
pub(crate) fn seed_for(eval_id: &str, attempt: u32) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in eval_id.bytes().chain(attempt.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use davit_api::objects::EvalTrigger;
    use davit_api::spec::JobType;
    use davit_store::RedbStore;

    use super::*;
    use crate::liveness::new_eval;

    /// The real scheduler, except for job `poison`.
    fn panics_on_poison(state: &ClusterState, eval: &Evaluation, config: &SchedulerConfig, seed: u64, now: u64) -> ScheduleResult {
        assert!(eval.job_name != "poison", "poisoned job");
        davit_scheduler::schedule(state, eval, config, seed, now)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scheduler_panic_fails_that_evaluation_and_the_worker_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap());
        let (events, _ignored) = tokio::sync::mpsc::unbounded_channel();
        let view = View::start(Arc::clone(&store), events).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let broker = Arc::new(Broker::default());
        let applier = Applier::start(Arc::clone(&store), Arc::clone(&view), Arc::clone(&metrics));
        let worker = Arc::new(Worker {
            store: Arc::clone(&store),
            view: Arc::clone(&view),
            broker: Arc::clone(&broker),
            applier,
            config: SchedulerConfig::default(),
            metrics,
            schedule: panics_on_poison,
        });
        tokio::spawn(Arc::clone(&worker).run());

        let poison = new_eval("poison", JobType::Service, 50, EvalTrigger::JobRegister, None);
        let next = new_eval("next", JobType::Service, 50, EvalTrigger::JobRegister, None);
        let puts = [&poison, &next].map(|eval| keys::put(keys::eval(&eval.id), eval)).to_vec();
        store.txn(Txn { success: puts, ..Default::default() }).await.unwrap();
        broker.enqueue(Arc::new(poison.clone()));
        broker.enqueue(Arc::new(next.clone()));

        let stored = |id: String| {
            let store = Arc::clone(&store);
            async move {
                let value = store.get(&keys::eval(&id)).await.unwrap().unwrap();
                serde_json::from_slice::<Evaluation>(&value.value).unwrap()
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (poison, next) = (stored(poison.id.clone()).await, stored(next.id.clone()).await);
            if poison.status == EvalStatus::Failed && next.status == EvalStatus::Complete {
                assert!(poison.status_description.contains("the scheduler panicked: poisoned job"), "{}", poison.status_description);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "poison: {:?}, next: {:?}", poison.status, next.status);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
