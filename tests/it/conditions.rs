//! Hook conditions and column lists (`walhook webhook condition|columns`)
//! against a real stream: a condition's true, false and NULL; old values
//! under REPLICA IDENTITY FULL and DEFAULT; a construct outside the subset
//! refused by the command, by `check` and in a row; and a column a hook
//! may not see absent from its live, parked, replayed and backfilled
//! events, while another hook sees it.

use std::time::Duration;

use serde_json::Value;
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

const CRM: &str = "
CREATE TABLE deal (
    deal_id serial PRIMARY KEY,
    status text NOT NULL,
    amount numeric
);
ALTER TABLE deal REPLICA IDENTITY FULL;
CREATE TABLE lead (
    lead_id serial PRIMARY KEY,
    status text NOT NULL
);
CREATE TABLE person (
    person_id serial PRIMARY KEY,
    name text NOT NULL,
    ssn text
);
";

fn run_ok(h: &Harness, args: &[&str]) -> Output {
    let out = h.walhook(args);
    assert!(out.status.success(), "walhook {args:?}: {}", text(&out));
    out
}

use std::process::Output;

fn field(r: &ReceivedRequest, name: &str) -> Value {
    r.json()["FieldValues"][name].clone()
}

/// `new.amount >= 1000` sends the row whose amount is 5000, not the one
/// of 10 (false) nor the one without an amount (NULL), while a hook
/// without a condition gets all three; `--clear` sends every row again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_gets_only_rows_its_condition_is_true_for() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let big = h
        .add_hook("deal.created", &receiver.url("/big"), None)
        .await;
    h.add_hook("deal.created", &receiver.url("/all"), None)
        .await;
    h.start_daemon().await;
    let out = run_ok(
        &h,
        &[
            "webhook",
            "condition",
            &big.to_string(),
            "--where",
            "new.amount >= 1000",
        ],
    );
    assert!(
        stdout(&out).contains("new.amount >= 1000"),
        "{}",
        text(&out)
    );

    h.db.batch_execute(
        "INSERT INTO deal (status, amount) VALUES ('open', 5000);\
         INSERT INTO deal (status, amount) VALUES ('open', 10);\
         INSERT INTO deal (status, amount) VALUES ('open', NULL);",
    )
    .await
    .unwrap();
    h.wait_caught_up("the three deals to be settled").await;
    assert_eq!(receiver.requests_to("/all").len(), 3);
    let big_requests = receiver.requests_to("/big");
    assert_eq!(big_requests.len(), 1, "{big_requests:?}");
    assert_eq!(field(&big_requests[0], "amount"), serde_json::json!(5000));

    run_ok(&h, &["webhook", "condition", &big.to_string(), "--clear"]);
    h.db.batch_execute("INSERT INTO deal (status, amount) VALUES ('open', 1)")
        .await
        .unwrap();
    receiver
        .wait_until(WAIT, |_| receiver.requests_to("/big").len() >= 2)
        .await;
    assert_eq!(
        field(&receiver.requests_to("/big")[1], "amount"),
        serde_json::json!(1)
    );
}

/// `old.status` is the old row under REPLICA IDENTITY FULL (deal): the
/// update into 'won' is sent, the one from 'won' to 'won' is not. Under
/// DEFAULT (lead) the server does not send old.status: the command warns
/// naming the table, and the event is not sent, with a warning in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_reads_old_values_where_the_server_sends_them() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let won = h
        .add_hook("deal.changed, lead.changed", &receiver.url("/won"), None)
        .await;
    h.start_daemon().await;
    let out = run_ok(
        &h,
        &[
            "webhook",
            "condition",
            &won.to_string(),
            "--where",
            "new.status = 'won' and old.status is distinct from 'won'",
        ],
    );
    let warning = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        warning.contains("old.status")
            && warning.contains("public.lead")
            && !warning.contains("public.deal"),
        "{warning}"
    );

    h.db.batch_execute(
        "INSERT INTO deal (status) VALUES ('open');\
         INSERT INTO lead (status) VALUES ('open');\
         UPDATE deal SET status = 'won';\
         UPDATE deal SET status = 'won', amount = 1;\
         UPDATE lead SET status = 'won';",
    )
    .await
    .unwrap();
    h.wait_caught_up("the updates to be settled").await;
    let got = receiver.requests_to("/won");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].json()["Event"], "deal.changed");
    assert_eq!(field(&got[0], "amount"), Value::Null);
    h.wait_log("old.status was not sent by the server").await;
}

/// A function call is outside the subset: the command refuses it naming
/// it and stores nothing; written into webhook_control directly, `check`
/// names the hook and the construct, and the daemon sends that hook
/// nothing (another hook still gets the row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_construct_outside_the_subset_is_refused_everywhere() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let hook = h
        .add_hook("deal.created", &receiver.url("/bad"), None)
        .await;
    h.add_hook("deal.created", &receiver.url("/other"), None)
        .await;

    let out = h.walhook(&[
        "webhook",
        "condition",
        &hook.to_string(),
        "--where",
        "lower(new.status) = 'won'",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("the function lower"), "{}", text(&out));
    let stored: i64 =
        h.db.query_one("SELECT count(*) FROM walhook.webhook_control", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(stored, 0);

    h.db.execute(
        "INSERT INTO walhook.webhook_control (webhook_id, condition) VALUES ($1, 'lower(new.status) = ''won''')",
        &[&hook],
    )
    .await
    .unwrap();
    let check = text(&h.walhook(&["check"]));
    assert!(
        check.contains(&format!("webhook_id {hook} receives no events"))
            && check.contains("the function lower"),
        "{check}"
    );

    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO deal (status) VALUES ('won')")
        .await
        .unwrap();
    h.wait_caught_up("the deal to be settled").await;
    assert_eq!(receiver.requests_to("/other").len(), 1);
    assert!(receiver.requests_to("/bad").is_empty());
    h.wait_log("the function lower").await;
}

/// `--except ssn`: the hook's live event, its parked copy (while paused),
/// the replayed one and a backfilled one carry no ssn, but the key and
/// the other columns; another hook of the same changes sees ssn in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_column_never_reaches_the_hook() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let marketing = h
        .add_hook("person.*", &receiver.url("/marketing"), None)
        .await;
    h.add_hook("person.*", &receiver.url("/hr"), None).await;
    h.start_daemon().await;
    let id = marketing.to_string();
    run_ok(&h, &["webhook", "columns", &id, "--except", "ssn"]);

    // Live.
    h.db.batch_execute("INSERT INTO person (name, ssn) VALUES ('live', '111')")
        .await
        .unwrap();
    receiver
        .wait_until(WAIT, |_| {
            receiver.requests_to("/marketing").len() == 1 && receiver.requests_to("/hr").len() == 1
        })
        .await;

    // Parked while paused, then replayed.
    run_ok(&h, &["webhook", "pause", &id]);
    h.db.batch_execute("INSERT INTO person (name, ssn) VALUES ('parked', '222')")
        .await
        .unwrap();
    h.wait_caught_up("the change to be parked").await;
    assert_eq!(h.parked_count(marketing).await, 1);
    let parked: String =
        h.db.query_one(
            "SELECT body FROM walhook.parked_event WHERE webhook_id = $1",
            &[&marketing],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        parked.contains("parked") && !parked.contains("ssn") && !parked.contains("222"),
        "{parked}"
    );
    run_ok(&h, &["webhook", "resume", &id]);
    receiver
        .wait_until(WAIT, |_| {
            receiver.requests_to("/marketing").len() == 2 && receiver.requests_to("/hr").len() == 2
        })
        .await;

    // Backfilled.
    let out = run_ok(&h, &["backfill", "--webhook", &id, "person"]);
    assert!(stdout(&out).starts_with("backfill"), "{}", text(&out));
    receiver
        .wait_until(WAIT, |_| receiver.requests_to("/marketing").len() == 4)
        .await;

    let marketing_bodies: Vec<Value> = receiver
        .requests_to("/marketing")
        .iter()
        .map(|r| r.json())
        .collect();
    for body in &marketing_bodies {
        let fields = body["FieldValues"].as_object().unwrap();
        assert!(!fields.contains_key("ssn"), "{body}");
        assert!(
            fields.contains_key("person_id") && fields.contains_key("name"),
            "{body}"
        );
        assert!(!body.to_string().contains("ssn"), "{body}");
    }
    let names: Vec<&str> = marketing_bodies
        .iter()
        .map(|b| b["FieldValues"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names[..2], ["live", "parked"]);
    assert!(marketing_bodies[2..]
        .iter()
        .all(|b| b["Event"] == "person.created"));
    for r in receiver.requests_to("/hr") {
        assert!(r.json()["FieldValues"]["ssn"].is_string(), "{}", r.json());
    }
}
