//! Byte encodings of the records the redb backend stores.
//!
//! A key record is `create_revision, mod_revision, version, lease` (four little-endian `u64`s, lease 0 = none)
//! followed by the value bytes. Lease id 0 is never granted, so it can stand for "no lease".

use crate::{KeyValue, LeaseId, Revision, StoreError};

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
    let mut stored = decode_header(bytes)?;
    stored.value = bytes[KEY_RECORD_HEADER..].to_vec();
    Ok(stored)
}

/// A key record without its value (left empty): what a write needs to know of the key it replaces.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<StoredValue, StoreError> {
    let mut reader = Reader { bytes };
    let create_revision = reader.u64()?;
    let mod_revision = reader.u64()?;
    let version = reader.u64()?;
    let lease = reader.u64()?;
    Ok(StoredValue { value: Vec::new(), create_revision, mod_revision, version, lease: (lease != 0).then_some(lease) })
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
    fn the_header_alone_leaves_the_value_out_and_truncation_is_an_error() {
        let stored = StoredValue { value: b"hello".to_vec(), create_revision: 3, mod_revision: 7, version: 2, lease: None };
        assert_eq!(decode_header(&encode_stored_value(&stored)).unwrap(), StoredValue { value: Vec::new(), ..stored });
        assert!(matches!(decode_stored_value(&[0; 31]), Err(StoreError::Backend(_))));
    }
}
