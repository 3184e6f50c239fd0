//! How spans leave the process: the SDK's OTLP/HTTP exporter, sending
//! over hyper with rustls.
//!
//! The exporter's own default client is reqwest's blocking one, a second
//! HTTP stack beside the one walhook already has. Its batch processor
//! exports from a thread of its own, outside the tokio runtime, so the
//! client here hands each export to the runtime and waits for it there.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};

use crate::config::TelemetryConfig;

/// The most of a collector's answer read: it says only whether the
/// spans were taken.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The OTLP/HTTP span exporter `config` describes.
pub(super) fn exporter(
    config: &TelemetryConfig,
) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let client = OtlpHttp::new(config.export_timeout)?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(config.export_timeout)
        .with_http_client(client);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    builder
        .build()
        .context("telemetry: building the OTLP exporter (telemetry.endpoint, OTEL_EXPORTER_OTLP_*)")
}

/// hyper's client, run on walhook's runtime.
#[derive(Clone)]
struct OtlpHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpHttp")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OtlpHttp {
    /// Must be called on the runtime: exports run there.
    fn new(timeout: Duration) -> anyhow::Result<OtlpHttp> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("telemetry: the exporter needs the tokio runtime")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // A collector behind a private CA is trusted through the system's
        // store, as curl would trust it.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("rustls: no usable TLS protocol version")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(OtlpHttp {
            client,
            runtime,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let exchange = async move {
            let (parts, body) = request.into_parts();
            let response = client
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let task = self.runtime.spawn(async move {
            match tokio::time::timeout(timeout, exchange).await {
                Ok(answer) => answer,
                Err(_) => Err(format!(
                    "no answer from the collector within {}s (telemetry.export_timeout)",
                    timeout.as_secs_f64()
                )
                .into()),
            }
        });
        task.await?
    }
}
