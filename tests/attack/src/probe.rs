//! Watching the gateway from outside: its RSS, peak RSS, CPU time and open
//! files sampled by a thread of their own (so a busy runtime does not skew
//! the samples), and its TCP sockets read from `/proc` (how many are
//! connected to a broker, how many have bytes waiting to be sent).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loadgen::watch::{self, ProcStat};
use serde::Serialize;

/// How often the sampler looks.
pub const EVERY: Duration = Duration::from_millis(250);

/// The gateway at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the scenario started.
    pub at_s: f64,
    /// Resident memory.
    pub rss_kib: u64,
    /// Peak resident memory so far.
    pub hwm_kib: u64,
    /// CPU time used so far.
    pub cpu_s: f64,
    /// Open files, sockets included.
    pub open_files: u64,
}

/// Samples one process every [`EVERY`] until stopped or it exits.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    /// Starts sampling `pid`; times count from `origin`.
    pub fn start(pid: u32, origin: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("gateway-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !stopped.load(Ordering::Relaxed) {
                    match sample(pid, origin) {
                        Some(sample) => samples.push(sample),
                        None => break,
                    }
                    std::thread::sleep(EVERY);
                }
                samples
            })
            .ok();
        Self { stop, thread }
    }

    /// Stops; every sample taken.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// One sample of `pid` now.
pub fn sample(pid: u32, origin: Instant) -> Option<Sample> {
    let stat = ProcStat::read(pid)?;
    Some(Sample {
        at_s: origin.elapsed().as_secs_f64(),
        rss_kib: stat.rss_kib,
        hwm_kib: stat.hwm_kib,
        cpu_s: stat.cpu_s,
        open_files: watch::open_files(pid)?,
    })
}

/// The share of one core used between two samples, in percent.
pub fn cpu_percent(from: &Sample, to: &Sample) -> f64 {
    let span = to.at_s - from.at_s;
    if span <= 0.0 {
        return 0.0;
    }
    (to.cpu_s - from.cpu_s) / span * 100.0
}

/// One TCP socket of a process, from `/proc/PID/net/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    /// Its local address.
    pub local: SocketAddr,
    /// Its peer's address.
    pub remote: SocketAddr,
    /// The kernel's state number (1: established, 10: listening).
    pub state: u8,
    /// Bytes written but not yet acknowledged by the peer.
    pub send_queue: u64,
}

/// TCP state `ESTABLISHED`.
pub const ESTABLISHED: u8 = 1;

/// The IPv4 TCP sockets process `pid` holds open.
pub fn tcp_sockets(pid: u32) -> Vec<TcpEntry> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(parse_tcp_line)
        .filter(|(_, inode)| inodes.contains(inode))
        .map(|(entry, _)| entry)
        .collect()
}

/// One line of `/proc/net/tcp`: the entry and its inode.
fn parse_tcp_line(line: &str) -> Option<(TcpEntry, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = |text: &str| -> Option<SocketAddr> {
        let (ip, port) = text.split_once(':')?;
        // The address as the kernel stores it (network order) printed as a
        // host-order number: little-endian bytes give it back.
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(ip.to_le_bytes())),
            port,
        ))
    };
    let (send_queue, _) = fields.get(4)?.split_once(':')?;
    Some((
        TcpEntry {
            local: address(fields.get(1)?)?,
            remote: address(fields.get(2)?)?,
            state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
            send_queue: u64::from_str_radix(send_queue, 16).ok()?,
        },
        fields.get(9)?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_lines_are_read_as_the_kernel_writes_them() {
        let line = "   3: 0100007F:A1B2 0100007F:18EB 01 0000A000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        let (entry, inode) = parse_tcp_line(line).unwrap();
        assert_eq!(entry.local, SocketAddr::from(([127, 0, 0, 1], 0xA1B2)));
        assert_eq!(entry.remote, SocketAddr::from(([127, 0, 0, 1], 6379)));
        assert_eq!(entry.state, ESTABLISHED);
        assert_eq!(entry.send_queue, 0xA000);
        assert_eq!(inode, 123_456);
        assert_eq!(parse_tcp_line("  sl  local_address rem_address"), None);
    }

    #[test]
    fn this_process_is_sampled_and_its_sockets_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pid = std::process::id();
        let sockets = tcp_sockets(pid);
        assert!(
            sockets
                .iter()
                .any(|s| s.local.port() == port && s.state == 10),
            "{sockets:?}"
        );
        let sample = sample(pid, Instant::now()).unwrap();
        assert!(sample.rss_kib > 0 && sample.hwm_kib >= sample.rss_kib);
        assert!(sample.open_files >= 1);
    }
}
