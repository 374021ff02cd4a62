//! `GET /metrics` and the event stream `GET /v1/event/stream`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use davit_api::acl::Access;
use davit_api::http::{ApiError, EVENT_TOPICS, EventStreamEnd, EventWire};
use davit_api::namespace::namespace_of;
use davit_store::{EventKind, StoreError, WatchBatch};

use super::Failure;
use crate::Shared;
use crate::acl::Caller;
use crate::keys::{self, Object, ObjectKey};

/// How often an idle stream sends a `{}` line.
const HEARTBEAT: Duration = Duration::from_secs(10);

pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = shared.view.snapshot();
    let mut body = shared.metrics.render(&snapshot);
    crate::metrics::render_usage(&mut body, &shared.signals.all_fresh(std::time::Instant::now()), &snapshot.cluster);
    // The usage series above come from the leader's memory (agents report to it): a follower has none.
    body.push_str("# HELP davit_server_leader Whether this server leads (1) or follows another (0).\n");
    body.push_str("# TYPE davit_server_leader gauge\n");
    body.push_str(if shared.leader.is_none() { "davit_server_leader 1\n" } else { "davit_server_leader 0\n" });
    for source in shared.metrics_sources.read().expect("metrics sources lock").iter() {
        source(&mut body);
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body).into_response()
}

/// `?index=N&topic=T&topic=U`: events of revisions after `N` (0: all that is kept), of the topics given
/// (none: all).
#[derive(Debug)]
struct StreamQuery {
    index: u64,
    topics: HashSet<String>,
}

fn parse_query(raw: Option<&str>) -> Result<StreamQuery, Failure> {
    let mut query = StreamQuery { index: 0, topics: HashSet::new() };
    for pair in raw.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "index" => {
                query.index =
                    value.parse().map_err(|_| Failure::bad_request(format!("query parameter `index`: `{value}` is not a number")))?
            }
            "topic" => {
                if !EVENT_TOPICS.contains(&value) {
                    return Err(Failure::bad_request(format!("unknown event topic `{value}`; valid topics: {}", EVENT_TOPICS.join(", "))));
                }
                query.topics.insert(value.to_string());
            }
            // Checked by the route's rule; every object is in the default namespace for now.
            "namespace" => {}
            other => {
                return Err(Failure::bad_request(format!("unknown query parameter `{other}`; expected `index`, `topic` and `namespace`")));
            }
        }
    }
    Ok(query)
}

pub(crate) async fn stream(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let mut query = parse_query(raw.as_deref())?;
    // Node events only for tokens that may read nodes.
    let nodes_visible = caller.acl.allows_node(Access::Read);
    if !nodes_visible {
        if query.topics.contains("Node") {
            return Err(Failure::forbidden("permission denied: the Node topic needs `node: read`"));
        }
        if query.topics.is_empty() {
            query.topics = EVENT_TOPICS.iter().filter(|topic| **topic != "Node").map(|topic| topic.to_string()).collect();
        }
    }
    // Index 0 replays what is kept (as Nomad's event stream does): after a restart, or once the history
    // outgrew its bound, that is not the whole history, so first sightings are not news then.
    let mut from_start = query.index == 0;
    let mut from = query.index + 1;
    let watch = loop {
        match shared.store.watch("", from).await {
            Ok(watch) => break watch,
            Err(StoreError::Compacted { oldest, .. }) if query.index == 0 && oldest > from => {
                from_start = false;
                from = oldest;
            }
            Err(StoreError::Compacted { requested, oldest }) => {
                return Err(Failure::bad_request(format!(
                    "index {} is no longer kept (the oldest revision kept is {oldest}); ask for index {} or later, or 0 for everything kept",
                    requested.saturating_sub(1),
                    oldest.saturating_sub(1)
                )));
            }
            Err(error) => return Err(error.into()),
        }
    };
    let state = StreamState {
        watch,
        topics: query.topics,
        from_start,
        namespace: caller.namespace.clone(),
        seen: HashSet::new(),
        health: HashMap::new(),
        pending: VecDeque::new(),
    };
    let budget = Arc::new(Budget { limit: shared.admission.stream_buffer_bytes, queued: AtomicUsize::new(0) });
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(produce(state, sender, Arc::clone(&budget), shared.closing.clone(), query.index));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lines = futures_util::stream::unfold((receiver, heartbeat), move |(mut receiver, mut heartbeat)| {
        let budget = Arc::clone(&budget);
        async move {
            let line = tokio::select! {
                line = receiver.recv() => {
                    let line: String = line?; // the producer ended: so does the stream
                    budget.queued.fetch_sub(line.len(), Ordering::Relaxed);
                    line
                }
                _ = heartbeat.tick() => "{}\n".to_string(),
            };
            Some((Ok::<_, std::io::Error>(line), (receiver, heartbeat)))
        }
    });
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"))], Body::from_stream(lines)).into_response())
}

/// The bytes of lines one stream has made but its client has not taken yet, and how many it may have.
struct Budget {
    limit: usize,
    queued: AtomicUsize,
}

/// Turns the store's changes into lines as fast as they come, whatever the client's pace, so a slow client
/// costs the server at most its byte budget: one that falls further behind gets a last line that says so, and
/// its stream ends. Ends when the client goes away, the watch ends or the server shuts down.
async fn produce(
    mut state: StreamState,
    sender: tokio::sync::mpsc::UnboundedSender<String>,
    budget: Arc<Budget>,
    mut closing: tokio::sync::watch::Receiver<bool>,
    mut complete: u64,
) {
    loop {
        let batch = tokio::select! {
            batch = state.watch.next() => match batch {
                Some(Ok(batch)) => batch,
                Some(Err(error)) => {
                    tracing::warn!(%error, "event stream watch ended");
                    return;
                }
                None => return,
            },
            _ = sender.closed() => return, // the client went away
            _ = closing.changed() => return, // the server shuts down
        };
        state.push_batch(&batch);
        while let Some(line) = state.pending.pop_front() {
            if budget.queued.fetch_add(line.len(), Ordering::Relaxed) + line.len() > budget.limit {
                let end = EventStreamEnd {
                    error: ApiError {
                        code: "stream_lagged".to_string(),
                        message: format!(
                            "this event stream fell more than {} bytes behind its events and was ended; resume with index={complete} \
                             (an operator raises the limit with `davit server --event-stream-buffer-bytes`)",
                            budget.limit
                        ),
                        spec_errors: Vec::new(),
                    },
                };
                let mut line = serde_json::to_string(&end).expect("errors serialize");
                line.push('\n');
                let _ = sender.send(line);
                return;
            }
            if sender.send(line).is_err() {
                return;
            }
        }
        complete = batch.revision;
    }
}

struct StreamState {
    watch: davit_store::Watch,
    /// Empty: every topic.
    topics: HashSet<String>,
    /// The stream replays the whole history, so an allocation seen first is new.
    from_start: bool,
    /// Only jobs, allocations and evaluations of this namespace are streamed (nodes are cluster-wide).
    namespace: String,
    /// Allocations and evaluations streamed so far: the only ones whose deletion is streamed (a deleted key
    /// no longer says which namespace it was in).
    seen: HashSet<String>,
    /// Last known `healthy` per allocation, for `AllocationHealth` events.
    health: HashMap<String, Option<bool>>,
    pending: VecDeque<String>,
}

impl StreamState {
    fn wants(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.contains(topic)
    }

    fn push_batch(&mut self, batch: &WatchBatch) {
        for event in &batch.events {
            let kv = &event.kv;
            let Some(parsed) = keys::parse_key(&kv.key) else { continue };
            let (topic, key) = match parsed {
                ObjectKey::Job(name) => ("Job", name.to_string()),
                ObjectKey::Version(name, version) => ("JobVersion", format!("{name}/{version}")),
                ObjectKey::Node(id) => ("Node", id.to_string()),
                ObjectKey::Alloc(id) => ("Allocation", id.to_string()),
                ObjectKey::Eval(id) => ("Evaluation", id.to_string()),
                ObjectKey::Deployment(id) => ("Deployment", id.to_string()),
                // Access control and variables are never part of the stream.
                ObjectKey::Namespace(_)
                | ObjectKey::Variable(..)
                | ObjectKey::AclPolicy(_)
                | ObjectKey::AclToken(_)
                | ObjectKey::AclBootstrap
                | ObjectKey::Meta => continue,
            };
            let in_namespace = match parsed {
                ObjectKey::Job(id) | ObjectKey::Version(id, _) => namespace_of(id) == self.namespace,
                ObjectKey::Node(_) => true,
                _ => self.seen.contains(&key),
            };
            let mut wire = EventWire { index: batch.revision, topic: topic.to_string(), kind: "Deleted".to_string(), key, payload: None };
            if event.kind == EventKind::Put {
                wire.kind = "Upserted".to_string();
                let object = match keys::decode(&kv.key, &kv.value, kv.create_revision, kv.mod_revision) {
                    Ok(object) => object,
                    Err(error) => {
                        tracing::warn!(key = %kv.key, %error, "event stream: skipping undecodable object");
                        continue;
                    }
                };
                let owner = match &object {
                    Object::Alloc(alloc) => Some(&alloc.job_name),
                    Object::Eval(eval) => Some(&eval.job_name),
                    Object::Deployment(deployment) => Some(&deployment.job_name),
                    _ => None,
                };
                if let Some(owner) = owner {
                    if namespace_of(owner) != self.namespace {
                        continue;
                    }
                    self.seen.insert(wire.key.clone());
                } else if !in_namespace {
                    continue;
                }
                if let Object::Alloc(alloc) = &object {
                    self.health_transition(batch.revision, &alloc.id, alloc.healthy, &object);
                }
                wire.payload = match &object {
                    Object::Job(job) | Object::Version(job) => serde_json::to_value(job.redacted()).ok(),
                    Object::Node(node) => serde_json::to_value(node).ok(),
                    Object::Alloc(alloc) => serde_json::to_value(alloc).ok(),
                    Object::Eval(eval) => serde_json::to_value(eval).ok(),
                    Object::Deployment(deployment) => serde_json::to_value(deployment).ok(),
                    Object::Namespace(_)
                    | Object::Variable(_)
                    | Object::AclPolicy(_)
                    | Object::AclToken(_)
                    | Object::AclBootstrap
                    | Object::Meta => None,
                };
            } else if !in_namespace {
                continue;
            } else {
                self.seen.remove(&wire.key);
                if topic == "Allocation" {
                    self.health.remove(&wire.key);
                }
            }
            if self.wants(topic) {
                self.push(&wire);
            }
        }
    }

    /// Queues an `AllocationHealth` event when the allocation's `healthy` changed since the last one seen.
    fn health_transition(&mut self, revision: u64, id: &str, healthy: Option<bool>, object: &Object) {
        let previous = match self.health.insert(id.to_string(), healthy) {
            Some(previous) => previous,
            None if self.from_start => None,
            None => return, // first sighting mid-history: the previous value is unknown
        };
        if previous != healthy && self.wants("AllocationHealth") {
            let Object::Alloc(alloc) = object else { return };
            let payload = serde_json::json!({
                "job_name": alloc.job_name,
                "healthy": healthy,
                "previous": previous,
                "health_description": alloc.health_description,
            });
            let wire = EventWire {
                index: revision,
                topic: "AllocationHealth".to_string(),
                kind: "Upserted".to_string(),
                key: id.to_string(),
                payload: Some(payload),
            };
            self.push(&wire);
        }
    }

    fn push(&mut self, wire: &EventWire) {
        let mut line = serde_json::to_string(wire).expect("events serialize");
        line.push('\n');
        self.pending.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let query = parse_query(Some("index=5&topic=Job&topic=Node")).unwrap();
        assert_eq!(query.index, 5);
        assert_eq!(query.topics.len(), 2);
        assert!(parse_query(Some("topic=Jobs")).unwrap_err().body.message.contains("valid topics: Job, JobVersion"));
        assert!(parse_query(Some("index=x")).is_err());
        assert_eq!(parse_query(None).unwrap().index, 0);
    }
}
