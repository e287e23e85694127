//! DataCollector: appends proxy logs, analytics and budget records to a file as JSON lines, and
//! (with `events`, the default) the events plugins publish: on every topic, or on the `topics`
//! listed. Runs on the gateway's collector and event threads, so file I/O never touches the
//! request path. When a newer version takes over (hot swap), this one unsubscribes at once, so an
//! event is logged once even while the old version still finishes its requests.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};

use plugin_abi::{
    Analytics, Budget, Config, ConfigProvider, DataCollector, Host, Lifecycle, Plugin, PluginError, ProxyLog,
};
use serde_json::json;

#[derive(plugin_abi::Plugin)]
#[plugin(name = "usage-logger", capabilities(DataCollector, ConfigProvider, Lifecycle))]
pub struct UsageLogger {
    out: Arc<Mutex<BufWriter<File>>>,
    host: Host,
    /// Event subscriptions, ended by `quiesce`.
    subscriptions: Mutex<Vec<u64>>,
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
        let out = Arc::new(Mutex::new(BufWriter::new(file)));
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
                    let _ = write_line(&out, &line);
                })?);
            }
        }
        Ok(UsageLogger { out, host, subscriptions: Mutex::new(subscriptions) })
    }

    fn shutdown(&mut self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
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

/// One line per record, flushed, so a reader never sees half a record.
fn write_line(out: &Mutex<BufWriter<File>>, line: &serde_json::Value) -> Result<(), PluginError> {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| PluginError::new(format!("cannot write usage log: {e}")))
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
    fn write(&self, line: serde_json::Value) -> Result<(), PluginError> {
        write_line(&self.out, &line)
    }
}

impl DataCollector for UsageLogger {
    fn on_proxy_log(&self, l: &ProxyLog<'_>) -> Result<(), PluginError> {
        self.write(json!({
            "type": "proxy_log", "request_id": l.request_id, "app_id": l.app_id, "user_id": l.user_id,
            "method": l.method, "path": l.path, "model": l.model, "status": l.status,
            "request_bytes": l.request_bytes, "response_bytes": l.response_bytes,
            "latency_us": l.latency_us, "unix_ms": l.unix_ms,
        }))
    }

    fn on_analytics(&self, a: &Analytics<'_>) -> Result<(), PluginError> {
        self.write(json!({
            "type": "analytics", "request_id": a.request_id, "app_id": a.app_id, "user_id": a.user_id,
            "model": a.model, "upstream": a.upstream, "status": a.status, "streamed": a.streamed,
            "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
            "total_tokens": a.total_tokens, "latency_us": a.latency_us, "ttft_us": a.ttft_us,
        }))
    }

    fn on_budget(&self, b: &Budget<'_>) -> Result<(), PluginError> {
        self.write(json!({
            "type": "budget", "app_id": b.app_id, "user_id": b.user_id, "model": b.model, "total_tokens": b.total_tokens,
        }))
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
        let logger: UsageLogger = host.init(&config).unwrap();
        let budget = Budget { app_id: "app", user_id: "u", model: "m", total_tokens: 7 };
        logger.on_budget(&budget).unwrap();
        logger.on_budget(&budget).unwrap();
        // Subscribed to every topic through the host.
        host.host().publish("any.topic", b"hello", plugin_abi::Direction::Up).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["type"], "budget");
        assert_eq!(lines[1]["total_tokens"], 7);
        assert_eq!(
            (lines[2]["topic"].as_str(), lines[2]["payload"].as_str(), lines[2]["direction"].as_str()),
            (Some("any.topic"), Some("hello"), Some("up"))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn logs_only_the_listed_topics_and_stops_when_quiesced() {
        let dir = std::env::temp_dir().join(format!("usage-logger-topics-{}", std::process::id()));
        let path = dir.join("usage.jsonl");
        let config = json!({ "path": path, "topics": ["ratelimit.exceeded", "auth.denied"] }).to_string();
        let host = MockHost::new();
        let logger: UsageLogger = host.init(&config).unwrap();
        let publish = |topic: &str| host.host().publish(topic, b"{}", plugin_abi::Direction::Local).unwrap();
        publish("ratelimit.exceeded");
        publish("something.else");
        publish("auth.denied");
        logger.quiesce();
        publish("ratelimit.exceeded");
        let text = std::fs::read_to_string(&path).unwrap();
        let topics: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["topic"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(topics, ["ratelimit.exceeded", "auth.denied"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
