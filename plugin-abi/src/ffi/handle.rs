//! Typed handles the host calls plugins through. A [`Cap<T>`] pairs one checked capability table
//! with the [`Instance`] it belongs to (which keeps the library loaded), so the host never holds a
//! raw function pointer, an [`InstancePtr`] or a stream state: every call is safe Rust, and none
//! can outlive the code it calls.

use std::sync::Arc;

use super::*;

/// A capability table (plugin → host), as opposed to a service table (host → plugin): ids of the
/// two kinds overlap, so only these may be looked up in a plugin's metadata. Implemented by
/// [`capabilities!`](super::define) for every capability this host knows.
pub trait Capability: Table {
    /// The names of its hooks, in table order: the host counts metrics under them.
    const HOOKS: &'static [&'static str];
}

/// The capability tables of one library: the ones this host knows, layout-checked, and the ids
/// it does not know (from a newer ABI), which it ignores.
pub struct Capabilities {
    known: Vec<TableEntry>,
    names: Vec<&'static str>,
    unknown: Vec<(u32, u32)>,
}

/// A capability the plugin requires and this host does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingCapability {
    pub name: String,
    pub id: u32,
    /// The version the plugin requires.
    pub version: u32,
    /// The version of the same capability this host knows, if any.
    pub host_version: Option<u32>,
}

impl std::fmt::Display for MissingCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.name.is_empty() { format!("id {}", self.id) } else { format!("`{}`", self.name) };
        match self.host_version {
            Some(have) => write!(
                f,
                "it requires capability {name} version {}, and this gateway knows version {have} of it only",
                self.version
            ),
            None => write!(
                f,
                "it requires capability {name} version {} (id {}), which this gateway does not know",
                self.version, self.id
            ),
        }
    }
}

impl Capabilities {
    /// Names of the capabilities the plugin marked required.
    pub fn required(&self) -> Vec<String> {
        self.table::<RequirementsV1>()
            .map(|r| r.required.iter().map(|t| t.name.as_str().to_owned()).collect())
            .unwrap_or_default()
    }

    /// Capabilities the plugin marked required that this host lacks.
    pub fn missing(&self) -> Vec<MissingCapability> {
        let Some(requirements) = self.table::<RequirementsV1>() else { return Vec::new() };
        requirements
            .required
            .iter()
            .filter(|r| !self.known.iter().any(|e| e.id == r.id && e.version == r.version))
            .map(|r| MissingCapability {
                name: r.name.as_str().to_owned(),
                id: r.id,
                version: r.version,
                host_version: super::capabilities::known_name(r.id).map(|(_, v)| v),
            })
            .collect()
    }

    pub(crate) fn check(entries: &[TableEntry]) -> Result<Capabilities, LayoutError> {
        let mut caps = Capabilities { known: Vec::new(), names: Vec::new(), unknown: Vec::new() };
        for entry in entries {
            match super::capabilities::check_known(entry) {
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

    pub(crate) fn table(&self) -> &'static T {
        self.table
    }

    pub(crate) fn ptr(&self) -> InstancePtr {
        self.instance.ptr()
    }
}

impl Cap<UiV1> {
    /// The plugin's UI manifest, borrowed from its library (alive while `self` is).
    pub fn manifest(&self) -> &UiManifest {
        &self.table.manifest
    }

    /// The plugin's UI files, borrowed from its library.
    pub fn assets(&self) -> &[UiAsset] {
        self.table.assets.as_slice()
    }
}

impl Cap<CommandsV1> {
    /// The plugin's commands, borrowed from its library (alive while `self` is).
    pub fn commands(&self) -> &[CommandSpec] {
        self.table.commands.as_slice()
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

    /// Asks the plugin whether it wants this stream (its `on_stream_start` hook).
    pub fn start_stream(&self, ctx: &RawContext<'_>, resp: &RawResponse<'_>) -> StreamStarted {
        match self.on_stream_start(ctx, resp) {
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
        self.cap.on_chunk(self.state, &chunk)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cap.on_stream_end(self.state);
    }
}
