//! Opening a plugin library and reading its root module, for the host. The only unsafe step is
//! reading abi_stable's header symbol; everything after it is checked (version, then layout).

use std::path::Path;
use std::sync::Arc;

use abi_stable::library::{LibraryError, RawLibrary, RootModule, abi_header_from_raw_library};
use abi_stable::std_types::{RErr, ROk, RStr};

use super::handle::Capability;
use super::*;

/// Why a file could not be opened as a plugin. The host adds the path and its own wording.
#[derive(Debug)]
pub enum OpenError {
    /// `dlopen` refused the file (not a shared library, wrong architecture, missing symbols).
    NotSharedLibrary(String),
    /// A shared library without our root module.
    NotAPlugin,
    /// Built against another major version of the plugin ABI.
    IncompatibleAbi { expected: String, found: String },
    /// Built with an abi_stable whose own ABI differs from the host's.
    IncompatibleAbiStable(String),
    /// Same version, different types: the root module's layout does not match.
    LayoutMismatch(String),
    /// The plugin's root-module constructor failed or panicked.
    Other(String),
}

/// An open plugin library: its root module and its checked capability tables, valid as long as
/// this value lives. Shared (`Arc`) by the instances made from it and by the event subscriptions
/// those register, so its code stays mapped while anything can still call into it.
pub struct Library {
    root: PluginRootRef,
    abi_version: String,
    capabilities: Capabilities,
    // Dropped last: unmapping the library (best effort, see PRIOR_ART.md) invalidates the rest.
    _raw: RawLibrary,
}

impl Library {
    pub fn open(path: &Path) -> Result<Arc<Library>, OpenError> {
        let raw = RawLibrary::load_at(path).map_err(|e| match e {
            LibraryError::OpenError { err, .. } => OpenError::NotSharedLibrary(err.to_string()),
            other => OpenError::Other(other.to_string()),
        })?;
        // SAFETY: the header is only used while `raw` is alive: `Library` owns both, and the root
        // module and all tables read through it are only reachable through `self`.
        let header = unsafe { abi_header_from_raw_library(&raw) }.map_err(|_| OpenError::NotAPlugin)?;
        let header = header.upgrade().map_err(|e| OpenError::IncompatibleAbiStable(e.to_string()))?;
        let found = header.version_strings().version.as_str().to_owned();
        let root = header.init_root_module::<PluginRootRef>().map_err(|e| match e {
            LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => {
                OpenError::IncompatibleAbi { expected: expected_version.to_string(), found: actual_version.to_string() }
            }
            LibraryError::AbiInstability(e) => OpenError::LayoutMismatch(summarize_layout_errors(&e.to_string())),
            other => OpenError::Other(other.to_string()),
        })?;
        let capabilities = Capabilities::check(root.metadata().capabilities.as_slice())
            .map_err(|e| OpenError::LayoutMismatch(e.to_string()))?;
        Ok(Arc::new(Library { root, abi_version: found, capabilities, _raw: raw }))
    }

    /// The ABI version the plugin was built against.
    pub fn abi_version(&self) -> &str {
        &self.abi_version
    }

    /// The plugin's static facts, borrowed from the library (its own fields are `'static` only
    /// as long as the library is loaded, so they are not handed out as such).
    pub fn metadata(&self) -> Metadata<'_> {
        let m = self.root.metadata();
        Metadata {
            name: m.name.as_str(),
            version: m.version.as_str(),
            author: m.author.as_str(),
            description: m.description.as_str(),
            repository: m.repository.as_str(),
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The JSON Schema of the plugin's config (`ConfigProvider`), if it has one.
    pub fn config_schema(&self) -> Option<&str> {
        let provider = self.capabilities.table::<ConfigProviderV1>()?;
        Some((provider.schema)().as_str())
    }

    /// How the plugin handles panics ([`panic_strategy`]); `None` for plugins built before ABI 1.3,
    /// which do not say.
    pub fn panic_strategy(&self) -> Option<u8> {
        self.capabilities.table::<BuildV1>().map(|b| b.panic)
    }

    /// Creates an instance with `services` as its host. The instance shuts down (the plugin's
    /// `shutdown`, exactly once) when the last handle to it is dropped. If the plugin fails to
    /// initialise, whatever it registered with the host meanwhile is ended before this returns.
    pub fn instantiate<S: HostServices>(
        self: &Arc<Self>,
        config_json: &str,
        services: Arc<S>,
    ) -> Result<Arc<Instance>, PluginError> {
        let ctx = HostCtx::new(services, Some(Arc::downgrade(self)));
        if self.panic_strategy().is_none() {
            // Built before ABI 1.3: its SDK does not count the `Host` values it keeps, so one it
            // keeps past shutdown would point at freed memory. Keep the context alive for good
            // (a few hundred bytes per instance of such a plugin); calls through it then get
            // "shut down" errors like any other.
            std::mem::forget(ctx.clone());
        }
        match (self.root.create())(RStr::from_str(config_json), host_handle(&ctx)) {
            ROk(ptr) => Ok(Arc::new(Instance { ptr, ctx, library: self.clone() })),
            RErr(e) => {
                ctx.end();
                ctx.close();
                Err(e)
            }
        }
    }
}

/// A plugin's static facts, borrowed from its [`Library`].
#[derive(Debug, Clone, Copy)]
pub struct Metadata<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub author: &'a str,
    pub description: &'a str,
    pub repository: &'a str,
}

/// What [`Instance`] needs of its host context, whatever the services' type.
pub(crate) trait Ctx: Send + Sync {
    /// Ends what the instance holds in the host (event subscriptions): no callback into the
    /// plugin can start once this returns; one already running may finish (the host waits for
    /// it a bounded time, and its `Subscriber` keeps the library mapped).
    fn end(&self);
    /// Every later service call from the plugin gets an error.
    fn close(&self);
}

/// One initialised plugin instance. Dropping the last `Arc` ends its subscriptions, runs the
/// plugin's shutdown exactly once, then closes its host handle; the library stays loaded until
/// the instance (and every subscription it made) is gone.
pub struct Instance {
    ptr: InstancePtr,
    ctx: Arc<dyn Ctx>,
    library: Arc<Library>,
}

impl Instance {
    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }

    pub(crate) fn ptr(&self) -> InstancePtr {
        self.ptr
    }

    /// The capability `T` of this instance, if the plugin has it.
    pub fn cap<T: Capability>(self: &Arc<Self>) -> Option<Cap<T>> {
        Cap::new(self)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.ctx.end();
        (self.library.root.destroy())(self.ptr);
        self.ctx.close();
    }
}

/// The ABI version this host speaks, as abi_stable checks it.
pub fn host_abi_version() -> String {
    PluginRootRef::VERSION_STRINGS.version.as_str().to_owned()
}
