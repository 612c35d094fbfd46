//! What operators read: every answer names its request id, taken from the
//! client or CloudFront when they give one.

use std::time::Duration;

use futures::StreamExt;
use gateway_tests::{REFERENCE_LINES, TestServer, client, ndjson_lines};

const BOUND: Duration = Duration::from_secs(10);

async fn request_id(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = client().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(BOUND, request.send())
        .await
        .expect("an answer in time")
        .expect("request");
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an X-Request-Id")
        .to_string()
}

#[tokio::test]
async fn every_answer_names_its_request_id() {
    let server = TestServer::default_config().await;
    // Generated, and different each time; errors have one too.
    let (a, b) = (
        request_id(&server, "/nowhere", &[]).await,
        request_id(&server, "/nowhere", &[]).await,
    );
    assert!(!a.is_empty() && a != b, "{a} {b}");
    // The client's own, then CloudFront's.
    assert_eq!(
        request_id(&server, "/nowhere", &[("x-request-id", "req-123")]).await,
        "req-123"
    );
    assert_eq!(
        request_id(&server, "/nowhere", &[("x-amz-cf-id", "cf-abc==")]).await,
        "cf-abc=="
    );
    assert_eq!(
        request_id(
            &server,
            "/nowhere",
            &[("x-request-id", "mine"), ("x-amz-cf-id", "cf")]
        )
        .await,
        "mine"
    );
    // An id that is too long (or not plain ASCII) is replaced.
    let long = "x".repeat(129);
    let replaced = request_id(&server, "/nowhere", &[("x-request-id", long.as_str())]).await;
    assert_ne!(replaced, long);
    // Streams name it too, in their headers.
    let streamed = request_id(&server, "/?format=ndjson", &[("x-request-id", "stream-1")]).await;
    assert_eq!(streamed, "stream-1");
    // The health check too (a load balancer's probes are requests).
    assert_eq!(
        request_id(&server, "/healthz", &[("x-request-id", "probe-7")]).await,
        "probe-7"
    );
    assert!(!request_id(&server, "/healthz", &[]).await.is_empty());
}

mod cors {
    use std::sync::Arc;

    use backends::Backend;
    use backends::testing::{Mock, Step, event};
    use gateway::config::{CorsConfig, ServerConfig};
    use gateway_tests::{TestServer, client};
    use serde_json::json;

    use super::BOUND;

    const APP: &str = "https://app.example.com";

    async fn server(credentials: bool) -> TestServer {
        let backend = Mock::new(vec![Step::Event(event("1", "tick", json!(1)))]);
        let backends: Vec<(&str, Arc<dyn Backend>)> = vec![("m", Arc::new(backend))];
        TestServer::route(
            "/open",
            backends,
            |r| {
                r.cors = Some(CorsConfig {
                    origins: vec![APP.into()],
                    credentials,
                    allow_headers: vec!["accept".into(), "last-event-id".into()],
                    expose_headers: vec!["x-request-host".into(), "x-request-id".into()],
                    max_age: std::time::Duration::from_secs(600),
                });
            },
            ServerConfig::default(),
        )
        .await
    }

    async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
        tokio::time::timeout(BOUND, request.send())
            .await
            .expect("an answer in time")
            .expect("request")
    }

    fn header(response: &reqwest::Response, name: &str) -> Option<String> {
        let values: Vec<&str> = response
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", ").to_ascii_lowercase())
    }

    #[tokio::test]
    async fn preflights_from_allowed_origins_are_answered() {
        let server = server(true).await;
        let preflight = send(
            client()
                .request(reqwest::Method::OPTIONS, server.url("/open"))
                .header("origin", APP)
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "last-event-id"),
        )
        .await;
        assert_eq!(preflight.status(), 200);
        assert_eq!(
            header(&preflight, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        let methods = header(&preflight, "access-control-allow-methods").unwrap_or_default();
        assert!(
            methods.contains("get") && methods.contains("post"),
            "{methods}"
        );
        let headers = header(&preflight, "access-control-allow-headers").unwrap_or_default();
        assert!(headers.contains("last-event-id"), "{headers}");
        assert_eq!(
            header(&preflight, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(
            header(&preflight, "access-control-max-age").as_deref(),
            Some("600")
        );
        // Another origin learns nothing.
        let other = send(
            client()
                .request(reqwest::Method::OPTIONS, server.url("/open"))
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "GET"),
        )
        .await;
        assert_eq!(header(&other, "access-control-allow-origin"), None);
        for name in [
            "access-control-allow-credentials",
            "access-control-allow-methods",
            "access-control-allow-headers",
            "access-control-max-age",
        ] {
            assert_eq!(header(&other, name), None, "{name} to another origin");
        }
    }

    #[tokio::test]
    async fn streams_to_allowed_origins_expose_their_headers() {
        let server = server(true).await;
        let response = send(
            client()
                .get(server.url("/open?format=sse"))
                .header("origin", APP),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        let exposed = header(&response, "access-control-expose-headers").unwrap_or_default();
        assert!(
            exposed.contains("x-request-host") && exposed.contains("x-request-id"),
            "{exposed}"
        );
        let vary = header(&response, "vary").unwrap_or_default();
        assert!(vary.contains("origin") && vary.contains("accept"), "{vary}");
        // A stream to an origin not allowed says nothing of the settings.
        let other = send(
            client()
                .get(server.url("/open?format=sse"))
                .header("origin", "https://evil.example"),
        )
        .await;
        for name in [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
        ] {
            assert_eq!(header(&other, name), None, "{name} to another origin");
        }
        // Without CORS, a route answers no other origin, and no preflight.
        let closed = TestServer::default_config().await;
        let plain = send(client().get(closed.url("/")).header("origin", APP)).await;
        assert_eq!(header(&plain, "access-control-allow-origin"), None);
        let preflight = send(
            client()
                .request(reqwest::Method::OPTIONS, closed.url("/"))
                .header("origin", APP)
                .header("access-control-request-method", "GET"),
        )
        .await;
        assert_eq!(preflight.status(), 405);
    }

    #[test]
    fn cors_settings_are_checked() {
        let config = |origins: &[&str], credentials: bool| CorsConfig {
            origins: origins.iter().map(|o| o.to_string()).collect(),
            credentials,
            allow_headers: vec!["accept".into()],
            expose_headers: vec!["bad header".into()],
            max_age: std::time::Duration::from_secs(1),
        };
        let keys =
            |c: CorsConfig| -> Vec<String> { c.validate().into_iter().map(|(k, _)| k).collect() };
        assert_eq!(
            keys(config(&["*"], true)),
            ["credentials", "expose_headers"]
        );
        assert_eq!(
            keys(config(&["https://a.example/", "*"], false)),
            ["origins", "origins", "expose_headers"]
        );
        assert_eq!(keys(config(&[], false)), ["origins", "expose_headers"]);
    }
}

/// HTTP/2 with prior knowledge (h2c) is served on the same port as
/// HTTP/1.1, streams included.
#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let server = TestServer::default_config().await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let health = h2.get(server.url("/healthz")).send().await.expect("health");
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert_eq!(health.status(), 200);
    let stream = h2
        .get(server.url("/"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.version(), reqwest::Version::HTTP_2);
    let lines: Vec<String> = ndjson_lines(stream).collect().await;
    assert_eq!(lines, REFERENCE_LINES);
    let h1 = client()
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("h1");
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
}
