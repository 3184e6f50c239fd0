//! Hooks: registering them, and reading the statistics walhook keeps of
//! them in webhook_usage.

use std::time::Duration;

use super::Harness;

/// How long the daemon may take to write a hook's statistics: it writes
/// them in batches about a second apart.
const USAGE_WAIT: Duration = Duration::from_secs(30);

/// A hook's statistics, as walhook writes them to webhook_usage.
#[derive(Debug)]
pub struct Usage {
    pub total_calls: i64,
    pub total_errors: i64,
    pub consecutive_errors: i32,
    pub last_error: Option<String>,
}

impl Harness {
    /// A hook's `webhook.state` as the table has it now.
    pub async fn webhook_state(&self, id: i32) -> i16 {
        self.db
            .query_one(
                "SELECT state FROM walhook.webhook WHERE webhook_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// How many of a hook's events are parked now.
    pub async fn parked_count(&self, id: i32) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM walhook.delivery WHERE webhook_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Register a hook; returns its webhook_id.
    pub async fn add_hook(&self, events: &str, url: &str, secret: Option<&str>) -> i32 {
        self.db
            .query_one(
                "INSERT INTO walhook.webhook (name, events, target_url, secret) \
                 VALUES ('test hook', $1, $2, $3) RETURNING webhook_id",
                &[&events, &url, &secret],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `webhook_id`'s row in webhook_usage, once the daemon (or a command)
    /// has written it: a hook without a row yet was never called, which a
    /// test reading its statistics does not expect, so this waits for the
    /// row and fails naming the hook when none appears.
    pub async fn usage(&self, webhook_id: i32) -> Usage {
        self.wait_usage(webhook_id, |_| true).await
    }

    /// Wait until `webhook_id`'s row in webhook_usage exists and satisfies
    /// `done`, and return it. The daemon writes webhook_usage in batches
    /// about a second apart, so tests poll for what they expect rather
    /// than sleep.
    pub async fn wait_usage(&self, webhook_id: i32, done: impl Fn(&Usage) -> bool) -> Usage {
        let deadline = tokio::time::Instant::now() + USAGE_WAIT;
        loop {
            let usage = self.usage_row(webhook_id).await;
            if let Some(usage) = usage {
                if done(&usage) {
                    return usage;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "webhook {webhook_id}: statistics never as expected within \
                         {USAGE_WAIT:?}, last {usage:?}; daemon log:\n{}",
                        self.daemon_log()
                    );
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!(
                    "webhook {webhook_id}: no row in walhook.webhook_usage after {USAGE_WAIT:?} \
                     (never called?); daemon log:\n{}",
                    self.daemon_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `webhook_id`'s row in webhook_usage as it is now, if there is one.
    async fn usage_row(&self, webhook_id: i32) -> Option<Usage> {
        self.db
            .query_opt(
                "SELECT total_calls, total_errors, consecutive_errors, last_error \
                   FROM walhook.webhook_usage WHERE webhook_id = $1",
                &[&webhook_id],
            )
            .await
            .unwrap()
            .map(|row| Usage {
                total_calls: row.get(0),
                total_errors: row.get(1),
                consecutive_errors: row.get(2),
                last_error: row.get(3),
            })
    }
}
