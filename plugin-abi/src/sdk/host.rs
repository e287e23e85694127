//! The plugin's handle to host services, and the plugin's config.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use abi_stable::std_types::{RNone, ROk, RSlice, RSome, RStr};
use serde::de::DeserializeOwned;

use crate::ffi;
use crate::sdk::PluginError;

/// Host services, handed to [`crate::Plugin::init`]. Cheap to clone; usable from any thread for the
/// life of the plugin instance. A service the host does not offer (an older gateway) answers with
/// an error, or `None` for lookups; logging to such a host is a no-op.
///
/// A `Host` kept past the instance's shutdown (by a thread of the plugin's, say) stays safe to
/// use: every call then fails with a "shut down" error ([`crate::PluginError`] code `SERVICE`),
/// lookups answer `None` and logging does nothing.
pub struct Host {
    raw: ffi::HostHandle,
    log: Option<&'static ffi::LogV1>,
    log_fields: Option<&'static ffi::LogV2>,
    kv: Option<&'static ffi::KvV1>,
    events: Option<&'static ffi::EventsV1>,
    lookup: Option<&'static ffi::LookupV1>,
    http: Option<&'static ffi::HttpV1>,
    /// Counts this handle in the host, so that what it points to outlives it.
    handle: Option<&'static ffi::HandleV1>,
    stop: StopSignal,
    /// Keeps a mock host's state alive; the real host owns its own.
    _mock: Option<Arc<ffi::HostCtx<ffi::MockServices>>>,
}

impl Clone for Host {
    fn clone(&self) -> Self {
        if let Some(handle) = self.handle {
            (handle.retain)(self.raw.ctx);
        }
        Host {
            raw: self.raw,
            log: self.log,
            log_fields: self.log_fields,
            kv: self.kv,
            events: self.events,
            lookup: self.lookup,
            http: self.http,
            handle: self.handle,
            stop: self.stop.clone(),
            _mock: self._mock.clone(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(handle) = self.handle {
            (handle.release)(self.raw.ctx);
        }
    }
}

/// A subscriber's closure with the host to report to: dropping the closure (when the
/// subscription ends) may panic too, and that is logged rather than lost.
struct Subscribed<F> {
    f: Option<F>,
    host: Host,
}

impl<F> Drop for Subscribed<F> {
    fn drop(&mut self) {
        let f = self.f.take();
        if let Err(message) = crate::sdk::catch(move || drop(f)) {
            self.host.error(&format!("event subscriber panicked while being dropped: {message}"));
        }
    }
}

/// Set when the plugin instance is shutting down, before [`crate::Plugin::shutdown`] runs: hand a
/// clone to each background thread and have it stop when this fires.
#[derive(Clone, Default)]
pub struct StopSignal(Arc<(Mutex<bool>, Condvar)>);

impl StopSignal {
    pub fn is_stopped(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout`; true if the signal fired.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let (lock, cvar) = &*self.0;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (stopped, _) =
            cvar.wait_timeout_while(guard, timeout, |stopped| !*stopped).unwrap_or_else(|e| e.into_inner());
        *stopped
    }

    pub(crate) fn fire(&self) {
        let (lock, cvar) = &*self.0;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }
}

/// Where an event is meant to travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    /// This gateway only.
    Local = ffi::direction::LOCAL,
    /// Towards a control plane.
    Up = ffi::direction::UP,
    /// Towards edge gateways.
    Down = ffi::direction::DOWN,
}

impl Direction {
    fn from_u8(d: u8) -> Direction {
        match d {
            ffi::direction::UP => Direction::Up,
            ffi::direction::DOWN => Direction::Down,
            _ => Direction::Local,
        }
    }
}

/// An event as a subscriber receives it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub direction: Direction,
    /// The publishing plugin.
    pub source: &'a str,
}

/// An app from the gateway config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub id: String,
    pub name: String,
    /// Models it may use; empty means all.
    pub models: Vec<String>,
}

impl From<ffi::AppInfo> for App {
    fn from(a: ffi::AppInfo) -> Self {
        App {
            id: a.id.into_string(),
            name: a.name.into_string(),
            models: a.models.into_iter().map(|m| m.into_string()).collect(),
        }
    }
}

/// A model route from the gateway config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    pub upstream: String,
    pub upstream_kind: String,
    pub upstream_model: String,
}

fn missing(service: &str) -> PluginError {
    PluginError::with_code(ffi::code::SERVICE, format!("this gateway does not offer the {service} service"))
}

fn lookup<T: ffi::Table>(raw: &ffi::HostHandle) -> Option<&'static T> {
    match (raw.service)(raw.ctx, T::ID, T::VERSION) {
        // SAFETY: the host's service tables are statics of the host executable, which outlives
        // every plugin.
        RSome(entry) => unsafe { entry.get::<T>() }.ok(),
        RNone => None,
    }
}

impl Host {
    /// Wraps the handle the host passed to `create`, resolving and layout-checking services once,
    /// and counting this handle in the host (hosts from ABI 1.3 on).
    pub(crate) fn with_stop(raw: ffi::HostHandle, stop: StopSignal) -> Self {
        let handle: Option<&'static ffi::HandleV1> = lookup(&raw);
        if let Some(handle) = handle {
            (handle.retain)(raw.ctx);
        }
        Host {
            raw,
            log: lookup(&raw),
            log_fields: lookup(&raw),
            kv: lookup(&raw),
            events: lookup(&raw),
            lookup: lookup(&raw),
            http: lookup(&raw),
            handle,
            stop,
            _mock: None,
        }
    }

    #[cfg(feature = "testing")]
    pub(crate) fn mock(services: Arc<ffi::MockServices>) -> Self {
        let ctx = ffi::HostCtx::new(services, None);
        let raw = ffi::host_handle(&ctx);
        let mut host = Host::with_stop(raw, StopSignal::default());
        host._mock = Some(ctx);
        host
    }

    /// Sends `req` through the gateway's HTTP client to a configured upstream. The returned
    /// future owns everything it needs: await it in an async hook (or anywhere else).
    pub fn http(
        &self,
        req: crate::sdk::HttpRequest,
    ) -> impl std::future::Future<Output = Result<crate::sdk::HttpResponse, PluginError>> + Send + 'static {
        crate::sdk::http::send(&self.raw, self.http, req)
    }

    /// The host's parse of chat requests, if it offers one.
    pub(crate) fn request_view(&self) -> Option<&'static ffi::RequestViewV1> {
        lookup(&self.raw)
    }

    /// Whether the host skips hooks the plugin did not write.
    pub(crate) fn skips_unwritten(&self) -> bool {
        lookup::<ffi::HookSkipV1>(&self.raw).is_some()
    }

    /// Fires when this instance shuts down (also on unload), before `Plugin::shutdown`.
    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    /// Sends a line to the gateway's log, tagged with this plugin's name and version. The gateway
    /// filters by level and rate-limits each plugin.
    pub fn log(&self, level: Level, message: &str) {
        if let Some(log) = self.log {
            (log.log)(self.raw.ctx, level as u8, RStr::from_str(message));
        }
    }

    /// A line with key-value fields (`("upstream", "openai"), ("attempt", "2")`), which the
    /// gateway logs as fields of its own next to `plugin` and `version` (in JSON logs, keys of
    /// the line). A name that is not made of ASCII letters, digits, `_` and `.` has the others
    /// replaced by `_`; names the gateway uses itself (`message`, `plugin`, `version`) get a
    /// `field.` prefix; fields past the 16th are dropped and counted in `fields_dropped`. A
    /// gateway older than ABI 1.7 gets the fields appended to the message as `key=value`.
    pub fn log_with(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        if let Some(log) = self.log_fields {
            let raw: Vec<ffi::RawKeyValue<'_>> = fields
                .iter()
                .map(|(k, v)| ffi::RawKeyValue { key: RStr::from_str(k), value: RStr::from_str(v) })
                .collect();
            (log.log)(self.raw.ctx, level as u8, RStr::from_str(message), raw.as_slice().into());
        } else if !fields.is_empty() {
            self.log(level, &ffi::with_fields(message, fields));
        } else {
            self.log(level, message);
        }
    }

    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }

    fn kv(&self) -> Result<&'static ffi::KvV1, PluginError> {
        self.kv.ok_or_else(|| missing("KV"))
    }

    /// Reads `key` in place, without copying it: `f` sees the stored bytes. `None` if absent.
    /// `f` runs while no lock is held, so it may call the host again. If `f` panics, the panic
    /// resumes here, in the plugin, once the host has returned (the hook's guard then reports it).
    pub fn kv_read<R>(&self, key: &str, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, PluginError> {
        let kv = self.kv()?;
        let mut f = Some(f);
        let mut out = None;
        let mut panic = None;
        let mut read = |value: &[u8]| {
            if let Some(f) = f.take() {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(value))) {
                    Ok(r) => out = Some(r),
                    Err(payload) => panic = Some(payload),
                }
            }
        };
        let callback =
            ffi::ReadCallback { read: trampoline_for(&read), user: &mut read as *mut _ as *mut std::ffi::c_void };
        let found = (kv.get)(self.raw.ctx, key.into(), callback).into_result().map_err(PluginError::from);
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
        Ok(if found? { out } else { None })
    }

    /// A copy of the value of `key`, if any.
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        self.kv_read(key, <[u8]>::to_vec)
    }

    /// Stores `value` under `key` in this plugin's namespace; returns once durable.
    pub fn kv_set(&self, key: &str, value: &[u8]) -> Result<(), PluginError> {
        self.kv_set_ttl(key, value, Duration::ZERO)
    }

    /// Like [`Host::kv_set`], expiring after `ttl` (zero: never).
    pub fn kv_set_ttl(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), PluginError> {
        let kv = self.kv()?;
        (kv.set)(self.raw.ctx, key.into(), RSlice::from_slice(value), ttl_ms(ttl))
            .into_result()
            .map_err(PluginError::from)
    }

    /// Returns whether the key existed.
    pub fn kv_delete(&self, key: &str) -> Result<bool, PluginError> {
        (self.kv()?.delete)(self.raw.ctx, key.into()).into_result().map_err(PluginError::from)
    }

    /// Keys starting with `prefix`, in order, at most `limit`.
    pub fn kv_list(&self, prefix: &str, limit: u32) -> Result<Vec<String>, PluginError> {
        let keys = (self.kv()?.list)(self.raw.ctx, prefix.into(), limit).into_result().map_err(PluginError::from)?;
        Ok(keys.into_iter().map(|k| k.into_string()).collect())
    }

    /// Atomically adds `delta` to the counter at `key` (absent or expired counts as 0) and
    /// returns the new value; `ttl` applies when the counter is created. Durable on return.
    pub fn kv_increment(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, PluginError> {
        (self.kv()?.increment)(self.raw.ctx, key.into(), delta, ttl_ms(ttl)).into_result().map_err(PluginError::from)
    }

    /// Publishes an event; delivered to subscribers on the host's event thread.
    pub fn publish(&self, topic: &str, payload: &[u8], direction: Direction) -> Result<(), PluginError> {
        let events = self.events.ok_or_else(|| missing("events"))?;
        (events.publish)(self.raw.ctx, topic.into(), RSlice::from_slice(payload), direction as u8)
            .into_result()
            .map_err(PluginError::from)
    }

    /// Subscribes `f` to `topic` (`""`: every topic). Returns the id for [`Host::unsubscribe`];
    /// the subscription also ends when the plugin unloads. `f` runs on the host's event thread.
    pub fn subscribe(&self, topic: &str, f: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Result<u64, PluginError> {
        let events = self.events.ok_or_else(|| missing("events"))?;
        let subscribed = Subscribed { f: Some(f), host: self.clone() };
        let closure: ffi::EventClosure = Box::new(move |raw: &ffi::RawEvent<'_>| {
            let event = Event {
                topic: raw.topic.as_str(),
                payload: raw.payload.as_slice(),
                direction: Direction::from_u8(raw.direction),
                source: raw.source.as_str(),
            };
            let Some(f) = &subscribed.f else { return };
            if let Err(message) = crate::sdk::catch(|| f(&event)) {
                subscribed.host.error(&format!("event subscriber panicked on topic `{}`: {message}", event.topic));
            }
        });
        match (events.subscribe)(self.raw.ctx, topic.into(), ffi::raw_subscriber(closure)) {
            ROk(id) => Ok(id),
            // The host dropped the subscriber, and with it the closure.
            abi_stable::std_types::RErr(e) => Err(e.into()),
        }
    }

    pub fn unsubscribe(&self, id: u64) -> bool {
        self.events.is_some_and(|events| (events.unsubscribe)(self.raw.ctx, id))
    }

    /// An app from the gateway config.
    pub fn app(&self, id: &str) -> Option<App> {
        let lookup = self.lookup?;
        (lookup.get_app)(self.raw.ctx, id.into()).into_option().map(App::from)
    }

    pub fn apps(&self) -> Vec<App> {
        self.lookup.map_or_else(Vec::new, |l| (l.list_apps)(self.raw.ctx).into_iter().map(App::from).collect())
    }

    pub fn model(&self, name: &str) -> Option<Model> {
        let m = (self.lookup?.model_info)(self.raw.ctx, name.into()).into_option()?;
        Some(Model {
            name: m.name.into_string(),
            upstream: m.upstream.into_string(),
            upstream_kind: m.upstream_kind.into_string(),
            upstream_model: m.upstream_model.into_string(),
        })
    }

    /// The (app id, user id) an API key from the gateway config belongs to.
    pub fn validate_credential(&self, credential: &str) -> Option<(String, String)> {
        let id = (self.lookup?.validate_credential)(self.raw.ctx, credential.into()).into_option()?;
        Some((id.app_id.into_string(), id.user_id.into_string()))
    }
}

/// A TTL in ms for the host: saturating, so that a huge TTL means "a very long time" instead of
/// wrapping around to a short one.
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn trampoline_for<F: FnMut(&[u8])>(_f: &F) -> extern "C" fn(*mut std::ffi::c_void, RSlice<'_, u8>) {
    ffi::read_trampoline::<F>
}

/// Log levels, most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = ffi::level::ERROR,
    Warn = ffi::level::WARN,
    Info = ffi::level::INFO,
    Debug = ffi::level::DEBUG,
    Trace = ffi::level::TRACE,
}

impl Level {
    pub fn from_u8(level: u8) -> Option<Level> {
        Some(match level {
            ffi::level::ERROR => Level::Error,
            ffi::level::WARN => Level::Warn,
            ffi::level::INFO => Level::Info,
            ffi::level::DEBUG => Level::Debug,
            ffi::level::TRACE => Level::Trace,
            _ => return None,
        })
    }
}

/// The plugin's config table from the gateway config, as JSON.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a>(&'a str);

impl<'a> Config<'a> {
    pub fn new(json: &'a str) -> Self {
        Config(json)
    }

    /// The config as JSON text (`{}` when the gateway config gives none).
    pub fn as_json(&self) -> &'a str {
        self.0
    }

    /// Deserializes the config; a mismatch is an [`PluginError::config`] naming the problem.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_str(self.0).map_err(|e| PluginError::config(format!("invalid config: {e}")))
    }
}
