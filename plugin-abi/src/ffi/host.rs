//! The services side of [`HostHandle`]: a host implements [`HostServices`] (safe Rust) and hands
//! plugins a handle to it; the `extern "C"` tables here translate. The real gateway and the mock
//! host both go through this module, and so do the SDK's calls into them.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RSlice, RSome, RStr, RString, RVec};

use super::*;

/// A subscriber's callback as a plugin registered it. Dropping it frees the plugin's state, so
/// the host must drop it while the plugin's library is loaded (it does so before unloading).
pub struct Subscriber(RawSubscriber);

// SAFETY: the SDK only registers `Send + Sync` closures as `user`.
unsafe impl Send for Subscriber {}
// SAFETY: as above.
unsafe impl Sync for Subscriber {}

impl Subscriber {
    pub fn deliver(&self, event: &RawEvent<'_>) {
        (self.0.callback)(self.0.user, event)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        (self.0.drop_user)(self.0.user)
    }
}

/// An error a service returns to the plugin, as a message; it reaches the plugin with code
/// [`code::SERVICE`].
pub type ServiceResult<T> = Result<T, String>;

/// What a host offers its plugins. Called on whatever thread the plugin calls from.
pub trait HostServices: Send + Sync + 'static {
    /// A log line; `level` is one of [`level`] (others are treated as trace).
    fn log(&self, level: u8, message: &str);
    /// Calls `read` with the value of `key` in place; false if there is none.
    fn kv_get(&self, key: &str, read: &mut dyn FnMut(&[u8])) -> ServiceResult<bool>;
    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: u64) -> ServiceResult<()>;
    fn kv_delete(&self, key: &str) -> ServiceResult<bool>;
    fn kv_list(&self, prefix: &str, limit: usize) -> ServiceResult<Vec<String>>;
    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: u64) -> ServiceResult<i64>;
    fn publish(&self, topic: &str, payload: &[u8], direction: u8) -> ServiceResult<()>;
    /// An empty topic subscribes to all.
    fn subscribe(&self, topic: &str, subscriber: Subscriber) -> ServiceResult<u64>;
    fn unsubscribe(&self, id: u64) -> bool;
    fn get_app(&self, id: &str) -> Option<AppInfo>;
    fn list_apps(&self) -> Vec<AppInfo>;
    fn model_info(&self, model: &str) -> Option<ModelInfo>;
    /// The (app id, user id) of an API key.
    fn validate_credential(&self, credential: &str) -> Option<(String, String)>;
}

/// A handle for plugins to reach `services`; valid as long as that `Arc` is kept alive.
pub fn host_handle<S: HostServices>(services: &Arc<S>) -> HostHandle {
    HostHandle { ctx: Arc::as_ptr(services) as *const c_void, service: service::<S> }
}

extern "C" fn service<S: HostServices>(_ctx: *const c_void, id: u32, version: u32) -> ROption<TableEntry> {
    match (id, version) {
        (service::LOG, 1) => RSome(TableEntry::new(const { &LogV1 { log: log::<S> } })),
        (service::KV, 1) => RSome(TableEntry::new(
            const {
                &KvV1 {
                    get: kv_get::<S>,
                    set: kv_set::<S>,
                    delete: kv_delete::<S>,
                    list: kv_list::<S>,
                    increment: kv_increment::<S>,
                }
            },
        )),
        (service::EVENTS, 1) => RSome(TableEntry::new(
            const { &EventsV1 { publish: publish::<S>, subscribe: subscribe::<S>, unsubscribe: unsubscribe::<S> } },
        )),
        (service::LOOKUP, 1) => RSome(TableEntry::new(
            const {
                &LookupV1 {
                    get_app: get_app::<S>,
                    list_apps: list_apps::<S>,
                    model_info: model_info::<S>,
                    validate_credential: validate_credential::<S>,
                }
            },
        )),
        _ => RNone,
    }
}

/// Runs `f` on the services behind `ctx`; a host panic becomes an error instead of unwinding
/// into the plugin's frames.
fn with<S: HostServices, R>(ctx: *const c_void, on_panic: R, f: impl FnOnce(&S) -> R) -> R {
    // SAFETY: plugins only get `ctx` inside a handle made by `host_handle::<S>`, and the host
    // keeps the services alive for as long as the instance exists.
    let services = unsafe { &*(ctx as *const S) };
    catch_unwind(AssertUnwindSafe(|| f(services))).unwrap_or(on_panic)
}

fn service_error(message: impl Into<String>) -> PluginError {
    PluginError { code: code::SERVICE, message: RString::from(message.into()) }
}

fn rresult<T>(r: ServiceResult<T>) -> RResult<T, PluginError> {
    match r {
        Ok(v) => ROk(v),
        Err(e) => RErr(service_error(e)),
    }
}

fn panicked<T>() -> RResult<T, PluginError> {
    RErr(service_error("the host panicked serving this call"))
}

extern "C" fn log<S: HostServices>(ctx: *const c_void, level: u8, message: RStr<'_>) {
    with::<S, _>(ctx, (), |s| s.log(level, message.as_str()))
}

extern "C" fn kv_get<S: HostServices>(
    ctx: *const c_void,
    key: RStr<'_>,
    read: ReadCallback,
) -> RResult<bool, PluginError> {
    with::<S, _>(ctx, panicked(), |s| {
        rresult(s.kv_get(key.as_str(), &mut |value| (read.read)(read.user, RSlice::from_slice(value))))
    })
}

extern "C" fn kv_set<S: HostServices>(
    ctx: *const c_void,
    key: RStr<'_>,
    value: RSlice<'_, u8>,
    ttl_ms: u64,
) -> RResult<(), PluginError> {
    with::<S, _>(ctx, panicked(), |s| rresult(s.kv_set(key.as_str(), value.as_slice(), ttl_ms)))
}

extern "C" fn kv_delete<S: HostServices>(ctx: *const c_void, key: RStr<'_>) -> RResult<bool, PluginError> {
    with::<S, _>(ctx, panicked(), |s| rresult(s.kv_delete(key.as_str())))
}

extern "C" fn kv_list<S: HostServices>(
    ctx: *const c_void,
    prefix: RStr<'_>,
    limit: u32,
) -> RResult<RVec<RString>, PluginError> {
    with::<S, _>(ctx, panicked(), |s| {
        rresult(s.kv_list(prefix.as_str(), limit as usize).map(|keys| keys.into_iter().map(RString::from).collect()))
    })
}

extern "C" fn kv_increment<S: HostServices>(
    ctx: *const c_void,
    key: RStr<'_>,
    delta: i64,
    ttl_ms: u64,
) -> RResult<i64, PluginError> {
    with::<S, _>(ctx, panicked(), |s| rresult(s.kv_increment(key.as_str(), delta, ttl_ms)))
}

extern "C" fn publish<S: HostServices>(
    ctx: *const c_void,
    topic: RStr<'_>,
    payload: RSlice<'_, u8>,
    direction: u8,
) -> RResult<(), PluginError> {
    with::<S, _>(ctx, panicked(), |s| rresult(s.publish(topic.as_str(), payload.as_slice(), direction)))
}

extern "C" fn subscribe<S: HostServices>(
    ctx: *const c_void,
    topic: RStr<'_>,
    raw: RawSubscriber,
) -> RResult<u64, PluginError> {
    let subscriber = Subscriber(raw);
    with::<S, _>(ctx, panicked(), |s| rresult(s.subscribe(topic.as_str(), subscriber)))
}

extern "C" fn unsubscribe<S: HostServices>(ctx: *const c_void, id: u64) -> bool {
    with::<S, _>(ctx, false, |s| s.unsubscribe(id))
}

extern "C" fn get_app<S: HostServices>(ctx: *const c_void, id: RStr<'_>) -> ROption<AppInfo> {
    with::<S, _>(ctx, RNone, |s| s.get_app(id.as_str()).into())
}

extern "C" fn list_apps<S: HostServices>(ctx: *const c_void) -> RVec<AppInfo> {
    with::<S, _>(ctx, RVec::new(), |s| s.list_apps().into())
}

extern "C" fn model_info<S: HostServices>(ctx: *const c_void, model: RStr<'_>) -> ROption<ModelInfo> {
    with::<S, _>(ctx, RNone, |s| s.model_info(model.as_str()).into())
}

extern "C" fn validate_credential<S: HostServices>(ctx: *const c_void, credential: RStr<'_>) -> ROption<Identity> {
    with::<S, _>(ctx, RNone, |s| {
        s.validate_credential(credential.as_str())
            .map(|(app, user)| Identity { app_id: app.into(), user_id: user.into() })
            .into()
    })
}

// The plugin side: trampolines the SDK passes to the host.

/// Hands `value` to the `FnMut(&[u8])` behind `user`.
pub(crate) extern "C" fn read_trampoline<F: FnMut(&[u8])>(user: *mut c_void, value: RSlice<'_, u8>) {
    // SAFETY: the SDK passes a pointer to its own `F`, alive for the duration of the `get` call
    // that invokes this.
    let f = unsafe { &mut *(user as *mut F) };
    f(value.as_slice())
}

/// A subscriber closure as the SDK boxes it.
pub(crate) type EventClosure = Box<dyn Fn(&RawEvent<'_>) + Send + Sync>;

pub(crate) extern "C" fn event_trampoline(user: *const c_void, event: &RawEvent<'_>) {
    // SAFETY: `user` is a `Box<EventClosure>` made by `subscriber_parts`, freed only by
    // `drop_event_closure`, after the last delivery.
    let f = unsafe { &*(user as *const EventClosure) };
    // A panicking subscriber must not unwind into the host.
    let _ = catch_unwind(AssertUnwindSafe(|| f(event)));
}

pub(crate) extern "C" fn drop_event_closure(user: *const c_void) {
    // SAFETY: as above; the host calls this exactly once per subscription.
    drop(unsafe { Box::from_raw(user as *mut EventClosure) });
}

/// A subscription for `f`.
pub(crate) fn raw_subscriber(f: EventClosure) -> RawSubscriber {
    RawSubscriber {
        user: Box::into_raw(Box::new(f)) as *const c_void,
        callback: event_trampoline,
        drop_user: drop_event_closure,
    }
}
