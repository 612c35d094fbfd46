//! `churn`: many short connections on stream routes, ended every way a
//! client ends one: after the first event (FIN or reset), right after the
//! response head, before reading anything, halfway through the request
//! head. Some streams read a Redis Stream (the local Redis at
//! 127.0.0.1:6379; the keys are made for the run and deleted after it),
//! whose reader connection the gateway opens per key and must close when
//! the key's last client leaves.
//!
//! Passes when, once the cycles are over, `gateway_open_streams` is back to
//! 0, the gateway's open files are back to their warm count, its RSS is
//! within [`Params::max_rss_growth`] of its warm value, and it holds no more
//! connections to Redis than when warm, which Redis's `CLIENT LIST` agrees
//! with (no leaked broker connection on either side).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Target, eventually, finish_into, mib, streams_released};
use crate::client::{self, Format, Stream, StreamRequest, Tune};
use crate::error::Error;
use crate::gateway::{Config, Gateway};
use crate::probe::{self, ESTABLISHED};
use crate::{Options, Report, Scale};

/// Where Redis listens (the same as the tests').
const REDIS: &str = "redis://127.0.0.1:6379";
const REDIS_PORT: u16 = 6379;

/// The scenario's parameters.
#[derive(Debug, Serialize)]
struct Params {
    /// Connect/disconnect cycles after the warm-up.
    cycles: usize,
    /// Cycles before the warm measurements.
    warm_up: usize,
    /// Cycles in flight at once.
    concurrency: usize,
    /// Loopback addresses they come from.
    sources: usize,
    /// Redis stream keys the Redis cycles spread over (one reader
    /// connection each while a client reads it).
    rooms: usize,
    /// How long a client that got its first event stays before it leaves
    /// (so that streams, and a key's readers, overlap).
    #[serde(with = "humantime_serde")]
    stay: Duration,
    /// Longest wait, after the cycles, for everything to be released (a
    /// Redis reader notices its last client leave when its `XREAD BLOCK`
    /// of 5 s returns).
    #[serde(with = "humantime_serde")]
    settle_within: Duration,
    /// Allowed RSS growth over the warm value (a leak of 1 KiB per cycle
    /// would be 49 MiB at full scale).
    max_rss_growth: u64,
    /// Allowed open files over the warm count.
    max_extra_files: u64,
}

impl Params {
    fn at(scale: Scale) -> Self {
        match scale {
            Scale::Small => Self {
                cycles: 600,
                warm_up: 60,
                concurrency: 20,
                sources: 2,
                rooms: 5,
                stay: Duration::from_millis(20),
                settle_within: Duration::from_secs(15),
                max_rss_growth: 16 << 20,
                max_extra_files: 2,
            },
            Scale::Full => Self {
                cycles: 50_000,
                warm_up: 600,
                concurrency: 200,
                sources: 16,
                rooms: 50,
                stay: Duration::from_millis(20),
                settle_within: Duration::from_secs(15),
                max_rss_growth: 16 << 20,
                max_extra_files: 2,
            },
        }
    }
}

/// How a cycle ends its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    /// SSE on the ticker route, closed (FIN) after the first event.
    TickerClosed,
    /// NDJSON on the ticker route, reset after the first event.
    TickerReset,
    /// SSE on a Redis route, closed after the first event.
    RedisClosed,
    /// SSE on a Redis route, reset as soon as the response head came.
    RedisResetAtHead,
    /// Half a request head, then closed.
    HalfHead,
    /// A whole request sent, closed before reading anything.
    GoneBeforeAnswer,
}

const KINDS: [Kind; 6] = [
    Kind::TickerClosed,
    Kind::TickerReset,
    Kind::RedisClosed,
    Kind::RedisResetAtHead,
    Kind::HalfHead,
    Kind::GoneBeforeAnswer,
];

pub(super) async fn run(options: &Options, report: &mut Report) -> Result<(), Error> {
    let params = Params::at(options.scale);
    report.settings = serde_json::to_value(&params).unwrap_or_default();
    let prefix = format!("attack:churn:{}", std::process::id());
    let redis = redis::Client::open(REDIS)?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    for room in 0..params.rooms {
        let _: String = redis::cmd("XADD")
            .arg(format!("{prefix}:{room}"))
            .arg("*")
            .arg("data")
            .arg(format!("{{\"room\":{room}}}"))
            .query_async(&mut conn)
            .await?;
    }
    let outcome = churn(options, report, &params, &prefix, &mut conn).await;
    let keys: Vec<String> = (0..params.rooms).map(|r| format!("{prefix}:{r}")).collect();
    let deleted: Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    report.figure("redis_keys_deleted", deleted.unwrap_or(0));
    outcome
}

async fn churn(
    options: &Options,
    report: &mut Report,
    params: &Params,
    prefix: &str,
    redis: &mut redis::aio::MultiplexedConnection,
) -> Result<(), Error> {
    let config = Config::new()
        .route("tick", "/tick", "", "type = \"ticker\"\ninterval = \"1s\"")
        .route(
            "rooms",
            "/rooms/{room}",
            "",
            &format!(
                "type = \"redis\"\nurl = \"{REDIS}\"\nstream = \"{prefix}:{{room}}\"\nallow = \"{prefix}:*\"\nhistory = 1"
            ),
        );
    let label = "churn";
    let target = Target::start(options, report, label, &config).await?;
    let gateway = &target.gateway;
    let origin = report.origin();
    let mut redis_ports = HashSet::new();

    let warm_outcomes = cycles(gateway.addr, params, 0, params.warm_up).await;
    let warm_settled = settle(gateway, params.settle_within, None).await;
    let warm = probe::sample(gateway.pid, origin)
        .ok_or_else(|| Error::Gateway("gone after the warm-up".into()))?;
    let warm_redis = redis_sockets(gateway.pid, &mut redis_ports);
    let warm_listed = listed(redis, &redis_ports).await?;

    let started = Instant::now();
    let mut peak_redis = 0;
    let outcomes = {
        let run = cycles(gateway.addr, params, params.warm_up, params.cycles);
        tokio::pin!(run);
        // The gateway's Redis connections come and go during the run:
        // their ports are noted, to find them in CLIENT LIST afterwards.
        loop {
            tokio::select! {
                outcomes = &mut run => break outcomes,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    peak_redis = peak_redis.max(redis_sockets(gateway.pid, &mut redis_ports));
                }
            }
        }
    };
    let took = started.elapsed();
    let seen_redis = redis_ports.len();
    let settled = settle(
        gateway,
        params.settle_within,
        Some(warm.open_files + params.max_extra_files),
    )
    .await;
    let after = probe::sample(gateway.pid, origin)
        .ok_or_else(|| Error::Gateway("gone after the cycles".into()))?;
    let open_streams = gateway.metric("gateway_open_streams", &[]).await?;
    let after_redis = redis_sockets(gateway.pid, &mut redis_ports);
    let after_listed = listed(redis, &redis_ports).await?;

    let mut by_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, result) in warm_outcomes.iter().chain(&outcomes) {
        let entry = by_kind.entry(*kind).or_default();
        match result {
            Ok(()) => entry.0 += 1,
            Err(e) => {
                entry.1 += 1;
                *errors.entry(e.clone()).or_default() += 1;
            }
        }
    }
    let failed: usize = by_kind.values().map(|(_, f)| f).sum();
    report.check(
        format!("{label}: every cycle went as its client meant"),
        failed == 0 && outcomes.len() == params.cycles && warm_settled,
        format!(
            "{} cycles in {:.1} s ({:.0}/s), {failed} failed{}",
            outcomes.len(),
            took.as_secs_f64(),
            outcomes.len() as f64 / took.as_secs_f64(),
            errors
                .keys()
                .next()
                .map_or(String::new(), |e| format!("; e.g. {e}"))
        ),
    );
    report.check(
        format!("{label}: gateway_open_streams back to 0"),
        open_streams == 0.0,
        format!("{open_streams}"),
    );
    report.check(
        format!("{label}: open files back to their warm count"),
        settled && after.open_files <= warm.open_files + params.max_extra_files,
        format!(
            "{} warm, {} after (+{} allowed)",
            warm.open_files, after.open_files, params.max_extra_files
        ),
    );
    let growth = (after.rss_kib * 1024).saturating_sub(warm.rss_kib * 1024);
    report.check(
        format!(
            "{label}: RSS within {} MiB of its warm value",
            params.max_rss_growth >> 20
        ),
        growth <= params.max_rss_growth,
        format!(
            "{:.1} MiB warm, {:.1} MiB after",
            mib(warm.rss_kib),
            mib(after.rss_kib)
        ),
    );
    report.check(
        format!("{label}: no more Redis connections than when warm"),
        after_redis <= warm_redis && peak_redis > warm_redis,
        format!("{warm_redis} warm, {after_redis} after; up to {peak_redis} at once during the run, {seen_redis} different ones"),
    );
    report.check(
        format!("{label}: Redis's CLIENT LIST agrees"),
        after_listed <= warm_listed && after_listed == after_redis,
        format!("{warm_listed} of the gateway's connections listed warm, {after_listed} after"),
    );
    report.figure(
        "churn",
        json!({
            "cycles": outcomes.len(),
            "seconds": took.as_secs_f64(),
            "cycles_per_second": outcomes.len() as f64 / took.as_secs_f64(),
            "by_kind": by_kind.iter().map(|(k, (ok, failed))| json!({"kind": k, "ok": ok, "failed": failed})).collect::<Vec<_>>(),
            "errors": errors,
            "open_files_warm": warm.open_files,
            "open_files_after": after.open_files,
            "rss_mib_warm": mib(warm.rss_kib),
            "rss_mib_after": mib(after.rss_kib),
            "rss_mib_peak": mib(after.hwm_kib),
            "redis_connections_warm": warm_redis,
            "redis_connections_after": after_redis,
            "redis_connections_peak": peak_redis,
            "redis_connections_seen": seen_redis,
            "client_list_warm": warm_listed,
            "client_list_after": after_listed,
        }),
    );
    target.finish(report);
    Ok(())
}

/// Waits until no stream is open and, when given, the open files are at
/// most `files`.
async fn settle(gateway: &Gateway, within: Duration, files: Option<u64>) -> bool {
    streams_released(gateway, within).await
        && eventually(within, || async {
            files.is_none_or(|f| gateway.open_files().is_some_and(|n| n <= f))
        })
        .await
}

/// The gateway's established connections to Redis now; their ports are
/// added to `seen`.
fn redis_sockets(pid: u32, seen: &mut HashSet<u16>) -> usize {
    let sockets: Vec<_> = probe::tcp_sockets(pid)
        .into_iter()
        .filter(|s| s.remote.port() == REDIS_PORT && s.state == ESTABLISHED)
        .collect();
    seen.extend(sockets.iter().map(|s| s.local.port()));
    sockets.len()
}

/// How many of Redis's clients are the gateway's: those whose address is
/// one of the gateway's ports (other clients of the same Redis, other
/// tests among them, are not counted).
async fn listed(
    redis: &mut redis::aio::MultiplexedConnection,
    ports: &HashSet<u16>,
) -> Result<usize, Error> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(redis).await?;
    Ok(list
        .lines()
        .filter_map(|line| {
            let addr = line.split(' ').find_map(|f| f.strip_prefix("addr="))?;
            addr.parse::<SocketAddr>().ok()
        })
        .filter(|addr| addr.ip().is_loopback() && ports.contains(&addr.port()))
        .count())
}

/// Runs cycles `first..first + count`, `concurrency` at once.
async fn cycles(
    addr: SocketAddr,
    params: &Params,
    first: usize,
    count: usize,
) -> Vec<(Kind, Result<(), String>)> {
    let limit = Arc::new(Semaphore::new(params.concurrency));
    let mut set = JoinSet::new();
    for i in first..first + count {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        let kind = KINDS[i % KINDS.len()];
        let from = client::source(i, params.sources);
        let room = (i / KINDS.len()) % params.rooms.max(1);
        let stay = params.stay;
        set.spawn(async move {
            let _permit = permit;
            let result =
                tokio::time::timeout(Duration::from_secs(20), cycle(kind, addr, from, room, stay))
                    .await
                    .unwrap_or_else(|_| Err("no end within 20 s".into()));
            (kind, result)
        });
    }
    let mut outcomes = Vec::with_capacity(count);
    finish_into(&mut set, &mut outcomes).await;
    outcomes
}

/// One connection, opened and ended as `kind` says.
async fn cycle(
    kind: Kind,
    addr: SocketAddr,
    from: IpAddr,
    room: usize,
    stay: Duration,
) -> Result<(), String> {
    let stream = |path: String, format: Format, reset: bool| async move {
        let tune = Tune {
            reset,
            ..Tune::default()
        };
        let stream = Stream::open(addr, from, tune, &StreamRequest::get(&path, format))
            .await
            .map_err(|e| e.to_string())?;
        if stream.status != 200 {
            return Err(format!("{path} answered {}", stream.status));
        }
        Ok(stream)
    };
    let first_event = |mut stream: Stream| async move {
        match stream.next().await {
            Ok(Some(_)) => {
                tokio::time::sleep(stay).await;
                Ok(())
            }
            Ok(None) => Err("ended before an event".to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let room = format!("/rooms/{room}");
    match kind {
        Kind::TickerClosed => first_event(stream("/tick".into(), Format::Sse, false).await?).await,
        Kind::TickerReset => first_event(stream("/tick".into(), Format::Ndjson, true).await?).await,
        Kind::RedisClosed => first_event(stream(room, Format::Sse, false).await?).await,
        Kind::RedisResetAtHead => stream(room, Format::Sse, true).await.map(drop),
        Kind::HalfHead | Kind::GoneBeforeAnswer => {
            let mut tcp = client::connect(addr, from, Tune::default())
                .await
                .map_err(|e| e.to_string())?;
            let head = client::head("GET", "/tick", &[("Accept", "text/event-stream")]);
            let bytes = if kind == Kind::HalfHead {
                &head.as_bytes()[..head.len() / 2]
            } else {
                head.as_bytes()
            };
            tcp.write_all(bytes).await.map_err(|e| e.to_string())
        }
    }
}
