//! Redacts e-mail addresses and card numbers (Luhn-checked) from model output: the whole body of
//! non-streaming responses, and streamed deltas chunk by chunk.
//!
//! A value may arrive split across chunks ("john@exa" + "mple.com"), so the stream filter holds
//! back the trailing word, and any run of digit groups, until the next chunk shows where it ends;
//! the finish chunk flushes what is held. Held-back text is delayed by one chunk, never lost.
#![forbid(unsafe_code)]

use std::borrow::Cow;

use plugin_abi::{
    Changes, Chunk, ChunkDecision, Config, ConfigProvider, Context, Decision, DeltaReader, Host, Plugin, PluginError,
    Response, StreamChunk, UpstreamResponse,
};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

#[derive(plugin_abi::Plugin)]
#[plugin(name = "pii-redact", capabilities(Response, StreamChunk, ConfigProvider))]
pub struct PiiRedact {
    email: Option<Regex>,
    card: Option<Regex>,
    replacement: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    emails: bool,
    cards: bool,
    replacement: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { emails: true, cards: true, replacement: "[REDACTED]".into() }
    }
}

impl Plugin for PiiRedact {
    fn init(config: Config<'_>, _host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        let email =
            Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").expect("valid regex");
        let card = Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("valid regex");
        Ok(PiiRedact { email: s.emails.then_some(email), card: s.cards.then_some(card), replacement: s.replacement })
    }
}

impl ConfigProvider for PiiRedact {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "emails": { "type": "boolean" },
            "cards": { "type": "boolean" },
            "replacement": { "type": "string" }
        }
    }"#;
}

/// The Luhn checksum card numbers carry; filters out most other long digit runs.
fn luhn(number: &str) -> bool {
    let digits: Vec<u32> = number.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    digits.len() >= 13 && sum % 10 == 0
}

impl PiiRedact {
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        // Cheap checks first: most text has no `@` and fewer than 13 digits, and then neither
        // pattern can match.
        if let Some(re) = self.email.as_ref().filter(|_| text.contains('@')) {
            if re.is_match(&out) {
                out = Cow::Owned(re.replace_all(&out, self.replacement.as_str()).into_owned());
            }
        }
        if let Some(re) = self.card.as_ref().filter(|_| out.bytes().filter(u8::is_ascii_digit).count() >= 13) {
            if re.is_match(&out) {
                let replaced =
                    re.replace_all(
                        &out,
                        |c: &regex::Captures<'_>| {
                            if luhn(&c[0]) { self.replacement.clone() } else { c[0].to_owned() }
                        },
                    );
                out = Cow::Owned(replaced.into_owned());
            }
        }
        out
    }
}

/// Where `text` can be cut without splitting a possible e-mail address or card number: before
/// the trailing word, and before any digit groups that precede it.
fn safe_split(text: &str) -> usize {
    let mut at = text.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    loop {
        let before = text[..at].trim_end_matches([' ', '-']);
        if !before.ends_with(|c: char| c.is_ascii_digit()) {
            return at;
        }
        at = before.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    }
}

/// What the non-streaming check reads: each choice's message text, borrowed where it has no
/// escapes. Only a body with something to redact is parsed into a tree and rewritten.
#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow, default)]
    choices: Vec<CompletionChoice<'a>>,
}

#[derive(Deserialize)]
struct CompletionChoice<'a> {
    #[serde(borrow, default)]
    message: Option<CompletionMessage<'a>>,
}

#[derive(Deserialize)]
struct CompletionMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

impl Response for PiiRedact {
    fn on_response_body(&self, _ctx: &Context<'_>, resp: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {
        let Ok(completion) = serde_json::from_slice::<Completion<'_>>(resp.body()) else {
            return Ok(Decision::Continue);
        };
        let texts = completion.choices.iter().filter_map(|c| c.message.as_ref()?.content.as_deref());
        if !texts.into_iter().any(|t| matches!(self.redact(t), Cow::Owned(_))) {
            return Ok(Decision::Continue);
        }
        let Ok(mut body) = serde_json::from_slice::<Value>(resp.body()) else {
            return Ok(Decision::Continue);
        };
        if let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) {
            for choice in choices {
                if let Some(Value::String(content)) = choice.get_mut("message").and_then(|m| m.get_mut("content")) {
                    if let Cow::Owned(redacted) = self.redact(content) {
                        *content = redacted;
                    }
                }
            }
        }
        Ok(Decision::Modify(Changes::new().body(body.to_string())))
    }
}

/// Text held back from the client until the next chunk shows where a word ends, and the
/// stream's reader of deltas (which reuses the envelope the stream's chunks share).
#[derive(Default)]
pub struct Held {
    text: String,
    reader: DeltaReader,
}

impl StreamChunk for PiiRedact {
    type State = Held;

    fn on_stream_start(&self, _ctx: &Context<'_>, head: &UpstreamResponse<'_>) -> Result<Option<Held>, PluginError> {
        Ok((head.status() == 200).then(Held::default))
    }

    fn on_chunk(&self, held: &mut Held, chunk: &Chunk<'_>) -> Result<ChunkDecision, PluginError> {
        // The first choice's delta, read in place (no JSON tree); other events pass.
        let Some(delta) = held.reader.read(chunk) else {
            return Ok(ChunkDecision::Pass);
        };
        let finished = delta.finish_reason().is_some();
        let incoming = delta.text().unwrap_or("");
        if incoming.is_empty() && held.text.is_empty() {
            return Ok(ChunkDecision::Pass);
        }
        held.text.push_str(incoming);
        let cut = if finished { held.text.len() } else { safe_split(&held.text) };
        let out = self.redact(&held.text[..cut]);
        let decision = if out.is_empty() && !finished && delta.role().is_none() {
            ChunkDecision::Drop
        } else if out == incoming {
            ChunkDecision::Pass
        } else {
            // The new text in place of the old (or added, to a finish chunk's empty delta); the
            // rest of the chunk byte for byte.
            ChunkDecision::Replace(delta.with_text(&out))
        };
        drop(out);
        held.text.drain(..cut);
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, TestRequest, TestResponse, run_stream};

    fn plugin() -> PiiRedact {
        MockHost::new().init("{}").unwrap()
    }

    #[test]
    fn redacts_emails_and_valid_card_numbers_only() {
        let p = plugin();
        assert_eq!(p.redact("mail john.doe@example.com now"), "mail [REDACTED] now");
        assert_eq!(p.redact("card 4111 1111 1111 1111 ok"), "card [REDACTED] ok");
        assert_eq!(p.redact("order 1234567890123 is not a card"), "order 1234567890123 is not a card");
        assert!(matches!(p.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn splits_before_words_and_digit_groups() {
        assert_eq!(safe_split("hello john@exa"), 6);
        assert_eq!(safe_split("card 4111 1111 "), 5);
        assert_eq!(safe_split("done. "), 6);
    }

    #[test]
    fn rewrites_a_non_streaming_body() {
        let p = plugin();
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"write to a@b.io"}}]}"#;
        let d = TestRequest::post("/")
            .with_context(|ctx| TestResponse::new(200).body(body).with(|r| p.on_response_body(ctx, r)))
            .unwrap();
        let Decision::Modify(c) = d else { panic!("expected a change") };
        let v: Value = serde_json::from_slice(c.new_body().unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "write to [REDACTED]");
    }

    fn delta(content: &str, finish: bool) -> Vec<u8> {
        let finish = if finish { Value::from("stop") } else { Value::Null };
        serde_json::json!({"choices":[{"index":0,"delta":{"content":content},"finish_reason":finish}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn redacts_values_split_across_chunks() {
        let p = plugin();
        let chunks = [
            delta("mail john@exa", false),
            delta("mple.com or pay 4111 1111", false),
            delta(" 1111 1111 now", false),
            delta("", true),
        ];
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let out = run_stream(&p, &TestRequest::post("/"), &TestResponse::new(200), &refs).unwrap().unwrap();
        let text: String = out
            .iter()
            .map(|c| {
                serde_json::from_slice::<Value>(c).unwrap()["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert_eq!(text, "mail [REDACTED] or pay [REDACTED] now");
        assert!(!text.contains("exa"));
    }

    #[test]
    fn skips_error_streams() {
        let out = run_stream(&plugin(), &TestRequest::post("/"), &TestResponse::new(500), &[b"x"]).unwrap();
        assert_eq!(out, None);
    }
}
