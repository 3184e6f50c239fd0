//! The rows a condition reads: the new and old side of a change.

use serde_json::{Map, Value};

use crate::events::{ChangeEvent, Operation};

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
