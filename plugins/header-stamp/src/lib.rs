//! Response headers phase: stamps the configured headers on every response.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use plugin_abi::{
    Changes, Config, ConfigProvider, Context, Decision, Host, Plugin, PluginError, Response, UpstreamResponse,
};

#[derive(plugin_abi::Plugin)]
// No `capabilities(...)` list: the derive exports every capability trait the type implements.
#[plugin(name = "header-stamp")]
pub struct HeaderStamp {
    headers: Vec<(String, String)>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    headers: BTreeMap<String, String>,
}

impl Plugin for HeaderStamp {
    fn init(config: Config<'_>, _host: Host) -> Result<Self, PluginError> {
        let settings: Settings = config.parse()?;
        Ok(HeaderStamp { headers: settings.headers.into_iter().collect() })
    }
}

impl ConfigProvider for HeaderStamp {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "required": ["headers"],
        "additionalProperties": false,
        "properties": {
            "headers": {
                "type": "object",
                "additionalProperties": { "type": "string" }
            }
        }
    }"#;
}

impl Response for HeaderStamp {
    fn on_response_headers(&self, _ctx: &Context<'_>, _resp: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {
        let changes = self.headers.iter().fold(Changes::new(), |c, (name, value)| c.set_header(name, value));
        Ok(Decision::Modify(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, TestRequest, TestResponse};

    #[test]
    fn stamps_every_configured_header() {
        let plugin: HeaderStamp = MockHost::new().init(r#"{"headers": {"x-a": "1", "x-b": "2"}}"#).unwrap();
        let decision = TestRequest::post("/v1/chat/completions")
            .with_context(|ctx| TestResponse::new(200).with(|resp| plugin.on_response_headers(ctx, resp)))
            .unwrap();
        let Decision::Modify(changes) = decision else { panic!("expected Modify, got {decision:?}") };
        assert_eq!(changes.headers_set().collect::<Vec<_>>(), [("x-a", "1"), ("x-b", "2")]);
    }

    #[test]
    fn rejects_a_config_without_headers() {
        let err = MockHost::new().init::<HeaderStamp>("{}").err().unwrap();
        assert_eq!(err.code, plugin_abi::ffi::code::INVALID_CONFIG);
        // The schema refuses it first, as in the gateway.
        assert!(err.message.contains("rejected at `(root)`: \"headers\" is a required property"), "{}", err.message);
    }
}
