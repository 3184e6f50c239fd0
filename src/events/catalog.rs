//! What the events stage needs to know about the server's types and keys.
//!
//! pgoutput names a column's type only by OID; how its value becomes JSON
//! depends on the type's kind (array, domain, composite, ...), read once
//! from `pg_type` and re-read when a relation uses a type walhook has not
//! seen yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::pgoutput::Lsn;

/// How `to_jsonb()` renders a type: PostgreSQL's `json_categorize_type`
/// (`jsonb_categorize_type` in PostgreSQL 15), after domains are resolved
/// to their base type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonCategory {
    Bool,
    /// int2, int4, int8, float4, float8, numeric: a JSON number, or the
    /// text for NaN and the infinities.
    Number,
    /// json and jsonb: embedded.
    Json,
    Date,
    Timestamp,
    /// A true array (`typsubscript = array_subscript_handler`), including
    /// `int2vector` and `oidvector`. `delimiter` is the element type's.
    Array {
        element: u32,
        delimiter: u8,
    },
    /// A composite (row) type: an object of its attributes.
    Composite {
        oid: u32,
    },
    /// A non-built-in type with a function cast to json that walhook
    /// reproduces: hstore's `hstore_to_json` (an object of strings).
    Hstore,
    /// A non-built-in type with a function cast to json that walhook cannot
    /// run client-side; the value is sent as its text.
    JsonCast {
        oid: u32,
    },
    /// Everything else: the type's text output as a JSON string.
    Text,
}

/// One attribute of a composite type, in `attnum` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone)]
struct TypeInfo {
    /// `typtype`: b base, d domain, e enum, c composite, r range, ...
    kind: u8,
    /// A true array: `typsubscript = array_subscript_handler`.
    is_array: bool,
    element: u32,
    delimiter: u8,
    base: u32,
    /// `format_type(oid, NULL)`, for log messages.
    name: Option<String>,
    /// Composite types: the live attributes, in `attnum` order. `None`
    /// when not loaded (a composite no table column can reach).
    fields: Option<Arc<[Field]>>,
    /// The function of a cast to json (`pg_cast`, method f), for types
    /// that are not built in: `to_jsonb()` renders through it.
    json_cast: Option<String>,
}

impl TypeInfo {
    fn array(element: u32, delimiter: u8) -> TypeInfo {
        TypeInfo {
            kind: b'b',
            is_array: true,
            element,
            delimiter,
            base: 0,
            name: None,
            fields: None,
            json_cast: None,
        }
    }
}

/// One `pg_type` row.
#[derive(Debug, Clone)]
pub struct TypeRow {
    pub oid: u32,
    /// `typtype`: b(ase), c(omposite), d(omain), e(num), m(ultirange), p(seudo), r(ange).
    pub kind: u8,
    pub element: u32,
    pub delimiter: u8,
    pub base: u32,
    pub is_array: bool,
    pub name: Option<String>,
}

/// What the catalog is made from, as the store reads it.
#[derive(Debug, Clone, Default)]
pub struct CatalogRows {
    /// The server's WAL insert position just before the rows were read.
    pub loaded_at: Option<Lsn>,
    pub types: Vec<TypeRow>,
    /// (composite type, attribute name, attribute type), in attribute order.
    pub fields: Vec<(u32, String, u32)>,
    /// Composite types without attributes.
    pub empty_composites: Vec<u32>,
    /// (type, name of its function cast to json).
    pub json_casts: Vec<(u32, String)>,
}

/// The server's types, by OID.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, TypeInfo>,
    /// The server's WAL insert position just before the catalog was read
    /// (`None` for `builtin`).
    loaded_at: Option<Lsn>,
    /// Set when a value did not fit this catalog: a composite value with
    /// another number of fields than its type has here.
    stale: Arc<AtomicBool>,
}

const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT2VECTOR: u32 = 22;
const INT4: u32 = 23;
const OID: u32 = 26;
const OIDVECTOR: u32 = 30;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const DATE: u32 = 1082;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;
/// PostgreSQL's `FirstNormalObjectId`: OIDs below are built in, and
/// `to_jsonb()` looks for a cast to json only for types at or above it.
pub const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// Domains nest, but never in a loop; the bound only guards against a
/// corrupt catalog hanging the pipeline.
const MAX_DOMAIN_DEPTH: usize = 16;

impl TypeCatalog {
    /// The common built-in array types, enough for unit tests without a
    /// server. Scalar built-ins need no entry.
    pub fn builtin() -> TypeCatalog {
        let mut types = HashMap::new();
        for (array, element, delimiter) in [
            (1000, BOOL, b','),
            (1005, INT2, b','),
            (1007, INT4, b','),
            (1016, INT8, b','),
            (1009, 25, b','),
            (1014, 1042, b','),
            (1015, 1043, b','),
            (1021, FLOAT4, b','),
            (1022, FLOAT8, b','),
            (1231, NUMERIC, b','),
            (1182, DATE, b','),
            (1115, TIMESTAMP, b','),
            (1185, TIMESTAMPTZ, b','),
            (199, JSON, b','),
            (3807, JSONB, b','),
            (2951, 2950, b','),
            (1001, 17, b','),
            (1028, OID, b','),
            (1020, 603, b';'),
            (INT2VECTOR, INT2, b','),
            (1006, INT2VECTOR, b','),
            (OIDVECTOR, OID, b','),
            (1013, OIDVECTOR, b','),
        ] {
            types.insert(array, TypeInfo::array(element, delimiter));
        }
        TypeCatalog {
            types,
            loaded_at: None,
            stale: Arc::default(),
        }
    }

    /// The catalog from what the store read of the server's.
    pub fn from_rows(rows: CatalogRows) -> TypeCatalog {
        let mut types = HashMap::with_capacity(rows.types.len());
        for row in rows.types {
            types.insert(
                row.oid,
                TypeInfo {
                    kind: row.kind,
                    is_array: row.is_array,
                    element: row.element,
                    delimiter: row.delimiter,
                    base: row.base,
                    name: row.name,
                    fields: None,
                    json_cast: None,
                },
            );
        }
        let mut fields: HashMap<u32, Vec<Field>> = HashMap::new();
        for (oid, name, type_oid) in rows.fields {
            fields
                .entry(oid)
                .or_default()
                .push(Field { name, type_oid });
        }
        for (oid, list) in fields {
            if let Some(t) = types.get_mut(&oid) {
                t.fields = Some(list.into());
            }
        }
        for oid in rows.empty_composites {
            if let Some(t) = types.get_mut(&oid) {
                t.fields = Some(Vec::new().into());
            }
        }
        for (oid, function) in rows.json_casts {
            if let Some(t) = types.get_mut(&oid) {
                t.json_cast = Some(function);
            }
        }
        TypeCatalog {
            types,
            loaded_at: rows.loaded_at,
            stale: Arc::default(),
        }
    }

    /// Whether values of type `oid` can be converted with what this
    /// catalog holds: the type is loaded and so is everything it is made
    /// of (a domain's base, an array's element, a composite's attributes).
    /// A composite that no column used when the catalog was read has no
    /// attributes loaded, so a new column of it asks for a reload.
    pub fn knows(&self, oid: u32) -> bool {
        self.knows_within(oid, 0)
    }

    fn knows_within(&self, oid: u32, depth: usize) -> bool {
        if depth > MAX_DOMAIN_DEPTH * 4 {
            // A corrupt catalog: reloading would not help.
            return true;
        }
        let Some(t) = self.types.get(&oid) else {
            return oid < 10_000;
        };
        if t.kind == b'd' && t.base != 0 {
            self.knows_within(t.base, depth + 1)
        } else if t.is_array && t.element != 0 {
            self.knows_within(t.element, depth + 1)
        } else if t.kind == b'c' {
            t.fields.as_ref().is_some_and(|fields| {
                fields
                    .iter()
                    .all(|f| self.knows_within(f.type_oid, depth + 1))
            })
        } else {
            true
        }
    }

    /// Whether values converted since the last call showed this catalog to
    /// be out of date for a change committed at `commit_lsn`: a composite
    /// value did not fit its type here, and the change was committed after
    /// the catalog was read, so the type was altered since (an ALTER TYPE
    /// while walhook runs) and a new catalog will fit. Values committed
    /// before the catalog was read (catching up after an ALTER TYPE) do not
    /// count: no catalog read now would fit them.
    pub fn outdated_by(&self, commit_lsn: Lsn) -> bool {
        self.stale.swap(false, Ordering::Relaxed)
            && self.loaded_at.is_some_and(|loaded| commit_lsn >= loaded)
    }

    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn marked_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    pub fn category(&self, oid: u32) -> JsonCategory {
        // Domains render as their base type.
        let mut oid = oid;
        for _ in 0..MAX_DOMAIN_DEPTH {
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
        let Some(t) = self.types.get(&oid) else {
            return JsonCategory::Text;
        };
        // `typelem` alone also marks fixed-length types such as `name` and
        // `point`; only a true array renders as one.
        if t.is_array && t.element != 0 {
            return JsonCategory::Array {
                element: t.element,
                delimiter: t.delimiter,
            };
        }
        if t.kind == b'c' {
            return JsonCategory::Composite { oid };
        }
        match &t.json_cast {
            Some(function) if oid >= FIRST_NORMAL_OBJECT_ID => {
                if function == "hstore_to_json" {
                    JsonCategory::Hstore
                } else {
                    JsonCategory::JsonCast { oid }
                }
            }
            _ => JsonCategory::Text,
        }
    }

    /// The attributes of composite type `oid`, when loaded.
    pub(crate) fn fields(&self, oid: u32) -> Option<&[Field]> {
        self.types.get(&oid)?.fields.as_deref()
    }

    /// The type's SQL name for log messages (its OID when unknown).
    pub(crate) fn type_name(&self, oid: u32) -> String {
        self.types
            .get(&oid)
            .and_then(|t| t.name.clone())
            .unwrap_or_else(|| format!("type oid {oid}"))
    }

    /// Add a composite type (tests without a server).
    #[cfg(test)]
    pub(crate) fn with_composite(mut self, oid: u32, name: &str, fields: &[(&str, u32)]) -> Self {
        self.types.insert(
            oid,
            TypeInfo {
                kind: b'c',
                is_array: false,
                element: 0,
                delimiter: b',',
                base: 0,
                name: Some(name.to_owned()),
                fields: Some(
                    fields
                        .iter()
                        .map(|(n, t)| Field {
                            name: (*n).to_owned(),
                            type_oid: *t,
                        })
                        .collect(),
                ),
                json_cast: None,
            },
        );
        self
    }

    /// Add an array type (tests without a server).
    #[cfg(test)]
    pub(crate) fn with_array(mut self, oid: u32, element: u32) -> Self {
        self.types.insert(oid, TypeInfo::array(element, b','));
        self
    }

    /// Add a domain (tests without a server).
    #[cfg(test)]
    pub(crate) fn with_domain(mut self, oid: u32, base: u32) -> Self {
        self.types.insert(
            oid,
            TypeInfo {
                kind: b'd',
                is_array: false,
                element: 0,
                delimiter: b',',
                base,
                name: None,
                fields: None,
                json_cast: None,
            },
        );
        self
    }

    /// Add a type with a function cast to json (tests without a server).
    #[cfg(test)]
    pub(crate) fn with_json_cast(mut self, oid: u32, function: &str) -> Self {
        self.types.insert(
            oid,
            TypeInfo {
                kind: b'b',
                is_array: false,
                element: 0,
                delimiter: b',',
                base: 0,
                name: None,
                fields: None,
                json_cast: Some(function.to_owned()),
            },
        );
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_json_categorize_type() {
        let cat = TypeCatalog::builtin()
            .with_domain(20_000, INT4)
            .with_domain(20_001, 20_000)
            .with_domain(20_002, 1009)
            .with_composite(20_003, "pair", &[("a", INT4), ("b", 25)])
            .with_domain(20_004, 20_003)
            .with_json_cast(20_005, "hstore_to_json")
            .with_json_cast(20_006, "thing_to_json")
            .with_json_cast(2_000, "builtin_to_json");
        assert_eq!(cat.category(20_001), JsonCategory::Number);
        assert_eq!(
            cat.category(20_002),
            JsonCategory::Array {
                element: 25,
                delimiter: b','
            }
        );
        assert_eq!(
            cat.category(20_004),
            JsonCategory::Composite { oid: 20_003 }
        );
        assert_eq!(cat.category(20_005), JsonCategory::Hstore);
        assert_eq!(cat.category(20_006), JsonCategory::JsonCast { oid: 20_006 });
        // Casts of built-in types are ignored, as by `to_jsonb()`.
        assert_eq!(cat.category(2_000), JsonCategory::Text);
        assert_eq!(
            cat.category(INT2VECTOR),
            JsonCategory::Array {
                element: INT2,
                delimiter: b','
            }
        );
        // `name` and `point` have a typelem but are not arrays.
        assert_eq!(cat.category(19), JsonCategory::Text);
        assert_eq!(cat.category(600), JsonCategory::Text);
        assert_eq!(cat.fields(20_003).map(<[Field]>::len), Some(2));
        assert_eq!(cat.fields(INT4), None);
    }

    #[test]
    fn knows_needs_the_parts_of_a_type() {
        let mut cat = TypeCatalog::builtin()
            .with_composite(20_000, "pair", &[("a", INT4), ("b", 20_001)])
            .with_composite(20_001, "inner", &[("x", 25)])
            .with_array(20_002, 20_000)
            .with_domain(20_003, 20_002);
        assert!(cat.knows(INT4));
        assert!(cat.knows(20_003));
        assert!(!cat.knows(30_000));
        // A composite whose attributes were not loaded is not known.
        cat.types.get_mut(&20_001).unwrap().fields = None;
        assert!(!cat.knows(20_001));
        assert!(!cat.knows(20_003));
        cat.mark_stale();
        // Without a load position (builtin) nothing is known to be newer.
        assert!(!cat.outdated_by(Lsn(u64::MAX)));
        cat.loaded_at = Some(Lsn(100));
        assert!(!cat.outdated_by(Lsn(200)), "the flag was taken");
        cat.mark_stale();
        assert!(!cat.outdated_by(Lsn(99)), "older than the catalog");
        cat.mark_stale();
        assert!(cat.outdated_by(Lsn(100)));
        assert!(!cat.outdated_by(Lsn(100)));
    }
}
