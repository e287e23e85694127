//! Typed handles the host calls plugins through. A [`Cap<T>`] pairs one checked capability table
//! with the [`Instance`] it belongs to (which keeps the library loaded), so the host never holds a
//! raw function pointer, an [`InstancePtr`] or a stream state: every call is safe Rust, and none
//! can outlive the code it calls.

use std::sync::Arc;

use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::std_types::{ROption, RResult, RStr};

use super::*;

/// A capability table (plugin → host), as opposed to a service table (host → plugin): ids of the
/// two kinds overlap, so only these may be looked up in a plugin's metadata.
pub trait Capability: Table {}

/// Declares the capability tables this host knows: each gets [`Capability`], and its layout is
/// checked when a library is opened.
macro_rules! capability_tables {
    ($($ty:ty),* $(,)?) => {
        $(impl Capability for $ty {})*

        /// Checks `entry` if it is a table this host knows: its name, or the layout mismatch.
        /// `None` for ids or versions this host does not know.
        fn check_known(entry: &TableEntry) -> Option<Result<&'static str, LayoutError>> {
            $(
                if entry.id == <$ty>::ID && entry.version == <$ty>::VERSION {
                    return Some(
                        check_layout_compatibility(<$ty>::LAYOUT, entry.layout)
                            .map(|()| <$ty>::NAME)
                            .map_err(|errors| LayoutError {
                                table: <$ty>::NAME,
                                detail: summarize_layout_errors(&errors.to_string()),
                            }),
                    );
                }
            )*
            None
        }
    };
}

capability_tables!(
    PreAuthV1,
    AuthV1,
    PostAuthV1,
    RequestInterceptorV1,
    ResponseV1,
    StreamChunkV1,
    StreamCompleteV1,
    DataCollectorV1,
    ConfigProviderV1,
    LifecycleV1,
    BuildV1,
);

/// The capability tables of one library: the ones this host knows, layout-checked, and the ids
/// it does not know (from a newer ABI), which it ignores.
pub struct Capabilities {
    known: Vec<TableEntry>,
    names: Vec<&'static str>,
    unknown: Vec<(u32, u32)>,
}

impl Capabilities {
    pub(crate) fn check(entries: &[TableEntry]) -> Result<Capabilities, LayoutError> {
        let mut caps = Capabilities { known: Vec::new(), names: Vec::new(), unknown: Vec::new() };
        for entry in entries {
            match check_known(entry) {
                Some(Ok(name)) => {
                    caps.known.push(*entry);
                    caps.names.push(name);
                }
                Some(Err(e)) => return Err(e),
                None => caps.unknown.push((entry.id, entry.version)),
            }
        }
        Ok(caps)
    }

    /// Names of the known capabilities, in the plugin's order (`Build` included).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// (id, version) of tables this host does not know.
    pub fn unknown(&self) -> &[(u32, u32)] {
        &self.unknown
    }

    /// The table `T`, valid while the library these entries came from is loaded.
    pub(crate) fn table<T: Capability>(&self) -> Option<&'static T> {
        let entry = self.known.iter().find(|e| e.id == T::ID && e.version == T::VERSION)?;
        // SAFETY: `check` compared this entry's layout with `T`'s; the entry comes from the
        // library's metadata, and every caller keeps that library loaded while it uses the table
        // (`Library` owns these capabilities; `Cap` holds the library through its instance).
        unsafe { entry.get::<T>() }.ok()
    }
}

/// One capability of one plugin instance. Cloning is cheap; the instance (and so the library)
/// stays alive as long as any handle to it does.
pub struct Cap<T: 'static> {
    table: &'static T,
    instance: Arc<Instance>,
}

impl<T> Clone for Cap<T> {
    fn clone(&self) -> Self {
        Cap { table: self.table, instance: self.instance.clone() }
    }
}

impl<T: Capability> Cap<T> {
    pub(crate) fn new(instance: &Arc<Instance>) -> Option<Self> {
        Some(Cap { table: instance.library().capabilities().table::<T>()?, instance: instance.clone() })
    }
}

impl<T> Cap<T> {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    fn ptr(&self) -> InstancePtr {
        self.instance.ptr()
    }
}

impl Cap<PreAuthV1> {
    pub fn on_pre_auth(&self, req: &RawRequest<'_>) -> HookOutcome {
        (self.table.on_pre_auth)(self.ptr(), req)
    }
}

impl Cap<AuthV1> {
    pub fn authenticate(&self, credential: &str, req: &RawRequest<'_>) -> AuthOutcome {
        (self.table.authenticate)(self.ptr(), RStr::from_str(credential), req)
    }

    pub fn app_by_credential(&self, credential: &str) -> RResult<ROption<RecordInfo>, PluginError> {
        (self.table.app_by_credential)(self.ptr(), RStr::from_str(credential))
    }

    pub fn user_by_credential(&self, credential: &str) -> RResult<ROption<RecordInfo>, PluginError> {
        (self.table.user_by_credential)(self.ptr(), RStr::from_str(credential))
    }
}

impl Cap<PostAuthV1> {
    pub fn on_post_auth(&self, req: &RawRequest<'_>) -> HookOutcome {
        (self.table.on_post_auth)(self.ptr(), req)
    }
}

impl Cap<RequestInterceptorV1> {
    pub fn before_selection(&self, req: &RawRequest<'_>) -> HookOutcome {
        (self.table.before_selection)(self.ptr(), req)
    }

    pub fn after_selection(&self, req: &RawRequest<'_>, upstream: &RawUpstream<'_>) -> HookOutcome {
        (self.table.after_selection)(self.ptr(), req, upstream)
    }
}

impl Cap<ResponseV1> {
    pub fn on_headers(&self, ctx: &RawContext<'_>, resp: &RawResponse<'_>) -> HookOutcome {
        (self.table.on_headers)(self.ptr(), ctx, resp)
    }

    pub fn on_body(&self, ctx: &RawContext<'_>, resp: &RawResponse<'_>) -> HookOutcome {
        (self.table.on_body)(self.ptr(), ctx, resp)
    }
}

/// How a stream-chunk plugin answered the start of a stream.
pub enum StreamStarted {
    /// It does not want this stream.
    Skip,
    Observe(Stream),
    Fail(PluginError),
}

impl Cap<StreamChunkV1> {
    /// How much history the plugin wants.
    pub fn history(&self) -> HistoryLimits {
        self.table.history
    }

    pub fn on_stream_start(&self, ctx: &RawContext<'_>, resp: &RawResponse<'_>) -> StreamStarted {
        match (self.table.on_stream_start)(self.ptr(), ctx, resp) {
            StreamStart::Skip => StreamStarted::Skip,
            StreamStart::Observe(state) => StreamStarted::Observe(Stream { cap: self.clone(), state }),
            StreamStart::Fail(e) => StreamStarted::Fail(e),
        }
    }
}

/// One stream a plugin observes. Dropping it ends the stream in the plugin (frees its state),
/// exactly once, also when the client went away.
pub struct Stream {
    cap: Cap<StreamChunkV1>,
    state: StreamState,
}

impl Stream {
    /// Hands the plugin chunk `index`, with the earlier chunks it asked for.
    pub fn on_chunk<B: AsRef<[u8]>>(
        &mut self,
        index: u64,
        data: &[u8],
        history: Option<&ChunkHistory<B>>,
    ) -> ChunkOutcome {
        let history = history.map_or(NO_HISTORY, ChunkHistory::raw);
        let chunk = RawChunk { index, data: data.into(), history };
        (self.cap.table.on_chunk)(self.cap.ptr(), self.state, &chunk)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        (self.cap.table.on_stream_end)(self.cap.ptr(), self.state);
    }
}

impl Cap<StreamCompleteV1> {
    pub fn on_stream_complete(&self, ctx: &RawContext<'_>, summary: &StreamSummary) -> RResult<(), PluginError> {
        (self.table.on_stream_complete)(self.ptr(), ctx, summary)
    }
}

impl Cap<DataCollectorV1> {
    pub fn on_proxy_log(&self, log: &RawProxyLog<'_>) -> RResult<(), PluginError> {
        (self.table.on_proxy_log)(self.ptr(), log)
    }

    pub fn on_analytics(&self, rec: &RawAnalytics<'_>) -> RResult<(), PluginError> {
        (self.table.on_analytics)(self.ptr(), rec)
    }

    pub fn on_budget(&self, rec: &RawBudget<'_>) -> RResult<(), PluginError> {
        (self.table.on_budget)(self.ptr(), rec)
    }
}

impl Cap<LifecycleV1> {
    pub fn on_ready(&self) {
        (self.table.on_ready)(self.ptr())
    }

    pub fn quiesce(&self) {
        (self.table.quiesce)(self.ptr())
    }
}
