//! EventSource and the live viewer in a real browser: headless Chromium
//! (Debian's `/usr/bin/chromium`, or `$CHROMIUM`) driven by npm's
//! `playwright-core` from the scripts in tests/browser/ (`.ci/run` installs
//! both: `apt-get install chromium`, `npm ci` in tests/browser). A missing
//! browser or package fails these tests with how to install it.
//!
//! Each test starts real gateways on loopback, runs one node driver (one
//! Chromium launch), and checks the JSON it prints: what the page saw.
//! Every wait is bounded, in the driver and here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backends::redis::RedisConfig;
use backends::testing::{Mock, Step, event};
use backends::ticker::{Ticker, TickerConfig};
use backends::{Backend, BackendError, EventStream, RequestContext};
use gateway::config::{CorsConfig, RouteConfig, ServerConfig};
use gateway::{Gateway, Route};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

const REDIS: &str = "redis://127.0.0.1:6379";

/// tests/browser/, where the drivers and their node_modules are.
fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Fails, saying how to install it, when the browser or the driver's
/// package is missing: these tests never skip.
fn require_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install it with `apt-get install chromium` \
         (as .ci/run does), or point CHROMIUM at one"
    );
    let package = driver_dir().join("node_modules/playwright-core/package.json");
    assert!(
        package.exists(),
        "playwright-core is not installed: run `npm ci` in {} (as .ci/run does)",
        driver_dir().display()
    );
}

/// A running node driver: its JSON lines, and the process, killed when
/// dropped.
struct Driver {
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
    script: &'static str,
}

impl Driver {
    fn start(script: &'static str, config: &Value) -> Self {
        require_browser();
        let mut child = Command::new("node")
            .arg(script)
            .arg(config.to_string())
            .current_dir(driver_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (apt-get install nodejs)");
        let stdout = child.stdout.take().expect("stdout");
        Self {
            lines: BufReader::new(stdout).lines(),
            _child: child,
            script,
        }
    }

    /// The driver's next JSON line, within `bound`; a line with `error`
    /// (the browser part failed) fails the test.
    async fn next(&mut self, bound: Duration) -> Value {
        let line = tokio::time::timeout(bound, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} said nothing within {bound:?}", self.script))
            .expect("driver output")
            .unwrap_or_else(|| panic!("{} ended without a result", self.script));
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} printed {line:?}: {e}", self.script));
        if let Some(error) = value.get("error") {
            panic!(
                "{} failed: {}",
                self.script,
                error.as_str().unwrap_or_default()
            );
        }
        value
    }
}

/// A gateway serving `routes` on `listener` until shut down.
struct Running {
    gateway: Arc<Gateway>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn start(listener: TcpListener, routes: Vec<Route>) -> Self {
        let gateway = Arc::new(Gateway::new(ServerConfig::default(), routes).expect("gateway"));
        let task = tokio::spawn(gateway::serve(listener, Arc::clone(&gateway)));
        Self { gateway, task }
    }

    /// Shuts down and waits until the port is free again.
    async fn stop(self) {
        self.gateway.shutdown_token().cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the gateway stops")
            .expect("task")
            .expect("serve");
    }
}

async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

fn route(name: &str, config: &RouteConfig, backends: Vec<(&str, Arc<dyn Backend>)>) -> Route {
    let backends = backends
        .into_iter()
        .map(|(n, b)| (n.to_string(), b))
        .collect();
    Route::new(name, config, backends).expect("valid route")
}

/// A backend that records the `Last-Event-ID` each open was given (what
/// the gateway made of the browser's header), then opens `inner`.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn Backend>,
    opened: Opened,
}

/// The ids a [`Recording`] was opened with, and a wake-up on each open.
type Opened = Arc<(Mutex<Vec<Option<String>>>, tokio::sync::Notify)>;

/// What `opened` holds once it holds at least `count` opens (bounded).
async fn opened_at_least(opened: &Opened, count: usize) -> Vec<Option<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = opened.0.lock().expect("lock").clone();
        if now.len() >= count {
            return now;
        }
        // notify_one keeps a permit: an open between the check and the
        // wait is not missed.
        tokio::time::timeout_at(deadline, opened.1.notified())
            .await
            .unwrap_or_else(|_| panic!("{count} opens did not happen; only {now:?}"));
    }
}

#[async_trait]
impl Backend for Recording {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let (ids, opens) = &*self.opened;
        ids.lock().expect("lock").push(ctx.last_event_id.clone());
        opens.notify_one();
        self.inner.open(ctx).await
    }
}

/// A key of this test run only.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("test:browser:{name}:{}:{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_resumes_exactly_across_lifetime_ends_and_a_restart() {
    let prefix = unique("resume");
    let key = format!("{prefix}:lobby");
    let mut options = RouteConfig::new("/s/{room}");
    options.retry = Duration::from_millis(200);
    options.max_lifetime = Duration::from_millis(1000);
    let instance = |opened: &Opened| {
        let redis = RedisConfig {
            url: REDIS.into(),
            stream: format!("{prefix}:{{room}}"),
            allow: Some(format!("{prefix}:*")),
            ..RedisConfig::default()
        }
        .build();
        let recording = Recording {
            inner: Arc::new(redis),
            opened: Arc::clone(opened),
        };
        route("rooms", &options, vec![("bus", Arc::new(recording))])
    };
    let (on_first, on_second): (Opened, Opened) = (Arc::default(), Arc::default());
    let (listener, addr) = loopback().await;
    let first = Running::start(listener, vec![instance(&on_first)]);

    let mut driver = Driver::start(
        "resume.mjs",
        &json!({
            "page": format!("http://{addr}/healthz"),
            "stream": format!("http://{addr}/s/lobby"),
            "names": ["tick"],
            "expect": 70,
            "timeout_ms": 40000,
        }),
    );
    assert_eq!(
        driver.next(Duration::from_secs(30)).await,
        json!({"ready": true})
    );

    let mut redis = redis::Client::open(REDIS)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running (.ci/run starts it)");
    let mut ids: Vec<String> = Vec::new();
    let mut publish = async |n: u64| {
        let id: String = redis
            .xadd(
                &key,
                "*",
                &[
                    ("data", json!({ "n": n }).to_string()),
                    ("event", "tick".into()),
                ],
            )
            .await
            .expect("XADD");
        let _: bool = redis.expire(&key, 600).await.expect("EXPIRE");
        id
    };
    // Events every 40 ms for 1.2 s: the first stream reaches its lifetime
    // (1 s) meanwhile, and the browser comes back after `retry` (200 ms).
    for n in 0..30 {
        ids.push(publish(n).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Once the browser is back after a lifetime end, the gateway goes away
    // (that stream ends with `shutdown`); these ten are published while no
    // gateway runs. It goes while a stream has just opened, not in the
    // `retry` gap after a lifetime end (on a loaded machine the loop above
    // can outlast several lifetimes): the next open, and a moment for its
    // stream to start.
    let seen = on_first.0.lock().expect("lock").len();
    opened_at_least(&on_first, seen.max(1) + 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.stop().await;
    for n in 30..40 {
        ids.push(publish(n).await);
    }
    let listener = TcpListener::bind(addr).await.expect("the same port again");
    let second = Running::start(listener, vec![instance(&on_second)]);
    for n in 40..70 {
        ids.push(publish(n).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    let result = driver.next(Duration::from_secs(40)).await;
    let log = &result["result"];
    let events = log["events"].as_array().expect("events");
    let got: Vec<(String, String, Value)> = events
        .iter()
        .map(|e| {
            let data: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
            (
                e["type"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
                data,
            )
        })
        .collect();
    let expected: Vec<(String, String, Value)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| ("tick".to_string(), id.clone(), json!({ "n": n })))
        .collect();
    assert_eq!(got, expected, "every event exactly once, in order");

    // The streams ended at their lifetime and at the shutdown, and the
    // browser opened again by itself each time.
    let reasons: Vec<&str> = log["closes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"lifetime"), "{reasons:?}");
    assert!(reasons.contains(&"shutdown"), "{reasons:?}");
    assert!(log["opens"].as_u64().unwrap() >= 3, "{log}");

    // The server saw the resumes: the first open had no id, every later one
    // an id it had sent, and the restarted gateway's first open the id of
    // an event from before the restart (so events 30..40 came from Redis
    // by that id, not live).
    let on_first = opened_at_least(&on_first, 2).await;
    let on_second = opened_at_least(&on_second, 1).await;
    assert_eq!(on_first.first(), Some(&None), "{on_first:?}");
    assert!(
        on_first.len() >= 2,
        "a reconnect after the lifetime: {on_first:?}"
    );
    for id in on_first[1..].iter().chain(&on_second) {
        let id = id.as_ref().expect("a resume carries Last-Event-ID");
        assert!(ids.contains(id), "{id} was never sent");
    }
    let resumed_at = on_second.first().cloned().flatten().expect("B resumed");
    let position = ids.iter().position(|id| *id == resumed_at).unwrap();
    assert!(position < 30, "resumed after event {position}");
    // And the browser sent them: each request after the first carried one.
    let sent: Vec<Value> = log["last_event_ids"].as_array().unwrap().clone();
    assert_eq!(sent.first(), Some(&Value::Null), "{sent:?}");
    let resumed: Vec<&str> = sent.iter().filter_map(Value::as_str).collect();
    assert!(resumed.len() >= 2, "{sent:?}");
    for id in &on_second {
        assert!(
            resumed.contains(&id.as_deref().unwrap()),
            "{id:?} not in {sent:?}"
        );
    }
    second.stop().await;
}

/// A durable job watched by `EventSource` on one gateway that restarts
/// mid-job, while the job runs on another: the browser resumes by itself,
/// gets every event once, then the job's end, and stops (the resume from
/// the end is answered 204).
/// Events of the job, 50 ms apart: 10 s, long enough that the job still
/// runs when the watcher restarts however long Chromium took to start (at
/// 3 s, a loaded CI machine once had the whole job done before).
const JOB_EVENTS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_watches_a_durable_job_across_a_gateway_restart() {
    let prefix = unique("durable");
    let mut options = RouteConfig::new("/jobs/{job}");
    options.retry = Duration::from_millis(200);
    let bus = RedisConfig {
        url: REDIS.into(),
        stream: format!("{prefix}:{{job}}"),
        allow: Some(format!("{prefix}:*")),
        ..RedisConfig::default()
    };
    options.durable = Some(backends::durable::DurableConfig::new(
        backends::BackendConfig::Redis(bus),
    ));
    let jobs = || {
        let ticks = Ticker::new(TickerConfig {
            interval: Duration::from_millis(50),
            count: Some(JOB_EVENTS),
            name: "tick".into(),
            ..TickerConfig::default()
        });
        route("jobs", &options, vec![("run", Arc::new(ticks))])
    };
    // The job starts on the runner; the browser watches it on the watcher.
    let (runner_listener, runner) = loopback().await;
    let runner_gateway = Running::start(runner_listener, vec![jobs()]);
    let job = format!("job{}", std::process::id());
    let started = reqwest::Client::new()
        .get(format!("http://{runner}/jobs/{job}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("the job starts");
    assert_eq!(started.status(), 200);
    drop(started);
    let (listener, addr) = loopback().await;
    let watcher = Running::start(listener, vec![jobs()]);
    let mut driver = Driver::start(
        "resume.mjs",
        &json!({
            "page": format!("http://{addr}/healthz"),
            "stream": format!("http://{addr}/jobs/{job}"),
            "names": ["gateway.job", "tick", "gateway.end"],
            "expect": JOB_EVENTS + 2,
            "timeout_ms": 40000,
        }),
    );
    assert_eq!(
        driver.next(Duration::from_secs(30)).await,
        json!({"ready": true})
    );
    // A second into the job's ten, the watcher restarts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    watcher.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = TcpListener::bind(addr).await.expect("the same port again");
    let watcher = Running::start(listener, vec![jobs()]);

    let result = driver.next(Duration::from_secs(40)).await;
    let log = &result["result"];
    let events = log["events"].as_array().expect("events");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.first(), Some(&"gateway.job"));
    assert_eq!(types.last(), Some(&"gateway.end"));
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "tick")
        .filter_map(|e| serde_json::from_str::<Value>(e["data"].as_str()?).ok()?["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (1..=JOB_EVENTS).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let end: Value = serde_json::from_str(
        events[JOB_EVENTS as usize + 1]["data"]
            .as_str()
            .expect("data"),
    )
    .expect("JSON");
    assert_eq!(end["status"], "completed");
    assert!(log["opens"].as_u64().expect("opens") >= 2, "{log}");
    let resumed: Vec<&str> = log["last_event_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        resumed.iter().any(|id| id.starts_with(&format!("{job}:"))),
        "the browser resumed with a job id: {resumed:?}"
    );
    watcher.stop().await;
    runner_gateway.stop().await;
}

/// A static page on its own loopback port: another origin than the
/// gateway's.
async fn other_origin() -> (String, JoinHandle<()>) {
    let (listener, addr) = loopback().await;
    let app = axum::Router::new().fallback(|| async {
        axum::response::Html("<!doctype html><title>another origin</title><p>a page elsewhere</p>")
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_across_origins_only_where_cors_allows() {
    let (allowed, allowed_task) = other_origin().await;
    let (stranger, stranger_task) = other_origin().await;
    // Three named events, then the stream stays open (no reconnect muddles
    // the count).
    let script = || {
        let steps = (1..=3)
            .map(|n| Step::Event(event(&n.to_string(), "tick", json!({ "n": n }))))
            .chain([Step::Pending])
            .collect();
        Arc::new(Mock::new(steps)) as Arc<dyn Backend>
    };
    let mut open = RouteConfig::new("/open");
    open.cors = Some(CorsConfig {
        origins: vec![allowed.clone()],
        credentials: false,
        allow_headers: vec!["last-event-id".into()],
        expose_headers: vec!["x-request-id".into()],
        max_age: Duration::from_secs(60),
    });
    let closed = RouteConfig::new("/closed");
    let (listener, addr) = loopback().await;
    let gateway = Running::start(
        listener,
        vec![
            route("open", &open, vec![("m", script())]),
            route("closed", &closed, vec![("m", script())]),
        ],
    );
    let stream = |path: &str| json!({ "url": format!("http://{addr}{path}"), "names": ["tick"], "expect": 3 });
    let mut driver = Driver::start(
        "cors.mjs",
        &json!({
            "pages": [
                { "page": format!("{allowed}/"), "streams": [stream("/open"), stream("/closed")] },
                { "page": format!("{stranger}/"), "streams": [stream("/open")] },
            ],
            "timeout_ms": 30000,
        }),
    );
    let result = driver.next(Duration::from_secs(35)).await;
    let pages = result["result"].as_array().expect("pages");
    let summary = |log: &Value| -> Vec<(String, String, String)> {
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_string();
                (s("type"), s("id"), s("data"))
            })
            .collect()
    };
    // The allowed origin reads /open: names, ids and data.
    let expected: Vec<(String, String, String)> = (1..=3)
        .map(|n| ("tick".into(), n.to_string(), format!("{{\"n\":{n}}}")))
        .collect();
    assert_eq!(summary(&pages[0][0]), expected, "{}", pages[0][0]);
    assert_eq!(pages[0][0]["opens"], 1);
    assert_eq!(pages[0][0]["errors"], 0);
    // A route without CORS, and an origin the route does not name: the
    // EventSource fails for good (CLOSED) and the page sees no event.
    for log in [&pages[0][1], &pages[1][0]] {
        assert_eq!(summary(log), [], "{log}");
        assert_eq!(log["opens"], 0, "{log}");
        assert_eq!(log["readyState"], 2, "{log}");
        assert!(log["errors"].as_u64().unwrap() >= 1, "{log}");
    }
    gateway.stop().await;
    allowed_task.abort();
    stranger_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_shows_events_live() {
    let ticker = |interval: u64| {
        Arc::new(Ticker::new(TickerConfig {
            interval: Duration::from_millis(interval),
            ..TickerConfig::default()
        })) as Arc<dyn Backend>
    };
    let mut clock = RouteConfig::new("/clock/{zone}");
    clock.retry = Duration::from_millis(300);
    clock.max_lifetime = Duration::from_secs(3);
    let mixed = RouteConfig::new("/mixed");
    let fast = RouteConfig::new("/fast");
    let mut done = RouteConfig::new("/done");
    done.retry = Duration::from_millis(200);
    let (listener, addr) = loopback().await;
    let gateway = Running::start(
        listener,
        vec![
            route("clock", &clock, vec![("metronome", ticker(100))]),
            route(
                "mixed",
                &mixed,
                vec![("left", ticker(150)), ("right", ticker(150))],
            ),
            route("fast", &fast, vec![("burst", ticker(1))]),
            route(
                "done",
                &done,
                vec![(
                    "four",
                    Arc::new(Ticker::new(TickerConfig {
                        interval: Duration::from_millis(50),
                        count: Some(4),
                        ..TickerConfig::default()
                    })) as Arc<dyn Backend>,
                )],
            ),
        ],
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact folder");
    let artifact = artifacts.join("viewer.png");
    let phone_artifact = artifacts.join("viewer-390px.png");
    let _ = std::fs::remove_file(&artifact);
    let _ = std::fs::remove_file(&phone_artifact);
    let mut driver = Driver::start(
        "viewer.mjs",
        &json!({
            "url": format!("http://{addr}/clock/utc?since=now"),
            "fan_in": format!("http://{addr}/mixed"),
            "fast": format!("http://{addr}/fast"),
            "done": format!("http://{addr}/done"),
            "max_rows": gateway::viewer::MAX_ROWS,
            "artifact": artifact,
            "phone_artifact": phone_artifact,
            "timeout_ms": 60000,
        }),
    );
    let result = driver.next(Duration::from_secs(65)).await;
    let r = &result["result"];
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["content_type"], "text/html; charset=utf-8");
    assert_eq!(r["csp"], gateway::viewer::policy());
    // The page ran under its policy without a refusal or an error.
    assert_eq!(r["problems"], json!([]), "{r}");
    assert_eq!(r["state"], "open");
    assert_eq!(
        r["columns"],
        json!(["time", "source", "name", "id", "data"])
    );
    let row = r["first_row"].as_array().expect("a row");
    assert_eq!(row.len(), 5, "{row:?}");
    assert_eq!(row[1], "metronome");
    assert_eq!(row[2], "tick");
    assert!(!row[3].as_str().unwrap().is_empty(), "an id: {row:?}");
    let data: Value = serde_json::from_str(row[4].as_str().unwrap()).expect("JSON data");
    assert!(data.get("seq").is_some(), "{data}");
    // Paused: counted, not shown; cleared; resumed.
    let pause = &r["pause"];
    assert_eq!(pause["rows_before"], pause["rows_after"], "{pause}");
    assert!(pause["count_after"].as_u64() >= Some(pause["count_before"].as_u64().unwrap() + 3));
    assert!(pause["held"].as_str().unwrap().contains("held"), "{pause}");
    assert_eq!(pause["button"], "Resume");
    assert_eq!(r["rows_after_clear"], 0);
    assert!(r["rows_after_resume"].as_u64() >= Some(1));
    // The stream ended at its lifetime; the page reconnected and went on.
    assert!(r["reconnects"].as_u64() >= Some(1), "{r}");
    assert_eq!(r["state_after_reconnect"], "open");
    assert!(!r["sparkline"].as_str().unwrap().is_empty());
    // Two backends: each row names its own.
    assert_eq!(r["fan_in_sources"], json!(["left", "right"]));
    // Bounded: the newest rows only.
    let fast = &r["fast"];
    assert!(
        fast["count"].as_u64() > Some(gateway::viewer::MAX_ROWS as u64),
        "{fast}"
    );
    assert_eq!(fast["rows"], gateway::viewer::MAX_ROWS, "{fast}");
    // Events arriving show a rate at once (10 a second here).
    let first_rate: f64 = r["first_rate"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a rate");
    assert!(first_rate > 0.0, "{r}");
    // A stream that ended is complete: no error, no reconnect counted.
    let done = &r["done"];
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["reconnects"], 0, "{done}");
    assert_ne!(done["note_class"], "error", "{done}");
    assert_eq!(done["rows"], 4, "{done}");
    // At 390 px the data is there, and the page does not scroll sideways.
    let phone = &r["phone"];
    assert!(phone["data_width"].as_f64() > Some(200.0), "{phone}");
    assert!(
        phone["data_text"]
            .as_str()
            .unwrap_or_default()
            .contains("seq"),
        "{phone}"
    );
    assert!(phone["page_width"].as_f64() <= Some(390.0), "{phone}");
    assert!(artifact.exists() && phone_artifact.exists());
    println!(
        "viewer screenshots: {} {}",
        artifact.display(),
        phone_artifact.display()
    );
    gateway.stop().await;
}

/// The README's browser snippet for the LLM example (the `js` block of
/// "An LLM front end", read from the README so it cannot drift), run in a
/// page of the gateway's origin against `config/examples/llm.toml` and the
/// mock API: the answer appears token by token, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_llm_snippet_streams_an_answer_in_a_browser() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("the README");
    let section = readme
        .split("### An LLM front end")
        .nth(1)
        .expect("the README's LLM section");
    let snippet = section
        .split("```js\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a js block in it");
    let (_mock, port) = gateway_tests::examples::mock_llm();
    let server = gateway_tests::examples::llm_gateway(port).await;
    let mut driver = Driver::start(
        "snippet.mjs",
        &json!({
            "url": server.url("/healthz"),
            "snippet": snippet,
            "timeout_ms": 30000,
        }),
    );
    let result = driver.next(Duration::from_secs(35)).await;
    let r = &result["result"];
    assert_eq!(r["problems"], json!([]), "{r}");
    let text = r["text"].as_str().expect("the page's text");
    assert!(
        text.starts_with("You asked: What is a stream. This answer streams"),
        "{text:?}"
    );
}

/// The console (`[server.console]`) in Chromium: the index lists every
/// route and publish path and no secret; its publish form posts an event;
/// a room opened from it shows the event, filters, pretty-prints and copies
/// it, and starts from a chosen id; a protected route waits for a token
/// and shows the connection's details; a POST route takes a JSON body and
/// ends "completed"; at 390 px nothing scrolls sideways. No CSP violation,
/// no failed request; screenshots kept in target/browser-artifacts/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_the_routes_and_drives_them() {
    let prefix = unique("console");
    let publish_token = "console-publish-token-0123456789";
    let secret_token = "console-secret-token-0123456789";
    let text = format!(
        r#"
[server.console]
path = "/console"

[routes.rooms]
path = "/rooms/{{room}}"
[routes.rooms.backends.bus]
type = "redis"
url = "{REDIS}"
stream = "{prefix}:{{room}}"
allow = "{prefix}:*"
history = 10

[routes.secret]
path = "/secret"
heartbeat = "200ms"
[routes.secret.auth]
type = "bearer"
tokens = ["{secret_token}"]
[routes.secret.backends.clock]
type = "ticker"
interval = "700ms"

[routes.echo]
path = "/echo"
methods = ["POST"]
retry = "200ms"
[routes.echo.backends.words]
type = "demo"
token_pause = "20ms"

[publish.rooms]
path = "/rooms/{{room}}/events"
tokens = ["{publish_token}"]
[publish.rooms.target]
type = "redis"
url = "{REDIS}"
stream = "{prefix}:{{room}}"
allow = "{prefix}:*"
"#
    );
    let config = gateway::config::load(
        gateway::config::Source::Text {
            origin: "console test",
            text: &text,
        },
        Some(std::collections::HashMap::new()),
    )
    .expect("the config");
    let server = gateway_tests::TestServer::from_config(&config).await;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact folder");
    let mut driver = Driver::start(
        "console.mjs",
        &json!({
            "console": server.url("/console"),
            "secret": server.url("/secret"),
            "echo": server.url("/echo"),
            "room": "lobby",
            "token": publish_token,
            "secret_token": secret_token,
            "artifacts": artifacts,
            "timeout_ms": 60000,
        }),
    );
    let result = driver.next(Duration::from_secs(65)).await;
    let r = &result["result"];
    assert_eq!(r["problems"], json!([]), "{r}");
    let index = &r["index"];
    assert_eq!(index["status"], 200);
    assert_eq!(index["csp"], gateway::console::policy());
    assert_eq!(
        index["routes"],
        json!(["echo", "rooms", "secret"]),
        "{index}"
    );
    let text = index["text"].as_str().expect("the page's text");
    for secret in [publish_token, secret_token, "redis://"] {
        assert!(!text.contains(secret), "the console shows {secret}");
    }
    assert!(
        r["published"]
            .as_str()
            .unwrap_or_default()
            .starts_with("201 {\"id\":"),
        "{r}"
    );
    let room = &r["room"];
    assert!(
        room["url"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/rooms/lobby"),
        "{room}"
    );
    assert_eq!(room["first"][2], "message", "{room}");
    assert!(
        room["first"][4]
            .as_str()
            .unwrap_or_default()
            .contains("from the console")
    );
    assert_eq!(r["filtered_out"], 0);
    assert_eq!(r["filtered_in"], 1);
    assert!(
        r["pretty"]
            .as_str()
            .unwrap_or_default()
            .contains("\n  \"text\""),
        "{r}"
    );
    assert_eq!(r["clipboard"], "{\n  \"text\": \"from the console\"\n}");
    // Started after the one event there is: nothing more to show.
    assert_eq!(r["from_id"]["rows_after"], 1, "{r}");
    assert_eq!(r["secret_before"]["state"], "idle");
    assert_eq!(r["secret_before"]["token_shown"], true);
    let after = &r["secret_after"];
    assert_eq!(after["state"], "open", "{after}");
    assert_ne!(after["request_id"], "–", "{after}");
    assert_eq!(after["format"], "text/event-stream");
    assert!(after["beats"].as_u64() >= Some(1), "{after}");
    assert_eq!(r["echo_before"]["body_shown"], true);
    let tokens = r["echo"]["tokens"].to_string();
    assert!(tokens.contains("there"), "{tokens}");
    assert!(r["phone"]["index_width"].as_f64() <= Some(390.0), "{r}");
    assert!(r["phone"]["viewer_width"].as_f64() <= Some(390.0), "{r}");
    assert_eq!(r["dark"], "rgb(21, 23, 26)", "the dark scheme's background");
    for shot in [
        "console.png",
        "console-390px.png",
        "viewer-controls.png",
        "viewer-dark-390px.png",
    ] {
        assert!(artifacts.join(shot).exists(), "{shot}");
    }
}
