//! The deploy chain, proven offline: a viewer's request goes through the
//! viewer-request CloudFront Function (`deploy/viewer-request.js`), the
//! origin request policy of `deploy/template.yaml`, the Lambda@Edge edge
//! hasher (`deploy/edge-hasher/index.mjs`), SigV4 signing as Origin Access
//! Control does it (`aws-sigv4`, service `lambda`), a stand-in for the
//! Function URL that verifies the signature and payload hash as Lambda's
//! `AWS_IAM` auth does (an independent verifier, `chain/verifier.rs`), and
//! then the gateway, whose stream comes back through the stand-in.
//!
//! The JavaScript runs in Node (`chain/driver.mjs`); everything else is in
//! this process, over real loopback HTTP. Nothing waits on time: the test
//! backend holds its last event behind a gate the test opens.

#[path = "chain/cloudfront.rs"]
mod cloudfront;
#[path = "chain/standin.rs"]
mod standin;
#[path = "chain/verifier.rs"]
mod verifier;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backends::testing::event;
use backends::{Backend, BackendError, EventStream, RequestContext};
use futures::{Stream, StreamExt};
use gateway::config::{AuthConfig, AuthType, CredentialPlace, ServerConfig};
use gateway_tests::{TestServer, ndjson_lines, sse_events};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use cloudfront::{DISTRIBUTION_DOMAIN, Generated, OriginRequestPolicy, Request};
use standin::FunctionUrl;
use verifier::Expected;

/// The client's own credential, which must reach the backend untouched.
const CLIENT_TOKEN: &str = "Bearer client-token";
/// Where the gateway reads the client's credential from (the template sets
/// `GATEWAY__SERVER__AUTHORIZATION_SOURCE` to it, and the viewer function
/// moves `Authorization` there).
const AUTHORIZATION_SOURCE: &str = "x-client-authorization";
/// Where the template's gateway reads who a client is.
const CLIENT_IP_HEADER: &str = "cloudfront-viewer-address";
/// A query whose values need encoding, to be signed and verified.
const QUERY: &str = "q=hello%20world&name=J%C3%BCrgen&lang=en";
/// The cookie a browser's `EventSource` carries its credential in (it
/// cannot set headers): the route's `cookie_name`, and the deploy's
/// `CredentialCookie` parameter.
const CREDENTIAL_COOKIE: &str = "access_token";
/// The static token the cookie route accepts.
const COOKIE_TOKEN: &str = "cookie-route-token-0123456789";
/// How long a step may take before the test calls it stuck. Only a guard:
/// nothing here waits for time to pass.
const STUCK: Duration = Duration::from_secs(20);

/// Streams, for each request: the body it got, the `Authorization` and
/// query it saw, then, once the test opens the gate, one more event.
#[derive(Debug, Default)]
struct Recorder {
    gate: Arc<Notify>,
    opened: AtomicUsize,
}

#[async_trait]
impl Backend for Recorder {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let authorization: Vec<String> = ctx
            .headers
            .get_all("authorization")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let body: Option<Value> = ctx.body.as_ref().map(|b| b.deserialize().expect("JSON"));
        let first = event("1", "body", json!({ "body": body }));
        let second = event(
            "2",
            "seen",
            json!({ "authorization": authorization, "query": ctx.query }),
        );
        let gate = Arc::clone(&self.gate);
        let third = async move {
            gate.notified().await;
            Ok(event("3", "after-gate", json!({ "gate": "opened" })))
        };
        Ok(futures::stream::iter([Ok(first), Ok(second)])
            .chain(futures::stream::once(third))
            .boxed())
    }
}

/// The gateway with the recorder on `/`, behind the Function URL stand-in,
/// and the origin request policy of the template.
struct Chain {
    backend: Arc<Recorder>,
    function_url: FunctionUrl,
    policy: OriginRequestPolicy,
    _gateway: TestServer,
}

impl Chain {
    async fn start() -> Self {
        Self::with(ServerConfig::default()).await
    }

    /// The chain with the gateway's `server` settings as the template sets
    /// them (the rest as given).
    async fn with(server: ServerConfig) -> Self {
        Self::build(server, AuthConfig::default(), &[]).await
    }

    /// The chain with a route that reads its credential from the cookie
    /// [`CREDENTIAL_COOKIE`], deployed with `parameters`.
    async fn with_cookie_auth(parameters: &[(&str, &str)]) -> Self {
        let auth = AuthConfig {
            kind: AuthType::Bearer,
            tokens: vec![COOKIE_TOKEN.into()],
            from: vec![CredentialPlace::Cookie],
            cookie_name: CREDENTIAL_COOKIE.into(),
            ..AuthConfig::default()
        };
        Self::build(ServerConfig::default(), auth, parameters).await
    }

    /// The chain with the route's `auth`, and the origin request policy
    /// of a deploy that gives the template `parameters`.
    async fn build(server: ServerConfig, auth: AuthConfig, parameters: &[(&str, &str)]) -> Self {
        let backend = Arc::new(Recorder::default());
        let server = ServerConfig {
            authorization_source: Some(AUTHORIZATION_SOURCE.into()),
            client_ip_header: Some(CLIENT_IP_HEADER.into()),
            ..server
        };
        let gateway = TestServer::route(
            "/",
            vec![("recorder", Arc::clone(&backend) as Arc<dyn Backend>)],
            |route| {
                route.pass_headers = vec!["authorization".into()];
                // A header of the route's own comes back through the chain.
                route.response_headers = [("X-AggregateInfo-Result".into(), "OK".into())].into();
                route.auth = auth;
            },
            server,
        )
        .await;
        let function_url =
            FunctionUrl::start(gateway.addr, function_url_auth(SystemTime::now())).await;
        Self {
            backend,
            function_url,
            policy: OriginRequestPolicy::from_template(parameters),
            _gateway: gateway,
        }
    }

    /// The viewer's request as CloudFront takes it to the origin, before
    /// signing: the viewer function, then the origin request policy.
    async fn viewer_to_origin(&self, viewer: &Request) -> Request {
        let after_function = cloudfront::viewer_request(viewer)
            .await
            .expect("the viewer function passes the request on");
        self.policy
            .apply(&after_function, &self.function_url.host())
    }

    /// The viewer function, the policy and the edge hasher: the request
    /// CloudFront is about to sign, or the edge's own answer.
    async fn through_the_edge(&self, viewer: &Request) -> Result<Request, Generated> {
        let origin = self.viewer_to_origin(viewer).await;
        cloudfront::edge_hasher(&origin, &self.function_url.host()).await
    }

    /// Sends a signed origin request to the Function URL stand-in.
    async fn send(&self, request: &Request) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("a method");
        let url = format!("http://{}{}", self.function_url.addr, request.target());
        let mut builder = gateway_tests::client().request(method, url);
        for (name, value) in &request.headers {
            // reqwest writes Host and Content-Length itself, the same values.
            if name != "host" && name != "content-length" {
                builder = builder.header(name, value);
            }
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        tokio::time::timeout(STUCK, builder.send())
            .await
            .expect("the Function URL sends status and headers (a proxy that waits for the stream's end never does)")
            .expect("a response")
    }

    fn opened(&self) -> usize {
        self.backend.opened.load(Ordering::SeqCst)
    }
}

/// What the Function URL accepts: OAC's credentials, scoped to its region
/// and the service `lambda`.
fn function_url_auth(now: SystemTime) -> Expected {
    Expected {
        access_key_id: cloudfront::ACCESS_KEY_ID.into(),
        secret_access_key: cloudfront::SECRET_ACCESS_KEY.into(),
        region: cloudfront::REGION.into(),
        service: cloudfront::SERVICE.into(),
        now,
    }
}

/// What a viewer sends: the public host, its own credential.
fn viewer(method: &str, accept: &str) -> Request {
    Request::new(method, "/", QUERY)
        .header("Host", DISTRIBUTION_DOMAIN)
        .header("Authorization", CLIENT_TOKEN)
        .header("Accept", accept)
        .header("User-Agent", "chain-test/1.0")
}

/// What a browser's `EventSource` sends: a GET that asks for SSE, with
/// the cookies of the distribution's domain and no `Authorization` (it
/// cannot set headers).
fn event_source(cookie: &str) -> Request {
    Request::new("GET", "/", QUERY)
        .header("Host", DISTRIBUTION_DOMAIN)
        .header("Accept", "text/event-stream")
        .header("Cache-Control", "no-cache")
        .header("Cookie", cookie)
        .header("User-Agent", "Mozilla/5.0 (chain-test)")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The next item of a stream, failing instead of hanging.
async fn next<T>(stream: &mut (impl Stream<Item = T> + Unpin), what: &str) -> T {
    tokio::time::timeout(STUCK, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive: something holds the stream back"))
        .unwrap_or_else(|| panic!("the stream ended before {what}"))
}

/// The query as the backend sees it (decoded).
fn decoded_query() -> Value {
    json!([["q", "hello world"], ["name", "Jürgen"], ["lang", "en"]])
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"))
}

/// The origin request policy of the template forwards what the gateway
/// reads, and neither `Host` (the signature covers the Function URL's own)
/// nor `Authorization` (OAC's); cookies only when the deploy names its
/// credential cookie (`CredentialCookie`), and then that one only.
#[test]
fn the_template_forwards_what_the_gateway_needs() {
    let default = OriginRequestPolicy::from_template(&[]);
    assert_eq!(default.cookie_behavior, "none", "{default:?}");
    assert_eq!(default.cookies, Vec::<String>::new());
    let with_cookie =
        OriginRequestPolicy::from_template(&[("CredentialCookie", CREDENTIAL_COOKIE)]);
    assert_eq!(with_cookie.cookie_behavior, "whitelist", "{with_cookie:?}");
    assert_eq!(with_cookie.cookies, [CREDENTIAL_COOKIE]);
    assert!(with_cookie.forwards_cookie(CREDENTIAL_COOKIE));
    assert!(!with_cookie.forwards_cookie("theme"));
    assert!(
        !with_cookie.forwards_cookie("Access_Token"),
        "cookie names are case-sensitive"
    );
    // The cookie changes nothing else.
    assert_eq!(
        (&default.headers, &default.query_string_behavior),
        (&with_cookie.headers, &with_cookie.query_string_behavior)
    );

    let policy = default;
    assert_eq!(policy.header_behavior, "whitelist", "{policy:?}");
    for needed in [
        "X-Original-Host",
        "Accept",
        "Last-Event-ID",
        "Content-Type",
        "Origin",
        AUTHORIZATION_SOURCE,
        CLIENT_IP_HEADER,
    ] {
        assert!(
            policy.forwards(needed),
            "the policy must forward {needed}: {policy:?}"
        );
    }
    for never in ["Host", "Authorization"] {
        assert!(
            !policy.forwards(never),
            "the policy must not forward {never}: {policy:?}"
        );
    }
    assert_eq!(policy.query_string_behavior, "all");
}

/// The template tells the gateway the headers the policy forwards.
#[test]
fn the_template_sets_the_headers_the_gateway_reads() {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/template.yaml"
    ))
    .expect("deploy/template.yaml");
    for (variable, value) in [
        (
            "GATEWAY__SERVER__AUTHORIZATION_SOURCE",
            AUTHORIZATION_SOURCE,
        ),
        ("GATEWAY__SERVER__CLIENT_IP_HEADER", CLIENT_IP_HEADER),
    ] {
        let line = format!("{variable}: {value}");
        assert!(template.contains(&line), "the template must set {line}");
    }
}

/// Behind CloudFront a client is the viewer CloudFront names: its streams
/// count together, and a `CloudFront-Viewer-Address` the viewer sends
/// itself is never believed.
#[tokio::test]
async fn streams_per_client_count_the_viewer_cloudfront_names() {
    let chain = Chain::with(ServerConfig {
        max_streams_per_client: 1,
        ..ServerConfig::default()
    })
    .await;
    let open = |spoofed: &'static str| {
        let chain = &chain;
        async move {
            let viewer =
                viewer("GET", "application/x-ndjson").header("cloudfront-viewer-address", spoofed);
            let origin = chain
                .through_the_edge(&viewer)
                .await
                .expect("the edge passes a GET on");
            assert_eq!(
                origin.get("cloudfront-viewer-address"),
                Some("198.51.100.11:46532")
            );
            chain
                .send(&cloudfront::oac_sign(&origin, SystemTime::now()))
                .await
        }
    };
    let first = open("203.0.113.1:1").await;
    assert_eq!(first.status(), 200);
    let second = open("203.0.113.2:2").await;
    assert_eq!(second.status(), 429, "the same viewer, whatever it claims");
    drop(first);
}

/// The text extraction reads both YAML list styles and skips comments.
#[test]
fn policy_extraction_reads_block_and_flow_lists() {
    let block = "\
Resources:
  Other:
    Type: AWS::Other
    Properties:
      Headers: [Nope]
  Policy:
    Type: AWS::CloudFront::OriginRequestPolicy
    Properties:
      OriginRequestPolicyConfig:
        HeadersConfig:
          HeaderBehavior: whitelist
          # A comment between the key and its list.
          Headers:
            # And inside it.
            - X-Original-Host
            - \"Accept\" # quoted, with a comment
        QueryStringsConfig:
          QueryStringBehavior: all
        CookiesConfig:
          CookieBehavior: none
  Next:
    Type: AWS::Other
";
    let policy = OriginRequestPolicy::parse(block, &[]).unwrap();
    assert_eq!(policy.headers, ["X-Original-Host", "Accept"]);
    assert_eq!(policy.query_string_behavior, "all");
    assert_eq!(policy.cookie_behavior, "none");
    assert_eq!(policy.cookies, Vec::<String>::new());
    let flow = block.replace(
        "Headers:\n            # And inside it.\n            - X-Original-Host\n            - \"Accept\" # quoted, with a comment",
        "Headers: [X-Original-Host, 'Accept']",
    );
    assert_eq!(
        OriginRequestPolicy::parse(&flow, &[]).unwrap().headers,
        ["X-Original-Host", "Accept"]
    );
}

/// The extraction evaluates what CloudFormation evaluates for a deploy:
/// `!If` on a condition of `!Not`/`!Equals` over a `!Ref` to a parameter,
/// the parameter's `Default` when the deploy gives none, and
/// `!Ref AWS::NoValue`; and it refuses what it cannot evaluate.
#[test]
fn policy_extraction_evaluates_a_deploys_parameters() {
    let template = "\
Parameters:
  Other:
    Type: String
    Default: other
  Cookie:
    Type: String
    Description: >-
      Default: not this line, which is the description's text.
    Default: \"\"
    AllowedPattern: '^[A-Za-z0-9!#$%&*+.^_`|~-]{0,128}$'

Conditions:
  HasCookie: !Not [!Equals [!Ref Cookie, \"\"]]
  IsOther: !Equals [!Ref Other, other]

Resources:
  Policy:
    Type: AWS::CloudFront::OriginRequestPolicy
    Properties:
      OriginRequestPolicyConfig:
        HeadersConfig:
          HeaderBehavior: !If [IsOther, whitelist, none]
          Headers:
            - !Ref Other
        QueryStringsConfig:
          QueryStringBehavior: all
        CookiesConfig:
          CookieBehavior: !If [HasCookie, whitelist, none]
          Cookies: !If [HasCookie, [!Ref Cookie, !Ref AWS::NoValue], !Ref AWS::NoValue]
";
    let default = OriginRequestPolicy::parse(template, &[]).unwrap();
    assert_eq!(
        (default.cookie_behavior.as_str(), default.cookies.len()),
        ("none", 0)
    );
    assert_eq!(
        (default.header_behavior.as_str(), default.headers.as_slice()),
        ("whitelist", ["other".to_string()].as_slice())
    );
    let set = OriginRequestPolicy::parse(template, &[("Cookie", "tok"), ("Other", "x")]).unwrap();
    assert_eq!(set.cookie_behavior, "whitelist");
    assert_eq!(set.cookies, ["tok"]);
    assert_eq!(
        (set.header_behavior.as_str(), set.headers.as_slice()),
        ("none", ["x".to_string()].as_slice())
    );

    for (written, broken, why) in [
        (
            "!Ref Cookie, \"\"]]",
            "!Ref Missing, \"\"]]",
            "no parameter Missing",
        ),
        ("[IsOther,", "[IsMissing,", "no condition IsMissing"),
        (
            "!If [HasCookie, whitelist, none]",
            "!Sub ${Cookie}",
            "does not evaluate !Sub",
        ),
        (
            "whitelist, none]",
            "whitelist",
            "a list goes on with , or ends with ]",
        ),
    ] {
        let template = template.replacen(written, broken, 1);
        let refusal = OriginRequestPolicy::parse(&template, &[])
            .expect_err(&format!("{broken} must not evaluate"));
        assert!(refusal.contains(why), "{broken}: {refusal}");
    }
}

/// The policy's cookie behavior decides which of a viewer's cookies reach
/// the origin, in one `Cookie` header CloudFront writes: `whitelist` the
/// listed ones only, `allExcept` the others, `all` every one, `none` none
/// (and then no header at all).
#[test]
fn the_policy_forwards_the_cookies_its_behavior_names() {
    let viewer = Request::new("GET", "/", "")
        .header("Host", DISTRIBUTION_DOMAIN)
        .header("Cookie", "theme=dark; access_token=abc")
        .header("Cookie", "other=x; Access_Token=no");
    let policy = |behavior: &str| OriginRequestPolicy {
        header_behavior: "none".into(),
        headers: Vec::new(),
        query_string_behavior: "all".into(),
        cookie_behavior: behavior.into(),
        cookies: vec!["access_token".into(), "other".into()],
    };
    let cookies = |behavior: &str| -> Vec<(String, String)> {
        policy(behavior)
            .apply(&viewer, "origin.example")
            .headers
            .into_iter()
            .filter(|(name, _)| name == "cookie")
            .collect()
    };
    let one = |value: &str| vec![("cookie".to_string(), value.to_string())];
    assert_eq!(cookies("whitelist"), one("access_token=abc; other=x"));
    assert_eq!(cookies("allExcept"), one("theme=dark; Access_Token=no"));
    assert_eq!(
        cookies("all"),
        one("theme=dark; access_token=abc; other=x; Access_Token=no")
    );
    assert_eq!(cookies("none"), []);
}

/// The verifier accepts what `aws-sigv4` signs, for requests with encoded
/// paths and queries, repeated headers and untidy whitespace: the two were
/// written apart, from the same documentation.
#[test]
fn the_verifier_accepts_what_aws_sigv4_signs() {
    let now = SystemTime::now();
    let expected = function_url_auth(now);
    let body = b"{\"a\": [1, 2]}".to_vec();
    let requests = [
        Request::new("GET", "/", ""),
        Request::new(
            "GET",
            "/jobs/a%20b/%C3%BC",
            "b=2&a=1&a=0&empty=&q=x%2By%20z",
        ),
        Request::new("POST", "/", QUERY)
            .header("x-amz-content-sha256", &sha256_hex(&body))
            .header("content-type", "application/json")
            .header("x-multi", "one")
            .header("x-multi", "  two   words  ")
            .body(body.clone()),
    ];
    for request in requests {
        let request = request.header("host", "abcdefg.lambda-url.us-east-1.on.aws");
        let signed = cloudfront::oac_sign(&request, now);
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in &signed.headers {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(value).unwrap(),
            );
        }
        let method = axum::http::Method::from_bytes(signed.method.as_bytes()).unwrap();
        let received = verifier::Received {
            method: &method,
            path: &signed.uri,
            query: Some(&signed.query)
                .filter(|q| !q.is_empty())
                .map(String::as_str),
            headers: &headers,
            body: &signed.body,
        };
        assert_eq!(
            verifier::verify(&received, &expected),
            Ok(()),
            "{} {}",
            signed.method,
            signed.target()
        );
    }
}

/// A JSON POST crosses the whole chain: the body arrives intact, the
/// backend sees the client's credential and never OAC's, the public host
/// comes back as `X-Request-Host`, and each event arrives while the backend
/// still waits to produce the next.
#[tokio::test]
async fn a_post_crosses_the_chain_and_streams_event_by_event() {
    let chain = Chain::start().await;
    let body = json!({
        "prompt": "Grüße, \"world\"\n\ttab \\ slash",
        "numbers": [1, 2.5, -3e-7, null],
        "nested": {"ok": true, "empty": {}},
    });
    let body_bytes = serde_json::to_vec_pretty(&body).unwrap();
    let request = viewer("POST", "text/event-stream")
        .header("Content-Type", "application/json")
        .body(body_bytes.clone());

    let origin = chain
        .through_the_edge(&request)
        .await
        .expect("the edge passes a POST on");
    assert_eq!(origin.get("x-original-host"), Some(DISTRIBUTION_DOMAIN));
    assert_eq!(origin.get(AUTHORIZATION_SOURCE), Some(CLIENT_TOKEN));
    assert_eq!(origin.get("authorization"), None);
    assert_eq!(
        origin.get("user-agent"),
        None,
        "not forwarded by the policy"
    );
    assert_eq!(origin.get("host"), Some(chain.function_url.host().as_str()));
    assert_eq!(
        origin.get("x-amz-content-sha256"),
        Some(sha256_hex(&body_bytes).as_str()),
        "the edge hasher hashes the exact bytes"
    );

    let signed = cloudfront::oac_sign(&origin, SystemTime::now());
    let sigv4 = signed.get("authorization").expect("OAC signs");
    assert!(sigv4.starts_with("AWS4-HMAC-SHA256 Credential="), "{sigv4}");
    assert!(sigv4.contains("/us-east-1/lambda/aws4_request"), "{sigv4}");
    assert!(sigv4.contains("x-amz-content-sha256"), "{sigv4}");

    let response = chain.send(&signed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-host"], DISTRIBUTION_DOMAIN);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-aggregateinfo-result"], "OK");
    let mut events = sse_events(response);

    let first = next(&mut events, "event 1").await;
    assert_eq!((first.id.as_str(), first.event.as_str()), ("1", "body"));
    assert_eq!(
        json_of(&first.data),
        json!({ "body": body }),
        "the body arrives intact"
    );
    let second = next(&mut events, "event 2").await;
    assert_eq!(second.id, "2");
    assert_eq!(
        json_of(&second.data),
        json!({ "authorization": [CLIENT_TOKEN], "query": decoded_query() }),
        "the backend sees the client's credential, never OAC's signature"
    );
    // Events 1 and 2 came while event 3 does not exist yet: nothing on the
    // way (stand-in or gateway) holds a stream back.
    chain.backend.gate.notify_one();
    let third = next(&mut events, "event 3").await;
    assert_eq!(
        (third.id.as_str(), third.event.as_str()),
        ("3", "after-gate")
    );
    assert!(
        tokio::time::timeout(STUCK, events.next())
            .await
            .expect("the stream ends")
            .is_none(),
        "nothing after the backend's end"
    );
    assert_eq!(chain.opened(), 1);
    assert_eq!(chain.function_url.invoked(), 1);
}

/// A body changed after CloudFront signed it is refused by the Function
/// URL (its hash is no longer the signed `x-amz-content-sha256`), and the
/// gateway is never invoked.
#[tokio::test]
async fn a_body_changed_after_signing_is_refused() {
    let chain = Chain::start().await;
    let request = viewer("POST", "application/x-ndjson")
        .header("Content-Type", "application/json")
        .body(br#"{"amount": 100}"#.to_vec());
    let origin = chain
        .through_the_edge(&request)
        .await
        .expect("the edge passes it on");
    let mut signed = cloudfront::oac_sign(&origin, SystemTime::now());
    // Same length, so that only the payload hash can tell.
    signed.body = br#"{"amount": 900}"#.to_vec();

    let response = chain.send(&signed).await;
    assert_eq!(response.status(), 403);
    let refusal: Value = response.json().await.unwrap();
    let message = refusal["Message"]
        .as_str()
        .expect("Lambda's {\"Message\"} body");
    assert!(
        message.contains("is not the SHA-256 of the 15 bytes received"),
        "{message}"
    );
    assert_eq!(chain.function_url.received(), 1);
    assert_eq!(chain.function_url.invoked(), 0);
    assert_eq!(chain.opened(), 0, "the gateway never opened the backend");
}

/// Without the edge hasher, a POST reaches the Function URL without
/// `x-amz-content-sha256`, which Lambda refuses (it takes no unsigned
/// payloads): the reason the edge hasher exists.
#[tokio::test]
async fn a_post_that_skipped_the_edge_hasher_is_refused() {
    let chain = Chain::start().await;
    let request = viewer("POST", "text/event-stream")
        .header("Content-Type", "application/json")
        .body(br#"{"text": "hi"}"#.to_vec());
    let origin = chain.viewer_to_origin(&request).await;
    assert_eq!(origin.get("x-amz-content-sha256"), None);
    let signed = cloudfront::oac_sign(&origin, SystemTime::now());

    let response = chain.send(&signed).await;
    assert_eq!(response.status(), 403);
    let refusal: Value = response.json().await.unwrap();
    assert_eq!(
        refusal["Message"],
        "Payload hash refused: a POST must carry x-amz-content-sha256 (unsigned payloads are not supported)"
    );
    assert_eq!(chain.function_url.invoked(), 0);
    assert_eq!(chain.opened(), 0);
}

/// A GET has no body: CloudFront exposes none to the edge hasher, which
/// leaves the request alone (no `x-amz-content-sha256`), and OAC's
/// signature covers the SHA-256 of the empty payload, which is what the
/// Function URL computes for the empty body it receives. CloudFront's
/// documentation asks for the header on PUT and POST only; what it signs
/// for a header-less GET is not written down, and the empty payload's hash
/// is the only value a SigV4 verifier can recompute from an empty body.
#[tokio::test]
async fn a_get_crosses_the_chain_signed_for_the_empty_payload() {
    let chain = Chain::start().await;
    let request = viewer("GET", "application/x-ndjson");
    let origin = chain
        .through_the_edge(&request)
        .await
        .expect("the edge passes a GET on");
    assert_eq!(origin.get("x-amz-content-sha256"), None, "nothing to hash");
    assert!(origin.body.is_empty());

    let signed = cloudfront::oac_sign(&origin, SystemTime::now());
    let headers: axum::http::HeaderMap = signed
        .headers
        .iter()
        .map(|(n, v)| {
            (
                axum::http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect();
    let auth = verifier::parse_authorization(&headers).unwrap();
    assert!(auth.signed_headers.contains(&"host".to_string()));
    assert!(
        !auth
            .signed_headers
            .contains(&"x-amz-content-sha256".to_string())
    );

    let response = chain.send(&signed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-host"], DISTRIBUTION_DOMAIN);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut lines = ndjson_lines(response);
    assert_eq!(
        json_of(&next(&mut lines, "line 1").await),
        json!({ "body": null })
    );
    assert_eq!(
        json_of(&next(&mut lines, "line 2").await),
        json!({ "authorization": [CLIENT_TOKEN], "query": decoded_query() })
    );
    chain.backend.gate.notify_one();
    assert_eq!(
        json_of(&next(&mut lines, "line 3").await),
        json!({ "gate": "opened" })
    );
    assert_eq!(chain.function_url.invoked(), 1);
}

/// A body larger than the edge sees is marked `inputTruncated`; the edge
/// hasher answers 413 itself, since hashing part of a body would sign the
/// wrong payload, and nothing reaches the Function URL.
#[tokio::test]
async fn a_body_the_edge_sees_truncated_is_refused_at_the_edge() {
    let chain = Chain::start().await;
    let big = json!({ "blob": "x".repeat(cloudfront::EDGE_BODY_LIMIT) });
    let request = viewer("POST", "text/event-stream")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&big).unwrap());
    assert!(request.body.len() > cloudfront::EDGE_BODY_LIMIT);

    let answer = chain
        .through_the_edge(&request)
        .await
        .expect_err("the edge answers itself");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(!answer.body.is_empty(), "a 413 with a body that says why");
    assert_eq!(chain.function_url.received(), 0);
    assert_eq!(chain.opened(), 0);
}

/// The edge hasher hashes the raw bytes of the body, not a text decoding of
/// them (a body that is not UTF-8 keeps its hash).
#[tokio::test]
async fn the_edge_hasher_hashes_raw_bytes() {
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let request = Request::new("PUT", "/", "")
        .header("host", "abcdefg.lambda-url.us-east-1.on.aws")
        .body(body.clone());
    let hashed = cloudfront::edge_hasher(&request, "abcdefg.lambda-url.us-east-1.on.aws")
        .await
        .expect("a PUT is passed on");
    assert_eq!(
        hashed.get("x-amz-content-sha256"),
        Some(sha256_hex(&body).as_str())
    );
}

/// A browser's `EventSource` crosses the chain with its credential in a
/// cookie: with `CredentialCookie` set, CloudFront forwards that cookie and
/// no other of the viewer's, OAC signs it, the Function URL accepts the
/// signature, and the gateway, reading the cookie, streams. The backend
/// sees no credential header at all (neither OAC's nor the cookie).
#[tokio::test]
async fn an_event_source_with_the_credential_cookie_gets_its_stream() {
    let chain = Chain::with_cookie_auth(&[("CredentialCookie", CREDENTIAL_COOKIE)]).await;
    let viewer = event_source(&format!(
        "theme=dark; {CREDENTIAL_COOKIE}={COOKIE_TOKEN}; other=x"
    ));
    let origin = chain
        .through_the_edge(&viewer)
        .await
        .expect("the edge passes a GET on");
    let cookies: Vec<&(String, String)> = origin
        .headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .collect();
    let only_credential = format!("{CREDENTIAL_COOKIE}={COOKIE_TOKEN}");
    assert_eq!(
        cookies,
        [&("cookie".to_string(), only_credential)],
        "the credential cookie, and none of the viewer's others"
    );
    assert_eq!(origin.get("authorization"), None);
    assert_eq!(origin.get(AUTHORIZATION_SOURCE), None);

    // Signed as every header sent is, so the Function URL's verifier
    // checks the cookie too.
    let signed = cloudfront::oac_sign(&origin, SystemTime::now());
    let sigv4 = signed.get("authorization").expect("OAC signs");
    let signed_headers = sigv4
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("SignedHeaders");
    assert!(signed_headers.split(';').any(|h| h == "cookie"), "{sigv4}");
    let response = chain.send(&signed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-request-host"], DISTRIBUTION_DOMAIN);
    let mut events = sse_events(response);
    let first = next(&mut events, "event 1").await;
    assert_eq!(json_of(&first.data), json!({ "body": null }));
    let second = next(&mut events, "event 2").await;
    assert_eq!(
        json_of(&second.data),
        json!({ "authorization": [], "query": decoded_query() }),
        "no credential reaches the backend"
    );
    chain.backend.gate.notify_one();
    let third = next(&mut events, "event 3").await;
    assert_eq!(third.id, "3");
    assert_eq!(chain.function_url.invoked(), 1);
    assert_eq!(chain.opened(), 1);
}

/// The same browser without the credential cookie crosses the chain (the
/// signature is CloudFront's, not the viewer's) and gets the gateway's 401,
/// with its JSON body and challenge; the backend is never opened.
#[tokio::test]
async fn an_event_source_without_the_credential_cookie_gets_401() {
    let chain = Chain::with_cookie_auth(&[("CredentialCookie", CREDENTIAL_COOKIE)]).await;
    let origin = chain
        .through_the_edge(&event_source("theme=dark; other=x"))
        .await
        .expect("the edge passes a GET on");
    assert_eq!(origin.get("cookie"), None, "no cookie the policy forwards");

    let response = chain
        .send(&cloudfront::oac_sign(&origin, SystemTime::now()))
        .await;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
        "{:?}",
        response.headers()
    );
    let body: Value = response.json().await.expect("the gateway's JSON error");
    assert_eq!(body["status"], 401, "{body}");
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert_eq!(chain.function_url.invoked(), 1, "the signature was good");
    assert_eq!(chain.opened(), 0);
}

/// Deployed without `CredentialCookie` (the default), the policy forwards
/// no cookie: the browser's valid credential cookie never reaches the
/// gateway, which answers 401. The reason the parameter exists.
#[tokio::test]
async fn without_the_credential_cookie_parameter_the_cookie_never_crosses() {
    let chain = Chain::with_cookie_auth(&[]).await;
    let viewer = event_source(&format!("{CREDENTIAL_COOKIE}={COOKIE_TOKEN}"));
    let origin = chain
        .through_the_edge(&viewer)
        .await
        .expect("the edge passes a GET on");
    assert_eq!(origin.get("cookie"), None);

    let response = chain
        .send(&cloudfront::oac_sign(&origin, SystemTime::now()))
        .await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("the gateway's JSON error");
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert_eq!(chain.opened(), 0);
}

/// CloudFront and Lambda each cut a stream at a bound of their own: the
/// origin read timeout after a silence, the response completion timeout
/// after a whole response, the function timeout. The template's parameters
/// and the gateway's defaults keep them in order: heartbeats well inside the
/// shortest origin read timeout the template allows, and every stream ended,
/// with its last id, before the earliest cut (its lifetime the smallest of
/// function timeout and completion timeout, each less 10 s, and the route's
/// `max_lifetime`), with the timeouts given to the gateway as the template
/// gives them.
#[tokio::test(start_paused = true)]
async fn heartbeats_and_lifetimes_stay_inside_cloudfronts_and_lambdas_timeouts() {
    use gateway::config::{RouteConfig, Source};
    use tokio::time::Instant;

    let number = cloudfront::parameter_number;
    let read_min = number("OriginReadTimeout", "MinValue");
    assert_eq!(
        number("OriginReadTimeout", "MaxValue"),
        180,
        "CloudFront allows up to 180 s without a quota increase"
    );
    assert_eq!(number("ResponseCompletionTimeout", "Default"), 0, "none");
    let (function_min, function_max) = (
        number("FunctionTimeout", "MinValue"),
        number("FunctionTimeout", "MaxValue"),
    );
    let route = RouteConfig::new("/");
    let silence = route.heartbeat;
    assert!(
        silence + Duration::from_secs(5) <= Duration::from_secs(read_min),
        "a heartbeat every {silence:?} leaves too little room in a {read_min} s origin read timeout"
    );
    let template = cloudfront::template_text();
    for passed in [
        "GATEWAY__LAMBDA__FUNCTION_TIMEOUT: !Sub \"${FunctionTimeout}s\"",
        "GATEWAY__CLOUDFRONT__RESPONSE_COMPLETION_TIMEOUT: !If",
        "- !Sub \"${ResponseCompletionTimeout}s\"",
        "ResponseCompletionTimeout: !If",
    ] {
        assert!(
            template.contains(passed),
            "the template must carry {passed}"
        );
    }

    // (function timeout, completion timeout; 0 = none) as a deploy gives them.
    for (function, completion) in [
        (function_max, 0),
        (function_max, 600),
        (300, 600),
        (function_min, 0),
        (function_max, read_min.max(30)),
    ] {
        let mut env = std::collections::HashMap::from([(
            "GATEWAY__LAMBDA__FUNCTION_TIMEOUT".to_string(),
            format!("{function}s"),
        )]);
        if completion > 0 {
            env.insert(
                "GATEWAY__CLOUDFRONT__RESPONSE_COMPLETION_TIMEOUT".into(),
                format!("{completion}s"),
            );
        }
        let text = "[routes.ticks]\npath = \"/\"\n[routes.ticks.backends.clock]\ntype = \"ticker\"\ninterval = \"100s\"\n";
        let config = gateway::config::load(
            Source::Text {
                origin: "chain",
                text,
            },
            Some(env),
        )
        .expect("the config with the template's variables");
        let server = TestServer::from_config(&config).await;
        let started = Instant::now();
        let response = gateway_tests::client()
            .get(server.url("/?format=sse"))
            .send()
            .await
            .expect("a response");
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let (mut last, mut longest, mut text) = (started, Duration::ZERO, String::new());
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.expect("a chunk")).expect("UTF-8"));
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
        let case = format!("function timeout {function} s, completion timeout {completion} s");
        assert!(
            longest <= silence + Duration::from_secs(1),
            "{case}: {longest:?} of silence"
        );
        let close = text
            .rsplit("\n\n")
            .find(|block| block.contains("gateway.close"))
            .unwrap_or_else(|| panic!("{case}: no gateway.close in {text}"));
        assert!(close.contains("\"reason\":\"lifetime\""), "{case}: {close}");
        assert!(close.contains("\nid: "), "{case}: resumable: {close}");
        let ended = started.elapsed();
        let mut expected = Duration::from_secs(function - 10).min(route.max_lifetime);
        if completion > 0 {
            expected = expected.min(Duration::from_secs(completion - 10));
            assert!(ended < Duration::from_secs(completion), "{case}: {ended:?}");
        }
        assert!(ended < Duration::from_secs(function), "{case}: {ended:?}");
        assert!(
            ended >= expected && ended < expected + Duration::from_secs(1),
            "{case}: ended after {ended:?}, not {expected:?}"
        );
    }
}
