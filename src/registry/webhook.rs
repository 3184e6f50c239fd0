//! A row of the `webhook` table as walhook uses it: its state, its event
//! patterns and its delivery settings, parsed once when the row arrives.

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{Map, Value};

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
}

impl EventPattern {
    pub fn parse(text: &str) -> Result<EventPattern, String> {
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

    pub fn matches(&self, event: &str, entity: &str, operation: Operation) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Entity(e) => e == entity,
            EventPattern::Operation(op) => op == operation.suffix(),
            EventPattern::Exact(name) => name == event,
        }
    }
}

/// Why a `webhook` row cannot be used: the daemon skips it with a warning
/// naming its webhook_id, and `webhook add` refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRow(pub String);

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
        let events = events_text
            .split(',')
            .map(|e| e.chars().filter(|c| !c.is_whitespace()).collect::<String>())
            .filter(|e| !e.is_empty())
            .map(|e| EventPattern::parse(&e))
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Err("events is empty".into());
        }
        let url_text = get("target_url").unwrap_or("");
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
            properties,
            secret: get("secret").filter(|s| !s.is_empty()).map(str::to_owned),
            state,
        })
    }

    /// Whether the hook's `events` select this event, pattern by pattern:
    /// the meaning the registry's index reproduces by lookup.
    pub fn wants(&self, event: &ChangeEvent) -> bool {
        self.events
            .iter()
            .any(|p| p.matches(&event.event, &event.entity, event.operation))
    }

    /// Only hooks of type `webhook` receive events; other types are
    /// skipped (with a warning when their row arrives).
    pub fn receives_events(&self) -> bool {
        self.kind == "webhook"
    }
}
