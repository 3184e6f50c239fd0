//! A row of the `webhook` table as walhook uses it: its state, its event
//! patterns and its delivery settings, parsed once when the row arrives.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use url::Url;

use crate::events::{ChangeEvent, Operation, WebhookRow};
use crate::text::{redacted_url, redacted_url_text};

/// `webhook.state`, as in SuperOffice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookState {
    Unknown = 0,
    Active = 1,
    Stopped = 2,
    TooManyErrors = 3,
}

impl WebhookState {
    /// Whether a hook in this state receives events: Active delivers,
    /// TooManyErrors parks; Stopped and Unknown are a deliberate stop, as
    /// in SuperOffice: not delivered, not parked, counted.
    pub fn takes_events(self) -> bool {
        matches!(self, WebhookState::Active | WebhookState::TooManyErrors)
    }

    pub fn from_i16(v: i16) -> Option<WebhookState> {
        Some(match v {
            0 => WebhookState::Unknown,
            1 => WebhookState::Active,
            2 => WebhookState::Stopped,
            3 => WebhookState::TooManyErrors,
            _ => return None,
        })
    }
}

impl fmt::Display for WebhookState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            WebhookState::Unknown => "Unknown",
            WebhookState::Active => "Active",
            WebhookState::Stopped => "Stopped",
            WebhookState::TooManyErrors => "TooManyErrors",
        };
        write!(f, "{name} ({})", *self as i16)
    }
}

/// One entry of the `events` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    /// `*`
    Any,
    /// `contact.*`
    Entity(String),
    /// `*.deleted`
    Operation(String),
    /// `contact.created`
    Exact(String),
    /// `contact.changed(name,email)`: a `contact.changed` event whose
    /// `Changes` name at least one of these columns.
    ChangedColumns {
        entity: String,
        columns: BTreeSet<String>,
    },
}

/// The most columns one filter may name: a bound on what a row can make
/// the daemon hold (the `events` column is itself at most 4000 characters).
pub const MAX_FILTER_COLUMNS: usize = 256;

impl EventPattern {
    /// Parse one entry, spaces already removed.
    pub fn parse(text: &str) -> Result<EventPattern, String> {
        if let Some(open) = text.find('(') {
            return EventPattern::parse_filter(text, open);
        }
        if text.contains(')') {
            return Err(format!("event {text:?} has ')' without '('"));
        }
        if text == "*" {
            return Ok(EventPattern::Any);
        }
        let Some((entity, op)) = text.split_once('.') else {
            return Err(format!(
                "event {text:?} is not of the form entity.operation"
            ));
        };
        if entity.is_empty() || op.is_empty() || op.contains('.') {
            return Err(format!(
                "event {text:?} is not of the form entity.operation"
            ));
        }
        Ok(match (entity, op) {
            ("*", "*") => EventPattern::Any,
            ("*", op) => EventPattern::Operation(op.to_owned()),
            (entity, "*") => EventPattern::Entity(entity.to_owned()),
            _ => EventPattern::Exact(text.to_owned()),
        })
    }

    /// `entity.changed(col,...)`, `open` being the position of `(`.
    fn parse_filter(text: &str, open: usize) -> Result<EventPattern, String> {
        let (name, rest) = text.split_at(open);
        let Some(inner) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
            return Err(format!(
                "event {text:?}: a column filter ends with ')' and nothing follows it"
            ));
        };
        if inner.contains(['(', ')']) {
            return Err(format!("event {text:?}: column filters do not nest"));
        }
        // Only UPDATE events have a meaningful `Changes`: INSERT lists every
        // column and DELETE none, so a filter there would mean nothing.
        let entity = match name.split_once('.') {
            Some((entity, "changed"))
                if !entity.is_empty() && entity != "*" && !entity.contains('.') =>
            {
                entity
            }
            _ => {
                return Err(format!(
                    "event {text:?}: a column filter follows an entity's changed event, \
                     as in contact.changed(name,email)"
                ))
            }
        };
        let mut columns = BTreeSet::new();
        for column in inner.split(',') {
            if column.is_empty() {
                return Err(format!(
                    "event {text:?}: the column filter has an empty column name"
                ));
            }
            columns.insert(column.to_owned());
        }
        if columns.len() > MAX_FILTER_COLUMNS {
            return Err(format!(
                "event {text:?}: the column filter names more than {MAX_FILTER_COLUMNS} columns"
            ));
        }
        Ok(EventPattern::ChangedColumns {
            entity: entity.to_owned(),
            columns,
        })
    }

    /// Whether this entry selects the event: the reference meaning that
    /// the registry's index reproduces by lookup.
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Entity(e) => *e == event.entity,
            EventPattern::Operation(op) => op == event.operation.suffix(),
            EventPattern::Exact(name) => *name == event.event,
            EventPattern::ChangedColumns { entity, columns } => {
                *entity == event.entity
                    && event.operation == Operation::Changed
                    && event.changes.iter().any(|c| columns.contains(c))
            }
        }
    }
}

/// Split the `events` column into its entries: commas separate entries
/// except inside a column filter's parentheses; spaces are ignored.
fn split_events(text: &str) -> Result<Vec<String>, String> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut in_filter = false;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        match c {
            '(' if in_filter => {
                return Err(format!(
                    "events: column filters do not nest, at {current:?}"
                ))
            }
            '(' => in_filter = true,
            ')' if !in_filter => return Err(format!("events: ')' without '(' after {current:?}")),
            ')' => in_filter = false,
            ',' if !in_filter => {
                if !current.is_empty() {
                    entries.push(std::mem::take(&mut current));
                }
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if in_filter {
        return Err(format!(
            "events: the column filter of {current:?} is not closed with ')'"
        ));
    }
    if !current.is_empty() {
        entries.push(current);
    }
    Ok(entries)
}

/// The most characters `events` and `target_url` may have (their columns
/// are varchar(4000); a column altered wider is still held to it).
pub const MAX_TEXT_CHARS: usize = 4000;
/// The most headers a hook may add to walhook's own...
pub const MAX_HEADERS: usize = 64;
/// ...and the most bytes their names and values may take together: what
/// common servers accept for a whole request head is 8 to 16 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most bytes `properties` may take as JSON text: it is sent in every
/// body and stored with every parked event.
pub const MAX_PROPERTIES_BYTES: usize = 64 * 1024;

/// The fewest bytes a signing key may have: a shorter one (an empty
/// `whsec_`, a secret of a few characters) lets anyone forge the hook's
/// signatures.
pub const MIN_SECRET_KEY_BYTES: usize = 16;

/// The key a secret gives Standard Webhooks' `webhook-signature`: the
/// base64 after `whsec_` when it decodes, else the secret's UTF-8 (which
/// also keys `X-SuperOffice-Signature`).
pub fn standard_webhooks_key(secret: &str) -> std::borrow::Cow<'_, [u8]> {
    use base64::Engine;
    match secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
    {
        Some(key) => std::borrow::Cow::Owned(key),
        None => std::borrow::Cow::Borrowed(secret.as_bytes()),
    }
}

/// Why `secret` cannot sign a hook's requests, if it cannot: both keys it
/// gives must have [`MIN_SECRET_KEY_BYTES`].
pub fn secret_problem(secret: &str) -> Option<String> {
    let standard = standard_webhooks_key(secret).len();
    if secret.len() < MIN_SECRET_KEY_BYTES || standard < MIN_SECRET_KEY_BYTES {
        return Some(format!(
            "the secret gives a signing key of {} bytes, fewer than {MIN_SECRET_KEY_BYTES}: \
             anyone could forge its signatures (use at least {MIN_SECRET_KEY_BYTES} characters, \
             or whsec_ and the base64 of at least {MIN_SECRET_KEY_BYTES} random bytes)",
            standard.min(secret.len())
        ));
    }
    None
}

/// Why a `webhook` row cannot be used: the daemon skips it with a warning
/// naming its webhook_id, and `webhook add` refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRow(pub String);

/// A hook's `properties` as its bodies carry them: JSON text rendered once
/// per version of the row (not per event), and the SHA-256 of that text,
/// by which parked events name the one copy stored for all of them.
#[derive(Debug, PartialEq, Eq)]
pub struct PropertiesText {
    pub json: String,
    pub digest: [u8; 32],
}

impl PropertiesText {
    pub fn of(properties: &Map<String, Value>) -> PropertiesText {
        let json = serde_json::to_string(properties).expect("a JSON map serialises");
        let digest = Sha256::digest(json.as_bytes()).into();
        PropertiesText { json, digest }
    }
}

/// A valid row of the `webhook` table.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: i32,
    pub name: String,
    pub events: Vec<EventPattern>,
    pub target_url: Url,
    /// `type`: only `webhook` receives events.
    pub kind: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub properties: Option<Map<String, Value>>,
    /// `properties` as the body's JSON text.
    pub properties_text: Option<Arc<PropertiesText>>,
    pub secret: Option<String>,
    pub state: WebhookState,
}

impl Webhook {
    /// Parse a row given as text values; the error says what is wrong.
    pub fn from_row(row: &WebhookRow) -> Result<Webhook, InvalidRow> {
        Webhook::parse_row(row).map_err(InvalidRow)
    }

    fn parse_row(row: &WebhookRow) -> Result<Webhook, String> {
        let get = |name: &str| row.0.get(name).and_then(|v| v.as_deref());
        let id: i32 = get("webhook_id")
            .ok_or("webhook_id is missing")?
            .parse()
            .map_err(|_| "webhook_id is not an integer")?;
        let events_text = get("events").unwrap_or("");
        let over = |text: &str| text.chars().count() > MAX_TEXT_CHARS;
        if over(events_text) {
            return Err(format!("events has more than {MAX_TEXT_CHARS} characters"));
        }
        let events = split_events(events_text)?
            .iter()
            .map(|e| EventPattern::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Err("events is empty".into());
        }
        let url_text = get("target_url").unwrap_or("");
        if over(url_text) {
            return Err(format!(
                "target_url has more than {MAX_TEXT_CHARS} characters"
            ));
        }
        let target_url = Url::parse(url_text).map_err(|e| {
            format!(
                "target_url {:?} does not parse: {e}",
                redacted_url_text(url_text)
            )
        })?;
        if !matches!(target_url.scheme(), "http" | "https") {
            return Err(format!(
                "target_url {:?} is not an http(s) URL",
                redacted_url(&target_url)
            ));
        }
        let headers = match get("headers") {
            None => Vec::new(),
            Some(text) => {
                let value: Value = serde_json::from_str(text)
                    .map_err(|e| format!("headers is not valid JSON: {e}"))?;
                let Value::Object(map) = value else {
                    return Err("headers is not a JSON object".into());
                };
                if map.len() > MAX_HEADERS {
                    return Err(format!(
                        "headers has {} entries, more than the {MAX_HEADERS} a hook may add",
                        map.len()
                    ));
                }
                let bytes: usize = map
                    .iter()
                    .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                    .sum();
                if bytes > MAX_HEADER_BYTES {
                    return Err(format!(
                        "headers take {bytes} bytes, more than {MAX_HEADER_BYTES}"
                    ));
                }
                let mut headers = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let Value::String(v) = v else {
                        return Err(format!("header {k:?} is not a string"));
                    };
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("header name {k:?} is not valid"))?;
                    let value = HeaderValue::from_str(&v)
                        .map_err(|_| format!("header {k:?} has an invalid value"))?;
                    headers.push((name, value));
                }
                headers
            }
        };
        let properties = match get("properties") {
            None => None,
            Some(text) if text.len() > MAX_PROPERTIES_BYTES => {
                return Err(format!(
                    "properties take {} bytes, more than {MAX_PROPERTIES_BYTES}",
                    text.len()
                ))
            }
            Some(text) => match crate::text::parse_json(text) {
                Ok(Value::Object(map)) => Some(map),
                Ok(_) => return Err("properties is not a JSON object".into()),
                Err(e) => return Err(format!("properties is not valid JSON: {e}")),
            },
        };
        let state_text = get("state").unwrap_or("1");
        let state = state_text
            .parse::<i16>()
            .ok()
            .and_then(WebhookState::from_i16)
            .ok_or_else(|| format!("state {state_text:?} is not 0, 1, 2 or 3"))?;
        Ok(Webhook {
            id,
            name: get("name").unwrap_or("").to_owned(),
            events,
            target_url,
            kind: get("type").unwrap_or("webhook").to_owned(),
            headers,
            properties_text: properties.as_ref().map(|p| Arc::new(PropertiesText::of(p))),
            properties,
            secret: match get("secret").filter(|s| !s.is_empty()) {
                Some(secret) => match secret_problem(secret) {
                    Some(problem) => return Err(problem),
                    None => Some(secret.to_owned()),
                },
                None => None,
            },
            state,
        })
    }

    /// Whether the hook's `events` select this event, pattern by pattern:
    /// the meaning the registry's index reproduces by lookup.
    pub fn wants(&self, event: &ChangeEvent) -> bool {
        self.events.iter().any(|p| p.matches(event))
    }

    /// The column filters of this hook, as (entity, columns): what
    /// `walhook check` compares with the tables' replica identity.
    pub fn column_filters(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.events.iter().filter_map(|p| match p {
            EventPattern::ChangedColumns { entity, columns } => Some((entity.as_str(), columns)),
            _ => None,
        })
    }

    /// Only hooks of type `webhook` receive events; other types are
    /// skipped (with a warning when their row arrives).
    pub fn receives_events(&self) -> bool {
        self.kind == "webhook"
    }
}
