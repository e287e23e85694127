//! Executor: serves OpenAI Chat Completions requests from an Anthropic Messages API upstream.
//!
//! The gateway routes a model to this plugin (`[[models]] executor = "anthropic-executor"`); the
//! plugin translates the request ([`translate`]), calls the upstream named in its config through
//! the gateway's HTTP client (which adds the base URL, the `x-api-key`, TLS and limits), and
//! translates the answer back, whole or event by event. Every other plugin runs around it as
//! around a built-in upstream, and the usage it reports reaches the data collectors.
//!
//! ```toml
//! [[upstreams]]
//! name = "anthropic"
//! kind = "openai"                     # any HTTP API: base URL, key, TLS, limits
//! base_url = "https://api.anthropic.com"
//! api_key_env = "ANTHROPIC_API_KEY"
//! auth_header = "x-api-key"
//!
//! [[models]]
//! name = "claude"
//! executor = "anthropic-executor"
//! upstream_model = "claude-sonnet-4-5"
//!
//! [[plugins]]
//! path = "libanthropic_executor.so"
//! [plugins.config]
//! upstream = "anthropic"
//! ```

#![forbid(unsafe_code)]

pub mod translate;

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use plugin_abi::{
    ChunkStream, Config, ConfigProvider, ExecError, ExecRequest, ExecResponse, Executor, ExecutorInfo, ExecutorModel,
    Host, HttpPassthrough, HttpRequest, HttpResponse, Plugin, PluginError,
};
use serde::Deserialize;
use translate::{SseSplitter, StreamTranslator};

#[derive(plugin_abi::Plugin)]
#[plugin(name = "anthropic-executor", capabilities(ConfigProvider), required(Executor))]
pub struct AnthropicExecutor {
    host: Host,
    settings: Settings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The gateway upstream to call.
    upstream: String,
    #[serde(default = "default_version")]
    anthropic_version: String,
    /// Sent as `x-api-key` when set; otherwise the upstream's own key (its `auth_header`) is.
    #[serde(default)]
    api_key: Option<String>,
    /// For requests that set no `max_tokens` (Anthropic requires one).
    #[serde(default = "default_max_tokens")]
    default_max_tokens: u64,
    /// Largest SSE event accepted from the upstream.
    #[serde(default = "default_max_event_bytes")]
    max_event_bytes: usize,
    /// Models listed as served by this executor.
    #[serde(default)]
    models: Vec<String>,
}

fn default_version() -> String {
    "2023-06-01".into()
}

fn default_max_tokens() -> u64 {
    4096
}

fn default_max_event_bytes() -> usize {
    1 << 20
}

impl Plugin for AnthropicExecutor {
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {
        let settings: Settings = config.parse()?;
        Ok(AnthropicExecutor { host, settings })
    }
}

impl ConfigProvider for AnthropicExecutor {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "required": ["upstream"],
        "properties": {
            "upstream": { "type": "string", "minLength": 1 },
            "anthropic_version": { "type": "string", "minLength": 1 },
            "api_key": { "type": "string", "minLength": 1 },
            "default_max_tokens": { "type": "integer", "minimum": 1 },
            "max_event_bytes": { "type": "integer", "minimum": 1024 },
            "models": { "type": "array", "items": { "type": "string" } }
        }
    }"#;
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AnthropicExecutor {
    /// A call to the upstream with Anthropic's headers.
    fn call(&self, method: &str, path: &str, request_id: &str) -> HttpRequest {
        let mut req = HttpRequest::new(method, &self.settings.upstream, path)
            .header("anthropic-version", &self.settings.anthropic_version)
            .request_id(request_id);
        if let Some(key) = &self.settings.api_key {
            req = req.header("x-api-key", key);
        }
        req
    }

    /// Sends a Messages request; a non-2xx answer becomes the OpenAI-shaped error for it.
    async fn messages(&self, req: &ExecRequest, stream: bool) -> Result<HttpResponse, ExecError> {
        let body =
            translate::request_to_anthropic(&req.body, &req.upstream_model, self.settings.default_max_tokens, stream)
                .map_err(|e| ExecError::bad_request(e.0))?;
        let resp = self.host.http(self.call("POST", "/v1/messages", &req.request_id).json(body)).await?;
        if !(200..300).contains(&resp.status()) {
            return Err(upstream_error(resp).await);
        }
        Ok(resp)
    }
}

/// The upstream's error, as the client will see it (status kept, type and message translated).
async fn upstream_error(resp: HttpResponse) -> ExecError {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let (kind, message) = translate::error_to_openai(status, &body);
    ExecError::new(status, kind, format!("upstream answered {status}: {message}"))
}

/// Reading a streamed answer: body chunks in, OpenAI chunks out.
struct Streaming {
    resp: HttpResponse,
    splitter: SseSplitter,
    translator: StreamTranslator,
    ready: VecDeque<Vec<u8>>,
}

impl Streaming {
    /// The next OpenAI chunk, `None` at the end.
    async fn next(&mut self) -> Option<Result<Vec<u8>, ExecError>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(Ok(chunk));
            }
            if self.translator.finished() {
                return None;
            }
            let bytes = match self.resp.chunk().await {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => return Some(Err(ExecError::upstream(e.message))),
                None => return Some(Err(ExecError::upstream("the upstream ended the stream before `message_stop`"))),
            };
            let events = match self.splitter.push(&bytes) {
                Ok(events) => events,
                Err(e) => return Some(Err(ExecError::upstream(e.0))),
            };
            for (event, data) in events {
                match self.translator.on_event(&event, &data) {
                    Ok(chunks) => self.ready.extend(chunks),
                    Err(e) => return Some(Err(ExecError::upstream(e.0))),
                }
            }
        }
    }
}

impl Executor for AnthropicExecutor {
    fn describe(&self) -> ExecutorInfo {
        ExecutorInfo {
            identifier: "anthropic".into(),
            input_formats: vec!["openai".into()],
            output_formats: vec!["openai".into()],
            models: self
                .settings
                .models
                .iter()
                .map(|id| ExecutorModel { id: id.clone(), owned_by: "anthropic".into(), context_length: 0 })
                .collect(),
        }
    }

    async fn execute(&self, req: ExecRequest) -> Result<ExecResponse, ExecError> {
        let resp = self.messages(&req, false).await?;
        let body = resp.bytes().await?;
        let (json, _usage) =
            translate::response_to_openai(&body, &req.model, unix_secs()).map_err(|e| ExecError::upstream(e.0))?;
        Ok(ExecResponse::json(json))
    }

    async fn execute_stream(&self, req: ExecRequest) -> Result<ChunkStream, ExecError> {
        let resp = self.messages(&req, true).await?;
        let streaming = Streaming {
            resp,
            splitter: SseSplitter::new(self.settings.max_event_bytes),
            translator: StreamTranslator::new(&req.model, unix_secs()),
            ready: VecDeque::new(),
        };
        Ok(ChunkStream::unfold(streaming, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        }))
    }

    async fn count_tokens(&self, req: ExecRequest) -> Result<u64, ExecError> {
        let mut body: serde_json::Value = serde_json::from_slice(
            &translate::request_to_anthropic(&req.body, &req.upstream_model, self.settings.default_max_tokens, false)
                .map_err(|e| ExecError::bad_request(e.0))?,
        )
        .map_err(|e| ExecError::upstream(format!("cannot re-read the translated request: {e}")))?;
        // The count endpoint takes the request without generation settings.
        if let Some(obj) = body.as_object_mut() {
            for key in ["max_tokens", "stream", "temperature", "top_p", "stop_sequences", "metadata"] {
                obj.remove(key);
            }
        }
        let call = self.call("POST", "/v1/messages/count_tokens", &req.request_id).json(body.to_string());
        let resp = self.host.http(call).await?;
        if !(200..300).contains(&resp.status()) {
            return Err(upstream_error(resp).await);
        }
        let body = resp.bytes().await?;
        #[derive(Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        let count: Count = serde_json::from_slice(&body).map_err(|e| {
            ExecError::upstream(format!("count_tokens answer: expected {{\"input_tokens\": N}}, found {e}"))
        })?;
        Ok(count.input_tokens)
    }

    async fn http_request(&self, req: HttpPassthrough) -> Result<ExecResponse, ExecError> {
        let mut call = self.call(&req.method, &req.path, "");
        for (name, value) in &req.headers {
            if name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("accept") {
                call = call.header(name, value);
            }
        }
        let resp = self.host.http(call.body(req.body)).await?;
        let status = resp.status();
        let headers: Vec<(String, String)> =
            resp.headers().iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-type")).cloned().collect();
        let body = resp.bytes().await?;
        Ok(ExecResponse { status, headers, body })
    }
}
