//! Black-box tests of the `gateway` binary: its exit statuses and messages
//! for bad configs, `check-config`, the environment overrides, and graceful
//! shutdown on SIGTERM, over real HTTP on 127.0.0.1.
//!
//! Every wait is bounded: the binary's stderr is read line by line on a thread
//! and waited for with a timeout, its exit is watched by another thread, and
//! every socket read has a deadline. Nothing sleeps to synchronise.

#![cfg(unix)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Longest a config check or a start-up may take (a debug build on a loaded
/// CI machine; it takes milliseconds).
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest any one exchange over HTTP may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound asserted between SIGTERM and the process's exit. The gateway's
/// own bound is about 250 ms (the final events go out at once, then at most
/// `shutdown_grace`, 200 ms); the assert is generous so that a loaded CI
/// machine does not make it flaky, while a gateway that hangs still fails.
const EXIT_BOUND: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Running the binary

/// The binary with a clean environment for its own variables: no inherited
/// `GATEWAY…` variable, plain logs at `info`.
fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GATEWAY") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
    cmd
}

/// A running `gateway`, killed if the test ends before it exits.
struct Process {
    child: Arc<Mutex<Child>>,
    pid: u32,
    /// Lines of stderr, ANSI codes stripped, as they come.
    lines: Receiver<String>,
    /// Every stderr line received so far.
    seen: Vec<String>,
    /// The exit status and when the watcher saw it (within a millisecond).
    exit: Receiver<(ExitStatus, Instant)>,
    stdout: Option<JoinHandle<String>>,
}

impl Process {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let child = Arc::new(Mutex::new(child));
        let (exit_tx, exit) = mpsc::channel();
        let watched = Arc::clone(&child);
        // Polls rather than blocks in `wait`, so that `Drop` can still kill.
        thread::spawn(move || {
            loop {
                let status = watched.lock().expect("child lock").try_wait();
                match status {
                    Ok(Some(status)) => {
                        let _ = exit_tx.send((status, Instant::now()));
                        return;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(1)),
                    Err(_) => return,
                }
            }
        });
        Self {
            child,
            pid,
            lines,
            seen: Vec::new(),
            exit,
            stdout: Some(stdout),
        }
    }

    /// Waits for a stderr line that satisfies `wanted` and returns it.
    fn wait_for_line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no stderr line {what} within {PROCESS_TIMEOUT:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "stderr closed before a line {what}; stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The port from the `Listening on http://127.0.0.1:PORT/` line.
    fn port(&mut self) -> u16 {
        const PREFIX: &str = "Listening on http://";
        let line = self.wait_for_line("saying where it listens", |l| l.contains(PREFIX));
        let rest = &line[line.find(PREFIX).expect("prefix") + PREFIX.len()..];
        let addr = rest.split('/').next().expect("address");
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"));
        assert!(addr.ip().is_loopback(), "{line}");
        assert_ne!(addr.port(), 0, "{line}");
        addr.port()
    }

    /// Sends SIGTERM; returns the moment just before it was sent.
    fn terminate(&self) -> Instant {
        self.signal("TERM")
    }

    /// Sends a signal (`TERM`, `INT`) with `kill`; returns the moment just
    /// before it was sent.
    fn signal(&self, name: &str) -> Instant {
        let sent = Instant::now();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid
        );
        sent
    }

    /// Waits for the process to exit; returns its status and when it exited.
    fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Instant) {
        match self.exit.recv_timeout(timeout) {
            Ok(exit) => exit,
            Err(_) => {
                let stderr = self.stderr_so_far();
                panic!("the gateway did not exit within {timeout:?}; stderr:\n{stderr}")
            }
        }
    }

    /// Every stderr line that has come so far, without waiting.
    fn stderr_so_far(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// After the exit: all of stderr and stdout.
    fn output(&mut self) -> (String, String) {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stderr still open after the exit"),
            }
        }
        let stdout = self
            .stdout
            .take()
            .expect("output taken once")
            .join()
            .expect("stdout reader");
        (self.seen.join("\n"), stdout)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What a run to completion left.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary to its end (bounded).
fn run_to_end(cmd: Command) -> Finished {
    let mut process = Process::spawn(cmd);
    let (status, _) = process.wait_exit(PROCESS_TIMEOUT);
    let (stderr, stdout) = process.output();
    Finished {
        status,
        stdout,
        stderr,
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters… final byte in @..=~
        if chars.next_if_eq(&'[').is_some() {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

fn write_file(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write config file");
    path
}

/// The problem lines of an `invalid configuration` message.
fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect()
}

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client over a blocking socket, every read with a deadline

struct Response {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    sock: TcpStream,
    /// Bytes read from the socket and not yet consumed.
    buf: Vec<u8>,
    body: BodyState,
}

enum BodyState {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length`: this much is left.
    Length(usize),
    /// Until the connection closes.
    UntilClose,
    Done,
}

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    sock.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    sock.write_all(request.as_bytes())
        .expect("send the request");
    let mut response = Response {
        status: 0,
        headers: Vec::new(),
        sock,
        buf: Vec::new(),
        body: BodyState::UntilClose,
    };
    let end = loop {
        if let Some(i) = find(&response.buf, b"\r\n\r\n") {
            break i;
        }
        assert!(
            response.fill(deadline, 8192),
            "connection closed before the response head"
        );
    };
    let head = String::from_utf8(response.buf.drain(..end + 4).collect()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    response.status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').expect("header line");
        response
            .headers
            .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    response.body = if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        BodyState::Chunked
    } else if let Some(length) = response.header("content-length") {
        BodyState::Length(length.parse().expect("Content-Length"))
    } else {
        BodyState::UntilClose
    };
    response
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads up to `max` more bytes into `buf`; false at end of stream.
    fn fill(&mut self, deadline: Instant, max: usize) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "HTTP read timed out");
        self.sock
            .set_read_timeout(Some(left))
            .expect("read timeout");
        let mut chunk = vec![0; max];
        match self.sock.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("HTTP read timed out")
            }
            // A signal (another test's child exiting) cut the read short.
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(e) => panic!("HTTP read failed: {e}"),
        }
    }

    /// The next piece of the body, or `None` once it ended properly (the
    /// last chunk, or all of `Content-Length`). A connection that closes
    /// before that fails the test.
    fn next_body(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        match self.body {
            BodyState::Done => None,
            BodyState::Length(0) => {
                self.body = BodyState::Done;
                None
            }
            BodyState::Length(left) => {
                if self.buf.is_empty() {
                    assert!(self.fill(deadline, left.min(65536)), "body cut short");
                }
                let n = left.min(self.buf.len());
                self.body = BodyState::Length(left - n);
                Some(self.buf.drain(..n).collect())
            }
            BodyState::UntilClose => {
                if self.buf.is_empty() && !self.fill(deadline, 65536) {
                    self.body = BodyState::Done;
                    return None;
                }
                Some(std::mem::take(&mut self.buf))
            }
            BodyState::Chunked => {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    assert!(
                        self.fill(deadline, 65536),
                        "connection closed inside a chunked body (no last chunk)"
                    );
                };
                let size_line =
                    String::from_utf8(self.buf[..line_end].to_vec()).expect("chunk size line");
                let hex = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // The last chunk; no trailers expected.
                    while self.buf.len() < line_end + 4 {
                        assert!(
                            self.fill(deadline, 64),
                            "connection closed inside the last chunk"
                        );
                    }
                    assert_eq!(&self.buf[line_end..line_end + 4], b"\r\n\r\n");
                    self.buf.drain(..line_end + 4);
                    self.body = BodyState::Done;
                    return None;
                }
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(
                        self.fill(deadline, 65536),
                        "connection closed inside a chunk"
                    );
                }
                let data = self.buf[line_end + 2..line_end + 2 + size].to_vec();
                assert_eq!(&self.buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
                self.buf.drain(..line_end + 4 + size);
                Some(data)
            }
        }
    }

    fn body_to_end(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut body = Vec::new();
        while let Some(piece) = self.next_body(deadline) {
            body.extend_from_slice(&piece);
        }
        body
    }

    /// After the body: the server closes the connection, sending nothing more.
    fn expect_closed(&mut self, deadline: Instant) {
        assert!(self.buf.is_empty(), "bytes after the body: {:?}", self.buf);
        let more = self.fill(deadline, 4096);
        assert!(
            !more,
            "bytes after the body: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// One SSE event (a block of fields); comments are left out.
#[derive(Clone, Debug, Default)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<String>,
}

impl SseEvent {
    fn data_json(&self) -> Value {
        let data = self.data.as_deref().expect("event with data");
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data {data:?} is not JSON: {e}"))
    }
}

/// Reads an SSE body event by event.
struct SseReader {
    response: Response,
    text: String,
    ended: bool,
}

impl SseReader {
    /// The next event, or `None` when the body ended (after its last event).
    fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        loop {
            if let Some(i) = self.text.find("\n\n") {
                let block: String = self.text.drain(..i + 2).collect();
                if let Some(event) = parse_sse_block(&block) {
                    return Some(event);
                }
                continue;
            }
            if self.ended {
                assert!(
                    self.text.is_empty(),
                    "SSE body ended inside an event: {:?}",
                    self.text
                );
                return None;
            }
            match self.response.next_body(deadline) {
                Some(bytes) => self
                    .text
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8 SSE")),
                None => self.ended = true,
            }
        }
    }
}

fn parse_sse_block(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut any = false;
    for line in block
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(':'))
    {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        any = true;
        match field {
            "id" => event.id = Some(value),
            "event" => event.event = Some(value),
            "retry" => event.retry = Some(value),
            "data" => {
                event.data = Some(match event.data.take() {
                    Some(before) => format!("{before}\n{value}"),
                    None => value,
                });
            }
            other => panic!("unknown SSE field {other:?} in {block:?}"),
        }
    }
    any.then_some(event)
}

// ---------------------------------------------------------------------------
// Configs

const TICKER_YAML: &str = "\
server:
  port: 0
routes:
  ticks:
    path: /ticks/{room}
    methods: [GET]
    backends:
      clock:
        type: ticker
        interval: 250ms
";

const TWO_ROUTES_JSON: &str = r#"{
  "server": { "port": 0, "shutdown_grace": "100ms" },
  "routes": {
    "jobs": {
      "path": "/jobs/{id}",
      "methods": ["POST"],
      "backends": { "progress": { "type": "ticker", "interval": "500ms", "count": 20 } }
    },
    "reference": {
      "path": "/",
      "backends": { "demo": { "type": "demo" } }
    }
  }
}"#;

const TICKS_TOML: &str = r#"
[server]
port = 0

[routes.ticks]
path = "/ticks"

[routes.ticks.backends.t]
type = "ticker"
interval = "100ms"
"#;

/// Five mistakes: two in one table, the others each in its own.
const FIVE_MISTAKES_TOML: &str = r#"
[server]
port = "abc"
log_format = "xml"

[routes.api]
path = "/api"
colour = "red"

[routes.api.backends.t]
type = "ticker"
interval = "soon"

[routes.api.backends.k]
type = "kafka"
"#;

// ---------------------------------------------------------------------------
// Config problems

#[test]
fn every_config_mistake_is_reported_in_one_run() {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(&dir, "gateway.toml", FIVE_MISTAKES_TOML);
    let mut cmd = gateway();
    cmd.arg("--config").arg(&path);
    let run = run_to_end(cmd);

    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(!run.stderr.contains("Listening"), "{run:?}");
    assert!(
        run.stderr.contains("invalid configuration (5 problems)"),
        "{run:?}"
    );
    let problems = problem_lines(&run.stderr);
    assert_eq!(problems.len(), 5, "{run:?}");
    let file = path.display().to_string();
    // Each key with a reason that names the offending value or key.
    for (key, detail) in [
        ("server.port", "\"abc\""),
        ("server.log_format", "\"xml\""),
        ("routes.api.colour", "unknown field `colour`"),
        ("routes.api.backends.t.interval", "\"soon\""),
        ("routes.api.backends.k.type", "\"kafka\""),
    ] {
        let prefix = format!("{file}: {key}: ");
        let line = problems
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no problem line for {key}; stderr:\n{}", run.stderr));
        let reason = &line[prefix.len()..];
        assert!(reason.contains(detail), "{key}: reason {reason:?}");
    }
}

#[test]
fn conflicting_route_paths_are_reported() {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(
        &dir,
        "conflict.toml",
        r#"
[routes.a]
path = "/x/{id}"
[routes.a.backends.t]
type = "ticker"
[routes.b]
path = "/x/{other}"
[routes.b.backends.t]
type = "ticker"
"#,
    );
    let mut cmd = gateway();
    cmd.arg("--config").arg(&path);
    let run = run_to_end(cmd);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let problems = problem_lines(&run.stderr);
    let expected = format!("{}: routes.b.path: conflicts with", path.display());
    assert!(
        problems.len() == 1 && problems[0].starts_with(&expected),
        "{run:?}"
    );
    assert!(problems[0].contains("/x/{id}"), "{run:?}");
}

#[test]
fn a_problem_from_the_environment_names_the_variable() {
    let mut cmd = gateway();
    cmd.env("GATEWAY__SERVER__SHUTDOWN_GRACE", "soon");
    let run = run_to_end(cmd);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let problems = problem_lines(&run.stderr);
    assert_eq!(problems.len(), 1, "{run:?}");
    assert!(
        problems[0].starts_with(
            "environment variable GATEWAY__SERVER__SHUTDOWN_GRACE: server.shutdown_grace: "
        ),
        "{run:?}"
    );
    assert!(problems[0].contains("\"soon\""), "{run:?}");
}

#[test]
fn file_and_environment_problems_each_name_their_origin() {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(
        &dir,
        "gateway.yaml",
        "routes:\n  api:\n    path: /api\n    heartbeat: often\n    backends:\n      t:\n        type: ticker\n",
    );
    let mut cmd = gateway();
    cmd.env("GATEWAY_CONFIG", &path)
        .env("GATEWAY__SERVER__MAX_STREAMS", "0");
    let run = run_to_end(cmd);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let problems = problem_lines(&run.stderr);
    assert_eq!(problems.len(), 2, "{run:?}");
    let file_line = format!("{}: routes.api.heartbeat: ", path.display());
    assert!(
        problems.iter().any(|l| l.starts_with(&file_line)),
        "{run:?}"
    );
    assert!(
        problems.iter().any(|l| l.starts_with(
            "environment variable GATEWAY__SERVER__MAX_STREAMS: server.max_streams: "
        )),
        "{run:?}"
    );
}

// ---------------------------------------------------------------------------
// check-config

fn check_config(path: Option<&Path>) -> Finished {
    let mut cmd = gateway();
    cmd.arg("check-config");
    if let Some(path) = path {
        cmd.arg(path);
    }
    run_to_end(cmd)
}

#[test]
fn check_config_accepts_valid_toml_yaml_and_json() {
    let dir = TempDir::new().expect("temp dir");
    for (name, contents, routes) in [
        ("gateway.toml", TICKS_TOML, "1 route"),
        ("gateway.yaml", TICKER_YAML, "1 route"),
        ("gateway.yml", TICKER_YAML, "1 route"),
        ("gateway.json", TWO_ROUTES_JSON, "2 routes"),
    ] {
        let path = write_file(&dir, name, contents);
        let run = check_config(Some(&path));
        assert_eq!(run.status.code(), Some(0), "{name}: {run:?}");
        assert_eq!(
            run.stdout.trim_end(),
            format!("{}: ok ({routes})", path.display()),
            "{name}: {run:?}"
        );
    }
}

#[test]
fn check_config_without_a_path_checks_the_built_in_config() {
    let run = check_config(None);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(
        run.stdout.trim_end(),
        "built-in default config: ok (1 route)",
        "{run:?}"
    );
}

#[test]
fn check_config_refuses_an_invalid_config() {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(&dir, "gateway.toml", FIVE_MISTAKES_TOML);
    let run = check_config(Some(&path));
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(!run.stdout.contains("ok"), "{run:?}");
    assert_eq!(problem_lines(&run.stderr).len(), 5, "{run:?}");

    // Also when the path comes from GATEWAY_CONFIG.
    let mut cmd = gateway();
    cmd.arg("check-config").env("GATEWAY_CONFIG", &path);
    let run = run_to_end(cmd);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert_eq!(problem_lines(&run.stderr).len(), 5, "{run:?}");
}

#[test]
fn check_config_refuses_a_missing_file() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("missing.toml");
    let run = check_config(Some(&path));
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let problems = problem_lines(&run.stderr);
    assert_eq!(problems.len(), 1, "{run:?}");
    assert!(
        problems[0].starts_with(&format!("{}: cannot read", path.display())),
        "{run:?}"
    );
}

#[test]
fn check_config_refuses_an_unsupported_extension() {
    let dir = TempDir::new().expect("temp dir");
    // Valid TOML, but the extension does not say so.
    let path = write_file(&dir, "gateway.ini", TICKS_TOML);
    let run = check_config(Some(&path));
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let problems = problem_lines(&run.stderr);
    assert_eq!(problems.len(), 1, "{run:?}");
    assert!(
        problems[0].starts_with(&format!("{}: ", path.display())),
        "{run:?}"
    );
    assert!(problems[0].contains(".toml"), "{run:?}");
}

// ---------------------------------------------------------------------------
// Serving

#[test]
fn port_and_config_come_from_the_environment() {
    let dir = TempDir::new().expect("temp dir");
    // The file asks for a port that is taken: only the environment's port 0
    // lets the gateway start.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("local addr").port();
    let path = write_file(
        &dir,
        "gateway.toml",
        &format!(
            "[server]\nport = {taken_port}\n\n[routes.counted]\npath = \"/from-file\"\n\n\
             [routes.counted.backends.t]\ntype = \"ticker\"\ninterval = \"0s\"\ncount = 2\n"
        ),
    );
    let mut cmd = gateway();
    cmd.env("GATEWAY_CONFIG", &path)
        .env("GATEWAY__SERVER__PORT", "0");
    let mut process = Process::spawn(cmd);
    let port = process.port();
    assert_ne!(port, taken_port);

    let mut health = get(port, "/healthz", &[("Connection", "close")]);
    assert_eq!(health.status, 200);
    assert!(
        health
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        health.headers
    );
    let body: Value = serde_json::from_slice(&health.body_to_end()).expect("JSON health");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["open_streams"], 0, "{body}");

    // The route only the file has.
    let mut stream = get(
        port,
        "/from-file",
        &[("Accept", "application/x-ndjson"), ("Connection", "close")],
    );
    assert_eq!(stream.status, 200);
    let body = String::from_utf8(stream.body_to_end()).expect("UTF-8");
    let seqs: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("NDJSON line")["seq"].clone())
        .collect();
    assert_eq!(seqs, [1, 2], "{body}");
}

#[test]
fn a_stream_logs_its_end_with_its_request_id() {
    let mut cmd = gateway();
    cmd.env("GATEWAY__SERVER__PORT", "0");
    let mut process = Process::spawn(cmd);
    let port = process.port();
    let mut stream = get(
        port,
        "/?format=ndjson",
        &[("X-Request-Id", "req-logged-7"), ("Connection", "close")],
    );
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("x-request-id"), Some("req-logged-7"));
    stream.body_to_end();
    let line = process.wait_for_line("the stream's end", |l| l.contains("Stream ended"));
    assert!(line.contains("req-logged-7"), "{line}");
    assert!(
        line.contains("reason=\"complete\"") || line.contains("reason=complete"),
        "{line}"
    );
}

/// A request refused (404, 406, 401…) leaves a log line with its id, its
/// status, what it asked and why: an operator can answer "why did my
/// client get 404?" from the log.
#[test]
fn a_refused_request_logs_its_status_and_reason() {
    let mut cmd = gateway();
    cmd.env("GATEWAY__SERVER__PORT", "0");
    let mut process = Process::spawn(cmd);
    let port = process.port();
    let missing = get(
        port,
        "/nowhere",
        &[("X-Request-Id", "req-refused-404"), ("Connection", "close")],
    );
    assert_eq!(missing.status, 404);
    let line = process.wait_for_line("the 404's log line", |l| l.contains("req-refused-404"));
    assert!(line.contains("Request refused"), "{line}");
    assert!(line.contains("404") && line.contains("/nowhere"), "{line}");
    let refused = get(
        port,
        "/",
        &[
            ("X-Request-Id", "req-refused-406"),
            ("Accept", "image/png"),
            ("Connection", "close"),
        ],
    );
    assert_eq!(refused.status, 406);
    let line = process.wait_for_line("the 406's log line", |l| l.contains("req-refused-406"));
    assert!(line.contains("406"), "{line}");
}

/// Logs to anything but a terminal (a file, a pipe to a shipper) carry no
/// ANSI colour codes, even without `NO_COLOR`.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("gateway.log");
    let file = std::fs::File::create(&path).expect("the log file");
    let mut cmd = gateway();
    cmd.env_remove("NO_COLOR").env("GATEWAY__SERVER__PORT", "0");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start the gateway binary");
    let started = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains("Listening") || started.elapsed() > PROCESS_TIMEOUT {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("Listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a file: {log:?}");
}

/// `config/examples/jwt-rooms.toml` as its comment says: a secret in the
/// environment, `gateway token` for a development token, the room it lists
/// readable (200), another refused (403), no token 401. Errors of
/// `gateway token` are named.
#[test]
fn the_jwt_example_runs_with_a_token_from_gateway_token() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/jwt-rooms.toml");
    let example = example.display().to_string();
    let secret = "a-secret-for-this-test-of-32-bytes-at-least";
    let mut token = gateway();
    token
        .env("JWT_SECRET", secret)
        .args(["--config", &example, "token", "rooms", "--claims"])
        .arg(r#"{"rooms": ["lobby", "team-*"]}"#);
    let minted = run_to_end(token);
    assert!(minted.status.success(), "{minted:?}");
    let token = minted.stdout.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let mut cmd = gateway();
    cmd.env("JWT_SECRET", secret)
        .env("GATEWAY__SERVER__PORT", "0")
        .args(["--config", &example]);
    let mut process = Process::spawn(cmd);
    let port = process.port();
    let bearer = format!("Bearer {token}");
    let lobby = get(
        port,
        "/rooms/lobby",
        &[("Authorization", &bearer), ("Accept", "text/event-stream")],
    );
    assert_eq!(lobby.status, 200);
    let other = get(
        port,
        "/rooms/other",
        &[("Authorization", &bearer), ("Connection", "close")],
    );
    assert_eq!(other.status, 403);
    let anonymous = get(port, "/rooms/lobby", &[("Connection", "close")]);
    assert_eq!(anonymous.status, 401);

    // What cannot be minted says why.
    let mut token = gateway();
    token
        .env("JWT_SECRET", secret)
        .args(["--config", &example, "token", "nowhere"]);
    let refused = run_to_end(token);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("no route \"nowhere\""),
        "{refused:?}"
    );
    let mut token = gateway();
    token.args(["token", "reference"]);
    let refused = run_to_end(token);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("asks for no credential"),
        "{refused:?}"
    );
}

/// `config/examples/metrics.toml` as its comment says (the private
/// listener on a free port here): the metrics on both, the public path only
/// to the token.
#[test]
fn the_metrics_example_runs_as_written() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/metrics.toml");
    let token = "metrics-token-for-this-test-0123";
    let mut cmd = gateway();
    cmd.env("METRICS_TOKEN", token)
        .env("GATEWAY__SERVER__PORT", "0")
        .env("GATEWAY__SERVER__METRICS__LISTEN", "127.0.0.1:0")
        .args(["--config", &example.display().to_string()]);
    let mut process = Process::spawn(cmd);
    let line = process.wait_for_line("the metrics listener", |l| l.contains("Metrics on http://"));
    let private: SocketAddr = line
        .split("Metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let port = process.port();
    let mut scraped = get(private.port(), "/metrics", &[("Connection", "close")]);
    assert_eq!(scraped.status, 200);
    let body = String::from_utf8_lossy(&scraped.body_to_end()).into_owned();
    assert!(body.contains("# TYPE gateway_"), "{body}");
    let bearer = format!("Bearer {token}");
    let public = get(
        port,
        "/metrics",
        &[("Authorization", &bearer), ("Connection", "close")],
    );
    assert_eq!(public.status, 200);
    let anonymous = get(port, "/metrics", &[("Connection", "close")]);
    assert_eq!(anonymous.status, 401);
}

#[test]
fn a_port_in_use_fails_with_status_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("local addr").port();
    let mut cmd = gateway();
    cmd.env("GATEWAY__SERVER__PORT", taken_port.to_string());
    let run = run_to_end(cmd);
    // Not a config problem (2): the config is fine, the machine is not.
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot listen on 127.0.0.1:{taken_port}")),
        "{run:?}"
    );
    drop(taken);
}

#[test]
fn sigint_without_open_streams_exits_at_once() {
    let mut cmd = gateway();
    cmd.env("GATEWAY__SERVER__PORT", "0");
    let mut process = Process::spawn(cmd);
    let port = process.port();
    assert_eq!(
        get(port, "/healthz", &[("Connection", "close")]).status,
        200
    );

    let signalled = process.signal("INT");
    let (status, exited) = process.wait_exit(IO_TIMEOUT);
    let exit_time = exited.saturating_duration_since(signalled);
    eprintln!("Shutdown without streams (SIGINT): exited {exit_time:?} after the signal");
    assert!(status.success(), "exit status {status}");
    assert!(
        exit_time < EXIT_BOUND,
        "exited {exit_time:?} after SIGINT; the bound is {EXIT_BOUND:?}"
    );
    // No connection to wait for: the grace was not needed.
    let (stderr, _) = process.output();
    assert!(!stderr.contains("shutdown grace"), "{stderr}");
}

#[test]
fn sigterm_closes_sse_streams_with_the_last_id_and_exits_promptly() {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(&dir, "gateway.toml", TICKS_TOML);
    let mut cmd = gateway();
    cmd.arg("--config").arg(&path);
    let mut process = Process::spawn(cmd);
    let port = process.port();

    let response = get(port, "/ticks", &[("Accept", "text/event-stream")]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let mut sse = SseReader {
        response,
        text: String::new(),
        ended: false,
    };
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut ticks = Vec::new();
    while ticks.len() < 2 {
        let event = sse
            .next(deadline)
            .expect("the stream ended before two ticks");
        if event.event.as_deref() == Some("tick") {
            ticks.push(event);
        } else {
            // Only the stream's opening `retry:` hint, on its own.
            assert!(
                event.retry.is_some() && event.id.is_none() && event.data.is_none(),
                "unexpected event before SIGTERM: {event:?}"
            );
        }
    }

    let signalled = process.terminate();
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut after = Vec::new();
    while let Some(event) = sse.next(deadline) {
        after.push(event);
    }
    let stream_ended = Instant::now();
    sse.response.expect_closed(deadline);
    let (status, exited) = process.wait_exit(IO_TIMEOUT);
    let exit_time = exited.saturating_duration_since(signalled);
    eprintln!(
        "SSE shutdown: stream ended {:?} and process exited {exit_time:?} after SIGTERM",
        stream_ended.saturating_duration_since(signalled)
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        exit_time < EXIT_BOUND,
        "exited {exit_time:?} after SIGTERM; the bound is {EXIT_BOUND:?}"
    );

    // Ticks that were already on their way may come before the close event;
    // the close event comes last and carries the id of the last tick.
    let close_at = after
        .iter()
        .position(|e| e.event.as_deref() == Some("gateway.close"))
        .unwrap_or_else(|| panic!("no gateway.close event after SIGTERM: {after:?}"));
    assert_eq!(
        close_at,
        after.len() - 1,
        "events after the close: {after:?}"
    );
    let close = &after[close_at];
    // The close event carries a `retry:` hint (the route's default, 3 s).
    assert_eq!(close.retry.as_deref(), Some("3000"), "{close:?}");
    for event in &after[..close_at] {
        assert_eq!(event.event.as_deref(), Some("tick"), "{after:?}");
        ticks.push(event.clone());
    }
    // Ticks are numbered from 1, id and seq alike.
    for (n, tick) in (1u64..).zip(&ticks) {
        assert_eq!(tick.id.as_deref(), Some(n.to_string().as_str()), "{tick:?}");
        assert_eq!(tick.data_json()["seq"], n, "{tick:?}");
    }
    let last_id = ticks.last().and_then(|t| t.id.clone()).expect("a tick id");
    assert_eq!(close.id.as_deref(), Some(last_id.as_str()), "{close:?}");
    let data = close.data_json();
    assert_eq!(data["event"], "gateway.close", "{data}");
    assert_eq!(data["reason"], "shutdown", "{data}");
    assert_eq!(data["last_event_id"], last_id.as_str(), "{data}");

    let (stderr, _) = process.output();
    assert!(stderr.contains("Shutting down"), "{stderr}");
}

/// How long both socket queues must stay the same to count as full.
#[cfg(target_os = "linux")]
const STALL_WINDOW: Duration = Duration::from_millis(200);

/// The send and receive queues, in bytes, of the TCP connection on 127.0.0.1
/// from `local` to `remote`, from `/proc/net/tcp`.
#[cfg(target_os = "linux")]
fn tcp_queues(local: u16, remote: u16) -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |address: &str| {
        let hex = address.rsplit(':').next().unwrap_or_default();
        u16::from_str_radix(hex, 16).ok()
    };
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if port(fields.get(1)?)? != local || port(fields.get(2)?)? != remote {
                return None;
            }
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no connection {local} -> {remote} in /proc/net/tcp"))
}

/// Linux only: it watches the socket queues in `/proc/net/tcp`.
#[cfg(target_os = "linux")]
#[test]
fn sigterm_exits_within_the_grace_when_a_client_does_not_read() {
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(
        &dir,
        "gateway.toml",
        r#"
[server]
shutdown_grace = "200ms"

[routes.flood]
path = "/flood"

[routes.flood.backends.t]
type = "ticker"
interval = "0s"
payload_bytes = 65536
"#,
    );
    let mut cmd = gateway();
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .env("GATEWAY__SERVER__PORT", "0");
    let mut process = Process::spawn(cmd);
    let port = process.port();

    // Only the head is read; the body is left to fill the socket buffers.
    let response = get(port, "/flood", &[("Accept", "application/x-ndjson")]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/x-ndjson")
    );

    // Wait until the gateway is stuck writing: the client's receive queue is
    // full and so is the gateway's send queue (the kernel grows it up to
    // `tcp_wmem`, 4 MiB by default, which takes a while), so that the
    // connection cannot finish without the client reading. The ticker produces
    // as fast as it can send, so both queues staying the same for a while
    // means they are full. (A condition polled under a deadline, not a pause.)
    let client_port = response.sock.local_addr().expect("local addr").port();
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut last = (0, 0);
    let mut stable_since = Instant::now();
    loop {
        let queues = (
            tcp_queues(port, client_port).0,
            tcp_queues(client_port, port).1,
        );
        if queues != last {
            (last, stable_since) = (queues, Instant::now());
        } else if queues.0 > 0 && queues.1 > 0 && stable_since.elapsed() >= STALL_WINDOW {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the socket queues never stopped filling: {last:?}"
        );
        thread::sleep(Duration::from_millis(2));
    }

    let signalled = process.terminate();
    let (status, exited) = process.wait_exit(IO_TIMEOUT);
    let exit_time = exited.saturating_duration_since(signalled);
    eprintln!(
        "Shutdown with a stalled client: exited {exit_time:?} after SIGTERM \
         ({} bytes queued by the gateway, {} unread by the client)",
        last.0, last.1
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        exit_time < EXIT_BOUND,
        "exited {exit_time:?} after SIGTERM; the bound is {EXIT_BOUND:?}"
    );
    // The exit came from the grace running out, not from the stream ending.
    let (stderr, _) = process.output();
    assert!(
        stderr.contains("Connections still open after the shutdown grace"),
        "{stderr}"
    );
    // The client held its end open all along.
    drop(response);
}

/// Issue 10: at shutdown every stream logs its end, and a reader of stderr
/// that falls behind (a pipe to a log shipper) must not hold the streams'
/// final events back. Before the log lines had a thread of their own, the
/// runtime's workers blocked writing them to the full pipe, and most
/// streams were cut at the grace without their `gateway.close`.
#[test]
fn sigterm_closes_every_stream_while_stderr_is_not_read() {
    const STREAMS: usize = 600;
    let dir = TempDir::new().expect("temp dir");
    let path = write_file(
        &dir,
        "gateway.toml",
        r#"
[server]
port = 0
max_streams_per_client = 0
[routes.quiet]
path = "/quiet"
[routes.quiet.backends.once]
type = "ticker"
interval = "1h"
"#,
    );
    let mut child = gateway()
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway binary");
    // The port from the first lines; after that stderr is not read until
    // the process has exited, so its pipe fills up.
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let port = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).expect("stderr") > 0,
            "no Listening line"
        );
        if let Some(at) = line.find("Listening on http://127.0.0.1:") {
            let rest = &line[at + "Listening on http://127.0.0.1:".len()..];
            break rest[..rest.find('/').expect("a slash")]
                .parse::<u16>()
                .expect("a port");
        }
    };
    let mut streams: Vec<TcpStream> = (0..STREAMS)
        .map(|_| {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            tcp.write_all(b"GET /quiet HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
                .expect("request");
            tcp
        })
        .collect();
    // Every stream has its first event before the signal.
    for tcp in &mut streams {
        tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("event: tick") {
            let n = tcp.read(&mut buf).expect("the first event");
            assert!(n > 0, "closed before its first event");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // One deadline for them all: a gateway that holds the closes back
    // fails the test in seconds, not once per stream.
    let deadline = signalled + IO_TIMEOUT;
    let mut closed = 0;
    for tcp in &mut streams {
        let left = deadline.saturating_duration_since(Instant::now());
        tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        if String::from_utf8_lossy(&rest).contains("event: gateway.close") {
            closed += 1;
        }
    }
    let all_read = signalled.elapsed();
    // The process may wait for its log thread (at most a second) while
    // stderr is full; then it exits.
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if signalled.elapsed() > PROCESS_TIMEOUT {
            let _ = child.kill();
            panic!("the gateway did not exit after SIGTERM while its stderr was full");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let exit_time = signalled.elapsed();
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    eprintln!(
        "{closed}/{STREAMS} closes read {all_read:?} after SIGTERM; exited after {exit_time:?}"
    );
    assert_eq!(closed, STREAMS, "streams without their gateway.close");
    assert!(exited.success(), "{exited}");
    assert!(
        exit_time < Duration::from_secs(5),
        "exited after {exit_time:?}"
    );
}
