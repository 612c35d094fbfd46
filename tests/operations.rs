//! What operators read: every answer names its request id, taken from the
//! client or CloudFront when they give one.

use std::time::Duration;

use gateway_tests::{TestServer, client};

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
}
