//! Cluster mode against a real `nats-server` (the lab's throwaway one, or
//! a three-node cluster of them).
//!
//! `cargo test --release` must pass on a machine without NATS (the
//! README's two commands never need it): without a `nats-server` these
//! tests print a SKIPPED line and pass, unless `WALHOOK_REQUIRE_NATS` is
//! set, as `.ci/run` sets it after installing the server.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use walhook_lab::nats::{self, NatsCluster, NatsServer};

use walhook::cluster::leases::{LeaseEvent, LeaseKeeper};
use walhook::config::ClusterConfig;

use crate::common::{text, Harness};

/// Whether the tests can run here: a `nats-server` is found, or the run
/// requires one (then its absence fails the test).
fn nats_available(test: &str) -> bool {
    match nats::find_server() {
        Ok(_) => true,
        Err(e) if std::env::var_os("WALHOOK_REQUIRE_NATS").is_none() => {
            println!("cluster: {test} SKIPPED: {e}");
            false
        }
        Err(e) => panic!("WALHOOK_REQUIRE_NATS is set: {e}"),
    }
}

/// A stream of `replicas` copies on the server(s) at `url`, one message
/// (message id `id`) published and acknowledged: what every cluster test
/// builds on.
async fn publish_one(urls: &[String], replicas: usize, id: &str) -> anyhow::Result<u64> {
    let addrs = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await?;
    let js = jetstream::new(client);
    js.get_or_create_stream(stream::Config {
        name: "probe".into(),
        subjects: vec!["probe.>".into()],
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    let message = jetstream::message::PublishMessage::build()
        .payload("hello".into())
        .message_id(id);
    let ack = js.send_publish("probe.1", message).await?.await?;
    Ok(ack.sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_nats_server_takes_jetstream_publishes() {
    if !nats_available("lab_nats_server_takes_jetstream_publishes") {
        return;
    }
    let server = NatsServer::start().expect("nats-server starts");
    assert_eq!(
        publish_one(&[server.url()], 1, "first")
            .await
            .expect("publish"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_nats_cluster_keeps_a_replicated_stream_with_one_node_killed() {
    if !nats_available("lab_nats_cluster_keeps_a_replicated_stream_with_one_node_killed") {
        return;
    }
    let mut cluster = NatsCluster::start(3).expect("three nats-servers start");
    assert_eq!(
        publish_one(&cluster.urls(), 3, "first")
            .await
            .expect("publish"),
        1
    );
    cluster.kill(0);
    // Two of three replicas still make a quorum: the next publish is
    // stored and acknowledged, through the nodes left. The killed node may
    // have led the stream; until the two left elect another (seconds, more
    // on a busy machine) a publish times out, so it is sent again until
    // acknowledged, with the same message id: one stored before its answer
    // was lost is not stored twice.
    let survivors = cluster.urls()[1..].to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let sequence = loop {
        match publish_one(&survivors, 3, "second").await {
            Ok(sequence) => break sequence,
            Err(e) if std::time::Instant::now() < deadline => {
                println!("cluster: publish with a node down, trying again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish with a node down, for 60 s: {e}"),
        }
    };
    assert_eq!(sequence, 2);
    cluster.restart(0).expect("the killed node comes back");
}

/// A config file's `[cluster]` section for the servers at `urls`.
fn cluster_section(urls: &[String], extra: &str) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("[cluster]\nnats_urls = [{}]\n{extra}\n", quoted.join(", "))
}

/// `walhook check` in cluster mode connects to NATS and reports the
/// server, JetStream and the stream (missing, then filling past the warning
/// level, then with limits other than the config's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_nats_jetstream_and_the_streams_fill() {
    if !nats_available("check_reports_nats_jetstream_and_the_streams_fill") {
        return;
    }
    let server = NatsServer::start().expect("nats-server starts");
    let h = Harness::start(
        "",
        &cluster_section(&[server.url()], "max_bytes = 67108864"),
    )
    .await;
    let out = h.walhook(&["check"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("OK    NATS reachable: server"), "{said}");
    assert!(said.contains("OK    JetStream enabled"), "{said}");
    assert!(
        said.contains("OK    stream \"walhook\" does not exist yet"),
        "{said}"
    );

    // The stream as `run` makes it (with its shards' consumers, without
    // which it keeps no job), filled to 90% of its 64 MiB.
    let config = walhook::config::Config::load(&h.config_path).unwrap();
    let cluster = config.cluster.clone().unwrap();
    let js = jetstream::new(walhook::cluster::connect(&cluster, "test").await.unwrap());
    walhook::cluster::stream::ensure(&js, &cluster, config.delivery.max_body_bytes)
        .await
        .unwrap();
    let chunk = bytes::Bytes::from(vec![b'x'; 512 * 1024]);
    let mut stored = 0u64;
    while stored < 64 * 1024 * 1024 * 9 / 10 {
        js.publish("walhook.jobs.0", chunk.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        stored += chunk.len() as u64;
    }
    let out = h.walhook(&["check"]);
    let said = text(&out);
    assert!(
        said.contains("WARN  stream \"walhook\": 116 jobs")
            && said.contains("(cluster.max_bytes, 9"),
        "{said}"
    );
    assert!(
        said.contains("the capture waits, holding the slot"),
        "{said}"
    );

    // The stream is full: a further publish is refused, never stored by
    // dropping an older job (discard new).
    let mut refused = false;
    for _ in 0..64 {
        match js.publish("walhook.jobs.0", chunk.clone()).await {
            Ok(ack) => {
                if ack.await.is_err() {
                    refused = true;
                    break;
                }
            }
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "a full stream took more jobs");
    let info = js
        .get_stream("walhook")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.first_sequence, 1, "the oldest job was dropped");

    // Limits on the servers other than the config's are named.
    let mut changed = walhook::cluster::stream::config(&cluster, config.delivery.max_body_bytes);
    changed.max_bytes = 128 * 1024 * 1024;
    js.update_stream(changed).await.unwrap();
    let said = text(&h.walhook(&["check"]));
    assert!(
        said.contains(
            "WARN  cluster.max_bytes: the stream has 134217728, the config says 67108864"
        ),
        "{said}"
    );
}

/// An unreachable NATS server fails `check`, naming the URL and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_naming_an_unreachable_nats_server() {
    let port = walhook_lab::cluster::free_port().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let h = Harness::start(
        "",
        &cluster_section(std::slice::from_ref(&url), "connect_timeout = \"500ms\""),
    )
    .await;
    let out = h.walhook(&["check"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "FAIL  cannot connect to NATS at {url} (cluster.nats_urls) within 500ms"
        )),
        "{said}"
    );
}

/// One instance's lease keeper, run as a task, with the shards it holds
/// as its events say (a handover is acknowledged at once: nothing is being
/// delivered here).
struct Keeper {
    held: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>,
    keeper: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Keeper {
    async fn start(js: &jetstream::Context, cluster: &ClusterConfig, id: &str) -> Keeper {
        let (events, mut receiver) = tokio::sync::mpsc::channel(64);
        let (keeper, _view) = LeaseKeeper::open(js, cluster, id.to_string(), events)
            .await
            .expect("lease bucket");
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let held = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let mine = std::sync::Arc::clone(&held);
        let follower = tokio::spawn(async move {
            while let Some(event) = receiver.recv().await {
                let mut held = mine.lock().unwrap();
                match event {
                    LeaseEvent::Acquired(shard) => assert!(held.insert(shard), "{shard} twice"),
                    LeaseEvent::Lost(shard) => panic!("shard {shard} lost while renewed"),
                    LeaseEvent::Release { shard, stopped } => {
                        held.remove(&shard);
                        let _ = stopped.send(());
                    }
                }
            }
        });
        Keeper {
            held,
            keeper: tokio::spawn(keeper.run(stop)),
            follower,
            shutdown,
        }
    }

    fn held(&self) -> std::collections::BTreeSet<u32> {
        self.held.lock().unwrap().clone()
    }

    /// As kill -9: the keeper stops renewing and deletes nothing.
    fn kill(self) {
        self.keeper.abort();
        self.follower.abort();
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.keeper.await.unwrap();
    }
}

/// Waits until `done` holds, failing with `what` after `limit`; returns
/// how long it took.
async fn within(limit: Duration, what: &str, done: impl Fn() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn lease_config(url: &str, ttl: &str, shards: u32) -> ClusterConfig {
    walhook::config::Config::parse(&format!(
        "[cluster]\nnats_urls = [{url:?}]\nlease_ttl = {ttl:?}\nshards = {shards}\n"
    ))
    .unwrap()
    .cluster
    .unwrap()
}

/// Two instances split the shards between them without overlap; one
/// killed (no renewal, nothing deleted) loses its shards to the other
/// within lease_ttl + heartbeat; one stopped hands its shards over at the
/// next heartbeat; one joining takes its share without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_leases_split_move_on_a_kill_and_rebalance_on_join_and_leave() {
    if !nats_available("shard_leases_split_move_on_a_kill_and_rebalance_on_join_and_leave") {
        return;
    }
    let server = NatsServer::start().expect("nats-server starts");
    let cluster = lease_config(&server.url(), "3s", 16);
    let bound = cluster.lease_ttl + cluster.heartbeat();
    let js = jetstream::new(walhook::cluster::connect(&cluster, "test").await.unwrap());
    let all: std::collections::BTreeSet<u32> = (0..16).collect();

    let a = Keeper::start(&js, &cluster, "a").await;
    within(bound, "a alone holding every shard", || a.held() == all).await;

    // b joins: the shards move to it only as a hands them over, so at no
    // moment do both hold one.
    let b = Keeper::start(&js, &cluster, "b").await;
    within(bound * 2, "a and b splitting the shards", || {
        let (ha, hb) = (a.held(), b.held());
        assert!(ha.is_disjoint(&hb), "both hold {:?}", ha.intersection(&hb));
        !hb.is_empty()
            && ha
                .union(&hb)
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                == all
    })
    .await;
    let b_had = b.held();

    // b killed: its leases run out and a takes them.
    b.kill();
    let took = within(bound * 2, "a taking the killed b's shards", || {
        a.held() == all
    })
    .await;
    println!(
        "cluster: a killed instance's {} shards moved in {took:?} (bound {bound:?})",
        b_had.len()
    );
    // The bound counts from the last renewal, before the kill; the slack
    // of one heartbeat is the looks' own round trips on a loaded machine.
    assert!(
        took <= bound + cluster.heartbeat(),
        "took {took:?}, bound {bound:?}"
    );

    // c joins, then leaves cleanly: its shards come back to a at the next
    // heartbeat, without waiting for the leases to run out.
    let c = Keeper::start(&js, &cluster, "c").await;
    within(bound * 2, "c taking its share", || !c.held().is_empty()).await;
    c.stop().await;
    let back = within(bound, "a taking the stopped c's shards", || a.held() == all).await;
    assert!(
        back < cluster.lease_ttl,
        "a clean leave waited for the leases to run out: {back:?}"
    );
    a.stop().await;
}

/// The host table of the end-to-end tests: transaction i inserts item i
/// and sets the version of item ((i - 1) % 10) + 1 to i, so ten rows carry
/// a chain of versions whose order can be checked.
const ITEMS: &str = "CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL);";
/// The good hooks' secret, checked on arrival: jobs go unsigned onto the
/// bus and are signed at delivery.
const SECRET: &str = "cluster-test-secret-0123456789abcdef";

/// `[cluster]` for `walhook run` in these tests: four shards, leases that
/// move within a few seconds.
fn run_section(url: &str) -> String {
    cluster_section(
        &[url.to_owned()],
        "shards = 4\nlease_ttl = \"2s\"\nmax_bytes = 67108864",
    )
}

/// Writes transactions `from..from + n`, each its own commit.
async fn write_items(url: String, from: i32, n: i32, pause: Duration) {
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connects");
    tokio::spawn(conn);
    for i in from..from + n {
        db.batch_execute(&format!(
            "BEGIN; INSERT INTO item VALUES ({i}, 0); \
             UPDATE item SET version = {i} WHERE id = {}; COMMIT;",
            (i - 1) % 10 + 1
        ))
        .await
        .expect("write");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A change as (event, primary key, version).
type Change = (String, i64, i64);

fn change_of(r: &walhook_lab::receiver::ReceivedRequest) -> (Change, String) {
    let b = r.json();
    (
        (
            b["Event"].as_str().unwrap_or_default().to_owned(),
            b["PrimaryKey"].as_i64().unwrap_or_default(),
            b["FieldValues"]["version"].as_i64().unwrap_or(-1),
        ),
        b["EventId"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Every change transactions `1..=n` made.
fn expected_changes(n: i32) -> std::collections::BTreeSet<Change> {
    (1..=n)
        .flat_map(|i| {
            [
                ("item.created".to_owned(), i64::from(i), 0),
                (
                    "item.changed".to_owned(),
                    i64::from((i - 1) % 10 + 1),
                    i64::from(i),
                ),
            ]
        })
        .collect()
}

/// What one hook received: asserts that each change came under one
/// EventId, signed with the hook's secret, and each row's changes first
/// arrived in commit order (versions rising); returns how many requests
/// repeated a change already received.
fn check_hook(requests: &[walhook_lab::receiver::ReceivedRequest], hook: &str) -> usize {
    let mut ids: std::collections::BTreeMap<Change, String> = Default::default();
    let mut last_version: std::collections::BTreeMap<i64, i64> = Default::default();
    let mut duplicates = 0;
    for r in requests {
        let (change, id) = change_of(r);
        assert_eq!(
            r.header("X-SuperOffice-Signature"),
            Some(crate::common::expected_superoffice_signature(SECRET, &r.body).as_str()),
            "{hook}: a request not signed with the hook's secret"
        );
        if let Some(first) = ids.get(&change) {
            assert_eq!(first, &id, "{hook}: {change:?} under two EventIds");
            duplicates += 1;
            continue;
        }
        ids.insert(change.clone(), id);
        let (_, key, version) = change;
        if let Some(last) = last_version.insert(key, version) {
            assert!(
                last < version,
                "{hook}: row {key} got version {version} after {last}"
            );
        }
    }
    duplicates
}

/// The requests to one hook's path.
fn requests_to(
    requests: &[walhook_lab::receiver::ReceivedRequest],
    path: &str,
) -> Vec<walhook_lab::receiver::ReceivedRequest> {
    requests
        .iter()
        .filter(|r| r.path == path)
        .cloned()
        .collect()
}

/// Waits until every hook's path has received every expected change;
/// the requests then.
async fn wait_every_hook(
    receiver: &walhook_lab::receiver::Receiver,
    paths: &[&str],
    expected: &std::collections::BTreeSet<Change>,
    timeout: Duration,
) -> Vec<walhook_lab::receiver::ReceivedRequest> {
    receiver
        .wait_until(timeout, |all| {
            paths
                .iter()
                .all(|p| received(&requests_to(all, p)) == *expected)
        })
        .await
}

/// The changes a hook received, without repeats.
fn received(
    requests: &[walhook_lab::receiver::ReceivedRequest],
) -> std::collections::BTreeSet<Change> {
    requests.iter().map(|r| change_of(r).0).collect()
}

/// Two `walhook run` started with one `[cluster]` config, once both
/// deliver some of the shards.
async fn start_instances(h: &mut Harness) -> Vec<std::process::Child> {
    let children = vec![h.spawn_extra_daemon(), h.spawn_extra_daemon()];
    h.wait_slot_active(Duration::from_secs(30)).await;
    let logs = [h.log_path(1), h.log_path(2)];
    within(
        Duration::from_secs(30),
        "both instances delivering shards",
        || {
            logs.iter().all(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .contains("delivering the shard's jobs")
            })
        },
    )
    .await;
    children
}

async fn stop_instances(children: Vec<std::process::Child>) {
    for child in children {
        let status = crate::common::stop_child(child).await;
        assert!(status.success(), "walhook run exited with {status:?}");
    }
}

/// Two instances, one config, one NATS server: every committed change
/// reaches every matching hook, signed at delivery, each row's changes in
/// order; and the slot moves past the writes while one hook's target is
/// dead, its jobs held (unacknowledged) on the bus instead of the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_every_change_and_a_dead_target_does_not_hold_the_slot() {
    if !nats_available(
        "two_instances_deliver_every_change_and_a_dead_target_does_not_hold_the_slot",
    ) {
        return;
    }
    let started = std::time::Instant::now();
    let server = NatsServer::start().expect("nats-server starts");
    // The dead hook never trips to TooManyErrors here (which would park
    // its jobs and settle them): they stay retrying, held on the bus.
    let mut h = Harness::start(
        ITEMS,
        &format!(
            "max_consecutive_errors = 100000\n{}",
            run_section(&server.url())
        ),
    )
    .await;
    let receiver = walhook_lab::receiver::Receiver::start().await.unwrap();
    let paths = ["/a", "/b", "/c"];
    for path in paths {
        h.add_hook("item.*", &receiver.url(path), Some(SECRET))
            .await;
    }
    let dead_url = format!("http://127.0.0.1:{}/dead", crate::common::free_port());
    let dead = h.add_hook("item.*", &dead_url, Some(SECRET)).await;
    let children = start_instances(&mut h).await;

    const N: i32 = 200;
    write_items(h.cluster.url("postgres"), 1, N, Duration::ZERO).await;
    let written = h.current_lsn().await;
    let writes_done = std::time::Instant::now();
    h.wait_confirmed(
        "the slot to pass the writes while a target is dead",
        written,
        Duration::from_secs(30),
    )
    .await;
    let slot_moved = writes_done.elapsed();

    // The dead hook's jobs wait on the bus, unacknowledged, not in the slot.
    let config = walhook::config::Config::load(&h.config_path).unwrap();
    let cluster = config.cluster.clone().unwrap();
    let js = jetstream::new(walhook::cluster::connect(&cluster, "test").await.unwrap());
    let shard = walhook::cluster::leases::shard_of(dead, cluster.shards);
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&cluster.stream)
        .await
        .unwrap()
        .get_consumer(&walhook::cluster::stream::consumer_name(&cluster, shard))
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert!(
        info.num_ack_pending + info.num_pending as usize > 0,
        "the dead hook's jobs are not waiting on the bus: {info:?}"
    );
    let usage = h.wait_usage(dead, |u| u.total_errors > 0).await;

    let expected = expected_changes(N);
    let requests = wait_every_hook(&receiver, &paths, &expected, Duration::from_secs(40)).await;
    let mut duplicates = 0;
    for path in paths {
        let to = requests_to(&requests, path);
        assert_eq!(
            received(&to),
            expected,
            "{path}: changes missing; log:\n{}",
            h.daemon_log()
        );
        duplicates += check_hook(&to, path);
    }
    assert_eq!(h.parked_count(dead).await, 0, "the dead hook was parked");
    println!(
        "cluster: {} changes to each of 3 hooks, {duplicates} duplicates; slot past the writes \
         {slot_moved:?} after they ended, with the dead hook's jobs on the bus ({} unacked, {} pending, {} \
         failed attempts); all delivered at {:?}",
        expected.len(),
        info.num_ack_pending,
        info.num_pending,
        usage.total_errors,
        started.elapsed()
    );
    stop_instances(children).await;
}

/// kill -9 of the instance not leading the capture, mid-load: its shards
/// move to the other, whose consumers take up what it had not
/// acknowledged; every committed change arrives (duplicates counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_delivery_instance_s_shards_move_and_nothing_is_lost() {
    if !nats_available("a_killed_delivery_instance_s_shards_move_and_nothing_is_lost") {
        return;
    }
    let started = std::time::Instant::now();
    let server = NatsServer::start().expect("nats-server starts");
    let mut h = Harness::start(ITEMS, &run_section(&server.url())).await;
    // A target taking 20 ms a request: jobs are in flight, unacknowledged,
    // when the instance is killed.
    let receiver = walhook_lab::receiver::Receiver::start_slow(Duration::from_millis(20))
        .await
        .unwrap();
    // Four hooks over four shards: each instance holds some of them.
    let paths = ["/a", "/b", "/c", "/d"];
    for path in paths {
        h.add_hook("item.*", &receiver.url(path), Some(SECRET))
            .await;
    }
    let mut children = start_instances(&mut h).await;
    let leads = |run: usize| {
        std::fs::read_to_string(h.log_path(run))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("streaming") && l.contains("slot_position"))
    };
    let victim = if leads(1) { 1 } else { 0 };
    assert!(leads(2 - victim), "no instance leads the capture");

    const N: i32 = 300;
    let writer = tokio::spawn(write_items(
        h.cluster.url("postgres"),
        1,
        N,
        Duration::from_millis(10),
    ));
    receiver
        .wait_until(Duration::from_secs(30), |all| all.len() >= 200)
        .await;
    let victim_shards: Vec<String> = std::fs::read_to_string(h.log_path(victim + 1))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("delivering the shard's jobs"))
        .filter_map(|l| l.split("shard=").nth(1).map(str::to_owned))
        .collect();
    let mut killed = children.remove(victim);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let killed_at = started.elapsed();
    writer.await.unwrap();

    let expected = expected_changes(N);
    let requests = wait_every_hook(&receiver, &paths, &expected, Duration::from_secs(45)).await;
    let mut duplicates = 0;
    for path in paths {
        let to = requests_to(&requests, path);
        let got = received(&to);
        let missing: Vec<_> = expected.difference(&got).take(5).collect();
        assert!(
            missing.is_empty(),
            "{path}: changes missing after the kill, e.g. {missing:?}; log:\n{}",
            h.daemon_log()
        );
        duplicates += check_hook(&to, path);
    }
    let taken_up = std::fs::read_to_string(h.log_path(2 - victim))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("were not acknowledged"))
        .count();
    println!(
        "cluster: instance {} (shards {victim_shards:?} started) killed at {killed_at:?}; the \
         other took up {taken_up} shard(s) with unacknowledged jobs; {} changes to each of 4 \
         hooks all delivered at {:?}, {duplicates} duplicates",
        victim + 1,
        expected.len(),
        started.elapsed()
    );
    stop_instances(children).await;
}
