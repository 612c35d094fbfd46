//! HTTP/1 requests through the listener's own connection code (limits,
//! strict checks, phases, the routes): any bytes a client sends get
//! HTTP/1.1 responses or a close, never a panic and never a 500, and the
//! connection ends. Time is tokio's paused clock, so the head and idle
//! timeouts pass at once when nothing else can happen.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use gateway::config::{Source, load};
use gateway::{Gateway, serve_http1_io};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// Routes of every kind of access, with backends that need no network.
const CONFIG: &str = r#"
[server]
max_body_bytes = 65536
body_timeout = "2s"
[server.metrics]
path = "/metrics"
tokens = ["fuzz-metrics-token-0123456789"]

[routes.reference]
path = "/"
methods = ["GET", "POST"]
[routes.reference.response_headers]
X-AggregateInfo-Result = "OK"
[routes.reference.backends.demo]
type = "demo"
tokens = ["Hello", " ", "World", "!"]
start_pause = "500ms"
token_pause = "300ms"

[routes.private]
path = "/private/{room}"
[routes.private.auth]
type = "bearer"
tokens = ["fuzz-static-token-0123456789"]
from = ["authorization", "cookie", "query"]
[routes.private.cors]
origins = ["https://app.example"]
credentials = true
[routes.private.backends.clock]
type = "ticker"
interval = "1s"

[routes.rooms]
path = "/rooms/{room}"
methods = ["GET", "POST"]
[routes.rooms.auth]
type = "jwt"
secret = "fuzz-secret-of-at-least-32-bytes-0123456789"
[routes.rooms.auth.restrict]
param = "room"
claim = "rooms"
[routes.rooms.backends.a]
type = "demo"
tokens = ["a"]
[routes.rooms.backends.b]
type = "demo"
tokens = ["b"]
"#;

/// The most of a response read: a stream that goes on is cut there.
const READ_LIMIT: usize = 64 << 10;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
});

static GATEWAY: LazyLock<Arc<Gateway>> = LazyLock::new(|| {
    let config = load(
        Source::Text {
            origin: "fuzz",
            text: CONFIG,
        },
        Some(Default::default()),
    )
    .expect("the fuzz config loads");
    let _entered = RUNTIME.enter();
    Arc::new(Gateway::from_config(&config).expect("the fuzz gateway builds"))
});

fuzz_target!(|data: &[u8]| {
    let gateway = Arc::clone(&GATEWAY);
    let response = RUNTIME.block_on(async move {
        let (client, server) = tokio::io::duplex(16 << 10);
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let connection = tokio::spawn(serve_http1_io(gateway, server, peer));
        let mut response = Vec::new();
        // Writing and reading at once: a server that answers before it has
        // read all must not block the writer forever.
        let _ = tokio::time::timeout(Duration::from_secs(3600), async {
            let (mut reader, mut writer) = tokio::io::split(client);
            let write = async {
                let _ = writer.write_all(data).await;
                let _ = writer.shutdown().await;
            };
            let read = async {
                let mut chunk = [0u8; 8192];
                while response.len() < READ_LIMIT {
                    match reader.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => response.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            tokio::join!(write, read);
        })
        .await;
        connection.abort();
        let _ = connection.await;
        response
    });
    if !response.is_empty() {
        assert!(
            response.starts_with(b"HTTP/1.1 ") || response.starts_with(b"HTTP/1.0 "),
            "{:?}",
            String::from_utf8_lossy(&response[..response.len().min(200)])
        );
    }
    let text = String::from_utf8_lossy(&response);
    assert!(!text.contains("HTTP/1.1 500"), "{text}");
});
