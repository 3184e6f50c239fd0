//! A secret too short to sign (an empty `whsec_`, a few characters) is
//! refused wherever it can enter: a row is skipped naming its webhook_id,
//! and `webhook add` and `rotate-secret` say why.

use std::time::Duration;

use walhook_lab::receiver::Receiver;

use crate::common::*;

const CRM: &str = "CREATE TABLE contact (contact_id serial PRIMARY KEY, name text NOT NULL);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_too_short_to_sign_is_refused_everywhere() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let url = receiver.url("/h");
    for secret in ["whsec_", "short"] {
        let add = h.walhook(&[
            "webhook", "add", "--name", "weak", "--events", "*", "--url", &url, "--secret", secret,
        ]);
        assert!(!add.status.success(), "{secret:?} accepted: {}", text(&add));
        assert!(
            text(&add).contains("fewer than 16"),
            "{secret:?}: {}",
            text(&add)
        );
    }
    // Written by SQL: the row is skipped with a warning naming it, and
    // gets nothing, unsigned or forged.
    let weak = h.add_hook("contact.*", &url, Some("whsec_")).await;
    let good = h
        .add_hook(
            "contact.*",
            &url,
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        )
        .await;
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('a')", &[])
        .await
        .unwrap();
    let end = h.current_lsn().await;
    h.wait_confirmed("the slot to pass the change", end, Duration::from_secs(30))
        .await;
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert_eq!(got.len(), 1, "only the hook with a real secret");
    assert!(got[0].headers.contains_key("webhook-signature"));
    h.wait_log(&format!("webhook_id={weak}")).await;
    assert!(
        h.daemon_log().contains("fewer than 16"),
        "{}",
        h.daemon_log()
    );
    // rotate-secret refuses a short one from a file too.
    let file = h.dir.path().join("weak-secret");
    std::fs::write(&file, "whsec_AAAA\n").unwrap();
    let rotate = h.walhook(&[
        "webhook",
        "rotate-secret",
        &good.to_string(),
        "--secret-file",
        file.to_str().unwrap(),
    ]);
    assert!(!rotate.status.success(), "{}", text(&rotate));
    assert!(text(&rotate).contains("fewer than 16"), "{}", text(&rotate));
    assert!(h.stop_daemon().success());
}

/// `--secret-file -` reads the secret from standard input, so it is never
/// on the command line (where the process list shows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_can_come_from_standard_input() {
    use std::io::Write;
    let h = Harness::start(CRM, "").await;
    let secret = "whsec_c3RhbmRhcmQtaW5wdXQtc2VjcmV0LWtleQ==";
    let mut add = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&h.config_path)
        .args(["webhook", "add", "--name", "piped", "--events", "*"])
        .args(["--url", "http://127.0.0.1:9/h", "--secret-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stored: String =
        h.db.query_one(
            "SELECT secret FROM walhook.webhook WHERE name = 'piped'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, secret);
}
