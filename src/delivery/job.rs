//! One event addressed to one hook: what the intake hands to a hook's
//! queue or to parking, and its parked form.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use super::hook::order::OrderScope;
use super::hook::ParkReason;
use super::request::SharedParts;
use super::storage::{ParkedBody, ParkedEvent, Payload, Position};
use crate::checkpoint::Ticket;
use crate::pgoutput::Lsn;
use crate::registry::Webhook;

/// One event addressed to one hook.
pub struct Job {
    pub hook: Arc<Webhook>,
    pub event: String,
    pub event_id: Uuid,
    pub ordering_key: String,
    pub scope: OrderScope,
    pub body: Bytes,
    /// Where the event's body parts shared by its hooks are found: a
    /// parked event stores them once per change, however many hooks park
    /// it.
    pub shared: SharedParts,
    /// Where the event stands in commit order, kept when it is parked.
    pub commit_lsn: Lsn,
    pub change_index: u32,
    pub ticket: Ticket,
}

impl Job {
    /// The event's place in commit order.
    pub fn position(&self) -> Position {
        Position {
            commit_lsn: self.commit_lsn,
            change_index: self.change_index,
        }
    }

    /// The parked form of the job.
    pub fn parked<'a>(
        &'a self,
        reason: ParkReason,
        attempts: i32,
        last_error: Option<&'a str>,
    ) -> ParkedEvent<'a> {
        let (payload, body) = match &self.shared {
            SharedParts::InBody(layout) => match layout.parts(&self.body) {
                Some(parts) => (
                    Payload {
                        head: parts.head,
                        fields: parts.fields,
                        tail: parts.tail,
                    },
                    ParkedBody::Assembled {
                        name: parts.name,
                        properties: parts.properties,
                    },
                ),
                // Cannot happen: a layout is made with its body.
                None => (
                    Payload {
                        head: b"",
                        fields: b"",
                        tail: b"",
                    },
                    ParkedBody::Whole(&self.body),
                ),
            },
            SharedParts::Apart(shared) => (
                Payload {
                    head: shared.head.as_bytes(),
                    fields: shared.fields.as_bytes(),
                    tail: shared.tail.as_bytes(),
                },
                ParkedBody::Whole(&self.body),
            ),
        };
        ParkedEvent {
            webhook_id: self.hook.id,
            event_id: self.event_id,
            event: &self.event,
            ordering_key: &self.ordering_key,
            scope: &self.scope,
            payload,
            body,
            reason,
            attempts,
            last_error,
            position: self.position(),
        }
    }
}
