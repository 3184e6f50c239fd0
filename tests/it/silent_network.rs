//! A network that goes silent (a partition: no close, no reset) is noticed
//! within `postgres.receive_timeout`: readiness turns, the log says what is
//! happening, and walhook leaves the silent connections behind for new ones
//! instead of waiting on them for ever. Every walhook connection goes
//! through a proxy whose silenced connections stay silent after the heal.

use std::time::{Duration, Instant};

use walhook_lab::partition::Partition;
use walhook_lab::receiver::Receiver;

use crate::common::*;

async fn readyz(port: u16) -> (u16, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn wait_readyz(port: u16, ready: bool, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, text) = readyz(port).await;
        if (status == 200) == ready {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still says {status} {text:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_is_noticed_and_left_behind() {
    let metrics_port = free_port();
    let mut h = Harness::start(
        "CREATE TABLE t (id int PRIMARY KEY);",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .await;
    let proxy = Partition::start(([127, 0, 0, 1], h.cluster.port()).into())
        .await
        .unwrap();
    // Every connection of the daemon through the proxy, with a short
    // receive timeout (and statement timeout, which bounds how long an SQL
    // statement's answer may take on top of it).
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let direct = format!("127.0.0.1:{}/", h.cluster.port());
    assert!(config.contains(&direct), "{config}");
    let config = config
        .replace(&direct, &format!("127.0.0.1:{}/", proxy.port()))
        .replacen(
            "[postgres]\n",
            "[postgres]\nreceive_timeout = \"4s\"\nstatement_timeout = \"4s\"\n",
            1,
        );
    std::fs::write(&h.config_path, config).unwrap();

    let receiver = Receiver::start().await.unwrap();
    h.add_hook("t.created", &receiver.url("/t"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| r.len() == 1)
        .await;
    assert_eq!(got.len(), 1);
    wait_readyz(metrics_port, true, Duration::from_secs(10)).await;
    let before = proxy.connections_opened();

    proxy.go_silent();
    let silent_at = Instant::now();
    // Committed during the partition, straight to the server.
    h.db.batch_execute("INSERT INTO t SELECT generate_series(2, 6)")
        .await
        .unwrap();
    let end = h.current_lsn().await;

    // Not ready within three quarters of the timeout (plus the poll).
    let why = wait_readyz(metrics_port, false, Duration::from_secs(8)).await;
    assert!(why.contains("receive_timeout"), "{why}");
    let noticed = silent_at.elapsed();
    h.wait_log("asking it to answer").await;
    h.wait_log("receive timeout").await;
    h.wait_log("reconnecting in").await;

    proxy.heal();
    // The silenced connections stay silent: everything after comes over
    // connections opened anew.
    let got = receiver
        .wait_until(Duration::from_secs(60), |r| r.len() == 6)
        .await;
    assert_eq!(got.len(), 6, "the rows of the partition were not delivered");
    h.wait_confirmed(
        "the slot to pass the rows of the partition",
        end,
        Duration::from_secs(30),
    )
    .await;
    wait_readyz(metrics_port, true, Duration::from_secs(10)).await;
    assert!(proxy.connections_opened() > before);
    eprintln!(
        "silent network: unready after {noticed:.1?}, all rows delivered {:.1?} after the partition began",
        silent_at.elapsed()
    );
    assert!(h.stop_daemon().success());
}
