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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("Listening on http://{}/", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
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
