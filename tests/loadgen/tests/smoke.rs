//! The load generator end to end on tiny scenarios (CI runs these; the
//! benchmarks in `tests/bench/` run the big ones): against a real gateway on
//! loopback, in both formats, split over processes and source addresses, and
//! with its publisher through a publish route to Redis.

use std::collections::HashMap;
use std::process::Command;

use gateway::config::{self, Source};
use gateway_tests::TestServer;
use serde_json::Value;

const TOKEN: &str = "loadgen-smoke-token-0123456789";

fn config(extra: &str) -> String {
    format!(
        r#"
[routes.ticks]
path = "/ticks"
[routes.ticks.backends.clock]
type = "ticker"
interval = "5ms"
count = 25
{extra}"#
    )
}

async fn server(text: &str) -> TestServer {
    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("config file");
    std::fs::write(file.path(), text).expect("write config");
    let env = HashMap::from([("PUBLISH_TOKEN".to_string(), TOKEN.to_string())]);
    let loaded = config::load(Source::File(file.path()), Some(env)).expect("valid config");
    TestServer::from_config(&loaded).await
}

/// Runs loadgen to its end (bounded by `--max-time`): whether it succeeded,
/// and its report.
async fn run(args: &[&str]) -> (bool, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command
        .args(args)
        .args(["--max-time", "30s", "--report"])
        .arg(&report);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}); loadgen said:\n{stderr}"));
    let report =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report not JSON ({e}): {text}"));
    (output.status.success(), report)
}

/// Runs loadgen, which must succeed, and returns its report.
async fn loadgen(args: &[&str]) -> Value {
    let (ok, report) = run(args).await;
    assert!(ok, "loadgen failed: {report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_both_formats_over_processes_and_sources_are_counted_exactly() {
    let server = server(&config("")).await;
    let url = server.url("/ticks");
    let pid = std::process::id().to_string();
    for format in ["sse", "ndjson"] {
        let report = loadgen(&[
            &url,
            "-c",
            "40",
            "--rate",
            "400",
            "--format",
            format,
            "--processes",
            "2",
            "--sources",
            "4",
            "--watch-pid",
            &pid,
        ])
        .await;
        assert_eq!(report["connections"], 40, "{format}: {report}");
        assert_eq!(report["completed"], 40, "{format}: {report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{format}");
        assert_eq!(report["events"], 40 * 25, "{format}");
        assert_eq!(report["gaps"], 0, "{format}");
        assert_eq!(report["duplicates"], 0, "{format}");
        // Every ticker event carries its timestamp.
        assert_eq!(report["latency"]["count"], 40 * 25, "{format}");
        assert_eq!(report["ttfb"]["count"], 40, "{format}");
        assert_eq!(report["ttfe"]["count"], 40, "{format}");
        assert!(report["ttfb"]["p99_us"].as_u64().unwrap() > 0, "{report}");
        let samples = report["processes"]["samples"].as_array().expect("samples");
        assert!(!samples.is_empty(), "{report}");
        assert!(samples[0]["rss_kib"].as_u64().unwrap() > 0, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_streams_and_early_closes_are_told_apart() {
    let server = server(&config("")).await;
    // Resuming after event 20 leaves 5; closing after 3 events is the
    // client's doing, not the stream's end.
    let url = server.url("/ticks");
    let resumed = loadgen(&[&url, "-c", "3", "-H", "Last-Event-ID: 20"]).await;
    assert_eq!(resumed["events"], 3 * 5, "{resumed}");
    assert_eq!(resumed["completed"], 3);
    let early = loadgen(&[&url, "-c", "3", "--events", "3"]).await;
    assert_eq!(early["events"], 3 * 3, "{early}");
    assert_eq!(early["closed_by_client"], 3);
    assert_eq!(early["completed"], 0);
    // A refused request is an error by status, and the run says so.
    let (ok, report) = run(&[&server.url("/nowhere"), "-c", "2"]).await;
    assert!(!ok, "{report}");
    assert_eq!(report["errors"]["status 404"], 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_feeds_subscribers_through_a_publish_route() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = format!("test:loadgen:{}:{nanos}", std::process::id());
    let server = server(&config(&format!(
        r#"
[routes.room]
path = "/room"
[routes.room.backends.bus]
type = "redis"
stream = "{key}"

[publish.room]
path = "/room/events"
tokens = ["${{PUBLISH_TOKEN}}"]
[publish.room.target]
type = "redis"
stream = "{key}"
max_len = 1000
"#
    )))
    .await;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let report = loadgen(&[
        &server.url("/room"),
        "-c",
        "20",
        "--events",
        "50",
        "--publish-url",
        &server.url("/room/events"),
        "--publish-count",
        "50",
        "--publish-rate",
        "500",
        "--publish-delay",
        "500ms",
        "--publish-header",
        &auth,
    ])
    .await;
    assert_eq!(report["published"], 50, "{report}");
    assert_eq!(report["publish_errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["events"], 20 * 50, "{report}");
    assert_eq!(report["closed_by_client"], 20, "{report}");
    assert_eq!(report["gaps"], 0);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["latency"]["count"], 20 * 50);
}
