//! The `Executor` capability as plugin authors implement it: the plugin *is* the provider for
//! the models routed to it (CLIProxyAPI's `ProviderExecutor`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use abi_stable::std_types::{RErr, ROk, RResult, RString, RVec};

use crate::ffi;
use crate::sdk::stream::Unfold;
use crate::sdk::{Plugin, PluginError};

/// What an executor serves, asked once when it loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorInfo {
    /// The provider it speaks for ("anthropic").
    pub identifier: String,
    /// Request formats it accepts ("openai").
    pub input_formats: Vec<String>,
    /// Response formats it produces ("openai").
    pub output_formats: Vec<String>,
    /// Models it serves, listed in `/v1/models` when a model routes to it.
    pub models: Vec<ExecutorModel>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorModel {
    pub id: String,
    pub owned_by: String,
    /// 0 if unknown.
    pub context_length: u64,
}

/// One request routed to the executor, after every request hook ran. Owned: an async hook's
/// future outlives the call that started it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub request_id: String,
    pub app_id: String,
    pub user_id: String,
    /// The model the client asked for.
    pub model: String,
    /// The model to ask the provider for (the route's `upstream_model`).
    pub upstream_model: String,
    /// The format of `body` ("openai").
    pub format: String,
    pub stream: bool,
    /// The client's request headers, as the request hooks left them.
    pub headers: Vec<(String, String)>,
    /// The request body, as the request hooks left it.
    pub body: Vec<u8>,
}

impl ExecRequest {
    pub(crate) fn from_raw(r: &ffi::RawExecRequest<'_>) -> Self {
        ExecRequest {
            request_id: r.ctx.request_id.as_str().to_owned(),
            app_id: r.ctx.app_id.as_str().to_owned(),
            user_id: r.ctx.user_id.as_str().to_owned(),
            model: r.ctx.model.as_str().to_owned(),
            upstream_model: r.upstream_model.as_str().to_owned(),
            format: r.format.as_str().to_owned(),
            stream: r.stream,
            headers: r
                .headers
                .iter()
                .map(|h| (h.name.as_str().to_owned(), String::from_utf8_lossy(h.value.as_slice()).into_owned()))
                .collect(),
            body: r.body.to_vec(),
        }
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A whole response, in the executor's output format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ExecResponse {
    /// A 200 JSON response.
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        ExecResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }
}

/// Why an executor call failed; the client gets an OpenAI-shaped error with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecError {
    /// The HTTP status for the client (502 when the provider failed in a way with no better one).
    pub status: u16,
    /// The OpenAI error type: `invalid_request_error`, `authentication_error`,
    /// `rate_limit_error`, `api_error`, ...
    pub kind: String,
    pub message: String,
}

impl ExecError {
    pub fn new(status: u16, kind: impl Into<String>, message: impl Into<String>) -> Self {
        ExecError { status, kind: kind.into(), message: message.into() }
    }

    /// The client's request cannot be served (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ExecError::new(400, "invalid_request_error", message)
    }

    /// The provider failed (502).
    pub fn upstream(message: impl Into<String>) -> Self {
        ExecError::new(502, "api_error", message)
    }

    /// The executor does not offer this call (501).
    pub fn unsupported(what: &str) -> Self {
        ExecError::new(501, "invalid_request_error", format!("this executor does not support {what}"))
    }
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.kind, self.message)
    }
}

/// A host service failing (the HTTP client could not reach the provider) is a 502.
impl From<PluginError> for ExecError {
    fn from(e: PluginError) -> Self {
        ExecError::upstream(e.message)
    }
}

/// The chunks of a streamed response: each one event payload in the output format (for
/// "openai", one `chat.completion.chunk` JSON), without SSE framing.
pub struct ChunkStream(Pin<Box<dyn ffi::ItemSource<Item = Result<Vec<u8>, ExecError>>>>);

impl ChunkStream {
    /// A stream driven by `step`, which gets the state and returns the next chunk with the new
    /// state, or `None` at the end (like `futures::stream::unfold`).
    pub fn unfold<S, F, Fut>(state: S, step: F) -> Self
    where
        S: Send + 'static,
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: Future<Output = Option<(Result<Vec<u8>, ExecError>, S)>> + Send + 'static,
    {
        ChunkStream(Box::pin(Unfold::new(state, step)))
    }

    /// A stream of the given chunks.
    pub fn from_chunks(chunks: Vec<Vec<u8>>) -> Self {
        ChunkStream::unfold(chunks.into_iter(), |mut it| async move { it.next().map(|c| (Ok(c), it)) })
    }

    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Vec<u8>, ExecError>>> {
        self.0.as_mut().poll_item(cx)
    }
}

/// Serves the models routed to it by calling a provider itself (usually through
/// [`crate::Host::http`]). Every request hook runs before it, every response, stream-chunk and
/// collector hook after it, as for a built-in upstream. The futures run on the gateway's
/// runtime; dropping one (the client went away) cancels it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Executor` but does not implement `plugin_abi::Executor`",
    label = "listed here"
)]
pub trait Executor: Plugin {
    /// What it serves; asked once at load.
    fn describe(&self) -> ExecutorInfo;

    /// A non-streaming request.
    fn execute(&self, req: ExecRequest) -> impl Future<Output = Result<ExecResponse, ExecError>> + Send;

    /// A streaming request: resolves once the provider answered (an error here reaches the
    /// client with its status), then the chunks follow.
    fn execute_stream(&self, req: ExecRequest) -> impl Future<Output = Result<ChunkStream, ExecError>> + Send;

    /// Input tokens the request would use. Default: not supported (501).
    fn count_tokens(&self, _req: ExecRequest) -> impl Future<Output = Result<u64, ExecError>> + Send {
        std::future::ready(Err(ExecError::unsupported("count_tokens")))
    }

    /// A raw HTTP request with the provider's credentials (the gateway's admin API passes it
    /// through). Default: not supported (501).
    fn http_request(&self, _req: HttpPassthrough) -> impl Future<Output = Result<ExecResponse, ExecError>> + Send {
        std::future::ready(Err(ExecError::unsupported("http_request")))
    }
}

/// A raw request for [`Executor::http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPassthrough {
    pub method: String,
    /// Path and query, relative to the provider.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpPassthrough {
    pub(crate) fn from_raw(r: &ffi::RawRequest<'_>) -> Self {
        let path = if r.query.is_empty() {
            r.path.as_str().to_owned()
        } else {
            format!("{}?{}", r.path.as_str(), r.query.as_str())
        };
        HttpPassthrough {
            method: r.method.as_str().to_owned(),
            path,
            headers: r
                .headers
                .iter()
                .map(|h| (h.name.as_str().to_owned(), String::from_utf8_lossy(h.value.as_slice()).into_owned()))
                .collect(),
            body: r.body.to_vec(),
        }
    }
}

// ---- the glue the `Executor` definition uses ----

fn error_to_raw(e: ExecError) -> ffi::ExecError {
    ffi::ExecError {
        status: e.status,
        kind: e.kind.into(),
        error: ffi::PluginError { code: ffi::code::INTERNAL, message: e.message.into() },
    }
}

fn headers_to_raw(headers: Vec<(String, String)>) -> RVec<ffi::OwnedHeader> {
    headers.into_iter().map(|(name, value)| ffi::OwnedHeader { name: name.into(), value: value.into() }).collect()
}

pub(crate) fn info_to_raw(info: ExecutorInfo) -> ffi::ExecutorInfo {
    let strings = |v: Vec<String>| v.into_iter().map(RString::from).collect();
    ffi::ExecutorInfo {
        identifier: info.identifier.into(),
        input_formats: strings(info.input_formats),
        output_formats: strings(info.output_formats),
        models: info
            .models
            .into_iter()
            .map(|m| ffi::ExecutorModel {
                id: m.id.into(),
                owned_by: m.owned_by.into(),
                context_length: m.context_length,
            })
            .collect(),
    }
}

pub(crate) fn response_future(
    f: impl Future<Output = Result<ExecResponse, ExecError>> + Send + 'static,
) -> ffi::RFuture<RResult<ffi::ExecResponse, ffi::ExecError>> {
    ffi::RFuture::new(async move {
        match f.await {
            Ok(r) => {
                ROk(ffi::ExecResponse { status: r.status, headers: headers_to_raw(r.headers), body: r.body.into() })
            }
            Err(e) => RErr(error_to_raw(e)),
        }
    })
}

pub(crate) fn count_future(
    f: impl Future<Output = Result<u64, ExecError>> + Send + 'static,
) -> ffi::RFuture<RResult<u64, ffi::ExecError>> {
    ffi::RFuture::new(async move { f.await.map_err(error_to_raw).into() })
}

/// The executor's `execute_stream` future, then its chunks, as one stream.
pub(crate) fn chunk_stream(
    f: impl Future<Output = Result<ChunkStream, ExecError>> + Send + 'static,
) -> ffi::RStream<RResult<RVec<u8>, ffi::ExecError>> {
    enum Phase<F> {
        Starting(Pin<Box<F>>),
        Streaming(ChunkStream),
        Done,
    }
    struct Chunks<F>(Phase<F>);
    impl<F: Future<Output = Result<ChunkStream, ExecError>> + Send + 'static> ffi::ItemSource for Chunks<F> {
        type Item = RResult<RVec<u8>, ffi::ExecError>;
        fn poll_item(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            // SAFETY: nothing is structurally pinned: the future is boxed.
            let this = unsafe { self.get_unchecked_mut() };
            loop {
                match &mut this.0 {
                    Phase::Starting(f) => match f.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(stream)) => this.0 = Phase::Streaming(stream),
                        Poll::Ready(Err(e)) => {
                            this.0 = Phase::Done;
                            return Poll::Ready(Some(RErr(error_to_raw(e))));
                        }
                    },
                    Phase::Streaming(stream) => {
                        return match stream.poll_chunk(cx) {
                            Poll::Pending => Poll::Pending,
                            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(ROk(chunk.into()))),
                            Poll::Ready(Some(Err(e))) => {
                                this.0 = Phase::Done;
                                Poll::Ready(Some(RErr(error_to_raw(e))))
                            }
                            Poll::Ready(None) => {
                                this.0 = Phase::Done;
                                Poll::Ready(None)
                            }
                        };
                    }
                    Phase::Done => return Poll::Ready(None),
                }
            }
        }
    }
    ffi::RStream::new(Chunks(Phase::Starting(Box::pin(f))))
}
