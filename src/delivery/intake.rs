//! The way into delivery: a change event the registry matched becomes one
//! job per hook. The live pipeline and backfill both come in here; the
//! dispatcher then decides, per job, park or queue.

use std::sync::Arc;

use uuid::Uuid;

use super::hook::order::OrderScope;
use super::job::Job;
use super::request::{self, SharedBody};
use crate::checkpoint::Ticket;
use crate::events::{ChangeEvent, Operation};
use crate::metrics::Metrics;
use crate::registry::{ColumnFilter, Webhook};

/// One event must never stall the pipeline or be refused by the database
/// when parked: when its body would pass `max_body` bytes, its largest
/// values (never the key's) are left out, just enough, named in
/// MissingColumns, counted and logged.
pub fn fit_event(
    event: &mut ChangeEvent,
    context_identifier: &str,
    max_body: usize,
    metrics: &Metrics,
) {
    let left_out = request::fit_fields(event, context_identifier, max_body);
    if !left_out.is_empty() {
        metrics.events_cut.inc();
        tracing::warn!(
            table = %event.table,
            key = %event.primary_key,
            lsn = %event.txn.commit_lsn,
            "event larger than delivery.max_body_bytes ({max_body}): sent without columns {left_out:?}, named in MissingColumns"
        );
    }
}

/// A change event on its way to its hooks: the body parts they share,
/// rendered once, and its order scope.
pub struct EventIntake<'e> {
    event: &'e ChangeEvent,
    shared: SharedBody,
    scope: OrderScope,
    context_identifier: &'e str,
    max_body: usize,
}

impl<'e> EventIntake<'e> {
    /// `event` fitted to `max_body` ([`fit_event`]), then made ready for
    /// its hooks: what the pipeline and backfill do with each event.
    pub fn fitted(
        event: &'e mut ChangeEvent,
        context_identifier: &'e str,
        max_body: usize,
        metrics: &Metrics,
    ) -> Self {
        fit_event(event, context_identifier, max_body, metrics);
        EventIntake::new(event, context_identifier, max_body)
    }

    /// `event`, already fitted ([`fit_event`]), for its hooks.
    pub fn new(event: &'e ChangeEvent, context_identifier: &'e str, max_body: usize) -> Self {
        let scope = match (&event.operation, &event.previous_key) {
            (Operation::Truncated, _) => OrderScope::Barrier,
            (_, Some(old)) => OrderScope::AlsoAfter(old.clone()),
            _ => OrderScope::Key,
        };
        EventIntake {
            event,
            shared: SharedBody::of(event, context_identifier),
            scope,
            context_identifier,
            max_body,
        }
    }

    /// The event, as fitted.
    pub fn event(&self) -> &'e ChangeEvent {
        self.event
    }

    /// The event's job for `hook`: its body rendered from the shared
    /// parts, with the hook's EventId and the transaction's ticket.
    pub fn job(&self, hook: Arc<Webhook>, event_id: Uuid, ticket: Ticket) -> Job {
        let event = self.event;
        let body = request::hook_body(
            &self.shared,
            event,
            event_id,
            &hook,
            self.context_identifier,
            self.max_body,
        );
        if let request::HookBody::Own(own, _) = &body {
            if own.len() > self.max_body {
                // Properties are never cut: the DBA set them for the
                // receiver, which may route by them.
                tracing::warn!(
                    webhook_id = hook.id,
                    table = %event.table,
                    key = %event.primary_key,
                    lsn = %event.txn.commit_lsn,
                    "the body for webhook_id {} is {} bytes without any column values, over \
                     delivery.max_body_bytes ({}), because of its name and its {} bytes of \
                     Properties: it is sent as it is (Properties are never cut); raise \
                     delivery.max_body_bytes or make the hook's properties smaller",
                    hook.id,
                    own.len(),
                    self.max_body,
                    hook.properties_text.as_ref().map_or(0, |p| p.json.len())
                );
            }
        }
        let (body, shared) = body.for_job(&self.shared);
        Job {
            event: event.event.clone(),
            event_id,
            ordering_key: event.ordering_key.clone(),
            scope: self.scope.clone(),
            body,
            shared,
            commit_lsn: event.txn.commit_lsn,
            change_index: event.index,
            ticket,
            hook,
            trace: None,
        }
    }
}

impl EventIntake<'_> {
    /// The job for `hook`, which may see only `columns` of the event
    /// (`None`: all of them). A filtered copy's body is rendered from the
    /// copy, but the change's shared parts stay this event's, so a parked
    /// copy stores the change's payload once and this hook's differing
    /// parts apart, never the other way round.
    pub fn job_seeing(
        &self,
        columns: Option<&ColumnFilter>,
        hook: Arc<Webhook>,
        event_id: Uuid,
        ticket: Ticket,
    ) -> Job {
        let Some(columns) = columns else {
            return self.job(hook, event_id, ticket);
        };
        let own = columns.apply(self.event);
        let mut job = EventIntake::new(&own, self.context_identifier, self.max_body)
            .job(hook, event_id, ticket);
        let change = Arc::new(self.shared.clone());
        job.shared = match job.shared {
            request::SharedParts::InBody(layout) | request::SharedParts::Own(_, layout) => {
                request::SharedParts::Own(change, layout)
            }
            request::SharedParts::Apart(_) => request::SharedParts::Apart(change),
        };
        job
    }
}
