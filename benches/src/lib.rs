//! What the benches share: bench payloads, loading the bench plugins, and the encodings the
//! baselines pay for (one JSON call per hook; one length-prefixed frame over a Unix socket).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::std_types::{RSlice, RStr};
use base64::Engine as _;
use gateway::config::{FailMode, PluginConfig};
use gateway::metrics::Metrics;
use gateway::pipeline::{Pipeline, Slot};
use gateway::plugin::{self, LoadedPlugin};
use plugin_abi::ffi::{RawContext, RawHeader, RawRequest};

/// `target/<profile>`, where the bench plugins are built: the directory of the running binary,
/// or its parent for a bench binary (in `target/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let dir = exe.parent().expect("target/<profile>");
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().expect("target/<profile>") } else { dir }
        .to_path_buf()
}

pub fn artifact(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(path.exists(), "{} is missing: run `make bench`, which builds it", path.display());
    path
}

/// One bench request: headers and body, owned; views are built once and reused.
pub struct Payload {
    pub name: &'static str,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Payload {
    /// The three payloads of the dispatch bench.
    pub fn all() -> Vec<Payload> {
        let headers: Vec<(String, Vec<u8>)> = (0..15)
            .map(|i| (format!("x-header-{i:02}"), format!("value-{i:02}-abcdefgh").into_bytes()))
            .chain([("authorization".to_owned(), b"Bearer sk-bench-key-000001".to_vec())])
            .collect();
        vec![
            Payload { name: "empty", headers: Vec::new(), body: Vec::new() },
            Payload { name: "1KiB+16h", headers: headers.clone(), body: vec![b'a'; 1024] },
            Payload { name: "64KiB+16h", headers, body: vec![b'a'; 64 * 1024] },
        ]
    }

    /// Runs `f` with a view of this payload, as the gateway builds it for a hook.
    pub fn with_raw<R>(&self, f: impl FnOnce(&RawRequest<'_>) -> R) -> R {
        let headers: Vec<RawHeader<'_>> = self
            .headers
            .iter()
            .map(|(n, v)| RawHeader { name: RStr::from_str(n), value: RSlice::from_slice(v) })
            .collect();
        let raw = RawRequest {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            query: "".into(),
            headers: RSlice::from_slice(&headers),
            body: RSlice::from_slice(&self.body),
            ctx: RawContext {
                request_id: "req-bench".into(),
                app_id: "app".into(),
                user_id: "user".into(),
                model: "mock-gpt".into(),
                client_ip: "127.0.0.1".into(),
                metadata: RSlice::from_slice(&[]),
            },
        };
        f(&raw)
    }

    /// The JSON a CLIProxyAPI-style host sends per call: every field, the body base64-encoded.
    pub fn to_json(&self, out: &mut Vec<u8>) {
        out.clear();
        let headers: Vec<(&str, String)> =
            self.headers.iter().map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v).into_owned())).collect();
        let body = base64::engine::general_purpose::STANDARD.encode(&self.body);
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({ "method": "POST", "path": "/v1/chat/completions", "headers": headers, "body": body }),
        )
        .expect("serializing to a Vec");
    }

    /// A go-plugin-style frame: u32 length, then method, path, headers and body, each
    /// length-prefixed.
    pub fn to_frame(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[0; 4]);
        put(out, b"POST");
        put(out, b"/v1/chat/completions");
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (n, v) in &self.headers {
            put(out, n.as_bytes());
            put(out, v);
        }
        put(out, &self.body);
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A decoded frame, owned, as an RPC server materializes it.
pub struct FrameRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

fn take<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let bytes = buf.get(4..4 + len)?;
    *buf = &buf[4 + len..];
    Some(bytes)
}

impl FrameRequest {
    /// Decodes a frame body (without its length prefix).
    pub fn decode(mut buf: &[u8]) -> Option<FrameRequest> {
        let method = String::from_utf8(take(&mut buf)?.to_vec()).ok()?;
        let path = String::from_utf8(take(&mut buf)?.to_vec()).ok()?;
        let n = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        buf = &buf[4..];
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let name = String::from_utf8(take(&mut buf)?.to_vec()).ok()?;
            headers.push((name, take(&mut buf)?.to_vec()));
        }
        let body = take(&mut buf)?.to_vec();
        Some(FrameRequest { method, path, headers, body })
    }
}

/// Reads one length-prefixed frame into `buf`; false at end of stream.
pub fn read_frame(stream: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    stream.read_exact(buf)?;
    Ok(true)
}

pub fn write_frame(stream: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(payload.len() as u32).to_le_bytes())?;
    stream.write_all(payload)
}

/// Loads `count` instances of the plugin in `lib` (a file name in the target dir).
pub fn load_instances(lib: &str, count: usize, copies: &Path) -> Vec<Arc<LoadedPlugin>> {
    load_with_config(lib, count, copies, toml::Table::new())
}

/// Like [`load_instances`], with a plugin config.
pub fn load_with_config(lib: &str, count: usize, copies: &Path, config: toml::Table) -> Vec<Arc<LoadedPlugin>> {
    let config = PluginConfig {
        path: artifact(lib),
        name: None,
        enabled: true,
        order: 0,
        on_error: FailMode::FailClosed,
        isolate: false,
        quarantine_after: 0,
        quarantine_window_secs: 60.0,
        quarantine_probe_secs: 30.0,
        endpoint_auth: true,
        config,
    };
    // Each call gets its own host state: one KV store per directory.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let state = copies.join(format!("state-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let services = gateway::services::Services::standalone(&state).expect("opening bench services");
    (0..count)
        .map(|_| Arc::new(plugin::load(&config, copies, &[], &services).expect("loading a bench plugin")))
        .collect()
}

/// A pipeline over `plugins`, as the gateway builds it.
pub fn pipeline(plugins: &[Arc<LoadedPlugin>]) -> Arc<Pipeline> {
    let metrics = Arc::new(Metrics::default());
    Arc::new(Pipeline::new(
        plugins.iter().map(|p| Arc::new(Slot::new(p.clone(), false, metrics.clone()))).collect(),
        Arc::default(),
    ))
}

pub mod counting_alloc;
pub use counting_alloc::CountingAlloc;

/// Allocations per call of `f`, averaged over `iterations` calls, in the host (this binary's
/// allocator) and in a plugin (its own allocator, read through `plugin_count`). Run it while
/// nothing else runs: the counters are process-wide.
pub fn allocations_per_call(iterations: u64, plugin_count: impl Fn() -> u64, mut f: impl FnMut()) -> (f64, f64) {
    let (h0, p0) = (counting_alloc::allocations(), plugin_count());
    for _ in 0..iterations {
        f();
    }
    let (h1, p1) = (counting_alloc::allocations(), plugin_count());
    ((h1 - h0) as f64 / iterations as f64, (p1 - p0) as f64 / iterations as f64)
}

/// The allocation counter of a bench plugin (`bench_allocations`), which has its own allocator.
pub struct PluginAllocations {
    // Keeps the library open for as long as `count` may be called.
    _lib: libloading::Library,
    count: extern "C" fn() -> u64,
}

impl PluginAllocations {
    pub fn of(plugin: &LoadedPlugin) -> PluginAllocations {
        // SAFETY: the bench plugin is a Rust cdylib whose initialisers are safe to run again
        // (dlopen of a loaded file returns the same object), and `bench_allocations` has exactly
        // this signature (benches/hooks/src/lib.rs). The library outlives `count`: both are here.
        unsafe {
            let lib = libloading::Library::new(&plugin.private_path).expect("reopening the bench plugin");
            let count = *lib.get::<extern "C" fn() -> u64>(b"bench_allocations").expect("bench_allocations");
            PluginAllocations { _lib: lib, count }
        }
    }

    pub fn get(&self) -> u64 {
        (self.count)()
    }
}
