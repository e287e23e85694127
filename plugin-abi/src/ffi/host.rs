//! The services side of [`HostHandle`]: a host implements [`HostServices`] (safe Rust) and hands
//! plugins a handle to it; the `extern "C"` tables here translate. The real gateway and the mock
//! host both go through this module, and so do the SDK's calls into them.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RSlice, RSome, RStr, RString, RVec};

use super::loader::Ctx;
use super::*;

/// A subscriber's callback as a plugin registered it. It keeps the plugin's library loaded, so
/// delivering to it or dropping it (which frees the plugin's closure) is always sound; the host
/// still ends subscriptions when their instance goes away ([`HostServices::end`]).
pub struct Subscriber {
    raw: RawSubscriber,
    _library: Option<Arc<Library>>,
}

// SAFETY: the SDK only registers `Send + Sync` closures as `user`.
unsafe impl Send for Subscriber {}
// SAFETY: as above.
unsafe impl Sync for Subscriber {}

impl Subscriber {
    pub fn deliver(&self, event: &RawEvent<'_>) {
        (self.raw.callback)(self.raw.user, event)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Runs before the fields drop: the library is still loaded here.
        (self.raw.drop_user)(self.raw.user)
    }
}

/// An error a service returns to the plugin, as a message; it reaches the plugin with code
/// [`code::SERVICE`].
pub type ServiceResult<T> = Result<T, String>;

/// Keeps the calling plugin's library loaded. A host future or stream handed to a plugin may
/// end up holding a waker the plugin made (a plugin that polls it from a combinator of its
/// own), whose functions are the plugin's code: whatever holds such a waker (the host task
/// behind the call) must hold this too, and drop it last.
#[derive(Clone, Default)]
pub struct KeepAlive(#[allow(dead_code)] Option<Arc<Library>>);

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepAlive")
    }
}

/// An outgoing HTTP call, as the host receives it (owned: the call outlives the plugin's borrow).
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub upstream: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// `None`: the upstream's own timeout.
    pub timeout: Option<std::time::Duration>,
    pub request_id: String,
    /// Hold until the call's last waker is gone (see [`KeepAlive`]).
    pub keep_alive: KeepAlive,
}

/// The body of an [`HttpResponse`]: chunks until `None`; an error ends it.
pub type HttpBody = std::pin::Pin<Box<dyn ItemSource<Item = ServiceResult<Vec<u8>>>>>;

/// A host's answer to an [`HttpCall`].
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: HttpBody,
}

/// The future a host's HTTP client returns.
pub type HttpFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ServiceResult<HttpResponse>> + Send>>;

/// What a host offers its plugins. Called on whatever thread the plugin calls from.
pub trait HostServices: Send + Sync + 'static {
    /// A log line; `level` is one of [`level`] (others are treated as trace).
    fn log(&self, level: u8, message: &str);
    /// A log line with key-value fields. Default: the fields appended to the message.
    fn log_fields(&self, level: u8, message: &str, fields: &[(&str, &str)]) {
        self.log(level, &with_fields(message, fields))
    }
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
    /// Sends `call` through the host's HTTP client. The future must not need the caller's
    /// runtime (the plugin may poll it from anywhere). Default: no HTTP client.
    fn http(&self, call: HttpCall) -> HttpFuture {
        let _ = call;
        Box::pin(std::future::ready(Err("this host offers no HTTP client".to_owned())))
    }
    /// The instance is going away: end what it holds in the host (its subscriptions) and refuse
    /// new subscriptions. No callback into the plugin may start once this returns; one already
    /// running may finish (its `Subscriber` keeps the library loaded). Default: nothing to end.
    fn end(&self) {}
}

/// `message k=v k="v w"`: fields appended to a line, for hosts that log text only.
pub fn with_fields(message: &str, fields: &[(&str, &str)]) -> String {
    let mut line = message.to_owned();
    for (key, value) in fields {
        if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
            line.push_str(&format!(" {key}={value:?}"));
        } else {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line
}

/// What a plugin's [`HostHandle`] points to: the services, whether the instance is shut down,
/// and (for a real library) a way to keep that library loaded from its subscriptions. Counted:
/// the host holds one reference per instance, the plugin's SDK one per `Host` value, so a
/// handle a plugin keeps past `destroy` still points at live memory.
pub(crate) struct HostCtx<S> {
    services: Arc<S>,
    closed: AtomicBool,
    /// `None` for the mock host, which has no library.
    library: Option<Weak<Library>>,
}

impl<S: HostServices> HostCtx<S> {
    pub(crate) fn new(services: Arc<S>, library: Option<Weak<Library>>) -> Arc<Self> {
        Arc::new(HostCtx { services, closed: AtomicBool::new(false), library })
    }
}

impl<S: HostServices> Ctx for HostCtx<S> {
    fn end(&self) {
        self.services.end();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A handle for plugins to reach `ctx`; valid as long as that `Arc` (or a count the plugin took
/// through [`HandleV1`]) is kept alive.
pub(crate) fn host_handle<S: HostServices>(ctx: &Arc<HostCtx<S>>) -> HostHandle {
    HostHandle { ctx: Arc::as_ptr(ctx) as *const c_void, service: service::<S> }
}

extern "C" fn service<S: HostServices>(_ctx: *const c_void, id: u32, version: u32) -> ROption<TableEntry> {
    match (id, version) {
        (service::LOG, 1) => RSome(TableEntry::new(const { &LogV1 { log: log::<S> } })),
        (service::LOG, 2) => RSome(TableEntry::new(const { &LogV2 { log: log_fields::<S> } })),
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
        (service::HANDLE, 1) => {
            RSome(TableEntry::new(const { &HandleV1 { retain: retain::<S>, release: release::<S> } }))
        }
        (service::HTTP, 1) => RSome(TableEntry::new(const { &HttpV1 { send: http_send::<S> } })),
        (service::HOOK_SKIP, 1) => RSome(TableEntry::new(const { &HookSkipV1 { version: 1 } })),
        (service::REQUEST_VIEW, 1) => RSome(TableEntry::new(const { &chat::REQUEST_VIEW_V1 })),
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

/// # Safety
/// `ctx` must come from `host_handle::<S>` and still be counted (by the host's instance or by a
/// `retain` the plugin has not released yet).
unsafe fn ctx_ref<'a, S>(ctx: *const c_void) -> &'a HostCtx<S> {
    // SAFETY: per the contract, `ctx` points to a live `HostCtx<S>`.
    unsafe { &*(ctx as *const HostCtx<S>) }
}

/// Runs `f` on the services behind `ctx`. A call after the instance shut down, or one during
/// which the host panicked (the panic does not unwind into the plugin's frames), gets
/// `otherwise(closed)`: built only then, so the common path allocates nothing.
fn with<S: HostServices, R>(
    ctx: *const c_void,
    otherwise: impl FnOnce(bool) -> R,
    f: impl FnOnce(&HostCtx<S>) -> R,
) -> R {
    // SAFETY: plugins only get `ctx` inside a handle made by `host_handle::<S>`; the host counts
    // it until the instance is destroyed and the SDK counts every `Host` the plugin keeps.
    let ctx = unsafe { ctx_ref::<S>(ctx) };
    if ctx.closed.load(Ordering::Acquire) {
        return otherwise(true);
    }
    crate::sdk::catch(|| f(ctx)).unwrap_or_else(|_| otherwise(false))
}

extern "C" fn retain<S: HostServices>(ctx: *const c_void) {
    // SAFETY: the SDK retains only a handle it holds, which is counted (see `with`).
    unsafe { Arc::increment_strong_count(ctx as *const HostCtx<S>) }
}

extern "C" fn release<S: HostServices>(ctx: *const c_void) {
    // SAFETY: the SDK releases exactly the counts it retained, once each.
    unsafe { Arc::decrement_strong_count(ctx as *const HostCtx<S>) }
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

/// The error for a call [`with`] could not serve.
fn refused<T>(closed: bool) -> RResult<T, PluginError> {
    RErr(service_error(if closed {
        "this plugin instance has been shut down: host services are only available between init and shutdown"
    } else {
        "the host panicked serving this call"
    }))
}

extern "C" fn log<S: HostServices>(ctx: *const c_void, level: u8, message: RStr<'_>) {
    with::<S, _>(ctx, |_| (), |c| c.services.log(level, message.as_str()))
}

extern "C" fn log_fields<S: HostServices>(
    ctx: *const c_void,
    level: u8,
    message: RStr<'_>,
    fields: RSlice<'_, RawKeyValue<'_>>,
) {
    with::<S, _>(
        ctx,
        |_| (),
        |c| {
            let fields: Vec<(&str, &str)> = fields.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
            c.services.log_fields(level, message.as_str(), &fields)
        },
    )
}

extern "C" fn kv_get<S: HostServices>(
    ctx: *const c_void,
    key: RStr<'_>,
    read: ReadCallback,
) -> RResult<bool, PluginError> {
    with::<S, _>(ctx, refused, |c| {
        rresult(c.services.kv_get(key.as_str(), &mut |value| (read.read)(read.user, RSlice::from_slice(value))))
    })
}

extern "C" fn kv_set<S: HostServices>(
    ctx: *const c_void,
    key: RStr<'_>,
    value: RSlice<'_, u8>,
    ttl_ms: u64,
) -> RResult<(), PluginError> {
    with::<S, _>(ctx, refused, |c| rresult(c.services.kv_set(key.as_str(), value.as_slice(), ttl_ms)))
}

extern "C" fn kv_delete<S: HostServices>(ctx: *const c_void, key: RStr<'_>) -> RResult<bool, PluginError> {
    with::<S, _>(ctx, refused, |c| rresult(c.services.kv_delete(key.as_str())))
}

extern "C" fn kv_list<S: HostServices>(
    ctx: *const c_void,
    prefix: RStr<'_>,
    limit: u32,
) -> RResult<RVec<RString>, PluginError> {
    with::<S, _>(ctx, refused, |c| {
        rresult(
            c.services
                .kv_list(prefix.as_str(), limit as usize)
                .map(|keys| keys.into_iter().map(RString::from).collect()),
        )
    })
}

extern "C" fn kv_increment<S: HostServices>(
    ctx: *const c_void,
    key: RStr<'_>,
    delta: i64,
    ttl_ms: u64,
) -> RResult<i64, PluginError> {
    with::<S, _>(ctx, refused, |c| rresult(c.services.kv_increment(key.as_str(), delta, ttl_ms)))
}

extern "C" fn publish<S: HostServices>(
    ctx: *const c_void,
    topic: RStr<'_>,
    payload: RSlice<'_, u8>,
    direction: u8,
) -> RResult<(), PluginError> {
    with::<S, _>(ctx, refused, |c| rresult(c.services.publish(topic.as_str(), payload.as_slice(), direction)))
}

extern "C" fn subscribe<S: HostServices>(
    ctx: *const c_void,
    topic: RStr<'_>,
    raw: RawSubscriber,
) -> RResult<u64, PluginError> {
    // Made first, so that every way out of here (closed, refused, panicked) frees the closure.
    let mut subscriber = Subscriber { raw, _library: None };
    with::<S, _>(ctx, refused, |c| {
        if let Some(library) = &c.library {
            match library.upgrade() {
                Some(library) => subscriber._library = Some(library),
                None => return refused(true),
            }
        }
        rresult(c.services.subscribe(topic.as_str(), subscriber))
    })
}

extern "C" fn unsubscribe<S: HostServices>(ctx: *const c_void, id: u64) -> bool {
    with::<S, _>(ctx, |_| false, |c| c.services.unsubscribe(id))
}

extern "C" fn get_app<S: HostServices>(ctx: *const c_void, id: RStr<'_>) -> ROption<AppInfo> {
    with::<S, _>(ctx, |_| RNone, |c| c.services.get_app(id.as_str()).into())
}

extern "C" fn list_apps<S: HostServices>(ctx: *const c_void) -> RVec<AppInfo> {
    with::<S, _>(ctx, |_| RVec::new(), |c| c.services.list_apps().into())
}

extern "C" fn model_info<S: HostServices>(ctx: *const c_void, model: RStr<'_>) -> ROption<ModelInfo> {
    with::<S, _>(ctx, |_| RNone, |c| c.services.model_info(model.as_str()).into())
}

extern "C" fn validate_credential<S: HostServices>(ctx: *const c_void, credential: RStr<'_>) -> ROption<Identity> {
    with::<S, _>(
        ctx,
        |_| RNone,
        |c| {
            c.services
                .validate_credential(credential.as_str())
                .map(|(app, user)| Identity { app_id: app.into(), user_id: user.into() })
                .into()
        },
    )
}

extern "C" fn http_send<S: HostServices>(
    ctx: *const c_void,
    call: &RawHttpCall<'_>,
) -> RFuture<RResult<HttpReply, PluginError>> {
    with::<S, _>(
        ctx,
        |closed| RFuture::ready(refused(closed)),
        |c| {
            let call = HttpCall {
                upstream: call.upstream.as_str().to_owned(),
                method: call.method.as_str().to_owned(),
                path: call.path.as_str().to_owned(),
                headers: call.headers.iter().map(|h| (h.name.as_str().to_owned(), h.value.to_vec())).collect(),
                body: call.body.to_vec(),
                timeout: (call.timeout_ms > 0).then(|| std::time::Duration::from_millis(call.timeout_ms)),
                request_id: call.request_id.as_str().to_owned(),
                keep_alive: KeepAlive(c.library.as_ref().and_then(Weak::upgrade)),
            };
            let sent = c.services.http(call);
            RFuture::new(async move {
                match sent.await {
                    Ok(resp) => ROk(HttpReply {
                        status: resp.status,
                        headers: resp
                            .headers
                            .into_iter()
                            .map(|(name, value)| OwnedHeader { name: name.into(), value: value.into() })
                            .collect(),
                        body: RStream::new(BodyItems(resp.body)),
                    }),
                    Err(e) => RErr(service_error(e)),
                }
            })
        },
    )
}

/// A host body as the plugin reads it.
struct BodyItems(HttpBody);

impl ItemSource for BodyItems {
    type Item = RResult<RVec<u8>, PluginError>;
    fn poll_item(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.as_mut().poll_item(cx).map(|item| {
            item.map(|r| match r {
                Ok(bytes) => ROk(RVec::from(bytes)),
                Err(e) => RErr(service_error(e)),
            })
        })
    }
}

// The plugin side: trampolines the SDK passes to the host.

/// Hands `value` to the `FnMut(&[u8])` behind `user`. The SDK's closure catches the plugin's
/// panics itself and re-raises them in the plugin once the host call returned; this guard only
/// keeps any other panic from crossing into the host (which would abort the process).
pub(crate) extern "C" fn read_trampoline<F: FnMut(&[u8])>(user: *mut c_void, value: RSlice<'_, u8>) {
    // SAFETY: the SDK passes a pointer to its own `F`, alive for the duration of the `get` call
    // that invokes this.
    let f = unsafe { &mut *(user as *mut F) };
    let _ = crate::sdk::catch(|| f(value.as_slice()));
}

/// A subscriber closure as the SDK boxes it.
pub(crate) type EventClosure = Box<dyn Fn(&RawEvent<'_>) + Send + Sync>;

pub(crate) extern "C" fn event_trampoline(user: *const c_void, event: &RawEvent<'_>) {
    // SAFETY: `user` is a `Box<EventClosure>` made by `subscriber_parts`, freed only by
    // `drop_event_closure`, after the last delivery.
    let f = unsafe { &*(user as *const EventClosure) };
    // A panicking subscriber must not unwind into the host.
    let _ = crate::sdk::catch(|| f(event));
}

pub(crate) extern "C" fn drop_event_closure(user: *const c_void) {
    // SAFETY: as above; the host calls this exactly once per subscription.
    let closure = unsafe { Box::from_raw(user as *mut EventClosure) };
    // A closure whose captures panic on drop must not unwind into the host.
    let _ = crate::sdk::catch(move || drop(closure));
}

/// A subscription for `f`.
pub(crate) fn raw_subscriber(f: EventClosure) -> RawSubscriber {
    RawSubscriber {
        user: Box::into_raw(Box::new(f)) as *const c_void,
        callback: event_trampoline,
        drop_user: drop_event_closure,
    }
}
