//! Variable routes (`/v1/vars`, `/v1/var/{path}`) and the keyring routes (`/v1/operator/keyring…`).
//!
//! Values are sealed with the server's keyring before they reach the store and opened only to answer
//! `GET /v1/var/{path}`; lists show no values. A write with `?cas=N` applies only if the variable's
//! modify index is still `N` (0: only if it does not exist), else 409 with the current index.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use davit_api::acl::VariableCapability;
use davit_api::variables::{KeyInfo, PutVariableRequest, Variable, VariableMeta, check_items, check_path};
use davit_store::{Compare, Op, Txn};
use serde::Deserialize;

use super::{Failure, Page, indexed, json_body, paged};
use crate::acl::Caller;
use crate::keys::{self, StoredVariable};
use crate::{Shared, now_millis};

/// Variables a cluster may hold at most.
const MAX_VARIABLES: usize = 100_000;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct VarQuery {
    #[serde(default)]
    cas: Option<u64>,
    #[serde(default)]
    prefix: Option<String>,
}

fn checked_path(path: &str) -> Result<(), Failure> {
    check_path(path).map_err(|reason| Failure::bad_request(format!("`{path}` is not a variable path: {reason}")))
}

fn meta(stored: &StoredVariable) -> VariableMeta {
    VariableMeta {
        namespace: stored.namespace.clone(),
        path: stored.path.clone(),
        create_time: stored.create_time,
        modify_time: stored.modify_time,
        create_index: stored.create_index,
        modify_index: stored.modify_index,
    }
}

/// `GET /v1/vars?prefix=P`: the variables of the namespace under `P` that the token may list, without values.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<VarQuery>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let prefix = query.prefix.unwrap_or_default();
    let listed: Vec<VariableMeta> = snapshot
        .variables
        .values()
        .filter(|stored| stored.namespace == caller.namespace && stored.path.starts_with(&prefix))
        .filter(|stored| caller.acl.allows_variable(&caller.namespace, &stored.path, VariableCapability::List))
        .map(|stored| meta(stored))
        .collect();
    paged(snapshot.table_index("vars"), listed, |variable| variable.path.clone(), &page)
}

/// `GET /v1/var/{path}`: the variable with its items.
pub(crate) async fn get(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
) -> Result<Response, Failure> {
    checked_path(&path)?;
    let snapshot = shared.view.snapshot();
    let stored = snapshot
        .variables
        .get(&keys::variable(&caller.namespace, &path))
        .ok_or_else(|| Failure::not_found(format!("no variable `{path}` in namespace `{}`", caller.namespace)))?;
    let variable = open(&shared, stored)?;
    Ok(indexed(stored.modify_index, &variable))
}

fn open(shared: &Shared, stored: &StoredVariable) -> Result<Variable, Failure> {
    let key = keys::variable(&stored.namespace, &stored.path);
    let plaintext = shared.keyring.open_sealed(&stored.sealed, key.as_bytes()).map_err(|error| {
        tracing::error!(variable = %key, %error, "a stored variable does not open");
        Failure::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("variable `{}` cannot be read: {error}", stored.path),
        )
    })?;
    let items = serde_json::from_slice(&plaintext)
        .map_err(|error| Failure::bad_request(format!("variable `{}` is damaged: {error}", stored.path)))?;
    Ok(Variable { meta: meta(stored), items })
}

/// `PUT /v1/var/{path}[?cas=N]`: creates or replaces the variable's items.
pub(crate) async fn put(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    Query(query): Query<VarQuery>,
    body: Bytes,
) -> Result<Response, Failure> {
    checked_path(&path)?;
    let request: PutVariableRequest = json_body(&body, "variable")?;
    check_items(&request.items).map_err(Failure::bad_request)?;
    let snapshot = shared.view.snapshot();
    let key = keys::variable(&caller.namespace, &path);
    let existing = snapshot.variables.get(&key).cloned();
    if existing.is_none() && snapshot.variables.len() >= MAX_VARIABLES {
        return Err(Failure::bad_request(format!("there are {MAX_VARIABLES} variables already, the most a cluster may have")));
    }
    let now = now_millis();
    let plaintext = serde_json::to_vec(&request.items).expect("items serialize");
    let sealing = shared.keyring_lock.read().await;
    let stored = StoredVariable {
        namespace: caller.namespace.clone(),
        path: path.clone(),
        create_time: existing.as_ref().map_or(now, |existing| existing.create_time),
        modify_time: now,
        sealed: shared.keyring.seal(&plaintext, key.as_bytes()),
        create_index: 0,
        modify_index: 0,
    };
    let compares = cas_compare(&key, query.cas, existing.as_deref());
    let txn = Txn { compares, success: vec![keys::put(key, &stored)], failure: Vec::new() };
    let response = shared.store.txn(txn).await?;
    drop(sealing);
    if !response.succeeded {
        return Err(cas_conflict(&caller.namespace, &path, query.cas, &shared));
    }
    shared.view.wait_for(response.revision).await;
    let snapshot = shared.view.snapshot();
    let written = snapshot
        .variables
        .get(&keys::variable(&caller.namespace, &path))
        .ok_or_else(|| Failure::conflict("the variable was removed at once"))?;
    Ok(indexed(response.revision, &meta(written)))
}

/// `DELETE /v1/var/{path}[?cas=N]`.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    Query(query): Query<VarQuery>,
) -> Result<Response, Failure> {
    checked_path(&path)?;
    let snapshot = shared.view.snapshot();
    let key = keys::variable(&caller.namespace, &path);
    let Some(existing) = snapshot.variables.get(&key).cloned() else {
        return Err(Failure::not_found(format!("no variable `{path}` in namespace `{}`", caller.namespace)));
    };
    let txn = Txn { compares: cas_compare(&key, query.cas, Some(&existing)), success: vec![Op::Delete { key }], failure: Vec::new() };
    let response = shared.store.txn(txn).await?;
    if !response.succeeded {
        return Err(cas_conflict(&caller.namespace, &path, query.cas, &shared));
    }
    shared.view.wait_for(response.revision).await;
    Ok(indexed(response.revision, &davit_api::http::IndexResponse { index: response.revision }))
}

/// The store compare of a write: the index the caller saw (`?cas=`), else the one this request read.
fn cas_compare(key: &str, cas: Option<u64>, existing: Option<&StoredVariable>) -> Vec<Compare> {
    vec![Compare::ModRevision(key.to_string(), cas.unwrap_or_else(|| existing.map_or(0, |existing| existing.modify_index)))]
}

fn cas_conflict(namespace: &str, path: &str, cas: Option<u64>, shared: &Shared) -> Failure {
    let current = shared.view.snapshot().variables.get(&keys::variable(namespace, path)).map_or(0, |stored| stored.modify_index);
    match cas {
        Some(cas) => {
            Failure::conflict(format!("variable `{path}` is at index {current}, not {cas}: read it again and retry with --cas {current}"))
        }
        None => Failure::conflict(format!("variable `{path}` changed meanwhile; try again")),
    }
}

/// `GET /v1/node/{id}/allocation/{alloc_id}/template-data`: what the templates of an allocation on that node
/// read (the variables they name, opened; the healthy instances of the services they name), as a blocking
/// query on variable and allocation changes. A node learns no variable its allocations' templates do not name.
pub(crate) async fn template_data(
    State(shared): State<Arc<Shared>>,
    Path((node_id, alloc_id)): Path<(String, String)>,
    Query(blocking): Query<super::Blocking>,
) -> Result<Response, Failure> {
    // Variables, and the catalog (its index moves only when a service's instances or health change).
    let index_of = |snapshot: &crate::view::Snapshot| snapshot.table_index("vars").max(shared.catalog.get(snapshot).0);
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, index_of).await;
    let alloc = snapshot
        .cluster
        .alloc(&alloc_id)
        .filter(|alloc| alloc.node_id == node_id)
        .ok_or_else(|| Failure::not_found(format!("no allocation {alloc_id} on node {node_id}")))?;
    let job = snapshot
        .cluster
        .job_version(&alloc.job_name, alloc.job_version)
        .ok_or_else(|| Failure::not_found(format!("job {} version {} is gone", alloc.job_name, alloc.job_version)))?;
    let namespace = &job.spec.namespace;
    let templates: Vec<davit_api::template::Template> = job
        .spec
        .group(&alloc.group)
        .into_iter()
        .flat_map(|group| &group.tasks)
        .flat_map(|task| &task.templates)
        .filter_map(|template| davit_api::template::Template::parse(&template.data).ok())
        .collect();
    let mut data = davit_api::template::TemplateData::default();
    for path in templates.iter().flat_map(|template| template.variables()) {
        if let Some(stored) = snapshot.variables.get(&keys::variable(namespace, path)) {
            data.variables.insert(path.to_string(), open(&shared, stored)?.items);
        }
    }
    let (_, catalog) = shared.catalog.get(&snapshot);
    for name in templates.iter().flat_map(|template| template.services()) {
        let instances = catalog
            .services
            .iter()
            .filter(|service| service.name == name && davit_api::namespace::namespace_of(&service.job_name) == namespace.as_str())
            .flat_map(|service| &service.instances)
            .filter(|instance| instance.healthy)
            .map(|instance| format!("{}:{}", instance.address, instance.port))
            .collect();
        data.services.insert(name.to_string(), instances);
    }
    Ok(indexed(index_of(&snapshot), &data))
}

/// `GET /v1/operator/keyring`: the keys, and how many variables each still seals.
pub(crate) async fn keyring(State(shared): State<Arc<Shared>>) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let keys: Vec<KeyInfo> = shared
        .keyring
        .keys()
        .into_iter()
        .map(|(id, create_time, active)| {
            let variables = snapshot.variables.values().filter(|stored| stored.sealed.key_id == id).count() as u64;
            KeyInfo { id, create_time, active, variables }
        })
        .collect();
    Ok(indexed(snapshot.table_index("vars"), &keys))
}

/// `POST /v1/operator/keyring/rotate`: a new active key; variables are re-sealed with it in the background.
pub(crate) async fn rotate(State(shared): State<Arc<Shared>>) -> Result<Response, Failure> {
    refuse_on_shared_store(&shared).await?;
    let id = shared
        .keyring
        .rotate(now_millis())
        .map_err(|error| Failure::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()))?;
    tracing::info!(key = %id, "keyring rotated; re-sealing variables");
    tokio::spawn(reseal(Arc::clone(&shared)));
    Ok(indexed(0, &serde_json::json!({ "active": id })))
}

/// Servers on etcd each keep a copy of the keyring file: a key one adds or removes, the others would not have.
/// So the keyring changes only while this server is the only one running.
async fn refuse_on_shared_store(shared: &Shared) -> Result<(), Failure> {
    if shared.store.backend_name() != "etcd" {
        return Ok(());
    }
    let others: Vec<String> = crate::leader::members(shared.store.as_ref())
        .await?
        .into_iter()
        .filter(|member| !member.leader)
        .map(|member| member.name)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Failure::conflict(format!(
        "the servers on etcd each keep a copy of the keyring (keyring.json), and {} run besides this one: stop them, change \
         the keyring here, copy its keyring.json into their data directories and start them again",
        others.join(", ")
    )))
}

/// Re-seals every variable that an older key seals, each with a check-and-set on its index (a variable
/// written meanwhile is sealed with the new key already).
async fn reseal(shared: Arc<Shared>) {
    let active = shared.keyring.active_id();
    let mut resealed = 0;
    // Until no variable is left under an older key (a pass can lose a race with a write; the next one sees it).
    for _pass in 0..10 {
        match shared.store.current_revision().await {
            Ok(revision) => shared.view.wait_for(revision).await,
            Err(error) => tracing::error!(%error, "re-sealing: cannot read the store's revision"),
        }
        let snapshot = shared.view.snapshot();
        let stale: Vec<Arc<StoredVariable>> =
            snapshot.variables.values().filter(|stored| stored.sealed.key_id != active).cloned().collect();
        if stale.is_empty() || shared.keyring.active_id() != active {
            break;
        }
        resealed += reseal_pass(&shared, stale).await;
    }
    tracing::info!(resealed, key = %active, "variables re-sealed with the active key");
}

/// Re-seals `stale` with the active key; returns how many were written.
async fn reseal_pass(shared: &Shared, stale: Vec<Arc<StoredVariable>>) -> usize {
    let mut resealed = 0;
    for stored in stale {
        let key = keys::variable(&stored.namespace, &stored.path);
        let plaintext = match shared.keyring.open_sealed(&stored.sealed, key.as_bytes()) {
            Ok(plaintext) => plaintext,
            Err(error) => {
                tracing::error!(variable = %key, %error, "cannot re-seal a variable");
                continue;
            }
        };
        let sealing = shared.keyring_lock.read().await;
        let next = StoredVariable { sealed: shared.keyring.seal(&plaintext, key.as_bytes()), ..(*stored).clone() };
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.clone(), stored.modify_index)],
            success: vec![keys::put(key.clone(), &next)],
            failure: Vec::new(),
        };
        let committed = shared.store.txn(txn).await;
        drop(sealing);
        match committed {
            Ok(response) if response.succeeded => resealed += 1,
            Ok(_) => {} // Written meanwhile: sealed with the active key already.
            Err(error) => tracing::error!(variable = %key, %error, "cannot re-seal a variable"),
        }
    }
    resealed
}

/// `DELETE /v1/operator/keyring/{id}`: only a key that is not active and seals no variable.
pub(crate) async fn remove_key(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response, Failure> {
    refuse_on_shared_store(&shared).await?;
    // No value is being sealed meanwhile, and the view shows every one committed.
    let _keys = shared.keyring_lock.write().await;
    shared.view.wait_for(shared.store.current_revision().await?).await;
    let in_use = shared.view.snapshot().variables.values().filter(|stored| stored.sealed.key_id == id).count();
    if in_use > 0 {
        return Err(Failure::conflict(format!(
            "key {id} still seals {in_use} variables; wait until the re-sealing after the rotation is done"
        )));
    }
    shared.keyring.remove(&id).map_err(|error| match error {
        crate::keyring::KeyringError::UnknownKey(_) => Failure::not_found(error.to_string()),
        crate::keyring::KeyringError::Active(_) => Failure::conflict(error.to_string()),
        other => Failure::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
    })?;
    Ok(indexed(0, &serde_json::json!({ "removed": id })))
}
