//! Fan-out of committed revisions to live watchers, and the recent history that watches replay.
//!
//! Invariant: the hub's `revision` is the newest revision whose batches have been offered to every
//! registered subscriber and appended to the history. The writer thread commits first, then calls
//! [`Hub::publish`]; a watch replays the history ([`Hub::replay`]) and registers with [`Hub::try_register`]
//! only once it has replayed everything up to `revision`, both under the same lock, so a watcher sees each
//! revision exactly once.
//!
//! The history lives in memory only: the newest revisions, at most `history_revisions` of them and at most
//! `history_bytes` of keys and values (always at least the newest one). Keeping it in the file doubled what
//! each write stored (every value once in the key table and once more in a change log) for a history
//! that only this process's watchers can use.

use std::collections::VecDeque;
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
    /// Batches of the revisions after `compacted` up to `revision`, ascending.
    history: VecDeque<WatchBatch>,
    /// Bytes of keys and values in `history`.
    history_bytes: usize,
    /// Every revision up to this one is no longer kept.
    compacted: Revision,
    limits: HistoryLimits,
}

/// How much history the hub keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HistoryLimits {
    pub(crate) revisions: u64,
    pub(crate) bytes: usize,
}

/// How much one [`Hub::replay`] step copies at most (always at least one revision).
const REPLAY_REVISIONS: usize = 256;
const REPLAY_BYTES: usize = 4 << 20;

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
    /// A hub whose history starts after `revision` (nothing before it can be replayed).
    pub(crate) fn new(revision: Revision, limits: HistoryLimits) -> Hub {
        Hub {
            state: Mutex::new(HubState {
                revision,
                closed: false,
                subscribers: Vec::new(),
                history: VecDeque::new(),
                history_bytes: 0,
                compacted: revision,
                limits,
            }),
        }
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

    /// The batches of the kept revisions from `next` on that touch `prefix` (a bounded step of them), and
    /// the next revision to ask for; [`StoreError::Compacted`] if revision `next` is no longer kept.
    pub(crate) fn replay(&self, prefix: &str, next: Revision) -> Result<(Vec<WatchBatch>, Revision), StoreError> {
        let state = self.lock();
        if next > state.revision {
            return Ok((Vec::new(), next));
        }
        if next <= state.compacted {
            return Err(StoreError::Compacted { requested: next, oldest: state.compacted + 1 });
        }
        let start = state.history.partition_point(|batch| batch.revision < next);
        let (mut batches, mut bytes, mut last) = (Vec::new(), 0, next - 1);
        for batch in state.history.range(start..).take(REPLAY_REVISIONS) {
            if bytes >= REPLAY_BYTES {
                break;
            }
            bytes += batch_bytes(batch);
            last = batch.revision;
            let events: Vec<_> = batch.events.iter().filter(|event| event.kv.key.starts_with(prefix)).cloned().collect();
            if !events.is_empty() {
                batches.push(WatchBatch { revision: batch.revision, events });
            }
        }
        Ok((batches, last + 1))
    }

    /// Offers the batches of newly committed revisions (ascending, each holding all events of its
    /// revision) to the subscribers, dropping any whose channel is closed or full, appends them to the
    /// history (forgetting the oldest beyond its limits), then advances the hub's revision to
    /// `revision`. Never blocks on a subscriber.
    pub(crate) fn publish(&self, revision: Revision, batches: Vec<WatchBatch>) {
        let mut state = self.lock();
        for batch in batches {
            state.subscribers.retain(|subscriber| offer(subscriber, &batch));
            state.history_bytes += batch_bytes(&batch);
            state.history.push_back(batch);
        }
        state.revision = revision;
        let limits = state.limits;
        while state.history.len() > 1 && (state.history.len() as u64 > limits.revisions || state.history_bytes > limits.bytes) {
            let Some(oldest) = state.history.pop_front() else { break };
            state.history_bytes -= batch_bytes(&oldest);
            state.compacted = oldest.revision;
        }
    }

    /// Ends every watch: their streams end with `None` once drained.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.subscribers.clear();
    }
}

/// What a batch counts against the history's byte limit.
fn batch_bytes(batch: &WatchBatch) -> usize {
    batch.events.iter().map(|event| event.kv.key.len() + event.kv.value.len()).sum()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, KeyValue, WatchEvent};

    fn batch(revision: Revision, key: &str, value_len: usize) -> WatchBatch {
        let kv = KeyValue {
            key: key.into(),
            value: vec![b'x'; value_len],
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        };
        WatchBatch { revision, events: vec![WatchEvent { kind: EventKind::Put, kv }] }
    }

    fn revisions(batches: &[WatchBatch]) -> Vec<Revision> {
        batches.iter().map(|batch| batch.revision).collect()
    }

    #[test]
    fn history_keeps_the_newest_revisions_within_the_byte_limit() {
        let hub = Hub::new(10, HistoryLimits { revisions: 100, bytes: 1000 });
        assert!(matches!(hub.replay("", 10), Err(StoreError::Compacted { requested: 10, oldest: 11 })));
        for revision in 11..=20 {
            hub.publish(revision, vec![batch(revision, "a/k", 299)]);
        }
        // 300 bytes a revision: the newest three fit in 1000 bytes.
        assert!(matches!(hub.replay("", 17), Err(StoreError::Compacted { requested: 17, oldest: 18 })));
        let (batches, next) = hub.replay("a/", 18).expect("kept");
        assert_eq!((revisions(&batches), next), (vec![18, 19, 20], 21));
        assert_eq!(hub.replay("b/", 18).expect("kept"), (Vec::new(), 21), "other prefixes replay nothing");
        assert_eq!(hub.replay("", 21).expect("future"), (Vec::new(), 21));
        // A revision bigger than the limit is still kept, alone.
        hub.publish(21, vec![batch(21, "a/big", 5000)]);
        assert_eq!(revisions(&hub.replay("", 21).expect("kept").0), vec![21]);
        assert!(matches!(hub.replay("", 20), Err(StoreError::Compacted { oldest: 21, .. })));
    }

    #[test]
    fn replay_goes_in_bounded_steps() {
        let hub = Hub::new(0, HistoryLimits { revisions: 1000, bytes: usize::MAX });
        for revision in 1..=600 {
            hub.publish(revision, vec![batch(revision, "k", 1)]);
        }
        let (first, next) = hub.replay("", 1).expect("kept");
        assert_eq!((first.len(), next), (REPLAY_REVISIONS, REPLAY_REVISIONS as Revision + 1));
        let mut seen = revisions(&first);
        let mut next = next;
        while next <= 600 {
            let (batches, after) = hub.replay("", next).expect("kept");
            seen.extend(revisions(&batches));
            next = after;
        }
        assert_eq!(seen, (1..=600).collect::<Vec<_>>());
    }
}
