//! Access control of the agent's own API.
//!
//! The agent learns at registration whether the servers check tokens (`NodeRegisterResponse::acl_enabled`).
//! Until then it assumes they do when it was given a token (a cluster with ACLs admits no agent without
//! one), and that they do not otherwise. With ACLs on, each request's
//! token is resolved through the servers (`GET /v1/acl/token/self` with that token) and the answer, compiled
//! into an [`Acl`], is kept for [`CACHE_TTL`]: a revoked token still works here for at most that long.
//! Unreachable servers mean no new token is accepted (fail closed).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use davit_api::acl::{Acl, Rule, TOKEN_HEADER};

use crate::servers::ServerPool;

/// How long a resolved token is trusted without asking the servers again (Nomad clients cache for 30 s).
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Resolved tokens kept at most; when full the cache starts over.
const CACHE_MAX: usize = 1024;

/// The agent API's access control: the servers' ACL mode and the resolved-token cache.
pub struct AgentAcl {
    enabled: AtomicBool,
    cache: Mutex<HashMap<String, (Instant, Arc<Acl>)>>,
}

impl AgentAcl {
    /// `has_token`: the agent was given a token, so its servers are taken to check tokens until one says.
    pub fn new(has_token: bool) -> AgentAcl {
        AgentAcl { enabled: AtomicBool::new(has_token), cache: Mutex::new(HashMap::new()) }
    }

    /// What the server said at registration.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    async fn resolve(&self, servers: &ServerPool, secret: &str) -> Result<Arc<Acl>, Refusal> {
        let cached = {
            let cache = self.cache.lock().expect("acl cache lock");
            cache.get(secret).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, acl)| Arc::clone(acl))
        };
        if let Some(acl) = cached {
            return Ok(acl);
        }
        let resolved = servers.call(|client| async move { client.acl_token_self(Some(secret)).await }).await;
        let token_self = match resolved {
            Ok(token_self) => token_self,
            Err(error) if error.is_denied() => return Err(Refusal(StatusCode::UNAUTHORIZED, "unauthenticated", error.to_string())),
            Err(error) => {
                return Err(Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("cannot check the token with the servers: {error}"),
                ));
            }
        };
        let acl = Arc::new(Acl::of_token(&token_self.token, token_self.policies.iter().map(|policy| &policy.rules)));
        let mut cache = self.cache.lock().expect("acl cache lock");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(secret.to_string(), (Instant::now(), Arc::clone(&acl)));
        Ok(acl)
    }

    /// Checks `rule` for a request with `secret` in `namespace`.
    pub async fn check(&self, servers: &ServerPool, rule: Rule, secret: Option<&str>, namespace: &str) -> Result<(), Refusal> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(secret) = secret else {
            return Err(Refusal(StatusCode::UNAUTHORIZED, "unauthenticated", "token not found or expired".to_string()));
        };
        let acl = self.resolve(servers, secret).await?;
        acl.check(rule, namespace).map_err(|denied| Refusal(StatusCode::FORBIDDEN, "forbidden", denied.to_string()))
    }
}

/// A refused request: status, error code, message.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub &'static str, pub String);

/// The state of one route's [`authorize`] layer.
#[derive(Clone)]
pub struct RouteGuard {
    pub context: Arc<crate::AgentContext>,
    pub rule: Rule,
}

/// Checks the route's rule before its handler runs.
/// The namespace a request to the agent is for (`?namespace=`, default `default`); handlers refuse
/// allocations of other namespaces.
#[derive(Clone, Debug)]
pub struct RequestNamespace(pub String);

pub async fn authorize(State(guard): State<RouteGuard>, mut request: Request, next: Next) -> Response {
    let secret = {
        let text = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
        davit_api::acl::request_secret(text(TOKEN_HEADER), text(header::AUTHORIZATION.as_str()))
    };
    let namespace = davit_api::acl::request_namespace(request.uri().query());
    if let Err(reason) = davit_api::spec::check_dns_label(&namespace) {
        let message = format!("`{namespace}` is not a namespace name: {reason}");
        return crate::api::api_error(StatusCode::BAD_REQUEST, "bad_request", message);
    }
    match guard.context.acl.check(&guard.context.servers, guard.rule, secret.as_deref(), &namespace).await {
        Ok(()) => {
            request.extensions_mut().insert(RequestNamespace(namespace));
            next.run(request).await
        }
        Err(Refusal(status, code, message)) => crate::api::api_error(status, code, message),
    }
}
