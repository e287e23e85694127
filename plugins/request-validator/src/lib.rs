//! PostAuth: rejects chat requests with too many messages or too long a prompt, before they
//! cost an upstream call.
#![forbid(unsafe_code)]

use plugin_abi::{Config, ConfigProvider, Decision, Host, Plugin, PluginError, PostAuth, Reply, Request};
use serde::Deserialize;

#[derive(plugin_abi::Plugin)]
#[plugin(name = "request-validator", capabilities(PostAuth, ConfigProvider))]
pub struct RequestValidator {
    max_messages: usize,
    max_prompt_chars: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    max_messages: usize,
    max_prompt_chars: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { max_messages: 64, max_prompt_chars: 32_000 }
    }
}

impl Plugin for RequestValidator {
    fn init(config: Config<'_>, _host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        Ok(RequestValidator { max_messages: s.max_messages, max_prompt_chars: s.max_prompt_chars })
    }
}

impl ConfigProvider for RequestValidator {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "max_messages": { "type": "integer", "minimum": 1 },
            "max_prompt_chars": { "type": "integer", "minimum": 1 }
        }
    }"#;
}

fn reject(message: String) -> Decision {
    Decision::Respond(Reply::error(400, "invalid_request_error", "request_rejected", &message))
}

impl PostAuth for RequestValidator {
    fn on_post_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {
        // The gateway's parse, shared with every other plugin that reads the messages. Fail
        // closed: a body it cannot read (a lone surrogate such as `\ud800` in a string, which
        // the gateway's own check lets through) must not skip the limits.
        let Some(chat) = req.chat() else {
            return Ok(reject("expected a chat request with a `model`, `messages` and valid JSON strings".into()));
        };
        let messages = chat.messages();
        if messages.len() > self.max_messages {
            return Ok(reject(format!(
                "too many messages: expected at most {}, found {}",
                self.max_messages,
                messages.len()
            )));
        }
        let prompt: usize = messages.map(|m| m.content().chars().count()).sum();
        if prompt > self.max_prompt_chars {
            return Ok(reject(format!(
                "prompt too long: expected at most {} characters, found {prompt}",
                self.max_prompt_chars
            )));
        }
        Ok(Decision::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, TestRequest};

    #[test]
    fn rejects_too_many_messages_and_too_long_prompts() {
        let p: RequestValidator = MockHost::new().init(r#"{"max_messages": 2, "max_prompt_chars": 10}"#).unwrap();
        let run = |body: &str| TestRequest::post("/").body(body).with(|r| p.on_post_auth(r)).unwrap();
        assert_eq!(run(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#), Decision::Continue);
        let Decision::Respond(r) = run(r#"{"model":"m","messages":[{"content":"a"},{"content":"b"},{"content":"c"}]}"#)
        else {
            panic!()
        };
        assert_eq!(r.status(), 400);
        assert!(String::from_utf8_lossy(r.body_bytes()).contains("too many messages: expected at most 2, found 3"));
        let Decision::Respond(r) =
            run(r#"{"model":"m","messages":[{"content":[{"type":"text","text":"01234567890"}]}]}"#)
        else {
            panic!()
        };
        assert!(
            String::from_utf8_lossy(r.body_bytes())
                .contains("prompt too long: expected at most 10 characters, found 11")
        );
    }

    #[test]
    fn a_body_it_cannot_read_is_rejected_not_waved_through() {
        let p: RequestValidator = MockHost::new().init(r#"{"max_prompt_chars": 5}"#).unwrap();
        let body = r#"{"model":"m","messages":[{"role":"user","content":"\ud800 far more than five characters"}]}"#;
        let Decision::Respond(r) = TestRequest::post("/").body(body).with(|r| p.on_post_auth(r)).unwrap() else {
            panic!("a lone surrogate let the request through unchecked")
        };
        assert_eq!(r.status(), 400);
        assert!(
            String::from_utf8_lossy(r.body_bytes())
                .contains("expected a chat request with a `model`, `messages` and valid JSON strings")
        );
    }
}
