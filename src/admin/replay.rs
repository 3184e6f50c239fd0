//! `walhook replay [--webhook ID]`: one attempt per parked event now, in
//! commit order, stopping a hook at its first failure so its order holds.

use anyhow::bail;

use super::connect;
use crate::config::Config;
use crate::delivery::{attempt, http_client, Attempt, DeliveryOutcome, DeliveryStore};
use crate::registry::Registry;
use crate::text::first_line;

/// Parked events read at a time.
const BATCH: i64 = 100;

pub async fn replay(config: &Config, webhook: Option<i32>) -> anyhow::Result<()> {
    let store = connect(config).await?;
    let registry = Registry::from_rows(store.webhook_rows().await?);
    let http = http_client(&config.delivery)?;
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
        let mut delivered = 0u64;
        let mut failure = None;
        'hook: loop {
            let batch = store.next_parked(id, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for row in batch {
                let attempts = u32::try_from(row.attempts).unwrap_or(0);
                let outcome = attempt(
                    &http,
                    &config.delivery,
                    &Attempt {
                        hook,
                        event: &row.event,
                        event_id: row.event_id,
                        body: &row.body,
                        retry: attempts,
                    },
                )
                .await;
                match outcome {
                    DeliveryOutcome::Delivered(_) => {
                        store.remove_parked(&[row.delivery_id]).await?;
                        delivered += 1;
                    }
                    DeliveryOutcome::Gone => {
                        failure = Some("HTTP 410 Gone".to_owned());
                        break 'hook;
                    }
                    DeliveryOutcome::Failed { error, .. } => {
                        store
                            .record_parked_failure(row.delivery_id, attempts + 1, Some(&error))
                            .await?;
                        failure = Some(error);
                        break 'hook;
                    }
                }
            }
        }
        let left = store.parked_count(id).await?;
        match failure {
            None => println!("webhook_id {id}: delivered {delivered} parked event(s)"),
            Some(error) => println!(
                "webhook_id {id}: delivered {delivered}, stopped at a failure with {left} left: {}",
                first_line(&error)
            ),
        }
    }
    Ok(())
}
