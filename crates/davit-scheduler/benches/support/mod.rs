//! What the criterion benchmarks of the scheduler and of the plan applier share (the applier's bench
//! includes this file with `#[path]`): benchmark nodes, jobs, evaluations and configurations.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use davit_api::objects::{EvalTrigger, Evaluation, Job, Node, NodeResources};
use davit_scheduler::SchedulerConfig;

pub fn node(position: usize) -> Node {
    let name = format!("node-{position:05}");
    let zone = ["a", "b", "c"][position % 3];
    let base = davit_api::testing::node(&format!("{name}-id"));
    Node {
        name: name.clone(),
        attributes: BTreeMap::from([
            ("cpu.arch".to_string(), "x86_64".to_string()),
            ("zone".to_string(), zone.to_string()),
            ("unique.hostname".to_string(), name),
        ]),
        resources: NodeResources { cpu: 4000, memory: 8192, port_range: (20000, 32000), reserved_ports: Vec::new() },
        drivers: BTreeMap::from([("exec".to_string(), base.drivers["exec"].clone())]),
        http_addr: String::new(),
        create_index: 1,
        modify_index: 1,
        ..base
    }
}

pub fn job(name: &str, count: usize) -> Arc<Job> {
    let text = format!(
        "name: {name}\ngroups:\n  - name: work\n    count: {count}\n    tasks:\n      - name: main\n        driver: exec\n        config: {{command: /bin/true}}\n        resources: {{cpu: 20, memory: 32}}\n"
    );
    let spec = davit_api::spec::parse_job_spec(&text, "bench.yaml").expect("valid bench job");
    Arc::new(Job { create_index: 2, modify_index: 2, ..Job::new(spec, 0, 0) })
}

/// The default configuration with this candidate limit (written so that fields added later keep their defaults).
#[allow(clippy::field_reassign_with_default)]
pub fn scheduler_config(candidate_limit: Option<NonZeroUsize>) -> SchedulerConfig {
    let mut config = SchedulerConfig::default();
    config.candidate_limit = candidate_limit;
    config
}

pub fn eval(job: &str) -> Evaluation {
    Evaluation::pending(format!("eval-{job}"), job, davit_api::spec::JobType::Service, 50, EvalTrigger::JobRegister, 0)
}
