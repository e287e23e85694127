//! Bench 1: the same read-only PostAuth hook called four ways, for three payloads:
//! (a) a native Rust trait object in the host, (b) the loaded `.so` through our ABI,
//! (c) one JSON-encoded C call with a base64 body (CLIProxyAPI's convention),
//! (d) out of process over a Unix socket, one length-prefixed frame per call (go-plugin's).
//! Bytes copied per call are printed next to the timings.

use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway_benches::{
    CountingAlloc, Payload, PluginAllocations, allocations_per_call, artifact, load_instances, load_with_config,
    read_frame,
};
use plugin_abi::ffi::PostAuthV1;
use plugin_abi::{Decision, PluginError, Request};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

static NATIVE_LAST_BODY_PTR: AtomicUsize = AtomicUsize::new(0);

/// (a): what the hook would be as a trait object compiled into the host.
trait NativePostAuth {
    fn on_post_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError>;
}

struct Native;

impl NativePostAuth for Native {
    fn on_post_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {
        NATIVE_LAST_BODY_PTR.store(req.body().as_ptr() as usize, Relaxed);
        black_box(req.headers().get("authorization").is_some());
        if req.body().len() <= 1 << 20 {
            Ok(Decision::Continue)
        } else {
            Ok(Decision::Respond(plugin_abi::Reply::new(400)))
        }
    }
}

#[derive(serde::Deserialize)]
struct JsonReply {
    decision: String,
}

fn dispatch(c: &mut Criterion) {
    let copies = tempfile::tempdir().unwrap();
    let plugin = &load_instances("libbench_hooks.so", 1, copies.path())[0];
    let post_auth = plugin.cap::<PostAuthV1>().expect("bench-hooks has PostAuth");
    let native: Box<dyn NativePostAuth> = Box::new(Native);
    let plugin_allocs = PluginAllocations::of(plugin);

    // SAFETY: the symbols are the bench plugin's own exports with these exact signatures, and
    // the library stays loaded (it is `plugin`'s) for as long as they are used.
    let lib = unsafe { libloading::Library::new(&plugin.private_path) }.unwrap();
    // SAFETY: as above.
    let json_call =
        unsafe { lib.get::<unsafe extern "C" fn(*const u8, usize, *mut u8, usize) -> usize>(b"bench_json_call") }
            .unwrap();
    // SAFETY: as above.
    let last_body_ptr = unsafe { lib.get::<extern "C" fn() -> usize>(b"bench_last_body_ptr") }.unwrap();

    let socket = copies.path().join("hook.sock");
    let mut server = Command::new(artifact("hook-server")).arg(&socket).stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(server.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let mut conn = UnixStream::connect(&socket).unwrap();

    let mut group = c.benchmark_group("dispatch");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for payload in Payload::all() {
        payload.with_raw(|raw| {
            // Zero copy, checked: the plugin sees the host's own body buffer.
            post_auth.on_post_auth(raw);
            if !payload.body.is_empty() {
                assert_eq!(last_body_ptr(), payload.body.as_ptr() as usize, "the plugin saw a copy of the body");
            }
            let (host, plugin) = allocations_per_call(
                10_000,
                || plugin_allocs.get(),
                || {
                    black_box(post_auth.on_post_auth(black_box(raw)));
                },
            );
            println!("allocations per call, b_plugin_abi, {}: host {host}, plugin {plugin}", payload.name);
            assert_eq!((host, plugin), (0.0, 0.0), "a read-only hook call through the ABI must not allocate");
            group.bench_function(BenchmarkId::new("a_native_dyn", payload.name), |b| {
                b.iter(|| black_box(native.on_post_auth(&Request::from_raw(black_box(raw)))))
            });
            group.bench_function(BenchmarkId::new("b_plugin_abi", payload.name), |b| {
                b.iter(|| black_box(post_auth.on_post_auth(black_box(raw))))
            });
        });
        let (mut input, mut out) = (Vec::new(), vec![0u8; 256]);
        group.bench_function(BenchmarkId::new("c_json_c_call", payload.name), |b| {
            b.iter(|| {
                payload.to_json(&mut input);
                // SAFETY: input and out are valid for their lengths.
                let n = unsafe { json_call(input.as_ptr(), input.len(), out.as_mut_ptr(), out.len()) };
                let reply: JsonReply = serde_json::from_slice(&out[..n]).unwrap();
                black_box(reply.decision)
            })
        });
        let (mut frame, mut reply) = (Vec::new(), Vec::new());
        group.bench_function(BenchmarkId::new("d_out_of_process", payload.name), |b| {
            b.iter(|| {
                payload.to_frame(&mut frame);
                std::io::Write::write_all(&mut conn, &frame).unwrap();
                read_frame(&mut conn, &mut reply).unwrap();
                black_box(reply[0])
            })
        });
        payload.to_json(&mut input);
        payload.to_frame(&mut frame);
        let body = payload.body.len();
        // (c): JSON + base64 encode on the host, decode into the plugin's own buffers (JSON string,
        // then body), the reply back. (d): encode, two kernel copies, decode into owned values.
        let json_copies = input.len() + input.len() + body + 20;
        let frame_copies = frame.len() * 4;
        println!(
            "bytes copied per call, {}: a=0 b=0 (body pointer checked) c={json_copies} (JSON {} B) d={frame_copies} (frame {} B)",
            payload.name,
            input.len(),
            frame.len()
        );
    }
    // A hot KV read from inside the hook: (b) plus one read of a 35-byte value through the host.
    let kv_dir = tempfile::tempdir().unwrap();
    let config: toml::Table = toml::from_str("kv_key = \"tier\"").unwrap();
    let with_kv = &load_with_config("libbench_hooks.so", 1, kv_dir.path(), config)[0];
    let kv_post_auth = with_kv.cap::<PostAuthV1>().expect("PostAuth");
    let kv_allocs = PluginAllocations::of(with_kv);
    Payload::all()[1].with_raw(|raw| {
        let (host, plugin) = allocations_per_call(
            10_000,
            || kv_allocs.get(),
            || {
                black_box(kv_post_auth.on_post_auth(black_box(raw)));
            },
        );
        println!("allocations per call, b_plugin_abi_with_kv_read, 1KiB+16h: host {host}, plugin {plugin}");
        assert_eq!((host, plugin), (0.0, 0.0), "a hot KV read through the host must not allocate");
        group.bench_function(BenchmarkId::new("b_plugin_abi_with_kv_read", "1KiB+16h"), |b| {
            b.iter(|| black_box(kv_post_auth.on_post_auth(black_box(raw))))
        });
    });
    group.finish();
    drop(conn);
    let _ = server.kill();
    let _ = server.wait();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
