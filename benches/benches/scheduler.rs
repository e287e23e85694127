//! Bench 7: a credential pool's pick (`gateway::upstream::credentials`) over 1, 10 and 100 keys,
//! round-robin and fill-first, all available and with every other key cooling; against the
//! floor of reading one atomic. A pick happens once per upstream call.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::config::Scheduling;
use gateway::upstream::credentials::{CallFor, Pool};
use http::{HeaderMap, StatusCode};

fn pool(n: usize, policy: Scheduling) -> Pool {
    let ids: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();
    let keys: Vec<(&str, i32, &str)> = ids.iter().map(|id| (id.as_str(), 0, "sk-bench")).collect();
    Pool::from_keys("bench", policy, &keys)
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("credential_pick");
    let floor = AtomicU64::new(0);
    group.bench_function("floor: one atomic load", |b| b.iter(|| black_box(floor.load(Relaxed))));
    for n in [1, 10, 100] {
        for (name, policy) in [("round-robin", Scheduling::RoundRobin), ("fill-first", Scheduling::FillFirst)] {
            let p = pool(n, policy);
            let keys = p.snapshot();
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| black_box(p.pick(&keys, 0, CallFor::default()).unwrap()))
            });
        }
        // Every other key cooling (refused with a 429): the scan skips them.
        let p = pool(n, Scheduling::RoundRobin);
        let keys = p.snapshot();
        for i in (1..n).step_by(2) {
            p.answered(&keys, i, StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        }
        group.bench_with_input(BenchmarkId::new("round-robin, half cooling", n), &n, |b, _| {
            b.iter(|| black_box(p.pick(&keys, 0, CallFor::default()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
