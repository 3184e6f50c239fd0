//! The failure log (`delivery.attempt_log`): attempts in
//! `delivery_attempt`, its bounds, and `walhook webhook attempts`.
//!
//! One hook with one strict order sends its events one after another, so
//! its attempts reach the log's writer in the order they happened: once a
//! later attempt's row is in the table, every earlier attempt that was
//! logged is too, and one that is missing was never logged.

use std::time::Duration;

use walhook_lab::receiver::Receiver;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Fast retries, one strict order per hook (appended under [delivery]).
const FAST: &str = "max_consecutive_errors = 50\nmax_backoff = \"300ms\"\ntimeout = \"2s\"\n\
                    connect_timeout = \"1s\"\nordering = \"webhook\"\n";

/// A logged attempt as the tests read it.
#[derive(Debug)]
struct Row {
    attempt_id: i64,
    event_id: uuid::Uuid,
    attempt: i32,
    outcome: String,
    status: Option<i16>,
    error_kind: Option<String>,
    duration_ms: f64,
    answer: Option<String>,
}

async fn rows(h: &Harness, webhook_id: i32) -> Vec<Row> {
    h.db.query(
        "SELECT attempt_id, event_id, attempt, outcome, status, error_kind, duration_ms, answer \
           FROM walhook.delivery_attempt WHERE webhook_id = $1 ORDER BY attempt_id",
        &[&webhook_id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| Row {
        attempt_id: r.get(0),
        event_id: r.get(1),
        attempt: r.get(2),
        outcome: r.get(3),
        status: r.get(4),
        error_kind: r.get(5),
        duration_ms: r.get(6),
        answer: r.get(7),
    })
    .collect()
}

/// Wait until `done` holds on the hook's logged attempts.
async fn wait_rows(
    h: &Harness,
    webhook_id: i32,
    what: &str,
    done: impl Fn(&[Row]) -> bool,
) -> Vec<Row> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = rows(h, webhook_id).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; rows: {rows:?}\nlog:\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The EventIds of the requests the receiver got, in order.
fn event_ids(receiver: &Receiver) -> Vec<uuid::Uuid> {
    receiver
        .requests()
        .iter()
        .filter_map(|r| r.header("X-SuperOffice-EventId")?.parse().ok())
        .collect()
}

/// Under the default ("failures"), a failed attempt is logged with its
/// status, error kind, duration and answer, a delivered one is not; the
/// command prints them as a table and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_logged_with_status_and_duration() {
    let mut h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY, name text);",
        FAST,
    )
    .await;
    // Every event fails once, then is delivered.
    let receiver = Receiver::start_with(|_, n| if n % 2 == 0 { 500 } else { 200 })
        .await
        .unwrap();
    let id = h.add_hook("*", &receiver.url("/hook"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact VALUES (1, 'a')")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| r.len() == 2).await;
    h.db.batch_execute("INSERT INTO contact VALUES (2, 'b')")
        .await
        .unwrap();
    let ids = {
        receiver.wait_until(WAIT, |r| r.len() >= 3).await;
        event_ids(&receiver)
    };
    let (first, second) = (ids[0], ids[2]);
    // The second event's failure is logged after the first's delivery
    // would have been: the first event has its failure alone.
    let logged = wait_rows(&h, id, "the second event's failure", |rows| {
        rows.iter().any(|r| r.event_id == second)
    })
    .await;
    let of_first: Vec<&Row> = logged.iter().filter(|r| r.event_id == first).collect();
    assert_eq!(of_first.len(), 1, "{logged:?}");
    let failed = of_first[0];
    assert_eq!(failed.attempt, 0);
    assert_eq!(failed.outcome, "failed");
    assert_eq!(failed.status, Some(500));
    assert_eq!(failed.error_kind.as_deref(), Some("status"));
    assert!(failed.duration_ms > 0.0, "{failed:?}");
    let answer = failed.answer.as_deref().unwrap_or_default();
    assert!(answer.starts_with("HTTP 500"), "{answer}");

    let out = h.walhook(&["webhook", "attempts", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let table = stdout(&out);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("TIME") && header.contains("OUTCOME") && header.contains("STATUS"),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.contains(&first.to_string()))
        .unwrap_or_else(|| panic!("no line for {first}:\n{table}"));
    assert!(
        line.contains("contact.created")
            && line.contains("failed")
            && line.contains(" 500 ")
            && line.ends_with("HTTP 500 Internal Server Error"),
        "{line}"
    );

    let out = h.walhook(&["webhook", "attempts", &id.to_string(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), rows(&h, id).await.len(), "{json}");
    let item = items
        .iter()
        .find(|i| i["event_id"] == first.to_string())
        .unwrap_or_else(|| panic!("no item for {first}: {json}"));
    assert_eq!(item["webhook_id"], id);
    assert_eq!(item["attempt"], 0);
    assert_eq!(item["outcome"], "failed");
    assert_eq!(item["status"], 500);
    assert_eq!(item["error_kind"], "status");
    assert!(
        item["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{item}"
    );
    assert!(
        item["at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{item}"
    );

    // Nothing after a time to come.
    let out = h.walhook(&[
        "webhook",
        "attempts",
        &id.to_string(),
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).starts_with(&format!("no attempts of webhook {id}")),
        "{}",
        text(&out)
    );
    let out = h.walhook(&[
        "webhook",
        "attempts",
        &id.to_string(),
        "--since",
        "yesterday-ish",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("neither a time"), "{}", text(&out));
}

/// "all" logs delivered attempts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_logs_delivered_attempts() {
    let mut h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY, name text);",
        &format!("{FAST}attempt_log = \"all\"\n"),
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let id = h.add_hook("*", &receiver.url("/hook"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact VALUES (1, 'a')")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| r.len() == 1).await;
    let event = event_ids(&receiver)[0];
    let logged = wait_rows(&h, id, "the delivered attempt", |rows| !rows.is_empty()).await;
    let delivered = &logged[0];
    assert_eq!(delivered.event_id, event);
    assert_eq!(delivered.outcome, "delivered");
    assert_eq!(delivered.status, Some(200));
    assert_eq!(delivered.error_kind, None);
    assert_eq!(delivered.answer, None);
}

/// "off" writes nothing: a failure while it is off is missing once a
/// later failure, after a reload to "failures", is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_logs_nothing() {
    let mut h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY, name text);",
        &format!("{FAST}attempt_log = \"off\"\n"),
    )
    .await;
    let receiver = Receiver::start_with(|_, n| if n % 2 == 0 { 500 } else { 200 })
        .await
        .unwrap();
    let id = h.add_hook("*", &receiver.url("/hook"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact VALUES (1, 'a')")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| r.len() == 2).await;
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        config.replace("attempt_log = \"off\"", "attempt_log = \"failures\""),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.daemon_pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    h.wait_log("reloaded").await;
    h.db.batch_execute("INSERT INTO contact VALUES (2, 'b')")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    let ids = event_ids(&receiver);
    let logged = wait_rows(&h, id, "the failure after the reload", |rows| {
        rows.iter().any(|r| r.event_id == ids[2])
    })
    .await;
    assert!(logged.iter().all(|r| r.event_id != ids[0]), "{logged:?}");
}

/// The table keeps the newest delivery.attempt_log_max_rows_per_webhook
/// attempts of a hook, and none older than attempt_log_retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounds_prune_the_log() {
    let mut h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY, name text);",
        &format!("{FAST}attempt_log_max_rows_per_webhook = 2\nattempt_log_retention = \"1d\"\n"),
    )
    .await;
    // An attempt of a hook that is gone, older than the retention.
    h.db.batch_execute(
        "INSERT INTO walhook.delivery_attempt \
           (at, webhook_id, event_id, event, attempt, outcome, duration_ms) \
         VALUES (now() - interval '2 days', 999, gen_random_uuid(), 'old.created', 0, 'failed', 1)",
    )
    .await
    .unwrap();
    let receiver = Receiver::start_with(|_, _| 500).await.unwrap();
    let id = h.add_hook("*", &receiver.url("/hook"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact VALUES (1, 'a')")
        .await
        .unwrap();
    // attempt_id counts every row written (1 was the old one): an id past
    // 5 with at most 2 rows left means the older ones were removed.
    let kept = wait_rows(&h, id, "the hook's rows pruned to 2", |rows| {
        rows.len() <= 2 && rows.last().is_some_and(|r| r.attempt_id >= 6)
    })
    .await;
    assert!(kept.iter().all(|r| r.outcome == "failed"), "{kept:?}");
    wait_rows(&h, 999, "the old attempt removed", |rows| rows.is_empty()).await;
}
