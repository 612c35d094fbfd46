//! The `redis` backend against the real Redis on 127.0.0.1:6379 (a private
//! `redis-server` on a free port for the restart test): two gateway
//! instances on one Redis, exact resume across instances, slow clients, and
//! a broker restart mid-stream.
//!
//! Each test uses its own stream keys, so tests run in parallel. Every wait
//! is bounded.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use backends::Backend;
use backends::redis::{Redis, RedisConfig};
use futures::StreamExt;
use gateway::config::ServerConfig;
use gateway_tests::{TestServer, client, ndjson_lines, numbers as ns, read_numbered, take_events};
use redis::AsyncCommands;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(10);
const REDIS: &str = "redis://127.0.0.1:6379";

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// A key of this test run only.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("test:{name}:{}:{nanos}", std::process::id())
}

/// A gateway with one route `/s/{room}` reading `prefix:{room}`.
async fn gateway(url: &str, prefix: &str, edit: impl FnOnce(&mut RedisConfig)) -> TestServer {
    let mut config = RedisConfig {
        url: url.into(),
        stream: format!("{prefix}:{{room}}"),
        allow: Some(format!("{prefix}:*")),
        ..RedisConfig::default()
    };
    edit(&mut config);
    let backends: Vec<(&str, Arc<dyn Backend>)> = vec![("bus", Arc::new(Redis::new(config)))];
    TestServer::route("/s/{room}", backends, |_| {}, ServerConfig::default()).await
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running (.ci/run starts it)")
}

/// Appends `{"n": n}` entries; returns their ids.
async fn publish(url: &str, key: &str, ns: std::ops::Range<u64>) -> Vec<String> {
    let mut redis = connection(url).await;
    let mut ids = Vec::new();
    for n in ns {
        let id: String = redis
            .xadd(key, "*", &[("data", json!({ "n": n }).to_string())])
            .await
            .expect("XADD");
        ids.push(id);
    }
    // Test keys go away by themselves, passed or failed.
    let _: bool = redis.expire(key, 600).await.expect("EXPIRE");
    ids
}

/// An NDJSON stream opened with an optional `Last-Event-ID` (envelope on,
/// so each line carries its id).
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

/// The next `count` lines as JSON.
async fn take(
    lines: &mut (impl futures::Stream<Item = String> + Unpin),
    count: usize,
) -> Vec<Value> {
    take_events(lines, count, BOUND).await
}

#[tokio::test]
async fn one_publish_reaches_the_clients_of_two_gateways() {
    let prefix = unique("two");
    let (a, b) = (
        gateway(REDIS, &prefix, |_| {}).await,
        gateway(REDIS, &prefix, |_| {}).await,
    );
    let mut on_a = ndjson_lines(open(&a, "lobby", None).await);
    let mut on_b = ndjson_lines(open(&b, "lobby", None).await);
    // Both readers are subscribed once the streams are open: publish now.
    publish(REDIS, &format!("{prefix}:lobby"), 0..3).await;
    assert_eq!(ns(&take(&mut on_a, 3).await), [0, 1, 2]);
    assert_eq!(ns(&take(&mut on_b, 3).await), [0, 1, 2]);
}

#[tokio::test]
async fn a_client_resumes_exactly_on_the_other_gateway() {
    let prefix = unique("resume");
    let key = format!("{prefix}:r");
    let a = gateway(REDIS, &prefix, |_| {}).await;
    let b = gateway(REDIS, &prefix, |_| {}).await;
    let response = open(&a, "r", None).await;
    let mut lines = ndjson_lines(response);
    let ids = publish(REDIS, &key, 0..3).await;
    assert_eq!(ns(&take(&mut lines, 3).await), [0, 1, 2]);
    drop(lines);
    // Missed while away, then resumed on the other instance.
    publish(REDIS, &key, 3..7).await;
    let mut lines = ndjson_lines(open(&b, "r", Some(&ids[2])).await);
    let missed = take(&mut lines, 4).await;
    assert_eq!(ns(&missed), [3, 4, 5, 6]);
    publish(REDIS, &key, 7..9).await;
    assert_eq!(
        ns(&take(&mut lines, 2).await),
        [7, 8],
        "no repeats, no gaps"
    );
}

#[tokio::test]
async fn history_keys_and_ids_are_checked() {
    let prefix = unique("checks");
    let key = format!("{prefix}:h");
    publish(REDIS, &key, 0..5).await;
    let server = gateway(REDIS, &prefix, |c| c.history = 2).await;
    let mut lines = ndjson_lines(open(&server, "h", None).await);
    assert_eq!(ns(&take(&mut lines, 2).await), [3, 4], "the last two");
    // SSE ids are the entry ids.
    let response = within(
        "an SSE stream",
        client().get(server.url("/s/h?format=sse")).send(),
    )
    .await
    .expect("request");
    let mut events = gateway_tests::sse_events(response);
    let first = within("an event", events.next()).await.expect("event");
    assert!(first.id.contains('-'), "{first:?}");

    let other = within(
        "a request",
        client()
            .get(server.url("/s/x?format=ndjson"))
            .header("last-event-id", "nope")
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(other.status(), 400);
    // A key outside `allow` is not there.
    let outside = gateway(REDIS, &prefix, |c| c.allow = Some("elsewhere:*".into())).await;
    let refused = within("a request", client().get(outside.url("/s/h")).send())
        .await
        .expect("request");
    assert_eq!(refused.status(), 404);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_503_before_the_stream() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let server = gateway(
        &format!("redis://127.0.0.1:{port}"),
        &unique("down"),
        |_| {},
    )
    .await;
    let response = within("a request", client().get(server.url("/s/a")).send())
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    let body: Value = within("the body", response.json()).await.expect("JSON");
    assert_eq!(body["error"], "unavailable", "{body}");
}

#[tokio::test]
async fn a_slow_client_does_not_hold_back_a_fast_one_and_learns_where_to_resume() {
    let prefix = unique("slow");
    let key = format!("{prefix}:s");
    let server = gateway(REDIS, &prefix, |c| {
        c.buffer = 64;
        c.max_catchup = 256;
    })
    .await;
    // The slow client opens its stream and reads nothing.
    let slow = open(&server, "s", None).await;
    let mut fast = ndjson_lines(open(&server, "s", None).await);
    // Far more bytes than the slow client's socket buffers hold, published
    // while the fast client reads.
    let total = 600u64;
    let publisher = tokio::spawn({
        let key = key.clone();
        async move {
            let pad = "x".repeat(64 * 1024);
            let mut redis = connection(REDIS).await;
            for n in 0..total {
                let _: String = redis
                    .xadd(
                        &key,
                        "*",
                        &[("data", json!({ "n": n, "pad": pad }).to_string())],
                    )
                    .await
                    .expect("XADD");
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
    assert_eq!(
        seen,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    // The id it names resumes exactly where the client stopped (each
    // resume may catch up `max_catchup` entries and name the next id).
    let mut lagged = lagged;
    for _ in 0..10 {
        let message = lagged["message"].as_str().expect("a message").to_string();
        let id = message.rsplit(' ').next().expect("an id");
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
    let _: i64 = connection(REDIS).await.del(&key).await.expect("DEL");
}

#[tokio::test]
async fn a_client_that_lags_before_its_first_event_gets_no_old_entries() {
    let prefix = unique("early");
    let key = format!("{prefix}:e");
    publish(REDIS, &key, 0..20).await;
    let server = gateway(REDIS, &prefix, |c| c.buffer = 4).await;
    let mut lines = ndjson_lines(open(&server, "e", None).await);
    // A burst far over the buffer, in one atomic step.
    let mut redis = connection(REDIS).await;
    let mut burst = redis::pipe();
    burst.atomic();
    for n in 100..200u64 {
        burst.xadd(&key, "*", &[("data", json!({ "n": n }).to_string())]);
    }
    let _: Vec<String> = burst.query_async(&mut redis).await.expect("burst");
    assert_eq!(
        ns(&take(&mut lines, 100).await),
        (100..200).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn entries_trimmed_before_a_client_read_them_are_announced_not_skipped_silently() {
    let prefix = unique("trim");
    let key = format!("{prefix}:t");
    let ids = publish(REDIS, &key, 0..10).await;
    let mut redis = connection(REDIS).await;
    let _: i64 = redis
        .xtrim(&key, redis::streams::StreamMaxlen::Equals(5))
        .await
        .expect("XTRIM");
    let server = gateway(REDIS, &prefix, |_| {}).await;
    let mut lines = ndjson_lines(open(&server, "t", Some(&ids[1])).await);
    let first = take(&mut lines, 1).await;
    assert_eq!(first[0]["event"], "gateway.error", "{first:?}");
    assert_eq!(first[0]["kind"], "lagged");
    assert!(
        first[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("trimmed")
    );
    assert_eq!(ns(&take(&mut lines, 5).await), [5, 6, 7, 8, 9]);
}

/// A private Redis on a free port, restartable.
struct PrivateRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    /// Keeps its data in `dir` across restarts (AOF, fsync on every write).
    async fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        within("the private Redis starts", async {
            loop {
                if let Ok(client) = redis::Client::open(url.as_str()) {
                    if client.get_multiplexed_async_connection().await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Self {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

#[tokio::test]
async fn after_a_broker_restart_clients_get_what_follows_nothing_lost_or_repeated() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = std::env::temp_dir().join(format!("redis-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a data dir");
    let mut broker = PrivateRedis::start(port, &dir).await;
    let url = broker.url();
    let prefix = unique("restart");
    let key = format!("{prefix}:k");
    let server = gateway(&url, &prefix, |_| {}).await;
    let mut lines = ndjson_lines(open(&server, "k", None).await);
    publish(&url, &key, 0..2).await;
    assert_eq!(ns(&take(&mut lines, 2).await), [0, 1]);

    broker.stop().await;
    let broker = PrivateRedis::start(port, &dir).await;
    // The stream survived the restart: a reader that started over would
    // repeat 0 and 1.
    publish(&broker.url(), &key, 2..5).await;
    assert_eq!(ns(&take(&mut lines, 3).await), [2, 3, 4]);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
