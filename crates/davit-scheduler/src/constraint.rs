//! Constraints: `attribute operator value`, checked against one node.
//!
//! Both sides are interpolated ([`resolve`]): `${node.id}`, `${node.name}` (alias `${node.unique.name}`,
//! `${node.unique.id}` for the id), `${node.datacenter}`, `${node.class}`, `${node.<key>}` and
//! `${attr.<key>}` (both `attributes[<key>]`); anything else is a literal. A `${…}` that names no
//! attribute of the node is *missing*.
//!
//! Semantics follow Nomad's `checkConstraint`: a missing side fails every operator except `!=`
//! (true unless both sides are missing) and `is_not_set`.
//!
//! | operator | true when |
//! |---|---|
//! | `=`, `!=` | the strings are (not) equal |
//! | `<`, `<=`, `>`, `>=` | numerically if both sides parse as `f64`, else lexically |
//! | `regexp` | the value, a regular expression, matches the attribute |
//! | `version` | the attribute is a version meeting every comma-separated bound of the value (`>= 1.2, < 2.0`) |
//! | `set_contains` | every comma-separated item of the value is in the attribute's comma-separated set |
//! | `is_set`, `is_not_set` | the attribute exists (does not) |

use std::borrow::Cow;
use std::cmp::Ordering;

use davit_api::objects::Node;
use davit_api::spec::{Constraint, ConstraintOperator};
use regex::Regex;

/// A constraint prepared once per scheduler run: its failure reason rendered and, when the value is a
/// literal, its regular expression or version requirement parsed.
#[derive(Debug)]
pub(crate) struct CheckedConstraint {
    constraint: Constraint,
    /// `constraint ${node.arch} = arm64`: the `filtered` key of a placement failure.
    pub(crate) reason: String,
    /// True when the constraint reads a node-unique value (`${node.id}`, `${node.name}`, `unique.*`
    /// attributes), so its answer cannot be shared between nodes of the same computed class.
    pub(crate) is_node_specific: bool,
    prepared: Prepared,
}

#[derive(Debug)]
enum Prepared {
    Nothing,
    Regex(Result<Regex, String>),
    Version(Result<Vec<VersionBound>, String>),
}

impl CheckedConstraint {
    pub(crate) fn new(constraint: &Constraint) -> CheckedConstraint {
        let reason = match constraint.operator {
            ConstraintOperator::IsSet | ConstraintOperator::IsNotSet => {
                format!("constraint {} {}", constraint.attribute, operator_str(constraint.operator))
            }
            _ => format!("constraint {} {} {}", constraint.attribute, operator_str(constraint.operator), constraint.value),
        };
        let value_is_literal = !constraint.value.contains("${");
        let prepared = match constraint.operator {
            ConstraintOperator::Regexp if value_is_literal => Prepared::Regex(compile_regex(&constraint.value)),
            ConstraintOperator::Version if value_is_literal => Prepared::Version(parse_requirement(&constraint.value)),
            _ => Prepared::Nothing,
        };
        CheckedConstraint {
            constraint: constraint.clone(),
            reason,
            is_node_specific: is_node_specific(&constraint.attribute) || is_node_specific(&constraint.value),
            prepared,
        }
    }

    pub(crate) fn is_met_by(&self, node: &Node) -> bool {
        let left = resolve(&self.constraint.attribute, node);
        let right = resolve(&self.constraint.value, node);
        use ConstraintOperator as Op;
        match self.constraint.operator {
            // They count allocations, not node properties: see `rules`.
            Op::DistinctHosts | Op::DistinctProperty => true,
            Op::IsSet => left.is_some(),
            Op::IsNotSet => left.is_none(),
            Op::NotEqual => left != right,
            operator => {
                let (Some(left), Some(right)) = (left, right) else { return false };
                match operator {
                    Op::Equal => left == right,
                    Op::Less => compare_order(&left, &right) == Ordering::Less,
                    Op::LessOrEqual => compare_order(&left, &right) != Ordering::Greater,
                    Op::Greater => compare_order(&left, &right) == Ordering::Greater,
                    Op::GreaterOrEqual => compare_order(&left, &right) != Ordering::Less,
                    Op::Regexp => match &self.prepared {
                        Prepared::Regex(regex) => regex.as_ref().is_ok_and(|regex| regex.is_match(&left)),
                        _ => compile_regex(&right).is_ok_and(|regex| regex.is_match(&left)),
                    },
                    Op::Version => match &self.prepared {
                        Prepared::Version(bounds) => bounds.as_ref().is_ok_and(|bounds| version_meets(&left, bounds)),
                        _ => parse_requirement(&right).is_ok_and(|bounds| version_meets(&left, &bounds)),
                    },
                    Op::SetContains => set_contains(&left, &right),
                    Op::IsSet | Op::IsNotSet | Op::NotEqual | Op::DistinctHosts | Op::DistinctProperty => unreachable!("handled above"),
                }
            }
        }
    }
}

/// The text users write for an operator.
pub(crate) fn operator_str(operator: ConstraintOperator) -> &'static str {
    match operator {
        ConstraintOperator::Equal => "=",
        ConstraintOperator::NotEqual => "!=",
        ConstraintOperator::Less => "<",
        ConstraintOperator::LessOrEqual => "<=",
        ConstraintOperator::Greater => ">",
        ConstraintOperator::GreaterOrEqual => ">=",
        ConstraintOperator::Regexp => "regexp",
        ConstraintOperator::Version => "version",
        ConstraintOperator::SetContains => "set_contains",
        ConstraintOperator::IsSet => "is_set",
        ConstraintOperator::IsNotSet => "is_not_set",
        ConstraintOperator::DistinctHosts => "distinct_hosts",
        ConstraintOperator::DistinctProperty => "distinct_property",
    }
}

/// Interpolates one side of a constraint against the node; `None` when it names a missing attribute.
pub(crate) fn resolve<'a>(target: &'a str, node: &'a Node) -> Option<Cow<'a, str>> {
    let Some(reference) = target.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) else {
        return Some(Cow::Borrowed(target));
    };
    let value = match reference {
        "node.id" | "node.unique.id" => &node.id,
        "node.name" | "node.unique.name" => &node.name,
        "node.datacenter" => &node.datacenter,
        "node.class" => &node.class,
        _ => {
            // `meta.` as Nomad's node metadata: here every node attribute is one.
            let key = ["node.", "attr.", "meta."].iter().find_map(|namespace| reference.strip_prefix(namespace))?;
            node.attributes.get(key)?
        }
    };
    Some(Cow::Borrowed(value.as_str()))
}

/// True when the expression reads a node-unique value, so that its answer differs between nodes of
/// one computed class.
pub(crate) fn is_node_specific(target: &str) -> bool {
    target.contains("${node.id}") || target.contains("${node.name}") || target.contains("unique.")
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|error| error.to_string())
}

fn compare_order(left: &str, right: &str) -> Ordering {
    match (left.trim().parse::<f64>(), right.trim().parse::<f64>()) {
        (Ok(left), Ok(right)) => left.partial_cmp(&right).unwrap_or(Ordering::Equal),
        _ => left.cmp(right),
    }
}

fn set_contains(set: &str, items: &str) -> bool {
    let members: Vec<&str> = set.split(',').map(str::trim).collect();
    items.split(',').map(str::trim).filter(|item| !item.is_empty()).all(|item| members.contains(&item))
}

/// A dotted numeric version with an optional pre-release suffix: `1.2.3`, `v6.1.0-rc2`, `5.15.0+build`.
///
/// Ordering: numeric segments first (missing segments count as 0, so `1.2 == 1.2.0`); with equal
/// segments a pre-release is lower than the release, and pre-releases compare as text.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    segments: Vec<u64>,
    prerelease: Option<String>,
}

impl Version {
    pub(crate) fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let text = text.split_once('+').map_or(text, |(version, _build)| version);
        let (numbers, prerelease) = match text.split_once('-') {
            Some((numbers, prerelease)) => (numbers, Some(prerelease.to_string())),
            None => (text, None),
        };
        let segments = numbers.split('.').map(|segment| segment.parse::<u64>().ok()).collect::<Option<Vec<u64>>>()?;
        Some(Version { segments, prerelease })
    }

    fn segment(&self, position: usize) -> u64 {
        self.segments.get(position).copied().unwrap_or(0)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        let length = self.segments.len().max(other.segments.len());
        (0..length)
            .map(|position| self.segment(position).cmp(&other.segment(position)))
            .find(|ordering| ordering.is_ne())
            .unwrap_or(Ordering::Equal)
            .then_with(|| match (&self.prerelease, &other.prerelease) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(mine), Some(theirs)) => mine.cmp(theirs),
            })
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One bound of a version requirement, e.g. `>= 1.2`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VersionBound {
    operator: VersionOperator,
    version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VersionOperator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    /// `~> 1.2.3`: at least 1.2.3, below 1.3; `~> 1.2`: at least 1.2, below 2.
    Pessimistic,
}

/// Parses `>= 1.2, < 2.0`; a bound without an operator means `=`.
fn parse_requirement(text: &str) -> Result<Vec<VersionBound>, String> {
    const OPERATORS: [(&str, VersionOperator); 8] = [
        ("~>", VersionOperator::Pessimistic),
        (">=", VersionOperator::GreaterOrEqual),
        ("<=", VersionOperator::LessOrEqual),
        ("!=", VersionOperator::NotEqual),
        ("==", VersionOperator::Equal),
        (">", VersionOperator::Greater),
        ("<", VersionOperator::Less),
        ("=", VersionOperator::Equal),
    ];
    text.split(',')
        .map(|bound| {
            let bound = bound.trim();
            let (operator, rest) = OPERATORS
                .iter()
                .find_map(|(prefix, operator)| bound.strip_prefix(prefix).map(|rest| (*operator, rest)))
                .unwrap_or((VersionOperator::Equal, bound));
            let version = Version::parse(rest).ok_or_else(|| format!("{bound:?} is not a version bound"))?;
            Ok(VersionBound { operator, version })
        })
        .collect()
}

fn version_meets(text: &str, bounds: &[VersionBound]) -> bool {
    let Some(version) = Version::parse(text) else { return false };
    bounds.iter().all(|bound| match bound.operator {
        VersionOperator::Equal => version == bound.version,
        VersionOperator::NotEqual => version != bound.version,
        VersionOperator::Less => version < bound.version,
        VersionOperator::LessOrEqual => version <= bound.version,
        VersionOperator::Greater => version > bound.version,
        VersionOperator::GreaterOrEqual => version >= bound.version,
        VersionOperator::Pessimistic => version >= bound.version && version < pessimistic_ceiling(&bound.version),
    })
}

fn pessimistic_ceiling(version: &Version) -> Version {
    let mut segments = version.segments.clone();
    if segments.len() > 1 {
        segments.pop();
    }
    if let Some(last) = segments.last_mut() {
        *last += 1;
    }
    Version { segments, prerelease: None }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node() -> Node {
        Node {
            id: "node-1".to_string(),
            name: "alpha".to_string(),
            class: "fast".to_string(),
            attributes: BTreeMap::from(
                [
                    ("cpu.arch", "x86_64"),
                    ("cpu.cores", "8"),
                    ("kernel.version", "6.1.0-rc2"),
                    ("os.version", "22.04"),
                    ("tags", "ssd, gpu,blue"),
                    ("unique.hostname", "alpha.local"),
                ]
                .map(|(key, value)| (key.to_string(), value.to_string())),
            ),
            ..davit_api::testing::node("node-1")
        }
    }

    fn parse_operator(text: &str) -> ConstraintOperator {
        use ConstraintOperator as Op;
        [
            Op::Equal,
            Op::NotEqual,
            Op::Less,
            Op::LessOrEqual,
            Op::Greater,
            Op::GreaterOrEqual,
            Op::Regexp,
            Op::Version,
            Op::SetContains,
            Op::IsSet,
            Op::IsNotSet,
        ]
        .into_iter()
        .find(|operator| operator_str(*operator) == text)
        .unwrap_or_else(|| panic!("unknown operator {text}"))
    }

    /// Each row: attribute, operator, value, expected. One table covers every operator: pass, fail and
    /// missing attribute.
    #[test]
    fn operators() {
        let cases: &[(&str, &str, &str, bool)] = &[
            // Interpolation.
            ("${node.id}", "=", "node-1", true),
            ("${node.unique.id}", "=", "node-1", true),
            ("${node.name}", "=", "alpha", true),
            ("${node.unique.name}", "=", "alpha", true),
            ("${node.datacenter}", "=", "dc1", true),
            ("${node.class}", "=", "fast", true),
            ("${node.cpu.arch}", "=", "x86_64", true),
            ("${attr.cpu.arch}", "=", "x86_64", true),
            ("${meta.cpu.arch}", "=", "x86_64", true),
            ("${attr.unique.hostname}", "=", "alpha.local", true),
            ("x86_64", "=", "${attr.cpu.arch}", true),
            // = and !=.
            ("${attr.cpu.arch}", "=", "arm64", false),
            ("${attr.missing}", "=", "arm64", false),
            ("${attr.cpu.arch}", "!=", "arm64", true),
            ("${attr.cpu.arch}", "!=", "x86_64", false),
            ("${attr.missing}", "!=", "arm64", true),
            ("${attr.missing}", "!=", "${attr.also_missing}", false),
            // Ordering: numeric when both sides are numbers, else lexical.
            ("${attr.cpu.cores}", ">", "4", true),
            ("${attr.cpu.cores}", ">", "10", false), // Numeric: lexically "8" > "10" would hold.
            ("${attr.cpu.cores}", "<", "10", true),
            ("${attr.cpu.cores}", ">=", "8", true),
            ("${attr.cpu.cores}", "<=", "8.0", true),
            ("${attr.cpu.cores}", "<", "8", false),
            ("${attr.cpu.arch}", ">", "arm64", true),
            ("${attr.cpu.arch}", "<", "arm64", false),
            ("${attr.missing}", "<", "10", false),
            ("${attr.missing}", ">=", "0", false),
            // regexp.
            ("${attr.cpu.arch}", "regexp", "^x86", true),
            ("${attr.cpu.arch}", "regexp", "^arm", false),
            ("${attr.cpu.arch}", "regexp", "([unclosed", false),
            ("${attr.missing}", "regexp", ".*", false),
            // version.
            ("${attr.os.version}", "version", ">= 20.04, < 24.0", true),
            ("${attr.os.version}", "version", "> 22.04", false),
            ("${attr.os.version}", "version", "22.4", true),
            ("${attr.os.version}", "version", "~> 22.0", true),
            ("${attr.os.version}", "version", "~> 21.0.1", false),
            ("${attr.kernel.version}", "version", ">= 6.0", true),
            ("${attr.kernel.version}", "version", ">= 6.1.0", false),
            ("${attr.kernel.version}", "version", "< 6.1.0", true),
            ("${attr.kernel.version}", "version", ">= 6.1.0-rc1", true),
            ("${attr.cpu.arch}", "version", ">= 1.0", false),
            ("${attr.os.version}", "version", ">= banana", false),
            ("${attr.missing}", "version", ">= 1.0", false),
            // set_contains.
            ("${attr.tags}", "set_contains", "gpu", true),
            ("${attr.tags}", "set_contains", "ssd,blue", true),
            ("${attr.tags}", "set_contains", "gpu, nvme", false),
            ("${attr.missing}", "set_contains", "gpu", false),
            // is_set and is_not_set.
            ("${attr.cpu.arch}", "is_set", "", true),
            ("${attr.missing}", "is_set", "", false),
            ("${attr.cpu.arch}", "is_not_set", "", false),
            ("${attr.missing}", "is_not_set", "", true),
        ];
        let node = node();
        let mut wrong = Vec::new();
        for &(attribute, operator, value, expected) in cases {
            let constraint = Constraint { attribute: attribute.to_string(), operator: parse_operator(operator), value: value.to_string() };
            let actual = CheckedConstraint::new(&constraint).is_met_by(&node);
            if actual != expected {
                wrong.push(format!("{attribute} {operator} {value:?}: expected {expected}, got {actual}"));
            }
        }
        assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    }

    #[test]
    fn reasons_and_node_specific() {
        let check = |attribute: &str, operator: ConstraintOperator, value: &str| {
            let checked = CheckedConstraint::new(&Constraint { attribute: attribute.into(), operator, value: value.into() });
            (checked.reason, checked.is_node_specific)
        };
        assert_eq!(check("${node.arch}", ConstraintOperator::Equal, "arm64"), ("constraint ${node.arch} = arm64".into(), false));
        assert_eq!(check("${attr.gpu}", ConstraintOperator::IsSet, ""), ("constraint ${attr.gpu} is_set".into(), false));
        assert!(check("${node.id}", ConstraintOperator::NotEqual, "x").1);
        assert!(check("${node.name}", ConstraintOperator::Regexp, "^a").1);
        assert!(check("${attr.unique.hostname}", ConstraintOperator::Equal, "a").1);
        assert!(check("a", ConstraintOperator::Equal, "${node.unique.name}").1);
    }

    #[test]
    fn version_ordering() {
        let version = |text| Version::parse(text).unwrap();
        assert_eq!(version("1.2"), version("1.2.0"));
        assert!(version("1.10") > version("1.9"));
        assert!(version("1.2.0-beta") < version("1.2.0"));
        assert!(version("1.2.0-alpha") < version("1.2.0-beta"));
        assert!(version("1.2.0-beta") > version("1.1.9"));
        assert_eq!(version("v2.0.0+build5"), version("2"));
        assert_eq!(Version::parse("1.x"), None);
    }
}
