//! tracing subscriber set-up: `RUST_LOG` filters (default `info`); logs go to stderr as text, or
//! as one JSON object per line with `GATEWAY_LOG_FORMAT=json`. Plugin lines carry `plugin` and
//! `version` fields, and the fields the plugin logged with (`Host::log_with`). With
//! `[telemetry] otlp_endpoint`, the gateway's spans also go to an OpenTelemetry collector
//! (see [`crate::telemetry`]), whatever `RUST_LOG` says: the log's filter is the log's only.

use tracing_subscriber::Layer;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TelemetryConfig;
use crate::telemetry::{self, Telemetry};

pub fn init() {
    init_with_default("info");
}

/// [`init`], logging at `level` unless `RUST_LOG` says otherwise.
pub fn init_with_default(level: &str) {
    init_with(level, &TelemetryConfig::default());
}

/// The log, and trace export if `telemetry` turns it on (a failure to set it up is logged, and
/// the gateway runs without it). Keep what it returns and shut it down last.
pub fn init_with(level: &str, telemetry: &TelemetryConfig) -> Option<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = std::env::var("GATEWAY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let text = tracing_subscriber::fmt::layer().with_target(true).with_writer(std::io::stderr);
    let log = if json {
        text.json().with_filter(filter).boxed()
    } else {
        text.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter).boxed()
    };
    let (export, guard, failed) = match telemetry::tracer(telemetry) {
        Ok(Some((tracer, guard))) => {
            // The gateway's own spans; events and plugins' lines stay in the log.
            // A hook span outside a request's span (count_tokens, plugin routes, an
            // executor's describe) would be a trace of its own: only requests' hooks go.
            let spans = dynamic_filter_fn(|meta, cx| {
                meta.is_span()
                    && meta.target().starts_with("gateway")
                    && (meta.name() != "hook" || cx.lookup_current().is_some())
            });
            // Without each span's source location and thread (static, and bytes in every
            // export), and without busy/idle times (two clock reads at every poll of a request).
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false);
            (Some(layer.with_filter(spans)), Some(guard), None)
        }
        Ok(None) => (None, None, None),
        Err(e) => (None, None, Some(e)),
    };
    // A second init (tests starting several gateways in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(log).with(export).try_init();
    if let Some(e) = failed {
        tracing::error!("{e}; running without trace export");
    }
    if let Some(endpoint) = telemetry.otlp_endpoint.as_deref().filter(|_| guard.is_some()) {
        tracing::info!(endpoint, "exporting traces");
    }
    guard
}
