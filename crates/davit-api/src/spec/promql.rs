//! A PromQL syntax check (Prometheus 2.x grammar), so that a `prometheus` scaling metric with a query that
//! does not parse is refused when the job is submitted rather than failing at every autoscaler sync.
//!
//! It checks the syntax (selectors and their matchers, durations, subqueries, `offset` and `@`, aggregations with
//! `by`/`without`, binary operators with `bool`, `on`/`ignoring` and `group_left`/`group_right`, function names
//! and parentheses), not the types of the expressions: Prometheus itself says whether a range vector is
//! used where an instant vector is needed.

/// Where (a character offset in the query) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromqlError {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for PromqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at character {} of the query: {}", self.offset + 1, self.message)
    }
}

/// Most characters in a query.
pub const MAX_QUERY_CHARS: usize = 4096;
/// Deepest nesting of parentheses, braces and calls.
const MAX_DEPTH: usize = 64;

/// Checks that `query` is a PromQL expression.
pub fn check(query: &str) -> Result<(), PromqlError> {
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(PromqlError { offset: 0, message: format!("the query is longer than {MAX_QUERY_CHARS} characters") });
    }
    let tokens = lex(query)?;
    let mut parser = Parser { tokens, position: 0, depth: 0 };
    parser.expression()?;
    match parser.peek() {
        Token { kind: Kind::End, .. } => Ok(()),
        token => {
            Err(PromqlError { offset: token.offset, message: format!("unexpected {} after the end of the expression", token.describe()) })
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Identifier(String),
    Number,
    Duration,
    String,
    /// Punctuation and operators: `(`, `)`, `{`, `}`, `[`, `]`, `,`, `:`, `@`, `=`, `!=`, `=~`, `!~`, `==`, `<`,
    /// `<=`, `>`, `>=`, `+`, `-`, `*`, `/`, `%`, `^`.
    Symbol(&'static str),
    End,
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    offset: usize,
}

impl Token {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Identifier(name) => format!("`{name}`"),
            Kind::Number => "a number".to_string(),
            Kind::Duration => "a duration".to_string(),
            Kind::String => "a string".to_string(),
            Kind::Symbol(symbol) => format!("`{symbol}`"),
            Kind::End => "the end of the query".to_string(),
        }
    }
}

const SYMBOLS: [&str; 25] =
    ["!=", "=~", "!~", "==", "<=", ">=", "(", ")", "{", "}", "[", "]", ",", ":", "@", "=", "<", ">", "+", "-", "*", "/", "%", "^", ";"];

fn lex(query: &str) -> Result<Vec<Token>, PromqlError> {
    let chars: Vec<char> = query.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(PromqlError { offset: start, message: "unterminated string".to_string() }),
                    Some('\\') if c != '`' => i += 2,
                    Some(&quote) if quote == c => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            tokens.push(Token { kind: Kind::String, offset: start });
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number (1, 1.5, 1e3, 0x1f) or a duration (5m, 1h30m, 100ms).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                // An exponent's sign belongs to the number.
                if (chars[i] == 'e' || chars[i] == 'E') && matches!(chars.get(i + 1), Some('+') | Some('-')) && !is_hex(&chars[start..i]) {
                    i += 1;
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let kind = if is_duration(&text) {
                Kind::Duration
            } else if is_number(&text) {
                Kind::Number
            } else {
                return Err(PromqlError {
                    offset: start,
                    message: format!("`{text}` is neither a number nor a duration (e.g. 5m, 1h30m)"),
                });
            };
            tokens.push(Token { kind, offset: start });
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' && chars.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic()) {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            tokens.push(Token { kind: Kind::Identifier(chars[start..i].iter().collect()), offset: start });
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let Some(symbol) = SYMBOLS.iter().find(|symbol| rest.starts_with(**symbol)) else {
                return Err(PromqlError { offset: start, message: format!("unexpected character `{c}`") });
            };
            if *symbol == ";" {
                return Err(PromqlError { offset: start, message: "unexpected character `;`".to_string() });
            }
            i += symbol.len();
            tokens.push(Token { kind: Kind::Symbol(symbol), offset: start });
        }
    }
    tokens.push(Token { kind: Kind::End, offset: chars.len() });
    Ok(tokens)
}

fn is_hex(chars: &[char]) -> bool {
    chars.len() >= 2 && chars[0] == '0' && (chars[1] == 'x' || chars[1] == 'X')
}

fn is_number(text: &str) -> bool {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// `1h30m`, `5m`, `100ms`, `1d`, `2w`, `1y`: one or more number-unit pairs, units from largest to smallest.
fn is_duration(text: &str) -> bool {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    let mut rest = text;
    let mut last_unit = None;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = if rest.starts_with("ms") { "ms" } else { &rest[..rest.chars().next().map_or(0, char::len_utf8)] };
        let Some(position) = UNITS.iter().position(|u| *u == unit) else { return false };
        if last_unit.is_some_and(|last| position <= last) {
            return false;
        }
        last_unit = Some(position);
        rest = &rest[unit.len()..];
    }
    true
}

const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Prometheus' functions (2.x and 3.x).
const FUNCTIONS: [&str; 86] = [
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "info",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
    "ts_of_first_over_time",
    "ts_of_last_over_time",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
    "first_over_time",
    "histogram_quantiles",
    "limit_ratio",
    "limitk",
];

/// Binary operators by precedence, lowest first; `^` (highest) is right-associative.
const BINARY: [&[&str]; 6] =
    [&["or"], &["and", "unless"], &["==", "!=", "<=", "<", ">=", ">"], &["+", "-"], &["*", "/", "%", "atan2"], &["^"]];

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
}

type Parsed = Result<(), PromqlError>;

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.position]
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        &self.tokens[(self.position + ahead).min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let token = self.tokens[self.position].clone();
        if self.position + 1 < self.tokens.len() {
            self.position += 1;
        }
        token
    }

    fn is_symbol(&self, symbol: &str) -> bool {
        matches!(&self.peek().kind, Kind::Symbol(known) if *known == symbol)
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().kind, Kind::Identifier(name) if name.eq_ignore_ascii_case(keyword))
    }

    fn error<T>(&self, expected: &str) -> Result<T, PromqlError> {
        let token = self.peek();
        Err(PromqlError { offset: token.offset, message: format!("expected {expected}, found {}", token.describe()) })
    }

    fn expect_symbol(&mut self, symbol: &str) -> Parsed {
        if self.is_symbol(symbol) {
            self.next();
            Ok(())
        } else {
            self.error(&format!("`{symbol}`"))
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Parser) -> Result<T, PromqlError>) -> Result<T, PromqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(PromqlError { offset: self.peek().offset, message: format!("nested deeper than {MAX_DEPTH}") });
        }
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn expression(&mut self) -> Parsed {
        self.binary(0)
    }

    /// Operators of precedence `level` and above.
    fn binary(&mut self, level: usize) -> Parsed {
        if level == BINARY.len() {
            return self.unary();
        }
        self.binary(level + 1)?;
        while self.binary_operator(level) {
            self.next();
            if self.is_keyword("bool") {
                self.next();
            }
            if self.is_keyword("on") || self.is_keyword("ignoring") {
                self.next();
                self.label_list()?;
                if self.is_keyword("group_left") || self.is_keyword("group_right") {
                    self.next();
                    if self.is_symbol("(") {
                        self.label_list()?;
                    }
                }
            }
            // `^` is right-associative: its right side is parsed at its own level.
            let right = if BINARY[level] == ["^"] { level } else { level + 1 };
            self.nested(|parser| parser.binary(right))?;
        }
        Ok(())
    }

    fn binary_operator(&self, level: usize) -> bool {
        BINARY[level].iter().any(|operator| match &self.peek().kind {
            Kind::Symbol(symbol) => symbol == operator,
            Kind::Identifier(name) => name.eq_ignore_ascii_case(operator),
            _ => false,
        })
    }

    fn unary(&mut self) -> Parsed {
        if self.is_symbol("-") || self.is_symbol("+") {
            self.next();
            return self.nested(Parser::unary);
        }
        self.postfix()
    }

    /// A primary expression with its `[range]`, `[range:step]`, `offset` and `@` modifiers.
    fn postfix(&mut self) -> Parsed {
        self.primary()?;
        loop {
            if self.is_symbol("[") {
                self.next();
                self.duration()?;
                if self.is_symbol(":") {
                    self.next();
                    if !self.is_symbol("]") {
                        self.duration()?;
                    }
                }
                self.expect_symbol("]")?;
            } else if self.is_keyword("offset") {
                self.next();
                if self.is_symbol("-") {
                    self.next();
                }
                self.duration()?;
            } else if self.is_symbol("@") {
                self.next();
                if self.is_symbol("-") || self.is_symbol("+") {
                    self.next();
                }
                match &self.peek().kind {
                    Kind::Number => {
                        self.next();
                    }
                    Kind::Identifier(name) if name == "start" || name == "end" => {
                        self.next();
                        self.expect_symbol("(")?;
                        self.expect_symbol(")")?;
                    }
                    _ => return self.error("a Unix time or start() or end() after `@`"),
                }
            } else {
                return Ok(());
            }
        }
    }

    fn duration(&mut self) -> Parsed {
        if self.peek().kind == Kind::Duration {
            self.next();
            Ok(())
        } else {
            self.error("a duration (e.g. 5m)")
        }
    }

    fn primary(&mut self) -> Parsed {
        let token = self.peek().clone();
        match &token.kind {
            Kind::Number | Kind::String => {
                self.next();
                Ok(())
            }
            Kind::Identifier(name) if name.eq_ignore_ascii_case("inf") || name.eq_ignore_ascii_case("nan") => {
                self.next();
                Ok(())
            }
            Kind::Symbol("(") => {
                self.next();
                self.nested(Parser::expression)?;
                self.expect_symbol(")")
            }
            Kind::Symbol("{") => self.matchers(),
            Kind::Identifier(name) => {
                let name = name.clone();
                let lower = name.to_ascii_lowercase();
                if AGGREGATIONS.contains(&lower.as_str()) && (self.peek_at(1).kind == Kind::Symbol("(") || self.is_grouping_at(1)) {
                    return self.nested(Parser::aggregation);
                }
                if self.peek_at(1).kind == Kind::Symbol("(") {
                    if !FUNCTIONS.contains(&name.as_str()) {
                        return Err(PromqlError { offset: token.offset, message: format!("unknown function `{name}`") });
                    }
                    self.next();
                    return self.nested(Parser::arguments);
                }
                if ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"].contains(&lower.as_str()) {
                    return self.error("an expression");
                }
                // A metric name, optionally with matchers.
                self.next();
                if self.is_symbol("{") { self.matchers() } else { Ok(()) }
            }
            _ => self.error("an expression"),
        }
    }

    fn is_grouping_at(&self, ahead: usize) -> bool {
        matches!(&self.peek_at(ahead).kind, Kind::Identifier(name) if name.eq_ignore_ascii_case("by") || name.eq_ignore_ascii_case("without"))
    }

    /// `sum by (a) (expr)`, `sum(expr) without (a)`, `topk(3, expr)`.
    fn aggregation(&mut self) -> Parsed {
        self.next();
        let mut grouped = false;
        if self.is_grouping_at(0) {
            self.next();
            self.label_list()?;
            grouped = true;
        }
        self.arguments()?;
        if !grouped && self.is_grouping_at(0) {
            self.next();
            self.label_list()?;
        }
        Ok(())
    }

    /// `( expr, expr, … )` (possibly empty).
    fn arguments(&mut self) -> Parsed {
        self.expect_symbol("(")?;
        if self.is_symbol(")") {
            self.next();
            return Ok(());
        }
        loop {
            self.expression()?;
            if self.is_symbol(",") {
                self.next();
                continue;
            }
            return self.expect_symbol(")");
        }
    }

    /// `(label, label, …)`.
    fn label_list(&mut self) -> Parsed {
        self.expect_symbol("(")?;
        loop {
            match &self.peek().kind {
                Kind::Symbol(")") => {
                    self.next();
                    return Ok(());
                }
                Kind::Identifier(_) => {
                    self.next();
                    if self.is_symbol(",") {
                        self.next();
                    } else if !self.is_symbol(")") {
                        return self.error("`,` or `)`");
                    }
                }
                _ => return self.error("a label name"),
            }
        }
    }

    /// `{label="value", label=~"re", …}`; an entry may also be a quoted metric name.
    fn matchers(&mut self) -> Parsed {
        self.expect_symbol("{")?;
        loop {
            match &self.peek().kind {
                Kind::Symbol("}") => {
                    self.next();
                    return Ok(());
                }
                Kind::Identifier(_) | Kind::String => {
                    let quoted_name = self.peek().kind == Kind::String;
                    self.next();
                    if !(quoted_name && (self.is_symbol(",") || self.is_symbol("}"))) {
                        if !["=", "!=", "=~", "!~"].iter().any(|operator| self.is_symbol(operator)) {
                            return self.error("a matcher operator (=, !=, =~ or !~)");
                        }
                        self.next();
                        if self.peek().kind != Kind::String {
                            return self.error("a quoted label value");
                        }
                        self.next();
                    }
                    if self.is_symbol(",") {
                        self.next();
                    } else if !self.is_symbol("}") {
                        return self.error("`,` or `}`");
                    }
                }
                _ => return self.error("a label matcher"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_queries_parse() {
        for query in [
            "up",
            "sum(rate(davit_proxy_requests_total{service=\"web\"}[1m]))",
            "sum by (job) (rate(http_requests_total{code=~\"5..\", method!=\"GET\"}[5m])) / ignoring(code) group_left sum by (job) (rate(http_requests_total[5m]))",
            "histogram_quantile(0.99, sum(rate(davit_proxy_request_duration_seconds_bucket[30s])) by (le))",
            "topk(3, max_over_time(x[1h:5m] offset 1d))",
            "-a ^ 2 ^ 0.5 + 1e3 - 0x1f * Inf",
            "a > bool 2 and on(instance) b unless c or d",
            "rate(x[1h30m] @ 1700000000)",
            "x @ -100",
            "count_values(\"version\", build_info)",
            "{__name__=~\"davit_.*\", job=\"davit\",}",
            "avg(x) without (instance)",
            "quantile(0.9, y) # a comment",
            "vector(1) + scalar(up) + time()",
        ] {
            assert_eq!(check(query), Ok(()), "{query}");
        }
    }

    #[test]
    fn broken_queries_are_refused_where_they_break() {
        let offset = |query: &str| check(query).unwrap_err();
        assert_eq!(offset("sum(rate(x[5m])").message, "expected `)`, found the end of the query");
        assert_eq!(offset("rate(x[5])").offset, 7);
        assert_eq!(offset("rat(x[5m])").message, "unknown function `rat`");
        assert_eq!(offset("x{job=web}").message, "expected a quoted label value, found `web`");
        assert_eq!(offset("x{job}").message, "expected a matcher operator (=, !=, =~ or !~), found `}`");
        assert_eq!(offset("a + ").message, "expected an expression, found the end of the query");
        assert_eq!(offset("x[5m:1x]").offset, 2 + 3);
        assert_eq!(offset("\"open").message, "unterminated string");
        assert_eq!(offset("a b").message, "unexpected `b` after the end of the expression");
        assert_eq!(offset("sum by job (x)").message, "expected `(`, found `job`");
        assert!(check(&"(".repeat(100)).unwrap_err().message.contains("nested deeper"));
        assert!(offset("x; drop").message.contains("`;`"));
    }
}
