//! Auth: API keys map to an app id and a user id, from the plugin's own config or (with
//! `host_keys`, the default) from the gateway's `[[api_keys]]`. An app the gateway config limits
//! to some models is refused the others.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use plugin_abi::{Auth, AuthDecision, Config, ConfigProvider, Host, Plugin, PluginError, Record, Request};

#[derive(plugin_abi::Plugin)]
// Without `Auth` this plugin would let every request through: a gateway that lacks it must refuse it.
#[plugin(name = "api-key-auth", capabilities(ConfigProvider), required(Auth))]
pub struct ApiKeyAuth {
    keys: HashMap<String, Key>,
    host_keys: bool,
    host: Host,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    app: String,
    user: String,
    #[serde(default)]
    app_name: Option<String>,
    #[serde(default)]
    user_name: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    keys: HashMap<String, Key>,
    #[serde(default = "yes")]
    host_keys: bool,
}

fn yes() -> bool {
    true
}

impl Plugin for ApiKeyAuth {
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {
        let settings: Settings = config.parse()?;
        host.info(&format!(
            "{} API keys configured, {} apps known to the gateway",
            settings.keys.len(),
            host.apps().len()
        ));
        Ok(ApiKeyAuth { keys: settings.keys, host_keys: settings.host_keys, host })
    }
}

impl ConfigProvider for ApiKeyAuth {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "host_keys": { "type": "boolean" },
            "keys": {
                "type": "object",
                "propertyNames": { "minLength": 8 },
                "additionalProperties": {
                    "type": "object",
                    "required": ["app", "user"],
                    "additionalProperties": false,
                    "properties": {
                        "app": { "type": "string", "minLength": 1 },
                        "user": { "type": "string", "minLength": 1 },
                        "app_name": { "type": "string" },
                        "user_name": { "type": "string" }
                    }
                }
            }
        }
    }"#;
}

impl Auth for ApiKeyAuth {
    fn authenticate(&self, credential: &str, req: &Request<'_>) -> Result<AuthDecision, PluginError> {
        if credential.is_empty() {
            return Ok(AuthDecision::Pass);
        }
        let identity = match self.keys.get(credential) {
            Some(key) => Some((key.app.clone(), key.user.clone())),
            None if self.host_keys => self.host.validate_credential(credential),
            None => None,
        };
        let Some((app_id, user_id)) = identity else { return Ok(AuthDecision::Deny("invalid API key".into())) };
        if let (Some(app), Some(model)) = (self.host.app(&app_id), req.context().model()) {
            if !app.models.is_empty() && !app.models.iter().any(|m| m == model) {
                return Ok(AuthDecision::Deny(format!(
                    "app `{app_id}` may not use model `{model}`: expected one of {:?}",
                    app.models
                )));
            }
        }
        Ok(AuthDecision::Allow { app_id, user_id })
    }

    fn app_by_credential(&self, credential: &str) -> Result<Option<Record>, PluginError> {
        Ok(self
            .keys
            .get(credential)
            .map(|k| Record { id: k.app.clone(), name: k.app_name.clone().unwrap_or_else(|| k.app.clone()) }))
    }

    fn user_by_credential(&self, credential: &str) -> Result<Option<Record>, PluginError> {
        Ok(self
            .keys
            .get(credential)
            .map(|k| Record { id: k.user.clone(), name: k.user_name.clone().unwrap_or_else(|| k.user.clone()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, TestRequest};

    fn plugin() -> (MockHost, ApiKeyAuth) {
        let host = MockHost::new();
        let p = host
            .init(r#"{"keys": {"sk-test-0001": {"app": "app-1", "user": "alice", "app_name": "App One"}}}"#)
            .unwrap();
        (host, p)
    }

    #[test]
    fn known_keys_authenticate_unknown_ones_are_denied_and_missing_ones_pass() {
        let (host, p) = plugin();
        let req = TestRequest::post("/v1/chat/completions");
        assert_eq!(
            req.with(|r| p.authenticate("sk-test-0001", r)).unwrap(),
            AuthDecision::Allow { app_id: "app-1".into(), user_id: "alice".into() }
        );
        assert_eq!(req.with(|r| p.authenticate("sk-nope", r)).unwrap(), AuthDecision::Deny("invalid API key".into()));
        assert_eq!(req.with(|r| p.authenticate("", r)).unwrap(), AuthDecision::Pass);
        assert_eq!(host.logs()[0].1, "1 API keys configured, 0 apps known to the gateway");
    }

    #[test]
    fn falls_back_to_gateway_keys_and_enforces_app_models() {
        let host =
            MockHost::new().with_app("app-9", "Nine", &["small-model"]).with_api_key("sk-gateway-key", "app-9", "bob");
        let p: ApiKeyAuth = host.init("{}").unwrap();
        let small = TestRequest::post("/").model("small-model");
        assert_eq!(
            small.with(|r| p.authenticate("sk-gateway-key", r)).unwrap(),
            AuthDecision::Allow { app_id: "app-9".into(), user_id: "bob".into() }
        );
        let big = TestRequest::post("/").model("big-model");
        let AuthDecision::Deny(reason) = big.with(|r| p.authenticate("sk-gateway-key", r)).unwrap() else { panic!() };
        assert!(reason.contains("may not use model `big-model`"), "{reason}");
        let off: ApiKeyAuth = host.init(r#"{"host_keys": false}"#).unwrap();
        assert!(matches!(small.with(|r| off.authenticate("sk-gateway-key", r)).unwrap(), AuthDecision::Deny(_)));
    }

    #[test]
    fn looks_up_app_and_user_by_credential() {
        let (_host, p) = plugin();
        assert_eq!(
            p.app_by_credential("sk-test-0001").unwrap(),
            Some(Record { id: "app-1".into(), name: "App One".into() })
        );
        assert_eq!(p.user_by_credential("sk-test-0001").unwrap().unwrap().name, "alice");
        assert_eq!(p.app_by_credential("sk-nope").unwrap(), None);
    }
}
