//! Deployments end to end on `davit dev`: a rolling update replaces one allocation at a time and ends
//! successful (the version becomes stable); a broken version with `auto_revert` fails, `job run` exits 1 saying
//! so, and the job rolls back to the stable version's spec as a new version. Canaries wait for promotion;
//! blue/green stops the old set at once; a rolling update under load through the proxy fails no request;
//! `job restart` restarts in place a batch at a time; a container image change and a VM kernel change roll the
//! same way.

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use davit_api::deployment::DeploymentStatus;
use davit_api::objects::{ClientStatus, DesiredStatus};
use util::{DAVIT, Dev, require_root, runtime, wait_job};

/// Four exec allocations rolled one at a time; each is healthy once its task ran for 1 s.
fn job(command: &str, marker: &str) -> String {
    format!(
        r#"name: roll
update:
  max_parallel: 1
  health_check: task_states
  min_healthy_time: 1s
  healthy_deadline: 20s
  progress_deadline: 0s
  auto_revert: true
groups:
  - name: web
    count: 4
    restart: {{attempts: 0, mode: fail}}
    tasks:
      - name: main
        driver: exec
        env: {{MARKER: "{marker}"}}
        config: {{command: /bin/sh, args: ["-c", "{command}"]}}
        resources: {{cpu: 20, memory: 32}}
"#
    )
}

#[test]
fn a_rolling_update_replaces_one_at_a_time_and_a_broken_version_is_reverted() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let client = dev.client();
    // v0: placed under a deployment too, which makes it stable.
    let v0 = dev.write("v0.yaml", &job("exec sleep 600", "v0"));
    let out = dev.ok(&["job", "run", &v0]);
    assert!(out.contains("successful"), "{out}");
    let first = runtime().block_on(client.job_deployment("roll", 0, Duration::ZERO)).unwrap().value;
    assert_eq!((first.job_version, first.status), (0, DeploymentStatus::Successful), "{first:#?}");

    // v1: rolled one at a time; at no moment more than one new allocation is not yet healthy.
    let v1 = dev.write("v1.yaml", &job("exec sleep 600", "v1"));
    let mut run = Command::new(DAVIT)
        .args(["job", "run", &v1])
        .env("DAVIT_ADDR", &dev.addr)
        .current_dir(dev.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut most_in_flight, mut saw_both_versions) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    while run.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the rolling update did not end");
        let status = runtime().block_on(client.job_status("roll")).unwrap().value;
        let live: Vec<_> =
            status.allocations.iter().filter(|a| a.desired_status == DesiredStatus::Run && !a.client_status.is_terminal()).collect();
        let new_ids: Vec<&str> = live.iter().filter(|a| a.job_version == 1).map(|a| a.id.as_str()).collect();
        saw_both_versions |= !new_ids.is_empty() && live.iter().any(|a| a.job_version == 0);
        let in_flight = new_ids
            .iter()
            .filter(|id| runtime().block_on(client.allocation(id)).is_ok_and(|alloc| alloc.deployment_health.is_none()))
            .count();
        most_in_flight = most_in_flight.max(in_flight);
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("successful"), "{stdout}");
    assert!(most_in_flight <= 1, "max_parallel 1, but {most_in_flight} new allocations were unhealthy at once");
    assert!(saw_both_versions, "a rolling update runs both versions for a while");
    let rolled = wait_job(&dev.addr, "roll", Duration::from_secs(30), |status| {
        status.allocations.iter().filter(|a| a.job_version == 1 && a.client_status == ClientStatus::Running).count() == 4
    });
    assert!(rolled.job.stable, "a version whose deployment succeeded is stable: {:#?}", rolled.job);

    // v2 is broken: its first allocation fails, the deployment fails, `job run` exits 1 and the job rolls
    // back to v1's spec as v3.
    let v2 = dev.write("v2.yaml", &job("exit 1", "v2"));
    let output = dev.davit(&["job", "run", &v2]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}\n{stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains("failed") && stderr.contains("rolling back to job version 1"), "{stderr}");
    let reverted = wait_job(&dev.addr, "roll", Duration::from_secs(60), |status| {
        status.job.version == 3
            && status.allocations.iter().filter(|a| a.job_version == 3 && a.client_status == ClientStatus::Running).count() == 4
    });
    let env = &reverted.job.spec.groups[0].tasks[0].env;
    assert_eq!(env.get("MARKER").map(String::as_str), Some("v1"), "v3 has v1's spec");
    let deployment = runtime().block_on(client.job_deployment("roll", 0, Duration::ZERO)).unwrap().value;
    assert_eq!(deployment.job_version, 3);
    let ended = util::eventually(
        "v3's deployment ends",
        Duration::from_secs(60),
        || runtime().block_on(client.deployment(&deployment.id, 0, Duration::ZERO)).unwrap().value,
        |deployment| !deployment.is_active(),
    );
    assert_eq!(ended.status, DeploymentStatus::Successful, "{ended:#?}");
    // Each version's own deployment stays reachable by version.
    let failed = runtime().block_on(client.job_version_deployment("roll", 2, 0, Duration::ZERO)).unwrap().value;
    assert_eq!((failed.job_version, failed.status), (2, DeploymentStatus::Failed), "{failed:#?}");
    let missing = runtime().block_on(client.job_version_deployment("roll", 9, 0, Duration::ZERO)).unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    let deployments = dev.ok(&["deployment", "ls"]);
    assert!(deployments.contains("rolling back to job version 1"), "{deployments}");
    // `job history` says which versions are stable and how their rollouts ended.
    let history = dev.ok(&["job", "history", "roll"]);
    let row = |version: &str| history.lines().find(|line| line.starts_with(version)).unwrap_or_else(|| panic!("{history}")).to_string();
    assert!(row("1 ").contains("yes") && row("1 ").contains("successful"), "{history}");
    assert!(row("2 ").contains("failed") && !row("2 ").contains("yes"), "{history}");
    assert!(row("3 ").contains("revert to version 1"), "{history}");
}

/// Three exec allocations with `canary` canaries, promoted by hand.
fn canary_job(canaries: u32, marker: &str) -> String {
    format!(
        r#"name: canary
update:
  max_parallel: 1
  canary: {canaries}
  health_check: task_states
  min_healthy_time: 1s
  healthy_deadline: 20s
  progress_deadline: 1m
groups:
  - name: web
    count: 3
    tasks:
      - name: main
        driver: exec
        env: {{MARKER: "{marker}"}}
        config: {{command: /bin/sleep, args: ["600"]}}
        resources: {{cpu: 20, memory: 32}}
"#
    )
}

#[test]
fn canaries_wait_for_promotion_and_blue_green_replaces_every_old_allocation_at_once() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let client = dev.client();
    let live_of = |version: u64| {
        let status = runtime().block_on(client.job_status("canary")).unwrap().value;
        status
            .allocations
            .iter()
            .filter(|a| a.job_version == version && a.desired_status == DesiredStatus::Run && !a.client_status.is_terminal())
            .count()
    };
    let out = dev.ok(&["job", "run", &dev.write("v0.yaml", &canary_job(1, "v0"))]);
    assert!(out.contains("successful"), "a first version has no canaries: {out}");

    // One canary beside the three running allocations; `job run` returns once it is healthy and says what to do.
    let out = dev.ok(&["job", "run", &dev.write("v1.yaml", &canary_job(1, "v1"))]);
    assert!(out.contains("wait for promotion") && out.contains("davit deployment promote"), "{out}");
    assert_eq!((live_of(0), live_of(1)), (3, 1), "the canary runs beside the old allocations");
    let deployment = runtime().block_on(client.job_deployment("canary", 0, Duration::ZERO)).unwrap().value;
    let status = dev.ok(&["deployment", "status", &deployment.id]);
    assert!(status.contains("requires manual promotion") && status.contains("1/1"), "{status}");
    let out = dev.ok(&["deployment", "promote", &deployment.id]);
    assert!(out.contains("running"), "{out}");
    let ended = util::eventually(
        "the promoted deployment rolls the rest",
        Duration::from_secs(60),
        || runtime().block_on(client.deployment(&deployment.id, 0, Duration::ZERO)).unwrap().value,
        |deployment| !deployment.is_active(),
    );
    assert_eq!(ended.status, DeploymentStatus::Successful, "{ended:#?}");
    assert_eq!((live_of(0), live_of(1)), (0, 3));
    let again = dev.davit(&["deployment", "promote", &deployment.id]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("is successful: only a running or paused deployment"), "{stderr}");

    // Blue/green: three canaries (a whole new set) beside the old set; the promotion stops the old set at once.
    let out = dev.ok(&["job", "run", &dev.write("v2.yaml", &canary_job(3, "v2"))]);
    assert!(out.contains("wait for promotion"), "{out}");
    assert_eq!((live_of(1), live_of(2)), (3, 3));
    let green = runtime().block_on(client.job_deployment("canary", 0, Duration::ZERO)).unwrap().value;
    dev.ok(&["deployment", "promote", &green.id]);
    let first_stop = util::eventually(
        "the old set stops",
        Duration::from_secs(30),
        || runtime().block_on(client.job_status("canary")).unwrap().value,
        |status| status.allocations.iter().any(|a| a.job_version == 1 && a.desired_status == DesiredStatus::Stop),
    );
    let blue: Vec<_> = first_stop.allocations.iter().filter(|a| a.job_version == 1).collect();
    assert!(blue.iter().all(|a| a.desired_status == DesiredStatus::Stop), "all at once: {blue:#?}");
    let ended = util::eventually(
        "the blue/green deployment ends",
        Duration::from_secs(60),
        || runtime().block_on(client.deployment(&green.id, 0, Duration::ZERO)).unwrap().value,
        |deployment| !deployment.is_active(),
    );
    assert_eq!(ended.status, DeploymentStatus::Successful, "{ended:#?}");
}

/// A 3-instance HTTP service (busybox httpd answering its version's marker) rolled one at a time; stopped
/// instances wait 1 s out of the catalog before their kill.
fn web_job(marker: &str, local_port: u16) -> String {
    format!(
        r#"name: zero
update: {{max_parallel: 1, health_check: checks, min_healthy_time: 1s, healthy_deadline: 30s, progress_deadline: 1m}}
groups:
  - name: web
    count: 3
    shutdown_delay: 1s
    network:
      ports: [{{name: http}}]
    services:
      - {{name: zero-web, port: http, local_port: {local_port}}}
    tasks:
      - name: server
        driver: exec
        env: {{MARKER: "{marker}"}}
        config:
          command: /bin/sh
          args: ["-c", "echo ok > local/health; echo $MARKER > local/index.html; mkdir -p local/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho %s\\n' $MARKER > local/cgi-bin/marker; chmod 755 local/cgi-bin/marker; exec /bin/busybox httpd -f -p 127.0.0.1:${{port.http}} -h local"]
        resources: {{cpu: 50, memory: 32}}
        checks:
          - {{name: health, type: http, port: http, path: /health, body: ok, interval: 200ms, timeout: 150ms}}
"#
    )
}

/// One request through a fresh connection: `GET /` (which the proxy may retry on another instance) or a `POST`
/// to a CGI script (which it must not); the body of a 200, else why not.
fn request(addr: &str, post: bool) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|error| format!("connect: {error}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|error| error.to_string())?;
    let head: &[u8] = if post {
        b"POST /cgi-bin/marker HTTP/1.0\r\nHost: zero\r\nContent-Length: 2\r\n\r\nhi"
    } else {
        b"GET / HTTP/1.0\r\nHost: zero\r\n\r\n"
    };
    stream.write_all(head).map_err(|error| format!("write: {error}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|error| format!("read: {error}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => Ok(body.trim().to_string()),
        _ => Err(response.lines().next().unwrap_or("empty response").to_string()),
    }
}

#[test]
fn a_rolling_update_under_load_through_the_proxy_fails_no_request() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let local_port = util::free_port();
    let addr = format!("{}:{local_port}", dev.proxy_ip);
    let out = dev.ok(&["job", "run", &dev.write("v0.yaml", &web_job("v0", local_port))]);
    assert!(out.contains("successful"), "{out}");
    let ready = util::eventually(
        "v0 answers through the proxy",
        Duration::from_secs(30),
        || request(&addr, true),
        |answer| answer.as_deref() == Ok("v0"),
    );
    drop(ready);

    // Steady load from two clients (bounded in time and count) while v1 rolls.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut answers, mut failures) = (std::collections::BTreeMap::<String, u32>::new(), Vec::new());
                let deadline = Instant::now() + Duration::from_secs(120);
                for n in 0..200_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    match request(&addr, n % 2 == 0) {
                        Ok(body) => *answers.entry(body).or_default() += 1,
                        Err(error) => failures.push(error),
                    }
                }
                (answers, failures)
            })
        })
        .collect();
    let out = dev.ok(&["job", "run", &dev.write("v1.yaml", &web_job("v1", local_port))]);
    assert!(out.contains("successful"), "{out}");
    // The last old instance waits its shutdown delay: keep the load on until it is gone.
    let rolled = wait_job(&dev.addr, "zero", Duration::from_secs(30), |status| {
        status.allocations.iter().all(|a| a.job_version == 1 || a.client_status.is_terminal())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answers, mut failures) = (std::collections::BTreeMap::<String, u32>::new(), Vec::new());
    for thread in load {
        let (a, f) = thread.join().unwrap();
        for (body, n) in a {
            *answers.entry(body).or_default() += n;
        }
        failures.extend(f);
    }
    let total: u32 = answers.values().sum();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rollout: {failures:?}",
        failures.len(),
        total as usize + failures.len()
    );
    // Each old instance was killed only after its shutdown delay, out of the catalog.
    let client = dev.client();
    for old in rolled.allocations.iter().filter(|a| a.job_version == 0) {
        let alloc = runtime().block_on(client.allocation(&old.id)).unwrap();
        let events = &alloc.task_states["server"].events;
        let at = |kind: &str| events.iter().find(|event| event.kind == kind).map(|event| event.time);
        let (delay, killing) = (at("Shutdown Delay"), at("Killing"));
        assert!(delay.zip(killing).is_some_and(|(delay, killing)| killing >= delay + 1_000), "{events:#?}");
    }
    assert!(answers.get("v0").is_some_and(|n| *n > 10) && answers.get("v1").is_some_and(|n| *n > 10), "both versions served: {answers:?}");
}

#[test]
fn job_restart_restarts_allocations_in_place_one_batch_at_a_time() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let client = dev.client();
    dev.ok(&["job", "run", &dev.write("v0.yaml", &job("exec sleep 600", "v0"))]);
    let ids = |status: &davit_api::http::JobStatusResponse| -> Vec<String> {
        let mut ids: Vec<String> = status
            .allocations
            .iter()
            .filter(|a| a.desired_status == DesiredStatus::Run && !a.client_status.is_terminal())
            .map(|a| a.id.clone())
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&runtime().block_on(client.job_status("roll")).unwrap().value);
    assert_eq!(before.len(), 4);

    let out = dev.ok(&["job", "restart", "roll"]);
    assert!(out.contains("4 allocations restarted"), "{out}");
    assert_eq!(ids(&runtime().block_on(client.job_status("roll")).unwrap().value), before, "in place: the same allocations");
    // One at a time (update.max_parallel 1): each one's kill comes after the previous one ran again.
    let mut windows: Vec<(u64, u64)> = before
        .iter()
        .map(|id| {
            let alloc = runtime().block_on(client.allocation(id)).unwrap();
            let task = &alloc.task_states["main"];
            // Restarted, but not counted as unstable.
            assert_eq!(task.restarts, 0, "{task:#?}");
            assert!(
                task.events.iter().any(|event| event.kind == "Restarting" && event.message.contains("requested by an operator")),
                "{task:#?}"
            );
            let killed = task.events.iter().find(|event| event.kind == "Killing").map(|event| event.time).unwrap();
            let started = task.events.iter().filter(|event| event.kind == "Started").map(|event| event.time).max().unwrap();
            (killed, started)
        })
        .collect();
    windows.sort();
    for pair in windows.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "a restart began before the previous one ran again: {windows:?}");
    }

    // A stopped allocation cannot be restarted.
    dev.ok(&["job", "stop", "roll"]);
    wait_job(&dev.addr, "roll", Duration::from_secs(30), |status| status.allocations.iter().all(|a| a.client_status.is_terminal()));
    let refused = dev.davit(&["alloc", "restart", &before[0]]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("only a running allocation can be restarted"), "{stderr}");
}

/// Two allocations of `driver_config` rolled one at a time, healthy once their HTTP check passed for 1 s.
fn driver_job(name: &str, driver: &str, config: &str, check_path: &str, (cpu, memory): (u32, u32)) -> String {
    format!(
        r#"name: {name}
update: {{max_parallel: 1, health_check: checks, min_healthy_time: 1s, healthy_deadline: 3m, progress_deadline: 5m}}
groups:
  - name: web
    count: 2
    network:
      ports: [{{name: http, to: 8080}}]
    tasks:
      - name: main
        driver: {driver}
        config: {config}
        resources: {{cpu: {cpu}, memory: {memory}}}
        checks:
          - {{name: http, type: http, port: http, path: {check_path}, interval: 500ms, timeout: 400ms}}
"#
    )
}

/// Runs v0 then v1 of a job and checks v1 rolled under a deployment: successful, both allocations replaced, the
/// old ones stopped as "replaced by version 1".
fn rolls(dev: &Dev, name: &str, v0: &str, v1: &str) {
    let out = dev.ok(&["job", "run", &dev.write(&format!("{name}-v0.yaml"), v0)]);
    assert!(out.contains("successful"), "{out}");
    let out = dev.ok(&["job", "run", &dev.write(&format!("{name}-v1.yaml"), v1)]);
    assert!(out.contains("successful"), "{out}");
    let status = runtime().block_on(dev.client().job_status(name)).unwrap().value;
    let running: Vec<_> =
        status.allocations.iter().filter(|a| a.desired_status == DesiredStatus::Run && a.client_status == ClientStatus::Running).collect();
    assert_eq!(running.len(), 2, "{status:#?}");
    assert!(running.iter().all(|a| a.job_version == 1), "{status:#?}");
    let replaced = status.allocations.iter().filter(|a| a.job_version == 0 && a.desired_status == DesiredStatus::Stop).count();
    assert_eq!(replaced, 2, "{status:#?}");
}

#[test]
fn a_container_image_change_rolls_like_exec() {
    let Some(registry) = util::container_registry() else { return };
    let images = davit_oci::testing::test_images_dir();
    registry.push_test_image_from("1", "busybox:2", &images.join("busybox"));
    let dev = Dev::start();
    let config = |tag: &str| {
        format!(
            r#"{{image: "{}/busybox:{tag}", command: "mkdir -p /www && echo {tag} > /www/index.html && exec httpd -f -p ${{port.http}} -h /www"}}"#,
            registry.host()
        )
    };
    rolls(
        &dev,
        "boxes",
        &driver_job("boxes", "container", &config("1"), "/", (100, 32)),
        &driver_job("boxes", "container", &config("2"), "/", (100, 32)),
    );
}

#[test]
fn a_vm_kernel_change_rolls_like_exec() {
    if !require_root() {
        return;
    }
    let Some(guest) = util::guest_dir() else { return };
    // The "new kernel": the same image under another name in the agent's image directory.
    let renamed = guest.join("vmlinux-rolled");
    if !renamed.exists() {
        std::fs::hard_link(guest.join("vmlinux"), &renamed).or_else(|_| std::fs::copy(guest.join("vmlinux"), &renamed).map(drop)).unwrap();
    }
    let dev = Dev::start();
    let config = |kernel: &str| {
        format!(
            r#"{{accel: tcg, kernel: {}/{kernel}, initrd: {}/initramfs.cpio.gz, cmdline: "console=ttyS0 tsc_early_khz=2600000 panic=-1"}}"#,
            guest.display(),
            guest.display()
        )
    };
    rolls(
        &dev,
        "guests",
        // A TCG guest boots at the speed of its CPU share: half a core each.
        &driver_job("guests", "vm", &config("vmlinux"), "/cgi-bin/health", (500, 256)),
        &driver_job("guests", "vm", &config("vmlinux-rolled"), "/cgi-bin/health", (500, 256)),
    );
}

/// A 3-instance HTTP service whose canary is judged by its traffic through the proxies (half of it, whatever
/// the number of instances); `broken`: the version's CGI answers 500 to one request in five.
fn judged_job(marker: &str, local_port: u16, broken: bool) -> String {
    let fail = if broken {
        r#"'[ $((RANDOM % 5)) -eq 0 ] && echo Status: 500 Internal Server Error && echo && echo broken && exit 0' "#
    } else {
        ""
    };
    format!(
        r#"name: judged
update:
  max_parallel: 1
  canary: 1
  auto_promote: true
  canary_weight: 50
  health_check: checks
  min_healthy_time: 1s
  healthy_deadline: 30s
  progress_deadline: 2m
  auto_revert: true
  analysis: {{interval: 2s, samples: 2, max_error_rate: 5%, min_requests: 10}}
groups:
  - name: web
    count: 3
    network:
      ports: [{{name: http}}]
    services:
      - {{name: judged-web, port: http, local_port: {local_port}}}
    tasks:
      - name: server
        driver: exec
        env: {{MARKER: "{marker}"}}
        config:
          command: /bin/sh
          args: ["-c", "echo ok > local/health; mkdir -p local/cgi-bin; printf '%s\\n' '#!/bin/busybox sh' {fail}'echo Content-Type: text/plain' 'echo' 'echo $MARKER' > local/cgi-bin/marker; chmod 755 local/cgi-bin/marker; exec /bin/busybox httpd -f -p 127.0.0.1:${{port.http}} -h local"]
        resources: {{cpu: 200, memory: 32}}
        checks:
          - {{name: health, type: http, port: http, path: /health, body: ok, interval: 200ms, timeout: 150ms}}
"#
    )
}

#[test]
fn canary_analysis_reverts_a_canary_that_fails_requests_and_promotes_one_that_does_not() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let client = dev.client();
    let local_port = util::free_port();
    let addr = format!("{}:{local_port}", dev.proxy_ip);
    let out = dev.ok(&["job", "run", &dev.write("v0.yaml", &judged_job("v0", local_port, false))]);
    assert!(out.contains("successful"), "{out}");
    let ready =
        util::eventually("v0 answers through the proxy", Duration::from_secs(30), || request(&addr, true), |a| a.as_deref() == Ok("v0"));
    drop(ready);

    // Steady POST load (not retried by the proxy), recording each answer (bounded in time and count).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let (deadline, mut answers) = (Instant::now() + Duration::from_secs(240), Vec::new());
            for _ in 0..500_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                answers.push(request(&addr, true).unwrap_or_else(|error| error));
                std::thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };

    // v1 answers 500 to a fifth of its requests: the analysis fails it and the job goes back to v0's spec.
    let output = dev.davit(&["job", "run", &dev.write("v1.yaml", &judged_job("v1", local_port, true))]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}\n{stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains("Failed due to canary analysis") && stderr.contains("rolling back to job version 0"), "{stderr}");
    let failed = runtime().block_on(client.deployments()).unwrap().into_iter().find(|d| d.job_version == 1).unwrap();
    let analysis = failed.groups["web"].analysis.clone().unwrap();
    assert!(analysis.failed >= 2 && analysis.last.as_ref().unwrap().verdict.contains("max_error_rate"), "{analysis:#?}");
    let reverted = wait_job(&dev.addr, "judged", Duration::from_secs(60), |status| {
        status.job.version == 2
            && status.allocations.iter().filter(|a| a.job_version == 2 && a.client_status == ClientStatus::Running).count() == 3
            && status.allocations.iter().all(|a| a.job_version == 2 || a.client_status.is_terminal())
    });
    assert_eq!(reverted.job.spec.groups[0].tasks[0].env["MARKER"], "v0");

    // v3 is healthy: it passes two intervals, promotes itself and rolls.
    let out = dev.ok(&["job", "run", &dev.write("v3.yaml", &judged_job("v3", local_port, false))]);
    assert!(out.contains("successful"), "{out}");
    let passed = runtime().block_on(client.job_deployment("judged", 0, Duration::ZERO)).unwrap().value;
    assert_eq!(passed.job_version, 3);
    assert!(passed.groups["web"].promoted && passed.groups["web"].analysis.as_ref().is_some_and(|a| a.passed >= 2), "{passed:#?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.join().unwrap();

    // While v1's canary ran beside three v0 instances, it got about half of the requests (canary_weight 50),
    // not a quarter.
    let canary = |answer: &String| answer == "v1" || answer.contains(" 500 ");
    let first = answers.iter().position(canary).expect("the canary answered");
    let last = answers.iter().rposition(canary).unwrap();
    let window = &answers[first..=last];
    let share = window.iter().filter(|answer| canary(answer)).count() as f64 / window.len() as f64;
    assert!(window.len() >= 40 && (0.35..=0.65).contains(&share), "canary share {share:.2} of {} requests", window.len());
}
