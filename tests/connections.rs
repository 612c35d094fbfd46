//! Every phase of a connection is bounded, each bound with its outcome: the
//! request head's time (408) and size (431), the idle time between requests,
//! connections at once and per client (503, 429), streams per client (429),
//! and HTTP/1.1 as strict as its RFCs (400, 414, 501), on real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backends::Backend;
use gateway::config::ServerConfig;
use gateway_tests::{RawResponse, TestServer, client, raw_exchange, read_to_close};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn quiet() -> Arc<dyn Backend> {
    // One event at once, then nothing for an hour: a stream that stays open.
    let config: backends::ticker::TickerConfig =
        serde_json::from_value(serde_json::json!({"interval": "1h"})).expect("ticker config");
    Arc::new(backends::ticker::Ticker::new(config))
}

async fn server(config: ServerConfig) -> TestServer {
    TestServer::route("/s", vec![("quiet", quiet())], |_| {}, config).await
}

/// A connection from loopback address `127.0.0.N`.
async fn connect_from(n: u8, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, n], 0)))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// Reads from `tcp` until `needle` has arrived.
async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn assert_error(response: &RawResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["error"], code, "{body}");
}

#[tokio::test(start_paused = true)]
async fn a_head_trickled_a_byte_at_a_time_is_answered_408_and_closed() {
    let server = server(ServerConfig::default()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // A byte every 5 s: each byte would reset an idle timeout, not this one.
    let head = b"GET /s HTTP/1.1\r\nHost: a\r\nX-Slow: ";
    let mut closed = Vec::new();
    for byte in head.iter().chain(std::iter::repeat(&b'a')) {
        if tcp.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(n)) => {
                closed.extend_from_slice(&buf[..n]);
                closed.extend(read_to_close(&mut tcp, Duration::from_secs(1)).await);
                break;
            }
            Ok(Err(_)) => break,
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(16),
        "closed after {waited:?}"
    );
    let response = RawResponse::parse(&closed);
    assert_error(&response, 408, "request_timeout");
    assert_eq!(response.header("connection"), Some("close"));
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_head_timeout_and_an_idle_one_at_keep_alive() {
    let config = ServerConfig {
        head_timeout: Duration::from_secs(3),
        keep_alive_timeout: Duration::from_secs(20),
        ..ServerConfig::default()
    };
    let server = server(config).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let bytes = read_to_close(&mut silent, Duration::from_secs(10)).await;
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    // Kept alive between requests: more than the head's time, up to the
    // idle time, counted from the end of the last answer.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..2 {
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut idle, "\"status\":\"ok\"").await;
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    let answered = tokio::time::Instant::now() - Duration::from_secs(15);
    let bytes = read_to_close(&mut idle, Duration::from_secs(30)).await;
    assert!(bytes.is_empty());
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_head_over_max_head_bytes_is_431() {
    let server = server(ServerConfig {
        max_head_bytes: 16 * 1024,
        ..ServerConfig::default()
    })
    .await;
    // One 200 KB header value, and many small headers adding up.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    let response = raw_exchange(server.addr, big.as_bytes()).await;
    assert_eq!(response.status, 431, "{response:?}");
    let many: String = (0..90)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(200)))
        .collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let response = raw_exchange(server.addr, request.as_bytes()).await;
    assert_eq!(response.status, 431, "{response:?}");
    // Just under the limit is fine.
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(15_000)
    );
    assert_eq!(raw_exchange(server.addr, fits.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn http_1_1_is_as_strict_as_its_rfcs() {
    let server = server(ServerConfig::default()).await;
    let exchange = |request: String| raw_exchange(server.addr, request.into_bytes().leak());

    let no_host = exchange("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".into()).await;
    assert_error(&no_host, 400, "bad_request");
    assert!(no_host.header("x-request-id").is_some());
    let two_hosts =
        exchange("GET /s HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".into()).await;
    assert_error(&two_hosts, 400, "bad_request");
    // HTTP/1.0 needs no Host.
    let old = exchange("GET /healthz HTTP/1.0\r\n\r\n".into()).await;
    assert_eq!(old.status, 200, "{old:?}");

    let gzip = exchange(
        "POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            .into(),
    )
    .await;
    assert_error(&gzip, 501, "not_implemented");
    assert_eq!(gzip.header("connection"), Some("close"));
    let twice = exchange(
        "POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .into(),
    )
    .await;
    assert_error(&twice, 400, "bad_request");

    // Content-Length with Transfer-Encoding, either order: refused, and the
    // rest of the connection is not read as another request.
    for head in [
        "Content-Length: 30\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\ncontent-length: 30",
    ] {
        let smuggled = format!(
            "POST /s HTTP/1.1\r\nHost: a\r\n{head}\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(smuggled.as_bytes()).await.unwrap();
        let bytes = read_to_close(&mut tcp, Duration::from_secs(10)).await;
        let response = RawResponse::parse(&bytes);
        assert_error(&response, 400, "bad_request");
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "one answer only: {text}"
        );
    }

    // obs-fold: a header continued on the next line (hyper's 400).
    let folded = exchange("GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n".into()).await;
    assert_eq!(folded.status, 400, "{folded:?}");

    let method = "M".repeat(10_000);
    let long_method = exchange(format!(
        "{method} /s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_error(&long_method, 501, "not_implemented");
    let echoed = String::from_utf8_lossy(&long_method.body).into_owned();
    assert!(!echoed.contains("MMMM"), "the method is echoed: {echoed}");
    // A short unknown method is 405, and is named.
    let unknown = exchange("BREW /s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into()).await;
    assert_error(&unknown, 405, "method_not_allowed");

    let target = format!("/s?{}", "q".repeat(9000));
    let long_target = exchange(format!(
        "GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_error(&long_target, 414, "uri_too_long");
}

#[tokio::test]
async fn connections_are_limited_at_once_and_per_client() {
    let server = server(ServerConfig {
        max_connections: 3,
        max_connections_per_client: 2,
        ..ServerConfig::default()
    })
    .await;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut first = connect_from(1, server.addr).await;
    let mut second = connect_from(1, server.addr).await;
    for tcp in [&mut first, &mut second] {
        tcp.write_all(healthz).await.unwrap();
        read_until(tcp, "\"status\":\"ok\"").await;
    }
    // A third from the same address: 429, then closed.
    let mut third = connect_from(1, server.addr).await;
    third.write_all(healthz).await.unwrap();
    let response = RawResponse::parse(&read_to_close(&mut third, Duration::from_secs(10)).await);
    assert_error(&response, 429, "too_many_connections");
    assert_eq!(response.header("retry-after"), Some("1"));
    // Another address is another client, until the gateway's own limit.
    let mut other = connect_from(2, server.addr).await;
    other.write_all(healthz).await.unwrap();
    read_until(&mut other, "\"status\":\"ok\"").await;
    let mut fourth = connect_from(3, server.addr).await;
    fourth.write_all(healthz).await.unwrap();
    let response = RawResponse::parse(&read_to_close(&mut fourth, Duration::from_secs(10)).await);
    assert_error(&response, 503, "unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));
    // A place freed is a place taken again.
    drop(first);
    let mut again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut tcp = connect_from(1, server.addr).await;
            tcp.write_all(healthz).await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if String::from_utf8_lossy(&buf[..n]).contains("200 OK") {
                return tcp;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the freed place is taken again");
    again.write_all(healthz).await.unwrap();
    read_until(&mut again, "\"status\":\"ok\"").await;
    let metrics = server.gateway.metrics_text();
    assert!(
        metrics.contains(
            r#"gateway_connections_refused_total{reason="per_client",outcome="answered"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"gateway_connections_refused_total{reason="max_connections",outcome="answered"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn streams_are_limited_per_client_by_address_or_a_trusted_header() {
    let server = server(ServerConfig {
        max_streams_per_client: 2,
        ..ServerConfig::default()
    })
    .await;
    let open = |n: u8| {
        let addr = server.addr;
        async move {
            let mut tcp = connect_from(n, addr).await;
            tcp.write_all(b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let head = read_until(&mut tcp, "\r\n\r\n").await;
            (tcp, head)
        }
    };
    let (a1, head) = open(1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_a2, head) = open(1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_a3, head) = open(1).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let (_b1, head) = open(2).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A stream that ends gives its place back.
    drop(a1);
    let freed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (tcp, head) = open(1).await;
            if head.starts_with("HTTP/1.1 200") {
                return tcp;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the place was not given back");
    assert!(
        server
            .gateway
            .metrics_text()
            .contains(r#"gateway_streams_refused_total{route="test",reason="per_client"}"#)
    );

    // Behind a trusted proxy: the header names the client, and the proxy's
    // own connections are not limited per address.
    let server = server_with_header().await;
    let url = server.url("/s");
    let stream = |client_ip: &'static str| {
        let url = url.clone();
        async move {
            client()
                .get(url)
                .header("x-forwarded-for", client_ip)
                .send()
                .await
                .unwrap()
        }
    };
    let held = [
        stream("203.0.113.1").await,
        stream("198.51.100.7, 203.0.113.1").await,
    ];
    assert!(held.iter().all(|r| r.status() == 200));
    assert_eq!(stream("203.0.113.1").await.status(), 429);
    let others: Vec<_> = futures::future::join_all((0..5).map(|_| stream("203.0.113.2"))).await;
    let statuses: Vec<u16> = others.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
}

async fn server_with_header() -> TestServer {
    server(ServerConfig {
        max_streams_per_client: 2,
        max_connections_per_client: 1,
        client_ip_header: Some("X-Forwarded-For".into()),
        ..ServerConfig::default()
    })
    .await
}

#[tokio::test]
async fn the_shutdown_grace_grows_with_the_open_streams() {
    let server = server(ServerConfig {
        shutdown_grace: Duration::from_millis(100),
        shutdown_grace_per_stream: Duration::from_millis(2),
        ..ServerConfig::default()
    })
    .await;
    assert_eq!(server.gateway.shutdown_grace(), Duration::from_millis(100));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(client().get(server.url("/s")).send().await.unwrap());
    }
    assert_eq!(server.gateway.open_streams(), 3);
    assert_eq!(server.gateway.shutdown_grace(), Duration::from_millis(106));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_closed_at_the_send_timeout() {
    let firehose: backends::ticker::TickerConfig = serde_json::from_value(serde_json::json!({
        "interval": "0s", "payload_bytes": 1000
    }))
    .unwrap();
    let server = TestServer::route(
        "/fast",
        vec![(
            "fast",
            Arc::new(backends::ticker::Ticker::new(firehose)) as Arc<dyn Backend>,
        )],
        // Its own bounds never come into it: the stream cannot be written.
        |route| route.max_lifetime = Duration::from_secs(2),
        ServerConfig {
            send_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "\r\n\r\n").await;
    // Reads nothing more; the gateway fills the sockets, then waits.
    let held = streams_closed_within(&server, Duration::from_secs(60)).await;
    assert!(
        held >= Duration::from_secs(5) && held < Duration::from_secs(7),
        "{held:?}"
    );
    assert!(
        server
            .gateway
            .metrics_text()
            .contains(r#"gateway_connection_timeouts_total{phase="send"} 1"#)
    );
}

#[tokio::test]
async fn refusals_never_hand_a_request_value_back_in_bulk() {
    let server = server(ServerConfig::default()).await;
    let long = "é".repeat(1300);
    let encoded: String = url_escape(&long);
    for target in [format!("/{encoded}"), format!("/s?format={encoded}")] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(server.addr, request.as_bytes()).await;
        assert!(matches!(response.status, 400 | 404), "{response:?}");
        assert!(
            response.body.len() < 600,
            "{} bytes answered",
            response.body.len()
        );
    }
    let response = client()
        .get(server.url("/s"))
        .header("last-event-id", "x".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().len() < 600);
}

fn url_escape(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn counted(count: u64) -> Arc<dyn Backend> {
    let config: backends::ticker::TickerConfig =
        serde_json::from_value(serde_json::json!({"interval": "0s", "count": count}))
            .expect("ticker config");
    Arc::new(backends::ticker::Ticker::new(config))
}

/// A connection's first `GET` is answered without hyper; what the client
/// sent behind it, and what it sends after, is answered on the same
/// connection, in order, as on any kept-alive connection.
#[tokio::test]
async fn a_stream_answered_first_hands_its_connection_on_for_the_requests_behind_it() {
    let server = TestServer::route(
        "/s",
        vec![("three", counted(3))],
        |_| {},
        ServerConfig::default(),
    )
    .await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /s HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let seen = read_until(&mut tcp, "\"open_streams\"").await;
    let seen = if seen.ends_with('}') {
        seen
    } else {
        seen + &read_until(&mut tcp, "}").await
    };
    let (stream, health) = seen
        .split_once("0\r\n\r\nHTTP/1.1 ")
        .unwrap_or_else(|| panic!("the stream's end, then the next response: {seen:?}"));
    let head = stream
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(stream.matches("event: tick").count(), 3, "{stream}");
    assert!(health.starts_with("200 OK\r\n"), "{health}");
    // Kept alive: the next request is answered too.
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until(&mut tcp, "}")
            .await
            .starts_with("HTTP/1.1 200 OK\r\n")
    );

    // Asked to close: said, and done once the stream has ended.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET /s HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let seen = read_to_close(&mut tcp, Duration::from_secs(30)).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("\r\nconnection: close\r\n"), "{seen}");
    assert!(seen.ends_with("\r\n0\r\n\r\n"), "{seen}");
    assert_eq!(seen.matches("event: tick").count(), 3, "{seen}");
}

/// Nothing is written to an idle stream between heartbeats, yet a client
/// that leaves is noticed at once: its stream ends and frees its place.
#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_an_idle_stream_is_noticed_before_any_heartbeat() {
    let server = server(ServerConfig::default()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /s HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "event: tick").await;
    assert_eq!(server.gateway.open_streams(), 1);
    drop(tcp);
    streams_closed_within(&server, Duration::from_secs(5)).await;
}

/// Waits until `server` holds no stream, at most `bound`; how long it took.
async fn streams_closed_within(server: &TestServer, bound: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    while server.gateway.open_streams() > 0 {
        assert!(
            started.elapsed() < bound,
            "a stream is still open after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}
