//! Fan-out of committed revisions to live watchers.
//!
//! Invariant: the hub's `revision` is the newest revision whose batches have been offered to every
//! registered subscriber. The writer thread commits first, then calls [`Hub::publish`]; a watch
//! registers with [`Hub::try_register`] only once it has replayed everything up to `revision`, both
//! under the same lock, so a watcher sees each revision exactly once.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::{Revision, StoreError, WatchBatch};

pub(crate) type WatchSender = mpsc::Sender<Result<WatchBatch, StoreError>>;

pub(crate) struct Hub {
    state: Mutex<HubState>,
}

struct HubState {
    revision: Revision,
    closed: bool,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    prefix: String,
    /// The first revision this subscriber wants (it may lie in the future).
    from: Revision,
    sender: WatchSender,
}

/// What [`Hub::try_register`] did.
pub(crate) enum Registration {
    /// The subscriber now receives every revision ≥ its `from`.
    Registered,
    /// Revisions `next..=revision` were published before the subscriber caught up: replay them first.
    Behind,
    /// The store shut down.
    Closed,
}

impl Hub {
    pub(crate) fn new(revision: Revision) -> Hub {
        Hub { state: Mutex::new(HubState { revision, closed: false, subscribers: Vec::new() }) }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // The hub's state stays consistent even if a holder panicked: every update is a single assignment or push.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest revision published to watchers (every revision up to it is durable).
    pub(crate) fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// Registers a live subscriber for revisions ≥ `next`, provided every revision before `next`
    /// that was published has been replayed to it already.
    pub(crate) fn try_register(&self, prefix: &str, next: Revision, sender: &WatchSender) -> Registration {
        let mut state = self.lock();
        if state.closed {
            return Registration::Closed;
        }
        if next <= state.revision {
            return Registration::Behind;
        }
        state.subscribers.push(Subscriber { prefix: prefix.to_owned(), from: next, sender: sender.clone() });
        Registration::Registered
    }

    /// Offers the batches of newly committed revisions (ascending, each holding all events of its
    /// revision) to the subscribers, dropping any whose channel is closed or full, then advances
    /// the hub's revision to `revision`. Never blocks on a subscriber.
    pub(crate) fn publish(&self, revision: Revision, batches: &[WatchBatch]) {
        let mut state = self.lock();
        for batch in batches {
            state.subscribers.retain(|subscriber| offer(subscriber, batch));
        }
        state.revision = revision;
    }

    /// Ends every watch: their streams end with `None` once drained.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.subscribers.clear();
    }
}

/// Sends the part of `batch` the subscriber wants; returns whether the subscriber stays registered.
fn offer(subscriber: &Subscriber, batch: &WatchBatch) -> bool {
    if subscriber.sender.is_closed() {
        return false;
    }
    if batch.revision < subscriber.from {
        return true;
    }
    let events: Vec<_> = batch.events.iter().filter(|event| event.kv.key.starts_with(&subscriber.prefix)).cloned().collect();
    if events.is_empty() {
        return true;
    }
    // The last slot of the channel is kept for the lag notice, so a dropped watcher learns why.
    if subscriber.sender.capacity() <= 1 {
        let _ = subscriber.sender.try_send(Err(StoreError::WatchLagged));
        return false;
    }
    subscriber.sender.try_send(Ok(WatchBatch { revision: batch.revision, events })).is_ok()
}
