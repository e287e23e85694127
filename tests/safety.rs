//! The safety boundary: a plugin written in safe Rust (the `hostile` fixture) misuses the SDK in
//! every way it offers, and the gateway keeps serving with nothing lost or corrupted.

use std::time::Duration;

use gateway_tests::{Gateway, chat_body, plugin_so};

const TOKEN: &str = "admin-test-token";

/// A gateway with the mock upstream and one plugin (`plugin`, a fixture crate name) configured
/// by `settings` (TOML lines for `[plugins.config]`).
fn start(plugin: &str, settings: &str, extra: &str) -> Gateway {
    Gateway::start(&config(plugin, settings, extra))
}

fn config(plugin: &str, settings: &str, extra: &str) -> String {
    format!(
        "{extra}\n[admin]\ntoken = \"{TOKEN}\"\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\nchunks = 4\n\n\
         [[models]]\nname = \"m\"\nupstream = \"mock\"\n\n[[plugins]]\npath = \"{}\"\n[plugins.config]\n{settings}\n",
        plugin_so(plugin).display()
    )
}

/// Rewrites the plugin config in the gateway's config file and reloads through the admin API.
fn reconfigure(gw: &Gateway, from: &str, to: &str) -> gateway_tests::Reply {
    let path = gw.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    gw.admin("POST", "/admin/reload", Some(TOKEN))
}

/// The `x-hostile-report` fields of a fresh request: stale deliveries, late call answer, and
/// the answer to subscribing in shutdown.
fn report(gw: &Gateway) -> (u64, String, String) {
    let r = gw.chat(None, &chat_body("m", "hi", false));
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.header("x-hostile-report").expect("x-hostile-report").to_owned();
    let field =
        |name: &str| report.split(';').find_map(|f| f.strip_prefix(&format!("{name}="))).unwrap_or_default().to_owned();
    (field("stale").parse().unwrap(), field("late"), field("shutdown_subscribe"))
}

/// Waits until no retired plugin version waits to be shut down.
fn wait_retired(gw: &Gateway) {
    for _ in 0..500 {
        let status = gw.admin("GET", "/admin/plugins", Some(TOKEN)).json();
        if status["plugins"][0]["retired_versions_pending"] == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the retired version was never shut down");
}

fn assert_serving(gw: &Gateway) {
    assert_eq!(gw.get("/healthz").status, 200);
    assert_eq!(gw.chat(None, &chat_body("m", "still there?", false)).status, 200);
}

#[test]
fn a_panic_inside_a_kv_read_closure_fails_the_request_not_the_gateway() {
    let gw = start("hostile", "panic_in_kv_read = true", "");
    let r = gw.chat(None, &chat_body("m", "hi", false));
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.error()["code"], "plugin_failed");
    assert!(r.error()["message"].as_str().unwrap().contains("`hostile`"), "{}", r.body);
    assert!(gw.wait_for_log("hostile panics inside kv_read"), "{}", gw.logs());
    assert_eq!(gw.metric("gateway_plugin_hook_panics_total{plugin=\"hostile\",hook=\"post_auth\"}"), Some(1.0));
    assert_eq!(gw.get("/healthz").status, 200);
}

#[test]
fn a_panic_whose_payload_panics_when_dropped_is_still_contained() {
    let gw = start("hostile", "panic_with_exploding_payload = true", "");
    for _ in 0..2 {
        let r = gw.chat(None, &chat_body("m", "hi", false));
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(r.error()["code"], "plugin_failed");
    }
    assert!(gw.wait_for_log("plugin panicked: non-string panic payload"), "{}", gw.logs());
    assert_eq!(gw.get("/healthz").status, 200);
}

#[test]
fn a_subscriber_that_blocks_stalls_neither_unloading_nor_shutdown() {
    let gw = start("hostile", "publish = true\nblocking_subscriber_ms = 60000\ngeneration = 1", "");
    // The event thread is now inside the subscriber for a minute.
    assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).status, 200);
    std::thread::sleep(Duration::from_millis(100));
    // The old version unloads without waiting for it (bounded wait), and so does shutdown.
    assert_eq!(reconfigure(&gw, "generation = 1", "generation = 2").status, 200);
    wait_retired(&gw);
    assert!(gw.wait_for_log("an event subscriber is still running"), "{}", gw.logs());
    assert_serving(&gw);
    // Had stopping waited for the subscriber (a minute), the harness would have killed the
    // gateway 20 s after SIGTERM, and it would not have exited successfully.
    let (status, logs, _) = gw.stop();
    assert!(status.success(), "stopping waited for the blocked subscriber ({status}):\n{logs}");
}

#[test]
fn a_kv_write_inside_a_kv_read_closure_neither_deadlocks_nor_stalls_the_store() {
    let gw = start("hostile", "kv_set_in_kv_read = true", "");
    for _ in 0..3 {
        let r = gw.chat(None, &chat_body("m", "hi", false));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[test]
fn a_failed_init_leaves_no_subscription_behind() {
    let gw = start("hostile", "publish = true", "");
    let r = reconfigure(&gw, "publish = true", "publish = true\nsubscribe_then_fail_init = true");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("hostile subscribed, then failed its init"), "{}", r.body);
    // The running version publishes on every request; nothing may reach the failed instance.
    for _ in 0..5 {
        report(&gw);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(report(&gw).0, 0, "events reached a subscription of an instance that failed to initialise");
}

#[test]
fn a_host_kept_past_shutdown_gets_errors_and_subscribing_in_shutdown_is_refused() {
    let settings = "keep_host_in_static = true\nsubscribe_in_shutdown = true\npublish = true\ngeneration = 1";
    let gw = start("hostile", settings, "");
    // Generation 2 calls generation 1's host while it still serves: that works.
    assert_eq!(reconfigure(&gw, "generation = 1", "generation = 2").status, 200);
    assert_eq!(report(&gw).1, "ok");
    wait_retired(&gw);
    // Generation 1 has shut down: its kept host answers with an error, and its subscribe from
    // shutdown was refused.
    assert_eq!(reconfigure(&gw, "generation = 2", "generation = 3").status, 200);
    let (_, late, shutdown_subscribe) = report(&gw);
    assert!(late.contains("has been shut down"), "late call answered {late:?}");
    assert!(shutdown_subscribe.contains("shutting down"), "subscribe in shutdown answered {shutdown_subscribe:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(report(&gw).0, 0, "events reached a subscription made during shutdown");
    assert_serving(&gw);
}

/// Item 3 on memory rather than on an error text: the gateway runs under valgrind's memcheck
/// while a thread and a static of the first instance keep calling its `Host` after it shut down.
/// Without the counted handles those calls read the freed host context (memcheck then reports
/// "Invalid read", though the answers still look right).
#[test]
fn host_handles_kept_past_shutdown_touch_no_freed_memory() {
    let settings = "thread_outlives_shutdown = true\nkeep_host_in_static = true\ngeneration = 1";
    let gw = Gateway::start_under(
        &["valgrind", "--quiet", "--log-file={dir}/memcheck.log", "--leak-check=no"],
        &config("hostile", settings, ""),
    );
    assert_eq!(reconfigure(&gw, "generation = 1", "generation = 2").status, 200);
    // The first instance retires; its thread keeps calling until it is told it shut down.
    let mut thread = String::new();
    for _ in 0..300 {
        let r = gw.chat(None, &chat_body("m", "hi", false));
        assert_eq!(r.status, 200, "{}", r.body);
        let report = r.header("x-hostile-report").unwrap_or_default().to_owned();
        thread = report.split(';').find_map(|f| f.strip_prefix("thread=")).unwrap_or_default().to_owned();
        if !thread.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(thread.contains("has been shut down"), "the thread's late call answered {thread:?}");
    // The static's late call, from the third instance's init.
    assert_eq!(reconfigure(&gw, "generation = 2", "generation = 3").status, 200);
    let (_, late, _) = report(&gw);
    assert!(late.contains("has been shut down"), "late call answered {late:?}");
    let (status, logs, dir) = gw.stop();
    assert!(status.success(), "the gateway under memcheck exited with {status}:\n{logs}");
    let memcheck = std::fs::read_to_string(dir.path().join("memcheck.log")).expect("memcheck.log");
    assert!(memcheck.trim().is_empty(), "memcheck reported errors:\n{memcheck}");
}

#[test]
fn panicking_subscribers_stream_state_shutdown_and_drop_are_contained() {
    let settings = "publish = true\npanicking_subscriber = true\npanic_in_shutdown_and_drop = true\n\
                    panicking_stream_state = true\ngeneration = 1";
    let gw = start("hostile", settings, "");
    for _ in 0..3 {
        assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).status, 200);
    }
    let r = gw.chat(None, &chat_body("m", "hi", true));
    assert_eq!(r.status, 200);
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"), "{}", r.body);
    assert!(gw.wait_for_log("event subscriber panicked on topic `hostile`"), "{}", gw.logs());
    assert!(gw.wait_for_log("panicked in on_stream_end"), "{}", gw.logs());
    // Retire generation 1: its shutdown panics, then its drop panics, then its subscriber's drop.
    assert_eq!(reconfigure(&gw, "generation = 1", "generation = 2").status, 200);
    wait_retired(&gw);
    assert!(gw.wait_for_log("panicked in shutdown: hostile panics in shutdown"), "{}", gw.logs());
    assert!(gw.wait_for_log("panicked in drop: hostile panics while being dropped"), "{}", gw.logs());
    assert!(
        gw.wait_for_log("event subscriber panicked while being dropped: hostile panics while being dropped"),
        "{}",
        gw.logs()
    );
    assert_serving(&gw);
    let (status, logs, _) = gw.stop();
    assert!(status.success(), "the gateway did not stop cleanly ({status}):\n{logs}");
}

#[test]
fn panics_in_on_ready_and_quiesce_are_logged_and_the_plugin_keeps_serving() {
    let gw = start("hostile", "panic_in_lifecycle = true\ngeneration = 1", "");
    assert!(gw.wait_for_log("panicked in on_ready: hostile panics in on_ready"), "{}", gw.logs());
    assert_eq!(reconfigure(&gw, "generation = 1", "generation = 2").status, 200);
    assert!(gw.wait_for_log("panicked in quiesce: hostile panics in quiesce"), "{}", gw.logs());
    // The new version's on_ready panicked too, and it serves.
    let r = gw.chat(None, &chat_body("m", "hi", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("x-hostile-report").is_some());
    assert_serving(&gw);
}

#[test]
fn a_reload_quiesces_the_old_version_before_the_new_one_is_ready() {
    let gw = start("faulty", "label = \"one\"", "");
    assert!(gw.wait_for_log("faulty ready"));
    assert_eq!(reconfigure(&gw, "label = \"one\"", "label = \"two\"").status, 200);
    assert!(gw.wait_for_log("faulty quiesced"));
    let logs = gw.logs();
    let quiesced = logs.find("faulty quiesced").unwrap();
    let second_ready = logs.rfind("faulty ready").unwrap();
    assert!(quiesced < second_ready, "the new version was ready before the old one quiesced:\n{logs}");
}

#[test]
fn a_full_event_queue_refuses_and_counts_events_and_requests_go_on() {
    let gw = start("hostile", "publish = true\nslow_subscriber_ms = 50", "event_queue = 1");
    for _ in 0..20 {
        assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).status, 200);
    }
    let dropped = gw.metric("gateway_events_dropped_total").unwrap();
    assert!(dropped >= 1.0, "dropped {dropped} of 20 events");
}

#[test]
fn quarantine_counts_panics_in_a_window_and_a_successful_probe_re_enables_the_plugin() {
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "boom"
upstream = "mock"

[[models]]
name = "m"
upstream = "mock"

[[plugins]]
path = "{}"
quarantine_after = 2
quarantine_window_secs = 3
quarantine_probe_secs = 3
[plugins.config]
hook = "panic"
only_model = "boom"
"#,
        plugin_so("faulty").display()
    ));
    let chat = |model: &str| gw.chat(None, &chat_body(model, "hi", false)).status;
    // Two panics further apart than the window do not quarantine.
    assert_eq!(chat("boom"), 500);
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(chat("boom"), 500);
    assert_eq!(chat("m"), 200);
    // A second one within the window does.
    assert_eq!(chat("boom"), 500);
    assert_eq!(chat("m"), 503);
    assert_eq!(gw.metric("gateway_plugin_quarantines_total{plugin=\"faulty\"}"), Some(1.0));
    // The probe is due: a request that panics again keeps it quarantined...
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(chat("boom"), 500);
    assert_eq!(chat("m"), 503);
    assert!(gw.wait_for_log("quarantine probe panicked: the plugin stays quarantined"), "{}", gw.logs());
    // ...and a probe that does not panic re-enables it.
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(chat("m"), 200);
    assert_eq!(chat("m"), 200);
    assert!(gw.wait_for_log("quarantine probe succeeded"), "{}", gw.logs());
    assert_eq!(gw.metric("gateway_plugin_quarantine_probes_total{plugin=\"faulty\"}"), Some(2.0));
    assert_eq!(gw.metric("gateway_plugin_quarantine_recoveries_total{plugin=\"faulty\"}"), Some(1.0));
}

#[test]
fn the_request_validator_fails_closed_on_a_body_it_cannot_read() {
    let gw = start("request-validator", "max_prompt_chars = 5", "");
    let body = r#"{"model":"m","messages":[{"role":"user","content":"\ud800 far more than five characters"}]}"#;
    let r = gateway_tests::Reply::from(
        gateway_tests::agent()
            .post(&gw.url("/v1/chat/completions"))
            .set("content-type", "application/json")
            .send_string(body),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error()["code"], "request_rejected");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_releases_the_retired_plugin_version() {
    use std::io::{Read, Write};
    let gw = Gateway::start(&format!(
        "[limits]\nwrite_timeout_ms = 300\n[admin]\ntoken = \"{TOKEN}\"\n\
         [[upstreams]]\nname = \"mock\"\nkind = \"mock\"\nchunks = 100000\n\
         [[models]]\nname = \"m\"\nupstream = \"mock\"\n\
         [[plugins]]\npath = \"{}\"\n[plugins.config]\ngeneration = 1\n",
        plugin_so("hostile").display()
    ));
    // A streaming request whose client reads a little, then stops reading (but stays connected).
    // The mock echoes the prompt: 100k words make a stream (~15 MB) larger than socket buffers.
    let body = chat_body("m", &"word ".repeat(100_000), true).to_string();
    // A small receive buffer (it turns off autotuning, which can reach tens of MB on loopback),
    // so that the gateway's writes block after a few hundred KB.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    socket.connect(&gw.addr.into()).unwrap();
    let mut stalled: std::net::TcpStream = socket.into();
    write!(
        stalled,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    stalled.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
    // Retire the version that stream runs on: it is released once the stalled client is cut off.
    assert_eq!(reconfigure(&gw, "generation = 1", "generation = 2").status, 200);
    wait_retired(&gw);
    assert_eq!(gw.metric("gateway_write_timeouts_total"), Some(1.0));
    assert!(gw.wait_for_log("client stopped reading: connection cut after 300 ms"), "{}", gw.logs());
    assert_serving(&gw);
    drop(stalled);
}

#[test]
fn connections_beyond_the_cap_get_a_503_and_the_gateway_keeps_serving() {
    use std::io::Read;
    let gw = start("hostile", "", "[limits]\nmax_connections = 2");
    let held: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(gw.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = std::net::TcpStream::connect(gw.addr).unwrap();
    let mut answer = String::new();
    over.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections") && answer.contains("at most 2 connections"), "{answer}");
    drop(held);
    // The held connections' slots come back once the gateway sees them close.
    let mut status = 0;
    for _ in 0..100 {
        status = gateway_tests::agent().get(&gw.url("/healthz")).call().map_or(0, |r| r.status());
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status, 200);
    assert!(gw.metric("gateway_connections_refused_total").unwrap() >= 1.0);
}

#[test]
fn no_reload_starts_once_shutdown_has_begun() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plugins/swapper.so");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(plugin_so("swap-v1"), &file).unwrap();
    let config = format!(
        "[admin]\nwatch = true\nwatch_debounce_ms = 50\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n\
         chunks = 8\nchunk_delay_ms = 150\n[[models]]\nname = \"m\"\nupstream = \"mock\"\n\
         [[plugins]]\npath = \"{}\"\n",
        file.display()
    );
    let gw = Gateway::start_in(dir, &config);
    // A stream in flight keeps the gateway draining for about a second after SIGTERM.
    let url = gw.url("/v1/chat/completions");
    let stream = std::thread::spawn(move || {
        let body = chat_body("m", "one two three four five six seven eight", true).to_string();
        gateway_tests::Reply::from(
            gateway_tests::agent().post(&url).set("content-type", "application/json").send_string(&body),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    gw.signal("TERM");
    assert!(gw.wait_for_log("shutting down"));
    // A new build lands while the gateway drains: the watcher must not reload it.
    std::fs::copy(plugin_so("swap-v2"), &file).unwrap();
    let reply = stream.join().unwrap();
    assert_eq!(reply.events().last().map(String::as_str), Some("[DONE]"), "{}", reply.body);
    let (status, logs, _) = gw.stop();
    assert!(status.success(), "{logs}");
    let after = &logs[logs.find("shutting down").unwrap()..];
    assert!(
        !after.contains("plugin reloaded") && !after.contains("plugin loaded"),
        "a reload ran during shutdown:\n{logs}"
    );
}

#[test]
fn a_huge_ttl_keeps_the_key_instead_of_expiring_it_at_once() {
    let gw = start("hostile", "huge_ttl = true", "");
    for _ in 0..2 {
        let r = gw.chat(None, &chat_body("m", "hi", false));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[test]
fn a_relative_data_dir_is_resolved_against_the_config_files_directory() {
    use std::io::BufRead;
    let config_dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("gateway.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\n").unwrap();
    let mut child = std::process::Command::new(gateway_tests::gateway_bin())
        .arg("--config")
        .arg(&config)
        .current_dir(cwd.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let listening =
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.starts_with("listening on"));
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    assert!(listening, "the gateway did not start");
    assert!(config_dir.path().join("state/kv.redb").is_file(), "the KV store is not next to the config file");
    assert!(!cwd.path().join("state").exists(), "the data dir was resolved against the working directory");
}

#[test]
fn a_retired_version_whose_shutdown_hangs_does_not_keep_the_gateway_from_exiting() {
    let gw = start("hostile", "shutdown_sleep_ms = 600000\ngeneration = 1", "");
    assert_eq!(reconfigure(&gw, "shutdown_sleep_ms = 600000", "shutdown_sleep_ms = 0").status, 200);
    // The reaper hands the first version to a blocking thread, where its shutdown hangs.
    std::thread::sleep(Duration::from_millis(1000));
    assert_serving(&gw);
    // The harness kills a gateway that has not exited 20 s after SIGTERM: a clean exit code
    // means stopping left the hung thread behind instead of waiting for it.
    let (status, logs, _) = gw.stop();
    assert!(status.success(), "the gateway did not exit on SIGTERM ({status}):\n{logs}");
}

#[test]
fn a_reload_under_way_when_shutdown_begins_is_finished_and_its_new_version_shut_down() {
    let gw = Gateway::start(
        &config("hostile", "init_sleep_ms = 0\nshutdown_marker = \"{dir}/marker\"\ngeneration = 1", "")
            .replace("[admin]\n", "[admin]\nwatch = true\nwatch_debounce_ms = 50\n"),
    );
    let path = gw.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("init_sleep_ms = 0", "init_sleep_ms = 2000").replace("generation = 1", "generation = 2"),
    )
    .unwrap();
    // The watcher's reload starts: the second version sleeps in its init while the gateway is
    // told to stop.
    assert!(gw.wait_for_log("applying the config file"), "{}", gw.logs());
    std::thread::sleep(Duration::from_millis(300));
    let (status, logs, dir) = gw.stop();
    assert!(status.success(), "{logs}");
    // Every instance that finished its init was shut down, the one the reload made included;
    // the reload did not swap it in after shutdown began.
    let marker = std::fs::read_to_string(dir.path().join("marker")).unwrap_or_default();
    assert!(marker.contains("shutdown 1") && marker.contains("shutdown 2"), "marker: {marker:?}\n{logs}");
    assert!(logs.contains("shutting down: no more reloads"), "{logs}");
}
