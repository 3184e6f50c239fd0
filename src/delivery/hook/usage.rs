//! Call and error statistics as delivery records them: in memory, per
//! hook, until the store writes them to `webhook_usage`, in one batch,
//! about once a second and with every settled position it records (see
//! [`crate::store::progress`]): statistics cost nothing on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::registry::WebhookState;
use crate::text::{truncate_chars, LAST_ERROR_MAX_CHARS};

/// What happened to one hook since the last write.
#[derive(Debug, Default, Clone)]
pub struct UsageDelta {
    pub calls: i64,
    pub errors: i64,
    /// Failures since the last success in this batch.
    pub consecutive: i32,
    /// A success happened in this batch: the stored count restarts.
    pub reset: bool,
    pub last_error: Option<String>,
    pub last_call: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    pub last_failure: Option<SystemTime>,
    /// Answers that asked for less (429, 503 with Retry-After): calls, but
    /// not errors.
    pub throttled: i64,
    pub last_throttled: Option<SystemTime>,
    /// A state delivery decided (410 Gone, too many errors).
    pub new_state: Option<WebhookState>,
}

impl UsageDelta {
    /// `self` followed by `newer`.
    fn then(self, newer: UsageDelta) -> UsageDelta {
        UsageDelta {
            calls: self.calls + newer.calls,
            errors: self.errors + newer.errors,
            consecutive: if newer.reset {
                newer.consecutive
            } else {
                self.consecutive + newer.consecutive
            },
            reset: self.reset || newer.reset,
            last_error: newer.last_error.or(self.last_error),
            last_call: newer.last_call.or(self.last_call),
            last_success: newer.last_success.or(self.last_success),
            last_failure: newer.last_failure.or(self.last_failure),
            throttled: self.throttled + newer.throttled,
            last_throttled: newer.last_throttled.or(self.last_throttled),
            new_state: newer.new_state.or(self.new_state),
        }
    }
}

/// Outcomes not yet written, per webhook_id.
#[derive(Debug, Clone, Default)]
pub struct UsageBook(Arc<Mutex<HashMap<i32, UsageDelta>>>);

impl UsageBook {
    fn with<R>(&self, id: i32, f: impl FnOnce(&mut UsageDelta) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of
        // counters; the counters are still usable.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(id).or_default())
    }

    pub fn success(&self, id: i32) {
        let now = SystemTime::now();
        self.with(id, |d| {
            d.calls += 1;
            d.consecutive = 0;
            d.reset = true;
            d.last_call = Some(now);
            d.last_success = Some(now);
        });
    }

    pub fn failure(&self, id: i32, error: &str) {
        let now = SystemTime::now();
        self.with(id, |d| {
            d.calls += 1;
            d.errors += 1;
            d.consecutive += 1;
            d.last_call = Some(now);
            d.last_failure = Some(now);
            d.last_error = Some(truncate_chars(error, LAST_ERROR_MAX_CHARS));
        });
    }

    /// The target answered 429 (or 503 with Retry-After): a call, not an
    /// error, and the consecutive error count stays as it is.
    pub fn throttled(&self, id: i32) {
        let now = SystemTime::now();
        self.with(id, |d| {
            d.calls += 1;
            d.throttled += 1;
            d.last_call = Some(now);
            d.last_throttled = Some(now);
        });
    }

    /// Delivery decided the hook's state (410 Gone, too many errors).
    pub fn set_state(&self, id: i32, state: WebhookState) {
        self.with(id, |d| d.new_state = Some(state));
    }

    /// Everything recorded so far, leaving the book empty.
    pub fn take(&self) -> HashMap<i32, UsageDelta> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Put back a batch that could not be written, under anything
    /// recorded since.
    pub fn restore(&self, batch: HashMap<i32, UsageDelta>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (id, old) in batch {
            let newer = map.remove(&id).unwrap_or_default();
            map.insert(id, old.then(newer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_batch_goes_under_newer_outcomes() {
        let book = UsageBook::default();
        book.failure(1, "first");
        book.failure(1, "second");
        let batch = book.take();
        book.success(1);
        book.failure(1, "third");
        book.restore(batch);
        let merged = book.take().remove(&1).expect("hook 1 recorded");
        assert_eq!(merged.calls, 4);
        assert_eq!(merged.errors, 3);
        // The success restarted the count: one failure since.
        assert_eq!(merged.consecutive, 1);
        assert!(merged.reset);
        assert_eq!(merged.last_error.as_deref(), Some("third"));
    }
}
