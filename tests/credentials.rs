//! Credential pools through the real gateway against `mock-server` over HTTP: keys that the
//! provider refuses (the mock's `mock-429` and `mock-401`) cool down and calls fail over to the
//! next key without the client noticing, for the built-in upstream and for an executor plugin
//! calling through the host HTTP client; a pool whose keys are all cooling answers 429 with
//! `Retry-After`; keys stored through the admin API join the running pool and outlive a restart.

use gateway_tests::{Gateway, MockServer, Reply, agent, chat_body};

const ADMIN: &str = "admin-secret-token";

fn config(mock: &MockServer) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

# Three keys: one rate limited, one revoked, one good.
[[upstreams]]
name = "pool"
kind = "openai"
base_url = "http://{addr}/v1"
[[upstreams.credentials]]
id = "limited"
api_key_env = "POOL_KEY_LIMITED"
[[upstreams.credentials]]
id = "revoked"
api_key_env = "POOL_KEY_REVOKED"
[[upstreams.credentials]]
id = "good"
api_key_env = "POOL_KEY_GOOD"

# Two keys, both refused.
[[upstreams]]
name = "bad-pair"
kind = "openai"
base_url = "http://{addr}/v1"
[[upstreams.credentials]]
id = "limited"
api_key_env = "POOL_KEY_LIMITED"
[[upstreams.credentials]]
id = "revoked"
api_key_env = "POOL_KEY_REVOKED"

# One key, rate limited.
[[upstreams]]
name = "lone"
kind = "openai"
base_url = "http://{addr}/v1"
api_key_env = "POOL_KEY_LIMITED"

# Anthropic's API, for the executor: a rate-limited key first, a spare of lower priority.
[[upstreams]]
name = "anthropic"
kind = "openai"
base_url = "http://{addr}"
auth_header = "x-api-key"
scheduling = "fill-first"
[[upstreams.credentials]]
id = "first"
api_key_env = "POOL_KEY_LIMITED_BARE"
[[upstreams.credentials]]
id = "spare"
api_key_env = "POOL_KEY_GOOD"
priority = 1

[[models]]
name = "gpt"
upstream = "pool"

[[models]]
name = "lone-gpt"
upstream = "lone"

[[models]]
name = "bad-gpt"
upstream = "bad-pair"

# Anthropic's API with one rate-limited key, for a second executor instance.
[[upstreams]]
name = "anthropic-lone"
kind = "openai"
base_url = "http://{addr}"
auth_header = "x-api-key"
api_key_env = "POOL_KEY_LIMITED_BARE"

[[models]]
name = "claude"
executor = "anthropic-executor"

[[models]]
name = "claude-lone"
executor = "claude-lone"

[[plugins]]
path = "{{target}}/libanthropic_executor.so"
[plugins.config]
upstream = "anthropic"

[[plugins]]
path = "{{target}}/libanthropic_executor.so"
name = "claude-lone"
[plugins.config]
upstream = "anthropic-lone"
models = ["claude-lone"]
"#,
        addr = mock.addr
    )
}

const ENV: &[(&str, &str)] = &[
    ("POOL_KEY_LIMITED", "mock-429"),
    ("POOL_KEY_REVOKED", "mock-401"),
    ("POOL_KEY_GOOD", "sk-good"),
    ("POOL_KEY_LIMITED_BARE", "mock-429"),
];

fn credentials(gw: &Gateway, upstream: &str) -> serde_json::Value {
    let r = gw.admin("GET", &format!("/admin/upstreams/{upstream}/credentials"), Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn key<'a>(pool: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    pool["credentials"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap_or_else(|| panic!("{id}: {pool:#}"))
}

fn put(gw: &Gateway, path: &str, body: &str) -> Reply {
    Reply::from(
        agent()
            .put(&gw.url(path))
            .set("authorization", &format!("Bearer {ADMIN}"))
            .set("content-type", "application/json")
            .send_string(body),
    )
}

#[test]
fn refused_keys_cool_down_and_every_request_succeeds_on_the_next() {
    let mock = MockServer::start();
    let gw = Gateway::start_with_env(&config(&mock), ENV);
    for i in 0..6 {
        let r = gw.chat(None, &chat_body("gpt", "pool me", i % 2 == 1));
        assert_eq!(r.status, 200, "request {i}: {}\n{}", r.body, gw.logs());
    }
    // Each bad key was refused once, then rested; the good one served every request.
    let pool = credentials(&gw, "pool");
    assert_eq!(key(&pool, "limited")["state"], "cooling", "{pool:#}");
    assert_eq!(key(&pool, "limited")["last_refusal"], 429);
    assert_eq!(key(&pool, "revoked")["last_refusal"], 401);
    assert_eq!(key(&pool, "revoked")["refusals"], 1);
    assert_eq!(key(&pool, "good")["calls"], 6, "{pool:#}");
    assert!(!pool.to_string().contains("sk-good"), "the admin API never shows a key: {pool}");
    assert_eq!(gw.metric("gateway_upstream_failovers_total{upstream=\"pool\"}"), Some(2.0));
    assert_eq!(gw.metric("gateway_credential_refusals_total{upstream=\"pool\",credential=\"limited\"}"), Some(1.0));
    assert_eq!(gw.metric("gateway_credential_cooling{upstream=\"pool\",credential=\"revoked\"}"), Some(1.0));
    assert!(gw.wait_for_log("credential refused: cooling down"), "{}", gw.logs());

    // Every key refused: the client gets the provider's last answer, after one failover.
    let r = gw.chat(None, &chat_body("bad-gpt", "nobody takes me", false));
    assert!(r.status == 429 || r.status == 401, "{}", r.body);
    assert!(["rate_limit_exceeded", "invalid_api_key"].contains(&r.error()["code"].as_str().unwrap()), "{}", r.body);
    assert_eq!(gw.metric("gateway_upstream_failovers_total{upstream=\"bad-pair\"}"), Some(1.0));
    assert_eq!(gw.chat(None, &chat_body("bad-gpt", "again", false)).error()["code"], "credentials_cooling");
    let metrics = gw.get("/metrics").body;
    assert_eq!(metrics.matches("# TYPE gateway_credential_calls_total counter").count(), 1, "{metrics}");

    // The executor's calls through the host HTTP client fail over the same way.
    for stream in [false, true] {
        let r = gw.chat(None, &chat_body("claude", "through the executor", stream));
        assert_eq!(r.status, 200, "{}\n{}", r.body, gw.logs());
    }
    let anthropic = credentials(&gw, "anthropic");
    assert_eq!(key(&anthropic, "first")["refusals"], 1, "{anthropic:#}");
    assert_eq!(key(&anthropic, "spare")["calls"], 2, "{anthropic:#}");

    // An executor whose only key is cooling gets the gateway's 429 as a response, and its
    // client a 429 saying why.
    let r = gw.chat(None, &chat_body("claude-lone", "refused by the provider", false));
    assert_eq!(r.status, 429, "{}", r.body);
    let r = gw.chat(None, &chat_body("claude-lone", "refused by the gateway", false));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("credentials are cooling down"), "{}", r.body);
}

#[test]
fn a_pool_with_every_key_cooling_answers_429_with_retry_after_until_a_key_is_added() {
    let mock = MockServer::start();
    let gw = Gateway::start_with_env(&config(&mock), ENV);
    // The only key is refused: the client gets the provider's own 429.
    let r = gw.chat(None, &chat_body("lone-gpt", "hi", false));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error()["code"], "rate_limit_exceeded", "{}", r.body);
    // Now it is cooling: the gateway answers without calling, and says when to come back.
    let r = gw.chat(None, &chat_body("lone-gpt", "hi", true));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error()["code"], "credentials_cooling", "{}", r.body);
    let message = r.error()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("upstream `lone`: all 1 of its credentials are cooling down"), "{message}");
    // The ids and refusals go to the log (read as it arrives).
    assert!(gw.wait_for_log("every credential is cooling down"), "{}", gw.logs());
    assert!(gw.logs().contains("default: 429"), "{}", gw.logs());
    let retry: u64 = r.header("retry-after").expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(gw.metric("gateway_upstream_credentials_exhausted_total{upstream=\"lone\"}"), Some(1.0));

    // An operator adds a key: it serves at once, and it is stored.
    let r = put(&gw, "/admin/upstreams/lone/credentials/added", r#"{"api_key": "sk-added", "priority": 0}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("sk-added"), "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("lone-gpt", "hi", false)).status, 200);
    // Refused: a config key, a bad id, a body that is not a credential, an upstream without keys.
    let r = put(&gw, "/admin/upstreams/lone/credentials/default", r#"{"api_key": "x"}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error()["message"].as_str().unwrap().contains("defined in the config file"), "{}", r.body);
    assert_eq!(put(&gw, "/admin/upstreams/lone/credentials/no%20spaces", r#"{"api_key": "x"}"#).status, 400);
    let r = put(&gw, "/admin/upstreams/lone/credentials/k", r#"{"key": "x"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error()["message"].as_str().unwrap().contains("expected {\"api_key\""), "{}", r.body);
    assert_eq!(gw.admin("GET", "/admin/upstreams/nope/credentials", Some(ADMIN)).status, 404);
    assert_eq!(gw.admin("GET", "/admin/upstreams/lone/credentials", None).status, 401);

    // The stored key outlives a restart (the config's key starts afresh).
    let (_, _, dir) = gw.stop();
    let gw = Gateway::start_in_with_env(dir, &config(&mock), ENV);
    let pool = credentials(&gw, "lone");
    assert_eq!(key(&pool, "added")["source"], "store", "{pool:#}");
    let r = gw.admin("DELETE", "/admin/upstreams/lone/credentials/added", Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.admin("DELETE", "/admin/upstreams/lone/credentials/added", Some(ADMIN)).status, 404);
    assert_eq!(gw.admin("DELETE", "/admin/upstreams/lone/credentials/default", Some(ADMIN)).status, 409);
}

fn scheduled(mock: &MockServer, scheduler: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

[[upstreams]]
name = "quota"
kind = "openai"
base_url = "http://{addr}/v1"
scheduler = "{scheduler}"
[[upstreams.credentials]]
id = "a"
api_key_env = "POOL_KEY_GOOD"
[[upstreams.credentials]]
id = "b"
api_key_env = "POOL_KEY_GOOD"
[[upstreams.credentials]]
id = "c"
api_key_env = "POOL_KEY_GOOD"

[[models]]
name = "gpt"
upstream = "quota"

[[plugins]]
path = "{{target}}/libquota_scheduler.so"
[plugins.config.quotas]
a = 3
b = 1
c = 2
"#,
        addr = mock.addr
    )
}

/// A `Scheduler` plugin picks each call's key; past every quota it hands the pick back to the
/// gateway's round-robin, and requests keep succeeding.
#[test]
fn a_scheduler_plugin_picks_the_keys_by_quota_then_hands_back_to_round_robin() {
    let mock = MockServer::start();
    let gw = Gateway::start_with_env(&scheduled(&mock, "quota-scheduler"), ENV);
    for i in 0..6 {
        let r = gw.chat(None, &chat_body("gpt", "schedule me", i == 3));
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let pool = credentials(&gw, "quota");
    let calls: Vec<u64> = ["a", "b", "c"].iter().map(|id| key(&pool, id)["calls"].as_u64().unwrap()).collect();
    assert_eq!(calls, [3, 1, 2], "each key took its quota: {pool:#}");
    for _ in 0..3 {
        assert_eq!(gw.chat(None, &chat_body("gpt", "past the quotas", false)).status, 200);
    }
    let pool = credentials(&gw, "quota");
    let calls: Vec<u64> = ["a", "b", "c"].iter().map(|id| key(&pool, id)["calls"].as_u64().unwrap()).collect();
    assert_eq!(calls, [4, 2, 3], "round-robin took over: {pool:#}");
    assert_eq!(gw.metric("gateway_plugin_hook_calls_total{plugin=\"quota-scheduler\",hook=\"pick\"}"), Some(9.0));

    // A reload with new quotas: the pool (its upstream unchanged) is bound to the new instance.
    gw.rewrite_config(&scheduled(&mock, "quota-scheduler").replace("a = 3\nb = 1\nc = 2", "a = 0\nb = 0\nc = 5"));
    let r = gw.admin("POST", "/admin/reload", Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..4 {
        assert_eq!(gw.chat(None, &chat_body("gpt", "after the reload", false)).status, 200);
    }
    let pool = credentials(&gw, "quota");
    let calls: Vec<u64> = ["a", "b", "c"].iter().map(|id| key(&pool, id)["calls"].as_u64().unwrap()).collect();
    assert_eq!(calls, [4, 2, 7], "only c has quota left in the new version: {pool:#}");
}

#[test]
fn a_scheduler_that_is_not_loaded_is_refused_at_start() {
    let mock = MockServer::start();
    let stderr = Gateway::refused(&scheduled(&mock, "nobody"));
    assert!(
        stderr.contains("upstream `quota`: scheduler `nobody` is not a loaded plugin with the Scheduler capability")
            && stderr.contains("[\"quota-scheduler\"]"),
        "{stderr}"
    );
}
