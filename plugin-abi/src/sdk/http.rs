//! The host's HTTP client, as plugins use it: `host.http(HttpRequest::post("anthropic",
//! "/v1/messages").json(&body)).await`. Calls go to upstreams configured in the gateway (which
//! adds their base URL, credentials, TLS and limits); the plugin needs no HTTP stack and no
//! async runtime of its own.

use std::time::Duration;

use abi_stable::std_types::{RErr, ROk, RResult, RStr, RVec};

use crate::ffi;
use crate::sdk::PluginError;

/// An HTTP call to a configured upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub upstream: String,
    pub method: String,
    /// Path and query, appended to the upstream's base URL.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Option<Duration>,
    /// The gateway request this call serves, for the gateway's log.
    pub request_id: String,
}

impl HttpRequest {
    pub fn new(method: &str, upstream: &str, path: &str) -> Self {
        HttpRequest {
            upstream: upstream.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            request_id: String::new(),
        }
    }

    pub fn get(upstream: &str, path: &str) -> Self {
        HttpRequest::new("GET", upstream, path)
    }

    pub fn post(upstream: &str, path: &str) -> Self {
        HttpRequest::new("POST", upstream, path)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body, with its content type.
    pub fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("content-type", "application/json").body(body)
    }

    /// Overrides the upstream's timeout for this call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }
}

/// An upstream's answer: status and headers at once, the body as it arrives.
pub struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: ffi::RStream<RResult<RVec<u8>, ffi::PluginError>>,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse").field("status", &self.status).field("headers", &self.headers).finish()
    }
}

impl HttpResponse {
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Option<Result<Vec<u8>, PluginError>> {
        match self.body.next_item().await? {
            ROk(bytes) => Some(Ok(bytes.into_vec())),
            RErr(e) => Some(Err(e.into())),
        }
    }

    /// The whole body (the gateway bounds it by the upstream's `max_response_bytes`).
    pub async fn bytes(mut self) -> Result<Vec<u8>, PluginError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }
}

/// Sends `req` through `http`; what `Host::http` runs.
pub(crate) fn send(
    raw: &ffi::HostHandle,
    http: Option<&'static ffi::HttpV1>,
    req: HttpRequest,
) -> impl std::future::Future<Output = Result<HttpResponse, PluginError>> + Send + 'static {
    let sent = http.map(|http| {
        let headers: Vec<ffi::RawHeader<'_>> = req
            .headers
            .iter()
            .map(|(n, v)| ffi::RawHeader { name: RStr::from_str(n), value: v.as_bytes().into() })
            .collect();
        let call = ffi::RawHttpCall {
            upstream: RStr::from_str(&req.upstream),
            method: RStr::from_str(&req.method),
            path: RStr::from_str(&req.path),
            headers: headers.as_slice().into(),
            body: req.body.as_slice().into(),
            timeout_ms: req.timeout.map_or(0, |t| t.as_millis().clamp(1, u64::MAX as u128) as u64),
            request_id: RStr::from_str(&req.request_id),
        };
        (http.send)(raw.ctx, &call)
    });
    async move {
        let Some(sent) = sent else {
            return Err(PluginError::with_code(
                ffi::code::SERVICE,
                "this gateway offers no HTTP client to plugins (it is older than plugin ABI 1.4)",
            ));
        };
        match sent.await {
            ROk(reply) => Ok(HttpResponse {
                status: reply.status,
                headers: reply.headers.into_iter().map(|h| (h.name.into_string(), h.value.into_string())).collect(),
                body: reply.body,
            }),
            RErr(e) => Err(e.into()),
        }
    }
}
