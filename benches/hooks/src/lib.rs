//! Benchmark plugin: read-only hooks in every phase, a stream filter without history, and
//! `bench_json_call`, the same PostAuth check behind one JSON-encoded C call with a base64 body,
//! the way CLIProxyAPI calls its plugins; `bench_allocations`, what it has allocated so far.
//! Also an `Executor` whose `execute` is ready at once (an empty 200), to measure what an async
//! hook costs over the ABI against a sync one.

#[path = "common.rs"]
mod common;
#[path = "../../src/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use base64::Engine as _;
use plugin_abi::{
    Chunk, ChunkDecision, ChunkStream, Config, Context, Decision, ExecError, ExecRequest, ExecResponse, Executor,
    ExecutorInfo, Host, Plugin, PluginError, PostAuth, PreAuth, Reply, Request, RequestInterceptor, Response,
    StreamChunk, UpstreamResponse,
};

/// The body pointer the last PostAuth call saw: equal to the host's buffer if nothing was copied.
static LAST_BODY_PTR: AtomicUsize = AtomicUsize::new(0);

/// The hook's logic: look up a header, bound the body. Continues for every bench payload.
fn check(has_auth: bool, body_len: usize) -> bool {
    std::hint::black_box(has_auth);
    body_len <= 1 << 20
}

#[derive(plugin_abi::Plugin)]
#[plugin(name = "bench-hooks", capabilities(PreAuth, PostAuth, RequestInterceptor, Response, StreamChunk, Executor))]
pub struct BenchHooks {
    host: Host,
    /// When set, PostAuth also reads this (hot) key from host KV.
    kv_key: Option<String>,
    /// When set, PostAuth also reads the messages' text: `view` from the gateway's parse
    /// (`Request::chat`), `parse` by deserializing the body itself, as plugins had to before.
    read_chat: Option<ReadChat>,
}

#[derive(serde::Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ReadChat {
    View,
    Parse,
}

#[derive(serde::Deserialize, Default)]
struct Settings {
    kv_key: Option<String>,
    read_chat: Option<ReadChat>,
}

/// What a plugin that parses the body itself reads: the messages' content.
#[derive(serde::Deserialize)]
struct OwnChat {
    #[serde(default)]
    messages: Vec<OwnMessage>,
}

#[derive(serde::Deserialize)]
struct OwnMessage {
    #[serde(default)]
    content: serde_json::Value,
}

/// The prompt's length in bytes, read the way `how` says.
fn prompt_bytes(req: &Request<'_>, how: ReadChat) -> usize {
    match how {
        ReadChat::View => req.chat().map_or(0, |c| c.messages().map(|m| m.content().len()).sum()),
        ReadChat::Parse => serde_json::from_slice::<OwnChat>(req.body())
            .map_or(0, |c| c.messages.iter().map(|m| m.content.as_str().map_or(0, str::len)).sum()),
    }
}

impl Plugin for BenchHooks {
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        if let Some(key) = &s.kv_key {
            host.kv_set(key, b"{\"limit\": 1000, \"tier\": \"gold\"}")?;
        }
        Ok(BenchHooks { host, kv_key: s.kv_key, read_chat: s.read_chat })
    }
}

impl PreAuth for BenchHooks {
    fn on_pre_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {
        std::hint::black_box(req.headers().get("user-agent"));
        Ok(Decision::Continue)
    }
}

impl PostAuth for BenchHooks {
    fn on_post_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {
        LAST_BODY_PTR.store(req.body().as_ptr() as usize, Relaxed);
        if let Some(key) = &self.kv_key {
            std::hint::black_box(self.host.kv_read(key, |v| v.len())?);
        }
        if let Some(how) = self.read_chat {
            std::hint::black_box(prompt_bytes(req, how));
        }
        if check(req.headers().get("authorization").is_some(), req.body().len()) {
            Ok(Decision::Continue)
        } else {
            Ok(Decision::Respond(Reply::new(400)))
        }
    }
}

impl RequestInterceptor for BenchHooks {}

impl Response for BenchHooks {
    fn on_response_headers(&self, _ctx: &Context<'_>, resp: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {
        std::hint::black_box(resp.status());
        Ok(Decision::Continue)
    }
}

impl StreamChunk for BenchHooks {
    type State = ();
    fn on_stream_start(&self, _ctx: &Context<'_>, head: &UpstreamResponse<'_>) -> Result<Option<()>, PluginError> {
        Ok(common::start(head))
    }
    fn on_chunk(&self, _state: &mut (), chunk: &Chunk<'_>) -> Result<ChunkDecision, PluginError> {
        Ok(common::chunk(chunk))
    }
}

/// Ready at once, awaiting nothing: what is left is the cost of the async hook itself. The
/// response is a 200 with no headers and an empty body, which takes no allocation to build.
impl Executor for BenchHooks {
    fn describe(&self) -> ExecutorInfo {
        ExecutorInfo {
            identifier: "bench".into(),
            input_formats: vec!["openai".into()],
            output_formats: vec!["openai".into()],
            models: Vec::new(),
        }
    }

    fn execute(&self, req: ExecRequest) -> impl Future<Output = Result<ExecResponse, ExecError>> + Send {
        std::hint::black_box(&req);
        std::future::ready(Ok(ExecResponse { status: 200, headers: Vec::new(), body: Vec::new() }))
    }

    fn execute_stream(&self, _req: ExecRequest) -> impl Future<Output = Result<ChunkStream, ExecError>> + Send {
        std::future::ready(Ok(ChunkStream::from_chunks(Vec::new())))
    }
}

/// Allocations this plugin has made so far (it counts its own: a cdylib has its own allocator).
#[unsafe(no_mangle)]
pub extern "C" fn bench_allocations() -> u64 {
    counting_alloc::allocations()
}

/// The body pointer the last PostAuth call saw.
#[unsafe(no_mangle)]
pub extern "C" fn bench_last_body_ptr() -> usize {
    LAST_BODY_PTR.load(Relaxed)
}

#[derive(serde::Deserialize)]
struct JsonRequest {
    #[allow(dead_code)]
    method: String,
    #[allow(dead_code)]
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// One JSON-encoded call: parses the request, decodes the base64 body, runs the same check, and
/// writes `{"decision": ...}` into `out`. Returns the output length (0 if it does not fit).
///
/// # Safety
/// `input` must point to `len` readable bytes and `out` to `cap` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bench_json_call(input: *const u8, len: usize, out: *mut u8, cap: usize) -> usize {
    // SAFETY: per the function contract.
    let input = unsafe { std::slice::from_raw_parts(input, len) };
    let Ok(req) = serde_json::from_slice::<JsonRequest>(input) else {
        return 0;
    };
    let Ok(body) = base64::engine::general_purpose::STANDARD.decode(&req.body) else {
        return 0;
    };
    let has_auth = req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    let decision = if check(has_auth, body.len()) { "continue" } else { "respond" };
    let reply = serde_json::json!({ "decision": decision }).to_string();
    if reply.len() > cap {
        return 0;
    }
    // SAFETY: `out` has room for `cap >= reply.len()` bytes, per the function contract.
    unsafe { std::ptr::copy_nonoverlapping(reply.as_ptr(), out, reply.len()) };
    reply.len()
}
