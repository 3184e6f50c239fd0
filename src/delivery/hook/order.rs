//! The order rules of a hook's events, apart from the events: which
//! waiting ones may start. Shared by the hook's queue and the replayer of
//! its parked events, so both keep the same order.
//!
//! Events of one row keep commit order: an event starts only when no
//! earlier event of its row is still running or waiting. Rows go
//! concurrently. A barrier (TRUNCATE) starts alone, after everything
//! before it, and nothing after it starts until it is done.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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
///
/// Each row keeps its own queue of waiting items, and an item is ready
/// once it heads the queue of each of its rows and none of them has an
/// item running: so a row with thousands of events waiting behind a
/// retrying one holds up only itself, and finding what may start costs
/// the same whatever waits. Memory is the items themselves, which the
/// byte budget bounds.
pub(in crate::delivery) struct OrderGate<T> {
    /// Waiting items by arrival number.
    items: BTreeMap<u64, (Keys, T)>,
    next_arrival: u64,
    /// Each row's waiting items, by arrival number, oldest first.
    rows: HashMap<u64, VecDeque<u64>>,
    /// Items that head every one of their rows' queues with none of the
    /// rows busy: they may start, oldest first, unless a barrier waits
    /// before them.
    ready: BTreeSet<u64>,
    /// Waiting barriers, by arrival number.
    barriers: VecDeque<u64>,
    /// Rows with a running item, and how many.
    busy: HashMap<u64, u32>,
    running: usize,
    barrier_running: bool,
}

impl<T> OrderGate<T> {
    pub(in crate::delivery) fn new() -> OrderGate<T> {
        OrderGate {
            items: BTreeMap::new(),
            next_arrival: 0,
            rows: HashMap::new(),
            ready: BTreeSet::new(),
            barriers: VecDeque::new(),
            busy: HashMap::new(),
            running: 0,
            barrier_running: false,
        }
    }

    pub(in crate::delivery) fn push(&mut self, keys: Keys, item: T) {
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.items.insert(arrival, (keys, item));
        if keys == Keys::Barrier {
            self.barriers.push_back(arrival);
            return;
        }
        for k in keys.each() {
            self.rows.entry(k).or_default().push_back(arrival);
        }
        self.mark_if_ready(arrival, keys);
    }

    /// Mark the item `arrival` ready when it heads each of its rows and
    /// none of them is busy.
    fn mark_if_ready(&mut self, arrival: u64, keys: Keys) {
        let heads_free_rows = keys.each().all(|k| {
            !self.busy.contains_key(&k)
                && self.rows.get(&k).and_then(|q| q.front()) == Some(&arrival)
        });
        if heads_free_rows {
            self.ready.insert(arrival);
        }
    }

    pub(in crate::delivery) fn waiting(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub(in crate::delivery) fn running(&self) -> usize {
        self.running
    }

    /// The oldest waiting item.
    pub(in crate::delivery) fn front(&self) -> Option<&T> {
        self.items.first_key_value().map(|(_, (_, item))| item)
    }

    /// Move the items that may start now to `out`, oldest first, keeping
    /// at most `limit` running. Returns how many waiting items the limit
    /// held back (at most: all that still wait), 0 when it held back none
    /// that could otherwise have started.
    pub(in crate::delivery) fn take_ready(
        &mut self,
        limit: usize,
        out: &mut Vec<(Keys, T)>,
    ) -> usize {
        if self.barrier_running {
            return 0;
        }
        // Nothing after a waiting barrier starts before it is done.
        let cutoff = self.barriers.front().copied().unwrap_or(u64::MAX);
        while let Some(&arrival) = self.ready.first() {
            if arrival > cutoff {
                break;
            }
            if self.running >= limit {
                return self.items.len();
            }
            self.ready.remove(&arrival);
            let Some(entry) = self.items.remove(&arrival) else {
                continue;
            };
            for k in entry.0.each() {
                if let Some(queue) = self.rows.get_mut(&k) {
                    queue.pop_front();
                    if queue.is_empty() {
                        self.rows.remove(&k);
                    }
                }
                *self.busy.entry(k).or_insert(0) += 1;
            }
            self.running += 1;
            out.push(entry);
        }
        // A barrier starts alone, once it is the oldest item waiting and
        // nothing runs.
        let oldest = self.items.first_key_value().map(|(arrival, _)| *arrival);
        if self.running == 0 && oldest.is_some() && oldest == self.barriers.front().copied() {
            self.barriers.pop_front();
            if let Some(entry) = self.items.pop_first().map(|(_, entry)| entry) {
                self.barrier_running = true;
                self.running += 1;
                out.push(entry);
            }
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
            // The row's next item may be ready now.
            let next = self.rows.get(&k).and_then(|q| q.front()).copied();
            if let Some(next) = next {
                if let Some(&(next_keys, _)) = self.items.get(&next) {
                    self.mark_if_ready(next, next_keys);
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
    fn a_row_with_a_long_backlog_holds_up_only_itself() {
        let mut gate = OrderGate::new();
        for n in 0..10_000 {
            gate.push(Keys::One(1), n);
        }
        gate.push(Keys::One(2), 99_999);
        // Row 2 arrived behind ten thousand events of row 1, whose first
        // runs (a retry, say): it starts at once.
        assert_eq!(started(&mut gate, 100), vec![0, 99_999]);
        gate.push(Keys::One(3), 88_888);
        assert_eq!(started(&mut gate, 100), vec![88_888]);
        assert_eq!(gate.waiting(), 9_999);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![1]);
    }

    #[test]
    fn a_changed_key_behind_a_busy_row_holds_its_other_row() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::One(2), 2);
        assert_eq!(started(&mut gate, 100), vec![1, 2]);
        // Waits for rows 1 and 2; row 2's later event waits behind it even
        // once row 2 is free, and row 3 goes.
        gate.push(Keys::Two(1, 2), 3);
        gate.push(Keys::One(2), 4);
        gate.push(Keys::One(3), 5);
        gate.finished(Keys::One(2));
        assert_eq!(started(&mut gate, 100), vec![5]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![3]);
        gate.finished(Keys::Two(1, 2));
        assert_eq!(started(&mut gate, 100), vec![4]);
    }

    #[test]
    fn events_after_a_waiting_barrier_wait_even_when_their_row_is_free() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::One(1), 2);
        assert_eq!(started(&mut gate, 100), vec![1]);
        gate.push(Keys::Barrier, 3);
        gate.push(Keys::One(5), 4);
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![2]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![3]);
        gate.finished(Keys::Barrier);
        assert_eq!(started(&mut gate, 100), vec![4]);
    }
}
