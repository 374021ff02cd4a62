//! The image store: pull orchestration, the blob cache, unpacked images and garbage collection.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::manifest::{self, ConfigFile, Descriptor, Index, Manifest, ManifestKind};
use crate::reference::is_sha256_hex;
use crate::registry::{self, RegistryClient};
use crate::unpack::{self, UnpackError};
use crate::{GcReport, Image, ImageConfig, ImageError, ImageStoreConfig, PullPhase, PullProgress, Reference};

/// How many blobs one pull downloads at the same time.
const PARALLEL_DOWNLOADS: usize = 4;

/// The image cache. Cheap to clone; clones share the cache, the registry connections and the in-flight
/// pull bookkeeping.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    blobs_dir: PathBuf,
    images_dir: PathBuf,
    max_cache_bytes: u64,
    client: RegistryClient,
    /// One async lock per manifest digest and per blob digest being pulled: a second pull of the same thing
    /// waits for the first and then finds it in the cache.
    in_flight: KeyedLocks,
    /// Blob and manifest digests an unfinished pull depends on, with how many pulls do: gc leaves them alone.
    pins: Mutex<HashMap<String, usize>>,
    /// Held while images are installed, looked up or evicted, so gc never removes an image mid-lookup.
    catalog: Mutex<()>,
    temp_counter: AtomicU64,
}

/// What `rootfs/<hex>/image.json` records.
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    manifest_digest: String,
    /// Every blob the image uses: manifest, index (if pulled through one), config and layers.
    blobs: Vec<String>,
    rootfs_bytes: u64,
}

impl ImageStore {
    /// Opens (creating if needed) the cache at `config.root` and removes leftovers of crashed pulls.
    pub fn open(config: ImageStoreConfig) -> Result<ImageStore, ImageError> {
        let blobs_dir = config.root.join("blobs").join("sha256");
        let images_dir = config.root.join("rootfs");
        for directory in [&blobs_dir, &images_dir] {
            fs::create_dir_all(directory).map_err(ImageError::cache_io(directory))?;
            remove_stale_temporaries(directory)?;
        }
        let client = RegistryClient::new(config.registries).map_err(|source| ImageError::CacheIo {
            path: config.root.clone(),
            source: io::Error::other(format!("cannot build the HTTP client: {source}")),
        })?;
        Ok(ImageStore {
            inner: Arc::new(Inner {
                blobs_dir,
                images_dir,
                max_cache_bytes: config.max_cache_bytes,
                client,
                in_flight: KeyedLocks::default(),
                pins: Mutex::new(HashMap::new()),
                catalog: Mutex::new(()),
                temp_counter: AtomicU64::new(0),
            }),
        })
    }

    /// Pulls `reference` and returns the unpacked image.
    ///
    /// A digest reference whose image is already unpacked is answered from the cache without any network
    /// access. A tag reference always re-resolves the manifest (one GET) but reuses cached blobs and rootfs.
    /// An index (manifest list) resolves to its linux/amd64 manifest. Every blob is verified against its
    /// digest; on any error nothing of this pull is left in the cache (no blob only it fetched, no rootfs, no
    /// temporary file).
    ///
    /// `progress` is called synchronously from the pulling task, so it must be quick (e.g. send on a channel
    /// with `try_send`); pass [`crate::no_progress`] to ignore it. A pull that waits for an identical pull in
    /// progress reports only `Resolving` and `Done`.
    pub async fn pull(&self, reference: &str, progress: &(dyn Fn(PullProgress) + Send + Sync)) -> Result<Image, ImageError> {
        let reference = Reference::parse(reference)?;
        if let Some(digest) = reference.digest()
            && let Some(image) = self.cached_by_digest(&reference, digest)?
        {
            report_done(progress, &image);
            return Ok(image);
        }
        progress(PullProgress { digest: String::new(), bytes_done: 0, bytes_total: 0, phase: PullPhase::Resolving });
        let resolved = self.resolve(&reference).await?;
        if let Some(image) = self.installed_image(&reference, &resolved.manifest_digest)? {
            report_done(progress, &image);
            return Ok(image);
        }
        let _pull_lock = self.inner.in_flight.lock(&resolved.manifest_digest).await;
        if let Some(image) = self.installed_image(&reference, &resolved.manifest_digest)? {
            report_done(progress, &image);
            return Ok(image);
        }
        let blobs = resolved.blob_digests();
        self.pin(&blobs);
        let downloaded = Mutex::new(Vec::new());
        let result = self.install(&reference, &resolved, &downloaded, progress).await;
        self.unpin(&blobs);
        match result {
            Ok(image) => {
                report_done(progress, &image);
                Ok(image)
            }
            Err(error) => {
                let downloaded = downloaded.into_inner().unwrap_or_else(|poison| poison.into_inner());
                if let Err(cleanup_error) = self.remove_unused_blobs(&downloaded) {
                    tracing::warn!(%cleanup_error, "cannot remove blobs of a failed pull");
                }
                Err(error)
            }
        }
    }

    /// The cached image with this manifest digest, marked as used now. Never touches the network.
    pub fn image(&self, manifest_digest: &str) -> Result<Image, ImageError> {
        let not_cached = || ImageError::NotCached { digest: manifest_digest.to_string() };
        let reference = manifest_digest.to_string();
        self.installed_image_named(&reference, manifest_digest)?.ok_or_else(not_cached)
    }

    /// Where the rootfs of the image with this manifest digest is (or would be) unpacked.
    pub fn rootfs_path(&self, manifest_digest: &str) -> PathBuf {
        self.image_dir(manifest_digest).join("rootfs")
    }

    /// Evicts least-recently-used images (by the last pull or [`ImageStore::image`] of each) until blobs plus
    /// rootfs trees fit in `max_cache_bytes`, never removing an image whose manifest digest is in `keep` or
    /// that a pull in progress is installing. Blobs no image uses are removed first.
    pub fn gc(&self, keep: &[String]) -> Result<GcReport, ImageError> {
        let _catalog = self.lock_catalog();
        let pins = self.inner.pins.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        let mut report = GcReport::default();
        let mut blob_sizes: HashMap<String, u64> = HashMap::new();
        for entry in fs::read_dir(&self.inner.blobs_dir).map_err(ImageError::cache_io(&self.inner.blobs_dir))? {
            let entry = entry.map_err(ImageError::cache_io(&self.inner.blobs_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_sha256_hex(&name) {
                let size = entry.metadata().map_err(ImageError::cache_io(entry.path()))?.len();
                blob_sizes.insert(format!("sha256:{name}"), size);
            }
        }
        let mut images = self.installed_records()?;
        let mut users: HashMap<String, usize> = HashMap::new();
        for (record, _) in &images {
            for blob in &record.blobs {
                *users.entry(blob.clone()).or_default() += 1;
            }
        }
        let remove_blob = |digest: &str, report: &mut GcReport, blob_sizes: &mut HashMap<String, u64>| -> Result<(), ImageError> {
            if pins.contains_key(digest) {
                return Ok(());
            }
            if let Some(size) = blob_sizes.remove(digest) {
                let path = self.blob_path(digest);
                remove_file_if_exists(&path)?;
                report.removed_blobs += 1;
                report.freed_bytes += size;
            }
            Ok(())
        };
        let orphans: Vec<String> = blob_sizes.keys().filter(|digest| !users.contains_key(*digest)).cloned().collect();
        for digest in orphans {
            remove_blob(&digest, &mut report, &mut blob_sizes)?;
        }
        let total = |blob_sizes: &HashMap<String, u64>, images: &[(ImageRecord, SystemTime)]| -> u64 {
            blob_sizes.values().sum::<u64>() + images.iter().map(|(record, _)| record.rootfs_bytes).sum::<u64>()
        };
        images.sort_by_key(|(_, last_used)| *last_used);
        let mut index = 0;
        while total(&blob_sizes, &images) > self.inner.max_cache_bytes && index < images.len() {
            let digest = &images[index].0.manifest_digest;
            if keep.iter().any(|kept| kept == digest) || pins.contains_key(digest) {
                index += 1;
                continue;
            }
            let (record, _) = images.remove(index);
            let directory = self.image_dir(&record.manifest_digest);
            // Rename first so a crash mid-removal leaves a temporary, not a half-deleted image.
            let doomed = self.temporary_path(&self.inner.images_dir, &record.manifest_digest);
            fs::rename(&directory, &doomed).map_err(ImageError::cache_io(&directory))?;
            unpack::remove_any(&doomed).map_err(ImageError::cache_io(&doomed))?;
            report.freed_bytes += record.rootfs_bytes;
            for blob in &record.blobs {
                let remaining = users.get_mut(blob).map(|count| {
                    *count -= 1;
                    *count
                });
                if remaining == Some(0) {
                    remove_blob(blob, &mut report, &mut blob_sizes)?;
                }
            }
            tracing::info!(image = %record.manifest_digest, "evicted image from the cache");
            report.removed_images.push(record.manifest_digest);
        }
        report.remaining_bytes = total(&blob_sizes, &images);
        Ok(report)
    }

    /// Fetches the manifest for `reference`, following an index to its linux/amd64 manifest, and verifies each
    /// document against the digest in the reference, the index or the registry's `Docker-Content-Digest`.
    async fn resolve(&self, reference: &Reference) -> Result<Resolved, ImageError> {
        let client = &self.inner.client;
        let fetched = client.fetch_manifest(reference, reference.manifest_reference()).await?;
        let expected = reference.digest().map(str::to_string).or(fetched.content_digest.clone());
        let digest = verify_document(reference, &fetched.body, expected.as_deref())?;
        match manifest::classify(fetched.content_type.as_deref(), &fetched.body) {
            ManifestKind::Image => {
                let manifest = parse_json::<Manifest>(reference, &digest, "manifest", &fetched.body)?;
                Ok(Resolved { manifest_digest: digest, manifest_bytes: fetched.body, manifest, index: None })
            }
            ManifestKind::Index => {
                let index = parse_json::<Index>(reference, &digest, "image index", &fetched.body)?;
                let chosen = manifest::pick_platform(&index)
                    .ok_or_else(|| ImageError::NoMatchingPlatform { reference: reference.to_string() })?
                    .digest
                    .clone();
                check_digest_syntax(reference, &chosen)?;
                let platform = client.fetch_manifest(reference, &chosen).await?;
                let manifest_digest = verify_document(reference, &platform.body, Some(&chosen))?;
                match manifest::classify(platform.content_type.as_deref(), &platform.body) {
                    ManifestKind::Image => {}
                    ManifestKind::Index => {
                        return Err(ImageError::UnsupportedManifest {
                            reference: reference.to_string(),
                            media_type: "nested image index".into(),
                        });
                    }
                    ManifestKind::Unsupported(media_type) => {
                        return Err(ImageError::UnsupportedManifest { reference: reference.to_string(), media_type });
                    }
                }
                let manifest = parse_json::<Manifest>(reference, &manifest_digest, "manifest", &platform.body)?;
                Ok(Resolved { manifest_digest, manifest_bytes: platform.body, manifest, index: Some((digest, fetched.body)) })
            }
            ManifestKind::Unsupported(media_type) => Err(ImageError::UnsupportedManifest { reference: reference.to_string(), media_type }),
        }
    }

    /// Downloads what is missing, unpacks the layers into a temporary directory and renames it into place.
    async fn install(
        &self,
        reference: &Reference,
        resolved: &Resolved,
        downloaded: &Mutex<Vec<String>>,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let manifest = &resolved.manifest;
        for descriptor in std::iter::once(&manifest.config).chain(&manifest.layers) {
            check_digest_syntax(reference, &descriptor.digest)?;
        }
        if let Some(layer) = manifest.layers.iter().find(|layer| !layer.media_type.is_empty() && !layer.media_type.contains("tar")) {
            return Err(ImageError::UnsupportedManifest {
                reference: reference.to_string(),
                media_type: format!("layer {}", layer.media_type),
            });
        }
        // Config and layers, a few at a time. The first error drops the other downloads (and their temporaries).
        let semaphore = tokio::sync::Semaphore::new(PARALLEL_DOWNLOADS);
        let downloads = std::iter::once(&manifest.config).chain(&manifest.layers).map(|descriptor| async {
            let _permit = semaphore.acquire().await.map_err(|_| ImageError::CacheIo {
                path: self.inner.blobs_dir.clone(),
                source: io::Error::other("download semaphore closed"),
            })?;
            if self.ensure_blob(reference, descriptor, progress).await? {
                downloaded.lock().unwrap_or_else(|poison| poison.into_inner()).push(descriptor.digest.clone());
            }
            Ok::<(), ImageError>(())
        });
        futures_util::future::try_join_all(downloads).await?;

        let config_path = self.blob_path(&manifest.config.digest);
        let config_bytes = fs::read(&config_path).map_err(ImageError::cache_io(&config_path))?;
        let config: ImageConfig = parse_json::<ConfigFile>(reference, &manifest.config.digest, "image config", &config_bytes)?.into();

        let staging = self.temporary_path(&self.inner.images_dir, &resolved.manifest_digest);
        let staging_guard = RemoveOnDrop(Some(staging.clone()));
        let rootfs = staging.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(ImageError::cache_io(&rootfs))?;
        for layer in &manifest.layers {
            progress(PullProgress { digest: layer.digest.clone(), bytes_done: 0, bytes_total: layer.size, phase: PullPhase::Unpacking });
            let blob = self.blob_path(&layer.digest);
            let target = rootfs.clone();
            let result = tokio::task::spawn_blocking(move || {
                unpack::open_layer(&blob).map_err(UnpackError::Io).and_then(|reader| unpack::apply_layer(&target, reader))
            })
            .await
            .unwrap_or_else(|join_error| Err(UnpackError::Io(io::Error::other(join_error))));
            result.map_err(|error| match error {
                UnpackError::Unsafe { entry, reason } => {
                    ImageError::UnsafeLayerEntry { reference: reference.to_string(), digest: layer.digest.clone(), entry, reason }
                }
                UnpackError::Io(source) => ImageError::Unpack { reference: reference.to_string(), digest: layer.digest.clone(), source },
            })?;
            progress(PullProgress {
                digest: layer.digest.clone(),
                bytes_done: layer.size,
                bytes_total: layer.size,
                phase: PullPhase::Unpacking,
            });
        }
        let measured = rootfs.clone();
        let rootfs_bytes = tokio::task::spawn_blocking(move || tree_size(&measured))
            .await
            .unwrap_or_else(|join_error| Err(io::Error::other(join_error)))
            .map_err(ImageError::cache_io(&rootfs))?;

        // The manifest (and index) become blobs only now, so a failed pull leaves no manifest behind.
        let mut documents = vec![(resolved.manifest_digest.as_str(), resolved.manifest_bytes.as_slice())];
        if let Some((digest, bytes)) = &resolved.index {
            documents.push((digest.as_str(), bytes.as_slice()));
        }
        for (digest, bytes) in documents {
            if self.write_blob(digest, bytes)? {
                downloaded.lock().unwrap_or_else(|poison| poison.into_inner()).push(digest.to_string());
            }
        }
        let record = ImageRecord { manifest_digest: resolved.manifest_digest.clone(), blobs: resolved.blob_digests(), rootfs_bytes };
        write_json(&staging.join("config.json"), &config)?;
        write_json(&staging.join("image.json"), &record)?;
        fs::write(staging.join("last-used"), b"").map_err(ImageError::cache_io(staging.join("last-used")))?;

        let final_dir = self.image_dir(&resolved.manifest_digest);
        {
            let _catalog = self.lock_catalog();
            fs::rename(&staging, &final_dir).map_err(ImageError::cache_io(&final_dir))?;
        }
        drop(staging_guard);
        tracing::info!(image = %reference, manifest = %resolved.manifest_digest, "image pulled and unpacked");
        Ok(Image {
            reference: reference.to_string(),
            manifest_digest: resolved.manifest_digest.clone(),
            rootfs: final_dir.join("rootfs"),
            config,
            size_bytes: rootfs_bytes,
        })
    }

    /// Makes sure blob `descriptor` is in the cache, downloading and verifying it if not. Returns whether this
    /// call downloaded it.
    async fn ensure_blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<bool, ImageError> {
        let path = self.blob_path(&descriptor.digest);
        let cached = || fs::symlink_metadata(&path).is_ok();
        if cached() {
            return Ok(false);
        }
        let _blob_lock = self.inner.in_flight.lock(&descriptor.digest).await;
        if cached() {
            return Ok(false);
        }
        let temporary = self.temporary_path(&self.inner.blobs_dir, &descriptor.digest);
        let guard = RemoveOnDrop(Some(temporary.clone()));
        let mut file =
            tokio::fs::OpenOptions::new().write(true).create_new(true).open(&temporary).await.map_err(ImageError::cache_io(&temporary))?;
        self.inner.client.download_blob(reference, &descriptor.digest, descriptor.size, &mut file, progress).await?;
        drop(file);
        fs::rename(&temporary, &path).map_err(ImageError::cache_io(&path))?;
        guard.disarm();
        Ok(true)
    }

    /// Writes verified in-memory bytes as blob `digest`. Returns whether the blob was new.
    fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<bool, ImageError> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(false);
        }
        let temporary = self.temporary_path(&self.inner.blobs_dir, digest);
        let guard = RemoveOnDrop(Some(temporary.clone()));
        fs::write(&temporary, bytes).map_err(ImageError::cache_io(&temporary))?;
        fs::rename(&temporary, &path).map_err(ImageError::cache_io(&path))?;
        guard.disarm();
        Ok(true)
    }

    /// Answers a digest reference from the cache alone: the digest names a cached manifest (or an index whose
    /// linux/amd64 manifest is cached) with an unpacked image.
    fn cached_by_digest(&self, reference: &Reference, digest: &str) -> Result<Option<Image>, ImageError> {
        let Ok(bytes) = fs::read(self.blob_path(digest)) else { return Ok(None) };
        let manifest_digest = match manifest::classify(None, &bytes) {
            ManifestKind::Image => digest.to_string(),
            ManifestKind::Index => {
                let index = parse_json::<Index>(reference, digest, "image index", &bytes)?;
                match manifest::pick_platform(&index) {
                    Some(descriptor) => descriptor.digest.clone(),
                    None => return Ok(None),
                }
            }
            ManifestKind::Unsupported(_) => return Ok(None),
        };
        self.installed_image(reference, &manifest_digest)
    }

    fn installed_image(&self, reference: &Reference, manifest_digest: &str) -> Result<Option<Image>, ImageError> {
        self.installed_image_named(&reference.to_string(), manifest_digest)
    }

    /// The unpacked image with this manifest digest, if complete, marked as used now.
    fn installed_image_named(&self, reference: &str, manifest_digest: &str) -> Result<Option<Image>, ImageError> {
        let Some(hex) = manifest_digest.strip_prefix("sha256:").filter(|hex| is_sha256_hex(hex)) else { return Ok(None) };
        let directory = self.inner.images_dir.join(hex);
        let _catalog = self.lock_catalog();
        let record_path = directory.join("image.json");
        let record: ImageRecord = match fs::read(&record_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ImageError::CacheIo {
                path: record_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, source),
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ImageError::CacheIo { path: record_path, source: error }),
        };
        let config_path = directory.join("config.json");
        let config_bytes = fs::read(&config_path).map_err(ImageError::cache_io(&config_path))?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|source| ImageError::CacheIo { path: config_path, source: io::Error::new(io::ErrorKind::InvalidData, source) })?;
        touch(&directory.join("last-used"))?;
        Ok(Some(Image {
            reference: reference.to_string(),
            manifest_digest: record.manifest_digest,
            rootfs: directory.join("rootfs"),
            config,
            size_bytes: record.rootfs_bytes,
        }))
    }

    /// Every complete image with its last-use time.
    fn installed_records(&self) -> Result<Vec<(ImageRecord, SystemTime)>, ImageError> {
        let images_dir = &self.inner.images_dir;
        let mut records = Vec::new();
        for entry in fs::read_dir(images_dir).map_err(ImageError::cache_io(images_dir))? {
            let entry = entry.map_err(ImageError::cache_io(images_dir))?;
            if !is_sha256_hex(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let record_path = entry.path().join("image.json");
            let Ok(bytes) = fs::read(&record_path) else { continue };
            let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else {
                tracing::warn!(path = %record_path.display(), "ignoring unreadable image record");
                continue;
            };
            let last_used =
                fs::metadata(entry.path().join("last-used")).and_then(|metadata| metadata.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            records.push((record, last_used));
        }
        Ok(records)
    }

    /// After a failed pull: removes the blobs it downloaded that no image and no other pull uses.
    fn remove_unused_blobs(&self, downloaded: &[String]) -> Result<(), ImageError> {
        if downloaded.is_empty() {
            return Ok(());
        }
        let _catalog = self.lock_catalog();
        let used: HashSet<String> = self.installed_records()?.into_iter().flat_map(|(record, _)| record.blobs).collect();
        let pins = self.inner.pins.lock().unwrap_or_else(|poison| poison.into_inner());
        for digest in downloaded {
            if !used.contains(digest) && !pins.contains_key(digest) {
                remove_file_if_exists(&self.blob_path(digest))?;
            }
        }
        Ok(())
    }

    fn pin(&self, digests: &[String]) {
        let mut pins = self.inner.pins.lock().unwrap_or_else(|poison| poison.into_inner());
        for digest in digests {
            *pins.entry(digest.clone()).or_default() += 1;
        }
    }

    fn unpin(&self, digests: &[String]) {
        let mut pins = self.inner.pins.lock().unwrap_or_else(|poison| poison.into_inner());
        for digest in digests {
            if let Some(count) = pins.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(digest);
                }
            }
        }
    }

    fn lock_catalog(&self) -> MutexGuard<'_, ()> {
        self.inner.catalog.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.inner.blobs_dir.join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    fn image_dir(&self, manifest_digest: &str) -> PathBuf {
        self.inner.images_dir.join(manifest_digest.strip_prefix("sha256:").unwrap_or(manifest_digest))
    }

    /// A fresh temporary name in `directory`: `.tmp-<pid>-<n>-<hex>`, recognised by `remove_stale_temporaries`.
    fn temporary_path(&self, directory: &Path, digest: &str) -> PathBuf {
        let counter = self.inner.temp_counter.fetch_add(1, Ordering::Relaxed);
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        directory.join(format!(".tmp-{}-{counter}-{hex}", std::process::id()))
    }
}

/// A resolved image manifest.
struct Resolved {
    manifest_digest: String,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    /// The index it was chosen from, as (digest, bytes).
    index: Option<(String, Vec<u8>)>,
}

impl Resolved {
    fn blob_digests(&self) -> Vec<String> {
        let mut blobs = vec![self.manifest_digest.clone(), self.manifest.config.digest.clone()];
        blobs.extend(self.manifest.layers.iter().map(|layer| layer.digest.clone()));
        if let Some((digest, _)) = &self.index {
            blobs.push(digest.clone());
        }
        blobs.sort();
        blobs.dedup();
        blobs
    }
}

fn report_done(progress: &(dyn Fn(PullProgress) + Send + Sync), image: &Image) {
    progress(PullProgress {
        digest: image.manifest_digest.clone(),
        bytes_done: image.size_bytes,
        bytes_total: image.size_bytes,
        phase: PullPhase::Done,
    });
}

/// Checks a manifest document against the digest it should have (if known) and returns its digest.
fn verify_document(reference: &Reference, body: &[u8], expected: Option<&str>) -> Result<String, ImageError> {
    let actual = registry::sha256_digest(body);
    match expected {
        Some(expected) if expected != actual => Err(ImageError::DigestMismatch {
            reference: reference.to_string(),
            digest: expected.to_string(),
            expected: expected.to_string(),
            actual,
        }),
        _ => Ok(actual),
    }
}

fn check_digest_syntax(reference: &Reference, digest: &str) -> Result<(), ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(()),
        _ => Err(ImageError::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: format!("descriptor with digest {digest:?}"),
        }),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    reference: &Reference,
    digest: &str,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::InvalidJson {
        reference: reference.to_string(),
        digest: digest.to_string(),
        what,
        source,
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ImageError> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|source| ImageError::CacheIo { path: path.to_path_buf(), source: source.into() })?;
    fs::write(path, bytes).map_err(ImageError::cache_io(path))
}

fn touch(path: &Path) -> Result<(), ImageError> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let time = libc::timespec { tv_sec: now.as_secs() as libc::time_t, tv_nsec: now.subsec_nanos() as _ };
    unpack::set_times(path, time).map_err(ImageError::cache_io(path))
}

fn remove_file_if_exists(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(ImageError::CacheIo { path: path.to_path_buf(), source: error }),
        _ => Ok(()),
    }
}

/// Bytes of regular files under `root`, each inode counted once.
fn tree_size(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() && seen.insert((metadata.dev(), metadata.ino())) {
                total += metadata.len();
            }
        }
    }
    Ok(total)
}

/// Removes `.tmp-<pid>-…` entries whose process is gone (leftovers of a crash) from `directory`.
fn remove_stale_temporaries(directory: &Path) -> Result<(), ImageError> {
    for entry in fs::read_dir(directory).map_err(ImageError::cache_io(directory))? {
        let entry = entry.map_err(ImageError::cache_io(directory))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-") else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        let alive = pid.parse::<u32>().is_ok_and(|pid| pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            unpack::remove_any(&entry.path()).map_err(ImageError::cache_io(entry.path()))?;
        }
    }
    Ok(())
}

/// Removes a temporary file or directory when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(error) = unpack::remove_any(&path)
        {
            tracing::warn!(path = %path.display(), %error, "cannot remove temporary");
        }
    }
}

/// Async locks by key, created on first use and dropped when nobody holds or waits for them.
#[derive(Default)]
struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct KeyedGuard<'a> {
    owner: &'a KeyedLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let lock = self.locks.lock().unwrap_or_else(|poison| poison.into_inner()).entry(key.to_string()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        KeyedGuard { owner: self, key: key.to_string(), lock, guard: Some(guard) }
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock().unwrap_or_else(|poison| poison.into_inner());
        // The map and this guard hold the only references: nobody else waits for the key.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.key);
        }
    }
}
