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
//! While the response is written the connection is watched as hyper
//! watches it: a client that closes is noticed (a one-byte peek, no
//! buffer), a client that stops reading is closed after `send_timeout` (the
//! socket is [`Watched`], and the task drives this as it drives hyper). A
//! body that fails ends the connection without the last chunk, so the
//! client sees the response cut. When the response is complete and the
//! connection may be kept, the socket goes to hyper for the next requests,
//! idle from then on; requests the client pipelined behind the `GET` are
//! still in the socket for it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
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

/// Frames written together at most, and the bytes they hold: a batch
/// waiting for a slow reader holds no more than this beyond the socket.
const BATCH_FRAMES: usize = 16;
const BATCH_BYTES: usize = 16 * 1024;

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

/// One data frame of a batch, with its chunk's size line (`\r\n` ending the
/// chunk before it first, when there was one).
struct Piece {
    size: [u8; 20],
    size_len: u8,
    data: Bytes,
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
    if io.write_all(&head).await.is_err() {
        return Written::Cut;
    }
    drop(head);
    let mut body = response.into_body();
    let written = match framing {
        Framing::None => Ok(true),
        Framing::Length(length) => write_body(io, &mut body, false, Some(length)).await,
        Framing::Chunked => write_body(io, &mut body, true, None).await,
    };
    drop(body);
    match written {
        Ok(true) if io.flush().await.is_ok() => {
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

/// Writes the body, `chunked` or as `length` bytes; `Ok(false)`
/// when it was cut: the client closed, or the body failed or sent more
/// than its length.
async fn write_body<I>(
    io: &mut Watched<I>,
    body: &mut Tracked,
    chunked: bool,
    mut length: Option<u64>,
) -> io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Peek + Unpin,
{
    // Peeking stops once the client sent more (a pipelined request): the
    // socket stays readable then, and its bytes are hyper's.
    let mut watching = true;
    let mut ended = false;
    let mut started = false;
    while !ended {
        let mut batch: Vec<Piece> = Vec::new();
        let next = std::future::poll_fn(|cx| {
            let mut bytes = 0;
            loop {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        bytes += data.len();
                        batch.push(piece(data, chunked, started || !batch.is_empty()));
                        if batch.len() >= BATCH_FRAMES || bytes >= BATCH_BYTES {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        tracing::debug!(%error, "A response body failed; connection closed");
                        return Poll::Ready(Err(()));
                    }
                    Poll::Ready(None) => {
                        ended = true;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending if !batch.is_empty() => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            if watching {
                match ready_or_pending(io.get_ref().poll_peek(cx, &mut [0u8; 1])) {
                    Some(Ok(0) | Err(_)) => return Poll::Ready(Err(())),
                    Some(Ok(_)) => watching = false,
                    None => {}
                }
            }
            Poll::Pending
        })
        .await;
        if next.is_err() {
            return Ok(false);
        }
        if let Some(left) = &mut length {
            let bytes: u64 = batch.iter().map(|piece| piece.data.len() as u64).sum();
            if bytes > *left {
                tracing::error!("A response body is longer than its content-length; cut");
                return Ok(false);
            }
            *left -= bytes;
            if ended && *left > 0 {
                tracing::error!("A response body is shorter than its content-length; cut");
                return Ok(false);
            }
        }
        started |= !batch.is_empty();
        let last: &[u8] = match (chunked && ended, started) {
            (false, _) => b"",
            (true, true) => b"\r\n0\r\n\r\n",
            (true, false) => b"0\r\n\r\n",
        };
        write_batch(io, &batch, last).await?;
    }
    Ok(true)
}

fn ready_or_pending<T>(poll: Poll<T>) -> Option<T> {
    match poll {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

/// A data frame as a piece of a batch: its chunk's size line, after the end
/// of the chunk before when `after` one.
fn piece(data: Bytes, chunked: bool, after: bool) -> Piece {
    let mut size = [0u8; 20];
    let mut size_len = 0;
    if chunked {
        let mut put = |bytes: &[u8]| {
            size[size_len..size_len + bytes.len()].copy_from_slice(bytes);
            size_len += bytes.len();
        };
        if after {
            put(b"\r\n");
        }
        let mut hex = [0u8; 16];
        let mut at = hex.len();
        let mut left = data.len();
        loop {
            at -= 1;
            hex[at] = b"0123456789abcdef"[left % 16];
            left /= 16;
            if left == 0 {
                break;
            }
        }
        put(&hex[at..]);
        put(b"\r\n");
    }
    Piece {
        size,
        size_len: size_len as u8,
        data,
    }
}

/// Writes a batch's pieces and then `last`, in as few writes as the socket
/// takes.
async fn write_batch<I>(io: &mut Watched<I>, batch: &[Piece], last: &[u8]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2 + 1);
    for piece in batch {
        if piece.size_len > 0 {
            slices.push(IoSlice::new(&piece.size[..usize::from(piece.size_len)]));
        }
        slices.push(IoSlice::new(&piece.data));
    }
    if !last.is_empty() {
        slices.push(IoSlice::new(last));
    }
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// The first request's answer as a connection [`until_done`] drives: asked
/// to finish, it closes after the response instead of keeping the
/// connection.
///
/// [`until_done`]: super::until_done
pub(crate) struct Answering<F> {
    pub(crate) future: Pin<Box<F>>,
    pub(crate) finishing: Arc<AtomicBool>,
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<F: Future> Graceful for Answering<F> {
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
        let first = piece(Bytes::from(vec![b'a'; 300]), true, false);
        assert_eq!(&first.size[..usize::from(first.size_len)], b"12c\r\n");
        let next = piece(Bytes::from_static(b"a"), true, true);
        assert_eq!(&next.size[..usize::from(next.size_len)], b"\r\n1\r\n");
        let raw = piece(Bytes::from_static(b"a"), false, true);
        assert_eq!(raw.size_len, 0);
    }
}
