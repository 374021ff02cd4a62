//! How cluster objects are laid out in the store's flat keyspace. Values are JSON.
//!
//! | key | value |
//! |---|---|
//! | `jobs/<job id>` | latest [`Job`] (the id is the name in `default`, `<namespace>/<name>` elsewhere) |
//! | `versions/<job id>/<version, 20 digits>` | every [`Job`] version |
//! | `nodes/<id>` | [`Node`] |
//! | `allocs/<created, 12 hex digits of ms>/<id>` (ids the scheduler makes), `allocs/<id>` (others) | [`Allocation`] |
//! | `evals/<id>` | [`Evaluation`] |
//! | `deployments/<id>` | [`Deployment`] |
//! | `namespaces/<name>` | [`Namespace`] (`default` exists without one) |
//! | `vars/<namespace>/<path>` | [`StoredVariable`]: the items sealed with the keyring (see `keyring.rs`) |
//! | `acl/policy/<name>` | [`AclPolicy`] |
//! | `acl/token/<accessor id>` | [`StoredToken`] (the secret only as its SHA-256) |
//! | `acl/bootstrap` | the accessor id of the bootstrap token: present once `acl bootstrap` ran |
//! | `cluster/id` | the cluster's id (a JSON string), made by the first server on an empty store |

use davit_api::acl::{AclPolicy, StoredToken};
use davit_api::deployment::Deployment;
use davit_api::namespace::Namespace;
use davit_api::objects::{Allocation, Evaluation, Job, Node};
use serde::Serialize;

pub const JOBS: &str = "jobs/";
pub const VERSIONS: &str = "versions/";
pub const NODES: &str = "nodes/";
pub const ALLOCS: &str = "allocs/";
pub const EVALS: &str = "evals/";
pub const DEPLOYMENTS: &str = "deployments/";
pub const NAMESPACES: &str = "namespaces/";
pub const VARIABLES: &str = "vars/";
pub const ACL_POLICIES: &str = "acl/policy/";
pub const ACL_TOKENS: &str = "acl/token/";
pub const ACL_BOOTSTRAP: &str = "acl/bootstrap";
pub const CLUSTER_ID: &str = "cluster/id";
/// The servers' own keys (`server/leader`, see `leader.rs`).
pub const SERVERS: &str = "server/";

pub fn job(name: &str) -> String {
    format!("{JOBS}{name}")
}
pub fn version(name: &str, version: u64) -> String {
    format!("{VERSIONS}{name}/{version:020}")
}
pub fn node(id: &str) -> String {
    format!("{NODES}{id}")
}
/// An allocation's key: for the ids the scheduler makes ([`davit_scheduler::alloc_id_created`]), the creation
/// time in the id leads, so allocations created together sit together in the store's B-tree (a plan's writes
/// and the status updates that follow touch a few neighbouring pages, not one random page each).
pub fn alloc(id: &str) -> String {
    match davit_scheduler::alloc_id_created(id) {
        Some(created) => format!("{ALLOCS}{}/{id}", String::from_utf8_lossy(&created)),
        None => format!("{ALLOCS}{id}"),
    }
}
pub fn eval(id: &str) -> String {
    format!("{EVALS}{id}")
}
pub fn deployment(id: &str) -> String {
    format!("{DEPLOYMENTS}{id}")
}
pub fn variable(namespace: &str, path: &str) -> String {
    format!("{VARIABLES}{namespace}/{path}")
}
pub fn namespace(name: &str) -> String {
    format!("{NAMESPACES}{name}")
}
pub fn acl_policy(name: &str) -> String {
    format!("{ACL_POLICIES}{name}")
}
pub fn acl_token(accessor_id: &str) -> String {
    format!("{ACL_TOKENS}{accessor_id}")
}

/// A variable as the store keeps it: its items only sealed (JSON of the items, associated data: its key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StoredVariable {
    pub namespace: String,
    pub path: String,
    pub create_time: u64,
    pub modify_time: u64,
    pub sealed: crate::keyring::Sealed,
    #[serde(skip)]
    pub create_index: u64,
    #[serde(skip)]
    pub modify_index: u64,
}

/// A decoded store key and value.
#[derive(Debug)]
pub enum Object {
    Job(Job),
    Version(Job),
    Node(Node),
    Alloc(Box<Allocation>),
    Eval(Evaluation),
    Deployment(Box<Deployment>),
    Namespace(Namespace),
    Variable(Box<StoredVariable>),
    AclPolicy(AclPolicy),
    AclToken(Box<StoredToken>),
    AclBootstrap,
    /// The cluster id and the servers' keys (`server/leader`): bookkeeping, not part of the cluster's state.
    Meta,
}

/// What a deleted key referred to.
#[derive(Debug, PartialEq, Eq)]
pub enum ObjectKey<'a> {
    Job(&'a str),
    Version(&'a str, u64),
    Node(&'a str),
    Alloc(&'a str),
    Eval(&'a str),
    Deployment(&'a str),
    Namespace(&'a str),
    /// (namespace, path)
    Variable(&'a str, &'a str),
    AclPolicy(&'a str),
    AclToken(&'a str),
    AclBootstrap,
    Meta,
}

pub fn parse_key(key: &str) -> Option<ObjectKey<'_>> {
    if let Some(name) = key.strip_prefix(JOBS) {
        return Some(ObjectKey::Job(name));
    }
    if let Some(rest) = key.strip_prefix(VERSIONS) {
        let (name, version) = rest.rsplit_once('/')?;
        return Some(ObjectKey::Version(name, version.parse().ok()?));
    }
    if let Some(id) = key.strip_prefix(NODES) {
        return Some(ObjectKey::Node(id));
    }
    if let Some(rest) = key.strip_prefix(ALLOCS) {
        // The inverse of `alloc`: a time part only where the id carries that very time.
        let timed =
            rest.split_once('/').filter(|(created, id)| davit_scheduler::alloc_id_created(id).is_some_and(|c| c == created.as_bytes()));
        return Some(ObjectKey::Alloc(timed.map_or(rest, |(_, id)| id)));
    }
    if let Some(rest) = key.strip_prefix(VARIABLES) {
        let (namespace, path) = rest.split_once('/')?;
        return Some(ObjectKey::Variable(namespace, path));
    }
    if let Some(name) = key.strip_prefix(NAMESPACES) {
        return Some(ObjectKey::Namespace(name));
    }
    if let Some(id) = key.strip_prefix(DEPLOYMENTS) {
        return Some(ObjectKey::Deployment(id));
    }
    if let Some(name) = key.strip_prefix(ACL_POLICIES) {
        return Some(ObjectKey::AclPolicy(name));
    }
    if let Some(accessor_id) = key.strip_prefix(ACL_TOKENS) {
        return Some(ObjectKey::AclToken(accessor_id));
    }
    if key == ACL_BOOTSTRAP {
        return Some(ObjectKey::AclBootstrap);
    }
    if key == CLUSTER_ID || key.starts_with(SERVERS) {
        return Some(ObjectKey::Meta);
    }
    key.strip_prefix(EVALS).map(ObjectKey::Eval)
}

/// Decodes a stored value, setting its `create_index`/`modify_index` from the store's revisions.
pub fn decode(key: &str, value: &[u8], create_revision: u64, mod_revision: u64) -> Result<Object, serde_json::Error> {
    Ok(match parse_key(key) {
        Some(ObjectKey::Job(_)) => {
            let mut job: Job = serde_json::from_slice(value)?;
            (job.create_index, job.modify_index) = (create_revision, mod_revision);
            Object::Job(job)
        }
        Some(ObjectKey::Version(..)) => {
            let mut job: Job = serde_json::from_slice(value)?;
            (job.create_index, job.modify_index) = (create_revision, mod_revision);
            Object::Version(job)
        }
        Some(ObjectKey::Node(_)) => {
            let mut node: Node = serde_json::from_slice(value)?;
            (node.create_index, node.modify_index) = (create_revision, mod_revision);
            Object::Node(node)
        }
        Some(ObjectKey::Alloc(_)) => {
            let mut alloc: Allocation = serde_json::from_slice(value)?;
            (alloc.create_index, alloc.modify_index) = (create_revision, mod_revision);
            Object::Alloc(Box::new(alloc))
        }
        Some(ObjectKey::Deployment(_)) => {
            let mut deployment: Deployment = serde_json::from_slice(value)?;
            (deployment.create_index, deployment.modify_index) = (create_revision, mod_revision);
            Object::Deployment(Box::new(deployment))
        }
        Some(ObjectKey::Namespace(_)) => {
            let mut namespace: Namespace = serde_json::from_slice(value)?;
            (namespace.create_index, namespace.modify_index) = (create_revision, mod_revision);
            Object::Namespace(namespace)
        }
        Some(ObjectKey::Variable(..)) => {
            let mut variable: StoredVariable = serde_json::from_slice(value)?;
            (variable.create_index, variable.modify_index) = (create_revision, mod_revision);
            Object::Variable(Box::new(variable))
        }
        Some(ObjectKey::AclPolicy(_)) => {
            let mut policy: AclPolicy = serde_json::from_slice(value)?;
            (policy.create_index, policy.modify_index) = (create_revision, mod_revision);
            Object::AclPolicy(policy)
        }
        Some(ObjectKey::AclToken(_)) => {
            let mut stored: StoredToken = serde_json::from_slice(value)?;
            (stored.token.create_index, stored.token.modify_index) = (create_revision, mod_revision);
            Object::AclToken(Box::new(stored))
        }
        Some(ObjectKey::AclBootstrap) => Object::AclBootstrap,
        Some(ObjectKey::Meta) => Object::Meta,
        Some(ObjectKey::Eval(_)) | None => {
            let mut eval: Evaluation = serde_json::from_slice(value)?;
            (eval.create_index, eval.modify_index) = (create_revision, mod_revision);
            Object::Eval(eval)
        }
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("cluster objects always serialize")
}

pub fn put<T: Serialize>(key: String, value: &T) -> davit_store::Op {
    davit_store::Op::Put { key, value: encode(value), lease: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse_key(&version("web", 7)), Some(ObjectKey::Version("web", 7)));
        assert_eq!(parse_key(&job("web")), Some(ObjectKey::Job("web")));
        assert_eq!(parse_key(&alloc("a1")), Some(ObjectKey::Alloc("a1")));
        let made = "5f3c9a21-019a-7e2b-8c4d-5e6f70819203";
        assert_eq!(alloc(made), format!("allocs/019ae2bc4d5e/{made}"));
        assert_eq!(parse_key(&alloc(made)), Some(ObjectKey::Alloc(made)));
        let random = "5f3c9a21-019a-4e2b-8c4d-5e6f70819203";
        assert_eq!(alloc(random), format!("allocs/{random}"), "ids of other shapes keep their plain key");
        assert_eq!(parse_key(&alloc(random)), Some(ObjectKey::Alloc(random)));
        assert_eq!(parse_key(&alloc("a/b")), Some(ObjectKey::Alloc("a/b")), "a plain id keeps its slashes");
        assert_eq!(parse_key("other/x"), None);
        assert_eq!(parse_key(&acl_policy("ops")), Some(ObjectKey::AclPolicy("ops")));
        assert_eq!(parse_key(&namespace("team-a")), Some(ObjectKey::Namespace("team-a")));
        assert_eq!(parse_key(&variable("team-a", "shop/db")), Some(ObjectKey::Variable("team-a", "shop/db")));
        assert_eq!(parse_key(&version("team-a/web", 3)), Some(ObjectKey::Version("team-a/web", 3)));
        assert_eq!(parse_key(&job("team-a/web")), Some(ObjectKey::Job("team-a/web")));
        assert_eq!(parse_key(&acl_token("a-1")), Some(ObjectKey::AclToken("a-1")));
        assert_eq!(parse_key(ACL_BOOTSTRAP), Some(ObjectKey::AclBootstrap));
        assert_eq!(parse_key(&deployment("d-1")), Some(ObjectKey::Deployment("d-1")));
    }
}
