//! Pulls through `ImageStore` from a real `docker-registry` on loopback, with images built by
//! `scripts/test-images.sh` and pushed with skopeo.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use davit_oci::testing::{TestRegistry, free_port, require_tool, test_images_dir};
use davit_oci::{ImageError, ImageStore, ImageStoreConfig, PullPhase, PullProgress, RegistryConfig, no_progress};

/// True when every tool the tests need is installed (under CI=true a missing one panics).
fn tools_present() -> bool {
    ["docker-registry", "skopeo", "umoci", "busybox"].iter().all(|tool| require_tool(tool))
}

fn layout(name: &str) -> PathBuf {
    test_images_dir().join(name)
}

/// The manifest digest and layer digests of tag `1` in an OCI layout.
fn layout_digests(layout: &Path) -> (String, Vec<String>) {
    let read = |path: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = read(layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let manifest = read(layout.join("blobs/sha256").join(manifest_digest.trim_start_matches("sha256:")));
    let layers = manifest["layers"].as_array().unwrap().iter().map(|layer| layer["digest"].as_str().unwrap().to_string()).collect();
    (manifest_digest, layers)
}

fn open_store(root: &Path, max_cache_bytes: u64, registries: BTreeMap<String, RegistryConfig>) -> ImageStore {
    ImageStore::open(ImageStoreConfig { root: root.to_path_buf(), registries, max_cache_bytes }).unwrap()
}

/// Every file under `root`, relative, sorted.
fn files_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let entry = entry.unwrap();
            found.push(entry.path().strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn pull_by_tag_and_by_digest() {
    if !tools_present() {
        return;
    }
    let registry = TestRegistry::start();
    registry.push_test_image("busybox:1", &layout("busybox"));
    let cache = tempfile::tempdir().unwrap();
    let store = open_store(cache.path(), u64::MAX, BTreeMap::new());

    let phases = Mutex::new(Vec::new());
    let record = |report: PullProgress| phases.lock().unwrap().push(report.phase);
    let image = store.pull(&format!("{}/busybox:1", registry.host()), &record).await.unwrap();
    let (manifest_digest, _) = layout_digests(&layout("busybox"));
    assert_eq!(image.manifest_digest, manifest_digest);
    assert_eq!(image.reference, format!("{}/busybox:1", registry.host()));
    assert_eq!(image.rootfs, store.rootfs_path(&manifest_digest));
    let busybox = image.rootfs.join("bin/busybox");
    assert_eq!(std::fs::metadata(&busybox).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_link(image.rootfs.join("bin/sh")).unwrap(), Path::new("busybox"));
    let output = std::process::Command::new(&busybox).args(["echo", "runs"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "runs\n");
    assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.config.cmd, ["echo hello from busybox"]);
    assert!(image.config.env.iter().any(|variable| variable.starts_with("PATH=") && variable.contains("/bin")));
    assert_eq!(image.config.working_dir, "/");
    assert_eq!(image.config.exposed_ports, ["80/tcp"]);
    assert!(image.size_bytes > 500_000, "{}", image.size_bytes);
    let phases = phases.into_inner().unwrap();
    assert_eq!(phases.first(), Some(&PullPhase::Resolving));
    assert_eq!(phases.last(), Some(&PullPhase::Done));
    for phase in [PullPhase::Downloading, PullPhase::Verifying, PullPhase::Unpacking] {
        assert!(phases.contains(&phase), "{phase:?} missing from {phases:?}");
    }
    assert!(cache.path().join("blobs/sha256").join(manifest_digest.trim_start_matches("sha256:")).is_file());
    assert!(cache.path().join("rootfs").join(manifest_digest.trim_start_matches("sha256:")).join("config.json").is_file());

    let by_digest = format!("{}/busybox@{manifest_digest}", registry.host());
    let again = store.pull(&by_digest, &no_progress).await.unwrap();
    assert_eq!((again.manifest_digest.as_str(), &again.rootfs), (manifest_digest.as_str(), &image.rootfs));

    // A cached digest reference needs no registry at all.
    drop(registry);
    let offline = store.pull(&by_digest, &no_progress).await.unwrap();
    assert_eq!(offline.rootfs, image.rootfs);
    assert_eq!(store.image(&manifest_digest).unwrap().config, image.config);
}

#[tokio::test]
async fn corrupt_blob_is_a_digest_mismatch_and_leaves_nothing() {
    if !tools_present() {
        return;
    }
    let registry = TestRegistry::start();
    registry.push_test_image("busybox:1", &layout("busybox"));
    let (_, layers) = layout_digests(&layout("busybox"));
    let blob = registry.blob_data_path(&layers[0]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let store = open_store(cache.path(), u64::MAX, BTreeMap::new());
    let reference = format!("{}/busybox:1", registry.host());
    let error = store.pull(&reference, &no_progress).await.unwrap_err();
    assert!(matches!(error, ImageError::DigestMismatch { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("digest mismatch for blob {} of {reference}: expected {}, got sha256:", layers[0], layers[0])),
        "{message}"
    );
    assert_eq!(files_under(cache.path()), ["blobs", "blobs/sha256", "rootfs"], "a failed pull must leave nothing behind");

    let wrong_digest = format!("{}/busybox@sha256:{}", registry.host(), "0".repeat(64));
    let error = store.pull(&wrong_digest, &no_progress).await.unwrap_err();
    assert_eq!(error.to_string(), format!("image {wrong_digest} not found (registry answered 404 MANIFEST_UNKNOWN)"));
    assert_eq!(files_under(cache.path()), ["blobs", "blobs/sha256", "rootfs"]);
}

#[tokio::test]
async fn not_found_unreachable_and_auth_errors() {
    if !tools_present() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let store = open_store(cache.path(), u64::MAX, BTreeMap::new());
    let missing = format!("{}/nope:1", registry.host());
    let error = store.pull(&missing, &no_progress).await.unwrap_err();
    assert_eq!(error.to_string(), format!("image {missing} not found (registry answered 404 MANIFEST_UNKNOWN)"));

    let closed = format!("127.0.0.1:{}", free_port());
    let error = store.pull(&format!("{closed}/web:1"), &no_progress).await.unwrap_err();
    assert_eq!(error.to_string(), format!("registry {closed} unreachable: connection refused"));

    let bad_reference = store.pull("Not A Reference", &no_progress).await.unwrap_err();
    assert!(matches!(bad_reference, ImageError::InvalidReference { .. }), "{bad_reference:?}");

    let secured = TestRegistry::start_with_basic_auth("davit", "s3cret");
    secured.push_test_image("busybox:1", &layout("busybox"));
    let reference = format!("{}/busybox:1", secured.host());
    let error = store.pull(&reference, &no_progress).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("authentication to registry {} failed (401): no credentials configured for {}", secured.host(), secured.host())
    );

    let with = |password: &str| {
        let config = RegistryConfig { insecure: false, username: Some("davit".into()), password: Some(password.into()) };
        BTreeMap::from([(secured.host(), config)])
    };
    let wrong = open_store(cache.path(), u64::MAX, with("wrong"));
    let error = wrong.pull(&reference, &no_progress).await.unwrap_err();
    assert_eq!(error.to_string(), format!("authentication to registry {} failed (401)", secured.host()));
    assert_eq!(files_under(&cache.path().join("blobs")), ["sha256"]);

    let right = open_store(cache.path(), u64::MAX, with("s3cret"));
    let image = right.pull(&reference, &no_progress).await.unwrap();
    assert!(image.rootfs.join("bin/busybox").is_file());
}

#[tokio::test]
async fn whiteouts_and_opaque_directories_apply() {
    if !tools_present() {
        return;
    }
    let registry = TestRegistry::start();
    registry.push_test_image("whiteout:1", &layout("whiteout"));
    let cache = tempfile::tempdir().unwrap();
    let store = open_store(cache.path(), u64::MAX, BTreeMap::new());
    let image = store.pull(&format!("{}/whiteout:1", registry.host()), &no_progress).await.unwrap();
    assert!(image.rootfs.join("etc/passwd").is_file());
    assert!(!image.rootfs.join("etc/deleted-file").exists());
    assert!(!image.rootfs.join("data/old").exists());
    assert_eq!(std::fs::read_to_string(image.rootfs.join("data/new")).unwrap(), "new\n");
    assert!(image.rootfs.join("bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    if !tools_present() {
        return;
    }
    let registry = TestRegistry::start();
    registry.push_test_image("whiteout:1", &layout("whiteout"));
    let cache = tempfile::tempdir().unwrap();
    let store = open_store(cache.path(), u64::MAX, BTreeMap::new());
    let reference = format!("{}/whiteout:1", registry.host());
    let before = registry.log().lines().count();
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let reference = reference.clone();
            tokio::spawn(async move { store.pull(&reference, &no_progress).await })
        })
        .collect();
    let mut images = Vec::new();
    for pull in pulls {
        images.push(pull.await.unwrap().unwrap());
    }
    assert!(images.windows(2).all(|pair| pair[0].rootfs == pair[1].rootfs && pair[0].manifest_digest == pair[1].manifest_digest));
    assert!(before < registry.log().lines().count());
    let (_, layers) = layout_digests(&layout("whiteout"));
    for layer in &layers {
        assert_eq!(registry.request_count("GET", &format!("/v2/whiteout/blobs/{layer}")), 1, "layer {layer}\n{}", registry.log());
    }
}

#[tokio::test]
async fn gc_evicts_least_recently_used_images() {
    if !tools_present() {
        return;
    }
    let registry = TestRegistry::start();
    registry.push_test_image("busybox:1", &layout("busybox"));
    registry.push_test_image("whiteout:1", &layout("whiteout"));
    let cache = tempfile::tempdir().unwrap();
    let unlimited = open_store(cache.path(), u64::MAX, BTreeMap::new());
    let busybox = unlimited.pull(&format!("{}/busybox:1", registry.host()), &no_progress).await.unwrap();
    let whiteout = unlimited.pull(&format!("{}/whiteout:1", registry.host()), &no_progress).await.unwrap();
    let everything = unlimited.gc(&[]).unwrap();
    assert!(everything.removed_images.is_empty());

    // Room for one image only. busybox was used last, so whiteout goes.
    let store = open_store(cache.path(), everything.remaining_bytes - 1, BTreeMap::new());
    store.image(&busybox.manifest_digest).unwrap();
    let report = store.gc(&[]).unwrap();
    assert_eq!(report.removed_images, std::slice::from_ref(&whiteout.manifest_digest));
    assert!(report.remaining_bytes < everything.remaining_bytes);
    assert!(busybox.rootfs.join("bin/busybox").is_file());
    assert!(!whiteout.rootfs.exists());
    assert!(matches!(store.image(&whiteout.manifest_digest), Err(ImageError::NotCached { .. })));

    // Pull whiteout again (now the most recent) but keep it: the older busybox goes instead.
    let whiteout = store.pull(&format!("{}/whiteout:1", registry.host()), &no_progress).await.unwrap();
    let report = store.gc(std::slice::from_ref(&whiteout.manifest_digest)).unwrap();
    assert_eq!(report.removed_images, std::slice::from_ref(&busybox.manifest_digest));
    assert!(whiteout.rootfs.join("data/new").is_file());
    assert!(!busybox.rootfs.exists());
    assert!(report.removed_blobs >= 3, "{report:?}");
}

/// A benchmark: pulls the ~50 MB `big:1` image and prints the throughput next to a plain copy of the same layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_big_image_throughput() {
    if !tools_present() {
        return;
    }
    let registry = TestRegistry::start();
    registry.push_test_image("big:1", &layout("big"));
    let cache = tempfile::tempdir().unwrap();
    let store = open_store(cache.path(), u64::MAX, BTreeMap::new());
    let downloading = Mutex::new(0usize);
    let count = |report: PullProgress| {
        if report.phase == PullPhase::Downloading {
            *downloading.lock().unwrap() += 1;
        }
    };
    let started = Instant::now();
    let image = store.pull(&format!("{}/big:1", registry.host()), &count).await.unwrap();
    let pull_time = started.elapsed();
    assert_eq!(std::fs::metadata(image.rootfs.join("big/random.bin")).unwrap().len(), 50 * 1024 * 1024);

    let (_, layers) = layout_digests(&layout("big"));
    let baseline_source = layout("big").join("blobs/sha256").join(layers.last().unwrap().trim_start_matches("sha256:"));
    let started = Instant::now();
    std::fs::copy(&baseline_source, cache.path().join("baseline-copy")).unwrap();
    let copy_time = started.elapsed();
    let megabytes = image.size_bytes as f64 / 1e6;
    println!(
        "pull of big:1: {megabytes:.1} MB in {:.2}s ({:.1} MB/s, {} progress reports); plain copy of its layer blob: {:.2}s",
        pull_time.as_secs_f64(),
        megabytes / pull_time.as_secs_f64(),
        downloading.into_inner().unwrap(),
        copy_time.as_secs_f64()
    );
}
