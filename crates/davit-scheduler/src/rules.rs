//! Placement rules that depend on where other allocations run, not only on the node: `distinct_hosts`,
//! `distinct_property`, alloc affinities and anti-affinities (required: filters; preferred: scores),
//! `spread`, node affinities, and the job anti-affinity penalty. The score formulas are in `rank`'s module
//! documentation.
//!
//! Every rule counts *live* allocations (not terminal, not stopped by this plan) per **topology domain**:
//! the value of a node attribute (`${attr.zone}`), or the node itself. [`PlacementRules`] builds these
//! counts once per scheduler run, from the snapshot, and keeps them current as the plan places and
//! replaces allocations (the `UsageTracker` pattern), so placements made earlier in the same plan count.
//!
//! Selectors (`job`, `group`, `labels`) match allocations through their group's `labels` in the job's
//! *latest* version; an allocation whose job or group is gone has no labels.
//!
//! Symmetry (as kube-scheduler): an existing allocation whose group has a *required* anti-affinity that
//! matches the newcomer forbids the newcomer in its domain too. Only jobs listed by
//! [`ClusterState::jobs_with_required_anti_affinity`] are looked at.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use davit_api::objects::{Allocation, Node};
use davit_api::spec::{AllocAffinity, ConstraintOperator, GroupSpec, JobSpec};

use crate::constraint::{CheckedConstraint, is_node_specific};
use crate::fxhash::FxHashMap;
use crate::state::ClusterState;

/// A value read from a node: what a topology or a spread attribute names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NodeValue {
    Id,
    Name,
    Datacenter,
    Class,
    Attribute(String),
}

impl NodeValue {
    /// Parses `${node.unique.id}`, `${attr.zone}`…; a literal (not `${…}`) is read as an attribute name
    /// that no node has, so it never matches (validation rejects it).
    pub(crate) fn parse(expression: &str) -> NodeValue {
        let expression = expression.trim();
        let Some(reference) = expression.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) else {
            return NodeValue::Attribute(format!("\u{0}{expression}"));
        };
        match reference {
            "node.id" | "node.unique.id" => NodeValue::Id,
            "node.name" | "node.unique.name" => NodeValue::Name,
            "node.datacenter" => NodeValue::Datacenter,
            "node.class" => NodeValue::Class,
            _ => match reference.strip_prefix("node.").or_else(|| reference.strip_prefix("attr.")) {
                Some(key) => NodeValue::Attribute(key.to_string()),
                // As `constraint::resolve`: no node has it.
                None => NodeValue::Attribute(format!("\u{0}{reference}")),
            },
        }
    }

    /// The node's value; `None` when the node lacks the attribute.
    pub(crate) fn of<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match self {
            NodeValue::Id => Some(&node.id),
            NodeValue::Name => Some(&node.name),
            NodeValue::Datacenter => Some(&node.datacenter),
            NodeValue::Class => Some(&node.class),
            NodeValue::Attribute(key) => node.attributes.get(key).map(String::as_str),
        }
    }
}

/// A topology domain: which nodes count as "the same place".
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    pub(crate) value: NodeValue,
    /// As written (`${attr.zone}`), for messages.
    pub(crate) text: String,
}

impl Topology {
    pub(crate) fn node() -> Topology {
        Topology { value: NodeValue::Id, text: "${node.unique.id}".to_string() }
    }

    pub(crate) fn parse(expression: Option<&str>) -> Topology {
        match expression {
            Some(text) => Topology { value: NodeValue::parse(text), text: text.trim().to_string() },
            None => Topology::node(),
        }
    }

    /// "the same node", "the same ${attr.zone} (a)".
    pub(crate) fn describe(&self, domain: &str) -> String {
        match self.value {
            NodeValue::Id => "the same node".to_string(),
            _ => format!("the same {} ({domain})", self.text),
        }
    }
}

/// Which allocations a rule counts: `job`, `group` and `labels` must all match (an absent one matches all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Selector {
    pub(crate) job: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
}

impl Selector {
    /// A term of `own_job`: `group` without `job` means a group of `own_job`.
    /// `own_job` is the id of the job the term belongs to; a job the term names is in the same namespace.
    pub(crate) fn of_term(term: &AllocAffinity, own_job: &str) -> Selector {
        let namespace = davit_api::namespace::namespace_of(own_job);
        let named = term.job.as_deref().map(|job| davit_api::namespace::job_id(namespace, job));
        let job = named.or_else(|| term.group.as_ref().map(|_| own_job.to_string()));
        Selector { job, group: term.group.clone(), labels: term.labels.clone() }
    }

    pub(crate) fn group(job: &str, group: &str) -> Selector {
        Selector { job: Some(job.to_string()), group: Some(group.to_string()), labels: BTreeMap::new() }
    }

    pub(crate) fn job(job: &str) -> Selector {
        Selector { job: Some(job.to_string()), group: None, labels: BTreeMap::new() }
    }

    pub(crate) fn matches(&self, job: &str, group: &str, labels: &BTreeMap<String, String>) -> bool {
        self.job.as_deref().is_none_or(|wanted| wanted == job)
            && self.group.as_deref().is_none_or(|wanted| wanted == group)
            && labels_match(&self.labels, labels)
    }

    /// `web.g`, `job cache`, `labels tier=web`, `web.g with labels tier=web`.
    pub(crate) fn describe(&self) -> String {
        let base = match (&self.job, &self.group) {
            (Some(job), Some(group)) => format!("{job}.{group}"),
            (Some(job), None) => format!("job {job}"),
            (None, Some(group)) => format!("group {group}"),
            (None, None) => String::new(),
        };
        if self.labels.is_empty() {
            return base;
        }
        let labels: Vec<String> = self.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
        if base.is_empty() { format!("labels {}", labels.join(",")) } else { format!("{base} with labels {}", labels.join(",")) }
    }
}

fn labels_match(wanted: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// The labels of an allocation's group, from its job's latest version.
pub(crate) fn labels_of<'s>(state: &'s ClusterState, job: &str, group: &str) -> Option<&'s BTreeMap<String, String>> {
    state.job(job)?.spec.group(group).map(|group| &group.labels)
}

/// Calls `visit` with every live allocation of the state that `selector` matches and `skip` does not
/// exclude. Visits only the selected job's allocations when the selector names one; otherwise only the
/// jobs that have a matching group.
pub(crate) fn for_each_selected<'s>(
    state: &'s ClusterState,
    selector: &Selector,
    skip: &dyn Fn(&Allocation) -> bool,
    visit: &mut dyn FnMut(&'s Allocation),
) {
    let mut visit_job = |name: &str, spec: Option<&'s JobSpec>| {
        for alloc in state.allocs_for_job(name) {
            if alloc.is_terminal() || selector.group.as_ref().is_some_and(|group| *group != alloc.group) || skip(alloc) {
                continue;
            }
            if !selector.labels.is_empty() {
                let labels = spec.and_then(|spec| spec.group(&alloc.group)).map(|group| &group.labels);
                if !labels.is_some_and(|labels| labels_match(&selector.labels, labels)) {
                    continue;
                }
            }
            visit(alloc);
        }
    };
    match &selector.job {
        Some(job) => visit_job(job, state.job(job).map(|job| &job.spec)),
        None => {
            for job in state.jobs() {
                let any_group = job.spec.groups.iter().any(|group| selector.matches(&job.spec.id(), &group.name, &group.labels));
                if any_group {
                    visit_job(&job.spec.id(), Some(&job.spec));
                }
            }
        }
    }
}

/// Live allocations per topology domain, for one selector.
struct Counter {
    selector: Selector,
    topology: Topology,
    /// Domain value → live allocations, when the domain is not the node itself. Only looked up, never
    /// iterated for output.
    counts: FxHashMap<String, u32>,
    /// Usage slot (see `ClusterState::usage_slot`) → live allocations, when the domain is the node
    /// itself: the node walk counts without hashing ids. Grown on demand.
    per_node: Vec<u32>,
    /// All counted allocations, in every domain.
    total: u32,
}

impl Counter {
    /// The live allocations in the node's domain; `None` when the node lacks the topology attribute.
    fn count(&self, node: &Node, usage_slot: u32) -> Option<u32> {
        if self.topology.value == NodeValue::Id {
            return Some(self.per_node.get(usage_slot as usize).copied().unwrap_or(0));
        }
        let domain = self.topology.value.of(node)?;
        Some(self.counts.get(domain).copied().unwrap_or(0))
    }

    fn change(&mut self, node: &Node, usage_slot: u32, add: bool) {
        let count = if self.topology.value == NodeValue::Id {
            let position = usage_slot as usize;
            if position >= self.per_node.len() {
                self.per_node.resize(position + 1, 0);
            }
            &mut self.per_node[position]
        } else {
            let Some(domain) = self.topology.value.of(node) else { return };
            if !self.counts.contains_key(domain) {
                self.counts.insert(domain.to_string(), 0);
            }
            self.counts.get_mut(domain).expect("inserted above")
        };
        if add {
            *count += 1;
            self.total += 1;
        } else if *count > 0 {
            *count -= 1;
            self.total -= 1;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RequiredKind {
    DistinctHosts,
    DistinctProperty {
        limit: u32,
    },
    AntiAffinity,
    /// Another group's required anti-affinity that matches this group.
    ExistingAntiAffinity,
    /// `bootstrap`: the selector matches the group itself, so the first allocation may go anywhere.
    Affinity {
        bootstrap: bool,
    },
}

struct Required {
    kind: RequiredKind,
    counter: usize,
    /// What the counter counts, for messages: `shop.web`, `job shop`, `labels tier=web`.
    subject: String,
}

struct Preferred {
    counter: usize,
    /// +weight for an affinity, −weight for an anti-affinity.
    signed_weight: f64,
}

struct Spread {
    counter: usize,
    /// This spread's weight over the sum of the group's spread weights.
    share: f64,
    desired: Desired,
}

enum Desired {
    /// Desired allocations per listed value; `rest` for each other value: what is left of 100% (`rest_total`),
    /// shared evenly by the other values of the feasible nodes once prepared.
    Targets { per_value: HashMap<String, f64>, rest: Option<f64>, rest_total: Option<f64> },
    /// Even over the values of the feasible nodes: `count / values` each (`None` until prepared).
    Even { per_value: Option<f64> },
}

struct NodeAffinities {
    affinities: Vec<(CheckedConstraint, f64)>,
    /// Sum of the absolute weights.
    total_weight: f64,
    /// True when no affinity reads a node-unique value: the answer is cached per computed class.
    class_wide: bool,
    /// Computed class → score. Only looked up.
    cache: HashMap<u64, f64>,
}

struct GroupRules {
    count: u32,
    required: Vec<Required>,
    preferred: Vec<Preferred>,
    preferred_weight: f64,
    spreads: Vec<Spread>,
    node_affinities: NodeAffinities,
    /// Counter of this group's allocations per node: the job anti-affinity penalty.
    collisions: usize,
}

/// The placement rules of one job's groups, with live counts. See the module documentation.
pub(crate) struct PlacementRules {
    groups: Vec<GroupRules>,
    counters: Vec<Counter>,
    /// Per group position: the counters an allocation of that group counts in.
    feeds: Vec<Vec<usize>>,
}

/// The per-score parts of a node's final score (see `rank`), for explanations and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ScoreParts {
    pub(crate) fit: f64,
    pub(crate) node_affinity: Option<f64>,
    pub(crate) spread: Option<f64>,
    pub(crate) alloc_affinity: Option<f64>,
    pub(crate) job_anti_affinity: Option<f64>,
}

impl ScoreParts {
    /// The mean over the applicable scores.
    pub(crate) fn final_score(&self) -> f64 {
        let parts = [self.node_affinity, self.spread, self.alloc_affinity, self.job_anti_affinity];
        let (sum, count) = parts.iter().flatten().fold((self.fit, 1.0), |(sum, count), part| (sum + part, count + 1.0));
        sum / count
    }
}

impl PlacementRules {
    /// Prepares the rules of every group of `job` and counts the state's live allocations, leaving out
    /// those whose ids are in `stopped` (this plan stops them).
    pub(crate) fn new(state: &ClusterState, job: &JobSpec, stopped: &BTreeSet<&str>) -> PlacementRules {
        let mut builder = Builder { counters: Vec::new() };
        let groups = job.groups.iter().map(|group| builder.group(state, job, group)).collect();
        let mut counters = builder.counters;
        let skip = |alloc: &Allocation| stopped.contains(alloc.id.as_str());
        for counter in &mut counters {
            let mut domains: Vec<(&Node, u32)> = Vec::new();
            for_each_selected(state, &counter.selector, &skip, &mut |alloc| {
                if let Some((node, usage_slot)) = state.node(&alloc.node_id).zip(state.usage_slot(&alloc.node_id)) {
                    domains.push((node, usage_slot));
                }
            });
            for (node, usage_slot) in domains {
                counter.change(node, usage_slot, true);
            }
        }
        let feeds = job
            .groups
            .iter()
            .map(|group| {
                (0..counters.len()).filter(|&index| counters[index].selector.matches(&job.id(), &group.name, &group.labels)).collect()
            })
            .collect();
        PlacementRules { groups, counters, feeds }
    }

    /// True when the group scores by more than fit (spread, node affinity, preferred alloc rules): such
    /// groups score more candidates.
    pub(crate) fn is_wide(&self, group_position: usize) -> bool {
        let group = &self.groups[group_position];
        !group.spreads.is_empty() || !group.node_affinities.affinities.is_empty() || !group.preferred.is_empty()
    }

    /// True when a spread of the group waits for [`prepare_spread_domains`](Self::prepare_spread_domains).
    pub(crate) fn needs_spread_domains(&self, group_position: usize) -> bool {
        self.groups[group_position]
            .spreads
            .iter()
            .any(|spread| matches!(spread.desired, Desired::Even { per_value: None } | Desired::Targets { rest_total: Some(_), .. }))
    }

    /// Sets the desired count per value of the group's even spreads, and of the values its targets do not
    /// list, from the values of the group's feasible nodes.
    pub(crate) fn prepare_spread_domains<'n>(&mut self, group_position: usize, feasible: impl Iterator<Item = &'n Node>) {
        let feasible: Vec<&Node> = feasible.collect();
        let group = &mut self.groups[group_position];
        for spread in &mut group.spreads {
            let topology = &self.counters[spread.counter].topology;
            let values: BTreeSet<&str> = feasible.iter().filter_map(|node| topology.value.of(node)).collect();
            match &mut spread.desired {
                Desired::Even { per_value } => *per_value = Some(f64::from(group.count) / values.len().max(1) as f64),
                Desired::Targets { per_value, rest, rest_total: Some(total) } => {
                    let unlisted = values.iter().filter(|value| !per_value.contains_key(**value)).count();
                    *rest = Some(*total / unlisted.max(1) as f64);
                }
                Desired::Targets { .. } => {}
            }
        }
    }

    /// `Err(reason)` when placing an allocation of the group on the node (holding `usage_slot`, see
    /// `ClusterState::usage_slot`) would break a required rule.
    pub(crate) fn check_required(&self, node: &Node, usage_slot: u32, group_position: usize) -> Result<(), String> {
        for rule in &self.groups[group_position].required {
            let counter = &self.counters[rule.counter];
            let count = counter.count(node, usage_slot);
            // For messages only: the node has the value when `count` is `Some`.
            let domain = || counter.topology.value.of(node).unwrap_or_default();
            let subject = &rule.subject;
            match rule.kind {
                RequiredKind::DistinctHosts => {
                    if count > Some(0) {
                        return Err(format!("distinct_hosts: allocation of {subject} on the node"));
                    }
                }
                RequiredKind::DistinctProperty { limit } => {
                    let property = &counter.topology.text;
                    let Some(count) = count else { return Err(format!("distinct_property {property}: attribute missing")) };
                    if count >= limit {
                        return Err(format!("distinct_property {property}: {} already has {count} of {subject} (limit {limit})", domain()));
                    }
                }
                RequiredKind::AntiAffinity => {
                    if count > Some(0) {
                        return Err(format!("anti-affinity: allocation of {subject} on {}", counter.topology.describe(domain())));
                    }
                }
                RequiredKind::ExistingAntiAffinity => {
                    if count > Some(0) {
                        return Err(format!("anti-affinity of {subject}: it runs on {}", counter.topology.describe(domain())));
                    }
                }
                RequiredKind::Affinity { bootstrap } => {
                    if bootstrap && counter.total == 0 {
                        continue;
                    }
                    let Some(count) = count else {
                        return Err(format!("alloc affinity: {} missing", counter.topology.text));
                    };
                    if count == 0 {
                        return Err(format!("alloc affinity: no allocation of {subject} on {}", counter.topology.describe(domain())));
                    }
                }
            }
        }
        Ok(())
    }

    /// The node's scores for an allocation of the group, given its fit score and computed class.
    pub(crate) fn score(&mut self, node: &Node, usage_slot: u32, group_position: usize, class: u64, fit: f64) -> ScoreParts {
        let counters = &self.counters;
        let group = &mut self.groups[group_position];
        let mut parts = ScoreParts { fit, ..ScoreParts::default() };
        let affinities = &mut group.node_affinities;
        if !affinities.affinities.is_empty() {
            let compute = |affinities: &NodeAffinities| {
                let matched: f64 =
                    affinities.affinities.iter().filter(|(affinity, _)| affinity.is_met_by(node)).map(|(_, weight)| weight).sum();
                matched / affinities.total_weight
            };
            let score = if affinities.class_wide {
                match affinities.cache.get(&class) {
                    Some(score) => *score,
                    None => {
                        let score = compute(affinities);
                        affinities.cache.insert(class, score);
                        score
                    }
                }
            } else {
                compute(affinities)
            };
            parts.node_affinity = Some(score);
        }
        if !group.spreads.is_empty() {
            let score =
                group.spreads.iter().map(|spread| spread.share * spread_score(spread, &counters[spread.counter], node, usage_slot)).sum();
            parts.spread = Some(score);
        }
        if !group.preferred.is_empty() {
            let mut sum = 0.0;
            for preferred in &group.preferred {
                if let Some(matches) = counters[preferred.counter].count(node, usage_slot) {
                    let matches = f64::from(matches);
                    sum += preferred.signed_weight * matches / (matches + 1.0);
                }
            }
            parts.alloc_affinity = Some(sum / group.preferred_weight);
        }
        let collisions = counters[group.collisions].count(node, usage_slot).unwrap_or(0);
        if collisions > 0 {
            let penalty = f64::from(collisions + 1) / f64::from(group.count.max(1));
            parts.job_anti_affinity = Some(-penalty.min(1.0));
        }
        parts
    }

    /// The plan places an allocation of the group on the node.
    pub(crate) fn placed(&mut self, group_position: usize, node: &Node, usage_slot: u32) {
        for &counter in &self.feeds[group_position] {
            self.counters[counter].change(node, usage_slot, true);
        }
    }

    /// The plan takes away a live allocation of the group (a destructive update's previous allocation).
    pub(crate) fn removed(&mut self, group_position: usize, node: &Node, usage_slot: u32) {
        for &counter in &self.feeds[group_position] {
            self.counters[counter].change(node, usage_slot, false);
        }
    }
}

/// See `rank` for the formula.
fn spread_score(spread: &Spread, counter: &Counter, node: &Node, usage_slot: u32) -> f64 {
    let (Some(domain), Some(used)) = (counter.topology.value.of(node), counter.count(node, usage_slot)) else { return -1.0 };
    let desired = match &spread.desired {
        Desired::Targets { per_value, rest, .. } => per_value.get(domain).copied().or(*rest),
        Desired::Even { per_value } => *per_value,
    };
    let Some(desired) = desired else { return -1.0 };
    spread_boost(desired, f64::from(used))
}

/// The spread score of a domain that should hold `desired` allocations and holds `used`.
pub(crate) fn spread_boost(desired: f64, used: f64) -> f64 {
    const EPSILON: f64 = 1e-9;
    if used + 1.0 <= desired + EPSILON {
        0.5 + 0.5 * (desired - used) / desired
    } else if used < desired {
        0.5 * (desired - used)
    } else {
        -0.5 - 0.5 * ((used + 1.0 - desired) / desired.max(1.0)).min(1.0)
    }
}

struct Builder {
    counters: Vec<Counter>,
}

impl Builder {
    fn counter(&mut self, selector: Selector, topology: Topology) -> usize {
        self.counters.push(Counter { selector, topology, counts: FxHashMap::default(), per_node: Vec::new(), total: 0 });
        self.counters.len() - 1
    }

    fn group(&mut self, state: &ClusterState, job: &JobSpec, group: &GroupSpec) -> GroupRules {
        let job_id = job.id();
        let own = Selector::group(&job_id, &group.name);
        let mut required = Vec::new();
        let distinct = job
            .constraints
            .iter()
            .map(|constraint| (constraint, Selector::job(&job_id)))
            .chain(group.constraints.iter().map(|constraint| (constraint, own.clone())));
        for (constraint, selector) in distinct {
            let subject = selector.describe();
            match constraint.operator {
                ConstraintOperator::DistinctHosts if matches!(constraint.value.trim(), "" | "true") => {
                    let counter = self.counter(selector, Topology::node());
                    required.push(Required { kind: RequiredKind::DistinctHosts, counter, subject });
                }
                ConstraintOperator::DistinctProperty => {
                    let limit = constraint.value.trim().parse::<u32>().unwrap_or(1).max(1);
                    let counter = self.counter(selector, Topology::parse(Some(&constraint.attribute)));
                    required.push(Required { kind: RequiredKind::DistinctProperty { limit }, counter, subject });
                }
                _ => {}
            }
        }

        let mut preferred = Vec::new();
        let mut preferred_weight = 0.0;
        let terms = group.anti_affinities.iter().map(|term| (term, -1.0)).chain(group.alloc_affinities.iter().map(|term| (term, 1.0)));
        for (term, sign) in terms {
            let selector = Selector::of_term(term, &job_id);
            let subject = selector.describe();
            let bootstrap = selector.matches(&job_id, &group.name, &group.labels);
            let counter = self.counter(selector, Topology::parse(term.topology.as_deref()));
            if term.required {
                let kind = if sign < 0.0 { RequiredKind::AntiAffinity } else { RequiredKind::Affinity { bootstrap } };
                required.push(Required { kind, counter, subject });
            } else {
                let weight = f64::from(term.effective_weight());
                preferred.push(Preferred { counter, signed_weight: sign * weight });
                preferred_weight += weight;
            }
        }

        // Existing groups whose required anti-affinity matches this group (the symmetric check).
        let others = state.jobs_with_required_anti_affinity().map(|other| &other.spec).filter(|other| other.id() != job_id);
        for other in std::iter::once(job).chain(others) {
            for other_group in &other.groups {
                if other.id() == job_id && other_group.name == group.name {
                    continue; // Its own rules above cover it.
                }
                for term in other_group.anti_affinities.iter().filter(|term| term.required) {
                    if Selector::of_term(term, &other.id()).matches(&job_id, &group.name, &group.labels) {
                        let selector = Selector::group(&other.id(), &other_group.name);
                        let subject = selector.describe();
                        let counter = self.counter(selector, Topology::parse(term.topology.as_deref()));
                        required.push(Required { kind: RequiredKind::ExistingAntiAffinity, counter, subject });
                    }
                }
            }
        }

        let spread_weight: f64 = group.spread.iter().map(|spread| f64::from(spread.weight.max(1))).sum();
        let spreads = group
            .spread
            .iter()
            .map(|spread| {
                let desired = if spread.targets.is_empty() {
                    Desired::Even { per_value: None }
                } else {
                    let count = f64::from(group.count);
                    let per_value: HashMap<String, f64> =
                        spread.targets.iter().map(|(value, percent)| (value.clone(), f64::from(*percent) / 100.0 * count)).collect();
                    let listed: f64 = per_value.values().sum();
                    // What is left of 100% goes to the values not listed, shared (see `prepare_spread_domains`).
                    let rest = (listed + 1e-9 < count).then_some(count - listed);
                    Desired::Targets { per_value, rest, rest_total: rest }
                };
                let counter = self.counter(own.clone(), Topology::parse(Some(&spread.attribute)));
                Spread { counter, share: f64::from(spread.weight.max(1)) / spread_weight, desired }
            })
            .collect();

        let affinities: Vec<(CheckedConstraint, f64)> = group
            .affinities
            .iter()
            .filter(|affinity| !affinity.operator.is_distinct() && affinity.weight != 0)
            .map(|affinity| (CheckedConstraint::new(&affinity.as_constraint()), f64::from(affinity.weight)))
            .collect();
        let node_affinities = NodeAffinities {
            total_weight: affinities.iter().map(|(_, weight)| weight.abs()).sum(),
            class_wide: group
                .affinities
                .iter()
                .all(|affinity| !is_node_specific(&affinity.attribute) && !is_node_specific(&affinity.value)),
            affinities,
            cache: HashMap::new(),
        };

        let collisions = self.counter(own, Topology::node());
        GroupRules { count: group.count, required, preferred, preferred_weight, spreads, node_affinities, collisions }
    }
}
