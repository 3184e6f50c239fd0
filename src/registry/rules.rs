//! A hook's row rules, walhook's own settings in `webhook_control`: its
//! condition (which rows it gets) and the columns it may see. Applied in
//! commit order with the rest of that row; evaluated only for hooks the
//! index already matched.

use std::collections::BTreeSet;

use serde_json::Value;

use super::condition::{Condition, EvalError};
use crate::events::{ChangeEvent, Operation, WebhookRow};

/// The most columns a `webhook columns` list may name.
pub const MAX_COLUMN_LIST: usize = 1600;

/// Which columns of its events a hook may see; the key always stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnFilter {
    Only(BTreeSet<String>),
    Except(BTreeSet<String>),
}

impl ColumnFilter {
    pub fn keeps(&self, column: &str) -> bool {
        match self {
            ColumnFilter::Only(names) => names.contains(column),
            ColumnFilter::Except(names) => !names.contains(column),
        }
    }

    /// The event as this hook may see it: FieldValues, Changes and
    /// MissingColumns hold only the kept columns and the key's.
    pub fn apply(&self, event: &ChangeEvent) -> ChangeEvent {
        let keep = |c: &str| self.keeps(c) || event.key_columns.iter().any(|k| k == c);
        let mut out = event.clone();
        out.field_values.retain(|c, _| keep(c));
        out.changes.retain(|c| keep(c));
        out.missing_columns.retain(|c| keep(c));
        // The old row never leaves the process, but a filtered copy does
        // not carry it either.
        out.condition_row.old = None;
        out
    }

    /// A list as `webhook columns` takes it: comma-separated names.
    pub fn parse_list(text: &str) -> Result<BTreeSet<String>, String> {
        let names: BTreeSet<String> = text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        check_names(&names)?;
        Ok(names)
    }
}

fn check_names(names: &BTreeSet<String>) -> Result<(), String> {
    if names.is_empty() {
        return Err("the column list is empty".into());
    }
    if names.len() > MAX_COLUMN_LIST {
        return Err(format!("more than {MAX_COLUMN_LIST} columns"));
    }
    if let Some(long) = names.iter().find(|n| n.len() > 63) {
        return Err(format!(
            "{:?} is longer than a PostgreSQL name (63 bytes)",
            crate::text::truncate_chars(long, 80)
        ));
    }
    Ok(())
}

/// A hook's condition and column filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookRules {
    pub condition: Option<Condition>,
    pub columns: Option<ColumnFilter>,
}

/// What a `webhook_control` row says of a hook's rules: an invalid value
/// makes the hook receive nothing until it is fixed (a hook must never
/// get rows or columns it was meant not to), as an invalid `webhook` row
/// is skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum RowRules {
    Valid(HookRules),
    Invalid(String),
}

impl RowRules {
    /// The rules of a `webhook_control` row (text values, the arrays as
    /// JSON), with its webhook_id; `None` without a valid id.
    pub fn from_row(row: &WebhookRow) -> Option<(i32, RowRules)> {
        let get = |name: &str| row.0.get(name).and_then(|v| v.as_deref());
        let id = get("webhook_id")?.parse::<i32>().ok()?;
        Some((
            id,
            Self::parse(get("condition"), get("columns_only"), get("columns_except")),
        ))
    }

    fn parse(condition: Option<&str>, only: Option<&str>, except: Option<&str>) -> RowRules {
        let condition = match condition.map(Condition::parse).transpose() {
            Ok(c) => c,
            Err(e) => return RowRules::Invalid(format!("condition: {e}")),
        };
        let list = |key: &str, text: &str| -> Result<BTreeSet<String>, String> {
            let names: Vec<String> = serde_json::from_str(text)
                .map_err(|e| format!("{key} is not a JSON array of names: {e}"))?;
            let names = names.into_iter().collect();
            check_names(&names).map_err(|e| format!("{key}: {e}"))?;
            Ok(names)
        };
        let columns = match (only, except) {
            (Some(_), Some(_)) => {
                return RowRules::Invalid("columns_only and columns_except are both set".into())
            }
            (Some(text), None) => match list("columns_only", text) {
                Ok(names) => Some(ColumnFilter::Only(names)),
                Err(e) => return RowRules::Invalid(e),
            },
            (None, Some(text)) => match list("columns_except", text) {
                Ok(names) => Some(ColumnFilter::Except(names)),
                Err(e) => return RowRules::Invalid(e),
            },
            (None, None) => None,
        };
        RowRules::Valid(HookRules { condition, columns })
    }
}

impl HookRules {
    /// Whether `event` goes to the hook. A truncate carries no row, so a
    /// condition does not hold it back.
    pub fn admits(&self, event: &ChangeEvent) -> Result<bool, EvalError> {
        match &self.condition {
            Some(c) if event.operation != Operation::Truncated => c.admits(event),
            _ => Ok(true),
        }
    }
}

/// The JSON array a column list is stored as.
pub fn column_list_json(names: &BTreeSet<String>) -> String {
    Value::from(names.iter().cloned().collect::<Vec<_>>()).to_string()
}
