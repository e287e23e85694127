//! What hooks return: named decisions, and the one error type that crosses the boundary.

use abi_stable::std_types::{RNone, ROption, RSome, RString, RVec};

use crate::ffi;

/// A hook's error: a code and a message. Reaches the host, which applies the plugin's failure
/// policy (fail closed by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub code: u32,
    pub message: String,
}

impl PluginError {
    /// An error with code [`ffi::code::INTERNAL`].
    pub fn new(message: impl Into<String>) -> Self {
        PluginError { code: ffi::code::INTERNAL, message: message.into() }
    }

    /// A configuration the plugin cannot use, code [`ffi::code::INVALID_CONFIG`].
    pub fn config(message: impl Into<String>) -> Self {
        PluginError { code: ffi::code::INVALID_CONFIG, message: message.into() }
    }

    /// What a trait's default hook answers: "not written". The gateway then stops calling that
    /// hook for this plugin instance (it costs one call per load, then nothing).
    pub fn unwritten() -> Self {
        // No message: it would be allocated on every call to a default hook on hosts that do
        // not skip them.
        PluginError { code: ffi::code::UNWRITTEN, message: String::new() }
    }

    /// Whether this is the default hooks' [`PluginError::unwritten`].
    pub fn is_unwritten(&self) -> bool {
        self.code == ffi::code::UNWRITTEN
    }

    pub fn with_code(code: u32, message: impl Into<String>) -> Self {
        PluginError { code, message: message.into() }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for PluginError {}

impl From<PluginError> for ffi::PluginError {
    fn from(e: PluginError) -> Self {
        ffi::PluginError { code: e.code, message: e.message.into() }
    }
}

impl From<ffi::PluginError> for PluginError {
    fn from(e: ffi::PluginError) -> Self {
        PluginError { code: e.code, message: e.message.into_string() }
    }
}

/// What a request or response hook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Go on unchanged. Nothing crosses the boundary but the tag.
    Continue,
    /// Go on with these changes; later hooks see them.
    Modify(Changes),
    /// Stop here and answer the client with this response; later request hooks are skipped.
    Respond(Reply),
}

/// Changes to the request or response a hook was shown. Only what is set here crosses back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes(pub(crate) ffi::Mutations);

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (replaces) a header.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.set_headers.push(owned_header(name.into(), value.into()));
        self
    }

    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.0.remove_headers.push(RString::from(name.into()));
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = RSome(RVec::from(body.into()));
        self
    }

    /// Sets the request's `model` (request hooks only). The gateway rewrites the body's `model`
    /// field in place, leaving the rest of the body as it was: later hooks, upstream selection
    /// (when set in a phase before it) and the upstream see the new model. Applied after
    /// [`Changes::body`] when both are set.
    pub fn set_model(mut self, model: impl Into<String>) -> Self {
        self.0.set_headers.push(owned_header(ffi::property::MODEL.to_owned(), model.into()));
        self
    }

    /// The model [`Changes::set_model`] sets, if any.
    pub fn new_model(&self) -> Option<&str> {
        self.0.set_headers.iter().rev().find(|h| h.name.as_str() == ffi::property::MODEL).map(|h| h.value.as_str())
    }

    /// Replaces the status (response hooks only).
    pub fn status(mut self, status: u16) -> Self {
        self.0.status = status;
        self
    }

    /// Adds request metadata that later hooks read with [`crate::Context::metadata`].
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.metadata.push(ffi::OwnedKeyValue { key: key.into().into(), value: value.into().into() });
        self
    }

    pub fn is_empty(&self) -> bool {
        let m = &self.0;
        m.set_headers.is_empty()
            && m.remove_headers.is_empty()
            && m.body.is_none()
            && m.status == 0
            && m.metadata.is_empty()
    }

    /// The headers this sets, for tests.
    pub fn headers_set(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .set_headers
            .iter()
            .filter(|h| !ffi::property::is_property(&h.name))
            .map(|h| (h.name.as_str(), h.value.as_str()))
    }

    /// The replacement body, if any.
    pub fn new_body(&self) -> Option<&[u8]> {
        match &self.0.body {
            RSome(b) => Some(b.as_slice()),
            RNone => None,
        }
    }
}

fn owned_header(name: String, value: String) -> ffi::OwnedHeader {
    ffi::OwnedHeader { name: name.into(), value: value.into() }
}

/// A response sent by a plugin instead of the upstream's.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply(pub(crate) ffi::Reply);

impl Reply {
    pub fn new(status: u16) -> Self {
        Reply(ffi::Reply { status, headers: RVec::new(), body: RVec::new() })
    }

    /// An OpenAI-style error: `{"error": {"message", "type", "code"}}`.
    pub fn error(status: u16, kind: &str, code: &str, message: &str) -> Self {
        let body = serde_json::json!({ "error": { "message": message, "type": kind, "code": code } });
        Reply::new(status).header("content-type", "application/json").body(body.to_string())
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.headers.push(owned_header(name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = RVec::from(body.into());
        self
    }

    pub fn status(&self) -> u16 {
        self.0.status
    }

    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.0.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    pub fn body_bytes(&self) -> &[u8] {
        &self.0.body
    }
}

impl From<Decision> for ffi::HookOutcome {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Continue => ffi::HookOutcome::Continue,
            Decision::Modify(c) => ffi::HookOutcome::Modify(c.0),
            Decision::Respond(r) => ffi::HookOutcome::Respond(r.0),
        }
    }
}

/// What an auth plugin decided about a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Not this plugin's kind of credential: the next auth plugin decides (401 if none does).
    Pass,
    Allow {
        app_id: String,
        user_id: String,
    },
    /// Refuse with 401 and this reason.
    Deny(String),
}

impl From<AuthDecision> for ffi::AuthOutcome {
    fn from(d: AuthDecision) -> Self {
        match d {
            AuthDecision::Pass => ffi::AuthOutcome::Pass,
            AuthDecision::Allow { app_id, user_id } => {
                ffi::AuthOutcome::Authenticated(ffi::Identity { app_id: app_id.into(), user_id: user_id.into() })
            }
            AuthDecision::Deny(reason) => ffi::AuthOutcome::Denied(reason.into()),
        }
    }
}

/// An app or user found by credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub name: String,
}

impl From<Record> for ffi::RecordInfo {
    fn from(r: Record) -> Self {
        ffi::RecordInfo { id: r.id.into(), name: r.name.into() }
    }
}

pub(crate) fn record_result(
    r: Result<Option<Record>, PluginError>,
) -> abi_stable::std_types::RResult<ROption<ffi::RecordInfo>, ffi::PluginError> {
    match r {
        Ok(Some(rec)) => abi_stable::std_types::ROk(RSome(rec.into())),
        Ok(None) => abi_stable::std_types::ROk(RNone),
        Err(e) if e.is_unwritten() && !crate::ffi::glue::host_skips_unwritten() => abi_stable::std_types::ROk(RNone),
        Err(e) => abi_stable::std_types::RErr(e.into()),
    }
}

/// What a stream-chunk hook decided about one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkDecision {
    Pass,
    Replace(Vec<u8>),
    /// The client never sees this chunk.
    Drop,
}

impl From<ChunkDecision> for ffi::ChunkOutcome {
    fn from(d: ChunkDecision) -> Self {
        match d {
            ChunkDecision::Pass => ffi::ChunkOutcome::Pass,
            ChunkDecision::Replace(v) => ffi::ChunkOutcome::Replace(v.into()),
            ChunkDecision::Drop => ffi::ChunkOutcome::Drop,
        }
    }
}
