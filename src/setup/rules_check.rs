//! `check`'s lines for hook conditions and column lists
//! (`webhook_control`): an invalid one (the hook gets nothing until it is
//! fixed), and a condition that reads old columns of a table whose
//! REPLICA IDENTITY does not send them.

use super::line::{CheckLevel, CheckLine};
use crate::config::Config;
use crate::events::WebhookRow;
use crate::registry::{EventPattern, RowRules, Webhook};
use crate::store::catalog::FilterTable;

/// Whether `hook`'s events select events of `table`.
fn selects(hook: &Webhook, table: &FilterTable, config: &Config) -> bool {
    let entity = config.entity_for(&table.schema, &table.table);
    hook.events.iter().any(|p| match p {
        EventPattern::Any | EventPattern::Operation(_) => true,
        EventPattern::Entity(e) | EventPattern::ChangedColumns { entity: e, .. } => e == entity,
        EventPattern::Exact(text) => {
            text.split_once('.').map_or(text.as_str(), |(e, _)| e) == entity
        }
    })
}

/// The warning for a condition reading `old` columns of the tables a hook
/// selects whose identity is not FULL; `None` when there is nothing to say.
pub fn old_columns_warning(
    id: i32,
    old_columns: &std::collections::BTreeSet<String>,
    hook: Option<&Webhook>,
    tables: &[FilterTable],
    config: &Config,
) -> Option<String> {
    if old_columns.is_empty() {
        return None;
    }
    let partial: Vec<String> = tables
        .iter()
        .filter(|t| !t.full && hook.is_none_or(|h| selects(h, t, config)))
        .map(|t| format!("{}.{}", t.schema, t.table))
        .collect();
    if partial.is_empty() {
        return None;
    }
    Some(format!(
        "webhook_id {id}: its condition reads old.{} but {} REPLICA IDENTITY is not FULL: \
         the server sends only the key's old values there, so for any other old column the \
         condition has no answer and the event is not sent (ALTER TABLE ... REPLICA IDENTITY \
         FULL sends the whole old row)",
        old_columns
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", old."),
        partial.join(", ")
    ))
}

/// One line per invalid rule, and per condition reading old columns the
/// server does not send.
pub fn rule_lines(
    control: &[WebhookRow],
    hooks: &[Webhook],
    tables: &[FilterTable],
    config: &Config,
) -> Vec<CheckLine> {
    let mut out = Vec::new();
    for row in control {
        let Some((id, rules)) = RowRules::from_row(row) else {
            continue;
        };
        match rules {
            RowRules::Invalid(why) => out.push(CheckLine {
                level: CheckLevel::Warn,
                text: format!(
                    "webhook_id {id} receives no events: its webhook_control row is invalid ({why}); fix it with `walhook webhook condition|columns {id}`"
                ),
            }),
            RowRules::Valid(rules) => {
                let Some(condition) = rules.condition else {
                    continue;
                };
                let hook = hooks.iter().find(|h| h.id == id);
                if let Some(text) =
                    old_columns_warning(id, condition.old_columns(), hook, tables, config)
                {
                    out.push(CheckLine {
                        level: CheckLevel::Warn,
                        text,
                    });
                }
            }
        }
    }
    out
}
