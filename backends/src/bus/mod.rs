//! Bus backends: a broker's stream per key, shared by every client of the
//! key, written once for every broker.
//!
//! A broker ([`redis`](crate::redis), [`nats`](crate::nats), …) implements
//! [`Broker`]: its position type, how a request names a key, the key's
//! bounds, its last entries, one page after a position, and a follow loop.
//! [`Bus`] is the [`Backend`] on top of it, the same for every broker:
//!
//! - **One reader per key** ([`hub`]): the first client of a key starts the
//!   broker's follow loop, which feeds a broadcast buffer of `buffer`
//!   entries that every client of the key reads; the loop stops when the
//!   last client leaves. At most `max_keys` keys at once (503 beyond).
//! - **A client** (`subscriber.rs`) gets, in order: a notice if there is one,
//!   its history or a page of catch-up, more pages, then the live buffer,
//!   entries it already has dropped by position. A client that falls more
//!   than `buffer` entries behind catches up from the broker page by page
//!   (holding one page), up to `max_catchup` entries; past that its stream
//!   ends with `lagged` naming the id to resume from.
//! - **Loss is never silent** ([`notice`]): entries removed before a client
//!   read them (trimmed, expired, deleted, lost in a restart without
//!   persistence), a resume id the bus no longer knows (the stream made
//!   again, numbering anew: a notice and the stream from the start, never a
//!   400), an entry that cannot be decoded: each is an error event with the
//!   `resume_id` where the stream goes on. A reader that reconnects checks
//!   the key's bounds again ([`Feed::resync`]) and tells every client what
//!   the bus lost meanwhile.
//! - **Keys** ([`key`]): a template filled from path parameters in one pass,
//!   and an allow pattern per key syntax.
//! - **Limits** ([`limits`]): `history`, `buffer`, `max_catchup`,
//!   `max_keys`, the same keys and checks for every broker.
//!
//! Adding a broker: one module implementing [`Broker`] (with its config and
//! `validate`), one [`BackendConfig`](crate::BackendConfig) arm that builds
//! `Bus::new(broker, limits)`, and one line in `tests/bus.rs` that runs the
//! conformance suite on an engine for it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;

use crate::durable::JobLog;
use crate::publish::{Publication, Publisher};
use crate::{Backend, BackendError, BackendStats, Event, EventStream, RequestContext};

pub mod hub;
pub mod key;
pub mod limits;
#[cfg(test)]
mod memory;
pub mod notice;
mod registry;
mod subscriber;

pub use hub::Feed;
pub use limits::Limits;

use hub::Hub;
use subscriber::Subscriber;

/// Where an entry sits in a key's stream (Redis `ms-seq`, a NATS stream
/// sequence, a table's bigserial id), ordered as the broker orders entries.
/// `Default` is the origin, before every entry the broker can make (`0-0`,
/// `0`): resuming from it asks for whatever the bus holds.
pub trait Position:
    Copy + Ord + Default + fmt::Display + fmt::Debug + Send + Sync + 'static
{
}

impl<P: Copy + Ord + Default + fmt::Display + fmt::Debug + Send + Sync + 'static> Position for P {}

/// One entry of a key: its position and the event it makes, or why it makes
/// none (not UTF-8, a field missing): the client then gets an error event
/// naming the entry, never an empty event.
#[derive(Clone, Debug)]
pub struct Entry<P> {
    /// Where it is.
    pub position: P,
    /// The event (its id set), or why the entry cannot be one.
    pub event: Result<Event, String>,
}

/// What a key holds now, as far as telling clients what they missed needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds<P> {
    /// The last position the bus gave out on the key (`None`: the key holds
    /// nothing and never did, or it does not exist). A client past it has
    /// an id the bus no longer knows.
    pub end: Option<P>,
    /// The latest position the key no longer holds: entries up to it were
    /// removed (trimmed, expired, deleted), lost, or never written. `None`
    /// when the bus holds all it wrote. A client before it missed entries.
    pub gone: Option<P>,
    /// Changes when the key's numbering starts over (NATS: the stream's
    /// creation time); `0` when the broker cannot tell (Redis, whose ids are
    /// times and so never start over).
    pub epoch: u64,
}

/// One page of a key after a position.
#[derive(Clone, Debug)]
pub struct Page<P> {
    /// Entries after the position asked for, oldest first, at most the
    /// count asked for.
    pub entries: Vec<Entry<P>>,
    /// Whether the key has more after them.
    pub more: bool,
    /// [`Bounds::gone`], read after the entries (so that a removal between
    /// the two is announced rather than missed).
    pub gone: Option<P>,
}

/// A message broker as a bus backend sees it. The shared machinery (one
/// reader per key, clients, catch-up, notices, limits) is [`Bus`]'s; a
/// broker only reads.
///
/// Every method but [`follow`](Self::follow) is called while a request or a
/// client waits: it fails with a [`BackendError`] (503 when the broker is
/// away, 404 when the key cannot exist), answered as the request's status
/// before the stream starts and as an error event after.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Where an entry sits.
    type Position: Position;
    /// A client's state while it pages through a catch-up, made (by
    /// `Default`) when the catch-up starts and dropped when it ends: `()`
    /// for brokers whose pages are stateless queries (Redis `XRANGE`, SQL),
    /// a consumer for those that read through one (NATS).
    type Pager: Default + Send + 'static;
    /// Entries asked for per page.
    const PAGE: usize = 100;
    /// What the broker's ids look like, for the 400 a malformed one gets
    /// (`"a Redis stream id (ms-seq)"`).
    const ID: &'static str;

    /// The position a `Last-Event-ID` names, `None` when it is not one of
    /// this broker's ids (a 400).
    fn parse(&self, id: &str) -> Option<Self::Position>;

    /// The key a request reads (its path parameters filled in, checked
    /// against the allow pattern: 400 for a bad parameter, 404 for a key
    /// outside the pattern).
    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError>;

    /// The key's [`Bounds`] now. Also what tells a request early that the
    /// key cannot be read (no such stream: 503; not held there: 404).
    fn bounds(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Bounds<Self::Position>, BackendError>> + Send;

    /// The last `n` entries up to `end` (included), oldest first.
    fn history(
        &self,
        key: &str,
        n: usize,
        end: Self::Position,
    ) -> impl Future<Output = Result<Vec<Entry<Self::Position>>, BackendError>> + Send;

    /// At most `count` entries after `after`, with whether more follow and
    /// what the key no longer holds.
    fn page(
        &self,
        key: &str,
        pager: &mut Self::Pager,
        after: Self::Position,
        count: usize,
    ) -> impl Future<Output = Result<Page<Self::Position>, BackendError>> + Send;

    /// Reads the key's new entries into `feed`, from after
    /// [`feed.last()`](Feed::last), for as long as it is polled: the hub
    /// drops it when the key's last client leaves. It never returns on its
    /// own: a lost connection is made again (with backoff), and after that
    /// the loop passes the key's bounds to [`Feed::resync`] before reading
    /// on from `feed.last()`.
    fn follow(&self, key: &str, feed: Feed<Self::Position>) -> impl Future<Output = ()> + Send;

    /// What the broker counts (reconnects); the bus adds its clients'
    /// lagging to the same counters.
    fn stats(&self) -> &BackendStats;

    /// Makes `key` and its entries go `after` from now (a durable job's
    /// `retention`), answering whether the broker can: Redis can
    /// (`PEXPIRE`); the others keep entries by their own retention (the
    /// default, `false`).
    fn expire(
        &self,
        key: &str,
        after: std::time::Duration,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        let _ = (key, after);
        async { Ok(false) }
    }
}

/// A bus backend: a broker's keys, each read once and shared by its clients
/// (see the module's documentation).
pub struct Bus<B: Broker> {
    hub: Arc<Hub<B>>,
}

impl<B: Broker> fmt::Debug for Bus<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("broker", self.hub.broker())
            .finish_non_exhaustive()
    }
}

impl<B: Broker> Bus<B> {
    /// The backend reading `broker` within `limits` (validated first, see
    /// [`Limits::validate`]). Nothing connects before the first request.
    pub fn new(broker: B, limits: Limits) -> Self {
        Self {
            hub: Arc::new(Hub::new(broker, limits)),
        }
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        self.hub.broker()
    }

    /// A position from an id a client sent (400 when it is not one).
    fn position(&self, id: &str) -> Result<B::Position, BackendError> {
        self.hub.broker().parse(id).ok_or_else(|| {
            BackendError::bad_request(format!(
                "Last-Event-ID {} is not an id of this stream",
                crate::Shown(id)
            ))
        })
    }

    /// A client of `key` from after `resume` (its history when `None`).
    async fn read(
        &self,
        key: &str,
        resume: Option<B::Position>,
    ) -> Result<EventStream, BackendError> {
        let channel = self.hub.channel(key).await?;
        let mut subscriber = Subscriber::open(Arc::clone(&self.hub), channel, resume).await?;
        // The client's state stays where it is, inside the generator: an
        // `unfold` moved it into each event's future and back out (seven
        // copies per event, the largest cost of a delivery under callgrind).
        Ok(async_stream::stream! {
            while let Some(item) = subscriber.next().await {
                yield item;
            }
        }
        .boxed())
    }
}

#[async_trait]
impl<B: Broker> Backend for Bus<B> {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let key = self.hub.broker().key(ctx)?;
        let resume = match ctx.last_event_id.as_deref() {
            None => None,
            Some(id) => Some(self.position(id)?),
        };
        self.read(&key, resume).await
    }

    fn stats(&self) -> Option<&BackendStats> {
        Some(self.hub.broker().stats())
    }
}

/// Entries a client has fetched and not yet sent.
type Backlog<P> = VecDeque<Entry<P>>;

/// A bus as a durable job's log (see [`crate::durable`]): read through the
/// bus's clients, appended to by its publisher.
pub struct BusLog<B: Broker> {
    bus: Bus<B>,
    publisher: Arc<dyn Publisher>,
}

impl<B: Broker> BusLog<B> {
    /// The log reading through `bus` and appending with `publisher` (the
    /// same broker, key and event fields).
    pub fn new(bus: Bus<B>, publisher: Arc<dyn Publisher>) -> Self {
        Self { bus, publisher }
    }
}

impl<B: Broker> fmt::Debug for BusLog<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusLog").field("bus", &self.bus).finish()
    }
}

#[async_trait]
impl<B: Broker> JobLog for BusLog<B> {
    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError> {
        self.bus.broker().key(ctx)
    }

    async fn first(&self, key: &str) -> Result<Option<Event>, BackendError> {
        let mut pager = B::Pager::default();
        let page = self
            .bus
            .broker()
            .page(key, &mut pager, B::Position::default(), 1)
            .await?;
        Ok(page.entries.into_iter().next().and_then(|e| e.event.ok()))
    }

    async fn read(&self, key: &str, after: Option<&str>) -> Result<EventStream, BackendError> {
        let after = match after {
            Some(id) => self.bus.position(id)?,
            None => B::Position::default(),
        };
        self.bus.read(key, Some(after)).await
    }

    async fn append(
        &self,
        ctx: &RequestContext,
        publication: &Publication,
    ) -> Result<String, BackendError> {
        self.publisher.publish(ctx, publication).await
    }

    async fn expire(&self, key: &str, after: std::time::Duration) -> Result<bool, BackendError> {
        self.bus.broker().expire(key, after).await
    }

    fn stats(&self) -> &BackendStats {
        self.bus.broker().stats()
    }
}
