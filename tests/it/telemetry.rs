//! Traces (`[telemetry]`): an application's trace context, emitted in its
//! transaction, continues through walhook's delivery spans to the
//! receiver's `traceparent`, and the spans reach a real OTLP collector.

use std::time::Duration;

use walhook_lab::otlp::{Collector, ExportedSpan};
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The application's span: what its transaction emits.
const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

/// Fast retries, one strict order for the hook, so requests arrive in
/// commit order (appended under [delivery]).
const FAST: &str = "max_consecutive_errors = 50\nmax_backoff = \"300ms\"\ntimeout = \"2s\"\n\
                    connect_timeout = \"1s\"\nordering = \"webhook\"\n";

/// The transaction that emits `context` and inserts contact `id`.
fn traced_insert(context: &str, id: i32) -> String {
    format!(
        "BEGIN; SELECT pg_logical_emit_message(true, 'walhook.trace', '{context}'); \
         INSERT INTO contact VALUES ({id}, 'n{id}'); COMMIT;"
    )
}

/// The (trace id, span id) of a request's `traceparent`.
fn parent_of(request: &ReceivedRequest) -> (String, String) {
    let header = request
        .header("traceparent")
        .unwrap_or_else(|| panic!("no traceparent in {:?}", request.headers));
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    assert_eq!(parts[0], "00", "{header}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn key_of(request: &ReceivedRequest) -> String {
    request.json()["PrimaryKey"].to_string()
}

fn one<'a>(
    spans: &'a [ExportedSpan],
    what: &str,
    f: impl Fn(&ExportedSpan) -> bool,
) -> &'a ExportedSpan {
    let found: Vec<_> = spans.iter().filter(|s| f(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}\nall: {spans:#?}");
    found[0]
}

/// A row written in a transaction that emitted the application's context
/// is delivered under it: the delivery span is the application span's
/// child, each attempt a child of the delivery, and each request's
/// `traceparent` names its attempt's span. A transaction without a
/// context, or with a malformed one, gets a trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_continues_the_application_trace_to_the_receiver() {
    let collector = Collector::start().await.unwrap();
    let port = free_port();
    let mut h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY, name text);",
        &format!(
            "{FAST}[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [telemetry]\nenabled = true\nendpoint = \"{}\"\nservice_name = \"walhook-under-test\"\n",
            collector.endpoint()
        ),
    )
    .await;
    // The first attempt fails: the traced row gets two attempts.
    let receiver = Receiver::start_with(|_, n| if n == 0 { 500 } else { 200 })
        .await
        .unwrap();
    let id = h
        .add_hook("contact.*", &receiver.url("/traced"), None)
        .await;
    h.start_daemon().await;

    h.db.batch_execute(&traced_insert(&format!("00-{APP_TRACE}-{APP_SPAN}-01"), 1))
        .await
        .unwrap();
    h.db.batch_execute("INSERT INTO contact VALUES (2, 'n2')")
        .await
        .unwrap();
    h.db.batch_execute(&traced_insert("00-not-a-context-01", 3))
        .await
        .unwrap();
    let requests = receiver.wait_until(WAIT, |r| r.len() == 4).await;
    let keys: Vec<_> = requests.iter().map(key_of).collect();
    assert_eq!(keys, ["1", "1", "2", "3"], "commit order, row 1 twice");

    // Row 1: both attempts continue the application's trace, each under
    // a span of its own.
    let (trace_a, span_a) = parent_of(&requests[0]);
    let (trace_b, span_b) = parent_of(&requests[1]);
    assert_eq!((trace_a.as_str(), trace_b.as_str()), (APP_TRACE, APP_TRACE));
    assert_ne!(span_a, span_b);
    assert!(span_a != APP_SPAN && span_b != APP_SPAN);
    // Rows 2 and 3: traces of their own.
    let (trace_2, _) = parent_of(&requests[2]);
    let (trace_3, _) = parent_of(&requests[3]);
    assert!(trace_2 != APP_TRACE && trace_3 != APP_TRACE && trace_2 != trace_3);

    // The last spans are exported when the daemon stops.
    assert!(h.stop_daemon().success(), "{}", h.daemon_log());
    let spans = collector
        .wait_until(
            WAIT,
            "three delivery spans and four attempt spans",
            |spans| {
                spans.iter().filter(|s| s.name == "walhook deliver").count() == 3
                    && spans.iter().filter(|s| s.name == "walhook attempt").count() == 4
            },
        )
        .await;
    let delivery = one(&spans, "row 1's delivery", |s| {
        s.name == "walhook deliver" && s.trace_id == APP_TRACE
    });
    assert_eq!(
        delivery.parent_span_id, APP_SPAN,
        "a child of the application's span"
    );
    assert_eq!(delivery.service, "walhook-under-test");
    assert_eq!(
        delivery.attribute("walhook.webhook.id"),
        Some(id.to_string().as_str())
    );
    assert_eq!(
        delivery.attribute("walhook.event.id"),
        requests[0].header("X-SuperOffice-EventId")
    );
    assert_eq!(delivery.attribute("walhook.event"), Some("contact.created"));
    assert_eq!(delivery.attribute("walhook.outcome"), Some("delivered"));
    assert_eq!(delivery.attribute("walhook.attempts"), Some("2"));

    let failed = one(&spans, "row 1's first attempt", |s| s.span_id == span_a);
    let delivered = one(&spans, "row 1's second attempt", |s| s.span_id == span_b);
    for (attempt, number, status, outcome) in [
        (failed, "0", "500", "failed"),
        (delivered, "1", "200", "delivered"),
    ] {
        assert_eq!(attempt.name, "walhook attempt");
        assert_eq!(attempt.trace_id, APP_TRACE);
        assert_eq!(
            attempt.parent_span_id, delivery.span_id,
            "a child of the delivery"
        );
        assert_eq!(attempt.attribute("walhook.attempt"), Some(number));
        assert_eq!(attempt.attribute("http.response.status_code"), Some(status));
        assert_eq!(attempt.attribute("walhook.outcome"), Some(outcome));
        assert!(
            attempt.attribute("walhook.answer_ms").is_some(),
            "{attempt:#?}"
        );
    }
    // The first attempt opened the hook's connection; its time is there.
    assert_eq!(failed.attribute("walhook.connection_reused"), Some("false"));
    let connect: f64 = failed
        .attribute("walhook.connect_ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(connect >= 0.0);
    assert_eq!(failed.attribute("error.type"), Some("status"));

    // Rows 2 and 3: root delivery spans, with their requests' trace ids.
    for trace in [&trace_2, &trace_3] {
        let root = one(&spans, "a root delivery", |s| {
            s.name == "walhook deliver" && &s.trace_id == trace
        });
        assert_eq!(root.parent_span_id, "", "{root:#?}");
    }
}

/// With telemetry off (the default), a transaction's context passes to
/// the receiver as the application emitted it, tracestate included; a
/// request of a transaction without one carries none. A context that is
/// not one, too large, or outside a transaction is ignored, counted, and
/// never stops the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_the_application_context_passes_through() {
    let port = free_port();
    let mut h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY, name text);",
        &format!("{FAST}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("contact.*", &receiver.url("/plain"), None).await;
    h.start_daemon().await;

    let parent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    h.db.batch_execute(&traced_insert(&format!("{parent}\ncongo=t61rcWkgMzE"), 1))
        .await
        .unwrap();
    let huge = format!("{parent}\n{}", "a=b,".repeat(400));
    h.db.batch_execute(&traced_insert(&huge, 2)).await.unwrap();
    h.db.batch_execute(&format!(
        "SELECT pg_logical_emit_message(false, 'walhook.trace', '{parent}'); \
         INSERT INTO contact VALUES (3, 'n3');"
    ))
    .await
    .unwrap();
    let requests = receiver.wait_until(WAIT, |r| r.len() == 3).await;
    assert_eq!(
        requests.iter().map(key_of).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    assert_eq!(requests[0].header("traceparent"), Some(parent.as_str()));
    assert_eq!(requests[0].header("tracestate"), Some("congo=t61rcWkgMzE"));
    for r in &requests[1..] {
        assert_eq!(r.header("traceparent"), None, "{:?}", r.headers);
        assert_eq!(r.header("tracestate"), None);
    }
    let metrics = metrics_text(port).await;
    for line in [
        "walhook_trace_contexts_total{outcome=\"used\"} 1",
        "walhook_trace_contexts_total{outcome=\"too_large\"} 1",
        "walhook_trace_contexts_total{outcome=\"not_transactional\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}
