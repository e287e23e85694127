//! Unit-testing plugins without the gateway: a mock host, and owned requests, responses and
//! streams that hand hooks the same borrowed views the gateway does.
//!
//! ```
//! use plugin_abi::testing::{MockHost, TestRequest};
//! let host = MockHost::new();
//! host.host().info("hello");
//! assert_eq!(host.logs(), vec![(plugin_abi::Level::Info, "hello".to_string())]);
//! let path = TestRequest::post("/v1/chat/completions").with(|req| req.path().to_owned());
//! assert_eq!(path, "/v1/chat/completions");
//! ```

use std::sync::Arc;

use abi_stable::std_types::{RSlice, RStr};

use crate::ffi::{self, ChunkHistory, MockServices};
use crate::sdk::{
    Chunk, ChunkDecision, Config, Context, Host, Level, Plugin, PluginError, Request, StreamChunk, Upstream,
    UpstreamResponse,
};

/// A host whose services record what plugins do with them.
#[derive(Default)]
pub struct MockHost {
    services: Arc<MockServices>,
}

impl MockHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle to this mock, as `Plugin::init` receives it.
    pub fn host(&self) -> Host {
        Host::mock(self.services.clone())
    }

    /// Creates a plugin from a JSON config as the gateway does: the config is validated against
    /// the plugin's schema ([`ConfigProvider`](crate::ConfigProvider)) first, and every place it
    /// breaks the schema is reported, as `gateway check --plugin-config` does.
    pub fn init<P: Plugin + crate::ffi::glue::Exported>(&self, config_json: &str) -> Result<P, PluginError> {
        if let Some(schema) = ffi::schema_of(P::metadata()) {
            check_schema(P::metadata().name.as_str(), schema, config_json)?;
        }
        P::init(Config::new(config_json), self.host())
    }

    /// Adds an app the lookup service returns.
    pub fn with_app(self, id: &str, name: &str, models: &[&str]) -> Self {
        self.services.apps.lock().unwrap_or_else(|e| e.into_inner()).push(ffi::AppInfo {
            id: id.into(),
            name: name.into(),
            models: models.iter().map(|m| (*m).into()).collect(),
        });
        self
    }

    /// Adds an API key that `Host::validate_credential` accepts.
    pub fn with_api_key(self, key: &str, app: &str, user: &str) -> Self {
        self.services.keys.lock().unwrap_or_else(|e| e.into_inner()).push((key.into(), app.into(), user.into()));
        self
    }

    /// Every event published so far: (topic, payload, direction).
    pub fn published(&self) -> Vec<(String, Vec<u8>, u8)> {
        self.services.published.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every live KV key.
    pub fn kv_keys(&self) -> Vec<String> {
        self.services.kv.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        let logs = self.services.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.iter().map(|(l, m, _)| (Level::from_u8(*l).unwrap_or(Level::Trace), m.clone())).collect()
    }

    /// Every line logged so far with its fields ([`Host::log_with`](crate::Host::log_with)).
    pub fn logs_with_fields(&self) -> Vec<(Level, String, Vec<(String, String)>)> {
        let logs = self.services.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.iter().map(|(l, m, f)| (Level::from_u8(*l).unwrap_or(Level::Trace), m.clone(), f.clone())).collect()
    }
}

fn rstr(s: &str) -> RStr<'_> {
    RStr::from_str(s)
}

fn raw_headers(headers: &[(String, Vec<u8>)]) -> Vec<ffi::RawHeader<'_>> {
    headers.iter().map(|(n, v)| ffi::RawHeader { name: rstr(n), value: RSlice::from_slice(v) }).collect()
}

/// An owned request and context.
#[derive(Debug, Clone, Default)]
pub struct TestRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub request_id: String,
    pub app_id: String,
    pub user_id: String,
    pub model: String,
    pub client_ip: String,
    pub metadata: Vec<(String, String)>,
}

impl TestRequest {
    pub fn new(method: &str, path: &str) -> Self {
        TestRequest {
            method: method.into(),
            path: path.into(),
            request_id: "test-request".into(),
            client_ip: "127.0.0.1".into(),
            ..Self::default()
        }
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn app(mut self, app_id: &str, user_id: &str) -> Self {
        self.app_id = app_id.into();
        self.user_id = user_id.into();
        self
    }

    pub fn model(mut self, model: &str) -> Self {
        self.model = model.into();
        self
    }

    pub fn client_ip(mut self, ip: &str) -> Self {
        self.client_ip = ip.into();
        self
    }

    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    fn with_raw<R>(&self, f: impl FnOnce(&ffi::RawRequest<'_>) -> R) -> R {
        let headers = raw_headers(&self.headers);
        let metadata: Vec<_> =
            self.metadata.iter().map(|(k, v)| ffi::RawKeyValue { key: rstr(k), value: rstr(v) }).collect();
        let raw = ffi::RawRequest {
            method: rstr(&self.method),
            path: rstr(&self.path),
            query: rstr(&self.query),
            headers: RSlice::from_slice(&headers),
            body: RSlice::from_slice(&self.body),
            ctx: ffi::RawContext {
                request_id: rstr(&self.request_id),
                app_id: rstr(&self.app_id),
                user_id: rstr(&self.user_id),
                model: rstr(&self.model),
                client_ip: rstr(&self.client_ip),
                metadata: RSlice::from_slice(&metadata),
            },
        };
        // As in the gateway: `Request::chat` reads one parse of the body, made on first use.
        let chat = ffi::chat::ChatCache::default();
        ffi::chat::with_request(&raw, &chat, || f(&raw))
    }

    /// Runs `f` with a view of this request, as a request hook sees it.
    pub fn with<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        self.with_raw(|raw| f(&Request::new(raw)))
    }

    /// Runs `f` with a view of this request's context, as a response hook sees it.
    pub fn with_context<R>(&self, f: impl FnOnce(&Context<'_>) -> R) -> R {
        self.with_raw(|raw| f(&Context::new(&raw.ctx)))
    }

    /// Runs `f` with this request and an upstream, as `after_selection` sees them.
    pub fn with_upstream<R>(
        &self,
        name: &str,
        kind: &str,
        model: &str,
        f: impl FnOnce(&Request<'_>, &Upstream<'_>) -> R,
    ) -> R {
        let up = ffi::RawUpstream { name: rstr(name), kind: rstr(kind), base_url: rstr(""), model: rstr(model) };
        self.with_raw(|raw| f(&Request::new(raw), &Upstream::new(&up)))
    }
}

/// An owned upstream response.
#[derive(Debug, Clone, Default)]
pub struct TestResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn new(status: u16) -> Self {
        TestResponse { status, ..Self::default() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn with<R>(&self, f: impl FnOnce(&UpstreamResponse<'_>) -> R) -> R {
        let headers = raw_headers(&self.headers);
        let raw = ffi::RawResponse {
            status: self.status,
            headers: RSlice::from_slice(&headers),
            body: RSlice::from_slice(&self.body),
        };
        f(&UpstreamResponse::new(&raw))
    }
}

/// Runs a [`StreamChunk`] plugin over `chunks` the way the gateway does (start, each chunk with its
/// bounded history, end) and returns what the client would receive, or `None` if the plugin
/// skipped the stream.
pub fn run_stream<P: StreamChunk>(
    plugin: &P,
    request: &TestRequest,
    head: &TestResponse,
    chunks: &[&[u8]],
) -> Result<Option<Vec<Vec<u8>>>, PluginError> {
    let state = request.with_context(|ctx| head.with(|resp| plugin.on_stream_start(ctx, resp)))?;
    let Some(mut state) = state else {
        return Ok(None);
    };
    let mut history = ChunkHistory::<Vec<u8>>::new(P::HISTORY);
    let mut out = Vec::new();
    let mut result = Ok(());
    for (index, data) in chunks.iter().enumerate() {
        let raw = ffi::RawChunk { index: index as u64, data: RSlice::from_slice(data), history: history.raw() };
        let sent = match plugin.on_chunk(&mut state, &Chunk::new(&raw)) {
            Ok(ChunkDecision::Pass) => Some(data.to_vec()),
            Ok(ChunkDecision::Replace(new)) => Some(new),
            Ok(ChunkDecision::Drop) => None,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if let Some(sent) = sent {
            history.push(sent.clone());
            out.push(sent);
        }
    }
    plugin.on_stream_end(state);
    result.map(|()| Some(out))
}

/// `config` against the plugin's JSON Schema, as the gateway checks it, every violation named.
fn check_schema(plugin: &str, schema: &str, config: &str) -> Result<(), PluginError> {
    let invalid = |e: String| {
        PluginError::config(format!("plugin `{plugin}` declares a config schema that is not valid JSON Schema: {e}"))
    };
    let schema: serde_json::Value = serde_json::from_str(schema).map_err(|e| invalid(e.to_string()))?;
    let config: serde_json::Value = serde_json::from_str(config)
        .map_err(|e| PluginError::config(format!("config for plugin `{plugin}`: expected JSON, found {e}")))?;
    let violations = crate::schema::violations(&schema, &config).map_err(invalid)?;
    if violations.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = violations.iter().map(|(field, rule)| format!("at `{field}`: {rule}")).collect();
    Err(PluginError::config(format!("config for plugin `{plugin}` rejected {}", list.join("; "))))
}

/// Awaits `future` on this thread: enough to test async hooks (an executor's, a route's)
/// without an async runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::{sync::Arc, task};
    struct Unpark(std::thread::Thread);
    impl task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut task::Context::from_waker(&waker)) {
            task::Poll::Ready(out) => return out,
            task::Poll::Pending => std::thread::park(),
        }
    }
}
