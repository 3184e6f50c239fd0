//! Evaluation with PostgreSQL's semantics over the subset: NULLs keep
//! their type, AND and OR evaluate left to right and stop as the server's
//! executor does, a string literal takes the type of what it meets, and
//! integer arithmetic overflows where the server's would.

use std::collections::BTreeMap;

use bigdecimal::{BigDecimal, RoundingMode};

use super::error::EvalError;
use super::expr::{ArithOp, CmpOp, Expr, Side, Truth};
use super::like;
use super::value::{self, compare, from_json, from_text, Datum, SqlType, Typed};
use super::{RowPair, RowSide};

/// Evaluate a whole condition: a boolean, or NULL.
pub fn evaluate(expr: &Expr, row: &RowPair<'_>) -> Result<Option<bool>, EvalError> {
    // The server types the whole expression before it evaluates any of
    // it: a literal that does not fit its column fails even in a branch
    // AND or OR never reaches.
    let ty = typecheck(expr, row)?;
    if !matches!(ty, SqlType::Bool | SqlType::Unknown) {
        return Err(EvalError::Type(format!(
            "a {} where a boolean is needed",
            ty.name()
        )));
    }
    truth_value(eval(expr, row)?)
}

/// A value of type `ty` without a value, for typing: a string literal
/// keeps its text, so its coercion is checked as the server's parser does.
fn typed_only(expr: &Expr, ty: SqlType) -> Typed {
    match expr {
        Expr::Literal(v) => v.clone(),
        _ => Typed { ty, datum: None },
    }
}

/// The expression's type over the row's column types, with every error
/// the server raises while parsing: unknown columns, operators that do
/// not exist, literals that do not read as the type they meet.
fn typecheck(expr: &Expr, row: &RowPair<'_>) -> Result<SqlType, EvalError> {
    let boolean_operand = |e: &Expr| -> Result<(), EvalError> {
        let t = typecheck(e, row)?;
        truth_value(coerce(typed_only(e, t), SqlType::Bool)?).map(|_| ())
    };
    let pair = |a: &Expr, b: &Expr| -> Result<(Typed, Typed), EvalError> {
        let (ta, tb) = (typecheck(a, row)?, typecheck(b, row)?);
        resolve(typed_only(a, ta), typed_only(b, tb)).map(|(x, y)| {
            (
                Typed {
                    ty: x.ty,
                    datum: None,
                },
                Typed {
                    ty: y.ty,
                    datum: None,
                },
            )
        })
    };
    Ok(match expr {
        Expr::Literal(v) => v.ty,
        Expr::Column { side, name } => column_type(row, *side, name)?,
        Expr::Not(e) | Expr::IsTruth { expr: e, .. } => {
            boolean_operand(e)?;
            SqlType::Bool
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            boolean_operand(a)?;
            boolean_operand(b)?;
            SqlType::Bool
        }
        Expr::Compare { op, left, right } => {
            let (a, b) = pair(left, right)?;
            compare_op(*op, &a, &b, collated(left) || collated(right))?;
            SqlType::Bool
        }
        Expr::Distinct { left, right, .. } => {
            let (a, b) = pair(left, right)?;
            check_comparable(&a, &b, "=")?;
            SqlType::Bool
        }
        Expr::In { expr, list, .. } => {
            for item in list {
                let (a, b) = pair(expr, item)?;
                compare_op(CmpOp::Eq, &a, &b, false)?;
            }
            SqlType::Bool
        }
        Expr::IsNull { expr, .. } => {
            typecheck(expr, row)?;
            SqlType::Bool
        }
        Expr::Arith { op, left, right } => {
            let (ta, tb) = (typecheck(left, row)?, typecheck(right, row)?);
            let (a, b) = (typed_only(left, ta), typed_only(right, tb));
            let strip = |v: Typed| Typed {
                ty: v.ty,
                datum: if v.ty == SqlType::Unknown {
                    v.datum
                } else {
                    None
                },
            };
            arith(*op, strip(a), strip(b))?.ty
        }
        Expr::Negate(e) => {
            let t = typecheck(e, row)?;
            if !t.is_number() {
                return Err(EvalError::Type(format!(
                    "operator does not exist: - {}",
                    t.name()
                )));
            }
            t
        }
        Expr::Like {
            expr,
            pattern,
            case_insensitive,
            ..
        } => {
            let word = if *case_insensitive { "~~*" } else { "~~" };
            let (te, tp) = (typecheck(expr, row)?, typecheck(pattern, row)?);
            let text = coerce(typed_only(expr, te), SqlType::Text)?;
            let pat = coerce(typed_only(pattern, tp), SqlType::Text)?;
            if text.ty != SqlType::Text || pat.ty != SqlType::Text {
                return Err(no_operator(word, text.ty, pat.ty));
            }
            SqlType::Bool
        }
        Expr::Cast { expr, to } => {
            let t = typecheck(expr, row)?;
            let v = typed_only(expr, t);
            // A literal is read as the type now; anything else only when
            // it has a value.
            let v = if v.ty == SqlType::Unknown {
                v
            } else {
                Typed { ty: t, datum: None }
            };
            cast(v, *to)?.ty
        }
        Expr::CollateC(e) => {
            let t = typecheck(e, row)?;
            if !matches!(t, SqlType::Text | SqlType::Unknown) {
                return Err(EvalError::Type(format!(
                    "collations are not supported by type {}",
                    t.name()
                )));
            }
            SqlType::Text
        }
    })
}

/// Evaluate every part without a column now, as the server's planner
/// folds constants: `1/0` is refused when the condition is set, not at
/// the first event.
pub fn fold_constants(expr: Expr) -> Result<Expr, EvalError> {
    let types = BTreeMap::new();
    let empty = RowPair {
        types: &types,
        new: RowSide::Absent,
        old: RowSide::Absent,
    };
    fold(expr, &empty)
}

fn fold(expr: Expr, empty: &RowPair<'_>) -> Result<Expr, EvalError> {
    let constant = !has_column(&expr);
    let boxed = |e: Box<Expr>| fold(*e, empty).map(Box::new);
    let expr = match expr {
        // Kept as written: the collation marks the comparison above it.
        Expr::CollateC(e) => return Ok(Expr::CollateC(boxed(e)?)),
        Expr::Literal(_) | Expr::Column { .. } => return Ok(expr),
        e if constant && !has_collation(&e) => e,
        Expr::Not(e) => Expr::Not(boxed(e)?),
        Expr::And(a, b) => Expr::And(boxed(a)?, boxed(b)?),
        Expr::Or(a, b) => Expr::Or(boxed(a)?, boxed(b)?),
        Expr::Compare { op, left, right } => Expr::Compare {
            op,
            left: boxed(left)?,
            right: boxed(right)?,
        },
        Expr::Arith { op, left, right } => Expr::Arith {
            op,
            left: boxed(left)?,
            right: boxed(right)?,
        },
        Expr::Negate(e) => Expr::Negate(boxed(e)?),
        Expr::IsNull { expr, negated } => Expr::IsNull {
            expr: boxed(expr)?,
            negated,
        },
        Expr::IsTruth {
            expr,
            truth,
            negated,
        } => Expr::IsTruth {
            expr: boxed(expr)?,
            truth,
            negated,
        },
        Expr::Distinct {
            left,
            right,
            negated,
        } => Expr::Distinct {
            left: boxed(left)?,
            right: boxed(right)?,
            negated,
        },
        Expr::In {
            expr,
            list,
            negated,
        } => Expr::In {
            expr: boxed(expr)?,
            list: list
                .into_iter()
                .map(|e| fold(e, empty))
                .collect::<Result<_, _>>()?,
            negated,
        },
        Expr::Like {
            expr,
            pattern,
            escape,
            case_insensitive,
            negated,
        } => Expr::Like {
            expr: boxed(expr)?,
            pattern: boxed(pattern)?,
            escape,
            case_insensitive,
            negated,
        },
        Expr::Cast { expr, to } => Expr::Cast {
            expr: boxed(expr)?,
            to,
        },
    };
    if constant && !has_collation(&expr) {
        Ok(Expr::Literal(eval(&expr, empty)?))
    } else {
        Ok(expr)
    }
}

fn children(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::Column { .. } | Expr::Literal(_) => vec![],
        Expr::Not(e) | Expr::Negate(e) | Expr::CollateC(e) => vec![e],
        Expr::IsNull { expr, .. } | Expr::IsTruth { expr, .. } | Expr::Cast { expr, .. } => {
            vec![expr]
        }
        Expr::And(a, b) | Expr::Or(a, b) => vec![a, b],
        Expr::Compare { left, right, .. }
        | Expr::Arith { left, right, .. }
        | Expr::Distinct { left, right, .. } => vec![left, right],
        Expr::In { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
        Expr::Like { expr, pattern, .. } => vec![expr, pattern],
    }
}

fn has_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column { .. }) || children(expr).into_iter().any(has_column)
}

fn has_collation(expr: &Expr) -> bool {
    matches!(expr, Expr::CollateC(_)) || children(expr).into_iter().any(has_collation)
}

fn truth_value(v: Typed) -> Result<Option<bool>, EvalError> {
    let v = coerce(v, SqlType::Bool)?;
    match (v.ty, v.datum) {
        (_, None) => Ok(None),
        (SqlType::Bool, Some(Datum::Bool(b))) => Ok(Some(b)),
        (ty, _) => Err(EvalError::Type(format!(
            "a {} where a boolean is needed",
            ty.name()
        ))),
    }
}

fn boolean(b: Option<bool>) -> Typed {
    Typed {
        ty: SqlType::Bool,
        datum: b.map(Datum::Bool),
    }
}

/// A string literal (or NULL) meeting type `ty` takes it.
fn coerce(v: Typed, ty: SqlType) -> Result<Typed, EvalError> {
    if v.ty != SqlType::Unknown || ty == SqlType::Unknown {
        return Ok(v);
    }
    let datum = match v.datum {
        None => None,
        Some(Datum::Text(s)) => Some(from_text(ty, &s)?),
        Some(other) => Some(other),
    };
    Ok(Typed { ty, datum })
}

/// Two operands brought to types an operator takes, as the server
/// resolves them: unknown takes the other side's type, two unknowns are
/// text.
fn resolve(a: Typed, b: Typed) -> Result<(Typed, Typed), EvalError> {
    match (a.ty, b.ty) {
        (SqlType::Unknown, SqlType::Unknown) => {
            Ok((coerce(a, SqlType::Text)?, coerce(b, SqlType::Text)?))
        }
        (SqlType::Unknown, t) => Ok((coerce(a, t)?, b)),
        (t, SqlType::Unknown) => {
            let b = coerce(b, t)?;
            Ok((a, b))
        }
        _ => Ok((a, b)),
    }
}

fn comparable(a: SqlType, b: SqlType) -> bool {
    use SqlType::*;
    (a.is_number() && b.is_number())
        || a == b
        || matches!((a, b), (Date, Timestamp) | (Timestamp, Date))
}

fn no_operator(op: &str, a: SqlType, b: SqlType) -> EvalError {
    EvalError::Type(format!(
        "operator does not exist: {} {op} {}",
        a.name(),
        b.name()
    ))
}

fn refused_zone(a: SqlType, b: SqlType) -> Option<EvalError> {
    use SqlType::*;
    matches!(
        (a, b),
        (Timestamptz, Date | Timestamp) | (Date | Timestamp, Timestamptz)
    )
    .then(|| {
        EvalError::Refused(format!(
            "comparing {} with {} (it depends on the TimeZone setting)",
            a.name(),
            b.name()
        ))
    })
}

fn collated(expr: &Expr) -> bool {
    matches!(expr, Expr::CollateC(_))
}

fn eval(expr: &Expr, row: &RowPair<'_>) -> Result<Typed, EvalError> {
    match expr {
        Expr::Literal(v) => Ok(v.clone()),
        Expr::Column { side, name } => column(row, *side, name),
        Expr::Not(e) => Ok(boolean(truth_value(eval(e, row)?)?.map(|b| !b))),
        Expr::And(a, b) => {
            let a = truth_value(eval(a, row)?)?;
            if a == Some(false) {
                return Ok(boolean(Some(false)));
            }
            let b = truth_value(eval(b, row)?)?;
            Ok(boolean(match (a, b) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }))
        }
        Expr::Or(a, b) => {
            let a = truth_value(eval(a, row)?)?;
            if a == Some(true) {
                return Ok(boolean(Some(true)));
            }
            let b = truth_value(eval(b, row)?)?;
            Ok(boolean(match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }))
        }
        Expr::Compare { op, left, right } => {
            let byte_order = collated(left) || collated(right);
            let (a, b) = resolve(eval(left, row)?, eval(right, row)?)?;
            Ok(boolean(compare_op(*op, &a, &b, byte_order)?))
        }
        Expr::Distinct {
            left,
            right,
            negated,
        } => {
            let (a, b) = resolve(eval(left, row)?, eval(right, row)?)?;
            let equal = match (&a.datum, &b.datum) {
                (None, None) => {
                    check_comparable(&a, &b, "=")?;
                    true
                }
                (None, Some(_)) | (Some(_), None) => {
                    check_comparable(&a, &b, "=")?;
                    false
                }
                _ => compare_op(CmpOp::Eq, &a, &b, false)? == Some(true),
            };
            Ok(boolean(Some(equal == *negated)))
        }
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let x = eval(expr, row)?;
            let items = list
                .iter()
                .map(|e| eval(e, row))
                .collect::<Result<Vec<_>, _>>()?;
            let mut answer = Some(false);
            for item in items {
                let (a, b) = resolve(x.clone(), item)?;
                match compare_op(CmpOp::Eq, &a, &b, false)? {
                    Some(true) => answer = Some(true),
                    None if answer == Some(false) => answer = None,
                    _ => {}
                }
            }
            Ok(boolean(if *negated { answer.map(|b| !b) } else { answer }))
        }
        Expr::IsNull { expr, negated } => {
            let v = eval(expr, row)?;
            Ok(boolean(Some(v.datum.is_none() != *negated)))
        }
        Expr::IsTruth {
            expr,
            truth,
            negated,
        } => {
            let v = truth_value(eval(expr, row)?)?;
            let is = match truth {
                Truth::True => v == Some(true),
                Truth::False => v == Some(false),
                Truth::Unknown => v.is_none(),
            };
            Ok(boolean(Some(is != *negated)))
        }
        Expr::Arith { op, left, right } => arith(*op, eval(left, row)?, eval(right, row)?),
        Expr::Negate(e) => {
            let v = eval(e, row)?;
            match (v.ty, v.datum) {
                (ty, None) if ty.is_number() => Ok(Typed { ty, datum: None }),
                (ty, Some(Datum::Int(n))) if ty.is_integer() => Ok(Typed {
                    ty,
                    datum: Some(Datum::Int(int_in_range(-(n as i128), ty)?)),
                }),
                (SqlType::Numeric, Some(Datum::Numeric(n))) => Ok(Typed {
                    ty: SqlType::Numeric,
                    datum: Some(Datum::Numeric(-n)),
                }),
                (ty, _) => Err(EvalError::Type(format!(
                    "operator does not exist: - {}",
                    ty.name()
                ))),
            }
        }
        Expr::Like {
            expr,
            pattern,
            escape,
            case_insensitive,
            negated,
        } => {
            let word = if *case_insensitive { "~~*" } else { "~~" };
            let text = coerce(eval(expr, row)?, SqlType::Text)?;
            let pattern = coerce(eval(pattern, row)?, SqlType::Text)?;
            if text.ty != SqlType::Text || pattern.ty != SqlType::Text {
                return Err(no_operator(word, text.ty, pattern.ty));
            }
            let (Some(Datum::Text(text)), Some(Datum::Text(pattern))) = (text.datum, pattern.datum)
            else {
                return Ok(boolean(None));
            };
            let found = if *case_insensitive {
                if !text.is_ascii() || !pattern.is_ascii() {
                    return Err(EvalError::Refused(
                        "ILIKE over non-ASCII text (case folding follows the database's locale)"
                            .into(),
                    ));
                }
                like::matches(
                    &text.to_ascii_lowercase(),
                    &pattern.to_ascii_lowercase(),
                    escape.map(|c| c.to_ascii_lowercase()),
                )?
            } else {
                like::matches(&text, &pattern, *escape)?
            };
            Ok(boolean(Some(found != *negated)))
        }
        Expr::Cast { expr, to } => cast(eval(expr, row)?, *to),
        Expr::CollateC(e) => {
            let v = coerce(eval(e, row)?, SqlType::Text)?;
            if v.ty != SqlType::Text {
                return Err(EvalError::Type(format!(
                    "collations are not supported by type {}",
                    v.ty.name()
                )));
            }
            Ok(v)
        }
    }
}

fn column_type(row: &RowPair<'_>, _side: Side, name: &str) -> Result<SqlType, EvalError> {
    let oid = *row
        .types
        .get(name)
        .ok_or_else(|| EvalError::NoColumn(name.to_owned()))?;
    SqlType::of_oid(oid).ok_or_else(|| EvalError::UnsupportedColumn {
        column: name.to_owned(),
        oid,
    })
}

fn column(row: &RowPair<'_>, side: Side, name: &str) -> Result<Typed, EvalError> {
    let ty = column_type(row, side, name)?;
    let (side_name, side) = match side {
        Side::New => ("new", row.new),
        Side::Old => ("old", row.old),
    };
    let not_sent = || EvalError::NotSent {
        side: side_name,
        column: name.to_owned(),
    };
    match side {
        RowSide::Absent => Ok(Typed { ty, datum: None }),
        RowSide::Row {
            values,
            unknown,
            known_only,
        } => {
            if unknown.iter().any(|c| c == name)
                || known_only.is_some_and(|k| !k.iter().any(|c| c == name))
            {
                return Err(not_sent());
            }
            let value = values.get(name).ok_or_else(not_sent)?;
            Ok(Typed {
                ty,
                datum: from_json(ty, name, value)?,
            })
        }
    }
}

fn check_comparable(a: &Typed, b: &Typed, op: &str) -> Result<(), EvalError> {
    if let Some(e) = refused_zone(a.ty, b.ty) {
        return Err(e);
    }
    if comparable(a.ty, b.ty) {
        Ok(())
    } else {
        Err(no_operator(op, a.ty, b.ty))
    }
}

fn compare_op(
    op: CmpOp,
    a: &Typed,
    b: &Typed,
    byte_order: bool,
) -> Result<Option<bool>, EvalError> {
    let name = match op {
        CmpOp::Eq => "=",
        CmpOp::Ne => "<>",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    };
    check_comparable(a, b, name)?;
    if a.ty == SqlType::Text && !matches!(op, CmpOp::Eq | CmpOp::Ne) && !byte_order {
        return Err(EvalError::Refused(format!(
            "text ordering ({name}) without COLLATE \"C\" (the column's collation decides it; write new.col COLLATE \"C\" {name} ... for byte order)"
        )));
    }
    let (Some(x), Some(y)) = (&a.datum, &b.datum) else {
        return Ok(None);
    };
    let ord = compare(x, y).ok_or_else(|| no_operator(name, a.ty, b.ty))?;
    Ok(Some(match op {
        CmpOp::Eq => ord.is_eq(),
        CmpOp::Ne => ord.is_ne(),
        CmpOp::Lt => ord.is_lt(),
        CmpOp::Le => ord.is_le(),
        CmpOp::Gt => ord.is_gt(),
        CmpOp::Ge => ord.is_ge(),
    }))
}

fn int_in_range(n: i128, ty: SqlType) -> Result<i64, EvalError> {
    let (lo, hi) = ty.int_range();
    if n < lo as i128 || n > hi as i128 {
        Err(EvalError::Overflow(ty.name()))
    } else {
        Ok(n as i64)
    }
}

fn arith(op: ArithOp, a: Typed, b: Typed) -> Result<Typed, EvalError> {
    let sign = match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
        ArithOp::Mod => "%",
    };
    if a.ty == SqlType::Unknown && b.ty == SqlType::Unknown {
        return Err(EvalError::Type(format!(
            "operator is not unique: unknown {sign} unknown"
        )));
    }
    let (a, b) = resolve(a, b)?;
    if !(a.ty.is_number() && b.ty.is_number()) {
        return Err(no_operator(sign, a.ty, b.ty));
    }
    let ty = if a.ty == SqlType::Numeric || b.ty == SqlType::Numeric {
        SqlType::Numeric
    } else {
        a.ty.max(b.ty)
    };
    if ty == SqlType::Numeric && matches!(op, ArithOp::Div | ArithOp::Mod) {
        return Err(EvalError::Refused(format!(
            "numeric {sign} (the server rounds the result to a scale it chooses)"
        )));
    }
    let (Some(x), Some(y)) = (a.datum, b.datum) else {
        return Ok(Typed { ty, datum: None });
    };
    let datum = match (x, y) {
        (Datum::Int(x), Datum::Int(y)) => {
            let (x, y) = (x as i128, y as i128);
            let n = match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div | ArithOp::Mod if y == 0 => return Err(EvalError::DivisionByZero),
                // Both truncate toward zero, as the server's.
                ArithOp::Div => x / y,
                ArithOp::Mod => x % y,
            };
            Datum::Int(int_in_range(n, ty)?)
        }
        (x, y) => {
            let to_decimal = |d: Datum| match d {
                Datum::Int(n) => BigDecimal::from(n),
                Datum::Numeric(n) => n,
                _ => BigDecimal::from(0),
            };
            let (x, y) = (to_decimal(x), to_decimal(y));
            let n = match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                _ => x * y,
            };
            Datum::Numeric(value::check_numeric(n)?)
        }
    };
    Ok(Typed {
        ty,
        datum: Some(datum),
    })
}

fn cast(v: Typed, to: SqlType) -> Result<Typed, EvalError> {
    use SqlType::*;
    let from = v.ty;
    let no_cast = || EvalError::Type(format!("cannot cast type {} to {}", from.name(), to.name()));
    let refused = |why: &str| {
        EvalError::Refused(format!(
            "the cast from {} to {} ({why})",
            from.name(),
            to.name()
        ))
    };
    // Which casts exist, whether the value is NULL or not.
    match (from, to) {
        (Unknown | Text, _) => {}
        (a, b) if a == b => {}
        (a, b) if a.is_number() && b.is_number() => {}
        (Int2 | Int4 | Int8 | Bool, Text) => {}
        (Int4, Bool) | (Bool, Int4) => {}
        (Date, Timestamp) | (Timestamp, Date) => {}
        (Numeric, Text) => return Err(refused("its display scale is the server's")),
        (Date | Timestamp, Text) => return Err(refused("it depends on DateStyle")),
        (Timestamptz, Text | Date | Timestamp) | (Date | Timestamp, Timestamptz) => {
            return Err(refused("it depends on the TimeZone setting"))
        }
        _ => return Err(no_cast()),
    }
    let Some(datum) = v.datum else {
        return Ok(Typed {
            ty: to,
            datum: None,
        });
    };
    let datum = match (datum, to) {
        (Datum::Text(s), Text) => Datum::Text(s),
        (Datum::Text(s), _) => from_text(to, &s)?,
        (Datum::Int(n), t) if t.is_integer() => Datum::Int(int_in_range(n.into(), t)?),
        (Datum::Int(n), Numeric) => Datum::Numeric(BigDecimal::from(n)),
        (Datum::Int(n), Text) => Datum::Text(n.to_string()),
        (Datum::Int(n), Bool) => Datum::Bool(n != 0),
        (Datum::Numeric(n), Numeric) => Datum::Numeric(n),
        (Datum::Numeric(n), t) if t.is_integer() => {
            // The server rounds half away from zero.
            let rounded = n.with_scale_round(0, RoundingMode::HalfUp);
            let (digits, _) = rounded.as_bigint_and_exponent();
            let n: i64 = digits
                .to_string()
                .parse()
                .map_err(|_| EvalError::Overflow(t.name()))?;
            Datum::Int(int_in_range(n.into(), t)?)
        }
        (Datum::Bool(b), Bool) => Datum::Bool(b),
        (Datum::Bool(b), Text) => Datum::Text(if b { "true" } else { "false" }.into()),
        (Datum::Bool(b), Int4) => Datum::Int(b.into()),
        (Datum::Date(d), Date) => Datum::Date(d),
        (Datum::Date(d), Timestamp) => Datum::Micros(d * 86_400_000_000),
        (Datum::Micros(m), Timestamp | Timestamptz) => Datum::Micros(m),
        (Datum::Micros(m), Date) => Datum::Date(m.div_euclid(86_400_000_000)),
        _ => return Err(no_cast()),
    };
    Ok(Typed {
        ty: to,
        datum: Some(datum),
    })
}
