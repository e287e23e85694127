//! tracing subscriber set-up: `RUST_LOG` filters (default `info`); logs go to stderr as text, or
//! as one JSON object per line with `GATEWAY_LOG_FORMAT=json`. Plugin lines carry `plugin` and
//! `version` fields, and the fields the plugin logged with (`Host::log_with`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init() {
    init_with_default("info");
}

/// [`init`], logging at `level` unless `RUST_LOG` says otherwise.
pub fn init_with_default(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = std::env::var("GATEWAY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let text = tracing_subscriber::fmt::layer().with_target(true).with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests starting several gateways in one process) keeps the first subscriber.
    let _ = if json {
        registry.with(text.json()).try_init()
    } else {
        registry.with(text.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))).try_init()
    };
}
