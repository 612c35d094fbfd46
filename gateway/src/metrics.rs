//! The gateway's metrics, in the Prometheus text format (0.0.4).
//!
//! Every [`Gateway`] owns its [`Metrics`]: its own registry, no global state,
//! so gateways in one process (tests) never mix their numbers. What is
//! counted is counted always (an atomic add per event); `[server.metrics]`
//! only decides where it can be read:
//!
//! - `listen`: a listener of its own ([`serve`]), off the public port;
//! - `path` with `tokens`: on the public port, for a bearer token only.
//!
//! Upstream reconnects are counted by the `http` backend (each attempt to
//! resume a dropped upstream), the `redis` readers (each connection after a
//! reader's first) and the `nats` connection (each reconnection; its client
//! retries on its own and reports no failed attempt). Slow clients are those
//! of the `redis` and `nats` backends that fell behind the shared buffer.
//!
//! Labels come from the config only (route and backend names, the format,
//! fixed words): never from a request, so the number of series is bounded
//! by the config.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `gateway_open_streams` | gauge | route, format |
//! | `gateway_events_sent_total` | counter | route, backend |
//! | `gateway_sent_bytes_total` | counter | route, format |
//! | `gateway_backend_errors_total` | counter | route, backend, phase (`open`, `stream`), kind |
//! | `gateway_streams_refused_total` | counter | route, reason (`full`, `per_client`, `shutting_down`) |
//! | `gateway_connections_refused_total` | counter | reason (`max_connections`, `per_client`), outcome (`answered`, `closed`) |
//! | `gateway_connection_timeouts_total` | counter | phase (`head`, `idle`, `send`) |
//! | `gateway_responses_total` | counter | class (`2xx` … `5xx`) |
//! | `gateway_stream_duration_seconds` | histogram | route |
//! | `gateway_time_to_first_event_seconds` | histogram | route |
//! | `gateway_upstream_reconnects_total` | counter | route, backend, type, outcome (`ok`, `failed`) |
//! | `gateway_slow_clients_total` | counter | route, backend, type, outcome (`caught_up`, `dropped`) |

use std::io;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backends::stats::StatsSnapshot;
use backends::{Backend, BackendError, ErrorKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::negotiate::Format;
use crate::route::Route;
use crate::server::Gateway;

/// The scrape path of the separate listener.
pub const LISTEN_PATH: &str = "/metrics";

/// Upper bounds of the stream duration histogram, in seconds: from a
/// tenth of a second to a day.
const DURATION_BUCKETS: [f64; 16] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
    43200.0, 86400.0,
];
/// Upper bounds of the time-to-first-event histogram, in seconds.
const FIRST_EVENT_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    route: Arc<str>,
    format: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    route: Arc<str>,
    backend: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: Arc<str>,
    backend: Arc<str>,
    phase: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    route: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionRefusedLabels {
    reason: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: Arc<str>,
    backend: Arc<str>,
    r#type: &'static str,
    outcome: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Why a stream was refused before it opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_streams` were open.
    Full,
    /// The client held `server.max_streams_per_client`.
    PerClient,
    /// The gateway is shutting down.
    ShuttingDown,
}

/// One gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    open_streams: Family<StreamLabels, Gauge>,
    events: Family<BackendLabels, Counter>,
    bytes: Family<StreamLabels, Counter>,
    backend_errors: Family<ErrorLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    connections_refused: Family<ConnectionRefusedLabels, Counter>,
    timeouts: Family<TimeoutLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    durations: HistogramFamily,
    first_events: HistogramFamily,
}

impl Metrics {
    /// The metrics of a gateway serving `routes`; the backends' own counters
    /// ([`Backend::stats`]) are read from them at each scrape.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a Route>) -> Self {
        let mut registry = Registry::default();
        let open_streams = Family::default();
        registry.register(
            "gateway_open_streams",
            "Streams open now",
            open_streams.clone(),
        );
        let events = Family::default();
        registry.register(
            "gateway_events_sent",
            "Backend events written to clients",
            events.clone(),
        );
        let bytes = Family::default();
        registry.register_with_unit(
            "gateway_sent",
            "Bytes of stream bodies written to clients (events, heartbeats, the gateway's own events)",
            Unit::Bytes,
            bytes.clone(),
        );
        let backend_errors = Family::default();
        registry.register(
            "gateway_backend_errors",
            "Backend failures: when opening (the request was answered with an error status) or mid-stream (an error event)",
            backend_errors.clone(),
        );
        let refused = Family::default();
        registry.register(
            "gateway_streams_refused",
            "Streams refused: the gateway held server.max_streams (503), the client held server.max_streams_per_client (429), or the gateway was shutting down (503)",
            refused.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "gateway_connections_refused",
            "Connections over server.max_connections (503) or server.max_connections_per_client (429): answered with the refusal, or closed at once when too many were being refused",
            connections_refused.clone(),
        );
        let timeouts = Family::default();
        registry.register(
            "gateway_connection_timeouts",
            "Connections closed because a request head did not arrive within server.head_timeout (408), they stayed idle past server.keep_alive_timeout, or their client took nothing for server.send_timeout",
            timeouts.clone(),
        );
        let responses = Family::default();
        registry.register(
            "gateway_responses",
            "Answers to stream and publish requests, by status class",
            responses.clone(),
        );
        let durations: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register_with_unit(
            "gateway_stream_duration",
            "How long streams were open, from their backends' opening to the stream's end",
            Unit::Seconds,
            durations.clone(),
        );
        let first_events: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(FIRST_EVENT_BUCKETS));
        registry.register_with_unit(
            "gateway_time_to_first_event",
            "Time from a stream's request to its first backend event",
            Unit::Seconds,
            first_events.clone(),
        );
        let watched = routes
            .into_iter()
            .flat_map(|route| {
                route
                    .sources
                    .iter()
                    .zip(&route.backends)
                    .filter(|(_, backend)| backend.stats().is_some())
                    .map(|(name, backend)| Watched {
                        route: Arc::clone(&route.name),
                        backend: Arc::clone(name),
                        instance: Arc::clone(backend),
                    })
            })
            .collect();
        registry.register_collector(Box::new(BackendCollector { watched }));
        Self {
            registry,
            open_streams,
            events,
            bytes,
            backend_errors,
            refused,
            connections_refused,
            timeouts,
            responses,
            durations,
            first_events,
        }
    }

    /// The exposition text, Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// The metrics of a stream of `route` in `format` that is opening now,
    /// requested at `requested`: it counts as open until dropped.
    pub fn stream(&self, route: &Route, format: Format, requested: Instant) -> StreamMetrics {
        let labels = StreamLabels {
            route: Arc::clone(&route.name),
            format: format_label(format),
        };
        let route_labels = RouteLabels {
            route: Arc::clone(&route.name),
        };
        let open = self.open_streams.get_or_create_owned(&labels);
        open.inc();
        StreamMetrics {
            open,
            events: route
                .sources
                .iter()
                .map(|backend| {
                    self.events.get_or_create_owned(&BackendLabels {
                        route: Arc::clone(&route.name),
                        backend: Arc::clone(backend),
                    })
                })
                .collect(),
            bytes: self.bytes.get_or_create_owned(&labels),
            errors: self.backend_errors.clone(),
            route: Arc::clone(&route.name),
            sources: Arc::clone(&route.sources),
            duration: self.durations.get_or_create_owned(&route_labels),
            first_event: Some(self.first_events.get_or_create_owned(&route_labels)),
            requested,
            opened: Instant::now(),
        }
    }

    /// A backend of `route` failed to open (`backend` is its index, when
    /// one backend failed). A finished stream (204) is no failure.
    pub fn open_failed(&self, route: &Route, backend: Option<usize>, error: &BackendError) {
        if error.kind == ErrorKind::Finished {
            return;
        }
        let Some(name) = backend.and_then(|i| route.sources.get(i)) else {
            return;
        };
        self.backend_errors
            .get_or_create(&ErrorLabels {
                route: Arc::clone(&route.name),
                backend: Arc::clone(name),
                phase: "open",
                kind: error.kind.as_str(),
            })
            .inc();
    }

    /// A stream of `route` was refused.
    pub fn refused(&self, route: &Route, why: Refused) {
        let reason = match why {
            Refused::Full => "full",
            Refused::PerClient => "per_client",
            Refused::ShuttingDown => "shutting_down",
        };
        self.refused
            .get_or_create(&RefusedLabels {
                route: Arc::clone(&route.name),
                reason,
            })
            .inc();
    }

    /// A connection over a limit (`reason`) was refused: answered so, or
    /// `closed` at once.
    pub fn connection_refused(&self, reason: &'static str, closed: bool) {
        let outcome = if closed { "closed" } else { "answered" };
        self.connections_refused
            .get_or_create(&ConnectionRefusedLabels { reason, outcome })
            .inc();
    }

    /// A connection was closed when its `phase` (`head`, `idle`, `send`)
    /// ran out.
    pub fn connection_timed_out(&self, phase: &'static str) {
        self.timeouts.get_or_create(&TimeoutLabels { phase }).inc();
    }

    /// A stream or publish request was answered with `status`.
    pub fn responded(&self, status: StatusCode) {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.responses
            .get_or_create(&ResponseLabels { class })
            .inc();
    }
}

fn format_label(format: Format) -> &'static str {
    match format {
        Format::Sse => "sse",
        Format::Ndjson => "ndjson",
    }
}

/// The metrics of one open stream, resolved when it opens so that an event
/// costs one atomic add. The stream counts as open until this is dropped.
#[derive(Debug)]
pub struct StreamMetrics {
    open: Gauge,
    events: Vec<Counter>,
    bytes: Counter,
    errors: Family<ErrorLabels, Counter>,
    route: Arc<str>,
    sources: Arc<[Arc<str>]>,
    duration: Histogram,
    /// Until the first event.
    first_event: Option<Histogram>,
    requested: Instant,
    opened: Instant,
}

impl StreamMetrics {
    /// Backend `index` sent `count` events.
    pub fn events(&mut self, index: usize, count: u64) {
        if let Some(counter) = self.events.get(index) {
            counter.inc_by(count);
        }
        if let Some(first) = self.first_event.take() {
            first.observe(self.requested.elapsed().as_secs_f64());
        }
    }

    /// `n` bytes were written.
    pub fn bytes(&self, n: usize) {
        self.bytes.inc_by(n as u64);
    }

    /// Backend `index` failed mid-stream.
    pub fn backend_error(&self, index: usize, kind: ErrorKind) {
        let Some(backend) = self.sources.get(index) else {
            return;
        };
        self.errors
            .get_or_create(&ErrorLabels {
                route: Arc::clone(&self.route),
                backend: Arc::clone(backend),
                phase: "stream",
                kind: kind.as_str(),
            })
            .inc();
    }
}

impl Drop for StreamMetrics {
    fn drop(&mut self) {
        self.open.dec();
        self.duration.observe(self.opened.elapsed().as_secs_f64());
    }
}

/// A backend whose own counters are read at each scrape.
#[derive(Debug)]
struct Watched {
    route: Arc<str>,
    backend: Arc<str>,
    instance: Arc<dyn Backend>,
}

/// A family's outcome labels, each with its count in a snapshot.
type Outcomes = [(&'static str, fn(&StatsSnapshot) -> u64); 2];

/// Reads the backends' [`backends::BackendStats`] when scraped.
#[derive(Debug)]
struct BackendCollector {
    watched: Vec<Watched>,
}

impl Collector for BackendCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<_> = self
            .watched
            .iter()
            .filter_map(|w| w.instance.stats().map(|s| (w, s.kind(), s.snapshot())))
            .collect();
        let families: [(&str, &str, Outcomes); 2] = [
            (
                "gateway_upstream_reconnects",
                "Upstream connections made again after one was lost (ok), or attempts that failed (failed).",
                [
                    ("ok", |s| s.reconnects),
                    ("failed", |s| s.failed_reconnects),
                ],
            ),
            (
                "gateway_slow_clients",
                "Clients that fell behind a shared buffer: caught up from the upstream (caught_up), or ended with a lagged error (dropped).",
                [("caught_up", |s| s.lagged), ("dropped", |s| s.dropped)],
            ),
        ];
        for (name, help, outcomes) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (watched, kind, snapshot) in &snapshots {
                for (outcome, value) in &outcomes {
                    let labels = UpstreamLabels {
                        route: Arc::clone(&watched.route),
                        backend: Arc::clone(&watched.backend),
                        r#type: kind,
                        outcome,
                    };
                    ConstCounter::new(value(snapshot)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The answer to a scrape.
fn exposition(gateway: &Gateway) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            ),
            // Behind a token: no shared cache may keep a copy.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        gateway.metrics.encode(),
    )
        .into_response()
}

/// A request for the public metrics path (`server.metrics.path`): `GET` or
/// `HEAD` with one of `server.metrics.tokens` as bearer token.
pub(crate) async fn public(
    gateway: &Gateway,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(crate::handler::method_not_allowed(
            method,
            "GET, HEAD".into(),
        ));
    }
    gateway
        .metrics_auth
        .check(crate::auth::Presented {
            headers,
            query: &[],
            params: &Default::default(),
            authorization_source: gateway.authorization_source.as_ref(),
        })
        .await?;
    Ok(exposition(gateway))
}

/// Serves the metrics on a listener of their own (`server.metrics.listen`):
/// `GET /metrics`, no token; anything else is 404. Returns when the gateway
/// shuts down.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) -> io::Result<()> {
    let shutdown = gateway.shutdown_token();
    let app = Router::new()
        .route(LISTEN_PATH, get(scrape))
        .fallback(not_found)
        .with_state(gateway);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn scrape(State(gateway): State<Arc<Gateway>>) -> Response {
    exposition(&gateway)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("this listener serves {LISTEN_PATH} only"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let metrics = Metrics::new([]);
        metrics.responded(StatusCode::OK);
        metrics.responded(StatusCode::SERVICE_UNAVAILABLE);
        metrics.responded(StatusCode::SERVICE_UNAVAILABLE);
        let text = metrics.encode();
        assert!(
            text.contains("gateway_responses_total{class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_responses_total{class=\"5xx\"} 2\n"),
            "{text}"
        );
    }
}
