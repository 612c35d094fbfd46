//! The live viewer page over real HTTP: who gets it, its headers (a strict
//! policy, never cached), `HEAD`, and route names escaped into it. What it
//! does in a browser is tests/browser.rs's.

use std::sync::Arc;
use std::time::Duration;

use backends::Backend;
use backends::method::HttpMethod;
use backends::testing::{Mock, Step, event};
use gateway::config::ServerConfig;
use gateway_tests::{TestServer, client, within_for};
use serde_json::json;

const BOUND: Duration = Duration::from_secs(10);
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn server(
    backend_name: &str,
    edit: impl FnOnce(&mut gateway::config::RouteConfig),
) -> TestServer {
    let backend = Mock::new(vec![Step::Event(event("1", "tick", json!({"n": 1})))]);
    let backends: Vec<(&str, Arc<dyn Backend>)> = vec![(backend_name, Arc::new(backend))];
    TestServer::route("/r/{room}", backends, edit, ServerConfig::default()).await
}

async fn get(request: reqwest::RequestBuilder) -> reqwest::Response {
    within_for(BOUND, "an answer", request.send())
        .await
        .expect("request")
}

#[tokio::test]
async fn a_browser_gets_the_page_with_a_strict_policy() {
    let server = server("clock", |_| {}).await;
    let response = get(client()
        .get(server.url("/r/lobby?x=1"))
        .header("accept", BROWSER))
    .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["vary"], "accept");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers.contains_key("x-request-id"));
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert_eq!(policy, gateway::viewer::policy());
    for part in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    let length: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
    let page = response.text().await.unwrap();
    assert_eq!(page.len(), length);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("data-source=\"clock\""));
    assert!(page.contains("data-envelope=\"false\""));
    // Self-contained: nothing loaded from elsewhere.
    for external in ["src=", "href=", "http://", "https://", "@import"] {
        assert!(!page.contains(external), "the page has {external:?}");
    }
}

#[tokio::test]
async fn head_has_the_pages_headers_and_no_body() {
    let server = server("clock", |_| {}).await;
    let page = get(client()
        .get(server.url("/r/a"))
        .header("accept", "text/html"))
    .await;
    let length = page.headers()["content-length"].clone();
    let head = get(client()
        .head(server.url("/r/a"))
        .header("accept", "text/html"))
    .await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(head.headers()["content-length"], length);
    assert_eq!(head.headers()["cache-control"], "no-store");
    assert!(head.headers().contains_key("content-security-policy"));
    assert_eq!(head.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn streams_stay_streams() {
    let server = server("clock", |_| {}).await;
    let cases: &[(Option<&str>, &str, &str)] = &[
        (None, "", "application/x-ndjson"),
        (Some("*/*"), "", "application/x-ndjson"),
        (Some("text/event-stream"), "", "text/event-stream"),
        (Some("application/x-ndjson"), "", "application/x-ndjson"),
        (Some(BROWSER), "?format=sse", "text/event-stream"),
        (Some(BROWSER), "?format=ndjson", "application/x-ndjson"),
    ];
    for (accept, query, expected) in cases {
        let mut request = client().get(server.url(&format!("/r/a{query}")));
        if let Some(accept) = accept {
            request = request.header("accept", *accept);
        }
        let response = get(request).await;
        assert_eq!(response.status(), 200, "{accept:?} {query}");
        assert_eq!(
            response.headers()["content-type"],
            *expected,
            "{accept:?} {query}"
        );
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let body = within_for(BOUND, "the stream's end", response.text())
            .await
            .unwrap();
        assert!(body.contains("\"n\":1"), "{accept:?} {query}: {body}");
    }
}

#[tokio::test]
async fn a_route_without_get_has_no_page() {
    let server = server("clock", |r| r.methods = vec![HttpMethod::Post]).await;
    let response = get(client()
        .post(server.url("/r/a"))
        .header("accept", "text/html"))
    .await;
    assert_eq!(response.status(), 406);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        !body["offered"]
            .as_array()
            .unwrap()
            .contains(&json!("text/html")),
        "{body}"
    );
}

#[tokio::test]
async fn names_are_escaped_into_the_page() {
    let name = r#"x"><script>alert(1)</script>{script}&'"#;
    let server = server(name, |_| {}).await;
    let page = get(client()
        .get(server.url("/r/a"))
        .header("accept", "text/html"))
    .await;
    let page = page.text().await.unwrap();
    let escaped = "x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;{script}&amp;&#39;";
    assert!(
        page.contains(&format!("data-source=\"{escaped}\"")),
        "{page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    // The one script is the page's own.
    assert_eq!(page.matches("<script>").count(), 1);
}
