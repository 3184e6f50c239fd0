//! The parked bounds hold exactly: a burst that arrives in one park batch
//! parks up to the limit (of events, or of bytes) and no more, the rest is
//! dropped and counted, and the hook is Stopped.

use std::time::Duration;

use walhook_lab::receiver::Receiver;

use crate::common::*;

const CRM: &str = "CREATE TABLE contact (contact_id serial PRIMARY KEY, name text NOT NULL);";

/// `walhook_deliveries_total{outcome="dropped"}`, and the whole page.
async fn dropped(port: u16) -> (f64, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("walhook_deliveries_total{outcome=\"dropped\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    (dropped, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_parks_exactly_up_to_the_limit_and_the_rest_is_dropped_and_counted() {
    let port = free_port();
    let mut h = Harness::start(
        CRM,
        &format!("max_parked_events_per_webhook = 5\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let id = h.add_hook("contact.*", &receiver.url("/h"), None).await;
    // In TooManyErrors from the start: every event parks.
    h.db.execute(
        "UPDATE walhook.webhook SET state = 3 WHERE webhook_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    // Twenty changes in one transaction: one park batch.
    h.db.batch_execute(
        "INSERT INTO contact (name) SELECT 'n' || i FROM generate_series(1, 20) AS i",
    )
    .await
    .unwrap();
    let end = h.current_lsn().await;
    h.wait_confirmed("the slot to pass the burst", end, Duration::from_secs(30))
        .await;
    assert_eq!(h.parked_count(id).await, 5, "log:\n{}", h.daemon_log());
    assert_eq!(h.webhook_state(id).await, 2, "Stopped at its limit");
    let (dropped, metrics) = dropped(port).await;
    assert_eq!(
        dropped, 15.0,
        "the 15 past the limit are counted:\n{metrics}"
    );
    assert_eq!(receiver.count(), 0);
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_parks_what_fits_counting_properties_once_and_stops_the_hook() {
    let port = free_port();
    // Both at their smallest: 64 KiB.
    let mut h = Harness::start(
        CRM,
        &format!(
            "max_body_bytes = 65536\nmax_parked_bytes_per_webhook = 65536\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    // Counted once, 20 KB of properties leave room for about ten events of
    // 4 KB; counted with every event, for two.
    let properties = serde_json::json!({"blob": "p".repeat(20_000)}).to_string();
    let id: i32 =
        h.db.query_one(
            "INSERT INTO walhook.webhook (name, events, target_url, properties, state) \
             VALUES ('big', 'contact.*', $1, $2::text::jsonb, 3) RETURNING webhook_id",
            &[&receiver.url("/h"), &properties],
        )
        .await
        .unwrap()
        .get(0);
    h.start_daemon().await;
    // Twenty changes in one transaction: one park batch, of bodies of one
    // size (keys of two digits).
    h.db.batch_execute(
        "INSERT INTO contact SELECT i, repeat('n', 4000) FROM generate_series(10, 29) AS i",
    )
    .await
    .unwrap();
    let end = h.current_lsn().await;
    h.wait_confirmed("the slot to pass the burst", end, Duration::from_secs(30))
        .await;
    let parked = h.parked_count(id).await;
    // What the parked events hold: each body without its properties, and
    // the properties once; and the largest of them.
    let member = format!("octet_length(',\"Properties\":') + {}", properties.len());
    let row =
        h.db.query_one(
            &format!(
                "SELECT (sum(octet_length(body) - ({member})) + {})::bigint, \
                        max(octet_length(body) - ({member}))::bigint \
                   FROM walhook.parked_event WHERE webhook_id = $1",
                properties.len()
            ),
            &[&id],
        )
        .await
        .unwrap();
    let (stored, largest): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        parked > 2 && stored <= 65536 && stored + largest > 65536,
        "{parked} events of {stored} bytes parked: as many as fit in 65536 bytes, the properties \
         counted once; log:\n{}",
        h.daemon_log()
    );
    assert_eq!(h.webhook_state(id).await, 2, "Stopped at its limit");
    let (dropped, metrics) = dropped(port).await;
    assert_eq!(
        dropped,
        (20 - parked) as f64,
        "the events past the bound are counted:\n{metrics}"
    );
    assert_eq!(receiver.count(), 0);
    assert!(h.stop_daemon().success());
    // `walhook check` and `walhook status` warn for a hook at 80% of the
    // bound or more.
    let warning = format!("webhook_id {id} has {stored} bytes of parked events");
    for command in ["check", "status"] {
        let out = text(&h.walhook(&[command]));
        assert!(
            out.contains(&warning) && out.contains("max_parked_bytes_per_webhook (65536)"),
            "{command}: {out}"
        );
    }
}
