//! The registry's JSON documents (manifests, indexes, image configs) and the image config davit keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header for manifest requests: the four formats this crate understands.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor as found in manifests and indexes.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
}

/// An OCI image manifest or a Docker v2 schema 2 manifest (same shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An OCI image index or a Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// Only the fields this crate reads to decide what a manifest document is.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestProbe {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub manifests: Option<serde_json::Value>,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// What a manifest document turned out to be.
pub(crate) enum ManifestKind {
    Image,
    Index,
    Unsupported(String),
}

/// Classifies a manifest document by its `Content-Type`, falling back to its `mediaType` field and its shape.
pub(crate) fn classify(content_type: Option<&str>, body: &[u8]) -> ManifestKind {
    let probe: Option<ManifestProbe> = serde_json::from_slice(body).ok();
    let declared = content_type
        .map(|value| value.split(';').next().unwrap_or("").trim().to_string())
        .filter(|value| matches!(value.as_str(), OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST))
        .or_else(|| probe.as_ref().and_then(|probe| probe.media_type.clone()));
    match declared.as_deref() {
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => ManifestKind::Image,
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => ManifestKind::Index,
        Some(other) => ManifestKind::Unsupported(other.to_string()),
        None => match probe {
            Some(probe) if probe.schema_version == Some(2) && probe.manifests.is_some() => ManifestKind::Index,
            Some(probe) if probe.schema_version == Some(2) && probe.config.is_some() => ManifestKind::Image,
            _ => ManifestKind::Unsupported(content_type.unwrap_or("unknown").to_string()),
        },
    }
}

/// The image config blob (`application/vnd.oci.image.config.v1+json` and Docker's equivalent).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

/// The parts of an image's config that a driver needs to start a container. Saved as `config.json` next to
/// the rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The image's `ENTRYPOINT` (may be empty).
    pub entrypoint: Vec<String>,
    /// The image's `CMD`, the entrypoint's default arguments (may be empty).
    pub cmd: Vec<String>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    /// Working directory; empty means `/`.
    pub working_dir: String,
    /// `user[:group]` as in the image, empty for root.
    pub user: String,
    /// Exposed ports as written in the image, e.g. `80/tcp`, sorted.
    pub exposed_ports: Vec<String>,
}

impl From<ConfigFile> for ImageConfig {
    fn from(file: ConfigFile) -> ImageConfig {
        let config = file.config.unwrap_or_default();
        ImageConfig {
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            working_dir: config.working_dir.unwrap_or_default(),
            user: config.user.unwrap_or_default(),
            exposed_ports: config.exposed_ports.unwrap_or_default().into_keys().collect(),
        }
    }
}

/// Picks the linux/amd64 entry of an index.
pub(crate) fn pick_platform(index: &Index) -> Option<&Descriptor> {
    index
        .manifests
        .iter()
        .find(|descriptor| descriptor.platform.as_ref().is_some_and(|platform| platform.os == "linux" && platform.architecture == "amd64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config() {
        let json = br#"{"architecture":"amd64","config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
            "Env":["PATH=/bin"],"WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"8080/tcp":{},"53/udp":{}}}}"#;
        let file: ConfigFile = serde_json::from_slice(json).unwrap();
        let config = ImageConfig::from(file);
        assert_eq!(config.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(config.cmd, ["echo hi"]);
        assert_eq!(config.env, ["PATH=/bin"]);
        assert_eq!(config.working_dir, "/srv");
        assert_eq!(config.user, "1000:1000");
        assert_eq!(config.exposed_ports, ["53/udp", "8080/tcp"]);
        let empty = ImageConfig::from(serde_json::from_slice::<ConfigFile>(b"{}").unwrap());
        assert_eq!(empty, ImageConfig::default());
    }

    #[test]
    fn classifies_and_picks_platform() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        assert!(matches!(classify(None, index), ManifestKind::Index));
        assert!(matches!(classify(Some(OCI_INDEX), index), ManifestKind::Index));
        let parsed: Index = serde_json::from_slice(index).unwrap();
        assert_eq!(pick_platform(&parsed).unwrap().digest, "sha256:b");
        let manifest = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":2},"layers":[]}"#;
        assert!(matches!(classify(Some("application/json"), manifest), ManifestKind::Image));
        let schema1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        let kind = classify(Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), schema1);
        assert!(matches!(kind, ManifestKind::Unsupported(_)));
    }
}
