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

use super::hub::{Channel, Hub, Item};
use super::{Backlog, Broker, Entry, notice};
use crate::{BackendError, Event};

pub(super) struct Subscriber<B: Broker> {
    hub: Arc<Hub<B>>,
    channel: Arc<Channel<B::Position>>,
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
        channel: Arc<Channel<B::Position>>,
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
    pub(super) async fn next(mut self) -> Option<(Result<Event, BackendError>, Self)> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(notice) = self.notice.take() {
                return Some((Err(notice), self));
            }
            // Pages follow `last` by construction; history precedes the
            // key's end, which `last` already is.
            if let Some(entry) = self.backlog.pop_front() {
                self.last = self.last.max(entry.position);
                return Some((event(entry), self));
            }
            if self.catch_up.is_some() {
                // Boxed: the page's future is large, and only a client
                // catching up needs room for it.
                if let Err(error) = Box::pin(self.fetch_page()).await {
                    self.end();
                    return Some((Err(error), self));
                }
                continue;
            }
            if let Some(error) = self.ending.take() {
                self.end();
                return Some((Err(error), self));
            }
            match self.live.recv().await {
                Ok(item) => match &*item {
                    Item::Entry(entry) => {
                        if entry.position <= self.last {
                            continue;
                        }
                        self.last = entry.position;
                        return Some((event(entry.clone()), self));
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
        ] {
            assert!(bytes <= 1024, "{broker}: {bytes} bytes per client");
        }
    }
}
