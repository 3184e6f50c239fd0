//! The store: every SQL statement walhook runs, against its own objects
//! (`webhook`, `webhook_usage`, `delivery`, `registry_snapshot`,
//! `slot_progress`, `webhook_control`) and the server's catalog, in one place.
//!
//! The stages above never write SQL: they ask a [`Store`] for typed facts
//! (the slot's position, the hooks' rows, the parked events) and hand it
//! typed records. Delivery sees the store only through the small
//! [`DeliveryStore`](crate::delivery::DeliveryStore) interface, so lanes,
//! parking and retries can be tested without a database.
//!
//! Errors name what was being done and carry the server's message with its
//! detail and hint; a lost or refused connection is marked
//! [`LostConnection`](crate::errors::LostConnection) here, where it
//! happens.

pub mod attempts;
pub mod backfill;
pub mod catalog;
pub mod control;
pub mod ddl;
mod hook_rules;
pub mod parked;
pub mod parked_admin;
pub mod privileges;
pub mod progress;
pub mod slot;
pub mod snapshots;
pub mod usage;
pub mod webhooks;

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::config::Connection;
use crate::errors::{is_lost_connection, mark_sql_error, LostConnection};

/// One SQL session and the schema walhook's objects live in.
#[derive(Clone)]
pub struct Store {
    client: Arc<Client>,
    schema: Arc<str>,
    /// The position write, prepared once: it runs whenever the settled
    /// position passes events, and a crash resends what it lags behind.
    progress_statement: Arc<tokio::sync::OnceCell<tokio_postgres::Statement>>,
}

impl Store {
    /// Open an SQL session (application_name, timeouts and TLS as
    /// configured). A refused connection is a [`LostConnection`].
    ///
    /// A server that stops answering (a partition: no close, no reset)
    /// would leave every statement waiting for ever, and TCP's own timers
    /// cannot tell when a middlebox still acknowledges: a probe statement
    /// runs every half `receive_timeout`, and when one goes unanswered for
    /// [`Connection::answer_timeout`] the connection is cut, so every
    /// waiting statement fails as on a lost connection.
    pub async fn connect(conn: &Connection, schema: &str) -> anyhow::Result<Store> {
        let session =
            tokio::time::timeout(conn.connect_timeout, crate::postgres::connect_sql(conn))
                .await
                .map_err(|_| {
                    anyhow::Error::new(LostConnection(anyhow::anyhow!(
                        "connecting to PostgreSQL at {conn:?}: no answer within {}s \
                     (postgres.connect_timeout)",
                        conn.connect_timeout.as_secs_f64()
                    )))
                })?
                .map_err(mark_sql_error)?;
        let client = Arc::new(session.client);
        tokio::spawn(watch_answers(
            Arc::downgrade(&client),
            session.cut,
            conn.receive_timeout / 2,
            conn.answer_timeout(),
        ));
        Ok(Store::new(client, schema))
    }

    pub fn new(client: Arc<Client>, schema: &str) -> Store {
        Store {
            client,
            schema: Arc::from(schema),
            progress_statement: Arc::default(),
        }
    }

    /// The schema's name, unquoted.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Whether the session has ended (the server closed it, or the
    /// network dropped).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Resolves once the session has ended.
    pub async fn closed(&self) {
        while !self.client.is_closed() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One of walhook's tables as SQL, the schema quoted.
    fn table(&self, name: &str) -> String {
        format!("{}.{name}", ident(&self.schema))
    }

    /// One of walhook's tables as people read it, in messages.
    pub fn table_name(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }
}

/// Probe the session every `every`; cut it when a probe goes unanswered
/// for `limit`. Ends with the store (the last client dropped) or the
/// connection.
async fn watch_answers(
    client: std::sync::Weak<Client>,
    cut: tokio::task::AbortHandle,
    every: Duration,
    limit: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(session) = client.upgrade() else {
            return;
        };
        if session.is_closed() {
            return;
        }
        // The probe waits behind any statement already sent, which the
        // server may run for up to statement_timeout: hence the limit.
        match tokio::time::timeout(limit, session.simple_query("SELECT 1")).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    "no answer from PostgreSQL on an SQL session for {}s \
                     (postgres.statement_timeout + postgres.receive_timeout): \
                     presuming the connection lost and closing it",
                    limit.as_secs()
                );
                cut.abort();
                return;
            }
        }
    }
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// A quoted SQL string literal.
pub fn literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// The server's message with its detail and hint, on one line (the Display
/// of tokio-postgres errors repeats itself through `source`).
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            if matches!(
                *db.code(),
                SqlState::UNDEFINED_TABLE | SqlState::INVALID_SCHEMA_NAME
            ) {
                text.push_str(" (is walhook set up here? run `walhook setup`)");
            }
            text
        }
        None => crate::text::error_chain(e),
    }
}

/// What was being done, and what the server said.
fn failed(what: impl Display, e: tokio_postgres::Error) -> anyhow::Error {
    let error = anyhow::anyhow!("{what}: {}", pg_message(&e));
    if is_lost_connection(&e) {
        anyhow::Error::new(LostConnection(error))
    } else {
        error
    }
}

/// `.sql("reading the slot")?` names the step that failed.
trait SqlResult<T> {
    fn sql(self, what: impl Display) -> anyhow::Result<T>;
}

impl<T> SqlResult<T> for Result<T, tokio_postgres::Error> {
    fn sql(self, what: impl Display) -> anyhow::Result<T> {
        self.map_err(|e| failed(what, e))
    }
}
