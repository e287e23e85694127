//! Borrowed, zero-copy views of what the host hands a hook; valid for that one call.

use abi_stable::std_types::RStr;

use crate::ffi;

fn str_of<'a>(s: &RStr<'a>) -> &'a str {
    s.as_str()
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Headers, in the order they arrived. Names are lowercase.
#[derive(Clone, Copy)]
pub struct Headers<'a>(&'a [ffi::RawHeader<'a>]);

impl<'a> Headers<'a> {
    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.0.iter().find(|h| h.name.as_str().eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
    }

    /// The first value of `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.0.iter().map(|h| (h.name.as_str(), h.value.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the gateway knows about the request so far.
#[derive(Clone, Copy)]
pub struct Context<'a>(&'a ffi::RawContext<'a>);

impl<'a> Context<'a> {
    pub(crate) fn new(raw: &'a ffi::RawContext<'a>) -> Self {
        Context(raw)
    }

    pub fn request_id(&self) -> &'a str {
        str_of(&self.0.request_id)
    }

    /// The authenticated app; `None` before auth.
    pub fn app_id(&self) -> Option<&'a str> {
        non_empty(str_of(&self.0.app_id))
    }

    /// The authenticated user; `None` before auth.
    pub fn user_id(&self) -> Option<&'a str> {
        non_empty(str_of(&self.0.user_id))
    }

    /// The model the client asked for; `None` if the request names none.
    pub fn model(&self) -> Option<&'a str> {
        non_empty(str_of(&self.0.model))
    }

    pub fn client_ip(&self) -> &'a str {
        str_of(&self.0.client_ip)
    }

    /// Metadata set by earlier hooks (see [`crate::Changes::metadata`]).
    pub fn metadata(&self, key: &str) -> Option<&'a str> {
        self.0.metadata.iter().rev().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str())
    }
}

/// A client request as the gateway holds it after the previous hooks' changes.
#[derive(Clone, Copy)]
pub struct Request<'a>(&'a ffi::RawRequest<'a>);

impl<'a> Request<'a> {
    pub(crate) fn new(raw: &'a ffi::RawRequest<'a>) -> Self {
        Request(raw)
    }

    /// Wraps a raw view, as the generated glue does; for hosts and benchmarks that call SDK code
    /// directly.
    pub fn from_raw(raw: &'a ffi::RawRequest<'a>) -> Self {
        Request(raw)
    }

    pub fn method(&self) -> &'a str {
        str_of(&self.0.method)
    }

    pub fn path(&self) -> &'a str {
        str_of(&self.0.path)
    }

    /// The query string without `?`; empty when there is none.
    pub fn query(&self) -> &'a str {
        str_of(&self.0.query)
    }

    pub fn headers(&self) -> Headers<'a> {
        Headers(self.0.headers.as_slice())
    }

    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers().get_str(name)
    }

    pub fn body(&self) -> &'a [u8] {
        self.0.body.as_slice()
    }

    pub fn context(&self) -> Context<'a> {
        Context(&self.0.ctx)
    }

    /// The body as an OpenAI-style chat request: model, stream flag, token limit, and the
    /// messages with their roles and texts. The gateway parses a body once, on the first hook
    /// that asks, and every later hook reads that parse until some hook replaces the body.
    /// `None` if the body is not a chat request (not JSON, or no `model` string and `messages`
    /// array of objects).
    pub fn chat(&self) -> Option<crate::sdk::Chat<'a>> {
        crate::sdk::Chat::of(self)
    }

    pub(crate) fn raw(&self) -> &'a ffi::RawRequest<'a> {
        self.0
    }
}

/// The upstream the gateway selected for the request.
#[derive(Clone, Copy)]
pub struct Upstream<'a>(&'a ffi::RawUpstream<'a>);

impl<'a> Upstream<'a> {
    pub(crate) fn new(raw: &'a ffi::RawUpstream<'a>) -> Self {
        Upstream(raw)
    }

    pub fn name(&self) -> &'a str {
        str_of(&self.0.name)
    }

    /// `openai`, `mock`, or `executor` for a model an executor plugin serves.
    pub fn kind(&self) -> &'a str {
        str_of(&self.0.kind)
    }

    pub fn base_url(&self) -> &'a str {
        str_of(&self.0.base_url)
    }

    /// The model name sent upstream.
    pub fn model(&self) -> &'a str {
        str_of(&self.0.model)
    }
}

/// An upstream response. The body is empty in the headers phase and for streams.
#[derive(Clone, Copy)]
pub struct UpstreamResponse<'a>(&'a ffi::RawResponse<'a>);

impl<'a> UpstreamResponse<'a> {
    pub(crate) fn new(raw: &'a ffi::RawResponse<'a>) -> Self {
        UpstreamResponse(raw)
    }

    pub fn status(&self) -> u16 {
        self.0.status
    }

    pub fn headers(&self) -> Headers<'a> {
        Headers(self.0.headers.as_slice())
    }

    pub fn body(&self) -> &'a [u8] {
        self.0.body.as_slice()
    }
}

/// One chunk of a streamed response: the payload of one server-sent event (for OpenAI-style
/// streams, the JSON after `data: `).
#[derive(Clone, Copy)]
pub struct Chunk<'a>(&'a ffi::RawChunk<'a>);

impl<'a> Chunk<'a> {
    pub(crate) fn new(raw: &'a ffi::RawChunk<'a>) -> Self {
        Chunk(raw)
    }

    /// 0 for the first chunk of the stream.
    pub fn index(&self) -> u64 {
        self.0.index
    }

    pub fn data(&self) -> &'a [u8] {
        self.0.data.as_slice()
    }

    /// Earlier chunks as the client received them, oldest first, within the plugin's
    /// [`History`](crate::History) limits. Empty unless the plugin opted in.
    pub fn history(&self) -> History<'a> {
        History { raw: &self.0.history, _chunk: std::marker::PhantomData }
    }
}

/// Read-only access to earlier chunks, in place in the host's bounded buffer.
#[derive(Clone, Copy)]
pub struct History<'a> {
    raw: &'a ffi::RawHistory,
    _chunk: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> History<'a> {
    pub fn len(&self) -> usize {
        self.raw.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.raw.len == 0
    }

    /// Total bytes of the chunks held.
    pub fn bytes(&self) -> u64 {
        self.raw.bytes
    }

    /// Chunk `index`, 0 being the oldest held.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        if index >= self.len() {
            return None;
        }
        Some((self.raw.get)(self.raw.ctx, index as u32).as_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let this = *self;
        (0..this.len()).filter_map(move |i| this.get(i))
    }
}
