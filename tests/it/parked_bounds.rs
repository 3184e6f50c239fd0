//! The parked-event bound holds exactly: a burst that arrives in one park
//! batch parks up to the limit and no more, the rest is dropped and
//! counted, and the hook is Stopped.

use std::time::Duration;

use walhook_lab::receiver::Receiver;

use crate::common::*;

const CRM: &str = "CREATE TABLE contact (contact_id serial PRIMARY KEY, name text NOT NULL);";

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
    assert_eq!(
        dropped, 15.0,
        "the 15 past the limit are counted:\n{metrics}"
    );
    assert_eq!(receiver.count(), 0);
    assert!(h.stop_daemon().success());
}
