//! The etcd store against a secured etcd: TLS with client certificates (a client without one, or trusting
//! another CA, is refused with an error), and users with an auth token that expires (the store authenticates
//! again and carries on).

use std::path::Path;
use std::time::Duration;

use davit_store::etcd_testing::{EtcdCluster, EtcdSetup, etcd_available};
use davit_store::{EtcdOptions, EtcdStore, EtcdTls, Op, Store, Txn};
use davit_tls::{Ca, Role};

fn put(key: &str, value: &str) -> Txn {
    Txn { success: vec![Op::Put { key: key.to_string(), value: value.as_bytes().to_vec(), lease: None }], ..Txn::default() }
}

/// A certificate and key for `role` signed by `ca`, written to `<dir>/<name>.pem` and `<name>-key.pem`.
fn issue(ca: &Ca, role: Role, dir: &Path, name: &str) -> (String, String, std::path::PathBuf, std::path::PathBuf) {
    let (issued, key) = ca.issue_with_key(&role, Duration::from_secs(3600)).unwrap();
    let (cert_file, key_file) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    davit_tls::write_atomic(&cert_file, &issued.cert_pem, 0o644).unwrap();
    davit_tls::write_atomic(&key_file, &key, 0o600).unwrap();
    (issued.cert_pem, key, cert_file, key_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_refusals() {
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate(Duration::from_secs(3600)).unwrap();
    let (ca_file, _) = ca.write(dir.path()).unwrap();
    let (_, _, member_cert, member_key) = issue(&ca, Role::Server { extra: Vec::new() }, dir.path(), "member");
    let (client_cert, client_key, _, _) = issue(&ca, Role::Cli, dir.path(), "client");
    let setup = EtcdSetup { tls: Some((ca_file, member_cert, member_key)), extra: Vec::new() };
    let cluster = tokio::task::spawn_blocking(move || EtcdCluster::start_with(3, &setup)).await.unwrap();
    assert!(cluster.endpoints().iter().all(|url| url.starts_with("https://")));
    let options = |tls: Option<EtcdTls>| EtcdOptions {
        endpoints: cluster.endpoints(),
        tls,
        request_timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    };

    let tls = EtcdTls { ca_cert: ca.cert_pem().to_string(), identity: Some((client_cert, client_key)) };
    let store = EtcdStore::connect(options(Some(tls.clone()))).await.unwrap();
    let written = store.txn(put("k", "over tls")).await.unwrap();
    assert!(written.succeeded);
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"over tls");
    let mut watch = store.watch("k", written.revision).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(batch.revision, written.revision);

    // No client certificate, or trusting another CA: nothing is read or written, and the error says why.
    let anonymous = EtcdTls { identity: None, ..tls.clone() };
    let stranger = EtcdTls { ca_cert: Ca::generate(Duration::from_secs(3600)).unwrap().cert_pem().to_string(), ..tls.clone() };
    for (what, tls) in [("no client certificate", anonymous), ("another CA", stranger)] {
        let refused = match EtcdStore::connect(options(Some(tls))).await {
            Ok(store) => store.get("k").await.map(|_| ()),
            Err(error) => Err(error),
        };
        assert!(refused.is_err(), "{what}: etcd answered");
    }
    // TLS options with a plain endpoint are refused before anything is sent.
    let plain = EtcdOptions { endpoints: vec!["http://127.0.0.1:2379".to_string()], tls: Some(tls), ..EtcdOptions::default() };
    let error = EtcdStore::connect(plain).await.err().expect("refused");
    assert!(error.to_string().contains("https://"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_auth_token_is_renewed() {
    if !etcd_available() {
        return;
    }
    // Simple tokens that expire after a second without use.
    let setup = EtcdSetup { tls: None, extra: ["--auth-token", "simple", "--auth-token-ttl", "1"].map(str::to_string).into() };
    let cluster = tokio::task::spawn_blocking(move || EtcdCluster::start_with(1, &setup)).await.unwrap();
    let mut admin = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    admin.user_add("root", "secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let options = EtcdOptions {
        endpoints: cluster.endpoints(),
        user: Some(("root".to_string(), "secret".to_string())),
        request_timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(options.clone()).await.unwrap();
    assert!(store.txn(put("k", "1")).await.unwrap().succeeded);
    // A plain client that authenticated at the same time, to show the token did lapse.
    let plain = etcd_client::ConnectOptions::new().with_user("root", "secret");
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), Some(plain)).await.unwrap();
    // The token lapses while the store is idle; the next write and read authenticate again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lapsed = raw.get("anything", None).await.expect_err("the plain client's token lapsed");
    assert!(lapsed.to_string().contains("invalid auth token"), "{lapsed}");
    assert!(store.txn(put("k", "2")).await.unwrap().succeeded);
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"2");
    // A wrong password is an error at connect.
    let wrong = EtcdOptions { user: Some(("root".to_string(), "wrong".to_string())), ..options };
    assert!(EtcdStore::connect(wrong).await.is_err());
}
