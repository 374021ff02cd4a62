//! Namespace routes: list, status (with usage against quota), apply, delete.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use davit_api::acl::{Capability, DEFAULT_NAMESPACE};
use davit_api::namespace::{ApplyNamespaceRequest, Namespace, NamespaceStatus};
use davit_store::{Compare, Op, Txn};

use super::{Failure, Page, indexed, json_body, paged};
use crate::acl::Caller;
use crate::view::Snapshot;
use crate::{Shared, keys};

/// Namespaces a cluster may have at most.
const MAX_NAMESPACES: usize = 1_000;

/// The namespace as stored, or `default` as it is before anyone applied it.
fn namespace_of(snapshot: &Snapshot, name: &str) -> Option<Namespace> {
    match snapshot.cluster.namespace(name) {
        Some(namespace) => Some((**namespace).clone()),
        None if name == DEFAULT_NAMESPACE => Some(Namespace {
            name: DEFAULT_NAMESPACE.to_string(),
            description: "the default namespace".to_string(),
            ..Namespace::default()
        }),
        None => None,
    }
}

fn status(snapshot: &Snapshot, namespace: Namespace) -> NamespaceStatus {
    let usage = snapshot.cluster.namespace_usage(&namespace.name);
    let jobs = snapshot.cluster.jobs().filter(|job| job.spec.namespace == namespace.name).count() as u32;
    NamespaceStatus { namespace, usage, jobs }
}

/// Whether the caller may see the namespace: it holds some capability there.
fn visible(caller: &Caller, name: &str) -> bool {
    Capability::ALL.iter().any(|&capability| caller.acl.allows(name, capability))
}

/// `GET /v1/namespaces`: the namespaces the caller holds a capability in, with their usage.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let mut names: Vec<String> = snapshot.cluster.namespaces().map(|namespace| namespace.name.clone()).collect();
    if !names.iter().any(|name| name == DEFAULT_NAMESPACE) {
        names.push(DEFAULT_NAMESPACE.to_string());
    }
    let statuses: Vec<NamespaceStatus> = names
        .iter()
        .filter(|name| visible(&caller, name))
        .filter_map(|name| namespace_of(&snapshot, name))
        .map(|namespace| status(&snapshot, namespace))
        .collect();
    paged(snapshot.table_index("namespaces"), statuses, |status| status.namespace.name.clone(), &page)
}

/// `GET /v1/namespace/{name}`.
pub(crate) async fn get(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    if !visible(&caller, &name) {
        return Err(Failure::forbidden(format!("permission denied: this token holds nothing in namespace `{name}`")));
    }
    let snapshot = shared.view.snapshot();
    let namespace = namespace_of(&snapshot, &name).ok_or_else(|| not_found(&name))?;
    let index = namespace.modify_index;
    Ok(indexed(index, &status(&snapshot, namespace)))
}

fn not_found(name: &str) -> Failure {
    Failure::not_found(format!("namespace `{name}` does not exist; `davit namespace ls` lists them"))
}

/// `PUT /v1/namespace/{name}`: creates or updates a namespace (its description and quota).
pub(crate) async fn apply(State(shared): State<Arc<Shared>>, Path(name): Path<String>, body: Bytes) -> Result<Response, Failure> {
    davit_api::spec::check_dns_label(&name)
        .map_err(|reason| Failure::bad_request(format!("`{name}` is not a valid namespace name: {reason} (a DNS label, e.g. team-a)")))?;
    let request: ApplyNamespaceRequest = json_body(&body, "namespace")?;
    if request.description.len() > 1024 {
        return Err(Failure::bad_request("the namespace description is longer than 1024 bytes"));
    }
    let snapshot = shared.view.snapshot();
    if snapshot.cluster.namespace(&name).is_none() && snapshot.cluster.namespaces().count() >= MAX_NAMESPACES {
        return Err(Failure::bad_request(format!("there are {MAX_NAMESPACES} namespaces already, the most a cluster may have")));
    }
    let namespace =
        Namespace { name: name.clone(), description: request.description, quota: request.quota, create_index: 0, modify_index: 0 };
    let txn = Txn { compares: Vec::new(), success: vec![keys::put(keys::namespace(&name), &namespace)], failure: Vec::new() };
    let response = shared.store.txn(txn).await?;
    shared.view.wait_for(response.revision).await;
    let snapshot = shared.view.snapshot();
    let stored = namespace_of(&snapshot, &name).unwrap_or(namespace);
    Ok(indexed(response.revision, &status(&snapshot, stored)))
}

/// `DELETE /v1/namespace/{name}`: only an empty namespace other than `default`.
pub(crate) async fn delete(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    if name == DEFAULT_NAMESPACE {
        return Err(Failure::bad_request("the default namespace cannot be deleted"));
    }
    let snapshot = shared.view.snapshot();
    let jobs: Vec<&str> = snapshot.cluster.jobs().filter(|job| job.spec.namespace == name).map(|job| job.spec.name.as_str()).collect();
    if !jobs.is_empty() {
        return Err(Failure::conflict(format!(
            "namespace `{name}` still holds jobs: {}; remove them first (`davit job stop -n {name} --purge <job>`)",
            jobs.join(", ")
        )));
    }
    let key = keys::namespace(&name);
    let txn = Txn { compares: vec![Compare::Exists(key.clone())], success: vec![Op::Delete { key }], failure: Vec::new() };
    let response = shared.store.txn(txn).await?;
    if !response.succeeded {
        return Err(not_found(&name));
    }
    shared.view.wait_for(response.revision).await;
    Ok(indexed(response.revision, &davit_api::http::IndexResponse { index: response.revision }))
}
