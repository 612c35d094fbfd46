//! The bus conformance harness: what every bus backend (`redis`, `nats`, …)
//! must do, written once and run on each, the way every vector source passes
//! its compliance checks.
//!
//! An [`Engine`] knows one broker: how to start a private one, append
//! entries, remove the oldest, restart it with or without its data, make a
//! stream again, write an entry the backend cannot decode, and what backend
//! and publish-target config reads a test's keys. The tests in [`suite`] are
//! generic over it; `tests/bus.rs` runs them once per engine with one
//! [`conformance!`](crate::conformance) line each.
//!
//! Every gateway here is built from the same JSON a config file would hold,
//! so the suite checks the documented config keys, not a struct's fields.

use std::time::Duration;

use futures::StreamExt;
use gateway::config::GatewayConfig;
use serde_json::{Value, json};

use crate::{TestServer, client, ndjson_lines, take_events, within_for};

pub mod nats;
pub mod postgres;
pub mod private;
pub mod rabbitmq;
pub mod redis;
pub mod suite;

/// How long one step may take.
pub const BOUND: Duration = Duration::from_secs(10);
/// How long what waits on a broker restart may take.
pub const RESTART_BOUND: Duration = Duration::from_secs(30);
/// The publish route's token.
pub const TOKEN: &str = "publish-token-0123456789";

/// One broker, as the suite drives it. Each value owns a namespace of its
/// own (a key prefix, a stream), so tests run in parallel.
#[allow(async_fn_in_trait)] // Tests poll these in place; none is spawned.
pub trait Engine: Sized {
    /// The shared broker on loopback, with a namespace for test `name`.
    async fn shared(name: &str) -> Self;
    /// A private broker on a free port. `persistent`: it keeps its entries
    /// across [`restart`](Self::restart)s; else a restart loses them all
    /// (and the stream is made again empty, as an operator would).
    async fn private(name: &str, persistent: bool) -> Self;
    /// The backend's config table reading room `{room}` of this namespace
    /// (`type` included), before the test's own settings.
    fn backend(&self) -> Value;
    /// The publish target's config table for the same rooms.
    fn target(&self) -> Value;
    /// Appends each payload to `room`, in order; returns their ids.
    async fn append(&self, room: &str, payloads: &[Value]) -> Vec<String>;
    /// Appends all payloads at once, as one burst the broker stores before
    /// any reader can take a turn.
    async fn burst(&self, room: &str, payloads: &[Value]) -> Vec<String>;
    /// Removes `room`'s entries but the newest `keep` (the broker's limits
    /// at work).
    async fn keep_last(&self, room: &str, keep: usize);
    /// Kills the broker (no goodbye to its clients) and starts it again on
    /// the same port; returns once it answers.
    async fn restart(&mut self);
    /// Deletes `room`'s stream and makes it again, empty.
    async fn recreate(&self, room: &str);
    /// Writes the entries to `room` that the backend cannot turn into an
    /// event (each kind it knows); returns their ids.
    async fn undecodable(&self, room: &str) -> Vec<String>;
    /// A well-formed id that the broker has not given out yet (past the end).
    fn future_id(&self) -> String;
    /// The id before every entry (`0`): resuming from it asks for all the
    /// key holds.
    fn origin(&self) -> &'static str;
    /// Whether a stream made again numbers its entries from the start again
    /// (so that clients must be told even while connected).
    fn renumbers(&self) -> bool;
    /// A backend config whose broker is not there.
    fn unreachable(&self) -> Value;
}

/// `{"n": n}` payloads for `ns`.
pub fn numbered(ns: std::ops::Range<u64>) -> Vec<Value> {
    ns.map(|n| json!({ "n": n })).collect()
}

/// Appends `{"n": n}` entries; returns their ids.
pub async fn publish<E: Engine>(engine: &E, room: &str, ns: std::ops::Range<u64>) -> Vec<String> {
    engine.append(room, &numbered(ns)).await
}

/// Overlays `edit`'s fields onto `base`, objects merged key by key.
fn merge(base: &mut Value, edit: Value) {
    match (base, edit) {
        (Value::Object(base), Value::Object(edit)) => {
            for (key, value) in edit {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, edit) => *base = edit,
    }
}

/// A gateway with the stream route `/s/{room}` (its one backend `bus`:
/// the engine's, with `settings` over it) and the publish route
/// `/s/{room}/events`; `route` edits the stream route's options.
pub async fn gateway<E: Engine>(engine: &E, settings: Value, route: Value) -> TestServer {
    gateway_with(engine.backend(), engine.target(), settings, route).await
}

/// As [`gateway`], for a backend table of its own.
pub async fn gateway_with(
    mut backend: Value,
    target: Value,
    settings: Value,
    route: Value,
) -> TestServer {
    merge(&mut backend, settings);
    let mut stream_route = json!({"path": "/s/{room}", "backends": {"bus": backend}});
    merge(&mut stream_route, route);
    let config = json!({
        "routes": {"bus": stream_route},
        "publish": {"bus": {"path": "/s/{room}/events", "tokens": [TOKEN], "target": target}},
    });
    let config: GatewayConfig =
        serde_json::from_value(config.clone()).unwrap_or_else(|e| panic!("{e}: {config}"));
    TestServer::from_config(&config).await
}

/// Waits for `future` at most [`BOUND`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(BOUND, what, future).await
}

/// An NDJSON stream of `room` opened with an optional `Last-Event-ID`;
/// it must open (200).
pub async fn open(server: &TestServer, room: &str, last: Option<&str>) -> reqwest::Response {
    let response = request(server, room, last).await;
    assert_eq!(response.status(), 200, "opening {room} after {last:?}");
    response
}

/// The same as a line stream.
pub async fn lines(
    server: &TestServer,
    room: &str,
    last: Option<&str>,
) -> impl futures::Stream<Item = String> + Unpin + use<> {
    ndjson_lines(open(server, room, last).await)
}

/// A stream request of `room`, whatever its answer.
pub async fn request(server: &TestServer, room: &str, last: Option<&str>) -> reqwest::Response {
    let mut request = client().get(server.url(&format!("/s/{room}?format=ndjson")));
    if let Some(id) = last {
        request = request.header("last-event-id", id);
    }
    within("an answer", request.send()).await.expect("request")
}

/// The status and JSON body of a request that is refused.
pub async fn refused(server: &TestServer, room: &str, last: Option<&str>) -> (u16, Value) {
    let response = request(server, room, last).await;
    let status = response.status().as_u16();
    let body = within("the body", response.json()).await.expect("JSON");
    (status, body)
}

/// Publishes through the gateway's publish route; the status and body.
pub async fn post(server: &TestServer, room: &str, body: &Value) -> (u16, Value) {
    let response = within(
        "the publish answer",
        client()
            .post(server.url(&format!("/s/{room}/events")))
            .header("authorization", format!("Bearer {TOKEN}"))
            .json(body)
            .send(),
    )
    .await
    .expect("request");
    let status = response.status().as_u16();
    let body = within("the body", response.json()).await.expect("JSON");
    (status, body)
}

/// The next `count` events as JSON, heartbeats skipped.
pub async fn take(
    lines: &mut (impl futures::Stream<Item = String> + Unpin),
    count: usize,
) -> Vec<Value> {
    take_events(lines, count, BOUND).await
}

/// Reads a stream until `want` numbered events came, each within `bound`:
/// the `gateway.error` events met on the way and the numbers, in order.
pub async fn read_until(
    lines: &mut (impl futures::Stream<Item = String> + Unpin),
    want: usize,
    bound: Duration,
) -> (Vec<Value>, Vec<u64>) {
    let (mut notices, mut seen) = (Vec::new(), Vec::new());
    while seen.len() < want {
        let line = within_for(bound, "the next event", lines.next())
            .await
            .unwrap_or_else(|| panic!("the stream ended after {seen:?} and {notices:?}"));
        let value: Value = serde_json::from_str(&line).expect("JSON line");
        if value["event"] == "gateway.error" {
            notices.push(value);
        } else if let Some(n) = value["n"].as_u64() {
            seen.push(n);
        }
    }
    (notices, seen)
}

/// Where a `gateway.error` says the client resumes: its `resume_id`.
pub fn resume_id(error: &Value) -> String {
    error["resume_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no resume_id in {error}"))
        .to_string()
}

/// A free port on loopback (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port()
}

/// A name unique to this process and moment: `<name>_<pid>_<nanos>`.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}_{}_{nanos}", std::process::id())
}

/// Runs every test of [`suite`] on an engine: `conformance!(redis, RedisEngine);`
/// makes a module `redis` with one `#[tokio::test]` per conformance check.
#[macro_export]
macro_rules! conformance {
    ($name:ident, $engine:ty) => {
        $crate::conformance!($name, $engine;
            two_gateways_get_every_entry,
            history_and_ids,
            resumes_exactly_on_another_gateway,
            a_long_catch_up_comes_page_by_page,
            a_catch_up_past_max_catchup_names_where_to_resume,
            a_slow_client_does_not_hold_back_a_fast_one,
            a_client_that_lags_before_its_first_event_gets_no_old_entries,
            removed_entries_are_announced_not_skipped,
            a_restart_with_persistence_loses_and_repeats_nothing,
            a_restart_without_persistence_is_announced,
            a_stream_made_again_is_announced_and_followed,
            the_first_requests_after_a_restart_succeed,
            undecodable_entries_are_errors_naming_their_id,
            the_key_cap_and_refusals,
            a_published_event_reaches_readers_with_its_id
        );
    };
    ($name:ident, $engine:ty; $($test:ident),+ $(,)?) => {
        mod $name {
            $(
                #[tokio::test]
                async fn $test() {
                    $crate::bus::suite::$test::<$engine>().await;
                }
            )+
        }
    };
}
