//! Text for people: aligned columns, key-value lines, sizes.

use crate::registry::WebhookState;
use crate::text::{printable, truncate_chars};

pub(super) fn state_name(state: i16) -> String {
    match WebhookState::from_i16(state) {
        Some(s) => s.to_string(),
        None => format!("invalid ({state})"),
    }
}

/// Aligned columns; the last one is not padded.
pub(super) fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(printable(cell).chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let cell = printable(cell);
            if i + 1 == row.len() {
                line.push_str(&cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(&cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A parked event's row key as people read it: `crm.contact (4)` for the
/// stored `crm.contact<US>4` (the unit separator keeps table and key
/// values apart, and would print as a control character).
pub(super) fn row_key(key: &str) -> String {
    match key.split_once('\u{1f}') {
        Some((table, values)) => format!("{table} ({values})"),
        None => key.to_owned(),
    }
}

/// `key   value` lines, the values aligned.
pub(super) fn pairs(lines: &[(&str, String)]) -> String {
    let width = lines
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:width$}  {}\n", printable(v)))
        .collect()
}

/// The first line of `text`, at most `max` characters.
pub(super) fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        format!("{}...", truncate_chars(line, max.saturating_sub(3)))
    } else {
        line.to_owned()
    }
}

/// A byte count, with a binary unit when large.
pub(super) fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n.unsigned_abs() < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        if value.abs() < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{n} bytes ({value:.1} {unit})")
}

/// `-` for a missing value.
pub(super) fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let out = columns(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["10".into(), "bbb".into()],
            ],
        );
        assert_eq!(out, "ID  NAME\n1   a\n10  bbb\n");
    }

    #[test]
    fn short_takes_the_first_line() {
        assert_eq!(short("HTTP 500 Internal\nx: y", 60), "HTTP 500 Internal");
        assert_eq!(short("abcdefghij", 6), "abc...");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(12), "12 bytes");
        assert_eq!(bytes(2048), "2048 bytes (2.0 KiB)");
    }

    #[test]
    fn pairs_align_values() {
        assert_eq!(
            pairs(&[("slot", "a".into()), ("wal_status", "b".into())]),
            "slot        a\nwal_status  b\n"
        );
    }
}
