//! Publish routes against the real Redis on 127.0.0.1:6379: every wrong
//! request is refused with its own status, and bad publish configs are
//! reported at once. That a published event reaches readers with the id the
//! answer names is a conformance check every bus passes (`tests/bus.rs`).

use std::collections::HashMap;
use std::time::Duration;

use gateway::config::{self, Source};
use gateway_tests::{TestServer, client};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(10);
const TOKEN: &str = "publish-token-0123456789";

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// A gateway with `/rooms/{room}` (reading) and `/rooms/{room}/events`
/// (publishing) on keys `PREFIX:{room}`; the token comes from the
/// environment, as a deployment would give it.
async fn server() -> TestServer {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("test:publish:{}:{nanos}", std::process::id());
    let text = format!(
        r#"
[server]
max_body_bytes = 1024

[routes.rooms]
path = "/rooms/{{room}}"
[routes.rooms.backends.bus]
type = "redis"
stream = "{prefix}:{{room}}"
allow = "{prefix}:*"

[publish.rooms]
path = "/rooms/{{room}}/events"
tokens = ["${{PUBLISH_TOKEN}}"]
[publish.rooms.target]
type = "redis"
stream = "{prefix}:{{room}}"
allow = "{prefix}:*"
max_len = 1000
"#
    );
    let path = std::env::temp_dir().join(format!("publish-{nanos}.toml"));
    std::fs::write(&path, text).expect("write the config");
    let env = HashMap::from([("PUBLISH_TOKEN".to_string(), TOKEN.to_string())]);
    let loaded = config::load(Source::File(&path), Some(env));
    let _ = std::fs::remove_file(&path);
    TestServer::from_config(&loaded.expect("a valid config")).await
}

async fn post(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = client().post(server.url(path)).body(body.to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    within("the publish answer", request.send())
        .await
        .expect("request")
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = within("the body", response.json()).await.expect("JSON");
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn publishing_without_the_right_token_or_body_is_refused() {
    let server = server().await;
    let path = "/rooms/lobby/events";
    let event = r#"{"data": 1}"#;

    let none = post(&server, path, None, event).await;
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"gateway\"")
    );
    assert_eq!(error_code(none).await, "unauthorized");

    let wrong = post(&server, path, Some("publish-token-0123456780"), event).await;
    assert_eq!(wrong.status(), 403);
    assert_eq!(error_code(wrong).await, "forbidden");

    let basic = within(
        "an answer",
        client()
            .post(server.url(path))
            .header("authorization", format!("Basic {TOKEN}"))
            .body(event)
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(basic.status(), 401, "only Bearer tokens publish");

    let large = format!(r#"{{"data": "{}"}}"#, "x".repeat(2048));
    let too_large = post(&server, path, Some(TOKEN), &large).await;
    assert_eq!(too_large.status(), 413);

    for bad in [
        "",
        "not json",
        "[1]",
        r#"{"event": "x"}"#,
        r#"{"data": 1, "event": "a\nb"}"#,
    ] {
        let refused = post(&server, path, Some(TOKEN), bad).await;
        assert_eq!(refused.status(), 400, "{bad:?}");
        assert_eq!(error_code(refused).await, "bad_request");
    }

    let get = within("an answer", client().get(server.url(path)).send())
        .await
        .expect("request");
    assert_eq!(get.status(), 405);
    assert_eq!(
        get.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
}

#[test]
fn publish_config_problems_are_all_reported() {
    let text = r#"
[routes.r]
path = "/r"
[routes.r.backends.d]
type = "demo"

[publish.short]
path = "/r"
tokens = ["short", "${MISSING_TOKEN_VAR}"]
[publish.short.target]
type = "redis"
stream = "k:{x}"

[publish.none]
path = "/p"
"#;
    let path = std::env::temp_dir().join(format!("publish-bad-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write the config");
    let error = config::load(Source::File(&path), Some(HashMap::new())).expect_err("invalid");
    let _ = std::fs::remove_file(&path);
    let keys: Vec<String> = error.problems.iter().map(|p| p.key.clone()).collect();
    for key in [
        "publish.short.tokens",
        "publish.short.path",
        "publish.short.target.allow",
        "publish.none.tokens",
        "publish.none.target",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing in {error}");
    }
    assert!(error.to_string().contains("MISSING_TOKEN_VAR"), "{error}");
}
