//! One event addressed to one hook: what the intake hands to a hook's
//! queue or to parking, and its parked form.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use super::hook::order::OrderScope;
use super::hook::ParkReason;
use super::hook::ParkSize;
use super::request::{BodyParts, SharedBody, SharedParts, PROPERTIES_KEY};
use super::storage::{ParkedBody, ParkedEvent, Payload, Position};
use crate::checkpoint::Ticket;
use crate::pgoutput::Lsn;
use crate::registry::Webhook;
use crate::telemetry::TraceParent;

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
    /// The trace context its transaction emitted, if any: its delivery's
    /// span continues that trace.
    pub trace: Option<Arc<TraceParent>>,
}

impl Job {
    /// The event's place in commit order.
    pub fn position(&self) -> Position {
        Position {
            commit_lsn: self.commit_lsn,
            change_index: self.change_index,
        }
    }

    /// What parking the job adds to its hook's parked bytes: its body
    /// without its Properties, and the Properties' own size, counted only
    /// for the first event of each version
    /// ([`HookRuntime::reserve_parked`](super::hook::HookRuntime::reserve_parked)).
    pub fn park_size(&self) -> ParkSize {
        let whole = ParkSize {
            body: self.body.len() as i64,
            properties: None,
        };
        let Some(properties) = &self.hook.properties_text else {
            return whole;
        };
        match self.hook_parts() {
            Some(_) => ParkSize {
                body: (self.body.len() - PROPERTIES_KEY.len() - properties.json.len()) as i64,
                properties: Some((properties.digest, properties.json.len() as i64)),
            },
            None => whole,
        }
    }

    /// The body's parts, when it was assembled from them with the hook's
    /// properties: what a parked copy stores apart.
    fn hook_parts(&self) -> Option<BodyParts<'_>> {
        let layout = match &self.shared {
            SharedParts::InBody(layout) | SharedParts::Own(_, layout) => layout,
            SharedParts::Apart(_) => return None,
        };
        let parts = layout.parts(&self.body)?;
        let stored = self
            .hook
            .properties_text
            .as_deref()
            .map(|p| p.json.as_bytes());
        (parts.properties == stored).then_some(parts)
    }

    /// The parked form of the job, counting `bytes` toward its hook's
    /// parked bytes.
    pub fn parked<'a>(
        &'a self,
        reason: ParkReason,
        attempts: i32,
        last_error: Option<&'a str>,
        bytes: i64,
    ) -> ParkedEvent<'a> {
        let properties = self.hook.properties_text.as_deref();
        let own = match &self.shared {
            SharedParts::InBody(_) => None,
            SharedParts::Own(shared, _) | SharedParts::Apart(shared) => Some(shared),
        };
        let (payload, body) = match (self.hook_parts(), own) {
            (Some(parts), None) => (
                Payload {
                    head: parts.head,
                    fields: parts.fields,
                    tail: parts.tail,
                },
                ParkedBody::Assembled {
                    name: parts.name,
                    fields: None,
                    properties,
                },
            ),
            // Its own copy differs from the change's in its values alone.
            (Some(parts), Some(shared))
                if parts.head == shared.head.as_bytes() && parts.tail == shared.tail.as_bytes() =>
            {
                (
                    shared_payload(shared),
                    ParkedBody::Assembled {
                        name: parts.name,
                        fields: (parts.fields != shared.fields.as_bytes()).then_some(parts.fields),
                        properties,
                    },
                )
            }
            (_, Some(shared)) => (shared_payload(shared), ParkedBody::Whole(&self.body)),
            // Cannot happen: a layout is made with its body.
            (None, None) => (
                Payload {
                    head: b"",
                    fields: b"",
                    tail: b"",
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
            bytes,
        }
    }
}

/// The change's shared parts, kept apart from a body of the hook's own.
fn shared_payload(shared: &SharedBody) -> Payload<'_> {
    Payload {
        head: shared.head.as_bytes(),
        fields: shared.fields.as_bytes(),
        tail: shared.tail.as_bytes(),
    }
}
