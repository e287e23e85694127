//! The `extern "C"` functions behind every table, generic over the plugin type. `#[derive(Plugin)]`
//! instantiates them; each one catches panics so that none crosses the boundary (a panic there
//! aborts the host, and the host cannot catch a plugin's unwind: each cdylib has its own std).

use std::ffi::c_void;

use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RErr, ROk, RResult, RStr};

use super::*;
use crate::sdk::{self, Config, Host, Plugin};

/// Implemented by `#[derive(Plugin)]`: the plugin's static metadata.
pub trait Exported: Plugin {
    const METADATA: &'static PluginMetadata;
}

/// Runs `f`, turning a panic into a [`code::PANIC`] error.
fn guard<R>(f: impl FnOnce() -> R, on_panic: impl FnOnce(PluginError) -> R) -> R {
    sdk::catch(f).unwrap_or_else(|message| {
        on_panic(PluginError { code: code::PANIC, message: format!("plugin panicked: {message}").into() })
    })
}

/// What an [`InstancePtr`] points to.
struct Boxed<P> {
    plugin: P,
    stop: sdk::StopSignal,
    /// For reporting panics that have no caller to return an error to (shutdown, lifecycle
    /// notifications, the end of a stream).
    host: Host,
}

/// # Safety
/// `inst` must come from `create::<P>` and not have been destroyed.
unsafe fn boxed<'a, P>(inst: InstancePtr) -> &'a Boxed<P> {
    // SAFETY: per the function contract, `inst` is a live `Box<Boxed<P>>` turned into a pointer.
    unsafe { &*(inst.0 as *const Boxed<P>) }
}

/// # Safety
/// As for [`boxed`].
unsafe fn instance<'a, P>(inst: InstancePtr) -> &'a P {
    // SAFETY: as for `boxed`.
    unsafe { &boxed::<P>(inst).plugin }
}

/// Runs `f`, reporting a panic to the gateway's log: for calls whose outcome nobody receives.
fn report(host: &Host, what: &str, f: impl FnOnce()) {
    if let Err(message) = sdk::catch(f) {
        host.error(&format!("panicked in {what}: {message}"));
    }
}

fn hook<P>(inst: InstancePtr, f: impl FnOnce(&P) -> Result<sdk::Decision, sdk::PluginError>) -> HookOutcome {
    guard(
        || {
            // SAFETY: the host passes the instance it got from `create` for this plugin type.
            match f(unsafe { instance::<P>(inst) }) {
                Ok(d) => d.into(),
                Err(e) => HookOutcome::Fail(e.into()),
            }
        },
        HookOutcome::Fail,
    )
}

fn unit<P>(inst: InstancePtr, f: impl FnOnce(&P) -> Result<(), sdk::PluginError>) -> RResult<(), PluginError> {
    guard(
        // SAFETY: the host passes the instance it got from `create` for this plugin type.
        || f(unsafe { instance::<P>(inst) }).map_err(PluginError::from).into(),
        RErr,
    )
}

extern "C" fn create<P: Plugin>(config: RStr<'_>, host: HostHandle) -> RResult<InstancePtr, PluginError> {
    guard(
        || {
            let stop = sdk::StopSignal::default();
            let host = Host::with_stop(host, stop.clone());
            match P::init(Config::new(config.as_str()), host.clone()) {
                Ok(plugin) => ROk(InstancePtr(Box::into_raw(Box::new(Boxed { plugin, stop, host })) as *const c_void)),
                Err(e) => RErr(e.into()),
            }
        },
        RErr,
    )
}

extern "C" fn destroy<P: Plugin>(inst: InstancePtr) {
    // SAFETY: `inst` came from `create::<P>`; the host destroys each instance exactly once.
    let mut boxed = unsafe { Box::from_raw(inst.0 as *mut Boxed<P>) };
    boxed.stop.fire();
    let host = boxed.host.clone();
    // Shutdown and drop are guarded apart: a `Drop` that panics while a panicking shutdown
    // unwinds would abort the process.
    report(&host, "shutdown", || boxed.plugin.shutdown());
    report(&host, "drop", move || drop(boxed));
}

fn root_module<P: Exported>() -> PluginRootRef {
    PluginRoot { metadata: P::METADATA, create: create::<P>, destroy: destroy::<P> }.leak_into_prefix()
}

extern "C" fn root_loader<P: Exported>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(root_module::<P>)
}

/// The header abi_stable's loader looks up in the plugin.
pub const fn lib_header<P: Exported>() -> LibHeader {
    // SAFETY: `root_loader::<P>` returns a `PluginRootRef`, the module type named here.
    unsafe { LibHeader::from_constructor::<PluginRootRef>(root_loader::<P>, CheckTypeLayout::Yes) }
}

/// Table entries, one per capability, in `capabilities(...)` order.
pub mod entry {
    use super::*;

    /// How this plugin was built; the derive adds it to every plugin.
    pub const fn build() -> TableEntry {
        const PANIC: u8 = if cfg!(panic = "unwind") { panic_strategy::UNWIND } else { panic_strategy::ABORT };
        TableEntry::new(const { &BuildV1 { panic: PANIC } })
    }
    use crate::sdk::{
        Auth, Chunk, ConfigProvider, Context, DataCollector, Lifecycle, PostAuth, PreAuth, Request, RequestInterceptor,
        Response, StreamChunk, StreamComplete, Upstream, UpstreamResponse,
    };

    pub const fn pre_auth<P: PreAuth>() -> TableEntry {
        extern "C" fn on_pre_auth<P: PreAuth>(i: InstancePtr, req: &RawRequest<'_>) -> HookOutcome {
            hook::<P>(i, |p| p.on_pre_auth(&Request::new(req)))
        }
        TableEntry::new(const { &PreAuthV1 { on_pre_auth: on_pre_auth::<P> } })
    }

    pub const fn auth<P: Auth>() -> TableEntry {
        extern "C" fn authenticate<P: Auth>(i: InstancePtr, cred: RStr<'_>, req: &RawRequest<'_>) -> AuthOutcome {
            guard(
                // SAFETY: the host passes the instance it got from `create` for this plugin type.
                || match unsafe { instance::<P>(i) }.authenticate(cred.as_str(), &Request::new(req)) {
                    Ok(d) => d.into(),
                    Err(e) => AuthOutcome::Fail(e.into()),
                },
                AuthOutcome::Fail,
            )
        }
        extern "C" fn app<P: Auth>(i: InstancePtr, cred: RStr<'_>) -> RResult<ROption<RecordInfo>, PluginError> {
            // SAFETY: the host passes the instance it got from `create` for this plugin type.
            guard(|| sdk::record_result(unsafe { instance::<P>(i) }.app_by_credential(cred.as_str())), RErr)
        }
        extern "C" fn user<P: Auth>(i: InstancePtr, cred: RStr<'_>) -> RResult<ROption<RecordInfo>, PluginError> {
            // SAFETY: the host passes the instance it got from `create` for this plugin type.
            guard(|| sdk::record_result(unsafe { instance::<P>(i) }.user_by_credential(cred.as_str())), RErr)
        }
        TableEntry::new(
            const { &AuthV1 { authenticate: authenticate::<P>, app_by_credential: app::<P>, user_by_credential: user::<P> } },
        )
    }

    pub const fn post_auth<P: PostAuth>() -> TableEntry {
        extern "C" fn on_post_auth<P: PostAuth>(i: InstancePtr, req: &RawRequest<'_>) -> HookOutcome {
            hook::<P>(i, |p| p.on_post_auth(&Request::new(req)))
        }
        TableEntry::new(const { &PostAuthV1 { on_post_auth: on_post_auth::<P> } })
    }

    pub const fn request_interceptor<P: RequestInterceptor>() -> TableEntry {
        extern "C" fn before<P: RequestInterceptor>(i: InstancePtr, req: &RawRequest<'_>) -> HookOutcome {
            hook::<P>(i, |p| p.before_selection(&Request::new(req)))
        }
        extern "C" fn after<P: RequestInterceptor>(
            i: InstancePtr,
            req: &RawRequest<'_>,
            up: &RawUpstream<'_>,
        ) -> HookOutcome {
            hook::<P>(i, |p| p.after_selection(&Request::new(req), &Upstream::new(up)))
        }
        TableEntry::new(const { &RequestInterceptorV1 { before_selection: before::<P>, after_selection: after::<P> } })
    }

    pub const fn response<P: Response>() -> TableEntry {
        extern "C" fn on_headers<P: Response>(
            i: InstancePtr,
            ctx: &RawContext<'_>,
            r: &RawResponse<'_>,
        ) -> HookOutcome {
            hook::<P>(i, |p| p.on_response_headers(&Context::new(ctx), &UpstreamResponse::new(r)))
        }
        extern "C" fn on_body<P: Response>(i: InstancePtr, ctx: &RawContext<'_>, r: &RawResponse<'_>) -> HookOutcome {
            hook::<P>(i, |p| p.on_response_body(&Context::new(ctx), &UpstreamResponse::new(r)))
        }
        TableEntry::new(const { &ResponseV1 { on_headers: on_headers::<P>, on_body: on_body::<P> } })
    }

    pub const fn stream_chunk<P: StreamChunk>() -> TableEntry {
        extern "C" fn start<P: StreamChunk>(i: InstancePtr, ctx: &RawContext<'_>, r: &RawResponse<'_>) -> StreamStart {
            guard(
                // SAFETY: the host passes the instance it got from `create` for this plugin type.
                || match unsafe { instance::<P>(i) }.on_stream_start(&Context::new(ctx), &UpstreamResponse::new(r)) {
                    Ok(Some(state)) => StreamStart::Observe(StreamState(Box::into_raw(Box::new(state)) as *mut c_void)),
                    Ok(None) => StreamStart::Skip,
                    Err(e) => StreamStart::Fail(e.into()),
                },
                StreamStart::Fail,
            )
        }
        extern "C" fn chunk<P: StreamChunk>(i: InstancePtr, s: StreamState, c: &RawChunk<'_>) -> ChunkOutcome {
            guard(
                || {
                    // SAFETY: `s` is the `Box<P::State>` made by `start::<P>`, not yet ended; the host
                    // uses one stream's state from one task at a time.
                    let state = unsafe { &mut *(s.0 as *mut P::State) };
                    // SAFETY: as for every hook, `i` is this plugin type's live instance.
                    match unsafe { instance::<P>(i) }.on_chunk(state, &Chunk::new(c)) {
                        Ok(d) => d.into(),
                        Err(e) => ChunkOutcome::Fail(e.into()),
                    }
                },
                ChunkOutcome::Fail,
            )
        }
        extern "C" fn end<P: StreamChunk>(i: InstancePtr, s: StreamState) {
            // SAFETY: `s` is the `Box<P::State>` made by `start::<P>`; the host ends it exactly once.
            let state = unsafe { Box::from_raw(s.0 as *mut P::State) };
            // SAFETY: the host passes the instance it got from `create` for this plugin type.
            let boxed = unsafe { boxed::<P>(i) };
            // The state moves into `on_stream_end`, so a panicking drop of it is caught too.
            report(&boxed.host, "on_stream_end", || boxed.plugin.on_stream_end(*state));
        }
        TableEntry::new(
            const {
                &StreamChunkV1 {
                    history: P::HISTORY,
                    on_stream_start: start::<P>,
                    on_chunk: chunk::<P>,
                    on_stream_end: end::<P>,
                }
            },
        )
    }

    pub const fn stream_complete<P: StreamComplete>() -> TableEntry {
        extern "C" fn done<P: StreamComplete>(
            i: InstancePtr,
            ctx: &RawContext<'_>,
            s: &StreamSummary,
        ) -> RResult<(), PluginError> {
            let summary = sdk::StreamSummary {
                status: s.status,
                chunks: s.chunks,
                bytes: s.bytes,
                duration_us: s.duration_us,
                completed: s.completed,
            };
            unit::<P>(i, |p| p.on_stream_complete(&Context::new(ctx), &summary))
        }
        TableEntry::new(const { &StreamCompleteV1 { on_stream_complete: done::<P> } })
    }

    pub const fn data_collector<P: DataCollector>() -> TableEntry {
        extern "C" fn log<P: DataCollector>(i: InstancePtr, r: &RawProxyLog<'_>) -> RResult<(), PluginError> {
            let log = sdk::ProxyLog {
                request_id: r.request_id.as_str(),
                app_id: r.app_id.as_str(),
                user_id: r.user_id.as_str(),
                method: r.method.as_str(),
                path: r.path.as_str(),
                model: r.model.as_str(),
                status: r.status,
                request_bytes: r.request_bytes,
                response_bytes: r.response_bytes,
                latency_us: r.latency_us,
                unix_ms: r.unix_ms,
            };
            unit::<P>(i, |p| p.on_proxy_log(&log))
        }
        extern "C" fn analytics<P: DataCollector>(i: InstancePtr, r: &RawAnalytics<'_>) -> RResult<(), PluginError> {
            let rec = sdk::Analytics {
                request_id: r.request_id.as_str(),
                app_id: r.app_id.as_str(),
                user_id: r.user_id.as_str(),
                model: r.model.as_str(),
                upstream: r.upstream.as_str(),
                status: r.status,
                streamed: r.streamed,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                total_tokens: r.total_tokens,
                latency_us: r.latency_us,
                ttft_us: r.ttft_us,
            };
            unit::<P>(i, |p| p.on_analytics(&rec))
        }
        extern "C" fn budget<P: DataCollector>(i: InstancePtr, r: &RawBudget<'_>) -> RResult<(), PluginError> {
            let rec = sdk::Budget {
                app_id: r.app_id.as_str(),
                user_id: r.user_id.as_str(),
                model: r.model.as_str(),
                total_tokens: r.total_tokens,
            };
            unit::<P>(i, |p| p.on_budget(&rec))
        }
        TableEntry::new(
            const { &DataCollectorV1 { on_proxy_log: log::<P>, on_analytics: analytics::<P>, on_budget: budget::<P> } },
        )
    }

    pub const fn config_provider<P: ConfigProvider>() -> TableEntry {
        extern "C" fn schema<P: ConfigProvider>() -> RStr<'static> {
            RStr::from_str(P::SCHEMA)
        }
        TableEntry::new(const { &ConfigProviderV1 { schema: schema::<P> } })
    }

    pub const fn lifecycle<P: Lifecycle>() -> TableEntry {
        extern "C" fn on_ready<P: Lifecycle>(i: InstancePtr) {
            // SAFETY: the host passes the instance it got from `create` for this plugin type.
            let boxed = unsafe { boxed::<P>(i) };
            report(&boxed.host, "on_ready", || boxed.plugin.on_ready());
        }
        extern "C" fn quiesce<P: Lifecycle>(i: InstancePtr) {
            // SAFETY: the host passes the instance it got from `create` for this plugin type.
            let boxed = unsafe { boxed::<P>(i) };
            report(&boxed.host, "quiesce", || boxed.plugin.quiesce());
        }
        TableEntry::new(const { &LifecycleV1 { on_ready: on_ready::<P>, quiesce: quiesce::<P> } })
    }
}
