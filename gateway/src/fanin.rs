//! Fan-in: open every backend of a route at once and merge their events as
//! they come.

use std::sync::Arc;

use backends::{Backend, BackendError, ErrorKind, Event, EventStream, RequestContext};
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, future};

/// An event or a failure, tagged with the index of the backend it came from.
pub type Tagged = (usize, Result<Event, BackendError>);

/// The merged events of a route's backends. It ends when every backend has
/// ended; dropping it drops, and so stops, every backend's stream.
pub type Merged = SelectAll<BoxStream<'static, Tagged>>;

/// Opens every backend concurrently, `contexts[i]` for `backends[i]`.
///
/// Any failure to open fails the whole request (the first, in route order),
/// since it can still become a real HTTP status. A backend that answers
/// [`ErrorKind::Finished`] (the client already has all of it) is left out;
/// when all of them do, the request is finished.
pub async fn open(
    backends: &[Arc<dyn Backend>],
    contexts: &[RequestContext],
) -> Result<Merged, BackendError> {
    let opened = future::join_all(backends.iter().zip(contexts).map(|(b, ctx)| b.open(ctx))).await;
    let mut streams: Vec<(usize, EventStream)> = Vec::with_capacity(opened.len());
    let mut finished = None;
    for (index, result) in opened.into_iter().enumerate() {
        match result {
            Ok(stream) => streams.push((index, stream)),
            Err(e) if e.kind == ErrorKind::Finished => finished = Some(e),
            Err(e) => return Err(e),
        }
    }
    if streams.is_empty() {
        if let Some(finished) = finished {
            return Err(finished);
        }
    }
    Ok(futures::stream::select_all(streams.into_iter().map(
        |(index, stream)| stream.map(move |item| (index, item)).boxed(),
    )))
}
