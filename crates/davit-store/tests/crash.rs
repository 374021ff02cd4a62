//! Crash safety: every write acknowledged before a `kill -9` is present after reopening.
//!
//! The test binary re-executes itself as the writer child (`crash_child_writer` with
//! [`CHILD_ENV`] set), so no extra binary is needed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use davit_store::{Op, RedbStore, Store, Txn};

/// When set (to a store path), `crash_child_writer` acts as the writer child.
const CHILD_ENV: &str = "DAVIT_STORE_CRASH_CHILD_STORE";
const ACKS_BEFORE_KILL: usize = 300;
const CHILD_WRITERS: usize = 8;

fn value_of(writer: usize, index: usize) -> Vec<u8> {
    format!("value {writer}/{index}").into_bytes()
}

/// The writer child: writes keys from several tasks forever, printing `ack <writer> <index>`
/// after each acknowledged txn. Without [`CHILD_ENV`] it is not the child and does nothing.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(path.as_ref()).expect("open"));
        let mut tasks = Vec::new();
        for writer in 0..CHILD_WRITERS {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for index in 0.. {
                    let op = Op::Put { key: format!("crash/{writer}/{index}"), value: value_of(writer, index), lease: None };
                    store.txn(Txn { success: vec![op], ..Txn::default() }).await.expect("txn");
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "ack {writer} {index}").expect("stdout");
                    stdout.flush().expect("flush");
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "crash_child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = BTreeSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        let Some(rest) = line.strip_prefix("ack ") else { continue };
        let (writer, index) = rest.split_once(' ').expect("ack line");
        acked.insert((writer.parse::<usize>().expect("writer"), index.parse::<usize>().expect("index")));
        if acked.len() >= ACKS_BEFORE_KILL {
            break;
        }
    }
    assert_eq!(acked.len(), ACKS_BEFORE_KILL, "the child stopped before acknowledging enough writes");
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no clean shutdown.
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = RedbStore::open(&path).expect("reopen after the crash");
        for (writer, index) in &acked {
            let kv = store.get(&format!("crash/{writer}/{index}")).await.expect("get").unwrap_or_else(|| {
                panic!("acknowledged key crash/{writer}/{index} is missing after the crash");
            });
            assert_eq!(kv.value, value_of(*writer, *index));
        }
        let range = store.range("crash/").await.expect("range");
        assert!(range.kvs.len() >= acked.len());
        assert_eq!(range.revision, range.kvs.len() as u64, "one revision per write, none lost or half-applied");
        // The store keeps working after recovery.
        let next = store.txn(Txn { success: vec![Op::Delete { key: "crash/0/0".into() }], ..Txn::default() }).await.expect("txn");
        assert_eq!(next.revision, range.revision + 1);
    });
}
