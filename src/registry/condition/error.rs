//! Why a condition has no answer.

/// Why a condition has no answer for an event. The event does not go to
/// the hook (as when the server raises in a trigger's WHEN), and the
/// daemon warns.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("division by zero")]
    DivisionByZero,
    #[error("{0} out of range")]
    Overflow(&'static str),
    #[error("column {0:?} is not in the table")]
    NoColumn(String),
    #[error("column {column:?} has type oid {oid}, which conditions do not read (see README's condition subset)")]
    UnsupportedColumn { column: String, oid: u32 },
    #[error("{side}.{column} was not sent by the server (REPLICA IDENTITY, or an unchanged TOASTed value)")]
    NotSent { side: &'static str, column: String },
    #[error("column {column:?}: {value} is not a {ty} walhook reads")]
    Value {
        column: String,
        ty: &'static str,
        value: String,
    },
    #[error("{0}")]
    Type(String),
    #[error("{0} is refused: its answer is not exact outside the server")]
    Refused(String),
    #[error("LIKE pattern must not end with escape character")]
    LikeEscape,
}
