//! `attack SCENARIO [--scale small|full] [--gateway PATH] [--report FILE]`:
//! runs one scenario of the attack suite against the real gateway binary,
//! prints its checks, writes its JSON report, and exits 0 when every check
//! passed, 1 when one failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use attack::{Options, Scale, Scenario};
use clap::Parser;

/// Attacks the gateway on loopback and checks that it holds.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// slow-heads, big-heads, malformed, amplification, slow-readers,
    /// churn or shutdown.
    scenario: Scenario,
    /// small (seconds, as CI runs it) or full (the figures).
    #[arg(long, default_value = "small")]
    scale: Scale,
    /// The gateway binary; by default `gateway` next to this one.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// amplification: the most RSS a concurrent 1 MiB request may add, in
    /// bytes (default 4 MiB).
    #[arg(long)]
    amplification_limit: Option<u64>,
    /// Copy each gateway's whole log into this directory.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// shutdown: only the runs whose label contains this
    /// (`sse-reading 10000`, `mixed`).
    #[arg(long)]
    runs: Option<String>,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let gateway = match cli.gateway {
        Some(path) => path,
        None => std::env::current_exe()
            .context("find this binary's path")?
            .with_file_name("gateway"),
    };
    let mut options = Options::new(gateway, cli.scale);
    options.amplification_limit = cli.amplification_limit;
    options.keep_logs = cli.logs;
    options.runs = cli.runs;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")?;
    let report = runtime.block_on(async {
        // Ctrl-C or SIGTERM (run.sh's timeout) ends the scenario; the
        // gateway is killed as its handle is dropped.
        tokio::select! {
            report = attack::run(cli.scenario, &options) => Some(report),
            () = interrupted() => None,
        }
    });
    let Some(report) = report else {
        eprintln!("attack: interrupted");
        return Ok(ExitCode::from(130));
    };
    eprint!("{}", report.summary());
    if let Some(path) = &cli.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
