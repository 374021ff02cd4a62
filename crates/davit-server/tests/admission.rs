//! Open requests are capped: a blocking query or an event stream over the per-client cap gets 429 with
//! `Retry-After`, and a slot given back is free again.

mod common;

use std::time::Duration;

use common::start_configured;
use davit_server::AdmissionConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_and_event_streams_over_the_cap_get_429_until_a_slot_is_free() {
    let caps = AdmissionConfig { blocking_queries_per_client: 1, event_streams_per_client: 1, ..AdmissionConfig::default() };
    let server = start_configured(tempfile::tempdir().unwrap(), false, |config| config.admission = caps).await;
    let spec = |name: &str| {
        format!(
            "name: {name}\ngroups:\n  - name: g\n    count: 0\n    tasks:\n      - {{name: t, driver: exec, config: {{command: /bin/true}}}}\n"
        )
    };
    // Something stored, so that a blocking query at the current index waits.
    assert_eq!(server.request("POST", "/v1/jobs", &spec("first")).await.0, 200);
    let listed = server.http.get(format!("{}/v1/jobs", server.base)).send().await.unwrap();
    let index: u64 = listed.headers()["x-davit-index"].to_str().unwrap().parse().unwrap();
    let blocking = format!("{}/v1/jobs?index={index}&wait=20s", server.base);

    // One blocking query waits; a second from the same address is refused at once. (A probe that arrives
    // before the waiter takes the slot for 50 ms and the waiter is the one refused: then try again.)
    let probe = format!("{}/v1/jobs?index={index}&wait=50ms", server.base);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (waiting, refused) = 'waiting: loop {
        let waiting = tokio::spawn({
            let (http, url) = (server.http.clone(), blocking.clone());
            async move { http.get(url).send().await.unwrap().status() }
        });
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never refused");
            let response = server.http.get(&probe).send().await.unwrap();
            if response.status() == 429 {
                break 'waiting (waiting, response);
            }
            if waiting.is_finished() {
                assert_eq!(waiting.await.unwrap(), 429, "only a refusal ends a wait this early");
                continue 'waiting;
            }
        }
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("blocking queries open, the most one client may"), "{body:#}");
    // Plain requests are not counted.
    assert_eq!(server.request("GET", "/v1/jobs", "").await.0, 200);

    // A change ends the wait; the slot is free again.
    assert_eq!(server.request("POST", "/v1/jobs", &spec("web")).await.0, 200);
    assert_eq!(waiting.await.unwrap(), 200);
    let again = format!("{}/v1/jobs?index=1&wait=1s", server.base);
    assert_eq!(server.http.get(again).send().await.unwrap().status(), 200);

    // Event streams: one open stream per client, the second refused.
    let stream = server.http.get(format!("{}/v1/event/stream", server.base)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let second = server.http.get(format!("{}/v1/event/stream", server.base)).send().await.unwrap();
    assert_eq!(second.status(), 429);
    drop(stream);
}

/// A subscriber that stops reading costs the server at most its byte budget: its stream ends with a line
/// naming the index to resume from, and a new stream from that index goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_that_falls_behind_its_byte_budget_ends_with_the_index_to_resume_from() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let caps = AdmissionConfig { event_stream_buffer_bytes: 256 << 10, ..AdmissionConfig::default() };
    let server = start_configured(tempfile::tempdir().unwrap(), false, |config| config.admission = caps).await;
    // A client with a small receive buffer that reads nothing until the writes are done.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = server.base.trim_start_matches("http://").parse().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(b"GET /v1/event/stream?topic=Job HTTP/1.1\r\nHost: davit\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the stream was admitted");

    // Each job is a ~60 KB event: 200 of them are far more than the budget and every socket buffer on the way.
    let padding = "x".repeat(60_000);
    for n in 0..200 {
        let spec = format!(
            "name: big-{n}\ngroups:\n  - name: g\n    count: 0\n    tasks:\n      - {{name: t, driver: exec, config: {{command: /bin/true}}, env: {{PAD: {padding}}}}}\n"
        );
        let (status, body) = server.request("POST", "/v1/jobs", &spec).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut received)).await.expect("the stream ends").unwrap();
    let text = String::from_utf8_lossy(&received);
    let end = text.lines().find(|line| line.contains("stream_lagged")).unwrap_or_else(|| panic!("no lag notice in {} bytes", text.len()));
    let end: davit_api::http::EventStreamEnd = serde_json::from_str(end).unwrap();
    assert!(end.error.message.contains("fell more than 262144 bytes behind"), "{}", end.error.message);
    assert!(end.error.message.contains("--event-stream-buffer-bytes"), "{}", end.error.message);
    let resume: u64 = end.error.message.split("resume with index=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let delivered = text.lines().filter(|line| line.contains("\"topic\":\"Job\"")).count();
    assert!(delivered < 200, "the slow subscriber was ended before it got every event ({delivered})");

    // A new stream from the index named goes on where the ended one stopped.
    let client = davit_client::Client::new(&server.base);
    let mut events = Box::pin(client.event_stream(resume, &["Job".to_string()]).await.unwrap());
    let next = futures_util::StreamExt::next(&mut events).await.unwrap().unwrap();
    assert!(next.index > resume, "{next:?} after {resume}");
}
