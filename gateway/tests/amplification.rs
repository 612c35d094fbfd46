//! Amplification (issue 10): no request may cost the gateway more than a
//! small multiple of its own size, nor hold memory once it has ended.
//!
//! The real `gateway` binary runs as a process of its own, so that its
//! memory can be read from `/proc/PID/status` (`VmRSS` now, `VmHWM` the
//! peak), with the allocator settings its image and Lambda template give it
//! (`GLIBC_TUNABLES`, read from `deploy/Dockerfile`). Clients open many
//! concurrent streams with 1 MiB bodies (the largest `server.max_body_bytes`
//! lets in) of the shapes that cost most when a body is turned into a tree:
//! a text of one-letter words for the demo backend (on the reference route
//! and on one without pauses), a wide array and an object of many keys for
//! a backend that forwards the body upstream. They read slowly or not at
//! all, so every stream stays open while the memory is read; then they
//! leave, and the memory must come back down. A second, identical wave
//! must find it again rather than add to it.
//!
//! Measured on a 2-core machine (debug build, 36 MiB sent in 36 requests):
//! before issue 10 the open streams held +2.0 GB, after +40 to 48 MiB;
//! once the clients left +5 to 12 MiB stayed, the same after six waves.

#![cfg(target_os = "linux")]

#[path = "support/listening.rs"]
mod listening;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use listening::listening;

/// Text bodies held open at once, half on each demo route; a fifth as many
/// of each other kind.
const N: usize = 20;
/// Each request body: `server.max_body_bytes`, the default 1 MiB.
const BODY_BYTES: usize = 1 << 20;
/// Longest wait for any one step (the gateway starting, every request of a
/// wave being taken in, every stream ending): each takes a second or two
/// on a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(60);

/// While the streams are open the gateway may hold this many times the
/// bytes the clients sent. Each open stream holds its body once (the
/// demo reads its tokens from it, the `http` backend sends it again on a
/// reconnect), 0.9 of what was sent here since a fifth of the requests are
/// refused; connections' read buffers and the allocator's overhead come
/// on top: 1.1 to 1.35 measured. 3 leaves room for a slower machine and
/// still fails the old tree-per-body design by far (55 measured).
const HELD_PER_BYTE_SENT: f64 = 3.0;
/// Once every client has left, what the gateway may still hold above its
/// warmed-up baseline, as a share of what was sent: freed memory the
/// allocator keeps for reuse, no request's. 0.14 to 0.34 measured.
const RETAINED_PER_BYTE_SENT: f64 = 0.5;
/// What a second, identical wave may leave on top of what the first left:
/// nothing accumulates (0.03 to 0.15 measured).
const REGROWN_PER_BYTE_SENT: f64 = 0.25;

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {STEP:?}"))
}

/// The gateway process, killed when the test ends.
struct Gateway {
    child: Child,
    address: SocketAddr,
    _config: tempfile::TempDir,
}

impl Gateway {
    async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).expect("write the config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .arg("--config")
            .arg(&path)
            .env("GLIBC_TUNABLES", image_tunables())
            .env("RUST_LOG", "warn,gateway=info");
        let (child, address) = within("the gateway listens", listening(command)).await;
        let address = address.parse().expect("a socket address");
        Self {
            child,
            address,
            _config: dir,
        }
    }

    /// `VmRSS` and `VmHWM` of the process, in bytes.
    fn memory(&self) -> Memory {
        let pid = self.child.id().expect("the gateway runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let field = |name: &str| {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("a number of kB");
            kib * 1024
        };
        Memory {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }

    /// `open_streams` of `/healthz`.
    async fn open_streams(&self) -> u64 {
        let mut socket = TcpStream::connect(self.address).await.expect("connect");
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            .await
            .expect("ask /healthz");
        let mut answer = Vec::new();
        socket
            .read_to_end(&mut answer)
            .await
            .expect("read /healthz");
        let answer = String::from_utf8_lossy(&answer);
        let body = answer.split("\r\n\r\n").nth(1).expect("a body");
        let health: Value = serde_json::from_str(body).expect("JSON health");
        health["open_streams"].as_u64().expect("open_streams")
    }
}

/// The allocator settings the image runs the gateway with (its Lambda
/// template sets the same): glibc's mmap threshold pinned, so that large
/// blocks go back to the system when freed instead of raising the
/// threshold and staying in the heap (see the README's Operating it).
fn image_tunables() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile =
        std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("read deploy/Dockerfile");
    let tunables = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENV GLIBC_TUNABLES="))
        .expect("deploy/Dockerfile sets GLIBC_TUNABLES")
        .to_string();
    let template =
        std::fs::read_to_string(root.join("deploy/template.yaml")).expect("read the template");
    assert!(
        template.contains(&format!("GLIBC_TUNABLES: {tunables}")),
        "deploy/template.yaml sets GLIBC_TUNABLES as the image does: {tunables}"
    );
    tunables
}

#[derive(Clone, Copy, Debug)]
struct Memory {
    rss: u64,
    peak: u64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// A 1 MiB body of the given shape.
fn body(shape: &str) -> Arc<Vec<u8>> {
    let (open, item, close) = match shape {
        // 1 MiB of one-letter words: half a million tokens.
        "text" => (r#"{"text": ""#, "a ", r#"a"}"#),
        "array" => ("[", "0,", "0]"),
        "object" => ("{", "", r#""end":0}"#),
        _ => unreachable!("no shape {shape}"),
    };
    let mut body = open.as_bytes().to_vec();
    let mut n = 0u32;
    while body.len() + 16 + close.len() < BODY_BYTES {
        if shape == "object" {
            body.extend_from_slice(format!(r#""{n:x}":0,"#).as_bytes());
            n += 1;
        } else {
            body.extend_from_slice(item.as_bytes());
        }
    }
    body.extend_from_slice(close.as_bytes());
    assert!(body.len() <= BODY_BYTES);
    serde_json::from_slice::<serde::de::IgnoredAny>(&body).expect("the body is JSON");
    Arc::new(body)
}

/// Sends `POST path` with `body` on a connection whose receive buffer is
/// small, so that a client that does not read holds back the stream soon.
async fn post(address: SocketAddr, path: &str, body: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body).await.expect("send body");
    stream
}

/// Reads up to the end of the response head; returns the status.
async fn status(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read the answer");
        assert_eq!(n, 1, "the connection closed before the answer's head");
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// An upstream that takes every request in whole and never answers: the
/// `http` backend stays in its open phase, holding what it sends.
struct Upstream {
    address: SocketAddr,
    received: Arc<(AtomicUsize, Notify)>,
    /// The connections held open, until [`hang_up`](Self::hang_up).
    held: Arc<Mutex<Vec<TcpStream>>>,
    _accepting: JoinSet<()>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let received = Arc::new((AtomicUsize::new(0), Notify::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let mut accepting = JoinSet::new();
        let (counted, holding) = (Arc::clone(&received), Arc::clone(&held));
        accepting.spawn(async move {
            let mut reading = JoinSet::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let (counted, holding) = (Arc::clone(&counted), Arc::clone(&holding));
                reading.spawn(async move {
                    read_request(&mut socket).await;
                    holding.lock().expect("held").push(socket);
                    counted.0.fetch_add(1, Ordering::SeqCst);
                    counted.1.notify_waiters();
                });
            }
        });
        Self {
            address,
            received,
            held,
            _accepting: accepting,
        }
    }

    /// Waits until `n` requests in all have come in whole.
    async fn received(&self, n: usize) {
        within("the upstream receives every body", async {
            loop {
                let notified = self.received.1.notified();
                if self.received.0.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    /// Closes every connection held: the backends' opening fails.
    fn hang_up(&self) {
        self.held.lock().expect("held").clear();
    }
}

/// Reads one request with a `Content-Length` body.
async fn read_request(socket: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut chunk).await.expect("read a request");
        assert!(n > 0, "the gateway closed before sending its request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("a length"))
        .unwrap_or(0);
    let mut left = (end + length).saturating_sub(buf.len());
    while left > 0 {
        let n = socket.read(&mut chunk).await.expect("read the body");
        assert!(n > 0, "the gateway closed mid-body");
        left = left.saturating_sub(n);
    }
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
port = 0
log_format = "json"
# A loaded machine must not turn slow uploads into 408s.
body_timeout = "2m"

# The built-in route as it is: pauses of 500 ms and 300 ms.
[routes.reference]
path = "/"
methods = ["GET", "POST"]
[routes.reference.backends.demo]
type = "demo"

# The same backend without pauses: tokens as fast as the client reads.
[routes.fast]
path = "/fast"
methods = ["POST"]
[routes.fast.backends.demo]
type = "demo"
start_pause = "0s"
token_pause = "0s"

# Two backends: the request reaches each.
[routes.pair]
path = "/pair"
methods = ["POST"]
[routes.pair.backends.one]
type = "demo"
start_pause = "0s"
token_pause = "0s"
[routes.pair.backends.two]
type = "demo"
start_pause = "0s"
token_pause = "0s"

# The body forwarded to an upstream that never answers.
[routes.relay]
path = "/relay"
methods = ["POST"]
open_timeout = "5m"
[routes.relay.backends.up]
type = "http"
url = "http://{upstream}/"
connect_timeout = "4m"
"#
    )
}

/// What one wave of requests cost.
struct Wave {
    /// While every stream was open.
    open: Memory,
    /// Once every client had left and every stream had ended.
    after: Memory,
    streams: u64,
}

/// One request: where it goes, its body, and the status it is answered
/// with (`None`: it stays in its backend's open phase, unanswered).
#[derive(Clone)]
struct Load {
    path: &'static str,
    body: Arc<Vec<u8>>,
    status: Option<u16>,
}

/// Sends the load, all at once; once every request is in (every stream
/// open, every relayed body at the upstream) reads the memory; then the
/// clients leave, the upstream hangs up, and once every stream has ended
/// reads it again.
async fn wave(gateway: &Gateway, upstream: &Upstream, loads: &[Load]) -> Wave {
    let address = gateway.address;
    let relayed_before = upstream.received.0.load(Ordering::SeqCst);
    let relayed = loads.iter().filter(|l| l.status.is_none()).count();
    let mut clients = JoinSet::new();
    let (opened_tx, mut opened) = tokio::sync::mpsc::channel(loads.len());
    for Load {
        path,
        body,
        status: expected,
    } in loads.iter().cloned()
    {
        let opened = opened_tx.clone();
        clients.spawn(async move {
            let mut client = post(address, path, &body).await;
            drop(body);
            if let Some(expected) = expected {
                assert_eq!(status(&mut client).await, expected, "POST {path}");
            }
            let _ = opened.send(()).await;
            if path == "/" {
                // A slow reader: a few bytes now and then.
                let mut some = [0u8; 16];
                while client.read(&mut some).await.is_ok_and(|n| n > 0) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                // Reads nothing more, and holds the stream open.
                std::future::pending::<()>().await;
            }
        });
    }
    drop(opened_tx);
    within("every stream opens", async {
        for _ in 0..loads.len() {
            opened.recv().await.expect("a client opened");
        }
    })
    .await;
    upstream.received(relayed_before + relayed).await;
    let open = gateway.memory();
    let streams = gateway.open_streams().await;

    clients.shutdown().await;
    upstream.hang_up();
    within("every stream ends", async {
        while gateway.open_streams().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    Wave {
        open,
        after: gateway.memory(),
        streams,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cost_a_small_multiple_of_their_size_and_nothing_once_gone() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(upstream.address)).await;
    let (text, array, object) = (body("text"), body("array"), body("object"));

    // Warm up: every route once with a small body, so that the baseline has
    // the runtime's threads, the HTTP client and the buffers of a request.
    let small = Arc::new(br#"{"text": "warm up"}"#.to_vec());
    let warm_up: Vec<Load> = [("/", Some(200)), ("/fast", Some(200)), ("/pair", Some(200))]
        .into_iter()
        .chain([("/relay", None)])
        .map(|(path, status)| Load {
            path,
            body: Arc::clone(&small),
            status,
        })
        .collect();
    wave(&gateway, &upstream, &warm_up).await;
    let baseline = gateway.memory();

    // N texts on the two demo routes, and fewer of the rest.
    let loads: Vec<Load> = [
        ("/fast", &text, Some(200), N / 2),
        ("/", &text, Some(200), N / 2),
        ("/pair", &text, Some(200), N / 5),
        ("/relay", &array, None, N / 5),
        ("/relay", &object, None, N / 5),
        // Refused at once (not a {"text": …} object), but read first.
        ("/fast", &array, Some(400), N / 5),
    ]
    .into_iter()
    .flat_map(|(path, body, status, n)| {
        let load = Load {
            path,
            body: Arc::clone(body),
            status,
        };
        std::iter::repeat_n(load, n)
    })
    .collect();
    let sent: usize = loads.iter().map(|l| l.body.len()).sum();
    let first = wave(&gateway, &upstream, &loads).await;
    let second = wave(&gateway, &upstream, &loads).await;

    let grown = |m: Memory| m.rss.saturating_sub(baseline.rss) as f64;
    let report = format!(
        "sent {:.0} MiB in {} requests ({} streams open); RSS baseline {:.1} MiB; \
         first wave: open +{:.1}, after +{:.1}; second wave: open +{:.1}, after +{:.1}; \
         peak +{:.1} MiB",
        mib(sent as u64),
        loads.len(),
        first.streams,
        mib(baseline.rss),
        mib(first.open.rss.saturating_sub(baseline.rss)),
        mib(first.after.rss.saturating_sub(baseline.rss)),
        mib(second.open.rss.saturating_sub(baseline.rss)),
        mib(second.after.rss.saturating_sub(baseline.rss)),
        mib(second.after.peak.saturating_sub(baseline.rss)),
    );
    eprintln!("{report}");
    let sent = sent as f64;
    let peak = second.after.peak.saturating_sub(baseline.rss) as f64;
    let open = grown(first.open).max(grown(second.open));
    assert!(
        open <= HELD_PER_BYTE_SENT * sent && peak <= HELD_PER_BYTE_SENT * sent,
        "the streams cost more than {HELD_PER_BYTE_SENT} x what was sent: {report}"
    );
    assert!(
        grown(first.after) <= RETAINED_PER_BYTE_SENT * sent,
        "once the clients left, more than {RETAINED_PER_BYTE_SENT} x what was sent stayed: {report}"
    );
    assert!(
        grown(second.after) - grown(first.after) <= REGROWN_PER_BYTE_SENT * sent,
        "a second wave kept more than {REGROWN_PER_BYTE_SENT} x what it sent: {report}"
    );
}
