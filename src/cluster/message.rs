//! One job as it travels on the bus: what delivery needs to send it, and
//! nothing it can read again at delivery (the hook's URL, secret and
//! headers are taken from the `webhook` table then, so a rotated secret or
//! a changed URL applies to jobs already on the bus).
//!
//! A message is a length-prefixed JSON head (ids, the order key, where the
//! event stands in commit order) followed by the unsigned body's bytes as
//! they are: the body is the bulk, and is neither escaped nor copied.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::request::{PartsLayout, SharedBody, SharedParts};
use crate::delivery::{Job, OrderScope};
use crate::pgoutput::Lsn;

/// Bytes of the head's length, before it.
const LENGTH_BYTES: usize = 4;
/// The largest head read: ids, a key and a few numbers, far below it.
const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// A message that is not a job of walhook's making.
#[derive(Debug, thiserror::Error)]
#[error("not a walhook job: {0}")]
pub struct NotAJob(String);

/// How a job orders against the hook's other jobs, as carried.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Scope {
    Key,
    AlsoAfter(String),
    Barrier,
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    webhook_id: i32,
    event: String,
    event_id: Uuid,
    ordering_key: String,
    scope: Scope,
    commit_lsn: u64,
    change_index: u32,
    /// The commit's time, microseconds since 2000-01-01 (PostgreSQL's).
    commit_time: i64,
    /// Where the body's parts lie, when it was assembled from them, so a
    /// job parked at delivery stores its parts as a local one does.
    layout: Option<[usize; 4]>,
}

/// A job read from the bus, waiting for its hook's row and a ticket.
#[derive(Debug)]
pub struct BusJob {
    pub webhook_id: i32,
    pub event: String,
    pub event_id: Uuid,
    pub ordering_key: String,
    pub scope: OrderScope,
    pub commit_lsn: Lsn,
    pub change_index: u32,
    pub commit_time: i64,
    pub body: Bytes,
    layout: Option<PartsLayout>,
}

impl BusJob {
    /// Where a parked copy finds the parts of the body.
    pub fn shared(&self) -> SharedParts {
        match self.layout {
            Some(layout) => SharedParts::InBody(layout),
            // A body not made from parts is parked whole.
            None => SharedParts::Apart(std::sync::Arc::new(SharedBody {
                head: String::new(),
                fields: String::new(),
                tail: String::new(),
            })),
        }
    }
}

/// The JetStream message id of a job: its EventId is unique per hook
/// already; the hook id makes the id say whose it is.
pub fn message_id(job: &Job) -> String {
    format!("{}:{}", job.event_id, job.hook.id)
}

/// A job as a message.
pub fn encode(job: &Job, commit_time: i64) -> Bytes {
    let head = Head {
        webhook_id: job.hook.id,
        event: job.event.clone(),
        event_id: job.event_id,
        ordering_key: job.ordering_key.clone(),
        scope: match &job.scope {
            OrderScope::Key => Scope::Key,
            OrderScope::AlsoAfter(old) => Scope::AlsoAfter(old.clone()),
            OrderScope::Barrier => Scope::Barrier,
        },
        commit_lsn: job.commit_lsn.0,
        change_index: job.change_index,
        commit_time,
        layout: job.shared.layout().map(|l| l.offsets()),
    };
    // Serialising strings, numbers and a UUID cannot fail.
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut out = BytesMut::with_capacity(LENGTH_BYTES + head.len() + job.body.len());
    out.put_u32(head.len() as u32);
    out.put_slice(&head);
    out.put_slice(&job.body);
    out.freeze()
}

/// A message as a job.
pub fn decode(message: Bytes) -> Result<BusJob, NotAJob> {
    let length = message
        .get(..LENGTH_BYTES)
        .ok_or_else(|| NotAJob(format!("{} bytes, shorter than a head", message.len())))?;
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    if length > MAX_HEAD_BYTES {
        return Err(NotAJob(format!("a head of {length} bytes")));
    }
    let head_bytes = message
        .get(LENGTH_BYTES..LENGTH_BYTES + length)
        .ok_or_else(|| NotAJob(format!("a head of {length} bytes in a shorter message")))?;
    let head: Head =
        serde_json::from_slice(head_bytes).map_err(|e| NotAJob(format!("its head: {e}")))?;
    let body = message.slice(LENGTH_BYTES + length..);
    let layout = match head.layout {
        Some(offsets) => Some(
            PartsLayout::from_offsets(offsets, &body)
                .ok_or_else(|| NotAJob("its body's layout lies outside it".into()))?,
        ),
        None => None,
    };
    Ok(BusJob {
        webhook_id: head.webhook_id,
        event: head.event,
        event_id: head.event_id,
        ordering_key: head.ordering_key,
        scope: match head.scope {
            Scope::Key => OrderScope::Key,
            Scope::AlsoAfter(old) => OrderScope::AlsoAfter(old),
            Scope::Barrier => OrderScope::Barrier,
        },
        commit_lsn: Lsn(head.commit_lsn),
        change_index: head.change_index,
        commit_time: head.commit_time,
        body,
        layout,
    })
}
