//! What a backend counts about its upstream and its slow clients, for the
//! gateway's metrics.
//!
//! A backend that connects upstream or shares a buffer among its clients
//! keeps a [`BackendStats`] and returns it from [`Backend::stats`]; the
//! gateway reads the counters when it is scraped. Plain atomics: the backend
//! needs no metrics library, and each backend instance (one per route and
//! backend name) has its own, so two gateways in one process never mix.
//!
//! [`Backend::stats`]: crate::Backend::stats

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one backend instance. Every count only grows.
#[derive(Debug)]
pub struct BackendStats {
    kind: &'static str,
    reconnects: AtomicU64,
    failed_reconnects: AtomicU64,
    lagged: AtomicU64,
    dropped: AtomicU64,
}

/// The counters at one moment (see [`BackendStats`]'s methods for what each
/// counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Upstream connections made again after one was lost.
    pub reconnects: u64,
    /// Attempts to connect again that failed.
    pub failed_reconnects: u64,
    /// Times a client fell behind the shared buffer and was caught up.
    pub lagged: u64,
    /// Clients whose stream ended because they fell too far behind.
    pub dropped: u64,
}

impl BackendStats {
    /// Counters for a backend of type `kind` (`"http"`, as in the config).
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            reconnects: AtomicU64::new(0),
            failed_reconnects: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// The backend's type, as the config names it.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// An upstream connection was made again after one was lost.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt to connect upstream again failed.
    pub fn reconnect_failed(&self) {
        self.failed_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A client fell further behind than the shared buffer holds, and is
    /// caught up from the upstream.
    pub fn lagged(&self) {
        self.lagged.fetch_add(1, Ordering::Relaxed);
    }

    /// A client fell further behind than the backend catches up: its stream
    /// ends with a `lagged` error.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            reconnects: self.reconnects.load(Ordering::Relaxed),
            failed_reconnects: self.failed_reconnects.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}
