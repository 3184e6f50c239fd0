//! One SQL session on the bench database, kept open for the run: polls made
//! while walhook is timed start no process (a `psql` per check cost about
//! 70 ms of CPU on a 2-core machine, a third of both cores at 50 ms polls).
//! A session that died with a PostgreSQL restart is opened again.

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub struct Db {
    url: String,
    client: Option<Client>,
}

impl Db {
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        let mut db = Db {
            url: url.to_owned(),
            client: None,
        };
        db.session().await?;
        Ok(db)
    }

    async fn session(&mut self) -> anyhow::Result<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let mut config: tokio_postgres::Config = self
                .url
                .parse()
                .with_context(|| format!("{}: not a PostgreSQL URL", self.url))?;
            config.application_name("bench_poll");
            let (client, connection) = config
                .connect(NoTls)
                .await
                .with_context(|| format!("connecting to {}", self.url))?;
            tokio::spawn(connection);
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .context("the bench session is not open")
    }

    /// Runs statements (one or several, `;`-separated).
    pub async fn exec(&mut self, sql: &str) -> anyhow::Result<()> {
        self.session()
            .await?
            .batch_execute(sql)
            .await
            .with_context(|| format!("SQL failed: {}", one_line(sql)))
    }

    /// Every row of the last statement, each as its columns' text (NULL
    /// as the empty string).
    pub async fn rows(&mut self, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let messages = self
            .session()
            .await?
            .simple_query(sql)
            .await
            .with_context(|| format!("SQL failed: {}", one_line(sql)))?;
        let mut rows = Vec::new();
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(_) => rows.clear(),
                SimpleQueryMessage::Row(row) => rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("").to_owned())
                        .collect(),
                ),
                _ => {}
            }
        }
        Ok(rows)
    }

    /// The first column of the only (or first) row.
    pub async fn text(&mut self, sql: &str) -> anyhow::Result<String> {
        let rows = self.rows(sql).await?;
        match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(v) => Ok(v),
            None => bail!("no row from: {}", one_line(sql)),
        }
    }

    pub async fn int(&mut self, sql: &str) -> anyhow::Result<i64> {
        let text = self.text(sql).await?;
        text.parse()
            .with_context(|| format!("'{text}' is not a number, from: {}", one_line(sql)))
    }

    pub async fn float(&mut self, sql: &str) -> anyhow::Result<f64> {
        let text = self.text(sql).await?;
        text.parse()
            .with_context(|| format!("'{text}' is not a number, from: {}", one_line(sql)))
    }

    /// Whether a boolean query answers true; false on any error (a poll
    /// across a restart).
    pub async fn is_true(&mut self, sql: &str) -> bool {
        matches!(self.text(sql).await.as_deref(), Ok("t"))
    }

    /// COPY ... FROM STDIN with these bytes.
    pub async fn copy_in(&mut self, sql: &str, data: Vec<u8>) -> anyhow::Result<u64> {
        let sink = self
            .session()
            .await?
            .copy_in::<_, Bytes>(sql)
            .await
            .with_context(|| format!("SQL failed: {sql}"))?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(data))
            .await
            .with_context(|| format!("sending the data of: {sql}"))?;
        sink.finish()
            .await
            .with_context(|| format!("finishing: {sql}"))
    }
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
