//! The limits every bus backend shares, under the same config keys, checked
//! by one `validate`.

use crate::problem::Problem;

/// Largest `history` accepted: a client holds its history in memory.
pub const MAX_HISTORY: usize = 1000;
/// Largest `buffer` accepted.
pub const MAX_BUFFER: usize = 1 << 20;

/// How much a bus backend holds and reads for its clients. Each bus
/// backend's config has these keys (`history`, `buffer`, `max_catchup`,
/// `max_keys`) beside its own; see [`crate::bus`] for what each bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries sent on connect to a client without `Last-Event-ID`: the
    /// last N. At most [`MAX_HISTORY`].
    pub history: usize,
    /// Entries held in each key's shared buffer for clients that read
    /// slower than the key moves.
    pub buffer: usize,
    /// The most entries a client may read from the bus to catch up (after
    /// falling behind the buffer, or resuming from an old id) before its
    /// stream ends with `lagged`. At least 1.
    pub max_catchup: usize,
    /// Keys a backend reads at once (each costs a reader, and on some
    /// brokers a connection or a consumer); one more is a 503.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            history: 0,
            buffer: 1024,
            max_catchup: 10_000,
            max_keys: 1000,
        }
    }
}

impl Limits {
    /// Every problem, keyed as in the backend's table.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.history > MAX_HISTORY {
            problems.push(Problem::new(
                "history",
                "at most 1000 (a client holds its history in memory)",
            ));
        }
        if !(1..=MAX_BUFFER).contains(&self.buffer) {
            problems.push(Problem::new("buffer", "from 1 to 1048576"));
        }
        if self.max_catchup == 0 {
            problems.push(Problem::new(
                "max_catchup",
                "at least 1 (with 0 a resumed stream would end at once, naming its own id)",
            ));
        }
        if self.max_keys == 0 {
            problems.push(Problem::new("max_keys", "at least 1"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_at_once() {
        assert!(Limits::default().validate().is_empty());
        let bad = Limits {
            history: 1001,
            buffer: 0,
            max_catchup: 0,
            max_keys: 0,
        };
        let keys: Vec<_> = bad.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["history", "buffer", "max_catchup", "max_keys"]);
    }
}
