//! Hook conditions proven against PostgreSQL itself: random rows and
//! random expressions from the subset, each evaluated by the server
//! (`select <expr> from (values ...) as new(...), (values ...) as old(...)`)
//! and by walhook. Wherever walhook answers, the server must give the same
//! answer (true, false or NULL); where the server raises (division by
//! zero, overflow, a literal not of its type), walhook must not answer.
//! walhook may refuse where the server answers (a construct it cannot
//! evaluate exactly): those are counted, and must stay the minority.
//!
//! WALHOOK_ORACLE_CASES sets the number of cases (default 5,000).

use std::collections::BTreeMap;
use std::time::Instant;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value};
use walhook::registry::condition::{Condition, RowPair, RowSide};
use walhook_lab::cluster::Cluster;

/// The columns of both rows: name, SQL type, type oid.
const COLUMNS: [(&str, &str, u32); 10] = [
    ("i2", "smallint", 21),
    ("i4", "integer", 23),
    ("i8", "bigint", 20),
    ("n", "numeric", 1700),
    ("t", "text", 25),
    ("v", "varchar", 1043),
    ("b", "boolean", 16),
    ("d", "date", 1082),
    ("ts", "timestamp", 1114),
    ("tz", "timestamptz", 1184),
];

/// Cases sent to the server in one call.
const BATCH: usize = 500;

const ORACLE_FUNCTION: &str = r#"
CREATE FUNCTION oracle(froms text[], exprs text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    i int;
    r boolean;
    jn text;
    jo text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(exprs, 1), 0) LOOP
        EXECUTE 'select to_jsonb(new)::text, to_jsonb(old)::text from ' || froms[i] INTO jn, jo;
        BEGIN
            EXECUTE 'select (' || exprs[i] || ') from ' || froms[i] INTO r;
            RETURN NEXT jn || E'\n' || jo || E'\n' || coalesce(r::text, 'null');
        EXCEPTION WHEN others THEN
            RETURN NEXT jn || E'\n' || jo || E'\n' || 'error: ' || SQLERRM;
        END;
    END LOOP;
END $$;
"#;

// ---- values ------------------------------------------------------------

fn civil(days: i64) -> (i64, i64, i64) {
    // Days since 1970-01-01 to a date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn date_text(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn timestamp_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    format!(
        "{} {:02}:{:02}:{:02}.{frac:06}",
        date_text(days),
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const TEXTS: &[&str] = &[
    "",
    "a",
    "A",
    "abc",
    "ABC",
    "won",
    "open",
    "Ä",
    "ä",
    "æøå",
    "日本語",
    "naïve",
    "a%b",
    "a_b",
    "a\\b",
    "it's",
    " x",
    "x ",
    "NO",
    "SE",
    "zz",
    "a@example.com",
    "B@EXAMPLE.COM",
    "123",
    "-5",
    "true",
    "2024-01-01",
];

fn days_range() -> std::ops::Range<i64> {
    // 1900-01-01 to 2100-01-01.
    -25_567..47_482
}

fn int_value(bits: u32) -> BoxedStrategy<String> {
    let (lo, hi) = match bits {
        16 => (i16::MIN as i64, i16::MAX as i64),
        32 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    };
    prop_oneof![
        Just(lo.to_string()),
        Just(hi.to_string()),
        Just("0".to_string()),
        (-5i64..5).prop_map(|n| n.to_string()),
        (lo..=hi).prop_map(|n| n.to_string()),
    ]
    .boxed()
}

fn numeric_value() -> BoxedStrategy<String> {
    prop_oneof![
        (-1000i64..1000, 0u32..4).prop_map(|(n, s)| {
            let d = 10i64.pow(s);
            if s == 0 {
                n.to_string()
            } else {
                format!(
                    "{}{}.{:0w$}",
                    if n < 0 { "-" } else { "" },
                    n.abs() / d,
                    n.abs() % d,
                    w = s as usize
                )
            }
        }),
        Just("99999999999999999999999999999999999999.999999".to_string()),
        Just("-0.000000000000000000001".to_string()),
        Just("9223372036854775808".to_string()),
        Just("32767.5".to_string()),
        Just("-2.5".to_string()),
        Just("0.0".to_string()),
    ]
    .boxed()
}

fn text_value() -> BoxedStrategy<String> {
    prop::sample::select(TEXTS).prop_map(str::to_owned).boxed()
}

fn days_value() -> BoxedStrategy<i64> {
    prop_oneof![days_range(), Just(0i64), Just(10_957i64)].boxed()
}

fn micros_value() -> BoxedStrategy<i64> {
    prop_oneof![
        (days_range().start * 86_400_000_000..days_range().end * 86_400_000_000),
        Just(946_684_800_000_000i64),
        (0i64..4).prop_map(|h| 946_684_800_000_000 + h * 3_600_000_000),
    ]
    .boxed()
}

/// One row: each column's SQL literal.
fn row() -> BoxedStrategy<Vec<String>> {
    let null = |s: BoxedStrategy<String>, ty: &'static str| {
        prop_oneof![1 => Just(format!("NULL::{ty}")), 5 => s.prop_map(move |v| format!("{v}::{ty}"))].boxed()
    };
    (
        null(
            int_value(16).prop_map(|v| format!("({v})")).boxed(),
            "smallint",
        ),
        null(
            int_value(32).prop_map(|v| format!("({v})")).boxed(),
            "integer",
        ),
        null(
            int_value(64).prop_map(|v| format!("({v})")).boxed(),
            "bigint",
        ),
        null(numeric_value().prop_map(|v| quote(&v)).boxed(), "numeric"),
        null(text_value().prop_map(|v| quote(&v)).boxed(), "text"),
        null(text_value().prop_map(|v| quote(&v)).boxed(), "varchar"),
        null(any::<bool>().prop_map(|b| b.to_string()).boxed(), "boolean"),
        null(
            days_value().prop_map(|d| quote(&date_text(d))).boxed(),
            "date",
        ),
        null(
            micros_value()
                .prop_map(|m| quote(&timestamp_text(m)))
                .boxed(),
            "timestamp",
        ),
        null(
            (micros_value(), -12i64..14, prop::bool::ANY)
                .prop_map(|(m, h, half)| {
                    let offset = if half {
                        format!("{h:+03}:30")
                    } else {
                        format!("{h:+03}")
                    };
                    quote(&format!("{}{offset}", timestamp_text(m)))
                })
                .boxed(),
            "timestamptz",
        ),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j)| vec![a, b, c, d, e, f, g, h, i, j])
        .boxed()
}

// ---- expressions -------------------------------------------------------

fn side() -> BoxedStrategy<&'static str> {
    prop_oneof![3 => Just("new"), 1 => Just("old")].boxed()
}

fn column(names: &'static [&'static str]) -> BoxedStrategy<String> {
    (side(), prop::sample::select(names))
        .prop_map(|(s, c)| format!("{s}.{c}"))
        .boxed()
}

fn int_expr() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        3 => column(&["i2", "i4", "i8"]),
        2 => prop_oneof![int_value(16), int_value(32), int_value(64)],
        1 => (int_value(64), prop::sample::select(&["smallint", "integer", "bigint"][..]))
            .prop_map(|(v, t)| format!("{v}::{t}")),
    ];
    leaf.prop_recursive(2, 8, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(&["+", "-", "*", "/", "%"][..]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("(- {a})")),
            (
                inner,
                prop::sample::select(&["smallint", "integer", "bigint"][..])
            )
                .prop_map(|(a, t)| format!("({a})::{t}")),
        ]
    })
    .boxed()
}

fn numeric_expr() -> BoxedStrategy<String> {
    prop_oneof![
        3 => column(&["n"]),
        2 => numeric_value(),
        1 => int_expr().prop_map(|a| format!("({a})::numeric")),
        1 => (column(&["n"]), prop::sample::select(&["+", "-", "*", "/"][..]), prop_oneof![numeric_value(), int_expr()])
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        1 => column(&["n"]).prop_map(|a| format!("({a})::integer")),
    ]
    .boxed()
}

fn text_expr() -> BoxedStrategy<String> {
    prop_oneof![
        3 => column(&["t", "v"]),
        2 => text_value().prop_map(|t| quote(&t)),
        1 => int_expr().prop_map(|a| format!("({a})::text")),
    ]
    .boxed()
}

fn time_expr() -> BoxedStrategy<(String, String)> {
    // (kind, expression)
    prop_oneof![
        column(&["d"]).prop_map(|c| ("d".to_string(), c)),
        days_value().prop_map(|d| ("d".to_string(), format!("{}::date", quote(&date_text(d))))),
        column(&["ts"]).prop_map(|c| ("ts".to_string(), c)),
        micros_value().prop_map(|m| (
            "ts".to_string(),
            format!("{}::timestamp", quote(&timestamp_text(m)))
        )),
        column(&["tz"]).prop_map(|c| ("tz".to_string(), c)),
        (micros_value(), -12i64..14).prop_map(|(m, h)| (
            "tz".to_string(),
            quote(&format!("{}{h:+03}", timestamp_text(m)))
        )),
    ]
    .boxed()
}

fn cmp_op() -> BoxedStrategy<&'static str> {
    prop::sample::select(&["=", "<>", "<", "<=", ">", ">="][..]).boxed()
}

fn comparison() -> BoxedStrategy<String> {
    let number = prop_oneof![int_expr(), numeric_expr()].boxed();
    prop_oneof![
        // Numbers of every kind against each other.
        (number.clone(), cmp_op(), number.clone()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        // A string literal meeting a number column takes its type.
        (
            column(&["i2", "i4", "i8", "n"]),
            cmp_op(),
            prop_oneof![text_value(), int_value(32), numeric_value()]
        )
            .prop_map(|(a, op, b)| format!("{a} {op} {}", quote(&b))),
        // Text: equality, and ordering in byte order.
        (
            text_expr(),
            prop::sample::select(&["=", "<>"][..]),
            text_expr()
        )
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (text_expr(), cmp_op(), text_expr())
            .prop_map(|(a, op, b)| format!("{a} COLLATE \"C\" {op} {b}")),
        (text_expr(), prop::bool::ANY, prop::bool::ANY, text_value()).prop_map(
            |(a, not, i, p)| format!(
                "{a} {}{} {}",
                if not { "NOT " } else { "" },
                if i { "ILIKE" } else { "LIKE" },
                quote(&p.replace('a', "%").replace('b', "_"))
            )
        ),
        (time_expr(), cmp_op(), time_expr())
            .prop_map(|((_, a), op, (_, b))| format!("{a} {op} {b}")),
        (
            column(&["b"]),
            prop::sample::select(&["=", "<>"][..]),
            prop_oneof![
                column(&["b"]),
                Just("true".to_string()),
                Just("'f'".to_string())
            ]
        )
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (
            number.clone(),
            prop::bool::ANY,
            number.clone(),
            number.clone()
        )
            .prop_map(|(x, not, lo, hi)| format!(
                "{x} {}BETWEEN {lo} AND {hi}",
                if not { "NOT " } else { "" }
            )),
        (
            number.clone(),
            prop::bool::ANY,
            prop::collection::vec(
                prop_oneof![int_value(32), numeric_value(), Just("NULL".to_string())],
                1..4
            )
        )
            .prop_map(|(x, not, list)| format!(
                "{x} {}IN ({})",
                if not { "NOT " } else { "" },
                list.join(", ")
            )),
        (
            text_expr(),
            prop::bool::ANY,
            prop::collection::vec(text_value(), 1..4)
        )
            .prop_map(|(x, not, list)| format!(
                "{x} {}IN ({})",
                if not { "NOT " } else { "" },
                list.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", ")
            )),
        (
            prop_oneof![number.clone(), text_expr(), column(&["b", "d", "ts", "tz"])],
            prop::bool::ANY
        )
            .prop_map(|(x, not)| format!("{x} IS {}NULL", if not { "NOT " } else { "" })),
        (
            prop::sample::select(&["i2", "i4", "i8", "n", "t", "v", "b", "d", "ts", "tz"][..]),
            prop::bool::ANY
        )
            .prop_map(|(c, not)| format!(
                "new.{c} IS {}DISTINCT FROM old.{c}",
                if not { "NOT " } else { "" }
            )),
        (text_expr(), prop::bool::ANY, text_expr()).prop_map(|(a, not, b)| format!(
            "{a} IS {}DISTINCT FROM {b}",
            if not { "NOT " } else { "" }
        )),
        column(&["b"]),
        Just("NULL".to_string()),
    ]
    .boxed()
}

fn condition() -> BoxedStrategy<String> {
    comparison()
        .prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    prop::sample::select(&["AND", "OR"][..]),
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
                inner.clone().prop_map(|a| format!("NOT ({a})")),
                (
                    inner,
                    prop::sample::select(
                        &[
                            "TRUE",
                            "NOT TRUE",
                            "FALSE",
                            "NOT FALSE",
                            "UNKNOWN",
                            "NOT UNKNOWN"
                        ][..]
                    )
                )
                    .prop_map(|(a, t)| format!("({a}) IS {t}")),
            ]
        })
        .boxed()
}

// ---- the run -----------------------------------------------------------

struct Case {
    new: Vec<String>,
    old: Vec<String>,
    expr: String,
}

impl Case {
    fn rows_clause(&self) -> String {
        let names = COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ");
        // OFFSET 0 keeps the planner from folding the row's values into
        // the expression: the server evaluates as it would over a table.
        format!(
            "(select * from (values ({})) v({names}) offset 0) as new, \
             (select * from (values ({})) v({names}) offset 0) as old",
            self.new.join(", "),
            self.old.join(", ")
        )
    }
}

#[derive(Default, Debug)]
struct Tally {
    agreed: usize,
    both_raise: usize,
    refused_where_server_answers: usize,
    answers: [usize; 3],
}

fn walhook_answer(
    expr: &str,
    new: &Map<String, Value>,
    old: &Map<String, Value>,
) -> Result<Option<bool>, String> {
    let condition = Condition::parse(expr).map_err(|e| e.to_string())?;
    let types: BTreeMap<String, u32> = COLUMNS
        .iter()
        .map(|(n, _, oid)| (n.to_string(), *oid))
        .collect();
    let side = |values| RowSide::Row {
        values,
        unknown: &[],
        known_only: None,
    };
    let pair = RowPair {
        types: &types,
        new: side(new),
        old: side(old),
    };
    condition.evaluate(&pair).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_agree_with_postgresql() {
    let cases: usize = std::env::var("WALHOOK_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("throwaway PostgreSQL starts");
    let db = cluster.client("postgres").await.unwrap();
    db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    db.batch_execute(ORACLE_FUNCTION).await.unwrap();

    let started = Instant::now();
    let mut runner = TestRunner::default();
    let strategy = (row(), row(), condition());
    let mut tally = Tally::default();
    let mut disagreements = Vec::new();
    let mut done = 0;
    while done < cases {
        let n = BATCH.min(cases - done);
        let batch: Vec<Case> = (0..n)
            .map(|_| {
                let (new, old, expr) = strategy.new_tree(&mut runner).unwrap().current();
                Case { new, old, expr }
            })
            .collect();
        let froms: Vec<String> = batch.iter().map(Case::rows_clause).collect();
        let exprs: Vec<String> = batch.iter().map(|c| c.expr.clone()).collect();
        let rows = db
            .query("SELECT oracle($1, $2)", &[&froms, &exprs])
            .await
            .unwrap();
        assert_eq!(rows.len(), n);
        for (case, row) in batch.iter().zip(rows) {
            let text: String = row.get(0);
            let mut lines = text.splitn(3, '\n');
            let parse = |t: Option<&str>| -> Map<String, Value> {
                match serde_json::from_str(t.unwrap_or("")) {
                    Ok(Value::Object(m)) => m,
                    other => panic!("a row as JSON: {other:?}"),
                }
            };
            let (new, old) = (parse(lines.next()), parse(lines.next()));
            let server = lines.next().unwrap_or("");
            let server: Result<Option<bool>, &str> = match server {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                "null" => Ok(None),
                e => Err(e),
            };
            let ours = walhook_answer(&case.expr, &new, &old);
            match (&ours, &server) {
                (Ok(a), Ok(b)) if a == b => {
                    tally.agreed += 1;
                    tally.answers[match a {
                        Some(true) => 0,
                        Some(false) => 1,
                        None => 2,
                    }] += 1;
                }
                (Err(_), Err(_)) => tally.both_raise += 1,
                (Err(_), Ok(_)) => tally.refused_where_server_answers += 1,
                _ => disagreements.push(format!(
                    "{}\n  from {}\n  server: {server:?}\n  walhook: {ours:?}",
                    case.expr,
                    case.rows_clause()
                )),
            }
        }
        done += n;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{cases} cases in {:.1} s: {} agreed (true {}, false {}, NULL {}), {} raised in both, \
         {} refused by walhook where the server answers, {} disagreements",
        elapsed.as_secs_f64(),
        tally.agreed,
        tally.answers[0],
        tally.answers[1],
        tally.answers[2],
        tally.both_raise,
        tally.refused_where_server_answers,
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements, the first ones:\n{}",
        disagreements.len(),
        disagreements
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The test proves something only if walhook answers most cases, and
    // each of the three answers is seen.
    assert!(tally.agreed * 2 > cases, "{tally:?}");
    assert!(tally.answers.iter().all(|&n| n > 0), "{tally:?}");
}
