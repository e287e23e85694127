//! The typed view of an OpenAI-style chat request (service [`REQUEST_VIEW`](super::service::REQUEST_VIEW)).
//!
//! The host parses a request's body at most once per version of the body, on the first plugin
//! that asks, and every later hook's [`Request::chat`](crate::Request::chat) reads that one parse.
//! The parse is owned and pointer-free ([`ParsedChat`]): the model, the roles and the message
//! texts, unescaped, back to back in one string, and the messages as offsets into it. Handing it
//! to a plugin therefore allocates nothing.
//!
//! How a plugin's call reaches the parse: while the host runs request hooks it names the request
//! view it built and that request's [`ChatCache`] in a thread-local ([`with_request`]); the
//! service function answers only for that exact view (compared by address), so a view the plugin
//! built itself, or one from another thread, gets [`ChatLookup::Unknown`] and the SDK parses it
//! in the plugin instead.

use std::cell::Cell;
use std::sync::OnceLock;

use abi_stable::StableAbi;
use abi_stable::std_types::{RNone, ROption, RSlice, RSome, RStr};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::RawRequest;

/// A byte range `start..start + len`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawSpan {
    pub start: u32,
    pub len: u32,
}

impl RawSpan {
    /// The spanned part of `s`; empty if the span does not fit (never from a well-behaved host).
    pub fn of<'a>(&self, s: &'a str) -> &'a str {
        let start = self.start as usize;
        s.get(start..start + self.len as usize).unwrap_or("")
    }
}

/// One message: role and text, as spans of [`RawChatRequest::text`].
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawMessage {
    pub role: RawSpan,
    pub content: RawSpan,
}

/// An OpenAI-style chat request as the host parsed it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawChatRequest<'a> {
    /// The model, the roles and the message texts, unescaped, back to back.
    pub text: RStr<'a>,
    pub model: RawSpan,
    pub stream: bool,
    /// `max_tokens`, or else `max_completion_tokens`.
    pub max_tokens: ROption<u64>,
    pub messages: RSlice<'a, RawMessage>,
}

/// What the host answers for one request view.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub enum ChatLookup<'a> {
    Parsed(RawChatRequest<'a>),
    /// The body is not a chat request (not JSON, or no `model` string and `messages` array).
    NotChat,
    /// Not a request view the host is running hooks on: the caller parses the body itself.
    Unknown,
}

/// Service [`REQUEST_VIEW`](super::service::REQUEST_VIEW), version 1. Added in ABI 1.5.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RequestViewV1 {
    pub chat: for<'a> extern "C" fn(req: &'a RawRequest<'a>) -> ChatLookup<'a>,
}

pub(crate) const REQUEST_VIEW_V1: RequestViewV1 = RequestViewV1 { chat };

/// An owned parse of a chat request: no pointers, so it can live next to the body it describes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedChat {
    text: String,
    model: RawSpan,
    stream: bool,
    max_tokens: Option<u64>,
    messages: Vec<RawMessage>,
}

/// The body, in one pass: one deserializer (so one scratch buffer for escaped strings) writing
/// the model, roles and texts straight into the text. Unknown keys are skipped.
struct Body<'t>(&'t mut ParsedChat);

/// A message object's keys, and the top level's (as far as this pass cares).
enum Key {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    Messages,
    Role,
    Content,
    Text,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "model" => Key::Model,
                    "stream" => Key::Stream,
                    "max_tokens" => Key::MaxTokens,
                    "max_completion_tokens" => Key::MaxCompletionTokens,
                    "messages" => Key::Messages,
                    "role" => Key::Role,
                    "content" => Key::Content,
                    "text" => Key::Text,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Visits a JSON object, handing each key's value to `value`.
fn each_entry<'de, A: MapAccess<'de>>(
    mut map: A,
    mut value: impl FnMut(Key, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key::<Key>()? {
        value(key, &mut map)?;
    }
    Ok(())
}

macro_rules! seed_visitor {
    ($ty:ident $(<$lt:lifetime>)?, $value:ty, $expecting:literal, |$self:ident, $d:ident| $deserialize:expr, { $($visit:item)* }) => {
        impl<'de $(, $lt)?> DeserializeSeed<'de> for $ty $(<$lt>)? {
            type Value = $value;
            fn deserialize<D: Deserializer<'de>>($self, $d: D) -> Result<$value, D::Error> {
                $deserialize
            }
        }
        impl<'de $(, $lt)?> Visitor<'de> for $ty $(<$lt>)? {
            type Value = $value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($expecting)
            }
            $($visit)*
        }
    };
}

seed_visitor!(Body<'t>, (), "a chat request object", |self, d| d.deserialize_map(self), {
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let chat = self.0;
        let (mut model, mut messages, mut max_completion_tokens) = (None, false, None);
        each_entry(map, |key, map| {
            match key {
                Key::Model => model = Some(map.next_value_seed(Text(&mut chat.text))?),
                Key::Stream => chat.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                Key::MaxTokens => chat.max_tokens = map.next_value::<TokenLimit>()?.0,
                Key::MaxCompletionTokens => max_completion_tokens = map.next_value::<TokenLimit>()?.0,
                Key::Messages => {
                    map.next_value_seed(Messages(&mut *chat))?;
                    messages = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        chat.model = model.ok_or_else(|| A::Error::missing_field("model"))?;
        if !messages {
            return Err(A::Error::missing_field("messages"));
        }
        chat.max_tokens = chat.max_tokens.or(max_completion_tokens);
        Ok(())
    }
});

/// A token limit: a non-negative integer; anything else (null, negative, fractional, a
/// string) reads as none, for the upstream to judge, rather than making the request unreadable.
struct TokenLimit(Option<u64>);

impl<'de> Deserialize<'de> for TokenLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenLimit;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token limit")
            }
            fn visit_u64<E>(self, v: u64) -> Result<TokenLimit, E> {
                Ok(TokenLimit(Some(v)))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TokenLimit, E> {
                Ok(TokenLimit(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TokenLimit, E> {
                Ok(TokenLimit(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<TokenLimit, E> {
                Ok(TokenLimit(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TokenLimit, E> {
                Ok(TokenLimit(None))
            }
            fn visit_unit<E>(self) -> Result<TokenLimit, E> {
                Ok(TokenLimit(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TokenLimit, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TokenLimit(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenLimit, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TokenLimit(None))
            }
        }
        d.deserialize_any(V)
    }
}

struct Messages<'t>(&'t mut ParsedChat);

seed_visitor!(Messages<'t>, (), "an array of messages", |self, d| d.deserialize_seq(self), {
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Message(&mut *self.0))?.is_some() {}
        Ok(())
    }
});

struct Message<'t>(&'t mut ParsedChat);

seed_visitor!(Message<'t>, (), "a message object", |self, d| d.deserialize_map(self), {
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let chat = self.0;
        let mut message = RawMessage { role: RawSpan::default(), content: RawSpan::default() };
        each_entry(map, |key, map| {
            match key {
                Key::Role => message.role = map.next_value_seed(Text(&mut chat.text))?,
                Key::Content => message.content = map.next_value_seed(Content(&mut chat.text))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        chat.messages.push(message);
        Ok(())
    }
});

/// A string, appended to the text; its span.
struct Text<'t>(&'t mut String);

seed_visitor!(Text<'t>, RawSpan, "a string", |self, d| d.deserialize_str(self), {
    fn visit_str<E>(self, v: &str) -> Result<RawSpan, E> {
        Ok(append(self.0, v))
    }
});

fn append(text: &mut String, v: &str) -> RawSpan {
    let start = text.len();
    text.push_str(v);
    RawSpan { start: start as u32, len: v.len() as u32 }
}

/// A message's content: a string, an array of parts (their `text`s, joined by newlines), or
/// null (empty).
struct Content<'t>(&'t mut String);

seed_visitor!(
    Content<'t>,
    RawSpan,
    "a string, an array of content parts, or null",
    |self, d| d.deserialize_any(self),
    {
        fn visit_str<E>(self, v: &str) -> Result<RawSpan, E> {
            Ok(append(self.0, v))
        }
        fn visit_unit<E>(self) -> Result<RawSpan, E> {
            Ok(RawSpan { start: self.0.len() as u32, len: 0 })
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawSpan, A::Error> {
            let start = self.0.len();
            let mut first = true;
            while let Some(()) = seq.next_element_seed(Part(&mut *self.0, &mut first))? {}
            Ok(RawSpan { start: start as u32, len: (self.0.len() - start) as u32 })
        }
    }
);

/// One content part: its `text`, if any, after a newline unless it is the first.
struct Part<'t>(&'t mut String, &'t mut bool);

seed_visitor!(Part<'t>, (), "a content part object", |self, d| d.deserialize_map(self), {
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let (text, first) = (self.0, self.1);
        each_entry(map, |key, map| {
            match key {
                Key::Text => {
                    if !std::mem::take(first) {
                        text.push('\n');
                    }
                    map.next_value_seed(Text(&mut *text))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })
    }
});

impl ParsedChat {
    /// Parses `body`; `None` if it is not an OpenAI-style chat request (a JSON object with a
    /// `model` string and a `messages` array of objects whose `role` is a string and whose
    /// `content` is a string, an array of parts or null) or is 4 GiB or more.
    pub fn parse(body: &[u8]) -> Option<ParsedChat> {
        // Spans are u32; the text is never longer than the body.
        u32::try_from(body.len()).ok()?;
        let mut out = ParsedChat { text: String::with_capacity(body.len()), ..ParsedChat::default() };
        let mut de = serde_json::Deserializer::from_slice(body);
        Body(&mut out).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(out)
    }

    /// The view a plugin receives.
    pub fn raw(&self) -> RawChatRequest<'_> {
        RawChatRequest {
            text: RStr::from_str(&self.text),
            model: self.model,
            stream: self.stream,
            max_tokens: match self.max_tokens {
                Some(n) => RSome(n),
                None => RNone,
            },
            messages: RSlice::from_slice(&self.messages),
        }
    }
}

/// A request's chat parse, made on first use. Clear it whenever the body changes.
#[derive(Debug, Default)]
pub struct ChatCache(OnceLock<Option<ParsedChat>>);

impl ChatCache {
    /// The parse of `body`, which must be the body this cache belongs to.
    pub fn get(&self, body: &[u8]) -> Option<&ParsedChat> {
        self.0.get_or_init(|| ParsedChat::parse(body)).as_ref()
    }

    /// Whether some hook asked for the parse.
    pub fn is_parsed(&self) -> bool {
        self.0.get().is_some()
    }

    pub fn clear(&mut self) {
        self.0.take();
    }
}

thread_local! {
    /// The request view hooks are running on, on this thread, and its cache.
    static CURRENT: Cell<Option<(usize, *const ChatCache)>> = const { Cell::new(None) };
}

/// Runs `f` (which calls request hooks with `req`) with `req`'s chat parse available to the
/// hooks through [`REQUEST_VIEW`](super::service::REQUEST_VIEW). `req.body` must be the body `cache` belongs to.
pub fn with_request<R>(req: &RawRequest<'_>, cache: &ChatCache, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(usize, *const ChatCache)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.set(self.0);
        }
    }
    let _restore = Restore(CURRENT.replace(Some((req as *const RawRequest<'_> as usize, cache as *const ChatCache))));
    f()
}

/// The service function: the parse of `req`'s body if `req` is the view hooks are running on.
extern "C" fn chat<'a>(req: &'a RawRequest<'a>) -> ChatLookup<'a> {
    match CURRENT.get() {
        Some((view, cache)) if view == req as *const RawRequest<'_> as usize => {
            // SAFETY: `with_request` names `cache` only while it holds a borrow of it, and the
            // hooks it runs receive `req` borrowed for one call inside that scope, so the parse
            // outlives every use of the view returned here.
            let cache = unsafe { &*cache };
            // Parsing cannot unwind into the plugin: serde_json reports errors, never panics.
            match cache.get(req.body.as_slice()) {
                Some(parsed) => ChatLookup::Parsed(parsed.raw()),
                None => ChatLookup::NotChat,
            }
        }
        _ => ChatLookup::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(p: &ParsedChat) -> Vec<(&str, &str)> {
        p.messages.iter().map(|m| (m.role.of(&p.text), m.content.of(&p.text))).collect()
    }

    #[test]
    fn parses_model_flags_and_messages_of_every_content_shape() {
        let body = br#"{"model":"gpt-\u00e9","stream":true,"max_completion_tokens":7,"messages":[
            {"role":"system","content":"be \"brief\""},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]},
            {"role":"assistant","content":null,"tool_calls":[]}]}"#;
        let p = ParsedChat::parse(body).unwrap();
        let raw = p.raw();
        assert_eq!(raw.model.of(raw.text.as_str()), "gpt-é");
        assert!(raw.stream);
        assert_eq!(raw.max_tokens, RSome(7));
        assert_eq!(texts(&p), [("system", "be \"brief\""), ("user", "a\nb"), ("assistant", "")]);
    }

    #[test]
    fn what_is_not_a_chat_request_is_none() {
        for body in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"model":1,"messages":[]}"#,
            br#"{"model":"m","messages":[1]}"#,
            b"{\"model\":\"m\",\"messages\":[{\"content\":5}]}",
        ] {
            assert_eq!(ParsedChat::parse(body), None, "{}", String::from_utf8_lossy(body));
        }
        assert!(ParsedChat::parse(br#"{"model":"m","messages":[]}"#).is_some());
        // A token limit the view cannot read is none, not an unreadable request.
        for limit in ["-1", "1.5", "\"9\"", "null", "[1]", "{}"] {
            let body = format!(r#"{{"model":"m","max_tokens":{limit},"max_completion_tokens":3,"messages":[]}}"#);
            assert_eq!(ParsedChat::parse(body.as_bytes()).unwrap().max_tokens, Some(3), "{limit}");
        }
    }

    #[test]
    fn the_service_answers_only_for_the_view_hooks_run_on() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let view = |body: &'static [u8]| RawRequest {
            method: "POST".into(),
            path: "/".into(),
            query: "".into(),
            headers: RSlice::from_slice(&[]),
            body: RSlice::from_slice(body),
            ctx: crate::ffi::RawContext {
                request_id: "".into(),
                app_id: "".into(),
                user_id: "".into(),
                model: "".into(),
                client_ip: "".into(),
                metadata: RSlice::from_slice(&[]),
            },
        };
        let (req, other) = (view(body), view(body));
        let cache = ChatCache::default();
        assert!(matches!(chat(&req), ChatLookup::Unknown));
        with_request(&req, &cache, || {
            let ChatLookup::Parsed(p) = chat(&req) else { panic!("expected a parse") };
            assert_eq!(p.model.of(p.text.as_str()), "m");
            assert!(matches!(chat(&other), ChatLookup::Unknown));
            // Nested runs restore the outer one.
            let inner = ChatCache::default();
            with_request(&other, &inner, || assert!(matches!(chat(&req), ChatLookup::Unknown)));
            assert!(matches!(chat(&req), ChatLookup::Parsed(_)));
        });
        assert!(cache.is_parsed());
        assert!(matches!(chat(&req), ChatLookup::Unknown));
        let bad = view(b"not json");
        with_request(&bad, &ChatCache::default(), || assert!(matches!(chat(&bad), ChatLookup::NotChat)));
    }
}
