//! One client of a key: where it is, and where its next events come from.
//!
//! In order: a notice (a gap, the bus numbering anew), its history or the
//! current page of a catch-up, more pages from the broker, an ending
//! (`lagged`), then the key's live buffer, entries at or before its
//! position dropped. Falling behind the buffer starts a catch-up from its
//! position. No task of its own: it is the client's stream, polled by the
//! gateway, and dropping it stops everything it does.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::hub::{Hub, Item, Shared};
use super::{Backlog, Broker, Entry, notice};
use crate::{BackendError, Event};

pub(super) struct Subscriber<B: Broker> {
    hub: Arc<Hub<B>>,
    channel: Shared<B::Position>,
    live: broadcast::Receiver<Arc<Item<B::Position>>>,
    backlog: Backlog<B::Position>,
    /// The last position sent (or skipped, as before the client joined).
    last: B::Position,
    /// While catching up from the broker (boxed: most clients never do).
    catch_up: Option<Box<CatchUp<B>>>,
    /// An error to send before anything else, the stream going on.
    notice: Option<BackendError>,
    /// An error to send once the backlog is out, then end.
    ending: Option<BackendError>,
    ended: bool,
}

/// A catch-up in progress.
struct CatchUp<B: Broker> {
    /// How many more entries it may read.
    budget: usize,
    pager: B::Pager,
}

impl<B: Broker> Subscriber<B> {
    /// A client of `channel`'s key: after `resume` when it gives one, else
    /// from its history (if the backend sends any) or what comes next.
    pub(super) async fn open(
        hub: Arc<Hub<B>>,
        channel: Shared<B::Position>,
        resume: Option<B::Position>,
    ) -> Result<Self, BackendError> {
        // Subscribe first, then read what came before: the two overlap (and
        // positions drop the repeats) instead of leaving a gap.
        let live = channel.sender.subscribe();
        let last = channel.delivered();
        let mut subscriber = Self {
            hub,
            channel,
            live,
            backlog: Backlog::new(),
            last,
            catch_up: None,
            notice: None,
            ending: None,
            ended: false,
        };
        let history = subscriber.hub.limits().history;
        match resume {
            Some(after) => subscriber.resume(after).await?,
            None if history > 0 => subscriber.history(history).await?,
            None => {}
        }
        Ok(subscriber)
    }

    fn broker(&self) -> &B {
        self.hub.broker()
    }

    async fn resume(&mut self, after: B::Position) -> Result<(), BackendError> {
        let origin = B::Position::default();
        let bounds = self.broker().bounds(&self.channel.key).await?;
        if after > origin && bounds.end.is_none_or(|end| after > end) {
            // An id the bus never gave out as it is now: it numbers anew.
            self.notice = Some(notice::reset(after, origin));
            self.last = origin;
            if bounds.end.is_some() {
                self.start_catch_up();
            }
            return Ok(());
        }
        self.last = after;
        // At the end already (the usual reconnection), what follows comes
        // live; before it, pages (whose first says what is gone).
        if bounds.end.is_some_and(|end| after < end) {
            self.start_catch_up();
        }
        Ok(())
    }

    async fn history(&mut self, n: usize) -> Result<(), BackendError> {
        let bounds = self.broker().bounds(&self.channel.key).await?;
        if let Some(end) = bounds.end {
            let entries = self.broker().history(&self.channel.key, n, end).await?;
            self.backlog.extend(entries);
            // Whatever the key held up to its end is history, sent or not.
            self.last = self.last.max(end);
        }
        Ok(())
    }

    fn start_catch_up(&mut self) {
        self.catch_up = Some(Box::new(CatchUp {
            budget: self.hub.limits().max_catchup,
            pager: B::Pager::default(),
        }));
    }

    /// The next page of the catch-up into the backlog, announcing what is
    /// gone before it; at the budget's end with more to read, the stream is
    /// to end with `lagged`.
    async fn fetch_page(&mut self) -> Result<(), BackendError> {
        let Some(catch_up) = self.catch_up.as_mut() else {
            return Ok(());
        };
        let count = B::PAGE.min(catch_up.budget).max(1);
        let hub = Arc::clone(&self.hub);
        let page = hub
            .broker()
            .page(&self.channel.key, &mut catch_up.pager, self.last, count)
            .await?;
        let origin = B::Position::default();
        if let Some(through) = page.gone.filter(|gone| *gone > self.last) {
            if self.last > origin && self.notice.is_none() {
                self.notice = Some(notice::gap(self.last, through));
            }
        }
        let last = self.last;
        let entries: Vec<Entry<B::Position>> = page
            .entries
            .into_iter()
            .filter(|entry| entry.position > last)
            .collect();
        catch_up.budget = catch_up.budget.saturating_sub(entries.len());
        match (page.more, catch_up.budget) {
            (false, _) => self.catch_up = None,
            (true, 0) => {
                self.hub.broker().stats().dropped();
                let at = entries.last().map_or(self.last, |e| e.position);
                self.ending = Some(notice::lagged(at));
                self.catch_up = None;
            }
            (true, _) => {}
        }
        self.backlog.extend(entries);
        Ok(())
    }

    /// The client's next event, or `None` when its stream ends.
    pub(super) async fn next(&mut self) -> Option<Result<Event, BackendError>> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(notice) = self.notice.take() {
                return Some(Err(notice));
            }
            // Pages follow `last` by construction; history precedes the
            // key's end, which `last` already is.
            if let Some(entry) = self.backlog.pop_front() {
                self.last = self.last.max(entry.position);
                return Some(event(entry));
            }
            if self.catch_up.is_some() {
                // Boxed: the page's future is large, and only a client
                // catching up needs room for it.
                if let Err(error) = Box::pin(self.fetch_page()).await {
                    self.end();
                    return Some(Err(error));
                }
                continue;
            }
            if let Some(error) = self.ending.take() {
                self.end();
                return Some(Err(error));
            }
            match self.live.recv().await {
                Ok(item) => match &*item {
                    Item::Entry(entry) => {
                        if entry.position <= self.last {
                            continue;
                        }
                        self.last = entry.position;
                        return Some(event(entry.clone()));
                    }
                    Item::Reset => {
                        let origin = B::Position::default();
                        if self.last > origin {
                            self.notice = Some(notice::reset(self.last, origin));
                        }
                        self.last = origin;
                    }
                    Item::Gap { through } => {
                        if *through > self.last {
                            self.notice = Some(notice::gap(self.last, through));
                        }
                    }
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Behind by more than the buffer: catch up from the
                    // broker, page by page, within `max_catchup`.
                    self.hub.broker().stats().lagged();
                    self.start_catch_up();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Its next poll yields nothing; its catch-up state goes.
    fn end(&mut self) {
        self.ended = true;
        self.catch_up = None;
        self.backlog.clear();
    }
}

/// An entry as the client gets it: its event, or the error naming it.
fn event<P: std::fmt::Display>(entry: Entry<P>) -> Result<Event, BackendError> {
    entry
        .event
        .map_err(|why| notice::undecodable(entry.position, &why))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bus::memory::Memory;
    use crate::bus::{Bus, Limits};
    use crate::{Backend, EventStream, RequestContext};
    use futures::StreamExt;

    /// A bus on `memory` (shared with the test) within `limits`.
    fn bus(limits: Limits) -> (Bus<Memory>, Arc<Memory>) {
        let bus = Bus::new(Memory::new(), limits);
        let memory = Arc::clone(&bus.hub.broker);
        (bus, memory)
    }

    async fn open(bus: &Bus<Memory>, resume: Option<&str>) -> EventStream {
        let ctx = RequestContext {
            last_event_id: resume.map(str::to_string),
            ..RequestContext::default()
        };
        bus.open(&ctx).await.expect("opens")
    }

    /// The next `count` items: `n` for an event, the error's kind, message
    /// start and resume id for an error.
    async fn next(stream: &mut EventStream, count: usize) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..count {
            let item = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("an item in time")
                .expect("the stream goes on");
            got.push(match item {
                Ok(event) => event.data.to_value()["n"].to_string(),
                Err(e) => format!("{}@{}", e.kind, e.resume_id.unwrap_or_default()),
            });
        }
        got
    }

    /// A key comes from the request's path: it leaves the hub with its
    /// last client, not when another key's reader starts some day.
    #[tokio::test]
    async fn a_key_is_forgotten_with_its_last_client() {
        let (bus, _) = bus(Limits::default());
        let (first, second) = (open(&bus, None).await, open(&bus, None).await);
        assert!(bus.hub.channels.get("k").is_some());
        drop(first);
        assert!(bus.hub.channels.get("k").is_some(), "a client is left");
        drop(second);
        assert_eq!(bus.hub.channels.lock().len(), 0);
    }

    #[tokio::test]
    async fn a_catch_up_comes_page_by_page_then_live() {
        let (bus, memory) = bus(Limits::default());
        memory.append(0..10);
        let mut stream = open(&bus, Some("2")).await;
        assert_eq!(
            next(&mut stream, 8).await,
            ["2", "3", "4", "5", "6", "7", "8", "9"]
        );
        memory.append(10..11);
        assert_eq!(next(&mut stream, 1).await, ["10"]);
    }

    #[tokio::test]
    async fn past_max_catchup_the_stream_ends_naming_the_last_event() {
        let limits = Limits {
            max_catchup: 4,
            ..Limits::default()
        };
        let (bus, memory) = bus(limits);
        memory.append(0..10);
        let mut stream = open(&bus, Some("0")).await;
        assert_eq!(next(&mut stream, 5).await, ["0", "1", "2", "3", "lagged@4"]);
        assert!(stream.next().await.is_none());
        assert_eq!(memory.stats().snapshot().dropped, 1);
    }

    #[tokio::test]
    async fn removed_entries_are_announced_before_what_is_left() {
        let (bus, memory) = bus(Limits::default());
        memory.append(0..10);
        memory.remove_through(6);
        let mut stream = open(&bus, Some("2")).await;
        assert_eq!(next(&mut stream, 5).await, ["lagged@2", "6", "7", "8", "9"]);
        // Nothing said to one that had all that went.
        let mut stream = open(&bus, Some("6")).await;
        assert_eq!(next(&mut stream, 1).await, ["6"]);
        // Nor to one that asks for all there is.
        let mut stream = open(&bus, Some("0")).await;
        assert_eq!(next(&mut stream, 1).await, ["6"]);
    }

    #[tokio::test]
    async fn an_id_past_the_end_is_a_reset_then_all_the_key_holds() {
        let (bus, memory) = bus(Limits::default());
        memory.append(0..3);
        let mut stream = open(&bus, Some("50")).await;
        assert_eq!(next(&mut stream, 4).await, ["lagged@0", "0", "1", "2"]);
    }

    #[tokio::test]
    async fn an_undecodable_entry_is_an_error_naming_it_in_place() {
        let (bus, memory) = bus(Limits {
            history: 5,
            ..Limits::default()
        });
        memory.append(0..1);
        let bad = memory.append_undecodable();
        memory.append(1..2);
        let mut stream = open(&bus, None).await;
        assert_eq!(
            next(&mut stream, 3).await,
            ["0", format!("upstream@{bad}").as_str(), "1"]
        );
        let mut live = open(&bus, Some("3")).await;
        memory.append_undecodable();
        memory.append(2..3);
        assert_eq!(next(&mut live, 2).await, ["upstream@4", "2"]);
    }

    #[tokio::test]
    async fn a_client_behind_the_buffer_catches_up_without_old_entries() {
        let (bus, memory) = bus(Limits {
            buffer: 2,
            ..Limits::default()
        });
        memory.append(0..5);
        let mut stream = open(&bus, None).await;
        memory.append(100..110);
        // The reader broadcasts all ten before the client reads one.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let got = next(&mut stream, 10).await;
        let want: Vec<String> = (100..110).map(|n| n.to_string()).collect();
        assert_eq!(got, want);
        assert_eq!(memory.stats().snapshot().lagged, 1);
    }

    /// What an idle client costs beyond its connection: the stream the
    /// gateway boxes holds a client's state and its `next` future. A page
    /// fetch is boxed while it runs, so idle clients do not reserve room for
    /// one (before the bus core, a NATS client's stream took 11.7 KB).
    #[test]
    fn an_idle_client_is_small() {
        fn size<B: Broker>() -> usize {
            fn future<T, F: Future>(_: fn(T) -> F) -> usize {
                std::mem::size_of::<F>()
            }
            std::mem::size_of::<Subscriber<B>>() + future(Subscriber::<B>::next)
        }
        for (broker, bytes) in [
            ("redis", size::<crate::redis::Redis>()),
            ("nats", size::<crate::nats::Nats>()),
            ("postgres", size::<crate::postgres::Postgres>()),
            ("rabbitmq", size::<crate::rabbitmq::RabbitMq>()),
        ] {
            assert!(bytes <= 1024, "{broker}: {bytes} bytes per client");
        }
    }
}
