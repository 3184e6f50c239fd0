//! `walhook webhook list|add|set-state|rotate-secret|throttle|pause|resume|test|remove`.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use http::header::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::render::{columns, state_name};
use super::{connect, invalid, no_such_webhook};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::cli::{exit, AddArgs, Rate, WebhookCommand};
use crate::config::Config;
use crate::delivery::http::{read_body_prefix, ReadError};
use crate::delivery::{check_target, http_client, request, tls, DeliveryStore, HookSettings};
use crate::events::WebhookRow;
use crate::registry::{secret_problem, Webhook, WebhookState};
use crate::store::control::PauseChange;
use crate::store::webhooks::NewWebhook;
use crate::store::Store;
use crate::text::{error_chain, printable, redacted_url, redacted_url_text, truncate_chars};

/// `walhook webhook ...`.
pub async fn webhook(config: &Config, command: WebhookCommand) -> anyhow::Result<u8> {
    match command {
        WebhookCommand::List { json } => list(config, json).await,
        WebhookCommand::Add(args) => add(config, &args).await,
        WebhookCommand::SetState { id, state } => set_state(config, id, state).await,
        WebhookCommand::Test { id } => test(config, id).await,
        WebhookCommand::Remove { id, purge } => remove(config, id, purge).await,
        WebhookCommand::RotateSecret {
            id,
            secret_file,
            grace,
        } => rotate_secret(config, id, secret_file.as_deref(), grace).await,
        WebhookCommand::Throttle { id, rate } => throttle(config, id, rate).await,
        WebhookCommand::Pause { id } => pause(config, id, true).await,
        WebhookCommand::Resume { id } => pause(config, id, false).await,
        WebhookCommand::Condition { id, condition, .. } => {
            super::rules::condition(config, id, condition.as_deref()).await
        }
        WebhookCommand::Columns {
            id, only, except, ..
        } => super::rules::columns(config, id, only.as_deref(), except.as_deref()).await,
        WebhookCommand::Attempts {
            id,
            since,
            limit,
            json,
        } => super::attempts::attempts(config, id, since, limit, json).await,
    }
}

/// The settings `webhook_control` holds for hook `id` (defaults when it
/// has no row).
pub(super) async fn control_settings(store: &Store, id: i32) -> anyhow::Result<HookSettings> {
    Ok(store
        .control_rows()
        .await?
        .iter()
        .filter_map(HookSettings::from_row)
        .find(|(hook, _, _)| *hook == id)
        .map(|(_, settings, _)| settings)
        .unwrap_or_default())
}

async fn rotate_secret(
    config: &Config,
    id: i32,
    secret_file: Option<&std::path::Path>,
    grace: std::time::Duration,
) -> anyhow::Result<u8> {
    let refuse = |why: String| invalid(format!("webhook_id {id}: {why}"));
    let (secret, generated) = match secret_file {
        Some(file) => {
            let line = &secret_from_file(file, &refuse)?;
            if line.chars().count() > 400 {
                return Err(refuse(format!(
                    "secret file {}: the secret is longer than 400 characters (webhook.secret is varchar(400))",
                    file.display()
                )));
            }
            if let Some(problem) = secret_problem(line) {
                return Err(refuse(format!("secret file {}: {problem}", file.display())));
            }
            (line.to_owned(), false)
        }
        None => {
            let bytes: [u8; 32] = rand::random();
            (format!("whsec_{}", BASE64.encode(bytes)), true)
        }
    };
    let store = connect(config).await?;
    let expires = store
        .rotate_secret(id, &secret, grace)
        .await?
        .ok_or_else(|| no_such_webhook(&store, id))?;
    match expires {
        Some(at) if !grace.is_zero() => println!(
            "webhook_id {id}: new secret set; the previous one also signs webhook-signature until {at} \
             (X-SuperOffice-Signature carries the new one's only)"
        ),
        Some(_) => println!("webhook_id {id}: new secret set; the previous one no longer signs"),
        None => println!("webhook_id {id}: new secret set (it had none before)"),
    }
    if generated {
        // The one time it is shown: the receiver needs it.
        println!("{secret}");
    }
    Ok(exit::OK)
}

async fn throttle(config: &Config, id: i32, rate: Rate) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let per_minute = match rate {
        Rate::PerMinute(n) => Some(i32::try_from(n).unwrap_or(i32::MAX)),
        Rate::Off => None,
    };
    if !store.set_max_rate(id, per_minute).await? {
        return Err(no_such_webhook(&store, id));
    }
    match per_minute {
        Some(n) if n % 60 == 0 => println!("webhook_id {id}: at most {}/s", n / 60),
        Some(n) => println!("webhook_id {id}: at most {n}/min"),
        None => println!("webhook_id {id}: no rate limit"),
    }
    Ok(exit::OK)
}

async fn pause(config: &Config, id: i32, paused: bool) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    match store.set_paused(id, paused).await? {
        PauseChange::NoSuchHook => return Err(no_such_webhook(&store, id)),
        PauseChange::Unchanged => println!(
            "webhook_id {id} is already {}: nothing changed",
            if paused { "paused" } else { "not paused" }
        ),
        PauseChange::Changed if paused => println!(
            "webhook_id {id} paused: its events are parked, none sent, until \
             `walhook webhook resume {id}`"
        ),
        PauseChange::Changed => {
            let parked = store.parked_count(id).await?;
            println!(
                "webhook_id {id} resumed: its {parked} parked event(s) are delivered first, in order, \
                 by the running walhook"
            );
        }
    }
    Ok(exit::OK)
}

async fn list(config: &Config, as_json: bool) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let mut out = Vec::new();
    for row in store.webhook_rows().await? {
        let get = |n: &str| row.0.get(n).cloned().flatten();
        let id = get("webhook_id").unwrap_or_default();
        // What the daemon would make of the row.
        let problem = match Webhook::from_row(&row) {
            Ok(hook) => check_target(&config.delivery, &hook.target_url)
                .err()
                .map(|r| r.to_string()),
            Err(why) => Some(format!("skipped by the daemon: {why}")),
        };
        let header_names: Vec<String> = get("headers")
            .and_then(|h| serde_json::from_str::<Map<String, Value>>(&h).ok())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let state: Option<i16> = get("state").and_then(|s| s.parse().ok());
        out.push(json!({
            "webhook_id": id.parse::<i64>().ok(),
            "name": get("name"),
            "state": state,
            "state_name": state.map(state_name),
            "type": get("type"),
            "events": get("events"),
            "target_url": get("target_url").as_deref().map(redacted_url_text),
            "secret": get("secret").is_some_and(|s| !s.is_empty()),
            "headers": header_names,
            "properties": get("properties").and_then(|p| serde_json::from_str::<Value>(&p).ok()),
            "problem": problem,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(out))?);
        return Ok(exit::OK);
    }
    if out.is_empty() {
        println!(
            "no hooks in {} (add one with `walhook webhook add`)",
            store.table_name("webhook")
        );
        return Ok(exit::OK);
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let table_rows: Vec<Vec<String>> = out
        .iter()
        .map(|h| {
            let headers = h["headers"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "-".into());
            vec![
                s(&h["webhook_id"]),
                s(&h["name"]),
                s(&h["state_name"]),
                s(&h["type"]),
                if h["secret"] == json!(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                headers,
                s(&h["events"]),
                s(&h["target_url"]),
                h["problem"]
                    .as_str()
                    .map_or(String::new(), |p| format!("!! {p}")),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(
            &["ID", "NAME", "STATE", "TYPE", "SECRET", "HEADERS", "EVENTS", "URL", "",],
            &table_rows
        )
    );
    Ok(exit::OK)
}

/// Column sizes of `webhook`, checked before the server would refuse.
const LIMITS: [(&str, usize); 4] = [
    ("name", 400),
    ("events", 4000),
    ("target_url", 4000),
    ("secret", 400),
];

/// The first line of a secret file; `-` is standard input, so a secret
/// can be piped in without being named on the command line (where the
/// process list shows it) or written to a file.
fn secret_from_file(
    file: &std::path::Path,
    refuse: &dyn Fn(String) -> anyhow::Error,
) -> anyhow::Result<String> {
    use std::io::Read;
    // A secret is at most 400 characters; no reason to read more than this.
    const MOST: u64 = 64 * 1024;
    let stdin = file.as_os_str() == "-";
    let source = if stdin {
        "standard input".to_owned()
    } else {
        format!("secret file {}", file.display())
    };
    let mut text = String::new();
    let read = if stdin {
        std::io::stdin().take(MOST).read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MOST).read_to_string(&mut text))
    };
    read.map_err(|e| refuse(format!("cannot read the secret from {source}: {e}")))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(refuse(format!("{source}: the first line is empty")));
    }
    Ok(line.to_owned())
}

/// The secret from `--secret` or the first line of `--secret-file`.
fn secret(
    args: &AddArgs,
    refuse: &dyn Fn(String) -> anyhow::Error,
) -> anyhow::Result<Option<String>> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(file)) => Some(secret_from_file(file, refuse)?),
        (None, None) => None,
    };
    if secret.as_deref() == Some("") {
        return Err(refuse(
            "--secret is empty (leave it out for an unsigned hook)".into(),
        ));
    }
    Ok(secret)
}

/// `--header NAME=VALUE` options as a JSON object's text.
fn headers(
    args: &AddArgs,
    refuse: &dyn Fn(String) -> anyhow::Error,
) -> anyhow::Result<Option<String>> {
    let mut headers = Map::new();
    for pair in &args.headers {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(refuse(format!("--header {pair:?} is not NAME=VALUE")));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(refuse(format!("--header {pair:?} has no name")));
        }
        if headers.keys().any(|k| k.eq_ignore_ascii_case(name)) {
            return Err(refuse(format!("header {name:?} is given twice")));
        }
        headers.insert(name.to_owned(), Value::String(value.to_owned()));
    }
    Ok((!headers.is_empty()).then(|| Value::Object(headers).to_string()))
}

async fn add(config: &Config, args: &AddArgs) -> anyhow::Result<u8> {
    let refuse = |why: String| invalid(format!("webhook {:?} not added: {why}", args.name));
    let secret = secret(args, &refuse)?;
    let headers_text = headers(args, &refuse)?;
    let values: BTreeMap<&str, Option<String>> = BTreeMap::from([
        ("webhook_id", Some("0".to_owned())),
        ("name", Some(args.name.clone())),
        ("events", Some(args.events.clone())),
        ("target_url", Some(args.url.clone())),
        ("type", Some("webhook".to_owned())),
        ("headers", headers_text.clone()),
        ("properties", args.properties.clone()),
        ("secret", secret.clone()),
        ("state", Some((args.state as i16).to_string())),
    ]);
    for (column, max) in LIMITS {
        if let Some(Some(v)) = values.get(column) {
            if v.chars().count() > max {
                return Err(refuse(format!(
                    "{column} is longer than the column's {max} characters"
                )));
            }
        }
    }
    let row = WebhookRow(
        values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    // The daemon's own validation, so a row the daemon would skip is never
    // written.
    let hook = Webhook::from_row(&row).map_err(|e| refuse(e.0))?;
    check_target(&config.delivery, &hook.target_url)
        .map_err(|why| refuse(format!("target_url {why}")))?;
    // Headers walhook sets itself are never replaced by the hook's.
    let sent = request::headers(&hook, &Default::default(), "test", Uuid::nil(), b"", 0, 0);
    for (name, value) in &hook.headers {
        if sent.get(name) != Some(value) {
            eprintln!(
                "warning: header {name} is one walhook sets itself; the hook's value is never sent"
            );
        }
    }

    let store = connect(config).await?;
    let id = store
        .insert_webhook(&NewWebhook {
            name: &args.name,
            events: &args.events,
            target_url: &args.url,
            headers: headers_text.as_deref(),
            properties: args.properties.as_deref(),
            secret: secret.as_deref(),
            state: args.state,
        })
        .await?;
    println!("{id}");
    eprintln!(
        "added webhook_id {id} ({:?}, state {}): a running walhook delivers the matching \
         changes committed from now on",
        args.name, args.state
    );
    // A typo in an entity or a filtered column is a hook that never fires
    // for it: say so now, not when nothing arrives.
    match crate::setup::published_tables(&store, config).await {
        Ok(tables) => {
            let hook = Webhook { id, ..hook };
            for warning in crate::setup::unknown_entities(&hook, &tables, config) {
                eprintln!("warning: {warning}");
            }
        }
        Err(e) => {
            eprintln!("warning: could not check the events against the published tables: {e:#}")
        }
    }
    Ok(exit::OK)
}

async fn set_state(config: &Config, id: i32, state: WebhookState) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let old = store
        .webhook_state(id)
        .await?
        .ok_or_else(|| no_such_webhook(&store, id))?;
    if old == state as i16 {
        println!("webhook_id {id} is already {state}: nothing changed");
        return Ok(exit::OK);
    }
    if !store.set_webhook_state(id, state).await? {
        bail!("webhook_id {id} was removed meanwhile; nothing changed");
    }
    println!("webhook_id {id}: state {} -> {state}", state_name(old));
    if state == WebhookState::Active {
        let parked = store.parked_count(id).await?;
        if parked > 0 {
            println!(
                "its {parked} parked event(s) are delivered first, in order, by the running walhook"
            );
        }
    }
    Ok(exit::OK)
}

async fn remove(config: &Config, id: i32, purge: bool) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let removed = store.remove_webhook(id, purge).await?;
    let (usage, parked) = (removed.usage_rows, removed.parked);
    if removed.name.is_none() && !(purge && usage + parked > 0) {
        bail!(
            "webhook_id {id} does not exist in {}{}",
            store.table_name("webhook"),
            if usage + parked > 0 {
                format!(
                    " (it was removed; its statistics and {parked} parked event(s) are left: \
                     `walhook webhook remove {id} --purge` deletes them)"
                )
            } else {
                String::new()
            }
        );
    }
    match &removed.name {
        Some(n) => println!("removed webhook_id {id} ({n:?})"),
        None => println!("webhook_id {id} had no webhook row any more"),
    }
    if purge {
        println!(
            "deleted its statistics ({usage} webhook_usage row(s)) and {parked} parked event(s)"
        );
    } else if usage + parked > 0 {
        println!(
            "kept its statistics ({usage} webhook_usage row(s)) and {parked} parked event(s) in {}; \
             `walhook webhook remove {id} --purge` deletes them",
            store.table_name("delivery")
        );
    }
    Ok(exit::OK)
}

/// The most of a response body `webhook test` prints.
const TEST_BODY_MAX_CHARS: usize = 2000;

async fn test(config: &Config, id: i32) -> anyhow::Result<u8> {
    let store = connect(config).await?;
    let row = store
        .webhook_row(id)
        .await?
        .ok_or_else(|| no_such_webhook(&store, id))?;
    let hook =
        Webhook::from_row(&row).map_err(|why| anyhow!("webhook_id {id} cannot be used: {why}"))?;
    let url = hook.target_url.clone();
    let shown = redacted_url(&url);
    check_target(&config.delivery, &url)
        .map_err(|why| anyhow!("webhook_id {id}: target_url {why}"))?;
    let event_id = Uuid::new_v4();
    let body = request::test_body(event_id, &hook, &config.events.context_identifier);
    let settings = control_settings(&store, id).await?;
    let at = SystemTime::now();
    let now = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let keys = request::SigningKeys {
        key: None,
        previous_secret: settings.previous_secret_at(at),
    };
    let headers = || {
        let mut headers = request::headers(&hook, &keys, "test", event_id, &body, 0, now);
        headers.insert(
            HeaderName::from_static("x-hook-test"),
            HeaderValue::from_static("true"),
        );
        headers
    };
    let http = http_client(&config.delivery).context("building the HTTP client")?;
    println!(
        "POST {shown}  (webhook_id {id} {:?}, state {}, event test, EventId {event_id}, {})",
        hook.name,
        hook.state,
        if hook.secret.is_some() {
            "signed"
        } else {
            "unsigned: no secret"
        }
    );
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.delivery.timeout;
    let sent = http.post(&url, headers, body.clone(), deadline).await;
    let elapsed = started.elapsed().as_millis();
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            let host = url.host_str().unwrap_or_default();
            let why = match tls::describe_failure(&e, host, &config.delivery) {
                Some(words) => format!("{words} ({})", error_chain(&e)),
                None => error_chain(&e),
            };
            println!("no response after {elapsed} ms: {why}");
            eprintln!("walhook: webhook_id {id}: POST {shown} failed: {why}");
            return Ok(exit::FAILURE);
        }
    };
    let status = response.status();
    println!(
        "{:?} {} {}",
        response.version(),
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    println!("elapsed: {elapsed} ms (until the response headers arrived)");
    for (name, value) in response.headers() {
        println!(
            "{name}: {}",
            printable(&String::from_utf8_lossy(value.as_bytes()))
        );
    }
    println!();
    // One byte past what is shown tells whether the body was longer.
    let limit = TEST_BODY_MAX_CHARS * 4 + 1;
    let mut body = response.into_body();
    let raw = match read_body_prefix(&mut body, limit, deadline).await {
        Ok(raw) => raw,
        Err(ReadError::Failed(e, raw)) => {
            println!("(reading the body failed: {})", error_chain(&e));
            raw
        }
        Err(ReadError::TimedOut(raw)) => {
            println!("(reading the body timed out: delivery.timeout)");
            raw
        }
    };
    let complete = raw.len() < limit;
    let text = String::from_utf8_lossy(&raw);
    let answer = truncate_chars(&text, TEST_BODY_MAX_CHARS);
    if answer.is_empty() {
        println!("(empty body)");
    } else {
        // The target's words, which may hold terminal escapes.
        println!("{}", printable(&answer));
    }
    if !complete || answer.len() < text.len() {
        println!("(body truncated at {TEST_BODY_MAX_CHARS} characters)");
    }
    if status.is_success() {
        Ok(exit::OK)
    } else {
        eprintln!(
            "walhook: webhook_id {id}: {shown} answered {} {}, not 2xx",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        Ok(exit::FAILURE)
    }
}
