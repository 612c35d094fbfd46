//! A problem with a config value, as every `validate` reports it: a leaf
//! that backends, publishers and the gateway's config share, so that none of
//! them reaches into another's module for it.

use std::fmt;

/// A problem with a config value: which key, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key, relative to the table that was validated (`token_pause`).
    pub key: String,
    /// Why the value is wrong, and what would be right.
    pub reason: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}
