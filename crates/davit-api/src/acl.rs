//! Access control: ACL policies (what they grant), tokens (who holds which policies), the rule each API
//! route needs, and the pure decision whether a token's policies satisfy that rule.
//!
//! A policy grants capabilities per namespace (the rule's key may be a glob with `*`), rights over nodes and
//! the operator API, and rights over variable paths:
//!
//! ```yaml
//! namespaces:
//!   default:
//!     policy: read                     # shorthand: deny | read | scale | write
//!     capabilities: [alloc-exec]       # added to what the shorthand grants
//!     variables: {"shop/*": [read, list]}
//!   "team-*": {policy: write}
//! node: read                           # deny | read | write
//! operator: read
//! ```
//!
//! Rules add up: a token holds what any of its policies' matching rules grant, except that a `deny`
//! in any rule that matches (a namespace rule's `policy: deny`, `node: deny`, a variable path's `[deny]`)
//! takes away everything that rule's scope would otherwise grant. Default deny: nothing matches, nothing
//! is granted. A `management` token may do everything.
//!
//! Token secrets are never stored: the server keeps their SHA-256 (`secret_hash`, computed by the server).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::objects::{Index, UnixMillis};
use crate::spec::SpecErrors;
use crate::spec::parse::{Ctx, Document, parse_document};

/// The header that carries a token's secret (`Authorization: Bearer <secret>` works too).
pub const TOKEN_HEADER: &str = "x-davit-token";
/// The namespace every cluster has, and the one a request names when it names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The policy that applies to requests without a token, when an operator created it.
pub const ANONYMOUS_POLICY: &str = "anonymous";
/// Bounds on what users send.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_TOKEN_POLICIES: usize = 64;
pub const MAX_POLICIES: usize = 1_000;
pub const MAX_TOKENS: usize = 100_000;

/// What a token may do with the jobs of a namespace (and their allocations, evaluations and services).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// See jobs, their versions, allocations, evaluations and services.
    ReadJob,
    /// Register, plan, revert and stop jobs.
    SubmitJob,
    /// Change a group's count.
    ScaleJob,
    /// Promote, fail or pause deployments.
    DeploymentWrite,
    /// Read tasks' logs.
    ReadLogs,
    /// Run commands inside tasks (`alloc exec`).
    AllocExec,
    /// Stop, restart and migrate allocations.
    AllocLifecycle,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::ReadJob,
        Capability::SubmitJob,
        Capability::ScaleJob,
        Capability::DeploymentWrite,
        Capability::ReadLogs,
        Capability::AllocExec,
        Capability::AllocLifecycle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::ReadJob => "read-job",
            Capability::SubmitJob => "submit-job",
            Capability::ScaleJob => "scale-job",
            Capability::DeploymentWrite => "deployment-write",
            Capability::ReadLogs => "read-logs",
            Capability::AllocExec => "alloc-exec",
            Capability::AllocLifecycle => "alloc-lifecycle",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl VariableCapability {
    pub fn as_str(self) -> &'static str {
        match self {
            VariableCapability::Read => "read",
            VariableCapability::Write => "write",
            VariableCapability::List => "list",
            VariableCapability::Deny => "deny",
        }
    }
}

/// The shorthand of a namespace rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamespacePolicy {
    /// Nothing in the namespace, whatever other rules grant.
    Deny,
    /// `read-job`.
    Read,
    /// `read-job`, `scale-job`.
    Scale,
    /// Every capability.
    Write,
}

impl NamespacePolicy {
    fn grants(self) -> u16 {
        let bits = |caps: &[Capability]| caps.iter().fold(0, |bits, cap| bits | cap.bit());
        match self {
            NamespacePolicy::Deny => 0,
            NamespacePolicy::Read => bits(&[Capability::ReadJob]),
            NamespacePolicy::Scale => bits(&[Capability::ReadJob, Capability::ScaleJob]),
            NamespacePolicy::Write => bits(&Capability::ALL),
        }
    }
}

/// Rights over a cluster-wide area (nodes, the operator API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    #[default]
    None,
    Read,
    Write,
    /// Nothing, whatever other policies grant.
    Deny,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Write => "write",
            Access::Deny => "deny",
        }
    }
}

/// What a token may do with the variables under a path glob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariableCapability {
    Read,
    Write,
    List,
    /// Nothing under this path, whatever other rules grant.
    Deny,
}

/// The rules of one namespace glob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<NamespacePolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<Capability>,
    /// Variable path glob → what may be done under it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, Vec<VariableCapability>>,
}

/// A policy document, as users write it (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRules {
    /// Namespace name or glob → rule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceRule>,
    #[serde(default, skip_serializing_if = "is_none_access")]
    pub node: Access,
    #[serde(default, skip_serializing_if = "is_none_access")]
    pub operator: Access,
}

fn is_none_access(access: &Access) -> bool {
    *access == Access::None
}

/// A stored policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclPolicy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: PolicyRules,
    /// The text it was applied from (shown by `acl policy info`).
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

/// `PUT /v1/acl/policy/{name}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPolicyRequest {
    #[serde(default)]
    pub description: String,
    /// The policy document (YAML or JSON).
    pub source: String,
    /// Used in error positions.
    #[serde(default)]
    pub filename: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    /// May do everything; holds no policies.
    Management,
    /// Holds what its policies grant.
    #[default]
    Client,
    /// May register a new node, `uses` times at most (`davit acl join-token create`); nothing else.
    Join,
    /// A node's identity, made when it joined with a join token: may act for that node only.
    Node,
}

/// A token as the API shows it: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclToken {
    /// Public id, safe to log and show.
    pub accessor_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    #[serde(default)]
    pub policies: Vec<String>,
    pub create_time: UnixMillis,
    /// After this the token is refused like an unknown one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<UnixMillis>,
    /// Join tokens: registrations left (`None`: any number until it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    /// Node tokens: the node whose identity this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default)]
    pub create_index: Index,
    #[serde(default)]
    pub modify_index: Index,
}

impl AclToken {
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expiration_time.is_some_and(|expiry| expiry <= now)
    }
}

/// A token as the store keeps it: the secret only as its SHA-256 (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    #[serde(flatten)]
    pub token: AclToken,
    pub secret_hash: String,
}

/// `POST /v1/acl/tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTokenRequest {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub token_type: TokenType,
    #[serde(default)]
    pub policies: Vec<String>,
    /// How long the token lives (e.g. `1h`); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<crate::Duration>,
    /// Join tokens: how many nodes may join with it (absent: any number until it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
}

/// A new token with its secret: the only answer that ever carries the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: AclToken,
    pub secret_id: String,
}

/// `GET /v1/acl/token/self`: the caller's token and the policies it holds (agents check their own API's
/// requests with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSelf {
    pub token: AclToken,
    pub policies: Vec<AclPolicy>,
}

/// What a route needs. Every route of the server's and the agent's API declares one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The capability in the request's namespace (`?namespace=`, default `default`).
    Namespace(Capability),
    /// Any of these capabilities in the request's namespace.
    NamespaceAny(&'static [Capability]),
    /// The capability in the request's namespace, this access to nodes, or a node identity (what agents read
    /// for the allocations they run, such as job versions; the handler limits a node identity to its own).
    NamespaceOrNode(Capability, Access),
    Node(Access),
    /// Node policy access, or the identity of the node the route's `{id}` names (an agent acting for itself).
    ThisNode(Access),
    /// Node policy access, or the identity of any node (what every agent reads, such as the service catalog).
    AnyNode(Access),
    /// Registering a node: `node: write`, a join token, or a node's own identity (re-registration).
    Register,
    Operator(Access),
    /// Only management tokens.
    Management,
    /// Any valid token (reading one's own token).
    Authenticated,
    /// The capability on the variable path the route names, in the request's namespace.
    Variable(VariableCapability),
    /// Any valid token; the answer lists only the variables the token may `list`.
    VariableList,
    /// No token: `POST /v1/acl/bootstrap`, which works once.
    Bootstrap,
}

/// One route of an HTTP API (the server's or the agent's) and the rule it needs: the API builds its router
/// from a list of these, and tests walk the same list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub method: &'static str,
    /// axum's pattern, e.g. `/v1/job/{name}`.
    pub path: &'static str,
    pub rule: Rule,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Namespace(capability) => write!(f, "{}", capability.as_str()),
            Rule::NamespaceAny(capabilities) => {
                let names: Vec<&str> = capabilities.iter().map(|c| c.as_str()).collect();
                write!(f, "{}", names.join(" or "))
            }
            Rule::NamespaceOrNode(capability, access) => write!(f, "{} or node: {}", capability.as_str(), access.as_str()),
            Rule::Node(access) => write!(f, "node: {}", access.as_str()),
            Rule::ThisNode(access) => write!(f, "node: {} or this node's identity", access.as_str()),
            Rule::AnyNode(access) => write!(f, "node: {} or a node identity", access.as_str()),
            Rule::Register => write!(f, "node: write, a join token or the node's identity"),
            Rule::Operator(access) => write!(f, "operator: {}", access.as_str()),
            Rule::Management => write!(f, "a management token"),
            Rule::Authenticated => write!(f, "a valid token"),
            Rule::Variable(capability) => write!(f, "variables: {}", capability.as_str()),
            Rule::VariableList => write!(f, "a valid token (variables it may list)"),
            Rule::Bootstrap => write!(f, "no token (one-time bootstrap)"),
        }
    }
}

/// Why a token may not do something (a 403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: this token lacks {needed}{}", namespace.as_ref().map(|ns| format!(" in namespace `{ns}`")).unwrap_or_default())]
pub struct Denied {
    pub needed: String,
    pub namespace: Option<String>,
}

/// The compiled rights of one token: what its policies add up to.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    management: bool,
    namespaces: Vec<CompiledNamespace>,
    node: Access,
    operator: Access,
    /// A join token: may register a node.
    join: bool,
    /// A node token: the node it may act for.
    node_identity: Option<String>,
}

#[derive(Clone, Debug)]
struct CompiledNamespace {
    glob: String,
    deny: bool,
    capabilities: u16,
    variables: Vec<(String, Vec<VariableCapability>)>,
}

impl Acl {
    pub fn management() -> Acl {
        Acl { management: true, ..Acl::default() }
    }

    pub fn is_management(&self) -> bool {
        self.management
    }

    /// What `token` may do, given the rules of the policies it holds.
    pub fn of_token<'p>(token: &AclToken, policies: impl IntoIterator<Item = &'p PolicyRules>) -> Acl {
        match token.token_type {
            TokenType::Management => Acl::management(),
            TokenType::Client => Acl::from_policies(policies),
            TokenType::Join => Acl::joiner(),
            TokenType::Node => Acl::for_node(token.node_id.as_deref().unwrap_or_default()),
        }
    }

    /// What a join token may do: register a node.
    pub fn joiner() -> Acl {
        Acl { join: true, ..Acl::default() }
    }

    /// What a node's identity may do: act for that node.
    pub fn for_node(node_id: &str) -> Acl {
        Acl { node_identity: Some(node_id.to_string()), ..Acl::default() }
    }

    pub fn is_join(&self) -> bool {
        self.join
    }

    /// The node a node token acts for.
    pub fn node_identity(&self) -> Option<&str> {
        self.node_identity.as_deref()
    }

    /// The rights of a client token holding `policies` (unknown policy names grant nothing).
    pub fn from_policies<'p>(policies: impl IntoIterator<Item = &'p PolicyRules>) -> Acl {
        let mut acl = Acl::default();
        for rules in policies {
            for (glob, rule) in &rules.namespaces {
                let capabilities = rule.capabilities.iter().fold(rule.policy.map_or(0, NamespacePolicy::grants), |bits, c| bits | c.bit());
                acl.namespaces.push(CompiledNamespace {
                    glob: glob.clone(),
                    deny: rule.policy == Some(NamespacePolicy::Deny),
                    capabilities,
                    variables: rule.variables.iter().map(|(path, caps)| (path.clone(), caps.clone())).collect(),
                });
            }
            acl.node = combine(acl.node, rules.node);
            acl.operator = combine(acl.operator, rules.operator);
        }
        acl
    }

    fn matching<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a CompiledNamespace> + 'a {
        self.namespaces.iter().filter(move |rule| glob_match(&rule.glob, namespace))
    }

    pub fn allows(&self, namespace: &str, capability: Capability) -> bool {
        if self.management {
            return true;
        }
        let mut granted = false;
        for rule in self.matching(namespace) {
            if rule.deny {
                return false;
            }
            granted |= rule.capabilities & capability.bit() != 0;
        }
        granted
    }

    pub fn allows_node(&self, access: Access) -> bool {
        self.management || allows_area(self.node, access)
    }

    pub fn allows_operator(&self, access: Access) -> bool {
        self.management || allows_area(self.operator, access)
    }

    /// Whether the token may `capability` the variable at `path` of `namespace`.
    pub fn allows_variable(&self, namespace: &str, path: &str, capability: VariableCapability) -> bool {
        if self.management {
            return true;
        }
        let mut granted = false;
        for rule in self.matching(namespace) {
            if rule.deny {
                return false;
            }
            for (_, capabilities) in rule.variables.iter().filter(|(glob, _)| glob_match(glob, path)) {
                if capabilities.contains(&VariableCapability::Deny) {
                    return false;
                }
                granted |= capabilities.contains(&capability);
            }
        }
        granted
    }

    /// Whether the token satisfies `rule` for a request in `namespace`.
    pub fn check(&self, rule: Rule, namespace: &str) -> Result<(), Denied> {
        self.check_about(rule, namespace, None)
    }

    /// [`Acl::check`] for a route about one thing its path names: a node (`/v1/node/{id}/…`) or a variable
    /// path (`/v1/var/{path}`).
    pub fn check_about(&self, rule: Rule, namespace: &str, subject: Option<&str>) -> Result<(), Denied> {
        let node = subject;
        let in_namespace = |needed: String| Denied { needed: format!("`{needed}`"), namespace: Some(namespace.to_string()) };
        match rule {
            Rule::Namespace(capability) if self.allows(namespace, capability) => Ok(()),
            Rule::Namespace(capability) => Err(in_namespace(capability.as_str().to_string())),
            Rule::NamespaceAny(capabilities) if capabilities.iter().any(|&c| self.allows(namespace, c)) => Ok(()),
            Rule::NamespaceAny(_) => Err(in_namespace(rule.to_string())),
            Rule::NamespaceOrNode(capability, access)
                if self.allows(namespace, capability) || self.allows_node(access) || self.node_identity.is_some() =>
            {
                Ok(())
            }
            Rule::NamespaceOrNode(..) => Err(in_namespace(rule.to_string())),
            Rule::Node(access) if self.allows_node(access) => Ok(()),
            Rule::ThisNode(access) if self.allows_node(access) || (node.is_some() && self.node_identity.as_deref() == node) => Ok(()),
            Rule::AnyNode(access) if self.allows_node(access) || self.node_identity.is_some() => Ok(()),
            Rule::Register if self.allows_node(Access::Write) || self.join || self.node_identity.is_some() => Ok(()),
            Rule::Operator(access) if self.allows_operator(access) => Ok(()),
            Rule::Management if self.management => Ok(()),
            Rule::Variable(capability) if subject.is_some_and(|path| self.allows_variable(namespace, path, capability)) => Ok(()),
            Rule::Variable(capability) => Err(Denied {
                needed: format!("`{}` on variable {}", capability.as_str(), subject.unwrap_or_default()),
                namespace: Some(namespace.to_string()),
            }),
            Rule::Authenticated | Rule::VariableList | Rule::Bootstrap => Ok(()),
            Rule::Node(_) | Rule::ThisNode(_) | Rule::AnyNode(_) | Rule::Register | Rule::Operator(_) | Rule::Management => {
                Err(Denied { needed: format!("`{rule}`"), namespace: None })
            }
        }
    }
}

/// Read < write; a deny anywhere wins.
fn combine(a: Access, b: Access) -> Access {
    if a == Access::Deny || b == Access::Deny { Access::Deny } else { a.max(b) }
}

fn allows_area(held: Access, needed: Access) -> bool {
    match (held, needed) {
        (Access::Deny, _) => false,
        (_, Access::None) => true,
        (Access::Write, Access::Read | Access::Write) => true,
        (Access::Read, Access::Read) => true,
        _ => false,
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else { return pattern == text };
    let Some(mut remaining) = text.strip_prefix(first) else { return false };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// The token secret of a request, from its `X-Davit-Token` header or else its `Authorization: Bearer` one.
pub fn request_secret(token_header: Option<&str>, authorization: Option<&str>) -> Option<String> {
    if let Some(value) = token_header {
        return Some(value.trim().to_string()).filter(|s| !s.is_empty());
    }
    let (scheme, secret) = authorization?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim().to_string()).filter(|s| !s.is_empty())
}

/// The namespace a request names with `?namespace=` in its query string, or `default`.
pub fn request_namespace(query: Option<&str>) -> String {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, value)| *name == "namespace" && !value.is_empty())
        .map_or(DEFAULT_NAMESPACE.to_string(), |(_, value)| value.to_string())
}

/// Whether `name` may name a policy or token: 1 to 128 of `A-Za-z0-9_-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses a policy document (YAML or JSON), reporting every problem at `file:line:col`.
pub fn parse_policy(source: &str, filename: &str) -> Result<PolicyRules, SpecErrors> {
    let document = Document {
        empty: "the policy is empty",
        empty_hint: "a policy is a mapping such as `namespaces: {default: {policy: read}}`; see `davit acl policy apply --help`",
        not_a_map: "a policy must be a mapping of `namespaces:`, `node:` and `operator:`",
        label: "the policy",
    };
    if source.len() > MAX_POLICY_BYTES {
        let error = crate::spec::SpecError {
            file: filename.to_string(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!("the policy is {} bytes; at most {MAX_POLICY_BYTES} are allowed", source.len()),
            hint: None,
        };
        return Err(SpecErrors(vec![error]));
    }
    parse_document(source, filename, &document, check_policy)
}

fn check_policy(rules: &PolicyRules, ctx: &Ctx) {
    let glob_ok = |glob: &str, extra: &[u8]| {
        !glob.is_empty()
            && glob.len() <= 256
            && glob.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_*".contains(&b) || extra.contains(&b))
    };
    if rules.namespaces.is_empty() && rules.node == Access::None && rules.operator == Access::None {
        ctx.report(
            "",
            "the policy grants nothing",
            Some("give it `namespaces:` rules, `node:` or `operator:`; e.g. `namespaces: {default: {policy: read}}`".to_string()),
        );
    }
    for (glob, rule) in &rules.namespaces {
        let path = format!("namespaces.{glob}");
        if !glob_ok(glob, b"") {
            ctx.report_key(
                &path,
                format!("`{glob}` is not a namespace name or glob"),
                Some("use letters, digits, `-`, `_` and `*`".to_string()),
            );
        }
        if rule.policy.is_none() && rule.capabilities.is_empty() && rule.variables.is_empty() {
            ctx.report(
                &path,
                format!("the rule for namespace `{glob}` grants nothing"),
                Some("add `policy: read|scale|write|deny` or `capabilities: [...]`".to_string()),
            );
        }
        if rule.policy == Some(NamespacePolicy::Deny) && !rule.capabilities.is_empty() {
            ctx.report(&format!("{path}.capabilities"), "`policy: deny` takes every capability away; these would never apply", None);
        }
        for (variable, capabilities) in &rule.variables {
            let var_path = format!("{path}.variables.{variable}");
            if !glob_ok(variable, b"/.") {
                ctx.report_key(
                    &var_path,
                    format!("`{variable}` is not a variable path or glob"),
                    Some("use letters, digits, `/`, `.`, `-`, `_` and `*`".to_string()),
                );
            }
            if capabilities.is_empty() {
                ctx.report(&var_path, "no capabilities given", Some("use some of read, write, list, or deny".to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(source: &str) -> Acl {
        Acl::from_policies([&parse_policy(source, "p.yaml").unwrap()])
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("team-*", "team-a"));
        assert!(!glob_match("team-*", "teams"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
        assert!(glob_match("*-prod", "web-prod"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("default", "default"));
        assert!(!glob_match("default", "default2"));
    }

    #[test]
    fn shorthands_and_capabilities_add_up_and_deny_wins() {
        let reader = acl("namespaces: {default: {policy: read, capabilities: [read-logs]}}\n");
        assert!(reader.allows("default", Capability::ReadJob));
        assert!(reader.allows("default", Capability::ReadLogs));
        assert!(!reader.allows("default", Capability::SubmitJob));
        assert!(!reader.allows("other", Capability::ReadJob));

        let rules = [
            parse_policy("namespaces: {'*': {policy: write}}\n", "a").unwrap(),
            parse_policy("namespaces: {secret: {policy: deny}}\nnode: read\n", "b").unwrap(),
        ];
        let combined = Acl::from_policies(&rules);
        assert!(combined.allows("team-a", Capability::AllocExec));
        assert!(!combined.allows("secret", Capability::ReadJob));
        assert!(combined.allows_node(Access::Read));
        assert!(!combined.allows_node(Access::Write));
        assert!(!combined.allows_operator(Access::Read));
        assert_eq!(
            combined.check(Rule::Namespace(Capability::ReadJob), "secret").unwrap_err().to_string(),
            "permission denied: this token lacks `read-job` in namespace `secret`"
        );
        assert_eq!(
            combined.check(Rule::Node(Access::Write), "default").unwrap_err().to_string(),
            "permission denied: this token lacks `node: write`"
        );
        assert!(Acl::management().check(Rule::Management, "x").is_ok());
        let node = Acl::for_node("n1");
        assert!(node.check_about(Rule::ThisNode(Access::Write), "default", Some("n1")).is_ok());
        assert!(node.check_about(Rule::ThisNode(Access::Write), "default", Some("n2")).is_err(), "only its own node");
        assert!(node.check(Rule::AnyNode(Access::Read), "default").is_ok() && node.check(Rule::Register, "default").is_ok());
        assert!(node.check(Rule::Node(Access::Read), "default").is_err(), "no reading of other nodes");
        assert!(node.check(Rule::Namespace(Capability::ReadJob), "default").is_err());
        let join = Acl::joiner();
        assert!(join.check(Rule::Register, "default").is_ok());
        assert!(
            join.check(Rule::ThisNode(Access::Read), "default").is_err() && join.check(Rule::AnyNode(Access::Read), "default").is_err()
        );
        assert!(Acl::default().check(Rule::Management, "x").is_err());
    }

    #[test]
    fn variables_by_path_glob() {
        let acl = acl("namespaces:\n  default:\n    variables:\n      'shop/*': [read, list]\n      'shop/secret': [deny]\n");
        assert!(acl.allows_variable("default", "shop/db", VariableCapability::Read));
        assert!(!acl.allows_variable("default", "shop/db", VariableCapability::Write));
        assert!(!acl.allows_variable("default", "shop/secret", VariableCapability::Read));
        assert!(!acl.allows_variable("default", "other", VariableCapability::Read));
        assert!(!acl.allows("default", Capability::ReadJob), "variables alone grant no job capability");
    }

    #[test]
    fn bad_policies_are_reported_at_their_position() {
        let errors = parse_policy("namespaces:\n  default:\n    policy: reed\n    capabilities: [alloc-exce]\nnode: writ\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(errors.contains("p.yaml:3:13"), "{errors}");
        assert!(errors.contains("p.yaml:4:20"), "{errors}");
        assert!(errors.contains("p.yaml:5:7"), "{errors}");
        let errors = parse_policy("namespaces:\n  'bad ns': {policy: read}\n", "p.yaml").unwrap_err().to_string();
        assert!(errors.contains("p.yaml:2:3: `bad ns` is not a namespace name or glob"), "{errors}");
        let errors = parse_policy("nodes: read\n", "p.yaml").unwrap_err().to_string();
        assert!(errors.contains("p.yaml:1:1"), "{errors}");
        assert!(parse_policy("", "p.yaml").unwrap_err().to_string().contains("the policy is empty"));
    }
}
