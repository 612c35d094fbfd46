//! `ceiling`: a bare hyper/tokio server that streams what the gateway's
//! firehose route streams — the ticker's events, `id`, `event: tick` and
//! `data: {"seq":n,"ts_us":t}` in SSE — in chunks of up to 64 KiB, as fast as
//! the client reads, with nothing else in the way. The firehose benchmark
//! compares the gateway to it.
//!
//! `ceiling [ADDR] [COUNT]` (default `127.0.0.1:0`, 2,000,000 events per
//! stream); prints `Listening on http://ADDR/`. `COUNT` 0 sends one event
//! and then holds the stream open without a byte more: the floor of what an
//! idle stream costs in hyper alone, for the idle benchmark.
//!
//! `ceiling ADDR 0 raw` holds the same idle streams without hyper: the
//! request head read into a buffer that is freed once it is answered, the
//! response head and the one event written as they are, and then nothing
//! kept but the socket and a task that waits for it to close. What an
//! HTTP/1 stream costs with no HTTP library's buffers at all: the floor
//! of a connection driver of our own, for the idle benchmark's evidence.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Response, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const CHUNK: usize = 64 * 1024;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let count: u64 = args.next().map_or(Ok(2_000_000), |c| c.parse())?;
    let raw = match args.next().as_deref() {
        None => false,
        Some("raw") if count == 0 => true,
        Some(other) => anyhow::bail!("unknown mode {other:?} (only `raw`, with COUNT 0)"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("Listening on http://{}/", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            if raw {
                tokio::spawn(hold_raw(tcp));
                continue;
            }
            tokio::spawn(async move {
                let service = service_fn(move |_request| async move {
                    let mut response = Response::new(StreamBody::new(events(count)));
                    let headers = response.headers_mut();
                    headers.insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/event-stream"),
                    );
                    headers.insert(
                        header::CACHE_CONTROL,
                        header::HeaderValue::from_static("no-cache"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}

/// One idle stream without hyper: reads the request head (into a buffer
/// freed before the hold), answers it with one chunked event, then waits
/// for the client to close, keeping nothing but the socket.
async fn hold_raw(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    {
        let mut head = Vec::with_capacity(1024);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() >= 16 * 1024 || matches!(tcp.read_buf(&mut head).await, Ok(0) | Err(_)) {
                return;
            }
        }
    }
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let event = format!("id: 1\nevent: tick\ndata: {{\"seq\":1,\"ts_us\":{ts}}}\n\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
        event.len()
    );
    if tcp.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    drop(response);
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        let mut byte = [0u8; 1];
        match tcp.try_read(&mut byte) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The events `1..=count`, in chunks (`count` 0: one, then nothing, ever).
fn events(count: u64) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    let hold = count == 0;
    let count = count.max(1);
    futures::stream::unfold(1u64, move |next| async move {
        if next > count {
            if hold {
                std::future::pending::<()>().await;
            }
            return None;
        }
        let mut buf = BytesMut::with_capacity(CHUNK + 256);
        let mut seq = next;
        while seq <= count && buf.len() < CHUNK {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            buf.put_slice(b"id: ");
            buf.put_slice(seq.to_string().as_bytes());
            buf.put_slice(b"\nevent: tick\ndata: {\"seq\":");
            buf.put_slice(seq.to_string().as_bytes());
            buf.put_slice(b",\"ts_us\":");
            buf.put_slice(ts.to_string().as_bytes());
            buf.put_slice(b"}\n\n");
            seq += 1;
        }
        Some((Ok(Frame::data(buf.freeze())), seq))
    })
}
