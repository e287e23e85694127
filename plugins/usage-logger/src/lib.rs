//! DataCollector: appends proxy logs, analytics and budget records to a file as JSON lines, and
//! (with `events`, the default) the events plugins publish: on every topic, or on the `topics`
//! listed. Runs on the gateway's collector and event threads, so file I/O never touches the
//! request path. Lines are buffered and reach the file whole, within `FLUSH_EVERY` of being
//! written (a thread of the plugin flushes) and at shutdown: one write per batch of lines, not
//! one per record. When a newer version takes over (hot swap), this one unsubscribes at once, so
//! an event is logged once even while the old version still finishes its requests.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use plugin_abi::{
    Analytics, Budget, Config, ConfigProvider, DataCollector, Host, Lifecycle, Plugin, PluginError, ProxyLog,
};
use serde::Serialize;
use serde_json::json;

/// How long a written line may wait in the buffer before it reaches the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(plugin_abi::Plugin)]
#[plugin(name = "usage-logger", capabilities(DataCollector, ConfigProvider, Lifecycle))]
pub struct UsageLogger {
    out: Arc<Mutex<Out>>,
    host: Host,
    /// Event subscriptions, ended by `quiesce`.
    subscriptions: Mutex<Vec<u64>>,
    /// Flushes every `FLUSH_EVERY` until the instance stops.
    flusher: Option<JoinHandle<()>>,
}

/// The file, behind a buffer that only ever holds whole lines.
struct Out {
    file: BufWriter<File>,
    /// Reused for each line.
    line: Vec<u8>,
    dirty: bool,
}

impl Out {
    /// Appends one JSON line. `BufWriter` writes out what it holds before taking a line that
    /// does not fit, so the file only ever receives whole lines.
    fn write(&mut self, record: &impl Serialize) -> std::io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.file.write_all(&self.line)?;
        self.dirty = true;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.dirty) {
            self.file.flush()?;
        }
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: String,
    #[serde(default = "yes")]
    events: bool,
    /// Topics to log; none (the default) logs every topic.
    #[serde(default)]
    topics: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Plugin for UsageLogger {
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        if let Some(dir) = std::path::Path::new(&s.path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| PluginError::config(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.path)
            .map_err(|e| PluginError::config(format!("cannot open {}: {e}", s.path)))?;
        let file = BufWriter::with_capacity(64 * 1024, file);
        let out = Arc::new(Mutex::new(Out { file, line: Vec::with_capacity(512), dirty: false }));
        let mut subscriptions = Vec::new();
        if s.events {
            // "" is every topic.
            let topics = if s.topics.is_empty() { vec![String::new()] } else { s.topics };
            for topic in &topics {
                let out = out.clone();
                subscriptions.push(host.subscribe(topic, move |e| {
                    let line = json!({
                        "type": "event", "topic": e.topic, "source": e.source,
                        "direction": format!("{:?}", e.direction).to_lowercase(),
                        "payload": String::from_utf8_lossy(e.payload),
                    });
                    let _ = lock(&out).write(&line);
                })?);
            }
        }
        // Last, after everything that can fail: a failed `init` leaves no thread behind.
        let flusher = spawn_flusher(Arc::downgrade(&out), host.stop_signal())
            .map_err(|e| PluginError::new(format!("cannot start the flush thread: {e}")))?;
        Ok(UsageLogger { out, host, subscriptions: Mutex::new(subscriptions), flusher: Some(flusher) })
    }

    fn shutdown(&mut self) {
        // The gateway fires the stop signal before `shutdown`: the flusher is ending, and must
        // be gone before the library is unloaded. (A mock host never fires it; that flusher
        // ends when the logger is dropped.)
        if self.host.stop_signal().is_stopped() {
            if let Some(flusher) = self.flusher.take() {
                let _ = flusher.join();
            }
        }
        let _ = lock(&self.out).flush();
    }
}

fn lock(out: &Mutex<Out>) -> std::sync::MutexGuard<'_, Out> {
    out.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_flusher(out: Weak<Mutex<Out>>, stop: plugin_abi::StopSignal) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("usage-logger-flush".into()).spawn(move || {
        while !stop.wait_timeout(FLUSH_EVERY) {
            let Some(out) = out.upgrade() else { return };
            let _ = lock(&out).flush();
        }
    })
}

impl ConfigProvider for UsageLogger {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "required": ["path"],
        "additionalProperties": false,
        "properties": {
            "path": { "type": "string", "minLength": 1 },
            "events": { "type": "boolean" },
            "topics": { "type": "array", "items": { "type": "string", "minLength": 1 } }
        }
    }"#;
}

impl Lifecycle for UsageLogger {
    /// A newer version is taking over: it logs events from now on, this one stops at once
    /// (requests still in flight keep it alive for a while, and it must not log events twice).
    fn quiesce(&self) {
        for id in self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            self.host.unsubscribe(id);
        }
    }
}

impl UsageLogger {
    fn write(&self, record: &impl Serialize) -> Result<(), PluginError> {
        lock(&self.out).write(record).map_err(|e| PluginError::new(format!("cannot write usage log: {e}")))
    }
}

// The lines, serialized straight from the records (no intermediate JSON tree).

#[derive(Serialize)]
struct ProxyLine<'a> {
    r#type: &'static str,
    request_id: &'a str,
    app_id: &'a str,
    user_id: &'a str,
    method: &'a str,
    path: &'a str,
    model: &'a str,
    status: u16,
    request_bytes: u64,
    response_bytes: u64,
    latency_us: u64,
    unix_ms: u64,
}

#[derive(Serialize)]
struct AnalyticsLine<'a> {
    r#type: &'static str,
    request_id: &'a str,
    app_id: &'a str,
    user_id: &'a str,
    model: &'a str,
    upstream: &'a str,
    status: u16,
    streamed: bool,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    latency_us: u64,
    ttft_us: u64,
}

#[derive(Serialize)]
struct BudgetLine<'a> {
    r#type: &'static str,
    app_id: &'a str,
    user_id: &'a str,
    model: &'a str,
    total_tokens: u64,
}

impl DataCollector for UsageLogger {
    fn on_proxy_log(&self, l: &ProxyLog<'_>) -> Result<(), PluginError> {
        self.write(&ProxyLine {
            r#type: "proxy_log",
            request_id: l.request_id,
            app_id: l.app_id,
            user_id: l.user_id,
            method: l.method,
            path: l.path,
            model: l.model,
            status: l.status,
            request_bytes: l.request_bytes,
            response_bytes: l.response_bytes,
            latency_us: l.latency_us,
            unix_ms: l.unix_ms,
        })
    }

    fn on_analytics(&self, a: &Analytics<'_>) -> Result<(), PluginError> {
        self.write(&AnalyticsLine {
            r#type: "analytics",
            request_id: a.request_id,
            app_id: a.app_id,
            user_id: a.user_id,
            model: a.model,
            upstream: a.upstream,
            status: a.status,
            streamed: a.streamed,
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            total_tokens: a.total_tokens,
            latency_us: a.latency_us,
            ttft_us: a.ttft_us,
        })
    }

    fn on_budget(&self, b: &Budget<'_>) -> Result<(), PluginError> {
        self.write(&BudgetLine {
            r#type: "budget",
            app_id: b.app_id,
            user_id: b.user_id,
            model: b.model,
            total_tokens: b.total_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::MockHost;

    #[test]
    fn writes_one_json_line_per_record() {
        let dir = std::env::temp_dir().join(format!("usage-logger-test-{}", std::process::id()));
        let path = dir.join("usage.jsonl");
        let config = json!({ "path": path }).to_string();
        let host = MockHost::new();
        let mut logger: UsageLogger = host.init(&config).unwrap();
        let budget = Budget { app_id: "app", user_id: "u", model: "m", total_tokens: 7 };
        logger.on_budget(&budget).unwrap();
        logger.on_budget(&budget).unwrap();
        // Subscribed to every topic through the host.
        host.host().publish("any.topic", b"hello", plugin_abi::Direction::Up).unwrap();
        // Buffered: the flush thread writes the lines out within FLUSH_EVERY.
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 3 {
                break;
            }
            std::thread::sleep(FLUSH_EVERY / 4);
        }
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["type"], "budget");
        assert_eq!(lines[1]["total_tokens"], 7);
        assert_eq!(
            (lines[2]["topic"].as_str(), lines[2]["payload"].as_str(), lines[2]["direction"].as_str()),
            (Some("any.topic"), Some("hello"), Some("up"))
        );
        // What is still buffered at shutdown is written then.
        logger.on_budget(&budget).unwrap();
        logger.shutdown();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn logs_only_the_listed_topics_and_stops_when_quiesced() {
        let dir = std::env::temp_dir().join(format!("usage-logger-topics-{}", std::process::id()));
        let path = dir.join("usage.jsonl");
        let config = json!({ "path": path, "topics": ["ratelimit.exceeded", "auth.denied"] }).to_string();
        let host = MockHost::new();
        let mut logger: UsageLogger = host.init(&config).unwrap();
        let publish = |topic: &str| host.host().publish(topic, b"{}", plugin_abi::Direction::Local).unwrap();
        publish("ratelimit.exceeded");
        publish("something.else");
        publish("auth.denied");
        logger.quiesce();
        publish("ratelimit.exceeded");
        logger.shutdown();
        let text = std::fs::read_to_string(&path).unwrap();
        let topics: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["topic"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(topics, ["ratelimit.exceeded", "auth.denied"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
