//! `coldstart`: how long a gateway process takes from its start to the first
//! byte of `/`, over many runs.
//!
//! `coldstart GATEWAY_BINARY [RUNS]` (default 50): each run starts the binary
//! on its built-in default config at port 0, reads its `Listening on` log
//! line for the address, asks for `/` and times the first byte of the body;
//! then stops it. Prints min, median, p90 and max, and a JSON line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .context("usage: coldstart GATEWAY_BINARY [RUNS]")?;
    let runs: usize = args.next().map_or(Ok(50), |r| r.parse())?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(once(&binary)?);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "start to first byte of / over {runs} runs: min {:.2} ms, median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ms(times[0]),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(times[times.len() - 1])
    );
    println!(
        "{}",
        serde_json::json!({
            "runs": runs,
            "min_ms": ms(times[0]),
            "median_ms": ms(at(0.5)),
            "p90_ms": ms(at(0.9)),
            "max_ms": ms(times[times.len() - 1]),
        })
    );
    Ok(())
}

fn once(binary: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env("GATEWAY__SERVER__PORT", "0")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("GATEWAY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {binary}"))?;
    let result = first_byte(&mut child, started);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn first_byte(child: &mut std::process::Child, started: Instant) -> anyhow::Result<Duration> {
    const PREFIX: &str = "Listening on http://";
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            bail!("the gateway exited before listening");
        };
        let line = line?;
        if let Some(at) = line.find(PREFIX) {
            break line[at + PREFIX.len()..]
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
        }
    };
    let mut tcp = TcpStream::connect(&addr).with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nAccept: application/x-ndjson\r\n\r\n"
    )?;
    // The headers, then the first byte of the body.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        tcp.read_exact(&mut byte)?;
        seen.push(byte[0]);
        if seen.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    // Chunked: the size line, then the first byte of data.
    loop {
        tcp.read_exact(&mut byte)?;
        if byte[0] == b'\n' {
            break;
        }
    }
    tcp.read_exact(&mut byte)?;
    Ok(started.elapsed())
}
