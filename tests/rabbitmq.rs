//! What only the `rabbitmq` backend does, against the real RabbitMQ with its
//! stream plugin on 127.0.0.1:5552: one subscription per stream per
//! gateway, offsets as ids with `first` before them, a producer's own
//! messages (body and application property), and streams declared only
//! with `create`. Everything every bus backend does is in the conformance
//! suite (`tests/bus.rs`); two gateway processes on the example config are
//! in `gateway/tests/instances.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use gateway_tests::bus::rabbitmq::{RabbitEngine, STREAM_PORT};
use gateway_tests::bus::{
    Engine, gateway, gateway_with, lines, publish, refused, request, take, within,
};
use gateway_tests::{client, numbers as ns, sse_events, within_for};
use rabbitmq_stream_client::types::Message;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// The stream's subscriptions on the shared node, as `rabbitmq-streams`
/// lists them; `None` when the listing failed (RabbitMQ 3.10's listing
/// fails while a connection is in its handshake).
fn subscriptions(stream: &str) -> Option<usize> {
    let listed = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-streams")
        .args([
            "list_stream_consumers",
            "-q",
            "--formatter",
            "json",
            "stream",
        ])
        // The node's Erlang cookie.
        .env("HOME", "/var/lib/rabbitmq")
        .output()
        .expect("rabbitmq-streams");
    if !listed.status.success() {
        return None;
    }
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).ok()?;
    Some(listed.iter().filter(|c| c["stream"] == stream).count())
}

/// Stream segment files the shared node holds open now.
fn open_segments() -> usize {
    let pid = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
        .args(["eval", "os:getpid()."])
        .env("HOME", "/var/lib/rabbitmq")
        .output()
        .expect("rabbitmqctl");
    let pid = String::from_utf8_lossy(&pid.stdout)
        .trim()
        .trim_matches('"')
        .to_string();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("the node's files (pid {pid:?}): {e}"));
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().ends_with(".segment"))
        .count()
}

/// How long the CLI's listing may take to show a count.
const LISTING: Duration = Duration::from_secs(90);

#[tokio::test]
async fn one_subscription_per_stream_per_gateway_ended_with_its_last_client() {
    let engine = RabbitEngine::shared("one").await;
    publish(&engine, "lobby", 0..1).await;
    // Heartbeats make the gateway write, and so notice clients that left.
    let beats = json!({"heartbeat": "200ms"});
    let a = gateway(&engine, json!({}), beats.clone()).await;
    let b = gateway(&engine, json!({}), beats).await;
    let on_a = lines(&a, "lobby", None).await;
    let also_on_a = lines(&a, "lobby", None).await;
    let on_b = lines(&b, "lobby", None).await;
    let stream = engine.stream("lobby");
    // Each listing starts an Erlang VM for the CLI: seconds on a loaded
    // machine (10 s was not enough for three of them under load), so the
    // bound is generous; the wait ends at the first right count.
    within_for(LISTING, "one subscription per gateway", async {
        while subscriptions(&stream) != Some(2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop((on_a, also_on_a, on_b));
    within_for(LISTING, "the subscriptions end", async {
        while subscriptions(&stream) != Some(0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn ids_are_offsets_and_first_comes_before_them() {
    let engine = RabbitEngine::shared("ids").await;
    let ids = publish(&engine, "r", 0..3).await;
    assert_eq!(ids, ["0", "1", "2"], "a new stream's offsets");
    let server = gateway(&engine, json!({}), json!({})).await;
    let response = within(
        "an SSE stream",
        client()
            .get(server.url("/s/r?format=sse"))
            .header("last-event-id", "first")
            .send(),
    )
    .await
    .expect("request");
    let mut events = sse_events(response);
    for id in &ids {
        let event = within("an event", events.next()).await.expect("event");
        assert_eq!(&event.id, id);
    }
    let mut after = lines(&server, "r", Some("1")).await;
    assert_eq!(ns(&take(&mut after, 1).await), [2]);
}

#[tokio::test]
async fn a_producers_message_is_its_body_named_by_an_application_property() {
    let engine = RabbitEngine::shared("producer").await;
    let server = gateway(&engine, json!({}), json!({})).await;
    let response = within(
        "an SSE stream",
        client().get(server.url("/s/p?format=sse")).send(),
    )
    .await
    .expect("request");
    let mut events = sse_events(response);
    let named = Message::builder()
        .body(r#"{"text": "hi"}"#)
        .application_properties()
        .insert("event", "greeting")
        .message_builder()
        .build();
    let offset = engine.publish_message("p", named).await;
    let plain = Message::builder().body("just text").build();
    engine.publish_message("p", plain).await;
    let event = within("an event", events.next()).await.expect("event");
    assert_eq!(
        (event.id, event.event.as_str(), event.data.as_str()),
        (offset.to_string(), "greeting", r#"{"text":"hi"}"#)
    );
    let event = within("an event", events.next()).await.expect("event");
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("message", "just text")
    );
}

#[tokio::test]
async fn a_missing_stream_is_404_unless_create_declares_it() {
    let engine = RabbitEngine::shared("missing").await;
    let mut without = engine.backend();
    without.as_object_mut().expect("a table").remove("create");
    let strict = gateway_with(without, engine.target(), json!({}), json!({})).await;
    let (status, body) = refused(&strict, "nobody", None).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("not_found")),
        "{body}"
    );
    // With `create` the first reader declares it and waits on it.
    let server = gateway(&engine, json!({}), json!({})).await;
    let response = request(&server, "nobody", None).await;
    assert_eq!(response.status(), 200);
    let mut got = gateway_tests::ndjson_lines(response);
    publish(&engine, "nobody", 0..1).await;
    assert_eq!(ns(&take(&mut got, 1).await), [0]);
    // Now it exists, the strict gateway reads it too.
    assert_eq!(request(&strict, "nobody", None).await.status(), 200);
}

/// The job log of the `backend` config (the backend itself, as durable
/// routes use it), a request for room `lobby`, and that room's key.
fn lobby_log(
    backend: serde_json::Value,
) -> (
    Arc<dyn backends::durable::JobLog>,
    backends::RequestContext,
    String,
) {
    let config: backends::BackendConfig =
        serde_json::from_value(backend).expect("a backend config");
    let log = config.job_log().expect("a bus");
    let ctx = backends::RequestContext {
        params: [("room".to_string(), "lobby".to_string())].into(),
        ..Default::default()
    };
    let key = log.key(&ctx).expect("a key");
    (log, ctx, key)
}

/// A loopback proxy to the shared stream port that closes its first
/// connection when the client's first frame (its peer properties) arrives,
/// as RabbitMQ 3.10 ends every stream connection still in its handshake
/// while `rabbitmq-streams list_stream_consumers` runs; the connections
/// after it pass through. Its port, and how many connections it took.
async fn closing_the_first_handshake() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("an address").port();
    let taken = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&taken);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut frame = [0; 512];
                let _ = client.read(&mut frame).await;
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut node) = TcpStream::connect(("127.0.0.1", STREAM_PORT)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
            });
        }
    });
    (port, taken)
}

/// A connection RabbitMQ closed in its handshake is made again: the
/// request it was for is answered. Before, the request failed
/// (`cannot connect: Connection closed`, a 503 to a client), which the
/// listing in the test above did to the churn test below now and then.
#[tokio::test]
async fn a_connection_closed_in_its_handshake_is_made_again() {
    let engine = RabbitEngine::shared("handshake").await;
    let (port, taken) = closing_the_first_handshake().await;
    let mut backend = engine.backend();
    backend["port"] = json!(port);
    let (log, _, key) = lobby_log(backend);
    within("a read", log.first(&key))
        .await
        .expect("read on a second connection");
    assert_eq!(taken.load(Ordering::SeqCst), 2, "connections made");
    assert_eq!(log.stats().snapshot().reconnects, 0);
}

/// A publish, then at once a read of the stream's first entry, over and
/// over on the shared connection (three subscriptions a round: one to find
/// the published message, two to probe the stream's bounds):
/// - each drops subscriptions whose unsubscribe RabbitMQ has not answered
///   yet when the next subscribes. Their ids stayed taken there, and
///   reusing one failed (`SubscriptionIdAlreadyExists`): the request was
///   sent once more on a new connection, dropping the shared one under
///   every other request (a durable job's claim failed this way);
/// - RabbitMQ 3.10 before its fix of rabbitmq-server#6317 keeps a file
///   open for every subscription ended until its connection closes: 600
///   subscriptions left 600 files open on the node, and in
///   `tests/bench/bus.sh` the 974th publish got 503 (the node's stream
///   connections crashed with `emfile`). Connections retire after 128
///   subscriptions now, and give their files back.
#[tokio::test]
async fn subscribing_over_and_over_keeps_the_connection_and_the_nodes_files() {
    let engine = RabbitEngine::shared("churn").await;
    let (log, ctx, key) = lobby_log(engine.backend());
    let event = backends::publish::Publication {
        data: backends::Data::json(&json!({"n": 1})),
        name: None,
    };
    let before = open_segments();
    let mut most = 0;
    for round in 0..200 {
        within("a publish", log.append(&ctx, &event))
            .await
            .unwrap_or_else(|e| panic!("round {round}: publishing: {e}"));
        within("a read", log.first(&key))
            .await
            .unwrap_or_else(|e| panic!("round {round}: reading: {e}"));
        if round % 20 == 19 {
            most = most.max(open_segments().saturating_sub(before));
        }
    }
    assert_eq!(
        log.stats().snapshot().reconnects,
        0,
        "no request found its subscription id still taken"
    );
    assert!(
        most <= 2 * 128 + 32,
        "the node held {most} more segment files open during 600 subscriptions"
    );
}
