//! The headers of one attempt: SuperOffice's, Standard Webhooks' and the
//! hook's own, which may add to walhook's but never replace one.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use uuid::Uuid;

use super::signing::{self, SigningKey};
use crate::registry::{Webhook, MAX_HEADERS};

const X_SUPEROFFICE_EVENT: HeaderName = HeaderName::from_static("x-superoffice-event");
const X_SUPEROFFICE_EVENTID: HeaderName = HeaderName::from_static("x-superoffice-eventid");
const X_SUPEROFFICE_RETRY: HeaderName = HeaderName::from_static("x-superoffice-retry");
const X_SUPEROFFICE_SIGNATURE: HeaderName = HeaderName::from_static("x-superoffice-signature");
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Headers of one attempt. `retry` is 0 on the first try; `unix_time` is
/// the time of this attempt, so a late delivery is not rejected as stale.
/// `keys` says what signs it (the hook's secret, and a rotated-out one).
pub fn headers(
    hook: &Webhook,
    keys: &SigningKeys<'_>,
    event: &str,
    event_id: Uuid,
    body: &[u8],
    retry: u32,
    unix_time: u64,
) -> HeaderMap {
    // Sized once: walhook's own nine, and the hook's (a valid row has at
    // most MAX_HEADERS; the bound keeps a hand-made hook from asking for
    // more than a header map can hold).
    let mut h = HeaderMap::with_capacity(9 + hook.headers.len().min(MAX_HEADERS));
    // The hook's own headers may add to walhook's but never replace one,
    // not even one walhook leaves out for this hook (no secret, no
    // signature header of the hook's making).
    for (name, value) in &hook.headers {
        if !is_reserved(name.as_str()) {
            h.insert(name.clone(), value.clone());
        }
    }
    let mut id = Uuid::encode_buffer();
    let id: &str = event_id.hyphenated().encode_lower(&mut id);
    let set = |h: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("walhook/", env!("CARGO_PKG_VERSION"))),
    );
    set(&mut h, X_SUPEROFFICE_EVENT, event);
    set(&mut h, X_SUPEROFFICE_EVENTID, id);
    set(&mut h, X_SUPEROFFICE_RETRY, &retry.to_string());
    if let Some(secret) = &hook.secret {
        let built;
        let key = match keys.key {
            Some(key) => key,
            None => {
                built = SigningKey::new(secret);
                &built
            }
        };
        // The same secret twice signs once.
        let previous = keys
            .previous_secret
            .filter(|previous| previous != secret)
            .map(SigningKey::new);
        let ts = unix_time.to_string();
        set(
            &mut h,
            X_SUPEROFFICE_SIGNATURE,
            &key.superoffice_signature(body),
        );
        set(&mut h, WEBHOOK_ID, id);
        set(&mut h, WEBHOOK_TIMESTAMP, &ts);
        set(
            &mut h,
            WEBHOOK_SIGNATURE,
            &signing::standard_webhooks_signatures(key, previous.as_ref(), id, &ts, body),
        );
    }
    h
}

/// The keys an attempt is signed with.
#[derive(Default, Clone, Copy)]
pub struct SigningKeys<'a> {
    /// The hook's secret's keys, prepared once per hook; `None` prepares
    /// them from the hook's secret for this attempt.
    pub key: Option<&'a SigningKey>,
    /// A rotated-out secret still within its grace period at the attempt's
    /// time: it signs `webhook-signature` too, while
    /// `X-SuperOffice-Signature`, one value by definition, is the current
    /// secret's.
    pub previous_secret: Option<&'a str>,
}

/// Headers that only walhook (or the HTTP layer) sets.
fn is_reserved(name: &str) -> bool {
    name.starts_with("x-superoffice-")
        || name.starts_with("webhook-")
        || matches!(
            name,
            "content-type" | "user-agent" | "content-length" | "host" | "transfer-encoding"
        )
}
