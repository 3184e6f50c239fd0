//! First contact with an https origin under `delivery.http_version =
//! "auto"`: one request goes first, the rest of a burst follows its
//! answer.
//!
//! Under `auto` the pool learns whether a target speaks HTTP/2 only when
//! a TLS handshake ends (ALPN), so it cannot hold back the connects of a
//! burst the way it does under `http2`: each request in the burst opens
//! its own. Those that learn h2 while another holds the pool's h2 lock
//! are closed unused, but one whose handshake ends on another worker
//! thread just after the first h2 connection entered the pool carries its
//! request on a second connection, and a few such races give a target
//! that offers h2 several connections where one multiplexed connection
//! was the point. Sending one request first and the rest after its
//! answer costs a burst one round trip, once per origin and pool idle
//! period, and leaves the pool one connection to share (h2) or a known
//! version to open more for (HTTP/1.1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// Origins above this count are pruned of those neither answering lately
/// nor in use, so hostile `webhook` rows cycling through hosts cannot
/// grow the map without bound.
const PRUNE_ABOVE: usize = 1024;

/// The https origins the pool has sent to under `auto`.
pub(super) struct Origins {
    known: Mutex<HashMap<String, Arc<Origin>>>,
    /// The zero of `Origin::answered_at`.
    epoch: Instant,
    /// How long after its last answer an origin's h2 connection may still
    /// be in the pool: the pool's idle timeout.
    fresh_for: Duration,
}

struct Origin {
    /// When the origin last answered, in milliseconds after
    /// `Origins::epoch` plus one (0: never).
    answered_at: AtomicU64,
    /// Held by the one request sent while the version is unknown.
    first: Arc<tokio::sync::Mutex<()>>,
}

/// Leave to send one request to an origin; tell it of the answer.
pub(super) struct Admission {
    origin: Arc<Origin>,
    epoch: Instant,
    /// Held while this is the request sent first.
    _first: Option<OwnedMutexGuard<()>>,
}

impl Admission {
    /// The origin answered: the pool now knows its version and holds a
    /// connection to it.
    pub(super) fn answered(&self) {
        self.origin
            .answered_at
            .store(millis_since(self.epoch) + 1, Ordering::Relaxed);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

impl Origin {
    /// Answered within `fresh_for`: its connection, if the version is h2,
    /// is still in the pool.
    fn answered_lately(&self, epoch: Instant, fresh_for: Duration) -> bool {
        match self.answered_at.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let ago = (millis_since(epoch) + 1).saturating_sub(at);
                u128::from(ago) < fresh_for.as_millis()
            }
        }
    }
}

impl Origins {
    /// Origins whose answer is trusted for `fresh_for`: the pool's idle
    /// timeout.
    pub(super) fn new(fresh_for: Duration) -> Origins {
        Origins {
            known: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            fresh_for,
        }
    }

    /// Waits until a request to `authority` may go: at once when it
    /// answered lately, else when no other request is its first, or the
    /// first has been answered. `None`: `deadline` came first.
    pub(super) async fn admit(&self, authority: &str, deadline: Instant) -> Option<Admission> {
        let origin = self.origin(authority);
        let admission = |first| Admission {
            origin: origin.clone(),
            epoch: self.epoch,
            _first: first,
        };
        if origin.answered_lately(self.epoch, self.fresh_for) {
            return Some(admission(None));
        }
        let first = tokio::time::timeout_at(deadline, origin.first.clone().lock_owned())
            .await
            .ok()?;
        if origin.answered_lately(self.epoch, self.fresh_for) {
            return Some(admission(None));
        }
        Some(admission(Some(first)))
    }

    fn origin(&self, authority: &str) -> Arc<Origin> {
        // A poisoned map is only ever half-pruned: still a valid map.
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(origin) = known.get(authority) {
            return origin.clone();
        }
        if known.len() >= PRUNE_ABOVE {
            let (epoch, fresh_for) = (self.epoch, self.fresh_for);
            known.retain(|_, o| Arc::strong_count(o) > 1 || o.answered_lately(epoch, fresh_for));
        }
        let origin = Arc::new(Origin {
            answered_at: AtomicU64::new(0),
            first: Arc::new(tokio::sync::Mutex::new(())),
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

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_burst_to_a_new_origin_waits_for_the_first_answer() {
        let origins = Origins::new(FRESH_FOR);
        let first = origins.admit("a:443", soon()).await.unwrap();
        // A second request waits while the first is out...
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), origins.admit("a:443", soon())).await;
        assert!(waiting.is_err(), "a second request went before an answer");
        // ...another origin does not.
        let other = origins.admit("b:443", soon()).await.unwrap();
        drop(other);

        let second = tokio::spawn({
            let origins = Arc::new(origins);
            let o = origins.clone();
            async move { (o.admit("a:443", soon()).await.is_some(), origins) }
        });
        first.answered();
        drop(first);
        let (admitted, origins) = second.await.unwrap();
        assert!(admitted);
        // Once answered, requests go at once, side by side.
        let a = origins.admit("a:443", soon()).await.unwrap();
        let b = tokio::time::timeout(Duration::from_millis(50), origins.admit("a:443", soon()))
            .await
            .expect("an answered origin held a request back");
        assert!(b.is_some());
        drop(a);
    }

    #[tokio::test]
    async fn a_first_request_without_an_answer_lets_the_next_go_first() {
        let origins = Origins::new(FRESH_FOR);
        let failed = origins.admit("a:443", soon()).await.unwrap();
        drop(failed); // a connect error: nothing learned
        let next = origins.admit("a:443", soon()).await.unwrap();
        assert!(next._first.is_some(), "the next request is a first again");
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
        let first = origins.admit("a:443", soon()).await.unwrap();
        first.answered();
        drop(first);
        assert!(origins
            .admit("a:443", soon())
            .await
            .unwrap()
            ._first
            .is_none());
        // The same answer, seen from FRESH_FOR and a bit later.
        let later = Origins {
            known: Mutex::new(origins.known.lock().unwrap().clone()),
            epoch: origins
                .epoch
                .checked_sub(FRESH_FOR + Duration::from_millis(10))
                .expect("a clock started a while ago"),
            fresh_for: FRESH_FOR,
        };
        assert!(later.admit("a:443", soon()).await.unwrap()._first.is_some());
    }

    #[tokio::test]
    async fn origins_neither_in_use_nor_answering_are_pruned() {
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
