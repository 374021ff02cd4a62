//! Snapshots: every key of a store at one revision in a file, to back a cluster up and to restore it into
//! a store of either backend (which moves a cluster from redb to etcd).
//!
//! The format: the line `davit-snapshot 1`, a JSON header line ([`SnapshotHeader`]), then for each key its
//! length (u32, big endian), the key, the value's length (u32) and the value, and last the SHA-256 of
//! everything before it. A file that was cut short or changed is refused as a whole.

use sha2::{Digest, Sha256};

use crate::{Op, Store, StoreError, Txn, TxnLimits};

const MAGIC: &[u8] = b"davit-snapshot 1\n";
/// Keys and values of a snapshot are at most this long (etcd's request limit is 1.5 MiB).
const MAX_ITEM: usize = 64 << 20;
/// Transactions of a restore into a backend without limits (one huge one would hold the whole store).
const RESTORE_BATCH: TxnLimits = TxnLimits { ops: 10_000, bytes: 64 << 20 };

/// What a snapshot's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The store revision the keys were read at.
    pub revision: u64,
    /// When it was taken (Unix milliseconds).
    pub created: u64,
    /// The backend it was taken from (`redb`, `etcd`).
    pub backend: String,
    pub keys: u64,
}

/// A decoded snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub header: SnapshotHeader,
    /// Sorted by key.
    pub items: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a davit snapshot (it does not start with `davit-snapshot 1`)")]
    NotASnapshot,
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Encodes `items` (key, value) read at `header.revision`.
pub fn encode(header: &SnapshotHeader, items: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size: usize = items.iter().map(|(key, value)| 8 + key.len() + value.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 256 + size + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(
        format!(
            "{{\"revision\":{},\"created\":{},\"backend\":\"{}\",\"keys\":{}}}\n",
            header.revision,
            header.created,
            header.backend.escape_default(),
            items.len()
        )
        .as_bytes(),
    );
    for (key, value) in items {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Decodes and checks a snapshot.
pub fn decode(data: &[u8]) -> Result<Snapshot, SnapshotError> {
    let body = data.strip_prefix(MAGIC).ok_or(SnapshotError::NotASnapshot)?;
    let damaged = |what: &str| SnapshotError::Damaged(what.to_string());
    if body.len() < 32 {
        return Err(damaged("it is cut short"));
    }
    let (content, digest) = data.split_at(data.len() - 32);
    if Sha256::digest(content).as_slice() != digest {
        return Err(damaged("its checksum does not match (cut short or changed)"));
    }
    let body = &content[MAGIC.len()..];
    let line_end = body.iter().position(|&byte| byte == b'\n').ok_or_else(|| damaged("no header line"))?;
    let header = parse_header(std::str::from_utf8(&body[..line_end]).map_err(|_| damaged("the header is not UTF-8"))?)
        .ok_or_else(|| damaged("the header line does not parse"))?;
    let mut rest = &body[line_end + 1..];
    let mut items = Vec::new();
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, SnapshotError> {
        let (length, after) = rest.split_first_chunk::<4>().ok_or_else(|| damaged("a record is cut short"))?;
        let length = u32::from_be_bytes(*length) as usize;
        if length > MAX_ITEM || length > after.len() {
            return Err(damaged("a record is longer than the file"));
        }
        let (item, after) = after.split_at(length);
        *rest = after;
        Ok(item.to_vec())
    };
    while !rest.is_empty() {
        let key = String::from_utf8(take(&mut rest)?).map_err(|_| damaged("a key is not UTF-8"))?;
        let value = take(&mut rest)?;
        items.push((key, value));
    }
    if items.len() as u64 != header.keys {
        return Err(damaged("the header's key count does not match the records"));
    }
    Ok(Snapshot { header, items })
}

/// The header's four fields, written by [`encode`] (no JSON crate in this one).
fn parse_header(line: &str) -> Option<SnapshotHeader> {
    let inner = line.strip_prefix('{')?.strip_suffix('}')?;
    let (mut revision, mut created, mut backend, mut keys) = (None, None, None, None);
    for field in inner.split(',') {
        let (name, value) = field.split_once(':')?;
        match name {
            "\"revision\"" => revision = value.parse().ok(),
            "\"created\"" => created = value.parse().ok(),
            "\"backend\"" => backend = Some(value.strip_prefix('"')?.strip_suffix('"')?.to_string()),
            "\"keys\"" => keys = value.parse().ok(),
            _ => {}
        }
    }
    Some(SnapshotHeader { revision: revision?, created: created?, backend: backend?, keys: keys? })
}

/// Reads every key of `store` except those starting with one of `skip` (at one revision).
pub async fn take(store: &dyn Store, skip: &[&str], created: u64) -> Result<Snapshot, StoreError> {
    let read = store.range("").await?;
    let items: Vec<(String, Vec<u8>)> =
        read.kvs.into_iter().filter(|kv| !skip.iter().any(|prefix| kv.key.starts_with(prefix))).map(|kv| (kv.key, kv.value)).collect();
    let header = SnapshotHeader { revision: read.revision, created, backend: store.backend_name().to_string(), keys: items.len() as u64 };
    Ok(Snapshot { header, items })
}

/// Writes the snapshot's keys into `store`, after deleting every key there except those starting with one of
/// `keep` (which are neither deleted nor written). In several transactions when the backend limits their size (so a failure half-way leaves a part:
/// restore again).
pub async fn restore(store: &dyn Store, snapshot: Snapshot, keep: &[&str]) -> Result<u64, StoreError> {
    let existing = store.range("").await?;
    let mut ops: Vec<Op> = existing
        .kvs
        .into_iter()
        .filter(|kv| !keep.iter().any(|prefix| kv.key.starts_with(prefix)))
        .filter(|kv| snapshot.items.binary_search_by(|(key, _)| key.as_str().cmp(&kv.key)).is_err())
        .map(|kv| Op::Delete { key: kv.key })
        .collect();
    // Keys under `keep` are the target's own: a snapshot's (a crafted one's) are not written.
    ops.extend(
        snapshot.items.into_iter().filter(|(key, _)| !keep.iter().any(|prefix| key.starts_with(prefix))).map(|(key, value)| Op::Put {
            key,
            value,
            lease: None,
        }),
    );
    let mut revision = 0;
    for txn in split_writes(ops, store.max_txn_size().unwrap_or(RESTORE_BATCH)) {
        revision = store.txn(txn).await?.revision;
    }
    Ok(revision)
}

/// Splits unconditional writes into transactions within `limits` (in order; one op larger than the byte
/// limit goes alone, and the backend refuses it).
pub fn split_writes(ops: Vec<Op>, limits: TxnLimits) -> Vec<Txn> {
    let mut parts = Vec::new();
    let mut part = Txn::default();
    let mut bytes = 0;
    for op in ops {
        let size = op.size();
        if !part.success.is_empty() && (part.success.len() == limits.ops || bytes + size > limits.bytes) {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
        bytes += size;
        part.success.push(op);
    }
    if !part.success.is_empty() {
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SnapshotHeader, Vec<(String, Vec<u8>)>) {
        let items = vec![("a".to_string(), b"1".to_vec()), ("jobs/web".to_string(), vec![0, 255, 10]), ("z".to_string(), Vec::new())];
        (SnapshotHeader { revision: 42, created: 7, backend: "redb".to_string(), keys: 3 }, items)
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let (header, items) = sample();
        let decoded = decode(&encode(&header, &items)).unwrap();
        assert_eq!(decoded, Snapshot { header, items });
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused() {
        let (header, items) = sample();
        let data = encode(&header, &items);
        assert!(matches!(decode(b"{\"jobs\": []}"), Err(SnapshotError::NotASnapshot)));
        for cut in [MAGIC.len(), MAGIC.len() + 10, data.len() - 1] {
            assert!(matches!(decode(&data[..cut]), Err(SnapshotError::Damaged(_))), "cut at {cut}");
        }
        let mut changed = data.clone();
        let middle = changed.len() / 2;
        changed[middle] ^= 1;
        assert!(matches!(decode(&changed), Err(SnapshotError::Damaged(_))));
    }

    #[test]
    fn writes_are_split_within_the_limits_in_order() {
        let put = |key: &str, size: usize| Op::Put { key: key.to_string(), value: vec![0; size], lease: None };
        let ops = vec![put("a", 9), put("b", 9), put("c", 9), put("d", 30), put("e", 1)];
        let parts = split_writes(ops, TxnLimits { ops: 2, bytes: 25 });
        let keys: Vec<Vec<String>> = parts
            .iter()
            .map(|txn| txn.success.iter().map(|op| if let Op::Put { key, .. } = op { key.clone() } else { String::new() }).collect())
            .collect();
        assert_eq!(keys, [vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
        assert!(split_writes(Vec::new(), TxnLimits { ops: 2, bytes: 25 }).is_empty());
    }
}
