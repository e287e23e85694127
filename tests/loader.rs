//! The plugin loader against real `.so` files: one test per failure mode, ABI evolution in both
//! directions, private copies, and the `gateway check` subcommand.

use std::process::Command;

use gateway::plugin::{self, LoadError};
use gateway::services::Services;
use gateway_tests::{gateway_bin, plugin_config, plugin_so, target_dir};
use plugin_abi::ffi::{self, HookOutcome};

const STAMP: &str = "[headers]\nx-test = \"yes\"\n";

fn services(dir: &std::path::Path) -> std::sync::Arc<Services> {
    Services::standalone(dir).unwrap()
}

fn load(so: &str, config: &str) -> Result<plugin::LoadedPlugin, LoadError> {
    let dir = tempfile::tempdir().unwrap();
    plugin::load(&plugin_config(plugin_so(so), config), dir.path(), &[], &services(dir.path()))
}

#[test]
fn loads_an_example_plugin_with_its_metadata() {
    let loaded = load("header-stamp", STAMP).unwrap();
    assert_eq!(loaded.info.name, "header-stamp");
    assert_eq!(loaded.info.version, "1.0.0");
    assert_eq!(loaded.info.abi_version, plugin_abi::ABI_VERSION);
    assert_eq!(loaded.info.capabilities, ["Response", "ConfigProvider"]);
    assert!(loaded.info.config_schema.is_some());
    assert!(loaded.cap::<ffi::ResponseV1>().is_some());
    assert!(loaded.cap::<ffi::PreAuthV1>().is_none());
}

#[test]
fn loads_from_a_private_content_addressed_copy() {
    let (dir, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let services = services(state.path());
    let config = plugin_config(plugin_so("header-stamp"), STAMP);
    let first = plugin::load(&config, dir.path(), &[], &services).unwrap();
    assert!(first.private_path.starts_with(dir.path()), "{}", first.private_path.display());
    assert_ne!(first.private_path, first.source_path);
    assert!(first.private_path.to_string_lossy().contains(&first.sha256[..16]));
    drop(first);
    // Same content, same copy.
    let second = plugin::load(&config, dir.path(), &[], &services).unwrap();
    assert!(second.private_path.to_string_lossy().contains(&second.sha256[..16]));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = plugin_config(dir.path().join("nope.so"), "");
    let err = plugin::load(&config, dir.path(), &[], &services(dir.path())).err().unwrap();
    assert!(matches!(err, LoadError::FileMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.so not found"), "{err}");
}

#[test]
fn a_file_that_is_not_a_shared_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "this is a text file, not an ELF object\n").unwrap();
    let err = plugin::load(&plugin_config(fake.clone(), ""), &dir.path().join("copies"), &[], &services(dir.path()))
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::NotSharedLibrary { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("libfake.so is not a loadable shared library"), "{msg}");
    // The operator's path, not the private copy's.
    assert!(msg.contains(&fake.display().to_string()) && !msg.contains("copies"), "{msg}");
}

#[test]
fn a_shared_library_without_a_root_module_is_not_a_plugin() {
    let err = load("not-a-plugin", "").err().unwrap();
    assert!(matches!(err, LoadError::NotAPlugin { .. }), "{err:?}");
    assert!(err.to_string().contains("not a gateway plugin"), "{err}");
}

#[test]
fn a_plugin_built_against_another_major_abi_is_refused_naming_both_versions() {
    let err = load("next-major", "").err().unwrap();
    let LoadError::IncompatibleAbi { expected, found, .. } = &err else { panic!("{err:?}") };
    assert_eq!(expected, plugin_abi::ABI_VERSION);
    assert_eq!(found, "2.0.0");
    let msg = err.to_string();
    assert!(
        msg.contains("plugin ABI 2.0.0") && msg.contains(&format!("plugin ABI {}", plugin_abi::ABI_VERSION)),
        "{msg}"
    );
}

/// A plugin that cannot work without a capability version this host lacks is refused at load,
/// naming the capability and both versions, instead of being loaded with the table skipped.
#[test]
fn a_plugin_requiring_a_capability_this_host_lacks_is_refused() {
    let err = load("requires-future", "").err().unwrap();
    assert!(matches!(err, LoadError::MissingCapability { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("requires capability `Auth` version 2, and this gateway knows version 1 of it only"), "{msg}");
    assert!(msg.contains(&format!("this gateway speaks plugin ABI {}", plugin_abi::ABI_VERSION)), "{msg}");
    let auth = load("api-key-auth", "[keys.sk-long-enough]\napp = \"a\"\nuser = \"u\"\n").unwrap();
    assert_eq!(auth.info.capabilities, ["Auth", "ConfigProvider"]);
    assert_eq!(auth.info.required, ["Auth"]);
    let out = Command::new(gateway_bin()).arg("check").arg(plugin_so("requires-future")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires capability `Auth` version 2"));
}

#[test]
fn a_capability_table_with_another_layout_is_refused() {
    let err = load("skewed-layout", "").err().unwrap();
    assert!(matches!(err, LoadError::LayoutMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`Response` table"), "{msg}");
    assert!(msg.contains("in field `on_headers`"), "{msg}");
}

#[test]
fn a_plugin_built_against_an_older_minor_abi_loads_and_works() {
    let loaded = load("old-minor", "").unwrap();
    assert_eq!(loaded.info.abi_version, "1.0.0");
    assert_eq!(loaded.info.capabilities, ["Response"]);
    let response = loaded.cap::<ffi::ResponseV1>().expect("Response table");
    let ctx = ffi::RawContext {
        request_id: "r".into(),
        app_id: "".into(),
        user_id: "".into(),
        model: "".into(),
        client_ip: "".into(),
        metadata: Default::default(),
    };
    let resp = ffi::RawResponse { status: 200, headers: Default::default(), body: Default::default() };
    let HookOutcome::Modify(m) = response.on_headers(&ctx, &resp) else { panic!("expected Modify") };
    assert_eq!(m.set_headers[0].name.as_str(), "x-old-minor");
}

#[test]
fn duplicate_plugin_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = plugin_so("header-stamp");
    let configs = [plugin_config(so.clone(), STAMP), plugin_config(so, STAMP)];
    let refs: Vec<_> = configs.iter().collect();
    let err = plugin::load_all(&refs, dir.path(), &services(dir.path())).err().unwrap();
    assert!(matches!(&err, LoadError::DuplicateName { name, .. } if name == "header-stamp"), "{err:?}");
    assert!(err.to_string().contains("plugin name `header-stamp`"), "{err}");
}

#[test]
fn an_initialize_error_is_reported_with_code_and_message() {
    let err = load("faulty", "init = \"error\"").err().unwrap();
    let LoadError::InitializeFailed { name, code, message } = &err else { panic!("{err:?}") };
    assert_eq!((name.as_str(), *code), ("faulty", 1042));
    assert_eq!(message, "faulty was told to fail at init");
}

#[test]
fn a_panic_in_initialize_is_caught_in_the_plugin_and_reported() {
    let err = load("faulty", "init = \"panic\"").err().unwrap();
    let LoadError::InitializeFailed { code, message, .. } = &err else { panic!("{err:?}") };
    assert_eq!(*code, ffi::code::PANIC);
    assert!(message.contains("faulty was told to panic at init"), "{message}");
}

#[test]
fn a_config_that_fails_the_plugins_schema_names_the_field() {
    let err = load("header-stamp", "[headers]\nx-test = 7\n").err().unwrap();
    let LoadError::ConfigRejected { name, field, rule } = &err else { panic!("{err:?}") };
    assert_eq!(name, "header-stamp");
    assert_eq!(field, "headers.x-test");
    assert!(rule.contains("is not of type \"string\""), "{rule}");
    let err = load("header-stamp", "colour = \"red\"").err().unwrap();
    assert!(err.to_string().contains("rejected at `(root)`"), "{err}");
}

#[test]
fn check_prints_metadata_and_fails_on_a_bad_file() {
    let out = Command::new(gateway_bin()).arg("check").arg(plugin_so("header-stamp")).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let abi = format!("abi:          {}", plugin_abi::ABI_VERSION);
    for want in ["name:         header-stamp", &abi, "capabilities: Response, ConfigProvider", "\"headers\""] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    let out = Command::new(gateway_bin()).arg("check").arg(plugin_so("next-major")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugin ABI 2.0.0"));
}

#[test]
fn a_plugin_built_with_panic_abort_is_refused_at_load() {
    let err = load("panic-abort-by-hand", "").err().expect("a panic=abort plugin must not load");
    assert!(matches!(err, LoadError::PanicAbort { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("built with `panic = \"abort\"`") && msg.contains("expected a plugin whose panics unwind"),
        "{msg}"
    );
}

/// A plugin of ABI 1.3 or later that does not export the `Build` table could be built with
/// `panic = "abort"` without the gateway knowing: refused, naming the table.
#[test]
fn a_plugin_that_does_not_say_how_it_panics_is_refused_at_load() {
    let err = load("no-build-table", "").err().expect("a plugin without a Build table must not load");
    assert!(matches!(err, LoadError::NoBuildTable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("built against plugin ABI {}", plugin_abi::ABI_VERSION)), "{msg}");
    assert!(msg.contains("exports no `Build` table") && msg.contains("say whether its panics unwind"), "{msg}");
}

#[test]
fn the_derive_refuses_to_compile_a_plugin_under_panic_abort() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/panic-abort/Cargo.toml");
    let target = gateway_tests::target_dir().parent().expect("the target dir").to_path_buf();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "-p", "panic-abort-derived", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the derive compiled a plugin under panic = \"abort\"");
    assert!(stderr.contains("plugin `panic-abort-derived` is being built with `panic = \"abort\"`"), "{stderr}");
}

/// `gateway new-plugin` writes a crate that builds and passes its own tests as generated, and
/// whose `.so` loads in the gateway with the snippet it wrote.
#[test]
fn new_plugin_writes_a_crate_that_tests_builds_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("greeter");
    let out = Command::new(gateway_bin())
        .args([
            "new-plugin",
            "greeter",
            "--capabilities",
            "PreAuth,PostAuth,RequestInterceptor,Response,DataCollector,Lifecycle",
            "--dir",
        ])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The workspace's lock file pins the same dependency versions (so the shared target dir
    // already holds them): no download, no rebuild of plugin-abi's dependencies.
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = target_dir().parent().unwrap().to_path_buf();
    for args in [&["test", "--quiet"][..], &["build", "--quiet"][..]] {
        let out = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if args[0] == "test" {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("6 passed"),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let snippet = std::fs::read_to_string(crate_dir.join("gateway-snippet.toml")).unwrap();
    let snippet =
        snippet.replace("target/release/libgreeter.so", &target_dir().join("libgreeter.so").display().to_string());
    let gw = gateway_tests::Gateway::start(&format!(
        "[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\nupstream = \"mock\"\n{snippet}"
    ));
    let r = gw.chat(None, &gateway_tests::chat_body("m", "hi", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-greeter"), Some("1"));
    let r = gw.post("/v1/chat/completions", &[("x-greeter-block", "1")], &gateway_tests::chat_body("m", "hi", false));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(gw.wait_for_log("greeter is ready"), "{}", gw.logs());
}

/// `gateway check PLUGIN --plugin-config FILE` validates a config as the gateway would, and
/// lists every violation, not only the first.
#[test]
fn check_validates_a_plugin_config_and_lists_every_violation() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[headers]\nx-a = \"1\"\n").unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"headers": {"x-a": 1, "x-b": true}, "colour": "red"}"#).unwrap();
    let run = |config: &std::path::Path| {
        Command::new(gateway_bin())
            .arg("check")
            .arg(plugin_so("header-stamp"))
            .arg("--plugin-config")
            .arg(config)
            .output()
            .unwrap()
    };
    let out = run(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("satisfies the schema"));
    let out = run(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("breaks the schema in 3 place(s)"), "{stderr}");
    assert!(stderr.contains("at `headers.x-a`") && stderr.contains("at `headers.x-b`"), "{stderr}");
}
