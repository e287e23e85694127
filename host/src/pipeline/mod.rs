//! The ordered phases of one request, run over one immutable snapshot of the loaded plugins.
//!
//! Every hook runs inline on the tokio worker that serves the request (a hop to another thread
//! costs ~14 µs, more than a whole pipeline), except for plugins configured with
//! `isolate = true`, whose hooks run under `block_in_place` so that a hook that blocks moves
//! the worker's other tasks elsewhere. Data collectors always run on the collector thread.

mod request;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use abi_stable::std_types::{RErr, ROk, RResult, RSome};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use plugin_abi::ffi::{self, AuthOutcome, Cap, HookOutcome, PluginError, RawHeader, RawResponse, RawUpstream};

use crate::config::FailMode;
use crate::error::ApiError;
use crate::metrics::{HookMetrics, Metrics};
use crate::plugin::LoadedPlugin;
pub use request::{ContextState, RequestState};
use request::{apply_headers, give_back, raw_headers, recycle, reply_parts, scratch};
pub use stream::StreamFilters;

/// One loaded plugin as the pipeline runs it: failure policy, panic count, quarantine.
pub struct Slot {
    pub plugin: Arc<LoadedPlugin>,
    pub on_error: FailMode,
    pub isolate: bool,
    quarantine_after: u32,
    panics: AtomicU32,
    quarantined: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Slot {
    pub fn new(plugin: Arc<LoadedPlugin>, isolate: bool, metrics: Arc<Metrics>) -> Self {
        Slot {
            on_error: plugin.on_error,
            quarantine_after: plugin.quarantine_after,
            plugin,
            isolate,
            panics: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Relaxed)
    }

    fn on_panic(&self) {
        let panics = self.panics.fetch_add(1, Relaxed) + 1;
        if self.quarantine_after > 0 && panics >= self.quarantine_after && !self.quarantined.swap(true, Relaxed) {
            self.metrics.quarantined.fetch_add(1, Relaxed);
            tracing::error!(
                plugin = self.name(),
                panics,
                "plugin quarantined after repeated panics: it is no longer called until it is reloaded"
            );
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

/// One plugin's handle for one capability, with a metrics handle per hook of that capability.
pub struct Hook<T: 'static> {
    pub cap: Cap<T>,
    pub slot: Arc<Slot>,
    metrics: [(&'static str, Arc<HookMetrics>); 2],
}

impl<T> Hook<T> {
    fn new(cap: Cap<T>, slot: &Arc<Slot>, names: [&'static str; 2]) -> Self {
        let m = |n| (n, slot.metrics.hook(slot.name(), n));
        Hook { cap, slot: slot.clone(), metrics: [m(names[0]), m(names[1])] }
    }

    /// Calls hook `which` (0 or 1) with accounting: metrics, a trace span, panic counting.
    fn invoke<R: Outcome>(&self, which: usize, f: impl FnOnce(&Cap<T>) -> R) -> R {
        let (name, m) = &self.metrics[which];
        let span =
            tracing::trace_span!("hook", plugin = self.slot.name(), hook = *name, outcome = tracing::field::Empty);
        let _entered = span.enter();
        m.calls.fetch_add(1, Relaxed);
        let started = quanta::Instant::now();
        let r = if self.slot.isolate && can_block_in_place() {
            tokio::task::block_in_place(|| f(&self.cap))
        } else {
            f(&self.cap)
        };
        m.latency.observe(quanta::Instant::now() - started);
        span.record("outcome", r.label());
        if let Some(e) = r.error() {
            m.errors.fetch_add(1, Relaxed);
            if e.code == ffi::code::PANIC {
                m.panics.fetch_add(1, Relaxed);
                self.slot.on_panic();
            }
        }
        r
    }

    /// A failed hook under the plugin's failure policy: `None` to go on without it (fail-open),
    /// or the error the client gets (fail-closed).
    fn fail(&self, which: usize, e: &PluginError) -> Option<ApiError> {
        let (hook, plugin) = (self.metrics[which].0, self.slot.name());
        match self.slot.on_error {
            FailMode::FailOpen => {
                tracing::warn!(plugin, hook, code = e.code, "plugin failed, skipped (fail-open): {}", e.message);
                None
            }
            FailMode::FailClosed => {
                tracing::error!(
                    plugin,
                    hook,
                    code = e.code,
                    "plugin failed, request refused (fail-closed): {}",
                    e.message
                );
                Some(ApiError::plugin_failed(plugin, hook, e.code, &e.message))
            }
        }
    }

    /// `Some(true)` to skip this quarantined plugin, `Err` to fail the request, `None` to call it.
    fn quarantine_check(&self) -> Result<bool, ApiError> {
        if !self.slot.is_quarantined() {
            return Ok(false);
        }
        match self.slot.on_error {
            FailMode::FailOpen => Ok(true),
            FailMode::FailClosed => Err(ApiError::plugin_quarantined(self.slot.name())),
        }
    }
}

fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
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
    fn from_reply(reply: ffi::Reply, plugin: &str) -> Result<Self, ApiError> {
        let (status, headers, body) =
            reply_parts(reply).map_err(|e| ApiError::plugin_failed(plugin, "respond", ffi::code::INTERNAL, &e))?;
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

/// The plugins of one configuration, by capability, in run order. Immutable: a reload builds a
/// new one, and every request runs on the one it started with.
#[derive(Default)]
pub struct Pipeline {
    pub slots: Vec<Arc<Slot>>,
    pre_auth: Vec<Hook<ffi::PreAuthV1>>,
    auth: Vec<Hook<ffi::AuthV1>>,
    post_auth: Vec<Hook<ffi::PostAuthV1>>,
    interceptors: Vec<Hook<ffi::RequestInterceptorV1>>,
    response: Vec<Hook<ffi::ResponseV1>>,
    stream_chunk: Vec<Hook<ffi::StreamChunkV1>>,
    stream_complete: Vec<Hook<ffi::StreamCompleteV1>>,
    collectors: Vec<Hook<ffi::DataCollectorV1>>,
}

/// A request hook: the capability's call for the request view.
type RequestCall<T> = fn(&Cap<T>, &ffi::RawRequest<'_>, Option<&RawUpstream<'_>>) -> HookOutcome;

impl Pipeline {
    /// `slots` in run order.
    pub fn new(slots: Vec<Arc<Slot>>) -> Self {
        let mut p = Pipeline::default();
        for slot in &slots {
            let plugin = &slot.plugin;
            if let Some(c) = plugin.cap() {
                p.pre_auth.push(Hook::new(c, slot, ["pre_auth", "pre_auth"]));
            }
            if let Some(c) = plugin.cap() {
                p.auth.push(Hook::new(c, slot, ["auth", "auth_lookup"]));
            }
            if let Some(c) = plugin.cap() {
                p.post_auth.push(Hook::new(c, slot, ["post_auth", "post_auth"]));
            }
            if let Some(c) = plugin.cap() {
                p.interceptors.push(Hook::new(c, slot, ["before_selection", "after_selection"]));
            }
            if let Some(c) = plugin.cap() {
                p.response.push(Hook::new(c, slot, ["response_headers", "response_body"]));
            }
            if let Some(c) = plugin.cap() {
                p.stream_chunk.push(Hook::new(c, slot, ["stream_start", "stream_chunk"]));
            }
            if let Some(c) = plugin.cap() {
                p.stream_complete.push(Hook::new(c, slot, ["stream_complete", "stream_complete"]));
            }
            if let Some(c) = plugin.cap() {
                p.collectors.push(Hook::new(c, slot, ["collector", "collector"]));
            }
        }
        p.slots = slots;
        p
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
                let mut found = None;
                for (i, hook) in hooks.iter().enumerate().skip(next) {
                    if hook.quarantine_check()? {
                        continue;
                    }
                    match hook.invoke(which, |cap| call(cap, &raw, upstream)) {
                        HookOutcome::Continue => {}
                        other => {
                            found = Some((i, other));
                            break;
                        }
                    }
                }
                buf = recycle(headers);
                found
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
                        if let Some(err) = hook.fail(which, &e) {
                            return Err(Stop::Error(err));
                        }
                    }
                }
                HookOutcome::Respond(reply) => {
                    return Err(Stop::Respond(ResponseState::from_reply(reply, hook.slot.name())?));
                }
                HookOutcome::Fail(e) => {
                    if let Some(err) = hook.fail(which, &e) {
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
        Self::run_request(&self.pre_auth, 0, req, None, |c, r, _| c.on_pre_auth(r))
    }

    pub fn post_auth(&self, req: &mut RequestState) -> Result<(), Stop> {
        Self::run_request(&self.post_auth, 0, req, None, |c, r, _| c.on_post_auth(r))
    }

    pub fn before_selection(&self, req: &mut RequestState) -> Result<(), Stop> {
        Self::run_request(&self.interceptors, 0, req, None, |c, r, _| c.before_selection(r))
    }

    pub fn after_selection(&self, req: &mut RequestState, upstream: &RawUpstream<'_>) -> Result<(), Stop> {
        Self::run_request(&self.interceptors, 1, req, Some(upstream), |c, r, u| {
            c.after_selection(r, u.expect("after_selection always has an upstream"))
        })
    }

    /// Auth plugins in order until one decides; all passing (or none present) is a 401.
    pub fn auth(&self, req: &mut RequestState, credential: &str) -> Result<(), Stop> {
        let decided = {
            let metadata = req.ctx.raw_metadata();
            let headers = raw_headers(&req.headers, scratch());
            let raw = req.raw(&headers, &metadata);
            let mut decided = None;
            for hook in &self.auth {
                if hook.quarantine_check()? {
                    continue;
                }
                match hook.invoke(0, |cap| cap.authenticate(credential, &raw)) {
                    AuthOutcome::Pass => {}
                    AuthOutcome::Fail(e) => match hook.fail(0, &e) {
                        Some(err) => return Err(Stop::Error(err)),
                        None => continue,
                    },
                    other => {
                        decided = Some(other);
                        break;
                    }
                }
            }
            give_back(headers);
            decided
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

    /// The app owning `credential`, from the first auth plugin that knows it.
    pub fn app_by_credential(&self, credential: &str) -> Result<Option<(String, String)>, ApiError> {
        for hook in &self.auth {
            if hook.quarantine_check()? {
                continue;
            }
            match hook.invoke(1, |cap| cap.app_by_credential(credential)) {
                ROk(RSome(app)) => return Ok(Some((app.id.into_string(), app.name.into_string()))),
                ROk(_) => {}
                RErr(e) => {
                    if let Some(err) = hook.fail(1, &e) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(None)
    }

    /// The headers phase: every Response plugin, in order, over status and headers.
    pub fn response_headers(&self, ctx: &ContextState, resp: &mut ResponseState) -> Result<(), ApiError> {
        self.run_response(0, ctx, resp, |cap, c, r| cap.on_headers(c, r))
    }

    /// The body phase of a non-streaming upstream response.
    pub fn response_body(&self, ctx: &ContextState, resp: &mut ResponseState) -> Result<(), ApiError> {
        self.run_response(1, ctx, resp, |cap, c, r| cap.on_body(c, r))
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
            if hook.quarantine_check()? {
                continue;
            }
            let outcome = {
                let headers = raw_headers(&resp.headers, recycle(std::mem::take(&mut buf)));
                let raw = resp.raw(&headers, which == 1);
                let outcome = hook.invoke(which, |cap| call(cap, &raw_ctx, &raw));
                buf = recycle(headers);
                outcome
            };
            match outcome {
                HookOutcome::Continue => {}
                HookOutcome::Modify(m) => {
                    if let Err(e) = resp.apply(m) {
                        let e = PluginError { code: ffi::code::INTERNAL, message: e.into() };
                        if let Some(err) = hook.fail(which, &e) {
                            return Err(err);
                        }
                    }
                }
                HookOutcome::Respond(reply) => {
                    *resp = ResponseState::from_reply(reply, hook.slot.name())?;
                    return Ok(());
                }
                HookOutcome::Fail(e) => {
                    if let Some(err) = hook.fail(which, &e) {
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
            if let RErr(e) = hook.invoke(0, |cap| cap.on_stream_complete(&raw_ctx, summary)) {
                tracing::warn!(plugin = hook.slot.name(), code = e.code, "stream_complete failed: {}", e.message);
            }
        }
    }

    /// Hands one finished request to every data collector. Runs on the collector thread.
    pub fn collect(&self, rec: &crate::collector::Record) {
        for hook in &self.collectors {
            if hook.slot.is_quarantined() {
                continue;
            }
            let log = rec.raw_proxy_log();
            let mut failed = hook.invoke(0, |cap| cap.on_proxy_log(&log)).into_result().err();
            if let Some(analytics) = rec.raw_analytics() {
                failed = failed.or(hook.invoke(0, |cap| cap.on_analytics(&analytics)).into_result().err());
            }
            if let Some(budget) = rec.raw_budget() {
                failed = failed.or(hook.invoke(0, |cap| cap.on_budget(&budget)).into_result().err());
            }
            if let Some(e) = failed {
                hook.slot.metrics.collector_errors.fetch_add(1, Relaxed);
                tracing::warn!(plugin = hook.slot.name(), code = e.code, "data collector failed: {}", e.message);
            }
        }
    }
}
