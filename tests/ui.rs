//! The admin page (`/ui/`) and plugins' own pages (`/ui/plugins/{name}/`) through the real
//! gateway: signing in, the session's limits, content types and validators, pages across a hot
//! swap; then the same page in a real browser (Debian's chromium, driven by selenium).

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_tests::{Gateway, Reply, chat_body, plugin_so, target_dir};

const TOKEN: &str = "admin-test-token";
const SECRET: &str = "webhook-secret-for-tests";

/// A gateway with two example plugins, the webhook receiver (which has a UI) and `swapper`,
/// loaded from `{dir}/plugins/swapper.so` (a copy of build 1).
fn start() -> (Gateway, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let swapper = dir.path().join("plugins/swapper.so");
    std::fs::create_dir_all(swapper.parent().unwrap()).unwrap();
    std::fs::copy(plugin_so("swap-v1"), &swapper).unwrap();
    let config = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"mock-gpt\"\n\
         upstream = \"mock\"\n\n[[plugins]]\npath = \"{}\"\n[plugins.config.headers]\nx-gateway = \"ui-test\"\n\n\
         [[plugins]]\npath = \"{}\"\nendpoint_auth = false\n[plugins.config]\nsecret = \"{SECRET}\"\n\n\
         [[plugins]]\npath = \"{}\"\n",
        plugin_so("header-stamp").display(),
        plugin_so("webhook-receiver").display(),
        swapper.display()
    );
    (Gateway::start_in(dir, &config), swapper)
}

/// A client that shows redirects instead of following them.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).max_idle_connections(0).build()
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().get(&gw.url(path));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    Reply::from(req.call())
}

fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut req = agent().post(&gw.url(path));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    Reply::from(req.send_string(body))
}

/// Signs in through the form; returns the `Cookie` header value of the session.
fn sign_in(gw: &Gateway) -> String {
    let r = post(gw, "/ui/login", &[("content-type", "application/x-www-form-urlencoded")], &format!("token={TOKEN}"));
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/")), "{r:?}");
    let set = r.header("set-cookie").expect("a session cookie");
    set.split(';').next().unwrap().to_owned()
}

#[test]
fn signing_in_sets_a_session_that_reads_the_admin_api_but_changes_nothing_from_another_site() {
    let (gw, _) = start();
    // Not signed in: the sign-in page, never cached, loading nothing from elsewhere.
    let r = get(&gw, "/ui/", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("action=\"/ui/login\"") && !r.body.contains("id=\"plugins\""), "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("content-security-policy").is_some_and(|p| p.contains("default-src 'self'")), "{r:?}");
    assert_eq!((get(&gw, "/ui", &[]).status, get(&gw, "/ui", &[]).header("location")), (303, Some("/ui/")));

    // A wrong token: back to the form, which says so; no cookie.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = post(&gw, "/ui/login", &form, "token=not-the-token");
    assert_eq!((r.status, r.header("location"), r.header("set-cookie")), (303, Some("/ui/?denied"), None));
    assert!(get(&gw, "/ui/?denied", &[]).body.contains("That is not the admin token."));
    let r = post(&gw, "/ui/login", &form, &"x".repeat(10_000));
    assert_eq!(r.status, 413, "{}", r.body);

    // The right one: an HttpOnly, same-site session that is not the token itself.
    let r = post(&gw, "/ui/login", &form, &format!("token={TOKEN}"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    assert!(!set.contains(TOKEN), "{set}");
    let cookie = sign_in(&gw);
    let page = get(&gw, "/ui/", &[("cookie", &cookie)]);
    assert!(page.body.contains("id=\"plugins\"") && page.body.contains("/ui/app.js"), "{}", page.body);
    let plugins = get(&gw, "/admin/plugins", &[("cookie", &cookie)]);
    assert_eq!(plugins.status, 200, "{}", plugins.body);
    assert_eq!(get(&gw, "/admin/plugins", &[("cookie", "gateway_session=forged")]).status, 401);

    // Changing something with only the cookie needs the page's own header, which a page of
    // another site cannot send.
    assert_eq!(post(&gw, "/admin/reload", &[("cookie", &cookie)], "").status, 401);
    let r = post(&gw, "/admin/reload", &[("cookie", &cookie), ("x-gateway-ui", "1")], "");
    assert_eq!(r.status, 200, "{}", r.body);

    // Signing out clears the cookie.
    let r = post(&gw, "/ui/logout", &[("cookie", &cookie)], "");
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")), "{r:?}");
}

#[test]
fn without_an_admin_token_the_page_says_it_is_disabled_and_no_token_signs_in() {
    let gw = Gateway::start("[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n");
    assert!(get(&gw, "/ui/", &[]).body.contains("The admin page is disabled"));
    let r = post(&gw, "/ui/login", &[("content-type", "application/x-www-form-urlencoded")], "token=");
    assert_eq!((r.status, r.header("set-cookie")), (303, None));
    assert!(get(&gw, "/ui/", &[("cookie", "gateway_session=")]).body.contains("The admin page is disabled"));
}

#[test]
fn plugin_pages_have_content_types_and_validators_need_the_session_and_change_with_a_swap() {
    let (gw, swapper) = start();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    // Not signed in: sent to sign in.
    let r = get(&gw, "/ui/plugins/webhook-receiver/", &[]);
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/")));

    // The entry page for the plugin's directory; each file with its type and validator.
    let index = get(&gw, "/ui/plugins/webhook-receiver/", &auth);
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(index.body.contains("Webhooks received"), "{}", index.body);
    assert_eq!(index.header("cache-control"), Some("private, no-cache"));
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    let etag = index.header("etag").unwrap().to_owned();
    let script = get(&gw, "/ui/plugins/webhook-receiver/app.js", &auth);
    assert_eq!(script.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(script.body.contains("const base = \"/admin/plugins/webhook-receiver\""), "{}", script.body);
    let cached = get(&gw, "/ui/plugins/webhook-receiver/index.html", &[auth[0], ("if-none-match", &etag)]);
    assert_eq!((cached.status, cached.body.as_str(), cached.header("etag")), (304, "", Some(etag.as_str())));
    assert_eq!(
        get(&gw, "/ui/plugins/webhook-receiver", &auth).header("location"),
        Some("/ui/plugins/webhook-receiver/")
    );
    let missing = get(&gw, "/ui/plugins/webhook-receiver/nothing.js", &auth);
    assert_eq!(missing.status, 404);
    let r = get(&gw, "/ui/plugins/header-stamp/", &auth);
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no plugin `header-stamp` with a UI is loaded"), "{}", r.body);
    // The gateway's own files are public (nothing secret in them) and validated too.
    let style = get(&gw, "/ui/style.css", &[]);
    assert_eq!(style.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(get(&gw, "/ui/style.css", &[("if-none-match", style.header("etag").unwrap())]).status, 304);

    // The status lists each plugin's UI (the admin page puts it in the sidebar) and hook figures.
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    let status = gw.admin("GET", "/admin/plugins", Some(TOKEN)).json();
    let of = |name: &str| status["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
    let ui = &of("webhook-receiver")["ui"];
    assert_eq!(ui["entry"], "/ui/plugins/webhook-receiver/index.html");
    assert_eq!(ui["sidebar"], "Webhooks");
    assert_eq!(ui["admin_routes"][0], "/admin/plugins/webhook-receiver/stats");
    assert!(of("header-stamp")["ui"].is_null());
    let hooks = of("header-stamp")["hooks"].as_array().unwrap().clone();
    assert!(hooks.iter().any(|h| h["calls"] == 1 && h["p99_us"].as_f64().is_some()), "{hooks:?}");

    // A swap changes the plugin's page with its version: new body, new validator.
    let v1 = get(&gw, "/ui/plugins/swapper/", &auth);
    assert_eq!((v1.body.as_str(), v1.header("content-type")), ("v1", Some("text/plain; charset=utf-8")));
    std::fs::copy(plugin_so("swap-v2"), &swapper).unwrap();
    assert_eq!(gw.admin("POST", "/admin/plugins/swapper/reload", Some(TOKEN)).status, 200);
    let v2 = get(&gw, "/ui/plugins/swapper/stamp.txt", &[auth[0], ("if-none-match", v1.header("etag").unwrap())]);
    assert_eq!((v2.status, v2.body.as_str()), (200, "v2"));
    assert_ne!(v2.header("etag"), v1.header("etag"));
}

/// The venv's Python, with selenium (installed by `make build`).
fn python() -> PathBuf {
    let python = target_dir().parent().unwrap().join("e2e-venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `make build`, which installs selenium", python.display());
    python
}

#[test]
fn the_admin_page_works_in_a_real_browser() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(Path::new(tool).is_file(), "{tool} is missing: `make test` installs chromium and chromium-driver");
    }
    let (gw, swapper) = start();
    // Traffic first, so that the page has hook figures to show; one webhook so far.
    assert_eq!(gw.chat(None, &chat_body("mock-gpt", "hi", false)).status, 200);
    let body = r#"{"before":"the browser"}"#;
    let r = Reply::from(
        agent()
            .post(&gw.url("/plugins/webhook-receiver/hooks/github"))
            .set("x-signature-256", &webhook_receiver::signature(SECRET.as_bytes(), body.as_bytes()))
            .send_string(body),
    );
    assert_eq!(r.status, 202, "{}", r.body);

    let artefacts = target_dir().parent().unwrap().join("artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/admin_ui.py");
    let out = Command::new(python())
        .arg(script)
        .env("GATEWAY_URL", format!("http://{}", gw.addr))
        .env("ADMIN_TOKEN", TOKEN)
        .env("WEBHOOK_SECRET", SECRET)
        .env("EXPECT_PLUGINS", "header-stamp,webhook-receiver,swapper")
        .env("SWAP_FILE", &swapper)
        .env("SWAP_TO", plugin_so("swap-v2"))
        .env("SCREENSHOTS", &artefacts)
        .env("PROFILE_DIR", profile.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser script failed:\n{stdout}\n{stderr}\ngateway log:\n{}", gw.logs());
    assert!(stdout.contains("admin ui checks: 14 ok"), "{stdout}");
    for shot in ["admin-ui.png", "admin-ui-plugin-page.png"] {
        let png = std::fs::read(artefacts.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
}
