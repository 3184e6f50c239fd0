//! `walhook replay [--webhook ID]`: one attempt per parked event now, in
//! commit order, stopping a hook at its first failure so its order holds.
//!
//! Every attempt counts in `webhook_usage` as the daemon's do (calls,
//! errors, consecutive errors, last success or error), and a 410 Gone stops
//! the hook as it would in the daemon. A hook in TooManyErrors whose parked
//! events were all delivered is set Active again: its target answers, and
//! left as it was it would keep parking every new event. A paused hook is
//! left alone: `walhook webhook resume` delivers its events.

use anyhow::bail;

use super::connect;
use crate::config::Config;
use crate::delivery::{
    attempt, http_client, Attempt, DeliveryOutcome, DeliveryStore, HookSettings, Sender,
    SigningKey, UsageBook, GONE_ERROR,
};
use crate::registry::{Registry, WebhookState};
use crate::text::first_line;

/// Parked events read at a time.
const BATCH: i64 = 100;

pub async fn replay(config: &Config, webhook: Option<i32>) -> anyhow::Result<()> {
    let store = connect(config).await?;
    let registry = Registry::from_rows(store.webhook_rows().await?);
    let http = http_client(&config.delivery)?;
    let settings: std::collections::HashMap<i32, HookSettings> = store
        .control_rows()
        .await?
        .iter()
        .filter_map(HookSettings::from_row)
        .map(|(id, settings, _)| (id, settings))
        .collect();
    if let Some(id) = webhook {
        if registry.get(id).is_none() {
            bail!("webhook_id {id} does not exist (or its row is invalid; see `walhook check`)");
        }
    }
    let ids: Vec<i32> = store
        .hooks_with_parked()
        .await?
        .into_iter()
        .filter(|id| webhook.is_none_or(|w| w == *id))
        .collect();
    if ids.is_empty() {
        println!("no parked events");
        return Ok(());
    }
    for id in ids {
        let Some(hook) = registry.get(id) else {
            println!(
                "webhook_id {id}: no valid webhook row; {} parked event(s) kept",
                store.parked_count(id).await?
            );
            continue;
        };
        let settings = settings.get(&id).cloned().unwrap_or_default();
        if settings.paused {
            println!(
                "webhook_id {id}: paused; its {} parked event(s) are kept until \
                 `walhook webhook resume {id}`",
                store.parked_count(id).await?
            );
            continue;
        }
        let key = hook.secret.as_deref().map(SigningKey::new);
        let book = UsageBook::default();
        let mut delivered = 0u64;
        let mut failure = None;
        'hook: loop {
            let batch = store.next_parked(id, None, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for row in batch {
                let attempts = u32::try_from(row.attempts).unwrap_or(0);
                let outcome = attempt(
                    Sender::Pool(&http),
                    &config.delivery,
                    &Attempt {
                        hook,
                        event: &row.event,
                        event_id: row.event_id,
                        body: &row.body,
                        retry: attempts,
                        settings: &settings,
                        key: key.as_ref(),
                        trace: Default::default(),
                    },
                )
                .await;
                outcome.record_usage(&book, id);
                match outcome {
                    DeliveryOutcome::Delivered(_) => {
                        store.remove_parked(id, &[row.position]).await?;
                        delivered += 1;
                    }
                    DeliveryOutcome::Gone => {
                        book.set_state(id, WebhookState::Stopped);
                        failure = Some(format!("{GONE_ERROR}; webhook state set to Stopped (2)"));
                        break 'hook;
                    }
                    DeliveryOutcome::Failed { error, .. } => {
                        store
                            .record_parked_failure(id, row.position, attempts + 1, Some(&error))
                            .await?;
                        failure = Some(error);
                        break 'hook;
                    }
                }
            }
        }
        store.write_usage(&book.take()).await?;
        let left = store.parked_count(id).await?;
        match &failure {
            None => println!("webhook_id {id}: delivered {delivered} parked event(s)"),
            Some(error) => println!(
                "webhook_id {id}: delivered {delivered}, stopped at a failure with {left} left: {}",
                first_line(error)
            ),
        }
        if failure.is_none()
            && left == 0
            && hook.state == WebhookState::TooManyErrors
            && store.set_webhook_state(id, WebhookState::Active).await?
        {
            println!(
                "webhook_id {id}: state TooManyErrors -> Active: its target answers again, \
                 so new events are delivered instead of parked"
            );
        }
    }
    Ok(())
}
