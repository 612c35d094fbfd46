//! The shutdown as every open stream and connection waits for it, at the
//! price of an atomic load per poll.
//!
//! A stream's body and its connection are polled once per delivery, and
//! each used to poll the shutdown token's future too: a mutex for
//! `is_cancelled` and another for the token's waiter list (one list for all
//! streams), about 180 instructions each time, 8 % of a delivery under
//! callgrind. Here the token's future is polled with a waker of our own
//! that raises a flag and wakes the task: between wake-ups a poll reads the
//! flag, and polls the token's future again only when the flag is up or the
//! task's waker changed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Resolves when `F` (the gateway's token's future, boxed or pinned in
/// place) does, like it.
pub struct Shutdown<F> {
    cancelled: F,
    flag: Arc<Flag>,
    /// The token's future holds our waker (it was polled and is pending).
    armed: bool,
}

/// A stream's wait for the shutdown.
pub type Owned = Shutdown<Pin<Box<WaitForCancellationFutureOwned>>>;

/// Raised by the token's future when it has news; wakes the task.
#[derive(Default)]
struct Flag {
    raised: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Owned {
    /// Waits for `cancelled` (the gateway's token's future).
    pub fn owned(cancelled: WaitForCancellationFutureOwned) -> Self {
        Self::new(Box::pin(cancelled))
    }
}

impl<F> Shutdown<F> {
    /// Waits for `cancelled`.
    pub fn new(cancelled: F) -> Self {
        Self {
            cancelled,
            flag: Arc::default(),
            armed: false,
        }
    }
}

impl<F> std::fmt::Debug for Shutdown<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl<F: Future + Unpin> Future for Shutdown<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // The task polling now is the one to wake (a waker that will wake
        // the same task is not cloned again).
        this.flag.task.register(cx.waker());
        if this.armed && !this.flag.raised.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(&this.flag));
        let polled = Pin::new(&mut this.cancelled).poll(&mut Context::from_waker(&waker));
        this.armed = polled.is_pending();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker;
    use std::sync::atomic::AtomicUsize;
    use tokio_util::sync::CancellationToken;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(shutdown: &mut Pin<Box<Owned>>, waker: &Waker) -> Poll<()> {
        shutdown.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn the_task_polled_last_is_woken_and_then_it_resolves() {
        let token = CancellationToken::new();
        let mut shutdown = Box::pin(Shutdown::owned(token.clone().cancelled_owned()));
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        for _ in 0..3 {
            let waker = Waker::from(Arc::clone(&first));
            assert!(poll(&mut shutdown, &waker).is_pending());
        }
        // Polled by another task now: that one is to be woken.
        let waker = Waker::from(Arc::clone(&second));
        assert!(poll(&mut shutdown, &waker).is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut shutdown, &waker).is_ready());
    }

    #[test]
    fn a_token_cancelled_before_the_first_poll_resolves_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut shutdown = Box::pin(Shutdown::owned(token.cancelled_owned()));
        let waker = noop_waker();
        assert!(poll(&mut shutdown, &waker).is_ready());
    }

    #[test]
    fn a_poll_without_news_does_not_touch_the_token() {
        let token = CancellationToken::new();
        let mut shutdown = Box::pin(Shutdown::owned(token.clone().cancelled_owned()));
        let waker = noop_waker();
        assert!(poll(&mut shutdown, &waker).is_pending());
        assert!(shutdown.armed);
        // Cancelled while nobody polls: the flag is up, the next poll sees it.
        token.cancel();
        assert!(shutdown.flag.raised.load(Ordering::SeqCst));
        assert!(poll(&mut shutdown, &waker).is_ready());
    }
}
