//! Where a group may and would rather run: constraints, node affinities, spreads and affinities to other
//! allocations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `attribute operator value`, e.g. `${node.arch} = x86_64`.
///
/// Two operators constrain allocations rather than nodes (Nomad's): `distinct_hosts` (no attribute, no
/// value: at most one allocation of the group per node; at job level of the whole job) and
/// `distinct_property` (at most `value` allocations, default 1, per value of `attribute`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    #[serde(default)]
    pub attribute: String,
    #[serde(default)]
    pub operator: ConstraintOperator,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConstraintOperator {
    #[default]
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = "<=")]
    LessOrEqual,
    #[serde(rename = ">")]
    Greater,
    #[serde(rename = ">=")]
    GreaterOrEqual,
    #[serde(rename = "regexp")]
    Regexp,
    #[serde(rename = "version")]
    Version,
    #[serde(rename = "set_contains")]
    SetContains,
    #[serde(rename = "is_set")]
    IsSet,
    #[serde(rename = "is_not_set")]
    IsNotSet,
    /// At most one allocation of the group (job-level: of the job) per node.
    #[serde(rename = "distinct_hosts")]
    DistinctHosts,
    /// At most `value` (default 1) allocations of the group (job-level: of the job) per value of `attribute`.
    #[serde(rename = "distinct_property")]
    DistinctProperty,
}

impl ConstraintOperator {
    /// True for `distinct_hosts` and `distinct_property`, which count allocations instead of testing a node.
    pub fn is_distinct(self) -> bool {
        matches!(self, ConstraintOperator::DistinctHosts | ConstraintOperator::DistinctProperty)
    }
}

/// A soft preference for nodes: `attribute operator value` like a constraint (`=` by default), whose
/// `weight` (−100..=100, not 0) is added to the score of nodes it matches; negative weights repel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAffinity {
    #[serde(default)]
    pub attribute: String,
    #[serde(default)]
    pub operator: ConstraintOperator,
    #[serde(default)]
    pub value: String,
    #[serde(default = "default_weight")]
    pub weight: i32,
}

impl NodeAffinity {
    /// The affinity as a constraint (its match test).
    pub fn as_constraint(&self) -> Constraint {
        Constraint { attribute: self.attribute.clone(), operator: self.operator, value: self.value.clone() }
    }
}

/// Spread a group's allocations over the values of a node attribute: as `targets` says (percent per value;
/// the rest of 100 goes evenly to values not listed), or evenly over the values of the feasible nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpreadSpec {
    #[serde(default)]
    pub attribute: String,
    /// 1..=100: the share of this spread among the group's spreads.
    #[serde(default = "default_weight_u32")]
    pub weight: u32,
    /// Attribute value → percent of the group's allocations; the sum is at most 100.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, u32>,
}

/// Selects allocations (by `job`, `group` and `labels`) to place next to (`alloc_affinities`) or away from
/// (`anti_affinities`), within a `topology` domain: nodes sharing the value of a node attribute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocAffinity {
    /// The job whose allocations are selected; absent: the same job when `group` is given, else any job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Every label must equal the selected group's `labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A node attribute expression as in constraints (`${attr.zone}`); absent: the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
    /// A hard rule (nodes that break it are filtered out) instead of a preference.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// 1..=100 (default 50), for a preference only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl AllocAffinity {
    /// The weight of a preference: `weight`, else 50.
    pub fn effective_weight(&self) -> u32 {
        self.weight.unwrap_or(DEFAULT_WEIGHT as u32)
    }
}

const DEFAULT_WEIGHT: i32 = 50;

fn default_weight() -> i32 {
    DEFAULT_WEIGHT
}

fn default_weight_u32() -> u32 {
    DEFAULT_WEIGHT as u32
}
