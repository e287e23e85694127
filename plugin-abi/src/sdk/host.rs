//! The plugin's handle to host services, and the plugin's config.

use abi_stable::std_types::{RNone, RSome, RStr};
use serde::de::DeserializeOwned;

use crate::ffi;
use crate::sdk::PluginError;

/// Host services, handed to [`crate::Plugin::init`]. Cheap to clone; usable from any thread for the
/// life of the plugin instance. A service the host does not offer (an older gateway) is a no-op.
#[derive(Clone)]
pub struct Host {
    raw: ffi::HostHandle,
    log: Option<&'static ffi::LogV1>,
    /// Keeps a mock host's state alive; the real host owns its own.
    _mock: Option<std::sync::Arc<ffi::MockServices>>,
}

impl Host {
    /// Wraps the handle the host passed to `create`, resolving and layout-checking services once.
    pub fn from_raw(raw: ffi::HostHandle) -> Self {
        Host {
            raw,
            log: lookup::<ffi::LogV1>(&raw),
            _mock: None,
        }
    }

    pub(crate) fn mock(services: std::sync::Arc<ffi::MockServices>) -> Self {
        let raw = ffi::host_handle(&services);
        Host {
            _mock: Some(services),
            ..Host::from_raw(raw)
        }
    }

    /// Sends a line to the gateway's log, tagged with this plugin's name and version.
    pub fn log(&self, level: Level, message: &str) {
        if let Some(log) = self.log {
            (log.log)(self.raw.ctx, level as u8, RStr::from_str(message));
        }
    }

    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }
}

fn lookup<T: ffi::Table>(raw: &ffi::HostHandle) -> Option<&'static T> {
    match (raw.service)(raw.ctx, T::ID, T::VERSION) {
        RSome(entry) => entry.get::<T>().ok(),
        RNone => None,
    }
}

/// Log levels, most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = ffi::level::ERROR,
    Warn = ffi::level::WARN,
    Info = ffi::level::INFO,
    Debug = ffi::level::DEBUG,
    Trace = ffi::level::TRACE,
}

impl Level {
    pub fn from_u8(level: u8) -> Option<Level> {
        Some(match level {
            ffi::level::ERROR => Level::Error,
            ffi::level::WARN => Level::Warn,
            ffi::level::INFO => Level::Info,
            ffi::level::DEBUG => Level::Debug,
            ffi::level::TRACE => Level::Trace,
            _ => return None,
        })
    }
}

/// The plugin's config table from the gateway config, as JSON.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a>(&'a str);

impl<'a> Config<'a> {
    pub fn new(json: &'a str) -> Self {
        Config(json)
    }

    /// The config as JSON text (`{}` when the gateway config gives none).
    pub fn as_json(&self) -> &'a str {
        self.0
    }

    /// Deserializes the config; a mismatch is an [`PluginError::config`] naming the problem.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_str(self.0)
            .map_err(|e| PluginError::config(format!("invalid config: {e}")))
    }
}
