//! The `http` backend through the whole gateway: a scripted upstream on a
//! real listener (axum on `127.0.0.1:0`) that streams SSE, NDJSON or lines,
//! read by a real client in both output formats, event by event; what the
//! upstream receives; reconnection with `Last-Event-ID`; errors before the
//! first byte as statuses and after it as `gateway.error` events; and the
//! upstream request closed when the client goes away.
//!
//! The upstream waits on gates the test opens, so an order is proven rather
//! than hoped for. Tests about timeouts run on tokio's paused clock (the
//! gateway, the upstream and the client all live in the test's runtime), so
//! a 30 s idle timeout takes no real time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use backends::BackendConfig;
use backends::http::{HttpConfig, UpstreamFormat};
use futures::{Stream, StreamExt};
use gateway::config::{Envelope, RouteConfig, ServerConfig};
use gateway_tests::{TestServer, client, ndjson_lines, sse_events};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Longest wait for anything on the real clock.
const BOUND: Duration = Duration::from_secs(5);
/// Longest wait on the paused clock, where waiting costs no real time: more
/// than any timeout under test.
const PAUSED_BOUND: Duration = Duration::from_secs(3600);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(BOUND, what, future).await
}

async fn within_for<T>(bound: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(bound, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {bound:?}"))
}

/// One step of an upstream response body.
#[derive(Clone, Debug)]
enum Step {
    /// Send these bytes.
    Send(String),
    /// Wait until the test opens the gate.
    Gate(Arc<Notify>),
    /// Fail the body: the connection is cut without a proper end.
    Drop,
    /// Send nothing more, and never end.
    Hang,
}

fn send(text: &str) -> Step {
    Step::Send(text.to_string())
}

/// One answer of the upstream.
#[derive(Clone, Debug)]
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    /// Never send the response headers.
    stall: bool,
    steps: Vec<Step>,
}

impl Reply {
    fn stream(content_type: &'static str, steps: Vec<Step>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type,
            stall: false,
            steps,
        }
    }

    fn status(status: u16, body: &str) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            content_type: "text/plain",
            stall: false,
            steps: vec![send(body)],
        }
    }

    fn stall() -> Self {
        Self {
            stall: true,
            ..Self::status(200, "")
        }
    }
}

/// A request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
}

struct Script {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    /// Response bodies dropped so far: ended, or cut by the client.
    closed: watch::Sender<usize>,
}

/// An upstream that answers each request with the next scripted reply (503
/// once the script is over) and records what it received.
struct Upstream {
    addr: SocketAddr,
    script: Arc<Script>,
}

impl Upstream {
    async fn start(replies: Vec<Reply>) -> Self {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            seen: Mutex::new(Vec::new()),
            closed: watch::Sender::new(0),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&script));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, script }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().expect("lock").clone()
    }

    /// Waits until `n` response bodies were dropped.
    async fn closed(&self, n: usize) {
        let mut closed = self.script.closed.subscribe();
        within(
            "the upstream response closing",
            closed.wait_for(|c| *c >= n),
        )
        .await
        .expect("the script lives");
    }
}

/// Counts a response body as closed when hyper drops it.
struct Closing(Arc<Script>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.closed.send_modify(|n| *n += 1);
    }
}

async fn answer(State(script): State<Arc<Script>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .expect("request body");
    script.seen.lock().expect("lock").push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let reply = script
        .replies
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or_else(|| Reply::status(503, "the script is over"));
    if reply.stall {
        std::future::pending::<()>().await;
    }
    let state = (reply.steps.into_iter(), Closing(Arc::clone(&script)));
    let body = futures::stream::unfold(state, |(mut steps, closing)| async move {
        loop {
            match steps.next()? {
                Step::Send(text) => return Some((Ok(Bytes::from(text)), (steps, closing))),
                Step::Gate(gate) => gate.notified().await,
                Step::Drop => {
                    let cut = std::io::Error::other("the upstream drops the connection");
                    return Some((Err(cut), (steps, closing)));
                }
                Step::Hang => std::future::pending::<()>().await,
            }
        }
    });
    Response::builder()
        .status(reply.status)
        .header(header::CONTENT_TYPE, reply.content_type)
        .body(Body::from_stream(body))
        .expect("response")
}

/// A gateway with one route, `/s/{room}`, whose one backend `up` is the
/// `http` backend with `config`.
async fn gateway(config: HttpConfig, edit: impl FnOnce(&mut RouteConfig)) -> TestServer {
    let config = BackendConfig::Http(config);
    let problems = config.validate();
    assert!(problems.is_empty(), "{problems:?}");
    TestServer::route(
        "/s/{room}",
        vec![("up", config.build())],
        edit,
        ServerConfig::default(),
    )
    .await
}

/// The client's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Ndjson,
    Sse,
}

const FORMATS: [Format; 2] = [Format::Ndjson, Format::Sse];

impl Format {
    fn accept(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Sse => "text/event-stream",
        }
    }

    /// The route options that go with reading this format here: NDJSON in
    /// an envelope (so that ids and names show), SSE as it comes (ids and
    /// names in its own fields, the data alone).
    fn route(self) -> impl FnOnce(&mut RouteConfig) {
        move |route: &mut RouteConfig| {
            if self == Self::Ndjson {
                route.envelope = Envelope::Always;
            }
        }
    }
}

/// An event as a client sees it, in either format: id, name, data.
type Seen3 = (Option<String>, Option<String>, Value);

fn ev(id: Option<&str>, name: Option<&str>, data: Value) -> Seen3 {
    (id.map(str::to_string), name.map(str::to_string), data)
}

/// The events of a gateway response, one at a time, in either format.
struct Events(std::pin::Pin<Box<dyn Stream<Item = Seen3> + Send>>);

impl Events {
    fn new(format: Format, response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        let events = match format {
            Format::Ndjson => ndjson_lines(response)
                .map(|line| {
                    let line: Value = serde_json::from_str(&line).expect("JSON");
                    let text =
                        |key: &str| line.get(key).and_then(Value::as_str).map(str::to_string);
                    // The gateway's own events carry no source "up".
                    if line["source"] == "up" {
                        (text("id"), text("event"), line["data"].clone())
                    } else {
                        (None, text("event"), line["data"].clone())
                    }
                })
                .boxed(),
            Format::Sse => sse_events(response)
                .map(|e| {
                    let id = Some(e.id).filter(|id| !id.is_empty());
                    let name = Some(e.event).filter(|n| n != "message");
                    let data = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data));
                    (id, name, data)
                })
                .boxed(),
        };
        Self(events)
    }

    async fn next(&mut self, what: &str) -> Option<Seen3> {
        within(what, self.0.next()).await
    }

    async fn rest(&mut self) -> Vec<Seen3> {
        within("the end of the stream", self.0.by_ref().collect()).await
    }
}

async fn open(server: &TestServer, format: Format) -> Events {
    let response = client()
        .get(server.url("/s/r1"))
        .header("accept", format.accept())
        .send()
        .await
        .expect("response");
    Events::new(format, response)
}

/// Streams three upstream events through the gateway in both formats, the
/// upstream holding the second until the client has the first.
async fn event_by_event(
    content_type: &'static str,
    body: [&str; 3],
    config: HttpConfig,
    expected: [Seen3; 3],
) {
    for format in FORMATS {
        let gate = Arc::new(Notify::new());
        let upstream = Upstream::start(vec![Reply::stream(
            content_type,
            vec![
                send(body[0]),
                Step::Gate(Arc::clone(&gate)),
                send(body[1]),
                send(body[2]),
            ],
        )])
        .await;
        let config = HttpConfig {
            url: upstream.url("/events/{room}"),
            ..config.clone()
        };
        let server = gateway(config, format.route()).await;
        let mut events = open(&server, format).await;
        assert_eq!(
            events.next("the first event").await.as_ref(),
            Some(&expected[0]),
            "{format:?}"
        );
        // The upstream cannot have sent the second: the gate is closed.
        gate.notify_one();
        assert_eq!(
            events.next("the second event").await.as_ref(),
            Some(&expected[1]),
            "{format:?}"
        );
        assert_eq!(events.rest().await, [expected[2].clone()], "{format:?}");
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].uri.as_str()),
            ("GET", "/events/r1")
        );
    }
}

#[tokio::test]
async fn an_sse_upstream_streams_event_by_event_in_both_formats() {
    event_by_event(
        "text/event-stream; charset=utf-8",
        [
            // A comment and a retry hint send nothing to the client.
            ": welcome\n\nretry: 1000\n\nid: 1\nevent: token\ndata: {\"text\": \"Hel\"}\n\n",
            "id: 2\ndata: plain\r\ndata: text\r\n\r\n",
            "id: 3\nevent: done\ndata: {\"finish\": true}\n\n",
        ],
        HttpConfig::new(""),
        [
            ev(Some("1"), Some("token"), json!({"text": "Hel"})),
            ev(Some("2"), None, json!("plain\ntext")),
            ev(Some("3"), Some("done"), json!({"finish": true})),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_ndjson_upstream_streams_event_by_event_in_both_formats() {
    event_by_event(
        "application/x-ndjson",
        [
            "{\"seq\": 1, \"type\": \"delta\", \"text\": \"Hel\"}\n",
            "{\"seq\": 2, \"type\": \"delta\", \"text\": \"lo\"}\n",
            "{\"seq\": 3, \"type\": \"done\"}\n",
        ],
        HttpConfig {
            id_field: Some("seq".into()),
            name_field: Some("type".into()),
            ..HttpConfig::new("")
        },
        [
            ev(
                Some("1"),
                Some("delta"),
                json!({"seq": 1, "type": "delta", "text": "Hel"}),
            ),
            ev(
                Some("2"),
                Some("delta"),
                json!({"seq": 2, "type": "delta", "text": "lo"}),
            ),
            ev(Some("3"), Some("done"), json!({"seq": 3, "type": "done"})),
        ],
    )
    .await;
}

#[tokio::test]
async fn plain_lines_become_text_events() {
    event_by_event(
        "text/plain",
        [
            "first line\n",
            "second line\r\n\n",
            "last, without a line break",
        ],
        HttpConfig::new(""),
        [
            ev(None, None, json!("first line")),
            ev(None, None, json!("second line")),
            ev(None, None, json!("last, without a line break")),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_configured_format_overrides_the_content_type() {
    let upstream = Upstream::start(vec![Reply::stream(
        "application/octet-stream",
        vec![send("id: 9\ndata: {\"a\": 1}\n\n")],
    )])
    .await;
    let config = HttpConfig {
        format: UpstreamFormat::Sse,
        ..HttpConfig::new(upstream.url("/x"))
    };
    let server = gateway(config, Format::Ndjson.route()).await;
    let events = open(&server, Format::Ndjson).await.rest().await;
    assert_eq!(events, [ev(Some("9"), None, json!({"a": 1}))]);
    assert_eq!(
        upstream.seen()[0].header("accept"),
        Some("text/event-stream")
    );
}

/// A variable of this process's environment that fits in a header value
/// (tests cannot set one: that is `unsafe`, and the workspace forbids it).
fn header_safe_env_var() -> (String, String) {
    std::env::vars()
        .filter(|(name, value)| {
            name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !value.is_empty()
                && value.trim() == value
                && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        })
        .min()
        .expect("an environment variable")
}

/// The client's JSON body, the configured headers (one from the
/// environment) and the forwarded ones reach the upstream; headers that are
/// not forwarded do not; path parameters are percent-encoded into the URL.
#[tokio::test]
async fn the_body_and_the_chosen_headers_reach_the_upstream() {
    let upstream = Upstream::start(vec![Reply::stream(
        "text/event-stream",
        vec![send("id: 42\ndata: {\"ok\": true}\n\n")],
    )])
    .await;
    let (var, from_env) = header_safe_env_var();
    let config: HttpConfig = serde_json::from_value(json!({
        "url": upstream.url("/rooms/{room}/stream?tag={room}"),
        "headers": {"Authorization": format!("Bearer ${{{var}}}"), "X-Static": "$${not expanded}"},
        "forward_headers": ["X-Trace"],
    }))
    .expect("config");
    let server = gateway(config, |route| {
        Format::Ndjson.route()(route);
        route.pass_headers = vec!["X-Trace".into(), "X-Passed-Not-Forwarded".into()];
    })
    .await;
    let body = json!({"prompt": "Hi", "options": {"n": [1, 2]}});
    let response = client()
        .post(server.url("/s/a%20b%2Fc"))
        .header("x-trace", "t-1")
        .header("x-passed-not-forwarded", "no")
        .header("x-not-passed", "no")
        .header("authorization", "Bearer the client's own")
        .header("last-event-id", "41")
        .json(&body)
        .send()
        .await
        .expect("response");
    let events = Events::new(Format::Ndjson, response).rest().await;
    assert_eq!(events, [ev(Some("42"), None, json!({"ok": true}))]);

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/rooms/a%20b%2Fc/stream?tag=a%20b%2Fc");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).expect("JSON body"),
        body
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {from_env}").as_str())
    );
    assert_eq!(seen.header("x-static"), Some("${not expanded}"));
    assert_eq!(seen.header("x-trace"), Some("t-1"));
    assert_eq!(seen.header("last-event-id"), Some("41"));
    assert_eq!(seen.header("x-passed-not-forwarded"), None);
    assert_eq!(seen.header("x-not-passed"), None);
    assert!(
        seen.header("accept")
            .is_some_and(|a| a.starts_with("text/event-stream")),
        "{:?}",
        seen.header("accept")
    );
    assert!(
        seen.header("user-agent")
            .is_some_and(|a| a.starts_with("gateway/"))
    );

    // With GET (and the client's GET), no body goes upstream.
    let upstream = Upstream::start(vec![Reply::stream("text/plain", vec![send("x\n")])]).await;
    let server = gateway(HttpConfig::new(upstream.url("/g")), Format::Ndjson.route()).await;
    let events = open(&server, Format::Ndjson).await.rest().await;
    assert_eq!(events, [ev(None, None, json!("x"))]);
    let seen = &upstream.seen()[0];
    assert_eq!((seen.method.as_str(), seen.body.len()), ("GET", 0));
    assert_eq!(seen.header("content-type"), None);
}

/// The upstream drops after event 2; the backend reconnects with
/// `Last-Event-ID: 2`, the upstream resumes inclusively (sending 2 again),
/// and the client gets 1, 2, 3, 4 once each, in order.
#[tokio::test]
async fn a_dropped_upstream_is_resumed_and_nothing_repeats() {
    for format in FORMATS {
        let gate = Arc::new(Notify::new());
        let upstream = Upstream::start(vec![
            Reply::stream(
                "text/event-stream",
                vec![
                    send("id: 1\ndata: {\"n\": 1}\n\n"),
                    send("id: 2\ndata: {\"n\": 2}\n\n"),
                    Step::Gate(Arc::clone(&gate)),
                    Step::Drop,
                ],
            ),
            Reply::stream(
                "text/event-stream",
                vec![
                    send("id: 2\ndata: {\"n\": 2}\n\n"),
                    send("id: 3\ndata: {\"n\": 3}\n\nid: 4\ndata: {\"n\": 4}\n\n"),
                ],
            ),
        ])
        .await;
        let config = HttpConfig {
            backoff: Duration::from_millis(10),
            ..HttpConfig::new(upstream.url("/e"))
        };
        let server = gateway(config, format.route()).await;
        let mut events = open(&server, format).await;
        let mut seen = Vec::new();
        for what in ["event 1", "event 2"] {
            seen.push(events.next(what).await.expect(what));
        }
        gate.notify_one();
        seen.extend(events.rest().await);
        let expected: Vec<Seen3> = (1..=4)
            .map(|n| ev(Some(&n.to_string()), None, json!({"n": n})))
            .collect();
        assert_eq!(seen, expected, "{format:?}");

        let requests = upstream.seen();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].header("last-event-id"), None);
        assert_eq!(requests[1].header("last-event-id"), Some("2"));
    }
}

/// No byte for `idle_timeout` counts as a drop: the backend closes that
/// connection and resumes on a new one (30 s on the paused clock).
#[tokio::test(start_paused = true)]
async fn an_idle_upstream_counts_as_dropped() {
    let upstream = Upstream::start(vec![
        Reply::stream(
            "application/x-ndjson",
            vec![send("{\"id\": \"a\"}\n"), Step::Hang],
        ),
        Reply::stream("application/x-ndjson", vec![send("{\"id\": \"b\"}\n")]),
    ])
    .await;
    let config = HttpConfig {
        idle_timeout: Duration::from_secs(30),
        id_field: Some("id".into()),
        ..HttpConfig::new(upstream.url("/e"))
    };
    let server = gateway(config, |route| {
        Format::Ndjson.route()(route);
        route.heartbeat = Duration::from_secs(3600);
    })
    .await;
    let start = tokio::time::Instant::now();
    let mut events = open(&server, Format::Ndjson).await;
    let all = within_for(PAUSED_BOUND, "the resumed stream", async {
        let mut all = Vec::new();
        while let Some(event) = events.0.next().await {
            all.push(event);
        }
        all
    })
    .await;
    assert_eq!(
        all,
        [
            ev(Some("a"), None, json!({"id": "a"})),
            ev(Some("b"), None, json!({"id": "b"}))
        ]
    );
    assert!(
        start.elapsed() >= Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let requests = upstream.seen();
    assert_eq!(requests[1].header("last-event-id"), Some("a"));
    // The idle connection was closed, not left open beside the new one.
    upstream.closed(2).await;
}

/// After a drop, every reconnection attempt fails (503): once `retries`
/// attempts are spent, the client gets a `gateway.error` event and the end.
#[tokio::test]
async fn a_spent_retry_budget_ends_with_a_gateway_error_event() {
    for format in FORMATS {
        let gate = Arc::new(Notify::new());
        let upstream = Upstream::start(vec![
            Reply::stream(
                "text/event-stream",
                vec![
                    send("id: 1\ndata: {\"n\": 1}\n\n"),
                    Step::Gate(Arc::clone(&gate)),
                    Step::Drop,
                ],
            ),
            Reply::status(503, "busy"),
            Reply::status(503, "busy"),
        ])
        .await;
        let config = HttpConfig {
            retries: 2,
            backoff: Duration::from_millis(10),
            ..HttpConfig::new(upstream.url("/e"))
        };
        let server = gateway(config, format.route()).await;
        let mut events = open(&server, format).await;
        assert_eq!(
            events.next("event 1").await,
            Some(ev(Some("1"), None, json!({"n": 1})))
        );
        gate.notify_one();
        let rest = events.rest().await;
        assert_eq!(rest.len(), 1, "{rest:?}");
        let (_, name, data) = &rest[0];
        assert_eq!(name.as_deref(), Some("gateway.error"));
        assert_eq!(data["kind"], "upstream");
        let message = data["message"].as_str().expect("message");
        assert!(
            message.contains("503 Service Unavailable: busy")
                && message.contains("gave up after 2 reconnection attempts"),
            "{message}"
        );
        let requests = upstream.seen();
        assert_eq!(requests.len(), 3);
        assert!(
            requests[1..]
                .iter()
                .all(|r| r.header("last-event-id") == Some("1"))
        );
    }
}

/// Without ids a reconnect would send the client what it already has: the
/// stream ends with an error event instead, and no second request is made.
#[tokio::test]
async fn without_ids_a_drop_is_an_error_not_a_replay() {
    let gate = Arc::new(Notify::new());
    let upstream = Upstream::start(vec![Reply::stream(
        "application/x-ndjson",
        vec![
            send("{\"token\": \"a\"}\n"),
            Step::Gate(Arc::clone(&gate)),
            Step::Drop,
        ],
    )])
    .await;
    let server = gateway(HttpConfig::new(upstream.url("/e")), Format::Ndjson.route()).await;
    let mut events = open(&server, Format::Ndjson).await;
    assert_eq!(
        events.next("the event").await,
        Some(ev(None, None, json!({"token": "a"})))
    );
    gate.notify_one();
    let rest = events.rest().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].1.as_deref(), Some("gateway.error"));
    let message = rest[0].2["message"].as_str().expect("message");
    assert!(message.contains("not reconnecting"), "{message}");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn an_upstream_error_before_the_stream_is_a_502_with_its_status_and_words() {
    let upstream = Upstream::start(vec![Reply::status(
        500,
        "model overloaded,\n try again later",
    )])
    .await;
    let server = gateway(HttpConfig::new(upstream.url("/e")), |_| {}).await;
    let response = client()
        .get(server.url("/s/r1"))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["status"], 502);
    assert_eq!(body["error"], "upstream");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.ends_with("answered 500 Internal Server Error: model overloaded, try again later"),
        "{message}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_502() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let server = gateway(HttpConfig::new(format!("http://{addr}/e")), |_| {}).await;
    let response = client()
        .get(server.url("/s/r1"))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "upstream");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("could not be reached"), "{message}");
}

/// An upstream that sends no response headers within `connect_timeout`
/// fails the request with 504, after exactly that long (paused clock).
#[tokio::test(start_paused = true)]
async fn upstream_headers_slower_than_connect_timeout_are_a_504() {
    let upstream = Upstream::start(vec![Reply::stall()]).await;
    let config = HttpConfig {
        connect_timeout: Duration::from_secs(2),
        ..HttpConfig::new(upstream.url("/e"))
    };
    let server = gateway(config, |_| {}).await;
    let start = tokio::time::Instant::now();
    let response = within_for(
        PAUSED_BOUND,
        "the answer",
        client().get(server.url("/s/r1")).send(),
    )
    .await
    .expect("response");
    assert_eq!(response.status(), 504);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "timeout");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn an_upstream_204_is_a_204() {
    let upstream = Upstream::start(vec![Reply::status(204, "")]).await;
    let server = gateway(HttpConfig::new(upstream.url("/e")), |_| {}).await;
    let response = client()
        .get(server.url("/s/r1"))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 204);
}

/// A client that goes away closes the upstream request at once: the
/// upstream's response body, which would never end, is dropped.
#[tokio::test]
async fn a_client_that_goes_away_closes_the_upstream_request() {
    let upstream = Upstream::start(vec![Reply::stream(
        "text/event-stream",
        vec![send("id: 1\ndata: {\"n\": 1}\n\n"), Step::Hang],
    )])
    .await;
    let server = gateway(HttpConfig::new(upstream.url("/e")), |_| {}).await;
    let mut events = open(&server, Format::Sse).await;
    assert!(events.next("the first event").await.is_some());
    assert_eq!(*upstream.script.closed.borrow(), 0);
    drop(events);
    upstream.closed(1).await;
    assert_eq!(server.gateway.open_streams(), 0);
    assert_eq!(
        upstream.seen().len(),
        1,
        "no reconnect after the client left"
    );
}

/// An OpenAI-style chunk whose delta is `delta`.
fn chunk(delta: Value) -> String {
    let event = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
    });
    format!("data: {event}\n\n")
}

/// An LLM API front end: the upstream request is made from the client's
/// `{"prompt": …}` by the `body` template; each chunk's token is picked by
/// `data_pointer` (chunks without one are skipped); `[DONE]` ends the stream
/// although the upstream keeps its connection open; a body without the
/// prompt is a 400 that names what is missing, before any upstream request.
#[tokio::test]
async fn an_llm_api_is_fronted_with_a_body_template_a_pointer_and_a_sentinel() {
    for format in FORMATS {
        let upstream = Upstream::start(vec![Reply::stream(
            "text/event-stream",
            vec![
                send(&chunk(json!({"role": "assistant"}))),
                send(&chunk(json!({"content": "Hel"}))),
                send(&chunk(json!({"content": "lo"}))),
                send(&chunk(json!({}))),
                send("data: [DONE]\n\n"),
                Step::Hang,
            ],
        )])
        .await;
        let config: HttpConfig = serde_json::from_value(json!({
            "url": upstream.url("/v1/chat/completions"),
            "method": "POST",
            "body": {
                "model": "m-1", "stream": true,
                "messages": [{"role": "user", "content": "{{/prompt}}"}],
                "max_tokens": "{{/limit}}",
            },
            "data_pointer": "/choices/0/delta/content",
            "end_sentinel": "[DONE]",
        }))
        .expect("config");
        let server = gateway(config, format.route()).await;
        let response = client()
            .post(server.url("/s/chat"))
            .header("accept", format.accept())
            .json(&json!({"prompt": "Say hello", "limit": 5}))
            .send()
            .await
            .expect("response");
        let events = Events::new(format, response).rest().await;
        let tokens: Vec<&Value> = events.iter().map(|(_, _, data)| data).collect();
        assert_eq!(
            tokens,
            [&json!("Hel"), &json!("lo")],
            "{format:?}: {events:?}"
        );
        let seen = &upstream.seen()[0];
        assert_eq!(
            serde_json::from_slice::<Value>(&seen.body).expect("JSON body"),
            json!({
                "model": "m-1", "stream": true,
                "messages": [{"role": "user", "content": "Say hello"}],
                "max_tokens": 5,
            })
        );
        assert_eq!(seen.header("content-type"), Some("application/json"));
        // The sentinel closed the upstream request.
        upstream.closed(1).await;

        let refused = client()
            .post(server.url("/s/chat"))
            .json(&json!({"question": "?"}))
            .send()
            .await
            .expect("response");
        assert_eq!(refused.status(), 400);
        let body: Value = refused.json().await.expect("JSON");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("/prompt"),
            "{body}"
        );
        assert_eq!(upstream.seen().len(), 1, "no upstream request for it");
    }
}

/// The LLM settings are checked with the rest: a template with too many
/// placeholders, a body with GET, a pointer that is no pointer, an empty
/// sentinel, all named at once.
#[test]
fn llm_settings_are_checked() {
    let many: Vec<String> = (0..=backends::template::MAX_PLACEHOLDERS)
        .map(|_| "{{/x}}".to_string())
        .collect();
    let config: HttpConfig = serde_json::from_value(json!({
        "url": "http://127.0.0.1:1/",
        "method": "GET",
        "body": {"many": many},
        "data_pointer": "choices/0",
        "end_sentinel": "",
    }))
    .expect("config");
    let keys: Vec<String> = BackendConfig::Http(config)
        .validate()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        keys,
        ["body", "body", "data_pointer", "end_sentinel"],
        "{keys:?}"
    );
}
