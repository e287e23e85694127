//! The embedded mock LLM: deterministic replies that echo the last user message, streamed in a
//! configured number of chunks with a configured delay. Needs no network.
//!
//! The gateway calls it in-process ([`MockUpstream::reply`]); [`MockUpstream::http`] answers
//! whole HTTP requests, for servers that put the mock on a socket: OpenAI's chat completions
//! and Anthropic's Messages API, streaming or not. Over HTTP, two OpenAI keys stand for a
//! provider's refusals, for credential pool tests: `Bearer mock-429` is rate limited (429),
//! `Bearer mock-401` is revoked (401); as Anthropic `x-api-key`s, `mock-429` and `mock-401`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::sse::{sse_event, sse_frame};
use crate::error::ApiError;
use crate::record::Usage;

pub struct MockUpstream {
    pub chunks: usize,
    pub chunk_delay: Duration,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct MockChat {
    #[serde(default)]
    messages: Vec<MockMessage>,
}

#[derive(Deserialize)]
struct MockMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        // Content parts: [{"type": "text", "text": "..."}]
        serde_json::Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(|t| t.as_str())).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// A prepared reply: its text split into chunks, and its usage.
pub struct MockReply {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub parts: Vec<String>,
    pub usage: Usage,
}

impl MockUpstream {
    pub fn new(chunks: usize, chunk_delay: Duration) -> Self {
        MockUpstream { chunks: chunks.max(1), chunk_delay, next_id: AtomicU64::new(1) }
    }

    pub fn reply(&self, body: &[u8], model: &str) -> Result<MockReply, ApiError> {
        let chat: MockChat = serde_json::from_slice(body)
            .map_err(|e| ApiError::upstream(format!("mock upstream: invalid request: {e}")))?;
        Ok(self.compose(&chat.messages, "", model, "chatcmpl-mock-"))
    }

    /// The reply to `messages`; `system` (a prompt outside the messages, as Anthropic's) only
    /// counts towards the prompt's usage.
    fn compose(&self, messages: &[MockMessage], system: &str, model: &str, id_prefix: &str) -> MockReply {
        let prompt: u64 = words(system) + messages.iter().map(|m| words(&text_of(&m.content))).sum::<u64>();
        let last_user = messages.iter().rev().find(|m| m.role == "user").map(|m| text_of(&m.content));
        let text = match last_user {
            Some(t) if !t.trim().is_empty() => format!("Mock reply to: {t}"),
            _ => "Mock reply.".to_owned(),
        };
        // Split at word boundaries into `chunks` parts; each part keeps its leading space.
        let tokens: Vec<&str> = text.split_inclusive(' ').collect();
        let per = tokens.len().div_ceil(self.chunks).max(1);
        let parts: Vec<String> = tokens.chunks(per).map(|c| c.concat()).collect();
        let completion = words(&text);
        MockReply {
            id: format!("{id_prefix}{}", self.next_id.fetch_add(1, Relaxed)),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            parts,
            usage: Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
        }
    }

    /// Answers one HTTP request, whatever carries it:
    ///
    /// - `POST …/chat/completions`: an OpenAI chat completion, or with `"stream": true` its
    ///   chunks as `data:` events ending with `data: [DONE]`;
    /// - `POST …/messages` (as `/v1/messages`): Anthropic's Messages API, which wants the
    ///   `x-api-key` and `anthropic-version` headers (any non-empty values), or with
    ///   `"stream": true` its named events from `message_start` to `message_stop`;
    /// - `POST …/messages/count_tokens`: `{"input_tokens": N}` for the same request;
    /// - anything else: 404 (Anthropic's error shape for paths with a `messages` segment,
    ///   OpenAI's otherwise), or 405 for a method other than POST on those two paths.
    ///
    /// Errors come in the shape of the API the path belongs to and say what was expected and
    /// what was found.
    pub fn http(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> MockHttpReply {
        let key = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
            match key("x-api-key") {
                Some("mock-429") => {
                    return anthropic_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        "Number of requests has exceeded your rate limit (mock key mock-429)".into(),
                    );
                }
                Some("mock-401") => {
                    return anthropic_error(
                        StatusCode::UNAUTHORIZED,
                        "authentication_error",
                        "invalid x-api-key (mock key mock-401 is revoked)".into(),
                    );
                }
                _ => {}
            }
        }
        if path.ends_with("/chat/completions") {
            match key("authorization") {
                Some("Bearer mock-429") => openai_error(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "rate_limit_exceeded",
                    "Rate limit reached for requests (mock key mock-429)",
                )),
                Some("Bearer mock-401") => {
                    openai_error(ApiError::unauthorized("Incorrect API key provided (mock key mock-401 is revoked)"))
                }
                _ => self.openai_http(method, path, body),
            }
        } else if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
            self.anthropic_http(method, path, headers, body)
        } else if path.split('/').any(|segment| segment == "messages") {
            anthropic_error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!("unknown path {path}; expected POST .../v1/messages"),
            )
        } else {
            openai_error(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                format!("unknown path {path}; expected POST .../chat/completions or POST .../v1/messages"),
            ))
        }
    }

    fn openai_http(&self, method: &Method, path: &str, body: &[u8]) -> MockHttpReply {
        #[derive(Deserialize)]
        struct Chat {
            #[serde(default)]
            model: String,
            #[serde(default)]
            stream: bool,
            #[serde(default)]
            messages: Vec<MockMessage>,
        }
        if *method != Method::POST {
            return openai_error(ApiError::method_not_allowed(method, path, "POST"));
        }
        let chat: Chat = match serde_json::from_slice(body) {
            Ok(chat) => chat,
            Err(e) => {
                return openai_error(ApiError::invalid_request(
                    "invalid_request",
                    format!("expected a JSON chat request (`messages` an array, `model` a string), found: {e}"),
                ));
            }
        };
        let answer = self.compose(&chat.messages, "", &chat.model, "chatcmpl-mock-");
        if !chat.stream {
            return MockHttpReply::Full { status: StatusCode::OK, content_type: JSON, body: answer.completion() };
        }
        let mut events: VecDeque<Bytes> = answer.chunks().iter().map(|c| sse_frame(c)).collect();
        events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        MockHttpReply::Stream { status: StatusCode::OK, events, delay: self.chunk_delay }
    }

    fn anthropic_http(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> MockHttpReply {
        if *method != Method::POST {
            return anthropic_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!("{method} is not allowed on {path}; expected POST"),
            );
        }
        if let Err(found) = non_empty_header(headers, "x-api-key") {
            return anthropic_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                format!("expected an x-api-key header (any non-empty value), found {found}"),
            );
        }
        if let Err(found) = non_empty_header(headers, "anthropic-version") {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("expected an anthropic-version header (such as 2023-06-01), found {found}"),
            );
        }
        let counting = path.ends_with("/messages/count_tokens");
        let request = match MessagesRequest::parse(body, counting) {
            Ok(request) => request,
            Err(message) => return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", message),
        };
        let answer = self.compose(&request.messages, &request.system, &request.model, "msg_mock_");
        if counting {
            let body = serde_json::json!({ "input_tokens": answer.usage.prompt_tokens });
            return MockHttpReply::Full {
                status: StatusCode::OK,
                content_type: JSON,
                body: Bytes::from(body.to_string()),
            };
        }
        if request.stream {
            MockHttpReply::Stream { status: StatusCode::OK, events: answer.message_events(), delay: self.chunk_delay }
        } else {
            MockHttpReply::Full { status: StatusCode::OK, content_type: JSON, body: answer.message() }
        }
    }
}

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

/// What [`MockUpstream::http`] answers, for the caller to put on its transport.
#[derive(Debug)]
pub enum MockHttpReply {
    /// One body.
    Full { status: StatusCode, content_type: &'static str, body: Bytes },
    /// A `text/event-stream` body: `events` (each one complete and SSE-framed) sent in order,
    /// waiting `delay` between one and the next.
    Stream { status: StatusCode, events: VecDeque<Bytes>, delay: Duration },
}

impl MockHttpReply {
    pub fn status(&self) -> StatusCode {
        match self {
            MockHttpReply::Full { status, .. } | MockHttpReply::Stream { status, .. } => *status,
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            MockHttpReply::Full { content_type, .. } => content_type,
            MockHttpReply::Stream { .. } => EVENT_STREAM,
        }
    }

    /// The reply as a transport sends it: status, content type, the body's frames in order (one
    /// for `Full`, one per event for `Stream`), and the pause between two frames.
    pub fn into_frames(self) -> (StatusCode, &'static str, VecDeque<Bytes>, Duration) {
        match self {
            MockHttpReply::Full { status, content_type, body } => {
                (status, content_type, VecDeque::from([body]), Duration::ZERO)
            }
            MockHttpReply::Stream { status, events, delay } => (status, EVENT_STREAM, events, delay),
        }
    }
}

fn openai_error(e: ApiError) -> MockHttpReply {
    MockHttpReply::Full { status: e.status, content_type: JSON, body: e.body() }
}

/// Anthropic's error shape: `{"type": "error", "error": {"type", "message"}}`.
fn anthropic_error(status: StatusCode, kind: &'static str, message: String) -> MockHttpReply {
    let body = json!({ "type": "error", "error": { "type": kind, "message": message } });
    MockHttpReply::Full { status, content_type: JSON, body: Bytes::from(body.to_string()) }
}

/// The header's value if present and not blank; otherwise what was found instead.
fn non_empty_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h [u8], &'static str> {
    match headers.get(name) {
        None => Err("none"),
        Some(value) if value.as_bytes().trim_ascii().is_empty() => Err("an empty value"),
        Some(value) => Ok(value.as_bytes()),
    }
}

/// A JSON value as an error message names it: its type, and a short value where one helps.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("the string {:?}...", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// The parts of an Anthropic Messages request the mock uses, checked as the real API checks them.
struct MessagesRequest {
    model: String,
    messages: Vec<MockMessage>,
    /// The system prompt's text, "" without one.
    system: String,
    stream: bool,
}

impl MessagesRequest {
    /// `counting`: a `count_tokens` request, which has no `max_tokens`.
    fn parse(body: &[u8], counting: bool) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("expected a JSON body, found invalid JSON: {e}"))?;
        let Value::Object(request) = value else {
            return Err(format!("expected the body to be a JSON object, found {}", describe(&value)));
        };
        let model = match request.get("model") {
            None => return Err("missing `model`: expected a string naming the model".to_owned()),
            Some(Value::String(model)) if !model.is_empty() => model.clone(),
            Some(other) => return Err(format!("`model`: expected a non-empty string, found {}", describe(other))),
        };
        match request.get("max_tokens") {
            None if counting => {}
            None => return Err("missing `max_tokens`: expected a positive integer".to_owned()),
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
            Some(other) => {
                return Err(format!("`max_tokens`: expected a positive integer, found {}", describe(other)));
            }
        }
        let messages = match request.get("messages") {
            None => return Err("missing `messages`: expected a non-empty array of messages".to_owned()),
            Some(Value::Array(messages)) if !messages.is_empty() => messages,
            Some(other) => {
                return Err(format!("`messages`: expected a non-empty array of messages, found {}", describe(other)));
            }
        };
        let messages = messages.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
        let system = match request.get("system") {
            None | Some(Value::Null) => String::new(),
            Some(system @ (Value::String(_) | Value::Array(_))) => text_of(system),
            Some(other) => {
                return Err(format!(
                    "`system`: expected a string or an array of text blocks, found {}",
                    describe(other)
                ));
            }
        };
        let stream = match request.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => *stream,
            Some(other) => return Err(format!("`stream`: expected a boolean, found {}", describe(other))),
        };
        Ok(MessagesRequest { model, messages, system, stream })
    }
}

/// `messages[i]`, checked: `role` "user" or "assistant", `content` a string or content blocks.
fn message(i: usize, message: &Value) -> Result<MockMessage, String> {
    let Value::Object(message) = message else {
        return Err(format!(
            "`messages[{i}]`: expected an object with `role` and `content`, found {}",
            describe(message)
        ));
    };
    let role = match message.get("role") {
        Some(Value::String(role)) if role == "user" || role == "assistant" => role.clone(),
        None => return Err(format!("`messages[{i}]`: missing `role`: expected \"user\" or \"assistant\"")),
        Some(other) => {
            return Err(format!("`messages[{i}].role`: expected \"user\" or \"assistant\", found {}", describe(other)));
        }
    };
    let content = match message.get("content") {
        Some(content @ (Value::String(_) | Value::Array(_))) => content.clone(),
        None => {
            return Err(format!("`messages[{i}]`: missing `content`: expected a string or an array of content blocks"));
        }
        Some(other) => {
            return Err(format!(
                "`messages[{i}].content`: expected a string or an array of content blocks, found {}",
                describe(other)
            ));
        }
    };
    Ok(MockMessage { role, content })
}

impl MockReply {
    fn usage_json(&self) -> serde_json::Value {
        json!({
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
        })
    }

    /// A `chat.completion` object.
    pub fn completion(&self) -> Bytes {
        let body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": self.parts.concat() },
                "finish_reason": "stop",
            }],
            "usage": self.usage_json(),
        });
        Bytes::from(body.to_string())
    }

    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> Bytes {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        Bytes::from(body.to_string())
    }

    /// The `chat.completion.chunk` payloads of a stream: the role, one per part, the finish, then
    /// usage (as with `stream_options.include_usage`).
    pub fn chunks(&self) -> VecDeque<Bytes> {
        let mut out = VecDeque::with_capacity(self.parts.len() + 3);
        out.push_back(self.chunk(json!({ "role": "assistant", "content": "" }), None));
        for part in &self.parts {
            out.push_back(self.chunk(json!({ "content": part }), None));
        }
        out.push_back(self.chunk(json!({}), Some("stop")));
        let usage = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage_json(),
        });
        out.push_back(Bytes::from(usage.to_string()));
        out
    }

    /// An Anthropic `message` object.
    fn message(&self) -> Bytes {
        let body = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{ "type": "text", "text": self.parts.concat() }],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": { "input_tokens": self.usage.prompt_tokens, "output_tokens": self.usage.completion_tokens },
        });
        Bytes::from(body.to_string())
    }

    /// An Anthropic message stream, each event framed (`event: TYPE`, `data: JSON`): the real
    /// API's sequence, with one `content_block_delta` per part.
    fn message_events(&self) -> VecDeque<Bytes> {
        fn event(name: &str, body: Value) -> Bytes {
            sse_event(name, body.to_string().as_bytes())
        }
        let mut out = VecDeque::with_capacity(self.parts.len() + 6);
        out.push_back(event(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": { "input_tokens": self.usage.prompt_tokens, "output_tokens": 1 },
                },
            }),
        ));
        out.push_back(event(
            "content_block_start",
            json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": { "type": "text", "text": "" },
            }),
        ));
        out.push_back(event("ping", json!({ "type": "ping" })));
        for part in &self.parts {
            out.push_back(event(
                "content_block_delta",
                json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": { "type": "text_delta", "text": part },
                }),
            ));
        }
        out.push_back(event("content_block_stop", json!({ "type": "content_block_stop", "index": 0 })));
        out.push_back(event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": "end_turn", "stop_sequence": null },
                "usage": { "output_tokens": self.usage.completion_tokens },
            }),
        ));
        out.push_back(event("message_stop", json!({ "type": "message_stop" })));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_deterministically_in_the_configured_chunks() {
        let mock = MockUpstream::new(3, Duration::ZERO);
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there my friend"}]}"#;
        let reply = mock.reply(body, "m").unwrap();
        assert_eq!(reply.parts.concat(), "Mock reply to: hello there my friend");
        assert_eq!(reply.parts.len(), 3);
        assert_eq!(reply.usage, Usage { prompt_tokens: 6, completion_tokens: 7, total_tokens: 13 });
        let chunks = reply.chunks();
        assert_eq!(chunks.len(), 3 + 3);
        let first: serde_json::Value = serde_json::from_slice(&chunks[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let completion: serde_json::Value = serde_json::from_slice(&reply.completion()).unwrap();
        assert_eq!(completion["choices"][0]["message"]["content"], "Mock reply to: hello there my friend");
    }

    fn anthropic_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", http::HeaderValue::from_static("sk-ant-test"));
        headers.insert("anthropic-version", http::HeaderValue::from_static("2023-06-01"));
        headers
    }

    const MESSAGES: &[u8] = br#"{"model":"claude-mock","max_tokens":64,"system":"be brief",
        "messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},
        {"role":"user","content":[{"type":"text","text":"hello there my friend"}]}]}"#;

    fn with_stream(body: &[u8]) -> Vec<u8> {
        let mut request: serde_json::Value = serde_json::from_slice(body).unwrap();
        request["stream"] = json!(true);
        request.to_string().into_bytes()
    }

    fn full(reply: MockHttpReply) -> (StatusCode, &'static str, serde_json::Value) {
        match reply {
            MockHttpReply::Full { status, content_type, body } => {
                (status, content_type, serde_json::from_slice(&body).unwrap())
            }
            MockHttpReply::Stream { .. } => panic!("expected a full reply, found a stream"),
        }
    }

    /// A stream's events as (name, data) pairs, checking each is framed as one named event.
    fn named_events(events: &VecDeque<Bytes>) -> Vec<(String, serde_json::Value)> {
        events
            .iter()
            .map(|e| {
                let text = std::str::from_utf8(e).unwrap();
                let (head, data) = text.strip_suffix("\n\n").unwrap().split_once('\n').unwrap();
                let name = head.strip_prefix("event: ").unwrap();
                let data: serde_json::Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], name, "event name and data type differ in {text:?}");
                (name.to_owned(), data)
            })
            .collect()
    }

    #[test]
    fn anthropic_messages_reply_in_anthropic_shape() {
        let mock = MockUpstream::new(3, Duration::ZERO);
        let (status, content_type, body) =
            full(mock.http(&Method::POST, "/v1/messages", &anthropic_headers(), MESSAGES));
        assert_eq!((status, content_type), (StatusCode::OK, "application/json"));
        assert!(body["id"].as_str().unwrap().starts_with("msg_mock_"), "{body}");
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "claude-mock");
        assert_eq!(body["content"], json!([{ "type": "text", "text": "Mock reply to: hello there my friend" }]));
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["stop_sequence"], serde_json::Value::Null);
        // Prompt: "be brief" + "hi" + "hello" + "hello there my friend"; the system prompt counts.
        assert_eq!(body["usage"], json!({ "input_tokens": 8, "output_tokens": 7 }));
        // Any path ending in /messages is the Messages API.
        let (status, _, body) = full(mock.http(&Method::POST, "/anthropic/messages", &anthropic_headers(), MESSAGES));
        assert_eq!((status, &body["type"]), (StatusCode::OK, &json!("message")));
    }

    #[test]
    fn anthropic_streams_follow_the_real_event_sequence() {
        let mock = MockUpstream::new(3, Duration::from_millis(7));
        let reply = mock.http(&Method::POST, "/v1/messages", &anthropic_headers(), &with_stream(MESSAGES));
        assert_eq!((reply.status(), reply.content_type()), (StatusCode::OK, "text/event-stream"));
        let MockHttpReply::Stream { events, delay, .. } = reply else { panic!("expected a stream") };
        assert_eq!(delay, Duration::from_millis(7));
        let events = named_events(&events);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let start = &events[0].1["message"];
        assert!(start["id"].as_str().unwrap().starts_with("msg_mock_"));
        assert_eq!(start["model"], "claude-mock");
        assert_eq!(start["content"], json!([]));
        assert_eq!(start["stop_reason"], serde_json::Value::Null);
        assert_eq!(start["usage"], json!({ "input_tokens": 8, "output_tokens": 1 }));
        assert_eq!(events[1].1["content_block"], json!({ "type": "text", "text": "" }));
        let text: String = events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| {
                assert_eq!((&d["index"], &d["delta"]["type"]), (&json!(0), &json!("text_delta")));
                d["delta"]["text"].as_str().unwrap().to_owned()
            })
            .collect();
        let (_, _, whole) = full(mock.http(&Method::POST, "/v1/messages", &anthropic_headers(), MESSAGES));
        assert_eq!(text, whole["content"][0]["text"].as_str().unwrap());
        assert_eq!(events[6].1["index"], 0);
        assert_eq!(events[7].1["delta"], json!({ "stop_reason": "end_turn", "stop_sequence": null }));
        assert_eq!(events[7].1["usage"], json!({ "output_tokens": 7 }));
    }

    #[test]
    fn anthropic_errors_have_anthropic_shape_and_status() {
        let mock = MockUpstream::new(3, Duration::ZERO);
        // (status, error type, message), checking the envelope on the way.
        let error = |method: &Method, path: &str, headers: &HeaderMap, body: &[u8]| {
            let (status, content_type, error) = full(mock.http(method, path, headers, body));
            assert_eq!(content_type, "application/json");
            assert_eq!(error["type"], "error", "{error}");
            let kind = error["error"]["type"].as_str().unwrap().to_owned();
            (status, kind, error["error"]["message"].as_str().unwrap().to_owned())
        };
        let assert_says = |(status, kind, message): (StatusCode, String, String),
                           expected: (StatusCode, &str, &str)| {
            assert_eq!((status, kind.as_str()), (expected.0, expected.1), "{message}");
            assert!(message.contains(expected.2), "{message:?} does not say {:?}", expected.2);
        };

        let ok = anthropic_headers();
        let mut no_key = ok.clone();
        no_key.remove("x-api-key");
        let mut empty_key = ok.clone();
        empty_key.insert("x-api-key", http::HeaderValue::from_static(" "));
        let mut no_version = ok.clone();
        no_version.remove("anthropic-version");
        let mut empty_version = ok.clone();
        empty_version.insert("anthropic-version", http::HeaderValue::from_static(""));
        let header_cases = [
            (
                &no_key,
                (
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "x-api-key header (any non-empty value), found none",
                ),
            ),
            (&empty_key, (StatusCode::UNAUTHORIZED, "authentication_error", "found an empty value")),
            (&no_version, (StatusCode::BAD_REQUEST, "invalid_request_error", "anthropic-version header")),
            (&empty_version, (StatusCode::BAD_REQUEST, "invalid_request_error", "anthropic-version header")),
        ];
        for (headers, expected) in header_cases {
            assert_says(error(&Method::POST, "/v1/messages", headers, MESSAGES), expected);
        }

        let body_cases: &[(&[u8], &str)] = &[
            (b"{not json", "found invalid JSON"),
            (b"[1]", "expected the body to be a JSON object, found an array of 1 items"),
            (br#"{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#, "missing `model`"),
            (br#"{"model":"","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#, "found the string \"\""),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#, "missing `max_tokens`"),
            (br#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#, "found the number 0"),
            (br#"{"model":"m","max_tokens":5}"#, "missing `messages`"),
            (br#"{"model":"m","max_tokens":5,"messages":[]}"#, "found an array of 0 items"),
            (br#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#, "`messages[0].role`"),
            (br#"{"model":"m","max_tokens":5,"messages":[{"role":"user"}]}"#, "missing `content`"),
            (br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"stream":1}"#, "`stream`"),
        ];
        for &(body, says) in body_cases {
            let found = error(&Method::POST, "/v1/messages", &ok, body);
            assert_says(found, (StatusCode::BAD_REQUEST, "invalid_request_error", says));
        }

        let found = error(&Method::GET, "/v1/messages", &ok, b"");
        assert_says(found, (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "GET is not allowed"));
        let found = error(&Method::POST, "/v1/messages/batches", &ok, MESSAGES);
        assert_says(found, (StatusCode::NOT_FOUND, "not_found_error", "unknown path /v1/messages/batches"));
    }

    #[test]
    fn openai_chat_over_http_is_the_in_process_reply() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello there my friend"}]}"#;
        let without_created = |mut v: serde_json::Value| {
            v.as_object_mut().unwrap().remove("created");
            v
        };
        let expected = MockUpstream::new(3, Duration::ZERO).reply(body, "m").unwrap();
        let mock = MockUpstream::new(3, Duration::from_millis(5));
        let (status, content_type, got) =
            full(mock.http(&Method::POST, "/v1/chat/completions", &HeaderMap::new(), body));
        assert_eq!((status, content_type), (StatusCode::OK, "application/json"));
        let completion: serde_json::Value = serde_json::from_slice(&expected.completion()).unwrap();
        assert_eq!(without_created(got), without_created(completion));

        let expected = MockUpstream::new(3, Duration::ZERO).reply(body, "m").unwrap();
        let mock = MockUpstream::new(3, Duration::from_millis(5));
        let reply = mock.http(&Method::POST, "/chat/completions", &HeaderMap::new(), &with_stream(body));
        let MockHttpReply::Stream { status, events, delay } = reply else { panic!("expected a stream") };
        assert_eq!((status, delay), (StatusCode::OK, Duration::from_millis(5)));
        assert_eq!(events.len(), expected.chunks().len() + 1);
        assert_eq!(events.back().map(|b| &b[..]), Some(&b"data: [DONE]\n\n"[..]));
        for (event, chunk) in events.iter().zip(expected.chunks()) {
            let payload = event.strip_prefix(b"data: ").unwrap().strip_suffix(b"\n\n").unwrap();
            let got: serde_json::Value = serde_json::from_slice(payload).unwrap();
            let chunk: serde_json::Value = serde_json::from_slice(&chunk).unwrap();
            assert_eq!(without_created(got), without_created(chunk));
        }
    }

    #[test]
    fn openai_paths_answer_openai_errors() {
        let mock = MockUpstream::new(3, Duration::ZERO);
        let cases: &[(&Method, &str, &[u8], StatusCode)] = &[
            (&Method::POST, "/v1/chat/completions", b"{not json", StatusCode::BAD_REQUEST),
            (&Method::POST, "/v1/chat/completions", br#"{"model":5}"#, StatusCode::BAD_REQUEST),
            (&Method::GET, "/v1/chat/completions", b"", StatusCode::METHOD_NOT_ALLOWED),
            (&Method::POST, "/v1/completions", b"{}", StatusCode::NOT_FOUND),
        ];
        for &(method, path, body, status) in cases {
            let (got, _, error) = full(mock.http(method, path, &HeaderMap::new(), body));
            assert_eq!(got, status, "{method} {path}");
            assert_eq!(error["error"]["type"], "invalid_request_error", "{method} {path}");
            assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
        }
    }
}
