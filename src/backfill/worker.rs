//! The worker: reads backfills' chunks between watermarks (see the module
//! above) and records their progress once the pipeline says they settled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Board, Chunk, ChunkSignals, Mark, Watermark};
use crate::config::BackfillConfig;
use crate::store::backfill::{BackfillRow, BackfillState, ChunkTimedOut, TableRefused, TableShape};
use crate::store::Store;

/// How often the `backfill` table is looked at while there is no work.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Chunks dispatched but not yet settled, at most: the next chunk waits.
/// Their rows are held by delivery (bounded by its byte limit), not here.
const MAX_UNSETTLED_CHUNKS: usize = 4;

/// One chunk dispatched and waiting to settle.
struct Unsettled {
    settled: oneshot::Receiver<()>,
    /// The chunk's last key, recorded once it settled.
    last_key: Vec<String>,
    /// rows_sent once it settled.
    rows_sent: i64,
}

/// Runs the backfills of the `backfill` table, oldest first, one at a time.
pub struct Worker {
    /// The worker's own SQL session: a chunk's SELECT must not hold up
    /// parking and statistics on the daemon's.
    pub store: Store,
    pub board: Arc<Board>,
    pub config: BackfillConfig,
    /// The publication whose tables may be backfilled.
    pub publication: String,
    /// Rows read since the worker started, for the rate limit.
    pub rows_read: u64,
    pub started: Instant,
}

impl Worker {
    /// Work until the session ends (it aborts this task) or the SQL session
    /// fails (returned; the daemon's session decides what follows).
    pub async fn run(mut self) -> anyhow::Result<()> {
        self.store
            .pin_output_settings(crate::source::OUTPUT_SETTINGS)
            .await?;
        loop {
            let Some(backfill) = self.store.next_backfill().await? else {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            if backfill.state == BackfillState::Pending {
                self.store
                    .set_backfill_state(backfill.id, BackfillState::Running, None)
                    .await?;
            }
            tracing::info!(
                backfill_id = backfill.id,
                table = %backfill.table,
                webhook_ids = ?backfill.webhook_ids,
                from_key = ?backfill.last_key,
                "backfill running"
            );
            match self.backfill(&backfill).await {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<TableRefused>().is_some() => {
                    tracing::error!(backfill_id = backfill.id, "backfill failed: {e:#}");
                    self.store
                        .set_backfill_state(
                            backfill.id,
                            BackfillState::Failed,
                            Some(&format!("{e:#}")),
                        )
                        .await?;
                }
                Err(e) => {
                    // The backfill stays open and is taken up again; until
                    // then its row says why it does not move.
                    if let Err(record) = self
                        .store
                        .record_backfill_error(backfill.id, &format!("{e:#}"))
                        .await
                    {
                        tracing::debug!("{record:#}");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One backfill, from its recorded key to the end of the table (or a
    /// cancel).
    async fn backfill(&mut self, backfill: &BackfillRow) -> anyhow::Result<()> {
        let id = backfill.id;
        // The rate holds per backfill, not across idle time.
        self.started = Instant::now();
        self.rows_read = 0;
        let table = Arc::new(
            self.store
                .backfill_table(&backfill.table, &self.publication)
                .await?,
        );
        let mut chunk_rows = self.config.chunk_rows;
        let mut after = backfill.last_key.clone();
        let mut rows_sent = backfill.rows_sent;
        let mut unsettled: VecDeque<Unsettled> = VecDeque::new();
        let mut chunk_no = 0u64;
        loop {
            // Record what settled; wait when too much is in flight.
            loop {
                let wait = unsettled.len() >= MAX_UNSETTLED_CHUNKS;
                let Some(front) = unsettled.front_mut() else {
                    break;
                };
                let settled = if wait {
                    (&mut front.settled).await.is_ok()
                } else {
                    match front.settled.try_recv() {
                        Ok(()) => true,
                        Err(oneshot::error::TryRecvError::Empty) => break,
                        Err(oneshot::error::TryRecvError::Closed) => false,
                    }
                };
                if !settled {
                    return Err(anyhow!("the pipeline ended before backfill {id} settled"));
                }
                if let Some(done) = unsettled.pop_front() {
                    self.store
                        .record_backfill_progress(id, &done.last_key, done.rows_sent)
                        .await?;
                }
            }
            match self.store.backfill(id).await?.map(|b| b.state) {
                Some(BackfillState::Cancelled) | None => {
                    tracing::info!(backfill_id = id, "backfill cancelled");
                    return Ok(());
                }
                _ => {}
            }
            chunk_no += 1;
            let read = self
                .chunk(&table, backfill, chunk_no, after.as_deref(), chunk_rows)
                .await;
            let (rows, dispatched, settled, last_key) = match read {
                Ok(read) => read,
                Err(e) if e.downcast_ref::<ChunkTimedOut>().is_some() && chunk_rows > 1 => {
                    chunk_rows = (chunk_rows / 2).max(1);
                    tracing::warn!(
                        backfill_id = id,
                        table = %table.qualified(),
                        "a chunk's SELECT ran past backfill.statement_timeout: reading {chunk_rows} \
                         rows a chunk from now on"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            let sent = dispatched
                .await
                .map_err(|_| anyhow!("the pipeline ended before backfill {id} was dispatched"))?;
            tracing::debug!(
                backfill_id = id,
                chunk = chunk_no,
                rows,
                sent,
                "chunk dispatched"
            );
            let Some(last_key) = last_key else {
                break;
            };
            rows_sent += rows as i64;
            unsettled.push_back(Unsettled {
                settled,
                last_key: last_key.clone(),
                rows_sent,
            });
            after = Some(last_key);
            self.pace().await;
            if rows < chunk_rows {
                break;
            }
        }
        for done in unsettled {
            done.settled
                .await
                .map_err(|_| anyhow!("the pipeline ended before backfill {id} settled"))?;
            self.store
                .record_backfill_progress(id, &done.last_key, done.rows_sent)
                .await?;
        }
        self.store
            .set_backfill_state(id, BackfillState::Done, None)
            .await?;
        tracing::info!(backfill_id = id, table = %table.qualified(), rows_sent, "backfill done");
        Ok(())
    }

    /// Low watermark, SELECT, high watermark. Returns the rows read, the
    /// dispatched and settled signals, and the chunk's last key (`None`:
    /// the chunk was empty).
    #[allow(clippy::type_complexity)]
    async fn chunk(
        &mut self,
        table: &Arc<TableShape>,
        backfill: &BackfillRow,
        chunk_no: u64,
        after: Option<&[String]>,
        limit: usize,
    ) -> anyhow::Result<(
        usize,
        oneshot::Receiver<usize>,
        oneshot::Receiver<()>,
        Option<Vec<String>>,
    )> {
        let id = backfill.id;
        let (dispatched_tx, dispatched) = oneshot::channel();
        let (settled_tx, settled) = oneshot::channel();
        self.board.announce(
            id,
            chunk_no,
            table,
            &backfill.webhook_ids,
            ChunkSignals {
                dispatched: dispatched_tx,
                settled: settled_tx,
            },
        );
        let mark = |mark| Watermark {
            run: self.board.run(),
            backfill: id,
            chunk: chunk_no,
            mark,
        };
        let low = mark(Mark::Low).to_json();
        let high = mark(Mark::High).to_json();
        if let Err(e) = self.store.emit_watermark(&low).await {
            self.board.withdraw(id, chunk_no);
            return Err(e);
        }
        let rows = match self
            .store
            .read_chunk(
                table,
                backfill.where_sql.as_deref(),
                after,
                limit,
                self.config.statement_timeout,
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                self.board.withdraw(id, chunk_no);
                return Err(e).with_context(|| format!("backfill {id}"));
            }
        };
        self.rows_read += rows.len() as u64;
        let count = rows.len();
        let last_key = rows.last().map(|row| {
            table
                .key
                .iter()
                .map(|&i| row[i].clone().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        self.board.fill(
            chunk_no,
            Chunk {
                backfill_id: id,
                table: Arc::clone(table),
                webhook_ids: backfill.webhook_ids.clone(),
                rows,
            },
        );
        if let Err(e) = self.store.emit_watermark(&high).await {
            self.board.withdraw(id, chunk_no);
            return Err(e);
        }
        Ok((count, dispatched, settled, last_key))
    }

    /// Keep to `backfill.max_rows_per_second` over the worker's lifetime.
    async fn pace(&self) {
        let rate = self.config.max_rows_per_second;
        if rate == 0 {
            return;
        }
        let due = self.started + Duration::from_secs_f64(self.rows_read as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
}
