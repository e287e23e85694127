//! One safe trait per capability. `#[derive(Plugin)]` exports every one the type implements
//! (listing them in `capabilities(...)` only checks them at compile time); every hook runs inline
//! on a gateway worker thread (see each trait), so a hook must not block: do slow work on a
//! thread of your own and keep the result in `self`. The plugin author's guide is
//! [`crate::guide`].

use crate::sdk::view::{Chunk, Context, Request, Upstream, UpstreamResponse};
use crate::sdk::{AuthDecision, ChunkDecision, Config, Decision, Host, PluginError, Record};

/// The plugin itself: how it is created from its config and how it stops.
///
/// One value serves every request concurrently, hence `Send + Sync`. State that must outlive a
/// reload of the `.so` belongs in host storage, not in `self`.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// Called once per load, with the plugin's config table (already validated against the
    /// [`ConfigProvider`] schema, if the plugin has one) and a handle to host services.
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError>;

    /// Called exactly once, when the gateway stops or unloads this instance. Default: nothing.
    fn shutdown(&mut self) {}
}

/// Runs first, before the caller is known (IP filters, request shaping). Inline on a worker.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `PreAuth` but does not implement `plugin_abi::PreAuth`",
    label = "listed here"
)]
pub trait PreAuth: Plugin {
    fn on_pre_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError>;
}

/// Turns a credential (the bearer token or `x-api-key`; empty if none) into an app and user.
/// Auth plugins run in order until one does not [`AuthDecision::Pass`]. Inline on a worker.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Auth` but does not implement `plugin_abi::Auth`",
    label = "listed here"
)]
pub trait Auth: Plugin {
    fn authenticate(&self, credential: &str, req: &Request<'_>) -> Result<AuthDecision, PluginError>;

    /// The app a credential belongs to. Default: not written (the gateway then stops asking;
    /// an older gateway gets `None`).
    fn app_by_credential(&self, _credential: &str) -> Result<Option<Record>, PluginError> {
        Err(PluginError::unwritten())
    }

    /// The user a credential belongs to. Default: not written, as above.
    fn user_by_credential(&self, _credential: &str) -> Result<Option<Record>, PluginError> {
        Err(PluginError::unwritten())
    }
}

/// Runs once the caller is known (policy, quotas, validation). Inline on a worker.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `PostAuth` but does not implement `plugin_abi::PostAuth`",
    label = "listed here"
)]
pub trait PostAuth: Plugin {
    fn on_post_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError>;
}

/// Rewrites requests before the upstream is chosen and once it is. Inline on a worker.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `RequestInterceptor` but does not implement `plugin_abi::RequestInterceptor`",
    label = "listed here"
)]
pub trait RequestInterceptor: Plugin {
    /// Default: not written; the gateway stops calling it after one call (older gateways:
    /// continue).
    fn before_selection(&self, _req: &Request<'_>) -> Result<Decision, PluginError> {
        Err(PluginError::unwritten())
    }

    /// Default: not written, as above.
    fn after_selection(&self, _req: &Request<'_>, _upstream: &Upstream<'_>) -> Result<Decision, PluginError> {
        Err(PluginError::unwritten())
    }
}

/// Sees the upstream response: headers first, then (non-streaming only) the whole body.
/// [`Decision::Respond`] replaces the response. Inline on a worker.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Response` but does not implement `plugin_abi::Response`",
    label = "listed here"
)]
pub trait Response: Plugin {
    /// Status and headers; the body is empty here. Default: not written; the gateway stops
    /// calling it after one call (older gateways: continue).
    fn on_response_headers(&self, _ctx: &Context<'_>, _resp: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {
        Err(PluginError::unwritten())
    }

    /// The whole body of a non-streaming response. Default: not written, as above.
    fn on_response_body(&self, _ctx: &Context<'_>, _resp: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {
        Err(PluginError::unwritten())
    }
}

/// Sees a streamed response chunk by chunk, never the whole stream at once. Inline on a worker.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `StreamChunk` but does not implement `plugin_abi::StreamChunk`",
    label = "listed here"
)]
pub trait StreamChunk: Plugin {
    /// How many earlier chunks (and bytes) `Chunk::history` keeps. Default: none, which costs nothing.
    const HISTORY: crate::HistoryLimits = crate::HistoryLimits { max_chunks: 0, max_bytes: 0 };

    /// Per-stream state, from `on_stream_start` to `on_stream_end`.
    type State: Send + 'static;

    /// Called once with the status and headers. `None` skips this stream's chunks.
    fn on_stream_start(
        &self,
        ctx: &Context<'_>,
        head: &UpstreamResponse<'_>,
    ) -> Result<Option<Self::State>, PluginError>;

    fn on_chunk(&self, state: &mut Self::State, chunk: &Chunk<'_>) -> Result<ChunkDecision, PluginError>;

    /// Called once for every stream that was not skipped, also when it ends early. Default: drop.
    fn on_stream_end(&self, _state: Self::State) {}
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    pub status: u16,
    pub chunks: u64,
    pub bytes: u64,
    pub duration_us: u64,
    /// False when the client went away or the upstream failed before the end.
    pub completed: bool,
}

/// Called once after a stream ends. Inline on a worker, after the last byte was sent.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `StreamComplete` but does not implement `plugin_abi::StreamComplete`",
    label = "listed here"
)]
pub trait StreamComplete: Plugin {
    fn on_stream_complete(&self, ctx: &Context<'_>, summary: &StreamSummary) -> Result<(), PluginError>;
}

/// One proxied request, as logged.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLog<'a> {
    pub request_id: &'a str,
    pub app_id: &'a str,
    pub user_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub model: &'a str,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_us: u64,
    pub unix_ms: u64,
}

/// Usage of one LLM call.
#[derive(Debug, Clone, Copy)]
pub struct Analytics<'a> {
    pub request_id: &'a str,
    pub app_id: &'a str,
    pub user_id: &'a str,
    pub model: &'a str,
    pub upstream: &'a str,
    pub status: u16,
    pub streamed: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub latency_us: u64,
    /// Time to first token; equal to `latency_us` for non-streaming calls.
    pub ttft_us: u64,
}

/// Tokens to charge against an app's budget.
#[derive(Debug, Clone, Copy)]
pub struct Budget<'a> {
    pub app_id: &'a str,
    pub user_id: &'a str,
    pub model: &'a str,
    pub total_tokens: u64,
}

/// Receives records after the response was sent, on the gateway's collector thread, never on the
/// request path: it may block briefly (file I/O), at the cost of the collector queue.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `DataCollector` but does not implement `plugin_abi::DataCollector`",
    label = "listed here"
)]
pub trait DataCollector: Plugin {
    /// Default: not written; the gateway stops calling it after one call (older gateways:
    /// ignored).
    fn on_proxy_log(&self, _log: &ProxyLog<'_>) -> Result<(), PluginError> {
        Err(PluginError::unwritten())
    }
    /// Default: not written, as above.
    fn on_analytics(&self, _record: &Analytics<'_>) -> Result<(), PluginError> {
        Err(PluginError::unwritten())
    }
    /// Default: not written, as above.
    fn on_budget(&self, _record: &Budget<'_>) -> Result<(), PluginError> {
        Err(PluginError::unwritten())
    }
}

/// Declares the JSON Schema of the plugin's config. The host validates the config against it
/// before `init` and names the failing field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `ConfigProvider` but does not implement `plugin_abi::ConfigProvider`",
    label = "listed here"
)]
pub trait ConfigProvider: Plugin {
    const SCHEMA: &'static str;
}

/// Lifecycle notifications beyond `init` and `shutdown`. Called on a gateway thread, not on the
/// request path.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Lifecycle` but does not implement `plugin_abi::Lifecycle`",
    label = "listed here"
)]
pub trait Lifecycle: Plugin {
    /// Every configured plugin is initialised and the gateway is about to serve. Default: nothing.
    fn on_ready(&self) {}

    /// A newer version of this plugin was initialised and is about to take over: release what it
    /// must take over (ports, files, locks). Requests in flight may still call this instance.
    /// Default: nothing.
    fn quiesce(&self) {}
}

/// Static pages of the plugin's own (Tyk AI Studio's `UIProvider` and `ManifestProvider`):
/// files compiled into the plugin (`include_bytes!`), served under `/ui/plugins/{name}/` behind
/// the admin token with their content type and an `ETag`, and a manifest that puts the entry
/// page in the gateway's admin page. The pages call the plugin's management routes
/// (`/admin/plugins/{name}/...`), which the admin session reaches.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Ui` but does not implement `plugin_abi::Ui`",
    label = "listed here"
)]
pub trait Ui: crate::Plugin {
    const MANIFEST: crate::UiManifest;
    const ASSETS: &'static [crate::UiAsset];
}
