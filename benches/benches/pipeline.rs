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
    RequestState {
        method: http::Method::POST,
        uri: "/v1/chat/completions".parse().unwrap(),
        headers,
        body: Bytes::from(payload.body.clone()),
        ctx: ContextState {
            request_id: "req-bench".into(),
            model: "mock-gpt".into(),
            client_ip: "127.0.0.1".into(),
            ..ContextState::default()
        },
    }
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

criterion_group!(benches, pipelines);
criterion_main!(benches);
