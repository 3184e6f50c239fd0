//! Attempts and retries of one event: SuperOffice's cycle of three
//! attempts, then growing, jittered pauses, until it is delivered, the
//! target answers 410, or the hook trips.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::RngExt;
use uuid::Uuid;

use super::attempt::{
    attempt, Attempt, DeliveryOutcome, FailureCause, FailureKind, TraceHeaders, GONE_ERROR,
};
use super::attempt_log::LoggedAttempt;
use crate::delivery::context::DeliveryContext;
use crate::delivery::hook::concurrency::Signal;
use crate::delivery::hook::HookRuntime;
use crate::delivery::http::timings::{self, ConnectTimings};
use crate::delivery::http::Sender;
use crate::registry::WebhookState;
use crate::telemetry::{AttemptFacts, DeliveryFacts, DeliverySpan, TraceParent};
use crate::text::{first_line, human_duration, redacted_url};

/// How delivering one event ended.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::delivery) enum SendResult {
    Delivered,
    /// 410 Gone (the hook is now Stopped): dropped by the state rules.
    Dropped,
    /// The store's session closed before the outcome could be stored: the
    /// event stays unsettled and is read again by the next session.
    StoreClosed,
    /// The hook was stopped or removed meanwhile: dropped by the state
    /// rules, never parked.
    Stopped,
    /// The hook tripped (too many consecutive errors): park it.
    Tripped {
        attempts: u32,
        error: Option<String>,
    },
    /// The hook was paused (`walhook webhook pause`): park it.
    Paused {
        attempts: u32,
        error: Option<String>,
    },
    /// The hook parks its events (its backlog passed its bound: this
    /// event waited too long, throttled or refused): park it, so the slot
    /// moves on; the replayer goes on with it at the target's pace.
    Parking {
        attempts: u32,
        error: Option<String>,
    },
}

/// Where the event being sent comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::delivery) enum From {
    /// The hook's live queue: it parks as soon as the hook parks.
    Queue,
    /// The parked events (the replayer): it goes on while the hook parks.
    Parked,
}

/// One event to send: what it is, how many attempts it had before
/// (parked events keep counting), and where it comes from.
pub(in crate::delivery) struct Outgoing<'a> {
    pub event: &'a str,
    pub event_id: Uuid,
    pub body: &'a Bytes,
    pub retry: u32,
    pub from: From,
    /// The trace context its transaction emitted, if any.
    pub trace: Option<&'a TraceParent>,
}

/// Attempt until delivered, gone, or the hook trips, stops, pauses or
/// (for an event from its queue) parks.
///
/// A panic while sending (a bug, or a hook the row checks let through
/// that breaks a library) is that hook's failure alone: it trips (state
/// TooManyErrors, with the panic in `last_error`) and the event is parked,
/// so the slot moves on and the DBA sees why; setting it Active again
/// replays it.
pub(in crate::delivery) async fn deliver(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    http: Sender<'_>,
    outgoing: Outgoing<'_>,
) -> SendResult {
    let retry = outgoing.retry;
    let event_id = outgoing.event_id;
    let mut trace = Trace {
        parent: outgoing.trace,
        span: ctx.telemetry.delivery(
            outgoing.trace,
            DeliveryFacts {
                webhook_id: runtime.id(),
                event_id,
                event: outgoing.event,
            },
        ),
        attempts: 0,
    };
    let sending =
        std::panic::AssertUnwindSafe(send_until_settled(ctx, runtime, http, outgoing, &mut trace));
    let result = futures_util::FutureExt::catch_unwind(sending).await;
    if let Some(span) = trace.span {
        let outcome = match &result {
            Ok(result) => result.name(),
            Err(_) => "tripped",
        };
        span.end(outcome, trace.attempts);
    }
    match result {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            let error = format!("walhook failed while delivering this event: {what}");
            let id = runtime.id();
            tracing::error!(webhook_id = id, event_id = %event_id,
                "{error}; the hook is set to TooManyErrors (3) and its events are parked");
            ctx.usage.failure(id, &error);
            if runtime.trip() {
                ctx.usage.set_state(id, WebhookState::TooManyErrors);
            }
            SendResult::Tripped {
                attempts: retry.saturating_add(1),
                error: Some(error),
            }
        }
    }
}

/// One delivery's trace: the transaction's context, and the delivery's
/// span when walhook exports spans.
struct Trace<'a> {
    parent: Option<&'a TraceParent>,
    span: Option<DeliverySpan>,
    /// Attempts made by this delivery.
    attempts: u32,
}

impl SendResult {
    /// The delivery span's outcome.
    fn name(&self) -> &'static str {
        match self {
            SendResult::Delivered => "delivered",
            SendResult::Dropped => "gone",
            SendResult::StoreClosed => "unsettled",
            SendResult::Stopped => "stopped",
            SendResult::Tripped { .. } => "tripped",
            SendResult::Paused { .. } => "paused",
            SendResult::Parking { .. } => "parked",
        }
    }
}

async fn send_until_settled(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    http: Sender<'_>,
    outgoing: Outgoing<'_>,
    trace: &mut Trace<'_>,
) -> SendResult {
    let Outgoing {
        event,
        event_id,
        body,
        mut retry,
        from,
        trace: _,
    } = outgoing;
    let id = runtime.id();
    let mut last_error = None;
    let first = retry;
    loop {
        if runtime.is_stopped() {
            return SendResult::Stopped;
        }
        if runtime.is_gone() {
            return SendResult::Dropped;
        }
        if runtime.is_tripped() {
            return SendResult::Tripped {
                attempts: retry,
                error: last_error,
            };
        }
        if runtime.is_paused() {
            return SendResult::Paused {
                attempts: retry,
                error: last_error,
            };
        }
        if from == From::Queue && runtime.parking().await.is_some() {
            return SendResult::Parking {
                attempts: retry,
                error: last_error,
            };
        }
        if !runtime.wait_turn().await {
            // Stopped, tripped, paused or changed while waiting: look again.
            continue;
        }
        let (hook, key) = runtime.current_with_key();
        let settings = runtime.settings();
        let config = ctx.config.get();
        let started = Instant::now();
        let request = runtime.request_started();
        let span = trace
            .span
            .as_ref()
            .map(|span| span.attempt(retry, redacted_url(&hook.target_url).as_str()));
        // With no span of its own, the request passes the transaction's
        // context on as it came.
        let headers = match (&span, trace.parent) {
            (Some(span), _) => TraceHeaders {
                traceparent: span.traceparent.as_ref(),
                tracestate: span.tracestate.as_ref(),
            },
            (None, Some(parent)) => TraceHeaders {
                traceparent: Some(&parent.traceparent),
                tracestate: parent.tracestate.as_ref(),
            },
            (None, None) => TraceHeaders::default(),
        };
        let job = Attempt {
            hook: &hook,
            event,
            event_id,
            body,
            retry,
            settings: &settings,
            key: key.as_deref(),
            trace: headers,
        };
        let sending = attempt(http, &config, &job);
        let (outcome, connect) = match span {
            Some(_) => timings::measured(sending).await,
            None => (sending.await, ConnectTimings::default()),
        };
        drop(request);
        retry = retry.saturating_add(1);
        trace.attempts = trace.attempts.saturating_add(1);
        let took = started.elapsed();
        let (kind, signal) = match &outcome {
            DeliveryOutcome::Delivered(_) => ("delivered", Some(Signal::Answered(took))),
            DeliveryOutcome::Gone => ("gone", Some(Signal::Answered(took))),
            DeliveryOutcome::Failed { kind, .. } => (
                if *kind == FailureKind::Throttled {
                    "throttled"
                } else {
                    "failed"
                },
                match kind {
                    FailureKind::NotSent => None,
                    FailureKind::Answered => Some(Signal::Answered(took)),
                    FailureKind::Overloaded | FailureKind::Throttled => Some(Signal::BackPressure),
                },
            ),
        };
        if let Some(signal) = signal {
            runtime.record_attempt(signal);
        }
        if let Some(span) = span {
            span.end(attempt_facts(&outcome, kind, connect, took));
        }
        ctx.metrics.delivery(kind, took);
        ctx.metrics.hook_delivery(id, kind);
        if ctx.attempts.wants(config.attempt_log, kind == "delivered") {
            ctx.attempts.record(logged_attempt(
                &outcome,
                id,
                event_id,
                event,
                retry - 1,
                kind,
                took,
            ));
        }
        outcome.record_usage(&ctx.usage, id);
        match outcome {
            DeliveryOutcome::Delivered(_) => {
                runtime.record_success();
                return SendResult::Delivered;
            }
            DeliveryOutcome::Gone => {
                // The Stopped state is stored before any event is dropped
                // for it, so a drop is never without its reason.
                while let Err(e) = ctx.store.store_state(id, WebhookState::Stopped).await {
                    if ctx.store.is_closed() {
                        return SendResult::StoreClosed;
                    }
                    tracing::error!(
                        webhook_id = id,
                        "410 Gone, but storing state Stopped failed; trying again: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                if runtime.mark_gone() {
                    tracing::warn!(webhook_id = id, url = %redacted_url(&hook.target_url),
                        "target answered 410 Gone; webhook state set to Stopped (2)");
                }
                return SendResult::Dropped;
            }
            DeliveryOutcome::Failed {
                error,
                retry_after,
                kind: FailureKind::Throttled,
                ..
            } => {
                // The target asks for less: the whole hook waits as long
                // as it says (at most delivery.max_backoff), and it is not
                // an error toward TooManyErrors.
                let wait = retry_after
                    .unwrap_or_else(|| backoff(retry - first, config.max_backoff))
                    .min(config.max_backoff);
                runtime.hold_for(wait);
                tracing::warn!(webhook_id = id, event_id = %event_id, retry = retry - 1,
                    "target throttles: no request to it for {}: {}", human_duration(wait), first_line(&error));
                last_error = Some(error);
            }
            DeliveryOutcome::Failed {
                error, retry_after, ..
            } => {
                let errors = runtime.record_failure();
                if errors >= config.max_consecutive_errors {
                    if runtime.trip() {
                        ctx.usage.set_state(id, WebhookState::TooManyErrors);
                        tracing::warn!(webhook_id = id, url = %redacted_url(&hook.target_url), errors,
                            "too many consecutive errors: webhook state set to TooManyErrors (3), \
                             its events are parked until it is set Active again: {}",
                            first_line(&error));
                    }
                    return SendResult::Tripped {
                        attempts: retry,
                        error: Some(error),
                    };
                }
                let wait = backoff(retry - first, config.max_backoff);
                let wait = retry_after
                    .map_or(wait, |ra| ra.max(wait))
                    .min(config.max_backoff);
                tracing::warn!(webhook_id = id, event_id = %event_id, retry = retry - 1,
                    "delivery failed, next attempt in {}: {}", human_duration(wait), first_line(&error));
                last_error = Some(error);
                // Another event tripping the hook, a 410 or a change of the hook's row
                // ends the wait early.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = runtime.changed() => {}
                }
            }
        }
    }
}

/// What an attempt's span records.
fn attempt_facts<'a>(
    outcome: &'a DeliveryOutcome,
    kind: &'static str,
    connect: ConnectTimings,
    took: Duration,
) -> AttemptFacts<'a> {
    let (status, error_kind, error) = match outcome {
        DeliveryOutcome::Delivered(status) => (Some(status.as_u16()), None, None),
        DeliveryOutcome::Gone => (Some(410), Some("status"), Some(GONE_ERROR.into())),
        DeliveryOutcome::Failed { error, cause, .. } => (
            match cause {
                FailureCause::Status(status) => Some(status.as_u16()),
                _ => None,
            },
            Some(cause.name()),
            Some(first_line(error).into()),
        ),
    };
    AttemptFacts {
        status,
        outcome: kind,
        error_kind,
        error,
        dns: connect.dns,
        connect: connect.connect,
        tls: connect.tls,
        answer: Some(took.saturating_sub(connect.total())),
    }
}

/// What the failure log keeps of one attempt.
fn logged_attempt(
    outcome: &DeliveryOutcome,
    webhook_id: i32,
    event_id: Uuid,
    event: &str,
    attempt: u32,
    kind: &'static str,
    took: Duration,
) -> LoggedAttempt {
    let (status, error_kind, answer) = match outcome {
        DeliveryOutcome::Delivered(status) => (Some(*status), None, None),
        DeliveryOutcome::Gone => (
            Some(http::StatusCode::GONE),
            Some("status"),
            Some(GONE_ERROR.to_owned()),
        ),
        DeliveryOutcome::Failed { error, cause, .. } => (
            match cause {
                FailureCause::Status(status) => Some(*status),
                _ => None,
            },
            Some(cause.name()),
            Some(LoggedAttempt::bounded_answer(error)),
        ),
    };
    LoggedAttempt {
        at: SystemTime::now(),
        webhook_id,
        event_id,
        event: event.to_owned(),
        attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
        outcome: kind,
        // A status is 100..=999: it fits.
        status: status.map(|s| s.as_u16() as i16),
        error_kind,
        duration: took,
        answer,
    }
}

/// Wait before retry `n` (1-based) of one event. Each cycle is three
/// attempts at 0 s, 1 s and 4 s from its start, as SuperOffice does; cycles
/// after the first start after a growing, jittered pause.
pub fn backoff(n: u32, max: Duration) -> Duration {
    match n % 3 {
        1 => Duration::from_secs(1),
        2 => Duration::from_secs(3),
        _ => {
            let cycle = n / 3; // 1 for the pause before the second cycle
            let base = Duration::from_secs(10).saturating_mul(1u32 << cycle.min(16));
            let jitter = rand::rng().random_range(0.8..1.2);
            base.mul_f64(jitter).min(max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_schedule() {
        let max = Duration::from_secs(300);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(2, max), Duration::from_secs(3));
        let pause = backoff(3, max);
        assert!(pause >= Duration::from_secs(16) && pause <= Duration::from_secs(24));
        assert_eq!(backoff(4, max), Duration::from_secs(1));
        assert!(backoff(300, max) <= max);
    }
}
