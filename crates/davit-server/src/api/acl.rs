//! ACL routes: bootstrap, policies, tokens. Answers 400 when the server runs without ACLs.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use davit_api::acl::{
    AclPolicy, AclToken, ApplyPolicyRequest, CreateTokenRequest, CreatedToken, MAX_NAME_LEN, MAX_POLICIES, MAX_TOKEN_POLICIES, MAX_TOKENS,
    StoredToken, TokenSelf, TokenType, parse_policy, valid_name,
};
use davit_store::{Compare, Op, Txn};

use super::{Failure, Page, indexed, json_body, paged};
use crate::acl::{Caller, UNAUTHENTICATED, new_secret, secret_hash};
use crate::{Shared, keys, new_id, now_millis};

fn require_enabled(shared: &Shared) -> Result<(), Failure> {
    if shared.acl_enabled {
        Ok(())
    } else {
        Err(Failure::bad_request("ACLs are disabled on this server; start it with `--acl` to use tokens and policies"))
    }
}

/// Commits `txn` and waits until the view shows it; `Ok(None)` when a compare failed.
async fn commit(shared: &Shared, txn: Txn) -> Result<Option<u64>, Failure> {
    let response = shared.store.txn(txn).await?;
    if !response.succeeded {
        return Ok(None);
    }
    shared.view.wait_for(response.revision).await;
    Ok(Some(response.revision))
}

/// `POST /v1/acl/bootstrap`: the first management token; works once per cluster.
pub(crate) async fn bootstrap(State(shared): State<Arc<Shared>>) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let secret = new_secret();
    let token = AclToken {
        accessor_id: new_id(),
        name: "Bootstrap Token".to_string(),
        token_type: TokenType::Management,
        policies: Vec::new(),
        create_time: now_millis(),
        expiration_time: None,
        uses_left: None,
        node_id: None,
        create_index: 0,
        modify_index: 0,
    };
    let stored = StoredToken { token: token.clone(), secret_hash: secret_hash(&secret) };
    let txn = Txn {
        compares: vec![Compare::Missing(keys::ACL_BOOTSTRAP.to_string())],
        success: vec![
            Op::Put { key: keys::ACL_BOOTSTRAP.to_string(), value: token.accessor_id.clone().into_bytes(), lease: None },
            keys::put(keys::acl_token(&token.accessor_id), &stored),
        ],
        failure: Vec::new(),
    };
    let Some(index) = commit(&shared, txn).await? else {
        return Err(Failure::bad_request(
            "ACL bootstrap was already done; ask the holder of a management token for a token (`davit acl token create`)",
        ));
    };
    tracing::info!(accessor_id = %token.accessor_id, "ACL bootstrap: management token created");
    let token = AclToken { create_index: index, modify_index: index, ..token };
    Ok(indexed(index, &CreatedToken { token, secret_id: secret }))
}

/// `GET /v1/acl/policies`: all policies for a management token, a client token's own otherwise.
pub(crate) async fn list_policies(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let snapshot = shared.view.snapshot();
    let visible =
        |policy: &AclPolicy| caller.acl.is_management() || caller.token.as_ref().is_some_and(|t| t.token.policies.contains(&policy.name));
    let policies: Vec<&AclPolicy> = snapshot.acl.policies.values().map(|p| &**p).filter(|p| visible(p)).collect();
    paged(snapshot.table_index("acl"), policies, |policy| policy.name.clone(), &page)
}

/// `GET /v1/acl/policy/{name}`: for management tokens and the tokens that hold it.
pub(crate) async fn get_policy(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let holds = caller.token.as_ref().is_some_and(|t| t.token.policies.contains(&name));
    if !caller.acl.is_management() && !holds {
        return Err(Failure::forbidden(format!(
            "permission denied: only management tokens and tokens holding policy `{name}` may read it"
        )));
    }
    let snapshot = shared.view.snapshot();
    let policy = snapshot.acl.policies.get(&name).ok_or_else(|| Failure::not_found(format!("no ACL policy named `{name}`")))?;
    Ok(indexed(policy.modify_index, &**policy))
}

/// `PUT /v1/acl/policy/{name}`: creates or replaces a policy.
pub(crate) async fn apply_policy(State(shared): State<Arc<Shared>>, Path(name): Path<String>, body: Bytes) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    if !valid_name(&name) {
        return Err(Failure::bad_request(format!(
            "`{name}` is not a valid policy name: use 1 to {MAX_NAME_LEN} letters, digits, `-` and `_`"
        )));
    }
    let request: ApplyPolicyRequest = json_body(&body, "policy")?;
    let filename = if request.filename.is_empty() { format!("{name}.yaml") } else { request.filename.clone() };
    let rules = parse_policy(&request.source, &filename).map_err(|errors| Failure::invalid_document("policy", &errors))?;
    if request.description.len() > 1024 {
        return Err(Failure::bad_request("the policy description is longer than 1024 bytes"));
    }
    let snapshot = shared.view.snapshot();
    if !snapshot.acl.policies.contains_key(&name) && snapshot.acl.policies.len() >= MAX_POLICIES {
        return Err(Failure::bad_request(format!(
            "there are {MAX_POLICIES} policies already, the most a cluster may have; delete some first"
        )));
    }
    let policy =
        AclPolicy { name: name.clone(), description: request.description, rules, source: request.source, create_index: 0, modify_index: 0 };
    let txn = Txn { compares: Vec::new(), success: vec![keys::put(keys::acl_policy(&name), &policy)], failure: Vec::new() };
    let index = commit(&shared, txn).await?.unwrap_or_default();
    let snapshot = shared.view.snapshot();
    let stored = snapshot.acl.policies.get(&name).cloned().unwrap_or_else(|| Arc::new(policy));
    Ok(indexed(index, &*stored))
}

/// `DELETE /v1/acl/policy/{name}`: tokens that held it hold it no longer (they keep their other policies).
pub(crate) async fn delete_policy(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let key = keys::acl_policy(&name);
    let txn = Txn { compares: vec![Compare::Exists(key.clone())], success: vec![Op::Delete { key }], failure: Vec::new() };
    let index = commit(&shared, txn).await?.ok_or_else(|| Failure::not_found(format!("no ACL policy named `{name}`")))?;
    Ok(indexed(index, &davit_api::http::IndexResponse { index }))
}

/// `GET /v1/acl/tokens`.
pub(crate) async fn list_tokens(State(shared): State<Arc<Shared>>, Query(page): Query<Page>) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let snapshot = shared.view.snapshot();
    let tokens: Vec<&AclToken> = snapshot.acl.tokens.values().map(|stored| &stored.token).collect();
    paged(snapshot.table_index("acl"), tokens, |token| token.accessor_id.clone(), &page)
}

/// `POST /v1/acl/tokens`: a new token; the answer is the only place its secret ever appears.
pub(crate) async fn create_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let request: CreateTokenRequest = json_body(&body, "token")?;
    let snapshot = shared.view.snapshot();
    if request.name.len() > 256 {
        return Err(Failure::bad_request("the token name is longer than 256 bytes"));
    }
    match request.token_type {
        TokenType::Management if !request.policies.is_empty() => {
            return Err(Failure::bad_request(
                "a management token may do everything and holds no policies; drop `--policy` or use `--type client`",
            ));
        }
        TokenType::Client if request.policies.is_empty() => {
            return Err(Failure::bad_request("a client token needs at least one policy (`--policy NAME`); see `davit acl policy ls`"));
        }
        _ => {}
    }
    if request.policies.len() > MAX_TOKEN_POLICIES {
        return Err(Failure::bad_request(format!("a token may hold at most {MAX_TOKEN_POLICIES} policies")));
    }
    if let Some(missing) = request.policies.iter().find(|name| !snapshot.acl.policies.contains_key(*name)) {
        return Err(Failure::bad_request(format!(
            "no ACL policy named `{missing}`; create it first with `davit acl policy apply {missing} FILE`"
        )));
    }
    if snapshot.acl.tokens.len() >= MAX_TOKENS {
        return Err(Failure::bad_request(format!("there are {MAX_TOKENS} tokens already, the most a cluster may have; revoke some first")));
    }
    let now = now_millis();
    let expiration_time = match request.ttl {
        Some(ttl) if ttl.as_std() < std::time::Duration::from_secs(1) => {
            return Err(Failure::bad_request("the token's ttl must be at least 1s"));
        }
        Some(ttl) => Some(now.saturating_add(u64::try_from(ttl.as_std().as_millis()).unwrap_or(u64::MAX))),
        None => None,
    };
    let mut policies = request.policies;
    policies.sort();
    policies.dedup();
    let secret = new_secret();
    let token = AclToken {
        accessor_id: new_id(),
        name: request.name,
        token_type: request.token_type,
        policies,
        create_time: now,
        expiration_time,
        uses_left: request.uses,
        node_id: None,
        create_index: 0,
        modify_index: 0,
    };
    let stored = StoredToken { token: token.clone(), secret_hash: secret_hash(&secret) };
    let txn = Txn { compares: Vec::new(), success: vec![keys::put(keys::acl_token(&token.accessor_id), &stored)], failure: Vec::new() };
    let index = commit(&shared, txn).await?.unwrap_or_default();
    let token = AclToken { create_index: index, modify_index: index, ..token };
    Ok(indexed(index, &CreatedToken { token, secret_id: secret }))
}

fn find_token(shared: &Shared, accessor_id: &str) -> Result<Arc<StoredToken>, Failure> {
    let snapshot = shared.view.snapshot();
    let id = match snapshot.acl.tokens.get(accessor_id) {
        Some(_) => accessor_id.to_string(),
        None => super::resolve_prefix("ACL token", accessor_id, snapshot.acl.tokens.keys().map(String::as_str))?,
    };
    Ok(Arc::clone(snapshot.acl.tokens.get(&id).expect("resolved id exists")))
}

/// `GET /v1/acl/token/{accessor id or prefix}`.
pub(crate) async fn get_token(State(shared): State<Arc<Shared>>, Path(accessor_id): Path<String>) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let stored = find_token(&shared, &accessor_id)?;
    Ok(indexed(stored.token.modify_index, &stored.token))
}

/// `DELETE /v1/acl/token/{accessor id or prefix}`: the token stops working at once on every server.
pub(crate) async fn revoke_token(State(shared): State<Arc<Shared>>, Path(accessor_id): Path<String>) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    let stored = find_token(&shared, &accessor_id)?;
    let key = keys::acl_token(&stored.token.accessor_id);
    let txn = Txn { compares: vec![Compare::Exists(key.clone())], success: vec![Op::Delete { key }], failure: Vec::new() };
    let index = commit(&shared, txn).await?.ok_or_else(|| Failure::not_found(format!("no ACL token {accessor_id}")))?;
    Ok(indexed(index, &davit_api::http::IndexResponse { index }))
}

/// `GET /v1/acl/token/self`: the caller's token with the policies it holds (agents resolve tokens with it).
pub(crate) async fn token_self(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_enabled(&shared)?;
    if let Some(grant) = &caller.relayed {
        // What the agent that got the relay token may let it do.
        let token = AclToken {
            accessor_id: "relay".to_string(),
            name: format!("relay of {} in {}", grant.capability.as_str(), grant.namespace),
            token_type: TokenType::Client,
            policies: vec!["relay".to_string()],
            create_time: grant.expires.saturating_sub(60_000),
            expiration_time: Some(grant.expires),
            uses_left: None,
            node_id: None,
            create_index: 0,
            modify_index: 0,
        };
        let rules = crate::acl::relay_rules(grant);
        let policy = AclPolicy {
            name: "relay".to_string(),
            description: String::new(),
            rules,
            source: String::new(),
            create_index: 0,
            modify_index: 0,
        };
        return Ok(indexed(0, &TokenSelf { token, policies: vec![policy] }));
    }
    let stored = caller.token.ok_or_else(|| Failure::unauthenticated(UNAUTHENTICATED))?;
    let snapshot = shared.view.snapshot();
    let policies = snapshot.acl.policies_named(&stored.token.policies).map(|policy| (**policy).clone()).collect();
    Ok(indexed(stored.token.modify_index, &TokenSelf { token: stored.token.clone(), policies }))
}
