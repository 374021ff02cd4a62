//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while pulling, caching or unpacking an image.
///
/// Messages name the image reference, the registry and the blob digest involved, so the text alone tells a
/// user what to fix (a typo in the reference, a registry that is down, wrong credentials, a corrupt blob).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference string does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// The registry does not know the repository, tag or digest.
    #[error("image {reference} not found (registry answered {status} {code})")]
    NotFound { reference: String, status: u16, code: String },

    /// No connection could be made to the registry.
    #[error("registry {registry} unreachable: {detail}")]
    Unreachable {
        registry: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },

    /// The registry refused the credentials (or demanded credentials that are not configured).
    #[error("authentication to registry {registry} failed ({status}){hint}")]
    AuthFailed { registry: String, status: u16, hint: String },

    /// The registry answered with an unexpected status.
    #[error("registry {registry} answered {status} for {what} of {reference}: {body}")]
    RegistryStatus { registry: String, reference: String, what: String, status: u16, body: String },

    /// The connection broke while a response was being read.
    #[error("transfer of {what} of {reference} from registry {registry} failed")]
    Transfer {
        registry: String,
        reference: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },

    /// A blob (manifest, config or layer) does not hash to its digest. Nothing of it is kept.
    #[error("digest mismatch for blob {digest} of {reference}: expected {expected}, got {actual}")]
    DigestMismatch { reference: String, digest: String, expected: String, actual: String },

    /// A blob is larger than its descriptor (or the manifest size limit) says.
    #[error("blob {digest} of {reference} is larger than the {limit} bytes allowed")]
    BlobTooLarge { reference: String, digest: String, limit: u64 },

    /// The manifest or index has a media type this crate does not handle (for example Docker schema 1).
    #[error("unsupported manifest media type {media_type:?} for {reference}")]
    UnsupportedManifest { reference: String, media_type: String },

    /// An image index lists no linux/amd64 image.
    #[error("image index of {reference} has no linux/amd64 manifest")]
    NoMatchingPlatform { reference: String },

    /// A manifest, index or image config is not valid JSON of the expected shape.
    #[error("invalid {what} {digest} of {reference}")]
    InvalidJson {
        reference: String,
        digest: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A layer has an entry that would escape the rootfs or is otherwise unsafe to apply.
    #[error("layer {digest} of {reference} has an unsafe entry {entry:?}: {reason}")]
    UnsafeLayerEntry { reference: String, digest: String, entry: String, reason: String },

    /// A layer could not be decompressed or applied.
    #[error("unpacking layer {digest} of {reference} failed")]
    Unpack {
        reference: String,
        digest: String,
        #[source]
        source: io::Error,
    },

    /// Reading or writing the cache directory failed.
    #[error("image cache I/O failed at {path}")]
    CacheIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An image asked for by manifest digest is not in the cache.
    #[error("image {digest} is not in the cache")]
    NotCached { digest: String },
}

impl ImageError {
    pub(crate) fn cache_io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::CacheIo { path, source }
    }
}
