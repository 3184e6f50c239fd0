//! Delivery: signed POSTs to the hooks, with retries.
//!
//! Each hook has its own lanes (tasks); an event goes to the lane its row
//! hashes to, so events of one row keep commit order while other rows go
//! concurrently, and a slow hook only ever waits on itself. Request bodies
//! in flight are bounded by a byte budget: when it is spent the reader
//! waits, which stops reading WAL (back-pressure) instead of growing.

pub mod request;
pub mod signing;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;
use reqwest::StatusCode;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::checkpoint::Ticket;
use crate::config::{DeliveryConfig, Ordering};
use crate::registry::{Webhook, WebhookState};
use crate::store::{truncate_chars, UsageBook, LAST_ERROR_MAX_CHARS};

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Any 2xx.
    Delivered(StatusCode),
    /// 410: the receiver asks to be stopped.
    Gone,
    /// Anything else; `error` is what `last_error` records.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}

/// One event addressed to one hook.
pub struct Job {
    pub hook: Arc<Webhook>,
    pub event: String,
    pub event_id: Uuid,
    pub ordering_key: String,
    pub body: Bytes,
    pub ticket: Ticket,
}

struct Queued {
    job: Job,
    /// Returned to the budget when the job is done.
    _budget: OwnedSemaphorePermit,
}

/// Builds the HTTP client used for every target.
pub fn http_client(config: &DeliveryConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.timeout)
        // A redirect is reported as a failure, never followed: the hook's
        // URL is what the DBA configured.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(config.concurrency_per_webhook)
        .build()?)
}

/// Sends jobs to the hooks' lanes.
pub struct Dispatcher {
    http: reqwest::Client,
    config: Arc<DeliveryConfig>,
    usage: UsageBook,
    budget: Arc<Semaphore>,
    budget_max: u32,
    lanes: HashMap<i32, Vec<mpsc::UnboundedSender<Queued>>>,
    tasks: JoinSet<()>,
}

impl Dispatcher {
    pub fn new(config: DeliveryConfig, usage: UsageBook) -> anyhow::Result<Dispatcher> {
        let budget_max = u32::try_from(config.max_in_flight_bytes).unwrap_or(u32::MAX);
        Ok(Dispatcher {
            http: http_client(&config)?,
            budget: Arc::new(Semaphore::new(budget_max as usize)),
            budget_max,
            config: Arc::new(config),
            usage,
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
        })
    }

    /// Queue a job; waits while the in-flight byte budget is spent.
    pub async fn dispatch(&mut self, job: Job) {
        // A body larger than the whole budget still goes, alone.
        let cost = u32::try_from(job.body.len().max(1))
            .unwrap_or(u32::MAX)
            .min(self.budget_max);
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(cost)
            .await
            .expect("the budget semaphore is never closed");
        let lane_count = match self.config.ordering {
            Ordering::Webhook => 1,
            Ordering::Row => self.config.concurrency_per_webhook,
        };
        let lanes = self.lanes.entry(job.hook.id).or_insert_with(|| {
            (0..lane_count)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.tasks.spawn(run_lane(
                        rx,
                        self.http.clone(),
                        Arc::clone(&self.config),
                        self.usage.clone(),
                    ));
                    tx
                })
                .collect()
        });
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        job.ordering_key.hash(&mut hasher);
        let lane = (hasher.finish() % lanes.len() as u64) as usize;
        if let Err(mpsc::error::SendError(queued)) = lanes[lane].send(Queued {
            job,
            _budget: permit,
        }) {
            // Lanes only end when their sender is dropped, so this is a bug;
            // the ticket stays unsettled and the event is replayed later.
            tracing::error!(
                webhook_id = queued.job.hook.id,
                "delivery lane ended unexpectedly"
            );
        }
    }

    /// Bytes of request bodies currently queued or in flight.
    pub fn in_flight_bytes(&self) -> u64 {
        u64::from(self.budget_max) - self.budget.available_permits() as u64
    }

    /// Stop accepting jobs and wait up to `timeout` for the queued ones.
    /// Whatever is unfinished then stays unconfirmed and is redelivered
    /// after the next start.
    pub async fn drain(&mut self, timeout: Duration) -> bool {
        self.lanes.clear();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        let finished = tokio::time::timeout(timeout, all_done).await.is_ok();
        if !finished {
            self.tasks.abort_all();
        }
        finished
    }
}

async fn run_lane(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    http: reqwest::Client,
    config: Arc<DeliveryConfig>,
    usage: UsageBook,
) {
    while let Some(Queued { job, _budget }) = rx.recv().await {
        deliver(&http, &config, &usage, &job).await;
        job.ticket.settle();
    }
}

/// Deliver one job, retrying until it is delivered or the hook is gone.
/// Nothing is dropped on failure: the slot waits for this event.
async fn deliver(http: &reqwest::Client, config: &DeliveryConfig, usage: &UsageBook, job: &Job) {
    let hook_id = job.hook.id;
    let mut retry: u32 = 0;
    loop {
        match attempt(http, config, job, retry).await {
            DeliveryOutcome::Delivered(_) => {
                usage.success(hook_id);
                return;
            }
            DeliveryOutcome::Gone => {
                usage.failure(hook_id, "410 Gone: the receiver asked to stop this hook");
                usage.set_state(hook_id, WebhookState::Stopped);
                tracing::warn!(webhook_id = hook_id, url = %job.hook.target_url,
                    "target answered 410 Gone; webhook state set to Stopped (2)");
                return;
            }
            DeliveryOutcome::Failed { error, retry_after } => {
                usage.failure(hook_id, &error);
                let wait = backoff(retry + 1, config.max_backoff);
                let wait = retry_after
                    .map_or(wait, |ra| ra.max(wait))
                    .min(config.max_backoff);
                tracing::warn!(webhook_id = hook_id, event_id = %job.event_id, retry,
                    "delivery failed, next attempt in {wait:?}: {}", first_line(&error));
                tokio::time::sleep(wait).await;
                retry = retry.saturating_add(1);
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Wait before attempt `n` (1-based retry count). Each cycle is three
/// attempts at 0 s, 1 s and 4 s from its start, as SuperOffice does; cycles
/// after the first start after a growing, jittered pause.
pub fn backoff(n: u32, max: Duration) -> Duration {
    match n % 3 {
        1 => Duration::from_secs(1),
        2 => Duration::from_secs(3),
        _ => {
            let cycle = n / 3; // 1 for the pause before the second cycle
            let base = Duration::from_secs(10).saturating_mul(1u32 << cycle.min(16));
            let jitter = rand::rng().random_range(0.8..1.2);
            base.mul_f64(jitter).min(max)
        }
    }
}

/// One POST. Never panics on anything the target does.
pub async fn attempt(
    http: &reqwest::Client,
    config: &DeliveryConfig,
    job: &Job,
    retry: u32,
) -> DeliveryOutcome {
    if let Err(refusal) = check_target(config, &job.hook.target_url) {
        return DeliveryOutcome::Failed {
            error: refusal,
            retry_after: None,
        };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let headers = request::headers(&job.hook, &job.event, job.event_id, &job.body, retry, now);
    let sent = http
        .post(job.hook.target_url.clone())
        .headers(headers)
        .body(job.body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return DeliveryOutcome::Failed {
                error: transport_error(&e),
                retry_after: None,
            }
        }
    };
    let status = response.status();
    if status.is_success() {
        // Read the body so the connection returns to the pool.
        let _ = response.bytes().await;
        return DeliveryOutcome::Delivered(status);
    }
    if status == StatusCode::GONE {
        return DeliveryOutcome::Gone;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut error = format!(
        "HTTP {} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in response.headers() {
        error.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    error.push('\n');
    // Only as much of the body as last_error can hold is read.
    let mut response = response;
    while error.len() < LAST_ERROR_MAX_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => error.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    DeliveryOutcome::Failed {
        error: truncate_chars(&error, LAST_ERROR_MAX_CHARS),
        retry_after,
    }
}

/// A transport error with its causes (connect refused, timeout, TLS, ...).
fn transport_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out: ".to_owned()
    } else if e.is_connect() {
        "connection failed: ".to_owned()
    } else {
        String::new()
    };
    text.push_str(&e.to_string());
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After`: seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_parse(value.trim())?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

fn httpdate_parse(value: &str) -> Option<SystemTime> {
    // IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT"; humantime parses the
    // RFC 3339 form, so rebuild one.
    let parts: Vec<&str> = value.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let month = match parts[2] {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let rfc3339 = format!("{}-{month:02}-{:0>2}T{}Z", parts[3], parts[1], parts[4]);
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// The target policy: `https://` unless http is allowed, and no loopback,
/// private or link-local address unless those are allowed.
pub fn check_target(config: &DeliveryConfig, url: &reqwest::Url) -> Result<(), String> {
    if url.scheme() == "http" && !config.allow_http {
        return Err(format!(
            "refused: {url} is plain http:// (set delivery.allow_http = true to allow it)"
        ));
    }
    if !config.allow_private_targets {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                Some(IpAddr::from([127, 0, 0, 1]))
            }
            _ => None,
        };
        if let Some(ip) = ip.filter(|ip| !is_public(ip)) {
            return Err(format!(
                "refused: {url} is a non-public address {ip} (set delivery.allow_private_targets = true to allow it)"
            ));
        }
    }
    Ok(())
}

pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert!(parse_retry_after("soon").is_none());
    }

    #[test]
    fn cycle_schedule() {
        let max = Duration::from_secs(300);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(2, max), Duration::from_secs(3));
        let pause = backoff(3, max);
        assert!(pause >= Duration::from_secs(16) && pause <= Duration::from_secs(24));
        assert_eq!(backoff(4, max), Duration::from_secs(1));
        assert!(backoff(300, max) <= max);
    }

    #[test]
    fn target_policy() {
        let strict = DeliveryConfig::default();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(check_target(&strict, &url("https://example.com/x")).is_ok());
        assert!(check_target(&strict, &url("http://example.com/x"))
            .unwrap_err()
            .contains("allow_http"));
        assert!(check_target(&strict, &url("https://127.0.0.1/x"))
            .unwrap_err()
            .contains("allow_private_targets"));
        assert!(check_target(&strict, &url("https://[fe80::1]/x")).is_err());
        assert!(check_target(&strict, &url("https://10.1.2.3/x")).is_err());
        let open = DeliveryConfig {
            allow_http: true,
            allow_private_targets: true,
            ..DeliveryConfig::default()
        };
        assert!(check_target(&open, &url("http://127.0.0.1:9/x")).is_ok());
    }
}
