//! The typed view of an OpenAI-style chat request ([`Request::chat`]).

use std::sync::OnceLock;

use abi_stable::std_types::RSome;

use crate::ffi::{self, ChatLookup, RawChatRequest};
use crate::sdk::Request;

/// The host's request-view service, once `create` found it; until then (and under the mock
/// host, which shares this crate) this crate's own service answers.
static HOST_VIEW: OnceLock<&'static ffi::RequestViewV1> = OnceLock::new();

pub(crate) fn use_host_view(service: Option<&'static ffi::RequestViewV1>) {
    if let Some(service) = service {
        let _ = HOST_VIEW.set(service);
    }
}

fn service() -> &'static ffi::RequestViewV1 {
    HOST_VIEW.get().copied().unwrap_or(&ffi::chat::REQUEST_VIEW_V1)
}

/// An OpenAI-style chat request: model, stream flag, token limit and messages, parsed once by
/// the gateway for every hook that asks (see [`Request::chat`]).
pub struct Chat<'a> {
    inner: Inner<'a>,
    body: &'a [u8],
}

enum Inner<'a> {
    /// The gateway's parse, borrowed for the hook call.
    Host(RawChatRequest<'a>),
    /// Parsed here: a host without the service, or a view the plugin made itself.
    Own(ffi::chat::ParsedChat),
}

impl<'a> Chat<'a> {
    pub(crate) fn of(req: &Request<'a>) -> Option<Chat<'a>> {
        let raw = req.raw();
        let body = raw.body.as_slice();
        let inner = match (service().chat)(raw) {
            ChatLookup::Parsed(view) => Inner::Host(view),
            ChatLookup::NotChat => return None,
            ChatLookup::Unknown => Inner::Own(ffi::chat::ParsedChat::parse(body)?),
        };
        Some(Chat { inner, body })
    }

    fn view(&self) -> RawChatRequest<'_> {
        match &self.inner {
            Inner::Host(raw) => *raw,
            Inner::Own(parsed) => parsed.raw(),
        }
    }

    /// The `model` field as the body has it now (after earlier hooks' changes).
    pub fn model(&self) -> &str {
        let v = self.view();
        v.model.of(v.text.as_str())
    }

    /// The `stream` field; `false` when absent.
    pub fn stream(&self) -> bool {
        self.view().stream
    }

    /// `max_tokens`, or else `max_completion_tokens`.
    pub fn max_tokens(&self) -> Option<u64> {
        match self.view().max_tokens {
            RSome(n) => Some(n),
            _ => None,
        }
    }

    /// The messages, in order.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = Message<'_>> + '_ {
        let v = self.view();
        let text = v.text.as_str();
        v.messages.as_slice().iter().map(move |m| Message { role: m.role.of(text), content: m.content.of(text) })
    }

    /// The whole body, for fields the view does not carry (`tool_calls`, image parts, …).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl std::fmt::Debug for Chat<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("model", &self.model())
            .field("stream", &self.stream())
            .field("max_tokens", &self.max_tokens())
            .field("messages", &self.messages().collect::<Vec<_>>())
            .finish()
    }
}

/// One message of a [`Chat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

impl<'a> Message<'a> {
    /// `system`, `user`, `assistant`, `tool`, …; empty when absent.
    pub fn role(&self) -> &'a str {
        self.role
    }

    /// The text: the string content, or the `text` of each content part joined by newlines
    /// (images and other parts are left out); empty for `null` or absent content.
    pub fn content(&self) -> &'a str {
        self.content
    }
}
