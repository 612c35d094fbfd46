//! The examples of `config/examples/` run as the README and their comments
//! say, on real processes and real clients.

use std::process::Command;

use gateway_tests::examples::{llm_gateway, mock_llm};

/// `curl -sN URL -H 'content-type: application/json' -d BODY` (and an
/// `Accept`), as the README writes it; its output.
async fn curl_post(url: String, accept: Option<&'static str>, body: &'static str) -> String {
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("curl");
        command.args(["-sN", "--max-time", "20", &url]);
        command.args(["-H", "content-type: application/json", "-d", body]);
        if let Some(accept) = accept {
            command.args(["-H", &format!("accept: {accept}")]);
        }
        command.output()
    })
    .await
    .expect("curl ran")
    .expect("curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The README's `curl` command against the example, NDJSON by default and
/// SSE when asked: the answer token by token, then the end.
#[tokio::test]
async fn the_llm_example_streams_a_prompt_to_curl() {
    let (_mock, port) = mock_llm();
    let server = llm_gateway(port).await;
    let ndjson = curl_post(
        server.url("/chat"),
        None,
        r#"{"prompt": "What is a stream?"}"#,
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

    let sse = curl_post(
        server.url("/chat"),
        Some("text/event-stream"),
        r#"{"prompt": "Hi"}"#,
    )
    .await;
    assert!(sse.contains("data: \"You\"\n"), "{sse}");
    assert!(sse.contains("data: \" Hi.\"\n"), "{sse}");
    assert!(
        !sse.contains("[DONE]"),
        "the sentinel is not an event: {sse}"
    );
}
