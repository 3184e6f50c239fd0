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

/// A PostgreSQL timestamp (microseconds since 2000-01-01 UTC, as Begin and
/// Commit carry the commit time) as a point in time.
pub fn pg_time(pg_micros: i64) -> std::time::SystemTime {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let epoch = std::time::UNIX_EPOCH + std::time::Duration::from_secs(PG_EPOCH_UNIX_SECS);
    if pg_micros >= 0 {
        epoch + std::time::Duration::from_micros(pg_micros as u64)
    } else {
        epoch - std::time::Duration::from_micros(pg_micros.unsigned_abs())
    }
}

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
mod tests;
