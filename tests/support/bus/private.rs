//! A broker of one test: a server process on a free port with a data
//! directory of its own, killed (no goodbye to its clients) and started
//! again on the same port by `restart`, killed when dropped.

use std::process::Stdio;
use std::time::Duration;

use super::{RESTART_BOUND, free_port};
use crate::within_for;

/// A private server process.
#[derive(Debug)]
pub struct Private {
    /// Where it listens.
    pub port: u16,
    /// Whether it keeps its data across restarts (else its directory is
    /// new after each).
    pub persistent: bool,
    // Dropped first: the server is killed before its data is removed.
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl Private {
    /// A server not started yet.
    pub fn new(persistent: bool) -> Self {
        Self {
            port: free_port(),
            persistent,
            child: None,
            dir: tempfile::tempdir().expect("a data directory"),
        }
    }

    /// Where it keeps its data.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts `program` with `args` and waits until `ready` says it answers.
    pub async fn start<F: Future<Output = bool>>(
        &mut self,
        program: &str,
        args: &[std::ffi::OsString],
        ready: impl Fn() -> F,
    ) {
        self.start_with(program, args, &[], ready).await;
    }

    /// [`start`](Self::start) with these environment variables too.
    pub async fn start_with<F: Future<Output = bool>>(
        &mut self,
        program: &str,
        args: &[std::ffi::OsString],
        env: &[(&str, std::ffi::OsString)],
        ready: impl Fn() -> F,
    ) {
        let child = tokio::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is installed (.ci/run installs it): {e}"));
        self.child = Some(child);
        within_for(RESTART_BOUND, "the private server starts", async {
            while !ready().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Stops the server with SIGTERM and waits until it exited (a server
    /// that goes away cleanly, for brokers that need it to come back whole);
    /// then as [`kill`](Self::kill).
    pub async fn terminate(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                let _ = tokio::time::timeout(RESTART_BOUND, child.wait()).await;
            }
        }
        self.kill().await;
    }

    /// Kills the server; a server without persistence gets a new, empty
    /// data directory.
    pub async fn kill(&mut self) {
        self.stop(None).await;
    }

    /// Sends the server `signal` (`QUIT`, …; `None`: kills it) and waits for
    /// it to exit; a server without persistence gets a new, empty data
    /// directory.
    pub async fn stop(&mut self, signal: Option<&str>) {
        if let Some(mut child) = self.child.take() {
            match (signal, child.id()) {
                (Some(signal), Some(pid)) => {
                    let sent = tokio::process::Command::new("kill")
                        .args(["-s", signal, &pid.to_string()])
                        .status()
                        .await;
                    assert!(sent.is_ok_and(|s| s.success()), "kill -s {signal} {pid}");
                    within_for(RESTART_BOUND, "the private server exits", child.wait())
                        .await
                        .expect("the server exits");
                }
                _ => {
                    let _ = child.kill().await;
                }
            }
        }
        if !self.persistent {
            self.dir = tempfile::tempdir().expect("a data directory");
        }
    }
}
