//! davit's shared vocabulary: the job spec users write, the objects the cluster stores
//! (nodes, allocations, evaluations, job versions) and the request/response types of the HTTP API.
//!
//! Spec parsing turns YAML or JSON text into a [`spec::JobSpec`] and reports *every* problem at once
//! with `file:line:col` and a hint.
//!
//! This crate must never do I/O: no files, no sockets, no clocks. Callers pass text and timestamps in.

pub mod acl;
pub mod deployment;
pub mod duration;
pub mod exec;
pub mod http;
pub mod namespace;
pub mod objects;
pub mod small_map;
pub mod spec;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
pub mod variables;

pub use duration::Duration;

/// An error with its sources, `a: b: c`, for messages and logs (a cause whose text is already in the
/// message is not repeated).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
