//! The ordered phases of one request, run over one immutable snapshot of the loaded plugins.
//!
//! Every hook runs inline on the tokio worker that serves the request (a hop to another thread
//! costs ~14 µs, more than a whole pipeline), except for plugins configured with
//! `isolate = true`, whose hooks run under `block_in_place` so that a hook that blocks moves
//! the worker's other tasks elsewhere. Data collectors always run on the collector thread.

mod collect;
mod executor;
pub mod flow;
mod request;
mod routes;
mod scheduler;
mod stream;
mod ui;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RErr, ROk, RResult, RSome};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use plugin_abi::ffi::{
    self, AuthOutcome, Cap, Capability, HookOutcome, PluginError, RawHeader, RawResponse, RawUpstream,
};

use crate::config::{FailMode, QuarantinePolicy};
use crate::error::ApiError;
use crate::metrics::{HookMetrics, Metrics};
use crate::plugin::LoadedPlugin;
use crate::upstream::{Target, Upstreams};
pub use collect::RecordSink;
pub use executor::ExecutorInfo;
use executor::check_executors;
pub use request::{ContextState, RequestState};
use request::{apply_headers, give_back, raw_headers, recycle, reply_parts, scratch};
pub use routes::{Prefix, RouteEnv, RouteTable};
pub use stream::StreamFilters;
pub use ui::{Asset, PluginUi, UiTable, content_type_of};

/// One loaded plugin as the pipeline runs it: failure policy, and its quarantine breaker.
pub struct Slot {
    pub plugin: Arc<LoadedPlugin>,
    pub on_error: FailMode,
    pub isolate: bool,
    breaker: Breaker,
    metrics: Arc<Metrics>,
}

/// Breaker states.
const CLOSED: u8 = 0;
/// Quarantined: not called until a probe is due.
const OPEN: u8 = 1;
/// One request is probing the plugin; the others still treat it as quarantined.
const PROBING: u8 = 2;

/// Quarantine as a circuit breaker: `after` panics within `window` open it (the plugin is no
/// longer called); after `probe_after`, one request calls the plugin again (half-open): if that
/// call does not panic the plugin is re-enabled, otherwise it stays quarantined for another
/// `probe_after`. So a few crafted requests cannot switch a plugin off for good.
struct Breaker {
    state: AtomicU8,
    /// Times of recent panics (only touched when a plugin panics).
    panics: Mutex<VecDeque<Instant>>,
    /// When the breaker last opened, in ns since `epoch`.
    opened_ns: AtomicU64,
    epoch: Instant,
    policy: QuarantinePolicy,
    quarantines: Arc<AtomicU64>,
    probes: Arc<AtomicU64>,
    recoveries: Arc<AtomicU64>,
}

impl Slot {
    pub fn new(plugin: Arc<LoadedPlugin>, isolate: bool, metrics: Arc<Metrics>) -> Self {
        let name = plugin.name().to_owned();
        let breaker = Breaker {
            state: AtomicU8::new(CLOSED),
            panics: Mutex::new(VecDeque::new()),
            opened_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            policy: plugin.quarantine,
            quarantines: metrics.plugin_counter("gateway_plugin_quarantines_total", &name),
            probes: metrics.plugin_counter("gateway_plugin_quarantine_probes_total", &name),
            recoveries: metrics.plugin_counter("gateway_plugin_quarantine_recoveries_total", &name),
        };
        Slot { on_error: plugin.on_error, plugin, isolate, breaker, metrics }
    }

    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// Whether the plugin is quarantined (a probe in progress counts).
    pub fn is_quarantined(&self) -> bool {
        self.breaker.state.load(Relaxed) != CLOSED
    }

    /// Whether a call may go to the plugin now: `Some(false)` while the breaker is closed;
    /// `Some(true)` to the one caller that becomes the probe once a probe is due; `None` while
    /// quarantined.
    fn admit(&self) -> Option<bool> {
        let b = &self.breaker;
        match b.state.load(Acquire) {
            CLOSED => Some(false),
            OPEN => {
                let probe_after = b.policy.probe_after?;
                let due = Duration::from_nanos(b.opened_ns.load(Relaxed)) + probe_after;
                if b.epoch.elapsed() < due || b.state.compare_exchange(OPEN, PROBING, AcqRel, Relaxed).is_err() {
                    return None;
                }
                b.probes.fetch_add(1, Relaxed);
                tracing::info!(plugin = self.name(), "quarantined plugin: probing it with one request");
                Some(true)
            }
            _ => None,
        }
    }

    fn now_ns(&self) -> u64 {
        self.breaker.epoch.elapsed().as_nanos() as u64
    }

    /// A call panicked; `probe` says whether it was the quarantine probe.
    fn on_panic(&self, probe: bool) {
        let b = &self.breaker;
        if probe {
            b.opened_ns.store(self.now_ns(), Relaxed);
            b.state.store(OPEN, Release);
            tracing::error!(plugin = self.name(), "quarantine probe panicked: the plugin stays quarantined");
            return;
        }
        let Some(after) = b.policy.after else { return };
        let now = Instant::now();
        let panics = {
            let mut panics = b.panics.lock();
            panics.push_back(now);
            while panics.front().is_some_and(|t| now.duration_since(*t) > b.policy.window) {
                panics.pop_front();
            }
            panics.len()
        };
        if panics < after as usize || b.state.load(Relaxed) != CLOSED {
            return;
        }
        // The time first, so that `admit` never sees the breaker open with a stale time.
        b.opened_ns.store(self.now_ns(), Relaxed);
        if b.state.compare_exchange(CLOSED, OPEN, AcqRel, Relaxed).is_ok() {
            b.panics.lock().clear();
            b.quarantines.fetch_add(1, Relaxed);
            self.metrics.quarantined.fetch_add(1, Relaxed);
            tracing::error!(
                plugin = self.name(),
                panics,
                window_secs = b.policy.window.as_secs_f64(),
                probe_after_secs = b.policy.probe_after.map(|d| d.as_secs_f64()),
                "plugin quarantined after repeated panics: it is not called until a probe succeeds or it is reloaded"
            );
        }
    }

    /// The probe call was dropped before it finished (the client went away, or it timed out):
    /// the plugin stays quarantined for another `probe_after`, so a probe nobody completes
    /// cannot keep it switched off for good.
    fn probe_abandoned(&self) {
        let b = &self.breaker;
        b.opened_ns.store(self.now_ns(), Relaxed);
        if b.state.compare_exchange(PROBING, OPEN, AcqRel, Relaxed).is_ok() {
            tracing::warn!(plugin = self.name(), "quarantine probe did not finish: the plugin stays quarantined");
        }
    }

    /// A call did not panic: if it was the probe, the plugin is re-enabled.
    fn on_success(&self, probe: bool) {
        let b = &self.breaker;
        if probe && b.state.compare_exchange(PROBING, CLOSED, AcqRel, Relaxed).is_ok() {
            b.recoveries.fetch_add(1, Relaxed);
            tracing::info!(plugin = self.name(), "quarantine probe succeeded: the plugin is called again");
        }
    }
}

/// Outcomes that may carry a plugin error.
trait Outcome {
    fn error(&self) -> Option<&PluginError>;
    fn label(&self) -> &'static str {
        if self.error().is_some() { "error" } else { "ok" }
    }
}

impl Outcome for HookOutcome {
    fn error(&self) -> Option<&PluginError> {
        match self {
            HookOutcome::Fail(e) => Some(e),
            _ => None,
        }
    }
    fn label(&self) -> &'static str {
        match self {
            HookOutcome::Continue => "continue",
            HookOutcome::Modify(_) => "modify",
            HookOutcome::Respond(_) => "respond",
            HookOutcome::Fail(_) => "error",
        }
    }
}

impl Outcome for AuthOutcome {
    fn error(&self) -> Option<&PluginError> {
        match self {
            AuthOutcome::Fail(e) => Some(e),
            _ => None,
        }
    }
}

impl Outcome for ffi::ChunkOutcome {
    fn error(&self) -> Option<&PluginError> {
        match self {
            ffi::ChunkOutcome::Fail(e) => Some(e),
            _ => None,
        }
    }
}

impl Outcome for ffi::StreamStarted {
    fn error(&self) -> Option<&PluginError> {
        match self {
            ffi::StreamStarted::Fail(e) => Some(e),
            _ => None,
        }
    }
}

impl<T> Outcome for RResult<T, PluginError> {
    fn error(&self) -> Option<&PluginError> {
        match self {
            RErr(e) => Some(e),
            ROk(_) => None,
        }
    }
}

/// One plugin's handle for one capability, with a metrics handle per hook of that capability
/// (indexed like `T::HOOKS`: `Hook::invoke(ffi::ResponseV1::on_body, ...)`).
pub struct Hook<T: 'static> {
    pub cap: Cap<T>,
    pub slot: Arc<Slot>,
    metrics: Box<[(&'static str, Arc<HookMetrics>)]>,
    /// Hooks the plugin did not write (its trait's default answered "unwritten" once): never
    /// called again on this pipeline.
    unwritten: Box<[AtomicBool]>,
}

impl<T: Capability> Hook<T> {
    fn new(cap: Cap<T>, slot: &Arc<Slot>) -> Self {
        let metrics = T::HOOKS.iter().map(|&n| (n, slot.metrics.hook(slot.name(), n))).collect();
        let unwritten = T::HOOKS.iter().map(|_| AtomicBool::new(false)).collect();
        Hook { cap, slot: slot.clone(), metrics, unwritten }
    }
}

impl<T> Hook<T> {
    /// Calls hook `which` (an index into the capability's hooks) with accounting: metrics, a
    /// trace span, panic counting.
    /// `probe`: this call is the quarantine probe ([`Hook::quarantine_check`]).
    fn invoke<R: Outcome>(&self, which: usize, probe: bool, f: impl FnOnce(&Cap<T>) -> R) -> R {
        let name = self.metrics[which].0;
        let span =
            tracing::trace_span!("hook", plugin = self.slot.name(), hook = name, outcome = tracing::field::Empty);
        let _entered = span.enter();
        self.call(which, probe, &span, f)
    }

    /// [`Hook::invoke`] without a span, for calls that are no part of a request's trace (data
    /// collectors, on the collector thread) or come once per stream chunk (a span each would
    /// dwarf the trace). Their calls, errors and latency are in the metrics all the same.
    fn invoke_untraced<R: Outcome>(&self, which: usize, probe: bool, f: impl FnOnce(&Cap<T>) -> R) -> R {
        self.call(which, probe, &tracing::Span::none(), f)
    }

    fn call<R: Outcome>(&self, which: usize, probe: bool, span: &tracing::Span, f: impl FnOnce(&Cap<T>) -> R) -> R {
        let m = &self.metrics[which].1;
        m.calls.fetch_add(1, Relaxed);
        let started = quanta::Instant::now();
        let r = if self.slot.isolate && can_block_in_place() {
            tokio::task::block_in_place(|| f(&self.cap))
        } else {
            f(&self.cap)
        };
        self.finished(which, span, started, &r, probe);
        r
    }

    /// Awaits hook `which`'s future with the same accounting as [`Hook::invoke`]: its latency
    /// runs until the future completes. The future runs on this task: dropping it (the client
    /// went away) cancels it inside the plugin.
    async fn invoke_async<R: Outcome>(
        &self,
        which: usize,
        probe: bool,
        future: impl std::future::Future<Output = R>,
    ) -> R {
        let (name, m) = &self.metrics[which];
        let span =
            tracing::trace_span!("hook", plugin = self.slot.name(), hook = *name, outcome = tracing::field::Empty);
        m.calls.fetch_add(1, Relaxed);
        let started = quanta::Instant::now();
        let unfinished = Unfinished { slot: &self.slot, probe };
        let r = tracing::Instrument::instrument(future, span.clone()).await;
        std::mem::forget(unfinished);
        self.finished(which, &span, started, &r, probe);
        r
    }

    /// Records a finished call: its latency, its outcome on the span, its error or panic.
    fn finished<R: Outcome>(&self, which: usize, span: &tracing::Span, started: quanta::Instant, r: &R, probe: bool) {
        self.metrics[which].1.latency.observe(quanta::Instant::now() - started);
        span.record("outcome", r.label());
        self.account(which, r.error(), probe);
    }

    /// Whether hook `which` is one the plugin did not write.
    #[inline]
    fn unwritten(&self, which: usize) -> bool {
        self.unwritten[which].load(Relaxed)
    }

    /// Counts a call's error or panic; a panic counts toward quarantine. A default hook's
    /// "unwritten" is no error: the hook is skipped from now on.
    fn account(&self, which: usize, error: Option<&PluginError>, probe: bool) {
        let m = &self.metrics[which].1;
        match error {
            Some(e) if e.code == ffi::code::UNWRITTEN => {
                self.unwritten[which].store(true, Relaxed);
                self.slot.on_success(probe);
            }
            Some(e) if e.code == ffi::code::PANIC => {
                m.errors.fetch_add(1, Relaxed);
                m.panics.fetch_add(1, Relaxed);
                self.slot.on_panic(probe);
            }
            Some(_) => {
                m.errors.fetch_add(1, Relaxed);
                self.slot.on_success(probe);
            }
            None => self.slot.on_success(probe),
        }
    }

    /// A failed hook under the plugin's failure policy: `None` to go on without it (fail-open),
    /// or the error the client gets (fail-closed).
    ///
    /// The plugin's message (a panic's text, say) goes to the log only: the client learns the
    /// plugin, the hook and the request id to look it up by.
    fn fail(&self, which: usize, e: &PluginError, request_id: &str) -> Option<ApiError> {
        let (hook, plugin) = (self.metrics[which].0, self.slot.name());
        match self.slot.on_error {
            FailMode::FailOpen => {
                tracing::warn!(
                    plugin,
                    hook,
                    request_id,
                    code = e.code,
                    "plugin failed, skipped (fail-open): {}",
                    e.message
                );
                None
            }
            FailMode::FailClosed => {
                tracing::error!(
                    plugin,
                    hook,
                    request_id,
                    code = e.code,
                    "plugin failed, request refused (fail-closed): {}",
                    e.message
                );
                Some(ApiError::plugin_failed(plugin, hook, e.code, request_id))
            }
        }
    }

    /// `Ok(Some(probe))` to call the plugin (`probe`: this call is the quarantine probe),
    /// `Ok(None)` to skip it, `Err` to fail the request.
    fn quarantine_check(&self) -> Result<Option<bool>, ApiError> {
        match self.slot.admit() {
            Some(probe) => Ok(Some(probe)),
            None => self.skip_quarantined().map(|()| None),
        }
    }

    /// The failure policy for a quarantined plugin: skip it (fail-open) or fail the request.
    fn skip_quarantined(&self) -> Result<(), ApiError> {
        match self.slot.on_error {
            FailMode::FailOpen => Ok(()),
            FailMode::FailClosed => Err(ApiError::plugin_quarantined(self.slot.name())),
        }
    }
}

fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Dropped only if an async hook's future is dropped before it finished.
struct Unfinished<'a> {
    slot: &'a Slot,
    probe: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.slot.probe_abandoned();
        }
    }
}

/// Why the request phases stopped before the upstream.
pub enum Stop {
    /// A plugin answered: later request hooks are skipped.
    Respond(ResponseState),
    Error(ApiError),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        Stop::Error(e)
    }
}

/// A response on its way to the client.
pub struct ResponseState {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ResponseState {
    fn from_reply(reply: ffi::Reply, plugin: &str, request_id: &str) -> Result<Self, ApiError> {
        let (status, headers, body) = reply_parts(reply).map_err(|e| {
            tracing::error!(plugin, request_id, "plugin answered with an invalid response: {e}");
            ApiError::plugin_failed(plugin, "respond", ffi::code::INTERNAL, request_id)
        })?;
        Ok(ResponseState { status, headers, body })
    }

    fn raw<'a>(&'a self, headers: &'a [RawHeader<'a>], with_body: bool) -> RawResponse<'a> {
        let body: &[u8] = if with_body { &self.body } else { &[] };
        RawResponse { status: self.status.as_u16(), headers: headers.into(), body: body.into() }
    }

    fn apply(&mut self, m: ffi::Mutations) -> Result<(), String> {
        apply_headers(&mut self.headers, &m.set_headers, &m.remove_headers)?;
        if m.status != 0 {
            self.status = StatusCode::from_u16(m.status).map_err(|_| format!("invalid status {}", m.status))?;
        }
        if let RSome(body) = m.body {
            self.body = Bytes::from(body.into_vec());
        }
        Ok(())
    }
}

/// The plugins of one configuration, by capability, in run order, and the upstreams and models
/// they route to. Immutable: a reload builds a new one, and every request runs on the one it
/// started with.
#[derive(Default)]
pub struct Pipeline {
    pub slots: Vec<Arc<Slot>>,
    /// The upstreams and model routes of this configuration.
    pub upstreams: Arc<Upstreams>,
    pre_auth: Vec<Hook<ffi::PreAuthV1>>,
    auth: Vec<Hook<ffi::AuthV1>>,
    post_auth: Vec<Hook<ffi::PostAuthV1>>,
    interceptors: Vec<Hook<ffi::RequestInterceptorV1>>,
    response: Vec<Hook<ffi::ResponseV1>>,
    stream_chunk: Vec<Hook<ffi::StreamChunkV1>>,
    stream_complete: Vec<Hook<ffi::StreamCompleteV1>>,
    collectors: Vec<Hook<ffi::DataCollectorV1>>,
    executors: Vec<Hook<ffi::ExecutorV1>>,
    routes: Vec<Hook<ffi::RoutesV1>>,
    /// Shared with the credential pools they are bound to.
    schedulers: Vec<Arc<Hook<ffi::SchedulerV1>>>,
    /// Every plugin's routes, asked for once when this pipeline was made.
    route_table: RouteTable,
    /// Every plugin's UI files, copied when this pipeline was made.
    ui: UiTable,
}

/// A request hook: the capability's call for the request view.
type RequestCall<T> = fn(&Cap<T>, &ffi::RawRequest<'_>, Option<&RawUpstream<'_>>) -> HookOutcome;

impl Pipeline {
    /// `slots` in run order, routing models as `upstreams` says.
    pub fn new(slots: Vec<Arc<Slot>>, upstreams: Arc<Upstreams>) -> Self {
        let mut p = Pipeline { upstreams, ..Pipeline::default() };
        let mut ui = Vec::new();
        for slot in &slots {
            let plugin = &slot.plugin;
            if let Some(c) = plugin.cap() {
                p.pre_auth.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.auth.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.post_auth.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.interceptors.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.response.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.stream_chunk.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.stream_complete.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.collectors.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.executors.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.routes.push(Hook::new(c, slot));
            }
            if let Some(c) = plugin.cap() {
                p.schedulers.push(Arc::new(Hook::new(c, slot)));
            }
            if let Some(c) = plugin.cap::<ffi::UiV1>() {
                ui.push(Hook::new(c, slot));
            }
        }
        p.route_table = RouteTable::build(&p.routes);
        p.ui = UiTable::build(&ui);
        p.slots = slots;
        p
    }

    /// Whether the plugins fit together: every model routed to an executor has it loaded and
    /// speaking OpenAI chat, no plugin route is invalid or conflicts, no plugin UI is broken.
    pub fn check(&self) -> Result<(), String> {
        let routed = self.upstreams.routes.values().filter_map(|r| match &r.target {
            Target::Executor(name) => Some((r.model.as_str(), name.as_str())),
            Target::Upstream(_) => None,
        });
        check_executors(self, routed)?;
        self.check_schedulers()?;
        let errors: Vec<&str> = self.route_table.errors().iter().chain(self.ui.errors()).map(String::as_str).collect();
        match errors.as_slice() {
            [] => Ok(()),
            errors => Err(errors.join("; ")),
        }
    }

    /// Whether requests must carry a credential some auth plugin accepts.
    pub fn requires_auth(&self) -> bool {
        !self.auth.is_empty()
    }

    pub fn has_collectors(&self) -> bool {
        !self.collectors.is_empty()
    }

    /// Runs `hooks` in order over `req`; each hook sees the changes of the ones before it.
    fn run_request<T>(
        hooks: &[Hook<T>],
        which: usize,
        req: &mut RequestState,
        upstream: Option<&RawUpstream<'_>>,
        call: RequestCall<T>,
    ) -> Result<(), Stop> {
        let mut buf = scratch();
        let mut next = 0;
        while next < hooks.len() {
            // Views borrow `req`; they live until a hook changes something, then are rebuilt.
            let found = {
                let metadata = req.ctx.raw_metadata();
                let headers = raw_headers(&req.headers, recycle(std::mem::take(&mut buf)));
                let raw = req.raw(&headers, &metadata);
                // Hooks that ask for the chat view share one parse of this body.
                let found = ffi::chat::with_request(&raw, &req.chat, || {
                    for (i, hook) in hooks.iter().enumerate().skip(next) {
                        if hook.unwritten(which) {
                            continue;
                        }
                        let Some(probe) = hook.quarantine_check()? else { continue };
                        match hook.invoke(which, probe, |cap| call(cap, &raw, upstream)) {
                            HookOutcome::Continue => {}
                            HookOutcome::Fail(e) if e.code == ffi::code::UNWRITTEN => {}
                            other => return Ok(Some((i, other))),
                        }
                    }
                    Ok::<_, Stop>(None)
                });
                buf = recycle(headers);
                found?
            };
            let Some((i, outcome)) = found else {
                break;
            };
            let hook = &hooks[i];
            match outcome {
                HookOutcome::Continue => {}
                HookOutcome::Modify(m) => {
                    if let Err(e) = req.apply(m) {
                        let e = PluginError { code: ffi::code::INTERNAL, message: e.into() };
                        if let Some(err) = hook.fail(which, &e, &req.ctx.request_id) {
                            return Err(Stop::Error(err));
                        }
                    }
                }
                HookOutcome::Respond(reply) => {
                    let resp = ResponseState::from_reply(reply, hook.slot.name(), &req.ctx.request_id)?;
                    return Err(Stop::Respond(resp));
                }
                HookOutcome::Fail(e) => {
                    if let Some(err) = hook.fail(which, &e, &req.ctx.request_id) {
                        return Err(Stop::Error(err));
                    }
                }
            }
            next = i + 1;
        }
        give_back(buf);
        Ok(())
    }

    pub fn pre_auth(&self, req: &mut RequestState) -> Result<(), Stop> {
        Self::run_request(&self.pre_auth, ffi::PreAuthV1::on_pre_auth, req, None, |c, r, _| c.on_pre_auth(r))
    }

    pub fn post_auth(&self, req: &mut RequestState) -> Result<(), Stop> {
        Self::run_request(&self.post_auth, ffi::PostAuthV1::on_post_auth, req, None, |c, r, _| c.on_post_auth(r))
    }

    pub fn before_selection(&self, req: &mut RequestState) -> Result<(), Stop> {
        let which = ffi::RequestInterceptorV1::before_selection;
        Self::run_request(&self.interceptors, which, req, None, |c, r, _| c.before_selection(r))
    }

    pub fn after_selection(&self, req: &mut RequestState, upstream: &RawUpstream<'_>) -> Result<(), Stop> {
        let which = ffi::RequestInterceptorV1::after_selection;
        Self::run_request(&self.interceptors, which, req, Some(upstream), |c, r, u| {
            c.after_selection(r, u.expect("after_selection always has an upstream"))
        })
    }

    /// Auth plugins in order until one decides; all passing (or none present) is a 401.
    pub fn auth(&self, req: &mut RequestState, credential: &str) -> Result<(), Stop> {
        let decided = {
            let metadata = req.ctx.raw_metadata();
            let headers = raw_headers(&req.headers, scratch());
            let raw = req.raw(&headers, &metadata);
            let decided = ffi::chat::with_request(&raw, &req.chat, || {
                for hook in &self.auth {
                    let Some(probe) = hook.quarantine_check()? else { continue };
                    let which = ffi::AuthV1::authenticate;
                    match hook.invoke(which, probe, |cap| cap.authenticate(credential.into(), &raw)) {
                        AuthOutcome::Pass => {}
                        AuthOutcome::Fail(e) => match hook.fail(which, &e, &req.ctx.request_id) {
                            Some(err) => return Err(Stop::Error(err)),
                            None => continue,
                        },
                        other => return Ok(Some(other)),
                    }
                }
                Ok::<_, Stop>(None)
            });
            give_back(headers);
            decided?
        };
        match decided {
            Some(AuthOutcome::Authenticated(id)) => {
                req.ctx.app_id = id.app_id.into_string();
                req.ctx.user_id = id.user_id.into_string();
                Ok(())
            }
            Some(AuthOutcome::Denied(reason)) => Err(Stop::Error(ApiError::unauthorized(reason.as_str()))),
            _ if credential.is_empty() => Err(Stop::Error(ApiError::unauthorized(
                "missing credential: expected `Authorization: Bearer <key>` or `x-api-key`",
            ))),
            _ => Err(Stop::Error(ApiError::unauthorized("invalid credential: no auth plugin accepted it"))),
        }
    }

    /// The app owning `credential`, from the first auth plugin that knows it; `request_id` names
    /// the call in logs and errors.
    pub fn app_by_credential(&self, credential: &str, request_id: &str) -> Result<Option<(String, String)>, ApiError> {
        let which = ffi::AuthV1::app_by_credential;
        for hook in &self.auth {
            if hook.unwritten(which) {
                continue;
            }
            let Some(probe) = hook.quarantine_check()? else { continue };
            match hook.invoke(which, probe, |cap| cap.app_by_credential(credential.into())) {
                ROk(RSome(app)) => return Ok(Some((app.id.into_string(), app.name.into_string()))),
                ROk(_) => {}
                RErr(e) if e.code == ffi::code::UNWRITTEN => {}
                RErr(e) => {
                    if let Some(err) = hook.fail(which, &e, request_id) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(None)
    }

    /// The headers phase: every Response plugin, in order, over status and headers.
    pub fn response_headers(&self, ctx: &ContextState, resp: &mut ResponseState) -> Result<(), ApiError> {
        self.run_response(ffi::ResponseV1::on_headers, ctx, resp, |cap, c, r| cap.on_headers(c, r))
    }

    /// The body phase of a non-streaming upstream response.
    pub fn response_body(&self, ctx: &ContextState, resp: &mut ResponseState) -> Result<(), ApiError> {
        self.run_response(ffi::ResponseV1::on_body, ctx, resp, |cap, c, r| cap.on_body(c, r))
    }

    fn run_response(
        &self,
        which: usize,
        ctx: &ContextState,
        resp: &mut ResponseState,
        call: fn(&Cap<ffi::ResponseV1>, &ffi::RawContext<'_>, &RawResponse<'_>) -> HookOutcome,
    ) -> Result<(), ApiError> {
        let metadata = ctx.raw_metadata();
        let raw_ctx = ctx.raw(&metadata);
        let mut buf = scratch();
        for hook in &self.response {
            if hook.unwritten(which) {
                continue;
            }
            let Some(probe) = hook.quarantine_check()? else { continue };
            let outcome = {
                let headers = raw_headers(&resp.headers, recycle(std::mem::take(&mut buf)));
                let raw = resp.raw(&headers, which == ffi::ResponseV1::on_body);
                let outcome = hook.invoke(which, probe, |cap| call(cap, &raw_ctx, &raw));
                buf = recycle(headers);
                outcome
            };
            match outcome {
                HookOutcome::Continue => {}
                HookOutcome::Fail(e) if e.code == ffi::code::UNWRITTEN => {}
                HookOutcome::Modify(m) => {
                    if let Err(e) = resp.apply(m) {
                        let e = PluginError { code: ffi::code::INTERNAL, message: e.into() };
                        if let Some(err) = hook.fail(which, &e, &ctx.request_id) {
                            return Err(err);
                        }
                    }
                }
                HookOutcome::Respond(reply) => {
                    *resp = ResponseState::from_reply(reply, hook.slot.name(), &ctx.request_id)?;
                    return Ok(());
                }
                HookOutcome::Fail(e) => {
                    if let Some(err) = hook.fail(which, &e, &ctx.request_id) {
                        return Err(err);
                    }
                }
            }
        }
        give_back(buf);
        Ok(())
    }

    /// Starts the stream-chunk plugins for one stream. Plugins that skip it cost nothing per chunk.
    pub fn stream_start(self: &Arc<Self>, ctx: &ContextState, head: &ResponseState) -> Result<StreamFilters, ApiError> {
        StreamFilters::start(self.clone(), ctx, head)
    }

    /// After a stream ended. Errors are logged: the client already has its response.
    pub fn stream_complete(&self, ctx: &ContextState, summary: &ffi::StreamSummary) {
        if self.stream_complete.is_empty() {
            return;
        }
        let metadata = ctx.raw_metadata();
        let raw_ctx = ctx.raw(&metadata);
        for hook in &self.stream_complete {
            if hook.slot.is_quarantined() {
                continue;
            }
            let which = ffi::StreamCompleteV1::on_stream_complete;
            if let RErr(e) = hook.invoke(which, false, |cap| cap.on_stream_complete(&raw_ctx, summary)) {
                tracing::warn!(
                    plugin = hook.slot.name(),
                    request_id = ctx.request_id,
                    code = e.code,
                    "stream_complete failed: {}",
                    e.message
                );
            }
        }
    }
}
