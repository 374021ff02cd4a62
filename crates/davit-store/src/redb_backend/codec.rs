//! Byte encodings of the records the redb backend stores.
//!
//! A key record is `create_revision, mod_revision, version, lease` (four little-endian `u64`s, lease 0 = none)
//! followed by the value bytes. A change-log record is a sequence of events, each
//! `kind: u8, key_len: u32, key, value_len: u32, value, create_revision, mod_revision, version, lease`.
//! Lease id 0 is never granted, so it can stand for "no lease".

use crate::{EventKind, KeyValue, LeaseId, Revision, StoreError, WatchEvent};

/// The stored part of a key's record (everything but the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredValue {
    pub(crate) value: Vec<u8>,
    pub(crate) create_revision: Revision,
    pub(crate) mod_revision: Revision,
    pub(crate) version: u64,
    pub(crate) lease: Option<LeaseId>,
}

impl StoredValue {
    pub(crate) fn into_key_value(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

const KEY_RECORD_HEADER: usize = 32;

pub(crate) fn encode_stored_value(stored: &StoredValue) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(KEY_RECORD_HEADER + stored.value.len());
    bytes.extend_from_slice(&stored.create_revision.to_le_bytes());
    bytes.extend_from_slice(&stored.mod_revision.to_le_bytes());
    bytes.extend_from_slice(&stored.version.to_le_bytes());
    bytes.extend_from_slice(&stored.lease.unwrap_or(0).to_le_bytes());
    bytes.extend_from_slice(&stored.value);
    bytes
}

pub(crate) fn decode_stored_value(bytes: &[u8]) -> Result<StoredValue, StoreError> {
    let mut reader = Reader { bytes };
    let create_revision = reader.u64()?;
    let mod_revision = reader.u64()?;
    let version = reader.u64()?;
    let lease = reader.u64()?;
    Ok(StoredValue { value: reader.bytes.to_vec(), create_revision, mod_revision, version, lease: (lease != 0).then_some(lease) })
}

pub(crate) fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for event in events {
        bytes.push(match event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        let kv = &event.kv;
        // Keys and values are bounded far below 4 GiB by redb itself.
        bytes.extend_from_slice(&(kv.key.len() as u32).to_le_bytes());
        bytes.extend_from_slice(kv.key.as_bytes());
        bytes.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&kv.value);
        bytes.extend_from_slice(&kv.create_revision.to_le_bytes());
        bytes.extend_from_slice(&kv.mod_revision.to_le_bytes());
        bytes.extend_from_slice(&kv.version.to_le_bytes());
        bytes.extend_from_slice(&kv.lease.unwrap_or(0).to_le_bytes());
    }
    bytes
}

pub(crate) fn decode_events(bytes: &[u8]) -> Result<Vec<WatchEvent>, StoreError> {
    let mut reader = Reader { bytes };
    let mut events = Vec::new();
    while !reader.bytes.is_empty() {
        let kind = match reader.take(1)?[0] {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            other => return Err(corrupt(&format!("unknown event kind {other}"))),
        };
        let key_len = reader.u32()? as usize;
        let key = String::from_utf8(reader.take(key_len)?.to_vec()).map_err(|_| corrupt("event key is not UTF-8"))?;
        let value_len = reader.u32()? as usize;
        let value = reader.take(value_len)?.to_vec();
        let create_revision = reader.u64()?;
        let mod_revision = reader.u64()?;
        let version = reader.u64()?;
        let lease = reader.u64()?;
        events.push(WatchEvent {
            kind,
            kv: KeyValue { key, value, create_revision, mod_revision, version, lease: (lease != 0).then_some(lease) },
        });
    }
    Ok(events)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt record in store: {what}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < len {
            return Err(corrupt("record is truncated"));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut array = [0; 4];
        array.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(array))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut array = [0; 8];
        array.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_value_round_trips() {
        let stored = StoredValue { value: b"hello".to_vec(), create_revision: 3, mod_revision: 7, version: 2, lease: Some(9) };
        assert_eq!(decode_stored_value(&encode_stored_value(&stored)).unwrap(), stored);
        let without_lease = StoredValue { lease: None, value: Vec::new(), ..stored };
        assert_eq!(decode_stored_value(&encode_stored_value(&without_lease)).unwrap(), without_lease);
    }

    #[test]
    fn events_round_trip_and_truncation_is_an_error() {
        let events = vec![
            WatchEvent {
                kind: EventKind::Put,
                kv: KeyValue { key: "a/b".into(), value: vec![1, 2, 3], create_revision: 1, mod_revision: 4, version: 2, lease: None },
            },
            WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue { key: "ü".into(), value: Vec::new(), create_revision: 0, mod_revision: 4, version: 0, lease: Some(5) },
            },
        ];
        let bytes = encode_events(&events);
        assert_eq!(decode_events(&bytes).unwrap(), events);
        assert!(matches!(decode_events(&bytes[..bytes.len() - 1]), Err(StoreError::Backend(_))));
        assert!(matches!(decode_stored_value(&[0; 31]), Err(StoreError::Backend(_))));
    }
}
