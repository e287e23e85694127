//! `gateway new-plugin NAME`: writes a ready plugin crate (its own workspace) with the chosen
//! capabilities, each doing something small and real, a unit test per capability against
//! `plugin_abi::testing::MockHost`, and the config snippet that loads it.

use std::path::{Path, PathBuf};

/// Capabilities `new-plugin` can write, with what each one's example does.
pub const CAPABILITIES: &[(&str, &str)] = &[
    ("PreAuth", "refuses requests carrying an `x-NAME-block` header (403)"),
    ("PostAuth", "refuses request bodies over `max_body_bytes` (413)"),
    ("RequestInterceptor", "marks requests with an `x-NAME-seen` header before upstream selection"),
    ("Response", "stamps an `x-NAME` header on every response"),
    ("DataCollector", "counts finished requests in host KV (`requests`)"),
    ("Lifecycle", "logs when the gateway is ready"),
];

/// What to write.
pub struct Spec {
    /// The plugin's name: ASCII letters, digits and `-`.
    pub name: String,
    pub capabilities: Vec<String>,
    /// The `plugin-abi` crate to depend on (a path).
    pub plugin_abi: PathBuf,
}

/// Why nothing was written.
#[derive(Debug)]
pub struct ScaffoldError(pub String);

impl std::fmt::Display for ScaffoldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScaffoldError {}

/// Checks `spec` and writes the crate into `dir` (which must not exist yet); returns the files.
pub fn write(spec: &Spec, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    let name = &spec.name;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || name.starts_with('-') {
        return Err(ScaffoldError(format!("invalid plugin name {name:?}: expected ASCII letters, digits and `-`")));
    }
    for cap in &spec.capabilities {
        if !CAPABILITIES.iter().any(|(c, _)| c == cap) {
            let known: Vec<&str> = CAPABILITIES.iter().map(|(c, _)| *c).collect();
            return Err(ScaffoldError(format!("unknown capability `{cap}`: expected some of {known:?}")));
        }
    }
    if spec.capabilities.is_empty() {
        return Err(ScaffoldError("no capabilities: expected at least one".into()));
    }
    if dir.exists() {
        return Err(ScaffoldError(format!("{} already exists: expected a new directory", dir.display())));
    }
    let files = [
        (PathBuf::from("Cargo.toml"), cargo_toml(spec)),
        (PathBuf::from("src/lib.rs"), lib_rs(spec)),
        (PathBuf::from("gateway-snippet.toml"), snippet(spec)),
    ];
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ScaffoldError(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text).map_err(|e| ScaffoldError(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect::<String>()
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .to_owned()
        + "Plugin"
}

fn cargo_toml(spec: &Spec) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the .so the gateway loads; rlib: what the unit tests link.
crate-type = ["cdylib", "rlib"]

[dependencies]
plugin-abi = {{ path = "{abi}" }}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
# MockHost and the other test tools.
plugin-abi = {{ path = "{abi}", features = ["testing"] }}

# A workspace of its own, wherever it is put.
[workspace]
"#,
        name = spec.name,
        abi = spec.plugin_abi.display().to_string().replace('\\', "/"),
    )
}

fn snippet(spec: &Spec) -> String {
    format!(
        r#"# Add to the gateway's config (paths relative to that file's directory) after `cargo build --release`:
[[plugins]]
path = "target/release/lib{lib}.so"
order = 100
[plugins.config]
max_body_bytes = 1048576
"#,
        lib = spec.name.replace('-', "_")
    )
}

fn lib_rs(spec: &Spec) -> String {
    let name = &spec.name;
    let ty = type_name(name);
    let has = |c: &str| spec.capabilities.iter().any(|x| x == c);
    let mut imports = vec!["Config", "ConfigProvider", "Host", "Plugin", "PluginError"];
    let mut impls = String::new();
    let mut tests = String::new();
    if has("PreAuth") {
        imports.extend(["Decision", "PreAuth", "Reply", "Request"]);
        impls += &format!(
            r#"
impl PreAuth for {ty} {{
    fn on_pre_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {{
        if req.header("x-{name}-block").is_some() {{
            return Ok(Decision::Respond(Reply::error(403, "permission_error", "blocked", "blocked by {name}")));
        }}
        Ok(Decision::Continue)
    }}
}}
"#
        );
        tests += &format!(
            r#"
    #[test]
    fn pre_auth_blocks_marked_requests() {{
        let p = plugin();
        let blocked = TestRequest::post("/v1/chat/completions").header("x-{name}-block", "1");
        assert!(matches!(blocked.with(|r| p.on_pre_auth(r)).unwrap(), Decision::Respond(_)));
        let plain = TestRequest::post("/v1/chat/completions");
        assert_eq!(plain.with(|r| p.on_pre_auth(r)).unwrap(), Decision::Continue);
    }}
"#
        );
    }
    if has("PostAuth") {
        imports.extend(["Decision", "PostAuth", "Reply", "Request"]);
        impls += &format!(
            r#"
impl PostAuth for {ty} {{
    fn on_post_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {{
        let size = req.body().len();
        if size > self.settings.max_body_bytes {{
            let message = format!("body of {{size}} bytes: expected at most {{}}", self.settings.max_body_bytes);
            return Ok(Decision::Respond(Reply::error(413, "invalid_request_error", "body_too_large", &message)));
        }}
        Ok(Decision::Continue)
    }}
}}
"#
        );
        tests += &r##"
    #[test]
    fn post_auth_refuses_large_bodies() {
        let p = MockHost::new().init::<TYPE>(r#"{"max_body_bytes": 4}"#).unwrap();
        let big = TestRequest::post("/v1/chat/completions").body("0123456789");
        let Decision::Respond(reply) = big.with(|r| p.on_post_auth(r)).unwrap() else { panic!("expected a refusal") };
        assert_eq!(reply.status(), 413);
        let small = TestRequest::post("/v1/chat/completions").body("012");
        assert_eq!(small.with(|r| p.on_post_auth(r)).unwrap(), Decision::Continue);
    }
"##
        .replace("TYPE", &ty);
    }
    if has("RequestInterceptor") {
        imports.extend(["Changes", "Decision", "Request", "RequestInterceptor"]);
        impls += &format!(
            r#"
impl RequestInterceptor for {ty} {{
    fn before_selection(&self, _req: &Request<'_>) -> Result<Decision, PluginError> {{
        Ok(Decision::Modify(Changes::new().set_header("x-{name}-seen", "1")))
    }}
}}
"#
        );
        tests += &format!(
            r#"
    #[test]
    fn interceptor_marks_requests() {{
        let p = plugin();
        let Decision::Modify(changes) = TestRequest::post("/").with(|r| p.before_selection(r)).unwrap() else {{
            panic!("expected changes")
        }};
        assert!(changes.headers_set().any(|(n, v)| n == "x-{name}-seen" && v == "1"));
    }}
"#
        );
    }
    if has("Response") {
        imports.extend(["Changes", "Context", "Decision", "Response", "UpstreamResponse"]);
        impls += &format!(
            r#"
impl Response for {ty} {{
    fn on_response_headers(&self, _ctx: &Context<'_>, _resp: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {{
        Ok(Decision::Modify(Changes::new().set_header("x-{name}", "1")))
    }}
}}
"#
        );
        tests += &format!(
            r#"
    #[test]
    fn response_is_stamped() {{
        let p = plugin();
        let ctx = TestRequest::post("/");
        let decision = ctx.with_context(|c| TestResponse::new(200).with(|r| p.on_response_headers(c, r))).unwrap();
        let Decision::Modify(changes) = decision else {{ panic!("expected changes") }};
        assert!(changes.headers_set().any(|(n, _)| n == "x-{name}"));
    }}
"#
        );
    }
    if has("DataCollector") {
        imports.extend(["DataCollector", "ProxyLog"]);
        impls += &format!(
            r#"
impl DataCollector for {ty} {{
    fn on_proxy_log(&self, _log: &ProxyLog<'_>) -> Result<(), PluginError> {{
        self.host.kv_increment("requests", 1, std::time::Duration::ZERO)?;
        Ok(())
    }}
}}
"#
        );
        tests += &r##"
    #[test]
    fn collector_counts_requests_in_kv() {
        let p = MockHost::new().init::<TYPE>("{}").unwrap();
        let log = plugin_abi::ProxyLog {
            request_id: "r",
            app_id: "a",
            user_id: "u",
            method: "POST",
            path: "/",
            model: "m",
            status: 200,
            request_bytes: 1,
            response_bytes: 1,
            latency_us: 1,
            unix_ms: 1,
        };
        p.on_proxy_log(&log).unwrap();
        p.on_proxy_log(&log).unwrap();
        let count = p.host.kv_get("requests").unwrap().unwrap();
        assert_eq!(i64::from_le_bytes(count.try_into().unwrap()), 2);
    }
"##
        .replace("TYPE", &ty);
    }
    if has("Lifecycle") {
        imports.extend(["Lifecycle"]);
        impls += &format!(
            r#"
impl Lifecycle for {ty} {{
    fn on_ready(&self) {{
        self.host.info("{name} is ready");
    }}
}}
"#
        );
        tests += &format!(
            r#"
    #[test]
    fn lifecycle_logs_ready() {{
        let mock = MockHost::new();
        let p = mock.init::<super::{ty}>("{{}}").unwrap();
        p.on_ready();
        assert!(mock.logs().iter().any(|(_, line)| line == "{name} is ready"));
    }}
"#
        );
    }
    imports.sort_unstable();
    imports.dedup();
    let mut test_imports = vec!["super::*", "plugin_abi::testing::MockHost"];
    if has("PreAuth") || has("PostAuth") || has("RequestInterceptor") || has("Response") {
        test_imports.push("plugin_abi::testing::TestRequest");
    }
    if has("Response") {
        test_imports.push("plugin_abi::testing::TestResponse");
    }
    let test_uses: String = test_imports.iter().map(|i| format!("    use {i};\n")).collect();
    let described: String = CAPABILITIES
        .iter()
        .filter(|(c, _)| has(c))
        .map(|(c, what)| format!("//! - `{c}`: {}\n", what.replace("NAME", name)))
        .collect();
    format!(
        r##"//! `{name}`: a gateway plugin, written by `gateway new-plugin`. Its capabilities:
//!
{described}//!
//! `cargo test` runs its unit tests against a mock host; `cargo build --release` makes
//! `target/release/lib{lib}.so`, which `gateway-snippet.toml` loads. The derive exports every
//! capability trait the type implements: add one with an `impl`, remove one by deleting its.

use plugin_abi::{{{imports}}};

#[derive(plugin_abi::Plugin)]
#[plugin(name = "{name}")]
pub struct {ty} {{
    host: Host,
    settings: Settings,
}}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {{
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
}}

fn default_max_body_bytes() -> usize {{
    1 << 20
}}

impl Plugin for {ty} {{
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {{
        let settings: Settings = config.parse()?;
        Ok({ty} {{ host, settings }})
    }}
}}

/// The gateway validates the plugin's config against this before `init`.
impl ConfigProvider for {ty} {{
    const SCHEMA: &'static str = r#"{{
        "type": "object",
        "additionalProperties": false,
        "properties": {{ "max_body_bytes": {{ "type": "integer", "minimum": 1 }} }}
    }}"#;
}}
{impls}
#[cfg(test)]
mod tests {{
{test_uses}
    #[allow(dead_code)]
    fn plugin() -> {ty} {{
        MockHost::new().init::<{ty}>("{{}}").unwrap()
    }}
{tests}}}
"##,
        lib = name.replace('-', "_"),
        imports = imports.join(", "),
    )
}
