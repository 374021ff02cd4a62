//! `cargo bench -p davit --bench cold_start`: a service scaled to zero, woken by its first request (issue 22).
//!
//! Two groups with `scale_to_zero_after: 10s` on `davit dev` (autoscaler and usage sampling every second): a
//! busybox httpd as an exec task and as a container (the test busybox image from a registry on loopback, warm
//! cache), each with an HTTP check every 500 ms. Each round waits until both are at zero with no instance left,
//! then times one `GET /` through the proxy's `local_port` until its answer: the request is held while the
//! group is scaled to 1, placed, started and found healthy. Next to it, in the same run, the same httpd started
//! bare (fork/exec, and `crun run --detach` of a bundle of the same image on the host network) and polled every
//! millisecond until it answers 200 (a refused connection is polled again; any other answer fails the bench). Needs root, crun, docker-registry, skopeo, umoci.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use davit_oci::testing::{TestRegistry, test_images_dir};
use davit_oci::{ImageStore, ImageStoreConfig};

mod common;

use common::{crun, davit, ms, on_path};

const ROUNDS: usize = 7;

fn main() {
    let missing: Vec<&str> =
        ["crun", "docker-registry", "skopeo", "umoci", "unshare", "busybox"].into_iter().filter(|tool| !on_path(tool)).collect();
    if !missing.is_empty() {
        println!("skipping: needs {}", missing.join(", "));
        return;
    }
    let dir = common::tempdir();
    let registry = TestRegistry::start();
    registry.push_test_image("busybox:1", &test_images_dir().join("busybox"));
    println!(
        "machine: {} cores; {ROUNDS} rounds; times to the first HTTP answer",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Bare baselines.
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello\n").unwrap();
    let mut bare_exec = Vec::new();
    for _ in 0..ROUNDS {
        let port = common::free_port();
        let start = Instant::now();
        let mut child = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h", &www.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        bare_exec.push(first_answer(&format!("127.0.0.1:{port}"), start));
        let _ = child.kill();
        let _ = child.wait();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let store =
        ImageStore::open(ImageStoreConfig { root: dir.path().join("images"), registries: Default::default(), max_cache_bytes: 1 << 30 })
            .unwrap();
    let busybox = runtime.block_on(store.pull(&format!("{}/busybox:1", registry.host()), &davit_oci::no_progress)).unwrap();
    let mut bare_crun = Vec::new();
    for round in 0..ROUNDS {
        let port = common::free_port();
        let bundle = dir.path().join(format!("bundle-{round}"));
        std::fs::create_dir_all(&bundle).unwrap();
        common::write_crun_bundle(
            &bundle,
            &busybox.rootfs,
            &["/bin/httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h", "/var/www"],
            true,
        );
        let id = format!("davit-bench-cold-{}-{round}", std::process::id());
        let start = Instant::now();
        assert!(crun(&["run", "--detach", "--bundle", &bundle.display().to_string(), &id]), "crun run failed");
        bare_crun.push(first_answer(&format!("127.0.0.1:{port}"), start));
        crun(&["delete", "--force", &id]);
    }

    // davit: two groups scaled to zero.
    let proxy_ip = common::proxy_ip();
    let extra = ["--autoscaler-interval", "1s", "--usage-interval", "1s"];
    let (dev, addr) = common::start_dev_with(&dir.path().join("data"), "29000-29499", &proxy_ip, &extra);
    common::stop_dev_on_panic(&dev);
    let exec_task = r#"      - name: server
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "mkdir -p local/www && echo hello > local/www/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:${port.http} -h local/www"]"#
        .to_string();
    let container_task = format!(
        r#"      - name: server
        driver: container
        config:
          image: "{}/busybox:1"
          command: "exec httpd -f -p 127.0.0.1:${{port.http}} -h /var/www""#,
        registry.host()
    );
    let mut groups = Vec::new();
    for (name, task) in [("cold-exec", exec_task), ("cold-box", container_task)] {
        let local_port = common::free_port();
        let spec = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &spec,
            format!(
                "name: {name}\ngroups:\n  - name: web\n    count: 1\n    network: {{ports: [{{name: http}}]}}\n    services: [{{name: {name}, port: http, local_port: {local_port}}}]\n    scaling: {{min: 0, max: 1, scale_to_zero_after: 10s}}\n    tasks:\n{task}\n        resources: {{cpu: 50, memory: 32}}\n        checks: [{{name: http, type: http, port: http, path: /, interval: 500ms, timeout: 400ms}}]\n"
            ),
        )
        .unwrap();
        let (ok, output) = davit(&addr, &["job", "run", &spec.display().to_string()]);
        assert!(ok, "{output}");
        groups.push((name, format!("{proxy_ip}:{local_port}"), Vec::new()));
    }
    for _ in 0..ROUNDS {
        for (name, _, _) in &groups {
            wait_at_zero(&addr, name);
        }
        for (_, target, times) in &mut groups {
            let start = Instant::now();
            times.push(first_answer(target, start));
        }
    }
    common::stop_dev(dev);

    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (bare_exec, bare_crun) = (median(&mut bare_exec), median(&mut bare_crun));
    for ((name, _, times), bare, what) in
        groups.iter_mut().zip([bare_exec, bare_crun]).zip(["fork/exec", "crun run --detach"]).map(|((g, b), w)| (g, b, w))
    {
        let (low, high) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        let davit = median(times);
        println!(
            "{name}: first request at zero answered after {:.0} ms median (min {:.0}, max {:.0}); bare {what} + first answer {:.1} ms; davit − bare {:.0} ms",
            ms(davit),
            ms(low),
            ms(high),
            ms(bare),
            ms(davit) - ms(bare)
        );
    }
}

/// Polls `GET /` on `target` every millisecond until it answers 200 (at most 60 s); the time since `start`.
fn first_answer(target: &str, start: Instant) -> Duration {
    let deadline = start + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(target) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            let mut response = String::new();
            if write!(stream, "GET / HTTP/1.0\r\nHost: cold\r\n\r\n").is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && response.starts_with("HTTP/1.")
            {
                let status = response.lines().next().unwrap_or_default();
                assert!(status.contains(" 200 "), "{target} answered {status}");
                return start.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "{target} did not answer within 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (at most 60 s) until the job's group is at zero and none of its allocations runs.
fn wait_at_zero(addr: &str, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, status) = davit(addr, &["job", "status", job, "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        let count = status["job"]["spec"]["groups"][0]["count"].as_u64();
        let live = status["allocations"].as_array().map_or(usize::MAX, |allocs| {
            allocs.iter().filter(|alloc| !matches!(alloc["client_status"].as_str(), Some("complete" | "failed" | "lost"))).count()
        });
        if count == Some(0) && live == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{job} did not scale to zero within 60 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
