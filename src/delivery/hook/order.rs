//! The order rules of a hook's events, apart from the events: which
//! waiting ones may start. Shared by the hook's queue and the replayer of
//! its parked events, so both keep the same order.
//!
//! Events of one row keep commit order: an event starts only when no
//! earlier event of its row is still running or waiting. Rows go
//! concurrently. A barrier (TRUNCATE) starts alone, after everything
//! before it, and nothing after it starts until it is done.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use crate::config::DeliveryOrder;

/// How an event must be ordered against others of the same hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderScope {
    /// After earlier events with the same key.
    Key,
    /// Also after earlier events of a second key (an UPDATE that changed
    /// the row's key orders after both the old and the new key).
    AlsoAfter(String),
    /// After every earlier event of the hook, and before every later one
    /// (TRUNCATE is a barrier for its table).
    Barrier,
}

/// How far past blocked events the queue looks for one that may start:
/// bounds the work per started event when one row has many queued.
const LOOKAHEAD: usize = 256;
/// What an event must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::delivery) enum Keys {
    /// Earlier events of its row (a hash of the ordering key; a collision
    /// only orders two rows that need not be).
    One(u64),
    /// Earlier events of either of two rows (an UPDATE that changed the
    /// row's key).
    Two(u64, u64),
    /// Every earlier event; every later one waits for it.
    Barrier,
}

impl Keys {
    pub(in crate::delivery) fn of(key: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish()
    }

    fn each(self) -> impl Iterator<Item = u64> {
        let (a, b) = match self {
            Keys::One(a) => (Some(a), None),
            Keys::Two(a, b) => (Some(a), Some(b)),
            Keys::Barrier => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// What an event waits for in a hook's queue, by the configured ordering
/// and the event's ordering scope.
pub(in crate::delivery) fn order_keys(order: DeliveryOrder, key: &str, scope: &OrderScope) -> Keys {
    match (order, scope) {
        // One strict order: every event waits for the one before.
        (DeliveryOrder::Webhook, _) => Keys::One(0),
        (DeliveryOrder::Row, OrderScope::Key) => Keys::One(Keys::of(key)),
        (DeliveryOrder::Row, OrderScope::AlsoAfter(old)) => Keys::Two(Keys::of(key), Keys::of(old)),
        (DeliveryOrder::Row, OrderScope::Barrier) => Keys::Barrier,
    }
}

/// The order rules, apart from the jobs: which waiting items may start.
pub(in crate::delivery) struct OrderGate<T> {
    waiting: VecDeque<(Keys, T)>,
    /// Rows with a running event, and how many.
    busy: HashMap<u64, u32>,
    running: usize,
    barrier_running: bool,
}

impl<T> OrderGate<T> {
    pub(in crate::delivery) fn new() -> OrderGate<T> {
        OrderGate {
            waiting: VecDeque::new(),
            busy: HashMap::new(),
            running: 0,
            barrier_running: false,
        }
    }

    pub(in crate::delivery) fn push(&mut self, keys: Keys, item: T) {
        self.waiting.push_back((keys, item));
    }

    pub(in crate::delivery) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    #[cfg(test)]
    pub(in crate::delivery) fn running(&self) -> usize {
        self.running
    }

    pub(in crate::delivery) fn front(&self) -> Option<&T> {
        self.waiting.front().map(|(_, item)| item)
    }

    /// Move the items that may start now to `out`, keeping at most `limit`
    /// running. Returns how many waiting items the limit held back (at
    /// most: all that still wait), 0 when it held back none that could
    /// otherwise have started.
    pub(in crate::delivery) fn take_ready(
        &mut self,
        limit: usize,
        out: &mut Vec<(Keys, T)>,
    ) -> usize {
        if self.barrier_running {
            return 0;
        }
        // Rows of events passed over: later events of them must wait too.
        let mut passed: HashSet<u64> = HashSet::new();
        let mut index = 0;
        let mut looked = 0;
        while index < self.waiting.len() && looked < LOOKAHEAD {
            let keys = self.waiting[index].0;
            if keys == Keys::Barrier {
                if index == 0 && self.running == 0 {
                    if let Some(entry) = self.waiting.pop_front() {
                        self.barrier_running = true;
                        self.running += 1;
                        out.push(entry);
                    }
                }
                return 0;
            }
            let blocked = keys
                .each()
                .any(|k| self.busy.contains_key(&k) || passed.contains(&k));
            if blocked {
                passed.extend(keys.each());
                index += 1;
                looked += 1;
                continue;
            }
            if self.running >= limit {
                return self.waiting.len();
            }
            let Some(entry) = self.waiting.remove(index) else {
                break;
            };
            for k in keys.each() {
                *self.busy.entry(k).or_insert(0) += 1;
            }
            self.running += 1;
            out.push(entry);
        }
        0
    }

    /// An item started by [`take_ready`](Self::take_ready) is done.
    pub(in crate::delivery) fn finished(&mut self, keys: Keys) {
        self.running = self.running.saturating_sub(1);
        if keys == Keys::Barrier {
            self.barrier_running = false;
        }
        for k in keys.each() {
            if let Some(n) = self.busy.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(gate: &mut OrderGate<u32>, limit: usize) -> Vec<u32> {
        let mut out = Vec::new();
        gate.take_ready(limit, &mut out);
        out.into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn rows_go_concurrently_up_to_the_limit() {
        let mut gate = OrderGate::new();
        for n in 0..10 {
            gate.push(Keys::One(n as u64), n);
        }
        assert_eq!(started(&mut gate, 4), vec![0, 1, 2, 3]);
        assert_eq!(started(&mut gate, 4), Vec::<u32>::new());
        gate.finished(Keys::One(2));
        assert_eq!(started(&mut gate, 4), vec![4]);
        // A raised limit lets more start at once.
        assert_eq!(started(&mut gate, 8), vec![5, 6, 7, 8]);
    }

    #[test]
    fn events_of_one_row_wait_for_the_earlier_one() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 10);
        gate.push(Keys::One(1), 11);
        gate.push(Keys::One(2), 20);
        gate.push(Keys::One(1), 12);
        assert_eq!(started(&mut gate, 100), vec![10, 20]);
        gate.finished(Keys::One(2));
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![11]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![12]);
    }

    #[test]
    fn a_changed_key_waits_for_both_rows_and_holds_both() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::Two(2, 1), 2);
        gate.push(Keys::One(2), 3);
        gate.push(Keys::One(3), 4);
        assert_eq!(started(&mut gate, 100), vec![1, 4]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![2]);
        gate.finished(Keys::Two(2, 1));
        assert_eq!(started(&mut gate, 100), vec![3]);
    }

    #[test]
    fn a_barrier_runs_alone_between_what_came_before_and_after() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::One(2), 2);
        gate.push(Keys::Barrier, 3);
        gate.push(Keys::One(4), 4);
        assert_eq!(started(&mut gate, 100), vec![1, 2]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        gate.finished(Keys::One(2));
        assert_eq!(started(&mut gate, 100), vec![3]);
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        gate.finished(Keys::Barrier);
        assert_eq!(started(&mut gate, 100), vec![4]);
    }

    #[test]
    fn the_limit_holding_back_a_ready_event_is_reported() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::One(1), 2);
        let mut out = Vec::new();
        // The second waits for its row, not for the limit.
        assert_eq!(gate.take_ready(1, &mut out), 0);
        gate.push(Keys::One(2), 3);
        assert_eq!(gate.take_ready(1, &mut out), 2);
        assert_eq!(gate.running(), 1);
    }

    #[test]
    fn the_look_past_blocked_events_is_bounded() {
        let mut gate = OrderGate::new();
        for n in 0..(LOOKAHEAD as u32 + 10) {
            gate.push(Keys::One(1), n);
        }
        gate.push(Keys::One(2), 9999);
        assert_eq!(started(&mut gate, 100), vec![0]);
        // Row 2 sits past the look-ahead behind row 1's backlog: it waits
        // rather than cost a scan of the whole queue per event.
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        assert_eq!(gate.waiting(), LOOKAHEAD + 10);
    }
}
