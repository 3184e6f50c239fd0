//! Small text helpers every stage uses: cutting a message to a column's
//! size and showing durations to people.

use std::fmt::Write as _;
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

/// A URL as walhook prints it: any user name and password replaced by
/// `***`, and every query value (`?token=***&x=***`; a bare `?secret` as
/// `?***`), so credentials and tokens in a target URL never reach a log,
/// `last_error` or a listing. The scheme, host, port and path stay: they
/// say which target is meant.
pub fn redacted_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let _ = shown.set_password(None);
        let _ = shown.set_username("***");
    }
    if let Some(query) = url.query() {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if !value.is_empty() => format!("{key}=***"),
                Some(_) => pair.to_owned(),
                None if pair.is_empty() => String::new(),
                None => "***".to_owned(),
            })
            .collect();
        shown.set_query(Some(&pairs.join("&")));
    }
    shown.to_string()
}

/// [`redacted_url`] for a URL given as text; text that does not parse is
/// shown up to its last `@`, cut, and without what follows a `?`.
pub fn redacted_url_text(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(url) => redacted_url(&url),
        Err(_) => {
            let text = match text.split_once('?') {
                Some((before, _)) => format!("{before}?***"),
                None => text.to_owned(),
            };
            match text.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => text,
            }
        }
    }
}

/// `text` as a terminal may show it: control characters (ESC, CR,
/// backspace, C1 controls such as CSI) and the bidirectional overrides are
/// written as escapes (`\x1b`, `\u{9b}`, `\u{202e}`), so text from outside
/// (a target's answer in `last_error`, a row's value) can neither move the
/// cursor, retitle the window nor reorder what the DBA reads. Newline and
/// tab stay: a response's status line, headers and body read as lines.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !escaped(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// An error and its causes, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Parse JSON of any depth PostgreSQL accepts (about 15,000 levels with
/// its default `max_stack_depth`, more when raised), where serde_json
/// alone stops at 128: the parser's stack grows on the heap as it needs.
/// Serialising and dropping such a value recurse too; the daemon's
/// threads have stacks sized for it (see `main`).
pub fn parse_json(text: &str) -> serde_json::Result<serde_json::Value> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = serde_json::Value::deserialize(serde_stacker::Deserializer::new(&mut de))?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_deeper_than_serde_jsons_default_limit_parses() {
        let depth = 5_000;
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let value = parse_json(&text).expect("deep JSON parses");
        // Walk it without recursion.
        let mut levels = 0;
        let mut at = &value;
        while let Some(inner) = at.as_array().and_then(|a| a.first()) {
            at = inner;
            levels += 1;
        }
        assert_eq!(levels, depth - 1);
        assert!(parse_json("[1] x").is_err());
        std::mem::forget(value); // dropping 5,000 levels is main's job
    }

    #[test]
    fn url_credentials_are_hidden() {
        let url = url::Url::parse("https://user:secret@example.com/hook?x=1").unwrap();
        assert_eq!(redacted_url(&url), "https://***@example.com/hook?x=***");
        let plain = url::Url::parse("https://example.com/hook").unwrap();
        assert_eq!(redacted_url(&plain), "https://example.com/hook");
        assert_eq!(
            redacted_url_text("https://:pw@example.com/"),
            "https://***@example.com/"
        );
        assert_eq!(redacted_url_text("not a url user:pw@x"), "***@x");
    }

    #[test]
    fn url_query_values_are_hidden() {
        assert_eq!(
            redacted_url_text("https://h.example/in?token=s3cret&empty=&flag&x=1#top"),
            "https://h.example/in?token=***&empty=&***&x=***#top"
        );
        assert_eq!(
            redacted_url_text("https://h.example/in?"),
            "https://h.example/in?"
        );
        assert_eq!(
            redacted_url_text("not a url/in?token=s3cret"),
            "not a url/in?***"
        );
    }

    #[test]
    fn control_characters_print_escaped() {
        assert_eq!(
            printable("HTTP 500\n\x1b[2J\x1b]0;title\x07\r\u{9b}31m\u{202e}x\ty"),
            "HTTP 500\n\\x1b[2J\\x1b]0;title\\x07\\x0d\\u{9b}31m\\u{202e}x\ty"
        );
        assert!(matches!(
            printable("plain ä"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

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
