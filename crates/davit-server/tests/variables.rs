//! Variables through the HTTP API: sealed at rest, check-and-set, path-glob access control, namespaces, and
//! keyring rotation (variables written before it still read after it, and after the old key is removed).

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::TestServer;

const SECRET: &str = "postgres://shop:hunter2-s3cret@db";

async fn ok(server: &TestServer, token: &str, method: &str, path: &str, body: &str) -> Value {
    let (status, answer) = server.request_as(Some(token), method, path, body).await;
    assert_eq!(status, 200, "{method} {path} {body}: {answer:#}");
    answer
}

async fn token_for(server: &TestServer, management: &str, name: &str, policy: &str) -> String {
    ok(server, management, "PUT", &format!("/v1/acl/policy/{name}"), &json!({"source": policy}).to_string()).await;
    let created = ok(server, management, "POST", "/v1/acl/tokens", &json!({"policies": [name]}).to_string()).await;
    created["secret_id"].as_str().unwrap().to_string()
}

fn file_contains(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_are_sealed_checked_and_set_and_guarded_by_path() {
    let server = common::start_acl().await;
    let management = server.request("POST", "/v1/acl/bootstrap", "").await.1["secret_id"].as_str().unwrap().to_string();
    let item = |value: &str| json!({"items": {"url": value, "user": "shop"}}).to_string();

    let written = ok(&server, &management, "PUT", "/v1/var/shop/db", &item(SECRET)).await;
    let index = written["modify_index"].as_u64().unwrap();
    let read = ok(&server, &management, "GET", "/v1/var/shop/db", "").await;
    assert_eq!((read["items"]["url"].as_str(), read["modify_index"].as_u64()), (Some(SECRET), Some(index)));
    assert!(!file_contains(&server.dir().join("state.redb"), "hunter2-s3cret"), "the store holds the value in clear");
    assert!(!file_contains(&server.dir().join("audit.log"), "hunter2-s3cret"), "the audit log holds the value");

    // Check-and-set: a stale index loses, the current one wins; 0 means "create only".
    let (status, body) = server.request_as(Some(&management), "PUT", "/v1/var/shop/db?cas=0", &item("x")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains(&format!("is at index {index}")), "{body}");
    let rewritten = ok(&server, &management, "PUT", &format!("/v1/var/shop/db?cas={index}"), &item(SECRET)).await;
    assert!(rewritten["modify_index"].as_u64().unwrap() > index);
    ok(&server, &management, "PUT", "/v1/var/other/key", &item("other")).await;

    // Bad input names what is wrong.
    assert_eq!(server.request_as(Some(&management), "PUT", "/v1/var/bad%20path", &item("x")).await.0, 400);
    assert_eq!(server.request_as(Some(&management), "PUT", "/v1/var/shop/empty", r#"{"items": {}}"#).await.0, 400);

    // A token may read and list shop/*, nothing else, and write nothing.
    let reader = token_for(&server, &management, "shop-reader", "namespaces: {default: {variables: {'shop/*': [read, list]}}}\n").await;
    assert_eq!(ok(&server, &reader, "GET", "/v1/var/shop/db", "").await["items"]["url"], SECRET);
    let (status, body) = server.request_as(Some(&reader), "PUT", "/v1/var/shop/db", &item("x")).await;
    assert_eq!(status, 403);
    assert_eq!(body["message"], "permission denied: this token lacks `write` on variable shop/db in namespace `default`");
    assert_eq!(server.request_as(Some(&reader), "GET", "/v1/var/other/key", "").await.0, 403);
    let listed = ok(&server, &reader, "GET", "/v1/vars", "").await;
    let paths: Vec<&str> = listed.as_array().unwrap().iter().map(|meta| meta["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["shop/db"]);
    assert!(!listed.to_string().contains("hunter2"), "lists carry no values");

    // A job whose template reads a variable the submitting token may not read is refused.
    let submitter =
        token_for(&server, &management, "submitter", "namespaces: {default: {policy: write, variables: {'shop/*': [read]}}}\n").await;
    let job = |path: &str| {
        format!(
            "name: t\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {{command: /bin/true}}\n        templates: [{{data: '{{{{ var \"{path}\" \"url\" }}}}', destination: secrets/x}}]\n"
        )
    };
    let (status, body) = server.request_as(Some(&submitter), "POST", "/v1/jobs", &job("other/key")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("reads variable other/key"), "{body}");
    assert_eq!(server.request_as(Some(&submitter), "POST", "/v1/jobs", &job("shop/db")).await.0, 200);

    // Variables live in a namespace.
    ok(&server, &management, "PUT", "/v1/namespace/team-b", "{}").await;
    assert_eq!(server.request_as(Some(&management), "GET", "/v1/var/shop/db?namespace=team-b", "").await.0, 404);
    ok(&server, &management, "DELETE", "/v1/var/other/key", "").await;
    assert_eq!(server.request_as(Some(&management), "GET", "/v1/var/other/key", "").await.0, 404);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_survive_keyring_rotation_removal_of_the_old_key_and_a_restart() {
    let server = common::start().await;
    let token = "unused-without-acls";
    ok(&server, token, "PUT", "/v1/var/shop/db", &json!({"items": {"url": SECRET}}).to_string()).await;
    let keys = ok(&server, token, "GET", "/v1/operator/keyring", "").await;
    let old = keys[0]["id"].as_str().unwrap().to_string();
    assert_eq!((keys.as_array().unwrap().len(), keys[0]["variables"].as_u64()), (1, Some(1)));

    let active = ok(&server, token, "POST", "/v1/operator/keyring/rotate", "").await["active"].as_str().unwrap().to_string();
    assert_ne!(active, old);
    // The re-sealing runs in the background: follow the keyring until the old key seals nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys = ok(&server, token, "GET", "/v1/operator/keyring", "").await;
        let old_count = keys.as_array().unwrap().iter().find(|key| key["id"] == old.as_str()).unwrap()["variables"].as_u64();
        if old_count == Some(0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "variables were never re-sealed: {keys:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.request("DELETE", &format!("/v1/operator/keyring/{active}"), "").await.0, 409, "the active key stays");
    ok(&server, token, "DELETE", &format!("/v1/operator/keyring/{old}"), "").await;
    assert_eq!(ok(&server, token, "GET", "/v1/var/shop/db", "").await["items"]["url"], SECRET);

    let server = server.restart().await;
    assert_eq!(ok(&server, token, "GET", "/v1/var/shop/db", "").await["items"]["url"], SECRET);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(server.dir().join("keyring.json")).unwrap().permissions().mode() & 0o777, 0o600);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_env_values_never_show_through_the_api() {
    let server = common::start_acl().await;
    let management = server.request("POST", "/v1/acl/bootstrap", "").await.1["secret_id"].as_str().unwrap().to_string();
    let reader = token_for(&server, &management, "reader", "namespaces: {default: {policy: read}}\n").await;
    let agent = token_for(&server, &management, "agent", "node: write\n").await;
    let spec = |value: &str| {
        format!(
            "name: s\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {{command: /bin/true}}\n        env: {{PLAIN: shown}}\n        secret_env: {{DB_PASS: {value}}}\n"
        )
    };
    ok(&server, &management, "POST", "/v1/jobs", &spec("hunter2-env-one")).await;
    ok(&server, &management, "POST", "/v1/jobs", &spec("hunter2-env-two")).await;

    for path in ["/v1/job/s", "/v1/job/s/versions", "/v1/job/s/status", "/v1/job/s/version/0", "/v1/job/s/diff?from=0&to=1"] {
        let answer = ok(&server, &reader, "GET", path, "").await.to_string();
        assert!(!answer.contains("hunter2"), "{path} shows a secret value: {answer}");
        assert!(answer.contains("<redacted>"), "{path}: {answer}");
    }
    let diff = ok(&server, &reader, "GET", "/v1/job/s/diff?from=0&to=1", "").await;
    assert_eq!(diff["changes"].as_array().unwrap().len(), 1, "the change shows, its values do not: {diff}");
    // The agents that run the task get the value.
    let version = ok(&server, &agent, "GET", "/v1/job/s/version/1", "").await;
    assert_eq!(version["spec"]["groups"][0]["tasks"][0]["secret_env"]["DB_PASS"], "hunter2-env-two");

    // Nor does the event stream: read it until both versions passed by.
    let mut stream =
        server.http.get(format!("{}/v1/event/stream?topic=JobVersion", server.base)).bearer_auth(&management).send().await.unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.matches("\"JobVersion\"").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk()).await.expect("the event stream stalled").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("hunter2") && seen.contains("<redacted>"), "{seen}");
    server.shutdown().await;
}
