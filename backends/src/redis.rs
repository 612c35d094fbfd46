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

use std::cmp::Ordering;
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

use crate::config::Problem;
use crate::publish::{Publication, Publisher};
use crate::{Backend, BackendError, Data, ErrorKind, Event, EventStream, RequestContext};

/// How long one `XREAD` blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries fetched per `XRANGE` page while catching up.
const PAGE: usize = 500;
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
    /// the last N. Default: `0` (only what comes next). At most 10000.
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
    /// `lagged` error naming the id to resume from. Default: `10000`.
    pub max_catchup: usize,
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
        }
    }
}

impl RedisConfig {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        validate_url(&self.url, &mut problems);
        validate_key(&self.stream, self.allow.as_deref(), &mut problems);
        if self.history > 10_000 {
            problems.push(Problem::new("history", "at most 10000"));
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
        let client = redis::Client::open(config.url.as_str()).map_err(|e| e.to_string());
        Self {
            config: Arc::new(config),
            hub: Arc::new(Hub {
                client,
                commands: OnceCell::new(),
                channels: Mutex::new(HashMap::new()),
            }),
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
            hub: Hub {
                client: redis::Client::open(target.url.as_str()).map_err(|e| e.to_string()),
                commands: OnceCell::new(),
                channels: Mutex::new(HashMap::new()),
            },
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
        self.commands
            .get_or_try_init(|| client.get_connection_manager())
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
        let mut commands = self.commands().await?;
        let last: StreamRangeReply = commands
            .xrevrange_count(key, "+", "-", 1)
            .await
            .map_err(|e| unavailable(&e))?;
        let start = last
            .ids
            .first()
            .and_then(|e| EntryId::parse(&e.id))
            .unwrap_or(EntryId(0, 0));
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(key).and_then(Weak::upgrade) {
            return Ok(channel);
        }
        let (sender, _) = broadcast::channel(config.buffer);
        let reader = tokio::spawn(read(
            self.client()?.clone(),
            key.to_string(),
            start,
            sender.clone(),
            Arc::clone(config),
        ))
        .abort_handle();
        let channel = Arc::new(Channel { sender, reader });
        channels.retain(|_, weak| weak.strong_count() > 0);
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
) {
    let mut backoff = Duration::from_millis(100);
    let settings = redis::AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK * 2));
    loop {
        let connection = client
            .get_multiplexed_async_connection_with_config(&settings)
            .await;
        let mut connection: MultiplexedConnection = match connection {
            Ok(c) => c,
            Err(error) => {
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

/// `XRANGE` after `after`, page by page, up to `limit` entries; the bool
/// says whether the stream had more.
async fn range_after(
    commands: &mut ConnectionManager,
    key: &str,
    after: EntryId,
    limit: usize,
    config: &RedisConfig,
) -> Result<(Vec<Entry>, bool), BackendError> {
    let mut entries = Vec::new();
    let mut from = after;
    loop {
        let want = PAGE.min(limit - entries.len()) + 1;
        let reply: StreamRangeReply = commands
            .xrange_count(key, format!("({from}"), "+", want)
            .await
            .map_err(|e| unavailable(&e))?;
        let got = reply.ids.len();
        for entry in reply.ids {
            if entries.len() == limit {
                return Ok((entries, true));
            }
            if let Some(entry) = to_entry(entry, config) {
                from = entry.id;
                entries.push(entry);
            }
        }
        if got < want {
            return Ok((entries, false));
        }
    }
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

fn lagged(at: Option<EntryId>) -> BackendError {
    let resume = at.map_or("the start".to_string(), |id| id.to_string());
    BackendError::new(
        ErrorKind::Lagged,
        format!("the client fell too far behind; reconnect with Last-Event-ID {resume}"),
    )
}

/// One client's position and where its events come from.
struct Client {
    key: String,
    config: Arc<RedisConfig>,
    hub: Arc<Hub>,
    _channel: Arc<Channel>,
    live: broadcast::Receiver<Arc<Entry>>,
    /// Entries fetched from Redis, to send before the live ones.
    backlog: std::collections::VecDeque<Entry>,
    last: Option<EntryId>,
    /// An error to send after the backlog, then end.
    ending: Option<BackendError>,
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
            last: resume,
            ending: None,
        };
        match resume {
            Some(after) => client.catch_up(&mut commands, after).await?,
            None if self.config.history > 0 => {
                let entries =
                    last_entries(&mut commands, &key, self.config.history, &self.config).await?;
                client.last = entries.last().map(|e| e.id);
                client.backlog.extend(entries);
            }
            None => {}
        }
        Ok(futures::stream::unfold(client, Client::next).boxed())
    }
}

impl Client {
    /// Fetches what follows `after` into the backlog, within `max_catchup`.
    async fn catch_up(
        &mut self,
        commands: &mut ConnectionManager,
        after: EntryId,
    ) -> Result<(), BackendError> {
        let (entries, more) = range_after(
            commands,
            &self.key,
            after,
            self.config.max_catchup,
            &self.config,
        )
        .await?;
        if let Some(last) = entries.last() {
            self.last = Some(last.id);
        }
        self.backlog.extend(entries);
        if more {
            self.ending = Some(lagged(self.last));
        }
        Ok(())
    }

    async fn next(mut self) -> Option<(Result<Event, BackendError>, Self)> {
        loop {
            if let Some(entry) = self.backlog.pop_front() {
                return Some((Ok(entry.event), self));
            }
            if let Some(error) = self.ending.take() {
                // Sent once; the stream then ends (`live` is never read again).
                self.backlog.clear();
                return Some((Err(error), self.finished()));
            }
            match self.live.recv().await {
                Ok(entry) => {
                    if self
                        .last
                        .is_some_and(|last| entry.id.cmp(&last) != Ordering::Greater)
                    {
                        continue;
                    }
                    self.last = Some(entry.id);
                    return Some((Ok(entry.event.clone()), self));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Behind by more than the buffer: catch up from Redis.
                    let after = self.last.unwrap_or(EntryId(0, 0));
                    let caught = match self.hub.commands().await {
                        Ok(mut commands) => self.catch_up(&mut commands, after).await,
                        Err(e) => Err(e),
                    };
                    if let Err(error) = caught {
                        return Some((Err(error), self.finished()));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// A client whose stream has ended: its next poll yields nothing.
    fn finished(mut self) -> Self {
        self.ending = None;
        self.backlog.clear();
        let (_, closed) = broadcast::channel(1);
        self.live = closed;
        self
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
