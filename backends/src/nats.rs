//! `nats`: events from a subject of a NATS JetStream stream, shared by every
//! client of the subject.
//!
//! ```toml
//! [routes.rooms.backends.bus]
//! type = "nats"
//! url = "nats://127.0.0.1:4222"
//! stream = "ROOMS"           # the JetStream stream, created beforehand
//! subject = "rooms.{room}"   # {room} from the route's path /rooms/{room}
//! allow = "rooms.*"          # the subjects clients may read
//! history = 10               # the last 10 messages on connect
//! ```
//!
//! - A message's stream sequence (in decimal) is the event id, so
//!   `Last-Event-ID` resumes exactly after it, on this gateway or any other
//!   reading the same stream.
//!   A `Last-Event-ID` that is not a number, or is past the stream's last
//!   sequence (an id of another stream, or of one deleted and made again), is
//!   a 400.
//! - The event data is the payload: JSON when it parses, else text; the name
//!   is the message's `name_header` (`event`) header when present.
//! - Path parameters fill the subject's `{param}`s; one that is empty or
//!   holds `.`, `*`, `>`, whitespace or a control character is a 400, since
//!   it would change what the subject means (more tokens, or wildcards).
//! - `history` on connect: the last N messages of the subject. Only reading
//!   a stream finds one subject's messages in it, so the read is bounded: it
//!   covers the stream's last `max_catchup` sequences (whatever their
//!   subjects) and keeps the last N of the subject's; on a busy stream, a
//!   rarely used subject may show fewer.
//! - One gateway reads each subject once: a single reader task per subject
//!   (an ordered, unacknowledged, in-memory pull consumer on one connection
//!   per backend) feeds every client of that subject through a broadcast
//!   buffer of `buffer` messages, and stops, deleting its consumer, when the
//!   last client leaves.
//! - A client that falls more than `buffer` messages behind does not slow the
//!   others: it catches up from the stream by sequence (a consumer of its
//!   own, read a page at a time as the client takes them, so that it holds
//!   one page in memory), up to `max_catchup` messages; past that it gets a
//!   `lagged` error naming the id to resume from, and its stream ends.
//!   Nothing is skipped silently: a client resuming after messages the
//!   stream no longer holds (its limits removed them) first gets a `lagged`
//!   error saying so, and then what is left.
//! - Each subject read costs a consumer on the server: `max_subjects` caps
//!   them (503 beyond). While the connection is down, requests are answered
//!   503 at once.
//! - When the connection comes back after NATS went away (a restart), each
//!   reader makes a new consumer that starts after the last sequence it
//!   delivered: nothing lost, nothing repeated. A gap in the consumer's own
//!   sequence (a message dropped on the way) does the same.
//! - The gateway creates no streams: a stream that does not exist is answered
//!   503 (the service is not ready: the operator creates the stream), and a
//!   subject the stream does not hold is answered 404.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{OnceCell, broadcast, oneshot, watch};

use crate::problem::Problem;
use crate::publish::{Publication, Publisher};
use crate::{
    Backend, BackendError, BackendStats, Data, ErrorKind, Event, EventStream, RequestContext,
};

/// Messages asked for per pull request, live or catching up.
const PAGE: usize = 256;
/// How long one JetStream API request (or one page of messages) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to NATS may take: a 503 beats a long wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a live pull request stays open before it is renewed.
const EXPIRES: Duration = Duration::from_secs(30);
/// The server's sign of life on an idle live consumer; two missed mean the
/// consumer is gone, and the reader makes a new one.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the server keeps a consumer nobody pulls from (one whose
/// reader died without deleting it).
const INACTIVE: Duration = Duration::from_secs(30);
/// Shortest wait before a reader makes its consumer again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a reader makes its consumer again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Why a reader makes a new consumer when NATS is connected again.
const CONNECTED_AGAIN: &str = "connected again";
/// Longest wait between reconnection attempts to NATS.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Largest `history` accepted.
const MAX_HISTORY: usize = 1000;

/// The `nats` backend's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The server: `nats://[user:password@]host[:port]`.
    /// Default: `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream that stores the subject's messages. Required.
    /// The gateway does not create it: while it does not exist, requests are
    /// answered 503.
    pub stream: String,
    /// The subject clients read, with `{param}` placeholders filled from the
    /// route's path parameters (`rooms.{room}`). A parameter containing `.`,
    /// `*`, `>`, whitespace or a control character is refused (400): it would
    /// change what the subject means. Required.
    pub subject: String,
    /// A NATS subject pattern the resolved subject must fall within, `*`
    /// matching one token and a final `>` the rest (`rooms.*`); another
    /// subject is answered 404. Required when `subject` has placeholders, so
    /// that clients cannot read arbitrary subjects.
    pub allow: Option<String>,
    /// Messages sent on connect when the client gives no `Last-Event-ID`:
    /// the last N of the subject among the stream's last `max_catchup`
    /// messages. Default: `0` (only what comes next). At most 1000.
    pub history: usize,
    /// The message header holding the event name, when present.
    /// Default: `event`.
    pub name_header: String,
    /// Messages held for clients that read slower than the stream moves.
    /// Default: `1024`.
    pub buffer: usize,
    /// The most messages a client that fell behind (or resumed from an old
    /// id) may fetch from the stream to catch up; past it the stream ends
    /// with a `lagged` error naming the id to resume from. A client holds at
    /// most one page (256 messages) of it at a time. Default: `10000`.
    pub max_catchup: usize,
    /// Subjects this backend reads at once, each with a consumer on the
    /// server; a client of one more subject is answered 503, so that clients
    /// cannot pile up consumers. Default: `1000`.
    pub max_subjects: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: String::new(),
            subject: String::new(),
            allow: None,
            history: 0,
            name_header: "event".into(),
            buffer: 1024,
            max_catchup: 10_000,
            max_subjects: 1000,
        }
    }
}

impl NatsConfig {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = self.url.parse::<async_nats::ServerAddr>() {
            problems.push(Problem::new("url", format!("not a NATS URL: {e}")));
        }
        if self.stream.is_empty() {
            problems.push(Problem::new(
                "stream",
                "required: the JetStream stream's name",
            ));
        } else if !valid_stream_name(&self.stream) {
            problems.push(Problem::new(
                "stream",
                "a stream name has no `.`, `*`, `>`, `/`, `\\`, whitespace or control characters",
            ));
        }
        if self.subject.is_empty() {
            problems.push(Problem::new(
                "subject",
                "required: the subject to read (`rooms.{room}`)",
            ));
        } else {
            match placeholders(&self.subject) {
                Err(reason) => problems.push(Problem::new("subject", reason)),
                Ok(names) => {
                    let sample = fill(&self.subject, |_| Ok::<_, ()>("x")).unwrap_or_default();
                    if let Err(reason) = check_subject(&sample) {
                        problems.push(Problem::new("subject", reason));
                    }
                    if !names.is_empty() && self.allow.is_none() {
                        problems.push(Problem::new(
                            "allow",
                            "required when `subject` has placeholders (`rooms.*`), so that clients cannot read arbitrary subjects",
                        ));
                    }
                }
            }
        }
        if let Some(allow) = &self.allow {
            if let Err(reason) = check_subject(allow) {
                problems.push(Problem::new("allow", reason));
            }
        }
        if self.history > MAX_HISTORY {
            problems.push(Problem::new(
                "history",
                "at most 1000 (a client holds its history in memory)",
            ));
        }
        if self.name_header.is_empty()
            || self
                .name_header
                .chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            problems.push(Problem::new(
                "name_header",
                "must name a header (no `:`, whitespace or control characters)",
            ));
        }
        if !(1..=1 << 20).contains(&self.buffer) {
            problems.push(Problem::new("buffer", "from 1 to 1048576"));
        }
        if self.max_catchup == 0 {
            problems.push(Problem::new("max_catchup", "at least 1"));
        }
        if self.max_subjects == 0 {
            problems.push(Problem::new("max_subjects", "at least 1"));
        }
        problems
    }
}

/// Whether `name` can name a JetStream stream.
fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        })
}

/// Checks a subject or subject pattern: `.`-separated non-empty tokens
/// without whitespace or control characters, `*` and `>` only as whole
/// tokens, `>` only last.
fn check_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "{subject:?} has an empty token (a leading, trailing or doubled `.`)"
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{subject:?} has whitespace or a control character"));
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Err(format!(
                "{subject:?}: `*` and `>` are wildcards and stand alone between dots"
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!("{subject:?}: `>` may only be the last token"));
        }
    }
    Ok(())
}

/// The `{name}`s of a subject template, or why the braces are wrong.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or("a `{` without its `}`: placeholders are written `{param}`")?;
        let name = &rest[open + 1..open + close];
        if name.is_empty() || name.contains('{') {
            return Err("a placeholder names a path parameter: `{param}`".into());
        }
        names.push(name);
        rest = &rest[open + close + 1..];
    }
    Ok(names)
}

/// The template with each `{name}` replaced by `value(name)`, in one pass
/// (a value is never itself searched for placeholders).
fn fill<'a, E>(
    template: &str,
    mut value: impl FnMut(&str) -> Result<&'a str, E>,
) -> Result<String, E> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(value(&rest[open + 1..open + close])?);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether every subject that `subject` stands for is matched by `pattern`
/// (NATS wildcards: `*` one token, a final `>` one or more tokens).
fn within(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(want), Some(token)) if want == token => {}
            _ => return false,
        }
    }
}

/// A message as clients get it.
#[derive(Debug)]
struct Entry {
    /// The stream sequence.
    seq: u64,
    event: Event,
    /// Not a message: the stream was re-created and its sequences started
    /// again; clients forget the sequences they saw.
    reset: bool,
}

fn to_entry(message: &async_nats::Message, seq: u64, config: &NatsConfig) -> Entry {
    let data = match std::str::from_utf8(&message.payload) {
        Ok(text) => Data::parse_json(text).unwrap_or_else(|_| Data::text(text)),
        Err(_) => Data::text(String::from_utf8_lossy(&message.payload).into_owned()),
    };
    let mut event = Event::new(data).with_id(seq.to_string());
    let name = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(config.name_header.as_str()));
    if let Some(name) = name {
        event = event.with_name(name.as_str());
    }
    Entry {
        seq,
        event,
        reset: false,
    }
}

/// The backend: its settings and the readers it shares among clients.
#[derive(Debug)]
pub struct Nats {
    config: Arc<NatsConfig>,
    hub: Arc<Hub>,
}

struct Hub {
    /// The server, or why the URL was refused (validation reports it first).
    server: Result<async_nats::ServerAddr, String>,
    /// The backend's one connection, made on first use; the client
    /// reconnects by itself.
    jetstream: OnceCell<jetstream::Context>,
    /// Bumped each time the connection is (re)established: readers then make
    /// new consumers, since a restarted server has lost theirs.
    connections: Arc<watch::Sender<u64>>,
    channels: Mutex<HashMap<String, Weak<Channel>>>,
    /// Reconnects, clients that lagged or were dropped.
    stats: Arc<BackendStats>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// One subject's reader and its clients' buffer; the reader stops when the
/// last client drops its `Arc<Channel>` (and with it `_stop`).
struct Channel {
    sender: broadcast::Sender<Arc<Entry>>,
    /// The last sequence the reader broadcast.
    delivered: Arc<AtomicU64>,
    _stop: oneshot::Sender<()>,
}

impl Nats {
    /// The backend for its settings (see [`NatsConfig::validate`]). It
    /// connects on first use.
    pub fn new(config: NatsConfig) -> Self {
        let server = config
            .url
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| e.to_string());
        Self {
            config: Arc::new(config),
            hub: Arc::new(Hub {
                server,
                jetstream: OnceCell::new(),
                connections: Arc::new(watch::channel(0).0),
                channels: Mutex::new(HashMap::new()),
                stats: Arc::new(BackendStats::new("nats")),
            }),
        }
    }

    /// The subject a request reads, its parameters checked and the result
    /// checked against `allow`.
    fn subject(&self, ctx: &RequestContext) -> Result<String, BackendError> {
        let subject = fill(&self.config.subject, |name| {
            let value = ctx.params.get(name).ok_or_else(|| {
                BackendError::new(
                    ErrorKind::Internal,
                    format!("the subject needs the path parameter {{{name}}}, which the route's path lacks"),
                )
            })?;
            if value.is_empty()
                || value.contains(['.', '*', '>'])
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(BackendError::bad_request(format!(
                    "the path parameter {{{name}}} may not be empty or contain `.`, `*`, `>`, whitespace or control characters: they would change the NATS subject"
                )));
            }
            Ok(value.as_str())
        })?;
        match &self.config.allow {
            Some(pattern) if !within(pattern, &subject) => Err(BackendError::new(
                ErrorKind::NotFound,
                format!("no subject {subject:?} here"),
            )),
            _ => Ok(subject),
        }
    }
}

/// `[…target]` of a publish route: the JetStream subject events are
/// published to. Its keys mean what they mean for the `nats` backend.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsTarget {
    /// The server. Default: `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream that must store the subject; a publish that lands in
    /// another stream (or none) is an error. Required.
    pub stream: String,
    /// The subject, with `{param}` placeholders from the publish route's
    /// path (`rooms.{room}`). Required.
    pub subject: String,
    /// The pattern the subject must fall within; required with placeholders.
    pub allow: Option<String>,
    /// The header the event name goes to. Default: `event`.
    pub name_header: String,
}

impl Default for NatsTarget {
    fn default() -> Self {
        let reader = NatsConfig::default();
        Self {
            url: reader.url,
            stream: reader.stream,
            subject: reader.subject,
            allow: reader.allow,
            name_header: reader.name_header,
        }
    }
}

impl NatsTarget {
    /// The reader's settings with the same meaning: the checks, the subject
    /// and the connection are the backend's own.
    fn as_reader(&self) -> NatsConfig {
        NatsConfig {
            url: self.url.clone(),
            stream: self.stream.clone(),
            subject: self.subject.clone(),
            allow: self.allow.clone(),
            name_header: self.name_header.clone(),
            ..NatsConfig::default()
        }
    }

    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        self.as_reader().validate()
    }
}

/// Publishes events to a JetStream subject.
#[derive(Debug)]
pub struct NatsPublisher {
    nats: Nats,
}

impl NatsPublisher {
    /// The publisher for its settings; it connects on first use.
    pub fn new(target: &NatsTarget) -> Self {
        Self {
            nats: Nats::new(target.as_reader()),
        }
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(
        &self,
        ctx: &RequestContext,
        publication: &Publication,
    ) -> Result<String, BackendError> {
        let subject = self.nats.subject(ctx)?;
        let jetstream = self.nats.hub.jetstream().await?;
        let mut headers = async_nats::HeaderMap::new();
        if let Some(name) = &publication.name {
            headers.insert(self.nats.config.name_header.as_str(), name.as_str());
        }
        let payload = publication.data.to_string();
        let ack = bounded("publish", async {
            jetstream
                .publish_with_headers(subject, headers, payload.into())
                .await?
                .await
        })
        .await?;
        if ack.stream != self.nats.config.stream {
            return Err(BackendError::new(
                ErrorKind::Internal,
                format!(
                    "the subject is stored by the stream {:?}, not {:?}: readers would not see the event",
                    ack.stream, self.nats.config.stream
                ),
            ));
        }
        Ok(ack.sequence.to_string())
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::new(ErrorKind::Unavailable, format!("NATS: {what}: {e}"))
}

fn too_many(config: &NatsConfig) -> BackendError {
    BackendError::new(
        ErrorKind::Unavailable,
        format!(
            "this gateway reads {} subjects already, its most; retry later",
            config.max_subjects
        ),
    )
}

fn no_stream(stream: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Unavailable,
        format!(
            "NATS has no JetStream stream {stream:?}; the gateway does not create streams, so it must be created first"
        ),
    )
}

/// Whether a JetStream API error is the server's error `code`.
fn is_code(error: Option<&jetstream::Error>, code: ErrorCode) -> bool {
    error.is_some_and(|e| e.error_code() == code)
}

/// Runs a JetStream request within [`REQUEST_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, "timed out")),
    }
}

/// The stream's first and last sequence now.
async fn bounds(jetstream: &jetstream::Context, stream: &str) -> Result<(u64, u64), BackendError> {
    let found = tokio::time::timeout(REQUEST_TIMEOUT, jetstream.get_stream(stream)).await;
    match found {
        Ok(Ok(found)) => {
            let state = &found.cached_info().state;
            Ok((state.first_sequence, state.last_sequence))
        }
        Ok(Err(e)) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(code)
                if is_code(Some(&code), ErrorCode::STREAM_NOT_FOUND) =>
            {
                tracing::warn!(%stream, "no such JetStream stream; the gateway does not create streams");
                Err(no_stream(stream))
            }
            _ => Err(unavailable("stream info", e)),
        },
        Err(_) => Err(unavailable("stream info", "timed out")),
    }
}

impl Hub {
    async fn jetstream(&self) -> Result<jetstream::Context, BackendError> {
        let server = self.server.as_ref().map_err(|e| {
            BackendError::new(ErrorKind::Internal, format!("the NATS URL is invalid: {e}"))
        })?;
        let context = self.jetstream.get_or_try_init(|| async {
            let connections = Arc::clone(&self.connections);
            let stats = Arc::clone(&self.stats);
            let connects = Arc::new(AtomicU64::new(0));
            let client = async_nats::ConnectOptions::new()
                .name("gateway")
                .connection_timeout(CONNECT_TIMEOUT)
                .request_timeout(Some(REQUEST_TIMEOUT))
                .reconnect_delay_callback(|attempts| {
                    let exponent = attempts.min(8) as u32;
                    (Duration::from_millis(20) * 2u32.pow(exponent)).min(MAX_RECONNECT_DELAY)
                })
                .event_callback(move |event| {
                    let connections = Arc::clone(&connections);
                    let connects = Arc::clone(&connects);
                    let stats = Arc::clone(&stats);
                    async move {
                        match event {
                            // The first is the connection being made; the
                            // next ones are reconnections.
                            async_nats::Event::Connected => {
                                if connects.fetch_add(1, Ordering::Relaxed) == 0 {
                                    tracing::info!("connected to NATS");
                                } else {
                                    tracing::info!("connected to NATS again");
                                    stats.reconnected();
                                    connections.send_modify(|n| *n += 1);
                                }
                            }
                            async_nats::Event::Disconnected => {
                                tracing::warn!("lost the NATS connection; reconnecting");
                            }
                            other => tracing::debug!(event = %other, "NATS"),
                        }
                    }
                })
                .connect(server.clone())
                .await
                .map_err(|e| unavailable("cannot connect", e))?;
            let mut context = jetstream::new(client);
            context.set_timeout(REQUEST_TIMEOUT);
            Ok::<_, BackendError>(context)
        });
        let context = context.await?;
        // While the connection is down (the client reconnecting), fail fast
        // rather than wait for requests to time out.
        if context.client().connection_state() != async_nats::connection::State::Connected {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                "NATS: not connected (reconnecting); retry later",
            ));
        }
        Ok(context.clone())
    }

    /// The subject's channel, started (after the stream's current last
    /// sequence) when it has none.
    async fn channel(
        &self,
        subject: &str,
        config: &Arc<NatsConfig>,
    ) -> Result<Arc<Channel>, BackendError> {
        if let Some(channel) = self.live_channel(subject) {
            return Ok(channel);
        }
        self.room_for_one_more(config)?;
        // The reader starts after the stream's last message now, so that a
        // client's catch-up (read after subscribing) and the reader overlap
        // rather than leave a gap. Its first consumer is made here, so that a
        // missing stream or subject is the request's error.
        let jetstream = self.jetstream().await?;
        // Watched from before the consumer exists: a reconnection after it
        // was made is one the reader hears of.
        let connections = self.connections.subscribe();
        let (_, last) = bounds(&jetstream, &config.stream).await?;
        let consumer = consumer(&jetstream, &config.stream, subject, last + 1).await?;
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(subject).and_then(Weak::upgrade) {
            delete_later(&jetstream, &config.stream, &consumer);
            return Ok(channel);
        }
        channels.retain(|_, weak| weak.strong_count() > 0);
        if channels.len() >= config.max_subjects {
            delete_later(&jetstream, &config.stream, &consumer);
            return Err(too_many(config));
        }
        let (sender, _) = broadcast::channel(config.buffer);
        let delivered = Arc::new(AtomicU64::new(last));
        let (stop, stopped) = oneshot::channel();
        let reader = Reader {
            jetstream,
            subject: subject.to_string(),
            last,
            sender: sender.clone(),
            delivered: Arc::clone(&delivered),
            config: Arc::clone(config),
            connections,
        };
        tokio::spawn(reader.run(consumer, stopped));
        let channel = Arc::new(Channel {
            sender,
            delivered,
            _stop: stop,
        });
        channels.insert(subject.to_string(), Arc::downgrade(&channel));
        Ok(channel)
    }

    /// A 503 when this backend reads `max_subjects` subjects already.
    fn room_for_one_more(&self, config: &NatsConfig) -> Result<(), BackendError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|_, weak| weak.strong_count() > 0);
        if channels.len() >= config.max_subjects {
            return Err(too_many(config));
        }
        Ok(())
    }

    fn live_channel(&self, subject: &str) -> Option<Arc<Channel>> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.get(subject).and_then(Weak::upgrade)
    }
}

/// A consumer of `subject` from sequence `start` on, as an ordered consumer
/// is: ephemeral, unacknowledged, in memory, one replica.
async fn consumer(
    jetstream: &jetstream::Context,
    stream: &str,
    subject: &str,
    start: u64,
) -> Result<PullConsumer, BackendError> {
    let config = pull::Config {
        description: Some("gateway".into()),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: start.max(1),
        },
        ack_policy: AckPolicy::None,
        max_deliver: 1,
        filter_subject: subject.to_string(),
        inactive_threshold: INACTIVE,
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    };
    let created = tokio::time::timeout(
        REQUEST_TIMEOUT,
        jetstream.create_consumer_on_stream(config, stream),
    )
    .await
    .map_err(|_| unavailable("creating a consumer", "timed out"))?;
    created.map_err(|e| {
        let code = match e.kind() {
            jetstream::stream::ConsumerErrorKind::JetStream(code) => Some(code),
            _ => None,
        };
        if is_code(code.as_ref(), ErrorCode::STREAM_NOT_FOUND) {
            no_stream(stream)
        } else if is_code(code.as_ref(), ErrorCode::CONSUMER_FILTER_NOT_SUBSET) {
            BackendError::new(
                ErrorKind::NotFound,
                format!("no subject {subject:?} here: the stream does not hold it"),
            )
        } else {
            unavailable("creating a consumer", e)
        }
    })
}

/// Deletes a consumer in the background (the server would drop it after
/// [`INACTIVE`] anyway).
fn delete_later(jetstream: &jetstream::Context, stream: &str, consumer: &PullConsumer) {
    let jetstream = jetstream.clone();
    let stream = stream.to_string();
    let name = consumer.cached_info().name.clone();
    tokio::spawn(async move {
        let deleted = tokio::time::timeout(
            REQUEST_TIMEOUT,
            jetstream.delete_consumer_from_stream(&name, &stream),
        )
        .await;
        if let Ok(Err(error)) = deleted {
            tracing::debug!(%stream, consumer = %name, %error, "could not delete a consumer");
        }
    });
}

/// Reads the subject's messages from sequence `from` on, at most `limit`
/// of them and at most those there were when it started (the ones after come
/// live), handing each to `each`; returns the last sequence read.
async fn scan(
    jetstream: &jetstream::Context,
    subject: &str,
    from: u64,
    limit: usize,
    config: &NatsConfig,
    mut each: impl FnMut(Entry),
) -> Result<Option<u64>, BackendError> {
    let consumer = consumer(jetstream, &config.stream, subject, from).await?;
    let there = consumer.cached_info().num_pending;
    let target = usize::try_from(there).unwrap_or(usize::MAX).min(limit);
    let mut read = 0;
    let mut last = None;
    let mut consumer_seq = 0;
    let scanned = async {
        while read < target {
            let page = fetch(
                &consumer,
                &mut consumer_seq,
                PAGE.min(target - read),
                config,
            )
            .await?;
            if page.is_empty() {
                // Gone meanwhile (the stream's limits or a purge).
                break;
            }
            read += page.len();
            for (entry, _) in page {
                last = Some(entry.seq);
                each(entry);
            }
        }
        Ok(last)
    }
    .await;
    delete_later(jetstream, &config.stream, &consumer);
    scanned
}

/// One pull of at most `count` messages that are there now, each with the
/// number of the subject's messages after it; a gap in the consumer's own
/// sequence (a message lost on the way) is an error.
async fn fetch(
    consumer: &PullConsumer,
    consumer_seq: &mut u64,
    count: usize,
    config: &NatsConfig,
) -> Result<Vec<(Entry, u64)>, BackendError> {
    let what = "reading the stream";
    let mut page = bounded(what, consumer.fetch().max_messages(count).messages()).await?;
    let mut entries = Vec::with_capacity(count);
    while let Some(message) = tokio::time::timeout(REQUEST_TIMEOUT, page.next())
        .await
        .map_err(|_| unavailable(what, "timed out"))?
    {
        let message = message.map_err(|e| unavailable(what, e))?;
        let info = message.info().map_err(|e| unavailable(what, e))?;
        if info.consumer_sequence != *consumer_seq + 1 {
            return Err(unavailable(what, "a message went missing on the way"));
        }
        *consumer_seq = info.consumer_sequence;
        let (seq, pending) = (info.stream_sequence, info.pending);
        entries.push((to_entry(&message, seq, config), pending));
    }
    Ok(entries)
}

/// A client's catch-up from the stream: a consumer of its own after the
/// client's position, read a page at a time as the client takes them, within
/// a budget.
struct CatchUp {
    jetstream: jetstream::Context,
    /// How many more messages it may read.
    budget: usize,
    /// The consumer and the last consumer sequence seen; made on first use,
    /// and again when it fails (the server drops one left idle).
    consumer: Option<(PullConsumer, u64)>,
    stream: String,
}

impl CatchUp {
    fn new(jetstream: jetstream::Context, config: &NatsConfig) -> Self {
        Self {
            jetstream,
            budget: config.max_catchup,
            consumer: None,
            stream: config.stream.clone(),
        }
    }

    /// The next page after `after` (at most `count` messages), and whether
    /// the subject has more after it.
    async fn page(
        &mut self,
        subject: &str,
        after: u64,
        count: usize,
        config: &NatsConfig,
    ) -> Result<(Vec<Entry>, bool), BackendError> {
        let mut again = true;
        loop {
            if self.consumer.is_none() {
                let made = consumer(&self.jetstream, &self.stream, subject, after + 1).await?;
                self.consumer = Some((made, 0));
            }
            let Some((current, consumer_seq)) = self.consumer.as_mut() else {
                continue;
            };
            match fetch(current, consumer_seq, count, config).await {
                Ok(page) => {
                    let more = page.last().is_some_and(|(_, pending)| *pending > 0);
                    let entries = page
                        .into_iter()
                        .map(|(entry, _)| entry)
                        .filter(|entry| entry.seq > after)
                        .collect();
                    return Ok((entries, more));
                }
                // Once more with a new consumer after `after`.
                Err(_) if again => {
                    again = false;
                    self.drop_consumer();
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn drop_consumer(&mut self) {
        if let Some((consumer, _)) = self.consumer.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                delete_later(&self.jetstream, &self.stream, &consumer);
            }
        }
    }
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        self.drop_consumer();
    }
}

/// The reader of one subject: a consumer after the last sequence delivered,
/// each message broadcast to the subject's clients; a new consumer when the
/// connection comes back, the consumer fails or skips.
struct Reader {
    jetstream: jetstream::Context,
    subject: String,
    /// The last sequence broadcast.
    last: u64,
    sender: broadcast::Sender<Arc<Entry>>,
    delivered: Arc<AtomicU64>,
    config: Arc<NatsConfig>,
    connections: watch::Receiver<u64>,
}

/// Why a reader's consumer stopped.
enum Stop {
    /// The last client left.
    Done,
    /// Make a new consumer, for this reason.
    Again(String),
}

impl Reader {
    async fn run(mut self, first: PullConsumer, mut stop: oneshot::Receiver<()>) {
        let mut consumer = Some(first);
        let mut backoff = MIN_BACKOFF;
        loop {
            let current = match consumer.take() {
                Some(c) => c,
                None => match consumer_again(&mut self).await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(subject = %self.subject, %error, "NATS reader cannot make its consumer; retrying");
                        if !pause(&mut backoff, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let before = self.last;
            let stopped = self.follow(&current, &mut stop).await;
            delete_later(&self.jetstream, &self.config.stream, &current);
            match stopped {
                Stop::Done => return,
                Stop::Again(reason) => {
                    tracing::info!(subject = %self.subject, after = self.last, %reason, "NATS reader makes a new consumer");
                    if self.last > before || reason == CONNECTED_AGAIN {
                        backoff = MIN_BACKOFF;
                    }
                    // A consumer that fails at once is not made again at once.
                    if !pause(&mut backoff, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Broadcasts the consumer's messages until it fails, skips, the
    /// connection is made again, or the reader is stopped.
    async fn follow(&mut self, consumer: &PullConsumer, stop: &mut oneshot::Receiver<()>) -> Stop {
        let messages = consumer
            .stream()
            .max_messages_per_batch(PAGE)
            .expires(EXPIRES)
            .heartbeat(HEARTBEAT)
            .messages();
        let mut messages = match tokio::time::timeout(REQUEST_TIMEOUT, messages).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => return Stop::Again(e.to_string()),
            Err(_) => return Stop::Again("pulling timed out".into()),
        };
        let mut consumer_seq = 0;
        loop {
            tokio::select! {
                _ = &mut *stop => return Stop::Done,
                changed = self.connections.changed() => {
                    return match changed {
                        Ok(()) => Stop::Again(CONNECTED_AGAIN.into()),
                        Err(_) => Stop::Done,
                    };
                }
                message = messages.next() => {
                    let message = match message {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => return Stop::Again(e.to_string()),
                        None => return Stop::Again("the consumer ended".into()),
                    };
                    let Ok(info) = message.info() else {
                        return Stop::Again("a message without its metadata".into());
                    };
                    if info.consumer_sequence != consumer_seq + 1 {
                        return Stop::Again("a message went missing on the way".into());
                    }
                    consumer_seq = info.consumer_sequence;
                    let seq = info.stream_sequence;
                    if seq <= self.last {
                        continue;
                    }
                    let entry = to_entry(&message, seq, &self.config);
                    self.last = seq;
                    self.delivered.store(seq, Ordering::Release);
                    // No receiver is no error: clients come and go.
                    let _ = self.sender.send(Arc::new(entry));
                }
            }
        }
    }
}

/// Waits `backoff` (doubled for the next time); false when the reader was
/// stopped meanwhile.
async fn pause(backoff: &mut Duration, stop: &mut oneshot::Receiver<()>) -> bool {
    tokio::select! {
        _ = stop => return false,
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

async fn consumer_again(reader: &mut Reader) -> Result<PullConsumer, BackendError> {
    // A stream deleted and created again (or a memory stream lost in a
    // restart) numbers from 1 again: a consumer after the old last sequence
    // would wait past messages that never come, and every new one would
    // look old. Start over, and tell the clients.
    let (first, end) = bounds(&reader.jetstream, &reader.config.stream).await?;
    if end < reader.last {
        tracing::warn!(subject = %reader.subject, was = reader.last, now = end, "The NATS stream's sequences started again; following the new ones");
        reader.last = first.saturating_sub(1);
        reader.delivered.store(reader.last, Ordering::Release);
        let _ = reader.sender.send(Arc::new(Entry {
            seq: reader.last,
            event: Event::new(Data::text("")),
            reset: true,
        }));
    }
    consumer(
        &reader.jetstream,
        &reader.config.stream,
        &reader.subject,
        reader.last + 1,
    )
    .await
}

fn lagged(at: u64) -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        format!("the client fell too far behind; reconnect with Last-Event-ID {at}"),
    )
}

fn restarted() -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        "the stream was created again and numbers its messages from the start again; \
         what follows has new ids",
    )
}

fn gap(after: u64, first: u64) -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        format!(
            "messages after {after} may have been removed from the stream (its oldest now is \
             {first}) before this client read them; the stream goes on with the oldest left"
        ),
    )
}

/// One client: where it is in the stream, and where its next events come
/// from: a notice, its history or a page of catch-up, more pages from the
/// stream, then the live buffer.
struct Client {
    subject: String,
    config: Arc<NatsConfig>,
    hub: Arc<Hub>,
    _channel: Arc<Channel>,
    live: broadcast::Receiver<Arc<Entry>>,
    /// The history, or the current page of the catch-up.
    backlog: VecDeque<Entry>,
    /// The last sequence sent (or skipped, as before the client joined):
    /// live messages up to it are dropped.
    last: u64,
    /// While catching up from the stream.
    catching_up: Option<CatchUp>,
    /// An error to send before anything else (a gap), the stream going on.
    notice: Option<BackendError>,
    /// An error to send once the backlog is out, then end.
    ending: Option<BackendError>,
    ended: bool,
}

#[async_trait]
impl Backend for Nats {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let subject = self.subject(ctx)?;
        let resume = match ctx.last_event_id.as_deref() {
            None => None,
            Some(id) => Some(
                id.parse::<u64>()
                    .ok()
                    .filter(|_| id.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        BackendError::bad_request(format!(
                            "Last-Event-ID {id:?} is not a NATS stream sequence (a decimal number)"
                        ))
                    })?,
            ),
        };
        let channel = self.hub.channel(&subject, &self.config).await?;
        // Subscribe first, then read what came before: the two overlap (and
        // sequences drop the repeats) instead of leaving a gap.
        let live = channel.sender.subscribe();
        let delivered = channel.delivered.load(Ordering::Acquire);
        let mut client = Client {
            subject,
            config: Arc::clone(&self.config),
            hub: Arc::clone(&self.hub),
            _channel: channel,
            live,
            backlog: VecDeque::new(),
            last: delivered,
            catching_up: None,
            notice: None,
            ending: None,
            ended: false,
        };
        match resume {
            Some(after) => {
                let jetstream = self.hub.jetstream().await?;
                let (_, end) = bounds(&jetstream, &self.config.stream).await?;
                if after > end {
                    return Err(BackendError::bad_request(format!(
                        "Last-Event-ID {after} is past the stream's last sequence {end}: it is not an id of this stream"
                    )));
                }
                client.last = after;
                // At the end already (the usual reconnection), what follows
                // comes live.
                if after < end {
                    client.catching_up = Some(CatchUp::new(jetstream, &self.config));
                }
            }
            None if self.config.history > 0 => client.history(self.config.history).await?,
            None => {}
        }
        Ok(futures::stream::unfold(client, Client::next).boxed())
    }

    fn stats(&self) -> Option<&BackendStats> {
        Some(&self.hub.stats)
    }
}

impl Client {
    /// The last `n` messages of the subject among the stream's last
    /// `max_catchup`, oldest first.
    async fn history(&mut self, n: usize) -> Result<(), BackendError> {
        let jetstream = self.hub.jetstream().await?;
        let (first, end) = bounds(&jetstream, &self.config.stream).await?;
        // A subject may be a small share of a busy stream, and only reading
        // finds its messages: the window of the last `max_catchup` sequences
        // bounds that work, keeping the last `n` seen.
        let window = self.config.max_catchup as u64;
        let from = first.max((end + 1).saturating_sub(window)).max(1);
        let kept = &mut self.backlog;
        let read = scan(
            &jetstream,
            &self.subject,
            from,
            self.config.max_catchup,
            &self.config,
            |entry| {
                if kept.len() == n {
                    kept.pop_front();
                }
                kept.push_back(entry);
            },
        )
        .await?;
        // What the stream held up to `end` is history, sent or not.
        self.last = self.last.max(end).max(read.unwrap_or(0));
        Ok(())
    }

    /// The next page of the catch-up into the backlog; at the budget's end
    /// with more to read, the stream is to end with `lagged`.
    async fn fetch_page(&mut self) -> Result<(), BackendError> {
        if self.catching_up.is_none() {
            return Ok(());
        }
        // Limits remove the oldest messages all the time: a page that would
        // start past removed ones says so first.
        let jetstream = self.hub.jetstream().await?;
        let (first, _) = bounds(&jetstream, &self.config.stream).await?;
        if first > self.last + 1 && self.notice.is_none() {
            self.notice = Some(gap(self.last, first));
        }
        let Some(catch_up) = self.catching_up.as_mut() else {
            return Ok(());
        };
        let count = PAGE.min(catch_up.budget);
        let (entries, more) = if count == 0 {
            (Vec::new(), true)
        } else {
            catch_up
                .page(&self.subject, self.last, count, &self.config)
                .await?
        };
        catch_up.budget -= entries.len().min(catch_up.budget);
        let left = catch_up.budget;
        match (more, left) {
            (false, _) => self.catching_up = None,
            (true, 0) => {
                self.hub.stats.dropped();
                self.ending = Some(lagged(entries.last().map_or(self.last, |e| e.seq)));
                self.catching_up = None;
            }
            (true, _) => {}
        }
        self.backlog.extend(entries);
        Ok(())
    }

    async fn next(mut self) -> Option<(Result<Event, BackendError>, Self)> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(notice) = self.notice.take() {
                return Some((Err(notice), self));
            }
            // Pages follow `last` by construction; history precedes the
            // stream's end, which `last` already is.
            if let Some(entry) = self.backlog.pop_front() {
                self.last = self.last.max(entry.seq);
                return Some((Ok(entry.event), self));
            }
            if self.catching_up.is_some() {
                if let Err(error) = self.fetch_page().await {
                    self.end();
                    return Some((Err(error), self));
                }
                continue;
            }
            if let Some(error) = self.ending.take() {
                self.end();
                return Some((Err(error), self));
            }
            match self.live.recv().await {
                Ok(entry) if entry.reset => {
                    self.last = entry.seq;
                    return Some((Err(restarted()), self));
                }
                Ok(entry) => {
                    if entry.seq <= self.last {
                        continue;
                    }
                    self.last = entry.seq;
                    return Some((Ok(entry.event.clone()), self));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.hub.stats.lagged();
                    // Behind by more than the buffer: catch up from the
                    // stream, page by page, within `max_catchup`.
                    match self.hub.jetstream().await {
                        Ok(jetstream) => {
                            self.catching_up = Some(CatchUp::new(jetstream, &self.config));
                        }
                        Err(error) => {
                            self.end();
                            return Some((Err(error), self));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Its next poll yields nothing; its catch-up consumer goes.
    fn end(&mut self) {
        self.ended = true;
        self.catching_up = None;
        self.backlog.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_patterns_and_templates() {
        assert!(within("rooms.*", "rooms.a"));
        assert!(!within("rooms.*", "rooms.a.b"));
        assert!(!within("rooms.*", "rooms"));
        assert!(within("rooms.>", "rooms.a.b"));
        assert!(!within("rooms.>", "rooms"));
        assert!(within("rooms.*", "rooms.*"), "a wildcard within a wildcard");
        assert!(!within("rooms.*", "rooms.>"), "wider than the pattern");
        assert!(!within("rooms.a", "rooms.*"));
        assert!(within("exact.one", "exact.one"));
        assert!(check_subject("rooms.>").is_ok());
        assert!(check_subject("rooms.*.x").is_ok());
        assert!(check_subject("rooms..x").is_err());
        assert!(check_subject("rooms.>.x").is_err());
        assert!(check_subject("rooms.a*").is_err());
        assert!(check_subject("rooms.a b").is_err());
        assert_eq!(placeholders("a.{x}.b-{y}"), Ok(vec!["x", "y"]));
        assert!(placeholders("a.{x").is_err());
        assert!(placeholders("a.{}").is_err());
        // One pass: a value is not searched for placeholders again.
        let filled = fill("a.{x}.{y}", |name| {
            Ok::<_, ()>(if name == "x" { "{y}" } else { "2" })
        });
        assert_eq!(filled, Ok("a.{y}.2".to_string()));
    }

    #[test]
    fn validation() {
        let config = NatsConfig {
            stream: "ROOMS".into(),
            subject: "rooms.{room}".into(),
            ..NatsConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["allow"]);
        let config = NatsConfig {
            url: "http://[x".into(),
            stream: "a.b".into(),
            subject: "rooms..{room}".into(),
            allow: Some("rooms.>.x".into()),
            name_header: "a b".into(),
            history: 1001,
            buffer: 0,
            max_catchup: 0,
            max_subjects: 0,
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "url",
                "stream",
                "subject",
                "allow",
                "history",
                "name_header",
                "buffer",
                "max_catchup",
                "max_subjects"
            ]
        );
        let good = NatsConfig {
            stream: "ROOMS".into(),
            subject: "rooms.{room}".into(),
            allow: Some("rooms.*".into()),
            ..NatsConfig::default()
        };
        assert!(good.validate().is_empty(), "{:?}", good.validate());
    }

    #[test]
    fn parameters_cannot_change_the_subject() {
        let nats = Nats::new(NatsConfig {
            stream: "ROOMS".into(),
            subject: "rooms.{room}".into(),
            allow: Some("rooms.>".into()),
            ..NatsConfig::default()
        });
        let ctx = |room: &str| RequestContext {
            params: [("room".to_string(), room.to_string())].into(),
            ..RequestContext::default()
        };
        assert_eq!(nats.subject(&ctx("lobby")), Ok("rooms.lobby".to_string()));
        for bad in ["a.b", "*", ">", "a b", "a\tb", ""] {
            let refused = nats.subject(&ctx(bad)).map_err(|e| e.kind);
            assert_eq!(refused, Err(ErrorKind::BadRequest), "{bad:?}");
        }
        let narrow = Nats::new(NatsConfig {
            stream: "ROOMS".into(),
            subject: "rooms.{room}".into(),
            allow: Some("rooms.lobby".into()),
            ..NatsConfig::default()
        });
        let outside = narrow.subject(&ctx("kitchen")).map_err(|e| e.kind);
        assert_eq!(outside, Err(ErrorKind::NotFound));
    }
}
