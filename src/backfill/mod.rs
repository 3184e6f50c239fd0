//! Backfill: existing rows as events, consistent with the live stream.
//!
//! `walhook backfill` registers a request in walhook's `backfill` table;
//! the daemon's [`Worker`] reads the table in chunks by key while the
//! stream goes on, using DBLog's watermark algorithm (Netflix, 2019; what
//! Debezium calls incremental snapshots):
//!
//! 1. the worker writes a *low watermark* into the WAL
//!    (`pg_logical_emit_message(true, 'walhook', ...)`: transactional, so
//!    the stream carries it in commit order among the changes);
//! 2. it SELECTs the next chunk (`ORDER BY key LIMIT n`, after the last
//!    key, read-only, with a statement timeout) and hands the rows to the
//!    [`Board`];
//! 3. it writes a *high watermark*.
//!
//! The pipeline reads the stream in commit order. Between the two
//! watermarks it notes, per hook of the backfill, the key of every live
//! change of the table that it routed to that hook ([`Reconciler`]). At the
//! high watermark it turns the chunk's remaining rows into events and
//! dispatches them right there, in stream position, through the same
//! dispatcher as live events.
//!
//! Why this is sound. The SELECT's snapshot was taken after the low
//! watermark committed and before the high one did. A row of the chunk that
//! no change touched between the watermarks has, at the high watermark,
//! the value the chunk read: sending it there is sending the row as the
//! stream stands at that point, and every later change of the row follows
//! it in the stream, so per-row order puts it after the backfilled value.
//! A row that a change touched between the watermarks may have been read
//! before or after that change: the chunk's copy is dropped for every hook
//! that received the change, which carries a value at least as new (the
//! live event wins). A hook that was not sent the change (its `events` do
//! not select it) gets the chunk's copy, which is then no older than
//! anything it received. A TRUNCATE between the watermarks drops the whole
//! chunk for the hooks it reached. So no hook ever gets a value older than
//! one it already received, and no row is missed: every row is either in
//! a chunk or was changed (and sent) while its chunk was read.
//!
//! Progress. The high watermark's transaction holds the chunk's events
//! like any transaction holds its changes: the slot's position does not
//! pass it until they are settled. Only then does the worker record the
//! chunk's last key in the `backfill` table, so after a crash the chunk is
//! read again; its rows go out with the same EventId (a UUIDv5 over the
//! server, backfill, table, key and hook), and watermarks of an earlier
//! run are ignored when the stream replays them (each carries its run id).

pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::pgoutput::{self, Lsn, TupleData, TupleValue};
use crate::store::backfill::{TableShape, MESSAGE_PREFIX};

pub use self::worker::Worker;

/// Namespace of backfill EventIds (UUIDv5), apart from live events'.
const BACKFILL_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7c3e_91d2_5b0a_4e8f_a6c4_2f19_b0cf_11b7);

/// The EventId of a backfilled row for a hook: the same whenever this
/// backfill sends this row to this hook again (a chunk read again after a
/// restart), different between backfills, rows and hooks.
pub fn event_id(system_id: &str, backfill_id: i64, ordering_key: &str, webhook_id: i32) -> Uuid {
    let name = format!("{system_id}/backfill/{backfill_id}/{ordering_key}/{webhook_id}");
    Uuid::new_v5(&BACKFILL_ID_NAMESPACE, name.as_bytes())
}

/// Which side of a chunk a watermark marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    Low,
    High,
}

/// The content of a watermark message (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// The worker that wrote it: a restarted daemon ignores the watermarks
    /// of an earlier run that the stream replays.
    pub run: Uuid,
    pub backfill: i64,
    pub chunk: u64,
    pub mark: Mark,
}

/// Why a logical message with walhook's prefix is not a watermark.
#[derive(Debug, thiserror::Error)]
#[error(
    "logical message with prefix {MESSAGE_PREFIX:?} at {lsn} is not a backfill watermark: {reason}"
)]
pub struct NotAWatermark {
    pub lsn: Lsn,
    pub reason: String,
}

impl Watermark {
    pub fn to_json(&self) -> String {
        // A struct of a uuid, numbers and an enum always serialises.
        serde_json::to_string(self).expect("watermark serialises")
    }

    /// The watermark in a logical message; `Ok(None)` when the message is
    /// someone else's (another prefix).
    pub fn from_message(
        prefix: &str,
        content: &[u8],
        lsn: Lsn,
    ) -> Result<Option<Watermark>, NotAWatermark> {
        if prefix != MESSAGE_PREFIX {
            return Ok(None);
        }
        if content.len() > MAX_WATERMARK_BYTES {
            return Err(NotAWatermark {
                lsn,
                reason: format!("{} bytes", content.len()),
            });
        }
        serde_json::from_slice(content)
            .map(Some)
            .map_err(|e| NotAWatermark {
                lsn,
                reason: e.to_string(),
            })
    }
}

/// The largest logical message read as a watermark: one is well under 200
/// bytes, so anything larger is not one (and is skipped by the source
/// without being held).
pub const MAX_WATERMARK_BYTES: usize = 1024;

/// A chunk read between two watermarks, waiting for its high watermark.
#[derive(Debug)]
pub struct Chunk {
    pub backfill_id: i64,
    pub table: Arc<TableShape>,
    pub webhook_ids: Vec<i32>,
    /// Each row's columns as text, in `table.columns` order.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Chunk {
    /// The chunk's table as the replication stream describes a table, so
    /// its rows become events the way live changes do.
    pub fn relation(&self) -> pgoutput::Relation {
        let shape = &self.table;
        pgoutput::Relation {
            oid: shape.oid,
            namespace: shape.namespace.clone(),
            name: shape.name.clone(),
            replica_identity: match shape.replica_identity {
                b'f' => pgoutput::ReplicaIdentity::Full,
                b'i' => pgoutput::ReplicaIdentity::Index,
                b'n' => pgoutput::ReplicaIdentity::Nothing,
                _ => pgoutput::ReplicaIdentity::Default,
            },
            columns: shape
                .columns
                .iter()
                .map(|c| pgoutput::Column {
                    is_key: c.is_identity,
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                })
                .collect(),
        }
    }

    /// The chunk's rows as the replication stream carries rows (text
    /// values), taken out of the chunk.
    pub fn take_tuples(&mut self) -> Vec<TupleData> {
        std::mem::take(&mut self.rows)
            .into_iter()
            .map(|row| {
                TupleData(
                    row.into_iter()
                        .map(|v| match v {
                            Some(text) => TupleValue::Text(text.into()),
                            None => TupleValue::Null,
                        })
                        .collect(),
                )
            })
            .collect()
    }
}

/// What the pipeline tells the worker about one chunk.
pub struct ChunkSignals {
    /// Sent at the high watermark, once the chunk's events were
    /// dispatched: the count of rows sent (after the live changes won).
    pub dispatched: oneshot::Sender<usize>,
    /// Sent once the slot may pass the high watermark: every event of the
    /// chunk was delivered, parked or dropped by the state rules.
    pub settled: oneshot::Sender<()>,
}

struct Entry {
    table: String,
    webhook_ids: Vec<i32>,
    chunk: Option<Chunk>,
    signals: Option<ChunkSignals>,
}

/// Where the worker leaves a chunk for the pipeline. The worker announces
/// a chunk before writing its low watermark and fills it before writing the
/// high one, so the pipeline finds it when the stream gets there.
pub struct Board {
    run: Uuid,
    entries: Mutex<HashMap<(i64, u64), Entry>>,
}

impl Board {
    pub fn new() -> Arc<Board> {
        Arc::new(Board {
            run: Uuid::new_v4(),
            entries: Mutex::new(HashMap::new()),
        })
    }

    pub fn run(&self) -> Uuid {
        self.run
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, u64), Entry>> {
        // A panic while holding the lock leaves only plain data behind.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announce a chunk before its low watermark.
    pub fn announce(
        &self,
        backfill_id: i64,
        chunk: u64,
        table: &TableShape,
        webhook_ids: &[i32],
        signals: ChunkSignals,
    ) {
        self.lock().insert(
            (backfill_id, chunk),
            Entry {
                table: table.qualified(),
                webhook_ids: webhook_ids.to_vec(),
                chunk: None,
                signals: Some(signals),
            },
        );
    }

    /// The chunk's rows, before its high watermark.
    pub fn fill(&self, chunk_no: u64, chunk: Chunk) {
        if let Some(entry) = self.lock().get_mut(&(chunk.backfill_id, chunk_no)) {
            entry.chunk = Some(chunk);
        }
    }

    /// Forget a chunk (the worker gave up on it).
    pub fn withdraw(&self, backfill_id: i64, chunk: u64) {
        self.lock().remove(&(backfill_id, chunk));
    }
}

/// The chunk whose watermarks the stream is between.
struct Window {
    backfill_id: i64,
    chunk: u64,
    table: String,
    hooks: HashSet<i32>,
    /// Per hook, the ordering keys of rows it was sent a live change of.
    changed: HashMap<i32, HashSet<String>>,
    /// Hooks that were sent a TRUNCATE of the table.
    truncated: HashSet<i32>,
}

/// A chunk at its high watermark, with what the live stream decided.
pub struct ClosedChunk {
    pub chunk: Chunk,
    pub signals: ChunkSignals,
    changed: HashMap<i32, HashSet<String>>,
    truncated: HashSet<i32>,
}

impl ClosedChunk {
    /// Whether the row keyed `ordering_key` still goes to `webhook_id`: not
    /// when the hook was sent a live change of it (or a TRUNCATE) while
    /// the chunk was read.
    pub fn sends(&self, webhook_id: i32, ordering_key: &str) -> bool {
        !self.truncated.contains(&webhook_id)
            && !self
                .changed
                .get(&webhook_id)
                .is_some_and(|keys| keys.contains(ordering_key))
    }
}

/// The pipeline's side: follows the watermarks in the stream and the live
/// changes between them.
pub struct Reconciler {
    board: Arc<Board>,
    window: Option<Window>,
    /// Chunks whose high watermark was read in the open transaction.
    in_transaction: Vec<oneshot::Sender<()>>,
    /// Committed high watermarks: (commit end, signal) to send once the
    /// position passes it.
    unsettled: Vec<(Lsn, oneshot::Sender<()>)>,
}

impl Reconciler {
    pub fn new(board: Arc<Board>) -> Reconciler {
        Reconciler {
            board,
            window: None,
            in_transaction: Vec::new(),
            unsettled: Vec::new(),
        }
    }

    /// A watermark read in the stream. Returns the chunk to send at a high
    /// watermark of this run.
    pub fn watermark(&mut self, mark: &Watermark) -> Option<ClosedChunk> {
        if mark.run != self.board.run() {
            // An earlier run's: its chunk is read again from the recorded key.
            return None;
        }
        match mark.mark {
            Mark::Low => {
                let entries = self.board.lock();
                let entry = entries.get(&(mark.backfill, mark.chunk))?;
                // A window left open (the worker gave up between the
                // watermarks) is simply replaced.
                self.window = Some(Window {
                    backfill_id: mark.backfill,
                    chunk: mark.chunk,
                    table: entry.table.clone(),
                    hooks: entry.webhook_ids.iter().copied().collect(),
                    changed: HashMap::new(),
                    truncated: HashSet::new(),
                });
                None
            }
            Mark::High => {
                let window = self
                    .window
                    .take_if(|w| w.backfill_id == mark.backfill && w.chunk == mark.chunk)?;
                let mut entry = self.board.lock().remove(&(mark.backfill, mark.chunk))?;
                let chunk = entry.chunk.take()?;
                let signals = entry.signals.take()?;
                Some(ClosedChunk {
                    chunk,
                    signals,
                    changed: window.changed,
                    truncated: window.truncated,
                })
            }
        }
    }

    /// A live event of `table` was routed to `webhook_id` (delivered,
    /// parked or skipped by its state).
    pub fn live_event(
        &mut self,
        table: &str,
        ordering_key: &str,
        previous_key: Option<&str>,
        truncate: bool,
        webhook_id: i32,
    ) {
        let Some(window) = self.window.as_mut() else {
            return;
        };
        if window.table != table || !window.hooks.contains(&webhook_id) {
            return;
        }
        if truncate {
            window.truncated.insert(webhook_id);
            return;
        }
        let keys = window.changed.entry(webhook_id).or_default();
        keys.insert(ordering_key.to_owned());
        if let Some(previous) = previous_key {
            keys.insert(previous.to_owned());
        }
    }

    /// The high watermark's events were handed to delivery in the open
    /// transaction.
    pub fn dispatched(&mut self, closed: ClosedChunk, sent: usize) {
        let ClosedChunk { signals, .. } = closed;
        let _ = signals.dispatched.send(sent);
        self.in_transaction.push(signals.settled);
    }

    /// The open transaction committed; it ends at `end_lsn`.
    pub fn committed(&mut self, end_lsn: Lsn) {
        for signal in self.in_transaction.drain(..) {
            self.unsettled.push((end_lsn, signal));
        }
    }

    /// The position may pass `confirmable`: tell the worker which chunks
    /// are settled.
    pub fn settle(&mut self, confirmable: Lsn) {
        let (done, waiting): (Vec<_>, Vec<_>) = self
            .unsettled
            .drain(..)
            .partition(|(end, _)| *end <= confirmable);
        self.unsettled = waiting;
        for (_, signal) in done {
            let _ = signal.send(());
        }
    }
}

#[cfg(test)]
mod tests;
