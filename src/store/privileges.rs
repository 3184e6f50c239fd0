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

    /// Whether `role` may use walhook's schema and read and write every
    /// table in it: what the daemon needs (setup grants sequences too, for
    /// the commands that add rows).
    pub async fn run_role_can_work(&self, role: &str) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT has_schema_privilege($1, $2, 'USAGE') \
                    AND NOT EXISTS ( \
                        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $2 AND c.relkind IN ('r', 'p') AND NOT ( \
                               has_table_privilege($1, c.oid, 'SELECT') \
                           AND has_table_privilege($1, c.oid, 'INSERT') \
                           AND has_table_privilege($1, c.oid, 'UPDATE') \
                           AND has_table_privilege($1, c.oid, 'DELETE')))",
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

/// A role, other than walhook's own, that may write walhook's internal
/// tables (everything in its schema but `webhook`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalWriter {
    /// The role's name, or `PUBLIC`.
    pub role: String,
    /// Each table it may write, with the privileges, in the order INSERT,
    /// UPDATE, DELETE, TRUNCATE.
    pub tables: Vec<(String, Vec<String>)>,
    /// Tables on which the role holds a privilege by a GRANT to itself.
    pub granted: Vec<String>,
    /// Roles it holds privileges through: owners, grantees it is a member
    /// of, pg_write_all_data.
    pub through: Vec<String>,
}

impl Store {
    /// Every role other than `own` (walhook's roles), the owners of
    /// walhook's schema and tables, superusers (whom no GRANT binds) and
    /// the predefined `pg_` roles (their members are named instead) that
    /// holds INSERT, UPDATE, DELETE or TRUNCATE on one of walhook's tables
    /// other than `webhook`; PUBLIC too, and a role that holds a privilege
    /// only through PUBLIC is not named for it.
    pub async fn internal_writers(&self, own: &[String]) -> anyhow::Result<Vec<InternalWriter>> {
        let rows = self
            .client
            .query(
                "WITH tabs AS ( \
                     SELECT c.oid, c.relname::text AS relname, c.relowner, \
                            coalesce(c.relacl, acldefault('r', c.relowner)) AS acl \
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                      WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> 'webhook'), \
                 privs(p, o) AS (VALUES ('INSERT', 1), ('UPDATE', 2), ('DELETE', 3), ('TRUNCATE', 4)), \
                 roles AS ( \
                     SELECT r.oid, r.rolname::text AS rolname FROM pg_roles r \
                      WHERE NOT r.rolsuper AND r.rolname !~ '^pg_' AND NOT r.rolname = ANY ($2) \
                        AND r.oid <> (SELECT nspowner FROM pg_namespace WHERE nspname = $1) \
                        AND NOT EXISTS (SELECT 1 FROM tabs WHERE tabs.relowner = r.oid)) \
                 SELECT r.rolname, t.relname, pr.p, pr.o, \
                        EXISTS (SELECT 1 FROM aclexplode(t.acl) a \
                                 WHERE a.grantee = r.oid AND a.privilege_type = pr.p) AS granted, \
                        ARRAY(SELECT pg_get_userbyid(a.grantee)::text FROM aclexplode(t.acl) a \
                               WHERE a.privilege_type = pr.p AND a.grantee NOT IN (0, r.oid) \
                                 AND pg_has_role(r.oid, a.grantee, 'USAGE') \
                              UNION SELECT pg_get_userbyid(t.relowner)::text \
                               WHERE pg_has_role(r.oid, t.relowner, 'USAGE') \
                              UNION SELECT 'pg_write_all_data' \
                               WHERE pr.p <> 'TRUNCATE' \
                                 AND pg_has_role(r.oid, 'pg_write_all_data', 'USAGE')) AS through \
                   FROM roles r CROSS JOIN tabs t CROSS JOIN privs pr \
                  WHERE has_table_privilege(r.oid, t.oid, pr.p) \
                 UNION ALL \
                 SELECT 'PUBLIC', t.relname, pr.p, pr.o, true, ARRAY[]::text[] \
                   FROM tabs t CROSS JOIN privs pr \
                  WHERE EXISTS (SELECT 1 FROM aclexplode(t.acl) a \
                                 WHERE a.grantee = 0 AND a.privilege_type = pr.p) \
                  ORDER BY 1, 2, 4",
                &[&self.schema(), &own],
            )
            .await
            .sql(format!(
                "reading which roles may write the tables of schema {:?}",
                self.schema()
            ))?;
        let mut writers: Vec<InternalWriter> = Vec::new();
        for row in rows {
            let role: String = row.get(0);
            let table: String = row.get(1);
            let privilege: String = row.get(2);
            let granted: bool = row.get(4);
            let through: Vec<String> = row.get(5);
            // Held only through PUBLIC: PUBLIC's own line names it.
            if role != "PUBLIC" && !granted && through.is_empty() {
                continue;
            }
            if writers.last().is_none_or(|w| w.role != role) {
                writers.push(InternalWriter {
                    role: role.clone(),
                    tables: Vec::new(),
                    granted: Vec::new(),
                    through: Vec::new(),
                });
            }
            let Some(writer) = writers.last_mut() else {
                continue;
            };
            match writer.tables.last_mut() {
                Some((t, privileges)) if *t == table => privileges.push(privilege),
                _ => writer.tables.push((table.clone(), vec![privilege])),
            }
            if granted && !writer.granted.contains(&table) {
                writer.granted.push(table);
            }
            for role in through {
                if !writer.through.contains(&role) {
                    writer.through.push(role);
                }
            }
        }
        Ok(writers)
    }
}

/// The role of `postgres.url` lacks walhook's grants: it would wait as a
/// standby, or fail on its first statement naming a table, so the daemon
/// and `status` say what it lacks first.
#[derive(Debug, thiserror::Error)]
#[error(
    "role {role:?} (postgres.url) lacks privileges on walhook's schema {schema:?}: {} (as the \
     schema's owner; `walhook setup` with postgres.setup_url naming another role grants them, \
     and `walhook check` names what is missing)",
    run_role_grants(schema, role)[..2].join("; ")
)]
pub struct RunRoleLacksGrants {
    pub role: String,
    pub schema: String,
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

impl Store {
    /// The tables of `publication` the connected role may not read whole
    /// (what `walhook backfill` needs of the daemon's role), with the
    /// GRANTs that fix it.
    pub async fn unreadable_published_tables(
        &self,
        publication: &str,
    ) -> anyhow::Result<Vec<UnreadableTable>> {
        Ok(self
            .client
            .query(
                "SELECT p.schemaname::text, p.tablename::text, \
                        has_schema_privilege(n.oid, 'USAGE'), \
                        has_table_privilege(c.oid, 'SELECT') \
                   FROM pg_publication_tables p \
                   JOIN pg_namespace n ON n.nspname = p.schemaname \
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
                  WHERE p.pubname = $1 \
                    AND NOT (has_schema_privilege(n.oid, 'USAGE') \
                             AND has_table_privilege(c.oid, 'SELECT')) \
                  ORDER BY 1, 2",
                &[&publication],
            )
            .await
            .sql(format!(
                "reading which tables of publication {publication:?} the role may read"
            ))?
            .iter()
            .map(|r| UnreadableTable {
                schema: r.get(0),
                name: r.get(1),
                needs_usage: !r.get::<_, bool>(2),
                needs_select: !r.get::<_, bool>(3),
            })
            .collect())
    }
}

/// A published table the connected role may not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableTable {
    pub schema: String,
    pub name: String,
    /// It lacks USAGE on the schema.
    pub needs_usage: bool,
    /// It lacks SELECT on the table.
    pub needs_select: bool,
}
