//! Text output of every kind of type into JSON, without a server.

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

#[test]
fn timestamps_with_long_years() {
    assert_eq!(
        xsd_timestamp("10000-01-01 00:00:00+00"),
        "10000-01-01T00:00:00+00:00"
    );
    assert_eq!(
        xsd_timestamp("294276-12-31 23:59:59.999999"),
        "294276-12-31T23:59:59.999999"
    );
    assert_eq!(xsd_timestamp("-infinity"), "-infinity");
}

#[test]
fn record_parser() {
    let p = |s: &str| parse_record(s);
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(p("(1,abc)"), Some(vec![some("1"), some("abc")]));
    // Empty unquoted is NULL, empty quoted is the empty string.
    assert_eq!(p("(,)"), Some(vec![None, None]));
    assert_eq!(p("(1,,\"\")"), Some(vec![some("1"), None, some("")]));
    assert_eq!(p("()"), Some(vec![None]));
    // Doubled quotes and backslashes inside quotes, as record_out writes.
    assert_eq!(
        p(r#"("a ""b"", c","x\\y","(1,2)")"#),
        Some(vec![some(r#"a "b", c"#), some(r"x\y"), some("(1,2)")])
    );
    // record_in also takes backslash-escaped quotes and mixed quoting.
    assert_eq!(
        p(r#"("a\"b"c,d\,e)"#),
        Some(vec![some(r#"a"bc"#), some("d,e")])
    );
    // A nested record and an array, each quoted once more.
    assert_eq!(
        p(r#"(1,"(2,""x y"")","{3,""a b""}")"#),
        Some(vec![some("1"), some(r#"(2,"x y")"#), some(r#"{3,"a b"}"#)])
    );
    assert_eq!(p("(å,ø)"), Some(vec![some("å"), some("ø")]));
    for bad in ["", "1,2", "(1,2", "(\"1)", "(1)x", "(1,\"2\\"] {
        assert_eq!(p(bad), None, "{bad}");
    }
}

const INNER: u32 = 30_001;
const OUTER: u32 = 30_002;
const OUTER_ARRAY: u32 = 30_003;
const EMPTY: u32 = 30_004;

fn composites() -> TypeCatalog {
    TypeCatalog::builtin()
        .with_composite(INNER, "inner_t", &[("n", 1700), ("at", TIMESTAMPTZ)])
        .with_composite(
            OUTER,
            "outer_t",
            &[
                ("id", INT4),
                ("label", 25),
                ("inner", INNER),
                ("tags", TEXT_ARRAY),
                ("ok", 16),
                ("missing", 25),
            ],
        )
        .with_array(OUTER_ARRAY, OUTER)
        .with_composite(EMPTY, "empty_t", &[])
}

#[test]
fn composites_become_objects_by_field_type() {
    let cat = composites();
    assert_eq!(
        text_to_json(
            &cat,
            OUTER,
            r#"(7,"say ""hi"", (ok)","(1.5,""2024-01-01 08:00:00+00"")","{a,""b c"",NULL}",t,)"#
        ),
        json!({
            "id": 7,
            "label": "say \"hi\", (ok)",
            "inner": {"n": 1.5, "at": "2024-01-01T08:00:00+00:00"},
            "tags": ["a", "b c", null],
            "ok": true,
            "missing": null
        })
    );
    assert_eq!(
        text_to_json(&cat, OUTER_ARRAY, r#"{"(1,x,,,f,)",NULL,"(,,,,,)"}"#),
        json!([
            {"id": 1, "label": "x", "inner": null, "tags": null, "ok": false, "missing": null},
            null,
            {"id": null, "label": null, "inner": null, "tags": null, "ok": null, "missing": null}
        ])
    );
    assert_eq!(text_to_json(&cat, EMPTY, "()"), json!({}));
}

#[test]
fn composite_with_other_field_count_is_text() {
    let cat = composites();
    // The type gained or lost an attribute since the catalog was read:
    // never put values under the wrong names.
    assert!(!cat.marked_stale());
    assert_eq!(text_to_json(&cat, INNER, "(1,2,3)"), json!("(1,2,3)"));
    assert!(cat.marked_stale());
    assert_eq!(text_to_json(&cat, INNER, "(1)"), json!("(1)"));
    assert_eq!(text_to_json(&cat, INNER, "(1,\"2"), json!("(1,\"2"));
}

#[test]
fn hstore_as_its_json_cast() {
    let cat = TypeCatalog::builtin().with_json_cast(40_000, "hstore_to_json");
    assert_eq!(
        text_to_json(&cat, 40_000, r#""a"=>"1", "b c"=>NULL, "q\"\\"=>"x\\y""#),
        json!({"a": "1", "b c": null, "q\"\\": "x\\y"})
    );
    assert_eq!(text_to_json(&cat, 40_000, ""), json!({}));
    assert_eq!(text_to_json(&cat, 40_000, "garbage"), json!("garbage"));
    let cat = TypeCatalog::builtin().with_json_cast(40_001, "other_to_json");
    assert_eq!(text_to_json(&cat, 40_001, "v"), json!("v"));
}

#[test]
fn vectors_are_arrays() {
    assert_eq!(text_to_json(&cat(), 22, "1 -2 3"), json!([1, -2, 3]));
    assert_eq!(text_to_json(&cat(), 22, ""), json!([]));
    assert_eq!(text_to_json(&cat(), 30, "1 2"), json!(["1", "2"]));
    assert_eq!(
        text_to_json(&cat(), 1006, r#"{"1 2",NULL}"#),
        json!([[1, 2], null])
    );
    // box[] uses ';' between elements.
    assert_eq!(
        text_to_json(&cat(), 1020, "{(1,1),(0,0);(2,2),(1,1)}"),
        json!(["(1,1),(0,0)", "(2,2),(1,1)"])
    );
}

#[test]
fn domains_render_as_their_base() {
    let cat = cat()
        .with_domain(50_000, INT4)
        .with_domain(50_001, TEXT_ARRAY);
    assert_eq!(text_to_json(&cat, 50_000, "5"), json!(5));
    assert_eq!(text_to_json(&cat, 50_001, "{x,y}"), json!(["x", "y"]));
}

mod fuzz {
    //! Every text-output parser against arbitrary and near-valid input:
    //! a value is converted or kept as text, never a panic. CI runs the
    //! default 256 cases per property; a long run sets PROPTEST_CASES
    //! (see the README's "Testing" section).

    use proptest::prelude::*;

    use super::*;

    const HSTORE: u32 = 40_000;
    const NUMERIC: u32 = 1700;
    const DATE: u32 = 1082;
    const JSONB: u32 = 3802;
    const BOX_ARRAY: u32 = 1020;
    const INT2VECTOR: u32 = 22;

    /// Types of every category the converter knows.
    const TYPES: &[u32] = &[
        INT4,
        FLOAT8,
        NUMERIC,
        16,
        DATE,
        TIMESTAMP,
        TIMESTAMPTZ,
        114,
        JSONB,
        INT4_ARRAY,
        TEXT_ARRAY,
        BOX_ARRAY,
        INT2VECTOR,
        INNER,
        OUTER,
        OUTER_ARRAY,
        EMPTY,
        HSTORE,
        25,
    ];

    fn catalog() -> TypeCatalog {
        composites().with_json_cast(HSTORE, "hstore_to_json")
    }

    /// Strings made of the characters the parsers care about, so most
    /// cases reach deep into them rather than failing on the first byte.
    fn near_valid() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "{",
            "}",
            "(",
            ")",
            "[",
            "]",
            ",",
            ";",
            "\"",
            "\\",
            " ",
            "=>",
            "NULL",
            "1",
            "-",
            ".",
            "e",
            "+",
            "2024-01-01",
            " 12:00:00",
            "+05:30",
            " BC",
            "Infinity",
            "NaN",
            ":",
            "a",
            "ä",
            "\u{0}",
            "t",
            "f",
            "[1:2]=",
            "=",
        ]);
        prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(oid in prop::sample::select(TYPES), text in ".{0,200}") {
            let _ = text_to_json(&catalog(), oid, &text);
        }

        #[test]
        fn near_valid_text_never_panics(oid in prop::sample::select(TYPES), text in near_valid()) {
            let _ = text_to_json(&catalog(), oid, &text);
        }

        #[test]
        fn nested_arrays_and_records_of_any_depth_never_panic(depth in 0usize..300, oid in prop::sample::select(TYPES)) {
            let arrays = format!("{}1{}", "{".repeat(depth), "}".repeat(depth));
            let records = format!("{}1{}", "(".repeat(depth), ")".repeat(depth));
            let _ = text_to_json(&catalog(), oid, &arrays);
            let _ = text_to_json(&catalog(), oid, &records);
        }

        #[test]
        fn numerics_are_numbers_exactly_when_json_has_them(
            int in "-?[0-9]{1,40}",
            frac in proptest::option::of("[0-9]{1,40}"),
        ) {
            let text = match &frac {
                Some(f) => format!("{int}.{f}"),
                None => int.clone(),
            };
            let value = text_to_json(&catalog(), NUMERIC, &text);
            // Leading zeros are not JSON: those stay exact as strings.
            let digits = int.trim_start_matches('-');
            if digits.len() > 1 && digits.starts_with('0') {
                prop_assert!(value.is_string());
            } else {
                prop_assert!(value.is_number(), "{text} -> {value}");
                prop_assert_eq!(value.to_string(), text);
            }
        }
    }
}
