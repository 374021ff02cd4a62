//! Field-by-field differences between two job versions (`job diff`, the register response).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::JobSpec;
use crate::http::DiffEntry;

/// Every field that differs between `old` and `new`, as `path = value` pairs, sorted by path.
///
/// List items that have a unique `name` are keyed by it (`groups[web].tasks[app].resources.cpu`), so
/// reordering groups or inserting one does not show as a change of every later item. A field only in
/// `new` has no `old` value and vice versa.
pub fn diff_specs(old: &JobSpec, new: &JobSpec) -> Vec<DiffEntry> {
    let old = flatten(old);
    let new = flatten(new);
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    paths
        .into_iter()
        .filter_map(|path| {
            let (before, after) = (old.get(path), new.get(path));
            // A secret value changes visibly, but never shows.
            let shown = |value: Option<&String>| match value {
                Some(_) if path.contains(".secret_env.") => Some(super::REDACTED.to_string()),
                other => other.cloned(),
            };
            (before != after).then(|| DiffEntry { path: path.clone(), old: shown(before), new: shown(after) })
        })
        .collect()
}

fn flatten(spec: &JobSpec) -> BTreeMap<String, String> {
    // Serializing a JobSpec cannot fail: every map key is a string.
    let value = serde_json::to_value(spec).unwrap_or(Value::Null);
    let mut fields = BTreeMap::new();
    flatten_into(&value, String::new(), &mut fields);
    fields
}

fn flatten_into(value: &Value, path: String, fields: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                flatten_into(item, super::parse::join_path(&path, key), fields);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let names: Option<Vec<&str>> =
                items.iter().map(|item| item.get("name").and_then(Value::as_str).filter(|name| !name.is_empty())).collect();
            let names = names.filter(|names| names.iter().collect::<BTreeSet<_>>().len() == names.len());
            for (index, item) in items.iter().enumerate() {
                let key = match &names {
                    Some(names) => names[index].to_string(),
                    None => index.to_string(),
                };
                flatten_into(item, format!("{path}[{key}]"), fields);
            }
        }
        Value::String(text) => {
            fields.insert(path, text.clone());
        }
        other => {
            fields.insert(path, other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_job_spec;

    fn spec(text: &str) -> JobSpec {
        parse_job_spec(text, "test.yaml").unwrap_or_else(|errors| panic!("{errors}"))
    }

    fn render(entries: &[DiffEntry]) -> String {
        entries
            .iter()
            .map(|entry| {
                format!("{}: {} -> {}\n", entry.path, entry.old.as_deref().unwrap_or("(none)"), entry.new.as_deref().unwrap_or("(none)"))
            })
            .collect()
    }

    const OLD: &str = r#"
name: shop
groups:
  - name: web
    count: 3
    network: {ports: [{name: http}]}
    tasks:
      - name: app
        config: {command: /bin/app, args: ["--port", "${port.http}"]}
        resources: {cpu: 500, memory: 256}
  - name: worker
    tasks: [{name: work, config: {command: /bin/work}}]
"#;

    #[test]
    fn equal_specs_have_no_diff() {
        assert_eq!(diff_specs(&spec(OLD), &spec(OLD)), vec![]);
    }

    #[test]
    fn changes_are_keyed_by_name() {
        // Groups swapped (no change), count and cpu changed, an env var and a datacenter added,
        // an argument removed.
        let new = r#"
name: shop
datacenters: [dc1, dc2]
groups:
  - name: worker
    tasks: [{name: work, config: {command: /bin/work}}]
  - name: web
    count: 5
    network: {ports: [{name: http}]}
    tasks:
      - name: app
        config: {command: /bin/app, args: ["--port"]}
        env: {MODE: prod}
        resources: {cpu: 750, memory: 256}
"#;
        expect_test::expect![[r#"
            datacenters[1]: (none) -> dc2
            groups[web].count: 3 -> 5
            groups[web].tasks[app].config.args[1]: ${port.http} -> (none)
            groups[web].tasks[app].env.MODE: (none) -> prod
            groups[web].tasks[app].resources.cpu: 500 -> 750
        "#]]
        .assert_eq(&render(&diff_specs(&spec(OLD), &spec(new))));
    }

    #[test]
    fn added_and_removed_groups() {
        let new = r#"
name: shop
groups:
  - name: worker
    tasks: [{name: work, config: {command: /bin/work}}]
"#;
        let diff = diff_specs(&spec(OLD), &spec(new));
        assert!(diff.iter().all(|entry| entry.path.starts_with("groups[web].") && entry.new.is_none()), "{}", render(&diff));
        assert!(diff.iter().any(|entry| entry.path == "groups[web].count" && entry.old.as_deref() == Some("3")));
        let back = diff_specs(&spec(new), &spec(OLD));
        assert_eq!(back.len(), diff.len());
        assert!(back.iter().all(|entry| entry.old.is_none()));
    }
}
