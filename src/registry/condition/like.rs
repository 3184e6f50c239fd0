//! LIKE as PostgreSQL matches it under a deterministic collation: `_` is
//! one character, `%` any run of them, the escape character (`\` unless
//! ESCAPE says otherwise) makes the next one literal. Hand-written: it is
//! a dozen lines, and a regex crate would need the pattern translated
//! with the same care.

use super::error::EvalError;

enum Token {
    Char(char),
    One,
    Any,
}

fn tokens(pattern: &str, escape: Option<char>) -> Result<Vec<Token>, EvalError> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            out.push(Token::Char(chars.next().ok_or(EvalError::LikeEscape)?));
        } else if c == '%' {
            if !matches!(out.last(), Some(Token::Any)) {
                out.push(Token::Any);
            }
        } else if c == '_' {
            out.push(Token::One);
        } else {
            out.push(Token::Char(c));
        }
    }
    Ok(out)
}

/// Whether `text` matches `pattern`. Greedy with one backtrack point (the
/// last `%`), so the work is at most text length times pattern length.
pub fn matches(text: &str, pattern: &str, escape: Option<char>) -> Result<bool, EvalError> {
    let pattern = tokens(pattern, escape)?;
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Token::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Token::One) => {
                t += 1;
                p += 1;
            }
            Some(Token::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return Ok(false),
            },
        }
    }
    Ok(pattern[p..].iter().all(|t| matches!(t, Token::Any)))
}
