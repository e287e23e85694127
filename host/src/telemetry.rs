//! Optional trace export: the gateway's request, hook and upstream spans, sent to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf) by `tracing-opentelemetry` and the
//! OpenTelemetry SDK's batch processor, which exports from a thread of its own. Its HTTP client
//! is a hyper client on a one-thread runtime of its own, so exporting never takes a worker
//! from the requests being served.
//!
//! Spans (all at `trace` level, so they cost nothing unless a layer wants them):
//! - `chat` (kind server): one per `POST /v1/chat/completions`, named `chat {model}`, with the
//!   OpenTelemetry GenAI attributes `gen_ai.operation.name`, `gen_ai.request.model`,
//!   `gen_ai.provider.name`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, and
//!   `http.response.status_code`; a streamed response's span ends with its stream.
//! - `hook` children: one per plugin hook call (`plugin`, `hook`, `outcome`).
//! - `upstream` children (kind client): the call to the built-in upstream or executor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

use crate::config::TelemetryConfig;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running exporter: flush and stop it with [`Telemetry::shutdown`] before the process ends.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sends the spans still queued, then stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("trace export did not shut down cleanly: {e}");
        }
    }
}

/// The tracer that exports to `config.otlp_endpoint`; `None` when export is off.
pub fn tracer(config: &TelemetryConfig) -> Result<Option<(SdkTracer, Telemetry)>, String> {
    let Some(endpoint) = &config.otlp_endpoint else { return Ok(None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(config.headers.clone().into_iter().collect())
        .with_http_client(OtlpClient::new()?)
        .build()
        .map_err(|e| format!("cannot set up trace export to {endpoint}: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(config.export_interval_ms.max(1)))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
        .build();
    let tracer = provider.tracer("gateway");
    Ok(Some((tracer, Telemetry { provider })))
}

/// Names the exported span of `span` (its name in the trace, which `tracing`'s own name, fixed
/// at the call site, cannot be): a request's span is named once its model is known.
pub fn rename(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.context().span().update_name(name);
}

/// The exporter's HTTP client: hyper (HTTP/1.1, TLS by rustls) on a runtime of its own.
#[derive(Debug, Clone)]
struct OtlpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl OtlpClient {
    fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the trace export runtime: {e}"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(crate::upstream::openai::tls_config(&[]))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(OtlpClient { client: Client::builder(TokioExecutor::new()).build(connector), runtime: Arc::new(runtime) })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let call = async move {
            let resp = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request.map(Full::new)))
                .await
                .map_err(|_| format!("no answer within {} s", EXPORT_TIMEOUT.as_secs()))??;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        self.runtime.spawn(call).await?
    }
}
