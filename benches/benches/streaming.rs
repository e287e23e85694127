//! Bench 3: per-chunk cost of a stream chunk interceptor over 1,000- and 10,000-chunk streams,
//! without and with opt-in history (64 chunks). Equal per-chunk times at both lengths show
//! that the cost is linear in the stream length. Before timing, it counts what one chunk
//! allocates on the host side, through the interceptors and the framing for the client (the
//! connection writing and dropping each frame), and fails unless it is nothing.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::pipeline::{ContextState, ResponseState};
use gateway::upstream::sse::SseFramer;
use gateway_benches::{CountingAlloc, allocations_per_call, load_instances, pipeline};
use http::{HeaderMap, StatusCode};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn streams(c: &mut Criterion) {
    let copies = tempfile::tempdir().unwrap();
    let plain = load_instances("libbench_hooks.so", 1, copies.path());
    let history = load_instances("libbench_hooks_history.so", 1, copies.path());
    let variants = [
        ("no_plugin", pipeline(&[])),
        ("interceptor", pipeline(&plain)),
        ("interceptor_with_history", pipeline(&history)),
    ];
    let ctx = ContextState { request_id: "req-bench".into(), ..ContextState::default() };
    let head = ResponseState { status: StatusCode::OK, headers: HeaderMap::new(), body: Bytes::new() };
    // An OpenAI chunk of typical size.
    let chunk = Bytes::from_static(
        br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}]}"#,
    );
    // One chunk as the gateway handles it: the interceptors, then framed for the client, who
    // takes the frame and lets it go once written.
    for (name, pipeline) in &variants {
        let mut filters = pipeline.stream_start(&ctx, &head).unwrap();
        let mut framer = SseFramer::default();
        let mut one = || {
            let out = filters.on_chunk(chunk.clone(), "bench").unwrap().unwrap();
            framer.push(&out);
            drop(black_box(framer.take()));
        };
        // The first chunks size the framing buffer (and a history its ring).
        for _ in 0..100 {
            one();
        }
        let (host, _) = allocations_per_call(10_000, || 0, &mut one);
        println!("host allocations per chunk, {name}: {host}");
        assert_eq!(host, 0.0, "{name}: a chunk must not allocate on the host side");
    }
    let mut group = c.benchmark_group("stream");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for len in [1_000u64, 10_000] {
        group.throughput(Throughput::Elements(len));
        for (name, pipeline) in &variants {
            group.bench_function(BenchmarkId::new(*name, len), |b| {
                b.iter(|| {
                    let mut filters = pipeline.stream_start(&ctx, &head).unwrap();
                    for _ in 0..len {
                        black_box(filters.on_chunk(chunk.clone(), "bench").unwrap());
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, streams);
criterion_main!(benches);
