//! The real gateway binary with real plugin `.so` files, over HTTP: the pipeline, its order and
//! short-circuits, failure policy and quarantine, bad input, collectors, and the OpenAI upstream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gateway_tests::{Gateway, chat_body};
use serde_json::json;

const KEY: &str = "sk-test-key-1";

/// The example plugins, configured as the embedded default is, plus a collector file.
fn examples(extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "mock"
kind = "mock"
chunks = 6

[[models]]
name = "mock-gpt"
upstream = "mock"

[[plugins]]
path = "{{target}}/libip_filter.so"
order = 10
[plugins.config]
allow = ["127.0.0.0/8"]
deny = ["127.0.0.99"]

[[plugins]]
path = "{{target}}/libapi_key_auth.so"
order = 20
[plugins.config.keys.{KEY}]
app = "app-1"
user = "alice"

[[plugins]]
path = "{{target}}/librequest_validator.so"
order = 30
[plugins.config]
max_messages = 3

[[plugins]]
path = "{{target}}/libheader_stamp.so"
order = 40
[plugins.config.headers]
x-gateway = "llm-gateway"

[[plugins]]
path = "{{target}}/libpii_redact.so"
order = 50

[[plugins]]
path = "{{target}}/libusage_logger.so"
order = 60
[plugins.config]
path = "{{dir}}/usage.jsonl"
{extra}"#
    )
}

/// Every record the usage logger wrote, once `expected` of them carry `request_id` (waiting,
/// bounded, for the collector thread).
fn usage_records(gw: &Gateway, request_id: &str, expected: usize) -> Vec<serde_json::Value> {
    let path = gw.dir.path().join("usage.jsonl");
    let mut records = Vec::new();
    for _ in 0..200 {
        records = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if records.iter().filter(|r| r["request_id"] == request_id).count() >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    records
}

#[test]
fn a_non_streaming_call_runs_through_every_phase() {
    let gw = Gateway::start(&examples(""));
    let r = gw.chat(Some(KEY), &chat_body("mock-gpt", "mail me at jane.doe@example.com", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-gateway"), Some("llm-gateway"));
    let content = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert_eq!(content, "Mock reply to: mail me at [REDACTED]");
    let request_id = r.header("x-request-id").unwrap().to_owned();
    let records = usage_records(&gw, &request_id, 2);
    let kinds: Vec<&str> = records.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["proxy_log", "analytics", "budget"], "{records:?}");
    assert_eq!(records[2]["total_tokens"], 11);
    assert_eq!(records[2]["app_id"], "app-1");
    let analytics = records.iter().find(|r| r["type"] == "analytics").unwrap();
    assert_eq!(analytics["app_id"], "app-1");
    assert_eq!(analytics["user_id"], "alice");
    assert_eq!(analytics["model"], "mock-gpt");
    // Words, the mock's token unit: "mail me at <address>" and "Mock reply to: " + that.
    assert_eq!(analytics["prompt_tokens"], 4);
    assert_eq!(analytics["completion_tokens"], 7);
    assert_eq!(analytics["total_tokens"], 11);
    assert_eq!(analytics["streamed"], false);
    assert!(analytics["latency_us"].as_u64().unwrap() > 0);
}

#[test]
fn a_streaming_call_is_redacted_chunk_by_chunk_and_ends_with_done() {
    let gw = Gateway::start(&examples(""));
    let r = gw.chat(Some(KEY), &chat_body("mock-gpt", "card 4111 1111 1111 1111 and bob@example.org ok", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-gateway"), Some("llm-gateway"));
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.len() > 4, "{events:?}");
    assert_eq!(r.streamed_text(), "Mock reply to: card [REDACTED] and [REDACTED] ok");
    assert!(!r.body.contains("bob@"), "{}", r.body);
    let request_id = r.header("x-request-id").unwrap().to_owned();
    let records = usage_records(&gw, &request_id, 2);
    let analytics = records.iter().find(|r| r["type"] == "analytics").expect("analytics record");
    assert_eq!(analytics["streamed"], true);
    assert!(analytics["total_tokens"].as_u64().unwrap() > 0);
    assert!(analytics["ttft_us"].as_u64().unwrap() <= analytics["latency_us"].as_u64().unwrap());
}

#[test]
fn auth_refuses_missing_and_invalid_keys() {
    let gw = Gateway::start(&examples(""));
    let r = gw.chat(None, &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.status, 401);
    assert!(r.error()["message"].as_str().unwrap().contains("missing credential"), "{}", r.body);
    let r = gw.chat(Some("sk-wrong-key"), &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.status, 401);
    assert_eq!(r.error()["message"], "invalid API key");
    assert_eq!(r.error()["code"], "invalid_api_key");
}

#[test]
fn a_short_circuit_skips_later_request_hooks_but_not_response_headers() {
    let gw = Gateway::start(&examples(""));
    // request-validator answers 400 from post_auth: no upstream call, so no analytics record;
    // the response headers phase still stamps the response; the proxy log still records it.
    let body = json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}, {"role": "user", "content": "d"}]});
    let r = gw.chat(Some(KEY), &body);
    assert_eq!(r.status, 400);
    assert!(r.error()["message"].as_str().unwrap().contains("too many messages: expected at most 3, found 4"));
    assert_eq!(r.header("x-gateway"), Some("llm-gateway"));
    let request_id = r.header("x-request-id").unwrap().to_owned();
    let records = usage_records(&gw, &request_id, 1);
    assert_eq!(records.len(), 1, "only a proxy log: {records:?}");
    assert_eq!(records[0]["type"], "proxy_log");
    assert_eq!(records[0]["status"], 400);
    // The auth plugin did run before it: the record carries the app.
    assert_eq!(records[0]["app_id"], "app-1");
}

/// model-alias, ordered after request-validator (which reads the same parse of the body), sets
/// the model before selection: the alias is routed as its model, streamed or not, and the
/// upstream, the response and the usage record all carry the real name.
#[test]
fn a_model_alias_set_before_selection_is_routed_as_its_model() {
    let extra = r#"
[[plugins]]
path = "{target}/libmodel_alias.so"
order = 35
[plugins.config.aliases]
fast = "mock-gpt"
"#;
    let gw = Gateway::start(&examples(extra));
    let r = gw.chat(Some(KEY), &chat_body("fast", "hi", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "mock-gpt");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Mock reply to: hi");
    let request_id = r.header("x-request-id").unwrap().to_owned();
    let analytics = usage_records(&gw, &request_id, 2).into_iter().find(|r| r["type"] == "analytics").unwrap();
    assert_eq!(analytics["model"], "mock-gpt");
    let r = gw.chat(Some(KEY), &chat_body("fast", "card 4111 1111 1111 1111", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.streamed_text(), "Mock reply to: card [REDACTED]");
    // The validator still refuses from the shared parse; names that are not aliases pass as sent.
    let body = json!({"model": "fast", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}, {"role": "user", "content": "d"}]});
    assert_eq!(gw.chat(Some(KEY), &body).status, 400);
    let r = gw.chat(Some(KEY), &chat_body("slow", "hi", false));
    assert_eq!((r.status, r.error()["code"].as_str()), (404, Some("model_not_found")), "{}", r.body);
}

#[test]
fn plugins_of_one_capability_chain_in_configured_order() {
    // `faulty` reads the response header header-stamp set before it (order 45 > 40).
    let extra = r#"
[[plugins]]
path = "{target}/libfaulty.so"
order = 45
[plugins.config]
echo_header = "x-gateway"
"#;
    let gw = Gateway::start(&examples(extra));
    let r = gw.chat(Some(KEY), &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.header("x-faulty-saw"), Some("llm-gateway"));
    // Ordered before header-stamp, it sees nothing yet.
    let gw = Gateway::start(&examples(&extra.replace("order = 45", "order = 35")));
    let r = gw.chat(Some(KEY), &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.header("x-faulty-saw"), Some("(absent)"));
}

#[test]
fn ip_filter_blocks_before_auth() {
    let gw = Gateway::start(&examples("").replace("allow = [\"127.0.0.0/8\"]", "allow = [\"10.0.0.0/8\"]"));
    let r = gw.chat(Some(KEY), &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.status, 403);
    assert_eq!(r.error()["code"], "ip_denied");
}

#[test]
fn models_health_and_unknown_routes() {
    let gw = Gateway::start(&examples(""));
    let models = gw.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "mock-gpt");
    assert_eq!(gw.get("/healthz").json()["status"], "ok");
    let r = gw.get("/v2/nothing");
    assert_eq!((r.status, r.error()["code"].as_str()), (404, Some("unknown_url")));
    let r = gw.get("/v1/chat/completions");
    assert_eq!((r.status, r.error()["code"].as_str()), (405, Some("method_not_allowed")));
}

fn post_raw(gw: &Gateway, content_type: Option<&str>, body: &[u8]) -> gateway_tests::Reply {
    let mut req =
        gateway_tests::agent().post(&gw.url("/v1/chat/completions")).set("authorization", &format!("Bearer {KEY}"));
    if let Some(ct) = content_type {
        req = req.set("content-type", ct);
    }
    gateway_tests::Reply::from(req.send_bytes(body))
}

#[test]
fn bad_input_gets_clear_openai_errors_and_the_gateway_keeps_serving() {
    let gw = Gateway::start(&format!("[limits]\nmax_body_bytes = 4096\n{}", examples("")));
    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str, &str)> = vec![
        (
            Some("application/json"),
            b"{\"model\": \"mock-gpt\", \"messages\": [".to_vec(),
            400,
            "invalid_json",
            "not valid JSON",
        ),
        (
            Some("application/json"),
            b"{\"messages\": [{\"role\":\"user\",\"content\":\"x\"}]}".to_vec(),
            400,
            "invalid_request",
            "missing field `model`",
        ),
        (
            Some("application/json"),
            b"{\"model\": \"mock-gpt\", \"messages\": []}".to_vec(),
            400,
            "invalid_request",
            "must not be empty",
        ),
        (Some("text/plain"), b"{}".to_vec(), 415, "unsupported_media_type", "expected content-type application/json"),
        (None, b"{}".to_vec(), 415, "unsupported_media_type", "found \"(none)\""),
        (
            Some("application/json"),
            vec![b' '; 5000],
            413,
            "request_too_large",
            "expected at most 4096 bytes, found 5000",
        ),
        (
            Some("application/json"),
            chat_body("gpt-nope", "x", false).to_string().into_bytes(),
            404,
            "model_not_found",
            "`gpt-nope` does not exist",
        ),
    ];
    for (ct, body, status, code, message) in cases {
        let r = post_raw(&gw, ct, &body);
        assert_eq!(r.status, status, "{}", r.body);
        let err = r.error();
        assert_eq!(err["code"], code, "{}", r.body);
        assert!(err["message"].as_str().unwrap().contains(message), "{message:?} not in {}", r.body);
    }
    assert_eq!(gw.chat(Some(KEY), &chat_body("mock-gpt", "still here?", false)).status, 200);
}

/// Sends `request` on a raw connection and returns what comes back before the server closes.
fn raw_exchange(gw: &Gateway, request: &[u8], pause_after: Option<Duration>) -> String {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    if let Some(pause) = pause_after {
        std::thread::sleep(pause);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn oversized_headers_undeclared_large_bodies_and_slow_clients_are_refused() {
    let config = format!(
        "[limits]\nmax_body_bytes = 4096\nmax_header_bytes = 2048\nheader_timeout_ms = 300\nbody_timeout_ms = 300\n{}",
        examples("")
    );
    let gw = Gateway::start(&config);
    // Headers over our limit: a 431 with an OpenAI error.
    let big = "x".repeat(3000);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    let out = raw_exchange(&gw, req.as_bytes(), None);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(out.contains("\"code\":\"headers_too_large\""), "{out}");
    // A chunked body with no declared length that grows past the limit: 413.
    let chunk = "a".repeat(3000);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nbb8\r\n{chunk}\r\nbb8\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = raw_exchange(&gw, req.as_bytes(), None);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // A client that stops sending its body: 408.
    let req = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"model\"";
    let out = raw_exchange(&gw, req.as_bytes(), None);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("timed out reading the request body"), "{out}");
    // A client that never finishes its headers: the connection is closed.
    let out = raw_exchange(&gw, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n", None);
    assert!(!out.starts_with("HTTP/1.1 2"), "{out}");
    // None of it leaked a connection or a request.
    let mut settled = false;
    for _ in 0..200 {
        // The /metrics request itself is the one open connection and request in flight.
        let metrics = gw.get("/metrics").body;
        if metrics.contains("\ngateway_open_connections 1\n") && metrics.contains("\ngateway_inflight_requests 1\n") {
            settled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(settled, "connections or requests left open:\n{}", gw.get("/metrics").body);
    assert_eq!(gw.chat(Some(KEY), &chat_body("mock-gpt", "still here?", false)).status, 200);
}

fn faulty(config: &str, on_error: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-gpt"
upstream = "mock"

[[models]]
name = "other"
upstream = "mock"

[[plugins]]
path = "{{target}}/libfaulty.so"
on_error = "{on_error}"
quarantine_after = 2
[plugins.config]
only_model = "mock-gpt"
{config}
"#
    )
}

#[test]
fn a_failing_plugin_fails_closed_by_default_and_names_itself() {
    let gw = Gateway::start(&faulty("hook = \"error\"", "fail-closed"));
    let r = gw.chat(None, &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.status, 500);
    let err = r.error();
    assert_eq!(err["code"], "plugin_failed");
    assert!(err["message"].as_str().unwrap().contains("plugin `faulty` failed in post_auth"), "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("other", "hi", false)).status, 200);
    assert_eq!(gw.metric("gateway_plugin_hook_errors_total{plugin=\"faulty\",hook=\"post_auth\"}"), Some(1.0));
}

#[test]
fn a_failing_fail_open_plugin_is_skipped() {
    let gw = Gateway::start(&faulty("hook = \"error\"", "fail-open"));
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    assert!(gw.wait_for_log("skipped (fail-open)"));
}

#[test]
fn a_panicking_plugin_is_caught_then_quarantined_and_the_gateway_keeps_serving() {
    let gw = Gateway::start(&faulty("hook = \"panic\"", "fail-closed"));
    for _ in 0..2 {
        let r = gw.chat(None, &chat_body("mock-gpt", "hi", false));
        assert_eq!(r.status, 500);
        // The client learns the plugin, hook and request id; the panic's text stays in the log.
        let message = r.error()["message"].as_str().unwrap().to_owned();
        let request_id = r.header("x-request-id").unwrap();
        assert!(message.contains("plugin `faulty` failed in post_auth"), "{message}");
        assert!(message.contains(request_id), "{message}");
        assert!(!message.contains("told to panic"), "the panic text reached the client: {message}");
    }
    assert!(gw.wait_for_log("plugin panicked: faulty was told to panic"), "{}", gw.logs());
    // Quarantined after 2 panics: no longer called; fail-closed means its requests are refused.
    let r = gw.chat(None, &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.status, 503);
    assert_eq!(r.error()["code"], "plugin_quarantined");
    assert_eq!(gw.metric("gateway_plugin_hook_panics_total{plugin=\"faulty\",hook=\"post_auth\"}"), Some(2.0));
    assert_eq!(gw.metric("gateway_plugins_quarantined_total"), Some(1.0));
    assert!(gw.wait_for_log("plugin quarantined after repeated panics"));
    assert_eq!(gw.get("/healthz").status, 200);
}

#[test]
fn a_quarantined_fail_open_plugin_is_skipped() {
    let gw = Gateway::start(&faulty("hook = \"panic\"", "fail-open"));
    for _ in 0..4 {
        assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    }
    assert_eq!(gw.metric("gateway_plugin_hook_panics_total{plugin=\"faulty\",hook=\"post_auth\"}"), Some(2.0));
}

#[test]
fn a_slow_isolated_plugin_does_not_stall_other_requests() {
    let config =
        faulty("hook = \"sleep\"\nsleep_ms = 1500", "fail-closed").replace("on_error", "isolate = true\non_error");
    let gw = std::sync::Arc::new(Gateway::start(&config));
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // More slow requests than the runtime has workers (2 on CI).
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let (gw, done) = (gw.clone(), done.clone());
            std::thread::spawn(move || {
                assert_eq!(gw.chat(None, &chat_body("mock-gpt", "slow", false)).status, 200);
                done.lock().unwrap().push(format!("slow-{i}"));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..20 {
        assert_eq!(gw.chat(None, &chat_body("other", "fast", false)).status, 200);
        done.lock().unwrap().push(format!("fast-{i}"));
    }
    slow.into_iter().for_each(|t| t.join().unwrap());
    let order = done.lock().unwrap().clone();
    let first_slow = order.iter().position(|s| s.starts_with("slow")).unwrap();
    assert_eq!(first_slow, 20, "fast requests waited for slow ones: {order:?}");
}

#[test]
fn an_openai_compatible_upstream_streams_and_answers_through_a_second_gateway() {
    let backend = Gateway::start(&examples(""));
    let front = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "backend"
kind = "openai"
base_url = "http://{}/v1"
api_key_env = "GATEWAY_TEST_BACKEND_KEY"

[[models]]
name = "front-gpt"
upstream = "backend"
upstream_model = "mock-gpt"
"#,
        backend.addr
    ));
    let r = front.chat(None, &chat_body("front-gpt", "hello from the front", false));
    // The front gateway sends no key (the variable is unset), so the backend refuses it.
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error()["code"], "invalid_api_key");
    drop(front);
    let front = Gateway::start_with_env(
        &format!(
            "[[upstreams]]\nname = \"backend\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\napi_key_env = \"GATEWAY_TEST_BACKEND_KEY\"\n\n[[models]]\nname = \"front-gpt\"\nupstream = \"backend\"\nupstream_model = \"mock-gpt\"\n",
            backend.addr
        ),
        &[("GATEWAY_TEST_BACKEND_KEY", KEY)],
    );
    let r = front.chat(None, &chat_body("front-gpt", "hello from the front", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Mock reply to: hello from the front");
    let r = front.chat(None, &chat_body("front-gpt", "stream me, a@b.io", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.streamed_text(), "Mock reply to: stream me, [REDACTED]");
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn a_plugin_built_against_abi_1_0_serves_through_the_gateway() {
    let gw = Gateway::start(
        "[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\nupstream = \"mock\"\n[[plugins]]\npath = \"{target}/libold_minor.so\"\n",
    );
    let r = gw.chat(None, &chat_body("m", "hi", false));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-old-minor"), Some("old-minor"));
}

/// ABI 1.3 frozen as released (derive, SDK, KV, stream chunks): the plugin keeps working on
/// every later 1.x host.
#[test]
fn a_plugin_built_against_abi_1_3_serves_through_the_gateway() {
    let gw = Gateway::start(
        "[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\nupstream = \"mock\"\n[[plugins]]\npath = \"{target}/libfrozen_1_3.so\"\n",
    );
    let r = gw.chat(None, &chat_body("m", "hi", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-frozen-1-3"), Some("1"));
    let r = gw.chat(None, &chat_body("m", "hi", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-frozen-1-3"), Some("2"));
    assert_eq!(r.streamed_text(), "MOCK reply to: hi");
    let r = gw.post("/v1/chat/completions", &[("x-frozen-deny", "1")], &chat_body("m", "hi", false));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error()["code"], "frozen_deny");
}

#[test]
fn plugin_logs_reach_the_gateway_log_and_shutdown_flushes_collectors() {
    let gw = Gateway::start(&examples(""));
    for _ in 0..5 {
        assert_eq!(gw.chat(Some(KEY), &chat_body("mock-gpt", "hi", false)).status, 200);
    }
    let (status, logs, dir) = gw.stop();
    assert!(status.success(), "{status}\n{logs}");
    assert!(logs.contains("1 API keys configured") && logs.contains("plugin=\"api-key-auth\""), "{logs}");
    assert!(logs.contains("gateway stopped"), "{logs}");
    let text = std::fs::read_to_string(dir.path().join("usage.jsonl")).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("\"proxy_log\"")).count(), 5, "{text}");
}

/// A hook a plugin did not write costs one call per load, then nothing: header-stamp writes
/// `on_response_headers` only, so `on_response_body` is asked once and skipped after.
#[test]
fn hooks_a_plugin_did_not_write_are_skipped_after_one_call() {
    let gw = Gateway::start(
        "[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\nupstream = \"mock\"\n[[plugins]]\npath = \"{target}/libheader_stamp.so\"\n[plugins.config.headers]\nx-s = \"1\"\n",
    );
    for _ in 0..3 {
        let r = gw.chat(None, &chat_body("m", "hi", false));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-s"), Some("1"));
    }
    let calls =
        |hook: &str| gw.metric(&format!("gateway_plugin_hook_calls_total{{plugin=\"header-stamp\",hook=\"{hook}\"}}"));
    assert_eq!(calls("response_headers"), Some(3.0));
    assert_eq!(calls("response_body"), Some(1.0));
    // Not an error either.
    assert_eq!(
        gw.metric("gateway_plugin_hook_errors_total{plugin=\"header-stamp\",hook=\"response_body\"}"),
        Some(0.0)
    );
}
