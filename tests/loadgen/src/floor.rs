//! `floor`: the least any server can do to fan one event out to many SSE
//! subscribers with one write per subscriber per event, the gateway's
//! promise at a low rate (no event held back to be batched with the next).
//! No HTTP library, no async runtime, no backend: a `GET` is answered with
//! a chunked `text/event-stream` head and its socket kept; a `POST` (on a
//! keep-alive connection) is answered `202` and its body written, framed as
//! `id: N` and `data: BODY` in one chunk, by `THREADS` writer threads, each
//! looping over its share of the sockets with one non-blocking `write`
//! apiece. A subscriber whose write does not go through whole is dropped
//! (and the load generator says what it lost).
//!
//! The fan-out benchmark's `ab.sh cpu floor …` sets it beside the gateway:
//! its CPU time per delivery is what one write per delivery costs the
//! kernel and next to nothing more, so it bounds from below what any
//! server that writes each event as it comes can reach on the machine.
//!
//! `floor [ADDR] [THREADS]` (default `127.0.0.1:0`, 2); prints
//! `Listening on http://ADDR/`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request head longer than this is refused (the connection closed).
const MAX_HEAD: usize = 16 * 1024;
/// A published body longer than this is refused.
const MAX_BODY: usize = 64 * 1024;

const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
const ACCEPTED: &[u8] = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";

/// One writer thread's subscribers.
type Shard = Arc<Mutex<Vec<TcpStream>>>;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let threads: usize = args.next().map_or(Ok(2), |t| t.parse())?;
    anyhow::ensure!(threads >= 1, "THREADS must be at least 1");
    let listener = TcpListener::bind(&addr)?;
    eprintln!("Listening on http://{}/", listener.local_addr()?);

    let mut shards = Vec::new();
    let mut feeds = Vec::new();
    for _ in 0..threads {
        let shard: Shard = Arc::default();
        let (feed, events) = channel::<Arc<[u8]>>();
        let mine = shard.clone();
        std::thread::spawn(move || write_events(&mine, &events));
        shards.push(shard);
        feeds.push(feed);
    }

    let mut next = 0usize;
    for tcp in listener.incoming() {
        let Ok(mut tcp) = tcp else { continue };
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::with_capacity(1024);
        let Some(end) = read_head(&mut tcp, &mut buf) else {
            continue;
        };
        if buf.starts_with(b"POST ") {
            let feeds = feeds.clone();
            std::thread::spawn(move || publish(tcp, buf, &feeds));
            continue;
        }
        drop(buf.drain(..end));
        if tcp.write_all(STREAM_HEAD).is_err() || tcp.set_nonblocking(true).is_err() {
            continue;
        }
        if let Ok(mut shard) = shards[next % threads].lock() {
            shard.push(tcp);
        }
        next += 1;
    }
    Ok(())
}

/// Reads until `buf` holds a whole request head; its length, or `None` when
/// the connection ends, times out or sends too long a head.
fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match tcp.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The `content-length` of a request head (0 when there is none).
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            return value.trim().parse().ok();
        }
    }
    Some(0)
}

/// Serves one publisher's keep-alive connection: each body, once read, is
/// answered and then handed to every writer thread as one framed chunk.
fn publish(mut tcp: TcpStream, mut buf: Vec<u8>, feeds: &[Sender<Arc<[u8]>>]) {
    let mut id = 0u64;
    loop {
        let Some(end) = read_head(&mut tcp, &mut buf) else {
            return;
        };
        let Some(length) = content_length(&buf[..end]).filter(|l| *l <= MAX_BODY) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        while buf.len() < end + length {
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        id += 1;
        let event = format!(
            "id: {id}\ndata: {}\n\n",
            String::from_utf8_lossy(&buf[end..end + length])
        );
        let framed: Arc<[u8]> = format!("{:x}\r\n{event}\r\n", event.len())
            .into_bytes()
            .into();
        drop(buf.drain(..end + length));
        if tcp.write_all(ACCEPTED).is_err() {
            return;
        }
        for feed in feeds {
            let _ = feed.send(framed.clone());
        }
    }
}

/// One writer thread: each event written to each of its subscribers with
/// one `write`; a subscriber it does not go through to whole is dropped.
fn write_events(shard: &Shard, events: &Receiver<Arc<[u8]>>) {
    let mut dropped = 0u64;
    for event in events {
        let Ok(mut subscribers) = shard.lock() else {
            return;
        };
        subscribers.retain_mut(|tcp| match tcp.write(&event) {
            Ok(n) if n == event.len() => true,
            Ok(_) => {
                dropped += 1;
                false
            }
            Err(_) => {
                dropped += 1;
                false
            }
        });
        if dropped > 0 {
            eprintln!("{dropped} subscribers dropped (their write did not go through whole)");
            dropped = 0;
        }
    }
}
