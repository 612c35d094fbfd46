//! One client connection: connect (from a chosen loopback source address),
//! send the request, parse the stream, record what happened.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::time::Instant;

use crate::parse::{self, Format, Ndjson, Parsed, Sse};
use crate::stats::Stats;

/// What every connection asks for.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub method: hyper::Method,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub format: Format,
}

/// When a connection stops, and what it checks.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The client closes the stream after this long.
    pub hold: Option<Duration>,
    /// The client closes the stream after this many events.
    pub events: Option<u64>,
    pub connect_timeout: Duration,
    /// Longest silence (no byte) before the connection counts as stalled.
    pub idle_timeout: Duration,
    pub max_event_bytes: usize,
    /// Payload field with a sequence number, checked for gaps and repeats.
    pub seq_field: Option<String>,
    /// Payload field with the microseconds since the Unix epoch at which
    /// the event was made: the delivery latency.
    pub ts_field: Option<String>,
}

enum Parser {
    Sse(Sse),
    Ndjson(Ndjson),
}

/// The sequence check of one stream.
#[derive(Default)]
struct Sequence {
    last: Option<u64>,
}

impl Sequence {
    fn see(&mut self, seq: u64, stats: &mut Stats) {
        if let Some(last) = self.last {
            if seq <= last {
                stats.duplicates += 1;
                return;
            }
            if seq > last + 1 {
                stats.gaps += 1;
                stats.missing += seq - last - 1;
            }
        }
        self.last = Some(seq);
    }
}

pub fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs one connection to its end and records it in `stats`.
pub async fn run(target: &Target, plan: &Plan, source: Option<IpAddr>, stats: &RefCell<Stats>) {
    let started = Instant::now();
    match stream(target, plan, source, stats, started).await {
        Ok(End::Complete) => stats.borrow_mut().completed += 1,
        Ok(End::Client) => stats.borrow_mut().closed_by_client += 1,
        Err(kind) => stats.borrow_mut().error(kind),
    }
    stats
        .borrow_mut()
        .duration
        .record(started.elapsed().as_micros() as u64);
}

enum End {
    Complete,
    Client,
}

async fn stream(
    target: &Target,
    plan: &Plan,
    source: Option<IpAddr>,
    stats: &RefCell<Stats>,
    started: Instant,
) -> Result<End, String> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", kind_of(&e)))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind: {}", kind_of(&e)))?;
    }
    let tcp = tokio::time::timeout(plan.connect_timeout, socket.connect(target.addr))
        .await
        .map_err(|_| "connect: timeout".to_string())?
        .map_err(|e| format!("connect: {}", kind_of(&e)))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::task::spawn_local(connection);

    let mut request = Request::builder()
        .method(target.method.clone())
        .uri(target.path.as_str())
        .header(HOST, target.host.as_str())
        .header(ACCEPT, target.format.accept());
    if !target.body.is_empty() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    for (name, value) in &target.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(target.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let response = tokio::time::timeout(plan.idle_timeout, sender.send_request(request))
        .await
        .map_err(|_| "headers: timeout".to_string())?
        .map_err(|e| format!("headers: {}", hyper_kind(&e)))?;
    stats
        .borrow_mut()
        .ttfb
        .record(started.elapsed().as_micros() as u64);
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("status {}", response.status().as_u16()));
    }

    let mut body = response.into_body();
    let mut parser = match target.format {
        Format::Sse => Parser::Sse(Sse::new(plan.max_event_bytes)),
        Format::Ndjson => Parser::Ndjson(Ndjson::new(plan.max_event_bytes)),
    };
    let hold_until = plan.hold.map(|hold| started + hold);
    let mut sequence = Sequence::default();
    let mut received = 0u64;
    let mut reached = false;
    loop {
        let frame = {
            let idle = tokio::time::sleep(plan.idle_timeout);
            let hold = async {
                match hold_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = body.frame() => frame,
                () = idle => return Err("stalled".into()),
                () = hold => {
                    record_counts(&parser, stats);
                    return Ok(End::Client);
                }
            }
        };
        let Some(frame) = frame else {
            record_counts(&parser, stats);
            return Ok(End::Complete);
        };
        let frame = frame.map_err(|e| format!("body: {}", hyper_kind(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut s = stats.borrow_mut();
        s.body_bytes += data.len() as u64;
        let now_us = micros_since_epoch();
        let mut on_event = |event: Parsed<'_>| {
            // Past `--events`, the rest of the chunk is not counted.
            if reached {
                return;
            }
            received += 1;
            s.events += 1;
            s.arrived(now_us);
            if received == 1 {
                s.ttfe.record(started.elapsed().as_micros() as u64);
            }
            if let Some(field) = &plan.ts_field {
                if let Some(ts) = parse::field_u64(event.data, field) {
                    s.latency.record(now_us.saturating_sub(ts));
                }
            }
            let seq = plan
                .seq_field
                .as_deref()
                .and_then(|f| parse::field_u64(event.data, f))
                .or_else(|| event.id.and_then(|id| id.parse().ok()));
            if let Some(seq) = seq {
                sequence.see(seq, &mut s);
            }
            if plan.events.is_some_and(|n| received >= n) {
                reached = true;
            }
        };
        match &mut parser {
            Parser::Sse(p) => p.feed(&data, &mut on_event),
            Parser::Ndjson(p) => p.feed(&data, &mut on_event),
        }
        drop(s);
        if reached {
            record_counts(&parser, stats);
            return Ok(End::Client);
        }
    }
}

fn record_counts(parser: &Parser, stats: &RefCell<Stats>) {
    let counts = match parser {
        Parser::Sse(p) => p.counts,
        Parser::Ndjson(p) => p.counts,
    };
    let mut s = stats.borrow_mut();
    s.comments += counts.comments;
    s.oversized += counts.oversized;
}

fn kind_of(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(24) => "too many open files (EMFILE)".into(),
        Some(99) => "no free local port (EADDRNOTAVAIL)".into(),
        Some(111) => "refused".into(),
        _ => format!("{:?}", e.kind()),
    }
}

fn hyper_kind(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "cut mid-message".into()
    } else if e.is_closed() || e.is_canceled() {
        "closed".into()
    } else {
        let text = e.to_string();
        text.split(':').next().unwrap_or(&text).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_repeats_are_counted() {
        let mut stats = Stats::default();
        let mut seq = Sequence::default();
        for n in [5, 6, 9, 9, 8, 10, 14] {
            seq.see(n, &mut stats);
        }
        assert_eq!((stats.gaps, stats.missing, stats.duplicates), (2, 5, 2));
    }
}
