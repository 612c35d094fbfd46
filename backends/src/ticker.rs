//! `ticker`: an event every interval, for tests, demos and load.
//!
//! Event `n` (counting from 1) has id `n`, name `tick` (configurable) and data
//! `{"seq": n, "ts_us": <microseconds since the Unix epoch when it was made>}`,
//! plus `"pad": "xxx…"` when `payload_bytes` asks for a bigger payload. The
//! timestamp lets a load generator measure delivery latency. A client that
//! resumes with `Last-Event-ID: n` continues with `n + 1`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::time::{Interval, MissedTickBehavior};

use crate::problem::Problem;
use crate::{Backend, BackendError, Data, Event, EventStream, RequestContext};

/// Configuration of the `ticker` backend.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TickerConfig {
    /// Time between events; the first comes at once. `0s` sends as fast as the
    /// client reads. Default: `1s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How many events before the stream ends; none means endless. Default: none.
    pub count: Option<u64>,
    /// Size of the `pad` string added to each event's data; 0 adds none.
    /// At most 1 MiB. Default: 0.
    pub payload_bytes: usize,
    /// Event name. Default: `tick`.
    pub name: String,
}

impl Default for TickerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            count: None,
            payload_bytes: 0,
            name: "tick".into(),
        }
    }
}

/// Largest `payload_bytes`: the gateway's default request body limit, and more
/// than any load test needs.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

impl TickerConfig {
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.payload_bytes > MAX_PAYLOAD_BYTES {
            problems.push(Problem::new(
                "payload_bytes",
                "must be at most 1048576 (1 MiB)",
            ));
        }
        if self.name.is_empty() || self.name.contains(['\r', '\n', '\0']) {
            problems.push(Problem::new(
                "name",
                "must be non-empty, without CR, LF or NUL",
            ));
        }
        problems
    }
}

/// Emits numbered events at a fixed interval.
#[derive(Debug)]
pub struct Ticker {
    config: TickerConfig,
    pad: Arc<str>,
}

impl Ticker {
    /// A ticker with its configuration.
    pub fn new(config: TickerConfig) -> Self {
        let pad = "x".repeat(config.payload_bytes).into();
        Self { config, pad }
    }
}

#[async_trait]
impl Backend for Ticker {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let first = match ctx.last_event_id.as_deref() {
            None => 1,
            Some(last) => {
                let last = last.trim().parse::<u64>().map_err(|_| {
                    BackendError::bad_request(format!(
                        "Last-Event-ID {} is not a ticker sequence number",
                        crate::Shown(last)
                    ))
                })?;
                // After the largest number there is nothing more.
                last.checked_add(1).ok_or_else(BackendError::finished)?
            }
        };
        let last = self.config.count.unwrap_or(u64::MAX);
        if first > last {
            return Err(BackendError::finished());
        }
        let name: Arc<str> = self.config.name.as_str().into();
        let pad = Arc::clone(&self.pad);
        let timer = (!self.config.interval.is_zero()).then(|| {
            let mut timer = tokio::time::interval(self.config.interval);
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        });
        Ok(Ticks {
            next: first,
            last,
            done: false,
            timer,
            name,
            pad,
            text: String::new(),
        }
        .boxed())
    }
}

/// Events a ticker without a pause makes per unit of tokio's budget (of 128
/// a task has before it gives way): 4,096 events, about 280 KB of SSE.
const PER_UNIT: u64 = 32;

/// A ticker's events `next..=last`. A stream of its own rather than a
/// generator: its state stays in place and each event is returned, not
/// handed over through a slot (a generator's poll cost a twelfth of a
/// firehose event's instructions). The text of each event is written into
/// one buffer kept for the stream: an event costs two allocations, its data
/// and its id.
struct Ticks {
    next: u64,
    last: u64,
    done: bool,
    timer: Option<Interval>,
    name: Arc<str>,
    pad: Arc<str>,
    text: String,
}

impl Stream for Ticks {
    type Item = Result<Event, BackendError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.timer.as_mut() {
            Some(timer) => {
                ready!(timer.poll_tick(cx));
            }
            // Without a pause, let other tasks run once this task has used
            // its share of work (tokio's budget), not after every event:
            // events ready together go out in one write. One unit of budget
            // per `PER_UNIT` events: at one per event the task gave way
            // every 128 events, and each time woke the runtime's idle
            // worker, which found nothing to do and parked again (two
            // system calls per 128 events, more than the writes).
            None if this.next % PER_UNIT == 0 => {
                ready!(tokio::task::coop::poll_proceed(cx)).made_progress()
            }
            None => {}
        }
        let seq = this.next;
        match seq.checked_add(1).filter(|next| *next <= this.last) {
            Some(next) => this.next = next,
            None => this.done = true,
        }
        let event = tick(seq, Arc::clone(&this.name), &this.pad, &mut this.text);
        Poll::Ready(Some(Ok(event)))
    }
}

fn tick(seq: u64, name: Arc<str>, pad: &str, text: &mut String) -> Event {
    let ts_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    // Written directly: numbers and a run of `x` need no escaping, and a
    // firehose makes millions of these.
    let mut seq_digits = itoa::Buffer::new();
    let seq = seq_digits.format(seq);
    text.clear();
    text.push_str("{\"seq\":");
    text.push_str(seq);
    text.push_str(",\"ts_us\":");
    text.push_str(itoa::Buffer::new().format(ts_us));
    if !pad.is_empty() {
        text.push_str(",\"pad\":\"");
        text.push_str(pad);
        text.push('"');
    }
    text.push('}');
    Event::new(Data::json_text(&*text))
        .with_id(seq)
        .with_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// With no interval, the reading task lets others run at the end of
    /// its budget (tokio's 128 units, `PER_UNIT` events each), not after
    /// every event, nor never.
    #[tokio::test]
    async fn without_a_pause_it_lets_other_tasks_run_now_and_then() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let ticker = Ticker::new(TickerConfig {
            interval: Duration::ZERO,
            ..TickerConfig::default()
        });
        let mut events = ticker.open(&RequestContext::default()).await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let mut read = 0;
        while !ran.load(Ordering::SeqCst) {
            events.next().await.expect("endless").expect("an event");
            read += 1;
            assert!(read <= 130 * PER_UNIT, "the other task never ran");
        }
        assert!(read >= 100 * PER_UNIT, "it gave way after {read} events");
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_at_the_interval_and_stops_at_count() {
        let ticker = Ticker::new(TickerConfig {
            interval: Duration::from_secs(2),
            count: Some(3),
            payload_bytes: 4,
            ..TickerConfig::default()
        });
        let start = Instant::now();
        let events: Vec<_> = ticker
            .open(&RequestContext::default())
            .await
            .unwrap()
            .map(|e| (e.unwrap(), start.elapsed().as_secs()))
            .collect()
            .await;
        let seen: Vec<_> = events
            .iter()
            .map(|(e, at)| (e.id.as_deref().unwrap().to_string(), *at))
            .collect();
        assert_eq!(seen, [("1".into(), 0), ("2".into(), 2), ("3".into(), 4)]);
        let data = events[0].0.data.to_value();
        assert_eq!(data["seq"], 1);
        assert_eq!(data["pad"], "xxxx");
        assert!(data["ts_us"].as_u64().unwrap() > 0);
        assert_eq!(events[0].0.name.as_deref(), Some("tick"));
    }

    #[tokio::test]
    async fn the_largest_ids_end_instead_of_wrapping() {
        let ticker = Ticker::new(TickerConfig {
            interval: Duration::ZERO,
            ..TickerConfig::default()
        });
        let at = |id: u64| RequestContext {
            last_event_id: Some(id.to_string()),
            ..RequestContext::default()
        };
        let err = ticker.open(&at(u64::MAX)).await.err().unwrap();
        assert_eq!(err.kind, crate::ErrorKind::Finished);
        let ids: Vec<_> = ticker
            .open(&at(u64::MAX - 2))
            .await
            .unwrap()
            .map(|e| e.unwrap().id.unwrap().to_string())
            .collect()
            .await;
        assert_eq!(ids, [(u64::MAX - 1).to_string(), u64::MAX.to_string()]);
    }

    #[tokio::test]
    async fn resumes_after_last_event_id() {
        let ticker = Ticker::new(TickerConfig {
            interval: Duration::ZERO,
            count: Some(5),
            ..TickerConfig::default()
        });
        let ctx = RequestContext {
            last_event_id: Some("3".into()),
            ..RequestContext::default()
        };
        let ids: Vec<_> = ticker
            .open(&ctx)
            .await
            .unwrap()
            .map(|e| e.unwrap().id.unwrap().to_string())
            .collect()
            .await;
        assert_eq!(ids, ["4", "5"]);
        let done = RequestContext {
            last_event_id: Some("5".into()),
            ..RequestContext::default()
        };
        assert_eq!(
            ticker.open(&done).await.err().unwrap().kind,
            crate::ErrorKind::Finished
        );
    }
}
