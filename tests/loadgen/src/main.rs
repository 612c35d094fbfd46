//! `loadgen`: opens many streams on a gateway (or a peer), parses them, and
//! measures time to first byte and event, delivery latency, throughput,
//! gaps and duplicates, errors by kind; prints a summary and writes a JSON
//! report. See `tests/bench/README.md` for the scenarios that use it.
//!
//! Each process is single-threaded (one core's worth of client); `--processes`
//! runs several coordinated copies of itself, each with its own open-file
//! limit, and merges their histograms losslessly.

mod conn;
mod publish;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hyper::header::{HeaderName, HeaderValue};
use loadgen::{parse, stats, watch};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use conn::{Plan, Target};
use parse::Format;
use stats::{Partial, Report, Stats};

#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(version, about = "Opens many SSE/NDJSON streams and measures them")]
struct Args {
    /// The stream URL (http://host:port/path?query).
    url: String,
    /// How many connections in all.
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: u64,
    /// New connections per second (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, value_enum, default_value_t = Format::Sse)]
    format: Format,
    /// POST this JSON body (else GET).
    #[arg(long)]
    body: Option<String>,
    /// Extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Close each stream after this long (e.g. `30s`); by default a stream
    /// runs until the server ends it.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    hold: Option<Duration>,
    /// Close each stream after this many events.
    #[arg(long)]
    events: Option<u64>,
    /// Bound on the whole run; streams still open then are closed and
    /// counted as errors `max-time`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    max_time: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    /// Longest silence on a stream before it counts as stalled.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    /// Largest event or line parsed; longer ones are skipped and counted.
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: usize,
    /// Payload field with a sequence number (gaps and duplicates are
    /// counted); events without it fall back to a numeric id.
    #[arg(long, default_value = "seq")]
    seq_field: String,
    /// Payload field with microseconds since the Unix epoch (the delivery
    /// latency is measured from it).
    #[arg(long, default_value = "ts_us")]
    ts_field: String,
    /// Spread connections over this many loopback source addresses
    /// (127.0.0.1, .2, …), each with its own ephemeral ports.
    #[arg(long, default_value_t = 1)]
    sources: u32,
    /// Coordinated processes sharing the connections (each has its own
    /// open-file limit).
    #[arg(long, default_value_t = 1)]
    processes: u32,
    /// Gateway (or peer) process ids whose RSS and CPU are sampled
    /// (repeatable).
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// Publisher: POST events to this URL at `--publish-rate`.
    #[arg(long)]
    publish_url: Option<String>,
    #[arg(long, default_value_t = 100.0)]
    publish_rate: f64,
    #[arg(long, default_value_t = 1000)]
    publish_count: u64,
    #[arg(long, default_value_t = 1)]
    publish_connections: usize,
    /// The body of each publication; `{seq}` and `{ts_us}` are filled in.
    #[arg(long, default_value = r#"{"data":{"seq":{seq},"ts_us":{ts_us}}}"#)]
    publish_body: String,
    /// Publisher request header `Name: value` (repeatable).
    #[arg(long = "publish-header")]
    publish_headers: Vec<String>,
    /// Start publishing after this delay (subscribers connect first).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    publish_delay: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Internal: this process is worker `i` of `--processes`.
    #[arg(long, hide = true)]
    worker: Option<u32>,
    /// Internal: the moment (ms since the epoch) every worker starts.
    #[arg(long, hide = true)]
    start_at_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = raise_open_files();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        if args.worker.is_some() {
            let stats = run_worker(&args, limit).await?;
            println!("{}", serde_json::to_string(&Partial::from(&stats))?);
            return Ok(());
        }
        coordinate(args, limit).await
    })
}

/// Raises the soft open-file limit to the hard one; returns it.
fn raise_open_files() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Starts the workers (or runs the only one here), samples the watched
/// processes, merges, reports.
async fn coordinate(args: Args, limit: u64) -> anyhow::Result<()> {
    let per_process = args.connections.div_ceil(u64::from(args.processes.max(1)));
    if per_process + 64 > limit {
        eprintln!(
            "warning: {per_process} connections per process, but the open-file limit is {limit}: \
             use more --processes"
        );
    }
    let watcher = watch::Watcher::start(&args.watch_pids);
    let started = Instant::now();
    let stats = if args.processes <= 1 {
        run_worker(&args, limit).await?
    } else {
        spawn_workers(&args).await?
    };
    let wall = started.elapsed().as_secs_f64();
    let samples = watcher.stop().await;
    let settings = serde_json::to_value(&args)?;
    let mut report = serde_json::to_value(Report::new(&stats, settings, wall))?;
    if let Some(samples) = samples {
        eprintln!("{}", samples.summary(stats.connections));
        report["processes"] = serde_json::to_value(&samples)?;
    }
    eprint!(
        "{}",
        Report::new(&stats, serde_json::Value::Null, wall).summary()
    );
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    if stats.connections > 0 && stats.completed + stats.closed_by_client == 0 {
        bail!("no connection succeeded");
    }
    Ok(())
}

async fn spawn_workers(args: &Args) -> anyhow::Result<Stats> {
    let exe = std::env::current_exe().context("find loadgen's own path")?;
    // Every worker starts at the same moment, once all are running.
    let start_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        + 300;
    let mut children = Vec::new();
    for worker in 0..args.processes {
        let mut command = tokio::process::Command::new(&exe);
        command
            .args(std::env::args_os().skip(1))
            .arg("--worker")
            .arg(worker.to_string())
            .arg("--start-at-ms")
            .arg(start_at.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        children.push(command.spawn().context("start a worker")?);
    }
    let mut total = Stats::default();
    for (i, mut child) in children.into_iter().enumerate() {
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).await?;
        }
        let status = child.wait().await?;
        let line = out.lines().last().unwrap_or("");
        let partial: Partial = serde_json::from_str(line)
            .with_context(|| format!("worker {i} ({status}) sent no report"))?;
        total.merge(&Stats::from(&partial));
    }
    Ok(total)
}

/// This process's share of the connections (and the publisher in worker 0).
async fn run_worker(args: &Args, _limit: u64) -> anyhow::Result<Stats> {
    let (worker, workers) = (args.worker.unwrap_or(0), args.processes.max(1));
    let target = Rc::new(target(args)?);
    let plan = Rc::new(Plan {
        hold: args.hold,
        events: args.events,
        connect_timeout: args.connect_timeout,
        idle_timeout: args.idle_timeout,
        max_event_bytes: args.max_event_bytes,
        seq_field: Some(args.seq_field.clone()).filter(|f| !f.is_empty()),
        ts_field: Some(args.ts_field.clone()).filter(|f| !f.is_empty()),
    });
    if let Some(at) = args.start_at_ms {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
    }
    let stats = Rc::new(RefCell::new(Stats::default()));
    let started = Instant::now();
    let deadline = started + args.max_time;
    let mut tasks = Vec::new();
    let mine: Vec<u64> = (0..args.connections)
        .filter(|i| i % u64::from(workers) == u64::from(worker))
        .collect();
    let publisher = match (&args.publish_url, worker) {
        (Some(url), 0) => Some(publisher(args, url)?),
        _ => None,
    };
    let publishing = publisher.map(|publisher| {
        let stats = Rc::clone(&stats);
        let delay = args.publish_delay;
        tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            publisher.run(&stats).await;
        })
    });
    for i in mine {
        if args.rate > 0.0 {
            let at = started + Duration::from_secs_f64(i as f64 / args.rate);
            tokio::time::sleep_until(at.min(deadline)).await;
        }
        // Counted when started, so that a run cut by `--max-time` before
        // a connection's first poll still accounts for it.
        stats.borrow_mut().connections += 1;
        let source = source_address(i, args.sources);
        let (target, plan, stats) = (Rc::clone(&target), Rc::clone(&plan), Rc::clone(&stats));
        tasks.push(tokio::task::spawn_local(async move {
            conn::run(&target, &plan, source, &stats).await;
        }));
    }
    let all = async {
        for task in tasks {
            let _ = task.await;
        }
        if let Some(publishing) = publishing {
            let _ = publishing.await;
        }
    };
    if tokio::time::timeout_at(deadline, all).await.is_err() {
        // What is still open is cut; counted per open connection.
        let mut s = stats.borrow_mut();
        let open = s
            .connections
            .saturating_sub(s.completed + s.closed_by_client + s.error_count());
        *s.errors.entry("max-time".into()).or_default() += open;
    }
    let stats = stats.borrow().clone();
    Ok(stats)
}

/// Source address `k` of `n`: 127.0.0.1, 127.0.0.2, … (all of 127/8 is
/// loopback on Linux).
fn source_address(i: u64, n: u32) -> Option<IpAddr> {
    if n <= 1 {
        return None;
    }
    let k = (i % u64::from(n)) as u32;
    Some(IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k,
    )))
}

fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .or_else(|_| format!("{authority}:80").to_socket_addrs())
        .with_context(|| format!("{url}: cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{url}: no address for {authority}"))?;
    Ok((addr, authority.to_string(), path.to_string()))
}

fn headers(list: &[String]) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    list.iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("header {h:?}: expected `Name: value`"))?;
            Ok((
                HeaderName::try_from(name.trim())
                    .with_context(|| format!("header name {name:?}"))?,
                HeaderValue::try_from(value.trim())
                    .with_context(|| format!("header value of {name:?}"))?,
            ))
        })
        .collect()
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let (addr, host, path) = split_url(&args.url)?;
    let body = args.body.clone().unwrap_or_default();
    Ok(Target {
        addr,
        host,
        path,
        method: if body.is_empty() {
            hyper::Method::GET
        } else {
            hyper::Method::POST
        },
        body: Bytes::from(body),
        headers: headers(&args.headers)?,
        format: args.format,
    })
}

fn publisher(args: &Args, url: &str) -> anyhow::Result<publish::Publisher> {
    let (addr, host, path) = split_url(url)?;
    Ok(publish::Publisher {
        addr,
        host,
        path,
        headers: headers(&args.publish_headers)?,
        template: args.publish_body.clone(),
        rate: args.publish_rate,
        count: args.publish_count,
        connections: args.publish_connections,
    })
}
