//! End to end on `davit dev`: a variable rendered by `templates:` into an exec task (file and environment) and
//! a container task (under /local); changing the variable restarts the tasks with the new value; the value
//! reaches no job version, allocation, event or davit log.

mod util;

use std::time::{Duration, Instant};

use davit_api::objects::{ClientStatus, DesiredStatus};
use util::{Dev, wait_alloc, wait_job};

const JOB: &str = r#"
name: app
groups:
  - name: g
    tasks:
      - name: exec
        driver: exec
        config: {command: /bin/sleep, args: ["600"]}
        resources: {cpu: 20, memory: 32}
        templates:
          - data: "SECRET={{ var \"app/cfg\" \"secret\" }}\n"
            destination: secrets/app.env
            env: true
      - name: hup
        driver: exec
        config: {command: /bin/sh, args: ["-c", "trap 'echo hup >> $DAVIT_TASK_DIR/hups' HUP; while true; do sleep 1; done"]}
        resources: {cpu: 20, memory: 32}
        templates:
          - data: "{{ var \"app/cfg\" \"secret\" }}"
            destination: secrets/value
            change_mode: signal
            change_signal: SIGHUP
      - name: box
        driver: container
        config: {image: "REGISTRY/busybox:1", command: "exec sleep 600"}
        resources: {cpu: 20, memory: 32}
        templates:
          - data: "password: {{ var \"app/cfg\" \"secret\" }}"
            destination: secrets/app.yaml
"#;

fn running_alloc(dev: &Dev) -> String {
    let status = wait_job(&dev.addr, "app", Duration::from_secs(60), |s| {
        s.allocations.iter().any(|a| a.desired_status == DesiredStatus::Run && a.client_status == ClientStatus::Running)
    });
    status.allocations.iter().find(|a| a.desired_status == DesiredStatus::Run).unwrap().id.clone()
}

/// What `alloc exec` prints of `command` in `task`.
fn exec(dev: &Dev, alloc: &str, task: &str, command: &str) -> String {
    dev.ok(&["alloc", "exec", alloc, task, "-T", "--", "/bin/sh", "-c", command])
}

/// Waits (bounded) until `command` in `task` prints `expected`.
fn wait_exec(dev: &Dev, alloc: &str, task: &str, command: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = dev.davit(&["alloc", "exec", alloc, task, "-T", "--", "/bin/sh", "-c", command]);
        if String::from_utf8_lossy(&output.stdout).trim() == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{task} never printed {expected:?}: {output:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_variable_reaches_exec_and_container_tasks_and_a_change_restarts_them() {
    let Some(registry) = util::container_registry() else { return };
    let dev = Dev::start();

    // Without the variable the task cannot start, and says why.
    let path = dev.write("app.yaml", &JOB.replace("REGISTRY", &registry.host()));
    dev.ok(&["job", "run", "-d", &path]);
    let alloc = wait_job(&dev.addr, "app", Duration::from_secs(30), |s| !s.allocations.is_empty()).allocations[0].id.clone();
    wait_alloc(&dev.addr, &alloc, Duration::from_secs(30), |a| {
        a.task_states.get("exec").is_some_and(|task| task.events.iter().any(|e| e.message.contains("variable app/cfg does not exist")))
    });

    dev.ok(&["var", "put", "app/cfg", "secret=first-s3cret-value"]);
    let alloc = running_alloc(&dev);
    wait_exec(&dev, &alloc, "exec", "echo $SECRET; cat $DAVIT_TASK_DIR/secrets/app.env", "first-s3cret-value\nSECRET=first-s3cret-value");
    wait_exec(&dev, &alloc, "box", "cat /local/secrets/app.yaml", "password: first-s3cret-value");
    let mode = exec(&dev, &alloc, "exec", "stat -c %a $DAVIT_TASK_DIR/secrets/app.env");
    assert_eq!(mode.trim(), "400");

    let hup_pid = |dev: &Dev| {
        let json: serde_json::Value = serde_json::from_str(&dev.ok(&["alloc", "status", &alloc, "-o", "json"])).unwrap();
        json["task_states"]["hup"]["pid"].as_u64()
    };
    wait_exec(&dev, &alloc, "hup", "cat $DAVIT_TASK_DIR/secrets/value", "first-s3cret-value");
    let pid_before = hup_pid(&dev);
    assert!(pid_before.is_some());

    // A new value: both tasks restart with it.
    dev.ok(&["var", "put", "app/cfg", "secret=second-s3cret-value"]);
    wait_exec(&dev, &alloc, "exec", "echo $SECRET", "second-s3cret-value");
    wait_exec(&dev, &alloc, "box", "cat /local/secrets/app.yaml", "password: second-s3cret-value");
    let status = dev.ok(&["alloc", "status", &alloc]);
    assert!(status.contains("template secrets/app.env changed"), "{status}");
    // change_mode: signal: the task got SIGHUP and the new file, and kept running.
    wait_exec(&dev, &alloc, "hup", "cat $DAVIT_TASK_DIR/hups; cat $DAVIT_TASK_DIR/secrets/value", "hup\nsecond-s3cret-value");
    assert!(status.contains("template secrets/value changed: sent SIGHUP") || dev.ok(&["alloc", "status", &alloc]).contains("sent SIGHUP"));
    assert_eq!(hup_pid(&dev), pid_before, "the signalled task was not restarted");

    // The values are nowhere but in the tasks.
    for command in [vec!["job", "history", "app", "-o", "json"], vec!["alloc", "status", &alloc, "-o", "json"]] {
        let output = dev.ok(&command);
        assert!(!output.contains("s3cret-value"), "`davit {}` shows the value:\n{output}", command.join(" "));
    }
    let log = util::read(&dev.dir.path().join("davit-dev.log"));
    assert!(!log.contains("s3cret-value"), "the davit log holds the value");
    dev.ok(&["job", "stop", "app"]);
}

#[test]
fn a_variable_reaches_a_vm_through_its_cloud_init_user_data() {
    if !util::require_root() {
        return;
    }
    let Some(guest) = util::guest_dir() else { return };
    let dev = Dev::start();
    dev.ok(&["var", "put", "app/vm", "secret=vm-s3cret-one"]);
    let job = format!(
        r##"name: vmapp
groups:
  - name: g
    network: {{ports: [{{name: http, to: 8080}}]}}
    tasks:
      - name: vm
        driver: vm
        config:
          accel: tcg
          kernel: {guest}/vmlinux
          initrd: {guest}/initramfs.cpio.gz
          cmdline: "console=ttyS0 tsc_early_khz=2600000 panic=-1"
          cloud_init: {{user_data_file: secrets/user-data}}
        resources: {{cpu: 500, memory: 256}}
        templates:
          - data: "#cloud-config\nwrite_files:\n  - path: /srv/secret.txt\n    content: '{{{{ var \"app/vm\" \"secret\" }}}}'\n"
            destination: secrets/user-data
"##,
        guest = guest.display()
    );
    let path = dev.write("vmapp.yaml", &job);
    dev.ok(&["job", "run", "-d", &path]);
    let status = wait_job(&dev.addr, "vmapp", Duration::from_secs(60), |s| {
        s.allocations.iter().any(|a| a.desired_status == DesiredStatus::Run && a.client_status == ClientStatus::Running)
    });
    let alloc = wait_alloc(&dev.addr, &status.allocations[0].id, Duration::from_secs(30), |a| a.client_status == ClientStatus::Running);
    let port = alloc.resources.ports.iter().find(|port| port.label == "http").unwrap().value;
    let wait_secret = |expected: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while util::http_body(port, "/cgi-bin/file?/srv/secret.txt").as_deref() != Some(expected) {
            assert!(Instant::now() < deadline, "the guest never had {expected:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_secret("vm-s3cret-one");
    // A new value restarts the guest with new user data.
    dev.ok(&["var", "put", "app/vm", "secret=vm-s3cret-two"]);
    wait_secret("vm-s3cret-two");
    dev.ok(&["job", "stop", "vmapp"]);
}
