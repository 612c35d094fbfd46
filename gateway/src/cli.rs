//! The `gateway` command line: reads the config, then serves until
//! SIGTERM/SIGINT; or checks a config, or mints a development token. It
//! only wires the library's parts together. The `gateway` binary is
//! [`main`] and nothing else, so that a binary of an embedder's own (one
//! that registers backends of its own, see [`backends::registry`]) is the
//! same program: register, then call [`main`].

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::Gateway;
use crate::config::{self, GatewayConfig, LogFormat, Source};
use crate::lambda::{self, Serving};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::{TcpListener, TcpSocket};
use tracing_appender::non_blocking::WorkerGuard;

/// Streams events from configured backends as NDJSON or Server-Sent Events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (.toml, .yaml, .yml or .json); without one, the built-in
    /// default config serves the reference stream on `/`. `GATEWAY__…`
    /// variables override any key (`GATEWAY__SERVER__PORT=9090`).
    /// [env: GATEWAY_CONFIG=] (empty counts as unset, so that a deployment
    /// template can always set it)
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate a config (PATH, else --config, else the built-in one), print
    /// every problem, and exit 0 when it is valid or 2 when it is not.
    CheckConfig {
        /// The config file to check.
        path: Option<PathBuf>,
    },
    /// Print a development JWT for ROUTE, a route whose `jwt` auth has a
    /// `secret`: signed with it, with the route's first algorithm,
    /// audience and issuer (from --config, else GATEWAY_CONFIG). For trying
    /// a protected route, not for production: real tokens come from your
    /// identity provider.
    Token {
        /// The route (its name in the config).
        route: String,
        /// `sub`.
        #[arg(long, default_value = "dev")]
        sub: String,
        /// How long the token is valid ("30m", "2h").
        #[arg(long, default_value = "1h", value_parser = humantime_serde::re::humantime::parse_duration)]
        ttl: std::time::Duration,
        /// More claims, a JSON object ('{"rooms": ["lobby"]}').
        #[arg(long)]
        claims: Option<String>,
    },
}

/// Exit status for an invalid configuration (as for bad command-line usage).
const EXIT_CONFIG: u8 = 2;

/// Runs the command line (the process's arguments and environment) to its
/// end: the exit status to return from `main`. It ends the process itself
/// after serving (see the note at its end).
pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.config.is_none() {
        cli.config = std::env::var_os("GATEWAY_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
    }
    let (path, check_only) = match cli.command {
        Some(Command::CheckConfig { path }) => (path.or(cli.config), true),
        Some(Command::Token {
            route,
            sub,
            ttl,
            claims,
        }) => {
            let source = cli.config.as_deref().map_or(Source::Default, Source::File);
            let config = match config::load(source, None) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let request = crate::devtoken::Request {
                route: &route,
                subject: &sub,
                ttl,
                claims: claims.as_deref(),
            };
            return match crate::devtoken::mint(&config, &request) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    eprintln!("gateway token: {reason}");
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
        Some(Command::Serve) | None => (cli.config, false),
    };
    let source = path.as_deref().map_or(Source::Default, Source::File);
    let config = match config::load(source, None) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        let origin = path.map_or("built-in default config".into(), |p| {
            p.display().to_string()
        });
        println!(
            "{origin}: ok ({} route{})",
            config.routes.len(),
            if config.routes.len() == 1 { "" } else { "s" }
        );
        return ExitCode::SUCCESS;
    }
    let log = init_tracing(config.server.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(config)) {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("gateway: {error:#}");
            1
        }
    };
    // The log is written out; what is still open (clients that did not take
    // their final event within the shutdown grace) is left to the kernel,
    // which closes it with the process: dropping the runtime would close
    // every connection one by one first (10,000 unread streams: 0.4 s past
    // the grace).
    drop(log);
    std::process::exit(code)
}

/// Logs go to stderr through a writer thread of their own, so that a slow
/// reader of stderr (a pipe to a log shipper) never stalls the runtime's
/// workers; the returned guard writes out what is left when it is dropped.
/// Lines queue in memory (at most [`LOG_LINES_QUEUED`]; past that, a worker
/// waits rather than a line being lost). Colours only on a terminal.
fn init_tracing(format: LogFormat) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .thread_name("gateway-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Log lines waiting for the writer thread, at most: room for a line per
/// stream of a full gateway ending at once.
const LOG_LINES_QUEUED: usize = 128_000;

async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let vars: HashMap<String, String> = std::env::vars().collect();
    let adapter = Path::new(lambda::ADAPTER_EXTENSION).exists();
    let serving = lambda::resolve(config.lambda.mode, &vars, adapter)
        .map_err(|reason| anyhow::anyhow!("lambda.mode: {reason}"))?;
    let gateway = Arc::new(Gateway::from_config(&config)?);
    let shutdown = gateway.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutting down: closing open streams");
        shutdown.cancel();
    });
    if serving == Serving::Native {
        if config.server.metrics.listen.is_some() {
            tracing::warn!(
                "server.metrics.listen is not served in Lambda native mode (there is no listener); use server.metrics.path with tokens"
            );
        }
        tracing::info!(
            routes = config.routes.len(),
            "Serving Lambda invocations from the Runtime API (native mode)"
        );
        return lambda::run(gateway)
            .await
            .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"));
    }
    if let Some(addr) = config.server.metrics.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("server.metrics.listen: cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, "Metrics on http://{local}{}", crate::metrics::LISTEN_PATH);
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(listener, gateway).await {
                tracing::error!(%error, "The metrics listener failed");
            }
        });
    }
    let addr = SocketAddr::new(config.server.host, config.server.port);
    let listener = listen(addr, config.server.reuse_port)
        .with_context(|| format!("cannot listen on {addr}"))?;
    check_open_files(config.server.max_connections);
    let local = listener.local_addr()?;
    tracing::info!(address = %local, routes = config.routes.len(), "Listening on http://{local}/");
    crate::serve(listener, gateway).await?;
    tracing::info!("Stopped serving");
    Ok(())
}

/// Connections waiting to be accepted: a burst of thousands of clients at
/// once must not overflow it (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(reuse_port)?;
    #[cfg(not(unix))]
    if reuse_port {
        tracing::warn!("server.reuse_port is not supported on this platform");
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Every connection holds an open file: the soft limit is raised to the
/// hard one, and `max_connections` (with the connections being refused,
/// at most [`crate::REFUSING`]) that do not fit are worth a warning: past
/// the limit, accepting fails until connections close.
fn check_open_files(max_connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if let Some(hard) = limit.maximum {
            limit.current = Some(hard);
            if let Err(error) = setrlimit(Resource::Nofile, limit) {
                tracing::debug!(%error, "Could not raise the open-file limit");
            }
        }
        let open_files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        // Listener, logs, backend connections: some room besides clients.
        let needed = max_connections.saturating_add(crate::REFUSING + 64);
        if needed as u64 > open_files {
            tracing::warn!(
                open_files,
                max_connections,
                "server.max_connections does not fit in the open-file limit: past it, connections wait to be accepted (lower max_connections, raise the hard limit, or use reuse_port with more processes)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// SIGTERM (Lambda, containers) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
