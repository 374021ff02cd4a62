//! Test helpers (feature `testing`): a throw-away registry on loopback, test image layouts and tool checks.
//!
//! ```no_run
//! # use davit_oci::testing::{TestRegistry, require_tool, test_images_dir};
//! if !require_tool("docker-registry") || !require_tool("skopeo") || !require_tool("umoci") { return; }
//! let registry = TestRegistry::start();
//! registry.push_test_image("busybox:1", &test_images_dir().join("busybox"));
//! let reference = format!("{}/busybox:1", registry.host());
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a registry may take to answer `GET /v2/` after it is started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A `docker-registry` process serving a temporary storage directory on 127.0.0.1. Killed on drop.
pub struct TestRegistry {
    address: SocketAddr,
    child: Child,
    directory: tempfile::TempDir,
    credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts an anonymous registry. Panics when it does not come up (call [`require_tool`] first).
    pub fn start() -> TestRegistry {
        TestRegistry::launch(None)
    }

    /// Starts a registry that requires HTTP basic auth with this user and password (bcrypt htpasswd).
    pub fn start_with_basic_auth(username: &str, password: &str) -> TestRegistry {
        TestRegistry::launch(Some((username.to_string(), password.to_string())))
    }

    /// `127.0.0.1:<port>`, the registry part of references to this registry.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The registry's storage root (`docker/registry/v2/...` below it), for tests that corrupt blobs.
    pub fn storage_dir(&self) -> PathBuf {
        self.directory.path().join("storage")
    }

    /// The path of blob `sha256:<hex>` in the registry's storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Everything the registry logged so far (its access log has one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("registry.log")).unwrap_or_default()
    }

    /// How many `method` requests for exactly `path` the registry's access log shows.
    pub fn request_count(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} HTTP/");
        self.log().lines().filter(|line| line.contains(&needle)).count()
    }

    /// Pushes tag `name_tag`'s tag (after the last ':') from the OCI layout `oci_layout_dir` as `name_tag`.
    pub fn push_test_image(&self, name_tag: &str, oci_layout_dir: &Path) {
        let tag = name_tag.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        self.push_test_image_from(tag, name_tag, oci_layout_dir);
    }

    /// Pushes tag `layout_tag` of the OCI layout `oci_layout_dir` as `name_tag`.
    pub fn push_test_image_from(&self, layout_tag: &str, name_tag: &str, oci_layout_dir: &Path) {
        let source = format!("oci:{}:{layout_tag}", oci_layout_dir.display());
        let destination = format!("docker://{}/{name_tag}", self.host());
        let mut command = Command::new("skopeo");
        command.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((username, password)) = &self.credentials {
            command.arg(format!("--dest-creds={username}:{password}"));
        }
        command.args([&source, &destination]);
        let output = command.output().unwrap_or_else(|error| panic!("cannot run skopeo: {error}"));
        assert!(
            output.status.success(),
            "skopeo copy {source} {destination} failed ({}):\n{}\nregistry log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    fn launch(credentials: Option<(String, String)>) -> TestRegistry {
        let directory = tempfile::Builder::new().prefix("davit-registry-").tempdir().expect("create a registry temp dir");
        let mut auth = String::new();
        if let Some((username, password)) = &credentials {
            let hash = bcrypt::hash(password, 4).expect("bcrypt the test password");
            let htpasswd = directory.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{username}:{hash}\n")).expect("write htpasswd");
            auth = format!("auth:\n  htpasswd:\n    realm: davit-test\n    path: {}\n", htpasswd.display());
        }
        // A free port can be taken by someone else between probing and binding: retry a few times.
        let mut last_failure = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {address}\n{auth}",
                directory.path().join("storage").display()
            );
            let config_path = directory.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write registry config");
            let log = std::fs::File::create(directory.path().join("registry.log")).expect("create registry log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start docker-registry: {error}"));
            let mut child = child;
            match wait_ready(&mut child, address, credentials.is_some(), &directory.path().join("registry.log")) {
                Ok(()) => return TestRegistry { address, child, directory, credentials },
                Err(failure) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if !failure.contains("address already in use") {
                        panic!("docker-registry did not start: {failure}");
                    }
                    last_failure = failure;
                }
            }
        }
        panic!("docker-registry did not start: {last_failure}")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET /v2/` until the registry answers 200 (or 401 with auth), the process exits, or time runs out.
fn wait_ready(child: &mut Child, address: SocketAddr, with_auth: bool, log: &Path) -> Result<(), String> {
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
            return Err(format!("docker-registry exited with {status}:\n{}", read_log()));
        }
        if let Some(status) = http_status(address, "/v2/")
            && (status == 200 || (status == 401 && with_auth))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("no answer on {address} within {STARTUP_TIMEOUT:?}:\n{}", read_log()));
        }
        // Back off between polls; each poll is a real connection attempt, not a fixed wait.
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// A port that was free a moment ago on 127.0.0.1, and never handed out before in this process: a server
/// started with an earlier one may not have bound it yet, and the kernel would offer the same port again.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| listener.local_addr()).expect("bind an ephemeral port").port();
        if HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(port) {
            return port;
        }
    }
}

/// One `GET path` over plain HTTP/1.0; the status code, or None if nothing answers.
fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Whether `name` is on PATH. When it is not: panics under `CI=true` (CI must run every test), otherwise prints
/// why the calling test skips and returns false.
pub fn require_tool(name: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|directory| directory.join(name).is_file()));
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{name} is required for this test under CI=true but is not on PATH");
    }
    eprintln!("skipping: {name} is not installed (it is required under CI=true)");
    false
}

/// Builds the test images once per process with `scripts/test-images.sh` and returns their directory
/// (`$DAVIT_IMAGES_DIR` or `<workspace>/target/test-images`), holding OCI layouts `busybox`, `whiteout` and
/// `big`, each tagged `1`. Panics if the script fails.
pub fn test_images_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let directory = std::env::var_os("DAVIT_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target/test-images"));
            let output = Command::new("bash")
                .arg(workspace.join("scripts/test-images.sh"))
                .env("DAVIT_IMAGES_DIR", &directory)
                .output()
                .unwrap_or_else(|error| panic!("cannot run scripts/test-images.sh: {error}"));
            assert!(
                output.status.success(),
                "scripts/test-images.sh failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            directory
        })
        .clone()
}
