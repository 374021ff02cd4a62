//! Throughput and latency of the davit proxy next to haproxy, both in front of the same three backends,
//! in HTTP (L7) and TCP (L4) mode.
//!
//! Run with `cargo run --release -p davit-proxy --example proxy_bench`. Needs `wrk` and
//! `/usr/sbin/haproxy`; without them it says so and exits.
//!
//! What is measured, and why it is a fair comparison:
//!
//! - Every target gets the same `wrk -t1`: [`CONNECTIONS`] keep-alive connections for throughput and
//!   requests/s, then one connection for latency. With [`CONNECTIONS`] connections the load is closed
//!   loop and saturating, so p50 there is roughly `connections / throughput` and says nothing about the
//!   time one request spends in the proxy; the latency figures (and "added p50") come from the
//!   single-connection run, where each request waits for nobody but the proxy and the backend.
//! - Both proxies use the same number of threads: the davit proxy gets `threads` serving threads
//!   (`ProxyConfig::threads`, each with its own event loop and listener, like haproxy's threads), haproxy
//!   gets `nbthread` of the same number (both would default to one per CPU). `PROXY_BENCH_THREADS`
//!   changes it (default 2, the cores of the reference machine).
//! - Both keep connections alive on both sides and share idle backend connections between clients:
//!   haproxy with `option http-keep-alive` and `http-reuse always`, davit with its per-backend pool.
//! - Both do the same header work: davit always adds `X-Forwarded-For`, `-Proto` and `-Host` and strips
//!   hop-by-hop headers, so haproxy gets `option forwardfor` and the two `set-header` rules (it strips
//!   hop-by-hop headers anyway). Neither logs.
//! - The backends are deliberately minimal (a canned keep-alive response written straight to the socket,
//!   on their own one-thread runtime), so that the proxies, not the backends, use the CPU; the "direct"
//!   row shows how far above the proxies' figures the backends are.
//! - Besides requests/s, each run reads how much CPU time the target's threads used per request (from
//!   `/proc/<pid>/task/*/schedstat`: the davit proxy's serving threads, haproxy's threads, for "direct"
//!   the backends'). On a shared machine requests/s moves with whatever else runs; CPU per request
//!   mostly does not, and it is what decides requests/s when the proxy is what saturates.
//! - Targets are measured in rounds, in a rotating order, and the median round is shown, so a burst of
//!   other work on a shared machine hurts one round of one target rather than one target entirely.
//!   `PROXY_BENCH_SECONDS` sets the length of one wrk run (default 3), `PROXY_BENCH_ROUNDS` the rounds.
//!
//! `PROXY_BENCH_ONLY=davit-http` (or any target name) loads just that target for the length of a run,
//! which is handy under `perf record`.

use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use davit_proxy::{Algorithm, Backend, Mode, Proxy, ProxyConfig, ServiceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HAPROXY: &str = "/usr/sbin/haproxy";

/// Connections of the throughput runs.
const CONNECTIONS: usize = 32;

/// Thread names of the backends' runtime and prefix of the davit proxy's serving threads' names (at most
/// 15 bytes: what Linux keeps of a thread name).
const BACKEND_THREADS: &str = "bench-backend";
const PROXY_THREADS: &str = "davit-proxy-";

#[derive(Debug, Clone, Copy)]
struct Figures {
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time the target's threads spent per request.
    cpu_per_request: Duration,
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// Whose CPU time counts for this target.
    cpu: Cpu,
}

/// Threads whose CPU time is read from `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU).
#[derive(Clone, Copy)]
enum Cpu {
    /// Threads of this process whose name starts with this.
    Named(&'static str),
    /// Every thread of another process.
    Process(u32),
}

impl Cpu {
    fn used(self) -> Duration {
        let (pid, name) = match self {
            Cpu::Named(name) => (std::process::id(), Some(name)),
            Cpu::Process(pid) => (pid, None),
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
        let mut nanos = 0u64;
        for task in tasks.flatten() {
            let path = task.path();
            if let Some(name) = name
                && std::fs::read_to_string(path.join("comm")).map_or(true, |comm| !comm.starts_with(name))
            {
                continue;
            }
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            nanos += schedstat.split_whitespace().next().and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
        }
        Duration::from_nanos(nanos)
    }
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
    let threads: usize = env_number("PROXY_BENCH_THREADS", 2)?;
    let seconds: u64 = env_number("PROXY_BENCH_SECONDS", 3)?;
    let rounds: usize = env_number("PROXY_BENCH_ROUNDS", 3)?;

    // Backends and proxy on separate runtimes, as they would be separate processes.
    let backend_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(BACKEND_THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let backends: Vec<SocketAddr> = (0..3).map(|index| backend_runtime.block_on(spawn_backend(index))).collect();

    // The proxy serves on `threads` threads of its own; this runtime (on the main thread) only sets it up.
    let setup_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (_proxy, davit_http, davit_tcp) = setup_runtime.block_on(async {
        let proxy = Proxy::start(ProxyConfig { threads, ..ProxyConfig::default() });
        let list: Vec<Backend> = backends.iter().enumerate().map(|(index, &addr)| Backend::new(format!("b{index}"), addr)).collect();
        let mut addrs = Vec::new();
        for (name, mode) in [("bench-http", Mode::Http), ("bench-tcp", Mode::Tcp)] {
            let mut config = ServiceConfig::new(name, mode, "127.0.0.1:0".parse().unwrap());
            config.balance = Algorithm::RoundRobin;
            addrs.push(proxy.set_service(config).await.map_err(|e| e.to_string())?);
            proxy.set_backends(name, list.clone()).map_err(|e| e.to_string())?;
        }
        Ok::<_, String>((proxy, addrs[0], addrs[1]))
    })?;

    let (haproxy_http, haproxy_tcp) = (free_port()?, free_port()?);
    let mut haproxy = HaproxyGuard(start_haproxy(haproxy_http, haproxy_tcp, &backends, threads)?);
    wait_until_listening(haproxy_http, &mut haproxy.0)?;
    wait_until_listening(haproxy_tcp, &mut haproxy.0)?;

    let (backend_cpu, davit_cpu, haproxy_cpu) = (Cpu::Named(BACKEND_THREADS), Cpu::Named(PROXY_THREADS), Cpu::Process(haproxy.0.id()));
    let http = [
        Target { name: "direct", addr: backends[0], cpu: backend_cpu },
        Target { name: "davit-http", addr: davit_http, cpu: davit_cpu },
        Target { name: "haproxy-http", addr: haproxy_http, cpu: haproxy_cpu },
    ];
    let tcp = [
        Target { name: "direct", addr: backends[0], cpu: backend_cpu },
        Target { name: "davit-tcp", addr: davit_tcp, cpu: davit_cpu },
        Target { name: "haproxy-tcp", addr: haproxy_tcp, cpu: haproxy_cpu },
    ];

    if let Ok(only) = std::env::var("PROXY_BENCH_ONLY") {
        let target = http.iter().chain(&tcp).find(|target| target.name == only).ok_or_else(|| format!("no target {only}"))?;
        let figures = wrk(target, CONNECTIONS, seconds)?;
        println!(
            "{only}: {:.0} requests/s, p50 {}, {} CPU per request",
            figures.requests_per_second,
            millis(figures.p50),
            micros(figures.cpu_per_request)
        );
        return Ok(());
    }

    println!("3 backends on loopback, round robin, proxies on {threads} threads, wrk -t1, {seconds} s per run");
    for (title, targets, rounds) in [("HTTP (L7)", &http, rounds), ("TCP (L4)", &tcp, 1)] {
        let throughput = measure(targets, CONNECTIONS, seconds, rounds)?;
        let latency = measure(targets, 1, seconds, 1)?;
        print_table(title, targets, rounds, &throughput, &latency);
    }
    haproxy.stop();
    Ok(())
}

/// Median over `rounds` of `wrk -c<connections>` against each target, the order rotating per round.
fn measure(targets: &[Target], connections: usize, seconds: u64, rounds: usize) -> Result<Vec<Figures>, String> {
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for offset in 0..targets.len() {
            let index = (round + offset) % targets.len();
            runs[index].push(wrk(&targets[index], connections, seconds)?);
        }
    }
    Ok(runs
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
            runs[runs.len() / 2]
        })
        .collect())
}

fn print_table(title: &str, targets: &[Target], rounds: usize, throughput: &[Figures], latency: &[Figures]) {
    println!();
    println!("{title}: -c{CONNECTIONS} median of {rounds} round(s); latency from -c1");
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "target", "req/s", "p50", "p99", "CPU/req", "c1 req/s", "c1 p50", "c1 p99"
    );
    for ((target, throughput), latency) in targets.iter().zip(throughput).zip(latency) {
        println!(
            "{:<14} {:>10.0} {:>9} {:>9} {:>9} {:>9.0} {:>9} {:>9}",
            target.name,
            throughput.requests_per_second,
            millis(throughput.p50),
            millis(throughput.p99),
            micros(throughput.cpu_per_request),
            latency.requests_per_second,
            millis(latency.p50),
            millis(latency.p99)
        );
    }
    let (direct, davit, haproxy) = (0, 1, 2);
    println!(
        "davit/haproxy requests/s: {:.2}; CPU per request: {:.2}",
        throughput[davit].requests_per_second / throughput[haproxy].requests_per_second,
        throughput[davit].cpu_per_request.as_secs_f64() / throughput[haproxy].cpu_per_request.as_secs_f64()
    );
    println!(
        "added p50 vs direct, -c1: davit {}, haproxy {}; -c{CONNECTIONS}: davit {}, haproxy {}",
        added(latency[davit].p50, latency[direct].p50),
        added(latency[haproxy].p50, latency[direct].p50),
        added(throughput[davit].p50, throughput[direct].p50),
        added(throughput[haproxy].p50, throughput[direct].p50),
    );
    let proxies_best = throughput[davit].requests_per_second.max(throughput[haproxy].requests_per_second);
    if throughput[direct].requests_per_second < 1.5 * proxies_best {
        println!("warning: the backends are not much faster than the proxies; they may be what is measured");
    }
}

/// A backend that answers every request with `backend b<index>` over keep-alive. It assumes what wrk
/// sends (requests without bodies, possibly several in one read) and counts requests by their blank line,
/// so it costs next to nothing next to the proxies.
async fn spawn_backend(index: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    let body = format!("backend b{index}\n");
    let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}", body.len()).into_bytes();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_backend_connection(stream, response.clone()));
        }
    });
    addr
}

async fn serve_backend_connection(mut stream: tokio::net::TcpStream, response: Vec<u8>) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::new();
    loop {
        let Ok(read) = stream.read(&mut buffer[filled..]).await else { return };
        if read == 0 {
            return;
        }
        filled += read;
        let mut consumed = 0;
        while let Some(end) = find_blank_line(&buffer[consumed..filled]) {
            consumed += end;
            out.extend_from_slice(&response);
        }
        buffer.copy_within(consumed..filled, 0);
        filled -= consumed;
        if filled == buffer.len() {
            return; // A request head larger than the buffer: not from wrk.
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// Offset just past the first `\r\n\r\n`.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|window| window == b"\r\n\r\n").map(|position| position + 4)
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value.parse().map_err(|_| format!("{name}={value} is not a number")),
        Err(_) => Ok(default),
    }
}

fn free_port() -> Result<SocketAddr, String> {
    let listener = StdTcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

fn start_haproxy(http: SocketAddr, tcp: SocketAddr, backends: &[SocketAddr], threads: usize) -> Result<Child, String> {
    let mut config = format!(
        "global\n    maxconn 4096\n    nbthread {threads}\n\n\
         defaults\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend bench-http\n    mode http\n    bind {http}\n    option http-keep-alive\n    option forwardfor\n    \
         http-request set-header X-Forwarded-Proto http\n    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n    \
         default_backend bench-http\n\n\
         backend bench-http\n    mode http\n    balance roundrobin\n    http-reuse always\n"
    );
    for (index, backend) in backends.iter().enumerate() {
        config.push_str(&format!("    server b{index} {backend}\n"));
    }
    config.push_str(&format!(
        "\nfrontend bench-tcp\n    mode tcp\n    bind {tcp}\n    default_backend bench-tcp\n\n\
         backend bench-tcp\n    mode tcp\n    balance roundrobin\n"
    ));
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

fn wrk(target: &Target, connections: usize, seconds: u64) -> Result<Figures, String> {
    let addr = target.addr;
    let cpu_before = target.cpu.used();
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", &format!("http://{addr}/")])
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
    let cpu = target.cpu.used().saturating_sub(cpu_before);
    let requests_per_second = field("Requests/sec:")?.parse::<f64>().map_err(|e| e.to_string())?;
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(count, _)| count.parse::<f64>().ok())
        .ok_or_else(|| format!("no request count in wrk output:\n{text}"))?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        println!("wrk reported errors against {addr}:\n{text}");
    }
    Ok(Figures {
        requests_per_second,
        p50: parse_duration(field("50%")?)?,
        p99: parse_duration(field("99%")?)?,
        cpu_per_request: cpu.div_f64(requests.max(1.0)),
    })
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

fn micros(duration: Duration) -> String {
    format!("{:.1}us", duration.as_secs_f64() * 1e6)
}

fn added(value: Duration, baseline: Duration) -> String {
    format!("{:+.3}ms", (value.as_secs_f64() - baseline.as_secs_f64()) * 1e3)
}
