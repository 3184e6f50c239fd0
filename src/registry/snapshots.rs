//! The registry states that commits reached and no snapshot has recorded
//! yet.
//!
//! A restart matches replayed changes against the hooks as they stood at
//! the slot's confirmed position, so before confirming past a transaction
//! that changed the `webhook` table, the registry as of that commit is
//! written (`registry_snapshot`: lsn, hooks as a JSON array of rows).
//! Several such transactions may commit before the position passes them,
//! and only the newest one at or before the confirmable position is ever
//! written.
//!
//! Keeping a full copy of the table per such transaction would cost, with
//! 10,000 hooks, 10,000 rows per changed row. Instead each transaction
//! keeps only the rows it changed, and one base state, sharing its rows
//! with the registry through `Arc`, is moved forward over them when a
//! snapshot falls due. Memory, time and bytes written per webhook-row
//! change are then those of the change: a snapshot written records only
//! the rows changed since the last one (the store folds them back into
//! full states when it reads them, and compacts them as the position
//! moves).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::{Registry, RowChange};
use crate::events::WebhookRow;
use crate::pgoutput::Lsn;

#[derive(Debug, Default)]
pub struct PendingSnapshots {
    /// The rows as of the newest transaction taken out of `pending`, or
    /// as loaded at start.
    base: BTreeMap<i32, Arc<WebhookRow>>,
    /// The position `base` stands at when it has not been written yet.
    unwritten: Option<Lsn>,
    /// The rows `base` changed since it was last written: all a snapshot
    /// has to record.
    changed: BTreeSet<i32>,
    /// Per transaction that changed the table, in commit order: its end
    /// position and the rows it changed, as they stood at its commit.
    pending: VecDeque<(Lsn, Vec<RowChange>)>,
    /// Bytes of row text `pending` holds on its own (rows no longer in the
    /// registry), for the spill bound.
    pending_bytes: usize,
}

/// Pending states beyond which they are written at once instead of when
/// the position passes them: memory stays bounded while the confirmed
/// position is held back (a target that never answers, and a hook row
/// updated again and again). Writing a state early is always right: a
/// restart uses the newest snapshot at or before its position.
pub const SPILL_PENDING_BYTES: usize = 8 * 1024 * 1024;
pub const SPILL_PENDING_STATES: usize = 256;

fn row_bytes(changes: &[RowChange]) -> usize {
    changes
        .iter()
        .filter_map(|(_, row)| row.as_ref())
        .map(|row| {
            row.0
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
                .sum::<usize>()
        })
        .sum()
}

impl PendingSnapshots {
    /// Start from the rows as they stand at the stream's start position
    /// (already recorded, or the table itself when there is no snapshot).
    pub fn new(registry: &Registry) -> PendingSnapshots {
        PendingSnapshots {
            base: registry.rows.clone(),
            unwritten: None,
            changed: BTreeSet::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
        }
    }

    /// A transaction ending at `end` changed these rows.
    pub fn record(&mut self, end: Lsn, changes: Vec<RowChange>) {
        if !changes.is_empty() {
            self.pending_bytes += row_bytes(&changes);
            self.pending.push_back((end, changes));
        }
    }

    /// The position of the newest state at or before `position` that is
    /// not written yet, if any; [`PendingSnapshots::rows`] is then that
    /// state until [`PendingSnapshots::written`].
    pub fn due(&mut self, position: Lsn) -> Option<Lsn> {
        while self
            .pending
            .front()
            .is_some_and(|(end, _)| *end <= position)
        {
            let (end, changes) = self.pending.pop_front().expect("front was just seen");
            self.pending_bytes = self.pending_bytes.saturating_sub(row_bytes(&changes));
            for (id, row) in changes {
                self.changed.insert(id);
                match row {
                    Some(row) => self.base.insert(id, row),
                    None => self.base.remove(&id),
                };
            }
            self.unwritten = Some(end);
        }
        self.unwritten
    }

    /// Whether the pending states passed the spill bound.
    pub fn over_bound(&self) -> bool {
        self.pending_bytes > SPILL_PENDING_BYTES || self.pending.len() > SPILL_PENDING_STATES
    }

    /// The oldest pending state's position: writing the states one by one
    /// from here keeps a snapshot for every position a restart can start at.
    pub fn oldest_pending(&self) -> Option<Lsn> {
        self.pending.front().map(|(end, _)| *end)
    }

    /// The whole state [`PendingSnapshots::due`] returned, in webhook_id
    /// order.
    #[cfg(test)]
    pub fn rows(&self) -> impl Iterator<Item = &WebhookRow> {
        self.base.values().map(|row| &**row)
    }

    /// What the state [`PendingSnapshots::due`] returned changed since the
    /// last one written, in webhook_id order: each row as it stands, or
    /// `None` when it was removed.
    pub fn changes(&self) -> impl Iterator<Item = (i32, Option<&WebhookRow>)> {
        self.changed
            .iter()
            .map(|id| (*id, self.base.get(id).map(|row| &**row)))
    }

    /// The state due has been recorded: it is not written again.
    pub fn written(&mut self) {
        self.unwritten = None;
        self.changed.clear();
    }
}
