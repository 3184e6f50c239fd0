//! The requests in flight that hooks share (`delivery.max_shared_in_flight`).
//!
//! Each hook's concurrency limit follows its own target, and on its own
//! it cannot see that the process is the bottleneck: 1,000 busy hooks to
//! one fast receiver each grew to 8 or 9 requests in flight, 8,500
//! connections and 480 MiB, while one request each delivered as many per
//! second in a third of the memory. So every hook may always have one
//! request in flight (no hook ever waits for another's), and requests
//! beyond each hook's first take a permit from one pool for all hooks.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The pool of shared permits; cloning shares it.
#[derive(Clone)]
pub(in crate::delivery) struct SharedInFlight {
    permits: Arc<Semaphore>,
}

impl SharedInFlight {
    pub(in crate::delivery) fn new(permits: usize) -> SharedInFlight {
        SharedInFlight {
            permits: Arc::new(Semaphore::new(permits)),
        }
    }

    /// A hook's share of the pool.
    pub(super) fn share(&self) -> Share {
        Share {
            pool: self.clone(),
            held: None,
        }
    }
}

/// The shared permits one hook holds: one per request it has in flight
/// beyond its first.
pub(super) struct Share {
    pool: SharedInFlight,
    held: Option<OwnedSemaphorePermit>,
}

impl Share {
    /// Permits held.
    pub(super) fn held(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// The requests the hook may have in flight now: its first, and one
    /// per permit held, after taking what it wants (to have `wanted` in
    /// flight, within `limit`) of what is free, without waiting.
    pub(super) fn allowed(&mut self, wanted: usize, limit: usize) -> usize {
        let wanted = wanted.min(limit).max(1);
        let missing = (wanted - 1).saturating_sub(self.held());
        let take = missing.min(self.pool.permits.available_permits());
        if take > 0 {
            if let Ok(more) = Arc::clone(&self.pool.permits).try_acquire_many_owned(take as u32) {
                self.add(more);
            }
        }
        (1 + self.held()).min(limit)
    }

    /// Give back the permits beyond what `running` requests need.
    pub(super) fn keep_for(&mut self, running: usize) {
        let needed = running.saturating_sub(1);
        if self.held() > needed {
            match needed {
                0 => self.held = None,
                n => {
                    if let Some(held) = self.held.as_mut() {
                        // Dropped at once: back to the pool.
                        drop(held.split(held.num_permits() - n));
                    }
                }
            }
        }
    }

    /// Wait for one more permit (FIFO among the hooks that wait).
    pub(super) async fn one_more(pool: SharedInFlight) -> Option<OwnedSemaphorePermit> {
        pool.permits.acquire_owned().await.ok()
    }

    pub(super) fn pool(&self) -> SharedInFlight {
        self.pool.clone()
    }

    pub(super) fn add(&mut self, more: OwnedSemaphorePermit) {
        match self.held.as_mut() {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_always_has_its_first_request_and_shares_the_rest() {
        let pool = SharedInFlight::new(3);
        let mut a = pool.share();
        let mut b = pool.share();
        assert_eq!(a.allowed(10, 8), 4, "its first and all 3 shared");
        assert_eq!(b.allowed(10, 8), 1, "its first, with the pool empty");
        a.keep_for(2);
        assert_eq!(a.held(), 1);
        assert_eq!(b.allowed(10, 8), 3, "the 2 given back");
        a.keep_for(1);
        assert_eq!(a.allowed(1, 8), 1, "a single request needs no permit");
        assert_eq!(a.allowed(10, 2), 2, "never past the hook's own limit");
        b.keep_for(0);
        assert_eq!(b.held(), 0);
        assert_eq!(pool.permits.available_permits(), 2);
    }
}
