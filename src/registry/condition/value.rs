//! The values a condition computes with: the column types walhook turns
//! into JSON that can be compared exactly, read back from the event's
//! JSON, and the strict forms a string literal may take for each.
//!
//! A literal is read only in a form whose meaning does not depend on a
//! server setting; PostgreSQL accepts more forms (`' 12 '`, `'0x1F'`,
//! `'yes'`, `'2024-01-01 10:00'` read in the session's TimeZone), and
//! those are refused rather than guessed.

use std::cmp::Ordering;
use std::str::FromStr;

use bigdecimal::BigDecimal;
use serde_json::Value;

use super::error::EvalError;

/// The types a condition computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Numeric,
    Text,
    Date,
    Timestamp,
    Timestamptz,
    /// A string literal before it takes the type of what it meets, as in
    /// PostgreSQL.
    Unknown,
}

impl SqlType {
    pub fn name(self) -> &'static str {
        match self {
            SqlType::Bool => "boolean",
            SqlType::Int2 => "smallint",
            SqlType::Int4 => "integer",
            SqlType::Int8 => "bigint",
            SqlType::Numeric => "numeric",
            SqlType::Text => "text",
            SqlType::Date => "date",
            SqlType::Timestamp => "timestamp without time zone",
            SqlType::Timestamptz => "timestamp with time zone",
            SqlType::Unknown => "unknown",
        }
    }

    /// The type of a column from its type oid; `None` for types outside
    /// the subset (floats, char(n), domains, ...).
    pub fn of_oid(oid: u32) -> Option<SqlType> {
        Some(match oid {
            16 => SqlType::Bool,
            21 => SqlType::Int2,
            23 => SqlType::Int4,
            20 => SqlType::Int8,
            1700 => SqlType::Numeric,
            25 | 1043 => SqlType::Text,
            1082 => SqlType::Date,
            1114 => SqlType::Timestamp,
            1184 => SqlType::Timestamptz,
            _ => return None,
        })
    }

    pub fn is_integer(self) -> bool {
        matches!(self, SqlType::Int2 | SqlType::Int4 | SqlType::Int8)
    }

    pub fn is_number(self) -> bool {
        self.is_integer() || self == SqlType::Numeric
    }

    /// The range of an integer type.
    pub fn int_range(self) -> (i64, i64) {
        match self {
            SqlType::Int2 => (i16::MIN.into(), i16::MAX.into()),
            SqlType::Int4 => (i32::MIN.into(), i32::MAX.into()),
            _ => (i64::MIN, i64::MAX),
        }
    }
}

/// A non-NULL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Bool(bool),
    /// Any integer type; the type travels beside it.
    Int(i64),
    Numeric(BigDecimal),
    Text(String),
    /// Days since 2000-01-01.
    Date(i64),
    /// Microseconds since 2000-01-01 (UTC for timestamptz).
    Micros(i64),
}

/// A typed value, NULL or not: a NULL keeps its type, so a literal that
/// does not fit it is an error even when the column is NULL, as in
/// PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct Typed {
    pub ty: SqlType,
    pub datum: Option<Datum>,
}

/// Numerics past this many digits are refused: the bound keeps a hostile
/// row or condition from costing unbounded time (PostgreSQL's own limit
/// is far larger, so a refusal here never hides one of its errors).
pub const MAX_NUMERIC_DIGITS: u64 = 1000;

pub fn check_numeric(n: BigDecimal) -> Result<BigDecimal, EvalError> {
    let (digits, scale) = n.as_bigint_and_exponent();
    let len = digits.to_string().trim_start_matches('-').len() as u64;
    if len > MAX_NUMERIC_DIGITS || scale.unsigned_abs() > MAX_NUMERIC_DIGITS {
        return Err(EvalError::Refused(format!(
            "a numeric value of more than {MAX_NUMERIC_DIGITS} digits"
        )));
    }
    Ok(n)
}

/// A column's value from the event's JSON, by the column's type.
pub fn from_json(ty: SqlType, column: &str, value: &Value) -> Result<Option<Datum>, EvalError> {
    let bad = || EvalError::Value {
        column: column.to_owned(),
        ty: ty.name(),
        value: crate::text::truncate_chars(&value.to_string(), 64),
    };
    if value.is_null() {
        return Ok(None);
    }
    Ok(Some(match ty {
        SqlType::Bool => Datum::Bool(value.as_bool().ok_or_else(bad)?),
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => match value {
            Value::Number(n) => Datum::Int(n.to_string().parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        SqlType::Numeric => match value {
            Value::Number(n) => Datum::Numeric(check_numeric(
                BigDecimal::from_str(&n.to_string()).map_err(|_| bad())?,
            )?),
            // NaN and the infinities: PostgreSQL orders them, walhook
            // refuses them rather than carry a second number model.
            _ => return Err(bad()),
        },
        SqlType::Text => Datum::Text(value.as_str().ok_or_else(bad)?.to_owned()),
        SqlType::Date => Datum::Date(parse_date(value.as_str().ok_or_else(bad)?).ok_or_else(bad)?),
        SqlType::Timestamp => {
            let text = value.as_str().ok_or_else(bad)?;
            Datum::Micros(parse_timestamp(text, false).ok_or_else(bad)?)
        }
        SqlType::Timestamptz => {
            let text = value.as_str().ok_or_else(bad)?;
            Datum::Micros(parse_timestamp(text, true).ok_or_else(bad)?)
        }
        SqlType::Unknown => return Err(bad()),
    }))
}

/// A string read as a value of `ty`, in the strict forms only; the error
/// names the text and the type.
pub fn from_text(ty: SqlType, text: &str) -> Result<Datum, EvalError> {
    let refused = |what: &str| {
        EvalError::Refused(format!(
            "the {} {:?} ({what})",
            ty.name(),
            crate::text::truncate_chars(text, 64)
        ))
    };
    match ty {
        SqlType::Bool => match text {
            "true" | "t" | "TRUE" => Ok(Datum::Bool(true)),
            "false" | "f" | "FALSE" => Ok(Datum::Bool(false)),
            _ => Err(refused("write 'true' or 'false'")),
        },
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => {
            let plain = text
                .strip_prefix(['-', '+'])
                .unwrap_or(text)
                .bytes()
                .all(|b| b.is_ascii_digit())
                && text.bytes().any(|b| b.is_ascii_digit());
            if !plain {
                return Err(refused("write plain digits with an optional sign"));
            }
            let (lo, hi) = ty.int_range();
            match text.parse::<i64>() {
                Ok(n) if n >= lo && n <= hi => Ok(Datum::Int(n)),
                _ => Err(EvalError::Overflow(ty.name())),
            }
        }
        SqlType::Numeric => {
            if !plain_decimal(text) {
                return Err(refused("write plain digits with an optional sign and point"));
            }
            Ok(Datum::Numeric(check_numeric(
                BigDecimal::from_str(text).map_err(|_| refused("not a number"))?,
            )?))
        }
        SqlType::Text | SqlType::Unknown => Ok(Datum::Text(text.to_owned())),
        SqlType::Date => parse_date(text)
            .map(Datum::Date)
            .ok_or_else(|| refused("write YYYY-MM-DD")),
        SqlType::Timestamp => parse_timestamp(text, false)
            .map(Datum::Micros)
            .ok_or_else(|| refused("write YYYY-MM-DD HH:MM:SS[.ffffff]")),
        SqlType::Timestamptz => parse_timestamp(text, true).map(Datum::Micros).ok_or_else(|| {
            refused("write YYYY-MM-DD HH:MM:SS[.ffffff] with an offset (+02, +05:30 or Z): without one its meaning depends on the TimeZone setting")
        }),
    }
}

/// Digits, at most one point, an optional sign; no exponent, no blanks.
fn plain_decimal(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    (!int.is_empty() || !frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Days from 2000-01-01 to a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm, shifted to PostgreSQL's epoch.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - 10_957
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(text: &str) -> Option<i64> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` (years 1 to 9999).
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d) = (digits(y)?, digits(m)?, digits(d)?);
    if y < 1 || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.f{1,6}]`, with an offset (`Z`, `+HH`,
/// `+HH:MM`, as to_jsonb writes them) exactly when `with_zone`.
pub fn parse_timestamp(text: &str, with_zone: bool) -> Option<i64> {
    if text.len() < 19 || !text.is_char_boundary(10) || !text.is_char_boundary(19) {
        return None;
    }
    let date = parse_date(&text[..10])?;
    if !matches!(text.as_bytes()[10], b' ' | b'T') {
        return None;
    }
    let time = &text[11..19];
    let b = time.as_bytes();
    if b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, mi, s) = (
        digits(&time[..2])?,
        digits(&time[3..5])?,
        digits(&time[6..8])?,
    );
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        // More than six digits would be rounded by the server.
        if n == 0 || n > 6 {
            return None;
        }
        micros = digits(&frac[..n])? * 10_i64.pow(6 - n as u32);
        rest = &frac[n..];
    }
    let offset = if with_zone {
        if rest == "Z" {
            0
        } else {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let zone = &rest[1..];
            let (oh, om) = match zone.len() {
                2 => (digits(zone)?, 0),
                5 if zone.as_bytes()[2] == b':' => (digits(&zone[..2])?, digits(&zone[3..])?),
                _ => return None,
            };
            if oh > 15 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    } else {
        if !rest.is_empty() {
            return None;
        }
        0
    };
    Some(((date * 86_400 + h * 3600 + mi * 60 + s - offset) * 1_000_000) + micros)
}

/// Order two values of one comparable kind.
pub fn compare(a: &Datum, b: &Datum) -> Option<Ordering> {
    Some(match (a, b) {
        (Datum::Bool(a), Datum::Bool(b)) => a.cmp(b),
        (Datum::Int(a), Datum::Int(b)) => a.cmp(b),
        (Datum::Numeric(a), Datum::Numeric(b)) => a.cmp(b),
        (Datum::Int(a), Datum::Numeric(b)) => BigDecimal::from(*a).cmp(b),
        (Datum::Numeric(a), Datum::Int(b)) => a.cmp(&BigDecimal::from(*b)),
        (Datum::Text(a), Datum::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        (Datum::Date(a), Datum::Date(b)) => a.cmp(b),
        (Datum::Micros(a), Datum::Micros(b)) => a.cmp(b),
        // A date meets a timestamp as its midnight.
        (Datum::Date(a), Datum::Micros(b)) => (a * 86_400_000_000).cmp(b),
        (Datum::Micros(a), Datum::Date(b)) => a.cmp(&(b * 86_400_000_000)),
        _ => return None,
    })
}
