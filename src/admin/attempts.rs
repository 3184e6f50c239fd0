//! `walhook webhook attempts ID`: a hook's attempts from the failure log.

use std::time::SystemTime;

use super::connect;
use super::render::columns;
use crate::cli::exit;
use crate::config::{AttemptLogMode, Config};
use crate::text::first_line;

/// Print hook `id`'s newest `limit` attempts since `since`, oldest first.
pub async fn attempts(
    config: &Config,
    id: i32,
    since: Option<SystemTime>,
    limit: i64,
    as_json: bool,
) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let attempts = store.attempts(id, since, limit).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&attempts)?);
        return Ok(exit::OK);
    }
    if attempts.is_empty() {
        let kept = match config.delivery.attempt_log {
            AttemptLogMode::Off => "none are logged: delivery.attempt_log is \"off\"",
            AttemptLogMode::Failures => "delivery.attempt_log keeps failed attempts only",
            AttemptLogMode::All => "delivery.attempt_log keeps every attempt",
        };
        println!(
            "no attempts of webhook {id} in {}{} ({kept})",
            store.table_name("delivery_attempt"),
            if since.is_some() { " since then" } else { "" },
        );
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            vec![
                humantime::format_rfc3339_millis(a.at).to_string(),
                a.event_id.to_string(),
                a.event.clone(),
                a.attempt.to_string(),
                a.outcome.clone(),
                match (a.status, &a.error_kind) {
                    (Some(status), _) => status.to_string(),
                    (None, Some(kind)) => kind.clone(),
                    (None, None) => "-".to_owned(),
                },
                format!("{:.0}", a.duration_ms),
                a.answer
                    .as_deref()
                    .map(first_line)
                    .unwrap_or("-")
                    .to_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(
            &["TIME", "EVENT ID", "EVENT", "TRY", "OUTCOME", "STATUS", "MS", "ANSWER"],
            &rows
        )
    );
    Ok(exit::OK)
}
