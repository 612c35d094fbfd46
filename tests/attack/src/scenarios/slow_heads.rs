//! `slow-heads`: connections that trickle a request head a byte at a time
//! (each byte would reset an idle timer, not this one), and connections
//! that send nothing. Each holds a socket, a file descriptor and a task
//! for as long as the gateway lets it.
//!
//! Passes when every trickled head is answered `408` (`request_timeout`,
//! `Connection: close`) and closed, every silent connection is closed
//! without a byte, all of them between `head_timeout` and `head_timeout` +
//! [`Params::margin`] after they connected, an ordinary client gets its
//! first event within [`Params::probe_limit`] all along, and the gateway's
//! open files are back to where they were.
//!
//! Then again with the gateway's open-file limit lowered below the number
//! of attackers: without the head timeout it would hold every descriptor
//! for good and serve nobody; with it, the first attackers are closed at
//! `head_timeout`, the gateway accepts again (after its one-second pause on
//! a failed accept) and the ordinary client waiting in the backlog is
//! served.
//!
//! Then a third gateway is flooded from one address: its streams up to
//! `max_streams_per_client` (the next is 429), its connections up to
//! `max_connections_per_client` (the next is answered 429 and closed),
//! then [`gateway::REFUSING`] more are held until `head_timeout` and the
//! rest are closed as soon as they are accepted, all counted in the
//! metrics, while a client from elsewhere is served.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{Target, finish_into, first_event, ms};
use crate::client::{self, Answer, End, Format, Stream, StreamRequest, Tune};
use crate::error::Error;
use crate::gateway::Config;
use crate::{Options, Report, Scale};

/// The scenario's parameters.
#[derive(Debug, Serialize)]
struct Params {
    /// Connections trickling a head.
    slow: usize,
    /// Connections sending nothing.
    silent: usize,
    /// Loopback addresses they come from (at most 1,000 connections each,
    /// `max_connections_per_client`, left at its default).
    sources: usize,
    /// `server.head_timeout`.
    #[serde(with = "humantime_serde")]
    head_timeout: Duration,
    /// Between two bytes of a trickled head.
    #[serde(with = "humantime_serde")]
    trickle: Duration,
    /// Allowed past `head_timeout` for the close to arrive: thousands of
    /// timers firing together, on a loaded machine.
    #[serde(with = "humantime_serde")]
    margin: Duration,
    /// How often the ordinary client asks, and how long it may wait for
    /// its first event.
    #[serde(with = "humantime_serde")]
    probe_every: Duration,
    #[serde(with = "humantime_serde")]
    probe_limit: Duration,
    /// The open-file limit of the second gateway, and its attackers (half
    /// trickling, half silent): more than it can hold.
    open_files: u64,
    attackers_over_limit: usize,
    /// The gateway's pause after a failed accept.
    #[serde(with = "humantime_serde")]
    accept_pause: Duration,
    /// The third gateway, flooded from one address: its
    /// `max_connections_per_client` and `max_streams_per_client`, and the
    /// connections past those being refused at once (`gateway::REFUSING`),
    /// which must be closed as soon as they are accepted.
    flood_connections_per_client: usize,
    flood_streams_per_client: usize,
    flood_past_refusing: usize,
}

impl Params {
    fn at(scale: Scale) -> Self {
        match scale {
            Scale::Small => Self {
                slow: 50,
                silent: 50,
                sources: 2,
                head_timeout: Duration::from_secs(2),
                trickle: Duration::from_millis(300),
                margin: Duration::from_secs(2),
                probe_every: Duration::from_millis(500),
                probe_limit: Duration::from_secs(2),
                open_files: 64,
                attackers_over_limit: 96,
                accept_pause: Duration::from_secs(1),
                flood_connections_per_client: 20,
                flood_streams_per_client: 10,
                flood_past_refusing: 50,
            },
            Scale::Full => Self {
                slow: 1_000,
                silent: 1_000,
                sources: 16,
                head_timeout: Duration::from_secs(10),
                trickle: Duration::from_secs(2),
                margin: Duration::from_secs(3),
                probe_every: Duration::from_secs(1),
                probe_limit: Duration::from_secs(1),
                open_files: 1_024,
                attackers_over_limit: 1_536,
                accept_pause: Duration::from_secs(1),
                flood_connections_per_client: 1_000,
                flood_streams_per_client: 500,
                flood_past_refusing: 200,
            },
        }
    }

    fn config(&self) -> Config {
        Config::new()
            .server(
                "head_timeout",
                format!("{}ms", self.head_timeout.as_millis()).as_str(),
            )
            .route("tick", "/tick", "", "type = \"ticker\"\ninterval = \"1s\"")
    }

    /// Where the ordinary client comes from: an address no attacker uses.
    fn probe_source(&self) -> IpAddr {
        client::source(self.sources, self.sources + 1)
    }

    /// How long the ordinary client waits for its first event on `/tick`
    /// (given up at five times the limit, to say by how much it missed).
    async fn probe(&self, gateway: &crate::gateway::Gateway) -> Result<Duration, String> {
        first_event(gateway, self.probe_source(), "/tick", self.probe_limit * 5).await
    }
}

/// The head a slow client trickles: it never ends.
const HEAD: &[u8] = b"GET /tick HTTP/1.1\r\nHost: attack\r\nAccept: text/event-stream\r\nX-Slow: ";

pub(super) async fn run(options: &Options, report: &mut Report) -> Result<(), Error> {
    let params = Params::at(options.scale);
    report.settings = serde_json::to_value(&params).unwrap_or_default();
    let normal = normal_limits(options, report, &params).await?;
    report.figure("default_limits", normal);
    let low = low_open_files(options, report, &params).await?;
    report.figure("low_open_file_limit", low);
    let flood = one_address(options, report, &params).await?;
    report.figure("one_address", flood);
    Ok(())
}

/// One attacker's outcome.
#[derive(Debug)]
struct Attacker {
    slow: bool,
    answer: Answer,
}

impl Attacker {
    /// A slow head answered 408 with the JSON error, then closed; a silent
    /// connection closed without a byte.
    fn as_expected(&self) -> bool {
        if self.answer.end == End::Open {
            return false;
        }
        if self.slow {
            self.answer.status() == Some(408)
                && self.answer.contains(b"\"request_timeout\"")
                && self.answer.header("connection").as_deref() == Some("close")
        } else {
            self.answer.bytes.is_empty()
        }
    }
}

/// Starts `slow` trickling and `silent` silent attackers.
fn attack(
    set: &mut JoinSet<Attacker>,
    addr: SocketAddr,
    params: &Params,
    slow: usize,
    silent: usize,
    wait: Duration,
) {
    for i in 0..slow + silent {
        let from = client::source(i, params.sources);
        let trickle = (i < slow).then_some(params.trickle);
        set.spawn(attacker(addr, from, trickle, wait));
    }
}

/// One attacker: trickling a head a byte every `trickle`, or silent; what
/// came back within `wait`. Timed from before the connect: the gateway's
/// clock starts at its accept, later, and this task may run well after the
/// connect completed when thousands start at once.
async fn attacker(
    addr: SocketAddr,
    from: IpAddr,
    trickle: Option<Duration>,
    wait: Duration,
) -> Attacker {
    let started = Instant::now();
    let mut answer = match client::connect(addr, from, Tune::default()).await {
        Ok(tcp) => match trickle {
            Some(trickle) => trickled(tcp, trickle, wait).await,
            None => {
                let mut tcp = tcp;
                client::read_answer(&mut tcp, wait, Duration::ZERO).await
            }
        },
        Err(error) => Answer {
            bytes: error.to_string().into_bytes(),
            end: End::Open,
            after: Duration::ZERO,
        },
    };
    answer.after = started.elapsed();
    Attacker {
        slow: trickle.is_some(),
        answer,
    }
}

/// Sends [`HEAD`] and then `a`s, a byte every `trickle`, while reading
/// what comes back, until the gateway closes (or `wait` passes).
async fn trickled(mut tcp: tokio::net::TcpStream, trickle: Duration, wait: Duration) -> Answer {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + wait;
    let (mut reader, mut writer) = tcp.split();
    let mut bytes = HEAD.iter().chain(std::iter::repeat(&b'a'));
    let mut next = tokio::time::Instant::now();
    let mut writing = true;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => break End::Closed,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break End::Reset,
            },
            () = tokio::time::sleep_until(next), if writing => {
                let byte = bytes.next().copied().unwrap_or(b'a');
                // Once the gateway has closed, writing fails; what it
                // answered is still to be read.
                writing = writer.write_all(&[byte]).await.is_ok();
                next += trickle;
            }
            () = tokio::time::sleep_until(deadline) => break End::Open,
        }
    };
    Answer {
        bytes: got,
        end,
        after: started.elapsed(),
    }
}

/// The first gateway: default limits.
async fn normal_limits(
    options: &Options,
    report: &mut Report,
    params: &Params,
) -> Result<serde_json::Value, Error> {
    let label = "default limits";
    let target = Target::start(options, report, label, &params.config()).await?;
    let gateway = &target.gateway;
    let files_before = gateway.open_files().unwrap_or(0);
    let wait = params.head_timeout + params.margin + Duration::from_secs(5);
    let mut set = JoinSet::new();
    attack(
        &mut set,
        gateway.addr,
        params,
        params.slow,
        params.silent,
        wait,
    );
    let mut attackers = Vec::new();
    let mut probes = Vec::new();
    let mut peak_files = 0;
    {
        let probing = async {
            loop {
                tokio::time::sleep(params.probe_every).await;
                peak_files = peak_files.max(gateway.open_files().unwrap_or(0));
                let probe = params.probe(gateway).await;
                probes.push(probe);
            }
        };
        let joined = async {
            finish_into(&mut set, &mut attackers).await;
        };
        tokio::select! {
            () = joined => {}
            () = probing => {}
        }
    }
    let settled = super::eventually(Duration::from_secs(5), || async {
        gateway.open_files().unwrap_or(u64::MAX) <= files_before
    })
    .await;
    let files_after = gateway.open_files().unwrap_or(0);
    let timeouts = gateway
        .metric("gateway_connection_timeouts_total", &[("phase", "head")])
        .await?;

    let started = (params.slow, params.silent);
    let figures = judge(
        report,
        label,
        params,
        &attackers,
        started,
        params.head_timeout,
    );
    let slowest_probe = probes.iter().filter_map(|p| p.as_ref().ok()).max().copied();
    let failed_probes: Vec<_> = probes.iter().filter_map(|p| p.as_ref().err()).collect();
    report.check(
        format!(
            "{label}: an ordinary client got its first event within {:?} all along",
            params.probe_limit
        ),
        !probes.is_empty()
            && failed_probes.is_empty()
            && slowest_probe.is_some_and(|s| s <= params.probe_limit),
        format!(
            "{} probes, slowest {:.1} ms{}",
            probes.len(),
            slowest_probe.map_or(0.0, ms),
            failed_probes
                .first()
                .map_or(String::new(), |e| format!("; failed: {e}"))
        ),
    );
    let expected = (params.slow + params.silent) as f64;
    report.check(
        format!(
            "{label}: gateway_connection_timeouts_total{{phase=\"head\"}} counts every attacker"
        ),
        timeouts >= expected,
        format!("{timeouts} for {expected} attackers"),
    );
    report.check(
        format!("{label}: open files back to where they were"),
        settled,
        format!("{files_before} before, {files_after} after"),
    );
    target.finish(report);
    Ok(json!({
        "attackers": figures,
        "probes": probes.len(),
        "slowest_probe_ms": slowest_probe.map(ms),
        "open_files_before": files_before,
        "open_files_peak": peak_files,
        "open_files_after": files_after,
        "head_timeouts_counted": timeouts,
    }))
}

/// Checks every attacker's outcome and timing against `head_timeout` (from
/// its connect; `due` is later for those waiting to be accepted) and that
/// all `started` (trickling, silent) are there; returns the figures.
fn judge(
    report: &mut Report,
    label: &str,
    params: &Params,
    attackers: &[Attacker],
    started: (usize, usize),
    due: Duration,
) -> serde_json::Value {
    let slow: Vec<_> = attackers.iter().filter(|a| a.slow).collect();
    let silent: Vec<_> = attackers.iter().filter(|a| !a.slow).collect();
    let slow_ok = slow.iter().filter(|a| a.as_expected()).count();
    let silent_ok = silent.iter().filter(|a| a.as_expected()).count();
    let first = attackers
        .iter()
        .map(|a| a.answer.after)
        .min()
        .unwrap_or_default();
    let last = attackers
        .iter()
        .map(|a| a.answer.after)
        .max()
        .unwrap_or_default();
    let still_open = attackers
        .iter()
        .filter(|a| a.answer.end == End::Open)
        .count();
    let odd = attackers.iter().find(|a| !a.as_expected()).map(|a| {
        String::from_utf8_lossy(&a.answer.bytes[..a.answer.bytes.len().min(120)]).into_owned()
    });
    report.check(
        format!("{label}: every trickled head answered 408 (request_timeout, Connection: close) and closed"),
        slow_ok == started.0,
        format!("{slow_ok} of {}{}", started.0, odd.as_ref().map_or(String::new(), |o| format!("; e.g. {o:?}"))),
    );
    report.check(
        format!("{label}: every silent connection closed without a byte"),
        silent_ok == started.1,
        format!("{silent_ok} of {}", started.1),
    );
    // Timed from before the connect: no close may come sooner (but for a
    // timer tick).
    let earliest = params.head_timeout.saturating_sub(Duration::from_millis(2));
    let latest = due + params.margin;
    report.check(
        format!(
            "{label}: every attacker closed between head_timeout and {:?} after it connected",
            latest
        ),
        still_open == 0 && first >= earliest && last <= latest,
        format!(
            "first closed after {:.0} ms, last after {:.0} ms, {still_open} still open",
            ms(first),
            ms(last)
        ),
    );
    json!({
        "slow": slow.len(),
        "slow_answered_408": slow_ok,
        "silent": silent.len(),
        "silent_closed_quietly": silent_ok,
        "first_closed_ms": ms(first),
        "last_closed_ms": ms(last),
        "still_open": still_open,
    })
}

/// The second gateway: fewer open files than attackers.
async fn low_open_files(
    options: &Options,
    report: &mut Report,
    params: &Params,
) -> Result<serde_json::Value, Error> {
    let label = format!("open-file limit {}", params.open_files);
    let target = Target::start(options, report, &label, &params.config()).await?;
    let gateway = &target.gateway;
    gateway.limit_open_files(params.open_files)?;
    let attackers_count = params.attackers_over_limit;
    // Those waiting in the backlog are accepted once the first ones are
    // closed (after the gateway's pause on a failed accept), and then have
    // their own head_timeout.
    let second_wave = params.head_timeout * 2 + params.accept_pause;
    let wait = second_wave + params.margin + Duration::from_secs(5);
    let mut set = JoinSet::new();
    let slow = attackers_count / 2;
    attack(
        &mut set,
        gateway.addr,
        params,
        slow,
        attackers_count - slow,
        wait,
    );
    // Let the gateway take every descriptor it can.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let files_full = gateway.open_files().unwrap_or(0);
    let probe_bound = params.head_timeout + params.accept_pause + params.margin;
    let probe = first_event(
        gateway,
        params.probe_source(),
        "/tick",
        second_wave + params.margin * 2,
    )
    .await;
    let mut attackers = Vec::new();
    finish_into(&mut set, &mut attackers).await;
    let healthy = client::get(gateway.addr, "/healthz").await.map(|(s, _)| s);
    let accept_failures = gateway
        .log_text()
        .lines()
        .filter(|l| l.contains("Accepting a connection failed"))
        .count();
    report.check(
        format!("{label}: an ordinary client waiting behind the attackers is served within head_timeout + accept pause + margin"),
        probe.as_ref().is_ok_and(|t| *t <= probe_bound),
        match &probe {
            Ok(t) => format!("first event after {:.0} ms (bound {:.0} ms); the gateway held {files_full} files", ms(*t), ms(probe_bound)),
            Err(e) => format!("{e}; the gateway held {files_full} files"),
        },
    );
    let started = (slow, attackers_count - slow);
    let figures = judge(report, &label, params, &attackers, started, second_wave);
    report.check(
        format!("{label}: the gateway serves again afterwards"),
        matches!(healthy, Ok(200)),
        format!("/healthz: {healthy:?}; {accept_failures} failed accepts logged"),
    );
    target.finish(report);
    Ok(json!({
        "attackers": figures,
        "open_files_limit": params.open_files,
        "open_files_when_full": files_full,
        "probe_first_event_ms": probe.as_ref().ok().map(|t| ms(*t)),
        "probe_bound_ms": ms(probe_bound),
        "failed_accepts_logged": accept_failures,
    }))
}

/// The third gateway: one address takes its streams and connections, then
/// floods on: its next stream is 429, its next connection is answered 429
/// and closed, the next `REFUSING` are held only until `head_timeout`, and
/// any more are closed as soon as they are accepted; other clients are
/// served meanwhile.
async fn one_address(
    options: &Options,
    report: &mut Report,
    params: &Params,
) -> Result<serde_json::Value, Error> {
    let label = "one address floods";
    let (connections, streams) = (
        params.flood_connections_per_client,
        params.flood_streams_per_client,
    );
    let config = params
        .config()
        .server("max_connections_per_client", connections)
        .server("max_streams_per_client", streams);
    let target = Target::start(options, report, label, &config).await?;
    let gateway = &target.gateway;
    let addr = gateway.addr;
    let flooder = client::source(249, 254);
    let files_at_start = gateway.open_files().unwrap_or(0);
    let request = StreamRequest::get("/tick", Format::Sse);

    // Its streams, each with its first event, held to the end.
    let mut held = Vec::new();
    for _ in 0..streams {
        let mut stream = Stream::open(addr, flooder, Tune::default(), &request).await?;
        if stream.status == 200 && matches!(stream.next().await, Ok(Some(_))) {
            held.push(stream);
        }
    }
    let extra_stream = Stream::open(addr, flooder, Tune::default(), &request)
        .await
        .map(|s| s.status);
    let streams_refused = gateway
        .metric("gateway_streams_refused_total", &[("reason", "per_client")])
        .await?;
    // The refused stream's connection gone (it counted for the client)…
    super::eventually(Duration::from_secs(10), || async {
        gateway.open_files().unwrap_or(u64::MAX) <= files_at_start + streams as u64
    })
    .await;
    // …the rest of its connections, silent.
    let wait = params.head_timeout + params.margin + Duration::from_secs(5);
    let mut silent = JoinSet::new();
    attack_from(&mut silent, addr, flooder, connections - streams, wait);
    // Every one of them accepted, so that the next is over the limit.
    let all_in = super::eventually(Duration::from_secs(30), || async {
        gateway.open_files().unwrap_or(0) >= files_at_start + connections as u64
    })
    .await;
    // One more, with a request: refused.
    let refused = async {
        let mut tcp = client::connect(addr, flooder, Tune::default()).await?;
        let head = client::head("GET", "/tick", &[("Accept", "text/event-stream")]);
        tcp.write_all(head.as_bytes())
            .await
            .map_err(Error::io("send a request"))?;
        Ok::<_, Error>(
            client::read_answer(&mut tcp, Duration::from_secs(5), Duration::from_secs(2)).await,
        )
    }
    .await?;
    // And past the connections being refused at once.
    let mut flood = JoinSet::new();
    let past = ::gateway::REFUSING + params.flood_past_refusing;
    attack_from(&mut flood, addr, flooder, past, wait);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe = params.probe(gateway).await;
    let mut flooded = Vec::new();
    finish_into(&mut flood, &mut flooded).await;
    let mut quiet = Vec::new();
    finish_into(&mut silent, &mut quiet).await;
    let answered = gateway
        .metric(
            "gateway_connections_refused_total",
            &[("reason", "per_client"), ("outcome", "answered")],
        )
        .await?;
    let closed_counted = gateway
        .metric(
            "gateway_connections_refused_total",
            &[("reason", "per_client"), ("outcome", "closed")],
        )
        .await?;
    let streams_held = held.len();
    drop(held);

    let at_once =
        |a: &&Attacker| a.answer.after < Duration::from_secs(1) && a.answer.end != End::Open;
    let closed_at_once = flooded.iter().filter(at_once).count();
    let held_to_timeout = flooded
        .iter()
        .filter(|a| a.answer.after >= params.head_timeout.saturating_sub(Duration::from_millis(2)))
        .filter(|a| a.answer.end != End::Open && a.answer.bytes.is_empty())
        .count();
    let quiet_ok = quiet.iter().filter(|a| a.as_expected()).count();
    report.check(
        format!("{label}: stream {} of one client is 429 (max_streams_per_client), counted", streams + 1),
        matches!(extra_stream, Ok(429)) && streams_refused >= 1.0 && streams_held == streams,
        format!("{} streams held, the next: {extra_stream:?}; gateway_streams_refused_total{{reason=\"per_client\"}} {streams_refused}", streams_held),
    );
    report.check(
        format!(
            "{label}: connection {} of one client is answered 429 with Retry-After and closed",
            connections + 1
        ),
        all_in
            && refused.status() == Some(429)
            && refused.contains(b"\"too_many_connections\"")
            && refused.header("retry-after").is_some()
            && refused.end != End::Open,
        format!(
            "{:?} retry-after {:?}, {:?}",
            refused.status(),
            refused.header("retry-after"),
            refused.end
        ),
    );
    report.check(
        format!("{label}: past {} connections being refused, the next are closed at once", ::gateway::REFUSING),
        closed_at_once + 1 >= params.flood_past_refusing
            && closed_at_once <= params.flood_past_refusing + 1
            && held_to_timeout + closed_at_once == past,
        format!(
            "of {past}: {closed_at_once} closed at once, {held_to_timeout} held until head_timeout; counted: {answered} answered, {closed_counted} closed"
        ),
    );
    report.check(
        format!("{label}: its silent connections closed at head_timeout without a byte"),
        quiet_ok == connections - streams,
        format!("{quiet_ok} of {}", connections - streams),
    );
    report.check(
        format!(
            "{label}: another client got its first event within {:?} meanwhile",
            params.probe_limit
        ),
        probe.as_ref().is_ok_and(|t| *t <= params.probe_limit),
        match &probe {
            Ok(t) => format!("{:.1} ms", ms(*t)),
            Err(e) => e.clone(),
        },
    );
    target.finish(report);
    Ok(json!({
        "connections_per_client": connections,
        "streams_per_client": streams,
        "extra_stream_status": extra_stream.ok(),
        "refused_connection_status": refused.status(),
        "flood_past_limit": past,
        "closed_at_once": closed_at_once,
        "held_until_head_timeout": held_to_timeout,
        "connections_refused_answered": answered,
        "connections_refused_closed": closed_counted,
        "probe_first_event_ms": probe.as_ref().ok().map(|t| ms(*t)),
    }))
}

/// Starts `count` silent attackers from one address.
fn attack_from(
    set: &mut JoinSet<Attacker>,
    addr: SocketAddr,
    from: IpAddr,
    count: usize,
    wait: Duration,
) {
    for _ in 0..count {
        set.spawn(attacker(addr, from, None, wait));
    }
}
