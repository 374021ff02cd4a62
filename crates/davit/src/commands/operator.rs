//! `davit operator keyring ls|rotate|remove`, `gc`, `servers` and `snapshot save|restore|inspect`.

use std::path::Path;
use std::sync::Arc;

use davit_client::Client;
use davit_server::leader::{LEADER_KEY, LeaderInfo, MEMBERS, SERVERS_PREFIX};
use davit_store::Store;
use davit_store::snapshot::{self, Snapshot};

use super::header;
use crate::Failure;
use crate::cli::{EtcdArgs, KeyringCommand, OperatorCommand, OutputFormat, SnapshotCommand, StoreKind};
use crate::output::{json, table, time};

pub async fn operator(client: &Client, command: OperatorCommand) -> Result<(), Failure> {
    match command {
        OperatorCommand::Keyring(KeyringCommand::Ls { output }) => {
            let keys = client.keyring().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&keys));
                return Ok(());
            }
            let mut rows = vec![header(&["KEY", "ACTIVE", "VARIABLES", "CREATED"])];
            rows.extend(keys.iter().map(|key| {
                vec![
                    key.id.clone(),
                    if key.active { "yes".to_string() } else { String::new() },
                    key.variables.to_string(),
                    time(key.create_time),
                ]
            }));
            print!("{}", table(&rows));
            Ok(())
        }
        OperatorCommand::Keyring(KeyringCommand::Rotate) => {
            let answer = client.rotate_keyring().await?;
            println!(
                "==> key {} is active; variables are re-encrypted with it in the background",
                answer["active"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        OperatorCommand::Gc { force } => {
            let report = client.gc(force).await?;
            println!(
                "==> collected {} job(s), {} job version(s), {} evaluation(s), {} allocation(s)",
                report.jobs, report.versions, report.evals, report.allocs
            );
            Ok(())
        }
        OperatorCommand::Servers { output } => {
            let servers = client.operator_servers().await?;
            if output.format == OutputFormat::Json {
                println!("{}", json(&servers));
                return Ok(());
            }
            let mut rows = vec![header(&["NAME", "ADDRESS", "LEADER", "LEADS SINCE", "STARTED"])];
            rows.extend(servers.iter().map(|server| {
                vec![
                    server.name.clone(),
                    server.addr.clone(),
                    if server.leader { "yes".to_string() } else { String::new() },
                    server.leader_since.map(time).unwrap_or_default(),
                    time(server.started),
                ]
            }));
            print!("{}", table(&rows));
            Ok(())
        }
        OperatorCommand::Snapshot(SnapshotCommand::Save { file }) => {
            let data = client.snapshot().await?;
            let taken = snapshot::decode(&data).map_err(|error| Failure::internal(format!("the server sent a bad snapshot: {error}")))?;
            davit_tls::write_atomic(&file, &data, 0o600).map_err(|error| Failure::user(format!("{}: {error}", file.display())))?;
            println!(
                "==> saved {} keys at revision {} to {} ({} bytes)",
                taken.header.keys,
                taken.header.revision,
                file.display(),
                data.len()
            );
            Ok(())
        }
        OperatorCommand::Snapshot(SnapshotCommand::Inspect { file, output }) => {
            let taken = read_snapshot(&file)?;
            let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
            for (key, _) in &taken.items {
                *kinds.entry(key.split('/').next().unwrap_or_default()).or_default() += 1;
            }
            if output.format == OutputFormat::Json {
                let value = serde_json::json!({
                    "revision": taken.header.revision,
                    "created": taken.header.created,
                    "backend": taken.header.backend,
                    "keys": taken.header.keys,
                    "kinds": kinds,
                });
                println!("{}", json(&value));
                return Ok(());
            }
            println!("Revision = {}", taken.header.revision);
            println!("Taken    = {}", time(taken.header.created));
            println!("Backend  = {}", taken.header.backend);
            println!("Keys     = {}", taken.header.keys);
            let mut rows = vec![header(&["KIND", "KEYS"])];
            rows.extend(kinds.iter().map(|(kind, count)| vec![kind.to_string(), count.to_string()]));
            print!("{}", table(&rows));
            Ok(())
        }
        OperatorCommand::Snapshot(SnapshotCommand::Restore { file, store, data_dir, etcd, force }) => {
            let taken = read_snapshot(&file)?;
            let (target, hold) = restore_target(store, &data_dir, &etcd).await?;
            let restored = restore_into(target.as_ref(), taken, force).await;
            if let Some(hold) = hold {
                hold.release().await;
            }
            restored
        }
        OperatorCommand::Keyring(KeyringCommand::Remove { id }) => {
            client.remove_key(&id).await?;
            println!("==> key {id} removed");
            Ok(())
        }
    }
}

/// Restores `taken` into `target` unless it holds a cluster's state already (and `force` is off).
async fn restore_into(target: &dyn Store, taken: Snapshot, force: bool) -> Result<(), Failure> {
    let existing = target.range("").await.map_err(store_failure)?;
    let state = existing.kvs.iter().filter(|kv| !kv.key.starts_with(SERVERS_PREFIX) && kv.key != "cluster/id").count();
    if state > 0 && !force {
        return Err(Failure::user(format!(
            "the store already holds a cluster's state ({state} keys); nothing was changed\n  hint: --force replaces it with the snapshot"
        )));
    }
    let (keys, revision, backend) = (taken.header.keys, taken.header.revision, taken.header.backend.clone());
    snapshot::restore(target, taken, &[SERVERS_PREFIX]).await.map_err(store_failure)?;
    println!(
        "==> restored {keys} keys (taken at revision {revision} on {backend}) into {}; start the servers on it",
        target.backend_name()
    );
    Ok(())
}

fn read_snapshot(file: &Path) -> Result<Snapshot, Failure> {
    let data = std::fs::read(file).map_err(|error| Failure::user(format!("{}: {error}", file.display())))?;
    snapshot::decode(&data).map_err(|error| Failure::user(format!("{}: {error}", file.display())))
}

fn store_failure(error: davit_store::StoreError) -> Failure {
    Failure::user(format!("the store failed: {error}"))
}

/// The store to restore into; refused while a server uses it (redb: the file is locked; etcd: a server runs).
/// On etcd the restore holds the leader key meanwhile (under a lease of its own, kept alive while the returned
/// guard lives), so no server starts to lead on a half-restored store.
async fn restore_target(kind: StoreKind, data_dir: &Path, etcd: &EtcdArgs) -> Result<(Arc<dyn Store>, Option<Hold>), Failure> {
    match kind {
        StoreKind::Redb => {
            std::fs::create_dir_all(data_dir).map_err(|error| Failure::user(format!("{}: {error}", data_dir.display())))?;
            let file = data_dir.join("state.redb");
            let store = davit_store::RedbStore::open(&file).map_err(|error| {
                Failure::user(format!("cannot open {}: {error}\n  hint: stop the server that uses it first", file.display()))
            })?;
            Ok((Arc::new(store), None))
        }
        StoreKind::Etcd => {
            let store: Arc<dyn Store> = crate::run::etcd_store(etcd).await?;
            let running = store.range(SERVERS_PREFIX).await.map_err(store_failure)?;
            let names: Vec<String> = running
                .kvs
                .iter()
                .filter_map(|kv| match kv.key.as_str() {
                    LEADER_KEY => serde_json::from_slice::<LeaderInfo>(&kv.value).ok().map(|leader| leader.name),
                    key => key.strip_prefix(MEMBERS).map(str::to_string),
                })
                .collect();
            if !names.is_empty() {
                return Err(Failure::user(format!(
                    "davit servers run on this etcd prefix ({}): stop every server first, then restore",
                    names.join(", ")
                )));
            }
            let hold = Hold::take(Arc::clone(&store)).await?;
            Ok((store, Some(hold)))
        }
    }
}

/// The leader key, held by a restore under a lease it keeps alive; dropped: the lease is revoked.
struct Hold {
    store: Arc<dyn Store>,
    lease: davit_store::LeaseId,
    keeper: tokio::task::JoinHandle<()>,
}

impl Hold {
    async fn take(store: Arc<dyn Store>) -> Result<Hold, Failure> {
        const TTL: std::time::Duration = std::time::Duration::from_secs(10);
        let lease = store.grant_lease(TTL).await.map_err(store_failure)?;
        let me = LeaderInfo { name: "snapshot restore".to_string(), addr: String::new(), since: crate::now_millis() };
        let take = davit_store::Txn {
            compares: vec![davit_store::Compare::Missing(LEADER_KEY.to_string())],
            success: vec![davit_store::Op::Put {
                key: LEADER_KEY.to_string(),
                value: serde_json::to_vec(&me).unwrap_or_default(),
                lease: Some(lease),
            }],
            failure: Vec::new(),
        };
        if !store.txn(take).await.map_err(store_failure)?.succeeded {
            let _ = store.revoke_lease(lease).await;
            return Err(Failure::user("a davit server started to lead on this etcd prefix: stop every server first, then restore"));
        }
        let keeper = tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                loop {
                    tokio::time::sleep(TTL / 3).await;
                    if let Err(error) = store.keep_alive(lease).await {
                        tracing::warn!(%error, "keeping the restore's hold on the leader key failed");
                    }
                }
            }
        });
        Ok(Hold { store, lease, keeper })
    }
}

impl Hold {
    /// Lets go of the leader key now (else it goes a TTL after the keeper stops).
    async fn release(self) {
        let _ = self.store.revoke_lease(self.lease).await;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}
