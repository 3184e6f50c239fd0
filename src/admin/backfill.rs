//! `walhook backfill`: register backfills for the running daemon, list
//! them, cancel one, and show progress on a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Value};

use super::render::{columns, short};
use super::{connect, invalid};
use crate::cli::{exit, BackfillArgs, BackfillCommand};
use crate::config::Config;
use crate::store::backfill::{BackfillRow, MissingGrant, NewBackfill, TableRefused};
use crate::store::Store;

/// The longest `--where` accepted: a condition, not a program.
const MAX_WHERE_CHARS: usize = 4000;
/// How often a terminal's progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

pub async fn backfill(config: &Config, args: BackfillArgs) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    match args.command {
        Some(BackfillCommand::List { json }) => list(&store, json).await,
        Some(BackfillCommand::Cancel { id }) => cancel(&store, id).await,
        None => register(config, &store, args).await,
    }
}

async fn register(config: &Config, store: &Store, args: BackfillArgs) -> anyhow::Result<u8> {
    let webhook_ids = if args.all_hooks {
        let mut ids = Vec::new();
        for row in store.webhook_rows().await? {
            if let Some(id) = row
                .0
                .get("webhook_id")
                .cloned()
                .flatten()
                .and_then(|t| t.parse::<i32>().ok())
            {
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Err(invalid(format!(
                "--all-hooks: {} has no rows",
                store.table_name("webhook")
            )));
        }
        ids
    } else {
        let mut ids = args.webhooks.clone();
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            if store.webhook_state(id).await?.is_none() {
                return Err(invalid(format!(
                    "webhook_id {id} does not exist in {}",
                    store.table_name("webhook")
                )));
            }
        }
        ids
    };
    let where_sql = args.where_sql.as_deref().map(str::trim);
    if let Some(w) = where_sql {
        if w.is_empty() || w.chars().count() > MAX_WHERE_CHARS {
            return Err(invalid(format!(
                "--where must be a condition of 1 to {MAX_WHERE_CHARS} characters"
            )));
        }
    }
    // Every table is checked before any backfill is registered.
    let mut shapes = Vec::new();
    for name in &args.tables {
        let shape = match store
            .backfill_table(name, &config.postgres.publication)
            .await
        {
            Ok(shape) => shape,
            Err(e) if refused(&e) => return Err(invalid(format!("{e:#}"))),
            Err(e) => return Err(e),
        };
        if let Some(w) = where_sql {
            match store.check_backfill_where(&shape, w).await {
                Ok(()) => {}
                Err(e) if refused(&e) => return Err(invalid(format!("{e:#}"))),
                Err(e) => return Err(e),
            }
        }
        let rows_estimate = store.estimate_rows(&shape).await?;
        shapes.push((shape, rows_estimate));
    }
    let mut ids = Vec::new();
    for (shape, rows_estimate) in &shapes {
        let id = store
            .register_backfill(&NewBackfill {
                table: shape,
                webhook_ids: &webhook_ids,
                where_sql,
                rows_estimate: *rows_estimate,
            })
            .await?;
        println!(
            "backfill {id}: {} (about {} rows) to webhook_id {}",
            shape.qualified(),
            rows_estimate,
            webhook_ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        ids.push(id);
    }
    if args.detach || !std::io::stdout().is_terminal() {
        println!("the running daemon sends the rows; `walhook backfill list` shows progress");
        return Ok(exit::OK);
    }
    follow(store, &ids).await
}

/// Whether the command refuses a table with a fix (rather than failing).
fn refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<TableRefused>().is_some() || e.downcast_ref::<MissingGrant>().is_some()
}

/// Show progress until every backfill in `ids` ended; exits non-zero when
/// one failed or was cancelled.
async fn follow(store: &Store, ids: &[i64]) -> anyhow::Result<u8> {
    let mut out = std::io::stdout();
    loop {
        let mut rows = Vec::new();
        for &id in ids {
            if let Some(row) = store.backfill(id).await? {
                rows.push(row);
            }
        }
        let line = rows
            .iter()
            .map(|b| format!("{} {} {}", b.id, b.state, progress(b)))
            .collect::<Vec<_>>()
            .join("  |  ");
        write!(out, "\r\x1b[2K{line}")?;
        out.flush()?;
        if rows.iter().all(|b| !b.state.is_open()) {
            writeln!(out)?;
            for b in rows.iter().filter(|b| b.error.is_some()) {
                println!(
                    "backfill {} failed: {}",
                    b.id,
                    b.error.as_deref().unwrap_or_default()
                );
            }
            let all_done = rows
                .iter()
                .all(|b| b.state == crate::store::backfill::BackfillState::Done);
            return Ok(if all_done { exit::OK } else { exit::FAILURE });
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

/// `rows sent / estimate (percent)` with a small bar.
fn progress(b: &BackfillRow) -> String {
    let estimate = b.rows_estimate.max(b.rows_sent);
    if estimate <= 0 {
        return format!("{} rows", b.rows_sent);
    }
    let fraction = if b.state == crate::store::backfill::BackfillState::Done {
        1.0
    } else {
        b.rows_sent as f64 / estimate as f64
    };
    let filled = (fraction * 20.0).round() as usize;
    format!(
        "[{}{}] {}/{} rows ({:.0}%)",
        "#".repeat(filled.min(20)),
        ".".repeat(20 - filled.min(20)),
        b.rows_sent,
        estimate,
        fraction * 100.0
    )
}

async fn list(store: &Store, as_json: bool) -> anyhow::Result<u8> {
    let rows = store.backfills().await?;
    if as_json {
        let doc: Vec<Value> = rows.iter().map(backfill_json).collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        println!("no backfills");
        return Ok(exit::OK);
    }
    print!("{}", table(&rows));
    Ok(exit::OK)
}

/// The backfills as aligned columns (also used by `status`).
pub(super) fn table(rows: &[BackfillRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                b.table.clone(),
                b.webhook_ids
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                b.state.to_string(),
                progress(b),
                b.updated.clone(),
                b.error
                    .as_deref()
                    .map(|e| short(e, 400))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    columns(
        &[
            "BACKFILL", "TABLE", "HOOKS", "STATE", "PROGRESS", "UPDATED", "ERROR",
        ],
        &cells,
    )
}

pub(super) fn backfill_json(b: &BackfillRow) -> Value {
    json!({
        "backfill_id": b.id,
        "table": b.table,
        "webhook_ids": b.webhook_ids,
        "where": b.where_sql,
        "state": b.state.as_str(),
        "last_key": b.last_key,
        "rows_sent": b.rows_sent,
        "rows_estimate": b.rows_estimate,
        "error": b.error,
        "updated": b.updated,
    })
}

async fn cancel(store: &Store, id: i64) -> anyhow::Result<u8> {
    match store.cancel_backfill(id).await? {
        None => {
            eprintln!(
                "backfill {id} does not exist in {}",
                store.table_name("backfill")
            );
            Ok(exit::FAILURE)
        }
        Some(crate::store::backfill::BackfillState::Cancelled) => {
            println!("backfill {id} cancelled: no further chunk is read");
            Ok(exit::OK)
        }
        Some(state) => {
            println!("backfill {id} had already ended ({state})");
            Ok(exit::OK)
        }
    }
}
