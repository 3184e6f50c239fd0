//! The trace context an application hands walhook inside its
//! transaction, so that the transaction's deliveries continue its trace:
//!
//! ```sql
//! select pg_logical_emit_message(true, 'walhook.trace',
//!     '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
//! ```
//!
//! The content is a W3C `traceparent`, optionally followed by a line
//! holding its `tracestate`. Any role can emit messages under any prefix,
//! so a context that does not parse is counted and ignored, never fatal.

use http::HeaderValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The prefix of trace-context messages. It differs from walhook's own
/// prefix (`walhook`, backfill watermarks): pgoutput compares prefixes
/// whole, so neither is read as the other.
pub const TRACE_PREFIX: &str = "walhook.trace";

/// The largest content read under [`TRACE_PREFIX`]: a traceparent is 55
/// bytes, and W3C asks that at least 512 bytes of tracestate be passed
/// on. Larger messages are skipped unread by the source.
pub const MAX_TRACE_MESSAGE_BYTES: usize = 1024;

/// A transaction's trace context, as the application emitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceParent {
    /// The application's span, the parent of the deliveries' spans.
    pub span_context: SpanContext,
    /// The `traceparent` and `tracestate` headers as received: what a
    /// request carries when walhook exports no spans of its own.
    pub traceparent: HeaderValue,
    pub tracestate: Option<HeaderValue>,
}

/// Why a trace-context message was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceContextError {
    #[error("the content is not UTF-8")]
    NotText,
    #[error(
        "the first line is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, ids not all zero)"
    )]
    Malformed,
}

impl TraceContextError {
    /// The metric's reason label.
    pub fn reason(self) -> &'static str {
        match self {
            TraceContextError::NotText | TraceContextError::Malformed => "malformed",
        }
    }
}

impl TraceParent {
    /// Parses a message's content: a `traceparent` line, then optionally a
    /// `tracestate` line. The W3C parsing is the OpenTelemetry SDK's
    /// propagator's; a tracestate it cannot read is dropped, as the
    /// propagator drops it, and the traceparent kept.
    pub fn parse(content: &[u8]) -> Result<TraceParent, TraceContextError> {
        let text = std::str::from_utf8(content).map_err(|_| TraceContextError::NotText)?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let parent = lines.next().ok_or(TraceContextError::Malformed)?;
        let state = lines.next();
        if lines.next().is_some() {
            return Err(TraceContextError::Malformed);
        }
        let mut carrier = std::collections::HashMap::with_capacity(2);
        carrier.insert("traceparent".to_owned(), parent.to_owned());
        if let Some(state) = state {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        let span_context = cx.span().span_context().clone();
        if !span_context.is_valid() {
            return Err(TraceContextError::Malformed);
        }
        let traceparent =
            HeaderValue::from_str(parent).map_err(|_| TraceContextError::Malformed)?;
        let header = span_context.trace_state().header();
        let tracestate = (!header.is_empty())
            .then(|| HeaderValue::from_str(&header).ok())
            .flatten();
        Ok(TraceParent {
            span_context,
            traceparent,
            tracestate,
        })
    }
}

/// The `traceparent` header of `span`.
pub fn traceparent(span: &SpanContext) -> Option<HeaderValue> {
    let text = format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    );
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_alone_and_with_its_tracestate() {
        let alone = TraceParent::parse(PARENT.as_bytes()).unwrap();
        assert_eq!(
            alone.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(alone.span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(alone.span_context.is_sampled());
        assert!(alone.span_context.is_remote());
        assert_eq!(alone.traceparent, PARENT);
        assert_eq!(alone.tracestate, None);
        assert_eq!(
            traceparent(&alone.span_context).unwrap(),
            PARENT,
            "rendered back as received"
        );

        let with_state =
            TraceParent::parse(format!("{PARENT}\nrojo=00f067aa0ba902b7\n").as_bytes()).unwrap();
        assert_eq!(with_state.tracestate.unwrap(), "rojo=00f067aa0ba902b7");
    }

    #[test]
    fn an_unsampled_context_stays_unsampled() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let parent = TraceParent::parse(text.as_bytes()).unwrap();
        assert!(!parent.span_context.is_sampled());
    }

    #[test]
    fn what_is_not_a_context_is_refused() {
        for bad in [
            "",
            "\n\n",
            "hello",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\na=b\nextra",
        ] {
            assert_eq!(
                TraceParent::parse(bad.as_bytes()),
                Err(TraceContextError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            TraceParent::parse(&[0xff, 0xfe]),
            Err(TraceContextError::NotText)
        );
    }
}
