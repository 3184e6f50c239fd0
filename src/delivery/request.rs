//! The request one event makes to one hook: body and headers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::signing::{self, SigningKey};
use crate::events::ChangeEvent;
use crate::registry::Webhook;

/// The parts of a body that are the same for every hook an event goes
/// to, in the contract's field order, each already JSON. A body is
/// `{"EventId":"<id>"` + `head` + the hook's name + `fields` +
/// (`,"Properties":` + the hook's properties) + `tail`; parked events
/// store these parts once per change and the per-hook rest beside it
/// (sql/schema.sql's `parked_event` view joins them the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBody {
    /// `","Timestamp":...,"ChangedByAssociateId":7,"WebhookName":`
    pub head: String,
    /// `,"FieldValues":{...},"MissingColumns":[...]` and `,"Values":{...}`
    pub fields: String,
    /// `,"Table":"public.contact","Lsn":"0/16B3748"}`
    pub tail: String,
}

/// What a body holds of its hook, as JSON: its name and Properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookPart {
    /// A JSON string.
    pub name: String,
    /// A JSON object, when the hook has properties.
    pub properties: Option<String>,
}

impl HookPart {
    pub fn of(hook: &Webhook) -> HookPart {
        HookPart {
            name: json_text(&hook.name),
            properties: hook.properties.as_ref().map(json_text),
        }
    }
}

/// Serialising these types (strings, maps, numbers) cannot fail.
fn json_text<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("body part serialises")
}

/// Append `"Key":value` (after a comma unless first).
fn member<T: Serialize + ?Sized>(out: &mut String, key: &str, value: &T) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    out.push_str(&json_text(value));
}

impl SharedBody {
    pub fn of(event: &ChangeEvent, context_identifier: &str) -> SharedBody {
        let mut head = String::with_capacity(256);
        head.push('"');
        member(&mut head, "Timestamp", &event.timestamp());
        member(&mut head, "Changes", &event.changes);
        member(&mut head, "ChangesExact", &event.changes_exact);
        member(&mut head, "Event", &event.event);
        member(&mut head, "PrimaryKey", &event.primary_key);
        member(&mut head, "Entity", &event.entity);
        member(&mut head, "ContextIdentifier", context_identifier);
        member(
            &mut head,
            "ChangedByAssociateId",
            &event.changed_by_associate_id,
        );
        head.push_str(",\"WebhookName\":");
        let mut fields = String::with_capacity(event.field_values_len_bound().min(1 << 20) + 64);
        member(&mut fields, "FieldValues", &event.field_values);
        member(&mut fields, "MissingColumns", &event.missing_columns);
        if let Some(values) = &event.values {
            member(&mut fields, "Values", values);
        }
        let mut tail = String::with_capacity(64);
        member(&mut tail, "Table", &event.table);
        member(&mut tail, "Lsn", &event.txn.commit_lsn.to_string());
        // Only on rows sent by `walhook backfill`: its backfill_id.
        if let Some(backfill) = event.backfill {
            member(&mut tail, "Backfill", &backfill);
        }
        tail.push('}');
        SharedBody { head, fields, tail }
    }

    /// The body for one hook, and where its parts lie in it.
    pub fn assemble(&self, event_id: Uuid, hook: &HookPart) -> (Bytes, PartsLayout) {
        let (body, layout) = assemble_parts(
            event_id,
            &BodyParts {
                head: self.head.as_bytes(),
                name: hook.name.as_bytes(),
                fields: self.fields.as_bytes(),
                properties: hook.properties.as_deref().map(str::as_bytes),
                tail: self.tail.as_bytes(),
            },
        );
        (Bytes::from(body), layout)
    }
}

/// A body's parts, as JSON text: the change's shared `head`, `fields` and
/// `tail` and the hook's `name` and `properties`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyParts<'a> {
    pub head: &'a [u8],
    pub name: &'a [u8],
    pub fields: &'a [u8],
    pub properties: Option<&'a [u8]>,
    pub tail: &'a [u8],
}

/// `{"EventId":"` and the id's 36 characters: where `head` starts.
const HEAD_START: usize = 12 + 36;
const PROPERTIES_KEY: &[u8] = b",\"Properties\":";

/// Where the parts lie in a body assembled from them. A queued job keeps
/// this instead of a second copy of the shared parts (which its share of
/// the byte budget would not count); parking it takes them from the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartsLayout {
    head_end: usize,
    fields_start: usize,
    fields_end: usize,
    tail_start: usize,
}

impl PartsLayout {
    /// The parts of `body`, the body this layout was made with; None for
    /// another body too short for it.
    pub fn parts<'a>(&self, body: &'a [u8]) -> Option<BodyParts<'a>> {
        let properties = body.get(self.fields_end..self.tail_start)?;
        Some(BodyParts {
            head: body.get(HEAD_START..self.head_end)?,
            name: body.get(self.head_end..self.fields_start)?,
            fields: body.get(self.fields_start..self.fields_end)?,
            properties: if properties.is_empty() {
                None
            } else {
                Some(properties.strip_prefix(PROPERTIES_KEY)?)
            },
            tail: body.get(self.tail_start..)?,
        })
    }
}

/// A body from its parts, in the contract's field order.
pub fn assemble_parts(event_id: Uuid, parts: &BodyParts<'_>) -> (Vec<u8>, PartsLayout) {
    let properties = parts
        .properties
        .map_or(0, |p| p.len() + PROPERTIES_KEY.len());
    let mut body = Vec::with_capacity(
        HEAD_START
            + parts.head.len()
            + parts.name.len()
            + parts.fields.len()
            + properties
            + parts.tail.len(),
    );
    body.extend_from_slice(b"{\"EventId\":\"");
    body.extend_from_slice(
        event_id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    body.extend_from_slice(parts.head);
    let head_end = body.len();
    body.extend_from_slice(parts.name);
    let fields_start = body.len();
    body.extend_from_slice(parts.fields);
    let fields_end = body.len();
    if let Some(p) = parts.properties {
        body.extend_from_slice(PROPERTIES_KEY);
        body.extend_from_slice(p);
    }
    let tail_start = body.len();
    body.extend_from_slice(parts.tail);
    let layout = PartsLayout {
        head_end,
        fields_start,
        fields_end,
        tail_start,
    };
    (body, layout)
}

/// Where a queued job finds its change's shared body parts, should it be
/// parked.
#[derive(Debug, Clone)]
pub enum SharedParts {
    /// In its own body, which was assembled from them.
    InBody(PartsLayout),
    /// Kept apart: the body was rendered for this hook alone (rare).
    Apart(Arc<SharedBody>),
}

/// A hook's body of an event: assembled from the event's shared parts, or
/// (`Own`) rendered for this hook alone because its Properties or name
/// pushed the body over the bound and some values were left out.
pub enum HookBody {
    Shared(Bytes, PartsLayout),
    Own(Bytes),
}

impl HookBody {
    /// The body, and where a parked job finds the `shared` parts it was
    /// made from.
    pub fn for_job(self, shared: &SharedBody) -> (Bytes, SharedParts) {
        match self {
            HookBody::Shared(body, layout) => (body, SharedParts::InBody(layout)),
            HookBody::Own(body) => (body, SharedParts::Apart(Arc::new(shared.clone()))),
        }
    }
}

/// The body of `event` for `hook`, from the event's `shared` parts unless
/// it is over `max_bytes`.
pub fn hook_body(
    shared: &SharedBody,
    event: &ChangeEvent,
    event_id: Uuid,
    hook: &Webhook,
    context_identifier: &str,
    max_bytes: usize,
) -> HookBody {
    let (body, layout) = shared.assemble(event_id, &HookPart::of(hook));
    if body.len() <= max_bytes || event.field_values.is_empty() {
        return HookBody::Shared(body, layout);
    }
    // This hook's Properties or name made the body too large: fit this
    // hook's copy.
    let mut event = event.clone();
    let over = body.len() - max_bytes;
    let budget = event.field_values_len().saturating_sub(over);
    leave_out_largest(&mut event, budget);
    HookBody::Own(
        SharedBody::of(&event, context_identifier)
            .assemble(event_id, &HookPart::of(hook))
            .0,
    )
}

/// The bytes a value takes in a body, counted without building the text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl ChangeEvent {
    /// The bytes FieldValues takes in a body.
    pub fn field_values_len(&self) -> usize {
        self.field_values
            .iter()
            .map(|(k, v)| k.len() + 4 + json_len(v))
            .sum()
    }

    /// At least [`field_values_len`](Self::field_values_len), without
    /// serialising the strings and numbers that most rows are made of (a
    /// string's JSON takes at most six bytes per byte, plus its quotes):
    /// the cheap test every event passes before the exact one.
    pub fn field_values_len_bound(&self) -> usize {
        self.field_values
            .iter()
            .map(|(k, v)| {
                k.len()
                    + 4
                    + match v {
                        Value::String(s) => 6 * s.len() + 2,
                        Value::Null | Value::Bool(_) => 5,
                        other => json_len(other),
                    }
            })
            .sum()
    }
}

/// Leave the largest values out of `event.field_values` until they take at
/// most `budget` bytes, naming them in `MissingColumns` (the rule for an
/// unchanged TOAST value: a receiver that needs them reads the row).
/// Returns the columns left out.
pub fn leave_out_largest(event: &mut ChangeEvent, budget: usize) -> Vec<String> {
    let mut sizes: Vec<(usize, String)> = event
        .field_values
        .iter()
        .map(|(k, v)| (k.len() + 4 + json_len(v), k.clone()))
        .collect();
    let mut total: usize = sizes.iter().map(|(n, _)| n).sum();
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut left_out = Vec::new();
    for (size, column) in sizes {
        if total <= budget {
            break;
        }
        event.field_values.remove(&column);
        total -= size;
        left_out.push(column);
    }
    for column in &left_out {
        if !event.missing_columns.contains(column) {
            event.missing_columns.push(column.clone());
        }
    }
    left_out
}

/// What a body holds besides FieldValues, at most (names, key, Changes,
/// Values): room kept when an event is fitted before any hook is known.
pub const BODY_FRAME_BYTES: usize = 64 * 1024;

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
    // Sized once: walhook's own nine, and the hook's.
    let mut h = HeaderMap::with_capacity(9 + hook.headers.len());
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;
    use crate::events::{Operation, WebhookRow};

    /// The body of `event` for `hook`; the same bytes on every attempt. A body
    /// over `max_bytes` leaves out its largest values, as
    /// [`leave_out_largest`] does.
    fn event_body(
        event: &ChangeEvent,
        event_id: Uuid,
        hook: &Webhook,
        context_identifier: &str,
        max_bytes: usize,
    ) -> Bytes {
        let shared = SharedBody::of(event, context_identifier);
        match hook_body(
            &shared,
            event,
            event_id,
            hook,
            context_identifier,
            max_bytes,
        ) {
            HookBody::Shared(b, _) | HookBody::Own(b) => b,
        }
    }

    /// The contract's body in one piece, in its field order: what the
    /// assembled parts must equal byte for byte.
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

    fn in_one_piece(event: &ChangeEvent, event_id: Uuid, hook: &Webhook, context: &str) -> Vec<u8> {
        serde_json::to_vec(&Body {
            event_id,
            timestamp: event.timestamp(),
            changes: &event.changes,
            changes_exact: event.changes_exact,
            event: &event.event,
            primary_key: &event.primary_key,
            entity: &event.entity,
            context_identifier: context,
            changed_by_associate_id: event.changed_by_associate_id,
            webhook_name: &hook.name,
            field_values: &event.field_values,
            missing_columns: &event.missing_columns,
            values: event.values.as_ref(),
            properties: hook.properties.as_ref(),
            table: &event.table,
            lsn: event.txn.commit_lsn.to_string(),
        })
        .unwrap()
    }

    #[test]
    fn a_body_assembled_from_shared_parts_is_the_contract_body_byte_for_byte() {
        let mut deleted = event(json!({"id": 7, "note": "a\u{1}\"b\\ ä \u{2028}", "n": 1.50}));
        deleted.values = json!({"id": 7}).as_object().cloned();
        deleted.missing_columns = vec!["blob".into()];
        let events = [
            event(json!({})),
            event(json!({"id": 1, "x": [1, null, {"y": "z"}]})),
            deleted,
        ];
        let hooks = [
            hook(None),
            hook(Some(
                r#"{"tenant": "t\u0001", "n": 1.50, "deep": {"a": [true]}}"#,
            )),
        ];
        for e in &events {
            let shared = SharedBody::of(e, "Ctx \"1\"");
            for (n, h) in hooks.iter().enumerate() {
                let id = Uuid::from_u128(0xabcdef + n as u128);
                let part = HookPart::of(h);
                let (assembled, layout) = shared.assemble(id, &part);
                let whole = in_one_piece(e, id, h, "Ctx \"1\"");
                assert_eq!(
                    std::str::from_utf8(&assembled).unwrap(),
                    std::str::from_utf8(&whole).unwrap()
                );
                // A parked job finds the very parts in its body.
                let parts = layout.parts(&assembled).unwrap();
                assert_eq!(parts.head, shared.head.as_bytes());
                assert_eq!(parts.name, part.name.as_bytes());
                assert_eq!(parts.fields, shared.fields.as_bytes());
                assert_eq!(
                    parts.properties,
                    part.properties.as_deref().map(str::as_bytes)
                );
                assert_eq!(parts.tail, shared.tail.as_bytes());
                assert_eq!(assemble_parts(id, &parts).0, assembled.to_vec());
            }
        }
    }

    fn event(fields: Value) -> ChangeEvent {
        ChangeEvent {
            changes: vec!["id".into(), "small".into(), "huge".into(), "medium".into()],
            field_values: fields.as_object().cloned().unwrap_or_default(),
            ..ChangeEvent::sample("big", Operation::Created)
        }
    }

    fn hook(properties: Option<&str>) -> Webhook {
        let row = [
            ("webhook_id", Some("1")),
            ("name", Some("h")),
            ("events", Some("*")),
            ("target_url", Some("https://example.com/")),
            ("type", Some("webhook")),
            ("state", Some("1")),
            ("properties", properties),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
        .collect();
        Webhook::from_row(&WebhookRow(row)).unwrap()
    }

    /// Prepared keys sign exactly as keys prepared per attempt; a previous
    /// secret adds its signature to `webhook-signature` only, and the same
    /// secret given as both signs once.
    #[test]
    fn headers_sign_with_prepared_keys_and_a_rotated_out_secret() {
        let mut hook = hook(None);
        hook.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned());
        let event_id = Uuid::from_u128(7);
        let body = br#"{"Event":"contact.created"}"#;
        let signed = |keys: &SigningKeys<'_>| {
            headers(
                &hook,
                keys,
                "contact.created",
                event_id,
                body,
                0,
                1_700_000_000,
            )
        };
        let value = |h: &HeaderMap, name: &str| h.get(name).unwrap().to_str().unwrap().to_owned();
        let prepared = SigningKey::new(hook.secret.as_deref().unwrap());
        let alone = signed(&SigningKeys::default());
        let with_prepared = signed(&SigningKeys {
            key: Some(&prepared),
            previous_secret: None,
        });
        assert_eq!(alone, with_prepared);
        let id = event_id.to_string();
        let current = signing::standard_webhooks_signature(
            hook.secret.as_deref().unwrap(),
            &id,
            "1700000000",
            body,
        );
        assert_eq!(value(&alone, "webhook-signature"), current);
        assert_eq!(
            value(&alone, "x-superoffice-signature"),
            signing::superoffice_signature(hook.secret.as_deref().unwrap(), body)
        );

        let rotating = signed(&SigningKeys {
            key: Some(&prepared),
            previous_secret: Some("old secret"),
        });
        let old = signing::standard_webhooks_signature("old secret", &id, "1700000000", body);
        assert_eq!(
            value(&rotating, "webhook-signature"),
            format!("{current} {old}")
        );
        assert_eq!(
            value(&rotating, "x-superoffice-signature"),
            value(&alone, "x-superoffice-signature")
        );

        let same_twice = signed(&SigningKeys {
            key: Some(&prepared),
            previous_secret: hook.secret.as_deref(),
        });
        assert_eq!(value(&same_twice, "webhook-signature"), current);
    }

    #[test]
    fn an_oversized_body_leaves_out_its_largest_values_and_names_them() {
        // Each \u{1} becomes six bytes of JSON: the counted size, not the
        // text's, decides.
        let huge = "\u{1}".repeat(200_000);
        let medium = "m".repeat(30_000);
        let e = event(json!({"id": 1, "small": "s", "huge": huge, "medium": medium}));
        let max = 128 * 1024;
        let body = event_body(&e, Uuid::nil(), &hook(None), "Default", max);
        assert!(body.len() <= max, "{} bytes", body.len());
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["MissingColumns"], json!(["huge"]));
        assert_eq!(doc["FieldValues"]["medium"], json!(medium));
        assert_eq!(doc["FieldValues"]["small"], json!("s"));
        // A body within the bound is untouched.
        let small = event(json!({"id": 1, "small": "s"}));
        let doc: Value =
            serde_json::from_slice(&event_body(&small, Uuid::nil(), &hook(None), "D", max))
                .unwrap();
        assert_eq!(doc["MissingColumns"], json!([]));
    }

    #[test]
    fn the_cheap_bound_is_never_below_the_exact_length() {
        let e = event(json!({
            "id": 1, "small": "s", "ctl": "\u{1}\u{2}\n\"", "n": null, "b": true,
            "x": 1.5e300, "doc": {"a": [1, "ä"]}, "empty": ""
        }));
        assert!(e.field_values_len_bound() >= e.field_values_len());
        // Escapes are what the bound must cover: six bytes per control byte.
        let worst = event(json!({"ctl": "\u{1}".repeat(1000)}));
        assert_eq!(worst.field_values_len(), 3 + 4 + 6 * 1000 + 2);
        assert!(worst.field_values_len_bound() >= worst.field_values_len());
    }

    #[test]
    fn a_hook_whose_properties_push_the_body_over_gets_a_smaller_copy() {
        let properties = json!({"blob": "p".repeat(100_000)}).to_string();
        let e = event(json!({"id": 1, "medium": "m".repeat(60_000)}));
        let max = 128 * 1024;
        let body = event_body(&e, Uuid::nil(), &hook(Some(&properties)), "D", max);
        assert!(body.len() <= max, "{} bytes", body.len());
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["MissingColumns"], json!(["medium"]));
        // The event itself is unchanged for other hooks.
        assert!(e.missing_columns.is_empty());
    }
}
