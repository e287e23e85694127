//! Loading plugin libraries: private copies, ABI and layout checks, config validation, initialize.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use plugin_abi::ffi::{self, Cap, Capability, Instance, Library, OpenError, Table};
use sha2::{Digest, Sha256};

use crate::config::{FailMode, PluginConfig, QuarantinePolicy};
use crate::services::{PluginServices, Services};

pub use plugin_abi::ffi::host_abi_version;

/// Why a plugin could not be loaded. Every variant names the file or plugin, what was expected
/// and what was found.
#[derive(Debug)]
pub enum LoadError {
    FileMissing { path: PathBuf },
    NotSharedLibrary { path: PathBuf, detail: String },
    NotAPlugin { path: PathBuf },
    IncompatibleAbi { path: PathBuf, expected: String, found: String },
    LayoutMismatch { path: PathBuf, detail: String },
    PanicAbort { path: PathBuf },
    NoBuildTable { path: PathBuf, abi: String },
    MissingCapability { path: PathBuf, name: String, missing: String, plugin_abi: String },
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
            LoadError::NoBuildTable { path, abi } => write!(
                f,
                "{} is built against plugin ABI {abi} but exports no `Build` table: expected every plugin \
                 of ABI 1.3 or later to say whether its panics unwind (`#[derive(Plugin)]` adds the table; \
                 a hand-written root module must export `BuildV1`), since with `panic = \"abort\"` any \
                 panic in it would end the gateway",
                path.display()
            ),
            LoadError::PanicAbort { path } => write!(
                f,
                "{} was built with `panic = \"abort\"`: expected a plugin whose panics unwind, so that the \
                 gateway can contain them (with abort, any panic in it would end the gateway); rebuild it \
                 without `panic = \"abort\"` in its Cargo profile or RUSTFLAGS",
                path.display()
            ),
            LoadError::MissingCapability { path, name, missing, plugin_abi } => write!(
                f,
                "plugin `{name}` ({}) cannot run on this gateway: {missing}; the plugin was built against plugin \
                 ABI {plugin_abi}, this gateway speaks plugin ABI {}: upgrade the gateway, or use a build of the \
                 plugin that does not require it",
                path.display(),
                ffi::host_abi_version()
            ),
            LoadError::DuplicateName { name, path, first } => write!(
                f,
                "plugin name `{name}` from {} is already taken by {}: expected each plugin name once (give one \
                 of them another `name` in its [[plugins]] entry to load the same plugin twice)",
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
    /// Capabilities the plugin cannot work without.
    pub required: Vec<String>,
    pub config_schema: Option<serde_json::Value>,
}

/// A library opened and checked, not yet initialised.
pub struct Inspected {
    pub info: PluginInfo,
    library: Arc<Library>,
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

/// Whether a plugin of ABI `version` exports the `Build` table: every one from 1.3 on does.
fn says_how_it_panics(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 3)
}

/// Opens `path` and checks ABI version, layouts and schema without initialising the plugin.
pub fn inspect(path: &Path) -> Result<Inspected, LoadError> {
    if !path.is_file() {
        return Err(LoadError::FileMissing { path: path.into() });
    }
    let library = Library::open(path).map_err(|e| open_error(path, e))?;
    match library.panic_strategy() {
        Some(ffi::panic_strategy::ABORT) => return Err(LoadError::PanicAbort { path: path.into() }),
        Some(_) => {}
        None if says_how_it_panics(library.abi_version()) => {
            return Err(LoadError::NoBuildTable { path: path.into(), abi: library.abi_version().to_owned() });
        }
        None => tracing::warn!(
            path = %path.display(),
            abi = library.abi_version(),
            "plugin built before ABI 1.3 does not say how it panics: if it was built with panic = \"abort\", \
             any panic in it ends the gateway"
        ),
    }
    let missing = library.capabilities().missing();
    if !missing.is_empty() {
        return Err(LoadError::MissingCapability {
            path: path.into(),
            name: library.metadata().name.to_owned(),
            missing: missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            plugin_abi: library.abi_version().to_owned(),
        });
    }
    for (id, version) in library.capabilities().unknown() {
        tracing::warn!(
            path = %path.display(),
            id,
            version,
            "plugin offers a capability this gateway does not know; ignoring it"
        );
    }
    let meta = library.metadata();
    let name = meta.name.to_owned();
    // `Build` and `Requirements` are facts about the plugin, not things it does.
    let capabilities = library
        .capabilities()
        .names()
        .iter()
        .filter(|n| ![ffi::BuildV1::NAME, ffi::RequirementsV1::NAME].contains(n))
        .map(|n| (*n).to_owned())
        .collect();
    let config_schema = match library.config_schema() {
        None => None,
        Some(schema) => Some(
            serde_json::from_str::<serde_json::Value>(schema)
                .map_err(|e| LoadError::InvalidSchema { name: name.clone(), detail: e.to_string() })?,
        ),
    };
    let info = PluginInfo {
        name,
        version: meta.version.into(),
        author: meta.author.into(),
        description: meta.description.into(),
        repository: meta.repository.into(),
        abi_version: library.abi_version().into(),
        capabilities,
        required: library.capabilities().required(),
        config_schema,
    };
    Ok(Inspected { info, library })
}

/// Every place `config` breaks the plugin's schema: (field, rule), in document order. Empty if
/// it conforms or the plugin has no schema.
pub fn schema_errors(info: &PluginInfo, config: &serde_json::Value) -> Result<Vec<(String, String)>, LoadError> {
    let Some(schema) = &info.config_schema else {
        return Ok(Vec::new());
    };
    plugin_abi::schema::violations(schema, config)
        .map_err(|detail| LoadError::InvalidSchema { name: info.name.clone(), detail })
}

/// Checks `config` against the plugin's schema, naming the first failing field and rule.
fn validate_config(info: &PluginInfo, config: &serde_json::Value) -> Result<(), LoadError> {
    match schema_errors(info, config)?.into_iter().next() {
        Some((field, rule)) => Err(LoadError::ConfigRejected { name: info.name.clone(), field, rule }),
        None => Ok(()),
    }
}

/// What identifies a version of a plugin file without reading it: size, modification time and
/// inode. A file replaced or rewritten (a build, a copy, a rename over it) gets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp { len: m.len(), modified: m.modified().ok(), dev: m.dev(), ino: m.ino() })
    }
}

/// A plugin file as read once: its private copy, the SHA-256 of what was copied, and its stamp
/// from before the read.
pub struct Source {
    pub path: PathBuf,
    /// The copy the library is loaded from, named after its content.
    private: PathBuf,
    pub sha256: String,
    pub stamp: Option<FileStamp>,
}

/// Temporary copies in flight get a number each, so two reads never share one.
static NEXT_COPY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Source {
    /// Reads `path` once, in pieces, each hashed and written to a temporary file in `dir`
    /// that becomes the private copy, named after the hash of what was copied (or is removed,
    /// if a copy with that content is there already). The file an operator edits is never the
    /// one mapped (overwriting a mapped file crashes the process), and no buffer of the file's
    /// size is allocated: a reload's memory does not grow with the plugin.
    pub fn read(path: &Path, dir: &Path) -> Result<Source, LoadError> {
        use std::io::{Read, Write};
        let copy_err = |source| LoadError::Copy { path: path.into(), source };
        // The stamp first: a file changed during the read then looks changed next time too.
        let stamp = FileStamp::of(path);
        let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::FileMissing { path: path.into() },
            _ => copy_err(e),
        })?;
        std::fs::create_dir_all(dir).map_err(copy_err)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
        let n = NEXT_COPY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{stem}.{}.{n}.tmp", std::process::id()));
        let copied = (|| {
            let mut out = std::fs::File::create(&tmp)?;
            let (mut hasher, mut piece) = (Sha256::new(), vec![0u8; 64 * 1024]);
            loop {
                let len = file.read(&mut piece)?;
                if len == 0 {
                    break;
                }
                hasher.update(&piece[..len]);
                out.write_all(&piece[..len])?;
            }
            Ok(format!("{:x}", hasher.finalize()))
        })();
        let sha256 = copied.inspect_err(|_| drop(std::fs::remove_file(&tmp))).map_err(copy_err)?;
        let private = dir.join(format!("{stem}-{}.so", &sha256[..16]));
        if private.is_file() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            std::fs::rename(&tmp, &private).map_err(copy_err)?;
        }
        Ok(Source { path: path.into(), private, sha256, stamp })
    }
}

/// One initialised plugin instance together with the library that holds its code.
pub struct LoadedPlugin {
    /// The instance name: the config's `name`, or the plugin's own.
    name: String,
    pub info: PluginInfo,
    pub source_path: PathBuf,
    pub private_path: PathBuf,
    pub sha256: String,
    /// The source file's stamp when it was read: a reload finds an untouched file unchanged
    /// without reading it.
    pub source_stamp: Option<FileStamp>,
    pub loaded_at: SystemTime,
    pub on_error: FailMode,
    pub quarantine: QuarantinePolicy,
    /// Whether auth plugins run before its endpoint routes (the config's `endpoint_auth`).
    pub endpoint_auth: bool,
    /// Shuts down (ending its subscriptions first) when the last handle to it goes.
    instance: Arc<Instance>,
}

impl LoadedPlugin {
    /// The instance name (several instances of one plugin each have their own).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The capability `T` of this plugin, if it has it.
    pub fn cap<T: Capability>(&self) -> Option<Cap<T>> {
        self.instance.cap::<T>()
    }

    /// Tells the plugin every plugin is initialised (Lifecycle capability).
    pub fn ready(&self) {
        if let Some(lifecycle) = self.cap::<ffi::LifecycleV1>() {
            lifecycle.on_ready();
        }
    }

    /// Tells the plugin a newer version is taking over (Lifecycle capability).
    pub fn quiesce(&self) {
        if let Some(lifecycle) = self.cap::<ffi::LifecycleV1>() {
            lifecycle.quiesce();
        }
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
    load_from(config, Source::read(&config.path, copies_dir)?, taken, shared)
}

/// [`load`] from a file already read (a reload reads it once, to compare and to load).
pub fn load_from(
    config: &PluginConfig,
    source: Source,
    taken: &[(String, PathBuf)],
    shared: &Arc<Services>,
) -> Result<LoadedPlugin, LoadError> {
    let Source { sha256, stamp: source_stamp, private: private_path, .. } = source;
    let inspected = inspect(&private_path).map_err(|e| with_source_path(e, &private_path, &config.path))?;
    let info = inspected.info;
    let name = config.name.clone().unwrap_or_else(|| info.name.clone());
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(LoadError::ConfigRejected {
            name: info.name.clone(),
            field: "name".into(),
            rule: format!("instance name {name:?}: expected ASCII letters, digits, `-`, `_` or `.`"),
        });
    }
    if let Some((_, first)) = taken.iter().find(|(n, _)| *n == name) {
        return Err(LoadError::DuplicateName { name, path: config.path.clone(), first: first.clone() });
    }
    let config_json = serde_json::to_value(&config.config).map_err(|e| LoadError::ConfigRejected {
        name: info.name.clone(),
        field: "(root)".into(),
        rule: e.to_string(),
    })?;
    validate_config(&info, &config_json)?;
    // Each instance has its own KV namespace, log tag and subscriptions.
    let services = PluginServices::new(&name, &info.version, shared);
    // A failed init also ends whatever the plugin registered before failing (subscriptions).
    let instance = inspected.library.instantiate(&config_json.to_string(), services).map_err(|e| {
        LoadError::InitializeFailed { name: info.name.clone(), code: e.code, message: e.message.into() }
    })?;
    tracing::info!(plugin = %name, declared_name = %info.name, version = %info.version, abi = %info.abi_version, path = %config.path.display(), "plugin loaded");
    Ok(LoadedPlugin {
        name,
        info,
        source_path: config.path.clone(),
        private_path,
        sha256,
        source_stamp,
        loaded_at: SystemTime::now(),
        on_error: config.on_error,
        quarantine: config.quarantine(),
        endpoint_auth: config.endpoint_auth,
        instance,
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
        LoadError::PanicAbort { path } => LoadError::PanicAbort { path: fix(path) },
        LoadError::NoBuildTable { path, abi } => LoadError::NoBuildTable { path: fix(path), abi },
        LoadError::MissingCapability { path, name, missing, plugin_abi } => {
            LoadError::MissingCapability { path: fix(path), name, missing, plugin_abi }
        }
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
        taken.push((plugin.name().to_owned(), plugin.source_path.clone()));
        loaded.push(Arc::new(plugin));
    }
    Ok(loaded)
}
