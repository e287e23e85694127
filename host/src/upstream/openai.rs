//! An OpenAI-compatible HTTP upstream, over hyper's pooled client.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::sse::{SseEvent, SseParser};
use crate::error::ApiError;

pub struct OpenAiUpstream {
    pub name: String,
    pub base_url: String,
    api_key: Option<HeaderValue>,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl OpenAiUpstream {
    pub fn new(
        name: &str,
        base_url: &str,
        api_key_env: Option<&str>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let api_key = api_key_env.and_then(|var| match std::env::var(var) {
            Ok(key) => HeaderValue::from_str(&format!("Bearer {key}")).ok(),
            Err(_) => {
                tracing::warn!(upstream = name, var, "API key variable is not set: calling the upstream without a key");
                None
            }
        });
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        OpenAiUpstream {
            name: name.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(&self, body: Bytes) -> Result<(StatusCode, HeaderMap, Incoming), ApiError> {
        let url = format!("{}/chat/completions", self.base_url);
        let mut req = Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| ApiError::upstream(format!("upstream `{}`: invalid URL {url}: {e}", self.name)))?;
        if let Some(key) = &self.api_key {
            req.headers_mut().insert(http::header::AUTHORIZATION, key.clone());
        }
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| ApiError::upstream_timeout(&self.name))?
            .map_err(|e| ApiError::upstream(format!("upstream `{}` unreachable: {e}", self.name)))?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status, parts.headers, body))
    }

    pub async fn collect(&self, body: Incoming) -> Result<Bytes, ApiError> {
        tokio::time::timeout(self.timeout, body.collect())
            .await
            .map_err(|_| ApiError::upstream_timeout(&self.name))?
            .map(|c| c.to_bytes())
            .map_err(|e| ApiError::upstream(format!("upstream `{}` broke off its response: {e}", self.name)))
    }
}

/// Events of an upstream SSE response.
pub struct SseEvents {
    body: Incoming,
    parser: SseParser,
    idle_timeout: Duration,
    upstream: String,
    done: bool,
}

impl SseEvents {
    pub fn new(body: Incoming, upstream: &OpenAiUpstream) -> Self {
        SseEvents {
            body,
            parser: SseParser::default(),
            idle_timeout: upstream.timeout,
            upstream: upstream.name.clone(),
            done: false,
        }
    }

    pub async fn next(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            if self.done {
                return None;
            }
            match self.parser.next_event() {
                Some(SseEvent::Data(d)) => return Some(Ok(d)),
                Some(SseEvent::Done) => {
                    self.done = true;
                    return None;
                }
                None => {}
            }
            match tokio::time::timeout(self.idle_timeout, self.body.frame()).await {
                Err(_) => {
                    self.done = true;
                    return Some(Err(format!("upstream `{}` stalled mid-stream", self.upstream)));
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Ok(Some(Err(e))) => {
                    self.done = true;
                    return Some(Err(format!("upstream `{}` broke off the stream: {e}", self.upstream)));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.push(&data);
                    }
                }
            }
        }
    }
}
