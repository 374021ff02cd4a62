//! Transaction throughput of the redb backend: txns/s for 1 and for 64 concurrent writers.
//!
//! `cargo run --release -p davit-store --example store_bench [-- <seconds per run>]`
//!
//! Every txn is a durable (fsynced) single-key put; with group commit, concurrent writers share
//! one commit, so 64 writers should reach many times the single writer's rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use davit_store::{Op, RedbStore, Store, Txn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args().nth(1).map(|arg| arg.parse()).transpose()?.unwrap_or(3.0);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    println!("store file in {} ({seconds} s per run)", dir.path().display());
    runtime.block_on(async {
        let mut single = 0.0;
        for writers in [1, 64] {
            let path = dir.path().join(format!("bench-{writers}.redb"));
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path)?);
            let rate = run(&store, writers, Duration::from_secs_f64(seconds)).await?;
            if writers == 1 {
                single = rate;
                println!("{writers:>3} writer : {rate:>9.0} txns/s");
            } else {
                println!("{writers:>3} writers: {rate:>9.0} txns/s ({:.1}x the single writer)", rate / single);
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}

async fn run(store: &Arc<dyn Store>, writers: usize, duration: Duration) -> Result<f64, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            while started.elapsed() < duration {
                let op = Op::Put { key: format!("bench/{writer}/{}", count % 1000), value: vec![0; 128], lease: None };
                store.txn(Txn { success: vec![op], ..Txn::default() }).await?;
                count += 1;
            }
            Ok::<_, davit_store::StoreError>(count)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
