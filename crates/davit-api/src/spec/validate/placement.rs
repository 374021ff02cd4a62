//! Constraints, affinities and spreads: attributes, operators, regexes, version ranges and the jobs they name.

use std::collections::HashMap;

use super::{Problem, dns_label_hint, dns_label_problem};
use crate::spec::parse::{Ctx, suggest};
use crate::spec::{AllocAffinity, Constraint, ConstraintOperator, GroupSpec, JobSpec};

pub(super) fn check_constraints(ctx: &Ctx, path: &str, constraints: &[Constraint]) {
    for (index, constraint) in constraints.iter().enumerate() {
        let path = format!("{path}[{index}]");
        match constraint.operator {
            ConstraintOperator::DistinctHosts => check_distinct_hosts(ctx, &path, constraint),
            ConstraintOperator::DistinctProperty => {
                if constraint.attribute.trim().is_empty() {
                    ctx.report(
                        &format!("{path}.attribute"),
                        "distinct_property needs the attribute whose values it counts allocations per",
                        Some("e.g. {operator: distinct_property, attribute: \"${attr.rack}\", value: \"2\"}".to_string()),
                    );
                }
                check_attribute(ctx, &format!("{path}.attribute"), &constraint.attribute, "constraint");
                check_distinct_property_value(ctx, &format!("{path}.value"), &constraint.value);
            }
            _ => check_constraint(ctx, &path, constraint, "constraint"),
        }
    }
}

/// `distinct_hosts` takes neither attribute nor value (Nomad's `value: "true"` is accepted).
fn check_distinct_hosts(ctx: &Ctx, path: &str, constraint: &Constraint) {
    if !constraint.attribute.trim().is_empty() {
        ctx.report(
            &format!("{path}.attribute"),
            "distinct_hosts takes no attribute: it allows one allocation per node",
            Some("remove `attribute`, or use operator distinct_property to limit allocations per attribute value".to_string()),
        );
    }
    if !matches!(constraint.value.trim(), "" | "true") {
        ctx.report(
            &format!("{path}.value"),
            format!("distinct_hosts takes no value, found `{}`", constraint.value),
            Some("remove `value`; to allow several allocations per node, remove the constraint".to_string()),
        );
    }
}

/// The `value` of `distinct_property`: empty (1) or how many allocations one attribute value may hold.
fn check_distinct_property_value(ctx: &Ctx, path: &str, value: &str) {
    let value = value.trim();
    if !value.is_empty() && !value.parse::<u32>().is_ok_and(|limit| limit >= 1) {
        ctx.report(
            path,
            format!("distinct_property value must be a whole number of at least 1 (allocations per attribute value), found `{value}`"),
            Some("e.g. value: \"2\" allows two allocations per value; leave it out for one".to_string()),
        );
    }
}

/// An attribute expression such as `${attr.zone}`; `what` names the field's owner in messages.
fn check_attribute(ctx: &Ctx, path: &str, attribute: &str, what: &str) {
    let trimmed = attribute.trim();
    if trimmed.is_empty() {
        ctx.report(path, format!("the {what} needs an attribute"), Some("e.g. attribute: \"${node.arch}\"".to_string()));
    } else if !(trimmed.starts_with("${") && trimmed.ends_with('}') && trimmed.len() > 3) {
        let inner = trimmed.trim_start_matches("${").trim_start_matches('$').trim_end_matches('}');
        ctx.report(
            path,
            format!("{what} attribute must look like `${{node.arch}}`, found `{attribute}`"),
            Some(format!("write \"${{{}}}\"", with_namespace(inner))),
        );
    } else {
        // Only `node.*` (node fields, then attributes) and `attr.*`/`meta.*` are looked up: anything else never matches.
        let inner = &trimmed[2..trimmed.len() - 1];
        if !has_namespace(inner) {
            ctx.report(
                path,
                format!("{what} attribute `{attribute}` names neither a node field (node.name, node.class, …) nor a node attribute (attr.NAME or meta.NAME)"),
                Some(format!("write \"${{{}}}\"", with_namespace(inner))),
            );
        }
    }
}

fn has_namespace(inner: &str) -> bool {
    ["node.", "attr.", "meta."].iter().any(|namespace| inner.starts_with(namespace))
}

/// `zone` → `attr.zone`; a name with a namespace stays.
fn with_namespace(inner: &str) -> String {
    if has_namespace(inner) { inner.to_string() } else { format!("attr.{inner}") }
}

/// One node test (a constraint, or the match of a node affinity): attribute, value, regexp, version.
fn check_constraint(ctx: &Ctx, path: &str, constraint: &Constraint, what: &str) {
    {
        check_attribute(ctx, &format!("{path}.attribute"), &constraint.attribute, what);
        let operator = operator_name(constraint.operator);
        let value_path = format!("{path}.value");
        match constraint.operator {
            ConstraintOperator::IsSet | ConstraintOperator::IsNotSet => {}
            ConstraintOperator::DistinctHosts | ConstraintOperator::DistinctProperty => {}
            _ if constraint.value.is_empty() => {
                ctx.report(&value_path, format!("the {what} needs a value for operator `{operator}`"), None);
            }
            ConstraintOperator::Regexp => {
                if let Err(error) = regex::Regex::new(&constraint.value) {
                    ctx.report(
                        &value_path,
                        format!("invalid regular expression `{}`: {}", constraint.value, regex_reason(&error)),
                        Some("the value of a `regexp` constraint is a Rust regex, e.g. \"^x86_64|aarch64$\"".to_string()),
                    );
                }
            }
            ConstraintOperator::Version => {
                if let Err(reason) = check_version_constraint(&constraint.value) {
                    ctx.report(
                        &value_path,
                        format!("invalid version constraint `{}`: {reason}", constraint.value),
                        Some("write comma-separated comparisons, e.g. \">= 1.2, < 2.0\"".to_string()),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Group placement rules: labels, node affinities, spreads, and alloc (anti-)affinities.
pub(super) fn check_placement(ctx: &Ctx, path: &str, group: &GroupSpec, spec: &JobSpec) {
    for key in group.labels.keys() {
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '=' || c == ',') {
            ctx.report_key(
                &format!("{path}.labels.{key}"),
                format!("label name `{key}` is not valid: use a non-empty name without spaces, '=' or ','"),
                Some("e.g. labels: {tier: web}".to_string()),
            );
        }
    }
    for (index, affinity) in group.affinities.iter().enumerate() {
        let item = format!("{path}.affinities[{index}]");
        if affinity.operator.is_distinct() {
            ctx.report(
                &format!("{item}.operator"),
                format!("operator `{}` is not a node test and cannot be an affinity", operator_name(affinity.operator)),
                Some("put distinct_hosts and distinct_property under `constraints:`".to_string()),
            );
        } else {
            check_constraint(ctx, &item, &affinity.as_constraint(), "affinity");
        }
        if affinity.weight == 0 || !(-100..=100).contains(&affinity.weight) {
            ctx.report(
                &format!("{item}.weight"),
                format!("affinity weight must be from -100 to 100 and not 0, found `{}`", affinity.weight),
                Some("positive weights attract, negative weights repel; e.g. weight: 50".to_string()),
            );
        }
    }
    let mut spread_attributes: HashMap<&str, usize> = HashMap::new();
    for (index, spread) in group.spread.iter().enumerate() {
        let item = format!("{path}.spread[{index}]");
        let attribute_path = format!("{item}.attribute");
        check_attribute(ctx, &attribute_path, &spread.attribute, "spread");
        if !ctx.is_reported(&attribute_path) {
            match spread_attributes.get(spread.attribute.trim()) {
                Some(first) => ctx.report(
                    &attribute_path,
                    format!("spread[{first}] already spreads over `{}`", spread.attribute),
                    Some("one spread per attribute: merge their targets".to_string()),
                ),
                None => drop(spread_attributes.insert(spread.attribute.trim(), index)),
            }
        }
        if !(1..=100).contains(&spread.weight) {
            ctx.report(&format!("{item}.weight"), format!("spread weight must be from 1 to 100, found `{}`", spread.weight), None);
        }
        let mut sum: u64 = 0;
        for (value, percent) in &spread.targets {
            if value.trim().is_empty() {
                ctx.report_key(&format!("{item}.targets.{value}"), "a spread target needs an attribute value", None);
            }
            if *percent > 100 {
                ctx.report(
                    &format!("{item}.targets.{value}"),
                    format!("spread target `{value}` must be a percentage from 0 to 100, found `{percent}`"),
                    None,
                );
            }
            sum += u64::from(*percent);
        }
        if sum > 100 && spread.targets.values().all(|percent| *percent <= 100) {
            let listed: Vec<String> = spread.targets.iter().map(|(value, percent)| format!("{value}: {percent}")).collect();
            ctx.report(
                &format!("{item}.targets"),
                format!("spread targets add up to {sum}%, more than 100% ({})", listed.join(", ")),
                Some("lower the percentages; values not listed share what is left of 100%".to_string()),
            );
        }
    }
    for (field, terms) in [("alloc_affinities", &group.alloc_affinities), ("anti_affinities", &group.anti_affinities)] {
        for (index, term) in terms.iter().enumerate() {
            check_alloc_affinity(ctx, &format!("{path}.{field}[{index}]"), term, spec);
        }
    }
}

/// One alloc affinity or anti-affinity: a non-empty selector naming existing groups, a topology
/// attribute, and either `required` or a weight.
fn check_alloc_affinity(ctx: &Ctx, path: &str, term: &AllocAffinity, spec: &JobSpec) {
    let example = "e.g. {group: db}, {job: cache}, or {labels: {tier: web}}";
    if term.job.is_none() && term.group.is_none() && term.labels.is_empty() {
        ctx.report(
            path,
            "the selector is empty: name the allocations with `job`, `group` or `labels`",
            Some(format!("{example}; `group` alone means a group of this job")),
        );
    }
    for (field, name) in [("job", &term.job), ("group", &term.group)] {
        let Some(name) = name else { continue };
        let field_path = format!("{path}.{field}");
        match dns_label_problem(name) {
            Some(Problem::Missing) => ctx.report(&field_path, format!("`{field}` must not be empty"), Some(example.to_string())),
            Some(Problem::Invalid(reason)) => {
                ctx.report(&field_path, format!("{field} name `{name}` is not valid: {reason}"), dns_label_hint(name))
            }
            None => {}
        }
    }
    let same_job = term.job.as_ref().is_none_or(|job| *job == spec.name);
    if let Some(group) = term.group.as_ref().filter(|group| same_job && dns_label_problem(group).is_none())
        && spec.group(group).is_none()
    {
        let names: Vec<&str> = spec.groups.iter().map(|group| group.name.as_str()).filter(|name| !name.is_empty()).collect();
        let hint = match suggest(group, names.iter().copied()) {
            Some(name) => format!("did you mean `{name}`? (add `job:` to select a group of another job)"),
            None => format!("this job's groups: {}; add `job:` to select a group of another job", names.join(", ")),
        };
        ctx.report(&format!("{path}.group"), format!("job `{}` has no group `{group}`", spec.name), Some(hint));
    }
    for key in term.labels.keys() {
        if key.is_empty() {
            ctx.report_key(&format!("{path}.labels.{key}"), "a label name must not be empty", None);
        }
    }
    if let Some(topology) = &term.topology {
        check_attribute(ctx, &format!("{path}.topology"), topology, "topology");
    }
    match term.weight {
        Some(weight) if term.required => ctx.report(
            &format!("{path}.weight"),
            format!("weight {weight} has no effect with `required: true`"),
            Some("remove `weight` (a required rule filters nodes), or remove `required` for a preference".to_string()),
        ),
        Some(weight) if !(1..=100).contains(&weight) => {
            ctx.report(&format!("{path}.weight"), format!("weight must be from 1 to 100, found `{weight}`"), None)
        }
        _ => {}
    }
}

fn operator_name(operator: ConstraintOperator) -> String {
    match serde_json::to_value(operator) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{operator:?}"),
    }
}

/// The one-line reason of a regex error (its `Display` draws a multi-line caret diagram).
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().last().unwrap_or_default().trim().to_string())
}

/// Checks `>= 1.2, < 2.0`-style constraints: comma-separated clauses of an optional operator
/// (`=`, `!=`, `>`, `>=`, `<`, `<=`, `~>`) and a version of one to three numbers with an optional
/// `-prerelease` and `+build` suffix.
pub(super) fn check_version_constraint(text: &str) -> Result<(), String> {
    for (index, clause) in text.split(',').enumerate() {
        let clause = clause.trim();
        let number = index + 1;
        if clause.is_empty() {
            return Err(format!("clause {number} is empty"));
        }
        let operator_len = ["~>", ">=", "<=", "!=", "=", ">", "<"].iter().find(|op| clause.starts_with(**op)).map_or(0, |op| op.len());
        let version = clause[operator_len..].trim();
        if version.is_empty() {
            return Err(format!("`{clause}` has no version"));
        }
        let core = version.split(['-', '+']).next().unwrap_or_default();
        let suffix_ok = version[core.len()..].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
        let parts: Vec<&str> = core.split('.').collect();
        let core_ok = parts.len() <= 3 && parts.iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        if !core_ok || !suffix_ok {
            let reason = if version.contains(' ') { " (separate comparisons with commas)" } else { "" };
            return Err(format!("`{version}` is not a version like 1.2.3{reason}"));
        }
    }
    Ok(())
}
