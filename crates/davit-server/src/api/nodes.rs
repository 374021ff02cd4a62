//! Node routes: registration, heartbeats, eligibility and drains, the agent's allocation long-poll and
//! status updates.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use davit_api::http::{
    AllocStatusUpdate, HeartbeatResponse, IndexResponse, NodeAllocStatusUpdates, NodeCertificateResponse, NodeDrainRequest,
    NodeEligibilityRequest, NodeListEntry, NodeRegisterResponse, NodesAllocationsRequest, NodesHeartbeatRequest, NodesHeartbeatResponse,
    PublicKeyQuery,
};
use davit_api::objects::{Allocation, DrainStrategy, EvalTrigger, Node, NodeEligibility, NodeStatus};
use davit_store::{Compare, Txn};

use super::{Blocking, Failure, Page, indexed, json_body, paged, resolve_prefix};
use crate::acl::Caller;
use crate::liveness::{evals_for_schedulable_node, system_job_evals};
use crate::{Shared, keys, now_millis};

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Query(blocking): Query<Blocking>,
    Query(page): Query<Page>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.table_index("nodes")).await;
    let nodes: Vec<NodeListEntry> = snapshot
        .cluster
        .nodes()
        .map(|node| {
            let live: Vec<_> = snapshot.cluster.allocs_for_node(&node.id).filter(|alloc| !alloc.is_terminal()).collect();
            NodeListEntry {
                id: node.id.clone(),
                name: node.name.clone(),
                datacenter: node.datacenter.clone(),
                status: node.status,
                eligibility: node.eligibility,
                drivers: node.drivers.iter().filter(|(_, info)| info.detected && info.healthy).map(|(name, _)| name.clone()).collect(),
                cpu_allocated: live.iter().map(|alloc| alloc.resources.cpu).sum(),
                cpu_total: node.resources.cpu,
                memory_allocated: live.iter().map(|alloc| alloc.resources.memory).sum(),
                memory_total: node.resources.memory,
                running_allocs: live.len() as u32,
                draining: node.is_draining(),
            }
        })
        .collect();
    paged(snapshot.table_index("nodes"), nodes, |node| format!("{}\0{}", node.name, node.id), &page)
}

pub(crate) fn find_node(snapshot: &crate::view::Snapshot, id_or_prefix: &str) -> Result<Arc<Node>, Failure> {
    if let Some(node) = snapshot.cluster.node(id_or_prefix) {
        return Ok(Arc::clone(node));
    }
    if let Some(node) = snapshot.cluster.nodes().find(|node| node.name == id_or_prefix) {
        return Ok(Arc::clone(node));
    }
    let id = resolve_prefix("node", id_or_prefix, snapshot.cluster.nodes().map(|node| node.id.as_str()))?;
    Ok(Arc::clone(snapshot.cluster.node(&id).expect("resolved id exists")))
}

pub(crate) async fn get_node(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let node = find_node(&snapshot, &id)?;
    Ok(indexed(node.modify_index, &*node))
}

/// `POST /v1/nodes/register`. With a join token, the node also gets its identity: a node token, answered
/// once (`NodeRegisterResponse::node_token`), with which it acts for itself alone from then on; the join
/// token loses a use in the same transaction. A node's identity may only register its own node, and a node
/// that has an identity can only register with it.
pub(crate) async fn register(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(key): Query<PublicKeyQuery>,
    body: Bytes,
) -> Result<Response, Failure> {
    let mut node: Node = json_body(&body, "node")?;
    if let Some(theirs) = key.cluster_id.as_deref().filter(|theirs| *theirs != shared.cluster_id) {
        return Err(Failure::conflict(format!(
            "node {} belongs to cluster {theirs}; this server is cluster {} (a wiped or foreign store): it was not registered",
            node.id, shared.cluster_id
        )));
    }
    if node.id.is_empty() || node.name.is_empty() || node.datacenter.is_empty() {
        return Err(Failure::bad_request("a node needs a non-empty id, name and datacenter"));
    }
    if node.id.len() > 128 || node.name.len() > 256 {
        return Err(Failure::bad_request("a node id has at most 128 bytes and a name at most 256"));
    }
    if let Some(identity) = caller.acl.node_identity().filter(|identity| *identity != node.id) {
        return Err(Failure::forbidden(format!(
            "permission denied: this token is the identity of node {identity}, not of node {}",
            node.id
        )));
    }
    if node.resources.port_range.0 > node.resources.port_range.1 {
        return Err(Failure::bad_request(format!(
            "node port_range {}-{} is empty: the first port must not be above the last",
            node.resources.port_range.0, node.resources.port_range.1
        )));
    }
    if shared.tls.is_some() && !node.http_addr.is_empty() && !node.http_addr.starts_with("https://") {
        return Err(Failure::bad_request(format!(
            "this server does TLS: the agent's API must be served over HTTPS, not at {} (give the agent the cluster's CA with --ca-cert)",
            node.http_addr
        )));
    }
    // With TLS, a node that joins (or, without ACLs, any node that asks) gets a certificate for the key it
    // sent: made before the transaction, answered only if it commits.
    let certificate = match (&shared.tls, key.public_key.as_deref()) {
        (Some(tls), Some(public_key)) if caller.acl.is_join() || !shared.acl_enabled => Some(
            tls.issue_node(&node.id, &node.http_addr, public_key)
                .map_err(|error| Failure::bad_request(format!("cannot issue a certificate to node {}: {error}", node.id)))?
                .cert_pem,
        ),
        (Some(_), None) if caller.acl.is_join() => {
            return Err(Failure::bad_request(
                "this cluster uses mutual TLS: a joining agent sends its public key (`?public_key=`) to get its certificate; give the agent the cluster's CA with --ca-cert",
            ));
        }
        _ => None,
    };
    let snapshot = shared.view.snapshot();
    let existing = snapshot.cluster.node(&node.id).cloned();
    if let Some(existing) = &existing {
        // Operator decisions survive agent restarts.
        node.eligibility = existing.eligibility;
        node.drain = existing.drain.clone();
    } else {
        node.eligibility = NodeEligibility::Eligible;
        node.drain = None;
    }
    node.status = NodeStatus::Ready;
    node.status_description = String::new();
    node.last_heartbeat = now_millis();
    let mut txn = Txn::default();
    let mut node_token = None;
    if caller.acl.is_join() {
        if existing.is_some() && snapshot.acl.node_token(&node.id).is_none() {
            return Err(Failure::forbidden(format!(
                "node {} is registered already, without an identity: a join token cannot take it over; join as a new node (remove the agent's data dir)",
                node.id
            )));
        }
        if snapshot.acl.node_token(&node.id).is_some() {
            return Err(Failure::forbidden(format!(
                "node {} already joined and must register with its own node token; an agent that lost it joins again as a new node (remove its data dir)",
                node.id
            )));
        }
        let join = caller.token.as_ref().ok_or_else(|| Failure::forbidden("a join token is needed".to_string()))?;
        let (stored, secret) = crate::acl::node_token(&node, now_millis());
        txn.compares.push(Compare::ModRevision(keys::acl_token(&join.token.accessor_id), join.token.modify_index));
        if let Some(uses) = join.token.uses_left {
            let mut used = (**join).clone();
            used.token.uses_left = Some(uses.saturating_sub(1));
            txn.success.push(keys::put(keys::acl_token(&join.token.accessor_id), &used));
        }
        txn.success.push(keys::put(keys::acl_token(&stored.token.accessor_id), &stored));
        node_token = Some(secret);
    } else if caller.acl.node_identity().is_none() && shared.acl_enabled && snapshot.acl.node_token(&node.id).is_some() {
        return Err(Failure::forbidden(format!("node {} has an identity of its own: only its node token may register it", node.id)));
    }
    txn.success.push(keys::put(keys::node(&node.id), &node));
    // Jobs with allocations on a node that was down look again (the node's agent stops any duplicate);
    // system jobs place their allocations on it (also on a re-registration: its drivers or attributes may
    // have changed).
    let was_down = existing.as_ref().is_some_and(|existing| existing.status == NodeStatus::Down);
    for eval in evals_for_schedulable_node(&snapshot, &node, was_down) {
        txn.success.push(keys::put(keys::eval(&eval.id), &eval));
    }
    let response = shared.store.txn(txn).await?;
    if !response.succeeded {
        return Err(Failure::conflict("the join token was used by another node at the same time; try again"));
    }
    shared.view.wait_for(response.revision).await;
    shared.liveness.registered(&node.id);
    tracing::info!(node = %node.name, id = %node.id, "node registered");
    let interval = shared.liveness.config.heartbeat_interval.as_millis() as u64;
    Ok(indexed(
        response.revision,
        &NodeRegisterResponse {
            node_id: node.id,
            index: response.revision,
            heartbeat_interval_ms: interval,
            acl_enabled: shared.acl_enabled,
            node_token,
            certificate,
            cluster_id: shared.cluster_id.clone(),
        },
    ))
}

/// `POST /v1/node/{id}/certificate?public_key=`: a new certificate for a node that presents its current one
/// (agents renew after two thirds of a certificate's life). A node whose certificate expired joins again.
pub(crate) async fn renew_certificate(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(key): Query<PublicKeyQuery>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<davit_tls::Peer>,
) -> Result<Response, Failure> {
    let tls = shared.tls.as_ref().ok_or_else(|| Failure::bad_request("this server does not do TLS: there are no node certificates"))?;
    let public_key =
        key.public_key.ok_or_else(|| Failure::bad_request("`?public_key=` is missing: the hex of the node's new public key"))?;
    if !peer.is(&davit_tls::node_name(&id)) {
        return Err(Failure::forbidden(format!(
            "permission denied: only node {id}, presenting its current certificate, renews it (a node whose certificate expired joins again)"
        )));
    }
    let snapshot = shared.view.snapshot();
    let node = snapshot.cluster.node(&id).ok_or_else(|| Failure::not_found(format!("node {id} not found")))?;
    let issued = tls.issue_node(&node.id, &node.http_addr, &public_key).map_err(|error| Failure::bad_request(error.to_string()))?;
    tracing::info!(node = %node.name, id = %node.id, "renewed the node's certificate");
    Ok(indexed(snapshot.revision, &NodeCertificateResponse { certificate: issued.cert_pem }))
}

/// `POST /v1/node/{id}/eligibility`: ineligible nodes get no new allocations; existing ones keep running.
pub(crate) async fn eligibility(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let request: NodeEligibilityRequest = json_body(&body, "eligibility request")?;
    update_node(&shared, &id, |node| {
        if request.eligible && node.is_draining() {
            return Err(Failure::conflict(format!(
                "node {} is draining; cancel the drain first (`davit node drain --disable {}`)",
                node.name, node.name
            )));
        }
        node.eligibility = if request.eligible { NodeEligibility::Eligible } else { NodeEligibility::Ineligible };
        Ok(())
    })
    .await
}

/// `POST /v1/node/{id}/drain`: start (or change) a drain, or cancel one. The drainer does the work.
pub(crate) async fn drain(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let request: NodeDrainRequest = json_body(&body, "drain request")?;
    let now = now_millis();
    update_node(&shared, &id, |node| {
        if request.enable {
            node.eligibility = NodeEligibility::Ineligible;
            // Changing a running drain keeps its start (the drainer recognises its migrations in flight
            // by it); the new deadline still counts from now.
            let started_at = node.drain.as_ref().map_or(now, |drain| drain.started_at.min(now));
            let deadline_ms = request.deadline_ms.map(|deadline| deadline.saturating_add(now - started_at));
            node.drain = Some(DrainStrategy { deadline_ms, started_at, ignore_system: request.ignore_system });
        } else {
            // Like Nomad: the node stays ineligible until it is made eligible again.
            node.drain = None;
        }
        Ok(())
    })
    .await
}

/// How often an operator's change of a node is retried when an agent or the server changed it meanwhile.
const NODE_UPDATE_ATTEMPTS: u32 = 5;

/// Applies `change` to the node (by id, id prefix or name) with compare-and-set on its revision,
/// retrying on a fresh snapshot if it changed meanwhile. Writes nothing when `change` changes nothing.
async fn update_node(shared: &Shared, id_or_prefix: &str, change: impl Fn(&mut Node) -> Result<(), Failure>) -> Result<Response, Failure> {
    for _ in 0..NODE_UPDATE_ATTEMPTS {
        let snapshot = shared.view.snapshot();
        let node = find_node(&snapshot, id_or_prefix)?;
        let mut changed = (*node).clone();
        change(&mut changed)?;
        if changed == *node {
            return Ok(indexed(node.modify_index, &IndexResponse { index: node.modify_index }));
        }
        let mut txn = Txn::default();
        txn.compares.push(Compare::ModRevision(keys::node(&node.id), node.modify_index));
        txn.success.push(keys::put(keys::node(&node.id), &changed));
        if changed.is_schedulable() && !node.is_schedulable() {
            // Made eligible again: system jobs place their allocations on it.
            for eval in system_job_evals(&snapshot, &changed, EvalTrigger::NodeUpdate, &[]) {
                txn.success.push(keys::put(keys::eval(&eval.id), &eval));
            }
        }
        let response = shared.store.txn(txn).await?;
        if response.succeeded {
            shared.view.wait_for(response.revision).await;
            tracing::info!(node = %node.name, id = %node.id, eligibility = ?changed.eligibility, drain = ?changed.drain, "node updated");
            return Ok(indexed(response.revision, &IndexResponse { index: response.revision }));
        }
        // Someone else changed the node: wait until the view has it, then try again.
        shared.view.wait_for(response.revision).await;
    }
    Err(Failure::conflict(format!("node {id_or_prefix} kept changing; try again")))
}

/// `PUT /v1/nodes/heartbeat`: a heartbeat of each listed node (`davit sim` runs thousands of nodes in one
/// process). Nodes that were down are marked ready in one transaction; unknown ones are listed in the answer.
pub(crate) async fn heartbeat_many(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let request: NodesHeartbeatRequest = json_body(&body, "heartbeat request")?;
    let snapshot = shared.view.snapshot();
    let (known, unknown): (Vec<&String>, Vec<&String>) = request.node_ids.iter().partition(|id| snapshot.cluster.node(id).is_some());
    shared.liveness.heartbeat_many(known.iter().map(|id| id.as_str()));
    let mut index = snapshot.revision;
    let mut txn = Txn::default();
    for id in &known {
        let node = snapshot.cluster.node(id).expect("partitioned on it");
        if node.status == NodeStatus::Down {
            let mut ready = (**node).clone();
            ready.status = NodeStatus::Ready;
            ready.status_description = String::new();
            ready.last_heartbeat = now_millis();
            txn.success.push(keys::put(keys::node(id), &ready));
            for eval in evals_for_schedulable_node(&snapshot, &ready, true) {
                txn.success.push(keys::put(keys::eval(&eval.id), &eval));
            }
            tracing::info!(node = %node.name, "node is back: marked ready");
        }
    }
    if !txn.success.is_empty() {
        let response = shared.store.txn(txn).await?;
        shared.view.wait_for(response.revision).await;
        index = response.revision;
    }
    let interval = shared.liveness.config.heartbeat_interval.as_millis() as u64;
    let unknown = unknown.into_iter().cloned().collect();
    Ok(indexed(index, &NodesHeartbeatResponse { index, heartbeat_interval_ms: interval, unknown }))
}

/// `POST /v1/nodes/allocations?index=N&wait=D`: the long-poll of many nodes at once; answers the
/// allocations of those nodes written after `N` (a delta) with the snapshot's revision as the index.
pub(crate) async fn nodes_allocations(
    State(shared): State<Arc<Shared>>,
    Query(blocking): Query<Blocking>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: NodesAllocationsRequest = json_body(&body, "node list")?;
    let nodes = crate::view::NodeSet::new(request.node_ids.iter().map(String::as_str));
    let index = blocking.index.unwrap_or(0);
    let snapshot = shared.view.block_until(index, blocking.wait()?, |s| s.nodes_alloc_index(&nodes, index)).await;
    let changed = snapshot.allocs_changed(&nodes, index);
    let allocs: Vec<&Allocation> = changed.iter().map(|alloc| &**alloc).collect();
    Ok(indexed(snapshot.revision.max(1), &allocs))
}

/// `POST /v1/nodes/allocations/status`: status updates of many nodes' allocations, in one transaction.
pub(crate) async fn update_allocations_many(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let updates: Vec<NodeAllocStatusUpdates> = json_body(&body, "allocation status list")?;
    let index = shared.applier.client_updates(updates, now_millis()).await?;
    shared.view.wait_for(index).await;
    Ok(indexed(index, &IndexResponse { index }))
}

pub(crate) async fn heartbeat(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response, Failure> {
    let snapshot = shared.view.snapshot();
    let Some(node) = snapshot.cluster.node(&id).cloned() else {
        return Err(Failure::not_found(format!("node {id} is not registered; register it first")));
    };
    shared.liveness.heartbeat(&id);
    let mut index = snapshot.revision;
    if node.status == NodeStatus::Down {
        let mut ready = (*node).clone();
        ready.status = NodeStatus::Ready;
        ready.status_description = String::new();
        ready.last_heartbeat = now_millis();
        let mut txn = Txn::default();
        txn.success.push(keys::put(keys::node(&id), &ready));
        for eval in evals_for_schedulable_node(&snapshot, &ready, true) {
            txn.success.push(keys::put(keys::eval(&eval.id), &eval));
        }
        let response = shared.store.txn(txn).await?;
        shared.view.wait_for(response.revision).await;
        index = response.revision;
        tracing::info!(node = %node.name, "node is back: marked ready");
    }
    let interval = shared.liveness.config.heartbeat_interval.as_millis() as u64;
    Ok(indexed(index, &HeartbeatResponse { index, heartbeat_interval_ms: interval }))
}

pub(crate) async fn allocations(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(blocking): Query<Blocking>,
) -> Result<Response, Failure> {
    let snapshot = shared.view.block_until(blocking.index.unwrap_or(0), blocking.wait()?, |s| s.node_alloc_index(&id)).await;
    let allocs: Vec<Allocation> = snapshot.cluster.allocs_for_node(&id).map(|alloc| (**alloc).clone()).collect();
    Ok(indexed(snapshot.node_alloc_index(&id).max(1), &allocs))
}

pub(crate) async fn update_allocations(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let updates: Vec<AllocStatusUpdate> = json_body(&body, "allocation status list")?;
    if shared.view.snapshot().cluster.node(&id).is_none() {
        return Err(Failure::not_found(format!("node {id} is not registered")));
    }
    let index = shared.applier.client_update(id, updates, now_millis()).await?;
    shared.view.wait_for(index).await;
    Ok(indexed(index, &IndexResponse { index }))
}

/// `POST /v1/node/{id}/activate`: a request reached the node's proxy for a group scaled to zero (see
/// `autoscaler::activate`).
pub(crate) async fn activate(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let request: davit_api::http::ActivateRequest = json_body(&body, "activation request")?;
    let node = shared.view.snapshot().cluster.node(&id).map(|node| node.name.clone());
    let Some(node) = node else { return Err(Failure::not_found(format!("node {id} is not registered"))) };
    let answer = crate::autoscaler::activate(&shared, &node, &request.job, &request.group).await?;
    let index = shared.view.snapshot().revision;
    Ok(indexed(index, &answer))
}

/// `POST /v1/node/{id}/usage`: the node's usage samples and proxy counters, kept in memory (see `usage`).
pub(crate) async fn usage(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let report: davit_api::http::UsageReport = json_body(&body, "usage report")?;
    let most = davit_api::http::MAX_USAGE_ENTRIES;
    if report.allocs.len() > most || report.proxy.len() > most {
        return Err(Failure::bad_request(format!(
            "a usage report holds at most {most} allocations and {most} proxy backends; send several"
        )));
    }
    let snapshot = shared.view.snapshot();
    if snapshot.cluster.node(&id).is_none() {
        return Err(Failure::not_found(format!("node {id} is not registered")));
    }
    // Proxies send requests to the allocations of groups with services, and to nothing else.
    let cluster = &snapshot.cluster;
    let served = |alloc_id: &str| {
        cluster.alloc(alloc_id).is_some_and(|alloc| {
            cluster
                .job_version(&alloc.job_name, alloc.job_version)
                .and_then(|job| job.spec.group(&alloc.group).map(|group| !group.services.is_empty()))
                .unwrap_or(false)
        })
    };
    shared.signals.ingest(&id, report, &snapshot.cluster, served, std::time::Instant::now());
    Ok(indexed(snapshot.revision, &IndexResponse { index: snapshot.revision }))
}
