//! What plugins can look up about the gateway: apps, API keys and models from its config.

use std::collections::HashMap;

use plugin_abi::ffi::{AppInfo, ModelInfo};

use crate::config::GatewayConfig;
use crate::upstream::Upstreams;

#[derive(Default)]
pub struct Lookup {
    apps: Vec<AppInfo>,
    /// API key → (app id, user id).
    keys: HashMap<String, (String, String)>,
    models: Vec<ModelInfo>,
}

impl Lookup {
    pub fn from_config(config: &GatewayConfig, upstreams: &Upstreams) -> Lookup {
        let apps = config
            .apps
            .iter()
            .map(|a| AppInfo {
                id: a.id.as_str().into(),
                name: a.name.as_str().into(),
                models: a.models.iter().map(|m| m.as_str().into()).collect(),
            })
            .collect();
        let keys = config.api_keys.iter().map(|k| (k.key.clone(), (k.app.clone(), k.user.clone()))).collect();
        let models = upstreams
            .models
            .iter()
            .filter_map(|name| {
                let route = upstreams.routes.get(name)?;
                Some(ModelInfo {
                    name: name.as_str().into(),
                    upstream: upstreams.owner(route).into(),
                    upstream_kind: upstreams.owner_kind(route).into(),
                    upstream_model: route.upstream_model.as_str().into(),
                })
            })
            .collect();
        Lookup { apps, keys, models }
    }

    pub fn app(&self, id: &str) -> Option<AppInfo> {
        self.apps.iter().find(|a| a.id.as_str() == id).cloned()
    }

    pub fn apps(&self) -> Vec<AppInfo> {
        self.apps.clone()
    }

    pub fn model(&self, name: &str) -> Option<ModelInfo> {
        self.models.iter().find(|m| m.name.as_str() == name).cloned()
    }

    pub fn credential(&self, key: &str) -> Option<(String, String)> {
        self.keys.get(key).cloned()
    }
}
