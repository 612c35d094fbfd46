//! The first request of an HTTP/1 connection, answered without hyper when
//! it is a plain `GET`: what an idle stream costs drops from hyper's two
//! 8 KiB per-connection buffers (11.6 KB per stream in `idle.sh`'s bare
//! hyper server) to the socket and the stream's own state (1.3 KB with no
//! HTTP library at all); BENCHMARKS.md has the runs.
//!
//! The head is only peeked at first, so whatever is not taken here reaches
//! hyper untouched: a head that is not complete in the first bytes, any
//! other method, a body (`Content-Length`, `Transfer-Encoding`), `Expect`,
//! `Upgrade`, HTTP/1.0, anything `httparse` refuses or `http` cannot hold,
//! and every connection refused at the limits. What is taken goes through
//! the same service as hyper's requests (strict checks, the routes, the
//! connection's phase), and its response is written as hyper writes one:
//! a `date`, `content-length` when the body's size is known, else chunked;
//! `connection: close` when either side asked for it.
//!
//! The body's frames are read ahead of the socket while it drains, up to
//! 16 frames or 64 KiB (hyper's own bounds for its write queue, so a slow
//! reader holds no more than under hyper), and written with their chunk
//! size lines in one `writev` as far as the socket takes them.
//!
//! While the response is written the connection is watched as hyper
//! watches it: a client that closes is noticed (a one-byte peek, no
//! buffer), a client that stops reading is closed after `send_timeout` (the
//! socket is [`Watched`], and the task drives this as it drives hyper). A
//! body that fails ends the connection without the last chunk, so the
//! client sees the response cut. When the response is complete and the
//! connection may be kept, the socket goes to hyper for the next requests,
//! idle from then on; requests the client pipelined behind the `GET` are
//! still in the socket for it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Uri, Version};
use bytes::Bytes;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::Graceful;
use super::phase::Watched;
use super::service::{ConnService, Tracked};

/// Most header fields taken here (hyper's default too); a head with more
/// goes to hyper.
pub const MAX_HEADERS: usize = 100;

/// At most this much of a connection's first bytes is peeked for a head.
pub const PEEK_BYTES: usize = 8192;

/// A socket whose next bytes can be looked at without taking them.
pub(crate) trait Peek {
    fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
}

impl Peek for TcpStream {
    fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        TcpStream::poll_peek(self, cx, &mut buf)
    }
}

/// A request head taken here.
#[derive(Debug)]
pub struct Head {
    /// Its length in bytes, to be read off the socket.
    pub len: usize,
    /// The request, with an empty body.
    pub request: Request<Body>,
    /// The client asked for the connection to close after it.
    pub close: bool,
}

/// The request head at the start of `bytes`, when it is one answered here:
/// complete, at most `max_head` bytes, `GET` over HTTP/1.1, an origin-form
/// target, no body and nothing asking for more than a response. `None`
/// leaves the connection to hyper.
pub fn classify(bytes: &[u8], max_head: usize) -> Option<Head> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        _ => return None,
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let target = parsed.path.filter(|path| path.starts_with('/'))?;
    let uri: Uri = target.parse().ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut close = false;
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::EXPECT,
            header::UPGRADE,
        ]
        .contains(&name)
        {
            return None;
        }
        let value = HeaderValue::from_bytes(field.value).ok()?;
        if name == header::CONNECTION {
            for option in value.to_str().ok()?.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("upgrade") {
                    return None;
                }
            }
        }
        headers.append(name, value);
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(Head {
        len,
        request,
        close,
    })
}

/// How a response's body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body at all (`204`, `304`).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// The response head as hyper writes it, and how its body is framed.
fn response_head(
    response: &Response<Tracked>,
    close: bool,
    date: &str,
) -> Result<(Vec<u8>, Framing), ()> {
    let status = response.status();
    let headers = response.headers();
    let framing = if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        Framing::None
    } else if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length = length.to_str().map_err(drop)?;
        Framing::Length(length.trim().parse().map_err(drop)?)
    } else {
        match response.body().size_hint().exact() {
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        }
    };
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || (name == header::CONNECTION && close)
            || (name == header::CONTENT_LENGTH && framing == Framing::None)
        {
            continue;
        }
        line(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::Length(length) if !headers.contains_key(header::CONTENT_LENGTH) => {
            line(&mut head, b"content-length", length.to_string().as_bytes());
        }
        Framing::Chunked => line(&mut head, b"transfer-encoding", b"chunked"),
        Framing::Length(_) | Framing::None => {}
    }
    if close {
        line(&mut head, b"connection", b"close");
    }
    if !headers.contains_key(header::DATE) {
        line(&mut head, b"date", date.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    Ok((head, framing))
}

fn line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Whether a response asks for its connection to be closed.
fn asks_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|option| option.trim().eq_ignore_ascii_case("close"))
        })
    })
}

/// How the response's writing ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Completely: the connection may carry more requests.
    Complete,
    /// Cut: the client left, a write failed, or the body failed.
    Cut,
}

/// Answers `head`, already peeked at the start of `io`, and writes its
/// response. Reads the head off the socket first.
pub(crate) async fn answer<I>(
    io: &mut Watched<I>,
    head: Head,
    service: &ConnService,
    finishing: &AtomicBool,
) -> Written
where
    I: AsyncRead + AsyncWrite + Peek + Unpin,
{
    let Head {
        len,
        request,
        close,
    } = head;
    let mut taken = vec![0u8; len];
    if io.read_exact(&mut taken).await.is_err() {
        return Written::Cut;
    }
    drop(taken);
    let Ok(response) = service.answer(request).await;
    let close = close || asks_close(response.headers()) || finishing.load(Ordering::Relaxed);
    let date = httpdate::fmt_http_date(SystemTime::now());
    let Ok((head, framing)) = response_head(&response, close, &date) else {
        tracing::error!("A response's content-length is not a number; connection closed");
        return Written::Cut;
    };
    let mut body = response.into_body();
    let mut writer = Writer {
        body: &mut body,
        chunked: framing == Framing::Chunked,
        left: match framing {
            Framing::Length(length) => Some(length),
            Framing::None | Framing::Chunked => None,
        },
        queue: VecDeque::with_capacity(2),
        front_written: 0,
        queued_bytes: 0,
        chunks: false,
        ended: framing == Framing::None,
        watching: true,
    };
    writer.push(Piece {
        prefix: Prefix::NONE,
        data: Bytes::from(head),
    });
    let written = std::future::poll_fn(|cx| writer.poll(io, cx)).await;
    drop(writer);
    drop(body);
    match written {
        Ok(()) if io.flush().await.is_ok() => {
            if close || finishing.load(Ordering::Relaxed) {
                let _ = io.shutdown().await;
                Written::Cut
            } else {
                Written::Complete
            }
        }
        _ => Written::Cut,
    }
}

/// Bytes written before a piece's data: a chunk's size line (with the
/// `\r\n` ending the chunk before), or the body's last chunk.
#[derive(Clone, Copy)]
struct Prefix {
    bytes: [u8; 20],
    len: u8,
}

impl Prefix {
    const NONE: Self = Self {
        bytes: [0; 20],
        len: 0,
    };

    fn of(parts: &[&[u8]]) -> Self {
        let mut prefix = Self::NONE;
        for part in parts {
            let at = usize::from(prefix.len);
            prefix.bytes[at..at + part.len()].copy_from_slice(part);
            prefix.len += part.len() as u8;
        }
        prefix
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// A chunk's size line for `len` bytes, after another chunk or not.
    fn chunk(len: usize, after: bool) -> Self {
        let mut hex = [0u8; 16];
        let mut at = hex.len();
        let mut left = len;
        loop {
            at -= 1;
            hex[at] = b"0123456789abcdef"[left % 16];
            left /= 16;
            if left == 0 {
                break;
            }
        }
        let end: &[u8] = if after { b"\r\n" } else { b"" };
        Self::of(&[end, &hex[at..], b"\r\n"])
    }
}

/// What is queued to be written: a prefix, then data.
struct Piece {
    prefix: Prefix,
    data: Bytes,
}

impl Piece {
    fn len(&self) -> usize {
        usize::from(self.prefix.len) + self.data.len()
    }
}

/// Frames read ahead of the socket at most, and the bytes they hold
/// (hyper's own bounds for a connection's write queue): a slow reader
/// holds no more than this beyond its socket.
const QUEUE_FRAMES: usize = 16;
const QUEUE_BYTES: usize = 64 * 1024;

/// A response on its way out: the head, then the body's frames as they
/// come, framed, written while the next ones are read (as hyper does), in
/// as few writes as the socket takes.
struct Writer<'a> {
    body: &'a mut Tracked,
    chunked: bool,
    /// Bytes the body may still send (`content-length`).
    left: Option<u64>,
    queue: VecDeque<Piece>,
    /// Bytes of the front piece already written.
    front_written: usize,
    queued_bytes: usize,
    /// A chunk was queued before: the next size line ends it first.
    chunks: bool,
    ended: bool,
    /// Whether a client that leaves is still looked for; not once it sent
    /// more (a pipelined request): the socket stays readable then, and its
    /// bytes are hyper's.
    watching: bool,
}

/// A response cut short: the client left, a write failed, or the body
/// failed or did not match its length.
struct Cut;

impl Writer<'_> {
    /// Reads what the body has ready, within the queue's bounds.
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), Cut> {
        while !self.ended && self.queue.len() < QUEUE_FRAMES && self.queued_bytes < QUEUE_BYTES {
            match Pin::new(&mut *self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(left) = &mut self.left {
                        *left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                            tracing::error!(
                                "A response body is longer than its content-length; cut"
                            );
                            Cut
                        })?;
                    }
                    let prefix = if self.chunked {
                        Prefix::chunk(data.len(), self.chunks)
                    } else {
                        Prefix::NONE
                    };
                    self.chunks = true;
                    self.push(Piece { prefix, data });
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "A response body failed; connection closed");
                    return Err(Cut);
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    if self.left.is_some_and(|left| left > 0) {
                        tracing::error!("A response body is shorter than its content-length; cut");
                        return Err(Cut);
                    }
                    if self.chunked {
                        let last: &[u8] = if self.chunks {
                            b"\r\n0\r\n\r\n"
                        } else {
                            b"0\r\n\r\n"
                        };
                        self.push(Piece {
                            prefix: Prefix::of(&[last]),
                            data: Bytes::new(),
                        });
                    }
                }
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    fn push(&mut self, piece: Piece) {
        self.queued_bytes += piece.len();
        self.queue.push_back(piece);
    }

    /// Writes what is queued until the socket is full or the queue empty.
    fn write<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut Watched<I>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Cut>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); QUEUE_FRAMES * 2 + 2];
            let mut count = 0;
            let mut skip = self.front_written;
            for piece in &self.queue {
                for part in [piece.prefix.as_bytes(), &piece.data] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Cut)),
                Poll::Ready(Ok(written)) => written,
                Poll::Pending => return Poll::Pending,
            };
            self.queued_bytes -= written;
            self.front_written += written;
            while let Some(front) = self.queue.front() {
                if self.front_written < front.len() {
                    break;
                }
                self.front_written -= front.len();
                self.queue.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Drives the response to its end: `Ok` once all of it is written.
    fn poll<I: AsyncRead + AsyncWrite + Peek + Unpin>(
        &mut self,
        io: &mut Watched<I>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Cut>> {
        loop {
            self.fill(cx)?;
            if self.queue.is_empty() {
                if self.ended {
                    return Poll::Ready(Ok(()));
                }
                if self.watching {
                    match io.get_ref().poll_peek(cx, &mut [0u8; 1]) {
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Cut)),
                        Poll::Ready(Ok(_)) => self.watching = false,
                        Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
            ready!(self.write(io, cx))?;
        }
    }
}

/// The first request's answer as a connection [`until_done`] drives: asked
/// to finish, it closes after the response instead of keeping the
/// connection.
///
/// [`until_done`]: super::until_done
pub(crate) struct Answering<'a, F> {
    pub(crate) future: Pin<Box<F>>,
    pub(crate) finishing: &'a AtomicBool,
}

impl<F: Future> Future for Answering<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<F: Future> Graceful for Answering<'_, F> {
    fn finish(self: Pin<&mut Self>) {
        self.finishing.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Option<Head> {
        classify(text.as_bytes(), 16 * 1024)
    }

    #[test]
    fn a_plain_get_is_taken_with_its_length_and_fields() {
        let text = "GET /events?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nX: 1\r\nX: 2\r\n\r\nGET /next HTTP/1.1\r\n";
        let head = head(text).unwrap();
        assert_eq!(&text[..head.len], &text[..text.find("GET /next").unwrap()]);
        assert_eq!(head.request.uri(), "/events?x=1");
        assert_eq!(head.request.headers().get_all("x").iter().count(), 2);
        assert_eq!(head.request.headers()["accept"], "text/event-stream");
        assert!(!head.close);
        let close =
            self::head("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(close.unwrap().close);
    }

    #[test]
    fn whatever_is_not_a_plain_get_is_left_to_hyper() {
        for text in [
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ] {
            assert!(head(text).is_none(), "{text:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: 1\r\n")).collect();
        assert!(head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).is_none());
        let long = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(classify(long.as_bytes(), long.len() - 1).is_none());
        assert!(classify(long.as_bytes(), long.len()).is_some());
    }

    fn response(status: StatusCode, headers: &[(&str, &str)], body: Body) -> Response<Tracked> {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let state = super::super::phase::ConnState::new(tokio::time::Instant::now(), true);
        Tracked::wrap(response, state.busy())
    }

    fn written(response: &Response<Tracked>, close: bool) -> (String, Framing) {
        let (head, framing) =
            response_head(response, close, "Thu, 03 Dec 2026 00:00:00 GMT").unwrap();
        (String::from_utf8(head).unwrap(), framing)
    }

    #[test]
    fn a_response_head_is_framed_as_hyper_frames_it() {
        let stream = Body::from_stream(futures::stream::empty::<Result<Bytes, io::Error>>());
        let (head, framing) = written(
            &response(
                StatusCode::OK,
                &[("content-type", "text/event-stream")],
                stream,
            ),
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\ndate: Thu, 03 Dec 2026 00:00:00 GMT\r\n\r\n"
        );
        assert_eq!(framing, Framing::Chunked);
        let (head, framing) = written(
            &response(
                StatusCode::NOT_FOUND,
                &[("connection", "close")],
                Body::from("{}"),
            ),
            true,
        );
        assert_eq!(
            head,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nconnection: close\r\ndate: Thu, 03 Dec 2026 00:00:00 GMT\r\n\r\n"
        );
        assert_eq!(framing, Framing::Length(2));
        let (head, framing) = written(
            &response(
                StatusCode::NOT_MODIFIED,
                &[("content-length", "5")],
                Body::empty(),
            ),
            false,
        );
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(framing, Framing::None);
        let bad = response(StatusCode::OK, &[("content-length", "x")], Body::empty());
        assert!(response_head(&bad, false, "").is_err());
    }

    #[test]
    fn chunk_size_lines_end_the_chunk_before() {
        assert_eq!(Prefix::chunk(300, false).as_bytes(), b"12c\r\n");
        assert_eq!(Prefix::chunk(1, true).as_bytes(), b"\r\n1\r\n");
        assert_eq!(
            Prefix::chunk(usize::MAX, true).as_bytes(),
            b"\r\nffffffffffffffff\r\n"
        );
    }
}
