//! YAML/JSON text → [`JobSpec`], with every problem reported at `file:line:col`.
//!
//! Three steps, each collecting problems instead of stopping at the first:
//! 1. `tree`: text → a [`Node`] tree with positions (JSON is YAML flow syntax, so one parser reads both);
//!    only a syntax error stops here.
//! 2. `de`: tree → typed [`JobSpec`] through a serde `Deserializer` that records wrong types, unknown
//!    fields and bad values, and hands serde stand-in values so the whole spec is still checked.
//! 3. [`validate`](super::validate): semantic rules on the typed spec, pointing back at the text through
//!    the positions recorded in step 2.

use std::fmt;

use super::JobSpec;
use crate::http::SpecErrorWire;

mod de;
mod tree;

pub(crate) use de::{Ctx, deserialize_node};
pub(crate) use tree::Node;

/// One problem in a spec, with its position (1-based line and column) and a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Dotted path of the offending field, e.g. `groups[0].tasks[1].driver`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// All problems found in one spec, in source order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl From<&SpecError> for SpecErrorWire {
    fn from(e: &SpecError) -> Self {
        SpecErrorWire {
            file: e.file.clone(),
            line: e.line,
            column: e.column,
            path: e.path.clone(),
            message: e.message.clone(),
            hint: e.hint.clone(),
        }
    }
}

impl From<&SpecErrorWire> for SpecError {
    fn from(e: &SpecErrorWire) -> Self {
        SpecError {
            file: e.file.clone(),
            line: e.line,
            column: e.column,
            path: e.path.clone(),
            message: e.message.clone(),
            hint: e.hint.clone(),
        }
    }
}

/// Parses and validates a job spec written in YAML or JSON. `filename` is only used in messages. No
/// [`super::SpecLimits`] apply: servers use [`parse_job_spec_within`].
pub fn parse_job_spec(source: &str, filename: &str) -> Result<JobSpec, SpecErrors> {
    parse_spec(source, filename, None)
}

/// [`parse_job_spec`], also checking `limits`.
pub fn parse_job_spec_within(source: &str, filename: &str, limits: &super::SpecLimits) -> Result<JobSpec, SpecErrors> {
    parse_spec(source, filename, Some(limits))
}

fn parse_spec(source: &str, filename: &str, limits: Option<&super::SpecLimits>) -> Result<JobSpec, SpecErrors> {
    let document = Document {
        empty: "the spec is empty",
        empty_hint: "a job spec is a mapping such as `name: hello` with `groups:` of tasks; see examples/hello.yaml",
        not_a_map: "a job spec must be a mapping of fields (`name:`, `groups:`, …)",
        label: "the spec",
    };
    parse_document(source, filename, &document, |spec, ctx| {
        super::validate::check(spec, ctx);
        if let Some(limits) = limits {
            super::limits::check(spec, ctx, limits);
        }
    })
}

/// How messages name a kind of document (a job spec, an ACL policy).
pub(crate) struct Document {
    pub empty: &'static str,
    pub empty_hint: &'static str,
    /// Followed by ", found <what was found>".
    pub not_a_map: &'static str,
    pub label: &'static str,
}

/// Parses a YAML or JSON mapping into `T`, then runs `check` on it; every problem is reported at
/// `file:line:col`. Shared by job specs and ACL policies.
pub(crate) fn parse_document<T: serde::de::DeserializeOwned>(
    source: &str,
    filename: &str,
    document: &Document,
    check: impl FnOnce(&T, &Ctx),
) -> Result<T, SpecErrors> {
    let (root, tree_errors) = tree::build(source, filename).map_err(|error| SpecErrors(vec![error]))?;
    let ctx = Ctx::new(filename);
    for error in tree_errors {
        // Marked as reported: a dropped duplicate or an alias read as null must not cause more errors.
        let pos = tree::Pos { line: error.line, column: error.column };
        ctx.report_at(pos, &error.path, error.message, error.hint);
    }
    if root.is_null() {
        ctx.report_at(root.pos, "", document.empty, Some(document.empty_hint.to_string()));
        return Err(SpecErrors(ctx.into_errors()));
    }
    if !matches!(root.kind, tree::NodeKind::Map(_)) {
        ctx.report_at(root.pos, "", format!("{}, found {}", document.not_a_map, root.describe()), None);
        return Err(SpecErrors(ctx.into_errors()));
    }
    let value = match deserialize_node::<T>(&root, "", document.label, &ctx, false) {
        Ok(value) => {
            check(&value, &ctx);
            Some(value)
        }
        Err(error) => {
            if !error.reported {
                ctx.report("", error.message, None);
            }
            None
        }
    };
    match value {
        Some(value) if !ctx.has_errors() => Ok(value),
        _ => Err(SpecErrors(ctx.into_errors())),
    }
}

/// `parent.key`, or `key` at the top.
pub(crate) fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// The candidate closest to `input` (typos, swapped letters, wrong case), if one is close enough to
/// be what the user meant.
pub(crate) fn suggest<'c>(input: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let input_lower = input.to_lowercase();
    let length = input_lower.chars().count();
    let limit = if length <= 3 { 1 } else { (length / 3).max(2) };
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let closest = candidates
        .iter()
        .map(|candidate| (edit_distance(&input_lower, &candidate.to_lowercase()), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate);
    // An abbreviation (`kill_sig` for `kill_signal`) is far in edits but obvious to a reader.
    closest.or_else(|| {
        (length >= 4)
            .then(|| {
                candidates.iter().filter(|candidate| candidate.to_lowercase().starts_with(&input_lower)).min_by_key(|c| c.len()).copied()
            })
            .flatten()
    })
}

/// Levenshtein distance where swapping two neighbouring characters also counts as one edit
/// (optimal string alignment).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j]; only the last three rows are needed.
    let mut before_previous = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(before_previous[j - 2] + 1);
            }
        }
        std::mem::swap(&mut before_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("comand", "command"), 1);
        assert_eq!(edit_distance("dirver", "driver"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ñandú", "nandu"), 2);
    }

    #[test]
    fn suggestions() {
        let fields = ["name", "driver", "config", "env", "user", "resources", "kill_timeout", "kill_signal", "templates", "meta"];
        assert_eq!(suggest("comand", ["command", "args"]), Some("command"));
        assert_eq!(suggest("dirver", fields), Some("driver"));
        assert_eq!(suggest("Driver", fields), Some("driver"));
        assert_eq!(suggest("resource", fields), Some("resources"));
        assert_eq!(suggest("kill_sig", fields), Some("kill_signal"));
        assert_eq!(suggest("exe", ["exec", "container", "vm"]), Some("exec"));
        assert_eq!(suggest("htp", ["http", "metrics"]), Some("http"));
        // Nothing close: no guess.
        assert_eq!(suggest("banana", fields), None);
        assert_eq!(suggest("xy", ["exec", "container", "vm"]), None);
        assert_eq!(suggest("anything", []), None);
    }
}
