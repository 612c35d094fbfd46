//! The accept loop: one task per connection, HTTP/1.1 or HTTP/2 (prior
//! knowledge), graceful shutdown.
//!
//! What `axum::serve` does, at less memory per idle connection: its
//! `hyper_util` auto builder reads the first bytes to tell HTTP/2 from
//! HTTP/1 and hands them back through a rewind buffer, which makes hyper's
//! read buffer grow from 8 KiB to 16 KiB on the first request of every
//! connection. Here the protocol is told by peeking at the socket, so hyper
//! gets the connection untouched and keeps its 8 KiB buffer.

use std::io;
use std::pin::{Pin, pin};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113,
/// section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a client that has sent part of the HTTP/2 preface gets to send
/// the rest (real clients send it in one write); then the connection is
/// served as HTTP/1, which refuses it.
const PREFACE_WAIT: Duration = Duration::from_secs(1);

/// How long a new connection may stay silent before it is closed: a socket
/// that never sends a byte holds a file descriptor for nothing.
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown`; then stops accepting,
/// asks every connection to finish (HTTP/1 closes after the response in
/// flight, HTTP/2 sends GOAWAY) and returns once all have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // Every connection task holds a receiver; `closed` resolves when the
    // last one is gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tokio::select! {
                    () = accept_failed(e) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        // Events are small and must leave at once: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let (router, shutdown, open) = (router.clone(), shutdown.clone(), open_rx.clone());
        tokio::spawn(async move {
            connection(tcp, router, shutdown).await;
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

async fn connection(tcp: TcpStream, router: Router, shutdown: CancellationToken) {
    // A request already sent is read and answered (with the 503 of a
    // gateway shutting down), not cut.
    let http2 = tokio::select! {
        biased;
        found = tokio::time::timeout(FIRST_BYTE_WAIT, speaks_http2(&tcp)) => match found {
            Ok(Ok(found)) => found,
            Ok(Err(_)) | Err(_) => return,
        },
        () = shutdown.cancelled() => return,
    };
    let io = TokioIo::new(tcp);
    let service = TowerToHyperService::new(router);
    let result = if http2 {
        // Rare behind the CDN, and its state is large: on the heap, so that
        // every HTTP/1 connection's task does not reserve room for it.
        Box::pin(async {
            let conn = http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
            until_done(pin!(conn), &shutdown).await
        })
        .await
    } else {
        let conn = pin!(http1::Builder::new().serve_connection(io, service));
        until_done(conn, &shutdown).await
    };
    if let Err(error) = result {
        tracing::trace!(%error, "Connection failed");
    }
}

/// A connection that can be asked to finish: hyper's HTTP/1 and HTTP/2.
trait Graceful: Future {
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

/// Drives `conn` (pinned where it lives, so it is stored once) to its end;
/// on `shutdown` it is asked to finish gracefully.
async fn until_done<C: Graceful>(mut conn: Pin<&mut C>, shutdown: &CancellationToken) -> C::Output {
    tokio::select! {
        biased;
        done = conn.as_mut() => return done,
        () = shutdown.cancelled() => {}
    }
    conn.as_mut().finish();
    conn.await
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
