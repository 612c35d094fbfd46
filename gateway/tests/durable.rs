//! Durable jobs across real `gateway` processes, on real Redis and NATS on
//! loopback (`.ci/run` starts them): a `command` job resumed on another
//! instance, run once whoever asks, finished with nobody watching,
//! cancelled by `DELETE` (its whole process group gone), ended with
//! `producer_lost` when the instance running it dies; and an `http` upstream
//! without ids (an LLM-style token stream) made resumable.

#![cfg(unix)]

#[path = "support/listening.rs"]
mod listening;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::process::{Child, Command};

use listening::listening;

const BOUND: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// Where jobs are kept.
#[derive(Clone, Copy, Debug)]
enum Bus {
    Redis,
    Nats,
    Postgres,
    Rabbitmq,
}

impl Bus {
    fn section(self) -> &'static str {
        match self {
            Self::Redis => {
                "type = \"redis\"\nstream = \"durable-test:{job}\"\nallow = \"durable-test:*\"\n"
            }
            Self::Nats => {
                "type = \"nats\"\nstream = \"DURABLETEST\"\nsubject = \"durable-test.{job}\"\nallow = \"durable-test.*\"\n"
            }
            Self::Postgres => {
                "type = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/test\"\ntable = \"durable_test\"\nkey = \"{job}\"\nallow = \"*\"\n"
            }
            Self::Rabbitmq => {
                "type = \"rabbitmq\"\nstream = \"durable-test.{job}\"\nallow = \"durable-test.*\"\n[routes.jobs.durable.bus.create]\nmax_age = \"1h\"\n"
            }
        }
    }

    /// Makes what the bus needs first (NATS: the stream holding the jobs).
    async fn prepare(self) {
        if let Self::Nats = self {
            let client = within(
                "NATS connects",
                async_nats::connect("nats://127.0.0.1:4222"),
            )
            .await
            .expect("NATS on 127.0.0.1:4222");
            let jetstream = async_nats::jetstream::new(client);
            within(
                "the stream is made",
                jetstream.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "DURABLETEST".into(),
                    subjects: vec!["durable-test.*".into()],
                    max_age: Duration::from_secs(3600),
                    ..Default::default()
                }),
            )
            .await
            .expect("the JetStream stream");
        }
    }
}

/// A job's program: writes its pid and its runs, starts a child that
/// sleeps (to prove the whole group goes), then `?n=` events `{"n":i}`
/// (200 by default), `?pause=` seconds apart.
const JOB: &str = r#"#!/bin/sh
echo "$$" >> "$RUNS/$GATEWAY_JOB_ID.runs"
sleep 600 &
echo "$!" >> "$RUNS/$GATEWAY_JOB_ID.children"
n=${GATEWAY_QUERY_N:-200}
i=1
while [ "$i" -le "$n" ]; do
  echo "{\"n\":$i}"
  i=$((i + 1))
  sleep "${GATEWAY_QUERY_PAUSE:-0.005}"
done
kill "$!" 2>/dev/null
"#;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// A config with a durable `command` route on `bus` (lease `lease`), and
    /// `extra` routes.
    async fn new(bus: Bus, lease: &str, extra: &str) -> Self {
        bus.prepare().await;
        let dir = tempfile::tempdir().expect("a temp dir");
        let script = dir.path().join("job.sh");
        std::fs::write(&script, JOB).expect("the job script");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                r#"[server]
host = "127.0.0.1"

[routes.jobs]
path = "/jobs/{{job}}"
[routes.jobs.backends.run]
type = "command"
command = ["/bin/sh", "{script}"]
format = "ndjson"
env = {{ RUNS = "{runs}" }}
[routes.jobs.durable]
lease = "{lease}"
[routes.jobs.durable.bus]
{section}
{extra}"#,
                script = script.display(),
                runs = dir.path().display(),
                section = bus.section(),
            ),
        )
        .expect("the config");
        Self { dir, config }
    }

    fn runs(&self, job: &str) -> Vec<u32> {
        pids(&self.dir.path().join(format!("{job}.runs")))
    }

    fn children(&self, job: &str) -> Vec<u32> {
        pids(&self.dir.path().join(format!("{job}.children")))
    }

    async fn instance(&self) -> Instance {
        self.instance_with(&[]).await
    }

    /// An instance with `env` set too.
    async fn instance_with(&self, env: &[(&str, &str)]) -> Instance {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .args(["--config", &self.config.display().to_string()])
            .env("GATEWAY__SERVER__PORT", "0")
            .env("GATEWAY__SERVER__LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let (child, address) = within("the gateway listens", listening(command)).await;
        Instance {
            child,
            base: format!("http://{address}"),
        }
    }
}

fn pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

struct Instance {
    child: Child,
    base: String,
}

/// A job id no other run of the tests uses.
fn new_job(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

type Events = std::pin::Pin<Box<dyn futures::Stream<Item = eventsource_stream::Event> + Send>>;

/// An SSE stream of `url` (resuming after `last`), with its response
/// headers.
async fn open(url: &str, last: Option<&str>) -> (reqwest::header::HeaderMap, Events) {
    use eventsource_stream::Eventsource;
    let mut request = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream");
    if let Some(id) = last {
        request = request.header("last-event-id", id);
    }
    let response = within("the stream opens", request.send())
        .await
        .expect("a response");
    assert_eq!(response.status(), 200, "{url}");
    let headers = response.headers().clone();
    let events = response
        .bytes_stream()
        .eventsource()
        .map(|e| e.expect("SSE"))
        .boxed();
    (headers, events)
}

async fn next(events: &mut Events) -> eventsource_stream::Event {
    within("an event", events.next())
        .await
        .expect("the stream goes on")
}

/// Every event until the stream ends.
async fn rest(events: &mut Events) -> Vec<eventsource_stream::Event> {
    within("the stream's end", events.collect()).await
}

fn n(event: &eventsource_stream::Event) -> Option<u64> {
    serde_json::from_str::<Value>(&event.data).ok()?["n"].as_u64()
}

fn status_of(end: &eventsource_stream::Event) -> String {
    assert_eq!(end.event, "gateway.end", "{end:?}");
    serde_json::from_str::<Value>(&end.data).expect("JSON")["status"]
        .as_str()
        .expect("a status")
        .to_string()
}

#[tokio::test]
async fn a_job_resumes_on_another_instance_on_redis() {
    a_job_resumes_on_another_instance(Bus::Redis).await;
}

#[tokio::test]
async fn a_job_resumes_on_another_instance_on_nats() {
    a_job_resumes_on_another_instance(Bus::Nats).await;
}

#[tokio::test]
async fn a_job_resumes_on_another_instance_on_postgres() {
    a_job_resumes_on_another_instance(Bus::Postgres).await;
}

#[tokio::test]
async fn a_job_resumes_on_another_instance_on_rabbitmq() {
    a_job_resumes_on_another_instance(Bus::Rabbitmq).await;
}

/// 200 events: the client leaves after 50, comes back on the other process
/// with its last id, gets 51..200 once each, then the end; one run.
async fn a_job_resumes_on_another_instance(bus: Bus) {
    let setup = Setup::new(bus, "5s", "").await;
    let (a, b) = (setup.instance().await, setup.instance().await);
    let job = new_job("resume");
    let (headers, mut first) = open(&format!("{}/jobs/{job}?pause=0.01", a.base), None).await;
    assert_eq!(headers["gateway-job-id"], job.as_str());
    let started = next(&mut first).await;
    assert_eq!(started.event, "gateway.job");
    assert_eq!(
        serde_json::from_str::<Value>(&started.data).expect("JSON")["job"],
        job.as_str()
    );
    let mut last = String::new();
    for expected in 1..=50 {
        let event = next(&mut first).await;
        assert_eq!(n(&event), Some(expected), "{event:?}");
        assert!(event.id.starts_with(&format!("{job}:")), "{}", event.id);
        last = event.id;
    }
    drop(first);
    let (_, mut resumed) = open(&format!("{}/jobs/{job}", b.base), Some(&last)).await;
    let rest = rest(&mut resumed).await;
    let (end, events) = rest.split_last().expect("events");
    assert_eq!(status_of(end), "completed");
    assert_eq!(end.id, format!("{job}:end"));
    let numbers: Vec<_> = events.iter().map(n).collect();
    assert_eq!(numbers, (51..=200).map(Some).collect::<Vec<_>>());
    assert_eq!(setup.runs(&job).len(), 1, "the producer ran once");

    // Resuming from the end is over: 204, which stops EventSource.
    let after_end = reqwest::Client::new()
        .get(format!("{}/jobs/{job}", b.base))
        .header("accept", "text/event-stream")
        .header("last-event-id", &end.id)
        .send()
        .await
        .expect("a response");
    assert_eq!(after_end.status(), 204);
    drop((a, b));
}

/// Every client leaves mid-job; the job goes on; a client that comes
/// later reads it all from the start, then the end.
#[tokio::test]
async fn a_job_finishes_when_every_client_left() {
    let setup = Setup::new(Bus::Redis, "5s", "").await;
    let a = setup.instance().await;
    let job = new_job("detached");
    let (_, mut events) = open(&format!("{}/jobs/{job}?n=60&pause=0.02", a.base), None).await;
    next(&mut events).await;
    assert_eq!(n(&next(&mut events).await), Some(1));
    drop(events);
    let b = setup.instance().await;
    // A late reader on another instance: the whole job, then its end.
    let (_, mut late) = open(&format!("{}/jobs/{job}", b.base), None).await;
    let all = rest(&mut late).await;
    assert_eq!(all.first().map(|e| e.event.as_str()), Some("gateway.job"));
    let numbers: Vec<_> = all[1..all.len() - 1].iter().map(n).collect();
    assert_eq!(numbers, (1..=60).map(Some).collect::<Vec<_>>());
    assert_eq!(status_of(all.last().expect("an end")), "completed");
    assert_eq!(setup.runs(&job).len(), 1);
}

/// `DELETE` on another instance stops the producer, its whole process
/// group, and ends every reader's stream with `cancelled`.
#[tokio::test]
async fn delete_cancels_a_job_from_any_instance() {
    let setup = Setup::new(Bus::Redis, "5s", "").await;
    let (a, b) = (setup.instance().await, setup.instance().await);
    let job = new_job("cancel");
    let (_, mut on_a) = open(&format!("{}/jobs/{job}?n=100000&pause=0.05", a.base), None).await;
    next(&mut on_a).await;
    next(&mut on_a).await;
    let (_, mut on_b) = open(&format!("{}/jobs/{job}", b.base), None).await;
    next(&mut on_b).await;
    let cancelled = reqwest::Client::new()
        .delete(format!("{}/jobs/{job}", b.base))
        .send()
        .await
        .expect("a response");
    assert_eq!(cancelled.status(), 202);
    for events in [&mut on_a, &mut on_b] {
        let end = rest(events).await.pop().expect("an end");
        assert_eq!(status_of(&end), "cancelled");
    }
    let mut pids = setup.runs(&job);
    pids.extend(setup.children(&job));
    assert_eq!(pids.len(), 2, "the job and its child");
    within("the job's processes end", async {
        while pids.iter().any(|&pid| alive(pid)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // An unknown job: 404.
    let unknown = reqwest::Client::new()
        .delete(format!("{}/jobs/{}", b.base, new_job("never")))
        .send()
        .await
        .expect("a response");
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn a_dead_instance_ends_its_jobs_with_producer_lost_on_redis() {
    a_dead_instance_ends_its_jobs_with_producer_lost(Bus::Redis).await;
}

#[tokio::test]
async fn a_dead_instance_ends_its_jobs_with_producer_lost_on_nats() {
    a_dead_instance_ends_its_jobs_with_producer_lost(Bus::Nats).await;
}

#[tokio::test]
async fn a_dead_instance_ends_its_jobs_with_producer_lost_on_postgres() {
    a_dead_instance_ends_its_jobs_with_producer_lost(Bus::Postgres).await;
}

#[tokio::test]
async fn a_dead_instance_ends_its_jobs_with_producer_lost_on_rabbitmq() {
    a_dead_instance_ends_its_jobs_with_producer_lost(Bus::Rabbitmq).await;
}

/// The instance running a job is killed (SIGKILL): readers elsewhere get
/// the end with `producer_lost` within about the lease, never a hang.
async fn a_dead_instance_ends_its_jobs_with_producer_lost(bus: Bus) {
    let setup = Setup::new(bus, "1s", "").await;
    let (mut a, b) = (setup.instance().await, setup.instance().await);
    let job = new_job("lost");
    let (_, mut on_a) = open(&format!("{}/jobs/{job}?n=100000&pause=0.05", a.base), None).await;
    next(&mut on_a).await;
    let (_, mut on_b) = open(&format!("{}/jobs/{job}", b.base), None).await;
    next(&mut on_b).await;
    a.child.start_kill().expect("SIGKILL");
    a.child.wait().await.expect("the instance is gone");
    let killed = std::time::Instant::now();
    let end = rest(&mut on_b).await.pop().expect("an end");
    assert_eq!(status_of(&end), "producer_lost");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "ended {:?} after the kill",
        killed.elapsed()
    );
}

fn message_of(end: &eventsource_stream::Event) -> String {
    serde_json::from_str::<Value>(&end.data).expect("JSON")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An instance that shuts down (SIGTERM) ends the jobs it runs itself:
/// readers elsewhere get `producer_lost` at once, not a lease (30 s) later,
/// and the producer's processes are gone.
#[tokio::test]
async fn a_gateway_that_shuts_down_ends_its_jobs_at_once() {
    let setup = Setup::new(Bus::Redis, "30s", "").await;
    let (mut a, b) = (setup.instance().await, setup.instance().await);
    let job = new_job("shutdown");
    let (_, mut on_a) = open(&format!("{}/jobs/{job}?n=100000&pause=0.05", a.base), None).await;
    next(&mut on_a).await;
    let (_, mut on_b) = open(&format!("{}/jobs/{job}", b.base), None).await;
    next(&mut on_b).await;
    let pid = a.child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let stopped = std::time::Instant::now();
    let end = rest(&mut on_b).await.pop().expect("an end");
    assert_eq!(status_of(&end), "producer_lost");
    assert!(message_of(&end).contains("shut down"), "{end:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "ended {:?} after SIGTERM (the lease is 30 s)",
        stopped.elapsed()
    );
    let status = within("the instance exits", a.child.wait())
        .await
        .expect("an exit status");
    assert!(status.success(), "{status}");
    for pid in setup.runs(&job).into_iter().chain(setup.children(&job)) {
        assert!(!alive(pid), "process {pid} of the job still runs");
    }
}

/// A request whose platform deadline is near (a Lambda invocation's: here
/// `lambda.function_timeout` 2 s, less a 1 s margin) starts a job that ends
/// by then, with `timeout` and the reason, for every reader.
#[tokio::test]
async fn a_job_started_in_a_lambda_invocation_ends_before_its_deadline() {
    let setup = Setup::new(Bus::Redis, "30s", "").await;
    let lambda = setup
        .instance_with(&[
            ("GATEWAY__LAMBDA__FUNCTION_TIMEOUT", "2s"),
            ("GATEWAY__LAMBDA__DEADLINE_MARGIN", "1s"),
        ])
        .await;
    let other = setup.instance().await;
    let job = new_job("deadline");
    let started = std::time::Instant::now();
    let (_, mut on_lambda) = open(
        &format!("{}/jobs/{job}?n=100000&pause=0.05", lambda.base),
        None,
    )
    .await;
    next(&mut on_lambda).await;
    let (_, mut elsewhere) = open(&format!("{}/jobs/{job}", other.base), None).await;
    let end = rest(&mut elsewhere).await.pop().expect("an end");
    assert_eq!(status_of(&end), "timeout");
    assert!(message_of(&end).contains("Lambda invocation"), "{end:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended {:?} after the start",
        started.elapsed()
    );
}

/// Two instances asked to start the same job at once: one producer, and
/// both clients see the same events.
#[tokio::test]
async fn two_instances_starting_one_job_run_it_once() {
    let setup = Setup::new(Bus::Redis, "5s", "").await;
    let (a, b) = (setup.instance().await, setup.instance().await);
    for round in 0..5 {
        let job = new_job(&format!("race{round}"));
        let url_a = format!("{}/jobs/{job}?n=20&pause=0.001", a.base);
        let url_b = format!("{}/jobs/{job}?n=20&pause=0.001", b.base);
        let ((_, mut on_a), (_, mut on_b)) = tokio::join!(open(&url_a, None), open(&url_b, None));
        let (got_a, got_b) = tokio::join!(rest(&mut on_a), rest(&mut on_b));
        let ids = |events: &[eventsource_stream::Event]| -> Vec<String> {
            events.iter().map(|e| e.id.clone()).collect()
        };
        assert_eq!(ids(&got_a), ids(&got_b));
        assert_eq!(got_a.len(), 22, "started, 20 events, end");
        assert_eq!(setup.runs(&job).len(), 1, "round {round}: one producer");
        let unique: HashSet<_> = ids(&got_a).into_iter().collect();
        assert_eq!(unique.len(), 22);
    }
}

/// An LLM-style upstream: `POST /generate` with `{"prompt": "w1 w2 …"}`
/// streams one SSE event per word, without ids, 10 ms apart. It counts the
/// requests it got.
async fn token_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::response::sse::{Event as SseEvent, Sse};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let app = axum::Router::new().route(
        "/generate",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let words: Vec<String> = body["prompt"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let tokens =
                futures::stream::iter(words.into_iter().enumerate()).then(|(i, w)| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok::<_, std::convert::Infallible>(
                        SseEvent::default()
                            .data(serde_json::json!({"i": i + 1, "token": w}).to_string()),
                    )
                });
            async move { Sse::new(tokens) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/generate"), asked)
}

/// NDJSON lines of a response, as JSON.
fn lines(
    response: reqwest::Response,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Value> + Send>> {
    let bytes = response.bytes_stream();
    futures::stream::unfold(
        (bytes, Vec::<u8>::new()),
        |(mut bytes, mut buffer)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let value = serde_json::from_slice(&line).expect("a JSON line");
                    return Some((value, (bytes, buffer)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    _ => return None,
                }
            }
        },
    )
    .boxed()
}

/// An upstream without ids, made durable: a prompt POSTed to one instance
/// streams NDJSON; the client drops, resumes on the other instance with the
/// last line's id, and gets the rest once; the upstream was asked once.
#[tokio::test]
async fn an_upstream_without_ids_becomes_resumable() {
    let (upstream, asked) = token_server().await;
    let extra = format!(
        r#"
[routes.chat]
path = "/chat/{{job}}"
methods = ["GET", "POST"]
envelope = "always"
[routes.chat.backends.llm]
type = "http"
url = "{upstream}"
method = "POST"
format = "sse"
[routes.chat.durable]
lease = "5s"
[routes.chat.durable.bus]
type = "redis"
stream = "durable-test:chat:{{job}}"
allow = "durable-test:chat:*"
"#
    );
    let setup = Setup::new(Bus::Redis, "5s", &extra).await;
    let (a, b) = (setup.instance().await, setup.instance().await);
    let job = new_job("chat");
    let words: Vec<String> = (1..=40).map(|i| format!("w{i}")).collect();
    let prompt = serde_json::json!({"prompt": words.join(" ")});
    let response = within(
        "the prompt is answered",
        reqwest::Client::new()
            .post(format!("{}/chat/{job}", a.base))
            .header("accept", "application/x-ndjson")
            .json(&prompt)
            .send(),
    )
    .await
    .expect("a response");
    assert_eq!(response.status(), 200);
    let mut first = lines(response);
    let started = within("a line", first.next()).await.expect("a line");
    assert_eq!(started["event"], "gateway.job");
    let mut last = String::new();
    for i in 1..=10u64 {
        let line = within("a line", first.next()).await.expect("a line");
        assert_eq!(line["data"]["i"], i, "{line}");
        last = line["id"].as_str().expect("an id").to_string();
    }
    drop(first);
    let response = within(
        "the resume is answered",
        reqwest::Client::new()
            .get(format!("{}/chat/{job}", b.base))
            .header("accept", "application/x-ndjson")
            .header("last-event-id", &last)
            .send(),
    )
    .await
    .expect("a response");
    assert_eq!(response.status(), 200);
    let rest: Vec<Value> = within("the rest", lines(response).collect()).await;
    let (end, tokens) = rest.split_last().expect("lines");
    assert_eq!(end["event"], "gateway.end");
    assert_eq!(end["data"]["status"], "completed");
    let got: Vec<_> = tokens.iter().map(|l| l["data"]["token"].clone()).collect();
    let expected: Vec<Value> = words[10..]
        .iter()
        .map(|w| Value::from(w.as_str()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// `detach = false`: the job is cancelled once its last client left (for
/// the lease); `max_runtime`: a job that runs longer ends with `timeout`.
/// Each end is on the bus for a later reader, and the Redis key expires
/// `retention` after the end.
#[tokio::test]
async fn attached_jobs_stop_when_their_clients_leave_and_runtime_is_bounded() {
    let extra = |route: &str, settings: &str| {
        format!(
            r#"
[routes.{route}]
path = "/{route}/{{job}}"
[routes.{route}.backends.run]
type = "command"
command = ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo \"{{\\\"n\\\":$i}}\"; sleep 0.05; done"]
format = "ndjson"
[routes.{route}.durable]
{settings}
[routes.{route}.durable.bus]
type = "redis"
stream = "durable-test:{route}:{{job}}"
allow = "durable-test:{route}:*"
"#
        )
    };
    let extras = extra(
        "attached",
        "detach = false\nlease = \"500ms\"\nretention = \"90s\"",
    ) + &extra("bounded", "max_runtime = \"1s\"");
    let setup = Setup::new(Bus::Redis, "5s", &extras).await;
    let a = setup.instance().await;

    let job = new_job("attached");
    let (_, mut events) = open(&format!("{}/attached/{job}", a.base), None).await;
    next(&mut events).await;
    assert_eq!(n(&next(&mut events).await), Some(1));
    drop(events);
    // The job ends by itself, a lease after its client left: its last
    // entry becomes the end (read from Redis: a reader would keep it).
    let key = format!("durable-test:attached:{job}");
    within("the attached job ends", async {
        loop {
            let last = std::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "xrevrange", &key, "+", "-", "count", "1"])
                .output()
                .expect("redis-cli runs");
            if String::from_utf8_lossy(&last.stdout).contains("gateway.end") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (_, mut late) = open(&format!("{}/attached/{job}", a.base), None).await;
    let ended = rest(&mut late).await.pop().expect("an end");
    assert_eq!(status_of(&ended), "cancelled");
    let ttl = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "pttl", &key])
        .output()
        .expect("redis-cli runs");
    let ttl: i64 = String::from_utf8_lossy(&ttl.stdout)
        .trim()
        .parse()
        .expect("a TTL");
    assert!(
        (60_000..=90_000).contains(&ttl),
        "the key expires after retention: {ttl} ms"
    );

    let job = new_job("bounded");
    let (_, mut events) = open(&format!("{}/bounded/{job}", a.base), None).await;
    let all = rest(&mut events).await;
    let end = all.last().expect("an end");
    assert_eq!(status_of(end), "timeout");
    assert!(all.len() > 5, "it ran until then: {} events", all.len());
}
