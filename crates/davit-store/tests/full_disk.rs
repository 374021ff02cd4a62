//! A full disk fails the writes that do not fit, nothing else: once there is room again the store takes writes
//! without a restart (redb refuses every write after an I/O error until its database is reopened, which the
//! writer does by itself), and nothing committed before is lost.

use davit_store::{Op, RedbStore, Store, Txn};

fn put(key: &str, value: Vec<u8>) -> Txn {
    Txn { compares: Vec::new(), success: vec![Op::Put { key: key.into(), value, lease: None }], failure: Vec::new() }
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status.lines().any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_while_the_disk_is_full_and_succeed_again_once_there_is_room() {
    if !is_root() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "this test mounts a tmpfs: CI must run it as root");
        eprintln!("skipping: mounting a tmpfs needs root");
        return;
    }
    let tmpfs = Tmpfs(tempfile::tempdir().unwrap());
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"]).arg(tmpfs.0.path()).status().unwrap();
    assert!(mounted.success(), "mounting a tmpfs");
    let store = RedbStore::open(&tmpfs.0.path().join("store.redb")).unwrap();
    store.txn(put("kept", b"before".to_vec())).await.unwrap();

    // Fill the disk.
    let filler = tmpfs.0.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
    }
    let big = vec![7u8; 1 << 20];
    let mut refused = 0;
    for attempt in 0..3 {
        if store.txn(put(&format!("big/{attempt}"), big.clone())).await.is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0, "a full disk refuses a 1 MiB write");

    // Room again: writes go through, and what was committed is there.
    std::fs::remove_file(&filler).unwrap();
    let mut written = None;
    for attempt in 0..20 {
        match store.txn(put("after", b"room again".to_vec())).await {
            Ok(response) => {
                written = Some(response);
                break;
            }
            Err(error) => eprintln!("attempt {attempt}: {error}"),
        }
    }
    assert!(written.is_some(), "the store takes writes again once the disk has room");
    assert_eq!(store.get("kept").await.unwrap().unwrap().value, b"before");
    assert_eq!(store.get("after").await.unwrap().unwrap().value, b"room again");
    store.txn(put("big/again", big)).await.expect("a big write fits again");
}
