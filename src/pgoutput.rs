//! Decoder for PostgreSQL's `pgoutput` logical replication messages,
//! protocol version 1 (no streaming, no two-phase commit).
//!
//! Each XLogData payload of the replication stream carries exactly one
//! message; [`decode`] turns one payload into one [`Message`]. The format is
//! described in the PostgreSQL manual, "Logical Replication Message Formats".
//!
//! Why this is hand-written: it is the small, central piece every row change
//! passes through, and no well-kept crate decodes pgoutput into exact owned
//! types whose column values are zero-copy [`Bytes`] slices of the payload.
//! Owning it keeps the types exact and lets us fuzz it: the decoder never
//! panics, rejects truncated and over-long input, and never allocates more
//! than the payload could hold, whatever the length fields claim.
//!
//! The layout follows rust-postgres' protocol code: a private [`Reader`]
//! with one method per wire type, and one small function per message.

use std::fmt;

use bytes::Bytes;
pub use pgwire_replication::Lsn;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
}

impl Message {
    /// The message type's name as the PostgreSQL manual spells it, for logs
    /// and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::Message(_) => "Message",
        }
    }
}

/// Start of a transaction (`'B'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

/// End of a transaction (`'C'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused by PostgreSQL (always 0); kept so nothing is lost.
    pub flags: u8,
    /// LSN of the commit record; equals the matching [`Begin::final_lsn`].
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: where to resume after this transaction.
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// The transaction was replayed from a replication origin (`'O'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// A table's schema (`'R'`), sent before the first change to it in a session
/// and again after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// Generated columns are not sent, so this can be shorter than the table.
    pub columns: Vec<Column>,
}

/// `pg_class.relreplident`: which old values UPDATE and DELETE carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key.
    Default,
    /// `'n'`: nothing.
    Nothing,
    /// `'f'`: all columns.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Flags bit 1: the column is part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `pg_attribute.atttypmod`; -1 when the type has none.
    pub type_modifier: i32,
}

/// A non-built-in data type used by a relation (`'Y'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

/// `'I'`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation_oid: u32,
    pub new: TupleData,
}

/// `'U'`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation_oid: u32,
    /// Present only when the replica identity is FULL, or when a key
    /// column changed.
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

/// The old row of an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: only the key columns are set; the others are [`TupleValue::Null`].
    Key(TupleData),
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

/// `'D'`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation_oid: u32,
    pub old: OldTuple,
}

/// `'T'`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_oids: Vec<u32>,
}

/// A message from `pg_logical_emit_message` (`'M'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Transactional messages arrive between Begin and Commit; the others
    /// arrive on their own, even if the emitting transaction rolls back.
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    /// A slice of the payload; arbitrary bytes, not necessarily UTF-8.
    pub content: Bytes,
}

/// The column values of one row, in the order of the [`Relation`]'s columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData(pub Vec<TupleValue>);

/// One column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `'n'`
    Null,
    /// `'u'`: a TOASTed value the change did not touch; its value is not sent.
    UnchangedToast,
    /// `'t'`: the type's text output, a slice of the payload.
    Text(Bytes),
    /// `'b'`: the type's binary send output (only with the `binary` option),
    /// a slice of the payload.
    Binary(Bytes),
}

/// Why a payload is not a valid pgoutput message.
///
/// `message` is the message type's name ("Insert"); `field` describes what
/// was being read ("the tuple's column count").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message type {}", Tag(*.0))]
    UnknownMessage(u8),
    #[error("pgoutput {message} message truncated while reading {field}")]
    Truncated {
        message: &'static str,
        field: &'static str,
    },
    #[error("pgoutput {message} message has {count} trailing bytes")]
    TrailingBytes { message: &'static str, count: usize },
    #[error("pgoutput {message} message has invalid UTF-8 in {field}")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
    },
    #[error("pgoutput {message} message has a negative value ({value}) for {field}")]
    NegativeLength {
        message: &'static str,
        field: &'static str,
        value: i32,
    },
    #[error("pgoutput Relation message has unknown replica identity {}", Tag(*.0))]
    UnknownReplicaIdentity(u8),
    #[error(
        "pgoutput {message} message has unknown tuple value kind {} \
         (expected 'n', 'u', 't' or 'b')",
        Tag(*.kind)
    )]
    UnknownTupleKind { message: &'static str, kind: u8 },
    #[error(
        "pgoutput {message} message has unknown old tuple kind {} (expected 'K' or 'O')",
        Tag(*.kind)
    )]
    UnknownOldTupleKind { message: &'static str, kind: u8 },
    #[error("pgoutput {message} message has {} where the new tuple marker 'N' belongs", Tag(*.found))]
    ExpectedNewTuple { message: &'static str, found: u8 },
}

/// Shows a tag byte as `'B' (0x42)`, or just `0x00` when it is not printable.
struct Tag(u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02X})", char::from(self.0), self.0)
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

/// Decode one pgoutput message (one XLogData payload).
///
/// The whole payload must be consumed; `Text`, `Binary` and `content`
/// values are slices of `buf`, not copies.
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let (&tag, _) = buf.split_first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    let mut r = Reader {
        buf,
        pos: 1,
        message,
    };
    let decoded = match tag {
        b'B' => Message::Begin(begin(&mut r)?),
        b'C' => Message::Commit(commit(&mut r)?),
        b'O' => Message::Origin(origin(&mut r)?),
        b'R' => Message::Relation(relation(&mut r)?),
        b'Y' => Message::Type(type_message(&mut r)?),
        b'I' => Message::Insert(insert(&mut r)?),
        b'U' => Message::Update(update(&mut r)?),
        b'D' => Message::Delete(delete(&mut r)?),
        b'T' => Message::Truncate(truncate(&mut r)?),
        // Only 'M' is left: the tag was checked above.
        _ => Message::Message(logical_message(&mut r)?),
    };
    r.finish()?;
    Ok(decoded)
}

fn begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn("the final LSN")?,
        commit_time: r.i64("the commit timestamp")?,
        xid: r.u32("the xid")?,
    })
}

fn commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("the flags")?,
        commit_lsn: r.lsn("the commit LSN")?,
        end_lsn: r.lsn("the end LSN")?,
        commit_time: r.i64("the commit timestamp")?,
    })
}

fn origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.lsn("the origin's commit LSN")?,
        name: r.cstr("the origin name")?,
    })
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32("the relation OID")?;
    let namespace = r.cstr("the namespace")?;
    let name = r.cstr("the relation name")?;
    let replica_identity = match r.u8("the replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(DecodeError::UnknownReplicaIdentity(other)),
    };
    let count = r.count16("the column count")?;
    // A column takes at least 10 bytes: flags, an empty name, OID, typmod.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("a column's flags")?;
        columns.push(Column {
            is_key: flags & 1 != 0,
            name: r.cstr("a column name")?,
            type_oid: r.u32("a column's type OID")?,
            type_modifier: r.i32("a column's type modifier")?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_message(r: &mut Reader<'_>) -> Result<TypeMessage, DecodeError> {
    Ok(TypeMessage {
        oid: r.u32("the type OID")?,
        namespace: r.cstr("the namespace")?,
        name: r.cstr("the type name")?,
    })
}

fn insert(r: &mut Reader<'_>) -> Result<Insert, DecodeError> {
    let relation_oid = r.u32("the relation OID")?;
    let marker = r.u8("the new tuple marker")?;
    new_marker(r, marker)?;
    Ok(Insert {
        relation_oid,
        new: tuple(r)?,
    })
}

fn update(r: &mut Reader<'_>) -> Result<Update, DecodeError> {
    let relation_oid = r.u32("the relation OID")?;
    // The old tuple is optional, so the next byte is 'K', 'O' or already 'N'.
    let marker = r.u8("the tuple marker")?;
    let (old, marker) = match marker {
        b'K' | b'O' => {
            let old = old_tuple(r, marker)?;
            (Some(old), r.u8("the new tuple marker")?)
        }
        b'N' => (None, marker),
        other => {
            return Err(DecodeError::UnknownOldTupleKind {
                message: r.message,
                kind: other,
            })
        }
    };
    new_marker(r, marker)?;
    Ok(Update {
        relation_oid,
        old,
        new: tuple(r)?,
    })
}

fn delete(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
    let relation_oid = r.u32("the relation OID")?;
    let kind = r.u8("the old tuple kind")?;
    Ok(Delete {
        relation_oid,
        old: old_tuple(r, kind)?,
    })
}

fn truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count = r.count32("the relation count")?;
    let options = r.u8("the options")?;
    let mut relation_oids = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relation_oids.push(r.u32("a relation OID")?);
    }
    Ok(Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_oids,
    })
}

fn logical_message(r: &mut Reader<'_>) -> Result<LogicalMessage, DecodeError> {
    // Protocol version 1 has no xid here (that is for streamed transactions).
    // Only bit 0 of the flags is defined.
    let flags = r.u8("the flags")?;
    let lsn = r.lsn("the message LSN")?;
    let prefix = r.cstr("the prefix")?;
    let len = r.count32("the content length")?;
    Ok(LogicalMessage {
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content: r.bytes(len, "the content")?,
    })
}

fn new_marker(r: &Reader<'_>, marker: u8) -> Result<(), DecodeError> {
    if marker == b'N' {
        Ok(())
    } else {
        Err(DecodeError::ExpectedNewTuple {
            message: r.message,
            found: marker,
        })
    }
}

fn old_tuple(r: &mut Reader<'_>, kind: u8) -> Result<OldTuple, DecodeError> {
    match kind {
        b'K' => Ok(OldTuple::Key(tuple(r)?)),
        b'O' => Ok(OldTuple::Full(tuple(r)?)),
        other => Err(DecodeError::UnknownOldTupleKind {
            message: r.message,
            kind: other,
        }),
    }
}

fn tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = r.count16("the tuple's column count")?;
    // Each value takes at least its one kind byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let value = match r.u8("a tuple value's kind")? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' => {
                let len = r.count32("a text value's length")?;
                TupleValue::Text(r.bytes(len, "a text value")?)
            }
            b'b' => {
                let len = r.count32("a binary value's length")?;
                TupleValue::Binary(r.bytes(len, "a binary value")?)
            }
            other => {
                return Err(DecodeError::UnknownTupleKind {
                    message: r.message,
                    kind: other,
                })
            }
        };
        values.push(value);
    }
    Ok(TupleData(values))
}

/// A cursor over one message. Every read checks the remaining length and
/// names the message and field in its error.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Advances past `n` bytes and returns their range in `buf`.
    fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<std::ops::Range<usize>, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let range = self.take(N, field)?;
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[range]);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    /// OIDs and xids are unsigned on the server; the wire just has 4 bytes.
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.array(field).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// An Int16 count; the server never sends a negative one.
    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i16(field)?;
        usize::try_from(value).map_err(|_| self.negative(field, value.into()))
    }

    /// An Int32 count or length; the server never sends a negative one.
    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| self.negative(field, value))
    }

    fn negative(&self, field: &'static str, value: i32) -> DecodeError {
        DecodeError::NegativeLength {
            message: self.message,
            field,
            value,
        }
    }

    /// `len` bytes as a zero-copy slice of the payload.
    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let range = self.take(len, field)?;
        Ok(self.buf.slice(range))
    }

    /// A NUL-terminated string. The session uses client_encoding UTF8, so
    /// anything else is corruption rather than a legacy encoding.
    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
            });
        };
        let range = self.take(len + 1, field)?;
        let text = &self.buf[range.start..range.end - 1];
        match std::str::from_utf8(text) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 {
                message: self.message,
                field,
            }),
        }
    }

    /// A message must be consumed exactly: leftovers mean we misread it.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Hand-assembles a message, field by field, in wire order.
    struct Wire(Vec<u8>);

    impl Wire {
        fn new(tag: u8) -> Self {
            Wire(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn str(self, v: &str) -> Self {
            self.raw(v.as_bytes()).u8(0)
        }
        /// Int32 length, then the bytes.
        fn counted(self, v: &[u8]) -> Self {
            let len = i32::try_from(v.len()).expect("test value fits");
            self.i32(len).raw(v)
        }
        /// A 't' or 'b' tuple value: kind, Int32 length, bytes.
        fn value(self, kind: u8, v: &[u8]) -> Self {
            self.u8(kind).counted(v)
        }
        fn build(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn text(v: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn ok(buf: Bytes) -> Message {
        match decode(&buf) {
            Ok(m) => m,
            Err(e) => panic!("decode failed: {e}"),
        }
    }

    fn err(buf: Bytes) -> DecodeError {
        match decode(&buf) {
            Ok(m) => panic!("decoded {m:?}, expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn begin() {
        let buf = Wire::new(b'B')
            .u64(0x16_B374_D848)
            .i64(757_382_400_000_000)
            .u32(0xFFFF_FFF0)
            .build();
        let Message::Begin(b) = ok(buf) else {
            panic!("not a Begin")
        };
        assert_eq!(b.final_lsn, Lsn(0x16_B374_D848));
        assert_eq!(b.final_lsn.to_string(), "16/B374D848");
        assert_eq!(b.commit_time, 757_382_400_000_000);
        assert_eq!(b.xid, 0xFFFF_FFF0);
    }

    #[test]
    fn commit() {
        let buf = Wire::new(b'C').u8(0).u64(100).u64(148).i64(-1).build();
        assert_eq!(
            ok(buf),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(100),
                end_lsn: Lsn(148),
                commit_time: -1,
            })
        );
    }

    #[test]
    fn origin() {
        let buf = Wire::new(b'O').u64(0xABCDEF).str("upstream").build();
        assert_eq!(
            ok(buf),
            Message::Origin(Origin {
                commit_lsn: Lsn(0xABCDEF),
                name: "upstream".into(),
            })
        );
    }

    #[test]
    fn relation() {
        for (byte, identity) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let buf = Wire::new(b'R')
                .u32(16_395)
                .str("public")
                .str("account")
                .u8(byte)
                .i16(2)
                .u8(1)
                .str("id")
                .u32(23)
                .i32(-1)
                .u8(0)
                .str("émail")
                .u32(1043)
                .i32(68)
                .build();
            assert_eq!(
                ok(buf),
                Message::Relation(Relation {
                    oid: 16_395,
                    namespace: "public".into(),
                    name: "account".into(),
                    replica_identity: identity,
                    columns: vec![
                        Column {
                            is_key: true,
                            name: "id".into(),
                            type_oid: 23,
                            type_modifier: -1,
                        },
                        Column {
                            is_key: false,
                            name: "émail".into(),
                            type_oid: 1043,
                            type_modifier: 68,
                        },
                    ],
                })
            );
        }
    }

    #[test]
    fn relation_without_columns_in_pg_catalog() {
        let buf = Wire::new(b'R')
            .u32(1)
            .str("")
            .str("t")
            .u8(b'n')
            .i16(0)
            .build();
        let Message::Relation(r) = ok(buf) else {
            panic!("not a Relation")
        };
        assert_eq!(r.namespace, "");
        assert!(r.columns.is_empty());
    }

    #[test]
    fn type_message() {
        let buf = Wire::new(b'Y')
            .u32(16_389)
            .str("public")
            .str("mood")
            .build();
        assert_eq!(
            ok(buf),
            Message::Type(TypeMessage {
                oid: 16_389,
                namespace: "public".into(),
                name: "mood".into(),
            })
        );
    }

    #[test]
    fn insert_with_every_value_kind() {
        let buf = Wire::new(b'I')
            .u32(7)
            .u8(b'N')
            .i16(5)
            .u8(b'n')
            .u8(b'u')
            .value(b't', b"42")
            .value(b'b', &[0xDE, 0xAD])
            .value(b't', b"")
            .build();
        let decoded = ok(buf.clone());
        assert_eq!(
            decoded,
            Message::Insert(Insert {
                relation_oid: 7,
                new: TupleData(vec![
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    text("42"),
                    TupleValue::Binary(Bytes::from_static(&[0xDE, 0xAD])),
                    text(""),
                ]),
            })
        );
        // Values are slices of the payload, not copies.
        let Message::Insert(insert) = decoded else {
            unreachable!()
        };
        let TupleValue::Text(v) = &insert.new.0[2] else {
            panic!("not text")
        };
        let offset = 1 + 4 + 1 + 2 + 1 + 1 + 1 + 4;
        assert_eq!(v.as_ptr(), buf[offset..].as_ptr());
    }

    #[test]
    fn update_without_old_tuple() {
        let buf = Wire::new(b'U')
            .u32(7)
            .u8(b'N')
            .i16(1)
            .value(b't', b"a")
            .build();
        assert_eq!(
            ok(buf),
            Message::Update(Update {
                relation_oid: 7,
                old: None,
                new: TupleData(vec![text("a")]),
            })
        );
    }

    #[test]
    fn update_with_key_and_full_old_tuples() {
        for (kind, wrap) in [
            (b'K', OldTuple::Key as fn(TupleData) -> OldTuple),
            (b'O', OldTuple::Full),
        ] {
            let buf = Wire::new(b'U')
                .u32(7)
                .u8(kind)
                .i16(2)
                .value(b't', b"1")
                .u8(b'n')
                .u8(b'N')
                .i16(2)
                .value(b't', b"2")
                .u8(b'u')
                .build();
            assert_eq!(
                ok(buf),
                Message::Update(Update {
                    relation_oid: 7,
                    old: Some(wrap(TupleData(vec![text("1"), TupleValue::Null]))),
                    new: TupleData(vec![text("2"), TupleValue::UnchangedToast]),
                })
            );
        }
    }

    #[test]
    fn delete_with_key_and_full_old_tuples() {
        let buf = Wire::new(b'D')
            .u32(9)
            .u8(b'K')
            .i16(1)
            .value(b't', b"1")
            .build();
        assert_eq!(
            ok(buf),
            Message::Delete(Delete {
                relation_oid: 9,
                old: OldTuple::Key(TupleData(vec![text("1")])),
            })
        );
        let buf = Wire::new(b'D').u32(9).u8(b'O').i16(1).u8(b'n').build();
        assert_eq!(
            ok(buf),
            Message::Delete(Delete {
                relation_oid: 9,
                old: OldTuple::Full(TupleData(vec![TupleValue::Null])),
            })
        );
    }

    #[test]
    fn truncate_options() {
        for (options, cascade, restart_identity) in [
            (0, false, false),
            (1, true, false),
            (2, false, true),
            (3, true, true),
        ] {
            let buf = Wire::new(b'T').i32(2).u8(options).u32(10).u32(11).build();
            assert_eq!(
                ok(buf),
                Message::Truncate(Truncate {
                    cascade,
                    restart_identity,
                    relation_oids: vec![10, 11],
                })
            );
        }
    }

    #[test]
    fn logical_message() {
        let buf = Wire::new(b'M')
            .u8(1)
            .u64(0x1_0000_0000)
            .str("walhook-test")
            .i32(5)
            .raw(b"hello")
            .build();
        let decoded = ok(buf.clone());
        assert_eq!(
            decoded,
            Message::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(0x1_0000_0000),
                prefix: "walhook-test".into(),
                content: Bytes::from_static(b"hello"),
            })
        );
        let Message::Message(m) = decoded else {
            unreachable!()
        };
        assert_eq!(m.content.as_ptr(), buf[buf.len() - 5..].as_ptr());

        // Non-transactional, with content that is not UTF-8.
        let buf = Wire::new(b'M')
            .u8(0)
            .u64(1)
            .str("p")
            .i32(2)
            .raw(&[0, 0xFF])
            .build();
        let Message::Message(m) = ok(buf) else {
            panic!("not a Message")
        };
        assert!(!m.transactional);
        assert_eq!(&m.content[..], &[0, 0xFF]);
    }

    #[test]
    fn names() {
        let buf = Wire::new(b'T').i32(0).u8(0).build();
        assert_eq!(ok(buf).name(), "Truncate");
    }

    #[test]
    fn empty() {
        assert_eq!(err(Bytes::new()), DecodeError::Empty);
        assert_eq!(DecodeError::Empty.to_string(), "empty pgoutput message");
    }

    #[test]
    fn unknown_message() {
        let e = err(Bytes::from_static(b"Zabc"));
        assert_eq!(e, DecodeError::UnknownMessage(b'Z'));
        assert_eq!(e.to_string(), "unknown pgoutput message type 'Z' (0x5A)");
        // Streaming and two-phase messages are protocol version 2 and later.
        assert_eq!(
            err(Bytes::from_static(b"S")),
            DecodeError::UnknownMessage(b'S')
        );
        assert_eq!(
            err(Bytes::from_static(&[0])).to_string(),
            "unknown pgoutput message type 0x00"
        );
    }

    #[test]
    fn truncated() {
        let e = err(Wire::new(b'I').u32(7).u8(b'N').build());
        assert_eq!(
            e,
            DecodeError::Truncated {
                message: "Insert",
                field: "the tuple's column count",
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Insert message truncated while reading the tuple's column count"
        );
        assert_eq!(
            err(Wire::new(b'B').u64(1).i64(2).u8(0).build()),
            DecodeError::Truncated {
                message: "Begin",
                field: "the xid",
            }
        );
        // A string without its terminating NUL.
        assert_eq!(
            err(Wire::new(b'O').u64(1).raw(b"name").build()),
            DecodeError::Truncated {
                message: "Origin",
                field: "the origin name",
            }
        );
    }

    #[test]
    fn length_fields_larger_than_the_payload() {
        // These must fail cleanly, without trying to allocate what they claim.
        assert_eq!(
            err(Wire::new(b'I')
                .u32(7)
                .u8(b'N')
                .i16(i16::MAX)
                .u8(b'n')
                .build()),
            DecodeError::Truncated {
                message: "Insert",
                field: "a tuple value's kind",
            }
        );
        assert_eq!(
            err(Wire::new(b'I')
                .u32(7)
                .u8(b'N')
                .i16(1)
                .u8(b'b')
                .i32(i32::MAX)
                .raw(b"x")
                .build()),
            DecodeError::Truncated {
                message: "Insert",
                field: "a binary value",
            }
        );
        assert_eq!(
            err(Wire::new(b'T').i32(i32::MAX).u8(0).u32(1).build()),
            DecodeError::Truncated {
                message: "Truncate",
                field: "a relation OID",
            }
        );
        assert_eq!(
            err(Wire::new(b'R')
                .u32(1)
                .str("")
                .str("t")
                .u8(b'd')
                .i16(i16::MAX)
                .build()),
            DecodeError::Truncated {
                message: "Relation",
                field: "a column's flags",
            }
        );
        assert_eq!(
            err(Wire::new(b'M')
                .u8(1)
                .u64(1)
                .str("p")
                .i32(6)
                .raw(b"hello")
                .build()),
            DecodeError::Truncated {
                message: "Message",
                field: "the content",
            }
        );
    }

    #[test]
    fn negative_lengths() {
        let e = err(Wire::new(b'D').u32(7).u8(b'K').i16(-1).build());
        assert_eq!(
            e,
            DecodeError::NegativeLength {
                message: "Delete",
                field: "the tuple's column count",
                value: -1,
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Delete message has a negative value (-1) for the tuple's column count"
        );
        assert_eq!(
            err(Wire::new(b'I')
                .u32(7)
                .u8(b'N')
                .i16(1)
                .u8(b't')
                .i32(i32::MIN)
                .build()),
            DecodeError::NegativeLength {
                message: "Insert",
                field: "a text value's length",
                value: i32::MIN,
            }
        );
        assert_eq!(
            err(Wire::new(b'T').i32(-2).u8(0).build()),
            DecodeError::NegativeLength {
                message: "Truncate",
                field: "the relation count",
                value: -2,
            }
        );
    }

    #[test]
    fn trailing_bytes() {
        let e = err(Wire::new(b'B').u64(1).i64(2).u32(3).raw(b"xy").build());
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                message: "Begin",
                count: 2,
            }
        );
        assert_eq!(e.to_string(), "pgoutput Begin message has 2 trailing bytes");
    }

    #[test]
    fn invalid_utf8() {
        let e = err(Wire::new(b'R')
            .u32(1)
            .str("public")
            .raw(&[0xC3, 0x28, 0])
            .u8(b'd')
            .i16(0)
            .build());
        assert_eq!(
            e,
            DecodeError::InvalidUtf8 {
                message: "Relation",
                field: "the relation name",
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Relation message has invalid UTF-8 in the relation name"
        );
        assert_eq!(
            err(Wire::new(b'M').u8(0).u64(1).raw(&[0xFF, 0]).i32(0).build()),
            DecodeError::InvalidUtf8 {
                message: "Message",
                field: "the prefix",
            }
        );
    }

    #[test]
    fn unknown_replica_identity() {
        let e = err(Wire::new(b'R')
            .u32(1)
            .str("s")
            .str("t")
            .u8(b'x')
            .i16(0)
            .build());
        assert_eq!(e, DecodeError::UnknownReplicaIdentity(b'x'));
        assert_eq!(
            e.to_string(),
            "pgoutput Relation message has unknown replica identity 'x' (0x78)"
        );
    }

    #[test]
    fn unknown_tuple_kind() {
        let e = err(Wire::new(b'I').u32(7).u8(b'N').i16(1).u8(b'z').build());
        assert_eq!(
            e,
            DecodeError::UnknownTupleKind {
                message: "Insert",
                kind: b'z',
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Insert message has unknown tuple value kind 'z' (0x7A) \
             (expected 'n', 'u', 't' or 'b')"
        );
    }

    #[test]
    fn unknown_old_tuple_kind() {
        let e = err(Wire::new(b'D').u32(7).u8(b'N').i16(0).build());
        assert_eq!(
            e,
            DecodeError::UnknownOldTupleKind {
                message: "Delete",
                kind: b'N',
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Delete message has unknown old tuple kind 'N' (0x4E) (expected 'K' or 'O')"
        );
        assert_eq!(
            err(Wire::new(b'U').u32(7).u8(b'X').i16(0).build()),
            DecodeError::UnknownOldTupleKind {
                message: "Update",
                kind: b'X',
            }
        );
    }

    #[test]
    fn expected_new_tuple() {
        let e = err(Wire::new(b'I').u32(7).u8(b'K').i16(0).build());
        assert_eq!(
            e,
            DecodeError::ExpectedNewTuple {
                message: "Insert",
                found: b'K',
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Insert message has 'K' (0x4B) where the new tuple marker 'N' belongs"
        );
        // After an old tuple, an Update must continue with 'N'.
        assert_eq!(
            err(Wire::new(b'U')
                .u32(7)
                .u8(b'K')
                .i16(0)
                .u8(b'K')
                .i16(0)
                .build()),
            DecodeError::ExpectedNewTuple {
                message: "Update",
                found: b'K',
            }
        );
    }

    /// Encodes a message the way PostgreSQL does, for round-trip properties.
    fn encode(message: &Message) -> Bytes {
        fn tuple(mut w: Wire, t: &TupleData) -> Wire {
            w = w.i16(i16::try_from(t.0.len()).expect("test tuple fits"));
            for v in &t.0 {
                w = match v {
                    TupleValue::Null => w.u8(b'n'),
                    TupleValue::UnchangedToast => w.u8(b'u'),
                    TupleValue::Text(b) => w.value(b't', b),
                    TupleValue::Binary(b) => w.value(b'b', b),
                };
            }
            w
        }
        fn old(w: Wire, o: &OldTuple) -> Wire {
            match o {
                OldTuple::Key(t) => tuple(w.u8(b'K'), t),
                OldTuple::Full(t) => tuple(w.u8(b'O'), t),
            }
        }
        match message {
            Message::Begin(b) => Wire::new(b'B')
                .u64(b.final_lsn.0)
                .i64(b.commit_time)
                .u32(b.xid),
            Message::Commit(c) => Wire::new(b'C')
                .u8(c.flags)
                .u64(c.commit_lsn.0)
                .u64(c.end_lsn.0)
                .i64(c.commit_time),
            Message::Origin(o) => Wire::new(b'O').u64(o.commit_lsn.0).str(&o.name),
            Message::Relation(r) => {
                let identity = match r.replica_identity {
                    ReplicaIdentity::Default => b'd',
                    ReplicaIdentity::Nothing => b'n',
                    ReplicaIdentity::Full => b'f',
                    ReplicaIdentity::Index => b'i',
                };
                let mut w = Wire::new(b'R')
                    .u32(r.oid)
                    .str(&r.namespace)
                    .str(&r.name)
                    .u8(identity)
                    .i16(i16::try_from(r.columns.len()).expect("test relation fits"));
                for c in &r.columns {
                    w = w
                        .u8(u8::from(c.is_key))
                        .str(&c.name)
                        .u32(c.type_oid)
                        .i32(c.type_modifier);
                }
                w
            }
            Message::Type(t) => Wire::new(b'Y').u32(t.oid).str(&t.namespace).str(&t.name),
            Message::Insert(i) => tuple(Wire::new(b'I').u32(i.relation_oid).u8(b'N'), &i.new),
            Message::Update(u) => {
                let mut w = Wire::new(b'U').u32(u.relation_oid);
                if let Some(o) = &u.old {
                    w = old(w, o);
                }
                tuple(w.u8(b'N'), &u.new)
            }
            Message::Delete(d) => old(Wire::new(b'D').u32(d.relation_oid), &d.old),
            Message::Truncate(t) => {
                let options = u8::from(t.cascade) | u8::from(t.restart_identity) << 1;
                let mut w = Wire::new(b'T')
                    .i32(i32::try_from(t.relation_oids.len()).expect("test list fits"))
                    .u8(options);
                for oid in &t.relation_oids {
                    w = w.u32(*oid);
                }
                w
            }
            Message::Message(m) => Wire::new(b'M')
                .u8(u8::from(m.transactional))
                .u64(m.lsn.0)
                .str(&m.prefix)
                .counted(&m.content),
        }
        .build()
    }

    fn arb_string() -> impl Strategy<Value = String> {
        // pgoutput strings are NUL-terminated, so they cannot contain NUL.
        any::<String>().prop_map(|s| s.replace('\0', ""))
    }

    fn arb_lsn() -> impl Strategy<Value = Lsn> {
        any::<u64>().prop_map(Lsn)
    }

    fn arb_tuple() -> impl Strategy<Value = TupleData> {
        let value = prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            vec(any::<u8>(), 0..24).prop_map(|v| TupleValue::Text(v.into())),
            vec(any::<u8>(), 0..24).prop_map(|v| TupleValue::Binary(v.into())),
        ];
        vec(value, 0..8).prop_map(TupleData)
    }

    fn arb_old() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            arb_tuple().prop_map(OldTuple::Key),
            arb_tuple().prop_map(OldTuple::Full),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let identity = prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ];
        let column = (any::<bool>(), arb_string(), any::<u32>(), any::<i32>()).prop_map(
            |(is_key, name, type_oid, type_modifier)| Column {
                is_key,
                name,
                type_oid,
                type_modifier,
            },
        );
        prop_oneof![
            (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
                Message::Begin(Begin {
                    final_lsn,
                    commit_time,
                    xid,
                })
            }),
            (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            ),
            (arb_lsn(), arb_string())
                .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
            (
                any::<u32>(),
                arb_string(),
                arb_string(),
                identity,
                vec(column, 0..6)
            )
                .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                    Message::Relation(Relation {
                        oid,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), arb_string(), arb_string()).prop_map(|(oid, namespace, name)| {
                Message::Type(TypeMessage {
                    oid,
                    namespace,
                    name,
                })
            }),
            (any::<u32>(), arb_tuple())
                .prop_map(|(relation_oid, new)| Message::Insert(Insert { relation_oid, new })),
            (any::<u32>(), proptest::option::of(arb_old()), arb_tuple()).prop_map(
                |(relation_oid, old, new)| Message::Update(Update {
                    relation_oid,
                    old,
                    new,
                })
            ),
            (any::<u32>(), arb_old())
                .prop_map(|(relation_oid, old)| Message::Delete(Delete { relation_oid, old })),
            (any::<bool>(), any::<bool>(), vec(any::<u32>(), 0..8)).prop_map(
                |(cascade, restart_identity, relation_oids)| Message::Truncate(Truncate {
                    cascade,
                    restart_identity,
                    relation_oids,
                })
            ),
            (
                any::<bool>(),
                arb_lsn(),
                arb_string(),
                vec(any::<u8>(), 0..32)
            )
                .prop_map(|(transactional, lsn, prefix, content)| Message::Message(
                    LogicalMessage {
                        transactional,
                        lsn,
                        prefix,
                        content: content.into(),
                    }
                )),
        ]
    }

    const TAGS: &[u8] = b"BCORYIUDTM";

    /// One hand-built valid message of each kind, deep enough to reach
    /// every reader.
    fn samples() -> Vec<Bytes> {
        vec![
            Wire::new(b'B').u64(1).i64(2).u32(3).build(),
            Wire::new(b'C').u8(0).u64(1).u64(2).i64(3).build(),
            Wire::new(b'O').u64(1).str("o").build(),
            Wire::new(b'R')
                .u32(1)
                .str("public")
                .str("t")
                .u8(b'f')
                .i16(1)
                .u8(1)
                .str("id")
                .u32(23)
                .i32(-1)
                .build(),
            Wire::new(b'Y').u32(1).str("public").str("mood").build(),
            Wire::new(b'I')
                .u32(1)
                .u8(b'N')
                .i16(4)
                .u8(b'n')
                .u8(b'u')
                .value(b't', b"x")
                .value(b'b', b"y")
                .build(),
            Wire::new(b'U')
                .u32(1)
                .u8(b'O')
                .i16(1)
                .value(b't', b"1")
                .u8(b'N')
                .i16(1)
                .value(b't', b"2")
                .build(),
            Wire::new(b'D')
                .u32(1)
                .u8(b'K')
                .i16(1)
                .value(b't', b"1")
                .build(),
            Wire::new(b'T').i32(2).u8(3).u32(1).u32(2).build(),
            Wire::new(b'M')
                .u8(1)
                .u64(1)
                .str("p")
                .i32(2)
                .raw(b"hi")
                .build(),
        ]
    }

    #[test]
    fn every_truncation_of_a_sample_is_an_error() {
        for sample in samples() {
            assert!(decode(&sample).is_ok(), "sample {sample:?} must decode");
            for len in 0..sample.len() {
                assert!(
                    decode(&sample.slice(..len)).is_err(),
                    "{sample:?} truncated to {len} bytes decoded"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
            let _ = decode(&Bytes::from(bytes));
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_tag_never_panic(
            tag in proptest::sample::select(TAGS),
            rest in vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = vec![tag];
            bytes.extend(rest);
            let _ = decode(&Bytes::from(bytes));
        }

        #[test]
        fn corrupted_samples_never_panic(
            sample in any::<prop::sample::Index>(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let samples = samples();
            let mut bytes = sample.get(&samples).to_vec();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decode(&Bytes::from(bytes));
        }

        #[test]
        fn round_trip(message in arb_message()) {
            prop_assert_eq!(decode(&encode(&message)), Ok(message));
        }

        #[test]
        fn truncated_messages_are_errors(
            message in arb_message(),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(&message);
            let len = cut.index(bytes.len());
            prop_assert!(decode(&bytes.slice(..len)).is_err());
        }

        #[test]
        fn appended_bytes_are_errors(
            message in arb_message(),
            extra in vec(any::<u8>(), 1..8),
        ) {
            let mut bytes = encode(&message).to_vec();
            bytes.extend_from_slice(&extra);
            prop_assert!(decode(&Bytes::from(bytes)).is_err());
        }
    }
}
