//! davit's scheduler: given a snapshot of the cluster and an evaluation ("look at job X again"), decide
//! which allocations to place, update and stop, and on which nodes. Modelled on Nomad's generic scheduler
//! (`scheduler/generic_sched.go`, `reconcile.go`, `stack.go`), simplified.
//!
//! - [`ClusterState`]: the immutable, O(1)-clonable snapshot the scheduler reads (the server keeps one).
//! - [`schedule`]: reconcile a job against its allocations, then place what is missing through a chain
//!   of small pieces: seeded random node order → feasibility (datacenter, drivers, constraints, cached
//!   per computed node class) → required placement rules (`distinct_hosts`, `distinct_property`,
//!   required alloc affinities and anti-affinities, both directions; module `rules`) → fit (cpu, memory,
//!   ports) → scores (the algorithm's fit score — binpack, spread or balanced —, node affinity, spread,
//!   preferred alloc (anti-)affinity, job anti-affinity; their mean, see module `rank`) → a candidate
//!   limit (sampling, see [`SchedulerConfig`]) → best node. Placements and stops made earlier in the
//!   same plan count for fit and for every rule.
//! - [`check_required_placement`]: the plan applier's re-check of the required placement rules against
//!   the newest state, so that plans of different jobs computed on one snapshot cannot jointly break them.
//! - System jobs (`type: system`, module `system`): one allocation per group on every feasible,
//!   schedulable node; `count` is 0 or 1 (0: nowhere); allocations on nodes that go down or stop being
//!   feasible are stopped, nodes that join get one.
//! - Preemption (module `preempt`): a placement that fits nowhere evicts the cheapest set of
//!   allocations of jobs at least [`PREEMPTION_PRIORITY_DELTA`] lower in priority from one feasible node
//!   ([`Plan::node_preemptions`]); per job type in [`PreemptionConfig`] (service and system: on, batch: off).
//! - [`place_migration`]: the destination of a live migration (same allocation, another node, its own ports).
//! - [`rebalance`]: a few moves of running service allocations from the most to the least loaded nodes.
//! - [`Plan`]: the result, per node; unplaceable work is data ([`Plan::failed_groups`] with reasons),
//!   never an error.
//!
//! Invariant: the output is a pure function of (state snapshot, evaluation, config, seed, now).
//! This crate must never do I/O, read a clock (the caller passes `now`), use a global or OS-seeded RNG
//! (all randomness comes from a `SmallRng` seeded with the caller's `seed`), spawn threads or tasks,
//! or iterate a hash map in a way that could change its output. It never writes state: the server's
//! plan applier does, after checking the plan against the latest state.
//!
//! Seeds: the caller should pass a fresh seed per scheduling attempt (say, from its own RNG). The eval
//! id is mixed into the seed and new allocation ids never repeat ids already in the snapshot, so a
//! reused seed cannot overwrite allocations, but it would repeat the same node order.
//!
//! Not yet: deployments; preemption for allocations placed by a live migration or the
//! drainer (`place_migration` does not preempt); preemption does not weigh in the ranking of nodes that fit
//! (it is tried only when no node fits), and the victims' node is chosen by feasibility and fit, the
//! required placement rules being checked by the applier.

mod alloc;
mod constraint;
mod deployment;
mod feasible;
mod fxhash;
mod generic;
mod migrate;
mod plan;
mod preempt;
mod rank;
mod rebalance;
mod reconcile;
mod rules;
mod state;
mod system;
mod verify;

#[cfg(test)]
mod tests;

pub use alloc::alloc_id_created;
pub use generic::schedule;
pub use migrate::{MigrationPlacementError, place_migration};
pub use plan::{AllocStop, PREEMPTION_PRIORITY_DELTA, Plan, PreemptionConfig, ScheduleResult, SchedulerConfig};
pub use rebalance::{RebalanceConfig, RebalanceMove, rebalance};
pub use state::{ClusterState, NodeUsage, ShadowState};
pub use verify::{PlacementViolation, check_required_placement, may_break_required_rules};
