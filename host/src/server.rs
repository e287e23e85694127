//! The HTTP server: routes, input limits, and one request's way through the pipeline.
//!
//! ```text
//! read + validate ─▶ pre_auth ─▶ auth ─▶ post_auth ─▶ before_selection ─▶ select upstream
//!   ─▶ after_selection ─▶ upstream ─▶ response headers ─▶ response body      (non-streaming)
//!                                                     └▶ stream chunks, per chunk (streaming)
//!                                                        ─▶ stream complete
//!   ─▶ data collectors (queued, off the request path)
//! ```

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use plugin_abi::ffi::{RawUpstream, StreamSummary};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_io_timeout::TimeoutStream;

use crate::body::GatewayBody;
use crate::collector::{Collector, Record};
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pipeline::{ContextState, Pipeline, RequestState, ResponseState, Slot, Stop, check_executors};
use crate::plugin::{self, LoadError};
use crate::reload::{Registry, ReloadError};
use crate::services::Services;
use crate::services::events::EventBus;
use crate::services::http::HttpClient;
use crate::services::kv::{EmbeddedKv, KvLimits};
use crate::services::lookup::Lookup;
use crate::upstream::{Route, Target, UpstreamReply, Upstreams, usage_of};

/// Lives with the SSE parser (the mock upstream frames its streams with it too); re-exported for
/// existing callers.
pub use crate::upstream::sse::sse_frame;

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
    /// A model routes to an executor that is not loaded, or does not speak OpenAI chat.
    Executor(String),
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayError::Load(e) => write!(f, "{e}"),
            GatewayError::Kv(e) => write!(f, "{e}"),
            GatewayError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            GatewayError::Runtime(e) => write!(f, "cannot start the async runtime: {e}"),
            GatewayError::Executor(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GatewayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GatewayError::Load(e) => Some(e),
            GatewayError::Kv(e) => Some(e),
            GatewayError::Bind { source, .. } | GatewayError::Runtime(source) => Some(source),
            GatewayError::Executor(_) => None,
        }
    }
}

/// Everything a request needs, shared by all connections.
pub struct App {
    pub config: GatewayConfig,
    pub pipeline: ArcSwap<Pipeline>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    pub collector: Collector,
    pub services: Arc<Services>,
    pub registry: Registry,
    admin_token: Option<String>,
    boot: u32,
    next_request: AtomicU64,
}

impl App {
    /// Opens host services, loads the configured plugins, builds the first pipeline, and tells
    /// the plugins they are ready.
    pub fn new(config: GatewayConfig, config_path: Option<PathBuf>) -> Result<Arc<App>, GatewayError> {
        let metrics = Arc::new(Metrics::default());
        let upstreams = Upstreams::from_config(&config);
        let limits = KvLimits { max_key_bytes: config.kv.max_key_bytes, max_value_bytes: config.kv.max_value_bytes };
        let kv = EmbeddedKv::open(&config.data_dir.join("kv.redb"), limits).map_err(GatewayError::Kv)?;
        let http = Arc::new(HttpClient::new(upstreams.http_targets(), metrics.clone()));
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
        let pipeline = Pipeline::new(slots);
        let routed = upstreams.routes.values().filter_map(|r| match &r.target {
            Target::Executor(name) => Some((r.model.as_str(), name.as_str())),
            Target::Upstream(_) => None,
        });
        check_executors(&pipeline, routed).map_err(GatewayError::Executor)?;
        for slot in &pipeline.slots {
            slot.plugin.ready();
        }
        let registry = Registry::new(&pipeline, &configs, config_path);
        let collector = Collector::start(config.collector_queue, metrics.clone());
        let boot = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        let app = Arc::new(App {
            upstreams,
            pipeline: ArcSwap::from_pointee(pipeline),
            metrics,
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
            app.collector.submit(&app.pipeline.load_full(), record);
        }));
        Ok(app)
    }

    /// Stops in dependency order: queued records reach the collectors, plugins shut down (each
    /// exactly once, ending their subscriptions), then events are delivered and KV commits.
    pub fn shutdown(&self) {
        self.collector.shutdown();
        self.pipeline.store(Arc::new(Pipeline::default()));
        self.registry.reap();
        self.services.events.shutdown();
        self.services.kv.shutdown();
    }

    fn request_id(&self) -> String {
        format!("req-{:08x}-{:x}", self.boot, self.next_request.fetch_add(1, Relaxed))
    }
}

/// Counts a value up while alive.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn new(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Serves `listener` until `shutdown` resolves, then lets open connections finish (up to 10 s).
/// At most `limits.max_connections` connections are served at once, and a write to a client
/// that stays blocked for `limits.write_timeout_ms` cuts its connection.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let limits = &app.config.limits;
    // hyper refuses heads beyond its buffer outright; our own, friendlier check runs below that.
    let max_buf = (limits.max_header_bytes * 4).max(8192);
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let max_connections = limits.max_connections;
    let refusing = Arc::new(Semaphore::new(REFUSALS_ANSWERED));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            app.metrics.connections_refused.fetch_add(1, Relaxed);
            // A few refusals are answered with a 503; beyond that, a flood is simply closed.
            if let Ok(answering) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, max_connections).await;
                    drop(answering);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(write_timeout));
        let app = app.clone();
        let svc_app = app.clone();
        let service = service_fn(move |req| {
            let app = svc_app.clone();
            async move { Ok::<_, Infallible>(handle(&app, req, peer).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(max_buf)
            .serve_connection(TokioIo::new(Box::pin(io)), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            let _open = Gauge::new(&app.metrics.open_connections);
            if let Err(e) = conn.await {
                if is_timeout(&e) {
                    app.metrics.write_timeouts.fetch_add(1, Relaxed);
                    tracing::info!(%peer, "client stopped reading: connection cut after {} ms", write_timeout.as_millis());
                } else {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after 10 s; stopping anyway");
    }
}

/// Connections over the cap that get a 503 at once; more are closed without an answer.
const REFUSALS_ANSWERED: usize = 64;

/// Whether `e` (or what caused it) is an I/O timeout.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Answers a connection over the cap with a 503 and closes it, without reading its request.
async fn refuse(mut stream: tokio::net::TcpStream, cap: usize) {
    use tokio::io::AsyncWriteExt;
    let body = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "too_many_connections",
        format!("the gateway serves at most {cap} connections at once; try again shortly"),
    )
    .body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Builds the runtime, loads plugins, serves until SIGINT or SIGTERM, then shuts plugins down.
/// SIGHUP (and, with `[admin] watch`, a change to a plugin file or the config) reloads every
/// plugin whose file or config changed.
pub fn run(config: GatewayConfig, config_path: Option<PathBuf>) -> Result<(), GatewayError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(GatewayError::Runtime)?;
    // Inside the runtime's context: the host HTTP client runs its calls on it.
    let app = {
        let _entered = runtime.enter();
        App::new(config, config_path)?
    };
    let _watcher = if app.config.admin.watch { Some(watch(&app)) } else { None };
    runtime.block_on(async {
        tokio::spawn(reaper(app.clone()));
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => drop(tokio::spawn(reload_on_sighup(app.clone(), hup))),
            Err(e) => tracing::warn!("cannot install the SIGHUP handler, reload with the admin API: {e}"),
        }
        let addr = app.config.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| GatewayError::Bind { addr, source })?;
        tracing::info!(%local, plugins = app.pipeline.load().slots.len(), "gateway listening");
        // Tests and scripts read this line to find the port.
        println!("listening on http://{local}");
        // Installed before the port is announced: a SIGTERM sent as soon as the gateway answers
        // must stop it cleanly, not kill it with the default action.
        let signalled = shutdown_signal();
        let stopping = app.clone();
        let shutdown = async move {
            signalled.await;
            // No reload may start while connections drain and plugins shut down.
            stopping.registry.stop_reloads();
        };
        serve(app.clone(), listener, shutdown).await;
        Ok::<(), GatewayError>(())
    })?;
    drop(runtime);
    drop(_watcher);
    // A plugin whose shutdown hangs must not keep the process from exiting.
    let (done, finished) = crossbeam_channel::bounded(1);
    let stopping = app.clone();
    std::thread::spawn(move || {
        stopping.shutdown();
        let _ = done.send(());
    });
    if finished.recv_timeout(SHUTDOWN_WAIT).is_err() {
        tracing::error!("plugins did not shut down within {} s: exiting without them", SHUTDOWN_WAIT.as_secs());
        return Ok(());
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// How long stopping waits for plugins to shut down before the process exits anyway.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// Shuts down and unloads retired plugin versions once no request uses them. Each reap runs on
/// a blocking thread and is not awaited: a plugin whose shutdown hangs holds its own thread,
/// not the reaper.
async fn reaper(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if app.registry.has_pending() {
            let app = app.clone();
            drop(tokio::task::spawn_blocking(move || app.registry.reap()));
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(app: Arc<App>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading changed plugins");
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || app.registry.reload_changed(&app)).await;
    }
}

/// Watches plugin files and the config file; a burst of changes (a `cargo build` rewriting a
/// file) triggers one reload, after `watch_debounce_ms` of quiet.
fn watch(app: &Arc<App>) -> Result<notify_debouncer_mini::Debouncer<notify::RecommendedWatcher>, notify::Error> {
    let mut files: Vec<PathBuf> = app.pipeline.load().slots.iter().map(|s| s.plugin.source_path.clone()).collect();
    files.extend(app.registry.config_path().map(Path::to_path_buf));
    let debounce = Duration::from_millis(app.config.admin.watch_debounce_ms.unwrap_or(300));
    let watched = files.clone();
    let target = Arc::downgrade(app);
    let mut debouncer =
        notify_debouncer_mini::new_debouncer(debounce, move |events: notify_debouncer_mini::DebounceEventResult| {
            let Ok(events) = events else { return };
            if !events.iter().any(|e| watched.iter().any(|f| *f == e.path)) {
                return;
            }
            if let Some(app) = target.upgrade() {
                tracing::info!("plugin or config file changed: reloading changed plugins");
                app.registry.reload_changed(&app);
            }
        })?;
    // Directories, not files: builds and editors replace files by renaming over them.
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        debouncer.watcher().watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(debouncer)
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that ends on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    tracing::error!("cannot install signal handlers: stop the gateway with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
            tracing::info!("shutting down");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<GatewayBody> {
    let mut resp = Response::new(GatewayBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(e: &ApiError) -> Response<GatewayBody> {
    json_response(e.status, e.body())
}

async fn handle(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<GatewayBody> {
    let started = Instant::now();
    let _inflight = Gauge::new(&app.metrics.inflight_requests);
    let path = req.uri().path();
    let resp = match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions") => chat(app, req, peer, started).await,
        (&Method::POST, "/v1/count_tokens") => count_tokens(app, req, peer, started).await,
        (&Method::GET, "/v1/models") => models(app),
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(GatewayBody::full(app.metrics.render()));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            resp
        }
        (m, "/v1/chat/completions" | "/v1/count_tokens") => {
            error_response(&ApiError::method_not_allowed(m, path, "POST"))
        }
        (_, p) if p.starts_with("/admin/executors/") && p.contains("/http/") => executor_http(app, req).await,
        (m, "/v1/models" | "/healthz" | "/metrics") => error_response(&ApiError::method_not_allowed(m, path, "GET")),
        (m, p) if p.starts_with("/admin/") => admin(app, m, p, req.headers()).await,
        _ => error_response(&ApiError::not_found(path)),
    };
    app.metrics.count_request(resp.status().as_u16(), started.elapsed());
    resp
}

/// `Err` with the 401 to send unless `headers` carry the admin token.
fn admin_check(app: &App, headers: &HeaderMap) -> Result<(), Response<GatewayBody>> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok()));
    let authorized = match (&app.admin_token, given) {
        (Some(token), Some(given)) => constant_time_eq(token.as_bytes(), given.as_bytes()),
        _ => false,
    };
    if !authorized {
        let e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "admin_unauthorized",
            if app.admin_token.is_some() {
                "admin endpoints need `Authorization: Bearer <admin token>`"
            } else {
                "admin endpoints are disabled: set [admin] token or GATEWAY_ADMIN_TOKEN"
            },
        );
        return Err(error_response(&e));
    }
    Ok(())
}

/// `GET /admin/plugins`, `GET /admin/executors`, `POST /admin/plugins/{name}/reload`,
/// `POST /admin/reload`.
async fn admin(app: &Arc<App>, method: &Method, path: &str, headers: &HeaderMap) -> Response<GatewayBody> {
    if let Err(denied) = admin_check(app, headers) {
        return denied;
    }
    let json = |status, value: serde_json::Value| json_response(status, Bytes::from(value.to_string()));
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["plugins"]) => json(StatusCode::OK, serde_json::json!({ "plugins": app.registry.status(app) })),
        (&Method::GET, ["executors"]) => {
            let pipeline = app.pipeline.load();
            let executors: Vec<serde_json::Value> = pipeline
                .executor_names()
                .map(|name| match pipeline.describe_executor(name) {
                    Ok(info) => serde_json::json!({ "name": name, "executor": info }),
                    Err(e) => serde_json::json!({ "name": name, "error": e }),
                })
                .collect();
            json(StatusCode::OK, serde_json::json!({ "executors": executors }))
        }
        (&Method::POST, ["reload"]) => {
            let worker = app.clone();
            let results =
                tokio::task::spawn_blocking(move || worker.registry.reload_changed(&worker)).await.unwrap_or_default();
            let failed = results.iter().any(|(_, r)| r.is_err());
            let body: Vec<serde_json::Value> = results
                .into_iter()
                .map(|(name, r)| match r {
                    Ok(done) => serde_json::to_value(done).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "plugin": name, "outcome": "failed", "error": e.to_string() }),
                })
                .collect();
            let status = if failed { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
            json(status, serde_json::json!({ "results": body }))
        }
        (&Method::POST, ["plugins", name, "reload"]) => {
            let (worker, name) = (app.clone(), (*name).to_owned());
            let result = tokio::task::spawn_blocking(move || worker.registry.reload(&worker, &name)).await;
            match result {
                Ok(Ok(done)) => json(StatusCode::OK, serde_json::to_value(done).unwrap_or_default()),
                Ok(Err(e @ ReloadError::UnknownPlugin { .. })) => error_response(&ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "unknown_plugin",
                    e.to_string(),
                )),
                Ok(Err(e)) => error_response(&ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    "reload_failed",
                    format!("{e}; the running version keeps serving"),
                )),
                Err(e) => error_response(&ApiError::upstream(format!("reload task failed: {e}"))),
            }
        }
        _ => error_response(&ApiError::not_found(path)),
    }
}

/// `ANY /admin/executors/{name}/http/{path}`: the request, minus that prefix, passed through
/// to executor `name`'s `http_request` (which calls its provider with its credentials).
async fn executor_http(app: &Arc<App>, req: Request<Incoming>) -> Response<GatewayBody> {
    if let Err(denied) = admin_check(app, req.headers()) {
        return denied;
    }
    let rest = req.uri().path().trim_start_matches("/admin/executors/");
    let Some((name, path)) = rest.split_once("/http") else {
        return error_response(&ApiError::not_found(req.uri().path()));
    };
    let name = name.to_owned();
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{}?{q}", if path.is_empty() { "/" } else { path }),
        None => if path.is_empty() { "/" } else { path }.to_owned(),
    };
    let Ok(uri) = path_and_query.parse::<http::Uri>() else {
        return error_response(&ApiError::invalid_request("invalid_path", "expected a valid path after /http"));
    };
    let limits = &app.config.limits;
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_response(&ApiError::too_large(limits.max_body_bytes, None)),
    };
    let state = RequestState {
        method: parts.method,
        uri,
        headers: parts.headers,
        body,
        ctx: ContextState { request_id: app.request_id(), ..ContextState::default() },
    };
    let pipeline = app.pipeline.load_full();
    match pipeline.executor_http(&name, &state).await {
        Ok((status, headers, body)) => {
            let mut resp = Response::new(GatewayBody::full(body));
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            resp
        }
        Err(e) => error_response(&e),
    }
}

/// `POST /v1/count_tokens`: a chat request's input tokens, counted by the executor its model
/// routes to, after the same request hooks a chat request goes through.
async fn count_tokens(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
) -> Response<GatewayBody> {
    let pipeline = app.pipeline.load_full();
    let request_id = app.request_id();
    let mut record = Record {
        request_id: request_id.clone(),
        method: "POST".into(),
        path: req.uri().path().to_owned(),
        unix_ms: unix_ms(),
        ..Record::default()
    };
    let mut req = match read_request(app, req, peer, request_id).await {
        Ok(r) => r,
        Err(e) => {
            let ctx = ContextState { request_id: record.request_id.clone(), ..ContextState::default() };
            return finish(app, &pipeline, record, error_state(&e), &ctx, started);
        }
    };
    record.request_bytes = req.body.len() as u64;
    let phases = request_phases(app, &pipeline, &mut req);
    record.app_id.clone_from(&req.ctx.app_id);
    record.user_id.clone_from(&req.ctx.user_id);
    record.model.clone_from(&req.ctx.model);
    let resp = match phases {
        Err(Stop::Respond(resp)) => resp,
        Err(Stop::Error(e)) => error_state(&e),
        Ok((route, _)) => match &route.target {
            Target::Executor(name) => match pipeline.count_tokens(name, &req, &route.upstream_model).await {
                Ok(n) => ResponseState {
                    status: StatusCode::OK,
                    headers: json_headers(),
                    body: Bytes::from(
                        serde_json::json!({ "object": "token_count", "model": req.ctx.model, "input_tokens": n })
                            .to_string(),
                    ),
                },
                Err(e) => error_state(&e),
            },
            Target::Upstream(i) => error_state(&ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request_error",
                "count_tokens_unsupported",
                format!(
                    "model `{}` is served by upstream `{}`, which cannot count tokens: expected a model served by an executor plugin",
                    req.ctx.model,
                    app.upstreams.upstreams[*i].name()
                ),
            )),
        },
    };
    finish(app, &pipeline, record, resp, &req.ctx, started)
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn models(app: &App) -> Response<GatewayBody> {
    let data: Vec<serde_json::Value> = app
        .upstreams
        .models
        .iter()
        .map(|m| {
            let owner = app.upstreams.routes.get(m).map_or("", |r| app.upstreams.owner(r));
            serde_json::json!({ "id": m, "object": "model", "created": 0, "owned_by": owner })
        })
        .collect();
    json_response(StatusCode::OK, Bytes::from(serde_json::json!({ "object": "list", "data": data }).to_string()))
}

/// The fields of a chat request the gateway itself needs; the rest passes through untouched.
#[derive(Deserialize)]
struct ChatPeek<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(default)]
    stream: bool,
    messages: Vec<IgnoredAny>,
}

fn peek(body: &[u8]) -> Result<(String, bool), ApiError> {
    let p: ChatPeek<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid_request(
            "invalid_request",
            format!("invalid chat request: expected `model` and `messages`, found {e}"),
        ),
        _ => ApiError::invalid_request(
            "invalid_json",
            format!("request body is not valid JSON: expected a JSON object, found {e}"),
        ),
    })?;
    if p.messages.is_empty() {
        return Err(ApiError::invalid_request(
            "invalid_request",
            "`messages` must not be empty: expected at least one message",
        ));
    }
    Ok((p.model.into_owned(), p.stream))
}

/// Reads and checks the request; what fails here never reaches a plugin.
async fn read_request(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    request_id: String,
) -> Result<RequestState, ApiError> {
    let limits = &app.config.limits;
    let (parts, body) = req.into_parts();
    let head_bytes: usize = parts.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if head_bytes > limits.max_header_bytes {
        return Err(ApiError::headers_too_large(limits.max_header_bytes, head_bytes));
    }
    let content_type =
        parts.headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match content_type.as_deref() {
        Some(ct) if ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")) => {}
        other => return Err(ApiError::unsupported_media_type(other.unwrap_or("(none)"))),
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > limits.max_body_bytes as u64) {
        return Err(ApiError::too_large(limits.max_body_bytes, Some(len)));
    }
    let read = tokio::time::timeout(
        Duration::from_millis(limits.body_timeout_ms),
        Limited::new(body, limits.max_body_bytes).collect(),
    );
    let body = match read.await {
        Err(_) => return Err(ApiError::timeout("request body")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::too_large(limits.max_body_bytes, None));
        }
        Ok(Err(e)) => {
            return Err(ApiError::invalid_request("invalid_body", format!("could not read the request body: {e}")));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let (model, _) = peek(&body)?;
    Ok(RequestState {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        ctx: ContextState { request_id, model, client_ip: peer.ip().to_string(), ..ContextState::default() },
    })
}

fn credential(headers: &HeaderMap) -> &str {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(token) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            return token.trim();
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("").trim()
}

/// The request phases up to the upstream. Returns the route and whether to stream.
fn request_phases<'u>(app: &'u App, pipeline: &Pipeline, req: &mut RequestState) -> Result<(&'u Route, bool), Stop> {
    pipeline.pre_auth(req)?;
    if pipeline.requires_auth() {
        let cred = credential(&req.headers).to_owned();
        pipeline.auth(req, &cred)?;
    }
    pipeline.post_auth(req)?;
    pipeline.before_selection(req)?;
    // Hooks may have rewritten the body: the model and stream flag are read from what they left.
    let (model, _) = peek(&req.body)?;
    req.ctx.model = model;
    let route = app.upstreams.route(&req.ctx.model)?;
    let base_url = match &route.target {
        Target::Upstream(i) => app.upstreams.upstreams[*i].base_url(),
        Target::Executor(_) => "",
    };
    let raw = RawUpstream {
        name: app.upstreams.owner(route).into(),
        kind: app.upstreams.owner_kind(route).into(),
        base_url: base_url.into(),
        model: route.upstream_model.as_str().into(),
    };
    pipeline.after_selection(req, &raw)?;
    let (_, stream) = peek(&req.body)?;
    Ok((route, stream))
}

fn into_response(resp: ResponseState, request_id: &str) -> Response<GatewayBody> {
    let mut out = Response::new(GatewayBody::full(resp.body));
    *out.status_mut() = resp.status;
    *out.headers_mut() = resp.headers;
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.headers_mut().insert("x-request-id", v);
    }
    out
}

fn error_state(e: &ApiError) -> ResponseState {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    ResponseState { status: e.status, headers, body: e.body() }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn chat(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr, started: Instant) -> Response<GatewayBody> {
    let pipeline = app.pipeline.load_full();
    let request_id = app.request_id();
    let mut record = Record {
        request_id: request_id.clone(),
        method: "POST".into(),
        path: req.uri().path().to_owned(),
        unix_ms: unix_ms(),
        ..Record::default()
    };
    let mut req = match read_request(app, req, peer, request_id).await {
        Ok(r) => r,
        Err(e) => {
            let ctx = ContextState { request_id: record.request_id.clone(), ..ContextState::default() };
            return finish(app, &pipeline, record, error_state(&e), &ctx, started);
        }
    };
    record.request_bytes = req.body.len() as u64;
    let phases = request_phases(app, &pipeline, &mut req);
    record.app_id.clone_from(&req.ctx.app_id);
    record.user_id.clone_from(&req.ctx.user_id);
    record.model.clone_from(&req.ctx.model);
    let (route, stream) = match phases {
        Ok(ok) => ok,
        Err(stop) => {
            // Short-circuit: later request hooks are skipped; the response headers phase still
            // runs (so headers are stamped on every response); the body phase, which is for
            // upstream bodies, does not.
            let (mut resp, failed) = match stop {
                Stop::Respond(resp) => (resp, false),
                Stop::Error(e) => (error_state(&e), true),
            };
            if let Err(e) = pipeline.response_headers(&req.ctx, &mut resp) {
                // The first failure is the one worth reporting.
                if failed {
                    tracing::warn!(request_id = %req.ctx.request_id, "response headers phase failed too: {e}");
                } else {
                    resp = error_state(&e);
                }
            }
            return finish(app, &pipeline, record, resp, &req.ctx, started);
        }
    };
    record.upstream = app.upstreams.owner(route).to_owned();
    let reply = match &route.target {
        Target::Upstream(i) => app.upstreams.upstreams[*i].call(req.body.clone(), route, stream).await,
        Target::Executor(name) => pipeline.execute(name, &req, &route.upstream_model, stream).await,
    };
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return finish(app, &pipeline, record, error_state(&e), &req.ctx, started),
    };
    match reply {
        UpstreamReply::Full { status, headers, body } => {
            record.usage = usage_of(&body);
            let mut resp = ResponseState { status, headers, body };
            let phases = pipeline
                .response_headers(&req.ctx, &mut resp)
                .and_then(|()| pipeline.response_body(&req.ctx, &mut resp));
            if let Err(e) = phases {
                resp = error_state(&e);
            }
            record.ttft_us = started.elapsed().as_micros() as u64;
            finish(app, &pipeline, record, resp, &req.ctx, started)
        }
        UpstreamReply::Stream { status, headers, events } => {
            record.streamed = true;
            let mut head = ResponseState { status, headers, body: Bytes::new() };
            if let Err(e) = pipeline.response_headers(&req.ctx, &mut head) {
                return finish(app, &pipeline, record, error_state(&e), &req.ctx, started);
            }
            let filters = match pipeline.stream_start(&req.ctx, &head) {
                Ok(f) => f,
                Err(e) => {
                    return finish(app, &pipeline, record, error_state(&e), &req.ctx, started);
                }
            };
            let (tx, rx) = mpsc::channel::<Bytes>(16);
            let request_id = req.ctx.request_id.clone();
            let task =
                StreamTask { app: app.clone(), pipeline, filters, events, tx, ctx: req.ctx, record, started, status };
            tokio::spawn(task.run());
            let mut out = Response::new(GatewayBody::Stream(rx));
            *out.status_mut() = head.status;
            *out.headers_mut() = head.headers;
            out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                out.headers_mut().insert("x-request-id", v);
            }
            out
        }
    }
}

/// Sends a whole response and queues its record.
fn finish(
    app: &App,
    pipeline: &Arc<Pipeline>,
    mut record: Record,
    resp: ResponseState,
    ctx: &ContextState,
    started: Instant,
) -> Response<GatewayBody> {
    record.status = resp.status.as_u16();
    record.response_bytes = resp.body.len() as u64;
    record.latency_us = started.elapsed().as_micros() as u64;
    app.collector.submit(pipeline, record);
    into_response(resp, &ctx.request_id)
}

/// Runs one stream: upstream events through the chunk plugins to the client, then the
/// stream-complete hooks and the record.
struct StreamTask {
    app: Arc<App>,
    pipeline: Arc<Pipeline>,
    filters: crate::pipeline::StreamFilters,
    events: crate::upstream::Events,
    tx: mpsc::Sender<Bytes>,
    ctx: ContextState,
    record: Record,
    started: Instant,
    status: StatusCode,
}

impl StreamTask {
    async fn run(mut self) {
        let (mut chunks, mut bytes, mut completed) = (0u64, 0u64, false);
        loop {
            let next = tokio::select! {
                next = self.events.next() => next,
                () = self.tx.closed() => break,
            };
            let data = match next {
                None => {
                    completed = true;
                    break;
                }
                Some(Ok(data)) => data,
                Some(Err(message)) => {
                    tracing::warn!(request_id = %self.ctx.request_id, "{message}");
                    let _ = self.tx.send(sse_frame(&ApiError::upstream(message).body())).await;
                    break;
                }
            };
            if let Some(usage) = usage_of(&data) {
                self.record.usage = Some(usage);
            }
            let out = match self.filters.on_chunk(data, &self.ctx.request_id) {
                Ok(Some(out)) => out,
                Ok(None) => continue,
                Err(e) => {
                    let _ = self.tx.send(sse_frame(&e.body())).await;
                    break;
                }
            };
            if chunks == 0 {
                self.record.ttft_us = self.started.elapsed().as_micros() as u64;
            }
            chunks += 1;
            bytes += out.len() as u64;
            if self.tx.send(sse_frame(&out)).await.is_err() {
                break;
            }
        }
        if completed {
            completed = self.tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await.is_ok();
        }
        // Plugin stream state ends before stream-complete hooks run.
        drop(self.filters);
        let duration = self.started.elapsed();
        let summary = StreamSummary {
            status: self.status.as_u16(),
            chunks,
            bytes,
            duration_us: duration.as_micros() as u64,
            completed,
        };
        self.pipeline.stream_complete(&self.ctx, &summary);
        self.record.status = self.status.as_u16();
        self.record.response_bytes = bytes;
        self.record.latency_us = duration.as_micros() as u64;
        self.app.collector.submit(&self.pipeline, self.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chat(model: &str, stream: bool) -> String {
        serde_json::json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": "x" }] })
            .to_string()
    }

    proptest! {
        /// The request reader's check: any bytes are a chat request or a 400 that says why.
        #[test]
        fn any_body_is_a_chat_request_or_a_400(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = peek(&body) {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                prop_assert!(e.message.contains("expected"), "{}", e.message);
            }
        }

        /// A valid request cut or corrupted anywhere is refused, never misread.
        #[test]
        fn a_cut_or_corrupted_request_is_refused(model in "[a-z0-9-]{1,12}", at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let body = chat(&model, true).into_bytes();
            let cut = at.index(body.len());
            prop_assert!(peek(&body[..cut]).is_err());
            let mut corrupted = body.clone();
            corrupted[cut] = byte;
            if let Ok((m, _)) = peek(&corrupted) {
                // A change inside the model name (or a whitespace swap) may still be valid JSON.
                prop_assert!(m.len() == model.len() || corrupted[cut].is_ascii_whitespace());
            }
        }

        /// Model and stream flag come back as sent, whatever the model's characters.
        #[test]
        fn chat_requests_give_their_model_and_stream_flag(model in "\\PC{0,24}", stream in any::<bool>()) {
            let (m, s) = peek(chat(&model, stream).as_bytes()).unwrap();
            prop_assert_eq!(m, model);
            prop_assert_eq!(s, stream);
        }

        /// Credential extraction takes any header values without panicking.
        #[test]
        fn credentials_never_panic(auth in proptest::collection::vec(any::<u8>(), 0..64), key in "[ -~]{0,32}") {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&auth) {
                headers.insert(header::AUTHORIZATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&key) {
                headers.insert("x-api-key", v);
            }
            let found = credential(&headers);
            prop_assert_eq!(found, found.trim());
        }
    }
}
