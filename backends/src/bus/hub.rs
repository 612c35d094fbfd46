//! One reader per key: the registry of keys being read, each with its
//! broadcast buffer, and the [`Feed`] through which a broker's follow loop
//! fills it.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::registry::{Registered, Registry};
use super::{Bounds, Broker, Entry, Limits, Position};
use crate::{BackendError, ErrorKind, Event};

/// What a key's readers broadcast to its clients.
#[derive(Debug)]
pub(super) enum Item<P> {
    /// The next entry.
    Entry(Entry<P>),
    /// The bus numbers the key's entries anew (made again, or its entries
    /// lost): clients forget the positions they had.
    Reset,
    /// Entries the reader had not read yet, up to `through`, are gone
    /// (removed or lost while the reader was away).
    Gap { through: P },
}

/// The keys a backend reads, each shared by its clients.
pub(super) struct Hub<B: Broker> {
    pub(super) broker: Arc<B>,
    limits: Limits,
    /// The keys read now: a key leaves with its last client (it is a
    /// request value, and must not outlive the requests that use it).
    pub(super) channels: Registry<Channel<B::Position>>,
}

/// A key's channel as its clients hold it.
pub(super) type Shared<P> = Arc<Registered<Channel<P>>>;

/// One key's reader and its clients' buffer. The reader stops when the last
/// client drops its `Arc<Channel>`.
pub(super) struct Channel<P> {
    pub(super) key: String,
    pub(super) sender: broadcast::Sender<Arc<Item<P>>>,
    /// The last position the reader broadcast: where a client that wants
    /// only what comes next starts.
    delivered: Arc<Mutex<P>>,
    reader: tokio::task::AbortHandle,
}

impl<P> Drop for Channel<P> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl<P: Position> Channel<P> {
    pub(super) fn delivered(&self) -> P {
        *self.delivered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B: Broker> Hub<B> {
    pub(super) fn new(broker: B, limits: Limits) -> Self {
        Self {
            broker: Arc::new(broker),
            limits,
            channels: Registry::new(),
        }
    }

    pub(super) fn broker(&self) -> &B {
        &self.broker
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The key's channel, its reader started (after the key's end now) when
    /// it has none; 503 when `max_keys` keys are read already.
    pub(super) async fn channel(&self, key: &str) -> Result<Shared<B::Position>, BackendError> {
        if let Some(channel) = self.channels.get(key) {
            return Ok(channel);
        }
        self.room_for_one_more()?;
        // The reader starts at the key's end now, so that a client's
        // catch-up (read after subscribing) and the reader overlap rather
        // than leave a gap. A key that cannot be read fails here, as the
        // request's error.
        let bounds = self.broker.bounds(key).await?;
        let start = bounds.end.unwrap_or_default();
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(key) {
            return Ok(channel);
        }
        if channels.len() >= self.limits.max_keys {
            return Err(self.too_many());
        }
        let (sender, _) = broadcast::channel(self.limits.buffer);
        let delivered = Arc::new(Mutex::new(start));
        let feed = Feed {
            sender: sender.clone(),
            delivered: Arc::clone(&delivered),
            last: start,
            epoch: bounds.epoch,
        };
        let broker = Arc::clone(&self.broker);
        let owned = key.to_string();
        let reader = tokio::spawn(async move { broker.follow(&owned, feed).await }).abort_handle();
        let channel = Channel {
            key: key.to_string(),
            sender,
            delivered,
            reader,
        };
        Ok(channels.insert(key, channel))
    }

    fn room_for_one_more(&self) -> Result<(), BackendError> {
        if self.channels.lock().len() >= self.limits.max_keys {
            return Err(self.too_many());
        }
        Ok(())
    }

    fn too_many(&self) -> BackendError {
        BackendError::new(
            ErrorKind::Unavailable,
            format!(
                "this gateway reads {} keys already, its most; retry later",
                self.limits.max_keys
            ),
        )
    }
}

/// Where a broker's follow loop puts what it reads: the key's clients get
/// each entry once, in order, and hear from [`resync`](Self::resync) what
/// the bus lost while the loop was away.
#[derive(Debug)]
pub struct Feed<P> {
    sender: broadcast::Sender<Arc<Item<P>>>,
    delivered: Arc<Mutex<P>>,
    last: P,
    epoch: u64,
}

impl<P: Position> Feed<P> {
    /// The last position broadcast: the loop reads on after it.
    pub fn last(&self) -> P {
        self.last
    }

    /// Broadcasts an entry; one at or before [`last`](Self::last) (a repeat,
    /// as a consumer made again may send) is dropped.
    pub fn send(&mut self, entry: Entry<P>) {
        if entry.position <= self.last {
            return;
        }
        self.moved(entry.position);
        // Every client gets a clone of the event: they share its bytes.
        let entry = Entry {
            event: entry.event.map(Event::shared),
            ..entry
        };
        // No receiver is no error: clients come and go.
        let _ = self.sender.send(Arc::new(Item::Entry(entry)));
    }

    /// Compares the key's bounds, read after the loop was away (a
    /// reconnection, a consumer made again), with where it was. When the
    /// bus numbers anew (another epoch, or its end before `last`: the key
    /// made again, or emptied by a restart without persistence), clients
    /// are told and the loop starts over from the origin; when entries
    /// after `last` are gone, clients are told and the loop reads on.
    pub fn resync(&mut self, bounds: &Bounds<P>) {
        let origin = P::default();
        let renumbered = (bounds.epoch != 0 && self.epoch != 0 && bounds.epoch != self.epoch)
            || (self.last > origin && bounds.end.is_none_or(|end| end < self.last));
        if bounds.epoch != 0 {
            self.epoch = bounds.epoch;
        }
        if renumbered {
            tracing::warn!(was = %self.last, end = ?bounds.end, "The bus numbers the key's entries anew; following from the start");
            self.moved(origin);
            let _ = self.sender.send(Arc::new(Item::Reset));
        } else if let Some(through) = bounds.gone.filter(|gone| *gone > self.last) {
            if self.last > origin {
                tracing::warn!(after = %self.last, %through, "Entries were lost while the reader was away");
                let _ = self.sender.send(Arc::new(Item::Gap { through }));
            }
        }
    }

    fn moved(&mut self, to: P) {
        self.last = to;
        *self.delivered.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Data, Event};

    fn feed_at(last: u64, epoch: u64) -> (Feed<u64>, broadcast::Receiver<Arc<Item<u64>>>) {
        let (sender, receiver) = broadcast::channel(16);
        let feed = Feed {
            sender,
            delivered: Arc::new(Mutex::new(last)),
            last,
            epoch,
        };
        (feed, receiver)
    }

    fn bounds(end: Option<u64>, gone: Option<u64>, epoch: u64) -> Bounds<u64> {
        Bounds { end, gone, epoch }
    }

    fn entry(position: u64) -> Entry<u64> {
        Entry {
            position,
            event: Ok(Event::new(Data::text("x"))),
        }
    }

    #[test]
    fn repeats_are_dropped_and_the_position_is_shared() {
        let (mut feed, mut items) = feed_at(5, 0);
        feed.send(entry(5));
        feed.send(entry(6));
        assert!(matches!(&*items.try_recv().unwrap(), Item::Entry(e) if e.position == 6));
        assert!(items.try_recv().is_err());
        assert_eq!(*feed.delivered.lock().unwrap(), 6);
    }

    #[test]
    fn a_bus_that_numbers_anew_is_a_reset() {
        for after in [
            bounds(None, None, 0),    // the key is gone
            bounds(Some(3), None, 0), // its end is behind us
            bounds(Some(9), None, 2), // made again: another epoch
        ] {
            let (mut feed, mut items) = feed_at(5, 1);
            feed.resync(&after);
            assert!(
                matches!(&*items.try_recv().unwrap(), Item::Reset),
                "{after:?}"
            );
            assert_eq!(feed.last(), 0, "{after:?}: read from the start");
        }
    }

    #[test]
    fn entries_lost_past_the_reader_are_a_gap_and_the_rest_is_nothing() {
        let (mut feed, mut items) = feed_at(5, 1);
        feed.resync(&bounds(Some(9), Some(7), 1));
        assert!(matches!(
            &*items.try_recv().unwrap(),
            Item::Gap { through: 7 }
        ));
        assert_eq!(feed.last(), 5, "what is left after 5 is read");
        for quiet in [bounds(Some(9), Some(5), 1), bounds(Some(5), None, 0)] {
            feed.resync(&quiet);
            assert!(items.try_recv().is_err(), "{quiet:?}");
        }
        // A reader that started on an empty key has lost nothing of its own.
        let (mut fresh, mut items) = feed_at(0, 0);
        fresh.resync(&bounds(Some(9), Some(7), 0));
        assert!(items.try_recv().is_err());
    }
}
