//! Column values: PostgreSQL's text output to the JSON value `to_jsonb()`
//! would give.
//!
//! pgoutput sends each value in its type's text output form. The replication
//! session pins the settings that shape that form (see `source`), so this
//! module only has to apply the few rules by which `to_jsonb()` departs from
//! plain text: numbers, booleans, embedded JSON, arrays, composites (objects
//! of their attributes, converted by the attributes' types), hstore (through
//! its cast to json) and the ISO 8601 `T` form of timestamps. Everything
//! else is the text itself, as in `to_jsonb()`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::catalog::{JsonCategory, TypeCatalog};

/// Composites nest, but a value cannot contain itself; the bound only
/// guards against a corrupt catalog.
const MAX_DEPTH: usize = 64;

/// Convert one non-NULL value of type `type_oid` from its text form.
pub fn text_to_json(catalog: &TypeCatalog, type_oid: u32, text: &str) -> Value {
    convert(catalog, catalog.category(type_oid), text, 0)
}

fn convert(catalog: &TypeCatalog, category: JsonCategory, text: &str, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::String(text.to_owned());
    }
    match category {
        JsonCategory::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            other => Value::String(other.to_owned()),
        },
        JsonCategory::Number => number(text),
        JsonCategory::Json => {
            crate::text::parse_json(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        JsonCategory::Date => Value::String(text.to_owned()),
        JsonCategory::Timestamp => Value::String(xsd_timestamp(text)),
        JsonCategory::Array { element, delimiter } => {
            let element_category = catalog.category(element);
            match parse_array(text, delimiter) {
                Some(array) => array_to_json(catalog, element_category, array, depth),
                // Never lose a value over a parse failure: send the text.
                None => Value::String(text.to_owned()),
            }
        }
        JsonCategory::Composite { oid } => composite(catalog, oid, text, depth),
        JsonCategory::Hstore => parse_hstore(text)
            .map(Value::Object)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        JsonCategory::JsonCast { oid } => {
            warn_once(
                oid,
                Warning::JsonCast,
                &format!(
                    "type {} has a cast to json that walhook cannot reproduce; \
                     its values are sent as text, where to_jsonb() would use the cast",
                    catalog.type_name(oid)
                ),
            );
            Value::String(text.to_owned())
        }
        JsonCategory::Text => Value::String(text.to_owned()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Warning {
    FieldCount,
    NoFields,
    JsonCast,
}

/// Log `message` once per type and kind of problem.
fn warn_once(oid: u32, kind: Warning, message: &str) {
    static WARNED: Mutex<BTreeSet<(u32, Warning)>> = Mutex::new(BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut warned| warned.insert((oid, kind)))
        .unwrap_or(true);
    if first {
        tracing::warn!(type_oid = oid, "{message}");
    }
}

/// A composite value: an object of its attributes, as `to_jsonb()` gives.
/// The names come from the catalog, so a value whose field count does not
/// match it (the type was altered after the value was written) is sent as
/// its text rather than under wrong names.
fn composite(catalog: &TypeCatalog, oid: u32, text: &str, depth: usize) -> Value {
    let Some(fields) = catalog.fields(oid) else {
        warn_once(
            oid,
            Warning::NoFields,
            &format!(
                "composite type {} has no attributes in walhook's type catalog; \
                 its values are sent as text",
                catalog.type_name(oid)
            ),
        );
        catalog.mark_stale();
        return Value::String(text.to_owned());
    };
    // `()` is both a row of no attributes and a row of one NULL.
    let values = if fields.is_empty() && text.trim() == "()" {
        Some(Vec::new())
    } else {
        parse_record(text)
    };
    match values {
        Some(values) if values.len() == fields.len() => Value::Object(
            fields
                .iter()
                .zip(values)
                .map(|(field, value)| {
                    let json = match value {
                        None => Value::Null,
                        Some(v) => {
                            convert(catalog, catalog.category(field.type_oid), &v, depth + 1)
                        }
                    };
                    (field.name.clone(), json)
                })
                .collect::<Map<String, Value>>(),
        ),
        Some(values) => {
            warn_once(
                oid,
                Warning::FieldCount,
                &format!(
                    "a value of composite type {} has {} fields where walhook's type catalog \
                     has {} (the type was altered); such values are sent as text",
                    catalog.type_name(oid),
                    values.len(),
                    fields.len()
                ),
            );
            // The catalog may predate an ALTER TYPE; the caller decides
            // whether a new one would help (`TypeCatalog::outdated_by`).
            catalog.mark_stale();
            Value::String(text.to_owned())
        }
        None => Value::String(text.to_owned()),
    }
}

/// Parse a record's text output, `(1,"a b",,"")`: `None` for a NULL field
/// (nothing between the commas), the field's text otherwise. Follows
/// `record_in`: double quotes may surround any part of a field, and inside
/// them `""` and `\"` are a quote; `\` escapes the next character anywhere.
fn parse_record(text: &str) -> Option<Vec<Option<String>>> {
    let s = text.trim().as_bytes();
    if s.first() != Some(&b'(') {
        return None;
    }
    let mut pos = 1;
    let mut fields = Vec::new();
    loop {
        let c = *s.get(pos)?;
        if c == b',' || c == b')' {
            fields.push(None);
        } else {
            let mut buf = Vec::new();
            let mut quoted = false;
            loop {
                let c = *s.get(pos)?;
                match (quoted, c) {
                    (_, b'\\') => {
                        buf.push(*s.get(pos + 1)?);
                        pos += 2;
                    }
                    (true, b'"') if s.get(pos + 1) == Some(&b'"') => {
                        buf.push(b'"');
                        pos += 2;
                    }
                    (_, b'"') => {
                        quoted = !quoted;
                        pos += 1;
                    }
                    (false, b',' | b')') => break,
                    _ => {
                        buf.push(c);
                        pos += 1;
                    }
                }
            }
            fields.push(Some(String::from_utf8(buf).ok()?));
        }
        match s[pos] {
            b',' => pos += 1,
            _ => {
                pos += 1;
                break;
            }
        }
    }
    (pos == s.len()).then_some(fields)
}

/// Parse hstore's text output (`"a"=>"1", "b"=>NULL`) into what its cast
/// to json, `hstore_to_json`, gives: an object of strings and nulls.
fn parse_hstore(text: &str) -> Option<Map<String, Value>> {
    let s = text.as_bytes();
    let mut pos = 0;
    let mut map = Map::new();
    loop {
        skip_ws(s, &mut pos);
        if pos == s.len() {
            return Some(map);
        }
        let key = quoted_string(s, &mut pos)?;
        skip_ws(s, &mut pos);
        if !s[pos..].starts_with(b"=>") {
            return None;
        }
        pos += 2;
        skip_ws(s, &mut pos);
        let value = if s[pos..].starts_with(b"NULL") {
            pos += 4;
            Value::Null
        } else {
            Value::String(quoted_string(s, &mut pos)?)
        };
        map.insert(key, value);
        skip_ws(s, &mut pos);
        match s.get(pos) {
            None => return Some(map),
            Some(b',') => pos += 1,
            Some(_) => return None,
        }
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
    // Only a digit-led value has a date part (not `infinity`); the year
    // may have more than four digits.
    if !text.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return text.to_owned();
    }
    let Some((date, rest)) = text.split_once(' ') else {
        return text.to_owned();
    };
    let (time, bc) = match rest.strip_suffix(" BC") {
        Some(t) => (t, " BC"),
        None => (rest, ""),
    };
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str(date);
    out.push('T');
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

fn array_to_json(
    catalog: &TypeCatalog,
    element: JsonCategory,
    items: Vec<ArrayItem>,
    depth: usize,
) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|item| match item {
                ArrayItem::Null => Value::Null,
                ArrayItem::Scalar(s) => convert(catalog, element, &s, depth + 1),
                ArrayItem::Nested(inner) => array_to_json(catalog, element, inner, depth + 1),
            })
            .collect(),
    )
}

/// Parse PostgreSQL's array output (`{1,2}`, `{{a,"b c"},{NULL,"\""}}`,
/// `[0:1]={1,2}`), and that of `int2vector` and `oidvector` (`1 2`), which
/// are true arrays to `to_jsonb()` but print without braces. Hand-written: no maintained crate parses the text array
/// format, and it is a small grammar.
fn parse_array(text: &str, delimiter: u8) -> Option<Vec<ArrayItem>> {
    let mut s = text.as_bytes();
    if !matches!(s.first(), Some(b'{' | b'[')) {
        return text
            .split_ascii_whitespace()
            .map(|word| {
                word.bytes()
                    .all(|c| c.is_ascii_digit() || c == b'-')
                    .then(|| ArrayItem::Scalar(word.to_owned()))
            })
            .collect();
    }
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

/// A double-quoted element with backslash escapes, as array and hstore
/// output write it; `pos` is at the opening quote and ends past the closing
/// one. `None` when there is no quote there or the text ends inside it.
fn quoted_string(s: &[u8], pos: &mut usize) -> Option<String> {
    if s.get(*pos) != Some(&b'"') {
        return None;
    }
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
                return String::from_utf8(buf).ok();
            }
            c => {
                buf.push(c);
                *pos += 1;
            }
        }
    }
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
            b'"' => items.push(ArrayItem::Scalar(quoted_string(s, pos)?)),
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
mod tests;
