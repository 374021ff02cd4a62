//! Throughput and latency of the davit proxy next to haproxy, both in front of the same three backends.
//!
//! Run with `cargo run --release -p davit-proxy --example proxy_bench`. Needs `wrk` and
//! `/usr/sbin/haproxy`; without them it says so and exits. Each target gets
//! `wrk -t1 -c32 -d5s --latency`: a backend directly (the baseline), the davit proxy (round robin, HTTP)
//! and haproxy (`balance roundrobin`, `option http-keep-alive`).

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use davit_proxy::{Algorithm, Backend, Mode, Proxy, ProxyConfig, ServiceConfig};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const HAPROXY: &str = "/usr/sbin/haproxy";

struct Figures {
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn main() {
    if let Err(message) = try_main() {
        eprintln!("proxy_bench: {message}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<(), String> {
    if Command::new("wrk").arg("--version").output().is_err() || !std::path::Path::new(HAPROXY).exists() {
        println!("skipping: needs wrk and {HAPROXY}");
        return Ok(());
    }

    // Backends and proxy on separate runtimes, as they would be separate processes.
    let backend_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let backends: Vec<SocketAddr> = (0..3).map(|index| backend_runtime.block_on(spawn_backend(index))).collect();

    let proxy_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let (_proxy, davit_addr) = proxy_runtime.block_on(async {
        let proxy = Proxy::start(ProxyConfig::default());
        let mut config = ServiceConfig::new("bench", Mode::Http, "127.0.0.1:0".parse().unwrap());
        config.balance = Algorithm::RoundRobin;
        let addr = proxy.set_service(config).await.map_err(|e| e.to_string())?;
        let list = backends.iter().enumerate().map(|(index, &addr)| Backend::new(format!("b{index}"), addr)).collect();
        proxy.set_backends("bench", list).map_err(|e| e.to_string())?;
        Ok::<_, String>((proxy, addr))
    })?;

    let haproxy_addr = free_port()?;
    let mut haproxy = HaproxyGuard(start_haproxy(haproxy_addr, &backends)?);
    wait_until_listening(haproxy_addr, &mut haproxy.0)?;

    let direct = wrk(backends[0])?;
    let davit = wrk(davit_addr)?;
    let haproxy_figures = wrk(haproxy_addr)?;
    haproxy.stop();

    println!();
    println!("wrk -t1 -c32 -d5s --latency, 3 backends on loopback, round robin");
    println!("{:<10} {:>12} {:>10} {:>10}", "target", "requests/s", "p50", "p99");
    for (name, figures) in [("direct", &direct), ("davit", &davit), ("haproxy", &haproxy_figures)] {
        println!("{:<10} {:>12.0} {:>10} {:>10}", name, figures.requests_per_second, millis(figures.p50), millis(figures.p99));
    }
    println!();
    println!("davit/haproxy requests/s: {:.2}", davit.requests_per_second / haproxy_figures.requests_per_second);
    println!("added p50 vs direct: davit {} , haproxy {}", added(davit.p50, direct.p50), added(haproxy_figures.p50, direct.p50));
    Ok(())
}

async fn spawn_backend(index: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    let body = Bytes::from(format!("backend b{index}\n"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

fn free_port() -> Result<SocketAddr, String> {
    let listener = StdTcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

fn start_haproxy(listen: SocketAddr, backends: &[SocketAddr]) -> Result<Child, String> {
    let mut config = format!(
        "global\n    maxconn 4096\n\ndefaults\n    mode http\n    option http-keep-alive\n    timeout connect 2s\n    \
         timeout client 30s\n    timeout server 30s\n\nfrontend bench\n    bind {listen}\n    default_backend bench\n\n\
         backend bench\n    balance roundrobin\n"
    );
    for (index, backend) in backends.iter().enumerate() {
        config.push_str(&format!("    server b{index} {backend}\n"));
    }
    let path = std::env::temp_dir().join(format!("davit-proxy-bench-{}.cfg", std::process::id()));
    std::fs::write(&path, config).map_err(|e| format!("write {}: {e}", path.display()))?;
    Command::new(HAPROXY)
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start haproxy: {e}"))
}

struct HaproxyGuard(Child);

impl HaproxyGuard {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for HaproxyGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_until_listening(addr: SocketAddr, haproxy: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = haproxy.try_wait() {
            return Err(format!("haproxy exited with {status}"));
        }
        if StdTcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("haproxy did not listen on {addr} within 10 s"))
}

fn wrk(addr: SocketAddr) -> Result<Figures, String> {
    let output = Command::new("wrk")
        .args(["-t1", "-c32", "-d5s", "--latency", &format!("http://{addr}/")])
        .output()
        .map_err(|e| format!("run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
            .ok_or_else(|| format!("no {prefix:?} in wrk output:\n{text}"))
    };
    let requests_per_second = field("Requests/sec:")?.parse::<f64>().map_err(|e| e.to_string())?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        println!("wrk reported errors against {addr}:\n{text}");
    }
    Ok(Figures { requests_per_second, p50: parse_duration(field("50%")?)?, p99: parse_duration(field("99%")?)? })
}

/// Parses wrk's `123.45us`, `1.23ms` or `1.02s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(|| format!("bad duration {text}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("bad duration {text}"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("bad duration unit {text}")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn millis(duration: Duration) -> String {
    format!("{:.3}ms", duration.as_secs_f64() * 1e3)
}

fn added(value: Duration, baseline: Duration) -> String {
    format!("{:+.3}ms", (value.as_secs_f64() - baseline.as_secs_f64()) * 1e3)
}
