//! Disk images: a content-addressed download cache and per-allocation qcow2 overlays.
//!
//! A URL image is downloaded once into `<data_dir>/images/sha256/<hex>`: streamed into a temporary file next to
//! it while hashing, verified against the required checksum, then renamed into place, so a file under its digest
//! name is always complete and verified (concurrent downloads of the same image are harmless: the last rename
//! wins with identical content).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use crate::DriverError;

use super::config::invalid;

/// Where a guest's files may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePolicy {
    /// Node directories local kernels, initrds and disk images must lie in (besides the allocation directory).
    pub image_dirs: Vec<PathBuf>,
    /// `host:port`s images may be downloaded from over plain HTTP; HTTPS is always allowed.
    pub http_hosts: Vec<String>,
    /// The largest image downloaded.
    pub max_download_bytes: u64,
    /// How long one download may take.
    pub download_timeout: std::time::Duration,
}

impl ImagePolicy {
    /// Images from `image_dirs` (none given: `/var/lib/davit/guest`), downloads over HTTPS of at most 20 GiB
    /// in 30 minutes.
    pub fn new(image_dirs: Vec<PathBuf>) -> ImagePolicy {
        let image_dirs = if image_dirs.is_empty() { vec![PathBuf::from(DEFAULT_IMAGE_DIR)] } else { image_dirs };
        ImagePolicy {
            image_dirs,
            http_hosts: Vec::new(),
            max_download_bytes: 20 << 30,
            download_timeout: std::time::Duration::from_secs(30 * 60),
        }
    }

    /// `path` (a kernel, initrd or disk image: `what`) if it is a file in one of the image directories or in
    /// the allocation's `alloc/data`, after following links.
    pub(crate) fn local_file(&self, what: &str, path: &str, alloc_dir: &Path) -> Result<PathBuf, DriverError> {
        let real = std::fs::canonicalize(path).map_err(|error| invalid(format!("{what} {path}: {error}")))?;
        let inside = |dir: &Path| std::fs::canonicalize(dir).is_ok_and(|dir| real.starts_with(dir));
        // Of the allocation directory, only what tasks share (`alloc/data`): not the agent's hidden parts.
        if !(self.image_dirs.iter().any(|dir| inside(dir)) || inside(&alloc_dir.join("alloc").join("data"))) {
            let dirs: Vec<String> = self.image_dirs.iter().map(|dir| dir.display().to_string()).collect();
            return Err(invalid(format!(
                "{what} {path} is outside this node's VM image directories ({}): put it there, or start the agent with --vm-image-dir DIR",
                dirs.join(", ")
            )));
        }
        if !real.is_file() {
            return Err(invalid(format!("{what} {path} is not a file")));
        }
        Ok(real)
    }

    fn check_url(&self, url: &str) -> Result<(), DriverError> {
        if let Some(rest) = url.strip_prefix("http://") {
            let host = rest.split('/').next().unwrap_or_default();
            if !self.http_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(host)) {
                return Err(invalid(format!(
                    "disk image {url}: plain HTTP downloads go only to hosts the agent allows (--vm-download-http-host {host}); use https://"
                )));
            }
        }
        Ok(())
    }
}

/// Where guest images live unless the agent names other directories.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/davit/guest";

/// Returns a node path for `image`: local paths inside the allowed directories (verified when a checksum is
/// given), URLs from the cache (downloaded first when missing, within the policy's bounds).
pub(crate) async fn resolve(
    image: &str,
    checksum: Option<&str>,
    data_dir: &Path,
    policy: &ImagePolicy,
    alloc_dir: &Path,
) -> Result<PathBuf, DriverError> {
    let expected = checksum.map(davit_api::spec::drivers::parse_checksum).transpose().map_err(invalid)?;
    if !(image.starts_with("http://") || image.starts_with("https://")) {
        let path = policy.local_file("disk image", image, alloc_dir)?;
        if let Some(expected) = expected {
            let hashed = path.clone();
            let actual = tokio::task::spawn_blocking(move || sha256_file(&hashed))
                .await
                .map_err(|error| DriverError::Other(format!("hashing {image}: {error}")))?
                .map_err(|source| DriverError::Io { operation: format!("hashing {image}"), source })?;
            if actual != expected {
                return Err(DriverError::Other(format!("disk image {image}: sha256 is {actual}, expected {expected}")));
            }
        }
        return Ok(path);
    }
    let expected = expected.ok_or_else(|| invalid(format!("disk image {image} is a URL and needs a checksum")))?;
    let cache_dir = data_dir.join("images").join("sha256");
    let cached = cache_dir.join(&expected);
    if cached.is_file() {
        return Ok(cached);
    }
    policy.check_url(image)?;
    std::fs::create_dir_all(&cache_dir)
        .map_err(|source| DriverError::Io { operation: format!("creating {}", cache_dir.display()), source })?;
    static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let download_number = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One file per download, even for two downloads of one image at once: each verifies what it wrote.
    let temporary = cache_dir.join(format!(".{expected}.{}.{download_number}.part", std::process::id()));
    let downloaded = match tokio::time::timeout(policy.download_timeout, download(image, &temporary, policy.max_download_bytes)).await {
        Ok(downloaded) => downloaded,
        Err(_) => Err(DriverError::Other(format!("downloading {image}: not done within {:?}", policy.download_timeout))),
    };
    let actual = match downloaded {
        Ok(actual) => actual,
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
    };
    if actual != expected {
        let _ = std::fs::remove_file(&temporary);
        return Err(DriverError::Other(format!("downloaded {image}: sha256 is {actual}, expected {expected}")));
    }
    std::fs::rename(&temporary, &cached)
        .map_err(|source| DriverError::Io { operation: format!("storing {}", cached.display()), source })?;
    Ok(cached)
}

/// Streams `url` into `path` and returns the hex sha256 of what was written; more than `max_bytes` is an error.
async fn download(url: &str, path: &Path, max_bytes: u64) -> Result<String, DriverError> {
    let failed = |message: String| DriverError::Other(format!("downloading {url}: {message}"));
    let too_big = || failed(format!("the image is larger than {max_bytes} bytes (the agent's limit)"));
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().map_err(|error| failed(error.to_string()))?;
    let mut response = client.get(url).send().await.map_err(|error| failed(error.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    if response.content_length().is_some_and(|length| length > max_bytes) {
        return Err(too_big());
    }
    let mut written = 0u64;
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| DriverError::Io { operation: format!("creating {}", path.display()), source })?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| failed(error.to_string()))? {
        written = written.saturating_add(chunk.len() as u64);
        if written > max_bytes {
            return Err(too_big());
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(|source| DriverError::Io { operation: format!("writing {}", path.display()), source })?;
    }
    file.sync_all().map_err(|source| DriverError::Io { operation: format!("syncing {}", path.display()), source })?;
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut HashWriter(&mut hasher))?;
    Ok(hex(&hasher.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Refuses an image that names other files QEMU would open too (a qcow2/qed backing file or external data
/// file, vmdk extents elsewhere): checking the image's own path would not cover them.
pub(crate) async fn check_self_contained(qemu_img: &Path, image: &Path, format: &str) -> Result<(), DriverError> {
    let output = tokio::process::Command::new(qemu_img)
        .args(["info", "--output=json", "-f", format])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| DriverError::Io { operation: format!("running {}", qemu_img.display()), source })?;
    if !output.status.success() {
        return Err(invalid(format!("disk image {}: {}", image.display(), String::from_utf8_lossy(&output.stderr).trim())));
    }
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|error| DriverError::Other(format!("qemu-img info of {}: {error}", image.display())))?;
    let data = &info["format-specific"]["data"];
    let mut references: Vec<String> = ["backing-filename", "full-backing-filename"]
        .iter()
        .filter_map(|key| info[*key].as_str().map(str::to_owned))
        .chain(data["data-file"].as_str().map(str::to_owned))
        .collect();
    let own = image.display().to_string();
    references.extend(
        data["extents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|extent| extent["filename"].as_str())
            .filter(|name| *name != own)
            .map(str::to_owned),
    );
    if let Some(reference) = references.first() {
        return Err(invalid(format!(
            "disk image {} refers to another file ({reference}): only self-contained images are used (qemu-img convert it)",
            image.display()
        )));
    }
    Ok(())
}

/// `qemu-img create -f qcow2 -F <format> -b <base> <overlay>`: the base is never written.
pub(crate) async fn create_overlay(qemu_img: &Path, base: &Path, format: &str, overlay: &Path) -> Result<(), DriverError> {
    let base =
        std::path::absolute(base).map_err(|source| DriverError::Io { operation: format!("resolving {}", base.display()), source })?;
    let _ = std::fs::remove_file(overlay);
    let output = tokio::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&base)
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| DriverError::Io { operation: format!("running {}", qemu_img.display()), source })?;
    if !output.status.success() {
        return Err(DriverError::Other(format!(
            "qemu-img create overlay of {}: {}",
            base.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `body` to every request on a loopback port; returns the port.
    async fn serve(body: &'static [u8]) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let header = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = stream.write_all(header.as_bytes()).await;
                let _ = stream.write_all(body).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn url_images_are_downloaded_once_and_verified() {
        let data_dir = tempfile::tempdir().unwrap();
        let port = serve(b"disk image bytes").await;
        let url = format!("http://127.0.0.1:{port}/disk.img");
        let digest = hex(&Sha256::digest(b"disk image bytes"));
        let checksum = format!("sha256:{digest}");
        let alloc_dir = data_dir.path().join("alloc");
        let mut policy = ImagePolicy::new(vec![data_dir.path().join("guest")]);
        let error = resolve(&url, Some(&checksum), data_dir.path(), &policy, &alloc_dir).await.unwrap_err();
        assert!(error.to_string().contains("--vm-download-http-host 127.0.0.1:"), "{error}");
        policy.http_hosts = vec![format!("127.0.0.1:{port}")];
        policy.max_download_bytes = 4;
        let error = resolve(&url, Some(&checksum), data_dir.path(), &policy, &alloc_dir).await.unwrap_err();
        assert!(error.to_string().contains("larger than 4 bytes"), "{error}");
        policy.max_download_bytes = 1 << 20;
        let path = resolve(&url, Some(&checksum), data_dir.path(), &policy, &alloc_dir).await.unwrap();
        assert_eq!(path, data_dir.path().join("images/sha256").join(&digest));
        assert_eq!(std::fs::read(&path).unwrap(), b"disk image bytes");
        // Cached: no server needed any more.
        let again = resolve("http://127.0.0.1:1/gone.img", Some(&checksum), data_dir.path(), &policy, &alloc_dir).await.unwrap();
        assert_eq!(again, path);

        let wrong = format!("sha256:{}", "0".repeat(64));
        let error = resolve(&url, Some(&wrong), data_dir.path(), &policy, &alloc_dir).await.unwrap_err();
        assert!(error.to_string().contains("expected 0000"), "{error}");
        let leftovers: Vec<_> = std::fs::read_dir(data_dir.path().join("images/sha256")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "a failed download leaves nothing behind");
    }

    #[test]
    fn local_images_must_lie_in_an_image_directory() {
        let root = tempfile::tempdir().unwrap();
        let (guest, alloc_dir) = (root.path().join("guest"), root.path().join("alloc"));
        std::fs::create_dir_all(&guest).unwrap();
        std::fs::create_dir_all(&alloc_dir).unwrap();
        std::fs::write(guest.join("vmlinux"), b"kernel").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", guest.join("shadow-link")).unwrap();
        let policy = ImagePolicy::new(vec![guest.clone()]);
        let kernel = guest.join("vmlinux");
        assert_eq!(policy.local_file("kernel", kernel.to_str().unwrap(), &alloc_dir).unwrap(), kernel.canonicalize().unwrap());
        for outside in [
            "/etc/shadow".to_owned(),
            guest.join("shadow-link").display().to_string(),
            format!("{}/../../../../../../../etc/passwd", guest.display()),
        ] {
            let error = policy.local_file("disk image", &outside, &alloc_dir).unwrap_err().to_string();
            assert!(error.contains("outside this node's VM image directories") && error.contains("--vm-image-dir"), "{outside}: {error}");
        }
    }
}
