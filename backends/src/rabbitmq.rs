//! `rabbitmq`: events from a RabbitMQ stream (the stream plugin's protocol,
//! port 5552), one stream per key, shared by every client of the key (a
//! [`Bus`] of the [`RabbitMq`] broker: see [`crate::bus`] for what every bus
//! backend does).
//!
//! ```toml
//! [routes.rooms.backends.bus]
//! type = "rabbitmq"
//! host = "127.0.0.1"         # port 5552, user and password guest, vhost /
//! stream = "rooms.{room}"    # {room} from the route's path /rooms/{room}
//! allow = "rooms.*"          # the streams clients may read
//! history = 10               # the last 10 messages on connect
//! [routes.rooms.backends.bus.create]
//! max_length_bytes = 100000000   # declare missing streams, with retention
//! max_age = "24h"
//! ```
//!
//! What is RabbitMQ's own:
//!
//! - A message's stream offset (in decimal, from `0`) is the event id, so
//!   `Last-Event-ID` resumes exactly after it, on this gateway or any other
//!   reading the same stream. The id before every offset is `first`:
//!   resuming from it asks for all the stream holds (a notice about a stream
//!   made again names it). Another `Last-Event-ID` is a 400.
//! - The event data is the message's body (its AMQP 1.0 data section): JSON
//!   when it parses, else text; the name is its application property
//!   `name_property` (`event`) when that is a string. A message without a
//!   data body, or whose body is not UTF-8, is an error event naming its
//!   offset.
//! - The reader of a key is a subscription on a connection of its own,
//!   one chunk of credit at a time; history, pages and the stream's bounds
//!   are short subscriptions on the backend's one shared connection.
//!   RabbitMQ 3.10 has no command that tells a stream's first and last
//!   offsets (StreamStats is 3.11): a subscription at `first` and one at
//!   `last` do, each delivering its chunk right after the subscription's
//!   answer; a stream that delivers neither by the answer to a request sent
//!   after them (and a short grace) is empty.
//! - Retention (`max-length-bytes`, `max-age`) removes whole segments; the
//!   offsets before the stream's first are announced to a client that had
//!   not read them (a `lagged` error), never skipped silently.
//! - A stream deleted and declared again numbers from 0 again. RabbitMQ 3.10
//!   tells nothing that identifies a stream's life (no creation time), so a
//!   connected reader finds out when it subscribes again and the stream's
//!   end is behind it; a resume id past the end gets a notice and the
//!   stream from its start. A new stream that has grown past the old one's
//!   end before a reader looks again cannot be told from the old one.
//! - A missing stream is a 404, unless `create` is set: the stream is then
//!   declared (with its retention) by the first client or publish that
//!   needs it.
//! - While RabbitMQ is away, requests are answered 503 after at most
//!   `connect_timeout`; readers connect again with backoff, check the
//!   stream's bounds, and go on after the last offset they delivered. A
//!   connection RabbitMQ closes during its handshake is tried again (three
//!   handshakes at most, within `connect_timeout`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rabbitmq_stream_client::error::ClientError;
use rabbitmq_stream_client::types::{
    Message, MessageResult, OffsetSpecification, ResponseCode, ResponseKind, SimpleValue,
};
use rabbitmq_stream_client::{Client, ClientOptions};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::bus::key::{self, Glob, Template};
use crate::bus::{Bounds, Broker, Bus, Entry, Feed, Limits, Page};
use crate::problem::Problem;
use crate::publish::{Publication, Publisher};
use crate::{BackendError, BackendStats, Data, ErrorKind, Event, RequestContext};

/// How long one request (or the next chunk of a read) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a bounds probe waits for a chunk the server sent before its
/// answer to a later request (the client hands chunks over on tasks of
/// their own): past it, the stream is empty.
const GRACE: Duration = Duration::from_millis(250);
/// Shortest wait before a reader subscribes again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a reader subscribes again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bounds probes at once on the shared connection (two subscriptions each).
const PROBES: usize = 100;
/// History reads, pages and publishes at once on the shared connection
/// (one subscription each, beside a page's probes).
const READS: usize = 50;
/// What the origin (before offset 0) is called in ids.
const FIRST: &str = "first";

/// The `rabbitmq` backend's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqConfig {
    /// The stream port's host. Default: `127.0.0.1`.
    pub host: String,
    /// The stream port (the `rabbitmq_stream` plugin's). Default: `5552`.
    pub port: u16,
    /// Default: `guest`.
    pub user: String,
    /// Default: `guest`.
    pub password: String,
    /// The virtual host. Default: `/`.
    pub vhost: String,
    /// The stream's name, with `{param}` placeholders filled from the
    /// route's path parameters (`rooms.{room}`). Required.
    pub stream: String,
    /// A pattern the resolved name must match, `*` matching any run of
    /// characters (`rooms.*`); another name is answered 404. Required when
    /// `stream` has placeholders.
    pub allow: Option<String>,
    /// The application property holding the event name. Default: `event`.
    pub name_property: String,
    /// Declare a stream that does not exist (else: 404), with this
    /// retention.
    pub create: Option<Retention>,
    /// How long connecting may take before a request is answered 503.
    /// Default: `2s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Messages sent on connect without `Last-Event-ID`. Default: `0`.
    pub history: usize,
    /// Messages held for clients that read slower than the stream moves.
    /// Default: `1024`.
    pub buffer: usize,
    /// The most messages a client may read to catch up before its stream
    /// ends with `lagged`. Default: `10000`.
    pub max_catchup: usize,
    /// Streams read at once, each with its own connection. Default: `1000`.
    pub max_keys: usize,
}

/// The retention a stream is declared with (`create`); RabbitMQ removes
/// whole segments, oldest first, once a limit is passed.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// `max-length-bytes`: the most bytes the stream keeps.
    pub max_length_bytes: Option<u64>,
    /// `max-age`: how long a segment is kept after its last message.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// `stream-max-segment-size-bytes`: the unit retention removes.
    pub max_segment_size_bytes: Option<u64>,
}

impl Retention {
    fn arguments(&self) -> HashMap<String, String> {
        let mut arguments = HashMap::new();
        if let Some(bytes) = self.max_length_bytes {
            arguments.insert("max-length-bytes".into(), bytes.to_string());
        }
        if let Some(age) = self.max_age {
            arguments.insert("max-age".into(), format!("{}s", age.as_secs().max(1)));
        }
        if let Some(bytes) = self.max_segment_size_bytes {
            arguments.insert("stream-max-segment-size-bytes".into(), bytes.to_string());
        }
        arguments
    }

    fn validate(&self, problems: &mut Vec<Problem>) {
        if self.max_length_bytes == Some(0) {
            problems.push(Problem::new("create.max_length_bytes", "at least 1"));
        }
        if self.max_age.is_some_and(|age| age.as_secs() == 0) {
            problems.push(Problem::new(
                "create.max_age",
                "at least 1s (RabbitMQ counts it in seconds)",
            ));
        }
        // RabbitMQ 3.10 rolls a segment that has reached its size before
        // writing to it: one no larger than an empty segment's 8-byte
        // header rolls forever, and the stream takes no message.
        if self.max_segment_size_bytes.is_some_and(|bytes| bytes <= 8) {
            problems.push(Problem::new(
                "create.max_segment_size_bytes",
                "more than 8 (an empty segment's header)",
            ));
        }
    }
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            host: "127.0.0.1".into(),
            port: 5552,
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            stream: String::new(),
            allow: None,
            name_property: "event".into(),
            create: None,
            connect_timeout: Duration::from_secs(2),
            history: limits.history,
            buffer: limits.buffer,
            max_catchup: limits.max_catchup,
            max_keys: limits.max_keys,
        }
    }
}

impl RabbitMqConfig {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = self.validate_target();
        problems.extend(self.limits().validate());
        problems
    }

    /// The checks a publish target shares.
    fn validate_target(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.host.is_empty() {
            problems.push(Problem::new("host", "required: the stream port's host"));
        }
        if self.port == 0 {
            problems.push(Problem::new("port", "a port from 1 to 65535"));
        }
        if self.user.is_empty() {
            problems.push(Problem::new("user", "required"));
        }
        if self.vhost.is_empty() {
            problems.push(Problem::new("vhost", "required (`/` is the default one)"));
        }
        if self.stream.is_empty() {
            problems.push(Problem::new(
                "stream",
                "required: the stream's name (`rooms.{room}`)",
            ));
        } else {
            match Template::parse(&self.stream) {
                Err(reason) => problems.push(Problem::new("stream", reason)),
                Ok(template) => {
                    if let Err(reason) = check_name(&template.sample()) {
                        problems.push(Problem::new("stream", reason));
                    }
                    if template.has_placeholders() && self.allow.is_none() {
                        problems.push(Problem::new(
                            "allow",
                            "required when `stream` has placeholders (`rooms.*`), so that clients cannot reach arbitrary streams",
                        ));
                    }
                }
            }
        }
        if self.name_property.is_empty() {
            problems.push(Problem::new(
                "name_property",
                "must name an application property",
            ));
        }
        if let Some(create) = &self.create {
            create.validate(&mut problems);
        }
        if self.connect_timeout.is_zero() {
            problems.push(Problem::new("connect_timeout", "more than 0"));
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
    pub fn build(&self) -> Bus<RabbitMq> {
        Bus::new(RabbitMq::new(self), self.limits())
    }

    /// The publish target writing what this reads (a durable job's log).
    pub fn target(&self) -> RabbitMqTarget {
        RabbitMqTarget {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            vhost: self.vhost.clone(),
            stream: self.stream.clone(),
            allow: self.allow.clone(),
            name_property: self.name_property.clone(),
            create: self.create.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

/// Whether `name` can name a stream: at most 255 bytes, not `amq.`
/// (reserved), no control characters.
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err("a stream name is at most 255 bytes".into());
    }
    if name.starts_with("amq.") {
        return Err("names starting with `amq.` are reserved by RabbitMQ".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a stream name has no control characters".into());
    }
    Ok(())
}

/// Refuses a path parameter that is empty or holds a control character.
fn check_value(name: &str, value: &str) -> Result<(), BackendError> {
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(BackendError::bad_request(format!(
            "the path parameter {{{name}}} may not be empty or contain control characters"
        )));
    }
    Ok(())
}

/// A stream offset as an id: `first` (before offset 0), then `0`, `1`, …
/// (Kept as the offset plus one, so that the origin orders first.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(u64);

impl Offset {
    /// The id of `offset`.
    pub fn at(offset: u64) -> Self {
        Self(offset.saturating_add(1))
    }

    fn parse(id: &str) -> Option<Self> {
        if id == FIRST {
            return Some(Self::default());
        }
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse::<u64>().ok()?.checked_add(1).map(Self)
    }

    /// The stream offset, `None` for the origin.
    pub fn offset(self) -> Option<u64> {
        self.0.checked_sub(1)
    }

    /// The offset a read after this id starts at.
    fn next(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset() {
            None => f.write_str(FIRST),
            Some(offset) => write!(f, "{offset}"),
        }
    }
}

/// A chunk as a subscription delivers it: its first offset and messages.
#[derive(Debug)]
struct Chunk {
    first: u64,
    messages: Vec<Message>,
}

impl Chunk {
    /// The offset of its last message.
    fn last(&self) -> u64 {
        self.first + (self.messages.len() as u64).saturating_sub(1)
    }
}

/// Where the connection's handler sends what arrives without being asked.
#[derive(Default)]
struct Routes {
    closed: bool,
    subscriptions: HashMap<u8, mpsc::UnboundedSender<Chunk>>,
    /// Ids of subscriptions dropped whose unsubscribe RabbitMQ has not
    /// answered yet: taken until it has (RabbitMQ refuses an id it still
    /// holds with `SubscriptionIdAlreadyExists`).
    releasing: HashSet<u8>,
    publishers: Vec<u8>,
    confirms: HashMap<u64, oneshot::Sender<Result<(), String>>>,
}

/// One connection to the stream port, with its subscriptions and pending
/// publishes; closed when dropped.
struct Session {
    client: Client,
    routes: Arc<Mutex<Routes>>,
    publishing: AtomicU64,
    /// Subscriptions made on the connection (see [`RETIRE_AFTER`]).
    subscribed: AtomicU64,
}

/// Subscriptions a connection takes before new requests go to a new one
/// (the old one closes with its last user). RabbitMQ releases from 3.9 to
/// 3.10.10 and 3.11.2 (rabbitmq-server#6317) keep a file handle for every
/// subscription ended on a connection until the connection closes: each
/// publish (it subscribes to find its message's offset) and each probe of
/// a stream's bounds leaks one, and at the server's limit (1,024 by default
/// here) its stream connections crash with `emfile`. A connection retired
/// this way gives its handles back as soon as its last request is done.
const RETIRE_AFTER: u64 = 128;

/// Handshakes a connection is tried with when RabbitMQ closes it during
/// one (see [`Session::connect`]), within `connect_timeout` in all; a
/// refused or timed-out connection is not tried again.
const HANDSHAKES: u32 = 3;

/// The publisher reference [`Session::round_trip`] asks about.
const BARRIER: &str = "gateway-round-trip";

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(what: &str, e: impl fmt::Display) -> BackendError {
    BackendError::new(ErrorKind::Unavailable, format!("RabbitMQ: {what}: {e}"))
}

/// Runs a request within [`REQUEST_TIMEOUT`].
async fn bounded<T, E: fmt::Display>(
    what: &str,
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, "timed out")),
    }
}

impl Session {
    async fn connect(
        options: &ClientOptions,
        timeout: Duration,
    ) -> Result<Arc<Self>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempts = 0;
        let client = loop {
            attempts += 1;
            match tokio::time::timeout_at(deadline, Client::connect(options.clone())).await {
                Ok(Ok(client)) => break client,
                // Closed by RabbitMQ during the handshake: made again.
                // RabbitMQ 3.10 ends every stream connection still in its
                // handshake when consumers are listed
                // (`rabbitmq-streams list_stream_consumers`): a
                // `function_clause` in `rabbit_stream_reader`.
                Ok(Err(ClientError::ConnectionClosed)) if attempts < HANDSHAKES => {
                    tracing::debug!(attempts, "RabbitMQ closed a connection in its handshake");
                }
                Ok(Err(e)) => return Err(unavailable("cannot connect", e)),
                Err(_) => return Err(unavailable("cannot connect", "timed out")),
            }
        };
        let routes = Arc::new(Mutex::new(Routes::default()));
        let handler = {
            let routes = Arc::clone(&routes);
            move |item: MessageResult| {
                let routes = Arc::clone(&routes);
                async move {
                    route(&routes, item);
                    Ok::<(), ClientError>(())
                }
            }
        };
        client.set_handler(handler).await;
        Ok(Arc::new(Self {
            client,
            routes,
            publishing: AtomicU64::new(1),
            subscribed: AtomicU64::new(0),
        }))
    }

    fn closed(&self) -> bool {
        lock(&self.routes).closed
    }

    /// Whether new requests go to a new connection ([`RETIRE_AFTER`]).
    fn retired(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) >= RETIRE_AFTER
    }

    /// A subscription to `stream` from `from`, one chunk of credit at a
    /// time.
    async fn subscribe(
        self: &Arc<Self>,
        stream: &str,
        from: OffsetSpecification,
    ) -> Result<Subscription, BackendError> {
        let (sender, chunks) = mpsc::unbounded_channel();
        self.subscribed.fetch_add(1, Ordering::Relaxed);
        let id = {
            let mut routes = lock(&self.routes);
            if routes.closed {
                return Err(unavailable("subscribing", "the connection is closed"));
            }
            let id = (0..=u8::MAX)
                .find(|id| !routes.subscriptions.contains_key(id) && !routes.releasing.contains(id))
                .ok_or_else(|| {
                    unavailable("subscribing", "no subscription left on the connection")
                })?;
            routes.subscriptions.insert(id, sender);
            id
        };
        let subscription = Subscription {
            session: Arc::clone(self),
            id,
            chunks,
        };
        let response = bounded(
            "subscribing",
            self.client.subscribe(id, stream, from, 1, HashMap::new()),
        )
        .await?;
        match response.code() {
            ResponseCode::Ok => Ok(subscription),
            ResponseCode::StreamDoesNotExist => Err(no_stream(stream)),
            code => Err(unavailable("subscribing", format!("{code:?}"))),
        }
    }

    /// A request and its answer: what the server sent before it has been
    /// handed to the handler's tasks.
    ///
    /// The request is a publisher sequence query (a reference nobody
    /// uses): the smallest answer there is. Not `metadata`: the client's
    /// decoder of its answer panics now and then on RabbitMQ 3.10 (a slice
    /// index out of range in rabbitmq-stream-protocol 0.4.3), which ends the
    /// connection's reader task.
    async fn round_trip(&self, stream: &str) -> Result<(), BackendError> {
        bounded(
            "a round trip",
            self.client.query_publisher_sequence(BARRIER, stream),
        )
        .await
        .map(drop)
    }

    /// Declares `stream` with `retention`; one that exists already is fine.
    async fn create(&self, stream: &str, retention: &Retention) -> Result<(), BackendError> {
        let response = bounded(
            "declaring a stream",
            self.client.create_stream(stream, retention.arguments()),
        )
        .await?;
        match response.code() {
            ResponseCode::Ok | ResponseCode::StreamAlreadyExists => {
                tracing::info!(%stream, "declared a RabbitMQ stream");
                Ok(())
            }
            code => Err(unavailable("declaring a stream", format!("{code:?}"))),
        }
    }

    /// Publishes `message` (its publishing id `sequence`, from
    /// [`next_sequence`](Self::next_sequence)) to `stream` and waits for its
    /// confirm.
    async fn publish(
        &self,
        stream: &str,
        message: Message,
        sequence: u64,
    ) -> Result<(), BackendError> {
        let publisher = {
            let mut routes = lock(&self.routes);
            let id = (0..=u8::MAX)
                .find(|id| !routes.publishers.contains(id))
                .ok_or_else(|| unavailable("publishing", "no publisher left on the connection"))?;
            routes.publishers.push(id);
            PublisherId {
                routes: Arc::clone(&self.routes),
                id,
            }
        };
        let declared = bounded(
            "declaring a publisher",
            self.client.declare_publisher(publisher.id, None, stream),
        )
        .await?;
        match declared.code() {
            ResponseCode::Ok => {}
            ResponseCode::StreamDoesNotExist => return Err(no_stream(stream)),
            code => return Err(unavailable("declaring a publisher", format!("{code:?}"))),
        }
        let (sender, confirmed) = oneshot::channel();
        lock(&self.routes).confirms.insert(sequence, sender);
        let sent = bounded("publishing", self.client.publish(publisher.id, message)).await;
        let outcome = match sent {
            Ok(_) => match tokio::time::timeout(REQUEST_TIMEOUT, confirmed).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(why))) => Err(unavailable("publishing", why)),
                Ok(Err(_)) => Err(unavailable("publishing", "the connection closed")),
                Err(_) => Err(unavailable("publishing", "no confirm in time")),
            },
            Err(e) => Err(e),
        };
        lock(&self.routes).confirms.remove(&sequence);
        let _ = bounded(
            "deleting a publisher",
            self.client.delete_publisher(publisher.id),
        )
        .await;
        outcome
    }

    /// A publishing id not used on this connection yet.
    fn next_sequence(&self) -> u64 {
        self.publishing.fetch_add(1, Ordering::Relaxed)
    }
}

/// A publisher id taken on a connection, given back when dropped.
struct PublisherId {
    routes: Arc<Mutex<Routes>>,
    id: u8,
}

impl Drop for PublisherId {
    fn drop(&mut self) {
        lock(&self.routes).publishers.retain(|id| *id != self.id);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.close()).await;
        });
    }
}

/// Hands what arrived to whoever waits for it: a chunk to its
/// subscription, a confirm to its publish. A stream that went away (a
/// metadata update) ends the connection's subscriptions, which their owners
/// make again; a connection that ended ends everything.
fn route(routes: &Mutex<Routes>, item: MessageResult) {
    let mut routes = lock(routes);
    match item {
        Some(Ok(response)) => match response.kind() {
            ResponseKind::Deliver(deliver) => {
                if let Some(sender) = routes.subscriptions.get(&deliver.subscription_id) {
                    let _ = sender.send(Chunk {
                        first: deliver.chunk_first_offset,
                        messages: deliver.messages,
                    });
                }
            }
            ResponseKind::PublishConfirm(confirm) => {
                for id in confirm.publishing_ids {
                    if let Some(sender) = routes.confirms.remove(&id) {
                        let _ = sender.send(Ok(()));
                    }
                }
            }
            ResponseKind::PublishError(error) => {
                for failed in error.publishing_errors {
                    if let Some(sender) = routes.confirms.remove(&failed.publishing_id) {
                        let _ = sender.send(Err(format!("refused: {:?}", failed.error_code)));
                    }
                }
            }
            ResponseKind::MetadataUpdate(_) => routes.subscriptions.clear(),
            _ => {}
        },
        Some(Err(_)) | None => {
            routes.closed = true;
            routes.subscriptions.clear();
            routes.confirms.clear();
        }
    }
}

/// A subscription; unsubscribed when dropped.
struct Subscription {
    session: Arc<Session>,
    id: u8,
    chunks: mpsc::UnboundedReceiver<Chunk>,
}

impl Subscription {
    /// The next chunk, credit given for one more; `None` when the
    /// subscription ended (the stream went away, the connection closed).
    async fn next(&mut self) -> Option<Chunk> {
        let chunk = self.chunks.recv().await?;
        let _ = self.session.client.credit(self.id, 1).await;
        Some(chunk)
    }

    /// The next chunk within `wait`: `Ok(None)` when none came, an error
    /// when the subscription ended.
    async fn within(&mut self, wait: Duration) -> Result<Option<Chunk>, BackendError> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(Some(chunk)) => Ok(Some(chunk)),
            Ok(None) => Err(unavailable(
                "reading",
                "the subscription ended (the stream went away or the connection closed)",
            )),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        {
            let mut routes = lock(&self.session.routes);
            let removed = routes.subscriptions.remove(&self.id).is_some();
            if !removed || !runtime {
                return;
            }
            routes.releasing.insert(self.id);
        }
        let session = Arc::clone(&self.session);
        let id = self.id;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, session.client.unsubscribe(id)).await;
            lock(&session.routes).releasing.remove(&id);
        });
    }
}

fn no_stream(stream: &str) -> BackendError {
    BackendError::new(
        ErrorKind::NotFound,
        format!("no stream {} here", crate::Shown(stream)),
    )
}

/// RabbitMQ streams as a bus: the connection settings, the shared
/// connection, the stream name template.
pub struct RabbitMq {
    options: ClientOptions,
    connect_timeout: Duration,
    /// The connection for everything but the readers, made on first use and
    /// again once it closed.
    commands: tokio::sync::Mutex<Option<Arc<Session>>>,
    template: Template,
    allow: Option<Glob>,
    name_property: String,
    create: Option<Retention>,
    /// Bounds probes at once (two subscriptions each) and other reads at
    /// once (one each) on the shared connection, within its 256
    /// subscriptions: more wait for their turn rather than fail.
    probes: Arc<Semaphore>,
    reads: Arc<Semaphore>,
    /// The bounds probe of each stream in flight: callers that come while
    /// one runs share its answer (a thousand clients joining a stream at
    /// once make one probe, not a thousand).
    inflight: Mutex<HashMap<String, Arc<Probe>>>,
    stats: BackendStats,
}

/// A bounds probe whose answer its callers share.
type Probe = tokio::sync::OnceCell<Result<Bounds<Offset>, BackendError>>;

impl fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMq")
            .field("stream", &self.template)
            .finish_non_exhaustive()
    }
}

impl RabbitMq {
    /// The broker for its settings (see [`RabbitMqConfig::validate`]).
    pub fn new(config: &RabbitMqConfig) -> Self {
        let options = ClientOptions::builder()
            .host(&config.host)
            .port(config.port)
            .user(&config.user)
            .password(&config.password)
            .v_host(&config.vhost)
            .build();
        Self {
            options,
            connect_timeout: config.connect_timeout,
            commands: tokio::sync::Mutex::new(None),
            // Validation refused a template that does not parse.
            template: Template::parse(&config.stream).unwrap_or_default(),
            allow: config.allow.as_deref().map(Glob::new),
            name_property: config.name_property.clone(),
            create: config.create.clone(),
            probes: Arc::new(Semaphore::new(PROBES)),
            reads: Arc::new(Semaphore::new(READS)),
            inflight: Mutex::new(HashMap::new()),
            stats: BackendStats::new("rabbitmq"),
        }
    }

    /// The shared connection, made again when it closed or retired.
    async fn session(&self) -> Result<Arc<Session>, BackendError> {
        let mut commands = self.commands.lock().await;
        if let Some(session) = commands.as_ref().filter(|s| !s.closed() && !s.retired()) {
            return Ok(Arc::clone(session));
        }
        let session = Session::connect(&self.options, self.connect_timeout).await?;
        *commands = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Drops the shared connection if it is still `session`.
    async fn forget(&self, session: &Arc<Session>) {
        let mut commands = self.commands.lock().await;
        if commands.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            lock(&session.routes).closed = true;
            *commands = None;
            self.stats.reconnected();
        }
    }

    /// Subscribes on the shared connection; a connection found closed (a
    /// restart the gateway was idle through) is made again once; a missing
    /// stream is declared when `create` says so.
    async fn subscribe(
        &self,
        stream: &str,
        from: OffsetSpecification,
    ) -> Result<(Arc<Session>, Subscription), BackendError> {
        let mut again = true;
        let mut created = false;
        loop {
            let session = self.session().await?;
            match session.subscribe(stream, from.clone()).await {
                Ok(subscription) => return Ok((session, subscription)),
                Err(e) if e.kind == ErrorKind::NotFound && !created => {
                    let Some(retention) = &self.create else {
                        return Err(e);
                    };
                    session.create(stream, retention).await?;
                    created = true;
                }
                // A connection RabbitMQ dropped (a restart the gateway
                // was idle through) fails its first request: once more on
                // a new one.
                Err(e) if again && e.kind == ErrorKind::Unavailable => {
                    again = false;
                    tracing::debug!(error = %e.message, "RabbitMQ: connecting again");
                    self.forget(&session).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The stream's first chunk and last chunk now (`None` when it is
    /// empty).
    async fn ends(&self, stream: &str) -> Result<Option<(Chunk, Chunk)>, BackendError> {
        let _turn = self
            .probes
            .acquire()
            .await
            .map_err(|e| unavailable("probing", e))?;
        let (session, mut first) = self.subscribe(stream, OffsetSpecification::First).await?;
        let mut last = session.subscribe(stream, OffsetSpecification::Last).await?;
        // A stream with messages delivers a chunk to each right after
        // answering the subscription: before this answer.
        session.round_trip(stream).await?;
        let Some(head) = first.within(GRACE).await? else {
            return Ok(None);
        };
        let tail = last
            .within(REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| unavailable("reading the stream's end", "timed out"))?;
        Ok(Some((head, tail)))
    }

    /// A message as clients get it: the event, or why there is none.
    fn entry(&self, message: &Message, offset: u64) -> Entry<Offset> {
        let position = Offset::at(offset);
        Entry {
            position,
            event: self.event(message, position),
        }
    }

    fn event(&self, message: &Message, position: Offset) -> Result<Event, String> {
        let body = message
            .data()
            .ok_or("it has no body (an AMQP 1.0 data section)")?;
        let text = std::str::from_utf8(body).map_err(|_| "its body is not UTF-8 text")?;
        let data = Data::parse_json(text).unwrap_or_else(|_| Data::text(text));
        let mut event = Event::new(data).with_id(position.to_string());
        let name = message
            .application_properties()
            .and_then(|properties| properties.get(&self.name_property));
        match name {
            None => {}
            Some(SimpleValue::String(name)) => event = event.with_name(name.as_str()),
            Some(_) => {
                return Err(format!(
                    "its application property `{}` is not a string",
                    self.name_property
                ));
            }
        }
        Ok(event)
    }

    /// Reads `stream` from `start` (an offset) with a subscription of its
    /// own, handing each entry to `each` until it returns false or the
    /// entry at `end` was handed.
    async fn read(
        &self,
        stream: &str,
        start: u64,
        end: u64,
        mut each: impl FnMut(Entry<Offset>) -> bool,
    ) -> Result<(), BackendError> {
        let _turn = self
            .reads
            .acquire()
            .await
            .map_err(|e| unavailable("reading", e))?;
        let (_session, mut subscription) = self
            .subscribe(stream, OffsetSpecification::Offset(start))
            .await?;
        loop {
            let chunk = subscription
                .within(REQUEST_TIMEOUT)
                .await?
                .ok_or_else(|| unavailable("reading the stream", "timed out"))?;
            for (i, message) in chunk.messages.iter().enumerate() {
                let offset = chunk.first + i as u64;
                if offset < start {
                    continue;
                }
                if offset > end || !each(self.entry(message, offset)) {
                    return Ok(());
                }
                if offset == end {
                    return Ok(());
                }
            }
            if chunk.last() >= end {
                return Ok(());
            }
        }
    }

    /// One connection's worth of the reader: its subscription's chunks
    /// into the feed until it ends.
    async fn follow_once(
        &self,
        session: &Arc<Session>,
        stream: &str,
        feed: &mut Feed<Offset>,
    ) -> Result<(), BackendError> {
        let mut subscription = session
            .subscribe(stream, OffsetSpecification::Offset(feed.last().next()))
            .await?;
        while let Some(chunk) = subscription.next().await {
            for (i, message) in chunk.messages.iter().enumerate() {
                feed.send(self.entry(message, chunk.first + i as u64));
            }
        }
        Err(unavailable(
            "reading",
            "the subscription ended (the stream went away or the connection closed)",
        ))
    }
}

/// The bounds of a stream whose first and last chunks are these.
fn bounds_of(ends: Option<&(Chunk, Chunk)>) -> Bounds<Offset> {
    match ends {
        None => Bounds::default(),
        Some((head, tail)) => Bounds {
            end: Some(Offset::at(tail.last())),
            gone: head.first.checked_sub(1).map(Offset::at),
            epoch: 0,
        },
    }
}

impl Broker for RabbitMq {
    type Position = Offset;
    type Pager = ();
    const PAGE: usize = 256;
    const ID: &'static str = "a RabbitMQ stream offset (a decimal number, or `first`)";

    fn parse(&self, id: &str) -> Option<Offset> {
        Offset::parse(id)
    }

    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError> {
        let stream = self.template.resolve(ctx, check_value)?;
        check_name(&stream).map_err(BackendError::bad_request)?;
        key::allowed(stream, self.allow.as_ref())
    }

    async fn bounds(&self, stream: &str) -> Result<Bounds<Offset>, BackendError> {
        let probe = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(inflight.entry(stream.to_string()).or_default())
        };
        let answer = probe
            .get_or_init(|| async { Ok(bounds_of(self.ends(stream).await?.as_ref())) })
            .await
            .clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(stream).is_some_and(|p| Arc::ptr_eq(p, &probe)) {
            inflight.remove(stream);
        }
        answer
    }

    async fn history(
        &self,
        stream: &str,
        n: usize,
        end: Offset,
    ) -> Result<Vec<Entry<Offset>>, BackendError> {
        let Some(last) = end.offset() else {
            return Ok(Vec::new());
        };
        let start = (last + 1).saturating_sub(n as u64);
        let mut entries = Vec::with_capacity(n);
        self.read(stream, start, last, |entry| {
            entries.push(entry);
            true
        })
        .await?;
        Ok(entries)
    }

    async fn page(
        &self,
        stream: &str,
        _: &mut (),
        after: Offset,
        count: usize,
    ) -> Result<Page<Offset>, BackendError> {
        let before = self.bounds(stream).await?;
        let Some(end) = before.end.filter(|end| *end > after) else {
            return Ok(Page {
                entries: Vec::new(),
                more: false,
                gone: before.gone,
            });
        };
        let mut entries = Vec::with_capacity(count.min(Self::PAGE));
        let last = end.offset().unwrap_or_default();
        self.read(stream, after.next(), last, |entry| {
            entries.push(entry);
            entries.len() < count
        })
        .await?;
        let read = entries.last().map_or(after, |e| e.position);
        // After the entries, a probe of its own (not one that began before
        // them): what went between the two is announced.
        let gone = bounds_of(self.ends(stream).await?.as_ref()).gone;
        Ok(Page {
            entries,
            more: read < end,
            gone,
        })
    }

    /// A subscription on a connection of its own after the feed's last
    /// offset, made again (after the stream's bounds went to
    /// [`Feed::resync`]) when it ends.
    async fn follow(&self, stream: &str, mut feed: Feed<Offset>) {
        let mut backoff = MIN_BACKOFF;
        let mut first = true;
        loop {
            let attempt = async {
                let session = Session::connect(&self.options, self.connect_timeout).await?;
                if !first {
                    self.stats.reconnected();
                    feed.resync(&self.bounds(stream).await?);
                }
                first = false;
                let before = feed.last();
                let error = self.follow_once(&session, stream, &mut feed).await;
                if feed.last() > before {
                    backoff = MIN_BACKOFF;
                }
                error
            };
            if let Err(error) = attempt.await {
                tracing::warn!(%stream, after = %feed.last(), %error, "RabbitMQ reader subscribes again");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn stats(&self) -> &BackendStats {
        &self.stats
    }
}

/// `[…target]` of a publish route: the stream events are appended to. Its
/// keys mean what they mean for the `rabbitmq` backend.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqTarget {
    /// Default: `127.0.0.1`.
    pub host: String,
    /// Default: `5552`.
    pub port: u16,
    /// Default: `guest`.
    pub user: String,
    /// Default: `guest`.
    pub password: String,
    /// Default: `/`.
    pub vhost: String,
    /// The stream's name, with `{param}` placeholders from the publish
    /// route's path. Required.
    pub stream: String,
    /// Required with placeholders.
    pub allow: Option<String>,
    /// The application property the event name goes to. Default: `event`.
    pub name_property: String,
    /// Declare a missing stream with this retention (else: 404).
    pub create: Option<Retention>,
    /// Default: `2s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for RabbitMqTarget {
    fn default() -> Self {
        let reader = RabbitMqConfig::default();
        Self {
            host: reader.host,
            port: reader.port,
            user: reader.user,
            password: reader.password,
            vhost: reader.vhost,
            stream: reader.stream,
            allow: reader.allow,
            name_property: reader.name_property,
            create: reader.create,
            connect_timeout: reader.connect_timeout,
        }
    }
}

impl RabbitMqTarget {
    /// The reader's settings with the same meaning.
    fn as_reader(&self) -> RabbitMqConfig {
        RabbitMqConfig {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            vhost: self.vhost.clone(),
            stream: self.stream.clone(),
            allow: self.allow.clone(),
            name_property: self.name_property.clone(),
            create: self.create.clone(),
            connect_timeout: self.connect_timeout,
            ..RabbitMqConfig::default()
        }
    }

    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        self.as_reader().validate_target()
    }
}

/// Appends events to a RabbitMQ stream, answering each one's offset.
///
/// The protocol's confirm names the publish, not the offset: the publisher
/// subscribes at the stream's end first, publishes the message with a
/// `message-id` of its own, and reads on until that message comes by.
#[derive(Debug)]
pub struct RabbitMqPublisher {
    rabbitmq: RabbitMq,
    published: AtomicU64,
}

impl RabbitMqPublisher {
    /// The publisher for its settings; it connects on first use.
    pub fn new(target: &RabbitMqTarget) -> Self {
        Self {
            rabbitmq: RabbitMq::new(&target.as_reader()),
            published: AtomicU64::new(0),
        }
    }

    /// A `message-id` no other publish has.
    fn marker(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.published.fetch_add(1, Ordering::Relaxed);
        format!("gateway-{}-{nanos}-{n}", std::process::id())
    }
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    async fn publish(
        &self,
        ctx: &RequestContext,
        publication: &Publication,
    ) -> Result<String, BackendError> {
        let rabbitmq = &self.rabbitmq;
        let stream = rabbitmq.key(ctx)?;
        let marker = self.marker();
        let mut builder = Message::builder()
            .body(publication.data.as_str().as_bytes().to_vec())
            .properties()
            .message_id(marker.clone())
            .message_builder();
        if let Some(name) = &publication.name {
            builder = builder
                .application_properties()
                .insert(rabbitmq.name_property.as_str(), name.as_str())
                .message_builder();
        }
        // Subscribed at the end before publishing: the message comes by.
        let _turn = rabbitmq
            .reads
            .acquire()
            .await
            .map_err(|e| unavailable("publishing", e))?;
        let (session, mut subscription) = rabbitmq
            .subscribe(&stream, OffsetSpecification::Next)
            .await?;
        let sequence = session.next_sequence();
        let message = builder.publising_id(sequence).build();
        session.publish(&stream, message, sequence).await?;
        loop {
            let chunk = subscription
                .within(REQUEST_TIMEOUT)
                .await?
                .ok_or_else(|| unavailable("finding the published message", "timed out"))?;
            for (i, message) in chunk.messages.iter().enumerate() {
                let ours = message
                    .properties()
                    .and_then(|p| p.message_id.as_ref())
                    .and_then(|id| <&String>::try_from(id).ok())
                    .is_some_and(|id| *id == marker);
                if ours {
                    return Ok(Offset::at(chunk.first + i as u64).to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_offsets_after_first() {
        assert_eq!(Offset::parse("first"), Some(Offset::default()));
        assert_eq!(Offset::parse("0"), Some(Offset::at(0)));
        assert!(Offset::default() < Offset::at(0));
        assert!(Offset::at(9) < Offset::at(10));
        assert_eq!(Offset::at(42).to_string(), "42");
        assert_eq!(Offset::default().to_string(), "first");
        assert_eq!(Offset::at(7).offset(), Some(7));
        assert_eq!(Offset::default().next(), 0);
        assert_eq!(Offset::at(7).next(), 8);
        let max = u64::MAX.to_string();
        for bad in ["", "-1", "+1", "1-0", "x", "First", max.as_str()] {
            assert_eq!(Offset::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bounds_from_the_first_and_last_chunks() {
        let chunk = |first, count| Chunk {
            first,
            messages: vec![Message::builder().body("x").build(); count],
        };
        assert_eq!(bounds_of(None), Bounds::default());
        let whole = bounds_of(Some(&(chunk(0, 2), chunk(5, 3))));
        assert_eq!(whole.end, Some(Offset::at(7)));
        assert_eq!(whole.gone, None, "offset 0 is still there");
        let trimmed = bounds_of(Some(&(chunk(4, 1), chunk(4, 1))));
        assert_eq!(
            (trimmed.end, trimmed.gone),
            (Some(Offset::at(4)), Some(Offset::at(3)))
        );
    }

    #[test]
    fn validation_names_every_problem() {
        let config = RabbitMqConfig {
            stream: "rooms.{room}".into(),
            ..RabbitMqConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["allow"]);
        let config = RabbitMqConfig {
            host: String::new(),
            port: 0,
            user: String::new(),
            vhost: String::new(),
            stream: "amq.{room".into(),
            name_property: String::new(),
            create: Some(Retention {
                max_length_bytes: Some(0),
                max_age: Some(Duration::from_millis(10)),
                max_segment_size_bytes: Some(8),
            }),
            connect_timeout: Duration::ZERO,
            buffer: 0,
            ..RabbitMqConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "host",
                "port",
                "user",
                "vhost",
                "stream",
                "name_property",
                "create.max_length_bytes",
                "create.max_age",
                "create.max_segment_size_bytes",
                "connect_timeout",
                "buffer"
            ]
        );
        let good = RabbitMqConfig {
            stream: "rooms.{room}".into(),
            allow: Some("rooms.*".into()),
            create: Some(Retention {
                max_age: Some(Duration::from_secs(3600)),
                ..Retention::default()
            }),
            ..RabbitMqConfig::default()
        };
        assert!(good.validate().is_empty(), "{:?}", good.validate());
        let arguments = good.create.as_ref().map(Retention::arguments);
        assert_eq!(
            arguments,
            Some([("max-age".to_string(), "3600s".to_string())].into())
        );
    }

    #[test]
    fn keys_come_from_the_path_within_the_pattern() {
        let rabbitmq = RabbitMq::new(&RabbitMqConfig {
            stream: "rooms.{room}".into(),
            allow: Some("rooms.*".into()),
            ..RabbitMqConfig::default()
        });
        let ctx = |room: &str| RequestContext {
            params: [("room".to_string(), room.to_string())].into(),
            ..RequestContext::default()
        };
        assert_eq!(rabbitmq.key(&ctx("lobby")), Ok("rooms.lobby".to_string()));
        for bad in ["", "a\nb"] {
            let refused = rabbitmq.key(&ctx(bad)).map_err(|e| e.kind);
            assert_eq!(refused, Err(ErrorKind::BadRequest), "{bad:?}");
        }
        let long = "x".repeat(300);
        assert_eq!(
            rabbitmq.key(&ctx(&long)).map_err(|e| e.kind),
            Err(ErrorKind::BadRequest)
        );
    }
}
