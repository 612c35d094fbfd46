//! Two `gateway` processes on one bus, as the README's two-instance setups
//! run them (`config/examples/redis-rooms.toml`,
//! `config/examples/postgres-rooms.toml`,
//! `config/examples/rabbitmq-rooms.toml`): an event published once through
//! one instance's publish route reaches clients of both, and a client that
//! left resumes on the *other* process with exactly what it missed. Needs
//! Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 and RabbitMQ's
//! stream port on 127.0.0.1:5552 (`.ci/run` starts them).

#![cfg(unix)]

#[path = "support/listening.rs"]
mod listening;

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::process::{Child, Command};

use listening::listening;

const BOUND: Duration = Duration::from_secs(20);
const TOKEN: &str = "instances-test-token-0123456789";

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// A gateway process on the example config, on a port of its choosing.
struct Instance {
    _child: Child,
    base: String,
}

impl Instance {
    async fn start(example: &str) -> Self {
        let config = format!(
            "{}/../config/examples/{example}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .args(["--config", &config])
            .env("GATEWAY__SERVER__PORT", "0")
            .env("GATEWAY__SERVER__LOG_FORMAT", "json")
            .env("PUBLISH_TOKEN", TOKEN)
            .env("RUST_LOG", "info");
        let (child, address) = within("the gateway listens", listening(command)).await;
        Self {
            _child: child,
            base: format!("http://{address}"),
        }
    }
}

/// SSE data lines of a stream, as JSON.
async fn next_data(
    events: &mut (impl futures::Stream<Item = Result<eventsource_stream::Event, String>> + Unpin),
) -> (String, Value) {
    let event = within("an event", events.next())
        .await
        .expect("the stream goes on")
        .expect("SSE");
    (
        event.id,
        serde_json::from_str(&event.data).expect("JSON data"),
    )
}

fn sse(
    response: reqwest::Response,
) -> impl futures::Stream<Item = Result<eventsource_stream::Event, String>> + Unpin {
    use eventsource_stream::Eventsource;
    response
        .bytes_stream()
        .eventsource()
        .map(|e| e.map_err(|e| e.to_string()))
}

#[tokio::test]
async fn two_processes_on_redis() {
    two_processes_serve_one_stream_and_a_client_resumes_on_the_other("redis-rooms.toml").await;
}

#[tokio::test]
async fn two_processes_on_postgres() {
    two_processes_serve_one_stream_and_a_client_resumes_on_the_other("postgres-rooms.toml").await;
}

#[tokio::test]
async fn two_processes_on_rabbitmq() {
    two_processes_serve_one_stream_and_a_client_resumes_on_the_other("rabbitmq-rooms.toml").await;
}

async fn two_processes_serve_one_stream_and_a_client_resumes_on_the_other(example: &str) {
    let (a, b) = (
        Instance::start(example).await,
        Instance::start(example).await,
    );
    let http = reqwest::Client::new();
    let room = format!(
        "instances-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let open = |base: &str, last: Option<&str>| {
        let mut request = http.get(format!("{base}/rooms/{room}?format=sse"));
        if let Some(id) = last {
            request = request.header("last-event-id", id);
        }
        request.send()
    };
    let publish = |n: u64| {
        http.post(format!("{}/rooms/{room}/events", a.base))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(format!(r#"{{"data": {{"n": {n}}}, "event": "message"}}"#))
            .send()
    };
    let mut on_a = sse(within("a stream on A", open(&a.base, None))
        .await
        .expect("A"));
    let mut on_b = sse(within("a stream on B", open(&b.base, None))
        .await
        .expect("B"));

    let published = within("publish", publish(0)).await.expect("publish");
    assert_eq!(published.status(), 201);
    let (id_a, data_a) = next_data(&mut on_a).await;
    let (id_b, data_b) = next_data(&mut on_b).await;
    assert_eq!(
        (data_a["n"].as_u64(), data_b["n"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(id_a, id_b, "one event, one id, on both instances");

    // The client on A leaves; three events pass; it comes back on B.
    drop(on_a);
    for n in 1..4 {
        assert_eq!(
            within("publish", publish(n))
                .await
                .expect("publish")
                .status(),
            201
        );
    }
    let mut back = sse(within("a resume on B", open(&b.base, Some(&id_a)))
        .await
        .expect("B"));
    let mut missed = Vec::new();
    for _ in 1..4 {
        missed.push(next_data(&mut back).await.1["n"].as_u64());
    }
    assert_eq!(missed, [Some(1), Some(2), Some(3)]);
    assert_eq!(
        within("publish", publish(4))
            .await
            .expect("publish")
            .status(),
        201
    );
    assert_eq!(
        next_data(&mut back).await.1["n"].as_u64(),
        Some(4),
        "nothing repeated"
    );
}
