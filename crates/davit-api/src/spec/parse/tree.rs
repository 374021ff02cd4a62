//! YAML/JSON text → a small tree of [`Node`]s that remembers where every value and key was written.
//!
//! JSON goes through the same YAML 1.2 parser (JSON is YAML flow syntax). Anchors, aliases and tags other
//! than `!!str` are rejected, duplicate keys are reported at the second occurrence (and dropped), and only
//! one document is allowed.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::SpecError;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_span(span: Span) -> Pos {
        Pos { line: saturate(span.start.line()), column: saturate(span.start.col() + 1) }
    }
}

fn saturate(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NodeKind {
    /// `quoted` is true for quoted and block scalars (and `!!str`): those are always strings.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair; keys are always scalars (others are rejected while building the tree).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    pub fn null(pos: Pos) -> Node {
        Node { kind: NodeKind::Scalar { text: String::new(), quoted: false }, pos }
    }

    /// True for a plain `~`, `null`, `Null`, `NULL` or an empty plain scalar (YAML 1.2 core schema).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, quoted: false } if is_null_text(text))
    }

    /// How the node reads in a message: "`-1`", "the string \"3\"", "a list", "a mapping" or "nothing".
    pub fn describe(&self) -> String {
        match &self.kind {
            _ if self.is_null() => "nothing".to_string(),
            NodeKind::Scalar { text, quoted: false } => format!("`{}`", shorten(text)),
            NodeKind::Scalar { text, quoted: true } => format!("the string {:?}", shorten(text)),
            NodeKind::Seq(_) => "a list".to_string(),
            NodeKind::Map(_) => "a mapping".to_string(),
        }
    }

    /// Builds a node from a JSON value at `path`, taking positions from `ctx`, so values that came from
    /// text keep theirs (and values that did not are at 0:0).
    pub fn from_json(value: &serde_json::Value, path: &str, ctx: &super::Ctx) -> Node {
        use serde_json::Value;
        let pos = ctx.pos_of(path);
        let kind = match value {
            Value::Null => NodeKind::Scalar { text: "null".to_string(), quoted: false },
            Value::Bool(b) => NodeKind::Scalar { text: b.to_string(), quoted: false },
            Value::Number(n) => NodeKind::Scalar { text: n.to_string(), quoted: false },
            Value::String(s) => NodeKind::Scalar { text: s.clone(), quoted: true },
            Value::Array(items) => {
                NodeKind::Seq(items.iter().enumerate().map(|(i, item)| Node::from_json(item, &format!("{path}[{i}]"), ctx)).collect())
            }
            Value::Object(map) => NodeKind::Map(
                map.iter()
                    .map(|(key, item)| {
                        let item_path = super::join_path(path, key);
                        Entry { key: key.clone(), key_pos: ctx.key_pos_of(&item_path), value: Node::from_json(item, &item_path, ctx) }
                    })
                    .collect(),
            ),
        };
        Node { kind, pos }
    }
}

pub(crate) fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

/// The tree of the one document in `source`, plus the problems found on the way that did not stop
/// parsing (duplicate keys, anchors, tags). A syntax error stops parsing and is the only error returned.
pub(crate) fn build(source: &str, file: &str) -> Result<(Node, Vec<SpecError>), SpecError> {
    let mut builder = Builder { file, stack: Vec::new(), root: None, errors: Vec::new(), documents: 0, fatal: None };
    let mut parser = Parser::new_from_str(source);
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(event) => event,
            Err(scan_error) => {
                let marker = scan_error.marker();
                let pos = Pos { line: saturate(marker.line()), column: saturate(marker.col() + 1) };
                return Err(SpecError {
                    file: file.to_string(),
                    line: pos.line,
                    column: pos.column,
                    path: String::new(),
                    message: format!("syntax error: {}", scan_error.info()),
                    hint: Some(syntax_hint(source, marker.index(), scan_error.info())),
                });
            }
        };
        if builder.on_event(event, span) {
            break;
        }
    }
    if let Some(error) = builder.fatal.take() {
        return Err(error);
    }
    let root = builder.root.take().unwrap_or_else(|| Node::null(Pos { line: 1, column: 1 }));
    Ok((root, builder.errors))
}

fn syntax_hint(source: &str, error_index: usize, info: &str) -> String {
    if info.contains("tab") {
        return "indent with spaces: YAML does not allow tabs for indentation".to_string();
    }
    if source.trim_start().starts_with(['{', '[']) {
        return "the spec reads as JSON; check for a missing comma, quote or closing bracket near this position".to_string();
    }
    if let Some((bracket, pos)) = unclosed_flow_bracket(source, error_index) {
        return format!("the `{bracket}` at line {}, column {} is never closed", pos.line, pos.column);
    }
    "check the indentation and quoting near this position; values containing `: ` or starting with `{`, `[`, `*`, `&` or `!` need quotes"
        .to_string()
}

/// The innermost `[` or `{` still open at `error_index` (a char index), skipping quoted text and comments:
/// in block YAML an unclosed flow collection is the usual cause of a confusing error further down.
fn unclosed_flow_bracket(source: &str, error_index: usize) -> Option<(char, Pos)> {
    let mut open: Vec<(char, Pos)> = Vec::new();
    let mut quote: Option<char> = None;
    let mut in_comment = false;
    let (mut line, mut column) = (1u32, 0u32);
    let mut previous = '\n';
    for c in source.chars().take(error_index) {
        column += 1;
        if c == '\n' {
            line += 1;
            column = 0;
            in_comment = false;
            quote = None;
        } else if in_comment {
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else {
            match c {
                '"' | '\'' if matches!(previous, ' ' | '[' | '{' | ',' | ':' | '\n') => quote = Some(c),
                '#' if matches!(previous, ' ' | '\t' | '\n') => in_comment = true,
                '[' | '{' => open.push((c, Pos { line, column })),
                ']' | '}' => {
                    open.pop();
                }
                _ => {}
            }
        }
        previous = c;
    }
    open.pop()
}

enum Frame {
    Seq { items: Vec<Node>, pos: Pos, path: String },
    Map { entries: Vec<Entry>, pos: Pos, path: String, pending_key: Option<PendingKey> },
}

struct PendingKey {
    key: String,
    pos: Pos,
    /// False when the key was rejected (duplicate or not a scalar): its value is parsed and dropped.
    keep: bool,
}

struct Builder<'a> {
    file: &'a str,
    stack: Vec<Frame>,
    root: Option<Node>,
    errors: Vec<SpecError>,
    documents: u32,
    /// An error that stops parsing, like a syntax error.
    fatal: Option<SpecError>,
}

/// Deeper nesting than this is rejected: no spec needs it, and the tree is walked recursively.
const MAX_DEPTH: usize = 64;

impl Builder<'_> {
    /// The dotted path of the node that comes next.
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
            Some(Frame::Map { path, pending_key: Some(key), .. }) => super::join_path(path, &key.key),
            Some(Frame::Map { path, .. }) => path.clone(),
        }
    }

    fn error(&mut self, pos: Pos, message: String, hint: &str) {
        let path = self.child_path();
        self.error_at(pos, path, message, hint);
    }

    fn error_at(&mut self, pos: Pos, path: String, message: String, hint: &str) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path,
            message,
            hint: Some(hint.to_string()),
        });
    }

    /// Returns true when parsing should stop.
    fn on_event(&mut self, event: Event<'_>, span: Span) -> bool {
        let pos = Pos::from_span(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => return true,
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    self.error(
                        pos,
                        "a spec file holds exactly one YAML document".to_string(),
                        "remove the `---` and everything after it, or split the jobs into separate files",
                    );
                    return true;
                }
            }
            Event::Alias(_) => {
                self.error(pos, "YAML aliases (`*name`) are not supported".to_string(), "write the value out in full");
                self.complete(Node::null(pos));
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.check_anchor(anchor, pos);
                let mut quoted = !matches!(style, ScalarStyle::Plain);
                if let Some(tag) = tag {
                    if tag.is_yaml_core_schema() && tag.suffix == "str" {
                        quoted = true;
                    } else {
                        let shown =
                            if tag.is_yaml_core_schema() { format!("!!{}", tag.suffix) } else { format!("{}{}", tag.handle, tag.suffix) };
                        self.error(
                            pos,
                            format!("YAML tags (`{shown}`) are not supported"),
                            "remove the tag; quote the value if it must be a string",
                        );
                    }
                }
                self.complete(Node { kind: NodeKind::Scalar { text: text.into_owned(), quoted }, pos });
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                self.fatal = Some(SpecError {
                    file: self.file.to_string(),
                    line: pos.line,
                    column: pos.column,
                    path: self.child_path(),
                    message: format!("the spec is nested more than {MAX_DEPTH} levels deep"),
                    hint: Some("check for unbalanced brackets".to_string()),
                });
                return true;
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_anchor(anchor, pos);
                self.check_collection_tag(tag.is_some(), pos);
                let path = self.child_path();
                self.stack.push(Frame::Seq { items: Vec::new(), pos, path });
            }
            Event::MappingStart(anchor, tag) => {
                self.check_anchor(anchor, pos);
                self.check_collection_tag(tag.is_some(), pos);
                let path = self.child_path();
                self.stack.push(Frame::Map { entries: Vec::new(), pos, path, pending_key: None });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, pos, .. }) = self.stack.pop() {
                    self.complete(Node { kind: NodeKind::Seq(items), pos });
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { entries, pos, .. }) = self.stack.pop() {
                    self.complete(Node { kind: NodeKind::Map(entries), pos });
                }
            }
        }
        false
    }

    fn check_anchor(&mut self, anchor: usize, pos: Pos) {
        if anchor != 0 {
            self.error(
                pos,
                "YAML anchors (`&name`) are not supported".to_string(),
                "remove the anchor and write repeated values out in full",
            );
        }
    }

    fn check_collection_tag(&mut self, tagged: bool, pos: Pos) {
        if tagged {
            self.error(pos, "YAML tags are not supported".to_string(), "remove the tag");
        }
    }

    /// A node is finished: it becomes a list item, a key, a value, or the root.
    fn complete(&mut self, node: Node) {
        let mut error = None;
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, pending_key, path, .. }) => match pending_key.take() {
                Some(PendingKey { key, pos, keep }) => {
                    if keep {
                        entries.push(Entry { key, key_pos: pos, value: node });
                    }
                }
                None => {
                    let pos = node.pos;
                    match node.kind {
                        NodeKind::Scalar { text, .. } => {
                            let keep = match entries.iter().find(|entry| entry.key == text) {
                                Some(first) => {
                                    error = Some((
                                        pos,
                                        super::join_path(path, &text),
                                        format!("duplicate key `{text}`"),
                                        format!(
                                            "`{text}` is already set at line {}, column {}; remove one of them",
                                            first.key_pos.line, first.key_pos.column
                                        ),
                                    ));
                                    false
                                }
                                None => true,
                            };
                            *pending_key = Some(PendingKey { key: text, pos, keep });
                        }
                        NodeKind::Seq(_) | NodeKind::Map(_) => {
                            error = Some((
                                pos,
                                path.clone(),
                                "mapping keys must be plain strings, found a complex key".to_string(),
                                "write `name: value`".to_string(),
                            ));
                            *pending_key = Some(PendingKey { key: String::new(), pos, keep: false });
                        }
                    }
                }
            },
        }
        if let Some((pos, path, message, hint)) = error {
            self.error_at(pos, path, message, &hint);
        }
    }
}
