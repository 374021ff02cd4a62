//! A client for the distribution v2 API: manifests and blobs, with anonymous, basic and bearer-token auth.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::manifest::MANIFEST_ACCEPT;
use crate::{ImageError, PullPhase, PullProgress, Reference, RegistryConfig};

/// Manifests and configs are read into memory; refuse anything larger than this.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Report download progress at most once per this many bytes (and at the end).
const PROGRESS_STEP: u64 = 1024 * 1024;

/// A fetched manifest or index document, not yet verified against a digest.
pub(crate) struct FetchedManifest {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// The `Docker-Content-Digest` header, which registries set to the digest of the body.
    pub content_digest: Option<String>,
}

pub(crate) struct RegistryClient {
    http: reqwest::Client,
    registries: BTreeMap<String, RegistryConfig>,
    /// The `Authorization` value that worked last, per (registry, repository).
    authorizations: Mutex<HashMap<(String, String), HeaderValue>>,
}

impl RegistryClient {
    pub fn new(registries: BTreeMap<String, RegistryConfig>) -> Result<RegistryClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("davit-oci/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .build()?;
        Ok(RegistryClient { http, registries, authorizations: Mutex::new(HashMap::new()) })
    }

    fn config_for(&self, reference: &Reference) -> Option<&RegistryConfig> {
        self.registries.get(reference.registry()).or_else(|| self.registries.get(reference.api_host()))
    }

    /// `http://` for loopback hosts and registries configured as insecure, `https://` otherwise.
    fn base_url(&self, reference: &Reference) -> String {
        let insecure = self.config_for(reference).is_some_and(|config| config.insecure) || is_loopback_host(reference.api_host());
        format!("{}://{}", if insecure { "http" } else { "https" }, reference.api_host())
    }

    /// Fetches a manifest or index by tag or digest.
    pub async fn fetch_manifest(&self, reference: &Reference, tag_or_digest: &str) -> Result<FetchedManifest, ImageError> {
        let path = format!("/v2/{}/manifests/{}", reference.repository(), tag_or_digest);
        let what = format!("manifest {tag_or_digest}");
        let mut response = self.get(reference, &path, Some(MANIFEST_ACCEPT), &what).await?;
        let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
        let content_type = header(CONTENT_TYPE.as_str());
        let content_digest = header("docker-content-digest");
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|source| self.transfer(reference, &what, source))? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(ImageError::BlobTooLarge {
                    reference: reference.to_string(),
                    digest: tag_or_digest.to_string(),
                    limit: MAX_MANIFEST_BYTES,
                });
            }
        }
        Ok(FetchedManifest { body, content_type, content_digest })
    }

    /// Streams blob `digest` into `file`, hashing as it goes. Fails with [`ImageError::DigestMismatch`] when the
    /// bytes do not hash to `digest` and with [`ImageError::BlobTooLarge`] past `size` bytes. Returns the size.
    pub async fn download_blob(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        file: &mut tokio::fs::File,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<u64, ImageError> {
        let path = format!("/v2/{}/blobs/{}", reference.repository(), digest);
        let what = format!("blob {digest}");
        let mut response = self.get(reference, &path, None, &what).await?;
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut reported: u64 = 0;
        let report = |phase: PullPhase, bytes_done: u64| {
            progress(PullProgress { digest: digest.to_string(), bytes_done, bytes_total: size, phase });
        };
        report(PullPhase::Downloading, 0);
        while let Some(chunk) = response.chunk().await.map_err(|source| self.transfer(reference, &what, source))? {
            done += chunk.len() as u64;
            if done > size {
                return Err(ImageError::BlobTooLarge { reference: reference.to_string(), digest: digest.to_string(), limit: size });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|source| ImageError::CacheIo { path: "blob download".into(), source })?;
            if done - reported >= PROGRESS_STEP {
                reported = done;
                report(PullPhase::Downloading, done);
            }
        }
        file.flush().await.map_err(|source| ImageError::CacheIo { path: "blob download".into(), source })?;
        report(PullPhase::Verifying, done);
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                reference: reference.to_string(),
                digest: digest.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(done)
    }

    /// GETs `path`, answering an auth challenge once, and maps error statuses to [`ImageError`]s.
    async fn get(&self, reference: &Reference, path: &str, accept: Option<&str>, what: &str) -> Result<reqwest::Response, ImageError> {
        let url = format!("{}{}", self.base_url(reference), path);
        let key = (reference.api_host().to_string(), reference.repository().to_string());
        let mut challenged = false;
        loop {
            let mut request = self.http.get(&url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            let cached = self.authorizations.lock().unwrap_or_else(|poison| poison.into_inner()).get(&key).cloned();
            if let Some(authorization) = cached {
                request = request.header(AUTHORIZATION, authorization);
            }
            let response = request.send().await.map_err(|source| self.send_error(reference, what, source))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = response.headers().get(WWW_AUTHENTICATE).and_then(|value| value.to_str().ok()).unwrap_or("").to_string();
                let authorization = self.answer_challenge(reference, &challenge).await?;
                self.authorizations.lock().unwrap_or_else(|poison| poison.into_inner()).insert(key.clone(), authorization);
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ImageError::AuthFailed {
                    registry: reference.registry().to_string(),
                    status: status.as_u16(),
                    hint: self.credentials_hint(reference),
                },
                StatusCode::NOT_FOUND => ImageError::NotFound {
                    reference: reference.to_string(),
                    status: status.as_u16(),
                    code: error_code(&body).unwrap_or_else(|| "NOT_FOUND".to_string()),
                },
                _ => ImageError::RegistryStatus {
                    registry: reference.registry().to_string(),
                    reference: reference.to_string(),
                    what: what.to_string(),
                    status: status.as_u16(),
                    body: body.chars().take(200).collect(),
                },
            });
        }
    }

    fn credentials_hint(&self, reference: &Reference) -> String {
        match self.config_for(reference) {
            Some(RegistryConfig { username: Some(_), .. }) => String::new(),
            _ => format!(": no credentials configured for {}", reference.registry()),
        }
    }

    /// Builds the `Authorization` value for a `WWW-Authenticate` challenge.
    async fn answer_challenge(&self, reference: &Reference, challenge: &str) -> Result<HeaderValue, ImageError> {
        let auth_failed = |status: u16| ImageError::AuthFailed {
            registry: reference.registry().to_string(),
            status,
            hint: self.credentials_hint(reference),
        };
        let credentials =
            self.config_for(reference).and_then(|config| Some((config.username.clone()?, config.password.clone().unwrap_or_default())));
        let (scheme, parameters) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let (username, password) = credentials.ok_or_else(|| auth_failed(401))?;
            let value = format!("Basic {}", base64(format!("{username}:{password}").as_bytes()));
            return HeaderValue::from_str(&value).map_err(|_| auth_failed(401));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth_failed(401));
        }
        let realm = parameters.get("realm").ok_or_else(|| auth_failed(401))?;
        let default_scope = format!("repository:{}:pull", reference.repository());
        let scope = parameters.get("scope").unwrap_or(&default_scope);
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = parameters.get("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some((username, password)) = &credentials {
            request = request.basic_auth(username, Some(password));
        }
        let what = "auth token";
        let response = request.send().await.map_err(|source| self.send_error(reference, what, source))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(auth_failed(status.as_u16()));
        }
        if !status.is_success() {
            return Err(ImageError::RegistryStatus {
                registry: reference.registry().to_string(),
                reference: reference.to_string(),
                what: format!("{what} from {realm}"),
                status: status.as_u16(),
                body: String::new(),
            });
        }
        let body = response.bytes().await.map_err(|source| self.transfer(reference, what, source))?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|source| ImageError::InvalidJson {
            reference: reference.to_string(),
            digest: realm.to_string(),
            what: "token response",
            source,
        })?;
        let token = parsed.token.or(parsed.access_token).ok_or_else(|| auth_failed(status.as_u16()))?;
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| auth_failed(status.as_u16()))
    }

    fn send_error(&self, reference: &Reference, what: &str, source: reqwest::Error) -> ImageError {
        if source.is_connect() || source.is_timeout() {
            ImageError::Unreachable { registry: reference.registry().to_string(), detail: root_cause(&source), source }
        } else {
            self.transfer(reference, what, source)
        }
    }

    fn transfer(&self, reference: &Reference, what: &str, source: reqwest::Error) -> ImageError {
        ImageError::Transfer {
            registry: reference.registry().to_string(),
            reference: reference.to_string(),
            what: what.to_string(),
            source,
        }
    }
}

/// True for `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// Describes the innermost cause of a connection failure, e.g. "connection refused".
fn root_cause(error: &reqwest::Error) -> String {
    let mut current: &(dyn std::error::Error + 'static) = error;
    loop {
        if let Some(io_error) = current.downcast_ref::<std::io::Error>() {
            return io_error.kind().to_string();
        }
        match current.source() {
            Some(next) => current = next,
            None => return if error.is_timeout() { "timed out".to_string() } else { current.to_string() },
        }
    }
}

/// The first `errors[].code` of a distribution API error body.
fn error_code(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value.get("errors")?.get(0)?.get("code")?.as_str().map(str::to_string)
}

/// Splits `Bearer realm="…",service="…",scope="…"` into the scheme and its parameters.
pub(crate) fn parse_challenge(challenge: &str) -> (String, HashMap<String, String>) {
    let challenge = challenge.trim();
    let (scheme, rest) = challenge.split_once(' ').unwrap_or((challenge, ""));
    let mut parameters = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((index, character)) = chars.next() {
                match character {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    other => value.push(other),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        parameters.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), parameters)
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Standard base64 with padding, for basic auth headers.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let triple = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(ALPHABET[(triple >> (18 - 6 * index) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (scheme, parameters) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(parameters["realm"], "https://auth.docker.io/token");
        assert_eq!(parameters["service"], "registry.docker.io");
        assert_eq!(parameters["scope"], "repository:library/busybox:pull");
        let (scheme, parameters) = parse_challenge(r#"Basic realm="davit \"test\"", charset=UTF-8"#);
        assert_eq!(scheme, "Basic");
        assert_eq!(parameters["realm"], "davit \"test\"");
        assert_eq!(parameters["charset"], "UTF-8");
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["docker.io", "registry-1.docker.io", "10.0.0.1:5000", "[::2]:5000", "localhost.example"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(error_code(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}"#).as_deref(), Some("MANIFEST_UNKNOWN"));
    }
}
