//! Live migration end to end: a `davit server` and two `davit agent` processes on loopback, a TCG guest
//! that counts HTTP requests in memory, `davit alloc migrate` to the other node, `node drain` of a group
//! with `migrate: live` back, and `davit rebalance` onto the drained node once it is eligible again: the
//! guest keeps its uptime and its counter across the moves, the source allocations end complete with a
//! `Migrated` event carrying the downtime. Plus the refusals.

mod util;

use std::time::Duration;

use davit_api::objects::{Allocation, ClientStatus, DesiredStatus, MigrationRole, MigrationStatus};
use util::{Cluster, guest_dir, require_root, runtime, wait_alloc, wait_job, wait_ready_nodes};

/// Upper bound for a TCG boot or a migration on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(180);

fn vm_job(guest: &std::path::Path) -> String {
    format!(
        r#"name: mover
groups:
  - name: guest
    migrate: live
    network:
      ports: [{{name: http, to: 8080}}]
    tasks:
      - name: vm
        driver: vm
        config:
          accel: tcg
          kernel: {guest}/vmlinux
          initrd: {guest}/initramfs.cpio.gz
          cmdline: "console=ttyS0 tsc_early_khz=2600000 panic=-1"
        resources: {{cpu: 500, memory: 256}}
        checks:
          - {{name: http, type: http, port: http, path: /cgi-bin/health, interval: 1s, timeout: 500ms}}
"#,
        guest = guest.display()
    )
}

/// `GET path` on a forwarded port: the body (which must come with a 200).
fn http_body(port: u16, path: &str) -> String {
    util::http_body(port, path).unwrap_or_else(|| panic!("GET {path} on port {port} failed"))
}

fn http_port(alloc: &Allocation) -> u16 {
    alloc.resources.ports.iter().find(|port| port.label == "http").expect("an http port").value
}

/// The destination allocation of the migration of `source_id`, once the server lists it.
fn destination_of(addr: &str, source_id: &str) -> Allocation {
    // A source that was itself a migration's destination carries that migration until it migrates out.
    let source = wait_alloc(addr, source_id, PATIENCE, |alloc| alloc.migration.as_ref().is_some_and(|m| m.role == MigrationRole::Source));
    let peer = source.migration.expect("checked").peer_alloc_id;
    wait_alloc(addr, &peer, PATIENCE, |alloc| {
        alloc.client_status == ClientStatus::Running && alloc.migration.as_ref().is_some_and(|m| m.status == MigrationStatus::Complete)
    })
}

/// The source ends complete, asked to stop as migrated, with a `Migrated` event carrying the downtime.
fn assert_migrated_source(addr: &str, source_id: &str) -> Allocation {
    let source = wait_alloc(addr, source_id, PATIENCE, |alloc| alloc.client_status == ClientStatus::Complete);
    assert_eq!(source.desired_status, DesiredStatus::Stop, "{source:#?}");
    assert!(source.desired_description.starts_with("migrated to node"), "{source:#?}");
    let migration = source.migration.as_ref().expect("a migration");
    assert_eq!((migration.role, migration.status), (MigrationRole::Source, MigrationStatus::Complete), "{source:#?}");
    let event = source.task_states["vm"].events.iter().find(|event| event.kind == "Migrated").expect("a Migrated event");
    assert!(event.message.starts_with("downtime ") && event.message.contains(" MiB in "), "{event:?}");
    assert!(!source.task_states["vm"].failed, "{source:#?}");
    source
}

#[test]
fn alloc_migrate_live_drain_and_rebalance_keep_the_guest_running() {
    if !require_root() {
        return;
    }
    let Some(guest) = guest_dir() else { return };
    let cluster = Cluster::start();
    let _agents: Vec<util::Process> = ["one", "two"]
        .iter()
        .enumerate()
        .map(|(slot, name)| cluster.spawn_agent(&format!("agent-{name}"), &cluster.agent_args(name, slot as u16)))
        .collect();
    wait_ready_nodes(&cluster.addr, 2);
    let addr = cluster.addr.as_str();
    let spec = cluster.path().join("mover.yaml");
    std::fs::write(&spec, vm_job(&guest)).unwrap();
    util::ok(addr, cluster.path(), &["job", "run", &spec.display().to_string()]);
    let status = wait_job(addr, "mover", PATIENCE, |status| status.allocations.iter().any(|a| a.client_status == ClientStatus::Running));
    let first_id = status.allocations[0].id.clone();
    let first = wait_alloc(addr, &first_id, PATIENCE, |alloc| alloc.healthy == Some(true));
    let first_port = http_port(&first);
    for expected in 1..=3 {
        assert_eq!(http_body(first_port, "/cgi-bin/counter"), expected.to_string());
    }
    let uptime_before: f64 = http_body(first_port, "/cgi-bin/uptime").parse().unwrap();
    let other = if first.node_name == "one" { "two" } else { "one" };

    // Refusals: the same node, an unknown node.
    let same = util::davit(addr, cluster.path(), &["alloc", "migrate", &first_id, "--node", &first.node_name]);
    let same_err = String::from_utf8_lossy(&same.stderr);
    assert!(!same.status.success() && same_err.contains("already runs on node"), "{same_err}");
    let unknown = util::davit(addr, cluster.path(), &["alloc", "migrate", &first_id, "--node", "nowhere"]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("nowhere"), "{unknown:?}");

    // 1. `davit alloc migrate` to the other node waits and prints the downtime.
    let output = util::ok(addr, cluster.path(), &["alloc", "migrate", &first_id[..8], "--node", other]);
    println!("{output}");
    assert!(output.contains("downtime "), "{output}");
    let second = destination_of(addr, &first_id);
    assert_eq!(second.node_name, other);
    assert_eq!((second.name.as_str(), second.previous_allocation.as_deref()), (first.name.as_str(), Some(first_id.as_str())));
    let second_port = http_port(&second);
    assert_eq!(http_body(second_port, "/cgi-bin/counter"), "4", "the in-memory counter must survive the migration");
    let uptime_after: f64 = http_body(second_port, "/cgi-bin/uptime").parse().unwrap();
    assert!(uptime_after >= uptime_before, "the guest rebooted: uptime {uptime_before} then {uptime_after}");
    let source = assert_migrated_source(addr, &first_id);
    println!("first migration: {}", source.migration.as_ref().unwrap().description);
    util::ok(addr, cluster.path(), &["alloc", "logs", &second.id]);
    let status = util::ok(addr, cluster.path(), &["alloc", "status", &second.id]);
    assert!(status.contains("guest resumed after a live migration"), "{status}");
    // The scheduler leaves the moved allocation alone: one running allocation of the group.
    let job = wait_job(addr, "mover", PATIENCE, |status| {
        status.allocations.iter().filter(|a| a.desired_status == DesiredStatus::Run && !a.client_status.is_terminal()).count() == 1
    });
    assert!(job.allocations.iter().any(|a| a.id == second.id && a.desired_status == DesiredStatus::Run), "{job:#?}");

    // 2. Draining the node of a `migrate: live` group live-migrates the VM back.
    util::ok(addr, cluster.path(), &["node", "drain", other]);
    let third = destination_of(addr, &second.id);
    assert_eq!(third.node_name, first.node_name);
    assert_eq!(http_body(http_port(&third), "/cgi-bin/counter"), "5");
    assert_migrated_source(addr, &second.id);

    // 3. A task that is not a vm cannot be live-migrated: a 400 that says why. (A batch job, which
    // rebalancing leaves where it is, so that step 4 can only move the VM.)
    let exec_spec = cluster.path().join("sleeper.yaml");
    std::fs::write(
        &exec_spec,
        "name: sleeper\ntype: batch\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: /bin/sleep, args: ['1000']}\n        resources: {cpu: 1000, memory: 16}\n",
    )
    .unwrap();
    util::ok(addr, cluster.path(), &["job", "run", &exec_spec.display().to_string()]);
    let sleeper = wait_job(addr, "sleeper", PATIENCE, |status| status.allocations.iter().any(|a| a.client_status == ClientStatus::Running));
    let refused = util::davit(addr, cluster.path(), &["alloc", "migrate", &sleeper.allocations[0].id]);
    let refused_err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && refused_err.contains("uses the exec driver"), "{refused_err}");
    let rt = runtime();
    let client = davit_client::Client::new(addr);
    let error = rt.block_on(client.migrate_allocation(&sleeper.allocations[0].id, &Default::default())).unwrap_err();
    assert!(matches!(error, davit_client::ClientError::Api { status: 400, .. }), "{error}");

    // 4. The drained node comes back: `davit rebalance` evens the load by live-migrating the VM to it,
    // not by stopping and replacing it (the in-memory counter survives).
    assert_eq!(sleeper.allocations[0].node_name, first.node_name, "the other node was still ineligible");
    wait_alloc(addr, &third.id, PATIENCE, |alloc| alloc.healthy == Some(true));
    util::ok(addr, cluster.path(), &["node", "eligibility", other, "--enable"]);
    let dry_run = util::ok(addr, cluster.path(), &["rebalance", "--dry-run"]);
    assert!(dry_run.contains(&format!("would live-migrate {}", third.name)), "{dry_run}");
    let output = util::ok(addr, cluster.path(), &["rebalance"]);
    println!("{output}");
    assert!(output.contains(&format!("live-migrating {}", third.name)) && output.contains("downtime "), "{output}");
    assert!(output.contains("Balanced after 1 move(s)."), "{output}");
    let fourth = destination_of(addr, &third.id);
    assert_eq!(fourth.node_name, other);
    assert_eq!(http_body(http_port(&fourth), "/cgi-bin/counter"), "6", "the guest was restarted instead of migrated");
    assert_migrated_source(addr, &third.id);

    // 5. Stopping the job powers the guest off through ACPI, and the task's events say so.
    util::ok(addr, cluster.path(), &["job", "stop", "mover"]);
    let stopped = wait_alloc(addr, &fourth.id, PATIENCE, |alloc| alloc.client_status.is_terminal());
    let killing = stopped.task_states["vm"].events.iter().find(|event| event.kind == "Killing").expect("a Killing event");
    assert!(killing.message.starts_with("ACPI power-off, then ending qemu after "), "{killing:?}");
}
