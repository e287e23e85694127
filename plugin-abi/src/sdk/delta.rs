//! The typed view of one OpenAI-style stream chunk ([`Chunk::delta`]): the first choice's
//! delta text, role and finish reason, found by one forward scan of the chunk. A stream filter
//! runs per chunk, so this is its hot path: no JSON tree, no allocation (text without escapes
//! is borrowed), and every value the view does not need is skipped by its delimiters.
//!
//! The scan reads the structure it walks through (objects, arrays, strings) and does not
//! validate what it skips (a number like `01` in a field nobody reads passes). What it reads, it
//! reads as a JSON parser would; a chunk where that is ambiguous (a duplicate key among those it
//! reads) or of the wrong shape (a `content` that is neither a string nor null) is no delta.

use std::borrow::Cow;

use crate::sdk::Chunk;

/// A JSON string in the chunk: the bytes between its quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct JsonStr<'a> {
    /// Offset of the opening quote in the chunk.
    at: usize,
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The string's value; `None` if it is not valid (bad UTF-8, a bad escape).
    fn value(&self) -> Option<Cow<'a, str>> {
        if !self.escaped {
            return std::str::from_utf8(self.raw).ok().map(Cow::Borrowed);
        }
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).ok().map(Cow::Owned)
    }
}

/// A field the view reads, as the scan finds it: where its value is, and the string (`None`
/// for `null`). Plain data, so the scan moves nothing that needs dropping.
#[derive(Clone, Copy, Debug)]
struct Span<'a> {
    at: usize,
    end: usize,
    string: Option<JsonStr<'a>>,
}

impl<'a> Span<'a> {
    /// The field with its string unescaped; `None` if no JSON parser would read it.
    fn field(self) -> Option<Field<'a>> {
        let value = match self.string {
            None => None,
            Some(s) => Some(s.value()?),
        };
        Some(Field { at: self.at, end: self.end, value })
    }
}

/// A field the view read: where its value is, and the string (`None` for `null`), unescaped
/// (borrowed from the chunk unless it had escapes).
#[derive(Clone, Debug)]
struct Field<'a> {
    at: usize,
    end: usize,
    value: Option<Cow<'a, str>>,
}

/// The first choice's delta of an OpenAI `chat.completion.chunk`.
#[derive(Clone, Debug)]
pub struct Delta<'a> {
    data: &'a [u8],
    /// Offset of the delta object's `{`.
    object: usize,
    /// Whether the delta object has any member.
    has_members: bool,
    content: Option<Field<'a>>,
    role: Option<Field<'a>>,
    finish_reason: Option<Field<'a>>,
}

impl<'a> Delta<'a> {
    /// The delta's `content` text; `None` when absent or null.
    pub fn text(&self) -> Option<&str> {
        self.content.as_ref()?.value.as_deref()
    }

    /// The delta's `role`, where it has one (usually only the first chunk).
    pub fn role(&self) -> Option<&str> {
        self.role.as_ref()?.value.as_deref()
    }

    /// The choice's `finish_reason`; `None` while it is null.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_ref()?.value.as_deref()
    }

    /// The chunk with the delta's `content` set to `text`, every other byte as it was; a
    /// delta without content (a finish chunk's `{}`) gets one.
    pub fn with_text(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + text.len() + 16);
        let (from, to) = match &self.content {
            Some(f) => (f.at, f.end),
            None => (self.object + 1, self.object + 1),
        };
        out.extend_from_slice(&self.data[..from]);
        if self.content.is_none() {
            out.extend_from_slice(b"\"content\":");
        }
        // A `String` always serializes.
        let _ = serde_json::to_writer(&mut out, text);
        if self.content.is_none() && self.has_members {
            out.push(b',');
        }
        out.extend_from_slice(&self.data[to..]);
        out
    }
}

/// Reads the deltas of one stream, chunk after chunk, faster than [`Chunk::delta`] where a
/// stream's chunks share their envelope (OpenAI's do: id, model, created and the rest are the
/// same bytes in every chunk, only the text changes). Keep one in the stream's state.
///
/// When a chunk's bytes before and after its `content` string are those of the last chunk
/// read in full, its structure is that chunk's: only the string is read (two comparisons and
/// one string scan instead of a scan of every field). Any other chunk is read in full, and its
/// envelope kept for the next. Results are those of [`Chunk::delta`] for every chunk.
#[derive(Default, Debug)]
pub struct DeltaReader {
    /// The last chunk read in full whose delta had a content string and no role or finish
    /// reason: its bytes before the string, then after it.
    envelope: Vec<u8>,
    /// Where the string began in that chunk (the length of the part before it).
    split: usize,
    /// That chunk's delta object offset (in the part before the string).
    object: usize,
    /// Whether `envelope` holds a usable envelope.
    valid: bool,
}

impl DeltaReader {
    pub fn new() -> Self {
        DeltaReader::default()
    }

    /// The chunk's delta, as [`Chunk::delta`] reads it.
    pub fn read<'a>(&mut self, chunk: &Chunk<'a>) -> Option<Delta<'a>> {
        let data = chunk.data();
        if let Some(delta) = self.same_envelope(data) {
            return Some(delta);
        }
        let delta = delta_of(data);
        self.keep(data, delta.as_ref());
        delta
    }

    /// The delta of a chunk with the kept envelope around a new content string.
    fn same_envelope<'a>(&self, data: &'a [u8]) -> Option<Delta<'a>> {
        if !self.valid {
            return None;
        }
        let (before, after) = self.envelope.split_at(self.split);
        if data.len() < before.len() + after.len() + 2 || !data.starts_with(before) || !data.ends_with(after) {
            return None;
        }
        // Between the two: exactly one string, starting where the kept one did.
        let end = data.len() - after.len();
        if data[self.split] != b'"' {
            return None;
        }
        let mut scan = Scan { s: &data[..end], i: self.split };
        let string = scan.string()?;
        if scan.i != end {
            return None;
        }
        let content = Span { at: self.split, end, string: Some(string) }.field()?;
        Some(Delta {
            data,
            object: self.object,
            has_members: true,
            content: Some(content),
            role: None,
            finish_reason: None,
        })
    }

    /// Keeps `data`'s envelope if it can stand for the chunks after it: a content string, no
    /// role, no finish reason (those chunks are the stream's middle).
    fn keep(&mut self, data: &[u8], delta: Option<&Delta<'_>>) {
        self.valid = false;
        let Some(d) = delta else { return };
        let Some(content) = d.content.as_ref().filter(|c| c.value.is_some()) else { return };
        if d.role.as_ref().is_some_and(|r| r.value.is_some())
            || d.finish_reason.as_ref().is_some_and(|f| f.value.is_some())
        {
            return;
        }
        self.envelope.clear();
        self.envelope.extend_from_slice(&data[..content.at]);
        self.envelope.extend_from_slice(&data[content.end..]);
        (self.split, self.object, self.valid) = (content.at, d.object, true);
    }
}

impl<'a> Chunk<'a> {
    /// The chunk as an OpenAI `chat.completion.chunk`: its first choice's delta, if it has one
    /// (`None` for other events, an empty `choices`, a choice without `delta`, or a chunk that
    /// is not JSON where the scan looked).
    pub fn delta(&self) -> Option<Delta<'a>> {
        delta_of(self.data())
    }
}

/// How deep the scan follows nested values before it gives up on the chunk.
const MAX_DEPTH: usize = 64;

struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// The next byte that is not whitespace (upstreams send compact JSON: one compare, mostly).
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        loop {
            let b = *self.s.get(self.i)?;
            if b > b' ' || !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.i += 1;
        }
    }

    #[inline]
    fn ws(&mut self) {
        let _ = self.peek();
    }

    #[inline]
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// A string at the current position.
    #[inline]
    fn string(&mut self) -> Option<JsonStr<'a>> {
        self.eat(b'"')?;
        let (at, start) = (self.i - 1, self.i);
        let mut escaped = false;
        loop {
            self.i += quote_or_backslash(self.s.get(self.i..)?)?;
            if self.s[self.i] == b'"' {
                self.i += 1;
                return Some(JsonStr { at, raw: &self.s[start..self.i - 1], escaped });
            }
            // A backslash and the byte it escapes (a `\uXXXX` needs no more care: its digits
            // hold no quote).
            escaped = true;
            self.i += 2;
        }
    }

    /// Any value, skipped.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth, |scan, _| scan.skip(depth + 1)),
            b'[' => self.array(depth, |scan, _| scan.skip(depth + 1)),
            _ => {
                // A number or a literal: up to the next delimiter.
                let rest = self.s.get(self.i..)?;
                let len = rest.iter().position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
                let len = len.unwrap_or(rest.len());
                (len > 0).then(|| self.i += len)
            }
        }
    }

    /// An object, `member(scan, key)` reading or skipping each value. `member` may return
    /// `Some(())` having read all it wants; the scan then stops there (see [`Stop`]).
    fn object(&mut self, depth: usize, mut member: impl FnMut(&mut Self, JsonStr<'a>) -> Option<()>) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, `element(scan, index)` reading or skipping each element.
    fn array(&mut self, depth: usize, mut element: impl FnMut(&mut Self, usize) -> Option<()>) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        let mut index = 0;
        loop {
            element(self, index)?;
            index += 1;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string or `null`; anything else is not the field the view reads.
    fn field(&mut self) -> Option<Span<'a>> {
        let at = (self.peek(), self.i).1;
        if self.s.get(self.i) == Some(&b'n') {
            self.s.get(self.i..self.i + 4).filter(|l| *l == b"null")?;
            self.i += 4;
            return Some(Span { at, end: self.i, string: None });
        }
        let string = self.string()?;
        Some(Span { at, end: self.i, string: Some(string) })
    }
}

/// Where the first `"` or `\\` is. Most strings in a chunk are a few bytes long (keys, ids, a
/// token of text): eight bytes at a time in a `u64` for the first 64, then a vector search.
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    const LANES: u64 = 0x0101_0101_0101_0101;
    // The high bit of each byte of `x` that is zero (exact for the lowest one, which is all
    // that is read: a false positive only ever lies above a true zero).
    let zero = |x: u64| x.wrapping_sub(LANES) & !x & (LANES << 7);
    let mut i = 0;
    while i + 8 <= s.len().min(64) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&s[i..i + 8]);
        let w = u64::from_le_bytes(word);
        let found = zero(w ^ (LANES * u64::from(b'"'))) | zero(w ^ (LANES * u64::from(b'\\')));
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    if i >= 64 {
        return memchr::memchr2(b'"', b'\\', &s[i..]).map(|at| i + at);
    }
    s[i..].iter().position(|&b| b == b'"' || b == b'\\').map(|at| i + at)
}

/// Whether a key is `name` (an escaped key is compared by its value).
#[inline]
fn key_is(key: &JsonStr<'_>, name: &str) -> bool {
    if key.escaped {
        return key.value().is_some_and(|k| k == name);
    }
    key.raw == name.as_bytes()
}

/// What the scan found in the first choice.
#[derive(Default)]
struct Found<'a> {
    /// The delta object's offset, whether it has members, its content and role.
    delta: Option<(usize, bool, Option<Span<'a>>, Option<Span<'a>>)>,
    finish_reason: Option<Span<'a>>,
    /// A later duplicate of a field read already: the chunk is ambiguous (JSON parsers take
    /// the last one), so it is not read at all.
    duplicate: bool,
}

fn delta_of<'a>(data: &'a [u8]) -> Option<Delta<'a>> {
    let mut scan = Scan { s: data, i: 0 };
    let mut found: Option<Found<'_>> = None;
    // The top-level object is read to its end, so that a second `choices` is noticed.
    scan.object(0, |scan, key| {
        if !key_is(&key, "choices") {
            return scan.skip(1);
        }
        if found.is_some() {
            found.as_mut()?.duplicate = true;
            return scan.skip(1);
        }
        let mut first = Found::default();
        scan.array(1, |scan, index| {
            if index > 0 {
                return scan.skip(2);
            }
            choice(scan, &mut first)
        })?;
        found = Some(first);
        Some(())
    })?;
    scan.ws();
    if scan.i != data.len() {
        return None;
    }
    let found = found.filter(|f| !f.duplicate)?;
    let (object, has_members, content, role) = found.delta?;
    // Unescaped last, three strings at most: one no JSON parser would read makes it no delta.
    let field = |span: Option<Span<'a>>| match span {
        None => Some(None),
        Some(span) => span.field().map(Some),
    };
    Some(Delta {
        data,
        object,
        has_members,
        content: field(content)?,
        role: field(role)?,
        finish_reason: field(found.finish_reason)?,
    })
}

/// The first choice: its `delta` object and `finish_reason`.
fn choice<'a>(scan: &mut Scan<'a>, found: &mut Found<'a>) -> Option<()> {
    let (mut seen_delta, mut seen_finish) = (false, false);
    scan.object(2, |scan, key| {
        if key_is(&key, "finish_reason") {
            found.duplicate |= std::mem::replace(&mut seen_finish, true);
            found.finish_reason = Some(scan.field()?);
            return Some(());
        }
        if !key_is(&key, "delta") {
            return scan.skip(3);
        }
        found.duplicate |= std::mem::replace(&mut seen_delta, true);
        if scan.peek()? != b'{' {
            found.delta = None;
            return scan.skip(3);
        }
        let object = scan.i;
        let (mut content, mut role, mut members) = (None, None, 0);
        let (mut seen_content, mut seen_role) = (false, false);
        scan.object(3, |scan, key| {
            members += 1;
            if key_is(&key, "content") {
                found.duplicate |= std::mem::replace(&mut seen_content, true);
                content = Some(scan.field()?);
                Some(())
            } else if key_is(&key, "role") {
                found.duplicate |= std::mem::replace(&mut seen_role, true);
                role = Some(scan.field()?);
                Some(())
            } else {
                scan.skip(4)
            }
        })?;
        found.delta = Some((object, members > 0, content, role));
        Some(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn delta(data: &str) -> Option<Delta<'_>> {
        delta_of(data.as_bytes())
    }

    #[test]
    fn reads_the_first_choices_delta() {
        let chunk = r#"{"id":"c-1","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"role":"assistant","content":"Hi \"you\""},"finish_reason":null},
                       {"index":1,"delta":{"content":"other"}}]}"#;
        let d = delta(chunk).unwrap();
        assert_eq!(d.text(), Some("Hi \"you\""));
        assert_eq!(d.role(), Some("assistant"));
        assert_eq!(d.finish_reason(), None);
        let finish = delta(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        assert!(delta(r#"{"choices":[{"delta":{"content":5}}]}"#).is_none());
        assert_eq!((finish.text(), finish.finish_reason()), (None, Some("stop")));
        assert!(delta(r#"{"choices":[{"delta":{"content":null}}]}"#).unwrap().text().is_none());
    }

    #[test]
    fn a_reader_reuses_the_envelope_and_notices_when_it_changes() {
        let chunk = |text: &str, tail: &str| {
            format!(
                r#"{{"id":"c","choices":[{{"index":0,"delta":{{"content":{}}},"finish_reason":{tail}}}]}}"#,
                json!(text)
            )
        };
        let mut reader = DeltaReader::new();
        let read = |reader: &mut DeltaReader, data: &str| {
            let raw = crate::ffi::RawChunk { index: 0, data: data.as_bytes().into(), history: crate::ffi::NO_HISTORY };
            reader.read(&Chunk::new(&raw)).map(|d| (d.text().map(str::to_owned), d.finish_reason().map(str::to_owned)))
        };
        assert_eq!(read(&mut reader, &chunk("one", "null")), Some((Some("one".into()), None)));
        assert!(reader.valid);
        assert!(reader.same_envelope(chunk("two \"quoted\"", "null").as_bytes()).is_some());
        assert_eq!(read(&mut reader, &chunk("two \"q\"", "null")), Some((Some("two \"q\"".into()), None)));
        // Not one string between the envelope's two parts: read in full.
        let spliced =
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a","content":"b"},"finish_reason":null}]}"#;
        assert!(reader.same_envelope(spliced.as_bytes()).is_none());
        assert_eq!(read(&mut reader, spliced), None, "a duplicate content key");
        assert!(!reader.valid);
        assert_eq!(read(&mut reader, &chunk("three", "null")), Some((Some("three".into()), None)));
        assert_eq!(read(&mut reader, &chunk("", "\"stop\"")), Some((Some(String::new()), Some("stop".into()))));
        assert!(!reader.valid, "a finish chunk's envelope is not kept");
    }

    #[test]
    fn what_is_not_a_delta_is_none() {
        for data in [
            "",
            "[DONE]",
            "{}",
            r#"{"choices":[]}"#,
            r#"{"choices":[{"index":0}]}"#,
            r#"{"choices":[{"delta":"text"}]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}]"#,
            r#"{"choices":[{"delta":{"content":"x"}}]} trailing"#,
            r#"{"choices":[{"delta":{"content":"x"}}],"choices":[]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[{"delta":{"content":"x}]}"#,
            r#"{"choices":[{"delta":{"content":"bad \q escape"}}]}"#,
        ] {
            assert!(delta(data).is_none(), "{data:?}");
        }
        assert!(delta_of(b"{\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}").is_none(), "invalid UTF-8");
    }

    #[test]
    fn finds_the_first_quote_or_backslash_at_every_offset() {
        for len in 0..150 {
            for at in 0..=len {
                for end in [b'"', b'\\'] {
                    let mut s = vec![b'a'; len];
                    if at < len {
                        s[at] = end;
                        // A later match, and bytes that differ from the two by one bit.
                        s.iter_mut().skip(at + 1).step_by(3).for_each(|b| *b = b'"');
                        s.iter_mut().take(at).step_by(2).for_each(|b| *b = b'#');
                    }
                    let expected = s.iter().position(|&b| b == b'"' || b == b'\\');
                    assert_eq!(quote_or_backslash(&s), expected, "len {len}, at {at}");
                }
            }
        }
    }

    #[test]
    fn with_text_replaces_or_adds_the_content_and_keeps_every_other_byte() {
        let chunk = r#"{"id":"x","choices":[{"delta":{"content":"a@b.io","role":"assistant"},"finish_reason":null}]}"#;
        let out = delta(chunk).unwrap().with_text("[REDACTED] \"ok\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"x","choices":[{"delta":{"content":"[REDACTED] \"ok\"","role":"assistant"},"finish_reason":null}]}"#
        );
        let empty = r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#;
        let out = delta(empty).unwrap().with_text("held");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"choices":[{"delta":{"content":"held"},"finish_reason":"stop"}]}"#
        );
        let null = r#"{"choices":[{"delta":{"content":null}}]}"#;
        let out = delta(null).unwrap().with_text("t");
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"choices":[{"delta":{"content":"t"}}]}"#);
        let role_only = r#"{"choices":[{"delta":{"role":"assistant"}}]}"#;
        let out = delta(role_only).unwrap().with_text("t");
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"choices":[{"delta":{"content":"t","role":"assistant"}}]}"#);
    }

    /// What a JSON parser reads from the same chunk: a field that is neither a string nor
    /// null makes it no delta.
    fn oracle(v: &Value) -> Option<(Option<String>, Option<String>, Option<String>)> {
        let choice = v.get("choices")?.as_array()?.first()?.as_object()?;
        let delta = choice.get("delta")?.as_object()?;
        let s = |v: Option<&Value>| match v {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        Some((s(delta.get("content"))?, s(delta.get("role"))?, s(choice.get("finish_reason"))?))
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof!["[a-z @.]{0,12}", any::<String>(), Just("\"\\\u{1}\u{e9}\u{1F600}".to_owned())]
        }

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
                text().prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(text(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn string_or_null() -> impl Strategy<Value = Option<Value>> {
            prop_oneof![
                Just(None),
                Just(Some(Value::Null)),
                text().prop_map(|t| Some(Value::String(t))),
                value().prop_map(Some)
            ]
        }

        fn chunk() -> impl Strategy<Value = Value> {
            (string_or_null(), string_or_null(), string_or_null(), value(), any::<bool>(), 0usize..3).prop_map(
                |(content, role, finish, extra, delta_is_object, choices)| {
                    let mut delta = serde_json::Map::new();
                    if let Some(c) = content {
                        delta.insert("content".into(), c);
                    }
                    if let Some(r) = role {
                        delta.insert("role".into(), r);
                    }
                    delta.insert("extra".into(), extra.clone());
                    let mut choice = serde_json::Map::new();
                    choice.insert("index".into(), json!(0));
                    choice.insert("delta".into(), if delta_is_object { Value::Object(delta) } else { extra.clone() });
                    if let Some(f) = finish {
                        choice.insert("finish_reason".into(), f);
                    }
                    let list: Vec<Value> = (0..choices).map(|_| Value::Object(choice.clone())).collect();
                    json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "extra": extra, "choices": list })
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// The scan reads what a JSON parser reads, pretty-printed or not.
            #[test]
            fn agrees_with_a_json_parser(v in chunk(), pretty in any::<bool>()) {
                let data = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
                let expected = oracle(&v);
                let scanned = delta(&data).map(|d| (
                    d.text().map(str::to_owned),
                    d.role().map(str::to_owned),
                    d.finish_reason().map(str::to_owned),
                ));
                prop_assert_eq!(scanned, expected);
            }

            /// A replaced text parses back, and the rest of the chunk is unchanged.
            #[test]
            fn with_text_is_the_chunk_with_that_text(v in chunk(), new in text()) {
                let data = v.to_string();
                if let Some(d) = delta(&data) {
                    let out: Value = serde_json::from_slice(&d.with_text(&new)).unwrap();
                    // Parsed from the same text, so that floats compare as they read back.
                    let mut expected: Value = serde_json::from_str(&data).unwrap();
                    expected["choices"][0]["delta"]["content"] = Value::String(new);
                    prop_assert_eq!(out, expected);
                }
            }

            /// A reader gives what a fresh scan gives, chunk after chunk: in a stream whose
            /// chunks share their envelope, and in one where they do not.
            #[test]
            fn a_reader_reads_every_chunk_as_a_fresh_scan(
                base in chunk(),
                others in proptest::collection::vec(chunk(), 0..3),
                texts in proptest::collection::vec(prop_oneof![text().prop_map(Some), Just(None)], 1..8),
                pretty in any::<bool>(),
            ) {
                let render = |v: &Value| if pretty { serde_json::to_string_pretty(v).unwrap() } else { v.to_string() };
                let mut stream: Vec<String> = texts.iter().map(|t| {
                    let mut v = base.clone();
                    if let (Some(t), Some(delta)) = (t, v.pointer_mut("/choices/0/delta").and_then(Value::as_object_mut)) {
                        delta.insert("content".into(), Value::String(t.clone()));
                    }
                    render(&v)
                }).collect();
                for (i, other) in others.iter().enumerate() {
                    stream.insert((i * 3) % (stream.len() + 1), render(other));
                }
                let mut reader = DeltaReader::new();
                for data in &stream {
                    let raw = crate::ffi::RawChunk { index: 0, data: data.as_bytes().into(), history: crate::ffi::NO_HISTORY };
                    let read = reader.read(&Chunk::new(&raw));
                    let fresh = delta(data);
                    let view = |d: &Option<Delta<'_>>| d.as_ref().map(|d| (
                        d.text().map(str::to_owned), d.role().map(str::to_owned), d.finish_reason().map(str::to_owned),
                        d.with_text("x"),
                    ));
                    prop_assert_eq!(view(&read), view(&fresh), "chunk {}", data);
                }
            }

            /// Arbitrary bytes never panic the scan.
            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Some(d) = delta_of(&data) {
                    let _ = (d.text(), d.role(), d.finish_reason(), d.with_text("x"));
                }
            }
        }
    }
}
