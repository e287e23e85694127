//! DataCollector: appends proxy logs, analytics and budget records to a file as JSON lines, and
//! (with `events`, the default) the events plugins publish: on every topic, or on the `topics`
//! listed. Runs on the gateway's collector and event threads, so file I/O never touches the
//! request path. Lines are buffered and reach the file whole, within `FLUSH_EVERY` of being
//! written (a thread of the plugin flushes) and at shutdown: one write per batch of lines, not
//! one per record. When a newer version takes over (hot swap), this one unsubscribes at once, so
//! an event is logged once even while the old version still finishes its requests.
//!
//! Its command `summary` (`gateway plugin usage-logger summary`) prints totals per app and
//! model from the log.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use plugin_abi::{
    Analytics, Budget, CommandCall, CommandOutput, CommandSpec, Commands, Config, ConfigProvider, DataCollector,
    Direction, FlagSpec, Host, Lifecycle, Plugin, PluginError, ProxyLog,
};

/// How long a written line may wait in the buffer before it reaches the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(plugin_abi::Plugin)]
#[plugin(name = "usage-logger", capabilities(DataCollector, ConfigProvider, Lifecycle, Commands))]
pub struct UsageLogger {
    /// The log file's path, as configured.
    path: String,
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
    /// Appends one JSON line, the object `fields` writes. `BufWriter` writes out what it holds
    /// before taking a line that does not fit, so the file only ever receives whole lines.
    fn write(&mut self, fields: impl FnOnce(&mut Object<'_>)) -> std::io::Result<()> {
        self.line.clear();
        let mut object = Object { out: &mut self.line, first: true };
        object.out.push(b'{');
        fields(&mut object);
        self.line.extend_from_slice(b"}\n");
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

/// One JSON object being written: keys are this plugin's own literals (written as they are),
/// string values are escaped only when they hold a byte that needs it. Three lines a request go
/// through here on the collector thread; `serde_json`'s serializer escapes every key as well.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Object<'_> {
    fn key(&mut self, key: &str) -> &mut Self {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            // A `str` always serializes.
            let _ = serde_json::to_writer(&mut *self.out, value);
        }
        self
    }

    fn num(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        self
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
                    let direction = match e.direction {
                        Direction::Local => "local",
                        Direction::Up => "up",
                        Direction::Down => "down",
                    };
                    let _ = lock(&out).write(|o| {
                        o.str("type", "event").str("topic", e.topic).str("source", e.source);
                        o.str("direction", direction).str("payload", &String::from_utf8_lossy(e.payload));
                    });
                })?);
            }
        }
        // Last, after everything that can fail: a failed `init` leaves no thread behind.
        let flusher = spawn_flusher(Arc::downgrade(&out), host.stop_signal())
            .map_err(|e| PluginError::new(format!("cannot start the flush thread: {e}")))?;
        Ok(UsageLogger { path: s.path, out, host, subscriptions: Mutex::new(subscriptions), flusher: Some(flusher) })
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
    fn write(&self, fields: impl FnOnce(&mut Object<'_>)) -> Result<(), PluginError> {
        lock(&self.out).write(fields).map_err(|e| PluginError::new(format!("cannot write usage log: {e}")))
    }
}

impl DataCollector for UsageLogger {
    fn on_proxy_log(&self, l: &ProxyLog<'_>) -> Result<(), PluginError> {
        self.write(|o| {
            o.str("type", "proxy_log").str("request_id", l.request_id).str("app_id", l.app_id);
            o.str("user_id", l.user_id).str("method", l.method).str("path", l.path).str("model", l.model);
            o.num("status", l.status.into()).num("request_bytes", l.request_bytes);
            o.num("response_bytes", l.response_bytes).num("latency_us", l.latency_us).num("unix_ms", l.unix_ms);
        })
    }

    fn on_analytics(&self, a: &Analytics<'_>) -> Result<(), PluginError> {
        self.write(|o| {
            o.str("type", "analytics").str("request_id", a.request_id).str("app_id", a.app_id);
            o.str("user_id", a.user_id).str("model", a.model).str("upstream", a.upstream);
            o.num("status", a.status.into()).bool("streamed", a.streamed);
            o.num("prompt_tokens", a.prompt_tokens).num("completion_tokens", a.completion_tokens);
            o.num("total_tokens", a.total_tokens).num("latency_us", a.latency_us).num("ttft_us", a.ttft_us);
        })
    }

    fn on_budget(&self, b: &Budget<'_>) -> Result<(), PluginError> {
        self.write(|o| {
            o.str("type", "budget").str("app_id", b.app_id).str("user_id", b.user_id).str("model", b.model);
            o.num("total_tokens", b.total_tokens);
        })
    }
}

impl Commands for UsageLogger {
    const COMMANDS: &'static [CommandSpec] =
        &[CommandSpec::new("summary", "Requests, errors and tokens per app and model, from the usage log").flags(&[
            FlagSpec::value("app", "Only this app id"),
            FlagSpec::value("model", "Only this model"),
            FlagSpec::switch("json", "One JSON object per app and model instead of a table"),
        ])];

    async fn run_command(&self, call: CommandCall) -> Result<CommandOutput, PluginError> {
        match call.command.as_str() {
            "summary" => {
                // Lines still buffered reach the file first (a gateway running on the same log
                // writes its own within `FLUSH_EVERY`).
                let _ = lock(&self.out).flush();
                let text = std::fs::read_to_string(&self.path).map_err(|e| {
                    PluginError::new(format!(
                        "cannot read the usage log {}: {e} (expected the file `path` names)",
                        self.path
                    ))
                })?;
                let totals = Totals::of(&text, call.flag("app"), call.flag("model"));
                Ok(totals.render(call.switch("json")))
            }
            other => Err(PluginError::new(format!("unknown command `{other}`: expected `summary`"))),
        }
    }
}

/// Totals per (app, model) from the log's `analytics` lines, in first-seen order.
#[derive(Default)]
struct Totals {
    rows: Vec<Row>,
    /// Lines that are not JSON objects (a line cut by a crash, say).
    skipped: usize,
}

#[derive(Default, Clone)]
struct Row {
    app: String,
    model: String,
    requests: u64,
    errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Totals {
    fn of(log: &str, app: Option<&str>, model: Option<&str>) -> Totals {
        let mut totals = Totals::default();
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                totals.skipped += 1;
                continue;
            };
            if record["type"] != "analytics" {
                continue;
            }
            let field = |name: &str| record[name].as_str().unwrap_or_default();
            let number = |name: &str| record[name].as_u64().unwrap_or(0);
            if app.is_some_and(|a| a != field("app_id")) || model.is_some_and(|m| m != field("model")) {
                continue;
            }
            let at = match totals.rows.iter().position(|r| r.app == field("app_id") && r.model == field("model")) {
                Some(i) => i,
                None => {
                    totals.rows.push(Row {
                        app: field("app_id").into(),
                        model: field("model").into(),
                        ..Row::default()
                    });
                    totals.rows.len() - 1
                }
            };
            let row = &mut totals.rows[at];
            row.requests += 1;
            row.errors += u64::from(number("status") >= 400);
            row.prompt_tokens += number("prompt_tokens");
            row.completion_tokens += number("completion_tokens");
            row.total_tokens += number("total_tokens");
        }
        totals
    }

    fn render(&self, json: bool) -> CommandOutput {
        let mut out = String::new();
        let name = |s: &str| if s.is_empty() { "(none)".to_owned() } else { s.to_owned() };
        if json {
            for r in &self.rows {
                let line = serde_json::json!({
                    "app_id": r.app, "model": r.model, "requests": r.requests, "errors": r.errors,
                    "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                    "total_tokens": r.total_tokens,
                });
                out.push_str(&format!("{line}\n"));
            }
        } else {
            let all = self.rows.iter().fold(Row { app: "total".into(), ..Row::default() }, |mut t, r| {
                t.requests += r.requests;
                t.errors += r.errors;
                t.prompt_tokens += r.prompt_tokens;
                t.completion_tokens += r.completion_tokens;
                t.total_tokens += r.total_tokens;
                t
            });
            let header = ["app", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"];
            let cells = |r: &Row| {
                [
                    name(&r.app),
                    if r.app == "total" && r.model.is_empty() { String::new() } else { name(&r.model) },
                    r.requests.to_string(),
                    r.errors.to_string(),
                    r.prompt_tokens.to_string(),
                    r.completion_tokens.to_string(),
                    r.total_tokens.to_string(),
                ]
            };
            let mut table: Vec<[String; 7]> = vec![header.map(str::to_owned)];
            table.extend(self.rows.iter().map(cells));
            table.push(cells(&all));
            let widths: Vec<usize> = (0..7).map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
            for row in &table {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (cell, w))| if i < 2 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
                    .collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
            }
        }
        let mut output = CommandOutput::ok(out);
        if self.skipped > 0 {
            output.stderr = format!("skipped {} line(s) that are not JSON\n", self.skipped);
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::MockHost;
    use serde_json::json;

    #[test]
    fn writes_one_json_line_per_record() {
        let dir = std::env::temp_dir().join(format!("usage-logger-test-{}", std::process::id()));
        let path = dir.join("usage.jsonl");
        let config = json!({ "path": path }).to_string();
        let host = MockHost::new();
        let mut logger: UsageLogger = host.init(&config).unwrap();
        let budget = Budget { app_id: "app", user_id: "u", model: "m", total_tokens: 7 };
        logger.on_budget(&budget).unwrap();
        // A value that needs escaping.
        logger.on_budget(&Budget { model: "a \"quoted\"\n\u{1} \\ model", ..budget }).unwrap();
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
        assert_eq!(
            lines[0],
            json!({"type": "budget", "app_id": "app", "user_id": "u", "model": "m", "total_tokens": 7})
        );
        assert_eq!(lines[1]["model"], "a \"quoted\"\n\u{1} \\ model");
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
    fn summary_totals_analytics_per_app_and_model() {
        let dir = std::env::temp_dir().join(format!("usage-logger-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.jsonl");
        let line = |app: &str, model: &str, status: u16, tokens: u64| {
            json!({"type": "analytics", "app_id": app, "model": model, "status": status,
                   "prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1})
            .to_string()
        };
        let log = [
            line("a", "m1", 200, 10),
            line("b", "m1", 200, 5),
            r#"{"type":"proxy_log","app_id":"a"}"#.to_owned(),
            line("a", "m1", 500, 0),
            "{cut off".to_owned(),
            line("a", "m2", 200, 3),
        ];
        std::fs::write(&path, log.join("\n")).unwrap();
        let logger: UsageLogger = MockHost::new().init(&json!({ "path": path, "events": false }).to_string()).unwrap();
        let run = |call: CommandCall| plugin_abi::testing::block_on(logger.run_command(call)).unwrap();
        let table = run(CommandCall::new("summary"));
        let rows: Vec<Vec<&str>> = table.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows[0],
            ["app", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"]
        );
        assert_eq!(rows[1], ["a", "m1", "2", "1", "10", "2", "12"]);
        assert_eq!(rows[2], ["b", "m1", "1", "0", "5", "1", "6"]);
        assert_eq!(rows[3], ["a", "m2", "1", "0", "3", "1", "4"]);
        assert_eq!(rows[4], ["total", "4", "1", "18", "4", "22"]);
        assert_eq!((table.status, table.stderr.as_str()), (0, "skipped 1 line(s) that are not JSON\n"));
        let only = run(CommandCall::new("summary").with("app", "a").with("model", "m2").with("json", "true"));
        let parsed: serde_json::Value = serde_json::from_str(only.stdout.trim()).unwrap();
        assert_eq!(parsed["total_tokens"], 4);
        assert_eq!(only.stdout.lines().count(), 1);
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
