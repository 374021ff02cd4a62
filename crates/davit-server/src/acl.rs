//! Authentication and authorization of API requests, and the audit log of writes.
//!
//! Every route of [`crate::api`] is declared with a [`Rule`]; [`authorize`] runs before its handler: it
//! finds the request's token (`X-Davit-Token` or `Authorization: Bearer`), looks its SHA-256 up in the
//! view's [`AclTable`], compiles the token's policies into an [`Acl`] and checks the rule in the request's
//! namespace (`?namespace=`, default `default`). No token, an unknown or an expired one: 401 with the same
//! message for all three. A token without the capability: 403 naming it. With ACLs off every request
//! passes. The handler finds the caller as a [`Caller`] extension.
//!
//! Writes (every method but GET and HEAD; reads too with `--audit-reads`) are appended to the audit log, when
//! there is one, as JSON lines with the time, the token's accessor id (never its secret), the namespace, the
//! route, the path and the answer's status code.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use davit_api::acl::{ANONYMOUS_POLICY, Acl, AclPolicy, Capability, Rule, StoredToken, TOKEN_HEADER, TokenType};
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
    crate::keyring::hex(&sha2::Sha256::digest(secret.as_bytes()))
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
    /// The secret as sent (never passed on: agents get a relay token instead, see [`Caller::relay_token`]).
    pub secret: Option<String>,
    pub acl: Arc<Acl>,
    pub namespace: String,
    /// The grant of a relay token, when the request carried one.
    pub relayed: Option<RelayGrant>,
    /// Makes relay tokens (ACLs on).
    relay_key: Option<Arc<[u8; 32]>>,
}

/// What a relay token grants: one capability in one namespace, until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayGrant {
    pub namespace: String,
    pub capability: Capability,
    pub expires: u64,
}

/// How long a relay token lives: long enough for an agent to check it, not to be worth stealing.
const RELAY_TTL_MS: u64 = 60_000;
const RELAY_PREFIX: &str = "relay.";

impl Caller {
    /// The server itself, acting in `namespace`: its own loops asking agents for what they know (the canary
    /// analysis reads the proxies' counters), with relay tokens like a request's.
    pub fn internal(shared: &crate::Shared, namespace: &str) -> Caller {
        Caller {
            token: None,
            secret: None,
            acl: Arc::new(Acl::management()),
            namespace: namespace.to_string(),
            relayed: None,
            relay_key: shared.acl_enabled.then(|| Arc::clone(&shared.relay_key)),
        }
    }

    /// A token for a request the server makes on the caller's behalf to an agent (logs, exec, proxy
    /// counters), which checks it with the servers: it grants only `capability` in the caller's namespace
    /// for a minute and works on the servers for nothing but `GET /v1/acl/token/self`, so a node that is not
    /// what it claims learns no token worth having. `None` with ACLs off (the agents check nothing then).
    pub fn relay_token(&self, capability: Capability) -> Option<String> {
        let key = self.relay_key.as_ref()?;
        let grant = RelayGrant { namespace: self.namespace.clone(), capability, expires: crate::now_millis() + RELAY_TTL_MS };
        let body = format!("{}.{}.{}", grant.namespace, capability.as_str(), grant.expires);
        Some(format!("{RELAY_PREFIX}{body}.{}", crate::keyring::hex(&hmac_sha256(&key[..], body.as_bytes()))))
    }

    /// Adds a relay token for `capability` to a request to an agent.
    pub fn relay(&self, request: reqwest::RequestBuilder, capability: Capability) -> reqwest::RequestBuilder {
        match self.relay_token(capability) {
            Some(token) => request.header(TOKEN_HEADER, token),
            None => request,
        }
    }

    pub fn accessor_id(&self) -> &str {
        if self.relayed.is_some() {
            return "relay";
        }
        self.token.as_ref().map_or(if self.secret.is_some() { "-" } else { "anonymous" }, |stored| stored.token.accessor_id.as_str())
    }
}

/// The grant of a relay token this server made, if `secret` is one, unforged and not expired.
fn relay_grant(key: &[u8; 32], secret: &str, now: u64) -> Option<RelayGrant> {
    let body_and_mac = secret.strip_prefix(RELAY_PREFIX)?;
    let (body, mac) = body_and_mac.rsplit_once('.')?;
    let expected = crate::keyring::hex(&hmac_sha256(&key[..], body.as_bytes()));
    // Constant time: a forger learns nothing from how long the comparison took.
    if mac.len() != expected.len() || mac.bytes().zip(expected.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) != 0 {
        return None;
    }
    let mut parts = body.splitn(3, '.');
    let (namespace, capability, expires) = (parts.next()?, parts.next()?, parts.next()?.parse::<u64>().ok()?);
    let capability = Capability::ALL.into_iter().find(|c| c.as_str() == capability)?;
    (expires > now).then(|| RelayGrant { namespace: namespace.to_string(), capability, expires })
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = sha2::Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    sha2::Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// The policy a relay grant amounts to.
pub fn relay_rules(grant: &RelayGrant) -> davit_api::acl::PolicyRules {
    let rule = davit_api::acl::NamespaceRule { capabilities: vec![grant.capability], ..Default::default() };
    davit_api::acl::PolicyRules { namespaces: [(grant.namespace.clone(), rule)].into(), ..Default::default() }
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
    if let Err(reason) = davit_api::spec::check_dns_label(&namespace) {
        return Failure::bad_request(format!("`{namespace}` is not a namespace name: {reason}")).into_response();
    }
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
    let peer = request.extensions().get::<axum::extract::ConnectInfo<davit_tls::Peer>>().map(|info| &info.0);
    let caller = match resolve(&guard.shared, guard.rule, secret, namespace, subject.as_deref())
        .and_then(|caller| node_certificate(&guard.shared, caller, peer))
    {
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
        return Ok(Caller { token: None, secret, acl: Arc::new(Acl::management()), namespace, relayed: None, relay_key: None });
    }
    let relay_key = Some(Arc::clone(&shared.relay_key));
    if let Some(grant) = secret.as_deref().and_then(|secret| relay_grant(&shared.relay_key, secret, crate::now_millis())) {
        // Relay tokens are for agents to ask what they grant, nothing else.
        if rule != Rule::Authenticated {
            return Err(Failure::forbidden("permission denied: a relay token only answers `GET /v1/acl/token/self`"));
        }
        let acl = Acl::from_policies([&relay_rules(&grant)]);
        return Ok(Caller { token: None, secret, acl: Arc::new(acl), namespace, relayed: Some(grant), relay_key });
    }
    let snapshot = shared.view.snapshot();
    let table = &snapshot.acl;
    let (token, acl) = match &secret {
        Some(secret) => {
            let stored = table.token_by_secret(secret, crate::now_millis()).ok_or_else(unauthenticated)?;
            if stored.token.uses_left == Some(0) {
                return Err(Failure::unauthenticated("this join token was used up; create another with `davit acl join-token create`"));
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
        return Err(Failure::forbidden(denied.to_string()));
    }
    Ok(Caller { token, secret, acl: Arc::new(acl), namespace, relayed: None, relay_key })
}

/// With TLS, a node's identity is its node token together with its certificate: a request with a node token
/// must come over a connection that presented that node's certificate (a token copied off a node is
/// worth nothing elsewhere, and one node's certificate does not make another node's token usable).
fn node_certificate(shared: &Shared, caller: Caller, peer: Option<&davit_tls::Peer>) -> Result<Caller, Failure> {
    let node = caller.token.as_ref().and_then(|stored| stored.token.node_id.as_deref()).filter(|_| shared.tls.is_some());
    match node {
        Some(node) if !peer.is_some_and(|peer| peer.is(&davit_tls::node_name(node))) => Err(Failure::forbidden(format!(
            "permission denied: node {node} acts only over a connection that presents its certificate (mutual TLS); this one presented none, or another's"
        ))),
        _ => Ok(caller),
    }
}

fn unauthenticated() -> Failure {
    Failure::unauthenticated(UNAUTHENTICATED)
}

/// Appends one line per write request to `<data dir>/audit.log`, rotating it by size.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    max_bytes: u64,
    /// GET requests too.
    reads: bool,
}

/// Rotated files kept besides the current one (`audit.log.1` … `.5`).
const AUDIT_KEEP: u32 = 5;

impl AuditLog {
    pub fn new(path: PathBuf, reads: bool) -> AuditLog {
        AuditLog { path, file: Mutex::new(None), max_bytes: 64 * 1024 * 1024, reads }
    }

    /// Whether requests with this method are recorded.
    fn records(&self, method: &Method) -> bool {
        self.reads || (*method != Method::GET && *method != Method::HEAD)
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
    if !log.records(method) {
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
    fn hmac_matches_rfc_4231_and_relay_tokens_cannot_be_forged() {
        // RFC 4231 test case 2.
        assert_eq!(
            crate::keyring::hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key = [7u8; 32];
        let caller = Caller {
            token: None,
            secret: None,
            acl: Arc::new(Acl::default()),
            namespace: "team-a".to_string(),
            relayed: None,
            relay_key: Some(Arc::new(key)),
        };
        let token = caller.relay_token(Capability::ReadLogs).unwrap();
        let grant = relay_grant(&key, &token, crate::now_millis()).unwrap();
        assert_eq!((grant.namespace.as_str(), grant.capability), ("team-a", Capability::ReadLogs));
        assert_eq!(relay_grant(&[8u8; 32], &token, 0), None, "another server's key");
        assert_eq!(relay_grant(&key, &token.replace("read-logs", "alloc-exec"), 0), None, "a changed grant");
        assert_eq!(relay_grant(&key, &token, grant.expires), None, "expired");
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
        let mut log = AuditLog::new(dir.path().join("audit.log"), false);
        log.max_bytes = 10;
        for n in 0..4 {
            log.append(&format!("line {n} of the log\n")).unwrap();
        }
        let mode = std::fs::metadata(dir.path().join("audit.log")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(dir.path().join("audit.log")).unwrap(), "line 3 of the log\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("audit.log.3")).unwrap(), "line 0 of the log\n");
        assert!(log.records(&Method::DELETE) && !log.records(&Method::GET));
        assert!(AuditLog::new(dir.path().join("reads.log"), true).records(&Method::GET), "--audit-reads");
    }
}
