//! What can stop a scenario before its checks: the gateway not starting, a
//! socket that cannot be made, a broker that is not there. A criterion that
//! is not met is not an error: it is a failed check in the report.

use std::io;

/// Why a scenario could not run to its checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway binary did not start, or exited when it should not have.
    #[error("gateway: {0}")]
    Gateway(String),
    /// A socket, file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// Redis (the churn scenario's broker) did not answer as expected.
    #[error("redis: {0}")]
    Redis(String),
    /// The gateway answered something a scenario cannot go on from (a
    /// stream that did not open, metrics that do not parse).
    #[error("{0}")]
    Unexpected(String),
}

impl Error {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(error.to_string())
    }
}
