//! Waiting on what can be observed: the slot's confirmed position, the
//! slot's holder, the WAL, the daemon's log. Every wait has a deadline and
//! fails saying what it waited for.

use std::time::Duration;

use super::Harness;

impl Harness {
    /// Wait until `check` holds on the harness's SQL session.
    pub async fn wait_for<F>(&self, what: &str, timeout: Duration, check: F)
    where
        F: for<'a> Fn(
            &'a tokio_postgres::Client,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + 'a>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(&self.db).await {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; daemon log:\n{}",
                    self.daemon_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the slot's confirmed position reaches `lsn`.
    pub async fn wait_confirmed(&self, what: &str, lsn: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.confirmed().await < lsn {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; daemon log:\n{}",
                    self.daemon_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until a walhook streams from the slot.
    pub async fn wait_slot_active(&self, timeout: Duration) {
        self.wait_for("the slot to be active", timeout, |db| {
            Box::pin(async move {
                db.query_one(
                    "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'walhook'",
                    &[],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            })
        })
        .await;
    }

    /// Wait until no walhook streams from the slot: a walsender outlives
    /// its client by a moment.
    pub async fn wait_slot_released(&self) {
        self.wait_for("the slot to be released", Duration::from_secs(10), |db| {
            Box::pin(async move {
                db.query_one(
                    "SELECT NOT coalesce(bool_or(active), false) FROM pg_replication_slots \
                      WHERE slot_name = 'walhook'",
                    &[],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            })
        })
        .await;
    }

    /// Wait until the daemon has dealt with every change committed so far:
    /// the slot's confirmed position reaches the WAL position taken now. A
    /// change is confirmed only once each of its deliveries succeeded or
    /// was parked, so what a hook has not received by then, it never will.
    pub async fn wait_caught_up(&self, what: &str) {
        let lsn = self.current_lsn().await;
        self.wait_confirmed(what, lsn, Duration::from_secs(30))
            .await;
    }

    /// Wait until the daemon's log contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.daemon_log().contains(needle) {
            if tokio::time::Instant::now() > deadline {
                panic!("no {needle:?} in the daemon log:\n{}", self.daemon_log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The slot's confirmed position.
    pub async fn confirmed(&self) -> u64 {
        let text: String = self
            .db
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        parse_lsn(&text)
    }

    /// The settled position walhook recorded for the slot, if any.
    pub async fn stored_progress(&self) -> Option<u64> {
        let text: Option<String> = self
            .db
            .query_opt(
                "SELECT lsn::text FROM walhook.slot_progress WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        text.as_deref().map(parse_lsn)
    }

    /// Wait until the server has written out all WAL inserted so far, so
    /// that a crash keeps every commit made until now (also asynchronous
    /// ones).
    pub async fn wait_wal_flushed(&self) {
        let inserted: String = self
            .db
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let inserted = parse_lsn(&inserted);
        self.wait_for(
            "the WAL to be flushed",
            Duration::from_secs(10),
            move |db| {
                Box::pin(async move {
                    db.query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
                        .await
                        .map(|r| parse_lsn(&r.get::<_, String>(0)) >= inserted)
                        .unwrap_or(false)
                })
            },
        )
        .await;
    }

    pub async fn current_lsn(&self) -> u64 {
        let text: String = self
            .db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        parse_lsn(&text)
    }
}

/// An LSN as PostgreSQL writes it (`16/B374D848`), as a number.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}
