//! Helpers shared by the integration tests: where the built plugins are, and temp config.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use gateway::config::{FailMode, PluginConfig};

/// `target/<profile>`, where cargo puts the gateway binary and every plugin `.so`.
pub fn target_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// The built library of crate `crate_name` (`-` becomes `_`), which must exist.
pub fn plugin_so(crate_name: &str) -> PathBuf {
    let path = target_dir().join(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(path.is_file(), "{} is missing: build the workspace and the fixtures first (`make build`)", path.display());
    path
}

/// The gateway executable.
pub fn gateway_bin() -> PathBuf {
    let path = target_dir().join("gateway");
    assert!(path.is_file(), "{} is missing: run `make build` first", path.display());
    path
}

/// A plugin entry as the gateway config would give it, with a config given in TOML.
pub fn plugin_config(path: PathBuf, config_toml: &str) -> PluginConfig {
    PluginConfig {
        path,
        name: None,
        enabled: true,
        order: 0,
        on_error: FailMode::FailClosed,
        isolate: false,
        quarantine_after: 3,
        quarantine_window_secs: 60.0,
        quarantine_probe_secs: 30.0,
        endpoint_auth: true,
        config: toml::from_str(config_toml).expect("test config is valid TOML"),
    }
}

/// A gateway process started from a config written for the test; stopped (SIGTERM, then
/// waited for) when dropped.
pub struct Gateway {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML). `{dir}` in it is replaced by the test's temp
    /// dir and `{target}` by the directory holding the built plugins; `listen` and `data_dir`
    /// are added.
    pub fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config)
    }

    /// Like [`Gateway::start`], with extra environment variables for the gateway process.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        Self::spawn(tempfile::tempdir().unwrap(), config, env)
    }

    /// Runs the gateway on `config` (written as [`Gateway::start`] writes it), which it must
    /// refuse: asserts that it exited with an error and returns what it printed on stderr.
    pub fn refused(config: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), config);
        let out = std::process::Command::new(gateway_bin()).arg("--config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the gateway started on a config it should refuse: {stderr}");
        stderr
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        Self::spawn(dir, config, &[])
    }

    /// [`Gateway::start_in`] (a restart on the same data) with extra environment variables.
    pub fn start_in_with_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        Self::spawn(dir, config, env)
    }

    /// Like [`Gateway::start`], run under `wrapper` (a program and its arguments, such as
    /// valgrind); `{dir}` in the wrapper's arguments is replaced by the test's temp dir.
    pub fn start_under(wrapper: &[&str], config: &str) -> Gateway {
        Self::spawn_under(tempfile::tempdir().unwrap(), config, &[], wrapper)
    }

    fn spawn(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        Self::spawn_under(dir, config, env, &[])
    }

    fn spawn_under(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Gateway {
        use std::io::{BufRead, BufReader, Read};
        let path = write_config(dir.path(), config);
        let mut command = match wrapper.split_first() {
            None => std::process::Command::new(gateway_bin()),
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args.iter().map(|a| a.replace("{dir}", &dir.path().display().to_string())));
                command.arg(gateway_bin());
                command
            }
        };
        let mut child = command
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on http://") {
                        break addr.parse().unwrap();
                    }
                }
                _ => {
                    let status = child.wait().unwrap();
                    panic!("gateway exited ({status}) before listening:\n{}", stderr.lock().unwrap());
                }
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Gateway { child, addr, dir, stderr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the gateway logged so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// POSTs a chat request; returns status, headers (lowercase names) and body.
    pub fn chat(&self, key: Option<&str>, body: &serde_json::Value) -> Reply {
        let mut req = agent().post(&self.url("/v1/chat/completions")).set("content-type", "application/json");
        if let Some(key) = key {
            req = req.set("authorization", &format!("Bearer {key}"));
        }
        Reply::from(req.send_string(&body.to_string()))
    }

    /// POSTs `body` to `path` with the extra `headers`.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Reply {
        let mut req = agent().post(&self.url(path)).set("content-type", "application/json");
        for (name, value) in headers {
            req = req.set(name, value);
        }
        Reply::from(req.send_string(&body.to_string()))
    }

    /// Opens a connection and sends a chat request on it without reading the answer: for tests
    /// that read part of a stream and hang up.
    pub fn send_raw(&self, body: &serde_json::Value) -> std::net::TcpStream {
        use std::io::Write;
        let body = body.to_string();
        let mut conn = std::net::TcpStream::connect(self.addr).unwrap();
        write!(
            conn,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        conn
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::from(agent().get(&self.url(path)).call())
    }

    /// The value of a metric line starting with `prefix` (name and labels), if present.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.get("/metrics").body;
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Sends SIGTERM and waits: returns the exit status, the full log, and the temp dir (which
    /// lives on for the caller to inspect).
    pub fn stop(mut self) -> (std::process::ExitStatus, String, tempfile::TempDir) {
        let status = self.terminate();
        // The stderr reader thread gets the last lines once the pipe closes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (status, self.logs(), dir)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the config file the gateway started from with `config` (placeholders and the
    /// added lines as for [`Gateway::start`]); the gateway reads it at its next reload.
    pub fn rewrite_config(&self, config: &str) {
        write_config(self.dir.path(), config);
    }

    /// Sends `signal` (a name `kill` understands: HUP, TERM…) to the gateway.
    pub fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
    }

    /// Calls an admin endpoint with `token`.
    pub fn admin(&self, method: &str, path: &str, token: Option<&str>) -> Reply {
        let mut req = agent().request(method, &self.url(path));
        if let Some(token) = token {
            req = req.set("authorization", &format!("Bearer {token}"));
        }
        Reply::from(if method == "POST" { req.send_string("") } else { req.call() })
    }

    /// Kills the process outright (SIGKILL: no shutdown, no flush).
    pub fn kill9(&self) {
        let _ = std::process::Command::new("kill").arg("-KILL").arg(self.child.id().to_string()).status();
    }

    /// Waits for the process to end and returns its temp dir.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Waits (up to 5 s) for `needle` to appear in the log.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        for _ in 0..500 {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    /// SIGTERM, then SIGKILL if the gateway has not stopped within 20 s (a gateway a test
    /// wedged must not hang the suite).
    fn terminate(&mut self) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        sigterm(self.child.id());
        for _ in 0..2000 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("the gateway did not stop within 20 s of SIGTERM: killing it");
        self.kill9();
        self.child.wait().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn sigterm(pid: u32) {
    // The `kill` command rather than libc: keeps this crate free of unsafe code.
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// An HTTP client that keeps no idle connections, so that connection counts are exact.
/// Writes `{dir}/gateway.toml`: `config` with `{dir}` and `{target}` replaced, after a
/// `listen` line (an ephemeral port) and a `data_dir` line (`{dir}/data`).
fn write_config(dir: &std::path::Path, config: &str) -> PathBuf {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{}",
        dir.join("data").display(),
        config.replace("{dir}", &dir.display().to_string()).replace("{target}", &target_dir().display().to_string())
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().max_idle_connections(0).timeout(std::time::Duration::from_secs(30)).build()
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `error` object of an OpenAI-style error body.
    pub fn error(&self) -> serde_json::Value {
        let v = self.json();
        assert!(
            v["error"]["message"].is_string() && v["error"]["type"].is_string(),
            "not an OpenAI error: {}",
            self.body
        );
        v["error"].clone()
    }

    /// The `data:` payloads of an SSE body, `[DONE]` included.
    pub fn events(&self) -> Vec<String> {
        self.body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
    }

    /// The concatenated `delta.content` of a streamed chat reply.
    pub fn streamed_text(&self) -> String {
        self.events()
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect()
    }
}

impl From<Result<ureq::Response, ureq::Error>> for Reply {
    fn from(r: Result<ureq::Response, ureq::Error>) -> Self {
        let resp = match r {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("request failed: {e}"),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .map(|n| {
                let v = resp.header(&n).unwrap_or("").to_owned();
                (n, v)
            })
            .collect();
        Reply { status, headers, body: resp.into_string().unwrap() }
    }
}

/// A chat request body.
pub fn chat_body(model: &str, content: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": content }] })
}

/// The `mock-server` binary (OpenAI and Anthropic APIs over real HTTP on 127.0.0.1), killed
/// when dropped.
pub struct MockServer {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl MockServer {
    pub fn start() -> MockServer {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(target_dir().join("mock-server"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mock-server is built by `cargo build --workspace --all-targets` (make build)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on http://") {
                        break addr.trim().parse().unwrap();
                    }
                }
                _ => panic!("mock-server exited before listening"),
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        MockServer { child, addr }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
