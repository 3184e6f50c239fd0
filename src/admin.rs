//! The DBA's commands: `status`, `webhook list|add|set-state|test|remove`
//! and `teardown`.
//!
//! Each opens one ordinary SQL session (application_name and timeouts set by
//! [`connect_sql`]), prints for a person (aligned columns) or, where asked,
//! one JSON document for scripts, and returns the exit code. Errors name the
//! object at fault: the webhook_id, the file, the URL, the slot.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::cli::{exit, AddArgs, WebhookCommand};
use crate::config::Config;
use crate::daemon::connect_sql;
use crate::delivery::{check_target, http_client, request};
use crate::events::WebhookRow;
use crate::registry::{self, Webhook, WebhookState};
use crate::setup::{self, ident};
use crate::store::truncate_chars;

/// The command line asked for something invalid; nothing was changed.
/// `main` exits with [`exit::CONFIG`] for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(text: impl Into<String>) -> anyhow::Error {
    Invalid(text.into()).into()
}

/// The server's message with its detail and hint, on one line (the
/// Display of tokio-postgres errors repeats itself through `source`).
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            if matches!(
                *db.code(),
                SqlState::UNDEFINED_TABLE | SqlState::INVALID_SCHEMA_NAME
            ) {
                text.push_str(" (is walhook set up here? run `walhook setup`)");
            }
            text
        }
        None => error_chain(e),
    }
}

/// An error and its causes, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

trait PgResult<T> {
    /// Name what was being done when the server said no.
    fn pg(self, what: impl Display) -> anyhow::Result<T>;
}

impl<T> PgResult<T> for Result<T, tokio_postgres::Error> {
    fn pg(self, what: impl Display) -> anyhow::Result<T> {
        self.map_err(|e| anyhow!("{what}: {}", pg_message(&e)))
    }
}

async fn connect(config: &Config) -> anyhow::Result<Client> {
    let conn = config.connection().map_err(|e| invalid(format!("{e:#}")))?;
    connect_sql(&conn).await
}

/// `schema.table` as SQL, the schema quoted.
fn table(config: &Config, name: &str) -> String {
    format!("{}.{name}", ident(&config.postgres.schema))
}

/// The error for a webhook_id that is not in the table.
fn no_such_webhook(config: &Config, id: i32) -> anyhow::Error {
    anyhow!(
        "webhook_id {id} does not exist in {}",
        table_name(config, "webhook")
    )
}

/// `schema.table` as people read it, in messages.
fn table_name(config: &Config, name: &str) -> String {
    format!("{}.{name}", config.postgres.schema)
}

fn state_name(state: i16) -> String {
    match WebhookState::from_i16(state) {
        Some(s) => s.to_string(),
        None => format!("invalid ({state})"),
    }
}

/// Aligned columns; the last one is not padded.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key   value` lines, the values aligned.
fn pairs(lines: &[Vec<String>]) -> String {
    let width = lines
        .iter()
        .map(|l| l[0].chars().count())
        .max()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| format!("{:width$}  {}\n", l[0], l[1]))
        .collect()
}

/// The first line of `text`, at most `max` characters.
fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        format!("{}...", truncate_chars(line, max.saturating_sub(3)))
    } else {
        line.to_owned()
    }
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n.unsigned_abs() < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        if value.abs() < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{n} bytes ({value:.1} {unit})")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A timestamptz column as RFC 3339 UTC text, in SQL.
fn ts(expr: &str) -> String {
    format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
}

// ---------------------------------------------------------------- status

/// `walhook status`: the slot and the hooks. Exits [`exit::SLOT_LOST`] when
/// the slot is missing or lost.
pub async fn status(config: &Config, as_json: bool) -> anyhow::Result<u8> {
    let client = connect(config).await?;
    let slot = &config.postgres.slot;
    let row = client
        .query_one(
            "SELECT to_jsonb(s), \
                    pg_wal_lsn_diff(c.lsn, s.confirmed_flush_lsn)::bigint, \
                    pg_wal_lsn_diff(c.lsn, s.restart_lsn)::bigint, \
                    c.lsn::text, \
                    r.pid, r.state, \
                    extract(epoch FROM r.flush_lag)::float8, \
                    extract(epoch FROM r.replay_lag)::float8 \
               FROM (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                                 ELSE pg_current_wal_lsn() END AS lsn) c \
               LEFT JOIN pg_replication_slots s ON s.slot_name = $1 \
               LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
            &[slot],
        )
        .await
        .pg(format!(
            "reading replication slot {slot:?} from pg_replication_slots"
        ))?;
    let raw: Option<Value> = row.get(0);
    let lag_bytes: Option<i64> = row.get(1);
    let retained_bytes: Option<i64> = row.get(2);
    let server_lsn: Option<String> = row.get(3);
    let walsender_pid: Option<i32> = row.get(4);
    let walsender_state: Option<String> = row.get(5);
    let flush_lag: Option<f64> = row.get(6);

    let mut problems: Vec<(u8, String)> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let field = |name: &str| raw.as_ref().and_then(|r| r.get(name)).cloned();
    let text_field = |name: &str| field(name).and_then(|v| v.as_str().map(str::to_owned));
    let active = field("active").and_then(|v| v.as_bool()).unwrap_or(false);
    let active_pid = field("active_pid").and_then(|v| v.as_i64());
    let wal_status = text_field("wal_status");
    let plugin = text_field("plugin");

    let slot_json = match &raw {
        None => {
            problems.push((
                exit::SLOT_LOST,
                format!(
                    "replication slot {slot:?} does not exist: no changes are being captured; \
                     run `walhook setup` to create it (changes made before that are not sent)"
                ),
            ));
            json!({"name": slot, "exists": false})
        }
        Some(_) => {
            if wal_status.as_deref() == Some("lost") {
                let reason = text_field("invalidation_reason")
                    .map(|r| format!(" (invalidation_reason {r})"))
                    .unwrap_or_default();
                problems.push((
                    exit::SLOT_LOST,
                    format!(
                        "replication slot {slot:?} was invalidated by the server (wal_status lost){reason}: \
                         changes since its position are gone and walhook cannot stream from it. \
                         After checking what was missed, run `walhook teardown` and `walhook setup`"
                    ),
                ));
            } else if wal_status.as_deref() == Some("unreserved") {
                warnings.push(format!(
                    "replication slot {slot:?} has wal_status unreserved: it holds more WAL than \
                     max_slot_wal_keep_size and will be lost at a coming checkpoint unless walhook catches up"
                ));
            }
            if plugin.as_deref() != Some("pgoutput") {
                problems.push((
                    exit::FAILURE,
                    format!(
                        "replication slot {slot:?} is not a pgoutput logical slot (plugin {}): \
                         it is not walhook's; choose another [postgres] slot",
                        plugin.as_deref().unwrap_or("none")
                    ),
                ));
            }
            let (time_lag, source) = time_lag(
                active,
                active_pid,
                walsender_pid,
                walsender_state.as_deref(),
                flush_lag,
                lag_bytes,
            );
            json!({
                "name": slot,
                "exists": true,
                "plugin": plugin,
                "database": text_field("database"),
                "wal_status": wal_status,
                "active": active,
                "active_pid": active_pid,
                "confirmed_flush_lsn": text_field("confirmed_flush_lsn"),
                "restart_lsn": text_field("restart_lsn"),
                "server_lsn": server_lsn,
                "lag_bytes": lag_bytes,
                "retained_wal_bytes": retained_bytes,
                "safe_wal_size": field("safe_wal_size"),
                "inactive_since": field("inactive_since"),
                "time_lag_seconds": time_lag,
                "time_lag_source": source,
            })
        }
    };

    let mut publications = Vec::new();
    for (name, exists) in setup::publications(&client, config).await? {
        if !exists {
            problems.push((
                exit::FAILURE,
                format!("publication {name:?} does not exist: walhook cannot stream; run `walhook setup`"),
            ));
        }
        publications.push(json!({"name": name, "exists": exists}));
    }

    let hooks = match hook_stats(&client, config).await {
        Ok(hooks) => hooks,
        Err(e) => {
            problems.push((exit::FAILURE, format!("{e:#}")));
            Vec::new()
        }
    };
    let parked_total: i64 = hooks.iter().map(|h| h.parked).sum();

    if as_json {
        let doc = json!({
            "slot": slot_json,
            "publications": publications,
            "schema": config.postgres.schema,
            "hooks": hooks.iter().map(HookStats::to_json).collect::<Vec<_>>(),
            "parked_total": parked_total,
            "warnings": warnings,
            "problems": problems.iter().map(|(_, p)| p).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_status(&slot_json, &hooks, parked_total, config);
        for w in &warnings {
            println!("WARNING: {w}");
        }
        for (_, p) in &problems {
            println!("PROBLEM: {p}");
        }
    }
    Ok(problems.iter().map(|(c, _)| *c).max().unwrap_or(exit::OK))
}

/// The time lag and where the figure comes from. PostgreSQL does not record
/// when the oldest unconfirmed change was committed, so the only measured
/// figure is the walsender's own lag tracking, available while a walhook is
/// attached.
fn time_lag(
    active: bool,
    active_pid: Option<i64>,
    walsender_pid: Option<i32>,
    walsender_state: Option<&str>,
    flush_lag: Option<f64>,
    lag_bytes: Option<i64>,
) -> (Option<f64>, String) {
    let pid = active_pid.map_or("?".to_owned(), |p| p.to_string());
    if !active {
        return (
            None,
            "unknown: no walhook is attached to the slot, so nothing measures it \
             (the lag in bytes grows until `walhook run` streams again)"
                .into(),
        );
    }
    if walsender_pid.is_none() {
        return (
            None,
            format!("unknown: pg_stat_replication has no row for walsender pid {pid}"),
        );
    }
    if walsender_state.is_none() {
        return (
            None,
            "unknown: this role may not read pg_stat_replication's lag columns \
             (grant it pg_read_all_stats)"
                .into(),
        );
    }
    match flush_lag {
        Some(secs) => (
            Some(secs),
            format!(
                "pg_stat_replication.flush_lag of walsender pid {pid}: time from the server \
                 writing recent WAL to walhook confirming it"
            ),
        ),
        None if lag_bytes == Some(0) => (
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

/// One line of the hooks table in `status`.
struct HookStats {
    id: i32,
    /// A row exists in `webhook` (else: removed, with statistics or parked
    /// events left).
    registered: bool,
    name: Option<String>,
    state: Option<i16>,
    total_calls: i64,
    total_errors: i64,
    consecutive_errors: i32,
    last_success: Option<String>,
    last_failure: Option<String>,
    last_error: Option<String>,
    parked: i64,
    oldest_parked: Option<String>,
}

impl HookStats {
    fn to_json(&self) -> Value {
        json!({
            "webhook_id": self.id,
            "registered": self.registered,
            "name": self.name,
            "state": self.state,
            "state_name": self.state.map(state_name),
            "total_calls": self.total_calls,
            "total_errors": self.total_errors,
            "consecutive_errors": self.consecutive_errors,
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "last_error": self.last_error.as_deref().map(|e| short(e, 200)),
            "parked": self.parked,
            "oldest_parked": self.oldest_parked,
        })
    }
}

async fn hook_stats(client: &Client, config: &Config) -> anyhow::Result<Vec<HookStats>> {
    let sql = format!(
        "WITH parked AS (SELECT webhook_id, count(*) AS n, min(created) AS oldest \
                           FROM {delivery} GROUP BY 1), \
              ids AS (SELECT webhook_id FROM {webhook} \
                      UNION SELECT webhook_id FROM {usage} \
                      UNION SELECT webhook_id FROM parked) \
         SELECT i.webhook_id, w.webhook_id IS NOT NULL, w.name::text, w.state, \
                coalesce(u.total_calls, 0)::bigint, coalesce(u.total_errors, 0)::bigint, \
                coalesce(u.consecutive_errors, 0)::int, {last_success}, {last_failure}, \
                u.last_error::text, coalesce(p.n, 0)::bigint, {oldest} \
           FROM ids i \
           LEFT JOIN {webhook} w ON w.webhook_id = i.webhook_id \
           LEFT JOIN {usage} u ON u.webhook_id = i.webhook_id \
           LEFT JOIN parked p ON p.webhook_id = i.webhook_id \
          ORDER BY 1",
        delivery = table(config, "delivery"),
        webhook = table(config, "webhook"),
        usage = table(config, "webhook_usage"),
        last_success = ts("u.last_success"),
        last_failure = ts("u.last_failure"),
        oldest = ts("p.oldest"),
    );
    let rows = client.query(&sql, &[]).await.pg(format!(
        "reading {}, {} and {}",
        table_name(config, "webhook"),
        table_name(config, "webhook_usage"),
        table_name(config, "delivery")
    ))?;
    Ok(rows
        .iter()
        .map(|r| HookStats {
            id: r.get(0),
            registered: r.get(1),
            name: r.get(2),
            state: r.get(3),
            total_calls: r.get(4),
            total_errors: r.get(5),
            consecutive_errors: r.get(6),
            last_success: r.get(7),
            last_failure: r.get(8),
            last_error: r.get(9),
            parked: r.get(10),
            oldest_parked: r.get(11),
        })
        .collect())
}

fn print_status(slot: &Value, hooks: &[HookStats], parked_total: i64, config: &Config) {
    let text = |name: &str| match slot.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut add = |k: &str, v: String| lines.push(vec![k.to_owned(), v]);
    if slot["exists"] == json!(false) {
        add("slot", format!("{} (missing)", text("name")));
    } else {
        add(
            "slot",
            format!(
                "{} (plugin {}, database {})",
                text("name"),
                text("plugin"),
                text("database")
            ),
        );
        let status = text("wal_status");
        add(
            "wal_status",
            if status == "lost" {
                "lost  <-- the server invalidated the slot".into()
            } else {
                status
            },
        );
        add(
            "attached",
            if slot["active"] == json!(true) {
                format!("yes, walsender pid {}", text("active_pid"))
            } else {
                let since = match slot.get("inactive_since") {
                    Some(Value::String(s)) => format!(" (inactive since {s})"),
                    _ => String::new(),
                };
                format!("no: no walhook is streaming from the slot{since}")
            },
        );
        add(
            "confirmed",
            format!(
                "{} (server at {})",
                text("confirmed_flush_lsn"),
                text("server_lsn")
            ),
        );
        add(
            "lag",
            slot["lag_bytes"].as_i64().map_or("unknown".into(), bytes),
        );
        add(
            "time lag",
            match slot["time_lag_seconds"].as_f64() {
                Some(secs) => format!("{secs:.3} s, from {}", text("time_lag_source")),
                None => text("time_lag_source"),
            },
        );
        add(
            "WAL retained",
            match slot["retained_wal_bytes"].as_i64() {
                Some(n) => format!("{} since restart_lsn {}", bytes(n), text("restart_lsn")),
                None => "unknown".into(),
            },
        );
    }
    add("parked events", parked_total.to_string());
    print!("{}", pairs(&lines));

    println!();
    if hooks.is_empty() {
        println!(
            "no hooks in {} (add one with `walhook webhook add`)",
            table_name(config, "webhook")
        );
        return;
    }
    println!("hooks ({})", table_name(config, "webhook"));
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                match (&h.name, h.registered) {
                    (Some(n), true) => short(n, 30),
                    _ => "(removed)".into(),
                },
                h.state.map_or("-".into(), state_name),
                h.total_calls.to_string(),
                h.total_errors.to_string(),
                h.consecutive_errors.to_string(),
                h.last_success.clone().unwrap_or_else(|| "-".into()),
                h.parked.to_string(),
                h.last_error.as_deref().map_or("-".into(), |e| short(e, 60)),
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

// ---------------------------------------------------------------- webhook

/// `walhook webhook ...`.
pub async fn webhook(config: &Config, command: WebhookCommand) -> anyhow::Result<u8> {
    match command {
        WebhookCommand::List { json } => webhook_list(config, json).await,
        WebhookCommand::Add(args) => webhook_add(config, &args).await,
        WebhookCommand::SetState { id, state } => webhook_set_state(config, id, state).await,
        WebhookCommand::Test { id } => webhook_test(config, id).await,
        WebhookCommand::Remove { id, purge } => webhook_remove(config, id, purge).await,
    }
}

async fn webhook_list(config: &Config, as_json: bool) -> anyhow::Result<u8> {
    let client = connect(config).await?;
    let rows = client
        .query(&registry::select_rows_sql(&config.postgres.schema, ""), &[])
        .await
        .pg(format!("reading {}", table_name(config, "webhook")))?;
    let mut out = Vec::new();
    for r in &rows {
        let row = registry::row_from(r);
        let get = |n: &str| row.0.get(n).cloned().flatten();
        let id = get("webhook_id").unwrap_or_default();
        // What the daemon would make of the row.
        let problem = match Webhook::from_row(&row) {
            Ok(hook) => check_target(&config.delivery, &hook.target_url).err(),
            Err(why) => Some(format!("skipped by the daemon: {why}")),
        };
        let header_names: Vec<String> = get("headers")
            .and_then(|h| serde_json::from_str::<Map<String, Value>>(&h).ok())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let state: Option<i16> = get("state").and_then(|s| s.parse().ok());
        out.push(json!({
            "webhook_id": id.parse::<i64>().ok(),
            "name": get("name"),
            "state": state,
            "state_name": state.map(state_name),
            "type": get("type"),
            "events": get("events"),
            "target_url": get("target_url"),
            "secret": get("secret").is_some_and(|s| !s.is_empty()),
            "headers": header_names,
            "properties": get("properties").and_then(|p| serde_json::from_str::<Value>(&p).ok()),
            "problem": problem,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(out))?);
        return Ok(exit::OK);
    }
    if out.is_empty() {
        println!(
            "no hooks in {} (add one with `walhook webhook add`)",
            table_name(config, "webhook")
        );
        return Ok(exit::OK);
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let table_rows: Vec<Vec<String>> = out
        .iter()
        .map(|h| {
            let headers = h["headers"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "-".into());
            vec![
                s(&h["webhook_id"]),
                s(&h["name"]),
                s(&h["state_name"]),
                s(&h["type"]),
                if h["secret"] == json!(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                headers,
                s(&h["events"]),
                s(&h["target_url"]),
                h["problem"]
                    .as_str()
                    .map_or(String::new(), |p| format!("!! {p}")),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(
            &["ID", "NAME", "STATE", "TYPE", "SECRET", "HEADERS", "EVENTS", "URL", "",],
            &table_rows
        )
    );
    Ok(exit::OK)
}

/// Column sizes of `webhook`, checked before the server would refuse.
const LIMITS: [(&str, usize); 4] = [
    ("name", 400),
    ("events", 4000),
    ("target_url", 4000),
    ("secret", 400),
];

async fn webhook_add(config: &Config, args: &AddArgs) -> anyhow::Result<u8> {
    let refuse = |why: String| invalid(format!("webhook {:?} not added: {why}", args.name));
    let secret = match (&args.secret, &args.secret_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| refuse(format!("cannot read secret file {}: {e}", file.display())))?;
            let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
            if line.is_empty() {
                return Err(refuse(format!(
                    "secret file {}: the first line is empty",
                    file.display()
                )));
            }
            Some(line.to_owned())
        }
        (None, None) => None,
    };
    if secret.as_deref() == Some("") {
        return Err(refuse(
            "--secret is empty (leave it out for an unsigned hook)".into(),
        ));
    }
    let mut headers = Map::new();
    for pair in &args.headers {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(refuse(format!("--header {pair:?} is not NAME=VALUE")));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(refuse(format!("--header {pair:?} has no name")));
        }
        if headers.keys().any(|k| k.eq_ignore_ascii_case(name)) {
            return Err(refuse(format!("header {name:?} is given twice")));
        }
        headers.insert(name.to_owned(), Value::String(value.to_owned()));
    }
    let headers_text = (!headers.is_empty()).then(|| Value::Object(headers).to_string());
    let values: BTreeMap<&str, Option<String>> = BTreeMap::from([
        ("webhook_id", Some("0".to_owned())),
        ("name", Some(args.name.clone())),
        ("events", Some(args.events.clone())),
        ("target_url", Some(args.url.clone())),
        ("type", Some("webhook".to_owned())),
        ("headers", headers_text.clone()),
        ("properties", args.properties.clone()),
        ("secret", secret.clone()),
        ("state", Some((args.state as i16).to_string())),
    ]);
    for (column, max) in LIMITS {
        if let Some(Some(v)) = values.get(column) {
            if v.chars().count() > max {
                return Err(refuse(format!(
                    "{column} is longer than the column's {max} characters"
                )));
            }
        }
    }
    let row = WebhookRow(
        values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    // The daemon's own validation, so a row the daemon would skip is never
    // written.
    let hook = Webhook::from_row(&row).map_err(refuse)?;
    check_target(&config.delivery, &hook.target_url)
        .map_err(|why| refuse(format!("target_url {why}")))?;
    // Headers walhook sets itself are never replaced by the hook's.
    let sent = request::headers(&hook, "test", Uuid::nil(), b"", 0, 0);
    for (name, value) in &hook.headers {
        if sent.get(name) != Some(value) {
            eprintln!(
                "warning: header {name} is one walhook sets itself; the hook's value is never sent"
            );
        }
    }

    let client = connect(config).await?;
    let sql = format!(
        "INSERT INTO {} (name, events, target_url, headers, properties, secret, state) \
         VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb, $6, $7) RETURNING webhook_id",
        table(config, "webhook")
    );
    let id: i32 = client
        .query_one(
            &sql,
            &[
                &args.name,
                &args.events,
                &args.url,
                &headers_text,
                &args.properties,
                &secret,
                &(args.state as i16),
            ],
        )
        .await
        .pg(format!(
            "adding webhook {:?} to {}",
            args.name,
            table_name(config, "webhook")
        ))?
        .get(0);
    println!("{id}");
    eprintln!(
        "added webhook_id {id} ({:?}, state {}): a running walhook delivers the matching \
         changes committed from now on",
        args.name, args.state
    );
    Ok(exit::OK)
}

async fn webhook_set_state(config: &Config, id: i32, state: WebhookState) -> anyhow::Result<u8> {
    let client = connect(config).await?;
    let webhook = table(config, "webhook");
    let old = client
        .query_opt(
            &format!("SELECT state FROM {webhook} WHERE webhook_id = $1"),
            &[&id],
        )
        .await
        .pg(format!("reading webhook_id {id}"))?
        .ok_or_else(|| no_such_webhook(config, id))?;
    let old: i16 = old.get(0);
    if old == state as i16 {
        println!("webhook_id {id} is already {state}: nothing changed");
        return Ok(exit::OK);
    }
    let updated = client
        .execute(
            &format!("UPDATE {webhook} SET state = $2 WHERE webhook_id = $1"),
            &[&id, &(state as i16)],
        )
        .await
        .pg(format!("setting the state of webhook_id {id}"))?;
    if updated == 0 {
        bail!("webhook_id {id} was removed meanwhile; nothing changed");
    }
    println!("webhook_id {id}: state {} -> {state}", state_name(old));
    if state == WebhookState::Active {
        let parked: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE webhook_id = $1",
                    table(config, "delivery")
                ),
                &[&id],
            )
            .await
            .pg(format!("counting parked events of webhook_id {id}"))?
            .get(0);
        if parked > 0 {
            println!(
                "its {parked} parked event(s) are delivered first, in order, by the running walhook"
            );
        }
    }
    Ok(exit::OK)
}

async fn webhook_remove(config: &Config, id: i32, purge: bool) -> anyhow::Result<u8> {
    let mut client = connect(config).await?;
    let tx = client.transaction().await.pg("starting a transaction")?;
    let name: Option<String> = tx
        .query_opt(
            &format!(
                "DELETE FROM {} WHERE webhook_id = $1 RETURNING name::text",
                table(config, "webhook")
            ),
            &[&id],
        )
        .await
        .pg(format!("removing webhook_id {id}"))?
        .map(|r| r.get(0));
    let usage_sql =
        |verb: &str, t: &str| format!("{verb} FROM {} WHERE webhook_id = $1", table(config, t));
    let (usage, parked) = if purge {
        let usage = tx
            .execute(&usage_sql("DELETE", "webhook_usage"), &[&id])
            .await
            .pg(format!("deleting the statistics of webhook_id {id}"))?;
        let parked = tx
            .execute(&usage_sql("DELETE", "delivery"), &[&id])
            .await
            .pg(format!("deleting the parked events of webhook_id {id}"))?;
        (usage as i64, parked as i64)
    } else {
        let mut counts = [0i64; 2];
        for (i, t) in ["webhook_usage", "delivery"].into_iter().enumerate() {
            counts[i] = tx
                .query_one(&usage_sql("SELECT count(*)", t), &[&id])
                .await
                .pg(format!("counting {t} rows of webhook_id {id}"))?
                .get(0);
        }
        (counts[0], counts[1])
    };
    if name.is_none() && !(purge && usage + parked > 0) {
        bail!(
            "webhook_id {id} does not exist in {}{}",
            table_name(config, "webhook"),
            if usage + parked > 0 {
                format!(
                    " (it was removed; its statistics and {parked} parked event(s) are left: \
                     `walhook webhook remove {id} --purge` deletes them)"
                )
            } else {
                String::new()
            }
        );
    }
    tx.commit().await.pg(format!("removing webhook_id {id}"))?;
    match &name {
        Some(n) => println!("removed webhook_id {id} ({n:?})"),
        None => println!("webhook_id {id} had no webhook row any more"),
    }
    if purge {
        println!(
            "deleted its statistics ({usage} webhook_usage row(s)) and {parked} parked event(s)"
        );
    } else if usage + parked > 0 {
        println!(
            "kept its statistics ({} webhook_usage row(s)) and {parked} parked event(s) in {}; \
             `walhook webhook remove {id} --purge` deletes them",
            usage,
            table_name(config, "delivery")
        );
    }
    Ok(exit::OK)
}

/// The most of a response body `webhook test` prints.
const TEST_BODY_MAX_CHARS: usize = 2000;

async fn webhook_test(config: &Config, id: i32) -> anyhow::Result<u8> {
    let client = connect(config).await?;
    let row = client
        .query_opt(
            &registry::select_rows_sql(&config.postgres.schema, "WHERE webhook_id = $1"),
            &[&id],
        )
        .await
        .pg(format!("reading webhook_id {id}"))?
        .ok_or_else(|| no_such_webhook(config, id))?;
    let hook = Webhook::from_row(&registry::row_from(&row))
        .map_err(|why| anyhow!("webhook_id {id} cannot be used: {why}"))?;
    let url = hook.target_url.clone();
    check_target(&config.delivery, &url)
        .map_err(|why| anyhow!("webhook_id {id}: target_url {why}"))?;
    let event_id = Uuid::new_v4();
    let body = request::test_body(event_id, &hook, &config.events.context_identifier);
    let mut headers = request::headers(&hook, "test", event_id, &body, 0, unix_now());
    headers.insert(
        HeaderName::from_static("x-hook-test"),
        HeaderValue::from_static("true"),
    );
    let http = http_client(&config.delivery).context("building the HTTP client")?;
    println!(
        "POST {url}  (webhook_id {id} {:?}, state {}, event test, EventId {event_id}, {})",
        hook.name,
        hook.state,
        if hook.secret.is_some() {
            "signed"
        } else {
            "unsigned: no secret"
        }
    );
    let started = Instant::now();
    let sent = http
        .post(url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await;
    let elapsed = started.elapsed().as_millis();
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            println!("no response after {elapsed} ms: {}", error_chain(&e));
            eprintln!(
                "walhook: webhook_id {id}: POST {url} failed: {}",
                error_chain(&e)
            );
            return Ok(exit::FAILURE);
        }
    };
    let status = response.status();
    println!(
        "{:?} {} {}",
        response.version(),
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    println!("elapsed: {elapsed} ms (until the response headers arrived)");
    for (name, value) in response.headers() {
        println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
    }
    println!();
    let mut raw = Vec::new();
    let mut complete = true;
    loop {
        if raw.len() > TEST_BODY_MAX_CHARS * 4 {
            complete = false;
            break;
        }
        match response.chunk().await {
            Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                println!("(reading the body failed: {})", error_chain(&e));
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let shown = truncate_chars(&text, TEST_BODY_MAX_CHARS);
    if shown.is_empty() {
        println!("(empty body)");
    } else {
        println!("{shown}");
    }
    if !complete || shown.len() < text.len() {
        println!("(body truncated at {TEST_BODY_MAX_CHARS} characters)");
    }
    if status.is_success() {
        Ok(exit::OK)
    } else {
        eprintln!(
            "walhook: webhook_id {id}: {url} answered {} {}, not 2xx",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        Ok(exit::FAILURE)
    }
}

// ---------------------------------------------------------------- teardown

/// How long teardown waits for an active slot to be released.
const ACTIVE_SLOT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// `walhook teardown`: drop the slot and the publications (and the schema
/// with `--drop-schema`), after saying what and asking.
pub async fn teardown(config: &Config, drop_schema: bool, yes: bool) -> anyhow::Result<u8> {
    let client = connect(config).await?;
    let slot = &config.postgres.slot;
    let schema = &config.postgres.schema;
    // A walsender outlives its client by a moment, so a teardown right
    // after `systemctl stop walhook` waits briefly before refusing.
    let patience = Instant::now();
    let slot_row = loop {
        let row = client
            .query_opt(
                "SELECT active, active_pid, wal_status, \
                        pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                                             ELSE pg_current_wal_lsn() END, restart_lsn)::bigint \
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await
            .pg(format!("reading replication slot {slot:?}"))?;
        match &row {
            Some(r) if r.get::<_, bool>(0) => {
                if patience.elapsed() < ACTIVE_SLOT_PATIENCE {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                let pid: Option<i32> = r.get(1);
                bail!(
                    "replication slot {slot:?} is in use by walsender pid {}: a walhook is \
                     streaming from it: stop walhook first (systemctl stop walhook), then run \
                     teardown again; nothing was dropped",
                    pid.map_or("?".into(), |p| p.to_string())
                );
            }
            _ => break row,
        }
    };
    let publications = setup::publications(&client, config).await?;
    let schema_exists = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[schema],
        )
        .await
        .pg(format!("looking for schema {schema:?}"))?
        .get::<_, bool>(0);

    println!("walhook teardown:");
    let mut todo = 0;
    match &slot_row {
        Some(row) => {
            todo += 1;
            let retained: Option<i64> = row.get(3);
            let wal_status: Option<String> = row.get(2);
            println!(
                "  drop replication slot {slot:?} (wal_status {}, holding {} of WAL)",
                wal_status.as_deref().unwrap_or("-"),
                retained.map_or("an unknown amount".into(), bytes)
            );
        }
        None => println!("  replication slot {slot:?}: already gone"),
    }
    for (p, exists) in &publications {
        if *exists {
            todo += 1;
            println!("  drop publication {p:?}");
        } else {
            println!("  publication {p:?}: already gone");
        }
    }
    if drop_schema {
        if schema_exists {
            todo += 1;
            let counts = client
                .query_one(
                    &format!(
                        "SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})",
                        table(config, "webhook"),
                        table(config, "delivery")
                    ),
                    &[],
                )
                .await
                .map(|r| {
                    format!(
                        ": {} webhook row(s), {} parked event(s)",
                        r.get::<_, i64>(0),
                        r.get::<_, i64>(1)
                    )
                })
                .unwrap_or_default();
            println!("  drop schema {schema:?} and everything in it (CASCADE){counts}");
        } else {
            println!("  schema {schema:?}: already gone");
        }
    } else if schema_exists {
        println!(
            "  schema {schema:?} is kept (webhook rows, statistics, parked events); \
             --drop-schema drops it too"
        );
    }
    if todo == 0 {
        println!("nothing to drop: everything is already gone");
        return Ok(exit::OK);
    }

    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(invalid(
                "teardown asks for confirmation and stdin is not a terminal: pass --yes to drop \
                 without asking; nothing was dropped",
            ));
        }
        print!("Drop these? [y/N] ");
        std::io::stdout().flush()?;
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .context("reading the answer")??;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            println!("nothing was dropped");
            return Ok(exit::FAILURE);
        }
    }

    if slot_row.is_some() {
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[slot])
            .await
        {
            Ok(_) => println!("dropped replication slot {slot:?}"),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                println!("replication slot {slot:?}: already gone")
            }
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => bail!(
                "replication slot {slot:?} became active meanwhile (a walhook started streaming): \
                 stop walhook first, then run teardown again; nothing was dropped"
            ),
            Err(e) => bail!(
                "dropping replication slot {slot:?}: {}; nothing was dropped",
                pg_message(&e)
            ),
        }
        // The snapshots record the hooks at positions of the dropped slot;
        // a slot made by the next setup starts a new history.
        if schema_exists && !drop_schema {
            let snapshots = table(config, "registry_snapshot");
            let present: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&snapshots])
                .await
                .pg(format!(
                    "looking for {}",
                    table_name(config, "registry_snapshot")
                ))?
                .get(0);
            if present {
                client
                    .execute(&format!("DELETE FROM {snapshots}"), &[])
                    .await
                    .pg(format!(
                        "clearing {} (positions of the dropped slot)",
                        table_name(config, "registry_snapshot")
                    ))?;
            }
        }
    }
    for (p, exists) in &publications {
        if *exists {
            client
                .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(p)))
                .await
                .pg(format!("dropping publication {p:?}"))?;
            println!("dropped publication {p:?}");
        }
    }
    if drop_schema && schema_exists {
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema)))
            .await
            .pg(format!("dropping schema {schema:?}"))?;
        println!("dropped schema {schema:?}");
    }
    println!("done: the server holds no WAL for walhook any more");
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let out = columns(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["10".into(), "bbb".into()],
            ],
        );
        assert_eq!(out, "ID  NAME\n1   a\n10  bbb\n");
    }

    #[test]
    fn short_takes_the_first_line() {
        assert_eq!(short("HTTP 500 Internal\nx: y", 60), "HTTP 500 Internal");
        assert_eq!(short("abcdefghij", 6), "abc...");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(12), "12 bytes");
        assert_eq!(bytes(2048), "2048 bytes (2.0 KiB)");
    }
}
