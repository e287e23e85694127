//! Upstreams that models route to: the embedded mock, or an OpenAI-compatible HTTP API.

pub mod credentials;
pub mod mock;
pub mod openai;
pub mod sse;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::config::{GatewayConfig, UpstreamKind};
use crate::error::ApiError;
use crate::record::Usage;
use crate::services::kv::KvStore;
use mock::MockUpstream;
use openai::{OpenAiUpstream, SseEvents};

#[derive(Clone)]
pub enum Upstream {
    Mock { name: String, mock: Arc<MockUpstream> },
    OpenAi(Arc<OpenAiUpstream>),
}

/// What a model resolves to.
pub struct Route {
    pub model: String,
    pub upstream_model: String,
    pub target: Target,
}

/// Who serves a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A built-in upstream, by index into [`Upstreams::upstreams`].
    Upstream(usize),
    /// An executor plugin, by instance name.
    Executor(String),
}

/// Every upstream and model route from the config.
#[derive(Default)]
pub struct Upstreams {
    pub upstreams: Vec<Upstream>,
    pub routes: HashMap<String, Route>,
    /// Model names in config order, for `/v1/models` and error messages.
    pub models: Vec<String>,
}

impl Upstreams {
    /// The upstreams of `config`; credentials stored in `kv` join their pools.
    pub fn from_config(config: &GatewayConfig, kv: Option<&dyn KvStore>) -> Self {
        Self::rebuild(config, None, kv)
    }

    /// The upstreams and routes of `config`, keeping from `previous` (the running config and
    /// its upstreams) every upstream whose config is unchanged, with its connections and its
    /// keys' state.
    pub fn rebuild(
        config: &GatewayConfig,
        previous: Option<(&GatewayConfig, &Upstreams)>,
        kv: Option<&dyn KvStore>,
    ) -> Self {
        let kept = |u: &crate::config::UpstreamConfig| {
            let (old_config, old) = previous?;
            let i = old_config.upstreams.iter().position(|o| o == u)?;
            old.upstreams.get(i).cloned()
        };
        let upstreams: Vec<Upstream> =
            config.upstreams.iter().map(|u| kept(u).unwrap_or_else(|| Self::build(u, kv))).collect();
        let mut routes = HashMap::new();
        for m in &config.models {
            let target = match (&m.upstream, &m.executor) {
                (Some(name), _) => Target::Upstream(
                    config.upstreams.iter().position(|u| u.name == *name).expect("validated by config"),
                ),
                (None, Some(executor)) => Target::Executor(executor.clone()),
                (None, None) => unreachable!("validated by config"),
            };
            let upstream_model = m.upstream_model.clone().unwrap_or_else(|| m.name.clone());
            routes.insert(m.name.clone(), Route { model: m.name.clone(), upstream_model, target });
        }
        Upstreams { upstreams, routes, models: config.models.iter().map(|m| m.name.clone()).collect() }
    }

    fn build(u: &crate::config::UpstreamConfig, kv: Option<&dyn KvStore>) -> Upstream {
        match &u.kind {
            UpstreamKind::Mock { chunks, chunk_delay_ms } => Upstream::Mock {
                name: u.name.clone(),
                mock: Arc::new(MockUpstream::new(*chunks, Duration::from_millis(*chunk_delay_ms))),
            },
            UpstreamKind::Openai {
                base_url,
                api_key_env,
                auth_header,
                connect_timeout_ms,
                timeout_ms,
                ca_certs,
                max_response_bytes,
                max_event_bytes,
                credentials,
                scheduling,
                scheduler,
                rate_limit_cooldown_secs,
                auth_failure_cooldown_secs,
                max_attempts,
                ca_file: _,
                allow_insecure_http: _,
            } => Upstream::OpenAi(Arc::new(OpenAiUpstream::new(
                &u.name,
                openai::Settings {
                    base_url,
                    pool: credentials::PoolConfig {
                        upstream: &u.name,
                        // `authorization` (the default) carries `Bearer <key>`; another header
                        // the key as it is.
                        header: auth_header
                            .as_deref()
                            .and_then(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                            .unwrap_or(http::header::AUTHORIZATION),
                        policy: *scheduling,
                        scheduler: scheduler.clone(),
                        max_attempts: *max_attempts,
                        cooldowns: credentials::Cooldowns {
                            rate_limited: Duration::from_secs(*rate_limit_cooldown_secs),
                            refused: Duration::from_secs(*auth_failure_cooldown_secs),
                        },
                        keys: api_key_env
                            .iter()
                            .map(|var| ("default", var.as_str(), 0))
                            .chain(credentials.iter().map(|c| (c.id.as_str(), c.api_key_env.as_str(), c.priority)))
                            .collect(),
                    },
                    kv,
                    connect_timeout: Duration::from_millis(*connect_timeout_ms),
                    timeout: Duration::from_millis(*timeout_ms),
                    ca_certs,
                    max_response_bytes: *max_response_bytes,
                    max_event_bytes: *max_event_bytes,
                },
            ))),
        }
    }

    /// Who serves `route`: the upstream's name, or the executor's.
    pub fn owner<'a>(&'a self, route: &'a Route) -> &'a str {
        match &route.target {
            Target::Upstream(i) => self.upstreams[*i].name(),
            Target::Executor(name) => name,
        }
    }

    /// The (name, kind) of who serves `route`.
    pub fn owner_kind(&self, route: &Route) -> &'static str {
        match &route.target {
            Target::Upstream(i) => self.upstreams[*i].kind(),
            Target::Executor(_) => "executor",
        }
    }

    pub fn route(&self, model: &str) -> Result<&Route, ApiError> {
        self.routes.get(model).ok_or_else(|| {
            let known: Vec<&str> = self.models.iter().map(String::as_str).collect();
            ApiError::model_not_found(model, &known)
        })
    }
}

impl Upstream {
    pub fn name(&self) -> &str {
        match self {
            Upstream::Mock { name, .. } => name,
            Upstream::OpenAi(o) => &o.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Upstream::Mock { .. } => "mock",
            Upstream::OpenAi(_) => "openai",
        }
    }

    /// The key pool of an `openai` upstream.
    pub fn pool(&self) -> Option<&credentials::Pool> {
        match self {
            Upstream::Mock { .. } => None,
            Upstream::OpenAi(o) => Some(&o.pool),
        }
    }

    pub fn base_url(&self) -> &str {
        match self {
            Upstream::Mock { .. } => "",
            Upstream::OpenAi(o) => &o.base_url,
        }
    }

    /// Sends the chat request. `body` is what the request hooks left; the model is rewritten
    /// to the route's upstream model if that differs.
    pub async fn call(&self, body: Bytes, route: &Route, stream: bool) -> Result<UpstreamReply, ApiError> {
        match self {
            Upstream::Mock { mock, .. } => {
                let reply = mock.reply(&body, &route.model)?;
                let mut headers = HeaderMap::new();
                if stream {
                    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                    let events = Events::Mock { chunks: reply.chunks(), delay: mock.chunk_delay, first: true };
                    Ok(UpstreamReply::Stream { status: StatusCode::OK, headers, events })
                } else {
                    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok(UpstreamReply::Full { status: StatusCode::OK, headers, body: reply.completion() })
                }
            }
            Upstream::OpenAi(client) => {
                let body = if route.upstream_model != route.model {
                    rewrite_model(&body, &route.upstream_model)?
                } else {
                    body
                };
                let call = credentials::CallFor { model: &route.upstream_model, stream };
                let (status, headers, incoming) = client.send(body, call).await?;
                let is_sse = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                let declared =
                    headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let headers = forwardable(headers);
                if stream && status.is_success() && is_sse {
                    let mut events = SseEvents::new(incoming, client);
                    events.start().await.map_err(ApiError::upstream)?;
                    Ok(UpstreamReply::Stream { status, headers, events: Events::Sse(events) })
                } else {
                    let body = client.collect(declared, incoming).await?;
                    Ok(UpstreamReply::Full { status, headers, body })
                }
            }
        }
    }
}

fn rewrite_model(body: &[u8], model: &str) -> Result<Bytes, ApiError> {
    crate::body::with_model(body, model)
        .map_err(|e| ApiError::invalid_request("invalid_json", format!("invalid chat request body: {e}")))
}

/// Drops hop-by-hop, framing and routing headers, which whoever sends the message sets itself:
/// the gateway frames its own responses, the HTTP client its own requests.
pub fn forwardable(mut headers: HeaderMap) -> HeaderMap {
    for name in [
        http::header::CONNECTION,
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::HOST,
        http::header::UPGRADE,
        http::header::HeaderName::from_static("keep-alive"),
    ] {
        headers.remove(name);
    }
    headers
}

pub enum UpstreamReply {
    Full { status: StatusCode, headers: HeaderMap, body: Bytes },
    Stream { status: StatusCode, headers: HeaderMap, events: Events },
}

/// One event of a streamed reply: its payload, and, for an upstream SSE event framed as the
/// gateway frames events, its bytes as they arrived (sent on as they are when no plugin changes
/// the payload: no framing, no copy).
#[derive(Debug)]
pub struct Event {
    pub data: Bytes,
    pub framed: Option<Bytes>,
}

impl Event {
    pub fn payload(data: Bytes) -> Event {
        Event { data, framed: None }
    }
}

/// The events of a streamed reply.
pub enum Events {
    Mock {
        chunks: VecDeque<Bytes>,
        delay: Duration,
        first: bool,
    },
    Sse(SseEvents),
    /// An executor plugin's chunks.
    Plugin(Box<dyn PollEvents>),
}

/// Event payloads produced by something polled in place (an executor plugin's stream); an
/// error message (fit for the client) ends them.
pub trait PollEvents: Send {
    fn poll_event(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Bytes, String>>>;
}

impl Events {
    pub async fn next(&mut self) -> Option<Result<Event, String>> {
        match self {
            Events::Mock { chunks, delay, first } => {
                let chunk = chunks.pop_front()?;
                if !*first && !delay.is_zero() {
                    tokio::time::sleep(*delay).await;
                }
                *first = false;
                Some(Ok(Event::payload(chunk)))
            }
            Events::Sse(sse) => sse.next().await,
            Events::Plugin(events) => {
                std::future::poll_fn(|cx| events.poll_event(cx)).await.map(|r| r.map(Event::payload))
            }
        }
    }

    /// The next event if it is here without waiting (parsed out of what the upstream already
    /// sent); `None` if it takes waiting. An executor's events are always waited for.
    pub fn buffered(&mut self) -> Option<Option<Result<Event, String>>> {
        match self {
            Events::Mock { chunks, delay, .. } if delay.is_zero() => {
                Some(chunks.pop_front().map(|c| Ok(Event::payload(c))))
            }
            Events::Mock { .. } | Events::Plugin(_) => None,
            Events::Sse(sse) => sse.buffered(),
        }
    }
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

/// The `usage` object of a completion or of a stream's usage chunk, if any: the value of the
/// top-level `usage` key. Only that value is parsed: the bytes before it are walked for their
/// nesting (strings and brackets), and nothing after it is read. Chunks without a `usage` are
/// passed over at the cost of one substring search.
pub fn usage_of(json: &[u8]) -> Option<Usage> {
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    let mut nesting = Nesting::default();
    for at in USAGE.find_iter(json) {
        nesting.walk(&json[nesting.walked..at]);
        nesting.walked = at;
        if nesting.depth != 1 || nesting.in_string {
            continue;
        }
        // A string at the top level: the key, if a `:` follows.
        let Some(value) = json[at + 7..].trim_ascii_start().strip_prefix(b":") else { continue };
        let usage: Option<UsageJson> =
            Deserialize::deserialize(&mut serde_json::Deserializer::from_slice(value)).ok()?;
        return usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        });
    }
    None
}

/// How deep a walk over JSON bytes is, and whether it is inside a string.
#[derive(Default)]
struct Nesting {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Bytes walked so far (the caller's offset).
    walked: usize,
}

impl Nesting {
    fn walk(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_the_top_level_key_only() {
        let u = |p, c, t| Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: t });
        let chunk = br#"{"choices":[{"delta":{"content":"\"usage\": {\"total_tokens\": 9}"},"x":{"usage":{"total_tokens":8}}}],"usage" : {"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(usage_of(chunk), u(1, 2, 3));
        assert_eq!(usage_of(br#"{"nested":{"usage":{"total_tokens":8}}}"#), None);
        assert_eq!(usage_of(br#"{"note":"\"usage\":{}","id":1}"#), None);
        assert_eq!(usage_of(br#"{"usage":{"total_tokens":4},"trailing":"ignored"}"#), u(0, 0, 4));
        assert_eq!(usage_of(br#"{"usage":"not an object"}"#), None);
        // The word as a value first, then the key.
        assert_eq!(usage_of(br#"{"kind":"usage","usage":{"total_tokens":5}}"#), u(0, 0, 5));
    }

    #[test]
    fn usage_is_read_only_where_present() {
        assert_eq!(usage_of(br#"{"choices":[]}"#), None);
        assert_eq!(
            usage_of(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#),
            Some(Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 })
        );
        assert_eq!(usage_of(br#"{"usage":null}"#), None);
    }
}
