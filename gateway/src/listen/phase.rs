//! Where a connection is between requests, and how long it may stay there.
//!
//! A connection is always in one phase, each with its own bound:
//!
//! - **head**: a request head is arriving (from the connection's start, or
//!   from the first byte after an idle time): it must be complete within
//!   `head_timeout`, else the client gets `408` and the connection closes;
//! - **busy**: requests are being answered: the body's own bounds
//!   (`body_timeout`, the stream's lifetime and idle time) apply, none here;
//! - **idle**: between requests of a kept-alive connection, closed after
//!   `keep_alive_timeout`.
//!
//! Whatever the phase, a connection whose answer cannot be written (the
//! client stopped reading: its socket is full) is closed after
//! `send_timeout` without progress. hyper stops asking a response body for
//! more while it cannot write, so a stream's own lifetime and idle time
//! would never be looked at again, and the stream would hold its slot for
//! as long as the client held the socket.
//!
//! The phase changes where hyper does its work: a byte read while idle
//! starts a head ([`Watched`], the socket wrapper), a request handed to the
//! service makes the connection busy and its response's end makes it idle
//! again ([`Busy`], held by the request and then its body). All of that
//! happens while the connection's task polls hyper, so the task reads the
//! phase right after and re-arms its one timer when the deadline moved.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::framing::FramingWatch;

/// The phase of a connection; see the module's description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Head { since: Instant },
    Busy { requests: usize },
    Idle { since: Instant },
}

/// The phase bound that ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The request head did not arrive in time.
    Head,
    /// The connection stayed idle too long.
    Idle,
    /// Nothing could be written for too long.
    Send,
}

impl Expired {
    /// The metrics' label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Idle => "idle",
            Self::Send => "send",
        }
    }
}

/// The time bounds of a connection's phases.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PhaseLimits {
    pub head: Duration,
    pub idle: Duration,
    pub send: Duration,
}

/// What a connection's socket, service and task share.
#[derive(Debug)]
pub(crate) struct ConnState {
    phase: Mutex<Phase>,
    /// Since when a write has been waiting for the socket, if one is.
    blocked: Mutex<Option<Instant>>,
    /// Bytes read start a head only on HTTP/1 (HTTP/2 reads pings and
    /// window updates between requests).
    heads_from_bytes: bool,
    /// A head carried both `Content-Length` and `Transfer-Encoding`.
    smuggling: AtomicBool,
}

impl ConnState {
    /// A connection accepted at `since`: its first head is due from then.
    pub(crate) fn new(since: Instant, http1: bool) -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Head { since }),
            blocked: Mutex::new(None),
            heads_from_bytes: http1,
            smuggling: AtomicBool::new(false),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection is to be closed, and why: its phase's end, or
    /// a write's (whichever is first); `None` while busy and writing.
    pub(crate) fn deadline(&self, limits: PhaseLimits) -> Option<(Instant, Expired)> {
        let phase = match *self.phase() {
            Phase::Head { since } => Some((since + limits.head, Expired::Head)),
            Phase::Idle { since } => Some((since + limits.idle, Expired::Idle)),
            Phase::Busy { .. } => None,
        };
        let blocked = *self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let send = blocked.map(|since| (since + limits.send, Expired::Send));
        match (phase, send) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// A write waits for the socket (`true`), or went through (`false`).
    fn write_blocked(&self, blocked: bool) {
        *self.blocked.lock().unwrap_or_else(PoisonError::into_inner) = blocked.then(Instant::now);
    }

    /// Whether a head of this connection carried both framing headers:
    /// its requests are refused and it is closed.
    pub(crate) fn smuggling(&self) -> bool {
        self.smuggling.load(Ordering::Relaxed)
    }

    /// A request arrived: the connection is busy until its response ends.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
        };
        Busy(Arc::clone(self))
    }

    fn read(&self, bytes: &[u8]) {
        if !self.heads_from_bytes || bytes.is_empty() {
            return;
        }
        let mut phase = self.phase();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Head {
                since: Instant::now(),
            };
        }
    }
}

/// A request in progress: held by the request, then by its response body;
/// when the last one of a connection is dropped, the connection is idle.
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut phase = self.0.phase();
        if let Phase::Busy { requests } = *phase {
            *phase = if requests > 1 {
                Phase::Busy {
                    requests: requests - 1,
                }
            } else {
                Phase::Idle {
                    since: Instant::now(),
                }
            };
        }
    }
}

/// A socket that reports what is read from it to its connection's state:
/// the start of a head, and heads with both framing headers.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    io: T,
    state: Arc<ConnState>,
    /// HTTP/1 only: HTTP/2 frames its messages itself.
    framing: Option<FramingWatch>,
    /// A write is waiting for the socket (told to the state when it
    /// changes, not on every write).
    blocked: bool,
}

impl<T> Watched<T> {
    pub(crate) fn new(io: T, state: Arc<ConnState>) -> Self {
        let framing = state.heads_from_bytes.then(FramingWatch::default);
        Self {
            io,
            state,
            framing,
            blocked: false,
        }
    }

    /// Tells the state when a write starts or stops waiting.
    fn wrote<R>(&mut self, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        let blocked = result.is_pending();
        if blocked != self.blocked {
            self.blocked = blocked;
            self.state.write_blocked(blocked);
        }
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            this.state.read(read);
            if let Some(framing) = &mut this.framing {
                if framing.feed(read) {
                    this.state.smuggling.store(true, Ordering::Relaxed);
                }
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T> Watched<T> {
    /// The socket, to look at without reading.
    pub(crate) fn get_ref(&self) -> &T {
        &self.io
    }

    /// The socket back, once hyper is done with it.
    pub(crate) fn into_inner(self) -> T {
        self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const LIMITS: PhaseLimits = PhaseLimits {
        head: Duration::from_secs(10),
        idle: Duration::from_secs(65),
        send: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_moves_from_head_to_busy_to_idle_to_head() {
        let start = Instant::now();
        let state = ConnState::new(start, true);
        assert_eq!(
            state.deadline(LIMITS),
            Some((start + LIMITS.head, Expired::Head))
        );
        let request = state.busy();
        assert_eq!(state.deadline(LIMITS), None);
        // Two requests at once (HTTP/2): busy until both end.
        let second = state.busy();
        drop(request);
        assert_eq!(state.deadline(LIMITS), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(second);
        let idle_from = Instant::now();
        assert_eq!(
            state.deadline(LIMITS),
            Some((idle_from + LIMITS.idle, Expired::Idle))
        );
        // Nothing read: still idle; a byte read: a head is due.
        tokio::time::advance(Duration::from_secs(20)).await;
        let (mut client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, Arc::clone(&state));
        tokio::io::AsyncWriteExt::write_all(&mut client, b"G")
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        watched.read_exact(&mut byte).await.unwrap();
        assert_eq!(
            state.deadline(LIMITS),
            Some((Instant::now() + LIMITS.head, Expired::Head))
        );
        // More bytes of the same head do not move its deadline.
        let head_from = Instant::now();
        tokio::time::advance(Duration::from_secs(4)).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"E")
            .await
            .unwrap();
        watched.read_exact(&mut byte).await.unwrap();
        assert_eq!(
            state.deadline(LIMITS),
            Some((head_from + LIMITS.head, Expired::Head))
        );
        assert!(!state.smuggling());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_for_the_socket_has_its_own_deadline() {
        use tokio::io::AsyncWriteExt;
        let state = ConnState::new(Instant::now(), true);
        let _request = state.busy();
        let (mut client, server) = tokio::io::duplex(16);
        let mut watched = Watched::new(server, Arc::clone(&state));
        watched.write_all(&[0; 16]).await.unwrap();
        assert_eq!(state.deadline(LIMITS), None, "busy, and writing");
        // The client reads nothing: the next write waits.
        let blocked_at = Instant::now();
        let write = tokio::time::timeout(Duration::from_secs(1), watched.write_all(&[0; 8])).await;
        assert!(write.is_err());
        assert_eq!(
            state.deadline(LIMITS),
            Some((blocked_at + LIMITS.send, Expired::Send))
        );
        // It reads: the write goes through, and the deadline is gone.
        let mut buf = [0u8; 16];
        client.read_exact(&mut buf).await.unwrap();
        watched.write_all(&[0; 8]).await.unwrap();
        assert_eq!(state.deadline(LIMITS), None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_bytes_do_not_start_heads_and_smuggling_is_flagged_on_http1() {
        let state = ConnState::new(Instant::now(), false);
        drop(state.busy());
        let idle = state.deadline(LIMITS);
        let (mut client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, Arc::clone(&state));
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping")
            .await
            .unwrap();
        let mut bytes = [0u8; 4];
        watched.read_exact(&mut bytes).await.unwrap();
        assert_eq!(state.deadline(LIMITS), idle);

        let state = ConnState::new(Instant::now(), true);
        let (mut client, server) = tokio::io::duplex(256);
        let mut watched = Watched::new(server, Arc::clone(&state));
        let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut client, head)
            .await
            .unwrap();
        let mut read = vec![0u8; head.len()];
        watched.read_exact(&mut read).await.unwrap();
        assert!(state.smuggling());
    }
}
