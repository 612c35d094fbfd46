//! `command`: runs a configured program and streams its standard output,
//! one event per line.
//!
//! ```toml
//! [routes.jobs.backends.run]
//! type = "command"
//! command = ["/usr/bin/python3", "-u", "/srv/jobs/report.py"]
//! format = "ndjson"          # each line a JSON event; "lines": text events
//! ```
//!
//! - The program and its arguments come from the config only, never from
//!   the request. The request reaches it as data: path parameters as
//!   environment variables `GATEWAY_PARAM_<NAME>` (`/jobs/{id}` gives
//!   `GATEWAY_PARAM_ID`), query parameters as `GATEWAY_QUERY_<NAME>` (the
//!   first value of each; a name other than letters, digits and `_` is a
//!   400), a durable job's id as `GATEWAY_JOB_ID`, and the request's JSON
//!   body (bounded by `server.max_body_bytes`) on its standard input, which
//!   is closed after it (empty without a body). A shell does not interpret
//!   any of them unless the program asks it to.
//! - Each line is an event with the line's number as its id. The program
//!   runs once per request: a client that reconnects with `Last-Event-ID` is
//!   answered 204 (a browser's `EventSource` then stops), never a second
//!   run.
//! - When the client goes away the program is killed, with every process it
//!   started (it runs in a process group of its own). A program that exits
//!   with a failure status ends its stream with an error event; one that
//!   cannot start is a 503 before the stream.
//! - The program gets a clean environment: `PATH`, `HOME`, `LANG`, `LC_ALL`,
//!   `TZ` and `TMPDIR` from the gateway's, then `env`, then the path
//!   parameters; never the gateway's secrets.
//! - Bounds: `max_line_bytes` per line of output (longer is an error) and of
//!   logged stderr (longer is cut), `max_running` programs at once per
//!   backend (more is 503).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command as Process};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::Problem;
use crate::{Backend, BackendError, Data, ErrorKind, Event, EventStream, RequestContext};

/// How lines become events.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// Each line is a text event.
    #[default]
    Lines,
    /// Each line is a JSON event; a line that is not JSON is sent as text.
    Ndjson,
}

/// The `command` backend's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// The program and its arguments; the program is a path, or a name
    /// looked up in `PATH`. Required.
    pub command: Vec<String>,
    /// The working directory. Default: the gateway's.
    pub cwd: Option<PathBuf>,
    /// Environment variables added for the program.
    pub env: BTreeMap<String, String>,
    /// `lines` (text events) or `ndjson` (JSON events). Default: `lines`.
    pub format: LineFormat,
    /// The longest line; a longer one ends the stream with an error.
    /// Default: `1048576`.
    pub max_line_bytes: usize,
    /// Programs of this backend running at once; one more request is
    /// answered 503. Default: `16`.
    pub max_running: usize,
    /// Whether the program's standard error is logged (at `warn`, a line per
    /// line) or discarded. Default: `true`.
    pub log_stderr: bool,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            cwd: None,
            env: BTreeMap::new(),
            format: LineFormat::Lines,
            max_line_bytes: 1 << 20,
            max_running: 16,
            log_stderr: true,
        }
    }
}

impl CommandConfig {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        match self.command.first() {
            None => problems.push(Problem::new(
                "command",
                "required: the program and its arguments, as a list",
            )),
            Some(program) if find_program(program).is_none() => problems.push(Problem::new(
                "command",
                format!("the program {program:?} is not an executable file, nor found in PATH"),
            )),
            Some(_) => {}
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                problems.push(Problem::new(
                    "cwd",
                    format!("{} is not a directory", cwd.display()),
                ));
            }
        }
        if self.max_line_bytes == 0 {
            problems.push(Problem::new("max_line_bytes", "must be at least 1"));
        }
        if self.max_running == 0 {
            problems.push(Problem::new("max_running", "must be at least 1"));
        }
        problems
    }
}

/// The program as a file: a path as given, or a name found in `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    let is_file = |p: &Path| p.is_file();
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_file(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_file(p))
}

/// The backend.
#[derive(Debug)]
pub struct Command {
    config: Arc<CommandConfig>,
    running: Arc<Semaphore>,
}

impl Command {
    /// The backend for its settings (see [`CommandConfig::validate`]).
    pub fn new(config: CommandConfig) -> Self {
        let running = Arc::new(Semaphore::new(config.max_running.max(1)));
        Self {
            config: Arc::new(config),
            running,
        }
    }
}

/// A running program's output, line by line.
struct Run {
    child: Child,
    lines: BufReader<tokio::process::ChildStdout>,
    line: Vec<u8>,
    number: u64,
    config: Arc<CommandConfig>,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Backend for Command {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        if ctx.last_event_id.is_some() {
            return Err(BackendError::new(
                ErrorKind::Finished,
                "a command runs once per request; its output cannot be resumed",
            ));
        }
        let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() else {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "{} commands of this route are running already; retry later",
                    self.config.max_running
                ),
            ));
        };
        let values = ctx.params.values().chain(ctx.query.iter().map(|(_, v)| v));
        if values.into_iter().any(|v| v.contains('\0')) {
            return Err(BackendError::bad_request(
                "a path or query parameter holds a NUL byte, which no program can be given",
            ));
        }
        // Query parameters become variables when their names can be.
        let mut query: BTreeMap<String, &str> = BTreeMap::new();
        for (name, value) in &ctx.query {
            let plain = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
                return Err(BackendError::bad_request(format!(
                    "query parameter {} cannot be given to a program: names are 1 to 64 letters, digits or '_'",
                    crate::Shown(name)
                )));
            }
            // The first value counts, as `RequestContext::query_param` reads.
            query
                .entry(format!("GATEWAY_QUERY_{}", name.to_ascii_uppercase()))
                .or_insert(value);
        }
        let Some((program, args)) = self.config.command.split_first() else {
            return Err(BackendError::new(
                ErrorKind::Internal,
                "no command configured",
            ));
        };
        let mut process = Process::new(program);
        process.env_clear();
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                process.env(name, value);
            }
        }
        process
            .args(args)
            .envs(&self.config.env)
            .envs(ctx.params.iter().map(|(name, value)| {
                (
                    format!("GATEWAY_PARAM_{}", name.to_ascii_uppercase()),
                    value,
                )
            }))
            .envs(query)
            .envs(ctx.job.iter().map(|job| ("GATEWAY_JOB_ID", job)))
            .stdin(if ctx.body.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(if self.config.log_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        #[cfg(unix)]
        process.process_group(0);
        if let Some(cwd) = &self.config.cwd {
            process.current_dir(cwd);
        }
        let mut child = process.spawn().map_err(|e| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!("cannot start {program:?}: {e}"),
            )
        })?;
        if let (Some(mut stdin), Some(body)) = (child.stdin.take(), ctx.body.clone()) {
            // Written beside the reading (a program may write before it has
            // read it all), then closed: the program sees its end.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Err(e) = stdin.write_all(body.as_str().as_bytes()).await {
                    tracing::debug!(error = %e, "The command did not read all of its request body");
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(log_lines(
                stderr,
                program.clone(),
                self.config.max_line_bytes,
            ));
        }
        let Some(stdout) = child.stdout.take() else {
            return Err(BackendError::new(ErrorKind::Internal, "no stdout pipe"));
        };
        let run = Run {
            child,
            lines: BufReader::new(stdout),
            line: Vec::new(),
            number: 0,
            config: Arc::clone(&self.config),
            done: false,
            _permit: permit,
        };
        Ok(futures::stream::unfold(run, Run::next).boxed())
    }
}

impl Drop for Run {
    /// The client left (or the stream ended): the program's whole process
    /// group goes, not only the program (`kill_on_drop` takes that one).
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Run {
    async fn next(mut self) -> Option<(Result<Event, BackendError>, Self)> {
        if self.done {
            return None;
        }
        self.line.clear();
        let limit = self.config.max_line_bytes as u64 + 1;
        let read = (&mut self.lines)
            .take(limit)
            .read_until(b'\n', &mut self.line)
            .await;
        match read {
            Ok(0) => {
                self.done = true;
                let status = self.child.wait().await;
                match status {
                    Ok(status) if status.success() => None,
                    Ok(status) => Some((
                        Err(BackendError::new(
                            ErrorKind::Upstream,
                            format!("the command failed: {status}"),
                        )),
                        self,
                    )),
                    Err(e) => Some((
                        Err(BackendError::new(
                            ErrorKind::Upstream,
                            format!("the command: {e}"),
                        )),
                        self,
                    )),
                }
            }
            Ok(_) if !self.line.ends_with(b"\n") && self.line.len() as u64 == limit => {
                self.done = true;
                let max = self.config.max_line_bytes;
                Some((
                    Err(BackendError::new(
                        ErrorKind::Upstream,
                        format!("the command wrote a line longer than {max} bytes"),
                    )),
                    self,
                ))
            }
            Ok(_) => {
                self.number += 1;
                let text = String::from_utf8_lossy(&self.line);
                let text = text.trim_end_matches(['\n', '\r']);
                let data = match self.config.format {
                    LineFormat::Ndjson => {
                        Data::parse_json(text).unwrap_or_else(|_| Data::text(text))
                    }
                    LineFormat::Lines => Data::text(text),
                };
                let event = Event::new(data).with_id(self.number.to_string());
                crate::lines::release(&mut self.line);
                Some((Ok(event), self))
            }
            Err(e) => {
                self.done = true;
                Some((
                    Err(BackendError::new(
                        ErrorKind::Upstream,
                        format!("reading the command's output: {e}"),
                    )),
                    self,
                ))
            }
        }
    }
}

/// Logs a program's standard error, a line per line, until it closes; a
/// line longer than `max` bytes is logged cut, its rest read and dropped.
async fn log_lines(stderr: impl AsyncRead + Unpin, program: String, max: usize) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(max as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cut = !line.ends_with(b"\n");
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        tracing::warn!(%program, cut, "{text}");
        // Drop the rest of a cut line, a bounded chunk at a time.
        if cut {
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader)
                    .take(max as u64)
                    .read_until(b'\n', &mut rest)
                    .await
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.ends_with(b"\n") => break,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// What the program inherits of the gateway's environment.
const INHERITED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_must_exist() {
        let ok = CommandConfig {
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            ..CommandConfig::default()
        };
        assert!(ok.validate().is_empty());
        let missing = CommandConfig {
            command: vec!["/no/such/program".into()],
            cwd: Some("/no/such/dir".into()),
            max_running: 0,
            ..CommandConfig::default()
        };
        let keys: Vec<_> = missing.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["command", "cwd", "max_running"]);
        let keys: Vec<_> = CommandConfig::default()
            .validate()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["command"]);
    }
}
