//! `/metrics`: its numbers follow what clients did, on a real listener with
//! real HTTP clients, and it is served only where the config says, to whom
//! it says.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use backends::http::HttpConfig;
use backends::testing::{Mock, Step, event};
use backends::{Backend, BackendConfig, BackendError, ErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use gateway::config::{self, Envelope, MetricsConfig, RouteConfig, ServerConfig, Source};
use gateway::{Gateway, Route};
use gateway_tests::exposition::Exposition;
use gateway_tests::{TestServer, client, within_for};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const BOUND: Duration = Duration::from_secs(10);
const TOKEN: &str = "metrics-token-0123456789";

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(BOUND, what, future).await
}

/// A gateway serving `routes` on a loopback port, with its metrics on a
/// listener of their own (the address returned).
async fn serve(server: ServerConfig, routes: Vec<Route>) -> (TestServer, SocketAddr) {
    let started = TestServer::start(Gateway::new(server, routes).expect("valid gateway")).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway::metrics::serve(
        listener,
        Arc::clone(&started.gateway),
    ));
    (started, addr)
}

fn route(name: &str, path: &str, backends: Vec<(&str, Arc<dyn Backend>)>) -> Route {
    let mut options = RouteConfig::new(path);
    options.envelope = Envelope::Always;
    options.heartbeat = Duration::from_millis(50);
    let backends = backends
        .into_iter()
        .map(|(n, b)| (n.to_string(), b))
        .collect();
    Route::new(name, &options, backends).expect("valid route")
}

/// Scrapes the separate listener and parses what it answers.
async fn scrape(metrics: SocketAddr) -> Exposition {
    let response = client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("ASCII")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    Exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Scrapes until `done` holds of the metrics, within the bound.
async fn scrape_until(
    metrics: SocketAddr,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    within(what, async {
        loop {
            let scraped = scrape(metrics).await;
            if done(&scraped) {
                return scraped;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

impl Format {
    fn label(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ndjson => "ndjson",
        }
    }
}

/// A client's stream, read as raw bytes: what it received, to the byte.
struct Reader {
    format: Format,
    body: Vec<u8>,
    chunks: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
}

impl Reader {
    async fn open(url: &str, format: Format) -> Self {
        let accept = match format {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        };
        let response = client()
            .get(url)
            .header(header::ACCEPT, accept)
            .send()
            .await
            .expect("response");
        if response.status() != 200 {
            let status = response.status();
            panic!(
                "{url}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
        Self {
            format,
            body: Vec::new(),
            chunks: response.bytes_stream().boxed(),
        }
    }

    /// The backend events received so far, each as its envelope.
    fn events(&self) -> Vec<Value> {
        let text = std::str::from_utf8(&self.body).expect("UTF-8 body");
        let bodies: Vec<&str> = match self.format {
            // Complete lines only.
            Format::Ndjson => text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(str::trim_end)
                .collect(),
            // Complete events only; `data:` lines (one each: JSON is one line).
            Format::Sse => text
                .split_inclusive("\n\n")
                .filter(|e| e.ends_with("\n\n"))
                .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
                .collect(),
        };
        bodies
            .into_iter()
            .map(|b| serde_json::from_str::<Value>(b).expect("JSON body"))
            .filter(|v| {
                !v["event"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("gateway."))
            })
            .collect()
    }

    /// Reads until `n` backend events have arrived.
    async fn until(&mut self, n: usize) {
        within("the first events", async {
            while self.events().len() < n {
                let chunk = self.chunks.next().await.expect("more").expect("chunk");
                self.body.extend_from_slice(&chunk);
            }
        })
        .await;
    }

    /// Reads to the end of the stream.
    async fn rest(&mut self) {
        within("the end of the stream", async {
            while let Some(chunk) = self.chunks.next().await {
                self.body.extend_from_slice(&chunk.expect("chunk"));
            }
        })
        .await;
    }

    fn by_source(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for e in self.events() {
            *counts
                .entry(e["source"].as_str().expect("source").to_string())
                .or_default() += 1;
        }
        counts
    }
}

fn numbered(n: usize) -> Step {
    Step::Event(event(&n.to_string(), "n", json!({ "n": n })))
}

/// Open streams per route and format, events and bytes as the clients
/// counted them, and the histograms, across streams that clients drop and
/// streams that end.
#[tokio::test]
async fn the_numbers_follow_the_streams() {
    let (alpha_gate, left_gate, right_gate) = (
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    let alpha: Arc<dyn Backend> = Arc::new(Mock::new(vec![
        numbered(1),
        numbered(2),
        Step::Gate(Arc::clone(&alpha_gate)),
        numbered(3),
    ]));
    let left: Arc<dyn Backend> = Arc::new(Mock::new(vec![
        numbered(1),
        Step::Gate(Arc::clone(&left_gate)),
        numbered(2),
        numbered(3),
    ]));
    let right: Arc<dyn Backend> = Arc::new(Mock::new(vec![
        numbered(1),
        numbered(2),
        Step::Gate(Arc::clone(&right_gate)),
        numbered(3),
        numbered(4),
        numbered(5),
    ]));
    let (server, metrics) = serve(
        ServerConfig::default(),
        vec![
            route("alpha", "/alpha", vec![("gate", alpha)]),
            route("beta", "/beta", vec![("left", left), ("right", right)]),
        ],
    )
    .await;
    let open = |m: &Exposition, route: &str, format: &str| {
        m.value(
            "gateway_open_streams",
            &[("route", route), ("format", format)],
        )
    };
    // A family shows once it has a series.
    let first = scrape(metrics).await;
    assert_eq!(first.type_of("gateway_open_streams"), None);

    // Clients that go away: the gauge goes back down.
    let mut gone = Vec::new();
    for format in [Format::Sse, Format::Ndjson] {
        let mut reader = Reader::open(&server.url("/alpha"), format).await;
        reader.until(2).await;
        gone.push(reader);
    }
    let held = scrape(metrics).await;
    assert_eq!(held.type_of("gateway_open_streams"), Some("gauge"));
    assert_eq!(held.type_of("gateway_events_sent_total"), Some("counter"));
    assert_eq!(held.type_of("gateway_sent_bytes_total"), Some("counter"));
    assert_eq!(
        held.type_of("gateway_time_to_first_event_seconds"),
        Some("histogram")
    );
    assert_eq!(open(&held, "alpha", "sse"), 1.0);
    assert_eq!(open(&held, "alpha", "ndjson"), 1.0);
    drop(gone);
    let settled = scrape_until(metrics, "the dropped streams closing", |m| {
        open(m, "alpha", "sse") == 0.0 && open(m, "alpha", "ndjson") == 0.0
    })
    .await;
    let count = |m: &Exposition, family: &str, route: &str| {
        m.value(&format!("{family}_count"), &[("route", route)])
    };
    assert_eq!(
        count(&settled, "gateway_stream_duration_seconds", "alpha"),
        2.0
    );
    assert_eq!(
        count(&settled, "gateway_time_to_first_event_seconds", "alpha"),
        2.0
    );
    let events = |m: &Exposition, route: &str, backend: &str| {
        m.value(
            "gateway_events_sent_total",
            &[("route", route), ("backend", backend)],
        )
    };
    assert_eq!(events(&settled, "alpha", "gate"), 4.0);

    // Streams held open on two routes in both formats, then let end.
    let mut readers = Vec::new();
    for (path, format, first_events) in [
        ("/alpha", Format::Sse, 2),
        ("/alpha", Format::Sse, 2),
        ("/alpha", Format::Ndjson, 2),
        ("/beta", Format::Ndjson, 3),
        ("/beta", Format::Ndjson, 3),
        ("/beta", Format::Sse, 3),
    ] {
        let mut reader = Reader::open(&server.url(path), format).await;
        reader.until(first_events).await;
        readers.push((path, reader));
    }
    let held = scrape(metrics).await;
    for (route, format, n) in [
        ("alpha", "sse", 2.0),
        ("alpha", "ndjson", 1.0),
        ("beta", "sse", 1.0),
        ("beta", "ndjson", 2.0),
    ] {
        assert_eq!(open(&held, route, format), n, "{route} {format}");
    }
    assert_eq!(
        count(&held, "gateway_time_to_first_event_seconds", "alpha"),
        5.0
    );
    assert_eq!(
        count(&held, "gateway_time_to_first_event_seconds", "beta"),
        3.0
    );
    assert_eq!(count(&held, "gateway_stream_duration_seconds", "beta"), 0.0);

    for gate in [&alpha_gate, &left_gate, &right_gate] {
        for _ in 0..3 {
            gate.notify_one();
        }
    }
    let mut received: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut bytes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (path, reader) in &mut readers {
        reader.rest().await;
        let route = path.trim_start_matches('/');
        for (source, n) in reader.by_source() {
            *received.entry((route, source)).or_default() += n;
        }
        *bytes.entry((route, reader.format.label())).or_default() += reader.body.len();
    }
    let ended = scrape_until(metrics, "the ended streams closing", |m| {
        ["alpha", "beta"]
            .iter()
            .all(|r| open(m, r, "sse") == 0.0 && open(m, r, "ndjson") == 0.0)
    })
    .await;
    // What the clients received, counted on their side.
    assert_eq!(
        received,
        BTreeMap::from([
            (("alpha", "gate".to_string()), 9),
            (("beta", "left".to_string()), 9),
            (("beta", "right".to_string()), 15),
        ])
    );
    for ((route, backend), n) in &received {
        let before = events(&settled, route, backend);
        assert_eq!(
            events(&ended, route, backend) - before,
            *n as f64,
            "{route} {backend}"
        );
    }
    for ((route, format), n) in &bytes {
        let labels = [("route", *route), ("format", *format)];
        let before = settled.value("gateway_sent_bytes_total", &labels);
        assert_eq!(
            ended.value("gateway_sent_bytes_total", &labels) - before,
            *n as f64,
            "{route} {format}"
        );
    }
    assert_eq!(
        count(&ended, "gateway_stream_duration_seconds", "alpha"),
        5.0
    );
    assert_eq!(
        count(&ended, "gateway_stream_duration_seconds", "beta"),
        3.0
    );
    // Every stream took longer than 0s; the +Inf bucket holds them all.
    assert_eq!(
        ended.value(
            "gateway_stream_duration_seconds_bucket",
            &[("route", "beta"), ("le", "+Inf")]
        ),
        3.0
    );
    assert!(ended.value("gateway_stream_duration_seconds_sum", &[("route", "beta")]) > 0.0);
    assert_eq!(
        ended.value("gateway_responses_total", &[("class", "2xx")]),
        8.0
    );
}

/// A small upstream: `/broken` answers 500; `/flaky` sends event 1 and
/// drops the connection when the gate returned is opened the first time,
/// then sends event 2 and ends.
async fn upstream() -> (SocketAddr, Arc<Notify>) {
    let gate = Arc::new(Notify::new());
    let flaky = (Arc::new(AtomicUsize::new(0)), Arc::clone(&gate));
    let app = axum::Router::new()
        .route(
            "/broken",
            axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/flaky",
            axum::routing::get(
                |State((calls, gate)): State<(Arc<AtomicUsize>, Arc<Notify>)>| async move {
                    let body = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        let first = Ok(Bytes::from("id: 1\ndata: {\"n\":1}\n\n"));
                        let cut = async move {
                            gate.notified().await;
                            Err(std::io::Error::other("the upstream drops the connection"))
                        };
                        futures::stream::iter([first])
                            .chain(futures::stream::once(cut))
                            .boxed()
                    } else {
                        futures::stream::iter([Ok(Bytes::from("id: 2\ndata: {\"n\":2}\n\n"))])
                            .boxed()
                    };
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(Body::from_stream(body))
                        .expect("response")
                },
            ),
        )
        .with_state(flaky);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, gate)
}

fn http_backend(url: String) -> Arc<dyn Backend> {
    let config = BackendConfig::Http(HttpConfig {
        backoff: Duration::from_millis(10),
        ..HttpConfig::new(url)
    });
    assert_eq!(config.validate(), vec![]);
    config.build()
}

/// Backends failing to open (an upstream's 500) and mid-stream, and an
/// upstream that drops and is reconnected.
#[tokio::test]
async fn backend_errors_and_upstream_reconnects_are_counted() {
    let (up, drop_upstream) = upstream().await;
    let failing: Arc<dyn Backend> = Arc::new(Mock::new(vec![
        numbered(1),
        Step::Fail(BackendError::new(ErrorKind::Upstream, "it broke")),
        numbered(2),
    ]));
    let (server, metrics) = serve(
        ServerConfig::default(),
        vec![
            route(
                "broken",
                "/broken",
                vec![("up", http_backend(format!("http://{up}/broken")))],
            ),
            route(
                "flaky",
                "/flaky",
                vec![("up", http_backend(format!("http://{up}/flaky")))],
            ),
            route("failing", "/failing", vec![("mock", failing)]),
        ],
    )
    .await;
    let errors = |m: &Exposition, route: &str, backend: &str, phase: &str, kind: &str| {
        m.value(
            "gateway_backend_errors_total",
            &[
                ("route", route),
                ("backend", backend),
                ("phase", phase),
                ("kind", kind),
            ],
        )
    };
    let reconnects = |m: &Exposition, outcome: &str| {
        m.value(
            "gateway_upstream_reconnects_total",
            &[
                ("route", "flaky"),
                ("backend", "up"),
                ("type", "http"),
                ("outcome", outcome),
            ],
        )
    };
    let before = scrape(metrics).await;
    // Backends that connect upstream are listed from the start.
    assert_eq!(
        before.get(
            "gateway_upstream_reconnects_total",
            &[
                ("route", "flaky"),
                ("backend", "up"),
                ("type", "http"),
                ("outcome", "ok"),
            ]
        ),
        Some(0.0)
    );

    for _ in 0..2 {
        let response = client()
            .get(server.url("/broken"))
            .send()
            .await
            .expect("response");
        assert_eq!(response.status(), 502);
    }
    let mut failing = Reader::open(&server.url("/failing"), Format::Ndjson).await;
    failing.rest().await;
    assert_eq!(
        failing.events().len(),
        2,
        "the stream goes on after its error"
    );
    let mut flaky = Reader::open(&server.url("/flaky"), Format::Sse).await;
    flaky.until(1).await;
    drop_upstream.notify_one();
    flaky.rest().await;
    let ns: Vec<Value> = flaky
        .events()
        .iter()
        .map(|e| e["data"]["n"].clone())
        .collect();
    assert_eq!(ns, [json!(1), json!(2)], "nothing lost, nothing repeated");

    let after = scrape(metrics).await;
    assert_eq!(errors(&after, "broken", "up", "open", "upstream"), 2.0);
    assert_eq!(errors(&after, "failing", "mock", "stream", "upstream"), 1.0);
    assert_eq!(errors(&after, "flaky", "up", "stream", "upstream"), 0.0);
    assert_eq!(reconnects(&before, "ok"), 0.0);
    assert_eq!(reconnects(&after, "ok"), 1.0);
    assert_eq!(reconnects(&after, "failed"), 0.0);
    assert_eq!(
        after.value("gateway_responses_total", &[("class", "5xx")]),
        2.0
    );
}

/// A full gateway refuses the next stream, and says so.
#[tokio::test]
async fn refused_streams_are_counted() {
    let pending: Arc<dyn Backend> = Arc::new(Mock::new(vec![numbered(1), Step::Pending]));
    let (server, metrics) = serve(
        ServerConfig {
            max_streams: 1,
            ..ServerConfig::default()
        },
        vec![route("only", "/only", vec![("mock", pending)])],
    )
    .await;
    let mut held = Reader::open(&server.url("/only"), Format::Ndjson).await;
    held.until(1).await;
    let refused = client()
        .get(server.url("/only"))
        .send()
        .await
        .expect("response");
    assert_eq!(refused.status(), 503);
    let m = scrape(metrics).await;
    assert_eq!(
        m.value(
            "gateway_streams_refused_total",
            &[("route", "only"), ("reason", "full")]
        ),
        1.0
    );
    assert_eq!(m.value("gateway_responses_total", &[("class", "5xx")]), 1.0);
}

/// The public path answers only to its token; without a public path the
/// public port has no `/metrics`.
#[tokio::test]
async fn the_public_path_needs_its_token() {
    let ticker = || -> Arc<dyn Backend> {
        BackendConfig::Ticker(backends::ticker::TickerConfig::default()).build()
    };
    let (plain, separate) = serve(
        ServerConfig::default(),
        vec![route("t", "/t", vec![("tick", ticker())])],
    )
    .await;
    let answer = client()
        .get(plain.url("/metrics"))
        .send()
        .await
        .expect("response");
    assert_eq!(answer.status(), 404, "no public metrics unless configured");
    // The separate listener serves /metrics only.
    let other = client()
        .get(format!("http://{separate}/other"))
        .send()
        .await
        .expect("response");
    assert_eq!(other.status(), 404);
    let scraped = scrape(separate).await;
    assert_eq!(
        scraped.type_of("gateway_responses_total"),
        Some("counter"),
        "{scraped:?}"
    );

    let server = ServerConfig {
        metrics: MetricsConfig {
            path: Some("/ops/metrics".into()),
            tokens: vec!["another-token-0123456789".into(), TOKEN.into()],
            ..MetricsConfig::default()
        },
        ..ServerConfig::default()
    };
    let protected = TestServer::start(
        Gateway::new(server, vec![route("t", "/t", vec![("tick", ticker())])]).expect("valid"),
    )
    .await;
    let url = protected.url("/ops/metrics");
    let without = client().get(&url).send().await.expect("response");
    assert_eq!(without.status(), 401);
    assert!(without.headers().contains_key(header::WWW_AUTHENTICATE));
    let body: Value = without.json().await.expect("JSON error");
    assert_eq!(body["error"], "unauthorized", "{body}");
    let wrong = client()
        .get(&url)
        .bearer_auth("metrics-token-0123456780")
        .send()
        .await
        .expect("response");
    assert_eq!(wrong.status(), 403);
    let right = client()
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("response");
    assert_eq!(right.status(), 200);
    let text = right.text().await.expect("body");
    let parsed = Exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The 401 and the 403 were answers too.
    assert_eq!(
        parsed.value("gateway_responses_total", &[("class", "4xx")]),
        2.0
    );
    let post = client()
        .post(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("response");
    assert_eq!(post.status(), 405);
    // Only the exact path: below it is no route.
    let below = client()
        .get(protected.url("/ops/metrics/x"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("response");
    assert_eq!(below.status(), 404);
}

/// Metrics on the public port without a token, with a short token, or on
/// a route's path are config errors naming the file, the key and the
/// reason; `${VAR}` in a token is expanded.
#[test]
fn metrics_config_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |text: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).expect("write");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (config::load(Source::File(&path), Some(env)), path)
    };
    let routes =
        "[routes.rooms]\npath = \"/{room}\"\n[routes.rooms.backends.t]\ntype = \"ticker\"\n";

    let (result, path) = load(
        &format!("[server.metrics]\npath = \"/metrics\"\n{routes}"),
        &[],
    );
    let error = result.expect_err("no token").to_string();
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("server.metrics.tokens"), "{error}");
    assert!(error.contains("need a bearer token"), "{error}");
    // The route `/{room}` would take /metrics too.
    assert!(error.contains("server.metrics.path"), "{error}");
    assert!(error.contains("route rooms"), "{error}");

    let (result, _) = load(
        &format!(
            "[server.metrics]\npath = \"/ops/metrics\"\ntokens = [\"short\"]\n{}",
            routes.replace("/{room}", "/rooms/{room}")
        ),
        &[],
    );
    let error = result.expect_err("short token").to_string();
    assert!(error.contains("at least 16 characters"), "{error}");

    // Several processes on one port cannot share one metrics listener.
    let (result, _) = load(
        &format!(
            "[server]
reuse_port = true
[server.metrics]
listen = \"127.0.0.1:0\"
{routes}"
        ),
        &[],
    );
    let error = result.expect_err("reuse_port with listen").to_string();
    assert!(error.contains("server.metrics.listen"), "{error}");
    assert!(error.contains("server.reuse_port"), "{error}");

    let (result, _) = load(
        &format!(
            "[server.metrics]\npath = \"/ops/metrics\"\ntokens = [\"${{METRICS_TOKEN}}\"]\n{}",
            routes.replace("/{room}", "/rooms/{room}")
        ),
        &[("METRICS_TOKEN", TOKEN)],
    );
    let loaded = result.expect("a valid config");
    assert_eq!(loaded.server.metrics.tokens, [TOKEN]);

    let (result, _) = load(
        &format!("[server.metrics]\nlisten = \"127.0.0.1:9464\"\n{routes}"),
        &[],
    );
    let loaded = result.expect("a separate listener needs no token");
    assert_eq!(
        loaded.server.metrics.listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );

    // Gateway::new (no config file) refuses a shadowed path too.
    let server = ServerConfig {
        metrics: MetricsConfig {
            path: Some("/metrics".into()),
            tokens: vec![TOKEN.into()],
            ..MetricsConfig::default()
        },
        ..ServerConfig::default()
    };
    let shadowing = route("rooms", "/{room}", vec![("m", Arc::new(Mock::default()))]);
    let error = Gateway::new(server, vec![shadowing])
        .expect_err("shadowed")
        .to_string();
    assert!(error.contains("metrics.path"), "{error}");
}

/// A backend that counts like the shared-buffer backends do: the counts
/// the test makes show at the next scrape, by route, backend and type.
#[derive(Debug)]
struct Counting {
    stats: backends::BackendStats,
}

#[async_trait::async_trait]
impl Backend for Counting {
    async fn open(
        &self,
        _: &backends::RequestContext,
    ) -> Result<backends::EventStream, BackendError> {
        Ok(futures::stream::empty().boxed())
    }

    fn stats(&self) -> Option<&backends::BackendStats> {
        Some(&self.stats)
    }
}

#[tokio::test]
async fn backends_own_counts_are_read_at_each_scrape() {
    let counting = Arc::new(Counting {
        stats: backends::BackendStats::new("redis"),
    });
    let (_server, metrics) = serve(
        ServerConfig::default(),
        vec![route(
            "rooms",
            "/rooms",
            vec![("bus", Arc::clone(&counting) as Arc<dyn Backend>)],
        )],
    )
    .await;
    let slow = |m: &Exposition, outcome: &str| {
        m.get(
            "gateway_slow_clients_total",
            &[
                ("route", "rooms"),
                ("backend", "bus"),
                ("type", "redis"),
                ("outcome", outcome),
            ],
        )
    };
    let before = scrape(metrics).await;
    assert_eq!(slow(&before, "caught_up"), Some(0.0));
    assert_eq!(slow(&before, "dropped"), Some(0.0));
    counting.stats.lagged();
    counting.stats.lagged();
    counting.stats.dropped();
    counting.stats.reconnect_failed();
    let after = scrape(metrics).await;
    assert_eq!(slow(&after, "caught_up"), Some(2.0));
    assert_eq!(slow(&after, "dropped"), Some(1.0));
    assert_eq!(
        after.get(
            "gateway_upstream_reconnects_total",
            &[
                ("route", "rooms"),
                ("backend", "bus"),
                ("type", "redis"),
                ("outcome", "failed"),
            ],
        ),
        Some(1.0)
    );
}
