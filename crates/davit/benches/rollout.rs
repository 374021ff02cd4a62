//! `cargo bench -p davit --bench rollout`: on `davit dev`,
//!
//! 1. a rolling update of 100 exec allocations (`max_parallel: 10`, `health_check: task_states`,
//!    `min_healthy_time: 1s`): wall time from `davit job run` to the deployment `successful`, next to placing the
//!    same 100 allocations fresh under the same strategy (median of 3 each);
//! 2. a rolling update of a 3-instance HTTP service (busybox httpd) behind the proxy under steady load (two
//!    clients, GET and POST alternately, a new connection each): requests failed and the p50/p99 latency during
//!    the rollout, next to the same load in steady state.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{davit, ms};

const RUNS: usize = 3;
const COUNT: u32 = 100;

fn main() {
    let dir = common::tempdir();
    let proxy_ip = common::proxy_ip();
    let (dev, addr) = common::start_dev_with_proxy(&dir.path().join("data"), "28000-28999", &proxy_ip);
    common::stop_dev_on_panic(&dev);
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));

    let (mut fresh, mut rolled) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let name = format!("roll{run}");
        let spec = |marker: &str| {
            let path = dir.path().join(format!("{name}-{marker}.yaml"));
            std::fs::write(
                &path,
                format!(
                    "name: {name}\nupdate: {{max_parallel: 10, health_check: task_states, min_healthy_time: 1s, healthy_deadline: 1m, progress_deadline: 2m}}\ngroups:\n  - name: g\n    count: {COUNT}\n    tasks:\n      - name: t\n        driver: exec\n        env: {{MARKER: {marker}}}\n        config: {{command: /bin/sleep, args: ['600']}}\n        resources: {{cpu: 10, memory: 8}}\n"
                ),
            )
            .unwrap();
            path.display().to_string()
        };
        let started = Instant::now();
        let (ok, out) = davit(&addr, &["job", "run", &spec("v0")]);
        assert!(ok && out.contains("successful"), "{out}");
        fresh.push(started.elapsed());
        let started = Instant::now();
        let (ok, out) = davit(&addr, &["job", "run", &spec("v1")]);
        assert!(ok && out.contains("successful"), "{out}");
        rolled.push(started.elapsed());
        davit(&addr, &["job", "stop", "--purge", &name]);
    }
    fresh.sort();
    rolled.sort();
    println!("{COUNT} exec allocations, max_parallel 10, min_healthy_time 1s, {RUNS} runs:");
    println!("  placed fresh (job run → successful): median {:.0} ms", ms(fresh[RUNS / 2]));
    println!("  rolled to a new version (job run → successful): median {:.0} ms", ms(rolled[RUNS / 2]));
    println!(
        "  ratio rolled / fresh: {:.1}x (10 waves, each waits for its allocations to run 1 s)",
        ms(rolled[RUNS / 2]) / ms(fresh[RUNS / 2]).max(0.001)
    );

    // The service under load.
    let local_port = common::free_port();
    let target = format!("{proxy_ip}:{local_port}");
    let web = |marker: &str| {
        let path = dir.path().join(format!("web-{marker}.yaml"));
        std::fs::write(&path, web_job(marker, local_port)).unwrap();
        path.display().to_string()
    };
    let (ok, out) = davit(&addr, &["job", "run", &web("v0")]);
    assert!(ok && out.contains("successful"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(&target, false).is_err() {
        assert!(Instant::now() < deadline, "the service does not answer through the proxy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let steady = load(&target, || std::thread::sleep(Duration::from_secs(5)));
    let during = load(&target, || {
        let (ok, out) = davit(&addr, &["job", "run", &web("v1")]);
        assert!(
            ok && out.contains("successful"),
            "the rolling update of the service did not succeed:\n{out}\n{}",
            davit(&addr, &["job", "status", "web"]).1
        );
        // The last old instance waits its shutdown delay.
        std::thread::sleep(Duration::from_millis(1500));
    });
    common::stop_dev(dev);
    println!("3-instance HTTP service behind the proxy, 2 clients (GET and POST, a new connection each):");
    for (what, figures) in [("steady state", &steady), ("during a rolling update", &during)] {
        println!(
            "  {what}: {} requests, {} failed, p50 {:.2} ms, p99 {:.2} ms",
            figures.requests, figures.failed, figures.p50_ms, figures.p99_ms
        );
    }
}

struct Figures {
    requests: usize,
    failed: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Two clients send requests to `target` while `during` runs (at most 5 minutes, 1,000,000 requests each).
fn load(target: &str, during: impl FnOnce()) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (target, stop) = (target.to_string(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(300);
                let (mut latencies, mut failed) = (Vec::new(), 0);
                for n in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let started = Instant::now();
                    match request(&target, n % 2 == 0) {
                        Ok(()) => latencies.push(started.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    during();
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for client in clients {
        let (l, f) = client.join().unwrap();
        latencies.extend(l);
        failed += f;
    }
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).map_or(0.0, |d| ms(*d));
    Figures { requests: latencies.len() + failed, failed, p50_ms: at(0.5), p99_ms: at(0.99) }
}

/// One request through a fresh connection: `GET /` or a `POST` to a CGI script; `Err` unless it answered 200.
fn request(target: &str, post: bool) -> Result<(), String> {
    let mut stream = std::net::TcpStream::connect(target).map_err(|error| error.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|error| error.to_string())?;
    let head: &[u8] = if post {
        b"POST /cgi-bin/marker HTTP/1.0\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi"
    } else {
        b"GET / HTTP/1.0\r\nHost: web\r\n\r\n"
    };
    stream.write_all(head).map_err(|error| error.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|error| error.to_string())?;
    if response.starts_with("HTTP/1.") && response.lines().next().is_some_and(|line| line.contains(" 200 ")) {
        Ok(())
    } else {
        Err(response.lines().next().unwrap_or_default().to_string())
    }
}

fn web_job(marker: &str, local_port: u16) -> String {
    format!(
        r#"name: web
update: {{max_parallel: 1, health_check: checks, min_healthy_time: 1s, healthy_deadline: 30s, progress_deadline: 1m}}
groups:
  - name: web
    count: 3
    shutdown_delay: 1s
    network:
      ports: [{{name: http}}]
    services:
      - {{name: bench-web, port: http, local_port: {local_port}}}
    tasks:
      - name: server
        driver: exec
        env: {{MARKER: "{marker}"}}
        config:
          command: /bin/sh
          args: ["-c", "echo ok > local/health; echo $MARKER > local/index.html; mkdir -p local/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho %s\\n' $MARKER > local/cgi-bin/marker; chmod 755 local/cgi-bin/marker; exec /bin/busybox httpd -f -p 127.0.0.1:${{port.http}} -h local"]
        # Half a core each: a CGI fork under a 5 % CPU quota waits for the next scheduling period (100 ms).
        resources: {{cpu: 500, memory: 32}}
        checks:
          - {{name: health, type: http, port: http, path: /health, body: ok, interval: 200ms, timeout: 150ms}}
"#
    )
}
