//! End to end: a service job whose task always fails is rescheduled per its `reschedule` policy
//! (exponential delay, 2 attempts), then left failed. Real `davit dev`, real exec tasks.

mod util;

use std::time::Duration;

use davit_api::objects::{Allocation, ClientStatus, DesiredStatus};
use util::{Dev, require_root, runtime, wait_job};

const SPEC: &str = r#"
name: phoenix
groups:
  - name: g
    restart: {attempts: 0, mode: fail}
    reschedule: {attempts: 2, interval: 1h, delay: 200ms, delay_function: exponential, max_delay: 1s}
    tasks:
      - name: t
        driver: exec
        config: {command: /bin/sh, args: ["-c", "echo failing; exit 1"]}
        resources: {cpu: 50, memory: 16}
"#;

#[test]
fn failed_allocations_are_rescheduled_until_attempts_run_out() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let spec = dev.write("phoenix.yaml", SPEC);
    dev.ok(&["job", "run", "--detach", &spec]);

    // The original and two replacements, all failed.
    let status = wait_job(&dev.addr, "phoenix", Duration::from_secs(60), |s| {
        s.allocations.len() == 3 && s.allocations.iter().all(|a| a.client_status == ClientStatus::Failed)
    });
    let runtime = runtime();
    let client = dev.client();
    let mut allocs: Vec<Allocation> = status.allocations.iter().map(|a| runtime.block_on(client.allocation(&a.id)).unwrap()).collect();
    allocs.sort_by_key(|a| a.create_time);
    assert_eq!(allocs[0].previous_allocation, None);
    assert!(allocs[0].reschedule_tracker.is_empty());
    for (generation, delay_ms) in [(1, 200), (2, 400)] {
        let (previous, alloc) = (&allocs[generation - 1], &allocs[generation]);
        assert_eq!(alloc.previous_allocation.as_deref(), Some(previous.id.as_str()), "{alloc:#?}");
        assert_eq!(alloc.reschedule_tracker.len(), generation);
        let event = alloc.reschedule_tracker.last().unwrap();
        assert_eq!((event.prev_alloc_id.as_str(), event.delay_ms), (previous.id.as_str(), delay_ms));
        assert_eq!((previous.desired_status, previous.desired_description.as_str()), (DesiredStatus::Stop, "rescheduled"));
    }
    assert_eq!(allocs[2].desired_status, DesiredStatus::Run, "the last failure is not rescheduled");

    // No more: once the job is quiet (a blocking query times out unchanged), there are still 3.
    let mut index = 0;
    let mut looks = 0;
    let settled = loop {
        looks += 1;
        assert!(looks < 30, "the job never settled");
        let answer = runtime.block_on(client.job_status_blocking("phoenix", index, Duration::from_secs(3))).unwrap();
        if answer.index == index {
            break answer.value;
        }
        index = answer.index;
    };
    assert_eq!(settled.allocations.len(), 3, "{:#?}", settled.allocations);
}
