//! One request's way through the gateway, in phase order: the pipeline owns the order and the
//! short-circuit rules; the HTTP layer only routes a request here.
//!
//! ```text
//! read + validate ─▶ pre_auth ─▶ auth ─▶ post_auth ─▶ before_selection ─▶ select upstream
//!   ─▶ after_selection ─▶ upstream or executor ─▶ response headers ─▶ response body (non-streaming)
//!                                                                └▶ stream chunks, per chunk (streaming)
//!                                                                   ─▶ stream complete
//!   ─▶ data collectors (queued, off the request path)
//! ```
//!
//! A plugin that answers (`Respond`) or fails closed stops the request phases: later request
//! hooks are skipped, the response headers phase still runs (so headers are stamped on every
//! response), the body phase (which is for upstream bodies) does not.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use plugin_abi::ffi::{RawUpstream, StreamSummary};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{ContextState, Pipeline, RecordSink, RequestState, ResponseState, Stop};
use crate::body::GatewayBody;
use crate::config::Limits;
use crate::error::ApiError;
use crate::pipeline::stream::ChunkData;
use crate::record::Record;
use crate::upstream::sse::SseFramer;
use crate::upstream::{Event, Route, Target, UpstreamReply, Upstreams, usage_of};

/// What every request needs besides its pipeline snapshot.
pub struct Env<'a> {
    pub limits: &'a Limits,
    /// Where finished requests' records go (the collector queue).
    pub sink: &'a Arc<dyn RecordSink>,
}

/// The fields of a chat request the gateway itself needs; the rest passes through untouched.
#[derive(Deserialize)]
struct ChatPeek<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(default)]
    stream: bool,
    messages: Vec<IgnoredAny>,
}

fn peek(body: &[u8]) -> Result<(String, bool), ApiError> {
    let p: ChatPeek<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid_request(
            "invalid_request",
            format!("invalid chat request: expected `model` and `messages`, found {e}"),
        ),
        _ => ApiError::invalid_request(
            "invalid_json",
            format!("request body is not valid JSON: expected a JSON object, found {e}"),
        ),
    })?;
    if p.messages.is_empty() {
        return Err(ApiError::invalid_request(
            "invalid_request",
            "`messages` must not be empty: expected at least one message",
        ));
    }
    Ok((p.model.into_owned(), p.stream))
}

/// Reads and checks the request; what fails here never reaches a plugin.
async fn read_request(
    limits: &Limits,
    req: Request<Incoming>,
    peer: SocketAddr,
    request_id: String,
) -> Result<RequestState, ApiError> {
    let (parts, body) = req.into_parts();
    let head_bytes: usize = parts.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if head_bytes > limits.max_header_bytes {
        return Err(ApiError::headers_too_large(limits.max_header_bytes, head_bytes));
    }
    let content_type =
        parts.headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match content_type.as_deref() {
        Some(ct) if ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")) => {}
        other => return Err(ApiError::unsupported_media_type(other.unwrap_or("(none)"))),
    }
    let body =
        read_body(body, limits.max_body_bytes, Duration::from_millis(limits.body_timeout_ms), &parts.headers).await?;
    let (model, stream) = peek(&body)?;
    let ctx = ContextState { request_id, model, client_ip: peer.ip().to_string(), ..ContextState::default() };
    let mut state = RequestState::new(parts.method, parts.uri, parts.headers, body, ctx);
    state.stream = stream;
    Ok(state)
}

/// A request body within `max` bytes (refused early when `Content-Length` says it is larger)
/// and `timeout`.
pub(crate) async fn read_body(
    body: Incoming,
    max: usize,
    timeout: Duration,
    headers: &HeaderMap,
) -> Result<Bytes, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > max as u64) {
        return Err(ApiError::too_large(max, Some(len)));
    }
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(ApiError::timeout("request body")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(max, None)),
        Ok(Err(e)) => Err(ApiError::invalid_request("invalid_body", format!("could not read the request body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The credential a request carries: a bearer token, else `x-api-key`.
pub(crate) fn credential(headers: &HeaderMap) -> &str {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(token) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            return token.trim();
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("").trim()
}

/// The request phases up to the upstream. Returns the route and whether to stream.
fn request_phases<'u>(
    upstreams: &'u Upstreams,
    pipeline: &Pipeline,
    req: &mut RequestState,
) -> Result<(&'u Route, bool), Stop> {
    pipeline.pre_auth(req)?;
    if pipeline.requires_auth() {
        let cred = credential(&req.headers).to_owned();
        pipeline.auth(req, &cred)?;
    }
    pipeline.post_auth(req)?;
    pipeline.before_selection(req)?;
    // Selection reads the model from the body the hooks so far left (read again only if one of
    // them replaced it or set the model).
    if std::mem::take(&mut req.body_changed) {
        (req.ctx.model, req.stream) = peek(&req.body)?;
    }
    let route = upstreams.route(&req.ctx.model)?;
    let base_url = match &route.target {
        Target::Upstream(i) => upstreams.upstreams[*i].base_url(),
        Target::Executor(_) => "",
    };
    let raw = RawUpstream {
        name: upstreams.owner(route).into(),
        kind: upstreams.owner_kind(route).into(),
        base_url: base_url.into(),
        model: route.upstream_model.as_str().into(),
    };
    pipeline.after_selection(req, &raw)?;
    // `after_selection` cannot change the route, but what it leaves is what goes upstream,
    // streamed or not as that body says.
    if std::mem::take(&mut req.body_changed) {
        req.stream = peek(&req.body)?.1;
    }
    Ok((route, req.stream))
}

pub(crate) fn into_response(resp: ResponseState, request_id: &str) -> Response<GatewayBody> {
    let mut out = Response::new(GatewayBody::full(resp.body));
    *out.status_mut() = resp.status;
    *out.headers_mut() = resp.headers;
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.headers_mut().insert("x-request-id", v);
    }
    out
}

fn error_state(e: &ApiError) -> ResponseState {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    e.add_headers(&mut headers);
    ResponseState { status: e.status, headers, body: e.body() }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads the request and runs the request phases, starting its record. `Err` is the answer to
/// a request that could not be read (its record already queued).
async fn begin<'u>(
    env: &Env<'_>,
    pipeline: &'u Arc<Pipeline>,
    request_id: String,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
) -> Result<(Record, RequestState, Result<(&'u Route, bool), Stop>), Response<GatewayBody>> {
    let mut record = Record {
        request_id: request_id.clone(),
        method: "POST".into(),
        path: req.uri().path().to_owned(),
        unix_ms: unix_ms(),
        ..Record::default()
    };
    let mut req = match read_request(env.limits, req, peer, request_id).await {
        Ok(r) => r,
        Err(e) => {
            let ctx = ContextState { request_id: record.request_id.clone(), ..ContextState::default() };
            return Err(finish(env.sink, pipeline, record, error_state(&e), &ctx, started));
        }
    };
    record.request_bytes = req.body.len() as u64;
    let phases = request_phases(&pipeline.upstreams, pipeline, &mut req);
    record.app_id.clone_from(&req.ctx.app_id);
    record.user_id.clone_from(&req.ctx.user_id);
    record.model.clone_from(&req.ctx.model);
    Ok((record, req, phases))
}

/// Runs the response headers phase on a response the gateway made itself (a plugin's answer or
/// an error), so that headers are stamped on it too. `failed`: it is an error already, whose
/// report wins over a failure of the phase.
fn with_headers_phase(pipeline: &Pipeline, ctx: &ContextState, mut resp: ResponseState, failed: bool) -> ResponseState {
    if let Err(e) = pipeline.response_headers(ctx, &mut resp) {
        if failed {
            tracing::warn!(request_id = %ctx.request_id, "response headers phase failed too: {e}");
        } else {
            resp = error_state(&e);
        }
    }
    resp
}

/// `POST /v1/chat/completions`: the whole phase order (see the module docs), from reading the
/// request to queueing its record.
pub async fn chat(
    env: &Env<'_>,
    pipeline: Arc<Pipeline>,
    request_id: String,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
) -> Response<GatewayBody> {
    // The request's span (see `crate::telemetry`): its hooks' and upstream call's spans are
    // children; a stream carries it until the stream ends. Disabled, it costs a check.
    let span = tracing::trace_span!(
        "chat",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.request.model = tracing::field::Empty,
        gen_ai.provider.name = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        gateway.request_id = %request_id,
        gateway.streamed = tracing::field::Empty,
    );
    let traced = span.clone();
    tracing::Instrument::instrument(chat_in(env, pipeline, request_id, req, peer, started, traced), span).await
}

async fn chat_in(
    env: &Env<'_>,
    pipeline: Arc<Pipeline>,
    request_id: String,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
    span: tracing::Span,
) -> Response<GatewayBody> {
    let upstreams = &*pipeline.upstreams;
    let (mut record, req, phases) = match begin(env, &pipeline, request_id, req, peer, started).await {
        Ok(begun) => begun,
        Err(resp) => return resp,
    };
    let (route, stream) = match phases {
        Ok(ok) => ok,
        Err(stop) => {
            // Short-circuit: later request hooks are skipped; the response headers phase still
            // runs (so headers are stamped on every response); the body phase, which is for
            // upstream bodies, does not.
            let resp = match stop {
                Stop::Respond(resp) => with_headers_phase(&pipeline, &req.ctx, resp, false),
                Stop::Error(e) => with_headers_phase(&pipeline, &req.ctx, error_state(&e), true),
            };
            return finish(env.sink, &pipeline, record, resp, &req.ctx, started);
        }
    };
    record.upstream = upstreams.owner(route).to_owned();
    let provider = match &route.target {
        Target::Upstream(i) => upstreams.upstreams[*i].kind(),
        Target::Executor(name) => name.as_str(),
    };
    span.record("gen_ai.provider.name", provider);
    // Until the response head arrives (a stream's events are the `chat` span's).
    let call_span = tracing::trace_span!(
        "upstream",
        otel.name = format!("chat {}", route.upstream_model),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = %route.upstream_model,
        gateway.upstream = %record.upstream,
    );
    let reply = match &route.target {
        Target::Upstream(i) => {
            let call = upstreams.upstreams[*i].call(req.body.clone(), route, stream);
            tracing::Instrument::instrument(call, call_span).await
        }
        Target::Executor(name) => {
            let timeout = Duration::from_millis(env.limits.executor_timeout_ms);
            let call = pipeline.execute(name, &req, &route.upstream_model, stream, timeout);
            tracing::Instrument::instrument(call, call_span).await
        }
    };
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            // The upstream or executor failed: its error still goes through the headers phase.
            let resp = with_headers_phase(&pipeline, &req.ctx, error_state(&e), true);
            return finish(env.sink, &pipeline, record, resp, &req.ctx, started);
        }
    };
    match reply {
        UpstreamReply::Full { status, headers, body } => {
            record.usage = usage_of(&body);
            let mut resp = ResponseState { status, headers, body };
            let phases = pipeline
                .response_headers(&req.ctx, &mut resp)
                .and_then(|()| pipeline.response_body(&req.ctx, &mut resp));
            if let Err(e) = phases {
                resp = error_state(&e);
            }
            record.ttft_us = started.elapsed().as_micros() as u64;
            finish(env.sink, &pipeline, record, resp, &req.ctx, started)
        }
        UpstreamReply::Stream { status, headers, events } => {
            record.streamed = true;
            let mut head = ResponseState { status, headers, body: Bytes::new() };
            if let Err(e) = pipeline.response_headers(&req.ctx, &mut head) {
                return finish(env.sink, &pipeline, record, error_state(&e), &req.ctx, started);
            }
            let filters = match pipeline.stream_start(&req.ctx, &head) {
                Ok(f) => f,
                Err(e) => {
                    return finish(env.sink, &pipeline, record, error_state(&e), &req.ctx, started);
                }
            };
            let request_id = req.ctx.request_id.clone();
            span.record("gateway.streamed", true);
            let task = StreamTask {
                span,
                sink: env.sink.clone(),
                pipeline,
                filters: Some(filters),
                events,
                ctx: req.ctx,
                record: Some(record),
                started,
                status,
                chunks: 0,
                bytes: 0,
                ended: None,
                out: SseFramer::default(),
                held: None,
            };
            // Polled by the connection as it writes: when the client goes away the body is
            // dropped, and so is the task, which then finishes the record (`Drop`).
            let frames = futures_util::stream::unfold(task, |mut task| async move {
                let frame = task.next_frame().await?;
                Some((frame, task))
            });
            let mut out = Response::new(GatewayBody::Frames(Box::pin(frames)));
            *out.status_mut() = head.status;
            *out.headers_mut() = head.headers;
            out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                out.headers_mut().insert("x-request-id", v);
            }
            out
        }
    }
}

/// Sends a whole response and queues its record.
fn finish(
    sink: &Arc<dyn RecordSink>,
    pipeline: &Arc<Pipeline>,
    mut record: Record,
    resp: ResponseState,
    ctx: &ContextState,
    started: Instant,
) -> Response<GatewayBody> {
    record.status = resp.status.as_u16();
    record.response_bytes = resp.body.len() as u64;
    record.latency_us = started.elapsed().as_micros() as u64;
    // The request's span is the current one; looking it up is work only a trace can use.
    if tracing::level_enabled!(tracing::Level::TRACE) {
        trace_outcome(&tracing::Span::current(), &record);
    }
    sink.submit(pipeline, record);
    into_response(resp, &ctx.request_id)
}

/// The request's model, tokens and status on its span (if it is traced).
fn trace_outcome(span: &tracing::Span, record: &Record) {
    if span.is_disabled() || span.metadata().is_none_or(|m| m.name() != "chat") {
        return;
    }
    crate::telemetry::rename(span, format!("chat {}", record.model));
    span.record("gen_ai.request.model", record.model.as_str());
    // As i64: OpenTelemetry has no unsigned integers (a u64 would arrive as a string).
    if let Some(usage) = &record.usage {
        span.record("gen_ai.usage.input_tokens", i64::try_from(usage.prompt_tokens).unwrap_or(i64::MAX));
        span.record("gen_ai.usage.output_tokens", i64::try_from(usage.completion_tokens).unwrap_or(i64::MAX));
    }
    span.record("http.response.status_code", i64::from(record.status));
    if record.status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// One stream: upstream events through the chunk plugins to the client, then the
/// stream-complete hooks and the record. It runs on the connection's task, a frame at a time as
/// the client takes them (see `next_frame`); whatever ends it (the upstream, an error, the client
/// leaving) ends in `finish`, exactly once.
struct StreamTask {
    /// The request's span, which ends with the stream.
    span: tracing::Span,
    sink: Arc<dyn RecordSink>,
    pipeline: Arc<Pipeline>,
    /// Dropped (ending the plugins' stream states) before the stream-complete hooks run.
    filters: Option<crate::pipeline::StreamFilters>,
    events: crate::upstream::Events,
    ctx: ContextState,
    /// Taken by `finish`.
    record: Option<Record>,
    started: Instant,
    status: StatusCode,
    chunks: u64,
    bytes: u64,
    /// Set when the last frame is made: whether the stream completed (`[DONE]` sent).
    ended: Option<bool>,
    /// Frames for the client, in a buffer reused from one write to the next.
    out: SseFramer,
    /// An event to send as it came, after the frame sent before it.
    held: Option<Bytes>,
}

/// What one event made of the stream.
enum Taken {
    /// Framed into `out` (or dropped by a plugin): more may follow in the same frame.
    Continue,
    /// To send as these bytes (the event as the upstream framed it).
    Send(Bytes),
    /// The stream is over: completed (`[DONE]` to send) or not.
    End(bool),
}

impl StreamTask {
    /// The next frame for the client. An event that no plugin changed, and that the upstream
    /// framed as the gateway frames, goes out as the bytes the upstream sent (no framing, no
    /// copy); the others that are ready are framed back to back into one frame. `None` once the
    /// stream is over and finished.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(held) = self.held.take() {
                return Some(held);
            }
            if self.ended.is_some() {
                break;
            }
            let next = match self.events.buffered() {
                Some(next) => next,
                None if !self.out.is_empty() => return Some(self.out.take()),
                None => self.events.next().await,
            };
            match self.take(next) {
                Taken::Continue => {}
                Taken::Send(bytes) if self.out.is_empty() => return Some(bytes),
                Taken::Send(bytes) => {
                    // What was framed before it goes first.
                    self.held = Some(bytes);
                    return Some(self.out.take());
                }
                Taken::End(completed) => {
                    if completed {
                        self.out.push_framed(b"data: [DONE]\n\n");
                    }
                    self.ended = Some(completed);
                }
            }
        }
        if !self.out.is_empty() {
            return Some(self.out.take());
        }
        self.finish();
        None
    }

    /// One upstream event through the chunk plugins: framed into the frame being built, or to
    /// be sent as it came.
    fn take(&mut self, next: Option<Result<Event, String>>) -> Taken {
        let event = match next {
            None => return Taken::End(true),
            Some(Ok(event)) => event,
            Some(Err(message)) => {
                tracing::warn!(request_id = %self.ctx.request_id, "{message}");
                self.out.push(&ApiError::upstream(message).body());
                return Taken::End(false);
            }
        };
        if let (Some(usage), Some(record)) = (usage_of(&event.data), self.record.as_mut()) {
            record.usage = Some(usage);
        }
        let filters = self.filters.as_mut().expect("filters live until the stream is finished");
        let data = match filters.on_chunk(event.data, &self.ctx.request_id) {
            Ok(Some(data)) => data,
            Ok(None) => return Taken::Continue,
            Err(e) => {
                self.out.push(&e.body());
                return Taken::End(false);
            }
        };
        if self.chunks == 0 {
            if let Some(record) = self.record.as_mut() {
                record.ttft_us = self.started.elapsed().as_micros() as u64;
            }
        }
        self.chunks += 1;
        self.bytes += data.len() as u64;
        match (data, event.framed) {
            (ChunkData::Upstream(_), Some(framed)) => Taken::Send(framed),
            (data, _) => {
                self.out.push(&data);
                Taken::Continue
            }
        }
    }

    /// The stream-complete hooks and the record; once.
    fn finish(&mut self) {
        let Some(mut record) = self.record.take() else { return };
        // Plugin stream state ends before stream-complete hooks run.
        drop(self.filters.take());
        let duration = self.started.elapsed();
        let summary = StreamSummary {
            status: self.status.as_u16(),
            chunks: self.chunks,
            bytes: self.bytes,
            duration_us: duration.as_micros() as u64,
            completed: self.ended == Some(true),
        };
        // The stream-complete hooks' spans are the request's (its frames are not entered: a
        // span entered at every poll costs more than the chunk).
        self.span.in_scope(|| self.pipeline.stream_complete(&self.ctx, &summary));
        record.status = self.status.as_u16();
        record.response_bytes = self.bytes;
        record.latency_us = duration.as_micros() as u64;
        trace_outcome(&self.span, &record);
        self.sink.submit(&self.pipeline, record);
    }
}

impl Drop for StreamTask {
    /// The client left (or the connection was cut) before the end: the stream is incomplete.
    fn drop(&mut self) {
        self.finish();
    }
}

/// `POST /v1/count_tokens`: a chat request's input tokens, counted by the executor its model
/// routes to, after the same request hooks a chat request goes through.
pub async fn count_tokens(
    env: &Env<'_>,
    pipeline: Arc<Pipeline>,
    request_id: String,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
) -> Response<GatewayBody> {
    let upstreams = &*pipeline.upstreams;
    let (record, req, phases) = match begin(env, &pipeline, request_id, req, peer, started).await {
        Ok(begun) => begun,
        Err(resp) => return resp,
    };
    let resp = match phases {
        Err(Stop::Respond(resp)) => resp,
        Err(Stop::Error(e)) => error_state(&e),
        Ok((route, _)) => match &route.target {
            Target::Executor(name) => match pipeline
                .count_tokens(name, &req, &route.upstream_model, Duration::from_millis(env.limits.executor_timeout_ms))
                .await
            {
                Ok(n) => ResponseState {
                    status: StatusCode::OK,
                    headers: json_headers(),
                    body: Bytes::from(
                        serde_json::json!({ "object": "token_count", "model": req.ctx.model, "input_tokens": n })
                            .to_string(),
                    ),
                },
                Err(e) => error_state(&e),
            },
            Target::Upstream(i) => error_state(&ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request_error",
                "count_tokens_unsupported",
                format!(
                    "model `{}` is served by upstream `{}`, which cannot count tokens: expected a model served by an executor plugin",
                    req.ctx.model,
                    upstreams.upstreams[*i].name()
                ),
            )),
        },
    };
    finish(env.sink, &pipeline, record, resp, &req.ctx, started)
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chat(model: &str, stream: bool) -> String {
        serde_json::json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": "x" }] })
            .to_string()
    }

    proptest! {
        /// The request reader's check: any bytes are a chat request or a 400 that says why.
        #[test]
        fn any_body_is_a_chat_request_or_a_400(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = peek(&body) {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                prop_assert!(e.message.contains("expected"), "{}", e.message);
            }
        }

        /// A valid request cut or corrupted anywhere is refused, never misread.
        #[test]
        fn a_cut_or_corrupted_request_is_refused(model in "[a-z0-9-]{1,12}", at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let body = chat(&model, true).into_bytes();
            let cut = at.index(body.len());
            prop_assert!(peek(&body[..cut]).is_err());
            let mut corrupted = body.clone();
            corrupted[cut] = byte;
            if let Ok((m, _)) = peek(&corrupted) {
                // A change inside the model name (or a whitespace swap) may still be valid JSON.
                prop_assert!(m.len() == model.len() || corrupted[cut].is_ascii_whitespace());
            }
        }

        /// Model and stream flag come back as sent, whatever the model's characters.
        #[test]
        fn chat_requests_give_their_model_and_stream_flag(model in "\\PC{0,24}", stream in any::<bool>()) {
            let (m, s) = peek(chat(&model, stream).as_bytes()).unwrap();
            prop_assert_eq!(m, model);
            prop_assert_eq!(s, stream);
        }

        /// Credential extraction takes any header values without panicking.
        #[test]
        fn credentials_never_panic(auth in proptest::collection::vec(any::<u8>(), 0..64), key in "[ -~]{0,32}") {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&auth) {
                headers.insert(header::AUTHORIZATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&key) {
                headers.insert("x-api-key", v);
            }
            let found = credential(&headers);
            prop_assert_eq!(found, found.trim());
        }
    }
}
