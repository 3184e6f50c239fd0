//! Per-hook settings of walhook's own (`webhook_control`), changed with
//! `walhook webhook rotate-secret|throttle|pause|resume` while the daemon
//! runs: secret rotation with both signatures until the expiry, a rate
//! limit, 429 holding the whole hook, and a pause that keeps every event.

use std::time::Duration;

use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const CRM: &str = "
CREATE TABLE contact (
    contact_id serial PRIMARY KEY,
    name text NOT NULL
);
";

const WAIT: Duration = Duration::from_secs(30);

fn run_ok(h: &Harness, args: &[&str]) -> String {
    let out = h.walhook(args);
    assert!(out.status.success(), "walhook {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names(requests: &[ReceivedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.json()["FieldValues"]["name"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// Wait until the database's clock is past the previous secret's expiry.
async fn wait_previous_secret_expired(h: &Harness, id: i32) {
    h.wait_for("the previous secret to expire", WAIT, move |db| {
        Box::pin(async move {
            db.query_one(
                "SELECT previous_secret_expires < now() FROM walhook.webhook_control \
                  WHERE webhook_id = $1",
                &[&id],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
        })
    })
    .await;
}

async fn insert(h: &Harness, name: &str) {
    h.db.execute("INSERT INTO contact (name) VALUES ($1)", &[&name])
        .await
        .unwrap();
}

/// After `rotate-secret`, `webhook-signature` carries a signature by the
/// new and one by the old secret, each verified as Standard Webhooks
/// libraries do, and `X-SuperOffice-Signature` the new one's. Once the
/// grace period is over the old secret signs nothing: not in the running
/// daemon (checked at signing time) and not after a restart.
#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_until_it_expires() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hook = h
        .add_hook("contact.created", &receiver.url("/r"), Some(old))
        .await;
    h.start_daemon().await;

    let id = hook.to_string();
    let out = run_ok(&h, &["webhook", "rotate-secret", &id, "--grace", "4s"]);
    // A generated secret is printed once, on the last line.
    let new = out.lines().last().unwrap_or_default().to_owned();
    assert!(new.starts_with("whsec_") && new.len() > 40, "{out}");
    let stored: String =
        h.db.query_one(
            "SELECT secret FROM walhook.webhook WHERE webhook_id = $1",
            &[&hook],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, new);

    insert(&h, "during").await;
    let got = receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    let during = &got[0];
    let (wid, ts, sig) = (
        during.header("webhook-id").unwrap(),
        during.header("webhook-timestamp").unwrap(),
        during.header("webhook-signature").unwrap(),
    );
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    assert!(sig.split(' ').all(|s| s.starts_with("v1,")), "{sig}");
    assert!(verify_standard_webhooks(&new, wid, ts, &during.body, sig));
    assert!(verify_standard_webhooks(old, wid, ts, &during.body, sig));
    assert_eq!(
        during.header("x-superoffice-signature"),
        Some(expected_superoffice_signature(&new, &during.body).as_str())
    );

    // Past the expiry, the same daemon signs with the new secret only.
    wait_previous_secret_expired(&h, hook).await;
    insert(&h, "after").await;
    let got = receiver.wait_until(WAIT, |r| r.len() >= 2).await;
    let after = &got[1];
    let sig = after.header("webhook-signature").unwrap();
    let (wid, ts) = (
        after.header("webhook-id").unwrap(),
        after.header("webhook-timestamp").unwrap(),
    );
    assert_eq!(sig.split(' ').count(), 1, "{sig}");
    assert!(verify_standard_webhooks(&new, wid, ts, &after.body, sig));
    assert!(!verify_standard_webhooks(old, wid, ts, &after.body, sig));

    // A restart reads the control row again: the expired secret stays out.
    h.stop_daemon();
    h.start_daemon().await;
    insert(&h, "restarted").await;
    let got = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    let restarted = &got[2];
    let sig = restarted.header("webhook-signature").unwrap();
    let (wid, ts) = (
        restarted.header("webhook-id").unwrap(),
        restarted.header("webhook-timestamp").unwrap(),
    );
    assert_eq!(names(&got), ["during", "after", "restarted"]);
    assert_eq!(sig.split(' ').count(), 1, "{sig}");
    assert!(verify_standard_webhooks(
        &new,
        wid,
        ts,
        &restarted.body,
        sig
    ));

    // Refusals name the culprit.
    let out = h.walhook(&["webhook", "rotate-secret", "999"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("webhook_id 999 does not exist"),
        "{}",
        text(&out)
    );
    let out = h.walhook(&["webhook", "rotate-secret", &id, "--grace", "31d"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("longer than 30 days"), "{}", text(&out));
}

/// `pause` parks every event of the hook and sends nothing, also across a
/// restart; `resume` delivers them in commit order, then the new ones.
/// Another hook is not affected. `status` shows the pause.
#[tokio::test]
async fn a_paused_hook_keeps_its_events_until_resumed() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let paused = h
        .add_hook("contact.*", &receiver.url("/paused"), None)
        .await;
    let other = h.add_hook("contact.*", &receiver.url("/other"), None).await;
    h.start_daemon().await;
    let id = paused.to_string();

    let out = run_ok(&h, &["webhook", "pause", &id]);
    assert!(out.contains("paused"), "{out}");
    let out = run_ok(&h, &["webhook", "pause", &id]);
    assert!(out.contains("already paused"), "{out}");

    insert(&h, "a").await;
    h.db.batch_execute("UPDATE contact SET name = 'b' WHERE name = 'a'")
        .await
        .unwrap();
    insert(&h, "c").await;
    h.wait_caught_up("the daemon to settle the changes made while paused")
        .await;
    // Settled means parked: nothing went to the paused hook.
    assert_eq!(h.parked_count(paused).await, 3);
    assert!(receiver.requests_to("/paused").is_empty());
    // The other hook got all three (rows go concurrently: any order).
    let mut other_names = names(&receiver.requests_to("/other"));
    other_names.sort();
    assert_eq!(other_names, ["a", "b", "c"]);
    let status = run_ok(&h, &["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("paused") && l.contains(&id)),
        "{status}"
    );

    // The pause holds across a restart.
    h.stop_daemon();
    h.start_daemon().await;
    insert(&h, "d").await;
    h.wait_caught_up("the restarted daemon to settle a change")
        .await;
    assert_eq!(h.parked_count(paused).await, 4);
    assert!(receiver.requests_to("/paused").is_empty());

    let out = run_ok(&h, &["webhook", "resume", &id]);
    assert!(out.contains("4 parked event(s)"), "{out}");
    receiver
        .wait_until(WAIT, |_| receiver.requests_to("/paused").len() >= 4)
        .await;
    insert(&h, "e").await;
    receiver
        .wait_until(WAIT, |_| receiver.requests_to("/paused").len() >= 5)
        .await;
    // Each change is a row of its own: rows replay concurrently, so only
    // the set is fixed (one row's order is tests/it/parked_storage.rs's).
    let mut delivered = names(&receiver.requests_to("/paused"));
    delivered.sort();
    assert_eq!(delivered, ["a", "b", "c", "d", "e"]);
    // The replayer removes a batch's rows once it is delivered.
    h.wait_for("the replayed events to leave delivery", WAIT, move |db| {
        Box::pin(async move {
            db.query_one(
                "SELECT count(*) = 0 FROM walhook.delivery WHERE webhook_id = $1",
                &[&paused],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
        })
    })
    .await;
    assert_eq!(receiver.requests_to("/other").len(), 5);
    let state: i16 =
        h.db.query_one(
            "SELECT state FROM walhook.webhook WHERE webhook_id = $1",
            &[&other],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, 1);
}

/// A rate set while the daemon runs spaces the hook's requests; `off`
/// lifts it.
#[tokio::test]
async fn a_rate_limit_spaces_requests_and_applies_without_restart() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let hook = h
        .add_hook("contact.created", &receiver.url("/r"), None)
        .await;
    h.start_daemon().await;
    let id = hook.to_string();

    let out = run_ok(&h, &["webhook", "throttle", &id, "--rate", "5/s"]);
    assert!(out.contains("at most 5/s"), "{out}");
    h.wait_caught_up("the daemon to read the rate").await;
    // Ten rows in one transaction: ten concurrent rows, paced to 5/s.
    h.db.batch_execute("INSERT INTO contact (name) SELECT 'n' || i FROM generate_series(1, 10) i")
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 10).await;
    assert_eq!(got.len(), 10);
    for pair in got.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // 200 ms apart, less what the two requests' travel times differ.
        assert!(gap >= Duration::from_millis(170), "gap {gap:?}");
    }

    let out = run_ok(&h, &["webhook", "throttle", &id, "--rate", "off"]);
    assert!(out.contains("no rate limit"), "{out}");
    let stored: Option<i32> =
        h.db.query_one(
            "SELECT max_per_minute FROM walhook.webhook_control WHERE webhook_id = $1",
            &[&hook],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, None);

    let out = h.walhook(&["webhook", "throttle", &id, "--rate", "10/h"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not N/s, N/min or off"),
        "{}",
        text(&out)
    );
}

/// 429 holds the whole hook for the time asked (here the retry's pause,
/// as the answer has no Retry-After), also for other rows' events, and
/// does not count toward TooManyErrors; webhook_usage counts it.
#[tokio::test]
async fn too_many_requests_holds_the_whole_hook_and_is_not_an_error() {
    let mut h = Harness::start(
        CRM,
        "max_consecutive_errors = 2\nmax_backoff = \"1500ms\"\n",
    )
    .await;
    // Three 429s in a row, more than max_consecutive_errors, then 200.
    let receiver = Receiver::start_with(|_, before| if before < 3 { 429 } else { 200 })
        .await
        .unwrap();
    let hook = h
        .add_hook("contact.created", &receiver.url("/r"), None)
        .await;
    h.start_daemon().await;

    insert(&h, "first").await;
    let got = receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    let throttled_at = got[0].at;
    assert_eq!(got[0].status, 429);
    // Another row's event, committed after the 429 came back, waits too.
    // The receiver's log shows the request arrived, not that walhook has
    // read the answer; its own log line says so.
    h.wait_log("target throttles").await;
    insert(&h, "second").await;
    let got = receiver
        .wait_until(WAIT, |r| r.iter().filter(|r| r.status == 200).count() >= 2)
        .await;
    let second = got
        .iter()
        .find(|r| r.json()["FieldValues"]["name"] == "second")
        .expect("the second row arrives");
    let waited = second.at.duration_since(throttled_at);
    // backoff(1) is 1 s: the hold the target's 429 asked for.
    assert!(
        waited >= Duration::from_millis(900),
        "sent after {waited:?}"
    );

    let usage = h.wait_usage(hook, |u| u.total_calls >= 5).await;
    assert_eq!(usage.total_errors, 0, "{usage:?}");
    let (throttled, last): (i64, bool) = {
        let row =
            h.db.query_one(
                "SELECT total_throttled, last_throttled IS NOT NULL FROM walhook.webhook_usage \
                  WHERE webhook_id = $1",
                &[&hook],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(throttled, 3);
    assert!(last);
    let state: i16 =
        h.db.query_one(
            "SELECT state FROM walhook.webhook WHERE webhook_id = $1",
            &[&hook],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, 1, "429 must not trip the hook");
}

/// An install set up before `webhook_control` existed: the daemon says
/// to run setup and delivers meanwhile; the next `setup` creates the table
/// and publishes it, and a pause then works.
#[tokio::test]
async fn an_older_install_gets_the_control_table_from_the_next_setup() {
    let mut h = Harness::start(CRM, "").await;
    h.db.batch_execute(
        "ALTER PUBLICATION walhook DROP TABLE walhook.webhook_control; \
         DROP TABLE walhook.webhook_control",
    )
    .await
    .unwrap();
    let receiver = Receiver::start().await.unwrap();
    let hook = h
        .add_hook("contact.created", &receiver.url("/r"), None)
        .await;
    h.start_daemon().await;
    h.wait_log("walhook.webhook_control is missing: run `walhook setup`")
        .await;
    insert(&h, "before").await;
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    h.stop_daemon();

    run_ok(&h, &["setup"]);
    let published: bool =
        h.db.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'walhook' \
               AND schemaname = 'walhook' AND tablename = 'webhook_control')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(published);
    let out = run_ok(&h, &["setup"]);
    assert!(
        out.contains("nothing"),
        "a second setup changes nothing: {out}"
    );

    h.start_daemon().await;
    run_ok(&h, &["webhook", "pause", &hook.to_string()]);
    insert(&h, "paused").await;
    h.wait_caught_up("the daemon to park the change").await;
    assert_eq!(h.parked_count(hook).await, 1);
    assert_eq!(names(&receiver.requests()), ["before"]);
}
