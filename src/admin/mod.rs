//! The DBA's commands: `status`, `webhook list|add|set-state|test|remove`,
//! `replay`, `parked list|show|redeliver|discard`, `backfill`,
//! `teardown` and `config show|check`.
//!
//! Each opens one ordinary SQL session through the [`Store`], prints for a
//! person (aligned columns) or, where asked, one JSON document for scripts,
//! and returns the exit code. Errors name the object at fault: the
//! webhook_id, the file, the URL, the slot.

mod attempts;
mod backfill;
mod config;
mod parked;
mod render;
mod replay;
mod rules;
mod setup;
mod status;
mod teardown;
mod webhook;

pub use self::backfill::backfill;
pub use self::config::config;
pub use self::parked::parked;
pub use self::replay::replay;
pub use self::setup::{check, setup};
pub use self::status::status;
pub use self::teardown::teardown;
pub use self::webhook::webhook;
use crate::config::Config;
use crate::store::Store;

/// The command line asked for something invalid; nothing was changed.
/// `main` exits with [`exit::CONFIG`](crate::cli::exit::CONFIG) for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(text: impl Into<String>) -> anyhow::Error {
    Invalid(text.into()).into()
}

/// The store for a command; a bad `[postgres]` section is the command
/// line's fault, not the server's.
async fn connect(config: &Config) -> anyhow::Result<Store> {
    let conn = config.connection().map_err(|e| invalid(format!("{e:#}")))?;
    Store::connect(&conn, &config.postgres.schema).await
}

/// The store for `teardown`: as the role of `postgres.setup_url`, else
/// `postgres.url`.
async fn connect_for_setup(config: &Config) -> anyhow::Result<Store> {
    let conn = config
        .setup_connection()
        .map_err(|e| invalid(format!("{e:#}")))?;
    Store::connect(&conn, &config.postgres.schema).await
}

/// The error for a webhook_id that is not in the table.
fn no_such_webhook(store: &Store, id: i32) -> anyhow::Error {
    anyhow::anyhow!(
        "webhook_id {id} does not exist in {}",
        store.table_name("webhook")
    )
}
