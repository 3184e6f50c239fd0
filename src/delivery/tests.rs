//! Lanes, parking, replay and retries against an in-memory store and a
//! real HTTP receiver on loopback: no database.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use bytes::Bytes;

use super::*;
use crate::checkpoint::Checkpoint;
use uuid::Uuid;

use crate::config::{Concurrency, DeliveryConfig, Live};
use crate::events::WebhookRow;
use crate::pgoutput::Lsn;
use crate::registry::{Webhook, WebhookState};

/// Parked events and stored states, in memory.
#[derive(Default)]
struct MemoryStore {
    /// (webhook_id, last error, row), in the order written.
    parked: Mutex<Vec<(i32, String, ParkedRow)>>,
    states: Mutex<Vec<(i32, WebhookState)>>,
    /// The size of each batch written.
    batches: Mutex<Vec<usize>>,
    gate: tokio::sync::RwLock<()>,
}

impl MemoryStore {
    /// A hook's parked events: (last error, attempts).
    fn parked_of(&self, webhook_id: i32) -> Vec<(String, i32)> {
        self.parked
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.0 == webhook_id)
            .map(|p| (p.1.clone(), p.2.attempts))
            .collect()
    }
}

#[async_trait::async_trait]
impl DeliveryStore for MemoryStore {
    async fn park(&self, event: &ParkedEvent<'_>) -> anyhow::Result<()> {
        let mut parked = self.parked.lock().unwrap();
        if parked
            .iter()
            .any(|p| p.0 == event.webhook_id && p.2.position == event.position)
        {
            return Ok(());
        }
        let body = match &event.body {
            ParkedBody::Assembled {
                name,
                fields,
                properties,
            } => Bytes::from(
                request::assemble_parts(
                    event.event_id,
                    &request::BodyParts {
                        head: event.payload.head,
                        name,
                        fields: fields.unwrap_or(event.payload.fields),
                        properties: properties.map(|p| p.json.as_bytes()),
                        tail: event.payload.tail,
                    },
                )
                .0,
            ),
            ParkedBody::Whole(body) => Bytes::copy_from_slice(body),
        };
        parked.push((
            event.webhook_id,
            event.last_error.unwrap_or_default().to_owned(),
            ParkedRow {
                position: event.position,
                event_id: event.event_id,
                event: event.event.to_owned(),
                ordering_key: event.ordering_key.to_owned(),
                scope: event.scope.clone(),
                body,
                attempts: event.attempts,
                bytes: event.bytes,
            },
        ));
        Ok(())
    }

    async fn park_batch(&self, events: &[ParkedEvent<'_>]) -> anyhow::Result<()> {
        // Held by a test to look at what happens before a batch is stored.
        let _open = self.gate.read().await;
        self.batches.lock().unwrap().push(events.len());
        for event in events {
            self.park(event).await?;
        }
        Ok(())
    }

    async fn next_parked(
        &self,
        webhook_id: i32,
        after: Option<Position>,
        limit: i64,
    ) -> anyhow::Result<Vec<ParkedRow>> {
        let mut rows: Vec<ParkedRow> = self
            .parked
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.0 == webhook_id && after.is_none_or(|a| p.2.position > a))
            .map(|p| p.2.clone())
            .collect();
        rows.sort_by_key(|r| r.position);
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn parked_count(&self, webhook_id: i32) -> anyhow::Result<i64> {
        Ok(self.parked_of(webhook_id).len() as i64)
    }

    async fn parked_size(&self, webhook_id: i32) -> anyhow::Result<ParkedSize> {
        let parked = self.parked.lock().unwrap();
        let rows = parked.iter().filter(|p| p.0 == webhook_id);
        Ok(ParkedSize {
            events: rows.clone().count() as i64,
            bytes: rows.map(|p| p.2.bytes).sum(),
        })
    }

    async fn remove_parked(&self, webhook_id: i32, delivered: &[Position]) -> anyhow::Result<()> {
        self.parked
            .lock()
            .unwrap()
            .retain(|p| p.0 != webhook_id || !delivered.contains(&p.2.position));
        Ok(())
    }

    async fn release_payloads(&self, _positions: &[Position]) -> anyhow::Result<()> {
        // Bodies are kept whole per event here.
        Ok(())
    }

    async fn release_properties(&self, _webhook_id: i32) -> anyhow::Result<()> {
        Ok(())
    }

    async fn record_parked_failure(
        &self,
        webhook_id: i32,
        position: Position,
        attempts: u32,
        _error: Option<&str>,
    ) -> anyhow::Result<()> {
        for p in self.parked.lock().unwrap().iter_mut() {
            if p.0 == webhook_id && p.2.position == position {
                p.2.attempts = attempts as i32;
            }
        }
        Ok(())
    }

    async fn store_state(&self, webhook_id: i32, state: WebhookState) -> anyhow::Result<()> {
        self.states.lock().unwrap().push((webhook_id, state));
        Ok(())
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// Shared body parts for jobs whose bodies are made up by the test.
fn no_shared_body() -> request::SharedParts {
    request::SharedParts::Apart(Arc::new(request::SharedBody {
        head: String::new(),
        fields: String::new(),
        tail: String::new(),
    }))
}

/// A loopback receiver: records `(event id, body)` and answers `status`.
#[derive(Clone, Default)]
struct Target {
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<(String, String)>>>,
    /// How long each answer takes, in milliseconds.
    delay_ms: Arc<AtomicU64>,
    /// Requests being answered now, and the most at once.
    open: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

async fn receive(State(t): State<Target>, headers: HeaderMap, body: String) -> StatusCode {
    let id = headers
        .get("x-superoffice-eventid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let open = t.open.fetch_add(1, Ordering::AcqRel) + 1;
    t.most_at_once.fetch_max(open, Ordering::AcqRel);
    t.received.lock().unwrap().push((id, body));
    let delay = t.delay_ms.load(Ordering::Acquire);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    t.open.fetch_sub(1, Ordering::AcqRel);
    StatusCode::from_u16(t.status.load(Ordering::Acquire)).unwrap_or(StatusCode::OK)
}

impl Target {
    async fn start(status: u16) -> (Target, String) {
        let target = Target::default();
        target.status.store(status, Ordering::Release);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(target.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (target, url)
    }

    fn bodies(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.1.clone())
            .collect()
    }
}

fn hook(url: &str, state: WebhookState) -> Arc<Webhook> {
    let row: BTreeMap<String, Option<String>> = [
        ("webhook_id", "7"),
        ("name", "test"),
        ("events", "*"),
        ("target_url", url),
        ("type", "webhook"),
        ("state", &(state as i16).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
    .collect();
    Arc::new(Webhook::from_row(&WebhookRow(row)).expect("a valid hook"))
}

fn context(store: Arc<MemoryStore>, tune: impl FnOnce(&mut DeliveryConfig)) -> DeliveryContext {
    let mut config = DeliveryConfig {
        allow_http: true,
        allow_private_targets: true,
        ..DeliveryConfig::default()
    };
    tune(&mut config);
    DeliveryContext {
        http: http_client(&config).expect("an HTTP client"),
        config: Live::new(config),
        metrics: Arc::default(),
        usage: UsageBook::default(),
        store,
        attempts: crate::delivery::AttemptLog::off(Arc::default()),
        telemetry: crate::telemetry::Telemetry::off(),
    }
}

/// `n` events of one transaction, each with its key and body.
fn jobs(
    checkpoint: &mut Checkpoint,
    hook: &Arc<Webhook>,
    keys: &[&str],
) -> (Vec<Job>, crate::checkpoint::OpenTxn) {
    let txn = checkpoint.begin(std::time::SystemTime::now());
    let jobs = keys
        .iter()
        .enumerate()
        .map(|(i, key)| Job {
            hook: Arc::clone(hook),
            event: "item.changed".into(),
            event_id: Uuid::from_u128(i as u128 + 1),
            ordering_key: (*key).to_owned(),
            scope: OrderScope::Key,
            body: Bytes::from(format!("{key}:{i}")),
            shared: no_shared_body(),
            commit_lsn: Lsn(100),
            change_index: i as u32,
            ticket: txn.ticket(),
            trace: None,
        })
        .collect();
    (jobs, txn)
}

/// Dispatch one transaction of events with `keys`, committed at Lsn(200).
async fn dispatch_committed(
    dispatcher: &mut Dispatcher,
    checkpoint: &mut Checkpoint,
    hook: &Arc<Webhook>,
    keys: &[&str],
) {
    let (jobs, txn) = jobs(checkpoint, hook, keys);
    checkpoint.commit(txn, Lsn(200));
    for job in jobs {
        dispatcher.take(job).await.unwrap();
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// On two workers, so the hook's events run in two lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_row_arrive_in_commit_order_while_rows_go_concurrently() {
    let (target, url) = Target::start(200).await;
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(Arc::clone(&store), |c| {
        c.concurrency_per_webhook = Concurrency::Fixed(8)
    }));
    let hook = hook(&url, WebhookState::Active);
    let keys: Vec<String> = (0..60).map(|i| format!("row{}", i % 6)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut checkpoint = Checkpoint::new(Lsn(1));
    dispatch_committed(&mut dispatcher, &mut checkpoint, &hook, &keys).await;
    wait_for("60 deliveries", || target.bodies().len() == 60).await;
    for row in 0..6 {
        let seen: Vec<usize> = target
            .bodies()
            .iter()
            .filter_map(|b| b.strip_prefix(&format!("row{row}:")))
            .map(|i| i.parse().unwrap())
            .collect();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(seen, sorted, "row{row} out of order");
    }
    wait_for("the transaction settled", || {
        checkpoint.confirmable() == Lsn(200)
    })
    .await;
}

/// Deliver `n` events of distinct rows to a target that answers after
/// `delay_ms`; the most requests the target saw at once.
async fn most_at_once(n: usize, delay_ms: u64, concurrency: Concurrency) -> usize {
    let (target, url) = Target::start(200).await;
    target.delay_ms.store(delay_ms, Ordering::Release);
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(store, |c| {
        c.concurrency_per_webhook = concurrency;
    }));
    let hook = hook(&url, WebhookState::Active);
    let keys: Vec<String> = (0..n).map(|i| format!("row{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut checkpoint = Checkpoint::new(Lsn(1));
    dispatch_committed(&mut dispatcher, &mut checkpoint, &hook, &keys).await;
    wait_for("every delivery", || target.bodies().len() == n).await;
    wait_for("the transaction settled", || {
        checkpoint.confirmable() == Lsn(200)
    })
    .await;
    target.most_at_once.load(Ordering::Acquire)
}

#[tokio::test]
async fn a_distant_target_gets_hundreds_of_requests_at_once() {
    // 50 ms away, a fixed 8 in flight would take 2,000 / 8 * 50 ms = 12.5 s.
    let most = most_at_once(2_000, 50, Concurrency::Adaptive).await;
    assert!(most > 100, "at most {most} requests at once");
}

/// On two workers: the limit holds across the hook's lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_concurrency_is_never_exceeded() {
    let most = most_at_once(400, 5, Concurrency::Fixed(3)).await;
    assert_eq!(most, 3);
}

/// A hook like [`hook`] with its own webhook_id.
fn hook_with_id(url: &str, id: i32) -> Arc<Webhook> {
    let row = WebhookRow(
        [
            ("webhook_id", id.to_string()),
            ("name", format!("test{id}")),
            ("events", "*".into()),
            ("target_url", url.into()),
            ("type", "webhook".into()),
            ("state", (WebhookState::Active as i16).to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v)))
        .collect(),
    );
    Arc::new(Webhook::from_row(&row).expect("a valid hook"))
}

/// On two workers: three hooks with a fixed concurrency of 16 each, and 4
/// shared requests: never more than each hook's first plus the 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_each_hooks_first_stay_within_the_shared_pool() {
    let (target, url) = Target::start(200).await;
    target.delay_ms.store(20, Ordering::Release);
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(store, |c| {
        c.concurrency_per_webhook = Concurrency::Fixed(16);
        c.max_shared_in_flight = 4;
    }));
    let keys: Vec<String> = (0..40).map(|i| format!("row{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut checkpoint = Checkpoint::new(Lsn(1));
    for id in 1..=3 {
        let hook = hook_with_id(&url, id);
        dispatch_committed(&mut dispatcher, &mut checkpoint, &hook, &keys).await;
    }
    wait_for("every delivery", || target.bodies().len() == 120).await;
    let most = target.most_at_once.load(Ordering::Acquire);
    assert!(most <= 3 + 4, "{most} requests at once");
    assert!(most > 3, "the shared pool was never used: {most} at once");
}

/// A fan-out: each change goes to every one of 200 hooks, behind a byte
/// budget far below what they would queue. The bytes queued or in flight
/// never pass the budget, the requests at once never pass each hook's
/// first plus the shared pool, and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_to_many_hooks_stays_within_the_byte_budget() {
    const HOOKS: i32 = 200;
    const SHARED: usize = 16;
    const BUDGET: u64 = 64 * 1024;
    let (target, url) = Target::start(200).await;
    target.delay_ms.store(5, Ordering::Release);
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(store, |c| {
        c.max_in_flight_bytes = BUDGET;
        c.max_shared_in_flight = SHARED;
    }));
    let hooks: Vec<Arc<Webhook>> = (1..=HOOKS).map(|id| hook_with_id(&url, id)).collect();
    let keys: Vec<String> = (0..10).map(|i| format!("row{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut checkpoint = Checkpoint::new(Lsn(1));
    let mut txns = Vec::new();
    let mut per_hook: Vec<std::vec::IntoIter<Job>> = Vec::new();
    for hook in &hooks {
        let (jobs, txn) = jobs(&mut checkpoint, hook, &keys);
        per_hook.push(jobs.into_iter());
        txns.push(txn);
    }
    for txn in txns {
        checkpoint.commit(txn, Lsn(200));
    }
    let mut most_bytes = 0;
    for _ in 0..keys.len() {
        for jobs in &mut per_hook {
            let job = jobs.next().expect("one job per key");
            dispatcher.take(job).await.unwrap();
            most_bytes = most_bytes.max(dispatcher.in_flight_bytes());
        }
    }
    assert!(
        most_bytes <= BUDGET,
        "{most_bytes} bytes queued or in flight"
    );
    let all = HOOKS as usize * keys.len();
    wait_for("every delivery", || target.bodies().len() == all).await;
    let at_once = target.most_at_once.load(Ordering::Acquire);
    assert!(
        at_once <= HOOKS as usize + SHARED,
        "{at_once} requests at once"
    );
    wait_for("every event settled", || {
        checkpoint.confirmable() == Lsn(200)
    })
    .await;
}

/// What a hook's queue holds per event stays small: its channel allocates
/// slots 32 at a time and its order gate keeps entries by value, for
/// every hook, busy or not.
#[test]
fn a_queued_event_is_a_few_words_its_job_boxed() {
    let size = std::mem::size_of::<live::Queued>();
    assert!(size <= 64, "a queued event takes {size} bytes");
}

/// One hook holds every shared permit on a slow target; another still
/// delivers at once, on its first request.
#[tokio::test]
async fn a_hook_sends_its_first_request_while_others_hold_every_shared_one() {
    let (slow, slow_url) = Target::start(200).await;
    slow.delay_ms.store(3_000, Ordering::Release);
    let (fast, fast_url) = Target::start(200).await;
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(store, |c| {
        c.concurrency_per_webhook = Concurrency::Fixed(16);
        c.max_shared_in_flight = 2;
    }));
    let mut checkpoint = Checkpoint::new(Lsn(1));
    let keys: Vec<String> = (0..10).map(|i| format!("row{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    dispatch_committed(
        &mut dispatcher,
        &mut checkpoint,
        &hook_with_id(&slow_url, 1),
        &keys,
    )
    .await;
    wait_for("the slow hook's first and both shared requests", || {
        slow.open.load(Ordering::Acquire) == 3
    })
    .await;
    dispatch_committed(
        &mut dispatcher,
        &mut checkpoint,
        &hook_with_id(&fast_url, 2),
        &["a"],
    )
    .await;
    wait_for("the other hook's delivery", || fast.bodies().len() == 1).await;
    assert_eq!(
        slow.open.load(Ordering::Acquire),
        3,
        "the slow hook's requests were still in flight"
    );
}

#[tokio::test]
async fn a_target_answering_503_gets_no_more_requests_at_once_and_fewer_new_events() {
    let (target, url) = Target::start(503).await;
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(store, |c| {
        c.max_consecutive_errors = 1_000;
    }));
    let hook = hook(&url, WebhookState::Active);
    let keys: Vec<String> = (0..50).map(|i| format!("row{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut checkpoint = Checkpoint::new(Lsn(1));
    dispatch_committed(&mut dispatcher, &mut checkpoint, &hook, &keys).await;
    // The second attempts come a second after the first ones.
    wait_for("retries", || target.received.lock().unwrap().len() >= 12).await;
    let runtime = dispatcher.ensure_queue(&hook);
    let limit = runtime.concurrency_limit();
    assert!(limit < 8, "the limit stayed at {limit}");
    let events: HashSet<String> = target
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.clone())
        .collect();
    // Only the events that started before the first 503 were tried.
    assert!(events.len() <= 8, "{} events tried", events.len());
    assert!(target.most_at_once.load(Ordering::Acquire) <= 8);
}

#[tokio::test]
async fn a_failing_target_trips_the_hook_and_its_event_is_parked_with_its_attempts() {
    let (target, url) = Target::start(500).await;
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(Arc::clone(&store), |c| {
        c.max_consecutive_errors = 2
    }));
    let hook = hook(&url, WebhookState::Active);
    let mut checkpoint = Checkpoint::new(Lsn(1));
    dispatch_committed(&mut dispatcher, &mut checkpoint, &hook, &["a"]).await;
    wait_for("the event parked", || !store.parked_of(7).is_empty()).await;
    let parked = store.parked_of(7);
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].1, 2, "both attempts counted");
    assert!(parked[0].0.contains("500"), "last error kept: {parked:?}");
    assert_eq!(target.bodies().len(), 2);
    // Parked is settled: the slot may move past the transaction.
    wait_for("the transaction settled", || {
        checkpoint.confirmable() == Lsn(200)
    })
    .await;
}

#[tokio::test]
async fn a_panic_while_sending_trips_only_that_hook_and_parks_its_event() {
    let (target, url) = Target::start(200).await;
    let store = Arc::new(MemoryStore::default());
    let ctx = context(Arc::clone(&store), |_| {});
    let usage = ctx.usage.clone();
    let mut dispatcher = Dispatcher::new(ctx);
    // Made by hand past what a row may have: more headers than a header
    // map holds, so building the request panics.
    let mut broken = Webhook::clone(&hook(&url, WebhookState::Active));
    broken.headers = (0..40_000)
        .map(|i| {
            (
                axum::http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                axum::http::HeaderValue::from_static("v"),
            )
        })
        .collect();
    let broken = Arc::new(broken);
    let mut checkpoint = Checkpoint::new(Lsn(1));
    dispatch_committed(&mut dispatcher, &mut checkpoint, &broken, &["a"]).await;
    wait_for("the event parked", || !store.parked_of(7).is_empty()).await;
    let parked = store.parked_of(7);
    assert!(
        parked[0].0.contains("walhook failed while delivering"),
        "the panic is the parked event's last error: {parked:?}"
    );
    // Settled: the slot moves on, and the hook waits for its activation.
    wait_for("the transaction settled", || {
        checkpoint.confirmable() == Lsn(200)
    })
    .await;
    let recorded = usage.take();
    assert_eq!(
        recorded.get(&7).and_then(|d| d.new_state),
        Some(WebhookState::TooManyErrors)
    );
    assert!(target.bodies().is_empty());
    // The dispatcher's tick finds no failed task: the panic was contained.
    assert!(dispatcher.tick().await.is_ok());
}

#[tokio::test]
async fn a_hook_removed_with_parked_events_comes_back_parking_behind_them() {
    let (target, url) = Target::start(200).await;
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(Arc::clone(&store), |_| {}));
    let tripped = hook(&url, WebhookState::TooManyErrors);
    let mut checkpoint = Checkpoint::new(Lsn(1));
    dispatch_committed(&mut dispatcher, &mut checkpoint, &tripped, &["a"]).await;
    wait_for("the event parked", || store.parked_of(7).len() == 1).await;
    // The row goes (deleted, or made invalid) and comes back Active: its
    // new queue starts parking behind what was parked, and the replayer
    // delivers that first.
    dispatcher.hook_removed(7);
    let active = hook(&url, WebhookState::Active);
    dispatcher.hook_changed(&active, false).await;
    wait_for("the parked event delivered", || {
        target.bodies().len() == 1 && store.parked_of(7).is_empty()
    })
    .await;
}

#[tokio::test]
async fn reactivation_delivers_parked_events_first_then_live_ones() {
    let (target, url) = Target::start(200).await;
    let store = Arc::new(MemoryStore::default());
    let ctx = context(Arc::clone(&store), |_| {});
    let tripped = hook(&url, WebhookState::TooManyErrors);
    let mut checkpoint = Checkpoint::new(Lsn(1));
    let mut dispatcher = Dispatcher::new(ctx);
    // Three events parked while the hook was in TooManyErrors.
    let (parked, txn) = jobs(&mut checkpoint, &tripped, &["a", "b", "a"]);
    checkpoint.commit(txn, Lsn(200));
    for job in parked {
        dispatcher.take(job).await.unwrap();
    }
    wait_for("three parked", || store.parked_of(7).len() == 3).await;
    assert!(target.bodies().is_empty());
    // Set Active again: the replayer drains the parked events in order,
    // and an event dispatched meanwhile queues behind them.
    let active = hook(&url, WebhookState::Active);
    dispatcher.hook_changed(&active, false).await;
    let txn = checkpoint.begin(std::time::SystemTime::now());
    dispatcher
        .take(Job {
            hook: Arc::clone(&active),
            event: "item.changed".into(),
            event_id: Uuid::from_u128(99),
            ordering_key: "a".into(),
            scope: OrderScope::Key,
            body: Bytes::from_static(b"a:live"),
            shared: no_shared_body(),
            commit_lsn: Lsn(300),
            change_index: 0,
            ticket: txn.ticket(),
            trace: None,
        })
        .await
        .unwrap();
    checkpoint.commit(txn, Lsn(400));
    wait_for("four deliveries", || target.bodies().len() == 4).await;
    assert_eq!(target.bodies(), ["a:0", "b:1", "a:2", "a:live"]);
    wait_for("nothing left parked", || store.parked_of(7).is_empty()).await;
}

#[tokio::test]
async fn a_hook_stopped_or_removed_while_retrying_gets_no_further_attempt_and_nothing_is_parked() {
    for remove in [false, true] {
        let (target, url) = Target::start(500).await;
        let store = Arc::new(MemoryStore::default());
        let mut dispatcher = Dispatcher::new(context(Arc::clone(&store), |c| {
            c.max_consecutive_errors = 100
        }));
        let active = hook(&url, WebhookState::Active);
        let mut checkpoint = Checkpoint::new(Lsn(1));
        dispatch_committed(&mut dispatcher, &mut checkpoint, &active, &["a", "b"]).await;
        // Both events failed once and wait for their retry (1 s).
        wait_for("a first attempt of each", || target.bodies().len() == 2).await;
        if remove {
            dispatcher.hook_removed(7);
        } else {
            dispatcher
                .hook_changed(&hook(&url, WebhookState::Stopped), true)
                .await;
        }
        // Both jobs end (the transaction settles) without another attempt.
        wait_for("the transaction settled", || {
            checkpoint.confirmable() == Lsn(200)
        })
        .await;
        assert_eq!(target.bodies().len(), 2, "removed: {remove}");
        assert!(store.parked_of(7).is_empty(), "removed: {remove}");
    }
}

#[tokio::test]
async fn a_changed_url_applies_from_the_next_attempt_with_the_same_event_id() {
    let (broken, broken_url) = Target::start(500).await;
    let (fixed, fixed_url) = Target::start(200).await;
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(Arc::clone(&store), |c| {
        c.max_consecutive_errors = 100
    }));
    let mut checkpoint = Checkpoint::new(Lsn(1));
    let (jobs, txn) = jobs(
        &mut checkpoint,
        &hook(&broken_url, WebhookState::Active),
        &["a"],
    );
    checkpoint.commit(txn, Lsn(200));
    for job in jobs {
        dispatcher.take(job).await.unwrap();
    }
    wait_for("the failed attempt", || broken.bodies().len() == 1).await;
    dispatcher
        .hook_changed(&hook(&fixed_url, WebhookState::Active), true)
        .await;
    wait_for("delivery to the new URL", || fixed.bodies().len() == 1).await;
    let ids = |t: &Target| -> Vec<String> {
        t.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.0.clone())
            .collect()
    };
    assert_eq!(ids(&broken), ids(&fixed), "same EventId");
    assert_eq!(broken.bodies(), fixed.bodies(), "same body");
}

/// A hook moved from a target on loopback to one 50 ms away (another
/// origin) starts its concurrency limit afresh: the distant target gets
/// hundreds of requests at once, as a new hook's does, not the few the
/// fast one was held to.
#[tokio::test]
async fn a_hook_moved_to_a_distant_target_gets_a_new_hooks_concurrency() {
    let (fast, fast_url) = Target::start(200).await;
    let (distant, distant_url) = Target::start(200).await;
    distant.delay_ms.store(50, Ordering::Release);
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(store, |c| {
        c.concurrency_per_webhook = Concurrency::Adaptive;
    }));
    let mut checkpoint = Checkpoint::new(Lsn(1));
    let keys: Vec<String> = (0..500).map(|i| format!("row{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let before = hook(&fast_url, WebhookState::Active);
    dispatch_committed(&mut dispatcher, &mut checkpoint, &before, &keys).await;
    wait_for("the fast target's deliveries", || {
        checkpoint.confirmable() == Lsn(200)
    })
    .await;
    assert_eq!(fast.bodies().len(), 500);

    let moved = hook(&distant_url, WebhookState::Active);
    dispatcher.hook_changed(&moved, true).await;
    assert_eq!(dispatcher.ensure_queue(&moved).concurrency_limit(), 8);
    let keys: Vec<String> = (0..2_000).map(|i| format!("moved{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (jobs, txn) = jobs(&mut checkpoint, &moved, &keys);
    checkpoint.commit(txn, Lsn(300));
    for job in jobs {
        dispatcher.take(job).await.unwrap();
    }
    wait_for("the distant target's deliveries", || {
        checkpoint.confirmable() == Lsn(300)
    })
    .await;
    assert_eq!(distant.bodies().len(), 2_000);
    let most = distant.most_at_once.load(Ordering::Acquire);
    assert!(most > 100, "at most {most} requests at once");
}

#[tokio::test]
async fn a_burst_of_parked_events_is_written_in_few_batches_in_order_and_settled_after() {
    let (target, url) = Target::start(200).await;
    let store = Arc::new(MemoryStore::default());
    let mut dispatcher = Dispatcher::new(context(Arc::clone(&store), |_| {}));
    let tripped = hook(&url, WebhookState::TooManyErrors);
    let keys: Vec<String> = (0..1000).map(|i| format!("row{}", i % 7)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut checkpoint = Checkpoint::new(Lsn(1));
    let (parked, txn) = jobs(&mut checkpoint, &tripped, &keys);
    checkpoint.commit(txn, Lsn(200));
    // The store is held: the reader parks all of them without waiting for
    // it, and nothing is confirmed while none is stored.
    let held = store.gate.write().await;
    let reader = async {
        for job in parked {
            dispatcher.take(job).await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the reader never waits for the database");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(store.parked_of(7).is_empty());
    assert_eq!(checkpoint.confirmable(), Lsn(1), "settled before stored");
    drop(held);
    wait_for("the transaction settled", || {
        checkpoint.confirmable() == Lsn(200)
    })
    .await;
    let batches = store.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 1000);
    assert!(batches.len() <= 4, "written in {batches:?}");
    let ids: Vec<u128> = store
        .parked
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.2.event_id.as_u128())
        .collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<u128>>(), "in order");
    assert!(target.bodies().is_empty());
}

/// The parked form of `job`, assembled again as the store does it.
fn reassembled(job: &Job) -> (Bytes, bool, bool) {
    let parked = job.parked(ParkReason::Backlog, 0, None, 0);
    let ParkedBody::Assembled {
        name,
        fields,
        properties,
    } = parked.body
    else {
        panic!("a body assembled from parts is parked as parts");
    };
    let body = request::assemble_parts(
        job.event_id,
        &request::BodyParts {
            head: parked.payload.head,
            name,
            fields: fields.unwrap_or(parked.payload.fields),
            properties: properties.map(|p| p.json.as_bytes()),
            tail: parked.payload.tail,
        },
    )
    .0;
    (Bytes::from(body), fields.is_some(), properties.is_some())
}

#[test]
fn a_parked_copy_names_its_properties_and_keeps_only_its_own_values_apart() {
    let mut row: BTreeMap<String, Option<String>> = [
        ("webhook_id", "7"),
        ("name", "test"),
        ("events", "*"),
        ("target_url", "http://127.0.0.1:1/"),
        ("type", "webhook"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
    .collect();
    row.insert(
        "properties".into(),
        Some(serde_json::json!({"blob": "p".repeat(40_000)}).to_string()),
    );
    let with_properties = Arc::new(Webhook::from_row(&WebhookRow(row)).unwrap());
    let plain = hook("http://127.0.0.1:1/", WebhookState::Active);
    let mut event = crate::events::ChangeEvent::sample("item", crate::events::Operation::Created);
    event.key_columns = vec!["id".into()];
    event.field_values = serde_json::json!({"id": 1, "big": "b".repeat(40_000)})
        .as_object()
        .cloned()
        .unwrap();
    let max = 64 * 1024;
    let intake = EventIntake::new(&event, "D", max);
    let mut checkpoint = Checkpoint::new(Lsn(1));
    let txn = checkpoint.begin(std::time::SystemTime::now());
    // Fits as it is: parked as the change's parts and the hook's name.
    let shared = intake.job(Arc::clone(&plain), Uuid::from_u128(1), txn.ticket());
    assert_eq!(reassembled(&shared), (shared.body.clone(), false, false));
    // Its properties push it over: its own copy leaves out `big`; parked
    // as the change's parts, its own values and its properties by name.
    let own = intake.job(with_properties, Uuid::from_u128(2), txn.ticket());
    assert!(own.body.len() <= max);
    let doc: serde_json::Value = serde_json::from_slice(&own.body).unwrap();
    assert_eq!(doc["MissingColumns"], serde_json::json!(["big"]));
    assert_eq!(reassembled(&own), (own.body.clone(), true, true));
    assert_eq!(
        own.park_size().body,
        (own.body.len() - ",\"Properties\":".len() - 40_011) as i64,
        "its bytes without its properties"
    );
}
