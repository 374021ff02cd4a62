//! A serde `Deserializer` over a [`Node`] tree that *collects* problems instead of stopping at the first.
//!
//! Every request the derived `Deserialize` impls make is answered: when the node does not fit (wrong type,
//! out of range, unknown enum variant, bad duration), the problem is recorded in the [`Ctx`] with the node's
//! position and path, and the visitor gets a harmless stand-in value (0, "", an empty list, the first
//! variant, `0s`) so that the rest of the spec is still checked. Unknown struct fields are recorded and
//! skipped. Fields are all `#[serde(default)]`, so a missing field never stops deserialization either.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::tree::{Entry, Node, NodeKind, Pos, is_null_text};
use super::{SpecError, join_path, suggest};
use crate::Duration;
use crate::duration::DURATION_NEWTYPE_NAME;

/// Everything found while turning a tree into a spec and checking it: the problems, and where each
/// visited path was written (so later checks on the typed spec can point at the text).
pub(crate) struct Ctx {
    file: String,
    errors: RefCell<Vec<SpecError>>,
    positions: RefCell<BTreeMap<String, Pos>>,
    key_positions: RefCell<BTreeMap<String, Pos>>,
    /// Paths that already have an error about their value: later checks below them stay quiet, so a
    /// stand-in value never causes a second, misleading error.
    reported: RefCell<BTreeSet<String>>,
}

impl Ctx {
    pub fn new(file: &str) -> Ctx {
        Ctx {
            file: file.to_string(),
            errors: RefCell::new(Vec::new()),
            positions: RefCell::new(BTreeMap::new()),
            key_positions: RefCell::new(BTreeMap::new()),
            reported: RefCell::new(BTreeSet::new()),
        }
    }

    /// Where the value at `path` was written; for a path that was never written (a missing field),
    /// where its nearest written parent is. 0:0 for specs that did not come from text.
    pub fn pos_of(&self, path: &str) -> Pos {
        let positions = self.positions.borrow();
        let mut path = path;
        loop {
            if let Some(pos) = positions.get(path) {
                return *pos;
            }
            if path.is_empty() {
                return Pos::default();
            }
            path = &path[..path.rfind(['.', '[']).unwrap_or(0)];
        }
    }

    /// Where the key of the field at `path` was written, else where its value was.
    pub fn key_pos_of(&self, path: &str) -> Pos {
        match self.key_positions.borrow().get(path) {
            Some(pos) => *pos,
            None => self.pos_of(path),
        }
    }

    fn record_pos(&self, path: &str, pos: Pos) {
        self.positions.borrow_mut().entry(path.to_string()).or_insert(pos);
    }

    fn record_key_pos(&self, path: &str, pos: Pos) {
        self.key_positions.borrow_mut().entry(path.to_string()).or_insert(pos);
    }

    /// True when the value at `path`, or a value above it, already has an error.
    pub fn is_reported(&self, path: &str) -> bool {
        self.reported
            .borrow()
            .iter()
            .any(|done| path == done || (path.starts_with(done.as_str()) && matches!(path.as_bytes().get(done.len()), Some(b'.' | b'['))))
    }

    /// True when the value at `path`, or a value inside it, already has an error.
    pub fn is_reported_within(&self, path: &str) -> bool {
        self.reported
            .borrow()
            .iter()
            .any(|done| done == path || (done.starts_with(path) && matches!(done.as_bytes().get(path.len()), Some(b'.' | b'['))))
    }

    /// Records a problem with the value at `path` (unless one was already recorded at or above it).
    pub fn report(&self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let pos = self.pos_of(path);
        self.report_at(pos, path, message, hint);
    }

    /// Records a problem about a field's presence, pointing at its key.
    pub fn report_key(&self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let pos = self.key_pos_of(path);
        self.report_at(pos, path, message, hint);
    }

    pub fn report_at(&self, pos: Pos, path: &str, message: impl Into<String>, hint: Option<String>) {
        if self.is_reported(path) {
            return;
        }
        self.reported.borrow_mut().insert(path.to_string());
        self.push(pos, path, message.into(), hint);
    }

    /// Records a problem that does not make the value at `path` unusable (an unknown key, a duplicate).
    pub fn note_at(&self, pos: Pos, path: &str, message: impl Into<String>, hint: Option<String>) {
        self.push(pos, path, message.into(), hint);
    }

    fn push(&self, pos: Pos, path: &str, message: String, hint: Option<String>) {
        self.errors.borrow_mut().push(SpecError {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message,
            hint,
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// All problems in source order (problems at the same place keep the order they were found in).
    pub fn into_errors(self) -> Vec<SpecError> {
        let mut errors = self.errors.into_inner();
        errors.sort_by_key(|error| (error.line, error.column));
        errors
    }
}

/// The error type serde needs. Problems with values are recorded in the [`Ctx`] and never travel as
/// errors; what does travel is what the derived code raises itself, such as a missing required field.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct DeError {
    pub message: String,
    pub missing_field: Option<&'static str>,
    /// True once recorded in the [`Ctx`].
    pub reported: bool,
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { message: msg.to_string(), missing_field: None, reported: false }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError { message: format!("`{field}` is required"), missing_field: Some(field), reported: false }
    }
}

/// Deserializes `T` from `node`, recording problems in `ctx`. `path` is the node's dotted path, `label`
/// how messages name it. With `strict`, plain scalars that are numbers, booleans or null are not
/// accepted as strings (driver `config` is handed to drivers as JSON, where `8080` is not a string).
pub(crate) fn deserialize_node<'de, T: Deserialize<'de>>(
    node: &Node,
    path: &str,
    label: &str,
    ctx: &Ctx,
    strict: bool,
) -> Result<T, DeError> {
    ctx.record_pos(path, node.pos);
    T::deserialize(NodeDe { node, path: path.to_string(), label: label.to_string(), ctx, strict })
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
    label: String,
    ctx: &'a Ctx,
    strict: bool,
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node, path: String, label: String) -> NodeDe<'a> {
        self.ctx.record_pos(&path, node.pos);
        NodeDe { node, path, label, ctx: self.ctx, strict: self.strict }
    }

    fn report(&self, message: String, hint: Option<String>) {
        self.ctx.report_at(self.node.pos, &self.path, message, hint);
    }

    /// Records an error the visitor raised (once, at the innermost node it passed through).
    fn finish<T>(&self, result: Result<T, DeError>) -> Result<T, DeError> {
        result.map_err(|mut error| {
            if !error.reported && error.missing_field.is_none() {
                self.report(format!("{}: {}", self.label, error.message), None);
                error.reported = true;
            }
            error
        })
    }

    fn plain_text(&self) -> Option<&'a str> {
        match &self.node.kind {
            NodeKind::Scalar { text, quoted: false } => Some(text),
            _ => None,
        }
    }

    /// The integer the node holds if it is in `min..=max`; otherwise records why not and returns 0.
    fn integer(&self, min: i128, max: i128) -> i128 {
        let parsed = self.plain_text().and_then(parse_yaml_int);
        if let Some(value) = parsed
            && (min..=max).contains(&value)
        {
            return value;
        }
        let expectation = match super::super::validate::integer_expectation(&self.label) {
            Some(expectation) => expectation.to_string(),
            None if min == 0 => match parsed {
                Some(value) if value > max => format!("a non-negative integer no larger than {max}"),
                _ => "a non-negative integer".to_string(),
            },
            None => format!("an integer from {min} to {max}"),
        };
        let hint = match &self.node.kind {
            NodeKind::Scalar { text, quoted: true } if parse_yaml_int(text).is_some() => {
                Some("remove the quotes: numbers are written without them".to_string())
            }
            NodeKind::Scalar { text, quoted: false } if parse_yaml_float(text).is_some() && parsed.is_none() => {
                Some("write a whole number".to_string())
            }
            _ => None,
        };
        self.report(format!("{} must be {expectation}, found {}", self.label, self.node.describe()), hint);
        0
    }

    fn float(&self) -> f64 {
        if let Some(value) = self.plain_text().and_then(|text| parse_yaml_int(text).map(|i| i as f64).or_else(|| parse_yaml_float(text))) {
            return value;
        }
        self.report(format!("{} must be a number, found {}", self.label, self.node.describe()), None);
        0.0
    }

    fn boolean(&self) -> bool {
        if let Some(value) = self.plain_text().and_then(parse_yaml_bool) {
            return value;
        }
        let hint = match &self.node.kind {
            NodeKind::Scalar { text, quoted: false }
                if matches!(text.to_ascii_lowercase().as_str(), "yes" | "no" | "on" | "off" | "y" | "n") =>
            {
                Some(format!("YAML 1.2 reads `{text}` as a string; write true or false"))
            }
            NodeKind::Scalar { text, quoted: true } if parse_yaml_bool(text).is_some() => Some("remove the quotes".to_string()),
            _ => None,
        };
        self.report(format!("{} must be true or false, found {}", self.label, self.node.describe()), hint);
        false
    }

    fn string(&self) -> String {
        match &self.node.kind {
            NodeKind::Scalar { text, quoted: true } => text.clone(),
            NodeKind::Scalar { text, quoted: false } => {
                if self.strict && resolves_to_non_string(text) {
                    self.report(
                        format!("{} must be a string, found {}", self.label, self.node.describe()),
                        Some(format!("quote it: \"{}\"", text.escape_default())),
                    );
                    text.clone()
                } else if is_null_text(text) {
                    String::new()
                } else {
                    text.clone()
                }
            }
            NodeKind::Seq(_) | NodeKind::Map(_) => {
                self.report(format!("{} must be a string, found {}", self.label, self.node.describe()), None);
                String::new()
            }
        }
    }

    /// Entries of a mapping node; a null node counts as an empty mapping unless strict. Records an error
    /// (and returns nothing) for any other node.
    fn entries(&self) -> &'a [Entry] {
        match &self.node.kind {
            NodeKind::Map(entries) => entries,
            _ if self.node.is_null() && !self.strict => &[],
            NodeKind::Seq(_) => {
                self.report(
                    format!("{} must be a mapping, found a list", self.label),
                    Some(format!("write `key: value` pairs, e.g. {}: {{key: value}}", self.label)),
                );
                &[]
            }
            NodeKind::Scalar { .. } => {
                self.report(format!("{} must be a mapping, found {}", self.label, self.node.describe()), None);
                &[]
            }
        }
    }

    fn items(&self) -> &'a [Node] {
        match &self.node.kind {
            NodeKind::Seq(items) => items,
            _ if self.node.is_null() && !self.strict => &[],
            NodeKind::Scalar { text, quoted } => {
                let hint = if self.node.is_null() {
                    None
                } else if *quoted {
                    Some(format!("write a list: [{text:?}]"))
                } else {
                    Some(format!("write a list: [{text}]"))
                };
                self.report(format!("{} must be a list, found {}", self.label, self.node.describe()), hint);
                &[]
            }
            NodeKind::Map(_) => {
                self.report(format!("{} must be a list, found a mapping", self.label), Some("start each item with `- `".to_string()));
                &[]
            }
        }
    }

    fn seq_access(&self, items: &'a [Node]) -> SeqDe<'a> {
        SeqDe { items: items.iter().enumerate(), path: self.path.clone(), label: self.label.clone(), ctx: self.ctx, strict: self.strict }
    }

    fn map_access(&self, entries: Vec<&'a Entry>, struct_fields: bool) -> MapDe<'a, '_> {
        for entry in &entries {
            self.ctx.record_key_pos(&join_path(&self.path, &entry.key), entry.key_pos);
        }
        MapDe { entries: entries.into_iter(), value: None, parent: self, struct_fields }
    }
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            NodeKind::Scalar { text, quoted: true } => visitor.visit_str(text),
            NodeKind::Scalar { text, quoted: false } => {
                if is_null_text(text) {
                    visitor.visit_unit()
                } else if let Some(b) = parse_yaml_bool(text) {
                    visitor.visit_bool(b)
                } else if let Some(i) = parse_yaml_int(text) {
                    if let Ok(u) = u64::try_from(i) {
                        visitor.visit_u64(u)
                    } else if let Ok(i) = i64::try_from(i) {
                        visitor.visit_i64(i)
                    } else {
                        visitor.visit_str(text)
                    }
                } else if let Some(f) = parse_yaml_float(text).filter(|f| f.is_finite()) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(text)
                }
            }
            NodeKind::Seq(items) => visitor.visit_seq(self.seq_access(items)),
            NodeKind::Map(entries) => visitor.visit_map(self.map_access(entries.iter().collect(), false)),
        };
        self.finish(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.boolean();
        self.finish(visitor.visit_bool(value))
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(i8::MIN.into(), i8::MAX.into()) as i8;
        self.finish(visitor.visit_i8(value))
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(i16::MIN.into(), i16::MAX.into()) as i16;
        self.finish(visitor.visit_i16(value))
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(i32::MIN.into(), i32::MAX.into()) as i32;
        self.finish(visitor.visit_i32(value))
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(i64::MIN.into(), i64::MAX.into()) as i64;
        self.finish(visitor.visit_i64(value))
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(0, u8::MAX.into()) as u8;
        self.finish(visitor.visit_u8(value))
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(0, u16::MAX.into()) as u16;
        self.finish(visitor.visit_u16(value))
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(0, u32::MAX.into()) as u32;
        self.finish(visitor.visit_u32(value))
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer(0, u64::MAX.into()) as u64;
        self.finish(visitor.visit_u64(value))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.float() as f32;
        self.finish(visitor.visit_f32(value))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.float();
        self.finish(visitor.visit_f64(value))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.string();
        self.finish(visitor.visit_string(value))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() { self.finish(visitor.visit_none()) } else { visitor.visit_some(self) }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let items = self.items();
        let result = visitor.visit_seq(self.seq_access(items));
        self.finish(result)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let entries = self.entries();
        let result = visitor.visit_map(self.map_access(entries.iter().collect(), false));
        self.finish(result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries = self.entries();
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            if fields.contains(&entry.key.as_str()) {
                known.push(entry);
            } else {
                let path = join_path(&self.path, &entry.key);
                self.ctx.record_key_pos(&path, entry.key_pos);
                self.ctx.note_at(
                    entry.key_pos,
                    &path,
                    format!("unknown field `{}` in {}", entry.key, self.label),
                    Some(unknown_field_hint(name, fields, &entry.key)),
                );
            }
        }
        let result = visitor.visit_map(self.map_access(known, true));
        self.finish(result)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let chosen = match &self.node.kind {
            NodeKind::Scalar { text, .. } if variants.contains(&text.as_str()) => text.as_str(),
            _ => {
                let found = match &self.node.kind {
                    NodeKind::Scalar { text, .. } if !self.node.is_null() => Some(text.as_str()),
                    _ => None,
                };
                let hint = found
                    .and_then(|text| {
                        enum_alias_hint(name, text)
                            .or_else(|| suggest(text, variants.iter().copied()).map(|s| format!("did you mean `{s}`?")))
                    })
                    .unwrap_or_else(|| format!("valid values: {}", variants.join(", ")));
                let message = match found {
                    Some(text) => format!("unknown {} `{}`", self.label, super::tree::shorten(text)),
                    None => format!("{} must be one of {}, found {}", self.label, variants.join(", "), self.node.describe()),
                };
                self.report(message, Some(hint));
                variants.first().copied().unwrap_or_default()
            }
        };
        let result = visitor.visit_enum(chosen.into_deserializer());
        self.finish(result)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        if name != DURATION_NEWTYPE_NAME {
            return visitor.visit_newtype_struct(self);
        }
        let text = match &self.node.kind {
            NodeKind::Scalar { text, .. } if !self.node.is_null() => match Duration::parse(text) {
                Ok(_) => text.as_str(),
                Err(error) => {
                    self.report(
                        format!("{} is not a valid duration: `{}` ({})", self.label, super::tree::shorten(text), error.reason),
                        Some(duration_hint(text)),
                    );
                    "0s"
                }
            },
            _ => {
                self.report(format!("{} must be a duration, found {}", self.label, self.node.describe()), Some(duration_hint("")));
                "0s"
            }
        };
        let result = visitor.visit_str(text);
        self.finish(result)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct tuple tuple_struct
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: String,
    label: String,
    ctx: &'a Ctx,
    strict: bool,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqDe<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some((index, node)) = self.items.next() else { return Ok(None) };
        let path = format!("{}[{index}]", self.path);
        self.ctx.record_pos(&path, node.pos);
        let child = NodeDe { node, path, label: format!("{}[{index}]", self.label), ctx: self.ctx, strict: self.strict };
        seed.deserialize(child).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'p> {
    entries: std::vec::IntoIter<&'a Entry>,
    value: Option<&'a Entry>,
    parent: &'p NodeDe<'a>,
    /// Struct fields are named by their key alone; entries of free maps (`env`, `meta`) by `map.key`.
    struct_fields: bool,
}

impl<'de, 'a> de::MapAccess<'de> for MapDe<'a, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else { return Ok(None) };
        self.value = Some(entry);
        seed.deserialize(entry.key.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.value.take() else { return Err(de::Error::custom("a value was requested before its key")) };
        let path = join_path(&self.parent.path, &entry.key);
        let label = if self.struct_fields { entry.key.clone() } else { format!("{}.{}", self.parent.label, entry.key) };
        seed.deserialize(self.parent.child(&entry.value, path, label))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

fn unknown_field_hint(struct_name: &str, fields: &[&str], key: &str) -> String {
    if struct_name == "TaskSpec" && matches!(key, "command" | "args" | "image" | "kernel") {
        return format!("driver settings go under `config`: config: {{{key}: …}}");
    }
    if struct_name == "JobSpec" && matches!(key, "tasks" | "count" | "network") {
        return format!("`{key}` belongs to a group: groups: [{{name: …, {key}: …}}]");
    }
    if struct_name == "ServiceSpec" && key == "checks" {
        return "checks belong to a task (`checks:` under the task); an instance is served while its allocation is healthy".to_string();
    }
    if struct_name == "ServiceSpec" && matches!(key, "balance" | "lb" | "load_balancing") {
        return "did you mean `algorithm`?".to_string();
    }
    match suggest(key, fields.iter().copied()) {
        Some(field) => format!("did you mean `{field}`?"),
        None => format!("valid fields: {}", fields.join(", ")),
    }
}

fn enum_alias_hint(enum_name: &str, value: &str) -> Option<String> {
    let alias = match (enum_name, value.to_ascii_lowercase().as_str()) {
        ("DriverName", "docker" | "podman" | "oci" | "containerd") => "container",
        ("DriverName", "qemu" | "kvm" | "firecracker") => "vm",
        ("DriverName", "raw_exec" | "shell" | "process") => "exec",
        ("ConstraintOperator", "==" | "eq") => "=",
        ("ConstraintOperator", "regex" | "=~") => "regexp",
        ("BalanceAlgorithm", "roundrobin" | "rr" | "round-robin") => "round_robin",
        ("BalanceAlgorithm", "least_conn" | "leastconn" | "least-connections") => "least_connections",
        ("BalanceAlgorithm", "ketama" | "hash" | "consistent-hash") => "consistent_hash",
        ("BalanceAlgorithm", "wrr" | "weighted_round_robin") => "weighted",
        ("BalanceAlgorithm", "ewma" | "p2c" | "least_time" | "least-response-time") => "least_response_time",
        ("ServiceMode", "l7" | "http1" | "http/1.1") => "http",
        ("ServiceMode", "l4") => "tcp",
        _ => return None,
    };
    Some(format!("did you mean `{alias}`?"))
}

fn duration_hint(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        format!("add a unit, e.g. {text}s or {text}ms")
    } else {
        "write a number with a unit, e.g. 500ms, 5s, 1m30s, 2h".to_string()
    }
}

/// YAML 1.2 core schema booleans.
pub(crate) fn parse_yaml_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// YAML 1.2 core schema integers: `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`.
pub(crate) fn parse_yaml_int(text: &str) -> Option<i128> {
    if let Some(octal) = text.strip_prefix("0o") {
        return (!octal.is_empty() && octal.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .then(|| i128::from_str_radix(octal, 8).ok())
            .flatten();
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| i128::from_str_radix(hex, 16).ok()).flatten();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// YAML 1.2 core schema floats: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, `.inf`, `.nan`.
pub(crate) fn parse_yaml_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => {
            whole.bytes().all(|b| b.is_ascii_digit())
                && fraction.bytes().all(|b| b.is_ascii_digit())
                && !(whole.is_empty() && fraction.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if mantissa_ok && exponent_ok { text.parse().ok() } else { None }
}

fn resolves_to_non_string(text: &str) -> bool {
    is_null_text(text) || parse_yaml_bool(text).is_some() || parse_yaml_int(text).is_some() || parse_yaml_float(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_schema_scalars() {
        assert_eq!(parse_yaml_int("42"), Some(42));
        assert_eq!(parse_yaml_int("-1"), Some(-1));
        assert_eq!(parse_yaml_int("0x1f"), Some(31));
        assert_eq!(parse_yaml_int("0o17"), Some(15));
        assert_eq!(parse_yaml_int("1.5"), None);
        assert_eq!(parse_yaml_int("abc"), None);
        assert_eq!(parse_yaml_int("-"), None);
        assert_eq!(parse_yaml_float("1.5"), Some(1.5));
        assert_eq!(parse_yaml_float("1e3"), Some(1000.0));
        assert_eq!(parse_yaml_float(".5"), Some(0.5));
        assert_eq!(parse_yaml_float("."), None);
        assert_eq!(parse_yaml_float("1.2.3"), None);
        assert_eq!(parse_yaml_float("e5"), None);
        assert_eq!(parse_yaml_bool("True"), Some(true));
        assert_eq!(parse_yaml_bool("yes"), None);
    }
}
