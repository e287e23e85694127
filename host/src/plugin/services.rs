//! Host services as the gateway implements them for one plugin instance.

use plugin_abi::ffi::{HostServices, level};

/// The services one plugin instance sees; identifies the plugin in everything it does.
pub struct PluginServices {
    pub name: String,
    pub version: String,
}

impl HostServices for PluginServices {
    fn log(&self, lvl: u8, message: &str) {
        let (name, version) = (self.name.as_str(), self.version.as_str());
        match lvl {
            level::ERROR => tracing::error!(target: "plugin", plugin = name, version, "{message}"),
            level::WARN => tracing::warn!(target: "plugin", plugin = name, version, "{message}"),
            level::INFO => tracing::info!(target: "plugin", plugin = name, version, "{message}"),
            level::DEBUG => tracing::debug!(target: "plugin", plugin = name, version, "{message}"),
            _ => tracing::trace!(target: "plugin", plugin = name, version, "{message}"),
        }
    }
}
