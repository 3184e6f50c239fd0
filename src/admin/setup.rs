//! `walhook setup` and `walhook check`, as the command line runs them.

use anyhow::{bail, Context};

use crate::cli::exit;
use crate::config::Config;
use crate::setup;
use crate::store::Store;

/// `walhook setup [--dry-run]`, as the role of `postgres.setup_url` (else
/// `postgres.url`).
pub async fn setup(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    let conn = config.setup_connection()?;
    let store = Store::connect(&conn, &config.postgres.schema).await?;
    // Asked first, so a missing privilege never stops setup half way.
    let problems = setup::setup_problems(&store, config).await?;
    if !problems.is_empty() && !dry_run {
        bail!(
            "setup as {conn:?} cannot run to the end, so nothing was changed:\n  - {}",
            problems.join("\n  - ")
        );
    }
    let plan = setup::plan(&store, config).await?;
    for warning in plan.warnings.iter().chain(&problems) {
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
    for change in &plan.publication_changes {
        println!("  {change}");
    }
    if let Some(role) = setup::run_role_to_grant(config)? {
        println!("role {role:?} (postgres.url) may use walhook's tables");
    }
    if plan.create_slot.is_some() {
        println!(
            "note: replication slot {:?} now holds WAL on the server until `walhook run` \
             consumes it or `walhook teardown` drops it",
            config.postgres.slot
        );
    }
    Ok(())
}

/// `walhook check`: the config, the connection, the database, then the
/// setup role's privileges.
pub async fn check(config: &Config) -> u8 {
    println!("OK    config parses");
    let mut failed = false;
    for line in setup::check_delivery_files(config) {
        failed |= print_line(&line);
    }
    for problem in config.password_file_problems() {
        println!("FAIL  {problem}");
        failed = true;
    }
    for line in setup::check_cluster(config).await {
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
    let set_up = setup::is_set_up(&store, config).await.unwrap_or(false);
    let setup_store = if config.has_setup_url() {
        let connected = match config.setup_connection() {
            Ok(setup_conn) => Store::connect(&setup_conn, &config.postgres.schema)
                .await
                .map(|s| (s, setup_conn)),
            Err(e) => Err(e),
        };
        match connected {
            Ok((s, setup_conn)) => {
                println!("OK    connected to {setup_conn:?} (postgres.setup_url)");
                Some(s)
            }
            Err(e) => {
                // After setup the daemon does not need it: a warning then.
                failed |= print_line(&setup::CheckLine {
                    level: if set_up {
                        setup::CheckLevel::Warn
                    } else {
                        setup::CheckLevel::Fail
                    },
                    text: format!("postgres.setup_url: {e:#}"),
                });
                None
            }
        }
    } else {
        Some(store)
    };
    if let Some(setup_store) = setup_store {
        for line in setup::check_setup_role(&setup_store, config, set_up).await {
            failed |= print_line(&line);
        }
    }
    if failed {
        exit::CHECK_FAILED
    } else {
        exit::OK
    }
}

/// Print a line of `walhook check`; true when it reports a problem.
pub(super) fn print_line(line: &setup::CheckLine) -> bool {
    let tag = match line.level {
        setup::CheckLevel::Ok => "OK  ",
        setup::CheckLevel::Next => "NEXT",
        setup::CheckLevel::Note => "NOTE",
        setup::CheckLevel::Warn => "WARN",
        setup::CheckLevel::Fail => "FAIL",
    };
    println!("{tag}  {}", line.text);
    line.level == setup::CheckLevel::Fail
}
