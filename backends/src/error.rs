//! Why a backend could not open or continue a stream.

use std::fmt;

/// What kind of failure a [`BackendError`] is. It decides the HTTP status
/// when the failure happens before the first byte, and whether a client should
/// retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong (bad body, bad `Last-Event-ID`): 400, do not retry.
    BadRequest,
    /// The requested stream does not exist: 404.
    NotFound,
    /// The client already has every event of a finished stream (it resumed
    /// after the last one): 204, which tells `EventSource` to stop reconnecting.
    Finished,
    /// The upstream answered with an error: 502, may retry.
    Upstream,
    /// The upstream did not answer in time: 504, may retry.
    Timeout,
    /// The backend is overloaded or not ready: 503, retry later.
    Unavailable,
    /// A bug or an unexpected state in the gateway: 500.
    Internal,
    /// The client fell further behind the stream than the gateway holds for
    /// it; it must reconnect from the id the message names: 503.
    Lagged,
}

impl ErrorKind {
    /// The stable, machine-readable name of the kind, used in JSON bodies and
    /// error events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::Finished => "finished",
            Self::Upstream => "upstream",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Lagged => "lagged",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend failure, with a message meant for the client.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind}: {message}")]
pub struct BackendError {
    /// What kind of failure it is.
    pub kind: ErrorKind,
    /// What went wrong, in words a client can act on.
    pub message: String,
    /// For a failure in the middle of a stream that tells where the client
    /// stands (a bus's `lagged` error, a gap, an entry it cannot decode):
    /// the backend's id that resumes exactly where the stream goes on after
    /// it. The gateway sends it as the error event's `resume_id` (and SSE
    /// `id`), so that a client need not read it out of the message.
    pub resume_id: Option<String>,
}

impl BackendError {
    /// An error of a kind with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            resume_id: None,
        }
    }

    /// The same error, naming the id the client resumes from after it.
    pub fn with_resume_id(mut self, id: impl Into<String>) -> Self {
        self.resume_id = Some(id.into());
        self
    }

    /// A client error (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// The client resumed after the last event of a finished stream (204).
    pub fn finished() -> Self {
        Self::new(
            ErrorKind::Finished,
            "the stream has ended; nothing follows the given Last-Event-ID",
        )
    }
}

/// A request value quoted in an error message, cut to [`Shown::MAX_CHARS`]:
/// an answer may say what it refused, but never hand a client's bytes back
/// in bulk (an 8 KiB path, a 32 KiB `Last-Event-ID`).
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a>(pub &'a str);

impl Shown<'_> {
    /// The most characters of a value shown.
    pub const MAX_CHARS: usize = 64;
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(Self::MAX_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_shown_cut_and_quoted() {
        assert_eq!(Shown("abc").to_string(), "\"abc\"");
        assert_eq!(Shown("a\"b\n").to_string(), "\"a\\\"b\\n\"");
        let long = "é".repeat(5000);
        let shown = Shown(&long).to_string();
        assert!(
            shown.starts_with(&format!("\"{}\"…", "é".repeat(64))),
            "{shown}"
        );
        assert!(shown.ends_with("(10000 bytes)"), "{shown}");
    }
}
