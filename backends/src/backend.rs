//! The trait every backend implements.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{BackendError, BackendStats, Event, RequestContext};

/// The events of one opened backend. An `Err` item is a failure after the
/// stream started: the gateway turns it into an in-band error event, and the
/// stream may go on. Dropping the stream must stop all of the backend's work
/// for this request.
pub type EventStream = BoxStream<'static, Result<Event, BackendError>>;

/// A source of events.
///
/// One method matters: [`open`](Backend::open) is called once per request,
/// before the response status is sent, so it should do what can fail early
/// (validate the request, connect, subscribe) and return an error for it.
/// Everything after that lives inside the returned stream.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Opens a stream for one request.
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError>;

    /// What the backend counts about its upstream (reconnects) and its slow
    /// clients, for the gateway's metrics; `None` (the default) for a
    /// backend with nothing to count.
    fn stats(&self) -> Option<&BackendStats> {
        None
    }
}
