//! One HTTP attempt, and the target policy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::StatusCode;
use uuid::Uuid;

use super::request;
use crate::config::DeliveryConfig;
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
    },
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
        .dns_resolver(Arc::new(PolicyResolver {
            allow_private: config.allow_private_targets,
        }))
        .build()?)
}

/// Resolves host names and keeps only the addresses the policy allows, so
/// the check applies to the address actually connected to (a name that
/// resolves to a private address, or re-resolves to one later, is refused).
struct PolicyResolver {
    allow_private: bool,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(&a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "refused: {host} resolves only to non-public addresses ({}); set \
                     delivery.allow_private_targets = true to allow them",
                    list.join(", ")
                )
                .into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// What one attempt sends.
pub struct Attempt<'a> {
    pub hook: &'a Webhook,
    pub event: &'a str,
    pub event_id: Uuid,
    pub body: &'a Bytes,
    pub retry: u32,
}

/// One POST. Never panics on anything the target does.
pub async fn attempt(
    http: &reqwest::Client,
    config: &DeliveryConfig,
    job: &Attempt<'_>,
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
    let headers = request::headers(job.hook, job.event, job.event_id, job.body, job.retry, now);
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
        error: storable(&truncate_chars(&error, LAST_ERROR_MAX_CHARS)),
        retry_after,
    }
}

/// Text PostgreSQL can store: a NUL byte (from a binary response body) is
/// refused in text columns.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
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
