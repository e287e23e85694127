//! tracing subscriber set-up: `RUST_LOG` filters (default `info`); logs go to stderr, plugin lines
//! carry `plugin` and `version` fields.

pub fn init() {
    init_with_default("info");
}

/// [`init`], logging at `level` unless `RUST_LOG` says otherwise.
pub fn init_with_default(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A second init (tests starting several gateways in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
