//! Hot swap: replacing a plugin's `.so` (or its config), or the whole config, under live
//! traffic.
//!
//! [`Registry::apply`] applies a whole re-read config as one new pipeline: unchanged plugins
//! keep their instances, changed ones load their new version, added ones initialise, removed
//! ones quiesce and retire, and the upstreams, models and lookups are rebuilt (unchanged
//! upstreams keep their connection pools). [`Registry::reload`] does the same for one plugin.
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
use crate::services::http::HttpTarget;
use crate::services::lookup::Lookup;
use crate::upstream::Upstreams;

/// What a reload works on: the live pipeline, and what loading a plugin needs.
pub struct Live<'a> {
    pub pipeline: &'a ArcSwap<Pipeline>,
    pub services: &'a Arc<Services>,
    pub metrics: &'a Arc<Metrics>,
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
    /// The new config changes settings only a restart applies.
    RestartNeeded(Vec<&'static str>),
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
            ReloadError::RestartNeeded(fields) => write!(
                f,
                "the new config changes {}, which only a restart applies; expected those settings as the gateway started with them",
                fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            ),
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
    /// "unchanged", "reloaded" (new file), "reconfigured" (same file, new config), or, for a
    /// whole-config reload, "added" or "removed".
    pub outcome: &'static str,
    pub from_version: String,
    pub to_version: String,
    pub sha256: String,
    pub took_ms: f64,
}

/// What a whole-config reload did.
#[derive(Debug, serde::Serialize)]
pub struct Applied {
    /// Per plugin, in the new pipeline's order, then the removed ones.
    pub results: Vec<Reloaded>,
    pub upstreams: Changes,
    pub models: Changes,
}

/// Names added, removed and changed between two configs.
#[derive(Debug, Default, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    fn between<T: PartialEq>(old: &[T], new: &[T], name: impl Fn(&T) -> &str) -> Changes {
        let find = |list: &'_ [T], n: &str| list.iter().position(|x| name(x) == n);
        let mut c = Changes::default();
        for x in new {
            match find(old, name(x)) {
                None => c.added.push(name(x).to_owned()),
                Some(i) if old[i] != *x => c.changed.push(name(x).to_owned()),
                Some(_) => {}
            }
        }
        c.removed = old.iter().filter(|x| find(new, name(x)).is_none()).map(|x| name(x).to_owned()).collect();
        c
    }
}

/// The settings a reload cannot change (listeners, stores, queues, the admin token and the
/// request limits are set up once at start), named as in the config file.
fn restart_only(old: &GatewayConfig, new: &GatewayConfig) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |differ: bool, name| {
        if differ {
            fields.push(name);
        }
    };
    check(old.listen != new.listen, "listen");
    check(old.data_dir != new.data_dir, "data_dir");
    check(old.limits != new.limits, "limits");
    check(old.collector_queue != new.collector_queue, "collector_queue");
    check(old.logging != new.logging, "logging");
    check(old.kv != new.kv, "kv");
    check(old.event_queue != new.event_queue, "event_queue");
    check(old.admin != new.admin, "admin");
    check(old.telemetry != new.telemetry, "telemetry");
    fields
}

/// Whether two entries configure one instance the same way (their order aside).
fn same_entry(a: &PluginConfig, b: &PluginConfig) -> bool {
    PluginConfig { order: 0, ..a.clone() } == PluginConfig { order: 0, ..b.clone() }
}

/// What a whole-config reload does with one wanted entry.
enum Step<'c> {
    /// Reuse the running instance: same file, same config.
    Keep(Arc<Slot>),
    /// Load `source`, replacing `old` if there is one.
    Load { config: &'c PluginConfig, source: plugin::Source, old: Option<Arc<Slot>>, outcome: &'static str },
}

impl Reloaded {
    fn of(
        outcome: &'static str,
        from: Option<&Arc<LoadedPlugin>>,
        to: Option<&Arc<LoadedPlugin>>,
        took_ms: f64,
    ) -> Self {
        let version = |p: Option<&Arc<LoadedPlugin>>| p.map_or(String::new(), |p| p.info.version.clone());
        Reloaded {
            plugin: to.or(from).map_or(String::new(), |p| p.name().to_owned()),
            outcome,
            from_version: version(from),
            to_version: version(to),
            sha256: to.or(from).map_or(String::new(), |p| p.sha256.clone()),
            took_ms,
        }
    }
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
    /// The running plugins' entries, in pipeline order.
    entries: Mutex<Vec<Entry>>,
    /// The config the upstreams, models and lookups were built from.
    running: Mutex<GatewayConfig>,
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
    pub fn new(pipeline: &Pipeline, config: &GatewayConfig, config_path: Option<PathBuf>) -> Registry {
        let entries = pipeline
            .slots
            .iter()
            .zip(config.enabled_plugins())
            .map(|(slot, config)| Entry { name: slot.name().to_owned(), config: config.clone() })
            .collect();
        Registry {
            entries: Mutex::new(entries),
            running: Mutex::new(config.clone()),
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
        Ok(self.reread_all()?.map(|config| config.enabled_plugins().into_iter().cloned().collect()))
    }

    /// The config file as it is now, if the gateway was started from one.
    fn reread_all(&self) -> Result<Option<GatewayConfig>, ReloadError> {
        let Some(path) = &self.config_path else { return Ok(None) };
        GatewayConfig::load(path).map(Some).map_err(|e| ReloadError::Config(e.to_string()))
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

    /// Applies the config file as it is now as one new pipeline (for a gateway started on the
    /// embedded default, the running config: then only changed plugin files reload). Nothing
    /// changes unless all of it can: a plugin that fails to load or initialise, a model routed
    /// to an executor that is gone, conflicting routes or a changed restart-only setting refuse
    /// the whole config, and the error says which.
    pub fn apply(&self, app: &Live<'_>) -> Result<Applied, ReloadError> {
        let _one = self.reloading.lock();
        self.check_running()?;
        let result = self.reread_all().and_then(|fresh| {
            let new = fresh.unwrap_or_else(|| self.running.lock().clone());
            at_low_priority(|| self.apply_locked(app, new))
        });
        match &result {
            Ok(applied) => {
                for r in applied.results.iter().filter(|r| r.outcome != "unchanged") {
                    tracing::info!(plugin = %r.plugin, from = %r.from_version, to = %r.to_version, outcome = r.outcome, took_ms = r.took_ms, "plugin reloaded");
                }
                let (u, m) = (&applied.upstreams, &applied.models);
                if [u, m].iter().any(|c| !(c.added.is_empty() && c.removed.is_empty() && c.changed.is_empty())) {
                    tracing::info!(upstreams = ?u, models = ?m, "upstreams and models reloaded");
                }
            }
            Err(e) => {
                app.metrics.config_reload_failures.fetch_add(1, Relaxed);
                tracing::error!("config reload refused, the running config keeps serving: {e}");
            }
        }
        result
    }

    fn apply_locked(&self, app: &Live<'_>, new: GatewayConfig) -> Result<Applied, ReloadError> {
        let started = Instant::now();
        let running = self.running.lock().clone();
        let restart = restart_only(&running, &new);
        if !restart.is_empty() {
            return Err(ReloadError::RestartNeeded(restart));
        }
        let pipeline = app.pipeline.load_full();
        let entries: Vec<(String, PluginConfig)> =
            self.entries.lock().iter().map(|e| (e.name.clone(), e.config.clone())).collect();
        let slot_of = |name: &str| pipeline.slots.iter().find(|s| s.name() == name).cloned();

        // Each wanted entry is the running entry with the same file and instance name, if any;
        // each running entry matches at most once, and those left over are removed.
        let wanted = new.enabled_plugins();
        let mut used = vec![false; entries.len()];
        let mut steps = Vec::with_capacity(wanted.len());
        for config in &wanted {
            let matched = (0..entries.len())
                .find(|&i| !used[i] && entries[i].1.path == config.path && entries[i].1.name == config.name);
            let old = matched.and_then(|i| {
                used[i] = true;
                slot_of(&entries[i].0).map(|slot| (slot, same_entry(&entries[i].1, config)))
            });
            steps.push(match old {
                // A file with the stamp it had when loaded is not read again.
                Some((slot, true))
                    if plugin::FileStamp::of(&config.path).is_some_and(|s| Some(s) == slot.plugin.source_stamp) =>
                {
                    Step::Keep(slot)
                }
                old => {
                    let source = plugin::Source::read(&config.path, &app.copies).map_err(ReloadError::Load)?;
                    match old {
                        Some((slot, true)) if source.sha256 == slot.plugin.sha256 => Step::Keep(slot),
                        Some((slot, same)) => {
                            let outcome =
                                if source.sha256 == slot.plugin.sha256 && !same { "reconfigured" } else { "reloaded" };
                            Step::Load { config, source, old: Some(slot), outcome }
                        }
                        None => Step::Load { config, source, old: None, outcome: "added" },
                    }
                }
            });
        }
        let removed: Vec<Arc<Slot>> =
            (0..entries.len()).filter(|&i| !used[i]).filter_map(|i| slot_of(&entries[i].0)).collect();

        // Load what is new, with the names of what stays and what loaded before it taken.
        let mut taken: Vec<(String, PathBuf)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Keep(slot) => Some((slot.name().to_owned(), slot.plugin.source_path.clone())),
                Step::Load { .. } => None,
            })
            .collect();
        let mut slots = Vec::with_capacity(steps.len());
        let mut results = Vec::with_capacity(steps.len() + removed.len());
        let mut swapped: Vec<(Option<Arc<LoadedPlugin>>, Arc<LoadedPlugin>)> = Vec::new();
        for step in steps {
            match step {
                Step::Keep(slot) => {
                    results.push(Reloaded::of("unchanged", Some(&slot.plugin), Some(&slot.plugin), 0.0));
                    slots.push(slot);
                }
                Step::Load { config, source, old, outcome } => {
                    let one = Instant::now();
                    let new = plugin::load_from(config, source, &taken, app.services).map_err(ReloadError::Load)?;
                    if let Some(old) = &old
                        && (new.name() != old.name() || new.info.name != old.plugin.info.name)
                    {
                        return Err(ReloadError::Renamed {
                            expected: old.plugin.info.name.clone(),
                            found: new.info.name.clone(),
                        });
                    }
                    let new = Arc::new(new);
                    taken.push((new.name().to_owned(), new.source_path.clone()));
                    let old = old.map(|slot| slot.plugin.clone());
                    let took = one.elapsed().as_secs_f64() * 1e3;
                    results.push(Reloaded::of(outcome, old.as_ref(), Some(&new), took));
                    slots.push(Arc::new(Slot::new(new.clone(), config.isolate, app.metrics.clone())));
                    swapped.push((old, new));
                }
            }
        }
        let upstreams = Upstreams::rebuild(&new, Some((&running, &pipeline.upstreams)), Some(&*app.services.kv));
        let lookup = Lookup::from_config(&new, &upstreams);
        let targets = HttpTarget::all(&upstreams);
        let next = Pipeline::new(slots, Arc::new(upstreams));
        next.check().map_err(ReloadError::Pipeline)?;

        // As `Lifecycle` documents: old versions let go of what new ones take over, the new
        // ones are told they are ready, then the swap is one store.
        for (old, _) in &swapped {
            old.iter().for_each(|o| o.quiesce());
        }
        removed.iter().for_each(|slot| slot.plugin.quiesce());
        swapped.iter().for_each(|(_, new)| new.ready());
        {
            let stopped = self.stopped.lock();
            if *stopped {
                return Err(ReloadError::ShuttingDown);
            }
            app.services.lookup.store(Arc::new(lookup));
            app.services.http.set_targets(targets);
            next.bind_schedulers();
            app.pipeline.store(Arc::new(next));
        }
        *self.entries.lock() = wanted
            .iter()
            .zip(app.pipeline.load().slots.iter())
            .map(|(config, slot)| Entry { name: slot.name().to_owned(), config: (*config).clone() })
            .collect();
        let applied = Applied {
            upstreams: Changes::between(&running.upstreams, &new.upstreams, |u| &u.name),
            models: Changes::between(&running.models, &new.models, |m| &m.name),
            results: results
                .into_iter()
                .chain(removed.iter().map(|slot| Reloaded::of("removed", Some(&slot.plugin), None, 0.0)))
                .map(|r| Reloaded { took_ms: if r.outcome == "unchanged" { 0.0 } else { r.took_ms }, ..r })
                .collect(),
        };
        let mut retired = self.retired.lock();
        let old = swapped.into_iter().filter_map(|(old, _)| old).chain(removed.into_iter().map(|s| s.plugin.clone()));
        retired.extend(old.map(|plugin| Retired { private_path: plugin.private_path.clone(), plugin: Some(plugin) }));
        drop(retired);
        *self.running.lock() = new;
        tracing::debug!(took_ms = started.elapsed().as_secs_f64() * 1e3, "config applied");
        Ok(applied)
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
        // Models routed to this plugin must still have their executor in the new version.
        let next = Pipeline::new(slots, pipeline.upstreams.clone());
        next.check().map_err(ReloadError::Pipeline)?;
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
            next.bind_schedulers();
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
