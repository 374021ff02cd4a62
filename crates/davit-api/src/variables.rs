//! Variables: small sets of key/value items at a path in a namespace (`davit var put shop/db url=…`), stored
//! encrypted, versioned by their modify index (check-and-set with `?cas=N`).
//!
//! Paths are 1 to 256 characters of `A-Za-z0-9/_.-` in segments separated by single `/`, none of them `.`
//! or `..`. A variable holds at most [`MAX_ITEMS`] items and [`MAX_BYTES`] bytes of keys and values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::objects::{Index, UnixMillis};

pub const MAX_PATH_LEN: usize = 256;
pub const MAX_ITEMS: usize = 64;
pub const MAX_BYTES: usize = 64 * 1024;

/// A variable without its values (what lists show).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableMeta {
    pub namespace: String,
    pub path: String,
    pub create_time: UnixMillis,
    pub modify_time: UnixMillis,
    #[serde(default)]
    pub create_index: Index,
    /// The variable's version: pass it as `?cas=` to change it only if nobody else did.
    #[serde(default)]
    pub modify_index: Index,
}

/// A variable with its items (what `GET /v1/var/{path}` answers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    #[serde(flatten)]
    pub meta: VariableMeta,
    pub items: BTreeMap<String, String>,
}

/// `PUT /v1/var/{path}[?cas=N]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutVariableRequest {
    pub items: BTreeMap<String, String>,
}

/// One key of the server's keyring (never its material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub create_time: UnixMillis,
    /// New writes use the active key.
    pub active: bool,
    /// Variables still encrypted with this key.
    pub variables: u64,
}

/// Why a path is not a variable path, if it is not.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(format!("a variable path has 1 to {MAX_PATH_LEN} characters"));
    }
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b)) {
        return Err("a variable path has only letters, digits and `/`, `_`, `.`, `-`".to_string());
    }
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err("a variable path is segments separated by single `/`, none of them empty, `.` or `..`".to_string());
    }
    Ok(())
}

/// Why a variable's items cannot be stored, if they cannot.
pub fn check_items(items: &BTreeMap<String, String>) -> Result<(), String> {
    if items.is_empty() {
        return Err("a variable needs at least one item (key=value)".to_string());
    }
    if items.len() > MAX_ITEMS {
        return Err(format!("a variable holds at most {MAX_ITEMS} items, not {}", items.len()));
    }
    if let Some(key) = items.keys().find(|key| key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))) {
        return Err(format!("item key {key:?} is not valid: use letters, digits, `_`, `-` and `.`"));
    }
    let bytes: usize = items.iter().map(|(key, value)| key.len() + value.len()).sum();
    if bytes > MAX_BYTES {
        return Err(format!("a variable holds at most {MAX_BYTES} bytes of keys and values, not {bytes}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_items_are_bounded() {
        assert!(check_path("shop/db").is_ok());
        for bad in ["", "/shop", "shop/", "a//b", "a/../b", "a b", "./a", &"x".repeat(257)] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        let items = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        assert!(check_items(&items(&[("url", "postgres://")])).is_ok());
        assert!(check_items(&items(&[])).is_err());
        assert!(check_items(&items(&[("bad key", "x")])).is_err());
        assert!(check_items(&items(&[("big", &"x".repeat(MAX_BYTES))])).is_err());
    }
}
