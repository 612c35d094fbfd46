//! The examples of `config/examples/` run as the README and their comments
//! say, on real processes and real clients.

use std::process::Command;

use gateway_tests::TestServer;
use gateway_tests::examples::{example, llm_gateway, mock_llm, repo};

/// The README's `curl` command against the example, NDJSON by default and
/// SSE when asked: the answer token by token, then the end.
#[tokio::test]
async fn the_llm_example_streams_a_prompt_to_curl() {
    let (_mock, port) = mock_llm();
    let server = llm_gateway(port).await;
    let ndjson = curl(
        server.url("/chat"),
        &[],
        Some(r#"{"prompt": "What is a stream?"}"#),
    )
    .await;
    let lines: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let text: String = lines.iter().map(|l| l.as_str().expect("a token")).collect();
    assert!(
        text.starts_with("You asked: What is a stream. This answer streams"),
        "{text:?}"
    );
    assert!(lines.len() > 10, "token by token: {lines:?}");

    let sse = curl(
        server.url("/chat"),
        &["accept: text/event-stream"],
        Some(r#"{"prompt": "Hi"}"#),
    )
    .await;
    assert!(sse.contains("data: \"You\"\n"), "{sse}");
    assert!(sse.contains("data: \" Hi.\"\n"), "{sse}");
    assert!(
        !sse.contains("[DONE]"),
        "the sentinel is not an event: {sse}"
    );
}

/// `curl -sN URL [-H …]` as the examples write it, and with a body
/// `-H 'content-type: application/json' -d BODY`; its output.
async fn curl(url: String, headers: &'static [&'static str], body: Option<&'static str>) -> String {
    curl_for(20, url, headers, body).await
}

/// [`curl`] cut after `seconds` (for endless streams).
async fn curl_for(
    seconds: u32,
    url: String,
    headers: &'static [&'static str],
    body: Option<&'static str>,
) -> String {
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("curl");
        command.args(["-sN", "--max-time", &seconds.to_string(), &url]);
        for header in headers {
            command.args(["-H", header]);
        }
        if let Some(body) = body {
            command.args(["-H", "content-type: application/json", "-d", body]);
        }
        command.output()
    })
    .await
    .expect("curl ran")
    .expect("curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `config/examples/command.toml`'s commands: a count to `?to=` in both
/// formats, a refused parameter ending in an error event, a POSTed spec on
/// the program's standard input.
#[tokio::test]
async fn the_command_example_runs_as_written() {
    // The example runs from the repository (its script path is relative).
    let root = repo().canonicalize().expect("the repository");
    let server = example(
        "command.toml",
        &[(
            "GATEWAY__ROUTES__REPORT__BACKENDS__REPORT__CWD",
            root.display().to_string(),
        )],
    )
    .await;
    let counted = curl(server.url("/count?to=5"), &[], None).await;
    let ns: Vec<u64> = counted
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["n"]
                .as_u64()
                .expect("n")
        })
        .collect();
    assert_eq!(ns, [1, 2, 3, 4, 5], "{counted}");
    let sse = curl(
        server.url("/count?to=3"),
        &["Accept: text/event-stream"],
        None,
    )
    .await;
    assert!(sse.contains("id: 3\ndata: {\"n\":3,\"of\":3}"), "{sse}");
    let refused = curl(server.url("/count?to=x"), &[], None).await;
    assert!(
        refused.contains("to must be a number") && refused.contains("gateway.error"),
        "{refused}"
    );
    let report = curl(server.url("/report"), &[], Some(r#"{"pages": 2}"#)).await;
    let first = report.lines().next().unwrap_or_default();
    assert!(first.contains(r#""spec":{"pages":2}"#), "{report}");
}

/// `config/examples/http-upstream.toml` in front of a second gateway's
/// reference stream, as its comment says: the POSTed text's tokens, and a
/// resume that the upstream continues.
#[tokio::test]
async fn the_http_upstream_example_runs_as_written() {
    let upstream = TestServer::default_config().await;
    let url = format!("http://{}/?model={{model}}", upstream.addr);
    let server = example(
        "http-upstream.toml",
        &[("GATEWAY__ROUTES__CHAT__BACKENDS__UPSTREAM__URL", url)],
    )
    .await;
    let tokens = curl(
        server.url("/chat/small"),
        &[],
        Some(r#"{"text": "Hi there"}"#),
    )
    .await;
    assert!(
        tokens.contains(r#"{"event":"data","index":2,"token":"there"}"#),
        "{tokens}"
    );
    let resumed = curl(
        server.url("/chat/small"),
        &["Accept: text/event-stream", "Last-Event-ID: 2"],
        None,
    )
    .await;
    assert!(resumed.starts_with("retry: 3000\n\nid: 3\n"), "{resumed}");
}

/// The other examples' commands: the merged route's envelopes and cursor
/// ids (fan-in.toml), the YAML ticker as SSE (ticker.yaml), the JSON
/// config's POST route (jobs.json); each stream read for a second or two.
#[tokio::test]
async fn the_fan_in_ticker_and_json_examples_run_as_written() {
    let fan_in = example("fan-in.toml", &[]).await;
    let mixed = curl_for(2, fan_in.url("/mixed"), &[], None).await;
    let first: serde_json::Value =
        serde_json::from_str(mixed.lines().next().unwrap_or_default()).expect("an envelope");
    assert!(
        first["source"].is_string() && first["id"].is_string(),
        "{mixed}"
    );
    let sources: std::collections::BTreeSet<String> = mixed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["source"].as_str().map(str::to_string))
        .collect();
    assert!(sources.len() >= 2, "both backends: {sources:?}");

    let ticker = example("ticker.yaml", &[]).await;
    let ticks = curl_for(
        2,
        ticker.url("/ticks/lobby"),
        &["Accept: text/event-stream"],
        None,
    )
    .await;
    assert!(
        ticks.contains("id: 1\n") && ticks.contains("\"seq\":1"),
        "{ticks}"
    );

    let jobs = example("jobs.json", &[]).await;
    let progress = curl_for(2, jobs.url("/jobs/7"), &[], Some("{}")).await;
    assert!(progress.contains("\"seq\":1"), "{progress}");
}

/// `config/examples/nats-rooms.toml` as its comment says, with curl only:
/// the gateway declares the stream if it is missing, a publish through the
/// publish route reaches a reader of the room.
#[tokio::test]
async fn the_nats_example_runs_with_curl_only() {
    let token = "example-publish-token-0123456789";
    let server = example("nats-rooms.toml", &[("PUBLISH_TOKEN", token.into())]).await;
    let room = format!("example{}", std::process::id());
    let reader = tokio::spawn(curl_for(
        3,
        server.url(&format!("/rooms/{room}")),
        &[],
        None,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let url = server.url(&format!("/rooms/{room}/events"));
    let published = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "--max-time", "10", &url])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-d", r#"{"data": {"text": "hello"}, "event": "message"}"#])
            .output()
    })
    .await
    .expect("curl ran")
    .expect("curl");
    let answer = String::from_utf8_lossy(&published.stdout);
    assert!(answer.starts_with(r#"{"id":""#), "{answer}");
    let read = reader.await.expect("the reader");
    assert!(read.contains(r#"{"text":"hello"}"#), "{read}");
}

/// `config/examples/durable-jobs.toml`'s first command: a POSTed spec
/// starts a job whose first lines are its id and the program's answer, in
/// envelopes with ids to resume from (the rest of the README's walk is
/// gateway/tests/durable.rs).
#[tokio::test]
async fn the_durable_jobs_example_starts_a_job() {
    let root = repo().canonicalize().expect("the repository");
    let server = example(
        "durable-jobs.toml",
        &[(
            "GATEWAY__ROUTES__JOBS__BACKENDS__REPORT__CWD",
            root.display().to_string(),
        )],
    )
    .await;
    let job = format!("example-{}", std::process::id());
    let lines = curl_for(
        2,
        server.url(&format!("/jobs/{job}")),
        &[],
        Some(r#"{"pages": 1}"#),
    )
    .await;
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("an envelope"))
        .collect();
    assert_eq!(lines[0]["event"], "gateway.job", "{lines:?}");
    assert_eq!(lines[0]["data"]["job"], job.as_str());
    assert_eq!(lines[1]["data"]["status"], "accepted", "{lines:?}");
    assert!(
        lines[1]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&format!("{job}:"))),
        "{lines:?}"
    );
    let cancelled = tokio::task::spawn_blocking({
        let url = server.url(&format!("/jobs/{job}"));
        move || {
            Command::new("curl")
                .args(["-s", "-X", "DELETE", &url])
                .output()
        }
    })
    .await
    .expect("curl ran")
    .expect("curl");
    assert!(
        String::from_utf8_lossy(&cancelled.stdout).contains("cancelled"),
        "{cancelled:?}"
    );
}
