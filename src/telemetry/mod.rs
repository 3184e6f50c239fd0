//! OpenTelemetry traces of deliveries (`[telemetry]`, README "Traces").
//!
//! Off unless configured: then [`Telemetry::delivery`] answers `None` and
//! costs a branch. On, each event delivered to a hook gets a span, with a
//! child per attempt, exported in batches over OTLP/HTTP by the SDK's
//! batch processor (a bounded queue: spans past it are dropped, never
//! waited for). A transaction that emitted a trace context
//! ([`context`]) has its deliveries' spans made children of it.

pub mod context;
mod export;
mod spans;

use std::sync::Arc;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

pub use self::context::{TraceContextError, TraceParent, MAX_TRACE_MESSAGE_BYTES, TRACE_PREFIX};
pub use self::spans::{AttemptFacts, AttemptSpan, DeliveryFacts, DeliverySpan};
use crate::config::TelemetryConfig;

/// The tracer deliveries make spans with; off by default.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// No spans, no export.
    pub fn off() -> Telemetry {
        Telemetry::default()
    }

    /// The tracer `config` describes, exporting from now on; off when
    /// `telemetry.enabled` is false. Must be called on the runtime.
    pub fn start(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
        if !config.enabled {
            return Ok(Telemetry::off());
        }
        let exporter = export::exporter(config)?;
        let mut resource = Resource::builder();
        // OTEL_SERVICE_NAME, read by the default resource, wins.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(config.service_name.clone());
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch_config())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // A transaction's own context decides for its deliveries; the
            // ratio decides for the rest.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("walhook");
        tracing::info!(
            "telemetry: exporting delivery traces over OTLP/HTTP to {} (sample_ratio {})",
            config
                .endpoint
                .as_deref()
                .unwrap_or("the OTEL_EXPORTER_OTLP_* endpoint"),
            config.sample_ratio
        );
        Ok(Telemetry {
            inner: Some(Arc::new(Inner { provider, tracer })),
        })
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// The span of one event's delivery to one hook, a child of the
    /// transaction's context if it sent one; `None` when off.
    pub fn delivery(
        &self,
        parent: Option<&TraceParent>,
        facts: DeliveryFacts<'_>,
    ) -> Option<DeliverySpan> {
        let inner = self.inner.as_ref()?;
        Some(DeliverySpan::start(&inner.tracer, parent, facts))
    }

    /// Exports what is left and stops; waits at most the export timeout.
    pub async fn shutdown(&self) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        // The SDK's shutdown blocks until its export thread is done, and
        // that export runs on this runtime: it must not block a worker.
        let done = tokio::task::spawn_blocking(move || inner.provider.shutdown())
            .await
            .context("telemetry: the shutdown task failed");
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("telemetry: the last spans were not exported: {e}"),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

/// The spans waiting for export, at most, and the most sent at once,
/// unless `OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` say
/// otherwise. The SDK's defaults (2,048 and 512) dropped 7% of the spans
/// of a 15,000 changes/s catch-up (two spans a change); 16,384 spans are
/// a few MiB.
fn batch_config() -> BatchConfig {
    // The default builder reads the OTEL_BSP_* variables.
    let mut config = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(MAX_QUEUED_SPANS);
    }
    if std::env::var_os("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        config = config.with_max_export_batch_size(MAX_EXPORT_BATCH);
    }
    config.build()
}

const MAX_QUEUED_SPANS: usize = 16_384;
const MAX_EXPORT_BATCH: usize = 2_048;
