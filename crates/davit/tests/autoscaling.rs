//! The autoscaler end to end on `davit dev` (autoscaler and usage sampling every second): a CPU-bound HTTP
//! service scales up under load and back down once its stabilisation window passed; a requests-per-second
//! service scales with the load sent through the proxy; a `prometheus` metric against a real Prometheus; a
//! predictive group scales up before a recurring step in a 40-second season; idle exec and container groups
//! scale to zero and their first request wakes them and is answered; `davit scaling plan` computes
//! Kubernetes' answer offline and refuses bad input with its position.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use util::{Dev, require_root, runtime};

/// A busybox httpd whose `/cgi-bin/burn` spins the CPU for a while per request, behind the proxy on
/// `local_port`, scaled on `metric` between 1 and `max`; a scale-down waits 5 s of lower recommendations.
fn service_job(name: &str, local_port: u16, metric: &str, max: u32) -> String {
    format!(
        r#"name: {name}
groups:
  - name: web
    count: 1
    network:
      ports: [{{name: http}}]
    services:
      - {{name: {name}-web, port: http, local_port: {local_port}}}
    scaling:
      min: 1
      max: {max}
      metrics: [{metric}]
      behavior:
        scale_down: {{stabilization_window: 5s}}
    tasks:
      - name: server
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "echo ok > local/health; echo ok > local/index.html; mkdir -p local/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\ni=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; echo burnt\\n' > local/cgi-bin/burn; chmod 755 local/cgi-bin/burn; exec /bin/busybox httpd -f -p 127.0.0.1:${{port.http}} -h local"]
        resources: {{cpu: 100, memory: 32}}
        checks:
          - {{name: health, type: http, port: http, path: /health, interval: 500ms, timeout: 400ms}}
"#
    )
}

/// `GET path` through a fresh connection: the response when it answered 200.
fn get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: scale\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    (response.starts_with("HTTP/1.") && response.lines().next().is_some_and(|line| line.contains(" 200 "))).then_some(response)
}

/// `threads` clients each sending `GET path` then pausing `pause`, until `stop` (at most 3 minutes and
/// 100,000 requests each); the number of answered requests.
fn load(addr: &str, path: &'static str, threads: usize, pause: Duration, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u32>> {
    (0..threads)
        .map(|_| {
            let (addr, stop) = (addr.to_string(), Arc::clone(stop));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(180);
                let mut answered = 0;
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    answered += u32::from(get(&addr, path).is_some());
                    std::thread::sleep(pause);
                }
                answered
            })
        })
        .collect()
}

fn count(dev: &Dev, job: &str) -> u32 {
    let job = runtime().block_on(dev.client().job(job)).unwrap();
    job.spec.groups[0].count
}

#[test]
fn a_cpu_bound_service_scales_up_under_load_and_back_down_after_its_window() {
    if !require_root() {
        return;
    }
    let dev = Dev::start_with(&["--autoscaler-interval", "1s", "--usage-interval", "1s"]);
    let local_port = util::free_port();
    let addr = format!("{}:{local_port}", dev.proxy_ip);
    let spec = dev.write("burn.yaml", &service_job("burn", local_port, "{type: cpu, target_utilization: 50}", 3));
    dev.ok(&["job", "run", &spec]);
    util::wait_until("the service answers through the proxy", Duration::from_secs(30), || get(&addr, "/").is_some());

    // Idle, the group stays at 1: the autoscaler has a sample and proposes no change.
    let status = util::eventually(
        "the autoscaler evaluates the idle group",
        Duration::from_secs(30),
        || runtime().block_on(dev.client().job_scaling("burn")).unwrap(),
        |status| status.groups[0].metrics[0].proposal.is_some(),
    );
    assert_eq!(status.groups[0].desired, Some(1), "{status:#?}");

    // Two clients burning CPU through the proxy: well past 50 % of the 100 millicores asked for.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&addr, "/cgi-bin/burn", 2, Duration::from_millis(20), &stop);
    let started = Instant::now();
    util::wait_until("the group scales up", Duration::from_secs(60), || count(&dev, "burn") >= 2);
    let reaction = started.elapsed();
    let versions = runtime().block_on(dev.client().job_versions("burn")).unwrap();
    let event = versions.iter().find_map(|version| version.scaling.clone()).expect("the new version says why");
    assert_eq!((event.by.as_str(), event.from), ("autoscaler", 1), "{event:#?}");
    assert!(event.reason.starts_with("cpu ") && event.reason.ends_with("of 50%"), "{event:#?}");

    // What an operator sees meanwhile: the usage next to the request, the metric against its target, /metrics.
    let allocs = runtime().block_on(dev.client().job_allocations("burn")).unwrap();
    let running = allocs.iter().find(|alloc| alloc.client_status == davit_api::objects::ClientStatus::Running).unwrap();
    let out = dev.ok(&["alloc", "status", &running.id]);
    assert!(out.lines().any(|line| line.starts_with("Usage") && line.contains("of 100 millicores")), "{out}");
    let out = dev.ok(&["scaling", "status", "burn"]);
    assert!(out.contains("Group web: count") && out.contains("autoscaled") && out.contains("cpu 50%"), "{out}");
    assert!(out.contains("web 1 → ") && out.contains("(autoscaler)"), "{out}");
    let metrics = get(&dev.bind, "/metrics").expect("/metrics answers");
    assert!(metrics.contains("davit_alloc_cpu_millicores{job=\"burn\",group=\"web\""), "{metrics}");
    assert!(metrics.contains("davit_alloc_memory_bytes{job=\"burn\""), "{metrics}");

    // Load off: back to 1 once the 5 s window has no higher recommendation.
    stop.store(true, Ordering::Relaxed);
    let answered: u32 = clients.into_iter().map(|client| client.join().unwrap()).sum();
    assert!(answered > 0);
    util::wait_until("the group scales back down", Duration::from_secs(60), || count(&dev, "burn") == 1);
    let versions = runtime().block_on(dev.client().job_versions("burn")).unwrap();
    let last = versions.iter().max_by_key(|version| version.version).unwrap();
    let event = last.scaling.as_ref().expect("the scale-down says why");
    assert_eq!((event.to, event.reason.as_str()), (1, "all metrics below target"), "{event:#?}");
    eprintln!("scale-up reaction: {reaction:?} after the load started");
}

#[test]
fn a_requests_per_second_service_follows_the_traffic_through_the_proxy() {
    if !require_root() {
        return;
    }
    let dev = Dev::start_with(&["--autoscaler-interval", "1s", "--usage-interval", "1s"]);
    let local_port = util::free_port();
    let addr = format!("{}:{local_port}", dev.proxy_ip);
    let spec = dev.write("rps.yaml", &service_job("rps", local_port, "{type: requests_per_second, target: 5}", 4));
    dev.ok(&["job", "run", &spec]);
    util::wait_until("the service answers through the proxy", Duration::from_secs(30), || get(&addr, "/").is_some());

    // About 20 requests/s of static pages against 5 per instance.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&addr, "/", 2, Duration::from_millis(100), &stop);
    util::wait_until("the group scales up to at least 3", Duration::from_secs(60), || count(&dev, "rps") >= 3);
    let status = runtime().block_on(dev.client().job_scaling("rps")).unwrap();
    let metric = &status.groups[0].metrics[0];
    assert!(metric.metric == "requests_per_second 5" && metric.current.ends_with("/s"), "{status:#?}");
    let event = &status.events[0];
    assert!(event.reason.starts_with("requests_per_second ") && event.reason.ends_with("of 5/s"), "{status:#?}");

    // An operator's scale of an autoscaled group holds until the next decision, and says so.
    let out = dev.ok(&["job", "scale", "rps", "web", "2", "--detach"]);
    assert!(out.contains("is autoscaled"), "{out}");

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    util::wait_until("the group scales back to 1 without traffic", Duration::from_secs(60), || count(&dev, "rps") == 1);
}

#[test]
fn a_prometheus_query_scales_a_group_by_its_value_per_instance() {
    if !require_root() {
        return;
    }
    let dev = Dev::start_with(&["--autoscaler-interval", "1s", "--usage-interval", "1s"]);
    let Some(prometheus) = util::Prometheus::start(dev.dir.path(), &[&dev.bind]) else { return };
    let local_port = util::free_port();
    let addr = format!("{}:{local_port}", dev.proxy_ip);
    // The group's requests per second through the proxies, as Prometheus computes them from davit's /metrics,
    // against 5 per instance.
    let metric = format!(
        "{{type: prometheus, address: \"http://{}\", query: 'sum(rate(davit_proxy_requests_total{{service=\"prom-web\"}}[5s]))', target: 5}}",
        prometheus.addr
    );
    let spec = dev.write("prom.yaml", &service_job("prom", local_port, &metric, 4));
    dev.ok(&["job", "run", &spec]);
    util::wait_until("the service answers through the proxy", Duration::from_secs(30), || get(&addr, "/").is_some());

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&addr, "/", 2, Duration::from_millis(100), &stop);
    util::wait_until("the group scales up to at least 3", Duration::from_secs(90), || count(&dev, "prom") >= 3);
    let status = runtime().block_on(dev.client().job_scaling("prom")).unwrap();
    let event = &status.events[0];
    assert!(event.reason.starts_with("prometheus ") && event.reason.ends_with("of 5"), "{status:#?}");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    util::wait_until("the group scales back to 1 without traffic", Duration::from_secs(90), || count(&dev, "prom") == 1);

    // An unreachable Prometheus never scales down: the metric shows its error and the count stays.
    let gone = format!("{{type: prometheus, address: \"http://127.0.0.1:{}\", query: 'vector(0)', target: 5}}", util::free_port());
    let spec = dev.write("gone.yaml", &service_job("gone", util::free_port(), &gone, 4).replace("count: 1", "count: 2"));
    dev.ok(&["job", "run", &spec]);
    let status = util::eventually(
        "the autoscaler reports the unreachable Prometheus",
        Duration::from_secs(30),
        || runtime().block_on(dev.client().job_scaling("gone")).unwrap(),
        |status| !status.groups[0].metrics[0].error.is_empty(),
    );
    assert_eq!((status.groups[0].desired, status.groups[0].limited_by.as_str()), (Some(2), "invalid_metrics"), "{status:#?}");
    assert!(status.groups[0].metrics[0].error.contains("querying http://127.0.0.1:"), "{status:#?}");
    assert_eq!(count(&dev, "gone"), 2);
}

#[test]
fn a_predictive_group_scales_up_before_a_recurring_step() {
    if !require_root() {
        return;
    }
    let dev = Dev::start_with(&["--autoscaler-interval", "1s", "--usage-interval", "1s"]);
    let local_port = util::free_port();
    let addr = format!("{}:{local_port}", dev.proxy_ip);
    let spec = service_job("seasons", local_port, "{type: requests_per_second, target: 5}", 4)
        .replace("      behavior:", "      predictive: {season: 40s, lead_time: 12s, mode: scale}\n      behavior:");
    dev.ok(&["job", "run", &dev.write("seasons.yaml", &spec)]);
    util::wait_until("the service answers through the proxy", Duration::from_secs(30), || get(&addr, "/").is_some());

    // A season of 40 s: quiet, then about 20 requests/s in its last 15 s; three seasons.
    let start = Instant::now();
    let season = Duration::from_secs(40);
    let step_of = |k: u32| season * k + Duration::from_secs(25);
    let stop = Arc::new(AtomicBool::new(false));
    let mut before_third_step = None;
    for k in 0..3 {
        while start.elapsed() < step_of(k) {
            if k == 2 && start.elapsed() > step_of(2) - Duration::from_secs(2) && before_third_step.is_none() {
                before_third_step = Some(count(&dev, "seasons"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if k == 2 {
            break;
        }
        stop.store(false, Ordering::Relaxed);
        let clients = load(&addr, "/", 2, Duration::from_millis(100), &stop);
        while start.elapsed() < season * (k + 1) {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().unwrap();
        }
    }
    // Before the third step, with no load for 23 s, the forecast already asked for more instances.
    let status = runtime().block_on(dev.client().job_scaling("seasons")).unwrap();
    let count_before = before_third_step.expect("the count was read before the third step");
    assert!(count_before >= 2, "the group was at {count_before} before the third step: {status:#?}");
    let ahead = status
        .events
        .iter()
        .find(|event| event.reason.starts_with("forecast: requests_per_second"))
        .unwrap_or_else(|| panic!("{status:#?}"));
    assert!(ahead.to > ahead.from, "{ahead:#?}");
    assert!(status.groups[0].metrics[0].forecast.contains(" in 12s → "), "{status:#?}");
    let out = dev.ok(&["scaling", "status", "seasons"]);
    assert!(out.contains("predictive (scale)") && out.contains("Forecast"), "{out}");
}

/// `GET /` through a fresh connection, waiting up to 40 s for the answer: the status line and the body.
fn get_slow(addr: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|error| panic!("connecting to {addr}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    write!(stream, "GET / HTTP/1.0\r\nHost: zero\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap_or_else(|error| panic!("reading from {addr}: {error} after {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// A group that scales to zero after 10 s without requests: `task` is its one task, serving `hello from
/// <alloc>` on its `http` port.
fn zero_job(name: &str, local_port: u16, task: &str) -> String {
    format!(
        r#"name: {name}
groups:
  - name: web
    count: 1
    network:
      ports: [{{name: http}}]
    services:
      - {{name: {name}, port: http, local_port: {local_port}}}
    scaling: {{min: 0, max: 2, scale_to_zero_after: 10s, activation_timeout: 40s}}
    tasks:
{task}"#
    )
}

const EXEC_TASK: &str = r#"      - name: server
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "mkdir -p local/www && echo hello from $DAVIT_ALLOC_NAME > local/www/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:${port.http} -h local/www"]
        resources: {cpu: 50, memory: 32}
        checks:
          - {name: http, type: http, port: http, path: /, interval: 500ms, timeout: 400ms}
"#;

const CONTAINER_TASK: &str = r#"      - name: server
        driver: container
        config:
          image: "REGISTRY/busybox:1"
          command: "mkdir -p /www && echo hello from $DAVIT_ALLOC_NAME > /www/index.html && exec httpd -f -p ${port.http} -h /www"
        resources: {cpu: 50, memory: 32}
        checks:
          - {name: http, type: http, port: http, path: /, interval: 500ms, timeout: 400ms}
"#;

fn running(dev: &Dev, job: &str) -> usize {
    let allocs = runtime().block_on(dev.client().job_allocations(job)).unwrap();
    allocs.iter().filter(|alloc| !alloc.client_status.is_terminal()).count()
}

#[test]
fn idle_groups_scale_to_zero_and_the_first_request_wakes_them_and_succeeds() {
    if !require_root() {
        return;
    }
    // The container group needs a registry and a runtime (outside CI, the exec group runs alone without them).
    let registry = util::container_registry();
    let dev = Dev::start_with(&["--autoscaler-interval", "1s", "--usage-interval", "1s"]);
    let mut jobs = vec![("zero-exec", EXEC_TASK.to_string())];
    if let Some(registry) = &registry {
        jobs.push(("zero-box", CONTAINER_TASK.replace("REGISTRY", &registry.host())));
    }
    let mut addrs = Vec::new();
    for (name, task) in &jobs {
        let local_port = util::free_port();
        dev.ok(&["job", "run", &dev.write(&format!("{name}.yaml"), &zero_job(name, local_port, task))]);
        addrs.push(format!("{}:{local_port}", dev.proxy_ip));
    }
    for ((name, _), addr) in jobs.iter().zip(&addrs) {
        util::wait_until("the service answers through the proxy", Duration::from_secs(60), || get(addr, "/").is_some());
        let status = runtime().block_on(dev.client().job_scaling(name)).unwrap();
        assert!(status.groups[0].autoscaled, "{status:#?}");
    }

    // No requests: each goes to zero 10 s after its last one, its instance stops, and the proxy still listens.
    for (name, _) in &jobs {
        util::wait_until("the idle group scales to zero", Duration::from_secs(60), || count(&dev, name) == 0);
        util::wait_until("its instance stops", Duration::from_secs(60), || running(&dev, name) == 0);
        let status = runtime().block_on(dev.client().job_scaling(name)).unwrap();
        let event = &status.events[0];
        assert_eq!((event.from, event.to, event.by.as_str()), (1, 0, "autoscaler"), "{status:#?}");
        assert!(event.reason.contains("for 10s (scale_to_zero_after)"), "{status:#?}");
        util::eventually(
            "scaling status shows the group at zero",
            Duration::from_secs(10),
            || dev.ok(&["scaling", "status", name]),
            |out| out.contains("scale to zero: at zero: the next request"),
        );
    }

    // The first request waits while the group is scaled to 1 and its instance starts, then gets its answer.
    for ((name, _), addr) in jobs.iter().zip(&addrs) {
        let started = Instant::now();
        let (status_line, body) = get_slow(addr);
        let cold_start = started.elapsed();
        assert!(status_line.contains(" 200 "), "{name}: {status_line} {body}");
        assert!(body.starts_with(&format!("hello from {name}.web[")), "{name}: {body}");
        assert_eq!(count(&dev, name), 1);
        let status = runtime().block_on(dev.client().job_scaling(name)).unwrap();
        let event = &status.events[0];
        assert_eq!((event.from, event.to, event.by.as_str()), (0, 1, "activation"), "{status:#?}");
        assert!(event.reason.starts_with("a request reached the proxy on node "), "{status:#?}");
        eprintln!("{name}: first request answered {cold_start:?} after it was sent to a group at zero");
    }
}

#[test]
fn scaling_backtest_compares_holt_winters_with_the_naive_seasonal_forecast() {
    let dir = util::tempdir();
    // Four seasons of 10 with growth: Holt-Winters follows the trend, the naive forecast lags a season behind.
    let series: Vec<String> =
        (0..40i64).map(|t| format!("{t},{}", 100 + 3 * t + [0, 30, 10, -20, 5, 0, -5, 15, -10, 25][(t % 10) as usize])).collect();
    let file = dir.path().join("series.csv");
    std::fs::write(&file, format!("time,value\n{}\n", series.join("\n"))).unwrap();
    let output = util::davit(
        "http://127.0.0.1:1",
        dir.path(),
        &["scaling", "backtest", "--series", &file.display().to_string(), "--season", "10", "-o", "json"],
    );
    assert!(output.status.success(), "{output:?}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (hw, naive) = (result["holt_winters_mape"].as_f64().unwrap(), result["naive_seasonal_mape"].as_f64().unwrap());
    assert!(hw < naive / 5.0 && naive > 5.0, "{result:#}");
    let output =
        util::davit("http://127.0.0.1:1", dir.path(), &["scaling", "backtest", "--series", &file.display().to_string(), "--season", "20"]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("needs three seasons"), "{output:?}");
}

#[test]
fn scaling_plan_gives_kubernetes_answer_with_its_arithmetic_and_refuses_bad_input() {
    let dir = util::tempdir();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    // 3 instances asking 2000m each, using 1800m, 1500m and (missing) against 30 %: 82 % → a scale-up, so the
    // missing one counts as 0: 3300m of 6000m = 55 % → 1.833 × 3 → 6. The legacy path allows max(2 × 3, 4) = 6.
    let file = write(
        "cpu.json",
        r#"{"current": 3, "min": 1, "max": 10,
            "metric": {"type": "cpu", "target_utilization": 30},
            "instances": [{"request_millicores": 2000, "usage_millicores": 1800},
                          {"request_millicores": 2000, "usage_millicores": 1500},
                          {"request_millicores": 2000, "usage_millicores": null}]}"#,
    );
    let output = util::davit("http://127.0.0.1:1", dir.path(), &["scaling", "plan", &file, "-o", "json"]);
    assert!(output.status.success(), "{output:?}");
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (&plan["proposal"], &plan["desired"], &plan["utilization_percent"], &plan["limited_by"]),
        (&serde_json::json!(6), &serde_json::json!(6), &serde_json::json!(82), &serde_json::json!("desired_within_range")),
        "{plan:#}"
    );
    // A proposal normalised with a behavior: from 2, the default scale-up policies allow 2 + 4 = 6.
    let file = write("proposal.json", r#"{"current": 2, "max": 20, "proposal": 10, "behavior": {}}"#);
    let output = util::davit("http://127.0.0.1:1", dir.path(), &["scaling", "plan", &file]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.starts_with("desired 6 (proposal 10;"), "{text}");
    assert!(text.contains("increasing faster than the maximum scale rate"), "{text}");
    // Bad input: where, and what.
    let file = write("bad.json", "{\"current\": 3,\n \"max\": \"ten\"}");
    let output = util::davit("http://127.0.0.1:1", dir.path(), &["scaling", "plan", &file]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("bad.json:2:") && stderr.contains("invalid type"), "{stderr}");
    let file = write("min.json", r#"{"current": 3, "min": 5, "max": 4, "proposal": 1}"#);
    let output = util::davit("http://127.0.0.1:1", dir.path(), &["scaling", "plan", &file]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("min 5 is above max 4"), "{stderr}");
}
