//! Which LSN may be confirmed to the server.
//!
//! Every transaction is tracked from its Begin until each of its events is
//! settled (delivered, parked, or dropped by the state rules). The confirmed
//! position is the commit end of the newest transaction before which
//! everything is settled; with nothing pending it follows the server's WAL
//! end from keepalives, so an idle database never pins WAL.
//!
//! A [`Ticket`] is settled only by an explicit call: dropping one (a task
//! cancelled at shutdown, a crash) leaves its transaction unconfirmed, so it
//! is delivered again after a restart instead of lost.
//!
//! The last settle of a transaction (or its Commit, when everything was
//! settled before it arrived) wakes [`Checkpoint::settled`], so the position
//! can be confirmed and recorded at once rather than on a timer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::pgoutput::Lsn;

#[derive(Debug)]
struct TxnState {
    /// Unsettled events, plus one held by the reader until the Commit.
    pending: AtomicUsize,
    /// Commit end LSN, 0 until the Commit arrives.
    end: AtomicU64,
    /// Whether any event of the transaction was handed to delivery.
    had_events: AtomicBool,
    /// When the transaction committed, for the lag in seconds.
    committed_at: SystemTime,
    /// The checkpoint's wake-up, for when `pending` reaches zero.
    settled: Arc<Notify>,
}

impl TxnState {
    /// One claim fewer; the last one wakes the checkpoint's owner.
    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_one();
        }
    }
}

/// One event's claim on its transaction.
#[derive(Debug)]
#[must_use = "a ticket holds its transaction unconfirmed until settled"]
pub struct Ticket(Arc<TxnState>);

impl Ticket {
    /// The event is delivered, parked or deliberately dropped.
    pub fn settle(self) {
        self.0.release();
    }

    /// A ticket of its own, outside any transaction of the stream: cluster
    /// delivery holds one per job taken from the bus and acknowledges the
    /// message once it is settled. `wake` is notified when it is, so one
    /// waiter can look after many.
    pub fn watched(wake: Arc<Notify>) -> (Ticket, Settlement) {
        let state = Arc::new(TxnState {
            pending: AtomicUsize::new(1),
            // Never read: the ticket belongs to no checkpoint.
            end: AtomicU64::new(u64::MAX),
            had_events: AtomicBool::new(true),
            committed_at: SystemTime::now(),
            settled: wake,
        });
        (Ticket(Arc::clone(&state)), Settlement(state))
    }
}

/// What became of a [`Ticket::watched`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Still held by delivery.
    Pending,
    /// Delivered, parked or deliberately dropped.
    Settled,
    /// Dropped without being settled (a queue ended, a shutdown): the job
    /// must be delivered again.
    Abandoned,
}

/// The watching end of a [`Ticket::watched`].
#[derive(Debug)]
pub struct Settlement(Arc<TxnState>);

impl Settlement {
    pub fn state(&self) -> Settled {
        if self.0.pending.load(Ordering::Acquire) == 0 {
            Settled::Settled
        } else if Arc::strong_count(&self.0) == 1 {
            // Only this end is left and the ticket was never settled.
            Settled::Abandoned
        } else {
            Settled::Pending
        }
    }
}

/// The transaction currently being read.
#[derive(Debug)]
pub struct OpenTxn(Arc<TxnState>);

impl OpenTxn {
    /// A ticket for one more event of this transaction.
    pub fn ticket(&self) -> Ticket {
        self.0.pending.fetch_add(1, Ordering::AcqRel);
        self.0.had_events.store(true, Ordering::Relaxed);
        Ticket(Arc::clone(&self.0))
    }
}

#[derive(Debug, Default)]
pub struct Checkpoint {
    txns: VecDeque<Arc<TxnState>>,
    in_txn: bool,
    /// Highest position known to contain nothing unread.
    idle_position: Lsn,
    confirmed: Lsn,
    /// Commit end of the newest confirmable transaction that had events.
    events_settled: Lsn,
    settled: Arc<Notify>,
}

impl Checkpoint {
    /// Start from the slot's confirmed position.
    pub fn new(confirmed: Lsn) -> Checkpoint {
        Checkpoint {
            confirmed,
            idle_position: confirmed,
            ..Checkpoint::default()
        }
    }

    /// A transaction that committed at `committed_at` (its Begin says when).
    pub fn begin(&mut self, committed_at: SystemTime) -> OpenTxn {
        let state = Arc::new(TxnState {
            pending: AtomicUsize::new(1),
            end: AtomicU64::new(0),
            had_events: AtomicBool::new(false),
            committed_at,
            settled: Arc::clone(&self.settled),
        });
        self.txns.push_back(Arc::clone(&state));
        self.in_txn = true;
        OpenTxn(state)
    }

    pub fn commit(&mut self, txn: OpenTxn, end_lsn: Lsn) {
        txn.0.end.store(end_lsn.0, Ordering::Release);
        txn.0.release();
        self.in_txn = false;
        self.idle_position = self.idle_position.max(end_lsn);
    }

    /// The server's WAL end from a keepalive: everything before it that is
    /// published has been received.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if !self.in_txn {
            self.idle_position = self.idle_position.max(wal_end);
        }
    }

    /// Advance over settled transactions and return the position that may
    /// be confirmed now (never moves backwards).
    pub fn confirmable(&mut self) -> Lsn {
        while let Some(front) = self.txns.front() {
            let end = front.end.load(Ordering::Acquire);
            if end == 0 || front.pending.load(Ordering::Acquire) != 0 {
                break;
            }
            self.confirmed = self.confirmed.max(Lsn(end));
            if front.had_events.load(Ordering::Relaxed) {
                self.events_settled = self.events_settled.max(Lsn(end));
            }
            self.txns.pop_front();
        }
        if self.txns.is_empty() && !self.in_txn {
            self.confirmed = self.confirmed.max(self.idle_position);
        }
        self.confirmed
    }

    /// The commit end of the newest transaction with events that
    /// [`confirmable`](Self::confirmable) has passed: when it moves, a
    /// restart from the old position would send something again. (Passing
    /// transactions without events, or WAL that carries none, changes
    /// nothing a restart would repeat.)
    pub fn events_settled(&self) -> Lsn {
        self.events_settled
    }

    /// The wake-up notified when a transaction may have become
    /// confirmable (a wake-up that comes while nobody waits is kept).
    pub fn settled(&self) -> Arc<Notify> {
        Arc::clone(&self.settled)
    }

    /// Transactions read but not yet settled.
    pub fn pending_transactions(&self) -> usize {
        self.txns.len()
    }

    /// When the oldest transaction not yet confirmable committed: the lag
    /// in time of what a restart would send again. `None` when every
    /// transaction read is settled. (As of the last
    /// [`confirmable`](Self::confirmable).)
    pub fn oldest_unsettled_commit(&self) -> Option<SystemTime> {
        self.txns.front().map(|t| t.committed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_oldest_unsettled_transaction() {
        let mut c = Checkpoint::new(Lsn(100));
        let t1 = c.begin(SystemTime::UNIX_EPOCH);
        let a = t1.ticket();
        c.commit(t1, Lsn(200));
        let t2 = c.begin(SystemTime::UNIX_EPOCH);
        let b = t2.ticket();
        c.commit(t2, Lsn(300));
        assert_eq!(c.confirmable(), Lsn(100));
        b.settle();
        assert_eq!(c.confirmable(), Lsn(100), "t1 still pending");
        a.settle();
        assert_eq!(c.confirmable(), Lsn(300));
    }

    #[test]
    fn dropped_tickets_never_confirm() {
        let mut c = Checkpoint::new(Lsn(100));
        let t = c.begin(SystemTime::UNIX_EPOCH);
        drop(t.ticket());
        c.commit(t, Lsn(200));
        c.keepalive(Lsn(500));
        assert_eq!(c.confirmable(), Lsn(100));
    }

    #[test]
    fn idle_follows_keepalives_but_not_inside_a_transaction() {
        let mut c = Checkpoint::new(Lsn(100));
        c.keepalive(Lsn(400));
        assert_eq!(c.confirmable(), Lsn(400));
        let t = c.begin(SystemTime::UNIX_EPOCH);
        c.keepalive(Lsn(900));
        assert_eq!(c.confirmable(), Lsn(400));
        c.commit(t, Lsn(950));
        assert_eq!(c.confirmable(), Lsn(950));
    }

    #[tokio::test]
    async fn the_last_settle_wakes_the_owner_once_committed() {
        let mut c = Checkpoint::new(Lsn(100));
        let woken = c.settled();
        let t = c.begin(SystemTime::UNIX_EPOCH);
        let a = t.ticket();
        let b = t.ticket();
        c.commit(t, Lsn(200));
        a.settle();
        assert_eq!(c.confirmable(), Lsn(100));
        b.settle();
        // The permit stored by the last settle resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), woken.notified())
            .await
            .expect("the last settle wakes the checkpoint's owner");
        assert_eq!(c.confirmable(), Lsn(200));
    }

    #[tokio::test]
    async fn a_watched_ticket_says_whether_it_was_settled_or_abandoned() {
        let wake = Arc::new(Notify::new());
        let (ticket, watch) = Ticket::watched(Arc::clone(&wake));
        assert_eq!(watch.state(), Settled::Pending);
        ticket.settle();
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .expect("settling wakes the watcher");
        assert_eq!(watch.state(), Settled::Settled);
        let (ticket, watch) = Ticket::watched(wake);
        drop(ticket);
        assert_eq!(watch.state(), Settled::Abandoned);
    }

    #[test]
    fn only_transactions_with_events_move_events_settled() {
        let mut c = Checkpoint::new(Lsn(100));
        let t1 = c.begin(SystemTime::UNIX_EPOCH);
        let a = t1.ticket();
        c.commit(t1, Lsn(200));
        let t2 = c.begin(SystemTime::UNIX_EPOCH);
        c.commit(t2, Lsn(300));
        c.keepalive(Lsn(400));
        assert_eq!(c.confirmable(), Lsn(100));
        assert_eq!(c.events_settled(), Lsn(0));
        a.settle();
        assert_eq!(c.confirmable(), Lsn(400));
        assert_eq!(c.events_settled(), Lsn(200), "t2 had no events");
    }

    #[test]
    fn the_oldest_unsettled_transaction_says_when_it_committed() {
        let mut c = Checkpoint::new(Lsn(10));
        assert_eq!(c.oldest_unsettled_commit(), None);
        let (early, late) = (
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(200),
        );
        let t1 = c.begin(early);
        let ticket = t1.ticket();
        c.commit(t1, Lsn(20));
        let t2 = c.begin(late);
        c.commit(t2, Lsn(30));
        c.confirmable();
        assert_eq!(c.oldest_unsettled_commit(), Some(early));
        ticket.settle();
        c.confirmable();
        assert_eq!(c.oldest_unsettled_commit(), None, "both are settled");
    }
}
