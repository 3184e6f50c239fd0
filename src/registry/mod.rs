//! The `webhook` table, held in memory, and the matching of events to it.
//!
//! Loaded at start, then kept current from the replication stream itself,
//! so a hook inserted at LSN x sees exactly the changes committed after x.
//! A bad row is skipped with a warning naming its webhook_id; the other
//! hooks keep working.
//!
//! The table may hold thousands of rows, so nothing here costs in
//! proportion to it per change: an event finds its hooks by lookup
//! ([`index`]), a webhook row change touches that row's entries only, and
//! the states kept for registry snapshots share the rows instead of
//! copying them ([`snapshots`]).

pub mod condition;
mod index;
mod rules;
mod snapshots;
mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::events::{ChangeEvent, WebhookChange, WebhookRow};

use self::index::MatchIndex;
pub use self::index::Matches;
pub use self::snapshots::{PendingSnapshots, SPILL_PENDING_BYTES, SPILL_PENDING_STATES};
pub use self::webhook::{
    secret_problem, standard_webhooks_key, EventPattern, InvalidRow, PropertiesText, Webhook,
    WebhookState, MAX_FILTER_COLUMNS, MAX_HEADERS, MAX_HEADER_BYTES, MAX_PROPERTIES_BYTES,
    MAX_TEXT_CHARS, MIN_SECRET_KEY_BYTES,
};

pub use self::rules::{column_list_json, ColumnFilter, HookRules, RowRules, MAX_COLUMN_LIST};

/// A webhook row as it stands after a change, `None` when it is gone.
pub type RowChange = (i32, Option<Arc<WebhookRow>>);

/// The hooks as of the last applied position of the stream.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// The valid rows, parsed.
    hooks: BTreeMap<i32, Arc<Webhook>>,
    /// Every row as text, invalid ones too, kept for the registry
    /// snapshots; shared with the snapshots not yet written.
    rows: BTreeMap<i32, Arc<WebhookRow>>,
    /// The hooks that receive events, by what they select.
    index: MatchIndex,
    /// Rows changed since [`Registry::take_row_changes`] last ran.
    changed_rows: BTreeSet<i32>,
    /// Conditions and column filters (`webhook_control`), by webhook_id.
    rules: BTreeMap<i32, Arc<RowRules>>,
    /// (webhook_id, message) of condition failures already logged, so a
    /// failing condition warns once per hook and reason, not per event.
    warned: BTreeSet<(i32, String)>,
}

/// Whether an event goes to a hook its `events` matched.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// It goes, with the columns the hook may see (`None`: all).
    Send(Option<ColumnFilter>),
    /// Its condition is false or NULL, failed, or its rules are invalid.
    Held,
}

/// What applying a change did, for the log and for delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryUpdate {
    Added(i32),
    /// A known hook's row changed; `was_active` says whether it was
    /// Active before, so delivery can tell a real transition into Active.
    Changed {
        id: i32,
        was_active: bool,
    },
    Removed(i32),
    /// A row's webhook_id changed: hook `from` is removed, and the row
    /// under its new id is `to` (added, or invalid).
    Moved {
        from: i32,
        to: Box<RegistryUpdate>,
    },
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
        registry.changed_rows.clear();
        registry
    }

    pub fn apply(&mut self, change: WebhookChange) -> RegistryUpdate {
        match change {
            WebhookChange::Upsert(row) => self.upsert(row),
            WebhookChange::Rekey { from, row } => {
                let Ok(from) = from.parse::<i32>() else {
                    return self.upsert(row);
                };
                // The old hook goes; what the row's update left unsent (an
                // unchanged TOASTed value) is taken from it.
                let known = self.rows.remove(&from);
                self.changed_rows.insert(from);
                if let Some(old) = self.hooks.remove(&from) {
                    self.index.remove(&old);
                }
                let mut merged = known.map(|k| WebhookRow::clone(&k)).unwrap_or_default();
                merged.0.extend(row.0);
                RegistryUpdate::Moved {
                    from,
                    to: Box::new(self.upsert(merged)),
                }
            }
            WebhookChange::Delete { webhook_id } => {
                match webhook_id.and_then(|id| id.parse::<i32>().ok()) {
                    Some(id) => {
                        if self.rows.remove(&id).is_some() {
                            self.changed_rows.insert(id);
                        }
                        match self.hooks.remove(&id) {
                            Some(old) => {
                                self.index.remove(&old);
                                RegistryUpdate::Removed(id)
                            }
                            None => RegistryUpdate::Nothing,
                        }
                    }
                    None => RegistryUpdate::Nothing,
                }
            }
            WebhookChange::Truncate => {
                self.changed_rows.extend(self.rows.keys().copied());
                self.hooks.clear();
                self.rows.clear();
                self.index.clear();
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
        let mut merged = self
            .rows
            .get(&id)
            .map(|known| WebhookRow::clone(known))
            .unwrap_or_default();
        merged.0.extend(row.0);
        let parsed = Webhook::from_row(&merged);
        self.rows.insert(id, Arc::new(merged));
        self.changed_rows.insert(id);
        match parsed {
            Ok(hook) => {
                if !hook.receives_events() {
                    tracing::warn!(
                        webhook_id = id,
                        r#type = %hook.kind,
                        "webhook is not of type 'webhook' and receives no events"
                    );
                }
                let hook = Arc::new(hook);
                let old = self.hooks.insert(id, hook.clone());
                if let Some(old) = &old {
                    self.index.remove(old);
                }
                if hook.receives_events() {
                    self.index.insert(&hook);
                }
                match old {
                    Some(old) => RegistryUpdate::Changed {
                        id,
                        was_active: old.state == WebhookState::Active,
                    },
                    None => RegistryUpdate::Added(id),
                }
            }
            Err(why) => {
                tracing::warn!(webhook_id = id, "webhook skipped: {why}");
                if let Some(old) = self.hooks.remove(&id) {
                    self.index.remove(&old);
                }
                RegistryUpdate::Invalid(id)
            }
        }
    }

    /// A hook's `webhook_control` rules changed (`None`: the row is gone).
    pub fn set_rules(&mut self, id: i32, rules: Option<RowRules>) {
        self.warned.retain(|(hook, _)| *hook != id);
        match rules {
            Some(RowRules::Valid(r)) if r == HookRules::default() => {
                self.rules.remove(&id);
            }
            Some(rules) => {
                if let RowRules::Invalid(why) = &rules {
                    tracing::warn!(
                        webhook_id = id,
                        "webhook_control: {why}; the hook receives no events until it is fixed"
                    );
                }
                self.rules.insert(id, Arc::new(rules));
            }
            None => {
                self.rules.remove(&id);
            }
        }
    }

    /// `webhook_control` was truncated.
    pub fn clear_rules(&mut self) {
        self.rules.clear();
        self.warned.clear();
    }

    /// Whether `event`, which hook `id`'s `events` matched, goes to it:
    /// its condition is evaluated here, and only here.
    pub fn admit(&mut self, id: i32, event: &ChangeEvent) -> Admission {
        let Some(rules) = self.rules.get(&id) else {
            return Admission::Send(None);
        };
        let rules = match &**rules {
            RowRules::Valid(rules) => rules,
            RowRules::Invalid(_) => return Admission::Held,
        };
        match rules.admits(event) {
            Ok(true) => Admission::Send(rules.columns.clone()),
            Ok(false) => Admission::Held,
            Err(e) => {
                let message = e.to_string();
                const MAX_WARNED: usize = 10_000;
                if self.warned.len() < MAX_WARNED && self.warned.insert((id, message.clone())) {
                    tracing::warn!(
                        webhook_id = id,
                        table = %event.table,
                        lsn = %event.txn.commit_lsn,
                        "the hook's condition has no answer for this event ({message}): \
                         it is not sent, as when the condition is false; warned once per \
                         hook and reason"
                    );
                }
                Admission::Held
            }
        }
    }

    pub fn get(&self, id: i32) -> Option<&Arc<Webhook>> {
        self.hooks.get(&id)
    }

    pub fn hooks(&self) -> impl Iterator<Item = &Arc<Webhook>> {
        self.hooks.values()
    }

    /// Hooks of type `webhook` whose `events` select this event, whatever
    /// their state (the caller decides what each state gets), in
    /// webhook_id order.
    pub fn matching<'a>(&'a self, event: &'a ChangeEvent) -> Matches<'a> {
        self.index.matching(event)
    }

    /// Every row as text, invalid ones too, in webhook_id order: what a
    /// snapshot records.
    pub fn rows(&self) -> impl Iterator<Item = &Arc<WebhookRow>> {
        self.rows.values()
    }

    /// The rows changed since the last call, as they stand now, in
    /// webhook_id order: what a transaction did to the table, for
    /// [`PendingSnapshots::record`].
    pub fn take_row_changes(&mut self) -> Vec<RowChange> {
        std::mem::take(&mut self.changed_rows)
            .into_iter()
            .map(|id| (id, self.rows.get(&id).cloned()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
