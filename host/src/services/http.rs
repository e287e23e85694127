//! The HTTP client plugins call upstreams through (the `Http` host service). A call names a
//! configured upstream; the host adds its base URL, credentials, TLS, timeout and size limit,
//! and counts it (metrics per plugin and upstream, and a proxy-log record for the collectors).
//!
//! Every call runs as a task on the gateway's runtime and reaches the plugin through channels,
//! so the plugin can poll the answer from anywhere, with no runtime of its own; dropping the
//! answer (or the body) before the end cancels the call.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use plugin_abi::ffi::{HttpCall, HttpFuture, HttpResponse, ItemSource, KeepAlive, ServiceResult};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{HttpCallMetrics, Metrics};
use crate::upstream::mock::{MockHttpReply, MockUpstream};
use crate::upstream::openai::OpenAiUpstream;
use crate::upstream::{Upstream, Upstreams, forwardable};

/// Where calls to one upstream go.
#[derive(Clone)]
pub enum HttpTarget {
    /// The embedded mock, answered in process (no network).
    Mock(Arc<MockUpstream>),
    Remote(Arc<OpenAiUpstream>),
}

impl HttpTarget {
    /// Every configured upstream as the HTTP client reaches it, by name.
    pub fn all(upstreams: &Upstreams) -> HashMap<String, HttpTarget> {
        upstreams
            .upstreams
            .iter()
            .map(|u| match u {
                Upstream::Mock { name, mock } => (name.clone(), HttpTarget::Mock(mock.clone())),
                Upstream::OpenAi(o) => (o.name.clone(), HttpTarget::Remote(o.clone())),
            })
            .collect()
    }
}

/// One finished call, for the proxy log.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    pub request_id: String,
    pub plugin: String,
    pub upstream: String,
    pub method: String,
    pub path: String,
    /// 0 when no response arrived.
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_us: u64,
    pub unix_ms: u64,
}

type Sink = Box<dyn Fn(CallLog) + Send + Sync>;

pub struct HttpClient {
    /// Swapped whole by a config reload; a call in flight keeps the target it started with.
    targets: arc_swap::ArcSwap<HashMap<String, HttpTarget>>,
    runtime: Option<tokio::runtime::Handle>,
    metrics: Arc<Metrics>,
    sink: OnceLock<Sink>,
}

/// Body chunks in flight between the call's task and the plugin.
const BODY_QUEUE: usize = 16;

impl HttpClient {
    /// A client for `targets` that runs its calls on the current tokio runtime (none outside
    /// one: every call then fails, saying so).
    pub fn new(targets: HashMap<String, HttpTarget>, metrics: Arc<Metrics>) -> Self {
        let targets = arc_swap::ArcSwap::from_pointee(targets);
        HttpClient { targets, runtime: tokio::runtime::Handle::try_current().ok(), metrics, sink: OnceLock::new() }
    }

    /// The upstreams calls from now on can name (a config reload).
    pub fn set_targets(&self, targets: HashMap<String, HttpTarget>) {
        self.targets.store(Arc::new(targets));
    }

    /// Where finished calls are logged (set once, by the gateway).
    pub fn set_sink(&self, sink: Sink) {
        let _ = self.sink.set(sink);
    }

    /// Sends `call` for `plugin`.
    pub fn send(self: &Arc<Self>, plugin: &str, call: HttpCall) -> HttpFuture {
        let fail = |message: String| -> HttpFuture { Box::pin(std::future::ready(Err(message))) };
        let targets = self.targets.load();
        let Some(target) = targets.get(&call.upstream).cloned() else {
            let mut known: Vec<&str> = targets.keys().map(String::as_str).collect();
            known.sort_unstable();
            return fail(format!("no upstream named `{}`: expected one of {known:?}", call.upstream));
        };
        let Some(runtime) = self.runtime.clone() else {
            return fail("the host HTTP client is not running (no runtime)".into());
        };
        let Ok(method) = Method::from_bytes(call.method.as_bytes()) else {
            return fail(format!("invalid HTTP method {:?}: expected a token such as GET or POST", call.method));
        };
        if !call.path.starts_with('/') {
            return fail(format!("invalid path {:?}: expected a path starting with `/`", call.path));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &call.headers {
            match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                _ => return fail(format!("invalid header {name:?}: expected a valid HTTP header name and value")),
            }
        }
        // The client frames the request and names the host itself.
        let headers = forwardable(headers);
        let meter = Meter {
            client: self.clone(),
            metrics: self.metrics.http_call(plugin, &call.upstream),
            log: CallLog {
                request_id: call.request_id,
                plugin: plugin.to_owned(),
                upstream: call.upstream,
                method: call.method,
                path: call.path,
                status: 0,
                request_bytes: call.body.len() as u64,
                response_bytes: 0,
                latency_us: 0,
                unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            },
            started: Instant::now(),
            failed: false,
        };
        meter.metrics.calls.fetch_add(1, Relaxed);
        let (head_tx, head_rx) = oneshot::channel();
        let body = Bytes::from(call.body);
        let timeout = call.timeout;
        let task = runtime.spawn(Holding {
            future: Box::pin(run(target, method, headers, body, timeout, head_tx, meter)),
            _keep_alive: call.keep_alive,
        });
        Box::pin(async move {
            // Dropping this future before the head arrives cancels the call.
            let abort = AbortOnDrop(Some(task));
            match head_rx.await {
                Ok(Ok((status, headers, body))) => {
                    // From here the body channel carries the call: dropping it cancels it.
                    abort.release();
                    Ok(HttpResponse { status, headers, body: Box::pin(BodyChannel(body)) })
                }
                Ok(Err(message)) => Err(message),
                Err(_) => Err("the HTTP call ended without an answer".into()),
            }
        })
    }
}

/// A call's task with the plugin's library: a waker the plugin made may sit in the call's
/// channels, so the library is released only after the task's state (fields drop in order).
struct Holding<F> {
    future: std::pin::Pin<Box<F>>,
    _keep_alive: KeepAlive,
}

impl<F: std::future::Future> std::future::Future for Holding<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.future.as_mut().poll(cx)
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn release(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

type Head = ServiceResult<(u16, Vec<(String, String)>, mpsc::Receiver<ServiceResult<Vec<u8>>>)>;

/// Counts one call and logs it when it ends, however it ends (also when cancelled). An error is
/// counted when it happens, before the plugin hears of it; a call the plugin dropped before the
/// answer is not an error.
struct Meter {
    client: Arc<HttpClient>,
    metrics: Arc<HttpCallMetrics>,
    log: CallLog,
    started: Instant,
    failed: bool,
}

impl Meter {
    /// Counts the call as failed (once).
    fn fail(&mut self) {
        if !self.failed {
            self.failed = true;
            self.metrics.errors.fetch_add(1, Relaxed);
        }
    }

    fn status(&mut self, status: u16) {
        self.log.status = status;
        if status >= 500 {
            self.fail();
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.metrics.latency.observe(took);
        self.metrics.response_bytes.fetch_add(self.log.response_bytes, Relaxed);
        self.log.latency_us = took.as_micros() as u64;
        tracing::debug!(
            plugin = %self.log.plugin,
            upstream = %self.log.upstream,
            request_id = %self.log.request_id,
            status = self.log.status,
            bytes = self.log.response_bytes,
            latency_us = self.log.latency_us,
            "{} {}",
            self.log.method,
            self.log.path
        );
        if let Some(sink) = self.client.sink.get() {
            sink(std::mem::take(&mut self.log));
        }
    }
}

/// The call's task: sends the request, hands back the head, then pumps the body.
async fn run(
    target: HttpTarget,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    timeout: Option<Duration>,
    head_tx: oneshot::Sender<Head>,
    mut meter: Meter,
) {
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let path = meter.log.path.clone();
    match target {
        HttpTarget::Mock(mock) => {
            let reply = mock.http(&method, &path, &headers, &body);
            let stream = matches!(reply, MockHttpReply::Stream { .. });
            let (status, content_type, frames, delay) = reply.into_frames();
            meter.status(status.as_u16());
            let head = vec![("content-type".to_owned(), content_type.to_owned())];
            if head_tx.send(Ok((status.as_u16(), head, rx))).is_err() {
                return;
            }
            for (i, frame) in frames.into_iter().enumerate() {
                if stream && i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                meter.log.response_bytes += frame.len() as u64;
                if tx.send(Ok(frame.to_vec())).await.is_err() {
                    return;
                }
            }
        }
        HttpTarget::Remote(upstream) => {
            // A plugin may shorten the upstream's timeout, not lengthen it.
            let timeout = timeout.map_or(upstream.timeout, |t| t.min(upstream.timeout));
            // What the plugin's call is for is the plugin's to know: no model, no stream flag.
            let call = crate::upstream::credentials::CallFor::default();
            let (status, resp_headers, mut incoming) =
                match upstream.request(method, &path, headers, body, timeout, call).await {
                    Ok(r) => r,
                    // The gateway answered for the upstream (every key of its pool is cooling):
                    // the plugin gets that answer as a response, 429 and Retry-After, as it
                    // would get the provider's own.
                    Err(e) if e.retry_after_secs.is_some() => {
                        meter.status(e.status.as_u16());
                        let mut head = vec![("content-type".to_owned(), "application/json".to_owned())];
                        head.extend(e.retry_after_secs.map(|s| ("retry-after".to_owned(), s.to_string())));
                        let body = e.body();
                        meter.log.response_bytes += body.len() as u64;
                        if head_tx.send(Ok((e.status.as_u16(), head, rx))).is_ok() {
                            let _ = tx.send(Ok(body.to_vec())).await;
                        }
                        return;
                    }
                    Err(e) => {
                        meter.fail();
                        let _ = head_tx.send(Err(e.message));
                        return;
                    }
                };
            meter.status(status.as_u16());
            let head = resp_headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            if head_tx.send(Ok((status.as_u16(), head, rx))).is_err() {
                return;
            }
            let limit = upstream.max_response_bytes as u64;
            loop {
                let frame = tokio::select! {
                    frame = tokio::time::timeout(timeout, incoming.frame()) => frame,
                    () = tx.closed() => return,
                };
                let chunk = match frame {
                    Err(_) => Err(format!("upstream `{}` stalled mid-body", meter.log.upstream)),
                    Ok(None) => return,
                    Ok(Some(Err(e))) => Err(format!("upstream `{}` broke off its response: {e}", meter.log.upstream)),
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => Ok(data),
                        Err(_) => continue,
                    },
                };
                let chunk = chunk.and_then(|data| {
                    meter.log.response_bytes += data.len() as u64;
                    if meter.log.response_bytes > limit {
                        Err(format!(
                            "upstream `{}`: response body too large: expected at most {limit} bytes",
                            meter.log.upstream
                        ))
                    } else {
                        Ok(data.to_vec())
                    }
                });
                let end = chunk.is_err();
                if end {
                    meter.fail();
                }
                // A plugin that stops reading for a whole timeout lets the call go.
                match tokio::time::timeout(timeout, tx.send(chunk)).await {
                    Ok(Ok(())) if !end => {}
                    Ok(_) => return,
                    Err(_) => {
                        meter.fail();
                        tracing::warn!(plugin = %meter.log.plugin, upstream = %meter.log.upstream, "plugin stopped reading an upstream body: call cut");
                        return;
                    }
                }
            }
        }
    }
}

/// The body as the plugin reads it: chunks from the call's task.
struct BodyChannel(mpsc::Receiver<ServiceResult<Vec<u8>>>);

impl ItemSource for BodyChannel {
    type Item = ServiceResult<Vec<u8>>;
    fn poll_item(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
