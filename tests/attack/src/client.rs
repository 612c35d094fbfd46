//! The attackers' side: sockets from chosen loopback addresses (tuned when
//! they will not read), raw requests and what comes back on them, and
//! streams read with hyper and parsed by the load generator's parsers.
//!
//! Raw sockets are for what a hyper client will not send (a head trickled a
//! byte at a time, 400 KB of headers, malformed requests) and for clients
//! that never read; streams that are read go through hyper, which takes
//! the chunked framing off.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
pub use loadgen::parse::Format;
use loadgen::parse::{self, Ndjson, Sse};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::error::Error;

/// Source address `i` of `spread`: 127.0.0.1, 127.0.0.2, … (all of 127/8
/// is loopback on Linux). Each address is a client of its own for the
/// gateway's per-client limits, with ephemeral ports of its own.
pub fn source(i: usize, spread: usize) -> IpAddr {
    let k = u32::try_from(i % spread.max(1)).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k))
}

/// Socket options set before connecting.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tune {
    /// `SO_RCVBUF`: how much the kernel holds for this client unread.
    pub recv_buffer: Option<usize>,
    /// `TCP_MAXSEG`: the segment size this client announces, which also
    /// sizes the gateway's send buffer for it (a loopback segment is 64 KiB,
    /// and the kernel starts a send buffer at ten segments or so).
    pub mss: Option<u32>,
    /// Close with a reset (`SO_LINGER` 0) rather than a FIN.
    pub reset: bool,
}

impl Tune {
    /// A client that will not read: a few KiB of kernel memory on either
    /// side rather than megabytes, so that thousands of them measure the
    /// gateway and not the kernel's TCP memory pressure.
    pub const NOT_READING: Self = Self {
        recv_buffer: Some(4096),
        mss: Some(1024),
        reset: false,
    };
}

/// Connects to `addr` from `from`.
pub async fn connect(addr: SocketAddr, from: IpAddr, tune: Tune) -> Result<TcpStream, Error> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(Error::io("make a socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(Error::io("make a socket non-blocking"))?;
    if let Some(size) = tune.recv_buffer {
        socket
            .set_recv_buffer_size(size)
            .map_err(Error::io("set SO_RCVBUF"))?;
    }
    if let Some(mss) = tune.mss {
        socket
            .set_tcp_mss(mss)
            .map_err(Error::io("set TCP_MAXSEG"))?;
    }
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .map_err(Error::io(format!("bind to {from}")))?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let tcp = socket
        .connect(addr)
        .await
        .map_err(Error::io(format!("connect to {addr} from {from}")))?;
    if tune.reset {
        tcp.set_zero_linger().map_err(Error::io("set SO_LINGER"))?;
    }
    Ok(tcp)
}

/// A request head: `METHOD PATH HTTP/1.1`, `Host`, then `headers`.
pub fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: attack\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// How a raw connection ended, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The gateway closed it (FIN).
    Closed,
    /// The gateway reset it (it closed with bytes of ours unread).
    Reset,
    /// Still open when the client stopped waiting.
    Open,
}

/// What came back on a raw connection.
#[derive(Debug)]
pub struct Answer {
    /// Every byte read.
    pub bytes: Vec<u8>,
    /// How it ended.
    pub end: End,
    /// When it ended (or the client stopped waiting), from the start of the
    /// read.
    pub after: Duration,
}

impl Answer {
    /// The status of the first response, if one came.
    pub fn status(&self) -> Option<u16> {
        status_of(&self.bytes)
    }

    /// The first value of header `name` in the first response's head.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = head_of(&self.bytes)?;
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// Whether `needle` occurs anywhere in what came back.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }
}

/// The status of the response at the start of `bytes`.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    words
        .next()
        .filter(|v| v.starts_with("HTTP/1."))
        .and(words.next())?
        .parse()
        .ok()
}

fn head_of(bytes: &[u8]) -> Option<String> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Whether `bytes` hold one whole response (a `Content-Length` body, or a
/// chunked one up to its last chunk).
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let body = &bytes[end + 4..];
    if let Some(length) = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= length;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

/// Reads `tcp` (a socket or its reading half) until the gateway closes it,
/// at most `limit`; once a whole response has come, waits at most `linger`
/// more for the close.
pub async fn read_answer<R>(tcp: &mut R, limit: Duration, linger: Duration) -> Answer
where
    R: AsyncRead + Unpin,
{
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        let until = if complete(&bytes) {
            deadline.min(tokio::time::Instant::now() + linger)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    Answer {
        bytes,
        end,
        after: started.elapsed(),
    }
}

/// `GET path` on a connection of its own: the status and the body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(Error::io(format!("connect to {addr}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Error::Unexpected(format!("handshake with {addr}: {e}")))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "attack")
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Unexpected(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Error::Unexpected(format!("GET {path}: {e}")))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Unexpected(format!("GET {path}: body: {e}")))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A client that asks for stream `path` (SSE), reads the response's head
/// and then nothing more: its socket fills up, and then the gateway's.
pub async fn not_reading(addr: SocketAddr, from: IpAddr, path: &str) -> Result<TcpStream, String> {
    let mut tcp = connect(addr, from, Tune::NOT_READING)
        .await
        .map_err(|e| e.to_string())?;
    let head = head("GET", path, &[("Accept", "text/event-stream")]);
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
            .await
            .map_err(|_| "no response head within 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a response head".into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    match status_of(&seen) {
        Some(200) => Ok(tcp),
        status => Err(format!("answered {status:?}")),
    }
}

/// A task aborted when this is dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One event as a client received it.
#[derive(Clone, Debug)]
pub struct Event {
    /// SSE `event` (or `message`); NDJSON: the line's `event` key.
    pub name: String,
    /// SSE: the last id; NDJSON: the line's `id`, else its `seq` (a
    /// ticker's id).
    pub id: Option<String>,
    /// The data (SSE) or the line (NDJSON).
    pub data: Vec<u8>,
    /// When the client parsed it.
    pub at: Instant,
}

impl Event {
    /// The string value of `key` in the data, if it is a JSON object's.
    pub fn field(&self, key: &str) -> Option<&str> {
        parse::field_str(&self.data, key)
    }
}

enum Parser {
    Sse(Sse),
    Ndjson(Ndjson),
}

/// Largest event a client parses.
const MAX_EVENT: usize = 1 << 20;

/// What a stream request asks.
#[derive(Clone, Debug)]
pub struct StreamRequest {
    /// `GET` or `POST`.
    pub method: hyper::Method,
    /// Path and query.
    pub path: String,
    /// The format asked for.
    pub format: Format,
    /// The body (a `POST`'s).
    pub body: Bytes,
}

impl StreamRequest {
    /// `GET path` in `format`.
    pub fn get(path: &str, format: Format) -> Self {
        Self {
            method: hyper::Method::GET,
            path: path.to_string(),
            format,
            body: Bytes::new(),
        }
    }
}

/// A stream being read.
pub struct Stream {
    /// Just before connecting.
    pub started: Instant,
    /// The response's status.
    pub status: u16,
    /// When the response's head arrived.
    pub headers_at: Instant,
    body: Incoming,
    parser: Parser,
    ready: VecDeque<Event>,
    _conn: AbortOnDrop,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("status", &self.status)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Connects from `from` and sends `request`; returns once the
    /// response's head has come.
    pub async fn open(
        addr: SocketAddr,
        from: IpAddr,
        tune: Tune,
        request: &StreamRequest,
    ) -> Result<Self, Error> {
        let started = Instant::now();
        let tcp = connect(addr, from, tune).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| Error::Unexpected(format!("handshake: {e}")))?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let http = hyper::Request::builder()
            .method(request.method.clone())
            .uri(request.path.as_str())
            .header(hyper::header::HOST, "attack")
            .header(hyper::header::ACCEPT, request.format.accept())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(request.body.clone()))
            .map_err(|e| Error::Unexpected(e.to_string()))?;
        let response = sender
            .send_request(http)
            .await
            .map_err(|e| Error::Unexpected(format!("{} {}: {e}", request.method, request.path)))?;
        let parser = match request.format {
            Format::Sse => Parser::Sse(Sse::new(MAX_EVENT)),
            Format::Ndjson => Parser::Ndjson(Ndjson::new(MAX_EVENT)),
        };
        Ok(Self {
            started,
            status: response.status().as_u16(),
            headers_at: Instant::now(),
            body: response.into_body(),
            parser,
            ready: VecDeque::new(),
            _conn: conn,
        })
    }

    /// The next event; `Ok(None)` when the stream has ended, `Err` when it
    /// broke (reset, or a malformed chunk).
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| Error::Unexpected(format!("stream broke: {e}")))?;
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            let at = Instant::now();
            let ready = &mut self.ready;
            let mut push = |name: &str, id: Option<String>, data: &[u8]| {
                ready.push_back(Event {
                    name: name.to_string(),
                    id,
                    data: data.to_vec(),
                    at,
                });
            };
            match &mut self.parser {
                Parser::Sse(sse) => sse.feed(chunk, &mut |e| {
                    push(e.name, e.id.map(str::to_string), e.data);
                }),
                Parser::Ndjson(ndjson) => ndjson.feed(chunk, &mut |e| {
                    let id =
                        e.id.map(str::to_string)
                            .or_else(|| parse::field_u64(e.data, "seq").map(|s| s.to_string()));
                    push(e.name, id, e.data);
                }),
            }
        }
    }

    /// Reads the next chunk of the body and drops it unparsed (a fast
    /// reader's loop): its length, 0 at the end.
    pub async fn skip_chunk(&mut self) -> Result<usize, Error> {
        loop {
            let Some(frame) = self.body.frame().await else {
                return Ok(0);
            };
            let frame = frame.map_err(|e| Error::Unexpected(format!("stream broke: {e}")))?;
            if let Some(chunk) = frame.data_ref() {
                if !chunk.is_empty() {
                    return Ok(chunk.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback() {
        assert_eq!(source(0, 4), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(source(5, 4), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(300, 1000), IpAddr::from([127, 0, 1, 45]));
        assert_eq!(source(7, 0), IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn answers_are_read_as_they_came() {
        let answer = Answer {
            bytes:
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}"
                    .to_vec(),
            end: End::Closed,
            after: Duration::ZERO,
        };
        assert_eq!(answer.status(), Some(408));
        assert_eq!(answer.header("connection").as_deref(), Some("close"));
        assert!(complete(&answer.bytes));
        assert!(!complete(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab"));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
        ));
        assert_eq!(status_of(b"garbage"), None);
        assert_eq!(status_of(b""), None);
    }
}
