//! The process: the tokio runtime, signals (SIGINT/SIGTERM stop, SIGHUP reloads), the file
//! watcher, the reaper of retired plugin versions, and the bounded shutdown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::{App, GatewayError};
use crate::config::GatewayConfig;
use crate::plugin::FileStamp;
use crate::server::serve;

/// Builds the runtime, loads plugins, serves until SIGINT or SIGTERM, then shuts plugins down.
/// SIGHUP (and, with `[admin] watch`, a change to a plugin file or the config) reloads every
/// plugin whose file or config changed.
pub fn run(config: GatewayConfig, config_path: Option<PathBuf>) -> Result<(), GatewayError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(GatewayError::Runtime)?;
    // Inside the runtime's context: the host HTTP client runs its calls on it.
    let app = {
        let _entered = runtime.enter();
        App::new(config, config_path)?
    };
    let _watcher = if app.config.admin.watch { Some(watch(&app)) } else { None };
    runtime.block_on(async {
        tokio::spawn(reaper(app.clone()));
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => drop(tokio::spawn(reload_on_sighup(app.clone(), hup))),
            Err(e) => tracing::warn!("cannot install the SIGHUP handler, reload with the admin API: {e}"),
        }
        let addr = app.config.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| GatewayError::Bind { addr, source })?;
        tracing::info!(%local, plugins = app.pipeline.load().slots.len(), "gateway listening");
        // Tests and scripts read this line to find the port.
        println!("listening on http://{local}");
        // Installed before the port is announced: a SIGTERM sent as soon as the gateway answers
        // must stop it cleanly, not kill it with the default action.
        let signalled = shutdown_signal();
        let stopping = app.clone();
        let shutdown = async move {
            signalled.await;
            // No reload may start while connections drain and plugins shut down.
            stopping.registry.stop_reloads();
        };
        serve(app.clone(), listener, shutdown).await;
        Ok::<(), GatewayError>(())
    })?;
    // Not `drop(runtime)`: that waits for every blocking task without end, and a retired
    // version's shutdown or a reload's init may hang there (both run on blocking threads).
    runtime.shutdown_timeout(BLOCKING_WAIT);
    drop(_watcher);
    // A plugin whose shutdown hangs must not keep the process from exiting.
    let (done, finished) = crossbeam_channel::bounded(1);
    let stopping = app.clone();
    std::thread::spawn(move || {
        stopping.shutdown();
        let _ = done.send(());
    });
    if finished.recv_timeout(SHUTDOWN_WAIT).is_err() {
        tracing::error!("plugins did not shut down within {} s: exiting without them", SHUTDOWN_WAIT.as_secs());
        return Ok(());
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// How long stopping waits for plugins to shut down before the process exits anyway.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// How long stopping waits for blocking tasks (reloads, retired versions shutting down) once
/// connections have drained.
const BLOCKING_WAIT: Duration = Duration::from_secs(5);

/// Shuts down and unloads retired plugin versions once no request uses them. Each reap runs on
/// a blocking thread and is not awaited: a plugin whose shutdown hangs holds its own thread,
/// not the reaper.
async fn reaper(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if app.registry.has_pending() {
            let app = app.clone();
            drop(tokio::task::spawn_blocking(move || app.registry.reap()));
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(app: Arc<App>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: applying the config file");
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || app.registry.apply(&app.live())).await;
    }
}

/// Watches plugin files and the config file; a burst of changes (a `cargo build` rewriting a
/// file) applies the config once, after `watch_debounce_ms` of quiet. The directories watched
/// are those of the files at start; within them, the files that count are those of the plugins
/// running now (so a plugin a reload added is watched if its file sits beside the others).
fn watch(app: &Arc<App>) -> Result<notify_debouncer_mini::Debouncer<notify::RecommendedWatcher>, notify::Error> {
    let mut files: Vec<PathBuf> = app.pipeline.load().slots.iter().map(|s| s.plugin.source_path.clone()).collect();
    files.extend(app.registry.config_path().map(Path::to_path_buf));
    let debounce = Duration::from_millis(app.config.admin.watch_debounce_ms.unwrap_or(300));
    let config_path = app.registry.config_path().map(Path::to_path_buf);
    // What each file looked like when last seen: reading a file (as a reload does) raises
    // events too, and only a file whose stamp moved counts as changed.
    let mut seen: HashMap<PathBuf, Option<FileStamp>> = files.iter().map(|f| (f.clone(), FileStamp::of(f))).collect();
    let target = Arc::downgrade(app);
    let mut debouncer =
        notify_debouncer_mini::new_debouncer(debounce, move |events: notify_debouncer_mini::DebounceEventResult| {
            let Ok(events) = events else { return };
            let Some(app) = target.upgrade() else { return };
            let mut changed = false;
            {
                let pipeline = app.pipeline.load();
                let watched = |path: &Path| {
                    config_path.as_deref() == Some(path) || pipeline.slots.iter().any(|s| s.plugin.source_path == path)
                };
                for path in events.iter().map(|e| &e.path).filter(|p| watched(p)) {
                    let stamp = FileStamp::of(path);
                    changed |= seen.insert(path.clone(), stamp) != Some(stamp);
                }
            }
            if changed {
                tracing::info!("plugin or config file changed: applying the config file");
                let _ = app.registry.apply(&app.live());
            }
        })?;
    // Directories, not files: builds and editors replace files by renaming over them.
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        debouncer.watcher().watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(debouncer)
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that ends on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    tracing::error!("cannot install signal handlers: stop the gateway with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
            tracing::info!("shutting down");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}
