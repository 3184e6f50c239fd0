//! `walhook parked list|show|redeliver|discard`: parked events as a tool,
//! one event or one hook at a time.
//!
//! `redeliver` sends one event from this process, with the hook's current
//! URL, secret and headers and the stored body and EventId, through the
//! daemon's own request code; it refuses while an earlier event of the
//! same row is still parked for the hook, since sending it would overtake
//! that one. A running daemon may replay the same event meanwhile: the
//! receiver then sees it twice with one EventId, never out of order.

use std::time::SystemTime;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use serde_json::{json, Value};
use uuid::Uuid;

use super::render::{columns, pairs, row_key};
use super::{connect, invalid};
use crate::cli::{exit, ParkedCommand};
use crate::config::Config;
use crate::delivery::{
    attempt, check_target, http_client, Attempt, DeliveryOutcome, DeliveryStore, Sender, UsageBook,
    GONE_ERROR,
};
use crate::registry::{Webhook, WebhookState};
use crate::store::parked_admin::ParkedDetail;
use crate::store::Store;
use crate::text::{first_line, redacted_url};

pub async fn parked(config: &Config, command: ParkedCommand) -> anyhow::Result<u8> {
    match command {
        ParkedCommand::List {
            webhook: Some(webhook),
            events: true,
            limit,
            skip,
            json,
        } => list_events(config, webhook, limit, skip, json).await,
        ParkedCommand::List { webhook, json, .. } => list(config, webhook, json).await,
        ParkedCommand::Show { event_id, json } => show(config, event_id, json).await,
        ParkedCommand::Redeliver { event_id } => redeliver(config, event_id).await,
        ParkedCommand::Discard {
            event_id,
            webhook,
            before,
        } => match (event_id, webhook) {
            (Some(event_id), None) => discard_one(config, event_id).await,
            (None, Some(webhook)) => {
                let before = before.as_deref().map(parse_before).transpose()?;
                discard_hook(config, webhook, before).await
            }
            // clap's argument group makes these unreachable from the
            // command line; say so rather than guess.
            _ => Err(invalid(
                "parked discard: give either an EventId or --webhook ID",
            )),
        },
    }
}

async fn list(config: &Config, webhook: Option<i32>, as_json: bool) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let summaries = store.parked_summaries(webhook).await?;
    if as_json {
        let hooks: Vec<Value> = summaries
            .iter()
            .map(|s| {
                json!({
                    "webhook_id": s.webhook_id,
                    "count": s.count,
                    "oldest": s.oldest,
                    "reasons": s.reasons.iter().map(|(r, n)| (r.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&hooks)?);
        return Ok(exit::OK);
    }
    if summaries.is_empty() {
        match webhook {
            Some(id) => println!("no parked events for webhook_id {id}"),
            None => println!("no parked events"),
        }
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.webhook_id.to_string(),
                s.count.to_string(),
                s.oldest.clone(),
                s.reasons
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(&["webhook_id", "parked", "oldest", "reasons"], &rows)
    );
    Ok(exit::OK)
}

/// `parked list --webhook ID --events`: a page of the hook's parked
/// events, oldest first, so each can be shown, redelivered or discarded by
/// its EventId.
async fn list_events(
    config: &Config,
    webhook: i32,
    limit: i64,
    skip: i64,
    as_json: bool,
) -> anyhow::Result<u8> {
    if limit < 1 || skip < 0 {
        return Err(invalid(format!(
            "parked list: --limit must be at least 1 and --skip at least 0 (got {limit} and {skip})"
        )));
    }
    let store = connect(config).await?;
    let events = store.parked_events_of(webhook, limit, skip).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(exit::OK);
    }
    if events.is_empty() {
        println!("no parked events for webhook_id {webhook} after skipping {skip}");
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.created.clone(),
                e.event_id.to_string(),
                e.event.clone(),
                row_key(&e.ordering_key),
                e.reason.clone(),
                e.attempts.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(
            &["PARKED", "EVENTID", "EVENT", "ROW", "REASON", "ATTEMPTS"],
            &rows
        )
    );
    if events.len() as i64 == limit {
        println!(
            "(the next page: walhook parked list --webhook {webhook} --events --skip {})",
            skip + limit
        );
    }
    Ok(exit::OK)
}

/// The one parked event with this EventId, or an error saying why not.
async fn find(store: &Store, event_id: Uuid) -> anyhow::Result<ParkedDetail> {
    let mut found = store.parked_by_event_id(event_id).await?;
    match found.len() {
        0 => bail!(
            "EventId {event_id} is not parked (delivered, discarded, or never parked): \
             `walhook parked list` shows what is"
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "EventId {event_id} is parked for several hooks (webhook_id {}): \
             discard them per hook with `walhook parked discard --webhook ID`",
            found
                .iter()
                .map(|d| d.webhook_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn show(config: &Config, event_id: Uuid, as_json: bool) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let event = find(&store, event_id).await?;
    if as_json {
        let mut value = serde_json::to_value(&event)?;
        // The body is JSON: embed it as such when it parses.
        if let Ok(body) = crate::text::parse_json(&event.body) {
            value["body"] = body;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(exit::OK);
    }
    print!(
        "{}",
        pairs(&[
            ("EventId", event.event_id.to_string()),
            ("webhook_id", event.webhook_id.to_string()),
            ("event", event.event.clone()),
            ("row", row_key(&event.ordering_key)),
            (
                "position",
                format!("{} change {}", event.commit_lsn, event.change_index)
            ),
            ("reason", event.reason.clone()),
            ("attempts", event.attempts.to_string()),
            ("parked", event.created.clone()),
            (
                "last error",
                event.last_error.clone().unwrap_or_else(|| "-".into())
            ),
        ])
    );
    println!();
    let body = crate::text::parse_json(&event.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| event.body.clone());
    println!("{}", crate::text::printable(&body));
    Ok(exit::OK)
}

async fn redeliver(config: &Config, event_id: Uuid) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let event = find(&store, event_id).await?;
    let position = event.position()?;
    let id = event.webhook_id;
    if let Some((count, first)) = store.parked_before(&event).await? {
        eprintln!(
            "walhook: refused: {count} earlier event(s) of the same row (key {}) are still parked \
             for webhook_id {id}, the first being EventId {first}; sending {event_id} now would \
             deliver the row's changes out of order. Redeliver or discard that one first, or \
             send them all in order with `walhook replay --webhook {id}`",
            event.ordering_key
        );
        return Ok(exit::FAILURE);
    }
    let row = store.webhook_row(id).await?.ok_or_else(|| {
        anyhow!(
            "webhook_id {id} does not exist any more: its parked events can only be discarded \
             (`walhook parked discard {event_id}`)"
        )
    })?;
    let hook =
        Webhook::from_row(&row).map_err(|why| anyhow!("webhook_id {id} cannot be used: {why}"))?;
    check_target(&config.delivery, &hook.target_url)
        .map_err(|why| anyhow!("webhook_id {id}: target_url {why}"))?;
    let http = http_client(&config.delivery)?;
    let body = Bytes::from(event.body.clone());
    let attempts = u32::try_from(event.attempts).unwrap_or(0);
    // A rotated-out secret still in its grace period signs too, as the
    // daemon's attempts do.
    let settings = super::webhook::control_settings(&store, id).await?;
    let outcome = attempt(
        Sender::Pool(&http),
        &config.delivery,
        &Attempt {
            hook: &hook,
            event: &event.event,
            event_id,
            body: &body,
            retry: attempts,
            settings: &settings,
            key: None,
            trace: Default::default(),
        },
    )
    .await;
    let book = UsageBook::default();
    let shown = redacted_url(&hook.target_url);
    outcome.record_usage(&book, id);
    let code = match outcome {
        DeliveryOutcome::Delivered(status) => {
            store.discard_parked_event(id, position).await?;
            println!(
                "delivered EventId {event_id} ({}) to webhook_id {id} at {shown}: {status}; \
                 removed from the parked events",
                event.event
            );
            exit::OK
        }
        DeliveryOutcome::Gone => {
            book.set_state(id, WebhookState::Stopped);
            store
                .record_parked_failure(id, position, attempts + 1, Some(GONE_ERROR))
                .await?;
            eprintln!(
                "walhook: webhook_id {id}: {GONE_ERROR}; state set to Stopped (2), EventId \
                 {event_id} stays parked"
            );
            exit::FAILURE
        }
        DeliveryOutcome::Failed { error, .. } => {
            store
                .record_parked_failure(id, position, attempts + 1, Some(&error))
                .await?;
            eprintln!(
                "walhook: webhook_id {id}: POST {shown} failed: {}; EventId {event_id} stays \
                 parked",
                first_line(&error)
            );
            exit::FAILURE
        }
    };
    store.write_usage(&book.take()).await?;
    Ok(code)
}

async fn discard_one(config: &Config, event_id: Uuid) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let event = find(&store, event_id).await?;
    if store
        .discard_parked_event(event.webhook_id, event.position()?)
        .await?
    {
        tracing::warn!(
            webhook_id = event.webhook_id,
            event_id = %event_id,
            event = %event.event,
            "parked event discarded undelivered"
        );
        println!(
            "discarded 1 parked event of webhook_id {}: EventId {event_id} ({})",
            event.webhook_id, event.event
        );
    } else {
        println!("EventId {event_id} was delivered or discarded meanwhile: nothing discarded");
    }
    Ok(exit::OK)
}

async fn discard_hook(
    config: &Config,
    webhook: i32,
    before: Option<SystemTime>,
) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let n = store.discard_parked(webhook, before).await?;
    let scope = match before {
        Some(t) => format!(" parked before {}", humantime::format_rfc3339_seconds(t)),
        None => String::new(),
    };
    if n > 0 {
        tracing::warn!(
            webhook_id = webhook,
            discarded = n,
            "parked events discarded undelivered{scope}"
        );
    }
    println!("discarded {n} parked event(s) of webhook_id {webhook}{scope}");
    Ok(exit::OK)
}

/// `--before`: an RFC 3339 time (`2024-06-01T12:00:00Z`, the `T` and the
/// zone optional, then UTC) or an age (`2h`, `3days`) meaning that long ago.
fn parse_before(text: &str) -> anyhow::Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    match humantime::parse_duration(text) {
        Ok(age) => SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| invalid(format!("--before {text:?} lies before 1970"))),
        Err(_) => Err(invalid(format!(
            "--before {text:?} is neither a time such as 2024-06-01T12:00:00Z nor an age \
             such as 2h or 3days"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn before_takes_a_time_or_an_age_and_names_a_bad_value() {
        let t = parse_before("2024-06-01T12:00:00Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(t).to_string(),
            "2024-06-01T12:00:00Z"
        );
        let ago = parse_before("2h").unwrap();
        let age = SystemTime::now().duration_since(ago).unwrap();
        assert!(age >= Duration::from_secs(7200) && age < Duration::from_secs(7300));
        let err = parse_before("yesterday").unwrap_err().to_string();
        assert!(err.contains("\"yesterday\""), "{err}");
    }
}
