//! The spans of one delivery: one for the event's delivery to a hook,
//! from its first attempt to its outcome, and a child for each attempt,
//! whose context the request carries as `traceparent`.

use std::borrow::Cow;
use std::time::Duration;

use http::HeaderValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

use super::context::{traceparent, TraceParent};

/// The span of one event's delivery to one hook.
pub struct DeliverySpan {
    tracer: SdkTracer,
    /// Holds the span: its attempts are its children.
    cx: Context,
}

/// What a delivery span is named after.
pub struct DeliveryFacts<'a> {
    pub webhook_id: i32,
    pub event_id: uuid::Uuid,
    pub event: &'a str,
}

impl DeliverySpan {
    pub(super) fn start(
        tracer: &SdkTracer,
        parent: Option<&TraceParent>,
        facts: DeliveryFacts<'_>,
    ) -> DeliverySpan {
        let parent_cx = match parent {
            Some(p) => Context::new().with_remote_span_context(p.span_context.clone()),
            None => Context::new(),
        };
        let span = tracer
            .span_builder("walhook deliver")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("walhook.webhook.id", i64::from(facts.webhook_id)),
                KeyValue::new("walhook.event.id", facts.event_id.to_string()),
                KeyValue::new("walhook.event", facts.event.to_owned()),
            ])
            .start_with_context(tracer, &parent_cx);
        DeliverySpan {
            tracer: tracer.clone(),
            cx: parent_cx.with_span(span),
        }
    }

    /// The span of the attempt about to be sent; `attempt` counts from 0.
    pub fn attempt(&self, attempt: u32, url: &str) -> AttemptSpan {
        let span = self
            .tracer
            .span_builder("walhook attempt")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.full", url.to_owned()),
                KeyValue::new("walhook.attempt", i64::from(attempt)),
            ])
            .start_with_context(&self.tracer, &self.cx);
        let traceparent = traceparent(span.span_context());
        let state = span.span_context().trace_state().header();
        let tracestate = (!state.is_empty())
            .then(|| HeaderValue::from_str(&state).ok())
            .flatten();
        AttemptSpan {
            span,
            traceparent,
            tracestate,
        }
    }

    /// Ends the span with how the delivery ended (`delivered`, `parked`,
    /// `dropped`, ...) after `attempts` attempts.
    pub fn end(self, outcome: &'static str, attempts: u32) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("walhook.outcome", outcome));
        span.set_attribute(KeyValue::new("walhook.attempts", i64::from(attempts)));
        if outcome != "delivered" {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }
}

/// The span of one attempt.
pub struct AttemptSpan {
    span: opentelemetry_sdk::trace::Span,
    pub traceparent: Option<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
}

/// What one attempt's span records.
pub struct AttemptFacts<'a> {
    /// The answer's status, if there was one.
    pub status: Option<u16>,
    /// `delivered`, `failed`, `throttled` or `gone`.
    pub outcome: &'static str,
    /// Why it failed, in a few words (`status`, `timeout`, `connect`...).
    pub error_kind: Option<&'static str>,
    pub error: Option<Cow<'a, str>>,
    /// The new connection's phases, when the attempt made one.
    pub dns: Option<Duration>,
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
    /// From sending to the answer's headers.
    pub answer: Option<Duration>,
}

impl AttemptSpan {
    pub fn end(mut self, facts: AttemptFacts<'_>) {
        let span = &mut self.span;
        if let Some(status) = facts.status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        span.set_attribute(KeyValue::new("walhook.outcome", facts.outcome));
        for (key, took) in [
            ("walhook.dns_ms", facts.dns),
            ("walhook.connect_ms", facts.connect),
            ("walhook.tls_ms", facts.tls),
            ("walhook.answer_ms", facts.answer),
        ] {
            if let Some(took) = took {
                span.set_attribute(KeyValue::new(key, took.as_secs_f64() * 1000.0));
            }
        }
        span.set_attribute(KeyValue::new(
            "walhook.connection_reused",
            facts.connect.is_none(),
        ));
        if let Some(kind) = facts.error_kind {
            span.set_attribute(KeyValue::new("error.type", kind));
        }
        if facts.outcome != "delivered" {
            let text = facts.error.unwrap_or(Cow::Borrowed(facts.outcome));
            span.set_status(Status::error(crate::text::first_line(&text).to_owned()));
        }
        span.end();
    }
}
