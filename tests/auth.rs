//! Auth per route, end to end: real gateways on loopback ports, a real
//! client, tokens signed here with the test-only keys of
//! `tests/fixtures/auth/` (and a local JWKS server for `jwks_url`).
//!
//! The matrix: each credential place (Authorization, custom header, cookie,
//! query, and through `server.authorization_source`), missing (401),
//! expired (401 with `error="invalid_token"`), wrong audience, issuer,
//! secret or key, an algorithm-confusion attempt and `alg: none` (403), a
//! claim that does not allow the stream key (403) and one that does (200 and
//! a stream); HS256, RS256 and ES256; JWKS from a file and from a URL with
//! key rotation and an unreachable URL (503 until the keys arrive); static
//! bearer tokens; HEAD and CORS preflights; a token expiring mid-stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backends::Backend;
use backends::ticker::{Ticker, TickerConfig};
use futures::StreamExt;
use gateway::config::{
    AuthConfig, AuthType, CorsConfig, CredentialPlace, RestrictConfig, RouteConfig, ServerConfig,
    Source,
};
use gateway_tests::{TestServer, client, sse_events};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const ISSUER: &str = "https://issuer.test/";
const AUDIENCE: &str = "rooms";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/auth")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rsa_a() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("test-only-rsa-a.pem")).expect("RSA key a")
}
fn rsa_b() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("test-only-rsa-b.pem")).expect("RSA key b")
}
fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture("test-only-ec-p256.pem")).expect("EC key")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims that every check here accepts, with `extra` merged in.
fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "sub": "user-1",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": now() + 600,
        "rooms": ["lobby", "team-*"],
    });
    if let (Some(map), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        map.extend(extra);
    }
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("signed")
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

/// A JWK for `key` under `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("JWK");
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

fn jwks(keys: Vec<Jwk>) -> Value {
    serde_json::to_value(JwkSet { keys }).expect("JWKS")
}

fn ticker() -> Arc<dyn Backend> {
    Arc::new(Ticker::new(TickerConfig {
        interval: Duration::from_millis(10),
        count: Some(3),
        ..TickerConfig::default()
    }))
}

fn jwt_auth() -> AuthConfig {
    AuthConfig {
        kind: AuthType::Jwt,
        secret: Some(SECRET.into()),
        audience: vec![AUDIENCE.into()],
        issuer: vec![ISSUER.into()],
        restrict: Some(RestrictConfig {
            param: "room".into(),
            claim: "rooms".into(),
        }),
        ..AuthConfig::default()
    }
}

async fn server_with(auth: AuthConfig, server: ServerConfig) -> TestServer {
    TestServer::route(
        "/rooms/{room}",
        vec![("clock", ticker())],
        |route: &mut RouteConfig| route.auth = auth,
        server,
    )
    .await
}

async fn server(auth: AuthConfig) -> TestServer {
    server_with(auth, ServerConfig::default()).await
}

/// Sends a GET with `headers`, within a bounded time.
async fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("an answer within 10s")
        .expect("response")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The status, the `WWW-Authenticate` header, and the JSON error body.
async fn refusal(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ASCII").to_string());
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["message"].is_string(), "{body}");
    (status, challenge, body)
}

/// Asserts a 200 stream with the ticker's three events.
async fn assert_streams(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 200, "{what}");
    let text = tokio::time::timeout(Duration::from_secs(10), response.text())
        .await
        .expect("the stream ends")
        .expect("body");
    assert_eq!(text.lines().count(), 3, "{what}: {text}");
}

#[tokio::test]
async fn a_jwt_is_read_from_each_configured_place() {
    let mut auth = jwt_auth();
    auth.from = vec![
        CredentialPlace::Authorization,
        CredentialPlace::Header,
        CredentialPlace::Cookie,
        CredentialPlace::Query,
    ];
    let server = server(auth).await;
    let token = hs(&claims(json!({})));
    let auth_header = bearer(&token);
    let cookie = format!("theme=dark; access_token={token}");
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: [Case<'_>; 5] = [
        (
            "Authorization",
            "/rooms/lobby".into(),
            vec![("authorization", &auth_header)],
        ),
        (
            "custom header, with Bearer",
            "/rooms/lobby".into(),
            vec![("x-client-authorization", &auth_header)],
        ),
        (
            "custom header, bare",
            "/rooms/lobby".into(),
            vec![("x-client-authorization", &token)],
        ),
        ("cookie", "/rooms/lobby".into(), vec![("cookie", &cookie)]),
        (
            "query",
            format!("/rooms/lobby?access_token={token}"),
            vec![],
        ),
    ];
    for (what, path, headers) in &cases {
        assert_streams(get(&server, path, headers).await, what).await;
    }

    let (status, challenge, body) = refusal(get(&server, "/rooms/lobby", &[]).await).await;
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"gateway\""));
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn cookies_and_query_parameters_are_opt_in() {
    // The default: Authorization only.
    let server = server(jwt_auth()).await;
    let token = hs(&claims(json!({})));
    let cookie = format!("access_token={token}");
    for (path, headers) in [
        (
            "/rooms/lobby".to_string(),
            vec![("cookie", cookie.as_str())],
        ),
        (format!("/rooms/lobby?access_token={token}"), vec![]),
        (
            "/rooms/lobby".to_string(),
            vec![("x-client-authorization", token.as_str())],
        ),
    ] {
        let (status, _, _) = refusal(get(&server, &path, &headers).await).await;
        assert_eq!(status, 401, "{path} {headers:?}");
    }
    assert_streams(
        get(
            &server,
            "/rooms/lobby",
            &[("authorization", &bearer(&token))],
        )
        .await,
        "Authorization",
    )
    .await;
}

#[tokio::test]
async fn the_credential_moved_by_server_authorization_source_is_read() {
    let server_config = ServerConfig {
        authorization_source: Some("X-Client-Authorization".into()),
        ..ServerConfig::default()
    };
    let token = hs(&claims(json!({})));
    let signature = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=00";
    // Read as Authorization, or as the header itself: both see the client's.
    let as_header = AuthConfig {
        from: vec![CredentialPlace::Header],
        header_name: "X-Client-Authorization".into(),
        ..jwt_auth()
    };
    for auth in [jwt_auth(), as_header] {
        let from = format!("{:?}", auth.from);
        let server = server_with(auth, server_config.clone()).await;
        let response = get(
            &server,
            "/rooms/lobby",
            &[
                ("authorization", signature),
                ("x-client-authorization", &bearer(&token)),
            ],
        )
        .await;
        assert_streams(response, &from).await;
        // OAC's signature alone is no credential, and a client's own
        // Authorization is dropped like any other.
        for headers in [
            vec![("authorization", signature)],
            vec![("authorization", &*bearer(&token))],
        ] {
            let (status, _, _) = refusal(get(&server, "/rooms/lobby", &headers).await).await;
            assert_eq!(status, 401, "{from}");
        }
    }
}

#[tokio::test]
async fn wrong_expired_and_restricted_tokens_are_refused() {
    let server = server(jwt_auth()).await;
    let expired = hs(&claims(json!({"exp": now() - 120})));
    let (status, challenge, body) = refusal(
        get(
            &server,
            "/rooms/lobby",
            &[("authorization", &bearer(&expired))],
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "token_expired");
    assert_eq!(
        challenge.as_deref(),
        Some(
            "Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"the token expired\""
        )
    );

    let other_secret = EncodingKey::from_secret(b"another-test-only-secret-0123456789abcdef");
    let unsigned = {
        // `alg: none`: a header and claims with an empty signature.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims(json!({})).to_string())
        )
    };
    let forbidden: Vec<(&str, String)> = vec![
        ("wrong audience", hs(&claims(json!({"aud": "billing"})))),
        ("no audience", {
            let mut c = claims(json!({}));
            c.as_object_mut().expect("object").remove("aud");
            hs(&c)
        }),
        (
            "wrong issuer",
            hs(&claims(json!({"iss": "https://evil.test/"}))),
        ),
        (
            "wrong secret",
            sign(Algorithm::HS256, &other_secret, None, &claims(json!({}))),
        ),
        (
            "HS512 not accepted",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                None,
                &claims(json!({})),
            ),
        ),
        ("alg none", unsigned),
        ("no exp", {
            let mut c = claims(json!({}));
            c.as_object_mut().expect("object").remove("exp");
            hs(&c)
        }),
        ("not yet valid", hs(&claims(json!({"nbf": now() + 600})))),
        ("malformed", "not.a.token".into()),
        ("garbage", "x".repeat(40)),
        (
            "expired and forged",
            sign(
                Algorithm::HS256,
                &other_secret,
                None,
                &claims(json!({"exp": now() - 120})),
            ),
        ),
    ];
    for (what, token) in forbidden {
        let (status, _, body) = refusal(
            get(
                &server,
                "/rooms/lobby",
                &[("authorization", &bearer(&token))],
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{what}: {body}"
        );
    }

    // Restricted keys: "lobby" and "team-*" only.
    let token = hs(&claims(json!({})));
    let auth = bearer(&token);
    for room in ["other", "lobby2", "team"] {
        let (status, challenge, body) = refusal(
            get(
                &server,
                &format!("/rooms/{room}"),
                &[("authorization", &auth)],
            )
            .await,
        )
        .await;
        assert_eq!(status, 403, "{room}: {body}");
        assert!(
            challenge
                .as_deref()
                .is_some_and(|c| c.contains("error=\"insufficient_scope\"")),
            "{challenge:?}"
        );
    }
    for room in ["lobby", "team-7", "team-a%2Fb"] {
        assert_streams(
            get(
                &server,
                &format!("/rooms/{room}"),
                &[("authorization", &auth)],
            )
            .await,
            room,
        )
        .await;
    }
    // A single string claim works too; a claim of another type allows nothing.
    let one = hs(&claims(json!({"rooms": "lobby"})));
    assert_streams(
        get(&server, "/rooms/lobby", &[("authorization", &bearer(&one))]).await,
        "string claim",
    )
    .await;
    let number = hs(&claims(json!({"rooms": 7})));
    let (status, _, _) = refusal(
        get(
            &server,
            "/rooms/lobby",
            &[("authorization", &bearer(&number))],
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn head_needs_the_credential_and_cors_preflights_do_not() {
    let server = TestServer::route(
        "/rooms/{room}",
        vec![("clock", ticker())],
        |route: &mut RouteConfig| {
            route.auth = jwt_auth();
            route.cors = Some(CorsConfig {
                origins: vec!["https://app.test".into()],
                credentials: true,
                allow_headers: vec!["authorization".into()],
                expose_headers: vec![],
                max_age: Duration::from_secs(60),
            });
        },
        ServerConfig::default(),
    )
    .await;
    let head = |auth: Option<String>| {
        let mut request = client().head(server.url("/rooms/lobby"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let none = head(None).await.expect("HEAD");
    assert_eq!(none.status(), 401);
    let token = hs(&claims(json!({})));
    let ok = head(Some(bearer(&token))).await.expect("HEAD");
    assert_eq!(ok.status(), 200);
    // A protected stream is private: no shared cache keeps it.
    assert_eq!(ok.headers()["cache-control"], "private, no-store");
    // A browser gets the viewer page, which holds no event and asks for
    // the token its own stream request then carries (the stream is 401
    // without it, above).
    let page = get(
        &server,
        "/rooms/lobby",
        &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
    )
    .await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("the page");
    assert!(html.contains("data-auth=\"jwt\""), "{html}");
    assert!(html.contains("id=\"token\""), "a token field");

    let preflight = client()
        .request(reqwest::Method::OPTIONS, server.url("/rooms/lobby"))
        .header("origin", "https://app.test")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.test")
    );
    // A refusal still carries the CORS headers, so the page can read it.
    let refused = get(&server, "/rooms/lobby", &[("origin", "https://app.test")]).await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

/// A JWKS file with the RSA key `a` and the EC key `ec`.
fn jwks_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("jwks.json");
    let set = jwks(vec![
        jwk(&rsa_a(), Algorithm::RS256, "a"),
        jwk(&ec(), Algorithm::ES256, "ec"),
    ]);
    std::fs::write(&path, set.to_string()).expect("write JWKS");
    path
}

#[tokio::test]
async fn rs256_and_es256_verify_with_a_jwks_file_and_confusion_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = AuthConfig {
        secret: None,
        jwks_file: Some(jwks_file(&dir)),
        algorithms: vec!["RS256".into(), "ES256".into()],
        ..jwt_auth()
    };
    let server = server(auth).await;
    let ok = claims(json!({}));
    for (what, token) in [
        ("RS256", sign(Algorithm::RS256, &rsa_a(), Some("a"), &ok)),
        ("ES256", sign(Algorithm::ES256, &ec(), Some("ec"), &ok)),
        (
            "RS256 without kid",
            sign(Algorithm::RS256, &rsa_a(), None, &ok),
        ),
    ] {
        assert_streams(
            get(
                &server,
                "/rooms/lobby",
                &[("authorization", &bearer(&token))],
            )
            .await,
            what,
        )
        .await;
    }
    let public_pem = fixture("test-only-rsa-a.pub.pem");
    for (what, token) in [
        (
            "wrong key under a's kid",
            sign(Algorithm::RS256, &rsa_b(), Some("a"), &ok),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, &rsa_b(), Some("b"), &ok),
        ),
        (
            "RS256 naming the EC key",
            sign(Algorithm::RS256, &rsa_a(), Some("ec"), &ok),
        ),
        (
            "HS256 signed with the RSA public key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&public_pem),
                Some("a"),
                &ok,
            ),
        ),
        (
            "RS512 not accepted",
            sign(Algorithm::RS512, &rsa_a(), Some("a"), &ok),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::ES256,
                &ec(),
                Some("ec"),
                &claims(json!({"aud": "billing"})),
            ),
        ),
    ] {
        let (status, _, body) = refusal(
            get(
                &server,
                "/rooms/lobby",
                &[("authorization", &bearer(&token))],
            )
            .await,
        )
        .await;
        assert_eq!(status, 403, "{what}: {body}");
    }
    let expired = sign(
        Algorithm::RS256,
        &rsa_a(),
        Some("a"),
        &claims(json!({"exp": now() - 60})),
    );
    let (status, _, _) = refusal(
        get(
            &server,
            "/rooms/lobby",
            &[("authorization", &bearer(&expired))],
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
}

/// A JWKS server on a loopback port: serves `keys` (or 503 while `None`)
/// and counts the fetches.
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Option<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Option<Value>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&keys), Arc::clone(&fetches));
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let keys = served.lock().expect("lock").clone();
                    match keys {
                        Some(keys) => Ok(axum::Json(keys)),
                        None => Err(axum::http::StatusCode::SERVICE_UNAVAILABLE),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            keys,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn serve(&self, keys: Value) {
        *self.keys.lock().expect("lock") = Some(keys);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn url_auth(url: String) -> AuthConfig {
    AuthConfig {
        secret: None,
        jwks_url: Some(url),
        algorithms: vec!["RS256".into(), "ES256".into()],
        jwks_refetch_interval: Duration::from_secs(3600),
        ..jwt_auth()
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_an_unknown_kid_refetches_it_within_the_interval() {
    let jwks_server =
        JwksServer::start(Some(jwks(vec![jwk(&rsa_a(), Algorithm::RS256, "a")]))).await;
    let server = server(url_auth(jwks_server.url())).await;
    let ok = claims(json!({}));
    let server = &server;
    let with = |token: String| async move {
        get(
            server,
            "/rooms/lobby",
            &[("authorization", &bearer(&token))],
        )
        .await
    };
    assert_streams(
        with(sign(Algorithm::RS256, &rsa_a(), Some("a"), &ok)).await,
        "key a",
    )
    .await;
    let fetched = jwks_server.fetches();
    assert_eq!(fetched, 1, "fetched once, at start or for the first token");

    // Rotation: b appears; a token signed with it makes the gateway refetch.
    jwks_server.serve(jwks(vec![
        jwk(&rsa_a(), Algorithm::RS256, "a"),
        jwk(&rsa_b(), Algorithm::RS256, "b"),
    ]));
    assert_streams(
        with(sign(Algorithm::RS256, &rsa_b(), Some("b"), &ok)).await,
        "rotated-in key b",
    )
    .await;
    assert_eq!(jwks_server.fetches(), 2);
    // Known keys need no fetch.
    assert_streams(
        with(sign(Algorithm::RS256, &rsa_a(), Some("a"), &ok)).await,
        "key a again",
    )
    .await;
    assert_eq!(jwks_server.fetches(), 2);

    // Another rotation within jwks_refetch_interval (1h): no fetch, 403.
    jwks_server.serve(jwks(vec![jwk(&ec(), Algorithm::ES256, "c")]));
    for _ in 0..3 {
        let (status, _, body) =
            refusal(with(sign(Algorithm::ES256, &ec(), Some("c"), &ok)).await).await;
        assert_eq!(status, 403, "{body}");
    }
    assert_eq!(
        jwks_server.fetches(),
        2,
        "unknown kids refetch at most once per interval"
    );
}

#[tokio::test]
async fn keys_older_than_the_ttl_are_fetched_again_in_the_background() {
    let jwks_server =
        JwksServer::start(Some(jwks(vec![jwk(&rsa_a(), Algorithm::RS256, "a")]))).await;
    let auth = AuthConfig {
        jwks_ttl: Duration::from_millis(100),
        ..url_auth(jwks_server.url())
    };
    let server = server(auth).await;
    let token = sign(Algorithm::RS256, &rsa_a(), Some("a"), &claims(json!({})));
    let auth = bearer(&token);
    // Only known keys are asked for: every fetch after the first is the TTL's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while jwks_server.fetches() < 3 {
        assert_streams(
            get(&server, "/rooms/lobby", &[("authorization", &auth)]).await,
            "known key",
        )
        .await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} fetches",
            jwks_server.fetches()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn while_the_jwks_url_fails_requests_get_503_until_the_keys_arrive() {
    let jwks_server = JwksServer::start(None).await;
    let server = server(url_auth(jwks_server.url())).await;
    let token = sign(Algorithm::RS256, &rsa_a(), Some("a"), &claims(json!({})));
    let auth = bearer(&token);
    let response = get(&server, "/rooms/lobby", &[("authorization", &auth)]).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let (status, _, body) = refusal(response).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    // No credential is still 401: the keys are not needed to say so.
    let (status, _, _) = refusal(get(&server, "/rooms/lobby", &[]).await).await;
    assert_eq!(status, 401);

    jwks_server.serve(jwks(vec![jwk(&rsa_a(), Algorithm::RS256, "a")]));
    // Retried at most once a second while there are no keys: a bounded wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(&server, "/rooms/lobby", &[("authorization", &auth)]).await;
        if response.status() == 200 {
            assert_streams(response, "after the keys arrived").await;
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(tokio::time::Instant::now() < deadline, "keys never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fetches = jwks_server.fetches();
    assert!((2..=12).contains(&fetches), "{fetches} fetches");
}

#[tokio::test]
async fn static_bearer_tokens() {
    let token = "route-token-0123456789";
    let auth = AuthConfig {
        kind: AuthType::Bearer,
        tokens: vec!["other-token-0123456789".into(), token.into()],
        from: vec![CredentialPlace::Authorization, CredentialPlace::Query],
        ..AuthConfig::default()
    };
    let server = server(auth).await;
    assert_streams(
        get(&server, "/rooms/any", &[("authorization", &bearer(token))]).await,
        "right token",
    )
    .await;
    assert_streams(
        get(&server, &format!("/rooms/any?access_token={token}"), &[]).await,
        "right token in the query",
    )
    .await;
    let (status, _, body) = refusal(
        get(
            &server,
            "/rooms/any",
            &[("authorization", "Bearer route-token-012345678")],
        )
        .await,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, challenge, _) = refusal(get(&server, "/rooms/any", &[]).await).await;
    assert_eq!(status, 401);
    assert!(challenge.is_some());
    let (status, _, _) = refusal(
        get(
            &server,
            "/rooms/any",
            &[("authorization", &format!("Basic {token}"))],
        )
        .await,
    )
    .await;
    assert_eq!(status, 401, "only Bearer");
}

#[tokio::test]
async fn a_token_expiring_mid_stream_ends_it_with_a_final_event_and_resume_works() {
    let auth = AuthConfig {
        leeway: Duration::ZERO,
        ..jwt_auth()
    };
    let endless: Arc<dyn Backend> = Arc::new(Ticker::new(TickerConfig {
        interval: Duration::from_millis(100),
        ..TickerConfig::default()
    }));
    let server = TestServer::route(
        "/rooms/{room}",
        vec![("clock", endless)],
        |route: &mut RouteConfig| route.auth = auth,
        ServerConfig::default(),
    )
    .await;
    let token = hs(&claims(json!({"exp": now() + 2})));
    let response = get(
        &server,
        "/rooms/lobby?format=sse",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(response.status(), 200);
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(10),
        sse_events(response).collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends by itself within 10s");
    let (close, ticks) = events.split_last().expect("events");
    assert!(!ticks.is_empty());
    let last_tick = ticks.last().expect("a tick").id.clone();
    assert_eq!(close.event, "gateway.close");
    let data: Value = serde_json::from_str(&close.data).expect("JSON");
    assert_eq!(data["reason"], "credential_expired", "{data}");
    assert_eq!(data["last_event_id"], last_tick.as_str());
    assert_eq!(close.id, last_tick, "EventSource resumes from here");

    // The same token is now refused as expired; a fresh one resumes.
    let (status, _, body) = refusal(
        get(
            &server,
            "/rooms/lobby",
            &[("authorization", &bearer(&token))],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_expired"))
    );
    let fresh = hs(&claims(json!({})));
    let response = get(
        &server,
        "/rooms/lobby?format=sse",
        &[
            ("authorization", &bearer(&fresh)),
            ("last-event-id", &last_tick),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut events = sse_events(response);
    let next = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event")
        .expect("an event");
    let expected: u64 = last_tick.parse::<u64>().expect("numeric id") + 1;
    assert_eq!(next.id, expected.to_string());
}

#[tokio::test]
async fn auth_config_problems_are_all_reported_with_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_jwks = dir.path().join("bad-jwks.json");
    std::fs::write(&bad_jwks, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).expect("write");
    let path = dir.path().join("auth.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[routes.a]
path = "/a/{{room}}"
[routes.a.auth]
type = "jwt"
secret = "test-only-secret-0123456789abcdef"
from = ["authorization", "carrier-pigeon"]
[routes.a.backends.d]
type = "demo"

[routes.b]
path = "/b/{{id}}"
[routes.b.auth]
type = "jwt"
jwks_file = "{bad}"
jwks_url = "https://issuer.test/jwks.json"
algorithms = ["none", "HS256"]
[routes.b.auth.restrict]
param = "room"
claim = "rooms"
[routes.b.backends.d]
type = "demo"

[routes.c]
path = "/c"
[routes.c.auth]
type = "oauth"
[routes.c.backends.d]
type = "demo"

[routes.d]
path = "/d"
[routes.d.auth]
type = "bearer"
tokens = ["short"]
[routes.d.backends.d]
type = "demo"

[routes.e]
path = "/e"
[routes.e.auth]
type = "jwt"
jwks_file = "/nonexistent/jwks.json"
[routes.e.backends.d]
type = "demo"

[routes.f]
path = "/f"
[routes.f.auth]
type = "jwt"
secret = "${{MISSING_SECRET}}0123456789abcdef0123456789abcdef"
[routes.f.backends.d]
type = "demo"

[routes.g]
path = "/g"
[routes.g.auth]
type = "jwt"
jwks_url = "http://issuer.test/jwks.json"
[routes.g.backends.d]
type = "demo"

[routes.h]
path = "/h"
pass_headers = ["authorization", "x-trace"]
[routes.h.auth]
type = "bearer"
tokens = ["test-only-token-0123456789"]
[routes.h.backends.d]
type = "demo"
"#,
            bad = bad_jwks.display()
        ),
    )
    .expect("write config");
    let err = gateway::config::load(Source::File(&path), Some(HashMap::new())).unwrap_err();
    let file = path.display().to_string();
    let text = err.to_string();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "routes.a.auth.from[1]",
        "routes.c.auth.type",
        "routes.f.auth.secret",
        "routes.b.auth.jwks_url",
        "routes.b.auth.algorithms",
        "routes.b.auth.jwks_file",
        "routes.b.auth.restrict.param",
        "routes.d.auth.tokens",
        "routes.e.auth.jwks_file",
        "routes.g.auth.jwks_url",
        "routes.h.pass_headers",
    ] {
        assert!(keys.contains(&key), "{key} not in:\n{text}");
    }
    assert!(err.problems.iter().all(|p| p.origin == file), "{text}");
    for reason in [
        "MISSING_SECRET is not set",
        "carrier-pigeon",
        "\"oauth\"",
        "never \"none\"",
        "has no key usable",
        "is not a parameter of the path",
        "at least 16 characters",
        "cannot read",
        "give one of",
        "is plain HTTP",
        "backends must not receive it",
    ] {
        assert!(text.contains(reason), "{reason:?} not in:\n{text}");
    }
}
