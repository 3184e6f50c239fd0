//! `[telemetry]`: OpenTelemetry traces of deliveries, exported over
//! OTLP/HTTP. Off unless `enabled = true`; the standard
//! `OTEL_EXPORTER_OTLP_*` variables fill in what the section leaves unset.

use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::{duration, show_duration};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export a span per delivered event, with a child per attempt, and
    /// send `traceparent` with every request.
    pub enabled: bool,
    /// The OTLP/HTTP traces endpoint, e.g.
    /// "http://collector:4318/v1/traces". Unset: the variable
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (with `/v1/traces` added), then "http://localhost:4318/v1/traces".
    pub endpoint: Option<String>,
    /// The `service.name` resource attribute; `OTEL_SERVICE_NAME` wins.
    pub service_name: String,
    /// The share of deliveries traced when the transaction carried no
    /// trace context of its own (0.0 to 1.0). A transaction's context is
    /// followed as it says: sampled or not.
    pub sample_ratio: f64,
    /// How long one export may take before its spans are dropped.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: false,
            endpoint: None,
            service_name: "walhook".into(),
            sample_ratio: 1.0,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            bail!(
                "telemetry.sample_ratio = {} is outside 0.0..=1.0 (1.0 traces every delivery)",
                self.sample_ratio
            );
        }
        if let Some(endpoint) = &self.endpoint {
            let url = url::Url::parse(endpoint).map_err(|e| {
                anyhow::anyhow!(
                    "telemetry.endpoint = {endpoint:?} is not a URL ({e}): write e.g. \
                     \"http://127.0.0.1:4318/v1/traces\""
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!(
                    "telemetry.endpoint = {endpoint:?}: OTLP is exported over http or https, \
                     not {}",
                    url.scheme()
                );
            }
        }
        if self.service_name.trim().is_empty() {
            bail!("telemetry.service_name is empty: name the service, e.g. \"walhook\"");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.export_timeout) {
            bail!(
                "telemetry.export_timeout = {:?} is outside 100ms..=300s",
                self.export_timeout
            );
        }
        Ok(())
    }
}
