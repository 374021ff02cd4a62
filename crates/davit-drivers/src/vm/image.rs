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

/// Returns a node path for `image`: local paths as they are (verified when a checksum is given), URLs from the
/// cache (downloaded first when missing).
pub(crate) async fn resolve(image: &str, checksum: Option<&str>, data_dir: &Path) -> Result<PathBuf, DriverError> {
    let expected = checksum.map(davit_api::spec::drivers::parse_checksum).transpose().map_err(invalid)?;
    if !(image.starts_with("http://") || image.starts_with("https://")) {
        let path = PathBuf::from(image);
        if !path.is_file() {
            return Err(invalid(format!("disk image {image} does not exist on this node")));
        }
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
    std::fs::create_dir_all(&cache_dir)
        .map_err(|source| DriverError::Io { operation: format!("creating {}", cache_dir.display()), source })?;
    let temporary = cache_dir.join(format!(".{expected}.{}.part", std::process::id()));
    let downloaded = download(image, &temporary).await;
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

/// Streams `url` into `path` and returns the hex sha256 of what was written.
async fn download(url: &str, path: &Path) -> Result<String, DriverError> {
    let failed = |message: String| DriverError::Other(format!("downloading {url}: {message}"));
    let mut response = reqwest::get(url).await.map_err(|error| failed(error.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    let mut file =
        std::fs::File::create(path).map_err(|source| DriverError::Io { operation: format!("creating {}", path.display()), source })?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| failed(error.to_string()))? {
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
        let path = resolve(&url, Some(&format!("sha256:{digest}")), data_dir.path()).await.unwrap();
        assert_eq!(path, data_dir.path().join("images/sha256").join(&digest));
        assert_eq!(std::fs::read(&path).unwrap(), b"disk image bytes");
        // Cached: no server needed any more.
        let again = resolve("http://127.0.0.1:1/gone.img", Some(&format!("sha256:{digest}")), data_dir.path()).await.unwrap();
        assert_eq!(again, path);

        let wrong = format!("sha256:{}", "0".repeat(64));
        let error = resolve(&url, Some(&wrong), data_dir.path()).await.unwrap_err();
        assert!(error.to_string().contains("expected 0000"), "{error}");
        let leftovers: Vec<_> = std::fs::read_dir(data_dir.path().join("images/sha256")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "a failed download leaves nothing behind");
    }
}
