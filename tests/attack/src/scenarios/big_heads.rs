//! `big-heads`: connections that send a request head far over
//! `max_head_bytes` (32 KiB): 400 KB of headers that never end, or one
//! header value of 200 KB. First each sends 24 KiB (under the limit) and
//! holds: the gateway keeps what it read, and how much memory that costs
//! per connection is measured; then each sends the rest.
//!
//! Passes when every connection is answered `431` or closed (the gateway
//! closes with the attacker's bytes unread, so the kernel may reset the
//! connection before the answer is read: both count) within
//! [`Params::close_within`], the memory held per connection stays under
//! [`Params::max_bytes_per_connection`] both while held and at the peak,
//! and the gateway serves and holds as many files as before afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Target, eventually, finish_into, first_event, mib, ms};
use crate::client::{self, End, Tune};
use crate::error::Error;
use crate::gateway::Config;
use crate::probe;
use crate::{Options, Report, Scale};

/// The scenario's parameters.
#[derive(Debug, Serialize)]
struct Params {
    /// Connections sending 400 KB of headers. At small scale still a few
    /// hundred: the gateway's fixed costs (a malloc arena, say) would
    /// weigh on the figure per connection over fewer.
    long_heads: usize,
    /// Connections sending one 200 KB header value.
    big_values: usize,
    /// Loopback addresses they come from.
    sources: usize,
    /// What each sends first and holds (under `max_head_bytes`).
    held_bytes: usize,
    /// How long they hold it.
    #[serde(with = "humantime_serde")]
    hold: Duration,
    /// How soon after the rest is sent each must be answered or closed.
    #[serde(with = "humantime_serde")]
    close_within: Duration,
    /// The bound on the gateway's RSS per attacking connection: the
    /// largest head it reads (`max_head_bytes`, 32 KiB) twice over (hyper's
    /// read buffer grows by doubling), plus the connection's own state.
    max_bytes_per_connection: u64,
}

impl Params {
    fn at(scale: Scale) -> Self {
        let (each, sources, hold) = match scale {
            Scale::Small => (250, 2, Duration::from_secs(1)),
            Scale::Full => (1_000, 16, Duration::from_secs(3)),
        };
        Self {
            long_heads: each,
            big_values: each,
            sources,
            held_bytes: 24 * 1024,
            hold,
            close_within: Duration::from_secs(5),
            max_bytes_per_connection: 80 * 1024,
        }
    }
}

/// 400 KB of headers after the request line, without the blank line that
/// would end them.
fn long_head() -> Vec<u8> {
    let mut head = b"GET /tick HTTP/1.1\r\nHost: attack\r\n".to_vec();
    let mut n = 0;
    while head.len() < 400_000 {
        head.extend_from_slice(format!("X-Pad-{n:05}: {}\r\n", "v".repeat(100)).as_bytes());
        n += 1;
    }
    head
}

/// One 200 KB header value, its line ended but not the head.
fn big_value() -> Vec<u8> {
    let mut head = b"GET /tick HTTP/1.1\r\nHost: attack\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'b', 200_000));
    head.extend_from_slice(b"\r\n");
    head
}

/// How one attacker's connection ended, from the moment it sent the rest.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    end: End,
    after: Duration,
    error: Option<String>,
}

pub(super) async fn run(options: &Options, report: &mut Report) -> Result<(), Error> {
    let params = Params::at(options.scale);
    report.settings = serde_json::to_value(&params).unwrap_or_default();
    let config = Config::new().route("tick", "/tick", "", "type = \"ticker\"\ninterval = \"1s\"");
    let label = "big heads";
    let target = Target::start(options, report, label, &config).await?;
    let gateway = &target.gateway;
    let addr = gateway.addr;
    let base = probe::sample(gateway.pid, report.origin())
        .ok_or_else(|| Error::Gateway("gone at start".into()))?;

    let heads = [Arc::new(long_head()), Arc::new(big_value())];
    let n = params.long_heads + params.big_values;
    let holding = Arc::new(AtomicUsize::new(0));
    let (go, went) = watch::channel(false);
    let mut set = JoinSet::new();
    for i in 0..n {
        let head = Arc::clone(&heads[usize::from(i >= params.long_heads)]);
        let from = client::source(i, params.sources);
        let (holding, mut went) = (Arc::clone(&holding), went.clone());
        let (held, close_within) = (params.held_bytes, params.close_within);
        set.spawn(async move {
            let failed = |error: String| Outcome {
                status: None,
                end: End::Open,
                after: Duration::ZERO,
                error: Some(error),
            };
            let mut tcp = match client::connect(addr, from, Tune::default()).await {
                Ok(tcp) => tcp,
                Err(e) => return failed(e.to_string()),
            };
            if let Err(e) = tcp.write_all(&head[..held]).await {
                return failed(e.to_string());
            }
            holding.fetch_add(1, Ordering::Relaxed);
            let _ = went.wait_for(|go| *go).await;
            let sent = Instant::now();
            let (mut reader, mut writer) = tcp.split();
            // The gateway stops reading at its limit and closes: the rest
            // may not all go out, and that is fine.
            let write = async {
                let _ = writer.write_all(&head[held..]).await;
            };
            let read = client::read_answer(&mut reader, close_within, close_within);
            let ((), answer) = tokio::join!(write, read);
            Outcome {
                status: answer.status(),
                end: answer.end,
                after: sent.elapsed().min(answer.after),
                error: None,
            }
        });
    }
    let all_holding = eventually(Duration::from_secs(60), || async {
        holding.load(Ordering::Relaxed) >= n
    })
    .await;
    tokio::time::sleep(params.hold).await;
    let held = probe::sample(gateway.pid, report.origin());
    let _ = go.send(true);
    let mut outcomes = Vec::new();
    finish_into(&mut set, &mut outcomes).await;
    let after = probe::sample(gateway.pid, report.origin());
    let settled = eventually(Duration::from_secs(5), || async {
        gateway.open_files().unwrap_or(u64::MAX) <= base.open_files
    })
    .await;
    let files_after = gateway.open_files();
    let served = first_event(
        gateway,
        client::source(params.sources, params.sources + 1),
        "/tick",
        Duration::from_secs(5),
    )
    .await;

    let closed = outcomes
        .iter()
        .filter(|o| o.status.is_none() && o.error.is_none() && o.end != End::Open)
        .count();
    let answered = outcomes
        .iter()
        .filter(|o| o.status == Some(431) && o.end != End::Open)
        .count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status.is_some_and(|s| s != 431) || o.end == End::Open || o.error.is_some())
        .take(5)
        .map(|o| format!("{:?} {:?} {:?}", o.status, o.end, o.error))
        .collect();
    let slowest = outcomes.iter().map(|o| o.after).max().unwrap_or_default();
    let per_connection =
        |kib: Option<u64>| kib.map(|k| k.saturating_sub(base.rss_kib) * 1024 / n as u64);
    let held_per = per_connection(held.map(|s| s.rss_kib));
    let peak_per = per_connection(after.map(|s| s.hwm_kib));
    let bound = params.max_bytes_per_connection;

    report.check(
        format!(
            "{label}: all {n} connections sent {} bytes and held",
            params.held_bytes
        ),
        all_holding,
        format!("{} holding", holding.load(Ordering::Relaxed)),
    );
    report.check(
        format!(
            "{label}: every connection answered 431 (or reset) and closed within {:?}",
            params.close_within
        ),
        answered + closed == n && slowest <= params.close_within,
        format!(
            "{answered} answered 431, {closed} closed without an answer, slowest {:.0} ms{}",
            ms(slowest),
            if other.is_empty() {
                String::new()
            } else {
                format!("; others: {}", other.join(", "))
            }
        ),
    );
    report.check(
        format!("{label}: RSS per connection while heads are held within {bound} bytes"),
        held_per.is_some_and(|b| b <= bound),
        format!("{held_per:?} bytes per connection"),
    );
    report.check(
        format!("{label}: peak RSS per connection within {bound} bytes"),
        peak_per.is_some_and(|b| b <= bound),
        format!("{peak_per:?} bytes per connection"),
    );
    report.check(
        format!("{label}: afterwards the gateway serves, its open files as before"),
        served.is_ok() && settled,
        format!(
            "first event: {}; open files {} before, {:?} after",
            served
                .as_ref()
                .map_or_else(Clone::clone, |t| format!("{:.1} ms", ms(*t))),
            base.open_files,
            files_after
        ),
    );
    report.figure(
        "big_heads",
        json!({
            "connections": n,
            "answered_431": answered,
            "closed_without_answer": closed,
            "slowest_close_ms": ms(slowest),
            "rss_mib_before": mib(base.rss_kib),
            "rss_mib_held": held.map(|s| mib(s.rss_kib)),
            "rss_mib_after": after.map(|s| mib(s.rss_kib)),
            "hwm_mib": after.map(|s| mib(s.hwm_kib)),
            "held_bytes_per_connection": held_per,
            "peak_bytes_per_connection": peak_per,
        }),
    );
    target.finish(report);
    Ok(())
}
