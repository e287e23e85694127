//! The C ABI between the gateway and its plugins: every `#[repr(C)]` type that crosses a `.so` boundary.
//!
//! # Versioning rule
//!
//! The ABI version is this crate's package version. abi_stable refuses a plugin whose major version
//! differs from the host's, and compares the layout of every type reachable from [`PluginRoot`].
//!
//! * [`PluginRoot`] is **frozen**: it never gains a field, so any 1.x plugin loads on any 1.y host.
//! * Capabilities (plugin → host) and services (host → plugin) are plain `#[repr(C)]` tables looked up
//!   by `(id, version)` through a [`TableEntry`], which carries the table's `TypeLayout`; the side that
//!   reads a table checks that layout before the first call. A table is frozen once released: a
//!   change is a new version (or a new id), and a minor ABI release only ever adds ids or versions.
//! * A host that does not know a capability id ignores it; a plugin that asks for a service the host
//!   lacks gets `None`. So a 1.0 plugin runs on a 1.1 host and a 1.1 plugin runs on a 1.0 host.
//!
//! Everything a hook receives is borrowed for the duration of that one call; everything it returns is
//! owned by abi_stable's `R*` types, which carry their own deallocator across the boundary.

use std::ffi::c_void;

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
    type_layout::TypeLayout,
};

/// Capability ids (plugin → host tables). Ids are never reused.
pub mod cap {
    pub const PRE_AUTH: u32 = 1;
    pub const AUTH: u32 = 2;
    pub const POST_AUTH: u32 = 3;
    pub const REQUEST_INTERCEPTOR: u32 = 4;
    pub const RESPONSE: u32 = 5;
    pub const STREAM_CHUNK: u32 = 6;
    pub const STREAM_COMPLETE: u32 = 7;
    /// Added in ABI 1.1.
    pub const DATA_COLLECTOR: u32 = 8;
    /// Added in ABI 1.1.
    pub const CONFIG_PROVIDER: u32 = 9;
    /// Added in ABI 1.2.
    pub const LIFECYCLE: u32 = 10;
    /// Added in ABI 1.3. Not listed by plugin authors: `#[derive(Plugin)]` always exports it.
    pub const BUILD: u32 = 11;
    /// Added in ABI 1.4. Exported by `#[derive(Plugin)]` when the plugin lists `required(...)`.
    pub const REQUIREMENTS: u32 = 12;
    /// Added in ABI 1.4.
    pub const EXECUTOR: u32 = 13;
    /// Added in ABI 1.6.
    pub const ROUTES: u32 = 14;
    /// Added in ABI 1.6.
    pub const UI: u32 = 15;
    /// Added in ABI 1.7.
    pub const COMMANDS: u32 = 16;
    /// Added in ABI 1.8.
    pub const SCHEDULER: u32 = 17;
}

/// Service ids (host → plugin tables). Ids are never reused.
pub mod service {
    pub const LOG: u32 = 1;
    /// Added in ABI 1.2.
    pub const KV: u32 = 2;
    /// Added in ABI 1.2.
    pub const EVENTS: u32 = 3;
    /// Added in ABI 1.2.
    pub const LOOKUP: u32 = 4;
    /// Added in ABI 1.3.
    pub const HANDLE: u32 = 5;
    /// Added in ABI 1.4.
    pub const HTTP: u32 = 6;
    /// Added in ABI 1.4: the host understands [`code::UNWRITTEN`](super::code::UNWRITTEN) and skips
    /// hooks a plugin did not write.
    pub const HOOK_SKIP: u32 = 7;
    /// Added in ABI 1.5: the host's parse of a chat request ([`RequestViewV1`](super::RequestViewV1)).
    pub const REQUEST_VIEW: u32 = 8;
}

/// Request properties a hook sets through [`Mutations::set_headers`]: an entry whose name starts
/// with `:` (as HTTP/2's pseudo-headers do) is a property of the request, not a header. A host
/// older than ABI 1.5 refuses such a name as an invalid header, so a change is never lost quietly.
pub mod property {
    /// The body's `model` field (request hooks only; added in ABI 1.5).
    pub const MODEL: &str = ":model";

    pub fn is_property(name: &str) -> bool {
        name.starts_with(':')
    }
}

/// Error codes carried by [`PluginError`]. Plugins may use their own codes from 1000 up.
pub mod code {
    /// The plugin failed for a reason of its own.
    pub const INTERNAL: u32 = 1;
    /// A panic was caught at the boundary inside the plugin.
    pub const PANIC: u32 = 2;
    /// The plugin rejected its configuration.
    pub const INVALID_CONFIG: u32 = 3;
    /// A host service refused the call (a size limit, a full queue, an unknown id).
    pub const SERVICE: u32 = 4;
    /// The plugin did not write this hook (the trait's default answered): the host stops
    /// calling it. Only sent to hosts that offer [`service::HOOK_SKIP`](super::service::HOOK_SKIP).
    pub const UNWRITTEN: u32 = 5;
}

/// Event directions: where an event is meant to travel. Local delivery works on every gateway;
/// the direction travels with the event for a cross-node transport.
pub mod direction {
    pub const LOCAL: u8 = 0;
    pub const UP: u8 = 1;
    pub const DOWN: u8 = 2;
}

/// Log levels for [`LogV1::log`], most to least severe.
pub mod level {
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;
}

/// An opaque pointer to one initialised plugin instance, owned by the plugin. Only this crate
/// makes or dereferences one: the host reaches an instance through [`Instance`] and [`Cap`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct InstancePtr(pub(crate) *const c_void);

// SAFETY: the pointee is the plugin's `Plugin` value, which the SDK requires to be `Send + Sync`.
unsafe impl Send for InstancePtr {}
// SAFETY: as above.
unsafe impl Sync for InstancePtr {}

/// A table looked up by id and version, with the layout it was compiled with.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TableEntry {
    pub id: u32,
    pub version: u32,
    pub layout: &'static TypeLayout,
    /// Points to an immutable table of the type `layout` describes, valid as long as the library
    /// (or host) that made it is loaded.
    pub(crate) table: *const c_void,
}

// SAFETY: `table` points to an immutable `'static` table of function pointers and plain data.
unsafe impl Send for TableEntry {}
// SAFETY: as above.
unsafe impl Sync for TableEntry {}

/// A capability table by id and version, with its name, so that a host that does not know it
/// can still say which one it is.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableId {
    pub id: u32,
    pub version: u32,
    pub name: RStr<'static>,
}

impl TableId {
    pub const fn of<T: Table>() -> Self {
        TableId { id: T::ID, version: T::VERSION, name: RStr::from_str(T::NAME) }
    }
}

/// Static facts about a plugin, readable without initialising it.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PluginMetadata {
    pub name: RStr<'static>,
    pub version: RStr<'static>,
    pub author: RStr<'static>,
    pub description: RStr<'static>,
    pub repository: RStr<'static>,
    pub capabilities: RSlice<'static, TableEntry>,
}

/// The root module every plugin exports. FROZEN: never add, remove or change a field.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRootRef)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    pub metadata: &'static PluginMetadata,
    /// Creates an instance from the plugin's JSON config. The host keeps `host.ctx` alive until
    /// `destroy` returns.
    pub create: extern "C" fn(config: RStr<'_>, host: HostHandle) -> RResult<InstancePtr, PluginError>,
    /// Runs the plugin's shutdown and frees the instance. Called exactly once per instance.
    #[sabi(last_prefix_field)]
    pub destroy: extern "C" fn(instance: InstancePtr),
}

impl RootModule for PluginRootRef {
    declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "llm_gateway_plugin";
    const NAME: &'static str = "llm_gateway_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What the host hands a plugin at `create`: a way to look up host services. Made only by
/// [`Library::instantiate`] (and the mock host), which keep `ctx` alive as long as needed.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HostHandle {
    pub(crate) ctx: *const c_void,
    pub(crate) service: extern "C" fn(ctx: *const c_void, id: u32, version: u32) -> ROption<TableEntry>,
}

// SAFETY: the host guarantees that `ctx` is usable from any thread for as long as the instance lives.
unsafe impl Send for HostHandle {}
// SAFETY: as above.
unsafe impl Sync for HostHandle {}

/// Service [`service::LOG`], version 1.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LogV1 {
    pub log: extern "C" fn(ctx: *const c_void, level: u8, message: RStr<'_>),
}

/// Service [`service::LOG`], version 2: a line with key-value fields, which the gateway logs as
/// fields of its own (added in ABI 1.7; a host without it gets the fields in the message).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LogV2 {
    pub log: extern "C" fn(ctx: *const c_void, level: u8, message: RStr<'_>, fields: RSlice<'_, RawKeyValue<'_>>),
}

/// An error that crosses the boundary: a code from [`code`] (or a plugin's own) and a message.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginError {
    pub code: u32,
    pub message: RString,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawHeader<'a> {
    pub name: RStr<'a>,
    pub value: RSlice<'a, u8>,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawKeyValue<'a> {
    pub key: RStr<'a>,
    pub value: RStr<'a>,
}

/// Per-request context. Empty strings mean "not known yet" (for example `app_id` before auth).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawContext<'a> {
    pub request_id: RStr<'a>,
    pub app_id: RStr<'a>,
    pub user_id: RStr<'a>,
    pub model: RStr<'a>,
    pub client_ip: RStr<'a>,
    pub metadata: RSlice<'a, RawKeyValue<'a>>,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawRequest<'a> {
    pub method: RStr<'a>,
    pub path: RStr<'a>,
    pub query: RStr<'a>,
    pub headers: RSlice<'a, RawHeader<'a>>,
    pub body: RSlice<'a, u8>,
    pub ctx: RawContext<'a>,
}

/// The upstream chosen for a request, seen by `after_selection`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawUpstream<'a> {
    pub name: RStr<'a>,
    pub kind: RStr<'a>,
    pub base_url: RStr<'a>,
    pub model: RStr<'a>,
}

/// An upstream response. `body` is empty in the headers phase and for streams.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawResponse<'a> {
    pub status: u16,
    pub headers: RSlice<'a, RawHeader<'a>>,
    pub body: RSlice<'a, u8>,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct OwnedHeader {
    pub name: RString,
    pub value: RString,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct OwnedKeyValue {
    pub key: RString,
    pub value: RString,
}

/// Only what a hook changed crosses back.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq)]
pub struct Mutations {
    pub set_headers: RVec<OwnedHeader>,
    pub remove_headers: RVec<RString>,
    pub body: ROption<RVec<u8>>,
    /// Response phases only; 0 leaves the status unchanged.
    pub status: u16,
    pub metadata: RVec<OwnedKeyValue>,
}

/// A response a plugin sends in place of the upstream's.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: RVec<OwnedHeader>,
    pub body: RVec<u8>,
}

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum HookOutcome {
    Continue,
    Modify(Mutations),
    Respond(Reply),
    Fail(PluginError),
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Identity {
    pub app_id: RString,
    pub user_id: RString,
}

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum AuthOutcome {
    /// Not this plugin's kind of credential: the next auth plugin decides.
    Pass,
    Authenticated(Identity),
    Denied(RString),
    Fail(PluginError),
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct RecordInfo {
    pub id: RString,
    pub name: RString,
}

/// How much of a stream's past a stream-chunk plugin wants to see. Zero means none.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_chunks: u32,
    pub max_bytes: u64,
}

/// Per-stream state owned by the plugin, from `on_stream_start` until `on_stream_end`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct StreamState(pub(crate) *mut c_void);

// SAFETY: the SDK requires the state type to be `Send`; the host uses it from one task at a time.
unsafe impl Send for StreamState {}

#[repr(u8)]
#[derive(StableAbi, Debug)]
pub enum StreamStart {
    /// The plugin does not want this stream's chunks.
    Skip,
    Observe(StreamState),
    Fail(PluginError),
}

/// Earlier chunks of a stream (oldest first), read in place from the host's bounded buffer.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawHistory {
    pub(crate) ctx: *const c_void,
    pub len: u32,
    pub bytes: u64,
    /// Valid for `index < len`, for the duration of the `on_chunk` call.
    pub(crate) get: extern "C" fn(ctx: *const c_void, index: u32) -> RSlice<'static, u8>,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawChunk<'a> {
    pub index: u64,
    pub data: RSlice<'a, u8>,
    pub history: RawHistory,
}

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum ChunkOutcome {
    Pass,
    Replace(RVec<u8>),
    Drop,
    Fail(PluginError),
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct StreamSummary {
    pub status: u16,
    pub chunks: u64,
    pub bytes: u64,
    pub duration_us: u64,
    /// False when the client went away or the upstream failed before the end.
    pub completed: bool,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawProxyLog<'a> {
    pub request_id: RStr<'a>,
    pub app_id: RStr<'a>,
    pub user_id: RStr<'a>,
    pub method: RStr<'a>,
    pub path: RStr<'a>,
    pub model: RStr<'a>,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_us: u64,
    pub unix_ms: u64,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawAnalytics<'a> {
    pub request_id: RStr<'a>,
    pub app_id: RStr<'a>,
    pub user_id: RStr<'a>,
    pub model: RStr<'a>,
    pub upstream: RStr<'a>,
    pub status: u16,
    pub streamed: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub latency_us: u64,
    /// Time to first token; equal to `latency_us` for non-streaming calls.
    pub ttft_us: u64,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawBudget<'a> {
    pub app_id: RStr<'a>,
    pub user_id: RStr<'a>,
    pub model: RStr<'a>,
    pub total_tokens: u64,
}

/// Receives a value in place, for the duration of the call.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct ReadCallback {
    pub user: *mut c_void,
    pub read: extern "C" fn(user: *mut c_void, value: RSlice<'_, u8>),
}

/// Service [`service::KV`], version 1: the calling plugin's own namespace of a durable store.
/// Writes return once durable.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct KvV1 {
    /// Calls `read.read(read.user, value)` with the value in place if `key` exists; returns whether
    /// it did.
    pub get: extern "C" fn(ctx: *const c_void, key: RStr<'_>, read: ReadCallback) -> RResult<bool, PluginError>,
    /// `ttl_ms` 0 keeps the value until deleted.
    pub set: extern "C" fn(
        ctx: *const c_void,
        key: RStr<'_>,
        value: RSlice<'_, u8>,
        ttl_ms: u64,
    ) -> RResult<(), PluginError>,
    /// Returns whether the key existed.
    pub delete: extern "C" fn(ctx: *const c_void, key: RStr<'_>) -> RResult<bool, PluginError>,
    /// Keys starting with `prefix`, in order, at most `limit`.
    pub list: extern "C" fn(ctx: *const c_void, prefix: RStr<'_>, limit: u32) -> RResult<RVec<RString>, PluginError>,
    /// Adds `delta` to a counter (a missing or expired key counts as 0) and returns the new
    /// value; `ttl_ms` applies when the counter is created.
    pub increment:
        extern "C" fn(ctx: *const c_void, key: RStr<'_>, delta: i64, ttl_ms: u64) -> RResult<i64, PluginError>,
}

#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawEvent<'a> {
    pub topic: RStr<'a>,
    pub payload: RSlice<'a, u8>,
    /// One of [`direction`].
    pub direction: u8,
    /// The publishing plugin's name.
    pub source: RStr<'a>,
}

/// A subscriber as a plugin registers it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawSubscriber {
    pub user: *const c_void,
    pub callback: extern "C" fn(user: *const c_void, event: &RawEvent<'_>),
    /// Frees `user`; called once, when the subscription ends.
    pub drop_user: extern "C" fn(user: *const c_void),
}

/// Service [`service::EVENTS`], version 1: publish and subscribe, delivered off the request path
/// on the host's event thread. Subscriptions end when the plugin unloads.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct EventsV1 {
    pub publish: extern "C" fn(
        ctx: *const c_void,
        topic: RStr<'_>,
        payload: RSlice<'_, u8>,
        direction: u8,
    ) -> RResult<(), PluginError>,
    /// An empty `topic` subscribes to every topic. Returns the subscription id.
    pub subscribe:
        extern "C" fn(ctx: *const c_void, topic: RStr<'_>, subscriber: RawSubscriber) -> RResult<u64, PluginError>,
    /// Returns whether the subscription existed.
    pub unsubscribe: extern "C" fn(ctx: *const c_void, id: u64) -> bool,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct AppInfo {
    pub id: RString,
    pub name: RString,
    /// Models the app may use; empty means all.
    pub models: RVec<RString>,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: RString,
    pub upstream: RString,
    pub upstream_kind: RString,
    pub upstream_model: RString,
}

/// Service [`service::LOOKUP`], version 1: the gateway's own apps, users, keys and models.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LookupV1 {
    pub get_app: extern "C" fn(ctx: *const c_void, id: RStr<'_>) -> ROption<AppInfo>,
    pub list_apps: extern "C" fn(ctx: *const c_void) -> RVec<AppInfo>,
    pub model_info: extern "C" fn(ctx: *const c_void, model: RStr<'_>) -> ROption<ModelInfo>,
    /// The app and user an API key from the gateway config belongs to.
    pub validate_credential: extern "C" fn(ctx: *const c_void, credential: RStr<'_>) -> ROption<Identity>,
}

/// Service [`service::HANDLE`], version 1: the plugin's SDK counts its copies of the host handle,
/// so that a handle kept past `destroy` (a plugin thread, a static) still points at live memory
/// and gets "shut down" errors instead of a use-after-free.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HandleV1 {
    pub retain: extern "C" fn(ctx: *const c_void),
    pub release: extern "C" fn(ctx: *const c_void),
}

/// One outgoing HTTP call a plugin asks the host to make. Borrowed for the `send` call: the
/// host copies what it needs before returning.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawHttpCall<'a> {
    /// A configured upstream: the host adds its base URL, credentials, TLS and limits.
    pub upstream: RStr<'a>,
    pub method: RStr<'a>,
    /// Path and query, appended to the upstream's base URL.
    pub path: RStr<'a>,
    pub headers: RSlice<'a, RawHeader<'a>>,
    pub body: RSlice<'a, u8>,
    /// 0: the upstream's own timeout.
    pub timeout_ms: u64,
    /// The gateway request this call serves, for the log (empty if none).
    pub request_id: RStr<'a>,
}

/// A response to a [`RawHttpCall`]: status and headers, then the body as it arrives.
#[repr(C)]
#[derive(StableAbi)]
pub struct HttpReply {
    pub status: u16,
    pub headers: RVec<OwnedHeader>,
    /// Body chunks; an error item (the upstream broke off, stalled, or went over its size
    /// limit) ends it.
    pub body: RStream<RResult<RVec<u8>, PluginError>>,
}

/// Service [`service::HTTP`], version 1: the host's HTTP client (pooled connections, TLS,
/// timeouts, size limits, every call metered). The future and the body stream are the host's:
/// the plugin needs no runtime of its own to drive them.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HttpV1 {
    pub send: extern "C" fn(ctx: *const c_void, call: &RawHttpCall<'_>) -> RFuture<RResult<HttpReply, PluginError>>,
}

/// Service [`service::HOOK_SKIP`], version 1: a marker; its presence is the message.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HookSkipV1 {
    pub version: u32,
}

/// Panic strategies for [`BuildV1::panic`].
pub mod panic_strategy {
    /// Panics unwind: the SDK's guards catch them at the boundary.
    pub const UNWIND: u8 = 0;
    /// `panic = "abort"`: any panic ends the gateway process. The host refuses such plugins.
    pub const ABORT: u8 = 1;
}

/// A table type that can be looked up by id and version: capabilities (defined with
/// [`define`]) and services (below).
pub trait Table: StableAbi + 'static {
    const ID: u32;
    const VERSION: u32;
    /// Human name, used in errors and `check` output.
    const NAME: &'static str;
}

macro_rules! tables {
    ($($ty:ty => $id:expr, $version:expr, $name:expr;)*) => {$(
        impl Table for $ty {
            const ID: u32 = $id;
            const VERSION: u32 = $version;
            const NAME: &'static str = $name;
        }
    )*};
}

tables! {
    LogV1 => service::LOG, 1, "Log";
    LogV2 => service::LOG, 2, "Log";
    KvV1 => service::KV, 1, "Kv";
    EventsV1 => service::EVENTS, 1, "Events";
    LookupV1 => service::LOOKUP, 1, "Lookup";
    HandleV1 => service::HANDLE, 1, "Handle";
    HttpV1 => service::HTTP, 1, "Http";
    HookSkipV1 => service::HOOK_SKIP, 1, "HookSkip";
    RequestViewV1 => service::REQUEST_VIEW, 1, "RequestView";
}

impl TableEntry {
    /// An entry for a `'static` table.
    pub const fn new<T: Table>(table: &'static T) -> Self {
        TableEntry { id: T::ID, version: T::VERSION, layout: T::LAYOUT, table: table as *const T as *const c_void }
    }

    /// The table, if this entry is `T` with a compatible layout.
    ///
    /// # Safety
    /// `self.table` must point to a live table of the type `self.layout` describes (true for an
    /// entry made by [`TableEntry::new`], or read from a library that is still loaded), and the
    /// returned reference must not be used after that library is unloaded.
    pub(crate) unsafe fn get<T: Table>(&self) -> Result<&'static T, LayoutError> {
        if self.id != T::ID || self.version != T::VERSION {
            return Err(LayoutError {
                table: T::NAME,
                detail: format!(
                    "expected table id {} version {}, found id {} version {}",
                    T::ID,
                    T::VERSION,
                    self.id,
                    self.version
                ),
            });
        }
        abi_stable::abi_stability::abi_checking::check_layout_compatibility(T::LAYOUT, self.layout)
            .map_err(|errors| LayoutError { table: T::NAME, detail: summarize_layout_errors(&errors.to_string()) })?;
        // SAFETY: id and version match, abi_stable found the layouts compatible, and the caller
        // guarantees that `table` points to a live table.
        Ok(unsafe { &*(self.table as *const T) })
    }
}

/// abi_stable's report prints both layouts in full (hundreds of lines). Keep what differs, with
/// the expected and found values and the field it is in: "in field `on_headers`: too many fields
/// (expected 4, found 3)".
pub fn summarize_layout_errors(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let value_after = |from: usize, label: &str| {
        let at = lines[from..].iter().position(|l| *l == label)? + from;
        lines.get(at + 1).copied()
    };
    let mut field = None;
    let mut parts: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.ends_with("inside:") {
            field = lines[i..].iter().find_map(|l| l.strip_prefix("field_name:"));
        }
        let Some(error) = line.strip_prefix("Error:") else {
            continue;
        };
        let mut part = String::new();
        if let Some(field) = field {
            part.push_str(&format!("in field `{field}`: "));
        }
        part.push_str(error.trim());
        if let (Some(expected), Some(found)) = (value_after(i, "Expected:"), value_after(i, "Found:")) {
            part.push_str(&format!(" (expected `{expected}`, found `{found}`)"));
        }
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    const SHOWN: usize = 3;
    match parts.len() {
        0 => report.lines().next().unwrap_or_default().to_owned(),
        n if n <= SHOWN => parts.join("; "),
        n => format!("{}; and {} more", parts[..SHOWN].join("; "), n - SHOWN),
    }
}

/// A table whose layout differs from the one this side was compiled with.
#[derive(Debug, Clone)]
pub struct LayoutError {
    pub table: &'static str,
    pub detail: String,
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layout of the `{}` table does not match: {}", self.table, self.detail)
    }
}

impl std::error::Error for LayoutError {}

mod capabilities;
pub mod chat;
#[doc(hidden)]
pub mod define;
mod future;
#[doc(hidden)]
pub mod glue;
mod handle;
mod host;
mod loader;
mod mock;
pub use capabilities::*;
pub use chat::{ChatLookup, RawChatRequest, RawMessage, RawSpan, RequestViewV1};
pub use define::{InstanceFuture, InstanceStream};
pub use future::{DropReport, FromPanic, ItemSource, RFuture, RPoll, RStream, RWaker, RWakerVTable};
pub use handle::{Cap, Capabilities, Capability, MissingCapability, Stream, StreamStarted};
pub(crate) use host::{EventClosure, HostCtx, host_handle, raw_subscriber, read_trampoline};
pub use host::{
    HostServices, HttpBody, HttpCall, HttpFuture, HttpResponse, KeepAlive, ServiceResult, Subscriber, with_fields,
};
pub use loader::{Instance, Library, Metadata, OpenError, host_abi_version};
pub(crate) use mock::MockServices;
#[cfg(feature = "testing")]
pub(crate) use mock::schema_of;
pub use mock::{ChunkHistory, NO_HISTORY};
