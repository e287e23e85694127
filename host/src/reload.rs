//! Hot swap: replacing a plugin's `.so` (or its config) under live traffic.
//!
//! A reload copies the file to its private content-addressed path, loads and checks it,
//! validates the config and initialises the new instance, all while the old version serves.
//! Only if every step passes does it quiesce the old version and publish a new pipeline in one
//! atomic store. Requests in flight finish on the snapshot they started with; the old version
//! shuts down when the last of them lets go of it, and is unloaded (best effort: see
//! [`Registry::status`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{GatewayConfig, PluginConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Slot};
use crate::plugin::{self, LoadError, LoadedPlugin};
use crate::services::Services;
use crate::upstream::Upstreams;

/// What a reload works on: the live pipeline, and what loading a plugin needs.
pub struct Live<'a> {
    pub pipeline: &'a ArcSwap<Pipeline>,
    pub services: &'a Arc<Services>,
    pub metrics: &'a Arc<Metrics>,
    pub upstreams: &'a Upstreams,
    /// Where private copies of plugin files go.
    pub copies: PathBuf,
}

/// Why a reload did not happen. The old version keeps serving.
#[derive(Debug)]
pub enum ReloadError {
    UnknownPlugin {
        name: String,
        known: Vec<String>,
    },
    Config(String),
    Load(LoadError),
    Renamed {
        expected: String,
        found: String,
    },
    /// The new version no longer serves the models routed to it, or its routes are invalid or
    /// conflict.
    Pipeline(String),
    ShuttingDown,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::UnknownPlugin { name, known } => {
                write!(f, "no plugin named `{name}` is loaded; expected one of {known:?}")
            }
            ReloadError::Config(e) => write!(f, "cannot re-read the gateway config: {e}"),
            ReloadError::Load(e) => write!(f, "{e}"),
            ReloadError::ShuttingDown => f.write_str("the gateway is shutting down: no more reloads"),
            ReloadError::Pipeline(e) => write!(f, "the new version cannot take over: {e}"),
            ReloadError::Renamed { expected, found } => write!(
                f,
                "the new file is plugin `{found}`, expected `{expected}`: a reload replaces a plugin with a version of itself"
            ),
        }
    }
}

impl std::error::Error for ReloadError {}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    pub plugin: String,
    /// "unchanged", "reloaded" (new file) or "reconfigured" (same file, new config).
    pub outcome: &'static str,
    pub from_version: String,
    pub to_version: String,
    pub sha256: String,
    pub took_ms: f64,
}

/// One plugin's entry as the operator configured it.
struct Entry {
    name: String,
    config: PluginConfig,
}

struct Retired {
    plugin: Option<Arc<LoadedPlugin>>,
    private_path: PathBuf,
}

pub struct Registry {
    entries: Mutex<Vec<Entry>>,
    /// Old versions: held until no request uses them, then shut down and unloaded.
    retired: Mutex<Vec<Retired>>,
    config_path: Option<PathBuf>,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Set when shutdown begins: reloads (file watcher, SIGHUP, admin) are refused from then on.
    /// A reload holds it while it stores its new pipeline, so a reload that was under way when
    /// shutdown began either swapped before it (and shutdown retires what it swapped in) or
    /// does not swap at all (and shuts its new version down itself).
    stopped: Mutex<bool>,
}

/// Runs `f` on a thread of its own at a lower CPU priority (nice 10): reading, hashing,
/// copying and loading a plugin then yield the cores to the requests being served, which on a
/// small machine is what keeps their latency steady during a swap. Linux sets a thread's nice
/// value with `setpriority` on its thread id; where that fails `f` runs at normal priority.
fn at_low_priority<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new().name("reload".into());
        let run = move || {
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), RELOAD_NICE);
            f()
        };
        match thread.spawn_scoped(scope, run) {
            Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => panic!("cannot start a reload thread: {e}"),
        }
    })
}

/// The nice value reloads run at (0 is normal, 19 the lowest priority).
const RELOAD_NICE: i32 = 10;

impl Registry {
    pub fn new(pipeline: &Pipeline, configs: &[&PluginConfig], config_path: Option<PathBuf>) -> Registry {
        let entries = pipeline
            .slots
            .iter()
            .zip(configs)
            .map(|(slot, config)| Entry { name: slot.name().to_owned(), config: (*config).clone() })
            .collect();
        Registry {
            entries: Mutex::new(entries),
            retired: Mutex::new(Vec::new()),
            config_path,
            reloading: Mutex::new(()),
            stopped: Mutex::new(false),
        }
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The plugin entries of the config file as it is now, if the gateway was started from one.
    fn reread(&self) -> Result<Option<Vec<PluginConfig>>, ReloadError> {
        let Some(path) = &self.config_path else { return Ok(None) };
        let config = GatewayConfig::load(path).map_err(|e| ReloadError::Config(e.to_string()))?;
        Ok(Some(config.enabled_plugins().into_iter().cloned().collect()))
    }

    /// Refuses every later reload, and the swap of one under way.
    pub fn stop_reloads(&self) {
        *self.stopped.lock() = true;
    }

    /// Waits up to `timeout` for a reload under way to finish; false if one still runs (a
    /// plugin whose init hangs). Call after [`Registry::stop_reloads`].
    pub fn wait_for_reload(&self, timeout: Duration) -> bool {
        self.reloading.try_lock_for(timeout).is_some()
    }

    fn check_running(&self) -> Result<(), ReloadError> {
        if *self.stopped.lock() { Err(ReloadError::ShuttingDown) } else { Ok(()) }
    }

    /// Reloads plugin `name` if its file or its config (re-read from the config file) changed.
    pub fn reload(&self, app: &Live<'_>, name: &str) -> Result<Reloaded, ReloadError> {
        let _one = self.reloading.lock();
        self.check_running()?;
        let fresh = self.reread()?;
        at_low_priority(|| self.reload_locked(app, name, fresh.as_deref()))
    }

    /// Reloads every plugin whose file or config changed. One failure does not stop the others.
    pub fn reload_changed(&self, app: &Live<'_>) -> Vec<(String, Result<Reloaded, ReloadError>)> {
        let _one = self.reloading.lock();
        if let Err(e) = self.check_running() {
            return vec![("(all)".into(), Err(e))];
        }
        let fresh = match self.reread() {
            Ok(f) => f,
            Err(e) => return vec![("(config)".into(), Err(e))],
        };
        let names: Vec<String> = self.entries.lock().iter().map(|e| e.name.clone()).collect();
        at_low_priority(|| {
            names
                .into_iter()
                .map(|name| {
                    let r = self.reload_locked(app, &name, fresh.as_deref());
                    (name, r)
                })
                .collect()
        })
    }

    fn reload_locked(
        &self,
        app: &Live<'_>,
        name: &str,
        fresh: Option<&[PluginConfig]>,
    ) -> Result<Reloaded, ReloadError> {
        let started = Instant::now();
        let result = self.try_reload(app, name, fresh, started);
        match &result {
            Ok(r) if r.outcome != "unchanged" => tracing::info!(
                plugin = name,
                from = %r.from_version,
                to = %r.to_version,
                outcome = r.outcome,
                took_ms = r.took_ms,
                "plugin reloaded"
            ),
            Ok(_) => {}
            Err(e) => {
                app.metrics.plugin_counter("gateway_plugin_reload_failures_total", name).fetch_add(1, Relaxed);
                tracing::error!(plugin = name, "reload failed, the running version keeps serving: {e}");
            }
        }
        result
    }

    fn try_reload(
        &self,
        app: &Live<'_>,
        name: &str,
        fresh: Option<&[PluginConfig]>,
        started: Instant,
    ) -> Result<Reloaded, ReloadError> {
        let pipeline = app.pipeline.load_full();
        let unknown = || ReloadError::UnknownPlugin {
            name: name.to_owned(),
            known: pipeline.slots.iter().map(|s| s.name().to_owned()).collect(),
        };
        let current = pipeline.slots.iter().find(|s| s.name() == name).ok_or_else(unknown)?.clone();
        let old_config =
            self.entries.lock().iter().find(|e| e.name == name).map(|e| e.config.clone()).ok_or_else(unknown)?;
        // The same plugin in the re-read config: the entry with the same path.
        let config = fresh
            .and_then(|f| f.iter().find(|c| c.path == old_config.path && c.name == old_config.name))
            .cloned()
            .unwrap_or(old_config.clone());
        let old = &current.plugin;
        let same_config = config.config == old_config.config
            && config.isolate == old_config.isolate
            && config.on_error == old_config.on_error
            && config.quarantine() == old_config.quarantine()
            && config.endpoint_auth == old_config.endpoint_auth;
        let unchanged = || Reloaded {
            plugin: name.to_owned(),
            outcome: "unchanged",
            from_version: old.info.version.clone(),
            to_version: old.info.version.clone(),
            sha256: old.sha256.clone(),
            took_ms: 0.0,
        };
        // A file with the stamp it had when loaded is not read again.
        let stamp = plugin::FileStamp::of(&config.path);
        if same_config && stamp.is_some() && stamp == old.source_stamp {
            return Ok(unchanged());
        }
        let source = plugin::Source::read(&config.path, &app.copies).map_err(ReloadError::Load)?;
        let sha256 = source.sha256.clone();
        let outcome = match (sha256 == old.sha256, same_config) {
            (true, true) => return Ok(unchanged()),
            (true, false) => "reconfigured",
            (false, _) => "reloaded",
        };
        let taken: Vec<(String, PathBuf)> = pipeline
            .slots
            .iter()
            .filter(|s| s.name() != name)
            .map(|s| (s.name().to_owned(), s.plugin.source_path.clone()))
            .collect();
        let new = plugin::load_from(&config, source, &taken, app.services).map_err(ReloadError::Load)?;
        // Another plugin under the same instance name is not a new version of this one.
        if new.name() != name || new.info.name != old.info.name {
            return Err(ReloadError::Renamed { expected: old.info.name.clone(), found: new.info.name.clone() });
        }
        let new = Arc::new(new);
        let slot = Arc::new(Slot::new(new.clone(), config.isolate, app.metrics.clone()));
        let slots = pipeline.slots.iter().map(|s| if s.name() == name { slot.clone() } else { s.clone() }).collect();
        let next = Pipeline::new(slots);
        // Models routed to this plugin must still have their executor in the new version.
        let routed = app.upstreams.routes.values().filter_map(|r| match &r.target {
            crate::upstream::Target::Executor(e) if e == name => Some((r.model.as_str(), e.as_str())),
            _ => None,
        });
        next.check(routed).map_err(ReloadError::Pipeline)?;
        // As `Lifecycle` documents: the old version lets go of what the new one takes over, the
        // new one is told it is ready, then the swap is one store.
        old.quiesce();
        new.ready();
        {
            let stopped = self.stopped.lock();
            if *stopped {
                // Shutdown began while this reload ran: the new version is dropped here, and so
                // shut down, instead of being swapped into a pipeline nobody will retire.
                return Err(ReloadError::ShuttingDown);
            }
            app.pipeline.store(Arc::new(next));
        }
        if let Some(entry) = self.entries.lock().iter_mut().find(|e| e.name == name) {
            entry.config = config;
        }
        self.retired.lock().push(Retired { plugin: Some(old.clone()), private_path: old.private_path.clone() });
        Ok(Reloaded {
            plugin: name.to_owned(),
            outcome,
            from_version: old.info.version.clone(),
            to_version: new.info.version.clone(),
            sha256,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Shuts down and unloads retired versions no request uses any more. Call off the async
    /// workers: a plugin's shutdown may block.
    pub fn reap(&self) -> usize {
        let done: Vec<Arc<LoadedPlugin>> = {
            let mut retired = self.retired.lock();
            retired
                .iter_mut()
                .filter(|r| r.plugin.as_ref().is_some_and(|p| Arc::strong_count(p) == 1))
                .filter_map(|r| r.plugin.take())
                .collect()
        };
        let n = done.len();
        drop(done);
        n
    }

    /// Whether a retired version still waits for requests to finish.
    pub fn has_pending(&self) -> bool {
        self.retired.lock().iter().any(|r| r.plugin.is_some())
    }

    /// Retired versions whose code is still mapped (unloading is best effort: `dlclose` keeps a
    /// library that registered thread-local destructors on live threads), counted per plugin.
    fn retired_mapped(&self, plugin_copy_prefix: &str, current: &Path) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let retired = self.retired.lock();
        let mut paths: Vec<&PathBuf> = retired
            .iter()
            .map(|r| &r.private_path)
            .filter(|p| p.as_path() != current)
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(plugin_copy_prefix)))
            .collect();
        paths.sort();
        paths.dedup();
        paths.iter().filter(|p| maps.contains(&*p.to_string_lossy())).count()
    }

    /// What `GET /admin/plugins` shows.
    pub fn status(&self, app: &Live<'_>) -> Vec<serde_json::Value> {
        let pipeline = app.pipeline.load_full();
        let hooks = app.metrics.hook_totals();
        pipeline
            .slots
            .iter()
            .map(|slot| {
                let p = &slot.plugin;
                let (calls, errors) = hooks.iter().filter(|(name, _, _)| name == p.name()).fold((0, 0), |(c, e), (_, hc, he)| (c + hc, e + he));
                let prefix = p.private_path.file_name().and_then(|n| n.to_str()).and_then(|n| n.rsplit_once('-')).map_or("", |(stem, _)| stem).to_owned();
                let loaded_unix_ms = p.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                serde_json::json!({
                    "name": p.name(),
                    "version": p.info.version,
                    "abi_version": p.info.abi_version,
                    "sha256": p.sha256,
                    "path": p.source_path,
                    "loaded_at_unix_ms": loaded_unix_ms,
                    "loaded_secs_ago": SystemTime::now().duration_since(p.loaded_at).unwrap_or(Duration::ZERO).as_secs(),
                    "capabilities": p.info.capabilities,
                    "calls": calls,
                    "errors": errors,
                    "hooks": app.metrics.hook_stats(p.name()),
                    "ui": pipeline.ui_manifest(p.name()),
                    "quarantined": slot.is_quarantined(),
                    "retired_versions_mapped": self.retired_mapped(&format!("{prefix}-"), &p.private_path),
                    "retired_versions_pending": self.retired.lock().iter().filter(|r| r.plugin.as_ref().is_some_and(|o| o.name() == p.name())).count(),
                })
            })
            .collect()
    }
}
