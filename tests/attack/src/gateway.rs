//! The gateway under attack: the real binary as a child process, on a config
//! written for the scenario, listening on `127.0.0.1:0` with its metrics on
//! a port of their own, logging to a file (a pipe read slowly would stall
//! it, which is not what is measured).
//!
//! Its exit is waited for by a thread of its own (`waitid` without reaping,
//! so the moment is known within the scheduler's latency and the process id
//! stays ours until it is reaped under the lock that `Drop` also takes):
//! a gateway still running when its [`Gateway`] is dropped is killed.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gateway_tests::exposition::Exposition;
use loadgen::watch::{self, ProcStat};
use rustix::process::{Pid, Resource, Rlimit, Signal, WaitId, WaitIdOptions};
use serde::Serialize;
use tempfile::TempDir;

use crate::client;
use crate::error::Error;

/// Longest a gateway may take to say where it listens: a debug build on a
/// loaded machine takes well under a second.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A config file for one scenario. The server always listens on
/// `127.0.0.1:0`, with plain logs and `[server.metrics] listen =
/// "127.0.0.1:0"`; everything else is the built-in default unless set.
#[derive(Debug, Clone, Default)]
pub struct Config {
    server: Vec<(String, String)>,
    routes: String,
}

impl Config {
    /// No routes yet, every server option at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `server.KEY` to a TOML value (`"2s"` quoted, numbers bare).
    pub fn server(mut self, key: &str, value: impl TomlValue) -> Self {
        self.server.push((key.to_string(), value.toml()));
        self
    }

    /// Adds route `name` on `path` with one backend `b` (`backend` is its
    /// table's body: `type = "ticker"` and its options) and route
    /// `options` (TOML lines, may be empty).
    pub fn route(mut self, name: &str, path: &str, options: &str, backend: &str) -> Self {
        let _ = write!(
            self.routes,
            "\n[routes.{name}]\npath = \"{path}\"\n{options}\n[routes.{name}.backends.b]\n{backend}\n"
        );
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut text = String::from("[server]\nhost = \"127.0.0.1\"\nport = 0\n");
        for (key, value) in &self.server {
            let _ = writeln!(text, "{key} = {value}");
        }
        text.push_str("\n[server.metrics]\nlisten = \"127.0.0.1:0\"\n");
        text.push_str(&self.routes);
        text
    }
}

/// A value written into a TOML file.
pub trait TomlValue {
    /// The value as TOML.
    fn toml(&self) -> String;
}

impl TomlValue for &str {
    fn toml(&self) -> String {
        format!("{self:?}")
    }
}

impl TomlValue for u64 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for usize {
    fn toml(&self) -> String {
        self.to_string()
    }
}

/// When and how the gateway exited.
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// When the waiting thread saw it exit.
    pub at: Instant,
    /// Its CPU time in all (read while it was a zombie, before reaping).
    pub cpu_s: Option<f64>,
}

#[derive(Debug, Default)]
struct ExitWatch {
    exited: Mutex<Option<Exited>>,
    changed: Condvar,
}

/// The gateway binary, running.
#[derive(Debug)]
pub struct Gateway {
    /// Where it serves.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    log: PathBuf,
    child: Arc<Mutex<Child>>,
    exit: Arc<ExitWatch>,
    waiter: Option<JoinHandle<()>>,
    // Holds the config and the log; removed when the gateway is dropped.
    _dir: TempDir,
}

impl Gateway {
    /// Starts `binary` on `config` and waits until it listens.
    pub async fn start(binary: &Path, config: &Config) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("attack-")
            .tempdir()
            .map_err(Error::io("make a directory for the gateway"))?;
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config.to_toml()).map_err(Error::io("write the config"))?;
        let log = dir.path().join("gateway.log");
        let file = File::create(&log).map_err(Error::io("create the log"))?;
        let out = file.try_clone().map_err(Error::io("share the log"))?;
        let mut command = Command::new(binary);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GATEWAY") {
                command.env_remove(&name);
            }
        }
        let child = command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .map_err(Error::io(format!("start {}", binary.display())))?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        let exit = Arc::new(ExitWatch::default());
        let waiter = std::thread::Builder::new()
            .name("gateway-exit".into())
            .spawn({
                let (child, exit) = (Arc::clone(&child), Arc::clone(&exit));
                move || wait_for_exit(pid, &child, &exit)
            })
            .map_err(Error::io("start the exit watcher"))?;
        let mut gateway = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            log,
            child,
            exit,
            waiter: Some(waiter),
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let text = gateway.log_text();
            let listening = address_after(&text, "Listening on http://");
            let metrics = address_after(&text, "Metrics on http://");
            if let (Some(addr), Some(metrics)) = (listening, metrics) {
                gateway.addr = addr;
                gateway.metrics_addr = metrics;
                return Ok(gateway);
            }
            if let Some(exited) = gateway.exited() {
                return Err(Error::Gateway(format!(
                    "exited at start ({}); its log:\n{text}",
                    exited.status
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Error::Gateway(format!(
                    "not listening after {START_TIMEOUT:?}; its log:\n{text}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Lowers its open-file limit (soft and hard) to `files`: once it holds
    /// that many, accepting fails until some close.
    pub fn limit_open_files(&self, files: u64) -> Result<(), Error> {
        let pid = self.rustix_pid()?;
        let limit = Rlimit {
            current: Some(files),
            maximum: Some(files),
        };
        rustix::process::prlimit(Some(pid), Resource::Nofile, limit)
            .map(drop)
            .map_err(|e| Error::io("lower the gateway's open-file limit")(e.into()))
    }

    /// Its memory and CPU time now; `None` once it has exited.
    pub fn stat(&self) -> Option<ProcStat> {
        ProcStat::read(self.pid)
    }

    /// How many files (sockets included) it holds now.
    pub fn open_files(&self) -> Option<u64> {
        watch::open_files(self.pid)
    }

    /// Its metrics now.
    pub async fn metrics(&self) -> Result<Exposition, Error> {
        let (status, text) = client::get(self.metrics_addr, "/metrics").await?;
        if status != 200 {
            return Err(Error::Unexpected(format!("/metrics answered {status}")));
        }
        Exposition::parse(&text).map_err(|e| Error::Unexpected(format!("/metrics: {e}")))
    }

    /// The sum of every series of metric `name` whose labels include
    /// `labels` (0 when there is none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64, Error> {
        let exposition = self.metrics().await?;
        Ok(exposition
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum())
    }

    /// Sends SIGTERM; returns the moment just before it was sent.
    pub fn terminate(&self) -> Result<Instant, Error> {
        let pid = self.rustix_pid()?;
        // The lock keeps the process from being reaped (and its id reused)
        // while the signal is sent.
        let _child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if self.exited().is_some() {
            return Err(Error::Gateway("exited before SIGTERM".into()));
        }
        let sent = Instant::now();
        rustix::process::kill_process(pid, Signal::TERM)
            .map_err(|e| Error::io("send SIGTERM")(e.into()))?;
        Ok(sent)
    }

    /// How it exited, if it has.
    pub fn exited(&self) -> Option<Exited> {
        *self
            .exit
            .exited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits (on a blocking thread) until it exits, at most `limit`.
    pub async fn wait_exit(&self, limit: Duration) -> Option<Exited> {
        let exit = Arc::clone(&self.exit);
        tokio::task::spawn_blocking(move || {
            let exited = exit.exited.lock().unwrap_or_else(PoisonError::into_inner);
            let (exited, _) = exit
                .changed
                .wait_timeout_while(exited, limit, |e| e.is_none())
                .unwrap_or_else(PoisonError::into_inner);
            *exited
        })
        .await
        .ok()
        .flatten()
    }

    /// Everything it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What its log says, in counts, with every panic and the last lines.
    pub fn log_summary(&self) -> LogSummary {
        LogSummary::of(&self.log_text())
    }

    fn rustix_pid(&self) -> Result<Pid, Error> {
        i32::try_from(self.pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| Error::Gateway(format!("bad pid {}", self.pid)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        {
            let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
            if self.exited().is_none() {
                let _ = child.kill();
            }
        }
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
    }
}

/// The exit watcher: waits without reaping, notes the moment, then reaps
/// under the lock.
fn wait_for_exit(pid: u32, child: &Mutex<Child>, exit: &ExitWatch) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
        while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(WaitId::Pid(pid), options)
        {
        }
    }
    let at = Instant::now();
    let cpu_s = ProcStat::read(pid).map(|s| s.cpu_s);
    let status = child.lock().unwrap_or_else(PoisonError::into_inner).wait();
    if let Ok(status) = status {
        let exited = Exited { status, at, cpu_s };
        *exit.exited.lock().unwrap_or_else(PoisonError::into_inner) = Some(exited);
        exit.changed.notify_all();
    }
}

/// The address in the first log line with `prefix` before it.
fn address_after(log: &str, prefix: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(prefix))?;
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split('/').next()?.parse().ok()
}

/// A gateway's log in a few figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogSummary {
    /// Lines in all.
    pub lines: usize,
    /// Lines at `WARN`.
    pub warnings: usize,
    /// Lines at `ERROR`.
    pub errors: usize,
    /// Every line that tells of a panic.
    pub panics: Vec<String>,
    /// The distinct warning and error messages, at most 20, with counts.
    pub messages: Vec<(String, usize)>,
}

impl LogSummary {
    fn of(text: &str) -> Self {
        let mut summary = Self::default();
        for line in text.lines() {
            summary.lines += 1;
            let level = if line.contains(" WARN ") {
                summary.warnings += 1;
                true
            } else if line.contains(" ERROR ") {
                summary.errors += 1;
                true
            } else {
                false
            };
            if line.contains("panicked") {
                summary.panics.push(line.to_string());
            }
            if level {
                // The message without its timestamp, so that repeats count.
                let message = line.split_once(' ').map_or(line, |(_, m)| m).trim_start();
                let message = message.to_string();
                let known = summary.messages.iter().position(|(m, _)| *m == message);
                match known {
                    Some(at) => summary.messages[at].1 += 1,
                    None if summary.messages.len() < 20 => summary.messages.push((message, 1)),
                    None => {}
                }
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_loopback_with_metrics_and_its_routes() {
        let text = Config::new()
            .server("head_timeout", "2s")
            .server("max_streams", 5_u64)
            .route("tick", "/tick", "", "type = \"ticker\"\ninterval = \"1s\"")
            .to_toml();
        assert!(text.starts_with("[server]\nhost = \"127.0.0.1\"\nport = 0\n"));
        assert!(text.contains("head_timeout = \"2s\"\nmax_streams = 5\n"));
        assert!(text.contains("[server.metrics]\nlisten = \"127.0.0.1:0\""));
        assert!(text.contains("[routes.tick]\npath = \"/tick\""));
        assert!(text.contains("[routes.tick.backends.b]\ntype = \"ticker\""));
    }

    #[test]
    fn addresses_are_read_from_the_log() {
        let log = "2026-01-01T00:00:00Z  INFO gateway: Metrics on http://127.0.0.1:4000/metrics address=127.0.0.1:4000\n\
                   2026-01-01T00:00:00Z  INFO gateway: Listening on http://127.0.0.1:5000/ address=127.0.0.1:5000 routes=1\n";
        assert_eq!(
            address_after(log, "Listening on http://"),
            Some(SocketAddr::from(([127, 0, 0, 1], 5000)))
        );
        assert_eq!(
            address_after(log, "Metrics on http://"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4000)))
        );
        let summary = LogSummary::of(
            "t  WARN a: slow\nt  WARN a: slow\nt ERROR b: gone\nt  INFO thread 'x' panicked at y\n",
        );
        assert_eq!((summary.lines, summary.warnings, summary.errors), (4, 2, 1));
        assert_eq!(summary.panics.len(), 1);
        assert_eq!(summary.messages[0], ("WARN a: slow".to_string(), 2));
    }
}
