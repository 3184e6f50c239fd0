//! Bodies and headers, checked against the contract.

use bytes::Bytes;
use http::HeaderMap;
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::body::*;
use super::headers::*;
use super::signing::{self, SigningKey};
use crate::events::ChangeEvent;
use crate::events::{Operation, WebhookRow};
use crate::registry::Webhook;

/// The body of `event` for `hook`; the same bytes on every attempt. A body
/// over `max_bytes` leaves out its largest values.
fn event_body(
    event: &ChangeEvent,
    event_id: Uuid,
    hook: &Webhook,
    context_identifier: &str,
    max_bytes: usize,
) -> Bytes {
    let shared = SharedBody::of(event, context_identifier);
    match hook_body(
        &shared,
        event,
        event_id,
        hook,
        context_identifier,
        max_bytes,
    ) {
        HookBody::Shared(b, _) | HookBody::Own(b, _) => b,
    }
}

/// The contract's body in one piece, in its field order: what the
/// assembled parts must equal byte for byte.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    event_id: Uuid,
    timestamp: String,
    changes: &'a [String],
    changes_exact: bool,
    event: &'a str,
    primary_key: &'a Value,
    entity: &'a str,
    context_identifier: &'a str,
    changed_by_associate_id: i64,
    webhook_name: &'a str,
    field_values: &'a Map<String, Value>,
    missing_columns: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a Map<String, Value>>,
    table: &'a str,
    lsn: String,
}

fn in_one_piece(event: &ChangeEvent, event_id: Uuid, hook: &Webhook, context: &str) -> Vec<u8> {
    serde_json::to_vec(&Body {
        event_id,
        timestamp: event.timestamp(),
        changes: &event.changes,
        changes_exact: event.changes_exact,
        event: &event.event,
        primary_key: &event.primary_key,
        entity: &event.entity,
        context_identifier: context,
        changed_by_associate_id: event.changed_by_associate_id,
        webhook_name: &hook.name,
        field_values: &event.field_values,
        missing_columns: &event.missing_columns,
        values: event.values.as_ref(),
        properties: hook.properties.as_ref(),
        table: &event.table,
        lsn: event.txn.commit_lsn.to_string(),
    })
    .unwrap()
}

#[test]
fn a_body_assembled_from_shared_parts_is_the_contract_body_byte_for_byte() {
    let mut deleted = event(json!({"id": 7, "note": "a\u{1}\"b\\ ä \u{2028}", "n": 1.50}));
    deleted.values = json!({"id": 7}).as_object().cloned();
    deleted.missing_columns = vec!["blob".into()];
    let events = [
        event(json!({})),
        event(json!({"id": 1, "x": [1, null, {"y": "z"}]})),
        deleted,
    ];
    let hooks = [
        hook(None),
        hook(Some(
            r#"{"tenant": "t\u0001", "n": 1.50, "deep": {"a": [true]}}"#,
        )),
    ];
    for e in &events {
        let shared = SharedBody::of(e, "Ctx \"1\"");
        for (n, h) in hooks.iter().enumerate() {
            let id = Uuid::from_u128(0xabcdef + n as u128);
            let part = HookPart::of(h);
            let (assembled, layout) = shared.assemble(id, &part);
            let whole = in_one_piece(e, id, h, "Ctx \"1\"");
            assert_eq!(
                std::str::from_utf8(&assembled).unwrap(),
                std::str::from_utf8(&whole).unwrap()
            );
            // A parked job finds the very parts in its body.
            let parts = layout.parts(&assembled).unwrap();
            assert_eq!(parts.head, shared.head.as_bytes());
            assert_eq!(parts.name, part.name.as_bytes());
            assert_eq!(parts.fields, shared.fields.as_bytes());
            assert_eq!(
                parts.properties,
                part.properties.as_deref().map(|p| p.json.as_bytes())
            );
            assert_eq!(parts.tail, shared.tail.as_bytes());
            assert_eq!(assemble_parts(id, &parts).0, assembled.to_vec());
        }
    }
}

fn event(fields: Value) -> ChangeEvent {
    ChangeEvent {
        changes: vec!["id".into(), "small".into(), "huge".into(), "medium".into()],
        field_values: fields.as_object().cloned().unwrap_or_default(),
        ..ChangeEvent::sample("big", Operation::Created)
    }
}

fn hook(properties: Option<&str>) -> Webhook {
    let row = [
        ("webhook_id", Some("1")),
        ("name", Some("h")),
        ("events", Some("*")),
        ("target_url", Some("https://example.com/")),
        ("type", Some("webhook")),
        ("state", Some("1")),
        ("properties", properties),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
    .collect();
    Webhook::from_row(&WebhookRow(row)).unwrap()
}

/// Prepared keys sign exactly as keys prepared per attempt; a previous
/// secret adds its signature to `webhook-signature` only, and the same
/// secret given as both signs once.
#[test]
fn headers_sign_with_prepared_keys_and_a_rotated_out_secret() {
    let mut hook = hook(None);
    hook.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned());
    let event_id = Uuid::from_u128(7);
    let body = br#"{"Event":"contact.created"}"#;
    let signed = |keys: &SigningKeys<'_>| {
        headers(
            &hook,
            keys,
            "contact.created",
            event_id,
            body,
            0,
            1_700_000_000,
        )
    };
    let value = |h: &HeaderMap, name: &str| h.get(name).unwrap().to_str().unwrap().to_owned();
    let prepared = SigningKey::new(hook.secret.as_deref().unwrap());
    let alone = signed(&SigningKeys::default());
    let with_prepared = signed(&SigningKeys {
        key: Some(&prepared),
        previous_secret: None,
    });
    assert_eq!(alone, with_prepared);
    let id = event_id.to_string();
    let current = signing::standard_webhooks_signature(
        hook.secret.as_deref().unwrap(),
        &id,
        "1700000000",
        body,
    );
    assert_eq!(value(&alone, "webhook-signature"), current);
    assert_eq!(
        value(&alone, "x-superoffice-signature"),
        signing::superoffice_signature(hook.secret.as_deref().unwrap(), body)
    );

    let rotating = signed(&SigningKeys {
        key: Some(&prepared),
        previous_secret: Some("old secret"),
    });
    let old = signing::standard_webhooks_signature("old secret", &id, "1700000000", body);
    assert_eq!(
        value(&rotating, "webhook-signature"),
        format!("{current} {old}")
    );
    assert_eq!(
        value(&rotating, "x-superoffice-signature"),
        value(&alone, "x-superoffice-signature")
    );

    let same_twice = signed(&SigningKeys {
        key: Some(&prepared),
        previous_secret: hook.secret.as_deref(),
    });
    assert_eq!(value(&same_twice, "webhook-signature"), current);
}

#[test]
fn an_oversized_body_leaves_out_its_largest_values_and_names_them() {
    // Each \u{1} becomes six bytes of JSON: the counted size, not the
    // text's, decides.
    let huge = "\u{1}".repeat(200_000);
    let medium = "m".repeat(30_000);
    let e = event(json!({"id": 1, "small": "s", "huge": huge, "medium": medium}));
    let max = 128 * 1024;
    let body = event_body(&e, Uuid::nil(), &hook(None), "Default", max);
    assert!(body.len() <= max, "{} bytes", body.len());
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["MissingColumns"], json!(["huge"]));
    assert_eq!(doc["FieldValues"]["medium"], json!(medium));
    assert_eq!(doc["FieldValues"]["small"], json!("s"));
    // A body within the bound is untouched.
    let small = event(json!({"id": 1, "small": "s"}));
    let doc: Value =
        serde_json::from_slice(&event_body(&small, Uuid::nil(), &hook(None), "D", max)).unwrap();
    assert_eq!(doc["MissingColumns"], json!([]));
}

#[test]
fn the_cheap_bound_is_never_below_the_exact_length() {
    let e = event(json!({
        "id": 1, "small": "s", "ctl": "\u{1}\u{2}\n\"", "n": null, "b": true,
        "x": 1.5e300, "doc": {"a": [1, "ä"]}, "empty": ""
    }));
    assert!(field_values_len_bound(&e) >= field_values_len(&e));
    // Escapes are what the bound must cover: six bytes per control byte.
    let worst = event(json!({"ctl": "\u{1}".repeat(1000)}));
    assert_eq!(field_values_len(&worst), 3 + 4 + 6 * 1000 + 2);
    assert!(field_values_len_bound(&worst) >= field_values_len(&worst));
}

#[test]
fn a_hook_whose_properties_push_the_body_over_gets_a_smaller_copy() {
    let properties = json!({"blob": "p".repeat(60_000)}).to_string();
    let e = event(json!({"id": 1, "medium": "m".repeat(60_000)}));
    let max = 100 * 1024;
    let body = event_body(&e, Uuid::nil(), &hook(Some(&properties)), "D", max);
    assert!(body.len() <= max, "{} bytes", body.len());
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["MissingColumns"], json!(["medium"]));
    // The event itself is unchanged for other hooks.
    assert!(e.missing_columns.is_empty());
}

#[test]
fn properties_are_never_cut_and_a_copy_they_alone_push_over_goes_without_values() {
    // Nearly the most properties a row may have, at the smallest bound.
    let properties = json!({"blob": "p".repeat(65_400)});
    let hook = hook(Some(&properties.to_string()));
    let mut e = event(json!({"id": 1, "small": "s", "medium": "m".repeat(5_000)}));
    e.key_columns = vec!["id".into()];
    let max = 64 * 1024;
    let body = event_body(&e, Uuid::nil(), &hook, "D", max);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["Properties"], properties, "whole");
    // Every value but the key's left out, and still over: sent as it is.
    assert!(body.len() > max, "{} bytes", body.len());
    assert_eq!(doc["FieldValues"], json!({"id": 1}));
    assert_eq!(doc["MissingColumns"], json!(["medium", "small"]));
}

/// The smallest body of an event fitted to `max`, as the intake fits it.
fn fitted(mut e: ChangeEvent, max: usize) -> (Vec<String>, Value) {
    let left_out = fit_fields(&mut e, "Default", max);
    let body = event_body(&e, Uuid::nil(), &hook(None), "Default", max);
    assert!(
        body.len() <= max || left_out.is_empty(),
        "{} bytes",
        body.len()
    );
    (left_out, serde_json::from_slice(&body).unwrap())
}

#[test]
fn at_the_smallest_bound_an_ordinary_row_goes_whole() {
    let e = event(json!({"id": 3, "small": "s", "large": "l".repeat(2_000)}));
    let (left_out, doc) = fitted(e, 65_536);
    assert!(left_out.is_empty());
    assert_eq!(doc["MissingColumns"], json!([]));
    assert_eq!(doc["FieldValues"]["large"], json!("l".repeat(2_000)));
}

#[test]
fn a_value_that_fits_in_the_body_is_never_cut() {
    let e = event(json!({"id": 1, "medium": "m".repeat(200_000)}));
    let (left_out, doc) = fitted(e, 262_144);
    assert!(left_out.is_empty(), "{left_out:?}");
    assert_eq!(doc["FieldValues"]["medium"], json!("m".repeat(200_000)));
}

#[test]
fn only_what_makes_the_body_too_large_is_left_out_and_never_the_key() {
    let mut e = event(json!({
        "id": "k".repeat(30_000),
        "a": "a".repeat(40_000),
        "b": "b".repeat(30_000),
        "small": "s",
    }));
    e.key_columns = vec!["id".into()];
    let (left_out, doc) = fitted(e, 65_536 + 8_192);
    assert_eq!(left_out, ["a"], "one value is enough");
    assert_eq!(doc["MissingColumns"], json!(["a"]));
    assert_eq!(doc["FieldValues"]["id"], json!("k".repeat(30_000)));
    assert_eq!(doc["FieldValues"]["b"], json!("b".repeat(30_000)));
    // However small the bound, the key stays.
    let mut e = event(json!({"id": "k".repeat(70_000), "a": "a".repeat(10)}));
    e.key_columns = vec!["id".into()];
    let mut cut = e.clone();
    let left_out = fit_fields(&mut cut, "Default", 65_536);
    assert_eq!(left_out, ["a"]);
    assert_eq!(cut.field_values["id"], json!("k".repeat(70_000)));
}
