//! `http`: events from an upstream HTTP endpoint that streams Server-Sent
//! Events, NDJSON or plain lines, re-encoded as whatever the client
//! negotiated. This is how the gateway fronts an LLM API or any streaming
//! service and serves it in both formats.
//!
//! ```toml
//! [routes.chat]
//! path = "/chat/{model}"
//! methods = ["POST"]
//! pass_headers = ["X-Request-Id"]
//!
//! [routes.chat.backends.llm]
//! type = "http"
//! url = "https://llm.example.com/v1/{model}/stream"   # {model} from the path
//! headers = { Authorization = "Bearer ${LLM_API_KEY}" } # from the environment
//! forward_headers = ["X-Request-Id"]                   # must be in pass_headers
//! ```
//!
//! What it does, in order:
//!
//! - **Opening** sends the request (the client's method unless `method` is
//!   set, the client's JSON body byte for byte, the configured and forwarded
//!   headers, the client's `Last-Event-ID`) and waits for the response
//!   headers, at most `connect_timeout`. So what fails before the first byte
//!   is a real status: no connection or an upstream 4xx/5xx is 502 (the
//!   message has the upstream's status and the start of its body), no
//!   answer in time is 504, an upstream 204 is 204.
//! - **Decoding**: the format is `format`, or with `auto` the upstream's
//!   `Content-Type`: `text/event-stream` is SSE; `application/x-ndjson`,
//!   `application/jsonl` and `application/json` are NDJSON; anything else is
//!   lines of text. An SSE event keeps its `id`, its `event` type (the
//!   default `message` is no name) and its data (JSON when it parses, else
//!   text); SSE comments are dropped (the gateway sends its own heartbeats).
//!   An NDJSON line is the event's JSON data, with an id and a name from
//!   `id_field` and `name_field` when set. A text line is a text event; empty
//!   lines are skipped. Each event is passed on as soon as its line or block
//!   is complete; nothing longer than `max_line_bytes` is held, and a longer
//!   line or event is skipped with an error event.
//! - **Reconnecting**: when the connection fails, or no byte comes for
//!   `idle_timeout`, the backend reconnects after a backoff (`backoff`,
//!   doubling, at most `max_backoff`, with jitter; an SSE `retry:` from the
//!   upstream replaces `backoff`), sending the last id it saw as
//!   `Last-Event-ID`, so the client sees every event once. It makes at most
//!   `retries` attempts in a row; the count starts over once an event
//!   arrives. An event that repeats that last id right after a reconnect
//!   (servers that resume *from* the id, not after it) is dropped. When the
//!   upstream's events have no ids (or events came after the last id) a
//!   reconnect would repeat them, so the stream ends with an error event
//!   instead. The same happens when the attempts are spent, or an attempt is
//!   refused with a 4xx other than 408 and 429. An upstream that answers a
//!   reconnect with 204 has nothing more: the stream ends.
//! - **Ending**: a clean end of the upstream's body ends the stream. A
//!   client that goes away drops the stream, which drops the upstream
//!   request and closes its connection at once.
//!
//! Error messages, which clients see, never name the upstream's address (the
//! `source` of an error event names the backend); the logs do.
//!
//! Redirects are followed within the URL's origin only (at most 5), so
//! configured credentials never reach another host. Proxies come from the
//! usual `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` variables. TLS is rustls with
//! the system's CA certificates (`SSL_CERT_FILE` adds a private CA).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use crate::lines::{Lines, Piece};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Url;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use tokio::time::{Instant, timeout, timeout_at};

use crate::env::expand as expand_env;
use crate::json::{Key, Scalar, Shape};
use crate::problem::Problem;
use crate::template::BodyTemplate;
use crate::{
    Backend, BackendError, BackendStats, Data, Encodings, ErrorKind, Event, EventStream,
    RequestContext,
};

/// Configuration of the `http` backend.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The upstream URL, `http://` or `https://`. `{name}` placeholders in
    /// its path and query are filled with the route's path parameters,
    /// percent-encoded (a parameter that is `.` or `..` is refused with 400);
    /// the scheme, host and port are fixed here and never come from the
    /// request. Required.
    pub url: String,
    /// The upstream request's method: `GET`, `POST`, `PUT`, `PATCH` or
    /// `DELETE`. Default: the client's method.
    #[serde(default)]
    pub method: Option<UpstreamMethod>,
    /// What the upstream streams: `sse`, `ndjson`, `lines` (each line a text
    /// event), or `auto`: from the response's `Content-Type`
    /// (`text/event-stream` is SSE; `application/x-ndjson`,
    /// `application/jsonl` and `application/json` are NDJSON; anything else
    /// is lines). Default: `auto`.
    #[serde(default)]
    pub format: UpstreamFormat,
    /// Headers sent upstream, by name. `${NAME}` in a value is replaced with
    /// the environment variable `NAME` when the config is loaded (a variable
    /// that is not set, or empty, is a config error), so that API keys stay
    /// out of config files; `$${` is a literal `${`. `Accept` and
    /// `Content-Type` here replace the backend's own. `Host`,
    /// `Content-Length`, `Last-Event-ID` and connection headers are the
    /// backend's to set. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request headers of the client sent upstream as they came. Each must
    /// also be in the route's `pass_headers`, which decides what reaches any
    /// backend; a name missing there is never forwarded. A name cannot be in
    /// both `headers` and `forward_headers`. Default: none.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Whether the client's JSON body is sent upstream, byte for byte as the
    /// client sent it (as `application/json`). No body is sent with `GET`.
    /// Default: `true`.
    #[serde(default = "default_forward_body")]
    pub forward_body: bool,
    /// Longest wait for the upstream's response headers, from connecting to
    /// the status line, on opening and on every reconnect; past it opening
    /// fails with 504. Keep it under the route's `open_timeout` (10 s), which
    /// bounds opening as a whole. Default: `5s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest time without a byte from the upstream mid-stream; then the
    /// connection counts as dropped (and is reconnected, see `retries`).
    /// Keep it above the upstream's heartbeat interval. Default: `60s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Reconnection attempts in a row after the upstream drops, before the
    /// stream ends with an error event; the count starts over once an event
    /// arrives. `0` never reconnects. Default: `3`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first reconnection attempt, doubled for each further
    /// one (with jitter: between half and all of it). An SSE upstream's
    /// `retry:` replaces it. Default: `500ms`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest wait between reconnection attempts. Default: `10s`.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Longest line (NDJSON, lines) or SSE line and event data, in bytes. A
    /// longer one is skipped with an error event, so an upstream can never
    /// make the gateway hold more. From 64 to 67108864 (64 MiB).
    /// Default: `1048576` (1 MiB).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// NDJSON: the top-level field of each line that holds the event's id (a
    /// string or a number), which makes a stream resumable. Default: none.
    #[serde(default)]
    pub id_field: Option<String>,
    /// NDJSON: the top-level field of each line that holds the event's name
    /// (a string). Default: none.
    #[serde(default)]
    pub name_field: Option<String>,
    /// The upstream request's JSON body, made from the client's: a JSON
    /// value (a TOML table) whose strings may hold `{{/pointer}}`
    /// placeholders, filled from the client's JSON body (see
    /// [`crate::template`]): `{ model = "m", stream = true, messages =
    /// [{ role = "user", content = "{{/prompt}}" }] }`. A client body that
    /// lacks a pointer is refused with 400. Sent instead of the client's
    /// body (`forward_body` does not apply). Default: none.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// A JSON pointer (RFC 6901) into each upstream event's JSON data: the
    /// value there is the event's data (an LLM API's token:
    /// `/choices/0/delta/content`), and an event without it (a role-only
    /// or a final chunk) is skipped. Default: none (the whole event).
    #[serde(default)]
    pub data_pointer: Option<String>,
    /// An upstream event whose data is exactly this text ends the stream, as
    /// its body's end would (OpenAI's `[DONE]`). Default: none.
    #[serde(default)]
    pub end_sentinel: Option<String>,
}

fn default_forward_body() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_millis(500)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_max_line_bytes() -> usize {
    1 << 20
}

impl HttpConfig {
    /// A config for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: None,
            format: UpstreamFormat::Auto,
            headers: BTreeMap::new(),
            forward_headers: Vec::new(),
            forward_body: default_forward_body(),
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            retries: default_retries(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            max_line_bytes: default_max_line_bytes(),
            id_field: None,
            name_field: None,
            body: None,
            data_pointer: None,
            end_sentinel: None,
        }
    }
}

/// The method of the upstream request (the config's one method type).
pub use crate::method::HttpMethod as UpstreamMethod;

/// What the upstream streams.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum UpstreamFormat {
    /// From the response's `Content-Type`.
    #[default]
    Auto,
    /// Server-Sent Events.
    Sse,
    /// One JSON value per line.
    Ndjson,
    /// One text event per line.
    Lines,
}

impl TryFrom<String> for UpstreamFormat {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Ok(match name.as_str() {
            "auto" => Self::Auto,
            "sse" => Self::Sse,
            "ndjson" => Self::Ndjson,
            "lines" => Self::Lines,
            _ => {
                return Err(format!(
                    "unknown value {name:?}; expected one of \"auto\", \"sse\", \"ndjson\", \"lines\""
                ));
            }
        })
    }
}

/// A format as decoded: `auto` resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Sse,
    Ndjson,
    Lines,
}

impl Wire {
    /// The format `auto` picks for a response's `Content-Type`.
    fn detect(content_type: Option<&HeaderValue>) -> Self {
        let essence = content_type
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match essence.as_str() {
            "text/event-stream" => Self::Sse,
            "application/x-ndjson" | "application/jsonl" | "application/json" => Self::Ndjson,
            _ => Self::Lines,
        }
    }
}

/// Headers the backend sets itself, or that belong to one connection.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "last-event-id",
];

const MIN_TIMEOUT: Duration = Duration::from_millis(10);
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
const MAX_RETRIES: u32 = 100;
const LINE_BYTES: std::ops::RangeInclusive<usize> = 64..=64 << 20;
/// Most redirects followed (within the origin).
const MAX_REDIRECTS: usize = 5;
/// How much of an upstream's error body goes into the message.
const EXCERPT_BYTES: usize = 512;
const EXCERPT_CHARS: usize = 200;
/// Longest wait for an upstream's error body.
const EXCERPT_WAIT: Duration = Duration::from_secs(1);

impl HttpConfig {
    pub(crate) fn validate(&self) -> Vec<Problem> {
        self.validate_with(&|name| std::env::var(name).ok())
    }

    /// [`validate`](Self::validate) with `env` as the environment.
    fn validate_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(reason) = UrlTemplate::parse(&self.url) {
            problems.push(Problem::new("url", reason));
        }
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            if let Err(reason) = check_header_name(name) {
                problems.push(Problem::new(key, reason));
                continue;
            }
            match expand_env(value, env) {
                Err(reason) => problems.push(Problem::new(key, reason)),
                Ok(expanded) => {
                    if HeaderValue::try_from(expanded).is_err() {
                        problems.push(Problem::new(
                            key,
                            "is not a valid header value (no control characters or line breaks, also in what ${…} expands to)",
                        ));
                    }
                }
            }
        }
        for name in &self.forward_headers {
            if let Err(reason) = check_header_name(name) {
                problems.push(Problem::new(
                    "forward_headers",
                    format!("{name:?} {reason}"),
                ));
            } else if self.headers.keys().any(|h| h.eq_ignore_ascii_case(name)) {
                problems.push(Problem::new(
                    "forward_headers",
                    format!("{name:?} is also set in `headers`; keep one"),
                ));
            }
        }
        let timeouts = [
            (
                "connect_timeout",
                self.connect_timeout,
                MAX_CONNECT_TIMEOUT,
                "10m",
            ),
            ("idle_timeout", self.idle_timeout, MAX_IDLE_TIMEOUT, "1day"),
        ];
        for (key, value, max, max_text) in timeouts {
            if value < MIN_TIMEOUT || value > max {
                problems.push(Problem::new(
                    key,
                    format!("must be from 10ms to {max_text}"),
                ));
            }
        }
        if self.retries > MAX_RETRIES {
            problems.push(Problem::new("retries", "must be at most 100"));
        }
        if self.backoff.is_zero() || self.backoff > MAX_BACKOFF {
            problems.push(Problem::new(
                "backoff",
                "must be more than 0s and at most 10m",
            ));
        }
        if self.max_backoff < self.backoff || self.max_backoff > MAX_BACKOFF {
            problems.push(Problem::new(
                "max_backoff",
                "must be at least `backoff` and at most 10m",
            ));
        }
        if !LINE_BYTES.contains(&self.max_line_bytes) {
            problems.push(Problem::new(
                "max_line_bytes",
                "must be from 64 to 67108864 (64 MiB)",
            ));
        }
        for (key, field) in [
            ("id_field", &self.id_field),
            ("name_field", &self.name_field),
        ] {
            match field {
                Some(f) if f.is_empty() => {
                    problems.push(Problem::new(key, "must name a field"));
                }
                Some(_) if matches!(self.format, UpstreamFormat::Sse | UpstreamFormat::Lines) => {
                    problems.push(Problem::new(
                        key,
                        "applies to NDJSON upstreams only (format \"ndjson\" or \"auto\")",
                    ));
                }
                _ => {}
            }
        }
        if let Some(body) = &self.body {
            if let Err(reason) = BodyTemplate::new(body.clone()) {
                problems.push(Problem::new("body", reason));
            }
            if self.method == Some(UpstreamMethod::Get) {
                problems.push(Problem::new(
                    "body",
                    "is never sent with method = \"GET\"; use POST",
                ));
            }
        }
        match self.data_pointer.as_deref() {
            Some(p) if !p.is_empty() && !p.starts_with('/') => problems.push(Problem::new(
                "data_pointer",
                "must be a JSON pointer: \"\" or starting with / (\"/choices/0/delta/content\")",
            )),
            _ => {}
        }
        if self.end_sentinel.as_deref() == Some("") {
            problems.push(Problem::new("end_sentinel", "must not be empty"));
        }
        problems
    }
}

fn check_header_name(name: &str) -> Result<(), String> {
    if HeaderName::try_from(name).is_err() {
        return Err("is not a valid header name".into());
    }
    if RESERVED_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
    {
        return Err("is set by the backend itself (Host, Content-Length, Last-Event-ID and connection headers)".into());
    }
    Ok(())
}

/// Characters kept as they are in a filled-in parameter: RFC 3986's
/// unreserved ones. Everything else, `/`, `?`, `#`, `%` and `&` included, is
/// percent-encoded, so a parameter stays inside its path segment or query
/// value.
const PARAM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The upstream URL with its `{name}` placeholders.
#[derive(Clone, Debug)]
struct UrlTemplate {
    parts: Vec<Part>,
    /// `scheme://host:port`, which no parameter can change.
    origin: String,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    Param(String),
}

impl UrlTemplate {
    fn parse(template: &str) -> Result<Self, String> {
        if template.is_empty() {
            return Err("required: the upstream's http:// or https:// URL".into());
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err("has a `}` without its `{`: placeholders are written `{param}`".into());
            }
            let after = &rest[open + 1..];
            let close = after
                .find(['{', '}'])
                .filter(|&c| after[c..].starts_with('}'))
                .ok_or("has a `{` without its `}`: placeholders are written `{param}`")?;
            let name = &after[..close];
            if name.is_empty() || name.contains(['/', '?', '#', '*']) {
                return Err(format!("`{{{name}}}` is not a parameter name"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            parts.push(Part::Param(name.to_string()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        // Placeholders may not reach into the scheme, user, host or port.
        let authority_end = template
            .find("://")
            .map(|at| {
                let from = at + 3;
                from + template[from..]
                    .find(['/', '?', '#'])
                    .unwrap_or(template.len() - from)
            })
            .unwrap_or(template.len());
        if template[..authority_end].contains('{') {
            return Err(
                "placeholders are allowed in the path and query only, never in the scheme or host"
                    .into(),
            );
        }
        let mut sample = String::new();
        for part in &parts {
            match part {
                Part::Literal(text) => sample.push_str(text),
                Part::Param(_) => sample.push('x'),
            }
        }
        let url = Url::parse(&sample).map_err(|e| format!("is not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "must be an http:// or https:// URL, not {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host".into());
        }
        Ok(Self {
            parts,
            origin: url.origin().ascii_serialization(),
        })
    }

    /// The URL for a request with the route's path parameters `params`.
    fn fill(&self, params: &BTreeMap<String, String>) -> Result<Url, BackendError> {
        let mut url = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => url.push_str(text),
                Part::Param(name) => {
                    let value = params.get(name).ok_or_else(|| {
                        BackendError::new(
                            ErrorKind::Internal,
                            format!("the upstream URL needs the path parameter {{{name}}}, which the route's path lacks"),
                        )
                    })?;
                    // A dot segment would move the path, even percent-encoded.
                    if value == "." || value == ".." {
                        return Err(BackendError::bad_request(format!(
                            "the path parameter {name} cannot be {value:?}"
                        )));
                    }
                    url.extend(utf8_percent_encode(value, PARAM));
                }
            }
        }
        let url = Url::parse(&url).map_err(|e| {
            BackendError::new(
                ErrorKind::Internal,
                format!("the upstream URL is invalid: {e}"),
            )
        })?;
        if url.origin().ascii_serialization() != self.origin {
            return Err(BackendError::new(
                ErrorKind::Internal,
                "the path parameters changed the upstream's origin",
            ));
        }
        Ok(url)
    }
}

/// The `http` backend: one HTTP client (one connection pool) for every
/// stream it opens.
pub struct Http {
    config: HttpConfig,
    /// What the config builds, or why it could not (validation reports it
    /// first; a backend built anyway refuses to open with 500).
    shared: Result<Arc<Shared>, String>,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the headers: they may hold credentials.
        f.debug_struct("Http")
            .field("url", &self.config.url)
            .field("format", &self.config.format)
            .finish_non_exhaustive()
    }
}

/// What every stream of a backend shares.
#[derive(Debug)]
struct Shared {
    config: HttpConfig,
    client: reqwest::Client,
    url: UrlTemplate,
    /// The `Accept` default and the configured headers, expanded and marked
    /// sensitive (so that they never show in logs).
    headers: HeaderMap,
    forward: Vec<HeaderName>,
    /// The upstream request's body, when made from the client's.
    body: Option<BodyTemplate>,
    /// Reconnects of its streams.
    stats: BackendStats,
}

impl Http {
    /// The backend for `config` (see [`HttpConfig`]); `${…}` in header
    /// values are expanded from the process environment now.
    pub fn new(config: HttpConfig) -> Self {
        let shared = Shared::new(&config, &|name| std::env::var(name).ok()).map(Arc::new);
        if let Err(reason) = &shared {
            tracing::error!(url = %config.url, %reason, "The http backend cannot open streams");
        }
        Self { config, shared }
    }
}

impl Shared {
    fn new(config: &HttpConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let url = UrlTemplate::parse(&config.url).map_err(|e| format!("url {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(accept(config.format)),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| format!("headers.{name} is not a valid header name"))?;
            let value = expand_env(value, env).map_err(|e| format!("headers.{name} {e}"))?;
            let mut value = HeaderValue::try_from(value)
                .map_err(|_| format!("headers.{name} is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let forward = config
            .forward_headers
            .iter()
            .map(|name| {
                HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("forward_headers: {name:?} is not a valid header name"))
            })
            .collect::<Result<_, _>>()?;
        let origin = url.origin.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let same_origin = attempt.url().origin().ascii_serialization() == origin;
            if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(redirects)
            .tcp_nodelay(true)
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", chain(&e)))?;
        let body = config
            .body
            .clone()
            .map(BodyTemplate::new)
            .transpose()
            .map_err(|e| format!("body {e}"))?;
        Ok(Self {
            config: config.clone(),
            client,
            url,
            headers,
            forward,
            body,
            stats: BackendStats::new("http"),
        })
    }
}

/// The `Accept` sent upstream for a configured format.
fn accept(format: UpstreamFormat) -> &'static str {
    match format {
        UpstreamFormat::Auto => {
            "text/event-stream, application/x-ndjson, application/jsonl;q=0.9, application/json;q=0.8, */*;q=0.1"
        }
        UpstreamFormat::Sse => "text/event-stream",
        UpstreamFormat::Ndjson => {
            "application/x-ndjson, application/jsonl;q=0.9, application/json;q=0.8"
        }
        UpstreamFormat::Lines => "text/plain, */*;q=0.5",
    }
}

#[async_trait]
impl Backend for Http {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let shared = self.shared.as_ref().map_err(|reason| {
            BackendError::new(
                ErrorKind::Internal,
                format!("the http backend is misconfigured: {reason}"),
            )
        })?;
        let request = Arc::new(UpstreamRequest::new(shared, ctx)?);
        let resume = ctx.last_event_id.clone().filter(|id| !id.is_empty());
        if let Some(id) = &resume {
            if resume_header(id).is_none() {
                return Err(BackendError::bad_request(
                    "Last-Event-ID holds characters that cannot be sent upstream",
                ));
            }
        }
        let (response, wire) = match connect(shared, &request, resume.as_deref()).await {
            Ok(Connected::Stream(response, wire)) => (response, wire),
            Ok(Connected::NoContent) => {
                return Err(BackendError::new(
                    ErrorKind::Finished,
                    "the upstream has nothing to stream (204)",
                ));
            }
            Err(failure) => {
                // The client's message leaves out where the upstream is;
                // the log says it.
                tracing::warn!(upstream = %shared.url.origin, error = %failure.error, "Upstream failed before the stream started");
                return Err(failure.error);
            }
        };
        let reader = Reader {
            shared: Arc::clone(shared),
            request,
            decoder: Decoder::new(wire, &shared.config),
            response: Some(response),
            ready: VecDeque::new(),
            items: Vec::new(),
            skip_repeat: resume.clone(),
            resume,
            dirty: false,
            attempts: 0,
            retry_hint: None,
            ended: false,
        };
        let stream = futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        });
        Ok(stream.boxed())
    }

    fn stats(&self) -> Option<&BackendStats> {
        self.shared.as_ref().ok().map(|shared| &shared.stats)
    }
}

/// What is sent upstream, the same on every reconnect but for
/// `Last-Event-ID`.
#[derive(Debug)]
struct UpstreamRequest {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl UpstreamRequest {
    fn new(shared: &Shared, ctx: &RequestContext) -> Result<Self, BackendError> {
        let url = shared.url.fill(&ctx.params)?;
        let method = shared
            .config
            .method
            .map_or_else(|| ctx.method.clone(), UpstreamMethod::as_method);
        let mut headers = shared.headers.clone();
        for name in &shared.forward {
            let mut values = ctx.headers.get_all(name).iter().peekable();
            if values.peek().is_some() {
                headers.remove(name);
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let body = match (&shared.body, &ctx.body) {
            (Some(template), client) => {
                let filled = template
                    .fill(client.as_ref().map(|b| b.as_str()))
                    .map_err(BackendError::bad_request)?;
                if !headers.contains_key(header::CONTENT_TYPE) {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                Some(Bytes::from(filled.to_string()))
            }
            (None, Some(body)) if shared.config.forward_body && method != Method::GET => {
                if !headers.contains_key(header::CONTENT_TYPE) {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                // The client's JSON as it came, shared, not copied: it is
                // sent again on every reconnect.
                Some(body.to_bytes())
            }
            (None, _) => None,
        };
        Ok(Self {
            method,
            url,
            headers,
            body,
        })
    }
}

fn resume_header(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(id.as_bytes()).ok()
}

/// An upstream's answer that starts a stream.
enum Connected {
    Stream(reqwest::Response, Wire),
    /// 204: nothing to stream.
    NoContent,
}

/// Why a connection attempt failed, and whether another may succeed.
#[derive(Debug)]
struct Failure {
    error: BackendError,
    retryable: bool,
}

/// Sends the request (resuming after `resume`) and waits for the response
/// headers, at most `connect_timeout`.
async fn connect(
    shared: &Shared,
    request: &UpstreamRequest,
    resume: Option<&str>,
) -> Result<Connected, Failure> {
    let limit = shared.config.connect_timeout;
    let mut builder = shared
        .client
        .request(request.method.clone(), request.url.clone())
        .headers(request.headers.clone());
    if let Some(value) = resume.and_then(resume_header) {
        builder = builder.header("last-event-id", value);
    }
    if let Some(body) = &request.body {
        builder = builder.body(body.clone());
    }
    let response = match timeout(limit, builder.send()).await {
        Err(_) => {
            return Err(Failure {
                error: BackendError::new(
                    ErrorKind::Timeout,
                    format!("the upstream sent no response within {limit:?}"),
                ),
                retryable: true,
            });
        }
        Ok(Err(e)) => {
            let (kind, what) = if e.is_timeout() {
                (ErrorKind::Timeout, "did not accept a connection in time")
            } else if e.is_connect() {
                (ErrorKind::Upstream, "could not be reached")
            } else {
                (ErrorKind::Upstream, "failed")
            };
            return Err(Failure {
                error: BackendError::new(kind, format!("the upstream {what}: {}", chain(&e))),
                retryable: true,
            });
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status == StatusCode::NO_CONTENT {
        return Ok(Connected::NoContent);
    }
    if status.is_success() {
        let wire = match shared.config.format {
            UpstreamFormat::Auto => Wire::detect(response.headers().get(header::CONTENT_TYPE)),
            UpstreamFormat::Sse => Wire::Sse,
            UpstreamFormat::Ndjson => Wire::Ndjson,
            UpstreamFormat::Lines => Wire::Lines,
        };
        return Ok(Connected::Stream(response, wire));
    }
    let detail = if status.is_redirection() {
        " (a redirect to another origin, or too many: not followed)".to_string()
    } else {
        excerpt(response).await
    };
    let retryable = !status.is_client_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    Err(Failure {
        error: BackendError::new(
            ErrorKind::Upstream,
            format!("the upstream answered {status}{detail}"),
        ),
        retryable,
    })
}

/// `: <the start of the body>`, on one line and short, or nothing.
async fn excerpt(mut response: reqwest::Response) -> String {
    let deadline = Instant::now() + EXCERPT_WAIT;
    let mut body = Vec::new();
    while body.len() < EXCERPT_BYTES {
        match timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&body);
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let mut text = words.join(" ");
    if text.is_empty() {
        return text;
    }
    if let Some((cut, _)) = text.char_indices().nth(EXCERPT_CHARS) {
        text.truncate(cut);
        text.push('…');
    } else if body.len() == EXCERPT_BYTES {
        text.push('…');
    }
    format!(": {text}")
}

/// An error and its causes, without the URL (which may hold a credential
/// in its query).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = match e.downcast_ref::<reqwest::Error>() {
            Some(e) if e.url().is_some() => {
                // reqwest names the URL in its message; describe it without.
                let kind = if e.is_body() || e.is_decode() {
                    "reading the body"
                } else if e.is_connect() {
                    "connecting"
                } else if e.is_timeout() {
                    "timed out"
                } else {
                    "sending the request"
                };
                kind.to_string()
            }
            _ => e.to_string(),
        };
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// One upstream stream across its reconnections.
struct Reader {
    shared: Arc<Shared>,
    request: Arc<UpstreamRequest>,
    response: Option<reqwest::Response>,
    decoder: Decoder,
    /// Decoded, not yet yielded (what one chunk held).
    ready: VecDeque<Result<Event, BackendError>>,
    /// Scratch space for decoding.
    items: Vec<Item>,
    /// The id to resume after: the last one the upstream gave.
    resume: Option<String>,
    /// Whether events were yielded after `resume` (or without any id), which
    /// a reconnect would repeat.
    dirty: bool,
    /// Right after (re)connecting with `Last-Event-ID`: an event with that
    /// very id is a repeat.
    skip_repeat: Option<String>,
    /// Reconnection attempts since the last event.
    attempts: u32,
    /// The upstream's SSE `retry:`.
    retry_hint: Option<Duration>,
    ended: bool,
}

/// `event` with its data the value at `pointer` of its JSON data; `None`
/// when it has none there (or its data is text).
fn picked(event: &Event, pointer: &str) -> Option<Event> {
    if !event.data.is_json() {
        return None;
    }
    let value = event.data.to_value();
    let data = Data::json(value.pointer(pointer)?);
    Some(Event {
        data,
        encodings: Encodings::default(),
        ..event.clone()
    })
}

/// Decoded items a reader keeps room for between chunks: one chunk of
/// tiny lines (hundreds of KiB) makes as many events, and their queue must
/// not stay that large for the rest of the stream.
const KEEP_ITEMS: usize = 256;

impl Reader {
    async fn next(&mut self) -> Option<Result<Event, BackendError>> {
        loop {
            if let Some(item) = self.take_ready() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            let idle = self.shared.config.idle_timeout;
            let cause = match self.response.as_mut() {
                None => "the upstream connection was lost".to_string(),
                Some(response) => match timeout(idle, response.chunk()).await {
                    Ok(Ok(Some(chunk))) => {
                        self.decode(|decoder, items| decoder.feed(&chunk, items));
                        continue;
                    }
                    Ok(Ok(None)) => {
                        self.decode(Decoder::finish);
                        self.ended = true;
                        continue;
                    }
                    Ok(Err(e)) => format!("the upstream connection failed: {}", chain(&e)),
                    Err(_) => format!("the upstream sent nothing for {idle:?}"),
                },
            };
            // Closes the connection before waiting to reconnect.
            self.response = None;
            if let Err(error) = self.reconnect(cause).await {
                self.ended = true;
                return Some(Err(error));
            }
        }
    }

    /// The next decoded item; the queue's room goes back once it is empty.
    fn take_ready(&mut self) -> Option<Result<Event, BackendError>> {
        let item = self.ready.pop_front();
        if self.ready.is_empty() && self.ready.capacity() > KEEP_ITEMS {
            self.ready = VecDeque::new();
        }
        item
    }

    fn decode(&mut self, step: impl FnOnce(&mut Decoder, &mut Vec<Item>)) {
        let mut items = std::mem::take(&mut self.items);
        step(&mut self.decoder, &mut items);
        for item in items.drain(..) {
            self.apply(item);
        }
        if items.capacity() <= KEEP_ITEMS {
            self.items = items;
        }
    }

    fn apply(&mut self, item: Item) {
        if self.ended {
            // After the end sentinel: nothing more.
            return;
        }
        match item {
            Item::Event(event, id) => {
                if let Some(repeat) = self.skip_repeat.take() {
                    if id.as_deref() == Some(repeat.as_str()) {
                        return;
                    }
                }
                let shared = Arc::clone(&self.shared);
                let config = &shared.config;
                if config.end_sentinel.as_deref() == Some(event.data.as_str()) {
                    self.ended = true;
                    self.response = None;
                    return;
                }
                self.set_resume(id);
                self.attempts = 0;
                let event = match config.data_pointer.as_deref() {
                    None => event,
                    Some(pointer) => match picked(&event, pointer) {
                        Some(event) => event,
                        None => return,
                    },
                };
                self.ready.push_back(Ok(event));
            }
            Item::Id(id) => {
                self.set_resume(Some(id));
            }
            Item::Retry(delay) => self.retry_hint = Some(delay),
            Item::Error(error) => self.ready.push_back(Err(error)),
        }
    }

    /// Records where a reconnect resumes after an event with `id` (none:
    /// an event without an id, which a reconnect would repeat).
    fn set_resume(&mut self, id: Option<String>) {
        match id {
            Some(id) if !id.is_empty() => {
                self.resume = Some(id);
                self.dirty = false;
            }
            Some(_) => {
                // An SSE upstream reset its id: nothing to resume after.
                self.resume = None;
                self.dirty = true;
            }
            None => self.dirty = true,
        }
    }

    /// Reconnects after the upstream dropped for `cause`, or says why not.
    async fn reconnect(&mut self, mut cause: String) -> Result<(), BackendError> {
        let shared = Arc::clone(&self.shared);
        let origin = &shared.url.origin;
        let retries = shared.config.retries;
        let fail = |message: String| {
            tracing::warn!(upstream = %origin, %message, "Upstream stream failed");
            BackendError::new(ErrorKind::Upstream, message)
        };
        loop {
            if retries == 0 {
                return Err(fail(format!("{cause} (reconnecting is off: retries = 0)")));
            }
            if self.dirty {
                return Err(fail(format!(
                    "{cause}; not reconnecting: its events have no ids to resume after, and a reconnect would repeat them"
                )));
            }
            if self
                .resume
                .as_deref()
                .is_some_and(|id| resume_header(id).is_none())
            {
                return Err(fail(format!(
                    "{cause}; not reconnecting: its last id cannot be sent as Last-Event-ID"
                )));
            }
            if self.attempts >= retries {
                return Err(fail(format!(
                    "{cause}; gave up after {retries} reconnection attempts"
                )));
            }
            self.attempts += 1;
            let delay = self.delay();
            tracing::info!(
                upstream = %origin,
                attempt = self.attempts,
                delay_ms = delay.as_millis() as u64,
                last_event_id = ?self.resume,
                %cause,
                "Upstream dropped; reconnecting"
            );
            tokio::time::sleep(delay).await;
            let connected = connect(&shared, &self.request, self.resume.as_deref()).await;
            match &connected {
                Ok(_) => shared.stats.reconnected(),
                Err(_) => shared.stats.reconnect_failed(),
            }
            match connected {
                Ok(Connected::Stream(response, wire)) => {
                    self.response = Some(response);
                    self.decoder = Decoder::new(wire, &shared.config);
                    self.skip_repeat = self.resume.clone();
                    return Ok(());
                }
                Ok(Connected::NoContent) => {
                    self.ended = true;
                    return Ok(());
                }
                Err(failure) if failure.retryable => cause = failure.error.message,
                Err(failure) => {
                    let refused = failure.error.message;
                    return Err(fail(format!(
                        "{cause}; the reconnection was refused: {refused}"
                    )));
                }
            }
        }
    }

    /// The wait before the current attempt: the base (the upstream's
    /// `retry:`, or `backoff`) doubled per attempt, at most `max_backoff`,
    /// then between half and all of it.
    fn delay(&self) -> Duration {
        let config = &self.shared.config;
        let base = self
            .retry_hint
            .unwrap_or(config.backoff)
            .min(config.max_backoff);
        let doublings = self.attempts.saturating_sub(1).min(31);
        let full = base.saturating_mul(1 << doublings).min(config.max_backoff);
        // Jitter, so that the clients of one upstream do not all come back
        // at the same instant.
        let random = RandomState::new().hash_one(self.attempts);
        let half = full / 2;
        half + half.mul_f64((random % 1024) as f64 / 1023.0)
    }
}

/// What decoding yields, in stream order.
#[derive(Debug, PartialEq)]
enum Item {
    /// An event, and the id field that came with it (`Some("")`: an SSE `id`
    /// that resets the last id).
    Event(Event, Option<String>),
    /// An SSE id that came without an event.
    Id(String),
    /// An SSE `retry:`.
    Retry(Duration),
    /// A line or event that could not be decoded; the stream goes on.
    Error(BackendError),
}

/// Turns the bytes of one upstream response into events.
#[derive(Debug)]
enum Decoder {
    Sse(Lines, Sse),
    Ndjson {
        lines: Lines,
        id_field: Option<String>,
        name_field: Option<String>,
    },
    Text(Lines),
}

impl Decoder {
    fn new(wire: Wire, config: &HttpConfig) -> Self {
        let max = config.max_line_bytes;
        match wire {
            Wire::Sse => Self::Sse(Lines::new(max, true), Sse::new(max)),
            Wire::Ndjson => Self::Ndjson {
                lines: Lines::new(max, false),
                id_field: config.id_field.clone(),
                name_field: config.name_field.clone(),
            },
            Wire::Lines => Self::Text(Lines::new(max, false)),
        }
    }

    fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        match self {
            Self::Sse(lines, sse) => lines.feed(chunk, &mut |piece| sse.piece(piece, out)),
            Self::Ndjson {
                lines,
                id_field,
                name_field,
            } => lines.feed(chunk, &mut |piece| {
                ndjson_piece(piece, id_field.as_deref(), name_field.as_deref(), out);
            }),
            Self::Text(lines) => lines.feed(chunk, &mut |piece| text_piece(piece, out)),
        }
    }

    /// The end of the body: a last line without its line break counts, but
    /// an SSE event is complete only with its blank line.
    fn finish(&mut self, out: &mut Vec<Item>) {
        match self {
            Self::Sse(..) => {}
            Self::Ndjson {
                lines,
                id_field,
                name_field,
            } => {
                if let Some(line) = lines.finish() {
                    ndjson_piece(
                        Piece::Line(&line),
                        id_field.as_deref(),
                        name_field.as_deref(),
                        out,
                    );
                }
            }
            Self::Text(lines) => {
                if let Some(line) = lines.finish() {
                    text_piece(Piece::Line(&line), out);
                }
            }
        }
    }
}

fn too_long(max: usize, what: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Upstream,
        format!(
            "the upstream sent {what} longer than max_line_bytes ({max} bytes); it was skipped"
        ),
    )
}

fn ndjson_piece(
    piece: Piece<'_>,
    id_field: Option<&str>,
    name_field: Option<&str>,
    out: &mut Vec<Item>,
) {
    let line = match piece {
        Piece::Line(line) => line.trim_ascii(),
        Piece::TooLong(max) => return out.push(Item::Error(too_long(max, "a line"))),
    };
    if line.is_empty() {
        return;
    }
    let data = match crate::json::compact(line) {
        Ok(data) => Data::json_text(data),
        Err(e) => {
            return out.push(Item::Error(BackendError::new(
                ErrorKind::Upstream,
                format!("the upstream sent a line that is not JSON ({e}); it was skipped"),
            )));
        }
    };
    let (id, name) = if id_field.is_none() && name_field.is_none() {
        (None, None)
    } else {
        let fields = TopLevel {
            id_field,
            name_field,
        };
        match crate::json::object(data.as_str(), fields) {
            Ok(Shape::Object((id, name))) => (id, name.filter(|n| !n.is_empty())),
            _ => (None, None),
        }
    };
    let mut event = Event::new(data);
    if let Some(id) = &id {
        event = event.with_id(id.as_str());
    }
    if let Some(name) = name {
        event = event.with_name(name);
    }
    out.push(Item::Event(event, id));
}

/// Reads an NDJSON line's top-level `id_field` (a string, or a number as
/// `serde_json` writes it) and `name_field` (a string), skipping the rest:
/// the line stays text, never a `Value` tree. As in a map, a field given
/// twice counts as its last.
struct TopLevel<'f> {
    id_field: Option<&'f str>,
    name_field: Option<&'f str>,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    /// The id and the name.
    type Value = (Option<String>, Option<String>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON line")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut name) = (None, None);
        while let Some(Key(key)) = map.next_key()? {
            let (is_id, is_name) = (self.id_field == Some(&*key), self.name_field == Some(&*key));
            if !is_id && !is_name {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: Scalar<'_> = map.next_value()?;
            if is_id {
                id = match &value {
                    Scalar::String(s) => Some(s.to_string()),
                    Scalar::Number(n) => Some(n.to_string()),
                    _ => None,
                };
            }
            if is_name {
                name = match value {
                    Scalar::String(s) => Some(s.into_owned()),
                    _ => None,
                };
            }
        }
        Ok((id, name))
    }
}

fn text_piece(piece: Piece<'_>, out: &mut Vec<Item>) {
    match piece {
        Piece::Line([]) => {}
        Piece::Line(line) => {
            let text = String::from_utf8_lossy(line);
            out.push(Item::Event(Event::new(Data::text(text.as_ref())), None));
        }
        Piece::TooLong(max) => out.push(Item::Error(too_long(max, "a line"))),
    }
}

/// The SSE event being assembled, as the WHATWG "interpreting an event
/// stream" algorithm has it.
#[derive(Debug)]
struct Sse {
    data: String,
    event_type: String,
    /// The id field of this event, if it had one.
    id: Option<String>,
    /// The data passed `max`: the event is skipped.
    oversized: bool,
    max: usize,
}

impl Sse {
    fn new(max: usize) -> Self {
        Self {
            data: String::new(),
            event_type: String::new(),
            id: None,
            oversized: false,
            max,
        }
    }

    fn piece(&mut self, piece: Piece<'_>, out: &mut Vec<Item>) {
        match piece {
            Piece::Line([]) => self.dispatch(out),
            Piece::Line(line) => self.line(&String::from_utf8_lossy(line), out),
            // The line is lost; so is the event it belonged to.
            Piece::TooLong(max) => {
                if !self.oversized {
                    self.oversized = true;
                    self.data = String::new();
                    out.push(Item::Error(too_long(max, "an event")));
                }
            }
        }
    }

    fn line(&mut self, line: &str, out: &mut Vec<Item>) {
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                if self.oversized {
                    return;
                }
                if self.data.len() + value.len() > self.max {
                    self.oversized = true;
                    self.data = String::new();
                    out.push(Item::Error(too_long(self.max, "an event")));
                    return;
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(millis) = value.parse::<u64>() {
                    out.push(Item::Retry(Duration::from_millis(millis)));
                }
            }
            _ => {}
        }
    }

    /// A blank line: the event is complete.
    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let id = self.id.take();
        let event_type = std::mem::take(&mut self.event_type);
        let mut data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.oversized) || data.is_empty() {
            if let Some(id) = id {
                out.push(Item::Id(id));
            }
            return;
        }
        data.pop();
        let data = Data::parse_json(&data).unwrap_or_else(|_| Data::text(data));
        let mut event = Event::new(data);
        if let Some(id) = id.as_deref().filter(|id| !id.is_empty()) {
            event = event.with_id(id);
        }
        if !event_type.is_empty() && event_type != "message" {
            event = event.with_name(event_type);
        }
        out.push(Item::Event(event, id));
    }
}

/// The upstream decoders, for the fuzzer in `fuzz/`: not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{Decoder, HttpConfig, Wire};

    /// Decodes `body` as `format` (`sse`, `ndjson`, anything else: lines)
    /// with lines of at most `max_line` bytes, fed in the pieces that cutting
    /// it at `cuts` (offsets, in any order, out-of-range ones ignored) makes;
    /// each item the decoder yields, in its debug form.
    pub fn decode(format: &str, max_line: usize, body: &[u8], cuts: &[usize]) -> Vec<String> {
        let wire = match format {
            "sse" => Wire::Sse,
            "ndjson" => Wire::Ndjson,
            _ => Wire::Lines,
        };
        let mut config = HttpConfig::new("http://127.0.0.1/");
        config.max_line_bytes = max_line;
        config.id_field = Some("id".into());
        config.name_field = Some("event".into());
        let mut decoder = Decoder::new(wire, &config);
        let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c < body.len()).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([body.len()]) {
            decoder.feed(&body[start..cut], &mut out);
            start = cut;
        }
        decoder.finish(&mut out);
        out.iter().map(|item| format!("{item:?}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn config(value: Value) -> HttpConfig {
        serde_json::from_value(value).unwrap()
    }

    fn decode(wire: Wire, config: &HttpConfig, chunks: &[&[u8]], finish: bool) -> Vec<Item> {
        let mut decoder = Decoder::new(wire, config);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, &mut out);
        }
        if finish {
            decoder.finish(&mut out);
        }
        out
    }

    fn event(data: Data, id: Option<&str>, name: Option<&str>) -> Item {
        let mut event = Event::new(data);
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            event = event.with_id(id);
        }
        if let Some(name) = name {
            event = event.with_name(name);
        }
        Item::Event(event, id.map(str::to_string))
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c = config(json!({"url": "http://127.0.0.1:9000/stream"}));
        assert_eq!(c, HttpConfig::new("http://127.0.0.1:9000/stream"));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!((c.retries, c.forward_body), (3, true));
        assert_eq!(c.backoff, Duration::from_millis(500));
        assert_eq!(c.max_backoff, Duration::from_secs(10));
        assert_eq!(c.max_line_bytes, 1 << 20);
        assert!(c.validate().is_empty());
        let err =
            serde_json::from_value::<HttpConfig>(json!({"url": "http://h/", "timeout": "1s"}))
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
        let err =
            serde_json::from_value::<HttpConfig>(json!({"url": "http://h/", "format": "xml"}))
                .unwrap_err();
        assert!(err.to_string().contains("\"sse\""), "{err}");
        let err = serde_json::from_value::<HttpConfig>(json!({})).unwrap_err();
        assert!(err.to_string().contains("missing field `url`"), "{err}");
        let c = config(
            json!({"url": "http://h/", "method": "POST", "format": "ndjson", "connect_timeout": "250ms"}),
        );
        assert_eq!(c.method, Some(UpstreamMethod::Post));
        assert_eq!(c.format, UpstreamFormat::Ndjson);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn validation_names_every_problem_with_its_key() {
        let c = config(json!({
            "url": "ftp://{host}/x",
            "headers": {"Host": "x", "X-Key": "${HTTP_TEST_MISSING}", "X-Bad": "a\u{1}b", "bad name": "v"},
            "forward_headers": ["x-key", "Last-Event-ID", "ok"],
            "connect_timeout": "0s",
            "idle_timeout": "2days",
            "retries": 101,
            "backoff": "11m",
            "max_backoff": "15s",
            "max_line_bytes": 10,
            "format": "sse",
            "id_field": "id",
            "name_field": "",
        }));
        let problems = c.validate_with(&|_| None);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "url",
                "headers.Host",
                "headers.X-Bad",
                "headers.X-Key",
                "headers.bad name",
                "forward_headers",
                "forward_headers",
                "connect_timeout",
                "idle_timeout",
                "retries",
                "backoff",
                "max_backoff",
                "max_line_bytes",
                "id_field",
                "name_field",
            ],
            "{problems:?}"
        );
        let missing = &problems[3].reason;
        assert!(missing.contains("HTTP_TEST_MISSING"), "{missing}");
        assert!(
            problems[0].reason.contains("host"),
            "{}",
            problems[0].reason
        );
    }

    #[test]
    fn environment_variables_expand_and_never_show_in_messages() {
        let env = |name: &str| match name {
            "KEY" => Some("s3cret".to_string()),
            "EMPTY" => Some(String::new()),
            "NL" => Some("a\nb".to_string()),
            _ => None,
        };
        assert_eq!(expand_env("Bearer ${KEY}", &env).unwrap(), "Bearer s3cret");
        assert_eq!(
            expand_env("$5 $${KEY} ${KEY}$", &env).unwrap(),
            "$5 ${KEY} s3cret$"
        );
        let err = expand_env("${A} ${EMPTY} ${KEY}", &env).unwrap_err();
        assert!(err.contains("A, EMPTY are not set"), "{err}");
        assert!(
            expand_env("${KEY", &env)
                .unwrap_err()
                .contains("without its `}`")
        );
        assert!(expand_env("${1X}", &env).is_err());
        let c = HttpConfig {
            headers: BTreeMap::from([("X-Key".to_string(), "${NL}".to_string())]),
            ..HttpConfig::new("http://h/")
        };
        let problems = c.validate_with(&env);
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].reason.contains("a\nb"));
        let shared = Shared::new(
            &HttpConfig {
                headers: BTreeMap::from([("X-Key".to_string(), "${KEY}".to_string())]),
                ..HttpConfig::new("http://h/")
            },
            &env,
        )
        .unwrap();
        assert_eq!(shared.headers["x-key"], "s3cret");
        assert!(shared.headers["x-key"].is_sensitive());
        assert!(!format!("{shared:?}").contains("s3cret"));
    }

    #[test]
    fn url_placeholders_fill_path_and_query_only() {
        let t =
            UrlTemplate::parse("https://api.example.com:8443/v1/{model}/run?user={user}").unwrap();
        let params = BTreeMap::from([
            ("model".to_string(), "a b/../c?d#e%".to_string()),
            ("user".to_string(), "x&y=z".to_string()),
        ]);
        assert_eq!(
            t.fill(&params).unwrap().as_str(),
            "https://api.example.com:8443/v1/a%20b%2F..%2Fc%3Fd%23e%25/run?user=x%26y%3Dz"
        );
        for dots in [".", ".."] {
            let params = BTreeMap::from([
                ("model".to_string(), dots.to_string()),
                ("user".to_string(), "u".to_string()),
            ]);
            assert_eq!(t.fill(&params).unwrap_err().kind, ErrorKind::BadRequest);
        }
        let err = t.fill(&BTreeMap::new()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
        assert!(err.message.contains("{model}"), "{}", err.message);
        for (bad, why) in [
            ("http://{host}/x", "never in the scheme or host"),
            ("http://h:{port}/x", "never in the scheme or host"),
            ("{scheme}://h/x", "never in the scheme or host"),
            ("ws://h/x", "http:// or https://"),
            ("http://h/{a", "without its `}`"),
            ("http://h/a}", "without its `{`"),
            ("http://h/{}", "not a parameter name"),
            ("not a url", "not a valid URL"),
            ("", "required"),
        ] {
            let err = UrlTemplate::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn content_types_pick_the_format() {
        let detect = |ct: &str| Wire::detect(Some(&HeaderValue::from_str(ct).unwrap()));
        assert_eq!(detect("text/event-stream; charset=utf-8"), Wire::Sse);
        assert_eq!(detect("Text/Event-Stream"), Wire::Sse);
        assert_eq!(detect("application/x-ndjson"), Wire::Ndjson);
        assert_eq!(detect("application/jsonl"), Wire::Ndjson);
        assert_eq!(detect("application/json; charset=utf-8"), Wire::Ndjson);
        assert_eq!(detect("text/plain"), Wire::Lines);
        assert_eq!(Wire::detect(None), Wire::Lines);
    }

    #[test]
    fn sse_follows_the_whatwg_algorithm() {
        let c = HttpConfig::new("http://h/");
        let stream: &[u8] = b"\xEF\xBB\xBF: comment\n\
            retry: 2500\n\n\
            id: 1\nevent: message\ndata: {\"a\": 1}\n\n\
            data:no space\r\n\r\n\
            id: 2\revent: token\rdata:  two\rdata: lines\r\r\
            data: x\nid\n\n\
            id: 3\n\n\
            id: a\0b\nevent: e\ndata\n\n\
            data: incomplete";
        let expected = vec![
            Item::Retry(Duration::from_millis(2500)),
            event(Data::json(&json!({"a": 1})), Some("1"), None),
            event(Data::text("no space"), None, None),
            event(Data::text(" two\nlines"), Some("2"), Some("token")),
            event(Data::text("x"), Some(""), None),
            Item::Id("3".into()),
            event(Data::text(""), None, Some("e")),
        ];
        // Whole, byte by byte, and the same chunked arbitrarily.
        assert_eq!(decode(Wire::Sse, &c, &[stream], true), expected);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode(Wire::Sse, &c, &bytes, true), expected);
        let bytes: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(decode(Wire::Sse, &c, &bytes, true), expected);
    }

    #[test]
    fn a_cr_at_the_end_of_a_chunk_waits_for_its_lf() {
        let c = HttpConfig::new("http://h/");
        let items = decode(
            Wire::Sse,
            &c,
            &[b"data: a\r", b"\n\r", b"\ndata: b\n\n"],
            false,
        );
        assert_eq!(
            items,
            [
                event(Data::text("a"), None, None),
                event(Data::text("b"), None, None)
            ]
        );
    }

    #[test]
    fn long_lines_and_events_are_skipped_in_bounded_memory() {
        let c = HttpConfig {
            max_line_bytes: 64,
            id_field: Some("id".into()),
            ..HttpConfig::new("http://h/")
        };
        let long = "x".repeat(100);
        // A line too long in one chunk, and one that grows over several.
        let ndjson = format!("{{\"id\": 1}}\n\"{long}\"\n{{\"id\": 2}}\n");
        let mut decoder = Decoder::new(Wire::Ndjson, &c);
        let mut out = Vec::new();
        for chunk in ndjson.as_bytes().chunks(10) {
            decoder.feed(chunk, &mut out);
            let Decoder::Ndjson { lines, .. } = &decoder else {
                unreachable!()
            };
            assert!(lines.pending.len() <= 64);
        }
        decoder.feed(
            format!("\"{long}\"\n{{\"id\": \"3\"}}").as_bytes(),
            &mut out,
        );
        decoder.finish(&mut out);
        let summary: Vec<String> = out
            .iter()
            .map(|item| match item {
                Item::Event(_, id) => format!("event {}", id.as_deref().unwrap_or("-")),
                Item::Error(e) => e.message.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        let skipped =
            "the upstream sent a line longer than max_line_bytes (64 bytes); it was skipped";
        assert_eq!(summary, ["event 1", skipped, "event 2", skipped, "event 3"]);

        // An SSE event whose data lines add up to more than the limit.
        let sse = format!(
            "data: {}\ndata: {}\nid: 7\n\ndata: ok\n\n",
            &long[..40],
            &long[..40]
        );
        let items = decode(Wire::Sse, &c, &[sse.as_bytes()], true);
        assert!(matches!(&items[0], Item::Error(e) if e.message.contains("an event longer")));
        assert_eq!(items[1], Item::Id("7".into()));
        assert_eq!(items[2], event(Data::text("ok"), None, None));
    }

    #[test]
    fn ndjson_takes_ids_and_names_from_fields() {
        let c = HttpConfig {
            id_field: Some("seq".into()),
            name_field: Some("type".into()),
            ..HttpConfig::new("http://h/")
        };
        let body = b"{\"seq\": 1, \"type\": \"delta\", \"text\": \"a\"}\r\n\n  \n{\"seq\": \"b\"}\nnot json\n[1,2]";
        let items = decode(Wire::Ndjson, &c, &[body], true);
        assert_eq!(
            items[0],
            event(
                Data::json(&json!({"seq": 1, "type": "delta", "text": "a"})),
                Some("1"),
                Some("delta")
            )
        );
        assert_eq!(
            items[1],
            event(Data::json(&json!({"seq": "b"})), Some("b"), None)
        );
        assert!(matches!(&items[2], Item::Error(e) if e.message.contains("not JSON")));
        assert_eq!(items[3], event(Data::json(&json!([1, 2])), None, None));
        assert_eq!(items.len(), 4);
    }

    #[test]
    fn plain_lines_are_text_events() {
        let c = HttpConfig::new("http://h/");
        let items = decode(
            Wire::Lines,
            &c,
            &[b"\xEF\xBB\xBFone\r\n\ntw", b"o \xFF\nthree"],
            true,
        );
        assert_eq!(
            items,
            [
                event(Data::text("one"), None, None),
                event(Data::text("two \u{FFFD}"), None, None),
                event(Data::text("three"), None, None),
            ]
        );
    }

    fn reader(config: HttpConfig) -> Reader {
        let shared = Arc::new(Shared::new(&config, &|_| None).unwrap());
        let request = Arc::new(UpstreamRequest::new(&shared, &RequestContext::default()).unwrap());
        Reader {
            decoder: Decoder::new(Wire::Sse, &shared.config),
            shared,
            request,
            response: None,
            ready: VecDeque::new(),
            items: Vec::new(),
            resume: None,
            dirty: false,
            skip_repeat: None,
            attempts: 0,
            retry_hint: None,
            ended: false,
        }
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_its_cap_and_honours_retry_hints() {
        let mut r = reader(HttpConfig {
            backoff: Duration::from_millis(400),
            max_backoff: Duration::from_secs(2),
            ..HttpConfig::new("http://h/")
        });
        for (attempts, full) in [(1, 400), (2, 800), (3, 1600), (4, 2000), (40, 2000)] {
            r.attempts = attempts;
            let delay = r.delay().as_millis();
            assert!(
                (full / 2..=full).contains(&delay),
                "attempt {attempts}: {delay}ms"
            );
        }
        r.retry_hint = Some(Duration::from_secs(60));
        r.attempts = 1;
        assert!(r.delay() <= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_chunk_of_many_events_does_not_keep_its_queue() {
        let mut r = reader(HttpConfig::new("http://h/"));
        let chunk = "data: x\n\n".repeat(10_000);
        r.decode(|decoder, items| decoder.feed(chunk.as_bytes(), items));
        assert_eq!(r.ready.len(), 10_000);
        assert!(r.items.capacity() <= KEEP_ITEMS, "{}", r.items.capacity());
        let mut taken = 0;
        while r.take_ready().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 10_000);
        assert!(r.ready.capacity() <= KEEP_ITEMS, "{}", r.ready.capacity());
    }

    #[tokio::test]
    async fn resuming_tracks_the_last_id_and_skips_a_repeat() {
        let mut r = reader(HttpConfig::new("http://h/"));
        let id = |id: &str| event(Data::text(id), Some(id), None);
        r.apply(id("1"));
        assert_eq!((r.resume.as_deref(), r.dirty), (Some("1"), false));
        r.apply(event(Data::text("no id"), None, None));
        assert!(r.dirty, "an event without an id would be repeated");
        r.apply(Item::Id("2".into()));
        assert_eq!((r.resume.as_deref(), r.dirty), (Some("2"), false));
        r.skip_repeat = Some("2".into());
        r.apply(id("2"));
        r.apply(id("2"));
        let ids: Vec<_> = r
            .ready
            .iter()
            .map(|e| e.as_ref().unwrap().data.as_str().to_string())
            .collect();
        assert_eq!(ids, ["1", "no id", "2"], "only the first repeat is dropped");
        r.apply(event(Data::text("reset"), Some(""), None));
        assert_eq!((r.resume.as_deref(), r.dirty), (None, true));
    }

    #[tokio::test]
    async fn a_reconnect_is_refused_when_it_would_repeat_events() {
        let mut r = reader(HttpConfig::new("http://127.0.0.1:9/"));
        r.dirty = true;
        let err = r
            .reconnect("the upstream connection failed".into())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Upstream);
        assert!(err.message.contains("no ids"), "{}", err.message);
        let mut r = reader(HttpConfig {
            retries: 0,
            ..HttpConfig::new("http://127.0.0.1:9/")
        });
        let err = r.reconnect("dropped".into()).await.unwrap_err();
        assert!(err.message.contains("retries = 0"), "{}", err.message);
    }
}
