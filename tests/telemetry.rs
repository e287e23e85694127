//! OpenTelemetry export through the real gateway binary: spans arrive at a local OTLP/HTTP
//! receiver (`tests/e2e/otlp_receiver.py`, which decodes them with the official
//! `opentelemetry-proto` package), one per request with its hook and upstream children.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_tests::{Gateway, chat_body, target_dir};
use serde_json::Value;

/// OTLP span kinds (opentelemetry-proto's `Span.SpanKind`).
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// The receiver process; its span lines are collected as they arrive. Killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let python = target_dir().parent().unwrap().join("e2e-venv/bin/python");
        assert!(python.is_file(), "{} is missing: run `make build`, which installs the clients", python.display());
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/otlp_receiver.py");
        let mut child = Command::new(python).arg(script).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out.next().expect("the receiver prints its port").unwrap();
        let port = first.strip_prefix("listening ").expect("`listening PORT`").parse().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver { child, port, lines }
    }

    /// What has arrived once `done` holds for it (or after 10 s, whatever arrived).
    fn wait_for(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if done(&lines) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(endpoint: &str) -> String {
    format!(
        r#"
[telemetry]
otlp_endpoint = "{endpoint}"
service_name = "gateway-under-test"
export_interval_ms = 100
[telemetry.headers]
x-collector-key = "collector-secret"

[[upstreams]]
name = "mock"
kind = "mock"
chunks = 3
chunk_delay_ms = 40

[[models]]
name = "m"
upstream = "mock"

[[plugins]]
path = "{{target}}/libheader_stamp.so"
[plugins.config.headers]
x-stamp = "1"
"#
    )
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[test]
fn each_request_is_a_span_with_genai_attributes_and_hook_and_upstream_children() {
    let receiver = Receiver::start();
    let gw = Gateway::start(&config(&format!("http://127.0.0.1:{}/v1/traces", receiver.port)));
    let r = gw.chat(None, &chat_body("m", "trace me", false));
    assert_eq!(r.status, 200, "{}", r.body);
    let plain_id = r.header("x-request-id").unwrap().to_owned();
    let r = gw.chat(None, &chat_body("m", "trace my stream", true));
    assert_eq!(r.status, 200, "{}", r.body);
    let stream_id = r.header("x-request-id").unwrap().to_owned();
    let r = gw.chat(None, &chat_body("no-such-model", "hi", false));
    assert_eq!(r.status, 404, "{}", r.body);
    // Stopping flushes what is still queued.
    let (status, logs, _) = gw.stop();
    assert!(status.success(), "{logs}");
    let chats =
        |lines: &[Value]| lines.iter().filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("chat "))).count();
    // Three server spans and two upstream calls, all named `chat ...`.
    let spans = receiver.wait_for(|lines| chats(lines) >= 5);
    assert!(spans.iter().all(|s| s.get("error").is_none()), "the receiver refused an export: {spans:#?}");

    let request = |id: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == SERVER && attr(s, "gateway.request_id") == id)
            .unwrap_or_else(|| panic!("no server span for request {id}: {spans:#?}\n{logs}"))
    };
    let children = |parent: &Value| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| s["parent_span_id"] == parent["span_id"] && s["trace_id"] == parent["trace_id"])
            .collect()
    };

    let plain = request(&plain_id);
    assert_eq!(plain["name"], "chat m", "{plain:#}");
    assert_eq!(plain["parent_span_id"], "", "a request's span is a root: {plain:#}");
    assert_eq!(attr(plain, "gen_ai.operation.name"), "chat");
    assert_eq!(attr(plain, "gen_ai.request.model"), "m");
    assert_eq!(attr(plain, "gen_ai.provider.name"), "mock");
    assert!(attr(plain, "gen_ai.usage.input_tokens").as_i64().unwrap() > 0, "{plain:#}");
    assert!(attr(plain, "gen_ai.usage.output_tokens").as_i64().unwrap() > 0, "{plain:#}");
    assert_eq!(attr(plain, "http.response.status_code"), 200);
    assert_eq!(plain["resource"]["service.name"], "gateway-under-test");
    assert_eq!(plain["header"], "collector-secret", "the configured headers go with each export");
    let kids = children(plain);
    let hooks: Vec<_> = kids.iter().filter(|s| s["name"] == "hook").collect();
    assert!(!hooks.is_empty(), "no hook spans under {plain:#}: {kids:#?}");
    assert!(hooks.iter().all(|h| attr(h, "plugin") == "header-stamp" && attr(h, "outcome").is_string()), "{hooks:#?}");
    let upstream: Vec<_> = kids.iter().filter(|s| s["kind"] == CLIENT).collect();
    assert_eq!(upstream.len(), 1, "{kids:#?}");
    assert_eq!(upstream[0]["name"], "chat m");
    assert_eq!(attr(upstream[0], "gateway.upstream"), "mock");
    assert!(upstream[0]["duration_ns"].as_u64().unwrap() <= plain["duration_ns"].as_u64().unwrap());

    // A streamed request's span ends with its stream.
    let streamed = request(&stream_id);
    assert_eq!(attr(streamed, "gateway.streamed"), true, "{streamed:#}");
    assert_eq!(attr(streamed, "http.response.status_code"), 200);
    let calls: Vec<_> = children(streamed).into_iter().filter(|s| s["kind"] == CLIENT).collect();
    assert_eq!(calls.len(), 1);
    // It lasted the stream (two 40 ms gaps between chunks); the upstream call, only its head.
    let (whole, head) = (streamed["duration_ns"].as_u64().unwrap(), calls[0]["duration_ns"].as_u64().unwrap());
    assert!(whole >= 80_000_000 && head < whole, "span {whole} ns, upstream call {head} ns");

    // A refused request is traced too, with its status.
    let refused = spans
        .iter()
        .find(|s| s["kind"] == SERVER && attr(s, "http.response.status_code") == 404)
        .unwrap_or_else(|| panic!("no span for the 404: {spans:#?}"));
    assert_eq!(attr(refused, "gen_ai.request.model"), "no-such-model");
}

#[test]
fn an_endpoint_that_is_not_an_http_url_is_refused_at_start() {
    let stderr = Gateway::refused("[telemetry]\notlp_endpoint = \"localhost:4318\"\n");
    assert!(
        stderr.contains("telemetry.otlp_endpoint: expected an http:// or https:// URL")
            && stderr.contains("\"localhost:4318\""),
        "{stderr}"
    );
}

/// With export on and no collector listening, requests are served as before and the export
/// failure is logged, not answered to clients.
#[test]
fn a_collector_that_is_down_costs_requests_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = Gateway::start(&config(&format!("http://127.0.0.1:{port}/v1/traces")));
    for _ in 0..5 {
        let r = gw.chat(None, &chat_body("m", "nobody collects", false));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let (status, logs, _) = gw.stop();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("BatchSpanProcessor.ExportError"), "the failed export is not in the log:\n{logs}");
}
