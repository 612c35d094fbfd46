//! `amplification`: concurrent 1 MiB POSTs (`{"text": "a a a …"}`, just
//! under `max_body_bytes`) to the reference route `/` (the demo backend with
//! its pauses) and to a demo route without pauses, from clients that read
//! 4 KiB every 200 ms. Measured: the gateway's RSS growth per concurrent
//! request while they stream, and what is left after they leave.
//!
//! Passes when the growth per request stays under the bound
//! ([`crate::AMPLIFICATION_LIMIT`], 4 MiB, or `--amplification-limit`) and
//! the streams and files are released when the clients leave. One run per
//! route, each on a gateway of its own (so that one does not start from
//! the other's memory).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{Target, finish_into, mib, ms, streams_released};
use crate::client::{self, Tune};
use crate::error::Error;
use crate::gateway::Config;
use crate::probe;
use crate::{AMPLIFICATION_LIMIT, Options, Report, Scale};

/// The scenario's parameters.
#[derive(Debug, Serialize)]
struct Params {
    /// Concurrent requests per route.
    requests: usize,
    /// How long the clients stay, reading slowly.
    #[serde(with = "humantime_serde")]
    hold: Duration,
    /// Each read takes at most this many bytes…
    read_bytes: usize,
    /// …and comes this long after the last.
    #[serde(with = "humantime_serde")]
    read_every: Duration,
    /// The request body's size.
    body_bytes: usize,
    /// The bound on RSS growth per concurrent request.
    limit_bytes_per_request: u64,
}

impl Params {
    fn at(scale: Scale, limit: Option<u64>) -> Self {
        let (requests, hold) = match scale {
            Scale::Small => (4, Duration::from_secs(2)),
            Scale::Full => (16, Duration::from_secs(8)),
        };
        Self {
            requests,
            hold,
            read_bytes: 4096,
            read_every: Duration::from_millis(200),
            body_bytes: 1 << 20,
            limit_bytes_per_request: limit.unwrap_or(AMPLIFICATION_LIMIT),
        }
    }
}

/// A POST of `{"text": "a a a …"}` whose whole body is `size` bytes.
fn request(path: &str, size: usize) -> Vec<u8> {
    let (open, close) = ("{\"text\": \"", "\"}");
    let text_len = size - open.len() - close.len();
    let mut text: Vec<u8> = b"a ".iter().copied().cycle().take(text_len).collect();
    if text.last() == Some(&b' ') {
        *text.last_mut().unwrap_or(&mut b'a') = b'a';
    }
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nHost: attack\r\nContent-Type: application/json\r\nAccept: application/x-ndjson\r\nContent-Length: {size}\r\n\r\n{open}"
    )
    .into_bytes();
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(close.as_bytes());
    bytes
}

pub(super) async fn run(options: &Options, report: &mut Report) -> Result<(), Error> {
    let params = Params::at(options.scale, options.amplification_limit);
    report.settings = serde_json::to_value(&params).unwrap_or_default();
    let routes = [
        (
            "reference route /",
            "/",
            "type = \"demo\"\nstart_pause = \"500ms\"\ntoken_pause = \"300ms\"",
        ),
        (
            "demo without pauses",
            "/fast",
            "type = \"demo\"\nstart_pause = \"0s\"\ntoken_pause = \"0s\"",
        ),
    ];
    let mut runs = Vec::new();
    for (label, path, backend) in routes {
        let config = Config::new().route("r", path, "methods = [\"GET\", \"POST\"]", backend);
        runs.push(one(options, report, &params, label, path, &config).await?);
    }
    report.figure("runs", runs);
    Ok(())
}

/// What one slow client saw.
#[derive(Debug)]
struct Client {
    status: Option<u16>,
    read: usize,
    error: Option<String>,
}

async fn one(
    options: &Options,
    report: &mut Report,
    params: &Params,
    label: &str,
    path: &str,
    config: &Config,
) -> Result<serde_json::Value, Error> {
    let target = Target::start(options, report, label, config).await?;
    let gateway = &target.gateway;
    let origin = report.origin();
    let base =
        probe::sample(gateway.pid, origin).ok_or_else(|| Error::Gateway("gone at start".into()))?;
    let bytes = Arc::new(request(path, params.body_bytes));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..params.requests {
        let bytes = Arc::clone(&bytes);
        let (addr, from) = (gateway.addr, client::source(i, 4));
        let (hold, every, size) = (params.hold, params.read_every, params.read_bytes);
        set.spawn(async move { slow_client(addr, from, &bytes, hold, every, size).await });
    }
    // The peak while they stream, sampled here (the sampler's series covers
    // the whole run).
    let mut peak = base;
    while !set.is_empty() && started.elapsed() < params.hold + Duration::from_secs(30) {
        if let Some(sample) = probe::sample(gateway.pid, origin) {
            if sample.rss_kib > peak.rss_kib {
                peak = sample;
            }
        }
        if started.elapsed() >= params.hold {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut clients = Vec::new();
    finish_into(&mut set, &mut clients).await;
    let released = streams_released(gateway, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = probe::sample(gateway.pid, origin);
    let files_back = gateway.open_files().is_some_and(|f| f <= base.open_files);

    let streamed = clients.iter().filter(|c| c.status == Some(200)).count();
    let n = params.requests as u64;
    let growth = peak.rss_kib.saturating_sub(base.rss_kib) * 1024;
    let per_request = growth / n.max(1);
    let limit = params.limit_bytes_per_request;
    report.check(
        format!(
            "{label}: all {n} POSTs of {} bytes answered 200 and streamed",
            params.body_bytes
        ),
        streamed == params.requests,
        format!(
            "{streamed} of {n}{}",
            clients
                .iter()
                .find_map(|c| c.error.as_ref().or(None))
                .map_or(String::new(), |e| format!("; e.g. {e}"))
        ),
    );
    report.check(
        format!("{label}: RSS growth per concurrent request within {limit} bytes"),
        per_request <= limit,
        format!(
            "{per_request} bytes per request ({:.1} MiB over {n} requests; {:.1} MiB -> {:.1} MiB)",
            growth as f64 / 1048576.0,
            mib(base.rss_kib),
            mib(peak.rss_kib)
        ),
    );
    report.check(
        format!("{label}: streams and open files released when the clients leave"),
        released && files_back,
        format!(
            "gateway_open_streams back to 0: {released}; open files {} before, {:?} after",
            base.open_files,
            gateway.open_files()
        ),
    );
    let figures = json!({
        "route": label,
        "requests": n,
        "streamed": streamed,
        "bytes_read_per_client": clients.iter().map(|c| c.read).max(),
        "rss_mib_before": mib(base.rss_kib),
        "rss_mib_peak": mib(peak.rss_kib),
        "growth_bytes_per_request": per_request,
        "limit_bytes_per_request": limit,
        "rss_mib_after_leaving": after.map(|s| mib(s.rss_kib)),
        "retained_mib_after_leaving": after.map(|s| mib(s.rss_kib.saturating_sub(base.rss_kib))),
        "peak_at_ms": ms(Duration::from_secs_f64(peak.at_s) - Duration::from_secs_f64(base.at_s)),
    });
    target.finish(report);
    Ok(figures)
}

/// Sends the POST, then reads `size` bytes every `every` for `hold`.
async fn slow_client(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
    bytes: &[u8],
    hold: Duration,
    every: Duration,
    size: usize,
) -> Client {
    let mut client = Client {
        status: None,
        read: 0,
        error: None,
    };
    let mut tcp = match client::connect(addr, from, Tune::default()).await {
        Ok(tcp) => tcp,
        Err(e) => {
            client.error = Some(e.to_string());
            return client;
        }
    };
    if let Err(e) = tcp.write_all(bytes).await {
        client.error = Some(format!("sending the body: {e}"));
        return client;
    }
    let started = Instant::now();
    let mut buf = vec![0u8; size];
    let mut first = Vec::new();
    while started.elapsed() < hold {
        match tokio::time::timeout(every, tcp.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if client.status.is_none() {
                    first.extend_from_slice(&buf[..n]);
                    client.status = client::status_of(&first);
                }
                client.read += n;
                tokio::time::sleep(every).await;
            }
            Ok(Err(e)) => {
                client.error = Some(e.to_string());
                break;
            }
            Err(_) => {}
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_exactly_its_size_and_valid_json() {
        let bytes = request("/", 1 << 20);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with("Content-Length: 1048576"));
        assert_eq!(body.len(), 1 << 20);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["text"].as_str().unwrap().starts_with("a a a"));
    }
}
