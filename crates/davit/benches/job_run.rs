//! `cargo bench -p davit --bench job_run`: time from `davit job run` to every allocation running, for a
//! 10-allocation exec job in `davit dev` (median of 5), next to spawning the same 10 processes bare in
//! the same run; and the resident memory of the idle `davit dev` process (server + agent).

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{davit, ms};

const RUNS: usize = 5;
const COUNT: u32 = 10;

fn main() {
    let dir = std::env::temp_dir().join(format!("davit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (dev, addr) = common::start_dev(&dir.join("data"), "26000-26999");
    std::thread::sleep(Duration::from_secs(2)); // let start-up settle before reading idle memory
    let idle_rss = rss_kib(dev.id());

    let mut davit_times = Vec::new();
    let mut bare_times = Vec::new();
    for run in 0..RUNS {
        let spec = dir.join(format!("bench{run}.yaml"));
        std::fs::write(
            &spec,
            format!(
                "name: bench{run}\ngroups:\n  - name: g\n    count: {COUNT}\n    tasks:\n      - name: t\n        driver: exec\n        config: {{command: /bin/sleep, args: ['600']}}\n        resources: {{cpu: 10, memory: 16}}\n"
            ),
        )
        .unwrap();
        let start = Instant::now();
        let output = davit(&addr, &["job", "run", &spec.display().to_string()]).1;
        davit_times.push(start.elapsed());
        assert!(output.contains("all allocations running"), "{output}");
        davit(&addr, &["job", "stop", "--purge", &format!("bench{run}")]);

        let start = Instant::now();
        let mut children: Vec<_> = (0..COUNT).map(|_| Command::new("/bin/sleep").arg("600").spawn().unwrap()).collect();
        bare_times.push(start.elapsed());
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let busy_rss = rss_kib(dev.id());
    common::stop_dev(dev);
    let _ = std::fs::remove_dir_all(&dir);

    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (davit_median, bare_median) = (median(&mut davit_times), median(&mut bare_times));
    println!("machine: {} cores, {}", std::thread::available_parallelism().map_or(0, |n| n.get()), kernel());
    println!("job run → {COUNT} allocations running (davit dev, exec driver), {RUNS} runs:");
    println!(
        "  davit: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(davit_median),
        ms(davit_times[0]),
        ms(*davit_times.last().unwrap())
    );
    println!("  bare fork/exec of the same {COUNT} processes: median {:.2} ms", ms(bare_median));
    println!(
        "  ratio davit / bare: {:.0}x (davit adds scheduling, cgroups, a supervisor per task, and the CLI round trips)",
        ms(davit_median) / ms(bare_median).max(0.001)
    );
    println!("davit dev resident memory: idle {:.1} MiB, after {RUNS} jobs {:.1} MiB", idle_rss as f64 / 1024.0, busy_rss as f64 / 1024.0);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!("Linux {}", s.trim())).unwrap_or_default()
}
