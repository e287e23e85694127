//! Opening a plugin library and reading its root module, for the host. The only unsafe step is
//! reading abi_stable's header symbol; everything after it is checked (version, then layout).

use std::path::Path;

use abi_stable::library::{LibraryError, RawLibrary, RootModule, abi_header_from_raw_library};
use abi_stable::std_types::{RErr, ROk, RStr};

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

/// An open plugin library: its root module, valid as long as this value lives.
pub struct Library {
    root: PluginRootRef,
    abi_version: String,
    // Dropped last: unmapping the library (best effort, see PRIOR_ART.md) invalidates `root`.
    _raw: RawLibrary,
}

impl Library {
    pub fn open(path: &Path) -> Result<Library, OpenError> {
        let raw = RawLibrary::load_at(path).map_err(|e| match e {
            LibraryError::OpenError { err, .. } => OpenError::NotSharedLibrary(err.to_string()),
            other => OpenError::Other(other.to_string()),
        })?;
        // SAFETY: the header is only used while `raw` is alive: `Library` owns both, and the root
        // module and all tables read through it are handed out borrowing `self`.
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
        Ok(Library { root, abi_version: found, _raw: raw })
    }

    /// The ABI version the plugin was built against.
    pub fn abi_version(&self) -> &str {
        &self.abi_version
    }

    pub fn metadata(&self) -> &PluginMetadata {
        self.root.metadata()
    }

    /// Creates an instance. The host must keep whatever `host.ctx` points to alive until
    /// [`Library::destroy`] has returned for it.
    pub fn create(&self, config_json: &str, host: HostHandle) -> Result<InstancePtr, PluginError> {
        match (self.root.create())(RStr::from_str(config_json), host) {
            ROk(instance) => Ok(instance),
            RErr(e) => Err(e),
        }
    }

    /// Shuts the instance down and frees it. Must be called exactly once per created instance.
    pub fn destroy(&self, instance: InstancePtr) {
        (self.root.destroy())(instance)
    }
}

/// The ABI version this host speaks, as abi_stable checks it.
pub fn host_abi_version() -> String {
    PluginRootRef::VERSION_STRINGS.version.as_str().to_owned()
}
