//! The request one event makes to one hook: body and headers.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::signing;
use crate::events::ChangeEvent;
use crate::registry::Webhook;

/// The JSON body, in the contract's field order.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    event_id: Uuid,
    timestamp: String,
    changes: &'a [String],
    changes_exact: bool,
    event: &'a str,
    primary_key: &'a Value,
    entity: &'a str,
    context_identifier: &'a str,
    changed_by_associate_id: i64,
    webhook_name: &'a str,
    field_values: &'a Map<String, Value>,
    missing_columns: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a Map<String, Value>>,
    table: &'a str,
    lsn: String,
}

/// The body of `event` for `hook`; the same bytes on every attempt.
pub fn event_body(
    event: &ChangeEvent,
    event_id: Uuid,
    hook: &Webhook,
    context_identifier: &str,
) -> Bytes {
    let body = Body {
        event_id,
        timestamp: event.timestamp(),
        changes: &event.changes,
        changes_exact: event.changes_exact,
        event: &event.event,
        primary_key: &event.primary_key,
        entity: &event.entity,
        context_identifier,
        changed_by_associate_id: event.changed_by_associate_id,
        webhook_name: &hook.name,
        field_values: &event.field_values,
        missing_columns: &event.missing_columns,
        values: event.values.as_ref(),
        properties: hook.properties.as_ref(),
        table: &event.table,
        lsn: event.txn.commit_lsn.to_string(),
    };
    // Serialising these types (strings, maps, numbers) cannot fail.
    Bytes::from(serde_json::to_vec(&body).expect("event body serialises"))
}

/// The body of the `test` event sent by `walhook webhook test`.
pub fn test_body(event_id: Uuid, hook: &Webhook, context_identifier: &str) -> Bytes {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let mut body = serde_json::json!({
        "EventId": event_id,
        "Timestamp": now,
        "Changes": [],
        "ChangesExact": true,
        "Event": "test",
        "PrimaryKey": 0,
        "Entity": "test",
        "ContextIdentifier": context_identifier,
        "ChangedByAssociateId": 0,
        "WebhookName": hook.name,
    });
    if let Some(props) = &hook.properties {
        body["Properties"] = Value::Object(props.clone());
    }
    Bytes::from(body.to_string())
}

/// Headers of one attempt. `retry` is 0 on the first try; `unix_time` is
/// the time of this attempt, so a late delivery is not rejected as stale.
pub fn headers(
    hook: &Webhook,
    event: &str,
    event_id: Uuid,
    body: &[u8],
    retry: u32,
    unix_time: u64,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    // The hook's own headers may add to walhook's but never replace one,
    // not even one walhook leaves out for this hook (no secret, no
    // signature header of the hook's making).
    for (name, value) in &hook.headers {
        if !is_reserved(name.as_str()) {
            h.insert(name.clone(), value.clone());
        }
    }
    let id = event_id.to_string();
    let set = |h: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
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
    set(&mut h, "x-superoffice-event", event);
    set(&mut h, "x-superoffice-eventid", &id);
    set(&mut h, "x-superoffice-retry", &retry.to_string());
    if let Some(secret) = &hook.secret {
        let ts = unix_time.to_string();
        set(
            &mut h,
            "x-superoffice-signature",
            &signing::superoffice_signature(secret, body),
        );
        set(&mut h, "webhook-id", &id);
        set(&mut h, "webhook-timestamp", &ts);
        set(
            &mut h,
            "webhook-signature",
            &signing::standard_webhooks_signature(secret, &id, &ts, body),
        );
    }
    h
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
