//! Ordinary SQL sessions to PostgreSQL (the replication session is the
//! source's): application_name, timeouts and TLS as configured.

use anyhow::{bail, Context};

use crate::config::{Connection, SslMode};

/// Open an ordinary SQL session (application_name and timeouts set).
pub async fn connect_sql(conn: &Connection) -> anyhow::Result<tokio_postgres::Client> {
    if matches!(
        conn.sslmode,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    ) {
        bail!(
            "postgres.url: sslmode {:?} is not supported for SQL sessions yet; use sslmode=prefer or disable",
            conn.sslmode
        );
    }
    let (client, connection) = conn
        .sql_config()
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {conn:?}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("SQL session ended: {e}");
        }
    });
    Ok(client)
}

