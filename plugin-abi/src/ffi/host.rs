//! The services side of [`HostHandle`]: a host implements [`HostServices`] and hands plugins a
//! handle to it. The real gateway and the mock host both go through here.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use abi_stable::std_types::{RNone, ROption, RSome, RStr};

use super::*;

/// What a host offers its plugins. Called on whatever thread the plugin calls from.
pub trait HostServices: Send + Sync + 'static {
    /// A log line from the plugin; `level` is one of [`level`] (others are treated as trace).
    fn log(&self, level: u8, message: &str);
}

/// A handle for plugins to reach `services`; valid as long as that `Arc` is kept alive.
pub fn host_handle<S: HostServices>(services: &Arc<S>) -> HostHandle {
    HostHandle {
        ctx: Arc::as_ptr(services) as *const c_void,
        service: service::<S>,
    }
}

extern "C" fn service<S: HostServices>(
    _ctx: *const c_void,
    id: u32,
    version: u32,
) -> ROption<TableEntry> {
    match (id, version) {
        (service::LOG, 1) => RSome(TableEntry::new(const { &LogV1 { log: log::<S> } })),
        _ => RNone,
    }
}

/// # Safety
/// `ctx` must be the pointer `host_handle::<S>` put in the handle, still alive.
unsafe fn services<'a, S>(ctx: *const c_void) -> &'a S {
    // SAFETY: per the function contract.
    unsafe { &*(ctx as *const S) }
}

extern "C" fn log<S: HostServices>(ctx: *const c_void, level: u8, message: RStr<'_>) {
    // SAFETY: plugins only get `ctx` inside a handle made by `host_handle::<S>`, and the host
    // keeps the services alive for as long as the instance exists.
    let services = unsafe { services::<S>(ctx) };
    // A panic must not unwind into the plugin's frames.
    let _ = catch_unwind(AssertUnwindSafe(|| services.log(level, message.as_str())));
}
