//! The accept loop: one task per connection, HTTP/1.1 or HTTP/2 (prior
//! knowledge), every phase of a connection bounded, graceful shutdown.
//!
//! What `axum::serve` does, at less memory per idle connection: its
//! `hyper_util` auto builder reads the first bytes to tell HTTP/2 from
//! HTTP/1 and hands them back through a rewind buffer, which makes hyper's
//! read buffer grow from 8 KiB to 16 KiB on the first request of every
//! connection. Here the protocol is told by peeking at the socket, so hyper
//! gets the connection untouched and keeps its 8 KiB buffer.
//!
//! The bounds, and what happens at each:
//!
//! - connections: `max_connections` at once, and
//!   `max_connections_per_client` from one address; one more is served
//!   only to be refused (503 or 429, with `Retry-After`, then closed), and
//!   past [`REFUSING`] of those at once, closed as soon as accepted;
//! - the request head: complete within `head_timeout` (else 408 and closed,
//!   see [`phase`]), at most `max_head_bytes` (else hyper's 431), and
//!   well-formed as HTTP/1.1 asks ([`strict`]);
//! - between requests: `keep_alive_timeout`, then closed;
//! - writing: a client that takes nothing for `send_timeout` is closed,
//!   whatever its stream's own bounds (see [`phase`]);
//! - the body and the stream have their own bounds (`body_timeout`, a
//!   route's lifetime and idle time).

mod framing;
mod phase;
mod service;
pub mod stream;
pub mod strict;

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clients::{ClientKey, Slot, Tally};
use crate::server::Gateway;
use phase::{ConnState, Expired, PhaseLimits, Watched};
use service::{ConnService, Refusal};

/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113,
/// section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a client that has sent part of the HTTP/2 preface gets to send
/// the rest (real clients send it in one write); then the connection is
/// served as HTTP/1, which refuses it.
const PREFACE_WAIT: Duration = Duration::from_secs(1);

/// Connections served only to be refused, at once. They are short (one
/// request, within `head_timeout`); past this many, new connections over a
/// limit are closed as soon as they are accepted, so that a flood of them
/// cannot take the file descriptors the limits protect.
pub const REFUSING: usize = 1024;

/// What every connection task needs.
#[derive(Debug)]
struct Shared {
    gateway: Arc<Gateway>,
    router: Router,
    shutdown: CancellationToken,
    phases: PhaseLimits,
}

impl Shared {
    /// The service for the requests of a connection from `peer`.
    fn service(
        &self,
        state: &Arc<ConnState>,
        peer: SocketAddr,
        refusal: Option<Refusal>,
        http1: bool,
    ) -> ConnService {
        ConnService {
            gateway: Arc::clone(&self.gateway),
            router: self.router.clone(),
            state: Arc::clone(state),
            peer,
            refusal,
            http1,
        }
    }

    fn new(gateway: Arc<Gateway>, router: Router, shutdown: CancellationToken) -> Self {
        let phases = PhaseLimits {
            head: gateway.config.head_timeout,
            idle: gateway.config.keep_alive_timeout,
            send: gateway.config.send_timeout,
        };
        Self {
            gateway,
            router,
            shutdown,
            phases,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting,
/// asks every connection to finish (HTTP/1 closes after the response in
/// flight, HTTP/2 sends GOAWAY) and returns once all have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let config = &gateway.config;
    let connections = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    // Behind a trusted proxy every connection comes from it.
    let per_client = Tally::new(if config.client_ip_header.is_some() {
        0
    } else {
        config.max_connections_per_client
    });
    let shared = Arc::new(Shared::new(Arc::clone(&gateway), router, shutdown.clone()));
    // Every connection task holds a receiver; `closed` resolves when the
    // last one is gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tokio::select! {
                    () = accept_failed(e) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        let admitted = match Arc::clone(&connections).try_acquire_owned() {
            Ok(permit) => match per_client.take(ClientKey::of(peer.ip())) {
                Some(slot) => Ok((permit, slot)),
                None => Err(Refusal::ClientConnections),
            },
            Err(_) => Err(Refusal::Connections),
        };
        // Held while the connection is open: its place among
        // `max_connections` and its client's, or among those refused.
        let (held, refusal) = match admitted {
            Ok(held) => (held, None),
            Err(refusal) => match Arc::clone(&refusing).try_acquire_owned() {
                Ok(permit) => ((permit, Slot::unlimited()), Some(refusal)),
                Err(_) => {
                    gateway.metrics.connection_refused(refusal.as_str(), true);
                    continue;
                }
            },
        };
        if let Some(refusal) = refusal {
            gateway.metrics.connection_refused(refusal.as_str(), false);
        }
        // Events are small and must leave at once: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let (shared, open) = (Arc::clone(&shared), open_rx.clone());
        tokio::spawn(async move {
            connection(tcp, peer, &shared, refusal).await;
            drop(held);
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// A failed accept: the client's own failures are skipped; anything else
/// (out of file descriptors, say) is logged and waited out for a second,
/// which may free some, instead of spinning.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "Accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn connection(tcp: TcpStream, peer: SocketAddr, shared: &Shared, refusal: Option<Refusal>) {
    let accepted = Instant::now();
    let shutdown = &shared.shutdown;
    // A request already sent is read and answered (with the 503 of a
    // gateway shutting down), not cut. A connection that sends nothing
    // within the head's time is closed.
    let head_due = accepted + shared.phases.head;
    let http2 = tokio::select! {
        biased;
        found = tokio::time::timeout_at(head_due, speaks_http2(&tcp)) => match found {
            Ok(Ok(found)) => found,
            Ok(Err(_)) => return,
            Err(_) => {
                shared.gateway.metrics.connection_timed_out(Expired::Head.as_str());
                return;
            }
        },
        () = shutdown.cancelled() => return,
    };
    if !http2 {
        let state = ConnState::new(accepted, true);
        let mut io = Watched::new(tcp, Arc::clone(&state));
        if refusal.is_none() {
            let max_head = shared.gateway.config.max_head_bytes;
            if let Some(head) = peek_head(io.get_ref(), max_head).await {
                match answer_first(&mut io, head, &state, peer, shared).await {
                    stream::Written::Complete => {}
                    stream::Written::Cut => return,
                }
            }
        }
        // On the heap: a connection answered above does not reserve room
        // for hyper's state until it comes here.
        if let Some(tcp) = Box::pin(http1(io, state, peer, shared, refusal)).await {
            request_timeout(&tcp, shared.phases.head);
        }
        return;
    }
    if refusal.is_some() {
        // HTTP/2 cannot be told to close after one answer as HTTP/1 can
        // (its connection would idle on): closed at once.
        return;
    }
    let state = ConnState::new(accepted, false);
    let io = TokioIo::new(Watched::new(tcp, Arc::clone(&state)));
    let service = shared.service(&state, peer, None, false);
    let max_head = shared.gateway.config.max_head_bytes;
    // Rare behind the CDN, and its state is large: on the heap, so that
    // every HTTP/1 connection's task does not reserve room for it.
    Box::pin(async {
        let conn = http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .serve_connection(io, service);
        let mut conn = pin!(conn);
        match until_done(conn.as_mut(), &state, shared).await {
            Ok(result) => log_failure(result),
            Err(expired) => shared
                .gateway
                .metrics
                .connection_timed_out(expired.as_str()),
        }
    })
    .await;
}

/// The connection's first request head, when it is complete in the bytes
/// already there and one [`stream`] answers; only peeked at.
async fn peek_head(tcp: &TcpStream, max_head: usize) -> Option<stream::Head> {
    let mut bytes = vec![0u8; stream::PEEK_BYTES.min(max_head)];
    let peeked = tcp.peek(&mut bytes).await.ok()?;
    stream::classify(&bytes[..peeked], max_head)
}

/// Answers the connection's first request without hyper ([`stream`]),
/// within the bounds of the connection's phases.
async fn answer_first(
    io: &mut Watched<TcpStream>,
    head: stream::Head,
    state: &Arc<ConnState>,
    peer: SocketAddr,
    shared: &Shared,
) -> stream::Written {
    let service = shared.service(state, peer, None, true);
    let finishing = AtomicBool::new(false);
    let mut answering = stream::Answering {
        future: Box::pin(stream::answer(io, head, &service, &finishing)),
        finishing: &finishing,
    };
    match until_done(Pin::new(&mut answering), state, shared).await {
        Ok(written) => written,
        Err(expired) => {
            shared
                .gateway
                .metrics
                .connection_timed_out(expired.as_str());
            stream::Written::Cut
        }
    }
}

/// Serves an HTTP/1 connection over `io` in the phase `state` holds; gives
/// the socket back when a request head did not arrive in time, for the 408.
async fn http1<I>(
    io: Watched<I>,
    state: Arc<ConnState>,
    peer: SocketAddr,
    shared: &Shared,
    refusal: Option<Refusal>,
) -> Option<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = shared.service(&state, peer, refusal, true);
    let mut conn = http1::Builder::new()
        .max_header_size(shared.gateway.config.max_head_bytes)
        .max_buf_size((shared.gateway.config.max_head_bytes + 8192).max(64 * 1024))
        .keep_alive(refusal.is_none())
        .serve_connection(TokioIo::new(io), service);
    match until_done(Pin::new(&mut conn), &state, shared).await {
        Ok(result) => {
            log_failure(result);
            None
        }
        Err(expired) => {
            shared
                .gateway
                .metrics
                .connection_timed_out(expired.as_str());
            let timed_out = expired == Expired::Head;
            timed_out.then(|| conn.into_parts().io.into_inner().into_inner())
        }
    }
}

/// Serves one HTTP/1 connection over any byte stream exactly as the
/// listener serves an accepted socket (limits, strict checks, phases),
/// from `peer`; for the fuzzer, which sends request heads through it in
/// memory. A head that does not arrive in time ends it, without the 408.
#[doc(hidden)]
pub async fn serve_http1_io<I>(gateway: Arc<Gateway>, io: I, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (router, shutdown) = (crate::app(Arc::clone(&gateway)), gateway.shutdown_token());
    let shared = Shared::new(gateway, router, shutdown);
    let state = ConnState::new(Instant::now(), true);
    http1(
        Watched::new(io, Arc::clone(&state)),
        state,
        peer,
        &shared,
        None,
    )
    .await;
}

fn log_failure(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::trace!(%error, "Connection failed");
    }
}

/// Tells a client whose head did not arrive in time (408), as far as its
/// socket takes it at once, before the connection closes.
fn request_timeout(tcp: &TcpStream, after: Duration) {
    let body = serde_json::json!({
        "status": 408,
        "error": "request_timeout",
        "message": format!("the request head did not arrive within {after:?}"),
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(response.as_bytes());
}

/// A connection that can be asked to finish: hyper's HTTP/1 and HTTP/2, and
/// a first request answered without hyper ([`stream::Answering`]).
pub(crate) trait Graceful: Future {
    fn finish(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::Connection<I, S>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for http2::Connection<I, S, E>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives `conn` to its end, within the bounds of its phases; on
/// `shutdown` it is asked to finish gracefully. `Err` when a phase's time
/// ran out (the connection is then dropped, which closes it).
async fn until_done<C: Graceful>(
    mut conn: Pin<&mut C>,
    state: &ConnState,
    shared: &Shared,
) -> Result<C::Output, Expired> {
    let cancelled = pin!(shared.shutdown.cancelled());
    let mut shutdown = crate::shutdown::Shutdown::new(cancelled);
    let mut finishing = false;
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed = None;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ok(done));
            }
            if !finishing && Pin::new(&mut shutdown).poll(cx).is_ready() {
                finishing = true;
                conn.as_mut().finish();
                // Finishing may end an idle connection at once.
                continue;
            }
            break;
        }
        // Polling hyper is what moves the phase: look at it right after.
        if let Some((due, expired)) = state.deadline(shared.phases) {
            if armed != Some(due) {
                timer.as_mut().reset(due);
                armed = Some(due);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(expired));
            }
        }
        Poll::Pending
    })
    .await
}

/// Whether the client opens with the HTTP/2 preface. Only peeked: whatever
/// it sent stays in the socket for hyper to read. One byte that differs is
/// enough to tell (every HTTP/1 method differs by its second byte at most).
async fn speaks_http2(tcp: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; PREFACE.len()];
    let started = tokio::time::Instant::now();
    loop {
        let n = tcp.peek(&mut buf).await?;
        // Closed before a byte: HTTP/1 sees the end and closes.
        if n == 0 || buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface: the socket stays readable, so wait a little
        // for the rest rather than peek in a busy loop.
        if started.elapsed() >= PREFACE_WAIT {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_preface_is_told_apart_without_being_read() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(!speaks_http2(&server).await.unwrap());
        let mut first = [0u8; 4];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET ");

        let (mut client, mut server) = pair().await;
        // A preface in two parts: the rest is waited for.
        client.write_all(&PREFACE[..5]).await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(&PREFACE[5..]).await.unwrap();
            client
        });
        assert!(speaks_http2(&server).await.unwrap());
        let _client = writer.await.unwrap();
        let mut all = [0u8; PREFACE.len()];
        server.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..], PREFACE);

        // POST shares the first byte only.
        let (mut client, server) = pair().await;
        client
            .write_all(b"POST /publish HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(!speaks_http2(&server).await.unwrap());
    }
}
