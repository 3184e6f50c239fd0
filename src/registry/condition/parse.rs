//! From the DBA's text to walhook's own expression: sqlparser reads it as
//! PostgreSQL would, and every node is checked against the subset here,
//! so what [`super::eval`] meets is known to be evaluable.

use std::collections::BTreeSet;

use bigdecimal::BigDecimal;
use sqlparser::ast::{
    self, BinaryOperator, CastKind, DataType, Expr as Sql, InTarget, UnaryOperator,
    Value as SqlValue,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::expr::{ArithOp, CmpOp, Expr, Side, Truth};
use super::value::{self, SqlType};

/// A condition longer than this is refused: it is a hook setting, not a
/// program, and the bound keeps parsing and evaluation small.
pub const MAX_CONDITION_CHARS: usize = 4000;
/// How deep expressions may nest (sqlparser stops there too).
const MAX_DEPTH: usize = 64;

/// Why a condition is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConditionError {
    #[error("the condition is empty")]
    Empty,
    #[error("the condition is longer than {MAX_CONDITION_CHARS} characters")]
    TooLong,
    #[error("the condition is not valid SQL: {0}")]
    Syntax(String),
    #[error("{0} is not supported in a condition: {1}")]
    Unsupported(String, &'static str),
    #[error("{0}")]
    Constant(String),
}

/// Parse `source` and compile it; also returns the `old.` columns read.
pub fn compile(source: &str) -> Result<(Expr, BTreeSet<String>), ConditionError> {
    if source.chars().count() > MAX_CONDITION_CHARS {
        return Err(ConditionError::TooLong);
    }
    if source.trim().is_empty() {
        return Err(ConditionError::Empty);
    }
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(MAX_DEPTH)
        .try_with_sql(source)
        .map_err(|e| ConditionError::Syntax(e.to_string()))?;
    let sql = parser
        .parse_expr()
        .map_err(|e| ConditionError::Syntax(e.to_string()))?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(ConditionError::Syntax(format!(
            "unexpected {} after the expression",
            next.token
        )));
    }
    let mut compiler = Compiler::default();
    let expr = compiler.expr(&sql, 0)?;
    let expr = super::eval::fold_constants(expr).map_err(|e| {
        ConditionError::Constant(format!("the condition's constant part fails: {e}"))
    })?;
    Ok((expr, compiler.old_columns))
}

#[derive(Default)]
struct Compiler {
    old_columns: BTreeSet<String>,
}

fn unsupported(what: impl std::fmt::Display, hint: &'static str) -> ConditionError {
    ConditionError::Unsupported(what.to_string(), hint)
}

/// PostgreSQL folds unquoted names to lower case.
fn ident_name(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some('"') => ident.value.clone(),
        _ => ident.value.to_lowercase(),
    }
}

impl Compiler {
    fn expr(&mut self, sql: &Sql, depth: usize) -> Result<Expr, ConditionError> {
        if depth > MAX_DEPTH {
            return Err(unsupported("nesting this deep", "split the condition"));
        }
        let sub = |c: &mut Compiler, e: &Sql| c.expr(e, depth + 1).map(Box::new);
        Ok(match sql {
            Sql::Nested(inner) => self.expr(inner, depth + 1)?,
            Sql::CompoundIdentifier(parts) => match parts.as_slice() {
                [row, column] => {
                    let side = match ident_name(row).as_str() {
                        "new" => Side::New,
                        "old" => Side::Old,
                        _ => {
                            return Err(unsupported(
                                format!("the name {sql}"),
                                "columns are read as new.<column> or old.<column>",
                            ))
                        }
                    };
                    let name = ident_name(column);
                    if side == Side::Old {
                        self.old_columns.insert(name.clone());
                    }
                    Expr::Column { side, name }
                }
                _ => {
                    return Err(unsupported(
                        format!("the name {sql}"),
                        "columns are read as new.<column> or old.<column>",
                    ))
                }
            },
            Sql::Identifier(ident) => {
                return Err(unsupported(
                    format!("the bare name {ident}"),
                    "columns are read as new.<column> or old.<column>",
                ))
            }
            Sql::Value(v) => Expr::Literal(literal(&v.value, false)?),
            Sql::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => Expr::Not(sub(self, expr)?),
                UnaryOperator::Plus => match negated_number(&Sql::UnaryOp {
                    op: UnaryOperator::Minus,
                    expr: expr.clone(),
                }) {
                    // `+5` is the literal 5: minus twice.
                    Some(v) => Expr::Literal(literal(&v, true)?),
                    None => {
                        return Err(unsupported(
                            "unary + before anything but a number",
                            "leave it out",
                        ))
                    }
                },
                UnaryOperator::Minus => match negated_number(expr) {
                    // `-2147483648` is one integer literal, as the server
                    // folds it.
                    Some(v) => Expr::Literal(literal(&v, true)?),
                    None => Expr::Negate(sub(self, expr)?),
                },
                other => {
                    return Err(unsupported(
                        format!("the operator {other}"),
                        "see README's condition subset",
                    ))
                }
            },
            Sql::BinaryOp { left, op, right } => {
                let (l, r) = (sub(self, left)?, sub(self, right)?);
                let cmp = |op| Expr::Compare {
                    op,
                    left: l.clone(),
                    right: r.clone(),
                };
                let arith = |op| Expr::Arith {
                    op,
                    left: l.clone(),
                    right: r.clone(),
                };
                match op {
                    BinaryOperator::And => Expr::And(l, r),
                    BinaryOperator::Or => Expr::Or(l, r),
                    BinaryOperator::Eq => cmp(CmpOp::Eq),
                    BinaryOperator::NotEq => cmp(CmpOp::Ne),
                    BinaryOperator::Lt => cmp(CmpOp::Lt),
                    BinaryOperator::LtEq => cmp(CmpOp::Le),
                    BinaryOperator::Gt => cmp(CmpOp::Gt),
                    BinaryOperator::GtEq => cmp(CmpOp::Ge),
                    BinaryOperator::Plus => arith(ArithOp::Add),
                    BinaryOperator::Minus => arith(ArithOp::Sub),
                    BinaryOperator::Multiply => arith(ArithOp::Mul),
                    BinaryOperator::Divide => arith(ArithOp::Div),
                    BinaryOperator::Modulo => arith(ArithOp::Mod),
                    other => {
                        return Err(unsupported(
                            format!("the operator {other}"),
                            "see README's condition subset",
                        ))
                    }
                }
            }
            Sql::IsNull(e) => Expr::IsNull {
                expr: sub(self, e)?,
                negated: false,
            },
            Sql::IsNotNull(e) => Expr::IsNull {
                expr: sub(self, e)?,
                negated: true,
            },
            Sql::IsTrue(e) => self.truth(e, Truth::True, false, depth)?,
            Sql::IsNotTrue(e) => self.truth(e, Truth::True, true, depth)?,
            Sql::IsFalse(e) => self.truth(e, Truth::False, false, depth)?,
            Sql::IsNotFalse(e) => self.truth(e, Truth::False, true, depth)?,
            Sql::IsUnknown(e) => self.truth(e, Truth::Unknown, false, depth)?,
            Sql::IsNotUnknown(e) => self.truth(e, Truth::Unknown, true, depth)?,
            Sql::IsDistinctFrom(a, b) => Expr::Distinct {
                left: sub(self, a)?,
                right: sub(self, b)?,
                negated: false,
            },
            Sql::IsNotDistinctFrom(a, b) => Expr::Distinct {
                left: sub(self, a)?,
                right: sub(self, b)?,
                negated: true,
            },
            Sql::In {
                expr,
                target,
                negated,
                global: false,
            } => match target {
                InTarget::List(list) if !list.is_empty() => Expr::In {
                    expr: sub(self, expr)?,
                    list: list
                        .iter()
                        .map(|e| self.expr(e, depth + 1))
                        .collect::<Result<_, _>>()?,
                    negated: *negated,
                },
                _ => {
                    return Err(unsupported(
                        "IN over anything but a list of values",
                        "write IN (a, b, ...)",
                    ))
                }
            },
            Sql::Between {
                expr,
                negated,
                low,
                high,
            } => {
                // The server rewrites BETWEEN so: x >= low AND x <= high.
                let x = sub(self, expr)?;
                let (low, high) = (sub(self, low)?, sub(self, high)?);
                let ge = Expr::Compare {
                    op: CmpOp::Ge,
                    left: x.clone(),
                    right: low,
                };
                let le = Expr::Compare {
                    op: CmpOp::Le,
                    left: x,
                    right: high,
                };
                if *negated {
                    Expr::Not(Box::new(Expr::And(Box::new(ge), Box::new(le))))
                } else {
                    Expr::And(Box::new(ge), Box::new(le))
                }
            }
            Sql::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            } => self.like(
                expr,
                pattern,
                escape_char.as_deref(),
                false,
                *negated,
                depth,
            )?,
            Sql::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            } => self.like(expr, pattern, escape_char.as_deref(), true, *negated, depth)?,
            Sql::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => Expr::Cast {
                expr: sub(self, expr)?,
                to: cast_type(data_type)?,
            },
            Sql::TypedString(typed) => Expr::Cast {
                expr: Box::new(Expr::Literal(literal(&typed.value.value, false)?)),
                to: cast_type(&typed.data_type)?,
            },
            Sql::Collate { expr, collation } => {
                let name = collation.to_string();
                if name == "\"C\"" || name == "\"POSIX\"" {
                    Expr::CollateC(sub(self, expr)?)
                } else {
                    return Err(unsupported(
                        format!("COLLATE {name}"),
                        "only COLLATE \"C\" (byte order) is known exactly outside the server",
                    ));
                }
            }
            Sql::Function(f) => {
                return Err(unsupported(
                    format!("the function {}", f.name),
                    "conditions call no functions",
                ))
            }
            other => {
                return Err(unsupported(
                    construct_name(other),
                    "see README's condition subset",
                ))
            }
        })
    }

    fn truth(
        &mut self,
        e: &Sql,
        truth: Truth,
        negated: bool,
        depth: usize,
    ) -> Result<Expr, ConditionError> {
        Ok(Expr::IsTruth {
            expr: Box::new(self.expr(e, depth + 1)?),
            truth,
            negated,
        })
    }

    fn like(
        &mut self,
        expr: &Sql,
        pattern: &Sql,
        escape: Option<&Sql>,
        case_insensitive: bool,
        negated: bool,
        depth: usize,
    ) -> Result<Expr, ConditionError> {
        let escape = match escape {
            None => Some('\\'),
            Some(Sql::Value(v)) => match &v.value {
                SqlValue::SingleQuotedString(s) => {
                    let mut chars = s.chars();
                    match (chars.next(), chars.next()) {
                        (None, _) => None,
                        (Some(c), None) => Some(c),
                        _ => {
                            return Err(ConditionError::Constant(
                                "ESCAPE takes one character".into(),
                            ))
                        }
                    }
                }
                _ => {
                    return Err(unsupported(
                        "an ESCAPE that is not a string literal",
                        "write ESCAPE '#'",
                    ))
                }
            },
            Some(_) => {
                return Err(unsupported(
                    "an ESCAPE that is not a string literal",
                    "write ESCAPE '#'",
                ))
            }
        };
        Ok(Expr::Like {
            expr: Box::new(self.expr(expr, depth + 1)?),
            pattern: Box::new(self.expr(pattern, depth + 1)?),
            escape,
            case_insensitive,
            negated,
        })
    }
}

/// The literal under a chain of unary minuses, negated once per minus.
fn negated_number(expr: &Sql) -> Option<SqlValue> {
    match expr {
        Sql::Nested(inner) => negated_number(inner),
        Sql::Value(v) => match &v.value {
            SqlValue::Number(n, long) => Some(SqlValue::Number(n.clone(), *long)),
            _ => None,
        },
        Sql::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match negated_number(expr)? {
            // Two minuses: the number itself, negated again by the caller.
            SqlValue::Number(n, long) => Some(SqlValue::Number(
                match n.strip_prefix('-') {
                    Some(positive) => positive.to_owned(),
                    None => format!("-{n}"),
                },
                long,
            )),
            _ => None,
        },
        _ => None,
    }
}

/// A literal's value and type, as the server types it: an integer that
/// fits int4 is integer, then bigint, then numeric; one with a point or
/// exponent is numeric; a quoted string is unknown until used.
fn literal(v: &SqlValue, negate: bool) -> Result<value::Typed, ConditionError> {
    use value::{Datum, Typed};
    Ok(match v {
        SqlValue::Null => Typed {
            ty: SqlType::Unknown,
            datum: None,
        },
        SqlValue::Boolean(b) => Typed {
            ty: SqlType::Bool,
            datum: Some(Datum::Bool(*b)),
        },
        SqlValue::Number(text, false) => {
            let text = if negate {
                match text.strip_prefix('-') {
                    Some(p) => p.to_owned(),
                    None => format!("-{text}"),
                }
            } else {
                text.clone()
            };
            let decimal_only = text
                .trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.');
            if !decimal_only {
                return Err(unsupported(
                    format!("the number {text}"),
                    "write numbers as plain digits with an optional point",
                ));
            }
            if !text.contains('.') {
                if let Ok(n) = text.parse::<i64>() {
                    let ty = if i32::try_from(n).is_ok() {
                        SqlType::Int4
                    } else {
                        SqlType::Int8
                    };
                    return Ok(Typed {
                        ty,
                        datum: Some(Datum::Int(n)),
                    });
                }
            }
            let n: BigDecimal = text
                .parse()
                .map_err(|_| unsupported(format!("the number {text}"), "not a number"))?;
            Typed {
                ty: SqlType::Numeric,
                datum: Some(Datum::Numeric(
                    value::check_numeric(n).map_err(|e| ConditionError::Constant(e.to_string()))?,
                )),
            }
        }
        SqlValue::SingleQuotedString(s) => Typed {
            ty: SqlType::Unknown,
            datum: Some(Datum::Text(s.clone())),
        },
        other => {
            return Err(unsupported(
                format!("the literal {other}"),
                "write strings in single quotes, numbers as digits",
            ))
        }
    })
}

/// The type named by a cast; only types whose values walhook reads
/// exactly, and no type modifiers (they round or cut).
fn cast_type(data_type: &DataType) -> Result<SqlType, ConditionError> {
    let name = data_type.to_string().to_lowercase();
    Ok(match name.as_str() {
        "boolean" | "bool" => SqlType::Bool,
        "smallint" | "int2" => SqlType::Int2,
        "int" | "integer" | "int4" => SqlType::Int4,
        "bigint" | "int8" => SqlType::Int8,
        "numeric" | "decimal" => SqlType::Numeric,
        "text" | "varchar" | "character varying" => SqlType::Text,
        "date" => SqlType::Date,
        "timestamp" | "timestamp without time zone" => SqlType::Timestamp,
        "timestamptz" | "timestamp with time zone" => SqlType::Timestamptz,
        _ => {
            return Err(unsupported(
                format!("the cast to {data_type}"),
                "casts go to boolean, smallint, integer, bigint, numeric, text, varchar, date, timestamp or timestamptz, without a type modifier",
            ))
        }
    })
}

/// A short name for a construct outside the subset.
fn construct_name(sql: &Sql) -> String {
    let text = sql.to_string();
    let head: String = text.chars().take(40).collect();
    match sql {
        Sql::Case { .. } => "CASE".into(),
        Sql::Subquery(_) | Sql::Exists { .. } => "a subquery".into(),
        Sql::AtTimeZone { .. } => "AT TIME ZONE".into(),
        Sql::Interval(_) => "INTERVAL".into(),
        Sql::SimilarTo { .. } => "SIMILAR TO".into(),
        Sql::Array(_) => "an array".into(),
        _ if text.chars().count() > 40 => format!("`{head}...`"),
        _ => format!("`{head}`"),
    }
}
