//! Translation between the OpenAI Chat Completions API and the Anthropic Messages API.
//!
//! Everything here is pure: bytes in, bytes out, no I/O. Input comes from clients and from an
//! upstream, so nothing panics on it; every rejection is a [`TranslateError`] that says what was
//! expected, where, and what was found.
//!
//! Deliberate choices beyond a field-by-field copy (each keeps a valid OpenAI request from
//! becoming an Anthropic 400, or refuses it clearly where no faithful translation exists):
//! - `temperature` is clamped to Anthropic's range 0..=1 (OpenAI allows up to 2).
//! - `n` other than 1 is refused: Anthropic returns exactly one choice.
//! - Empty text is dropped (Anthropic rejects empty text blocks); a message left with no content
//!   is dropped before consecutive same-role messages are merged.
//! - In a merged user turn, `tool_result` blocks are moved before other blocks, as Anthropic
//!   requires; their relative order is kept.
//! - `tool_choice` and `parallel_tool_calls` are only sent when there are tools;
//!   `parallel_tool_calls: false` becomes `disable_parallel_tool_use: true`.
//! - Assistant tool-call `arguments` that are empty stand for `{}`; otherwise they must be a
//!   JSON object, which Anthropic requires of `input`.

use serde_json::{Map, Value, json};
use std::fmt;

/// What went wrong translating, for an OpenAI-shaped 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError(pub String);

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TranslateError {}

/// Token counts in OpenAI's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens) }
    }

    fn to_json(self, cached_tokens: Option<u64>) -> Value {
        let mut usage = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        });
        if let (Some(cached), Value::Object(m)) = (cached_tokens, &mut usage) {
            m.insert("prompt_tokens_details".into(), json!({ "cached_tokens": cached }));
        }
        usage
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers for reading untrusted JSON with useful messages.

type Obj = Map<String, Value>;

fn fail<T>(message: String) -> Result<T, TranslateError> {
    Err(TranslateError(message))
}

/// Describes a value for the "found ..." half of a message.
fn found(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::Bool(b)) => format!("the boolean {b}"),
        Some(Value::Number(n)) => format!("the number {n}"),
        Some(Value::String(s)) => format!("the string {:?}", truncate_chars(s, 40)),
        Some(Value::Array(a)) => format!("an array of {} item{}", a.len(), if a.len() == 1 { "" } else { "s" }),
        Some(Value::Object(_)) => "an object".into(),
    }
}

fn truncate_chars(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn expected<T>(what: &str, path: &str, v: Option<&Value>) -> Result<T, TranslateError> {
    fail(format!("expected `{path}` to be {what}, found {}", found(v)))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// A field that is absent or null counts as not given, as OpenAI treats it.
fn opt<'a>(m: &'a Obj, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn parse_object(bytes: &[u8], what: &str) -> Result<Obj, TranslateError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => fail(format!("expected {what} to be a JSON object, found {}", found(Some(&other)))),
        Err(e) => fail(format!("expected {what} to be JSON, found invalid JSON ({e})")),
    }
}

fn as_obj<'a>(v: Option<&'a Value>, path: &str) -> Result<&'a Obj, TranslateError> {
    match v {
        Some(Value::Object(m)) => Ok(m),
        other => expected("an object", path, other),
    }
}

fn req_str<'a>(m: &'a Obj, key: &str, path: &str) -> Result<&'a str, TranslateError> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s),
        other => expected("a string", &join(path, key), other),
    }
}

fn opt_str<'a>(m: &'a Obj, key: &str, path: &str) -> Result<Option<&'a str>, TranslateError> {
    match opt(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        other => expected("a string", &join(path, key), other),
    }
}

fn opt_u64(m: &Obj, key: &str, path: &str) -> Result<Option<u64>, TranslateError> {
    match opt(m, key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None => expected("a non-negative integer", &join(path, key), Some(v)),
        },
    }
}

fn opt_number<'a>(m: &'a Obj, key: &str) -> Result<Option<(&'a Value, f64)>, TranslateError> {
    match opt(m, key) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) => Ok(Some((v, f))),
            None => expected("a number", key, Some(v)),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// OpenAI chat request JSON -> Anthropic Messages request JSON body (bytes), for `upstream_model`.
/// `default_max_tokens` applies when the request has neither `max_tokens` nor `max_completion_tokens`.
pub fn request_to_anthropic(
    openai_body: &[u8],
    upstream_model: &str,
    default_max_tokens: u64,
    stream: bool,
) -> Result<Vec<u8>, TranslateError> {
    let req = parse_object(openai_body, "the request body")?;
    let mut out = Obj::new();
    out.insert("model".into(), upstream_model.into());

    let messages = match opt(&req, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        other => return expected("a non-empty array of messages", "messages", other),
    };
    let (system, messages) = convert_messages(messages)?;
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }
    out.insert("messages".into(), messages.into());

    // `max_completion_tokens` replaced the deprecated `max_tokens`; it wins when both are sent.
    let max_tokens = match opt_u64(&req, "max_completion_tokens", "")? {
        Some(n) => n,
        None => opt_u64(&req, "max_tokens", "")?.unwrap_or(default_max_tokens),
    };
    if max_tokens == 0 {
        return fail("expected `max_completion_tokens` (or `max_tokens`) to be at least 1, found 0".into());
    }
    out.insert("max_tokens".into(), max_tokens.into());

    if let Some(n) = opt(&req, "n").filter(|n| n.as_u64() != Some(1)) {
        return expected("1 (the upstream returns exactly one choice)", "n", Some(n));
    }
    if let Some((v, t)) = opt_number(&req, "temperature")? {
        // OpenAI accepts 0..=2, Anthropic 0..=1.
        let t = if (0.0..=1.0).contains(&t) { v.clone() } else { t.clamp(0.0, 1.0).into() };
        out.insert("temperature".into(), t);
    }
    if let Some((v, _)) = opt_number(&req, "top_p")? {
        out.insert("top_p".into(), v.clone());
    }
    if let Some(stop) = opt(&req, "stop") {
        let sequences: Vec<Value> = match stop {
            Value::String(s) => vec![s.as_str().into()],
            Value::Array(a) => {
                for (i, s) in a.iter().enumerate() {
                    if !s.is_string() {
                        return expected("a string", &format!("stop[{i}]"), Some(s));
                    }
                }
                a.clone()
            }
            other => return expected("a string or an array of strings", "stop", Some(other)),
        };
        if !sequences.is_empty() {
            out.insert("stop_sequences".into(), sequences.into());
        }
    }
    convert_tools(&req, &mut out)?;
    if let Some(user) = opt_str(&req, "user", "")? {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    out.insert("stream".into(), stream.into());
    Ok(Value::Object(out).to_string().into_bytes())
}

const ROLES: &str = "\"system\", \"developer\", \"user\", \"assistant\" or \"tool\"";

/// Returns the system texts and the Anthropic messages, merged so that roles alternate.
fn convert_messages(messages: &[Value]) -> Result<(Vec<String>, Vec<Value>), TranslateError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_obj(Some(message), &path)?;
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            other => return expected(ROLES, &join(&path, "role"), other),
        };
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_parts(m.get("content"), &join(&path, "content"))?);
                continue;
            }
            "user" => ("user", user_content(m.get("content"), &join(&path, "content"))?),
            "assistant" => ("assistant", assistant_content(m, &path)?),
            "tool" => ("user", vec![tool_result(m, &path)?]),
            _ => return expected(ROLES, &join(&path, "role"), m.get("role")),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return fail("expected `messages` to contain a user or assistant message with content, found none".into());
    }
    let messages = turns
        .into_iter()
        .map(|(role, mut content)| {
            if role == "user" {
                // Anthropic wants a user turn's tool results before anything else in it.
                let (mut results, rest): (Vec<Value>, Vec<Value>) =
                    content.into_iter().partition(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
                results.extend(rest);
                content = results;
            }
            json!({ "role": role, "content": content })
        })
        .collect();
    Ok((system, messages))
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

/// Content that may only be text: a string or an array of `text` parts. Empty texts are dropped.
fn text_parts(content: Option<&Value>, path: &str) -> Result<Vec<String>, TranslateError> {
    match content {
        Some(Value::String(s)) => Ok(if s.is_empty() { vec![] } else { vec![s.clone()] }),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let part_path = format!("{path}[{i}]");
                let p = as_obj(Some(part), &part_path)?;
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = req_str(p, "text", &part_path)?;
                        if !text.is_empty() {
                            texts.push(text.to_string());
                        }
                    }
                    _ => return expected("\"text\"", &join(&part_path, "type"), p.get("type")),
                }
            }
            Ok(texts)
        }
        other => expected("a string or an array of text parts", path, other),
    }
}

fn user_content(content: Option<&Value>, path: &str) -> Result<Vec<Value>, TranslateError> {
    let Some(Value::Array(parts)) = content else {
        return Ok(text_parts(content, path)?.iter().map(|t| text_block(t)).collect());
    };
    let mut blocks = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let part_path = format!("{path}[{i}]");
        let p = as_obj(Some(part), &part_path)?;
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = req_str(p, "text", &part_path)?;
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
            Some("image_url") => blocks.push(image_block(p, &part_path)?),
            _ => return expected("\"text\" or \"image_url\"", &join(&part_path, "type"), p.get("type")),
        }
    }
    Ok(blocks)
}

fn image_block(part: &Obj, path: &str) -> Result<Value, TranslateError> {
    // `image_url` is `{url, detail?}`; a bare string is an old form some clients still send.
    let url_path = join(path, "image_url");
    let url = match part.get("image_url") {
        Some(Value::String(url)) => url.as_str(),
        Some(Value::Object(o)) => req_str(o, "url", &url_path)?,
        other => return expected("an object with a `url`", &url_path, other),
    };
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    };
    // data:[<media type>][;<parameter>]*;base64,<data>
    let data_url = || {
        fail(format!(
            "expected `{url_path}.url` to be an http(s) URL or a data URL like \"data:image/png;base64,...\", found {}",
            found(Some(&Value::String(url.into())))
        ))
    };
    let Some((header, data)) = rest.split_once(',') else { return data_url() };
    let Some(header) = header.strip_suffix(";base64") else { return data_url() };
    let media_type = header.split(';').next().unwrap_or_default();
    if media_type.is_empty() {
        return data_url();
    }
    Ok(json!({ "type": "image", "source": { "type": "base64", "media_type": media_type, "data": data } }))
}

fn assistant_content(m: &Obj, path: &str) -> Result<Vec<Value>, TranslateError> {
    let content_path = join(path, "content");
    let mut blocks = Vec::new();
    match opt(m, "content") {
        None => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                blocks.push(text_block(s));
            }
        }
        Some(Value::Array(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                let part_path = format!("{content_path}[{i}]");
                let p = as_obj(Some(part), &part_path)?;
                let text = match p.get("type").and_then(Value::as_str) {
                    Some("text") => req_str(p, "text", &part_path)?,
                    Some("refusal") => req_str(p, "refusal", &part_path)?,
                    _ => return expected("\"text\" or \"refusal\"", &join(&part_path, "type"), p.get("type")),
                };
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
        }
        other => return expected("a string, an array of content parts or null", &content_path, other),
    }
    let calls_path = join(path, "tool_calls");
    let calls = match opt(m, "tool_calls") {
        None => return Ok(blocks),
        Some(Value::Array(calls)) => calls,
        other => return expected("an array of tool calls", &calls_path, other),
    };
    for (i, call) in calls.iter().enumerate() {
        let call_path = format!("{calls_path}[{i}]");
        let c = as_obj(Some(call), &call_path)?;
        if let Some(kind) = opt(c, "type").filter(|k| k.as_str() != Some("function")) {
            return expected("\"function\"", &join(&call_path, "type"), Some(kind));
        }
        let id = req_str(c, "id", &call_path)?;
        let function_path = join(&call_path, "function");
        let f = as_obj(c.get("function"), &function_path)?;
        let name = req_str(f, "name", &function_path)?;
        let arguments = req_str(f, "arguments", &function_path)?;
        let arguments_path = join(&function_path, "arguments");
        let input = if arguments.trim().is_empty() {
            Value::Object(Obj::new())
        } else {
            match serde_json::from_str::<Value>(arguments) {
                Ok(v @ Value::Object(_)) => v,
                Ok(other) => {
                    return fail(format!(
                        "expected `{arguments_path}` to hold a JSON object, found {}",
                        found(Some(&other))
                    ));
                }
                Err(e) => {
                    return fail(format!(
                        "expected `{arguments_path}` to hold a JSON object, found invalid JSON ({e})"
                    ));
                }
            }
        };
        blocks.push(json!({ "type": "tool_use", "id": id, "name": name, "input": input }));
    }
    Ok(blocks)
}

fn tool_result(m: &Obj, path: &str) -> Result<Value, TranslateError> {
    let id = req_str(m, "tool_call_id", path)?;
    let content_path = join(path, "content");
    let content: Value = match m.get("content") {
        Some(Value::String(s)) => s.as_str().into(),
        Some(Value::Array(_)) => text_parts(m.get("content"), &content_path)?.iter().map(|t| text_block(t)).collect(),
        other => return expected("a string or an array of text parts", &content_path, other),
    };
    Ok(json!({ "type": "tool_result", "tool_use_id": id, "content": content }))
}

fn convert_tools(req: &Obj, out: &mut Obj) -> Result<(), TranslateError> {
    let tools = match opt(req, "tools") {
        None => return Ok(()),
        Some(Value::Array(tools)) => tools,
        other => return expected("an array of tools", "tools", other),
    };
    let mut converted = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        let t = as_obj(Some(tool), &path)?;
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return expected("\"function\"", &join(&path, "type"), t.get("type"));
        }
        let function_path = join(&path, "function");
        let f = as_obj(t.get("function"), &function_path)?;
        let mut tool = Obj::new();
        tool.insert("name".into(), req_str(f, "name", &function_path)?.into());
        if let Some(description) = opt_str(f, "description", &function_path)? {
            tool.insert("description".into(), description.into());
        }
        // Anthropic requires a schema; a function without parameters takes none.
        let schema = match opt(f, "parameters") {
            None => json!({ "type": "object", "properties": {} }),
            Some(v @ Value::Object(_)) => v.clone(),
            other => return expected("a JSON Schema object", &join(&function_path, "parameters"), other),
        };
        tool.insert("input_schema".into(), schema);
        converted.push(Value::Object(tool));
    }
    if converted.is_empty() {
        return Ok(());
    }
    out.insert("tools".into(), converted.into());

    let mut choice = match opt(req, "tool_choice") {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({ "type": "auto" })),
            "required" => Some(json!({ "type": "any" })),
            "none" => Some(json!({ "type": "none" })),
            _ => {
                return expected(
                    "\"auto\", \"required\", \"none\" or a function",
                    "tool_choice",
                    opt(req, "tool_choice"),
                );
            }
        },
        Some(Value::Object(c)) => {
            if c.get("type").and_then(Value::as_str) != Some("function") {
                return expected("\"function\"", "tool_choice.type", c.get("type"));
            }
            let f = as_obj(c.get("function"), "tool_choice.function")?;
            Some(json!({ "type": "tool", "name": req_str(f, "name", "tool_choice.function")? }))
        }
        other => return expected("\"auto\", \"required\", \"none\" or a function", "tool_choice", other),
    };
    match opt(req, "parallel_tool_calls") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => match choice.get_or_insert_with(|| json!({ "type": "auto" })) {
            Value::Object(c) if c.get("type").and_then(Value::as_str) != Some("none") => {
                c.insert("disable_parallel_tool_use".into(), true.into());
            }
            _ => {}
        },
        other => return expected("a boolean", "parallel_tool_calls", other),
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Responses

fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens" | "model_context_window_exceeded") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        // end_turn, stop_sequence, pause_turn and reasons added later.
        Some(_) => "stop".into(),
    }
}

/// The counts an Anthropic `usage` object gives, each absent when not given.
#[derive(Default)]
struct AnthropicUsage {
    /// `input_tokens` plus cache writes and reads, which Anthropic counts apart from it.
    prompt: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
}

fn read_usage(usage: Option<&Value>, path: &str) -> Result<AnthropicUsage, TranslateError> {
    let u = match usage {
        None | Some(Value::Null) => return Ok(AnthropicUsage::default()),
        Some(v) => as_obj(Some(v), path)?,
    };
    let input = opt_u64(u, "input_tokens", path)?;
    let cache_creation = opt_u64(u, "cache_creation_input_tokens", path)?;
    let cache_read = opt_u64(u, "cache_read_input_tokens", path)?;
    let prompt = match (input, cache_creation, cache_read) {
        (None, None, None) => None,
        _ => {
            Some(input.unwrap_or(0).saturating_add(cache_creation.unwrap_or(0)).saturating_add(cache_read.unwrap_or(0)))
        }
    };
    Ok(AnthropicUsage { prompt, output: opt_u64(u, "output_tokens", path)?, cache_read })
}

/// The `message` of an Anthropic error body, if it has the documented shape.
fn error_parts(body: &Obj) -> Option<(Option<&str>, &str)> {
    let e = body.get("error")?.as_object()?;
    Some((e.get("type").and_then(Value::as_str), e.get("message")?.as_str()?))
}

/// Anthropic non-streaming response JSON -> OpenAI `chat.completion` JSON bytes, with `model` =
/// the model the client asked for; also returns usage.
pub fn response_to_openai(
    anthropic_body: &[u8],
    model: &str,
    created: u64,
) -> Result<(Vec<u8>, Usage), TranslateError> {
    let resp = parse_object(anthropic_body, "the upstream response")?;
    if resp.get("type").and_then(Value::as_str) == Some("error") {
        let message = error_parts(&resp).map_or("no message", |(_, m)| m);
        return fail(format!("expected an upstream message, found an upstream error: {message}"));
    }
    let id = req_str(&resp, "id", "")?;
    let blocks = match resp.get("content") {
        Some(Value::Array(blocks)) => blocks,
        other => return expected("an array of content blocks", "content", other),
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let path = format!("content[{i}]");
        let b = as_obj(Some(block), &path)?;
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(req_str(b, "text", &path)?),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| Value::Object(Obj::new()));
                tool_calls.push(json!({
                    "id": req_str(b, "id", &path)?,
                    "type": "function",
                    "function": { "name": req_str(b, "name", &path)?, "arguments": input.to_string() },
                }));
            }
            // thinking, redacted_thinking, server tool blocks: nothing in OpenAI's shape for them.
            _ => {}
        }
    }
    let stop_reason = opt_str(&resp, "stop_reason", "")?;
    let counts = read_usage(resp.get("usage"), "usage")?;
    let usage = Usage::new(counts.prompt.unwrap_or(0), counts.output.unwrap_or(0));

    let content: Value = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { text.into() };
    let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
    if let (false, Value::Object(m)) = (tool_calls.is_empty(), &mut message) {
        m.insert("tool_calls".into(), tool_calls.into());
    }
    let body = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(stop_reason) }],
        "usage": usage.to_json(counts.cache_read),
    });
    Ok((body.to_string().into_bytes(), usage))
}

// ---------------------------------------------------------------------------------------------
// Errors

const RAW_ERROR_LIMIT: usize = 500;

fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// At most `RAW_ERROR_LIMIT` bytes of `body` as text, cut on a character boundary.
fn raw_text(body: &[u8]) -> String {
    let mut cut = &body[..body.len().min(RAW_ERROR_LIMIT)];
    match std::str::from_utf8(cut) {
        // Only an incomplete character at the end: drop it rather than show a replacement.
        Err(e) if e.error_len().is_none() => cut = &cut[..e.valid_up_to()],
        _ => {}
    }
    String::from_utf8_lossy(cut).trim().to_string()
}

/// Anthropic error response body (`{"type":"error","error":{"type","message"}}`) + HTTP status ->
/// (OpenAI error type, message). Unknown shapes keep the raw text (truncated to 500 bytes).
pub fn error_to_openai(status: u16, anthropic_body: &[u8]) -> (String, String) {
    let body = serde_json::from_slice::<Value>(anthropic_body).ok();
    if let Some((kind, message)) = body.as_ref().and_then(Value::as_object).and_then(error_parts) {
        let kind = match kind {
            Some("invalid_request_error" | "not_found_error" | "request_too_large") => "invalid_request_error",
            Some("authentication_error") => "authentication_error",
            Some("permission_error") => "permission_error",
            Some("rate_limit_error") => "rate_limit_error",
            Some("api_error" | "overloaded_error") => "api_error",
            _ => error_type_for_status(status),
        };
        return (kind.to_string(), message.to_string());
    }
    let text = raw_text(anthropic_body);
    let message = if text.is_empty() { format!("upstream returned HTTP {status} with an empty body") } else { text };
    (error_type_for_status(status).to_string(), message)
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// Turns Anthropic SSE events into OpenAI `chat.completion.chunk` JSON payloads (no `data: `
/// framing, no `[DONE]`).
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    created: u64,
    /// "chatcmpl-" + the Anthropic message id, once `message_start` has been seen.
    id: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: Option<u64>,
    /// Anthropic content block index -> OpenAI tool call index, for `tool_use` blocks.
    tool_blocks: Vec<(u64, usize)>,
    finished: bool,
}

impl StreamTranslator {
    pub fn new(model: &str, created: u64) -> Self {
        StreamTranslator {
            model: model.to_string(),
            created,
            id: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: None,
            tool_blocks: Vec::new(),
            finished: false,
        }
    }

    pub fn usage(&self) -> Usage {
        Usage::new(self.prompt_tokens, self.completion_tokens)
    }

    /// Whether `message_stop` has been seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// One Anthropic event: its `event:` name and its `data:` JSON. Returns zero or more OpenAI
    /// chunk payloads. Unknown events are ignored, as Anthropic asks of clients; so is anything
    /// after `message_stop`.
    pub fn on_event(&mut self, event: &str, data: &[u8]) -> Result<Vec<Vec<u8>>, TranslateError> {
        if self.finished {
            return Ok(Vec::new());
        }
        if matches!(event, "ping" | "content_block_stop") {
            return Ok(Vec::new());
        }
        if event == "error" {
            return Err(stream_error(data));
        }
        let known = ["message_start", "content_block_start", "content_block_delta", "message_delta", "message_stop"];
        if !known.contains(&event) && !matches!(event, "message" | "") {
            return Ok(Vec::new());
        }
        let data_obj = parse_object(data, &format!("the data of the `{event}` event"))?;
        // Without an `event:` line the SSE event is called "message"; the data says what it is.
        let kind = match event {
            "message" | "" => data_obj.get("type").and_then(Value::as_str).unwrap_or(""),
            _ => event,
        };
        let d = &data_obj;
        match kind {
            "message_start" => self.message_start(d),
            "content_block_start" => self.content_block_start(d),
            "content_block_delta" => self.content_block_delta(d),
            "message_delta" => self.message_delta(d),
            "message_stop" => self.message_stop(),
            "error" => Err(stream_error(data)),
            _ => Ok(Vec::new()),
        }
    }

    fn id(&self, event: &str) -> Result<&str, TranslateError> {
        match &self.id {
            Some(id) => Ok(id),
            None => fail(format!("expected `message_start` before `{event}`, found `{event}` first")),
        }
    }

    fn chunk(&self, event: &str, delta: Value, finish_reason: Value) -> Result<Vec<u8>, TranslateError> {
        let chunk = json!({
            "id": self.id(event)?,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        });
        Ok(chunk.to_string().into_bytes())
    }

    fn message_start(&mut self, d: &Obj) -> Result<Vec<Vec<u8>>, TranslateError> {
        if self.id.is_some() {
            return fail("expected one `message_start` event, found a second".into());
        }
        let message = as_obj(d.get("message"), "message")?;
        self.id = Some(format!("chatcmpl-{}", req_str(message, "id", "message")?));
        let counts = read_usage(message.get("usage"), "message.usage")?;
        self.prompt_tokens = counts.prompt.unwrap_or(0);
        self.completion_tokens = counts.output.unwrap_or(0);
        self.cached_tokens = counts.cache_read;
        Ok(vec![self.chunk("message_start", json!({ "role": "assistant", "content": "" }), Value::Null)?])
    }

    fn content_block_start(&mut self, d: &Obj) -> Result<Vec<Vec<u8>>, TranslateError> {
        const EVENT: &str = "content_block_start";
        self.id(EVENT)?;
        let index = block_index(d)?;
        let block = as_obj(d.get("content_block"), "content_block")?;
        match block.get("type").and_then(Value::as_str) {
            Some("text") => match opt_str(block, "text", "content_block")? {
                Some(text) if !text.is_empty() => {
                    Ok(vec![self.chunk(EVENT, json!({ "content": text }), Value::Null)?])
                }
                _ => Ok(Vec::new()),
            },
            Some("tool_use") => {
                if self.tool_blocks.iter().any(|&(b, _)| b == index) {
                    return fail(format!("expected content block {index} to start once, found a second start"));
                }
                let tool_index = self.tool_blocks.len();
                let call = json!({
                    "index": tool_index,
                    "id": req_str(block, "id", "content_block")?,
                    "type": "function",
                    "function": { "name": req_str(block, "name", "content_block")?, "arguments": "" },
                });
                self.tool_blocks.push((index, tool_index));
                Ok(vec![self.chunk(EVENT, json!({ "tool_calls": [call] }), Value::Null)?])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn content_block_delta(&mut self, d: &Obj) -> Result<Vec<Vec<u8>>, TranslateError> {
        const EVENT: &str = "content_block_delta";
        self.id(EVENT)?;
        let index = block_index(d)?;
        let delta = as_obj(d.get("delta"), "delta")?;
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = req_str(delta, "text", "delta")?;
                if text.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![self.chunk(EVENT, json!({ "content": text }), Value::Null)?])
            }
            Some("input_json_delta") => {
                let partial = req_str(delta, "partial_json", "delta")?;
                // Server tool blocks also stream input; only client tool calls are shown.
                let Some(&(_, tool_index)) = self.tool_blocks.iter().find(|&&(b, _)| b == index) else {
                    return Ok(Vec::new());
                };
                if partial.is_empty() {
                    return Ok(Vec::new());
                }
                let call = json!({ "index": tool_index, "function": { "arguments": partial } });
                Ok(vec![self.chunk(EVENT, json!({ "tool_calls": [call] }), Value::Null)?])
            }
            // thinking_delta, signature_delta, citations_delta and later additions.
            _ => Ok(Vec::new()),
        }
    }

    fn message_delta(&mut self, d: &Obj) -> Result<Vec<Vec<u8>>, TranslateError> {
        const EVENT: &str = "message_delta";
        self.id(EVENT)?;
        let delta = as_obj(d.get("delta"), "delta")?;
        let stop_reason = opt_str(delta, "stop_reason", "delta")?;
        // Counts here are cumulative; input counts appear only when they changed (server tools).
        let counts = read_usage(d.get("usage"), "usage")?;
        if let Some(prompt) = counts.prompt {
            self.prompt_tokens = prompt;
            self.cached_tokens = counts.cache_read;
        }
        if let Some(output) = counts.output {
            self.completion_tokens = output;
        }
        Ok(vec![self.chunk(EVENT, json!({}), finish_reason(stop_reason))?])
    }

    fn message_stop(&mut self) -> Result<Vec<Vec<u8>>, TranslateError> {
        let chunk = json!({
            "id": self.id("message_stop")?,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage().to_json(self.cached_tokens),
        });
        self.finished = true;
        Ok(vec![chunk.to_string().into_bytes()])
    }
}

fn block_index(d: &Obj) -> Result<u64, TranslateError> {
    match d.get("index").and_then(Value::as_u64) {
        Some(i) => Ok(i),
        None => expected("a non-negative integer", "index", d.get("index")),
    }
}

/// The message of an Anthropic `error` event, or its raw text.
fn stream_error(data: &[u8]) -> TranslateError {
    let body = serde_json::from_slice::<Value>(data).ok();
    if let Some((_, message)) = body.as_ref().and_then(Value::as_object).and_then(error_parts) {
        return TranslateError(message.to_string());
    }
    let text = raw_text(data);
    TranslateError(if text.is_empty() { "upstream stream error without a message".into() } else { text })
}

/// Splits an SSE byte stream into (event name, data) pairs across arbitrary chunk boundaries.
///
/// Follows the WHATWG event-stream rules: lines end in `\n`, `\r\n` or `\r`; `data` lines are
/// joined with `\n`; a line starting with `:` is a comment; one space after the colon is dropped;
/// an event without an `event:` line is called "message"; an event without `data` is not
/// dispatched; a leading byte order mark is ignored; `id` and `retry` are ignored. Bounded: an
/// event larger than `max_event_bytes` as received (all its lines up to and including the blank
/// line that ends it, one byte per line ending) is an error, caught before it is complete, after
/// which every `push` fails. The buffers never hold more than that.
#[derive(Debug)]
pub struct SseSplitter {
    max_event_bytes: usize,
    /// Bytes of the current event received so far.
    received: usize,
    line: Vec<u8>,
    event: Vec<u8>,
    /// Each `data` value followed by `\n`, as the spec builds it.
    data: Vec<u8>,
    /// The last line ended in `\r`: a `\n` starting the next push belongs to it.
    skip_lf: bool,
    first_line: bool,
    failed: Option<TranslateError>,
}

impl SseSplitter {
    pub fn new(max_event_bytes: usize) -> Self {
        SseSplitter {
            max_event_bytes,
            received: 0,
            line: Vec::new(),
            event: Vec::new(),
            data: Vec::new(),
            skip_lf: false,
            first_line: true,
            failed: None,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TranslateError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut events = Vec::new();
        while !bytes.is_empty() {
            if self.skip_lf {
                self.skip_lf = false;
                if let Some(rest) = bytes.strip_prefix(b"\n") {
                    bytes = rest;
                    continue;
                }
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.received(bytes.len())?;
                    self.line.extend_from_slice(bytes);
                    break;
                }
                Some(end) => {
                    self.received(end + 1)?;
                    self.line.extend_from_slice(&bytes[..end]);
                    self.skip_lf = bytes[end] == b'\r';
                    bytes = &bytes[end + 1..];
                    self.end_line(&mut events);
                }
            }
        }
        Ok(events)
    }

    fn received(&mut self, n: usize) -> Result<(), TranslateError> {
        self.received = self.received.saturating_add(n);
        if self.received <= self.max_event_bytes {
            return Ok(());
        }
        let e = TranslateError(format!(
            "expected upstream stream events of at most {} bytes, found a larger one",
            self.max_event_bytes
        ));
        self.failed = Some(e.clone());
        Err(e)
    }

    fn end_line(&mut self, events: &mut Vec<(String, Vec<u8>)>) {
        let line = std::mem::take(&mut self.line);
        let mut l: &[u8] = &line;
        if self.first_line {
            self.first_line = false;
            l = l.strip_prefix("\u{feff}".as_bytes()).unwrap_or(l);
        }
        if l.is_empty() {
            if !self.data.is_empty() {
                self.data.pop(); // the `\n` after the last data line
                let name = if self.event.is_empty() {
                    "message".to_string()
                } else {
                    String::from_utf8_lossy(&self.event).into_owned()
                };
                events.push((name, std::mem::take(&mut self.data)));
            }
            self.event.clear();
            self.data.clear();
            self.received = 0;
        } else if l[0] != b':' {
            let (field, value) = match l.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &l[colon + 1..];
                    (&l[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (l, &[][..]),
            };
            match field {
                b"event" => {
                    self.event.clear();
                    self.event.extend_from_slice(value);
                }
                b"data" => {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                }
                _ => {}
            }
        }
        // Keep the line buffer's allocation for the next line.
        self.line = line;
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_anthropic(req: Value) -> Value {
        let bytes = request_to_anthropic(req.to_string().as_bytes(), "claude-up", 1024, false).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn to_anthropic_err(req: Value) -> String {
        request_to_anthropic(req.to_string().as_bytes(), "claude-up", 1024, false).unwrap_err().0
    }

    fn user(text: &str) -> Value {
        json!({ "role": "user", "content": text })
    }

    // --- requests ---------------------------------------------------------------------------

    #[test]
    fn request_basics_and_system_messages() {
        let out = to_anthropic(json!({
            "model": "gpt-4o",
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "developer", "content": [{ "type": "text", "text": "Be kind." }] },
                user("Hi"),
            ],
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-up",
                "system": "Be brief.\n\nBe kind.",
                "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Hi" }] }],
                "max_tokens": 1024,
                "stream": false,
            })
        );
        let streamed = request_to_anthropic(json!({ "messages": [user("Hi")] }).to_string().as_bytes(), "m", 5, true);
        let streamed: Value = serde_json::from_slice(&streamed.unwrap()).unwrap();
        assert_eq!(streamed["stream"], json!(true));
        assert_eq!(streamed["max_tokens"], json!(5));
        assert!(streamed.get("system").is_none());
    }

    #[test]
    fn request_max_tokens() {
        let m = json!([user("Hi")]);
        assert_eq!(to_anthropic(json!({ "messages": m, "max_tokens": 7 }))["max_tokens"], json!(7));
        assert_eq!(to_anthropic(json!({ "messages": m, "max_completion_tokens": 9 }))["max_tokens"], json!(9));
        let both = json!({ "messages": m, "max_tokens": 7, "max_completion_tokens": 9 });
        assert_eq!(to_anthropic(both)["max_tokens"], json!(9));
        assert_eq!(to_anthropic(json!({ "messages": m, "max_tokens": null }))["max_tokens"], json!(1024));
        let e = to_anthropic_err(json!({ "messages": m, "max_tokens": "7" }));
        assert_eq!(e, "expected `max_tokens` to be a non-negative integer, found the string \"7\"");
        assert!(to_anthropic_err(json!({ "messages": m, "max_tokens": 0 })).contains("at least 1"));
    }

    #[test]
    fn request_content_parts_and_images() {
        let out = to_anthropic(json!({ "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "What is this?" },
            { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high" } },
            { "type": "image_url", "image_url": { "url": "https://example.com/cat.jpg" } },
            { "type": "text", "text": "" },
        ]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                { "type": "text", "text": "What is this?" },
                { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
                { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } },
            ])
        );
        let not_base64 = json!({ "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": "data:image/png,rawbytes" } },
        ]}]});
        let e = to_anthropic_err(not_base64);
        assert!(e.starts_with("expected `messages[0].content[0].image_url.url` to be"), "{e}");
        assert!(e.contains("found the string \"data:image/png,rawbytes\""), "{e}");
        let audio = json!({ "messages": [{ "role": "user", "content": [{ "type": "input_audio" }] }] });
        assert_eq!(
            to_anthropic_err(audio),
            "expected `messages[0].content[0].type` to be \"text\" or \"image_url\", found the string \"input_audio\""
        );
    }

    #[test]
    fn request_tool_calls_and_results() {
        let out = to_anthropic(json!({ "messages": [
            user("Weather in Paris and Rome?"),
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "call_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
                { "id": "call_2", "type": "function", "function": { "name": "weather", "arguments": "" } },
            ]},
            { "role": "tool", "tool_call_id": "call_1", "content": "sunny" },
            { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "rainy" }] },
            user("Thanks"),
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [{ "type": "text", "text": "Weather in Paris and Rome?" }] },
                { "role": "assistant", "content": [
                    { "type": "tool_use", "id": "call_1", "name": "weather", "input": { "city": "Paris" } },
                    { "type": "tool_use", "id": "call_2", "name": "weather", "input": {} },
                ]},
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "call_1", "content": "sunny" },
                    { "type": "tool_result", "tool_use_id": "call_2", "content": [{ "type": "text", "text": "rainy" }] },
                    { "type": "text", "text": "Thanks" },
                ]},
            ])
        );
    }

    #[test]
    fn request_tool_results_come_first_in_a_merged_user_turn() {
        let out = to_anthropic(json!({ "messages": [
            { "role": "assistant", "content": "ok", "tool_calls": [
                { "id": "c", "type": "function", "function": { "name": "f", "arguments": "{}" } },
            ]},
            user("first"),
            { "role": "tool", "tool_call_id": "c", "content": "result" },
        ]}));
        assert_eq!(
            out["messages"][1]["content"],
            json!([
                { "type": "tool_result", "tool_use_id": "c", "content": "result" },
                { "type": "text", "text": "first" },
            ])
        );
        assert_eq!(out["messages"][0]["content"][0], json!({ "type": "text", "text": "ok" }));
    }

    #[test]
    fn request_invalid_tool_arguments_are_errors() {
        let call = |arguments: &str| {
            json!({ "messages": [{ "role": "assistant", "tool_calls": [
                { "id": "c", "type": "function", "function": { "name": "f", "arguments": arguments } },
            ]}]})
        };
        let e = to_anthropic_err(call("{\"city\": "));
        assert!(e.starts_with(
            "expected `messages[0].tool_calls[0].function.arguments` to hold a JSON object, found invalid JSON"
        ));
        let e = to_anthropic_err(call("[1]"));
        assert_eq!(
            e,
            "expected `messages[0].tool_calls[0].function.arguments` to hold a JSON object, found an array of 1 item"
        );
        let missing_id = json!({ "messages": [{ "role": "tool", "content": "x" }] });
        assert_eq!(to_anthropic_err(missing_id), "expected `messages[0].tool_call_id` to be a string, found nothing");
    }

    #[test]
    fn request_merges_consecutive_same_role_messages() {
        let out = to_anthropic(json!({ "messages": [
            user("a"),
            { "role": "system", "content": "sys" },
            user("b"),
            { "role": "assistant", "content": "c" },
            { "role": "assistant", "content": [{ "type": "text", "text": "d" }, { "type": "refusal", "refusal": "e" }] },
            user(""),
            user("f"),
        ]}));
        assert_eq!(out["system"], json!("sys"));
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }] },
                { "role": "assistant", "content": [
                    { "type": "text", "text": "c" }, { "type": "text", "text": "d" }, { "type": "text", "text": "e" },
                ]},
                { "role": "user", "content": [{ "type": "text", "text": "f" }] },
            ])
        );
    }

    #[test]
    fn request_sampling_and_stop() {
        let m = json!([user("Hi")]);
        let out = to_anthropic(json!({ "messages": m, "temperature": 0.5, "top_p": 0.9, "stop": "END" }));
        assert_eq!((&out["temperature"], &out["top_p"]), (&json!(0.5), &json!(0.9)));
        assert_eq!(out["stop_sequences"], json!(["END"]));
        let out = to_anthropic(json!({ "messages": m, "temperature": 1.7, "stop": ["a", "b"] }));
        assert_eq!(out["temperature"], json!(1.0));
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        let out = to_anthropic(json!({ "messages": m, "stop": [], "temperature": null }));
        assert!(out.get("stop_sequences").is_none() && out.get("temperature").is_none());
        assert_eq!(
            to_anthropic_err(json!({ "messages": m, "stop": ["a", 1] })),
            "expected `stop[1]` to be a string, found the number 1"
        );
        assert_eq!(
            to_anthropic_err(json!({ "messages": m, "temperature": "hot" })),
            "expected `temperature` to be a number, found the string \"hot\""
        );
        assert!(to_anthropic_err(json!({ "messages": m, "n": 2 })).starts_with("expected `n` to be 1"));
        assert!(to_anthropic(json!({ "messages": m, "n": 1 })).get("n").is_none());
    }

    #[test]
    fn request_tools_and_tool_choice() {
        let tools = json!([
            { "type": "function", "function": {
                "name": "weather", "description": "Current weather",
                "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
                "strict": true,
            }},
            { "type": "function", "function": { "name": "now" } },
        ]);
        let with =
            |choice: Value| to_anthropic(json!({ "messages": [user("Hi")], "tools": tools, "tool_choice": choice }));
        let out = with(Value::Null);
        assert_eq!(
            out["tools"],
            json!([
                { "name": "weather", "description": "Current weather", "input_schema":
                    { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } },
                { "name": "now", "input_schema": { "type": "object", "properties": {} } },
            ])
        );
        assert!(out.get("tool_choice").is_none());
        assert_eq!(with(json!("auto"))["tool_choice"], json!({ "type": "auto" }));
        assert_eq!(with(json!("required"))["tool_choice"], json!({ "type": "any" }));
        assert_eq!(with(json!("none"))["tool_choice"], json!({ "type": "none" }));
        let named = json!({ "type": "function", "function": { "name": "now" } });
        assert_eq!(with(named.clone())["tool_choice"], json!({ "type": "tool", "name": "now" }));

        let serial = |choice: Value| {
            to_anthropic(
                json!({ "messages": [user("Hi")], "tools": tools, "tool_choice": choice, "parallel_tool_calls": false }),
            )
        };
        assert_eq!(serial(Value::Null)["tool_choice"], json!({ "type": "auto", "disable_parallel_tool_use": true }));
        assert_eq!(
            serial(named)["tool_choice"],
            json!({ "type": "tool", "name": "now", "disable_parallel_tool_use": true })
        );
        assert_eq!(serial(json!("none"))["tool_choice"], json!({ "type": "none" }));

        let no_tools = to_anthropic(json!({ "messages": [user("Hi")], "tool_choice": "required" }));
        assert!(no_tools.get("tool_choice").is_none() && no_tools.get("tools").is_none());
        let e = to_anthropic_err(json!({ "messages": [user("Hi")], "tools": tools, "tool_choice": "sometimes" }));
        assert_eq!(
            e,
            "expected `tool_choice` to be \"auto\", \"required\", \"none\" or a function, found the string \"sometimes\""
        );
        let e = to_anthropic_err(json!({ "messages": [user("Hi")], "tools": [{ "type": "custom", "custom": {} }] }));
        assert_eq!(e, "expected `tools[0].type` to be \"function\", found the string \"custom\"");
    }

    #[test]
    fn request_user_metadata_and_unknown_fields() {
        let out = to_anthropic(json!({
            "messages": [user("Hi")], "user": "u-42",
            "frequency_penalty": 0.5, "logit_bias": { "1": 2 }, "stream_options": { "include_usage": true },
            "response_format": { "type": "text" }, "seed": 3, "something_new": [1, 2],
        }));
        assert_eq!(out["metadata"], json!({ "user_id": "u-42" }));
        let keys: Vec<&str> = out.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, ["max_tokens", "messages", "metadata", "model", "stream"]);
    }

    #[test]
    fn request_errors_say_what_was_expected_and_found() {
        let cases = [
            (json!({}), "expected `messages` to be a non-empty array of messages, found nothing"),
            (
                json!({ "messages": [] }),
                "expected `messages` to be a non-empty array of messages, found an array of 0 items",
            ),
            (
                json!({ "messages": "hi" }),
                "expected `messages` to be a non-empty array of messages, found the string \"hi\"",
            ),
            (json!({ "messages": [1] }), "expected `messages[0]` to be an object, found the number 1"),
            (
                json!({ "messages": [{ "content": "x" }] }),
                "expected `messages[0].role` to be \"system\", \"developer\", \"user\", \"assistant\" or \"tool\", found nothing",
            ),
            (
                json!({ "messages": [{ "role": "function", "content": "x" }] }),
                "expected `messages[0].role` to be \"system\", \"developer\", \"user\", \"assistant\" or \"tool\", found the string \"function\"",
            ),
            (
                json!({ "messages": [{ "role": "user" }] }),
                "expected `messages[0].content` to be a string or an array of text parts, found nothing",
            ),
            (
                json!({ "messages": [{ "role": "system", "content": "only system" }] }),
                "expected `messages` to contain a user or assistant message with content, found none",
            ),
            (json!({ "messages": [user("x")], "user": 5 }), "expected `user` to be a string, found the number 5"),
        ];
        for (req, message) in cases {
            assert_eq!(to_anthropic_err(req), message);
        }
        let e = request_to_anthropic(b"{not json", "m", 1, false).unwrap_err();
        assert!(e.0.starts_with("expected the request body to be JSON, found invalid JSON"), "{e}");
        let e = request_to_anthropic(b"[1,2]", "m", 1, false).unwrap_err();
        assert_eq!(e.to_string(), "expected the request body to be a JSON object, found an array of 2 items");
    }

    // --- responses --------------------------------------------------------------------------

    fn to_openai(resp: Value) -> (Value, Usage) {
        let (bytes, usage) = response_to_openai(resp.to_string().as_bytes(), "gpt-4o", 1_700_000_000).unwrap();
        (serde_json::from_slice(&bytes).unwrap(), usage)
    }

    #[test]
    fn response_text_tools_and_usage() {
        let (out, usage) = to_openai(json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-up",
            "content": [
                { "type": "thinking", "thinking": "hmm", "signature": "s" },
                { "type": "text", "text": "Let me " },
                { "type": "text", "text": "check." },
                { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris" } },
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": { "input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 20, "output_tokens": 7 },
        }));
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-msg_01",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "gpt-4o",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant", "content": "Let me check.", "refusal": null,
                        "tool_calls": [{ "id": "toolu_1", "type": "function",
                            "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } }],
                    },
                    "logprobs": null,
                    "finish_reason": "tool_calls",
                }],
                "usage": { "prompt_tokens": 35, "completion_tokens": 7, "total_tokens": 42,
                    "prompt_tokens_details": { "cached_tokens": 20 } },
            })
        );
        assert_eq!(usage, Usage { prompt_tokens: 35, completion_tokens: 7, total_tokens: 42 });
    }

    #[test]
    fn response_finish_reasons_and_tool_only_content() {
        let resp = |stop: &str| {
            json!({ "id": "m", "content": [{ "type": "text", "text": "x" }], "stop_reason": stop,
                "usage": { "input_tokens": 1, "output_tokens": 2 } })
        };
        for (stop, finish) in
            [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")]
        {
            let (out, usage) = to_openai(resp(stop));
            assert_eq!(out["choices"][0]["finish_reason"], json!(finish), "{stop}");
            assert_eq!(usage, Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 });
            assert!(out["usage"].get("prompt_tokens_details").is_none());
        }
        let (out, _) = to_openai(json!({ "id": "m", "stop_reason": "tool_use", "usage": {}, "content": [
            { "type": "tool_use", "id": "t", "name": "now", "input": {} },
        ]}));
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], json!("{}"));
        let (out, _) = to_openai(json!({ "id": "m", "content": [], "stop_reason": "end_turn" }));
        assert_eq!(out["choices"][0]["message"]["content"], json!(""));
        assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn response_errors() {
        let err = |body: &[u8]| response_to_openai(body, "m", 0).unwrap_err().0;
        assert_eq!(
            err(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            "expected an upstream message, found an upstream error: Overloaded"
        );
        assert_eq!(err(br#"{"content":[]}"#), "expected `id` to be a string, found nothing");
        assert_eq!(
            err(br#"{"id":"m","content":{}}"#),
            "expected `content` to be an array of content blocks, found an object"
        );
        assert_eq!(
            err(br#"{"id":"m","content":[],"usage":{"input_tokens":-1}}"#),
            "expected `usage.input_tokens` to be a non-negative integer, found the number -1"
        );
        assert!(err(b"").starts_with("expected the upstream response to be JSON"));
    }

    // --- errors -----------------------------------------------------------------------------

    #[test]
    fn errors_map_types_and_keep_messages() {
        let body = |kind: &str| format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"msg {kind}"}}}}"#);
        let cases = [
            (400, "invalid_request_error", "invalid_request_error"),
            (401, "authentication_error", "authentication_error"),
            (403, "permission_error", "permission_error"),
            (404, "not_found_error", "invalid_request_error"),
            (413, "request_too_large", "invalid_request_error"),
            (429, "rate_limit_error", "rate_limit_error"),
            (500, "api_error", "api_error"),
            (529, "overloaded_error", "api_error"),
            (401, "brand_new_error", "authentication_error"),
        ];
        for (status, kind, openai) in cases {
            assert_eq!(error_to_openai(status, body(kind).as_bytes()), (openai.to_string(), format!("msg {kind}")));
        }
    }

    #[test]
    fn errors_with_unknown_shapes_keep_raw_text() {
        assert_eq!(
            error_to_openai(502, b"<html>Bad Gateway</html>\n"),
            ("api_error".into(), "<html>Bad Gateway</html>".into())
        );
        assert_eq!(
            error_to_openai(429, br#"{"error":"slow down"}"#),
            ("rate_limit_error".into(), r#"{"error":"slow down"}"#.into())
        );
        assert_eq!(
            error_to_openai(503, b""),
            ("api_error".into(), "upstream returned HTTP 503 with an empty body".into())
        );
        // 499 ASCII bytes then a two-byte character across the 500-byte cut: the half is dropped.
        let mut long = vec![b'a'; 499];
        long.extend_from_slice("é and more".as_bytes());
        let (_, message) = error_to_openai(400, &long);
        assert_eq!(message, "a".repeat(499));
        let (_, message) = error_to_openai(400, &[0xff; 600]);
        assert_eq!(message, "\u{fffd}".repeat(500));
    }

    // --- streams ----------------------------------------------------------------------------

    const STREAM: &str = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-up","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":3,"cache_read_input_tokens":2,"output_tokens":1}}}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\n",
        "event: ping\n",
        r#"data: {"type": "ping"}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hé"}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"llo 🌍"}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"weather","input":{}}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Par"}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"is\"}"}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":1}"#,
        "\n\n",
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );

    fn split_all(max: usize, pieces: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
        let mut splitter = SseSplitter::new(max);
        pieces.iter().flat_map(|p| splitter.push(p).unwrap()).collect()
    }

    fn translate_all(events: &[(String, Vec<u8>)]) -> (Vec<Value>, StreamTranslator) {
        let mut t = StreamTranslator::new("gpt-4o", 1_700_000_000);
        let mut chunks = Vec::new();
        for (name, data) in events {
            for chunk in t.on_event(name, data).unwrap() {
                chunks.push(serde_json::from_slice(&chunk).unwrap());
            }
        }
        (chunks, t)
    }

    fn chunk(delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": "chatcmpl-msg_1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o",
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        })
    }

    #[test]
    fn stream_translation() {
        let events = split_all(1 << 16, &[STREAM.as_bytes()]);
        assert_eq!(events.len(), 13);
        let (chunks, t) = translate_all(&events);
        let expected = vec![
            chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
            chunk(json!({ "content": "Hé" }), Value::Null),
            chunk(json!({ "content": "llo 🌍" }), Value::Null),
            chunk(
                json!({ "tool_calls": [{ "index": 0, "id": "toolu_1", "type": "function",
                    "function": { "name": "weather", "arguments": "" } }] }),
                Value::Null,
            ),
            chunk(
                json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"city\": \"Par" } }] }),
                Value::Null,
            ),
            chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "is\"}" } }] }), Value::Null),
            chunk(json!({}), json!("tool_calls")),
            json!({
                "id": "chatcmpl-msg_1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o",
                "choices": [],
                "usage": { "prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72,
                    "prompt_tokens_details": { "cached_tokens": 2 } },
            }),
        ];
        assert_eq!(chunks, expected);
        assert!(t.finished());
        assert_eq!(t.usage(), Usage { prompt_tokens: 30, completion_tokens: 42, total_tokens: 72 });
    }

    #[test]
    fn stream_usage_so_far_and_finish_reasons() {
        let mut t = StreamTranslator::new("m", 1);
        t.on_event(
            "message_start",
            br#"{"type":"message_start","message":{"id":"x","usage":{"input_tokens":4,"output_tokens":1}}}"#,
        )
        .unwrap();
        assert_eq!(t.usage(), Usage { prompt_tokens: 4, completion_tokens: 1, total_tokens: 5 });
        assert!(!t.finished());
        for (stop, finish) in
            [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")]
        {
            let data =
                json!({ "type": "message_delta", "delta": { "stop_reason": stop }, "usage": { "output_tokens": 9 } });
            let chunks = t.on_event("message_delta", data.to_string().as_bytes()).unwrap();
            let chunk: Value = serde_json::from_slice(&chunks[0]).unwrap();
            assert_eq!(chunk["choices"][0]["finish_reason"], json!(finish));
            assert_eq!(chunk["choices"][0]["delta"], json!({}));
        }
        assert_eq!(t.usage(), Usage { prompt_tokens: 4, completion_tokens: 9, total_tokens: 13 });
        let stop = t.on_event("message_stop", br#"{"type":"message_stop"}"#).unwrap();
        let stop: Value = serde_json::from_slice(&stop[0]).unwrap();
        assert_eq!(stop["usage"], json!({ "prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13 }));
        assert!(t.finished());
        // Nothing more once finished.
        assert!(t.on_event("content_block_delta", b"garbage").unwrap().is_empty());
    }

    #[test]
    fn stream_quiet_events_errors_and_order() {
        let mut t = StreamTranslator::new("m", 1);
        assert!(t.on_event("ping", b"{}").unwrap().is_empty());
        assert!(t.on_event("brand_new_event", b"not even json").unwrap().is_empty());
        let e =
            t.on_event("content_block_delta", br#"{"index":0,"delta":{"type":"text_delta","text":"x"}}"#).unwrap_err();
        assert_eq!(e.0, "expected `message_start` before `content_block_delta`, found `content_block_delta` first");
        // Without an `event:` name the data's `type` decides.
        let start = t.on_event("message", br#"{"type":"message_start","message":{"id":"x"}}"#).unwrap();
        assert_eq!(start.len(), 1);
        assert!(t.on_event("content_block_stop", br#"{"type":"content_block_stop","index":0}"#).unwrap().is_empty());
        let thinking = br#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#;
        assert!(t.on_event("content_block_delta", thinking).unwrap().is_empty());
        let e = t.on_event("error", br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert_eq!(e.unwrap_err().0, "Overloaded");
        let e = t.on_event("message", br#"{"type":"error","error":{"type":"api_error","message":"Internal"}}"#);
        assert_eq!(e.unwrap_err().0, "Internal");
        assert_eq!(t.on_event("error", b"bad things").unwrap_err().0, "bad things");
        let e = t.on_event("message_delta", b"{").unwrap_err();
        assert!(e.0.starts_with("expected the data of the `message_delta` event to be JSON"), "{e}");
        assert!(!t.finished());
    }

    // --- SSE splitting ------------------------------------------------------------------------

    fn ev(name: &str, data: &str) -> (String, Vec<u8>) {
        (name.to_string(), data.as_bytes().to_vec())
    }

    #[test]
    fn sse_field_rules() {
        let input = concat!(
            "\u{feff}: a comment\n",
            "event: first\n",
            "data: line one\n",
            "data:line two\n",
            "data:  two spaces\n",
            "id: 7\n",
            "retry: 10\n",
            "\n",
            "data: no name\r\n\r\n",
            "event: only a name\n\n",
            "data\n\n",
            "event: cr\rdata: x\r\r",
            ":\n",
            "data: unterminated",
        );
        assert_eq!(
            split_all(1024, &[input.as_bytes()]),
            vec![
                ev("first", "line one\nline two\n two spaces"),
                ev("message", "no name"),
                ev("message", ""),
                ev("cr", "x"),
            ]
        );
    }

    #[test]
    fn sse_any_chunk_boundary_gives_the_same_events() {
        let crlf = STREAM.replace('\n', "\r\n");
        for stream in [STREAM, crlf.as_str()] {
            let bytes = stream.as_bytes();
            let whole = split_all(1 << 16, &[bytes]);
            assert_eq!(whole.len(), 13);
            // Every split point: mid-line, mid-"\r\n" and mid-UTF-8 ("é" and "🌍" are in there).
            for at in 0..=bytes.len() {
                assert_eq!(split_all(1 << 16, &[&bytes[..at], &bytes[at..]]), whole, "split at {at}");
            }
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(split_all(1 << 16, &bytewise), whole);
            let (chunks, _) = translate_all(&whole);
            let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
            assert_eq!(text, "Héllo 🌍");
        }
        let emoji = "data: 🌍\n\n".as_bytes();
        let mid_char = emoji.iter().position(|&b| b == 0xf0).unwrap() + 2;
        assert_eq!(split_all(64, &[&emoji[..mid_char], &emoji[mid_char..]]), vec![ev("message", "🌍")]);
    }

    #[test]
    fn sse_is_bounded() {
        // 23 bytes as received, "\r\n" counting as one.
        let event = b"data: 1234\r\ndata: 5678\n\r\n";
        assert_eq!(split_all(23, &[event]), vec![ev("message", "1234\n5678")]);
        let mut s = SseSplitter::new(22);
        let e = s.push(event).unwrap_err();
        assert_eq!(e.0, "expected upstream stream events of at most 22 bytes, found a larger one");
        assert_eq!(s.push(b"\n").unwrap_err(), e, "a failed splitter stays failed");
        // A line that never ends is caught before it ends.
        let mut s = SseSplitter::new(130);
        for _ in 0..10 {
            s.push(b"data: 0123456").unwrap();
        }
        assert!(s.push(b"data: 0123456").is_err());
        // Many small events pass: the bound is per event.
        let mut s = SseSplitter::new(22);
        for _ in 0..1000 {
            assert_eq!(s.push(b"event: e\ndata: 12345\n\n").unwrap().len(), 1);
        }
    }

    // --- never panics -----------------------------------------------------------------------

    /// xorshift64*: deterministic, dependency-free pseudo-random numbers.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            (0..self.below(max_len + 1)).map(|_| self.next() as u8).collect()
        }
        fn value(&mut self, depth: u32) -> Value {
            let strings =
                ["", "text", "image_url", "function", "tool_use", "user", "data:x;base64,", "🌍", "{\"a\":1}"];
            match self.below(if depth == 0 { 5 } else { 7 }) {
                0 => Value::Null,
                1 => Value::Bool(self.next() & 1 == 0),
                2 => match self.below(4) {
                    0 => json!(u64::MAX),
                    1 => json!(-1),
                    2 => json!(1.5e300),
                    _ => json!(self.below(3)),
                },
                3 | 4 => strings[self.below(strings.len())].into(),
                5 => (0..self.below(3)).map(|_| self.value(depth - 1)).collect(),
                _ => {
                    let keys = ["type", "text", "content", "role", "id", "index", "delta", "usage", "message"];
                    (0..self.below(4))
                        .map(|_| (keys[self.below(keys.len())].to_string(), self.value(depth - 1)))
                        .collect()
                }
            }
        }
        /// `v` with about one node in `rate` replaced by a random value.
        fn mutate(&mut self, v: &Value, rate: usize) -> Value {
            if self.below(rate) == 0 {
                return self.value(2);
            }
            match v {
                Value::Array(a) => a.iter().map(|x| self.mutate(x, rate)).collect(),
                Value::Object(m) => m.iter().map(|(k, x)| (k.clone(), self.mutate(x, rate))).collect(),
                other => other.clone(),
            }
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let stream_events: Vec<(String, Vec<u8>)> = split_all(1 << 16, &[STREAM.as_bytes()]);
        let names = ["message", "", "error", "ping", "message_start", "content_block_start", "content_block_delta"];
        let pieces: Vec<Vec<u8>> = [
            "event: ",
            "event:",
            "data: ",
            "data:",
            ":",
            "\n",
            "\r\n",
            "\r",
            "\u{feff}",
            "id: 1",
            "é",
            "🌍",
            "message_start",
            "content_block_delta",
            "message_delta",
            "message_stop",
            "error",
            "{",
            "}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain(STREAM.split_inclusive('\n').map(|l| l.as_bytes().to_vec()))
        .collect();
        let request = json!({
            "messages": [
                { "role": "system", "content": "s" },
                { "role": "user", "content": [{ "type": "text", "text": "t" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,AA" } }] },
                { "role": "assistant", "content": null, "tool_calls": [
                    { "id": "c", "type": "function", "function": { "name": "f", "arguments": "{}" } }] },
                { "role": "tool", "tool_call_id": "c", "content": "r" },
            ],
            "max_tokens": 5, "temperature": 0.5, "stop": ["x"], "user": "u", "parallel_tool_calls": false,
            "tools": [{ "type": "function", "function": { "name": "f", "parameters": { "type": "object" } } }],
            "tool_choice": { "type": "function", "function": { "name": "f" } },
        });
        let response = json!({ "id": "m", "content": [{ "type": "text", "text": "x" },
            { "type": "tool_use", "id": "t", "name": "n", "input": {} }], "stop_reason": "end_turn",
            "usage": { "input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3 } });

        for round in 0..3000 {
            // SSE soup in random chunks, through the splitter into a translator.
            // Mostly-valid inputs reach the success paths, mostly-invalid ones the error paths.
            let rate = [4, 16, 64][rng.below(3)];
            let mut soup = Vec::new();
            if rng.below(2) == 0 {
                // A real stream with a few bytes changed.
                soup.extend(STREAM.as_bytes());
                for _ in 0..rng.below(4) {
                    let at = rng.below(soup.len());
                    soup[at] = rng.next() as u8;
                }
            } else {
                for _ in 0..rng.below(40) {
                    if rng.below(5) == 0 {
                        soup.extend(rng.bytes(8));
                    } else {
                        soup.extend(&pieces[rng.below(pieces.len())]);
                    }
                }
            }
            let mut splitter = SseSplitter::new(if rng.below(2) == 0 { 16 } else { 1 << 16 });
            let mut translator = StreamTranslator::new("m", 0);
            let mut rest = &soup[..];
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(rng.below(rest.len()) + 1);
                rest = tail;
                let Ok(events) = splitter.push(piece) else { break };
                for (name, data) in events {
                    if translator.on_event(&name, &data).is_err() {
                        translator = StreamTranslator::new("m", 0);
                    }
                }
            }
            let _ = translator.usage();

            // Real events with mutated data, and random bytes under every name.
            let mut translator = StreamTranslator::new("m", 0);
            for (name, data) in &stream_events {
                let data: Value = serde_json::from_slice(data).unwrap();
                let _ = translator.on_event(name, rng.mutate(&data, rate).to_string().as_bytes());
                let _ = translator.on_event(names[rng.below(names.len())], &rng.bytes(32));
            }

            let _ = request_to_anthropic(rng.mutate(&request, rate).to_string().as_bytes(), "m", round, round % 2 == 0);
            let _ = request_to_anthropic(&rng.bytes(64), "m", 1, false);
            let _ = response_to_openai(rng.mutate(&response, rate).to_string().as_bytes(), "m", 0);
            let _ = response_to_openai(&rng.bytes(64), "m", 0);
            let _ = error_to_openai(rng.next() as u16, &rng.bytes(700));
            let error = json!({ "type": "error", "error": { "type": "api_error", "message": "m" } });
            let _ = error_to_openai(rng.next() as u16, rng.mutate(&error, rate).to_string().as_bytes());
        }
    }
}
