//! Plugin routes through the real gateway: endpoints under `/plugins/{name}/` (with and without
//! the auth plugins first), management routes behind the admin token, public resource routes,
//! a streamed route, conflicting declarations refused at load, and routes across a hot swap.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use gateway_tests::{Gateway, agent, gateway_bin, plugin_so};
use webhook_receiver::signature;

const TOKEN: &str = "admin-test-token";
const SECRET: &str = "webhook-secret-for-tests";

fn webhook_config(extra: &str) -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\n\
         upstream = \"mock\"\n\n[[plugins]]\npath = \"{}\"\nendpoint_auth = false\n[plugins.config]\nsecret = \"{SECRET}\"\n\n{extra}",
        plugin_so("webhook-receiver").display()
    )
}

/// POSTs `body` to a webhook route, signed with `secret` (none: unsigned).
fn send_webhook(gw: &Gateway, path: &str, body: &str, secret: Option<&str>) -> gateway_tests::Reply {
    let mut req = agent().post(&gw.url(path)).set("content-type", "application/json");
    if let Some(secret) = secret {
        req = req.set("x-signature-256", &signature(secret.as_bytes(), body.as_bytes()));
    }
    gateway_tests::Reply::from(req.send_string(body))
}

#[test]
fn a_signed_webhook_is_accepted_published_and_streamed_to_operators() {
    let gw = Gateway::start(&webhook_config(&format!(
        "[[plugins]]\npath = \"{}\"\n[plugins.config]\npath = \"{{dir}}/usage.jsonl\"\ntopics = [\"webhook.github\"]\n",
        plugin_so("usage-logger").display()
    )));
    // An operator watches the webhooks arrive: a management route, streamed (SSE).
    let url = gw.url("/admin/plugins/webhook-receiver/events?limit=2");
    let watcher = std::thread::spawn(move || {
        let resp = agent().get(&url).set("authorization", &format!("Bearer {TOKEN}")).call().unwrap();
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        let lines: Vec<String> = BufReader::new(resp.into_reader()).lines().map_while(Result::ok).collect();
        lines
    });
    std::thread::sleep(Duration::from_millis(300));
    let first = r#"{"action":"opened","n":1}"#;
    let r = send_webhook(&gw, "/plugins/webhook-receiver/hooks/github", first, Some(SECRET));
    assert_eq!((r.status, r.json()["accepted"].as_bool()), (202, Some(true)), "{}", r.body);
    // A forged or missing signature is refused, and nothing is published.
    for secret in [Some("not-the-shared-secret-at-all"), None] {
        let r = send_webhook(&gw, "/plugins/webhook-receiver/hooks/github", r#"{"forged":true}"#, secret);
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.body.contains("x-signature-256"), "{}", r.body);
    }
    let second = r#"{"action":"closed","n":2}"#;
    assert_eq!(send_webhook(&gw, "/plugins/webhook-receiver/hooks/github", second, Some(SECRET)).status, 202);

    let lines = watcher.join().unwrap();
    let data: Vec<serde_json::Value> =
        lines.iter().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(data.len(), 2, "{lines:?}");
    assert_eq!((data[0]["body"].as_str(), data[1]["body"].as_str()), (Some(first), Some(second)));
    assert_eq!(data[0]["source"], "github");

    // Counts behind the admin token; health public.
    assert_eq!(gw.admin("GET", "/admin/plugins/webhook-receiver/stats", None).status, 401);
    let stats = gw.admin("GET", "/admin/plugins/webhook-receiver/stats", Some(TOKEN)).json();
    assert_eq!((stats["received"].as_u64(), stats["rejected"].as_u64()), (Some(2), Some(2)));
    assert_eq!(gw.get("/plugins/webhook-receiver/health").json()["status"], "ok");
    // The published events reached a subscriber (usage-logger, topic webhook.github).
    let mut logged = String::new();
    for _ in 0..100 {
        logged = std::fs::read_to_string(gw.dir.path().join("usage.jsonl")).unwrap_or_default();
        if logged.lines().count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let events: Vec<serde_json::Value> = logged.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2, "{logged}");
    assert_eq!((events[0]["topic"].as_str(), events[0]["payload"].as_str()), (Some("webhook.github"), Some(first)));

    // Unknown routes and methods say what is there.
    let r = gw.get("/plugins/webhook-receiver/nothing-here");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("plugin `webhook-receiver` has no route `/nothing-here`"), "{}", r.body);
    let r = gw.get("/plugins/webhook-receiver/hooks/github");
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(r.body.contains("POST"), "{}", r.body);
    assert_eq!(gw.get("/plugins/no-such-plugin/x").status, 404);
    // The declarations, as the admin API lists them.
    let routes = gw.admin("GET", "/admin/routes", Some(TOKEN)).json();
    let paths: Vec<&str> = routes["routes"].as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/plugins/webhook-receiver/hooks/{source}"), "{paths:?}");
    assert!(paths.contains(&"/admin/plugins/webhook-receiver/events"), "{paths:?}");
}

#[test]
fn the_operator_chooses_whether_auth_plugins_run_before_a_plugins_endpoints() {
    let gw = Gateway::start(&webhook_config(&format!(
        "[[plugins]]\npath = \"{}\"\nname = \"hooks-authed\"\n[plugins.config]\nsecret = \"{SECRET}\"\n\n\
         [[plugins]]\npath = \"{}\"\n[plugins.config.keys.sk-route-test-key]\napp = \"route-app\"\nuser = \"route-user\"\n",
        plugin_so("webhook-receiver").display(),
        plugin_so("api-key-auth").display()
    )));
    // Auth off (the first instance): no credential needed, none seen.
    let whoami = gw.get("/plugins/webhook-receiver/whoami");
    assert_eq!((whoami.status, whoami.json()["app"].as_str()), (200, Some("")), "{}", whoami.body);
    // Auth on (the second, by default): refused without a key, identified with one.
    assert_eq!(gw.get("/plugins/hooks-authed/whoami").status, 401);
    let r = gateway_tests::Reply::from(
        agent().get(&gw.url("/plugins/hooks-authed/whoami")).set("authorization", "Bearer sk-route-test-key").call(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["app"].as_str(), r.json()["user"].as_str()), (Some("route-app"), Some("route-user")));
    // Resource routes are public whatever the operator set.
    assert_eq!(gw.get("/plugins/hooks-authed/health").status, 200);
}

/// Runs the gateway on `config` expecting it to refuse to start; its error output.
fn refused_at_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{config}", dir.path().display()))
        .unwrap();
    let out = std::process::Command::new(gateway_bin()).arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success(), "the gateway started: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn conflicting_or_invalid_route_declarations_are_refused_at_load() {
    let config = |routes: &str| {
        format!("[[plugins]]\npath = \"{}\"\n[plugins.config]\nroutes = \"{routes}\"\n", plugin_so("hostile").display())
    };
    let err = refused_at_start(&config("conflict"));
    assert!(
        err.contains("plugin `hostile`: endpoint * `items/{name}` conflicts with its endpoint GET `items/{id}`"),
        "{err}"
    );
    let err = refused_at_start(&config("reserved"));
    assert!(err.contains("conflicts with the gateway's own `/admin/plugins/hostile/reload`"), "{err}");
    let err = refused_at_start(&config("bad-method"));
    assert!(err.contains("method \"GE T\": expected an HTTP method or `*`"), "{err}");
    // A plugin whose `routes` panics serves none, and the gateway starts.
    let gw = Gateway::start(&config("panic"));
    assert!(gw.wait_for_log("panicked in routes: hostile panics in routes"), "{}", gw.logs());
    assert_eq!(gw.get("/plugins/hostile/anything").status, 404);
}

#[test]
fn a_swap_changes_the_routes_at_once_and_a_call_in_flight_finishes_on_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plugins/swapper.so");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(plugin_so("swap-v1"), &file).unwrap();
    let gw = Gateway::start_in(
        dir,
        &format!("[admin]\ntoken = \"{TOKEN}\"\n[[plugins]]\npath = \"{}\"\nendpoint_auth = false\n", file.display()),
    );
    assert_eq!(gw.get("/plugins/swapper/version").body, "v1");
    assert_eq!(gw.get("/plugins/swapper/new").status, 404);
    // A streamed call on v1, in flight while v2 takes over.
    let url = gw.url("/plugins/swapper/slow");
    let slow = std::thread::spawn(move || agent().get(&url).call().unwrap().into_string().unwrap());
    std::thread::sleep(Duration::from_millis(150));
    std::fs::copy(plugin_so("swap-v2"), &file).unwrap();
    let r = gw.admin("POST", "/admin/plugins/swapper/reload", Some(TOKEN));
    assert_eq!(r.json()["outcome"], "reloaded", "{}", r.body);
    assert_eq!(gw.get("/plugins/swapper/version").body, "v2");
    assert_eq!(gw.get("/plugins/swapper/new").status, 200);
    assert_eq!(slow.join().unwrap(), "v1\n".repeat(5), "the call in flight changed version");
}

#[test]
fn plugin_log_fields_reach_the_gateways_log_as_fields() {
    let gw = Gateway::start_with_env(&webhook_config(""), &[("GATEWAY_LOG_FORMAT", "json")]);
    assert_eq!(send_webhook(&gw, "/plugins/webhook-receiver/hooks/gitlab", "{}", None).status, 401);
    assert_eq!(send_webhook(&gw, "/plugins/webhook-receiver/hooks/gitlab", "{\"a\":1}", Some(SECRET)).status, 202);
    let lines = |message: &str| -> Vec<serde_json::Value> {
        let logs = gw.logs();
        let all = logs.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        all.filter(|l| l["fields"]["message"] == message).collect()
    };
    assert!(gw.wait_for_log("webhook received"), "{}", gw.logs());
    let rejected = lines("webhook rejected: bad or missing signature");
    assert_eq!(rejected.len(), 1, "{}", gw.logs());
    let fields = &rejected[0]["fields"];
    assert_eq!((fields["plugin"].as_str(), fields["source"].as_str()), (Some("webhook-receiver"), Some("gitlab")));
    assert_eq!(fields["client_ip"], "127.0.0.1", "{fields}");
    assert!(fields["request_id"].as_str().is_some_and(|id| id.starts_with("req-")), "{fields}");
    assert_eq!((rejected[0]["level"].as_str(), rejected[0]["target"].as_str()), (Some("WARN"), Some("plugin")));
    let received = lines("webhook received");
    assert_eq!(received[0]["fields"]["bytes"], "7", "{}", gw.logs());
}
