//! What delivery keeps in the database: the [`DeliveryStore`] interface,
//! which the store implements for PostgreSQL, and parked events as
//! written and read back.

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use super::hook::order::OrderScope;
use super::hook::ParkReason;
use crate::pgoutput::Lsn;
use crate::registry::{PropertiesText, WebhookState};

/// What delivery stores: parked events, read back in commit order, and the
/// hook states it decides. The store implements it for PostgreSQL; tests
/// implement it in memory.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Store an event durably; storing the same event again is a no-op.
    async fn park(&self, event: &ParkedEvent<'_>) -> anyhow::Result<()>;
    /// Store events durably in one commit; events already stored are
    /// skipped.
    async fn park_batch(&self, events: &[ParkedEvent<'_>]) -> anyhow::Result<()>;
    /// A hook's parked events after position `after` (from the first when
    /// None), at most `limit`, in commit order.
    async fn next_parked(
        &self,
        webhook_id: i32,
        after: Option<Position>,
        limit: i64,
    ) -> anyhow::Result<Vec<ParkedRow>>;
    async fn parked_count(&self, webhook_id: i32) -> anyhow::Result<i64>;
    /// A hook's parked events and the bytes they count toward
    /// `delivery.max_parked_bytes_per_webhook`.
    async fn parked_size(&self, webhook_id: i32) -> anyhow::Result<ParkedSize>;
    /// Remove a hook's delivered events.
    async fn remove_parked(&self, webhook_id: i32, delivered: &[Position]) -> anyhow::Result<()>;
    /// Remove the changes' payloads at `positions` that no parked event
    /// holds any more. Only the daemon, whose one session also parks,
    /// calls it.
    async fn release_payloads(&self, positions: &[Position]) -> anyhow::Result<()>;
    /// Remove the hook's stored properties that no parked event of it
    /// names any more. Only the daemon, whose one session also parks,
    /// calls it.
    async fn release_properties(&self, webhook_id: i32) -> anyhow::Result<()>;
    async fn record_parked_failure(
        &self,
        webhook_id: i32,
        position: Position,
        attempts: u32,
        error: Option<&str>,
    ) -> anyhow::Result<()>;
    /// Bring the planner's statistics of the parked tables up to date
    /// before a replay reads them in batches (best effort).
    async fn refresh_statistics(&self) {}
    /// Store a hook's state now (not batched with the statistics).
    async fn store_state(&self, webhook_id: i32, state: WebhookState) -> anyhow::Result<()>;
    /// The store's session has ended: what is not stored yet stays
    /// unconfirmed and is read again by the next session.
    fn is_closed(&self) -> bool;
}

/// A change's place in commit order: its transaction's commit position
/// and its index in the transaction. With the hook, it names a parked
/// event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub change_index: u32,
}

/// A hook's parked events as counted toward its bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParkedSize {
    pub events: i64,
    pub bytes: i64,
}

/// An event to park.
pub struct ParkedEvent<'a> {
    pub webhook_id: i32,
    pub event_id: Uuid,
    pub event: &'a str,
    pub ordering_key: &'a str,
    pub scope: &'a OrderScope,
    /// The change's body parts shared by its hooks, stored once per change.
    pub payload: Payload<'a>,
    pub body: ParkedBody<'a>,
    pub reason: ParkReason,
    pub attempts: i32,
    pub last_error: Option<&'a str>,
    pub position: Position,
    /// What it counts toward `delivery.max_parked_bytes_per_webhook`, as
    /// reserved for it; subtracted again when it leaves the table.
    pub bytes: i64,
}

/// A change's body parts shared by the hooks that park it, JSON text
/// (see [`request::BodyParts`](super::request::BodyParts)).
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub head: &'a [u8],
    pub fields: &'a [u8],
    pub tail: &'a [u8],
}

/// What a parked event stores of its own body.
pub enum ParkedBody<'a> {
    /// The hook's part, JSON text; the body is assembled from it and the
    /// payload. Its properties are stored once per hook and version.
    Assembled {
        name: &'a [u8],
        /// This hook's own FieldValues and MissingColumns, when its copy
        /// left out more values than the payload's.
        fields: Option<&'a [u8]>,
        properties: Option<&'a PropertiesText>,
    },
    /// The whole body, rendered for this hook alone.
    Whole(&'a [u8]),
}

/// A parked event read back for delivery.
#[derive(Debug, Clone)]
pub struct ParkedRow {
    pub position: Position,
    pub event_id: Uuid,
    pub event: String,
    pub ordering_key: String,
    pub scope: OrderScope,
    pub body: Bytes,
    pub attempts: i32,
    /// What it counts toward `delivery.max_parked_bytes_per_webhook`.
    pub bytes: i64,
}
