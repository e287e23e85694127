//! Loading plugin libraries: private copies, ABI and layout checks, config validation, initialize.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use plugin_abi::ffi::{self, InstancePtr, Library, OpenError, Table, TableEntry};
use sha2::{Digest, Sha256};

use crate::config::{FailMode, PluginConfig};
use crate::services::{PluginServices, Services};

/// Why a plugin could not be loaded. Every variant names the file or plugin, what was expected
/// and what was found.
#[derive(Debug)]
pub enum LoadError {
    FileMissing { path: PathBuf },
    NotSharedLibrary { path: PathBuf, detail: String },
    NotAPlugin { path: PathBuf },
    IncompatibleAbi { path: PathBuf, expected: String, found: String },
    LayoutMismatch { path: PathBuf, detail: String },
    DuplicateName { name: String, path: PathBuf, first: PathBuf },
    InvalidSchema { name: String, detail: String },
    ConfigRejected { name: String, field: String, rule: String },
    InitializeFailed { name: String, code: u32, message: String },
    Copy { path: PathBuf, source: std::io::Error },
    Other { path: PathBuf, detail: String },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::FileMissing { path } => {
                write!(f, "plugin file {} not found: expected a plugin shared library at that path", path.display())
            }
            LoadError::NotSharedLibrary { path, detail } => write!(
                f,
                "{} is not a loadable shared library: expected an ELF .so built as a cdylib, the loader said: {detail}",
                path.display()
            ),
            LoadError::NotAPlugin { path } => write!(
                f,
                "{} is a shared library but not a gateway plugin: expected the root module that \
                 #[derive(plugin_abi::Plugin)] exports, found none",
                path.display()
            ),
            LoadError::IncompatibleAbi { path, expected, found } => write!(
                f,
                "{} was built against plugin ABI {found}, but this gateway speaks plugin ABI {expected}: \
                 rebuild the plugin against a plugin-abi with the same major version",
                path.display()
            ),
            LoadError::LayoutMismatch { path, detail } => write!(
                f,
                "{} has a plugin ABI layout that does not match this gateway's (same version, different types): {detail}",
                path.display()
            ),
            LoadError::DuplicateName { name, path, first } => write!(
                f,
                "plugin name `{name}` from {} is already taken by {}: expected each plugin name once",
                path.display(),
                first.display()
            ),
            LoadError::InvalidSchema { name, detail } => {
                write!(f, "plugin `{name}` declares a config schema that is not valid JSON Schema: {detail}")
            }
            LoadError::ConfigRejected { name, field, rule } => {
                write!(f, "config for plugin `{name}` rejected at `{field}`: {rule}")
            }
            LoadError::InitializeFailed { name, code, message } => {
                write!(f, "plugin `{name}` failed to initialize: {message} (code {code})")
            }
            LoadError::Copy { path, source } => {
                write!(f, "cannot make a private copy of {}: {source}", path.display())
            }
            LoadError::Other { path, detail } => {
                write!(f, "cannot load {}: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Copy { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The capability tables a plugin offers, checked against this host's layouts.
///
/// The references are valid as long as the [`Library`] they came from; [`LoadedPlugin`] keeps
/// both together and never hands a table out on its own.
#[derive(Default, Clone, Copy)]
pub struct Capabilities {
    pub pre_auth: Option<&'static ffi::PreAuthV1>,
    pub auth: Option<&'static ffi::AuthV1>,
    pub post_auth: Option<&'static ffi::PostAuthV1>,
    pub request_interceptor: Option<&'static ffi::RequestInterceptorV1>,
    pub response: Option<&'static ffi::ResponseV1>,
    pub stream_chunk: Option<&'static ffi::StreamChunkV1>,
    pub stream_complete: Option<&'static ffi::StreamCompleteV1>,
    pub data_collector: Option<&'static ffi::DataCollectorV1>,
    pub config_provider: Option<&'static ffi::ConfigProviderV1>,
    pub lifecycle: Option<&'static ffi::LifecycleV1>,
}

impl Capabilities {
    /// Reads every entry this host knows; unknown ids (from a newer plugin ABI) are skipped.
    fn read(entries: &[TableEntry], path: &Path) -> Result<(Self, Vec<String>), LoadError> {
        fn set<T: Table>(slot: &mut Option<&'static T>, entry: &TableEntry, path: &Path) -> Result<(), LoadError> {
            let table =
                entry.get::<T>().map_err(|e| LoadError::LayoutMismatch { path: path.into(), detail: e.to_string() })?;
            *slot = Some(table);
            Ok(())
        }
        let mut caps = Capabilities::default();
        let mut names = Vec::new();
        for entry in entries {
            let name = match (entry.id, entry.version) {
                (ffi::cap::PRE_AUTH, 1) => set(&mut caps.pre_auth, entry, path).map(|()| ffi::PreAuthV1::NAME),
                (ffi::cap::AUTH, 1) => set(&mut caps.auth, entry, path).map(|()| ffi::AuthV1::NAME),
                (ffi::cap::POST_AUTH, 1) => set(&mut caps.post_auth, entry, path).map(|()| ffi::PostAuthV1::NAME),
                (ffi::cap::REQUEST_INTERCEPTOR, 1) => {
                    set(&mut caps.request_interceptor, entry, path).map(|()| ffi::RequestInterceptorV1::NAME)
                }
                (ffi::cap::RESPONSE, 1) => set(&mut caps.response, entry, path).map(|()| ffi::ResponseV1::NAME),
                (ffi::cap::STREAM_CHUNK, 1) => {
                    set(&mut caps.stream_chunk, entry, path).map(|()| ffi::StreamChunkV1::NAME)
                }
                (ffi::cap::STREAM_COMPLETE, 1) => {
                    set(&mut caps.stream_complete, entry, path).map(|()| ffi::StreamCompleteV1::NAME)
                }
                (ffi::cap::DATA_COLLECTOR, 1) => {
                    set(&mut caps.data_collector, entry, path).map(|()| ffi::DataCollectorV1::NAME)
                }
                (ffi::cap::CONFIG_PROVIDER, 1) => {
                    set(&mut caps.config_provider, entry, path).map(|()| ffi::ConfigProviderV1::NAME)
                }
                (ffi::cap::LIFECYCLE, 1) => set(&mut caps.lifecycle, entry, path).map(|()| ffi::LifecycleV1::NAME),
                (id, version) => {
                    tracing::warn!(
                        path = %path.display(),
                        id,
                        version,
                        "plugin offers a capability this gateway does not know; ignoring it"
                    );
                    continue;
                }
            }?;
            names.push(name.to_owned());
        }
        Ok((caps, names))
    }
}

/// What `gateway check` prints and `/admin/plugins` will list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub author: String,
    pub description: String,
    pub repository: String,
    pub abi_version: String,
    pub capabilities: Vec<String>,
    pub config_schema: Option<serde_json::Value>,
}

/// A library opened and checked, not yet initialised.
pub struct Inspected {
    pub info: PluginInfo,
    caps: Capabilities,
    library: Library,
}

fn open_error(path: &Path, e: OpenError) -> LoadError {
    let path = path.to_path_buf();
    match e {
        OpenError::NotSharedLibrary(detail) => LoadError::NotSharedLibrary { path, detail },
        OpenError::NotAPlugin => LoadError::NotAPlugin { path },
        OpenError::IncompatibleAbi { expected, found } => LoadError::IncompatibleAbi { path, expected, found },
        OpenError::IncompatibleAbiStable(detail) => LoadError::IncompatibleAbi {
            path,
            expected: format!("plugin ABI {} (abi_stable 0.11)", ffi::host_abi_version()),
            found: detail,
        },
        OpenError::LayoutMismatch(detail) => LoadError::LayoutMismatch { path, detail },
        OpenError::Other(detail) => LoadError::Other { path, detail },
    }
}

/// Opens `path` and checks ABI version, layouts and schema without initialising the plugin.
pub fn inspect(path: &Path) -> Result<Inspected, LoadError> {
    if !path.is_file() {
        return Err(LoadError::FileMissing { path: path.into() });
    }
    let library = Library::open(path).map_err(|e| open_error(path, e))?;
    let meta = library.metadata();
    let (caps, capabilities) = Capabilities::read(meta.capabilities.as_slice(), path)?;
    let name = meta.name.as_str().to_owned();
    let config_schema = match caps.config_provider {
        None => None,
        Some(provider) => Some(
            serde_json::from_str::<serde_json::Value>((provider.schema)().as_str())
                .map_err(|e| LoadError::InvalidSchema { name: name.clone(), detail: e.to_string() })?,
        ),
    };
    let info = PluginInfo {
        name,
        version: meta.version.as_str().into(),
        author: meta.author.as_str().into(),
        description: meta.description.as_str().into(),
        repository: meta.repository.as_str().into(),
        abi_version: library.abi_version().into(),
        capabilities,
        config_schema,
    };
    Ok(Inspected { info, caps, library })
}

/// Checks `config` against the plugin's schema, naming the first failing field and rule.
fn validate_config(info: &PluginInfo, config: &serde_json::Value) -> Result<(), LoadError> {
    let Some(schema) = &info.config_schema else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| LoadError::InvalidSchema { name: info.name.clone(), detail: e.to_string() })?;
    if let Some(error) = validator.iter_errors(config).next() {
        let pointer = error.instance_path.to_string();
        let field =
            if pointer.is_empty() { "(root)".to_owned() } else { pointer.trim_start_matches('/').replace('/', ".") };
        return Err(LoadError::ConfigRejected { name: info.name.clone(), field, rule: error.to_string() });
    }
    Ok(())
}

/// Copies `path` into `dir` under a name derived from its content, so that the file an operator
/// edits is never the one mapped (overwriting a mapped file crashes the process).
fn private_copy(path: &Path, dir: &Path) -> Result<(PathBuf, String), LoadError> {
    let copy_err = |source| LoadError::Copy { path: path.into(), source };
    let bytes = std::fs::read(path).map_err(copy_err)?;
    let hash = format!("{:x}", Sha256::digest(&bytes));
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
    let target = dir.join(format!("{stem}-{}.so", &hash[..16]));
    if !target.is_file() {
        std::fs::create_dir_all(dir).map_err(copy_err)?;
        let tmp = dir.join(format!(".{stem}-{}.{}.tmp", &hash[..16], std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(copy_err)?;
        std::fs::rename(&tmp, &target).map_err(copy_err)?;
    }
    Ok((target, hash))
}

/// One initialised plugin instance together with the library that holds its code.
pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub source_path: PathBuf,
    pub private_path: PathBuf,
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub on_error: FailMode,
    pub quarantine_after: u32,
    caps: Capabilities,
    instance: InstancePtr,
    // Kept alive until the instance is destroyed: the plugin holds a pointer to it.
    services: Arc<PluginServices>,
    library: Library,
}

impl LoadedPlugin {
    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn instance(&self) -> InstancePtr {
        self.instance
    }

    /// Tells the plugin every plugin is initialised (Lifecycle capability).
    pub fn ready(&self) {
        if let Some(lifecycle) = self.caps.lifecycle {
            (lifecycle.on_ready)(self.instance);
        }
    }

    /// Tells the plugin a newer version is taking over (Lifecycle capability).
    pub fn quiesce(&self) {
        if let Some(lifecycle) = self.caps.lifecycle {
            (lifecycle.quiesce)(self.instance);
        }
    }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        // Subscriptions end first (no callback runs or is referenced after this), then shutdown
        // runs exactly once; fields (services, then the library) drop after it.
        self.services.end();
        self.library.destroy(self.instance);
    }
}

/// Loads one configured plugin: private copy, checks, schema validation, initialize.
/// `taken` lists (name, source path) of plugins already loaded, for the duplicate-name check.
pub fn load(
    config: &PluginConfig,
    copies_dir: &Path,
    taken: &[(String, PathBuf)],
    shared: &Arc<Services>,
) -> Result<LoadedPlugin, LoadError> {
    if !config.path.is_file() {
        return Err(LoadError::FileMissing { path: config.path.clone() });
    }
    let (private_path, sha256) = private_copy(&config.path, copies_dir)?;
    let inspected = inspect(&private_path).map_err(|e| with_source_path(e, &private_path, &config.path))?;
    let info = inspected.info;
    if let Some((_, first)) = taken.iter().find(|(n, _)| *n == info.name) {
        return Err(LoadError::DuplicateName { name: info.name, path: config.path.clone(), first: first.clone() });
    }
    let config_json = serde_json::to_value(&config.config).map_err(|e| LoadError::ConfigRejected {
        name: info.name.clone(),
        field: "(root)".into(),
        rule: e.to_string(),
    })?;
    validate_config(&info, &config_json)?;
    let services = PluginServices::new(&info.name, &info.version, shared);
    let instance = inspected.library.create(&config_json.to_string(), ffi::host_handle(&services)).map_err(|e| {
        LoadError::InitializeFailed { name: info.name.clone(), code: e.code, message: e.message.into() }
    })?;
    tracing::info!(plugin = %info.name, version = %info.version, abi = %info.abi_version, path = %config.path.display(), "plugin loaded");
    Ok(LoadedPlugin {
        info,
        source_path: config.path.clone(),
        private_path,
        sha256,
        loaded_at: SystemTime::now(),
        on_error: config.on_error,
        quarantine_after: config.quarantine_after,
        caps: inspected.caps,
        instance,
        services,
        library: inspected.library,
    })
}

/// Errors about the private copy are reported against the operator's file.
fn with_source_path(e: LoadError, private: &Path, source: &Path) -> LoadError {
    let fix = |p: PathBuf| {
        if p == private { source.to_path_buf() } else { p }
    };
    match e {
        LoadError::FileMissing { path } => LoadError::FileMissing { path: fix(path) },
        LoadError::NotSharedLibrary { path, detail } => LoadError::NotSharedLibrary {
            path: fix(path),
            detail: detail.replace(&private.display().to_string(), &source.display().to_string()),
        },
        LoadError::NotAPlugin { path } => LoadError::NotAPlugin { path: fix(path) },
        LoadError::IncompatibleAbi { path, expected, found } => {
            LoadError::IncompatibleAbi { path: fix(path), expected, found }
        }
        LoadError::LayoutMismatch { path, detail } => LoadError::LayoutMismatch { path: fix(path), detail },
        LoadError::Other { path, detail } => LoadError::Other { path: fix(path), detail },
        other => other,
    }
}

/// Loads every enabled plugin in order. Stops at the first failure: a gateway that starts
/// without a configured plugin (an auth plugin, say) would serve requests it must not.
pub fn load_all(
    configs: &[&PluginConfig],
    copies_dir: &Path,
    shared: &Arc<Services>,
) -> Result<Vec<Arc<LoadedPlugin>>, LoadError> {
    let mut loaded: Vec<Arc<LoadedPlugin>> = Vec::new();
    let mut taken: Vec<(String, PathBuf)> = Vec::new();
    for config in configs {
        let plugin = load(config, copies_dir, &taken, shared)?;
        taken.push((plugin.info.name.clone(), plugin.source_path.clone()));
        loaded.push(Arc::new(plugin));
    }
    Ok(loaded)
}
