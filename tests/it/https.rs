//! HTTPS targets end to end: walhook's real binary delivering to a loopback
//! HTTPS receiver whose certificate comes from a CA made in the test.
//! Trust through `delivery.ca_file`, certificate failures in words that
//! name the host and the cause, and client certificates.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walhook_lab::receiver::{ReceivedRequest, Receiver};
use walhook_lab::tls::ServerTls;

use crate::common::*;

const CONTACT: &str = "
CREATE TABLE contact (
    contact_id serial PRIMARY KEY,
    name text NOT NULL
);
";

const WAIT: Duration = Duration::from_secs(30);

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const UNKNOWN_AUTHORITY: &str = "TLS: the certificate of localhost is signed by an unknown \
                                 authority (add its CA to delivery.ca_file)";

/// Files a test's config names, in their own directory.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A path as a TOML string.
fn toml(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// The harness's config with the lines that mention `key` left out, as a
/// new file beside it.
fn config_without(h: &Harness, key: &str, name: &str) -> PathBuf {
    let text: String = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .lines()
        .filter(|line| !line.contains(key))
        .map(|line| format!("{line}\n"))
        .collect();
    let path = h.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Both signatures of a delivered request check out with the test's own
/// HMAC code, as over plain HTTP.
fn assert_signed(r: &ReceivedRequest) {
    let id = r.json()["EventId"].as_str().unwrap().to_owned();
    assert_eq!(r.header("webhook-id"), Some(id.as_str()));
    assert_eq!(
        r.header("x-superoffice-signature").unwrap(),
        expected_superoffice_signature(SECRET, &r.body)
    );
    let ts = r.header("webhook-timestamp").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts.parse::<u64>().unwrap()) < 120);
    assert!(verify_standard_webhooks(
        SECRET,
        &id,
        ts,
        &r.body,
        r.header("webhook-signature").unwrap()
    ));
}

fn events(requests: &[ReceivedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.json()["Event"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_delivery_trusts_the_ca_file_and_both_signatures_verify() {
    let ca = Ca::new("walhook https test CA");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem());
    let (cert, key) = ca.server_cert(&["localhost", "127.0.0.1"]);
    let receiver = Receiver::start_https(ServerTls::new(&cert, &key).unwrap())
        .await
        .unwrap();
    let mut h = Harness::start(CONTACT, &format!("ca_file = {}", toml(&ca_file))).await;
    let hook = h
        .add_hook("contact.*", &receiver.url("/crm"), Some(SECRET))
        .await;
    assert!(receiver.url("/crm").starts_with("https://localhost:"));

    // Without the CA the test request fails, and says why in words.
    let no_ca = config_without(&h, "ca_file", "no-ca.toml");
    let out = walhook_async(&no_ca, &["webhook", "test", &hook.to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).contains(UNKNOWN_AUTHORITY), "{}", text(&out));
    assert!(receiver.requests().is_empty());

    // With it, the same request goes through.
    let out = walhook_async(&h.config_path, &["webhook", "test", &hook.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("200 OK"), "{}", text(&out));

    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact (name) VALUES ('Acme');
         UPDATE contact SET name = 'Acme Ltd' WHERE contact_id = 1;",
    )
    .await
    .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    assert_eq!(
        events(&got),
        ["test", "contact.created", "contact.changed"],
        "daemon log:\n{}",
        h.daemon_log()
    );
    for r in &got {
        assert_signed(r);
        assert_eq!(r.client_certificate, None);
    }
    let usage = h.wait_usage(hook, |u| u.total_calls == 2).await;
    assert_eq!(usage.total_errors, 0, "{usage:?}");
}

/// Each certificate failure names the host and the cause, in
/// `webhook_usage.last_error` and in `walhook webhook test`: a CA that is
/// not trusted, a certificate for another name, an expired certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_certificate_failures_name_the_host_and_the_cause() {
    let trusted = Ca::new("trusted test CA");
    let unknown = Ca::new("a CA nobody trusts");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &trusted.pem());
    let https = |(cert, key): (String, String)| async move {
        Receiver::start_https(ServerTls::new(&cert, &key).unwrap())
            .await
            .unwrap()
    };
    let untrusted = https(unknown.server_cert(&["localhost"])).await;
    let other_name = https(trusted.server_cert(&["elsewhere.example"])).await;
    let expired = https(trusted.expired_server_cert(&["localhost"])).await;

    let mut h = Harness::start(CONTACT, &format!("ca_file = {}", toml(&ca_file))).await;
    let cases = [
        (&untrusted, UNKNOWN_AUTHORITY.to_owned()),
        (
            &other_name,
            "TLS: the certificate of localhost is for another name (elsewhere.example)".to_owned(),
        ),
        (
            &expired,
            "TLS: the certificate of localhost expired on 2021-01-01T00:00:00Z (the target must \
             renew it)"
                .to_owned(),
        ),
    ];
    let mut hooks = Vec::new();
    for (receiver, _) in &cases {
        hooks.push(
            h.add_hook("contact.*", &receiver.url("/hook"), Some(SECRET))
                .await,
        );
    }
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('Acme')", &[])
        .await
        .unwrap();

    for ((receiver, words), hook) in cases.iter().zip(&hooks) {
        let usage = h
            .wait_usage(*hook, |u| u.last_error.is_some() && u.total_errors >= 1)
            .await;
        let last_error = usage.last_error.unwrap();
        assert!(last_error.starts_with(words.as_str()), "{last_error}");

        let out = walhook_async(&h.config_path, &["webhook", "test", &hook.to_string()]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(stdout(&out).contains(words.as_str()), "{}", text(&out));
        assert!(receiver.requests().is_empty());
    }
}

/// A receiver that requires client certificates accepts walhook's (the
/// very certificate of `delivery.client_cert_file` arrives) and refuses a
/// walhook without one; `walhook check` reports a key file others can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_client_certificate_is_presented_and_required() {
    use std::os::unix::fs::PermissionsExt;

    let ca = Ca::new("server test CA");
    let client_ca = Ca::new("client test CA");
    let client = client_ca.client_cert("walhook");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem());
    let cert_file = files.write("client.pem", &client.cert_pem);
    let key_file = files.write("client.key", &client.key_pem);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (cert, key) = ca.server_cert(&["localhost"]);
    let receiver = Receiver::start_https(
        ServerTls::requiring_client_certificates(&cert, &key, &client_ca.pem()).unwrap(),
    )
    .await
    .unwrap();

    let mut h = Harness::start(
        CONTACT,
        &format!(
            "ca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n",
            toml(&ca_file),
            toml(&cert_file),
            toml(&key_file)
        ),
    )
    .await;
    let hook = h
        .add_hook("contact.*", &receiver.url("/hook"), Some(SECRET))
        .await;

    let out = walhook_async(&h.config_path, &["check"]).await;
    let printed = stdout(&out);
    assert!(
        printed.contains("OK    HTTPS targets: trusting")
            && printed.contains("client certificate")
            && !printed.contains("client_key_file"),
        "{}",
        text(&out)
    );

    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('Acme')", &[])
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(
        events(&got),
        ["contact.created"],
        "daemon log:\n{}",
        h.daemon_log()
    );
    assert_eq!(got[0].client_certificate.as_deref(), Some(&client.der[..]));
    assert_signed(&got[0]);
    assert!(receiver.handshake_failures().is_empty());

    // Without a client certificate the receiver refuses the handshake, and
    // walhook says what the target wants. Over HTTP/1.1: with TLS 1.3 the
    // refusal arrives after the client's side of the handshake is done,
    // and over h2 the HTTP client reports only that the connection was not
    // ready, without the alert.
    let without = config_without(&h, "client_", "no-client-cert.toml");
    let mut text_without = std::fs::read_to_string(&without).unwrap();
    text_without.push_str("http_version = \"http1\"\n");
    std::fs::write(&without, text_without).unwrap();
    let out = walhook_async(&without, &["webhook", "test", &hook.to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "TLS: localhost requires a client certificate (set delivery.client_cert_file and \
             delivery.client_key_file)"
        ),
        "{}",
        text(&out)
    );
    assert!(!receiver.wait_handshake_failure(WAIT).await.is_empty());
    assert_eq!(receiver.requests().len(), 1);

    // A key file others can read, and a file that cannot be read, are
    // problems `walhook check` names with the fix.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = walhook_async(&h.config_path, &["check"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let printed = stdout(&out);
    assert!(
        printed
            .lines()
            .any(|l| l.starts_with("FAIL  key delivery.client_key_file")
                && l.contains(&*key_file.to_string_lossy())
                && l.contains("chmod 600")),
        "{printed}"
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let missing = files.0.path().join("missing.pem");
    let text_config = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace(&toml(&ca_file), &toml(&missing));
    let broken = files.write("broken.toml", &text_config);
    let out = walhook_async(&broken, &["check"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("FAIL  key delivery.ca_file: cannot read")
                && l.contains(&*missing.to_string_lossy())),
        "{}",
        text(&out)
    );
}
