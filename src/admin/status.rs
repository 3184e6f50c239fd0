//! `walhook status`: the slot, the publications and the hooks.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::connect;
use super::render::{bytes, columns, or_dash, pairs, short, state_name};
use crate::cli::exit;
use crate::config::Config;
use crate::delivery::{parked_bytes_warning, parked_limit_warning};
use crate::store::slot::SlotStatus;
use crate::store::webhooks::HookStats;

/// The slot as `status` reports it.
#[derive(Serialize)]
struct SlotReport {
    #[serde(flatten)]
    slot: SlotStatus,
    time_lag_seconds: Option<f64>,
    time_lag_source: String,
}

/// `walhook status`: the slot and the hooks. Exits [`exit::SLOT_LOST`] when
/// the slot is missing or lost.
pub async fn status(config: &Config, as_json: bool) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let slot_name = &config.postgres.slot;
    let mut slot = store.slot_status(slot_name).await?;
    // Informative only: an installation without the table still has a status.
    if let Ok(progress) = store.stored_progress(slot_name).await {
        slot.settled_lsn = progress.settled.map(|lsn| lsn.to_string());
    }

    let mut problems: Vec<(u8, String)> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    if !slot.exists {
        problems.push((
            exit::SLOT_LOST,
            format!(
                "replication slot {slot_name:?} does not exist: no changes are being captured; \
                 run `walhook setup` to create it (changes made before that are not sent)"
            ),
        ));
    } else {
        if let Some(cause) = slot.invalidation.clone() {
            problems.push((
                exit::SLOT_LOST,
                crate::errors::SlotLost {
                    slot: slot_name.clone(),
                    cause,
                }
                .to_string(),
            ));
        } else if slot.wal_status.as_deref() == Some("unreserved") {
            warnings.push(format!(
                "replication slot {slot_name:?} has wal_status unreserved: it holds more WAL than \
                 max_slot_wal_keep_size and will be lost at a coming checkpoint unless walhook catches up"
            ));
        }
        if slot.plugin.as_deref() != Some("pgoutput") {
            problems.push((
                exit::FAILURE,
                format!(
                    "replication slot {slot_name:?} is not a pgoutput logical slot (plugin {}): \
                     it is not walhook's; choose another [postgres] slot",
                    slot.plugin.as_deref().unwrap_or("none")
                ),
            ));
        }
    }
    let (time_lag_seconds, time_lag_source) = time_lag(&slot);
    let report = SlotReport {
        slot,
        time_lag_seconds,
        time_lag_source,
    };

    let mut publications = Vec::new();
    for (name, exists) in crate::setup::publications(&store, config).await? {
        if !exists {
            problems.push((
                exit::FAILURE,
                format!("publication {name:?} does not exist: walhook cannot stream; run `walhook setup`"),
            ));
        }
        publications.push(json!({"name": name, "exists": exists}));
    }

    // A role without walhook's grants: the GRANTs, not the first table
    // that failed.
    let role = store.role().await?.name;
    let lacks_grants = store.schema_exists().await? && !store.run_role_can_work(&role).await?;
    if lacks_grants {
        problems.push((
            exit::FAILURE,
            crate::store::privileges::RunRoleLacksGrants {
                role,
                schema: config.postgres.schema.clone(),
            }
            .to_string(),
        ));
    }
    let (hooks, hooks_readable) = match store.hook_stats().await {
        Ok(hooks) => (hooks, true),
        Err(e) => {
            if !lacks_grants {
                problems.push((exit::FAILURE, format!("{e:#}")));
            }
            (Vec::new(), false)
        }
    };
    // Rows the daemon skips (a row it cannot use) look Active in the table:
    // named here, as `webhook list` names them.
    let skipped: BTreeMap<i32, String> = match store.webhook_rows().await {
        Ok(rows) => rows
            .iter()
            .filter_map(|row| {
                let why = crate::registry::Webhook::from_row(row).err()?;
                let id = row.0.get("webhook_id")?.as_deref()?.parse().ok()?;
                Some((id, why.0))
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    for (id, why) in &skipped {
        warnings.push(format!("webhook_id {id} is skipped by the daemon: {why}"));
    }
    let parked_total: i64 = hooks.iter().map(|h| h.parked).sum();
    // Every backfill with work left and the few that ended last;
    // informative only, like the recorded position.
    let backfills: Vec<_> = store
        .backfills()
        .await
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter(|(n, b)| b.state.is_open() || *n < 5)
        .map(|(_, b)| b)
        .collect();
    // Well before a bound stops a hook.
    let d = &config.delivery;
    warnings.extend(hooks.iter().flat_map(|h| {
        [
            parked_limit_warning(h.id, h.parked, d.max_parked_events_per_webhook),
            parked_bytes_warning(h.id, h.parked_bytes, d.max_parked_bytes_per_webhook),
        ]
        .into_iter()
        .flatten()
    }));

    if as_json {
        let slot_json = if report.slot.exists {
            serde_json::to_value(&report)?
        } else {
            json!({"name": slot_name, "exists": false})
        };
        let doc = json!({
            "slot": slot_json,
            "publications": publications,
            "schema": config.postgres.schema,
            "hooks": hooks
                .iter()
                .map(|h| {
                    let mut hook = hook_json(h);
                    hook["skipped"] = json!(skipped.get(&h.id));
                    hook
                })
                .collect::<Vec<_>>(),
            "parked_total": parked_total,
            "backfills": backfills.iter().map(super::backfill::backfill_json).collect::<Vec<_>>(),
            "warnings": warnings,
            "problems": problems.iter().map(|(_, p)| p).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let webhook_table = store.table_name("webhook");
        let hooks = hooks_readable.then_some(hooks.as_slice());
        print_status(&report, hooks, &skipped, parked_total, &webhook_table);
        if !backfills.is_empty() {
            println!("\nBackfills:\n{}", super::backfill::table(&backfills));
        }
        for w in &warnings {
            println!("WARNING: {w}");
        }
        for (_, p) in &problems {
            println!("PROBLEM: {p}");
        }
    }
    Ok(problems.iter().map(|(c, _)| *c).max().unwrap_or(exit::OK))
}

/// The hook's state, and its pause and rate limit when set.
fn hook_state(h: &HookStats) -> String {
    let mut text = h.state.map_or("-".into(), state_name);
    if h.paused {
        text.push_str(", paused");
    }
    match h.max_per_minute {
        Some(n) if n % 60 == 0 => text.push_str(&format!(", max {}/s", n / 60)),
        Some(n) => text.push_str(&format!(", max {n}/min")),
        None => {}
    }
    text
}

fn hook_json(h: &HookStats) -> Value {
    json!({
        "webhook_id": h.id,
        "registered": h.registered,
        "name": h.name,
        "state": h.state,
        "state_name": h.state.map(state_name),
        "total_calls": h.total_calls,
        "total_errors": h.total_errors,
        "consecutive_errors": h.consecutive_errors,
        "last_success": h.last_success,
        "last_failure": h.last_failure,
        "last_error": h.last_error.as_deref().map(|e| short(e, 200)),
        "parked": h.parked,
        "parked_bytes": h.parked_bytes,
        "oldest_parked": h.oldest_parked,
        "paused": h.paused,
        "max_per_minute": h.max_per_minute,
        "total_throttled": h.total_throttled,
    })
}

/// The time lag and where the figure comes from. PostgreSQL does not record
/// when the oldest unconfirmed change was committed, so the only measured
/// figure is the walsender's own lag tracking, available while a walhook is
/// attached.
fn time_lag(slot: &SlotStatus) -> (Option<f64>, String) {
    let pid = or_dash(slot.active_pid);
    if !slot.active {
        return (
            None,
            "unknown: no walhook is attached to the slot, so nothing measures it \
             (the lag in bytes grows until `walhook run` streams again)"
                .into(),
        );
    }
    if slot.walsender_pid.is_none() {
        return (
            None,
            format!("unknown: pg_stat_replication has no row for walsender pid {pid}"),
        );
    }
    if slot.walsender_state.is_none() {
        return (
            None,
            "unknown: this role may not read pg_stat_replication's lag columns \
             (grant it pg_read_all_stats)"
                .into(),
        );
    }
    match slot.flush_lag {
        Some(secs) => (
            Some(secs),
            format!(
                "pg_stat_replication.flush_lag of walsender pid {pid}: time from the server \
                 writing recent WAL to walhook confirming it"
            ),
        ),
        None if slot.lag_bytes == Some(0) => (
            Some(0.0),
            "caught up: the confirmed position is the server's WAL end".into(),
        ),
        None => (
            None,
            format!(
                "unknown: pg_stat_replication.flush_lag of walsender pid {pid} is NULL \
                 (no recent lag sample; usually walhook has caught up and the database is idle)"
            ),
        ),
    }
}

/// `hooks` is `None` when they could not be read (the PROBLEM lines say
/// why).
fn print_status(
    report: &SlotReport,
    hooks: Option<&[HookStats]>,
    skipped: &BTreeMap<i32, String>,
    parked_total: i64,
    webhook_table: &str,
) {
    let slot = &report.slot;
    let mut lines: Vec<(&str, String)> = Vec::new();
    if !slot.exists {
        lines.push(("slot", format!("{} (missing)", slot.name)));
    } else {
        lines.push((
            "slot",
            format!(
                "{} (plugin {}, database {})",
                slot.name,
                or_dash(slot.plugin.as_deref()),
                or_dash(slot.database.as_deref())
            ),
        ));
        let status = or_dash(slot.wal_status.as_deref());
        lines.push((
            "wal_status",
            match &slot.invalidation {
                Some(cause) => format!("{status}  <-- the server invalidated the slot: {cause}"),
                None => status,
            },
        ));
        if let Some(failover) = slot.failover {
            let synced = if slot.synced == Some(true) {
                " (synchronised from the primary: this server is a standby)"
            } else {
                ""
            };
            lines.push((
                "failover",
                format!("{}{synced}", if failover { "yes" } else { "no" }),
            ));
        }
        lines.push((
            "attached",
            if slot.active {
                format!("yes, walsender pid {}", or_dash(slot.active_pid))
            } else {
                let since = slot
                    .inactive_since
                    .as_deref()
                    .map(|s| format!(" (inactive since {s})"))
                    .unwrap_or_default();
                format!("no: no walhook is streaming from the slot{since}")
            },
        ));
        lines.push((
            "confirmed",
            format!(
                "{} (the slot's position: the server keeps WAL from about here; server at {})",
                or_dash(slot.confirmed_flush_lsn.as_deref()),
                or_dash(slot.server_lsn.as_deref())
            ),
        ));
        if let Some(settled) = &slot.settled_lsn {
            lines.push((
                "settled",
                format!(
                    "{settled} (recorded by walhook: every event before it delivered, parked or \
                     dropped; confirmed follows it within a moment, and after a crash walhook \
                     resumes from the later of the two)"
                ),
            ));
        }
        lines.push(("lag", slot.lag_bytes.map_or("unknown".into(), bytes)));
        lines.push((
            "time lag",
            match report.time_lag_seconds {
                Some(secs) => format!("{secs:.3} s, from {}", report.time_lag_source),
                None => report.time_lag_source.clone(),
            },
        ));
        lines.push((
            "WAL retained",
            match slot.retained_wal_bytes {
                Some(n) => format!(
                    "{} since restart_lsn {}",
                    bytes(n),
                    or_dash(slot.restart_lsn.as_deref())
                ),
                None => "unknown".into(),
            },
        ));
    }
    lines.push(("parked events", parked_total.to_string()));
    print!("{}", pairs(&lines));

    println!();
    let Some(hooks) = hooks else {
        println!("hooks: {webhook_table} could not be read (see PROBLEM below)");
        return;
    };
    if hooks.is_empty() {
        println!("no hooks in {webhook_table} (add one with `walhook webhook add`)");
        return;
    }
    println!("hooks ({webhook_table})");
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                match (&h.name, h.registered) {
                    (Some(n), true) => short(n, 30),
                    _ => "(removed)".into(),
                },
                if skipped.contains_key(&h.id) {
                    format!("{}, SKIPPED (see below)", hook_state(h))
                } else {
                    hook_state(h)
                },
                h.total_calls.to_string(),
                h.total_errors.to_string(),
                h.consecutive_errors.to_string(),
                or_dash(h.last_success.as_deref()),
                h.parked.to_string(),
                // When it happened: after a recovery the last error is
                // history, and its time says so.
                // The last column: no need to cut it short, and the cause
                // is at the end of an error's chain.
                h.last_error.as_deref().map_or("-".into(), |e| {
                    format!("{} {}", or_dash(h.last_failure.as_deref()), short(e, 300))
                }),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(
            &[
                "ID",
                "NAME",
                "STATE",
                "CALLS",
                "ERRORS",
                "CONSECUTIVE",
                "LAST SUCCESS",
                "PARKED",
                "LAST ERROR",
            ],
            &rows
        )
    );
}
