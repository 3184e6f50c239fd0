//! `walhook parked list|show|redeliver|discard` on events the daemon
//! parked itself, and the parked gauge in the metrics.

use std::time::Duration;

use serde_json::Value;
use walhook_lab::receiver::Receiver;

use crate::common::*;

const HOST: &str = "CREATE TABLE contact (contact_id integer PRIMARY KEY, name text);";

/// The hook's parked events in commit order: (EventId, event, row key).
async fn parked(h: &Harness, webhook_id: i32) -> Vec<(String, String, String)> {
    h.db.query(
        "SELECT event_id::text, event::text, ordering_key FROM walhook.parked_event \
          WHERE webhook_id = $1 ORDER BY commit_lsn, change_index",
        &[&webhook_id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_listed_shown_redelivered_in_row_order_and_discarded() {
    let port = free_port();
    let mut h = Harness::start(HOST, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    let receiver = Receiver::start().await.unwrap();
    let failing = Receiver::start_with(|_, _| 500).await.unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let good = h
        .add_hook("contact.*", &receiver.url("/good"), Some(secret))
        .await;
    let bad = h.add_hook("contact.*", &failing.url("/bad"), None).await;
    // TooManyErrors: the daemon parks every event of both hooks.
    h.db.execute(
        "UPDATE walhook.webhook SET state = 3 WHERE webhook_id = ANY ($1)",
        &[&vec![good, bad]],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact VALUES (1, 'a');\
         UPDATE contact SET name = 'b' WHERE contact_id = 1;\
         INSERT INTO contact VALUES (2, 'c');",
    )
    .await
    .unwrap();
    h.wait_caught_up("the events to be parked").await;
    let events = parked(&h, good).await;
    let names: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        ["contact.created", "contact.changed", "contact.created"]
    );
    let (created_1, changed_1, created_2) = (&events[0].0, &events[1].0, &events[2].0);
    assert_eq!(events[0].2, events[1].2, "one row, one ordering key");

    // The gauge counts the table, per hook.
    let wanted = format!("walhook_parked_waiting{{webhook_id=\"{good}\"}} 3");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let text = metrics_text(port).await;
        if text.contains(&wanted) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {wanted:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // list
    let out = walhook_async(&h.config_path, &["parked", "list", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let of = |id: i32| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["webhook_id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(of(good)["count"], 3, "{list}");
    assert_eq!(of(good)["reasons"]["TooManyErrors"], 3, "{list}");
    assert!(of(good)["oldest"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(of(bad)["count"], 3, "{list}");
    let out = walhook_async(
        &h.config_path,
        &["parked", "list", "--webhook", &good.to_string()],
    )
    .await;
    let table = stdout(&out);
    assert!(table.contains("TooManyErrors 3"), "{table}");
    assert!(!table.contains(&format!("\n{bad} ")), "{table}");

    // list --events: the events themselves, in commit order, paged.
    let page = |skip: &str| {
        let config = h.config_path.clone();
        let id = good.to_string();
        let skip = skip.to_owned();
        async move {
            let args = [
                "parked",
                "list",
                "--webhook",
                &id,
                "--events",
                "--limit",
                "2",
                "--skip",
                &skip,
            ];
            walhook_async(&config, &args).await
        }
    };
    let first = stdout(&page("0").await);
    let lines: Vec<&str> = first.lines().collect();
    assert!(
        lines[0].starts_with("PARKED") && lines[0].contains("EVENTID"),
        "{first}"
    );
    assert!(
        lines[1].contains(created_1.as_str()) && lines[2].contains(changed_1.as_str()),
        "{first}"
    );
    assert!(
        lines[1].contains("contact.created")
            && lines[1].contains("public.contact (1)")
            && lines[1].contains("TooManyErrors"),
        "the row key is shown readable, with the event and reason: {first}"
    );
    assert!(
        first.contains("--skip 2"),
        "the next page is named: {first}"
    );
    let second = stdout(&page("2").await);
    assert!(
        second.contains(created_2.as_str()) && !second.contains(created_1.as_str()),
        "{second}"
    );
    let out = walhook_async(
        &h.config_path,
        &[
            "parked",
            "list",
            "--webhook",
            &good.to_string(),
            "--events",
            "--json",
        ],
    )
    .await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [created_1.as_str(), changed_1.as_str(), created_2.as_str()]
    );

    // show
    let out = walhook_async(&h.config_path, &["parked", "show", changed_1, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["webhook_id"], good);
    let human = stdout(&walhook_async(&h.config_path, &["parked", "show", changed_1]).await);
    assert!(
        human.contains("public.contact (1)") && !human.contains("\\x1f"),
        "{human}"
    );
    assert_eq!(shown["body"]["EventId"], changed_1.as_str());
    assert_eq!(shown["body"]["FieldValues"]["name"], "b");
    assert_eq!(shown["attempts"], 0);
    let out = walhook_async(
        &h.config_path,
        &["parked", "show", "00000000-0000-0000-0000-000000000000"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is not parked"), "{}", text(&out));

    // redeliver: the row's later event is refused while its earlier one waits.
    let out = walhook_async(&h.config_path, &["parked", "redeliver", changed_1]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("the first being EventId {created_1}")),
        "{}",
        text(&out)
    );
    assert!(receiver.requests().is_empty());
    // Another row's event does not wait for row 1.
    let out = walhook_async(&h.config_path, &["parked", "redeliver", created_2]).await;
    assert!(out.status.success(), "{}", text(&out));
    for id in [created_1, changed_1] {
        let out = walhook_async(&h.config_path, &["parked", "redeliver", id]).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let got = receiver.requests_to("/good");
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or(""))
        .collect();
    assert_eq!(ids, [created_2.as_str(), created_1, changed_1]);
    for r in &got {
        assert_eq!(r.json()["EventId"], r.header("webhook-id").unwrap());
        assert!(
            verify_standard_webhooks(
                secret,
                r.header("webhook-id").unwrap(),
                r.header("webhook-timestamp").unwrap(),
                &r.body,
                r.header("webhook-signature").unwrap(),
            ),
            "a redelivered event is signed with the hook's secret"
        );
    }
    assert!(parked(&h, good).await.is_empty());
    let usage = h.usage(good).await;
    assert_eq!((usage.total_calls, usage.total_errors), (3, 0));

    // redeliver to a failing target: kept, with the attempt recorded.
    let bad_events = parked(&h, bad).await;
    let out = walhook_async(&h.config_path, &["parked", "redeliver", &bad_events[0].0]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("stays parked"), "{}", text(&out));
    let out = walhook_async(
        &h.config_path,
        &["parked", "show", &bad_events[0].0, "--json"],
    )
    .await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["attempts"], 1);
    assert!(
        shown["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{shown}"
    );
    assert_eq!(h.usage(bad).await.total_errors, 1);

    // discard: one, then a hook's before a time.
    let out = walhook_async(&h.config_path, &["parked", "discard", &bad_events[2].0]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("discarded 1 parked event"),
        "{}",
        text(&out)
    );
    let bad_arg = bad.to_string();
    // Before a time no event was parked at, then after all of them.
    for (before, discarded, left) in [
        ("2000-01-01T00:00:00Z", 0, 2),
        ("2999-01-01T00:00:00Z", 2, 0),
    ] {
        let out = walhook_async(
            &h.config_path,
            &[
                "parked",
                "discard",
                "--webhook",
                &bad_arg,
                "--before",
                before,
            ],
        )
        .await;
        assert!(
            stdout(&out).contains(&format!("discarded {discarded} parked event(s)")),
            "{}",
            text(&out)
        );
        assert_eq!(parked(&h, bad).await.len(), left);
    }
    let out = walhook_async(&h.config_path, &["parked", "discard", "--before", "1h"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The gauge follows the table, also after another process emptied it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let text = metrics_text(port).await;
        if !text.contains("walhook_parked_waiting{") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.stop_daemon();
}

/// `redeliver` keeps every order the replayer keeps: an event waits for an
/// earlier TRUNCATE of any row, and an UPDATE that moved its row to a new
/// key waits for the earlier events of the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_waits_for_an_earlier_truncate_and_for_a_moved_rows_old_key() {
    let mut h = Harness::start(HOST, "").await;
    let receiver = Receiver::start().await.unwrap();
    let hook = h.add_hook("contact.*", &receiver.url("/r"), None).await;
    h.db.execute(
        "UPDATE walhook.webhook SET state = 3 WHERE webhook_id = $1",
        &[&hook],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact VALUES (1, 'a');\
         INSERT INTO contact VALUES (2, 'b');\
         UPDATE contact SET contact_id = 3 WHERE contact_id = 2;\
         TRUNCATE contact;\
         INSERT INTO contact VALUES (4, 'c');",
    )
    .await
    .unwrap();
    h.wait_caught_up("the events to be parked").await;
    let events = parked(&h, hook).await;
    let names: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "contact.created",
            "contact.created",
            "contact.changed",
            "contact.truncated",
            "contact.created"
        ]
    );
    let id = |n: usize| events[n].0.clone();

    // After the TRUNCATE: refused while it waits, naming it.
    let out = walhook_async(&h.config_path, &["parked", "redeliver", &id(4)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("the first being EventId {}", id(3))),
        "{}",
        text(&out)
    );
    // The UPDATE that moved row 2 to 3 waits for row 2's INSERT, though
    // the keys differ.
    let out = walhook_async(&h.config_path, &["parked", "redeliver", &id(2)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("the first being EventId {}", id(1))),
        "{}",
        text(&out)
    );
    // The TRUNCATE waits for every earlier event.
    let out = walhook_async(&h.config_path, &["parked", "redeliver", &id(3)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(receiver.requests().is_empty());
    // In commit order, each goes.
    for n in 0..5 {
        let out = walhook_async(&h.config_path, &["parked", "redeliver", &id(n)]).await;
        assert!(out.status.success(), "event {n}: {}", text(&out));
    }
    let got: Vec<String> = receiver
        .requests_to("/r")
        .iter()
        .map(|r| r.json()["EventId"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(got, (0..5).map(id).collect::<Vec<_>>());
    assert!(h.stop_daemon().success());
}
