//! OCI images for davit's container driver.
//!
//! This crate pulls OCI and Docker images over the distribution v2 API (anonymous, basic or bearer-token
//! auth), verifies every blob against its sha256 digest while it streams to disk, keeps blobs in a
//! content-addressed cache, and unpacks an image's layers (gzip, zstd or plain tar, with OCI whiteouts) into
//! one read-only rootfs per image manifest, next to the image's parsed config.
//!
//! It never runs containers (the driver builds the runtime bundle and calls crun/runc) and never talks to the
//! davit server: its only network peers are registries named by image references.
//!
//! Entry points: [`ImageStore::open`] and [`ImageStore::pull`], which returns an [`Image`] with the rootfs
//! path and [`ImageConfig`]; [`ImageStore::gc`] evicts least-recently-used images; [`copy_rootfs`] copies a
//! rootfs for kernels without overlayfs. Behind the `testing` feature, `testing::TestRegistry` runs a
//! throw-away registry for tests.
//!
//! On-disk layout under [`ImageStoreConfig::root`]:
//!
//! ```text
//! blobs/sha256/<hex>                  verified blobs (manifests, indexes, configs, layers)
//! blobs/sha256/.tmp-<pid>-<n>-<hex>   downloads in progress (removed on failure and at open)
//! rootfs/<manifest-hex>/rootfs/       the unpacked rootfs, shared read-only by all tasks of the image
//! rootfs/<manifest-hex>/config.json   the ImageConfig
//! rootfs/<manifest-hex>/image.json    which blobs the image uses and its size (internal)
//! rootfs/<manifest-hex>/last-used     its mtime is the image's last use, for LRU eviction
//! rootfs/.tmp-<pid>-<n>-<hex>/        an unpack in progress, renamed into place when complete
//! ```
//!
//! **Invariant:** a blob file exists only after its bytes hashed to its name, and an `rootfs/<hex>` directory
//! exists only with every layer applied. One [`ImageStore`] (cloned freely) should own a root per process;
//! concurrent pulls through it are deduplicated per manifest and per blob.

mod copy;
mod error;
mod manifest;
mod reference;
mod registry;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod unpack;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use copy::copy_rootfs;
pub use error::ImageError;
pub use manifest::ImageConfig;
pub use reference::{DEFAULT_REGISTRY, DEFAULT_TAG, Reference};
pub use store::ImageStore;

/// Where the cache lives, how to reach registries, and how big the cache may grow.
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    /// The cache directory; created if missing.
    pub root: PathBuf,
    /// Per-registry settings, keyed by the registry as written in references (`127.0.0.1:5000`, `ghcr.io`,
    /// `docker.io`). Registries not listed are reached anonymously over HTTPS (plain HTTP on loopback).
    pub registries: BTreeMap<String, RegistryConfig>,
    /// [`ImageStore::gc`] evicts least-recently-used images until blobs plus rootfs trees fit in this many bytes.
    pub max_cache_bytes: u64,
}

/// How to talk to one registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Use plain HTTP instead of HTTPS (loopback registries always use plain HTTP).
    pub insecure: bool,
    /// Username for basic auth, or for fetching bearer tokens.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A pulled image, unpacked and ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The reference it was pulled or looked up by, normalised (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// `sha256:…` of the image manifest (for an index: of the linux/amd64 manifest chosen from it).
    pub manifest_digest: String,
    /// The unpacked rootfs. Shared by every task of the image: treat it as read-only.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// Bytes of the unpacked rootfs (regular files, hardlinks counted once).
    pub size_bytes: u64,
}

/// One progress report of [`ImageStore::pull`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    /// The blob concerned (`sha256:…`): a layer or config while downloading, verifying and unpacking; the
    /// manifest digest when done; empty while resolving a tag.
    pub digest: String,
    pub bytes_done: u64,
    /// Size from the descriptor; 0 when unknown (resolving).
    pub bytes_total: u64,
    pub phase: PullPhase,
}

/// The stages a pull goes through, in order (downloading/verifying repeat per blob, unpacking per layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPhase {
    Resolving,
    Downloading,
    Verifying,
    Unpacking,
    Done,
}

/// What [`ImageStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifest digests of the images removed, least recently used first.
    pub removed_images: Vec<String>,
    /// Blobs removed, because no remaining image used them.
    pub removed_blobs: usize,
    pub freed_bytes: u64,
    /// Bytes of blobs and rootfs trees still in the cache.
    pub remaining_bytes: u64,
}

/// A progress callback that ignores every report.
pub fn no_progress(_: PullProgress) {}
