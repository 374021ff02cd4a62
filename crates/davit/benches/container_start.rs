//! `cargo bench -p davit --bench container_start`: the container driver next to its baselines, in one run.
//!
//! 1. Cold pull of the 50 MB `big:1` test image from a registry on loopback: davit's image store (download,
//!    digest check, unpack) next to `skopeo copy` of the same image into an OCI layout (download only).
//! 2. Submit → running of a one-container job in `davit dev` (`davit job run`, which returns once the
//!    allocation runs), 50 times with a warm image cache, next to `crun run --detach` of a bundle of the same
//!    image (unpacked by davit's image store, config from `crun spec`), with the same crun flags davit uses on
//!    this host (a private mount namespace without the cgroup2 mount on hybrid hosts, no cgroup manager).
//!
//! Targets (issue 6): p50 ≤ 2 × bare + 50 ms, p99 ≤ 500 ms. Needs root, crun, docker-registry, skopeo, umoci.

use std::process::Command;
use std::time::{Duration, Instant};

use davit_oci::testing::{TestRegistry, test_images_dir};
use davit_oci::{ImageStore, ImageStoreConfig};

mod common;

use common::{crun, davit, ms, on_path};

const STARTS: usize = 50;

fn main() {
    let missing: Vec<&str> = ["crun", "docker-registry", "skopeo", "umoci", "unshare"].into_iter().filter(|tool| !on_path(tool)).collect();
    if !missing.is_empty() {
        println!("skipping: needs {}", missing.join(", "));
        return;
    }
    let dir = common::tempdir();
    let registry = TestRegistry::start();
    let images = test_images_dir();
    registry.push_test_image("busybox:1", &images.join("busybox"));
    registry.push_test_image("big:1", &images.join("big"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    // 1. Cold pulls.
    let store =
        ImageStore::open(ImageStoreConfig { root: dir.path().join("images"), registries: Default::default(), max_cache_bytes: 1 << 30 })
            .unwrap();
    let start = Instant::now();
    let big = runtime.block_on(store.pull(&format!("{}/big:1", registry.host()), &davit_oci::no_progress)).unwrap();
    let davit_pull = start.elapsed();
    let start = Instant::now();
    let status = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}/big:1", registry.host()))
        .arg(format!("oci:{}:1", dir.path().join("skopeo-big").display()))
        .status()
        .unwrap();
    let skopeo_pull = start.elapsed();
    assert!(status.success(), "skopeo copy failed");
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("cold pull of big:1 ({:.1} MiB unpacked) from a registry on loopback:", big.size_bytes as f64 / (1 << 20) as f64);
    println!("  davit image store (download + verify + unpack): {:.0} ms", ms(davit_pull));
    println!("  skopeo copy (download into an OCI layout):       {:.0} ms", ms(skopeo_pull));
    println!("  ratio davit / skopeo: {:.2}", ms(davit_pull) / ms(skopeo_pull));

    // 2a. Bare crun, same image.
    let busybox = runtime.block_on(store.pull(&format!("{}/busybox:1", registry.host()), &davit_oci::no_progress)).unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    common::write_crun_bundle(&bundle, &busybox.rootfs, &["/bin/sleep", "600"], false);
    let mut bare = Vec::new();
    for run in 0..STARTS {
        let id = format!("davit-bench-bare-{}-{run}", std::process::id());
        let start = Instant::now();
        let started = crun(&["run", "--detach", "--bundle", &bundle.display().to_string(), &id]);
        bare.push(start.elapsed());
        assert!(started, "crun run failed");
        crun(&["delete", "--force", &id]);
    }

    // 2b. davit dev, warm cache (one job first pulls the image).
    let (dev, addr) = common::start_dev(&dir.path().join("dev"), "27000-27999");
    let job = |name: &str| {
        let spec = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &spec,
            format!(
                "name: {name}\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: container\n        config: {{image: \"{}/busybox:1\", command: \"exec sleep 600\"}}\n        resources: {{cpu: 10, memory: 16}}\n",
                registry.host()
            ),
        )
        .unwrap();
        spec
    };
    let warm = job("warm");
    assert!(davit(&addr, &["job", "run", &warm.display().to_string()]).0, "the warm-up job did not run");
    let mut davit_times = Vec::new();
    for run in 0..STARTS {
        let name = format!("bench{run}");
        let spec = job(&name);
        let start = Instant::now();
        let (ok, output) = davit(&addr, &["job", "run", &spec.display().to_string()]);
        davit_times.push(start.elapsed());
        assert!(ok && output.contains("all allocations running"), "{output}");
        davit(&addr, &["job", "stop", "--purge", &name]);
    }
    common::stop_dev(dev);

    let (bare50, bare99) = percentiles(&mut bare);
    let (davit50, davit99) = percentiles(&mut davit_times);
    println!("submit → running, one busybox container, {STARTS} starts, warm image cache:");
    println!("  bare `crun run --detach`:            p50 {:.1} ms, p99 {:.1} ms", ms(bare50), ms(bare99));
    println!("  davit dev (`davit job run` returns): p50 {:.1} ms, p99 {:.1} ms", ms(davit50), ms(davit99));
    let budget = 2.0 * ms(bare50) + 50.0;
    println!(
        "  p50 target ≤ 2 × bare + 50 ms = {budget:.1} ms: {}; p99 target ≤ 500 ms: {}",
        verdict(ms(davit50) <= budget),
        verdict(ms(davit99) <= 500.0)
    );
}

fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[(times.len() * 99).div_ceil(100) - 1])
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
