//! The statements `setup`, `teardown` and `capture.auto_add_tables` run:
//! built here from typed values, shown by `--dry-run`, run in one
//! transaction.

use super::catalog::{PublicationOptions, PublishedTable};
use super::{ident, literal, SqlResult, Store};

/// The schema, tables and trigger (sql/schema.sql).
const SCHEMA_SQL: &str = include_str!("../../sql/schema.sql");

/// walhook's schema objects, in `schema`.
pub fn create_schema(schema: &str) -> String {
    SCHEMA_SQL.replace("{schema}", &ident(schema))
}

/// `"s"."t"` or `"s"."t" ("a", "b")`.
fn entry(table: &PublishedTable) -> String {
    let name = format!("{}.{}", ident(&table.schema), ident(&table.name));
    if table.columns.is_empty() {
        name
    } else {
        let columns: Vec<String> = table.columns.iter().map(|c| ident(c)).collect();
        format!("{name} ({})", columns.join(", "))
    }
}

fn entries(tables: &[PublishedTable]) -> String {
    tables.iter().map(entry).collect::<Vec<_>>().join(", ")
}

fn with(options: &PublicationOptions) -> String {
    format!(
        "WITH (publish = {}, publish_via_partition_root = {})",
        literal(&options.publish),
        options.via_partition_root
    )
}

pub fn create_publication(
    name: &str,
    tables: &[PublishedTable],
    options: &PublicationOptions,
) -> String {
    if tables.is_empty() {
        format!("CREATE PUBLICATION {} {}", ident(name), with(options))
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {} {}",
            ident(name),
            entries(tables),
            with(options)
        )
    }
}

pub fn set_publication_options(name: &str, options: &PublicationOptions) -> String {
    format!(
        "ALTER PUBLICATION {} SET ({})",
        ident(name),
        with(options)
            .trim_start_matches("WITH (")
            .trim_end_matches(')')
    )
}

pub fn set_publication_tables(name: &str, tables: &[PublishedTable]) -> String {
    format!(
        "ALTER PUBLICATION {} SET TABLE {}",
        ident(name),
        entries(tables)
    )
}

pub fn add_publication_table(name: &str, table: &PublishedTable) -> String {
    format!(
        "ALTER PUBLICATION {} ADD TABLE {}",
        ident(name),
        entry(table)
    )
}

pub fn drop_publication(name: &str) -> String {
    format!("DROP PUBLICATION IF EXISTS {}", ident(name))
}

/// The slot; a failover slot (PostgreSQL 17+) is synchronised to standbys.
pub fn create_slot(slot: &str, failover: bool) -> String {
    format!(
        "SELECT pg_create_logical_replication_slot({}, 'pgoutput'{})",
        literal(slot),
        if failover { ", failover => true" } else { "" }
    )
}

/// The first line of a statement that is not a comment, for messages.
fn first_line(sql: &str) -> &str {
    sql.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or(sql)
}

impl Store {
    /// Run `statements` in one transaction: a table moving between the two
    /// publications, or a publication re-created, is never half done while
    /// the host commits.
    pub async fn run_in_transaction(&self, statements: &[String]) -> anyhow::Result<()> {
        if statements.is_empty() {
            return Ok(());
        }
        self.client
            .batch_execute("BEGIN")
            .await
            .sql("starting setup")?;
        for statement in statements {
            if let Err(e) = self.client.batch_execute(statement).await {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e).sql(format!("running: {}", first_line(statement)));
            }
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .sql("committing setup")?;
        Ok(())
    }

    /// Run one statement on its own (the slot is created outside any
    /// transaction).
    pub async fn run_statement(&self, statement: &str, what: &str) -> anyhow::Result<()> {
        self.client.batch_execute(statement).await.sql(what)?;
        Ok(())
    }

    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                ident(self.schema())
            ))
            .await
            .sql(format!("dropping schema {:?}", self.schema()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[&str]) -> PublishedTable {
        PublishedTable {
            schema: "crm".into(),
            name: "Contact".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn publication_statements_quote_every_name() {
        let options = PublicationOptions {
            publish: "insert, truncate".into(),
            via_partition_root: false,
        };
        assert_eq!(
            create_publication("walhook_keyless", &[table(&["id", "a\"b"])], &options),
            "CREATE PUBLICATION \"walhook_keyless\" FOR TABLE \"crm\".\"Contact\" \
             (\"id\", \"a\"\"b\") WITH (publish = 'insert, truncate', \
             publish_via_partition_root = false)"
        );
        assert_eq!(
            set_publication_options("walhook", &options),
            "ALTER PUBLICATION \"walhook\" SET (publish = 'insert, truncate', \
             publish_via_partition_root = false)"
        );
        assert_eq!(
            create_publication("p", &[], &options),
            "CREATE PUBLICATION \"p\" WITH (publish = 'insert, truncate', \
             publish_via_partition_root = false)"
        );
    }
}
