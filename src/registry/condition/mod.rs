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

mod error;
mod eval;
mod expr;
mod like;
mod parse;
mod row;
mod value;

use std::collections::BTreeSet;

use crate::events::ChangeEvent;

pub use self::error::EvalError;
pub use self::parse::{ConditionError, MAX_CONDITION_CHARS};
pub use self::row::{RowPair, RowSide};
pub use self::value::SqlType;

/// A parsed condition, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The text as the DBA wrote it.
    source: String,
    expr: expr::Expr,
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

#[cfg(test)]
mod tests;
