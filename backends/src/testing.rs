//! Mock backends for the gateway's own tests (feature `testing`).
//!
//! A [`Mock`] plays a script of steps (an event, a pause, a failure, or
//! waiting forever), can refuse to open, records the contexts it was opened
//! with, and counts its live streams so a test can prove that a client going
//! away stops the backend's work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    live: Arc<AtomicUsize>,
    opened: Arc<Mutex<Vec<RequestContext>>>,
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

    /// How many of this mock's streams are alive (opened and not yet dropped).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
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
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Backend for Mock {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        if let Ok(mut opened) = self.opened.lock() {
            opened.push(ctx.clone());
        }
        if let Some(err) = &self.open_error {
            return Err(err.clone());
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        let guard = LiveGuard(Arc::clone(&self.live));
        let steps = futures::stream::iter(self.script.clone()).flat_map(|step| match step {
            Step::Event(e) => futures::stream::once(async move { Ok(e) }).boxed(),
            Step::Fail(e) => futures::stream::once(async move { Err(e) }).boxed(),
            Step::Sleep(d) => futures::stream::once(tokio::time::sleep(d))
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
