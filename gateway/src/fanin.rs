//! Fan-in: open every backend of a route at once and merge their events as
//! they come.

use backends::{BackendError, ErrorKind, Event, EventStream, RequestContext};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt, future};

use crate::route::Route;

/// An event or a failure, tagged with the index of the backend it came from.
pub type Tagged = (usize, Result<Event, BackendError>);

/// The merged events of a route's backends. It ends when every backend has
/// ended; dropping it drops, and so stops, every backend's stream.
///
/// A single backend's stream is read as it is, tagged as it is polled:
/// merging costs an allocation per event (`SelectAll` re-queues the stream
/// after each item), and a `map` around it one more call.
pub enum Merged {
    One(usize, EventStream),
    Many(SelectAll<BoxStream<'static, Tagged>>),
}

impl std::fmt::Debug for Merged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::One(..) => f.write_str("Merged::One"),
            Self::Many(all) => write!(f, "Merged::Many({})", all.len()),
        }
    }
}

impl Stream for Merged {
    type Item = Tagged;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Tagged>> {
        match self.get_mut() {
            Self::One(index, stream) => stream
                .poll_next_unpin(cx)
                .map(|item| item.map(|item| (*index, item))),
            Self::Many(all) => all.poll_next_unpin(cx),
        }
    }
}

/// Opens every backend of `route` concurrently, `contexts[i]` for backend `i`.
///
/// The first failure to open fails the whole request at once (it can still
/// become a real HTTP status) and drops the backends already open; so does a
/// backend that takes longer than the route's `open_timeout` (504). A backend
/// that answers [`ErrorKind::Finished`] (the client already has all of it) is
/// left out; when all of them do, the request is finished. A failure names
/// the index of the backend that failed (none when all were finished).
pub async fn open(
    route: &Route,
    contexts: &[RequestContext],
) -> Result<Merged, (Option<usize>, BackendError)> {
    let timeout = route.open_timeout;
    let opening = route
        .backends
        .iter()
        .zip(contexts)
        .zip(route.sources.iter())
        .enumerate()
        .map(|(index, ((backend, ctx), name))| async move {
            match tokio::time::timeout(timeout, backend.open(ctx)).await {
                Ok(Ok(stream)) => Ok(Some((index, stream))),
                Ok(Err(e)) if e.kind == ErrorKind::Finished => Ok(None),
                Ok(Err(e)) => Err((Some(index), e)),
                Err(_) => Err((
                    Some(index),
                    BackendError::new(
                        ErrorKind::Timeout,
                        format!("backend {name} did not open within {timeout:?}"),
                    ),
                )),
            }
        });
    let mut opened: Vec<(usize, EventStream)> = future::try_join_all(opening)
        .await?
        .into_iter()
        .flatten()
        .collect();
    if opened.is_empty() {
        return Err((None, BackendError::finished()));
    }
    if opened.len() == 1 {
        let (index, stream) = opened.remove(0);
        return Ok(Merged::One(index, stream));
    }
    let tagged = opened
        .into_iter()
        .map(|(index, stream)| stream.map(move |item| (index, item)).boxed());
    Ok(Merged::Many(futures::stream::select_all(tagged)))
}
