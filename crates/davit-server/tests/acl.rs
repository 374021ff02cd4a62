//! Access control of the server API: every route of `davit_server::routes()` (the list the router is built
//! from) refuses requests without a token (401) and with a token that lacks the route's capability (403),
//! and lets through a token that holds exactly that capability. Then tokens, policies, bootstrap, expiry,
//! revocation, the anonymous policy, secrets at rest and the audit log.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use davit_api::acl::{Access, Rule};
use serde_json::{Value, json};

use common::TestServer;

async fn bootstrap(server: &TestServer) -> String {
    let (status, body) = server.request("POST", "/v1/acl/bootstrap", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "management");
    body["secret_id"].as_str().unwrap().to_string()
}

async fn apply_policy(server: &TestServer, management: &str, name: &str, source: &str) {
    let body = json!({"source": source}).to_string();
    let (status, answer) = server.request_as(Some(management), "PUT", &format!("/v1/acl/policy/{name}"), &body).await;
    assert_eq!(status, 200, "policy {name}: {answer}");
}

async fn client_token(server: &TestServer, management: &str, policies: &[&str], ttl: Option<&str>) -> Value {
    let mut request = json!({"name": "test", "type": "client", "policies": policies});
    if let Some(ttl) = ttl {
        request["ttl"] = json!(ttl);
    }
    let (status, body) = server.request_as(Some(management), "POST", "/v1/acl/tokens", &request.to_string()).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn ok_json(server: &TestServer, token: &str, method: &str, path: &str, body: &str) -> Value {
    let (status, answer) = server.request_as(Some(token), method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {answer}");
    answer
}

/// The path of a route pattern with every `{param}` filled in: names are the policy the weak token holds,
/// and for namespaces the namespace it holds capabilities in.
fn concrete(path: &str) -> String {
    let name = if path.starts_with("/v1/namespace/") { "other" } else { "elsewhere" };
    path.split('/')
        .map(|segment| match segment {
            "{version}" => "0",
            "{name}" => name,
            _ if segment.starts_with('{') => "x",
            _ => segment,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The status of a request; the body is not read (the event stream never ends).
async fn status_of(server: &TestServer, token: Option<&str>, method: &str, path: &str) -> u16 {
    let url = format!("{}{path}", server.base);
    let mut request = server.http.request(method.parse().unwrap(), url).timeout(Duration::from_secs(20));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}")).status().as_u16()
}

/// The policy document that grants exactly what `rule` needs.
fn policy_for(rule: Rule) -> Option<String> {
    match rule {
        Rule::Namespace(capability) => Some(format!("namespaces: {{default: {{capabilities: [{}]}}}}\n", capability.as_str())),
        Rule::NamespaceAny(capabilities) => Some(format!("namespaces: {{default: {{capabilities: [{}]}}}}\n", capabilities[0].as_str())),
        Rule::NamespaceOrNode(capability, _) => Some(format!("namespaces: {{default: {{capabilities: [{}]}}}}\n", capability.as_str())),
        Rule::Node(Access::Read) | Rule::ThisNode(Access::Read) | Rule::AnyNode(Access::Read) => Some("node: read\n".to_string()),
        Rule::Node(_) | Rule::ThisNode(_) | Rule::AnyNode(_) | Rule::Register => Some("node: write\n".to_string()),
        Rule::Operator(Access::Read) => Some("operator: read\n".to_string()),
        Rule::Operator(_) => Some("operator: write\n".to_string()),
        Rule::Variable(capability) => Some(format!("namespaces: {{default: {{variables: {{'*': [{}]}}}}}}\n", capability.as_str())),
        Rule::Management | Rule::Authenticated | Rule::VariableList | Rule::Bootstrap => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_and_exactly_its_capability() {
    let server = common::start_acl().await;
    let management = bootstrap(&server).await;
    // A token that may do everything, but only in another namespace.
    apply_policy(&server, &management, "elsewhere", "namespaces: {other: {policy: write}}\n").await;
    let weak = client_token(&server, &management, &["elsewhere"], None).await["secret_id"].as_str().unwrap().to_string();
    // One token per distinct rule, holding just what it needs.
    let mut fitting: HashMap<String, String> = HashMap::new();
    let routes = davit_server::routes();
    assert!(routes.len() >= 40, "the route list is the router's: {}", routes.len());
    for route in &routes {
        let Some(source) = policy_for(route.rule) else { continue };
        let name = format!("p{}", fitting.len());
        if fitting.contains_key(&source) {
            continue;
        }
        apply_policy(&server, &management, &name, &source).await;
        let secret = client_token(&server, &management, &[&name], None).await["secret_id"].as_str().unwrap().to_string();
        fitting.insert(source, secret);
    }

    for route in &routes {
        let path = concrete(route.path);
        let what = format!("{} {} ({})", route.method, route.path, route.rule);
        let anonymous = status_of(&server, None, route.method, &path).await;
        let weak_status = status_of(&server, Some(&weak), route.method, &path).await;
        match route.rule {
            Rule::Bootstrap => {
                assert_eq!(anonymous, 400, "{what}: bootstrap works once, and was done");
                assert_eq!(weak_status, 400, "{what}");
            }
            Rule::Authenticated | Rule::VariableList => {
                assert_eq!(anonymous, 401, "{what} without a token");
                assert!(![401, 403].contains(&weak_status), "{what}: any valid token may, got {weak_status}");
            }
            rule => {
                assert_eq!(anonymous, 401, "{what} without a token");
                assert_eq!(weak_status, 403, "{what} with a token lacking the capability");
                let token = match policy_for(rule) {
                    Some(source) => fitting[&source].clone(),
                    None => management.clone(),
                };
                let allowed = status_of(&server, Some(&token), route.method, &path).await;
                assert!(![401, 403].contains(&allowed), "{what}: a token with exactly the capability was refused ({allowed})");
            }
        }
    }
    // Bad or missing tokens get the same answer, with no detail.
    let (status, body) = server.request_as(Some("not-a-token"), "GET", "/v1/jobs", "").await;
    assert_eq!((status, body["message"].as_str().unwrap()), (401, "token not found or expired"));
    let (status, body) = server.request("GET", "/v1/jobs", "").await;
    assert_eq!((status, body["message"].as_str().unwrap()), (401, "token not found or expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_policies_expiry_revocation_and_the_anonymous_policy() {
    let server = common::start_acl().await;
    let management = bootstrap(&server).await;
    let (status, body) = server.request("POST", "/v1/acl/bootstrap", "").await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("already done"), "{body}");

    // A bad policy is refused at file:line:col and nothing is stored.
    let bad = json!({"source": "namespaces:\n  default:\n    policy: reed\n", "filename": "reader.yaml"}).to_string();
    let (status, body) = server.request_as(Some(&management), "PUT", "/v1/acl/policy/reader", &bad).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!((body["spec_errors"][0]["file"].as_str(), body["spec_errors"][0]["line"].as_u64()), (Some("reader.yaml"), Some(3)));
    assert_eq!(server.request_as(Some(&management), "GET", "/v1/acl/policy/reader", "").await.0, 404);

    apply_policy(&server, &management, "reader", "namespaces:\n  default: {policy: read}\n  secret: {policy: deny}\n").await;
    let reader = client_token(&server, &management, &["reader"], None).await;
    let reader_secret = reader["secret_id"].as_str().unwrap();
    assert_eq!(server.request_as(Some(reader_secret), "GET", "/v1/jobs", "").await.0, 200);
    let (status, body) = server.request_as(Some(reader_secret), "POST", "/v1/jobs", "name: x\n").await;
    assert_eq!(status, 403);
    assert_eq!(body["message"], "permission denied: this token lacks `submit-job` in namespace `default`");
    assert_eq!(server.request_as(Some(reader_secret), "GET", "/v1/jobs?namespace=secret", "").await.0, 403, "deny wins");
    // A client token sees its own policies, not the others'.
    let (_, mine) = server.request_as(Some(reader_secret), "GET", "/v1/acl/policies", "").await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (status, me) = server.request_as(Some(reader_secret), "GET", "/v1/acl/token/self", "").await;
    assert_eq!((status, me["token"]["accessor_id"].clone()), (200, reader["accessor_id"].clone()));
    assert!(me.to_string().find(reader_secret).is_none(), "the secret is never shown again");
    // Tokens for unknown policies, and client tokens without policies, are refused.
    let (status, body) = server.request_as(Some(&management), "POST", "/v1/acl/tokens", r#"{"policies": ["nope"]}"#).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("no ACL policy named `nope`"), "{body}");
    assert_eq!(server.request_as(Some(&management), "POST", "/v1/acl/tokens", r#"{"type": "client"}"#).await.0, 400);

    // Revocation takes effect at once.
    let accessor = reader["accessor_id"].as_str().unwrap();
    assert_eq!(server.request_as(Some(&management), "DELETE", &format!("/v1/acl/token/{accessor}"), "").await.0, 200);
    assert_eq!(server.request_as(Some(reader_secret), "GET", "/v1/jobs", "").await.0, 401);

    // A token with a TTL stops working when it expires.
    let short = client_token(&server, &management, &["reader"], Some("1s")).await;
    let short_secret = short["secret_id"].as_str().unwrap();
    assert_eq!(server.request_as(Some(short_secret), "GET", "/v1/jobs", "").await.0, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.request_as(Some(short_secret), "GET", "/v1/jobs", "").await.0 == 200 {
        assert!(tokio::time::Instant::now() < deadline, "the 1s token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.request_as(Some(short_secret), "GET", "/v1/jobs", "").await.0, 401);

    // The anonymous policy applies to requests without a token.
    assert_eq!(server.request("GET", "/v1/jobs", "").await.0, 401);
    apply_policy(&server, &management, "anonymous", "namespaces: {default: {policy: read}}\n").await;
    assert_eq!(server.request("GET", "/v1/jobs", "").await.0, 200);
    assert_eq!(server.request("POST", "/v1/jobs", "name: x\n").await.0, 403);

    // A join token cannot take over a node registered without an identity.
    let node = serde_json::to_string(&common::node("plain", 1024)).unwrap();
    assert_eq!(server.request_as(Some(&management), "POST", "/v1/nodes/register", &node).await.0, 200);
    let join =
        ok_json(&server, &management, "POST", "/v1/acl/tokens", r#"{"type": "join"}"#).await["secret_id"].as_str().unwrap().to_string();
    let (status, body) = server.request_as(Some(&join), "POST", "/v1/nodes/register", &node).await;
    assert_eq!(status, 403);
    assert!(body["message"].as_str().unwrap().contains("cannot take it over"), "{body}");

    // Tokens and policies survive a restart.
    let server = server.restart().await;
    assert_eq!(server.request_as(Some(&management), "GET", "/v1/acl/tokens", "").await.0, 200);
    assert_eq!(server.request_as(Some(short_secret), "GET", "/v1/jobs", "").await.0, 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_stored_only_as_hashes_and_writes_are_audited() {
    let server = common::start_acl().await;
    let management = bootstrap(&server).await;
    apply_policy(&server, &management, "reader", "namespaces: {default: {policy: read}}\n").await;
    let created = client_token(&server, &management, &["reader"], None).await;
    let secret = created["secret_id"].as_str().unwrap().to_string();
    // A refused write is audited too.
    assert_eq!(server.request_as(Some(&secret), "DELETE", "/v1/job/web", "").await.0, 403);
    let dir = server.dir().to_path_buf();

    let store = std::fs::read(dir.join("state.redb")).unwrap();
    let contains = |needle: &str| store.windows(needle.len()).any(|window| window == needle.as_bytes());
    assert!(!contains(&management) && !contains(&secret), "a token secret is in the store file in clear");
    assert!(contains(created["accessor_id"].as_str().unwrap()), "the token is in the store");

    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let lines: Vec<Value> = audit.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(!audit.contains(&management) && !audit.contains(&secret), "the audit log holds no secret");
    let refused = lines.iter().find(|line| line["route"] == "/v1/job/{name}").expect("the refused DELETE is audited");
    assert_eq!((refused["method"].as_str(), refused["status"].as_u64()), (Some("DELETE"), Some(403)));
    let token_create = lines.iter().find(|line| line["route"] == "/v1/acl/tokens").unwrap();
    assert_eq!(token_create["status"], 200);
    assert_eq!(token_create["namespace"], "default");
    assert!(token_create["accessor_id"].as_str().unwrap().len() >= 32);
    assert!(lines.iter().all(|line| line["method"] != "GET"), "reads are not audited");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.join("audit.log")).unwrap().permissions().mode() & 0o777, 0o600);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_routes_say_when_acls_are_off() {
    let server = common::start().await;
    let (status, body) = server.request("POST", "/v1/acl/bootstrap", "").await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("start it with `--acl`"), "{body}");
    assert_eq!(server.request("GET", "/v1/jobs", "").await.0, 200, "without ACLs no token is needed");
    server.shutdown().await;
}
