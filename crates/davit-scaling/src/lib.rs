//! The autoscaler's arithmetic: Kubernetes' HorizontalPodAutoscaler replica calculator
//! (`replica_calculator.go`) and the normalisation of its proposal (`horizontal.go`: stabilisation windows,
//! rate limits, min/max), reproduced for davit's groups, the dry run over both (`davit scaling plan`), and the
//! Holt-Winters forecaster of predictive scaling.
//!
//! Used by the server's autoscaler loop, which measures and keeps the history, and by the CLI's dry run.
//!
//! It must never do I/O, read a clock or spawn anything: every age is an input (seconds ago), so the same
//! numbers always give the same answer.
//!
//! Module map: [`calculator`] (instances and their samples → a proposal per metric) → [`normalize`]
//! (proposal + history → the count to set); [`dry_run`] reads the dry run's JSON and explains both;
//! [`forecast`] (additive Holt-Winters, fitted by grid search, and its backtest) over a [`history`] (a bounded,
//! evenly spaced series per metric) for predictive scaling.

pub mod calculator;
pub mod dry_run;
pub mod forecast;
pub mod history;
pub mod normalize;

pub use calculator::{CalcError, Grouping, Instance, Phase, Proposal, Timing, Tolerances};
pub use normalize::{Behavior, Decision, History, Limit, Rules};
