//! Scheduler workers: take an evaluation from the broker, run the pure scheduler on a snapshot,
//! submit the plan to the applier, retry what it refused on a fresh snapshot, and store the outcome
//! (complete, or complete plus a blocked evaluation for what could not be placed, plus a follow-up
//! evaluation with `wait_until` when a failed allocation is due for rescheduling later).

use std::sync::Arc;

use davit_api::objects::{EvalStatus, EvalTrigger, Evaluation};
use davit_scheduler::{SchedulerConfig, schedule};
use davit_store::{Store, Txn};

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

pub struct Worker {
    pub store: Arc<dyn Store>,
    pub view: Arc<View>,
    pub broker: Arc<Broker>,
    pub applier: Applier,
    pub config: SchedulerConfig,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    pub async fn run(self) {
        loop {
            let eval = self.broker.dequeue().await;
            match self.process(&eval).await {
                Ok(status) => self.metrics.eval_processed(Ok(status)),
                Err(error) => {
                    // The eval stays pending in the store and is retried after a restart; here, try again soon.
                    tracing::error!(eval = %eval.id, job = %eval.job_name, %error, "evaluation failed");
                    self.metrics.eval_processed(Err(()));
                }
            }
            self.broker.ack(&eval);
        }
    }

    async fn process(&self, eval: &Evaluation) -> Result<EvalStatus, davit_store::StoreError> {
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
            let (config, scheduled_eval) = (self.config.clone(), eval.clone());
            let cluster = snapshot.cluster.clone();
            let result = tokio::task::spawn_blocking(move || schedule(&cluster, &scheduled_eval, &config, seed, now_millis()))
                .await
                .expect("the scheduler does not panic");
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
