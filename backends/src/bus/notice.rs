//! What a bus tells a client in the middle of its stream: that it fell
//! too far behind, that entries it had not read are gone, that the bus
//! numbers its entries anew, that an entry cannot be read. Each is an error
//! event whose `resume_id` is where the stream goes on after it, so that a
//! client (or `EventSource`, which gets it as the event's id) resumes
//! exactly there; the message says the same in words.

use std::fmt::Display;

use crate::{BackendError, ErrorKind};

/// The client fell further behind than it may catch up: its stream ends,
/// and it reconnects with `at`, the last entry it got.
pub fn lagged(at: impl Display) -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        format!("the client fell too far behind; reconnect with Last-Event-ID {at}"),
    )
    .with_resume_id(at.to_string())
}

/// Entries after `after` the client had not read, up to `through`, are gone;
/// the stream goes on with the oldest entry left.
pub fn gap(after: impl Display, through: impl Display) -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        format!(
            "entries after {after} (up to {through}) were removed from the stream \
             (trimmed, expired, deleted, or lost in a restart) before this client read them; \
             the stream goes on with the oldest entry left"
        ),
    )
    .with_resume_id(after.to_string())
}

/// The bus no longer knows `after`: the stream was made again or lost its
/// entries, and numbers them anew. The stream goes on from `origin`, the
/// start of what the bus holds now.
pub fn reset(after: impl Display, origin: impl Display) -> BackendError {
    BackendError::new(
        ErrorKind::Lagged,
        format!(
            "the stream no longer knows id {after}: it was made again or lost its entries \
             (a restart without persistence) and numbers them anew; what it held after {after} \
             is gone, and the stream goes on from the start of what it holds"
        ),
    )
    .with_resume_id(origin.to_string())
}

/// The entry at `at` cannot be made an event (`why`); the stream goes on
/// after it.
pub fn undecodable(at: impl Display, why: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Upstream,
        format!("entry {at} cannot be read: {why}; the stream goes on after it"),
    )
    .with_resume_id(at.to_string())
}
