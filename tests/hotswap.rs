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

// Whole-config reloads: `POST /admin/reload`, SIGHUP and the watcher apply the config file as
// one new pipeline.

/// A config with the mock upstream `mock` serving model `m`, then `rest` (more TOML).
fn whole(rest: &str) -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\nupstream = \"mock\"\n{rest}"
    )
}

/// A `header-stamp` entry named `name`, at `order`, stamping `x-order: {name}` and `x-{name}: 1`.
fn stamp(name: &str, order: i64) -> String {
    format!(
        "[[plugins]]\npath = \"{}\"\nname = \"{name}\"\norder = {order}\n[plugins.config.headers]\nx-order = \"{name}\"\nx-{name} = \"1\"\n",
        plugin_so("header-stamp").display()
    )
}

fn outcomes(r: &gateway_tests::Reply) -> Vec<(String, String)> {
    let results = r.json()["results"].as_array().cloned().unwrap_or_default();
    results
        .iter()
        .map(|x| (x["plugin"].as_str().unwrap_or("").into(), x["outcome"].as_str().unwrap_or("").into()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
}

fn plugin_names(gw: &Gateway) -> Vec<String> {
    let plugins =
        gw.admin("GET", "/admin/plugins", Some(TOKEN)).json()["plugins"].as_array().cloned().unwrap_or_default();
    plugins.iter().map(|p| p["name"].as_str().unwrap_or("").to_owned()).collect()
}

#[test]
fn a_config_reload_adds_reorders_and_removes_plugins_in_one_snapshot() {
    let marker = "{dir}/marker";
    let hostile = format!(
        "[[plugins]]\npath = \"{}\"\norder = 2\n[plugins.config]\nshutdown_marker = \"{marker}\"\ngeneration = 7\n",
        plugin_so("hostile").display()
    );
    let gw = Gateway::start(&whole(&stamp("a", 1)));
    let a_loaded = gw.admin("GET", "/admin/plugins", Some(TOKEN)).json()["plugins"][0]["loaded_at_unix_ms"].clone();

    // Added: a second instance after the first (its header wins), and another plugin.
    gw.rewrite_config(&whole(&format!("{}{}{hostile}", stamp("a", 1), stamp("b", 3))));
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(outcomes(&r), pairs(&[("a", "unchanged"), ("hostile", "added"), ("b", "added")]), "{}", r.body);
    let reply = gw.chat(None, &chat_body("m", "hi", false));
    assert_eq!((reply.header("x-a"), reply.header("x-b"), reply.header("x-order")), (Some("1"), Some("1"), Some("b")));
    assert_eq!(plugin_names(&gw), ["a", "hostile", "b"]);
    // The unchanged instance kept running: same load time.
    assert_eq!(gw.admin("GET", "/admin/plugins", Some(TOKEN)).json()["plugins"][0]["loaded_at_unix_ms"], a_loaded);

    // Reordered: both instances kept, the other one's header wins now.
    gw.rewrite_config(&whole(&format!("{}{}{hostile}", stamp("a", 4), stamp("b", 3))));
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(outcomes(&r), pairs(&[("hostile", "unchanged"), ("b", "unchanged"), ("a", "unchanged")]), "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).header("x-order"), Some("a"));
    assert_eq!(plugin_names(&gw), ["hostile", "b", "a"]);

    // Removed: `b` and `hostile` leave; `hostile` quiesces and shuts down once unused.
    gw.rewrite_config(&whole(&stamp("a", 4)));
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(outcomes(&r), pairs(&[("a", "unchanged"), ("hostile", "removed"), ("b", "removed")]), "{}", r.body);
    let reply = gw.chat(None, &chat_body("m", "hi", false));
    assert_eq!((reply.header("x-b"), reply.header("x-order")), (None, Some("a")));
    assert_eq!(plugin_names(&gw), ["a"]);
    let marker = gw.dir.path().join("marker");
    let shut_down = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::fs::read_to_string(&marker).unwrap_or_default().contains("shutdown 7")
    });
    assert!(shut_down, "the removed plugin was not shut down:\n{}", gw.logs());
}

#[test]
fn a_config_reload_changes_models_upstreams_and_routes() {
    let gw = Gateway::start(&whole(""));
    assert_eq!(gw.chat(None, &chat_body("m2", "hi", false)).status, 404);
    assert_eq!(gw.post("/plugins/webhook-receiver/hooks/github", &[], &serde_json::json!({})).status, 404);

    let webhook = format!(
        "[[plugins]]\npath = \"{}\"\nendpoint_auth = false\n[plugins.config]\nsecret = \"a-webhook-secret-for-tests\"\n",
        plugin_so("webhook-receiver").display()
    );
    let config = whole(&format!(
        "[[upstreams]]\nname = \"mock2\"\nkind = \"mock\"\n[[models]]\nname = \"m2\"\nupstream = \"mock2\"\n{webhook}"
    ));
    gw.rewrite_config(&config);
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["upstreams"]["added"], serde_json::json!(["mock2"]), "{}", r.body);
    assert_eq!(r.json()["models"]["added"], serde_json::json!(["m2"]), "{}", r.body);
    assert_eq!(gw.chat(None, &chat_body("m2", "hi", false)).status, 200);
    let models = gw.get("/v1/models").json();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["m", "m2"]);
    let served = gw.admin("GET", "/admin/upstreams", Some(TOKEN)).json();
    assert_eq!(served["models"][1]["served_by"], "mock2", "{served}");
    // The plugin's route is served now: an unsigned webhook is refused by the plugin itself.
    let hook = gw.post("/plugins/webhook-receiver/hooks/github", &[], &serde_json::json!({}));
    assert_eq!(hook.status, 401, "{}", hook.body);

    // Removing the model and pointing the first at the new upstream.
    gw.rewrite_config(&config.replace("name = \"m2\"\nupstream = \"mock2\"\n", "name = \"m3\"\nupstream = \"mock\"\n"));
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(
        (r.json()["models"]["added"].clone(), r.json()["models"]["removed"].clone()),
        (serde_json::json!(["m3"]), serde_json::json!(["m2"])),
        "{}",
        r.body
    );
    assert_eq!(gw.chat(None, &chat_body("m2", "hi", false)).status, 404);
    assert_eq!(gw.chat(None, &chat_body("m3", "hi", false)).status, 200);
}

#[test]
fn a_config_that_fails_changes_nothing_and_says_why() {
    let base = whole(&stamp("a", 1));
    let gw = Gateway::start(&base);
    let marker = "{dir}/marker";
    let hostile = format!(
        "[[plugins]]\npath = \"{}\"\n[plugins.config]\nshutdown_marker = \"{marker}\"\ngeneration = 9\n",
        plugin_so("hostile").display()
    );
    let refused = |config: &str, says: &str| {
        gw.rewrite_config(config);
        let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
        assert_eq!(r.status, 422, "{}", r.body);
        let message = r.error()["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(says) && message.contains("nothing changed"), "expected {says:?} in {message:?}");
        assert_eq!(plugin_names(&gw), ["a"]);
        let reply = gw.chat(None, &chat_body("m", "hi", false));
        assert_eq!((reply.status, reply.header("x-order")), (200, Some("a")));
    };
    // A plugin is added, but a model routes to an executor that is not loaded: the added
    // plugin's instance is shut down, never swapped in.
    refused(&format!("{base}{hostile}[[models]]\nname = \"x\"\nexecutor = \"nobody\"\n"), "model `x`: ");
    let marker = gw.dir.path().join("marker");
    assert!(std::fs::read_to_string(&marker).unwrap_or_default().contains("shutdown 9"), "{}", gw.logs());
    // Settings only a restart applies.
    refused(&format!("[limits]\nmax_body_bytes = 1234\n{base}"), "`limits`");
    // A file that does not parse; a plugin whose config its schema rejects; a missing file.
    refused(&format!("{base}[[models"), "cannot re-read the gateway config");
    refused(&base.replace("x-order = \"a\"", "x-order = 1"), "rejected at `headers.x-order`");
    refused(&format!("{base}[[plugins]]\npath = \"{{dir}}/missing.so\"\n"), "missing.so");
    assert_eq!(gw.metric("gateway_config_reload_failures_total"), Some(5.0));
    // And the original applies again, as nothing had changed.
    gw.rewrite_config(&base);
    let r = gw.admin("POST", "/admin/reload", Some(TOKEN));
    assert_eq!(outcomes(&r), pairs(&[("a", "unchanged")]), "{}", r.body);
}

#[test]
fn sighup_applies_the_whole_config() {
    let gw = Gateway::start(&whole(&stamp("a", 1)));
    gw.rewrite_config(&whole(&format!("{}{}", stamp("a", 1), stamp("b", 2))));
    gw.signal("HUP");
    let added = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        plugin_names(&gw) == ["a", "b"]
    });
    assert!(added, "{}", gw.logs());
    assert_eq!(gw.chat(None, &chat_body("m", "hi", false)).header("x-order"), Some("b"));
}
