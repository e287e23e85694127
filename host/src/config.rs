//! The gateway config (TOML), with an embedded default that needs no network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The config used when none is given: the mock upstream and the example plugins, which are
/// looked up next to the gateway executable (where `cargo build --workspace` puts them).
pub const DEFAULT_CONFIG: &str = include_str!("../default-config.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Private plugin copies and the KV store live here; a relative path is resolved against the
    /// config file's directory (the working directory, for the embedded default).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Capacity of the queue that feeds data collectors; a full queue drops and counts.
    #[serde(default = "default_collector_queue")]
    pub collector_queue: usize,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub kv: KvConfig,
    /// Capacity of the plugin event queue; a full queue refuses the publish.
    #[serde(default = "default_event_queue")]
    pub event_queue: usize,
    /// Apps plugins can look up (`Host::app`).
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// API keys plugins can validate (`Host::validate_credential`).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Trace export to an OpenTelemetry collector; off unless `otlp_endpoint` is set.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP traces URL (`http://127.0.0.1:4318/v1/traces`); spans are
    /// sent as protobuf, in batches, off the request path.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Headers sent with every export (a hosted collector's key).
    pub headers: std::collections::BTreeMap<String, String>,
    /// How long spans wait before they are sent in a batch.
    pub export_interval_ms: u64,
    /// The share of requests traced, from 0 to 1 (by trace id; a request's spans are all kept
    /// or all dropped).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "llm-gateway".into(),
            headers: Default::default(),
            export_interval_ms: 1000,
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; the `GATEWAY_ADMIN_TOKEN` environment variable overrides it.
    /// Without either, every admin call is refused.
    pub token: Option<String>,
    /// Reload plugins whose file (or the config file) changes on disk, debounced.
    pub watch: bool,
    /// Quiet time before a burst of file changes triggers one reload.
    pub watch_debounce_ms: Option<u64>,
}

impl AdminConfig {
    pub fn effective_token(&self) -> Option<String> {
        std::env::var("GATEWAY_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| self.token.clone())
    }
}

fn default_event_queue() -> usize {
    1024
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// The most verbose level plugin lines may have: error, warn, info, debug or trace.
    pub plugin_level: String,
    /// Per plugin: sustained lines per second, and the burst above it; the rest is dropped and
    /// counted in `gateway_plugin_log_dropped_total`.
    pub plugin_lines_per_sec: u32,
    pub plugin_burst: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { plugin_level: "info".into(), plugin_lines_per_sec: 50, plugin_burst: 200 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig { max_key_bytes: 512, max_value_bytes: 64 << 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub name: String,
    /// Models the app may use; empty means all.
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub key: String,
    pub app: String,
    pub user: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_collector_queue() -> usize {
    4096
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_header_bytes: usize,
    /// Time a client has to send its request head.
    pub header_timeout_ms: u64,
    /// Time a client has to send its request body.
    pub body_timeout_ms: u64,
    /// Open client connections at most; a connection beyond it gets a 503 and is closed.
    pub max_connections: usize,
    /// A write to a client that stays blocked this long (the client stopped reading) cuts the
    /// connection, so that a stalled client cannot pin its stream, upstream connection and
    /// plugin version.
    pub write_timeout_ms: u64,
    /// How long an executor plugin may take to answer (its whole response, or a stream's first
    /// chunk), and to send each next chunk; past it the call is dropped (cancelled inside the
    /// plugin) and the client gets a 504, or an error event mid-stream.
    pub executor_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_header_bytes: 16 << 10,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 4096,
            write_timeout_ms: 30_000,
            executor_timeout_ms: 300_000,
        }
    }
}

// Read once per config load; the mock's variant being small costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum UpstreamKind {
    /// The embedded mock LLM: deterministic replies, no network.
    Mock {
        /// Content chunks in a streamed reply.
        #[serde(default = "default_chunks")]
        chunks: usize,
        /// Delay between streamed chunks.
        #[serde(default)]
        chunk_delay_ms: u64,
    },
    /// Any OpenAI-compatible HTTP API.
    Openai {
        /// `https://…` (TLS, HTTP/1.1); `http://` only to a loopback host or with
        /// `allow_insecure_http`.
        base_url: String,
        /// Name of the environment variable that holds the API key.
        #[serde(default)]
        api_key_env: Option<String>,
        /// The header that carries the key: `authorization` (the default) sends
        /// `Bearer <key>`; any other header (`x-api-key` for Anthropic's API, called by an
        /// executor plugin through the host HTTP client) sends the key as it is.
        #[serde(default)]
        auth_header: Option<String>,
        #[serde(default = "default_connect_timeout")]
        connect_timeout_ms: u64,
        #[serde(default = "default_request_timeout")]
        timeout_ms: u64,
        /// A PEM file of CA certificates to trust for this upstream besides the built-in
        /// (Mozilla) roots; relative paths are resolved against the config file's directory.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Allows an `http://` base URL to a host that is not loopback (the API key and the
        /// prompts then cross the network in cleartext).
        #[serde(default)]
        allow_insecure_http: bool,
        /// Largest accepted non-streamed response body; a larger one gives the client a 502.
        #[serde(default = "default_max_response_bytes")]
        max_response_bytes: usize,
        /// Largest accepted SSE event in a streamed response; a larger one ends the stream with
        /// an error (a 502 if it is the first event).
        #[serde(default = "default_max_event_bytes")]
        max_event_bytes: usize,
        /// More keys for this upstream: a pool that calls are spread over, failing over to the
        /// next key when one is refused (429, 401, 403). `api_key_env` is the key `default`.
        #[serde(default)]
        credentials: Vec<CredentialConfig>,
        /// How calls pick among the available keys of the best priority.
        #[serde(default)]
        scheduling: Scheduling,
        /// A plugin (instance name) with the `Scheduler` capability that picks the key instead;
        /// `scheduling` is its fallback.
        #[serde(default)]
        scheduler: Option<String>,
        /// How long a key rests after a 429 whose `Retry-After` does not say.
        #[serde(default = "default_rate_limit_cooldown")]
        rate_limit_cooldown_secs: u64,
        /// How long a key rests after a 401 or 403 (revoked, wrong, out of quota).
        #[serde(default = "default_auth_failure_cooldown")]
        auth_failure_cooldown_secs: u64,
        /// Keys one call tries at most, the first included: a refusal that is the request's
        /// own (a prompt over a tokens-per-minute limit) cools this many keys, not the pool.
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
        /// The certificates of `ca_file`, read when the config is loaded.
        #[serde(skip)]
        ca_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
}

/// One key of an upstream's pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Its name in metrics, logs and the admin API (never the key).
    pub id: String,
    /// The environment variable that holds the key.
    pub api_key_env: String,
    /// Lower is preferred: keys of a higher number serve only while every better one is cooling.
    #[serde(default)]
    pub priority: i32,
}

/// How a pool spreads calls over its keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduling {
    /// Each call takes the next key in turn.
    #[default]
    RoundRobin,
    /// Every call takes the first available key: the others wait until it is refused.
    FillFirst,
}

fn default_rate_limit_cooldown() -> u64 {
    60
}

fn default_auth_failure_cooldown() -> u64 {
    300
}

fn default_max_attempts() -> u32 {
    3
}

fn default_max_response_bytes() -> usize {
    16 << 20
}

fn default_max_event_bytes() -> usize {
    8 << 20
}

/// Credential ids are valid and distinct (`api_key_env` is `default`), and fit in a pool.
fn check_credentials(upstream: &str, has_default: bool, credentials: &[CredentialConfig]) -> Result<(), String> {
    use crate::upstream::credentials::{MAX_CREDENTIALS, valid_id};
    for (i, c) in credentials.iter().enumerate() {
        if !valid_id(&c.id) {
            return Err(format!(
                "upstream `{upstream}`: credential id {:?}: expected 1 to 64 ASCII letters, digits, `-`, `_` or `.`",
                c.id
            ));
        }
        if credentials[..i].iter().any(|o| o.id == c.id) || (has_default && c.id == "default") {
            return Err(format!(
                "upstream `{upstream}`: credential `{}` is listed twice (`api_key_env` is the credential `default`)",
                c.id
            ));
        }
    }
    if credentials.len() + usize::from(has_default) > MAX_CREDENTIALS {
        return Err(format!(
            "upstream `{upstream}`: expected at most {MAX_CREDENTIALS} credentials, found {}",
            credentials.len()
        ));
    }
    Ok(())
}

/// Whether `host` (as in a URL: IPv6 in brackets) is `localhost` or a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks an `openai` upstream's `base_url`: https, or http to loopback, or http allowed.
fn check_base_url(upstream: &str, base_url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let uri: http::Uri = base_url
        .parse()
        .map_err(|e| format!("upstream `{upstream}`: base_url {base_url:?} is not a valid URL: {e}"))?;
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| {
        format!("upstream `{upstream}`: base_url {base_url:?}: expected an absolute URL with a host, found none")
    })?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_insecure_http || is_loopback_host(host) => Ok(()),
        Some("http") => Err(format!(
            "upstream `{upstream}`: base_url is http:// to host `{host}`, which is not loopback: the API key \
             and prompts would cross the network in cleartext; expected https://, or set \
             `allow_insecure_http = true` on this upstream to allow it"
        )),
        other => Err(format!(
            "upstream `{upstream}`: base_url {base_url:?}: expected scheme http or https, found {}",
            other.unwrap_or("none")
        )),
    }
}

/// Reads the CA certificates of an upstream's `ca_file`.
fn read_ca_file(upstream: &str, path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let what = || format!("upstream `{upstream}`: ca_file {}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: expected a readable PEM file of certificates: {e}", what()))?;
    if certs.is_empty() {
        return Err(format!("{}: expected at least one PEM certificate, found none", what()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{}: certificate {} is not usable as a trust anchor: {e}", what(), i + 1))?;
    }
    Ok(certs)
}

fn default_chunks() -> usize {
    8
}

fn default_connect_timeout() -> u64 {
    5_000
}

fn default_request_timeout() -> u64 {
    120_000
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: UpstreamKind,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model name clients ask for.
    pub name: String,
    /// The built-in upstream that serves it; or:
    #[serde(default)]
    pub upstream: Option<String>,
    /// The executor plugin (by instance name) that serves it.
    #[serde(default)]
    pub executor: Option<String>,
    /// The name sent upstream; defaults to `name`.
    #[serde(default)]
    pub upstream_model: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// A plugin error or panic fails the request with a 5xx naming the plugin.
    #[default]
    FailClosed,
    /// A plugin error or panic is logged and the plugin skipped for that request.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin's `.so`; relative paths are resolved against the config file's directory
    /// (for the embedded default, the gateway executable's directory).
    pub path: PathBuf,
    /// The instance name (default: the name the plugin declares). The same `.so` can be loaded
    /// several times under different names with different configs: one executor per provider
    /// account, say.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Plugins run in ascending order; equal orders keep their listing order.
    #[serde(default)]
    pub order: i64,
    #[serde(default)]
    pub on_error: FailMode,
    /// Run this plugin's hooks under `block_in_place`, for plugins that may block (I/O, locks,
    /// sleeps): the worker's other requests move to another thread meanwhile.
    #[serde(default)]
    pub isolate: bool,
    /// Panics within `quarantine_window_secs` after which the plugin is quarantined (not called;
    /// its requests fail with 503 if fail-closed, skip it if fail-open). 0 never quarantines.
    #[serde(default = "default_quarantine")]
    pub quarantine_after: u32,
    /// The window in which `quarantine_after` panics are counted.
    #[serde(default = "default_quarantine_window")]
    pub quarantine_window_secs: f64,
    /// Time after which one request probes a quarantined plugin: if that call does not panic the
    /// plugin is re-enabled, otherwise it waits as long again. 0 never probes (until reloaded).
    #[serde(default = "default_quarantine_probe")]
    pub quarantine_probe_secs: f64,
    /// Whether the gateway's auth plugins run before this plugin's endpoint routes
    /// (`/plugins/{name}/...`; its resource routes are public and its management routes need
    /// the admin token either way). Off for an endpoint that checks its callers itself, such as
    /// a webhook receiver verifying a signature.
    #[serde(default = "yes")]
    pub endpoint_auth: bool,
    /// The plugin's own config, validated against its JSON Schema and handed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

fn yes() -> bool {
    true
}

fn default_quarantine() -> u32 {
    3
}

fn default_quarantine_window() -> f64 {
    60.0
}

fn default_quarantine_probe() -> f64 {
    30.0
}

/// A plugin's quarantine settings, as the pipeline uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuarantinePolicy {
    /// `None`: never quarantine.
    pub after: Option<u32>,
    pub window: std::time::Duration,
    /// `None`: never probe.
    pub probe_after: Option<std::time::Duration>,
}

impl PluginConfig {
    pub fn quarantine(&self) -> QuarantinePolicy {
        let secs = |s: f64| std::time::Duration::from_secs_f64(s);
        QuarantinePolicy {
            after: (self.quarantine_after > 0).then_some(self.quarantine_after),
            window: secs(self.quarantine_window_secs),
            probe_after: (self.quarantine_probe_secs > 0.0).then(|| secs(self.quarantine_probe_secs)),
        }
    }
}

/// A config file that could not be used.
#[derive(Debug)]
pub enum ConfigError {
    Read { path: PathBuf, source: std::io::Error },
    Parse { origin: String, source: toml::de::Error },
    Invalid { origin: String, message: String },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            ConfigError::Parse { origin, source } => write!(f, "invalid config {origin}: {source}"),
            ConfigError::Invalid { origin, message } => {
                write!(f, "invalid config {origin}: {message}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Parse { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

impl GatewayConfig {
    /// Parses `text`; relative plugin paths and the data dir are resolved against `base_dir`.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse_in(text, origin, base_dir, base_dir)
    }

    /// Like [`GatewayConfig::parse`], with the data dir resolved against `data_base` instead.
    fn parse_in(text: &str, origin: &str, base_dir: &Path, data_base: &Path) -> Result<Self, ConfigError> {
        let mut config: GatewayConfig =
            toml::from_str(text).map_err(|source| ConfigError::Parse { origin: origin.into(), source })?;
        if config.data_dir.is_relative() {
            config.data_dir = data_base.join(&config.data_dir);
        }
        for plugin in &mut config.plugins {
            if plugin.path.is_relative() {
                plugin.path = base_dir.join(&plugin.path);
            }
        }
        let invalid = |message| ConfigError::Invalid { origin: origin.into(), message };
        for up in &mut config.upstreams {
            if let UpstreamKind::Openai { ca_file: Some(path), ca_certs, .. } = &mut up.kind {
                if path.is_relative() {
                    *path = base_dir.join(&*path);
                }
                *ca_certs = read_ca_file(&up.name, path).map_err(invalid)?;
            }
        }
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// The embedded default, with plugins next to the running executable and data in `./data`.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        // Its plugins sit next to the executable; its data goes where it is run from (the
        // executable's directory need not be writable).
        Self::parse_in(DEFAULT_CONFIG, "(embedded default)", &exe_dir, Path::new(""))
    }

    fn validate(&self) -> Result<(), String> {
        let ratio = self.telemetry.sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!("telemetry.sample_ratio: expected a share from 0 to 1, found {ratio}"));
        }
        for (name, value) in &self.telemetry.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
                return Err(format!(
                    "telemetry.headers: expected HTTP header names and visible ASCII values, found {name:?}"
                ));
            }
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            let uri: Option<http::Uri> = endpoint.parse().ok();
            if !uri.is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()) {
                return Err(format!(
                    "telemetry.otlp_endpoint: expected an http:// or https:// URL such as \
                     \"http://127.0.0.1:4318/v1/traces\", found {endpoint:?}"
                ));
            }
        }
        for model in &self.models {
            match (&model.upstream, &model.executor) {
                (Some(upstream), None) => {
                    if !self.upstreams.iter().any(|u| u.name == *upstream) {
                        let known: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
                        return Err(format!(
                            "model `{}` routes to upstream `{upstream}`, expected one of {known:?}",
                            model.name
                        ));
                    }
                }
                // Which plugin instance serves it is known once plugins are loaded (see `App::new`).
                (None, Some(_)) => {}
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "model `{}` names both an upstream and an executor: expected exactly one of them",
                        model.name
                    ));
                }
                (None, None) => {
                    return Err(format!(
                        "model `{}` names no upstream and no executor: expected `upstream = \"...\"` or `executor = \"...\"`",
                        model.name
                    ));
                }
            }
        }
        for (i, model) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|m| m.name == model.name) {
                return Err(format!("model `{}` is listed twice", model.name));
            }
        }
        for (i, up) in self.upstreams.iter().enumerate() {
            if self.upstreams[..i].iter().any(|u| u.name == up.name) {
                return Err(format!("upstream `{}` is listed twice", up.name));
            }
        }
        for up in &self.upstreams {
            if let UpstreamKind::Openai {
                base_url,
                allow_insecure_http,
                max_response_bytes,
                max_event_bytes,
                credentials,
                api_key_env,
                rate_limit_cooldown_secs,
                auth_failure_cooldown_secs,
                max_attempts,
                ..
            } = &up.kind
            {
                check_base_url(&up.name, base_url, *allow_insecure_http)?;
                check_credentials(&up.name, api_key_env.is_some(), credentials)?;
                const WEEK: u64 = 7 * 86_400;
                if *rate_limit_cooldown_secs > WEEK || *auth_failure_cooldown_secs > WEEK || *max_attempts == 0 {
                    return Err(format!(
                        "upstream `{}`: expected cooldowns of at most {WEEK} s and max_attempts of at least 1, found \
                         {rate_limit_cooldown_secs}, {auth_failure_cooldown_secs} and {max_attempts}",
                        up.name
                    ));
                }
                if *max_response_bytes == 0 || *max_event_bytes == 0 {
                    return Err(format!(
                        "upstream `{}`: max_response_bytes and max_event_bytes must be at least 1, found {} and {}",
                        up.name, max_response_bytes, max_event_bytes
                    ));
                }
            }
        }
        if self.limits.max_body_bytes == 0 {
            return Err("limits.max_body_bytes must be at least 1".into());
        }
        if self.limits.max_connections == 0 || self.limits.write_timeout_ms == 0 || self.limits.executor_timeout_ms == 0
        {
            return Err(
                "limits.max_connections, limits.write_timeout_ms and limits.executor_timeout_ms must be at least 1"
                    .into(),
            );
        }
        if self.collector_queue == 0 || self.event_queue == 0 {
            return Err("collector_queue and event_queue must be at least 1".into());
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.logging.plugin_level.as_str()) {
            return Err(format!(
                "logging.plugin_level: expected one of error, warn, info, debug, trace, found {:?}",
                self.logging.plugin_level
            ));
        }
        for plugin in &self.plugins {
            for (name, value) in [
                ("quarantine_window_secs", plugin.quarantine_window_secs),
                ("quarantine_probe_secs", plugin.quarantine_probe_secs),
            ] {
                if !(value.is_finite() && (0.0..=1e9).contains(&value)) {
                    return Err(format!(
                        "plugin {}: {name} must be between 0 and 1e9 seconds, found {value}",
                        plugin.path.display()
                    ));
                }
            }
        }
        for key in &self.api_keys {
            if !self.apps.iter().any(|a| a.id == key.app) {
                return Err(format!("api key for app `{}`: expected an app listed in [[apps]], found none", key.app));
            }
        }
        Ok(())
    }

    /// Enabled plugins in run order.
    pub fn enabled_plugins(&self) -> Vec<&PluginConfig> {
        let mut plugins: Vec<&PluginConfig> = self.plugins.iter().filter(|p| p.enabled).collect();
        plugins.sort_by_key(|p| p.order);
        plugins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let config = GatewayConfig::parse(DEFAULT_CONFIG, "default", Path::new("/x")).unwrap();
        assert!(!config.plugins.is_empty());
        assert!(config.plugins.iter().all(|p| p.path.starts_with("/x")));
        assert!(config.models.iter().any(|m| m.upstream.as_deref() == Some("mock")));
    }

    /// The rule the default file's header states: the built-in copy resolves plugins against
    /// the executable's directory and data against the working directory; the same text given
    /// with `--config` resolves both against the file's directory.
    #[test]
    fn the_embedded_default_and_a_copy_of_it_resolve_paths_as_documented() {
        let built_in =
            GatewayConfig::parse_in(DEFAULT_CONFIG, "default", Path::new("/opt/gw/bin"), Path::new("")).unwrap();
        assert!(built_in.plugins.iter().all(|p| p.path.starts_with("/opt/gw/bin")));
        assert_eq!(built_in.data_dir, Path::new("data"));
        let copied = GatewayConfig::parse(DEFAULT_CONFIG, "copy", Path::new("/etc/gw")).unwrap();
        assert!(copied.plugins.iter().all(|p| p.path.starts_with("/etc/gw")));
        assert_eq!(copied.data_dir, Path::new("/etc/gw/data"));
        assert!(
            DEFAULT_CONFIG
                .contains("every relative path (plugins,\n# data_dir, ca_file) resolves against that file's directory")
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_directory() {
        let config =
            GatewayConfig::parse("data_dir = \"state\"\n[[plugins]]\npath = \"p.so\"\n", "t", Path::new("/etc/gw"))
                .unwrap();
        assert_eq!(config.data_dir, Path::new("/etc/gw/state"));
        assert_eq!(config.plugins[0].path, Path::new("/etc/gw/p.so"));
        let config = GatewayConfig::parse("data_dir = \"/var/gw\"\n", "t", Path::new("/etc/gw")).unwrap();
        assert_eq!(config.data_dir, Path::new("/var/gw"));
    }

    #[test]
    fn unknown_upstream_is_named() {
        let err = GatewayConfig::parse("[[models]]\nname = \"m\"\nupstream = \"nope\"\n", "t", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("routes to upstream `nope`"), "{err}");
    }

    fn openai(base_url: &str, extra: &str) -> Result<GatewayConfig, String> {
        let text = format!("[[upstreams]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{base_url}\"\n{extra}");
        GatewayConfig::parse(&text, "t", Path::new("/")).map_err(|e| e.to_string())
    }

    #[test]
    fn cleartext_http_is_refused_off_loopback_unless_allowed() {
        let err = openai("http://api.example.com/v1", "").unwrap_err();
        assert!(err.contains("upstream `up`"), "{err}");
        assert!(err.contains("host `api.example.com`"), "{err}");
        assert!(err.contains("allow_insecure_http = true"), "{err}");
        assert!(openai("http://10.0.0.1:8000/v1", "").is_err());
        assert!(openai("http://api.example.com/v1", "allow_insecure_http = true").is_ok());
        for ok in [
            "https://api.example.com/v1",
            "http://127.0.0.1:9/v1",
            "http://127.8.0.1/v1",
            "http://localhost:1/v1",
            "http://[::1]:1/v1",
        ] {
            assert!(openai(ok, "").is_ok(), "{ok}: {:?}", openai(ok, "").err());
        }
        let err = openai("ftp://x/v1", "").unwrap_err();
        assert!(err.contains("expected scheme http or https, found ftp"), "{err}");
        let err = openai("/v1", "").unwrap_err();
        assert!(err.contains("expected an absolute URL with a host"), "{err}");
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = openai("https://x/v1", &format!("ca_file = {:?}", missing.display().to_string())).unwrap_err();
        assert!(err.contains("expected a readable PEM file"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = openai("https://x/v1", &format!("ca_file = {:?}", empty.display().to_string())).unwrap_err();
        assert!(err.contains("expected at least one PEM certificate, found none"), "{err}");
    }

    #[test]
    fn plugins_run_in_order_then_listing_order() {
        let config = GatewayConfig::parse(
            "[[plugins]]\npath = \"a\"\norder = 2\n[[plugins]]\npath = \"b\"\norder = 1\n[[plugins]]\npath = \"c\"\norder = 2\n[[plugins]]\npath = \"d\"\nenabled = false\n",
            "t",
            Path::new("/"),
        )
        .unwrap();
        let names: Vec<_> = config.enabled_plugins().iter().map(|p| p.path.display().to_string()).collect();
        assert_eq!(names, ["/b", "/a", "/c"]);
    }
}
