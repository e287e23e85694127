//! Host services through the real gateway and real plugins: durable KV (restart and kill -9),
//! events, lookups, rate-limited plugin logs, and the plugin lifecycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use gateway_tests::{Gateway, chat_body};

/// api-key-auth (gateway keys) + a rate limiter with a quota of `limit` + the usage logger.
fn limited(limit: u32) -> String {
    format!(
        r#"
[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-gpt"
upstream = "mock"

[[models]]
name = "big-model"
upstream = "mock"

[[apps]]
id = "app-1"
name = "App one"

[[apps]]
id = "app-small"
name = "Small app"
models = ["mock-gpt"]

[[api_keys]]
key = "sk-app-one-key"
app = "app-1"
user = "alice"

[[api_keys]]
key = "sk-small-key"
app = "app-small"
user = "bob"

[[plugins]]
path = "{{target}}/libapi_key_auth.so"
order = 10

[[plugins]]
path = "{{target}}/librate_limiter.so"
order = 20
isolate = true
[plugins.config]
requests_per_window = {limit}
window_secs = 0

[[plugins]]
path = "{{target}}/libusage_logger.so"
order = 30
[plugins.config]
path = "{{dir}}/usage.jsonl"
"#
    )
}

const KEY: &str = "sk-app-one-key";

fn remaining(gw: &Gateway) -> (u16, Option<String>) {
    let r = gw.chat(Some(KEY), &chat_body("mock-gpt", "hi", false));
    (r.status, r.header("x-ratelimit-remaining").map(str::to_owned))
}

#[test]
fn rate_limit_counts_live_in_kv_and_survive_a_restart() {
    let gw = Gateway::start(&limited(3));
    assert_eq!(remaining(&gw), (200, Some("2".into())));
    assert_eq!(remaining(&gw), (200, Some("1".into())));
    let (status, logs, dir) = gw.stop();
    assert!(status.success(), "{logs}");
    let gw = Gateway::start_in(dir, &limited(3));
    assert_eq!(remaining(&gw), (200, Some("0".into())));
    let r = gw.chat(Some(KEY), &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error()["code"], "rate_limit_exceeded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    // The refusal was published as an event; the usage logger, subscribed to all, wrote it.
    let usage = gw.dir.path().join("usage.jsonl");
    let mut event = None;
    for _ in 0..200 {
        let text = std::fs::read_to_string(&usage).unwrap_or_default();
        event =
            text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v["type"] == "event");
        if event.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let event = event.expect("a ratelimit.exceeded event in the usage log");
    assert_eq!((event["topic"].as_str(), event["source"].as_str()), (Some("ratelimit.exceeded"), Some("rate-limiter")));
    assert!(event["payload"].as_str().unwrap().contains("\"count\":4"), "{event}");
}

#[test]
fn acknowledged_kv_writes_survive_kill_9_in_the_middle_of_writes() {
    let gw = Arc::new(Gateway::start(&limited(1_000_000)));
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (gw, acked, stop) = (gw.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let r = gateway_tests::agent()
                        .post(&gw.url("/v1/chat/completions"))
                        .set("authorization", &format!("Bearer {KEY}"))
                        .set("content-type", "application/json")
                        .send_string(&chat_body("mock-gpt", "hi", false).to_string());
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            acked.fetch_add(1, Relaxed);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    while acked.load(Relaxed) < 40 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Requests are in flight on every writer thread when the gateway dies.
    gw.kill9();
    stop.store(true, Relaxed);
    writers.into_iter().for_each(|w| w.join().unwrap());
    let dir = Arc::try_unwrap(gw).ok().expect("writers are done with the gateway").into_dir();
    let acked = acked.load(Relaxed) as i64;
    let gw = Gateway::start_in(dir, &limited(1_000_000));
    let (status, left) = remaining(&gw);
    assert_eq!(status, 200);
    let used = 1_000_000 - left.unwrap().parse::<i64>().unwrap();
    // Every acknowledged request was counted durably (plus the one just made, plus any that
    // were committed but not yet answered when the process died).
    assert!(used > acked, "counted {used} requests, {acked} were acknowledged before kill -9");
    assert!(used <= acked + 1 + 4, "counted {used}, but only {acked} + 4 in flight + 1 were made");
}

#[test]
fn gateway_config_keys_and_app_models_are_looked_up_by_the_auth_plugin() {
    let gw = Gateway::start(&limited(100));
    let r = gw.chat(Some("sk-small-key"), &chat_body("mock-gpt", "hi", false));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = gw.chat(Some("sk-small-key"), &chat_body("big-model", "hi", false));
    assert_eq!(r.status, 401);
    assert!(
        r.error()["message"].as_str().unwrap().contains("app `app-small` may not use model `big-model`"),
        "{}",
        r.body
    );
    assert!(gw.wait_for_log("0 API keys configured, 2 apps known to the gateway"), "{}", gw.logs());
}

fn faulty(extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-gpt"
upstream = "mock"

[[plugins]]
path = "{{target}}/libfaulty.so"
[plugins.config]
background_thread = true
{extra}
"#
    )
}

#[test]
fn a_topic_subscription_logs_each_event_once_across_a_swap_with_a_request_in_flight() {
    let config = format!("[admin]\ntoken = \"t\"\n{}", limited(1))
        .replace("kind = \"mock\"\n", "kind = \"mock\"\nchunks = 20\nchunk_delay_ms = 100\n")
        .replace("path = \"{dir}/usage.jsonl\"", "path = \"{dir}/usage.jsonl\"\ntopics = [\"ratelimit.exceeded\"]");
    let gw = Arc::new(Gateway::start(&config));
    // A two-second stream holds the pipeline it started on, and with it the old usage-logger.
    let streaming = {
        let gw = gw.clone();
        std::thread::spawn(move || gw.chat(Some(KEY), &chat_body("mock-gpt", "a long answer", true)))
    };
    std::thread::sleep(Duration::from_millis(300));
    let file = gw.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("[\"ratelimit.exceeded\"]", "[\"ratelimit.exceeded\", \"auth.denied\"]"))
        .unwrap();
    let r = gw.admin("POST", "/admin/plugins/usage-logger/reload", Some("t"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"reconfigured\""), "{}", r.body);
    // Over the quota of 1: refused, and `ratelimit.exceeded` is published.
    assert_eq!(gw.chat(Some(KEY), &chat_body("mock-gpt", "hi", false)).status, 429);
    let stream = streaming.join().unwrap();
    assert_eq!(stream.status, 200, "{}", stream.body);
    assert_eq!(stream.events().last().map(String::as_str), Some("[DONE]"));
    let events = || {
        let text = std::fs::read_to_string(gw.dir.path().join("usage.jsonl")).unwrap_or_default();
        text.lines().filter(|l| l.contains("\"topic\":\"ratelimit.exceeded\"")).count()
    };
    for _ in 0..100 {
        if events() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Delivery is asynchronous: give a second copy time to show up.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(events(), 1, "the old and the new usage-logger both logged the event");
}

#[test]
fn a_full_collector_queue_drops_and_counts_and_never_blocks_a_request() {
    // A collector taking 100 ms a record behind a queue of 2: most records cannot be queued.
    let gw = Gateway::start(&format!(
        "collector_queue = 2
{}",
        faulty("collect_sleep_ms = 100")
    ));
    for _ in 0..30 {
        assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    }
    let dropped = gw.metric("gateway_collector_dropped_total").unwrap();
    // Had a request waited for room in the queue, none would have been dropped.
    assert!(dropped >= 10.0, "dropped {dropped} of 30 records");
    assert!(gw.wait_for_log("collector queue full: records dropped"), "{}", gw.logs());
}

#[test]
fn plugin_logs_are_rate_limited_and_counted() {
    let gw = Gateway::start(&format!(
        "[logging]\nplugin_burst = 10\nplugin_lines_per_sec = 1\n{}",
        faulty("log_lines = 200")
    ));
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    let dropped = gw.metric("gateway_plugin_log_dropped_total{plugin=\"faulty\"}").unwrap();
    let logs = gw.logs();
    let shown = logs.matches("faulty log line").count();
    // "faulty ready" took one token of the burst of 10.
    assert!(shown <= 10, "{shown} lines passed a burst of 10");
    assert!(dropped >= 190.0, "dropped {dropped}");
    assert!(logs.contains("plugin log rate limit reached"), "{logs}");
}

#[test]
fn plugin_lines_below_the_configured_level_are_dropped() {
    let gw = Gateway::start(&format!("[logging]\nplugin_level = \"warn\"\n{}", faulty("log_lines = 3")));
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    let (_, logs, _) = gw.stop();
    assert!(!logs.contains("faulty log line") && !logs.contains("faulty ready"), "{logs}");
}

#[test]
fn ready_runs_after_load_and_shutdown_runs_once_after_the_stop_signal() {
    let gw = Gateway::start(&faulty(""));
    assert!(gw.wait_for_log("faulty ready"), "{}", gw.logs());
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    let (status, logs, _) = gw.stop();
    assert!(status.success(), "{status}\n{logs}");
    assert_eq!(logs.matches("faulty ready").count(), 1, "{logs}");
    assert_eq!(logs.matches("faulty background thread stopped").count(), 1, "{logs}");
    assert_eq!(logs.matches("faulty shutdown").count(), 1, "{logs}");
    let stopped = logs.find("faulty background thread stopped").unwrap();
    assert!(stopped < logs.find("faulty shutdown").unwrap(), "the stop signal fires before shutdown");
}

/// `gateway kv list|get` reads a plugin's namespace from a stopped gateway's data directory,
/// and says plainly when a running gateway holds the store.
#[test]
fn gateway_kv_lists_and_reads_a_plugins_namespace_and_names_the_lock() {
    let gw = Gateway::start(&limited(5));
    assert_eq!(remaining(&gw), (200, Some("4".into())));
    assert_eq!(remaining(&gw), (200, Some("3".into())));
    let config = gw.dir.path().join("gateway.toml");
    let kv = |args: &[&str]| {
        std::process::Command::new(gateway_tests::gateway_bin())
            .arg("--config")
            .arg(&config)
            .arg("kv")
            .args(args)
            .output()
            .unwrap()
    };
    let locked = kv(&["list", "rate-limiter"]);
    assert!(!locked.status.success());
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(stderr.contains("locked by another process, most likely a gateway"), "{stderr}");
    let (status, logs, dir) = gw.stop();
    assert!(status.success(), "{logs}");
    let listed = kv(&["list", "rate-limiter"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let keys = String::from_utf8_lossy(&listed.stdout).into_owned();
    let key = keys.lines().next().unwrap_or_else(|| panic!("no keys: {keys}")).to_owned();
    let got = kv(&["get", "rate-limiter", &key]);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("(as a kv_increment counter: 2)"),
        "{}",
        String::from_utf8_lossy(&got.stdout)
    );
    let missing = kv(&["get", "rate-limiter", "no-such-key"]);
    assert!(!missing.status.success());
    drop(dir);
}

/// `gateway --config FILE plugin ARGS...`: (status, stdout, stderr).
fn plugin_command(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(gateway_tests::gateway_bin())
        .arg("--config")
        .arg(config)
        .arg("plugin")
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_usage_loggers_summary_command_totals_its_log_per_app_and_model() {
    let config = format!(
        r#"
[[upstreams]]
name = "mock"
kind = "mock"
[[models]]
name = "m1"
upstream = "mock"
[[models]]
name = "m2"
upstream = "mock"

[[plugins]]
path = "{{target}}/libapi_key_auth.so"
[plugins.config.keys.sk-test-one]
app = "app-one"
user = "u1"
[plugins.config.keys.sk-test-two]
app = "app-two"
user = "u2"

[[plugins]]
path = "{{target}}/libusage_logger.so"
[plugins.config]
path = "{{dir}}/usage.jsonl"
"#
    );
    let gw = Gateway::start(&config);
    for (key, model) in [("sk-test-one", "m1"), ("sk-test-one", "m1"), ("sk-test-two", "m2"), ("sk-test-one", "m2")] {
        assert_eq!(gw.chat(Some(key), &chat_body(model, "hello there", false)).status, 200);
    }
    let file = gw.dir.path().join("gateway.toml");
    // While the gateway runs (it holds the KV store: the command says so and goes on).
    let mut summary = (0, String::new(), String::new());
    for _ in 0..100 {
        summary = plugin_command(&file, &["usage-logger", "summary"]);
        if summary.1.lines().any(|l| l.starts_with("total") && l.split_whitespace().nth(1) == Some("4")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, stdout, stderr) = summary;
    assert_eq!(status, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("warning: cannot open KV store") && stderr.contains("empty KV store"), "{stderr}");
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0][..3], ["app", "model", "requests"], "{stdout}");
    assert_eq!(rows[1][..4], ["app-one", "m1", "2", "0"], "{stdout}");
    assert_eq!(rows[2][..4], ["app-two", "m2", "1", "0"], "{stdout}");
    assert_eq!(rows[3][..4], ["app-one", "m2", "1", "0"], "{stdout}");
    assert_eq!(rows[4][..2], ["total", "4"], "{stdout}");
    let (_, stdout, _) = plugin_command(&file, &["usage-logger", "summary", "--app", "app-one", "--json"]);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines.iter().all(|l| l["app_id"] == "app-one" && l["total_tokens"].as_u64() > Some(0)), "{stdout}");

    // clap answers help and bad flags before the plugin is called.
    let (status, stdout, _) = plugin_command(&file, &["usage-logger", "--help"]);
    assert!(status == 0 && stdout.contains("summary") && stdout.contains("Requests, errors and tokens"), "{stdout}");
    let (status, stdout, _) = plugin_command(&file, &["usage-logger", "summary", "--help"]);
    assert!(status == 0 && stdout.contains("--app <VALUE>") && stdout.contains("--json"), "{stdout}");
    let (status, _, stderr) = plugin_command(&file, &["usage-logger", "summary", "--bogus"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
    let (status, _, stderr) = plugin_command(&file, &["usage-logger", "nonsense"]);
    assert!(status == 2 && stderr.contains("unrecognized subcommand 'nonsense'"), "{stderr}");
    let (status, _, stderr) = plugin_command(&file, &["nobody", "summary"]);
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("no enabled plugin named `nobody`") && stderr.contains("usage-logger"), "{stderr}");
    let (status, _, stderr) = plugin_command(&file, &["api-key-auth", "summary"]);
    assert!(status == 1 && stderr.contains("declares no commands"), "{stderr}");

    // Once the gateway has stopped, the command has the gateway's KV store and no warning.
    let (_, _, dir) = gw.stop();
    let (status, stdout, stderr) = plugin_command(&dir.path().join("gateway.toml"), &["usage-logger", "summary"]);
    assert_eq!((status, stderr.as_str()), (0, ""), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("total") && l.split_whitespace().nth(1) == Some("4")), "{stdout}");
}

#[test]
fn a_plugin_command_that_panics_fails_with_the_panic_and_statuses_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let hostile = gateway_tests::plugin_so("hostile");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!("data_dir = \"{}\"\n[[plugins]]\npath = \"{}\"\n", data.display(), hostile.display()),
    )
    .unwrap();
    let (status, _, stderr) = plugin_command(&file, &["hostile", "panic"]);
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("plugin panicked: hostile command panics"), "{stderr}");
    let (status, stdout, stderr) = plugin_command(&file, &["hostile", "exit"]);
    assert_eq!((status, stdout.as_str(), stderr.as_str()), (3, "", "exiting with 3\n"));
}
