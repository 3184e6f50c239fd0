//! `walhook teardown`: drop the slot and the publications (and the schema
//! with `--drop-schema`), after saying what and asking, as the role of
//! `postgres.setup_url` (else `postgres.url`). It drops nothing unless that
//! role may drop all of it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::render::bytes;
use super::{connect_for_setup, invalid};
use crate::cli::exit;
use crate::config::Config;
use crate::store::ddl;
use crate::store::slot::SlotDrop;

/// How long teardown waits for an active slot to be released: a walsender
/// outlives its client by a moment, so a teardown right after `systemctl
/// stop walhook` waits briefly before refusing.
const ACTIVE_SLOT_PATIENCE: Duration = Duration::from_secs(2);

pub async fn teardown(config: &Config, drop_schema: bool, yes: bool) -> anyhow::Result<u8> {
    let store = connect_for_setup(config).await?;
    let slot = &config.postgres.slot;
    let schema = &config.postgres.schema;
    let patience = Instant::now();
    let slot_row = loop {
        match store.slot_for_teardown(slot).await? {
            Some(s) if s.active => {
                if patience.elapsed() < ACTIVE_SLOT_PATIENCE {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                bail!(
                    "replication slot {slot:?} is in use by walsender pid {}: a walhook is \
                     streaming from it: stop walhook first (systemctl stop walhook), then run \
                     teardown again; nothing was dropped",
                    s.active_pid.map_or("?".into(), |p| p.to_string())
                );
            }
            other => break other,
        }
    };
    let publications = crate::setup::publications(&store, config).await?;
    let schema_exists = store.schema_exists().await?;

    println!("walhook teardown:");
    let mut todo = 0;
    match &slot_row {
        Some(s) => {
            todo += 1;
            println!(
                "  drop replication slot {slot:?} (wal_status {}, holding {} of WAL)",
                s.wal_status.as_deref().unwrap_or("-"),
                s.retained_bytes.map_or("an unknown amount".into(), bytes)
            );
        }
        None => println!("  replication slot {slot:?}: already gone"),
    }
    for (p, exists) in &publications {
        if *exists {
            todo += 1;
            println!("  drop publication {p:?}");
        } else {
            println!("  publication {p:?}: already gone");
        }
    }
    if drop_schema {
        if schema_exists {
            todo += 1;
            let counts = store
                .schema_contents()
                .await
                .map(|(hooks, parked)| {
                    format!(": {hooks} webhook row(s), {parked} parked event(s)")
                })
                .unwrap_or_default();
            println!("  drop schema {schema:?} and everything in it (CASCADE){counts}");
        } else {
            println!("  schema {schema:?}: already gone");
        }
    } else if schema_exists {
        println!(
            "  schema {schema:?} is kept (webhook rows, statistics, parked events); \
             --drop-schema drops it too"
        );
    }
    if todo == 0 {
        println!("nothing to drop: everything is already gone");
        return Ok(exit::OK);
    }
    let problems = crate::setup::teardown_problems(
        &store,
        config,
        slot_row.is_some(),
        drop_schema && schema_exists,
    )
    .await?;
    if !problems.is_empty() {
        bail!(
            "teardown needs another role, so nothing was dropped:\n  - {}",
            problems.join("\n  - ")
        );
    }

    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(invalid(
                "teardown asks for confirmation and stdin is not a terminal: pass --yes to drop \
                 without asking; nothing was dropped",
            ));
        }
        print!("Drop these? [y/N] ");
        std::io::stdout().flush()?;
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .context("reading the answer")??;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            println!("nothing was dropped");
            return Ok(exit::FAILURE);
        }
    }

    if slot_row.is_some() {
        match store
            .drop_slot(slot)
            .await
            .map_err(|e| e.context("nothing was dropped"))?
        {
            SlotDrop::Dropped => println!("dropped replication slot {slot:?}"),
            SlotDrop::AlreadyGone => println!("replication slot {slot:?}: already gone"),
            SlotDrop::InUse => bail!(
                "replication slot {slot:?} became active meanwhile (a walhook started streaming): \
                 stop walhook first, then run teardown again; nothing was dropped"
            ),
        }
        // The snapshots and the settled position record positions of the
        // dropped slot; a slot made by the next setup starts a new history.
        if schema_exists && !drop_schema {
            store.clear_snapshots().await?;
            store.clear_progress(slot).await?;
        }
    }
    for (p, exists) in &publications {
        if *exists {
            store
                .run_statement(
                    &ddl::drop_publication(p),
                    &format!("dropping publication {p:?}"),
                )
                .await?;
            println!("dropped publication {p:?}");
        }
    }
    if drop_schema && schema_exists {
        store.drop_schema().await?;
        println!("dropped schema {schema:?}");
    }
    println!("done: the server holds no WAL for walhook any more");
    Ok(exit::OK)
}
