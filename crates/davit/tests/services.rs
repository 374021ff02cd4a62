//! End to end: service discovery in `davit dev`. A 3-instance exec web service is reached through the
//! agent's proxy port and by DNS name; an instance whose health check fails leaves the rotation and DNS
//! and comes back when it passes; a task with `upstreams` gets its address and reaches the service.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use davit_api::http::ServiceInfo;
use davit_api::objects::DesiredStatus;
use util::{Dev, eventually, free_port, require_root, runtime};

fn spec(web_port: u16, upstream_port: u16) -> String {
    format!(
        r#"
name: shop
groups:
  - name: web
    count: 3
    network:
      ports: [{{name: http}}]
    services:
      - {{name: web, port: http, tags: [front], local_port: {web_port}}}
    tasks:
      - name: server
        driver: exec
        config:
          command: /bin/sh
          args: ["-c", "echo ok > local/health; echo $DAVIT_ALLOC_NAME > local/index.html; exec /bin/busybox httpd -f -p 127.0.0.1:${{port.http}} -h local"]
        resources: {{cpu: 50, memory: 32}}
        checks:
          - {{name: health, type: http, port: http, path: /health, body: ok, interval: 200ms, timeout: 150ms, failures_before_unhealthy: 2}}
  - name: client
    tasks:
      - name: poller
        driver: exec
        upstreams: [{{service: web, local_port: {upstream_port}}}]
        config:
          command: /bin/sh
          args: ["-c", "echo upstream=$DAVIT_UPSTREAM_WEB_ADDR; while true; do /bin/busybox wget -qO- http://$DAVIT_UPSTREAM_WEB_ADDR/; sleep 0.2; done"]
        resources: {{cpu: 20, memory: 16}}
"#
    )
}

/// Follows the service with blocking queries until `done` holds; panics after `limit`.
fn wait_service(dev: &Dev, name: &str, limit: Duration, done: impl Fn(&ServiceInfo) -> bool) -> ServiceInfo {
    let runtime = runtime();
    let client = dev.client();
    let deadline = Instant::now() + limit;
    let mut index = 0;
    let mut last = None;
    while Instant::now() < deadline {
        let remaining = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(5));
        match runtime.block_on(client.service_blocking(name, index, remaining)) {
            Ok(answer) => {
                if done(&answer.value) {
                    return answer.value;
                }
                index = answer.index;
                last = Some(answer.value);
            }
            // The job is registered before `davit job run` returns, so the service exists.
            Err(error) => panic!("service {name}: {error}"),
        }
    }
    panic!("service {name} did not reach the expected state in {limit:?}; last: {last:#?}");
}

fn healthy(service: &ServiceInfo) -> Vec<&str> {
    service.instances.iter().filter(|instance| instance.healthy).map(|instance| instance.alloc_name.as_str()).collect()
}

/// One HTTP/1.0 GET through a fresh connection to `addr` (IP:port): the body (an allocation name) of a 200,
/// else the error.
fn try_get(addr: &str) -> Result<String, String> {
    let response = http_get(addr, "/");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string();
    if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") { Ok(body) } else { Err(response) }
}

fn get(addr: &str) -> String {
    try_get(addr).unwrap_or_else(|response| panic!("GET through the proxy failed: {response}"))
}

/// Counts per body over `requests` requests.
fn spread(addr: &str, requests: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..requests {
        *counts.entry(get(addr)).or_insert(0) += 1;
    }
    counts
}

/// `dig @dns web.service.davit SRV +short`, as (port, target) sorted.
fn dig_srv(dns: &str, name: &str) -> Vec<(u16, String)> {
    let (ip, port) = dns.split_once(':').unwrap();
    let output = Command::new("dig").args([&format!("@{ip}"), "-p", port, name, "SRV", "+short", "+time=2", "+tries=1"]).output().unwrap();
    assert!(output.status.success(), "dig failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut records: Vec<(u16, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 4, "SRV line `{line}`");
            (fields[2].parse().unwrap(), fields[3].to_string())
        })
        .collect();
    records.sort();
    records
}

fn dig_a(dns: &str, name: &str) -> Vec<String> {
    let (ip, port) = dns.split_once(':').unwrap();
    let output = Command::new("dig").args([&format!("@{ip}"), "-p", port, name, "A", "+short", "+time=2", "+tries=1"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

fn srv_for(service: &ServiceInfo, healthy_only: bool) -> Vec<(u16, String)> {
    let mut records: Vec<(u16, String)> = service
        .instances
        .iter()
        .filter(|instance| instance.healthy || !healthy_only)
        .map(|instance| (instance.port, format!("{}.alloc.davit.", instance.alloc_id)))
        .collect();
    records.sort();
    records
}

#[test]
fn a_proxied_service_is_reached_by_port_dns_and_upstream_and_follows_health() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let (web_port, upstream_port) = (free_port(), free_port());
    // Where the agent's proxy serves the service.
    let proxy_web = format!("{}:{web_port}", dev.proxy_ip);
    let file = dev.write("shop.yaml", &spec(web_port, upstream_port));
    dev.ok(&["job", "run", &file]);

    // The catalog: three healthy instances.
    let web = wait_service(&dev, "web", Duration::from_secs(30), |service| healthy(service).len() == 3);
    assert_eq!((web.job_name.as_str(), web.local_port, web.tags.clone()), ("shop", Some(web_port), vec!["front".to_string()]));
    let names: Vec<String> = web.instances.iter().map(|instance| instance.alloc_name.clone()).collect();
    assert_eq!(names, vec!["shop.web[0]", "shop.web[1]", "shop.web[2]"]);

    // Through the proxy's local port: round robin over the three, exactly.
    let answering = || (0..3).filter_map(|_| try_get(&proxy_web).ok()).collect::<std::collections::BTreeSet<String>>().len();
    eventually("the proxy has all three backends", Duration::from_secs(10), answering, |count| *count == 3);
    let counts = spread(&proxy_web, 30);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![10, 10, 10], "{counts:?}");
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), names);

    // By DNS name: SRV with the instances' ports, A for each allocation.
    let expected = srv_for(&web, true);
    let records =
        eventually("DNS lists the three instances", Duration::from_secs(10), || dig_srv(&dev.dns, "web.service.davit"), |r| *r == expected);
    assert_eq!(records.len(), 3);
    assert_eq!(dig_a(&dev.dns, &format!("{}.alloc.davit", web.instances[0].alloc_id)), vec![web.instances[0].address.clone()]);
    assert_eq!(dig_a(&dev.dns, "web.service.davit").len(), 3);
    assert!(dig_srv(&dev.dns, "nope.service.davit").is_empty());

    // `davit service ls` and `info`: healthy counts, weights, and the proxy's per-instance requests.
    let ls = dev.ok(&["service", "ls"]);
    assert!(ls.contains("HEALTHY/INSTANCES") && ls.lines().any(|line| line.starts_with("web ") && line.contains("3/3")), "{ls}");
    let info = dev.ok(&["service", "info", "web"]);
    assert!(info.contains("3 healthy of 3") && info.contains("REQUESTS"), "{info}");
    for name in &names {
        assert!(info.lines().any(|line| line.contains(name.as_str()) && line.contains("healthy")), "{name}:\n{info}");
    }
    let json: ServiceInfo = serde_json::from_str(&dev.ok(&["service", "info", "web", "-o", "json"])).unwrap();
    let requests: u64 = json.instances.iter().map(|instance| instance.stats.as_ref().expect("stats").requests).sum();
    assert!(requests >= 33, "the proxy counted {requests} requests: {json:#?}");
    assert!(json.instances.iter().all(|instance| instance.weight == 1 && instance.stats.as_ref().unwrap().errors == 0), "{json:#?}");

    // Proxy metrics on the dev's /metrics.
    let metrics = http_get(&dev.bind, "/metrics");
    assert!(
        metrics.contains(&format!("davit_proxy_requests_total{{service=\"web\",backend=\"{}\"", web.instances[0].alloc_id)),
        "{metrics}"
    );

    // A task with an upstream: its address in the env, and it reaches the service through it.
    let status = dev.client();
    let client_alloc = runtime()
        .block_on(status.job_allocations("shop"))
        .unwrap()
        .into_iter()
        .find(|alloc| alloc.group == "client" && alloc.desired_status == DesiredStatus::Run)
        .expect("client allocation");
    let logs = eventually(
        "the upstream task reaches the service",
        Duration::from_secs(20),
        || dev.ok(&["alloc", "logs", &client_alloc.id]),
        |logs| logs.contains("shop.web["),
    );
    assert!(logs.contains(&format!("upstream={}:{upstream_port}", dev.proxy_ip)), "{logs}");

    // An instance whose check fails leaves the rotation and DNS …
    let victim = &web.instances[1];
    let health_file = dev.data_dir.join("agent/allocs").join(&victim.alloc_id).join("server/local/health");
    std::fs::remove_file(&health_file).unwrap_or_else(|error| panic!("{}: {error}", health_file.display()));
    let degraded = wait_service(&dev, "web", Duration::from_secs(10), |service| healthy(service).len() == 2);
    let gone = degraded.instances.iter().find(|instance| instance.alloc_id == victim.alloc_id).unwrap();
    assert!(!gone.healthy && gone.health_description.contains("check health of task server failing"), "{gone:#?}");
    let expected = srv_for(&degraded, true);
    eventually("DNS drops the failing instance", Duration::from_secs(10), || dig_srv(&dev.dns, "web.service.davit"), |r| *r == expected);
    let counts = spread(&proxy_web, 12);
    assert!(!counts.contains_key(&victim.alloc_name), "{counts:?}");
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![6, 6], "{counts:?}");
    assert!(dev.ok(&["service", "ls"]).contains("2/3"));

    // … and returns when it passes again.
    std::fs::write(&health_file, "ok\n").unwrap();
    let recovered = wait_service(&dev, "web", Duration::from_secs(10), |service| healthy(service).len() == 3);
    let expected = srv_for(&recovered, true);
    eventually("DNS lists the instance again", Duration::from_secs(10), || dig_srv(&dev.dns, "web.service.davit"), |r| *r == expected);
    let counts = spread(&proxy_web, 9);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![3, 3, 3], "{counts:?}");

    // Stopping the job removes the service: the listener closes and the name is gone.
    dev.ok(&["job", "stop", "shop"]);
    eventually("DNS forgets the service", Duration::from_secs(10), || dig_srv(&dev.dns, "web.service.davit"), Vec::is_empty);
    let out = dev.davit(&["service", "info", "web"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no service `web`"), "{out:?}");
    eventually("the proxy closes its listener", Duration::from_secs(10), || TcpStream::connect(&proxy_web).is_err(), |closed| *closed);
}

/// `GET path` on `host:port` over HTTP/1.0: the whole response (or why there is none).
fn http_get(host_port: &str, path: &str) -> String {
    let mut stream = match TcpStream::connect(host_port) {
        Ok(stream) => stream,
        Err(error) => return format!("cannot connect to {host_port}: {error}"),
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: davit\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
