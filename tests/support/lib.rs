//! What the black-box tests share: a gateway on a real listener at
//! `127.0.0.1:0`, a real HTTP client, readers for both wire formats, and an
//! `Echo` backend that streams whatever events the request body describes.

use std::collections::HashMap;

pub mod bus;
pub mod examples;
pub mod exposition;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use backends::{Backend, BackendError, Data, Event, EventStream, RequestContext};
use futures::StreamExt;
use gateway::Gateway;
use gateway::config::{self, GatewayConfig, RouteConfig, ServerConfig, Source};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A gateway serving on a loopback port until dropped or shut down.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The gateway, for its shutdown token and counters.
    pub gateway: Arc<Gateway>,
    /// The serving task; it ends after shutdown.
    pub task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Serves `gateway` on a fresh loopback port.
    pub async fn start(gateway: Gateway) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gateway = Arc::new(gateway);
        let task = tokio::spawn(gateway::serve(listener, Arc::clone(&gateway)));
        Self {
            addr,
            gateway,
            task,
        }
    }

    /// Serves a loaded config.
    pub async fn from_config(config: &GatewayConfig) -> Self {
        Self::start(Gateway::from_config(config).expect("valid config")).await
    }

    /// Serves the built-in default config (the reference stream on `/`).
    pub async fn default_config() -> Self {
        let config = config::load(Source::Default, Some(HashMap::new())).expect("default config");
        Self::from_config(&config).await
    }

    /// Serves one route on `path` with `backends`, `edit` adjusting its
    /// options, and `server` limits.
    pub async fn route(
        path: &str,
        backends: Vec<(&str, Arc<dyn Backend>)>,
        edit: impl FnOnce(&mut RouteConfig),
        server: ServerConfig,
    ) -> Self {
        let mut options = RouteConfig::new(path);
        edit(&mut options);
        let backends = backends
            .into_iter()
            .map(|(n, b)| (n.to_string(), b))
            .collect();
        let route = gateway::Route::new("test", &options, backends).expect("valid route");
        Self::start(Gateway::new(server, vec![route]).expect("valid gateway")).await
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A plain HTTP client (no proxy, no compression).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// The reference stream's objects, as lines, exactly.
pub const REFERENCE_LINES: [&str; 6] = [
    r#"{"event":"start","message":"streaming begin"}"#,
    r#"{"event":"data","index":0,"token":"Hello"}"#,
    r#"{"event":"data","index":1,"token":" "}"#,
    r#"{"event":"data","index":2,"token":"World"}"#,
    r#"{"event":"data","index":3,"token":"!"}"#,
    r#"{"event":"end","message":"done"}"#,
];

/// Reads a whole body as text.
pub async fn text(response: reqwest::Response) -> String {
    response.text().await.expect("body")
}

/// A response body as a stream of parsed SSE events, by an independent
/// parser (eventsource-stream).
pub fn sse_events(
    response: reqwest::Response,
) -> impl futures::Stream<Item = eventsource_stream::Event> + Unpin {
    use eventsource_stream::Eventsource;
    response
        .bytes_stream()
        .eventsource()
        .map(|e| e.expect("valid SSE"))
        .boxed()
}

/// Every SSE event of a whole response.
pub async fn all_sse_events(response: reqwest::Response) -> Vec<eventsource_stream::Event> {
    sse_events(response).collect().await
}

/// A response body as a stream of NDJSON lines (each checked to be one
/// JSON value).
pub fn ndjson_lines(response: reqwest::Response) -> impl futures::Stream<Item = String> + Unpin {
    let mut pending = Vec::new();
    response
        .bytes_stream()
        .map(move |chunk| {
            pending.extend_from_slice(&chunk.expect("body chunk"));
            let mut lines = Vec::new();
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8(line[..end].to_vec()).expect("UTF-8 line");
                serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
                lines.push(line);
            }
            futures::stream::iter(lines)
        })
        .flatten()
        .boxed()
}

/// The id the Echo route at `url` is opened with when a client resumes with
/// `token`: what a backend learns from a `Last-Event-ID` it once sent.
pub async fn resumed_id(url: &str, token: &str) -> Value {
    let response = client()
        .post(url)
        .header("last-event-id", token)
        .json(&serde_json::json!({"events": [], "echo_last_event_id": true}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200, "resuming with {token:?}");
    let first = ndjson_lines(response).next().await.expect("the echoed id");
    let first: Value = serde_json::from_str(&first).expect("JSON");
    // On a route with an envelope, the id is the envelope's data.
    match first.get("event") {
        Some(name) if name == "last_event_id" => first["data"].clone(),
        _ => first,
    }
}

/// Every NDJSON line of a whole response, parsed.
pub async fn all_ndjson(response: reqwest::Response) -> Vec<Value> {
    ndjson_lines(response)
        .map(|l| serde_json::from_str(&l).expect("JSON line"))
        .collect()
        .await
}

/// Streams the events the request body lists, then ends:
/// `{"events": [{"id": "1", "name": "n", "data": <JSON>, "text": "t"}, …]}`
/// (`data` gives a JSON payload, `text` a text one; `id`, `name` optional).
/// It lets one server stream arbitrary events, case after case. With
/// `"echo_last_event_id": true` it first sends one event named
/// `last_event_id` whose JSON data is the id it was opened with (or null).
#[derive(Debug)]
pub struct Echo;

#[async_trait]
impl Backend for Echo {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        // A test backend: its bodies are small, a tree is fine here.
        let body: Option<Value> = ctx.body.as_ref().and_then(|b| b.deserialize().ok());
        let body = body.as_ref();
        let listed = body
            .and_then(|b| b.get("events"))
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| BackendError::bad_request("expected {\"events\": [...]}"))?;
        let echo = body.and_then(|b| b.get("echo_last_event_id")) == Some(&Value::Bool(true));
        let echoed = echo.then(|| {
            let id = ctx.last_event_id.clone().map_or(Value::Null, Value::String);
            Event::new(Data::json(&id)).with_name("last_event_id")
        });
        let events: Vec<Result<Event, BackendError>> = echoed
            .into_iter()
            .chain(listed.iter().map(echo_event))
            .map(Ok)
            .collect();
        Ok(futures::stream::iter(events).boxed())
    }
}

fn echo_event(e: &Value) -> Event {
    let data = match (e.get("data"), e.get("text").and_then(Value::as_str)) {
        (Some(json), _) => Data::json(json),
        (None, Some(text)) => Data::text(text),
        (None, None) => Data::json(&Value::Null),
    };
    let mut event = Event::new(data);
    if let Some(id) = e.get("id").and_then(Value::as_str) {
        event = event.with_id(id);
    }
    if let Some(name) = e.get("name").and_then(Value::as_str) {
        event = event.with_name(name);
    }
    event
}

/// Waits for `future` at most `bound`, failing with what did not happen.
pub async fn within_for<T>(
    bound: std::time::Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(bound, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {bound:?}"))
}

/// The next `count` events of an NDJSON stream, as JSON, heartbeats skipped;
/// each within `bound`.
pub async fn take_events(
    lines: &mut (impl futures::Stream<Item = String> + Unpin),
    count: usize,
    bound: std::time::Duration,
) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let line = within_for(bound, "the next event", lines.next())
            .await
            .unwrap_or_else(|| panic!("the stream ended after {got:?}"));
        let value: Value = serde_json::from_str(&line).expect("JSON line");
        if value["event"] == "gateway.heartbeat" {
            continue;
        }
        got.push(value);
    }
    got
}

/// The `n` of each `{"n": …}` event (`u64::MAX` for any other event).
pub fn numbers(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["n"].as_u64().unwrap_or(u64::MAX))
        .collect()
}

/// An NDJSON stream read to its end, each line within `bound`: the `n` of
/// its `{"n": …}` events in order, and its last `gateway.error` event.
pub async fn read_numbered(
    lines: &mut (impl futures::Stream<Item = String> + Unpin),
    bound: std::time::Duration,
) -> (Vec<u64>, Option<Value>) {
    let mut seen = Vec::new();
    let mut error = None;
    while let Some(line) = within_for(bound, "the stream's next line", lines.next()).await {
        let value: Value = serde_json::from_str(&line).expect("JSON line");
        if value["event"] == "gateway.error" {
            error = Some(value);
        } else if value.get("n").is_some() {
            seen.push(value["n"].as_u64().expect("`n` is a number"));
        }
    }
    (seen, error)
}

/// A response read off a raw socket: status, headers (lowercase names) and
/// body (the bytes after the head, not de-chunked).
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Whatever followed the head.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (a `Content-Length` body).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{:?} is not JSON: {e}", String::from_utf8_lossy(&self.body))
        })
    }

    /// Parses the first response in `bytes`.
    pub fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Self {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }
}

/// Reads `tcp` until the server closes it (or `limit` passes: then the
/// test fails), returning every byte.
pub async fn read_to_close(tcp: &mut tokio::net::TcpStream, limit: std::time::Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    tokio::time::timeout(limit, tcp.read_to_end(&mut bytes))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "still open after {limit:?}; read {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
        .or_else(|e| {
            // A reset after the answer is a close too.
            if e.kind() == std::io::ErrorKind::ConnectionReset {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .expect("read");
    bytes
}

/// Sends `request` on a new connection to `addr` and reads until the server
/// closes it.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let bytes = read_to_close(&mut tcp, std::time::Duration::from_secs(30)).await;
    RawResponse::parse(&bytes)
}
