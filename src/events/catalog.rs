//! What the events stage needs to know about the server's types and keys.
//!
//! pgoutput names a column's type only by OID; how its value becomes JSON
//! depends on the type's kind (array, domain, ...), read once from `pg_type`
//! and re-read when a relation uses a type walhook has not seen yet.

use std::collections::HashMap;

use anyhow::Context;

/// How `to_jsonb()` renders a type (PostgreSQL's `json_categorize_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonCategory {
    Bool,
    Number,
    Json,
    Date,
    Timestamp,
    Array { element: u32, delimiter: u8 },
    Text,
}

#[derive(Debug, Clone)]
struct TypeInfo {
    /// `typtype`: b base, d domain, e enum, c composite, r range, ...
    kind: u8,
    /// `typcategory`: A for arrays.
    category: u8,
    element: u32,
    delimiter: u8,
    base: u32,
}

/// The server's types, by OID.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, TypeInfo>,
}

const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const DATE: u32 = 1082;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;

impl TypeCatalog {
    /// The built-in array types, enough for unit tests without a server.
    pub fn builtin() -> TypeCatalog {
        let mut types = HashMap::new();
        for (array, element) in [
            (1000, BOOL),
            (1005, INT2),
            (1007, INT4),
            (1016, INT8),
            (1009, 25),
            (1015, 1043),
            (1021, FLOAT4),
            (1022, FLOAT8),
            (1231, NUMERIC),
            (1182, DATE),
            (1115, TIMESTAMP),
            (1185, TIMESTAMPTZ),
            (199, JSON),
            (3807, JSONB),
            (2951, 2950),
            (1001, 17),
        ] {
            types.insert(
                array,
                TypeInfo {
                    kind: b'b',
                    category: b'A',
                    element,
                    delimiter: b',',
                    base: 0,
                },
            );
        }
        TypeCatalog { types }
    }

    /// Read every type from `pg_type`.
    pub async fn load(client: &tokio_postgres::Client) -> anyhow::Result<TypeCatalog> {
        let rows = client
            .query(
                "SELECT t.oid, t.typtype::text, t.typelem, \
                        coalesce(e.typdelim, t.typdelim)::text, t.typbasetype, \
                        t.typcategory::text \
                   FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem",
                &[],
            )
            .await
            .context("reading the type catalog (pg_type)")?;
        let mut types = HashMap::with_capacity(rows.len());
        for row in rows {
            let oid: u32 = row.get(0);
            let kind: String = row.get(1);
            let delimiter: String = row.get(3);
            let category: String = row.get(5);
            types.insert(
                oid,
                TypeInfo {
                    kind: kind.bytes().next().unwrap_or(b'b'),
                    category: category.bytes().next().unwrap_or(b'U'),
                    element: row.get(2),
                    delimiter: delimiter.bytes().next().unwrap_or(b','),
                    base: row.get(4),
                },
            );
        }
        Ok(TypeCatalog { types })
    }

    pub fn knows(&self, oid: u32) -> bool {
        oid < 10_000 || self.types.contains_key(&oid)
    }

    pub fn category(&self, oid: u32) -> JsonCategory {
        // Domains render as their base type (bounded: domains cannot loop,
        // but a corrupt catalog must not hang the pipeline).
        let mut oid = oid;
        for _ in 0..16 {
            match self.types.get(&oid) {
                Some(t) if t.kind == b'd' && t.base != 0 => oid = t.base,
                _ => break,
            }
        }
        match oid {
            BOOL => return JsonCategory::Bool,
            INT2 | INT4 | INT8 | FLOAT4 | FLOAT8 | NUMERIC => return JsonCategory::Number,
            JSON | JSONB => return JsonCategory::Json,
            DATE => return JsonCategory::Date,
            TIMESTAMP | TIMESTAMPTZ => return JsonCategory::Timestamp,
            _ => {}
        }
        match self.types.get(&oid) {
            // `typelem` alone also marks fixed-length types such as `name`
            // and `point`; only category A is a true array.
            Some(t) if t.category == b'A' && t.element != 0 => JsonCategory::Array {
                element: t.element,
                delimiter: t.delimiter,
            },
            _ => JsonCategory::Text,
        }
    }
}

/// The primary-key columns of a relation, in key order (empty when none).
pub async fn primary_key(
    client: &tokio_postgres::Client,
    relation_oid: u32,
) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
              WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&relation_oid],
        )
        .await
        .with_context(|| format!("reading the primary key of relation oid {relation_oid}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
