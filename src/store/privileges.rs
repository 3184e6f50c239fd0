//! What the connected role may do to walhook's objects, asked before
//! `setup` and `teardown` change anything (so neither stops half way on a
//! permission error), and what `setup` grants the daemon's role.

use super::{ident, SqlResult, Store};

/// The connected role's standing for `setup` and `teardown`.
#[derive(Debug, Clone)]
pub struct RolePowers {
    pub role: String,
    pub database: String,
    pub superuser: bool,
    /// REPLICATION (or superuser): may create and drop replication slots.
    pub replication: bool,
    /// CREATE on the database: may create schemas and publications.
    pub create_on_database: bool,
}

/// An object whose owner's privileges the connected role does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOwned {
    /// What it is, as people read it: `table crm.contact`, `publication "walhook"`.
    pub object: String,
    pub owner: String,
}

impl Store {
    /// The connected role's attributes and CREATE on the database.
    pub async fn role_powers(&self) -> anyhow::Result<RolePowers> {
        let row = self
            .client
            .query_one(
                "SELECT current_user::text, current_database()::text, r.rolsuper, \
                        r.rolsuper OR r.rolreplication, \
                        has_database_privilege(current_database(), 'CREATE') \
                   FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .sql("reading the connected role's attributes")?;
        Ok(RolePowers {
            role: row.get(0),
            database: row.get(1),
            superuser: row.get(2),
            replication: row.get(3),
            create_on_database: row.get(4),
        })
    }

    /// Of the tables (`schema`, `name`), those whose owner's privileges the
    /// connected role lacks: PostgreSQL lets only a table's owner (or a
    /// member of the owning role) add it to a publication.
    pub async fn tables_not_owned(
        &self,
        tables: &[(String, String)],
    ) -> anyhow::Result<Vec<NotOwned>> {
        let (schemas, names): (Vec<&str>, Vec<&str>) =
            tables.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
        Ok(self
            .client
            .query(
                "SELECT n.nspname::text || '.' || c.relname::text, pg_get_userbyid(c.relowner)::text \
                   FROM unnest($1::text[], $2::text[]) AS t(nsp, rel) \
                   JOIN pg_namespace n ON n.nspname = t.nsp \
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel \
                  WHERE NOT pg_has_role(current_user, c.relowner, 'USAGE') \
                  ORDER BY 1",
                &[&schemas, &names],
            )
            .await
            .sql("reading the owners of the captured tables")?
            .iter()
            .map(|r| NotOwned {
                object: format!("table {}", r.get::<_, String>(0)),
                owner: r.get(1),
            })
            .collect())
    }

    /// Of the publications `names` and walhook's schema, those that exist
    /// and whose owner's privileges the connected role lacks (only an owner
    /// may alter or drop them).
    pub async fn walhook_objects_not_owned(
        &self,
        publications: &[String],
    ) -> anyhow::Result<Vec<NotOwned>> {
        Ok(self
            .client
            .query(
                "SELECT 'publication ' || quote_ident(pubname::text), pg_get_userbyid(pubowner)::text \
                   FROM pg_publication \
                  WHERE pubname = ANY ($1) AND NOT pg_has_role(current_user, pubowner, 'USAGE') \
                 UNION ALL \
                 SELECT 'schema ' || quote_ident(nspname::text), pg_get_userbyid(nspowner)::text \
                   FROM pg_namespace \
                  WHERE nspname = $2 AND NOT pg_has_role(current_user, nspowner, 'USAGE') \
                  ORDER BY 1",
                &[&publications, &self.schema()],
            )
            .await
            .sql("reading the owners of walhook's schema and publications")?
            .iter()
            .map(|r| NotOwned {
                object: r.get(0),
                owner: r.get(1),
            })
            .collect())
    }

    /// Whether a role of that name exists.
    pub async fn role_exists(&self, role: &str) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                &[&role],
            )
            .await
            .sql(format!("looking for role {role:?}"))?
            .get(0))
    }

    /// Whether `role` has every privilege the daemon needs on walhook's
    /// schema: USAGE on it, SELECT, INSERT, UPDATE and DELETE on each of its
    /// tables, USAGE on each of its sequences. False while the schema does
    /// not exist.
    pub async fn run_role_has_grants(&self, role: &str) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $2) \
                    AND has_schema_privilege($1, $2, 'USAGE') \
                    AND NOT EXISTS ( \
                        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $2 AND ( \
                               (c.relkind IN ('r', 'p') AND NOT ( \
                                    has_table_privilege($1, c.oid, 'SELECT') \
                                AND has_table_privilege($1, c.oid, 'INSERT') \
                                AND has_table_privilege($1, c.oid, 'UPDATE') \
                                AND has_table_privilege($1, c.oid, 'DELETE'))) \
                            OR (c.relkind = 'S' AND NOT has_sequence_privilege($1, c.oid, 'USAGE'))))",
                &[&role, &self.schema()],
            )
            .await
            .sql(format!("reading the privileges of role {role:?}"))?
            .get(0))
    }

    /// Whether `role` is a member of pg_read_all_stats (directly or not).
    pub async fn reads_all_stats(&self, role: &str) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT pg_has_role($1, 'pg_read_all_stats', 'USAGE')",
                &[&role],
            )
            .await
            .sql(format!("reading the roles of {role:?}"))?
            .get(0))
    }
}

/// The GRANTs that give `role` what the daemon needs in `schema`.
pub fn run_role_grants(schema: &str, role: &str) -> Vec<String> {
    let (schema, role) = (ident(schema), ident(role));
    vec![
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
    ]
}
