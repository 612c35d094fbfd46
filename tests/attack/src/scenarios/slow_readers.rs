//! `slow-readers`: clients that ask for a fast route (a ticker without a
//! pause) and never read. Each fills its socket; what the gateway then
//! holds per client should be its socket buffers (the kernel's, not its
//! RSS) and the one batch of events it was writing (`BATCH_BYTES`,
//! 64 KiB), and a stalled stream should cost no CPU. Meanwhile clients
//! that do read the same route should be served as fast as before.
//!
//! Passes when every slow reader got its stream, the gateway's RSS per
//! slow reader stays under [`Params::max_bytes_per_reader`] and flat while
//! they hold, its CPU at rest stays under [`Params::max_cpu_percent`], the
//! fast readers keep [`Params::min_throughput_share`] of their throughput
//! alone, and an ordinary client is served within [`Params::probe_limit`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use super::{Target, eventually, first_event, mib, ms, streams_released};
use crate::client::{self, Format, Stream, StreamRequest, Tune};
use crate::error::Error;
use crate::gateway::Config;
use crate::probe::{self, Sample};
use crate::{Options, Report, Scale};

/// The scenario's parameters.
#[derive(Debug, Serialize)]
struct Params {
    /// Clients that never read. At small scale still a few hundred: the
    /// gateway's fixed costs would weigh on the figure per reader over
    /// fewer.
    slow: usize,
    /// Clients that read as fast as they can.
    fast: usize,
    /// Loopback addresses the slow readers come from (at most 500 streams
    /// each, `max_streams_per_client`, left at its default).
    sources: usize,
    /// The fast route's event padding (bytes): bigger events fill sockets
    /// sooner.
    payload_bytes: usize,
    /// How long the fast readers read, alone and then beside the slow.
    #[serde(with = "humantime_serde")]
    measure: Duration,
    /// Longest wait for the slow readers' sockets to fill (the gateway's
    /// CPU falls to rest when they have).
    #[serde(with = "humantime_serde")]
    fill_within: Duration,
    /// How long the slow readers hold once their sockets are full.
    #[serde(with = "humantime_serde")]
    hold: Duration,
    /// The bound on RSS per slow reader: the batch being written (64 KiB),
    /// hyper's read and header buffers (2 x 8 KiB), the connection's own
    /// state (14 KiB, the idle benchmark's figure), and 10 % over.
    max_bytes_per_reader: u64,
    /// The bound on RSS growth while they hold: 1 MiB plus 1 %.
    max_drift_bytes: u64,
    /// The bound on the gateway's CPU while every slow stream is stalled.
    max_cpu_percent: f64,
    /// The fast readers' throughput beside the slow ones, as a share of
    /// theirs alone (the two cores are shared with the clients).
    min_throughput_share: f64,
    /// An ordinary client's first event, at most.
    #[serde(with = "humantime_serde")]
    probe_limit: Duration,
}

impl Params {
    fn at(scale: Scale) -> Self {
        let (slow, fast, sources, measure, hold, probe_limit) = match scale {
            Scale::Small => (
                400,
                2,
                2,
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(2),
            ),
            Scale::Full => (
                5_000,
                4,
                16,
                Duration::from_secs(3),
                Duration::from_secs(5),
                Duration::from_secs(1),
            ),
        };
        Self {
            slow,
            fast,
            sources,
            payload_bytes: 512,
            measure,
            fill_within: Duration::from_secs(60),
            hold,
            max_bytes_per_reader: 104 * 1024,
            max_drift_bytes: 1 << 20,
            max_cpu_percent: 10.0,
            min_throughput_share: 0.5,
            probe_limit,
        }
    }
}

pub(super) async fn run(options: &Options, report: &mut Report) -> Result<(), Error> {
    let params = Params::at(options.scale);
    report.settings = serde_json::to_value(&params).unwrap_or_default();
    let config = Config::new()
        .route(
            "fast",
            "/fast",
            "",
            &format!(
                "type = \"ticker\"\ninterval = \"0s\"\npayload_bytes = {}",
                params.payload_bytes
            ),
        )
        .route("tick", "/tick", "", "type = \"ticker\"\ninterval = \"1s\"");
    let label = "slow readers";
    let target = Target::start(options, report, label, &config).await?;
    let gateway = &target.gateway;
    let origin = report.origin();
    let probe_from = client::source(params.sources, params.sources + 1);
    let base =
        probe::sample(gateway.pid, origin).ok_or_else(|| Error::Gateway("gone at start".into()))?;

    let alone = fast_readers(gateway.addr, params.fast, params.measure).await;
    // What the slow readers add is counted from here: the fast readers'
    // buffers, freed, stay with the allocator.
    let before_slow = probe::sample(gateway.pid, origin).unwrap_or(base);

    let opened = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..params.slow {
        let (addr, from, opened) = (
            gateway.addr,
            client::source(i, params.sources),
            Arc::clone(&opened),
        );
        set.spawn(async move {
            let held = client::not_reading(addr, from, "/fast").await;
            if held.is_ok() {
                opened.fetch_add(1, Ordering::Relaxed);
            }
            held
        });
    }
    let mut held = Vec::new();
    let mut errors = Vec::new();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(tcp)) => held.push(tcp),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    // Full when the gateway comes to rest: less than the bound's CPU over
    // half a second.
    let fill_started = Instant::now();
    let mut previous = probe::sample(gateway.pid, origin);
    let filled = eventually(params.fill_within, || {
        let before = previous;
        let now = probe::sample(gateway.pid, origin);
        previous = now;
        async move {
            tokio::time::sleep(Duration::from_millis(450)).await;
            match (before, now) {
                (Some(a), Some(b)) => {
                    b.at_s - a.at_s > 0.3 && probe::cpu_percent(&a, &b) < params.max_cpu_percent
                }
                _ => false,
            }
        }
    })
    .await;
    let fill_time = fill_started.elapsed();
    let full = probe::sample(gateway.pid, origin);
    let unsent = probe::tcp_sockets(gateway.pid)
        .iter()
        .filter(|s| s.local.port() == gateway.addr.port() && s.send_queue > 0)
        .count();
    tokio::time::sleep(params.hold).await;
    let rest = probe::sample(gateway.pid, origin);
    let beside = fast_readers(gateway.addr, params.fast, params.measure).await;
    let probe = first_event(gateway, probe_from, "/tick", params.probe_limit * 5).await;
    drop(held);
    let released = streams_released(gateway, Duration::from_secs(10)).await;
    let after = probe::sample(gateway.pid, origin);

    let n = params.slow as u64;
    let per_reader = |s: &Option<Sample>| {
        s.map(|s| s.rss_kib.saturating_sub(before_slow.rss_kib) * 1024 / n.max(1))
    };
    let at_rest = per_reader(&rest);
    let drift = match (full, rest) {
        (Some(a), Some(b)) => Some(b.rss_kib as i64 - a.rss_kib as i64),
        _ => None,
    };
    let drift_bound = full.map_or(0, |f| params.max_drift_bytes + f.rss_kib * 1024 / 100);
    let cpu = match (full, rest) {
        (Some(a), Some(b)) => Some(probe::cpu_percent(&a, &b)),
        _ => None,
    };
    let share = if alone > 0.0 { beside / alone } else { 0.0 };
    report.check(
        format!("{label}: all {n} slow readers got their stream"),
        opened.load(Ordering::Relaxed) == params.slow,
        format!(
            "{} opened{}",
            opened.load(Ordering::Relaxed),
            errors
                .first()
                .map_or(String::new(), |e| format!("; e.g. {e}"))
        ),
    );
    report.check(
        format!("{label}: their sockets filled and the gateway came to rest"),
        filled,
        format!(
            "after {:.1} s; {unsent} of its sockets with bytes unsent",
            fill_time.as_secs_f64()
        ),
    );
    report.check(
        format!(
            "{label}: RSS per slow reader within {} bytes",
            params.max_bytes_per_reader
        ),
        at_rest.is_some_and(|b| b <= params.max_bytes_per_reader),
        format!(
            "{at_rest:?} bytes per reader ({:.1} MiB -> {:?} MiB)",
            mib(before_slow.rss_kib),
            rest.map(|s| mib(s.rss_kib))
        ),
    );
    report.check(
        format!("{label}: RSS flat while they hold ({:?})", params.hold),
        drift.is_some_and(|d| d * 1024 <= drift_bound as i64),
        format!("{drift:?} KiB (bound {} KiB)", drift_bound / 1024),
    );
    report.check(
        format!(
            "{label}: CPU at rest under {} % of a core",
            params.max_cpu_percent
        ),
        cpu.is_some_and(|c| c <= params.max_cpu_percent),
        format!("{:.1} %", cpu.unwrap_or(f64::NAN)),
    );
    report.check(
        format!(
            "{label}: fast readers keep {:.0} % of their throughput",
            params.min_throughput_share * 100.0
        ),
        share >= params.min_throughput_share,
        format!(
            "{:.1} MB/s beside the slow readers, {:.1} MB/s alone ({:.0} %)",
            beside / 1e6,
            alone / 1e6,
            share * 100.0
        ),
    );
    report.check(
        format!(
            "{label}: an ordinary client got its first event within {:?}",
            params.probe_limit
        ),
        probe.as_ref().is_ok_and(|t| *t <= params.probe_limit),
        match &probe {
            Ok(t) => format!("{:.1} ms", ms(*t)),
            Err(e) => e.clone(),
        },
    );
    report.check(
        format!("{label}: their streams released when they leave"),
        released,
        format!("gateway_open_streams back to 0: {released}"),
    );
    report.figure(
        "slow_readers",
        json!({
            "slow": n,
            "fill_seconds": fill_time.as_secs_f64(),
            "sockets_with_unsent_bytes": unsent,
            "rss_mib_before": mib(base.rss_kib),
            "rss_mib_before_slow_readers": mib(before_slow.rss_kib),
            "rss_mib_full": full.map(|s| mib(s.rss_kib)),
            "rss_mib_at_rest": rest.map(|s| mib(s.rss_kib)),
            "rss_mib_after_leaving": after.map(|s| mib(s.rss_kib)),
            "bytes_per_slow_reader": at_rest,
            "drift_kib": drift,
            "cpu_percent_at_rest": cpu,
            "fast_bytes_per_second_alone": alone,
            "fast_bytes_per_second_beside": beside,
            "probe_first_event_ms": probe.as_ref().ok().map(|t| ms(*t)),
        }),
    );
    target.finish(report);
    Ok(())
}

/// `readers` clients read `/fast` as fast as they can for `measure`: their
/// bytes per second together.
async fn fast_readers(addr: std::net::SocketAddr, readers: usize, measure: Duration) -> f64 {
    let total = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for i in 0..readers {
        let total = Arc::clone(&total);
        set.spawn(async move {
            let from = client::source(200 + i, 254);
            let request = StreamRequest::get("/fast", Format::Sse);
            let Ok(mut stream) = Stream::open(addr, from, Tune::default(), &request).await else {
                return;
            };
            let until = Instant::now() + measure;
            while Instant::now() < until {
                match stream.skip_chunk().await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let started = Instant::now();
    while set.join_next().await.is_some() {}
    total.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
