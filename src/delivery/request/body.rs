//! The body one event sends to one hook, rendered once per event for the
//! parts its hooks share.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::events::ChangeEvent;
use crate::registry::{PropertiesText, Webhook};

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
    /// A JSON object, when the hook has properties: rendered once per
    /// version of the hook's row, shared by its events.
    pub properties: Option<Arc<PropertiesText>>,
}

impl HookPart {
    pub fn of(hook: &Webhook) -> HookPart {
        HookPart {
            name: json_text(&hook.name),
            properties: hook.properties_text.clone(),
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
        let mut fields = String::with_capacity(field_values_len_bound(event).min(1 << 20) + 64);
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
                properties: hook.properties.as_ref().map(|p| p.json.as_bytes()),
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
/// What comes before a body's Properties.
pub const PROPERTIES_KEY: &[u8] = b",\"Properties\":";

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

    /// Where the parts start and end, to carry the layout beside its body
    /// (cluster mode sends a job's body over the bus).
    pub fn offsets(&self) -> [usize; 4] {
        [
            self.head_end,
            self.fields_start,
            self.fields_end,
            self.tail_start,
        ]
    }

    /// A layout carried as [`offsets`](Self::offsets) beside `body`; None
    /// when they do not lie in order inside it (a message not of walhook's
    /// making).
    pub fn from_offsets(offsets: [usize; 4], body: &[u8]) -> Option<PartsLayout> {
        let [head_end, fields_start, fields_end, tail_start] = offsets;
        let in_order = HEAD_START <= head_end
            && head_end <= fields_start
            && fields_start <= fields_end
            && fields_end <= tail_start
            && tail_start <= body.len();
        let layout = PartsLayout {
            head_end,
            fields_start,
            fields_end,
            tail_start,
        };
        (in_order && layout.parts(body).is_some()).then_some(layout)
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
    /// Kept apart: the body was assembled for this hook alone from parts of
    /// its own (fewer values: rare), laid out as the layout says.
    Own(Arc<SharedBody>, PartsLayout),
    /// Kept apart, and the body was not made from parts (tests).
    Apart(Arc<SharedBody>),
}

impl SharedParts {
    /// Where the parts lie in the job's own body, when it was assembled
    /// from them.
    pub fn layout(&self) -> Option<PartsLayout> {
        match self {
            SharedParts::InBody(layout) | SharedParts::Own(_, layout) => Some(*layout),
            SharedParts::Apart(_) => None,
        }
    }
}

/// A hook's body of an event: assembled from the event's shared parts, or
/// (`Own`) from parts of its own because its Properties or name pushed the
/// body over the bound and some values were left out.
pub enum HookBody {
    Shared(Bytes, PartsLayout),
    Own(Bytes, PartsLayout),
}

impl HookBody {
    /// The body, and where a parked job finds the `shared` parts it was
    /// made from.
    pub fn for_job(self, shared: &SharedBody) -> (Bytes, SharedParts) {
        match self {
            HookBody::Shared(body, layout) => (body, SharedParts::InBody(layout)),
            HookBody::Own(body, layout) => {
                (body, SharedParts::Own(Arc::new(shared.clone()), layout))
            }
        }
    }
}

/// The body of `event` for `hook`, from the event's `shared` parts unless
/// it is over `max_bytes`. Then this hook's copy leaves out values, largest
/// first and never the key's, until it fits; its Properties are never cut
/// (a receiver may route by them): a copy whose key and Properties alone
/// pass the bound is sent as it is, as a key alone that passes it is.
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
    let hook_part = HookPart::of(hook);
    let (mut body, mut layout) = (body, layout);
    while body.len() > max_bytes && !leave_out(&mut event, body.len() - max_bytes).is_empty() {
        (body, layout) = SharedBody::of(&event, context_identifier).assemble(event_id, &hook_part);
    }
    HookBody::Own(body, layout)
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

/// The bytes FieldValues takes in a body (what the cheap bound below is
/// held to in the tests).
#[cfg(test)]
pub(super) fn field_values_len(event: &ChangeEvent) -> usize {
    event
        .field_values
        .iter()
        .map(|(k, v)| k.len() + 4 + json_len(v))
        .sum()
}

/// At least the bytes FieldValues takes in a body, without serialising the strings and
/// numbers that most rows are made of (a string's JSON takes at most six
/// bytes per byte, plus its quotes): the cheap test every event passes
/// before the exact one.
pub(super) fn field_values_len_bound(event: &ChangeEvent) -> usize {
    event
        .field_values
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

/// Fit an event into `max_body` bytes as its smallest body (no hook name,
/// no Properties) would be sent: when that is over, values are left out,
/// largest first and never the key's, just enough to make it fit, and
/// named in MissingColumns; returns the columns left out. Each hook's own
/// name and Properties are fitted per hook ([`hook_body`]).
pub fn fit_fields(
    event: &mut ChangeEvent,
    context_identifier: &str,
    max_body: usize,
) -> Vec<String> {
    // Most events: their values are so far below the bound that no
    // frame could push them over, and nothing is rendered to know it.
    if field_values_len_bound(event).saturating_add(FRAME_BOUND) <= max_body {
        return Vec::new();
    }
    let mut left_out = Vec::new();
    loop {
        let shared = SharedBody::of(event, context_identifier);
        // `""` for an empty WebhookName.
        let smallest = HEAD_START + shared.head.len() + 2 + shared.fields.len() + shared.tail.len();
        if smallest <= max_body {
            return left_out;
        }
        let more = leave_out(event, smallest - max_body);
        if more.is_empty() {
            // Only the key is left: the body goes as it is.
            return left_out;
        }
        left_out.extend(more);
    }
}

/// Leave out the largest values of `event.field_values` other than its
/// key's, until the body is about `over` bytes shorter, naming them in
/// `MissingColumns` (the rule for an unchanged TOAST value: a receiver
/// that needs them reads the row). Returns the columns left out (none
/// when only the key's are left).
fn leave_out(event: &mut ChangeEvent, over: usize) -> Vec<String> {
    let mut sizes: Vec<(usize, String)> = event
        .field_values
        .iter()
        .filter(|(k, _)| !event.key_columns.contains(k))
        .map(|(k, v)| (json_len(v), k.clone()))
        .collect();
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut shorter = 0;
    let mut left_out = Vec::new();
    for (size, column) in sizes {
        if shorter >= over {
            break;
        }
        event.field_values.remove(&column);
        // The value goes, its name moves to MissingColumns.
        shorter += size;
        if !event.missing_columns.contains(&column) {
            event.missing_columns.push(column.clone());
        }
        left_out.push(column);
    }
    left_out
}

/// What a body holds besides FieldValues (names, the key, Changes,
/// MissingColumns, Values) stays below this for all but very wide tables:
/// an event whose values are this far below the bound is not measured.
const FRAME_BOUND: usize = 64 * 1024;

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
