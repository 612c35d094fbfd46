//! Mock backends for the gateway's own tests (feature `testing`).
//!
//! A [`Mock`] plays a script of steps (an event, a pause, a failure, a gate
//! the test opens, or waiting forever), can refuse to open, records the
//! contexts it was opened with, and counts its live streams so a test can
//! prove that a client going away stops the backend's work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

use async_trait::async_trait;
use futures::StreamExt;

use crate::{Backend, BackendError, Data, Event, EventStream, RequestContext};

/// One step of a mock's script.
#[derive(Clone, Debug)]
pub enum Step {
    /// Yield this event.
    Event(Event),
    /// Wait this long.
    Sleep(Duration),
    /// Yield this failure (the stream goes on with the next step).
    Fail(BackendError),
    /// Wait until the test calls `notify_one` on the gate (a call made before
    /// the stream gets here is kept, so there is no race).
    Gate(Arc<Notify>),
    /// Never yield again and never end; only dropping the stream stops it.
    Pending,
    /// Yield numbered events (`1`, `2`, ...) every interval, forever.
    Endless(Duration),
}

/// A scripted backend.
#[derive(Clone, Debug, Default)]
pub struct Mock {
    script: Vec<Step>,
    open_error: Option<BackendError>,
    open_delay: Option<Duration>,
    live: Arc<Live>,
    opened: Arc<Mutex<Vec<RequestContext>>>,
}

/// The count of live streams, and a way to wait for it to change.
#[derive(Debug, Default)]
struct Live {
    count: AtomicUsize,
    changed: Notify,
}

impl Mock {
    /// A mock that plays `script` on every open.
    pub fn new(script: Vec<Step>) -> Self {
        Self {
            script,
            ..Self::default()
        }
    }

    /// A mock whose `open` fails.
    pub fn failing(error: BackendError) -> Self {
        Self {
            open_error: Some(error),
            ..Self::default()
        }
    }

    /// The same mock, taking `delay` to open (or to fail to open).
    pub fn opening_after(mut self, delay: Duration) -> Self {
        self.open_delay = Some(delay);
        self
    }

    /// How many of this mock's streams are alive (opened and not yet dropped).
    pub fn live(&self) -> usize {
        self.live.count.load(Ordering::SeqCst)
    }

    /// Waits until none of this mock's streams is alive: every stream it
    /// opened was dropped, and so its work stopped.
    pub async fn all_dropped(&self) {
        loop {
            let changed = self.live.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// The contexts this mock was opened with, in order.
    pub fn opened(&self) -> Vec<RequestContext> {
        self.opened.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// A JSON event with an id and a name.
pub fn event(id: &str, name: &str, data: serde_json::Value) -> Event {
    Event::new(Data::json(&data)).with_id(id).with_name(name)
}

/// Decrements the live counter when the stream is dropped.
struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

#[async_trait]
impl Backend for Mock {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        if let Ok(mut opened) = self.opened.lock() {
            opened.push(ctx.clone());
        }
        if let Some(delay) = self.open_delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(err) = &self.open_error {
            return Err(err.clone());
        }
        self.live.count.fetch_add(1, Ordering::SeqCst);
        let guard = LiveGuard(Arc::clone(&self.live));
        let steps = futures::stream::iter(self.script.clone()).flat_map(|step| match step {
            Step::Event(e) => futures::stream::once(async move { Ok(e) }).boxed(),
            Step::Fail(e) => futures::stream::once(async move { Err(e) }).boxed(),
            Step::Sleep(d) => futures::stream::once(tokio::time::sleep(d))
                .filter_map(|()| async { None })
                .boxed(),
            Step::Gate(gate) => futures::stream::once(async move { gate.notified().await })
                .filter_map(|()| async { None })
                .boxed(),
            Step::Pending => futures::stream::pending().boxed(),
            Step::Endless(every) => futures::stream::unfold(1u64, move |n| async move {
                tokio::time::sleep(every).await;
                let e = event(&n.to_string(), "tick", serde_json::json!({ "n": n }));
                Some((Ok(e), n + 1))
            })
            .boxed(),
        });
        // The guard lives as long as the stream.
        Ok(steps
            .map(move |item| {
                let _ = &guard;
                item
            })
            .boxed())
    }
}
