//! Splits a server-sent-events byte stream into event payloads (the `data:` lines); and frames
//! payloads as events (`sse_frame`), for the gateway's own streams and the mock upstream's.
//!
//! Zero-copy where the stream allows: events are read out of the bytes each read brought
//! ([`SseParser::push_bytes`]); only an event that spans reads is copied, into a carry buffer.
//! An event whose bytes are exactly what framing its payload gives (`data: PAYLOAD\n\n`, as
//! OpenAI sends them) comes with those bytes ([`SseParser::next_parsed`]), so that a stream
//! nobody changes goes out as the upstream's own buffers.
//!
//! Lines end with `\n`, `\r\n` or `\r`; an event ends at a blank line. Parsing is linear: the
//! scan for the end of the current event resumes where the previous push left it, so a large
//! event arriving in many small reads is scanned once. An event longer than the parser's limit
//! is an error (and the parser drops what it buffered), so the buffer never holds more than the
//! limit plus one push.

use bytes::{Bytes, BytesMut};

/// Default for the largest accepted event (its bytes up to the blank line that ends it).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 << 20;

pub struct SseParser {
    /// Unparsed bytes of the last read, not copied; empty while `carry` is in use.
    buf: Bytes,
    /// An event that spans reads: what arrived of it so far, and every later read until it ends.
    carry: BytesMut,
    /// Start of the line of the pending bytes whose end has not been seen yet.
    line_start: usize,
    /// Where the search for that line's end resumes (`line_start..scan` holds no terminator).
    scan: usize,
    /// The end of the current event's first line and where the line after it starts, once
    /// seen: an event of one line (most are) is then read without splitting it into lines.
    first_line: Option<(usize, usize)>,
    max_event: usize,
    /// Bytes the search for line ends has looked at, for the test that parsing is linear.
    #[cfg(test)]
    scanned: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

/// What one event carried.
#[derive(Debug, PartialEq, Eq)]
pub enum SseEvent {
    Data(Bytes),
    /// `data: [DONE]`, OpenAI's end-of-stream marker.
    Done,
}

/// An event longer than the parser's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTooLarge {
    pub limit: usize,
    /// The event's length, or as much of it as had arrived without its end.
    pub found: usize,
    /// Whether `found` is the whole event (`false`: it is at least that long).
    pub complete: bool,
}

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at_least = if self.complete { "" } else { "at least " };
        write!(f, "SSE event too large: expected at most {} bytes, found {at_least}{} bytes", self.limit, self.found)
    }
}

/// Splits `event` into its lines (terminators removed), `\n`, `\r\n` and `\r` alike.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => Some(std::mem::take(&mut rest)),
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[i + skip..];
                Some(line)
            }
        }
    })
}

/// The value of a `data` field line, if it is one.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    if line == b"data" {
        return Some(&[]);
    }
    let value = line.strip_prefix(b"data:")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

impl SseParser {
    /// A parser that refuses events longer than `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        SseParser {
            buf: Bytes::new(),
            carry: BytesMut::new(),
            line_start: 0,
            scan: 0,
            first_line: None,
            max_event,
            #[cfg(test)]
            scanned: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.push_bytes(Bytes::copy_from_slice(bytes));
    }

    /// Adds what one read brought. Events are then read out of these bytes without a copy, but
    /// for one that began in an earlier read.
    pub fn push_bytes(&mut self, bytes: Bytes) {
        if self.carry.is_empty() && self.buf.is_empty() {
            self.buf = bytes;
            return;
        }
        if !self.buf.is_empty() {
            self.carry.extend_from_slice(&self.buf);
            self.buf = Bytes::new();
        }
        self.carry.extend_from_slice(&bytes);
    }

    /// Bytes held, for tests of the bound.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.carry.len()
    }

    /// The first `len` pending bytes, taken off.
    fn take(&mut self, len: usize) -> Bytes {
        if self.carry.is_empty() { self.buf.split_to(len) } else { self.carry.split_to(len).freeze() }
    }

    /// Finds the blank line that ends the event at the start of the pending bytes, resuming
    /// the scan where the last call stopped. Returns the event's length and where the next one
    /// starts.
    fn event_end(&mut self) -> Option<(usize, usize)> {
        let buf = if self.carry.is_empty() { &self.buf[..] } else { &self.carry[..] };
        loop {
            let found = memchr::memchr2(b'\n', b'\r', &buf[self.scan..]);
            #[cfg(test)]
            {
                self.scanned += found.map_or(buf.len() - self.scan, |i| i + 1);
            }
            let Some(i) = found else {
                self.scan = buf.len();
                return None;
            };
            let t = self.scan + i;
            let len = match buf[t] {
                b'\r' => match buf.get(t + 1) {
                    // A CR last: it may be the first half of a CRLF.
                    None => {
                        self.scan = t;
                        return None;
                    }
                    Some(b'\n') => 2,
                    Some(_) => 1,
                },
                _ => 1,
            };
            if t == self.line_start {
                // A blank line: the event is everything before it.
                let (at, next) = (self.line_start, t + len);
                self.line_start = 0;
                self.scan = 0;
                return Some((at, next));
            }
            self.first_line.get_or_insert((t, t + len));
            self.line_start = t + len;
            self.scan = t + len;
        }
    }

    /// The next complete event, if the buffer holds one. Comments and events without data are
    /// skipped. An event longer than the limit is an error; the parser then holds nothing, and
    /// the stream should be abandoned (the rest of the oversized event would parse as garbage).
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, EventTooLarge> {
        Ok(self.next_parsed()?.map(|(event, _)| event))
    }

    /// [`SseParser::next_event`], with the event's bytes as they arrived when they are exactly
    /// what [`sse_frame`] makes of its payload (one `data: ` line, `\n` line ends): sending
    /// those on is sending the event framed again, without framing or copying it.
    pub fn next_parsed(&mut self) -> Result<Option<(SseEvent, Option<Bytes>)>, EventTooLarge> {
        loop {
            let Some((at, next)) = self.event_end() else {
                let held = self.buffered();
                if held > self.max_event {
                    return Err(self.overflow(held, false));
                }
                // What is left begins an event that ends in a later read: carried, so that the
                // read's buffer is not kept whole (and later reads append to it).
                if !self.buf.is_empty() {
                    self.carry.extend_from_slice(&self.buf);
                    self.buf = Bytes::new();
                }
                return Ok(None);
            };
            if at > self.max_event {
                return Err(self.overflow(at, true));
            }
            let raw = self.take(next);
            let event = raw.slice(..at);
            let first_line = self.first_line.take();
            if let Some((end, _)) = first_line.filter(|&(_, after)| after == at) {
                // One line: it is the event's only data, if it is data at all.
                let Some(value) = data_value(&event[..end]) else { continue };
                let data = event.slice_ref(value);
                return Ok(Some(self.parsed(data, raw)));
            }
            let mut data_lines = lines(&event).filter_map(data_value);
            let Some(first) = data_lines.next() else { continue };
            let data = match data_lines.next() {
                None => event.slice_ref(first),
                Some(second) => {
                    // Several data lines: joined with "\n", one copy.
                    let mut joined = BytesMut::with_capacity(event.len());
                    joined.extend_from_slice(first);
                    for line in std::iter::once(second).chain(data_lines) {
                        joined.extend_from_slice(b"\n");
                        joined.extend_from_slice(line);
                    }
                    joined.freeze()
                }
            };
            return Ok(Some(self.parsed(data, raw)));
        }
    }

    /// An event's payload as the parser returns it, with its bytes when they are its framing.
    fn parsed(&self, data: Bytes, raw: Bytes) -> (SseEvent, Option<Bytes>) {
        if &data[..] == b"[DONE]" {
            return (SseEvent::Done, None);
        }
        // `data: ` + the payload + `\n\n`, the payload borrowed from it: one line, framed as
        // the gateway would frame it.
        let framed = raw.len() == data.len() + 8
            && raw.starts_with(b"data: ")
            && raw.ends_with(b"\n\n")
            && data.as_ptr() == raw[6..].as_ptr();
        (SseEvent::Data(data), framed.then_some(raw))
    }

    fn overflow(&mut self, found: usize, complete: bool) -> EventTooLarge {
        self.buf = Bytes::new();
        self.carry = BytesMut::new();
        self.line_start = 0;
        self.scan = 0;
        self.first_line = None;
        EventTooLarge { limit: self.max_event, found, complete }
    }
}

/// One server-sent event: `data: PAYLOAD` and the blank line that ends it. A payload of several
/// lines (split at `\n`, `\r\n` or `\r`) becomes one `data: ` line per line, which a client
/// joins back with `\n`.
pub fn sse_frame(payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 8);
    sse_frame_into(&mut frame, payload);
    frame.freeze()
}

/// [`sse_frame`], appended to `frame`.
pub fn sse_frame_into(frame: &mut BytesMut, payload: &[u8]) {
    let Some(first_break) = memchr::memchr2(b'\n', b'\r', payload) else {
        frame.reserve(payload.len() + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\n\n");
        return;
    };
    frame.reserve(payload.len() + 8 + 6 * 4);
    let (mut line, mut rest) = (&payload[..first_break], &payload[first_break..]);
    loop {
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(line);
        frame.extend_from_slice(b"\n");
        let Some(&end) = rest.first() else { break };
        rest = &rest[if end == b'\r' && rest.get(1) == Some(&b'\n') { 2 } else { 1 }..];
        let next = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
        (line, rest) = (&rest[..next], &rest[next..]);
    }
    frame.extend_from_slice(b"\n");
}

/// Frames events into one buffer that is reused: each [`SseFramer::take`] hands out what was
/// framed since the last one, and once the connection has written and dropped that, the next
/// event is framed into the same allocation. In the steady state framing allocates nothing.
#[derive(Default)]
pub struct SseFramer {
    out: BytesMut,
}

impl SseFramer {
    /// Frames `payload` after what is already waiting.
    pub fn push(&mut self, payload: &[u8]) {
        sse_frame_into(&mut self.out, payload);
    }

    /// Appends bytes already framed (`data: [DONE]`, an error event).
    pub fn push_framed(&mut self, framed: &[u8]) {
        self.out.extend_from_slice(framed);
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Everything framed since the last call.
    pub fn take(&mut self) -> Bytes {
        self.out.split().freeze()
    }
}

/// One named server-sent event: `event: NAME`, then the payload framed as by [`sse_frame`]. The
/// name must be one line (the callers pass fixed names).
pub fn sse_event(name: &str, payload: &[u8]) -> Bytes {
    let data = sse_frame(payload);
    let mut frame = BytesMut::with_capacity(name.len() + 8 + data.len());
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(name.as_bytes());
    frame.extend_from_slice(b"\n");
    frame.extend_from_slice(&data);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &'static [u8]) -> Option<SseEvent> {
        Some(SseEvent::Data(Bytes::from_static(s)))
    }

    #[test]
    fn splits_events_across_reads() {
        let mut p = SseParser::default();
        p.push(b"data: {\"a\":1}\n\n: comment\n\ndata: {\"b\"");
        assert_eq!(p.next_event(), Ok(data(b"{\"a\":1}")));
        assert_eq!(p.next_event(), Ok(None));
        p.push(b":2}\r\n\r\ndata: [DONE]\n\n");
        assert_eq!(p.next_event(), Ok(data(b"{\"b\":2}")));
        assert_eq!(p.next_event(), Ok(Some(SseEvent::Done)));
    }

    /// A 256 KiB event of long lines, arriving 16 bytes at a time, is scanned about once: a
    /// parser that rescanned its buffer on every push would look at some 2 GB.
    #[test]
    fn parsing_is_linear_in_the_input() {
        let line = format!("data: {}\n", "x".repeat(4095));
        let event = format!("{}\n", line.repeat(64));
        let mut p = SseParser::default();
        for piece in event.as_bytes().chunks(16) {
            p.push(piece);
            if let Some(found) = p.next_event().unwrap() {
                let SseEvent::Data(d) = found else { panic!("expected data") };
                assert_eq!(d.len(), 64 * 4096 - 1);
            }
        }
        assert!(p.scanned <= 2 * event.len(), "scanned {} bytes for an event of {}", p.scanned, event.len());
    }

    #[test]
    fn joins_multi_line_data() {
        let mut p = SseParser::default();
        p.push(b"event: x\ndata: a\ndata: b\ndata\n\n");
        assert_eq!(p.next_event(), Ok(data(b"a\nb\n")));
    }

    #[test]
    fn every_line_ending_counts() {
        let mut p = SseParser::default();
        p.push(b"data: a\rdata: b\r\rdata: c\r\ndata: d\n\r\ndata: e\r");
        assert_eq!(p.next_event(), Ok(data(b"a\nb")));
        assert_eq!(p.next_event(), Ok(data(b"c\nd")));
        // A CR last may be half a CRLF: nothing is decided until the next byte.
        assert_eq!(p.next_event(), Ok(None));
        p.push(b"\n\n");
        assert_eq!(p.next_event(), Ok(data(b"e")));
    }

    #[test]
    fn a_single_line_event_is_not_copied_and_comes_with_its_bytes() {
        let mut p = SseParser::default();
        let read = Bytes::from_static(b"data: {\"a\":1}\n\ndata: a\r\n\r\n: note\ndata: b\n\n");
        p.push_bytes(read.clone());
        let start = read.as_ptr() as usize;
        let Ok(Some((SseEvent::Data(d), Some(framed)))) = p.next_parsed() else { panic!("expected a framed event") };
        assert_eq!((d.as_ptr() as usize, framed.as_ptr() as usize), (start + 6, start));
        assert_eq!(&framed[..], b"data: {\"a\":1}\n\n");
        // Framed otherwise than the gateway frames: the payload only.
        assert_eq!(p.next_parsed(), Ok(Some((SseEvent::Data(Bytes::from_static(b"a")), None))));
        assert_eq!(p.next_parsed(), Ok(Some((SseEvent::Data(Bytes::from_static(b"b")), None))));
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn an_event_split_across_reads_is_carried_and_the_read_after_it_is_not_copied() {
        let mut p = SseParser::default();
        p.push_bytes(Bytes::from_static(b"data: {\"a\":"));
        assert_eq!(p.next_event(), Ok(None));
        assert_eq!((p.buf.len(), p.carry.len()), (0, 11));
        p.push_bytes(Bytes::from_static(b"1}\n\n"));
        assert_eq!(p.next_event(), Ok(data(b"{\"a\":1}")));
        let read = Bytes::from_static(b"data: x\n\n");
        p.push_bytes(read.clone());
        let Ok(Some((_, Some(framed)))) = p.next_parsed() else { panic!("expected a framed event") };
        assert_eq!(framed.as_ptr(), read.as_ptr());
    }

    #[test]
    fn an_event_over_the_limit_is_refused_complete_or_not() {
        let mut p = SseParser::new(16);
        p.push(b"data: 0123456789");
        assert_eq!(p.next_event(), Ok(None), "16 bytes without an end are within the limit");
        p.push(b"a");
        assert_eq!(p.next_event(), Err(EventTooLarge { limit: 16, found: 17, complete: false }));
        assert_eq!(p.buffered(), 0);

        let mut p = SseParser::new(16);
        p.push(b"data: 0123456789a\n\n");
        let e = p.next_event().unwrap_err();
        assert_eq!(e, EventTooLarge { limit: 16, found: 18, complete: true });
        assert_eq!(e.to_string(), "SSE event too large: expected at most 16 bytes, found 18 bytes");
    }

    /// A push that resumes the scan must not rescan: after the first push found no terminator,
    /// the scan position is at the end of what was buffered.
    #[test]
    fn the_scan_resumes_where_it_stopped() {
        let mut p = SseParser::default();
        p.push(b"data: abc");
        assert_eq!(p.next_event(), Ok(None));
        assert_eq!((p.line_start, p.scan), (0, 9));
        p.push(b"def\ndata: x");
        assert_eq!(p.next_event(), Ok(None));
        assert_eq!((p.line_start, p.scan), (13, 20));
    }

    #[test]
    fn sse_frame_puts_a_one_line_payload_on_one_data_line() {
        assert_eq!(&sse_frame(b"{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&sse_frame(b"")[..], b"data: \n\n");
    }

    #[test]
    fn sse_frame_puts_each_line_of_a_payload_on_its_own_data_line() {
        assert_eq!(&sse_frame(b"a\nb")[..], b"data: a\ndata: b\n\n");
        assert_eq!(&sse_frame(b"a\r\nb\rc")[..], b"data: a\ndata: b\ndata: c\n\n");
        assert_eq!(&sse_frame(b"a\n\nb\n")[..], b"data: a\ndata: \ndata: b\ndata: \n\n");
        assert_eq!(&sse_frame(b"\r\n")[..], b"data: \ndata: \n\n");
    }

    #[test]
    fn sse_event_names_the_event_before_its_data() {
        assert_eq!(&sse_event("ping", b"{\"type\":\"ping\"}")[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn all_events(p: &mut SseParser, out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
            while let Some(e) = p.next_event()? {
                out.push(e);
            }
            Ok(())
        }

        /// A valid stream: events of data lines, comments and other fields, with mixed endings.
        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
            let line = (
                prop_oneof![Just("data: "), Just("data:"), Just(": "), Just("event: "), Just("id: ")],
                "[a-z{}\":, \\[\\]]{0,12}",
                eol.clone(),
            )
                .prop_map(|(field, value, eol)| format!("{field}{value}{eol}"));
            let event = (proptest::collection::vec(line, 0..5), eol).prop_map(|(lines, eol)| lines.concat() + eol);
            proptest::collection::vec(event, 0..8).prop_map(|events| events.concat().into_bytes())
        }

        proptest! {
            #[test]
            fn random_splits_give_the_events_of_one_push(
                bytes in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            ) {
                let mut whole = SseParser::default();
                whole.push(&bytes);
                let mut expected = Vec::new();
                all_events(&mut whole, &mut expected).unwrap();

                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut split = SseParser::default();
                let (mut got, mut from) = (Vec::new(), 0);
                for cut in cuts.into_iter().chain([bytes.len()]) {
                    split.push(&bytes[from..cut]);
                    all_events(&mut split, &mut got).unwrap();
                    from = cut;
                }
                prop_assert_eq!(got, expected);
            }

            /// The bytes an event comes with are always what framing its payload gives.
            #[test]
            fn an_events_own_bytes_are_its_payload_framed(
                bytes in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut p = SseParser::default();
                let mut from = 0;
                for cut in cuts.into_iter().chain([bytes.len()]) {
                    p.push_bytes(Bytes::copy_from_slice(&bytes[from..cut]));
                    from = cut;
                    while let Some((event, framed)) = p.next_parsed().unwrap() {
                        if let (SseEvent::Data(data), Some(framed)) = (&event, framed) {
                            prop_assert_eq!(framed, sse_frame(data));
                        }
                    }
                }
            }

            /// What the gateway frames, a client parses back: every line break becomes `\n`.
            #[test]
            fn a_framed_payload_parses_back(payload in "[a-z\r\n]{0,40}") {
                let mut p = SseParser::default();
                p.push(&sse_frame(payload.as_bytes()));
                let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
                let event = p.next_event().unwrap();
                if expected == "[DONE]" {
                    prop_assert_eq!(event, Some(SseEvent::Done));
                } else {
                    prop_assert_eq!(event, Some(SseEvent::Data(Bytes::from(expected))));
                }
                prop_assert_eq!(p.buffered(), 0);
            }

            #[test]
            fn arbitrary_bytes_never_panic_and_stay_within_the_bound(
                pushes in proptest::collection::vec(
                    proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'd'), any::<u8>()], 0..64),
                    0..16,
                ),
                limit in 1usize..96,
            ) {
                let mut p = SseParser::new(limit);
                for push in &pushes {
                    p.push(push);
                    loop {
                        match p.next_event() {
                            Ok(Some(SseEvent::Data(d))) => prop_assert!(d.len() <= limit),
                            Ok(Some(SseEvent::Done)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                prop_assert!(e.found > limit);
                                prop_assert_eq!(p.buffered(), 0);
                                break;
                            }
                        }
                    }
                    // Whatever is left is an incomplete event within the limit.
                    prop_assert!(p.buffered() <= limit, "{} buffered, limit {}", p.buffered(), limit);
                }
            }
        }
    }
}
