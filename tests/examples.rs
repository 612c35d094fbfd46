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
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("curl");
        command.args(["-sN", "--max-time", "20", &url]);
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
