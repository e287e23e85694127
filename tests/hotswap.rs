//! Hot swap under live traffic: two builds of the plugin `swapper` (v1, v2) replace each other
//! through the admin API, SIGHUP and the file watcher, with a broken file refused midway.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_tests::{Gateway, agent, chat_body, plugin_so};

const TOKEN: &str = "admin-test-token";

/// A gateway whose `swapper` plugin is loaded from `{dir}/plugins/swapper.so`, a copy of v1.
fn start(extra: &str) -> (Gateway, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plugins/swapper.so");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(plugin_so("swap-v1"), &file).unwrap();
    let config = format!(
        r#"
[admin]
token = "{TOKEN}"
{extra}

[[upstreams]]
name = "mock"
kind = "mock"
chunks = 4
chunk_delay_ms = 5

[[models]]
name = "mock-gpt"
upstream = "mock"

[[plugins]]
path = "{}"
"#,
        file.display()
    );
    (Gateway::start_in(dir, &config), file)
}

/// Puts build `v` where the operator's file is. Overwriting it in place is safe: the gateway
/// maps its own private copy.
fn put(file: &Path, v: u64) {
    std::fs::copy(plugin_so(&format!("swap-v{v}")), file).unwrap();
}

fn version_of(epoch: u64) -> &'static str {
    if epoch % 2 == 0 { "v1" } else { "v2" }
}

struct Seen {
    /// Swaps completed when the request started: it must not see an older version.
    epoch_start: u64,
    /// Swaps started when it ended: it cannot see a newer one.
    epoch_end: u64,
    status: u16,
    stamp: Option<String>,
    seen: Option<String>,
}

#[test]
fn fifty_swaps_under_streaming_and_non_streaming_load_fail_no_request() {
    let (gw, file) = start("");
    let gw = Arc::new(gw);
    let (epoch, started) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (gw, epoch, started, stop, seen) =
                (gw.clone(), epoch.clone(), started.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let stream = i % 2 == 1;
                while !stop.load(SeqCst) {
                    let epoch_start = epoch.load(SeqCst);
                    let r = gw.chat(None, &chat_body("mock-gpt", "hi", stream));
                    if stream && r.status == 200 {
                        assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"), "{}", r.body);
                    }
                    seen.lock().unwrap().push(Seen {
                        epoch_start,
                        epoch_end: started.load(SeqCst),
                        status: r.status,
                        stamp: r.header("x-swapper").map(str::to_owned),
                        seen: r.header("x-swapper-seen").map(str::to_owned),
                    });
                }
            })
        })
        .collect();
    for swap in 1..=50u64 {
        std::thread::sleep(Duration::from_millis(15));
        if swap == 25 {
            // A broken file is refused; the running version keeps serving.
            std::fs::write(&file, b"\x7fELF but not really").unwrap();
            let r = gw.admin("POST", "/admin/plugins/swapper/reload", Some(TOKEN));
            assert_eq!(r.status, 422, "{}", r.body);
            assert!(r.error()["message"].as_str().unwrap().contains("not a loadable shared library"), "{}", r.body);
            assert!(r.error()["message"].as_str().unwrap().contains("keeps serving"), "{}", r.body);
            std::thread::sleep(Duration::from_millis(15));
        }
        put(&file, if swap % 2 == 1 { 2 } else { 1 });
        started.store(swap, SeqCst);
        let r = gw.admin("POST", "/admin/plugins/swapper/reload", Some(TOKEN));
        assert_eq!(r.status, 200, "swap {swap}: {}", r.body);
        assert_eq!(r.json()["outcome"], "reloaded");
        assert_eq!(r.json()["to_version"], if swap % 2 == 1 { "2.0.0" } else { "1.0.0" });
        epoch.store(swap, SeqCst);
    }
    std::thread::sleep(Duration::from_millis(30));
    stop.store(true, SeqCst);
    load.into_iter().for_each(|t| t.join().unwrap());
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 200, "only {} requests ran during 50 swaps", seen.len());
    for s in seen.iter() {
        assert_eq!(s.status, 200, "a request failed during the swaps");
        let stamp = s.stamp.as_deref().expect("every response is stamped");
        assert_eq!(s.seen.as_deref(), Some(stamp), "one response saw two versions");
        let allowed: Vec<&str> = (s.epoch_start..=s.epoch_end).map(version_of).collect();
        assert!(
            allowed.contains(&stamp),
            "a request started after swap {} was stamped {stamp}, expected {allowed:?}",
            s.epoch_start
        );
    }
    let failures = gw.metric("gateway_plugin_reload_failures_total{plugin=\"swapper\"}");
    assert_eq!(failures, Some(1.0));
    assert!(gw.wait_for_log("swapper v1 quiesced") && gw.logs().contains("swapper v2 quiesced"));
    let status = gw.admin("GET", "/admin/plugins", Some(TOKEN)).json();
    let plugin = &status["plugins"][0];
    assert_eq!(plugin["version"], "1.0.0");
    assert!(plugin["calls"].as_u64().unwrap() >= 2 * seen.len() as u64, "{plugin}");
    assert!(plugin["retired_versions_mapped"].is_u64(), "{plugin}");
}

#[test]
fn admin_endpoints_need_the_token() {
    let (gw, _file) = start("");
    assert_eq!(gw.admin("GET", "/admin/plugins", None).status, 401);
    let r = gw.admin("GET", "/admin/plugins", Some("wrong"));
    assert_eq!((r.status, r.error()["code"].as_str()), (401, Some("admin_unauthorized")));
    assert_eq!(gw.admin("GET", "/admin/plugins", Some(TOKEN)).status, 200);
    assert_eq!(gw.admin("POST", "/admin/plugins/nope/reload", Some(TOKEN)).status, 404);
    drop(gw);
    let gw = Gateway::start("[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n");
    let r = gw.admin("GET", "/admin/plugins", Some(TOKEN));
    assert_eq!(r.status, 401);
    assert!(r.error()["message"].as_str().unwrap().contains("admin endpoints are disabled"));
}

#[test]
fn an_unchanged_reload_does_nothing_and_a_config_change_reconfigures() {
    let dir = tempfile::tempdir().unwrap();
    let config = |value: &str| {
        format!(
            "[admin]\ntoken = \"{TOKEN}\"\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\nupstream = \"mock\"\n[[plugins]]\npath = \"{}\"\n[plugins.config.headers]\nx-stamp = \"{value}\"\n",
            plugin_so("header-stamp").display()
        )
    };
    let gw = Gateway::start_in(dir, &config("one"));
    let path = gw.dir.path().join("gateway.toml");
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(r.json()["results"][0]["outcome"], "unchanged", "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).header("x-stamp"), Some("one"));
    // Rewrite the config file the gateway was started from (keeping its listen and data lines).
    let text = std::fs::read_to_string(&path).unwrap().replace("x-stamp = \"one\"", "x-stamp = \"two\"");
    std::fs::write(&path, text).unwrap();
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(r.json()["results"][0]["outcome"], "reconfigured", "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).header("x-stamp"), Some("two"));
    // A config the plugin's schema rejects is refused; the running version keeps serving.
    let text = std::fs::read_to_string(&path).unwrap().replace("x-stamp = \"two\"", "x-stamp = 3");
    std::fs::write(&path, text).unwrap();
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(r.status, 422);
    assert!(r.body.contains("rejected at `headers.x-stamp`"), "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).header("x-stamp"), Some("two"));
}

fn wait_for_version(gw: &Gateway, version: &str) -> bool {
    for _ in 0..500 {
        if gw.admin("GET", "/admin/plugins", Some(TOKEN)).json()["plugins"][0]["version"] == version {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn sighup_reloads_changed_plugins() {
    let (gw, file) = start("");
    put(&file, 2);
    gw.signal("HUP");
    assert!(wait_for_version(&gw, "2.0.0"), "{}", gw.logs());
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).header("x-swapper"), Some("v2"));
}

#[test]
fn a_file_rewritten_in_several_writes_triggers_one_reload() {
    let (gw, file) = start("watch = true\nwatch_debounce_ms = 400");
    // A build writes its output in pieces; the watcher waits for quiet before reloading once.
    let bytes = std::fs::read(plugin_so("swap-v2")).unwrap();
    let mut out = std::fs::File::create(&file).unwrap();
    for part in bytes.chunks(bytes.len() / 4 + 1) {
        std::io::Write::write_all(&mut out, part).unwrap();
        std::io::Write::flush(&mut out).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    drop(out);
    assert!(wait_for_version(&gw, "2.0.0"), "{}", gw.logs());
    std::thread::sleep(Duration::from_millis(600));
    let logs = gw.logs();
    assert_eq!(logs.matches("plugin reloaded").count(), 1, "{logs}");
    assert!(!logs.contains("reload failed"), "{logs}");
    let r = agent().get(&gw.url("/healthz")).call().unwrap();
    assert_eq!(r.status(), 200);
}
