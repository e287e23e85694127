//! Startup: the gateway's shared state ([`App`]), assembled from the config in dependency
//! order, and stopped in reverse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::collector::Collector;
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::pipeline::flow::Env;
use crate::pipeline::{Pipeline, RecordSink, Slot};
use crate::plugin::{self, LoadError};
use crate::record::Record;
use crate::reload::{Live, Registry};
use crate::services::Services;
use crate::services::events::EventBus;
use crate::services::http::{HttpClient, HttpTarget};
use crate::services::kv::{EmbeddedKv, KvLimits};
use crate::services::lookup::Lookup;
use crate::upstream::Upstreams;

/// Why the gateway could not start.
#[derive(Debug)]
pub enum GatewayError {
    Load(LoadError),
    Kv(crate::services::kv::KvError),
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    Runtime(std::io::Error),
    /// The plugins do not fit together: a model routes to an executor that is not loaded (or
    /// does not speak OpenAI chat), or a plugin's routes are invalid or conflict.
    Pipeline(String),
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayError::Load(e) => write!(f, "{e}"),
            GatewayError::Kv(e) => write!(f, "{e}"),
            GatewayError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            GatewayError::Runtime(e) => write!(f, "cannot start the async runtime: {e}"),
            GatewayError::Pipeline(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GatewayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GatewayError::Load(e) => Some(e),
            GatewayError::Kv(e) => Some(e),
            GatewayError::Bind { source, .. } | GatewayError::Runtime(source) => Some(source),
            GatewayError::Pipeline(_) => None,
        }
    }
}

/// How long shutdown waits for a reload under way to finish.
pub const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Everything a request needs, shared by all connections.
pub struct App {
    pub config: GatewayConfig,
    /// The plugins, and the upstreams and models (which a config reload replaces with them).
    pub pipeline: ArcSwap<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub collector: Arc<Collector>,
    /// The collector, as the pipeline hands records to it.
    sink: Arc<dyn RecordSink>,
    pub services: Arc<Services>,
    pub registry: Registry,
    pub(crate) admin_token: Option<String>,
    boot: u32,
    next_request: AtomicU64,
}

/// A gateway dropped without [`App::shutdown`] (it failed to start serving, say) still lets go
/// of its scheduler plugins: a credential pool's binding to one is a reference cycle through
/// the host services, which only unbinding breaks.
impl Drop for App {
    fn drop(&mut self) {
        self.pipeline.load().unbind_schedulers();
    }
}

impl App {
    /// Opens host services, loads the configured plugins, builds the first pipeline, and tells
    /// the plugins they are ready.
    pub fn new(config: GatewayConfig, config_path: Option<PathBuf>) -> Result<Arc<App>, GatewayError> {
        let metrics = Arc::new(Metrics::default());
        let limits = KvLimits { max_key_bytes: config.kv.max_key_bytes, max_value_bytes: config.kv.max_value_bytes };
        let kv = EmbeddedKv::open(&config.data_dir.join("kv.redb"), limits).map_err(GatewayError::Kv)?;
        let upstreams = Upstreams::from_config(&config, Some(&*kv));
        let http = Arc::new(HttpClient::new(HttpTarget::all(&upstreams), metrics.clone()));
        let services = Services::new(
            kv,
            EventBus::start(config.event_queue, metrics.events_dropped.clone()),
            Lookup::from_config(&config, &upstreams),
            config.logging.clone(),
            metrics.clone(),
            http,
        );
        let configs = config.enabled_plugins();
        let loaded =
            plugin::load_all(&configs, &config.data_dir.join("plugins"), &services).map_err(GatewayError::Load)?;
        let slots =
            loaded.into_iter().zip(&configs).map(|(p, c)| Arc::new(Slot::new(p, c.isolate, metrics.clone()))).collect();
        let pipeline = Pipeline::new(slots, Arc::new(upstreams));
        pipeline.check().map_err(GatewayError::Pipeline)?;
        for slot in &pipeline.slots {
            slot.plugin.ready();
        }
        pipeline.bind_schedulers();
        let registry = Registry::new(&pipeline, &config, config_path);
        let collector = Arc::new(Collector::start(config.collector_queue, metrics.clone()));
        let boot = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        let app = Arc::new(App {
            pipeline: ArcSwap::from_pointee(pipeline),
            metrics,
            sink: collector.clone(),
            collector,
            services,
            registry,
            admin_token: config.admin.effective_token(),
            config,
            boot,
            next_request: AtomicU64::new(1),
        });
        // Every call a plugin makes through the host HTTP client reaches the data collectors
        // as a proxy-log record (method, `upstream:NAME/path`, status, bytes, latency).
        let weak = Arc::downgrade(&app);
        app.services.http.set_sink(Box::new(move |call| {
            let Some(app) = weak.upgrade() else { return };
            let record = Record {
                request_id: call.request_id,
                method: call.method,
                path: format!("upstream:{}{}", call.upstream, call.path),
                status: call.status,
                request_bytes: call.request_bytes,
                response_bytes: call.response_bytes,
                latency_us: call.latency_us,
                unix_ms: call.unix_ms,
                ..Record::default()
            };
            app.sink.submit(&app.pipeline.load_full(), record);
        }));
        Ok(app)
    }

    /// Stops in dependency order (after a reload under way, for at most [`RELOAD_WAIT`]): queued records reach the collectors, plugins shut down (each
    /// exactly once, ending their subscriptions), then events are delivered and KV commits.
    pub fn shutdown(&self) {
        // A reload under way finishes first (bounded: a plugin's init may hang); its swap is
        // refused, so nothing it loads escapes the shutdown below.
        self.registry.stop_reloads();
        if !self.registry.wait_for_reload(RELOAD_WAIT) {
            tracing::warn!("a reload still runs after {} s: shutting down without it", RELOAD_WAIT.as_secs());
        }
        self.collector.shutdown();
        self.pipeline.load().unbind_schedulers();
        self.pipeline.store(Arc::new(Pipeline::default()));
        self.registry.reap();
        self.services.events.shutdown();
        self.services.kv.shutdown();
    }

    /// What the request phases need besides the pipeline.
    pub fn env(&self) -> Env<'_> {
        Env { limits: &self.config.limits, sink: &self.sink }
    }

    /// What a reload works on.
    pub fn live(&self) -> Live<'_> {
        Live {
            pipeline: &self.pipeline,
            services: &self.services,
            metrics: &self.metrics,
            copies: self.config.data_dir.join("plugins"),
        }
    }

    pub fn request_id(&self) -> String {
        format!("req-{:08x}-{:x}", self.boot, self.next_request.fetch_add(1, Relaxed))
    }
}
