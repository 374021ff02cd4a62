//! `cargo bench -p davit --bench autoscale`: the autoscaler on `davit dev` with its default 5 s sync and 5 s
//! usage sampling, and a CPU-bound HTTP service (a busybox CGI script that spins, 100 millicores per instance,
//! scaled on CPU at 50 %) behind the proxy:
//!
//! 1. capacity: one instance's requests/s with four clients in a closed loop (no autoscaling);
//! 2. a load step from 20 % to 300 % of that capacity (open loop, 60 s): the time until an added instance serves,
//!    and the requests over the latency SLO during the step — next to the same step on one fixed instance;
//! 3. a periodic load (a 60-second season: 300 % during its last 20 s, 20 % otherwise), four seasons, reactive
//!    vs predictive (`predictive: {season: 60s, lead_time: 15s, mode: scale}`): requests over the SLO during the
//!    fourth season's peak, and how many instances served when it began.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{davit, ms};

/// Latency objective of one request.
const SLO: Duration = Duration::from_millis(500);

fn main() {
    let dir = common::tempdir();
    let proxy_ip = common::proxy_ip();
    let (dev, addr) = common::start_dev_with_proxy(&dir.path().join("data"), "28000-28999", &proxy_ip);
    common::stop_dev_on_panic(&dev);
    println!("machine: {} cores; autoscaler sync 5s, usage sampling 5s; SLO {} ms", cores(), SLO.as_millis());

    // 1. Capacity of one instance.
    let (calibrate, target) = run_job(&dir, &addr, &proxy_ip, "calib", "");
    let capacity = closed_loop(&target, 4, Duration::from_secs(15));
    davit(&addr, &["job", "stop", "--purge", &calibrate]);
    println!("one instance (100 millicores): {capacity:.1} requests/s (4 clients, closed loop, 15 s)");

    // 2. A step from 20 % to 300 %.
    let scaling = "    scaling:\n      min: 1\n      max: 4\n      metrics: [{type: cpu, target_utilization: 50}]\n";
    for (name, block) in [("fixed", ""), ("step", scaling)] {
        let (job, target) = run_job(&dir, &addr, &proxy_ip, name, block);
        let _quiet = open_loop(&target, capacity * 0.2, Duration::from_secs(20), &addr, &job);
        let step = open_loop(&target, capacity * 3.0, Duration::from_secs(60), &addr, &job);
        let serving = step.serving_at.map_or("never".to_string(), |at| format!("{:.1} s", at.as_secs_f64()));
        println!(
            "step 20 % → 300 % ({:.1} → {:.1} requests/s), {name}: {} of {} requests over the SLO ({:.1} %), p50 {:.0} ms, p99 {:.0} ms; a second instance served after {serving}; {} instances at the end",
            capacity * 0.2,
            capacity * 3.0,
            step.over_slo,
            step.sent,
            100.0 * step.over_slo as f64 / step.sent.max(1) as f64,
            ms(step.p50),
            ms(step.p99),
            step.instances_at_end
        );
        davit(&addr, &["job", "stop", "--purge", &job]);
    }

    // 3. A periodic load, reactive vs predictive.
    let season = Duration::from_secs(60);
    for (name, extra) in [("reactive", ""), ("predictive", "      predictive: {season: 60s, lead_time: 15s, mode: scale}\n")] {
        let block = format!("{scaling}{extra}      behavior:\n        scale_down: {{stabilization_window: 10s}}\n");
        let (job, target) = run_job(&dir, &addr, &proxy_ip, name, &block);
        let mut last_peak = None;
        for k in 0..4 {
            let _quiet = open_loop(&target, capacity * 0.2, season - Duration::from_secs(20), &addr, &job);
            let serving = healthy_instances(&addr, &job);
            let peak = open_loop(&target, capacity * 3.0, Duration::from_secs(20), &addr, &job);
            if k == 3 {
                last_peak = Some((serving, peak));
            }
        }
        let (serving, peak) = last_peak.expect("four seasons ran");
        println!(
            "periodic load (season 60 s, peak 300 % for 20 s), {name}: fourth peak began with {serving} instances serving; {} of {} requests over the SLO ({:.1} %), p99 {:.0} ms",
            peak.over_slo,
            peak.sent,
            100.0 * peak.over_slo as f64 / peak.sent.max(1) as f64,
            ms(peak.p99)
        );
        davit(&addr, &["job", "stop", "--purge", &job]);
    }
    common::stop_dev(dev);
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Runs the service as job `name` with `scaling` (YAML lines of the group) and waits until it answers through
/// the proxy: (job, `ip:port` of its proxy listener).
fn run_job(dir: &tempfile::TempDir, addr: &str, proxy_ip: &str, name: &str, scaling: &str) -> (String, String) {
    let local_port = common::free_port();
    let spec = format!(
        r#"name: {name}
groups:
  - name: web
    count: 1
    network:
      ports: [{{name: http}}]
    services:
      - {{name: {name}-web, port: http, local_port: {local_port}}}
{scaling}    tasks:
      - name: server
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "echo ok > local/health; mkdir -p local/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\ni=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; echo burnt\\n' > local/cgi-bin/burn; chmod 755 local/cgi-bin/burn; exec /bin/busybox httpd -f -p 127.0.0.1:${{port.http}} -h local"]
        resources: {{cpu: 100, memory: 32}}
        checks:
          - {{name: health, type: http, port: http, path: /health, interval: 1s, timeout: 900ms}}
"#
    );
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, spec).unwrap();
    let (ok, out) = davit(addr, &["job", "run", &path.display().to_string()]);
    assert!(ok, "{out}");
    let target = format!("{proxy_ip}:{local_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(&target).is_err() {
        assert!(Instant::now() < deadline, "{name} does not answer through the proxy");
        std::thread::sleep(Duration::from_millis(100));
    }
    (name.to_string(), target)
}

/// One `GET /cgi-bin/burn` on a fresh connection: its latency, or why it failed.
fn request(target: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(target).map_err(|error| error.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|error| error.to_string())?;
    stream.write_all(b"GET /cgi-bin/burn HTTP/1.0\r\nHost: burn\r\n\r\n").map_err(|error| error.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|error| error.to_string())?;
    if response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200") {
        Ok(started.elapsed())
    } else {
        Err(response.lines().next().unwrap_or("empty").to_string())
    }
}

/// Requests/s of `clients` clients each sending the next request when the last answered, for `span`.
fn closed_loop(target: &str, clients: usize, span: Duration) -> f64 {
    let started = Instant::now();
    let answered: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut answered = 0;
                    while started.elapsed() < span && answered < 100_000 {
                        answered += usize::from(request(target).is_ok());
                    }
                    answered
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).sum()
    });
    answered as f64 / started.elapsed().as_secs_f64()
}

struct Window {
    sent: usize,
    over_slo: usize,
    p50: Duration,
    p99: Duration,
    /// When a second instance of the job's service was first healthy, after the window began.
    serving_at: Option<Duration>,
    instances_at_end: usize,
}

/// Sends `rate` requests/s (open loop: on schedule, whatever the answers) for `span`; a failed request counts as
/// over the SLO. Meanwhile watches how many instances of the job's service are healthy.
fn open_loop(target: &str, rate: f64, span: Duration, addr: &str, job: &str) -> Window {
    let started = Instant::now();
    let total = ((rate * span.as_secs_f64()).round() as usize).clamp(1, 20_000);
    let (send, receive) = mpsc::channel::<Instant>();
    let receive = Arc::new(std::sync::Mutex::new(receive));
    let (results_send, results) = mpsc::channel::<Result<Duration, String>>();
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (receive, results_send, target) = (Arc::clone(&receive), results_send.clone(), target.to_string());
            std::thread::spawn(move || {
                loop {
                    let Ok(due) = receive.lock().unwrap().recv() else { return };
                    // Latency counts from when the request was due, not when a worker was free.
                    let outcome = request(&target).map(|_| due.elapsed());
                    let _ = results_send.send(outcome);
                }
            })
        })
        .collect();
    drop(results_send);
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (watching, addr, job) = (Arc::clone(&watching), addr.to_string(), job.to_string());
        std::thread::spawn(move || {
            let mut serving_at = None;
            let mut instances = 0;
            while watching.load(Ordering::Relaxed) {
                instances = healthy_instances(&addr, &job);
                if instances >= 2 && serving_at.is_none() {
                    serving_at = Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            (serving_at, instances)
        })
    };
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        send.send(due).unwrap();
    }
    drop(send);
    let mut latencies = Vec::with_capacity(total);
    let mut over_slo = 0;
    for outcome in results.iter() {
        match outcome {
            Ok(latency) => {
                over_slo += usize::from(latency > SLO);
                latencies.push(latency);
            }
            Err(_) => over_slo += 1,
        }
    }
    for worker in workers {
        worker.join().unwrap();
    }
    watching.store(false, Ordering::Relaxed);
    let (serving_at, instances_at_end) = watcher.join().unwrap();
    latencies.sort();
    let at =
        |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default();
    Window { sent: total, over_slo, p50: at(0.5), p99: at(0.99), serving_at, instances_at_end }
}

/// Healthy instances of the job's service in the catalog.
fn healthy_instances(addr: &str, job: &str) -> usize {
    let (ok, out) = davit(addr, &["service", "info", &format!("{job}-web"), "-o", "json"]);
    if !ok {
        return 0;
    }
    let info: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    info["instances"].as_array().map_or(0, |instances| instances.iter().filter(|i| i["healthy"] == true).count())
}
