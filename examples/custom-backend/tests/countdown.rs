//! The example binary as a user runs it: its own backend type served from
//! a config file, resumed with Last-Event-ID, and its table checked like
//! any built-in one's.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_custom-backend");

/// The binary serving `countdown.toml` on a free port, killed when dropped.
struct Served {
    child: Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("countdown.toml");
    let mut child = Command::new(BINARY)
        .args(["--config", &config.display().to_string()])
        .env("GATEWAY__SERVER__PORT", "0")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example binary starts");
    let stderr = child.stderr.take().expect("its stderr");
    let (lines, found) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("Listening on http://127.0.0.1:").nth(1) {
                let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                let _ = lines.send(port);
            }
        }
    });
    let port = found
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .flatten()
        .expect("the binary says where it listens");
    Served { child, port }
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sN", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_countdown_backend_streams_from_its_config() {
    let served = serve();
    let url = format!("http://127.0.0.1:{}/launch", served.port);
    let started = Instant::now();
    let body = curl(&[&url]);
    assert_eq!(
        body,
        "{\"left\":5}\n{\"left\":4}\n{\"left\":3}\n{\"left\":2}\n{\"left\":1}\n{\"liftoff\":true}\n"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "300 ms apart"
    );
    let resumed = curl(&[
        "-H",
        "Accept: text/event-stream",
        "-H",
        "Last-Event-ID: 3",
        &url,
    ]);
    assert!(
        resumed.starts_with("retry: 3000\n\nid: 2\nevent: count\ndata: {\"left\":2}\n"),
        "{resumed}"
    );
    assert!(resumed.contains("id: 0\nevent: liftoff\n"), "{resumed}");
}

#[test]
fn a_bad_countdown_table_is_reported_like_any_other() {
    let dir = std::env::temp_dir().join(format!("custom-backend-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "[routes.a]\npath = \"/a\"\n[routes.a.backends.c]\ntype = \"countdown\"\nfrom = 0\ninterval = \"1ms\"\n\
         [routes.b]\npath = \"/b\"\n[routes.b.backends.c]\ntype = \"countdown\"\nfrom = 3\nintervall = \"1s\"\n\
         [routes.k]\npath = \"/k\"\n[routes.k.backends.c]\ntype = \"kafka\"\n",
    )
    .expect("the config");
    let checked = Command::new(BINARY)
        .args(["check-config", &config.display().to_string()])
        .output()
        .expect("check-config runs");
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(2), "{stderr}");
    for line in [
        "routes.a.backends.c.from: must be from 1 to 1000",
        "routes.a.backends.c.interval: must be at least 10ms",
        "routes.b.backends.c.intervall: unknown field `intervall`",
        "routes.k.backends.c.type: unknown backend type \"kafka\"",
    ] {
        assert!(stderr.contains(line), "{line:?} not in:\n{stderr}");
    }
    assert!(
        stderr.contains(", countdown"),
        "the registered type is listed: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
