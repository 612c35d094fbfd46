//! The `nats` backend against the real nats-server with JetStream on
//! 127.0.0.1:4222 (a private `nats-server -js` on a free port, with its own
//! store, for the restart test): two gateway instances on one stream, one
//! consumer per subject per gateway, exact resume across instances, history,
//! refusals, slow clients, and a broker restart mid-stream.
//!
//! Each test makes its own stream (deleted when the test ends, even when it
//! fails) with its own subjects, so tests run in parallel. Every wait is
//! bounded.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, stream::StorageType};
use backends::Backend;
use backends::nats::{Nats, NatsConfig};
use bytes::Bytes;
use futures::StreamExt;
use gateway::config::{RouteConfig, ServerConfig};
use gateway_tests::{
    TestServer, client, ndjson_lines, numbers as ns, read_numbered, take_events, within_for,
};
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(10);
/// For what waits on a broker restart: the server's start, the clients'
/// reconnection, the stream's recovery.
const RESTART_BOUND: Duration = Duration::from_secs(30);
const NATS: &str = "nats://127.0.0.1:4222";

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(BOUND, what, future).await
}

async fn jetstream(url: &str) -> jetstream::Context {
    let client = within("connecting to NATS", async_nats::connect(url))
        .await
        .expect("nats-server with JetStream is running (.ci/run starts it)");
    jetstream::new(client)
}

/// A stream of this test only, on subjects `<prefix>.>`; deleted on drop.
struct TestStream {
    url: String,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn new(url: &str, name: &str, storage: StorageType) -> Self {
        Self::with(url, name, |c| c.storage = storage).await
    }

    async fn with(
        url: &str,
        name: &str,
        edit: impl FnOnce(&mut jetstream::stream::Config),
    ) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tag = format!("{name}_{}_{nanos}", std::process::id());
        let stream = Self {
            url: url.into(),
            name: format!("TEST_{tag}"),
            prefix: format!("test.{tag}"),
        };
        let mut config = jetstream::stream::Config {
            name: stream.name.clone(),
            subjects: vec![format!("{}.>", stream.prefix)],
            storage: StorageType::Memory,
            ..Default::default()
        };
        edit(&mut config);
        within(
            "creating the stream",
            jetstream(url).await.create_stream(config),
        )
        .await
        .expect("stream created");
        stream
    }

    fn subject(&self, room: &str) -> String {
        format!("{}.{room}", self.prefix)
    }

    async fn consumers(&self) -> usize {
        let js = jetstream(&self.url).await;
        let stream = within("stream info", js.get_stream(&self.name))
            .await
            .expect("stream info");
        stream.cached_info().state.consumer_count
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // On a thread of its own, so that it runs even while a failed test
        // unwinds out of its runtime.
        let (url, name) = (self.url.clone(), self.name.clone());
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let connected =
                    tokio::time::timeout(BOUND, async_nats::connect(url.as_str())).await;
                if let Ok(Ok(client)) = connected {
                    let js = jetstream::new(client);
                    let _ = tokio::time::timeout(BOUND, js.delete_stream(&name)).await;
                }
            });
        })
        .join();
        if deleted.is_err() {
            eprintln!("could not delete stream {}", self.name);
        }
    }
}

/// A gateway with one route `/s/{room}` reading `<prefix>.{room}` of the
/// test's stream.
async fn gateway(
    url: &str,
    stream: &TestStream,
    edit: impl FnOnce(&mut NatsConfig),
    route: impl FnOnce(&mut RouteConfig),
) -> TestServer {
    let mut config = NatsConfig {
        url: url.into(),
        stream: stream.name.clone(),
        subject: format!("{}.{{room}}", stream.prefix),
        allow: Some(format!("{}.*", stream.prefix)),
        ..NatsConfig::default()
    };
    edit(&mut config);
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let backends: Vec<(&str, Arc<dyn Backend>)> = vec![("bus", Arc::new(Nats::new(config)))];
    TestServer::route("/s/{room}", backends, route, ServerConfig::default()).await
}

/// Publishes `{"n": n}` messages and waits for the stream to store each;
/// returns their sequences.
async fn publish(url: &str, subject: &str, ns: std::ops::Range<u64>) -> Vec<u64> {
    let js = jetstream(url).await;
    let mut seqs = Vec::new();
    for n in ns {
        let payload = Bytes::from(json!({ "n": n }).to_string());
        let ack = within("a publish", async {
            js.publish(subject.to_string(), payload)
                .await
                .expect("publish")
                .await
                .expect("stored")
        })
        .await;
        seqs.push(ack.sequence);
    }
    seqs
}

/// An NDJSON stream opened with an optional `Last-Event-ID`.
async fn open(server: &TestServer, room: &str, last: Option<&str>) -> reqwest::Response {
    let mut request = client().get(server.url(&format!("/s/{room}?format=ndjson")));
    if let Some(id) = last {
        request = request.header("last-event-id", id);
    }
    let response = within("the stream opens", request.send())
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response
}

/// The status and JSON body of a request that is refused.
async fn refused(server: &TestServer, path: &str, last: Option<&str>) -> (u16, Value) {
    let mut request = client().get(server.url(path));
    if let Some(id) = last {
        request = request.header("last-event-id", id);
    }
    let response = within("a request", request.send()).await.expect("request");
    let status = response.status().as_u16();
    let body = within("the body", response.json()).await.expect("JSON");
    (status, body)
}

/// The next `count` lines as JSON.
async fn take(
    lines: &mut (impl futures::Stream<Item = String> + Unpin),
    count: usize,
) -> Vec<Value> {
    take_events(lines, count, BOUND).await
}

#[tokio::test]
async fn one_publish_reaches_two_gateways_through_one_consumer_each() {
    let stream = TestStream::new(NATS, "two", StorageType::Memory).await;
    // Heartbeats make the gateway write, and so notice clients that left.
    let fast_beats = |r: &mut RouteConfig| r.heartbeat = Duration::from_millis(200);
    let a = gateway(NATS, &stream, |_| {}, fast_beats).await;
    let b = gateway(NATS, &stream, |_| {}, fast_beats).await;
    let mut on_a = ndjson_lines(open(&a, "lobby", None).await);
    let mut also_on_a = ndjson_lines(open(&a, "lobby", None).await);
    let mut on_b = ndjson_lines(open(&b, "lobby", None).await);
    // One live consumer per subject per gateway, however many clients.
    assert_eq!(stream.consumers().await, 2);
    // The streams are open, so their readers are there: publish now.
    publish(NATS, &stream.subject("lobby"), 0..3).await;
    assert_eq!(ns(&take(&mut on_a, 3).await), [0, 1, 2]);
    assert_eq!(ns(&take(&mut also_on_a, 3).await), [0, 1, 2]);
    assert_eq!(ns(&take(&mut on_b, 3).await), [0, 1, 2]);
    // When the last client of a gateway leaves, its consumer goes.
    drop((on_a, also_on_a, on_b));
    within("the consumers are deleted", async {
        while stream.consumers().await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_resumes_exactly_on_the_other_gateway() {
    let stream = TestStream::new(NATS, "resume", StorageType::Memory).await;
    let subject = stream.subject("r");
    let a = gateway(NATS, &stream, |_| {}, |_| {}).await;
    let b = gateway(NATS, &stream, |_| {}, |_| {}).await;
    let mut lines = ndjson_lines(open(&a, "r", None).await);
    // Another subject of the same stream, interleaved: not this client's.
    publish(NATS, &stream.subject("other"), 100..102).await;
    let seqs = publish(NATS, &subject, 0..3).await;
    assert_eq!(ns(&take(&mut lines, 3).await), [0, 1, 2]);
    drop(lines);
    // Missed while away, then resumed on the other instance.
    publish(NATS, &subject, 3..5).await;
    publish(NATS, &stream.subject("other"), 102..104).await;
    publish(NATS, &subject, 5..7).await;
    let resume = seqs[2].to_string();
    let mut lines = ndjson_lines(open(&b, "r", Some(&resume)).await);
    assert_eq!(ns(&take(&mut lines, 4).await), [3, 4, 5, 6]);
    publish(NATS, &subject, 7..9).await;
    assert_eq!(
        ns(&take(&mut lines, 2).await),
        [7, 8],
        "no repeats, no gaps"
    );
}

#[tokio::test]
async fn resuming_from_far_back_is_bounded_and_goes_on_from_the_named_id() {
    let stream = TestStream::new(NATS, "far", StorageType::Memory).await;
    let subject = stream.subject("f");
    // Sequences 1..=10 hold n = 0..10.
    publish(NATS, &subject, 0..10).await;
    let server = gateway(NATS, &stream, |c| c.max_catchup = 4, |_| {}).await;
    let mut from = "0".to_string();
    let mut got = Vec::new();
    for _ in 0..2 {
        // Four events, then the lagged error naming where to go on, then
        // the end.
        let lines = ndjson_lines(open(&server, "f", Some(&from)).await);
        let lines: Vec<String> = within("the bounded stream", lines.collect()).await;
        let values: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .filter(|v: &Value| v["event"] != "gateway.close")
            .collect();
        assert_eq!(values.len(), 5, "{values:?}");
        got.extend(ns(&values[..4]));
        assert_eq!(values[4]["kind"], "lagged", "{}", values[4]);
        let message = values[4]["message"].as_str().expect("message");
        from = message.rsplit(' ').next().expect("an id").to_string();
    }
    assert_eq!(from, "8");
    let mut lines = ndjson_lines(open(&server, "f", Some(&from)).await);
    got.extend(ns(&take(&mut lines, 2).await));
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "each once, in order");
    // Within the bound now: it goes on live.
    publish(NATS, &subject, 10..11).await;
    assert_eq!(ns(&take(&mut lines, 1).await), [10]);
}

#[tokio::test]
async fn a_long_catch_up_comes_page_by_page_without_gap_or_repeat() {
    let stream = TestStream::new(NATS, "pages", StorageType::Memory).await;
    let subject = stream.subject("p");
    let total = 700u64;
    // Interleaved with another subject, so that sequences are not n + 1.
    let js = jetstream(NATS).await;
    let mut acks = Vec::new();
    for n in 0..total {
        for (room, payload) in [("p", json!({ "n": n })), ("q", json!({ "other": n }))] {
            let payload = Bytes::from(payload.to_string());
            let sent = js.publish(stream.subject(room), payload);
            acks.push(within("a publish", sent).await.expect("publish"));
        }
    }
    for ack in acks {
        within("an ack", ack.into_future()).await.expect("stored");
    }
    let server = gateway(NATS, &stream, |_| {}, |_| {}).await;
    let mut lines = ndjson_lines(open(&server, "p", Some("0")).await);
    assert_eq!(
        ns(&take(&mut lines, total as usize).await),
        (0..total).collect::<Vec<_>>()
    );
    publish(NATS, &subject, total..total + 1).await;
    assert_eq!(ns(&take(&mut lines, 1).await), [total], "then live");
}

#[tokio::test]
async fn history_names_ids_and_refusals() {
    let stream = TestStream::new(NATS, "checks", StorageType::Memory).await;
    let subject = stream.subject("h");
    publish(NATS, &subject, 0..5).await;
    publish(NATS, &stream.subject("other"), 100..103).await;
    // A named event with a text payload.
    let js = jetstream(NATS).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("event", "greeting");
    let ack = within("a publish", async {
        js.publish_with_headers(subject.clone(), headers, Bytes::from("hello there"))
            .await
            .expect("publish")
            .await
            .expect("stored")
    })
    .await;
    let server = gateway(NATS, &stream, |c| c.history = 3, |_| {}).await;
    let mut lines = ndjson_lines(open(&server, "h", None).await);
    let history = take(&mut lines, 3).await;
    assert_eq!(
        history,
        [json!({"n": 3}), json!({"n": 4}), json!("hello there")],
        "the last three of this subject"
    );
    // SSE: the ids are the stream sequences, the name comes from the header.
    let response = within(
        "an SSE stream",
        client().get(server.url("/s/h?format=sse")).send(),
    )
    .await
    .expect("request");
    let mut events = gateway_tests::sse_events(response);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within("an event", events.next()).await.expect("event"));
    }
    assert_eq!(got[2].id, ack.sequence.to_string());
    assert_eq!(got[2].event, "greeting");
    assert_eq!(got[2].data, "hello there");
    assert_eq!(got[0].event, "message");

    // Ids that are not this stream's sequences.
    let (status, body) = refused(&server, "/s/h", Some("nope")).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("bad_request")),
        "{body}"
    );
    let (status, body) = refused(&server, "/s/h", Some("1000000")).await;
    assert_eq!(status, 400, "past the stream's end: {body}");
    // A parameter that would change the subject.
    let (status, body) = refused(&server, "/s/a.b", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = refused(&server, "/s/%3E", None).await;
    assert_eq!(status, 400);
    // A subject outside `allow` is not there.
    let narrow = gateway(
        NATS,
        &stream,
        |c| c.allow = Some(format!("{}.lobby", stream.prefix)),
        |_| {},
    )
    .await;
    let (status, body) = refused(&narrow, "/s/h", None).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("not_found")),
        "{body}"
    );
    // One subject more than `max_subjects` while the others are read.
    let capped = gateway(NATS, &stream, |c| c.max_subjects = 1, |_| {}).await;
    let held = open(&capped, "h", None).await;
    let (status, body) = refused(&capped, "/s/other", None).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "{body}"
    );
    drop(held);
    // A subject the stream does not hold.
    let elsewhere = gateway(
        NATS,
        &stream,
        |c| {
            c.subject = format!("{}x.{{room}}", stream.prefix);
            c.allow = Some(format!("{}x.*", stream.prefix));
        },
        |_| {},
    )
    .await;
    let (status, body) = refused(&elsewhere, "/s/h", None).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("not_found")),
        "{body}"
    );
    // A stream that does not exist: the gateway does not make it.
    let missing = gateway(
        NATS,
        &stream,
        |c| c.stream = format!("{}_MISSING", stream.name),
        |_| {},
    )
    .await;
    let (status, body) = refused(&missing, "/s/h", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no JetStream stream")),
        "{body}"
    );
}

#[tokio::test]
async fn an_unreachable_nats_is_a_503_before_the_stream() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let stream = TestStream::new(NATS, "down", StorageType::Memory).await;
    let server = gateway(&format!("nats://127.0.0.1:{port}"), &stream, |_| {}, |_| {}).await;
    let (status, body) = refused(&server, "/s/a", None).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "{body}"
    );
}

#[tokio::test]
async fn a_slow_client_does_not_hold_back_a_fast_one_and_learns_where_to_resume() {
    let stream = TestStream::new(NATS, "slow", StorageType::Memory).await;
    let subject = stream.subject("s");
    let server = gateway(
        NATS,
        &stream,
        |c| {
            c.buffer = 64;
            c.max_catchup = 256;
        },
        |_| {},
    )
    .await;
    // The slow client opens its stream and reads nothing.
    let slow = open(&server, "s", None).await;
    let mut fast = ndjson_lines(open(&server, "s", None).await);
    // Far more bytes than the slow client's socket buffers hold, published
    // while the fast client reads.
    let total = 600u64;
    let publisher = tokio::spawn({
        let subject = subject.clone();
        async move {
            let pad = "x".repeat(64 * 1024);
            let js = jetstream(NATS).await;
            for n in 0..total {
                let payload = Bytes::from(json!({ "n": n, "pad": pad }).to_string());
                js.publish(subject.clone(), payload)
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
            }
        }
    });
    let got = take(&mut fast, total as usize).await;
    assert_eq!(ns(&got), (0..total).collect::<Vec<_>>());
    within("the publisher", publisher).await.expect("published");
    // The slow one now reads: some events, then the lagged error naming
    // the id to resume from, then the end.
    let (mut seen, lagged) = read_numbered(&mut ndjson_lines(slow), BOUND).await;
    let lagged = lagged.expect("a lagged error event");
    assert_eq!(lagged["kind"], "lagged", "{lagged}");
    assert!((seen.len() as u64) < total, "the slow client was cut short");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats: {seen:?}"
    );
    assert_eq!(
        seen,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "nothing skipped before the error"
    );
    // The id it names is the last event the client got (the stream holds
    // nothing else, so message n has sequence n + 1) and resumes exactly
    // after it; each resume may catch up `max_catchup` messages and name the
    // next id, up to the end.
    let mut lagged = lagged;
    for _ in 0..10 {
        let message = lagged["message"].as_str().expect("a message").to_string();
        let id = message.rsplit(' ').next().expect("an id");
        assert_eq!(id, seen.len().to_string(), "{message}");
        let mut lines = ndjson_lines(open(&server, "s", Some(id)).await);
        let mut next = None;
        while let Some(line) = within("a resumed stream", lines.next()).await {
            let value: Value = serde_json::from_str(&line).expect("JSON line");
            if value["event"] == "gateway.error" {
                next = Some(value);
                break;
            } else if let Some(n) = value["n"].as_u64() {
                seen.push(n);
                if n + 1 == total {
                    break;
                }
            }
        }
        match next {
            Some(again) => lagged = again,
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "resumed to the end, exactly"
    );
}

#[tokio::test]
async fn a_client_that_lags_before_its_first_event_gets_no_old_messages() {
    let stream = TestStream::new(NATS, "early", StorageType::Memory).await;
    let subject = stream.subject("e");
    publish(NATS, &subject, 0..20).await;
    let server = gateway(NATS, &stream, |c| c.buffer = 4, |_| {}).await;
    let mut lines = ndjson_lines(open(&server, "e", None).await);
    // A burst far over the buffer: every publish sent before any ack is
    // awaited.
    let js = jetstream(NATS).await;
    let mut acks = Vec::new();
    for n in 100..200u64 {
        let payload = Bytes::from(json!({ "n": n }).to_string());
        acks.push(
            within("a publish", js.publish(subject.clone(), payload))
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        within("an ack", ack.into_future()).await.expect("stored");
    }
    assert_eq!(
        ns(&take(&mut lines, 100).await),
        (100..200).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn messages_removed_before_a_client_read_them_are_announced_not_skipped_silently() {
    // The stream keeps 5 messages: publishing 10 removes the first 5.
    let stream = TestStream::with(NATS, "trim", |c| c.max_messages = 5).await;
    let subject = stream.subject("t");
    let seqs = publish(NATS, &subject, 0..10).await;
    let server = gateway(NATS, &stream, |_| {}, |_| {}).await;
    let mut lines = ndjson_lines(open(&server, "t", Some(&seqs[1].to_string())).await);
    let first = take(&mut lines, 1).await;
    assert_eq!(first[0]["event"], "gateway.error", "{first:?}");
    assert_eq!(first[0]["kind"], "lagged");
    assert!(
        first[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("removed"),
        "{first:?}"
    );
    assert_eq!(ns(&take(&mut lines, 5).await), [5, 6, 7, 8, 9]);
    // Resuming from the oldest left's predecessor is no gap.
    let mut lines = ndjson_lines(open(&server, "t", Some(&seqs[4].to_string())).await);
    assert_eq!(ns(&take(&mut lines, 5).await), [5, 6, 7, 8, 9]);
}

/// A private nats-server with JetStream on a free port, its store in a
/// directory that outlives restarts.
struct PrivateNats {
    port: u16,
    // Dropped first: the server is killed before its store is removed.
    child: Option<tokio::process::Child>,
    store: tempfile::TempDir,
}

impl PrivateNats {
    async fn start(port: u16, store: tempfile::TempDir) -> Self {
        let child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server is installed (.ci/run installs it)");
        let url = format!("nats://127.0.0.1:{port}");
        within_for(RESTART_BOUND, "the private NATS starts", async {
            loop {
                if let Ok(Ok(client)) =
                    tokio::time::timeout(BOUND, async_nats::connect(url.as_str())).await
                {
                    // JetStream answers too: a stream that is not there is
                    // its answer.
                    let js = jetstream::new(client);
                    if let Err(e) = js.get_stream("PROBE").await {
                        if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Self {
            port,
            child: Some(child),
            store,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (no goodbye to its clients) and keeps its store.
    async fn kill(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.store
    }
}

#[tokio::test]
async fn after_a_broker_restart_clients_get_what_follows_nothing_lost_or_repeated() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let store = tempfile::tempdir().expect("a store directory");
    let broker = PrivateNats::start(port, store).await;
    let url = broker.url();
    let stream = TestStream::new(&url, "restart", StorageType::File).await;
    let subject = stream.subject("k");
    let server = gateway(&url, &stream, |_| {}, |_| {}).await;
    let mut first = ndjson_lines(open(&server, "k", None).await);
    let mut second = ndjson_lines(open(&server, "k", None).await);
    let before = publish(&url, &subject, 0..2).await;
    assert_eq!(ns(&take(&mut first, 2).await), [0, 1]);
    assert_eq!(ns(&take(&mut second, 2).await), [0, 1]);

    let store = broker.kill().await;
    let broker = PrivateNats::start(port, store).await;
    let js = jetstream(&broker.url()).await;
    within_for(RESTART_BOUND, "the stream is back", async {
        while js.get_stream(&stream.name).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The stream survived with its sequences: published right away, before
    // the gateway has necessarily noticed, these must all come, once.
    let after = publish(&broker.url(), &subject, 2..5).await;
    assert_eq!(after[0], before[1] + 1, "the stream kept its sequences");
    for lines in [&mut first, &mut second] {
        let got = take_events(lines, 3, RESTART_BOUND).await;
        assert_eq!(ns(&got), [2, 3, 4]);
    }
    // And what follows goes on, still once each.
    publish(&broker.url(), &subject, 5..7).await;
    assert_eq!(ns(&take(&mut first, 2).await), [5, 6]);
    assert_eq!(ns(&take(&mut second, 2).await), [5, 6]);
    drop(stream);
    drop(broker);
}

/// A stream deleted and created again numbers from 1 again: the shared
/// reader follows the new messages, and clients are told the ids started
/// over (they would otherwise look old, and be dropped silently).
#[tokio::test]
async fn a_stream_created_again_is_followed_and_announced() {
    let stream = TestStream::new(NATS, "again", StorageType::Memory).await;
    let server = gateway(NATS, &stream, |_| {}, |_| {}).await;
    let mut lines = ndjson_lines(open(&server, "r", None).await);
    let subject = stream.subject("r");
    publish(NATS, &subject, 0..5).await;
    assert_eq!(ns(&take(&mut lines, 5).await), [0, 1, 2, 3, 4]);

    let js = jetstream(NATS).await;
    within("deleting the stream", js.delete_stream(&stream.name))
        .await
        .expect("deleted");
    within(
        "creating it again",
        js.create_stream(jetstream::stream::Config {
            name: stream.name.clone(),
            subjects: vec![format!("{}.>", stream.prefix)],
            storage: StorageType::Memory,
            ..Default::default()
        }),
    )
    .await
    .expect("created again");
    // Published until the reader has caught on (it retries with backoff).
    let seqs = publish(NATS, &subject, 5..7).await;
    assert_eq!(seqs, [1, 2], "the new stream numbers from 1");
    let got = take_events(&mut lines, 3, RESTART_BOUND).await;
    assert_eq!(got[0]["event"], "gateway.error", "{got:?}");
    assert_eq!(got[0]["kind"], "lagged");
    assert_eq!(ns(&got[1..]), [5, 6]);
}
