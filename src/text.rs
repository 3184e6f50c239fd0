//! Small text helpers every stage uses: cutting a message to a column's
//! size and showing durations to people.

use std::time::Duration;

/// The most `last_error` holds, as SuperOffice's String(4000).
pub const LAST_ERROR_MAX_CHARS: usize = 4000;

/// `text` cut to at most `max` characters (not bytes: never splits a
/// character).
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

/// The first line of a message, for one-line log entries.
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// A duration as people read it: `22.9s`, `1.5s`, `350ms`, `4m 10s`.
pub fn human_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis < 1_000 {
        format!("{millis}ms")
    } else if millis < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("äöü", 2), "äö");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(
            human_duration(Duration::from_nanos(22_901_194_366)),
            "22.9s"
        );
        assert_eq!(human_duration(Duration::from_millis(350)), "350ms");
        assert_eq!(human_duration(Duration::from_secs(250)), "4m 10s");
    }
}
