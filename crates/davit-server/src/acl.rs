//! Authentication and authorization of API requests, and the audit log of writes.
//!
//! Every route of [`crate::api`] is declared with a [`Rule`]; [`authorize`] runs before its handler: it
//! finds the request's token (`X-Davit-Token` or `Authorization: Bearer`), looks its SHA-256 up in the
//! view's [`AclTable`], compiles the token's policies into an [`Acl`] and checks the rule in the request's
//! namespace (`?namespace=`, default `default`). No token, an unknown or an expired one: 401 with the same
//! message for all three. A token without the capability: 403 naming it. With ACLs off every request
//! passes. The handler finds the caller as a [`Caller`] extension.
//!
//! Writes (every method but GET and HEAD) are appended to the audit log, when there is one, as JSON lines
//! with the time, the token's accessor id (never its secret), the namespace, the route, the path and the
//! answer's status code.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use davit_api::acl::{ANONYMOUS_POLICY, Acl, AclPolicy, Rule, StoredToken, TOKEN_HEADER, TokenType};
use imbl::OrdMap;
use sha2::Digest;

use crate::Shared;
use crate::api::Failure;

/// The message of every 401: it does not say whether the token was missing, unknown or expired.
pub const UNAUTHENTICATED: &str = "token not found or expired";

/// Policies and tokens, part of every view snapshot.
#[derive(Clone, Default)]
pub struct AclTable {
    pub policies: OrdMap<String, Arc<AclPolicy>>,
    /// By accessor id.
    pub tokens: OrdMap<String, Arc<StoredToken>>,
    /// Secret hash → accessor id.
    by_secret: imbl::HashMap<String, String>,
    /// `acl bootstrap` ran.
    pub bootstrapped: bool,
}

impl AclTable {
    pub fn upsert_policy(&mut self, policy: AclPolicy) {
        self.policies.insert(policy.name.clone(), Arc::new(policy));
    }

    pub fn upsert_token(&mut self, stored: StoredToken) {
        self.remove_token(&stored.token.accessor_id);
        self.by_secret.insert(stored.secret_hash.clone(), stored.token.accessor_id.clone());
        self.tokens.insert(stored.token.accessor_id.clone(), Arc::new(stored));
    }

    pub fn remove_token(&mut self, accessor_id: &str) {
        if let Some(old) = self.tokens.remove(accessor_id) {
            self.by_secret.remove(&old.secret_hash);
        }
    }

    /// The live token whose secret is `secret`.
    pub fn token_by_secret(&self, secret: &str, now: u64) -> Option<&Arc<StoredToken>> {
        let accessor_id = self.by_secret.get(&secret_hash(secret))?;
        self.tokens.get(accessor_id).filter(|stored| !stored.token.is_expired(now))
    }

    /// The stored policies among `names` (names of deleted policies are skipped).
    pub fn policies_named<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = &'a Arc<AclPolicy>> + 'a {
        names.iter().filter_map(|name| self.policies.get(name))
    }

    /// What a token may do.
    pub fn acl_of(&self, stored: &StoredToken) -> Acl {
        Acl::of_token(&stored.token, self.policies_named(&stored.token.policies).map(|policy| &policy.rules))
    }

    /// The identity token of a node, if it joined with a join token.
    pub fn node_token(&self, node_id: &str) -> Option<&Arc<StoredToken>> {
        self.tokens.values().find(|stored| stored.token.token_type == TokenType::Node && stored.token.node_id.as_deref() == Some(node_id))
    }
}

/// SHA-256 of a token secret, lowercase hex: how the store and the view know a secret.
pub fn secret_hash(secret: &str) -> String {
    let digest = sha2::Sha256::digest(secret.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A new identity token for `node` and its secret.
pub fn node_token(node: &davit_api::objects::Node, now: u64) -> (StoredToken, String) {
    let secret = new_secret();
    let token = davit_api::acl::AclToken {
        accessor_id: crate::new_id(),
        name: format!("node {}", node.name),
        token_type: TokenType::Node,
        policies: Vec::new(),
        create_time: now,
        expiration_time: None,
        uses_left: None,
        node_id: Some(node.id.clone()),
        create_index: 0,
        modify_index: 0,
    };
    (StoredToken { token, secret_hash: secret_hash(&secret) }, secret)
}

/// A fresh secret: 122 random bits from the OS (a v4 UUID), the shape Nomad's secrets have.
pub fn new_secret() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Who sent a request, as [`authorize`] found it.
#[derive(Clone)]
pub struct Caller {
    /// `None` with ACLs off, or for anonymous requests.
    pub token: Option<Arc<StoredToken>>,
    /// The secret as sent: relayed to agents, which check it themselves.
    pub secret: Option<String>,
    pub acl: Arc<Acl>,
    pub namespace: String,
}

impl Caller {
    /// Adds the caller's token to a request the server makes on its behalf (to an agent, which checks it).
    pub fn relay(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.secret {
            Some(secret) => request.header(TOKEN_HEADER, secret),
            None => request,
        }
    }

    pub fn accessor_id(&self) -> &str {
        self.token.as_ref().map_or(if self.secret.is_some() { "-" } else { "anonymous" }, |stored| stored.token.accessor_id.as_str())
    }
}

/// The secret a request carries, if any.
pub fn request_secret(headers: &HeaderMap) -> Option<String> {
    let text = |name| headers.get(name).and_then(|value: &axum::http::HeaderValue| value.to_str().ok());
    davit_api::acl::request_secret(text(TOKEN_HEADER), text(header::AUTHORIZATION.as_str()))
}

/// The state of one route's [`authorize`] layer.
#[derive(Clone)]
pub struct RouteGuard {
    pub shared: Arc<Shared>,
    pub rule: Rule,
    pub route: &'static str,
}

/// Checks the route's rule, then runs the handler; records writes in the audit log.
pub async fn authorize(State(guard): State<RouteGuard>, mut request: Request, next: Next) -> Response {
    let namespace = davit_api::acl::request_namespace(request.uri().query());
    let secret = request_secret(request.headers());
    // Routes about one node (`/v1/node/{id}/…`) may be called by that node's identity; variable routes are
    // checked against the variable's path.
    let subject = if guard.route.starts_with("/v1/node/{id}") {
        request.uri().path().split('/').nth(3).map(str::to_string)
    } else if guard.route.starts_with("/v1/var/") {
        // Checked as written: variable paths only hold characters that need no percent-encoding.
        let path = request.uri().path().strip_prefix("/v1/var/").unwrap_or_default();
        if path.contains('%') {
            return Failure::bad_request(format!("`{path}` is not a variable path: paths are never percent-encoded")).into_response();
        }
        Some(path.to_string())
    } else {
        None
    };
    let caller = match resolve(&guard.shared, guard.rule, secret, namespace, subject.as_deref()) {
        Ok(caller) => caller,
        Err(failure) => {
            let response = failure.into_response();
            audit(&guard, request.method(), request.uri().path(), None, response.status());
            return response;
        }
    };
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    audit(&guard, &method, &path, Some(&caller), response.status());
    response
}

fn resolve(shared: &Shared, rule: Rule, secret: Option<String>, namespace: String, subject: Option<&str>) -> Result<Caller, Failure> {
    if !shared.acl_enabled {
        return Ok(Caller { token: None, secret, acl: Arc::new(Acl::management()), namespace });
    }
    let snapshot = shared.view.snapshot();
    let table = &snapshot.acl;
    let (token, acl) = match &secret {
        Some(secret) => {
            let stored = table.token_by_secret(secret, crate::now_millis()).ok_or_else(unauthenticated)?;
            if stored.token.uses_left == Some(0) {
                return Err(Failure::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "this join token was used up; create another with `davit acl join-token create`",
                ));
            }
            (Some(Arc::clone(stored)), table.acl_of(stored))
        }
        None if rule == Rule::Bootstrap => (None, Acl::default()),
        None => match table.policies.get(ANONYMOUS_POLICY) {
            Some(anonymous) => (None, Acl::from_policies([&anonymous.rules])),
            None => return Err(unauthenticated()),
        },
    };
    if let Err(denied) = acl.check_about(rule, &namespace, subject) {
        return Err(Failure::new(StatusCode::FORBIDDEN, "forbidden", denied.to_string()));
    }
    Ok(Caller { token, secret, acl: Arc::new(acl), namespace })
}

fn unauthenticated() -> Failure {
    Failure::new(StatusCode::UNAUTHORIZED, "unauthenticated", UNAUTHENTICATED)
}

/// Appends one line per write request to `<data dir>/audit.log`, rotating it by size.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    max_bytes: u64,
}

/// Rotated files kept besides the current one (`audit.log.1` … `.5`).
const AUDIT_KEEP: u32 = 5;

impl AuditLog {
    pub fn new(path: PathBuf) -> AuditLog {
        AuditLog { path, file: Mutex::new(None), max_bytes: 64 * 1024 * 1024 }
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let mut file = self.file.lock().expect("audit log lock");
        if file.as_ref().map(|f| f.metadata().map_or(0, |m| m.len())).unwrap_or(0) >= self.max_bytes {
            *file = None;
            for n in (1..AUDIT_KEEP).rev() {
                let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        if file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            *file = Some(std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?);
        }
        file.as_mut().expect("opened above").write_all(line.as_bytes())
    }
}

fn rotated(path: &std::path::Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn audit(guard: &RouteGuard, method: &Method, path: &str, caller: Option<&Caller>, status: StatusCode) {
    let Some(log) = &guard.shared.audit else { return };
    if *method == Method::GET || *method == Method::HEAD {
        return;
    }
    let line = serde_json::json!({
        "time": crate::now_millis(),
        "accessor_id": caller.map_or("-", Caller::accessor_id),
        "namespace": caller.map_or("-", |caller| caller.namespace.as_str()),
        "method": method.as_str(),
        "route": guard.route,
        "path": path,
        "status": status.as_u16(),
    });
    if let Err(error) = log.append(&format!("{line}\n")) {
        tracing::error!(%error, path = %log.path.display(), "cannot append to the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_known_by_their_sha256() {
        assert_eq!(secret_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn bearer_and_header_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_secret(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(request_secret(&headers).as_deref(), Some("s3cret"));
        headers.insert(TOKEN_HEADER, "other".parse().unwrap());
        assert_eq!(request_secret(&headers).as_deref(), Some("other"));
    }

    #[test]
    fn the_audit_log_rotates_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::new(dir.path().join("audit.log"));
        log.max_bytes = 10;
        for n in 0..4 {
            log.append(&format!("line {n} of the log\n")).unwrap();
        }
        let mode = std::fs::metadata(dir.path().join("audit.log")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(dir.path().join("audit.log")).unwrap(), "line 3 of the log\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("audit.log.3")).unwrap(), "line 0 of the log\n");
    }
}
