//! The keyring that encrypts variables at rest with XChaCha20-Poly1305, kept in `<data dir>/keyring.json`
//! (mode 0600, replaced atomically).
//!
//! Every variable is sealed with the active key, a random 192-bit nonce and its store key as associated
//! data (a sealed value copied to another path does not open). `rotate` adds a key and makes it the active
//! one; the server then re-seals the variables still under older keys in the background; a key can be
//! removed once no variable uses it. A lost keyring means lost variables: back it up with the store.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("reading or writing the keyring {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the keyring {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("no key {0} in the keyring")]
    UnknownKey(String),
    #[error("key {0} is the active key; rotate first")]
    Active(String),
    #[error("a sealed value did not open with key {0} (damaged, or moved from another path)")]
    Open(String),
}

/// A value sealed with one of the keyring's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub key_id: String,
    /// 24 bytes, hex.
    pub nonce: String,
    /// Ciphertext and tag, hex.
    pub ciphertext: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyringFile {
    active: String,
    keys: Vec<StoredKey>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredKey {
    id: String,
    /// 32 bytes, hex.
    key: String,
    create_time: u64,
}

pub struct Keyring {
    /// `None`: kept in memory only (tests).
    path: Option<PathBuf>,
    file: RwLock<KeyringFile>,
}

impl Keyring {
    /// Opens the keyring at `path`, creating it with one new key if it does not exist.
    pub fn open(path: &Path, now: u64) -> Result<Keyring, KeyringError> {
        let file = match std::fs::read(path) {
            Ok(bytes) => {
                let file: KeyringFile = serde_json::from_slice(&bytes)
                    .map_err(|error| KeyringError::Damaged { path: path.to_path_buf(), reason: error.to_string() })?;
                if !file.keys.iter().any(|key| key.id == file.active) {
                    return Err(KeyringError::Damaged { path: path.to_path_buf(), reason: "the active key is missing".to_string() });
                }
                file
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = new_key(now);
                let file = KeyringFile { active: key.id.clone(), keys: vec![key] };
                write(path, &file)?;
                file
            }
            Err(source) => return Err(KeyringError::Io { path: path.to_path_buf(), source }),
        };
        Ok(Keyring { path: Some(path.to_path_buf()), file: RwLock::new(file) })
    }

    /// A keyring that lives in memory only.
    pub fn in_memory(now: u64) -> Keyring {
        let key = new_key(now);
        Keyring { path: None, file: RwLock::new(KeyringFile { active: key.id.clone(), keys: vec![key] }) }
    }

    pub fn active_id(&self) -> String {
        self.file.read().expect("keyring lock").active.clone()
    }

    /// A 32-byte key for `purpose`, derived from the oldest key of the keyring (HMAC-SHA256 of the purpose): the
    /// same on every server that shares the keyring, secret as the keyring is, and never stored.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let file = self.file.read().expect("keyring lock");
        let oldest = file.keys.iter().min_by_key(|key| (key.create_time, key.id.clone())).expect("a keyring has a key");
        crate::acl::hmac_sha256(oldest.key.as_bytes(), purpose)
    }

    /// (id, create time, active) of every key.
    pub fn keys(&self) -> Vec<(String, u64, bool)> {
        let file = self.file.read().expect("keyring lock");
        file.keys.iter().map(|key| (key.id.clone(), key.create_time, key.id == file.active)).collect()
    }

    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Sealed {
        let file = self.file.read().expect("keyring lock");
        let key = file.keys.iter().find(|key| key.id == file.active).expect("the active key is in the keyring");
        let nonce: [u8; 24] = random_bytes();
        let nonce_array = XNonce::try_from(&nonce[..]).expect("24-byte nonce");
        let ciphertext = cipher(key).encrypt(&nonce_array, Payload { msg: plaintext, aad: associated }).expect("sealing cannot fail");
        Sealed { key_id: key.id.clone(), nonce: hex(&nonce), ciphertext: hex(&ciphertext) }
    }

    pub fn open_sealed(&self, sealed: &Sealed, associated: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let file = self.file.read().expect("keyring lock");
        let key = file.keys.iter().find(|key| key.id == sealed.key_id).ok_or_else(|| KeyringError::UnknownKey(sealed.key_id.clone()))?;
        let damaged = || KeyringError::Open(sealed.key_id.clone());
        let nonce = unhex(&sealed.nonce).filter(|nonce| nonce.len() == 24).ok_or_else(damaged)?;
        let ciphertext = unhex(&sealed.ciphertext).ok_or_else(damaged)?;
        let nonce = XNonce::try_from(&nonce[..]).map_err(|_| damaged())?;
        cipher(key).decrypt(&nonce, Payload { msg: &ciphertext, aad: associated }).map_err(|_| damaged())
    }

    /// Adds a key and makes it the active one; returns its id.
    pub fn rotate(&self, now: u64) -> Result<String, KeyringError> {
        let mut file = self.file.write().expect("keyring lock");
        let mut next = file.clone();
        let key = new_key(now);
        next.active = key.id.clone();
        next.keys.push(key);
        self.persist(&next)?;
        *file = next;
        Ok(file.active.clone())
    }

    /// Removes a key that is not the active one (the caller checks that no variable uses it).
    pub fn remove(&self, id: &str) -> Result<(), KeyringError> {
        let mut file = self.file.write().expect("keyring lock");
        if file.active == id {
            return Err(KeyringError::Active(id.to_string()));
        }
        if !file.keys.iter().any(|key| key.id == id) {
            return Err(KeyringError::UnknownKey(id.to_string()));
        }
        let mut next = file.clone();
        next.keys.retain(|key| key.id != id);
        self.persist(&next)?;
        *file = next;
        Ok(())
    }

    fn persist(&self, file: &KeyringFile) -> Result<(), KeyringError> {
        match &self.path {
            Some(path) => write(path, file),
            None => Ok(()),
        }
    }
}

fn cipher(key: &StoredKey) -> XChaCha20Poly1305 {
    let bytes = unhex(&key.key).expect("keys are hex");
    XChaCha20Poly1305::new(&Key::try_from(&bytes[..]).expect("keys are 32 bytes"))
}

fn new_key(now: u64) -> StoredKey {
    let key: [u8; 32] = random_bytes();
    let id: [u8; 8] = random_bytes();
    StoredKey { id: hex(&id), key: hex(&key), create_time: now }
}

/// Bytes from the OS random number generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("the OS random number generator works");
    bytes
}

/// Writes the keyring owner-only, through a temporary file and a rename.
fn write(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyringError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("json.tmp");
    let mut out = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    out.write_all(&serde_json::to_vec_pretty(file).expect("the keyring serializes")).map_err(io)?;
    out.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename itself must survive a crash: a key lost while variables sealed with it survive loses them.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(io)?;
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let keyring = Keyring::open(&path, 1).unwrap();
        let sealed = keyring.seal(b"s3cret", b"vars/default/shop/db");
        assert_ne!(sealed.ciphertext, hex(b"s3cret"));
        assert_eq!(keyring.open_sealed(&sealed, b"vars/default/shop/db").unwrap(), b"s3cret");
        assert!(matches!(keyring.open_sealed(&sealed, b"vars/default/other"), Err(KeyringError::Open(_))), "bound to its path");
        let mut tampered = sealed.clone();
        tampered.ciphertext.replace_range(0..2, if &tampered.ciphertext[0..2] == "00" { "01" } else { "00" });
        assert!(keyring.open_sealed(&tampered, b"vars/default/shop/db").is_err());
        assert_ne!(keyring.seal(b"s3cret", b"x").nonce, keyring.seal(b"s3cret", b"x").nonce, "nonces are random");

        // Rotation keeps old keys until removed; the keyring survives a reopen, owner-only.
        let old = keyring.active_id();
        let new = keyring.rotate(2).unwrap();
        assert_ne!(old, new);
        assert!(matches!(keyring.remove(&new), Err(KeyringError::Active(_))));
        let reopened = Keyring::open(&path, 3).unwrap();
        assert_eq!(reopened.active_id(), new);
        assert_eq!(reopened.open_sealed(&sealed, b"vars/default/shop/db").unwrap(), b"s3cret");
        reopened.remove(&old).unwrap();
        assert!(matches!(reopened.open_sealed(&sealed, b"vars/default/shop/db"), Err(KeyringError::UnknownKey(_))));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
