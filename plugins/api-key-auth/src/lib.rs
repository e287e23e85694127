//! Auth: API keys from the plugin's config map to an app id and a user id.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use plugin_abi::{Auth, AuthDecision, Config, ConfigProvider, Host, Plugin, PluginError, Record, Request};

#[derive(plugin_abi::Plugin)]
#[plugin(name = "api-key-auth", capabilities(Auth, ConfigProvider))]
pub struct ApiKeyAuth {
    keys: HashMap<String, Key>,
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
    keys: HashMap<String, Key>,
}

impl Plugin for ApiKeyAuth {
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {
        let settings: Settings = config.parse()?;
        host.info(&format!("{} API keys configured", settings.keys.len()));
        Ok(ApiKeyAuth { keys: settings.keys })
    }
}

impl ConfigProvider for ApiKeyAuth {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "required": ["keys"],
        "additionalProperties": false,
        "properties": {
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
    fn authenticate(&self, credential: &str, _req: &Request<'_>) -> Result<AuthDecision, PluginError> {
        if credential.is_empty() {
            return Ok(AuthDecision::Pass);
        }
        Ok(match self.keys.get(credential) {
            Some(key) => AuthDecision::Allow { app_id: key.app.clone(), user_id: key.user.clone() },
            None => AuthDecision::Deny("invalid API key".into()),
        })
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
        assert_eq!(host.logs()[0].1, "1 API keys configured");
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
