//! One open stream: the response body that turns merged backend events into
//! bytes, and adds what the backends do not know about.
//!
//! - Events are written as soon as they come; whatever is ready at once is
//!   sent in one chunk (at most [`BATCH_BYTES`]), nothing waits for more;
//!   unless the route has a `write_delay`: then the first event after a
//!   write waits up to that long (never past the next heartbeat), and what
//!   comes meanwhile is read only then, and goes with it.
//! - A heartbeat goes out after `heartbeat` of silence.
//! - After `max_lifetime`, after `max_idle` without an event, on shutdown,
//!   when the client's token expires, or before its body passes its byte
//!   budget (a Lambda response's), the stream ends with a `gateway.close`
//!   event carrying the last id.
//! - A backend failure becomes a `gateway.error` event; with the `abort`
//!   policy the stream then closes.
//! - Dropping the session (the client went away) drops every backend stream,
//!   which stops their work, and frees the stream's slot.
//!
//! One timer serves the deadlines: it is armed at the earliest, and
//! since activity only moves deadlines later, a timer that fires early is
//! simply re-armed. Idle streams cost no timer work until a deadline comes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::clients::Slot;
use crate::config::ErrorPolicy;
use crate::cursor::Cursor;
use crate::encode::{CloseReason, Encoder, error_event};
use crate::fanin::Merged;
use crate::metrics::StreamMetrics;
use crate::negotiate::Format;
use crate::route::Route;

/// Largest chunk assembled from events that are ready at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Room a byte budget keeps for the final event, besides its id (written at
/// most four times over, escaped: see [`Session::fits`]).
const CLOSE_RESERVE: u64 = 512;

/// How a stream ended, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Every backend ended.
    Complete,
    /// The gateway closed it.
    Closed(CloseReason),
}

/// What one poll of a session sends. An event shared by a key's clients
/// (already encoded, see [`Encoder::shared`]) is sent as those very bytes
/// when it is all that is ready; anything more is copied into a buffer of
/// the stream's own.
#[derive(Debug, Default)]
enum Chunk {
    #[default]
    Empty,
    Shared(Bytes),
    Owned(BytesMut),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::Shared(bytes) => bytes.len(),
            Self::Owned(buf) => buf.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stream's own buffer, holding what the chunk held.
    fn buf(&mut self) -> &mut BytesMut {
        if !matches!(self, Self::Owned(_)) {
            let buf = match std::mem::take(self) {
                Self::Shared(bytes) => BytesMut::from(&bytes[..]),
                _ => BytesMut::new(),
            };
            *self = Self::Owned(buf);
        }
        match self {
            Self::Owned(buf) => buf,
            _ => unreachable!("made owned above"),
        }
    }

    /// Adds bytes that other streams share.
    fn push(&mut self, bytes: Bytes) {
        match self {
            Self::Empty => *self = Self::Shared(bytes),
            _ => self.buf().extend_from_slice(&bytes),
        }
    }

    /// Takes back what was added after its first `len` bytes.
    fn truncate(&mut self, len: usize) {
        match self {
            Self::Empty => {}
            Self::Shared(_) if len == 0 => *self = Self::Empty,
            Self::Shared(bytes) => bytes.truncate(len),
            Self::Owned(buf) => buf.truncate(len),
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::Shared(bytes) => bytes,
            Self::Owned(buf) => buf.freeze(),
        }
    }
}

/// The response body of one stream.
pub struct Session {
    events: Merged,
    route: Arc<Route>,
    format: Format,
    encoder: Encoder,
    cursor: Cursor,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer holds since its last poll, if it is waiting:
    /// while the same task polls before the deadline, the timer need not
    /// be polled (a registration per delivery) to wake it.
    timer_waker: Option<Waker>,
    shutdown: crate::shutdown::Owned,
    opened: Instant,
    lifetime_ends: Instant,
    /// When the client's credential expires, if it does.
    credential_ends: Option<Instant>,
    last_event: Instant,
    last_write: Instant,
    /// What waits for the route's `write_delay` to pass, and when it goes.
    held: Chunk,
    flush_at: Option<Instant>,
    /// Whether the last read of the backends stopped at a full chunk, not
    /// for want of events: a backlog (a client catching up) is then
    /// written without waiting.
    backlog: bool,
    started: bool,
    backends_done: bool,
    end: Option<End>,
    events_sent: u64,
    bytes_sent: u64,
    /// The most bytes the body may carry, the final event included.
    max_bytes: u64,
    _permit: OwnedSemaphorePermit,
    /// Its client's place among `max_streams_per_client`.
    _client: Slot,
    /// Counts the stream's events, bytes and errors as they go.
    metrics: StreamMetrics,
    /// Mid-stream backend failures, and the last one's backend and kind.
    errors: u64,
    last_error: Option<(Arc<str>, backends::ErrorKind)>,
    /// The request's span: the stream's log lines carry its request id.
    span: tracing::Span,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("route", &self.route.name)
            .field("format", &self.format)
            .field("events_sent", &self.events_sent)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session streaming `events` for `route` for at most `lifetime` (the
    /// route's `max_lifetime`, or less inside a Lambda invocation); it holds
    /// `permit` (its slot among the open streams) until it is dropped, and
    /// counts itself in `metrics`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: Arc<Route>,
        format: Format,
        events: Merged,
        cursor: Cursor,
        lifetime: Duration,
        shutdown: WaitForCancellationFutureOwned,
        permit: OwnedSemaphorePermit,
        metrics: StreamMetrics,
    ) -> Self {
        let now = Instant::now();
        let lifetime_ends = now + lifetime;
        let encoder = route.encoder(format, route.envelope);
        let first_due = now + lifetime.min(route.max_idle).min(route.heartbeat);
        Self {
            events,
            format,
            encoder,
            cursor,
            timer: Box::pin(tokio::time::sleep_until(first_due)),
            timer_waker: None,
            shutdown: crate::shutdown::Owned::owned(shutdown),
            opened: now,
            lifetime_ends,
            credential_ends: None,
            last_event: now,
            last_write: now,
            held: Chunk::Empty,
            flush_at: None,
            backlog: false,
            started: false,
            backends_done: false,
            end: None,
            events_sent: 0,
            bytes_sent: 0,
            max_bytes: u64::MAX,
            _permit: permit,
            _client: Slot::unlimited(),
            metrics,
            errors: 0,
            last_error: None,
            // Made inside the request's span: its log lines carry its id.
            span: tracing::Span::current(),
            route,
        }
    }

    /// Events in the envelope, or not, whatever the route's default (the
    /// request's `?envelope=`).
    pub fn enveloped(mut self, envelope: bool) -> Self {
        self.encoder = self.route.encoder(self.format, envelope);
        self
    }

    /// Holds `slot` (the client's place among its streams) until the
    /// stream ends.
    pub fn holding(mut self, slot: Slot) -> Self {
        self._client = slot;
        self
    }

    /// Ends the stream before its body carries more than `max` bytes (with
    /// the final event), when it has a budget: the event that would not fit
    /// is left for the client's next request, which resumes before it.
    pub fn max_bytes(mut self, max: Option<u64>) -> Self {
        self.max_bytes = max.unwrap_or(u64::MAX);
        self
    }

    /// Whether `pending` more bytes, then the final event with the current
    /// id, stay within the byte budget. The final event carries the id at
    /// most four times (its SSE `id:` or envelope `id`, its data), each at
    /// most twice as long escaped in JSON.
    fn fits(&self, pending: usize) -> bool {
        let id = self.cursor.current().map_or(0, str::len) as u64;
        self.bytes_sent
            .saturating_add(pending as u64)
            .saturating_add(CLOSE_RESERVE + 8 * id)
            <= self.max_bytes
    }

    /// Ends the stream `after` from now, when the client's credential
    /// expires (`credential_expired`); `None` for one that does not.
    pub fn credential_expires(mut self, after: Option<Duration>) -> Self {
        self.credential_ends = after.map(|after| self.opened + after);
        self
    }

    /// Whether the client's credential has expired.
    fn credential_expired(&self, now: Instant) -> bool {
        self.credential_ends.is_some_and(|at| now >= at)
    }

    fn next_deadline(&self) -> Instant {
        let due = self
            .credential_ends
            .unwrap_or(self.lifetime_ends)
            .min(self.lifetime_ends)
            .min(self.last_event + self.route.max_idle)
            .min(self.last_write + self.route.heartbeat);
        self.flush_at.map_or(due, |at| due.min(at))
    }

    /// Whether `buf` waits for the route's `write_delay` (moved to `held`):
    /// only once the stream has started, while it goes on, and while the
    /// chunk has room. It waits from its first event, and never past the
    /// next heartbeat.
    fn hold(&mut self, buf: &mut Chunk, now: Instant) -> bool {
        let delay = self.route.write_delay;
        if delay.is_zero()
            || self.backlog
            || self.bytes_sent == 0
            || self.end.is_some()
            || self.backends_done
            || buf.len() >= BATCH_BYTES
        {
            return false;
        }
        let heartbeat = self.last_write + self.route.heartbeat;
        let at = *self.flush_at.get_or_insert((now + delay).min(heartbeat));
        if now >= at {
            return false;
        }
        self.held = std::mem::take(buf);
        true
    }

    /// Moves every event that is ready into `buf` (only the first, when
    /// `one`); `now` is the poll's time (events ready together arrive
    /// together: one clock read for all).
    fn drain(&mut self, cx: &mut Context<'_>, buf: &mut Chunk, now: Instant, one: bool) {
        // The events counted per run of one backend's (its index, its
        // count): one atomic add for the events of a poll, not one per event.
        let mut run = (0, 0);
        while buf.len() < BATCH_BYTES {
            match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Ready(Some((index, Ok(mut event)))) => {
                    // Only an envelope writes the source: stamped for it
                    // alone (two reference counts per event otherwise).
                    if self.encoder.names_source() {
                        event.source = Arc::clone(&self.route.sources[index]);
                    }
                    // An empty id would reset a browser's last id: it is none.
                    let id = event.id.as_ref().filter(|id| !id.is_empty());
                    if !self.write(buf, index, id, &event) {
                        break;
                    }
                    self.events_sent += 1;
                    if run.0 != index && run.1 > 0 {
                        self.metrics.events(run.0, run.1);
                        run.1 = 0;
                    }
                    run = (index, run.1 + 1);
                    self.last_event = now;
                }
                Poll::Ready(Some((index, Err(error)))) => {
                    let source = Arc::clone(&self.route.sources[index]);
                    self.metrics.backend_error(index, error.kind);
                    self.errors += 1;
                    self.last_error = Some((Arc::clone(&source), error.kind));
                    tracing::warn!(route = %self.route.name, backend = %source, %error, "Backend failed mid-stream");
                    // Where the client stands after it (a bus's notice): the
                    // route's id for it, in the event and as its SSE id.
                    let resume: Option<Arc<str>> = error
                        .resume_id
                        .as_deref()
                        .filter(|id| !id.is_empty())
                        .map(Arc::from);
                    let resume_id = resume.as_ref().map(|id| self.cursor.peek(index, id));
                    let event = error_event(&source, &error, resume_id.as_deref());
                    if !self.write(buf, index, resume.as_ref(), &event) {
                        break;
                    }
                    if self.route.on_error == ErrorPolicy::Abort {
                        self.close(buf, CloseReason::Error);
                        break;
                    }
                }
                Poll::Ready(None) => {
                    self.backends_done = true;
                    break;
                }
                Poll::Pending => break,
            }
            if one {
                break;
            }
        }
        self.backlog = buf.len() >= BATCH_BYTES;
        if run.1 > 0 {
            self.metrics.events(run.0, run.1);
        }
    }

    /// Writes `event` from backend `index`, whose own id is `id`, and moves
    /// the cursor past it. With a byte budget, an event that would leave no
    /// room for the final event is not written (nor the cursor moved): the
    /// stream closes instead, and `false` says so.
    fn write(
        &mut self,
        buf: &mut Chunk,
        index: usize,
        id: Option<&Arc<str>>,
        event: &backends::Event,
    ) -> bool {
        let budgeted = self.max_bytes != u64::MAX;
        let (before, cursor) = (buf.len(), budgeted.then(|| self.cursor.clone()));
        let id = id.map(|id| self.cursor.advance(index, id));
        match self.encoder.shared(event, id) {
            Some(bytes) => buf.push(bytes),
            None => self.encoder.event(buf.buf(), event, id.map(|id| &**id)),
        }
        if let Some(cursor) = cursor.filter(|_| !self.fits(buf.len())) {
            buf.truncate(before);
            self.cursor = cursor;
            self.close(buf, CloseReason::ResponseCap);
            return false;
        }
        true
    }

    fn close(&mut self, buf: &mut Chunk, reason: CloseReason) {
        self.encoder.close(buf.buf(), reason, self.cursor.current());
        self.end = Some(End::Closed(reason));
    }

    /// Sends `chunk`, written at `now`.
    fn emit(&mut self, chunk: Bytes, now: Instant) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.flush_at = None;
        self.bytes_sent += chunk.len() as u64;
        self.metrics.bytes(chunk.len());
        self.last_write = now;
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Stream for Session {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The request's span is lent to the poll (not cloned: a clone and
        // its drop are a registry's reference count, at every delivery).
        let span = std::mem::replace(&mut self.span, tracing::Span::none());
        let polled = span.in_scope(|| self.poll_in_span(cx));
        self.span = span;
        polled
    }
}

impl Session {
    fn poll_in_span(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Infallible>>> {
        let this = self;
        'poll: loop {
            if this.end.is_some() {
                return Poll::Ready(None);
            }
            // One clock read serves the poll.
            let now = Instant::now();
            // What waited for the write delay goes first.
            let mut buf = std::mem::take(&mut this.held);
            if !this.started {
                this.started = true;
                this.encoder.preamble(buf.buf());
            }
            if Pin::new(&mut this.shutdown).poll(cx).is_ready() {
                this.close(&mut buf, CloseReason::Shutdown);
                return this.emit(buf.freeze(), now);
            }
            if !this.backends_done {
                // While events wait for the write delay, those after them
                // wait in their backends, unread (no wake-up for each); the
                // first event after a write is read alone, to wait.
                let holding = this.flush_at.is_some_and(|at| now < at);
                if !holding {
                    let one = !this.route.write_delay.is_zero()
                        && this.flush_at.is_none()
                        && !this.backlog;
                    this.drain(cx, &mut buf, now, one);
                }
                // A backend that always has an event ready would otherwise keep
                // the timer below from ever being looked at.
                if this.end.is_none() && this.credential_expired(now) {
                    this.close(&mut buf, CloseReason::CredentialExpired);
                } else if this.end.is_none() && now >= this.lifetime_ends {
                    this.close(&mut buf, CloseReason::Lifetime);
                }
            }
            if this.backends_done && this.end.is_none() {
                // A body is never empty: an NDJSON stream with no event says so.
                if this.bytes_sent == 0 && buf.is_empty() {
                    this.close(&mut buf, CloseReason::Empty);
                } else {
                    this.end = Some(End::Complete);
                }
            }
            if !buf.is_empty() && !this.hold(&mut buf, now) {
                return this.emit(buf.freeze(), now);
            }
            if this.end.is_some() {
                return Poll::Ready(None);
            }
            loop {
                let due = this.next_deadline();
                if due < this.timer.deadline() {
                    this.timer.as_mut().reset(due);
                    this.timer_waker = None;
                }
                let waiting = this
                    .timer_waker
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()));
                if waiting && now < this.timer.deadline() {
                    return Poll::Pending;
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    if !waiting {
                        this.timer_waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                this.timer_waker = None;
                let now = Instant::now();
                if !this.held.is_empty() {
                    // What waited goes when its flush is due, or before the
                    // stream ends; no other deadline comes first (it is
                    // flushed by the next heartbeat, `write_delay` is under
                    // `max_idle`): the poll again, with what waited.
                    if this.flush_at.is_some_and(|at| now >= at)
                        || now >= this.lifetime_ends
                        || this.credential_expired(now)
                    {
                        continue 'poll;
                    }
                    this.timer.as_mut().reset(due);
                    continue;
                }
                if this.credential_expired(now) {
                    this.close(&mut buf, CloseReason::CredentialExpired);
                    return this.emit(buf.freeze(), now);
                }
                if now >= this.lifetime_ends {
                    this.close(&mut buf, CloseReason::Lifetime);
                    return this.emit(buf.freeze(), now);
                }
                if now >= this.last_event + this.route.max_idle {
                    this.close(&mut buf, CloseReason::Idle);
                    return this.emit(buf.freeze(), now);
                }
                if now >= this.last_write + this.route.heartbeat {
                    let heartbeat = this.encoder.heartbeat();
                    if !this.fits(heartbeat.len()) {
                        this.close(&mut buf, CloseReason::ResponseCap);
                        return this.emit(buf.freeze(), now);
                    }
                    return this.emit(heartbeat, now);
                }
                // Fired early: activity moved the deadline later.
                this.timer.as_mut().reset(due);
                this.timer_waker = None;
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _in_request = self.span.enter();
        let reason = match self.end {
            Some(End::Complete) => "complete",
            Some(End::Closed(reason)) => reason.as_str(),
            None => "client_gone",
        };
        let (failed_backend, error_kind) = match &self.last_error {
            Some((backend, kind)) => (Some(&**backend), Some(kind.as_str())),
            None => (None, None),
        };
        tracing::info!(
            route = %self.route.name,
            format = %self.format,
            reason,
            events = self.events_sent,
            bytes = self.bytes_sent,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            errors = self.errors,
            last_error_backend = failed_backend,
            last_error_kind = error_kind,
            "Stream ended"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use backends::testing::{Mock, Step, event};
    use futures::StreamExt;
    use serde_json::{Value, json};

    use super::*;

    /// Streams `steps` on a route with `config` in `format` through a
    /// session `made` adjusts; returns the body and how long it ran.
    pub(crate) async fn run(
        config: crate::config::RouteConfig,
        steps: Vec<Step>,
        format: Format,
        made: impl FnOnce(Session) -> Session,
    ) -> (String, Duration) {
        let start = Instant::now();
        let chunks = written(config, steps, format, made, None).await;
        (
            chunks.into_iter().map(|(_, c)| c).collect(),
            start.elapsed(),
        )
    }

    /// Streams as [`run`] does, the gateway's shutdown beginning at
    /// `shutdown_at` if given; returns each chunk the session wrote, with
    /// when it wrote it.
    async fn written(
        config: crate::config::RouteConfig,
        steps: Vec<Step>,
        format: Format,
        made: impl FnOnce(Session) -> Session,
        shutdown_at: Option<Duration>,
    ) -> Vec<(Duration, String)> {
        let backend: Arc<dyn backends::Backend> = Arc::new(Mock::new(steps));
        let route = Arc::new(Route::new("r", &config, vec![("b".into(), backend)]).unwrap());
        let events = crate::fanin::open(&route, &[backends::RequestContext::default()])
            .await
            .unwrap();
        let cursor = Cursor::parse(Arc::clone(&route.sources), None).unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        if let Some(at) = shutdown_at {
            let token = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                token.cancel();
            });
        }
        let start = Instant::now();
        let metrics = crate::metrics::Metrics::new([route.as_ref()]).stream(&route, format, start);
        let session = Session::new(
            route,
            format,
            events,
            cursor,
            config.max_lifetime,
            shutdown.cancelled_owned(),
            permit,
            metrics,
        );
        made(session)
            .map(|c| {
                (
                    start.elapsed(),
                    String::from_utf8(c.unwrap().to_vec()).unwrap(),
                )
            })
            .collect()
            .await
    }

    /// Events `{"n":N}` for each `N` of `numbers`, each after its own gate,
    /// then nothing more; and the gates, to open in order.
    fn gated(numbers: std::ops::RangeInclusive<u64>) -> (Vec<Step>, Vec<Arc<tokio::sync::Notify>>) {
        let mut steps = Vec::new();
        let mut gates = Vec::new();
        for n in numbers {
            let gate = Arc::new(tokio::sync::Notify::new());
            steps.push(Step::Gate(Arc::clone(&gate)));
            steps.push(Step::Event(event(&n.to_string(), "e", json!({ "n": n }))));
            gates.push(gate);
        }
        steps.push(Step::Pending);
        (steps, gates)
    }

    /// Opens each gate at its time (from now).
    fn open_at(gates: Vec<Arc<tokio::sync::Notify>>, times_ms: &[u64]) {
        let times: Vec<_> = times_ms.iter().map(|&t| Duration::from_millis(t)).collect();
        let start = Instant::now();
        tokio::spawn(async move {
            for (gate, at) in gates.into_iter().zip(times) {
                tokio::time::sleep_until(start + at).await;
                gate.notify_one();
            }
        });
    }

    /// The chunks' times in milliseconds, and their events' numbers (the
    /// final event as 0).
    fn timeline(chunks: &[(Duration, String)]) -> Vec<(u128, Vec<u64>)> {
        chunks
            .iter()
            .map(|(at, chunk)| {
                let numbers = chunk
                    .lines()
                    .map(|line| {
                        serde_json::from_str::<Value>(line).unwrap()["n"]
                            .as_u64()
                            .unwrap_or(0)
                    })
                    .collect();
                (at.as_millis(), numbers)
            })
            .collect()
    }

    /// With a `write_delay`, the first event after a write waits for it and
    /// what comes meanwhile goes in the same write; the stream's first
    /// event goes at once, the wait ends by the next heartbeat, and the
    /// backend is not read while events wait. Without one, every event is
    /// written as it comes.
    #[tokio::test(start_paused = true)]
    async fn a_write_delay_gathers_what_comes_within_it() {
        let times = [0, 1000, 1010, 1020, 2000, 2100, 2900];
        // (write delay in ms, the chunks' times in ms and their events)
        type Expected = &'static [(u128, &'static [u64])];
        let cases: [(u64, Expected); 2] = [
            (
                50,
                &[
                    (0, &[1]),
                    (1050, &[2, 3, 4]),
                    (2050, &[5]),
                    (2150, &[6]),
                    (2950, &[7]),
                    (3000, &[0]),
                ],
            ),
            (
                0,
                &[
                    (0, &[1]),
                    (1000, &[2]),
                    (1010, &[3]),
                    (1020, &[4]),
                    (2000, &[5]),
                    (2100, &[6]),
                    (2900, &[7]),
                    (3000, &[0]),
                ],
            ),
        ];
        for (delay, expected) in cases {
            let (steps, gates) = gated(1..=7);
            open_at(gates, &times);
            let mut config = crate::config::RouteConfig::new("/s");
            config.write_delay = Duration::from_millis(delay);
            config.heartbeat = Duration::from_secs(100);
            config.max_lifetime = Duration::from_millis(3000);
            let chunks = written(config, steps, Format::Ndjson, |s| s, None).await;
            let expected: Vec<_> = expected.iter().map(|(t, n)| (*t, n.to_vec())).collect();
            assert_eq!(timeline(&chunks), expected, "write_delay {delay} ms");
        }
    }

    /// A backlog (a client catching up) is not written a chunk per write
    /// delay: once the delay has passed, chunks that fill up go out one
    /// after the other, and only the last waits.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_goes_out_without_waiting_chunk_by_chunk() {
        let count = 20_000;
        // Every event is ready from the start.
        let steps = (1..=count)
            .map(|n| Step::Event(event(&n.to_string(), "e", json!({ "n": n }))))
            .chain([Step::Pending])
            .collect();
        let mut config = crate::config::RouteConfig::new("/s");
        config.write_delay = Duration::from_millis(500);
        config.max_lifetime = Duration::from_secs(10);
        let chunks = written(config, steps, Format::Ndjson, |s| s, None).await;
        let line = timeline(&chunks);
        let numbers: Vec<u64> = line.iter().flat_map(|(_, n)| n.iter().copied()).collect();
        assert_eq!(numbers, (1..=count).chain([0]).collect::<Vec<_>>());
        let bytes: usize = chunks.iter().map(|(_, c)| c.len()).sum();
        assert!(
            bytes > 3 * BATCH_BYTES,
            "{bytes} bytes: a backlog of several chunks"
        );
        // The first bytes at once, the backlog after one delay, its last
        // (partial) chunk after another, then the lifetime's end.
        let times: Vec<u128> = line.iter().map(|(t, _)| *t).collect();
        assert!(
            times.iter().all(|t| [0, 500, 1000, 10_000].contains(t)),
            "{times:?}"
        );
    }

    /// What waits for the write delay is never lost nor reordered: a
    /// shutdown, the stream's lifetime or the next heartbeat's time sends it
    /// at once, before anything else.
    #[tokio::test(start_paused = true)]
    async fn what_waits_goes_first_when_the_stream_ends_or_a_heartbeat_is_due() {
        // (shutdown at, lifetime, heartbeat): the second chunk's time.
        for (shutdown_at, lifetime, heartbeat, at, ends) in [
            (Some(1020), 5000, 100_000, 1020, true),
            (None, 1030, 100_000, 1030, true),
            (None, 5000, 1040, 1040, false),
        ] {
            let (steps, gates) = gated(1..=2);
            open_at(gates, &[0, 1000]);
            let mut config = crate::config::RouteConfig::new("/s");
            config.write_delay = Duration::from_millis(500);
            config.heartbeat = Duration::from_millis(heartbeat);
            config.max_lifetime = Duration::from_millis(lifetime);
            let chunks = written(
                config,
                steps,
                Format::Ndjson,
                |s| s,
                shutdown_at.map(Duration::from_millis),
            )
            .await;
            let line = timeline(&chunks);
            let case =
                format!("shutdown {shutdown_at:?}, lifetime {lifetime}, heartbeat {heartbeat}");
            assert_eq!(line[0], (0, vec![1]), "{case}");
            let second: &[u64] = if ends { &[2, 0] } else { &[2] };
            assert_eq!(line[1], (at, second.to_vec()), "{case}");
            if !ends {
                // The heartbeat itself is not sent: the event was the write.
                assert!(!chunks[1].1.contains("heartbeat"), "{case}: {chunks:?}");
            }
        }
    }

    /// The ids of the events in an NDJSON or SSE body, and its final
    /// event's data.
    fn ids_and_close(body: &str, format: Format) -> (Vec<String>, Value) {
        let mut ids = Vec::new();
        let mut last = Value::Null;
        match format {
            Format::Sse => {
                for block in body.split("\n\n").filter(|b| b.contains("data: ")) {
                    let data = block
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap();
                    let data: Value = serde_json::from_str(data).unwrap();
                    if data["event"] != "gateway.close" {
                        ids.push(data["id"].as_str().unwrap().to_string());
                    }
                    last = data;
                }
            }
            _ => {
                for line in body.lines() {
                    let line: Value = serde_json::from_str(line).unwrap();
                    let data = if line["data"].is_object() {
                        line["data"].clone()
                    } else {
                        line
                    };
                    if data["event"] != "gateway.close" {
                        ids.push(data["id"].as_str().unwrap().to_string());
                    }
                    last = data;
                }
            }
        }
        (ids, last)
    }

    /// Events whose ids need escaping (quotes, backslashes) and grow longer.
    fn awkward_events(count: usize) -> Vec<Step> {
        (1..=count)
            .map(|n| {
                let id = format!("job\"\\{n:0width$}", width = 1 + n / 40);
                Step::Event(event(
                    &id,
                    "tick",
                    json!({"id": id, "pad": "x".repeat(n % 50)}),
                ))
            })
            .chain([Step::Pending])
            .collect()
    }

    /// A stream with a byte budget ends before its body passes it, in every
    /// encoding: `gateway.close` (`response_cap`) names the id of the last
    /// event it carries, so a client resumes exactly after it, and the event
    /// that did not fit is not half-sent.
    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_within_its_byte_budget() {
        for (format, envelope) in [
            (Format::Sse, false),
            (Format::Ndjson, false),
            (Format::Ndjson, true),
        ] {
            for (budget, shared) in [4096_u64, 10_000, 65_537]
                .into_iter()
                .flat_map(|budget| [(budget, false), (budget, true)])
            {
                let config = crate::config::RouteConfig::new("/s");
                let events = awkward_events(3000);
                let events = if shared { share(events) } else { events };
                let (body, _) = run(config, events, format, |s| {
                    s.enveloped(envelope).max_bytes(Some(budget))
                })
                .await;
                let case = format!("{format} envelope={envelope} budget={budget} shared={shared}");
                assert!(body.len() as u64 <= budget, "{case}: {} bytes", body.len());
                assert!(
                    body.len() as u64 > budget - 1024,
                    "{case}: the budget was used ({} bytes)",
                    body.len()
                );
                let (ids, close) = ids_and_close(&body, format);
                assert_eq!(close["reason"], "response_cap", "{case}");
                assert_eq!(
                    Some(close["last_event_id"].as_str().unwrap()),
                    ids.last().map(String::as_str),
                    "{case}"
                );
                for (n, id) in ids.iter().enumerate() {
                    assert!(
                        id.ends_with(&format!("{:0w$}", n + 1, w = 1 + (n + 1) / 40)),
                        "{case}: {id}"
                    );
                }
            }
        }
    }

    /// The steps' events as a bus gives them to its clients: shared, their
    /// bytes made once.
    fn share(steps: Vec<Step>) -> Vec<Step> {
        steps
            .into_iter()
            .map(|step| match step {
                Step::Event(event) => Step::Event(event.shared()),
                step => step,
            })
            .collect()
    }

    /// A stream of shared events reads exactly as one of events of its own,
    /// whether they come one per chunk (sent as the shared bytes) or several
    /// together (copied into one chunk), with ids that are escaped or absent.
    #[tokio::test(start_paused = true)]
    async fn shared_events_read_as_events_of_their_own() {
        let second = Duration::from_secs(1);
        let steps = vec![
            Step::Event(event("1", "a", json!({"n": 1}))),
            Step::Event(event("needs escape 2", "a", json!({"n": 2}))),
            Step::Sleep(second),
            Step::Event(event("3", "b", json!({"n": 3}))),
            Step::Sleep(second),
            Step::Event(backends::Event::new(backends::Data::text("line\nbreak"))),
            Step::Sleep(second),
            Step::Event(event("needs escape 5", "a", json!({"n": 5}))),
            Step::Sleep(second),
            Step::Event(event("6", "a", json!({"n": 6}))),
            Step::Event(event("7", "a", json!({"n": 7}))),
        ];
        for format in [Format::Sse, Format::Ndjson] {
            for envelope in [false, true] {
                let config = crate::config::RouteConfig::new("/s");
                let made = |s: Session| s.enveloped(envelope);
                let (own, _) = run(config.clone(), steps.clone(), format, made).await;
                let (shared, _) = run(config, share(steps.clone()), format, made).await;
                assert_eq!(shared, own, "{format} envelope={envelope}");
                assert!(own.contains("\"n\":7"), "{own}");
            }
        }
    }

    /// Heartbeats count too: a silent stream ends before they pass the
    /// budget; without a budget nothing changes.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_count_against_the_budget() {
        let mut config = crate::config::RouteConfig::new("/s");
        config.heartbeat = Duration::from_secs(1);
        config.max_idle = Duration::from_secs(100_000);
        config.max_lifetime = Duration::from_secs(100_000);
        let steps = vec![Step::Event(event("1", "a", json!({}))), Step::Pending];
        let (body, ran) = run(config.clone(), steps.clone(), Format::Sse, |s| {
            s.max_bytes(Some(4096))
        })
        .await;
        assert!(body.len() <= 4096, "{}", body.len());
        assert!(
            body.ends_with("\"reason\":\"response_cap\",\"last_event_id\":\"1\"}\n\n"),
            "{body}"
        );
        assert!(
            ran > Duration::from_secs(100) && ran < Duration::from_secs(1000),
            "{ran:?}"
        );
        let (body, ran) = run(config, steps, Format::Sse, |s| s.max_bytes(None)).await;
        assert!(body.contains("\"reason\":\"lifetime\""), "{body}");
        assert_eq!(ran, Duration::from_secs(100_000));
    }
}
