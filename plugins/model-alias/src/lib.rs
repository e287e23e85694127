//! RequestInterceptor: lets clients name a model by an alias (`fast`, `gpt-4o` for a model
//! another provider serves, …). Before upstream selection it reads the model from the gateway's
//! parse of the request and, for an alias, sets the real model: selection, later hooks and the
//! upstream see the real name; later hooks can read the alias from the request metadata.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use plugin_abi::{Changes, Config, ConfigProvider, Decision, Host, Plugin, PluginError, Request, RequestInterceptor};
use serde::Deserialize;

#[derive(plugin_abi::Plugin)]
#[plugin(name = "model-alias")]
pub struct ModelAlias {
    aliases: HashMap<String, String>,
}

/// The metadata key that holds the alias the client asked for.
pub const ALIAS_KEY: &str = "model_alias";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    aliases: HashMap<String, String>,
}

impl Plugin for ModelAlias {
    fn init(config: Config<'_>, _host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        if let Some((alias, _)) =
            s.aliases.iter().find(|(alias, model)| s.aliases.contains_key(model.as_str()) && alias != model)
        {
            return Err(PluginError::config(format!(
                "alias `{alias}` names another alias: expected a model name, found `{}`",
                s.aliases[alias]
            )));
        }
        Ok(ModelAlias { aliases: s.aliases })
    }
}

impl ConfigProvider for ModelAlias {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "required": ["aliases"],
        "additionalProperties": false,
        "properties": {
            "aliases": {
                "type": "object",
                "additionalProperties": { "type": "string", "minLength": 1 }
            }
        }
    }"#;
}

impl RequestInterceptor for ModelAlias {
    fn before_selection(&self, req: &Request<'_>) -> Result<Decision, PluginError> {
        let Some(chat) = req.chat() else { return Ok(Decision::Continue) };
        Ok(match self.aliases.get_key_value(chat.model()) {
            Some((alias, model)) if alias != model => {
                Decision::Modify(Changes::new().set_model(model.as_str()).metadata(ALIAS_KEY, alias.as_str()))
            }
            _ => Decision::Continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, TestRequest};

    fn plugin() -> ModelAlias {
        MockHost::new().init(r#"{"aliases": {"fast": "mock-gpt", "same": "same"}}"#).unwrap()
    }

    fn run(p: &ModelAlias, body: &str) -> Decision {
        TestRequest::post("/v1/chat/completions").body(body).with(|r| p.before_selection(r)).unwrap()
    }

    #[test]
    fn an_alias_becomes_its_model_and_is_kept_in_metadata() {
        let Decision::Modify(c) = run(&plugin(), r#"{"model":"fast","messages":[{"role":"user","content":"hi"}]}"#)
        else {
            panic!("expected a change")
        };
        assert_eq!(c.new_model(), Some("mock-gpt"));
        assert_eq!(c.new_body(), None, "the gateway rewrites the body, not the plugin");
    }

    #[test]
    fn other_models_and_other_bodies_pass_unchanged() {
        let p = plugin();
        for body in [r#"{"model":"mock-gpt","messages":[]}"#, r#"{"model":"same","messages":[]}"#, "not json"] {
            assert_eq!(run(&p, body), Decision::Continue, "{body}");
        }
    }

    #[test]
    fn the_mock_host_validates_the_config_against_the_schema_naming_every_violation() {
        let err = MockHost::new().init::<ModelAlias>(r#"{"aliases": {"a": 1, "b": ""}, "extra": true}"#).err().unwrap();
        assert_eq!(err.code, plugin_abi::ffi::code::INVALID_CONFIG);
        for part in [
            "config for plugin `model-alias` rejected",
            "at `(root)`",
            "at `aliases.a`: 1 is not of type",
            "at `aliases.b`",
        ] {
            assert!(err.message.contains(part), "{part:?} missing from: {}", err.message);
        }
        let err = MockHost::new().init::<ModelAlias>("{").err().unwrap();
        assert!(err.message.contains("expected JSON"), "{}", err.message);
    }

    #[test]
    fn an_alias_of_an_alias_is_refused_at_init() {
        let err = MockHost::new().init::<ModelAlias>(r#"{"aliases": {"a": "b", "b": "c"}}"#).err().unwrap();
        assert!(err.message.contains("alias `a` names another alias"), "{err}");
    }
}
