//! `redis`: events from a Redis Stream, shared by every client of a key.
//!
//! ```toml
//! [routes.rooms.backends.bus]
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//! stream = "rooms:{room}"    # {room} from the route's path /rooms/{room}
//! allow = "rooms:*"          # the keys clients may read
//! history = 10               # the last 10 entries on connect
//! ```
//!
//! - An entry's id is the event id, so `Last-Event-ID` resumes exactly after
//!   it, on this gateway or any other reading the same Redis.
//! - The event data is the entry's `field` (`data`): JSON when it parses,
//!   else text; the name is its `name_field` (`event`) when present.
//! - One gateway reads each key once: a single reader task per key
//!   (`XREAD BLOCK` on its own connection) feeds every client of that key
//!   through a broadcast buffer of `buffer` entries, and stops when the last
//!   client leaves.
//! - A client that falls more than `buffer` entries behind does not slow the
//!   others: it catches up from Redis by id (`XRANGE`), up to `max_catchup`
//!   entries; past that it gets a `lagged` error naming the id to resume
//!   from, and its stream ends. Nothing is skipped silently.
//! - When Redis goes away the reader reconnects with backoff and continues
//!   after the last id it delivered: nothing lost, nothing repeated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde::Deserialize;
use tokio::sync::{OnceCell, broadcast};

use crate::problem::Problem;
use crate::publish::{Publication, Publisher};
use crate::{
    Backend, BackendError, BackendStats, Data, ErrorKind, Event, EventStream, RequestContext,
};

/// How long one `XREAD` blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries fetched per `XRANGE` page while catching up: a client holds at
/// most one page in memory.
const PAGE: usize = 100;
/// Longest wait between reconnection attempts of a reader.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The `redis` backend's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// The server: `redis://[user:password@]host[:port][/db]`.
    /// Default: `redis://127.0.0.1:6379`.
    pub url: String,
    /// The stream key, with `{param}` placeholders filled from the route's
    /// path parameters (`rooms:{room}`). Required.
    pub stream: String,
    /// A pattern the resolved key must match, `*` matching any run of
    /// characters (`rooms:*`); another key is answered 404. Required when
    /// `stream` has placeholders, so that clients cannot read arbitrary keys.
    pub allow: Option<String>,
    /// Entries sent on connect when the client gives no `Last-Event-ID`:
    /// the last N. Default: `0` (only what comes next). At most 1000.
    pub history: usize,
    /// The entry field holding the event data. Default: `data`.
    pub field: String,
    /// The entry field holding the event name, when present.
    /// Default: `event`.
    pub name_field: String,
    /// Entries held for clients that read slower than the stream moves.
    /// Default: `1024`.
    pub buffer: usize,
    /// The most entries a client that fell behind (or resumed from an old
    /// id) may fetch from Redis to catch up; past it the stream ends with a
    /// `lagged` error naming the id to resume from. A client holds at most
    /// one page (100 entries) of it at a time. Default: `10000`.
    pub max_catchup: usize,
    /// Keys this backend reads at once, each with its own Redis connection;
    /// a client of one more key is answered 503, so that clients cannot
    /// exhaust Redis's connections. Default: `1000`.
    pub max_keys: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            stream: String::new(),
            allow: None,
            history: 0,
            field: "data".into(),
            name_field: "event".into(),
            buffer: 1024,
            max_catchup: 10_000,
            max_keys: 1000,
        }
    }
}

impl RedisConfig {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        validate_url(&self.url, &mut problems);
        validate_key(&self.stream, self.allow.as_deref(), &mut problems);
        if self.history > 1000 {
            problems.push(Problem::new(
                "history",
                "at most 1000 (a client holds its history in memory)",
            ));
        }
        if self.max_keys == 0 {
            problems.push(Problem::new("max_keys", "must be at least 1"));
        }
        if !(1..=1 << 20).contains(&self.buffer) {
            problems.push(Problem::new("buffer", "from 1 to 1048576"));
        }
        if self.field.is_empty() {
            problems.push(Problem::new("field", "must name a field"));
        }
        problems
    }
}

/// The `{name}`s of a key template, or an error for an unclosed brace.
fn placeholders(template: &str) -> Result<Vec<&str>, ()> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or(())?;
        names.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    Ok(names)
}

/// `*`-only glob match.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A Redis stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// An entry as clients get it.
#[derive(Debug)]
struct Entry {
    id: EntryId,
    event: Event,
}

/// The backend: its settings and the readers it shares among clients.
#[derive(Debug)]
pub struct Redis {
    config: Arc<RedisConfig>,
    hub: Arc<Hub>,
}

struct Hub {
    /// The client, or why the URL was refused (validation reports it first).
    client: Result<redis::Client, String>,
    /// Commands other than the readers' blocking reads, connected on first
    /// use and reconnected by the manager.
    commands: OnceCell<ConnectionManager>,
    channels: Mutex<HashMap<String, Weak<Channel>>>,
    /// Readers' reconnects, clients that lagged or were dropped.
    stats: Arc<BackendStats>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// One key's reader and its clients' buffer; the reader stops when the last
/// client drops its `Arc<Channel>`.
struct Channel {
    sender: broadcast::Sender<Arc<Entry>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Redis {
    /// The backend for its settings (see [`RedisConfig::validate`]). It
    /// connects on first use.
    pub fn new(config: RedisConfig) -> Self {
        Self {
            hub: Arc::new(Hub::new(&config.url)),
            config: Arc::new(config),
        }
    }

    /// The key a request reads, checked against `allow`.
    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError> {
        resolve_key(&self.config.stream, self.config.allow.as_deref(), ctx)
    }
}

/// The key `template` names for a request (its `{param}`s filled from the
/// path), refused (404) unless it matches `allow`.
fn resolve_key(
    template: &str,
    allow: Option<&str>,
    ctx: &RequestContext,
) -> Result<String, BackendError> {
    let mut key = template.to_string();
    for name in placeholders(template).unwrap_or_default() {
        let value = ctx.params.get(name).ok_or_else(|| {
            BackendError::new(
                ErrorKind::Internal,
                format!("the stream key needs the path parameter {{{name}}}, which the route's path lacks"),
            )
        })?;
        key = key.replace(&format!("{{{name}}}"), value);
    }
    match allow {
        Some(pattern) if !glob_match(pattern, &key) => Err(BackendError::new(
            ErrorKind::NotFound,
            format!("no stream {key:?} here"),
        )),
        _ => Ok(key),
    }
}

/// Checks a key template and its `allow` pattern, as both the backend and
/// the publisher take them.
fn validate_key(stream: &str, allow: Option<&str>, problems: &mut Vec<Problem>) {
    if stream.is_empty() {
        problems.push(Problem::new("stream", "required: the stream key"));
    }
    if placeholders(stream).is_err() {
        problems.push(Problem::new(
            "stream",
            "a `{` without its `}`: placeholders are written `{param}`",
        ));
    }
    if stream.contains('{') && allow.is_none() {
        problems.push(Problem::new(
            "allow",
            "required when `stream` has placeholders (`rooms:*`), so that clients cannot reach arbitrary keys",
        ));
    }
}

fn validate_url(url: &str, problems: &mut Vec<Problem>) {
    if let Err(e) = redis::Client::open(url) {
        problems.push(Problem::new("url", format!("not a Redis URL: {e}")));
    }
}

/// `[…target]` of a publish route: the Redis Stream events are appended to.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTarget {
    /// The server. Default: `redis://127.0.0.1:6379`.
    pub url: String,
    /// The stream key, with `{param}` placeholders from the publish route's
    /// path. Required.
    pub stream: String,
    /// A pattern the resolved key must match (`*` any run of characters);
    /// required when `stream` has placeholders.
    pub allow: Option<String>,
    /// The entry field the event data goes to. Default: `data`.
    pub field: String,
    /// The entry field the event name goes to. Default: `event`.
    pub name_field: String,
    /// Keep about this many entries per stream (`XADD MAXLEN ~`), so that
    /// the stream cannot grow without bound. Default: `100000`.
    pub max_len: usize,
}

impl Default for RedisTarget {
    fn default() -> Self {
        let reader = RedisConfig::default();
        Self {
            url: reader.url,
            stream: String::new(),
            allow: None,
            field: reader.field,
            name_field: reader.name_field,
            max_len: 100_000,
        }
    }
}

impl RedisTarget {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        validate_url(&self.url, &mut problems);
        validate_key(&self.stream, self.allow.as_deref(), &mut problems);
        if self.field.is_empty() || self.field == self.name_field {
            problems.push(Problem::new(
                "field",
                "must name a field other than name_field",
            ));
        }
        if self.max_len == 0 {
            problems.push(Problem::new("max_len", "must be at least 1"));
        }
        problems
    }
}

/// Appends events to a Redis Stream.
#[derive(Debug)]
pub struct RedisPublisher {
    target: RedisTarget,
    hub: Hub,
}

impl RedisPublisher {
    /// The publisher for its settings; it connects on first use.
    pub fn new(target: RedisTarget) -> Self {
        Self {
            hub: Hub::new(&target.url),
            target,
        }
    }
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(
        &self,
        ctx: &RequestContext,
        publication: &Publication,
    ) -> Result<String, BackendError> {
        let key = resolve_key(&self.target.stream, self.target.allow.as_deref(), ctx)?;
        let mut fields = vec![(self.target.field.as_str(), publication.data.to_string())];
        if let Some(name) = &publication.name {
            fields.push((self.target.name_field.as_str(), name.clone()));
        }
        let mut commands = self.hub.commands().await?;
        let max_len = redis::streams::StreamMaxlen::Approx(self.target.max_len);
        commands
            .xadd_maxlen(&key, max_len, "*", &fields)
            .await
            .map_err(|e| unavailable(&e))
    }
}

fn unavailable(e: &redis::RedisError) -> BackendError {
    BackendError::new(ErrorKind::Unavailable, format!("Redis: {e}"))
}

impl Hub {
    /// A hub for the server at `url`; nothing connects until first use.
    fn new(url: &str) -> Self {
        Self {
            client: redis::Client::open(url).map_err(|e| e.to_string()),
            commands: OnceCell::new(),
            channels: Mutex::new(HashMap::new()),
            stats: Arc::new(BackendStats::new("redis")),
        }
    }

    fn client(&self) -> Result<&redis::Client, BackendError> {
        self.client.as_ref().map_err(|e| {
            BackendError::new(
                ErrorKind::Internal,
                format!("the Redis URL is invalid: {e}"),
            )
        })
    }

    async fn commands(&self) -> Result<ConnectionManager, BackendError> {
        let client = self.client()?;
        // Fail fast when Redis is away (a 503 beats a long wait), and give
        // a page of entries time to arrive.
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.commands
            .get_or_try_init(|| client.get_connection_manager_with_config(settings))
            .await
            .cloned()
            .map_err(|e| unavailable(&e))
    }

    /// The key's channel, started (from the stream's current end) when it
    /// has none.
    async fn channel(
        self: &Arc<Self>,
        key: &str,
        config: &Arc<RedisConfig>,
    ) -> Result<Arc<Channel>, BackendError> {
        if let Some(channel) = self.live_channel(key) {
            return Ok(channel);
        }
        // Where the reader starts: the end of the stream now, so that a
        // client's catch-up (`XRANGE` after subscribing) and the reader
        // overlap rather than leave a gap.
        let start = stream_end(&mut self.commands().await?, key).await?;
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(key).and_then(Weak::upgrade) {
            return Ok(channel);
        }
        channels.retain(|_, weak| weak.strong_count() > 0);
        if channels.len() >= config.max_keys {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "this gateway reads {} keys already, its most; retry later",
                    config.max_keys
                ),
            ));
        }
        let (sender, _) = broadcast::channel(config.buffer);
        let reader = tokio::spawn(read(
            self.client()?.clone(),
            key.to_string(),
            start,
            sender.clone(),
            Arc::clone(config),
            Arc::clone(&self.stats),
        ))
        .abort_handle();
        let channel = Arc::new(Channel { sender, reader });
        channels.insert(key.to_string(), Arc::downgrade(&channel));
        Ok(channel)
    }

    fn live_channel(&self, key: &str) -> Option<Arc<Channel>> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.get(key).and_then(Weak::upgrade)
    }
}

/// The reader of one key: `XREAD BLOCK` after the last id delivered, each
/// entry broadcast to the key's clients, reconnecting with backoff.
async fn read(
    client: redis::Client,
    key: String,
    mut last: EntryId,
    sender: broadcast::Sender<Arc<Entry>>,
    config: Arc<RedisConfig>,
    stats: Arc<BackendStats>,
) {
    let mut backoff = Duration::from_millis(100);
    // Connections after the first are reconnections.
    let mut connected_before = false;
    let settings = redis::AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK * 2));
    loop {
        let connection = client
            .get_multiplexed_async_connection_with_config(&settings)
            .await;
        let mut connection: MultiplexedConnection = match connection {
            Ok(c) => {
                if connected_before {
                    stats.reconnected();
                }
                connected_before = true;
                c
            }
            Err(error) => {
                if connected_before {
                    stats.reconnect_failed();
                }
                tracing::warn!(%key, %error, "Redis reader cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        loop {
            let options = StreamReadOptions::default()
                .block(BLOCK.as_millis() as usize)
                .count(PAGE);
            let reply: Result<Option<StreamReadReply>, _> = connection
                .xread_options(&[&key], &[last.to_string()], &options)
                .await;
            match reply {
                Ok(reply) => {
                    backoff = Duration::from_millis(100);
                    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                        if let Some(entry) = to_entry(entry, &config) {
                            last = entry.id;
                            // No receiver is no error: clients come and go.
                            let _ = sender.send(Arc::new(entry));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%key, %error, "Redis reader lost its connection; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn to_entry(entry: StreamId, config: &RedisConfig) -> Option<Entry> {
    let id = EntryId::parse(&entry.id)?;
    let text: String = entry.get(&config.field).unwrap_or_default();
    let data = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => Data::json(&json),
        Err(_) => Data::text(text),
    };
    let mut event = Event::new(data).with_id(id.to_string());
    if let Some(name) = entry.get::<String>(&config.name_field) {
        event = event.with_name(name);
    }
    Some(Entry { id, event })
}

/// One page of `XRANGE` after `after`: at most `count` entries, and whether
/// the stream has more after them.
async fn page_after(
    commands: &mut ConnectionManager,
    key: &str,
    after: EntryId,
    count: usize,
    config: &RedisConfig,
) -> Result<(Vec<Entry>, bool), BackendError> {
    let reply: StreamRangeReply = commands
        .xrange_count(key, format!("({after}"), "+", count + 1)
        .await
        .map_err(|e| unavailable(&e))?;
    let more = reply.ids.len() > count;
    let entries = reply
        .ids
        .into_iter()
        .take(count)
        .filter_map(|e| to_entry(e, config))
        .collect();
    Ok((entries, more))
}

/// The last `n` entries, oldest first.
async fn last_entries(
    commands: &mut ConnectionManager,
    key: &str,
    n: usize,
    config: &RedisConfig,
) -> Result<Vec<Entry>, BackendError> {
    let reply: StreamRangeReply = commands
        .xrevrange_count(key, "+", "-", n)
        .await
        .map_err(|e| unavailable(&e))?;
    let mut entries: Vec<Entry> = reply
        .ids
        .into_iter()
        .filter_map(|e| to_entry(e, config))
        .collect();
    entries.reverse();
    Ok(entries)
}

/// The id of the stream's last entry now (`0-0` for an empty stream).
async fn stream_end(commands: &mut ConnectionManager, key: &str) -> Result<EntryId, BackendError> {
    let last: StreamRangeReply = commands
        .xrevrange_count(key, "+", "-", 1)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(last
        .ids
        .first()
        .and_then(|e| EntryId::parse(&e.id))
        .unwrap_or(EntryId(0, 0)))
}

/// Whether entries after `after` may be gone: deleted (Redis records the
/// largest id `XDEL` removed, `max-deleted-entry-id`) or trimmed (`after`
/// itself is gone, and the oldest entry left is later: trimming removes the
/// oldest entries first, so what followed `after` may have gone with it).
async fn removed_after(
    commands: &mut ConnectionManager,
    key: &str,
    after: EntryId,
) -> Result<bool, BackendError> {
    let info: redis::Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(commands)
        .await
    {
        Ok(info) => info,
        // No such stream: nothing was removed from it.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(false);
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let pairs: Vec<(redis::Value, redis::Value)> = match info {
        redis::Value::Map(pairs) => pairs,
        redis::Value::Array(items) => {
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        _ => Vec::new(),
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| redis::from_redis_value_ref::<String>(k).is_ok_and(|k| k == name))
            .map(|(_, v)| v)
    };
    let id = |name: &str| {
        field(name)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .and_then(|id| EntryId::parse(&id))
    };
    let number = |name: &str| field(name).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok());
    if id("max-deleted-entry-id").is_some_and(|deleted| deleted > after) {
        return Ok(true);
    }
    let trimmed = number("entries-added") > number("length");
    let first_later = id("recorded-first-entry-id").is_some_and(|first| first > after);
    if !(trimmed && first_later) {
        return Ok(false);
    }
    let own: StreamRangeReply = commands
        .xrange(key, after.to_string(), after.to_string())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(own.ids.is_empty())
}

fn lagged(at: EntryId) -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        format!("the client fell too far behind; reconnect with Last-Event-ID {at}"),
    )
}

fn gap(after: EntryId) -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        format!(
            "entries after {after} were trimmed from the stream before this client read them; \
             the stream goes on with the oldest entry left"
        ),
    )
}

/// One client: where it is in the stream, and where its next events come
/// from: a notice, a page of backlog, more pages from Redis, then the live
/// buffer.
struct Client {
    key: String,
    config: Arc<RedisConfig>,
    hub: Arc<Hub>,
    _channel: Arc<Channel>,
    live: broadcast::Receiver<Arc<Entry>>,
    /// The current page of entries fetched from Redis.
    backlog: std::collections::VecDeque<Entry>,
    /// The last id sent (or the stream's end when the client joined).
    last: EntryId,
    /// While catching up from Redis: how many more entries it may fetch.
    catching_up: Option<usize>,
    /// An error to send before anything else (a gap), the stream going on.
    notice: Option<BackendError>,
    /// An error to send once the backlog is out, then end.
    ending: Option<BackendError>,
    ended: bool,
}

#[async_trait]
impl Backend for Redis {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let key = self.key(ctx)?;
        let resume = match ctx.last_event_id.as_deref() {
            None => None,
            Some(id) => Some(EntryId::parse(id).ok_or_else(|| {
                BackendError::bad_request(format!(
                    "Last-Event-ID {id:?} is not a Redis stream id (ms-seq)"
                ))
            })?),
        };
        let channel = self.hub.channel(&key, &self.config).await?;
        // Subscribe first, then read what came before: the two overlap (and
        // ids drop the repeats) instead of leaving a gap.
        let live = channel.sender.subscribe();
        let mut commands = self.hub.commands().await?;
        let mut client = Client {
            key: key.clone(),
            config: Arc::clone(&self.config),
            hub: Arc::clone(&self.hub),
            _channel: channel,
            live,
            backlog: Default::default(),
            last: EntryId(0, 0),
            catching_up: None,
            notice: None,
            ending: None,
            ended: false,
        };
        match resume {
            Some(after) => client.start_catch_up(&mut commands, after).await?,
            None => {
                client.last = stream_end(&mut commands, &key).await?;
                if self.config.history > 0 {
                    let history =
                        last_entries(&mut commands, &key, self.config.history, &self.config)
                            .await?;
                    client.backlog.extend(history);
                }
            }
        }
        Ok(futures::stream::unfold(client, Client::next).boxed())
    }

    fn stats(&self) -> Option<&BackendStats> {
        Some(&self.hub.stats)
    }
}

impl Client {
    /// Starts catching up after `after`, noting a gap when entries after it
    /// are gone.
    async fn start_catch_up(
        &mut self,
        commands: &mut ConnectionManager,
        after: EntryId,
    ) -> Result<(), BackendError> {
        if removed_after(commands, &self.key, after).await? {
            self.notice = Some(gap(after));
        }
        self.last = after;
        self.catching_up = Some(self.config.max_catchup);
        Ok(())
    }

    /// The next page of the catch-up into the backlog; at the budget's end
    /// with more to read, the stream is to end with `lagged`.
    async fn fetch_page(&mut self) -> Result<(), BackendError> {
        let Some(budget) = self.catching_up else {
            return Ok(());
        };
        let mut commands = self.hub.commands().await?;
        let count = PAGE.min(budget);
        let (entries, more) = if count == 0 {
            (Vec::new(), true)
        } else {
            page_after(&mut commands, &self.key, self.last, count, &self.config).await?
        };
        let left = budget - entries.len();
        self.catching_up = match (more, left) {
            (false, _) => None,
            (true, 0) => {
                self.hub.stats.dropped();
                self.ending = Some(lagged(entries.last().map_or(self.last, |e| e.id)));
                None
            }
            (true, left) => Some(left),
        };
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
                self.last = self.last.max(entry.id);
                return Some((Ok(entry.event), self));
            }
            if self.catching_up.is_some() {
                if let Err(error) = self.fetch_page().await {
                    self.ended = true;
                    return Some((Err(error), self));
                }
                continue;
            }
            if let Some(error) = self.ending.take() {
                self.ended = true;
                return Some((Err(error), self));
            }
            match self.live.recv().await {
                Ok(entry) => {
                    if entry.id <= self.last {
                        continue;
                    }
                    self.last = entry.id;
                    return Some((Ok(entry.event.clone()), self));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.hub.stats.lagged();
                    // Behind by more than the buffer: catch up from Redis,
                    // page by page, within `max_catchup`, hearing first of
                    // entries trimmed meanwhile.
                    let after = self.last;
                    let started = match self.hub.commands().await {
                        Ok(mut commands) => self.start_catch_up(&mut commands, after).await,
                        Err(e) => Err(e),
                    };
                    if let Err(error) = started {
                        self.ended = true;
                        return Some((Err(error), self));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_ids() {
        assert!(glob_match("rooms:*", "rooms:a"));
        assert!(glob_match("rooms:*", "rooms:"));
        assert!(!glob_match("rooms:*", "secrets:a"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c-y-b"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(EntryId::parse("1700-2") < EntryId::parse("1700-10"));
        assert_eq!(EntryId::parse("17"), Some(EntryId(17, 0)));
        assert_eq!(EntryId::parse("x-1"), None);
    }

    #[test]
    fn templated_keys_need_an_allow_pattern() {
        let config = RedisConfig {
            stream: "rooms:{room}".into(),
            ..RedisConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["allow"]);
        let config = RedisConfig {
            stream: "rooms:{room".into(),
            url: "http://x".into(),
            buffer: 0,
            ..RedisConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["url", "stream", "allow", "buffer"]);
    }
}
