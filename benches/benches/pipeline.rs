//! Bench 2: the gateway's per-request pipeline cost with 0, 1, 4 and 8 plugins, each plugin
//! hooked into every request phase and the response headers and body phases. Before timing,
//! it counts the allocations one request makes in the pipeline (the hooks are read-only, so the
//! target is none) and fails if there are any.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::pipeline::{ContextState, RequestState, ResponseState};
use gateway_benches::{CountingAlloc, Payload, PluginAllocations, allocations_per_call, load_instances, pipeline};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use plugin_abi::ffi::RawUpstream;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn request(payload: &Payload) -> RequestState {
    let mut headers = HeaderMap::new();
    for (n, v) in &payload.headers {
        headers.insert(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
    }
    let ctx = ContextState {
        request_id: "req-bench".into(),
        model: "mock-gpt".into(),
        client_ip: "127.0.0.1".into(),
        ..ContextState::default()
    };
    RequestState::new(
        http::Method::POST,
        "/v1/chat/completions".parse().unwrap(),
        headers,
        Bytes::from(payload.body.clone()),
        ctx,
    )
}

fn pipelines(c: &mut Criterion) {
    let copies = tempfile::tempdir().unwrap();
    let plugins = load_instances("libbench_hooks.so", 8, copies.path());
    let plugin_allocs = PluginAllocations::of(&plugins[0]);
    let payload = Payload::all().remove(1);
    let upstream =
        RawUpstream { name: "mock".into(), kind: "mock".into(), base_url: "".into(), model: "mock-gpt".into() };
    let mut group = c.benchmark_group("pipeline");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for n in [0usize, 1, 4, 8] {
        let pipeline = pipeline(&plugins[..n]);
        let mut req = request(&payload);
        let mut resp =
            ResponseState { status: StatusCode::OK, headers: HeaderMap::new(), body: Bytes::from_static(b"{}") };
        resp.headers.insert("content-type", HeaderValue::from_static("application/json"));
        let mut run = || {
            let p = &pipeline;
            let ok = p.pre_auth(&mut req).is_ok()
                && p.post_auth(&mut req).is_ok()
                && p.before_selection(&mut req).is_ok()
                && p.after_selection(&mut req, &upstream).is_ok()
                && p.response_headers(&req.ctx, &mut resp).is_ok()
                && p.response_body(&req.ctx, &mut resp).is_ok();
            black_box(ok)
        };
        // The first request on a thread sizes its view buffer; after that, none may allocate.
        assert!(run());
        let (host, plugin) = allocations_per_call(
            10_000,
            || plugin_allocs.get(),
            || {
                run();
            },
        );
        println!("allocations per request, {n} plugins: host {host}, plugins {plugin}");
        assert_eq!((host, plugin), (0.0, 0.0), "read-only hooks must not allocate on the request path");
        group.bench_function(BenchmarkId::new("request_and_response_phases", n), |b| b.iter(&mut run));
    }
    group.finish();
}

/// A chat request of `messages` messages of about 500 bytes each.
fn chat_request(messages: usize) -> RequestState {
    let text = "The quick brown fox jumps over the lazy dog, \"quoted\", and on. ".repeat(8);
    let messages: Vec<_> = (0..messages)
        .map(|i| serde_json::json!({ "role": if i % 2 == 0 { "user" } else { "assistant" }, "content": text }))
        .collect();
    let body = serde_json::json!({ "model": "mock-gpt", "max_tokens": 256, "messages": messages }).to_string();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let ctx = ContextState { request_id: "req-bench".into(), model: "mock-gpt".into(), ..ContextState::default() };
    RequestState::new(http::Method::POST, "/v1/chat/completions".parse().unwrap(), headers, Bytes::from(body), ctx)
}

/// N plugins each reading every message's text in PostAuth: each parsing the body itself, or
/// all reading the gateway's one parse (`Request::chat`). Each iteration is a new request: the
/// parse is cleared first.
fn chat_views(c: &mut Criterion) {
    let copies = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("chat_view");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut req = chat_request(16);
    println!("chat request body: {} bytes, 16 messages", req.body.len());
    for how in ["parse", "view"] {
        let mut config = toml::Table::new();
        config.insert("read_chat".into(), how.into());
        let plugins = gateway_benches::load_with_config("libbench_hooks.so", 4, copies.path(), config);
        // The copies' allocators all count into the first copy's counter (the allocator's symbols
        // resolve to the first copy loaded), so one counter has them all.
        let counter = PluginAllocations::of(&plugins[0]);
        for n in [1usize, 4] {
            let pipeline = pipeline(&plugins[..n]);
            let mut run = || {
                req.chat.clear();
                black_box(pipeline.post_auth(&mut req).is_ok())
            };
            assert!(run());
            let (host, plugin) = allocations_per_call(
                1_000,
                || counter.get(),
                || {
                    run();
                },
            );
            println!("allocations per request, {n} plugins reading by {how}: host {host}, plugins {plugin}");
            group.bench_function(BenchmarkId::new(how, n), |b| b.iter(&mut run));
        }
    }
    group.finish();
}

criterion_group!(benches, pipelines, chat_views);
criterion_main!(benches);
