//! Task templates: text with `{{ var "path" "key" }}` (an item of a variable of the job's namespace) and
//! `{{ service "name" }}` (the healthy instances of a service of the job's namespace, `ip:port` joined by
//! commas) that the agent renders into a file of the task directory, and into the task's environment with
//! `env: true` (the rendered text read as `KEY=VALUE` lines).
//!
//! Parsing is strict and happens when the spec is checked, so a typo is reported at `file:line:col` before
//! anything runs; rendering is pure (the caller passes what variables and services hold).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What happens to a running task when its rendered template changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeMode {
    /// Stop the task and start it again with the new file and environment.
    #[default]
    Restart,
    /// Send `change_signal` (the file is rewritten; the environment keeps its old values).
    Signal,
    /// Only rewrite the file.
    Noop,
}

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var { path: String, key: String },
    Service(String),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

/// Where a template went wrong: byte offset in the text and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let inner_start = open + 2;
            let close = rest[inner_start..]
                .find("}}")
                .ok_or_else(|| TemplateError { offset: offset + open, message: "`{{` is never closed by `}}`".to_string() })?;
            let inner = &rest[inner_start..inner_start + close];
            pieces.push(action(inner).map_err(|message| TemplateError { offset: offset + open, message })?);
            let consumed = inner_start + close + 2;
            rest = &rest[consumed..];
            offset += consumed;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// The variable paths the template reads.
    pub fn variables(&self) -> BTreeSet<&str> {
        self.pieces.iter().filter_map(|piece| if let Piece::Var { path, .. } = piece { Some(path.as_str()) } else { None }).collect()
    }

    /// The services the template reads.
    pub fn services(&self) -> BTreeSet<&str> {
        self.pieces.iter().filter_map(|piece| if let Piece::Service(name) = piece { Some(name.as_str()) } else { None }).collect()
    }

    /// The text with every action replaced; `Err` names the first variable or item that does not exist.
    pub fn render(&self, data: &TemplateData) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var { path, key } => {
                    let items = data.variables.get(path).ok_or_else(|| format!("variable {path} does not exist"))?;
                    out.push_str(items.get(key).ok_or_else(|| format!("variable {path} has no item {key}"))?);
                }
                Piece::Service(name) => out.push_str(&data.services.get(name).map(|instances| instances.join(",")).unwrap_or_default()),
            }
        }
        Ok(out)
    }
}

/// `var "path" "key"` or `service "name"`.
fn action(inner: &str) -> Result<Piece, String> {
    let mut words = inner.trim().splitn(2, char::is_whitespace);
    let function = words.next().unwrap_or_default();
    let arguments = quoted(words.next().unwrap_or_default())?;
    match (function, arguments.as_slice()) {
        ("var", [path, key]) => {
            crate::variables::check_path(path)?;
            Ok(Piece::Var { path: path.clone(), key: key.clone() })
        }
        ("var", _) => Err(r#"`var` takes a path and a key: {{ var "shop/db" "url" }}"#.to_string()),
        ("service", [name]) => Ok(Piece::Service(name.clone())),
        ("service", _) => Err(r#"`service` takes a service name: {{ service "web" }}"#.to_string()),
        ("", _) => Err("an empty `{{ }}`".to_string()),
        (other, _) => Err(format!("unknown function `{other}`; templates know `var` and `service`")),
    }
}

/// Double-quoted words separated by whitespace (no escapes: paths, keys and names never hold quotes).
fn quoted(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('"').ok_or_else(|| format!("expected a \"quoted\" argument at `{rest}`"))?;
        let end = inner.find('"').ok_or_else(|| "a quoted argument is never closed".to_string())?;
        words.push(inner[..end].to_string());
        rest = inner[end + 1..].trim_start();
    }
    Ok(words)
}

/// What rendering reads: variables (path → items) and services (name → healthy `ip:port`s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateData {
    #[serde(default)]
    pub variables: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub services: BTreeMap<String, Vec<String>>,
}

/// `KEY=VALUE` lines of a rendered `env: true` template (blank lines and `#` comments skipped).
pub fn env_lines(rendered: &str) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (number, line) in rendered.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| format!("line {} is not KEY=VALUE", number + 1))?;
        env.insert(key.trim().to_string(), value.to_string());
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_render_and_refuse_mistakes() {
        let template = Template::parse("DB={{ var \"shop/db\" \"url\" }}\nWEB={{service \"web\"}}\n").unwrap();
        assert_eq!(template.variables(), BTreeSet::from(["shop/db"]));
        assert_eq!(template.services(), BTreeSet::from(["web"]));
        let mut data = TemplateData::default();
        data.variables.insert("shop/db".to_string(), BTreeMap::from([("url".to_string(), "postgres://x".to_string())]));
        data.services.insert("web".to_string(), vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()]);
        let rendered = template.render(&data).unwrap();
        assert_eq!(rendered, "DB=postgres://x\nWEB=10.0.0.1:80,10.0.0.2:80\n");
        assert_eq!(env_lines(&rendered).unwrap()["DB"], "postgres://x");
        assert_eq!(template.render(&TemplateData::default()).unwrap_err(), "variable shop/db does not exist");

        for (bad, at) in [("a {{ var \"x\" }}", 2), ("{{ nope \"x\" }}", 0), ("x {{ var \"a\" \"b\"", 2), ("{{ var \"../x\" \"k\" }}", 0)] {
            assert_eq!(Template::parse(bad).unwrap_err().offset, at, "{bad}");
        }
        assert!(env_lines("no equals sign").is_err());
    }
}
