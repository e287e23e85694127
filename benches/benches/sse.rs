//! Bench 6: the upstream SSE parser on a 10 MiB event arriving in 16 KiB pushes, against the
//! same bytes as 136-byte (OpenAI chunk sized) events and a bare `memchr` over the bytes (the floor). The old
//! parser, which rescanned its whole buffer on every push, runs on a 1 MiB and a 2 MiB event
//! for contrast: its time grows with the square of the event, the new one's linearly.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::upstream::sse::{SseEvent, SseParser};

const PUSH: usize = 16 << 10;

/// One event of `n` payload bytes.
fn one_event(n: usize) -> Vec<u8> {
    let mut bytes = b"data: ".to_vec();
    bytes.resize(6 + n, b'x');
    bytes.extend_from_slice(b"\n\n");
    bytes
}

/// About `n` bytes as OpenAI-sized events.
fn small_events(n: usize) -> Vec<u8> {
    let event: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"word \"}}]}\n\n";
    event.repeat(n / event.len())
}

/// Feeds `bytes` in `PUSH`-sized pushes, taking every event; returns the events seen.
fn parse(bytes: &[u8]) -> usize {
    let mut parser = SseParser::new(16 << 20);
    let mut events = 0;
    for push in bytes.chunks(PUSH) {
        parser.push(push);
        while let Some(event) = parser.next_event().unwrap() {
            black_box(&event);
            events += matches!(event, SseEvent::Data(_)) as usize;
        }
    }
    events
}

/// The parser before issue 10: the blank line is searched from the buffer's start on each call.
fn parse_old(bytes: &[u8]) -> usize {
    fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
        let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
        let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
        match (lf, crlf) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
    let (mut buf, mut events) = (BytesMut::new(), 0);
    for push in bytes.chunks(PUSH) {
        buf.extend_from_slice(push);
        while let Some((at, sep)) = event_end(&buf) {
            black_box(buf.split_to(at).freeze());
            buf.advance(sep);
            events += 1;
        }
    }
    events
}

fn sse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let big = one_event(10 << 20);
    let many = small_events(10 << 20);
    assert_eq!(parse(&big), 1);
    assert_eq!(parse(&many) * 136, many.len(), "136-byte events");
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("one_10MiB_event", |b| b.iter(|| parse(black_box(&big))));
    group.throughput(Throughput::Bytes(many.len() as u64));
    group.bench_function("10MiB_as_136B_events", |b| b.iter(|| parse(black_box(&many))));
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("memchr_over_10MiB", |b| {
        b.iter(|| memchr::memchr2_iter(b'\n', b'\r', black_box(&big)).count())
    });
    for mib in [1usize, 2] {
        let event = one_event(mib << 20);
        assert_eq!(parse_old(&event), 1);
        group.throughput(Throughput::Bytes(event.len() as u64));
        group.bench_function(BenchmarkId::new("new_parser", format!("{mib}MiB_event")), |b| {
            b.iter(|| parse(black_box(&event)))
        });
        group.bench_function(BenchmarkId::new("old_parser", format!("{mib}MiB_event")), |b| {
            b.iter(|| parse_old(black_box(&event)))
        });
    }
    group.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
