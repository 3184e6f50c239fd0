//! A hook's condition: a boolean SQL expression over the event's new and
//! old row (`new.status = 'won' and old.status is distinct from 'won'`),
//! evaluated as PostgreSQL would, only for hooks the index already matched.
//!
//! The text is parsed by sqlparser (PostgreSQL's dialect) and compiled into
//! walhook's own small expression ([`parse`]), which [`eval`] evaluates over
//! the event's values with SQL's three-valued logic. The subset is what can
//! be evaluated exactly outside the server: a construct whose answer would
//! depend on a server setting (a collation's order, TimeZone, DateStyle) or
//! on rounding (floats, numeric division) is refused with a message naming
//! it, never approximated. Errors the server would raise at run time
//! (division by zero, overflow, a literal that is not of the column's type)
//! are an [`EvalError`]: the event does not go to the hook, and the
//! daemon warns.

mod eval;
mod like;
mod parse;
mod value;

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::events::{ChangeEvent, Operation};

pub use self::eval::EvalError;
pub use self::parse::{ConditionError, MAX_CONDITION_CHARS};
pub use self::value::SqlType;

/// A parsed condition, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The text as the DBA wrote it.
    source: String,
    expr: parse::Expr,
    /// The `old.` columns it reads, for the REPLICA IDENTITY warning.
    old_columns: BTreeSet<String>,
}

impl Condition {
    /// Parse and compile `source`; anything outside the subset is refused
    /// with a message naming the construct.
    pub fn parse(source: &str) -> Result<Condition, ConditionError> {
        let (expr, old_columns) = parse::compile(source)?;
        Ok(Condition {
            source: source.to_owned(),
            expr,
            old_columns,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The columns it reads as `old.<column>`.
    pub fn old_columns(&self) -> &BTreeSet<String> {
        &self.old_columns
    }

    /// Evaluate over two rows: `Ok(None)` is SQL's NULL.
    pub fn evaluate(&self, row: &RowPair<'_>) -> Result<Option<bool>, EvalError> {
        eval::evaluate(&self.expr, row)
    }

    /// Whether the event goes to the hook: only when the condition is true.
    pub fn admits(&self, event: &ChangeEvent) -> Result<bool, EvalError> {
        Ok(self.evaluate(&RowPair::of(event))? == Some(true))
    }
}

/// One side of a row change, as a condition reads it.
#[derive(Debug, Clone, Copy)]
pub enum RowSide<'a> {
    /// There is no such row (`old` of an INSERT, `new` of a DELETE): every
    /// column is NULL, as in a trigger.
    Absent,
    /// The row's values; a column in `unknown`, or outside `known_only`
    /// when that is set, was not sent by the server.
    Row {
        values: &'a Map<String, Value>,
        unknown: &'a [String],
        known_only: Option<&'a [String]>,
    },
}

/// The new and old row of a change, with each column's type.
#[derive(Debug, Clone, Copy)]
pub struct RowPair<'a> {
    /// Column name to type oid.
    pub types: &'a std::collections::BTreeMap<String, u32>,
    pub new: RowSide<'a>,
    pub old: RowSide<'a>,
}

impl<'a> RowPair<'a> {
    /// The rows of an event: FieldValues is the new row (the old one for a
    /// DELETE); the old row of an UPDATE is what the WAL carried.
    pub fn of(event: &'a ChangeEvent) -> RowPair<'a> {
        let types = &*event.condition_row.types;
        let field_values = RowSide::Row {
            values: &event.field_values,
            unknown: &event.missing_columns,
            known_only: None,
        };
        let (new, old) = match event.operation {
            Operation::Created | Operation::Truncated => (field_values, RowSide::Absent),
            Operation::Deleted => (RowSide::Absent, field_values),
            Operation::Changed => {
                let old = match &event.condition_row.old {
                    Some(old) => RowSide::Row {
                        values: &old.values,
                        unknown: &old.unknown,
                        known_only: (!old.full).then_some(event.key_columns.as_slice()),
                    },
                    // No old row: the key did not change, the rest is not
                    // known (REPLICA IDENTITY DEFAULT).
                    None => RowSide::Row {
                        values: &event.field_values,
                        unknown: &[],
                        known_only: Some(&event.key_columns),
                    },
                };
                (field_values, old)
            }
        };
        RowPair { types, new, old }
    }
}

#[cfg(test)]
mod tests;
