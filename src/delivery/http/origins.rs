//! First contact with an https origin under `delivery.http_version =
//! "auto"`: one request connects first, the rest of a burst follows once
//! it has a connection.
//!
//! Under `auto` the pool learns whether a target speaks HTTP/2 only when
//! a TLS handshake ends (ALPN), so it cannot hold back the connects of a
//! burst the way it does under `http2`: each request in the burst opens
//! its own. Those that learn h2 while another holds the pool's h2 lock
//! are closed unused, but one whose handshake ends on another worker
//! thread just after the first h2 connection entered the pool carries its
//! request on a second connection, and a few such races give a target
//! that offers h2 several connections where one multiplexed connection
//! was the point. Letting one request connect first costs the rest of a
//! burst that connection's handshakes (TCP and TLS), once per origin and
//! idle period; by then an h2 connection is in the pool for them to
//! share. The others are released together, not one by one, so one of
//! them whose task is busy elsewhere holds up nobody.
//!
//! This covers first contact only: a connection that ends later (a
//! GOAWAY, a failed ping) is replaced by whichever requests need one, as
//! the pool does, which can again open more than one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Origins above this count are pruned of those neither in use nor heard
/// from lately, so hostile `webhook` rows cycling through hosts cannot
/// grow the map without bound.
const PRUNE_ABOVE: usize = 1024;

/// The https origins (host and port) the pool has sent to under `auto`.
pub(in crate::delivery) struct Origins {
    known: Mutex<HashMap<String, Arc<Origin>>>,
    /// The zero of `Origin::heard_at`.
    epoch: Instant,
    /// How long after a connection or an answer the pool probably still
    /// holds a connection to the origin: the pool's idle timeout.
    fresh_for: Duration,
}

struct Origin {
    /// When a request to the origin last got a connection or an answer,
    /// in milliseconds after `Origins::epoch` plus one (0: never).
    heard_at: AtomicU64,
    /// A request is connecting first.
    probing: AtomicBool,
    /// Wakes the requests waiting for the first one.
    probed: Notify,
}

/// Leave to send one request to an origin.
pub(in crate::delivery) struct Admission {
    origin: Arc<Origin>,
    epoch: Instant,
    /// This request connects first; the others wait until it has a
    /// connection, or has failed (then the next goes first).
    first: bool,
}

impl Admission {
    /// Whether this request is the one sent first.
    pub(in crate::delivery) fn is_first(&self) -> bool {
        self.first
    }

    /// The request has a connection, or an answer: the pool knows the
    /// origin's version and, for h2, holds the connection to share.
    pub(in crate::delivery) fn heard(&mut self) {
        self.origin
            .heard_at
            .store(millis_since(self.epoch) + 1, Ordering::Release);
        self.release();
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.first) {
            self.origin.probing.store(false, Ordering::Release);
            self.origin.probed.notify_waiters();
        }
    }
}

/// A first request that ends without a connection lets the waiting ones
/// try again (one of them first).
impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

impl Origin {
    /// Heard from within `fresh_for` of `now` (milliseconds after the
    /// epoch).
    fn heard_lately(&self, now: u64, fresh_for: Duration) -> bool {
        match self.heard_at.load(Ordering::Acquire) {
            0 => false,
            at => u128::from((now + 1).saturating_sub(at)) < fresh_for.as_millis(),
        }
    }
}

impl Origins {
    /// Origins whose connection is trusted for `fresh_for` after it was
    /// last heard from: the pool's idle timeout.
    pub(in crate::delivery) fn new(fresh_for: Duration) -> Origins {
        Origins {
            known: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            fresh_for,
        }
    }

    fn heard_lately(&self, origin: &Origin) -> bool {
        origin.heard_lately(millis_since(self.epoch), self.fresh_for)
    }

    /// Waits until a request to `authority` may go: at once when it was
    /// heard from lately or no request is connecting to it first (this one
    /// then goes first), else until that one has a connection or failed.
    /// `None`: `deadline` came first.
    pub(in crate::delivery) async fn admit(
        &self,
        authority: &str,
        deadline: Instant,
    ) -> Option<Admission> {
        let origin = self.origin(authority);
        let admission = |first| Admission {
            origin: origin.clone(),
            epoch: self.epoch,
            first,
        };
        loop {
            if self.heard_lately(&origin) {
                return Some(admission(false));
            }
            // Registered before looking, so a release in between still
            // wakes this request.
            let probed = origin.probed.notified();
            tokio::pin!(probed);
            probed.as_mut().enable();
            if origin
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(admission(true));
            }
            tokio::time::timeout_at(deadline, probed).await.ok()?;
        }
    }

    fn origin(&self, authority: &str) -> Arc<Origin> {
        // A poisoned map is only ever half-pruned: still a valid map.
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(origin) = known.get(authority) {
            return origin.clone();
        }
        if known.len() >= PRUNE_ABOVE {
            let (now, fresh_for) = (millis_since(self.epoch), self.fresh_for);
            known.retain(|_, o| Arc::strong_count(o) > 1 || o.heard_lately(now, fresh_for));
        }
        let origin = Arc::new(Origin {
            heard_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probed: Notify::new(),
        });
        known.insert(authority.to_owned(), origin.clone());
        origin
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH_FOR: Duration = Duration::from_secs(20);

    /// Polls `f` once: whether it is still pending.
    async fn pending<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut f = Some(f);
        std::future::poll_fn(|cx| {
            let f = f.as_mut().expect("polled once");
            std::task::Poll::Ready(f.as_mut().poll(cx).is_pending())
        })
        .await
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_burst_to_a_new_origin_waits_for_the_first_connection() {
        let origins = Origins::new(FRESH_FOR);
        let first = origins.admit("a:443", soon()).await.unwrap();
        // A second request waits while the first is out...
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), origins.admit("a:443", soon())).await;
        assert!(
            waiting.is_err(),
            "a second request went before the first connected"
        );
        // ...another origin does not.
        let other = origins.admit("b:443", soon()).await.unwrap();
        drop(other);

        let second = tokio::spawn({
            let origins = Arc::new(origins);
            let o = origins.clone();
            async move { (o.admit("a:443", soon()).await.is_some(), origins) }
        });
        let mut first = first;
        first.heard();
        assert!(
            !first.is_first(),
            "a first request heard from is no longer first"
        );
        let (admitted, origins) = second.await.unwrap();
        assert!(admitted);
        // Once heard from, requests go at once, side by side.
        let a = origins.admit("a:443", soon()).await.unwrap();
        let b = tokio::time::timeout(Duration::from_millis(50), origins.admit("a:443", soon()))
            .await
            .expect("an origin heard from held a request back");
        assert!(b.is_some());
        drop(a);
    }

    #[tokio::test]
    async fn a_first_request_without_a_connection_lets_the_next_go_first() {
        let origins = Origins::new(FRESH_FOR);
        let failed = origins.admit("a:443", soon()).await.unwrap();
        drop(failed); // a connect error: nothing learned
        let next = origins.admit("a:443", soon()).await.unwrap();
        assert!(next.is_first(), "the next request is a first again");
    }

    /// Waiters are released together: one whose task is not polled (busy
    /// elsewhere) does not hold up the rest, and when the first fails one
    /// of them goes first while the others wait again.
    #[tokio::test]
    async fn waiters_are_released_together() {
        let origins = Origins::new(FRESH_FOR);
        let first = origins.admit("a:443", soon()).await.unwrap();
        // Registered, then never polled again.
        let mut stalled = Box::pin(origins.admit("a:443", soon()));
        assert!(pending(stalled.as_mut()).await);
        let mut waiting = Box::pin(origins.admit("a:443", soon()));
        assert!(pending(waiting.as_mut()).await);

        drop(first); // failed: nothing heard
        let next = tokio::time::timeout(Duration::from_millis(200), waiting.as_mut())
            .await
            .expect("a waiter stayed held behind one that is not polled")
            .unwrap();
        assert!(next.is_first(), "a failed first hands over to a waiter");
        let mut other = Box::pin(origins.admit("a:443", soon()));
        assert!(pending(other.as_mut()).await);

        let mut next = next;
        next.heard();
        let other = tokio::time::timeout(Duration::from_millis(200), other)
            .await
            .expect("a request waited on after the first connected")
            .unwrap();
        assert!(!other.is_first());
        drop(stalled);
    }

    #[tokio::test]
    async fn waiting_ends_at_the_deadline() {
        let origins = Origins::new(FRESH_FOR);
        let _first = origins.admit("a:443", soon()).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(origins.admit("a:443", deadline).await.is_none());
    }

    #[tokio::test]
    async fn an_origin_silent_past_the_idle_timeout_is_first_again() {
        let origins = Origins::new(FRESH_FOR);
        let mut first = origins.admit("a:443", soon()).await.unwrap();
        first.heard();
        drop(first);
        let again = origins.admit("a:443", soon()).await.unwrap();
        assert!(!again.is_first());
        drop(again);
        // The same connection, seen from FRESH_FOR and a bit later.
        let later = Origins {
            known: Mutex::new(origins.known.lock().unwrap().clone()),
            epoch: origins
                .epoch
                .checked_sub(FRESH_FOR + Duration::from_millis(10))
                .expect("a clock started a while ago"),
            fresh_for: FRESH_FOR,
        };
        assert!(later.admit("a:443", soon()).await.unwrap().is_first());
    }

    #[tokio::test]
    async fn origins_neither_in_use_nor_heard_from_are_pruned() {
        let origins = Origins::new(FRESH_FOR);
        let held = origins.admit("held:443", soon()).await.unwrap();
        for i in 0..PRUNE_ABOVE * 3 {
            drop(origins.admit(&format!("h{i}:443"), soon()).await.unwrap());
        }
        assert!(
            origins.len() <= PRUNE_ABOVE + 1,
            "{} origins",
            origins.len()
        );
        assert!(Arc::ptr_eq(&origins.origin("held:443"), &held.origin));
    }
}
