//! The gateway's configuration: what the config file says, with its defaults.
//!
//! [`load`] layers the sources (built-in defaults, then a file, then
//! `GATEWAY__...` environment variables) and reports every problem at once;
//! [`GatewayConfig::validate`] checks what types alone cannot. The field
//! comments here are the user's reference; `config/default.toml` repeats them
//! with every default written out.

mod auth;
mod console;
mod load;
mod metrics;
mod problem;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use backends::durable::DurableConfig;
use backends::publish::PublisherConfig;
use backends::{BackendConfig, Shown};
use serde::Deserialize;

pub use auth::{
    ALGORITHMS, AuthConfig, AuthType, CredentialPlace, MIN_TOKEN_CHARS, RestrictConfig,
    check_static_tokens,
};
pub use console::ConsoleConfig;
pub use load::{DEFAULT_CONFIG, Source, load};
pub use metrics::MetricsConfig;
pub use problem::{ConfigError, ConfigProblem};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listener, limits and logging.
    #[serde(default)]
    pub server: ServerConfig,
    /// Stream routes by name. The name appears in logs and errors only.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Running on AWS Lambda.
    #[serde(default)]
    pub lambda: LambdaConfig,
    /// Behind Amazon CloudFront.
    #[serde(default)]
    pub cloudfront: CloudFrontConfig,
    /// Publish routes by name: a `POST` there appends an event to a bus
    /// that stream routes read.
    #[serde(default)]
    pub publish: BTreeMap<String, PublishConfig>,
}

/// `[publish.NAME]`: a path where clients holding a token append events.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// The path, with `{name}` parameters that the target's key may use.
    /// Required.
    pub path: String,
    /// The bearer tokens allowed to publish (`Authorization: Bearer …`);
    /// `${VAR}` inside one is replaced by that environment variable, so that
    /// tokens stay out of config files. At least one, each at least 16
    /// characters. Required.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Where events go, selected by `type` (`redis`). Required.
    pub target: Option<PublisherConfig>,
}

/// `[server]`: the listener, global limits and logging.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default: `127.0.0.1` (use `0.0.0.0` in a container).
    pub host: IpAddr,
    /// Port to listen on; `0` picks a free one. Default: `8080`.
    pub port: u16,
    /// Largest request body; a bigger one is refused with 413 before any
    /// backend is opened. Default: `1048576` (1 MiB, what CloudFront's edge
    /// functions can see of a body).
    pub max_body_bytes: usize,
    /// Longest time to receive a request body; a client slower than that is
    /// answered 408 (it holds a stream slot while it sends). Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Most streams open at once; one more is refused with 503 and
    /// `Retry-After`. Default: `10000`.
    pub max_streams: usize,
    /// Longest time a connection may take to send a complete request head
    /// (request line and headers), counted from its first byte (from the
    /// connection's start for its first request). A slower client is
    /// answered `408` and the connection closed: a head trickled a byte at a
    /// time must not hold a connection. HTTP/2 connections must open their
    /// first stream within it. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
    /// Largest request head (request line and headers, in bytes). A bigger
    /// one is answered `431` and the connection closed; HTTP/2 announces it
    /// as its header list limit. Default: `32768` (32 KiB: CloudFront sends
    /// at most about 20 KiB of headers).
    pub max_head_bytes: usize,
    /// Longest time a kept-alive connection may wait between requests
    /// before it is closed (an HTTP/2 connection without an open stream).
    /// Longer than CloudFront's origin keep-alive (5 s by default, 60 s at
    /// most), so that CloudFront, not the gateway, closes idle connections.
    /// Default: `65s`.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Longest time an answer may wait for the client to take any of it (a
    /// client that stopped reading: its socket is full). The connection is
    /// then closed: a stream's own lifetime and idle time only count while
    /// it can be written, so without this a client that never reads would
    /// hold its stream for as long as it kept the socket. Default: `60s`.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Most connections open at once, whatever they are doing. One more is
    /// answered `503` with `Retry-After` and closed (past 1024 more, closed
    /// at once): the process keeps file descriptors to accept with. Default:
    /// `12000`.
    pub max_connections: usize,
    /// Most connections open at once from one client address (an IPv6
    /// client is its /64). One more is answered `429` with `Retry-After` and
    /// closed. Not applied when `client_ip_header` is set: connections then
    /// come from the proxy. `0`: no limit. Default: `1000`.
    pub max_connections_per_client: usize,
    /// Most streams open at once for one client (its address, or the
    /// address `client_ip_header` names). One more is refused with `429` and
    /// `Retry-After`. `0`: no limit. Default: `500`.
    pub max_streams_per_client: usize,
    /// A request header that names the client's address, set by a trusted
    /// proxy in front of the gateway: `CloudFront-Viewer-Address` behind
    /// CloudFront (`ip:port`), or `X-Forwarded-For` behind a proxy that
    /// appends to it (its last value is used). Only set it when every
    /// request comes through that proxy: a client could otherwise choose its
    /// own address. Without it (or when a request lacks it) the connection's
    /// peer address counts. Default: none.
    pub client_ip_header: Option<String>,
    /// How long shutdown waits for connections to finish after every open
    /// stream was sent its final event, besides `shutdown_grace_per_stream`.
    /// Default: `200ms` (Lambda gives a few hundred milliseconds between
    /// SIGTERM and SIGKILL).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Added to `shutdown_grace` for every stream open when shutdown
    /// starts: writing each stream's final event and closing its connection
    /// takes CPU time (about 23 µs on one core, measured by the attack
    /// suite; the rest is room for a machine shared with other work).
    /// 10,000 streams get 200 ms + 1 s. Default: `100us`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_per_stream: Duration,
    /// Log format: `plain` or `json`. The level comes from `RUST_LOG`.
    /// Default: `plain`.
    pub log_format: LogFormat,
    /// A request header whose value the gateway moves into `Authorization`
    /// (dropping any other `Authorization`) before anything reads it. Behind
    /// CloudFront with Origin Access Control, which overwrites
    /// `Authorization` with its own signature, clients' credentials travel in
    /// `X-Client-Authorization`. Default: none (headers are left as they are).
    pub authorization_source: Option<String>,
    /// Let several gateway processes listen on the same port
    /// (`SO_REUSEPORT`); the kernel spreads new connections over them. Use it
    /// to go past one process's open-file limit on one machine. Default:
    /// `false`.
    pub reuse_port: bool,
    /// Where the Prometheus metrics can be read: a listener of their own,
    /// and/or a token-protected path on the public port. Default: nowhere.
    pub metrics: MetricsConfig,
    /// The console's index page of routes and publish paths. Default: off.
    pub console: ConsoleConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(10),
            max_streams: 10_000,
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 32 * 1024,
            keep_alive_timeout: Duration::from_secs(65),
            send_timeout: Duration::from_secs(60),
            max_connections: 12_000,
            max_connections_per_client: 1000,
            max_streams_per_client: 500,
            client_ip_header: None,
            shutdown_grace: Duration::from_millis(200),
            shutdown_grace_per_stream: Duration::from_micros(100),
            log_format: LogFormat::Plain,
            authorization_source: None,
            reuse_port: false,
            metrics: MetricsConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// The smallest `server.max_head_bytes`: a request line and a few headers.
const MIN_HEAD_BYTES: usize = 1024;
/// The largest `server.max_head_bytes`.
const MAX_HEAD_BYTES: usize = 1 << 20;

/// `[lambda]`: running on AWS Lambda.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LambdaConfig {
    /// How the binary serves: `http` (listen on `server.host:port`, also
    /// under the Lambda Web Adapter), `native` (take invocations from the
    /// Lambda Runtime API with response streaming, no adapter), or `auto`:
    /// `native` when `AWS_LAMBDA_RUNTIME_API` is set and no adapter is
    /// present (no `AWS_LWA_*` variable, no `AWS_LAMBDA_EXEC_WRAPPER`, no
    /// `/opt/extensions/lambda-adapter`), else `http`. Default: `auto`.
    pub mode: LambdaMode,
    /// The function's timeout. Every stream then ends `deadline_margin`
    /// before it, with a `gateway.close` event carrying its last id, so that
    /// clients resume on a fresh invocation. Where the invocation's own
    /// deadline is known (always in `native` mode; from the adapter's
    /// `x-amzn-lambda-context` header under it) the earlier of the two
    /// counts. Default: none.
    #[serde(with = "humantime_serde")]
    pub function_timeout: Option<Duration>,
    /// How long before the invocation's deadline streams end.
    /// Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub deadline_margin: Duration,
    /// The most bytes one streamed response of a Lambda invocation carries:
    /// Lambda cuts a streamed response at 200 MB without a word, so the
    /// gateway ends it first, with a `gateway.close` event (reason
    /// `response_cap`) and its last id, and the client resumes on a fresh
    /// invocation. Counts every byte of the body (events, heartbeats, the
    /// final event). Applies to streams of Lambda invocations only.
    /// Default: 190000000 (10 MB under the cap).
    pub max_response_bytes: u64,
}

/// Lambda's cap on one streamed response (bytes).
pub const LAMBDA_RESPONSE_CAP: u64 = 200_000_000;
/// The smallest `lambda.max_response_bytes`.
const MIN_RESPONSE_BYTES: u64 = 4096;

impl Default for LambdaConfig {
    fn default() -> Self {
        Self {
            mode: LambdaMode::Auto,
            function_timeout: None,
            deadline_margin: Duration::from_secs(10),
            max_response_bytes: LAMBDA_RESPONSE_CAP - 10_000_000,
        }
    }
}

/// `[cloudfront]`: what the distribution in front enforces.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CloudFrontConfig {
    /// The origin's `ResponseCompletionTimeout`: CloudFront cuts a response
    /// that lasts longer. Every stream then ends `completion_margin` before
    /// it (its lifetime is the smallest of this, the Lambda deadline and the
    /// route's `max_lifetime`), with a `gateway.close` event and its last
    /// id. Default: none (CloudFront enforces none unless set).
    #[serde(with = "humantime_serde")]
    pub response_completion_timeout: Option<Duration>,
    /// How long before the completion timeout streams end: CloudFront's
    /// clock starts before the gateway sees the request (the edge
    /// functions, a Lambda cold start), so leave room for those.
    /// Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub completion_margin: Duration,
}

impl Default for CloudFrontConfig {
    fn default() -> Self {
        Self {
            response_completion_timeout: None,
            completion_margin: Duration::from_secs(10),
        }
    }
}

/// How the binary serves; see [`LambdaConfig::mode`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LambdaMode {
    /// `native` inside Lambda without an adapter, `http` otherwise.
    #[default]
    Auto,
    /// Listen on `server.host:port`.
    Http,
    /// Serve Lambda invocations through the Runtime API.
    Native,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[routes.NAME]`: one path that streams events from one or more backends.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path, with `{name}` parameters (`/jobs/{id}`) or a final
    /// `{*rest}` catch-all. Required.
    pub path: String,
    /// Methods the route answers; `HEAD` is answered wherever `GET` is.
    /// Default: `["GET", "POST"]`.
    #[serde(default = "default_methods")]
    pub methods: Vec<RouteMethod>,
    /// The backends, by name. The name tags every event from that backend
    /// (`source`) and keys its part of a merged stream's `Last-Event-ID`.
    /// At least one. Required.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// What a backend failing mid-stream does to the others: `continue`
    /// (an error event, the others go on) or `abort` (an error event, then the
    /// stream ends). Default: `continue`.
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// Whether events are wrapped in an envelope
    /// `{"id":…,"event":…,"source":…,"data":…}` (the NDJSON line and the SSE
    /// `data`): `auto` (only when the route has several backends), `always`,
    /// `never`. Without it an NDJSON line is the event's data alone.
    /// Default: `auto`.
    #[serde(default)]
    pub envelope: Envelope,
    /// Longest silence before a heartbeat is sent (an SSE comment, or
    /// `ndjson_heartbeat`). Keep it well under any proxy's idle timeout
    /// (CloudFront's origin timeout is 30 s). Default: `15s`.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// The line an NDJSON stream sends as a heartbeat: one JSON value on one
    /// line. Default: `{"event":"gateway.heartbeat"}`.
    #[serde(default = "default_ndjson_heartbeat")]
    pub ndjson_heartbeat: String,
    /// Reconnection delay the SSE stream asks `EventSource` to use (`retry:`).
    /// Default: `3s`.
    #[serde(default = "default_retry", with = "humantime_serde")]
    pub retry: Duration,
    /// Longest a stream stays open; then it ends with a `gateway.close`
    /// event carrying the last id, and `EventSource` resumes from there.
    /// Default: `1h`.
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Longest a stream stays open without an event from its backends
    /// (heartbeats do not count); then it ends as at `max_lifetime`.
    /// Default: `10m`.
    #[serde(default = "default_max_idle", with = "humantime_serde")]
    pub max_idle: Duration,
    /// Longest time the backends may take to open (connect, subscribe); a
    /// backend that takes longer fails the request with 504. Default: `10s`.
    #[serde(default = "default_open_timeout", with = "humantime_serde")]
    pub open_timeout: Duration,
    /// How long an event may wait to be written together with the ones
    /// after it. `0s` writes each event as it comes. More makes the first
    /// event after a write wait that long, and what comes meanwhile go in
    /// the same write: fewer system calls and wake-ups, so less CPU per
    /// delivery where many clients read busy streams, each event reaching
    /// them up to that much later. A stream's first bytes are never held,
    /// nor anything once it closes. At most `1s`, and under `heartbeat`
    /// and `max_idle`. Default: `0s`.
    #[serde(default, with = "humantime_serde")]
    pub write_delay: Duration,
    /// Request headers passed on to the backends; no other header reaches
    /// them. Default: none.
    #[serde(default)]
    pub pass_headers: Vec<String>,
    /// Headers added to every stream response of the route. Default: none
    /// (the built-in reference route sets the reference system's
    /// `X-AggregateInfo-Result: OK`).
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Cross-origin access for browsers on other origins. Default: none
    /// (browsers keep pages of other origins out).
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Who may read the route (`[routes.NAME.auth]`): anyone, holders of a
    /// static bearer token, or of a JWT. Default: anyone.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Durable jobs (`[routes.NAME.durable]`): the route's one producing
    /// backend runs once per job, its events kept on a bus that clients
    /// read, resume and watch from any instance (see
    /// [`backends::durable`]). Default: none.
    #[serde(default)]
    pub durable: Option<DurableConfig>,
}

/// `[routes.NAME.cors]`: which other origins' pages may read the route.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// The origins allowed (`https://app.example.com`), or `["*"]` for any
    /// (not with `credentials`). Required.
    pub origins: Vec<String>,
    /// Whether pages may send cookies and credentials (`EventSource`'s
    /// `withCredentials`). Default: `false`.
    #[serde(default)]
    pub credentials: bool,
    /// Request headers pages may send. Default: `Accept`, `Content-Type`,
    /// `Last-Event-ID`, `Authorization`.
    #[serde(default = "default_cors_allow_headers")]
    pub allow_headers: Vec<String>,
    /// Response headers pages may read. Default: `X-Request-Host`,
    /// `X-Request-Id`, `Gateway-Job-Id`.
    #[serde(default = "default_cors_expose_headers")]
    pub expose_headers: Vec<String>,
    /// How long browsers may keep a preflight's answer. Default: `10m`.
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

impl CorsConfig {
    /// Every problem, keys relative to the `cors` table.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let any = self.origins.iter().any(|o| o == "*");
        if self.origins.is_empty() {
            problems.push((
                "origins".into(),
                "name at least one origin, or \"*\"".into(),
            ));
        }
        if any && self.origins.len() > 1 {
            problems.push(("origins".into(), "\"*\" stands alone".into()));
        }
        if any && self.credentials {
            problems.push((
                "credentials".into(),
                "browsers refuse credentials with any origin (\"*\"): name the origins".into(),
            ));
        }
        for origin in self.origins.iter().filter(|o| *o != "*") {
            let plain = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && HeaderValue::try_from(origin.as_str()).is_ok();
            if !plain {
                problems.push((
                    "origins".into(),
                    format!("{origin:?} is not an origin (scheme://host[:port], no path)"),
                ));
            }
        }
        for (field, names) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for name in names {
                if name == "*" || HeaderName::try_from(name.as_str()).is_err() {
                    problems.push((field.into(), format!("{name:?} is not a header name")));
                }
            }
        }
        problems
    }
}

fn default_cors_allow_headers() -> Vec<String> {
    ["accept", "content-type", "last-event-id", "authorization"]
        .map(String::from)
        .to_vec()
}
fn default_cors_expose_headers() -> Vec<String> {
    ["x-request-host", "x-request-id", "gateway-job-id"]
        .map(String::from)
        .to_vec()
}
fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

impl RouteConfig {
    /// A route on `path` with every option at its default and no backends.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            methods: default_methods(),
            backends: BTreeMap::new(),
            on_error: ErrorPolicy::default(),
            envelope: Envelope::default(),
            heartbeat: default_heartbeat(),
            ndjson_heartbeat: default_ndjson_heartbeat(),
            retry: default_retry(),
            max_lifetime: default_max_lifetime(),
            max_idle: default_max_idle(),
            open_timeout: default_open_timeout(),
            write_delay: Duration::ZERO,
            pass_headers: Vec::new(),
            response_headers: BTreeMap::new(),
            cors: None,
            auth: AuthConfig::default(),
            durable: None,
        }
    }
}

/// A method a route answers (the config's one method type).
pub use backends::method::HttpMethod as RouteMethod;

/// What a backend's mid-stream failure does to the route's stream.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum ErrorPolicy {
    /// Send an error event; the other backends go on.
    #[default]
    Continue,
    /// Send an error event, then end the stream.
    Abort,
}

/// When events are wrapped in an envelope.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Envelope {
    /// When the route has several backends, so each event says its source.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never: an NDJSON line, and an SSE `data`, is the event's data alone.
    Never,
}

/// Parses the small enums above from their names, with an error that lists
/// the accepted ones (the config crate's own message for enums is obscure).
macro_rules! named {
    ($ty:ty { $($name:literal => $variant:expr),+ $(,)? }) => {
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(name: String) -> Result<Self, String> {
                match name.as_str() {
                    $($name => Ok($variant),)+
                    _ => Err(format!(
                        "unknown value {name:?}; expected one of {}",
                        [$(concat!("\"", $name, "\"")),+].join(", ")
                    )),
                }
            }
        }
    };
}

named!(LogFormat { "plain" => LogFormat::Plain, "json" => LogFormat::Json });
named!(LambdaMode {
    "auto" => LambdaMode::Auto,
    "http" => LambdaMode::Http,
    "native" => LambdaMode::Native,
});
named!(ErrorPolicy { "continue" => ErrorPolicy::Continue, "abort" => ErrorPolicy::Abort });
named!(Envelope {
    "auto" => Envelope::Auto,
    "always" => Envelope::Always,
    "never" => Envelope::Never,
});

fn default_methods() -> Vec<RouteMethod> {
    vec![RouteMethod::Get, RouteMethod::Post]
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_ndjson_heartbeat() -> String {
    r#"{"event":"gateway.heartbeat"}"#.into()
}
fn default_retry() -> Duration {
    Duration::from_secs(3)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_open_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The largest heartbeat, retry, lifetime or idle time accepted: a week.
/// Anything longer is a unit typo (`15000s` for `15000ms`).
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest heartbeat, lifetime, idle or open time accepted.
const MIN_DURATION: Duration = Duration::from_millis(10);

/// The longest `write_delay` accepted: past it, clients would see events
/// late enough to notice.
const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);

/// Lambda's longest function timeout.
const LAMBDA_MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Response headers the gateway sets itself, which a route cannot override.
const GATEWAY_HEADERS: [&str; 9] = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "cache-control",
    "vary",
    "x-accel-buffering",
    "x-request-host",
];

/// Why a route or backend name was refused.
const NAME_RULE: &str = "names are lowercase letters, digits, `_` and `-` \
    (so that GATEWAY__… environment variables, which are case-blind, can name them)";

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The path the adapter's readiness check and load balancers use.
pub const HEALTH_PATH: &str = "/healthz";

impl GatewayConfig {
    /// Checks what the types alone cannot, returning every problem with its
    /// full key (`routes.api.heartbeat`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut push =
            |key: &str, reason: &str| problems.push((key.to_string(), reason.to_string()));
        if self.server.max_body_bytes == 0 {
            push("server.max_body_bytes", "must be at least 1");
        }
        if self.server.body_timeout.is_zero()
            || self.server.body_timeout > Duration::from_secs(3600)
        {
            push("server.body_timeout", "must be more than 0s and at most 1h");
        }
        if self.server.max_streams == 0 {
            push("server.max_streams", "must be at least 1");
        }
        if self.server.shutdown_grace > Duration::from_secs(60) {
            push("server.shutdown_grace", "must be at most 60s");
        }
        if self.server.shutdown_grace_per_stream > Duration::from_millis(10) {
            push("server.shutdown_grace_per_stream", "must be at most 10ms");
        }
        for (key, timeout) in [
            ("server.head_timeout", self.server.head_timeout),
            ("server.keep_alive_timeout", self.server.keep_alive_timeout),
            ("server.send_timeout", self.server.send_timeout),
        ] {
            if timeout.is_zero() || timeout > Duration::from_secs(3600) {
                push(key, "must be more than 0s and at most 1h");
            }
        }
        if !(MIN_HEAD_BYTES..=MAX_HEAD_BYTES).contains(&self.server.max_head_bytes) {
            push(
                "server.max_head_bytes",
                "must be from 1024 to 1048576 (1 KiB to 1 MiB)",
            );
        }
        if self.server.max_connections == 0 {
            push("server.max_connections", "must be at least 1");
        }
        if let Some(name) = &self.server.client_ip_header {
            if HeaderName::try_from(name.as_str()).is_err() {
                push("server.client_ip_header", "is not a valid header name");
            }
        }
        if let Some(name) = &self.server.authorization_source {
            if HeaderName::try_from(name.as_str()).is_err() {
                push("server.authorization_source", "is not a valid header name");
            } else if name.eq_ignore_ascii_case("authorization") {
                push(
                    "server.authorization_source",
                    "must name another header than Authorization",
                );
            }
        }
        if let Some(timeout) = self.lambda.function_timeout {
            if timeout < Duration::from_secs(1) || timeout > LAMBDA_MAX_TIMEOUT {
                push(
                    "lambda.function_timeout",
                    "must be from 1s to 15m (Lambda's longest timeout)",
                );
            } else if self.lambda.deadline_margin >= timeout {
                push(
                    "lambda.deadline_margin",
                    "must be shorter than lambda.function_timeout",
                );
            }
        }
        if self.lambda.deadline_margin > Duration::from_secs(300) {
            push("lambda.deadline_margin", "must be at most 5m");
        }
        if !(MIN_RESPONSE_BYTES..=LAMBDA_RESPONSE_CAP).contains(&self.lambda.max_response_bytes) {
            push(
                "lambda.max_response_bytes",
                "must be from 4096 to 200000000 (Lambda's cap on a streamed response)",
            );
        }
        if let Some(timeout) = self.cloudfront.response_completion_timeout {
            if self.cloudfront.completion_margin >= timeout {
                push(
                    "cloudfront.completion_margin",
                    "must be shorter than cloudfront.response_completion_timeout",
                );
            }
        }
        if self.routes.is_empty() {
            push("routes", "there must be at least one route");
        }
        let mut paths = matchit::Router::new();
        for (name, route) in &self.routes {
            let key = |field: &str| format!("routes.{name}.{field}");
            if !is_plain_name(name) {
                problems.push((format!("routes.{name}"), NAME_RULE.into()));
            }
            let route_problems = route.validate();
            if !route_problems.iter().any(|(field, _)| field == "path") {
                if let Err(e) = paths.insert(route.path.as_str(), ()) {
                    problems.push((key("path"), path_conflict(&e, &self.routes)));
                }
            }
            problems.extend(
                route_problems
                    .into_iter()
                    .map(|(field, reason)| (key(&field), reason)),
            );
            if route.backends.is_empty() {
                problems.push((
                    key("backends"),
                    "the route needs at least one backend".into(),
                ));
            }
            for (backend, config) in &route.backends {
                if !is_plain_name(backend) {
                    problems.push((key(&format!("backends.{backend}")), NAME_RULE.into()));
                }
                for p in config.validate() {
                    problems.push((key(&format!("backends.{backend}.{}", p.key)), p.reason));
                }
            }
        }
        if self.server.reuse_port && self.server.metrics.listen.is_some() {
            problems.push((
                "server.metrics.listen".into(),
                "cannot be used with server.reuse_port: each process keeps its own counts and \
                 only one could listen there; use server.metrics.path with tokens instead"
                    .into(),
            ));
        }
        problems.extend(
            self.server
                .metrics
                .validate()
                .into_iter()
                .map(|(field, reason)| (format!("server.metrics.{field}"), reason)),
        );
        if let Some(reason) = self
            .server
            .metrics
            .path
            .as_deref()
            .and_then(|path| metrics_path_taken(path, &self.routes, &self.publish))
        {
            problems.push(("server.metrics.path".into(), reason));
        }
        for (name, publish) in &self.publish {
            let key = |field: &str| format!("publish.{name}.{field}");
            if !is_plain_name(name) {
                problems.push((format!("publish.{name}"), NAME_RULE.into()));
            }
            match check_path(&publish.path) {
                Err(reason) => problems.push((key("path"), reason)),
                Ok(()) => {
                    if let Err(e) = paths.insert(publish.path.as_str(), ()) {
                        problems.push((key("path"), path_conflict(&e, &self.routes)));
                    }
                }
            }
            if let Some(reason) = check_static_tokens(&publish.tokens) {
                problems.push((key("tokens"), reason));
            }
            match &publish.target {
                None => problems.push((key("target"), "required: where events go".into())),
                Some(target) => {
                    for p in target.validate() {
                        problems.push((key(&format!("target.{}", p.key)), p.reason));
                    }
                }
            }
        }
        problems
    }
}

impl RouteConfig {
    /// Checks the route's own options (not its backends), returning every
    /// problem with its key relative to the route.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(reason) = check_path(&self.path) {
            problems.push(("path".into(), reason));
        }
        if self.methods.is_empty() {
            problems.push(("methods".into(), "must name at least one method".into()));
        }
        for (field, value) in [
            ("heartbeat", self.heartbeat),
            ("retry", self.retry),
            ("max_lifetime", self.max_lifetime),
            ("max_idle", self.max_idle),
            ("open_timeout", self.open_timeout),
        ] {
            if value > MAX_DURATION {
                problems.push((field.into(), "must be at most 7days".into()));
            } else if value < MIN_DURATION && field != "retry" {
                problems.push((field.into(), "must be at least 10ms".into()));
            }
        }
        if let Err(reason) = check_heartbeat_line(&self.ndjson_heartbeat) {
            problems.push(("ndjson_heartbeat".into(), reason));
        }
        if self.write_delay > MAX_WRITE_DELAY {
            problems.push(("write_delay".into(), "must be at most 1s".into()));
        } else if !self.write_delay.is_zero()
            && self.write_delay >= self.heartbeat.min(self.max_idle)
        {
            problems.push((
                "write_delay".into(),
                format!(
                    "must be under heartbeat ({:?}) and max_idle ({:?})",
                    self.heartbeat, self.max_idle
                ),
            ));
        }
        if let Some(cors) = &self.cors {
            problems.extend(
                cors.validate()
                    .into_iter()
                    .map(|(field, reason)| (format!("cors.{field}"), reason)),
            );
        }
        problems.extend(
            self.auth
                .validate(&self.path)
                .into_iter()
                .map(|(field, reason)| (format!("auth.{field}"), reason)),
        );
        for header in &self.pass_headers {
            if HeaderName::try_from(header.as_str()).is_err() {
                problems.push((
                    "pass_headers".into(),
                    format!("{header:?} is not a valid header name"),
                ));
            } else if self.auth.kind != AuthType::None && self.auth.carries_credential(header) {
                problems.push((
                    "pass_headers".into(),
                    format!(
                        "{header:?} carries the client's credential for this route's auth: \
                         backends must not receive it"
                    ),
                ));
            }
        }
        for (header, value) in &self.response_headers {
            let field = format!("response_headers.{header}");
            if HeaderName::try_from(header.as_str()).is_err() {
                problems.push((field, "is not a valid header name".into()));
            } else if GATEWAY_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(header))
            {
                problems.push((field, "is set by the gateway on every stream".into()));
            } else if HeaderValue::try_from(value.as_str()).is_err() {
                problems.push((
                    field,
                    "is not a valid header value (no control characters)".into(),
                ));
            }
        }
        if let Some(durable) = &self.durable {
            problems.extend(
                durable
                    .validate()
                    .into_iter()
                    .map(|p| (format!("durable.{}", p.key), p.reason)),
            );
            if self.backends.len() > 1 {
                problems.push((
                    "backends".into(),
                    "a durable route runs one producing backend per job; it has several".into(),
                ));
            }
            if let Some(name) = self
                .backends
                .iter()
                .find_map(|(name, b)| b.job_log().map(|_| name))
            {
                problems.push((
                    "durable".into(),
                    format!("backend {name} reads a bus: its events are kept there already"),
                ));
            }
        }
        problems
    }
}

/// The most `{` a path may hold (its parameters; the router panics past
/// 26).
pub const MAX_PATH_PARAMS: usize = 16;

/// Whether the router can take `path` without panicking.
fn few_enough_params(path: &str) -> bool {
    path.matches('{').count() <= MAX_PATH_PARAMS
}

/// Checks a route path before it reaches the router, which would otherwise
/// refuse it later.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with `/`"));
    }
    if !few_enough_params(path) {
        return Err(format!(
            "{}: at most {MAX_PATH_PARAMS} parameters (`{{`)",
            Shown(path)
        ));
    }
    if path == HEALTH_PATH {
        return Err(format!("{HEALTH_PATH} is the gateway's health check"));
    }
    if path
        .split('/')
        .any(|s| s.starts_with(':') || s.starts_with('*'))
    {
        return Err(format!(
            "{path:?}: parameters are written `{{name}}` and a catch-all `{{*name}}`"
        ));
    }
    let mut router = matchit::Router::new();
    router
        .insert(path, ())
        .map_err(|e| format!("{path:?} is not a valid path pattern: {e}"))?;
    let names: Vec<&str> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|n| n.trim_start_matches('*'))
        .collect();
    if let Some(twice) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        return Err(format!("{path:?} names the parameter `{twice}` twice"));
    }
    Ok(())
}

/// Why the metrics path cannot be `path`: a stream route or a publish path
/// matches it, and would be shadowed.
fn metrics_path_taken(
    path: &str,
    routes: &BTreeMap<String, RouteConfig>,
    publish: &BTreeMap<String, PublishConfig>,
) -> Option<String> {
    let matches = |pattern: &str| {
        let mut router = matchit::Router::new();
        few_enough_params(pattern) && router.insert(pattern, ()).is_ok() && router.at(path).is_ok()
    };
    let route = routes
        .iter()
        .find(|(_, r)| matches(&r.path))
        .map(|(name, r)| format!("route {name} ({:?})", r.path));
    let publish = || {
        publish
            .iter()
            .find(|(_, p)| matches(&p.path))
            .map(|(name, p)| format!("publish route {name} ({:?})", p.path))
    };
    route
        .or_else(publish)
        .map(|taken| format!("{path:?} is a path of {taken}; the metrics would hide it"))
}

fn path_conflict(error: &matchit::InsertError, routes: &BTreeMap<String, RouteConfig>) -> String {
    match error {
        matchit::InsertError::Conflict { with } => {
            let other = routes
                .iter()
                .find(|(_, r)| &r.path == with)
                .map_or(String::new(), |(n, _)| format!(" (route {n})"));
            format!("conflicts with the path {with:?}{other}")
        }
        other => other.to_string(),
    }
}

fn check_heartbeat_line(line: &str) -> Result<(), String> {
    if line.contains(['\n', '\r']) {
        return Err("must be one line".into());
    }
    serde_json::from_str::<serde_json::Value>(line)
        .map(drop)
        .map_err(|e| format!("must be one JSON value: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> RouteConfig {
        let mut r = RouteConfig::new(path);
        r.backends
            .insert("demo".into(), BackendConfig::Demo(Default::default()));
        r
    }

    #[test]
    fn validation_names_every_problem_with_its_key() {
        let mut bad = route("jobs");
        bad.heartbeat = Duration::ZERO;
        bad.ndjson_heartbeat = "{not json".into();
        bad.pass_headers = vec!["bad header".into()];
        bad.backends.clear();
        let config = GatewayConfig {
            server: ServerConfig {
                max_streams: 0,
                ..ServerConfig::default()
            },
            lambda: LambdaConfig::default(),
            cloudfront: CloudFrontConfig::default(),
            publish: BTreeMap::new(),
            routes: BTreeMap::from([
                ("a".into(), route("/x/{id}")),
                ("b".into(), route("/x/{other}")),
                ("c".into(), bad),
                ("d".into(), route(HEALTH_PATH)),
            ]),
        };
        let keys: Vec<_> = config.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "server.max_streams",
                "routes.b.path",
                "routes.c.path",
                "routes.c.heartbeat",
                "routes.c.ndjson_heartbeat",
                "routes.c.pass_headers",
                "routes.c.backends",
                "routes.d.path",
            ]
        );
    }

    #[test]
    fn names_headers_and_bounds() {
        let mut r = route("/a/{x}/{*x}");
        r.response_headers
            .insert("Content-Type".into(), "text/plain".into());
        r.heartbeat = Duration::from_millis(1);
        r.write_delay = Duration::from_secs(2);
        r.backends
            .insert("Up".into(), BackendConfig::Demo(Default::default()));
        let config = GatewayConfig {
            server: ServerConfig::default(),
            lambda: LambdaConfig::default(),
            cloudfront: CloudFrontConfig::default(),
            publish: BTreeMap::new(),
            routes: BTreeMap::from([("API".into(), r)]),
        };
        let got = config.validate();
        let keys: Vec<_> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes.API",
                "routes.API.path",
                "routes.API.heartbeat",
                "routes.API.write_delay",
                "routes.API.response_headers.Content-Type",
                "routes.API.backends.Up",
            ],
            "{got:?}"
        );
    }

    #[test]
    fn lambda_and_authorization_settings_are_checked() {
        let config = |server: ServerConfig, lambda: LambdaConfig| GatewayConfig {
            server,
            lambda,
            cloudfront: CloudFrontConfig::default(),
            publish: BTreeMap::new(),
            routes: BTreeMap::from([("a".into(), route("/"))]),
        };
        let keys = |c: GatewayConfig| -> Vec<String> {
            c.validate().into_iter().map(|(k, _)| k).collect()
        };
        let timeout = |secs| LambdaConfig {
            function_timeout: Some(Duration::from_secs(secs)),
            ..LambdaConfig::default()
        };
        assert!(keys(config(ServerConfig::default(), timeout(900))).is_empty());
        assert!(keys(config(ServerConfig::default(), timeout(11))).is_empty());
        assert_eq!(
            keys(config(ServerConfig::default(), timeout(10))),
            ["lambda.deadline_margin"]
        );
        assert_eq!(
            keys(config(ServerConfig::default(), timeout(901))),
            ["lambda.function_timeout"]
        );
        let huge_margin = LambdaConfig {
            deadline_margin: Duration::from_secs(301),
            ..LambdaConfig::default()
        };
        assert_eq!(
            keys(config(ServerConfig::default(), huge_margin)),
            ["lambda.deadline_margin"]
        );
        for bytes in [4095, 200_000_001] {
            let cap = LambdaConfig {
                max_response_bytes: bytes,
                ..LambdaConfig::default()
            };
            assert_eq!(
                keys(config(ServerConfig::default(), cap)),
                ["lambda.max_response_bytes"]
            );
        }
        let mut behind = config(ServerConfig::default(), LambdaConfig::default());
        behind.cloudfront.response_completion_timeout = Some(Duration::from_secs(10));
        assert_eq!(keys(behind.clone()), ["cloudfront.completion_margin"]);
        behind.cloudfront.response_completion_timeout = Some(Duration::from_secs(11));
        assert!(keys(behind).is_empty());
        for bad in ["Authorization", "not a header"] {
            let server = ServerConfig {
                authorization_source: Some(bad.into()),
                ..ServerConfig::default()
            };
            assert_eq!(
                keys(config(server, LambdaConfig::default())),
                ["server.authorization_source"],
                "{bad}"
            );
        }
        assert!(LambdaMode::try_from("lambda".to_string()).is_err());
    }

    #[test]
    fn old_style_parameters_are_explained() {
        let err = check_path("/jobs/:id").unwrap_err();
        assert!(err.contains("{name}"), "{err}");
        assert!(check_path("/jobs/{id}/{*rest}").is_ok());
    }

    /// Found by the `config` fuzz target: a path with more than 26
    /// parameters made the router panic while the config was validated.
    #[test]
    fn a_path_with_too_many_parameters_is_a_problem_not_a_panic() {
        let many: String = (0..27).map(|i| format!("/{{p{i}}}")).collect();
        let err = check_path(&many).unwrap_err();
        assert!(err.contains("at most 16 parameters"), "{err}");
        let sixteen: String = (0..16).map(|i| format!("/{{p{i}}}")).collect();
        assert!(check_path(&sixteen).is_ok());

        let text = format!(
            "[server.metrics]\npath = \"/metrics\"\ntokens = [\"metrics-token-0123456789\"]\n\
             [routes.many]\npath = \"{many}\"\n[routes.many.backends.d]\ntype = \"demo\"\n\
             [publish.many]\npath = \"/p{many}\"\ntokens = [\"publish-token-0123456789\"]\n\
             [publish.many.target]\ntype = \"redis\"\nstream = \"s\"\n"
        );
        let err = load::load(
            load::Source::Text {
                origin: "many.toml",
                text: &text,
            },
            Some(Default::default()),
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"routes.many.path"), "{err}");
        assert!(keys.contains(&"publish.many.path"), "{err}");
    }
}
