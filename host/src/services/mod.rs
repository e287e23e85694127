//! Host services for plugins: logging, KV, events, lookups and the HTTP client. [`Services`] is shared by the
//! gateway; each plugin instance reaches it through its own [`PluginServices`], which
//! identifies the plugin in everything it does.

pub mod events;
pub mod http;
pub mod kv;
pub mod log_fields;
pub mod lookup;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use plugin_abi::ffi::{AppInfo, HostServices, ModelInfo, ServiceResult, Subscriber, level};

use crate::config::LoggingConfig;
use crate::metrics::Metrics;
use events::EventBus;
use kv::KvStore;
use lookup::Lookup;

/// The most verbose plugin log level `logging` lets through (one of [`level`]).
fn max_level(logging: &LoggingConfig) -> u8 {
    match logging.plugin_level.as_str() {
        "error" => level::ERROR,
        "warn" => level::WARN,
        "debug" => level::DEBUG,
        "trace" => level::TRACE,
        _ => level::INFO,
    }
}

/// What every plugin instance shares.
pub struct Services {
    pub kv: Arc<dyn KvStore>,
    pub events: Arc<EventBus>,
    /// Swapped whole by a config reload.
    pub lookup: arc_swap::ArcSwap<Lookup>,
    pub logging: LoggingConfig,
    pub metrics: Arc<Metrics>,
    pub http: Arc<http::HttpClient>,
    next_instance: AtomicU64,
}

impl Services {
    pub fn new(
        kv: Arc<dyn KvStore>,
        events: Arc<EventBus>,
        lookup: Lookup,
        logging: LoggingConfig,
        metrics: Arc<Metrics>,
        http: Arc<http::HttpClient>,
    ) -> Arc<Self> {
        let lookup = arc_swap::ArcSwap::from_pointee(lookup);
        Arc::new(Services { kv, events, lookup, logging, metrics, http, next_instance: AtomicU64::new(1) })
    }
}

impl Services {
    /// Services over an embedded KV store in `dir`, with default limits and no apps: for loading
    /// plugins outside a gateway (tests, benchmarks, `gateway check`).
    pub fn standalone(dir: &std::path::Path) -> Result<Arc<Self>, kv::KvError> {
        let config = crate::config::KvConfig::default();
        let limits = kv::KvLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };
        let kv = kv::EmbeddedKv::open(&dir.join("kv.redb"), limits)?;
        let metrics = Arc::new(Metrics::default());
        let http = Arc::new(http::HttpClient::new(Default::default(), metrics.clone()));
        Ok(Services::new(
            kv,
            EventBus::start(64, metrics.events_dropped.clone()),
            Lookup::default(),
            LoggingConfig::default(),
            metrics,
            http,
        ))
    }
}

/// A token bucket: `rate` lines per second, bursts up to `burst`.
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The services one plugin instance sees.
pub struct PluginServices {
    pub name: String,
    pub version: String,
    instance: u64,
    shared: Arc<Services>,
    bucket: Mutex<Bucket>,
    log_dropped: Arc<AtomicU64>,
}

impl PluginServices {
    pub fn new(name: &str, version: &str, shared: &Arc<Services>) -> Arc<Self> {
        Arc::new(PluginServices {
            name: name.to_owned(),
            version: version.to_owned(),
            instance: shared.next_instance.fetch_add(1, Relaxed),
            bucket: Mutex::new(Bucket { tokens: f64::from(shared.logging.plugin_burst), last: Instant::now() }),
            log_dropped: shared.metrics.plugin_counter("gateway_plugin_log_dropped_total", name),
            shared: shared.clone(),
        })
    }

    /// Whether a line at `lvl` is logged: within the configured level and the plugin's rate.
    fn admit(&self, lvl: u8) -> bool {
        if lvl > max_level(&self.shared.logging) {
            return false;
        }
        if !self.admit_log() {
            let dropped = self.log_dropped.fetch_add(1, Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(plugin = %self.name, dropped, "plugin log rate limit reached: lines dropped");
            }
            return false;
        }
        true
    }

    fn admit_log(&self) -> bool {
        let logging = &self.shared.logging;
        let mut b = self.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * f64::from(logging.plugin_lines_per_sec);
        b.tokens = (b.tokens + refill).min(f64::from(logging.plugin_burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Drop for PluginServices {
    fn drop(&mut self) {
        // No handle to these services is left, so nothing can subscribe in this instance's name.
        self.shared.events.forget_owner(self.instance);
    }
}

fn ttl(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl HostServices for PluginServices {
    fn log(&self, lvl: u8, message: &str) {
        if !self.admit(lvl) {
            return;
        }
        let (plugin, version) = (self.name.as_str(), self.version.as_str());
        match lvl {
            level::ERROR => tracing::error!(target: "plugin", plugin, version, "{message}"),
            level::WARN => tracing::warn!(target: "plugin", plugin, version, "{message}"),
            level::INFO => tracing::info!(target: "plugin", plugin, version, "{message}"),
            level::DEBUG => tracing::debug!(target: "plugin", plugin, version, "{message}"),
            _ => tracing::trace!(target: "plugin", plugin, version, "{message}"),
        }
    }

    fn log_fields(&self, lvl: u8, message: &str, fields: &[(&str, &str)]) {
        if !self.admit(lvl) {
            return;
        }
        let level = match lvl {
            level::ERROR => tracing::Level::ERROR,
            level::WARN => tracing::Level::WARN,
            level::INFO => tracing::Level::INFO,
            level::DEBUG => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        };
        log_fields::emit(level, &self.name, &self.version, message, fields);
    }

    fn kv_get(&self, key: &str, read: &mut dyn FnMut(&[u8])) -> ServiceResult<bool> {
        self.shared.kv.get(&self.name, key, read).map_err(|e| e.0)
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: u64) -> ServiceResult<()> {
        self.shared.kv.set(&self.name, key, value, ttl(ttl_ms)).map_err(|e| e.0)
    }

    fn kv_delete(&self, key: &str) -> ServiceResult<bool> {
        self.shared.kv.delete(&self.name, key).map_err(|e| e.0)
    }

    fn kv_list(&self, prefix: &str, limit: usize) -> ServiceResult<Vec<String>> {
        self.shared.kv.list(&self.name, prefix, limit).map_err(|e| e.0)
    }

    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: u64) -> ServiceResult<i64> {
        self.shared.kv.increment(&self.name, key, delta, ttl(ttl_ms)).map_err(|e| e.0)
    }

    fn publish(&self, topic: &str, payload: &[u8], direction: u8) -> ServiceResult<()> {
        self.shared.events.publish(&self.name, topic, payload, direction)
    }

    fn subscribe(&self, topic: &str, subscriber: Subscriber) -> ServiceResult<u64> {
        self.shared.events.subscribe(self.instance, topic, subscriber)
    }

    fn unsubscribe(&self, id: u64) -> bool {
        self.shared.events.unsubscribe(self.instance, id)
    }

    fn get_app(&self, id: &str) -> Option<AppInfo> {
        self.shared.lookup.load().app(id)
    }

    fn list_apps(&self) -> Vec<AppInfo> {
        self.shared.lookup.load().apps()
    }

    fn model_info(&self, model: &str) -> Option<ModelInfo> {
        self.shared.lookup.load().model(model)
    }

    fn validate_credential(&self, credential: &str) -> Option<(String, String)> {
        self.shared.lookup.load().credential(credential)
    }

    fn http(&self, call: plugin_abi::ffi::HttpCall) -> plugin_abi::ffi::HttpFuture {
        self.shared.http.send(&self.name, call)
    }

    /// Ends the instance's event subscriptions (and refuses new ones); called before it is
    /// destroyed, and after a failed init.
    fn end(&self) {
        self.shared.events.end_owner(self.instance);
    }
}
