//! Call and error statistics as delivery records them: in memory, per
//! hook, until the store writes them to `webhook_usage` in one statement
//! with the settled position that covers them (see [`UsageBook`]):
//! statistics cost nothing on the hot path, and survive a crash as the
//! position does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::pgoutput::Lsn;
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

/// One run of outcomes of a hook whose events share a commit position.
#[derive(Debug, Clone)]
struct Entry {
    /// The commit position of the events counted, `None` for outcomes that
    /// belong to no stream position (see [`UsageBook`]).
    commit: Option<Lsn>,
    delta: UsageDelta,
}

#[derive(Debug, Default)]
struct Book {
    /// Per hook, in the order the outcomes happened.
    hooks: HashMap<i32, Vec<Entry>>,
    /// The position last recorded in `slot_progress` (with the counts it
    /// covers).
    recorded: Lsn,
}

/// Outcomes not yet written, per webhook_id, each with the commit position
/// of its event.
///
/// The counts of a streamed event are written in the same statement as
/// the first recorded position beyond its commit, never before: a crash
/// before that write resends the event (the stream resumes at the recorded
/// position), and its resend is counted instead, so a crash neither loses
/// the call of an event it does not resend nor counts one it resends twice.
/// Outcomes without a position (a parked event replayed, a state delivery
/// decided) are written with the next write of either kind.
#[derive(Debug, Clone, Default)]
pub struct UsageBook(Arc<Mutex<Book>>);

impl UsageBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // A poisoned lock only means another thread panicked mid-update of
        // counters; the counters are still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<R>(&self, id: i32, commit: Option<Lsn>, f: impl FnOnce(&mut UsageDelta) -> R) -> R {
        let mut book = self.lock();
        let entries = book.hooks.entry(id).or_default();
        // Outcomes in a row of one position share an entry: the common
        // case of one event's retries, or of a hook's serial deliveries.
        match entries.last_mut() {
            Some(last) if last.commit == commit => f(&mut last.delta),
            _ => {
                entries.push(Entry {
                    commit,
                    delta: UsageDelta::default(),
                });
                let last = entries.len() - 1;
                f(&mut entries[last].delta)
            }
        }
    }

    /// A 2xx for an event at `commit` (`None`: not a streamed event).
    pub fn success(&self, id: i32, commit: Option<Lsn>) {
        let now = SystemTime::now();
        self.with(id, commit, |d| {
            d.calls += 1;
            d.consecutive = 0;
            d.reset = true;
            d.last_call = Some(now);
            d.last_success = Some(now);
        });
    }

    pub fn failure(&self, id: i32, commit: Option<Lsn>, error: &str) {
        let now = SystemTime::now();
        self.with(id, commit, |d| {
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
    pub fn throttled(&self, id: i32, commit: Option<Lsn>) {
        let now = SystemTime::now();
        self.with(id, commit, |d| {
            d.calls += 1;
            d.throttled += 1;
            d.last_call = Some(now);
            d.last_throttled = Some(now);
        });
    }

    /// Delivery decided the hook's state (410 Gone, too many errors). A
    /// state is not a count: it is written with the next write, whatever
    /// position its event has, so the DBA sees it at once.
    pub fn set_state(&self, id: i32, state: WebhookState) {
        self.with(id, None, |d| d.new_state = Some(state));
    }

    /// Everything recorded so far, leaving the book empty (the DBA's
    /// commands, which have no stream position).
    pub fn take(&self) -> HashMap<i32, UsageDelta> {
        self.take_before(Lsn(u64::MAX))
    }

    /// What may be written with position `upto` recorded: the outcomes of
    /// events committed before it (the stream resumes at it, so they are
    /// never sent again) and those without a position.
    pub fn take_before(&self, upto: Lsn) -> HashMap<i32, UsageDelta> {
        let mut book = self.lock();
        let mut batch = HashMap::new();
        book.hooks.retain(|id, entries| {
            let mut taken: Option<UsageDelta> = None;
            entries.retain_mut(|e| {
                if e.commit.is_some_and(|c| c >= upto) {
                    return true;
                }
                let delta = std::mem::take(&mut e.delta);
                taken = Some(match taken.take() {
                    Some(before) => before.then(delta),
                    None => delta,
                });
                false
            });
            if let Some(delta) = taken {
                batch.insert(*id, delta);
            }
            !entries.is_empty()
        });
        batch
    }

    /// What may be written now: [`take_before`](Self::take_before) the
    /// position last recorded.
    pub fn take_recorded(&self) -> HashMap<i32, UsageDelta> {
        let upto = self.recorded();
        self.take_before(upto)
    }

    /// The position last recorded with the counts before it.
    pub fn recorded(&self) -> Lsn {
        self.lock().recorded
    }

    /// `lsn` is recorded: counts of events before it may be written at any
    /// time from now on.
    pub fn mark_recorded(&self, lsn: Lsn) {
        let mut book = self.lock();
        book.recorded = book.recorded.max(lsn);
    }

    /// A session starts streaming at `start`, with `recorded` in
    /// `slot_progress`: outcomes of events at or after `start` are
    /// forgotten, since those events are sent again and counted then.
    pub fn resume(&self, start: Lsn, recorded: Lsn) {
        let mut book = self.lock();
        book.recorded = recorded;
        book.hooks.retain(|_, entries| {
            entries.retain(|e| e.commit.is_none_or(|c| c < start));
            !entries.is_empty()
        });
    }

    /// Put back a batch that could not be written, before anything
    /// recorded since; it was taken to be written, so it goes with the next
    /// write.
    pub fn restore(&self, batch: HashMap<i32, UsageDelta>) {
        let mut book = self.lock();
        for (id, delta) in batch {
            book.hooks.entry(id).or_default().insert(
                0,
                Entry {
                    commit: None,
                    delta,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_batch_goes_under_newer_outcomes() {
        let book = UsageBook::default();
        book.failure(1, None, "first");
        book.failure(1, None, "second");
        let batch = book.take();
        book.success(1, None);
        book.failure(1, None, "third");
        book.restore(batch);
        let merged = book.take().remove(&1).expect("hook 1 recorded");
        assert_eq!(merged.calls, 4);
        assert_eq!(merged.errors, 3);
        // The success restarted the count: one failure since.
        assert_eq!(merged.consecutive, 1);
        assert!(merged.reset);
        assert_eq!(merged.last_error.as_deref(), Some("third"));
    }

    #[test]
    fn counts_go_with_the_first_position_beyond_their_event() {
        let book = UsageBook::default();
        book.failure(1, Some(Lsn(100)), "at 100");
        book.success(1, Some(Lsn(300)));
        book.success(1, Some(Lsn(100)));
        book.success(2, Some(Lsn(200)));
        book.set_state(3, WebhookState::Stopped);
        // Position 100 covers nothing committed at 100 itself: the stream
        // resumes there and sends it again.
        let batch = book.take_before(Lsn(100));
        assert_eq!(batch.keys().collect::<Vec<_>>(), vec![&3]);
        let batch = book.take_before(Lsn(250));
        assert_eq!(batch[&1].calls, 2);
        assert_eq!(batch[&1].errors, 1);
        assert_eq!(
            batch[&1].consecutive, 0,
            "the success came after the failure"
        );
        assert_eq!(batch[&2].calls, 1);
        assert!(!batch.contains_key(&3), "taken once");
        assert_eq!(book.take().get(&1).map(|d| d.calls), Some(1), "300 is left");
    }

    #[test]
    fn the_recorded_position_lets_late_counts_go_and_a_resume_forgets_resent_ones() {
        let book = UsageBook::default();
        book.success(1, Some(Lsn(100)));
        book.success(1, Some(Lsn(400)));
        assert!(book.take_recorded().is_empty());
        book.mark_recorded(Lsn(200));
        book.mark_recorded(Lsn(150));
        assert_eq!(book.recorded(), Lsn(200), "never lowered");
        assert_eq!(book.take_recorded()[&1].calls, 1);
        // The next session starts at 300: the event at 400 is sent again.
        book.success(1, Some(Lsn(250)));
        book.resume(Lsn(300), Lsn(250));
        assert_eq!(book.recorded(), Lsn(250));
        assert!(
            book.take_recorded().is_empty(),
            "250 waits for a position beyond it"
        );
        assert_eq!(book.take_before(Lsn(300))[&1].calls, 1);
        assert!(book.take().is_empty(), "400 was forgotten");
    }
}
