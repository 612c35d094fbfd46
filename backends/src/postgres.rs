//! `postgres`: events from a PostgreSQL table, shared by every client of a
//! key (a [`Bus`] of the [`Postgres`] broker: see [`crate::bus`] for what
//! every bus backend does).
//!
//! ```toml
//! [routes.rooms.backends.bus]
//! type = "postgres"
//! url = "postgres://postgres@127.0.0.1:5432/app"
//! table = "events"           # made (with its triggers) when missing
//! key = "rooms:{room}"       # {room} from the route's path /rooms/{room}
//! allow = "rooms:*"          # the keys clients may read
//! history = 10               # the last 10 rows of the key on connect
//! ```
//!
//! What is PostgreSQL's own:
//!
//! - A table is the stream: a row is an entry, its `id` (a sequence shared
//!   by every key of the table) is the event id, so `Last-Event-ID` resumes
//!   exactly after it on any gateway reading the table. The key is a column,
//!   always a bind parameter. Pages and history are index scans on
//!   `(key, id)`.
//! - **Commit order** ([`schema`]): a `BEFORE INSERT` trigger takes a
//!   transaction-scoped advisory lock for the table, then gives the row its
//!   id. A writer cannot get an id before the previous writer committed or
//!   rolled back, so ids become visible in order and a reader that moved
//!   past an id never finds a smaller one committed later. The price:
//!   writers to one table commit one at a time. Without the trigger
//!   (`ordering = "unchecked"`) a transaction that commits after a later id
//!   was read is never delivered, and nothing tells.
//! - **Removal is recorded**: an `AFTER DELETE` (and `BEFORE TRUNCATE`)
//!   trigger keeps, per key, the largest id removed (`<table>_trim`), so a
//!   client that had not read those rows is told, whoever deleted them
//!   (the publish target's `max_len`, an operator's retention job).
//! - **One listening connection per backend**: the trigger (or the publish
//!   target, without the trigger) sends `NOTIFY <channel>, '<key>'`; the
//!   key's reader wakes and reads the page after its last id. It also reads
//!   every `poll_interval`, for writers that do not notify, and when the
//!   listening connection is made again (notifications may have been
//!   missed). Reads share one more connection.
//! - Each read is followed by the key's bounds (the largest id, the largest
//!   removed, the table's oid): rows removed before the reader read them
//!   are announced, and so is a table made again (another oid, or an end
//!   behind the reader: its sequence started over), whose rows are then
//!   read from the start.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Socket, Statement};

use crate::bus::key::{self, Glob, Template};
use crate::bus::{Bounds, Broker, Bus, Entry, Feed, Limits, Page};
use crate::problem::Problem;
use crate::publish::{Publication, Publisher, is_event_name};
use crate::{BackendError, BackendStats, Data, ErrorKind, Event, RequestContext};

/// Shortest wait before a reader or the listener tries again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a reader or the listener tries again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest table name: the names made from it (`<table>_trim`,
/// `<table>_id_seq`, …) stay within PostgreSQL's 63 bytes.
const MAX_TABLE: usize = 50;
/// Longest identifier PostgreSQL keeps whole.
const MAX_IDENTIFIER: usize = 63;
/// Longest key: a `NOTIFY` payload (the key) must stay under 8000 bytes.
const MAX_KEY: usize = 1000;
/// The first half of the advisory lock the ordering trigger takes; the
/// second half is the table's oid, so each table has a lock of its own.
pub const LOCK_CLASS: i32 = 0x5353_4547; // "SSEG"

/// How the ids of the table's rows are ordered against commits.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// The ordering trigger gives ids in commit order (the default); the
    /// gateway refuses a table without it.
    #[default]
    Commit,
    /// The table's ids are what its writers make them (a plain
    /// `bigserial`): a transaction that commits after a later id was read is
    /// never delivered. For tables an operator orders otherwise (a single
    /// writer).
    Unchecked,
}

/// Where the stream is: what the backend and the publish target share.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    url: String,
    table: String,
    channel: String,
    create: bool,
    ordering: Ordering,
    connect_timeout: Duration,
}

/// The `postgres` backend's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// The server: `postgres://user[:password]@host[:port]/database` (or
    /// `host=… user=… dbname=…`). Default:
    /// `postgres://postgres@127.0.0.1:5432/postgres`. No TLS.
    pub url: String,
    /// The table holding the events: lowercase letters, digits and `_`,
    /// starting with a letter or `_`, at most 50 bytes. Default: `events`.
    pub table: String,
    /// The `LISTEN`/`NOTIFY` channel the writers name the key on (same
    /// rule, at most 63 bytes). Default: the table's name.
    pub channel: Option<String>,
    /// The key clients read (the `key` column), with `{param}` placeholders
    /// filled from the route's path parameters (`rooms:{room}`). Required.
    pub key: String,
    /// A pattern the resolved key must match, `*` matching any run of
    /// characters (`rooms:*`); another key is answered 404. Required when
    /// `key` has placeholders.
    pub allow: Option<String>,
    /// Make the table, its sequence, triggers and trim table when missing
    /// (the gateway's user needs `CREATE` on the schema). With `false`, the
    /// operator runs the README's SQL. Default: `true`.
    pub create: bool,
    /// `commit` (default): ids in commit order, by the ordering trigger,
    /// checked at connect. `unchecked`: no check, no guarantee.
    pub ordering: Ordering,
    /// How often a key's reader reads even without a notification.
    /// Default: `1s`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long connecting may take before a request is answered 503.
    /// Default: `2s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Rows sent on connect without `Last-Event-ID`: the key's last N.
    /// Default: `0`. At most 1000.
    pub history: usize,
    /// Rows held for clients that read slower than the key moves.
    /// Default: `1024`.
    pub buffer: usize,
    /// The most rows a client may read to catch up before its stream ends
    /// with `lagged`. At least 1. Default: `10000`.
    pub max_catchup: usize,
    /// Keys this backend reads at once; one more is a 503. Default: `1000`.
    pub max_keys: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            table: "events".into(),
            channel: None,
            key: String::new(),
            allow: None,
            create: true,
            ordering: Ordering::Commit,
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            history: limits.history,
            buffer: limits.buffer,
            max_catchup: limits.max_catchup,
            max_keys: limits.max_keys,
        }
    }
}

impl PostgresConfig {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        validate_place(&self.place(), self.channel.as_deref(), &mut problems);
        key::validate_glob_template("key", &self.key, self.allow.as_deref(), &mut problems);
        if self.poll_interval < Duration::from_millis(10) {
            problems.push(Problem::new("poll_interval", "at least 10ms"));
        }
        problems.extend(self.limits().validate());
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

    fn place(&self) -> Place {
        Place::new(
            &self.url,
            &self.table,
            self.channel.as_deref(),
            self.create,
            self.ordering,
            self.connect_timeout,
        )
    }

    /// The backend (see [`validate`](Self::validate)); it connects on first
    /// use.
    pub fn build(&self) -> Bus<Postgres> {
        Bus::new(Postgres::new(self), self.limits())
    }

    /// The publish target writing what this reads (a durable job's log).
    pub fn target(&self) -> PostgresTarget {
        PostgresTarget {
            url: self.url.clone(),
            table: self.table.clone(),
            channel: self.channel.clone(),
            key: self.key.clone(),
            allow: self.allow.clone(),
            create: self.create,
            ordering: self.ordering,
            connect_timeout: self.connect_timeout,
            ..PostgresTarget::default()
        }
    }
}

impl Place {
    fn new(
        url: &str,
        table: &str,
        channel: Option<&str>,
        create: bool,
        ordering: Ordering,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            url: url.into(),
            table: table.into(),
            channel: channel.unwrap_or(table).into(),
            create,
            ordering,
            connect_timeout,
        }
    }

    fn names(&self) -> Names {
        Names::new(&self.table)
    }
}

fn validate_place(place: &Place, channel: Option<&str>, problems: &mut Vec<Problem>) {
    if let Err(e) = tokio_postgres::Config::from_str(&place.url) {
        problems.push(Problem::new(
            "url",
            format!("not a PostgreSQL URL: {}", describe(&e)),
        ));
    }
    if let Err(why) = identifier(&place.table, MAX_TABLE) {
        problems.push(Problem::new("table", why));
    }
    if let Some(channel) = channel {
        if let Err(why) = identifier(channel, MAX_IDENTIFIER) {
            problems.push(Problem::new("channel", why));
        }
    }
    if place.connect_timeout.is_zero() {
        problems.push(Problem::new("connect_timeout", "must be more than 0"));
    }
}

/// An identifier that reads the same quoted or not: lowercase ASCII
/// letters, digits and `_`, not starting with a digit, at most `max` bytes.
fn identifier(name: &str, max: usize) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !first_ok || !rest_ok || name.len() > max {
        return Err(format!(
            "an SQL identifier: lowercase letters, digits and `_`, starting with a letter or `_`, at most {max} bytes"
        ));
    }
    Ok(())
}

/// The names of a table's objects, quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Names {
    table: String,
    trim: String,
    sequence: String,
    index: String,
    order: String,
    forget: String,
    /// The triggers' names, unquoted (as `pg_trigger` holds them).
    order_trigger: String,
    forget_trigger: String,
}

impl Names {
    fn new(table: &str) -> Self {
        let quoted = |suffix: &str| format!("\"{table}{suffix}\"");
        Self {
            table: quoted(""),
            trim: quoted("_trim"),
            sequence: quoted("_id_seq"),
            index: quoted("_key_id"),
            order: quoted("_order"),
            forget: quoted("_forget"),
            order_trigger: format!("{table}_order"),
            forget_trigger: format!("{table}_forget"),
        }
    }
}

/// The SQL that makes `table` a stream (what `create = true` runs, and what
/// an operator runs when the gateway may not create tables), for writers
/// that `NOTIFY` on `channel`. Idempotent: it makes what is missing.
///
/// With `Ordering::Commit`, ids come from the ordering trigger (no column
/// default); with `Ordering::Unchecked`, from the column's default, and the
/// writers notify themselves.
pub fn schema(table: &str, channel: &str, ordering: Ordering) -> String {
    let n = Names::new(table);
    let Names {
        table,
        trim,
        sequence,
        index,
        order,
        forget,
        order_trigger,
        forget_trigger,
    } = &n;
    // Without the ordering trigger the column's default gives ids (a
    // bigserial, whose sequence is `<table>_id_seq` too).
    let id_column = match ordering {
        Ordering::Commit => "id bigint PRIMARY KEY",
        Ordering::Unchecked => "id bigserial PRIMARY KEY",
    };
    let order_sql = match ordering {
        Ordering::Unchecked => String::new(),
        Ordering::Commit => format!(
            "
-- Commit order: the lock waits for the previous writer's commit (or
-- rollback); only then does the row get its id, so ids become visible in
-- order. The notification names the row's key.
CREATE OR REPLACE FUNCTION {order}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK_CLASS}, TG_RELID::integer);
  NEW.id := nextval('{sequence}');
  PERFORM pg_notify('{channel}', NEW.key);
  RETURN NEW;
END $f$;
DO $d$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger
                 WHERE tgrelid = '{table}'::regclass AND tgname = '{order_trigger}') THEN
    CREATE TRIGGER {order} BEFORE INSERT ON {table}
      FOR EACH ROW EXECUTE FUNCTION {order}();
  END IF;
END $d$;"
        ),
    };
    // Each statement takes no lock when what it makes exists already, so
    // that making what is missing never waits for (or deadlocks with) the
    // writers of a table in use.
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
  {id_column},
  key text NOT NULL,
  event text,
  data text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS {sequence} OWNED BY {table}.id;
DO $d$ BEGIN
  IF to_regclass('{index}') IS NULL THEN
    CREATE INDEX {index} ON {table} (key, id);
  END IF;
END $d$;
-- Per key, the largest id removed: what tells a client that rows it had
-- not read are gone.
CREATE TABLE IF NOT EXISTS {trim} (key text PRIMARY KEY, gone bigint NOT NULL);
CREATE OR REPLACE FUNCTION {forget}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {trim} (key, gone) SELECT key, max(id) FROM {table} GROUP BY key
      ON CONFLICT (key) DO UPDATE SET gone = greatest({trim}.gone, excluded.gone);
  ELSE
    INSERT INTO {trim} (key, gone) SELECT key, max(id) FROM removed GROUP BY key
      ON CONFLICT (key) DO UPDATE SET gone = greatest({trim}.gone, excluded.gone);
  END IF;
  RETURN NULL;
END $f$;
DO $d$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger
                 WHERE tgrelid = '{table}'::regclass AND tgname = '{forget_trigger}') THEN
    CREATE TRIGGER {forget} AFTER DELETE ON {table}
      REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION {forget}();
    CREATE TRIGGER \"{forget_trigger}_truncate\" BEFORE TRUNCATE ON {table}
      FOR EACH STATEMENT EXECUTE FUNCTION {forget}();
  END IF;
END $d$;{order_sql}
"
    )
}

/// [`schema`] in one transaction that waits for any other gateway (or test)
/// making a table at the same moment, so that two never race.
pub fn create(table: &str, channel: &str, ordering: Ordering) -> String {
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, 0);\n{}\nCOMMIT;",
        schema(table, channel, ordering)
    )
}

/// A row id, ordered as the sequence gives them (`0`: before every row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowId(i64);

impl RowId {
    fn parse(id: &str) -> Option<Self> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse().ok().map(Self)
    }
}

impl fmt::Display for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection for queries, with its statements prepared.
struct Session {
    client: Client,
    bounds: Statement,
    history: Statement,
    page: Statement,
    gone: Statement,
    insert: Statement,
    notify: Statement,
    retain: Statement,
}

/// The connection for queries, made on first use and again when lost.
struct Connection {
    place: Place,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl Connection {
    fn new(place: Place) -> Self {
        Self {
            place,
            session: tokio::sync::Mutex::new(None),
        }
    }

    fn config(&self) -> Result<tokio_postgres::Config, BackendError> {
        let mut config = tokio_postgres::Config::from_str(&self.place.url).map_err(|e| {
            BackendError::new(
                ErrorKind::Internal,
                format!("the PostgreSQL URL is invalid: {}", describe(&e)),
            )
        })?;
        config
            .connect_timeout(self.place.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("gateway");
        Ok(config)
    }

    /// A new connection within `connect_timeout`: its client, and the
    /// connection itself, which its owner polls.
    async fn open(
        &self,
    ) -> Result<(Client, tokio_postgres::Connection<Socket, NoTlsStream>), BackendError> {
        let config = self.config()?;
        tokio::time::timeout(self.place.connect_timeout, config.connect(NoTls))
            .await
            .map_err(|_| {
                BackendError::new(
                    ErrorKind::Unavailable,
                    "PostgreSQL: no connection within connect_timeout",
                )
            })?
            .map_err(|e| unavailable(&e))
    }

    /// A connection, its driver spawned; it closes when the client drops.
    async fn connect(&self) -> Result<Client, BackendError> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %describe(&error), "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// The session, connected (the schema made or checked, the statements
    /// prepared) when there is none or it was lost.
    async fn session(&self) -> Result<Arc<Session>, BackendError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref().filter(|s| !s.client.is_closed()) {
            return Ok(Arc::clone(session));
        }
        *slot = None;
        let client = self.connect().await?;
        self.prepare_table(&client).await?;
        let session = Arc::new(self.prepare(client).await.map_err(|e| unavailable(&e))?);
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Makes the table when `create` is set (one gateway at a time), then
    /// checks it has what the settings promise.
    async fn prepare_table(&self, client: &Client) -> Result<(), BackendError> {
        let place = &self.place;
        if place.create {
            let sql = create(&place.table, &place.channel, place.ordering);
            client.batch_execute(&sql).await.map_err(|e| {
                BackendError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "PostgreSQL: cannot create table {:?} (create = true): {}",
                        place.table,
                        describe(&e)
                    ),
                )
            })?;
        }
        let names = place.names();
        let row = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL,
                    (SELECT coalesce(array_agg(tgname::text), '{}') FROM pg_trigger
                     WHERE tgrelid = to_regclass($1) AND tgenabled <> 'D')",
                &[&names.table, &names.trim],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let (table, trim, triggers): (bool, bool, Vec<String>) =
            (row.get(0), row.get(1), row.get(2));
        let has = |name: &str| triggers.iter().any(|t| t == name);
        let missing = if !table || !trim {
            Some(format!(
                "table {} or {} does not exist",
                names.table, names.trim
            ))
        } else if !has(&names.forget_trigger) {
            Some(format!(
                "trigger {} is missing or disabled",
                names.forget_trigger
            ))
        } else if place.ordering == Ordering::Commit && !has(&names.order_trigger) {
            Some(format!(
                "trigger {} (ids in commit order) is missing or disabled; \
                 ordering = \"unchecked\" reads the table without it, losing that guarantee",
                names.order_trigger
            ))
        } else {
            None
        };
        match missing {
            None => Ok(()),
            Some(what) => {
                tracing::error!(table = %place.table, "PostgreSQL: {what}");
                Err(BackendError::new(
                    ErrorKind::Unavailable,
                    format!("PostgreSQL: {what}; create = true makes it, or run the README's SQL"),
                ))
            }
        }
    }

    async fn prepare(&self, client: Client) -> Result<Session, tokio_postgres::Error> {
        let Names { table, trim, .. } = self.place.names();
        let columns = "id, event::text, data::text";
        let key = &[Type::TEXT];
        let key_id_count = &[Type::TEXT, Type::INT8, Type::INT8];
        let sql = [
            format!(
                "SELECT (SELECT max(id) FROM {table} WHERE key = $1),
                        (SELECT gone FROM {trim} WHERE key = $1),
                        to_regclass('{table}')::oid::bigint"
            ),
            format!(
                "SELECT {columns} FROM {table} WHERE key = $1 AND id <= $2
                 ORDER BY id DESC LIMIT $3"
            ),
            format!(
                "SELECT {columns} FROM {table} WHERE key = $1 AND id > $2
                 ORDER BY id LIMIT $3"
            ),
            format!("SELECT gone FROM {trim} WHERE key = $1"),
            format!("INSERT INTO {table} (key, event, data) VALUES ($1, $2, $3) RETURNING id"),
            "SELECT pg_notify($1, $2)".to_string(),
            format!(
                "DELETE FROM {table} WHERE key = $1 AND id <= (SELECT id FROM {table}
                 WHERE key = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)"
            ),
        ];
        let types: [&[Type]; 7] = [
            key,
            key_id_count,
            key_id_count,
            key,
            &[Type::TEXT, Type::TEXT, Type::TEXT],
            &[Type::TEXT, Type::TEXT],
            &[Type::TEXT, Type::INT8],
        ];
        let mut prepared = Vec::with_capacity(sql.len());
        for (sql, types) in sql.iter().zip(types) {
            prepared.push(client.prepare_typed(sql, types).await?);
        }
        let [bounds, history, page, gone, insert, notify, retain] =
            <[Statement; 7]>::try_from(prepared)
                .unwrap_or_else(|_| unreachable!("seven statements"));
        Ok(Session {
            client,
            bounds,
            history,
            page,
            gone,
            insert,
            notify,
            retain,
        })
    }

    /// Runs `query` on the session. A connection PostgreSQL dropped (a
    /// restart while the gateway was idle) fails it; the query then goes
    /// once more on a new connection, so that the first request after a
    /// restart is answered.
    async fn run<T, F>(&self, query: impl Fn(Arc<Session>) -> F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let session = self.session().await?;
        match query(Arc::clone(&session)).await {
            Err(e) if e.is_closed() || session.client.is_closed() => {
                tracing::debug!(error = %describe(&e), "PostgreSQL dropped the connection; sending again");
                query(self.session().await?)
                    .await
                    .map_err(|e| unavailable(&e))
            }
            done => done.map_err(|e| unavailable(&e)),
        }
    }
}

/// An error's message, PostgreSQL's own when it has one.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => db.message().to_string(),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

fn unavailable(e: &tokio_postgres::Error) -> BackendError {
    BackendError::new(
        ErrorKind::Unavailable,
        format!("PostgreSQL: {}", describe(e)),
    )
}

/// The one listening connection of a backend: it wakes the reader of the
/// key a notification names, and counts its connections, so that readers
/// check their keys again after a reconnection.
struct Listener {
    /// The reader of each key read now.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// How many times the listener connected.
    connections: watch::Sender<u64>,
}

/// A reader's place in the listener, given up when the reader stops.
struct Registration<'a> {
    listener: &'a Listener,
    key: String,
    notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut wakers = self
            .listener
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if wakers
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            wakers.remove(&self.key);
        }
    }
}

impl Listener {
    fn register(&self, key: &str) -> Registration<'_> {
        let notify = Arc::new(Notify::new());
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), Arc::clone(&notify));
        Registration {
            listener: self,
            key: key.to_string(),
            notify,
        }
    }

    fn wake(&self, key: &str) {
        let wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notify) = wakers.get(key) {
            notify.notify_one();
        }
    }

    /// Listens for as long as it runs, connecting again (with backoff)
    /// whenever the connection is lost.
    async fn run(self: Arc<Self>, connection: Arc<Connection>, stats: Arc<BackendStats>) {
        let channel = connection.place.channel.clone();
        let mut backoff = MIN_BACKOFF;
        let mut connected_before = false;
        loop {
            match Self::listen(&connection, &channel).await {
                Ok((client, mut notifications)) => {
                    if connected_before {
                        stats.reconnected();
                    }
                    connected_before = true;
                    backoff = MIN_BACKOFF;
                    self.connections.send_modify(|n| *n += 1);
                    while let Some(key) = notifications.recv().await {
                        self.wake(&key);
                    }
                    drop(client);
                    tracing::warn!(%channel, "PostgreSQL listener lost its connection; reconnecting");
                }
                Err(error) => {
                    if connected_before {
                        stats.reconnect_failed();
                    }
                    tracing::warn!(%channel, error = %error.message, "PostgreSQL listener cannot connect; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A connection listening on `channel`, and the keys its notifications
    /// name (the channel closes with the connection).
    async fn listen(
        connection: &Connection,
        channel: &str,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>), BackendError> {
        let (client, mut raw) = connection.open().await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| raw.poll_message(cx));
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if sender.send(n.payload().to_string()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(error = %describe(&error), "PostgreSQL listener connection closed");
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(|e| unavailable(&e))?;
        Ok((client, receiver))
    }
}

/// PostgreSQL as a bus: the table, the key template, the connections.
pub struct Postgres {
    connection: Arc<Connection>,
    listener: Arc<Listener>,
    /// The listener's task, started by the first reader.
    listening: OnceLock<tokio::task::AbortHandle>,
    template: Template,
    allow: Option<Glob>,
    poll_interval: Duration,
    stats: Arc<BackendStats>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("table", &self.connection.place.table)
            .field("key", &self.template)
            .finish_non_exhaustive()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(task) = self.listening.get() {
            task.abort();
        }
    }
}

impl Postgres {
    /// The broker for its settings (see [`PostgresConfig::validate`]).
    pub fn new(config: &PostgresConfig) -> Self {
        Self::with(
            config.place(),
            &config.key,
            config.allow.as_deref(),
            config.poll_interval,
        )
    }

    fn with(place: Place, template: &str, allow: Option<&str>, poll_interval: Duration) -> Self {
        Self {
            connection: Arc::new(Connection::new(place)),
            listener: Arc::new(Listener {
                wakers: Mutex::new(HashMap::new()),
                connections: watch::Sender::new(0),
            }),
            listening: OnceLock::new(),
            // Validation refused a template that does not parse.
            template: Template::parse(template).unwrap_or_default(),
            allow: allow.map(Glob::new),
            poll_interval,
            stats: Arc::new(BackendStats::new("postgres")),
        }
    }

    fn start_listening(&self) {
        self.listening.get_or_init(|| {
            let listener = Arc::clone(&self.listener);
            let connection = Arc::clone(&self.connection);
            let stats = Arc::clone(&self.stats);
            tokio::spawn(listener.run(connection, stats)).abort_handle()
        });
    }

    /// An entry as clients get it: the event, or why there is none.
    fn entry(row: &Row) -> Entry<RowId> {
        let position = RowId(row.get(0));
        let event = (|| {
            let name: Option<String> = row
                .try_get(1)
                .map_err(|_| "its event is not UTF-8 text".to_string())?;
            let data: Option<String> = row
                .try_get(2)
                .map_err(|_| "its data is not UTF-8 text".to_string())?;
            let data = data.ok_or("its data is NULL")?;
            let data = Data::parse_json(&data).unwrap_or_else(|_| Data::text(data));
            let mut event = Event::new(data).with_id(position.to_string());
            if let Some(name) = name {
                if !is_event_name(&name) {
                    return Err(format!(
                        "its event {} is not a name (one line, 1 to 256 bytes)",
                        crate::Shown(&name)
                    ));
                }
                event = event.with_name(name);
            }
            Ok(event)
        })();
        Entry { position, event }
    }

    /// At most `count` rows of the key after `after`, and whether more
    /// follow.
    async fn rows(
        &self,
        key: &str,
        after: RowId,
        count: usize,
    ) -> Result<(Vec<Entry<RowId>>, bool), BackendError> {
        let limit = count as i64 + 1;
        let rows = self
            .connection
            .run(|s| async move { s.client.query(&s.page, &[&key, &after.0, &limit]).await })
            .await?;
        let more = rows.len() > count;
        Ok((rows.iter().take(count).map(Self::entry).collect(), more))
    }

    /// Reads the key's rows after the feed's last into it, page by page,
    /// each page followed by the key's bounds (read after the rows, so that
    /// a removal between the two is announced): rows removed before the
    /// reader read them are a gap, and a table made again (another oid, or
    /// its end behind the reader) makes the reader start over.
    async fn read_on(&self, key: &str, feed: &mut Feed<RowId>) -> Result<(), BackendError> {
        loop {
            let before = feed.last();
            let (entries, more) = self.rows(key, before, Self::PAGE).await?;
            let mut bounds = self.bounds(key).await?;
            // Rows read are held, even when deleted since.
            bounds.end = bounds.end.max(entries.last().map(|e| e.position));
            feed.resync(&bounds);
            if feed.last() != before {
                // Started over: these rows were read after the old position.
                continue;
            }
            for entry in entries {
                feed.send(entry);
            }
            if !more {
                return Ok(());
            }
        }
    }
}

impl Broker for Postgres {
    type Position = RowId;
    type Pager = ();
    const ID: &'static str = "a row id (a decimal number)";

    fn parse(&self, id: &str) -> Option<RowId> {
        RowId::parse(id)
    }

    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError> {
        resolve(&self.template, self.allow.as_ref(), ctx)
    }

    async fn bounds(&self, key: &str) -> Result<Bounds<RowId>, BackendError> {
        let row = self
            .connection
            .run(|s| async move { s.client.query_one(&s.bounds, &[&key]).await })
            .await?;
        let (last, gone, table): (Option<i64>, Option<i64>, Option<i64>) =
            (row.get(0), row.get(1), row.get(2));
        let (last, gone) = (last.map(RowId), gone.map(RowId));
        Ok(Bounds {
            end: last.max(gone),
            gone,
            // The table's oid: a table made again numbers anew.
            epoch: table.map_or(0, |oid| oid as u64),
        })
    }

    async fn history(
        &self,
        key: &str,
        n: usize,
        end: RowId,
    ) -> Result<Vec<Entry<RowId>>, BackendError> {
        let n = n as i64;
        let rows = self
            .connection
            .run(|s| async move { s.client.query(&s.history, &[&key, &end.0, &n]).await })
            .await?;
        Ok(rows.iter().rev().map(Self::entry).collect())
    }

    async fn page(
        &self,
        key: &str,
        _: &mut (),
        after: RowId,
        count: usize,
    ) -> Result<Page<RowId>, BackendError> {
        let (entries, more) = self.rows(key, after, count).await?;
        // After the rows: a removal between the two is announced.
        let gone = self
            .connection
            .run(|s| async move { s.client.query_opt(&s.gone, &[&key]).await })
            .await?
            .map(|row| RowId(row.get(0)));
        Ok(Page {
            entries,
            more,
            gone,
        })
    }

    /// Reads on each notification naming the key, every `poll_interval`,
    /// and after the listener connected (notifications may have been
    /// missed meanwhile); every read checks the key's bounds. A failed read
    /// is tried again with backoff.
    async fn follow(&self, key: &str, mut feed: Feed<RowId>) {
        self.start_listening();
        let registration = self.listener.register(key);
        let mut connections = self.listener.connections.subscribe();
        connections.mark_unchanged();
        let mut backoff = MIN_BACKOFF;
        loop {
            if let Err(error) = self.read_on(key, &mut feed).await {
                tracing::warn!(%key, error = %error.message, "PostgreSQL reader cannot read; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            backoff = MIN_BACKOFF;
            tokio::select! {
                () = registration.notify.notified() => {}
                // The listener (the sender) lives as long as the broker.
                Ok(()) = connections.changed() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    fn stats(&self) -> &BackendStats {
        &self.stats
    }
}

/// The key a request names: the template filled, checked against `allow`.
fn resolve(
    template: &Template,
    allow: Option<&Glob>,
    ctx: &RequestContext,
) -> Result<String, BackendError> {
    let key = template.resolve(ctx, |name, value| {
        if value.contains('\0') {
            return Err(BackendError::bad_request(format!(
                "the path parameter {{{name}}} holds a NUL character"
            )));
        }
        Ok(())
    })?;
    if key.len() > MAX_KEY {
        return Err(BackendError::bad_request(format!(
            "the key is longer than {MAX_KEY} bytes"
        )));
    }
    key::allowed(key, allow)
}

/// `[…target]` of a publish route: the table events are inserted into.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresTarget {
    /// The server. Default: `postgres://postgres@127.0.0.1:5432/postgres`.
    pub url: String,
    /// The table. Default: `events`.
    pub table: String,
    /// The channel to notify on (only without the ordering trigger, which
    /// notifies itself). Default: the table's name.
    pub channel: Option<String>,
    /// The key, with `{param}` placeholders from the publish route's path.
    /// Required.
    pub key: String,
    /// A pattern the resolved key must match; required when `key` has
    /// placeholders.
    pub allow: Option<String>,
    /// Make the table when missing. Default: `true`.
    pub create: bool,
    /// As the backend's. Default: `commit`.
    pub ordering: Ordering,
    /// Keep about this many rows per key: after about one insert in 64, the
    /// key's older rows are deleted (recorded as removed, so readers that
    /// had not read them are told). Default: `100000`.
    pub max_len: usize,
    /// How long connecting may take. Default: `2s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for PostgresTarget {
    fn default() -> Self {
        let reader = PostgresConfig::default();
        Self {
            url: reader.url,
            table: reader.table,
            channel: None,
            key: String::new(),
            allow: None,
            create: reader.create,
            ordering: reader.ordering,
            max_len: 100_000,
            connect_timeout: reader.connect_timeout,
        }
    }
}

impl PostgresTarget {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        validate_place(&self.place(), self.channel.as_deref(), &mut problems);
        key::validate_glob_template("key", &self.key, self.allow.as_deref(), &mut problems);
        if self.max_len == 0 || self.max_len > i64::MAX as usize {
            problems.push(Problem::new("max_len", "at least 1"));
        }
        problems
    }

    fn place(&self) -> Place {
        Place::new(
            &self.url,
            &self.table,
            self.channel.as_deref(),
            self.create,
            self.ordering,
            self.connect_timeout,
        )
    }
}

/// Inserts events into a table.
pub struct PostgresPublisher {
    connection: Connection,
    template: Template,
    allow: Option<Glob>,
    max_len: i64,
}

impl fmt::Debug for PostgresPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresPublisher")
            .field("table", &self.connection.place.table)
            .field("key", &self.template)
            .finish_non_exhaustive()
    }
}

impl PostgresPublisher {
    /// The publisher for its settings; it connects on first use.
    pub fn new(target: &PostgresTarget) -> Self {
        Self {
            connection: Connection::new(target.place()),
            template: Template::parse(&target.key).unwrap_or_default(),
            allow: target.allow.as_deref().map(Glob::new),
            max_len: i64::try_from(target.max_len).unwrap_or(i64::MAX),
        }
    }
}

/// Whether the insert that got `id` also trims its key: about one in 64,
/// spread by a multiplicative hash so that no pattern of keys escapes it.
fn trims_after(id: i64) -> bool {
    (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58 == 0
}

#[async_trait]
impl Publisher for PostgresPublisher {
    async fn publish(
        &self,
        ctx: &RequestContext,
        publication: &Publication,
    ) -> Result<String, BackendError> {
        let key = resolve(&self.template, self.allow.as_ref(), ctx)?;
        let (key, name, data) = (&key, &publication.name, publication.data.as_str());
        let id: i64 = self
            .connection
            .run(|s| async move {
                let row = s.client.query_one(&s.insert, &[key, name, &data]).await?;
                Ok(row.get(0))
            })
            .await?;
        let place = &self.connection.place;
        if place.ordering == Ordering::Unchecked {
            let channel = &place.channel;
            self.connection
                .run(|s| async move { s.client.execute(&s.notify, &[channel, key]).await })
                .await?;
        }
        if trims_after(id) {
            let keep = self.max_len;
            self.connection
                .run(|s| async move { s.client.execute(&s.retain, &[key, &keep]).await })
                .await?;
        }
        Ok(id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(RowId::parse("9") < RowId::parse("10"));
        assert_eq!(RowId::parse("0"), Some(RowId(0)));
        for bad in ["", "-1", "+1", "1.0", "x", "99999999999999999999"] {
            assert_eq!(RowId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_problem_at_once_naming_its_key() {
        let config = PostgresConfig {
            key: "rooms:{room}".into(),
            ..PostgresConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["allow"]);
        let config = PostgresConfig {
            url: "nope://".into(),
            table: "Events; DROP TABLE x".into(),
            channel: Some("a-b".into()),
            key: String::new(),
            connect_timeout: Duration::ZERO,
            poll_interval: Duration::ZERO,
            buffer: 0,
            ..PostgresConfig::default()
        };
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "url",
                "table",
                "channel",
                "connect_timeout",
                "key",
                "poll_interval",
                "buffer"
            ]
        );
        let target = PostgresTarget {
            table: "x".repeat(51),
            key: "k".into(),
            max_len: 0,
            ..PostgresTarget::default()
        };
        let keys: Vec<_> = target.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["table", "max_len"]);
    }

    #[test]
    fn identifiers_read_the_same_quoted_or_not() {
        for good in ["events", "_e1", "room_events"] {
            assert!(identifier(good, MAX_TABLE).is_ok(), "{good}");
        }
        for bad in ["", "Events", "1e", "a-b", "a\"b", "é"] {
            assert!(identifier(bad, MAX_TABLE).is_err(), "{bad}");
        }
    }

    #[test]
    fn about_one_insert_in_64_trims() {
        let trims = (1..64_001).filter(|id| trims_after(*id)).count();
        assert!((800..1200).contains(&trims), "{trims}");
        // Two keys taking turns both get trimmed.
        assert!((1..2_000).step_by(2).any(trims_after));
        assert!((2..2_000).step_by(2).any(trims_after));
    }

    #[test]
    fn the_schema_orders_only_when_asked() {
        let commit = schema("ev", "chan", Ordering::Commit);
        assert!(commit.contains("pg_advisory_xact_lock"), "{commit}");
        assert!(commit.contains("pg_notify('chan', NEW.key)"), "{commit}");
        assert!(commit.contains("id bigint PRIMARY KEY"), "{commit}");
        let unchecked = schema("ev", "chan", Ordering::Unchecked);
        assert!(!unchecked.contains("pg_advisory_xact_lock"), "{unchecked}");
        assert!(
            unchecked.contains("id bigserial PRIMARY KEY"),
            "{unchecked}"
        );
        assert!(unchecked.contains("\"ev_forget\""), "removals recorded");
    }
}

#[cfg(test)]
mod readme {
    /// The README gives the SQL that `create = true` runs, for operators
    /// who make the table themselves: it must be that SQL.
    #[test]
    fn the_readme_gives_the_schema_the_gateway_makes() {
        let readme = include_str!("../../README.md");
        let sql = super::schema("events", "events", super::Ordering::Commit);
        if std::env::var_os("PRINT_SCHEMA").is_some() {
            println!("{sql}");
        }
        assert!(readme.contains(&sql), "README.md lacks:\n{sql}");
    }
}
