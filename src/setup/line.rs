//! A line of `walhook check`: what every part of the check reports in.

/// How serious a line of `walhook check` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckLevel {
    Ok,
    /// Not a problem: what to do next (before `setup`, run it).
    Next,
    /// Not a problem: what a later step needs (a backfill's GRANTs).
    Note,
    Warn,
    Fail,
}

/// One line of `walhook check`.
#[derive(Debug, Clone)]
pub struct CheckLine {
    pub level: CheckLevel,
    pub text: String,
}
