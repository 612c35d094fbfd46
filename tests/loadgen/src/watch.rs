//! Samples the RSS and CPU time of the processes under test (Linux `/proc`)
//! while the load runs.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

const EVERY: Duration = Duration::from_millis(250);

/// One sample of all watched processes together.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub rss_kib: u64,
    pub cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Samples {
    pub pids: Vec<u32>,
    pub samples: Vec<Sample>,
}

impl Samples {
    fn baseline(&self) -> Option<&Sample> {
        self.samples.first()
    }

    pub fn peak_rss_kib(&self) -> u64 {
        self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)
    }

    /// Peak RSS, growth over the first sample per connection, and CPU use.
    pub fn summary(&self, connections: u64) -> String {
        let (Some(first), Some(last)) = (self.baseline(), self.samples.last()) else {
            return "watched processes: no samples".into();
        };
        let peak = self.peak_rss_kib();
        let growth = peak.saturating_sub(first.rss_kib);
        let per_conn = if connections > 0 {
            growth as f64 * 1024.0 / connections as f64
        } else {
            0.0
        };
        let span = last.at_s - first.at_s;
        let cpu = if span > 0.0 {
            (last.cpu_s - first.cpu_s) / span * 100.0
        } else {
            0.0
        };
        format!(
            "watched {:?}: RSS {} KiB at start, {} KiB at peak ({:.0} bytes per connection); \
             CPU {:.1} s ({cpu:.0} % of a core on average)",
            self.pids,
            first.rss_kib,
            peak,
            per_conn,
            last.cpu_s - first.cpu_s,
        )
    }
}

#[derive(Debug)]
pub struct Watcher {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Samples>>,
}

impl Watcher {
    pub fn start(pids: &[u32]) -> Self {
        if pids.is_empty() {
            return Self {
                stop: None,
                task: None,
            };
        }
        let pids = pids.to_vec();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::task::spawn_local(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = &mut stopped => break,
                }
                if let Some(sample) = sample(&pids, started) {
                    samples.push(sample);
                }
            }
            if let Some(sample) = sample(&pids, started) {
                samples.push(sample);
            }
            Samples { pids, samples }
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> Option<Samples> {
        let _ = self.stop.take()?.send(());
        self.task.take()?.await.ok()
    }
}

fn sample(pids: &[u32], started: Instant) -> Option<Sample> {
    let mut rss_kib = 0;
    let mut cpu_s = 0.0;
    for pid in pids {
        let stat = ProcStat::read(*pid)?;
        rss_kib += stat.rss_kib;
        cpu_s += stat.cpu_s;
    }
    Some(Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib,
        cpu_s,
    })
}

/// What `/proc` says of one process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcStat {
    /// Resident memory now (`VmRSS`).
    pub rss_kib: u64,
    /// The highest resident memory since the process started (`VmHWM`).
    pub hwm_kib: u64,
    /// User and system CPU time used so far.
    pub cpu_s: f64,
}

impl ProcStat {
    /// Reads process `pid`'s figures; `None` once it has exited.
    pub fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) in ")".
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
        let used: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            cpu_s: used as f64 / CLOCK_TICKS,
        })
    }
}

/// How many files process `pid` holds open (sockets included): the
/// entries of `/proc/PID/fd`. `None` once it has exited.
pub fn open_files(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

/// Clock ticks per second of `/proc/*/stat` times: `USER_HZ`, 100 on Linux.
const CLOCK_TICKS: f64 = 100.0;
