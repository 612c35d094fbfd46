//! `nats`: events from a subject of a NATS JetStream stream, shared by every
//! client of the subject (a [`Bus`] of the [`Nats`] broker: see
//! [`crate::bus`] for what every bus backend does).
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
//! What is NATS's own:
//!
//! - A message's stream sequence (in decimal) is the event id, so
//!   `Last-Event-ID` resumes exactly after it, on this gateway or any other
//!   reading the same stream. A `Last-Event-ID` that is not a number is a
//!   400; one past the stream's last sequence (the stream made again, which
//!   numbers from 1 again) gets a notice and the stream from its start.
//! - The event data is the payload: JSON when it parses, else text (a
//!   payload that is not UTF-8 is an error event naming its sequence); the
//!   name is the message's `name_header` (`event`) header when present.
//! - Path parameters fill the subject's `{param}`s; one that is empty or
//!   holds `.`, `*`, `>`, whitespace or a control character is a 400, since
//!   it would change what the subject means (more tokens, or wildcards).
//! - `history` on connect: the last N messages of the subject. Only reading
//!   a stream finds one subject's messages in it, so the read is bounded: it
//!   covers the stream's last `max_catchup` sequences (whatever their
//!   subjects) and keeps the last N of the subject's; on a busy stream, a
//!   rarely used subject may show fewer.
//! - The reader of a subject is an ordered, unacknowledged, in-memory pull
//!   consumer on the backend's one connection, deleted when the last client
//!   leaves; so is a client's catch-up, read a page at a time as the client
//!   takes them. Each costs a consumer on the server: `max_keys`
//!   (`max_subjects`, its old name, is accepted) caps the subjects read.
//! - When the connection comes back (a restart), each reader makes a new
//!   consumer after the last sequence it delivered, having checked the
//!   stream's bounds: nothing lost, nothing repeated, and a stream made
//!   again (another creation time, or sequences behind) announced and
//!   followed from its start. A gap in the consumer's own sequence (a
//!   message dropped on the way) makes a new consumer too.
//! - While the connection is down, a request waits up to 2 s for it to come
//!   back, then is answered 503.
//! - A stream that does not exist is answered 503 (the service is not
//!   ready: the operator creates the stream), unless `create` lets the
//!   gateway declare it (its subjects, storage and retention); a subject the
//!   stream does not hold is answered 404.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{OnceCell, watch};

use crate::bus::key::{self, Pattern, Subject, Template};
use crate::bus::{Bounds, Broker, Bus, Entry, Feed, Limits, Page};
use crate::problem::Problem;
use crate::publish::{Publication, Publisher};
use crate::{BackendError, BackendStats, Data, ErrorKind, Event, RequestContext};

/// How long one JetStream API request (or one page of messages) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to NATS may take, and how long a request waits for
/// a lost connection to come back: a 503 beats a long wait.
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

/// The `nats` backend's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The server: `nats://[user:password@]host[:port]`.
    /// Default: `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream that stores the subject's messages. Required.
    /// While it does not exist, requests are answered 503, unless `create`
    /// is set.
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
    /// most one page (256 messages) of it at a time. At least 1.
    /// Default: `10000`.
    pub max_catchup: usize,
    /// Subjects this backend reads at once, each with a consumer on the
    /// server; a client of one more subject is answered 503, so that clients
    /// cannot pile up consumers. `max_subjects` is its old name. Default:
    /// `1000`.
    #[serde(alias = "max_subjects")]
    pub max_keys: usize,
    /// `[…create]`: declare the stream when it does not exist (the
    /// operator allows the gateway to). Default: none (the gateway
    /// creates no stream).
    pub create: Option<NatsCreate>,
}

/// The JetStream stream the gateway declares when it is missing.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsCreate {
    /// The subjects the stream stores. Default: `allow`, else `subject`.
    pub subjects: Vec<String>,
    /// `file` (kept across restarts) or `memory`. Default: `file`.
    pub storage: String,
    /// How long a message is kept. Default: `24h`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The most bytes the stream keeps (oldest removed first). Default:
    /// `1073741824` (1 GiB).
    pub max_bytes: i64,
}

impl Default for NatsCreate {
    fn default() -> Self {
        Self {
            subjects: Vec::new(),
            storage: "file".into(),
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
        }
    }
}

impl NatsCreate {
    fn validate(&self, problems: &mut Vec<Problem>) {
        for subject in &self.subjects {
            if let Err(reason) = Subject::parse(subject) {
                problems.push(Problem::new(
                    "create.subjects",
                    format!("{subject:?}: {reason}"),
                ));
            }
        }
        if !matches!(self.storage.as_str(), "file" | "memory") {
            problems.push(Problem::new(
                "create.storage",
                format!("{:?}: `file` or `memory`", self.storage),
            ));
        }
        if self.max_age.is_zero() {
            problems.push(Problem::new("create.max_age", "must be more than 0"));
        }
        if self.max_bytes < 1 {
            problems.push(Problem::new("create.max_bytes", "at least 1"));
        }
    }

    /// The stream's configuration; `reader` gives the default subjects.
    fn stream(&self, reader: &NatsConfig) -> jetstream::stream::Config {
        let subjects = if self.subjects.is_empty() {
            vec![
                reader
                    .allow
                    .clone()
                    .unwrap_or_else(|| reader.subject.clone()),
            ]
        } else {
            self.subjects.clone()
        };
        jetstream::stream::Config {
            name: reader.stream.clone(),
            subjects,
            storage: if self.storage == "memory" {
                jetstream::stream::StorageType::Memory
            } else {
                jetstream::stream::StorageType::File
            },
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            ..Default::default()
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: String::new(),
            subject: String::new(),
            allow: None,
            history: limits.history,
            name_header: "event".into(),
            buffer: limits.buffer,
            max_catchup: limits.max_catchup,
            max_keys: limits.max_keys,
            create: None,
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
            match Template::parse(&self.subject) {
                Err(reason) => problems.push(Problem::new("subject", reason)),
                Ok(template) => {
                    if let Err(reason) = key::check_subject(&template.sample()) {
                        problems.push(Problem::new("subject", reason));
                    }
                    if template.has_placeholders() && self.allow.is_none() {
                        problems.push(Problem::new(
                            "allow",
                            "required when `subject` has placeholders (`rooms.*`), so that clients cannot read arbitrary subjects",
                        ));
                    }
                }
            }
        }
        if let Some(allow) = &self.allow {
            if let Err(reason) = Subject::parse(allow) {
                problems.push(Problem::new("allow", reason));
            }
        }
        let limits = self.limits();
        let (history, rest): (Vec<_>, Vec<_>) = limits
            .validate()
            .into_iter()
            .partition(|p| p.key == "history");
        problems.extend(history);
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
        problems.extend(rest);
        if let Some(create) = &self.create {
            create.validate(&mut problems);
        }
        problems
    }

    /// The limits every bus backend shares.
    pub fn limits(&self) -> Limits {
        Limits {
            history: self.history,
            buffer: self.buffer,
            max_catchup: self.max_catchup,
            max_keys: self.max_keys,
        }
    }

    /// The backend (see [`validate`](Self::validate)); it connects on first
    /// use.
    pub fn build(&self) -> Bus<Nats> {
        Bus::new(Nats::new(self), self.limits())
    }

    /// The publish target writing what this reads (a durable job's log).
    pub fn target(&self) -> NatsTarget {
        NatsTarget {
            url: self.url.clone(),
            stream: self.stream.clone(),
            subject: self.subject.clone(),
            allow: self.allow.clone(),
            name_header: self.name_header.clone(),
            create: self.create.clone(),
        }
    }
}

/// Whether `name` can name a JetStream stream.
fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        })
}

/// NATS JetStream as a bus: the backend's one connection, the stream, the
/// subject template.
pub struct Nats {
    /// The server, or why the URL was refused (validation reports it first).
    server: Result<async_nats::ServerAddr, String>,
    /// The backend's one connection, made on first use; the client
    /// reconnects by itself.
    jetstream: OnceCell<jetstream::Context>,
    /// Bumped each time the connection is made again: readers then make
    /// new consumers, since a restarted server has lost theirs.
    connections: Arc<watch::Sender<u64>>,
    stream: String,
    template: Template,
    allow: Option<Subject>,
    name_header: String,
    /// The window `history` reads (`max_catchup`).
    window: usize,
    /// The stream to declare when it is missing (`create`).
    create: Option<jetstream::stream::Config>,
    stats: Arc<BackendStats>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("stream", &self.stream)
            .field("subject", &self.template)
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// The broker for its settings (see [`NatsConfig::validate`]).
    pub fn new(config: &NatsConfig) -> Self {
        let server = config
            .url
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| e.to_string());
        Self {
            server,
            jetstream: OnceCell::new(),
            connections: Arc::new(watch::channel(0).0),
            stream: config.stream.clone(),
            // Validation refused a subject that does not parse.
            template: Template::parse(&config.subject).unwrap_or_default(),
            allow: config.allow.as_deref().and_then(|a| Subject::parse(a).ok()),
            name_header: config.name_header.clone(),
            window: config.max_catchup,
            create: config.create.as_ref().map(|c| c.stream(config)),
            stats: Arc::new(BackendStats::new("nats")),
        }
    }

    /// The backend's connection; while it is down, waits a little for the
    /// client to make it again, then fails (503).
    async fn jetstream(&self) -> Result<jetstream::Context, BackendError> {
        let server = self.server.as_ref().map_err(|e| {
            BackendError::new(ErrorKind::Internal, format!("the NATS URL is invalid: {e}"))
        })?;
        let context = self
            .jetstream
            .get_or_try_init(|| self.connect(server.clone()))
            .await?;
        let client = context.client();
        let connected = || client.connection_state() == async_nats::connection::State::Connected;
        if !connected() {
            // A restart the gateway slept through: the client is at it.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, async {
                while !connected() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if !connected() {
                return Err(BackendError::new(
                    ErrorKind::Unavailable,
                    "NATS: not connected (reconnecting); retry later",
                ));
            }
        }
        Ok(context.clone())
    }

    async fn connect(
        &self,
        server: async_nats::ServerAddr,
    ) -> Result<jetstream::Context, BackendError> {
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
                        // The first is the connection being made; the next
                        // ones are reconnections.
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
            .connect(server)
            .await
            .map_err(|e| unavailable("cannot connect", e))?;
        let mut context = jetstream::new(client);
        context.set_timeout(REQUEST_TIMEOUT);
        Ok(context)
    }

    /// A message as clients get it.
    fn entry(&self, message: &async_nats::Message, seq: u64) -> Entry<u64> {
        let event = match std::str::from_utf8(&message.payload) {
            Ok(text) => {
                let data = Data::parse_json(text).unwrap_or_else(|_| Data::text(text));
                let mut event = Event::new(data).with_id(seq.to_string());
                let name = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(self.name_header.as_str()));
                if let Some(name) = name {
                    event = event.with_name(name.as_str());
                }
                Ok(event)
            }
            Err(_) => Err("its payload is not UTF-8 text".into()),
        };
        Entry {
            position: seq,
            event,
        }
    }

    /// Reads the subject's messages from sequence `from` on, at most the
    /// window and none after `end`, handing each to `each`.
    async fn scan(
        &self,
        jetstream: &jetstream::Context,
        subject: &str,
        from: u64,
        end: u64,
        mut each: impl FnMut(Entry<u64>),
    ) -> Result<(), BackendError> {
        let consumer = Consumer::new(jetstream, &self.stream, subject, from).await?;
        let mut consumer_seq = 0;
        let mut read = 0;
        while read < self.window {
            let count = Self::PAGE.min(self.window - read);
            let page = fetch(&consumer.consumer, &mut consumer_seq, count).await?;
            let Some((_, _, pending)) = page.last() else {
                // Gone meanwhile (the stream's limits or a purge).
                break;
            };
            let done = *pending == 0;
            read += page.len();
            for (message, seq, _) in &page {
                if *seq > end {
                    return Ok(());
                }
                each(self.entry(message, *seq));
            }
            if done {
                break;
            }
        }
        Ok(())
    }

    /// The stream's info now: 503 when it does not exist.
    async fn info(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<jetstream::stream::Info, BackendError> {
        let stream = &self.stream;
        match tokio::time::timeout(REQUEST_TIMEOUT, jetstream.get_stream(stream)).await {
            Ok(Ok(found)) => Ok(found.cached_info().clone()),
            Ok(Err(e)) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(code)
                    if is_code(Some(&code), ErrorCode::STREAM_NOT_FOUND) =>
                {
                    let Some(config) = &self.create else {
                        tracing::warn!(%stream, "no such JetStream stream; `create` would let the gateway declare it");
                        return Err(no_stream(stream));
                    };
                    let made = bounded("declaring the stream", async {
                        jetstream.get_or_create_stream(config.clone()).await
                    })
                    .await?;
                    tracing::info!(%stream, subjects = ?config.subjects, "declared a JetStream stream");
                    Ok(made.cached_info().clone())
                }
                _ => Err(unavailable("stream info", e)),
            },
            Err(_) => Err(unavailable("stream info", "timed out")),
        }
    }

    /// One consumer's worth of the reader: broadcasts its messages until it
    /// fails, skips, or the connection is made again.
    async fn read(
        &self,
        consumer: &PullConsumer,
        feed: &mut Feed<u64>,
        connections: &mut watch::Receiver<u64>,
    ) -> String {
        let messages = consumer
            .stream()
            .max_messages_per_batch(Self::PAGE)
            .expires(EXPIRES)
            .heartbeat(HEARTBEAT)
            .messages();
        let mut messages = match tokio::time::timeout(REQUEST_TIMEOUT, messages).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "pulling timed out".into(),
        };
        let mut consumer_seq = 0;
        loop {
            tokio::select! {
                changed = connections.changed() => {
                    return match changed {
                        Ok(()) => CONNECTED_AGAIN.into(),
                        // The backend is gone; its hub stops this reader.
                        Err(_) => std::future::pending().await,
                    };
                }
                message = messages.next() => {
                    let message = match message {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => return e.to_string(),
                        None => return "the consumer ended".into(),
                    };
                    let Ok(info) = message.info() else {
                        return "a message without its metadata".into();
                    };
                    if info.consumer_sequence != consumer_seq + 1 {
                        return "a message went missing on the way".into();
                    }
                    consumer_seq = info.consumer_sequence;
                    let seq = info.stream_sequence;
                    feed.send(self.entry(&message, seq));
                }
            }
        }
    }
}

/// The stream's bounds as a bus sees them: its last sequence, what came
/// before its first, and its creation time (which tells a stream made
/// again from the one before).
fn stream_bounds(info: &jetstream::stream::Info) -> Bounds<u64> {
    let state = &info.state;
    Bounds {
        end: Some(state.last_sequence).filter(|last| *last > 0),
        gone: Some(state.first_sequence.saturating_sub(1)).filter(|gone| *gone > 0),
        epoch: u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0),
    }
}

/// A client's consumer while it catches up, made on its first page and
/// again when it fails (the server drops one left idle); deleted when the
/// catch-up ends.
#[derive(Default)]
pub struct Pager {
    /// The consumer, the last consumer sequence seen, the last stream
    /// sequence read.
    current: Option<(Consumer, u64, u64)>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let read = self.current.as_ref().map(|(_, _, read)| read);
        f.debug_struct("Pager").field("read", &read).finish()
    }
}

impl Broker for Nats {
    type Position = u64;
    type Pager = Pager;
    const PAGE: usize = 256;
    const ID: &'static str = "a NATS stream sequence (a decimal number)";

    fn parse(&self, id: &str) -> Option<u64> {
        id.parse::<u64>()
            .ok()
            .filter(|_| id.bytes().all(|b| b.is_ascii_digit()))
    }

    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError> {
        let subject = self.template.resolve(ctx, Subject::check_value)?;
        key::allowed(subject, self.allow.as_ref())
    }

    async fn bounds(&self, subject: &str) -> Result<Bounds<u64>, BackendError> {
        let jetstream = self.jetstream().await?;
        let info = self.info(&jetstream).await?;
        let held = info
            .config
            .subjects
            .iter()
            .any(|pattern| Subject::parse(pattern).is_ok_and(|p| p.allows(subject)));
        if !held {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!(
                    "no subject {} here: the stream does not hold it",
                    crate::Shown(subject)
                ),
            ));
        }
        Ok(stream_bounds(&info))
    }

    async fn history(
        &self,
        subject: &str,
        n: usize,
        end: u64,
    ) -> Result<Vec<Entry<u64>>, BackendError> {
        let jetstream = self.jetstream().await?;
        let info = self.info(&jetstream).await?;
        // A subject may be a small share of a busy stream, and only reading
        // finds its messages: the window of the last `max_catchup`
        // sequences bounds that work, keeping the last `n` seen.
        let window = self.window as u64;
        let from = info
            .state
            .first_sequence
            .max((end + 1).saturating_sub(window))
            .max(1);
        let mut kept = std::collections::VecDeque::with_capacity(n);
        self.scan(&jetstream, subject, from, end, |entry| {
            if kept.len() == n {
                kept.pop_front();
            }
            kept.push_back(entry);
        })
        .await?;
        Ok(kept.into())
    }

    async fn page(
        &self,
        subject: &str,
        pager: &mut Pager,
        after: u64,
        count: usize,
    ) -> Result<Page<u64>, BackendError> {
        let jetstream = self.jetstream().await?;
        // A consumer left elsewhere (the client's position moved on
        // without it) is made again after the position.
        if pager
            .current
            .as_ref()
            .is_some_and(|(_, _, read)| *read != after)
        {
            pager.current = None;
        }
        let mut again = true;
        let (entries, more) = loop {
            if pager.current.is_none() {
                let made = Consumer::new(&jetstream, &self.stream, subject, after + 1).await?;
                pager.current = Some((made, 0, after));
            }
            let Some((current, consumer_seq, read)) = pager.current.as_mut() else {
                continue;
            };
            match fetch(&current.consumer, consumer_seq, count).await {
                Ok(page) => {
                    let more = page.last().is_some_and(|(_, _, pending)| *pending > 0);
                    let entries: Vec<_> = page
                        .iter()
                        .filter(|(_, seq, _)| *seq > after)
                        .map(|(message, seq, _)| self.entry(message, *seq))
                        .collect();
                    *read = entries.last().map_or(after, |e| e.position);
                    break (entries, more);
                }
                // Once more with a new consumer after `after`.
                Err(_) if again => {
                    again = false;
                    pager.current = None;
                }
                Err(e) => return Err(e),
            }
        };
        // After the entries: what went between the two is announced.
        let info = self.info(&jetstream).await?;
        Ok(Page {
            entries,
            more,
            gone: stream_bounds(&info).gone,
        })
    }

    /// A consumer after the feed's last sequence, made again (after the
    /// stream's bounds went to [`Feed::resync`]) when the connection comes
    /// back or the consumer fails.
    async fn follow(&self, subject: &str, mut feed: Feed<u64>) {
        // Watched from before the first consumer: a reconnection after it
        // was made is one the reader hears of.
        let mut connections = self.connections.subscribe();
        let mut backoff = MIN_BACKOFF;
        let mut first = true;
        loop {
            let made = async {
                let jetstream = self.jetstream().await?;
                if !first {
                    feed.resync(&self.bounds(subject).await?);
                }
                Consumer::new(&jetstream, &self.stream, subject, feed.last() + 1).await
            };
            let consumer = match made.await {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(%subject, %error, "NATS reader cannot make its consumer; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            first = false;
            let before = feed.last();
            let reason = self
                .read(&consumer.consumer, &mut feed, &mut connections)
                .await;
            drop(consumer);
            tracing::info!(%subject, after = feed.last(), %reason, "NATS reader makes a new consumer");
            if feed.last() > before || reason == CONNECTED_AGAIN {
                backoff = MIN_BACKOFF;
            }
            // A consumer that fails at once is not made again at once.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn stats(&self) -> &BackendStats {
        &self.stats
    }
}

/// A consumer of one subject from a sequence on, as an ordered consumer
/// is (ephemeral, unacknowledged, in memory, one replica), deleted when
/// dropped (the server would drop it after [`INACTIVE`] anyway).
struct Consumer {
    consumer: PullConsumer,
    jetstream: jetstream::Context,
    stream: String,
}

impl Consumer {
    async fn new(
        jetstream: &jetstream::Context,
        stream: &str,
        subject: &str,
        start: u64,
    ) -> Result<Self, BackendError> {
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
        let consumer = created.map_err(|e| {
            let code = match e.kind() {
                jetstream::stream::ConsumerErrorKind::JetStream(code) => Some(code),
                _ => None,
            };
            if is_code(code.as_ref(), ErrorCode::STREAM_NOT_FOUND) {
                no_stream(stream)
            } else if is_code(code.as_ref(), ErrorCode::CONSUMER_FILTER_NOT_SUBSET) {
                BackendError::new(
                    ErrorKind::NotFound,
                    format!(
                        "no subject {} here: the stream does not hold it",
                        crate::Shown(subject)
                    ),
                )
            } else {
                unavailable("creating a consumer", e)
            }
        })?;
        Ok(Self {
            consumer,
            jetstream: jetstream.clone(),
            stream: stream.to_string(),
        })
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let jetstream = self.jetstream.clone();
        let stream = std::mem::take(&mut self.stream);
        let name = self.consumer.cached_info().name.clone();
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
}

/// One pull of at most `count` messages that are there now, each with its
/// stream sequence and the number of the subject's messages after it; a gap in the consumer's own
/// sequence (a message lost on the way) is an error.
async fn fetch(
    consumer: &PullConsumer,
    consumer_seq: &mut u64,
    count: usize,
) -> Result<Vec<(async_nats::Message, u64, u64)>, BackendError> {
    let what = "reading the stream";
    let mut page = bounded(what, consumer.fetch().max_messages(count).messages()).await?;
    let mut messages = Vec::with_capacity(count);
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
        messages.push((message.message, seq, pending));
    }
    Ok(messages)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::new(ErrorKind::Unavailable, format!("NATS: {what}: {e}"))
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
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, "timed out")),
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
    /// Declare the stream when it is missing, as the backend's `create`.
    pub create: Option<NatsCreate>,
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
            create: None,
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
            create: self.create.clone(),
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
    /// Whether the stream was found or declared (with `create`).
    declared: std::sync::atomic::AtomicBool,
}

impl NatsPublisher {
    /// The publisher for its settings; it connects on first use.
    pub fn new(target: &NatsTarget) -> Self {
        Self {
            nats: Nats::new(&target.as_reader()),
            declared: std::sync::atomic::AtomicBool::new(false),
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
        let subject = self.nats.key(ctx)?;
        let jetstream = self.nats.jetstream().await?;
        if self.nats.create.is_some() && !self.declared.load(Ordering::Relaxed) {
            // Declared (when missing) before the first publish: a subject
            // no stream holds is refused by JetStream.
            self.nats.info(&jetstream).await?;
            self.declared.store(true, Ordering::Relaxed);
        }
        let mut headers = async_nats::HeaderMap::new();
        if let Some(name) = &publication.name {
            headers.insert(self.nats.name_header.as_str(), name.as_str());
        }
        let payload = publication.data.as_str().to_owned();
        let ack = bounded("publish", async {
            jetstream
                .publish_with_headers(subject, headers, payload.into())
                .await?
                .await
        })
        .await?;
        if ack.stream != self.nats.stream {
            return Err(BackendError::new(
                ErrorKind::Internal,
                format!(
                    "the subject is stored by the stream {:?}, not {:?}: readers would not see the event",
                    ack.stream, self.nats.stream
                ),
            ));
        }
        Ok(ack.sequence.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            max_keys: 0,
            create: Some(NatsCreate {
                subjects: vec!["a..b".into()],
                storage: "disk".into(),
                max_age: Duration::ZERO,
                max_bytes: 0,
            }),
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
                "max_keys",
                "create.subjects",
                "create.storage",
                "create.max_age",
                "create.max_bytes"
            ]
        );
        let good = NatsConfig {
            stream: "ROOMS".into(),
            subject: "rooms.{room}".into(),
            allow: Some("rooms.*".into()),
            ..NatsConfig::default()
        };
        assert!(good.validate().is_empty(), "{:?}", good.validate());
        // The old name of `max_keys` is still read.
        let old: NatsConfig =
            serde_json::from_value(serde_json::json!({"max_subjects": 7})).unwrap();
        assert_eq!(old.max_keys, 7);
    }

    #[test]
    fn parameters_cannot_change_the_subject() {
        let nats = Nats::new(&NatsConfig {
            stream: "ROOMS".into(),
            subject: "rooms.{room}".into(),
            allow: Some("rooms.>".into()),
            ..NatsConfig::default()
        });
        let ctx = |room: &str| RequestContext {
            params: [("room".to_string(), room.to_string())].into(),
            ..RequestContext::default()
        };
        assert_eq!(nats.key(&ctx("lobby")), Ok("rooms.lobby".to_string()));
        for bad in ["a.b", "*", ">", "a b", "a\tb", ""] {
            let refused = nats.key(&ctx(bad)).map_err(|e| e.kind);
            assert_eq!(refused, Err(ErrorKind::BadRequest), "{bad:?}");
        }
        let narrow = Nats::new(&NatsConfig {
            stream: "ROOMS".into(),
            subject: "rooms.{room}".into(),
            allow: Some("rooms.lobby".into()),
            ..NatsConfig::default()
        });
        let outside = narrow.key(&ctx("kitchen")).map_err(|e| e.kind);
        assert_eq!(outside, Err(ErrorKind::NotFound));
    }
}
