//! The `gateway` binary on Lambda, end to end, without AWS: behind a Function
//! URL and Runtime API emulator (`support/lambda_emulator.rs`), under the
//! real Lambda Web Adapter of each release line in
//! `deploy/lambda-adapter-versions` (0.9.1 and 1.0.0-rc1) with the settings
//! of `deploy/Dockerfile`, and in native mode.
//!
//! Each test runs in every mode and proves, through the Function URL: status
//! and headers pass, events arrive one by one (in separate reads, in
//! streaming mode), a POST body reaches the backend, an empty 204 ends,
//! SIGTERM ends the stream with its final event, and streams end before the
//! invocation's deadline with an id to resume from.
//!
//! Every wait is bounded by a timeout; nothing sleeps to synchronise.

#![cfg(unix)]

#[path = "support/lambda_emulator.rs"]
mod lambda_emulator;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lambda_emulator::{Emulator, Record};
use serde_json::Value;
use tokio::process::{Child, Command};

/// Longest any start-up or exchange may take (debug builds on a loaded CI
/// machine; each takes milliseconds).
const TIMEOUT: Duration = Duration::from_secs(30);

/// The routes the tests use: the reference stream, an endless ticker.
const CONFIG: &str = r#"
[routes.reference]
path = "/"
[routes.reference.response_headers]
X-AggregateInfo-Result = "OK"
[routes.reference.backends.demo]
type = "demo"

[routes.ticks]
path = "/ticks"
[routes.ticks.backends.clock]
type = "ticker"
interval = "20ms"
"#;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// The real Lambda Web Adapter, of this release, in front of the
    /// gateway's HTTP server.
    Adapter(String),
    /// The gateway's own Runtime API client.
    Native,
}

/// Every adapter release line the image may pin, then native mode.
fn modes() -> Vec<Mode> {
    let versions = include_str!("../../deploy/lambda-adapter-versions");
    let mut modes: Vec<Mode> = versions
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|v| Mode::Adapter(v.to_string()))
        .collect();
    assert!(
        modes.len() >= 2,
        "deploy/lambda-adapter-versions: {modes:?}"
    );
    modes.push(Mode::Native);
    modes
}

/// A function: the emulator, the gateway, and in adapter mode the adapter.
struct Function {
    emulator: Emulator,
    gateway: Child,
    _adapter: Option<Child>,
    _config: tempfile::NamedTempFile,
    client: reqwest::Client,
}

impl Function {
    async fn start(mode: &Mode, function_timeout: Duration, env: &[(&str, &str)]) -> Self {
        let emulator = Emulator::start(function_timeout).await;
        let mut config = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("config file");
        std::io::Write::write_all(&mut config, CONFIG.as_bytes()).expect("write config");

        let mut vars = emulator.lambda_env();
        vars.push(("GATEWAY_CONFIG".into(), config.path().display().to_string()));
        vars.push(("RUST_LOG".into(), "info".into()));
        vars.push(("NO_COLOR".into(), "1".into()));
        let mut adapter = None;
        if let Mode::Adapter(_) = mode {
            vars.extend(dockerfile_env());
            // The gateway picks a free port itself and the adapter is told
            // it: a port chosen here and released could be taken by another
            // socket before the gateway binds it.
            vars.push(("GATEWAY__SERVER__HOST".into(), "127.0.0.1".into()));
            vars.push(("GATEWAY__SERVER__PORT".into(), "0".into()));
        }
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));

        let mut gateway = process(env!("CARGO_BIN_EXE_gateway"), &vars);
        if let Mode::Adapter(_) = mode {
            gateway.stderr(Stdio::piped());
        }
        let mut gateway = gateway.spawn().expect("start the gateway");
        if let Mode::Adapter(version) = mode {
            let port = listening_port(&mut gateway).await;
            vars.push(("AWS_LWA_PORT".into(), port.to_string()));
            // Lambda starts the extension beside the function's process.
            adapter = Some(
                process(&adapter_binary(version), &vars)
                    .spawn()
                    .unwrap_or_else(|e| panic!("start lambda-adapter {version}: {e}")),
            );
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("client");
        Self {
            emulator,
            gateway,
            _adapter: adapter,
            _config: config,
            client,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.emulator.url)
    }

    /// The last invocation's record, once its response has ended.
    async fn last_record(&self) -> Record {
        within(self.emulator.finished_last()).await
    }

    /// Sends SIGTERM to the gateway, as Lambda does at shutdown.
    async fn terminate(&self) {
        let pid = self.gateway.id().expect("gateway running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
    }
}

/// A command with exactly `vars` over a cleaned environment (no inherited
/// `GATEWAY…`, `AWS_…` variables), killed when dropped. Its logs show with
/// `TEST_LOGS=1`.
fn process(program: &str, vars: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars() {
        if name.starts_with("GATEWAY") || name.starts_with("AWS_") {
            cmd.env_remove(&name);
        }
    }
    let logs = std::env::var_os("TEST_LOGS").is_some();
    cmd.envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(if logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(if logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    cmd
}

/// `deploy/Dockerfile`'s `ENV KEY=VALUE` lines: the image's settings.
fn dockerfile_env() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("read deploy/Dockerfile");
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ENV "))
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |key: &str| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(
        get("AWS_LWA_INVOKE_MODE"),
        Some("response_stream"),
        "{vars:?}"
    );
    assert_eq!(get("AWS_LWA_READINESS_CHECK_PATH"), Some("/healthz"));
    vars
}

/// The Lambda Web Adapter binary of `version`:
/// `$LAMBDA_ADAPTERS/VERSION/bin/lambda-adapter`, where `$LAMBDA_ADAPTERS`
/// defaults to `~/.local/share/lambda-adapter` (`.ci/run` installs each
/// version there with `cargo install --root`).
fn adapter_binary(version: &str) -> String {
    let root = std::env::var_os("LAMBDA_ADAPTERS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/lambda-adapter"))
        })
        .expect("HOME or LAMBDA_ADAPTERS is set");
    let binary = root.join(version).join("bin/lambda-adapter");
    assert!(
        binary.is_file(),
        "{} not found: install it with `cargo install --locked lambda_web_adapter \
         --version {version} --root {}` (.ci/run does)",
        binary.display(),
        root.join(version).display()
    );
    binary.display().to_string()
}

/// The port from the gateway's `Listening on http://127.0.0.1:PORT/` log
/// line (on stderr, piped). The rest of its log keeps being read, and shown
/// with `TEST_LOGS=1`.
async fn listening_port(gateway: &mut Child) -> u16 {
    use tokio::io::{AsyncBufReadExt, BufReader};
    const PREFIX: &str = "Listening on http://";
    let stderr = gateway
        .stderr
        .take()
        .expect("the gateway's stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let port = within(async {
        while let Some(line) = lines.next_line().await.expect("read the gateway's log") {
            if let Some(at) = line.find(PREFIX) {
                let addr = line[at + PREFIX.len()..].split('/').next().unwrap_or("");
                let addr: std::net::SocketAddr = addr
                    .parse()
                    .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                return addr.port();
            }
            seen.push(line);
        }
        panic!(
            "the gateway exited before listening; its log:\n{}",
            seen.join("\n")
        );
    })
    .await;
    let show = std::env::var_os("TEST_LOGS").is_some();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if show {
                eprintln!("{line}");
            }
        }
    });
    port
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("timed out")
}

/// The body's lines, each with the moment it arrived.
async fn timed_lines(response: reqwest::Response) -> Vec<(Instant, String)> {
    let mut lines = Vec::new();
    let mut partial = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = within(body.next()).await {
        let chunk = chunk.expect("body chunk");
        let now = Instant::now();
        partial.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(at) = partial.find('\n') {
            let line: String = partial.drain(..=at).collect();
            lines.push((now, line.trim_end_matches('\n').to_string()));
        }
    }
    assert_eq!(partial, "", "the body ends with a complete line");
    lines
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_reference_stream_arrives_event_by_event_with_its_headers() {
    for mode in modes() {
        let function = Function::start(&mode, TIMEOUT, &[]).await;
        let response = within(
            function
                .client
                .get(function.url("/"))
                .header("x-original-host", "stream.example.com")
                .send(),
        )
        .await
        .expect("request");
        assert_eq!(response.status(), 200, "{mode:?}");
        assert_eq!(header(&response, "content-type"), "application/x-ndjson");
        assert_eq!(header(&response, "x-aggregateinfo-result"), "OK");
        assert_eq!(header(&response, "x-request-host"), "stream.example.com");
        let request_id = header(&response, "x-request-id").to_string();
        let lines = timed_lines(response).await;
        let events: Vec<Value> = lines
            .iter()
            .map(|(_, l)| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(events.len(), 6, "{mode:?}: {lines:?}");
        assert_eq!(events[0]["message"], "streaming begin");
        assert_eq!(events[5]["message"], "done");
        // Streamed, not buffered: the stream takes 1.7 s to produce, and its
        // first event arrived long before its last (a buffered answer
        // brings them together; a slow machine only widens the gap).
        let spread = lines[5].0 - lines[0].0;
        assert!(spread >= Duration::from_secs(1), "{mode:?}: {spread:?}");
        let record = function.last_record().await;
        assert_eq!(record.mode.as_deref(), Some("streaming"), "{mode:?}");
        assert!(record.completed, "{mode:?}: {record:?}");
        assert_eq!(
            request_id, record.id,
            "{mode:?}: the invocation's id names the request"
        );
    }
}

#[tokio::test]
async fn sse_post_bodies_errors_and_empty_answers_pass_through() {
    for mode in modes() {
        let function = Function::start(&mode, TIMEOUT, &[]).await;
        // SSE, and a POST body the backend reads.
        let response = within(
            function
                .client
                .post(function.url("/?format=sse"))
                .body(r#"{"text": "from the body"}"#)
                .send(),
        )
        .await
        .expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        let body = within(response.text()).await.expect("body");
        for token in ["from", "the", "body"] {
            assert!(
                body.contains(&format!("\"token\":\"{token}\"")),
                "{mode:?}: {body}"
            );
        }
        // An error before the stream: its status and JSON body.
        let response = within(function.client.get(function.url("/nowhere")).send())
            .await
            .expect("request");
        assert_eq!(response.status(), 404, "{mode:?}");
        let error: Value = within(response.json()).await.expect("JSON error");
        assert_eq!(error["error"], "not_found");
        // Resuming after the last event: 204, which must end (an empty
        // streamed body hangs where nothing ends it).
        let response = within(
            function
                .client
                .get(function.url("/"))
                .header("last-event-id", "5")
                .send(),
        )
        .await
        .expect("request");
        assert_eq!(response.status(), 204, "{mode:?}");
        assert_eq!(within(response.bytes()).await.expect("body").len(), 0);
        let record = function.last_record().await;
        assert!(record.completed, "{mode:?}: {record:?}");
        // HEAD: a GET's headers, and an end.
        let response = within(function.client.head(function.url("/")).send())
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{mode:?}");
        assert_eq!(header(&response, "content-type"), "application/x-ndjson");
        let record = function.last_record().await;
        assert!(record.completed, "{mode:?}: {record:?}");
    }
}

/// The NDJSON lines of `/ticks` until `stop` says so, then the rest.
async fn ticks_then(function: &Function, after: usize, stop: impl AsyncFnOnce()) -> Vec<Value> {
    let response = within(function.client.get(function.url("/ticks")).send())
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches('\n').count() < after {
        let chunk = within(body.next())
            .await
            .expect("more events")
            .expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
    }
    stop().await;
    while let Some(chunk) = within(body.next()).await {
        text.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("UTF-8"));
    }
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn sigterm_ends_the_stream_with_its_final_event() {
    for mode in modes() {
        let mut function = Function::start(&mode, TIMEOUT, &[]).await;
        let events = ticks_then(&function, 3, || function.terminate()).await;
        let last = events.last().expect("events");
        assert_eq!(last["event"], "gateway.close", "{mode:?}: {events:?}");
        assert_eq!(last["reason"], "shutdown");
        let sent = events.len() - 1;
        let last_tick = &events[sent - 1];
        assert_eq!(
            last["last_event_id"],
            last_tick["seq"].to_string(),
            "{events:?}"
        );
        let record = function.last_record().await;
        assert!(record.completed, "{mode:?}: {record:?}");
        let status = within(function.gateway.wait()).await.expect("exit status");
        assert!(status.success(), "{mode:?}: {status}");
    }
}

#[tokio::test]
async fn streams_end_before_the_invocations_deadline() {
    for mode in modes() {
        // The invocation has 1.5 s; streams end 1 s before it.
        let function = Function::start(
            &mode,
            Duration::from_millis(1500),
            &[("GATEWAY__LAMBDA__DEADLINE_MARGIN", "1s")],
        )
        .await;
        let events = ticks_then(&function, 1, async || {}).await;
        let last = events.last().expect("events");
        assert_eq!(last["event"], "gateway.close", "{mode:?}: {events:?}");
        assert_eq!(last["reason"], "lifetime", "{mode:?}");
        assert!(last["last_event_id"].is_string(), "{last}");
        let record = function.last_record().await;
        assert!(record.completed, "{mode:?}: {record:?}");
        assert_eq!(record.error, None);
    }
}

/// Lambda cuts a streamed response at 200 MB without a word: the gateway
/// ends it first, within `lambda.max_response_bytes` (here 4 KiB), with
/// `gateway.close` (`response_cap`) and its last id, and the next
/// invocation resumes right after it.
#[tokio::test]
async fn streams_end_within_the_response_byte_cap() {
    const CAP: usize = 4096;
    for mode in modes() {
        let function = Function::start(
            &mode,
            TIMEOUT,
            &[("GATEWAY__LAMBDA__MAX_RESPONSE_BYTES", &CAP.to_string())],
        )
        .await;
        let response = within(function.client.get(function.url("/ticks")).send())
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{mode:?}");
        let body = within(response.bytes()).await.expect("the whole body");
        assert!(body.len() <= CAP, "{mode:?}: {} bytes", body.len());
        assert!(body.len() > CAP / 2, "{mode:?}: {} bytes", body.len());
        let events: Vec<Value> = std::str::from_utf8(&body)
            .expect("UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let (last, ticks) = events.split_last().expect("events");
        assert_eq!(last["event"], "gateway.close", "{mode:?}: {events:?}");
        assert_eq!(last["reason"], "response_cap", "{mode:?}");
        let last_tick = ticks.last().expect("ticks")["seq"].as_u64().expect("a seq");
        assert_eq!(last["last_event_id"], last_tick.to_string(), "{mode:?}");
        let record = function.last_record().await;
        assert!(record.completed, "{mode:?}: {record:?}");
        // A fresh invocation resumes right after it.
        let response = within(
            function
                .client
                .get(function.url("/ticks"))
                .header("last-event-id", last_tick.to_string())
                .send(),
        )
        .await
        .expect("request");
        let mut body = response.bytes_stream();
        let first = within(body.next()).await.expect("an event").expect("chunk");
        let first: Value =
            serde_json::from_slice(first.split(|&b| b == b'\n').next().expect("a line"))
                .expect("JSON");
        assert_eq!(first["seq"].as_u64(), Some(last_tick + 1), "{mode:?}");
    }
}

/// Lambda sends SIGTERM only to environments with an extension: the adapter
/// is one, and native mode registers its own.
#[tokio::test]
async fn each_mode_registers_an_extension_so_lambda_sends_sigterm() {
    for mode in modes() {
        let extension = match mode {
            Mode::Adapter(_) => "lambda-adapter",
            Mode::Native => gateway::lambda::EXTENSION_NAME,
        };
        let function = Function::start(&mode, TIMEOUT, &[]).await;
        within(function.client.get(function.url("/nowhere")).send())
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(function.emulator.extensions(), [extension], "{mode:?}");
    }
}

/// Cold start: from starting the function's processes to the first byte of
/// `/` through the Function URL, in each mode (median of 20). A measurement,
/// not a test:
/// `cargo test --release -p gateway --test lambda -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement: run it with --ignored --nocapture"]
async fn measure_cold_start() {
    const RUNS: usize = 20;
    for mode in modes() {
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let started = std::time::Instant::now();
            let function = Function::start(&mode, TIMEOUT, &[]).await;
            let response = within(function.client.get(function.url("/")).send())
                .await
                .expect("request");
            let mut body = response.bytes_stream();
            within(body.next())
                .await
                .expect("a first chunk")
                .expect("chunk");
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "{mode:?}: cold start to first byte: median {:?}, min {:?}, max {:?} ({RUNS} runs)",
            times[RUNS / 2],
            times[0],
            times[RUNS - 1]
        );
    }
}
