//! The attack suite: the real `gateway` binary, started as a child process
//! on a config written for each scenario, attacked over loopback by tokio
//! clients, watched from `/proc` and its metrics, and judged against pass
//! criteria that can fail. Every scenario is bounded in count and time and
//! stops by itself: a hard deadline, and the gateway killed when its handle
//! is dropped.
//!
//! # Layout
//!
//! - [`gateway`]: the binary as a child process: its config, its port and
//!   metrics port read from its log, its exit waited for by a thread of its
//!   own, SIGTERM, a lowered open-file limit, its log in a few counts.
//! - [`client`]: the attackers: sockets from chosen loopback addresses
//!   (tuned when they will not read), raw requests, streams read with hyper
//!   and the load generator's parsers.
//! - [`probe`]: the gateway's RSS, peak RSS, CPU and open files sampled by
//!   a thread, and its TCP sockets (to a broker, or with bytes unsent).
//! - [`report`]: checks, figures and samples, as JSON and as a summary.
//! - `scenarios/`: one file per scenario, each with its parameters at both
//!   scales, its attack and its checks.
//!
//! A run: [`run`] gives a [`Scenario`] its [`Options`] and a deadline; the
//! scenario starts one gateway (or several, one after the other), attacks
//! it, records each pass criterion as a check, and the [`report::Report`]
//! passes when every check did. `src/main.rs` is the command line;
//! `gateway/tests/attack.rs` runs every scenario at small scale in CI;
//! `tests/attack/run.sh` runs them at full scale.

pub mod client;
pub mod error;
pub mod gateway;
pub mod probe;
pub mod report;
mod scenarios;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

pub use error::Error;
pub use report::Report;

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Seconds per scenario, for CI (a debug build on a loaded machine).
    Small,
    /// The figures: thousands of connections, the default
    /// timeouts, minutes in all (a release build).
    Full,
}

impl FromStr for Scale {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "small" => Ok(Self::Small),
            "full" => Ok(Self::Full),
            _ => Err(format!("{text:?}: the scale is small or full")),
        }
    }
}

/// The attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Heads trickled a byte at a time and silent connections, also with a
    /// low open-file limit: closed at `head_timeout`, others still served.
    SlowHeads,
    /// Unfinished 400 KB heads and 200 KB header values: 431 or closed,
    /// memory bounded per connection.
    BigHeads,
    /// A corpus of malformed and smuggling requests, each with its status.
    Malformed,
    /// Concurrent 1 MiB POSTs read slowly: RSS growth per request.
    Amplification,
    /// Clients that never read a fast route: RSS flat, fast readers served.
    SlowReaders,
    /// Connect/disconnect cycles on stream routes (Redis included): no
    /// stream, file, memory or broker connection left behind.
    Churn,
    /// SIGTERM with thousands of streams: every reading stream gets
    /// `gateway.close` with its last id, and the process exits in time.
    Shutdown,
}

impl Scenario {
    /// Every scenario, in the order `run.sh` runs them.
    pub const ALL: [Self; 7] = [
        Self::SlowHeads,
        Self::BigHeads,
        Self::Malformed,
        Self::Amplification,
        Self::SlowReaders,
        Self::Churn,
        Self::Shutdown,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::SlowHeads => "slow-heads",
            Self::BigHeads => "big-heads",
            Self::Malformed => "malformed",
            Self::Amplification => "amplification",
            Self::SlowReaders => "slow-readers",
            Self::Churn => "churn",
            Self::Shutdown => "shutdown",
        }
    }

    /// The hard bound on its whole run: well above what it takes (measured
    /// on a loaded 2-core machine), so that it only cuts a run that hangs.
    pub fn deadline(self, scale: Scale) -> Duration {
        let seconds = match (self, scale) {
            (_, Scale::Small) => 60,
            (Self::Shutdown, Scale::Full) => 600,
            (Self::SlowHeads | Self::Churn, Scale::Full) => 240,
            (_, Scale::Full) => 180,
        };
        Duration::from_secs(seconds)
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("{text:?}: the scenarios are {}", names.join(", "))
            })
    }
}

/// What a run is given.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `gateway` binary.
    pub gateway: PathBuf,
    /// Small (CI) or full.
    pub scale: Scale,
    /// The amplification scenario's bound on RSS growth per concurrent
    /// 1 MiB request, in bytes; `None`: [`AMPLIFICATION_LIMIT`].
    pub amplification_limit: Option<u64>,
    /// Where each gateway's whole log is copied when it stops (by default
    /// only its counts go into the report).
    pub keep_logs: Option<PathBuf>,
    /// Only the runs whose label contains this (the shutdown scenario's
    /// `sse-reading 10000`, say); all by default.
    pub runs: Option<String>,
}

/// The default bound on the RSS a concurrent 1 MiB POST may add to the
/// gateway while it is streamed: 4 MiB, four times the body. The body has
/// to be held while it is parsed; a structure per token on top of it (a
/// `Vec<String>` of half a million one-letter tokens is about 24 MiB) is
/// the amplification the scenario exists to catch.
pub const AMPLIFICATION_LIMIT: u64 = 4 << 20;

impl Options {
    /// `gateway` at `scale`, every parameter at its default.
    pub fn new(gateway: impl Into<PathBuf>, scale: Scale) -> Self {
        Self {
            gateway: gateway.into(),
            scale,
            amplification_limit: None,
            keep_logs: None,
            runs: None,
        }
    }
}

/// Runs `scenario` to its report, within its deadline.
pub async fn run(scenario: Scenario, options: &Options) -> Report {
    raise_open_files();
    let mut report = Report::new(scenario.name(), options.scale);
    // The machine is shared: how busy it was says how far to trust times.
    report.figure("load_average_at_start", load_average());
    let deadline = scenario.deadline(options.scale);
    let outcome =
        tokio::time::timeout(deadline, scenarios::run(scenario, options, &mut report)).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => report.check("the scenario ran to its checks", false, error.to_string()),
        Err(_) => report.check(
            "the scenario finished within its deadline",
            false,
            format!("still running after {deadline:?}"),
        ),
    }
    report.figure("load_average_at_end", load_average());
    report.finish()
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// This process holds thousands of sockets: its soft open-file limit is
/// raised to the hard one.
fn raise_open_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_and_scales_are_named() {
        for scenario in Scenario::ALL {
            assert_eq!(scenario.name().parse::<Scenario>(), Ok(scenario));
        }
        assert!(
            "nope"
                .parse::<Scenario>()
                .unwrap_err()
                .contains("slow-heads")
        );
        assert_eq!("full".parse::<Scale>(), Ok(Scale::Full));
    }
}
