//! What a hook's queue, its replayer and the parking writer share: the
//! HTTP client, the settings, the metrics, the statistics and the store.

use std::sync::Arc;

use super::hook::usage::UsageBook;
use super::http::HttpClient;
use super::send::AttemptLog;
use super::storage::DeliveryStore;
use crate::config::{DeliveryConfig, Live};
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

/// Everything a hook's queue or its replayer needs.
#[derive(Clone)]
pub struct DeliveryContext {
    pub http: HttpClient,
    /// Delivery settings; SIGHUP may replace them.
    pub config: Live<DeliveryConfig>,
    pub metrics: Arc<Metrics>,
    pub usage: UsageBook,
    pub store: Arc<dyn DeliveryStore>,
    /// The failure log's writer (`delivery.attempt_log`).
    pub attempts: AttemptLog,
    /// Spans of deliveries (`[telemetry]`); off by default.
    pub telemetry: Telemetry,
}
