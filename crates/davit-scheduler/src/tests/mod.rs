//! Scheduler tests: a [`Harness`] with in-memory state, builders for nodes, jobs and allocations, and
//! scenario tests that arrange state → `harness.process(job)` → assert on the plan.

mod affinity;
mod deployment;
mod lifecycle;
mod placement;
mod preemption;
mod properties;
mod rebalance;
mod reschedule;
mod spread;
mod state;
mod system;

use std::collections::BTreeMap;
use std::sync::Arc;

use davit_api::Duration;
use davit_api::objects::{Allocation, DesiredStatus, EvalTrigger, Evaluation, Job, Node, UnixMillis};
use davit_api::spec::{
    Constraint, ConstraintOperator, DriverName, GroupSpec, JobSpec, JobType, NetworkSpec, PortSpec, Resources, RestartPolicy, TaskSpec,
};

use crate::{ClusterState, Plan, ScheduleResult, SchedulerConfig, schedule};

/// In-memory cluster plus a plan applier that trusts the plan (no fit re-check), so scenarios can run
/// several evaluations in a row.
pub(crate) struct Harness {
    pub(crate) state: ClusterState,
    pub(crate) config: SchedulerConfig,
    pub(crate) seed: u64,
    pub(crate) now: UnixMillis,
    evals: u32,
}

impl Harness {
    pub(crate) fn new() -> Harness {
        Harness {
            state: ClusterState::new(),
            config: SchedulerConfig { score_all_nodes: true, ..SchedulerConfig::default() },
            seed: 42,
            now: 1_000_000,
            evals: 0,
        }
    }

    pub(crate) fn add_node(&mut self, node: Node) {
        self.state.upsert_node(Arc::new(node));
    }

    /// Adds `node(prefix-1)` … `node(prefix-count)`.
    pub(crate) fn add_nodes(&mut self, prefix: &str, count: usize) {
        for number in 1..=count {
            self.add_node(node(&format!("{prefix}-{number}")));
        }
    }

    /// Stores `spec` as the job's next version (0 for a new job) and returns that version.
    pub(crate) fn register(&mut self, spec: JobSpec) -> u64 {
        let version = self.state.job(&spec.name).map_or(0, |job| job.version + 1);
        let job = Arc::new(Job::new(spec, version, self.now));
        self.state.upsert_job_version(Arc::clone(&job));
        self.state.upsert_job(job);
        version
    }

    pub(crate) fn stop_job(&mut self, name: &str) {
        let mut job = (**self.state.job(name).expect("job exists")).clone();
        job.stopped = true;
        self.state.upsert_job(Arc::new(job));
    }

    pub(crate) fn add_alloc(&mut self, alloc: Allocation) {
        self.state.upsert_alloc(Arc::new(alloc));
    }

    pub(crate) fn update_alloc(&mut self, id: &str, change: impl FnOnce(&mut Allocation)) {
        let mut alloc = (**self.state.alloc(id).expect("alloc exists")).clone();
        change(&mut alloc);
        self.add_alloc(alloc);
    }

    pub(crate) fn update_node(&mut self, id: &str, change: impl FnOnce(&mut Node)) {
        let mut node = (**self.state.node(id).expect("node exists")).clone();
        change(&mut node);
        self.add_node(node);
    }

    /// Runs the scheduler for a new evaluation of the job.
    pub(crate) fn process(&mut self, job_name: &str) -> ScheduleResult {
        let eval = self.next_eval(job_name);
        self.process_eval(&eval)
    }

    pub(crate) fn process_eval(&self, eval: &Evaluation) -> ScheduleResult {
        schedule(&self.state, eval, &self.config, self.seed, self.now)
    }

    /// A pending `job-register` evaluation of the job with a fresh id.
    pub(crate) fn next_eval(&mut self, job_name: &str) -> Evaluation {
        self.evals += 1;
        let job = self.state.job(job_name);
        let job_type = job.map_or(JobType::Service, |job| job.spec.job_type);
        Evaluation::pending(format!("eval-{}", self.evals), job_name, job_type, 50, EvalTrigger::JobRegister, self.now)
    }

    /// Commits the plan to the state, as the plan applier would.
    pub(crate) fn apply(&mut self, plan: &Plan) {
        for stop in plan.stops().chain(plan.preemptions()) {
            self.update_alloc(&stop.alloc_id, |alloc| {
                alloc.desired_status = DesiredStatus::Stop;
                alloc.desired_description = stop.description.clone();
                if let Some(status) = stop.client_status {
                    alloc.client_status = status;
                }
            });
        }
        for alloc in plan.allocations() {
            self.add_alloc(alloc.clone());
        }
        if let Some(deployment) = &plan.deployment {
            self.state.upsert_deployment(Arc::new((**deployment).clone()));
        }
        for (id, status, description) in &plan.deployment_updates {
            let mut ended = (**self.state.deployment(id).expect("a stored deployment")).clone();
            (ended.status, ended.status_description) = (*status, description.clone());
            self.state.upsert_deployment(Arc::new(ended));
        }
        self.now += 1000;
    }

    /// `process` then `apply`. Render the plan before applying it: `render` tells in-place updates from
    /// new allocations by looking them up in the state.
    pub(crate) fn run(&mut self, job_name: &str) -> ScheduleResult {
        let result = self.process(job_name);
        self.apply(&result.plan);
        result
    }

    /// Non-terminal allocations of the job, by index.
    pub(crate) fn live_allocs(&self, job_name: &str) -> Vec<Arc<Allocation>> {
        let mut allocs: Vec<_> = self.state.allocs_for_job(job_name).filter(|alloc| !alloc.is_terminal()).cloned().collect();
        allocs.sort_by_key(|alloc| (alloc.group.clone(), alloc.index));
        allocs
    }

    /// The plan, one line per change, for readable assertions:
    /// `place shop.web[0] on n-1`, `update shop.web[1] on n-2 in place`, `stop shop.web[3] on n-2: …`.
    pub(crate) fn render(&self, plan: &Plan) -> String {
        let mut lines = Vec::new();
        for alloc in plan.allocations() {
            match self.state.alloc(&alloc.id) {
                Some(old) => {
                    lines.push(format!("update {} on {} in place v{}->v{}", alloc.name, alloc.node_id, old.job_version, alloc.job_version))
                }
                None => {
                    let previous = match &alloc.previous_allocation {
                        Some(previous) => {
                            format!(" replacing {}", self.state.alloc(previous).map_or(previous.as_str(), |a| a.name.as_str()))
                        }
                        None => String::new(),
                    };
                    lines.push(format!("place {} v{} on {}{previous}", alloc.name, alloc.job_version, alloc.node_id));
                }
            }
        }
        for (node_id, stops) in &plan.node_updates {
            for stop in stops {
                let name = self.state.alloc(&stop.alloc_id).map_or(stop.alloc_id.as_str(), |alloc| alloc.name.as_str());
                let client = stop.client_status.map_or(String::new(), |status| format!(" ({status:?})"));
                lines.push(format!("stop {name} on {node_id}: {}{client}", stop.description));
            }
        }
        for (node_id, stops) in &plan.node_preemptions {
            for stop in stops {
                let name = self.state.alloc(&stop.alloc_id).map_or(stop.alloc_id.as_str(), |alloc| alloc.name.as_str());
                // The new allocation's id, by its name (ids are random).
                let mut description = stop.description.clone();
                for placed in plan.allocations() {
                    description = description.replace(&placed.id, &placed.name);
                }
                lines.push(format!("preempt {name} ({}) on {node_id}: {description}", stop.alloc_id));
            }
        }
        for (group, failure) in &plan.failed_groups {
            lines.push(format!(
                "failed {group}: {} missing, {} evaluated: {}",
                failure.missing,
                failure.nodes_evaluated,
                failure.summary()
            ));
        }
        lines.join("\n")
    }
}

pub(crate) use davit_api::testing::node;

/// A service job in dc1 with one group `web` of `count` allocations, one `exec` task of 500 millicores
/// and 256 MiB each.
pub(crate) fn job(name: &str, count: u32) -> JobSpec {
    JobSpec {
        name: name.to_string(),
        namespace: "default".to_string(),
        job_type: JobType::Service,
        priority: 50,
        datacenters: vec!["dc1".to_string()],
        constraints: Vec::new(),
        algorithm: None,
        update: None,
        groups: vec![group("web", count)],
        meta: BTreeMap::new(),
    }
}

pub(crate) fn group(name: &str, count: u32) -> GroupSpec {
    GroupSpec {
        name: name.to_string(),
        count,
        labels: BTreeMap::new(),
        constraints: Vec::new(),
        spread: Vec::new(),
        affinities: Vec::new(),
        alloc_affinities: Vec::new(),
        anti_affinities: Vec::new(),
        restart: RestartPolicy::default(),
        reschedule: None,
        disconnect: None,
        update: None,
        shutdown_delay: None,
        migrate: Default::default(),
        network: NetworkSpec::default(),
        services: Vec::new(),
        scaling: None,
        tasks: vec![task("app", DriverName::Exec, 500, 256)],
        meta: BTreeMap::new(),
    }
}

pub(crate) fn task(name: &str, driver: DriverName, cpu: u32, memory: u32) -> TaskSpec {
    TaskSpec {
        name: name.to_string(),
        driver,
        config: Default::default(),
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        user: None,
        resources: Resources { cpu, memory },
        kill_timeout: Duration::from_secs(5),
        kill_signal: "SIGTERM".to_string(),
        templates: Vec::new(),
        checks: Vec::new(),
        upstreams: Vec::new(),
        meta: BTreeMap::new(),
    }
}

pub(crate) fn constraint(attribute: &str, operator: ConstraintOperator, value: &str) -> Constraint {
    Constraint { attribute: attribute.to_string(), operator, value: value.to_string() }
}

pub(crate) fn port(name: &str, static_port: Option<u16>, to: Option<u16>) -> PortSpec {
    PortSpec { name: name.to_string(), to, static_port }
}

/// A running allocation of `job.group[index]` at `version` on `node_id`, sized like [`task`]'s default.
pub(crate) fn alloc(id: &str, job: &str, group: &str, index: u32, version: u64, node_id: &str) -> Allocation {
    Allocation { job_version: version, eval_id: "eval-0".to_string(), ..davit_api::testing::alloc(id, job, group, index, node_id) }
}
