//! Column values: PostgreSQL's text output to the JSON value `to_jsonb()`
//! would give.
//!
//! pgoutput sends each value in its type's text output form. The replication
//! session pins the settings that shape that form (see `source`), so this
//! module only has to apply the few rules by which `to_jsonb()` departs from
//! plain text: numbers, booleans, embedded JSON, arrays, and the ISO 8601
//! `T` form of timestamps. Everything else is the text itself, as in
//! `to_jsonb()`.

use serde_json::Value;

use super::catalog::{JsonCategory, TypeCatalog};

/// Convert one non-NULL value of type `type_oid` from its text form.
pub fn text_to_json(catalog: &TypeCatalog, type_oid: u32, text: &str) -> Value {
    convert(catalog, catalog.category(type_oid), text)
}

fn convert(catalog: &TypeCatalog, category: JsonCategory, text: &str) -> Value {
    match category {
        JsonCategory::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            other => Value::String(other.to_owned()),
        },
        JsonCategory::Number => number(text),
        JsonCategory::Json => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        JsonCategory::Date => Value::String(text.to_owned()),
        JsonCategory::Timestamp => Value::String(xsd_timestamp(text)),
        JsonCategory::Array { element, delimiter } => {
            let element_category = catalog.category(element);
            match parse_array(text, delimiter) {
                Some(array) => array_to_json(catalog, element_category, array),
                // Never lose a value over a parse failure: send the text.
                None => Value::String(text.to_owned()),
            }
        }
        JsonCategory::Text => Value::String(text.to_owned()),
    }
}

/// `to_jsonb()` emits a number when the output is a valid JSON number and a
/// string otherwise (NaN, Infinity).
fn number(text: &str) -> Value {
    if is_json_number(text) {
        if let Ok(n) = serde_json::from_str::<serde_json::Number>(text) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_owned())
}

fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// ISO output (`2024-01-01 08:00:00.5+00`) to the XSD form `to_jsonb()` uses
/// (`2024-01-01T08:00:00.5+00:00`). `infinity` and BC suffixes pass through.
fn xsd_timestamp(text: &str) -> String {
    let bytes = text.as_bytes();
    // The date part is at least YYYY-MM-DD; only a digit-led value has one.
    if bytes.len() < 11 || !bytes[0].is_ascii_digit() || bytes[10] != b' ' {
        return text.to_owned();
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, " BC"),
        None => (text, ""),
    };
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str(&body[..10]);
    out.push('T');
    let time = &body[11..];
    // A zone offset starts at the last '+' or '-' after the clock time.
    match time.rfind(['+', '-']) {
        Some(pos) => {
            let (clock, zone) = time.split_at(pos);
            out.push_str(clock);
            out.push_str(zone);
            if zone.len() == 3 {
                out.push_str(":00");
            }
        }
        None => out.push_str(time),
    }
    out.push_str(bc);
    out
}

/// A parsed array literal: nested lists, `None` for NULL elements.
#[derive(Debug, PartialEq)]
enum ArrayItem {
    Null,
    Scalar(String),
    Nested(Vec<ArrayItem>),
}

fn array_to_json(catalog: &TypeCatalog, element: JsonCategory, items: Vec<ArrayItem>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|item| match item {
                ArrayItem::Null => Value::Null,
                ArrayItem::Scalar(s) => convert(catalog, element, &s),
                ArrayItem::Nested(inner) => array_to_json(catalog, element, inner),
            })
            .collect(),
    )
}

/// Parse PostgreSQL's array output (`{1,2}`, `{{a,"b c"},{NULL,"\""}}`,
/// `[0:1]={1,2}`). Hand-written: no maintained crate parses the text array
/// format, and it is a small grammar.
fn parse_array(text: &str, delimiter: u8) -> Option<Vec<ArrayItem>> {
    let mut s = text.as_bytes();
    // Explicit bounds (`[2:3]={...}`) are dropped, as `to_jsonb()` does.
    if s.first() == Some(&b'[') {
        let eq = s.iter().position(|&c| c == b'=')?;
        s = &s[eq + 1..];
    }
    let mut pos = 0;
    let items = parse_level(s, &mut pos, delimiter)?;
    skip_ws(s, &mut pos);
    (pos == s.len()).then_some(items)
}

fn skip_ws(s: &[u8], pos: &mut usize) {
    while s.get(*pos).is_some_and(u8::is_ascii_whitespace) {
        *pos += 1;
    }
}

fn parse_level(s: &[u8], pos: &mut usize, delim: u8) -> Option<Vec<ArrayItem>> {
    skip_ws(s, pos);
    if s.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    skip_ws(s, pos);
    if s.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Some(items);
    }
    loop {
        skip_ws(s, pos);
        match s.get(*pos)? {
            b'{' => items.push(ArrayItem::Nested(parse_level(s, pos, delim)?)),
            b'"' => {
                *pos += 1;
                let mut buf = Vec::new();
                loop {
                    match *s.get(*pos)? {
                        b'\\' => {
                            buf.push(*s.get(*pos + 1)?);
                            *pos += 2;
                        }
                        b'"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            buf.push(c);
                            *pos += 1;
                        }
                    }
                }
                items.push(ArrayItem::Scalar(String::from_utf8(buf).ok()?));
            }
            _ => {
                let mut buf = Vec::new();
                while let Some(&c) = s.get(*pos) {
                    if c == delim || c == b'}' {
                        break;
                    }
                    if c == b'\\' {
                        buf.push(*s.get(*pos + 1)?);
                        *pos += 2;
                    } else {
                        buf.push(c);
                        *pos += 1;
                    }
                }
                let word = String::from_utf8(buf).ok()?;
                let word = word.trim_end();
                if word.eq_ignore_ascii_case("NULL") {
                    items.push(ArrayItem::Null);
                } else {
                    items.push(ArrayItem::Scalar(word.to_owned()));
                }
            }
        }
        skip_ws(s, pos);
        match *s.get(*pos)? {
            b'}' => {
                *pos += 1;
                return Some(items);
            }
            c if c == delim => *pos += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const INT4: u32 = 23;
    const FLOAT8: u32 = 701;
    const TEXT_ARRAY: u32 = 1009;
    const INT4_ARRAY: u32 = 1007;
    const TIMESTAMPTZ: u32 = 1184;
    const TIMESTAMP: u32 = 1114;

    fn cat() -> TypeCatalog {
        TypeCatalog::builtin()
    }

    #[test]
    fn numbers_and_non_numbers() {
        assert_eq!(text_to_json(&cat(), INT4, "42"), json!(42));
        assert_eq!(text_to_json(&cat(), FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(
            text_to_json(&cat(), FLOAT8, "-Infinity"),
            json!("-Infinity")
        );
        assert_eq!(text_to_json(&cat(), FLOAT8, "1e+100").to_string(), "1e+100");
        assert!(!is_json_number("1."));
        assert!(!is_json_number(".5"));
        assert!(is_json_number("-0.5e-3"));
    }

    #[test]
    fn timestamps_take_xsd_form() {
        assert_eq!(
            xsd_timestamp("2024-01-01 08:00:00.123456+00"),
            "2024-01-01T08:00:00.123456+00:00"
        );
        assert_eq!(
            xsd_timestamp("2024-01-01 08:00:00+05:30"),
            "2024-01-01T08:00:00+05:30"
        );
        assert_eq!(
            xsd_timestamp("0044-03-15 12:00:00+00 BC"),
            "0044-03-15T12:00:00+00:00 BC"
        );
        assert_eq!(xsd_timestamp("infinity"), "infinity");
        assert_eq!(
            text_to_json(&cat(), TIMESTAMP, "2024-01-01 08:00:00"),
            json!("2024-01-01T08:00:00")
        );
        assert_eq!(
            text_to_json(&cat(), TIMESTAMPTZ, "2024-01-01 08:00:00+00"),
            json!("2024-01-01T08:00:00+00:00")
        );
    }

    #[test]
    fn arrays() {
        assert_eq!(
            text_to_json(&cat(), INT4_ARRAY, "{1,2,NULL}"),
            json!([1, 2, null])
        );
        assert_eq!(
            text_to_json(&cat(), TEXT_ARRAY, r#"{a,"b c","NULL",NULL,"q\"x\\y"}"#),
            json!(["a", "b c", "NULL", null, "q\"x\\y"])
        );
        assert_eq!(
            text_to_json(&cat(), INT4_ARRAY, "{{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(
            text_to_json(&cat(), INT4_ARRAY, "[0:1]={7,8}"),
            json!([7, 8])
        );
        assert_eq!(text_to_json(&cat(), INT4_ARRAY, "{}"), json!([]));
        // Malformed input is kept as text, never dropped.
        assert_eq!(text_to_json(&cat(), INT4_ARRAY, "{1,2"), json!("{1,2"));
    }
}
