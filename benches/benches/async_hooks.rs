//! An async hook against a sync one, through the typed handles the gateway uses, in one run:
//! (s) `Cap<PreAuthV1>::on_pre_auth` on the empty request;
//! (a) `Cap<ExecutorV1>::execute` on an empty executor request, the returned `InstanceFuture`
//!     polled to completion with a no-op waker, output and future dropped;
//! (a2) the same future driven by `block_on` of a tokio current-thread runtime.
//! The executor (`bench-hooks`) is ready at once, so (a) - (s) is the async machinery: the
//! request copied into an owned `ExecRequest`, the future boxed, polled and freed across the ABI.
//! Allocations per call are printed for both sides (not asserted for (a): its state is boxed).

use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use abi_stable::std_types::{RSlice, RStr};
use criterion::{Criterion, criterion_group, criterion_main};
use gateway_benches::{CountingAlloc, Payload, PluginAllocations, allocations_per_call, load_instances};
use plugin_abi::ffi::{ExecResponse, ExecutorV1, InstanceFuture, PreAuthV1, RawExecRequest};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Polls `future` with a no-op waker until it is ready (the bench executor is ready at once).
fn poll_to_end<T>(mut future: InstanceFuture<T>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = Pin::new(&mut future).poll(&mut cx) {
            return v;
        }
    }
}

fn async_hooks(c: &mut Criterion) {
    let copies = tempfile::tempdir().unwrap();
    let plugin = &load_instances("libbench_hooks.so", 1, copies.path())[0];
    let pre_auth = plugin.cap::<PreAuthV1>().expect("bench-hooks has PreAuth");
    let executor = plugin.cap::<ExecutorV1>().expect("bench-hooks has Executor");
    let plugin_allocs = PluginAllocations::of(plugin);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();

    let empty = &Payload::all()[0];
    empty.with_raw(|raw| {
        // The executor's view of the same empty request, as the gateway builds it.
        let exec = RawExecRequest {
            ctx: raw.ctx,
            upstream_model: RStr::from_str("mock-gpt"),
            format: RStr::from_str("openai"),
            stream: false,
            headers: RSlice::from_slice(&[]),
            body: RSlice::from_slice(&[]),
        };
        let ok = |r: &abi_stable::std_types::RResult<ExecResponse, _>| matches!(r, abi_stable::std_types::ROk(r) if r.status == 200);
        assert!(ok(&poll_to_end(executor.execute(&exec))), "the bench executor answers 200");
        assert!(ok(&runtime.block_on(executor.execute(&exec))), "the bench executor answers 200");

        let count = |name: &str, f: &mut dyn FnMut()| {
            let (host, plugin) = allocations_per_call(10_000, || plugin_allocs.get(), f);
            println!("allocations per call, {name}, empty: host {host}, plugin {plugin}");
        };
        count("s_sync_pre_auth", &mut || {
            black_box(pre_auth.on_pre_auth(black_box(raw)));
        });
        count("a_async_execute_noop_waker", &mut || {
            black_box(poll_to_end(executor.execute(black_box(&exec))));
        });
        count("a2_async_execute_tokio_block_on", &mut || {
            black_box(runtime.block_on(executor.execute(black_box(&exec))));
        });

        let mut group = c.benchmark_group("async_hooks");
        group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        group.bench_function("s_sync_pre_auth/empty", |b| b.iter(|| black_box(pre_auth.on_pre_auth(black_box(raw)))));
        group.bench_function("a_async_execute_noop_waker/empty", |b| {
            b.iter(|| black_box(poll_to_end(executor.execute(black_box(&exec)))))
        });
        group.bench_function("a2_async_execute_tokio_block_on/empty", |b| {
            b.iter(|| black_box(runtime.block_on(executor.execute(black_box(&exec)))))
        });
        group.finish();
    });
}

criterion_group!(benches, async_hooks);
criterion_main!(benches);
