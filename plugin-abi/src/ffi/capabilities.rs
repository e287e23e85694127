//! Every capability, each one definition (see [`define`](super::define) for what follows from
//! it). Released tables are frozen: a change is a new version or a new id, never an edit.

use std::ffi::c_void;

use abi_stable::StableAbi;
use abi_stable::std_types::{ROk, ROption, RResult, RSlice, RStr, RString, RVec};

use super::define::capabilities;
use super::glue::{Exported, config_schema, outcome, unit};
use super::*;
use crate::sdk::executor::{self, ExecRequest, HttpPassthrough};
use crate::sdk::{
    self, Auth, Chunk, Commands, ConfigProvider, Context, DataCollector, Executor, Lifecycle, Plugin, PostAuth,
    PreAuth, Request, RequestInterceptor, Response, Routes, Scheduler, StreamChunk, StreamComplete, Ui, Upstream,
    UpstreamResponse,
};

/// A request as an executor receives it: borrowed for the call that starts it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawExecRequest<'a> {
    /// Request id, app, user, the model the client asked for, client IP, metadata.
    pub ctx: RawContext<'a>,
    /// The model to ask the provider for.
    pub upstream_model: RStr<'a>,
    /// The format of `body`: "openai".
    pub format: RStr<'a>,
    pub stream: bool,
    pub headers: RSlice<'a, RawHeader<'a>>,
    pub body: RSlice<'a, u8>,
}

/// A whole executor response.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ExecResponse {
    pub status: u16,
    pub headers: RVec<OwnedHeader>,
    pub body: RVec<u8>,
}

/// An executor failure: the status and OpenAI error type the client gets, and the error
/// (code [`code::PANIC`] for a panic, which the host counts toward quarantine).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ExecError {
    pub status: u16,
    pub kind: RString,
    pub error: PluginError,
}

impl<T> FromPanic for RResult<T, ExecError> {
    fn from_panic(message: String) -> Self {
        RResult::RErr(ExecError {
            status: 500,
            kind: "api_error".into(),
            error: PluginError { code: code::PANIC, message: format!("plugin panicked: {message}").into() },
        })
    }
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ExecutorModel {
    pub id: RString,
    pub owned_by: RString,
    pub context_length: u64,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ExecutorInfo {
    pub identifier: RString,
    pub input_formats: RVec<RString>,
    pub output_formats: RVec<RString>,
    pub models: RVec<ExecutorModel>,
}

super::define::returned_as_is!(RResult<ExecutorInfo, PluginError>, RVec<RawRoute>);

/// A static file of a plugin's UI, compiled into the plugin.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct UiAsset {
    /// Under `/ui/plugins/{name}/` (`index.html`, `app.js`).
    pub path: RStr<'static>,
    /// Empty: derived from the path's extension.
    pub content_type: RStr<'static>,
    pub body: RSlice<'static, u8>,
}

impl UiAsset {
    pub const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        UiAsset {
            path: RStr::from_str(path),
            content_type: RStr::from_str(content_type),
            body: RSlice::from_slice(body),
        }
    }
}

/// How a plugin's UI appears in the gateway's admin page.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct UiManifest {
    pub title: RStr<'static>,
    /// The label of its entry in the admin page's sidebar.
    pub sidebar: RStr<'static>,
    /// The asset the sidebar entry opens.
    pub entry: RStr<'static>,
    /// The plugin's management routes the UI calls, separated by spaces (`"stats events"`),
    /// for the admin page to list.
    pub admin_routes: RStr<'static>,
}

impl UiManifest {
    /// A manifest whose sidebar entry is `title` and whose entry page is `index.html`.
    pub const fn new(title: &'static str) -> Self {
        UiManifest {
            title: RStr::from_str(title),
            sidebar: RStr::from_str(title),
            entry: RStr::from_str("index.html"),
            admin_routes: RStr::from_str(""),
        }
    }

    pub const fn sidebar(mut self, label: &'static str) -> Self {
        self.sidebar = RStr::from_str(label);
        self
    }

    pub const fn entry(mut self, path: &'static str) -> Self {
        self.entry = RStr::from_str(path);
        self
    }

    pub const fn admin_routes(mut self, routes: &'static str) -> Self {
        self.admin_routes = RStr::from_str(routes);
        self
    }
}

/// A command of the plugin's own command line, `gateway plugin NAME COMMAND [FLAGS]`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct CommandSpec {
    pub name: RStr<'static>,
    /// One line for `--help`.
    pub about: RStr<'static>,
    pub flags: RSlice<'static, FlagSpec>,
}

impl CommandSpec {
    pub const fn new(name: &'static str, about: &'static str) -> Self {
        CommandSpec { name: RStr::from_str(name), about: RStr::from_str(about), flags: RSlice::from_slice(&[]) }
    }

    pub const fn flags(mut self, flags: &'static [FlagSpec]) -> Self {
        self.flags = RSlice::from_slice(flags);
        self
    }
}

/// A command's `--NAME` flag: a switch (present or not) or one that takes a value.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct FlagSpec {
    pub name: RStr<'static>,
    pub help: RStr<'static>,
    pub takes_value: bool,
    pub required: bool,
    /// For a flag that takes a value: the value when it is not given (empty: none).
    pub default: RStr<'static>,
}

impl FlagSpec {
    /// `--NAME VALUE`.
    pub const fn value(name: &'static str, help: &'static str) -> Self {
        FlagSpec {
            name: RStr::from_str(name),
            help: RStr::from_str(help),
            takes_value: true,
            required: false,
            default: RStr::from_str(""),
        }
    }

    /// `--NAME`, true when given.
    pub const fn switch(name: &'static str, help: &'static str) -> Self {
        FlagSpec { takes_value: false, ..FlagSpec::value(name, help) }
    }

    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub const fn default(mut self, value: &'static str) -> Self {
        self.default = RStr::from_str(value);
        self
    }
}

/// One run of a command: which, and its flags as given (switches as "true"), defaults applied.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawCommandCall<'a> {
    pub command: RStr<'a>,
    pub flags: RSlice<'a, RawKeyValue<'a>>,
}

/// What a command printed and its exit status.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: RString,
    pub stderr: RString,
}

/// A key a credential scheduler may pick: available (not cooling, not yet tried by this call).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawCandidate<'a> {
    pub id: RStr<'a>,
    pub priority: i32,
    /// Calls made with it since it joined the pool.
    pub calls: u64,
    /// Times the provider refused it (429, 401, 403).
    pub refusals: u64,
    /// The status of its last refusal; 0: none.
    pub last_refusal: u16,
}

/// One pick: the upstream, what the call is for, which attempt of it (0 first; more after
/// failovers), and the available keys.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawPickRequest<'a> {
    pub upstream: RStr<'a>,
    /// The model sent upstream; empty for a call a plugin makes through the host HTTP client.
    pub model: RStr<'a>,
    pub stream: bool,
    pub attempt: u32,
    pub candidates: RSlice<'a, RawCandidate<'a>>,
}

/// A scheduler's answer: a candidate by index, or one of the gateway's own policies.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum RawPick {
    Candidate(u32),
    RoundRobin,
    FillFirst,
    Fail(PluginError),
}

super::define::returned_as_is!(RawPick);

impl super::glue::Guarded for RawPick {
    fn panicked(_: &crate::Host, _: &str, message: String) -> Self {
        RawPick::Fail(PluginError { code: code::PANIC, message: format!("plugin panicked: {message}").into() })
    }
}

/// Where a declared route is served ([`RawRoute::kind`]).
pub mod route_kind {
    /// `/plugins/{name}/PATH`; the gateway's auth plugins run first unless the operator turns
    /// them off for the plugin (`endpoint_auth = false`).
    pub const ENDPOINT: u8 = 0;
    /// `/admin/plugins/{name}/PATH`, behind the admin token.
    pub const MANAGEMENT: u8 = 1;
    /// `/plugins/{name}/PATH`, public: no auth plugin runs.
    pub const RESOURCE: u8 = 2;
}

/// An HTTP route a plugin serves.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct RawRoute {
    /// One of [`route_kind`].
    pub kind: u8,
    /// `GET`, `POST`, ... or `*` for every method.
    pub method: RString,
    /// Under the kind's prefix: literal segments, `{name}` for one segment, and a last
    /// `{*name}` for the rest of the path.
    pub path: RString,
    pub description: RString,
}

/// A request to one of a plugin's routes. Borrowed for the call that starts the handler.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawRouteRequest<'a> {
    /// Request id, client IP; app and user when an auth plugin identified the caller.
    pub ctx: RawContext<'a>,
    /// Which of the plugin's routes matched: its index in what `routes` returned.
    pub route: u32,
    pub method: RStr<'a>,
    /// The whole path, prefix included.
    pub path: RStr<'a>,
    /// The path under the prefix.
    pub relative_path: RStr<'a>,
    /// The route's `{name}` and `{*name}` parts, as matched.
    pub params: RSlice<'a, RawKeyValue<'a>>,
    pub query: RStr<'a>,
    pub headers: RSlice<'a, RawHeader<'a>>,
    pub body: RSlice<'a, u8>,
}

/// A route's answer: status, headers and a body; with `stream`, body chunks follow as the
/// plugin produces them (SSE or plain chunked), after `body`.
#[repr(C)]
#[derive(StableAbi)]
pub struct RouteReply {
    pub status: u16,
    pub headers: RVec<OwnedHeader>,
    pub body: RVec<u8>,
    pub stream: ROption<RStream<RResult<RVec<u8>, PluginError>>>,
}

capabilities! {
    dollar = $;

    /// Capability [`cap::PRE_AUTH`], version 1: runs before authentication.
    PreAuthV1 = (cap::PRE_AUTH, 1) PreAuth: PreAuth {
        pub fn on_pre_auth(req: &RawRequest<'_>) -> HookOutcome as "pre_auth"
            => |p| outcome(p.on_pre_auth(&Request::new(req)));
    }

    /// Capability [`cap::AUTH`], version 1: credential → identity, and lookups by credential.
    AuthV1 = (cap::AUTH, 1) Auth: Auth {
        pub fn authenticate(credential: RStr<'_>, req: &RawRequest<'_>) -> AuthOutcome as "auth"
            => |p| match p.authenticate(credential.as_str(), &Request::new(req)) {
                Ok(d) => d.into(),
                Err(e) => AuthOutcome::Fail(e.into()),
            };
        pub fn app_by_credential(credential: RStr<'_>) -> RResult<ROption<RecordInfo>, PluginError> as "app_by_credential"
            => |p| sdk::record_result(p.app_by_credential(credential.as_str()));
        pub fn user_by_credential(credential: RStr<'_>) -> RResult<ROption<RecordInfo>, PluginError> as "user_by_credential"
            => |p| sdk::record_result(p.user_by_credential(credential.as_str()));
    }

    /// Capability [`cap::POST_AUTH`], version 1: runs once the caller is known.
    PostAuthV1 = (cap::POST_AUTH, 1) PostAuth: PostAuth {
        pub fn on_post_auth(req: &RawRequest<'_>) -> HookOutcome as "post_auth"
            => |p| outcome(p.on_post_auth(&Request::new(req)));
    }

    /// Capability [`cap::REQUEST_INTERCEPTOR`], version 1: before and after upstream selection.
    RequestInterceptorV1 = (cap::REQUEST_INTERCEPTOR, 1) RequestInterceptor: RequestInterceptor {
        pub fn before_selection(req: &RawRequest<'_>) -> HookOutcome as "before_selection"
            => |p| outcome(p.before_selection(&Request::new(req)));
        pub fn after_selection(req: &RawRequest<'_>, upstream: &RawUpstream<'_>) -> HookOutcome as "after_selection"
            => |p| outcome(p.after_selection(&Request::new(req), &Upstream::new(upstream)));
    }

    /// Capability [`cap::RESPONSE`], version 1: response headers, then (non-streaming) the whole body.
    ResponseV1 = (cap::RESPONSE, 1) Response: Response {
        pub fn on_headers(ctx: &RawContext<'_>, resp: &RawResponse<'_>) -> HookOutcome as "response_headers"
            => |p| outcome(p.on_response_headers(&Context::new(ctx), &UpstreamResponse::new(resp)));
        pub fn on_body(ctx: &RawContext<'_>, resp: &RawResponse<'_>) -> HookOutcome as "response_body"
            => |p| outcome(p.on_response_body(&Context::new(ctx), &UpstreamResponse::new(resp)));
    }

    /// Capability [`cap::STREAM_CHUNK`], version 1: one header-only call, then one call per chunk.
    /// The host reaches these through [`Cap::start_stream`] and [`Stream`](super::Stream).
    StreamChunkV1 = (cap::STREAM_CHUNK, 1) StreamChunk: StreamChunk [history: HistoryLimits = P::HISTORY] {
        pub(crate) fn on_stream_start(ctx: &RawContext<'_>, resp: &RawResponse<'_>) -> StreamStart as "stream_start"
            => |p| match p.on_stream_start(&Context::new(ctx), &UpstreamResponse::new(resp)) {
                Ok(Some(state)) => StreamStart::Observe(StreamState(Box::into_raw(Box::new(state)) as *mut c_void)),
                Ok(None) => StreamStart::Skip,
                Err(e) => StreamStart::Fail(e.into()),
            };
        pub(crate) fn on_chunk(state: StreamState, chunk: &RawChunk<'_>) -> ChunkOutcome as "stream_chunk"
            => |p| {
                // SAFETY: `state` is the `Box<P::State>` made by `on_stream_start`, not yet
                // ended; the host uses one stream's state from one task at a time.
                let state = unsafe { &mut *(state.0 as *mut P::State) };
                match p.on_chunk(state, &Chunk::new(chunk)) {
                    Ok(d) => d.into(),
                    Err(e) => ChunkOutcome::Fail(e.into()),
                }
            };
        /// Frees the state. Called exactly once for every `Observe`, also when the stream fails.
        pub(crate) fn on_stream_end(state: StreamState) -> () as "stream_end"
            => |p| {
                // SAFETY: `state` is the `Box<P::State>` made by `on_stream_start`; the host
                // ends it exactly once. It moves into `on_stream_end`, so a panicking drop of it
                // is caught too.
                let state = unsafe { Box::from_raw(state.0 as *mut P::State) };
                p.on_stream_end(*state)
            };
    }

    /// Capability [`cap::STREAM_COMPLETE`], version 1.
    StreamCompleteV1 = (cap::STREAM_COMPLETE, 1) StreamComplete: StreamComplete {
        pub fn on_stream_complete(ctx: &RawContext<'_>, summary: &StreamSummary) -> RResult<(), PluginError> as "stream_complete"
            => |p| {
                let summary = sdk::StreamSummary {
                    status: summary.status,
                    chunks: summary.chunks,
                    bytes: summary.bytes,
                    duration_us: summary.duration_us,
                    completed: summary.completed,
                };
                unit(p.on_stream_complete(&Context::new(ctx), &summary))
            };
    }

    /// Capability [`cap::DATA_COLLECTOR`], version 1. Called off the request path.
    DataCollectorV1 = (cap::DATA_COLLECTOR, 1) DataCollector: DataCollector {
        pub fn on_proxy_log(log: &RawProxyLog<'_>) -> RResult<(), PluginError> as "proxy_log"
            => |p| unit(p.on_proxy_log(&sdk::ProxyLog {
                request_id: log.request_id.as_str(),
                app_id: log.app_id.as_str(),
                user_id: log.user_id.as_str(),
                method: log.method.as_str(),
                path: log.path.as_str(),
                model: log.model.as_str(),
                status: log.status,
                request_bytes: log.request_bytes,
                response_bytes: log.response_bytes,
                latency_us: log.latency_us,
                unix_ms: log.unix_ms,
            }));
        pub fn on_analytics(rec: &RawAnalytics<'_>) -> RResult<(), PluginError> as "analytics"
            => |p| unit(p.on_analytics(&sdk::Analytics {
                request_id: rec.request_id.as_str(),
                app_id: rec.app_id.as_str(),
                user_id: rec.user_id.as_str(),
                model: rec.model.as_str(),
                upstream: rec.upstream.as_str(),
                status: rec.status,
                streamed: rec.streamed,
                prompt_tokens: rec.prompt_tokens,
                completion_tokens: rec.completion_tokens,
                total_tokens: rec.total_tokens,
                latency_us: rec.latency_us,
                ttft_us: rec.ttft_us,
            }));
        pub fn on_budget(rec: &RawBudget<'_>) -> RResult<(), PluginError> as "budget"
            => |p| unit(p.on_budget(&sdk::Budget {
                app_id: rec.app_id.as_str(),
                user_id: rec.user_id.as_str(),
                model: rec.model.as_str(),
                total_tokens: rec.total_tokens,
            }));
    }

    /// Capability [`cap::CONFIG_PROVIDER`], version 1: a JSON Schema the host validates the config
    /// against before `create`.
    ConfigProviderV1 = (cap::CONFIG_PROVIDER, 1) ConfigProvider: ConfigProvider [
        schema: extern "C" fn() -> RStr<'static> = config_schema::<P>,
    ] {}

    /// Capability [`cap::LIFECYCLE`], version 1.
    LifecycleV1 = (cap::LIFECYCLE, 1) Lifecycle: Lifecycle {
        /// Every configured plugin is initialised; the gateway is about to serve.
        pub fn on_ready() -> () as "on_ready" => |p| p.on_ready();
        /// A newer version of this plugin is about to take over: release what it must take over.
        pub fn quiesce() -> () as "quiesce" => |p| p.quiesce();
    }

    /// Capability [`cap::EXECUTOR`], version 1: the plugin is the provider for the models routed
    /// to it. The request and response hooks run around it as around a built-in upstream.
    ExecutorV1 = (cap::EXECUTOR, 1) Executor: Executor {
        /// What it serves; asked once at load.
        pub fn describe() -> RResult<ExecutorInfo, PluginError> as "describe"
            => |p| ROk(executor::info_to_raw(p.describe()));
        /// A non-streaming request.
        pub fn execute(req: &RawExecRequest<'_>) -> RFuture<RResult<ExecResponse, ExecError>> as "execute"
            => |p| executor::response_future(p.execute(ExecRequest::from_raw(req)));
        /// A streaming request: the first item is the first chunk, or the error the client gets
        /// with its status.
        pub fn execute_stream(req: &RawExecRequest<'_>) -> RStream<RResult<RVec<u8>, ExecError>> as "execute_stream"
            => |p| executor::chunk_stream(p.execute_stream(ExecRequest::from_raw(req)));
        /// Input tokens the request would use.
        pub fn count_tokens(req: &RawExecRequest<'_>) -> RFuture<RResult<u64, ExecError>> as "count_tokens"
            => |p| executor::count_future(p.count_tokens(ExecRequest::from_raw(req)));
        /// A raw request with the provider's credentials.
        pub fn http_request(req: &RawRequest<'_>) -> RFuture<RResult<ExecResponse, ExecError>> as "http_request"
            => |p| executor::response_future(p.http_request(HttpPassthrough::from_raw(req)));
    }

    /// Capability [`cap::ROUTES`], version 1: HTTP routes the plugin serves, declared once at
    /// load (a declaration that conflicts with another, or with the gateway's own, is refused).
    RoutesV1 = (cap::ROUTES, 1) Routes: Routes {
        /// The routes; asked once each time the plugin is loaded.
        pub fn routes() -> RVec<RawRoute> as "routes"
            => |p| sdk::routes::routes_to_raw(p.routes());
        /// One request to route `req.route`.
        pub fn handle(req: &RawRouteRequest<'_>) -> RFuture<RResult<RouteReply, PluginError>> as "route"
            => |p| sdk::routes::reply_future(p.handle(sdk::RouteRequest::from_raw(req)));
    }

    /// Capability [`cap::UI`], version 1: static pages of the plugin's own, served under
    /// `/ui/plugins/{name}/` behind the admin token and listed in the gateway's admin page.
    UiV1 = (cap::UI, 1) Ui: Ui [
        manifest: UiManifest = P::MANIFEST,
        assets: RSlice<'static, UiAsset> = RSlice::from_slice(P::ASSETS),
    ] {}

    /// Capability [`cap::COMMANDS`], version 1: commands of the plugin's own, run by the
    /// operator as `gateway plugin NAME COMMAND [FLAGS]` in a process of their own.
    CommandsV1 = (cap::COMMANDS, 1) Commands: Commands [
        commands: RSlice<'static, CommandSpec> = RSlice::from_slice(P::COMMANDS),
    ] {
        /// Runs `call.command` with its flags.
        pub fn run(call: &RawCommandCall<'_>) -> RFuture<RResult<CommandOutput, PluginError>> as "command"
            => |p| sdk::commands::output_future(p.run_command(sdk::CommandCall::from_raw(call)));
    }

    /// Capability [`cap::SCHEDULER`], version 1: picks the key of an upstream's credential
    /// pool each call uses (the upstreams whose config names this plugin as `scheduler`).
    SchedulerV1 = (cap::SCHEDULER, 1) Scheduler: Scheduler {
        pub fn pick(req: &RawPickRequest<'_>) -> RawPick as "pick"
            => |p| sdk::scheduler::pick_to_raw(p.pick(&sdk::PickRequest::new(req)));
    }

    /// Capability [`cap::REQUIREMENTS`], version 1: the capabilities the plugin cannot work
    /// without. A host that lacks one of them refuses the plugin at load, naming it, instead of
    /// skipping the table (an auth plugin whose auth table is skipped would let every request in).
    RequirementsV1 = (cap::REQUIREMENTS, 1) Requirements: Exported [
        required: RSlice<'static, TableId> = RSlice::from_slice(P::REQUIRED),
    ] {}

    /// Capability [`cap::BUILD`], version 1: how the plugin was built. Exported by every plugin
    /// built with ABI 1.3 or later; the host refuses a plugin whose panics would abort.
    BuildV1 = (cap::BUILD, 1) Build: Plugin [
        /// One of [`panic_strategy`].
        panic: u8 = super::glue::PANIC_STRATEGY,
    ] {}
}
