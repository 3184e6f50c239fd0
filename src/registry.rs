//! The `webhook` table, held in memory, and the matching of events to it.
//!
//! Loaded at start, then kept current from the replication stream itself,
//! so a hook inserted at LSN x sees exactly the changes committed after x.
//! A bad row is skipped with a warning naming its webhook_id; the other
//! hooks keep working.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{Map, Value};

use crate::events::{ChangeEvent, Operation, WebhookChange, WebhookRow};
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

    pub fn wants(&self, event: &ChangeEvent) -> bool {
        self.events
            .iter()
            .any(|p| p.matches(&event.event, &event.entity, event.operation))
    }
}

/// The hooks as of the last applied position of the stream.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    hooks: BTreeMap<i32, Arc<Webhook>>,
    /// Rows as text, kept so the registry can be written as a snapshot.
    rows: BTreeMap<i32, WebhookRow>,
}

/// What applying a change did, for the log and for delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryUpdate {
    Added(i32),
    Changed(i32),
    Removed(i32),
    Invalid(i32),
    Cleared,
    Nothing,
}

impl Registry {
    pub fn from_rows(rows: impl IntoIterator<Item = WebhookRow>) -> Registry {
        let mut registry = Registry::default();
        for row in rows {
            registry.upsert(row);
        }
        registry
    }

    pub fn apply(&mut self, change: WebhookChange) -> RegistryUpdate {
        match change {
            WebhookChange::Upsert(row) => self.upsert(row),
            WebhookChange::Delete { webhook_id } => {
                match webhook_id.and_then(|id| id.parse::<i32>().ok()) {
                    Some(id) => {
                        self.rows.remove(&id);
                        match self.hooks.remove(&id) {
                            Some(_) => RegistryUpdate::Removed(id),
                            None => RegistryUpdate::Nothing,
                        }
                    }
                    None => RegistryUpdate::Nothing,
                }
            }
            WebhookChange::Truncate => {
                self.hooks.clear();
                self.rows.clear();
                RegistryUpdate::Cleared
            }
        }
    }

    fn upsert(&mut self, row: WebhookRow) -> RegistryUpdate {
        let id_text = row.0.get("webhook_id").cloned().flatten();
        let Some(id) = id_text.as_deref().and_then(|t| t.parse::<i32>().ok()) else {
            tracing::warn!(webhook_id = ?id_text, "webhook row without a valid webhook_id skipped");
            return RegistryUpdate::Nothing;
        };
        // An UPDATE without the old row sends only changed TOASTed columns;
        // merge over the known row so nothing is forgotten.
        let mut merged = self.rows.get(&id).cloned().unwrap_or_default();
        merged.0.extend(row.0);
        self.rows.insert(id, merged.clone());
        match Webhook::from_row(&merged) {
            Ok(hook) => {
                if hook.kind != "webhook" {
                    tracing::warn!(
                        webhook_id = id,
                        r#type = %hook.kind,
                        "webhook is not of type 'webhook' and receives no events"
                    );
                }
                match self.hooks.insert(id, Arc::new(hook)) {
                    Some(_) => RegistryUpdate::Changed(id),
                    None => RegistryUpdate::Added(id),
                }
            }
            Err(why) => {
                tracing::warn!(webhook_id = id, "webhook skipped: {why}");
                self.hooks.remove(&id);
                RegistryUpdate::Invalid(id)
            }
        }
    }

    pub fn get(&self, id: i32) -> Option<&Arc<Webhook>> {
        self.hooks.get(&id)
    }

    pub fn hooks(&self) -> impl Iterator<Item = &Arc<Webhook>> {
        self.hooks.values()
    }

    /// Hooks whose `events` select this event, whatever their state.
    pub fn matching<'a>(
        &'a self,
        event: &'a ChangeEvent,
    ) -> impl Iterator<Item = &'a Arc<Webhook>> {
        self.hooks
            .values()
            .filter(move |h| h.kind == "webhook" && h.wants(event))
    }

    /// The rows as text, for a snapshot.
    pub fn rows(&self) -> impl Iterator<Item = &WebhookRow> {
        self.rows.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> WebhookRow {
        WebhookRow(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
                .collect(),
        )
    }

    fn good(id: &str, events: &str) -> WebhookRow {
        row(&[
            ("webhook_id", Some(id)),
            ("name", Some("n")),
            ("events", Some(events)),
            ("target_url", Some("https://example.com/hook")),
            ("type", Some("webhook")),
            ("state", Some("1")),
        ])
    }

    #[test]
    fn patterns() {
        use Operation::*;
        let any = EventPattern::parse("*").unwrap();
        let entity = EventPattern::parse("contact.*").unwrap();
        let op = EventPattern::parse("*.deleted").unwrap();
        let exact = EventPattern::parse("contact.created").unwrap();
        assert!(any.matches("x.created", "x", Created));
        assert!(entity.matches("contact.changed", "contact", Changed));
        assert!(!entity.matches("person.changed", "person", Changed));
        assert!(op.matches("person.deleted", "person", Deleted));
        assert!(!op.matches("person.created", "person", Created));
        assert!(exact.matches("contact.created", "contact", Created));
        assert!(!exact.matches("contact.changed", "contact", Changed));
        assert!(EventPattern::parse("contact").is_err());
    }

    #[test]
    fn events_ignore_spaces() {
        let hook = Webhook::from_row(&good("1", " contact.created , person.changed ")).unwrap();
        assert_eq!(hook.events.len(), 2);
    }

    #[test]
    fn bad_rows_are_skipped_with_reason() {
        let mut r = good("5", "contact.created");
        r.0.insert("target_url".into(), Some("not a url".into()));
        assert!(Webhook::from_row(&r).unwrap_err().0.contains("target_url"));
        let mut r = good("5", "contact.created");
        r.0.insert("headers".into(), Some("[1]".into()));
        assert!(Webhook::from_row(&r).unwrap_err().0.contains("headers"));
        let mut r = good("5", "contact.created");
        r.0.insert("headers".into(), Some("{\"a\": 1}".into()));
        assert!(Webhook::from_row(&r).unwrap_err().0.contains("\"a\""));
        assert!(Webhook::from_row(&good("5", " , "))
            .unwrap_err()
            .0
            .contains("events"));

        let mut registry = Registry::from_rows([good("1", "*")]);
        let mut bad = good("2", "*");
        bad.0.insert("properties".into(), Some("3".into()));
        assert_eq!(
            registry.apply(WebhookChange::Upsert(bad)),
            RegistryUpdate::Invalid(2)
        );
        assert!(registry.get(1).is_some());
        assert!(registry.get(2).is_none());
    }

    #[test]
    fn updates_merge_and_deletes_remove() {
        let mut registry = Registry::from_rows([good("1", "*")]);
        let update = row(&[("webhook_id", Some("1")), ("state", Some("2"))]);
        assert_eq!(
            registry.apply(WebhookChange::Upsert(update)),
            RegistryUpdate::Changed(1)
        );
        assert_eq!(registry.get(1).unwrap().state, WebhookState::Stopped);
        assert_eq!(
            registry.apply(WebhookChange::Delete {
                webhook_id: Some("1".into())
            }),
            RegistryUpdate::Removed(1)
        );
        assert!(registry.get(1).is_none());
    }
}
