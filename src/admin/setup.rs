//! `walhook setup` and `walhook check`, as the command line runs them.

use anyhow::Context;

use crate::cli::exit;
use crate::config::Config;
use crate::setup;
use crate::store::Store;

/// `walhook setup [--dry-run]`.
pub async fn setup(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    let conn = config.connection()?;
    let store = Store::connect(&conn, &config.postgres.schema).await?;
    let plan = setup::plan(&store, config).await?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    if dry_run {
        print!("{}", plan.sql());
        if plan.is_empty() {
            println!("-- nothing to change: walhook is set up in {conn:?}");
        }
        return Ok(());
    }
    if plan.is_empty() {
        println!("walhook is already set up in {conn:?}: nothing changed");
        return Ok(());
    }
    setup::apply(&store, config, &plan)
        .await
        .context("setup failed; nothing after the failing statement ran")?;
    println!(
        "walhook is set up in {conn:?}: schema {:?}, publication {:?}, slot {:?}",
        config.postgres.schema, config.postgres.publication, config.postgres.slot
    );
    if plan.create_slot.is_some() {
        println!(
            "note: replication slot {:?} now holds WAL on the server until `walhook run` \
             consumes it or `walhook teardown` drops it",
            config.postgres.slot
        );
    }
    Ok(())
}

/// `walhook check`: the config, the connection, then the database.
pub async fn check(config: &Config) -> u8 {
    println!("OK    config parses");
    let mut failed = false;
    for line in setup::check_delivery_files(config) {
        failed |= print_line(&line);
    }
    let conn = match config.connection() {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL  {e:#}");
            return exit::CHECK_FAILED;
        }
    };
    let store = match Store::connect(&conn, &config.postgres.schema).await {
        Ok(store) => {
            println!("OK    connected to {conn:?}");
            store
        }
        Err(e) => {
            println!("FAIL  {e:#}");
            return exit::CHECK_FAILED;
        }
    };
    for line in setup::check(&store, config).await {
        failed |= print_line(&line);
    }
    if failed {
        exit::CHECK_FAILED
    } else {
        exit::OK
    }
}

/// Print a line of `walhook check`; true when it reports a problem.
fn print_line(line: &setup::CheckLine) -> bool {
    let tag = match line.level {
        setup::CheckLevel::Ok => "OK  ",
        setup::CheckLevel::Warn => "WARN",
        setup::CheckLevel::Fail => "FAIL",
    };
    println!("{tag}  {}", line.text);
    line.level == setup::CheckLevel::Fail
}
