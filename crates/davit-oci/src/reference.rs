//! Image references: `host[:port]/repo[:tag][@sha256:digest]` with Docker's defaults.

use std::fmt;
use std::str::FromStr;

use crate::ImageError;

/// The registry assumed when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag assumed when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed image reference.
///
/// Invariant: `registry` is a host with optional port, `repository` is non-empty lowercase path components,
/// at least one of `tag` and `digest` is set, and `digest` (if set) is `sha256:` plus 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses a reference the way `docker pull` does: no host means `docker.io`, a single-component
    /// repository on docker.io gets the `library/` prefix, and no tag nor digest means `latest`.
    pub fn parse(input: &str) -> Result<Reference, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference { reference: input.to_string(), reason: reason.to_string() };
        if input.is_empty() {
            return Err(invalid("empty reference"));
        }
        if input.len() > 4096 {
            return Err(invalid("longer than 4096 characters"));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(|| invalid("digest must start with sha256:"))?;
                if !is_sha256_hex(hex) {
                    return Err(invalid("digest must be sha256: followed by 64 lowercase hex digits"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a registry port).
        let last_slash = name_and_tag.rfind('/').map_or(0, |index| index + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (&name_and_tag[..colon], Some(name_and_tag[colon + 1..].to_string()))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = &tag
            && !is_valid_tag(tag)
        {
            return Err(invalid("tag must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if !is_valid_host(&registry) {
            return Err(invalid("registry must be a host name or address with an optional port"));
        }
        if repository.is_empty() {
            return Err(invalid("repository name is empty"));
        }
        if let Some(component) = repository.split('/').find(|component| !is_valid_path_component(component)) {
            return Err(invalid(&format!(
                "repository component {component:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'"
            )));
        }
        let repository =
            if registry == DEFAULT_REGISTRY && !repository.contains('/') { format!("library/{repository}") } else { repository };
        let tag = if tag.is_none() && digest.is_none() { Some(DEFAULT_TAG.to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The registry as written in the reference (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) the distribution API is served from; `docker.io` maps to `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY { "registry-1.docker.io" } else { &self.registry }
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The `sha256:…` digest, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ImageError;

    fn from_str(input: &str) -> Result<Reference, ImageError> {
        Reference::parse(input)
    }
}

/// True for exactly 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        // A bracketed IPv6 address has colons of its own.
        Some((name, port)) if !port.contains(']') => (name, Some(port)),
        _ => (host, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return false;
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty() && name.split('.').all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alphanumeric = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    if bytes.is_empty() || !alphanumeric(&bytes[0]) || !alphanumeric(&bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators: '.', '_', '__' or any run of '-'; never two different separators in a row.
    let mut previous_separator: Option<u8> = None;
    let mut run = 0;
    for &byte in bytes {
        if alphanumeric(&byte) {
            previous_separator = None;
            run = 0;
            continue;
        }
        if !matches!(byte, b'.' | b'_' | b'-') {
            return false;
        }
        run += 1;
        match previous_separator {
            None => previous_separator = Some(byte),
            Some(previous) if previous == byte && (byte == b'-' || (byte == b'_' && run == 2)) => {}
            Some(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let reference = Reference::parse(input).unwrap_or_else(|error| panic!("{input}: {error}"));
        assert_eq!(reference.to_string(), expected, "{input}");
    }

    fn check_error(input: &str, expected_reason: &str) {
        let error = Reference::parse(input).expect_err(input).to_string();
        assert!(error.contains(expected_reason), "{input}: {error}");
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_defaults() {
        check("busybox", "docker.io/library/busybox:latest");
        check("busybox:1.36", "docker.io/library/busybox:1.36");
        check("library/busybox", "docker.io/library/busybox:latest");
        check("someone/app:v1", "docker.io/someone/app:v1");
        check("docker.io/busybox", "docker.io/library/busybox:latest");
        check(&format!("busybox@{DIGEST}"), &format!("docker.io/library/busybox@{DIGEST}"));
    }

    #[test]
    fn explicit_registries() {
        check("127.0.0.1:5000/web:1", "127.0.0.1:5000/web:1");
        check("localhost/web", "localhost/web:latest");
        check("localhost:5000/a/b/c", "localhost:5000/a/b/c:latest");
        check("ghcr.io/org/app:1.2.3", "ghcr.io/org/app:1.2.3");
        check("[::1]:5000/web:1", "[::1]:5000/web:1");
        check(&format!("127.0.0.1:5000/web:1@{DIGEST}"), &format!("127.0.0.1:5000/web:1@{DIGEST}"));
        check("reg.example:443/my-app__x/sub.name:tag_1", "reg.example:443/my-app__x/sub.name:tag_1");
    }

    #[test]
    fn accessors() {
        let reference = Reference::parse(&format!("127.0.0.1:5000/web@{DIGEST}")).unwrap();
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.api_host(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "web");
        assert_eq!(reference.tag(), None);
        assert_eq!(reference.manifest_reference(), DIGEST);
        assert_eq!(Reference::parse("busybox").unwrap().api_host(), "registry-1.docker.io");
        assert_eq!(Reference::parse("busybox").unwrap().manifest_reference(), "latest");
    }

    #[test]
    fn bad_references() {
        check_error("", "empty reference");
        check_error("Busybox", "repository component \"Busybox\"");
        check_error("busybox:", "tag must be");
        check_error("busybox:-x", "tag must be");
        check_error("busybox@sha256:abc", "64 lowercase hex");
        check_error("busybox@md5:0123", "must start with sha256:");
        check_error("127.0.0.1:5000/", "repository name is empty");
        check_error("127.0.0.1:99999/web", "registry must be");
        check_error("a//b", "repository component \"\"");
        check_error("web/a..b", "repository component \"a..b\"");
        check_error("web/a-", "repository component \"a-\"");
        check_error("web/a___b", "repository component \"a___b\"");
    }
}
