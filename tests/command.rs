//! The `command` backend through the gateway: lines become events as the
//! program writes them, the program dies with the client, failures and
//! resumes answer as documented. Programs are `sh -c` scripts; a FIFO gates
//! them where a test must see one line before the next exists.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backends::Backend;
use backends::command::{Command, CommandConfig, LineFormat};
use futures::StreamExt;
use gateway::config::ServerConfig;
use gateway_tests::{TestServer, all_ndjson, client, ndjson_lines};
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

fn script(text: &str, edit: impl FnOnce(&mut CommandConfig)) -> CommandConfig {
    let mut config = CommandConfig {
        command: vec!["sh".into(), "-c".into(), text.into()],
        format: LineFormat::Ndjson,
        log_stderr: false,
        ..CommandConfig::default()
    };
    edit(&mut config);
    config
}

async fn serve(config: CommandConfig) -> TestServer {
    let backends: Vec<(&str, Arc<dyn Backend>)> = vec![("run", Arc::new(Command::new(config)))];
    TestServer::route("/jobs/{id}", backends, |_| {}, ServerConfig::default()).await
}

/// A scratch directory of this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("command-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success());
}

#[tokio::test]
async fn lines_arrive_as_the_program_writes_them_with_line_ids() {
    let dir = scratch("gate");
    let gate = dir.join("gate");
    mkfifo(&gate);
    let text = format!(
        r#"echo '{{"step":1}}'; echo "job $GATEWAY_PARAM_ID"; cat '{}' > /dev/null; echo '{{"step":2}}'"#,
        gate.display()
    );
    let server = serve(script(&text, |_| {})).await;
    let response = within(
        "the stream",
        client().get(server.url("/jobs/42?format=sse")).send(),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);
    let mut events = gateway_tests::sse_events(response);
    let first = within("line 1", events.next()).await.expect("an event");
    assert_eq!(
        (first.id.as_str(), first.data.as_str()),
        ("1", r#"{"step":1}"#)
    );
    let second = within("line 2", events.next()).await.expect("an event");
    assert_eq!(second.data, "job 42", "path parameters reach the program");
    // The third line does not exist until the gate opens.
    std::fs::write(&gate, b"go\n").expect("open the gate");
    let third = within("line 3", events.next()).await.expect("an event");
    assert_eq!(
        (third.id.as_str(), third.data.as_str()),
        ("3", r#"{"step":2}"#)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_program_is_killed_when_the_client_leaves() {
    let dir = scratch("kill");
    let pid_file = dir.join("pid");
    // The program starts a child of its own and waits for it: both must go.
    let text = format!(
        "sleep 600 & echo $! > '{}'; echo started; wait",
        pid_file.display()
    );
    let server = serve(script(&text, |c| c.format = LineFormat::Lines)).await;
    let response = within("the stream", client().get(server.url("/jobs/1")).send())
        .await
        .expect("request");
    let mut lines = ndjson_lines(response);
    assert_eq!(
        within("a line", lines.next()).await.as_deref(),
        Some("\"started\"")
    );
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(proc_dir.exists());
    drop(lines);
    // The program's own child is gone (or a zombie about to be reaped)
    // soon after the client left.
    within("the program's death", async {
        loop {
            let state = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
            let zombie = state.split_whitespace().nth(2) == Some("Z");
            if state.is_empty() || zombie {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_program_sees_no_secrets_of_the_gateway() {
    // Cargo gives this test process CARGO_MANIFEST_DIR; the program must
    // not inherit it (nor anything else but PATH, HOME, locale, TZ, TMPDIR).
    let server = serve(script(
        r#"echo "[$CARGO_MANIFEST_DIR]"; echo "[${PATH:+path}]""#,
        |c| c.format = LineFormat::Lines,
    ))
    .await;
    let response = within("the stream", client().get(server.url("/jobs/1")).send())
        .await
        .expect("request");
    let lines = all_ndjson(response).await;
    assert_eq!(lines, [json!("[]"), json!("[path]")]);
    // A NUL byte cannot reach a program: 400.
    let nul = within("an answer", client().get(server.url("/jobs/a%00b")).send())
        .await
        .expect("request");
    assert_eq!(nul.status(), 400);
}

/// The request reaches the program as data: the JSON body on stdin (then
/// closed), query parameters as GATEWAY_QUERY_<NAME> (the first value),
/// path parameters as GATEWAY_PARAM_<NAME>; never as arguments.
#[tokio::test]
async fn the_program_gets_the_body_on_stdin_and_the_query_as_variables() {
    let server = serve(script(
        r#"body=$(cat); echo "{\"body\":${body:-null},\"steps\":\"$GATEWAY_QUERY_STEPS\",\"mode\":\"$GATEWAY_QUERY_MODE\",\"id\":\"$GATEWAY_PARAM_ID\"}""#,
        |_| {},
    ))
    .await;
    let response = within(
        "the stream",
        client()
            .post(server.url("/jobs/7?steps=3&mode=a%20b&steps=9"))
            .header("content-type", "application/json")
            .body(r#"{"pages": [1, 2], "title": "$(rm -rf /)"}"#)
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);
    let lines = all_ndjson(response).await;
    assert_eq!(
        lines,
        [json!({
            "body": {"pages": [1, 2], "title": "$(rm -rf /)"},
            "steps": "3",
            "mode": "a b",
            "id": "7",
        })]
    );
    // Without a body, stdin is empty (closed at once): the program never
    // waits for it.
    let response = within("the stream", client().get(server.url("/jobs/8")).send())
        .await
        .expect("request");
    assert_eq!(all_ndjson(response).await[0]["body"], Value::Null);
    // A query name that cannot be a variable name: 400, nothing runs.
    for bad in ["/jobs/9?a-b=1", "/jobs/9?=1", "/jobs/9?x=a%00b"] {
        let refused = within("an answer", client().get(server.url(bad)).send())
            .await
            .expect("request");
        assert_eq!(refused.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn failures_resumes_and_limits_answer_as_documented() {
    // A failing program: its lines, then an error event.
    let server = serve(script("echo '{\"a\":1}'; exit 3", |_| {})).await;
    let response = within("the stream", client().get(server.url("/jobs/1")).send())
        .await
        .expect("request");
    let lines = all_ndjson(response).await;
    assert_eq!(lines[0], json!({"a": 1}));
    let error = lines
        .iter()
        .find(|l| l["event"] == "gateway.error")
        .expect("an error event");
    assert_eq!(error["kind"], "upstream");
    assert!(
        error["message"].as_str().unwrap_or("").contains('3'),
        "{error}"
    );

    // A reconnect never runs the program again.
    let resumed = within(
        "an answer",
        client()
            .get(server.url("/jobs/1"))
            .header("last-event-id", "1")
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(resumed.status(), 204);

    // A line over the bound ends the stream with an error.
    let long = serve(script("printf '%0100d\\n' 0", |c| c.max_line_bytes = 50)).await;
    let response = within("the stream", client().get(long.url("/jobs/1")).send())
        .await
        .expect("request");
    let lines = all_ndjson(response).await;
    assert!(
        lines.iter().any(|l| l["event"] == "gateway.error"
            && l["message"]
                .as_str()
                .unwrap_or("")
                .contains("longer than 50")),
        "{lines:?}"
    );

    // One program at a time: a second request meanwhile is 503.
    let dir = scratch("busy");
    let gate = dir.join("gate");
    mkfifo(&gate);
    let text = format!("echo busy; cat '{}' > /dev/null", gate.display());
    let busy = serve(script(&text, |c| {
        c.max_running = 1;
        c.format = LineFormat::Lines;
    }))
    .await;
    let first = within("the stream", client().get(busy.url("/jobs/1")).send())
        .await
        .expect("request");
    let mut first = ndjson_lines(first);
    within("a line", first.next()).await.expect("busy");
    let second = within("an answer", client().get(busy.url("/jobs/2")).send())
        .await
        .expect("request");
    assert_eq!(second.status(), 503);
    let body: Value = within("the body", second.json()).await.expect("JSON");
    assert_eq!(body["error"], "unavailable");
    std::fs::write(&gate, b"go\n").expect("open the gate");
    let _ = std::fs::remove_dir_all(&dir);
}
