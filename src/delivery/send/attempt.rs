//! One HTTP attempt: the POST, and what its answer means.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use uuid::Uuid;

use crate::config::DeliveryConfig;
use crate::delivery::hook::settings::HookSettings;
use crate::delivery::hook::usage::UsageBook;
use crate::delivery::http::{check_target, read_body_prefix, tls, SendError, Sender};
use crate::delivery::request::{self, SigningKey, SigningKeys};
use crate::registry::Webhook;
use crate::text::{truncate_chars, LAST_ERROR_MAX_CHARS};

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
        kind: FailureKind,
        /// What went wrong, for the failure log.
        cause: FailureCause,
    },
}

/// Why an attempt failed, as the failure log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The target answered with this (non-2xx, non-410) status.
    Status(StatusCode),
    Timeout,
    /// The TCP connection (or the name's resolution) failed.
    Connect,
    Tls,
    /// The target policy refused it: nothing was sent.
    Refused,
    /// Any other transport failure (a reset, a broken answer).
    Transport,
}

impl FailureCause {
    /// The failure log's `error_kind`.
    pub fn name(self) -> &'static str {
        match self {
            FailureCause::Status(_) => "status",
            FailureCause::Timeout => "timeout",
            FailureCause::Connect => "connect",
            FailureCause::Tls => "tls",
            FailureCause::Refused => "refused",
            FailureCause::Transport => "transport",
        }
    }
}

/// What a failed attempt says about the target's capacity, for the
/// hook's concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Refused by the target policy: nothing was sent.
    NotSent,
    /// The target answered with an error status.
    Answered,
    /// 503 without Retry-After, a timeout, a failed connection or an
    /// HTTP/2 request refused unprocessed on every resend: the target is
    /// overloaded or unreachable, so it gets fewer requests at once.
    Overloaded,
    /// 429, or 503 with Retry-After: the target asks to be sent less. The
    /// whole hook waits as asked, and it does not count as an error.
    Throttled,
}

/// What `last_error` says of a 410.
pub const GONE_ERROR: &str = "HTTP 410 Gone: the receiver asked to stop this hook";

impl DeliveryOutcome {
    /// Count the attempt in the hook's statistics: a 2xx is a success, a
    /// throttling answer a call but no error, anything else (410
    /// included) an error with its text. The state a 410 or too many
    /// errors leads to is decided by the caller.
    pub fn record_usage(&self, usage: &UsageBook, webhook_id: i32) {
        match self {
            DeliveryOutcome::Delivered(_) => usage.success(webhook_id),
            DeliveryOutcome::Gone => usage.failure(webhook_id, GONE_ERROR),
            DeliveryOutcome::Failed {
                kind: FailureKind::Throttled,
                ..
            } => usage.throttled(webhook_id),
            DeliveryOutcome::Failed { error, .. } => usage.failure(webhook_id, error),
        }
    }
}

/// What one attempt sends.
pub struct Attempt<'a> {
    pub hook: &'a Webhook,
    pub event: &'a str,
    pub event_id: Uuid,
    pub body: &'a Bytes,
    pub retry: u32,
    /// The hook's `webhook_control` settings (a rotated-out secret).
    pub settings: &'a HookSettings,
    /// The hook's secret's keys, prepared once per hook; `None` prepares
    /// them for this attempt.
    pub key: Option<&'a SigningKey>,
    /// The W3C trace context the request carries.
    pub trace: TraceHeaders<'a>,
}

/// `traceparent` and `tracestate`, when the attempt has a trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceHeaders<'a> {
    pub traceparent: Option<&'a HeaderValue>,
    pub tracestate: Option<&'a HeaderValue>,
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// One POST. Never panics on anything the target does.
pub async fn attempt(
    http: Sender<'_>,
    config: &DeliveryConfig,
    job: &Attempt<'_>,
) -> DeliveryOutcome {
    if let Err(refusal) = check_target(config, &job.hook.target_url) {
        return DeliveryOutcome::Failed {
            error: refusal.to_string(),
            retry_after: None,
            kind: FailureKind::NotSent,
            cause: FailureCause::Refused,
        };
    }
    let started = tokio::time::Instant::now();
    let at = SystemTime::now();
    let now = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // The old secret's expiry is checked now, at signing, whenever the
    // settings were read.
    let keys = SigningKeys {
        key: job.key,
        previous_secret: job.settings.previous_secret_at(at),
    };
    let deadline = started + config.timeout;
    let headers = || {
        let mut headers = request::headers(
            job.hook,
            &keys,
            job.event,
            job.event_id,
            job.body,
            job.retry,
            now,
        );
        if let Some(parent) = job.trace.traceparent {
            headers.insert(TRACEPARENT, parent.clone());
            if let Some(state) = job.trace.tracestate {
                headers.insert(TRACESTATE, state.clone());
            }
        }
        headers
    };
    let sent = http
        .post(&job.hook.target_url, headers, job.body.clone(), deadline)
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return DeliveryOutcome::Failed {
                kind: if e.is_timeout() || e.is_connect() || e.is_refused() {
                    FailureKind::Overloaded
                } else {
                    FailureKind::Answered
                },
                cause: if e.is_timeout() {
                    FailureCause::Timeout
                } else if tls::describe_failure(
                    &e,
                    job.hook.target_url.host_str().unwrap_or_default(),
                    config,
                )
                .is_some()
                {
                    FailureCause::Tls
                } else if e.is_connect() {
                    FailureCause::Connect
                } else {
                    FailureCause::Transport
                },
                error: transport_error(&e, &job.hook.target_url, config),
                retry_after: None,
            };
        }
    };
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    if status.is_success() {
        // A short body is read so the connection returns to the pool; a
        // long one is cut, and the connection closed with it.
        let _ = read_body_prefix(&mut body, RESPONSE_PREFIX_BYTES, deadline).await;
        return DeliveryOutcome::Delivered(status);
    }
    if status == StatusCode::GONE {
        return DeliveryOutcome::Gone;
    }
    let retry_after = parts
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut error = format!(
        "HTTP {} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        error.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    error.push('\n');
    let body = read_body_prefix(&mut body, RESPONSE_PREFIX_BYTES, deadline)
        .await
        .unwrap_or_else(|e| e.into_read());
    error.push_str(&String::from_utf8_lossy(&body));
    DeliveryOutcome::Failed {
        error: storable(&truncate_chars(&error, LAST_ERROR_MAX_CHARS)),
        cause: FailureCause::Status(status),
        retry_after,
        kind: if status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
        {
            FailureKind::Throttled
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            FailureKind::Overloaded
        } else {
            FailureKind::Answered
        },
    }
}

/// The most of a response body walhook reads, success or failure: more
/// than `last_error` keeps, and a bound on what a hostile target can make
/// walhook hold.
pub const RESPONSE_PREFIX_BYTES: usize = 64 * 1024;

/// Text PostgreSQL can store: a NUL byte (from a binary response body) is
/// refused in text columns.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// A transport error with its causes (connect refused, timeout, TLS, ...);
/// a TLS failure is said in words first, naming the host. Causes never
/// carry the URL, so credentials in it stay out of `last_error`.
fn transport_error(e: &SendError, url: &url::Url, config: &DeliveryConfig) -> String {
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
    match tls::describe_failure(e, url.host_str().unwrap_or_default(), config) {
        Some(words) => format!("{words} ({text})"),
        None => text,
    }
}

/// `Retry-After`: seconds or an HTTP date (RFC 9110: the IMF-fixdate, or the
/// obsolete RFC 850 and asctime forms). A date in the past means now.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
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

    /// The three date forms RFC 9110 has recipients accept, past and future.
    #[test]
    fn retry_after_dates() {
        for past in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            " Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            assert_eq!(parse_retry_after(past), Some(Duration::ZERO), "{past:?}");
        }
        let later = SystemTime::now() + Duration::from_secs(3600);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        for invalid in [
            "",
            "-5",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "1994-11-06T08:49:37Z",
            "06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(invalid), None, "{invalid:?}");
        }
    }
}
