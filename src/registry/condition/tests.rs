use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::*;

fn types() -> BTreeMap<String, u32> {
    [
        ("id", 23),
        ("small", 21),
        ("big", 20),
        ("amount", 1700),
        ("status", 25),
        ("name", 1043),
        ("active", 16),
        ("born", 1082),
        ("seen", 1114),
        ("at", 1184),
        ("ratio", 701),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("an object"),
    }
}

/// Evaluate `sql` over new = `new` and old = `old` (both full rows).
fn eval(sql: &str, new: Value, old: Option<Value>) -> Result<Option<bool>, EvalError> {
    let condition = Condition::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let types = types();
    let (new, old) = (map(new), old.map(map));
    let pair = RowPair {
        types: &types,
        new: RowSide::Row {
            values: &new,
            unknown: &[],
            known_only: None,
        },
        old: match &old {
            Some(old) => RowSide::Row {
                values: old,
                unknown: &[],
                known_only: None,
            },
            None => RowSide::Absent,
        },
    };
    condition.evaluate(&pair)
}

#[test]
fn the_issues_examples_evaluate_as_postgresql() {
    let row = json!({"id": 1, "status": "won", "amount": 1500, "name": "a@example.com"});
    let old = json!({"id": 1, "status": "open", "amount": 10, "name": "b"});
    assert_eq!(
        eval(
            "new.status = 'won' and old.status is distinct from 'won'",
            row.clone(),
            Some(old.clone())
        ),
        Ok(Some(true))
    );
    assert_eq!(
        eval("new.amount >= 1000", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(
        eval("new.status in ('NO', 'SE')", row.clone(), None),
        Ok(Some(false))
    );
    assert_eq!(
        eval("new.name like '%@example.com'", row.clone(), None),
        Ok(Some(true))
    );
    // old of an INSERT is NULL: IS DISTINCT FROM is true, = is NULL.
    assert_eq!(
        eval("old.status is distinct from 'won'", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(eval("old.status = 'won'", row, None), Ok(None));
}

#[test]
fn three_valued_logic_follows_sql() {
    let row = json!({"id": 1, "status": null});
    assert_eq!(
        eval("new.status = 'x' or true", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(
        eval("new.status = 'x' and false", row.clone(), None),
        Ok(Some(false))
    );
    assert_eq!(
        eval("new.status = 'x' or false", row.clone(), None),
        Ok(None)
    );
    assert_eq!(eval("not (new.status = 'x')", row.clone(), None), Ok(None));
    assert_eq!(eval("new.id in (2, null)", row.clone(), None), Ok(None));
    assert_eq!(
        eval("new.id not in (2, 3)", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(
        eval("(new.status = 'x') is unknown", row, None),
        Ok(Some(true))
    );
}

#[test]
fn integers_overflow_and_divide_as_the_server_does() {
    let row = json!({"id": 2147483647, "small": 32767, "big": 0});
    assert_eq!(
        eval("new.id + 1 > 0", row.clone(), None),
        Err(EvalError::Overflow("integer"))
    );
    assert_eq!(
        eval("new.id + 1::bigint > 0", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(
        eval("new.small + 1::smallint > 0", row.clone(), None),
        Err(EvalError::Overflow("smallint"))
    );
    assert_eq!(
        eval("new.id / new.big = 1", row.clone(), None),
        Err(EvalError::DivisionByZero)
    );
    assert_eq!(
        eval("-7 / 2 = -3 and -7 % 2 = -1", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(eval("-2147483648 < new.id", row, None), Ok(Some(true)));
}

#[test]
fn refused_constructs_name_themselves() {
    for (sql, named) in [
        ("lower(new.name) = 'x'", "lower"),
        ("new.name < 'm'", "COLLATE"),
        ("new.amount / 3 > 1", "numeric /"),
        ("new.name ~ 'x'", "~"),
        ("case when new.id = 1 then true end", "CASE"),
        ("new.name collate \"en_US\" = 'x'", "COLLATE"),
        ("status = 'x'", "status"),
        ("new.at > '2024-01-01 10:00'", "offset"),
        ("1/0 = 1", "division by zero"),
    ] {
        let message = match Condition::parse(sql) {
            Err(e) => e.to_string(),
            Ok(c) => {
                let types = types();
                let new = map(json!({"name": "a", "amount": 1, "at": "2024-01-01T00:00:00+00:00"}));
                let pair = RowPair {
                    types: &types,
                    new: RowSide::Row {
                        values: &new,
                        unknown: &[],
                        known_only: None,
                    },
                    old: RowSide::Absent,
                };
                c.evaluate(&pair).expect_err(sql).to_string()
            }
        };
        assert!(message.contains(named), "{sql}: {message}");
    }
}

#[test]
fn text_orders_in_bytes_only_under_collate_c() {
    let row = json!({"name": "Ä", "status": "z"});
    assert_eq!(
        eval("new.name collate \"C\" > new.status", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(eval("new.name like '_'", row.clone(), None), Ok(Some(true)));
    assert!(matches!(
        eval("new.name ilike 'ä'", row, None),
        Err(EvalError::Refused(_))
    ));
}

#[test]
fn timestamps_compare_as_instants() {
    let row = json!({"at": "2024-01-01T08:00:00.5+00:00", "seen": "2024-01-01T08:00:00", "born": "2024-01-01"});
    assert_eq!(
        eval("new.at = '2024-01-01 10:00:00.5+02'", row.clone(), None),
        Ok(Some(true))
    );
    assert_eq!(
        eval("new.seen > new.born", row.clone(), None),
        Ok(Some(true))
    );
    assert!(matches!(
        eval("new.at > new.seen", row, None),
        Err(EvalError::Refused(_))
    ));
}

#[test]
fn unsent_and_unreadable_columns_are_errors_not_nulls() {
    let types = types();
    let new = map(json!({"id": 1, "status": "a", "ratio": 0.5}));
    let key = vec!["id".to_owned()];
    let pair = RowPair {
        types: &types,
        new: RowSide::Row {
            values: &new,
            unknown: &[],
            known_only: None,
        },
        old: RowSide::Row {
            values: &new,
            unknown: &[],
            known_only: Some(&key),
        },
    };
    let c = |sql: &str| Condition::parse(sql).unwrap().evaluate(&pair);
    assert_eq!(c("old.id = 1"), Ok(Some(true)));
    assert!(matches!(
        c("old.status = 'a'"),
        Err(EvalError::NotSent { .. })
    ));
    assert!(matches!(
        c("new.ratio > 0"),
        Err(EvalError::UnsupportedColumn { .. })
    ));
    assert!(matches!(c("new.nope = 1"), Err(EvalError::NoColumn(_))));
}
