//! Splits a server-sent-events byte stream into event payloads (the `data:` lines), zero-copy
//! for the common one-line event.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
}

/// What one event carried.
#[derive(Debug, PartialEq, Eq)]
pub enum SseEvent {
    Data(Bytes),
    /// `data: [DONE]`, OpenAI's end-of-stream marker.
    Done,
}

fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    // An event ends at a blank line: "\n\n" or "\r\n\r\n".
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffer holds one. Comments and events without data are
    /// skipped.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let (at, sep) = event_end(&self.buf)?;
            let event = self.buf.split_to(at).freeze();
            self.buf.advance(sep);
            let mut data: Option<Bytes> = None;
            for line in event.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(value) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let value = value.strip_prefix(b" ").unwrap_or(value);
                data = Some(match data {
                    None => event.slice_ref(value),
                    Some(prev) => {
                        let mut joined = BytesMut::from(&prev[..]);
                        joined.extend_from_slice(b"\n");
                        joined.extend_from_slice(value);
                        joined.freeze()
                    }
                });
            }
            match data {
                Some(d) if &d[..] == b"[DONE]" => return Some(SseEvent::Done),
                Some(d) => return Some(SseEvent::Data(d)),
                None => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_reads() {
        let mut p = SseParser::default();
        p.push(b"data: {\"a\":1}\n\n: comment\n\ndata: {\"b\"");
        assert_eq!(p.next_event(), Some(SseEvent::Data(Bytes::from_static(b"{\"a\":1}"))));
        assert_eq!(p.next_event(), None);
        p.push(b":2}\r\n\r\ndata: [DONE]\n\n");
        assert_eq!(p.next_event(), Some(SseEvent::Data(Bytes::from_static(b"{\"b\":2}"))));
        assert_eq!(p.next_event(), Some(SseEvent::Done));
    }

    #[test]
    fn joins_multi_line_data() {
        let mut p = SseParser::default();
        p.push(b"event: x\ndata: a\ndata: b\n\n");
        assert_eq!(p.next_event(), Some(SseEvent::Data(Bytes::from_static(b"a\nb"))));
    }

    #[test]
    fn sse_frame_puts_a_one_line_payload_on_one_data_line() {
        assert_eq!(&crate::server::sse_frame(b"{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&crate::server::sse_frame(b"")[..], b"data: \n\n");
    }

    #[test]
    fn sse_frame_puts_each_line_of_a_payload_on_its_own_data_line() {
        assert_eq!(&crate::server::sse_frame(b"a\nb")[..], b"data: a\ndata: b\n\n");
        assert_eq!(&crate::server::sse_frame(b"a\r\nb\rc")[..], b"data: a\ndata: b\ndata: c\n\n");
        assert_eq!(&crate::server::sse_frame(b"a\n\nb\n")[..], b"data: a\ndata: \ndata: b\ndata: \n\n");
        assert_eq!(&crate::server::sse_frame(b"\r\n")[..], b"data: \ndata: \n\n");
    }
}
