//! Executor plugins through the real gateway: `anthropic-executor` against the in-process mock
//! and against `mock-server` over HTTP, several instances of one `.so`, `count_tokens`, the
//! admin passthrough, and an executor that misbehaves inside its futures and streams.

use gateway_tests::{Gateway, MockServer, chat_body};

const ADMIN: &str = "admin-secret-token";

/// The in-process mock upstream, `anthropic-executor` on it, and a collector.
fn in_process(extra: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

[[upstreams]]
name = "mock"
kind = "mock"
chunks = 4

[[models]]
name = "mock-gpt"
upstream = "mock"

[[models]]
name = "claude"
executor = "anthropic-executor"
upstream_model = "claude-mock-1"

[[plugins]]
path = "{{target}}/libanthropic_executor.so"
[plugins.config]
upstream = "mock"
api_key = "mock-key"
models = ["claude"]

[[plugins]]
path = "{{target}}/libusage_logger.so"
[plugins.config]
path = "{{dir}}/usage.jsonl"
{extra}
"#
    )
}

fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("usage.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn an_executor_serves_openai_chat_with_every_phase_around_it() {
    let gw = Gateway::start(&in_process(""));
    let r = gw.chat(None, &chat_body("claude", "hello from the test", false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude");
    assert_eq!(v["choices"][0]["message"]["content"], "Mock reply to: hello from the test");
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert!(r.header("x-request-id").is_some());

    let r = gw.chat(None, &chat_body("claude", "stream this one please", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.streamed_text(), "Mock reply to: stream this one please");
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    assert!(r.events().len() >= 5, "{:?}", r.events());

    // Models routed to executors are listed, owned by the executor instance.
    let models = gw.get("/v1/models").json();
    let claude = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "claude").cloned().unwrap();
    assert_eq!(claude["owned_by"], "anthropic-executor");

    let (_, logs, dir) = gw.stop();
    let records = records(dir.path());
    // Usage reached the collectors, for the streamed call too.
    let analytics: Vec<_> = records.iter().filter(|r| r["type"] == "analytics" && r["model"] == "claude").collect();
    assert_eq!(analytics.len(), 2, "{records:?}\n{logs}");
    assert_eq!(analytics[0]["upstream"], "anthropic-executor");
    assert_eq!(analytics[0]["prompt_tokens"], 4);
    assert!(analytics.iter().all(|a| a["total_tokens"].as_u64().unwrap() > 0), "{analytics:?}");
    assert_eq!(analytics[1]["streamed"], true);
    // Each call the plugin made through the host HTTP client is in the proxy log.
    let calls: Vec<_> = records.iter().filter(|r| r["path"] == "upstream:mock/v1/messages").collect();
    assert_eq!(calls.len(), 2, "{records:?}");
    assert!(calls.iter().all(|c| c["status"] == 200 && c["response_bytes"].as_u64().unwrap() > 0), "{calls:?}");
}

#[test]
fn over_http_the_host_adds_the_upstreams_key_and_instances_keep_their_own_configs() {
    let mock = MockServer::start();
    // One .so, two instances: one calls through an upstream that carries a key (x-api-key,
    // added by the host), the other through one without, and gets the provider's 401.
    let config = format!(
        r#"
[[upstreams]]
name = "anthropic"
kind = "openai"
base_url = "http://{addr}"
api_key_env = "GATEWAY_TEST_ANTHROPIC_KEY"
auth_header = "x-api-key"

[[upstreams]]
name = "anthropic-nokey"
kind = "openai"
base_url = "http://{addr}"

[[models]]
name = "claude"
executor = "claude-main"

[[models]]
name = "claude-nokey"
executor = "claude-nokey"

[[plugins]]
path = "{{target}}/libanthropic_executor.so"
name = "claude-main"
[plugins.config]
upstream = "anthropic"

[[plugins]]
path = "{{target}}/libanthropic_executor.so"
name = "claude-nokey"
[plugins.config]
upstream = "anthropic-nokey"
"#,
        addr = mock.addr
    );
    let gw = Gateway::start_with_env(&config, &[("GATEWAY_TEST_ANTHROPIC_KEY", "sk-ant-test")]);
    let r = gw.chat(None, &chat_body("claude", "over the wire", false));
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.logs());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Mock reply to: over the wire");
    let r = gw.chat(None, &chat_body("claude", "stream over the wire", true));
    assert_eq!(r.streamed_text(), "Mock reply to: stream over the wire");

    // The provider's 401, translated: the status is kept, the type is OpenAI's.
    let r = gw.chat(None, &chat_body("claude-nokey", "no key", false));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error()["type"], "authentication_error");
    assert!(r.error()["message"].as_str().unwrap().contains("x-api-key"), "{}", r.body);
    // And before a stream starts, too.
    let r = gw.chat(None, &chat_body("claude-nokey", "no key", true));
    assert_eq!(r.status, 401, "{}", r.body);

    // Calls are metered per instance and upstream.
    let calls = |plugin: &str, upstream: &str| {
        gw.metric(&format!("gateway_http_client_calls_total{{plugin=\"{plugin}\",upstream=\"{upstream}\"}}"))
    };
    assert_eq!(calls("claude-main", "anthropic"), Some(2.0));
    assert_eq!(calls("claude-nokey", "anthropic-nokey"), Some(2.0));
    assert!(gw.wait_for_log("plugin loaded plugin=claude-nokey declared_name=anthropic-executor"), "{}", gw.logs());
}

#[test]
fn count_tokens_and_the_admin_passthrough_reach_the_executor() {
    let gw = Gateway::start(&in_process(""));
    let r = gw.post("/v1/count_tokens", &[], &chat_body("claude", "one two three four", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["input_tokens"], 4);
    assert_eq!(r.json()["object"], "token_count");
    // A built-in upstream cannot count.
    let r = gw.post("/v1/count_tokens", &[], &chat_body("mock-gpt", "one", false));
    assert_eq!(r.status, 501, "{}", r.body);
    assert_eq!(r.error()["code"], "count_tokens_unsupported");

    let r = gw.admin("GET", "/admin/executors", Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.body);
    let executors = r.json()["executors"].clone();
    assert_eq!(executors[0]["name"], "anthropic-executor");
    assert_eq!(executors[0]["executor"]["identifier"], "anthropic");
    assert_eq!(executors[0]["executor"]["models"][0], "claude");

    // The passthrough needs the admin token, then reaches the provider with the plugin's key.
    let body = serde_json::json!({ "model": "m", "messages": [{ "role": "user", "content": "raw call" }] });
    let r = gw.post("/admin/executors/anthropic-executor/http/v1/messages/count_tokens", &[], &body);
    assert_eq!(r.status, 401, "{}", r.body);
    let auth = format!("Bearer {ADMIN}");
    let r = gw.post(
        "/admin/executors/anthropic-executor/http/v1/messages/count_tokens",
        &[("authorization", auth.as_str())],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["input_tokens"], 2);
    let r = gw.post("/admin/executors/nobody/http/v1/messages", &[("authorization", auth.as_str())], &body);
    assert_eq!(r.status, 404, "{}", r.body);
}

fn faults(mode: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "faulty-model"
executor = "executor-faults"

[[models]]
name = "mock-gpt"
upstream = "mock"

[[plugins]]
path = "{{target}}/libexecutor_faults.so"
quarantine_after = 2
[plugins.config]
mode = "{mode}"
"#
    )
}

#[test]
fn a_panic_inside_an_executors_poll_is_a_500_and_counts_toward_quarantine() {
    let gw = Gateway::start(&faults("panic_in_poll"));
    for _ in 0..2 {
        let r = gw.chat(None, &chat_body("faulty-model", "hi", false));
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(r.error()["code"], "plugin_failed");
        assert!(r.error()["message"].as_str().unwrap().contains("executor-faults"), "{}", r.body);
        // The panic's text stays in the log.
        assert!(!r.body.contains("panics in poll"), "{}", r.body);
    }
    assert!(gw.wait_for_log("executor-faults panics in poll"), "{}", gw.logs());
    let panics = gw.metric("gateway_plugin_hook_panics_total{plugin=\"executor-faults\",hook=\"execute\"}");
    assert_eq!(panics, Some(2.0));
    // Two panics quarantine it: the model is unavailable, the gateway serves the rest.
    let r = gw.chat(None, &chat_body("faulty-model", "hi", false));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
}

#[test]
fn an_executors_error_keeps_its_status_and_type() {
    let gw = Gateway::start(&faults("error_429"));
    let r = gw.chat(None, &chat_body("faulty-model", "hi", false));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error()["type"], "rate_limit_error");
    assert_eq!(r.error()["code"], "executor_error");
    // Streams answer the same error before they start.
    let r = gw.chat(None, &chat_body("faulty-model", "hi", true));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error()["type"], "rate_limit_error");
}

#[test]
fn a_host_http_call_to_an_unknown_upstream_is_a_clear_502() {
    let gw = Gateway::start(&faults("unknown_upstream"));
    let r = gw.chat(None, &chat_body("faulty-model", "hi", false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.error()["message"].as_str().unwrap().contains("no upstream named `nowhere`"), "{}", r.body);
}

#[test]
fn a_panic_mid_stream_ends_the_stream_with_an_error_event() {
    let gw = Gateway::start(&faults("panic_mid_stream"));
    let r = gw.chat(None, &chat_body("faulty-model", "hi", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.streamed_text(), "first");
    let last = r.events().last().cloned().unwrap();
    assert!(last.contains("executor `executor-faults` panicked mid-stream"), "{}", r.body);
    assert!(gw.wait_for_log("executor-faults panics mid-stream"), "{}", gw.logs());
    // Counted like a panic before the first chunk.
    let panics = gw.metric("gateway_plugin_hook_panics_total{plugin=\"executor-faults\",hook=\"execute_stream\"}");
    assert_eq!(panics, Some(1.0));
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
}

#[test]
fn a_client_that_goes_away_drops_the_executors_stream_inside_the_plugin() {
    use std::io::Read;
    let gw = Gateway::start(&faults("slow_stream"));
    let mut conn = gw.send_raw(&chat_body("faulty-model", "hi", true));
    // Read until a few ticks arrived, then hang up.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("tick").count() < 3 {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(conn);
    assert!(gw.wait_for_log("executor-faults stream dropped"), "{}", gw.logs());
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
}

#[test]
fn a_model_routed_to_a_missing_executor_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\nexecutor = \"nobody\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(gateway_tests::gateway_bin()).arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model `m`: no loaded plugin instance `nobody` is an executor"), "{stderr}");
}

/// The embedded default (`make run`) serves its second model through anthropic-executor on the
/// mock, with every example plugin around it. The default's own `listen` and `data_dir` are
/// replaced by the test's; everything else is the file as shipped.
#[test]
fn the_embedded_default_serves_mock_claude_through_the_executor() {
    let shipped = include_str!("../host/default-config.toml");
    let config: String = shipped
        .lines()
        .filter(|l| !l.starts_with("listen =") && !l.starts_with("data_dir ="))
        .map(|l| l.replace("path = \"lib", "path = \"{target}/lib").replace("path = \"data/", "path = \"{dir}/"))
        .collect::<Vec<_>>()
        .join("\n");
    let gw = Gateway::start(&config);
    let models = gw.get("/v1/models").json();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["mock-gpt", "mock-claude"]);
    for model in ["mock-gpt", "mock-claude"] {
        let r = gw.chat(Some("sk-gateway-demo"), &chat_body(model, "write to jane@example.com", false));
        assert_eq!(r.status, 200, "{model}: {}\n{}", r.body, gw.logs());
        assert_eq!(r.json()["choices"][0]["message"]["content"], "Mock reply to: write to [REDACTED]");
        assert_eq!(r.header("x-gateway"), Some("llm-gateway"));
        let r = gw.chat(Some("sk-gateway-demo"), &chat_body(model, "stream to jane@example.com", true));
        assert_eq!(r.streamed_text(), "Mock reply to: stream to [REDACTED]", "{model}: {}", r.body);
    }
}

/// The host HTTP client enforces the upstream's `max_response_bytes` on what it hands a plugin.
#[test]
fn the_host_http_client_enforces_the_upstreams_response_limit() {
    let mock = MockServer::start();
    let config = format!(
        r#"
[[upstreams]]
name = "anthropic"
kind = "openai"
base_url = "http://{addr}"
max_response_bytes = 64

[[models]]
name = "claude"
executor = "anthropic-executor"

[[plugins]]
path = "{{target}}/libanthropic_executor.so"
[plugins.config]
upstream = "anthropic"
api_key = "k"
"#,
        addr = mock.addr
    );
    let gw = Gateway::start(&config);
    let r = gw.chat(None, &chat_body("claude", "a reply longer than sixty-four bytes, surely", false));
    assert_eq!(r.status, 502, "{}", r.body);
    let message = r.error()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("response body too large: expected at most 64 bytes"), "{message}");
    assert_eq!(
        gw.metric("gateway_http_client_errors_total{plugin=\"anthropic-executor\",upstream=\"anthropic\"}"),
        Some(1.0)
    );
}

/// An executor that never answers, or stalls mid-stream, is cut off after
/// `limits.executor_timeout_ms`: a 504, or an error event; its future is dropped inside it.
#[test]
fn an_executor_that_never_answers_is_cut_off_and_dropped() {
    let gw = Gateway::start(&format!("[limits]\nexecutor_timeout_ms = 300\n{}", faults("never")));
    let r = gw.chat(None, &chat_body("faulty-model", "hi", false));
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.error()["message"].as_str().unwrap().contains("did not answer within 300 ms"), "{}", r.body);
    assert!(gw.wait_for_log("executor-faults future dropped"), "{}", gw.logs());
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);

    let gw = Gateway::start(&format!("[limits]\nexecutor_timeout_ms = 300\n{}", faults("stall_stream")));
    let r = gw.chat(None, &chat_body("faulty-model", "hi", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.streamed_text(), "first");
    assert!(r.events().last().unwrap().contains("sent nothing for 300 ms"), "{}", r.body);
}

/// A quarantine probe whose call never finishes (its client went away) leaves the executor
/// quarantined for another probe period, not switched off until a reload.
#[test]
fn an_abandoned_quarantine_probe_does_not_keep_the_executor_off_for_good() {
    let config =
        faults("panic_then_never").replace("quarantine_after = 2", "quarantine_after = 1\nquarantine_probe_secs = 0.3");
    let gw = Gateway::start(&config);
    assert_eq!(gw.chat(None, &chat_body("faulty-model", "hi", false)).status, 500);
    assert_eq!(gw.chat(None, &chat_body("faulty-model", "hi", false)).status, 503);
    let probe_then_hang_up = || {
        std::thread::sleep(std::time::Duration::from_millis(400));
        let conn = gw.send_raw(&chat_body("faulty-model", "hi", false));
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(conn);
    };
    probe_then_hang_up();
    assert!(gw.wait_for_log("quarantine probe did not finish"), "{}", gw.logs());
    // Not stuck probing: a later request probes again (and is abandoned again).
    probe_then_hang_up();
    let probed_twice = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        gw.logs().matches("quarantine probe did not finish").count() == 2
    });
    assert!(probed_twice, "{}", gw.logs());
    assert_eq!(gw.logs().matches("probing it with one request").count(), 2, "{}", gw.logs());
}

/// An upstream's or executor's error goes through the response headers phase like any other
/// response: headers are stamped on it too.
#[test]
fn an_executors_error_still_gets_the_response_headers_phase() {
    let config = format!(
        "{}\n[[plugins]]\npath = \"{{target}}/libheader_stamp.so\"\n[plugins.config.headers]\nx-stamp = \"1\"\n",
        faults("error_429")
    );
    let gw = Gateway::start(&config);
    let r = gw.chat(None, &chat_body("faulty-model", "hi", false));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("x-stamp"), Some("1"));
}
