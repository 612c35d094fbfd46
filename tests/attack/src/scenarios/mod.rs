//! One file per scenario; here what they share: a gateway started and
//! sampled for a scenario, a client that measures how promptly an ordinary
//! stream is served meanwhile, and waiting for a condition.

mod amplification;
mod big_heads;
mod churn;
mod malformed;
mod shutdown;
mod slow_heads;
mod slow_readers;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::client::{Format, Stream, StreamRequest, Tune};
use crate::error::Error;
use crate::gateway::{Config, Gateway};
use crate::probe::Sampler;
use crate::{Options, Report, Scenario};
use tokio::task::JoinSet;

pub(crate) async fn run(
    scenario: Scenario,
    options: &Options,
    report: &mut Report,
) -> Result<(), Error> {
    match scenario {
        Scenario::SlowHeads => slow_heads::run(options, report).await,
        Scenario::BigHeads => big_heads::run(options, report).await,
        Scenario::Malformed => malformed::run(options, report).await,
        Scenario::Amplification => amplification::run(options, report).await,
        Scenario::SlowReaders => slow_readers::run(options, report).await,
        Scenario::Churn => churn::run(options, report).await,
        Scenario::Shutdown => shutdown::run(options, report).await,
    }
}

/// A gateway started for (part of) a scenario, sampled while it runs.
#[derive(Debug)]
struct Target {
    gateway: Gateway,
    sampler: Option<Sampler>,
    label: String,
    /// Where its whole log is copied at the end, if anywhere.
    keep_log: Option<std::path::PathBuf>,
}

impl Target {
    /// Starts the gateway on `config`; `label` names this gateway in the
    /// report's checks.
    async fn start(
        options: &Options,
        report: &Report,
        label: &str,
        config: &Config,
    ) -> Result<Self, Error> {
        let gateway = Gateway::start(&options.gateway, config).await?;
        let sampler = Some(Sampler::start(gateway.pid, report.origin()));
        let keep_log = options.keep_logs.as_ref().map(|dir| {
            let name: String = format!("{}-{label}", report.scenario)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            dir.join(format!("{name}.log"))
        });
        Ok(Self {
            gateway,
            sampler,
            label: label.to_string(),
            keep_log,
        })
    }

    /// Stops sampling; the samples and the log go into the report, with a
    /// check that nothing panicked.
    fn finish(mut self, report: &mut Report) {
        if let Some(sampler) = self.sampler.take() {
            report.samples.extend(sampler.stop());
        }
        if let Some(path) = &self.keep_log {
            let _ = std::fs::write(path, self.gateway.log_text());
        }
        let log = self.gateway.log_summary();
        report.check(
            format!("{}: no panic in the gateway's log", self.label),
            log.panics.is_empty(),
            match log.panics.first() {
                Some(panic) => format!("{} panics, the first: {panic}", log.panics.len()),
                None => format!(
                    "{} lines, {} warnings, {} errors",
                    log.lines, log.warnings, log.errors
                ),
            },
        );
        report.logs.push(log);
    }
}

/// How long an ordinary client took to get its first event on `path`
/// (SSE, from `from`), at most `limit`.
async fn first_event(
    gateway: &Gateway,
    from: IpAddr,
    path: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let request = StreamRequest::get(path, Format::Sse);
    let attempt = async {
        let mut stream = Stream::open(gateway.addr, from, Tune::default(), &request)
            .await
            .map_err(|e| e.to_string())?;
        if stream.status != 200 {
            return Err(format!("answered {}", stream.status));
        }
        match stream.next().await {
            Ok(Some(_)) => Ok(started.elapsed()),
            Ok(None) => Err("ended before an event".to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no event within {limit:?}")))
}

/// Polls `condition` every 50 ms until it holds (true) or `limit` passes
/// (false).
async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves each task's output into `into` as the task finishes, until all
/// have; a task that panicked is left out (the counts checked against what
/// was started show it). Stopped early, it keeps what came so far.
async fn finish_into<T: 'static>(set: &mut JoinSet<T>, into: &mut Vec<T>) {
    while let Some(done) = set.join_next().await {
        if let Ok(value) = done {
            into.push(value);
        }
    }
}

/// Waits, at most `within`, until the gateway has no stream open.
async fn streams_released(gateway: &Gateway, within: Duration) -> bool {
    eventually(within, || async {
        gateway
            .metric("gateway_open_streams", &[])
            .await
            .is_ok_and(|open| open == 0.0)
    })
    .await
}

/// Milliseconds, for figures.
fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// Mebibytes from KiB, for figures.
fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}
