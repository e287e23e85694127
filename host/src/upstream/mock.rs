//! The embedded mock LLM: deterministic replies that echo the last user message, streamed in a
//! configured number of chunks with a configured delay. Needs no network.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::collector::Usage;
use crate::error::ApiError;

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
        let prompt: u64 = chat.messages.iter().map(|m| words(&text_of(&m.content))).sum();
        let last_user = chat.messages.iter().rev().find(|m| m.role == "user").map(|m| text_of(&m.content));
        let text = match last_user {
            Some(t) if !t.trim().is_empty() => format!("Mock reply to: {t}"),
            _ => "Mock reply.".to_owned(),
        };
        // Split at word boundaries into `chunks` parts; each part keeps its leading space.
        let tokens: Vec<&str> = text.split_inclusive(' ').collect();
        let per = tokens.len().div_ceil(self.chunks).max(1);
        let parts: Vec<String> = tokens.chunks(per).map(|c| c.concat()).collect();
        let completion = words(&text);
        Ok(MockReply {
            id: format!("chatcmpl-mock-{}", self.next_id.fetch_add(1, Relaxed)),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            parts,
            usage: Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
        })
    }
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
}
