//! The `extern "C"` functions behind every table, generic over the plugin type. `#[derive(Plugin)]`
//! instantiates them; each one catches panics so that none crosses the boundary (a panic there
//! aborts the host, and the host cannot catch a plugin's unwind: each cdylib has its own std).

use std::ffi::c_void;

use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RStr, RVec};

use super::*;
use crate::sdk::{self, Config, Host, Plugin};

/// Implemented by `#[derive(Plugin)]`: the plugin's static metadata.
pub trait Exported: Plugin {
    /// Built once, when the gateway first reads the plugin's root module.
    fn metadata() -> &'static PluginMetadata;
    /// The capabilities listed in `required(...)`.
    const REQUIRED: &'static [TableId] = &[];
}

/// Runs `f`, turning a panic into a [`code::PANIC`] error.
fn guard<R>(f: impl FnOnce() -> R, on_panic: impl FnOnce(PluginError) -> R) -> R {
    sdk::catch(f).unwrap_or_else(|message| {
        on_panic(PluginError { code: code::PANIC, message: format!("plugin panicked: {message}").into() })
    })
}

/// What an [`InstancePtr`] points to.
pub(crate) struct Boxed<P> {
    plugin: P,
    stop: sdk::StopSignal,
    /// For reporting panics that have no caller to return an error to (shutdown, lifecycle
    /// notifications, the end of a stream).
    host: Host,
}

/// The instance behind `inst`, for a hook call.
///
/// # Safety
/// `inst` must come from `create::<P>` and not be destroyed while the reference is used: the
/// host keeps an instance alive (it holds the instance's `Arc`) while it calls a hook or holds
/// what a hook returned (futures and streams hold the instance themselves).
pub(crate) unsafe fn boxed<'a, P>(inst: InstancePtr) -> &'a Boxed<P> {
    // SAFETY: per the function contract, `inst` is a live `Box<Boxed<P>>` turned into a pointer.
    unsafe { &*(inst.0 as *const Boxed<P>) }
}

/// Runs `f`, reporting a panic to the gateway's log: for calls whose outcome nobody receives.
fn report(host: &Host, what: &str, f: impl FnOnce()) {
    if let Err(message) = sdk::catch(f) {
        host.error(&format!("panicked in {what}: {message}"));
    }
}

/// Runs hook `f` on plugin instance `boxed` behind a panic guard: a panic becomes the return
/// type's error value, or is reported when nobody receives the outcome.
pub(crate) fn guarded<P: Plugin, R: Guarded>(
    boxed: &'static Boxed<P>,
    hook: &'static str,
    f: impl FnOnce(&'static P) -> R,
) -> R {
    match sdk::catch(|| f(&boxed.plugin)) {
        Ok(r) => r,
        Err(message) => R::panicked(&boxed.host, hook, message),
    }
}

/// What a hook returns when it panicked.
pub trait Guarded {
    fn panicked(host: &Host, hook: &str, message: String) -> Self;
}

fn panic_error(message: String) -> PluginError {
    PluginError { code: code::PANIC, message: format!("plugin panicked: {message}").into() }
}

impl Guarded for HookOutcome {
    fn panicked(_: &Host, _: &str, message: String) -> Self {
        HookOutcome::Fail(panic_error(message))
    }
}

impl Guarded for AuthOutcome {
    fn panicked(_: &Host, _: &str, message: String) -> Self {
        AuthOutcome::Fail(panic_error(message))
    }
}

impl Guarded for ChunkOutcome {
    fn panicked(_: &Host, _: &str, message: String) -> Self {
        ChunkOutcome::Fail(panic_error(message))
    }
}

impl Guarded for StreamStart {
    fn panicked(_: &Host, _: &str, message: String) -> Self {
        StreamStart::Fail(panic_error(message))
    }
}

impl<T> Guarded for RResult<T, PluginError> {
    fn panicked(_: &Host, _: &str, message: String) -> Self {
        RErr(panic_error(message))
    }
}

/// Nobody receives the outcome (notifications, the end of a stream): the panic is logged.
impl Guarded for () {
    fn panicked(host: &Host, hook: &str, message: String) {
        host.error(&format!("panicked in {hook}: {message}"));
    }
}

/// A plugin whose `routes` panicked serves none; the panic is logged.
impl Guarded for RVec<RawRoute> {
    fn panicked(host: &Host, hook: &str, message: String) -> Self {
        host.error(&format!("panicked in {hook}: {message}; it serves no routes"));
        RVec::new()
    }
}

impl<T: FromPanic + Send + 'static> Guarded for RFuture<T> {
    fn panicked(_: &Host, _: &str, message: String) -> Self {
        RFuture::ready(T::from_panic(message))
    }
}

impl<T: FromPanic + Send + 'static> Guarded for RStream<T> {
    fn panicked(_: &Host, _: &str, message: String) -> Self {
        RStream::once(T::from_panic(message))
    }
}

super::define::returned_as_is!(
    (),
    HookOutcome,
    AuthOutcome,
    ChunkOutcome,
    StreamStart,
    RResult<(), PluginError>,
    RResult<ROption<RecordInfo>, PluginError>,
);

/// Whether the host skips hooks a plugin did not write (it offers `HookSkip`). Set at `create`;
/// the same for every instance of this library, since they all run in one host.
static HOST_SKIPS_UNWRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn host_skips_unwritten() -> bool {
    HOST_SKIPS_UNWRITTEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// A request or response hook's decision as it crosses back. A default hook's "unwritten"
/// goes to hosts that skip such hooks; older hosts get `Continue`, as before.
pub(crate) fn outcome(r: Result<sdk::Decision, sdk::PluginError>) -> HookOutcome {
    match r {
        Ok(d) => d.into(),
        Err(e) if e.is_unwritten() && !host_skips_unwritten() => HookOutcome::Continue,
        Err(e) => HookOutcome::Fail(e.into()),
    }
}

pub(crate) fn unit(r: Result<(), sdk::PluginError>) -> RResult<(), PluginError> {
    match r {
        Err(e) if e.is_unwritten() && !host_skips_unwritten() => ROk(()),
        r => r.map_err(PluginError::from).into(),
    }
}

pub(crate) extern "C" fn config_schema<P: sdk::ConfigProvider>() -> RStr<'static> {
    RStr::from_str(P::SCHEMA)
}

/// How this plugin was built (the `Build` capability, which the derive adds to every plugin).
pub(crate) const PANIC_STRATEGY: u8 =
    if cfg!(panic = "unwind") { panic_strategy::UNWIND } else { panic_strategy::ABORT };

extern "C" fn create<P: Plugin>(config: RStr<'_>, host: HostHandle) -> RResult<InstancePtr, PluginError> {
    guard(
        || {
            let stop = sdk::StopSignal::default();
            let host = Host::with_stop(host, stop.clone());
            HOST_SKIPS_UNWRITTEN.store(host.skips_unwritten(), std::sync::atomic::Ordering::Relaxed);
            sdk::chat::use_host_view(host.request_view());
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
    PluginRoot { metadata: P::metadata(), create: create::<P>, destroy: destroy::<P> }.leak_into_prefix()
}

extern "C" fn root_loader<P: Exported>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(root_module::<P>)
}

/// The header abi_stable's loader looks up in the plugin.
pub const fn lib_header<P: Exported>() -> LibHeader {
    // SAFETY: `root_loader::<P>` returns a `PluginRootRef`, the module type named here.
    unsafe { LibHeader::from_constructor::<PluginRootRef>(root_loader::<P>, CheckTypeLayout::Yes) }
}
