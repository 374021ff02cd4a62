//! Fencing: a store whose every write holds only while a key (the leader's) is unchanged.
//!
//! A server that leads writes through a [`FencedStore`] made from the revision at which it wrote the leader
//! key. Each transaction gets one more compare, `mod_revision(key) == revision`: once another server has taken
//! the key (the lease behind it expired while this one was paused, say), every write of the deposed leader
//! fails with [`StoreError::Fenced`] and writes nothing, whether or not it has noticed yet. Transactions
//! through it may not have a failure branch (it would be applied when the fence fails).

use std::sync::Arc;
use std::time::Duration;

use crate::{BoxFuture, Compare, KeyValue, LeaseId, RangeResponse, Revision, Store, StoreError, Txn, TxnLimits, TxnResponse, Watch};

/// A [`Store`] whose writes hold only while `key` is at `revision`. Reads, watches and leases pass through.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    key: String,
    revision: Revision,
    /// Set once a write found the fence changed.
    deposed: tokio::sync::watch::Sender<bool>,
}

impl FencedStore {
    pub fn new(inner: Arc<dyn Store>, key: impl Into<String>, revision: Revision) -> FencedStore {
        FencedStore { inner, key: key.into(), revision, deposed: tokio::sync::watch::channel(false).0 }
    }

    /// Turns true once a write failed with [`StoreError::Fenced`]: the holder must stop.
    pub fn deposed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.deposed.subscribe()
    }

    async fn fenced_txn(&self, mut txn: Txn) -> Result<TxnResponse, StoreError> {
        if !txn.failure.is_empty() {
            return Err(StoreError::Backend("a fenced store takes no transaction with a failure branch".to_string()));
        }
        let compares = txn.compares.len();
        txn.compares.push(Compare::ModRevision(self.key.clone(), self.revision));
        let response = self.inner.txn(txn).await?;
        if !response.succeeded {
            // The caller's compares or the fence: the fence is checked apart (only when no compare of the
            // caller's could explain it would this read be wasted).
            let holds = self.inner.get(&self.key).await?.is_some_and(|kv| kv.mod_revision == self.revision);
            if !holds || compares == 0 {
                self.deposed.send_replace(true);
                return Err(StoreError::Fenced(self.key.clone()));
            }
        }
        Ok(response)
    }
}

impl Store for FencedStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<KeyValue>, StoreError>> {
        self.inner.get(key)
    }

    fn range(&self, prefix: &str) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        self.inner.range(prefix)
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        Box::pin(self.fenced_txn(txn))
    }

    fn watch(&self, prefix: &str, from_revision: Revision) -> BoxFuture<'_, Result<Watch, StoreError>> {
        self.inner.watch(prefix, from_revision)
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.inner.current_revision()
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        self.inner.grant_lease(ttl)
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.keep_alive(lease)
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.revoke_lease(lease)
    }

    fn max_txn_size(&self) -> Option<TxnLimits> {
        self.inner.max_txn_size()
    }
}
