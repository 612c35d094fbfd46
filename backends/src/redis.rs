//! `redis`: events from a Redis Stream, shared by every client of a key (a
//! [`Bus`] of the [`Redis`] broker: see [`crate::bus`] for what every bus
//! backend does).
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
//! What is Redis's own:
//!
//! - An entry's id (`ms-seq`) is the event id, so `Last-Event-ID` resumes
//!   exactly after it, on this gateway or any other reading the same Redis.
//! - The event data is the entry's `field` (`data`): JSON when it parses,
//!   else text; the name is its `name_field` (`event`) when present. An
//!   entry without the field, or whose field is not UTF-8, is an error event
//!   naming the entry's id.
//! - The reader of a key is an `XREAD BLOCK` loop on a connection of its
//!   own; pages are `XRANGE`, history `XREVRANGE`; what a key no longer holds
//!   comes from `XINFO STREAM` (entries before the first, and the largest
//!   id `XDEL` removed). Ids are times, so a key made again (or emptied by a
//!   restart without persistence) has ids past the old ones: a client with an
//!   old id is told its entries are gone, then gets the new ones.
//! - Commands other than the readers' share one connection, made again when
//!   Redis went away; a command that finds it dropped is sent once more on
//!   the new one, so the first request after a restart is answered.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::bus::key::{self, Glob, Template};
use crate::bus::{Bounds, Broker, Bus, Entry, Feed, Limits, Page};
use crate::problem::Problem;
use crate::publish::{Publication, Publisher};
use crate::{BackendError, BackendStats, Data, ErrorKind, Event, RequestContext};

/// How long one `XREAD` blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);
/// Shortest wait between reconnection attempts of a reader.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
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
    /// one page (100 entries) of it at a time. At least 1. Default: `10000`.
    pub max_catchup: usize,
    /// Keys this backend reads at once, each with its own Redis connection;
    /// a client of one more key is answered 503, so that clients cannot
    /// exhaust Redis's connections. Default: `1000`.
    pub max_keys: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            url: "redis://127.0.0.1:6379".into(),
            stream: String::new(),
            allow: None,
            history: limits.history,
            field: "data".into(),
            name_field: "event".into(),
            buffer: limits.buffer,
            max_catchup: limits.max_catchup,
            max_keys: limits.max_keys,
        }
    }
}

impl RedisConfig {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        validate_url(&self.url, &mut problems);
        key::validate_glob_template("stream", &self.stream, self.allow.as_deref(), &mut problems);
        problems.extend(self.limits().validate());
        if self.field.is_empty() {
            problems.push(Problem::new("field", "must name a field"));
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
    pub fn build(&self) -> Bus<Redis> {
        Bus::new(Redis::new(self), self.limits())
    }

    /// The publish target writing what this reads (a durable job's log).
    pub fn target(&self) -> RedisTarget {
        RedisTarget {
            url: self.url.clone(),
            stream: self.stream.clone(),
            allow: self.allow.clone(),
            field: self.field.clone(),
            name_field: self.name_field.clone(),
            ..RedisTarget::default()
        }
    }
}

fn validate_url(url: &str, problems: &mut Vec<Problem>) {
    if let Err(e) = redis::Client::open(url) {
        problems.push(Problem::new("url", format!("not a Redis URL: {e}")));
    }
}

/// A Redis stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId(u64, u64);

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The id just before this one (`0-0` stays).
    fn before(self) -> Self {
        match self {
            Self(0, 0) => self,
            Self(ms, 0) => Self(ms - 1, u64::MAX),
            Self(ms, seq) => Self(ms, seq - 1),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// Redis as a bus: the connection, the key template, the entry fields.
pub struct Redis {
    /// The client, or why the URL was refused (validation reports it first).
    client: Result<redis::Client, String>,
    /// Commands other than the readers' blocking reads, connected on first
    /// use and reconnected by the manager.
    commands: OnceCell<ConnectionManager>,
    template: Template,
    allow: Option<Glob>,
    field: String,
    name_field: String,
    stats: BackendStats,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("stream", &self.template)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// The broker for its settings (see [`RedisConfig::validate`]).
    pub fn new(config: &RedisConfig) -> Self {
        Self::with(
            &config.url,
            &config.stream,
            config.allow.as_deref(),
            &config.field,
            &config.name_field,
        )
    }

    fn with(url: &str, stream: &str, allow: Option<&str>, field: &str, name_field: &str) -> Self {
        Self {
            client: redis::Client::open(url).map_err(|e| e.to_string()),
            commands: OnceCell::new(),
            // Validation refused a template that does not parse.
            template: Template::parse(stream).unwrap_or_default(),
            allow: allow.map(Glob::new),
            field: field.into(),
            name_field: name_field.into(),
            stats: BackendStats::new("redis"),
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

    /// Runs a command on the shared connection. A connection Redis dropped
    /// (a restart while the gateway was idle) fails the first command sent
    /// on it before it is written; the manager then connects again, and the
    /// command goes once more on the new connection.
    async fn run<T, F>(&self, command: impl Fn(ConnectionManager) -> F) -> Result<T, BackendError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let commands = self.commands().await?;
        match command(commands.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_unrecoverable_error() => {
                tracing::debug!(error = %e, "Redis dropped the connection; sending again");
                command(commands).await.map_err(|e| unavailable(&e))
            }
            done => done.map_err(|e| unavailable(&e)),
        }
    }

    /// An entry as clients get it: the event, or why there is none.
    fn entry(&self, entry: &StreamId) -> Option<Entry<EntryId>> {
        let position = EntryId::parse(&entry.id)?;
        Some(Entry {
            position,
            event: self.event(entry, position),
        })
    }

    fn event(&self, entry: &StreamId, id: EntryId) -> Result<Event, String> {
        let text = |field: &str| -> Result<Option<String>, String> {
            match entry.map.get(field) {
                None => Ok(None),
                Some(value) => redis::from_redis_value_ref::<Vec<u8>>(value)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .map(Some)
                    .ok_or_else(|| format!("its field `{field}` is not UTF-8 text")),
            }
        };
        let data = text(&self.field)?.ok_or_else(|| format!("it has no field `{}`", self.field))?;
        let data = Data::parse_json(&data).unwrap_or_else(|_| Data::text(data));
        let mut event = Event::new(data).with_id(id.to_string());
        if let Some(name) = text(&self.name_field)? {
            event = event.with_name(name);
        }
        Ok(event)
    }

    /// One connection's worth of the reader: `XREAD BLOCK` after the
    /// feed's last id until the connection fails.
    async fn read(
        &self,
        key: &str,
        connection: &mut MultiplexedConnection,
        feed: &mut Feed<EntryId>,
    ) -> redis::RedisError {
        loop {
            let options = StreamReadOptions::default()
                .block(BLOCK.as_millis() as usize)
                .count(Self::PAGE);
            let reply: Result<Option<StreamReadReply>, _> = connection
                .xread_options(&[key], &[feed.last().to_string()], &options)
                .await;
            match reply {
                Ok(reply) => {
                    for entry in reply.iter().flat_map(|r| &r.keys).flat_map(|k| &k.ids) {
                        if let Some(entry) = self.entry(entry) {
                            feed.send(entry);
                        }
                    }
                }
                Err(error) => return error,
            }
        }
    }
}

fn unavailable(e: &redis::RedisError) -> BackendError {
    BackendError::new(ErrorKind::Unavailable, format!("Redis: {e}"))
}

impl Broker for Redis {
    type Position = EntryId;
    type Pager = ();
    const ID: &'static str = "a Redis stream id (ms-seq)";

    fn parse(&self, id: &str) -> Option<EntryId> {
        EntryId::parse(id)
    }

    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError> {
        let key = self.template.resolve(ctx, |_, _| Ok(()))?;
        key::allowed(key, self.allow.as_ref())
    }

    async fn bounds(&self, key: &str) -> Result<Bounds<EntryId>, BackendError> {
        let info: redis::Value = match self
            .run(|mut c| async move {
                redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(key)
                    .query_async(&mut c)
                    .await
            })
            .await
        {
            Ok(info) => info,
            // No such key: it holds nothing (made again, or lost).
            Err(e) if e.message.contains("no such key") => return Ok(Bounds::default()),
            Err(e) => return Err(e),
        };
        Ok(stream_bounds(info))
    }

    async fn history(
        &self,
        key: &str,
        n: usize,
        end: EntryId,
    ) -> Result<Vec<Entry<EntryId>>, BackendError> {
        let reply: StreamRangeReply = self
            .run(|mut c| async move { c.xrevrange_count(key, end.to_string(), "-", n).await })
            .await?;
        let mut entries: Vec<_> = reply.ids.iter().filter_map(|e| self.entry(e)).collect();
        entries.reverse();
        Ok(entries)
    }

    async fn page(
        &self,
        key: &str,
        _: &mut (),
        after: EntryId,
        count: usize,
    ) -> Result<Page<EntryId>, BackendError> {
        let reply: StreamRangeReply = self
            .run(|mut c| async move {
                c.xrange_count(key, format!("({after}"), "+", count + 1)
                    .await
            })
            .await?;
        let more = reply.ids.len() > count;
        let entries = reply
            .ids
            .iter()
            .take(count)
            .filter_map(|e| self.entry(e))
            .collect();
        // After the entries: what went between the two is announced.
        let gone = self.bounds(key).await?.gone;
        Ok(Page {
            entries,
            more,
            gone,
        })
    }

    /// `XREAD BLOCK` on a connection of its own, reconnecting with backoff;
    /// after a reconnection the key's bounds go to [`Feed::resync`] first.
    async fn follow(&self, key: &str, mut feed: Feed<EntryId>) {
        let client = match self.client() {
            Ok(client) => client,
            // Validation refuses such a URL; the key's clients wait for
            // nothing rather than spin.
            Err(error) => {
                tracing::error!(%key, %error, "Redis reader cannot start");
                return std::future::pending().await;
            }
        };
        let mut backoff = MIN_BACKOFF;
        // Connections after the first are reconnections.
        let mut connected_before = false;
        let settings = redis::AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK * 2));
        loop {
            let connection = client
                .get_multiplexed_async_connection_with_config(&settings)
                .await;
            let mut connection = match connection {
                Ok(c) => c,
                Err(error) => {
                    if connected_before {
                        self.stats.reconnect_failed();
                    }
                    tracing::warn!(%key, %error, "Redis reader cannot connect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if connected_before {
                self.stats.reconnected();
                match self.bounds(key).await {
                    Ok(bounds) => feed.resync(&bounds),
                    Err(error) => {
                        tracing::warn!(%key, %error, "Redis reader cannot read the key's bounds; retrying");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
            }
            connected_before = true;
            backoff = MIN_BACKOFF;
            let error = self.read(key, &mut connection, &mut feed).await;
            tracing::warn!(%key, %error, "Redis reader lost its connection; reconnecting");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn stats(&self) -> &BackendStats {
        &self.stats
    }

    async fn expire(&self, key: &str, after: Duration) -> Result<bool, BackendError> {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(|mut c| async move {
            redis::cmd("PEXPIRE")
                .arg(key)
                .arg(ms)
                .query_async::<i64>(&mut c)
                .await
        })
        .await?;
        Ok(true)
    }
}

/// What `XINFO STREAM` says a key holds: its end (the last id given out),
/// and what is gone: everything before its first entry (trimmed, or never
/// in this life of the key) and the largest id `XDEL` removed.
fn stream_bounds(info: redis::Value) -> Bounds<EntryId> {
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
            .filter(|id| *id != EntryId::default())
    };
    // `first-entry` is the entry itself: its id, then its fields.
    let first = field("first-entry")
        .and_then(|v| redis::from_redis_value_ref::<(String, redis::Value)>(v).ok())
        .and_then(|(id, _)| EntryId::parse(&id));
    let end = id("last-generated-id");
    let before_first = match first {
        Some(first) => Some(first.before()),
        // Empty: everything it was given is gone.
        None => end,
    };
    let gone = before_first
        .max(id("max-deleted-entry-id"))
        .filter(|gone| *gone != EntryId::default());
    Bounds {
        end,
        gone,
        epoch: 0,
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
        key::validate_glob_template("stream", &self.stream, self.allow.as_deref(), &mut problems);
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
    redis: Redis,
    max_len: usize,
}

impl RedisPublisher {
    /// The publisher for its settings; it connects on first use.
    pub fn new(target: &RedisTarget) -> Self {
        Self {
            redis: Redis::with(
                &target.url,
                &target.stream,
                target.allow.as_deref(),
                &target.field,
                &target.name_field,
            ),
            max_len: target.max_len,
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
        let key = self.redis.key(ctx)?;
        let mut fields = vec![(self.redis.field.as_str(), publication.data.as_str())];
        if let Some(name) = &publication.name {
            fields.push((self.redis.name_field.as_str(), name.as_str()));
        }
        let max_len = redis::streams::StreamMaxlen::Approx(self.max_len);
        let (key, fields) = (&key, &fields);
        self.redis
            .run(|mut c| async move { c.xadd_maxlen(key, max_len, "*", fields).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(EntryId::parse("1700-2") < EntryId::parse("1700-10"));
        assert_eq!(EntryId::parse("17"), Some(EntryId(17, 0)));
        for bad in ["x-1", "1-x", "-1", "1-", "", "+1-0"] {
            assert_eq!(EntryId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(EntryId(5, 0).before(), EntryId(4, u64::MAX));
        assert_eq!(EntryId(5, 3).before(), EntryId(5, 2));
        assert_eq!(EntryId(0, 0).before(), EntryId(0, 0));
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
