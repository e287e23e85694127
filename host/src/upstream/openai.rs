//! An OpenAI-compatible HTTP upstream, over hyper's pooled client with rustls (HTTP/1.1).
//!
//! Clients see the upstream's name and a short reason when a call fails; the URL and the
//! underlying error go to the log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;

use super::Event;
use super::credentials::{CallFor, Pool, PoolConfig};
use super::sse::{SseEvent, SseParser};
use crate::error::ApiError;
use crate::services::kv::KvStore;

/// What an `openai` upstream is built from (its config, with `ca_file` already read).
pub struct Settings<'a> {
    pub base_url: &'a str,
    /// The keys, and where stored ones are kept.
    pub pool: PoolConfig<'a>,
    pub kv: Option<&'a dyn KvStore>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub ca_certs: &'a [CertificateDer<'static>],
    pub max_response_bytes: usize,
    pub max_event_bytes: usize,
}

pub struct OpenAiUpstream {
    pub name: String,
    pub base_url: String,
    /// The keys calls are made with.
    pub pool: Pool,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    max_event_bytes: usize,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// TLS with the `ring` provider, trusting Mozilla's roots (compiled in) and `extra`.
pub(crate) fn tls_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    // Each one was checked when the config was loaded.
    roots.add_parsable_certificates(extra.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An error and its sources, for the log.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl OpenAiUpstream {
    pub fn new(name: &str, s: Settings<'_>) -> Self {
        let configured = !s.pool.keys.is_empty();
        let pool = Pool::new(s.pool, s.kv);
        if configured && pool.snapshot().is_empty() {
            tracing::warn!(upstream = name, "no API key is set: calling the upstream without a key");
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(s.connect_timeout));
        http.set_nodelay(true);
        // The TLS layer above decides the scheme; plain http passed the config's check.
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(s.ca_certs))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        OpenAiUpstream {
            name: name.to_owned(),
            base_url: s.base_url.trim_end_matches('/').to_owned(),
            pool,
            timeout: s.timeout,
            max_response_bytes: s.max_response_bytes,
            max_event_bytes: s.max_event_bytes,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(&self, body: Bytes, call: CallFor<'_>) -> Result<(StatusCode, HeaderMap, Incoming), ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.request(Method::POST, "/chat/completions", headers, body, self.timeout, call).await
    }

    /// Sends `method path` (path and query, appended to the base URL) with `headers` and a key
    /// from the upstream's pool; waits at most `timeout` for the response head. A key the
    /// upstream refuses (429, 401, 403) cools down and the call goes again with the next
    /// available one (see [`super::credentials`]); the last refusal is the answer when none is
    /// left.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
        call: CallFor<'_>,
    ) -> Result<(StatusCode, HeaderMap, Incoming), ApiError> {
        let url = format!("{}{path}", self.base_url);
        let keys = self.pool.snapshot();
        let mut tried = 0u128;
        let mut picked =
            self.pool.pick(&keys, tried, call).map_err(|c| ApiError::credentials_cooling(&self.name, &c))?;
        let mut original = Some(headers);
        loop {
            // Another attempt needs the headers again; a pool of one key makes one attempt and
            // never copies them.
            let mut headers = if keys.len() > 1 { original.clone() } else { original.take() }.unwrap_or_default();
            if let Some(i) = picked {
                self.pool.apply(&keys, i, &mut headers);
            }
            let (status, resp_headers, incoming) =
                self.send_once(method.clone(), &url, headers, body.clone(), timeout).await?;
            let Some(i) = picked else { return Ok((status, resp_headers, incoming)) };
            if !self.pool.answered(&keys, i, status, &resp_headers) {
                return Ok((status, resp_headers, incoming));
            }
            tried |= 1 << i;
            if tried.count_ones() >= self.pool.max_attempts {
                return Ok((status, resp_headers, incoming));
            }
            match self.pool.pick(&keys, tried, call) {
                Ok(Some(next)) => {
                    self.pool.failovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    picked = Some(next);
                }
                _ => return Ok((status, resp_headers, incoming)),
            }
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Incoming), ApiError> {
        let mut req = Request::builder().method(method).uri(url).body(Full::new(body)).map_err(|e| {
            tracing::warn!(upstream = %self.name, %url, "cannot build the upstream request: {e}");
            ApiError::upstream(format!(
                "upstream `{}`: its configured URL and this path do not form a valid URL",
                self.name
            ))
        })?;
        *req.headers_mut() = headers;
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| ApiError::upstream_timeout(&self.name))?
            .map_err(|e| {
                tracing::warn!(upstream = %self.name, %url, "upstream call failed: {}", chain(&e));
                let reason = if e.is_connect() {
                    "could not connect (connection or TLS handshake failed)"
                } else {
                    "the call failed before a response arrived"
                };
                ApiError::upstream(format!("upstream `{}`: {reason}", self.name))
            })?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status, parts.headers, body))
    }

    /// Reads a whole response body of at most `max_response_bytes`; `declared` is its
    /// content-length, if it gave one.
    pub async fn collect(&self, declared: Option<u64>, body: Incoming) -> Result<Bytes, ApiError> {
        let limit = self.max_response_bytes;
        let too_large = |found: String| {
            tracing::warn!(upstream = %self.name, limit, found, "upstream response body over the limit");
            ApiError::upstream(format!(
                "upstream `{}`: response body too large: expected at most {limit} bytes, found {found}",
                self.name
            ))
        };
        if let Some(len) = declared.filter(|len| *len > limit as u64) {
            return Err(too_large(format!("{len} (its content-length)")));
        }
        match tokio::time::timeout(self.timeout, Limited::new(body, limit).collect()).await {
            Err(_) => Err(ApiError::upstream_timeout(&self.name)),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large("more".into())),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.name, "upstream broke off its response: {}", chain(&*e));
                Err(ApiError::upstream(format!("upstream `{}` broke off its response", self.name)))
            }
        }
    }
}

/// Events of an upstream SSE response.
pub struct SseEvents {
    body: Incoming,
    parser: SseParser,
    idle_timeout: Duration,
    /// Fires `idle_timeout` after the last read at the latest. Armed once and moved on only
    /// when it fires early (see [`SseEvents::next`]): a timer per read would cost more than
    /// parsing the event.
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When the current wait for the upstream began.
    waiting_since: tokio::time::Instant,
    upstream: String,
    /// An event read ahead by [`SseEvents::start`].
    first: Option<Event>,
    done: bool,
}

impl SseEvents {
    pub fn new(body: Incoming, upstream: &OpenAiUpstream) -> Self {
        SseEvents {
            body,
            parser: SseParser::new(upstream.max_event_bytes),
            idle_timeout: upstream.timeout,
            idle: Box::pin(tokio::time::sleep(upstream.timeout)),
            waiting_since: tokio::time::Instant::now(),
            upstream: upstream.name.clone(),
            first: None,
            done: false,
        }
    }

    /// Reads the first event ahead, so that a stream failing before it can be answered with an
    /// error status rather than a 200 that carries an error event.
    pub async fn start(&mut self) -> Result<(), String> {
        match self.next().await {
            Some(Ok(data)) => {
                self.first = Some(data);
                Ok(())
            }
            Some(Err(message)) => Err(message),
            None => Ok(()),
        }
    }

    /// The next event if it is already here (read ahead, or parsed out of what was read with an
    /// earlier one): `None` if it takes reading the upstream.
    pub fn buffered(&mut self) -> Option<Option<Result<Event, String>>> {
        if let Some(first) = self.first.take() {
            return Some(Some(Ok(first)));
        }
        if self.done {
            return Some(None);
        }
        match self.parser.next_parsed() {
            Ok(Some((SseEvent::Data(data), framed))) => Some(Some(Ok(Event { data, framed }))),
            Ok(Some((SseEvent::Done, _))) => {
                self.done = true;
                Some(None)
            }
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                tracing::warn!(upstream = %self.upstream, "upstream stream refused: {e}");
                Some(Some(Err(format!("upstream `{}`: {e}", self.upstream))))
            }
        }
    }

    /// The next event payload; an error message (fit for the client) ends the stream.
    pub async fn next(&mut self) -> Option<Result<Event, String>> {
        loop {
            if let Some(next) = self.buffered() {
                return next;
            }
            self.waiting_since = tokio::time::Instant::now();
            let frame = std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(frame) =
                    http_body::Body::poll_frame(std::pin::Pin::new(&mut self.body), cx)
                {
                    return std::task::Poll::Ready(Some(frame));
                }
                while self.idle.as_mut().poll(cx).is_ready() {
                    let due = self.waiting_since + self.idle_timeout;
                    if tokio::time::Instant::now() >= due {
                        return std::task::Poll::Ready(None);
                    }
                    // Fired early: the upstream sent something since it was armed.
                    self.idle.as_mut().reset(due);
                }
                std::task::Poll::Pending
            })
            .await;
            let Some(frame) = frame else {
                self.done = true;
                return Some(Err(format!("upstream `{}` stalled mid-stream", self.upstream)));
            };
            match frame {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    tracing::warn!(upstream = %self.upstream, "upstream broke off the stream: {}", chain(&e));
                    return Some(Err(format!("upstream `{}` broke off the stream", self.upstream)));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.push_bytes(data);
                    }
                }
            }
        }
    }
}
