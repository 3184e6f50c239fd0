//! The settled position, kept in `slot_progress` (one row per slot).
//!
//! The slot's own `confirmed_flush_lsn` reaches the server only with a
//! status update and reaches disk only at a checkpoint, so after a `kill -9`
//! of walhook or a crash of PostgreSQL it is behind what walhook had
//! settled, and everything in between would be sent again. walhook
//! therefore records the position it may confirm in its own table as soon
//! as it advances (at most once per `postgres.progress_interval`, since
//! each write is WAL on the host), and resumes from the later of the two.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::usage::UsageColumns;
use super::{failed, SqlResult, Store};
use crate::delivery::{UsageBook, UsageDelta};
use crate::errors::is_lost_connection;
use crate::pgoutput::Lsn;

/// What the store knows about where to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredProgress {
    /// The settled position recorded for the slot, if any.
    pub settled: Option<Lsn>,
    /// The server's WAL write position (`pg_current_wal_lsn()`), `None` on
    /// a standby: a recorded position beyond it belongs to another history.
    pub server_wal: Option<Lsn>,
}

/// Why the position cannot be recorded in this database, while streaming
/// still works: an installation that has not run `setup` since
/// `slot_progress` came, or a run role without rights on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProgressUnavailable(pub String);

/// Longest pause between two failed writes.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(60);

fn parse(text: &str, what: &str) -> anyhow::Result<Lsn> {
    Lsn::parse(text).map_err(|e| anyhow!("{what} {text:?}: {e}"))
}

impl Store {
    /// The recorded position of `slot` and the server's WAL position. A
    /// missing table or missing rights is [`ProgressUnavailable`].
    pub async fn stored_progress(&self, slot: &str) -> anyhow::Result<StoredProgress> {
        let table = self.table("slot_progress");
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (SELECT lsn::text FROM {table} WHERE slot_name = $1), \
                            CASE WHEN pg_is_in_recovery() THEN NULL \
                                 ELSE pg_current_wal_lsn()::text END"
                ),
                &[&slot],
            )
            .await
            .map_err(|e| self.progress_error("reading", e))?;
        let settled: Option<String> = row.get(0);
        let server_wal: Option<String> = row.get(1);
        Ok(StoredProgress {
            settled: settled
                .map(|t| {
                    parse(
                        &t,
                        &format!("{} position", self.table_name("slot_progress")),
                    )
                })
                .transpose()?,
            server_wal: server_wal
                .map(|t| parse(&t, "pg_current_wal_lsn()"))
                .transpose()?,
        })
    }

    /// Record `lsn` as settled for `slot`, and in the same statement (one
    /// transaction) add `usage` to the statistics, so a crash keeps both or
    /// neither. The row never moves backwards, so a late write cannot undo
    /// a newer one. Committed asynchronously: a write lost in a server
    /// crash only means a little more is sent again (and counted again),
    /// never that anything is skipped, and walhook adds no WAL flush of
    /// its own to the host's commits.
    pub async fn write_progress(
        &self,
        slot: &str,
        lsn: Lsn,
        usage: &HashMap<i32, UsageDelta>,
    ) -> anyhow::Result<()> {
        let table = self.table("slot_progress");
        let columns = UsageColumns::of(usage);
        let lsn_text = lsn.to_string();
        let mut params: Vec<&(dyn ToSql + Sync)> = columns.params().to_vec();
        params.push(&slot);
        params.push(&lsn_text);
        let sql = format!(
            "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true)), {} \
             INSERT INTO {table} AS p (slot_name, lsn, updated) \
             SELECT $13, $14::text::pg_lsn, now() FROM lazy \
             ON CONFLICT (slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, updated = now() \
              WHERE p.lsn < EXCLUDED.lsn",
            self.usage_ctes()
        );
        let statement = self
            .progress_statement
            .get_or_try_init(|| self.client.prepare(&sql))
            .await
            .map_err(|e| self.progress_error("preparing the write of", e))?;
        self.client
            .execute(statement, &params)
            .await
            .map_err(|e| self.progress_error("writing", e))?;
        Ok(())
    }

    /// [`write_progress`](Self::write_progress) with everything `book`
    /// holds; on failure the counts go back into the book.
    ///
    /// Every call is booked before its event settles, so this write carries
    /// (or follows the write of) the calls of every event before `lsn`:
    /// those events are never sent again, and their calls are never lost.
    /// The calls of later events it carries too: such an event is sent
    /// again after a crash, and its new calls count again, as they are
    /// made again.
    pub async fn record_progress(
        &self,
        slot: &str,
        lsn: Lsn,
        book: &UsageBook,
    ) -> anyhow::Result<()> {
        let batch = book.take();
        match self.write_progress(slot, lsn, &batch).await {
            Ok(()) => Ok(()),
            Err(e) => {
                book.restore(batch);
                Err(e)
            }
        }
    }

    /// Forget the recorded position of `slot`: the slot is being dropped
    /// or created, and a new slot must never inherit an old position. A
    /// missing table (walhook not set up) is fine.
    pub async fn clear_progress(&self, slot: &str) -> anyhow::Result<()> {
        let table = self.table("slot_progress");
        self.client
            .execute(
                &format!("DELETE FROM {table} WHERE slot_name = $1"),
                &[&slot],
            )
            .await
            .or_else(|e| match e.code() {
                Some(&SqlState::UNDEFINED_TABLE) | Some(&SqlState::INVALID_SCHEMA_NAME) => Ok(0),
                _ => Err(e),
            })
            .sql(format!(
                "clearing the position of slot {slot:?} in {}",
                self.table_name("slot_progress")
            ))?;
        Ok(())
    }

    fn progress_error(&self, what: &str, e: tokio_postgres::Error) -> anyhow::Error {
        let table = self.table_name("slot_progress");
        let unavailable = !is_lost_connection(&e)
            && matches!(
                e.code(),
                Some(&SqlState::UNDEFINED_TABLE) | Some(&SqlState::INSUFFICIENT_PRIVILEGE)
            );
        let error = failed(format!("{what} {table}"), e);
        if unavailable {
            anyhow::Error::new(ProgressUnavailable(format!(
                "{error:#} (run `walhook setup` to create it, and grant the run role \
                 SELECT, INSERT, UPDATE on it)"
            )))
        } else {
            error
        }
    }
}

/// Records the newest settled position it is handed, with the statistics
/// it covers, one write at a time: positions that arrive while a write is
/// in flight are coalesced into the next one. A failed write is logged and
/// tried again after a pause that grows to [`MAX_RETRY_PAUSE`]; a lost
/// session is the session's to notice.
pub struct ProgressWriter {
    pub store: Store,
    pub slot: String,
    /// The position already recorded (the session's start).
    pub recorded: Lsn,
    /// The statistics, written with each position.
    pub usage: UsageBook,
    /// Told each position once it is recorded.
    pub recorded_to: watch::Sender<Lsn>,
    /// The shortest time between two writes (`postgres.progress_interval`):
    /// each write costs the host a few hundred bytes of WAL, so a busy
    /// stream gets one write per interval, not one per transaction, while
    /// a quiet one still has each transaction recorded at once.
    pub min_interval: Duration,
}

impl ProgressWriter {
    /// Write until `settled`'s sender is dropped (also during a pause after
    /// a failure, whose counts are back in the book by then); returns the
    /// position last recorded.
    pub async fn run(mut self, mut settled: watch::Receiver<Lsn>) -> Lsn {
        let mut pause = Duration::from_millis(100);
        while settled.changed().await.is_ok() {
            let lsn = *settled.borrow_and_update();
            if lsn <= self.recorded {
                continue;
            }
            match self
                .store
                .record_progress(&self.slot, lsn, &self.usage)
                .await
            {
                Ok(()) => {
                    self.recorded = lsn;
                    self.recorded_to.send_replace(lsn);
                    pause = Duration::from_millis(100);
                    // Positions that come meanwhile wait for the next
                    // write; a closed channel ends the writer at once (the
                    // session records the last position itself).
                    match wait_out(&mut settled, self.min_interval).await {
                        None => return self.recorded,
                        Some(true) => settled.mark_changed(),
                        Some(false) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        position = %lsn,
                        "recording the settled position failed, retrying in {}: {e:#}",
                        crate::text::human_duration(pause)
                    );
                    if wait_out(&mut settled, pause).await.is_none() {
                        return self.recorded;
                    }
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                    settled.mark_changed();
                }
            }
        }
        self.recorded
    }
}

/// Wait `duration` while positions keep coming (the newest wins): `None`
/// when the session dropped its end meanwhile, else whether a position
/// came.
async fn wait_out(settled: &mut watch::Receiver<Lsn>, duration: Duration) -> Option<bool> {
    let wake = tokio::time::sleep(duration);
    tokio::pin!(wake);
    let mut came = false;
    loop {
        tokio::select! {
            _ = &mut wake => return Some(came),
            changed = settled.changed() => {
                changed.ok()?;
                came = true;
            }
        }
    }
}
