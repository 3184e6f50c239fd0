//! Timing `walhook run` catching up with a backlog delivered to nginx: the
//! nginx section, and the HOOKS modes.
//!
//! Two milestones, polled every 50 ms without starting a process; walhook
//! is done when both are reached:
//! - its slot's `confirmed_flush_lsn` reaches the end LSN (walhook confirms
//!   a position once everything before it is settled, which includes
//!   events parked in the delivery table, so this alone does not prove
//!   delivery);
//! - the receiver has every request: nginx's counter when stub_status is
//!   available, else the calls `webhook_usage` counts (written about once
//!   a second).

use std::time::Instant;

use anyhow::bail;

use crate::bench::Bench;
use crate::process::{nap, Deadline, Walhook};

pub struct CatchUp {
    /// Seconds from start until the slot was confirmed at the end.
    pub slot_seconds: f64,
    /// ...and until the receiver had every request.
    pub delivered_seconds: f64,
    /// The last poll that found no request yet (with nginx's counter), so
    /// that the time from it to the last request is never shorter than the
    /// delivery phase.
    pub first_seconds: Option<f64>,
    pub delivered_by: &'static str,
    /// Status requests nginx counted meanwhile.
    pub nginx_polls: u64,
}

impl CatchUp {
    pub fn seconds(&self) -> f64 {
        self.slot_seconds.max(self.delivered_seconds)
    }
}

/// What walhook must catch up with.
#[derive(Clone, Copy)]
pub struct Backlog<'a> {
    pub slot: &'a str,
    pub end: &'a str,
    /// Requests the receiver must get.
    pub requests: u64,
    /// Answers "calls errors" from webhook_usage.
    pub usage_sql: &'a str,
    /// Names the wait in errors.
    pub what: &'a str,
}

/// Polls until walhook (started at `t0`, nginx's counter `nginx_base`
/// read just before) has caught up with `backlog`.
pub async fn await_caught_up(
    b: &mut Bench,
    walhook: &mut Walhook,
    t0: Instant,
    nginx_base: Option<u64>,
    backlog: &Backlog<'_>,
) -> anyhow::Result<CatchUp> {
    let Backlog {
        slot,
        end,
        requests,
        usage_sql,
        what,
    } = *backlog;
    let deadline = Deadline::secs(b.knobs.walhook_timeout);
    let mut progress = Deadline::secs(10);
    let mut polls = 0u64;
    let mut slot_at: Option<f64> = None;
    let mut delivered_at: Option<f64> = if requests == 0 { Some(0.0) } else { None };
    let mut none_until = 0.0;
    let mut first_seen = false;
    loop {
        walhook.ensure_running(what)?;
        if delivered_at.is_none() {
            match nginx_base {
                Some(base) => {
                    let polled_at = t0.elapsed().as_secs_f64();
                    let count = b.nginx()?.requests().await.ok().flatten();
                    polls += 1;
                    // Requests walhook sent; 0 when nginx did not answer.
                    let got = count.map_or(0, |c| c.saturating_sub(base + polls));
                    if got >= requests {
                        delivered_at = Some(t0.elapsed().as_secs_f64());
                    }
                    if !first_seen {
                        if got > 0 {
                            first_seen = true;
                        } else {
                            none_until = polled_at;
                        }
                    }
                }
                None => {
                    let calls = calls_of(b, usage_sql).await;
                    if calls.is_some_and(|(c, _)| c >= requests as i64) {
                        delivered_at = Some(t0.elapsed().as_secs_f64());
                    }
                }
            }
        }
        if slot_at.is_none() && b.slot_at(slot, end).await {
            slot_at = Some(t0.elapsed().as_secs_f64());
        }
        if let (Some(s), Some(d)) = (slot_at, delivered_at) {
            return Ok(CatchUp {
                slot_seconds: s,
                delivered_seconds: d,
                first_seconds: first_seen.then_some(none_until),
                delivered_by: if nginx_base.is_some() {
                    "nginx stub_status"
                } else {
                    "webhook_usage.total_calls"
                },
                nginx_polls: polls,
            });
        }
        if deadline.passed() {
            let usage = calls_of(b, usage_sql).await;
            let limit = b.knobs.walhook_timeout;
            if slot_at.is_none() {
                bail!("{what}: walhook did not confirm {end} within {limit}s (webhook_usage calls/errors: {usage:?})");
            }
            bail!("{what}: the receiver did not get all {requests} requests within {limit}s (webhook_usage calls/errors: {usage:?})");
        }
        if progress.passed() {
            let usage = calls_of(b, usage_sql).await;
            say!(
                "  ... {:.1}s, webhook_usage calls/errors: {usage:?}{}",
                t0.elapsed().as_secs_f64(),
                if slot_at.is_some() {
                    ", slot confirmed"
                } else {
                    ""
                }
            );
            progress = Deadline::secs(10);
        }
        nap().await;
    }
}

/// "calls errors" from a usage query, None when it has no row yet.
pub async fn calls_of(b: &mut Bench, usage_sql: &str) -> Option<(i64, i64)> {
    let row = b.db.rows(usage_sql).await.ok()?.into_iter().next()?;
    Some((row.first()?.parse().ok()?, row.get(1)?.parse().ok()?))
}
