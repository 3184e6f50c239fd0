//! End to end: row changes in a real PostgreSQL become signed POSTs to a
//! real loopback receiver, through walhook's real binary.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const CRM: &str = "
CREATE TABLE contact (
    contact_id serial PRIMARY KEY,
    name text NOT NULL,
    department text,
    updated_associate_id integer NOT NULL DEFAULT 0
);
CREATE TABLE person (
    person_id serial PRIMARY KEY,
    firstname text
);
CREATE TABLE noise (id serial PRIMARY KEY, payload text);
";

const WAIT: Duration = Duration::from_secs(30);

fn events(requests: &[ReceivedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.json()["Event"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_become_signed_requests_with_the_contract_body() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hook = h
        .add_hook("contact.*", &receiver.url("/crm"), Some(secret))
        .await;
    h.db.execute(
        "UPDATE walhook.webhook SET headers = '{\"X-Tenant\": \"t1\", \"X-SuperOffice-Event\": \"forged\"}', \
                properties = '{\"region\": \"north\"}' WHERE webhook_id = $1",
        &[&hook],
    )
    .await
    .unwrap();
    h.start_daemon().await;

    h.db.batch_execute(
        "INSERT INTO contact (name, department, updated_associate_id) VALUES ('Acme', 'Sales', 7);
         UPDATE contact SET department = 'Support', updated_associate_id = 9 WHERE contact_id = 1;
         DELETE FROM contact WHERE contact_id = 1;",
    )
    .await
    .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    assert_eq!(
        events(&got),
        ["contact.created", "contact.changed", "contact.deleted"],
        "daemon log:\n{}",
        h.daemon_log()
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut ids = Vec::new();
    for r in &got {
        let body = r.json();
        let id = body["EventId"].as_str().unwrap().to_owned();
        assert_eq!(r.header("x-superoffice-eventid"), Some(id.as_str()));
        assert_eq!(r.header("webhook-id"), Some(id.as_str()));
        assert_eq!(r.header("x-superoffice-event"), body["Event"].as_str());
        assert_eq!(r.header("x-superoffice-retry"), Some("0"));
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert!(r.header("user-agent").unwrap().starts_with("walhook/"));
        assert_eq!(r.header("x-tenant"), Some("t1"));
        // Signatures, checked with this test's own HMAC code.
        assert_eq!(
            r.header("x-superoffice-signature").unwrap(),
            expected_superoffice_signature(secret, &r.body)
        );
        let ts = r.header("webhook-timestamp").unwrap();
        assert!(now.abs_diff(ts.parse::<u64>().unwrap()) < 120);
        assert!(verify_standard_webhooks(
            secret,
            &id,
            ts,
            &r.body,
            r.header("webhook-signature").unwrap()
        ));
        assert_eq!(body["Entity"], "contact");
        assert_eq!(body["PrimaryKey"], 1);
        assert_eq!(body["ContextIdentifier"], "Default");
        assert_eq!(body["WebhookName"], "test hook");
        assert_eq!(body["Table"], "public.contact");
        assert_eq!(body["Properties"], json!({"region": "north"}));
        assert!(body["Timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(body["Lsn"].as_str().unwrap().contains('/'));
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every change has its own EventId");

    let created = got[0].json();
    assert_eq!(
        created["FieldValues"],
        json!({"contact_id": 1, "name": "Acme", "department": "Sales", "updated_associate_id": 7})
    );
    assert_eq!(
        created["Changes"],
        json!(["contact_id", "name", "department", "updated_associate_id"])
    );
    assert_eq!(created["ChangedByAssociateId"], 7);
    // The contract's field order.
    let keys: Vec<String> = serde_json::from_slice::<serde_json::Map<String, Value>>(&got[0].body)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        [
            "EventId",
            "Timestamp",
            "Changes",
            "ChangesExact",
            "Event",
            "PrimaryKey",
            "Entity",
            "ContextIdentifier",
            "ChangedByAssociateId",
            "WebhookName",
            "FieldValues",
            "MissingColumns",
            "Properties",
            "Table",
            "Lsn"
        ]
    );

    let changed = got[1].json();
    assert_eq!(changed["FieldValues"]["department"], "Support");
    assert_eq!(changed["ChangedByAssociateId"], 9);
    assert_eq!(changed["ChangesExact"], false);

    let deleted = got[2].json();
    assert_eq!(deleted["Values"], json!({"contact_id": 1}));
    assert_eq!(deleted["Changes"], json!([]));

    assert!(h.stop_daemon().success());
    let row =
        h.db.query_one(
            "SELECT total_calls, total_errors, consecutive_errors, last_success IS NOT NULL \
               FROM walhook.webhook_usage WHERE webhook_id = $1",
            &[&hook],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    assert_eq!(row.get::<_, i64>(1), 0);
    assert_eq!(row.get::<_, i32>(2), 0);
    assert!(row.get::<_, bool>(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_states_bad_rows_and_hooks_added_mid_stream() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("contact.*", &receiver.url("/entity"), None)
        .await;
    h.add_hook("*.deleted", &receiver.url("/deletes"), None)
        .await;
    h.add_hook("*", &receiver.url("/all"), None).await;
    let stopped = h
        .add_hook("contact.created", &receiver.url("/stopped"), None)
        .await;
    h.db.execute(
        "UPDATE walhook.webhook SET state = 2 WHERE webhook_id = $1",
        &[&stopped],
    )
    .await
    .unwrap();
    // A bad row: headers that are not an object. It is skipped; the rest work.
    let bad = h.add_hook("*", &receiver.url("/bad"), None).await;
    h.db.execute(
        "UPDATE walhook.webhook SET headers = '[1, 2]' WHERE webhook_id = $1",
        &[&bad],
    )
    .await
    .unwrap();
    h.start_daemon().await;

    h.db.batch_execute("INSERT INTO contact (name) VALUES ('first')")
        .await
        .unwrap();
    // A hook inserted now gets the changes committed after it, none before.
    h.add_hook("*", &receiver.url("/late"), None).await;
    h.db.batch_execute(
        "INSERT INTO contact (name) VALUES ('second');
         UPDATE contact SET name = 'first!' WHERE contact_id = 1;
         DELETE FROM contact WHERE contact_id = 2;
         INSERT INTO person (firstname) VALUES ('Ada');",
    )
    .await
    .unwrap();
    receiver
        .wait_until(WAIT, |r| {
            r.iter().filter(|x| x.path == "/all").count() >= 5
                && r.iter().filter(|x| x.path == "/late").count() >= 4
        })
        .await;
    // Anything that was going to arrive wrongly has arrived by now.
    h.wait_caught_up("the daemon to pass every change").await;

    // Rows go concurrently, so only events of one row keep their order:
    // compare the sets here, per-row order is checked elsewhere.
    let by_path = |p: &str| {
        let mut e = events(&receiver.requests_to(p));
        e.sort();
        e
    };
    assert_eq!(
        by_path("/entity"),
        [
            "contact.changed",
            "contact.created",
            "contact.created",
            "contact.deleted"
        ]
    );
    assert_eq!(by_path("/deletes"), ["contact.deleted"]);
    assert_eq!(
        by_path("/all"),
        [
            "contact.changed",
            "contact.created",
            "contact.created",
            "contact.deleted",
            "person.created"
        ]
    );
    assert_eq!(
        by_path("/late"),
        [
            "contact.changed",
            "contact.created",
            "contact.deleted",
            "person.created"
        ]
    );
    let late_created: Vec<Value> = receiver
        .requests_to("/late")
        .iter()
        .map(|r| r.json())
        .filter(|b| b["Event"] == "contact.created")
        .map(|b| b["PrimaryKey"].clone())
        .collect();
    assert_eq!(
        late_created,
        [json!(2)],
        "the late hook must not see contact 1's creation"
    );
    assert!(
        by_path("/stopped").is_empty(),
        "a Stopped hook gets nothing"
    );
    assert!(by_path("/bad").is_empty());
    let log = h.daemon_log();
    assert!(
        log.contains(&format!("webhook_id={bad}")) && log.contains("headers is not a JSON object"),
        "the bad row is named in the log:\n{log}"
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_stopped_or_killed_are_delivered() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("contact.created", &receiver.url("/c"), None)
        .await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('before stop')")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    assert!(h.stop_daemon().success(), "SIGTERM gives exit 0");

    // Written while walhook is down.
    for i in 0..20 {
        h.db.execute(
            "INSERT INTO contact (name) VALUES ($1)",
            &[&format!("down {i}")],
        )
        .await
        .unwrap();
    }
    h.start_daemon().await;
    receiver.wait_until(WAIT, |r| r.len() >= 21).await;

    // A sustained workload with a kill -9 in the middle of it.
    let writer = {
        let db = h.cluster.client("postgres").await.unwrap();
        tokio::spawn(async move {
            for i in 0..300 {
                db.execute(
                    "INSERT INTO contact (name) VALUES ($1)",
                    &[&format!("load {i}")],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    receiver.wait_until(WAIT, |r| r.len() >= 80).await;
    h.kill_daemon();
    h.wait_slot_released().await;
    h.start_daemon().await;
    writer.await.unwrap();
    let total = 1 + 20 + 300;
    let got = receiver
        .wait_until(WAIT, |r| {
            let keys: std::collections::HashSet<_> = r
                .iter()
                .map(|x| x.json()["PrimaryKey"].to_string())
                .collect();
            keys.len() >= total
        })
        .await;

    let mut by_key: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in &got {
        let body = r.json();
        by_key
            .entry(body["PrimaryKey"].as_i64().unwrap())
            .or_default()
            .push(body["EventId"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        by_key.keys().copied().collect::<Vec<_>>(),
        (1..=total as i64).collect::<Vec<_>>(),
        "every committed row arrives; daemon log:\n{}",
        h.daemon_log()
    );
    let mut duplicates = 0;
    for (key, ids) in &by_key {
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "repeats of row {key} carry the same EventId: {ids:?}"
        );
        duplicates += ids.len() - 1;
    }
    eprintln!("kill -9 test: {total} rows, {duplicates} duplicate deliveries");
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_writes_never_pin_wal_and_setup_is_idempotent() {
    let mut h = Harness::start(CRM, "[capture]\nexclude = [\"public.noise\"]\n").await;

    let dry = h.walhook(&["setup", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("-- nothing to change"),
        "{}",
        text(&dry)
    );
    // A new table: the dry run shows the publication change, and runs nothing.
    h.db.batch_execute("CREATE TABLE extra (id int PRIMARY KEY)")
        .await
        .unwrap();
    let dry = h.walhook(&["setup", "--dry-run"]);
    let sql = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(
        sql.contains("ALTER PUBLICATION \"walhook\" SET TABLE"),
        "{sql}"
    );
    assert!(sql.contains("\"public\".\"extra\""), "{sql}");
    h.db.batch_execute("DROP TABLE extra").await.unwrap();
    let again = h.walhook(&["setup"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing changed"),
        "{}",
        text(&again)
    );
    let published: Vec<String> =
        h.db.query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
              WHERE pubname = 'walhook' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        published,
        [
            "public.contact",
            "public.person",
            "walhook.webhook",
            "walhook.webhook_control"
        ]
    );

    h.start_daemon().await;
    let start = h.confirmed().await;
    h.db.batch_execute(
        "INSERT INTO noise (payload) SELECT md5(i::text) FROM generate_series(1, 20000) i",
    )
    .await
    .unwrap();
    let end = h.current_lsn().await;
    assert!(end > start);
    h.wait_confirmed("the slot to pass writes to an unpublished table", end, WAIT)
        .await;
    assert!(h.stop_daemon().success());

    // check passes on a set-up database.
    let check = h.walhook(&["check"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("OK    wal_level is logical"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_values_equal_postgres_to_jsonb() {
    let table = "
    CREATE TABLE typed (
        id int PRIMARY KEY,
        i2 int2, i4 int4, i8 int8, num numeric(40, 12), f4 float4, f8 float8,
        b bool, t text, vc varchar(20), ch char(5), j json, jb jsonb, u uuid,
        d date, ts timestamp, tstz timestamptz, by bytea, tm time, iv interval,
        ia int4[], ta text[], na numeric[], tza timestamptz[], jba jsonb[], ba bool[],
        m2 int4[][], da date[], inet_v inet
    );";
    let mut h = Harness::start(table, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("typed.*", &receiver.url("/t"), None).await;
    h.start_daemon().await;
    h.db.batch_execute(
        "SET TimeZone = 'Europe/Oslo';
        INSERT INTO typed VALUES
        (1, -32768, 2147483647, -9223372036854775808, 12345678901234567890.123456789012,
         1.5, 0.1, true, 'tekst \"quoted\" \\ back', 'vc', 'ab', '{\"a\": [1, 2.50]}',
         '{\"b\": {\"c\": null}, \"a\": 1}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '2024-02-29', '2024-01-01 08:00:00.123456', '2024-06-01 10:00:00.5+02',
         '\\x00ff10', '13:45:00', '1 year 2 mons 3 days 04:05:06',
         '{1,NULL,3}', '{plain,\"with space\",\"q\\\"uote\",NULL,\"NULL\"}', '{1.10,NaN}',
         '{\"2024-01-01 00:00:00+00\"}', ARRAY['{\"k\": 1}'::jsonb], '{t,f}',
         '{{1,2},{3,4}}', '[0:1]={2024-01-01,2024-12-31}', '192.168.0.1/24'),
        (2, NULL, NULL, NULL, 'NaN', 'NaN', 'Infinity', false, '', NULL, NULL, 'null',
         '[]', NULL, 'infinity', '-infinity', 'infinity', '\\x', NULL, NULL,
         '{}', '{}', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, 0, 0, 0, '-0.000000000001', '-Infinity', 1e300, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, '0044-03-15 BC', '0044-03-15 12:00:00 BC', '2000-01-01 00:00:00+00',
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await
    .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    assert_eq!(got.len(), 3, "daemon log:\n{}", h.daemon_log());
    h.db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let mut mismatches = Vec::new();
    for r in &got {
        let body = r.json();
        let id = body["PrimaryKey"]
            .as_i64()
            .unwrap_or_else(|| panic!("no PrimaryKey in {body}")) as i32;
        let expected: String =
            h.db.query_one(
                "SELECT to_jsonb(typed_row)::text FROM typed typed_row WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .try_get(0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let expected: Value = serde_json::from_str(&expected).unwrap();
        for (column, want) in expected
            .as_object()
            .unwrap_or_else(|| panic!("to_jsonb gave {expected}"))
        {
            let have = &body["FieldValues"][column];
            if !same_json(have, want) {
                mismatches.push(format!(
                    "row {id} column {column}: walhook {have}, to_jsonb {want}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(h.stop_daemon().success());
}
