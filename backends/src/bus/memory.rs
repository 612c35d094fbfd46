//! A broker in memory, for the bus core's unit tests: one key, positions
//! 1, 2, 3…, pages of three, a follow loop woken on every append. It is
//! also the smallest example of a stateless-page broker (as a SQL table
//! would be).

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::{Bounds, Broker, Entry, Feed, Page};
use crate::{BackendError, BackendStats, Data, Event, RequestContext};

#[derive(Debug)]
pub(super) struct Memory {
    state: Mutex<State>,
    appended: Notify,
    stats: BackendStats,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<u64, Result<Event, String>>,
    end: u64,
    gone: u64,
}

impl Memory {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::default(),
            appended: Notify::new(),
            stats: BackendStats::new("memory"),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `{"n": n}` for each n.
    pub(super) fn append(&self, ns: std::ops::Range<u64>) {
        for n in ns {
            self.push(Ok(Event::new(Data::json(&serde_json::json!({ "n": n })))));
        }
    }

    /// Appends an entry that is no event.
    pub(super) fn append_undecodable(&self) -> u64 {
        self.push(Err("it is not one".into()))
    }

    fn push(&self, event: Result<Event, String>) -> u64 {
        let mut state = self.state();
        state.end += 1;
        let at = state.end;
        let event = event.map(|e| e.with_id(at.to_string()));
        state.entries.insert(at, event);
        drop(state);
        self.appended.notify_waiters();
        at
    }

    /// Removes every entry up to `through`.
    pub(super) fn remove_through(&self, through: u64) {
        let mut state = self.state();
        state.entries.retain(|at, _| *at > through);
        state.gone = state.gone.max(through);
    }

    fn after(&self, after: u64, count: usize) -> (Vec<Entry<u64>>, bool) {
        let state = self.state();
        let mut entries: Vec<_> = state
            .entries
            .range(after + 1..)
            .take(count + 1)
            .map(|(at, event)| Entry {
                position: *at,
                event: event.clone(),
            })
            .collect();
        let more = entries.len() > count;
        entries.truncate(count);
        (entries, more)
    }
}

impl Broker for Memory {
    type Position = u64;
    type Pager = ();
    const PAGE: usize = 3;
    const ID: &'static str = "a number";

    fn parse(&self, id: &str) -> Option<u64> {
        id.parse().ok()
    }

    fn key(&self, _: &RequestContext) -> Result<String, BackendError> {
        Ok("k".into())
    }

    async fn bounds(&self, _: &str) -> Result<Bounds<u64>, BackendError> {
        let state = self.state();
        Ok(Bounds {
            end: Some(state.end).filter(|end| *end > 0),
            gone: Some(state.gone).filter(|gone| *gone > 0),
            epoch: 0,
        })
    }

    async fn history(&self, _: &str, n: usize, end: u64) -> Result<Vec<Entry<u64>>, BackendError> {
        let state = self.state();
        let mut last: Vec<_> = state
            .entries
            .range(..=end)
            .rev()
            .take(n)
            .map(|(at, event)| Entry {
                position: *at,
                event: event.clone(),
            })
            .collect();
        last.reverse();
        Ok(last)
    }

    async fn page(
        &self,
        key: &str,
        _: &mut (),
        after: u64,
        count: usize,
    ) -> Result<Page<u64>, BackendError> {
        let (entries, more) = self.after(after, count);
        let gone = self.bounds(key).await?.gone;
        Ok(Page {
            entries,
            more,
            gone,
        })
    }

    async fn follow(&self, _: &str, mut feed: Feed<u64>) {
        loop {
            let appended = self.appended.notified();
            let (entries, _) = self.after(feed.last(), usize::MAX - 1);
            for entry in entries {
                feed.send(entry);
            }
            appended.await;
        }
    }

    fn stats(&self) -> &BackendStats {
        &self.stats
    }
}
