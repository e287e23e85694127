//! Executor plugins: a model routed to one is served by the plugin instead of a built-in
//! upstream, with every other phase of the pipeline around it unchanged.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use abi_stable::std_types::{RErr, ROk, RResult};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use plugin_abi::ffi::{self, ExecError, InstanceStream, RawExecRequest};

use super::request::{raw_headers, scratch};
use super::{Hook, Outcome, Pipeline, RequestState, Slot};
use crate::error::ApiError;
use crate::metrics::HookMetrics;
use crate::upstream::{Events, PollEvents, UpstreamReply};

impl<T> Outcome for RResult<T, ExecError> {
    fn error(&self) -> Option<&ffi::PluginError> {
        match self {
            RErr(e) => Some(&e.error),
            ROk(_) => None,
        }
    }
}

/// What an executor serves, as it described itself at load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutorInfo {
    pub identifier: String,
    pub input_formats: Vec<String>,
    pub output_formats: Vec<String>,
    pub models: Vec<String>,
}

/// The format the gateway's chat endpoint speaks, in and out.
pub const OPENAI: &str = "openai";

/// OpenAI error types an executor may name; anything else is reported as `api_error`.
fn error_kind(kind: &str) -> &'static str {
    const KINDS: &[&str] = &[
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "api_error",
        "server_error",
        "upstream_error",
    ];
    KINDS.iter().find(|k| **k == kind).copied().unwrap_or("api_error")
}

impl Pipeline {
    /// The executor plugin instance called `name`, if loaded.
    fn executor(&self, name: &str) -> Option<&Hook<ffi::ExecutorV1>> {
        self.executors.iter().find(|h| h.slot.name() == name)
    }

    /// The instance names of the loaded executors.
    pub fn executor_names(&self) -> impl Iterator<Item = &str> {
        self.executors.iter().map(|h| h.slot.name())
    }

    /// Asks executor `name` what it serves (once per load).
    pub fn describe_executor(&self, name: &str) -> Result<ExecutorInfo, String> {
        let hook = self.executor(name).ok_or_else(|| format!("no loaded plugin instance `{name}` is an executor"))?;
        match hook.invoke(ffi::ExecutorV1::describe, false, |cap| cap.describe()) {
            ROk(info) => {
                let strings = |v: abi_stable::std_types::RVec<abi_stable::std_types::RString>| {
                    v.into_iter().map(|s| s.into_string()).collect::<Vec<_>>()
                };
                Ok(ExecutorInfo {
                    identifier: info.identifier.into_string(),
                    input_formats: strings(info.input_formats),
                    output_formats: strings(info.output_formats),
                    models: info.models.into_iter().map(|m| m.id.into_string()).collect(),
                })
            }
            RErr(e) => Err(format!("executor `{name}` failed to describe itself: {}", e.message)),
        }
    }

    /// Runs executor `name` on the request as the request hooks left it. `timeout` bounds the
    /// answer (a stream's first chunk) and each next chunk.
    pub async fn execute(
        &self,
        name: &str,
        req: &RequestState,
        upstream_model: &str,
        stream: bool,
        timeout: Duration,
    ) -> Result<UpstreamReply, ApiError> {
        let hook = self.executor(name).ok_or_else(|| not_loaded(name, &req.ctx.model))?;
        let Some(probe) = hook.quarantine_check()? else {
            return Err(ApiError::plugin_quarantined(name));
        };
        let request_id = &req.ctx.request_id;
        if !stream {
            let future = bounded(timeout, with_raw(req, upstream_model, false, |raw| hook.cap.execute(raw)));
            return match hook.invoke_async(ffi::ExecutorV1::execute, probe, future).await {
                ROk(resp) => {
                    let (status, headers, body) = answer(resp, name, request_id)?;
                    Ok(UpstreamReply::Full { status, headers, body })
                }
                RErr(e) => Err(exec_error(hook, ffi::ExecutorV1::execute, e, request_id)),
            };
        }
        let mut chunks = with_raw(req, upstream_model, true, |raw| hook.cap.execute_stream(raw));
        // The first chunk decides the status: an error before it reaches the client as one.
        let first = bounded(timeout, FirstChunk(&mut chunks));
        let first = hook.invoke_async(ffi::ExecutorV1::execute_stream, probe, first).await;
        let first = match first {
            None => None,
            Some(ROk(chunk)) => Some(Bytes::from(chunk.into_vec())),
            Some(RErr(e)) => return Err(exec_error(hook, ffi::ExecutorV1::execute_stream, e, request_id)),
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        let events = ExecutorEvents {
            first,
            chunks,
            name: name.to_owned(),
            done: false,
            timeout,
            idle: Box::pin(tokio::time::sleep(timeout)),
            slot: hook.slot.clone(),
            metrics: hook.metrics[ffi::ExecutorV1::execute_stream].1.clone(),
        };
        Ok(UpstreamReply::Stream { status: StatusCode::OK, headers, events: Events::Plugin(Box::new(events)) })
    }

    /// Input tokens of the request, counted by executor `name` within `timeout`.
    pub async fn count_tokens(
        &self,
        name: &str,
        req: &RequestState,
        upstream_model: &str,
        timeout: Duration,
    ) -> Result<u64, ApiError> {
        let hook = self.executor(name).ok_or_else(|| not_loaded(name, &req.ctx.model))?;
        let Some(probe) = hook.quarantine_check()? else {
            return Err(ApiError::plugin_quarantined(name));
        };
        let future = bounded(timeout, with_raw(req, upstream_model, false, |raw| hook.cap.count_tokens(raw)));
        match hook.invoke_async(ffi::ExecutorV1::count_tokens, probe, future).await {
            ROk(n) => Ok(n),
            RErr(e) => Err(exec_error(hook, ffi::ExecutorV1::count_tokens, e, &req.ctx.request_id)),
        }
    }

    /// A raw request passed through to executor `name` (the admin API's passthrough), within
    /// `timeout`.
    pub async fn executor_http(
        &self,
        name: &str,
        req: &RequestState,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
        let hook = self.executor(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_executor",
                format!("no loaded plugin instance `{name}` is an executor"),
            )
        })?;
        let Some(probe) = hook.quarantine_check()? else {
            return Err(ApiError::plugin_quarantined(name));
        };
        let future = {
            let metadata = req.ctx.raw_metadata();
            let headers = raw_headers(&req.headers, scratch());
            let raw = req.raw(&headers, &metadata);
            bounded(timeout, hook.cap.http_request(&raw))
        };
        match hook.invoke_async(ffi::ExecutorV1::http_request, probe, future).await {
            ROk(resp) => answer(resp, name, &req.ctx.request_id),
            RErr(e) => Err(exec_error(hook, ffi::ExecutorV1::http_request, e, &req.ctx.request_id)),
        }
    }
}

/// Calls `f` with the request as an executor sees it. The views borrow `req` for the call only:
/// what `f` starts owns its own copy.
fn with_raw<R>(req: &RequestState, upstream_model: &str, stream: bool, f: impl FnOnce(&RawExecRequest<'_>) -> R) -> R {
    let metadata = req.ctx.raw_metadata();
    let headers = raw_headers(&req.headers, scratch());
    let raw = RawExecRequest {
        ctx: req.ctx.raw(&metadata),
        upstream_model: upstream_model.into(),
        format: OPENAI.into(),
        stream,
        headers: headers.as_slice().into(),
        body: req.body.as_ref().into(),
    };
    f(&raw)
}

/// An executor's answer within `limit`; past it the future is dropped (cancelled inside the
/// plugin) and the answer is a 504.
async fn bounded<R: TimedOut>(limit: Duration, future: impl Future<Output = R>) -> R {
    tokio::time::timeout(limit, future).await.unwrap_or_else(|_| R::timed_out(limit))
}

/// What an executor call answers when it took too long.
trait TimedOut {
    fn timed_out(limit: Duration) -> Self;
}

impl<T> TimedOut for RResult<T, ExecError> {
    fn timed_out(limit: Duration) -> Self {
        RErr(ExecError {
            status: 504,
            kind: "api_error".into(),
            error: ffi::PluginError {
                code: ffi::code::INTERNAL,
                message: format!("did not answer within {} ms (limits.executor_timeout_ms)", limit.as_millis()).into(),
            },
        })
    }
}

/// A stream's first item.
impl<T> TimedOut for Option<RResult<T, ExecError>> {
    fn timed_out(limit: Duration) -> Self {
        Some(RResult::timed_out(limit))
    }
}

/// A whole executor response as the gateway sends it on: its valid headers, and its status if
/// it is a final HTTP status (200 to 599; a 1xx would make the connection an upgrade).
fn answer(resp: ffi::ExecResponse, name: &str, request_id: &str) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let headers = header_map(resp.headers.iter().map(|h| (h.name.as_str(), h.value.as_str())));
    let status = resp.status;
    match StatusCode::from_u16(status) {
        Ok(s) if (200..600).contains(&status) => Ok((s, headers, Bytes::from(resp.body.into_vec()))),
        _ => {
            tracing::warn!(plugin = name, request_id, status, "executor answered with an invalid status");
            Err(ApiError::upstream(format!("executor `{name}` answered with status {status}: expected 200 to 599")))
        }
    }
}

fn not_loaded(name: &str, model: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "executor_unavailable",
        format!("model `{model}` is served by executor plugin `{name}`, which is not loaded as an executor"),
    )
}

/// An executor's failure as the client sees it: the status and error type it chose, or, for a
/// panic, a 500 naming the plugin (the panic's text goes to the log only).
fn exec_error(hook: &Hook<ffi::ExecutorV1>, which: usize, e: ExecError, request_id: &str) -> ApiError {
    let plugin = hook.slot.name();
    if e.error.code == ffi::code::PANIC {
        tracing::error!(plugin, request_id, "executor panicked: {}", e.error.message);
        return ApiError::plugin_failed(
            plugin,
            <ffi::ExecutorV1 as ffi::Capability>::HOOKS[which],
            e.error.code,
            request_id,
        );
    }
    tracing::info!(plugin, request_id, status = e.status, "executor failed: {}", e.error.message);
    let status = StatusCode::from_u16(e.status).ok().filter(|s| s.is_client_error() || s.is_server_error());
    ApiError::new(
        status.unwrap_or(StatusCode::BAD_GATEWAY),
        error_kind(e.kind.as_str()),
        "executor_error",
        format!("executor `{plugin}`: {}", e.error.message),
    )
}

/// Valid headers only: a plugin's malformed header is dropped, not sent.
pub(super) fn header_map<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            map.append(n, v);
        }
    }
    crate::upstream::forwardable(map)
}

type Chunks = InstanceStream<RResult<abi_stable::std_types::RVec<u8>, ExecError>>;

/// Waits for a stream's first item.
struct FirstChunk<'a>(&'a mut Chunks);

impl std::future::Future for FirstChunk<'_> {
    type Output = Option<RResult<abi_stable::std_types::RVec<u8>, ExecError>>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_next(cx)
    }
}

impl Outcome for Option<RResult<abi_stable::std_types::RVec<u8>, ExecError>> {
    fn error(&self) -> Option<&ffi::PluginError> {
        match self {
            Some(RErr(e)) => Some(&e.error),
            _ => None,
        }
    }
}

/// An executor's chunks as the stream task reads them. Holds the plugin instance (through the
/// stream) until the stream ends or the client goes away.
struct ExecutorEvents {
    first: Option<Bytes>,
    chunks: Chunks,
    name: String,
    done: bool,
    /// Each next chunk must come within this.
    timeout: Duration,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// For counting a panic mid-stream, as the first chunk's is.
    slot: Arc<Slot>,
    metrics: Arc<HookMetrics>,
}

impl PollEvents for ExecutorEvents {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, String>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.chunks.poll_next(cx) {
            Poll::Pending => {
                if self.idle.as_mut().poll(cx).is_ready() {
                    self.done = true;
                    self.metrics.errors.fetch_add(1, Relaxed);
                    tracing::warn!(plugin = %self.name, "executor sent no chunk within {} ms: stream cut", self.timeout.as_millis());
                    return Poll::Ready(Some(Err(format!(
                        "executor `{}` sent nothing for {} ms",
                        self.name,
                        self.timeout.as_millis()
                    ))));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(ROk(chunk))) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.idle.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(Bytes::from(chunk.into_vec()))))
            }
            Poll::Ready(Some(RErr(e))) => {
                self.done = true;
                self.metrics.errors.fetch_add(1, Relaxed);
                let what = if e.error.code == ffi::code::PANIC {
                    self.metrics.panics.fetch_add(1, Relaxed);
                    self.slot.on_panic(false);
                    "panicked"
                } else {
                    "failed"
                };
                tracing::warn!(plugin = %self.name, "executor {what} mid-stream: {}", e.error.message);
                Poll::Ready(Some(Err(format!("executor `{}` {what} mid-stream", self.name))))
            }
        }
    }
}

/// Checks, once per load, that every model routed to an executor has one that speaks OpenAI
/// chat in and out.
pub(super) fn check_executors<'a>(
    pipeline: &Pipeline,
    routed: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    for (model, name) in routed {
        let info = pipeline.describe_executor(name).map_err(|e| format!("model `{model}`: {e}"))?;
        for (what, formats) in [("input", &info.input_formats), ("output", &info.output_formats)] {
            if !formats.iter().any(|f| f == OPENAI) {
                return Err(format!(
                    "model `{model}`: executor `{name}` has {what} formats {formats:?}, expected one of them to be \
                     \"{OPENAI}\" (the gateway's chat endpoint speaks OpenAI chat)"
                ));
            }
        }
    }
    Ok(())
}
